//! `compare`: the paper's experiment. Traces a live flow with its own probes, then fresh Paris
//! flows to the same destination and port, and shows where their paths differ; with
//! `--multipath`, every load-balanced path to the destination (the MDA engine) with the
//! flow's own path among them.

use std::net::IpAddr;
use std::time::Duration;

use clap::{ArgGroup, Args, ValueEnum};
use svctr_core::{
    DotPart, FlowFilter, MdaConfig, Protocol, Strategy, TraceConfig, TraceResult, TracerouteConfig,
};
use svctr_io::{
    multipath, trace_flows, traceroute, Error, FlowTraceOptions, MultipathOptions,
    TracerouteOptions,
};

use crate::args::{parse_duration, parse_port, parse_remote, DurationArg, MultipathOpts};
use crate::error::CliError;
use crate::output::Run;
use crate::Outcome;

/// Output of `compare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CompareFormat {
    /// a table of the routers per TTL, the differing TTLs marked
    Text,
    /// one JSON object: the comparison with both traces
    Json,
    /// --multipath: a Graphviz graph of every path, the flow's drawn bold
    Dot,
    /// --multipath: that graph rendered as SVG by Graphviz's `dot` program
    Svg,
}

#[derive(Args)]
#[command(group(ArgGroup::new("protocol").required(true).args(["tcp", "udp"])))]
pub(crate) struct CompareArgs {
    /// Interface to capture on and send from.
    #[arg(long, short = 'i')]
    iface: String,
    /// The flow is TCP.
    #[arg(long)]
    tcp: bool,
    /// The flow is UDP.
    #[arg(long)]
    udp: bool,
    /// The flow's remote end: IP:PORT ([IPv6]:PORT).
    #[arg(long, value_parser = parse_remote, value_name = "IP:PORT")]
    remote: (IpAddr, Option<u16>),
    /// The flow's local port.
    #[arg(long, value_parser = parse_port)]
    local_port: Option<u16>,
    /// How many fresh Paris flows to compare with.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=32))]
    fresh: u8,
    /// Compare with every load-balanced path to the destination instead (multipath
    /// discovery with fresh flows: TCP to the flow's port from other source ports, UDP to
    /// ports 33434 and up, so no fresh datagram reaches the application).
    #[arg(long, conflicts_with = "fresh")]
    multipath: bool,
    #[command(flatten)]
    mp: MultipathOpts,
    /// Wait at most this long for the flow.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Probes per TTL, for both (traceroute's -q).
    #[arg(long, short = 'q', default_value_t = TraceConfig::default().probes_per_hop,
          value_parser = clap::value_parser!(u8).range(1..))]
    probes: u8,
    /// Per-probe timeout (traceroute's -w).
    #[arg(long, short = 'w', default_value_t = DurationArg(TraceConfig::default().timeout))]
    timeout: DurationArg,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: CompareFormat,
}

pub(crate) fn run_compare(a: CompareArgs) -> Result<Outcome, CliError> {
    let (remote_ip, Some(remote_port)) = a.remote else {
        return Err(CliError::input(
            "--remote needs a port for compare (IP:PORT, [IPv6]:PORT)",
        ));
    };
    let protocol = if a.udp { Protocol::Udp } else { Protocol::Tcp };
    match a.format {
        CompareFormat::Dot | CompareFormat::Svg if !a.multipath => {
            return Err(CliError::input("--format dot and svg need --multipath"))
        }
        CompareFormat::Svg => crate::graph::check_dot()?,
        _ => {}
    }
    let opts = FlowTraceOptions {
        iface: a.iface.clone(),
        filter: FlowFilter {
            protocol: Some(protocol),
            remote_ip: Some(remote_ip),
            remote_port: Some(remote_port),
            local_port: a.local_port,
        },
        trace: TraceConfig {
            probes_per_hop: a.probes,
            timeout: a.timeout.0,
            ..TraceConfig::default()
        },
        max_traces: 1,
        duration: a.duration,
        udp_shield: true,
    };
    let mut run = Run::start()?;
    let stop = std::sync::Arc::clone(&run.stop);
    let mut flow = None;
    match trace_flows(&opts, &stop, |r| flow = Some(r)) {
        Ok(_) => {}
        Err(Error::NothingMatched { selector, duration }) => {
            return Ok(Outcome::nothing(format!(
                "no flow matched {selector} within {:.1} s",
                duration.as_secs_f64()
            )))
        }
        Err(e) => return Err(e.into()),
    }
    let Some(flow) = flow else {
        return Ok(Outcome::nothing(if run.stopped() {
            "interrupted before the flow was traced".to_string()
        } else {
            "the flow could not be traced".to_string()
        }));
    };
    if a.multipath {
        return compare_multipath(&a, flow, protocol, remote_port, run);
    }
    // Fresh flows: Paris probes to the same port, each from its own new source port. They stop
    // where the flow's probes stopped, short of the remote, so the application never sees them.
    let max_ttl = flow.hops.last().map_or(1, |h| h.ttl).max(1);
    let mut fresh = Vec::new();
    for _ in 0..a.fresh {
        if run.stopped() {
            break;
        }
        let config = TracerouteConfig {
            protocol,
            strategy: Strategy::Paris,
            port: Some(remote_port),
            max_ttl,
            probes_per_hop: a.probes,
            timeout: a.timeout.0,
            // Like the flow's own packets (Linux sets DF on TCP and on connected UDP sockets
            // doing path MTU discovery).
            dont_fragment: true,
            parallel: 1,
            ..TracerouteConfig::default()
        };
        let topts = TracerouteOptions {
            targets: vec![remote_ip],
            config,
            iface: Some(a.iface.clone()),
            rate: 0,
            resolve_names: false,
            source: Some(flow.flow.local.ip),
            receive: svctr_io::Receive::Auto,
            pcap: None,
        };
        fresh.extend(traceroute(&topts, &stop, |_| {})?.results);
    }
    let c = svctr_core::compare(flow, fresh);
    match a.format {
        CompareFormat::Text => run.print(&svctr_core::render_comparison(&c)),
        CompareFormat::Json => run.print(&crate::record::line(&c)),
        CompareFormat::Dot | CompareFormat::Svg => {}
    }
    run.finish()?;
    Ok(Outcome::of(&run, 1))
}

/// `compare --multipath`: the discovery from the flow's own source address, then the flow's
/// path placed among the paths found.
fn compare_multipath(
    a: &CompareArgs,
    flow: TraceResult,
    protocol: Protocol,
    remote_port: u16,
    mut run: Run,
) -> Result<Outcome, CliError> {
    let stop = std::sync::Arc::clone(&run.stop);
    let config = MdaConfig {
        protocol,
        // TCP: SYNs to the flow's port (a completed handshake is all an application sees,
        // and these never complete); UDP: the traceroute ports, never the application's.
        port: (protocol == Protocol::Tcp).then_some(remote_port),
        timeout: a.timeout.0,
        confidence: a.mp.confidence,
        max_probes: a.mp.max_probes,
        ..MdaConfig::default()
    };
    let opts = MultipathOptions {
        targets: vec![flow.flow.remote.ip],
        config,
        iface: Some(a.iface.clone()),
        rate: 0,
        resolve_names: false,
        source: Some(flow.flow.local.ip),
        receive: svctr_io::Receive::Auto,
        pcap: None,
    };
    let Some(mda) = multipath(&opts, &stop, |_| {})?.results.pop() else {
        return Ok(Outcome::nothing(
            "interrupted before the multipath discovery",
        ));
    };
    let c = svctr_core::compare_multipath(flow, mda);
    let dot = || {
        let per_packet: Vec<_> = c.multipath.per_packet.iter().map(|p| p.addr).collect();
        svctr_core::render_dot(&[DotPart {
            title: format!(
                "{} — the application flow {}:{} in bold",
                c.summary, c.flow.flow.local.ip, c.flow.flow.local.port
            ),
            source: Some(c.multipath.source),
            destination: Some(c.multipath.destination),
            graph: &c.multipath.graph,
            highlight: &c.flow_links,
            per_packet: &per_packet,
        }])
    };
    match a.format {
        CompareFormat::Text => run.print(&svctr_core::render_multipath_comparison(&c)),
        CompareFormat::Json => run.print(&crate::record::line(&c)),
        CompareFormat::Dot => run.print(&dot()),
        CompareFormat::Svg => run.print(&crate::graph::svg(&dot())?),
    }
    run.finish()?;
    Ok(Outcome::of(&run, 1))
}

//! `compare`: the paper's experiment. Traces a live flow with its own probes, then fresh Paris
//! flows to the same destination and port, and shows where their paths differ.

use std::net::IpAddr;
use std::time::Duration;

use clap::{ArgGroup, Args, ValueEnum};
use svctr_core::{FlowFilter, Protocol, Strategy, TraceConfig, TracerouteConfig};
use svctr_io::{trace_flows, traceroute, Error, FlowTraceOptions, TracerouteOptions};

use crate::args::{parse_duration, parse_port, parse_remote, DurationArg};
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
        };
        fresh.extend(traceroute(&topts, &stop, |_| {})?.results);
    }
    let c = svctr_core::compare(flow, fresh);
    match a.format {
        CompareFormat::Text => run.print(&svctr_core::render_comparison(&c)),
        CompareFormat::Json => {
            if let Ok(t) = serde_json::to_string(&c) {
                run.print(&(t + "\n"));
            }
        }
    }
    run.finish()?;
    Ok(Outcome::of(&run, 1))
}

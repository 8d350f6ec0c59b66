//! `reverse` and `reverse-server`: reverse traceroute (draft-heiwin-intarea-reverse-traceroute,
//! wire-compatible with the reference implementation). The client asks a server to send
//! TTL-limited probes back toward this host and prints who answered them: the path back.

use std::net::IpAddr;
use std::time::Duration;

use clap::Args;
use svctr_core::reverse::TwoWayMultipath;
use svctr_core::reverse::{
    default_flow, default_pad, parse_allowlist, ClientConfig, ForwardPath, Rate, ReverseEvent,
    ReverseResult, ServerConfig, ServerEvent, SessionEvent, TwoWayResult,
};
use svctr_core::{
    DotPart, MdaConfig, MdaEvent, MdaResult, Protocol, Strategy, TracerouteConfig, TracerouteEvent,
};
use svctr_io::{
    multipath, reverse, reverse_multipath, serve, traceroute, MultipathOptions, ReverseOptions,
    ServerOptions, TracerouteOptions,
};

use crate::args::{DurationArg, MultipathOpts, ReceiveArg, TraceFormat};
use crate::error::CliError;
use crate::output::Run;
use crate::Outcome;

#[derive(Args)]
pub(crate) struct ReverseArgs {
    /// The server (an IP address or a host name) that runs a reverse-traceroute server.
    #[arg(value_name = "SERVER")]
    server: String,
    /// ICMP echo probes (the server's default).
    #[arg(short = 'I', long = "icmp", group = "proto")]
    icmp: bool,
    /// UDP probes (the default here).
    #[arg(short = 'U', long = "udp", group = "proto")]
    udp: bool,
    /// TCP SYN probes.
    #[arg(short = 'T', long = "tcp", group = "proto")]
    tcp: bool,
    /// The flow value, constant for every probe so that load balancers keep them on one path:
    /// the UDP/TCP destination port or the ICMP checksum (0: the server's default, UDP 53,
    /// TCP 80, ICMP 0xBEAF).
    #[arg(long, default_value_t = 0, conflicts_with = "multipath")]
    flow: u16,
    /// Every way back through per-flow load balancers (the Multipath Detection Algorithm,
    /// with the request's flow value as what varies: 10000-65535, from a random start), not
    /// one.
    #[arg(long)]
    multipath: bool,
    #[command(flatten)]
    mp: MultipathOpts,
    /// IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,
    /// IPv6 only.
    #[arg(short = '6')]
    ipv6: bool,
    /// First TTL.
    #[arg(short = 'f', long = "first", visible_alias = "first-ttl",
          default_value_t = ClientConfig::default().first_ttl,
          value_parser = clap::value_parser!(u8).range(1..))]
    first_ttl: u8,
    /// Max TTL.
    #[arg(short = 'm', long = "max-hops", visible_alias = "max-ttl",
          default_value_t = ClientConfig::default().max_ttl,
          value_parser = clap::value_parser!(u8).range(1..))]
    max_ttl: u8,
    /// Probes per TTL.
    #[arg(short = 'q', long = "queries", visible_alias = "probes", conflicts_with = "multipath",
          default_value_t = ClientConfig::default().probes,
          value_parser = clap::value_parser!(u8).range(1..=10))]
    queries: u8,
    /// Wait for each response (seconds, or with a unit).
    #[arg(short = 'w', long = "wait", visible_alias = "timeout",
          default_value_t = DurationArg(ClientConfig::default().timeout))]
    wait: DurationArg,
    /// Stop after this many TTLs in a row without an answer (0: never).
    #[arg(long, default_value_t = ClientConfig::default().max_missing)]
    max_missing: u8,
    /// TTLs asked for at once.
    #[arg(long, conflicts_with = "multipath", default_value_t = ClientConfig::default().window,
          value_parser = clap::value_parser!(u8).range(1..))]
    window: u8,
    /// Pad each request with zeros to this many bytes (IP header included; 0: no padding).
    /// The default (100 bytes over IPv4, 140 over IPv6) is what a server that refuses to
    /// send more than it receives requires.
    #[arg(long, value_name = "BYTES")]
    pad: Option<usize>,
    /// Do not resolve hop addresses to names (names are resolved by default, in background
    /// threads, never delaying a request).
    #[arg(short = 'n')]
    numeric: bool,
    /// Requests per second at most (0: no limit).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Interface to send from and capture on.
    #[arg(short = 'i', long = "interface")]
    iface: Option<String>,
    /// How responses (and, with --forward, replies) are received: raw sockets or a libpcap
    /// capture (see `trace --receive`).
    #[arg(long, value_enum, default_value = "auto")]
    receive: ReceiveArg,
    /// This host's address toward the server.
    #[arg(short = 's', long = "source", value_name = "ADDR")]
    source: Option<IpAddr>,
    /// Forward then reverse: a Paris traceroute to the server with the same protocol and
    /// flow value, then the reverse trace; one result holding both.
    #[arg(long)]
    two_way: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: TraceFormat,
}

/// The header line of a reverse trace.
fn header(server: IpAddr, c: &ClientConfig) -> String {
    let default = if c.flow == 0 {
        " (the server's default)"
    } else {
        ""
    };
    let flow = match (default_flow_or(c.flow, c.protocol), c.protocol) {
        (f, Protocol::Icmp) => format!("checksum {f:#06x}{default}"),
        (f, _) => format!("port {f}{default}"),
    };
    format!(
        "reverse traceroute from {server} back to this host, {} probes, flow {flow}, {} hops max\n",
        c.protocol.as_str(),
        c.max_ttl
    )
}

fn stop_line(r: &ReverseResult) -> String {
    format!(
        "stop: {}; {} requests, {} responses\n",
        r.stop_reason.describe(),
        r.requests_sent,
        r.responses
    )
}

/// The Graphviz picture: one cluster per direction (as the reference client draws it).
fn dot(forward: Option<&ForwardPath>, r: &ReverseResult) -> String {
    let mut parts = Vec::new();
    if let Some(f) = forward {
        parts.push(DotPart {
            title: format!(
                "FORWARD: from {} to {}, {}",
                f.source,
                f.destination,
                f.protocol.as_str()
            ),
            source: Some(f.source),
            destination: Some(f.destination),
            graph: &f.graph,
            highlight: &[],
            per_packet: &[],
        });
    }
    parts.push(DotPart {
        title: format!(
            "REVERSE: from {} back to {}, {}: {}",
            r.source,
            r.destination,
            r.protocol.as_str(),
            r.stop_reason.describe()
        ),
        source: Some(r.source),
        destination: Some(r.destination),
        graph: &r.graph,
        highlight: &[],
        per_packet: &[],
    });
    svctr_core::render_dot(&parts)
}

/// The forward half of `--two-way`: a Paris traceroute with the reverse probes' protocol and
/// flow value (UDP/TCP destination port; ICMP keeps Paris's own constant checksum).
fn forward(
    a: &ReverseArgs,
    server: IpAddr,
    c: &ClientConfig,
    run: &mut Run,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Option<ForwardPath>, CliError> {
    let port = match (c.flow, c.protocol) {
        (_, Protocol::Icmp) => None,
        (f, p) => Some(default_flow_or(f, p)),
    };
    let config = TracerouteConfig {
        protocol: c.protocol,
        strategy: Strategy::Paris,
        port,
        first_ttl: c.first_ttl,
        max_ttl: c.max_ttl,
        probes_per_hop: c.probes,
        timeout: c.timeout,
        max_missing: c.max_missing,
        ..TracerouteConfig::default()
    };
    let opts = TracerouteOptions {
        targets: vec![server],
        config: config.clone(),
        iface: a.iface.clone(),
        rate: a.rate,
        resolve_names: !a.numeric,
        source: a.source,
        receive: a.receive.into(),
        pcap: None,
    };
    let text = a.format == TraceFormat::Text;
    let summary = traceroute(&opts, stop, |ev| match ev {
        TracerouteEvent::Started { target, source } if text => {
            let header = svctr_core::traceroute_header(
                *target,
                None,
                port,
                config.protocol,
                config.strategy,
                *source,
                Some(config.max_ttl),
            );
            run.print(&format!("forward: {header}\n"));
        }
        TracerouteEvent::Hop { hop, .. } if text => run.print(&svctr_core::render_hop(hop, false)),
        TracerouteEvent::Finished(r) if text => {
            run.print(&(svctr_core::traceroute_stop_line(r) + "\n\n"));
        }
        _ => {}
    })
    .map_err(|e| CliError::from(e).naming_ttls("-f", "-m"))?;
    Ok(summary.results.first().map(ForwardPath::from))
}

/// The flow value a request with `flow` gets: 0 asks for the server's default.
fn default_flow_or(flow: u16, p: Protocol) -> u16 {
    match flow {
        0 => default_flow(p),
        f => f,
    }
}

impl ReverseArgs {
    /// What the process keeps once set up: `CAP_NET_RAW` only for `--two-way`, whose second
    /// run opens its own capture and sockets.
    pub(crate) fn keeps(&self) -> (bool, bool) {
        (self.two_way, false)
    }
}

pub(crate) fn run_reverse(a: ReverseArgs) -> Result<Outcome, CliError> {
    // As trace does: IPv4 first for a name with both, unless -6.
    let (server, _) = crate::trace::resolve(&a.server, a.ipv4, a.ipv6)?;
    if a.first_ttl > a.max_ttl {
        return Err(CliError::input(format!(
            "-f {} is above -m {}",
            a.first_ttl, a.max_ttl
        )));
    }
    if a.wait.0.is_zero() {
        return Err(CliError::input("-w must be positive"));
    }
    if a.format == TraceFormat::Svg {
        crate::graph::check_dot()?;
    }
    match a.format {
        TraceFormat::Atlas => {
            return Err(CliError::input(
                "--format atlas is for trace: RIPE Atlas has no reverse-traceroute results",
            ))
        }
        TraceFormat::Warts => return Err(CliError::input(
            "--format warts is for trace, flow and monitor: a warts trace object has no way back",
        )),
        _ => {}
    }
    let protocol = if a.icmp {
        Protocol::Icmp
    } else if a.tcp {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    let config = ClientConfig {
        protocol,
        flow: a.flow,
        first_ttl: a.first_ttl,
        max_ttl: a.max_ttl,
        probes: a.queries,
        timeout: a.wait.0,
        max_missing: a.max_missing,
        window: a.window,
        pad: a.pad.unwrap_or_else(|| default_pad(server.is_ipv6())),
        ..ClientConfig::default()
    };
    let opts = ReverseOptions {
        server: Some(server),
        config: config.clone(),
        iface: a.iface.clone(),
        rate: a.rate,
        source: a.source,
        resolve_names: !a.numeric,
        receive: a.receive.into(),
    };
    if a.multipath {
        return run_reverse_multipath(&a, server, &opts);
    }
    let mut run = Run::start_lazy()?;
    let stop = std::sync::Arc::clone(&run.stop);
    let format = a.format;
    let forward_path = if a.two_way {
        forward(&a, server, &config, &mut run, &stop)?
    } else {
        None
    };
    if format == TraceFormat::Text {
        let prefix = if a.two_way { "reverse: " } else { "" };
        run.print(&format!("{prefix}{}", header(server, &config)));
    }
    let result = reverse(&opts, &stop, |ev| match (format, ev) {
        (TraceFormat::Text, ReverseEvent::Hop(h)) => run.print(&svctr_core::render_hop(h, false)),
        (TraceFormat::Text, ReverseEvent::Finished(r)) => run.print(&stop_line(r)),
        _ => {}
    })
    .map_err(|e| CliError::from(e).naming_ttls("-f", "-m"))?;
    let json = || match &forward_path {
        Some(f) => crate::record::line(&TwoWayResult {
            forward: f.clone(),
            reverse: result.clone(),
        }),
        None => crate::record::line(&result),
    };
    match format {
        TraceFormat::Json | TraceFormat::Jsonl => run.print(&json()),
        TraceFormat::Dot => run.print(&dot(forward_path.as_ref(), &result)),
        TraceFormat::Svg => run.print(&crate::graph::svg(&dot(forward_path.as_ref(), &result))?),
        TraceFormat::Replies => {
            if let Some(f) = &forward_path {
                run.print(&crate::replies::forward_lines(f));
            }
            run.print(&crate::replies::reverse_lines(&result));
        }
        TraceFormat::Text | TraceFormat::Atlas | TraceFormat::Warts => {}
    }
    run.finish()?;
    if run.output_closed() {
        return Ok(Outcome::Closed);
    }
    if result.stop_reason.is_ok() || !result.graph.hops.is_empty() {
        Ok(Outcome::Printed(1))
    } else {
        Ok(Outcome::nothing(format!(
            "{server}: {}",
            result.stop_reason.describe()
        )))
    }
}

#[derive(Args)]
pub(crate) struct ServerArgs {
    /// The interface whose addresses requests are served on.
    #[arg(long = "iface", short = 'i', value_name = "IF")]
    iface: String,
    /// Sessions open at once at most (the reference's -n).
    #[arg(short = 'n', long = "max-sessions", default_value_t = ServerConfig::default().max_sessions as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_sessions: u32,
    /// How long a session waits for its probe's answer (the reference's -t; seconds, or with
    /// a unit).
    #[arg(short = 't', long = "timeout", default_value_t = DurationArg(ServerConfig::default().timeout))]
    timeout: DurationArg,
    /// Requests per second admitted from one source (IPv6: one /64).
    #[arg(long, default_value_t = ServerConfig::default().source_rate.per_sec)]
    source_rate: f64,
    /// Requests one source may send at once after a quiet time.
    #[arg(long, default_value_t = ServerConfig::default().source_rate.burst)]
    source_burst: f64,
    /// Requests per second admitted from all sources together.
    #[arg(long, default_value_t = ServerConfig::default().global_rate.per_sec)]
    rate: f64,
    /// Requests admitted at once from all sources after a quiet time.
    #[arg(long, default_value_t = ServerConfig::default().global_rate.burst)]
    burst: f64,
    /// Serve only these sources: a file of CIDR prefixes, one per line (`#` comments).
    #[arg(long, value_name = "FILE")]
    allow_from: Option<std::path::PathBuf>,
    /// Honour the indirect-target extension (probes toward another address), for the sources
    /// of --allow-indirect-from only.
    #[arg(long, requires = "allow_indirect_from")]
    indirect: bool,
    /// Sources that may name another target (a CIDR file, as --allow-from).
    #[arg(long, value_name = "FILE")]
    allow_indirect_from: Option<std::path::PathBuf>,
    /// Answer only requests at least as long as the probe and the response together (clients
    /// pad with zeros): nothing sent in answer is larger than what was received.
    #[arg(long)]
    require_padding: bool,
    /// Refuse the experimental flow-probe extension of `flow --reverse` (state 4, as the
    /// reference's indirect_multipart branch does): probes only ever from port 1021.
    #[arg(long)]
    no_flow_probes: bool,
    /// Log format: text lines (`[client, id] | event`, as the reference) or JSON lines.
    #[arg(long, value_enum, default_value = "text")]
    format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// one line per event: `[client, id] | event`
    Text,
    /// one JSON object per event
    Jsonl,
}

fn read_allowlist(path: &std::path::Path) -> Result<Vec<svctr_core::reverse::IpNet>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
    parse_allowlist(&text).map_err(|e| CliError::input(format!("{}: {e}", path.display())))
}

fn log_line(ev: &ServerEvent) -> String {
    let what = match &ev.event {
        SessionEvent::Created {
            target,
            protocol,
            flow,
            ttl,
        } => format!(
            "session created: {} probe, flow {flow}, TTL {ttl}, to {target}",
            protocol.as_str()
        ),
        SessionEvent::Answered { hop, rtt_ms } => {
            format!("probe answer received from {hop} after {rtt_ms:.3} ms; session deleted")
        }
        SessionEvent::TimedOut => "session timed out".into(),
        SessionEvent::Error { state: 1 } => "presence check (TTL 0) answered with state 1".into(),
        SessionEvent::Error { state } => format!(
            "request refused: {}",
            svctr_core::reverse::state_text(*state)
        ),
    };
    format!("{} [{}, {}] | {what}\n", ev.at, ev.client, ev.id)
}

pub(crate) fn run_server(a: ServerArgs) -> Result<Outcome, CliError> {
    for (name, v) in [
        ("--source-rate", a.source_rate),
        ("--source-burst", a.source_burst),
        ("--rate", a.rate),
        ("--burst", a.burst),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(CliError::input(format!("{name} must be a positive number")));
        }
    }
    if a.timeout.0 < Duration::from_millis(1) {
        return Err(CliError::input("-t must be at least 1 ms"));
    }
    let allow = match &a.allow_from {
        Some(p) => read_allowlist(p)?,
        None => Vec::new(),
    };
    let allow_indirect = match &a.allow_indirect_from {
        Some(p) => read_allowlist(p)?,
        None => Vec::new(),
    };
    let config = ServerConfig {
        max_sessions: a.max_sessions as usize,
        timeout: a.timeout.0,
        source_rate: Rate::new(a.source_rate, a.source_burst),
        global_rate: Rate::new(a.rate, a.burst),
        allow,
        indirect: a.indirect,
        allow_indirect,
        require_padding: a.require_padding,
        flow_probes: !a.no_flow_probes,
        ..ServerConfig::default()
    };
    let opts = ServerOptions {
        iface: a.iface,
        config,
    };
    let mut run = Run::start()?;
    let stop = std::sync::Arc::clone(&run.stop);
    let format = a.format;
    let line = format!(
        "at most {} sessions, timeout {}, {}/s per source (burst {}), {}/s in all (burst {}){}{}",
        opts.config.max_sessions,
        humantime::format_duration(opts.config.timeout),
        a.source_rate,
        a.source_burst,
        a.rate,
        a.burst,
        if opts.config.require_padding {
            ", padded requests only"
        } else {
            ""
        },
        if opts.config.indirect {
            ", indirect targets for the allowlisted"
        } else {
            ""
        },
    );
    let iface = opts.iface.clone();
    let ready = |addrs: &[IpAddr]| {
        let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        eprintln!(
            "service-traceroute reverse-server: serving on {iface} ({}): {line}",
            addrs.join(", ")
        );
    };
    let stats = serve(&opts, &stop, ready, |ev| match format {
        LogFormat::Text => run.print(&log_line(ev)),
        LogFormat::Jsonl => run.print(&crate::record::line(ev)),
    })?;
    if let Ok(t) = serde_json::to_string(&stats) {
        eprintln!("service-traceroute reverse-server: stopped; counters {t}");
    }
    run.finish()?;
    Ok(Outcome::Printed(1))
}

/// `reverse --multipath` (and with `--two-way`, the forward discovery first).
fn run_reverse_multipath(
    a: &ReverseArgs,
    server: IpAddr,
    opts: &ReverseOptions,
) -> Result<Outcome, CliError> {
    let c = &opts.config;
    let mda = MdaConfig {
        protocol: c.protocol,
        first_ttl: c.first_ttl,
        max_ttl: c.max_ttl,
        confidence: a.mp.confidence,
        timeout: c.timeout,
        max_missing: c.max_missing,
        max_probes: a.mp.max_probes,
        ..MdaConfig::default()
    };
    let mut run = Run::start_lazy()?;
    let stop = std::sync::Arc::clone(&run.stop);
    let format = a.format;
    let text = format == TraceFormat::Text;
    let hop = |run: &mut Run, ev: &MdaEvent| match ev {
        MdaEvent::Hop { hop, links, .. } => {
            run.print(&svctr_core::render_multipath_hop(hop, links))
        }
        MdaEvent::Finished(r) => run.print(&(svctr_core::multipath_footer(r) + "\n")),
        _ => {}
    };
    let forward = if a.two_way {
        let fwd = MultipathOptions {
            targets: vec![server],
            config: mda.clone(),
            iface: a.iface.clone(),
            rate: a.rate,
            resolve_names: opts.resolve_names,
            source: a.source,
            receive: opts.receive,
            pcap: None,
        };
        let summary = multipath(&fwd, &stop, |ev| {
            if !text {
                return;
            }
            if let MdaEvent::Started { target, source } = ev {
                let port = (mda.protocol != Protocol::Icmp).then(|| mda.dest_port());
                let header = svctr_core::multipath_header(
                    *target,
                    None,
                    mda.protocol,
                    port,
                    *source,
                    mda.max_ttl,
                    mda.confidence,
                );
                run.print(&format!("forward: {header}\n"));
            }
            hop(&mut run, ev);
        })
        .map_err(|e| CliError::from(e).naming_ttls("-f", "-m"))?;
        summary.results.into_iter().next()
    } else {
        None
    };
    if text {
        let prefix = if a.two_way { "reverse: " } else { "" };
        run.print(&format!(
            "{prefix}reverse multipath from {server} back to this host, {} probes, flow values \
             {}-65535 from a random start, {} hops max, confidence {}\n",
            mda.protocol.as_str(),
            svctr_core::REVERSE_FLOW_BASE,
            mda.max_ttl,
            mda.confidence
        ));
    }
    let result = reverse_multipath(opts, &mda, a.pad, &stop, |ev| {
        if text {
            hop(&mut run, ev);
        }
    })
    .map_err(|e| CliError::from(e).naming_ttls("-f", "-m"))?;
    let json = || match &forward {
        Some(f) => crate::record::line(&TwoWayMultipath {
            forward: f.clone(),
            reverse: result.clone(),
        }),
        None => crate::record::line(&result),
    };
    let picture = || {
        let pp = |r: &MdaResult| r.per_packet.iter().map(|p| p.addr).collect::<Vec<_>>();
        let (fpp, rpp) = (forward.as_ref().map(pp).unwrap_or_default(), pp(&result));
        fn part<'a>(r: &'a MdaResult, what: &str, per_packet: &'a [IpAddr]) -> DotPart<'a> {
            DotPart {
                title: format!(
                    "{what}: from {} to {}, {}, confidence {}: {}, {} probes",
                    r.source,
                    r.destination,
                    r.protocol.as_str(),
                    r.confidence,
                    r.stop_reason.as_str(),
                    r.probes_sent
                ),
                source: Some(r.source),
                destination: Some(r.destination),
                graph: &r.graph,
                highlight: &[],
                per_packet,
            }
        }
        let mut parts = Vec::new();
        if let Some(f) = &forward {
            parts.push(part(f, "FORWARD", &fpp[..]));
        }
        parts.push(part(&result, "REVERSE", &rpp[..]));
        svctr_core::render_dot(&parts)
    };
    match format {
        TraceFormat::Json | TraceFormat::Jsonl => run.print(&json()),
        TraceFormat::Dot => run.print(&picture()),
        TraceFormat::Svg => run.print(&crate::graph::svg(&picture())?),
        TraceFormat::Replies => {
            if let Some(f) = &forward {
                run.print(&crate::replies::multipath_lines(f));
            }
            run.print(&crate::replies::multipath_lines(&result));
        }
        TraceFormat::Text | TraceFormat::Atlas | TraceFormat::Warts => {}
    }
    run.finish()?;
    if run.output_closed() {
        return Ok(Outcome::Closed);
    }
    if result.stop_reason.is_ok() || !result.graph.hops.is_empty() {
        Ok(Outcome::Printed(1))
    } else {
        Ok(Outcome::nothing(format!(
            "{server}: {}",
            svctr_core::multipath_stop_text(&result)
        )))
    }
}

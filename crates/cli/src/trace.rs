//! `trace`: classic, Paris and Dublin traceroute with the habits of traceroute(8): its flags,
//! `HOST [PACKETLEN]`, IPv4 first for a dual-stack name, and each hop printed as soon as it is
//! known; with `--multipath`, every load-balanced path (the MDA engine), as text, JSON or a
//! Graphviz picture.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

use clap::Args;
use svctr_core::{
    DotPart, MdaConfig, MdaEvent, MdaResult, Protocol, TracerouteConfig, TracerouteEvent,
    TracerouteResult,
};
use svctr_io::{multipath, traceroute, MultipathOptions, TracerouteOptions};

use crate::args::{
    parse_port, parse_sendwait, AlgorithmArg, DurationArg, MultipathOpts, ReceiveArg, StrategyArg,
    TraceFormat,
};
use crate::error::CliError;
use crate::output::Run;
use crate::Outcome;

#[derive(Args)]
pub(crate) struct TraceArgs {
    /// Targets: IP addresses or host names; a last number is the packet length, as in
    /// traceroute(8) (`trace HOST 60`).
    #[arg(required = true, value_name = "TARGET")]
    targets: Vec<String>,
    /// ICMP echo probes.
    #[arg(short = 'I', long = "icmp", group = "proto")]
    icmp: bool,
    /// UDP probes (the default).
    #[arg(short = 'U', long = "udp", group = "proto")]
    udp: bool,
    /// TCP SYN probes.
    #[arg(short = 'T', long = "tcp", group = "proto")]
    tcp: bool,
    /// traceroute(8)'s method: default or udp, icmp, tcp.
    #[arg(short = 'M', long = "method", group = "proto", value_name = "METHOD")]
    method: Option<String>,
    /// traceroute(8)'s raw protocol: 1 or icmp, 6 or tcp, 17 or udp (the probes of that
    /// protocol).
    #[arg(short = 'P', long = "protocol", group = "proto", value_name = "PROTO")]
    raw_protocol: Option<String>,
    /// IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,
    /// IPv6 only (a host name with both is traced over IPv4 unless -6 is given, as
    /// traceroute(8) does).
    #[arg(short = '6')]
    ipv6: bool,
    /// Every load-balanced path, not one: vary the flow identifier and enumerate each
    /// router's successors until none is missed with the --confidence (the Multipath
    /// Detection Algorithm, MDA).
    #[arg(long, conflicts_with_all = ["strategy", "queries", "sim_queries", "algorithm",
          "retries", "sendwait", "dont_fragment", "payload", "extensions"])]
    multipath: bool,
    #[command(flatten)]
    mp: MultipathOpts,
    /// Where the probe number goes.
    #[arg(long, value_enum, default_value_t = TracerouteConfig::default().strategy.into())]
    strategy: StrategyArg,
    /// First TTL.
    #[arg(short = 'f', long = "first", visible_alias = "first-ttl",
          default_value_t = TracerouteConfig::default().first_ttl,
          value_parser = clap::value_parser!(u8).range(1..))]
    first_ttl: u8,
    /// Max TTL.
    #[arg(short = 'm', long = "max-hops", visible_alias = "max-ttl",
          default_value_t = TracerouteConfig::default().max_ttl,
          value_parser = clap::value_parser!(u8).range(1..))]
    max_ttl: u8,
    /// Probes per hop.
    #[arg(short = 'q', long = "queries", visible_alias = "probes",
          default_value_t = TracerouteConfig::default().probes_per_hop,
          value_parser = clap::value_parser!(u8).range(1..=10))]
    queries: u8,
    /// Wait for each reply (seconds, or with a unit).
    #[arg(short = 'w', long = "wait", visible_alias = "timeout",
          default_value_t = DurationArg(TracerouteConfig::default().timeout))]
    wait: DurationArg,
    /// Destination port (UDP: the base port, 33434; TCP: 80).
    #[arg(short = 'p', long = "port", value_parser = parse_port)]
    port: Option<u16>,
    /// Source port (default: one reserved for this process).
    #[arg(long, value_parser = parse_port)]
    sport: Option<u16>,
    /// Source address of the probes.
    #[arg(short = 's', long = "source", value_name = "ADDR")]
    source: Option<IpAddr>,
    /// TOS (IPv4) or traffic class (IPv6) of the probes.
    #[arg(short = 't', long = "tos", default_value_t = 0)]
    tos: u8,
    /// Set "don't fragment" on IPv4 probes.
    #[arg(short = 'F', long = "dont-fragment")]
    dont_fragment: bool,
    /// traceroute(8)'s AS path lookups: not supported (they query a routing registry over the
    /// Internet).
    #[arg(short = 'A', long = "as-path-lookups")]
    as_lookups: bool,
    /// Gap between two probes of a target (traceroute(8)'s -z: a number above 10 is
    /// milliseconds, else seconds; or a duration with a unit).
    #[arg(short = 'z', long = "sendwait", value_parser = parse_sendwait)]
    sendwait: Option<Duration>,
    /// Show the ICMP extensions routers add (MPLS label stacks, RFC 4950) in text output.
    #[arg(short = 'e', long = "extensions")]
    extensions: bool,
    /// Extra payload bytes per probe (the packet length argument sets it too).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1400))]
    payload: u16,
    /// Probes in flight per target (like traceroute -N).
    #[arg(short = 'N', long = "sim-queries",
          default_value_t = TracerouteConfig::default().max_in_flight as u16,
          value_parser = clap::value_parser!(u16).range(1..))]
    sim_queries: u16,
    /// Extra rounds for a hop nobody answered (each sends --queries more probes).
    #[arg(long, default_value_t = 0)]
    retries: u8,
    /// Do not resolve hop addresses to names.
    #[arg(short = 'n')]
    numeric: bool,
    /// Interface to send from and capture on.
    #[arg(short = 'i', long = "interface")]
    iface: Option<String>,
    /// How replies are received: raw sockets (a short run costs ~30 ms less: no packet
    /// socket to set up and tear down) or a libpcap capture (probe send times from the
    /// kernel; for many targets).
    #[arg(long, value_enum, default_value = "auto")]
    receive: ReceiveArg,
    /// Keep every probe as it left and every reply matched to one in this pcap file, with
    /// their kernel timestamps (tshark, Wireshark and tcpdump -r read it; receives with a
    /// capture).
    #[arg(long, value_name = "FILE")]
    pcap: Option<std::path::PathBuf>,
    /// The AS number of each hop from this offline IP-to-AS table: an ip2asn TSV file of
    /// iptoasn.com, uncompressed (shown as traceroute -A shows them, `[AS64512]`).
    #[arg(long, value_name = "FILE", conflicts_with = "multipath")]
    asn: Option<std::path::PathBuf>,
    /// Targets traced at once.
    #[arg(long, default_value_t = TracerouteConfig::default().parallel as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    parallel: u32,
    /// Probes per second over all targets (0: no limit).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Stop after this many consecutive silent hops (0: never). The default is scamper's gap
    /// limit (5), not the flow tracer's (3): a fresh traceroute has no flow whose remote
    /// distance bounds it.
    #[arg(long, default_value_t = TracerouteConfig::default().max_missing)]
    max_missing: u8,
    /// Probe scheduling.
    #[arg(long, value_enum, default_value_t = TracerouteConfig::default().algorithm.into())]
    algorithm: AlgorithmArg,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: TraceFormat,
}

/// The probe protocol the flags ask for.
fn protocol(a: &TraceArgs) -> Result<Protocol, CliError> {
    if a.icmp {
        return Ok(Protocol::Icmp);
    }
    if a.tcp {
        return Ok(Protocol::Tcp);
    }
    if let Some(m) = &a.method {
        return match m.to_ascii_lowercase().as_str() {
            "default" | "udp" => Ok(Protocol::Udp),
            "icmp" => Ok(Protocol::Icmp),
            "tcp" => Ok(Protocol::Tcp),
            other => Err(CliError::input(format!(
                "-M {other}: not supported (methods: default, udp, icmp, tcp)"
            ))),
        };
    }
    if let Some(p) = &a.raw_protocol {
        return match p.to_ascii_lowercase().as_str() {
            "1" | "icmp" => Ok(Protocol::Icmp),
            "6" | "tcp" => Ok(Protocol::Tcp),
            "17" | "udp" => Ok(Protocol::Udp),
            other => Err(CliError::input(format!(
                "-P {other}: not supported (protocols: 1/icmp, 6/tcp, 17/udp)"
            ))),
        };
    }
    Ok(Protocol::Udp)
}

/// Resolves a target to one address of the wanted family: IPv4 first for a name with both
/// (traceroute(8)'s choice) unless `-6`. Returns the address and the name if it was one.
pub(crate) fn resolve(
    target: &str,
    v4: bool,
    v6: bool,
) -> Result<(IpAddr, Option<String>), CliError> {
    let pick = |ip: &IpAddr| (!v4 || ip.is_ipv4()) && (!v6 || ip.is_ipv6());
    if let Ok(ip) = target.parse::<IpAddr>() {
        if pick(&ip) {
            return Ok((ip, None));
        }
        return Err(CliError::input(format!(
            "{target} is an IPv{} address but -{} was given",
            if ip.is_ipv4() { 4 } else { 6 },
            if v4 { 4 } else { 6 }
        )));
    }
    let addrs: Vec<IpAddr> = (target, 0u16)
        .to_socket_addrs()
        .map_err(|e| CliError::input(format!("cannot resolve {target:?}: {e}")))?
        .map(|a| a.ip())
        .filter(pick)
        .collect();
    let ip = addrs
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| {
            CliError::input(format!(
                "{target:?} has no IPv{} address",
                if v6 { 6 } else { 4 }
            ))
        })?;
    Ok((ip, Some(target.to_string())))
}

/// The probe's headers for `protocol` over IPv4 or IPv6 (what a packet length includes
/// besides the payload).
fn header_len(protocol: Protocol, v6: bool) -> u16 {
    let ip = if v6 { 40 } else { 20 };
    ip + match protocol {
        Protocol::Tcp => 20,
        Protocol::Udp | Protocol::Icmp => 8,
    }
}

/// Prints a run's text as it comes: targets in the order given, each target's header as its
/// trace starts, each hop as soon as it is known, the stop line when it ends. Traces of later
/// targets are held until the earlier ones are printed.
struct Streamer {
    order: Vec<IpAddr>,
    names: HashMap<IpAddr, String>,
    next: usize,
    held: HashMap<IpAddr, String>,
    done: HashSet<IpAddr>,
}

impl Streamer {
    fn new(order: Vec<IpAddr>, names: HashMap<IpAddr, String>) -> Self {
        Self {
            order,
            names,
            next: 0,
            held: HashMap::new(),
            done: HashSet::new(),
        }
    }

    fn name(&self, target: &IpAddr) -> Option<&str> {
        self.names.get(target).map(String::as_str)
    }

    /// Text of `target`; `finished`: its last.
    fn push(&mut self, target: IpAddr, text: &str, finished: bool, run: &mut Run) {
        if self.order.get(self.next) == Some(&target) {
            run.print(text);
            if finished {
                self.advance(run);
            }
        } else {
            self.held.entry(target).or_default().push_str(text);
            if finished {
                self.done.insert(target);
            }
        }
    }

    /// The current target is printed: print what the next ones hold, as far as they are done.
    fn advance(&mut self, run: &mut Run) {
        loop {
            self.next += 1;
            let Some(t) = self.order.get(self.next) else {
                return;
            };
            if let Some(text) = self.held.remove(t) {
                run.print(&text);
            }
            if !self.done.contains(t) {
                return;
            }
        }
    }

    fn traceroute_event(
        &mut self,
        ev: &TracerouteEvent,
        c: &TracerouteConfig,
        extensions: bool,
        run: &mut Run,
    ) {
        match ev {
            TracerouteEvent::Started { target, source } => {
                let port = (c.protocol != Protocol::Icmp).then(|| c.dest_port());
                let header = svctr_core::traceroute_header(
                    *target,
                    self.name(target),
                    port,
                    c.protocol,
                    c.strategy,
                    *source,
                    Some(c.max_ttl),
                );
                self.push(*target, &(header + "\n"), false, run);
            }
            TracerouteEvent::Hop { target, hop } => {
                self.push(
                    *target,
                    &svctr_core::render_hop(hop, extensions),
                    false,
                    run,
                );
            }
            TracerouteEvent::Finished(r) => {
                let text = svctr_core::traceroute_stop_line(r) + "\n\n";
                self.push(r.destination, &text, true, run);
            }
            _ => {}
        }
    }

    fn multipath_event(&mut self, ev: &MdaEvent, c: &MdaConfig, run: &mut Run) {
        match ev {
            MdaEvent::Started { target, source } => {
                let port = (c.protocol != Protocol::Icmp).then(|| c.dest_port());
                let header = svctr_core::multipath_header(
                    *target,
                    self.name(target),
                    c.protocol,
                    port,
                    *source,
                    c.max_ttl,
                    c.confidence,
                );
                self.push(*target, &(header + "\n"), false, run);
            }
            MdaEvent::Hop { target, hop, links } => {
                self.push(
                    *target,
                    &svctr_core::render_multipath_hop(hop, links),
                    false,
                    run,
                );
            }
            MdaEvent::Finished(r) => {
                let text = svctr_core::multipath_footer(r) + "\n";
                self.push(r.destination, &text, true, run);
            }
            _ => {}
        }
    }
}

/// The Graphviz picture of traceroute results.
fn traceroute_dot(results: &[TracerouteResult], names: &HashMap<IpAddr, String>) -> String {
    let graphs: Vec<_> = results.iter().map(TracerouteResult::graph).collect();
    let parts: Vec<DotPart<'_>> = results
        .iter()
        .zip(&graphs)
        .map(|(r, g)| DotPart {
            title: format!(
                "traceroute from {} to {}, {} {}",
                r.source,
                titled(r.destination, names),
                r.protocol.as_str(),
                r.strategy.as_str()
            ),
            source: Some(r.source),
            destination: Some(r.destination),
            graph: g,
            highlight: &[],
            per_packet: &[],
        })
        .collect();
    svctr_core::render_dot(&parts)
}

/// The Graphviz picture of multipath results.
fn multipath_dot(results: &[MdaResult], names: &HashMap<IpAddr, String>) -> String {
    let per_packet: Vec<Vec<IpAddr>> = results
        .iter()
        .map(|r| r.per_packet.iter().map(|p| p.addr).collect())
        .collect();
    let parts: Vec<DotPart<'_>> = results
        .iter()
        .zip(&per_packet)
        .map(|(r, pp)| DotPart {
            title: format!(
                "multipath from {} to {}, {}, confidence {}: {}, {} probes",
                r.source,
                titled(r.destination, names),
                r.protocol.as_str(),
                r.confidence,
                r.stop_reason.as_str(),
                r.probes_sent
            ),
            source: Some(r.source),
            destination: Some(r.destination),
            graph: &r.graph,
            highlight: &[],
            per_packet: pp,
        })
        .collect();
    svctr_core::render_dot(&parts)
}

fn titled(ip: IpAddr, names: &HashMap<IpAddr, String>) -> String {
    match names.get(&ip) {
        Some(n) => format!("{n} ({ip})"),
        None => ip.to_string(),
    }
}

/// The end of a run: what is printed at the end (JSON, or the picture), the capture's drops,
/// the outcome.
fn end_run<T: crate::record::Record>(
    mut run: Run,
    format: TraceFormat,
    results: &[T],
    drops: u32,
    dot: impl FnOnce() -> String,
) -> Result<Outcome, CliError> {
    match format {
        TraceFormat::Json => run.print(&crate::record::collection(results)),
        TraceFormat::Dot if !results.is_empty() => run.print(&dot()),
        TraceFormat::Svg if !results.is_empty() => run.print(&crate::graph::svg(&dot())?),
        _ => {}
    }
    run.finish()?;
    if drops > 0 {
        crate::flow::warn_drops(drops);
    }
    Ok(Outcome::of(&run, results.len()))
}

pub(crate) fn run_trace(a: TraceArgs) -> Result<Outcome, CliError> {
    if a.as_lookups {
        return Err(CliError::input(
            "-A (AS path lookups) queries a routing registry over the Internet: use --asn FILE \
             with an offline table (iptoasn.com's ip2asn TSV)",
        ));
    }
    if let Some(path) = &a.asn {
        crate::asn::load(path)?;
    }
    if a.pcap.is_some() && a.receive == ReceiveArg::Raw {
        return Err(CliError::input(
            "--pcap needs a capture (--receive pcap or auto): raw sockets do not see the probes leave",
        ));
    }
    let protocol = protocol(&a)?;
    let mut names = a.targets.clone();
    // traceroute(8): `HOST PACKETLEN`.
    let packet_len = match names.as_slice() {
        [_, .., last] if last.chars().all(|c| c.is_ascii_digit()) => {
            let len = last
                .parse::<u16>()
                .map_err(|_| CliError::input(format!("packet length {last} is too large")))?;
            names.pop();
            Some(len)
        }
        _ => None,
    };
    let mut targets = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut target_names = HashMap::new();
    for t in &names {
        let (ip, name) = resolve(t, a.ipv4, a.ipv6)?;
        if !seen.insert(ip) {
            return Err(CliError::input(format!("{t} ({ip}) is given twice")));
        }
        if let Some(n) = name {
            target_names.insert(ip, n);
        }
        targets.push(ip);
    }
    if a.format == TraceFormat::Svg {
        crate::graph::check_dot()?;
    }
    if a.multipath {
        let refused = match a.format {
            TraceFormat::Atlas => Some(("atlas", "an Atlas traceroute result is one path")),
            _ => None,
        };
        if let Some((f, why)) = refused {
            return Err(CliError::input(format!(
                "--format {f} takes no --multipath: {why}"
            )));
        }
        if packet_len.is_some() {
            return Err(CliError::input(
                "--multipath takes no packet length: its probes are as small as they can be",
            ));
        }
        return run_multipath(a, protocol, targets, target_names);
    }
    let payload = match packet_len {
        // The packet length counts the headers of the first target's family; smaller than
        // them gives the smallest probe, as traceroute(8) does.
        Some(len) => len.saturating_sub(header_len(protocol, targets[0].is_ipv6())),
        None => a.payload,
    };
    let gap = a.sendwait.unwrap_or(Duration::ZERO);
    let config = TracerouteConfig {
        protocol,
        strategy: a.strategy.into(),
        port: a.port,
        sport: a.sport.unwrap_or(0),
        marker: 0,
        payload_size: payload,
        tos: a.tos,
        dont_fragment: a.dont_fragment,
        algorithm: a.algorithm.into(),
        first_ttl: a.first_ttl,
        max_ttl: a.max_ttl,
        probes_per_hop: a.queries,
        timeout: a.wait.0,
        inter_probe: gap,
        inter_hop: gap,
        max_missing: a.max_missing,
        max_in_flight: usize::from(a.sim_queries),
        retries: a.retries,
        parallel: a.parallel as usize,
        ..TracerouteConfig::default()
    };
    // Names are resolved in the background as hops come in, never on the probing path.
    let opts = TracerouteOptions {
        targets: targets.clone(),
        config: config.clone(),
        iface: a.iface,
        rate: a.rate,
        resolve_names: !a.numeric,
        source: a.source,
        receive: a.receive.into(),
        pcap: a.pcap,
    };
    if a.format == TraceFormat::Warts {
        crate::output::binary_output_ok()?;
    }
    let mut run = Run::start_lazy()?;
    let stop = std::sync::Arc::clone(&run.stop);
    let mut streamer = Streamer::new(targets, target_names.clone());
    let mut warts = crate::warts::Writer::new();
    let (format, extensions) = (a.format, a.extensions);
    let summary = traceroute(&opts, &stop, |ev| {
        let ev = with_asn(ev);
        match (format, &*ev) {
            (TraceFormat::Text, ev) => {
                streamer.traceroute_event(ev, &config, extensions, &mut run);
            }
            (TraceFormat::Jsonl, TracerouteEvent::Finished(r)) => {
                run.print(&crate::record::line(r));
            }
            (TraceFormat::Atlas, TracerouteEvent::Finished(r)) => {
                run.print(&crate::atlas::traceroute_line(r));
            }
            (TraceFormat::Replies, TracerouteEvent::Finished(r)) => {
                run.print(&crate::replies::traceroute_lines(r));
            }
            (TraceFormat::Warts, TracerouteEvent::Finished(r)) => run.write(&warts.trace(r)),
            _ => {}
        }
    })
    .map_err(|e| CliError::from(e).naming_ttls("-f", "-m"))?;
    let mut summary = summary;
    for r in &mut summary.results {
        crate::asn::annotate(&mut r.hops);
    }
    if format == TraceFormat::Warts {
        run.write(&warts.finish());
    }
    end_run(run, format, &summary.results, summary.capture_drops, || {
        traceroute_dot(&summary.results, &target_names)
    })
}

/// The event with the AS numbers of its hops (`--asn`; the event itself without a table).
fn with_asn(ev: &TracerouteEvent) -> std::borrow::Cow<'_, TracerouteEvent> {
    if !crate::asn::loaded() {
        return std::borrow::Cow::Borrowed(ev);
    }
    let mut ev = ev.clone();
    match &mut ev {
        TracerouteEvent::Hop { hop, .. } => crate::asn::annotate(std::slice::from_mut(hop)),
        TracerouteEvent::Finished(r) => crate::asn::annotate(&mut r.hops),
        _ => {}
    }
    std::borrow::Cow::Owned(ev)
}

/// `trace --multipath`.
fn run_multipath(
    a: TraceArgs,
    protocol: Protocol,
    targets: Vec<IpAddr>,
    names: HashMap<IpAddr, String>,
) -> Result<Outcome, CliError> {
    let config = MdaConfig {
        protocol,
        port: a.port,
        sport: a.sport.unwrap_or(0),
        first_ttl: a.first_ttl,
        max_ttl: a.max_ttl,
        confidence: a.mp.confidence,
        timeout: a.wait.0,
        max_missing: a.max_missing,
        max_probes: a.mp.max_probes,
        tos: a.tos,
        parallel: a.parallel as usize,
        ..MdaConfig::default()
    };
    let opts = MultipathOptions {
        targets: targets.clone(),
        config: config.clone(),
        iface: a.iface,
        rate: a.rate,
        resolve_names: !a.numeric,
        source: a.source,
        receive: a.receive.into(),
        pcap: a.pcap,
    };
    if a.format == TraceFormat::Warts {
        crate::output::binary_output_ok()?;
    }
    let mut run = Run::start_lazy()?;
    let stop = std::sync::Arc::clone(&run.stop);
    let mut streamer = Streamer::new(targets, names.clone());
    let mut warts = crate::warts::Writer::new();
    let format = a.format;
    let summary = multipath(&opts, &stop, |ev| match (format, ev) {
        (TraceFormat::Text, _) => streamer.multipath_event(ev, &config, &mut run),
        (TraceFormat::Jsonl, MdaEvent::Finished(r)) => run.print(&crate::record::line(r)),
        (TraceFormat::Replies, MdaEvent::Finished(r)) => {
            run.print(&crate::replies::multipath_lines(r));
        }
        // scamper's tracelb object: its multipath traceroute.
        (TraceFormat::Warts, MdaEvent::Finished(r)) => run.write(&warts.tracelb(r)),
        _ => {}
    })
    .map_err(|e| CliError::from(e).naming_ttls("-f", "-m"))?;
    if format == TraceFormat::Warts {
        run.write(&warts.finish());
    }
    end_run(run, format, &summary.results, summary.capture_drops, || {
        multipath_dot(&summary.results, &names)
    })
}

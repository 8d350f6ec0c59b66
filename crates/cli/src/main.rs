//! `service-traceroute`: the command line. It parses arguments, runs the library and prints;
//! every decision about probes and replies lives in the `svctr-core` engine.
//!
//! Exit status: 0 when traces were printed, 1 when nothing matched in time, 2 for bad input or
//! a failure to start (privileges, unknown interface), with a one-line error on stderr.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use svctr_core::{
    Algorithm, DetectorConfig, FlowFilter, FlowSelector, Granularity, MonitorConfig, Protocol,
    ServiceSpec, Signatures, Strategy, TraceConfig, TraceResult, TracerouteConfig, TracerouteEvent,
};
use svctr_io::{
    monitor, trace_flows, traceroute, Error, FlowTraceOptions, MonitorOptions, TracerouteOptions,
};

#[derive(Parser)]
#[command(
    name = "service-traceroute",
    version,
    about = "Shows the network path that a live application flow really takes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trace the path of live TCP or UDP flows with probes that carry the flow's own 5-tuple.
    Flow(FlowArgs),
    /// Classic, Paris or Dublin traceroute to one or more targets, with the flags of traceroute(8).
    Trace(TraceArgs),
    /// Trace a live flow, then fresh Paris flows to the same destination and port, and show
    /// where their paths differ (the Service Traceroute paper's experiment).
    Compare(CompareArgs),
    /// Watch for the flows of named services (DNS, TLS and QUIC server names, IP prefixes) and
    /// trace each, re-tracing long-lived ones, until stopped; results as JSON lines.
    Monitor(MonitorArgs),
    /// List the service signatures (the shipped ones and those of --signatures files).
    Services(ServicesArgs),
}

#[derive(Args)]
struct CompareArgs {
    /// Interface to capture on and send from.
    #[arg(long, short = 'i')]
    iface: String,
    /// The flow is TCP.
    #[arg(long, conflicts_with = "udp", required_unless_present = "udp")]
    tcp: bool,
    /// The flow is UDP.
    #[arg(long)]
    udp: bool,
    /// The flow's remote end: IP:PORT.
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
    /// Probes per TTL, for both.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..))]
    probes: u8,
    /// Per-probe timeout.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
    /// Output format (json: the comparison with both traces).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

fn run_compare(a: CompareArgs) -> Result<ExitCode, Error> {
    let (remote_ip, Some(remote_port)) = a.remote else {
        return Err(Error::Unsupported(
            "--remote needs a port for compare (IP:PORT)".into(),
        ));
    };
    let protocol = if a.udp { Protocol::Udp } else { Protocol::Tcp };
    let opts = FlowTraceOptions {
        iface: a.iface.clone(),
        selector: FlowSelector {
            protocol,
            remote_ip: Some(remote_ip),
            remote_port: Some(remote_port),
            local_port: a.local_port,
        },
        trace: TraceConfig {
            probes_per_hop: a.probes,
            timeout: a.timeout,
            ..TraceConfig::default()
        },
        count: 1,
        duration: a.duration,
        udp_shield: true,
    };
    let stop = stop_flag()?;
    let mut flow = None;
    trace_flows(&opts, &stop, |r| flow = Some(r))?;
    let Some(flow) = flow else {
        return Err(Error::Unsupported("the flow trace was interrupted".into()));
    };
    // Fresh flows: Paris probes to the same port, each from its own new source port. They stop
    // where the flow's probes stopped, short of the remote, so the application never sees them.
    let max_ttl = flow.hops.last().map_or(1, |h| h.ttl).max(1);
    let mut fresh = Vec::new();
    for _ in 0..a.fresh {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let config = TracerouteConfig {
            protocol,
            strategy: Strategy::Paris,
            port: Some(remote_port),
            max_ttl,
            probes_per_hop: a.probes,
            timeout: a.timeout,
            marker: 0,
            ..TracerouteConfig::default()
        };
        let topts = TracerouteOptions {
            targets: vec![remote_ip],
            config,
            iface: Some(a.iface.clone()),
            parallel: 1,
            rate: 0,
            resolve_names: false,
            source: None,
        };
        fresh.extend(traceroute(&topts, &stop, |_| {})?);
    }
    let c = svctr_core::compare(flow, fresh);
    let mut out = io::stdout().lock();
    let res = match a.format {
        Format::Text => write!(out, "{}", svctr_core::render_comparison(&c)),
        Format::Json | Format::Jsonl => serde_json::to_string(&c)
            .map_err(io::Error::other)
            .and_then(|t| writeln!(out, "{t}")),
    };
    Ok(output_failure(res.err()).unwrap_or(ExitCode::SUCCESS))
}

#[derive(Args)]
struct TraceArgs {
    /// Targets: IP addresses or host names.
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
    /// IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,
    /// IPv6 only.
    #[arg(short = '6')]
    ipv6: bool,
    /// classic (probe number in a port: each probe may take another path), paris or dublin
    /// (constant flow identifier).
    #[arg(long, default_value = "paris", value_parser = parse_strategy)]
    strategy: Strategy,
    /// First TTL.
    #[arg(short = 'f', long = "first", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    first_ttl: u8,
    /// Max TTL.
    #[arg(short = 'm', long = "max-hops", default_value_t = 30, value_parser = clap::value_parser!(u8).range(1..))]
    max_ttl: u8,
    /// Probes per hop.
    #[arg(short = 'q', long = "queries", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=10))]
    queries: u8,
    /// Wait for each reply (seconds, or with a unit).
    #[arg(short = 'w', long = "wait", default_value = "3", value_parser = parse_duration)]
    wait: Duration,
    /// Destination port (UDP: the base port, 33434; TCP: 80).
    #[arg(short = 'p', long = "port", value_parser = parse_port)]
    port: Option<u16>,
    /// Source port (default: one reserved for this process).
    #[arg(long, value_parser = parse_port)]
    sport: Option<u16>,
    /// Extra payload bytes per probe.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1400))]
    payload: u16,
    /// Probes in flight per target (like traceroute -N).
    #[arg(short = 'N', long = "sim-queries", default_value_t = 16)]
    sim_queries: usize,
    /// Extra rounds for a hop nobody answered (each sends --queries more probes).
    #[arg(long, default_value_t = 0)]
    retries: u8,
    /// Do not resolve hop addresses to names.
    #[arg(short = 'n')]
    numeric: bool,
    /// Interface to send from and capture on.
    #[arg(short = 'i', long = "interface")]
    iface: Option<String>,
    /// Targets traced at once.
    #[arg(long, default_value_t = 1024)]
    parallel: usize,
    /// Probes per second over all targets (0: no limit).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Stop after this many consecutive silent hops (0: never).
    #[arg(long, default_value_t = 5)]
    max_missing: u8,
    /// Probe scheduling.
    #[arg(long, default_value = "concurrent", value_parser = parse_algorithm)]
    algorithm: Algorithm,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    s.parse()
}

/// Resolves a target to one address of the wanted family.
fn resolve(target: &str, v4: bool, v6: bool) -> Result<IpAddr, Error> {
    let pick = |ip: IpAddr| (!v4 || ip.is_ipv4()) && (!v6 || ip.is_ipv6());
    if let Ok(ip) = target.parse::<IpAddr>() {
        return if pick(ip) {
            Ok(ip)
        } else {
            Err(Error::Unsupported(format!(
                "{target} is an IPv{} address but -{} was given",
                if ip.is_ipv4() { 4 } else { 6 },
                if v4 { 4 } else { 6 }
            )))
        };
    }
    let addrs = (target, 0u16)
        .to_socket_addrs()
        .map_err(|e| Error::Unsupported(format!("cannot resolve {target:?}: {e}")))?;
    addrs.map(|a| a.ip()).find(|ip| pick(*ip)).ok_or_else(|| {
        Error::Unsupported(format!(
            "{target:?} has no IPv{} address",
            if v6 { 6 } else { 4 }
        ))
    })
}

fn run_trace(a: TraceArgs) -> Result<ExitCode, Error> {
    if a.first_ttl > a.max_ttl {
        return Err(Error::Unsupported(format!(
            "-f {} is above -m {}",
            a.first_ttl, a.max_ttl
        )));
    }
    let protocol = if a.icmp {
        Protocol::Icmp
    } else if a.tcp {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    let mut targets = Vec::new();
    for t in &a.targets {
        let ip = resolve(t, a.ipv4, a.ipv6)?;
        if targets.contains(&ip) {
            return Err(Error::Unsupported(format!("{t} ({ip}) is given twice")));
        }
        targets.push(ip);
    }
    let config = TracerouteConfig {
        protocol,
        strategy: a.strategy,
        port: a.port,
        sport: a.sport.unwrap_or(0),
        marker: 0,
        payload_size: a.payload,
        algorithm: a.algorithm,
        first_ttl: a.first_ttl,
        max_ttl: a.max_ttl,
        probes_per_hop: a.queries,
        timeout: a.wait,
        max_missing: a.max_missing,
        max_in_flight: a.sim_queries,
        retries: a.retries,
        ..TracerouteConfig::default()
    };
    // Names are resolved in the background as hops come in, never on the probing path.
    let opts = TracerouteOptions {
        targets,
        config,
        iface: a.iface,
        parallel: a.parallel,
        rate: a.rate,
        resolve_names: !a.numeric,
        source: None,
    };
    let stop = stop_flag()?;
    let stdout = io::stdout();
    let mut write_error = None;
    let results = traceroute(&opts, &stop, |ev| {
        if let TracerouteEvent::Finished(r) = ev {
            let text = match a.format {
                Format::Text => Some(svctr_core::render_traceroute_text(r)),
                Format::Jsonl => serde_json::to_string(r).ok(),
                Format::Json => None,
            };
            if let Some(t) = text {
                let mut out = stdout.lock();
                if let Err(e) = writeln!(out, "{t}").and_then(|()| out.flush()) {
                    write_error.get_or_insert(e);
                }
            }
        }
    })?;
    if matches!(a.format, Format::Json) {
        if let Err(e) = write_json_collection(&results) {
            write_error.get_or_insert(e);
        }
    }
    if let Some(code) = output_failure(write_error) {
        return Ok(code);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// traceroute-like text
    Text,
    /// one JSON object per flow (an array when several flows were traced)
    Json,
    /// one JSON object per line, printed as each trace finishes
    Jsonl,
}

/// Which flows: by 5-tuple, by service, or both.
#[derive(Args)]
struct SelectArgs {
    /// Interface to capture on and send probes from (`any`: all of them).
    #[arg(long, short = 'i')]
    iface: String,
    /// Trace TCP flows (with --udp: both; neither: both when a service is given).
    #[arg(long)]
    tcp: bool,
    /// Trace UDP flows.
    #[arg(long)]
    udp: bool,
    /// The flow's remote end: IP or IP:PORT ([IPv6]:PORT).
    #[arg(long, value_parser = parse_remote, value_name = "IP[:PORT]")]
    remote: Option<(IpAddr, Option<u16>)>,
    /// The flow's local port.
    #[arg(long, value_parser = parse_port)]
    local_port: Option<u16>,
    /// Trace the flows of this service of the signatures (repeatable; see `services`).
    #[arg(long, value_name = "NAME")]
    service: Vec<String>,
    /// Trace the flows to names under this domain (repeatable; a service of its own).
    #[arg(long, value_name = "SUFFIX")]
    domain: Vec<String>,
    /// Trace the flows to addresses in this prefix (repeatable; a service of its own).
    #[arg(long, value_name = "PREFIX")]
    cidr: Vec<String>,
    /// More service signatures (TOML, format 1; repeatable). Without --service, every
    /// service of these files is traced.
    #[arg(long, value_name = "FILE")]
    signatures: Vec<std::path::PathBuf>,
    /// Do not recognise flows from sniffed DNS answers.
    #[arg(long)]
    no_dns: bool,
    /// Do not recognise TCP flows by their TLS ClientHello's server name.
    #[arg(long)]
    no_tls: bool,
    /// Do not recognise UDP flows by their QUIC Initial's server name.
    #[arg(long)]
    no_quic: bool,
}

/// How each flow is traced.
#[derive(Args)]
struct TraceArgsCommon {
    /// Probe scheduling.
    #[arg(long, default_value = "concurrent", value_parser = parse_algorithm)]
    algorithm: Algorithm,
    /// First TTL to probe.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    first_ttl: u8,
    /// Highest TTL to probe.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u8).range(1..))]
    max_ttl: u8,
    /// Probes per TTL.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..))]
    probes: u8,
    /// Gap between probes of one TTL (e.g. 0, 20ms).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    inter_probe: Duration,
    /// Gap between TTLs.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    inter_hop: Duration,
    /// How long each probe waits for its reply.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
    /// Stop after this many consecutive silent TTLs (0: never).
    #[arg(long, default_value_t = 3)]
    max_missing: u8,
    /// Stop at the TTL where this address answers (repeatable).
    #[arg(long, value_name = "IP")]
    stop_at: Vec<IpAddr>,
    /// A UDP flow silent this long has ended (0: never).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    flow_timeout: Duration,
    /// Extra rounds of --probes probes for a TTL nobody answered.
    #[arg(long, default_value_t = 0)]
    retries: u8,
    /// Probe up to --max-ttl even past the remote (by default probing stops one TTL short of
    /// the remote, whose distance comes from its packets' TTL, so the remote application never
    /// receives a probe).
    #[arg(long)]
    probe_remote: bool,
    /// Select flows for at most this long (e.g. 30, 30s, 1m); then exit once traces finish.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// At most this many probes per second over all flows, with bursts of 10 ms worth (0: no
    /// limit). The default lets a single trace go out at once and keeps thousands of flows
    /// from flooding the path (and the capture ring with replies).
    #[arg(long, default_value_t = 10_000)]
    rate: u32,
    /// Do not install the nftables rules that keep ICMP errors caused by UDP probes away from
    /// the application's socket.
    #[arg(long)]
    no_udp_shield: bool,
    /// The flow capture's kernel ring in MiB (default: 4 for --count up to 64, else 32). More
    /// absorbs longer stalls of a busy machine; less sets up faster.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u16).range(1..=1024))]
    capture_buffer: Option<u16>,
    /// Print the run's counters on stderr at the end (packets captured, flows recognised and
    /// traced, probes, the most traces at once).
    #[arg(long)]
    stats: bool,
}

#[derive(Args)]
struct FlowArgs {
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    trace: TraceArgsCommon,
    /// Exit after this many traced flows (0: until interrupted or --duration).
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Args)]
struct MonitorArgs {
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    trace: TraceArgsCommon,
    /// Trace a flow again (a destination, with --per) once this long has passed since its last
    /// trace ended ("never": once per run).
    #[arg(long, default_value = "600s", value_parser = parse_retrace)]
    retrace_after: Retrace,
    /// One trace per flow, per destination and port, or per destination.
    #[arg(long, default_value = "flow", value_parser = parse_granularity)]
    per: Granularity,
    /// Exit after this many traces (0: until interrupted or --duration).
    #[arg(long, default_value_t = 0)]
    count: usize,
    /// Output format.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: Format,
}

#[derive(Args)]
struct ServicesArgs {
    /// More service signatures (TOML, format 1; repeatable).
    #[arg(long, value_name = "FILE")]
    signatures: Vec<std::path::PathBuf>,
    /// Output format (json: an array of services).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("invalid port {s:?}: expected 1-65535")),
        Ok(p) => Ok(p),
    }
}

fn parse_remote(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(format!("invalid port in {s:?}: expected 1-65535"));
        }
        return Ok((sa.ip(), Some(sa.port())));
    }
    if let Some((ip, port)) = s.rsplit_once(':') {
        if ip.parse::<IpAddr>().is_ok() {
            return Err(format!("invalid port {port:?} in {s:?}: expected 1-65535"));
        }
    }
    Err(format!(
        "invalid address {s:?}: expected IP or IP:PORT (IPv6 as [IP]:PORT)"
    ))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && (0.0..1e9).contains(&secs) {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("invalid duration {s:?}"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (e.g. 2s, 150ms, 1m)"))
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse()
}

/// Prints collected results as JSON: one object for one result, else an array.
fn write_json_collection<T: serde::Serialize>(items: &[T]) -> io::Result<()> {
    let text = if items.len() == 1 {
        serde_json::to_string_pretty(&items[0])
    } else {
        serde_json::to_string_pretty(items)
    };
    let text = text.map_err(io::Error::other)?;
    writeln!(io::stdout().lock(), "{text}")
}

/// The exit status for an output error: a closed pipe (`| head`) is not a failure.
fn output_failure(e: Option<io::Error>) -> Option<ExitCode> {
    match e {
        Some(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            eprintln!("service-traceroute: error: writing output: {e}");
            Some(ExitCode::from(2))
        }
        _ => None,
    }
}

fn print_result(format: Format, r: &TraceResult, out: &mut impl Write) -> io::Result<()> {
    match format {
        Format::Text => writeln!(out, "{}", svctr_core::render_text(r)),
        Format::Jsonl => writeln!(
            out,
            "{}",
            serde_json::to_string(r).map_err(io::Error::other)?
        ),
        Format::Json => Ok(()),
    }?;
    out.flush()
}

fn parse_granularity(s: &str) -> Result<Granularity, String> {
    s.parse()
}

/// `--retrace-after`: a duration, or never (`never` or 0).
#[derive(Debug, Clone, Copy)]
struct Retrace(Option<Duration>);

fn parse_retrace(s: &str) -> Result<Retrace, String> {
    if s.eq_ignore_ascii_case("never") {
        return Ok(Retrace(None));
    }
    let d = parse_duration(s)?;
    Ok(Retrace((!d.is_zero()).then_some(d)))
}

/// The signature set the selection asks for: none (select by 5-tuple alone), or the named
/// services of the shipped and given files plus `--domain` and `--cidr` services.
fn services(a: &SelectArgs) -> Result<Option<Signatures>, Error> {
    if a.service.is_empty() && a.domain.is_empty() && a.cidr.is_empty() && a.signatures.is_empty() {
        return Ok(None);
    }
    let bad = |e: svctr_core::SignatureError| Error::Unsupported(e.to_string());
    let mut files = Signatures::empty();
    for f in &a.signatures {
        files.merge(Signatures::load(f).map_err(bad)?);
    }
    let mut selected = if !a.service.is_empty() {
        let mut all = Signatures::builtin();
        all.merge(files);
        let names: Vec<&str> = a.service.iter().map(String::as_str).collect();
        all.select(&names).map_err(bad)?
    } else {
        files
    };
    for d in &a.domain {
        let spec = ServiceSpec {
            name: d.clone(),
            domains: vec![d.clone()],
            ..ServiceSpec::default()
        };
        selected.add(spec, "--domain").map_err(bad)?;
    }
    for c in &a.cidr {
        let spec = ServiceSpec {
            name: c.clone(),
            prefixes: vec![c.clone()],
            ..ServiceSpec::default()
        };
        selected.add(spec, "--cidr").map_err(bad)?;
    }
    Ok(Some(selected))
}

/// The monitor configuration of `flow` and `monitor`.
fn monitor_config(
    s: &SelectArgs,
    t: &TraceArgsCommon,
    count: usize,
) -> Result<MonitorConfig, Error> {
    if t.first_ttl > t.max_ttl {
        return Err(Error::Unsupported(format!(
            "--first-ttl {} is above --max-ttl {}",
            t.first_ttl, t.max_ttl
        )));
    }
    let services = services(s)?;
    let protocol = match (s.tcp, s.udp) {
        (true, false) => Some(Protocol::Tcp),
        (false, true) => Some(Protocol::Udp),
        (true, true) => None,
        (false, false) if services.is_some() => None,
        (false, false) => {
            return Err(Error::Unsupported(
                "say which flows: --tcp, --udp, or a service (--service, --domain, --cidr)".into(),
            ))
        }
    };
    let trace = TraceConfig {
        algorithm: t.algorithm,
        first_ttl: t.first_ttl,
        max_ttl: t.max_ttl,
        probes_per_hop: t.probes,
        inter_probe: t.inter_probe,
        inter_hop: t.inter_hop,
        timeout: t.timeout,
        max_missing: t.max_missing,
        stop_at: t.stop_at.clone(),
        flow_timeout: t.flow_timeout,
        probe_remote: t.probe_remote,
        retries: t.retries,
        ..TraceConfig::default()
    };
    trace
        .validate()
        .map_err(|e| Error::Unsupported(e.to_string()))?;
    Ok(MonitorConfig {
        trace,
        filter: FlowFilter {
            protocol,
            remote_ip: s.remote.map(|r| r.0),
            remote_port: s.remote.and_then(|r| r.1),
            local_port: s.local_port,
        },
        services,
        detector: DetectorConfig {
            dns: !s.no_dns,
            tls: !s.no_tls,
            quic: !s.no_quic,
            ..DetectorConfig::default()
        },
        granularity: Granularity::Flow,
        retrace_after: None,
        max_traces: count,
    })
}

fn stop_flag() -> Result<Arc<AtomicBool>, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| Error::Socket {
            what: "installing the signal handler".into(),
            source: e,
        })?;
    }
    Ok(stop)
}

/// Runs the monitor and prints each result as it finishes (JSON: all at the end).
fn run_monitor(opts: MonitorOptions, format: Format, show_stats: bool) -> Result<ExitCode, Error> {
    let stop = stop_flag()?;
    let stdout = io::stdout();
    let mut collected = Vec::new();
    let mut write_error = None;
    let summary = monitor(&opts, &stop, |r| {
        if let Err(e) = print_result(format, &r, &mut stdout.lock()) {
            write_error.get_or_insert(e);
        }
        if matches!(format, Format::Json) {
            collected.push(r);
        }
    })?;
    if matches!(format, Format::Json) {
        if let Err(e) = write_json_collection(&collected) {
            write_error.get_or_insert(e);
        }
    }
    if let Some(code) = output_failure(write_error) {
        return Ok(code);
    }
    if show_stats {
        let st = &summary.stats;
        eprintln!(
            "service-traceroute: stats: captured {} packets (flows) + {} (detection), dropped {}; flows recognised {}, watched {}; packets of flows traced recently {}; traces {} (at most {} at once); probes {}, replies matched {}",
            summary.captured,
            summary.detection_captured,
            summary.capture_drops,
            st.flows_recognised,
            st.flows_watched,
            st.packets_held_back,
            summary.traced,
            summary.peak_traces,
            st.engine.probes_sent,
            st.engine.replies_matched
        );
    }
    if summary.capture_drops > 0 {
        eprintln!(
            "service-traceroute: warning: the capture dropped {} packets (kernel ring full): some replies, or the kernel send timestamps of some probes, may be missing",
            summary.capture_drops
        );
    }
    let count = opts.config.max_traces;
    if count != 0 && summary.traced < count {
        eprintln!(
            "service-traceroute: warning: traced {} of {} flows",
            summary.traced, count
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The run of `flow` and `monitor` (which then sets re-tracing and granularity).
fn monitor_options(
    s: &SelectArgs,
    t: &TraceArgsCommon,
    count: usize,
) -> Result<MonitorOptions, Error> {
    Ok(MonitorOptions {
        iface: s.iface.clone(),
        config: monitor_config(s, t, count)?,
        duration: t.duration,
        udp_shield: !t.no_udp_shield,
        rate: t.rate,
        capture_buffer: t.capture_buffer.map(|m| usize::from(m) << 20),
    })
}

fn run_flow(a: FlowArgs) -> Result<ExitCode, Error> {
    run_monitor(
        monitor_options(&a.select, &a.trace, a.count)?,
        a.format,
        a.trace.stats,
    )
}

fn run_monitor_cmd(a: MonitorArgs) -> Result<ExitCode, Error> {
    let mut opts = monitor_options(&a.select, &a.trace, a.count)?;
    opts.config.retrace_after = a.retrace_after.0;
    opts.config.granularity = a.per;
    run_monitor(opts, a.format, a.trace.stats)
}

fn run_services(a: ServicesArgs) -> Result<ExitCode, Error> {
    let mut all = Signatures::builtin();
    for f in &a.signatures {
        all.merge(Signatures::load(f).map_err(|e| Error::Unsupported(e.to_string()))?);
    }
    let mut out = io::stdout().lock();
    let res = match a.format {
        Format::Text => all.services().iter().try_for_each(|s| {
            let prefixes: Vec<String> = s.prefixes.iter().map(ToString::to_string).collect();
            writeln!(out, "{}", s.name)?;
            for (what, list) in [
                ("domains", s.domains.join(" ")),
                ("regexes", s.regexes.join(" ")),
                ("prefixes", prefixes.join(" ")),
            ] {
                if !list.is_empty() {
                    writeln!(out, "  {what}: {list}")?;
                }
            }
            Ok(())
        }),
        Format::Json | Format::Jsonl => {
            let v: Vec<serde_json::Value> = all
                .services()
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "name": s.name,
                        "domains": s.domains,
                        "regexes": s.regexes,
                        "prefixes": s.prefixes.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    })
                })
                .collect();
            writeln!(out, "{}", serde_json::Value::Array(v))
        }
    };
    Ok(output_failure(res.err()).unwrap_or(ExitCode::SUCCESS))
}

/// Parses the command line; a usage error becomes one line on stderr and exit status 2.
fn parse_cli() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            let text = e.render().to_string();
            // clap's message is a paragraph then usage hints: keep the paragraph, on one line.
            let para: Vec<&str> = text
                .lines()
                .skip_while(|l| l.trim().is_empty())
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let line = para.join(" ");
            let line = line.strip_prefix("error: ").unwrap_or(&line);
            eprintln!("service-traceroute: error: {line} (see --help)");
            Err(ExitCode::from(2))
        }
    }
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Flow(a) => run_flow(a),
        Command::Trace(a) => run_trace(a),
        Command::Compare(a) => run_compare(a),
        Command::Monitor(a) => run_monitor_cmd(a),
        Command::Services(a) => run_services(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("service-traceroute: error: {e}");
            match e {
                Error::NothingMatched { .. } => ExitCode::from(1),
                _ => ExitCode::from(2),
            }
        }
    }
}

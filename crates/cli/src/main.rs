//! `service-traceroute`: the command line. It parses arguments, runs the library and prints;
//! every decision about probes and replies lives in the `svctr-core` engine.
//!
//! Exit status: 0 when traces were printed, 1 when nothing matched in time, 2 for bad input or
//! a failure to start (privileges, unknown interface), with a one-line error on stderr.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use svctr_core::{Algorithm, FlowSelector, Protocol, TraceConfig, TraceResult};
use svctr_io::{trace_flows, Error, FlowTraceOptions};

#[derive(Parser)]
#[command(name = "service-traceroute", version, about = "Shows the network path that a live application flow really takes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trace the path of live TCP or UDP flows with probes that carry the flow's own 5-tuple.
    Flow(FlowArgs),
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

#[derive(Args)]
struct FlowArgs {
    /// Interface to capture on and send probes from.
    #[arg(long, short = 'i')]
    iface: String,
    /// Trace TCP flows.
    #[arg(long, conflicts_with = "udp", required_unless_present = "udp")]
    tcp: bool,
    /// Trace UDP flows.
    #[arg(long)]
    udp: bool,
    /// The flow's remote end: IP or IP:PORT.
    #[arg(long, value_parser = parse_remote, value_name = "IP[:PORT]")]
    remote: Option<(IpAddr, Option<u16>)>,
    /// The flow's local port.
    #[arg(long, value_parser = parse_port)]
    local_port: Option<u16>,
    /// Exit after this many traced flows (0: until interrupted or --duration).
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Select flows for at most this long (e.g. 30, 30s, 1m); then exit once traces finish.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
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
    /// Probe up to --max-ttl even past the remote (by default probing stops one TTL short of
    /// the remote, whose distance comes from its packets' TTL, so the remote application never
    /// receives a probe).
    #[arg(long)]
    probe_remote: bool,
    /// Do not install the nftables rule that keeps ICMP errors caused by UDP probes away from the
    /// application's socket.
    #[arg(long)]
    no_udp_shield: bool,
    /// Output format.
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
    Err(format!("invalid address {s:?}: expected IP or IP:PORT (IPv6 as [IP]:PORT)"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 && secs < 1e9 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("invalid duration {s:?}"));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e} (e.g. 2s, 150ms, 1m)"))
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse()
}

fn print_result(format: Format, r: &TraceResult, out: &mut impl Write) -> io::Result<()> {
    match format {
        Format::Text => writeln!(out, "{}", svctr_core::render_text(r)),
        Format::Jsonl => writeln!(out, "{}", serde_json::to_string(r).map_err(io::Error::other)?),
        Format::Json => Ok(()),
    }?;
    out.flush()
}

fn run_flow(a: FlowArgs) -> Result<ExitCode, Error> {
    if a.first_ttl > a.max_ttl {
        return Err(Error::Unsupported(format!(
            "--first-ttl {} is above --max-ttl {}",
            a.first_ttl, a.max_ttl
        )));
    }
    let protocol = if a.udp { Protocol::Udp } else { Protocol::Tcp };
    let selector = FlowSelector {
        protocol,
        remote_ip: a.remote.map(|r| r.0),
        remote_port: a.remote.and_then(|r| r.1),
        local_port: a.local_port,
    };
    let trace = TraceConfig {
        algorithm: a.algorithm,
        first_ttl: a.first_ttl,
        max_ttl: a.max_ttl,
        probes_per_hop: a.probes,
        inter_probe: a.inter_probe,
        inter_hop: a.inter_hop,
        timeout: a.timeout,
        max_missing: a.max_missing,
        stop_at: a.stop_at,
        flow_timeout: a.flow_timeout,
        probe_remote: a.probe_remote,
        ..TraceConfig::default()
    };
    trace.validate().map_err(|e| Error::Unsupported(e.to_string()))?;
    let opts = FlowTraceOptions {
        iface: a.iface,
        selector,
        trace,
        count: a.count,
        duration: a.duration,
        udp_shield: !a.no_udp_shield,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| Error::Socket { what: "installing the signal handler".into(), source: e })?;
    }
    let stdout = io::stdout();
    let mut collected = Vec::new();
    let mut write_error = None;
    let summary = trace_flows(&opts, &stop, |r| {
        if let Err(e) = print_result(a.format, &r, &mut stdout.lock()) {
            write_error.get_or_insert(e);
        }
        if matches!(a.format, Format::Json) {
            collected.push(r);
        }
    })?;
    if matches!(a.format, Format::Json) {
        let text = if collected.len() == 1 {
            serde_json::to_string_pretty(&collected[0])
        } else {
            serde_json::to_string_pretty(&collected)
        };
        let mut out = stdout.lock();
        if let Err(e) = text.map_err(io::Error::other).and_then(|t| writeln!(out, "{t}")) {
            write_error.get_or_insert(e);
        }
    }
    if let Some(e) = write_error {
        if e.kind() != io::ErrorKind::BrokenPipe {
            eprintln!("service-traceroute: error: writing output: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    if summary.capture_drops > 0 {
        eprintln!(
            "service-traceroute: warning: the capture dropped {} packets; some replies may be missing",
            summary.capture_drops
        );
    }
    if opts.count != 0 && summary.traced < opts.count {
        eprintln!("service-traceroute: warning: traced {} of {} flows", summary.traced, opts.count);
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses the command line; a usage error becomes one line on stderr and exit status 2.
fn parse_cli() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) => e.exit(),
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

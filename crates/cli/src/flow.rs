//! `flow` and `monitor`: trace live flows picked by 5-tuple or by service.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use svctr_core::{
    DetectorConfig, FlowFilter, Granularity, MonitorConfig, Protocol, ServiceSpec, Signatures,
    TraceConfig, TraceResult,
};
use svctr_io::{monitor, Error, MonitorOptions, RunSummary};

use crate::args::{
    parse_duration, parse_port, parse_remote, parse_retrace, AlgorithmArg, DurationArg, Format,
    PerArg, Retrace,
};
use crate::branches::MarkerConfig;
use crate::error::CliError;
use crate::metrics::Metrics;
use crate::output::Run;
use crate::reverse_flow::BackConfig;
use crate::Outcome;

// Which flows: by 5-tuple, by service, or both.
// (Not a doc comment: clap would make it the `about` of every subcommand that flattens
// this, since the subcommands' arguments are built late; see `Command` in main.rs.)
#[derive(Args)]
pub(crate) struct SelectArgs {
    /// Interface to capture on and send probes from (`any`: all of them).
    #[arg(long, short = 'i')]
    iface: String,
    /// Trace TCP flows (with --udp: both; neither: both when a service is given).
    #[arg(long)]
    tcp: bool,
    /// Trace UDP flows.
    #[arg(long)]
    udp: bool,
    /// The flow's remote end: IP or IP:PORT ([IPv6] or [IPv6]:PORT).
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
    signatures: Vec<PathBuf>,
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

// How each flow is traced. The defaults are `svctr_core::TraceConfig`'s.
// (Not a doc comment: clap would make it the `about` of every subcommand that flattens
// this, since the subcommands' arguments are built late; see `Command` in main.rs.)
#[derive(Args)]
pub(crate) struct TraceOpts {
    /// Probe scheduling.
    #[arg(long, value_enum, default_value_t = TraceConfig::default().algorithm.into())]
    algorithm: AlgorithmArg,
    /// First TTL to probe (traceroute's -f).
    #[arg(long, short = 'f', default_value_t = TraceConfig::default().first_ttl,
          value_parser = clap::value_parser!(u8).range(1..))]
    first_ttl: u8,
    /// Highest TTL to probe (traceroute's -m).
    #[arg(long, short = 'm', default_value_t = TraceConfig::default().max_ttl,
          value_parser = clap::value_parser!(u8).range(1..))]
    max_ttl: u8,
    /// Probes per TTL (traceroute's -q).
    #[arg(long, short = 'q', default_value_t = TraceConfig::default().probes_per_hop,
          value_parser = clap::value_parser!(u8).range(1..))]
    probes: u8,
    /// Gap between probes of one TTL (e.g. 0, 20ms).
    #[arg(long, default_value_t = DurationArg(TraceConfig::default().inter_probe))]
    inter_probe: DurationArg,
    /// Gap between TTLs.
    #[arg(long, default_value_t = DurationArg(TraceConfig::default().inter_hop))]
    inter_hop: DurationArg,
    /// How long each probe waits for its reply (traceroute's -w).
    #[arg(long, short = 'w', default_value_t = DurationArg(TraceConfig::default().timeout))]
    timeout: DurationArg,
    /// Stop after this many consecutive silent TTLs (0: never).
    #[arg(long, default_value_t = TraceConfig::default().max_missing)]
    max_missing: u8,
    /// Stop at the TTL where this address answers (repeatable).
    #[arg(long, value_name = "IP")]
    stop_at: Vec<IpAddr>,
    /// A UDP flow silent this long has ended (0: never).
    #[arg(long, default_value_t = DurationArg(TraceConfig::default().flow_timeout))]
    flow_timeout: DurationArg,
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
    #[arg(long, default_value_t = svctr_core::FLOW_RATE)]
    rate: u32,
    /// Do not install the nftables rules that keep the ICMP errors caused by probes away from
    /// the application's socket (UDP flows, and the SYN copies that trace a TCP connection
    /// stuck in its handshake: such connections are then not traced).
    #[arg(long)]
    no_udp_shield: bool,
    /// The flow capture's kernel ring in MiB (default: 4 for --count up to 64, else 32). More
    /// absorbs longer stalls of a busy machine; less sets up faster.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u16).range(1..=1024))]
    capture_buffer: Option<u16>,
    /// Flows watched or traced at once, and the bound of every table of flows: beyond it the
    /// oldest flow not yet traced is forgotten (counted, and reported at the end), so a flood
    /// of new 5-tuples keeps memory flat.
    #[arg(long, value_name = "N", default_value_t = svctr_core::DEFAULT_MAX_FLOWS,
          value_parser = parse_max_flows)]
    max_flows: usize,
    /// Print the run's counters on stderr at the end (packets captured, flows recognised and
    /// traced, probes, the most traces at once).
    #[arg(long)]
    stats: bool,
    /// Keep every probe as it left and every reply matched to one in this pcap file, with
    /// their kernel timestamps (tshark, Wireshark and tcpdump -r read it).
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// The AS number of each hop from this offline IP-to-AS table: an ip2asn TSV file of
    /// iptoasn.com, uncompressed.
    #[arg(long, value_name = "FILE")]
    asn: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct FlowArgs {
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    trace: TraceOpts,
    /// Exit after this many traced flows (0: until interrupted or --duration).
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Also trace each flow's way back, with the flow's own 5-tuple, when its remote end runs
    /// `service-traceroute reverse-server` (experimental; see `reverse`). Another server gets
    /// ordinary reverse-traceroute probes instead, with a notice.
    #[arg(long)]
    reverse: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Args)]
pub(crate) struct MonitorArgs {
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    trace: TraceOpts,
    /// Trace a flow again (a destination, with --per) once this long has passed since its last
    /// trace ended ("never": once per run).
    #[arg(long, default_value_t = Retrace(MonitorConfig::default().retrace_after),
          value_parser = parse_retrace)]
    retrace_after: Retrace,
    /// One trace per flow, per destination and port, or per destination at a time.
    #[arg(long, value_enum, default_value_t = MonitorConfig::default().granularity.into())]
    per: PerArg,
    /// Exit after this many traces (0: until interrupted or --duration).
    #[arg(long, default_value_t = 0)]
    count: usize,
    /// Also discover every load-balanced path of each destination, once (fresh flows: TCP
    /// to the flow's port, UDP to ports 33434 and up), and mark each traced flow's branch
    /// among them in its result (`multipath`).
    #[arg(long)]
    multipath: bool,
    #[command(flatten)]
    mp: crate::args::MultipathOpts,
    /// Also trace each flow's way back, with the flow's own 5-tuple, when its remote end runs
    /// `service-traceroute reverse-server` (experimental; see `reverse`).
    #[arg(long, conflicts_with = "multipath")]
    reverse: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: Format,
    /// Serve Prometheus metrics at http://ADDR/metrics while the monitor runs (e.g.
    /// 127.0.0.1:9464, [::1]:9464): flows recognised and watched, traces by service and stop
    /// reason, probes, replies, trace durations, path changes, capture drops, traces in
    /// progress.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

/// The signature set the selection asks for: none (select by 5-tuple alone), or the named
/// services of the shipped and given files plus `--domain` and `--cidr` services.
fn services(a: &SelectArgs) -> Result<Option<Signatures>, CliError> {
    if a.service.is_empty() && a.domain.is_empty() && a.cidr.is_empty() && a.signatures.is_empty() {
        return Ok(None);
    }
    let mut files = Signatures::empty();
    for f in &a.signatures {
        files.merge(Signatures::load(f)?);
    }
    let mut selected = if a.service.is_empty() {
        files
    } else {
        let mut all = Signatures::builtin();
        all.merge(files);
        let names: Vec<&str> = a.service.iter().map(String::as_str).collect();
        all.select(&names)?
    };
    // --domain and --cidr: a service each, named after it.
    for (what, values) in [("--domain", &a.domain), ("--cidr", &a.cidr)] {
        for v in values {
            let mut spec = ServiceSpec {
                name: v.clone(),
                ..ServiceSpec::default()
            };
            match what {
                "--domain" => spec.domains.push(v.clone()),
                _ => spec.prefixes.push(v.clone()),
            }
            selected.add(spec, what)?;
        }
    }
    Ok(Some(selected))
}

impl TraceOpts {
    /// The trace parameters these options give.
    pub(crate) fn trace_config(&self) -> TraceConfig {
        TraceConfig {
            algorithm: self.algorithm.into(),
            first_ttl: self.first_ttl,
            max_ttl: self.max_ttl,
            probes_per_hop: self.probes,
            inter_probe: self.inter_probe.0,
            inter_hop: self.inter_hop.0,
            timeout: self.timeout.0,
            max_missing: self.max_missing,
            stop_at: self.stop_at.clone(),
            flow_timeout: self.flow_timeout.0,
            probe_remote: self.probe_remote,
            retries: self.retries,
            ..TraceConfig::default()
        }
    }
}

/// The run of `flow` and `monitor` (which then sets re-tracing and granularity).
fn monitor_options(
    s: &SelectArgs,
    t: &TraceOpts,
    count: usize,
) -> Result<MonitorOptions, CliError> {
    let trace = t.trace_config();
    let services = services(s)?;
    if let Some(path) = &t.asn {
        crate::asn::load(path)?;
    }
    let protocol = match (s.tcp, s.udp) {
        (true, false) => Some(Protocol::Tcp),
        (false, true) => Some(Protocol::Udp),
        (true, true) => None,
        (false, false) if services.is_some() => None,
        (false, false) => {
            return Err(CliError::input(
                "say which flows: --tcp, --udp, or a service (--service, --domain, --cidr)",
            ))
        }
    };
    Ok(MonitorOptions {
        iface: s.iface.clone(),
        config: MonitorConfig {
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
            max_flows: t.max_flows,
        },
        duration: t.duration,
        udp_shield: !t.no_udp_shield,
        rate: t.rate,
        capture_buffer: t.capture_buffer.map(|m| usize::from(m) << 20),
        live: None,
        pcap: t.pcap.clone(),
    })
}

impl FlowArgs {
    /// What the process keeps once set up (see `svctr_io::privilege`): `CAP_NET_RAW` (the fast
    /// lane opens captures as flows come; `--reverse` opens a run per flow) and, with the
    /// shield, `CAP_NET_ADMIN` (its nftables set is updated as flows come and go).
    pub(crate) fn keeps(&self) -> (bool, bool) {
        (true, !self.trace.no_udp_shield)
    }
}

impl MonitorArgs {
    /// As [`FlowArgs::keeps`].
    pub(crate) fn keeps(&self) -> (bool, bool) {
        (true, !self.trace.no_udp_shield)
    }
}

pub(crate) fn run_flow(a: FlowArgs) -> Result<Outcome, CliError> {
    let opts = monitor_options(&a.select, &a.trace, a.count)?;
    let back = a.reverse.then(|| back_config(&opts, &a.trace));
    run_monitor(&opts, a.format, a.trace.stats, None, back, None)
}

/// `--reverse`: the way back of each flow, with the trace's probes per TTL and wait.
fn back_config(opts: &MonitorOptions, t: &TraceOpts) -> BackConfig {
    BackConfig {
        iface: (opts.iface != "any").then(|| opts.iface.clone()),
        rate: opts.rate,
        probes: t.probes,
        timeout: t.timeout.0,
    }
}

pub(crate) fn run_monitor_cmd(a: MonitorArgs) -> Result<Outcome, CliError> {
    let mut opts = monitor_options(&a.select, &a.trace, a.count)?;
    opts.config.retrace_after = a.retrace_after.0;
    opts.config.granularity = a.per.into();
    let marker = a.multipath.then(|| MarkerConfig {
        iface: (opts.iface != "any").then(|| opts.iface.clone()),
        rate: opts.rate,
        confidence: a.mp.confidence,
        max_probes: a.mp.max_probes,
        timeout: opts.config.trace.timeout,
    });
    let back = a.reverse.then(|| back_config(&opts, &a.trace));
    // Bound now, before the privileges are dropped and anything runs.
    let metrics = match a.metrics_listen {
        Some(addr) => Some(crate::metrics::start(addr, &mut opts)?),
        None => None,
    };
    run_monitor(&opts, a.format, a.trace.stats, marker, back, metrics)
}

fn render(format: Format, r: &TraceResult) -> Option<String> {
    match format {
        Format::Text => Some(format!("{}\n", svctr_core::render_text(r))),
        Format::Jsonl => Some(crate::record::line(r)),
        Format::Atlas => Some(crate::atlas::flow_line(r)),
        Format::Replies => Some(crate::replies::flow_lines(r)),
        Format::Json | Format::Warts => None,
    }
}

/// Runs the monitor and prints each result as it finishes (JSON: all at the end).
fn run_monitor(
    opts: &MonitorOptions,
    format: Format,
    show_stats: bool,
    marker: Option<MarkerConfig>,
    back: Option<BackConfig>,
    mut metrics: Option<Metrics>,
) -> Result<Outcome, CliError> {
    if matches!(format, Format::Atlas | Format::Replies | Format::Warts)
        && (marker.is_some() || back.is_some())
    {
        let (f, with) = match (format, marker.is_some()) {
            (Format::Atlas, _) => ("atlas", "an Atlas traceroute result is one path, one way"),
            (Format::Warts, _) => ("warts", "a warts trace object is one path, one way"),
            (_, true) => (
                "replies",
                "a multipath marking's probes are not kept one by one",
            ),
            _ => ("replies", "a row is one probe of the way out"),
        };
        let opt = if marker.is_some() {
            "--multipath"
        } else {
            "--reverse"
        };
        return Err(CliError::input(format!(
            "--format {f} takes no {opt}: {with}"
        )));
    }
    if let Some(m) = marker {
        return run_monitor_marked(opts, format, show_stats, m, metrics);
    }
    if let Some(b) = back {
        return run_monitor_reverse(opts, format, show_stats, b, metrics);
    }
    if format == Format::Warts {
        crate::output::binary_output_ok()?;
    }
    let mut run = Run::start()?;
    let stop = std::sync::Arc::clone(&run.stop);
    let mut collected = Vec::new();
    let mut warts = crate::warts::Writer::new();
    let result = monitor(opts, &stop, |mut r| {
        crate::asn::annotate(&mut r.hops);
        if let Some(m) = &mut metrics {
            m.observe(&r);
        }
        if let Some(text) = render(format, &r) {
            run.print(&text);
        }
        match format {
            Format::Json => collected.push(r),
            Format::Warts => run.write(&warts.trace(&r.to_traceroute())),
            _ => {}
        }
    });
    if format == Format::Warts && result.is_ok() {
        run.write(&warts.finish());
    }
    end_monitor(opts, result, run, format, &collected, show_stats)
}

/// [`run_monitor`] with each result marked with its branch (see the branches module).
fn run_monitor_marked(
    opts: &MonitorOptions,
    format: Format,
    show_stats: bool,
    marker: MarkerConfig,
    metrics: Option<Metrics>,
) -> Result<Outcome, CliError> {
    run_with_printer(opts, format, show_stats, metrics, |run| {
        crate::branches::spawn_printer(run, format, marker)
    })
}

/// [`run_monitor`] with each flow's way back (see the reverse_flow module).
fn run_monitor_reverse(
    opts: &MonitorOptions,
    format: Format,
    show_stats: bool,
    back: BackConfig,
    metrics: Option<Metrics>,
) -> Result<Outcome, CliError> {
    run_with_printer(opts, format, show_stats, metrics, |run| {
        crate::reverse_flow::spawn_printer(run, format, back)
    })
}

/// The monitor's results to a printer thread that adds to each (`spawn` starts it with the
/// run's output), then the end of the run with what it printed.
fn run_with_printer<T: crate::record::Record>(
    opts: &MonitorOptions,
    format: Format,
    show_stats: bool,
    mut metrics: Option<Metrics>,
    spawn: impl FnOnce(
        Run,
    ) -> (
        std::sync::mpsc::Sender<TraceResult>,
        std::thread::JoinHandle<(Run, Vec<T>)>,
    ),
) -> Result<Outcome, CliError> {
    let run = Run::start()?;
    let stop = std::sync::Arc::clone(&run.stop);
    let (tx, printer) = spawn(run);
    let result = monitor(opts, &stop, |mut r| {
        crate::asn::annotate(&mut r.hops);
        if let Some(m) = &mut metrics {
            m.observe(&r);
        }
        let _ = tx.send(r);
    });
    drop(tx);
    let (run, collected) = printer
        .join()
        .map_err(|_| CliError::input("the printer thread panicked"))?;
    end_monitor(opts, result, run, format, &collected, show_stats)
}

/// The end of a monitor run: nothing matched, a failure, or the JSON printed at the end, the
/// statistics, the capture's drops and the outcome.
fn end_monitor<T: crate::record::Record>(
    opts: &MonitorOptions,
    result: Result<RunSummary, Error>,
    mut run: Run,
    format: Format,
    collected: &[T],
    show_stats: bool,
) -> Result<Outcome, CliError> {
    let summary = match result {
        Ok(s) => s,
        Err(Error::NothingMatched { selector, duration }) => {
            return Ok(Outcome::nothing(format!(
                "no flow matched {selector} within {:.1} s",
                duration.as_secs_f64()
            )))
        }
        Err(e) => return Err(CliError::from(e).naming_ttls("--first-ttl", "--max-ttl")),
    };
    if format == Format::Json {
        run.print(&crate::record::collection(collected));
    }
    run.finish()?;
    if show_stats {
        print_stats(&summary);
    }
    if summary.capture_drops > 0 {
        warn_drops(summary.capture_drops);
    }
    warn_evictions(&summary.stats, opts.config.max_flows);
    Ok(outcome(opts, &summary, &run))
}

/// The warning for a capture that overflowed.
pub(crate) fn warn_drops(drops: u32) {
    eprintln!(
        "service-traceroute: warning: the capture dropped {drops} packets (kernel ring or socket buffer full): \
         some replies, or the kernel send timestamps of some probes, may be missing"
    );
}

fn parse_max_flows(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a number of flows (1 or more)")),
    }
}

/// The warning for tables that were full: flows forgotten before they could be traced.
pub(crate) fn warn_evictions(st: &svctr_core::MonitorStats, max_flows: usize) {
    let e = &st.engine;
    if e.flows_evicted + e.flows_refused + e.done_evicted + st.entries_evicted == 0 {
        return;
    }
    eprintln!(
        "service-traceroute: warning: more than {max_flows} flows at once (--max-flows): {} \
         forgotten before they could be traced (oldest first), {} not taken (every flow being \
         traced), {} other table entries evicted",
        e.flows_evicted,
        e.flows_refused,
        e.done_evicted + st.entries_evicted
    );
}

/// How the run ended, by the exit-status rule (see `main`): results, or why there are none.
fn outcome(opts: &MonitorOptions, summary: &RunSummary, run: &Run) -> Outcome {
    let count = opts.config.max_traces;
    if run.output_closed() {
        return Outcome::Closed;
    }
    if summary.traced > 0 {
        if count != 0 && summary.traced < count && !run.stopped() {
            eprintln!(
                "service-traceroute: warning: traced {} of {} flows{}",
                summary.traced,
                count,
                not_traced_text(summary)
                    .map(|t| format!(": {t}"))
                    .unwrap_or_default()
            );
        }
        return Outcome::Printed(summary.traced);
    }
    if let Some(why) = not_traced_text(summary) {
        return Outcome::nothing(why);
    }
    if run.stopped() {
        return Outcome::nothing("interrupted before a flow was traced");
    }
    Outcome::nothing(format!(
        "{} flow(s) matched but none could be traced: a TCP connection needs its handshake \
         completed and packets both ways, a UDP flow a packet out",
        summary.stats.flows_watched.max(1)
    ))
}

/// The flows reported as not traced, in words.
fn not_traced_text(summary: &RunSummary) -> Option<String> {
    let (flow, reason) = summary.not_traced.first()?;
    let more = summary.not_traced.len() - 1;
    let more = if more > 0 {
        format!(" (and {more} more)")
    } else {
        String::new()
    };
    Some(format!("the flow {flow} was not traced: {reason}{more}"))
}

fn print_stats(summary: &RunSummary) {
    let st = &summary.stats;
    eprintln!(
        "service-traceroute: stats: captured {} packets (flows) + {} (detection), dropped {}; \
         flows recognised {}, watched {}, evicted {}; packets of flows traced recently {}; \
         traces {} (at most {} at once); probes {}, replies matched {}",
        summary.captured,
        summary.detection_captured,
        summary.capture_drops,
        st.flows_recognised,
        st.flows_watched,
        st.engine.flows_evicted,
        st.packets_held_back,
        summary.traced,
        summary.peak_traces,
        st.engine.probes_sent,
        st.engine.replies_matched
    );
}

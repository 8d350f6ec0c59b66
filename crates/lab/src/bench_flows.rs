//! `svctr-lab bench-flows` and `svctr-lab bench-capture`: how many live flows the tracer
//! traces per second and what they cost in memory (at 1,000 and 10,000 concurrent flows), and
//! what the packet capture costs while a multi-gigabit transfer runs through the client.
//!
//! # Method
//!
//! **4. Flows traced per second, memory per concurrent flow** (`bench-flows`). For each
//! protocol (UDP, then TCP) and each flow count N (`--flows`, default 1000 and 10000) the
//! lab's flow generator opens N flows from N client ports to an echo server on the server
//! (one 32-byte message per flow per second, echoed) and leaves them running. Then, `--reps`
//! times each, interleaved, in the client namespace under
//! `/usr/bin/time -f "%M %e" bash -c '"$@"; times'`:
//!
//! * `service-traceroute flow -i eth0 --udp|--tcp --remote S:PORT --count N --duration 60
//!   --format jsonl --stats --capture-buffer 32 --rate 0`: no rate limit, every flow's probes go as soon as the
//!   flow is seen;
//! * the same with the default rate limit (10,000 probes/s) and with `--rate R` (default
//!   20000): the probes of all flows are interleaved round-robin under the limit, so all
//!   traces are in progress at once (`--stats` reports the most at once);
//! * the same with `--count 1`, the baseline of the memory per flow.
//!
//! Per run: traced flows, *span* = first probe of any trace → end of the last (from the JSON
//! `start`/`end`, kernel timestamps), flows/s = N / span, wall time (spawn → exit, including
//! the wait for the flows' next packets), CPU (user + system, bash's `times`), max RSS (GNU
//! time `%M`), the most traces in progress at once and the packets the capture dropped.
//! Memory per flow = (max RSS of the run − median max RSS of the `--count 1` runs) / N.
//! Every hop of every result is checked against the lab's ground truth for its flow's 5-tuple
//! (`ip route get` in r2, all flows in one `ip -batch`).
//!
//! No other tool traces live flows, so there is no peer in this section; section 3 compares
//! the engine with scamper, trippy and traceroute on fresh flows.
//!
//! **5. Capture cost under a multi-gigabit transfer** (`bench-capture`). One unpaced TCP
//! download (the lab's pattern server, 8080) runs through the client for the whole section.
//! Each setting runs `--secs` seconds, `--reps` times, interleaved:
//!
//! * the transfer alone;
//! * `service-traceroute monitor -i eth0 --tcp --remote S:8080 --retrace-after 1s --duration
//!   SECS --stats`: the live flow traced again every second, i.e. its packets followed all
//!   along;
//! * `tcpdump -i eth0 -s 384 -w /dev/null 'tcp port 8080'`: a capture of every packet of the
//!   flow with the same snap length, which is what a tracer without a selective kernel
//!   filter would read.
//!
//! Per run: throughput of the download (bytes received over the window), the client's
//! interface packet counters (rx + tx) over the window, packets handed to the capturing
//! process (ours: `--stats`; tcpdump: its "packets captured"), and its CPU (bash's `times`)
//! as a share of one core.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use svctr_lab::{
    echo_server, echo_server_process, flow_generator, tcp_download_to, tcp_server_on, Lab,
    LabConfig, Proto,
};

use crate::bench::{header, parse_bash_times, parse_rfc3339_us, parse_time_line, run_timed, stats};

/// Options of `svctr-lab bench-flows`.
pub(crate) struct FlowsBenchArgs {
    pub(crate) tracer: PathBuf,
    pub(crate) flows: Vec<usize>,
    pub(crate) reps: usize,
    pub(crate) rate: u32,
}

/// Options of `svctr-lab bench-capture`.
pub(crate) struct CaptureBenchArgs {
    pub(crate) tracer: PathBuf,
    pub(crate) secs: u64,
    pub(crate) reps: usize,
}

fn tracer_path(p: &std::path::Path) -> Result<PathBuf> {
    match p.canonicalize() {
        Ok(p) if p.is_file() => Ok(p),
        _ => bail!("tracer binary not found: {} (build it first: cargo build --release -p service-traceroute)", p.display()),
    }
}

/// `ip netns exec <client> /usr/bin/time -f "%M %e" bash -c '"$@"; s=$?; times; exit $s'
/// bash ARGS...`: the tool's exit status, its user and system time (bash's `times`, on
/// stdout after the tool's output) and the max RSS (GNU time, the last line of stderr).
fn timed_in_client(lab: &Lab, args: &[String]) -> Command {
    let mut c = lab.command(lab.client_ns(), "/usr/bin/time");
    c.args([
        "-f",
        "%M %e",
        "bash",
        "-c",
        "\"$@\"; s=$?; times; exit $s",
        "bash",
    ])
    .args(args);
    c
}

/// One measured run of a command in the client namespace.
struct Measured {
    stdout: String,
    stderr: String,
    wall_ms: f64,
    cpu_ms: f64,
    rss_kib: f64,
}

/// Runs `args` measured; an exit status other than 0 or one of `also_ok` is an error.
fn measure(lab: &Lab, args: &[String], timeout: Duration, also_ok: &[i32]) -> Result<Measured> {
    let r = run_timed(timed_in_client(lab, args), timeout)?;
    if !r.status.success() && !r.status.code().is_some_and(|c| also_ok.contains(&c)) {
        bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            r.status,
            r.stderr.lines().rev().nth(1).unwrap_or("")
        );
    }
    // bash's `times` goes to stdout after the tool's output: its last two lines.
    let lines: Vec<&str> = r.stdout.lines().collect();
    let n = lines.len();
    if n < 2 {
        bail!("no `times` output from `{}`", args.join(" "));
    }
    let (user, sys) = parse_bash_times(&lines[n - 2..].join("\n"))?;
    let (rss, _) = parse_time_line(&r.stderr)?;
    Ok(Measured {
        stdout: lines[..n - 2].join("\n"),
        stderr: r.stderr,
        wall_ms: r.wall.as_secs_f64() * 1000.0,
        cpu_ms: user + sys,
        rss_kib: rss,
    })
}

/// The value after `key ` in the tracer's `--stats` line.
fn stat(stderr: &str, key: &str) -> Option<u64> {
    let line = stderr.lines().find(|l| l.contains("stats:"))?;
    let at = line.find(key)? + key.len();
    line[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn median(v: &[f64]) -> f64 {
    stats(v).map_or(f64::NAN, |s| s.median)
}

fn range(v: &[f64]) -> String {
    range_prec(v, 0)
}

/// `min-max` of `v` with `prec` decimals.
fn range_prec(v: &[f64], prec: usize) -> String {
    match stats(v) {
        Some(s) => format!("{:.prec$}-{:.prec$}", s.min, s.max),
        None => "n/a".into(),
    }
}

/// One flows-benchmark run's numbers.
struct FlowRun {
    traced: usize,
    span_ms: f64,
    wall_ms: f64,
    cpu_ms: f64,
    rss_kib: f64,
    peak: u64,
    drops: u64,
    hops: usize,
    hops_right: usize,
    /// The longest trace, start to end.
    longest_ms: f64,
    /// Results per stop reason.
    stops: std::collections::BTreeMap<String, usize>,
}

#[allow(clippy::too_many_arguments)]
fn flow_run(
    lab: &Lab,
    tracer: &str,
    proto: Proto,
    dst: SocketAddr,
    count: usize,
    rate: Option<u32>,
) -> Result<FlowRun> {
    let mut args: Vec<String> = [
        tracer,
        "flow",
        "-i",
        "eth0",
        if proto == Proto::Tcp {
            "--tcp"
        } else {
            "--udp"
        },
        "--remote",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.push(dst.to_string());
    // The same capture ring in every run, so the RSS difference is the flows'.
    args.extend(
        [
            "--count",
            &count.to_string(),
            "--duration",
            "60",
            "--format",
            "jsonl",
            "--stats",
            "--capture-buffer",
            "32",
        ]
        .map(String::from),
    );
    if let Some(rate) = rate {
        args.extend(["--rate".to_string(), rate.to_string()]);
    }
    let m = measure(lab, &args, Duration::from_secs(180), &[])?;
    let results: Vec<Value> = m
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("tracer JSON")?;
    let mut first = i64::MAX;
    let mut last = i64::MIN;
    let mut specs = Vec::new();
    let mut longest = 0i64;
    let mut stops = std::collections::BTreeMap::new();
    for r in &results {
        let (start, end) = (
            parse_rfc3339_us(r["start"].as_str().unwrap_or(""))?,
            parse_rfc3339_us(r["end"].as_str().unwrap_or(""))?,
        );
        first = first.min(start);
        last = last.max(end);
        longest = longest.max(end - start);
        *stops
            .entry(r["stop_reason"].as_str().unwrap_or("none").to_string())
            .or_insert(0) += 1;
        let port = r["flow"]["local"]["port"].as_u64().unwrap_or(0) as u16;
        specs.push((IpAddr::V4(lab.client_addr()), port, dst.ip(), dst.port(), 0));
    }
    let truth = lab.expected_paths(proto, &specs)?;
    let (mut hops, mut hops_right) = (0, 0);
    for (r, want) in results.iter().zip(&truth) {
        let got = r["hops"].as_array().cloned().unwrap_or_default();
        for (i, w) in want.iter().enumerate() {
            hops += 1;
            let ok = got.get(i).is_some_and(|h| {
                let probes = h["probes"].as_array().cloned().unwrap_or_default();
                !probes.is_empty()
                    && probes
                        .iter()
                        .all(|p| p["addr"].as_str() == Some(&w.to_string()))
            });
            hops_right += usize::from(ok);
        }
    }
    Ok(FlowRun {
        traced: results.len(),
        span_ms: (last - first).max(0) as f64 / 1000.0,
        wall_ms: m.wall_ms,
        cpu_ms: m.cpu_ms,
        rss_kib: m.rss_kib,
        peak: stat(&m.stderr, "at most").unwrap_or(0),
        drops: stat(&m.stderr, "dropped").unwrap_or(0),
        hops,
        hops_right,
        longest_ms: longest.max(0) as f64 / 1000.0,
        stops,
    })
}

/// Runs section 4 and prints its Markdown report on stdout.
pub(crate) fn run_flows(args: &FlowsBenchArgs, stop: &AtomicBool) -> Result<u8> {
    if args.reps == 0 || args.flows.is_empty() || args.flows.iter().any(|n| *n < 2 || *n > 20_000) {
        bail!("--reps must be at least 1 and each of --flows between 2 and 20000");
    }
    let tracer = tracer_path(&args.tracer)?;
    let t = tracer.to_string_lossy().into_owned();
    let lab = Lab::build(LabConfig::default())?;
    eprintln!("bench-flows: lab {} is up", lab.name());
    let mut out = String::new();
    header(
        &mut out,
        &std::env::args().collect::<Vec<_>>().join(" "),
        &tracer,
    )?;
    let server = IpAddr::V4(lab.server_addr());
    let udp_dst = SocketAddr::new(server, 7000);
    let tcp_dst = SocketAddr::new(server, 7001);
    let _udp_echo = echo_server(&lab, Proto::Udp, udp_dst)?;
    let exe = std::env::current_exe().context("own path")?;
    let tcp_echo = echo_server_process(&lab, Proto::Tcp, tcp_dst, &exe)?;
    writeln!(
        out,
        "\n## 4. Flows traced per second and memory per concurrent flow\n"
    )?;
    writeln!(
        out,
        "{} repetitions per setting; spans and rates are medians (min-max in brackets). Each flow sends one message a second, so the tracer needs up to a second to see every flow: that bounds flows/s at 1,000 flows. Under a rate limit all flows' probes are interleaved, so all traces are in progress at once.\n",
        args.reps
    )?;
    writeln!(out, "| flows | setting | traced | hops = ground truth | span (ms) | flows/s | longest trace (ms) | stop reasons, all runs | wall (ms) | CPU (ms) | max RSS (MiB) | memory per flow (KiB) | traces at once | capture drops |")?;
    writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )?;
    let mut first_port_tcp = 30_000u16;
    let mut bases = Vec::new();
    for proto in [Proto::Udp, Proto::Tcp] {
        let dst = if proto == Proto::Udp {
            udp_dst
        } else {
            tcp_dst
        };
        for &n in &args.flows {
            if stop.load(Ordering::SeqCst) {
                return Ok(130);
            }
            // TCP ports are not reused (TIME_WAIT); UDP starts at 20000 each time.
            let first = if proto == Proto::Tcp {
                let f = first_port_tcp;
                first_port_tcp = first_port_tcp.saturating_add(n as u16 + 100);
                f
            } else {
                20_000
            };
            let gen = flow_generator(&lab, proto, dst, first, n, Duration::from_secs(1))?;
            let open = gen.wait_open(Duration::from_secs(60))?;
            if open != n {
                bail!("only {open} of {n} {proto:?} flows opened");
            }
            std::thread::sleep(Duration::from_secs(2));
            let higher = format!("`--rate {}`", args.rate);
            let settings: [(&str, usize, Option<u32>); 4] = [
                ("`--rate 0` (no limit)", n, Some(0)),
                ("default (`--rate 10000`)", n, None),
                (&higher, n, Some(args.rate)),
                ("count 1", 1, None),
            ];
            let mut runs: Vec<Vec<FlowRun>> = (0..settings.len()).map(|_| Vec::new()).collect();
            for rep in 0..args.reps {
                for (i, (name, count, rate)) in settings.iter().enumerate() {
                    eprintln!("bench-flows: {proto:?} {n} flows, {name}, run {}", rep + 1);
                    let r = flow_run(&lab, &t, proto, dst, *count, *rate)?;
                    eprintln!(
                        "bench-flows:   {} traced, span {:.0} ms, longest trace {:.0} ms, {:?}",
                        r.traced, r.span_ms, r.longest_ms, r.stops
                    );
                    runs[i].push(r);
                }
            }
            let base_rss = median(&runs[3].iter().map(|r| r.rss_kib).collect::<Vec<_>>());
            bases.push(format!(
                "{n} {proto:?} flows running: {:.1} MiB",
                base_rss / 1024.0
            ));
            for (i, (name, count, _)) in settings.iter().enumerate().take(3) {
                let rs = &runs[i];
                let col = |f: &dyn Fn(&FlowRun) -> f64| rs.iter().map(f).collect::<Vec<f64>>();
                let traced = rs.iter().map(|r| r.traced).min().unwrap_or(0);
                let (hops, right): (usize, usize) = rs
                    .iter()
                    .fold((0, 0), |a, r| (a.0 + r.hops, a.1 + r.hops_right));
                let per_flow: Vec<f64> = rs
                    .iter()
                    .map(|r| (r.rss_kib - base_rss) / *count as f64)
                    .collect();
                let flows_per_s = col(&|r| r.traced as f64 / (r.span_ms / 1000.0).max(1e-6));
                let setting = name;
                let mut stops = std::collections::BTreeMap::new();
                for (k, v) in rs.iter().flat_map(|r| &r.stops) {
                    *stops.entry(k.as_str()).or_insert(0) += v;
                }
                let stops: Vec<String> = stops.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
                writeln!(
                    out,
                    "| {n} {} | {setting} | {traced}/{count} | {right}/{hops} ({:.3} %) | {:.0} ({}) | {:.0} ({}) | {:.0} ({}) | {} | {:.0} | {:.0} | {:.1} | {:.2} | {} | {} |",
                    if proto == Proto::Tcp { "TCP" } else { "UDP" },
                    100.0 * right as f64 / hops.max(1) as f64,
                    median(&col(&|r| r.span_ms)),
                    range(&col(&|r| r.span_ms)),
                    median(&flows_per_s),
                    range(&flows_per_s),
                    median(&col(&|r| r.longest_ms)),
                    range(&col(&|r| r.longest_ms)),
                    stops.join(", "),
                    median(&col(&|r| r.wall_ms)),
                    median(&col(&|r| r.cpu_ms)),
                    median(&col(&|r| r.rss_kib)) / 1024.0,
                    median(&per_flow),
                    rs.iter().map(|r| r.peak).max().unwrap_or(0),
                    rs.iter().map(|r| r.drops).sum::<u64>(),
                )?;
            }
            gen.stop()?;
        }
    }
    tcp_echo.stop()?;
    writeln!(
        out,
        "\nMax RSS of a `--count 1` run (the baseline of the memory per flow): {}.",
        bases.join("; ")
    )?;
    print!("{out}");
    Ok(0)
}

/// One capture-benchmark run of one setting.
struct CaptureRun {
    /// The download's throughput.
    gbps: f64,
    /// Packets through the client's interface (both directions) per second.
    iface_pps: f64,
    /// Packets the setting's tool captured per second.
    captured_pps: f64,
    /// The tool's CPU as a share of one core.
    cpu_pct: f64,
    /// Traces the tool reported.
    traces: u64,
}

/// Packets the client's interface received and sent so far.
fn rx_tx_packets(lab: &Lab) -> Result<u64> {
    let mut total = 0;
    for what in ["rx_packets", "tx_packets"] {
        let mut c = lab.command(lab.client_ns(), "cat");
        c.arg(format!(
            "/sys/class/net/{}/statistics/{what}",
            lab.client_iface()
        ));
        let out = svctr_lab::run_checked(&mut c, None, Duration::from_secs(10))?;
        total += out.trim().parse::<u64>().context("interface counter")?;
    }
    Ok(total)
}

/// Runs section 5 and prints its Markdown report on stdout.
pub(crate) fn run_capture(args: &CaptureBenchArgs, stop: &AtomicBool) -> Result<u8> {
    if args.reps == 0 || args.secs < 2 {
        bail!("--reps must be at least 1 and --secs at least 2");
    }
    let tracer = tracer_path(&args.tracer)?;
    let t = tracer.to_string_lossy().into_owned();
    let lab = Lab::build(LabConfig::default())?;
    eprintln!("bench-capture: lab {} is up", lab.name());
    let mut out = String::new();
    header(
        &mut out,
        &std::env::args().collect::<Vec<_>>().join(" "),
        &tracer,
    )?;
    let dst = SocketAddr::new(IpAddr::V4(lab.server_addr()), 8080);
    let _srv = tcp_server_on(&lab, "0.0.0.0:8080".parse().expect("literal"), 0)?;
    let dl = tcp_download_to(&lab, dst, 0, u64::MAX / 2, false)?;
    dl.wait_established(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(2));
    let secs = args.secs.to_string();
    let ours: Vec<String> = [
        &t,
        "monitor",
        "-i",
        "eth0",
        "--tcp",
        "--remote",
        &dst.to_string(),
        "--retrace-after",
        "1s",
        "--duration",
        &secs,
        "--stats",
        "--format",
        "jsonl",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let tcpdump: Vec<String> = [
        "timeout",
        &secs,
        "tcpdump",
        "-i",
        "eth0",
        "-s",
        "384",
        "-w",
        "/dev/null",
        "tcp port 8080",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let settings: [(&str, Option<&Vec<String>>); 3] = [
        ("transfer alone", None),
        ("service-traceroute monitor", Some(&ours)),
        ("tcpdump, every packet of the flow", Some(&tcpdump)),
    ];
    let mut rows: Vec<Vec<CaptureRun>> = (0..settings.len()).map(|_| Vec::new()).collect();
    for rep in 0..args.reps {
        for (i, (name, cmd)) in settings.iter().enumerate() {
            if stop.load(Ordering::SeqCst) {
                return Ok(130);
            }
            eprintln!("bench-capture: {name}, run {}", rep + 1);
            let (b0, p0, t0) = (dl.bytes_received(), rx_tx_packets(&lab)?, Instant::now());
            let (cpu_ms, captured, traces) = match cmd {
                None => {
                    std::thread::sleep(Duration::from_secs(args.secs));
                    (0.0, 0, 0)
                }
                Some(cmd) => {
                    // tcpdump under `timeout` exits 124 (it still prints its counters).
                    let m = measure(&lab, cmd, Duration::from_secs(args.secs + 60), &[124])?;
                    let captured = if cmd[0] == "timeout" {
                        m.stderr
                            .lines()
                            .find_map(|l| {
                                l.strip_suffix(" packets captured")
                                    .and_then(|n| n.trim().parse().ok())
                            })
                            .unwrap_or(0)
                    } else {
                        stat(&m.stderr, "captured").unwrap_or(0)
                    };
                    let traces = if cmd[0] == "timeout" {
                        0
                    } else {
                        m.stdout.lines().count() as u64
                    };
                    (m.cpu_ms, captured, traces)
                }
            };
            let dt = t0.elapsed().as_secs_f64();
            let (b1, p1) = (dl.bytes_received(), rx_tx_packets(&lab)?);
            rows[i].push(CaptureRun {
                gbps: (b1 - b0) as f64 * 8.0 / dt / 1e9,
                iface_pps: (p1 - p0) as f64 / dt,
                captured_pps: captured as f64 / dt,
                cpu_pct: 100.0 * cpu_ms / 1000.0 / dt,
                traces,
            });
        }
    }
    drop(dl);
    writeln!(out, "\n## 5. Capture cost under a multi-gigabit transfer\n")?;
    writeln!(out, "One unpaced TCP download through the client; each setting runs {} s, {} times, interleaved; medians (min-max).\n", args.secs, args.reps)?;
    writeln!(out, "| setting | download (Gbit/s) | packets on the client's eth0 per s | packets captured per s | CPU (% of one core) | traces, all runs |")?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for (i, (name, _)) in settings.iter().enumerate() {
        let col = |f: &dyn Fn(&CaptureRun) -> f64| rows[i].iter().map(f).collect::<Vec<f64>>();
        let g = col(&|r| r.gbps);
        writeln!(
            out,
            "| {name} | {:.2} ({:.2}-{:.2}) | {:.0} | {:.0} | {:.1} ({}) | {} |",
            median(&g),
            stats(&g).map_or(0.0, |s| s.min),
            stats(&g).map_or(0.0, |s| s.max),
            median(&col(&|r| r.iface_pps)),
            median(&col(&|r| r.captured_pps)),
            median(&col(&|r| r.cpu_pct)),
            range_prec(&col(&|r| r.cpu_pct), 1),
            rows[i].iter().map(|r| r.traces).sum::<u64>()
        )?;
    }
    print!("{out}");
    Ok(0)
}

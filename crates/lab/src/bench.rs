//! `svctr-lab bench`: a reproducible benchmark of service-traceroute against classic tools,
//! all measured in one run on one freshly built lab (default config: 3 branches, no NAT,
//! no firewall; every router and the server answer).
//!
//! # Method
//!
//! **1. Time to trace one path** (`--runs` repetitions, tools interleaved run by run so that
//! drift in machine load affects them alike). A 5 MB/s TCP download (server port 8080) is
//! alive during the whole section. Each run executes, inside the client namespace via
//! `ip netns exec`:
//!
//! * ours: `service-traceroute flow --iface eth0 --tcp --remote S:8080 --count 1
//!   --duration 10 --format json` (concurrent algorithm, 3 probes per TTL). It traces the
//!   live download, probing TTL 1..5 only: the server's distance comes from the TTL of its
//!   packets. *First probe → finished trace* is `end - start` from the JSON (both are
//!   kernel capture timestamps: the first probe's own capture and the last reply).
//! * scamper, twice: `trace -P tcp -d 8080 -q 3 -Q -w 1` (3 probes per TTL, like ours) and
//!   `trace -P tcp -d 8080 -q 3 -w 1` (its default: the next TTL as soon as one probe is
//!   answered). scamper probes one TTL at a time (`-N 1`; with `-N` > 1 this scamper
//!   version loses the destination's answer and ends on the gap limit) and goes up to the
//!   destination, whose SYN-ACK ends the trace: 6 TTLs. From its JSON, *first probe → last
//!   reply* is `min(tx)` → `max(tx + rtt)`, over TTL 1..5 (the hops ours probes) and over
//!   all 6 TTLs. scamper timestamps in user space.
//! * Debian `traceroute -T -n -p 8080 -q 3 -w 1` (default `-N 16` probes in flight): it has
//!   no machine-readable timing, so only its process wall time is reported.
//! * `true`: the cost of `ip netns exec` itself, included in every wall time.
//!
//! Wall time is spawn → exit of the `ip netns exec` process, observed with `waitid`
//! (no polling). For ours it also includes opening and closing the packet capture and
//! waiting for the next packet of the live flow (a segment every ~3 ms at this pacing).
//!
//! **2. CPU and memory per traced flow.** `--flows` M downloads (distinct ephemeral client
//! ports, 10 kB/s each, to server port 8081) are started and left running; then, 7 times
//! alternately, a tracer with `--count M --duration 30 --format jsonl` and one with
//! `--count 1` run under `/usr/bin/time -f "%M %e" bash -c '"$@"; times'`. bash's `times`
//! prints the tracer's user and system CPU time (getrusage(RUSAGE_CHILDREN), in ms; GNU
//! time's `%U`/`%S` are in units of 10 ms); GNU time prints the max RSS (wait4's rusage:
//! the larger of bash's, ~4 MB, and the tracer's). The workspace forbids unsafe code and
//! nix's `resource` feature is not enabled for this crate, hence these two standard tools.
//! Per traced flow: `(median X_M - median X_1) / (M - 1)`. Every result is checked: 5 hops,
//! each answered, and the hop addresses equal the lab's ground truth for that flow (r2's
//! `ip route get` for the flow's 5-tuple).
//!
//! Only addresses of the lab (198.18.0.0/15) are probed.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use serde_json::Value;
use svctr_lab::{describe, parse_traceroute, tcp_download, tcp_server, Lab, LabConfig, Proto};

/// Server port of the timing section's download.
const TIMING_PORT: u16 = 8080;
/// Pacing of the timing section's download (bytes/s).
const TIMING_RATE: u64 = 5_000_000;
/// Server port of the load section's downloads.
const LOAD_PORT: u16 = 8081;
/// Pacing of each load-section download (bytes/s).
const LOAD_RATE: u64 = 10_000;
/// Bytes of each load-section download: they last ~90 s unless stopped.
const LOAD_BYTES: u64 = LOAD_RATE * 90;
/// Repetitions of each tracer run of the CPU/memory section.
const LOAD_REPS: usize = 7;
/// Kill a tool that runs longer than this.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Routers on the lab path.
const HOPS: usize = 5;

/// Options of `svctr-lab bench`.
pub(crate) struct BenchArgs {
    /// service-traceroute binary.
    pub(crate) tracer: PathBuf,
    /// Repetitions of the timing section.
    pub(crate) runs: usize,
    /// Concurrent flows of the load section.
    pub(crate) flows: usize,
}

/// Runs the benchmark and prints a Markdown report on stdout (progress on stderr).
pub(crate) fn run(args: &BenchArgs, stop: &AtomicBool) -> Result<u8> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.flows < 2 {
        bail!("--flows must be at least 2 (the per-flow cost is a difference with --count 1)");
    }
    let tracer = match args.tracer.canonicalize() {
        Ok(p) if p.is_file() => p,
        _ => bail!(
            "tracer binary not found: {} (build it first: cargo build --release -p service-traceroute)",
            args.tracer.display()
        ),
    };
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let lab = Lab::build(LabConfig::default())?;
    eprintln!("bench: lab {} is up", lab.name());
    let mut report = String::new();
    header(&mut report, &command_line, &tracer)?;

    let timing = timing_section(&lab, &tracer, args.runs, stop)?;
    if stop.load(Ordering::SeqCst) {
        eprintln!("bench: interrupted");
        return Ok(130);
    }
    report.push_str(&timing);
    let load = load_section(&lab, &tracer, args.flows, stop)?;
    if stop.load(Ordering::SeqCst) {
        eprintln!("bench: interrupted");
        return Ok(130);
    }
    report.push_str(&load);
    drop(lab);
    print!("{report}");
    Ok(0)
}

// ------------------------------------------------------------------ report header

fn header(out: &mut String, command_line: &str, tracer: &Path) -> Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = tool_output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S UTC"]));
    let tracer_version = tool_output(Command::new(tracer).arg("--version"));
    let packages = tool_output(Command::new("dpkg-query").args([
        "-W",
        "-f",
        "${Package} ${Version}, ",
        "scamper",
        "traceroute",
        "time",
    ]));
    writeln!(out, "# service-traceroute benchmark\n")?;
    writeln!(out, "* command: `{command_line}`")?;
    writeln!(out, "* date: {date}")?;
    writeln!(
        out,
        "* machine: {nproc} CPUs ({cpu}), kernel {kernel}, lab of network namespaces (default config)"
    )?;
    writeln!(
        out,
        "* versions: {tracer_version}; {}",
        packages.trim_end_matches([',', ' '])
    )?;
    Ok(())
}

/// First line of a small command's stdout, or why there is none.
fn tool_output(cmd: &mut Command) -> String {
    let line = describe(cmd);
    match svctr_lab::output_with_timeout(cmd, None, Duration::from_secs(10)) {
        Ok(o) => {
            let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if s.is_empty() {
                format!("`{line}` printed nothing ({})", o.status)
            } else {
                s
            }
        }
        Err(e) => format!("`{line}` failed: {e:#}"),
    }
}

// --------------------------------------------------------------- timed child runs

/// A finished child process.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    wall: Duration,
}

/// Runs `cmd` to completion, measuring spawn → exit without polling: the exit is observed
/// with `waitid(WEXITED | WNOWAIT)`, then the child is reaped. A watchdog SIGKILLs it after
/// `timeout`; it can only signal a child that has not been reaped yet, so never a reused pid.
fn run_timed(mut cmd: Command, timeout: Duration) -> Result<Run> {
    let line = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let pid = Pid::from_raw(
        i32::try_from(child.id()).with_context(|| format!("pid of `{line}` out of range"))?,
    );
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout pipe"))?;
    let mut err = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr pipe"))?;
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let exited = Arc::new((Mutex::new(false), Condvar::new()));
    let ex = exited.clone();
    let watchdog = std::thread::spawn(move || {
        let (m, cv) = &*ex;
        let g = m.lock().unwrap_or_else(|e| e.into_inner());
        let (g, res) = cv
            .wait_timeout_while(g, timeout, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        if res.timed_out() && !*g {
            let _ = kill(pid, Signal::SIGKILL);
            return true;
        }
        false
    });
    let waited = loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r,
        }
    };
    let wall = t0.elapsed();
    {
        let (m, cv) = &*exited;
        *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"));
    let killed = watchdog.join().unwrap_or(false);
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    waited.with_context(|| format!("waitid for `{line}`"))?;
    let status = status?;
    if killed {
        bail!("`{line}` timed out after {timeout:?} and was killed");
    }
    Ok(Run {
        status,
        stdout,
        stderr,
        wall,
    })
}

/// Whether `prog` is an executable file in one of $PATH's directories.
fn in_path(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(prog);
            f.is_file()
        })
    })
}

// ----------------------------------------------------------------- result parsing

/// Microseconds since the Unix epoch of an RFC 3339 timestamp such as
/// `2026-11-23T12:46:50.069506Z` (fraction optional, offset `Z` or `±hh:mm`).
fn parse_rfc3339_us(s: &str) -> Result<i64> {
    let bad = || anyhow!("not an RFC 3339 timestamp: {s:?}");
    let (date, time) = s.split_once(['T', 't', ' ']).ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse::<i64>().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    let [y, mo, da] = d[..] else {
        return Err(bad());
    };
    // Split the offset off the time of day.
    let (tod, offset_s) = if let Some(t) = time.strip_suffix(['Z', 'z']) {
        (t, 0)
    } else {
        let i = time.rfind(['+', '-']).ok_or_else(bad)?;
        let (t, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':').ok_or_else(bad)?;
        let oh: i64 = oh.parse().map_err(|_| bad())?;
        let om: i64 = om.parse().map_err(|_| bad())?;
        (t, sign * (oh * 3600 + om * 60))
    };
    let (hms, frac) = tod.split_once('.').unwrap_or((tod, ""));
    let t: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse::<i64>().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    let [h, mi, se] = t[..] else {
        return Err(bad());
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    if !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    // Microseconds: the first 6 fraction digits, right-padded with zeros.
    let us: i64 = format!("{:0<6}", frac.get(..6).unwrap_or(frac))
        .parse()
        .map_err(|_| bad())?;
    let days = days_from_civil(y, mo, da);
    Ok(((days * 86_400 + h * 3600 + mi * 60 + se) - offset_s) * 1_000_000 + us)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What one of our JSON results says.
#[derive(Debug)]
struct OurTrace {
    local_port: u16,
    /// `end - start`.
    first_to_end: Duration,
    /// Answering address of each hop (first answer), in TTL order.
    hops: Vec<Option<Ipv4Addr>>,
    probes_sent: u64,
    replies: u64,
    stop_reason: String,
}

impl OurTrace {
    /// 5 hops, each answered at least once.
    fn complete(&self) -> bool {
        self.hops.len() == HOPS && self.hops.iter().all(Option::is_some)
    }
}

fn parse_our_trace(v: &Value) -> Result<OurTrace> {
    let field = |k: &str| v.get(k).ok_or_else(|| anyhow!("result has no {k:?}: {v}"));
    let ts = |k: &str| -> Result<i64> {
        let s = field(k)?
            .as_str()
            .ok_or_else(|| anyhow!("{k:?} is not a string"))?;
        parse_rfc3339_us(s).with_context(|| format!("field {k:?}"))
    };
    let (start, end) = (ts("start")?, ts("end")?);
    let first_to_end = Duration::from_micros(
        u64::try_from(end - start).map_err(|_| anyhow!("end before start in {v}"))?,
    );
    let local_port = v
        .pointer("/flow/local/port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| anyhow!("result has no flow.local.port"))?;
    let hops = field("hops")?
        .as_array()
        .ok_or_else(|| anyhow!("\"hops\" is not an array"))?
        .iter()
        .map(|h| {
            h.get("probes").and_then(Value::as_array).and_then(|ps| {
                ps.iter()
                    .find_map(|p| p.get("addr").and_then(Value::as_str))
                    .and_then(|a| a.parse::<Ipv4Addr>().ok())
            })
        })
        .collect();
    let num = |k: &str| -> Result<u64> {
        field(k)?
            .as_u64()
            .ok_or_else(|| anyhow!("{k:?} is not a number"))
    };
    Ok(OurTrace {
        local_port,
        first_to_end,
        hops,
        probes_sent: num("probes_sent")?,
        replies: num("replies")?,
        stop_reason: field("stop_reason")?
            .as_str()
            .unwrap_or_default()
            .to_string(),
    })
}

/// What scamper's trace JSON says.
#[derive(Debug)]
struct ScamperTrace {
    /// First probe sent → last reply over TTL 1..=5.
    first_to_hop5: Duration,
    /// First probe sent → last reply over all TTLs (the destination's included).
    first_to_last: Duration,
    stop_reason: String,
    probe_count: u64,
    /// Distinct TTLs answered.
    ttls_answered: usize,
    /// The destination answered.
    reached: bool,
}

fn parse_scamper(out: &str, dst: Ipv4Addr) -> Result<ScamperTrace> {
    let trace: Value = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("type").and_then(Value::as_str) == Some("trace"))
        .ok_or_else(|| anyhow!("no \"trace\" object in scamper output: {out:?}"))?;
    let hops = trace
        .get("hops")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("scamper trace has no hops: {trace}"))?;
    let mut first_tx = i64::MAX;
    let (mut last5, mut last) = (i64::MIN, i64::MIN);
    let mut ttls = BTreeSet::new();
    let mut reached = false;
    for h in hops {
        let g = |k: &str| {
            h.get(k)
                .ok_or_else(|| anyhow!("scamper hop without {k:?}: {h}"))
        };
        let sec = g("tx")?.get("sec").and_then(Value::as_i64);
        let usec = g("tx")?.get("usec").and_then(Value::as_i64);
        let (Some(sec), Some(usec)) = (sec, usec) else {
            bail!("scamper hop with a malformed tx: {h}");
        };
        let tx = sec * 1_000_000 + usec;
        let rtt_ms = g("rtt")?
            .as_f64()
            .ok_or_else(|| anyhow!("scamper rtt is not a number: {h}"))?;
        let ttl = g("probe_ttl")?
            .as_u64()
            .ok_or_else(|| anyhow!("scamper probe_ttl is not a number: {h}"))?;
        let rx = tx + (rtt_ms * 1000.0).round() as i64;
        first_tx = first_tx.min(tx);
        last = last.max(rx);
        if ttl as usize <= HOPS {
            last5 = last5.max(rx);
        }
        ttls.insert(ttl);
        if h.get("addr").and_then(Value::as_str) == Some(dst.to_string().as_str()) {
            reached = true;
        }
    }
    if first_tx == i64::MAX || last5 == i64::MIN {
        bail!("scamper trace has no answered hop 1..{HOPS}: {trace}");
    }
    let us = |d: i64| Duration::from_micros(u64::try_from(d).unwrap_or(0));
    Ok(ScamperTrace {
        first_to_hop5: us(last5 - first_tx),
        first_to_last: us(last - first_tx),
        stop_reason: trace
            .get("stop_reason")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string(),
        probe_count: trace
            .get("probe_count")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        ttls_answered: ttls.len(),
        reached,
    })
}

/// Resource usage of one tracer process.
#[derive(Debug, Clone, Copy)]
struct Rusage {
    user_ms: f64,
    sys_ms: f64,
    maxrss_kib: f64,
    wall_s: f64,
}

impl Rusage {
    fn cpu_ms(&self) -> f64 {
        self.user_ms + self.sys_ms
    }
}

/// Bash's `times` output: the second line is the children's user and system time, e.g.
/// `0m0.025s 0m0.002s` (getrusage(RUSAGE_CHILDREN), millisecond precision). Returns ms.
fn parse_bash_times(s: &str) -> Result<(f64, f64)> {
    let line = s
        .lines()
        .nth(1)
        .ok_or_else(|| anyhow!("bash `times` printed no children line: {s:?}"))?;
    let one = |t: &str| -> Option<f64> {
        let (m, rest) = t.split_once('m')?;
        let sec = rest.strip_suffix('s')?;
        Some((m.parse::<f64>().ok()? * 60.0 + sec.parse::<f64>().ok()?) * 1000.0)
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|t| one(t).ok_or_else(|| anyhow!("cannot parse bash `times` line {line:?}")))
        .collect::<Result<_>>()?;
    let [u, sy] = v[..] else {
        bail!("bash `times` line {line:?} does not have 2 fields");
    };
    Ok((u, sy))
}

/// GNU time's `-f "%M %e"` line: max RSS KiB, elapsed s.
fn parse_time_line(s: &str) -> Result<(f64, f64)> {
    let line = s
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| anyhow!("GNU time wrote nothing"))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot parse GNU time line {line:?}"))?;
    let [rss, e] = f[..] else {
        bail!("GNU time line {line:?} does not have 2 fields");
    };
    Ok((rss, e))
}

// --------------------------------------------------------------------- statistics

/// Summary of a sample (milliseconds).
struct Stats {
    median: f64,
    min: f64,
    p90: f64,
    max: f64,
}

fn stats(v: &[f64]) -> Option<Stats> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    // Nearest-rank 90th percentile.
    let p90 = s[((0.9 * n as f64).ceil() as usize).clamp(1, n) - 1];
    Some(Stats {
        median,
        min: s[0],
        p90,
        max: s[n - 1],
    })
}

fn fmt_stats(v: &[f64]) -> String {
    match stats(v) {
        Some(s) => format!(
            "{} ({} / {} / {})",
            ms(s.median),
            ms(s.min),
            ms(s.p90),
            ms(s.max)
        ),
        None => "n/a".to_string(),
    }
}

fn ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn ratio(peer: &[f64], ours: &[f64]) -> String {
    match (stats(peer), stats(ours)) {
        (Some(p), Some(o)) if o.median > 0.0 => format!("{:.1}×", p.median / o.median),
        _ => "n/a".to_string(),
    }
}

fn dur_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ------------------------------------------------------------- section 1: timing

/// The measurements of one tool over all runs.
struct Series {
    tool: Tool,
    name: String,
    command: String,
    wall: Vec<f64>,
    /// First probe → last reply of TTL 1..=5.
    to_hop5: Vec<f64>,
    /// First probe → last reply of the whole trace.
    to_last: Vec<f64>,
    probes: Vec<u64>,
    failures: Vec<String>,
    /// Why the tool was not run at all.
    skipped: Option<String>,
}

impl Series {
    fn new(tool: Tool, name: &str, command: String) -> Self {
        Series {
            tool,
            name: name.to_string(),
            command,
            wall: Vec::new(),
            to_hop5: Vec::new(),
            to_last: Vec::new(),
            probes: Vec::new(),
            failures: Vec::new(),
            skipped: None,
        }
    }
    fn fail(&mut self, run: usize, what: String) {
        eprintln!("bench: {} run {run}: {what}", self.name);
        self.failures.push(format!("run {run}: {what}"));
    }
}

#[derive(Clone, Copy)]
enum Tool {
    Ours,
    ScamperAll,
    ScamperFirst,
    Traceroute,
    NetnsExec,
}

fn tool_args(tool: Tool, lab: &Lab) -> (&'static str, Vec<String>) {
    let s = lab.server_addr().to_string();
    let port = TIMING_PORT.to_string();
    let v = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match tool {
        Tool::Ours => (
            "",
            v(&[
                "flow",
                "--iface",
                lab.client_iface(),
                "--tcp",
                "--remote",
                &format!("{s}:{port}"),
                "--count",
                "1",
                "--duration",
                "10",
                "--format",
                "json",
            ]),
        ),
        Tool::ScamperAll | Tool::ScamperFirst => {
            let all = if matches!(tool, Tool::ScamperAll) {
                " -Q"
            } else {
                ""
            };
            (
                "scamper",
                vec![
                    "-O".into(),
                    "json".into(),
                    "-p".into(),
                    "10000".into(),
                    "-c".into(),
                    format!("trace -P tcp -d {port} -q 3{all} -w 1"),
                    "-i".into(),
                    s,
                ],
            )
        }
        Tool::Traceroute => (
            "traceroute",
            v(&["-T", "-n", "-p", &port, "-q", "3", "-w", "1", &s]),
        ),
        Tool::NetnsExec => ("true", Vec::new()),
    }
}

fn timing_section(lab: &Lab, tracer: &Path, runs: usize, stop: &AtomicBool) -> Result<String> {
    let server = tcp_server(lab, TIMING_PORT, TIMING_RATE)?;
    // Long enough for every run: TIMING_RATE bytes/s for 10 min (it is stopped at the end).
    let dl = tcp_download(lab, TIMING_PORT, 0, TIMING_RATE * 600, false)?;
    let lport = dl.wait_established(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    let truth = lab.expected_path(Proto::Tcp, lport, TIMING_PORT)?;
    let tracer_s = tracer.to_string_lossy().into_owned();

    let tools = [
        Tool::Ours,
        Tool::ScamperAll,
        Tool::ScamperFirst,
        Tool::Traceroute,
        Tool::NetnsExec,
    ];
    let names = [
        "service-traceroute (ours)",
        "scamper, 3 probes/TTL (`-q 3 -Q`)",
        "scamper, first answer per TTL (`-q 3`)",
        "traceroute -T (`-q 3`, `-N 16`)",
        "`ip netns exec true` (baseline)",
    ];
    let mut series: Vec<Series> = tools
        .iter()
        .zip(names)
        .map(|(t, n)| {
            let (prog, args) = tool_args(*t, lab);
            let prog = if prog.is_empty() {
                "service-traceroute"
            } else {
                prog
            };
            let mut line = prog.to_string();
            for a in args {
                line.push(' ');
                if a.contains(' ') {
                    line.push_str(&format!("'{a}'"));
                } else {
                    line.push_str(&a);
                }
            }
            Series::new(*t, n, line)
        })
        .collect();
    for (t, s) in tools.iter().zip(series.iter_mut()) {
        let prog = tool_args(*t, lab).0;
        if !prog.is_empty() && !in_path(prog) {
            s.skipped = Some(format!(
                "`{prog}` is not installed (not found in PATH; Debian package `{prog}`)"
            ));
        }
    }

    for run in 1..=runs {
        if stop.load(Ordering::SeqCst) {
            return Ok(String::new());
        }
        eprintln!("bench: timing run {run}/{runs}");
        for (t, s) in tools.iter().zip(series.iter_mut()) {
            if s.skipped.is_some() {
                continue;
            }
            let (prog, args) = tool_args(*t, lab);
            let prog = if prog.is_empty() { &tracer_s } else { prog };
            let mut cmd = lab.command(lab.client_ns(), prog);
            cmd.args(&args);
            let r = match run_timed(cmd, RUN_TIMEOUT) {
                Ok(r) => r,
                Err(e) => {
                    s.fail(run, format!("{e:#}"));
                    continue;
                }
            };
            if !r.status.success() {
                s.fail(run, format!("exit {}: {}", r.status, r.stderr.trim()));
                continue;
            }
            match check_timing_run(*t, &r, lab, &truth) {
                Ok((to5, to_last, probes)) => {
                    s.wall.push(dur_ms(r.wall));
                    if let Some(x) = to5 {
                        s.to_hop5.push(dur_ms(x));
                    }
                    if let Some(x) = to_last {
                        s.to_last.push(dur_ms(x));
                    }
                    if let Some(p) = probes {
                        s.probes.push(p);
                    }
                }
                Err(e) => s.fail(run, format!("{e:#}")),
            }
        }
    }
    drop(dl);
    drop(server);
    timing_report(&series, runs, &truth, lab)
}

type TimingSample = (Option<Duration>, Option<Duration>, Option<u64>);

/// Checks one run's output; returns (first probe → hop-5 reply, → last reply, probes sent).
fn check_timing_run(tool: Tool, r: &Run, lab: &Lab, truth: &[Ipv4Addr]) -> Result<TimingSample> {
    let want: Vec<Option<Ipv4Addr>> = truth.iter().copied().map(Some).collect();
    match tool {
        Tool::Ours => {
            let v: Value = serde_json::from_str(&r.stdout)
                .with_context(|| format!("tracer output is not JSON: {:?}", r.stdout))?;
            let t = parse_our_trace(&v)?;
            if !t.complete() || t.hops != want {
                bail!("incomplete or wrong path {:?} (truth {truth:?})", t.hops);
            }
            Ok((
                Some(t.first_to_end),
                Some(t.first_to_end),
                Some(t.probes_sent),
            ))
        }
        Tool::ScamperAll | Tool::ScamperFirst => {
            let t = parse_scamper(&r.stdout, lab.server_addr())?;
            if !t.reached || t.ttls_answered != HOPS + 1 || t.stop_reason != "COMPLETED" {
                bail!(
                    "scamper trace not complete: stop {} reached {} ttls {}",
                    t.stop_reason,
                    t.reached,
                    t.ttls_answered
                );
            }
            Ok((
                Some(t.first_to_hop5),
                Some(t.first_to_last),
                Some(t.probe_count),
            ))
        }
        Tool::Traceroute => {
            let hops = parse_traceroute(&r.stdout);
            let mut want6 = want.clone();
            want6.push(Some(lab.server_addr()));
            // Without --sport every probe has its own source port, so hops 3-4 may be
            // on any branch: check the hop count and the branch-independent hops only.
            let fixed = [0, 1, 4, 5];
            if hops.len() != HOPS + 1 || fixed.iter().any(|&i| hops[i] != want6[i]) {
                bail!("unexpected traceroute output: {:?}", r.stdout);
            }
            Ok((None, None, None))
        }
        Tool::NetnsExec => Ok((None, None, None)),
    }
}

fn timing_report(series: &[Series], runs: usize, truth: &[Ipv4Addr], lab: &Lab) -> Result<String> {
    let mut o = String::new();
    let path: Vec<String> = truth.iter().map(|a| a.to_string()).collect();
    writeln!(
        o,
        "\n## 1. Time to trace one path (all hops answer), {runs} runs\n"
    )?;
    writeln!(
        o,
        "Path of the live download: {} → {} (server). \
         Times in ms: median (min / p90 / max) over the successful runs.\n",
        path.join(" → "),
        lab.server_addr()
    )?;
    writeln!(
        o,
        "| tool | ok runs | probes/trace | first probe → last reply, TTL 1-5 | first probe → last reply, all TTLs | process wall time |"
    )?;
    writeln!(o, "|---|---|---|---|---|---|")?;
    for s in series {
        if let Some(why) = &s.skipped {
            writeln!(o, "| {} | not run: {why} | | | | |", s.name)?;
            continue;
        }
        let probes = match (s.probes.iter().min(), s.probes.iter().max()) {
            (Some(a), Some(b)) if a == b => a.to_string(),
            (Some(a), Some(b)) => format!("{a}-{b}"),
            _ => "n/a".to_string(),
        };
        writeln!(
            o,
            "| {} | {}/{runs} | {probes} | {} | {} | {} |",
            s.name,
            s.wall.len(),
            fmt_stats(&s.to_hop5),
            fmt_stats(&s.to_last),
            fmt_stats(&s.wall)
        )?;
    }
    let ours = &series[0];
    writeln!(
        o,
        "\nRatios of medians, peer / ours (ours: TTL 1-5 is its whole trace):\n"
    )?;
    writeln!(
        o,
        "| peer | first probe → last reply, TTL 1-5 | first probe → last reply, all TTLs | process wall time |"
    )?;
    writeln!(o, "|---|---|---|---|")?;
    for s in series.iter().skip(1) {
        if s.skipped.is_some() || matches!(s.tool, Tool::NetnsExec) {
            continue;
        }
        writeln!(
            o,
            "| {} | {} | {} | {} |",
            s.name,
            ratio(&s.to_hop5, &ours.to_hop5),
            ratio(&s.to_last, &ours.to_hop5),
            ratio(&s.wall, &ours.wall)
        )?;
    }
    writeln!(
        o,
        "\nCommands (run in the client namespace with `ip netns exec`):\n"
    )?;
    for s in series {
        writeln!(o, "* {}: `{}`", s.name, s.command)?;
    }
    let failures: Vec<String> = series
        .iter()
        .flat_map(|s| s.failures.iter().map(move |f| format!("* {}: {f}", s.name)))
        .collect();
    if !failures.is_empty() {
        writeln!(o, "\nFailed runs (excluded from the statistics):\n")?;
        for f in failures {
            writeln!(o, "{f}")?;
        }
    }
    Ok(o)
}

// --------------------------------------------------------- section 2: CPU / memory

/// One tracer run under GNU time.
struct LoadRun {
    count: usize,
    rusage: Rusage,
    traces: Vec<OurTrace>,
    /// Traces whose hops equal the ground truth of their flow.
    correct: usize,
}

fn load_section(lab: &Lab, tracer: &Path, flows: usize, stop: &AtomicBool) -> Result<String> {
    if !Path::new("/usr/bin/time").is_file() {
        return Ok(
            "\n## 2. CPU and memory per traced flow\n\nnot run: GNU time \
                   (`/usr/bin/time`, Debian package `time`) is not installed.\n"
                .to_string(),
        );
    }
    let server = tcp_server(lab, LOAD_PORT, LOAD_RATE)?;
    eprintln!("bench: starting {flows} downloads");
    let mut dls = Vec::with_capacity(flows);
    for i in 0..flows {
        if stop.load(Ordering::SeqCst) {
            return Ok(String::new());
        }
        let dl = tcp_download(lab, LOAD_PORT, 0, LOAD_BYTES, false)?;
        dl.wait_established(Duration::from_secs(10))
            .with_context(|| format!("download {} of {flows}", i + 1))?;
        dls.push(dl);
    }
    std::thread::sleep(Duration::from_secs(1));
    let ports: BTreeSet<u16> = dls.iter().filter_map(|d| d.local_port()).collect();
    if ports.len() != flows {
        bail!(
            "expected {flows} distinct client ports, got {}",
            ports.len()
        );
    }
    let tmp = std::env::temp_dir().join(format!("svctr-bench-{}", std::process::id()));
    let mut results = Vec::new();
    for rep in 1..=LOAD_REPS {
        for count in [flows, 1] {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            eprintln!("bench: tracer --count {count} ({rep}/{LOAD_REPS})");
            results.push(load_run(lab, tracer, count, &tmp)?);
        }
    }
    let alive = dls.iter().filter(|d| !d.is_finished()).count();
    // Stopping the server first ends every connection, so the downloads stop at once.
    drop(server);
    drop(dls);
    if stop.load(Ordering::SeqCst) {
        return Ok(String::new());
    }
    load_report(&results, flows, alive)
}

/// Runs the tracer as `/usr/bin/time -f "%M %e" bash -c '"$@"; times' bash TRACER ...`:
/// GNU time reports the max RSS (of bash or the tracer, whichever is larger: the tracer)
/// and bash's `times` the tracer's CPU time in milliseconds (GNU time's `%U` and `%S` are
/// printed in units of 10 ms).
fn load_run(lab: &Lab, tracer: &Path, count: usize, tmp: &Path) -> Result<LoadRun> {
    let time_file = tmp.with_extension("time");
    let times_file = tmp.with_extension("times");
    let mut cmd = lab.command(lab.client_ns(), "/usr/bin/time");
    cmd.env("SVCTR_TIMES", &times_file)
        .arg("-o")
        .arg(&time_file)
        .args(["-f", "%M %e", "bash", "-c"])
        .arg(r#""$@"; s=$?; times > "$SVCTR_TIMES"; exit $s"#)
        .arg("bash")
        .arg(tracer)
        .args(["flow", "--iface", lab.client_iface(), "--tcp", "--remote"])
        .arg(format!("{}:{LOAD_PORT}", lab.server_addr()))
        .args([
            "--count",
            &count.to_string(),
            "--duration",
            "30",
            "--format",
            "jsonl",
        ]);
    let line = describe(&cmd);
    let r = run_timed(cmd, RUN_TIMEOUT);
    let time_out = std::fs::read_to_string(&time_file)
        .with_context(|| format!("reading GNU time's output {}", time_file.display()));
    let times_out = std::fs::read_to_string(&times_file)
        .with_context(|| format!("reading bash times' output {}", times_file.display()));
    let _ = std::fs::remove_file(&time_file);
    let _ = std::fs::remove_file(&times_file);
    let r = r?;
    if !r.status.success() {
        bail!("`{line}` failed ({}): {}", r.status, r.stderr.trim());
    }
    let (maxrss_kib, wall_s) = parse_time_line(&time_out?)?;
    let (user_ms, sys_ms) = parse_bash_times(&times_out?)?;
    let rusage = Rusage {
        user_ms,
        sys_ms,
        maxrss_kib,
        wall_s,
    };
    let mut traces = Vec::new();
    for (i, l) in r
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
    {
        let v: Value = serde_json::from_str(l)
            .with_context(|| format!("tracer output line {} is not JSON: {l:?}", i + 1))?;
        traces.push(parse_our_trace(&v).with_context(|| format!("result {}", i + 1))?);
    }
    let mut correct = 0;
    for t in &traces {
        let truth = lab.expected_path(Proto::Tcp, t.local_port, LOAD_PORT)?;
        if t.hops == truth.into_iter().map(Some).collect::<Vec<_>>() {
            correct += 1;
        }
    }
    Ok(LoadRun {
        count,
        rusage,
        traces,
        correct,
    })
}

fn load_report(results: &[LoadRun], flows: usize, alive: usize) -> Result<String> {
    let mut o = String::new();
    writeln!(o, "\n## 2. CPU and memory per traced flow\n")?;
    writeln!(
        o,
        "{flows} concurrent downloads (10 kB/s each, distinct client ports, {alive} still alive after all runs); \
         tracer CPU time (user + sys) from bash's `times` (getrusage(RUSAGE_CHILDREN), printed in ms; the kernel derives it from tick samples, so a small value such as a 1-flow run's is only good to a few ms and the user/sys split is rough), max RSS from GNU time (`%M`).\n"
    )?;
    writeln!(
        o,
        "| tracer run | traced | complete (5 answered hops) | = ground truth | stop reasons | probes sent / replies | wall s | user ms | sys ms | CPU ms | max RSS KiB |"
    )?;
    writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    for r in results {
        let complete = r.traces.iter().filter(|t| t.complete()).count();
        let mut reasons: Vec<String> = r
            .traces
            .iter()
            .map(|t| t.stop_reason.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|s| {
                let n = r.traces.iter().filter(|t| t.stop_reason == s).count();
                format!("{s} ×{n}")
            })
            .collect();
        if reasons.is_empty() {
            reasons.push("-".into());
        }
        let sent: u64 = r.traces.iter().map(|t| t.probes_sent).sum();
        let replies: u64 = r.traces.iter().map(|t| t.replies).sum();
        let u = &r.rusage;
        writeln!(
            o,
            "| `--count {}` | {} | {complete} | {} | {} | {sent} / {replies} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.count,
            r.traces.len(),
            r.correct,
            reasons.join(", "),
            u.wall_s,
            u.user_ms,
            u.sys_ms,
            u.cpu_ms(),
            u.maxrss_kib
        )?;
    }
    let pick = |many: bool, f: &dyn Fn(&LoadRun) -> f64| -> Vec<f64> {
        results
            .iter()
            .filter(|r| (r.count > 1) == many)
            .map(f)
            .collect()
    };
    let median = |v: Vec<f64>| stats(&v).map(|s| s.median);
    let traced: Vec<usize> = results
        .iter()
        .filter(|r| r.count > 1)
        .map(|r| r.traces.len())
        .collect();
    let per_flow = |f: &dyn Fn(&LoadRun) -> f64| -> Option<f64> {
        Some((median(pick(true, f))? - median(pick(false, f))?) / (flows - 1) as f64)
    };
    match (
        traced.iter().all(|&t| t == flows) && !traced.is_empty(),
        per_flow(&|r| r.rusage.cpu_ms()),
        per_flow(&|r| r.rusage.user_ms),
        per_flow(&|r| r.rusage.sys_ms),
        per_flow(&|r| r.rusage.maxrss_kib),
    ) {
        (true, Some(cpu), Some(user), Some(sys), Some(rss)) => writeln!(
            o,
            "\nPer traced flow, (median of the `--count {flows}` runs − median of the \
             `--count 1` runs) / {}: **{cpu:.3} ms CPU** (user {user:.3}, sys {sys:.3}), \
             **{rss:.1} KiB max RSS**.",
            flows - 1
        )?,
        _ => writeln!(
            o,
            "\nPer-flow cost not computed: a `--count {flows}` run traced fewer flows ({traced:?})."
        )?,
    }
    writeln!(
        o,
        "\nCommand: `/usr/bin/time -f \"%M %e\" bash -c '\"$@\"; times' bash service-traceroute flow --iface eth0 --tcp --remote 198.19.1.2:{LOAD_PORT} --count N --duration 30 --format jsonl`"
    )?;
    Ok(o)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn rfc3339() {
        let a = parse_rfc3339_us("2026-11-23T12:46:50.069506Z").unwrap();
        let b = parse_rfc3339_us("2026-11-23T12:46:50.069772Z").unwrap();
        assert_eq!(b - a, 266);
        assert_eq!(parse_rfc3339_us("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_rfc3339_us("1970-01-01T01:00:00.5+01:00").unwrap(),
            500_000
        );
        // Across midnight and a leap day.
        let c = parse_rfc3339_us("2024-02-29T23:59:59.999999Z").unwrap();
        let d = parse_rfc3339_us("2024-03-01T00:00:00.000001Z").unwrap();
        assert_eq!(d - c, 2);
        assert_eq!(
            parse_rfc3339_us("2000-03-01T00:00:00Z").unwrap(),
            951_868_800_000_000
        );
        assert!(parse_rfc3339_us("2026-11-23 12:46").is_err());
        assert!(parse_rfc3339_us("yesterday").is_err());
    }

    #[test]
    fn our_json() {
        let v: Value = serde_json::from_str(
            r#"{"flow":{"protocol":"tcp","local":{"ip":"198.18.1.2","port":59740},
            "remote":{"ip":"198.19.1.2","port":8080}},"algorithm":"concurrent",
            "start":"2026-11-23T12:46:50.069506Z","end":"2026-11-23T12:46:50.069772Z",
            "stop_reason":"remote-distance","hops":[
            {"ttl":1,"probes":[{"addr":null,"rtt_ms":null},{"addr":"198.18.1.1","rtt_ms":0.1}]},
            {"ttl":2,"probes":[{"addr":null,"rtt_ms":null}]}],
            "probes_sent":3,"replies":1}"#,
        )
        .unwrap();
        let t = parse_our_trace(&v).unwrap();
        assert_eq!(t.first_to_end, Duration::from_micros(266));
        assert_eq!(t.local_port, 59740);
        assert_eq!(t.hops, vec![Some(Ipv4Addr::new(198, 18, 1, 1)), None]);
        assert!(!t.complete());
        assert_eq!((t.probes_sent, t.replies), (3, 1));
    }

    #[test]
    fn scamper_json() {
        let out = r#"{"type":"cycle-start", "list_name":"default", "id":0, "start_time":1795437572}
{"type":"trace", "stop_reason":"COMPLETED", "probe_count":3, "start":{"sec":1795437572, "usec":450275}, "hops":[{"addr":"198.18.1.1", "probe_ttl":1, "probe_id":1, "tx":{"sec":1795437572, "usec":460012}, "rtt":0.020},{"addr":"198.19.2.2", "probe_ttl":5, "probe_id":1, "tx":{"sec":1795437572, "usec":460298}, "rtt":0.046},{"addr":"198.19.1.2", "probe_ttl":6, "probe_id":1, "tx":{"sec":1795437572, "usec":460351}, "rtt":0.027, "tcp_flags":18}]}
{"type":"cycle-stop", "list_name":"default", "id":0, "stop_time":1795437572}"#;
        let t = parse_scamper(out, Ipv4Addr::new(198, 19, 1, 2)).unwrap();
        assert_eq!(t.first_to_hop5, Duration::from_micros(460_344 - 460_012));
        assert_eq!(t.first_to_last, Duration::from_micros(460_378 - 460_012));
        assert!(t.reached);
        assert_eq!(t.ttls_answered, 3);
        assert_eq!(t.probe_count, 3);
        assert!(parse_scamper("garbage", Ipv4Addr::new(198, 19, 1, 2)).is_err());
    }

    #[test]
    fn time_line_and_stats() {
        assert_eq!(parse_time_line("5120 1.50\n").unwrap(), (5120.0, 1.5));
        assert!(parse_time_line("Command exited with non-zero status 1\n").is_err());
        let (u, s) = parse_bash_times("0m0.002s 0m0.000s\n1m0.025s 0m0.002s\n").unwrap();
        assert!((u - 60_025.0).abs() < 1e-6 && (s - 2.0).abs() < 1e-6);
        assert!(parse_bash_times("0m0.002s 0m0.000s\n").is_err());
        let s = stats(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.median, s.min, s.p90, s.max), (3.0, 1.0, 5.0, 5.0));
        let s = stats(&[1.0, 2.0]).unwrap();
        assert_eq!(s.median, 1.5);
        assert!(stats(&[]).is_none());
    }
}

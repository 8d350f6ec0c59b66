//! `svctr-lab bench` and `svctr-lab bench-trace`: a reproducible benchmark of
//! service-traceroute against classic tools, each measured in one run on a freshly built
//! lab (default config: 3 branches, no NAT, no firewall; every router and the server
//! answer). `bench` runs sections 1 and 2, `bench-trace` section 3.
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
//!   no machine-readable timing, so only its process wall time is reported; and
//!   `traceroute -U -n -q 3 -w 1`.
//! * ours as a one-destination tracer, no flow: `service-traceroute trace -n -T -p 8080
//!   --format json S` and `trace -n -U --format json S` (replies over raw sockets, the
//!   default for a few targets): the process wall time against traceroute's in the same
//!   protocol, and `end - start` from the JSON.
//! * trippy (when installed): `trip -m json -C 1 --udp -i 0ms -g 10ms S` (its shortest
//!   round; in TCP mode this trippy's report had no destination hop in the lab, and its
//!   rounds lasted 1 s), and mtr (`mtr-tiny`): `mtr -n -j -c 1 -i 0.1 -G 0.1 -T -P 8080 S`
//!   and `-u` (one cycle, 0.1 s between probes and 0.1 s of grace at the end, where its
//!   defaults are 1 s and 5 s). Their wall times; their paths are checked like traceroute's
//!   (TTL 1, 2, 5 and the server; TTL 3-4 may be any branch, each probe has its own ports).
//! * `true`: the cost of `ip netns exec` itself, included in every wall time.
//!
//! Wall time is spawn → exit of the `ip netns exec` process, observed with `waitid`
//! (no polling). For ours it also includes opening and closing the packet capture and
//! waiting for the next packet of the live flow (a segment every ~3 ms at this pacing).
//!
//! **2. CPU and memory per traced flow.** `--flows` M downloads (distinct ephemeral client
//! ports, 10 kB/s each, to server port 8081) are started and left running; then, 7 times
//! alternately, a tracer with `--count M --duration 30 --format jsonl --capture-buffer 32`
//! and one with `--count 1` (the same capture ring) run under `/usr/bin/time -f "%M %e" bash -c '"$@"; times'`. bash's `times`
//! prints the tracer's user and system CPU time (getrusage(RUSAGE_CHILDREN), in ms; GNU
//! time's `%U`/`%S` are in units of 10 ms); GNU time prints the max RSS (wait4's rusage:
//! the larger of bash's, ~4 MB, and the tracer's). The workspace forbids unsafe code and
//! nix's `resource` feature is not enabled for this crate, hence these two standard tools.
//! Per traced flow: `(median X_M - median X_1) / (M - 1)`. Every result is checked: 5 hops,
//! each answered, and the hop addresses equal the lab's ground truth for that flow (r2's
//! `ip route get` for the flow's 5-tuple).
//!
//! **3. Trace many destinations** (`svctr-lab bench-trace`, its own lab with fan-out N,
//! default 1000: destinations 198.19.128.1.. on the server, each 6 hops away, answering
//! UDP probes with port unreachable). Every setting runs `--reps` times (settings
//! interleaved), in the client namespace, under
//! `/usr/bin/time -f "%M %e" timeout -k 5 300 bash -c '"$@"; times' bash CMD...`:
//!
//! * ours, one process for all destinations: `service-traceroute trace -n -U --strategy
//!   paris -q 1 -w 1 --format jsonl <N addresses>`, with its defaults (16 probes in flight
//!   per destination, so up to 10 probes beyond a destination at TTL 6; no rate limit) and
//!   with `--rate 10000` (scamper's highest rate) and with `-N 1` (one probe in flight per
//!   destination: no probe beyond the destination, as scamper).
//! * scamper, one process: `scamper -O json -p 10000 -w 0 -c 'trace -P udp-paris -q 1 -w 1'
//!   -f targets.txt`. 10000 packets/s is the highest `-p` it accepts (default 20) and
//!   `-w 0` puts no limit on parallel tasks, so this is its fastest setting.
//! * trippy, which traces one destination per process in its report modes (several
//!   targets are only accepted by its TUI): `trip -m json -C 1 --udp -R paris [-i 0ms -g
//!   10ms] TARGET` through `xargs -P --parallel` (default 50), each process writing its
//!   report to a file; with its default round timing (a round lasts at least 1 s) and
//!   with the shortest it accepts (the round ends 10 ms after the destination answers).
//! * Debian `traceroute -n -U -q 1 -w 1 TARGET` the same way (not Paris: each probe gets
//!   its own source port).
//!
//! Measured per run: wall time (spawn → exit of the whole run), CPU time of all processes
//! (bash's `times`: getrusage(RUSAGE_CHILDREN) covers every waited-for descendant), the
//! largest max RSS of any single process (GNU time `%M`), the packets the client's
//! interface sent (`/sys/class/net/eth0/statistics/tx_packets` before and after: every
//! probe, whatever the tool reports) and each tool's own probe count where it has one.
//! Each destination's result is checked: *complete* means TTL 1-5 answered by exactly the
//! 5 routers of one ECMP branch and TTL 6 by the destination; *reached* only requires 6
//! answered TTLs, the 6th from the destination.
//!
//! Only addresses of the lab (198.18.0.0/15) are probed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
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
use svctr_lab::{
    describe, parse_traceroute, parse_traceroute_ip, tcp_download, tcp_server, Lab, LabConfig,
    LineConfig, Proto,
};

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
    /// Delay lines on the lab's links (none: the lab's round trips are tens of µs).
    pub(crate) lines: Vec<LineConfig>,
    /// trippy's `trip` binary (default: found as for `bench-trace`).
    pub(crate) trip: Option<PathBuf>,
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
    let lab = Lab::build(LabConfig {
        lines: args.lines.clone(),
        ..LabConfig::default()
    })?;
    eprintln!("bench: lab {} is up", lab.name());
    let mut report = String::new();
    header(&mut report, &command_line, &tracer)?;

    let trip = find_trip(args.trip.as_deref());
    let timing = timing_section(&lab, &tracer, &trip, args.runs, stop)?;
    if stop.load(Ordering::SeqCst) {
        eprintln!("bench: interrupted");
        return Ok(130);
    }
    report.push_str(&timing);
    report.push_str(&line_report(&lab));
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

/// What each delay line of `lab` did so far: frames, lateness, losses (one paragraph each).
pub(crate) fn line_report(lab: &Lab) -> String {
    let mut o = String::new();
    for line in lab.lines() {
        let (ab, ba) = line.stats();
        let c = line.config();
        let _ = writeln!(
            o,
            "Delay line {}-{} ({:?} one way): forwarded {} + {} frames, late median {} / {} µs, \
             p99 {} / {} µs, max {} / {} µs (a->b / b->a), lost {} / {}, overflow {} / {}\n",
            c.a,
            c.b,
            c.delay,
            ab.forwarded,
            ba.forwarded,
            ab.late_us.0,
            ba.late_us.0,
            ab.late_us.1,
            ba.late_us.1,
            ab.late_us.2,
            ba.late_us.2,
            ab.lost,
            ba.lost,
            ab.overflow,
            ba.overflow
        );
    }
    o
}

// ------------------------------------------------------------------ report header

pub(crate) fn header(out: &mut String, command_line: &str, tracer: &Path) -> Result<()> {
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
        "mtr-tiny",
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
pub(crate) fn tool_output(cmd: &mut Command) -> String {
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
pub(crate) struct Run {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) wall: Duration,
}

/// Runs `cmd` to completion, measuring spawn → exit without polling: the exit is observed
/// with `waitid(WEXITED | WNOWAIT)`, then the child is reaped. A watchdog SIGKILLs it after
/// `timeout`; it can only signal a child that has not been reaped yet, so never a reused pid.
pub(crate) fn run_timed(mut cmd: Command, timeout: Duration) -> Result<Run> {
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
pub(crate) fn in_path(prog: &str) -> bool {
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
pub(crate) fn parse_rfc3339_us(s: &str) -> Result<i64> {
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

/// `end - start` of one of our JSON results.
fn start_to_end(v: &Value) -> Result<Duration> {
    let ts = |k: &str| -> Result<i64> {
        let s = v
            .get(k)
            .ok_or_else(|| anyhow!("result has no {k:?}: {v}"))?
            .as_str()
            .ok_or_else(|| anyhow!("{k:?} is not a string"))?;
        parse_rfc3339_us(s).with_context(|| format!("field {k:?}"))
    };
    let (start, end) = (ts("start")?, ts("end")?);
    Ok(Duration::from_micros(
        u64::try_from(end - start).map_err(|_| anyhow!("end before start in {v}"))?,
    ))
}

/// The first answering IPv4 address of each hop of one of our JSON results, in TTL order.
fn first_answers(v: &Value) -> Result<Vec<Option<Ipv4Addr>>> {
    Ok(v.get("hops")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("\"hops\" is missing or not an array: {v}"))?
        .iter()
        .map(|h| {
            h.get("probes").and_then(Value::as_array).and_then(|ps| {
                ps.iter()
                    .find_map(|p| p.get("addr").and_then(Value::as_str))
                    .and_then(|a| a.parse::<Ipv4Addr>().ok())
            })
        })
        .collect())
}

fn parse_our_trace(v: &Value) -> Result<OurTrace> {
    let field = |k: &str| v.get(k).ok_or_else(|| anyhow!("result has no {k:?}: {v}"));
    let first_to_end = start_to_end(v)?;
    let local_port = v
        .pointer("/flow/local/port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| anyhow!("result has no flow.local.port"))?;
    let hops = first_answers(v)?;
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
pub(crate) fn parse_bash_times(s: &str) -> Result<(f64, f64)> {
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
pub(crate) fn parse_time_line(s: &str) -> Result<(f64, f64)> {
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
pub(crate) struct Stats {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) p90: f64,
    pub(crate) max: f64,
}

pub(crate) fn stats(v: &[f64]) -> Option<Stats> {
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    /// `flow`: the live download's own path.
    Ours,
    /// `trace -T` to the server's port: one destination, no flow.
    OursTraceTcp,
    /// `trace -U`.
    OursTraceUdp,
    ScamperAll,
    ScamperFirst,
    Traceroute,
    TracerouteUdp,
    TrippyUdp,
    MtrTcp,
    MtrUdp,
    NetnsExec,
}

impl Tool {
    const ALL: [Tool; 11] = [
        Tool::Ours,
        Tool::OursTraceTcp,
        Tool::OursTraceUdp,
        Tool::ScamperAll,
        Tool::ScamperFirst,
        Tool::Traceroute,
        Tool::TracerouteUdp,
        Tool::TrippyUdp,
        Tool::MtrTcp,
        Tool::MtrUdp,
        Tool::NetnsExec,
    ];

    fn name(self) -> &'static str {
        match self {
            Tool::Ours => "service-traceroute `flow` (ours)",
            Tool::OursTraceTcp => "service-traceroute `trace -T` (ours)",
            Tool::OursTraceUdp => "service-traceroute `trace -U` (ours)",
            Tool::ScamperAll => "scamper, 3 probes/TTL (`-q 3 -Q`)",
            Tool::ScamperFirst => "scamper, first answer per TTL (`-q 3`)",
            Tool::Traceroute => "traceroute -T (`-q 3`, `-N 16`)",
            Tool::TracerouteUdp => "traceroute -U (`-q 3`, `-N 16`)",
            Tool::TrippyUdp => "trippy --udp, shortest round (`-i 0ms -g 10ms`)",
            Tool::MtrTcp => "mtr -T --report, one cycle (`-c 1 -i 0.1 -G 0.1`)",
            Tool::MtrUdp => "mtr -u --report, one cycle (`-c 1 -i 0.1 -G 0.1`)",
            Tool::NetnsExec => "`ip netns exec true` (baseline)",
        }
    }

    /// Ours in the same protocol, for the wall-time ratio of a one-destination tracer.
    fn ours_alike(self) -> Option<Tool> {
        match self {
            Tool::ScamperAll | Tool::ScamperFirst | Tool::Traceroute => Some(Tool::OursTraceTcp),
            Tool::MtrTcp => Some(Tool::OursTraceTcp),
            Tool::TracerouteUdp | Tool::TrippyUdp | Tool::MtrUdp => Some(Tool::OursTraceUdp),
            _ => None,
        }
    }
}

/// The program (empty: ours) and arguments of `tool`; `trip` is trippy's binary.
fn tool_args(tool: Tool, lab: &Lab, trip: &str) -> (String, Vec<String>) {
    let s = lab.server_addr().to_string();
    let port = TIMING_PORT.to_string();
    let v = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (prog, args) = match tool {
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
        Tool::OursTraceTcp => (
            "",
            v(&["trace", "-n", "-T", "-p", &port, "--format", "json", &s]),
        ),
        Tool::OursTraceUdp => ("", v(&["trace", "-n", "-U", "--format", "json", &s])),
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
        Tool::TracerouteUdp => ("traceroute", v(&["-U", "-n", "-q", "3", "-w", "1", &s])),
        Tool::TrippyUdp => (
            trip,
            v(&[
                "-m", "json", "-C", "1", "--udp", "-i", "0ms", "-g", "10ms", &s,
            ]),
        ),
        Tool::MtrTcp => (
            "mtr",
            v(&[
                "-n", "-j", "-c", "1", "-i", "0.1", "-G", "0.1", "-T", "-P", &port, &s,
            ]),
        ),
        Tool::MtrUdp => (
            "mtr",
            v(&["-n", "-j", "-c", "1", "-i", "0.1", "-G", "0.1", "-u", &s]),
        ),
        Tool::NetnsExec => ("true", Vec::new()),
    };
    (prog.to_string(), args)
}

fn timing_section(
    lab: &Lab,
    tracer: &Path,
    trip: &Result<PathBuf, String>,
    runs: usize,
    stop: &AtomicBool,
) -> Result<String> {
    let server = tcp_server(lab, TIMING_PORT, TIMING_RATE)?;
    // Long enough for every run: TIMING_RATE bytes/s for 10 min (it is stopped at the end).
    let dl = tcp_download(lab, TIMING_PORT, 0, TIMING_RATE * 600, false)?;
    let lport = dl.wait_established(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    let truth = lab.expected_path(Proto::Tcp, lport, TIMING_PORT)?;
    let tracer_s = tracer.to_string_lossy().into_owned();
    let trip_s = trip
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "trip".into());

    let tools = Tool::ALL;
    let mut series: Vec<Series> = tools
        .iter()
        .map(|t| {
            let (prog, args) = tool_args(*t, lab, &trip_s);
            let prog = if prog.is_empty() {
                "service-traceroute".to_string()
            } else {
                prog
            };
            let mut line = prog;
            for a in args {
                line.push(' ');
                if a.contains(' ') {
                    line.push_str(&format!("'{a}'"));
                } else {
                    line.push_str(&a);
                }
            }
            Series::new(*t, t.name(), line)
        })
        .collect();
    for (t, s) in tools.iter().zip(series.iter_mut()) {
        if *t == Tool::TrippyUdp {
            if let Err(why) = trip {
                s.skipped = Some(why.clone());
            }
            continue;
        }
        let prog = tool_args(*t, lab, &trip_s).0;
        let package = if prog == "mtr" { "mtr-tiny" } else { &prog };
        if !prog.is_empty() && !in_path(&prog) {
            s.skipped = Some(format!(
                "`{prog}` is not installed (not found in PATH; Debian package `{package}`)"
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
            let (prog, args) = tool_args(*t, lab, &trip_s);
            let prog = if prog.is_empty() { &tracer_s } else { &prog };
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
        Tool::Traceroute | Tool::TracerouteUdp => {
            check_one_path(&parse_traceroute(&r.stdout), lab, truth)
                .with_context(|| format!("traceroute output {:?}", r.stdout))?;
            Ok((None, None, None))
        }
        Tool::OursTraceTcp | Tool::OursTraceUdp => {
            let v: Value = serde_json::from_str(&r.stdout)
                .with_context(|| format!("tracer output is not JSON: {:?}", r.stdout))?;
            let t = parse_our_plain_trace(&v)?;
            check_one_path(&t.hops, lab, truth)?;
            if t.stop_reason != "remote-reached" {
                bail!("trace ended {:?}, not at the destination", t.stop_reason);
            }
            Ok((None, Some(t.first_to_end), Some(t.probes_sent)))
        }
        Tool::TrippyUdp => {
            let (_, d, sent) = parse_trippy(&r.stdout)?;
            let hops: Vec<Option<Ipv4Addr>> = d
                .hops
                .iter()
                .map(|h| {
                    h.iter().find_map(|a| match a {
                        IpAddr::V4(a) => Some(*a),
                        IpAddr::V6(_) => None,
                    })
                })
                .collect();
            check_one_path(&hops, lab, truth)?;
            Ok((None, None, Some(sent)))
        }
        Tool::MtrTcp | Tool::MtrUdp => {
            let (hops, sent) = parse_mtr_json(&r.stdout)?;
            check_one_path(&hops, lab, truth)?;
            Ok((None, None, Some(sent)))
        }
        Tool::NetnsExec => Ok((None, None, None)),
    }
}

/// A one-destination tracer's hops (TTL order, first answer each) against the lab's path:
/// the routers, then the server. Each probe of such a tracer may take its own branch (its
/// own ports), so TTL 3-4 may be any branch's: the branch-independent hops are checked.
fn check_one_path(hops: &[Option<Ipv4Addr>], lab: &Lab, truth: &[Ipv4Addr]) -> Result<()> {
    let mut want: Vec<Option<Ipv4Addr>> = truth.iter().copied().map(Some).collect();
    want.push(Some(lab.server_addr()));
    let fixed = [0, 1, 4, 5];
    if hops.len() != HOPS + 1 || fixed.iter().any(|&i| hops[i] != want[i]) {
        bail!("unexpected path {hops:?} (lab: {want:?})");
    }
    Ok(())
}

/// What our `trace --format json` says of one destination.
struct OurPlainTrace {
    hops: Vec<Option<Ipv4Addr>>,
    first_to_end: Duration,
    probes_sent: u64,
    stop_reason: String,
}

fn parse_our_plain_trace(v: &Value) -> Result<OurPlainTrace> {
    let field = |k: &str| v.get(k).ok_or_else(|| anyhow!("result has no {k:?}: {v}"));
    let first_to_end = start_to_end(v)?;
    let hops = first_answers(v)?;
    Ok(OurPlainTrace {
        hops,
        first_to_end,
        probes_sent: field("probes_sent")?
            .as_u64()
            .ok_or_else(|| anyhow!("\"probes_sent\" is not a number"))?,
        stop_reason: field("stop_reason")?
            .as_str()
            .unwrap_or_default()
            .to_string(),
    })
}

/// mtr's `--json` report: each hop's address (`???`: none) and the probes sent in all.
fn parse_mtr_json(out: &str) -> Result<(Vec<Option<Ipv4Addr>>, u64)> {
    let v: Value = serde_json::from_str(out).context("mtr output is not JSON")?;
    let hubs = v
        .pointer("/report/hubs")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("mtr report without report.hubs"))?;
    let mut hops = Vec::new();
    let mut sent = 0;
    for h in hubs {
        hops.push(
            h.get("host")
                .and_then(Value::as_str)
                .and_then(|a| a.parse().ok()),
        );
        sent += h.get("Snt").and_then(Value::as_u64).unwrap_or(0);
    }
    Ok((hops, sent))
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
    let alike = |t: Tool| series.iter().find(|s| s.tool == t);
    writeln!(
        o,
        "\nRatios of medians, peer / ours: against our `flow` (TTL 1-5 is its whole trace), \
         and the process wall time against our `trace` in the peer's protocol (one \
         destination, no flow to wait for):\n"
    )?;
    writeln!(
        o,
        "| peer | first probe → last reply, TTL 1-5 (vs `flow`) | first probe → last reply, all TTLs (vs `flow`) | process wall time (vs `flow`) | process wall time (vs our `trace`) |"
    )?;
    writeln!(o, "|---|---|---|---|---|")?;
    for s in series.iter().skip(1) {
        if s.skipped.is_some() || matches!(s.tool, Tool::NetnsExec) {
            continue;
        }
        let vs_trace = match s.tool.ours_alike().and_then(alike) {
            Some(t) => ratio(&s.wall, &t.wall),
            None => "n/a".into(),
        };
        writeln!(
            o,
            "| {} | {} | {} | {} | {vs_trace} |",
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
            // The same capture ring for every count, so the RSS difference is the flows'.
            "--capture-buffer",
            "32",
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
        "\nCommand: `/usr/bin/time -f \"%M %e\" bash -c '\"$@\"; times' bash service-traceroute flow --iface eth0 --tcp --remote 198.19.1.2:{LOAD_PORT} --count N --duration 30 --format jsonl --capture-buffer 32`"
    )?;
    Ok(o)
}

// ------------------------------------------------- section 3: many destinations

/// Options of `svctr-lab bench-trace`.
pub(crate) struct TraceBenchArgs {
    /// service-traceroute binary.
    pub(crate) tracer: PathBuf,
    /// Number of destinations (the lab's fan-out).
    pub(crate) targets: usize,
    /// Processes run at once for the tools that trace one destination per process.
    pub(crate) parallel: usize,
    /// Repetitions of every setting (interleaved).
    pub(crate) reps: usize,
    /// trippy's `trip` binary; default: `trip` in $PATH, else `~/.cargo/bin/trip`.
    pub(crate) trip: Option<PathBuf>,
    /// Delay lines (as `up --line`).
    pub(crate) lines: Vec<LineConfig>,
}

/// Inner limit of one run (coreutils `timeout`, which signals the whole process group).
const MANY_TIMEOUT: Duration = Duration::from_secs(300);
/// TTL at which the destinations answer: 5 routers, then the destination.
const DEST_TTL: usize = HOPS + 1;
/// scamper's highest accepted packet rate (`-p`, 1..=10000).
const SCAMPER_MAX_PPS: u32 = 10_000;
/// The shell wrapper that reports the CPU time of everything it ran: bash's `times` prints
/// getrusage(RUSAGE_CHILDREN), which includes every descendant that was waited for.
const TIMES_WRAPPER: &str = r#""$@"; s=$?; times > "$SVCTR_TIMES"; exit $s"#;

/// Runs section 3 on its own (`svctr-lab bench-trace`) and prints its Markdown report.
pub(crate) fn run_trace(args: &TraceBenchArgs, stop: &AtomicBool) -> Result<u8> {
    if !(1..=svctr_lab::MAX_FANOUT).contains(&args.targets) {
        bail!("--targets must be in 1..={}", svctr_lab::MAX_FANOUT);
    }
    if args.parallel == 0 || args.reps == 0 {
        bail!("--parallel and --reps must be at least 1");
    }
    let tracer = match args.tracer.canonicalize() {
        Ok(p) if p.is_file() => p,
        _ => bail!(
            "tracer binary not found: {} (build it first: cargo build --release -p service-traceroute)",
            args.tracer.display()
        ),
    };
    for tool in ["/usr/bin/time", "xargs", "timeout"] {
        if !(Path::new(tool).is_file() || in_path(tool)) {
            bail!("`{tool}` is needed to measure the tools (Debian packages time, findutils, coreutils)");
        }
    }
    let trip = find_trip(args.trip.as_deref());
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let lab = Lab::build(LabConfig {
        fanout: args.targets,
        lines: args.lines.clone(),
        ..LabConfig::default()
    })
    .with_context(|| format!("building a lab with {} destinations", args.targets))?;
    eprintln!(
        "bench-trace: lab {} is up ({} destinations)",
        lab.name(),
        args.targets
    );
    let report = many_section(&lab, &tracer, trip, args, &command_line, stop);
    drop(lab);
    let report = report?;
    if stop.load(Ordering::SeqCst) {
        eprintln!("bench-trace: interrupted");
        return Ok(130);
    }
    print!("{report}");
    Ok(0)
}

/// `trip` as given, else in $PATH, else where `cargo install` puts it.
fn find_trip(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return p
            .canonicalize()
            .map_err(|e| format!("{} not usable: {e}", p.display()));
    }
    if let Some(p) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("trip"))
            .find(|f| f.is_file())
    }) {
        return Ok(p);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    match cargo_home.map(|c| c.join("bin/trip")) {
        Some(p) if p.is_file() => Ok(p),
        _ => Err("`trip` not found (cargo install trippy --locked)".to_string()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ManyTool {
    Ours,
    Scamper,
    Trippy,
    Traceroute,
    Mtr,
}

/// One tool with one setting, and its runs.
struct ManySetting {
    tool: ManyTool,
    name: &'static str,
    setting: String,
    /// Program and arguments; the targets are appended (ours: all of them; per-target
    /// tools: one per process), scamper reads the target file.
    argv: Vec<String>,
    /// One process per destination, `--parallel` at a time.
    per_target: bool,
    skipped: Option<String>,
    runs: Vec<ManyRun>,
    failures: Vec<String>,
}

impl ManySetting {
    fn new(tool: ManyTool, name: &'static str, setting: &str, argv: Vec<String>) -> Self {
        ManySetting {
            tool,
            name,
            setting: setting.to_string(),
            per_target: matches!(
                tool,
                ManyTool::Trippy | ManyTool::Traceroute | ManyTool::Mtr
            ),
            argv,
            skipped: None,
            runs: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// The command as shown in the report (the binary's directory left out).
    fn display(&self, n: usize, parallel: usize) -> String {
        let mut argv = self.argv.clone();
        if let Some(p) = argv.first_mut() {
            if let Some(f) = Path::new(p.as_str()).file_name() {
                *p = f.to_string_lossy().into_owned();
            }
        }
        let quoted: Vec<String> = argv
            .iter()
            .map(|a| {
                if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.clone()
                }
            })
            .collect();
        let line = quoted.join(" ");
        match self.tool {
            ManyTool::Ours => format!("{line} <{n} addresses>"),
            ManyTool::Scamper => line.replace(TARGETS_FILE_MARK, "targets.txt"),
            ManyTool::Trippy | ManyTool::Traceroute | ManyTool::Mtr => format!(
                "xargs -a targets.txt -P {parallel} -n 1 sh -c 'exec {line} \"$0\" > \"$SVCTR_OUT/$0.out\" 2> \"$SVCTR_OUT/$0.err\"'"
            ),
        }
    }
}

/// Placeholder for the target file's path in `argv`.
const TARGETS_FILE_MARK: &str = "@TARGETS@";

/// Measurements of one run of one setting.
#[derive(Debug, Clone, Default)]
struct ManyRun {
    /// Spawn → exit of the whole run (`ip netns exec` included).
    wall_s: f64,
    user_s: f64,
    sys_s: f64,
    /// Largest max RSS of any one process of the run (GNU time `%M`).
    maxrss_kib: f64,
    /// Packets sent by the client's interface during the run: the probes.
    tx_packets: u64,
    /// The tool's own count of probes, when it reports one.
    tool_probes: Option<u64>,
    /// Destinations with a result.
    results: usize,
    /// Destinations whose result has 6 answered TTLs, the 6th from the destination.
    reached: usize,
    /// Of those, TTL 1-5 answered by the routers of one lab branch (no mixed branches).
    complete: usize,
    notes: Vec<String>,
}

impl ManyRun {
    fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }
    fn pps(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.tx_packets as f64 / self.wall_s
        } else {
            0.0
        }
    }
}

/// What one tool reported for one destination: the distinct answering addresses per TTL
/// (index 0 = TTL 1).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct DestResult {
    hops: Vec<BTreeSet<IpAddr>>,
}

impl DestResult {
    fn add(&mut self, ttl: usize, addr: Option<IpAddr>) {
        if ttl == 0 {
            return;
        }
        if self.hops.len() < ttl {
            self.hops.resize_with(ttl, BTreeSet::new);
        }
        if let Some(a) = addr {
            self.hops[ttl - 1].insert(a);
        }
    }

    /// 6 TTLs, each answered, TTL 6 by the destination only.
    pub(crate) fn reached(&self, dst: IpAddr) -> bool {
        self.hops.len() == DEST_TTL
            && self.hops.iter().all(|h| !h.is_empty())
            && self.hops[DEST_TTL - 1] == BTreeSet::from([dst])
    }

    /// [`Self::reached`], and TTL 1-5 answered each by exactly the router of one branch.
    pub(crate) fn complete(&self, dst: IpAddr, lab: &Lab) -> bool {
        self.reached(dst)
            && (1..=lab.branches()).any(|k| {
                lab.branch_path_ip(k, dst.is_ipv6())
                    .iter()
                    .zip(&self.hops)
                    .all(|(want, got)| got.len() == 1 && got.contains(want))
            })
    }
}

/// Our JSON lines: one object per destination.
pub(crate) fn parse_ours_many(out: &str) -> Result<(BTreeMap<IpAddr, DestResult>, u64)> {
    let mut res = BTreeMap::new();
    let mut probes = 0;
    for (i, l) in out.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let v: Value = serde_json::from_str(l)
            .with_context(|| format!("tracer output line {} is not JSON", i + 1))?;
        let dst: IpAddr = v
            .get("destination")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("result {} has no destination address", i + 1))?;
        probes += v.get("probes_sent").and_then(Value::as_u64).unwrap_or(0);
        let mut r = DestResult::default();
        for h in v
            .get("hops")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ttl = h.get("ttl").and_then(Value::as_u64).unwrap_or(0) as usize;
            r.add(ttl, None);
            for p in h
                .get("probes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                r.add(
                    ttl,
                    p.get("addr")
                        .and_then(Value::as_str)
                        .and_then(|a| a.parse().ok()),
                );
            }
        }
        res.insert(dst, r);
    }
    Ok((res, probes))
}

/// scamper's JSON lines: one `trace` object per destination (TTLs without an answer are
/// absent from `hops`).
fn parse_scamper_many(out: &str) -> Result<(BTreeMap<IpAddr, DestResult>, u64)> {
    let mut res = BTreeMap::new();
    let mut probes = 0;
    for l in out.lines() {
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        if v.get("type").and_then(Value::as_str) != Some("trace") {
            continue;
        }
        let dst: IpAddr = v
            .get("dst")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("scamper trace without dst: {l}"))?;
        probes += v.get("probe_count").and_then(Value::as_u64).unwrap_or(0);
        let mut r = DestResult::default();
        for h in v
            .get("hops")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ttl = h.get("probe_ttl").and_then(Value::as_u64).unwrap_or(0) as usize;
            r.add(
                ttl,
                h.get("addr")
                    .and_then(Value::as_str)
                    .and_then(|a| a.parse().ok()),
            );
        }
        res.insert(dst, r);
    }
    Ok((res, probes))
}

/// One trippy `--mode json` report: (its target, its hops, probes sent).
fn parse_trippy(out: &str) -> Result<(IpAddr, DestResult, u64)> {
    let v: Value = serde_json::from_str(out).context("trippy output is not JSON")?;
    let dst: IpAddr = v
        .pointer("/info/target/ip")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("trippy report without info.target.ip"))?;
    let mut r = DestResult::default();
    let mut sent = 0;
    for h in v
        .get("hops")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ttl = h.get("ttl").and_then(Value::as_u64).unwrap_or(0) as usize;
        sent += h.get("sent").and_then(Value::as_u64).unwrap_or(0);
        r.add(ttl, None);
        for host in h
            .get("hosts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            r.add(
                ttl,
                host.get("ip")
                    .and_then(Value::as_str)
                    .and_then(|a| a.parse().ok()),
            );
        }
    }
    Ok((dst, r, sent))
}

/// `s` as one single-quoted POSIX shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The client interface's transmitted-packet counter.
pub(crate) fn client_tx_packets(lab: &Lab) -> Result<u64> {
    let path = format!(
        "/sys/class/net/{}/statistics/tx_packets",
        lab.client_iface()
    );
    let mut cmd = lab.command(lab.client_ns(), "cat");
    cmd.arg(&path);
    let out = svctr_lab::output_with_timeout(&mut cmd, None, Duration::from_secs(10))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("reading {path} in {}", lab.client_ns()))
}

fn many_settings(
    tracer: &Path,
    trip: &Result<PathBuf, String>,
    parallel: usize,
) -> Vec<ManySetting> {
    let s = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let tr = tracer.to_string_lossy().into_owned();
    let ours = |extra: &[&str]| {
        let mut v = s(&[
            &tr,
            "trace",
            "-n",
            "-U",
            "--strategy",
            "paris",
            "-q",
            "1",
            "-w",
            "1",
        ]);
        v.extend(s(extra));
        v.extend(s(&["--format", "jsonl"]));
        v
    };
    let mut v = vec![
        ManySetting::new(
            ManyTool::Ours,
            "service-traceroute (ours)",
            "defaults (`-N 16` in flight per target, `--parallel 1024`, no `--rate`)",
            ours(&[]),
        ),
        ManySetting::new(
            ManyTool::Ours,
            "service-traceroute (ours)",
            "`--rate 10000` (scamper's highest rate)",
            ours(&["--rate", "10000"]),
        ),
        ManySetting::new(
            ManyTool::Ours,
            "service-traceroute (ours)",
            "`-N 1` (one probe in flight per target, like scamper)",
            ours(&["-N", "1"]),
        ),
        ManySetting::new(
            ManyTool::Scamper,
            "scamper",
            "`-p 10000 -w 0` (highest rate, no window limit)",
            s(&[
                "scamper",
                "-O",
                "json",
                "-p",
                &SCAMPER_MAX_PPS.to_string(),
                "-w",
                "0",
                "-c",
                "trace -P udp-paris -q 1 -w 1",
                "-f",
                TARGETS_FILE_MARK,
            ]),
        ),
    ];
    let trip_argv = |extra: &[&str]| {
        let mut a = vec![trip
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "trip".into())];
        a.extend(s(&["-m", "json", "-C", "1", "--udp", "-R", "paris"]));
        a.extend(s(extra));
        a
    };
    let mut t1 = ManySetting::new(
        ManyTool::Trippy,
        "trippy",
        &format!("`-i 0ms -g 10ms` (shortest round), {parallel} processes at once"),
        trip_argv(&["-i", "0ms", "-g", "10ms"]),
    );
    let mut t2 = ManySetting::new(
        ManyTool::Trippy,
        "trippy",
        &format!("default round (`-i 1s -g 100ms`), {parallel} processes at once"),
        trip_argv(&[]),
    );
    if let Err(why) = trip {
        t1.skipped = Some(why.clone());
        t2.skipped = Some(why.clone());
    }
    v.push(t1);
    v.push(t2);
    v.push(ManySetting::new(
        ManyTool::Mtr,
        "mtr",
        &format!("`--report` one cycle (`-c 1 -i 0.1 -G 0.1`), {parallel} processes at once"),
        s(&[
            "mtr", "-n", "-j", "-c", "1", "-i", "0.1", "-G", "0.1", "-u", "-P", "33434",
        ]),
    ));
    v.push(ManySetting::new(
        ManyTool::Traceroute,
        "traceroute",
        &format!("`-U` (not Paris), default `-N 16`, {parallel} processes at once"),
        s(&["traceroute", "-n", "-U", "-q", "1", "-w", "1"]),
    ));
    for st in &mut v {
        if st.skipped.is_none() {
            let prog = st.argv[0].clone();
            if !(Path::new(&prog).is_file() || in_path(&prog)) {
                st.skipped = Some(format!("`{prog}` is not installed"));
            }
        }
    }
    v
}

/// Files of one section-3 session, removed on drop.
struct ManyFiles {
    dir: PathBuf,
    targets: PathBuf,
}

impl Drop for ManyFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn many_section(
    lab: &Lab,
    tracer: &Path,
    trip: Result<PathBuf, String>,
    args: &TraceBenchArgs,
    command_line: &str,
    stop: &AtomicBool,
) -> Result<String> {
    let targets = lab.fanout_targets_v4();
    let dir = std::env::temp_dir().join(format!("svctr-bench-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = ManyFiles {
        targets: dir.join("targets.txt"),
        dir,
    };
    let list: String = targets.iter().map(|t| format!("{t}\n")).collect();
    std::fs::write(&files.targets, list)
        .with_context(|| format!("writing {}", files.targets.display()))?;
    let mut settings = many_settings(tracer, &trip, args.parallel);
    for rep in 1..=args.reps {
        for (idx, s) in settings.iter_mut().enumerate() {
            if s.skipped.is_some() {
                continue;
            }
            if stop.load(Ordering::SeqCst) {
                return Ok(String::new());
            }
            eprintln!(
                "bench-trace: {} [{}] ({rep}/{})",
                s.name, s.setting, args.reps
            );
            // Late replies of the previous run must not land in this one.
            std::thread::sleep(Duration::from_millis(500));
            match many_run(lab, s, idx, &targets, &files, args.parallel, rep) {
                Ok(r) => {
                    eprintln!(
                        "bench-trace:   {:.2} s, {} packets, {}/{} complete",
                        r.wall_s,
                        r.tx_packets,
                        r.complete,
                        targets.len()
                    );
                    s.runs.push(r);
                }
                Err(e) => {
                    eprintln!("bench-trace:   run {rep} failed: {e:#}");
                    s.failures.push(format!("run {rep}: {e:#}"));
                }
            }
        }
    }
    let mut report = many_report(lab, &settings, args, command_line, tracer, &trip)?;
    report.push('\n');
    report.push_str(&line_report(lab));
    Ok(report)
}

fn many_run(
    lab: &Lab,
    s: &ManySetting,
    idx: usize,
    targets: &[Ipv4Addr],
    files: &ManyFiles,
    parallel: usize,
    rep: usize,
) -> Result<ManyRun> {
    let tag = format!("setting{idx}-run{rep}");
    let time_file = files.dir.join(format!("{tag}.time"));
    let times_file = files.dir.join(format!("{tag}.times"));
    let out_dir = files.dir.join(format!("{tag}.out"));
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut cmd = lab.command(lab.client_ns(), "/usr/bin/time");
    cmd.env("SVCTR_TIMES", &times_file)
        .env("SVCTR_OUT", &out_dir)
        .arg("-o")
        .arg(&time_file)
        .args(["-f", "%M %e", "timeout", "-k", "5"])
        .arg(MANY_TIMEOUT.as_secs().to_string())
        .args(["bash", "-c", TIMES_WRAPPER, "bash"]);
    let targets_file = files.targets.to_string_lossy().into_owned();
    if s.per_target {
        let inner: Vec<String> = s.argv.iter().map(|a| sh_quote(a)).collect();
        cmd.args([
            "xargs",
            "-a",
            &targets_file,
            "-P",
            &parallel.to_string(),
            "-n",
            "1",
        ])
        .args(["sh", "-c"])
        .arg(format!(
            r#"exec {} "$0" > "$SVCTR_OUT/$0.out" 2> "$SVCTR_OUT/$0.err""#,
            inner.join(" ")
        ));
    } else {
        cmd.args(s.argv.iter().map(|a| {
            if a == TARGETS_FILE_MARK {
                targets_file.clone()
            } else {
                a.clone()
            }
        }));
        if s.tool == ManyTool::Ours {
            cmd.args(targets.iter().map(|t| t.to_string()));
        }
    }
    let tx0 = client_tx_packets(lab)?;
    let r = run_timed(cmd, MANY_TIMEOUT + Duration::from_secs(30));
    let tx1 = client_tx_packets(lab)?;
    let time_out = std::fs::read_to_string(&time_file)
        .with_context(|| format!("reading GNU time's output {}", time_file.display()));
    let times_out = std::fs::read_to_string(&times_file)
        .with_context(|| format!("reading bash times' output {}", times_file.display()));
    let _ = std::fs::remove_file(&time_file);
    let _ = std::fs::remove_file(&times_file);
    let r = r?;
    let mut notes = Vec::new();
    if !r.status.success() {
        if s.per_target {
            // xargs exits 123 when some invocation failed; the results tell which.
            notes.push(format!("exit status {}", r.status));
        } else {
            let _ = std::fs::remove_dir_all(&out_dir);
            bail!("exited with {}: {}", r.status, r.stderr.trim());
        }
    }
    let (maxrss_kib, _) = parse_time_line(&time_out?)?;
    let (user_ms, sys_ms) = parse_bash_times(&times_out?)?;
    let (results, tool_probes) = match s.tool {
        ManyTool::Ours => {
            let (m, p) = parse_ours_many(&r.stdout)?;
            (m, Some(p))
        }
        ManyTool::Scamper => {
            let (m, p) = parse_scamper_many(&r.stdout)?;
            (m, Some(p))
        }
        ManyTool::Trippy | ManyTool::Traceroute | ManyTool::Mtr => {
            let mut m = BTreeMap::new();
            let mut probes = 0;
            let (mut unreadable, mut stderr_files, mut first_err) = (0, 0, None);
            for t in targets {
                let out = std::fs::read_to_string(out_dir.join(format!("{t}.out")));
                let err =
                    std::fs::read_to_string(out_dir.join(format!("{t}.err"))).unwrap_or_default();
                if !err.trim().is_empty() {
                    stderr_files += 1;
                    first_err
                        .get_or_insert_with(|| err.lines().next().unwrap_or_default().to_string());
                }
                let Ok(out) = out else {
                    unreadable += 1;
                    continue;
                };
                if s.tool == ManyTool::Trippy {
                    match parse_trippy(&out) {
                        Ok((dst, d, sent)) => {
                            probes += sent;
                            m.insert(dst, d);
                        }
                        Err(_) => unreadable += 1,
                    }
                } else if s.tool == ManyTool::Mtr {
                    match parse_mtr_json(&out) {
                        Ok((hops, sent)) => {
                            probes += sent;
                            let mut d = DestResult::default();
                            for (i, h) in hops.into_iter().enumerate() {
                                d.add(i + 1, h.map(IpAddr::V4));
                            }
                            m.insert(IpAddr::V4(*t), d);
                        }
                        Err(_) => unreadable += 1,
                    }
                } else {
                    let mut d = DestResult::default();
                    for (i, h) in parse_traceroute_ip(&out).into_iter().enumerate() {
                        d.add(i + 1, h);
                    }
                    if d.hops.is_empty() {
                        unreadable += 1;
                    } else {
                        m.insert(IpAddr::V4(*t), d);
                    }
                }
            }
            if unreadable > 0 {
                notes.push(format!(
                    "{unreadable} destinations without a readable result"
                ));
            }
            if let Some(e) = first_err {
                notes.push(format!(
                    "{stderr_files} processes wrote to stderr, e.g. {e:?}"
                ));
            }
            (
                m,
                matches!(s.tool, ManyTool::Trippy | ManyTool::Mtr).then_some(probes),
            )
        }
    };
    let _ = std::fs::remove_dir_all(&out_dir);
    for l in r.stderr.lines() {
        // e.g. "service-traceroute: warning: the capture dropped 17021 packets; ..."
        if l.contains("dropped") || l.contains("error") {
            notes.push(format!("stderr: {}", l.trim()));
        }
    }
    let (mut reached, mut complete) = (0, 0);
    for t in targets {
        let dst = IpAddr::V4(*t);
        if let Some(d) = results.get(&dst) {
            if d.reached(dst) {
                reached += 1;
                if d.complete(dst, lab) {
                    complete += 1;
                }
            }
        }
    }
    Ok(ManyRun {
        wall_s: r.wall.as_secs_f64(),
        user_s: user_ms / 1000.0,
        sys_s: sys_ms / 1000.0,
        maxrss_kib,
        tx_packets: tx1.saturating_sub(tx0),
        tool_probes,
        results: targets
            .iter()
            .filter(|t| results.contains_key(&IpAddr::V4(**t)))
            .count(),
        reached,
        complete,
        notes,
    })
}

/// Median of `f` over the runs.
fn median_of(runs: &[ManyRun], f: impl Fn(&ManyRun) -> f64) -> Option<f64> {
    stats(&runs.iter().map(f).collect::<Vec<_>>()).map(|s| s.median)
}

/// "x" or "min-max" of a count over the runs.
fn range_of(runs: &[ManyRun], f: impl Fn(&ManyRun) -> u64) -> String {
    let v: Vec<u64> = runs.iter().map(f).collect();
    match (v.iter().min(), v.iter().max()) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}-{b}"),
        _ => "n/a".into(),
    }
}

fn many_report(
    lab: &Lab,
    settings: &[ManySetting],
    args: &TraceBenchArgs,
    command_line: &str,
    tracer: &Path,
    trip: &Result<PathBuf, String>,
) -> Result<String> {
    let n = lab.fanout_targets_v4().len();
    let targets = lab.fanout_targets_v4();
    let (first, last) = (targets[0], targets[n - 1]);
    let mut o = String::new();
    writeln!(o, "\n## 3. Trace {n} destinations\n")?;
    writeln!(o, "* command: `{command_line}`")?;
    writeln!(
        o,
        "* date: {}",
        tool_output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S UTC"]))
    )?;
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    writeln!(
        o,
        "* machine: {nproc} CPUs, kernel {kernel}; lab with fan-out {n}: destinations {first}..{last} on the server, 6 hops away (5 routers, then the destination)"
    )?;
    let trip_version = match trip {
        Ok(p) => tool_output(Command::new(p).arg("--version")),
        Err(e) => format!("trippy: {e}"),
    };
    let packages = tool_output(Command::new("dpkg-query").args([
        "-W",
        "-f",
        "${Package} ${Version}, ",
        "scamper",
        "traceroute",
    ]));
    writeln!(
        o,
        "* versions: {}; {}; {trip_version}",
        tool_output(Command::new(tracer).arg("--version")),
        packages.trim_end_matches([',', ' '])
    )?;
    writeln!(
        o,
        "* runs per setting: {}, settings interleaved; the one-destination-per-process tools run {} processes at once (`xargs -P {}`)\n",
        args.reps, args.parallel, args.parallel
    )?;
    writeln!(
        o,
        "*Complete*: TTL 1-5 answered by the 5 routers of one ECMP branch and TTL 6 by the destination, nothing else. \
         *Reached*: 6 answered TTLs, the 6th by the destination (routers of different branches allowed). \
         *Packets out*: the client interface's tx counter over the run (all probes, whatever the tool reports). \
         *Wall*: spawn → exit of the run (`ip netns exec` included). CPU: user + sys of all processes of the run (bash `times`). \
         Max RSS: the largest single process (GNU time `%M`); with per-destination processes, up to {} of them are alive at once. \
         Values are medians over the runs; counts show min-max when runs differ.\n",
        args.parallel
    )?;
    writeln!(
        o,
        "| tool | setting | complete / {n} | reached / {n} | wall s, median (min-max) | probes (tool's count) | packets out | probes/s (packets out / wall) | CPU s | max RSS MiB |"
    )?;
    writeln!(o, "|---|---|---|---|---|---|---|---|---|---|")?;
    for s in settings {
        if let Some(why) = &s.skipped {
            writeln!(
                o,
                "| {} | {} | not run: {why} | | | | | | | |",
                s.name, s.setting
            )?;
            continue;
        }
        if s.runs.is_empty() {
            writeln!(
                o,
                "| {} | {} | every run failed | | | | | | | |",
                s.name, s.setting
            )?;
            continue;
        }
        let r = &s.runs;
        let walls: Vec<f64> = r.iter().map(|x| x.wall_s).collect();
        let w = stats(&walls).ok_or_else(|| anyhow!("no runs"))?;
        writeln!(
            o,
            "| {} | {} | {} | {} | {:.2} ({:.2}-{:.2}) | {} | {} | {:.0} | {:.2} | {:.1} |",
            s.name,
            s.setting,
            range_of(r, |x| x.complete as u64),
            range_of(r, |x| x.reached as u64),
            w.median,
            w.min,
            w.max,
            if r.iter().all(|x| x.tool_probes.is_some()) {
                range_of(r, |x| x.tool_probes.unwrap_or(0))
            } else {
                "n/a".into()
            },
            range_of(r, |x| x.tx_packets),
            median_of(r, ManyRun::pps).unwrap_or(0.0),
            median_of(r, ManyRun::cpu_s).unwrap_or(0.0),
            median_of(r, |x| x.maxrss_kib).unwrap_or(0.0) / 1024.0,
        )?;
    }
    if let Some(ours) = settings.first().filter(|s| !s.runs.is_empty()) {
        let ow = median_of(&ours.runs, |x| x.wall_s).unwrap_or(0.0);
        let oc = median_of(&ours.runs, ManyRun::cpu_s).unwrap_or(0.0);
        let op = median_of(&ours.runs, ManyRun::pps).unwrap_or(0.0);
        writeln!(
            o,
            "\nRatios of medians, setting / ours with defaults (wall and CPU: > 1 means slower or costlier than ours; probes/s: < 1 means a lower send rate):\n"
        )?;
        writeln!(o, "| tool | setting | wall | CPU | probes/s |")?;
        writeln!(o, "|---|---|---|---|---|")?;
        let x = |a: Option<f64>, b: f64| match a {
            Some(a) if b > 0.0 && a / b < 0.095 => format!("{:.3}×", a / b),
            Some(a) if b > 0.0 => format!("{:.1}×", a / b),
            _ => "n/a".into(),
        };
        for s in settings.iter().skip(1).filter(|s| !s.runs.is_empty()) {
            writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                s.name,
                s.setting,
                x(median_of(&s.runs, |r| r.wall_s), ow),
                x(median_of(&s.runs, ManyRun::cpu_s), oc),
                x(median_of(&s.runs, ManyRun::pps), op),
            )?;
        }
    }
    writeln!(o, "\nAll runs:\n")?;
    writeln!(
        o,
        "| tool | setting | run | results | complete | reached | wall s | probes (tool) | packets out | user s | sys s | max RSS MiB | notes |"
    )?;
    writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for s in settings.iter().filter(|s| s.skipped.is_none()) {
        for (i, r) in s.runs.iter().enumerate() {
            writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {:.3} | {} | {} | {:.2} | {:.2} | {:.1} | {} |",
                s.name,
                s.setting,
                i + 1,
                r.results,
                r.complete,
                r.reached,
                r.wall_s,
                r.tool_probes.map_or("n/a".into(), |p| p.to_string()),
                r.tx_packets,
                r.user_s,
                r.sys_s,
                r.maxrss_kib / 1024.0,
                if r.notes.is_empty() {
                    "-".to_string()
                } else {
                    r.notes.join("; ").replace('|', "\\|")
                }
            )?;
        }
        for f in &s.failures {
            writeln!(
                o,
                "| {} | {} | failed | {} | | | | | | | | | |",
                s.name,
                s.setting,
                f.replace('|', "\\|")
            )?;
        }
    }
    writeln!(
        o,
        "\nCommands (in the client namespace, each under `/usr/bin/time -f \"%M %e\" timeout -k 5 {} bash -c '\"$@\"; times' bash ...`):\n",
        MANY_TIMEOUT.as_secs()
    )?;
    for s in settings.iter().filter(|s| s.skipped.is_none()) {
        writeln!(
            o,
            "* {} [{}]: `{}`",
            s.name,
            s.setting,
            s.display(n, args.parallel)
        )?;
    }
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
    fn many_destination_parsers() {
        let d: IpAddr = "198.19.128.7".parse().unwrap();
        let ours = r#"{"destination":"198.19.128.7","stop_reason":"remote-reached","hops":[
            {"ttl":1,"probes":[{"addr":"198.18.1.1","rtt_ms":0.02}]},
            {"ttl":2,"probes":[{"addr":"198.18.2.2","rtt_ms":0.02}]},
            {"ttl":3,"probes":[{"addr":"198.18.12.2","rtt_ms":0.02}]},
            {"ttl":4,"probes":[{"addr":"198.19.12.2","rtt_ms":0.02}]},
            {"ttl":5,"probes":[{"addr":"198.19.2.2","rtt_ms":0.02}]},
            {"ttl":6,"probes":[{"addr":"198.19.128.7","rtt_ms":0.02}]}],
            "probes_sent":16,"replies":6}"#
            .replace('\n', "");
        let (m, p) = parse_ours_many(&format!("{ours}\n\n")).unwrap();
        assert_eq!(p, 16);
        assert!(m[&d].reached(d));
        assert!(!m[&d].reached("198.19.128.8".parse().unwrap()));
        assert!(parse_ours_many("not json").is_err());

        let sc = r#"{"type":"cycle-start"}
{"type":"trace","dst":"198.19.128.7","probe_count":6,"hops":[{"addr":"198.18.1.1","probe_ttl":1},{"addr":"198.19.128.7","probe_ttl":6}]}"#;
        let (m, p) = parse_scamper_many(sc).unwrap();
        assert_eq!(p, 6);
        // TTL 2-5 did not answer: not reached.
        assert_eq!(m[&d].hops.len(), 6);
        assert!(m[&d].hops[1].is_empty());
        assert!(!m[&d].reached(d));

        let trip = r#"{"info":{"target":{"ip":"198.19.128.7","hostname":"x"}},"hops":[
            {"ttl":1,"hosts":[{"ip":"198.18.1.1"}],"sent":1},
            {"ttl":2,"hosts":[],"sent":2},
            {"ttl":3,"hosts":[{"ip":"198.18.11.2"},{"ip":"198.18.12.2"}],"sent":1}]}"#;
        let (dst, r, sent) = parse_trippy(trip).unwrap();
        assert_eq!((dst, sent), (d, 4));
        assert_eq!(r.hops.len(), 3);
        assert!(r.hops[1].is_empty());
        assert_eq!(r.hops[2].len(), 2);
        assert!(parse_trippy("{}").is_err());
        assert_eq!(sh_quote("a'b c"), r"'a'\''b c'");
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

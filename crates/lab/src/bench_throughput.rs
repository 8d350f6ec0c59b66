//! `svctr-lab bench-throughput`: how close `trace` of many destinations comes to the machine's
//! own limit of sending the same probes.
//!
//! The lab's IPv4 fan-out (one AnyIP route for 198.19.128.0/17 on the server: up to 32,767
//! destinations, each 6 hops away, answering UDP probes with port unreachable; see
//! `LabConfig::fanout_v4_only`). For each number of destinations, interleaved `--reps` times:
//!
//! * **the raw send limit**: `svctr-lab blast`, in the client namespace, sends the probes a
//!   complete UDP Paris trace of those destinations needs, TTL 1..=6 of each (one probe a
//!   TTL, 30-byte IPv4/UDP packets like ours, one source port), over one raw socket with
//!   `sendmmsg(2)` batches of 64, as fast as the kernel takes them, and reads no reply: the
//!   most such probes a second one process puts through this machine and lab (its send loop
//!   timed, packets built before);
//! * **ours**: `service-traceroute trace -n -U --strategy paris -q 1 -w 1 --format jsonl
//!   <addresses>` with no rate limit, replies over raw sockets (`--receive raw`) and over a
//!   capture (`--receive pcap`). Its rate is its probes (`probes_sent`, summed) over its
//!   whole process wall time, spawn to exit (start-up, every reply read, the results
//!   written); its results are checked: every destination *complete* (TTL 1-5 each answered
//!   by the router of one ECMP branch, TTL 6 by the destination). If a run is not complete,
//!   it is run again with `--rate` at 80 % of what it reached, up to three times: the
//!   highest rate with complete results is what is reported.
//!
//! Every send in the lab runs the whole path's forwarding (five routers' namespaces) and the
//! destinations' and routers' ICMP in the sender's own system call (veth hands packets over
//! inside the sender's softirq), so both measure the same machine work per probe; ours also
//! reads every reply and its own probes' captures.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use svctr_lab::{output_with_timeout, Lab, LabConfig, LineConfig, MAX_FANOUT};

use crate::bench::{header, parse_ours_many, stats};

/// Probes per destination of the raw loop: TTL 1..=6, what a complete trace of a lab
/// destination needs (five routers, then the destination).
const BLAST_TTLS: u8 = 6;
/// `sendmmsg` batch of the raw loop.
const BATCH: usize = 64;
/// Kill a run that takes longer.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Options of `svctr-lab bench-throughput`.
pub(crate) struct ThroughputArgs {
    pub(crate) tracer: PathBuf,
    /// Numbers of destinations, each measured.
    pub(crate) targets: Vec<usize>,
    pub(crate) reps: usize,
    /// Delay lines (as `up --line`).
    pub(crate) lines: Vec<LineConfig>,
}

/// One measured run.
#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    probes: u64,
    secs: f64,
}

impl Rate {
    fn pps(&self) -> f64 {
        if self.secs > 0.0 {
            self.probes as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// One run of ours.
#[derive(Debug, Clone)]
struct OursRun {
    rate: Rate,
    /// `--rate` given (0: none).
    limit: u32,
    complete: usize,
    reached: usize,
    targets: usize,
    /// The tracer warned that the kernel dropped packets.
    drops: bool,
}

pub(crate) fn run(args: &ThroughputArgs, stop: &AtomicBool) -> Result<u8> {
    let max = args.targets.iter().copied().max().unwrap_or(0);
    if max == 0 || max > MAX_FANOUT || args.targets.contains(&0) {
        bail!("--targets wants numbers in 1..={MAX_FANOUT}");
    }
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let tracer = args
        .tracer
        .canonicalize()
        .ok()
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "tracer binary not found: {} (cargo build --release -p service-traceroute)",
                args.tracer.display()
            )
        })?;
    let me = std::env::current_exe().context("this program's path")?;
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let lab = Lab::build(LabConfig {
        fanout: max,
        fanout_v4_only: true,
        lines: args.lines.clone(),
        ..LabConfig::default()
    })?;
    eprintln!(
        "bench-throughput: lab {} is up ({max} destinations)",
        lab.name()
    );
    let mut report = String::new();
    header(&mut report, &command_line, &tracer)?;
    writeln!(
        report,
        "\n## Throughput: `trace` of many destinations against the raw send limit\n"
    )?;
    let modes = ["raw", "pcap"];
    let mut rows = Vec::new();
    for &n in &args.targets {
        let dsts: Vec<Ipv4Addr> = lab.fanout_targets_v4().into_iter().take(n).collect();
        let mut raw = Vec::new();
        let mut ours: Vec<Vec<OursRun>> = vec![Vec::new(); modes.len()];
        for rep in 1..=args.reps {
            if stop.load(Ordering::SeqCst) {
                return Ok(130);
            }
            eprintln!(
                "bench-throughput: {n} destinations, run {rep}/{}",
                args.reps
            );
            raw.push(blast_run(&lab, &me, &dsts)?);
            for (m, runs) in modes.iter().zip(ours.iter_mut()) {
                let mut limit = 0u32;
                for _attempt in 0..4 {
                    let r = ours_run(&lab, &tracer, m, &dsts, limit)?;
                    let done = r.complete == r.targets;
                    let next = (r.rate.pps() * 0.8) as u32;
                    runs.push(r);
                    if done || next == 0 {
                        break;
                    }
                    limit = next;
                }
            }
        }
        rows.push((n, raw, ours));
    }
    writeln!(
        report,
        "Rates in probes/s, median (min / p90 / max) over {} runs; ours over its whole process \
         (spawn to exit), the raw loop over its send loop. *Complete*: destinations with every \
         TTL 1-5 answered by one ECMP branch's routers and TTL 6 by the destination.\n",
        args.reps
    )?;
    writeln!(
        report,
        "| destinations | raw send limit (`sendmmsg` loop, TTL 1-6) | ours | replies by | ours / raw | probes per destination | complete runs | runs not complete (rate, complete destinations) |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|")?;
    for (n, raw, ours) in &rows {
        let raw_pps: Vec<f64> = raw.iter().map(Rate::pps).collect();
        for (m, runs) in modes.iter().zip(ours) {
            let good: Vec<&OursRun> = runs.iter().filter(|r| r.complete == r.targets).collect();
            let good_pps: Vec<f64> = good.iter().map(|r| r.rate.pps()).collect();
            let share = match (stats(&good_pps), stats(&raw_pps)) {
                (Some(o), Some(r)) if r.median > 0.0 => {
                    format!("**{:.2}×**", o.median / r.median)
                }
                _ => "n/a".into(),
            };
            let per_dest: Vec<f64> = good
                .iter()
                .map(|r| r.rate.probes as f64 / r.targets as f64)
                .collect();
            let bad: Vec<String> = runs
                .iter()
                .filter(|r| r.complete != r.targets)
                .map(|r| {
                    format!(
                        "{:.0}{} ({}/{}, reached {}{})",
                        r.rate.pps(),
                        if r.limit > 0 {
                            format!(" at `--rate {}`", r.limit)
                        } else {
                            String::new()
                        },
                        r.complete,
                        r.targets,
                        r.reached,
                        if r.drops { ", kernel drops" } else { "" }
                    )
                })
                .collect();
            let limits: Vec<String> = good
                .iter()
                .map(|r| {
                    if r.limit == 0 {
                        "no limit".to_string()
                    } else {
                        format!("`--rate {}`", r.limit)
                    }
                })
                .collect();
            writeln!(
                report,
                "| {n} | {} | {}{} | `--receive {m}` | {share} | {} | {}/{} | {} |",
                fmt_rate(&raw_pps),
                fmt_rate(&good_pps),
                if limits.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", dedup(limits).join(", "))
                },
                stats(&per_dest).map_or("n/a".into(), |s| format!("{:.2}", s.median)),
                good.len(),
                args.reps,
                if bad.is_empty() {
                    "none".to_string()
                } else {
                    bad.join("; ")
                }
            )?;
        }
    }
    writeln!(
        report,
        "\nCommands (in the client namespace): raw: `svctr-lab blast --first {} --count N \
         --ttls {BLAST_TTLS}`; ours: `service-traceroute trace -n -U --strategy paris -q 1 \
         -w 1 --format jsonl --receive raw|pcap <N addresses>`.",
        svctr_lab::plan::fanout_v4(1)
    )?;
    report.push('\n');
    report.push_str(&crate::bench::line_report(&lab));
    drop(lab);
    print!("{report}");
    Ok(0)
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

fn fmt_rate(v: &[f64]) -> String {
    match stats(v) {
        Some(s) => format!(
            "{:.0} ({:.0} / {:.0} / {:.0})",
            s.median, s.min, s.p90, s.max
        ),
        None => "n/a".into(),
    }
}

/// The raw loop over `dsts`, in the client namespace.
fn blast_run(lab: &Lab, me: &std::path::Path, dsts: &[Ipv4Addr]) -> Result<Rate> {
    let mut cmd = lab.command(lab.client_ns(), &me.to_string_lossy());
    cmd.args([
        "blast",
        "--first",
        &dsts[0].to_string(),
        "--count",
        &dsts.len().to_string(),
        "--ttls",
        &BLAST_TTLS.to_string(),
    ]);
    let out = output_with_timeout(&mut cmd, None, RUN_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "blast failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    parse_blast(&text).with_context(|| format!("blast output {text:?}"))
}

/// `sent P probes in S s` → the rate.
fn parse_blast(text: &str) -> Result<Rate> {
    let mut w = text.split_whitespace();
    match (w.next(), w.next(), w.next(), w.next(), w.next()) {
        (Some("sent"), Some(p), Some("probes"), Some("in"), Some(s)) => Ok(Rate {
            probes: p.parse()?,
            secs: s.parse()?,
        }),
        _ => bail!("not `sent P probes in S s`"),
    }
}

/// Ours over `dsts`, with `--rate limit` if not 0.
fn ours_run(
    lab: &Lab,
    tracer: &std::path::Path,
    receive: &str,
    dsts: &[Ipv4Addr],
    limit: u32,
) -> Result<OursRun> {
    let mut cmd = lab.command(lab.client_ns(), &tracer.to_string_lossy());
    cmd.args([
        "trace",
        "-n",
        "-U",
        "--strategy",
        "paris",
        "-q",
        "1",
        "-w",
        "1",
        "--format",
        "jsonl",
        "--receive",
        receive,
    ]);
    if limit > 0 {
        cmd.args(["--rate", &limit.to_string()]);
    }
    cmd.args(dsts.iter().map(ToString::to_string));
    let started = Instant::now();
    let out = output_with_timeout(&mut cmd, None, RUN_TIMEOUT)?;
    let wall = started.elapsed();
    if !out.status.success() {
        bail!(
            "tracer failed after {wall:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut r = check_ours(&String::from_utf8_lossy(&out.stdout), lab, dsts)?;
    r.limit = limit;
    r.rate.secs = wall.as_secs_f64();
    r.drops = String::from_utf8_lossy(&out.stderr).contains("dropped");
    Ok(r)
}

/// Our JSON lines: the probes sent and how many destinations are complete (section 3's
/// parser and criteria).
fn check_ours(out: &str, lab: &Lab, dsts: &[Ipv4Addr]) -> Result<OursRun> {
    let (results, probes) = parse_ours_many(out)?;
    if results.len() != dsts.len() {
        bail!("{} results for {} destinations", results.len(), dsts.len());
    }
    Ok(OursRun {
        rate: Rate { probes, secs: 0.0 },
        limit: 0,
        complete: results.iter().filter(|(d, r)| r.complete(**d, lab)).count(),
        reached: results.iter().filter(|(d, r)| r.reached(**d)).count(),
        targets: dsts.len(),
        drops: false,
    })
}

/// `svctr-lab blast`: the raw loop (see the module doc). Prints `sent P probes in S s`.
pub(crate) fn blast(first: Ipv4Addr, count: usize, ttls: u8) -> Result<()> {
    use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrIn};
    use socket2::{Domain, Protocol, Socket, Type};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    if count == 0 || ttls == 0 {
        bail!("--count and --ttls must be at least 1");
    }
    // A lab tool: it sends only to the benchmarking range (RFC 2544), never elsewhere.
    let last = u32::from(first).checked_add(count as u32 - 1);
    let lab_range = |a: u32| (a >> 17) == (u32::from(Ipv4Addr::new(198, 18, 0, 0)) >> 17);
    if !lab_range(u32::from(first)) || !last.is_some_and(lab_range) {
        bail!("blast sends only to 198.18.0.0/15 (the lab's addresses)");
    }
    // This host's address toward the destinations (a connected UDP socket sends nothing).
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")?;
    probe.connect((first, 33434))?;
    let src = match probe.local_addr()?.ip() {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => bail!("no IPv4 source address"),
    };
    let sport = probe.local_addr()?.port();
    let sock = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .context("raw socket (root needed)")?;
    // Every probe built first: the loop below only sends.
    let mut packets: Vec<Vec<u8>> = Vec::with_capacity(count * usize::from(ttls));
    let mut addrs: Vec<Option<SockaddrIn>> = Vec::with_capacity(packets.capacity());
    for i in 0..count {
        let dst = Ipv4Addr::from(u32::from(first).wrapping_add(i as u32));
        for ttl in 1..=ttls {
            let mut b = Vec::with_capacity(32);
            etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), ttl)
                .udp(sport, 33434)
                .write(&mut b, &[0, ttl])
                .context("building a probe")?;
            packets.push(b);
            addrs.push(Some(SockaddrIn::from(std::net::SocketAddrV4::new(dst, 0))));
        }
    }
    let slices: Vec<[IoSlice<'_>; 1]> = packets.iter().map(|p| [IoSlice::new(p)]).collect();
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
    let started = Instant::now();
    let mut sent = 0usize;
    let mut failed = 0usize;
    while sent + failed < slices.len() {
        let end = (sent + failed + BATCH).min(slices.len());
        let at = sent + failed;
        match sendmmsg(
            sock.as_raw_fd(),
            &mut headers,
            &slices[at..end],
            &addrs[at..end],
            [],
            MsgFlags::empty(),
        ) {
            Ok(r) => {
                let n = r.count();
                if n == 0 {
                    failed += 1;
                }
                sent += n;
            }
            // A full device queue: skip that probe, as a tracer would count it lost.
            Err(nix::Error::ENOBUFS) | Err(nix::Error::EAGAIN) => failed += 1,
            Err(e) => return Err(e).context("sendmmsg"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("sent {sent} probes in {secs:.6} s ({failed} not sent)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blast_output() {
        let r = parse_blast("sent 16000 probes in 0.250000 s (0 not sent)\n").unwrap();
        assert_eq!(r.probes, 16000);
        assert!((r.pps() - 64000.0).abs() < 1e-6);
        assert!(parse_blast("nothing").is_err());
    }
}

//! `svctr-lab bench-reverse`: reverse traceroute, ours beside the reference implementation
//! (HSAnet/reverse-traceroute) when its binaries are given, in one run.
//!
//! # Method
//!
//! **7. Reverse traceroute** (`bench-reverse`). The default lab (3 branches), IPv4.
//!
//! * **A reverse trace of the lab's path.** `--reps` runs per client × server pair,
//!   interleaved: ours, `service-traceroute reverse -U --flow 4000 --format json S`; the
//!   reference client (`--ref-client`), `augsburg-traceroute -n -4 -o OUT -f dot reverse udp
//!   singlepath --flow 4000 S` (its defaults: 3 probes per hop, 0.1 s between packets, 2 s
//!   wait). Per run: wall time (spawn → exit), requests (code-1 echo requests from the client,
//!   counted on r1), and whether the trace reached the client.
//! * **The server: sessions per second and memory per session, up to 50,000 open at once.**
//!   r4 drops every probe (UDP from port 1021), so no session is answered and each stays open
//!   for the 30 s timeout. The client's raw socket sends 50,000 requests (TTL 64) from 10,000
//!   spoofed sources as fast as it can; r4 counts the probes that leave the server (one per
//!   session opened) and the time from the first to the last. Ours runs with rate limits far
//!   above the flood (the limits are what section 7's lab test checks, not what is measured
//!   here) and `-n 50000`; its memory per session is the growth of its resident memory from
//!   idle to 50,000 open, divided by 50,000. The reference server (`--ref-server`, the
//!   directory of `augsburg-traceroute-server-v4`) runs with `-n 50000 -t 30000000000`; its
//!   sessions live in a BPF hash map, preallocated, whose size (`bpftool map show`:
//!   `memlock`) divided by its entries is its memory per session.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use svctr_lab::{Lab, LabConfig};

use crate::bench::run_timed;

/// The arguments of `bench-reverse`.
pub(crate) struct ReverseArgs {
    pub(crate) tracer: PathBuf,
    pub(crate) reps: usize,
    /// The directory holding `augsburg-traceroute-server-v4`.
    pub(crate) ref_server: Option<PathBuf>,
    /// The reference client's `augsburg-traceroute` executable.
    pub(crate) ref_client: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Ours,
    Reference,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Ours,
    Reference,
}

/// A running server in the server's namespace, killed on drop.
struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(lab: &Lab, which: Server, args: &ReverseArgs, extra: &[&str]) -> Result<Running> {
    let mut c = match (which, &args.ref_server) {
        (Server::Ours, _) => {
            let mut c = lab.command(lab.server_ns(), &args.tracer.to_string_lossy());
            c.args(["reverse-server", "--iface", lab.server_iface()]);
            c.args(extra);
            c
        }
        (Server::Reference, Some(dir)) => {
            let bin = dir.join("augsburg-traceroute-server-v4");
            let mut c = lab.command(lab.server_ns(), &bin.to_string_lossy());
            c.args(extra);
            c.arg(lab.server_iface());
            c
        }
        (Server::Reference, None) => bail!("no reference server given"),
    };
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = c.spawn().context("starting the server")?;
    let running = Running { child };
    // Both print their start-up line before serving; the capture and the tc hook are in
    // place within a few hundred ms on this machine.
    std::thread::sleep(Duration::from_millis(1500));
    Ok(running)
}

struct TraceSample {
    wall: f64,
    requests: u64,
    reached: bool,
}

fn one_trace(lab: &Lab, client: Client, args: &ReverseArgs, out_dir: &Path) -> Result<TraceSample> {
    let server = lab.server_addr().to_string();
    let cmd = match (client, &args.ref_client) {
        (Client::Ours, _) => {
            let mut c = lab.command(lab.client_ns(), &args.tracer.to_string_lossy());
            c.args([
                "reverse", "-U", "--flow", "4000", "--format", "json", &server,
            ]);
            c
        }
        (Client::Reference, Some(bin)) => {
            let mut c = lab.command(lab.client_ns(), &bin.to_string_lossy());
            let base = out_dir.join("ref").to_string_lossy().to_string();
            c.args([
                "-n",
                "-4",
                "-o",
                &base,
                "-f",
                "dot",
                "-s",
                "reverse",
                "udp",
                "singlepath",
                "--flow",
                "4000",
                &server,
            ]);
            c
        }
        (Client::Reference, None) => bail!("no reference client given"),
    };
    let before = r1_requests(lab)?;
    let run = run_timed(cmd, Duration::from_secs(120))?;
    let after = r1_requests(lab)?;
    let me = lab.client_addr().to_string();
    let reached = match client {
        Client::Reference => {
            // The reference client writes its JSON to OUT.json (`-s`).
            let json = std::fs::read_to_string(out_dir.join("ref.json")).unwrap_or_default();
            let _ = std::fs::remove_file(out_dir.join("ref.json"));
            json.contains(&format!("\"{me}\""))
        }
        Client::Ours => run.stdout.contains("\"stop_reason\":\"reached\""),
    };
    Ok(TraceSample {
        wall: run.wall.as_secs_f64(),
        requests: after.saturating_sub(before),
        reached,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The requests (echo requests of code 1) r1 has forwarded from the client: installs the
/// counter on first use.
fn r1_requests(lab: &Lab) -> Result<u64> {
    let r1 = lab.router_ns("r1")?.to_string();
    let list = |lab: &Lab| -> Result<String> {
        let mut c = lab.command(&r1, "nft");
        c.args(["list", "table", "ip", "svctr_bench_requests"]);
        let out = svctr_lab::output_with_timeout(&mut c, None, Duration::from_secs(10))?;
        Ok(if out.status.success() {
            String::from_utf8_lossy(&out.stdout).to_string()
        } else {
            String::new()
        })
    };
    let mut text = list(lab)?;
    if text.is_empty() {
        let script = format!(
            "table ip svctr_bench_requests {{\n chain counting {{ type filter hook forward priority 0; policy accept;\n  \
             ip saddr {} icmp type echo-request icmp code 1 counter\n }}\n}}\n",
            lab.client_addr()
        );
        let mut c = lab.command(&r1, "nft");
        c.args(["-f", "-"]);
        let out = svctr_lab::output_with_timeout(&mut c, Some(&script), Duration::from_secs(10))?;
        if !out.status.success() {
            bail!("nft on r1: {}", String::from_utf8_lossy(&out.stderr));
        }
        text = list(lab)?;
    }
    text.lines()
        .filter(|l| l.contains("echo-request"))
        .find_map(svctr_lab::nft_rule_packets)
        .ok_or_else(|| anyhow!("no request counter on r1"))
}

/// The probes r4 has seen leave the server (its counter).
fn r4_probes(lab: &Lab) -> Result<u64> {
    let r4 = lab.router_ns("r4")?.to_string();
    let mut c = lab.command(&r4, "nft");
    c.args(["list", "table", "ip", "svctr_bench_reverse"]);
    let out = svctr_lab::output_with_timeout(&mut c, None, Duration::from_secs(10))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("sport 1021"))
        .find_map(svctr_lab::nft_rule_packets)
        .ok_or_else(|| anyhow!("no probe counter on r4"))
}

/// 50,000 requests (TTL 64, UDP flow 53) from 10,000 spoofed sources in 198.18.128.0/17.
fn requests(lab: &Lab) -> Vec<(IpAddr, Vec<u8>)> {
    let dst = lab.server_addr();
    (0..50_000u32)
        .map(|i| {
            let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 1)) + i % 10_000);
            let id = (i / 10_000 + 1) as u16;
            // ICMP echo request code 1: id, seq 0, TTL 64, protocol 17, flow 53.
            let mut icmp = vec![8u8, 1, 0, 0];
            icmp.extend_from_slice(&id.to_be_bytes());
            icmp.extend_from_slice(&[0, 0, 64, 17, 0, 53]);
            let c = checksum(&icmp);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            let total = (20 + icmp.len()) as u16;
            let mut p = vec![
                0x45,
                0,
                (total >> 8) as u8,
                total as u8,
                0,
                1,
                0,
                0,
                64,
                1,
                0,
                0,
            ];
            p.extend_from_slice(&src.octets());
            p.extend_from_slice(&dst.octets());
            let c = checksum(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            p.extend_from_slice(&icmp);
            (IpAddr::V4(dst), p)
        })
        .collect()
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

struct ServerSample {
    sessions: u64,
    secs: f64,
    per_session: String,
}

/// Sends the requests as fast as the raw socket takes them (`pace` None), or at `pace`
/// requests per second in chunks of 1,000.
fn flood(lab: &Lab, pace: Option<f64>) -> Result<u64> {
    let all = requests(lab);
    let until = Instant::now() + Duration::from_secs(60);
    let Some(rate) = pace else {
        return svctr_lab::send_raw_flood(lab.client_ns(), all, 1, until);
    };
    let t0 = Instant::now();
    let mut sent = 0u64;
    for (i, chunk) in all.chunks(1000).enumerate() {
        let at = t0 + Duration::from_secs_f64(i as f64 * 1000.0 / rate);
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sent += svctr_lab::send_raw_flood(lab.client_ns(), chunk.to_vec(), 1, until)?;
    }
    Ok(sent)
}

fn server_bench(
    lab: &Lab,
    which: Server,
    args: &ReverseArgs,
    pace: Option<f64>,
) -> Result<ServerSample> {
    let r4 = lab.router_ns("r4")?.to_string();
    let script = format!(
        "table ip svctr_bench_reverse {{\n chain counting {{ type filter hook forward priority 0; policy accept;\n  \
         ip saddr {} udp sport 1021 counter drop\n }}\n}}\n",
        lab.server_addr()
    );
    let mut c = lab.command(&r4, "nft");
    c.args(["-f", "-"]);
    let out = svctr_lab::output_with_timeout(&mut c, Some(&script), Duration::from_secs(10))?;
    if !out.status.success() {
        bail!("nft on r4: {}", String::from_utf8_lossy(&out.stderr));
    }
    let running = match which {
        Server::Ours => start_server(
            lab,
            which,
            args,
            &[
                "-n",
                "50000",
                "-t",
                "30",
                "--rate",
                "10000000",
                "--burst",
                "10000000",
                "--source-rate",
                "10000000",
                "--source-burst",
                "10000000",
            ],
        )?,
        Server::Reference => start_server(lab, which, args, &["-n", "50000", "-t", "30000000000"])?,
    };
    let idle = svctr_lab::process_rss_kib(running.child.id());
    let before = r4_probes(lab)?;
    let t0 = Instant::now();
    flood(lab, pace)?;
    // Wait for the counter to settle: the last probe is out.
    let mut last = (before, t0);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let n = r4_probes(lab)?;
        if n == last.0 && last.1.elapsed() > Duration::from_millis(500) {
            break;
        }
        if n != last.0 {
            last = (n, Instant::now());
        }
        if t0.elapsed() > Duration::from_secs(40) {
            break;
        }
    }
    let sessions = last.0 - before;
    let secs = last.1.duration_since(t0).as_secs_f64();
    let per_session = match which {
        Server::Ours => {
            let full = svctr_lab::process_rss_kib(running.child.id());
            format!(
                "{:.0} B (resident {} → {} KiB)",
                (full.saturating_sub(idle) as f64 * 1024.0) / sessions.max(1) as f64,
                idle,
                full
            )
        }
        Server::Reference => {
            let mut c = lab.command(lab.server_ns(), "bpftool");
            c.args(["map", "show"]);
            let out = svctr_lab::output_with_timeout(&mut c, None, Duration::from_secs(10))?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            // The session map: a hash of 50,000 entries.
            let mem = text
                .split("\n")
                .collect::<Vec<_>>()
                .windows(2)
                .find(|w| w[0].contains("hash") && w[1].contains("max_entries 50000"))
                .and_then(|w| {
                    w[1].split_whitespace()
                        .skip_while(|t| *t != "memlock")
                        .nth(1)
                        .map(|m| m.trim_end_matches('B').parse::<u64>().unwrap_or(0))
                });
            match mem {
                Some(m) => format!(
                    "{:.0} B (BPF hash map, {} B for 50,000 entries, preallocated)",
                    m as f64 / 50_000.0,
                    m
                ),
                None => "unknown (session map not found by bpftool)".to_string(),
            }
        }
    };
    drop(running);
    let mut c = lab.command(&r4, "nft");
    c.args(["delete", "table", "ip", "svctr_bench_reverse"]);
    let _ = svctr_lab::output_with_timeout(&mut c, None, Duration::from_secs(10));
    Ok(ServerSample {
        sessions,
        secs,
        per_session,
    })
}

/// Runs section 7 and returns its Markdown report.
pub(crate) fn run(args: &ReverseArgs, command_line: &str, stop: &AtomicBool) -> Result<String> {
    let lab = Lab::build(LabConfig::default())?;
    let tmp = std::env::temp_dir().join(format!("svctr-bench-reverse-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let mut servers = vec![Server::Ours];
    if args.ref_server.is_some() {
        servers.push(Server::Reference);
    }
    let mut clients = vec![Client::Ours];
    if args.ref_client.is_some() {
        clients.push(Client::Reference);
    }
    let mut out = String::new();
    crate::bench::header(&mut out, command_line, &args.tracer)?;
    writeln!(
        out,
        "\n## 7. Reverse traceroute (`svctr-lab bench-reverse`)\n\n* a reverse trace of the lab's path (6 hops back), UDP flow 4000, {} runs per pair\n",
        args.reps
    )?;
    writeln!(
        out,
        "| client | server | traces that reached the client | median wall time | median requests | time vs ours/ours |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    let mut base = f64::NAN;
    for &server in &servers {
        let running = start_server(&lab, server, args, &[])?;
        let mut samples: Vec<Vec<TraceSample>> = clients.iter().map(|_| Vec::new()).collect();
        for _ in 0..args.reps {
            for (i, &client) in clients.iter().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    bail!("interrupted");
                }
                samples[i].push(one_trace(&lab, client, args, &tmp)?);
            }
        }
        drop(running);
        for (&client, ss) in clients.iter().zip(&samples) {
            let wall = median(ss.iter().map(|s| s.wall).collect());
            if client == Client::Ours && server == Server::Ours {
                base = wall;
            }
            writeln!(
                out,
                "| {} | {} | {}/{} | {} | {:.0} | {:.1}× |",
                match client {
                    Client::Ours => "service-traceroute reverse",
                    Client::Reference => "augsburg-traceroute (reference)",
                },
                match server {
                    Server::Ours => "service-traceroute reverse-server",
                    Server::Reference => "augsburg-traceroute-server-v4 (reference)",
                },
                ss.iter().filter(|s| s.reached).count(),
                ss.len(),
                if wall < 1.0 {
                    format!("{:.0} ms", wall * 1000.0)
                } else {
                    format!("{wall:.1} s")
                },
                median(ss.iter().map(|s| s.requests as f64).collect()),
                wall / base
            )?;
        }
    }
    if args.ref_client.is_none() {
        writeln!(out, "\n(reference client not given: `--ref-client`)")?;
    }
    writeln!(
        out,
        "\n* the server: 50,000 requests from 10,000 spoofed sources, probes dropped at r4 so every session stays open\n"
    )?;
    writeln!(
        out,
        "| server | requests sent | sessions opened (probes counted on r4) | sessions per second | memory per session |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    for pace in [None, Some(10_000.0)] {
        for &server in &servers {
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            let s = server_bench(&lab, server, args, pace)?;
            writeln!(
                out,
                "| {} | 50,000 {} | {} | {:.0} | {} |",
                match server {
                    Server::Ours => "service-traceroute reverse-server",
                    Server::Reference => "augsburg-traceroute-server-v4 (reference)",
                },
                match pace {
                    None => "at once (as fast as a raw socket sends)".to_string(),
                    Some(r) => format!("at {r:.0}/s"),
                },
                s.sessions,
                s.sessions as f64 / s.secs.max(1e-6),
                s.per_session
            )?;
        }
    }
    if args.ref_server.is_none() {
        writeln!(out, "\n(reference server not given: `--ref-server`)")?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(out)
}

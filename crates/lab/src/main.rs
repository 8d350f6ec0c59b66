//! `svctr-lab`: build/remove an emulated multi-path network, run the project's demo or its
//! benchmarks.

mod bench;
mod bench_flows;
mod bench_line;
mod bench_multipath;
mod bench_reverse;
mod bench_throughput;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use svctr_lab::{parse_traceroute, tcp_download, tcp_server, Lab, LabConfig, LineConfig, Proto};

#[derive(Parser)]
#[command(
    name = "svctr-lab",
    about = "Emulated ECMP network of Linux network namespaces for service-traceroute"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a lab, print its names and addresses, keep it until Ctrl-C / SIGTERM.
    Up {
        /// Masquerade the client's traffic on r1.
        #[arg(long)]
        nat: bool,
        /// Stateful firewall on r2 (only the service ports admit new flows).
        #[arg(long)]
        firewall: bool,
        /// Lab name (prefix of its namespaces); default st<pid>x0.
        #[arg(long)]
        name: Option<String>,
        /// Number of ECMP branches.
        #[arg(long, default_value_t = 3)]
        branches: usize,
        /// Extra destinations behind r4 (IPv4 198.19.128.1.., IPv6 2001:2:0:1980::1..).
        #[arg(long, default_value_t = 0)]
        fanout: usize,
        /// The fan-out in IPv4 only, by one AnyIP route on the server (up to 32767
        /// destinations at no set-up cost).
        #[arg(long)]
        fanout_v4_only: bool,
        /// A second ECMP stage of this many routers (c1..cN) behind b1 only (0: none);
        /// then --branches may be 2 (the multipath lab: --branches 2 --sub-branches 3).
        #[arg(long, default_value_t = 0)]
        sub_branches: usize,
        /// Asymmetric routing: the way back from the server goes through a stage of its own,
        /// this many routers d1..dN between r3 and r2 (0: back through the branches).
        #[arg(long, default_value_t = 0)]
        return_branches: usize,
        /// A delay-and-loss line on a link, repeatable: `A-B=DELAY[/JITTER][:LOSS%]` with a
        /// one-way delay, e.g. `client-r1=0.5ms`, `r3-r4=20ms/1ms:5`.
        #[arg(long = "line", value_parser = parse_line)]
        lines: Vec<LineConfig>,
    },
    /// Remove the namespaces of a leftover lab (`NAME-*`).
    Down {
        /// Lab name (the prefix printed by `up`).
        name: String,
    },
    /// Demo: trace a live TCP download with the tracer, compare with ground truth
    /// and with a classic `traceroute -T`.
    Demo {
        /// Path of the service-traceroute binary.
        #[arg(long)]
        tracer: PathBuf,
        #[arg(long)]
        nat: bool,
        #[arg(long)]
        firewall: bool,
        /// Number of ECMP branches.
        #[arg(long, default_value_t = 3)]
        branches: usize,
    },
    /// Benchmark: time to trace one path (vs scamper and traceroute) and CPU/memory per
    /// traced flow; prints a Markdown report.
    Bench {
        /// Path of the service-traceroute binary.
        #[arg(long)]
        tracer: PathBuf,
        /// Repetitions of the timing measurement.
        #[arg(long, default_value_t = 15)]
        runs: usize,
        /// Concurrent flows for the CPU/memory measurement.
        #[arg(long, default_value_t = 200)]
        flows: usize,
        /// A delay-and-loss line on a link, repeatable (as `up --line`), e.g.
        /// `--line client-r1=0.5ms --line r3-r4=20ms`.
        #[arg(long = "line", value_parser = parse_line)]
        lines: Vec<LineConfig>,
        /// trippy's binary (default: `trip` in $PATH, else ~/.cargo/bin/trip).
        #[arg(long)]
        trip: Option<PathBuf>,
    },
    /// Benchmark: `trace` of many lab destinations (IPv4 fan-out, up to 32767) against the
    /// raw send limit of the machine (a `sendmmsg` loop of the same probes, `blast`); prints
    /// a Markdown report
    BenchThroughput {
        /// Path of the service-traceroute binary.
        #[arg(long)]
        tracer: PathBuf,
        /// Numbers of destinations, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 10000, 32000])]
        targets: Vec<usize>,
        /// Repetitions of each measurement (interleaved).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// A delay-and-loss line on a link, repeatable (as `up --line`).
        #[arg(long = "line", value_parser = parse_line)]
        lines: Vec<LineConfig>,
    },
    /// The raw send loop of `bench-throughput`: UDP probes to COUNT consecutive IPv4
    /// addresses from FIRST, TTL 1..=TTLS each, over one raw socket with sendmmsg, no reply
    /// read. Prints `sent P probes in S s`. Run it in a lab namespace only
    Blast {
        /// First destination.
        #[arg(long)]
        first: Ipv4Addr,
        /// Destinations.
        #[arg(long)]
        count: usize,
        /// Probes (TTL 1..=TTLS) per destination.
        #[arg(long, default_value_t = 16)]
        ttls: u8,
    },
    /// Benchmark: trace many lab destinations with ours (one process), scamper (one
    /// process), trippy and traceroute (one process per destination); prints a Markdown
    /// report.
    BenchTrace {
        /// Path of the service-traceroute binary.
        #[arg(long)]
        tracer: PathBuf,
        /// Number of destinations (lab fan-out).
        #[arg(long, default_value_t = 1000)]
        targets: usize,
        /// Processes at once for the one-destination-per-process tools.
        #[arg(long, default_value_t = 50)]
        parallel: usize,
        /// Repetitions of every setting.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// trippy's binary (default: `trip` in $PATH, else ~/.cargo/bin/trip).
        #[arg(long)]
        trip: Option<PathBuf>,
        /// A delay-and-loss line on a link, repeatable (as `up --line`).
        #[arg(long = "line", value_parser = parse_line)]
        lines: Vec<LineConfig>,
    },
    /// Benchmark: live flows traced per second and memory per concurrent flow, at 1,000 and
    /// 10,000 flows of the lab's flow generator (UDP and TCP); prints a Markdown report.
    BenchFlows {
        /// Path of the service-traceroute binary.
        #[arg(long)]
        tracer: PathBuf,
        /// Flow counts (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        flows: Vec<usize>,
        /// Repetitions of every setting.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// The --rate of the "all at once" setting (probes per second).
        #[arg(long, default_value_t = 20000)]
        rate: u32,
    },
    /// Benchmark: the capture's CPU while an unpaced TCP transfer runs through the client,
    /// ours against tcpdump; prints a Markdown report.
    BenchCapture {
        /// Path of the service-traceroute binary.
        #[arg(long)]
        tracer: PathBuf,
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Repetitions of every setting.
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Benchmark: multipath discovery on the multipath lab (2 branches, b1 splitting again
    /// over 3), ours against scamper tracelb and Dublin traceroute: probes, time,
    /// completeness; prints a Markdown report.
    BenchMultipath {
        /// Path of the service-traceroute binary.
        #[arg(long)]
        tracer: PathBuf,
        /// Runs of each tool.
        #[arg(long, default_value_t = 10)]
        reps: usize,
    },
    /// Benchmark of the delay line itself: requested against measured one-way delay at
    /// several packet rates (a line on r1-r2, UDP datagrams client -> server, kernel receive
    /// timestamps); prints a Markdown report.
    BenchLine {
        /// One-way delays to request, in ms (comma-separated; 0, no line, is measured anyway).
        #[arg(long, value_delimiter = ',', default_value = "1,10,40")]
        delays: Vec<u64>,
        /// Datagrams per second (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,30000")]
        rates: Vec<u64>,
        /// Seconds per setting.
        #[arg(long, default_value_t = 3)]
        secs: u64,
    },
    /// Benchmark: reverse traceroute, ours and (when given) the reference implementation's
    /// client and server: the time of a reverse trace of the lab's path, and a server's
    /// sessions per second and memory per session up to 50,000 open; prints a Markdown report.
    BenchReverse {
        /// Path of the service-traceroute binary.
        #[arg(long)]
        tracer: PathBuf,
        /// Runs of each client against each server.
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// The directory of the reference server's `augsburg-traceroute-server-v4`, built by
        /// hand (BENCHMARKS.md says how).
        #[arg(long)]
        ref_server: Option<PathBuf>,
        /// The reference client's `augsburg-traceroute` executable.
        #[arg(long)]
        ref_client: Option<PathBuf>,
    },
    /// Echo server for the lab's flow generator, in the current network namespace
    /// (run by `echo_server_process` as `ip netns exec <server> svctr-lab echo ...`).
    /// Prints `listening PORT`, then `stats CONNS MESSAGES BYTES CPU_NS` every 200 ms;
    /// runs until stdin closes or SIGINT/SIGTERM.
    Echo {
        /// tcp or udp.
        #[arg(long)]
        proto: String,
        /// Address to bind, e.g. 0.0.0.0:7000 or [::]:7000.
        #[arg(long)]
        bind: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("svctr-lab: cannot install signal handler: {e}");
            return ExitCode::from(2);
        }
    }
    let r = match cli.cmd {
        Cmd::Up {
            nat,
            firewall,
            name,
            branches,
            fanout,
            fanout_v4_only,
            sub_branches,
            return_branches,
            lines,
        } => up(
            nat,
            firewall,
            name,
            branches,
            (fanout, sub_branches, return_branches),
            (fanout_v4_only, lines),
            &stop,
        ),
        Cmd::Down { name } => down(&name),
        Cmd::Demo {
            tracer,
            nat,
            firewall,
            branches,
        } => demo(&tracer, nat, firewall, branches, &stop),
        Cmd::Bench {
            tracer,
            runs,
            flows,
            lines,
            trip,
        } => bench::run(
            &bench::BenchArgs {
                tracer,
                runs,
                flows,
                lines,
                trip,
            },
            &stop,
        ),
        Cmd::BenchTrace {
            tracer,
            targets,
            parallel,
            reps,
            trip,
            lines,
        } => bench::run_trace(
            &bench::TraceBenchArgs {
                tracer,
                targets,
                parallel,
                reps,
                trip,
                lines,
            },
            &stop,
        ),
        Cmd::BenchFlows {
            tracer,
            flows,
            reps,
            rate,
        } => bench_flows::run_flows(
            &bench_flows::FlowsBenchArgs {
                tracer,
                flows,
                reps,
                rate,
            },
            &stop,
        ),
        Cmd::BenchCapture { tracer, secs, reps } => {
            bench_flows::run_capture(&bench_flows::CaptureBenchArgs { tracer, secs, reps }, &stop)
        }
        Cmd::BenchThroughput {
            tracer,
            targets,
            reps,
            lines,
        } => bench_throughput::run(
            &bench_throughput::ThroughputArgs {
                tracer,
                targets,
                reps,
                lines,
            },
            &stop,
        ),
        Cmd::Blast { first, count, ttls } => {
            bench_throughput::blast(first, count, ttls).map(|()| 0)
        }
        Cmd::BenchLine {
            delays,
            rates,
            secs,
        } => bench_line::run(
            &bench_line::LineArgs {
                delays_ms: delays,
                rates,
                secs,
            },
            &std::env::args().collect::<Vec<_>>().join(" "),
            &stop,
        )
        .map(|report| {
            print!("{report}");
            0
        }),
        Cmd::BenchMultipath { tracer, reps } => bench_multipath::run(
            &bench_multipath::MultipathArgs { tracer, reps },
            &std::env::args().collect::<Vec<_>>().join(" "),
            &stop,
        )
        .map(|report| {
            print!("{report}");
            0
        }),
        Cmd::BenchReverse {
            tracer,
            reps,
            ref_server,
            ref_client,
        } => bench_reverse::run(
            &bench_reverse::ReverseArgs {
                tracer,
                reps,
                ref_server,
                ref_client,
            },
            &std::env::args().collect::<Vec<_>>().join(" "),
            &stop,
        )
        .map(|report| {
            print!("{report}");
            0
        }),
        Cmd::Echo { proto, bind } => match proto.as_str() {
            "tcp" => svctr_lab::run_echo_process(Proto::Tcp, bind, &stop).map(|()| 0),
            "udp" => svctr_lab::run_echo_process(Proto::Udp, bind, &stop).map(|()| 0),
            p => Err(anyhow::anyhow!("--proto must be tcp or udp, not {p:?}")),
        },
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("svctr-lab: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `A-B=DELAY[/JITTER][:LOSS%]` (see `up --line`).
fn parse_line(s: &str) -> Result<LineConfig, String> {
    let bad = || format!("{s:?}: want A-B=DELAY[/JITTER][:LOSS%], e.g. r3-r4=20ms/1ms:5");
    let (link, spec) = s.split_once('=').ok_or_else(bad)?;
    let (a, b) = link.split_once('-').ok_or_else(bad)?;
    let (times, loss) = match spec.split_once(':') {
        Some((t, l)) => (t, Some(l.trim_end_matches('%'))),
        None => (spec, None),
    };
    let (delay, jitter) = match times.split_once('/') {
        Some((d, j)) => (d, Some(j)),
        None => (times, None),
    };
    let duration = |t: &str| -> Result<Duration, String> {
        let (num, unit) = t
            .find(|c: char| c.is_ascii_alphabetic())
            .map_or((t, "ms"), |i| t.split_at(i));
        let v: f64 = num.parse().map_err(|_| bad())?;
        let scale = match unit {
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            _ => return Err(bad()),
        };
        Duration::try_from_secs_f64(v * scale).map_err(|_| bad())
    };
    let mut cfg = LineConfig::new(a, b, duration(delay)?);
    if let Some(j) = jitter {
        cfg.jitter = duration(j)?;
    }
    if let Some(l) = loss {
        let pct: f64 = l.parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&pct) {
            return Err(bad());
        }
        cfg.loss_ppm = (pct * 10_000.0).round() as u32;
    }
    Ok(cfg)
}

fn config(nat: bool, firewall: bool, branches: usize) -> LabConfig {
    LabConfig {
        branches,
        nat,
        firewall,
        ..LabConfig::default()
    }
}

fn describe_hop(lab: &Lab, a: Ipv4Addr) -> String {
    match lab.addr_owner(a) {
        Some(o) => format!("{a} ({o})"),
        None => a.to_string(),
    }
}

fn print_summary(lab: &Lab) {
    let c = lab.config();
    println!(
        "lab {}: {} branches{}, nat={}, firewall={}",
        lab.name(),
        c.branches,
        match (c.sub_branches, c.return_branches) {
            (0, 0) => String::new(),
            (s, 0) => format!(" (b1 splits again over {s} routers)"),
            (0, r) => format!(" (the way back over its own {r} routers d1..d{r})"),
            (s, r) => format!(
                " (b1 splits again over {s} routers; the way back over its own {r} routers)"
            ),
        },
        c.nat,
        c.firewall
    );
    for l in &c.lines {
        println!(
            "  line    {}-{}: {:?} one way, jitter {:?}, loss {} %",
            l.a,
            l.b,
            l.delay,
            l.jitter,
            f64::from(l.loss_ppm) / 10_000.0
        );
    }
    println!(
        "  client  ns {:<16} {} {} dev {}",
        lab.client_ns(),
        lab.client_addr(),
        lab.client_addr6(),
        lab.client_iface()
    );
    println!(
        "  server  ns {:<16} {} {} dev {}",
        lab.server_ns(),
        lab.server_addr(),
        lab.server_addr6(),
        lab.server_iface()
    );
    for r in lab.router_names() {
        let addrs: Vec<String> = lab
            .links()
            .iter()
            .filter_map(|l| {
                if l.a == r {
                    Some(format!("{}={},{}", l.a_if, l.addr_a(), l.addr6_a()))
                } else if l.b == r {
                    Some(format!("{}={},{}", l.b_if, l.addr_b(), l.addr6_b()))
                } else {
                    None
                }
            })
            .collect();
        println!(
            "  {:<7} ns {:<16} {}",
            r,
            lab.router_ns(&r).unwrap_or("?"),
            addrs.join(" ")
        );
    }
    println!(
        "  service ports: tcp {:?}, udp {:?}",
        c.service_ports_tcp, c.service_ports_udp
    );
    for (v4, v6) in lab.all_paths_ip(false).iter().zip(lab.all_paths_ip(true)) {
        let p: Vec<String> = v4.iter().map(|a| a.to_string()).collect();
        println!("  path: {} -> {}", p.join(" "), lab.server_addr());
        let p: Vec<String> = v6.iter().map(|a| a.to_string()).collect();
        println!("        {} -> {}", p.join(" "), lab.server_addr6());
    }
    if c.fanout > 0 {
        let (v4, v6) = (lab.fanout_targets_v4(), lab.fanout_targets_v6());
        match (v4.first(), v4.last(), v6.first(), v6.last()) {
            (Some(a), Some(b), Some(c6), Some(d)) => println!(
                "  fan-out: {} targets per family, {a}..{b} and {c6}..{d} (server loopback)",
                c.fanout
            ),
            (Some(a), Some(b), _, _) => println!(
                "  fan-out: {} IPv4 targets, {a}..{b} (one AnyIP route on the server)",
                c.fanout
            ),
            _ => {}
        }
    }
    println!(
        "  e.g.: ip netns exec {} traceroute -T -n -p 8080 {}",
        lab.client_ns(),
        lab.server_addr()
    );
}

fn up(
    nat: bool,
    firewall: bool,
    name: Option<String>,
    branches: usize,
    (fanout, sub_branches, return_branches): (usize, usize, usize),
    (fanout_v4_only, lines): (bool, Vec<LineConfig>),
    stop: &AtomicBool,
) -> Result<u8> {
    let cfg = LabConfig {
        fanout,
        fanout_v4_only,
        sub_branches,
        return_branches,
        lines,
        ..config(nat, firewall, branches)
    };
    let lab = match &name {
        Some(n) => Lab::build_named(cfg, n)?,
        None => Lab::build(cfg)?,
    };
    print_summary(&lab);
    println!(
        "lab is up; Ctrl-C or SIGTERM tears it down (or `svctr-lab down {}` if this process dies)",
        lab.name()
    );
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("tearing down lab {}", lab.name());
    drop(lab);
    Ok(0)
}

fn down(name: &str) -> Result<u8> {
    let removed = svctr_lab::remove_lab(name)?;
    if removed.is_empty() {
        println!("no namespace named {name}-*");
    }
    for ns in removed {
        println!("removed {ns}");
    }
    Ok(0)
}

/// Runs `cmd`, echoing its stdout live (and keeping it), stderr passed through.
/// Killed on `stop` or after `timeout`. Returns (success, stdout, note).
fn run_tracer(
    mut cmd: std::process::Command,
    stop: &AtomicBool,
    timeout: Duration,
) -> Result<(bool, String, String)> {
    // Own process group: `ip netns exec` forks, so killing the group reaches the tracer.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    let line = svctr_lab::describe(&cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for l in BufReader::new(out).lines().map_while(|l| l.ok()) {
            println!("  | {l}");
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + timeout;
    let (ok, note) = loop {
        if let Some(st) = child.try_wait()? {
            break (st.success(), format!("tracer exited: {st}"));
        }
        if stop.load(Ordering::SeqCst) {
            kill_group(&mut child);
            break (false, "interrupted: tracer killed".to_string());
        }
        if Instant::now() >= deadline {
            kill_group(&mut child);
            break (false, format!("tracer killed after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = reader.join().unwrap_or_default();
    Ok((ok, text, note))
}

/// SIGTERM, then SIGKILL after 1 s, to the child's process group; reaps the child.
fn kill_group(child: &mut std::process::Child) {
    use nix::sys::signal::{killpg, Signal};
    let pg = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = killpg(pg, Signal::SIGTERM);
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = killpg(pg, Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

fn demo(
    tracer: &Path,
    nat: bool,
    firewall: bool,
    branches: usize,
    stop: &AtomicBool,
) -> Result<u8> {
    let tracer = match tracer.canonicalize() {
        Ok(p) if p.is_file() => p,
        _ => bail!(
            "tracer binary not found: {} (build it first, e.g. cargo build -p svctr-cli)",
            tracer.display()
        ),
    };
    let cfg = config(nat, firewall, branches);
    let port = cfg.service_ports_tcp.first().copied().unwrap_or(8080);
    let lab = Lab::build(cfg)?;
    print_summary(&lab);
    let server = tcp_server(&lab, port, 2_000_000)?;
    // 40 MB at 2 MB/s: the flow lives ~20 s.
    let dl = tcp_download(&lab, port, 0, 40_000_000, true)?;
    let lport = dl.wait_established(Duration::from_secs(10))?;
    println!(
        "\napplication flow: tcp {}:{lport} -> {}:{port} (2 MB/s download, IP_RECVERR on)",
        lab.client_addr(),
        lab.server_addr()
    );
    std::thread::sleep(Duration::from_millis(500));
    let truth = lab.expected_path(Proto::Tcp, lport, port)?;
    if stop.load(Ordering::SeqCst) {
        println!("interrupted");
        return Ok(130);
    }

    let mut cmd = lab.command(lab.client_ns(), &tracer.to_string_lossy());
    cmd.args(["flow", "--iface", lab.client_iface(), "--tcp", "--remote"])
        .arg(format!("{}:{port}", lab.server_addr()))
        .args(["--count", "1", "--duration", "15"]);
    println!("\n$ {}", svctr_lab::describe(&cmd));
    let (tracer_ok, tracer_out, note) = run_tracer(cmd, stop, Duration::from_secs(60))?;
    println!("  ({note})");
    if stop.load(Ordering::SeqCst) {
        println!("interrupted: tearing down");
        return Ok(130);
    }

    println!("\nground truth for the application flow (from r2's `ip route get`):");
    for (i, a) in truth.iter().enumerate() {
        println!(" {:>2}  {}", i + 1, describe_hop(&lab, *a));
    }
    println!(" {:>2}  {} (server)", truth.len() + 1, lab.server_addr());
    let seen: Vec<Ipv4Addr> = tracer_out
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.parse::<Ipv4Addr>().ok())
        .collect();
    let mut it = seen.iter();
    let tracer_match = truth.iter().all(|h| it.any(|s| s == h));
    println!(
        "tracer output {} the ground-truth hops in order",
        if tracer_match {
            "CONTAINS"
        } else {
            "does NOT contain"
        }
    );

    let mut tr = lab.command(lab.client_ns(), "traceroute");
    tr.args([
        "-T",
        "-n",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-w",
        "1",
        &lab.server_addr().to_string(),
    ]);
    println!(
        "\n$ {}   # classic traceroute: a fresh flow",
        svctr_lab::describe(&tr)
    );
    let out = svctr_lab::output_with_timeout(&mut tr, None, Duration::from_secs(60))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for l in text.lines() {
        println!("  | {l}");
    }
    let hops = parse_traceroute(&text);
    let app_branch = lab.branch_of_addr(truth[2]).unwrap_or(0);
    // Branches revealed by the fresh traceroute's hops 3 (bK) and 4 (r3's bK-side address).
    // Without a fixed source port, Debian's traceroute -T gives each probe its own
    // source port, so different TTLs may even take different branches.
    let mut fresh: Vec<usize> = hops
        .iter()
        .take(4)
        .flatten()
        .filter_map(|a| lab.branch_of_addr(*a))
        .collect();
    fresh.dedup();
    let names = |v: &[usize]| {
        v.iter()
            .map(|k| format!("b{k}"))
            .collect::<Vec<_>>()
            .join("+")
    };
    match fresh.as_slice() {
        [] => println!("verdict: cannot tell (traceroute did not show hops 3-4)"),
        [f] if *f == app_branch => println!(
            "verdict: SAME path by chance (both through b{f}; 1 in {} odds): run the demo again to see them differ",
            lab.branches()
        ),
        [f] => println!(
            "verdict: DIFFERENT paths: the fresh traceroute flow went through b{f}, the application flow goes through b{app_branch}"
        ),
        v => println!(
            "verdict: DIFFERENT paths: the fresh traceroute mixes branches {} across TTLs, the application flow goes through b{app_branch} only",
            names(v)
        ),
    }

    // Let the download finish (bounded), then report what the application saw.
    let end = Instant::now() + Duration::from_secs(25);
    while !dl.is_finished() && Instant::now() < end && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if dl.is_finished() {
        let r = dl.wait()?;
        println!(
            "\napplication: {} bytes in {:.1?}, intact={}, socket errors: {}",
            r.bytes,
            r.duration,
            r.intact,
            if r.errors.is_empty() {
                "none".to_string()
            } else {
                r.errors.join("; ")
            }
        );
    } else {
        println!(
            "\napplication: {} bytes received so far (stopped)",
            dl.bytes_received()
        );
        drop(dl);
    }
    drop(server);
    drop(lab);
    if stop.load(Ordering::SeqCst) {
        return Ok(130);
    }
    if !tracer_ok {
        eprintln!("svctr-lab: the tracer failed ({note})");
        return Ok(1);
    }
    Ok(0)
}

//! Faults and limits, end to end in the lab: the client's interface going down and up
//! mid-trace, a capture ring that overflows, a tracer killed with SIGKILL and output that
//! cannot be written (the shield's tables never stay behind), routers that rate-limit ICMP
//! as Linux does by default and routers that never answer (the stop rules as documented),
//! and a flood of a million new flows (every table bounded, memory flat). Root only (see
//! `svctr_lab::lab_test_guard`); each test builds its own lab and removes it, even when it
//! fails.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{nft_in, stderr, TRACER};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use svctr_core::{StopReason, TraceResult, TracerouteResult};
use svctr_lab::{
    lab_test_guard, output_with_timeout, process_rss_kib, tcp_download_to, tcp_server_on,
    udp_flood, udp_server_on, udp_session_to, Lab, LabConfig, Proto,
};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

/// A tracer in the client namespace, killed and reaped if the test ends first.
struct Tracer(Child);

impl Tracer {
    fn start(lab: &Lab, args: &[&str]) -> Tracer {
        let mut c = lab.command(lab.client_ns(), TRACER);
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Tracer(c.spawn().expect("tracer starts"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.0.id() as i32), sig).expect("signal");
    }

    /// Waits for the end (at most `limit`): (exit code, stdout, stderr).
    fn finish(mut self, limit: Duration) -> (Option<i32>, String, String) {
        let end = Instant::now() + limit;
        // Read both pipes while waiting, so a chatty run never blocks on a full pipe.
        let out = self.0.stdout.take();
        let err = self.0.stderr.take();
        let o = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut out) = out {
                let _ = out.read_to_string(&mut s);
            }
            s
        });
        let e = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut err) = err {
                let _ = err.read_to_string(&mut s);
            }
            s
        });
        let mut code = None;
        while Instant::now() < end {
            if let Some(s) = self.0.try_wait().expect("wait") {
                code = s.code();
                break;
            }
            std::thread::sleep(MS(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        (code, o.join().unwrap(), e.join().unwrap())
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `program args` in namespace `ns`; panics on failure.
fn run_in(lab: &Lab, ns: &str, program: &str, args: &[&str]) -> String {
    let mut c = lab.command(ns, program);
    c.args(args);
    let out = output_with_timeout(&mut c, None, SECS(10)).expect("runs");
    assert!(
        out.status.success(),
        "{program} {args:?} in {ns}: {}",
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The shield tables (`svctr_<pid>`) in the client namespace.
fn shield_tables(lab: &Lab) -> Vec<String> {
    run_in(lab, lab.client_ns(), "nft", &["list", "tables"])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|t| t.starts_with("svctr_"))
        .map(str::to_string)
        .collect()
}

/// The client's gateway (r1), IPv4.
fn gateway(lab: &Lab) -> String {
    lab.path_ip(1, None, false)[0].to_string()
}

/// The client's interface down for `down_for`, then up again with its default route put
/// back (taking a link down removes the routes through it, on any host; a network manager
/// restores them).
fn bounce_client_link(lab: &Lab, down_for: Duration) {
    let (ns, dev) = (lab.client_ns(), lab.client_iface());
    run_in(lab, ns, "ip", &["link", "set", dev, "down"]);
    std::thread::sleep(down_for);
    run_in(lab, ns, "ip", &["link", "set", dev, "up"]);
    let gw = gateway(lab);
    run_in(lab, ns, "ip", &["route", "replace", "default", "via", &gw]);
}

/// The hop lines of a text trace: TTL -> (first address, the line).
fn text_hops(out: &str) -> BTreeMap<u8, (Option<IpAddr>, String)> {
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ttl: u8 = words.next()?.parse().ok()?;
            let addr = words.find_map(|w| w.parse::<IpAddr>().ok());
            Some((ttl, (addr, l.to_string())))
        })
        .collect()
}

/// Reads a text run's stdout line by line, calling `on_line` on each as it comes; then the
/// end: (exit code, stdout, stderr).
fn run_text(
    lab: &Lab,
    args: &[&str],
    mut on_line: impl FnMut(&str),
) -> (Option<i32>, String, String) {
    let mut t = Tracer::start(lab, args);
    let out = t.0.stdout.take().expect("stdout");
    let mut text = String::new();
    for line in BufReader::new(out).lines() {
        let line = line.expect("line");
        on_line(&line);
        text.push_str(&line);
        text.push('\n');
    }
    let (code, _, err) = t.finish(SECS(60));
    (code, text, err)
}

/// The client's interface goes down and comes back in the middle of a `trace` and of a
/// `flow` trace of a live download (IPv4: taking a link down also removes its IPv6 addresses):
/// the probes sent meanwhile fail to leave and say so (`not sent: ...`, not a silent router),
/// the run goes on (the capture comes back with the link), and with `--retries` every hop is
/// found once the link is back: the path equals the lab's (for the flow, the branch r2 picks
/// for its 5-tuple); the download is intact.
#[test]
fn the_interface_going_down_mid_trace_costs_no_hop() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("lab");
    let server = lab.server_addr();
    let dst = server.to_string();
    // One probe every 500 ms; the link goes down just after hop 1 answered, for 700 ms, so
    // at least one probe fails to leave; its retry waits a timeout (1 s), the link back.
    let pace = ["--rate", "2", "-q", "1", "-w", "1", "--retries", "2"];
    let mut args = vec!["trace", "-n"];
    args.extend(pace);
    args.push(&dst);
    let mut bounced = false;
    let (code, out, err) = run_text(&lab, &args, |l| {
        if !bounced && l.starts_with(" 1 ") {
            bounced = true;
            bounce_client_link(&lab, MS(700));
        }
    });
    assert!(bounced, "hop 1 came: {out}{err}");
    assert_eq!(code, Some(0), "{out}{err}");
    let hops = text_hops(&out);
    assert!(
        hops.values().any(|(_, l)| l.contains("(not sent: ")),
        "a probe failed to leave while the link was down, and says so: {out}"
    );
    let path: Vec<Option<IpAddr>> = (1..=5).map(|t| hops.get(&t).and_then(|h| h.0)).collect();
    let branch = lab
        .branch_of_path_ip(&path)
        .unwrap_or_else(|| panic!("every hop found: {out}"));
    let truth: Vec<Option<IpAddr>> = lab
        .path_ip(branch, None, false)
        .into_iter()
        .map(Some)
        .collect();
    assert_eq!(path, truth, "{out}");
    assert_eq!(
        hops.get(&6).and_then(|h| h.0),
        Some(IpAddr::V4(server)),
        "{out}"
    );
    assert!(out.contains("stop: remote-reached"), "{out}");

    // A live download traced with `flow`.
    let _srv = tcp_server_on(&lab, SocketAddr::new(server.into(), 8080), 1_000_000).expect("srv");
    let d = tcp_download_to(
        &lab,
        SocketAddr::new(server.into(), 8080),
        0,
        9_000_000,
        false,
    )
    .expect("download");
    let lport = d.wait_established(SECS(10)).expect("established");
    let remote = format!("{server}:8080");
    let mut args = vec!["flow", "-i", "eth0", "--tcp", "--remote", &remote];
    args.extend(pace);
    // `flow` prints its trace at the end: the link goes down 500 ms after the start, for
    // 900 ms, while probes go every 500 ms (the trace starts within the first second).
    let t = Tracer::start(&lab, &args);
    std::thread::sleep(MS(500));
    bounce_client_link(&lab, MS(900));
    let bounced = true;
    let (code, out, err) = t.finish(SECS(60));
    assert!(bounced, "hop 1 came: {out}{err}");
    assert_eq!(code, Some(0), "{out}{err}");
    let hops = text_hops(&out);
    assert!(
        hops.values().any(|(_, l)| l.contains("(not sent: ")),
        "{out}"
    );
    let truth: Vec<Option<IpAddr>> = lab
        .expected_path_ip(
            Proto::Tcp,
            IpAddr::V4(lab.client_addr()),
            IpAddr::V4(server),
            lport,
            8080,
            0,
        )
        .expect("r2's choice")
        .into_iter()
        .map(Some)
        .collect();
    let path: Vec<Option<IpAddr>> = (1..=5).map(|t| hops.get(&t).and_then(|h| h.0)).collect();
    assert_eq!(path, truth, "the flow's own path, every hop: {out}");
    let rep = d.wait().expect("download report");
    assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
}

/// A capture ring that overflows (a 1 MiB ring, the tracer stopped for 1.5 s under an
/// unpaced download): the run still prints its result, and says how many packets the kernel
/// dropped, the same count as `--stats`.
#[test]
fn a_capture_ring_that_overflows_is_reported_with_its_count() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("lab");
    let server = lab.server_addr();
    let _srv = tcp_server_on(&lab, SocketAddr::new(server.into(), 8080), 0).expect("srv");
    let d = tcp_download_to(
        &lab,
        SocketAddr::new(server.into(), 8080),
        0,
        1 << 40,
        false,
    )
    .expect("download");
    d.wait_established(SECS(10)).expect("established");
    let remote = format!("{server}:8080");
    let t = Tracer::start(
        &lab,
        &[
            "monitor",
            "-i",
            "eth0",
            "--tcp",
            "--remote",
            &remote,
            "--capture-buffer",
            "1",
            "--count",
            "1",
            "--rate",
            "4",
            "-q",
            "1",
            "-w",
            "1",
            "--retries",
            "3",
            "--stats",
        ],
    );
    std::thread::sleep(MS(400));
    t.signal(Signal::SIGSTOP);
    std::thread::sleep(MS(1500));
    t.signal(Signal::SIGCONT);
    let (code, out, err) = t.finish(SECS(60));
    drop(d);
    assert_eq!(code, Some(0), "{out}{err}");
    let r: TraceResult = common::record(out.lines().next().expect("a result"));
    assert_eq!(r.hops.len(), lab.hop_count(), "{out}");
    let warned: u64 = err
        .lines()
        .find_map(|l| {
            l.strip_prefix("service-traceroute: warning: the capture dropped ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("a warning with the count: {err}"));
    assert!(warned > 0, "{err}");
    assert!(
        err.contains(&format!("dropped {warned};")),
        "the same count in the stats: {err}"
    );
}

/// A tracer killed with SIGKILL leaves its shield table (`svctr_<pid>`) behind; the next
/// start removes the tables of processes that are gone. Output that cannot be written ends a
/// run as documented (`/dev/full`: status 2, one line; a closed pipe: status 0, quietly),
/// with the shield up, and no table stays behind either way.
#[test]
fn no_shield_table_outlives_its_process() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("lab");
    let killed = Tracer::start(
        &lab,
        &["monitor", "-i", "eth0", "--udp", "--duration", "60"],
    );
    let table = format!("svctr_{}", killed.pid());
    let end = Instant::now() + SECS(10);
    while shield_tables(&lab).len() < 2 {
        assert!(Instant::now() < end, "the shield is up at start");
        std::thread::sleep(MS(50));
    }
    killed.signal(Signal::SIGKILL);
    let _ = killed.finish(SECS(5));
    // One table per family (ip, ip6), both left behind.
    assert_eq!(
        shield_tables(&lab),
        vec![table.clone(), table],
        "left behind"
    );
    // The next start (nothing to trace: status 1) removes it, and its own at exit.
    let (code, _, err) =
        Tracer::start(&lab, &["flow", "-i", "eth0", "--udp", "--duration", "1"]).finish(SECS(30));
    assert_eq!(code, Some(1), "{err}");
    assert!(shield_tables(&lab).is_empty(), "{:?}", shield_tables(&lab));

    // Output that fails, with a UDP flow traced under the shield.
    let server = lab.server_addr();
    let _u = udp_server_on(&lab, SocketAddr::new(server.into(), 9000)).expect("udp");
    let dst = SocketAddr::new(server.into(), 9000);
    let session = udp_session_to(&lab, dst, 0, 400, MS(20), true).expect("session");
    session.wait_started(SECS(10)).expect("started");
    let remote = dst.to_string();
    let mut c = lab.command(lab.client_ns(), TRACER);
    c.args([
        "flow",
        "-i",
        "eth0",
        "--udp",
        "--remote",
        &remote,
        "--duration",
        "10",
    ])
    .stdout(std::fs::File::create("/dev/full").expect("/dev/full"))
    .stderr(Stdio::piped());
    let o = c.output().expect("tracer");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("writing output") && err.contains("No space left"),
        "{err}"
    );
    assert!(shield_tables(&lab).is_empty(), "{:?}", shield_tables(&lab));
    // A reader that goes away after the first line.
    let mut t = Tracer::start(
        &lab,
        &[
            "monitor",
            "-i",
            "eth0",
            "--udp",
            "--remote",
            &remote,
            "--retrace-after",
            "200ms",
            "--duration",
            "30",
        ],
    );
    let mut first = String::new();
    BufReader::new(t.0.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("a first result");
    let v: serde_json::Value = common::record(&first);
    assert_eq!(v["record_type"], "flow-trace", "{first}");
    let closed = Instant::now();
    let (code, _, err) = t.finish(SECS(5));
    assert_eq!(code, Some(0), "{err}");
    assert!(closed.elapsed() < SECS(3), "ended once its reader left");
    assert!(err.is_empty(), "{err}");
    assert!(shield_tables(&lab).is_empty(), "{:?}", shield_tables(&lab));
    let rep = session.wait().expect("session");
    assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
}

/// Which router of the lab an address belongs to, and at which TTL it may answer.
fn router_at(lab: &Lab, ttl: u8, addr: IpAddr) -> bool {
    lab.all_paths_ip(addr.is_ipv6())
        .iter()
        .any(|p| p.get(usize::from(ttl) - 1) == Some(&addr))
}

/// Routers with Linux's default ICMP rate limit (per destination a burst of 6, then one a
/// second): a single trace (3 probes per hop) gets every hop; four more traces at once get
/// what the routers' budget leaves (the limit is real: fewer answers than probes, and no
/// router answers more than its budget), never a wrong address, and each still ends at the
/// destination, which answered (the gap rule ends only a path that went silent); then
/// `--retries` with a 1 s timeout gets every hop back.
#[test]
fn routers_that_rate_limit_icmp() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig {
        router_icmp_defaults: true,
        ..LabConfig::default()
    })
    .expect("lab");
    let server = IpAddr::V4(lab.server_addr());
    let dst = server.to_string();
    let trace = |extra: &[&str]| {
        let mut args = vec!["trace", "-n", "--format", "json"];
        args.extend(extra);
        args.push(&dst);
        Tracer::start(&lab, &args)
    };
    let parse = |(code, out, err): (Option<i32>, String, String)| -> TracerouteResult {
        assert_eq!(code, Some(0), "{out}{err}");
        common::record(&out)
    };
    let t0 = Instant::now();
    let one = parse(trace(&["-q", "3"]).finish(SECS(30)));
    assert_eq!(one.stop_reason, StopReason::RemoteReached, "{one:?}");
    assert_eq!(one.hops.len(), lab.hop_count() + 1, "{one:?}");
    for h in &one.hops {
        assert!(
            h.probes.iter().all(|p| p.addr.is_some()),
            "a burst of 6 covers 3: {one:?}"
        );
    }
    let many: Vec<Tracer> = (0..4).map(|_| trace(&["-q", "3"])).collect();
    let many: Vec<TracerouteResult> = many
        .into_iter()
        .map(|t| parse(t.finish(SECS(30))))
        .collect();
    let window = t0.elapsed();
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    let (mut sent, mut silent) = (0, 0);
    for r in std::iter::once(&one).chain(&many) {
        for h in r
            .hops
            .iter()
            .filter(|h| h.probes.iter().all(|p| p.addr != Some(server)))
        {
            for p in &h.probes {
                sent += 1;
                let Some(a) = p.addr else {
                    silent += 1;
                    continue;
                };
                assert!(
                    router_at(&lab, h.ttl, a),
                    "TTL {} answered by {a}: {r:?}",
                    h.ttl
                );
                let owner = lab.addr_owner_ip(a).expect("a lab router").to_string();
                *answers.entry(owner).or_default() += 1;
            }
        }
    }
    for r in &many {
        assert_eq!(r.stop_reason, StopReason::RemoteReached, "{r:?}");
    }
    eprintln!("rate-limited routers: {silent} of {sent} probes silent in {window:?}; answers per router {answers:?}");
    // Each router's budget over the window: the burst, and one more per second begun.
    let budget = 6 + window.as_secs() as usize + 1;
    for (router, n) in &answers {
        assert!(
            *n <= budget,
            "{router} answered {n} > {budget} in {window:?}: {answers:?}"
        );
    }
    assert!(
        silent > 0 && silent < sent,
        "rate-limited: {silent} of {sent} silent"
    );
    // r1 saw every TTL-1 probe: 15 in well under the time its budget needs.
    assert!(answers.get("r1").copied().unwrap_or(0) < 15, "{answers:?}");

    let healed = parse(trace(&["-q", "1", "-w", "1", "--retries", "4"]).finish(SECS(60)));
    assert_eq!(healed.stop_reason, StopReason::RemoteReached, "{healed:?}");
    let path: Vec<Option<IpAddr>> = healed
        .hops
        .iter()
        .take(lab.hop_count())
        .map(|h| h.probes.iter().find_map(|p| p.addr))
        .collect();
    assert!(
        lab.branch_of_path_ip(&path).is_some_and(|k| lab
            .path_ip(k, None, false)
            .into_iter()
            .map(Some)
            .eq(path.iter().copied())),
        "every hop after retries: {healed:?}"
    );
}

/// Routers that never answer, IPv4 and IPv6: one silent router in the middle is a `*` and the
/// trace goes on to the destination even with `--max-missing 1` (a higher TTL answered);
/// with every router past r2 and the destination silent, the trace stops after exactly
/// `--max-missing` silent hops (`max-missing`), and with `--max-missing 0` it goes on to
/// `-m` (`max-ttl`).
#[test]
fn routers_that_never_answer_and_the_stop_rules() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("lab");
    let quiet = "table inet quiet {\n chain out {\n  type filter hook output priority 0;\n  \
                 icmp type { time-exceeded, destination-unreachable } drop\n  \
                 icmpv6 type { time-exceeded, destination-unreachable } drop\n }\n}\n";
    let r3 = lab.router_ns("r3").expect("r3").to_string();
    nft_in(&lab, &r3, quiet);
    let run = |dst: &str, extra: &[&str]| {
        let mut args = vec!["trace", "-n", "-q", "1", "-w", "500ms"];
        args.extend(extra);
        args.push(dst);
        let (code, out, err) = Tracer::start(&lab, &args).finish(SECS(60));
        assert_eq!(code, Some(0), "{out}{err}");
        out
    };
    for server in [
        IpAddr::V4(lab.server_addr()),
        IpAddr::V6(lab.server_addr6()),
    ] {
        let dst = server.to_string();
        let out = run(&dst, &["--max-missing", "1"]);
        let hops = text_hops(&out);
        assert_eq!(hops.get(&4).map(|h| h.0), Some(None), "r3 silent: {out}");
        for ttl in [1, 2, 3, 5] {
            assert!(hops[&ttl].0.is_some(), "{out}");
        }
        assert_eq!(hops.get(&6).and_then(|h| h.0), Some(server), "{out}");
        assert!(out.contains("stop: remote-reached"), "{out}");
    }
    for node in ["b1", "b2", "b3", "r4"] {
        let ns = lab.router_ns(node).expect("router").to_string();
        nft_in(&lab, &ns, quiet);
    }
    let server_ns = lab.server_ns().to_string();
    nft_in(&lab, &server_ns, quiet);
    for server in [
        IpAddr::V4(lab.server_addr()),
        IpAddr::V6(lab.server_addr6()),
    ] {
        let dst = server.to_string();
        let out = run(&dst, &["--max-missing", "2"]);
        let hops = text_hops(&out);
        assert_eq!(
            hops.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3, 4],
            "{out}"
        );
        assert!(hops[&1].0.is_some() && hops[&2].0.is_some(), "{out}");
        assert!(hops[&3].0.is_none() && hops[&4].0.is_none(), "{out}");
        assert!(out.contains("stop: max-missing"), "{out}");
        let out = run(&dst, &["--max-missing", "0", "-m", "7"]);
        let hops = text_hops(&out);
        assert_eq!(hops.len(), 7, "{out}");
        assert!(out.contains("stop: max-ttl"), "{out}");
    }
}

/// Reads `--stats`' counters: "watched W, evicted E", "traces T".
fn watched_evicted(err: &str) -> (u64, u64, u64) {
    let line = err
        .lines()
        .find(|l| l.contains("stats:"))
        .unwrap_or_else(|| panic!("stats: {err}"));
    let after = |key: &str| -> u64 {
        line.split(key)
            .nth(1)
            .and_then(|s| s.trim_start().split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {line}"))
    };
    (after("watched "), after("evicted "), after("; traces "))
}

/// The capture's drops in `--stats`' line.
fn capture_drops(err: &str) -> u64 {
    err.lines()
        .find(|l| l.contains("stats:"))
        .and_then(|l| l.split("dropped ").nth(1))
        .and_then(|s| s.split(';').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("dropped in {err}"))
}

/// A flood of new flows: 1,000,000 distinct 5-tuples (UDP datagrams to this host from r1) in
/// under a minute, into a `monitor` of every UDP flow: the tables stay bounded at `--max-flows`
/// (the oldest evicted and counted: the end says so), memory stays flat once they are full,
/// and a real UDP session that starts in the middle of the flood is still traced.
#[test]
fn a_flood_of_new_flows_keeps_every_table_bounded() {
    const FLOWS: u64 = 1_000_000;
    const MAX_FLOWS: u64 = 20_000;
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("lab");
    let client = lab.client_addr();
    let r1: Ipv4Addr = gateway(&lab).parse().unwrap();
    // The flood's datagrams stop at the client's input hook (after the capture saw them): no
    // port-unreachable storm back, which is not what this test measures.
    let ns = lab.client_ns().to_string();
    nft_in(
        &lab,
        &ns,
        "table inet flood {\n chain in {\n  type filter hook input priority 0;\n  \
         ip saddr 198.18.1.1 udp dport 1-64 drop\n }\n}\n",
    );
    let server = lab.server_addr();
    let _u = udp_server_on(&lab, SocketAddr::new(server.into(), 9000)).expect("udp");
    let max = MAX_FLOWS.to_string();
    let t = Tracer::start(
        &lab,
        &[
            "monitor",
            "-i",
            "eth0",
            "--udp",
            "--max-flows",
            &max,
            "--retrace-after",
            "never",
            "--duration",
            "120",
            "--stats",
        ],
    );
    let pid = t.pid();
    std::thread::sleep(MS(500));
    let flood = {
        let ns = lab.router_ns("r1").expect("r1").to_string();
        std::thread::spawn(move || udp_flood(&ns, r1, client, FLOWS, SECS(45)))
    };
    // Memory once the tables are full (a quarter in), then every 2 s.
    std::thread::sleep(SECS(12));
    let full = process_rss_kib(pid);
    let dst = SocketAddr::new(server.into(), 9000);
    let session = udp_session_to(&lab, dst, 0, 100, MS(20), true).expect("session");
    let mut samples = vec![full];
    while !flood.is_finished() {
        std::thread::sleep(SECS(2));
        samples.push(process_rss_kib(pid));
    }
    let peak = samples.iter().copied().max().unwrap_or(full);
    let (sent, took) = flood.join().unwrap().expect("flood");
    assert_eq!(sent, FLOWS, "every datagram of the flood went");
    assert!(
        took < SECS(60),
        "a million flows in under a minute: {took:?}"
    );
    let rep = session.wait().expect("session");
    t.signal(Signal::SIGINT);
    let (code, out, err) = t.finish(SECS(30));
    assert_eq!(code, Some(0), "{err}");
    let (watched, evicted, traces) = watched_evicted(&err);
    eprintln!(
        "flood: {sent} datagrams in {took:?}; watched {watched}, evicted {evicted}; RSS {full} KiB \
         when full, peak {peak} KiB ({samples:?})"
    );
    // Every flow of the flood was taken, or its packet counted as dropped by the capture
    // (a loaded machine; the end says so).
    let dropped = capture_drops(&err);
    assert!(
        watched + dropped >= FLOWS,
        "every flow seen or counted: {err}"
    );
    assert!(watched >= FLOWS / 4, "{err}");
    // At most --max-flows flows held at once: every other flow was evicted and counted, but
    // the traced ones.
    assert!(
        evicted > 0 && evicted + MAX_FLOWS + traces >= watched,
        "at most --max-flows flows held, the rest evicted and counted: {err}"
    );
    assert!(
        err.contains(&format!(
            "more than {MAX_FLOWS} flows at once (--max-flows)"
        )),
        "{err}"
    );
    // Flat: the last third of the flood holds no more than the first third did (plus 5 %:
    // the allocator's own ups and downs), while 650,000 more flows came and went.
    let third = samples.len() / 3;
    let first = samples[..third.max(1)].iter().copied().max().unwrap_or(0);
    let last = samples[samples.len() - third.max(1)..]
        .iter()
        .copied()
        .max()
        .unwrap_or(0);
    assert!(
        samples.len() >= 9 && last <= first + first / 20,
        "memory flat once the tables are full: {samples:?} KiB"
    );
    let traced: Vec<TraceResult> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| common::record(v.to_string()))
        .collect();
    assert!(
        traced
            .iter()
            .any(|r| r.flow.remote.port == 9000 && r.hops.len() == lab.hop_count()),
        "the real session was traced in the middle of the flood: {out}"
    );
    assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
}

//! What a network engineer meets in the first hour, in the namespace lab: a closed output, a
//! connection stuck in its handshake, hops printed as they come, one exit-status rule,
//! traceroute(8)'s habits, and SIGHUP. Root only (see `svctr_lab::lab_test_guard`).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::{nft_in, record, stderr, tracer_for, TRACER};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use svctr_core::{Protocol, StopReason, TraceResult, TracerouteResult};
use svctr_lab::{
    lab_test_guard, tcp_download, tcp_download_patient, tcp_server, tcp_server_on, udp_server_on,
    udp_session_to, Lab, LabConfig, Proto,
};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Starts the tracer in the client namespace with stdout piped (`ip netns exec` execs it, so
/// the child's pid is the tracer's).
fn spawn(lab: &Lab, args: &[&str]) -> Child {
    let mut c = lab.command(lab.client_ns(), TRACER);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.spawn().expect("tracer starts")
}

/// Waits at most `limit` for `child` to exit.
fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Ends `child` whatever happens (a test that fails must not leave it running).
struct Reaper(Option<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).expect("kill");
}

fn rest(child: Child) -> Output {
    child.wait_with_output().expect("output")
}

/// A firewall on r3 that drops the SYNs to port 8099 (what makes a connection "hang").
const SYN_DROP: &str = "table inet blk {\n chain f {\n  type filter hook forward priority 0;\n  tcp dport 8099 tcp flags syn drop\n }\n}\n";

fn nft_tables(lab: &Lab) -> String {
    let out = lab
        .command(lab.client_ns(), "nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `monitor | head -1`: once the reader is gone the run ends at once, status 0, and so does a
/// run whose output fails otherwise (`/dev/full`: status 2, one line).
#[test]
fn a_closed_output_ends_the_run() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let _srv = tcp_server(&lab, 8080, 200_000).expect("tcp server");
    let _d: Vec<_> = (0..3)
        .map(|i| tcp_download(&lab, 8080, 34000 + i, 1 << 30, false).expect("download"))
        .collect();
    for d in &_d {
        d.wait_established(SECS(10)).expect("established");
    }
    // Re-traced every 200 ms: this monitor always has something more to print.
    let args = [
        "monitor",
        "-i",
        "eth0",
        "--tcp",
        "--retrace-after",
        "200ms",
        "--duration",
        "60",
    ];
    let mut child = spawn(&lab, &args);
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("a first line");
    let first: serde_json::Value = record(&line);
    assert_eq!(first["record_type"], "flow-trace", "{line}");
    drop(out); // `head -1` exits
    let closed = Instant::now();
    let mut reaper = Reaper(Some(child));
    let status = wait_for(reaper.0.as_mut().unwrap(), SECS(5))
        .expect("the run ends once its output is closed");
    let took = closed.elapsed();
    let child = reaper.0.take().unwrap();
    let err = stderr(&rest(child));
    assert!(status.success(), "{status:?}: {err}");
    assert!(took < SECS(2), "ended {took:?} after the reader left");
    assert!(
        err.is_empty(),
        "nothing to say about a closed output: {err}"
    );

    // A full disk: an error, status 2.
    let mut c = lab.command(lab.client_ns(), TRACER);
    c.args([
        "monitor",
        "-i",
        "eth0",
        "--tcp",
        "--duration",
        "10",
        "--count",
        "1",
    ])
    .stdout(std::fs::File::create("/dev/full").expect("/dev/full"))
    .stderr(Stdio::piped());
    let o = c.output().expect("tracer");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("writing output") && err.contains("No space left"),
        "{err}"
    );
}

/// "It hangs": a connection whose SYNs a firewall on r3 drops is traced with copies of its SYN:
/// the routers before the firewall answer (those of the flow's own path), the trace stops
/// where the SYNs die, and the connection is left alone: still connecting, and connected once
/// the firewall lets it through (the errors the copies draw never reached its socket). Over
/// IPv6 it is not traced: exit 1 and the reason.
#[test]
fn a_connection_stuck_in_its_handshake_is_traced_where_its_syns_die() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let _s4 = tcp_server_on(&lab, "0.0.0.0:8099".parse().unwrap(), 0).expect("server");
    let _s6 = tcp_server_on(&lab, "[::]:8099".parse().unwrap(), 0).expect("server v6");
    let r3 = lab.router_ns("r3").expect("r3").to_string();
    let nft = |script: &str| nft_in(&lab, &r3, script);
    nft(SYN_DROP);
    let dst = SocketAddr::new(IpAddr::V4(lab.server_addr()), 8099);
    let app = tcp_download_patient(&lab, dst, 0, 1000, false, SECS(60)).expect("connect starts");
    let out = tracer_for(
        &lab,
        &[
            "flow",
            "-i",
            "eth0",
            "--tcp",
            "--remote",
            &dst.to_string(),
            "--duration",
            "8",
            "-w",
            "1",
            "--format",
            "jsonl",
        ],
        SECS(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r: TraceResult = record(&out.stdout);
    assert!(r.syn_copies, "{r:?}");
    assert_eq!(r.stop_reason, StopReason::MaxMissing, "{r:?}");
    let truth = lab
        .expected_path_ip(
            Proto::Tcp,
            r.flow.local.ip,
            dst.ip(),
            r.flow.local.port,
            8099,
            0,
        )
        .expect("ground truth");
    // r3 (TTL 4) answers: the TTL check comes before its forward filter; TTL 5 dies there.
    for hop in &r.hops {
        for p in &hop.probes {
            if hop.ttl <= 4 {
                assert_eq!(p.addr, Some(truth[usize::from(hop.ttl) - 1]), "{r:?}");
            } else {
                assert_eq!(p.addr, None, "past the firewall: {r:?}");
            }
        }
    }
    assert!(
        !app.started(),
        "still connecting: the copies' errors never reached it"
    );
    nft("delete table inet blk");
    app.wait_established(SECS(20))
        .expect("the connection completes once the SYNs get through");
    assert!(!nft_tables(&lab).contains("svctr_"), "shield removed");

    // IPv6: not traced, and why.
    nft(SYN_DROP);
    let dst6 = SocketAddr::new(IpAddr::V6(lab.server_addr6()), 8099);
    let _app6 = tcp_download_patient(&lab, dst6, 0, 1000, false, SECS(60)).expect("connect starts");
    let out = tracer_for(
        &lab,
        &[
            "flow",
            "-i",
            "eth0",
            "--tcp",
            "--remote",
            &dst6.to_string(),
            "--duration",
            "4",
        ],
        SECS(60),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not traced") && err.contains("IPv6"), "{err}");
    nft("delete table inet blk");
}

/// Hops are printed as soon as they are known: with probes paced at 2 per second, the first
/// hop comes long before the last; with routers past r3 silent and `-w 2`, the three that
/// answer come at once, not after the wait.
#[test]
fn trace_prints_each_hop_as_soon_as_it_is_known() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let lines_with_times = |args: &[&str]| -> Vec<(Duration, String)> {
        let t0 = Instant::now();
        let mut child = spawn(&lab, args);
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let lines = out
            .lines()
            .map(|l| (t0.elapsed(), l.expect("line")))
            .collect();
        let status = child.wait().expect("wait");
        assert!(status.success());
        lines
    };
    let server = lab.server_addr().to_string();
    let lines = lines_with_times(&["trace", "-n", "--rate", "2", "-q", "1", &server]);
    let first_hop = lines
        .iter()
        .find(|(_, l)| l.starts_with(" 1 "))
        .expect("hop 1")
        .0;
    let last = lines.last().expect("lines").0;
    assert!(
        last >= first_hop + Duration::from_millis(1500),
        "hop 1 at {first_hop:?}, the end at {last:?}: {lines:?}"
    );
    assert!(lines[0].1.starts_with("traceroute to "), "{lines:?}");
    assert!(lines
        .iter()
        .any(|(_, l)| l.starts_with("stop: remote-reached")));

    let r3 = lab.router_ns("r3").expect("r3").to_string();
    nft_in(
        &lab,
        &r3,
        "table inet blk {\n chain f {\n  type filter hook forward priority 0;\n  udp dport 33434 drop\n }\n}\n",
    );
    let lines = lines_with_times(&[
        "trace",
        "-n",
        "-w",
        "2",
        "-q",
        "1",
        "--max-missing",
        "2",
        &server,
    ]);
    let third = lines
        .iter()
        .find(|(_, l)| l.starts_with(" 3 "))
        .expect("hop 3")
        .0;
    let last = lines.last().expect("lines").0;
    assert!(
        third < Duration::from_millis(1000),
        "hop 3 at {third:?}: {lines:?}"
    );
    assert!(last >= SECS(2), "the silent hops waited -w 2: {lines:?}");
}

/// One rule: 0 when results were printed (an interrupted run with results too), 1 when none
/// were (nothing matched, interrupted first), 2 for bad input. The same for every command.
#[test]
fn exit_status_follows_one_rule() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let nobody = format!("{}:9", lab.server_addr());
    let code = |args: &[&str]| tracer_for(&lab, args, SECS(60)).status.code();
    for format in ["text", "json", "jsonl"] {
        assert_eq!(
            code(&[
                "flow",
                "-i",
                "eth0",
                "--tcp",
                "--remote",
                &nobody,
                "--duration",
                "1",
                "--format",
                format
            ]),
            Some(1),
            "flow, nothing matched, {format}"
        );
        assert_eq!(
            code(&[
                "monitor",
                "-i",
                "eth0",
                "--tcp",
                "--remote",
                &nobody,
                "--duration",
                "1",
                "--format",
                format
            ]),
            Some(1),
            "monitor, nothing matched, {format}"
        );
    }
    let interrupted = |args: &[&str], sig: Signal| -> Output {
        let child = spawn(&lab, args);
        std::thread::sleep(Duration::from_millis(800));
        signal(&child, sig);
        rest(child)
    };
    for args in [
        vec!["flow", "-i", "eth0", "--tcp", "--remote", &nobody],
        vec![
            "flow", "-i", "eth0", "--tcp", "--remote", &nobody, "--format", "json",
        ],
        vec![
            "monitor", "-i", "eth0", "--tcp", "--remote", &nobody, "--format", "json",
        ],
        vec!["compare", "-i", "eth0", "--tcp", "--remote", &nobody],
    ] {
        let o = interrupted(&args, Signal::SIGINT);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("interrupted before"), "{args:?}: {err}");
    }
    // With results, an interrupted monitor exits 0.
    let _srv = tcp_server(&lab, 8080, 100_000).expect("server");
    let d = tcp_download(&lab, 8080, 35000, 1 << 30, false).expect("download");
    d.wait_established(SECS(10)).expect("established");
    let remote = format!("{}:8080", lab.server_addr());
    let mut child = spawn(
        &lab,
        &["monitor", "-i", "eth0", "--tcp", "--remote", &remote],
    );
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("a result");
    signal(&child, Signal::SIGTERM);
    let o = rest(child);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Bad input: 2.
    assert_eq!(code(&["trace", "-N", "0", "198.19.1.2"]), Some(2));
    assert_eq!(code(&["trace", "--parallel", "0", "198.19.1.2"]), Some(2));
    assert_eq!(
        code(&["compare", "-i", "eth0", "--remote", &remote]),
        Some(2)
    );
}

/// Captured probes of a trace (the client's eth0): IPv4 total length, TOS, DF.
fn probe_headers(
    lab: &Lab,
    args: &[&str],
    filter: &str,
) -> (Output, Vec<(Duration, u16, u8, bool)>) {
    let cap = lab
        .capture(lab.client_ns(), "eth0", filter)
        .expect("capture");
    let out = tracer_for(lab, args, SECS(60));
    let pkts = cap.stop().expect("packets");
    let heads = pkts
        .iter()
        .filter_map(|p| {
            let ip = p.frame.get(14..34)?;
            (ip[0] >> 4 == 4).then(|| {
                (
                    p.time,
                    u16::from_be_bytes([ip[2], ip[3]]),
                    ip[1],
                    ip[6] & 0x40 != 0,
                )
            })
        })
        .collect();
    (out, heads)
}

/// traceroute(8)'s habits: `HOST PACKETLEN`, -s, -t, -F, -z, -M, -P, the long names of the
/// flow tracer's options (and the short ones in `flow`), IPv4 first for a dual-stack name, the
/// name in the header, -A refused, ip_id only over IPv4.
#[test]
fn trace_follows_traceroute_habits() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let server = lab.server_addr().to_string();
    let udp_out = format!("udp and dst host {server}");

    let (out, heads) = probe_headers(&lab, &["trace", "-n", "-q", "1", &server, "60"], &udp_out);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("traceroute to ").count(),
        1,
        "60 is a length, not a target: {text}"
    );
    assert!(!heads.is_empty());
    assert!(
        heads.iter().all(|h| h.1 == 60),
        "every probe 60 bytes: {heads:?}"
    );
    assert!(
        heads.iter().all(|h| !h.3),
        "no DF by default, as traceroute(8)"
    );

    let (out, heads) = probe_headers(
        &lab,
        &["trace", "-n", "-q", "1", "-t", "40", "-F", &server],
        &udp_out,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        heads.iter().all(|h| h.2 == 40 && h.3),
        "TOS 40 and DF: {heads:?}"
    );

    let (out, heads) = probe_headers(
        &lab,
        &["trace", "-n", "-q", "1", "-m", "3", "-z", "200", &server],
        &udp_out,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let gaps: Vec<Duration> = heads
        .windows(2)
        .map(|w| w[1].0.saturating_sub(w[0].0))
        .collect();
    assert_eq!(heads.len(), 3, "{heads:?}");
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(180)),
        "-z 200: {gaps:?}"
    );

    let json = |args: &[&str]| -> TracerouteResult {
        let mut all = vec!["trace", "-n", "--format", "json", "-q", "1", "-w", "1"];
        all.extend_from_slice(args);
        let out = tracer_for(&lab, &all, SECS(60));
        assert!(out.status.success(), "{all:?}: {}", stderr(&out));
        record(&out.stdout)
    };
    let client = lab.client_addr().to_string();
    assert_eq!(json(&["-s", &client, &server]).source.to_string(), client);
    assert_eq!(json(&["-M", "icmp", &server]).protocol, Protocol::Icmp);
    assert_eq!(
        json(&["-P", "6", "-p", "8080", &server]).protocol,
        Protocol::Tcp
    );
    let out = tracer_for(
        &lab,
        &[
            "trace",
            "-n",
            "--format",
            "json",
            "--first-ttl",
            "2",
            "--max-ttl",
            "3",
            "--probes",
            "2",
            "--timeout",
            "1",
            &server,
        ],
        SECS(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r: TracerouteResult = record(&out.stdout);
    let ttls: Vec<u8> = r.hops.iter().map(|h| h.ttl).collect();
    assert_eq!(ttls, vec![2, 3]);
    assert!(r.hops.iter().all(|h| h.probes.len() == 2));
    let r = json(&["server.lab.test"]);
    assert!(
        r.destination.is_ipv4(),
        "IPv4 first for a dual-stack name: {r:?}"
    );
    let r6 = json(&["-6", "server.lab.test"]);
    assert!(r6.destination.is_ipv6());
    // ip_id is the IPv4 identification: IPv6 probes have none.
    let raw = |args: &[&str]| {
        let mut all = vec!["trace", "-n", "--format", "jsonl", "-q", "1", "-w", "1"];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&tracer_for(&lab, &all, SECS(60)).stdout).into_owned()
    };
    assert!(raw(&[&server]).contains("\"ip_id\""));
    let v6 = raw(&[&lab.server_addr6().to_string()]);
    assert!(!v6.contains("\"ip_id\"") && v6.contains("\"tag\""), "{v6}");
    let out = tracer_for(
        &lab,
        &["trace", "-n", "-q", "1", "server.lab.test"],
        SECS(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!(
            "traceroute to server.lab.test ({server}) port 33434"
        )),
        "{text}"
    );

    for (args, text) in [
        (vec!["trace", "-A", "198.19.1.2"], "AS path"),
        (vec!["trace", "-M", "tcpconn", "198.19.1.2"], "-M tcpconn"),
        (
            vec!["trace", "-s", "198.18.9.9", "198.19.1.2"],
            "cannot send from 198.18.9.9",
        ),
    ] {
        let out = tracer_for(&lab, &args, SECS(60));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(text), "{args:?}: {err}");
    }

    // flow takes traceroute's short options too.
    let _srv = tcp_server(&lab, 8080, 100_000).expect("server");
    let d = tcp_download(&lab, 8080, 36000, 1 << 30, false).expect("download");
    d.wait_established(SECS(10)).expect("established");
    let out = tracer_for(
        &lab,
        &[
            "flow",
            "-i",
            "eth0",
            "--tcp",
            "--remote",
            &format!("{server}:8080"),
            "-f",
            "2",
            "-m",
            "3",
            "-q",
            "1",
            "-w",
            "1",
            "--format",
            "jsonl",
        ],
        SECS(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r: TraceResult = record(&out.stdout);
    assert_eq!(r.hops.iter().map(|h| h.ttl).collect::<Vec<_>>(), vec![2, 3]);
}

/// SIGHUP (the terminal closed) ends a run like SIGTERM: what was traced is printed, status
/// 0, and the shield's nftables table is gone.
#[test]
fn sighup_ends_the_run_like_sigterm() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let _u = udp_server_on(&lab, "0.0.0.0:9000".parse().unwrap()).expect("udp server");
    let dst = SocketAddr::new(IpAddr::V4(lab.server_addr()), 9000);
    let s =
        udp_session_to(&lab, dst, 0, 100_000, Duration::from_millis(20), false).expect("session");
    s.wait_started(SECS(10)).expect("started");
    let mut child = spawn(
        &lab,
        &["monitor", "-i", "eth0", "--udp", "--retrace-after", "300ms"],
    );
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("a result");
    let table = format!("svctr_{}", child.id());
    assert!(nft_tables(&lab).contains(&table), "the shield is up");
    signal(&child, Signal::SIGHUP);
    let mut reaper = Reaper(Some(child));
    let status = wait_for(reaper.0.as_mut().unwrap(), SECS(5)).expect("SIGHUP ends the run");
    assert!(status.success(), "{status:?}");
    assert!(!nft_tables(&lab).contains(&table), "the table is removed");
    let _ = Proto::Udp;
}

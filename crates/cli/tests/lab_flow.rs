//! End-to-end tests of `service-traceroute flow` in the namespace lab, checked against ground
//! truth (the ECMP router's own `ip route get` for each flow's 5-tuple).
//!
//! They need root. Without root they are skipped with a message, unless `CI` is set: then they
//! fail, so they can never be skipped silently in CI.

#[path = "common/record.rs"]
mod record;
use record::record;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Output;
use std::time::Duration;

use svctr_core::{StopReason, TraceResult};
use svctr_lab::{
    output_with_timeout, parse_traceroute, tcp_download, tcp_download_to, tcp_server,
    tcp_server_on, udp_server, udp_server_on, udp_session, udp_session_to, Lab, LabConfig, Proto,
};

fn root_guard() -> Option<std::sync::MutexGuard<'static, ()>> {
    svctr_lab::lab_test_guard()
}

const TRACER: &str = env!("CARGO_BIN_EXE_service-traceroute");

/// Runs the tracer in the client namespace.
fn tracer(lab: &Lab, args: &[&str]) -> Output {
    let mut c = lab.command(lab.client_ns(), TRACER);
    c.args(args);
    output_with_timeout(&mut c, None, Duration::from_secs(90)).expect("tracer runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the tracer with `--format jsonl` and parses its results.
fn trace_jsonl(lab: &Lab, args: &[&str]) -> Vec<TraceResult> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--format", "jsonl", "--iface", lab.client_iface()]);
    let out = tracer(lab, &all);
    assert!(out.status.success(), "tracer failed: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(record)
        .collect()
}

/// Every probe of every hop answered by exactly the ground-truth router.
fn assert_path_matches(r: &TraceResult, expected: &[Ipv4Addr]) {
    assert_eq!(r.stop_reason, StopReason::RemoteDistance, "{r:?}");
    assert_eq!(
        r.hops.len(),
        expected.len(),
        "hop count for {:?}: {r:?}",
        r.flow
    );
    for (hop, want) in r.hops.iter().zip(expected) {
        for p in &hop.probes {
            assert_eq!(
                p.addr,
                Some(IpAddr::V4(*want)),
                "ttl {} of {:?}: {r:?}",
                hop.ttl,
                r.flow
            );
            let rtt = p.rtt_ms.expect("rtt");
            assert!(rtt > 0.0 && rtt < 1000.0, "rtt {rtt}");
            assert_eq!(p.icmp_type, Some(11));
        }
    }
}

/// Each result's path equals its flow's ground truth; the flows used at least two branches.
fn assert_all_match(results: &[TraceResult], expected: &BTreeMap<u16, Vec<Ipv4Addr>>) {
    assert_eq!(results.len(), expected.len());
    let mut branches = BTreeSet::new();
    for r in results {
        let want = &expected[&r.flow.local.port];
        assert_path_matches(r, want);
        branches.insert(want[2]);
    }
    assert!(
        branches.len() >= 2,
        "flows spread over branches {branches:?}"
    );
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// ≥20 TCP flows (already running when the tracer starts) and ≥20 UDP flows (starting after
/// it), each on its own ports: every hop equals the flow's ground-truth router.
fn accuracy(nat: bool) {
    let lab = Lab::build(LabConfig {
        nat,
        ..LabConfig::default()
    })
    .expect("build lab");
    let server = lab.server_addr().to_string();
    let n = 20u16;

    // TCP: flows already running.
    let _srv = tcp_server(&lab, 8080, 400_000).expect("tcp server");
    let downloads: Vec<_> = (0..n)
        .map(|i| tcp_download(&lab, 8080, 31000 + i, 2_000_000, true).expect("download"))
        .collect();
    let mut expected = BTreeMap::new();
    for d in &downloads {
        let port = d.wait_established(secs(10)).expect("established");
        expected.insert(
            port,
            lab.expected_path(Proto::Tcp, port, 8080)
                .expect("ground truth"),
        );
    }
    let results = trace_jsonl(
        &lab,
        &[
            "flow",
            "--tcp",
            "--remote",
            &format!("{server}:8080"),
            "--count",
            "20",
            "--duration",
            "30",
        ],
    );
    assert_all_match(&results, &expected);
    for d in downloads {
        let rep = d.wait().expect("download report");
        assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
    }

    // UDP: flows that start after the tracer.
    let usrv = udp_server(&lab, 9000).expect("udp server");
    let mut c = lab.command(lab.client_ns(), TRACER);
    c.args([
        "flow",
        "--udp",
        "--remote",
        &format!("{server}:9000"),
        "--count",
        "20",
        "--duration",
        "30",
        "--format",
        "jsonl",
        "--iface",
        lab.client_iface(),
    ]);
    let tracer_thread =
        std::thread::spawn(move || output_with_timeout(&mut c, None, Duration::from_secs(90)));
    std::thread::sleep(Duration::from_millis(500));
    let sessions: Vec<_> = (0..n)
        .map(|i| {
            udp_session(&lab, 9000, 32000 + i, 60, Duration::from_millis(50), true)
                .expect("session")
        })
        .collect();
    let mut expected = BTreeMap::new();
    for s in &sessions {
        let port = s.wait_started(secs(10)).expect("started");
        std::thread::sleep(Duration::from_millis(20));
        expected.insert(
            port,
            lab.expected_path(Proto::Udp, port, 9000)
                .expect("ground truth"),
        );
    }
    let out = tracer_thread.join().unwrap().expect("tracer");
    assert!(out.status.success(), "tracer failed: {}", stderr(&out));
    let results: Vec<TraceResult> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(record)
        .collect();
    assert_all_match(&results, &expected);
    for s in sessions {
        let rep = s.wait().expect("udp report");
        assert!(
            rep.intact && rep.answered == rep.sent && rep.errors.is_empty(),
            "{rep:?}"
        );
    }
    assert_eq!(usrv.empty_datagrams(), 0, "no probe reached the UDP server");
}

#[test]
fn accuracy_tcp_and_udp_across_ecmp() {
    let Some(_g) = root_guard() else { return };
    accuracy(false);
}

#[test]
fn accuracy_tcp_and_udp_across_ecmp_through_nat() {
    let Some(_g) = root_guard() else { return };
    accuracy(true);
}

#[test]
fn stateful_firewall_hides_the_path_from_classic_traceroute_not_from_the_flow() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig {
        firewall: true,
        ..LabConfig::default()
    })
    .expect("build lab");
    let server = lab.server_addr().to_string();

    // Classic UDP traceroute: silent behind the firewall (r2 is hop 2).
    let mut c = lab.command(lab.client_ns(), "traceroute");
    c.args(["-n", "-q", "1", "-w", "1", "-N", "1", "-m", "6", &server]);
    let out = output_with_timeout(&mut c, None, secs(60)).expect("traceroute");
    let classic = parse_traceroute(&String::from_utf8_lossy(&out.stdout));
    assert!(
        classic[2..].iter().all(Option::is_none),
        "classic traceroute is blocked: {classic:?}"
    );

    let _srv = tcp_server(&lab, 8080, 500_000).expect("tcp server");
    let d = tcp_download(&lab, 8080, 0, 2_000_000, true).expect("download");
    let port = d.wait_established(secs(10)).expect("established");
    let r = trace_jsonl(
        &lab,
        &[
            "flow",
            "--tcp",
            "--remote",
            &format!("{server}:8080"),
            "--duration",
            "20",
        ],
    );
    assert_path_matches(&r[0], &lab.expected_path(Proto::Tcp, port, 8080).unwrap());
    assert_eq!(
        r[0].hops.len(),
        lab.hop_count(),
        "every router up to the server"
    );

    let usrv = udp_server(&lab, 9000).expect("udp server");
    let s = udp_session(&lab, 9000, 0, 60, Duration::from_millis(50), true).expect("session");
    let uport = s.wait_started(secs(10)).expect("started");
    let r = trace_jsonl(
        &lab,
        &[
            "flow",
            "--udp",
            "--remote",
            &format!("{server}:9000"),
            "--duration",
            "20",
        ],
    );
    assert_path_matches(&r[0], &lab.expected_path(Proto::Udp, uport, 9000).unwrap());
    let rep = d.wait().unwrap();
    assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
    let urep = s.wait().unwrap();
    assert!(
        urep.intact && urep.errors.is_empty() && urep.answered == urep.sent,
        "{urep:?}"
    );
    assert_eq!(usrv.empty_datagrams(), 0);
}

/// Counters that move when TCP retransmits or enters recovery (RFC 5681, 6582, 6675, 8985).
const RETRANS_COUNTERS: &[&str] = &[
    "TcpRetransSegs",
    "TcpExtTCPLostRetransmit",
    "TcpExtTCPFastRetrans",
    "TcpExtTCPSlowStartRetrans",
    "TcpExtTCPTimeouts",
    "TcpExtTCPLossProbes",
    "TcpExtTCPLossProbeRecovery",
    "TcpExtTCPSackRecovery",
    "TcpExtTCPRenoRecovery",
    "TcpExtTCPSpuriousRTOs",
    "TcpExtTCPDSACKRecv",
    "TcpExtTCPDSACKUndo",
];

/// Counters of segments the remote found odd: out-of-window (what a dup-ACK or challenge ACK
/// would answer) or PAWS-rejected.
const ODD_SEGMENT_COUNTERS: &[&str] = &[
    "TcpExtTCPChallengeACK",
    "TcpExtTCPACKSkippedSeq",
    "TcpExtTCPACKSkippedChallenge",
    "TcpExtPAWSEstab",
    "TcpExtBeyondWindow",
];

/// Retransmissions that a D-SACK proved spurious (RFC 2883: the data had arrived) are not
/// harm: a tail loss probe fires after 2 x SRTT without an ACK, tens of microseconds in the lab,
/// so a loaded 2-core machine delaying one ACK fires one. Each such probe and its D-SACK are
/// allowed once for every D-SACK received beyond the untraced run's; a real loss would show in
/// the recovery counters, which get no slack.
fn spurious_slack(name: &str, run: &BTreeMap<String, u64>, base: &BTreeMap<String, u64>) -> u64 {
    let dsacks = run["TcpExtTCPDSACKRecv"].saturating_sub(base["TcpExtTCPDSACKRecv"]);
    match name {
        "TcpRetransSegs" | "TcpExtTCPLossProbes" | "TcpExtTCPDSACKRecv" => dsacks,
        _ => 0,
    }
}

fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    names: &[&str],
) -> BTreeMap<String, u64> {
    names
        .iter()
        .map(|n| {
            (
                n.to_string(),
                after
                    .get(*n)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(before.get(*n).copied().unwrap_or(0)),
            )
        })
        .collect()
}

/// One rate-limited download from `server` (port 8080); `traces` tracer runs during it (with
/// `extra` arguments). Returns client and server counter deltas and the client's ignored-ICMP
/// count.
fn download_run(
    lab: &Lab,
    server: IpAddr,
    traces: usize,
    extra: &[&str],
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>, u64) {
    let (c0, s0) = (
        lab.nstat(lab.client_ns()).unwrap(),
        lab.nstat(lab.server_ns()).unwrap(),
    );
    let d =
        tcp_download_to(lab, SocketAddr::new(server, 8080), 0, 30_000_000, true).expect("download");
    d.wait_established(secs(10)).expect("established");
    for i in 0..traces {
        let remote = SocketAddr::new(server, 8080).to_string();
        let mut args = vec!["flow", "--tcp", "--remote", &remote, "--duration", "10"];
        args.extend(extra);
        let r = trace_jsonl(lab, &args);
        assert_eq!(r.len(), 1, "trace {i}");
        assert!(r[0].hops.len() >= lab.hop_count(), "trace {i}: {:?}", r[0]);
        assert!(
            r[0].hops[..lab.hop_count()]
                .iter()
                .all(|h| h.probes.iter().all(|p| p.addr.is_some())),
            "trace {i}: {:?}",
            r[0]
        );
    }
    assert!(
        !d.is_finished() || traces == 0,
        "the download outlived the traces"
    );
    let rep = d.wait().expect("report");
    assert!(
        rep.intact && rep.bytes == 30_000_000,
        "bytes arrive intact: {rep:?}"
    );
    assert!(
        rep.errors.is_empty(),
        "the IP_RECVERR client saw no error: {rep:?}"
    );
    let (c1, s1) = (
        lab.nstat(lab.client_ns()).unwrap(),
        lab.nstat(lab.server_ns()).unwrap(),
    );
    let mut client = delta(&c0, &c1, RETRANS_COUNTERS);
    client.extend(delta(&c0, &c1, ODD_SEGMENT_COUNTERS));
    let mut server_counters = delta(&s0, &s1, RETRANS_COUNTERS);
    server_counters.extend(delta(&s0, &s1, ODD_SEGMENT_COUNTERS));
    let ignored = delta(&c0, &c1, &["TcpExtOutOfWindowIcmps"])["TcpExtOutOfWindowIcmps"];
    (client, server_counters, ignored)
}

#[test]
fn tracing_a_tcp_download_ten_times_does_no_harm() {
    let Some(_g) = root_guard() else { return };
    // NAT and the stateful firewall too: both track TCP windows and must accept the probes
    // (IPv4 through both; IPv6, never translated, through the firewall).
    let lab = Lab::build(LabConfig {
        nat: true,
        firewall: true,
        ..LabConfig::default()
    })
    .expect("build lab");
    let _srv = tcp_server_on(&lab, "0.0.0.0:8080".parse().unwrap(), 3_000_000).expect("tcp server");
    let _srv6 =
        tcp_server_on(&lab, "[::]:8080".parse().unwrap(), 3_000_000).expect("tcp server v6");
    for server in [
        IpAddr::V4(lab.server_addr()),
        IpAddr::V6(lab.server_addr6()),
    ] {
        let (base_c, base_s, _) = download_run(&lab, server, 0, &[]);
        let (c, s, ignored) = download_run(&lab, server, 10, &[]);
        eprintln!("{server} untraced: client {base_c:?}\n          server {base_s:?}\ntraced:   client {c:?}\n          server {s:?}\nclient ignored {ignored} ICMP errors");
        for name in RETRANS_COUNTERS.iter().chain(ODD_SEGMENT_COUNTERS) {
            assert!(
                c[*name] <= base_c[*name],
                "{server} client {name}: traced {} > untraced {}",
                c[*name],
                base_c[*name]
            );
            assert!(
                s[*name] <= base_s[*name],
                "{server} server {name}: traced {} > untraced {}",
                s[*name],
                base_s[*name]
            );
        }
        // Proof that the errors did reach the client's TCP (tcp_v4_err / tcp_v6_err), which
        // ignored them as out of window: 10 traces × 5 hops × 3 probes.
        assert!(
            ignored >= 150,
            "{server}: client ignored {ignored} ICMP errors"
        );

        // Probes that do reach the server (--probe-remote): the keep-alive-shaped segment is
        // below the server's RCV.NXT, so it is discarded by the sequence check before any ACK
        // processing (RFC 9293 §3.10.7.4): still no retransmission or recovery anywhere. The
        // server answers some with an ACK of its current state, as it would a keep-alive
        // (rate-limited, counted as TCPACKSkippedSeq): that is the only trace they leave.
        let (c, s, _) = download_run(
            &lab,
            server,
            10,
            &[
                "--probe-remote",
                "--max-ttl",
                "8",
                "--max-missing",
                "2",
                "--timeout",
                "300ms",
            ],
        );
        eprintln!("{server} probe-remote: client {c:?}\n              server {s:?}");
        for name in RETRANS_COUNTERS {
            assert!(
                c[*name] <= base_c[*name] + spurious_slack(name, &c, &base_c),
                "{server} client {name}: traced {} > untraced {}",
                c[*name],
                base_c[*name]
            );
            assert!(
                s[*name] <= base_s[*name] + spurious_slack(name, &s, &base_s),
                "{server} server {name}: traced {} > untraced {}",
                s[*name],
                base_s[*name]
            );
        }
        assert_eq!(
            s["TcpExtTCPChallengeACK"], 0,
            "no challenge ACK (RFC 5961): the ACK field was never checked"
        );
    }
}

#[test]
fn tracing_a_udp_session_ten_times_does_no_harm() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig {
        nat: true,
        ..LabConfig::default()
    })
    .expect("build lab");
    let usrv = udp_server_on(&lab, "0.0.0.0:9000".parse().unwrap()).expect("udp server");
    let usrv6 = udp_server_on(&lab, "[::]:9000".parse().unwrap()).expect("udp server v6");
    for server in [
        IpAddr::V4(lab.server_addr()),
        IpAddr::V6(lab.server_addr6()),
    ] {
        let dst = SocketAddr::new(server, 9000);
        let s =
            udp_session_to(&lab, dst, 0, 400, Duration::from_millis(20), true).expect("session");
        s.wait_started(secs(10)).expect("started");
        for i in 0..10 {
            let r = trace_jsonl(
                &lab,
                &[
                    "flow",
                    "--udp",
                    "--remote",
                    &dst.to_string(),
                    "--duration",
                    "10",
                ],
            );
            assert_eq!(r.len(), 1, "trace {i}");
            assert_eq!(r[0].hops.len(), lab.hop_count(), "trace {i}: {:?}", r[0]);
            assert!(
                r[0].hops
                    .iter()
                    .all(|h| h.probes.iter().all(|p| p.addr.is_some())),
                "trace {i}: {:?}",
                r[0]
            );
        }
        let rep = s.wait().expect("report");
        assert!(
            rep.intact && rep.answered == rep.sent && rep.sent == 400,
            "{server}: {rep:?}"
        );
        assert!(
            rep.errors.is_empty(),
            "{server}: the IP_RECVERR / IPV6_RECVERR client saw no error: {rep:?}"
        );
        assert_eq!(
            usrv.empty_datagrams() + usrv6.empty_datagrams(),
            0,
            "no probe reached the server application"
        );

        // Control: without the shield the same client does see the errors, so the check above
        // would catch a shield that does nothing.
        let s =
            udp_session_to(&lab, dst, 0, 100, Duration::from_millis(20), true).expect("session");
        s.wait_started(secs(10)).expect("started");
        let r = trace_jsonl(
            &lab,
            &[
                "flow",
                "--udp",
                "--remote",
                &dst.to_string(),
                "--duration",
                "10",
                "--no-udp-shield",
            ],
        );
        assert_eq!(r.len(), 1);
        let rep = s.wait().expect("report");
        assert!(
            !rep.errors.is_empty(),
            "{server}: without the shield the errors reach the socket: {rep:?}"
        );
    }
}

#[test]
fn every_algorithm_and_cooked_capture_trace_the_same_path() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let server = lab.server_addr().to_string();
    let _srv = tcp_server(&lab, 8080, 500_000).expect("tcp server");
    let d = tcp_download(&lab, 8080, 0, 5_000_000, true).expect("download");
    let port = d.wait_established(secs(10)).expect("established");
    let want = lab.expected_path(Proto::Tcp, port, 8080).unwrap();
    let remote = format!("{server}:8080");
    for alg in ["concurrent", "hop-by-hop", "packet-by-packet"] {
        let r = trace_jsonl(
            &lab,
            &[
                "flow",
                "--tcp",
                "--remote",
                &remote,
                "--duration",
                "10",
                "--algorithm",
                alg,
            ],
        );
        assert_eq!(serde_json::to_value(r[0].algorithm).unwrap(), alg);
        assert_path_matches(&r[0], &want);
    }
    // `--iface any`: Linux cooked capture (SLL2).
    let mut c = lab.command(lab.client_ns(), TRACER);
    c.args([
        "flow",
        "--iface",
        "any",
        "--tcp",
        "--remote",
        &remote,
        "--duration",
        "10",
        "--format",
        "json",
    ]);
    let out = output_with_timeout(&mut c, None, secs(60)).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: TraceResult = record(&out.stdout);
    assert_path_matches(&r, &want);
    // Text output: one line per hop, then the stop reason.
    let out = tracer(
        &lab,
        &[
            "flow",
            "--iface",
            "eth0",
            "--tcp",
            "--remote",
            &remote,
            "--duration",
            "10",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for (i, a) in want.iter().enumerate() {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{:2}  {a}  ", i + 1))),
            "hop {} in:\n{text}",
            i + 1
        );
    }
    assert!(text.contains("stop: remote-distance"), "{text}");
    let rep = d.wait().unwrap();
    assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
}

#[test]
fn bad_input_gives_one_line_and_nonzero_exit() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["flow", "--iface", "nosuch0", "--tcp"],
            2,
            "unknown interface",
        ),
        (
            &[
                "flow",
                "--iface",
                "eth0",
                "--tcp",
                "--remote",
                "198.18.300.1",
            ],
            2,
            "invalid address",
        ),
        (
            &[
                "flow",
                "--iface",
                "eth0",
                "--tcp",
                "--remote",
                "198.19.1.2:70000",
            ],
            2,
            "invalid port",
        ),
        (
            &["flow", "--iface", "eth0", "--udp", "--local-port", "0"],
            2,
            "invalid port",
        ),
        (&["flow", "--iface", "eth0"], 2, "--tcp"),
        (
            &["flow", "--iface", "eth0", "--tcp", "--algorithm", "fastest"],
            2,
            "'fastest' for '--algorithm <ALGORITHM>' [possible values: concurrent, hop-by-hop, packet-by-packet]",
        ),
        (
            &[
                "flow",
                "--iface",
                "eth0",
                "--tcp",
                "--first-ttl",
                "9",
                "--max-ttl",
                "3",
            ],
            2,
            "first-ttl",
        ),
        (
            &[
                "flow",
                "--iface",
                "eth0",
                "--tcp",
                "--remote",
                "198.19.1.2:8089",
                "--duration",
                "1",
            ],
            1,
            "no flow matched",
        ),
    ];
    for (args, code, text) in cases {
        let out = tracer(&lab, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line for {args:?}: {err:?}");
        assert!(err.contains(text), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // No privilege: the same command as an unprivileged user.
    let mut c = lab.command(lab.client_ns(), "setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        TRACER,
        "flow",
        "--iface",
        "eth0",
        "--tcp",
    ]);
    let out = output_with_timeout(&mut c, None, secs(30)).unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.contains("needs root or the capabilities"), "{err}");
}

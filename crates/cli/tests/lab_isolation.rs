//! Processes that trace at once never take each other's replies: many `trace` processes on the
//! *same* target and many `flow` processes on the *same* live flow, with different TTL ranges,
//! for every protocol x strategy x IP version, over several rounds. A reply taken from another
//! process shows up as a hop outside the process's TTL range or as a router that is not on the
//! probe's path at that TTL (ground truth: the ECMP router's decision for the probe's own flow
//! identifier, IPv6 through the lab's oracle). Root only (see `svctr_lab::lab_test_guard`).

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Output;
use std::time::Duration;

use common::{stderr, TRACER};
use svctr_core::{Protocol, Strategy, TraceResult, TracerouteResult};
use svctr_lab::{
    lab_test_guard, output_with_timeout, tcp_download_to, tcp_server_on, udp_server_on,
    udp_session_to, Lab, LabConfig, Proto,
};

/// Runs every argument list as its own tracer process in the client namespace, all at once.
fn run_together(lab: &Lab, runs: &[Vec<String>]) -> Vec<Output> {
    let handles: Vec<_> = runs
        .iter()
        .map(|args| {
            let mut c = lab.command(lab.client_ns(), TRACER);
            c.args(args);
            std::thread::spawn(move || {
                output_with_timeout(&mut c, None, Duration::from_secs(60)).expect("tracer runs")
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect()
}

fn lab_proto(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
        Protocol::Icmp => Proto::Icmp,
    }
}

/// TTL ranges of the processes that run at once: disjoint ones, so that a reply to another
/// process's probe lands outside the range, and one spanning them all.
const RANGES: [(u8, u8); 4] = [(1, 2), (3, 4), (5, 6), (1, 6)];
const ROUNDS: usize = 10;

#[test]
fn trace_processes_on_one_target_never_take_each_others_replies() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let _srv = svctr_lab::tcp_server(&lab, 8080, 0).expect("tcp server");
    let mut truth: HashMap<(IpAddr, Protocol, u16, u16), Vec<IpAddr>> = HashMap::new();
    let mut checked = 0usize;
    for dst in [
        IpAddr::V4(lab.server_addr()),
        IpAddr::V6(lab.server_addr6()),
    ] {
        for protocol in [Protocol::Udp, Protocol::Tcp, Protocol::Icmp] {
            for strategy in ["classic", "paris", "dublin"] {
                for round in 0..ROUNDS {
                    let runs: Vec<Vec<String>> = RANGES
                        .iter()
                        .map(|(f, m)| {
                            let mut a: Vec<String> =
                                ["trace", "-n", "--format", "jsonl", "-q", "3", "-w", "1"]
                                    .map(String::from)
                                    .to_vec();
                            a.extend(match protocol {
                                Protocol::Udp => vec!["-U".to_string()],
                                Protocol::Tcp => vec!["-T".into(), "-p".into(), "8080".into()],
                                Protocol::Icmp => vec!["-I".to_string()],
                            });
                            a.extend([
                                "--strategy".into(),
                                strategy.into(),
                                "-f".into(),
                                f.to_string(),
                                "-m".into(),
                                m.to_string(),
                                dst.to_string(),
                            ]);
                            a
                        })
                        .collect();
                    let outs = run_together(&lab, &runs);
                    let mut markers = Vec::new();
                    for (out, (first, max)) in outs.iter().zip(RANGES) {
                        let case = format!(
                            "{protocol:?} {strategy} {dst} round {round} ttl {first}-{max}"
                        );
                        assert!(out.status.success(), "{case}: {}", stderr(out));
                        let r: TracerouteResult = common::record(&out.stdout);
                        markers.push(r.source_port);
                        for hop in &r.hops {
                            assert!(
                                (first..=max).contains(&hop.ttl),
                                "{case}: a hop outside the range: {r:?}"
                            );
                            for p in &hop.probes {
                                let got = p.addr.unwrap_or_else(|| {
                                    panic!("{case}: ttl {} unanswered: {r:?}", hop.ttl)
                                });
                                checked += 1;
                                if usize::from(hop.ttl) > lab.hop_count() {
                                    assert_eq!(got, dst, "{case}: {r:?}");
                                    continue;
                                }
                                let (sport, dport) = probe_ports(&r, p.tag);
                                let path = truth
                                    .entry((dst, protocol, sport, dport))
                                    .or_insert_with(|| {
                                        lab.expected_path_ip(
                                            lab_proto(protocol),
                                            r.source,
                                            dst,
                                            sport,
                                            dport,
                                            0,
                                        )
                                        .expect("ground truth")
                                    });
                                assert_eq!(
                                    got,
                                    path[usize::from(hop.ttl) - 1],
                                    "{case}: probe {} of ttl {} is another process's reply: {r:?}",
                                    p.tag,
                                    hop.ttl
                                );
                            }
                        }
                    }
                    if protocol != Protocol::Icmp {
                        markers.sort();
                        markers.dedup();
                        assert_eq!(markers.len(), RANGES.len(), "a source port each");
                    }
                }
            }
        }
    }
    eprintln!("{checked} replies checked, none foreign");
}

/// The flow identifier (sport, dport) of probe number `n` of a result.
fn probe_ports(r: &TracerouteResult, n: u16) -> (u16, u16) {
    let sport = r.source_port.unwrap_or(0);
    let dport = r.port.unwrap_or(0);
    match (r.protocol, r.strategy) {
        (Protocol::Udp, Strategy::Classic) => (sport, dport + n - 1),
        (Protocol::Tcp, Strategy::Classic) => {
            (sport + (n - 1) % r.source_port_count.unwrap_or(1), dport)
        }
        _ => (sport, dport),
    }
}

#[test]
fn flow_processes_on_one_flow_never_take_each_others_replies() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let _t4 = tcp_server_on(&lab, "0.0.0.0:8080".parse().unwrap(), 300_000).expect("tcp server");
    let _t6 = tcp_server_on(&lab, "[::]:8080".parse().unwrap(), 300_000).expect("tcp server v6");
    let _u4 = udp_server_on(&lab, "0.0.0.0:9000".parse().unwrap()).expect("udp server");
    let _u6 = udp_server_on(&lab, "[::]:9000".parse().unwrap()).expect("udp server v6");
    // Flow tracer probes stop one TTL short of the remote (5 routers here).
    const FLOW_RANGES: [(u8, u8); 4] = [(1, 2), (3, 4), (5, 5), (1, 5)];
    let mut checked = 0usize;
    for server in [
        IpAddr::V4(lab.server_addr()),
        IpAddr::V6(lab.server_addr6()),
    ] {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let (dst, _app_tcp, _app_udp, port) = match protocol {
                Protocol::Tcp => {
                    let dst = SocketAddr::new(server, 8080);
                    let d = tcp_download_to(&lab, dst, 0, 1 << 30, false).expect("download");
                    let port = d
                        .wait_established(Duration::from_secs(10))
                        .expect("connect");
                    (dst, Some(d), None, port)
                }
                _ => {
                    let dst = SocketAddr::new(server, 9000);
                    let s = udp_session_to(&lab, dst, 0, 100_000, Duration::from_millis(20), false)
                        .expect("udp session");
                    let port = s.wait_started(Duration::from_secs(10)).expect("started");
                    (dst, None, Some(s), port)
                }
            };
            let mut path: Option<Vec<IpAddr>> = None;
            for round in 0..ROUNDS {
                let runs: Vec<Vec<String>> = FLOW_RANGES
                    .iter()
                    .map(|(f, m)| {
                        vec![
                            "flow".into(),
                            "-i".into(),
                            lab.client_iface().into(),
                            format!("--{}", protocol.as_str()),
                            "--remote".into(),
                            dst.to_string(),
                            "--local-port".into(),
                            port.to_string(),
                            "--first-ttl".into(),
                            f.to_string(),
                            "--max-ttl".into(),
                            m.to_string(),
                            "--timeout".into(),
                            "1s".into(),
                            "--duration".into(),
                            "10".into(),
                            "--format".into(),
                            "jsonl".into(),
                        ]
                    })
                    .collect();
                let outs = run_together(&lab, &runs);
                for (out, (first, max)) in outs.iter().zip(FLOW_RANGES) {
                    let case = format!("{protocol:?} {dst} round {round} ttl {first}-{max}");
                    assert!(out.status.success(), "{case}: {}", stderr(out));
                    let r: TraceResult = common::record(&out.stdout);
                    assert_eq!(r.flow.local.port, port, "{case}");
                    // The flow's own path, from the ECMP router's decision for its 5-tuple
                    // (and, over IPv6, the flow label its packets carry).
                    let want = path.get_or_insert_with(|| {
                        lab.expected_path_ip(
                            lab_proto(protocol),
                            r.flow.local.ip,
                            server,
                            port,
                            dst.port(),
                            r.flow.flow_label.unwrap_or(0),
                        )
                        .expect("ground truth")
                    });
                    let ttls: Vec<u8> = r.hops.iter().map(|h| h.ttl).collect();
                    assert_eq!(ttls, (first..=max).collect::<Vec<_>>(), "{case}: {r:?}");
                    for hop in &r.hops {
                        for p in &hop.probes {
                            checked += 1;
                            assert_eq!(
                                p.addr,
                                Some(want[usize::from(hop.ttl) - 1]),
                                "{case}: ttl {}: another process's reply? {r:?}",
                                hop.ttl
                            );
                        }
                    }
                    assert_eq!(r.replies, r.probes_sent, "{case}: its own replies only");
                }
            }
        }
    }
    eprintln!("{checked} flow replies checked, none foreign");
}

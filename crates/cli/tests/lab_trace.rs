//! End-to-end tests of `service-traceroute trace` in the namespace lab: every protocol ×
//! strategy × IP version against the ECMP router's ground truth for each probe's own flow
//! identifier, agreement with Debian traceroute and scamper on the same 5-tuple, several
//! processes at once, and bad input. Root only (see `svctr_lab::lab_test_guard`).

#[path = "common/record.rs"]
mod record;
use record::record;

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::Output;
use std::time::Duration;

use svctr_core::{Protocol, StopReason, Strategy, TracerouteResult};
use svctr_lab::{lab_test_guard, output_with_timeout, parse_traceroute_ip, Lab, LabConfig, Proto};

const TRACER: &str = env!("CARGO_BIN_EXE_service-traceroute");

fn tracer(lab: &Lab, args: &[&str]) -> Output {
    let mut c = lab.command(lab.client_ns(), TRACER);
    c.args(args);
    output_with_timeout(&mut c, None, Duration::from_secs(120)).expect("tracer runs")
}

fn trace_json(lab: &Lab, args: &[&str]) -> Vec<TracerouteResult> {
    let mut all = vec!["trace", "-n", "--format", "jsonl"];
    all.extend_from_slice(args);
    let out = tracer(lab, &all);
    assert!(
        out.status.success(),
        "tracer {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(record)
        .collect()
}

fn lab_proto(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
        Protocol::Icmp => Proto::Icmp,
    }
}

fn proto_flag(p: Protocol) -> Vec<&'static str> {
    match p {
        Protocol::Udp => vec!["-U"],
        Protocol::Tcp => vec!["-T", "-p", "8080"],
        Protocol::Icmp => vec!["-I"],
    }
}

/// The flow identifier (sport, dport) of probe number `n` of a result.
fn probe_ports(r: &TracerouteResult, n: u16) -> (u16, u16) {
    let sport = r.source_port.unwrap_or(0);
    let dport = r.port.unwrap_or(0);
    match (r.protocol, r.strategy) {
        (Protocol::Udp, Strategy::Classic) => (sport, dport + n - 1),
        (Protocol::Tcp, Strategy::Classic) => (sport + n - 1, dport),
        _ => (sport, dport),
    }
}

/// Every probe's reply came from the router that the ECMP router's own routing decision for
/// that probe's flow identifier names; the destination answered last.
fn assert_ground_truth(
    lab: &Lab,
    r: &TracerouteResult,
    cache: &mut HashMap<(u16, u16), Vec<IpAddr>>,
) {
    assert_eq!(r.stop_reason, StopReason::RemoteReached, "{r:?}");
    assert_eq!(r.hops.len(), lab.hop_count() + 1, "{r:?}");
    for hop in &r.hops {
        let mut addrs = Vec::new();
        for p in &hop.probes {
            let got = p
                .addr
                .unwrap_or_else(|| panic!("ttl {} unanswered: {r:?}", hop.ttl));
            addrs.push(got);
            if usize::from(hop.ttl) > lab.hop_count() {
                assert_eq!(got, r.destination, "{r:?}");
                continue;
            }
            let ports = probe_ports(r, p.tag);
            let path = cache.entry(ports).or_insert_with(|| {
                lab.expected_path_ip(
                    lab_proto(r.protocol),
                    r.source,
                    r.destination,
                    ports.0,
                    ports.1,
                    0,
                )
                .expect("ground truth")
            });
            assert_eq!(
                got,
                path[usize::from(hop.ttl) - 1],
                "ttl {} probe {} {:?}: {r:?}",
                hop.ttl,
                p.tag,
                ports
            );
        }
        if r.strategy != Strategy::Classic {
            addrs.dedup();
            assert_eq!(addrs.len(), 1, "one path per flow identifier: {r:?}");
        }
    }
}

#[test]
fn every_protocol_strategy_and_ip_version_matches_ground_truth() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let _srv = svctr_lab::tcp_server(&lab, 8080, 0).expect("tcp server");
    for dst in [
        IpAddr::V4(lab.server_addr()),
        IpAddr::V6(lab.server_addr6()),
    ] {
        for protocol in [Protocol::Udp, Protocol::Tcp, Protocol::Icmp] {
            for strategy in ["classic", "paris", "dublin"] {
                // Replies over raw sockets with their kernel filters (the default for one
                // target) and over a capture: the same path, every probe answered.
                for receive in ["raw", "pcap"] {
                    let d = dst.to_string();
                    let mut args = proto_flag(protocol);
                    args.extend([
                        "--strategy",
                        strategy,
                        "--receive",
                        receive,
                        "-q",
                        "3",
                        "-w",
                        "1",
                        &d,
                    ]);
                    let r = trace_json(&lab, &args);
                    assert_eq!(r.len(), 1);
                    assert_eq!(r[0].strategy.as_str(), strategy);
                    assert_eq!(r[0].ip_version, if dst.is_ipv4() { 4 } else { 6 });
                    assert_ground_truth(&lab, &r[0], &mut HashMap::new());
                    // The lab's round trips are tens of µs: an RTT from a send time taken in
                    // user space (raw) or by the kernel (pcap) is above 0 and well under 50 ms.
                    for p in r[0].hops.iter().flat_map(|h| &h.probes) {
                        let rtt = p.rtt_ms.expect("answered probe has an RTT");
                        assert!(
                            rtt > 0.0 && rtt < 50.0,
                            "{receive} {protocol:?} {strategy} {d}: rtt {rtt} ms"
                        );
                    }
                }
            }
        }
    }
    // Both families in one run: an IPv4 and an IPv6 set of raw sockets side by side.
    let (d4, d6) = (
        lab.server_addr().to_string(),
        lab.server_addr6().to_string(),
    );
    for receive in ["raw", "pcap"] {
        let r = trace_json(
            &lab,
            &[
                "-T",
                "-p",
                "8080",
                "--receive",
                receive,
                "-w",
                "1",
                &d4,
                &d6,
            ],
        );
        assert_eq!(r.len(), 2, "{receive}: {r:?}");
        for t in &r {
            assert_ground_truth(&lab, t, &mut HashMap::new());
        }
    }
}

/// Debian traceroute and scamper, given the same 5-tuple, see the same routers (IPv4 and
/// IPv6, UDP and TCP).
#[test]
fn agrees_with_debian_traceroute_and_scamper() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let _srv = svctr_lab::tcp_server(&lab, 8080, 0).expect("tcp server");
    for dst in [
        IpAddr::V4(lab.server_addr()),
        IpAddr::V6(lab.server_addr6()),
    ] {
        let dst = dst.to_string();
        for sport in [41001u16, 41002, 41003, 41004] {
            let sp = sport.to_string();
            for proto in [["-U", "33434"], ["-T", "8080"]] {
                let r = trace_json(
                    &lab,
                    &[
                        proto[0], "-p", proto[1], "--sport", &sp, "-q", "1", "-w", "1", &dst,
                    ],
                )
                .remove(0);
                let mut c = lab.command(lab.client_ns(), "traceroute");
                c.args([
                    proto[0],
                    "-p",
                    proto[1],
                    "-n",
                    "-q",
                    "1",
                    "-N",
                    "1",
                    "-w",
                    "1",
                    &format!("--sport={sport}"),
                    &dst,
                ]);
                let out =
                    output_with_timeout(&mut c, None, Duration::from_secs(60)).expect("traceroute");
                let debian = parse_traceroute_ip(&String::from_utf8_lossy(&out.stdout));
                let mine: Vec<Option<IpAddr>> = r.hops.iter().map(|h| h.probes[0].addr).collect();
                assert_eq!(mine, debian, "{proto:?} sport {sport} to {dst}");
            }
            // scamper's UDP-Paris trace with the same ports. IPv4 only: Debian's scamper
            // 20211212 receives no reply at all over IPv6 in the lab (every run ends GAPLIMIT
            // with zero hops, with or without a fixed port), while Debian traceroute above and
            // this tool agree hop for hop over IPv6.
            if dst.contains(':') {
                continue;
            }
            let mut c = lab.command(lab.client_ns(), "scamper");
            c.args([
                "-O",
                "json",
                "-c",
                &format!("trace -P udp-paris -s {sport} -d 33434 -q 1 -w 1"),
                "-i",
                &dst,
            ]);
            let out = output_with_timeout(&mut c, None, Duration::from_secs(60)).expect("scamper");
            let text = String::from_utf8_lossy(&out.stdout);
            let trace: serde_json::Value = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["type"] == "trace")
                .unwrap_or_else(|| panic!("no scamper trace in {text}"));
            let mut theirs: Vec<(u64, IpAddr)> = trace["hops"]
                .as_array()
                .expect("hops")
                .iter()
                .map(|h| {
                    (
                        h["probe_ttl"].as_u64().unwrap(),
                        h["addr"].as_str().unwrap().parse().unwrap(),
                    )
                })
                .collect();
            theirs.sort();
            let r = trace_json(
                &lab,
                &[
                    "-U", "-p", "33434", "--sport", &sp, "-q", "1", "-w", "1", &dst,
                ],
            )
            .remove(0);
            let mine: Vec<(u64, IpAddr)> = r
                .hops
                .iter()
                .map(|h| (u64::from(h.ttl), h.probes[0].addr.unwrap()))
                .collect();
            assert_eq!(mine, theirs, "scamper udp-paris sport {sport} to {dst}");
        }
    }
}

/// Three processes trace the same 500 targets at once; each result is its own (its own port)
/// and matches the ground truth of its own flow identifier.
#[test]
fn three_processes_five_hundred_targets_each() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig {
        fanout: 500,
        ..LabConfig::default()
    })
    .expect("build lab");
    let targets: Vec<String> = lab
        .fanout_targets_v4()
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut handles = Vec::new();
    // Replies over raw sockets in one process, over a capture in another, the default (raw
    // sockets up to 1,024 targets) in the third: side by side, none takes another's replies.
    for receive in ["raw", "pcap", "auto"] {
        let mut c = lab.command(lab.client_ns(), TRACER);
        c.args([
            "trace",
            "-n",
            "--format",
            "jsonl",
            "-U",
            "-q",
            "1",
            "-w",
            "2",
            "-m",
            "8",
            "--receive",
            receive,
            "--vantage",
            &format!("vp-{receive}"),
        ])
        .args(&targets);
        handles.push(std::thread::spawn(move || {
            output_with_timeout(&mut c, None, Duration::from_secs(300))
        }));
    }
    let mut ports = Vec::new();
    // The JSON contract's envelope: every record names its process's vantage point, and
    // the 1,500 record ids of three processes running at once are all different.
    let mut ids = std::collections::HashSet::new();
    for (h, receive) in handles.into_iter().zip(["raw", "pcap", "auto"]) {
        let out = h.join().unwrap().expect("tracer");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for v in text.lines().map(record::<serde_json::Value>) {
            assert_eq!(v["vantage"], format!("vp-{receive}"));
            assert_eq!(v["record_type"], "traceroute");
            assert_eq!(v["tool_version"], env!("CARGO_PKG_VERSION"));
            assert!(ids.insert(v["record_id"].as_str().unwrap().to_string()));
        }
        let results: Vec<TracerouteResult> = text.lines().map(record).collect();
        assert_eq!(results.len(), 500);
        let port = results[0].source_port.unwrap();
        ports.push(port);
        let mut cache = HashMap::new();
        for r in &results {
            assert_eq!(r.source_port, Some(port));
            // Ground truth per target: one `ip route get` each (same sport/dport, other dst).
            cache.clear();
            assert_ground_truth(&lab, r, &mut cache);
        }
    }
    assert_eq!(ids.len(), 1500);
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3, "each process has its own source port");
}

#[test]
fn bad_input_gives_one_line_and_nonzero_exit() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let cases: &[(&[&str], &str)] = &[
        (&["trace", "-n", "no-such-host.invalid"], "cannot resolve"),
        (&["trace", "-n", "-4", "2001:db8::1"], "IPv6 address but -4"),
        (&["trace", "-n", "-6", "198.19.1.2"], "IPv4 address but -6"),
        (&["trace", "-n", "-q", "0", "198.19.1.2"], "-q"),
        (
            &["trace", "-n", "-f", "9", "-m", "3", "198.19.1.2"],
            "-f 9 is above -m 3",
        ),
        (
            &["trace", "-n", "-I", "-T", "198.19.1.2"],
            "cannot be used with",
        ),
        (
            &["trace", "-n", "--strategy", "zigzag", "198.19.1.2"],
            "'zigzag' for '--strategy <STRATEGY>' [possible values: classic, paris, dublin]",
        ),
        (
            &["trace", "-n", "-i", "nosuch0", "198.19.1.2"],
            "unknown interface",
        ),
        (&["trace", "-n"], "TARGET"),
    ];
    for (args, text) in cases {
        let out = tracer(&lab, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line for {args:?}: {err:?}");
        assert!(err.contains(text), "{args:?}: {err}");
    }
}

/// `compare` on 30 flows over the 3-way ECMP stage: "differs" exactly when the ground truth of
/// the flow and of the fresh flow name different branches, at a rate consistent with hashing
/// (2/3 expected).
#[test]
fn compare_reports_differences_exactly_where_ground_truth_has_them() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let _srv = svctr_lab::tcp_server(&lab, 8080, 50_000).expect("tcp server");
    let server = lab.server_addr();
    let remote = format!("{server}:8080");
    let mut differ = 0;
    let n = 30u16;
    let mut downloads = Vec::new();
    for i in 0..n {
        let d = svctr_lab::tcp_download(&lab, 8080, 33000 + i, 5_000_000, false).expect("download");
        let port = d
            .wait_established(Duration::from_secs(10))
            .expect("established");
        let out = tracer(
            &lab,
            &[
                "compare",
                "--iface",
                lab.client_iface(),
                "--tcp",
                "--remote",
                &remote,
                "--local-port",
                &port.to_string(),
                "--duration",
                "10",
                "--format",
                "json",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let c: svctr_core::Comparison = record(&out.stdout);
        let flow_path = lab
            .expected_path(Proto::Tcp, port, 8080)
            .expect("flow ground truth");
        let fresh = &c.fresh[0];
        let fresh_path = lab
            .expected_path_ip(
                Proto::Tcp,
                IpAddr::V4(lab.client_addr()),
                IpAddr::V4(server),
                fresh.source_port.unwrap(),
                8080,
                0,
            )
            .expect("fresh ground truth");
        let truth_differs = IpAddr::V4(flow_path[2]) != fresh_path[2];
        assert_eq!(
            c.differs, truth_differs,
            "flow {flow_path:?} fresh {fresh_path:?}: {:?}",
            c.per_ttl
        );
        if truth_differs {
            assert_eq!(c.differing_ttls, vec![3, 4], "the branch hops");
            differ += 1;
        }
        downloads.push(d);
    }
    // 2/3 expected: 20 of 30, 3 standard deviations is about 8.
    assert!((12..=28).contains(&differ), "{differ} of {n} differ");
}

/// Without -n, hop names come from reverse DNS (answered in the lab by its hosts file), in
/// traceroute's `name (address)` form, and in JSON as `name`.
#[test]
fn hop_names_are_resolved_unless_numeric() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let dst = lab.server_addr().to_string();
    let out = tracer(&lab, &["trace", "-q", "1", "-w", "1", &dst]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" r1.lab.test (198.18.1.1)"), "{text}");
    assert!(text.contains(" server.lab.test (198.19.1.2)"), "{text}");
    let out = tracer(
        &lab,
        &["trace", "--format", "json", "-q", "1", "-w", "1", &dst],
    );
    let r: TracerouteResult = record(&out.stdout);
    assert_eq!(r.hops[1].probes[0].name.as_deref(), Some("r2.lab.test"));
    let out = tracer(&lab, &["trace", "-n", "-q", "1", "-w", "1", &dst]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(".lab.test"));
}

/// `--format atlas`: RIPE Atlas's own parser (ripe.atlas.sagan, installed by scripts/test.sh
/// from PyPI) reads every result without a malformation, finds it a success that reached its
/// destination, and sees the hops, addresses and RTTs we wrote; the addresses are those of a
/// JSON run of the same 5-tuple (same ECMP branch).
#[test]
fn atlas_results_are_read_by_ripe_atlas_sagan() {
    let Some(_g) = lab_test_guard() else { return };
    let Ok(python) = std::env::var("SVCTR_SAGAN_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs scripts/test.sh, which installs ripe.atlas.sagan and sets SVCTR_SAGAN_PYTHON"
        );
        eprintln!("skipped: SVCTR_SAGAN_PYTHON is not set (scripts/test.sh sets it)");
        return;
    };
    // Reads one Atlas result per line; prints what sagan made of each.
    const SAGAN: &str = r#"
import json, sys
from ripe.atlas.sagan import TracerouteResult
for line in sys.stdin:
    r = TracerouteResult(json.loads(line), on_malformation=TracerouteResult.ACTION_FAIL)
    print(json.dumps({
        "is_success": r.is_success, "reached": r.destination_ip_responded,
        "af": r.af, "protocol": r.protocol, "dst": r.destination_address,
        "src": r.source_address, "total_hops": r.total_hops,
        "paths": r.ip_path, "rtts": [[p.rtt for p in h.packets] for h in r.hops],
        "created": r.created_timestamp,
    }))
"#;
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let v4 = lab.server_addr().to_string();
    let v6 = lab.server_addr6().to_string();
    let cases: [(&str, Vec<&str>, &str); 3] = [
        ("UDP", vec!["-U", "--sport", "40123"], &v4),
        ("TCP", vec!["-T", "-p", "8080", "--sport", "40200"], &v4),
        ("UDP", vec!["-U", "--sport", "40321"], &v6),
    ];
    for (proto, flags, dst) in cases {
        let mut args = vec!["trace", "-n", "-q", "2"];
        args.extend(&flags);
        let ours = {
            let mut a = args.clone();
            a.extend(["--format", "jsonl", dst]);
            trace_json_raw(&lab, &a)
        };
        let mut a = args.clone();
        a.extend(["--format", "atlas", dst]);
        let out = tracer(&lab, &a);
        assert!(
            out.status.success(),
            "{a:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let atlas_text = String::from_utf8_lossy(&out.stdout).into_owned();
        let atlas: serde_json::Value =
            serde_json::from_str(atlas_text.trim()).expect("one Atlas result");
        let mut py = std::process::Command::new(&python);
        py.args(["-c", SAGAN]);
        let read = output_with_timeout(&mut py, Some(&atlas_text), Duration::from_secs(60))
            .expect("python runs");
        assert!(
            read.status.success(),
            "sagan: {}",
            String::from_utf8_lossy(&read.stderr)
        );
        let sagan: serde_json::Value =
            serde_json::from_slice(&read.stdout).expect("sagan's summary");
        let case = format!("{proto} {dst}");
        assert_eq!(sagan["is_success"], true, "{case}: {sagan}");
        assert_eq!(sagan["reached"], true, "{case}: {sagan}");
        assert_eq!(sagan["protocol"], proto, "{case}");
        assert_eq!(sagan["dst"], dst, "{case}");
        assert_eq!(sagan["af"], if dst.contains(':') { 6 } else { 4 }, "{case}");
        assert_eq!(sagan["created"], atlas["timestamp"], "{case}");
        // The hops: sagan's, the Atlas line's, and a JSON run's of the same 5-tuple.
        let hops = atlas["result"].as_array().unwrap();
        assert_eq!(sagan["total_hops"], hops.len(), "{case}");
        assert_eq!(hops.len(), ours.hops.len(), "{case}: {sagan}");
        // One field of every packet of an Atlas hop (null where the packet has none).
        let field = |h: &serde_json::Value, key: &str| -> serde_json::Value {
            h["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.get(key).cloned().unwrap_or(serde_json::Value::Null))
                .collect()
        };
        for (i, (h, o)) in hops.iter().zip(&ours.hops).enumerate() {
            let written = field(h, "from");
            assert_eq!(sagan["paths"][i], written, "{case}");
            assert_eq!(sagan["rtts"][i], field(h, "rtt"), "{case}");
            let mut theirs: Vec<String> = written
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            let mut mine: Vec<String> = o
                .probes
                .iter()
                .filter_map(|p| p.addr.map(|a| a.to_string()))
                .collect();
            theirs.sort();
            theirs.dedup();
            mine.sort();
            mine.dedup();
            assert_eq!(theirs, mine, "{case}: TTL {}", o.ttl);
        }
    }
}

/// One JSON result of `args` (validated against the schema).
fn trace_json_raw(lab: &Lab, args: &[&str]) -> TracerouteResult {
    let out = tracer(lab, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    record(String::from_utf8_lossy(&out.stdout).trim())
}

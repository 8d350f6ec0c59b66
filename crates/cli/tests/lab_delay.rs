//! Real round-trip times in the lab: delay-and-loss lines (see svctr-lab's `line` module) on
//! chosen links, so that paths have RTTs like the Internet's. A flow trace over a 40 ms path
//! takes one round trip; retries recover every hop under 5 % loss; `--timeout` and
//! `--max-missing` do what the README says with real delays. Root only (see
//! `svctr_lab::lab_test_guard`).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{record, stderr, tracer_for};
use svctr_core::{StopReason, TraceResult, TracerouteResult};
use svctr_lab::{
    lab_test_guard, tcp_download_to, tcp_server_on, udp_server_on, udp_session_to, Lab, LabConfig,
    LineConfig, Proto,
};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

/// Seconds since midnight of an RFC 3339 UTC time (`2026-12-05T08:36:58.153529Z`).
fn day_secs(t: &str) -> f64 {
    let time = t.split('T').nth(1).expect("a time").trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

/// From `start` to `end`, in milliseconds (across midnight too).
fn span_ms(start: &str, end: &str) -> f64 {
    let d = day_secs(end) - day_secs(start);
    (if d < 0.0 { d + 86_400.0 } else { d }) * 1000.0
}

/// The address that answered each TTL (the first answer), for every TTL of a result.
fn path_of(hops: &[svctr_core::Hop]) -> Vec<Option<IpAddr>> {
    hops.iter()
        .map(|h| h.probes.iter().find_map(|p| p.addr))
        .collect()
}

/// A lab whose r3-r4 link has a 20 ms line: r4 (hop 5) and the server are 40 ms away.
fn lab_40ms() -> Lab {
    Lab::build(LabConfig {
        lines: vec![LineConfig::new("r3", "r4", MS(20))],
        ..LabConfig::default()
    })
    .expect("lab")
}

/// A flow trace over a path with 40 ms of round trip (a live TCP download and a UDP session,
/// IPv4 and IPv6) sends every TTL at once and finishes within 2 x the farthest hop's RTT + 1 ms
/// of its first probe (its JSON `start` and `end`); every hop is the flow's own, and each RTT
/// is the path's (under 1 ms before the line, 40-42 ms past it: the line keeps time to tens of
/// µs, with rare stalls of a loaded machine).
#[test]
fn a_flow_trace_over_40ms_takes_one_round_trip() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = lab_40ms();
    let _t4 = tcp_server_on(&lab, "0.0.0.0:8080".parse().unwrap(), 2_000_000).expect("tcp");
    let _t6 = tcp_server_on(&lab, "[::]:8080".parse().unwrap(), 2_000_000).expect("tcp6");
    let _u4 = udp_server_on(&lab, "0.0.0.0:9000".parse().unwrap()).expect("udp");
    let _u6 = udp_server_on(&lab, "[::]:9000".parse().unwrap()).expect("udp6");
    for server in [
        IpAddr::V4(lab.server_addr()),
        IpAddr::V6(lab.server_addr6()),
    ] {
        for proto in [Proto::Tcp, Proto::Udp] {
            let (dst, _keep): (SocketAddr, Box<dyn std::any::Any>) = match proto {
                Proto::Tcp => {
                    let dst = SocketAddr::new(server, 8080);
                    let d = tcp_download_to(&lab, dst, 0, 40_000_000, false).expect("download");
                    d.wait_established(SECS(10)).expect("established");
                    (dst, Box::new(d))
                }
                _ => {
                    let dst = SocketAddr::new(server, 9000);
                    let s = udp_session_to(&lab, dst, 0, 400, MS(20), false).expect("session");
                    s.wait_started(SECS(10)).expect("started");
                    (dst, Box::new(s))
                }
            };
            let remote = dst.to_string();
            let which = if proto == Proto::Tcp {
                "--tcp"
            } else {
                "--udp"
            };
            let out = tracer_for(
                &lab,
                &[
                    "flow",
                    "-i",
                    "eth0",
                    which,
                    "--remote",
                    &remote,
                    "--format",
                    "json",
                    "--duration",
                    "10",
                ],
                SECS(60),
            );
            assert!(out.status.success(), "{server} {proto:?}: {}", stderr(&out));
            let r: TraceResult = record(&out.stdout);
            let rtt = |ttl: usize| -> Vec<f64> {
                r.hops[ttl - 1]
                    .probes
                    .iter()
                    .filter_map(|p| p.rtt_ms)
                    .collect()
            };
            assert_eq!(r.hops.len(), lab.hop_count(), "{r:?}");
            for ttl in 1..=4 {
                assert!(
                    rtt(ttl).len() == 3 && rtt(ttl).iter().all(|&ms| ms < 1.0),
                    "{server} {proto:?} hop {ttl} before the line: {:?}",
                    rtt(ttl)
                );
            }
            let far = rtt(5);
            assert!(
                far.len() == 3 && far.iter().all(|&ms| (40.0..42.0).contains(&ms)),
                "{server} {proto:?} hop 5 past the 20 ms line: {far:?}"
            );
            let farthest = far.iter().copied().fold(0.0, f64::max);
            let took = span_ms(&r.start, &r.end);
            eprintln!("{server} {proto:?}: farthest hop {farthest:.3} ms, trace {took:.3} ms");
            assert!(
                took >= farthest && took <= 2.0 * farthest + 1.0,
                "{server} {proto:?}: the trace took {took:.3} ms, its farthest hop {farthest:.3} ms"
            );
        }
    }
}

/// 5 % loss each way on r1-r2 (every probe past r1 and its answer cross it): a `trace` and a
/// UDP flow trace, one probe per TTL with `--retries 3`, still find every hop, the lab's path
/// (for the flow: the branch r2 picks for its 5-tuple).
#[test]
fn retries_find_every_hop_under_5_percent_loss() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig {
        lines: vec![LineConfig {
            loss_ppm: 50_000,
            ..LineConfig::new("r1", "r2", MS(5))
        }],
        ..LabConfig::default()
    })
    .expect("lab");
    let server = lab.server_addr();
    let dst = server.to_string();
    let mut retried = 0;
    for round in 0..15 {
        let out = tracer_for(
            &lab,
            &[
                "trace",
                "-n",
                "-q",
                "1",
                "-w",
                "200ms",
                "--retries",
                "3",
                "--format",
                "json",
                &dst,
            ],
            SECS(60),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let r: TracerouteResult = record(&out.stdout);
        let path = path_of(&r.hops);
        assert_eq!(path.len(), lab.hop_count() + 1, "round {round}: {r:?}");
        let k = lab
            .branch_of_path_ip(&path)
            .unwrap_or_else(|| panic!("{r:?}"));
        let mut want: Vec<Option<IpAddr>> =
            lab.path_ip(k, None, false).into_iter().map(Some).collect();
        want.push(Some(IpAddr::V4(server)));
        assert_eq!(path, want, "round {round}: every hop");
        assert_eq!(r.stop_reason, StopReason::RemoteReached);
        retried += r.hops.iter().filter(|h| h.probes.len() > 1).count();
    }
    // The loss is real: some TTL needed a retry in 15 traces of 6 TTLs (~10 % of probes past
    // r1 lost either way: no retry at all has a chance of 0.59^15, under 1 in 2,500).
    assert!(retried > 0, "no probe lost in 15 traces");

    let _u = udp_server_on(&lab, SocketAddr::new(server.into(), 9000)).expect("udp");
    let session = udp_session_to(
        &lab,
        SocketAddr::new(server.into(), 9000),
        0,
        500,
        MS(20),
        false,
    )
    .expect("session");
    let lport = session.wait_started(SECS(10)).expect("started");
    let remote = format!("{server}:9000");
    let out = tracer_for(
        &lab,
        &[
            "flow",
            "-i",
            "eth0",
            "--udp",
            "--remote",
            &remote,
            "-q",
            "1",
            "-w",
            "200ms",
            "--retries",
            "3",
            "--format",
            "json",
            "--duration",
            "10",
        ],
        SECS(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r: TraceResult = record(&out.stdout);
    let want: Vec<Option<IpAddr>> = lab
        .expected_path_ip(
            Proto::Udp,
            IpAddr::V4(lab.client_addr()),
            IpAddr::V4(server),
            lport,
            9000,
            0,
        )
        .expect("r2's choice")
        .into_iter()
        .map(Some)
        .collect();
    assert_eq!(
        path_of(&r.hops),
        want,
        "the flow's own path, every hop: {r:?}"
    );
}

/// `--timeout` and `--max-missing` with real delays (r4 and the server 40 ms away): with
/// `-w 30ms` the answers from past the line come too late and count as silent, so two silent
/// TTLs end the trace (`max-missing`) 30 ms after the probes went (well before the 40 ms
/// answers; a loaded machine allowed some slack); with `-w 100ms`
/// every hop answers and the destination is reached.
#[test]
fn timeout_and_max_missing_with_real_delays() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = lab_40ms();
    let dst = lab.server_addr().to_string();
    let run = |w: &str| -> TracerouteResult {
        let out = tracer_for(
            &lab,
            &[
                "trace",
                "-n",
                "-q",
                "1",
                "-w",
                w,
                "--max-missing",
                "2",
                "--format",
                "json",
                &dst,
            ],
            SECS(60),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        record(&out.stdout)
    };
    let short = run("30ms");
    let path = path_of(&short.hops);
    assert_eq!(short.stop_reason, StopReason::MaxMissing, "{short:?}");
    assert_eq!(path.len(), 6, "{short:?}");
    assert!(
        path[..4].iter().all(Option::is_some),
        "before the line: {short:?}"
    );
    assert!(
        path[4..].iter().all(Option::is_none),
        "past it, too late: {short:?}"
    );
    let took = span_ms(&short.start, &short.end);
    assert!(
        (30.0..60.0).contains(&took),
        "ended when the probes timed out, not later: {took:.3} ms"
    );
    let long = run("100ms");
    assert_eq!(long.stop_reason, StopReason::RemoteReached, "{long:?}");
    assert!(path_of(&long.hops).iter().all(Option::is_some), "{long:?}");
}

//! Two processes tracing the same flow at once, each with its own slot: every packet on the
//! wire (both processes' probes, every router's reply) reaches both engines, as it reaches both
//! captures on one host. Neither may take a reply to the other's probes, even when their tag
//! sequences start at the same point (the worst case: same seed, same flow, same trace number).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use svctr_core::{
    Engine, Event, FlowFilter, FlowKey, Now, Protocol, StopReason, TraceConfig, TraceResult,
    FLOW_SLOTS,
};
use svctr_wire::probe::{
    emit_tcp_v4, emit_tcp_v6, emit_udp_v4, emit_udp_v6, Ipv4Fields, Ipv6Fields, TcpFields,
    UdpFields,
};

const HOPS: u8 = 5;

fn local(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2))
    }
}

fn remote(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 2))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 19, 1, 2))
    }
}

fn router(ttl: u8, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0x100 + u16::from(ttl),
            0,
            0,
            0,
            0,
            1,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 100 + ttl, 1))
    }
}

/// A packet of the flow: `out` from us, else from the remote (which is `HOPS` routers away).
fn flow_packet(key: &FlowKey, out: bool) -> Vec<u8> {
    let (src, dst, sp, dp, ttl) = if out {
        (
            key.local.ip(),
            key.remote.ip(),
            key.local.port(),
            key.remote.port(),
            64,
        )
    } else {
        (
            key.remote.ip(),
            key.local.ip(),
            key.remote.port(),
            key.local.port(),
            64 - HOPS,
        )
    };
    let tcp = TcpFields {
        src_port: sp,
        dst_port: dp,
        seq: if out { 1000 } else { 5000 },
        ack: if out { 5000 } else { 1000 },
        flags: 0x10,
        window: 500,
    };
    let udp = UdpFields {
        src_port: sp,
        dst_port: dp,
    };
    let mut b = Vec::new();
    match (src, dst, key.protocol) {
        (IpAddr::V4(s), IpAddr::V4(d), p) => {
            let ip = Ipv4Fields {
                src: s,
                dst: d,
                ttl,
                tos: 0,
                dont_fragment: true,
                ident: 9,
            };
            if p == Protocol::Tcp {
                emit_tcp_v4(&ip, &tcp, &[1; 100], &mut b);
            } else {
                emit_udp_v4(&ip, &udp, &[1; 100], &mut b);
            }
        }
        (IpAddr::V6(s), IpAddr::V6(d), p) => {
            let ip = Ipv6Fields {
                src: s,
                dst: d,
                hop_limit: ttl,
                traffic_class: 0,
                flow_label: 5,
            };
            if p == Protocol::Tcp {
                emit_tcp_v6(&ip, &tcp, &[1; 100], &mut b);
            } else {
                emit_udp_v6(&ip, &udp, &[1; 100], &mut b);
            }
        }
        _ => unreachable!(),
    }
    b
}

/// The Time Exceeded a router at `ttl` sends about `probe` (quoting all of it, as Linux does).
fn time_exceeded(probe: &[u8], ttl: u8) -> Vec<u8> {
    let v6 = probe[0] >> 4 == 6;
    let mut quoted = probe.to_vec();
    quoted[if v6 { 7 } else { 8 }] = 1;
    let mut icmp = vec![if v6 { 3 } else { 11 }, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted);
    match (router(ttl, v6), local(v6)) {
        (IpAddr::V4(f), IpAddr::V4(t)) => {
            let total = (20 + icmp.len()) as u16;
            let mut p = vec![
                0x45,
                0,
                (total >> 8) as u8,
                total as u8,
                0,
                0,
                0,
                0,
                64,
                1,
                0,
                0,
            ];
            p.extend_from_slice(&f.octets());
            p.extend_from_slice(&t.octets());
            p.extend_from_slice(&icmp);
            p
        }
        (IpAddr::V6(f), IpAddr::V6(t)) => {
            let len = icmp.len() as u16;
            let mut p = vec![0x60, 0, 0, 0, (len >> 8) as u8, len as u8, 58, 64];
            p.extend_from_slice(&f.octets());
            p.extend_from_slice(&t.octets());
            p.extend_from_slice(&icmp);
            p
        }
        _ => unreachable!(),
    }
}

struct Process {
    engine: Engine,
    results: Vec<TraceResult>,
    sent: usize,
}

/// Runs two processes with slots `a` and `b` on one flow, TTLs 1-2 and 3-4; returns their
/// results.
fn run(protocol: Protocol, v6: bool, a: u8, b: u8) -> (TraceResult, TraceResult) {
    let key = FlowKey {
        protocol,
        local: SocketAddr::new(local(v6), 40000),
        remote: SocketAddr::new(remote(v6), 443),
    };
    let selector = FlowFilter::protocol(protocol);
    let mk = |slot: u8, first_ttl: u8, max_ttl: u8| Process {
        engine: Engine::new(
            TraceConfig {
                slot,
                first_ttl,
                max_ttl,
                probe_remote: true,
                max_missing: 0,
                ..TraceConfig::default()
            },
            selector,
            vec![local(v6)],
        )
        .unwrap(),
        results: Vec::new(),
        sent: 0,
    };
    let mut procs = [mk(a, 1, 2), mk(b, 3, 4)];
    let t0 = Instant::now();
    let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut t = Duration::ZERO;
    // Packets on the wire by delivery time: every one reaches both processes.
    let mut wire: BTreeMap<(Duration, u64), Vec<u8>> = BTreeMap::new();
    let mut n = 0u64;
    for out in [true, false] {
        n += 1;
        wire.insert((t, n), flow_packet(&key, out));
    }
    let mut buf = Vec::new();
    for _ in 0..10_000 {
        let now = Now {
            mono: t0 + t,
            wall: wall0 + t,
        };
        while let Some((&(at, i), _)) = wire.iter().next() {
            if at > t {
                break;
            }
            let p = wire.remove(&(at, i)).unwrap();
            for pr in &mut procs {
                pr.engine.handle_packet(now.mono, now.wall, &p);
            }
        }
        for pr in &mut procs {
            pr.engine.handle_timeout(now);
            while let Some(tx) = pr.engine.poll_transmit(now, &mut buf) {
                pr.sent += 1;
                let probe = buf[..tx.len].to_vec();
                n += 1;
                wire.insert((t, n), probe.clone()); // both captures see it leave
                n += 1;
                let rtt = Duration::from_micros(100 * u64::from(tx.ttl));
                wire.insert((t + rtt, n), time_exceeded(&probe, tx.ttl));
            }
            while let Some(ev) = pr.engine.poll_event() {
                if let Event::TraceFinished(r) = ev {
                    pr.results.push(*r);
                }
            }
        }
        if procs.iter().all(|p| !p.results.is_empty()) {
            let [pa, pb] = procs;
            return (
                pa.results.into_iter().next().unwrap(),
                pb.results.into_iter().next().unwrap(),
            );
        }
        let next = [
            wire.keys().next().map(|k| k.0),
            procs[0].engine.poll_timeout().map(|i| i - t0),
            procs[1].engine.poll_timeout().map(|i| i - t0),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("something to do");
        t = next.max(t);
    }
    panic!("did not finish");
}

fn assert_own_hops(r: &TraceResult, ttls: std::ops::RangeInclusive<u8>, v6: bool, what: &str) {
    assert_eq!(r.stop_reason, StopReason::MaxTtl, "{what}: {r:?}");
    let got: Vec<u8> = r.hops.iter().map(|h| h.ttl).collect();
    assert_eq!(got, ttls.clone().collect::<Vec<_>>(), "{what}");
    for h in &r.hops {
        for p in &h.probes {
            assert_eq!(
                p.addr,
                Some(router(h.ttl, v6)),
                "{what}: ttl {} {r:?}",
                h.ttl
            );
        }
    }
    assert_eq!(r.replies, r.probes_sent, "{what}: exactly its own replies");
}

#[test]
fn two_processes_on_one_flow_never_take_each_others_replies() {
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for v6 in [false, true] {
            for (a, b) in [(3, 11), (0, 1), (0, FLOW_SLOTS - 1), (7, 8)] {
                let what = format!("{protocol:?} v6={v6} slots {a},{b}");
                let (ra, rb) = run(protocol, v6, a, b);
                assert_own_hops(&ra, 1..=2, v6, &format!("{what}: process A"));
                assert_own_hops(&rb, 3..=4, v6, &format!("{what}: process B"));
            }
        }
    }
}

/// The control: with the same slot (what two processes had before slots existed), the
/// processes do take each other's replies, so the test above can fail.
#[test]
fn the_same_slot_would_mix_replies() {
    let (ra, rb) = run(Protocol::Tcp, true, 5, 5);
    let foreign = |r: &TraceResult| {
        r.hops
            .iter()
            .flat_map(|h| h.probes.iter().map(move |p| (h.ttl, p.addr)))
            .any(|(ttl, addr)| addr.is_some() && addr != Some(router(ttl, true)))
    };
    assert!(foreign(&ra) || foreign(&rb), "{ra:?} {rb:?}");
}

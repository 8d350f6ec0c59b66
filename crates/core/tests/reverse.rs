//! Scenario tests of the reverse-traceroute engines: the server alone (requests in, probes
//! and responses out), and client and server together over a simulated path back, in virtual
//! time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant, SystemTime};

use svctr_core::reverse::{
    ClientConfig, Rate, ReverseClient, ReverseEvent, ReverseResult, ReverseServer, ReverseStop,
    ServerConfig, ServerEvent, SessionEvent,
};
use svctr_core::{
    Machine, Mda, MdaConfig, MdaEvent, MdaResult, MdaStop, Now, Protocol, ReverseMda,
};
use svctr_wire::packet::{parse_ip, Transport};
use svctr_wire::probe::{emit_icmp_message, IpFields, Ipv4Fields, Ipv6Fields};
use svctr_wire::revtr::{Family, Request, Response, ResponseBody, State};

fn a(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const C4: &str = "198.18.1.2";
const S4: &str = "198.19.1.2";
const C6: &str = "2001:2:0:1801::2";
const S6: &str = "2001:2:0:1901::2";

struct Clock {
    t0: Instant,
    w0: SystemTime,
    t: Duration,
}

impl Clock {
    fn new() -> Self {
        Self {
            t0: Instant::now(),
            w0: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            t: Duration::ZERO,
        }
    }
    fn now(&self) -> Now {
        Now {
            mono: self.t0 + self.t,
            wall: self.w0 + self.t,
        }
    }
    fn advance(&mut self, d: Duration) {
        self.t += d;
    }
}

/// The ICMP bytes of a request from `from` to `to`.
fn request_icmp(from: IpAddr, to: IpAddr, req: &Request) -> Vec<u8> {
    let mut icmp = Vec::new();
    match (from, to) {
        (IpAddr::V6(s), IpAddr::V6(d)) => req.emit_v6(&s, &d, &mut icmp),
        _ => req.emit_v4(&mut icmp),
    };
    icmp
}

/// A request's IP datagram, padded with zeros to `pad` bytes.
fn request_packet(from: IpAddr, to: IpAddr, req: &Request, pad: usize, tos: u8) -> Vec<u8> {
    let mut icmp = request_icmp(from, to, req);
    let h = if from.is_ipv4() { 20 } else { 40 };
    if pad > h + icmp.len() {
        icmp.resize(pad - h, 0);
    }
    let ip = match (from, to) {
        (IpAddr::V4(s), IpAddr::V4(d)) => IpFields::V4(Ipv4Fields {
            src: s,
            dst: d,
            ttl: 60,
            tos,
            dont_fragment: true,
            ident: 0x4242,
        }),
        (IpAddr::V6(s), IpAddr::V6(d)) => IpFields::V6(Ipv6Fields {
            src: s,
            dst: d,
            hop_limit: 60,
            traffic_class: tos,
            flow_label: 0x12345,
        }),
        _ => unreachable!(),
    };
    let mut out = Vec::new();
    emit_icmp_message(&ip, &icmp, &mut out);
    out
}

fn req(id: u16, ttl: u8, protocol: u8, flow: u16) -> Request {
    Request {
        ident: id,
        seq: 0,
        ttl,
        protocol,
        flow,
        indirect: None,
        flow_probe: None,
        padding: 0,
    }
}

fn mapped(a: IpAddr) -> IpAddr {
    a
}

/// The success body of a response.
fn success(r: &Response) -> (IpAddr, u64) {
    match r.body {
        ResponseBody::Success { hop, rtt_ns, .. } => (hop, rtt_ns),
        ResponseBody::Error { state, .. } => panic!("state {state:?}"),
    }
}

/// A response's IP datagram from `from` to `to`.
fn response_packet(from: IpAddr, to: IpAddr, r: &Response) -> Vec<u8> {
    let mut icmp = Vec::new();
    match (from, to) {
        (IpAddr::V6(s), IpAddr::V6(d)) => r.emit_v6(&s, &d, &mut icmp),
        _ => r.emit_v4(&mut icmp),
    };
    ip(from, to, if from.is_ipv4() { 1 } else { 58 }, &icmp)
}

/// Everything the server sends now.
fn drain(s: &mut ReverseServer, now: Now) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while let Some(tx) = s.poll_transmit(now, &mut buf) {
        assert_eq!(tx.len, buf.len());
        out.push(buf.clone());
    }
    out
}

fn events(s: &mut ReverseServer) -> Vec<ServerEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// An IP packet carrying `payload` (checksums not set: the parsers do not check them).
fn ip(from: IpAddr, to: IpAddr, proto: u8, payload: &[u8]) -> Vec<u8> {
    match (from, to) {
        (IpAddr::V4(f), IpAddr::V4(t)) => {
            let total = (20 + payload.len()) as u16;
            let mut p = vec![
                0x45,
                0,
                (total >> 8) as u8,
                total as u8,
                0,
                0,
                0,
                0,
                60,
                proto,
            ];
            p.extend_from_slice(&[0, 0]);
            p.extend_from_slice(&f.octets());
            p.extend_from_slice(&t.octets());
            p.extend_from_slice(payload);
            p
        }
        (IpAddr::V6(f), IpAddr::V6(t)) => {
            let len = payload.len() as u16;
            let mut p = vec![0x60, 0, 0, 0, (len >> 8) as u8, len as u8, proto, 60];
            p.extend_from_slice(&f.octets());
            p.extend_from_slice(&t.octets());
            p.extend_from_slice(payload);
            p
        }
        _ => unreachable!(),
    }
}

/// A router's time-exceeded (or the target's port-unreachable) quoting `probe`.
fn icmp_error(from: IpAddr, probe: &[u8], unreachable: bool) -> Vec<u8> {
    let p = parse_ip(probe).unwrap();
    let v6 = from.is_ipv6();
    let (t, c) = match (v6, unreachable) {
        (false, false) => (11, 0),
        (false, true) => (3, 3),
        (true, false) => (3, 0),
        (true, true) => (1, 4),
    };
    let mut quoted = probe.to_vec();
    quoted[if v6 { 7 } else { 8 }] = 1;
    let mut icmp = vec![t, c, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted);
    ip(from, p.ip.src, if v6 { 58 } else { 1 }, &icmp)
}

/// What the probe's destination itself answers: port unreachable (UDP), RST (TCP), echo
/// reply (ICMP).
fn direct_answer(probe: &[u8]) -> Vec<u8> {
    let p = parse_ip(probe).unwrap();
    let h = if p.ip.src.is_ipv4() { 20 } else { 40 };
    match p.transport {
        Transport::Udp(_) => icmp_error(p.ip.dst, probe, true),
        Transport::Tcp(t) => {
            let mut tcp = vec![0u8; 20];
            tcp[0..2].copy_from_slice(&t.dst_port.to_be_bytes());
            tcp[2..4].copy_from_slice(&t.src_port.to_be_bytes());
            tcp[8..12].copy_from_slice(&t.seq.wrapping_add(1).to_be_bytes());
            tcp[12] = 0x50;
            tcp[13] = 0x14; // RST+ACK
            ip(p.ip.dst, p.ip.src, 6, &tcp)
        }
        Transport::Icmp(_) => {
            let mut icmp = probe[h..].to_vec();
            icmp[0] = if p.ip.src.is_ipv4() { 0 } else { 129 };
            ip(
                p.ip.dst,
                p.ip.src,
                if p.ip.src.is_ipv4() { 1 } else { 58 },
                &icmp,
            )
        }
        _ => unreachable!(),
    }
}

fn response_of(packet: &[u8]) -> (IpAddr, IpAddr, u8, Response) {
    let p = parse_ip(packet).unwrap();
    let h = if p.ip.src.is_ipv4() { 20 } else { 40 };
    assert_eq!(packet[h + 1], 1, "code 1");
    assert_eq!(packet[h], if p.ip.src.is_ipv4() { 0 } else { 129 });
    let family = if p.ip.src.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    (
        p.ip.src,
        p.ip.dst,
        p.ip.ttl,
        Response::parse(family, &packet[h..]).expect("a response"),
    )
}

fn rfc1071_ok(bytes: &[u8]) -> bool {
    let mut sum = 0u32;
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

#[test]
fn udp_probe_carries_the_flow_and_the_identifier_and_its_answer_comes_back() {
    for (c, s, r) in [(C4, S4, "198.19.2.1"), (C6, S6, "2001:2:0:1902::1")] {
        let (c, s, r) = (a(c), a(s), a(r));
        let mut clock = Clock::new();
        let mut srv = ReverseServer::new(ServerConfig::default());
        let rq = request_packet(c, s, &req(0x1234, 5, 17, 40000), 0, 0x28);
        srv.handle_packet(clock.now().mono, clock.now().wall, &rq);
        let out = drain(&mut srv, clock.now());
        assert_eq!(out.len(), 1);
        let probe = &out[0];
        let p = parse_ip(probe).unwrap();
        assert_eq!((p.ip.src, p.ip.dst, p.ip.ttl, p.ip.tos), (s, c, 5, 0x28));
        if c.is_ipv4() {
            assert_eq!(p.ip.ident, 0x4242, "the request's identification");
            assert!(p.ip.dont_fragment);
            assert_eq!(probe.len(), 36);
        } else {
            assert_eq!(p.ip.flow_label, 0x12345, "the request's flow label");
            assert_eq!(probe.len(), 56);
        }
        let Transport::Udp(u) = p.transport else {
            panic!("UDP")
        };
        assert_eq!((u.src_port, u.dst_port), (1021, 40000));
        let h = if c.is_ipv4() { 20 } else { 40 };
        assert_eq!(&probe[h + 6..h + 8], &[0x12, 0x34], "checksum = identifier");
        let ev = events(&mut srv);
        assert!(matches!(
            ev[0].event,
            SessionEvent::Created {
                ttl: 5,
                flow: 40000,
                protocol: Protocol::Udp,
                ..
            }
        ));
        // The capture sees the probe leave, then the router's error 1.5 ms later.
        srv.handle_packet(clock.now().mono, clock.now().wall, probe);
        clock.advance(Duration::from_micros(1500));
        srv.handle_packet(
            clock.now().mono,
            clock.now().wall,
            &icmp_error(r, probe, false),
        );
        let out = drain(&mut srv, clock.now());
        assert_eq!(out.len(), 1, "one response");
        let (from, to, ttl, resp) = response_of(&out[0]);
        assert_eq!((from, to, ttl), (s, c, 64));
        assert_eq!(resp.ident, 0x1234);
        assert_eq!(resp.state(), State::Success);
        assert_eq!(success(&resp), (r, 1_500_000));
        let h = if c.is_ipv4() { 20 } else { 40 };
        if c.is_ipv4() {
            assert!(rfc1071_ok(&out[0][h..]), "ICMP checksum");
        }
        assert_eq!(srv.open_sessions(), 0);
        let ev = events(&mut srv);
        assert!(matches!(ev[0].event, SessionEvent::Answered { hop, .. } if hop == r));
    }
}

#[test]
fn tcp_and_icmp_probes_and_the_targets_own_answers() {
    for (c, s) in [(C4, S4), (C6, S6)] {
        let (c, s) = (a(c), a(s));
        for (proto, flow) in [
            (6u8, 8080u16),
            (if c.is_ipv4() { 1 } else { 58 }, 0x7777),
            (0, 0),
        ] {
            let clock = Clock::new();
            let mut srv = ReverseServer::new(ServerConfig::default());
            let rq = request_packet(c, s, &req(0xbeef, 9, proto, flow), 0, 0);
            srv.handle_packet(clock.now().mono, clock.now().wall, &rq);
            let out = drain(&mut srv, clock.now());
            assert_eq!(out.len(), 1, "{proto}");
            let probe = &out[0];
            let p = parse_ip(probe).unwrap();
            let h = if c.is_ipv4() { 20 } else { 40 };
            match p.transport {
                Transport::Tcp(t) => {
                    assert_eq!(
                        (t.src_port, t.dst_port, t.seq, t.flags),
                        (1021, 8080, 0xbeef, 2)
                    );
                    assert_eq!(&probe[h + 20..h + 24], &[2, 4, 0x05, 0xb4], "MSS 1460");
                }
                Transport::Icmp(_) => {
                    assert_eq!(probe[h + 1], 0, "code 0");
                    assert_eq!(&probe[h + 4..h + 8], &[0xbe, 0xef, 0xff, 0xff]);
                    let want: u16 = if flow == 0 { 0xbeaf } else { flow };
                    assert_eq!(&probe[h + 2..h + 4], &want.to_be_bytes(), "checksum = flow");
                    if c.is_ipv4() {
                        assert!(rfc1071_ok(&probe[h..]));
                    }
                }
                ref t => panic!("{t:?}"),
            }
            srv.handle_packet(clock.now().mono, clock.now().wall, &direct_answer(probe));
            let out = drain(&mut srv, clock.now());
            assert_eq!(out.len(), 1, "{proto}: the target's own answer");
            let (_, _, _, resp) = response_of(&out[0]);
            assert_eq!(success(&resp).0, mapped(c));
        }
    }
}

#[test]
fn error_states_follow_the_servers_numbering() {
    let (c, s) = (a(C4), a(S4));
    let clock = Clock::new();
    let mut srv = ReverseServer::new(ServerConfig::default());
    // The indirect-target extension (reference §1.3), off by default: state 4, value 0x0500;
    // an object of another class: state 4 with its class and c-type.
    let ext = Request {
        indirect: Some("::ffff:198.51.100.7".parse::<Ipv6Addr>().unwrap()),
        ..req(7, 5, 17, 1)
    };
    let with_ext = request_icmp(c, s, &ext);
    let mut bad_class = with_ext.clone();
    bad_class[18] = 9; // class-num 9, c-type 3 (the object header at 16: length, class, type)
    bad_class[19] = 3;
    let v4 = |r: &Request| request_icmp(c, s, r);
    let cases: Vec<(Vec<u8>, State, u16)> = vec![
        (v4(&req(1, 0, 17, 0)), State::Ttl, 0),
        (v4(&req(2, 5, 99, 0)), State::Protocol, 0),
        (v4(&req(3, 5, 58, 0)), State::Protocol, 0),
        (with_ext, State::MultipartNotSupported, 0x0500),
        (bad_class, State::MultipartNotSupported, 0x0903),
    ];
    for (icmp, state, value) in cases {
        let ipf = IpFields::V4(Ipv4Fields {
            src: "198.18.1.2".parse().unwrap(),
            dst: "198.19.1.2".parse().unwrap(),
            ttl: 64,
            tos: 0,
            dont_fragment: false,
            ident: 1,
        });
        let mut rq = Vec::new();
        emit_icmp_message(&ipf, &icmp, &mut rq);
        srv.handle_packet(clock.now().mono, clock.now().wall, &rq);
        let out = drain(&mut srv, clock.now());
        assert_eq!(out.len(), 1, "state {state:?}");
        let (from, to, _, resp) = response_of(&out[0]);
        assert_eq!((from, to), (s, c));
        assert_eq!(resp.body, ResponseBody::Error { state, value });
        assert_eq!(out[0].len(), 32, "an error response is 12 bytes of ICMP");
    }
    assert_eq!(srv.open_sessions(), 0);
    assert_eq!(srv.stats().errors, 5);
}

#[test]
fn malformed_and_foreign_packets_are_dropped_and_nothing_panics() {
    let (c, s) = (a(C4), a(S4));
    let clock = Clock::new();
    let mut srv = ReverseServer::new(ServerConfig {
        addresses: vec![s],
        ..ServerConfig::default()
    });
    // Every length of ICMP 0..=64 after a valid request's first bytes (code 1).
    let full = request_icmp(c, s, &req(9, 5, 17, 53));
    for len in 0..=64usize {
        let mut icmp: Vec<u8> = full
            .iter()
            .copied()
            .chain(std::iter::repeat(0))
            .take(len)
            .collect();
        if len >= 2 {
            icmp[1] = 1;
        }
        let mut rq = ip(c, s, 1, &icmp);
        if len < 4 {
            rq.truncate(20 + len);
        }
        srv.handle_packet(clock.now().mono, clock.now().wall, &rq);
    }
    // Lengths 12.. are requests; only the first opens a session, the rest find it open.
    assert_eq!(drain(&mut srv, clock.now()).len(), 1);
    assert_eq!(srv.stats().refused.malformed, 4, "lengths 8-11");
    assert!(srv.stats().refused.session_exists >= 50);
    // A request to another address is not ours.
    let other = request_packet(c, a("198.19.9.9"), &req(10, 5, 17, 53), 0, 0);
    srv.handle_packet(clock.now().mono, clock.now().wall, &other);
    assert!(drain(&mut srv, clock.now()).is_empty());
    // Pseudo-random bytes, as IPv4 and IPv6 packets of every kind.
    let mut x: u64 = 0x1234_5678;
    for i in 0..20_000 {
        let len = (i % 120) + 1;
        let mut p: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        p[0] = if i % 2 == 0 { 0x45 } else { 0x60 };
        srv.handle_packet(clock.now().mono, clock.now().wall, &p);
        let _ = drain(&mut srv, clock.now());
    }
}

#[test]
fn one_session_per_requester_and_identifier_a_bounded_table_and_timeouts() {
    let (c, s) = (a(C4), a(S4));
    let mut clock = Clock::new();
    let mut srv = ReverseServer::new(ServerConfig {
        max_sessions: 3,
        timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    });
    let send = |srv: &mut ReverseServer, clock: &Clock, id: u16| {
        let rq = request_packet(c, s, &req(id, 5, 17, 53), 0, 0);
        srv.handle_packet(clock.now().mono, clock.now().wall, &rq);
    };
    send(&mut srv, &clock, 1);
    send(&mut srv, &clock, 1);
    assert_eq!(
        drain(&mut srv, clock.now()).len(),
        1,
        "the same id again is dropped"
    );
    for id in 2..=6 {
        send(&mut srv, &clock, id);
    }
    assert_eq!(drain(&mut srv, clock.now()).len(), 2, "the table holds 3");
    assert_eq!(srv.open_sessions(), 3);
    assert_eq!(srv.stats().refused.session_exists, 1);
    assert_eq!(srv.stats().refused.sessions_full, 3);
    clock.advance(Duration::from_millis(4999));
    srv.handle_timeout(clock.now());
    assert_eq!(srv.open_sessions(), 3);
    clock.advance(Duration::from_millis(1));
    assert_eq!(srv.poll_timeout(), Some(clock.now().mono));
    srv.handle_timeout(clock.now());
    assert_eq!(srv.open_sessions(), 0);
    let timed_out = events(&mut srv)
        .iter()
        .filter(|e| e.event == SessionEvent::TimedOut)
        .count();
    assert_eq!(timed_out, 3);
    // A late answer to a closed session: dropped, nothing sent.
    send(&mut srv, &clock, 1);
    let probe = drain(&mut srv, clock.now()).remove(0);
    clock.advance(Duration::from_secs(6));
    srv.handle_timeout(clock.now());
    srv.handle_packet(
        clock.now().mono,
        clock.now().wall,
        &icmp_error(a("198.19.2.1"), &probe, false),
    );
    assert!(drain(&mut srv, clock.now()).is_empty());
    assert_eq!(srv.stats().unmatched_answers, 1);
}

#[test]
fn rate_limits_hold_under_a_spoofed_flood_and_only_requesters_get_packets() {
    let s = a(S4);
    let mut clock = Clock::new();
    let mut srv = ReverseServer::new(ServerConfig {
        source_rate: Rate::new(10.0, 20.0),
        global_rate: Rate::new(1000.0, 100.0),
        max_sessions: 100_000,
        timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    });
    // One second: 200,000 requests from 20,000 sources (10 each), 1 ms steps.
    let mut sent_to: BTreeMap<IpAddr, usize> = BTreeMap::new();
    let mut requesters = std::collections::BTreeSet::new();
    let mut packets = 0usize;
    for ms in 0..1000u32 {
        for k in 0..200u32 {
            let n = ms * 200 + k;
            let src = IpAddr::from([198, 18, (n / 250 % 80) as u8, (n % 250 + 1) as u8]);
            requesters.insert(src);
            let rq = request_packet(src, s, &req((n % 65535 + 1) as u16, 5, 17, 53), 0, 0);
            srv.handle_packet(clock.now().mono, clock.now().wall, &rq);
        }
        for p in drain(&mut srv, clock.now()) {
            packets += 1;
            *sent_to.entry(parse_ip(&p).unwrap().ip.dst).or_default() += 1;
        }
        clock.advance(Duration::from_millis(1));
        srv.handle_timeout(clock.now());
        let _ = events(&mut srv);
    }
    // 1,000/s plus the burst of 100 at most.
    assert!(packets <= 1100, "{packets} probes in one second");
    assert!(packets >= 1000, "{packets} {:?}", srv.stats());
    assert!(
        sent_to.keys().all(|d| requesters.contains(d)),
        "only to requesters"
    );
    assert!(srv.open_sessions() <= 100_000);
    let st = srv.stats();
    assert!(st.refused.global_rate > 190_000, "{st:?}");
    assert!(srv.tracked_sources() <= ServerConfig::default().max_sources);
    // One source alone: its burst of 20, then 10 per second.
    let mut srv = ReverseServer::new(ServerConfig {
        source_rate: Rate::new(10.0, 20.0),
        ..ServerConfig::default()
    });
    let mut n = 0;
    for i in 0..2000u16 {
        let rq = request_packet(a(C4), s, &req(i + 1, 5, 17, 53), 0, 0);
        srv.handle_packet(clock.now().mono, clock.now().wall, &rq);
        n += drain(&mut srv, clock.now()).len();
        clock.advance(Duration::from_millis(1));
    }
    assert!((38..=41).contains(&n), "{n} in 2 s");
}

#[test]
fn padding_can_be_required_so_that_no_request_is_amplified() {
    for (c, s) in [(C4, S4), (C6, S6)] {
        let (c, s) = (a(c), a(s));
        let clock = Clock::new();
        let mut srv = ReverseServer::new(ServerConfig {
            require_padding: true,
            ..ServerConfig::default()
        });
        let short = request_packet(c, s, &req(1, 5, 6, 80), 0, 0);
        srv.handle_packet(clock.now().mono, clock.now().wall, &short);
        assert!(drain(&mut srv, clock.now()).is_empty());
        assert_eq!(srv.stats().refused.not_padded, 1);
        let pad = svctr_core::reverse::default_pad(c.is_ipv6());
        for (id, proto) in [(2u16, 6u8), (3, 17), (4, 0)] {
            let rq = request_packet(c, s, &req(id, 5, proto, 80), pad, 0);
            assert_eq!(rq.len(), pad);
            srv.handle_packet(clock.now().mono, clock.now().wall, &rq);
            let probe = drain(&mut srv, clock.now()).remove(0);
            srv.handle_packet(clock.now().mono, clock.now().wall, &direct_answer(&probe));
            let resp = drain(&mut srv, clock.now()).remove(0);
            assert!(
                probe.len() + resp.len() <= rq.len(),
                "{} + {} > {}",
                probe.len(),
                resp.len(),
                rq.len()
            );
        }
        let st = srv.stats();
        assert!(st.bytes_out <= st.bytes_in, "{st:?}");
    }
}

#[test]
fn the_allowlist_and_the_indirect_target() {
    let (c, s) = (a(C4), a(S4));
    let clock = Clock::new();
    let nets = svctr_core::reverse::parse_allowlist("198.18.1.0/24\n").unwrap();
    let mut srv = ReverseServer::new(ServerConfig {
        allow: nets.clone(),
        indirect: true,
        allow_indirect: nets,
        ..ServerConfig::default()
    });
    let stranger = request_packet(a("198.18.2.2"), s, &req(1, 5, 17, 53), 0, 0);
    srv.handle_packet(clock.now().mono, clock.now().wall, &stranger);
    assert!(drain(&mut srv, clock.now()).is_empty());
    assert_eq!(srv.stats().refused.not_allowed, 1);
    let target: Ipv6Addr = "::ffff:198.19.50.1".parse().unwrap();
    let rq = Request {
        indirect: Some(target),
        ..req(77, 4, 17, 53)
    };
    let pkt = request_packet(c, s, &rq, 0, 0);
    srv.handle_packet(clock.now().mono, clock.now().wall, &pkt);
    let probe = drain(&mut srv, clock.now()).remove(0);
    assert_eq!(parse_ip(&probe).unwrap().ip.dst, a("198.19.50.1"));
    srv.handle_packet(
        clock.now().mono,
        clock.now().wall,
        &icmp_error(a("198.19.3.1"), &probe, false),
    );
    let (_, to, _, resp) = response_of(&drain(&mut srv, clock.now())[0]);
    assert_eq!(to, c, "the response goes to the requester");
    assert_eq!(resp.ident, 77, "with the requester's identifier");
}

/// A path back from the server: routers, then the client; each answers as Linux does. A
/// TTL with several routers is a per-flow load balancer's stage: a probe meets the one its
/// flow (ports, or ICMP checksum) hashes to, with `seed`.
struct PathBack {
    routers: Vec<Option<IpAddr>>,
    client: IpAddr,
    /// TTL (1-based) → the routers of an ECMP stage there.
    stages: BTreeMap<usize, Vec<IpAddr>>,
    seed: u64,
}

impl PathBack {
    fn line(routers: Vec<Option<IpAddr>>, client: IpAddr) -> Self {
        Self {
            routers,
            client,
            stages: BTreeMap::new(),
            seed: 0,
        }
    }

    /// The hashed fields of a probe: its ports, or its ICMP checksum.
    fn flow_of(probe: &[u8]) -> u64 {
        let p = parse_ip(probe).unwrap();
        let h = if p.ip.src.is_ipv4() { 20 } else { 40 };
        let b = |i: usize| u64::from(u16::from_be_bytes([probe[h + i], probe[h + i + 1]]));
        match p.transport {
            Transport::Udp(_) | Transport::Tcp(_) => (b(0) << 16) | b(2),
            _ => b(2),
        }
    }

    fn answer(&self, probe: &[u8]) -> Option<Vec<u8>> {
        let p = parse_ip(probe).unwrap();
        let ttl = usize::from(p.ip.ttl);
        if ttl <= self.routers.len() {
            let r = match self.stages.get(&ttl) {
                Some(stage) => {
                    // splitmix64's finalizer, salted by the seed and the TTL (each stage
                    // hashes on its own, as routers with their own keys do).
                    let mut x = Self::flow_of(probe)
                        ^ self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        ^ (ttl as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
                    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    x ^= x >> 31;
                    stage[(x % stage.len() as u64) as usize]
                }
                None => self.routers[ttl - 1]?,
            };
            return Some(icmp_error(r, probe, false));
        }
        (p.ip.dst == self.client).then(|| direct_answer(probe))
    }
}

/// Client and server over `path`: returns the client's events.
fn run(
    cfg: ClientConfig,
    c: IpAddr,
    s: IpAddr,
    path: &PathBack,
    server: bool,
) -> Vec<ReverseEvent> {
    let cl = ReverseClient::new(cfg, s, c).unwrap();
    run_machine(cl, c, path, server)
}

/// A client engine `cl` (requests out, responses in) and our server over `path`: returns
/// the client's events. Asserts that no identifier is reused while outstanding.
fn run_machine<M: Machine>(mut cl: M, c: IpAddr, path: &PathBack, server: bool) -> Vec<M::Event> {
    let mut clock = Clock::new();
    let mut srv = ReverseServer::new(ServerConfig::default());
    // (deliver at, to the server?, packet)
    let mut wire: BTreeMap<(Duration, u64), (bool, Vec<u8>)> = BTreeMap::new();
    let mut n = 0u64;
    let mut buf = Vec::new();
    let mut events = Vec::new();
    let mut outstanding = std::collections::BTreeSet::new();
    for _ in 0..100_000 {
        while let Some((&k, _)) = wire.iter().next() {
            if k.0 > clock.t {
                break;
            }
            let (to_server, p) = wire.remove(&k).unwrap();
            if to_server {
                srv.handle_packet(clock.now().mono, clock.now().wall, &p);
            } else {
                cl.handle_packet(clock.now().mono, clock.now().wall, &p);
            }
        }
        cl.handle_timeout(clock.now());
        srv.handle_timeout(clock.now());
        while let Some(tx) = cl.poll_transmit(clock.now(), &mut buf) {
            let at = if c.is_ipv4() { 24 } else { 44 };
            let id = u16::from_be_bytes([buf[at], buf[at + 1]]);
            assert!(
                outstanding.insert(id),
                "identifier {id} reused while outstanding"
            );
            let _ = tx;
            n += 1;
            if server {
                wire.insert((clock.t + Duration::from_millis(5), n), (true, buf.clone()));
            }
        }
        while let Some(tx) = srv.poll_transmit(clock.now(), &mut buf) {
            n += 1;
            if tx.ttl == 64 {
                let at = if c.is_ipv4() { 24 } else { 44 };
                let id = u16::from_be_bytes([buf[at], buf[at + 1]]);
                outstanding.remove(&id);
                // The response crosses the routers of the way back.
                let mut resp = buf.clone();
                let ttl_at = if c.is_ipv4() { 8 } else { 7 };
                resp[ttl_at] = resp[ttl_at].saturating_sub(path.routers.len() as u8);
                wire.insert((clock.t + Duration::from_millis(5), n), (false, resp));
            } else if let Some(ans) = path.answer(&buf) {
                let ttl = u64::from(tx.ttl);
                wire.insert((clock.t + Duration::from_millis(ttl), n), (true, ans));
            }
        }
        while let Some(e) = cl.poll_event() {
            events.push(e);
        }
        let _ = events_of(&mut srv);
        if cl.is_done() {
            return events;
        }
        let next = [
            wire.keys().next().map(|k| k.0),
            cl.poll_timeout().map(|i| i - clock.now().mono + clock.t),
            srv.poll_timeout().map(|i| (i - clock.now().mono) + clock.t),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("something to wait for");
        if next > clock.t {
            clock.advance(next - clock.t);
        }
    }
    panic!("did not finish");
}

fn events_of(s: &mut ReverseServer) -> Vec<ServerEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn result(ev: &[ReverseEvent]) -> ReverseResult {
    ev.iter()
        .find_map(|e| match e {
            ReverseEvent::Finished(r) => Some((**r).clone()),
            _ => None,
        })
        .expect("a result")
}

#[test]
fn a_reverse_trace_finds_every_hop_of_the_path_back() {
    for (c, s, routers) in [
        (
            C4,
            S4,
            ["198.19.1.1", "198.19.3.1", "198.18.2.1", "198.18.1.1"],
        ),
        (
            C6,
            S6,
            [
                "2001:2:0:1901::1",
                "2001:2:0:1903::1",
                "2001:2:0:1802::1",
                "2001:2:0:1801::1",
            ],
        ),
    ] {
        let (c, s) = (a(c), a(s));
        for protocol in [Protocol::Udp, Protocol::Tcp, Protocol::Icmp] {
            let path = PathBack::line(routers.iter().map(|r| Some(a(r))).collect(), c);
            let cfg = ClientConfig {
                protocol,
                flow: 33000,
                ..ClientConfig::default()
            };
            let ev = run(cfg, c, s, &path, true);
            assert!(matches!(ev[0], ReverseEvent::ServerPresent), "{ev:?}");
            let r = result(&ev);
            assert_eq!(r.stop_reason, ReverseStop::Reached, "{protocol:?}");
            let hops: Vec<Vec<IpAddr>> = r
                .graph
                .hops
                .iter()
                .map(|h| h.nodes.iter().filter_map(|n| n.addr).collect())
                .collect();
            let mut want: Vec<Vec<IpAddr>> = routers.iter().map(|x| vec![a(x)]).collect();
            want.push(vec![c]);
            assert_eq!(hops, want, "{protocol:?}");
            assert_eq!(r.graph.links.len(), 4);
            // Every probe answered; streamed hops equal the result's, in order.
            let streamed: Vec<u8> = ev
                .iter()
                .filter_map(|e| match e {
                    ReverseEvent::Hop(h) => Some(h.ttl),
                    _ => None,
                })
                .collect();
            assert_eq!(streamed, vec![1, 2, 3, 4, 5]);
            assert!(r.graph.hops.iter().all(|h| h
                .nodes
                .iter()
                .all(|n| n.probes.len() == 3 || n.addr.is_some())));
            // RTT: the server-to-hop time the simulation gives (TTL ms there and back).
            let rtt = r.graph.hops[2].nodes[0].probes[0].rtt_ms.unwrap();
            assert!((rtt - 3.0).abs() < 1e-6, "{rtt}");
            assert_eq!(r.source, s);
            assert_eq!(r.destination, c);
            // The presence check's response (TTL 60 here: 4 routers) bounds the TTLs asked
            // for: the check and 3 per TTL, none past this host.
            assert_eq!(r.requests_sent, 1 + 3 * 5, "{protocol:?}");
        }
    }
}

/// A way back longer than the presence check's response said (the probes' flow takes a longer
/// branch than the response did): the trace goes on past the estimate and reaches this host.
#[test]
fn a_longer_way_than_the_estimate_is_followed_to_its_end() {
    let (c, s) = (a(C4), a(S4));
    let routers: Vec<Option<IpAddr>> = (1..=7).map(|i| Some(a(&format!("198.19.{i}.1")))).collect();
    let path = PathBack::line(routers, c);
    let r = result(&run(ClientConfig::default(), c, s, &path, true));
    assert_eq!(r.stop_reason, ReverseStop::Reached);
    assert_eq!(r.graph.hops.len(), 8);
    assert_eq!(r.graph.hops[7].nodes[0].addr, Some(c));
}

#[test]
fn silent_routers_missing_ttls_and_no_server() {
    let (c, s) = (a(C4), a(S4));
    // A silent router is a silent TTL; the trace goes on past it.
    let path = PathBack::line(vec![Some(a("198.19.1.1")), None, Some(a("198.18.1.1"))], c);
    let r = result(&run(ClientConfig::default(), c, s, &path, true));
    assert_eq!(r.stop_reason, ReverseStop::Reached);
    assert_eq!(r.graph.hops.len(), 4);
    assert!(r.graph.hops[1].nodes.iter().all(|n| n.addr.is_none()));
    // The client never answers and the routers stop: max missing.
    let path = PathBack::line(
        vec![Some(a("198.19.1.1")), None, None, None, None, None],
        a("198.18.99.99"),
    );
    let r = result(&run(ClientConfig::default(), c, s, &path, true));
    assert_eq!(r.stop_reason, ReverseStop::MaxMissing);
    assert_eq!(r.graph.hops.len(), 4, "TTL 1 and three silent ones");
    // No server: the presence check is never answered.
    let r = result(&run(ClientConfig::default(), c, s, &path, false));
    assert_eq!(r.stop_reason, ReverseStop::NoServer);
    assert_eq!(r.requests_sent, 1);
}

#[test]
fn a_plain_echo_reply_or_an_error_state_ends_the_trace_with_its_reason() {
    let (c, s) = (a(C4), a(S4));
    let now = Clock::new().now();
    // A kernel's echo reply to the presence check: code 1 kept, the request's 4 bytes echoed.
    let mut cl = ReverseClient::new(ClientConfig::default(), s, c).unwrap();
    let mut buf = Vec::new();
    let tx = cl.poll_transmit(now, &mut buf).unwrap();
    let mut echo = buf[20..].to_vec();
    echo[0] = 0;
    cl.handle_packet(now.mono, now.wall, &ip(s, c, 1, &echo));
    let ev: Vec<_> = std::iter::from_fn(|| cl.poll_event()).collect();
    assert_eq!(result(&ev).stop_reason, ReverseStop::NotSupported, "{tx:?}");
    // The server refuses the protocol: state 2.
    let mut cl = ReverseClient::new(ClientConfig::default(), s, c).unwrap();
    let tx = cl.poll_transmit(now, &mut buf).unwrap();
    let error = |ident, state| Response {
        ident,
        seq: 0,
        body: ResponseBody::Error { state, value: 0 },
    };
    cl.handle_packet(
        now.mono,
        now.wall,
        &response_packet(s, c, &error(tx.ident, State::Ttl)),
    );
    let tx = cl.poll_transmit(now, &mut buf).unwrap();
    let refused = response_packet(s, c, &error(tx.ident, State::Protocol));
    cl.handle_packet(now.mono, now.wall, &refused);
    cl.interrupt(now);
    let ev: Vec<_> = std::iter::from_fn(|| cl.poll_event()).collect();
    let r = result(&ev);
    assert_eq!(r.stop_reason, ReverseStop::ServerError { state: 2 });
    assert!(
        r.stop_reason.describe().contains("protocol"),
        "{}",
        r.stop_reason.describe()
    );
}

#[test]
fn identifiers_are_never_reused_while_outstanding_and_answered_ones_come_back_first() {
    let (c, s) = (a(C4), a(S4));
    let now = Clock::new().now();
    let mut cl = ReverseClient::new(
        ClientConfig {
            presence_check: false,
            seed: 65533,
            window: 2,
            probes: 2,
            ..ClientConfig::default()
        },
        s,
        c,
    )
    .unwrap();
    let mut buf = Vec::new();
    let ids: Vec<u16> =
        std::iter::from_fn(|| cl.poll_transmit(now, &mut buf).map(|t| t.ident)).collect();
    assert_eq!(ids, vec![65534, 65535, 1, 2], "1..65535, never 0");
    // Answer TTL 1's two requests: TTL 1 completes, TTL 3 is asked for with those two
    // identifiers, last answered first.
    for id in [65534u16, 65535] {
        let r = Response {
            ident: id,
            seq: 0,
            body: ResponseBody::Success {
                hop: a("198.19.1.1"),
                rtt_ns: 1000,
                value: 0,
            },
        };
        cl.handle_packet(now.mono, now.wall, &response_packet(s, c, &r));
    }
    let ids: Vec<u16> =
        std::iter::from_fn(|| cl.poll_transmit(now, &mut buf).map(|t| t.ident)).collect();
    assert_eq!(ids, vec![65535, 65534]);
}

// ---- multipath discovery of the way back -------------------------------------------------

/// A way back with a 3-wide ECMP stage at TTL 2 (and a 2-wide one at TTL 4): the reverse
/// MDA, against our server, with the request's flow value as what varies.
fn ecmp_back(c: IpAddr, seed: u64) -> PathBack {
    let v6 = c.is_ipv6();
    let r = |i: u8| {
        if v6 {
            a(&format!("2001:2:0:19{i:02}::1"))
        } else {
            a(&format!("198.19.{i}.1"))
        }
    };
    let mut p = PathBack::line(vec![Some(r(1)), None, Some(r(5)), None, Some(r(8))], c);
    p.stages.insert(2, vec![r(2), r(3), r(4)]);
    p.stages.insert(4, vec![r(6), r(7)]);
    p.seed = seed;
    p
}

fn reverse_mda(protocol: Protocol, c: IpAddr, s: IpAddr) -> Mda {
    reverse_mda_from(protocol, c, s, 0)
}

/// The reverse MDA with its flow values starting `offset` into their range.
fn reverse_mda_from(protocol: Protocol, c: IpAddr, s: IpAddr, offset: u16) -> Mda {
    let mut mda = Mda::new(MdaConfig {
        protocol,
        reverse: Some(ReverseMda {
            pad: svctr_core::reverse::default_pad(c.is_ipv6()),
            ident_first: 5000,
            ident_count: 1024,
            flow_offset: offset,
        }),
        ..MdaConfig::default()
    })
    .unwrap();
    mda.add_target(Clock::new().now().mono, s, c).unwrap();
    mda
}

fn mda_result(ev: Vec<MdaEvent>) -> MdaResult {
    ev.into_iter()
        .find_map(|e| match e {
            MdaEvent::Finished(r) => Some(*r),
            _ => None,
        })
        .expect("a result")
}

#[test]
fn reverse_multipath_finds_every_way_back_and_never_one_that_does_not_exist() {
    let (mut runs, mut exact, mut probes) = (0u32, 0u32, 0u64);
    for (c, s) in [(C4, S4), (C6, S6)] {
        let (c, s) = (a(c), a(s));
        for protocol in [Protocol::Udp, Protocol::Tcp, Protocol::Icmp] {
            for seed in 0..50 {
                let path = ecmp_back(c, seed);
                // Offsets near the end of the range too: the flow values wrap to 10000.
                let offset = (seed as u16).wrapping_mul(55_000 / 49);
                let m = reverse_mda_from(protocol, c, s, offset);
                let r = mda_result(run_machine(m, c, &path, true));
                assert_eq!(r.stop_reason, MdaStop::Completed, "{protocol:?} {seed}");
                assert_eq!(r.direction.as_deref(), Some("reverse"));
                assert_eq!((r.source, r.destination), (s, c));
                let nodes: BTreeSet<(u8, IpAddr)> = r
                    .graph
                    .hops
                    .iter()
                    .flat_map(|h| h.addrs().map(move |x| (h.ttl, x)))
                    .collect();
                let mut want = BTreeSet::new();
                for (i, router) in path.routers.iter().enumerate() {
                    let ttl = i as u8 + 1;
                    match router {
                        Some(x) => {
                            want.insert((ttl, *x));
                        }
                        None => want.extend(path.stages[&(i + 1)].iter().map(|x| (ttl, *x))),
                    }
                }
                want.insert((6, c));
                assert!(
                    nodes.is_subset(&want),
                    "{protocol:?} {seed}: {:?} do not exist",
                    nodes.difference(&want).collect::<Vec<_>>()
                );
                // Every link is one the stages make (TTL t to t + 1, both on the way).
                for l in &r.graph.links {
                    assert!(want.contains(&(l.ttl, l.from)) && want.contains(&(l.ttl + 1, l.to)));
                }
                // The RTT is the server's (TTL ms there and back in this simulation).
                let rtt = r.graph.hops[0].nodes[0].probes[0].rtt_ms.unwrap();
                assert!((rtt - 1.0).abs() < 1e-6, "{rtt}");
                runs += 1;
                probes += u64::from(r.probes_sent);
                if nodes == want && r.graph.links.len() == 3 + 3 + 2 + 2 + 1 {
                    exact += 1;
                } else {
                    eprintln!(
                        "{protocol:?} {c} {seed}: missing {:?}, {} links",
                        want.difference(&nodes).collect::<Vec<_>>(),
                        r.graph.links.len()
                    );
                }
            }
        }
    }
    eprintln!(
        "{exact} of {runs} runs exact, {} requests per run",
        probes / u64::from(runs)
    );
    assert!(exact * 100 >= runs * 95, "{exact} of {runs}");
}

#[test]
fn reverse_multipath_presence_check_plain_ping_and_refusal() {
    let (c, s) = (a(C4), a(S4));
    // No server: the presence check times out.
    let path = ecmp_back(c, 0);
    let r = mda_result(run_machine(
        reverse_mda(Protocol::Udp, c, s),
        c,
        &path,
        false,
    ));
    assert_eq!(r.stop_reason, MdaStop::NoServer);
    assert_eq!((r.probes_sent, r.replies), (1, 0));
    assert!(r.graph.hops.is_empty());
    assert!(!r.stop_reason.is_ok());
    // A kernel's echo reply to the presence check: not a server.
    let now = Clock::new().now();
    let mut m = reverse_mda(Protocol::Udp, c, s);
    let mut buf = Vec::new();
    let _ = m.poll_transmit(now, &mut buf).unwrap();
    let req = Request::parse(Family::V4, &buf[20..]).expect("a request");
    assert_eq!(
        (req.ttl, req.protocol, req.flow),
        (0, 0, 0),
        "the presence check"
    );
    assert_eq!(buf.len(), svctr_core::reverse::default_pad(false), "padded");
    let mut echo = buf[20..].to_vec();
    echo[0] = 0;
    m.handle_packet(now.mono, now.wall, &ip(s, c, 1, &echo));
    let r = mda_result(std::iter::from_fn(|| m.poll_event()).collect());
    assert_eq!(r.stop_reason, MdaStop::NotSupported);
    // The server answers the check, then refuses the protocol (state 2): the discovery ends
    // at once with the state, the requests in flight forgotten.
    let mut m = reverse_mda(Protocol::Tcp, c, s);
    let tx = m.poll_transmit(now, &mut buf).unwrap();
    let id = |b: &[u8]| u16::from_be_bytes([b[24], b[25]]);
    let error = |ident, state| Response {
        ident,
        seq: 0,
        body: ResponseBody::Error { state, value: 0 },
    };
    m.handle_packet(
        now.mono,
        now.wall,
        &response_packet(s, c, &error(id(&buf), State::Ttl)),
    );
    let mut flows = BTreeSet::new();
    let mut first = None;
    while m.poll_transmit(now, &mut buf).is_some() {
        let req = Request::parse(Family::V4, &buf[20..]).expect("a request");
        assert_eq!((req.ttl, req.protocol), (1, 6));
        assert!(flows.insert(req.flow), "one request per flow in a round");
        assert!(req.flow >= svctr_core::REVERSE_FLOW_BASE);
        first.get_or_insert(id(&buf));
    }
    assert!(flows.len() >= 8, "{flows:?}");
    let refused = response_packet(s, c, &error(first.unwrap(), State::Protocol));
    m.handle_packet(now.mono, now.wall, &refused);
    let r = mda_result(std::iter::from_fn(|| m.poll_event()).collect());
    assert_eq!(r.stop_reason, MdaStop::ServerError);
    assert_eq!(r.server_state, Some(2));
    assert!(
        svctr_core::multipath_footer(&r).contains("protocol"),
        "{tx:?}"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["direction"], "reverse");
    assert_eq!(json["stop_reason"], "server-error");
    assert_eq!(json["server_state"], 2);
}

// ---- flow-shaped probes (`flow --reverse`, experimental object) ---------------------------

/// A request with the flow-probe object makes the server send the flow's own packet back:
/// TCP a pure ACK from the service port with the given numbers (IPv4 and IPv6), UDP the
/// flow's ports with the identifier as checksum; a router's error quoting it is matched by
/// what the probe carries (its ports are not 1021) and answered; an ICMP flow probe is
/// refused with state 2, and a second request whose probe would look the same is dropped.
#[test]
fn flow_shaped_probes_carry_the_flows_reverse_five_tuple() {
    for (c, s, r) in [(C4, S4, "198.19.3.1"), (C6, S6, "2001:2:0:1903::1")] {
        let (c, s, r) = (a(c), a(s), a(r));
        let clock = Clock::new();
        let mut srv = ReverseServer::new(ServerConfig::default());
        let flow = svctr_wire::revtr::FlowProbe {
            server_port: 8080,
            client_port: 50_001,
            seq: 1_000_000,
            ack: 2_000_000,
            window: 501,
        };
        let tcp = Request {
            flow_probe: Some(flow),
            ..req(7, 3, 6, 50_001)
        };
        let packet = request_packet(c, s, &tcp, 0, 0x28);
        srv.handle_packet(clock.now().mono, clock.now().wall, &packet);
        let out = drain(&mut srv, clock.now());
        assert_eq!(out.len(), 1, "one probe");
        let p = parse_ip(&out[0]).unwrap();
        assert_eq!((p.ip.src, p.ip.dst, p.ip.ttl, p.ip.tos), (s, c, 3, 0x28));
        let Transport::Tcp(t) = p.transport else {
            panic!("a TCP probe")
        };
        assert_eq!((t.src_port, t.dst_port), (8080, 50_001));
        assert_eq!(
            (t.seq, t.ack, t.flags, t.window),
            (1_000_000, 2_000_000, 0x10, 501)
        );
        assert_eq!(t.payload_len, 0, "a keep-alive-shaped ACK");
        // A second request whose probe carries the same sequence number: ambiguous, dropped.
        let again = Request { ident: 8, ..tcp };
        srv.handle_packet(
            clock.now().mono,
            clock.now().wall,
            &request_packet(c, s, &again, 0, 0),
        );
        assert!(drain(&mut srv, clock.now()).is_empty());
        assert_eq!(srv.stats().refused.session_exists, 1);
        // The router's error, quoting the probe, is matched and answered to the requester.
        srv.handle_packet(
            clock.now().mono,
            clock.now().wall,
            &icmp_error(r, &out[0], false),
        );
        let (from, to, _, resp) = response_of(&drain(&mut srv, clock.now())[0]);
        assert_eq!((from, to, resp.ident), (s, c, 7));
        assert_eq!(success(&resp).0, r);
        assert!(
            matches!(
                resp.body,
                ResponseBody::Success {
                    value: svctr_wire::revtr::FLOW_PROBE_MARK,
                    ..
                }
            ),
            "the response says the flow's own packet was sent"
        );
        // UDP: the flow's ports, the identifier as checksum.
        let udp = Request {
            flow_probe: Some(flow),
            ..req(9, 2, 17, 50_001)
        };
        srv.handle_packet(
            clock.now().mono,
            clock.now().wall,
            &request_packet(c, s, &udp, 0, 0),
        );
        let out = drain(&mut srv, clock.now());
        let p = parse_ip(&out[0]).unwrap();
        let Transport::Udp(u) = p.transport else {
            panic!("a UDP probe")
        };
        assert_eq!((u.src_port, u.dst_port), (8080, 50_001));
        let h = if c.is_ipv4() { 20 } else { 40 };
        assert_eq!(&out[0][h + 6..h + 8], &[0, 9], "checksum = identifier");
        assert_eq!(out[0].len(), h + 10, "two payload bytes");
        assert!(rfc1071_ok(&out[0][..h]) || c.is_ipv6());
        srv.handle_packet(
            clock.now().mono,
            clock.now().wall,
            &icmp_error(r, &out[0], false),
        );
        let (_, _, _, resp) = response_of(&drain(&mut srv, clock.now())[0]);
        assert_eq!((resp.ident, success(&resp).0), (9, r));
        // ICMP with the object: state 2.
        let icmp = Request {
            flow_probe: Some(flow),
            ..req(10, 2, if c.is_ipv4() { 1 } else { 58 }, 0)
        };
        srv.handle_packet(
            clock.now().mono,
            clock.now().wall,
            &request_packet(c, s, &icmp, 0, 0),
        );
        let (_, _, _, resp) = response_of(&drain(&mut srv, clock.now())[0]);
        assert_eq!(resp.state(), State::Protocol);
        assert_eq!(srv.open_sessions(), 0);
    }
}

/// The client with a flow (`flow --reverse`) against our server over a 4-router way back:
/// TTLs up to the flow's distance, never further (the probes never reach this host), every
/// router found, each request its own sequence number; against a server that refuses the
/// object (the reference: state 4), the trace ends with that state for the caller to fall
/// back.
#[test]
fn a_flows_reverse_trace_stops_short_of_this_host() {
    let (c, s) = (a(C4), a(S4));
    let routers = ["198.19.1.1", "198.19.3.1", "198.18.2.1", "198.18.1.1"];
    let path = PathBack::line(routers.iter().map(|r| Some(a(r))).collect(), c);
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let cfg = ClientConfig {
            protocol,
            max_ttl: 4,
            flow_probe: Some(svctr_core::reverse::ReverseFlow {
                server_port: 8080,
                client_port: 50_002,
                seq: 5000,
                ack: 6000,
                window: 100,
                tos: 0,
                flow_label: 0,
                distance: Some(4),
            }),
            ..ClientConfig::default()
        };
        let r = result(&run(cfg, c, s, &path, true));
        assert_eq!(r.stop_reason, ReverseStop::MaxTtl, "{protocol:?}");
        let hops: Vec<IpAddr> = r
            .graph
            .hops
            .iter()
            .map(|h| h.nodes[0].addr.expect("answered"))
            .collect();
        assert_eq!(hops, routers.map(a), "{protocol:?}");
        assert_eq!(r.requests_sent, 1 + 3 * 4);
        assert!(
            r.flow_shaped,
            "our server marks its flow-shaped probes' responses"
        );
    }
    // A server that ignores the object (the reference's `main`: trailing bytes): its
    // responses carry no mark, and the result does not claim the flow's own 5-tuple.
    {
        let now = Clock::new().now();
        let cfg = ClientConfig {
            protocol: Protocol::Udp,
            max_ttl: 1,
            probes: 1,
            flow_probe: Some(svctr_core::reverse::ReverseFlow {
                server_port: 9000,
                client_port: 50_003,
                seq: 0,
                ack: 0,
                window: 0,
                tos: 0,
                flow_label: 0,
                distance: Some(1),
            }),
            ..ClientConfig::default()
        };
        let mut cl = ReverseClient::new(cfg, s, c).unwrap();
        let mut buf = Vec::new();
        let tx = cl.poll_transmit(now, &mut buf).unwrap();
        let presence = Response {
            ident: tx.ident,
            seq: 0,
            body: ResponseBody::Error {
                state: State::Ttl,
                value: 0,
            },
        };
        cl.handle_packet(now.mono, now.wall, &response_packet(s, c, &presence));
        let tx = cl.poll_transmit(now, &mut buf).unwrap();
        let plain = Response {
            ident: tx.ident,
            seq: 0,
            body: ResponseBody::Success {
                hop: a(routers[0]),
                rtt_ns: 1000,
                value: 0,
            },
        };
        cl.handle_packet(now.mono, now.wall, &response_packet(s, c, &plain));
        let ev: Vec<_> = std::iter::from_fn(|| cl.poll_event()).collect();
        let r = result(&ev);
        assert_eq!(r.stop_reason, ReverseStop::MaxTtl);
        assert!(
            !r.flow_shaped,
            "ordinary probes: not the flow's own 5-tuple"
        );
    }
    // A server that refuses the object: state 4 on the first probe's request.
    let now = Clock::new().now();
    let cfg = ClientConfig {
        protocol: Protocol::Tcp,
        max_ttl: 4,
        flow_probe: Some(svctr_core::reverse::ReverseFlow {
            server_port: 8080,
            client_port: 50_002,
            seq: 5000,
            ack: 6000,
            window: 100,
            tos: 0,
            flow_label: 0,
            distance: Some(4),
        }),
        ..ClientConfig::default()
    };
    let mut cl = ReverseClient::new(cfg, s, c).unwrap();
    let mut buf = Vec::new();
    let tx = cl.poll_transmit(now, &mut buf).unwrap();
    let presence = Request::parse(Family::V4, &buf[20..]).unwrap();
    assert_eq!(
        presence.flow_probe, None,
        "the presence check goes without the object"
    );
    let error = |ident, state, value| Response {
        ident,
        seq: 0,
        body: ResponseBody::Error { state, value },
    };
    cl.handle_packet(
        now.mono,
        now.wall,
        &response_packet(s, c, &error(tx.ident, State::Ttl, 0)),
    );
    let tx = cl.poll_transmit(now, &mut buf).unwrap();
    let first = Request::parse(Family::V4, &buf[20..]).unwrap();
    assert!(first.flow_probe.is_some());
    let value = u16::from_be_bytes([
        svctr_wire::revtr::FLOW_OBJECT_CLASS,
        svctr_wire::revtr::FLOW_OBJECT_CTYPE,
    ]);
    cl.handle_packet(
        now.mono,
        now.wall,
        &response_packet(s, c, &error(tx.ident, State::MultipartNotSupported, value)),
    );
    cl.interrupt(now);
    let ev: Vec<_> = std::iter::from_fn(|| cl.poll_event()).collect();
    assert_eq!(
        result(&ev).stop_reason,
        ReverseStop::ServerError { state: 4 }
    );
}

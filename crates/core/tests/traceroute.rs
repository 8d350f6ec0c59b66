//! Deterministic tests of the classic/Paris/Dublin traceroute engine on an in-memory network
//! with a per-flow load balancer: hop 2 has three branches, chosen by a hash of the fields real
//! load balancers use (addresses, protocol, ports; for ICMP the type, code and checksum; for
//! IPv6 also the flow label).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant, SystemTime};

use svctr_core::{
    Now, Pacer, Protocol, StopReason, Strategy, Traceroute, TracerouteConfig, TracerouteEvent,
    TracerouteResult,
};
use svctr_wire::packet::{parse_ip, Transport};

const HOPS: u8 = 4; // routers; the destination is at TTL 5
const ECMP_HOP: u8 = 2;

fn src_for(dst: IpAddr) -> IpAddr {
    match dst {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
        IpAddr::V6(_) => IpAddr::V6("2001:db8::2".parse().unwrap()),
    }
}

fn router(ttl: u8, branch: u8, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            u16::from(ttl),
            0,
            0,
            0,
            0,
            u16::from(branch) + 1,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, ttl, branch + 1))
    }
}

fn fnv(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The branch a per-flow load balancer picks for this packet.
fn branch_of(probe: &[u8]) -> u8 {
    let v6 = probe[0] >> 4 == 6;
    let (h, mut key) = if v6 {
        let mut k = probe[8..40].to_vec(); // addresses
        k.push(probe[6]); // next header
        k.extend_from_slice(&[probe[1] & 0x0f, probe[2], probe[3]]); // flow label
        (40, k)
    } else {
        let mut k = probe[12..20].to_vec();
        k.push(probe[9]);
        (20, k)
    };
    // UDP/TCP: ports; ICMP: type, code, checksum (the first 4 bytes either way).
    key.extend_from_slice(&probe[h..h + 4]);
    (fnv(&key) % 3) as u8
}

fn ones_sum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// An IP packet from `from` to `to` carrying an ICMP/ICMPv6 message `icmp` (checksum not set:
/// the parser does not check it).
fn ip_packet(from: IpAddr, to: IpAddr, proto_icmp: bool, payload: &[u8], ttl: u8) -> Vec<u8> {
    match (from, to) {
        (IpAddr::V4(f), IpAddr::V4(t)) => {
            let total = 20 + payload.len();
            let mut p = vec![
                0x45,
                0,
                (total >> 8) as u8,
                total as u8,
                0,
                0,
                0,
                0,
                ttl,
                if proto_icmp { 1 } else { 6 },
                0,
                0,
            ];
            p.extend_from_slice(&f.octets());
            p.extend_from_slice(&t.octets());
            p.extend_from_slice(payload);
            p
        }
        (IpAddr::V6(f), IpAddr::V6(t)) => {
            let mut p = vec![
                0x60,
                0,
                0,
                0,
                (payload.len() >> 8) as u8,
                payload.len() as u8,
                if proto_icmp { 58 } else { 6 },
                ttl,
            ];
            p.extend_from_slice(&f.octets());
            p.extend_from_slice(&t.octets());
            p.extend_from_slice(payload);
            p
        }
        _ => unreachable!(),
    }
}

struct Net {
    engine: Traceroute,
    t0: Instant,
    t: Duration,
    queue: BTreeMap<(Duration, u64), Vec<u8>>,
    seq: u64,
    events: Vec<TracerouteEvent>,
    /// (target, ttl) -> branches seen at the ECMP hop, and the branch per probe number
    branches: BTreeMap<IpAddr, BTreeSet<u8>>,
    sent: usize,
    /// Replies also handed to a second process's engine.
    replies: Vec<Vec<u8>>,
    /// A rate limit, applied as the live driver does.
    pacer: Option<Pacer>,
    /// Loop turns run.
    turns: usize,
    /// Share of probes past TTL 1, and of their answers, lost (with a seeded generator).
    loss: Option<(f64, u64)>,
}

impl Net {
    fn new(cfg: TracerouteConfig) -> Self {
        Self {
            engine: Traceroute::new(cfg).unwrap(),
            t0: Instant::now(),
            t: Duration::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            events: Vec::new(),
            branches: BTreeMap::new(),
            sent: 0,
            replies: Vec::new(),
            pacer: None,
            turns: 0,
            loss: None,
        }
    }
    fn now(&self) -> Now {
        Now {
            mono: self.t0 + self.t,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + self.t,
        }
    }
    fn push(&mut self, at: Duration, p: Vec<u8>) {
        self.seq += 1;
        self.queue.insert((at, self.seq), p);
    }
    /// Whether the seeded loss takes this packet.
    fn lost(&mut self) -> bool {
        let Some((p, state)) = &mut self.loss else {
            return false;
        };
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state % 1_000_000) as f64 / 1e6 < *p
    }
    fn on_probe(&mut self, dst: IpAddr, ttl: u8, probe: Vec<u8>) {
        self.sent += 1;
        let at = self.t;
        self.push(at, probe.clone()); // our own capture
        if ttl > 1 && (self.lost() || self.lost()) {
            return; // the probe, or its answer, lost on the way
        }
        let v6 = dst.is_ipv6();
        let src = src_for(dst);
        let branch = branch_of(&probe);
        if (ECMP_HOP..=HOPS + 1).contains(&ttl) {
            self.branches.entry(dst).or_default().insert(branch);
        }
        let rtt = Duration::from_millis(u64::from(ttl));
        let mut quoted = probe.clone();
        quoted[if v6 { 7 } else { 8 }] = 1;
        let reply = if ttl <= HOPS {
            let from = if ttl >= ECMP_HOP {
                router(ttl, branch, v6)
            } else {
                router(ttl, 0, v6)
            };
            let mut icmp = vec![if v6 { 3 } else { 11 }, 0, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&quoted);
            ip_packet(from, src, true, &icmp, 64 - ttl)
        } else {
            let pkt = parse_ip(&probe).unwrap();
            let h = if v6 { 40 } else { 20 };
            match pkt.transport {
                Transport::Udp(_) => {
                    let mut icmp = vec![
                        if v6 { 1 } else { 3 },
                        if v6 { 4 } else { 3 },
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                    ];
                    icmp.extend_from_slice(&quoted);
                    ip_packet(dst, src, true, &icmp, 60)
                }
                Transport::Tcp(t) => {
                    // SYN-ACK: ack = seq + 1.
                    let mut tcp = Vec::new();
                    tcp.extend_from_slice(&t.dst_port.to_be_bytes());
                    tcp.extend_from_slice(&t.src_port.to_be_bytes());
                    tcp.extend_from_slice(&7u32.to_be_bytes());
                    tcp.extend_from_slice(&t.seq.wrapping_add(1).to_be_bytes());
                    tcp.extend_from_slice(&[0x50, 0x12, 0xff, 0xff, 0, 0, 0, 0]);
                    ip_packet(dst, src, false, &tcp, 60)
                }
                Transport::Icmp(_) => {
                    // Echo reply: same identifier, sequence and payload.
                    let mut icmp = probe[h..].to_vec();
                    icmp[0] = if v6 { 129 } else { 0 };
                    icmp[2] = 0;
                    icmp[3] = 0;
                    let c = !ones_sum(&icmp);
                    icmp[2..4].copy_from_slice(&c.to_be_bytes());
                    ip_packet(dst, src, true, &icmp, 60)
                }
                Transport::Other => return,
            }
        };
        self.replies.push(reply.clone());
        self.push(at + rtt, reply);
    }
    fn run(&mut self) {
        let mut buf = Vec::new();
        for _ in 0..1_000_000 {
            self.turns += 1;
            while let Some((&(at, s), _)) = self.queue.iter().next() {
                if at > self.t {
                    break;
                }
                let p = self.queue.remove(&(at, s)).unwrap();
                let now = self.now();
                self.engine.handle_packet(now.mono, now.wall, &p);
            }
            let now = self.now();
            self.engine.handle_timeout(now);
            while self
                .pacer
                .as_ref()
                .is_none_or(|p| p.next_at(now.mono).is_none())
            {
                let Some(tx) = self.engine.poll_transmit(now, &mut buf) else {
                    break;
                };
                if let Some(p) = &mut self.pacer {
                    p.try_take(now.mono);
                }
                let p = buf[..tx.len].to_vec();
                self.on_probe(tx.dst, tx.ttl, p);
            }
            while let Some(e) = self.engine.poll_event() {
                self.events.push(e);
            }
            // As the live driver: probes left queued go when the next token is there.
            let token = match &self.pacer {
                Some(p) if self.engine.has_pending_transmit() => {
                    Some(p.next_at(now.mono).unwrap_or(now.mono) - self.t0)
                }
                _ => None,
            };
            let next = [
                self.queue.keys().next().map(|k| k.0),
                self.engine.poll_timeout().map(|i| i - self.t0),
                token,
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(n) => self.t = n.max(self.t),
                None => return,
            }
        }
        panic!("did not settle");
    }
    fn results(&self) -> Vec<&TracerouteResult> {
        self.events
            .iter()
            .filter_map(|e| match e {
                TracerouteEvent::Finished(r) => Some(&**r),
                _ => None,
            })
            .collect()
    }
}

/// Lossy paths (10 % of probes past TTL 1 and 10 % of their answers lost): with one probe per
/// TTL and retries, every trace ends (the engine never waits with nothing to wait for), and
/// most find every hop.
#[test]
fn retries_under_loss_always_end() {
    let mut complete = 0;
    for seed in 1..=400u64 {
        for protocol in [Protocol::Udp, Protocol::Tcp, Protocol::Icmp] {
            let mut net = Net::new(TracerouteConfig {
                probes_per_hop: 1,
                timeout: Duration::from_millis(200),
                retries: 3,
                ..cfg(protocol, Strategy::Paris)
            });
            net.loss = Some((0.1, seed * 7919));
            let now = net.now();
            let dst = targets(false, 1)[0];
            net.engine.add_target(now.mono, dst, src_for(dst)).unwrap();
            net.run();
            let results = net.results();
            assert_eq!(
                results.len(),
                1,
                "seed {seed} {protocol:?}: the trace ended"
            );
            if results[0]
                .hops
                .iter()
                .all(|h| h.probes.iter().any(|p| p.addr.is_some()))
            {
                complete += 1;
            }
        }
    }
    assert!(complete >= 1150, "{complete} of 1200 complete");
}

fn targets(v6: bool, n: u16) -> Vec<IpAddr> {
    (0..n)
        .map(|i| {
            if v6 {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, i + 1))
            } else {
                IpAddr::V4(Ipv4Addr::new(198, 19, (i >> 8) as u8, (i & 0xff) as u8 + 1))
            }
        })
        .collect()
}

fn cfg(protocol: Protocol, strategy: Strategy) -> TracerouteConfig {
    TracerouteConfig {
        protocol,
        strategy,
        sport: 40123,
        marker: 0x4242,
        flow_label: 0x12345,
        ..TracerouteConfig::default()
    }
}

fn run_matrix(protocol: Protocol, strategy: Strategy, v6: bool) -> Net {
    eprintln!("case {protocol:?} {strategy:?} v6={v6}");
    let mut net = Net::new(cfg(protocol, strategy));
    let now = net.now();
    for dst in targets(v6, 12) {
        net.engine.add_target(now.mono, dst, src_for(dst)).unwrap();
    }
    net.run();
    let results = net.results();
    assert_eq!(results.len(), 12, "{protocol:?} {strategy:?} v6={v6}");
    for r in results {
        assert_eq!(r.stop_reason, StopReason::RemoteReached, "{r:?}");
        assert_eq!(r.hops.len(), usize::from(HOPS) + 1, "{r:?}");
        assert!(
            r.hops
                .iter()
                .all(|h| h.probes.len() == 3 && h.probes.iter().all(|p| p.addr.is_some())),
            "every probe answered and matched: {r:?}"
        );
        assert!(
            r.probes_sent <= 16 + 15,
            "the window bounds probing past the destination: {}",
            r.probes_sent
        );
        let last = r.hops.last().unwrap();
        assert!(
            last.probes.iter().all(|p| p.addr == Some(r.destination)),
            "{r:?}"
        );
        for h in &r.hops {
            for p in &h.probes {
                assert!(
                    p.rtt_ms
                        .is_some_and(|ms| (ms - f64::from(h.ttl)).abs() < 1e-6),
                    "rtt {p:?}"
                );
            }
            if h.ttl < ECMP_HOP {
                assert!(h
                    .probes
                    .iter()
                    .all(|p| p.addr == Some(router(h.ttl, 0, v6))));
            }
        }
        assert_eq!(r.ip_version, if v6 { 6 } else { 4 });
        assert_eq!(r.strategy, strategy);
        assert_eq!(r.protocol, protocol);
        if strategy != Strategy::Classic {
            // One flow: one branch for every probe, and the routers agree with it.
            let b = &net.branches[&r.destination];
            assert_eq!(
                b.len(),
                1,
                "{strategy:?} {protocol:?} v6={v6}: one path per flow id, saw {b:?}"
            );
            let branch = *b.iter().next().unwrap();
            for h in r.hops.iter().filter(|h| h.ttl >= ECMP_HOP && h.ttl <= HOPS) {
                assert!(
                    h.probes
                        .iter()
                        .all(|p| p.addr == Some(router(h.ttl, branch, v6))),
                    "{r:?}"
                );
            }
        }
    }
    if strategy == Strategy::Classic {
        // The flow identifier changes per probe: across 12 targets the probes of one trace
        // spread over several branches.
        assert!(
            net.branches.values().any(|b| b.len() > 1),
            "{protocol:?} v6={v6}: classic probes spread: {:?}",
            net.branches
        );
    }
    net
}

#[test]
fn every_protocol_strategy_and_ip_version() {
    for v6 in [false, true] {
        for protocol in [Protocol::Udp, Protocol::Tcp, Protocol::Icmp] {
            for strategy in [Strategy::Classic, Strategy::Paris, Strategy::Dublin] {
                run_matrix(protocol, strategy, v6);
            }
        }
    }
}

#[test]
fn another_process_never_takes_our_replies() {
    for protocol in [Protocol::Udp, Protocol::Tcp, Protocol::Icmp] {
        for strategy in [Strategy::Classic, Strategy::Paris, Strategy::Dublin] {
            for v6 in [false, true] {
                let a = run_matrix(protocol, strategy, v6);
                // Process B traces the same targets with its own port and marker, but its probes
                // are never answered; it is shown every reply that A's probes caused.
                let other = TracerouteConfig {
                    sport: 40999,
                    marker: 0x7777,
                    timeout: Duration::from_millis(100),
                    max_missing: 0,
                    max_ttl: 6,
                    max_in_flight: 0,
                    ..cfg(protocol, strategy)
                };
                let mut b = Traceroute::new(other).unwrap();
                let t0 = Instant::now();
                let wall = SystemTime::UNIX_EPOCH;
                for dst in targets(v6, 12) {
                    b.add_target(t0, dst, src_for(dst)).unwrap();
                }
                let mut buf = Vec::new();
                while b.poll_transmit(Now { mono: t0, wall }, &mut buf).is_some() {}
                for r in &a.replies {
                    b.handle_packet(t0, wall, r);
                }
                b.handle_timeout(Now {
                    mono: t0 + Duration::from_secs(1),
                    wall,
                });
                let mut n = 0;
                while let Some(e) = b.poll_event() {
                    if let TracerouteEvent::Finished(r) = e {
                        assert_eq!(
                            r.replies, 0,
                            "{protocol:?} {strategy:?} v6={v6}: B took A's reply: {r:?}"
                        );
                        n += 1;
                    }
                }
                assert_eq!(n, 12);
            }
        }
    }
}

#[test]
fn hops_stream_in_ttl_order_before_the_result() {
    let net = run_matrix(Protocol::Udp, Strategy::Paris, false);
    let mut per_target: BTreeMap<IpAddr, Vec<u8>> = BTreeMap::new();
    for e in &net.events {
        match e {
            TracerouteEvent::Hop { target, hop } => {
                per_target.entry(*target).or_default().push(hop.ttl)
            }
            TracerouteEvent::Finished(r) => {
                assert_eq!(
                    per_target[&r.destination],
                    (1..=HOPS + 1).collect::<Vec<_>>(),
                    "all hops streamed before the result"
                );
            }
            _ => {}
        }
    }
}

#[test]
fn ten_thousand_targets_at_once() {
    let mut net = Net::new(TracerouteConfig {
        probes_per_hop: 1,
        parallel: 0, // all at once (the default starts 1024, the rest as those finish)
        ..cfg(Protocol::Udp, Strategy::Paris)
    });
    let now = net.now();
    let all: Vec<IpAddr> = (0..10_000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0xc613_0000 + i + 1)))
        .collect();
    for dst in &all {
        net.engine
            .add_target(now.mono, *dst, src_for(*dst))
            .unwrap();
    }
    assert_eq!(net.engine.active(), 10_000);
    net.run();
    let results = net.results();
    assert_eq!(results.len(), 10_000);
    assert!(results
        .iter()
        .all(|r| r.stop_reason == StopReason::RemoteReached && r.hops.len() == 5));
    // TTL 1-16 leave at once (the window); each of the 4 router replies before the
    // destination's (at 1-4 ms) lets one more TTL go: 20 probes per target.
    assert_eq!(net.sent, 200_000);
}

#[test]
fn a_thousand_targets_under_a_rate_limit() {
    let mut net = Net::new(TracerouteConfig {
        probes_per_hop: 1,
        max_in_flight: 1,
        ..cfg(Protocol::Udp, Strategy::Paris)
    });
    net.pacer = Some(Pacer::new(10_000));
    let now = net.now();
    for i in 0..1000u32 {
        let dst = IpAddr::V4(Ipv4Addr::from(0xc613_0000 + i + 1));
        net.engine.add_target(now.mono, dst, src_for(dst)).unwrap();
    }
    net.run();
    let results = net.results();
    assert_eq!(results.len(), 1000);
    assert!(results
        .iter()
        .all(|r| r.stop_reason == StopReason::RemoteReached && r.hops.len() == 5));
    // One probe in flight per target: TTL 1-4 (the routers) and 5 (the destination).
    assert_eq!(net.sent, 5000);
    // 5,000 probes at 10,000/s with a 100-probe burst: 0.49 s at the least, and the driver
    // wakes for each token (a probe left queued is not a timer), so little more.
    assert!(
        net.t >= Duration::from_millis(490) && net.t < Duration::from_millis(520),
        "{:?}",
        net.t
    );
    // A turn per token, not per target: the engine's timers and queue keep every turn short.
    assert!(net.turns < 20_000, "{} turns", net.turns);
}

#[test]
fn duplicate_and_mixed_family_targets_are_refused() {
    let mut t = Traceroute::new(TracerouteConfig::default()).unwrap();
    let now = Instant::now();
    let d: IpAddr = "198.19.1.2".parse().unwrap();
    t.add_target(now, d, src_for(d)).unwrap();
    assert!(t.add_target(now, d, src_for(d)).is_err());
    assert!(t
        .add_target(now, "2001:db8::9".parse().unwrap(), src_for(d))
        .is_err());
}

/// `parallel` bounds the traces in progress: the others wait and start, in the order they
/// were added, as traces finish; every target gets its result.
#[test]
fn parallel_bounds_the_traces_in_progress() {
    let mut net = Net::new(TracerouteConfig {
        parallel: 2,
        ..cfg(Protocol::Udp, Strategy::Paris)
    });
    let now = net.now();
    let all = targets(false, 5);
    for dst in &all {
        net.engine
            .add_target(now.mono, *dst, src_for(*dst))
            .unwrap();
    }
    assert_eq!((net.engine.active(), net.engine.waiting()), (2, 3));
    assert!(matches!(
        net.engine.add_target(now.mono, all[4], src_for(all[4])),
        Err(svctr_core::TargetError::Duplicate(_))
    ));
    net.run();
    assert_eq!(net.results().len(), 5);
    let started: Vec<IpAddr> = net
        .events
        .iter()
        .filter_map(|e| match e {
            TracerouteEvent::Started { target, .. } => Some(*target),
            _ => None,
        })
        .collect();
    assert_eq!(started, all, "started in the order added");
    // Never more than 2 in progress: between a start and its result at most one other start.
    let mut active = 0usize;
    for e in &net.events {
        match e {
            TracerouteEvent::Started { .. } => active += 1,
            TracerouteEvent::Finished(_) => active -= 1,
            _ => {}
        }
        assert!(active <= 2);
    }
    assert!(svctr_core::Machine::is_done(&net.engine));
}

//! Deterministic scenario tests of the engine: no root, no sockets, virtual time.
//!
//! [`Sim`] is an in-memory path: a list of hops (routers that answer, stay silent or report
//! unreachable) in front of the remote end of one or more flows. It captures each probe the
//! engine sends (as libpcap would, at send time), answers it after the hop's RTT with an ICMP
//! error quoting the probe, and plays scripted flow packets.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use svctr_core::{
    Algorithm, Engine, Event, FlowFilter, FlowKey, Now, Protocol, StopReason, TraceConfig,
    TraceResult, Transmit,
};
use svctr_wire::probe::{emit_tcp_v4, emit_udp_v4, Ipv4Fields, TcpFields, UdpFields};

const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 2);

fn router(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, i, 1)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum HopKind {
    Answers,
    Silent,
    /// Destination Unreachable with this code.
    Unreachable(u8),
    /// Answers with an RFC 4884 MPLS extension carrying this label.
    Mpls(u32),
    /// Answers with an RFC 5837 object about its incoming interface: ifIndex 7, its own
    /// address, the name `ge-0/0/1`, MTU 1500.
    Interface,
    /// Fragmentation Needed (RFC 1191) with this next-hop MTU.
    FragNeeded(u16),
}

#[derive(Clone, Copy, Debug)]
enum RemoteKind {
    /// Sends no ICMP (a TCP server answering a keep-alive with an ACK, or a UDP server).
    Quiet,
    /// Answers UDP probes with Port Unreachable.
    PortUnreachable,
}

struct Sim {
    engine: Engine,
    t0: Instant,
    wall0: SystemTime,
    t: Duration,
    hops: Vec<HopKind>,
    remote_kind: RemoteKind,
    rtt_per_hop: Duration,
    /// Packets to deliver to the engine, by virtual time (then insertion order).
    queue: BTreeMap<(Duration, u64), Vec<u8>>,
    seq: u64,
    /// Every probe sent: (time, transmit, bytes).
    sent: Vec<(Duration, Transmit, Vec<u8>)>,
    results: Vec<(Duration, TraceResult)>,
    started: Vec<(FlowKey, Option<u8>)>,
    /// Packets per probe identification that the sim should not answer (lost replies).
    drop_replies: Vec<u16>,
    /// Per TTL, how many of its first probes go unanswered (a lossy hop).
    drop_first: BTreeMap<u8, usize>,
    /// Sends fail before this time (the interface down: ENETUNREACH).
    send_fails_until: Duration,
}

fn key(proto: Protocol, lport: u16, rport: u16) -> FlowKey {
    FlowKey {
        protocol: proto,
        local: SocketAddr::new(IpAddr::V4(LOCAL), lport),
        remote: SocketAddr::new(IpAddr::V4(REMOTE), rport),
    }
}

impl Sim {
    fn new(cfg: TraceConfig, selector: FlowFilter, hops: Vec<HopKind>) -> Self {
        Self {
            engine: Engine::new(cfg, selector, vec![IpAddr::V4(LOCAL)]).expect("config"),
            t0: Instant::now(),
            wall0: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            t: Duration::ZERO,
            hops,
            remote_kind: RemoteKind::Quiet,
            rtt_per_hop: Duration::from_millis(1),
            queue: BTreeMap::new(),
            seq: 0,
            sent: Vec::new(),
            results: Vec::new(),
            started: Vec::new(),
            drop_replies: Vec::new(),
            drop_first: BTreeMap::new(),
            send_fails_until: Duration::ZERO,
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: self.t0 + self.t,
            wall: self.wall0 + self.t,
        }
    }

    fn push(&mut self, at: Duration, bytes: Vec<u8>) {
        self.seq += 1;
        self.queue.insert((at, self.seq), bytes);
    }

    /// Remote's TTL as seen here: 64 minus the routers on the path.
    fn remote_ttl(&self) -> u8 {
        64 - self.hops.len() as u8
    }

    /// A TCP segment of flow `k` (`out`: sent by us) at time `at`.
    #[allow(clippy::too_many_arguments)]
    fn tcp(
        &mut self,
        at: Duration,
        k: &FlowKey,
        out: bool,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: usize,
    ) {
        let (src, dst, sp, dp, ttl) = if out {
            (LOCAL, REMOTE, k.local.port(), k.remote.port(), 64)
        } else {
            (
                REMOTE,
                LOCAL,
                k.remote.port(),
                k.local.port(),
                self.remote_ttl(),
            )
        };
        let ip = Ipv4Fields {
            src,
            dst,
            ttl,
            tos: if out { 0x28 } else { 0 },
            dont_fragment: true,
            ident: 7,
        };
        let tcp = TcpFields {
            src_port: sp,
            dst_port: dp,
            seq,
            ack,
            flags,
            window: 501,
        };
        let mut buf = Vec::new();
        emit_tcp_v4(&ip, &tcp, &vec![0u8; payload], &mut buf);
        self.push(at, buf);
    }

    fn udp(&mut self, at: Duration, k: &FlowKey, out: bool, payload: usize) {
        let (src, dst, sp, dp, ttl) = if out {
            (LOCAL, REMOTE, k.local.port(), k.remote.port(), 64)
        } else {
            (
                REMOTE,
                LOCAL,
                k.remote.port(),
                k.local.port(),
                self.remote_ttl(),
            )
        };
        let ip = Ipv4Fields {
            src,
            dst,
            ttl,
            tos: 0xb8,
            dont_fragment: false,
            ident: 9,
        };
        let mut buf = Vec::new();
        emit_udp_v4(
            &ip,
            &UdpFields {
                src_port: sp,
                dst_port: dp,
            },
            &vec![1u8; payload],
            &mut buf,
        );
        self.push(at, buf);
    }

    /// An established TCP flow already running: one ACK out, one data segment in.
    fn tcp_flow(&mut self, k: &FlowKey) {
        self.tcp(Duration::ZERO, k, true, 1000, 5000, 0x10, 0);
        self.tcp(Duration::ZERO, k, false, 5000, 1000, 0x10, 1400);
    }

    /// A UDP request/response every 100 ms for `dur`.
    fn udp_flow(&mut self, k: &FlowKey, dur: Duration) {
        let mut at = Duration::ZERO;
        while at <= dur {
            self.udp(at, k, true, 40);
            self.udp(at + Duration::from_micros(500), k, false, 400);
            at += Duration::from_millis(100);
        }
    }

    /// The ICMP error a hop sends about `probe`.
    fn icmp_error(
        from: Ipv4Addr,
        icmp_type: u8,
        code: u8,
        probe: &[u8],
        mpls: Option<u32>,
    ) -> Vec<u8> {
        let mut icmp = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
        match mpls {
            None => icmp.extend_from_slice(probe),
            Some(label) => {
                // RFC 4884: original datagram zero-padded to 128 bytes, length in 32-bit words.
                let mut quote = probe.to_vec();
                quote.resize(128, 0);
                icmp[5] = 32;
                icmp.extend_from_slice(&quote);
                // Extension header: version 2, checksum over the extension structure.
                let entry = (label << 12) | (1 << 8) | 1; // TC 0, S 1, TTL 1
                let mut ext = vec![0x20, 0, 0, 0, 0, 8, 1, 1];
                ext.extend_from_slice(&entry.to_be_bytes());
                let sum = internet_checksum(&ext);
                ext[2..4].copy_from_slice(&sum.to_be_bytes());
                icmp.extend_from_slice(&ext);
            }
        }
        Self::ipv4_icmp(from, &icmp)
    }

    /// An RFC 4884 error about `probe` carrying these (encoded) extension objects.
    fn icmp_error_objects(
        from: Ipv4Addr,
        icmp_type: u8,
        code: u8,
        probe: &[u8],
        objects: &[u8],
    ) -> Vec<u8> {
        // The original datagram zero-padded to 128 bytes, its length in 32-bit words.
        let mut icmp = vec![icmp_type, code, 0, 0, 0, 32, 0, 0];
        let mut quote = probe.to_vec();
        quote.resize(128, 0);
        icmp.extend_from_slice(&quote);
        let mut ext = vec![0x20, 0, 0, 0];
        ext.extend_from_slice(objects);
        let sum = internet_checksum(&ext);
        ext[2..4].copy_from_slice(&sum.to_be_bytes());
        icmp.extend_from_slice(&ext);
        Self::ipv4_icmp(from, &icmp)
    }

    fn ipv4_icmp(from: Ipv4Addr, icmp: &[u8]) -> Vec<u8> {
        let total = 20 + icmp.len();
        let mut ip = vec![0x45, 0xc0];
        ip.extend_from_slice(&(total as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
        ip.extend_from_slice(&from.octets());
        ip.extend_from_slice(&LOCAL.octets());
        ip.extend_from_slice(icmp);
        ip
    }

    /// What the path does with a probe sent at time `at`.
    fn on_probe(&mut self, at: Duration, tx: Transmit, bytes: Vec<u8>) {
        self.sent.push((at, tx, bytes.clone()));
        // libpcap sees the probe leave.
        self.push(at, bytes.clone());
        if self.drop_replies.contains(&tx.ident) {
            return;
        }
        if let Some(n) = self.drop_first.get_mut(&tx.ttl) {
            if *n > 0 {
                *n -= 1;
                return;
            }
        }
        let ttl = usize::from(tx.ttl);
        let rtt = self.rtt_per_hop * tx.ttl as u32;
        // The router decrements the TTL to 0 and quotes the probe with TTL 1 (RFC 1812 §5.3.1).
        let mut quoted = bytes;
        quoted[8] = 1;
        if ttl <= self.hops.len() {
            let from = router(tx.ttl);
            match self.hops[ttl - 1] {
                HopKind::Answers => {
                    self.push(at + rtt, Self::icmp_error(from, 11, 0, &quoted, None))
                }
                HopKind::Mpls(l) => {
                    self.push(at + rtt, Self::icmp_error(from, 11, 0, &quoted, Some(l)))
                }
                HopKind::Unreachable(code) => {
                    self.push(at + rtt, Self::icmp_error(from, 3, code, &quoted, None))
                }
                HopKind::Interface => {
                    // RFC 5837 §4.1: class-num 2, C-Type 0x0f (incoming; ifIndex, address,
                    // name and MTU), length 4 + 4 + 8 + 12 + 4.
                    let mut obj = vec![0, 32, 2, 0x0f, 0, 0, 0, 7, 0, 1, 0, 0];
                    obj.extend_from_slice(&from.octets());
                    obj.push(12);
                    obj.extend_from_slice(b"ge-0/0/1\0\0\0");
                    obj.extend_from_slice(&1500u32.to_be_bytes());
                    let e = Self::icmp_error_objects(from, 11, 0, &quoted, &obj);
                    self.push(at + rtt, e)
                }
                HopKind::FragNeeded(mtu) => {
                    let mut e = Self::icmp_error(from, 3, 4, &quoted, None);
                    // RFC 1191 §4: the next-hop MTU in the second word's low half.
                    e[26..28].copy_from_slice(&mtu.to_be_bytes());
                    self.push(at + rtt, e)
                }
                HopKind::Silent => {}
            }
        } else if let RemoteKind::PortUnreachable = self.remote_kind {
            if tx.flow.protocol == Protocol::Udp {
                let mut q = quoted;
                q[8] = (65 - tx.ttl as usize + self.hops.len()) as u8;
                self.push(at + rtt, Self::icmp_error(REMOTE, 3, 3, &q, None));
            }
        }
    }

    /// Runs until nothing is left to do, or `limit` of virtual time.
    fn run(&mut self, limit: Duration) {
        let mut buf = Vec::new();
        for _ in 0..1_000_000 {
            // Deliver every packet due now.
            while let Some((&(at, s), _)) = self.queue.iter().next() {
                if at > self.t {
                    break;
                }
                let bytes = self.queue.remove(&(at, s)).unwrap();
                let now = self.now();
                self.engine.handle_packet(now.mono, now.wall, &bytes);
            }
            let now = self.now();
            self.engine.handle_timeout(now);
            while let Some(tx) = self.engine.poll_transmit(now, &mut buf) {
                if self.t < self.send_fails_until {
                    self.sent.push((self.t, tx, Vec::new()));
                    self.engine
                        .handle_send_error(now, &tx, "Network is unreachable".into());
                    continue;
                }
                let bytes = buf[..tx.len].to_vec();
                self.on_probe(self.t, tx, bytes);
            }
            while let Some(ev) = self.engine.poll_event() {
                match ev {
                    Event::TraceFinished(r) => self.results.push((self.t, *r)),
                    Event::TraceStarted {
                        flow,
                        remote_distance,
                        ..
                    } => self.started.push((flow, remote_distance)),
                    _ => {}
                }
            }
            let next_packet = self.queue.keys().next().map(|(at, _)| *at);
            let next_timer = self.engine.poll_timeout().map(|i| i - self.t0);
            let next = match (next_packet, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(n) => n,
                    None => return,
                },
            };
            if next > limit {
                return;
            }
            self.t = next.max(self.t);
        }
        panic!("simulation did not settle");
    }

    fn only_result(&self) -> &TraceResult {
        assert_eq!(
            self.results.len(),
            1,
            "expected one result, got {:?}",
            self.results
        );
        &self.results[0].1
    }
}

fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn tcp_sel() -> FlowFilter {
    FlowFilter {
        protocol: Some(Protocol::Tcp),
        remote_ip: Some(IpAddr::V4(REMOTE)),
        remote_port: Some(443),
        local_port: None,
    }
}

fn udp_sel() -> FlowFilter {
    FlowFilter {
        protocol: Some(Protocol::Udp),
        remote_ip: Some(IpAddr::V4(REMOTE)),
        remote_port: Some(4433),
        local_port: None,
    }
}

fn hop_addrs(r: &TraceResult) -> Vec<Option<IpAddr>> {
    r.hops
        .iter()
        .map(|h| h.probes.iter().find_map(|p| p.addr))
        .collect()
}

fn routers(n: u8) -> Vec<Option<IpAddr>> {
    (1..=n).map(|i| Some(IpAddr::V4(router(i)))).collect()
}

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

#[test]
fn concurrent_tcp_traces_every_router_and_stops_short_of_the_remote() {
    let mut sim = Sim::new(TraceConfig::default(), tcp_sel(), vec![HopKind::Answers; 4]);
    let k = key(Protocol::Tcp, 40000, 443);
    sim.tcp_flow(&k);
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(r.stop_reason, StopReason::RemoteDistance);
    assert_eq!(r.remote_distance, Some(4));
    assert_eq!(hop_addrs(r), routers(4));
    assert_eq!(r.probes_sent, 12);
    assert_eq!(r.replies, 12);
    // Concurrent: all 12 probes leave at once.
    assert!(sim.sent.iter().all(|(at, ..)| *at == Duration::ZERO));
    // RTTs come from the capture timestamps: hop n answers after n ms.
    for h in &r.hops {
        for p in &h.probes {
            let rtt = p.rtt_ms.unwrap();
            assert!(
                (rtt - f64::from(h.ttl)).abs() < 1e-6,
                "ttl {} rtt {rtt}",
                h.ttl
            );
            assert_eq!(p.icmp_type, Some(11));
            assert_eq!(p.quoted_ttl, Some(1));
        }
    }
    // No sleep at the end: the trace is over when the last reply (4 ms) is in.
    assert_eq!(sim.results[0].0, 4 * MS);
    assert_eq!(r.flow.local.port, 40000);
}

#[test]
fn tcp_probe_is_keepalive_shaped_and_copies_ip_fields() {
    let mut sim = Sim::new(TraceConfig::default(), tcp_sel(), vec![HopKind::Answers; 2]);
    let k = key(Protocol::Tcp, 40000, 443);
    // Local end: sent up to 1000 (SND.NXT), acked 5000; remote acked only 900 so far.
    sim.tcp(Duration::ZERO, &k, true, 900, 5000, 0x18, 100);
    sim.tcp(Duration::ZERO, &k, false, 5000, 900, 0x10, 1400);
    sim.tcp(Duration::ZERO, &k, true, 1000, 6400, 0x10, 0);
    sim.run(10 * SEC);
    let (_, tx, bytes) = &sim.sent[0];
    assert_eq!(tx.flow, k);
    let pkt = svctr_wire::packet::parse_ip(bytes).unwrap();
    assert_eq!(pkt.ip.tos, 0x28, "DSCP/ECN copied");
    assert!(pkt.ip.dont_fragment, "DF copied");
    assert_ne!(pkt.ip.ident, 0);
    let svctr_wire::packet::Transport::Tcp(t) = pkt.transport else {
        panic!("not TCP")
    };
    // SEG.SEQ = SND.UNA - 1: outside [SND.UNA, SND.NXT] = [900, 1000] and below the remote's
    // RCV.NXT, even though data is in flight.
    assert_eq!(t.seq, 899);
    assert_eq!(t.ack, 6400, "SEG.ACK = RCV.NXT");
    assert_eq!(t.flags, 0x10, "ACK only");
    assert_eq!(t.window, 501);
    assert_eq!(t.payload_len, 0);
    assert_eq!((t.src_port, t.dst_port), (40000, 443));
    // The probe captures did not move the flow state: all probes carry the same numbers.
    for (_, _, b) in &sim.sent {
        let svctr_wire::packet::Transport::Tcp(t) =
            svctr_wire::packet::parse_ip(b).unwrap().transport
        else {
            panic!()
        };
        assert_eq!((t.seq, t.ack), (899, 6400));
    }
    assert_eq!(sim.only_result().stop_reason, StopReason::RemoteDistance);
}

#[test]
fn udp_probe_is_empty_with_the_flows_tos() {
    let mut sim = Sim::new(TraceConfig::default(), udp_sel(), vec![HopKind::Answers; 3]);
    let k = key(Protocol::Udp, 5555, 4433);
    sim.udp_flow(&k, SEC);
    sim.run(10 * SEC);
    let (_, _, bytes) = &sim.sent[0];
    let pkt = svctr_wire::packet::parse_ip(bytes).unwrap();
    assert_eq!(pkt.ip.tos, 0xb8);
    assert!(!pkt.ip.dont_fragment);
    let svctr_wire::packet::Transport::Udp(u) = pkt.transport else {
        panic!("not UDP")
    };
    assert_eq!((u.src_port, u.dst_port, u.payload_len), (5555, 4433, 0));
    let r = sim.only_result();
    assert_eq!(hop_addrs(r), routers(3));
    assert_eq!(r.stop_reason, StopReason::RemoteDistance);
    // Never a probe with a TTL that reaches the remote application.
    assert!(sim.sent.iter().all(|(_, tx, _)| tx.ttl <= 3));
}

#[test]
fn hop_by_hop_waits_for_each_ttl() {
    let cfg = TraceConfig {
        algorithm: Algorithm::HopByHop,
        inter_hop: 5 * MS,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(cfg, tcp_sel(), vec![HopKind::Answers; 3]);
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(10 * SEC);
    let times: Vec<(u8, Duration)> = sim.sent.iter().map(|(at, tx, _)| (tx.ttl, *at)).collect();
    // TTL 1 at 0; its replies at 1 ms; TTL 2 at 1 + 5 ms; replies at 8 ms; TTL 3 at 13 ms.
    let expect = [
        (1, 0),
        (1, 0),
        (1, 0),
        (2, 6),
        (2, 6),
        (2, 6),
        (3, 13),
        (3, 13),
        (3, 13),
    ];
    let expect: Vec<(u8, Duration)> = expect.iter().map(|&(t, ms)| (t, ms * MS)).collect();
    assert_eq!(times, expect);
    assert_eq!(hop_addrs(sim.only_result()), routers(3));
    assert_eq!(sim.results[0].0, 16 * MS);
}

#[test]
fn packet_by_packet_sends_one_at_a_time() {
    let cfg = TraceConfig {
        algorithm: Algorithm::PacketByPacket,
        inter_probe: 2 * MS,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(cfg, tcp_sel(), vec![HopKind::Answers; 2]);
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(10 * SEC);
    let times: Vec<Duration> = sim.sent.iter().map(|(at, ..)| *at).collect();
    // TTL 1 probes: reply after 1 ms, then the 2 ms inter-probe gap; the first TTL 2 probe
    // follows the last TTL 1 reply after the inter-hop gap (0); TTL 2 replies take 2 ms.
    let expect: Vec<Duration> = [0, 3, 6, 7, 11, 15].iter().map(|&ms| ms * MS).collect();
    assert_eq!(times, expect);
    assert_eq!(hop_addrs(sim.only_result()), routers(2));
}

#[test]
fn packet_by_packet_waits_out_a_silent_probe() {
    let cfg = TraceConfig {
        algorithm: Algorithm::PacketByPacket,
        timeout: 100 * MS,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(
        cfg,
        tcp_sel(),
        vec![HopKind::Answers, HopKind::Silent, HopKind::Answers],
    );
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(
        hop_addrs(r),
        vec![
            Some(IpAddr::V4(router(1))),
            None,
            Some(IpAddr::V4(router(3)))
        ]
    );
    assert!(r.hops[1]
        .probes
        .iter()
        .all(|p| p.addr.is_none() && p.rtt_ms.is_none() && p.icmp_type.is_none()));
    // 3 × 1 ms, 3 × 100 ms timeouts, 3 × 3 ms.
    assert_eq!(sim.results[0].0, 312 * MS);
}

#[test]
fn max_missing_stops_after_consecutive_silent_hops() {
    let cfg = TraceConfig {
        probe_remote: true,
        timeout: 200 * MS,
        max_missing: 3,
        ..TraceConfig::default()
    };
    let mut hops = vec![HopKind::Answers; 2];
    hops.extend([HopKind::Silent; 10]);
    let mut sim = Sim::new(cfg, tcp_sel(), hops);
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(r.stop_reason, StopReason::MaxMissing);
    assert_eq!(
        hop_addrs(r),
        vec![
            Some(IpAddr::V4(router(1))),
            Some(IpAddr::V4(router(2))),
            None,
            None,
            None
        ]
    );
    // Concurrent sent all 32 TTLs; the trace still ends when the probes of TTL 3-5 time out.
    assert_eq!(r.probes_sent, 96);
    assert_eq!(sim.results[0].0, 200 * MS);
}

/// Routers that never answer (or rate-limit ICMP) in the middle of a path do not stop a trace
/// whose higher TTLs answered: the gap rule ends only a path that went silent.
#[test]
fn silent_routers_in_the_middle_do_not_stop_a_trace_that_goes_on() {
    let cfg = TraceConfig {
        timeout: 200 * MS,
        max_missing: 2,
        ..TraceConfig::default()
    };
    let hops = vec![
        HopKind::Answers,
        HopKind::Silent,
        HopKind::Silent,
        HopKind::Silent,
        HopKind::Answers,
    ];
    let mut sim = Sim::new(cfg, tcp_sel(), hops);
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(r.stop_reason, StopReason::RemoteDistance, "{r:?}");
    assert_eq!(
        hop_addrs(r),
        vec![
            Some(IpAddr::V4(router(1))),
            None,
            None,
            None,
            Some(IpAddr::V4(router(5)))
        ]
    );
}

/// Probes that could not be sent (the interface down) are retried after a probe's timeout, not
/// at once: an outage shorter than the timeout costs no hop, and the error is kept.
#[test]
fn probes_that_failed_to_leave_are_retried_after_the_timeout() {
    let cfg = TraceConfig {
        algorithm: Algorithm::HopByHop,
        timeout: 100 * MS,
        retries: 1,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(cfg, tcp_sel(), vec![HopKind::Answers; 3]);
    sim.send_fails_until = 50 * MS;
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(r.stop_reason, StopReason::RemoteDistance, "{r:?}");
    assert_eq!(hop_addrs(r), routers(3));
    assert!(r.hops[0].probes[..3]
        .iter()
        .all(|p| p.error.as_deref() == Some("Network is unreachable")));
    // The retry round went a timeout after the failures, once the outage was over.
    let retry_at = sim.sent[3].0;
    assert_eq!(
        retry_at,
        100 * MS,
        "{:?}",
        sim.sent.iter().map(|s| s.0).collect::<Vec<_>>()
    );
}

#[test]
fn hop_by_hop_max_missing_sends_nothing_beyond() {
    let cfg = TraceConfig {
        algorithm: Algorithm::HopByHop,
        probe_remote: true,
        timeout: 100 * MS,
        max_missing: 2,
        ..TraceConfig::default()
    };
    let mut hops = vec![HopKind::Answers];
    hops.extend([HopKind::Silent; 10]);
    let mut sim = Sim::new(cfg, tcp_sel(), hops);
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(r.stop_reason, StopReason::MaxMissing);
    assert_eq!(r.hops.len(), 3);
    assert_eq!(r.probes_sent, 9);
}

#[test]
fn stop_at_cancels_probes_above() {
    let cfg = TraceConfig {
        stop_at: vec![IpAddr::V4(router(2))],
        ..TraceConfig::default()
    };
    let mut hops = vec![HopKind::Answers; 2];
    hops.extend([HopKind::Silent; 4]);
    let mut sim = Sim::new(cfg, tcp_sel(), hops);
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(r.stop_reason, StopReason::StopAt);
    assert_eq!(hop_addrs(r), routers(2));
    // It did not wait for the silent TTLs 3-6 to time out.
    assert_eq!(sim.results[0].0, 2 * MS);
}

#[test]
fn reply_from_the_remote_stops_the_trace() {
    let cfg = TraceConfig {
        probe_remote: true,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(cfg, udp_sel(), vec![HopKind::Answers; 3]);
    sim.remote_kind = RemoteKind::PortUnreachable;
    sim.udp_flow(&key(Protocol::Udp, 5555, 4433), SEC);
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(r.stop_reason, StopReason::RemoteReached);
    let mut want = routers(3);
    want.push(Some(IpAddr::V4(REMOTE)));
    assert_eq!(hop_addrs(r), want);
    assert_eq!(r.hops[3].probes[0].icmp_type, Some(3));
    assert_eq!(r.hops[3].probes[0].icmp_code, Some(3));
    // The trace starts with the remote's first reply (0.5 ms); hop 4 answers 4 ms later.
    assert_eq!(sim.results[0].0, 4 * MS + 500 * Duration::from_micros(1));
}

#[test]
fn destination_unreachable_from_a_router_stops() {
    let mut sim = Sim::new(
        TraceConfig::default(),
        tcp_sel(),
        vec![HopKind::Answers, HopKind::Unreachable(13), HopKind::Silent],
    );
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(r.stop_reason, StopReason::Unreachable);
    assert_eq!(r.hops.len(), 2);
    assert!(svctr_core::render_text(r).contains("!X"));
}

#[test]
fn max_ttl_stops() {
    let cfg = TraceConfig {
        max_ttl: 3,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(cfg, tcp_sel(), vec![HopKind::Answers; 8]);
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(r.stop_reason, StopReason::MaxTtl);
    assert_eq!(hop_addrs(r), routers(3));
}

#[test]
fn first_ttl_skips_near_hops() {
    let cfg = TraceConfig {
        first_ttl: 3,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(cfg, tcp_sel(), vec![HopKind::Answers; 5]);
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(
        r.hops.iter().map(|h| h.ttl).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
}

#[test]
fn fin_ends_the_trace_and_stops_probing() {
    let cfg = TraceConfig {
        algorithm: Algorithm::HopByHop,
        inter_hop: 50 * MS,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(cfg, tcp_sel(), vec![HopKind::Answers; 10]);
    let k = key(Protocol::Tcp, 40000, 443);
    sim.tcp_flow(&k);
    sim.tcp(120 * MS, &k, false, 6400, 1000, 0x11, 0); // FIN from the remote
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(r.stop_reason, StopReason::FlowEnded);
    // TTL 1 at 0, TTL 2 at 51 ms, TTL 3 at 103 ms; the FIN at 120 ms stops TTL 4.
    assert_eq!(r.hops.len(), 3);
    assert!(sim.sent.iter().all(|(at, ..)| *at < 120 * MS));
}

#[test]
fn idle_udp_flow_times_out() {
    let cfg = TraceConfig {
        algorithm: Algorithm::HopByHop,
        inter_hop: 100 * MS,
        flow_timeout: 300 * MS,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(cfg, udp_sel(), vec![HopKind::Answers; 10]);
    let k = key(Protocol::Udp, 5555, 4433);
    sim.udp(Duration::ZERO, &k, true, 40);
    sim.udp(MS, &k, false, 40);
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(r.stop_reason, StopReason::FlowTimeout);
    assert!(r.hops.len() < 10);
    // Our own probes (captured going out) do not count as flow activity.
    assert!(
        sim.results[0].0 < 400 * MS,
        "finished at {:?}",
        sim.results[0].0
    );
}

#[test]
fn udp_flow_without_replies_is_traced_after_the_wait_without_a_distance() {
    let cfg = TraceConfig {
        max_ttl: 4,
        udp_reply_wait: 500 * MS,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(cfg, udp_sel(), vec![HopKind::Answers; 3]);
    let k = key(Protocol::Udp, 5555, 4433);
    for i in 0..20 {
        sim.udp(i * 100 * MS, &k, true, 40);
    }
    sim.run(10 * SEC);
    assert_eq!(sim.started, vec![(k, None)]);
    assert_eq!(sim.sent[0].0, 500 * MS);
    let r = sim.only_result();
    assert_eq!(r.remote_distance, None);
    assert_eq!(hop_addrs(r)[..3], routers(3)[..]);
}

#[test]
fn tcp_flow_is_not_probed_before_both_directions_are_seen() {
    let mut sim = Sim::new(TraceConfig::default(), tcp_sel(), vec![HopKind::Answers; 2]);
    let k = key(Protocol::Tcp, 40000, 443);
    sim.tcp(Duration::ZERO, &k, true, 1000, 0, 0x02, 0); // SYN
    sim.run(SEC);
    assert!(sim.sent.is_empty());
    sim.tcp(10 * MS + SEC, &k, false, 5000, 1001, 0x12, 0); // SYN-ACK
    sim.run(2 * SEC);
    assert!(sim.sent.is_empty(), "not before the handshake completes");
    sim.tcp(20 * MS + 2 * SEC, &k, true, 1001, 5001, 0x10, 0); // ACK
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(hop_addrs(r), routers(2));
    let svctr_wire::packet::Transport::Tcp(t) = svctr_wire::packet::parse_ip(&sim.sent[0].2)
        .unwrap()
        .transport
    else {
        panic!()
    };
    assert_eq!((t.seq, t.ack), (1000, 5001));
}

#[test]
fn late_spoofed_and_foreign_replies_are_never_hops() {
    let cfg = TraceConfig {
        timeout: 50 * MS,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(cfg, tcp_sel(), vec![HopKind::Answers; 3]);
    let k = key(Protocol::Tcp, 40000, 443);
    sim.tcp_flow(&k);
    // The hop-2 replies are lost; a copy of each arrives late, after the timeout.
    sim.rtt_per_hop = MS;
    sim.run(Duration::ZERO);
    let ids: Vec<(u16, Vec<u8>)> = sim
        .sent
        .iter()
        .filter(|(_, tx, _)| tx.ttl == 2)
        .map(|(_, tx, b)| (tx.ident, b.clone()))
        .collect();
    assert_eq!(ids.len(), 3);
    // Remove the scheduled on-time replies for TTL 2 and schedule late ones.
    let keys: Vec<(Duration, u64)> = sim
        .queue
        .keys()
        .copied()
        .filter(|(at, _)| *at == 2 * MS)
        .collect();
    for k in keys {
        sim.queue.remove(&k);
    }
    for (_, b) in &ids {
        let mut q = b.clone();
        q[8] = 1;
        sim.push(80 * MS, Sim::icmp_error(router(2), 11, 0, &q, None));
        // Spoofed: right identification, wrong TCP sequence number.
        let mut s = q.clone();
        s[24] ^= 0xff;
        sim.push(
            MS,
            Sim::icmp_error(Ipv4Addr::new(198, 18, 66, 6), 11, 0, &s, None),
        );
        // Another flow's packet with the same identification.
        let mut f = q.clone();
        f[20] ^= 1;
        sim.push(
            MS,
            Sim::icmp_error(Ipv4Addr::new(198, 18, 66, 7), 11, 0, &f, None),
        );
        // Right identification, wrong length (the flow's own packet, not a probe).
        let mut l = q.clone();
        l[3] = 41;
        sim.push(
            MS,
            Sim::icmp_error(Ipv4Addr::new(198, 18, 66, 8), 11, 0, &l, None),
        );
    }
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(
        hop_addrs(r),
        vec![
            Some(IpAddr::V4(router(1))),
            None,
            Some(IpAddr::V4(router(3)))
        ]
    );
    let st = sim.engine.stats();
    assert_eq!(st.replies_matched, 6);
    assert!(st.replies_unmatched >= 6, "{st:?}");
}

#[test]
fn mpls_labels_are_recorded() {
    let mut sim = Sim::new(
        TraceConfig::default(),
        tcp_sel(),
        vec![HopKind::Answers, HopKind::Mpls(16012), HopKind::Answers],
    );
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(hop_addrs(r), routers(3));
    let m = &r.hops[1].probes[0].mpls;
    assert_eq!(m.len(), 1);
    assert_eq!((m[0].label, m[0].s, m[0].ttl), (16012, true, 1));
    assert!(svctr_core::render_text(r).contains("MPLS: Lbl 16012"));
}

#[test]
fn interface_information_and_path_mtu_are_recorded() {
    let mut sim = Sim::new(
        TraceConfig::default(),
        tcp_sel(),
        vec![
            HopKind::Answers,
            HopKind::Interface,
            HopKind::FragNeeded(1400),
        ],
    );
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(hop_addrs(r), routers(3));
    let i = &r.hops[1].probes[0].interfaces;
    assert_eq!(i.len(), 1, "{r:?}");
    assert_eq!(i[0].role, "incoming");
    assert_eq!(i[0].if_index, Some(7));
    assert_eq!(i[0].addr, Some(IpAddr::V4(router(2))));
    assert_eq!(i[0].name.as_deref(), Some("ge-0/0/1"));
    assert_eq!(i[0].mtu, Some(1500));
    assert_eq!(r.hops[2].probes[0].mtu, Some(1400));
    assert_eq!(r.hops[1].probes[0].mtu, None);
    let text = svctr_core::render_text(r);
    assert!(
        text.contains(&format!(
            "[IF incoming: ge-0/0/1, {}, ifIndex 7, MTU 1500]",
            router(2)
        )),
        "{text}"
    );
    assert!(text.contains("[path MTU 1400]"), "{text}");
}

#[test]
fn interrupt_reports_partial_traces() {
    let cfg = TraceConfig {
        algorithm: Algorithm::HopByHop,
        inter_hop: SEC,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(cfg, tcp_sel(), vec![HopKind::Answers; 5]);
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(1500 * MS);
    assert!(sim.results.is_empty());
    let now = sim.now();
    sim.engine.interrupt(now);
    let Some(Event::TraceFinished(r)) = sim.engine.poll_event() else {
        panic!("no result")
    };
    assert_eq!(r.stop_reason, StopReason::Interrupted);
    assert_eq!(hop_addrs(&r), routers(2));
}

#[test]
fn count_limits_the_traced_flows() {
    let cfg = TraceConfig::default();
    let sel = FlowFilter {
        protocol: Some(Protocol::Tcp),
        ..FlowFilter::default()
    };
    let mut sim = Sim::new(cfg, sel, vec![HopKind::Answers; 2]);
    sim.engine.set_max_traces(2);
    for p in 0..5 {
        sim.tcp_flow(&key(Protocol::Tcp, 41000 + p, 443));
    }
    sim.run(10 * SEC);
    assert_eq!(sim.results.len(), 2);
    assert_eq!(sim.engine.stats().traces_started, 2);
}

#[test]
fn thousands_of_flows_at_once_each_with_its_own_id_space() {
    let n = 3000u16;
    let sel = FlowFilter {
        protocol: Some(Protocol::Tcp),
        ..FlowFilter::default()
    };
    let mut sim = Sim::new(TraceConfig::default(), sel, vec![HopKind::Answers; 4]);
    for p in 0..n {
        sim.tcp_flow(&key(Protocol::Tcp, 20000 + p, 443));
    }
    sim.run(10 * SEC);
    assert_eq!(sim.results.len(), usize::from(n));
    for (_, r) in &sim.results {
        assert_eq!(hop_addrs(r), routers(4), "{:?}", r.flow);
        assert_eq!(r.replies, 12);
    }
    // All traces were in flight together: 36,000 probes, more than one 16-bit ID space holds
    // once divided into fixed blocks (the original capped out near 600 flows).
    assert_eq!(sim.sent.len(), usize::from(n) * 12);
    assert!(sim.sent.iter().all(|(at, ..)| *at == Duration::ZERO));
}

#[test]
fn garbage_never_panics_the_engine() {
    let mut sim = Sim::new(TraceConfig::default(), tcp_sel(), vec![HopKind::Answers; 3]);
    let k = key(Protocol::Tcp, 40000, 443);
    sim.tcp_flow(&k);
    sim.run(Duration::ZERO);
    let probe = sim.sent[0].2.clone();
    let good = Sim::icmp_error(router(1), 11, 0, &probe, Some(5));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let now = sim.now();
    for i in 0..20_000usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = good.clone();
        let cut = (x as usize) % (b.len() + 1);
        b.truncate(cut);
        if !b.is_empty() {
            let j = (x >> 20) as usize % b.len();
            b[j] ^= (x >> 40) as u8 | 1;
        }
        if i % 3 == 0 {
            b = (0..(x % 80)).map(|k| (x >> (k % 56)) as u8).collect();
        }
        sim.engine.handle_packet(now.mono, now.wall, &b);
    }
    sim.run(10 * SEC);
    // A mutated copy of a real reply may carry another in-flight probe's identification and so
    // be matched (a perfect forgery is indistinguishable); what matters is no panic and a
    // complete trace.
    assert_eq!(sim.only_result().hops.len(), 3);
    assert!(sim.engine.stats().malformed > 0);
}

#[test]
fn retries_resend_a_silent_ttl_before_the_next_one() {
    let cfg = TraceConfig {
        algorithm: Algorithm::HopByHop,
        timeout: 100 * MS,
        retries: 1,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(cfg, tcp_sel(), vec![HopKind::Answers; 3]);
    sim.drop_first.insert(2, 3); // TTL 2's first round is lost
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(r.stop_reason, StopReason::RemoteDistance);
    assert_eq!(r.hops[1].probes.len(), 6, "3 probes + 1 retry round");
    assert!(r.hops[1].probes[..3].iter().all(|p| p.addr.is_none()));
    assert!(r.hops[1].probes[3..]
        .iter()
        .all(|p| p.addr == Some(IpAddr::V4(router(2)))));
    // TTL 1 at 0, TTL 2 at 1 ms (times out at 101), its retry at 101, TTL 3 after the retry's
    // replies (103 ms).
    let order: Vec<(u8, Duration)> = sim.sent.iter().map(|(at, tx, _)| (tx.ttl, *at)).collect();
    assert_eq!(
        order[3..9].iter().map(|o| o.0).collect::<Vec<_>>(),
        vec![2, 2, 2, 2, 2, 2]
    );
    assert_eq!(order[6].1, 101 * MS);
    assert_eq!(order[9], (3, 103 * MS));
    assert_eq!(r.probes_sent, 12);
}

#[test]
fn retries_give_up_after_the_last_round_and_count_as_one_silent_hop() {
    let cfg = TraceConfig {
        timeout: 100 * MS,
        retries: 2,
        max_missing: 2,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(
        cfg,
        tcp_sel(),
        vec![HopKind::Answers, HopKind::Silent, HopKind::Answers],
    );
    sim.tcp_flow(&key(Protocol::Tcp, 40000, 443));
    sim.run(10 * SEC);
    let r = sim.only_result();
    assert_eq!(
        r.stop_reason,
        StopReason::RemoteDistance,
        "one silent TTL is not two"
    );
    assert_eq!(r.hops[1].probes.len(), 9, "3 probes + 2 retry rounds");
    assert!(r.hops[1].probes.iter().all(|p| p.addr.is_none()));
    assert_eq!(hop_addrs(r)[2], Some(IpAddr::V4(router(3))));
    assert_eq!(sim.results[0].0, 300 * MS, "three rounds of 100 ms");
}

/// A client's SYN with options (MSS, SACK permitted, timestamps with `tsval`, NOP, window
/// scale), as Linux sends it.
fn syn(k: &FlowKey, tsval: u32) -> Vec<u8> {
    let mut options = vec![2, 4, 5, 0xb4, 4, 2, 8, 10];
    options.extend_from_slice(&tsval.to_be_bytes());
    options.extend_from_slice(&[0, 0, 0, 0, 1, 3, 3, 7]);
    let ip = Ipv4Fields {
        src: LOCAL,
        dst: REMOTE,
        ttl: 64,
        tos: 0,
        dont_fragment: true,
        ident: 0x4321,
    };
    let tcp = TcpFields {
        src_port: k.local.port(),
        dst_port: k.remote.port(),
        seq: 0x1234_5678,
        ack: 0,
        flags: 0x02,
        window: 64240,
    };
    let mut b = Vec::new();
    svctr_wire::probe::emit_tcp_v4_with_options(&ip, &tcp, &options, &mut b);
    b
}

/// "It hangs": a connection whose SYNs die at the third router is traced, after the
/// handshake wait, with byte-exact copies of its latest SYN (only the TTL, the identification
/// and the IP checksum differ), a TTL's worth at a time, and the trace shows where they die.
#[test]
fn a_connection_stuck_in_its_handshake_is_traced_with_copies_of_its_syn() {
    let hops = vec![
        HopKind::Answers,
        HopKind::Answers,
        HopKind::Silent,
        HopKind::Silent,
        HopKind::Silent,
        HopKind::Silent,
    ];
    let cfg = TraceConfig {
        timeout: 500 * MS,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(cfg, tcp_sel(), hops);
    let k = key(Protocol::Tcp, 40000, 443);
    sim.push(Duration::ZERO, syn(&k, 1000));
    let retransmission = syn(&k, 2000);
    sim.push(SEC, retransmission.clone());
    sim.run(20 * SEC);
    let r = sim.only_result();
    assert_eq!(r.stop_reason, StopReason::MaxMissing, "{r:?}");
    assert_eq!(
        hop_addrs(r),
        vec![
            Some(IpAddr::V4(router(1))),
            Some(IpAddr::V4(router(2))),
            None,
            None,
            None
        ]
    );
    let first = sim.sent.first().expect("probes").0;
    assert!(
        first >= 2 * SEC,
        "traced after the handshake wait, not at {first:?}"
    );
    for (_, tx, bytes) in &sim.sent {
        let differ: Vec<usize> = (0..retransmission.len())
            .filter(|&i| bytes.get(i) != retransmission.get(i))
            .collect();
        assert_eq!(bytes.len(), retransmission.len());
        assert!(
            differ.iter().all(|i| [4, 5, 8, 10, 11].contains(i)),
            "ttl {}: bytes {differ:?} differ from the SYN",
            tx.ttl
        );
        assert_eq!(bytes[8], tx.ttl);
    }
    // A TTL's worth at a time: never more than 3 probes leave at one instant.
    let mut per_instant: BTreeMap<Duration, usize> = BTreeMap::new();
    for (at, ..) in &sim.sent {
        *per_instant.entry(*at).or_default() += 1;
    }
    assert!(per_instant.values().all(|n| *n <= 3), "{per_instant:?}");
}

/// The server answers (a SYN-ACK) while the copies go out: no copy leaves after it, and the
/// trace says the remote answered.
#[test]
fn a_handshake_answered_during_its_trace_stops_the_copies() {
    let cfg = TraceConfig {
        timeout: 500 * MS,
        max_missing: 0,
        ..TraceConfig::default()
    };
    let mut sim = Sim::new(cfg, tcp_sel(), vec![HopKind::Silent; 8]);
    let k = key(Protocol::Tcp, 40000, 443);
    sim.push(Duration::ZERO, syn(&k, 1000));
    sim.tcp(2 * SEC + 700 * MS, &k, false, 9000, 0x1234_5679, 0x12, 0);
    sim.run(20 * SEC);
    let r = sim.only_result();
    assert_eq!(r.stop_reason, StopReason::RemoteReached, "{r:?}");
    assert!(sim.sent.iter().all(|(at, ..)| *at < 2 * SEC + 700 * MS));
    assert!(!sim.sent.is_empty());
}

/// Over IPv6 a SYN copy cannot carry a tag: the engine says so and sends nothing.
#[test]
fn an_ipv6_connection_stuck_in_its_handshake_is_reported_not_traced() {
    use std::net::Ipv6Addr;
    use svctr_core::NotTraced;
    use svctr_wire::probe::{emit_tcp_v6, Ipv6Fields};
    let (l, r) = (
        Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2),
        Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 2),
    );
    let selector = FlowFilter {
        protocol: Some(Protocol::Tcp),
        ..FlowFilter::default()
    };
    let mut engine = Engine::new(TraceConfig::default(), selector, vec![IpAddr::V6(l)]).unwrap();
    let mut b = Vec::new();
    let ip = Ipv6Fields {
        src: l,
        dst: r,
        hop_limit: 64,
        traffic_class: 0,
        flow_label: 7,
    };
    let tcp = TcpFields {
        src_port: 40000,
        dst_port: 443,
        seq: 1,
        ack: 0,
        flags: 0x02,
        window: 64800,
    };
    emit_tcp_v6(&ip, &tcp, &[], &mut b);
    let t0 = Instant::now();
    let wall = SystemTime::now();
    let at = |d: Duration| Now {
        mono: t0 + d,
        wall: wall + d,
    };
    engine.handle_packet(t0, wall, &b);
    let mut events = Vec::new();
    let mut buf = Vec::new();
    for d in [500 * MS, SEC, 2 * SEC, 3 * SEC, 4 * SEC] {
        engine.handle_timeout(at(d));
        assert!(engine.poll_transmit(at(d), &mut buf).is_none(), "no probe");
        while let Some(ev) = engine.poll_event() {
            events.push(ev);
        }
    }
    let not_traced: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::FlowNotTraced { .. }))
        .collect();
    assert_eq!(not_traced.len(), 1, "reported once: {events:?}");
    assert!(matches!(
        not_traced[0],
        Event::FlowNotTraced {
            reason: NotTraced::Ipv6Handshake,
            ..
        }
    ));
    assert!(NotTraced::Ipv6Handshake
        .to_string()
        .contains("identification"));
    assert_eq!(
        engine.poll_timeout().map(|t| t - t0),
        Some(Duration::from_secs(120)),
        "no busy timer"
    );
}

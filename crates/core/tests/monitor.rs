//! Deterministic scenario tests of the service monitor and of IPv6 flows: no root, no
//! sockets, virtual time.
//!
//! [`Net`] is an in-memory network of one family: a path of routers that answer every probe
//! with an ICMP/ICMPv6 Time Exceeded quoting it, in front of any number of remote servers.
//! Application packets, DNS answers and ClientHellos are scripted; the monitor's probes are
//! captured as they leave (as libpcap would) and answered.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use svctr_core::{
    Event, FlowFilter, FlowKey, Granularity, MatchSource, Monitor, MonitorConfig, Now, Protocol,
    StopReason, TraceConfig, TraceResult, Transmit,
};
use svctr_detect::{ServiceSpec, Signatures};
use svctr_wire::packet::{parse_ip, Transport};
use svctr_wire::probe::{
    emit_tcp_v4, emit_tcp_v6, emit_udp_v4, emit_udp_v6, Ipv4Fields, Ipv6Fields, TcpFields,
    UdpFields,
};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);
/// Routers between us and every server.
const HOPS: u8 = 4;

struct Net {
    mon: Monitor,
    v6: bool,
    t0: Instant,
    wall0: SystemTime,
    t: Duration,
    /// (time, order) -> (for the detector?, bytes)
    queue: BTreeMap<(Duration, u64), (bool, Vec<u8>)>,
    seq: u64,
    sent: Vec<(Duration, Transmit, Vec<u8>)>,
    results: Vec<(Duration, TraceResult)>,
    started: Vec<FlowKey>,
}

fn local(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0x1801, 0, 0, 0, 2))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2))
    }
}

/// Server `i` (1-based).
fn server(v6: bool, i: u16) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0x1980, 0, 0, 0, i))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 19, 128, i as u8))
    }
}

fn router(v6: bool, i: u8) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            2,
            0,
            0x1800 + u16::from(i),
            0,
            0,
            0,
            1,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 10 + i, 1))
    }
}

fn flow(v6: bool, proto: Protocol, lport: u16, srv: u16, rport: u16) -> FlowKey {
    FlowKey {
        protocol: proto,
        local: SocketAddr::new(local(v6), lport),
        remote: SocketAddr::new(server(v6, srv), rport),
    }
}

/// An IP packet from `src` to `dst` carrying `transport` (protocol `proto`), for the family of
/// the addresses.
fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, ttl: u8, transport: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = vec![0x45, 0];
            p.extend_from_slice(&((20 + transport.len()) as u16).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0, ttl, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(transport);
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&(transport.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, ttl]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(transport);
            p
        }
        _ => panic!("mixed families"),
    }
}

/// A minimal TLS ClientHello record with server name `sni` (RFC 8446 §4.1.2, RFC 6066 §3).
fn client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let mut sni_ext = Vec::new();
    sni_ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes()); // server_name_list
    sni_ext.push(0); // host_name
    sni_ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni_ext.extend_from_slice(name);
    let mut exts = vec![0, 0]; // extension type server_name
    exts.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
    exts.extend_from_slice(&sni_ext);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // cipher suites: TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// A DNS response: `name` CNAME-chained through `chain` to the addresses, every record with `ttl`.
fn dns_response(name: &str, chain: &[&str], addrs: &[IpAddr], ttl: u32) -> Vec<u8> {
    fn qname(n: &str) -> Vec<u8> {
        let mut v = Vec::new();
        for label in n.split('.') {
            v.push(label.len() as u8);
            v.extend_from_slice(label.as_bytes());
        }
        v.push(0);
        v
    }
    let answers = chain.len() + addrs.len();
    let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, answers as u8, 0, 0, 0, 0];
    m.extend_from_slice(&qname(name));
    m.extend_from_slice(&[0, 1, 0, 1]);
    let mut owner = name.to_string();
    for target in chain {
        m.extend_from_slice(&qname(&owner));
        m.extend_from_slice(&[0, 5, 0, 1]);
        m.extend_from_slice(&ttl.to_be_bytes());
        let t = qname(target);
        m.extend_from_slice(&(t.len() as u16).to_be_bytes());
        m.extend_from_slice(&t);
        owner = target.to_string();
    }
    for a in addrs {
        m.extend_from_slice(&qname(&owner));
        let rdata = match a {
            IpAddr::V4(v) => v.octets().to_vec(),
            IpAddr::V6(v) => v.octets().to_vec(),
        };
        m.extend_from_slice(if a.is_ipv4() {
            &[0, 1, 0, 1]
        } else {
            &[0, 28, 0, 1]
        });
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
    }
    m
}

fn signatures(specs: &[(&str, &[&str], &[&str])]) -> Signatures {
    let mut s = Signatures::empty();
    for (name, domains, prefixes) in specs {
        let spec = ServiceSpec {
            name: name.to_string(),
            domains: domains.iter().map(ToString::to_string).collect(),
            prefixes: prefixes.iter().map(ToString::to_string).collect(),
            ..ServiceSpec::default()
        };
        s.add(spec, "test").expect("valid spec");
    }
    s
}

impl Net {
    fn new(cfg: MonitorConfig, v6: bool) -> Self {
        Self {
            mon: Monitor::new(cfg, vec![local(v6)]).expect("config"),
            v6,
            t0: Instant::now(),
            wall0: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            t: Duration::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            sent: Vec::new(),
            results: Vec::new(),
            started: Vec::new(),
        }
    }

    fn push(&mut self, at: Duration, detection: bool, bytes: Vec<u8>) {
        self.seq += 1;
        self.queue.insert((at, self.seq), (detection, bytes));
    }

    /// A TCP segment of flow `k` (`out`: sent by us). Incoming packets arrive with the TTL
    /// left after `HOPS` routers; outgoing ones carry traffic class 0x28 and flow label 0x1234.
    #[allow(clippy::too_many_arguments)]
    fn tcp(
        &mut self,
        at: Duration,
        k: &FlowKey,
        out: bool,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: &[u8],
    ) {
        let (src, dst) = if out {
            (k.local, k.remote)
        } else {
            (k.remote, k.local)
        };
        let ttl = if out { 64 } else { 64 - HOPS };
        let tcp = TcpFields {
            src_port: src.port(),
            dst_port: dst.port(),
            seq,
            ack,
            flags,
            window: 501,
        };
        let mut buf = Vec::new();
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                emit_tcp_v4(
                    &Ipv4Fields {
                        src: s,
                        dst: d,
                        ttl,
                        tos: 0x28,
                        dont_fragment: true,
                        ident: 7,
                    },
                    &tcp,
                    payload,
                    &mut buf,
                );
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let label = if out { 0x1234 } else { 0 };
                emit_tcp_v6(
                    &Ipv6Fields {
                        src: s,
                        dst: d,
                        hop_limit: ttl,
                        traffic_class: 0x28,
                        flow_label: label,
                    },
                    &tcp,
                    payload,
                    &mut buf,
                );
            }
            _ => unreachable!(),
        }
        // A segment that carries data also goes to the detection capture (ClientHello).
        if !payload.is_empty() {
            self.push(at, true, buf.clone());
        }
        self.push(at, false, buf);
    }

    fn udp(&mut self, at: Duration, k: &FlowKey, out: bool, payload: &[u8]) {
        let (src, dst) = if out {
            (k.local, k.remote)
        } else {
            (k.remote, k.local)
        };
        let ttl = if out { 64 } else { 64 - HOPS };
        let udp = UdpFields {
            src_port: src.port(),
            dst_port: dst.port(),
        };
        let mut buf = Vec::new();
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                emit_udp_v4(
                    &Ipv4Fields {
                        src: s,
                        dst: d,
                        ttl,
                        tos: 0xb8,
                        dont_fragment: false,
                        ident: 9,
                    },
                    &udp,
                    payload,
                    &mut buf,
                );
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let label = if out { 0xabcde } else { 0 };
                emit_udp_v6(
                    &Ipv6Fields {
                        src: s,
                        dst: d,
                        hop_limit: ttl,
                        traffic_class: 0xb8,
                        flow_label: label,
                    },
                    &udp,
                    payload,
                    &mut buf,
                );
            }
            _ => unreachable!(),
        }
        self.push(at, false, buf);
    }

    /// An established TCP flow already running: one ACK out, one data segment in.
    fn tcp_flow(&mut self, at: Duration, k: &FlowKey) {
        self.tcp(at, k, true, 1000, 5000, 0x10, &[]);
        self.tcp(at, k, false, 5000, 1000, 0x10, &[0; 100]);
    }

    /// A TCP flow from its handshake, with a ClientHello naming `sni`, then data both ways.
    fn tls_flow(&mut self, at: Duration, k: &FlowKey, sni: &str) {
        self.tcp(at, k, true, 999, 0, 0x02, &[]);
        self.tcp(at + MS, k, false, 4999, 1000, 0x12, &[]);
        self.tcp(at + 2 * MS, k, true, 1000, 5000, 0x10, &[]);
        let hello = client_hello(sni);
        self.tcp(at + 3 * MS, k, true, 1000, 5000, 0x18, &hello);
        let after = 1000 + hello.len() as u32;
        self.tcp(at + 4 * MS, k, false, 5000, after, 0x10, &[0; 100]);
        self.tcp(at + 5 * MS, k, true, after, 5100, 0x10, &[]);
    }

    /// A UDP request/response every 100 ms from `from` for `dur`.
    fn udp_flow(&mut self, from: Duration, k: &FlowKey, dur: Duration) {
        let mut at = from;
        while at <= from + dur {
            self.udp(at, k, true, &[1; 40]);
            self.udp(at + Duration::from_micros(500), k, false, &[2; 400]);
            at += 100 * MS;
        }
    }

    /// A DNS response to us from a resolver (to the detection capture; the main capture
    /// only sees it as a UDP packet of a flow to port 53, which no test selects).
    fn dns(&mut self, at: Duration, name: &str, chain: &[&str], addrs: &[IpAddr], ttl: u32) {
        let msg = dns_response(name, chain, addrs, ttl);
        let resolver = SocketAddr::new(server(self.v6, 53), 53);
        let me = SocketAddr::new(local(self.v6), 5353);
        let mut udp = Vec::new();
        udp.extend_from_slice(&53u16.to_be_bytes());
        udp.extend_from_slice(&5353u16.to_be_bytes());
        udp.extend_from_slice(&((8 + msg.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&msg);
        let pkt = ip_packet(resolver.ip(), me.ip(), 17, 60, &udp);
        self.push(at, true, pkt);
    }

    /// The path's answer to a probe: router `ttl` quotes it in a Time Exceeded.
    fn on_probe(&mut self, at: Duration, tx: Transmit, bytes: Vec<u8>) {
        self.sent.push((at, tx, bytes.clone()));
        self.push(at, false, bytes.clone());
        if tx.ttl > HOPS {
            return;
        }
        let mut quoted = bytes;
        let (icmp_type, proto) = if self.v6 {
            quoted[7] = 1; // hop limit as the router saw it
            (3, 58)
        } else {
            quoted[8] = 1;
            (11, 1)
        };
        let mut icmp = vec![icmp_type, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted);
        let reply = ip_packet(
            router(self.v6, tx.ttl),
            local(self.v6),
            proto,
            64 - tx.ttl + 1,
            &icmp,
        );
        self.push(at + MS * u32::from(tx.ttl), false, reply);
    }

    fn now(&self) -> Now {
        Now {
            mono: self.t0 + self.t,
            wall: self.wall0 + self.t,
        }
    }

    /// Runs until nothing is left to do, or `limit` of virtual time.
    fn run(&mut self, limit: Duration) {
        let mut buf = Vec::new();
        for _ in 0..10_000_000 {
            while let Some((&(at, s), _)) = self.queue.iter().next() {
                if at > self.t {
                    break;
                }
                let (detection, bytes) = self.queue.remove(&(at, s)).unwrap();
                let now = self.now();
                if detection {
                    self.mon.handle_detection_packet(now.mono, &bytes);
                } else {
                    self.mon.handle_packet(now.mono, now.wall, &bytes);
                }
            }
            let now = self.now();
            self.mon.handle_timeout(now);
            while let Some(tx) = self.mon.poll_transmit(now, &mut buf) {
                let bytes = buf[..tx.len].to_vec();
                self.on_probe(self.t, tx, bytes);
            }
            while let Some(ev) = self.mon.poll_event() {
                match ev {
                    Event::TraceFinished(r) => self.results.push((self.t, *r)),
                    Event::TraceStarted { flow, .. } => self.started.push(flow),
                    _ => {}
                }
            }
            let next_packet = self.queue.keys().next().map(|(at, _)| *at);
            let next_timer = self.mon.poll_timeout().map(|i| i - self.t0);
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

    fn traced(&self) -> BTreeSet<FlowKey> {
        self.results
            .iter()
            .map(|(_, r)| FlowKey {
                protocol: r.flow.protocol,
                local: SocketAddr::new(r.flow.local.ip, r.flow.local.port),
                remote: SocketAddr::new(r.flow.remote.ip, r.flow.remote.port),
            })
            .collect()
    }
}

fn hop_addrs(r: &TraceResult) -> Vec<Option<IpAddr>> {
    r.hops
        .iter()
        .map(|h| h.probes.iter().find_map(|p| p.addr))
        .collect()
}

fn routers(v6: bool) -> Vec<Option<IpAddr>> {
    (1..=HOPS).map(|i| Some(router(v6, i))).collect()
}

fn services_cfg(sigs: Signatures) -> MonitorConfig {
    MonitorConfig {
        services: Some(sigs),
        ..MonitorConfig::default()
    }
}

fn three_services() -> Signatures {
    signatures(&[
        ("video", &["video.example.test"], &[]),
        ("audio", &["audio.example.test"], &[]),
        ("cdn", &["cdn.test"], &[]),
    ])
}

/// Every probe of every hop answered by the path's routers, and the trace stopped one short
/// of the remote.
fn assert_full_path(r: &TraceResult, v6: bool) {
    assert_eq!(r.stop_reason, StopReason::RemoteDistance, "{r:?}");
    assert_eq!(hop_addrs(r), routers(v6), "{r:?}");
    assert!(
        r.hops.iter().all(|h| h
            .probes
            .iter()
            .all(|p| p.addr.is_some() && p.rtt_ms.is_some())),
        "{r:?}"
    );
}

#[test]
fn dns_answers_pick_exactly_the_services_flows() {
    for v6 in [false, true] {
        let sigs = three_services().select(&["video", "cdn"]).unwrap();
        let mut net = Net::new(services_cfg(sigs), v6);
        // video.example.test -> server 1; audio -> server 2; www.example.test CNAME
        // edge.cdn.test -> server 3; server 4 is never named.
        net.dns(
            Duration::ZERO,
            "video.example.test",
            &[],
            &[server(v6, 1)],
            300,
        );
        net.dns(
            Duration::ZERO,
            "audio.example.test",
            &[],
            &[server(v6, 2)],
            300,
        );
        net.dns(
            Duration::ZERO,
            "www.example.test",
            &["edge.cdn.test"],
            &[server(v6, 3)],
            300,
        );
        let flows: Vec<FlowKey> = (1..=4)
            .flat_map(|srv| {
                [
                    flow(v6, Protocol::Tcp, 40000 + srv, srv, 443),
                    flow(v6, Protocol::Udp, 41000 + srv, srv, 443),
                ]
            })
            .collect();
        for k in &flows {
            match k.protocol {
                Protocol::Tcp => net.tcp_flow(10 * MS, k),
                _ => net.udp_flow(10 * MS, k, 3 * SEC),
            }
        }
        net.run(30 * SEC);
        let want: BTreeSet<FlowKey> = flows
            .iter()
            .filter(|k| k.remote.ip() == server(v6, 1) || k.remote.ip() == server(v6, 3))
            .copied()
            .collect();
        assert_eq!(net.traced(), want, "v6 {v6}");
        for (_, r) in &net.results {
            assert_full_path(r, v6);
            assert_eq!(r.flow.matched_by, Some(MatchSource::Dns));
            if r.flow.remote.ip == server(v6, 1) {
                assert_eq!(
                    (r.flow.service.as_deref(), r.flow.name.as_deref()),
                    (Some("video"), Some("video.example.test"))
                );
            } else {
                // The CNAME target matched the service; it is the name reported.
                assert_eq!(
                    (r.flow.service.as_deref(), r.flow.name.as_deref()),
                    (Some("cdn"), Some("edge.cdn.test"))
                );
            }
            assert_eq!(
                r.flow.flow_label,
                v6.then_some(if r.flow.protocol == Protocol::Tcp {
                    0x1234
                } else {
                    0xabcde
                })
            );
        }
    }
}

#[test]
fn an_expired_dns_answer_no_longer_selects() {
    let mut net = Net::new(services_cfg(three_services()), false);
    net.dns(
        Duration::ZERO,
        "video.example.test",
        &[],
        &[server(false, 1)],
        5,
    );
    let early = flow(false, Protocol::Tcp, 40001, 1, 443);
    let late = flow(false, Protocol::Tcp, 40002, 1, 443);
    net.tcp_flow(SEC, &early);
    net.tcp_flow(10 * SEC, &late); // after the 5 s TTL
    net.run(60 * SEC);
    assert_eq!(net.traced(), BTreeSet::from([early]));
}

#[test]
fn tls_sni_selects_a_flow_without_any_dns() {
    let mut net = Net::new(services_cfg(three_services()), false);
    let video = flow(false, Protocol::Tcp, 40001, 7, 443);
    let other = flow(false, Protocol::Tcp, 40002, 8, 443);
    net.tls_flow(Duration::ZERO, &video, "Video.Example.Test");
    net.tls_flow(Duration::ZERO, &other, "www.unrelated.test");
    net.run(30 * SEC);
    assert_eq!(net.traced(), BTreeSet::from([video]));
    let r = &net.results[0].1;
    assert_full_path(r, false);
    assert_eq!(r.flow.matched_by, Some(MatchSource::TlsSni));
    assert_eq!(
        (r.flow.service.as_deref(), r.flow.name.as_deref()),
        (Some("video"), Some("video.example.test"))
    );
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["flow"]["service"], "video");
    assert_eq!(json["flow"]["name"], "video.example.test");
    assert_eq!(json["flow"]["match"], "tls-sni");
}

#[test]
fn prefixes_select_without_dns() {
    let sigs = signatures(&[("lab", &[], &["198.19.128.0/30"])]);
    let mut net = Net::new(services_cfg(sigs), false);
    let inside = flow(false, Protocol::Udp, 40001, 2, 9000);
    let outside = flow(false, Protocol::Udp, 40002, 9, 9000);
    net.udp_flow(Duration::ZERO, &inside, 3 * SEC);
    net.udp_flow(Duration::ZERO, &outside, 3 * SEC);
    net.run(30 * SEC);
    assert_eq!(net.traced(), BTreeSet::from([inside]));
    let f = &net.results[0].1.flow;
    assert_eq!(
        (f.service.as_deref(), f.name.as_deref(), f.matched_by),
        (Some("lab"), None, Some(MatchSource::Prefix))
    );
}

#[test]
fn without_services_the_filter_alone_selects() {
    let cfg = MonitorConfig {
        filter: FlowFilter {
            protocol: Some(Protocol::Tcp),
            remote_port: Some(443),
            ..FlowFilter::default()
        },
        retrace_after: None,
        ..MonitorConfig::default()
    };
    let mut net = Net::new(cfg, false);
    let a = flow(false, Protocol::Tcp, 40001, 1, 443);
    let b = flow(false, Protocol::Tcp, 40002, 1, 80);
    let c = flow(false, Protocol::Udp, 40003, 1, 443);
    net.tcp_flow(Duration::ZERO, &a);
    net.tcp_flow(Duration::ZERO, &b);
    net.udp_flow(Duration::ZERO, &c, SEC);
    net.run(30 * SEC);
    assert_eq!(net.traced(), BTreeSet::from([a]));
    assert_eq!(net.results[0].1.flow.service, None);
}

#[test]
fn granularity_groups_flows_and_long_lived_flows_are_traced_again() {
    // Per destination: two flows to the same server are one trace; a third to another
    // server is its own. The long-lived flow is traced again after retrace_after.
    let cfg = MonitorConfig {
        granularity: Granularity::Destination,
        retrace_after: Some(20 * SEC),
        ..MonitorConfig::default()
    };
    let mut net = Net::new(cfg, false);
    let a = flow(false, Protocol::Udp, 40001, 1, 9000);
    let b = flow(false, Protocol::Udp, 40002, 1, 9001);
    let c = flow(false, Protocol::Udp, 40003, 2, 9000);
    net.udp_flow(Duration::ZERO, &a, 60 * SEC);
    net.udp_flow(50 * MS, &b, 5 * SEC);
    net.udp_flow(50 * MS, &c, 5 * SEC);
    net.run(70 * SEC);
    let per_flow: Vec<(u64, FlowKey)> = net
        .results
        .iter()
        .map(|(t, r)| {
            (
                t.as_secs(),
                FlowKey {
                    protocol: r.flow.protocol,
                    local: SocketAddr::new(r.flow.local.ip, r.flow.local.port),
                    remote: SocketAddr::new(r.flow.remote.ip, r.flow.remote.port),
                },
            )
        })
        .collect();
    let of = |k: &FlowKey| {
        per_flow
            .iter()
            .filter(|(_, f)| f == k)
            .map(|(t, _)| *t)
            .collect::<Vec<_>>()
    };
    assert_eq!(of(&c).len(), 1, "{per_flow:?}");
    assert!(of(&b).is_empty(), "b shares a's destination: {per_flow:?}");
    // a: at the start, then again at ~20 s and ~40 s after each previous end (60 s flow).
    let ta = of(&a);
    assert_eq!(ta.len(), 3, "{per_flow:?}");
    assert!(
        ta[1] >= 20 && ta[1] <= 22 && ta[2] >= 40 && ta[2] <= 44,
        "{ta:?}"
    );

    // Per destination and port: b is traced too.
    let cfg = MonitorConfig {
        granularity: Granularity::DestinationPort,
        ..MonitorConfig::default()
    };
    let mut net = Net::new(cfg, false);
    net.udp_flow(Duration::ZERO, &a, 3 * SEC);
    net.udp_flow(50 * MS, &b, 3 * SEC);
    net.run(30 * SEC);
    assert_eq!(net.traced(), BTreeSet::from([a, b]));
}

#[test]
fn max_traces_stops_selecting() {
    let cfg = MonitorConfig {
        max_traces: 2,
        ..MonitorConfig::default()
    };
    let mut net = Net::new(cfg, false);
    for i in 0..5 {
        net.tcp_flow(
            Duration::ZERO,
            &flow(false, Protocol::Tcp, 40000 + i, 1, 443),
        );
    }
    net.run(30 * SEC);
    assert_eq!(net.results.len(), 2);
    assert!(!net.mon.is_selecting());
}

/// IPv6 probes keep the flow's traffic class and flow label, carry a per-probe hop limit, and
/// are told apart by a distinct TCP sequence number / UDP checksum; all the other bytes a
/// router hashes are the flow's.
#[test]
fn ipv6_probes_keep_the_flow_identity_and_carry_distinct_tags() {
    let mut net = Net::new(MonitorConfig::default(), true);
    let t = flow(true, Protocol::Tcp, 40001, 1, 443);
    let u = flow(true, Protocol::Udp, 40002, 1, 9000);
    net.tcp_flow(Duration::ZERO, &t);
    net.udp_flow(Duration::ZERO, &u, 3 * SEC);
    net.run(30 * SEC);
    assert_eq!(net.results.len(), 2);
    for (_, r) in &net.results {
        assert_full_path(r, true);
    }
    let mut tcp_seqs = BTreeSet::new();
    let mut udp_sums = BTreeSet::new();
    for (_, tx, bytes) in &net.sent {
        let p = parse_ip(bytes).unwrap();
        assert_eq!(bytes[7], tx.ttl, "hop limit per probe");
        assert_eq!(
            p.ip.tos,
            if tx.flow.protocol == Protocol::Tcp {
                0x28
            } else {
                0xb8
            },
            "traffic class"
        );
        match p.transport {
            Transport::Tcp(seg) => {
                assert_eq!(p.ip.flow_label, 0x1234);
                assert_eq!(
                    (seg.src_port, seg.dst_port, seg.flags, seg.payload_len),
                    (40001, 443, 0x10, 0)
                );
                // SND.UNA is 1000 (the remote acknowledged 1000): every probe at or below 999,
                // with the process slot (0 here) in its low 4 bits, at most 16 x the probe
                // count below.
                assert!(
                    seg.seq <= 999 && seg.seq > 999 - 16 * 3 * u32::from(HOPS),
                    "seq {}",
                    seg.seq
                );
                assert_eq!(seg.seq % 16, 0, "slot 0 in the low bits: seq {}", seg.seq);
                assert_eq!(seg.ack, 5000, "RCV.NXT: the last ACK this host sent");
                assert!(tcp_seqs.insert(seg.seq), "distinct sequence numbers");
            }
            Transport::Udp(d) => {
                assert_eq!(p.ip.flow_label, 0xabcde);
                assert_eq!((d.src_port, d.dst_port, d.payload_len), (40002, 9000, 2));
                assert_eq!(d.checksum, tx.ident, "the checksum is the probe's tag");
                assert_eq!(d.checksum % 16, 0, "slot 0 in the low bits");
                assert!(udp_sums.insert(d.checksum));
                // And it is a valid checksum (RFC 8200 §8.1): the sum over the pseudo-header
                // and the datagram is all ones.
                assert_eq!(udp6_sum(bytes), 0xffff);
            }
            _ => panic!("unexpected probe"),
        }
    }
    assert_eq!(tcp_seqs.len(), 3 * usize::from(HOPS));
    assert_eq!(udp_sums.len(), 3 * usize::from(HOPS));
}

fn udp6_sum(p: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&p[8..40]);
    add(&(p.len() as u32 - 40).to_be_bytes());
    add(&[0, 0, 0, 17]);
    add(&p[40..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// An ICMPv6 error about one of the flow's own packets (same 5-tuple, not a probe) is never a
/// hop, and neither is one quoting a sequence number no probe used.
#[test]
fn ipv6_errors_about_the_flows_own_packets_are_not_hops() {
    let mut net = Net::new(MonitorConfig::default(), true);
    let t = flow(true, Protocol::Tcp, 40001, 1, 443);
    net.tcp_flow(Duration::ZERO, &t);
    // A data segment of the flow, quoted by a router: same 5-tuple, other length and seq.
    let mut seg = Vec::new();
    let (IpAddr::V6(s), IpAddr::V6(d)) = (t.local.ip(), t.remote.ip()) else {
        unreachable!()
    };
    emit_tcp_v6(
        &Ipv6Fields {
            src: s,
            dst: d,
            hop_limit: 1,
            traffic_class: 0x28,
            flow_label: 0x1234,
        },
        &TcpFields {
            src_port: 40001,
            dst_port: 443,
            seq: 1000,
            ack: 5100,
            flags: 0x18,
            window: 501,
        },
        &[9; 200],
        &mut seg,
    );
    let mut icmp = vec![3, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&seg);
    let bogus = ip_packet(router(true, 9), local(true), 58, 60, &icmp);
    // While the probes are out (the routers answer after 1-4 ms).
    for us in [300, 400, 500, 600, 700] {
        net.push(Duration::from_micros(us), false, bogus.clone());
    }
    net.run(30 * SEC);
    let r = &net.results[0].1;
    assert_full_path(r, true);
    assert!(r
        .hops
        .iter()
        .all(|h| h.probes.iter().all(|p| p.addr != Some(router(true, 9)))));
    assert!(net.mon.stats().engine.replies_unmatched >= 5);
}

/// Many flows of a service at once: each traced, every hop right; the engine's work per
/// input does not grow with the number of flows (it would take minutes here otherwise).
#[test]
fn ten_thousand_service_flows_at_once() {
    let sigs = signatures(&[("bulk", &[], &["198.19.128.0/24"])]);
    let mut net = Net::new(services_cfg(sigs), false);
    let n = 10_000u32;
    for i in 0..n {
        let k = flow(
            false,
            Protocol::Tcp,
            10_000 + (i % 50_000) as u16,
            1 + (i / 50_000) as u16,
            443 + (i % 7) as u16,
        );
        net.tcp_flow(Duration::from_micros(u64::from(i) * 50), &k);
    }
    let start = std::time::Instant::now();
    net.run(60 * SEC);
    assert_eq!(net.results.len() as u32, n);
    for (_, r) in &net.results {
        assert_eq!(hop_addrs(r), routers(false));
    }
    eprintln!("10,000 flows simulated in {:?}", start.elapsed());
}

#[test]
fn udp_ipv6_trace_through_the_monitor_with_a_tight_filter() {
    let cfg = MonitorConfig {
        filter: FlowFilter {
            protocol: Some(Protocol::Udp),
            remote_ip: Some(server(true, 1)),
            remote_port: Some(9000),
            local_port: None,
        },
        trace: TraceConfig {
            probes_per_hop: 2,
            ..TraceConfig::default()
        },
        ..MonitorConfig::default()
    };
    let mut net = Net::new(cfg, true);
    let u = flow(true, Protocol::Udp, 40002, 1, 9000);
    net.udp_flow(Duration::ZERO, &u, 3 * SEC);
    net.run(30 * SEC);
    let r = &net.results[0].1;
    assert_full_path(r, true);
    assert_eq!(r.hops[0].probes.len(), 2);
    assert_eq!(r.remote_distance, Some(HOPS));
}

/// Another tracer's probes (a multipath discovery of this process or another, traceroute -T)
/// leave with a TTL no application uses: their 5-tuples are not flows, and neither are the
/// answers they draw (the remote's SYN-ACK, our kernel's RST), so no SYN copies chase them.
#[test]
fn other_tracers_probes_are_not_flows() {
    for v6 in [false, true] {
        let cfg = MonitorConfig {
            filter: FlowFilter {
                protocol: Some(Protocol::Tcp),
                remote_port: Some(443),
                ..FlowFilter::default()
            },
            retrace_after: None,
            ..MonitorConfig::default()
        };
        let mut net = Net::new(cfg, v6);
        let tcp = |sport: u16, dport: u16, seq: u32, ack: u32, flags: u8| {
            let mut t = Vec::new();
            t.extend_from_slice(&sport.to_be_bytes());
            t.extend_from_slice(&dport.to_be_bytes());
            t.extend_from_slice(&seq.to_be_bytes());
            t.extend_from_slice(&ack.to_be_bytes());
            t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
            t
        };
        let (me, srv) = (local(v6), server(v6, 1));
        // Twenty SYN probes from a block of source ports, TTL 1 to 20; the last ones reach
        // the server, which answers SYN-ACK, and our kernel resets.
        for i in 0..20u16 {
            let at = MS * u32::from(i);
            let syn = tcp(47000 + i, 443, 0x4d44_0000 + u32::from(i), 0, 0x02);
            net.push(at, false, ip_packet(me, srv, 6, 1 + i as u8, &syn));
            if i >= 10 {
                let synack = tcp(443, 47000 + i, 7, 0x4d44_0001 + u32::from(i), 0x12);
                net.push(at + MS, false, ip_packet(srv, me, 6, 60, &synack));
                let rst = tcp(47000 + i, 443, 0x4d44_0001 + u32::from(i), 0, 0x04);
                net.push(at + 2 * MS, false, ip_packet(me, srv, 6, 64, &rst));
            }
        }
        let app = flow(v6, Protocol::Tcp, 40001, 1, 443);
        net.tcp_flow(100 * MS, &app);
        net.run(30 * SEC);
        assert_eq!(net.traced(), BTreeSet::from([app]), "v6={v6}");
        assert_eq!(
            net.started,
            vec![app],
            "no SYN copies of the probes (v6={v6})"
        );
        let st = net.mon.stats();
        assert_eq!(st.probe_packets_ignored, 20 + 10 * 2, "v6={v6}: {st:?}");
    }
}

/// Several processes trace one live flow (the isolation the slots give): this monitor may see
/// another process's probes, which carry the flow's own 5-tuple with a low TTL, before the
/// application's next packet. The application's packets (an application's TTL, no RST) are
/// still taken for the flow, at once, not after the probes' memory has run out (it used to
/// wait for a lull of `PROBE_MEMORY` in the other tracers' probing).
#[test]
fn a_flow_that_other_processes_probe_too_is_still_taken() {
    for v6 in [false, true] {
        let cfg = MonitorConfig {
            filter: FlowFilter {
                protocol: Some(Protocol::Udp),
                remote_port: Some(9000),
                ..FlowFilter::default()
            },
            retrace_after: None,
            ..MonitorConfig::default()
        };
        let mut net = Net::new(cfg, v6);
        let app = flow(v6, Protocol::Udp, 40003, 1, 9000);
        let (me, srv) = (local(v6), server(v6, 1));
        // Another process probes the flow (empty datagrams with its 5-tuple, TTL 1..5) every
        // 100 ms for 3 s, starting before this monitor sees any packet of the application.
        for i in 0..30u32 {
            let mut udp = Vec::new();
            udp.extend_from_slice(&40003u16.to_be_bytes());
            udp.extend_from_slice(&9000u16.to_be_bytes());
            udp.extend_from_slice(&8u16.to_be_bytes());
            udp.extend_from_slice(&[0, 0]);
            net.push(
                100 * MS * i,
                false,
                ip_packet(me, srv, 17, 1 + (i % 5) as u8, &udp),
            );
        }
        net.udp_flow(50 * MS, &app, 3 * SEC);
        net.run(30 * SEC);
        assert_eq!(net.traced(), BTreeSet::from([app]), "v6={v6}");
        let first = net
            .started
            .first()
            .copied()
            .unwrap_or_else(|| panic!("v6={v6}: never traced"));
        assert_eq!(first, app);
        // Traced as soon as the application spoke (its first datagram at 50 ms; UDP waits
        // up to a second for the remote's answer to learn its distance, which comes at once
        // here), not after the other tracer's probing stopped (3 s) plus the probes' memory.
        let (done_at, _) = &net.results[0];
        assert!(*done_at < SEC, "v6={v6}: traced only at {done_at:?}");
        assert!(net.mon.stats().probe_packets_ignored >= 1, "v6={v6}");
    }
}

/// A flood of new 5-tuples (a scan, a SYN flood, a million new flows a minute) keeps every
/// table bounded: with room for 1,000 flows, 50,000 incoming flows that never become
/// traceable are forgotten oldest first and counted, the newest stay, and a real flow that
/// starts in the middle of the flood is still traced. With services (a prefix that matches
/// every flow), the table of recognised flows is bounded the same way.
#[test]
fn a_flood_of_new_flows_keeps_every_table_bounded() {
    const FLOOD: u32 = 50_000;
    for with_services in [false, true] {
        let mut cfg = if with_services {
            services_cfg(signatures(&[("lab", &[], &["198.19.0.0/16"])]))
        } else {
            MonitorConfig::default()
        };
        cfg.max_flows = 1000;
        let mut net = Net::new(cfg, false);
        let mut flood = Vec::new();
        for i in 0..FLOOD {
            let at = Duration::from_micros(u64::from(i) * 20);
            let proto = if i % 2 == 0 {
                Protocol::Udp
            } else {
                Protocol::Tcp
            };
            let k = flow(false, proto, 1024 + i as u16, 1 + (i % 7) as u16, 443);
            match proto {
                // Datagrams in, nothing out: never traceable.
                Protocol::Udp => net.udp(at, &k, false, &[0; 8]),
                // SYNs in, unanswered: never traceable.
                _ => net.tcp(at, &k, false, 77, 0, 0x02, &[]),
            }
            flood.push(k);
        }
        let real = flow(false, Protocol::Udp, 60000, 9, 4433);
        net.udp_flow(Duration::from_millis(500), &real, SEC);
        net.run(3 * SEC);
        let st = net.mon.stats();
        let engine = net.mon.engine();
        assert!(engine.flows() <= 1000, "{} flows tracked", engine.flows());
        assert_eq!(
            st.engine.flows_evicted,
            u64::from(FLOOD) - engine.flows() as u64,
            "every flood flow not still tracked was evicted and counted ({with_services})"
        );
        assert_eq!(st.engine.flows_refused, 0);
        assert!(engine.is_tracking(flood.last().unwrap()), "the newest stay");
        assert!(!engine.is_tracking(&flood[0]), "the oldest go first");
        assert_eq!(
            net.traced(),
            BTreeSet::from([real]),
            "the real flow is traced"
        );
        assert_eq!(net.results.len(), 1, "once");
        assert_full_path(&net.results[0].1, false);
        if with_services {
            assert!(
                st.entries_evicted >= u64::from(FLOOD) - 2000,
                "recognised flows bounded too: {} evicted",
                st.entries_evicted
            );
        }
    }
}

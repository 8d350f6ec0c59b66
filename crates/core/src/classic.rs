//! Classic, Paris and Dublin traceroute to many targets at once, IPv4 and IPv6, with UDP, TCP
//! SYN or ICMP echo probes (sans-IO, like [`crate::Engine`]).
//!
//! Per-flow load balancers hash the fields that identify a flow: addresses, protocol, ports
//! (for ICMP the first four bytes of the header: type, code and checksum; for IPv6 also the
//! flow label). Where a traceroute writes its probe number decides which path it sees:
//!
//! | strategy | the flow identifier | the probe number is in |
//! |---|---|---|
//! | `classic` | changes with every probe: each probe may take another path | UDP destination port (33434 + n), TCP source port, ICMP sequence (which changes the checksum) |
//! | `paris` | constant (Augustin et al., IMC 2006) | UDP checksum (two payload bytes make it so), TCP sequence number, ICMP sequence with the identifier compensating so the checksum stays constant |
//! | `dublin` | constant | IPv4 identification; IPv6 payload length |
//!
//! Every probe also carries this process's marker (its reserved source port for UDP and TCP,
//! the `marker` for ICMP, the high 16 bits of every TCP sequence number); the live driver
//! reserves both from the kernel so that no two live processes share them, its kernel filter
//! passes only replies that quote them, and every reply is
//! checked against it, so several processes tracing at once never take each other's replies.
//! Targets are told apart by destination address: one trace per address at a time.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use svctr_wire::icmp::IcmpMessage;
use svctr_wire::packet::{parse_ip, Transport};
use svctr_wire::probe::{
    emit, force_checksum, ones_add, EchoFields, IpFields, Ipv4Fields, Ipv6Fields, TcpFields,
    TransportFields, UdpFields,
};

use crate::config::{Algorithm, ConfigError, TraceConfig};
use crate::flow::{FlowKey, Protocol};
use crate::machine::{Now, Transmit};
use crate::probe::ProbeShape;
use crate::result::{Hop, StopReason};
use crate::scheduler::{Scheduler, TargetQueue};
use crate::trace::{ReplyInfo, ReplyOutcome, Trace};

/// Classic TCP probes use at most this many consecutive source ports (then the ports repeat):
/// each is reserved by the live driver for the whole run.
pub const CLASSIC_TCP_PORTS: u16 = 256;

/// Where the probe number goes (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The probe number changes the flow identifier.
    Classic,
    /// Constant flow identifier; the probe number in a checksum or sequence number.
    #[default]
    Paris,
    /// Constant flow identifier; the probe number in the IPv4 ID or IPv6 payload length.
    Dublin,
}

crate::names::names!(Strategy, "strategy", Classic => "classic", Paris => "paris", Dublin => "dublin");

/// Parameters of a traceroute run. `Default` gives the documented defaults, the single source
/// of them: traceroute(8)'s max TTL (30) and probes per hop (3), scamper's gap limit (5 silent
/// TTLs), a 3 s wait (between the original Service Traceroute's 2 s and traceroute(8)'s 5 s
/// cap), Paris probes. Why they differ from the flow tracer's: see [`crate::TraceConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracerouteConfig {
    /// Probe protocol (default UDP).
    pub protocol: Protocol,
    /// Where the probe number goes (default Paris).
    pub strategy: Strategy,
    /// Destination port: UDP base port (33434) or TCP port (80). Unused for ICMP.
    pub port: Option<u16>,
    /// Source port (UDP, TCP): the driver reserves one per process by binding a socket.
    /// Classic TCP cycles through [`tcp_ports`](Self::tcp_ports) consecutive ports from it.
    pub sport: u16,
    /// This process's marker (see the module doc): for UDP and TCP the driver sets it to the
    /// reserved source port; for ICMP, 0 asks the driver to reserve one. A sans-IO user picks
    /// its own (0 and 0xffff are best avoided: Paris ICMP derives its checksum from the
    /// complement).
    pub marker: u16,
    /// Extra payload bytes per probe.
    pub payload_size: u16,
    /// IPv6 flow label of every probe (constant: it is part of the IPv6 flow identifier).
    pub flow_label: u32,
    /// TOS / traffic class of the probes.
    pub tos: u8,
    /// IPv4: set "don't fragment" on the probes (traceroute's `-F`; off by default, as in
    /// traceroute(8)).
    pub dont_fragment: bool,
    /// Scheduling (default concurrent).
    pub algorithm: Algorithm,
    /// First TTL (1).
    pub first_ttl: u8,
    /// Max TTL (30).
    pub max_ttl: u8,
    /// Probes per TTL (3).
    pub probes_per_hop: u8,
    /// Reply wait per probe (3 s).
    pub timeout: Duration,
    /// Gaps between probes of a TTL and between TTLs (0).
    pub inter_probe: Duration,
    /// See `inter_probe`.
    pub inter_hop: Duration,
    /// Stop after this many consecutive silent TTLs (5; 0: never).
    pub max_missing: u8,
    /// Probes of one trace awaiting a reply at once (16, like traceroute's `-N`; 0: all).
    pub max_in_flight: usize,
    /// Extra rounds for a TTL nobody answered (0).
    pub retries: u8,
    /// At most this many targets traced at once; the others wait their turn (1024; 0: all).
    pub parallel: usize,
}

impl Default for TracerouteConfig {
    fn default() -> Self {
        Self {
            protocol: Protocol::Udp,
            strategy: Strategy::Paris,
            port: None,
            sport: 0,
            marker: 0,
            payload_size: 0,
            flow_label: 0,
            tos: 0,
            dont_fragment: false,
            algorithm: Algorithm::Concurrent,
            first_ttl: 1,
            max_ttl: 30,
            probes_per_hop: 3,
            timeout: Duration::from_secs(3),
            inter_probe: Duration::ZERO,
            inter_hop: Duration::ZERO,
            max_missing: 5,
            max_in_flight: 16,
            retries: 0,
            parallel: 1024,
        }
    }
}

impl TracerouteConfig {
    /// The destination port probes use (UDP base port for classic UDP).
    pub fn dest_port(&self) -> u16 {
        self.port.unwrap_or(match self.protocol {
            Protocol::Tcp => 80,
            _ => 33434,
        })
    }

    /// How many consecutive source ports from `sport` the probes use: classic TCP gives each
    /// probe its own flow identifier through its source port (up to [`CLASSIC_TCP_PORTS`],
    /// then they repeat); every other combination uses `sport` alone.
    pub fn tcp_ports(&self) -> u16 {
        if (self.protocol, self.strategy) != (Protocol::Tcp, Strategy::Classic) {
            return 1;
        }
        let probes = self.trace_config().probes_per_trace().max(1);
        u16::try_from(probes.min(usize::from(CLASSIC_TCP_PORTS))).unwrap_or(CLASSIC_TCP_PORTS)
    }

    /// The source port of probe `n` (see [`tcp_ports`](Self::tcp_ports)).
    fn source_port(&self, n: u16) -> u16 {
        self.sport
            .wrapping_add(n.wrapping_sub(1) % self.tcp_ports())
    }

    /// The checksum of the echo reply to a Paris ICMP probe: the replier changes only the type
    /// (RFC 792: 8 to 0; RFC 4443: 128 to 129) and recomputes the checksum, so it differs from
    /// the probe's constant one by that type's weight in the one's-complement sum (RFC 1624).
    pub fn paris_reply_checksum(&self, v6: bool) -> u16 {
        let c = self.paris_checksum();
        if v6 {
            // The sum grows by 0x0100: the checksum (its complement) shrinks by it.
            ones_add(c, !0x0100)
        } else {
            // The sum shrinks by 0x0800: the checksum grows by it.
            ones_add(c, 0x0800)
        }
    }

    /// The ICMP checksum a Paris probe holds constant: derived from the marker, never 0.
    pub fn paris_checksum(&self) -> u16 {
        match !self.marker {
            0 | 0xffff => 0x5356,
            c => c,
        }
    }

    fn trace_config(&self) -> TraceConfig {
        TraceConfig {
            algorithm: self.algorithm,
            first_ttl: self.first_ttl,
            max_ttl: self.max_ttl,
            probes_per_hop: self.probes_per_hop,
            inter_probe: self.inter_probe,
            inter_hop: self.inter_hop,
            timeout: self.timeout,
            max_missing: self.max_missing,
            probe_remote: true,
            max_in_flight: self.max_in_flight,
            retries: self.retries,
            ..TraceConfig::default()
        }
    }
}

/// A finished traceroute to one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TracerouteResult {
    /// The target.
    pub destination: IpAddr,
    /// Destination port (UDP base port for classic UDP); absent for ICMP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The probes' source address.
    pub source: IpAddr,
    /// Source port (UDP, TCP; classic TCP: the port of probe 1, probe n uses port + (n - 1)
    /// modulo `source_port_count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<u16>,
    /// Classic TCP: how many consecutive source ports from `source_port` the probes use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port_count: Option<u16>,
    /// Probe protocol.
    pub protocol: Protocol,
    /// classic, paris or dublin.
    pub strategy: Strategy,
    /// 4 or 6.
    pub ip_version: u8,
    /// Scheduling.
    pub algorithm: Algorithm,
    /// First probe (RFC 3339).
    pub start: String,
    /// Finish (RFC 3339).
    pub end: String,
    /// Why it stopped (`remote-reached`: the destination answered).
    pub stop_reason: StopReason,
    /// One entry per TTL, same shape as the flow tracer's.
    pub hops: Vec<Hop>,
    /// Probes sent.
    pub probes_sent: u32,
    /// Replies matched.
    pub replies: u32,
}

impl TracerouteResult {
    /// The trace as a path graph: a chain for Paris and Dublin (one flow identifier); nodes
    /// without links for classic (a flow identifier per probe).
    pub fn graph(&self) -> crate::PathGraph {
        match self.strategy {
            Strategy::Classic => crate::PathGraph::from_probes(&self.hops),
            _ => crate::PathGraph::from_flow(&self.hops),
        }
    }
}

/// Something the traceroute engine reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TracerouteEvent {
    /// Tracing of a target began (its first probe is due): the header of a streamed trace.
    Started {
        /// The target.
        target: IpAddr,
        /// The probes' source address.
        source: IpAddr,
    },
    /// A TTL of a target is complete (streamed in TTL order while the trace goes on).
    Hop {
        /// The target.
        target: IpAddr,
        /// The hop.
        hop: Hop,
    },
    /// A target's trace is complete.
    Finished(Box<TracerouteResult>),
}

/// Why a target cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// Already being traced.
    #[error("{0} is already being traced")]
    Duplicate(IpAddr),
    /// Source and destination families differ.
    #[error("source {src} and destination {dst} are not the same IP version")]
    Family {
        /// source
        src: IpAddr,
        /// destination
        dst: IpAddr,
    },
}

#[derive(Debug)]
struct Target {
    src: IpAddr,
    trace: Trace,
}

/// The traceroute engine. Same contract as [`crate::Engine`]: inputs `handle_packet` and
/// `handle_timeout`; outputs `poll_transmit`, `poll_event`, `poll_timeout`; time is monotonic.
#[derive(Debug)]
pub struct Traceroute {
    cfg: TracerouteConfig,
    trace_cfg: TraceConfig,
    targets: HashMap<IpAddr, Target>,
    /// Targets added beyond `parallel`, with their source, in order.
    waiting: TargetQueue,
    events: VecDeque<TracerouteEvent>,
    /// Targets by the next instant they need attention (an overdue reply, a probe to send),
    /// and those with a probe due: every call costs what is due, not a scan of all targets, so
    /// thousands of targets under a rate limit (a loop turn per few probes) stay cheap.
    scheduler: Scheduler<IpAddr>,
    scratch: Vec<u8>,
    /// Replies matched to a probe (see [`crate::Machine::replies_matched`]).
    replies_matched: u64,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// IP header length of our own probes (no options, no extension headers).
fn ip_header_len(v6: bool) -> usize {
    if v6 {
        40
    } else {
        20
    }
}

impl Traceroute {
    /// A new engine.
    pub fn new(cfg: TracerouteConfig) -> Result<Self, ConfigError> {
        let trace_cfg = cfg.trace_config();
        trace_cfg.validate()?;
        // Probe numbers are 16 bits, 0 excepted, and a TCP reply acknowledges n + 1 in the low
        // half of the sequence number, so n stays below 0xffff.
        let probes = trace_cfg.probes_per_trace();
        if probes >= usize::from(u16::MAX) {
            return Err(ConfigError::TooManyProbes {
                probes,
                max: usize::from(u16::MAX) - 1,
            });
        }
        Ok(Self {
            cfg,
            trace_cfg,
            targets: HashMap::new(),
            waiting: TargetQueue::default(),
            events: VecDeque::new(),
            scheduler: Scheduler::default(),
            scratch: Vec::new(),
            replies_matched: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TracerouteConfig {
        &self.cfg
    }

    /// Adds `dst`, traced from source address `src`: at once, or once fewer than `parallel`
    /// traces are in progress (targets start in the order they were added).
    pub fn add_target(
        &mut self,
        now: Instant,
        dst: IpAddr,
        src: IpAddr,
    ) -> Result<(), TargetError> {
        let active = self.targets.contains_key(&dst);
        self.waiting.push(dst, src, active)?;
        self.start_waiting(now);
        Ok(())
    }

    /// Starts waiting targets while fewer than `parallel` traces are in progress.
    fn start_waiting(&mut self, now: Instant) {
        while let Some((dst, src)) = self.waiting.next(self.targets.len(), self.cfg.parallel) {
            self.start(now, dst, src);
        }
    }

    fn start(&mut self, now: Instant, dst: IpAddr, src: IpAddr) {
        let key = FlowKey {
            protocol: self.cfg.protocol,
            local: SocketAddr::new(src, self.cfg.sport),
            remote: SocketAddr::new(dst, self.cfg.dest_port()),
        };
        // Probe numbers start at 1: 0 would be an IPv4 ID Linux rewrites, a UDP checksum
        // meaning "none", and an empty Dublin payload.
        let trace = Trace::new(key, &self.trace_cfg, None, 1, 1, now);
        self.targets.insert(dst, Target { src, trace });
        self.events.push_back(TracerouteEvent::Started {
            target: dst,
            source: src,
        });
        self.schedule(dst, now);
    }

    /// Number of traces in progress.
    pub fn active(&self) -> usize {
        self.targets.len()
    }

    /// Number of targets added but not started yet (`parallel` traces are in progress).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Starts no more targets: those not started yet are dropped; traces in progress go on.
    pub fn stop_starting(&mut self, _now: Now) {
        self.waiting.close();
    }

    /// Whether every trace is over and no target is waiting.
    pub fn is_done(&self) -> bool {
        self.targets.is_empty() && self.waiting.is_empty()
    }

    /// Replies matched to a probe so far (see [`crate::Machine::replies_matched`]).
    pub fn replies_matched(&self) -> Option<u64> {
        Some(self.replies_matched)
    }

    /// Stops every trace now, results coming out as `interrupted` (with what was found), and
    /// starts no more.
    pub fn interrupt(&mut self, now: Now) {
        self.stop_starting(now);
        let all: Vec<IpAddr> = self.targets.keys().copied().collect();
        for dst in all {
            self.cancel(now, dst);
        }
    }

    /// Stops one trace now.
    pub fn cancel(&mut self, now: Now, dst: IpAddr) {
        if let Some(t) = self.targets.get_mut(&dst) {
            t.trace.halt(StopReason::Interrupted);
        }
        self.touch(dst, now.mono, now.wall);
    }

    /// The probes' IP protocol / next header: ICMPv6 is 58, not ICMP's 1 (RFC 4443).
    fn wire_protocol(&self, v6: bool) -> u8 {
        match (self.cfg.protocol, v6) {
            (Protocol::Icmp, true) => 58,
            (p, _) => p.number(),
        }
    }

    /// Payload length of probe `n` (Dublin over IPv6 carries `n` in the payload length).
    fn payload_len(&self, v6: bool, n: u16) -> usize {
        let base = usize::from(self.cfg.payload_size);
        match (self.cfg.strategy, self.cfg.protocol) {
            // Two bytes that set the checksum (Paris) or carry n (Dublin), plus two that
            // keep the ICMP checksum constant (Dublin).
            (Strategy::Paris, Protocol::Udp) => base.max(2),
            (Strategy::Dublin, Protocol::Icmp) => base.max(4) + if v6 { usize::from(n) } else { 0 },
            // TCP carries n in its sequence number in every strategy; data in a SYN would also
            // be acknowledged by a closed port's RST (RFC 9293 §3.10.7.1), hiding n.
            (Strategy::Dublin, Protocol::Udp) if v6 => base + usize::from(n),
            _ => base,
        }
    }

    /// Writes probe number `n` with TTL `ttl` from `src` to `dst` into `buf`.
    fn build(&self, src: IpAddr, dst: IpAddr, ttl: u8, n: u16, buf: &mut Vec<u8>) -> ProbeShape {
        let c = &self.cfg;
        let v6 = dst.is_ipv6();
        let payload = vec![0u8; self.payload_len(v6, n)];
        let dport = c.dest_port();
        // Dublin: the IPv4 identification is the probe number; otherwise n too (it is free).
        let ident = n;
        let tcp_seq = (u32::from(c.marker) << 16) | u32::from(n);
        let v4f = |src, dst| Ipv4Fields {
            src,
            dst,
            ttl,
            tos: c.tos,
            dont_fragment: c.dont_fragment,
            ident,
        };
        let v6f = |src, dst| Ipv6Fields {
            src,
            dst,
            hop_limit: ttl,
            traffic_class: c.tos,
            flow_label: c.flow_label,
        };
        let tcp = TcpFields {
            src_port: c.source_port(n),
            dst_port: dport,
            seq: tcp_seq,
            ack: 0,
            flags: 0x02, // SYN, like traceroute -T: answered by SYN-ACK or RST at the destination
            window: 64240,
        };
        let udp = UdpFields {
            src_port: c.sport,
            dst_port: if c.strategy == Strategy::Classic {
                dport.wrapping_add(n - 1)
            } else {
                dport
            },
        };
        let (echo_ident, echo_seq) = match c.strategy {
            Strategy::Classic | Strategy::Paris => (c.marker, n),
            Strategy::Dublin => (c.marker, c.marker),
        };
        let echo = EchoFields {
            ident: if c.strategy == Strategy::Paris {
                0
            } else {
                echo_ident
            },
            seq: echo_seq,
        };
        let ip = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => IpFields::V4(v4f(s, d)),
            (IpAddr::V6(s), IpAddr::V6(d)) => IpFields::V6(v6f(s, d)),
            // add_target refuses mixed families.
            _ => {
                return ProbeShape {
                    ip_len: 0,
                    tcp_seq: None,
                }
            }
        };
        let transport = match c.protocol {
            Protocol::Tcp => TransportFields::Tcp(tcp),
            Protocol::Udp => TransportFields::Udp(udp),
            Protocol::Icmp => TransportFields::Echo(echo),
        };
        let len = emit(&ip, &transport, &payload, buf);
        let h = ip_header_len(v6);
        match (c.protocol, c.strategy) {
            // Paris UDP: the checksum is the probe number, set by the first two payload bytes.
            (Protocol::Udp, Strategy::Paris) => force_checksum(buf, h + 6, h + 8, n),
            // Paris ICMP: constant checksum; the identifier compensates for the sequence.
            (Protocol::Icmp, Strategy::Paris) => {
                force_checksum(buf, h + 2, h + 4, c.paris_checksum())
            }
            // Dublin ICMP: n in the payload (echoed back by the destination), the next two
            // bytes keep the checksum constant.
            (Protocol::Icmp, Strategy::Dublin) => {
                buf[h + 8..h + 10].copy_from_slice(&n.to_be_bytes());
                // The checksum field still describes the data without n: add n to its sum.
                let c0 = be16(buf, h + 2).unwrap_or(0);
                buf[h + 2..h + 4].copy_from_slice(&(!ones_add(!c0, n)).to_be_bytes());
                force_checksum(buf, h + 2, h + 10, c.paris_checksum());
            }
            _ => {}
        }
        ProbeShape {
            ip_len: len.min(usize::from(u16::MAX)) as u16,
            tcp_seq: (c.protocol == Protocol::Tcp).then_some(tcp_seq),
        }
    }

    /// Recovers the probe number from a probe's fields (its own capture, or the quote in an
    /// ICMP error): `ident` and `length` are the IPv4 identification / total length or the
    /// IPv6 payload length, `t` the transport bytes. Checks the process marker.
    fn probe_number(&self, v6: bool, ident: u16, length: u16, t: &[u8]) -> Option<u16> {
        let c = &self.cfg;
        let base = c.dest_port();
        let n = match c.protocol {
            Protocol::Udp => {
                let (sport, dport) = (be16(t, 0)?, be16(t, 2)?);
                if sport != c.sport {
                    return None;
                }
                match c.strategy {
                    Strategy::Classic => dport.checked_sub(base)?.checked_add(1)?,
                    Strategy::Paris => (dport == base).then(|| be16(t, 6)).flatten()?,
                    Strategy::Dublin if dport != base => return None,
                    Strategy::Dublin if v6 => length.checked_sub(8 + c.payload_size)?,
                    Strategy::Dublin => ident,
                }
            }
            Protocol::Tcp => {
                let (sport, dport, seq) = (be16(t, 0)?, be16(t, 2)?, be32(t, 4)?);
                if dport != base || (seq >> 16) as u16 != c.marker {
                    return None;
                }
                let n = (seq & 0xffff) as u16;
                if n == 0 || sport != c.source_port(n) {
                    return None;
                }
                n
            }
            Protocol::Icmp => {
                let (csum, eident, eseq) = (be16(t, 2)?, be16(t, 4)?, be16(t, 6)?);
                match c.strategy {
                    Strategy::Classic => (eident == c.marker).then_some(eseq)?,
                    Strategy::Paris => (csum == c.paris_checksum()).then_some(eseq)?,
                    Strategy::Dublin if eident != c.marker || eseq != c.marker => return None,
                    Strategy::Dublin if v6 => length.checked_sub(8 + c.payload_size.max(4))?,
                    Strategy::Dublin => ident,
                }
            }
        };
        (n != 0).then_some(n)
    }

    /// Handles one captured IP packet (our probes leaving, and replies).
    pub fn handle_packet(&mut self, now: Instant, ts: SystemTime, bytes: &[u8]) {
        let Ok(pkt) = parse_ip(bytes) else { return };
        let v6 = pkt.ip.src.is_ipv6();
        // Our own probe leaving: its kernel timestamp is the send time.
        if let Some(target) = self.targets.get(&pkt.ip.dst) {
            if target.src == pkt.ip.src && pkt.ip.protocol == self.wire_protocol(v6) {
                let h = ip_header_len(v6);
                let length = be16(bytes, if v6 { 4 } else { 2 }).unwrap_or(0);
                let is_request = match pkt.transport {
                    Transport::Icmp(IcmpMessage::EchoRequest { .. }) => true,
                    Transport::Icmp(_) => false,
                    _ => true,
                };
                if is_request {
                    if let Some(n) = self.probe_number(
                        v6,
                        pkt.ip.ident,
                        length,
                        bytes.get(h..).unwrap_or_default(),
                    ) {
                        let seq = match pkt.transport {
                            Transport::Tcp(t) => Some(t.seq),
                            _ => None,
                        };
                        let len = (bytes.len().min(usize::from(u16::MAX))) as u16;
                        let dst = pkt.ip.dst;
                        if let Some(t) = self.targets.get_mut(&dst) {
                            t.trace.capture_of_probe(n, pkt.ip.ttl, len, seq, ts);
                        }
                        return;
                    }
                }
            }
        }
        let (dst, n, reply) = match &pkt.transport {
            Transport::Icmp(IcmpMessage::Error(err)) => {
                let q = &err.quote;
                let Some(target) = self.targets.get(&q.dst) else {
                    return;
                };
                if target.src != q.src || q.protocol != self.wire_protocol(v6) {
                    return;
                }
                let Some(n) = self.probe_number(v6, q.ident, q.length, q.transport) else {
                    return;
                };
                (
                    q.dst,
                    n,
                    ReplyInfo::from_icmp_error(pkt.ip.src, pkt.ip.ttl, err),
                )
            }
            Transport::Icmp(IcmpMessage::EchoReply { ident, seq })
                if self.cfg.protocol == Protocol::Icmp =>
            {
                let Some(target) = self.targets.get(&pkt.ip.src) else {
                    return;
                };
                if target.src != pkt.ip.dst {
                    return;
                }
                let n = match self.cfg.strategy {
                    Strategy::Classic if *ident == self.cfg.marker => *seq,
                    // The identifier was computed for this sequence: rebuild the probe to check.
                    Strategy::Paris => {
                        let mut scratch = std::mem::take(&mut self.scratch);
                        self.build(target.src, pkt.ip.src, 1, *seq, &mut scratch);
                        let h = ip_header_len(v6);
                        let ok = be16(&scratch, h + 4) == Some(*ident);
                        self.scratch = scratch;
                        if !ok {
                            return;
                        }
                        *seq
                    }
                    Strategy::Dublin if *ident == self.cfg.marker && *seq == self.cfg.marker => {
                        // The destination echoes the payload, whose first two bytes are n.
                        let h = if v6 {
                            40
                        } else {
                            usize::from(bytes[0] & 0x0f) * 4
                        };
                        let Some(n) = be16(bytes, h + 8) else { return };
                        n
                    }
                    _ => return,
                };
                let reply = ReplyInfo {
                    from: pkt.ip.src,
                    reply_ttl: pkt.ip.ttl,
                    icmp_type: Some(if v6 { 129 } else { 0 }),
                    icmp_code: Some(0),
                    quoted_ttl: None,
                    tcp_flags: None,
                    unreachable: false,
                    mpls: &[],
                    interfaces: &[],
                    mtu: 0,
                };
                (pkt.ip.src, n, reply)
            }
            Transport::Tcp(t) if self.cfg.protocol == Protocol::Tcp => {
                // SYN-ACK or RST from the destination acknowledges seq + 1 (RFC 9293 §3.5).
                let Some(target) = self.targets.get(&pkt.ip.src) else {
                    return;
                };
                if target.src != pkt.ip.dst
                    || t.src_port != self.cfg.dest_port()
                    || t.flags & 0x14 == 0
                {
                    return;
                }
                let seq = t.ack.wrapping_sub(1);
                if (seq >> 16) as u16 != self.cfg.marker {
                    return;
                }
                let n = (seq & 0xffff) as u16;
                let reply = ReplyInfo {
                    from: pkt.ip.src,
                    reply_ttl: pkt.ip.ttl,
                    icmp_type: None,
                    icmp_code: None,
                    quoted_ttl: None,
                    tcp_flags: Some(t.flags),
                    unreachable: false,
                    mpls: &[],
                    interfaces: &[],
                    mtu: 0,
                };
                (pkt.ip.src, n, reply)
            }
            _ => return,
        };
        let Some(target) = self.targets.get_mut(&dst) else {
            return;
        };
        if target.trace.handle_reply(now, ts, n, |_| true, reply) == ReplyOutcome::Matched {
            self.replies_matched += 1;
            self.touch(dst, now, ts);
        }
    }

    fn stream_hops(&mut self, dst: IpAddr) {
        if let Some(t) = self.targets.get_mut(&dst) {
            for hop in t.trace.take_new_hops() {
                self.events
                    .push_back(TracerouteEvent::Hop { target: dst, hop });
            }
        }
    }

    /// After anything happened to a target: stream its new hops, report it if its trace is
    /// over, else queue it if a probe is due and file it under its next deadline.
    fn touch(&mut self, dst: IpAddr, now: Instant, wall: SystemTime) {
        self.stream_hops(dst);
        if self.finish_if_done(dst, wall) {
            self.start_waiting(now);
        } else {
            self.schedule(dst, now);
        }
    }

    fn schedule(&mut self, dst: IpAddr, now: Instant) {
        let Some(t) = self.targets.get(&dst) else {
            return;
        };
        if t.trace.due(now).is_some() {
            self.scheduler.enqueue(dst);
        }
        self.rearm(dst);
    }

    /// Files the target under its next deadline (a reply overdue; a probe to send, unless it is
    /// queued already), unless it is filed no later: a target filed too early is looked at and
    /// filed again, which is cheaper than moving it on every reply.
    fn rearm(&mut self, dst: IpAddr) {
        let Some(t) = self.targets.get(&dst) else {
            return;
        };
        let send = t
            .trace
            .send_at()
            .filter(|_| !self.scheduler.is_queued(&dst));
        let next = match (t.trace.earliest_deadline(), send) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(n) => n,
                None => return,
            },
        };
        self.scheduler.arm(dst, next);
    }

    /// Reports the target's trace if it is over; true if it was.
    fn finish_if_done(&mut self, dst: IpAddr, wall: SystemTime) -> bool {
        if !self
            .targets
            .get(&dst)
            .is_some_and(|t| t.trace.is_finished())
        {
            return false;
        }
        if let Some(t) = self.targets.remove(&dst) {
            self.scheduler.remove(&dst);
            let r = t.trace.finish(wall);
            self.events
                .push_back(TracerouteEvent::Finished(Box::new(TracerouteResult {
                    destination: dst,
                    port: (self.cfg.protocol != Protocol::Icmp).then(|| self.cfg.dest_port()),
                    source: t.src,
                    source_port: (self.cfg.protocol != Protocol::Icmp).then_some(self.cfg.sport),
                    source_port_count: (self.cfg.tcp_ports() > 1).then(|| self.cfg.tcp_ports()),
                    protocol: self.cfg.protocol,
                    strategy: self.cfg.strategy,
                    ip_version: if dst.is_ipv4() { 4 } else { 6 },
                    algorithm: r.algorithm,
                    start: r.start,
                    end: r.end,
                    stop_reason: r.stop_reason,
                    hops: r.hops,
                    probes_sent: r.probes_sent,
                    replies: r.replies,
                })));
        }
        true
    }

    /// Expires overdue probes and queues probes whose time has come.
    pub fn handle_timeout(&mut self, now: Now) {
        // Take every target due first: one filed again at `now` waits for the next call.
        for dst in self.scheduler.take_due(now.mono) {
            let Some(t) = self.targets.get_mut(&dst) else {
                continue;
            };
            t.trace.handle_timeout(now.mono);
            self.touch(dst, now.mono, now.wall);
        }
        self.start_waiting(now.mono);
    }

    /// The next probe to send, into `buf`. Call until `None`.
    pub fn poll_transmit(&mut self, now: Now, buf: &mut Vec<u8>) -> Option<Transmit> {
        while let Some(dst) = self.scheduler.dequeue() {
            let Some(t) = self.targets.get_mut(&dst) else {
                continue;
            };
            let Some(due) = t.trace.due(now.mono) else {
                self.rearm(dst);
                continue;
            };
            let src = t.src;
            let shape = self.build(src, dst, due.ttl, due.ident, buf);
            let Some(t) = self.targets.get_mut(&dst) else {
                continue;
            };
            t.trace.mark_sent(due, shape, now.mono, now.wall);
            // Round robin: a target with more probes due goes to the back of the queue.
            self.touch(dst, now.mono, now.wall);
            let c = &self.cfg;
            let dport = match (c.protocol, c.strategy) {
                (Protocol::Udp, Strategy::Classic) => c.dest_port().wrapping_add(due.ident - 1),
                _ => c.dest_port(),
            };
            return Some(Transmit {
                dst,
                len: buf.len(),
                flow: FlowKey {
                    protocol: c.protocol,
                    local: SocketAddr::new(src, c.source_port(due.ident)),
                    remote: SocketAddr::new(dst, dport),
                },
                ttl: due.ttl,
                ident: due.ident,
            });
        }
        None
    }

    /// Whether probes are due now (queued for [`poll_transmit`](Self::poll_transmit)): a
    /// rate-limited driver that stopped calling it early wakes for its next token, not only
    /// at [`poll_timeout`](Self::poll_timeout).
    pub fn has_pending_transmit(&self) -> bool {
        self.scheduler.has_queued()
    }

    /// The driver could not send the probe `tx`.
    pub fn handle_send_error(&mut self, now: Now, tx: &Transmit, error: String) {
        if let Some(t) = self.targets.get_mut(&tx.dst) {
            t.trace.send_failed(tx.ident, error, now.mono);
        }
        self.touch(tx.dst, now.mono, now.wall);
    }

    /// When to call `handle_timeout` next. (Probes already due are queued: see
    /// [`has_pending_transmit`](Self::has_pending_transmit).)
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.scheduler.next_deadline()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<TracerouteEvent> {
        self.events.pop_front()
    }
}

crate::machine::machine_by_inherent_methods!(Traceroute, TracerouteEvent);

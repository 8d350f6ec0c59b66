//! The reverse-traceroute server's engine.
//!
//! For each admitted request (an echo request of code 1 addressed to this host) it opens a
//! session keyed by the probe's destination and identifier, sends one probe with the requested
//! TTL toward the requester (reference §1.6: source port 1021, the flow value in the UDP/TCP
//! destination port or the ICMP checksum, the identifier where routers quote it back), and
//! answers the requester once a router or the requester itself answers the probe (§1.7), with
//! the hop's address and the server-to-hop round-trip time. A session no answer closes within
//! the timeout ends silently, as the reference's does: the client has its own timeout.
//!
//! Every request is first checked, in this order: addressed to one of our addresses, from an
//! allowlisted source, well formed, padded if padding is required, within its source's and
//! the global rate, with room in the session table. Only a request that passes gets anything
//! back; an error response (state 1, 2 or 4) counts against the rates like a probe, so that a
//! spoofed flood of bad requests reflects no more than a flood of good ones.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use serde::Serialize;
use svctr_wire::icmp::{ErrorKind, IcmpMessage};
use svctr_wire::packet::{parse_ip, Transport};
use svctr_wire::probe::{
    emit, emit_icmp_message, emit_tcp_v4_with_options, emit_tcp_v6_with_options, force_checksum,
    IpFields, Ipv4Fields, Ipv6Fields, TransportFields,
};
use svctr_wire::revtr::{
    self, Family, ParseError, Request, Response, ResponseBody, State, TcpProbe,
};

use super::limit::{allowed, Limited, Limits, Rate};
use crate::machine::{Now, Transmit};
use crate::scheduler::Scheduler;
use crate::{FlowKey, Protocol};

/// The server's settings. The defaults are the reference's (`-n 5000`, `-t 5`) plus limits a
/// public server can run with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Sessions open at once at most (reference `-n`, 5,000): a request that finds the table
    /// full is dropped.
    pub max_sessions: usize,
    /// How long a session waits for an answer to its probe (reference `-t`, 5 s).
    pub timeout: Duration,
    /// Requests admitted per source (IPv6: per /64): 200 per second, bursts of 1,000. A
    /// reverse trace is about 40 requests, a multipath one a few hundred, and a user runs
    /// several in a row; a spoofed source gets no more than this aimed at it.
    pub source_rate: Rate,
    /// Requests admitted from all sources together: 10,000 per second, bursts of 2,000.
    pub global_rate: Rate,
    /// Sources whose rate is tracked at most (65,536); idle ones are forgotten first, and a
    /// new source that finds the table full of busy ones is refused.
    pub max_sources: usize,
    /// Sources served (empty: every source). Others are dropped silently, as the reference
    /// does.
    pub allow: Vec<IpNet>,
    /// Whether the indirect-target extension (reference `--indirect`, §1.3) is honoured:
    /// off by default, and then only for sources in `allow_indirect`.
    pub indirect: bool,
    /// Sources that may name another target.
    pub allow_indirect: Vec<IpNet>,
    /// Whether the experimental flow-probe object ([`revtr::FlowProbe`], `flow --reverse`) is
    /// honoured (on; off: refused with state 4, as the reference's `indirect_multipart`
    /// refuses objects it does not know; its `main` ignores them).
    pub flow_probes: bool,
    /// Answer only requests whose IP datagram is at least as long as everything sent because
    /// of it (the probe and the response): a spoofed request then reflects no more bytes than
    /// it cost (the reference sends about 3×; its PR #18 plans the same rule).
    pub require_padding: bool,
    /// The addresses requests must be sent to (empty: any); probes and responses come from
    /// the address the request was sent to.
    pub addresses: Vec<IpAddr>,
    /// Seed of the probes' random payload bytes (the driver gives a random one).
    pub seed: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_sessions: 5000,
            timeout: Duration::from_secs(5),
            source_rate: Rate::new(200.0, 1000.0),
            global_rate: Rate::new(10_000.0, 2000.0),
            max_sources: 65_536,
            allow: Vec::new(),
            indirect: false,
            allow_indirect: Vec::new(),
            flow_probes: true,
            require_padding: false,
            addresses: Vec::new(),
            seed: 0x5eed_1021,
        }
    }
}

/// What happened to a session (one request).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum SessionEvent {
    /// A probe went out.
    Created {
        /// Where the probe goes (the requester, or an allowed indirect target).
        target: IpAddr,
        /// The probe's protocol.
        protocol: Protocol,
        /// The flow value (destination port, ICMP checksum).
        flow: u16,
        /// The probe's TTL.
        ttl: u8,
    },
    /// The probe was answered and the requester told who answered.
    Answered {
        /// The hop that answered (a router's ICMP error, or the target itself).
        hop: IpAddr,
        /// Server-to-hop round-trip time.
        rtt_ms: f64,
    },
    /// Nothing answered the probe within the timeout.
    TimedOut,
    /// An error response was sent (state 1: TTL 0, the client's presence check; 2: unknown
    /// protocol; 4: an extension refused).
    Error {
        /// The state sent.
        state: u8,
    },
}

/// One line of the server's log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerEvent {
    /// When it happened (RFC 3339).
    pub at: String,
    /// The requester.
    pub client: IpAddr,
    /// The request's identifier.
    pub id: u16,
    /// What happened.
    #[serde(flatten)]
    pub event: SessionEvent,
}

/// Requests dropped without an answer, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RefusedCounts {
    /// Source not in the allowlist.
    pub not_allowed: u64,
    /// Not a well-formed request (shorter than 12 bytes of ICMP).
    pub malformed: u64,
    /// Shorter than what answering it would send, with padding required.
    pub not_padded: u64,
    /// Its source's rate was spent.
    pub source_rate: u64,
    /// The global rate was spent.
    pub global_rate: u64,
    /// The table of sources was full of busy sources.
    pub sources_full: u64,
    /// A session with the same requester and identifier was open (the reference's rule).
    pub session_exists: u64,
    /// The session table was full.
    pub sessions_full: u64,
}

/// Counters since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServerStats {
    /// Requests seen (addressed to us).
    pub requests: u64,
    /// Sessions opened (probes queued).
    pub sessions: u64,
    /// Sessions answered.
    pub answered: u64,
    /// Sessions that timed out.
    pub timed_out: u64,
    /// Error responses.
    pub errors: u64,
    /// Requests dropped, by reason.
    pub refused: RefusedCounts,
    /// Answers to probes that matched no open session (late, or not ours).
    pub unmatched_answers: u64,
    /// Packets sent (probes and responses) and their bytes (IP datagrams).
    pub packets_out: u64,
    /// See `packets_out`.
    pub bytes_out: u64,
    /// Bytes of the requests answered or probed for (IP datagrams).
    pub bytes_in: u64,
    /// Sessions open now.
    pub open: u64,
    /// Most sessions open at once.
    pub open_max: u64,
}

/// A session: a probe out, waiting for its answer. Keyed by (probe destination, identifier).
#[derive(Debug, Clone)]
struct Session {
    client: IpAddr,
    client_id: u16,
    seq: u16,
    server: IpAddr,
    /// When the probe was queued and when its capture saw it leave (kernel time).
    sent_wall: SystemTime,
    captured_wall: Option<SystemTime>,
    /// A flow-shaped probe's entry in [`ReverseServer::flow_probes`].
    flow: Option<FlowTag>,
}

/// How a flow-shaped probe ([`revtr::FlowProbe`]) is told apart: its destination, its ports
/// and IP protocol, and its tag (TCP sequence number, UDP checksum).
type FlowTag = (IpAddr, u16, u16, u8, u32);

type Key = (IpAddr, u16);

/// A packet to send.
#[derive(Debug)]
struct Out {
    dst: IpAddr,
    bytes: Vec<u8>,
    flow: FlowKey,
    ttl: u8,
    ident: u16,
}

/// Packets queued to send at most: admission is rate-limited, so this only bounds a driver
/// that stopped sending.
const MAX_QUEUED: usize = 65_536;

/// The server's engine (see the module doc). Its contract is [`crate::Machine`]'s; it never
/// ends by itself.
#[derive(Debug)]
pub struct ReverseServer {
    cfg: ServerConfig,
    limits: Option<Limits>,
    sessions: HashMap<Key, Session>,
    /// The sessions of flow-shaped probes, by what their probes carry (their ports are the
    /// flow's, not 1021, so the identifier is not where ordinary probes carry it).
    flow_probes: HashMap<FlowTag, Key>,
    scheduler: Scheduler<Key>,
    out: VecDeque<Out>,
    events: VecDeque<ServerEvent>,
    stats: ServerStats,
    rng: u64,
    next_indirect_id: u16,
    stopped: bool,
}

/// splitmix64: the probes' payload bytes (unpredictable to clients given a random seed).
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn svctr_be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

impl ReverseServer {
    /// A server with `cfg`.
    pub fn new(cfg: ServerConfig) -> Self {
        let rng = cfg.seed;
        Self {
            cfg,
            limits: None,
            sessions: HashMap::new(),
            flow_probes: HashMap::new(),
            scheduler: Scheduler::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: ServerStats::default(),
            rng,
            next_indirect_id: 1,
            stopped: false,
        }
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Counters since the start.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Sources whose rate is tracked now.
    pub fn tracked_sources(&self) -> usize {
        self.limits.as_ref().map_or(0, Limits::tracked)
    }

    fn limits(&mut self, now: Instant) -> &mut Limits {
        let cfg = &self.cfg;
        self.limits.get_or_insert_with(|| {
            Limits::new(cfg.source_rate, cfg.global_rate, cfg.max_sources, now)
        })
    }

    /// A captured IP packet: a request, an answer to one of our probes, our own probe leaving
    /// (its kernel timestamp), or anything else (ignored).
    pub fn handle_packet(&mut self, now: Instant, ts: SystemTime, bytes: &[u8]) {
        let Ok(pkt) = parse_ip(bytes) else { return };
        if pkt.ip.is_fragment {
            return;
        }
        let h = match bytes[0] >> 4 {
            4 => usize::from(bytes[0] & 0x0f) * 4,
            _ => 40,
        };
        match &pkt.transport {
            Transport::Icmp(IcmpMessage::EchoRequest { .. }) => {
                let Some(body) = bytes.get(h..) else { return };
                if body.get(1) == Some(&revtr::REQUEST_CODE) {
                    let ip_len = match pkt.ip.src {
                        IpAddr::V4(_) => usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
                        IpAddr::V6(_) => 40 + usize::from(u16::from_be_bytes([bytes[4], bytes[5]])),
                    };
                    self.request(now, ts, &pkt.ip, body, ip_len.min(bytes.len()));
                } else {
                    // Our own ICMP probe leaving (code 0, sequence 0xFFFF).
                    self.own_probe(ts, pkt.ip.src, pkt.ip.dst, pkt.ip.protocol, body);
                }
            }
            Transport::Icmp(IcmpMessage::Error(err)) => {
                if !matches!(
                    err.kind,
                    ErrorKind::TimeExceeded | ErrorKind::DestinationUnreachable
                ) {
                    return;
                }
                let q = &err.quote;
                if let Some(id) = revtr::quoted_identifier(q.protocol, q.transport) {
                    self.answer(ts, (q.dst, id), Some(q.src), pkt.ip.src);
                } else if let Some(key) = self.flow_session(q.dst, q.protocol, q.transport) {
                    self.answer(ts, key, Some(q.src), pkt.ip.src);
                }
            }
            Transport::Icmp(IcmpMessage::EchoReply { .. }) => {
                // A direct answer: the target's echo reply (code 0) to an ICMP probe.
                let t = bytes.get(h..).unwrap_or_default();
                if let Some(id) = revtr::answer_identifier(pkt.ip.protocol, t, TcpProbe::Syn) {
                    self.answer(ts, (pkt.ip.src, id), Some(pkt.ip.dst), pkt.ip.src);
                }
            }
            Transport::Tcp(t) => {
                if t.src_port == revtr::PROBE_PORT {
                    // Our own TCP probe leaving.
                    let t = bytes.get(h..).unwrap_or_default();
                    self.own_probe(ts, pkt.ip.src, pkt.ip.dst, 6, t);
                } else if let Some(id) =
                    revtr::answer_identifier(6, bytes.get(h..).unwrap_or_default(), TcpProbe::Syn)
                {
                    // SYN-ACK or RST from the target: it acknowledges seq + 1.
                    self.answer(ts, (pkt.ip.src, id), Some(pkt.ip.dst), pkt.ip.src);
                }
            }
            Transport::Udp(u) if u.src_port == revtr::PROBE_PORT => {
                let t = bytes.get(h..).unwrap_or_default();
                self.own_probe(ts, pkt.ip.src, pkt.ip.dst, 17, t);
            }
            _ => {}
        }
    }

    /// The session of a flow-shaped probe to `dst` (IP protocol `proto`, its transport
    /// header as sent or quoted).
    fn flow_session(&self, dst: IpAddr, proto: u8, t: &[u8]) -> Option<Key> {
        if self.flow_probes.is_empty() {
            return None;
        }
        let tag = revtr::FlowProbe::tag(proto, t)?;
        let (sport, dport) = (svctr_be16(t, 0)?, svctr_be16(t, 2)?);
        self.flow_probes
            .get(&(dst, sport, dport, proto, tag))
            .copied()
    }

    fn is_ours(&self, a: IpAddr) -> bool {
        self.cfg.addresses.is_empty() || self.cfg.addresses.contains(&a)
    }

    /// The capture saw one of our probes leave (IP protocol `proto`, its transport bytes):
    /// its kernel timestamp is the RTT's start.
    fn own_probe(&mut self, ts: SystemTime, src: IpAddr, dst: IpAddr, proto: u8, t: &[u8]) {
        let Some(id) = revtr::quoted_identifier(proto, t) else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(&(dst, id)) {
            if s.server == src && s.captured_wall.is_none() {
                s.captured_wall = Some(ts);
            }
        }
    }

    fn request(
        &mut self,
        now: Instant,
        ts: SystemTime,
        ip: &svctr_wire::packet::IpInfo,
        icmp: &[u8],
        ip_len: usize,
    ) {
        if !self.is_ours(ip.dst) || self.stopped {
            return;
        }
        self.stats.requests += 1;
        let (client, server) = (ip.src, ip.dst);
        let family = if client.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        };
        if !self.cfg.allow.is_empty() && !allowed(&self.cfg.allow, client) {
            self.stats.refused.not_allowed += 1;
            return;
        }
        // A request whose extension is broken still has its identifier: it gets state 4
        // with the rejected object's class and c-type (reference §1.3).
        let parsed = Request::parse(family, icmp);
        let (ident, seq) = match (icmp.get(4..8), &parsed) {
            (
                Some(b),
                Ok(_) | Err(ParseError::Object { .. } | ParseError::ExtensionChecksum { .. }),
            )
            | (Some(b), Err(ParseError::Truncated { need: 20.., .. })) => (
                u16::from_be_bytes([b[0], b[1]]),
                u16::from_be_bytes([b[2], b[3]]),
            ),
            _ => {
                self.stats.refused.malformed += 1;
                return;
            }
        };
        // What answering would send, for the padding rule: the largest probe and the
        // success response (an error response is no longer than any request).
        let ip_header = if client.is_ipv4() { 20 } else { 40 };
        let sends = 2 * ip_header + revtr::MAX_PROBE_TRANSPORT_LEN + revtr::SUCCESS_RESPONSE_LEN;
        if self.cfg.require_padding && ip_len < sends {
            self.stats.refused.not_padded += 1;
            return;
        }
        let admitted = self.limits(now).admit(client, now);
        if let Err(why) = admitted {
            let r = &mut self.stats.refused;
            match why {
                Limited::Source => r.source_rate += 1,
                Limited::Global => r.global_rate += 1,
                Limited::Sources => r.sources_full += 1,
            }
            return;
        }
        // Errors, in the reference's order: TTL, protocol, extension.
        let refused = match &parsed {
            Err(ParseError::Object {
                class_num, c_type, ..
            }) => Some((
                State::MultipartNotSupported,
                u16::from_be_bytes([*class_num, *c_type]),
            )),
            Err(_) => Some((State::MultipartNotSupported, 0)),
            Ok(r) if r.ttl == 0 => Some((State::Ttl, 0)),
            Ok(r) if r.probe_protocol(family).is_none() => Some((State::Protocol, 0)),
            Ok(r) if r.flow_probe.is_some() && !self.cfg.flow_probes => {
                let object =
                    u16::from_be_bytes([revtr::FLOW_OBJECT_CLASS, revtr::FLOW_OBJECT_CTYPE]);
                Some((State::MultipartNotSupported, object))
            }
            // A flow's probes are TCP or UDP (experimental flow-probe object).
            Ok(r) if r.flow_probe.is_some() && r.probe_protocol(family) == Some(Protocol::Icmp) => {
                Some((State::Protocol, 0))
            }
            Ok(r)
                if r.indirect.is_some()
                    && !(self.cfg.indirect && allowed(&self.cfg.allow_indirect, client)) =>
            {
                let object = u16::from_be_bytes([revtr::OBJECT_CLASS, revtr::OBJECT_CTYPE]);
                Some((State::MultipartNotSupported, object))
            }
            Ok(_) => None,
        };
        let req = match (refused, parsed) {
            (None, Ok(req)) => req,
            (refused, _) => {
                let (state, value) = refused.unwrap_or((State::MultipartNotSupported, 0));
                self.stats.errors += 1;
                self.stats.bytes_in += ip_len as u64;
                let response = Response {
                    ident,
                    seq,
                    body: ResponseBody::Error { state, value },
                };
                self.respond(server, client, &response);
                self.events.push_back(ServerEvent {
                    at: rfc3339(ts),
                    client,
                    id: ident,
                    event: SessionEvent::Error {
                        state: u8::from(state),
                    },
                });
                return;
            }
        };
        let target = match req.indirect_target(family) {
            Some(t) => t,
            None => client,
        };
        let probe_id = if target == client {
            req.ident
        } else {
            // Another target: a server-wide identifier, so that two clients naming the same
            // target cannot collide (the reference's indirect branch does the same).
            match self.free_indirect_id(target) {
                Some(id) => id,
                None => {
                    self.stats.refused.sessions_full += 1;
                    return;
                }
            }
        };
        let key = (target, probe_id);
        if self.sessions.contains_key(&key) {
            self.stats.refused.session_exists += 1;
            return;
        }
        let flow_tag = match (req.flow_probe, req.probe_protocol(family)) {
            (Some(f), Some(Protocol::Tcp)) => {
                Some((target, f.server_port, f.client_port, 6, f.seq))
            }
            // The UDP checksum is the identifier (0 is sent as 0xFFFF, RFC 768).
            (Some(f), Some(Protocol::Udp)) => Some((
                target,
                f.server_port,
                f.client_port,
                17,
                u32::from(if probe_id == 0 { 0xffff } else { probe_id }),
            )),
            _ => None,
        };
        if flow_tag.is_some_and(|t| self.flow_probes.contains_key(&t)) {
            // Another open session's probe would look the same: its answer would be ambiguous.
            self.stats.refused.session_exists += 1;
            return;
        }
        if self.sessions.len() >= self.cfg.max_sessions || self.out.len() >= MAX_QUEUED {
            self.stats.refused.sessions_full += 1;
            return;
        }
        let Ok(probe) = req.probe(family, probe_id, TcpProbe::Syn) else {
            return;
        };
        let Some(out) = self.build_probe(ip, server, target, &probe, probe_id) else {
            return;
        };
        let (protocol, flow) = (probe.protocol, req.probe_flow(probe.protocol));
        self.stats.bytes_in += ip_len as u64;
        self.out.push_back(out);
        self.sessions.insert(
            key,
            Session {
                client,
                client_id: req.ident,
                seq: req.seq,
                server,
                sent_wall: ts,
                captured_wall: None,
                flow: flow_tag,
            },
        );
        if let Some(tag) = flow_tag {
            self.flow_probes.insert(tag, key);
        }
        // Each session is filed once, at its deadline: the scheduler's due keys are the
        // sessions whose time is up (an answered one was removed from it).
        self.scheduler.arm(key, now + self.cfg.timeout);
        self.stats.sessions += 1;
        self.stats.open = self.sessions.len() as u64;
        self.stats.open_max = self.stats.open_max.max(self.stats.open);
        self.events.push_back(ServerEvent {
            at: rfc3339(ts),
            client,
            id: req.ident,
            event: SessionEvent::Created {
                target,
                protocol,
                flow,
                ttl: req.ttl,
            },
        });
    }

    fn free_indirect_id(&mut self, target: IpAddr) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let id = self.next_indirect_id;
            self.next_indirect_id = self.next_indirect_id.wrapping_add(1).max(1);
            if !self.sessions.contains_key(&(target, id)) {
                return Some(id);
            }
        }
        None
    }

    /// The probe (reference §1.6) as [`Request::probe`] describes it: the request's TOS /
    /// traffic class, IPv4 identification and DF, and IPv6 flow label are kept (the client
    /// keeps them constant per flow, and IPv6 routers may hash the label); the payload is
    /// random but for the two bytes that set the UDP checksum to the identifier or the ICMP
    /// checksum to the flow value (a client must not choose bytes sent to a third party).
    fn build_probe(
        &mut self,
        req_ip: &svctr_wire::packet::IpInfo,
        server: IpAddr,
        target: IpAddr,
        probe: &revtr::Probe,
        id: u16,
    ) -> Option<Out> {
        let ip = match (server, target) {
            (IpAddr::V4(s), IpAddr::V4(d)) => IpFields::V4(Ipv4Fields {
                src: s,
                dst: d,
                ttl: probe.ttl,
                tos: req_ip.tos,
                dont_fragment: req_ip.dont_fragment,
                ident: req_ip.ident,
            }),
            (IpAddr::V6(s), IpAddr::V6(d)) => IpFields::V6(Ipv6Fields {
                src: s,
                dst: d,
                hop_limit: probe.ttl,
                traffic_class: req_ip.tos,
                flow_label: req_ip.flow_label,
            }),
            _ => return None,
        };
        let h = if target.is_ipv4() { 20 } else { 40 };
        let mut payload = next_random(&mut self.rng).to_be_bytes().to_vec();
        payload.truncate(probe.payload_len);
        let mut buf = Vec::new();
        let dport = match (&probe.transport, ip) {
            (TransportFields::Tcp(tcp), IpFields::V4(v4)) if !probe.tcp_options.is_empty() => {
                emit_tcp_v4_with_options(&v4, tcp, probe.tcp_options, &mut buf);
                tcp.dst_port
            }
            (TransportFields::Tcp(tcp), IpFields::V6(v6)) if !probe.tcp_options.is_empty() => {
                emit_tcp_v6_with_options(&v6, tcp, probe.tcp_options, &mut buf);
                tcp.dst_port
            }
            (t, ip) => {
                // The last two payload bytes (zero) are the word that forces the checksum.
                let n = payload.len();
                if n >= 2 {
                    payload[n - 2..].fill(0);
                }
                emit(&ip, t, &payload, &mut buf);
                let header = match t {
                    TransportFields::Tcp(_) => 20,
                    _ => 8,
                };
                if let (Some(want), true) = (probe.forced_checksum, n >= 2) {
                    let csum_at = match t {
                        TransportFields::Udp(_) => h + 6,
                        TransportFields::Echo(_) => h + 2,
                        TransportFields::Tcp(_) => h + 16,
                    };
                    force_checksum(&mut buf, csum_at, h + header + n - 2, want);
                }
                match t {
                    TransportFields::Tcp(x) => x.dst_port,
                    TransportFields::Udp(x) => x.dst_port,
                    TransportFields::Echo(_) => 0,
                }
            }
        };
        self.stats.packets_out += 1;
        self.stats.bytes_out += buf.len() as u64;
        let sport = if probe.protocol == Protocol::Icmp {
            0
        } else {
            revtr::PROBE_PORT
        };
        Some(Out {
            dst: target,
            flow: FlowKey {
                protocol: probe.protocol,
                local: SocketAddr::new(server, sport),
                remote: SocketAddr::new(target, dport),
            },
            ttl: probe.ttl,
            ident: id,
            bytes: buf,
        })
    }

    /// Queues `response` (an echo reply of code 1) from `server` to `client`, with TTL 64
    /// (§1.4) and TOS / traffic class 0.
    fn respond(&mut self, server: IpAddr, client: IpAddr, response: &Response) {
        if self.out.len() >= MAX_QUEUED {
            return;
        }
        let mut icmp = Vec::new();
        let ip = match (server, client) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                response.emit_v4(&mut icmp);
                IpFields::V4(Ipv4Fields {
                    src: s,
                    dst: d,
                    ttl: revtr::RESPONSE_TTL,
                    tos: 0,
                    dont_fragment: false,
                    ident: 0,
                })
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                response.emit_v6(&s, &d, &mut icmp);
                IpFields::V6(Ipv6Fields {
                    src: s,
                    dst: d,
                    hop_limit: revtr::RESPONSE_TTL,
                    traffic_class: 0,
                    flow_label: 0,
                })
            }
            _ => return,
        };
        let mut bytes = Vec::new();
        emit_icmp_message(&ip, &icmp, &mut bytes);
        self.stats.packets_out += 1;
        self.stats.bytes_out += bytes.len() as u64;
        self.out.push_back(Out {
            dst: client,
            flow: FlowKey {
                protocol: Protocol::Icmp,
                local: SocketAddr::new(server, 0),
                remote: SocketAddr::new(client, 0),
            },
            ttl: revtr::RESPONSE_TTL,
            ident: response.ident,
            bytes,
        });
    }

    /// An answer to the probe of session `key`: from `hop`, quoting (or sent to) `server`.
    fn answer(&mut self, ts: SystemTime, key: Key, server: Option<IpAddr>, hop: IpAddr) {
        let mut key = key;
        if !self.sessions.contains_key(&key) && key.1 == 0xffff {
            // A UDP checksum of 0 is sent as 0xFFFF (RFC 768): identifier 0.
            key.1 = 0;
        }
        let Some(s) = self.sessions.get(&key) else {
            self.stats.unmatched_answers += 1;
            return;
        };
        if server.is_some_and(|a| a != s.server) {
            self.stats.unmatched_answers += 1;
            return;
        }
        let Some(s) = self.sessions.remove(&key) else {
            return;
        };
        if let Some(tag) = &s.flow {
            self.flow_probes.remove(tag);
        }
        self.scheduler.remove(&key);
        self.stats.open = self.sessions.len() as u64;
        let sent = s.captured_wall.unwrap_or(s.sent_wall);
        let rtt = ts.duration_since(sent).unwrap_or(Duration::ZERO);
        let rtt_ns = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX);
        let response = Response {
            ident: s.client_id,
            seq: s.seq,
            body: ResponseBody::Success {
                hop,
                rtt_ns,
                // A flow-shaped probe was sent: say so (the reference, which ignores the object,
                // answers 0 here).
                value: if s.flow.is_some() {
                    revtr::FLOW_PROBE_MARK
                } else {
                    0
                },
            },
        };
        self.respond(s.server, s.client, &response);
        self.stats.answered += 1;
        self.events.push_back(ServerEvent {
            at: rfc3339(ts),
            client: s.client,
            id: s.client_id,
            event: SessionEvent::Answered {
                hop,
                rtt_ms: rtt.as_secs_f64() * 1e3,
            },
        });
    }

    /// Closes the sessions whose time is up (silently toward the client, as the reference).
    pub fn handle_timeout(&mut self, now: Now) {
        for key in self.scheduler.take_due(now.mono) {
            if let Some(s) = self.sessions.remove(&key) {
                if let Some(tag) = &s.flow {
                    self.flow_probes.remove(tag);
                }
                self.stats.timed_out += 1;
                self.events.push_back(ServerEvent {
                    at: rfc3339(now.wall),
                    client: s.client,
                    id: s.client_id,
                    event: SessionEvent::TimedOut,
                });
            }
        }
        self.stats.open = self.sessions.len() as u64;
    }

    /// The next probe or response, into `buf`.
    pub fn poll_transmit(&mut self, _now: Now, buf: &mut Vec<u8>) -> Option<Transmit> {
        let o = self.out.pop_front()?;
        buf.clear();
        buf.extend_from_slice(&o.bytes);
        Some(Transmit {
            dst: o.dst,
            len: o.bytes.len(),
            flow: o.flow,
            ttl: o.ttl,
            ident: o.ident,
        })
    }

    /// Whether packets wait to be sent.
    pub fn has_pending_transmit(&self) -> bool {
        !self.out.is_empty()
    }

    /// A send failed: if it was a probe, its session can never be answered (a failed
    /// response has nothing left to undo).
    pub fn handle_send_error(&mut self, _now: Now, tx: &Transmit, _error: String) {
        let key = (tx.dst, tx.ident);
        let is_probe = tx.flow.protocol != Protocol::Icmp || tx.ttl != revtr::RESPONSE_TTL;
        if is_probe && self.sessions.remove(&key).is_some() {
            self.scheduler.remove(&key);
            self.stats.open = self.sessions.len() as u64;
        }
    }

    /// The next log event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// When the next session times out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.scheduler.next_deadline()
    }

    /// No new sessions; open ones run out.
    pub fn stop_starting(&mut self, _now: Now) {
        self.stopped = true;
    }

    /// Ends now: open sessions are dropped.
    pub fn interrupt(&mut self, now: Now) {
        self.stopped = true;
        let keys: Vec<Key> = self.sessions.keys().copied().collect();
        for key in keys {
            self.scheduler.remove(&key);
            if let Some(s) = self.sessions.remove(&key) {
                if let Some(tag) = &s.flow {
                    self.flow_probes.remove(tag);
                }
                self.events.push_back(ServerEvent {
                    at: rfc3339(now.wall),
                    client: s.client,
                    id: s.client_id,
                    event: SessionEvent::TimedOut,
                });
            }
        }
        self.stats.open = 0;
    }

    /// A server runs until stopped; then until its sessions are over.
    pub fn is_done(&self) -> bool {
        self.stopped && self.sessions.is_empty() && self.out.is_empty()
    }

    /// Not counted: keeping a run's replies (`--pcap`) is for the flow and traceroute
    /// engines.
    pub fn replies_matched(&self) -> Option<u64> {
        None
    }
}

crate::machine::machine_by_inherent_methods!(ReverseServer, ServerEvent);

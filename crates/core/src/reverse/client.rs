//! The reverse-traceroute client's engine: one path back from a server, Paris style (one flow
//! value for every probe, so that per-flow load balancers keep the probes on one path).
//!
//! It first checks that the server speaks the protocol (a request with TTL 0 must come back
//! with state 1, reference §1.5), then asks for `probes` probes per TTL, several TTLs at once
//! (`window`), so that a reverse trace takes about one round trip per window of TTLs, not one
//! per probe. Every request has its own identifier: never one that is still outstanding, and
//! answered ones first, last answered first (the reference client's rule, after RFC 5508: a
//! NAT in front of the client keeps less state). Requests are padded with zeros (never
//! `0x2X`, which a server would take for an extension, §1.3) to `pad` bytes, so that a server
//! that answers only padded requests (no amplification) answers ours.
//!
//! The trace ends at the first TTL whose answers come from the client's own address (the
//! probe reached us), or from the address that answered the TTL before as well (a NAT in
//! front of us answers for every TTL beyond it), after `max_missing` silent TTLs in a row,
//! at `max_ttl`, or at the first error state the server sends.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use svctr_wire::icmp::IcmpMessage;
use svctr_wire::packet::{parse_ip, Transport};
use svctr_wire::probe::{emit_icmp_message, IpFields, Ipv4Fields, Ipv6Fields};
use svctr_wire::revtr::{self, Family, Request, Response, ResponseBody, State};

use super::ident::IdentPool;
use crate::machine::{Now, Transmit};
use crate::path::PathGraph;
use crate::result::{Hop, ProbeReply};
use crate::scheduler::Scheduler;
use crate::{FlowKey, Protocol};

/// The client's settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The probes' protocol (the server sends them).
    pub protocol: Protocol,
    /// The flow value: UDP/TCP destination port, ICMP checksum (0: the server's default, UDP
    /// 53, TCP 80, ICMP 0xBEAF).
    pub flow: u16,
    /// First and last TTL asked for (1, 30).
    pub first_ttl: u8,
    /// See `first_ttl`.
    pub max_ttl: u8,
    /// Probes per TTL (3).
    pub probes: u8,
    /// Wait for each response (2 s; the server's own session timeout is 5 s).
    pub timeout: Duration,
    /// Stop after this many TTLs in a row without an answer (3; 0: never).
    pub max_missing: u8,
    /// TTLs asked for at once (8).
    pub window: u8,
    /// Pad each request's IP datagram with zeros to this many bytes (0: no padding). The
    /// default, [`default_pad`], is what a server that refuses amplification requires.
    pub pad: usize,
    /// Check first that the server answers (TTL 0 → state 1).
    pub presence_check: bool,
    /// The request identifiers this client may use: `ident_first ..= ident_first +
    /// ident_count - 1` (1 and 65,535: all but 0). The live driver reserves a block per
    /// process, so that two clients never take each other's responses.
    pub ident_first: u16,
    /// See `ident_first`.
    pub ident_count: u16,
    /// Seed of the first identifier (its offset in the block).
    pub seed: u64,
    /// `flow --reverse` (experimental, our server only): the probes are a live flow's own
    /// packets from the server back to this host ([`revtr::FlowProbe`]); `protocol` is the
    /// flow's, `flow` is ignored, and `max_ttl` should be the flow's distance (the probes
    /// then never reach this host's application).
    pub flow_probe: Option<ReverseFlow>,
}

/// A live flow as the server's flow-shaped probes imitate it (see [`revtr::FlowProbe`]): its
/// ports and, from this host's view of the connection, the server's keep-alive numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReverseFlow {
    /// The flow's port on the server.
    pub server_port: u16,
    /// The flow's port on this host.
    pub client_port: u16,
    /// TCP: the server's `SND.UNA - 1` as far as this host knows it (its own `RCV.NXT - 1`):
    /// each request asks for a number a little below it, its own.
    pub seq: u32,
    /// TCP: the server's `RCV.NXT` as far as this host knows it (its own `SND.UNA`).
    pub ack: u32,
    /// TCP: the window of the server's latest segment.
    pub window: u16,
    /// TOS / traffic class of the server's latest packet (routers may forward by it).
    pub tos: u8,
    /// IPv6 flow label of the server's latest packet (routers may hash it, RFC 6438).
    pub flow_label: u32,
    /// Routers between the server and this host, from the TTL of the server's packets.
    pub distance: Option<u8>,
}

/// How many distinct sequence numbers below [`ReverseFlow::seq`] the requests of one trace
/// cycle through: far more than are ever outstanding, and 1 KB at most below the window.
const FLOW_SEQ_SPAN: u32 = 1024;

/// The request size (IP datagram) that a server refusing amplification answers: its largest
/// probe (TCP, 24 bytes of transport) and its success response, each with an IP header.
pub fn default_pad(ipv6: bool) -> usize {
    let ip = if ipv6 { 40 } else { 20 };
    2 * ip + revtr::MAX_PROBE_TRANSPORT_LEN + revtr::SUCCESS_RESPONSE_LEN
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            protocol: Protocol::Udp,
            flow: 0,
            first_ttl: 1,
            max_ttl: 30,
            probes: 3,
            timeout: Duration::from_secs(2),
            max_missing: 3,
            window: 8,
            pad: usize::MAX,
            presence_check: true,
            ident_first: 1,
            ident_count: u16::MAX,
            seed: 0,
            flow_probe: None,
        }
    }
}

/// Why a reverse trace stopped. In JSON a string (`"reached"`, `"max-missing"`, ...), or
/// `{"server-error": {"state": N}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReverseStop {
    /// The probes reached the client (or the NAT in front of it).
    Reached,
    /// `max_missing` TTLs in a row had no answer.
    MaxMissing,
    /// `max_ttl` was asked for.
    MaxTtl,
    /// The presence check had no answer: no server there, or requests are filtered.
    NoServer,
    /// The presence check was answered, but not by a reverse-traceroute server (a plain
    /// echo reply, or a malformed response).
    NotSupported,
    /// The server answered with an error state.
    ServerError {
        /// The state (server numbering: 1 TTL, 2 protocol, 3 flow, 4 extension).
        state: u8,
    },
    /// Interrupted.
    Interrupted,
}

/// What an error state means (the server's numbering, which is what goes on the wire; the
/// reference client swaps 2 and 3 in its messages).
pub fn state_text(state: u8) -> String {
    match State::from(state) {
        State::Success => "success".into(),
        State::Ttl => "state 1, TTL 0".into(),
        State::Protocol => "state 2, the probe protocol is not supported".into(),
        State::Flow => "state 3, the flow value is not supported".into(),
        State::MultipartNotSupported => {
            "state 4, the request's extension is not supported or not allowed".into()
        }
        State::Unknown(v) => format!("state {v}, unknown"),
    }
}

impl ReverseStop {
    /// A sentence for a user.
    pub fn describe(&self) -> String {
        match self {
            Self::Reached => "reached this host".into(),
            Self::MaxMissing => "too many silent TTLs in a row".into(),
            Self::MaxTtl => "max TTL".into(),
            Self::NoServer => {
                "no answer to the presence check (no reverse-traceroute server, or ICMP echo \
                 requests of code 1 are filtered on the way)"
                    .into()
            }
            Self::NotSupported => {
                "the server answered as a plain ping: it does not run reverse traceroute".into()
            }
            Self::ServerError { state } => {
                format!("the server refused the request: {}", state_text(*state))
            }
            Self::Interrupted => "interrupted".into(),
        }
    }

    /// Whether the trace ran (an ordinary end) rather than failed.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Reached | Self::MaxMissing | Self::MaxTtl)
    }
}

/// A reverse trace: the path from the server back to us, in the path contract
/// ([`PathGraph`]'s JSON: hops with nodes, links).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReverseResult {
    /// `"reverse"`.
    pub direction: String,
    /// Where the probes started: the server.
    pub source: IpAddr,
    /// Where they went: this host (as the server saw it).
    pub destination: IpAddr,
    /// The probes' protocol.
    pub protocol: Protocol,
    /// The flow value asked for (0: the server's default).
    pub flow: u16,
    /// 4 or 6.
    pub ip_version: u8,
    /// First request (RFC 3339).
    pub start: String,
    /// End (RFC 3339).
    pub end: String,
    /// Why it stopped.
    pub stop_reason: ReverseStop,
    /// Per TTL the nodes with their probes (the server-to-hop RTT), and the links.
    #[serde(flatten)]
    pub graph: PathGraph,
    /// Requests sent (the presence check included).
    pub requests_sent: u32,
    /// Responses matched.
    pub responses: u32,
    /// The probes were a live flow's own packets (`flow --reverse`, [`ReverseFlow`]): source
    /// port the flow's on the server, destination port `flow`, its on this host, as the
    /// server's responses said ([`revtr::FLOW_PROBE_MARK`]). False when the object was asked
    /// for but the server ignored it (ordinary probes from port 1021 to port `flow`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flow_shaped: bool,
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ReverseEvent {
    /// The presence check was answered with state 1: a server is there.
    ServerPresent,
    /// A TTL is complete (in TTL order, up to where the trace stops).
    Hop(Hop),
    /// The trace is over.
    Finished(Box<ReverseResult>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Presence,
    Tracing,
    Done,
}

/// One request: which TTL and which probe of it.
#[derive(Debug, Clone, Copy)]
struct Pending {
    ttl: u8,
    index: usize,
    deadline: Instant,
}

/// The reverse-traceroute client (see the module doc). Its contract is
/// [`crate::Machine`]'s.
#[derive(Debug)]
pub struct ReverseClient {
    cfg: ClientConfig,
    server: IpAddr,
    source: IpAddr,
    phase: Phase,
    /// Outstanding requests by identifier.
    ids: IdentPool<Pending>,
    /// Requests to send: (TTL, probe index); TTL 0 is the presence check.
    to_send: std::collections::VecDeque<(u8, usize)>,
    hops: BTreeMap<u8, Vec<Option<ProbeReply>>>,
    /// The next TTL to ask for.
    next_ttl: u8,
    /// The next TTL to stream.
    next_stream: u8,
    stop_at: Option<(u8, ReverseStop)>,
    missing: u8,
    scheduler: Scheduler<u16>,
    events: std::collections::VecDeque<ReverseEvent>,
    start: Option<SystemTime>,
    requests: u32,
    responses: u32,
    /// The wall clock of the latest input (the result's end).
    last_wall: Option<SystemTime>,
    /// This host's distance from the server (TTL of the probe that reaches it), from the
    /// presence check's response: servers send responses with TTL 64 (reference §1.4), so
    /// 64 minus the TTL it arrives with is the routers on the way back.
    distance: Option<u8>,
    /// `flow_probe`: success responses with and without the server's flow-probe mark.
    flow_marks: (u32, u32),
}

impl ReverseClient {
    /// A reverse trace from `server` back to `source` (this host's address toward it).
    pub fn new(mut cfg: ClientConfig, server: IpAddr, source: IpAddr) -> Result<Self, String> {
        if server.is_ipv4() != source.is_ipv4() {
            return Err(format!(
                "{server} and {source} are not of one address family"
            ));
        }
        if cfg.first_ttl == 0 || cfg.first_ttl > cfg.max_ttl {
            return Err(format!(
                "the TTL range {}..{} is empty",
                cfg.first_ttl, cfg.max_ttl
            ));
        }
        if cfg.probes == 0 {
            return Err("at least one probe per TTL".into());
        }
        if cfg.timeout.is_zero() {
            return Err("the wait for a response must be positive".into());
        }
        if cfg.pad == usize::MAX {
            cfg.pad = default_pad(server.is_ipv6());
        }
        cfg.window = cfg.window.max(1);
        if cfg.ident_first == 0 || cfg.ident_count == 0 {
            return Err("request identifiers start at 1, and at least one is needed".into());
        }
        cfg.ident_count = cfg.ident_count.min(u16::MAX - cfg.ident_first + 1);
        let ids = IdentPool::new(cfg.ident_first, cfg.ident_count, cfg.seed);
        let first = cfg.first_ttl;
        let mut c = Self {
            cfg,
            server,
            source,
            phase: Phase::Presence,
            ids,
            to_send: Default::default(),
            hops: BTreeMap::new(),
            next_ttl: first,
            next_stream: first,
            stop_at: None,
            missing: 0,
            scheduler: Scheduler::default(),
            events: Default::default(),
            start: None,
            requests: 0,
            responses: 0,
            last_wall: None,
            distance: None,
            flow_marks: (0, 0),
        };
        if c.cfg.presence_check {
            c.to_send.push_back((0, 0));
        } else {
            c.phase = Phase::Tracing;
            c.fill_window();
        }
        Ok(c)
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    fn protocol_number(&self) -> u8 {
        match self.cfg.protocol {
            Protocol::Udp => 17,
            Protocol::Tcp => 6,
            Protocol::Icmp if self.server.is_ipv4() => 1,
            Protocol::Icmp => 58,
        }
    }

    /// Asks for the TTLs of the window not asked for yet.
    fn fill_window(&mut self) {
        if self.stop_at.is_some() || self.phase != Phase::Tracing {
            return;
        }
        let mut limit = self
            .next_stream
            .saturating_add(self.cfg.window)
            .min(self.cfg.max_ttl.saturating_add(1));
        // Up to the distance the presence check's response gave, no further, until the
        // trace passes it without reaching us (a longer way for the probes' flow).
        if let Some(d) = self.distance {
            if self.next_stream <= d {
                limit = limit.min(d.saturating_add(1));
            }
        }
        while self.next_ttl < limit {
            let ttl = self.next_ttl;
            self.hops
                .insert(ttl, vec![None; usize::from(self.cfg.probes)]);
            for i in 0..usize::from(self.cfg.probes) {
                self.to_send.push_back((ttl, i));
            }
            self.next_ttl = ttl.saturating_add(1);
            if ttl == u8::MAX {
                break;
            }
        }
    }

    /// The next request, into `buf`.
    pub fn poll_transmit(&mut self, now: Now, buf: &mut Vec<u8>) -> Option<Transmit> {
        if self.phase == Phase::Done {
            return None;
        }
        let (ttl, index) = *self.to_send.front()?;
        let deadline = now.mono + self.cfg.timeout;
        let id = self.ids.take(Pending {
            ttl,
            index,
            deadline,
        })?;
        self.to_send.pop_front();
        self.start.get_or_insert(now.wall);
        self.last_wall = Some(now.wall);
        self.scheduler.arm(id, deadline);
        self.requests += 1;
        let ip_header = if self.server.is_ipv4() { 20 } else { 40 };
        // The presence check goes without the flow object: a server that does not know the
        // object still says that it is there, and refuses the object on the first probe.
        let flow = self.cfg.flow_probe.filter(|_| ttl > 0);
        let flow_probe = flow.map(|f| revtr::FlowProbe {
            server_port: f.server_port,
            client_port: f.client_port,
            // Each request its own number (the server tells its probes apart by it), all
            // below the server's SND.UNA.
            seq: f.seq.wrapping_sub(self.requests % FLOW_SEQ_SPAN),
            ack: f.ack,
            window: f.window,
        });
        let extension = if flow_probe.is_some() {
            revtr::EXTENSION_LEN
        } else {
            0
        };
        let req = Request {
            ident: id,
            seq: 0,
            ttl,
            protocol: self.protocol_number(),
            flow: flow.map_or(self.cfg.flow, |f| f.client_port),
            indirect: None,
            flow_probe,
            // Zeros: a first byte 0x2X would read as an extension (§1.3).
            padding: self
                .cfg
                .pad
                .saturating_sub(ip_header + revtr::REQUEST_LEN + extension),
        };
        let mut icmp = Vec::new();
        match (self.source, self.server) {
            (IpAddr::V6(s), IpAddr::V6(d)) => req.emit_v6(&s, &d, &mut icmp),
            _ => req.emit_v4(&mut icmp),
        };
        // TOS / traffic class, IPv4 identification and IPv6 flow label are constant (0, as
        // the reference client): the server copies them into the probe, and routers may hash
        // them (§2.4).
        // For a flow's probes, the flow's own (the server's latest packet's).
        let (tos, flow_label) = flow.map_or((0, 0), |f| (f.tos, f.flow_label));
        let ip = match (self.source, self.server) {
            (IpAddr::V4(s), IpAddr::V4(d)) => IpFields::V4(Ipv4Fields {
                src: s,
                dst: d,
                ttl: 64,
                tos,
                dont_fragment: false,
                ident: 1,
            }),
            (IpAddr::V6(s), IpAddr::V6(d)) => IpFields::V6(Ipv6Fields {
                src: s,
                dst: d,
                hop_limit: 64,
                traffic_class: tos,
                flow_label,
            }),
            _ => return None,
        };
        let len = emit_icmp_message(&ip, &icmp, buf);
        Some(Transmit {
            dst: self.server,
            len,
            flow: FlowKey {
                protocol: Protocol::Icmp,
                local: SocketAddr::new(self.source, 0),
                remote: SocketAddr::new(self.server, 0),
            },
            ttl: 64,
            ident: id,
        })
    }

    /// Whether requests wait to be sent.
    pub fn has_pending_transmit(&self) -> bool {
        self.phase != Phase::Done && !self.to_send.is_empty()
    }

    /// A captured packet: a response from the server (anything else is ignored).
    pub fn handle_packet(&mut self, now: Instant, ts: SystemTime, bytes: &[u8]) {
        let Ok(pkt) = parse_ip(bytes) else { return };
        if pkt.ip.src != self.server || pkt.ip.dst != self.source {
            return;
        }
        let Transport::Icmp(IcmpMessage::EchoReply { ident, .. }) = pkt.transport else {
            return;
        };
        let h = if self.server.is_ipv4() {
            usize::from(bytes[0] & 0x0f) * 4
        } else {
            40
        };
        let Some(icmp) = bytes.get(h..) else { return };
        let Some(p) = self.ids.get(ident) else {
            return;
        };
        let family = if self.server.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        };
        let parsed = Response::parse(family, icmp).ok();
        self.ids.answered(ident);
        self.scheduler.remove(&ident);
        self.responses += 1;
        if p.ttl == 0 {
            if let Some(routers) = revtr::RESPONSE_TTL.checked_sub(pkt.ip.ttl) {
                self.distance = Some(routers.saturating_add(1).max(self.cfg.first_ttl));
            }
            self.presence(now, parsed.map(|r| r.state()));
            return;
        }
        let Some(r) = parsed else {
            // A plain echo reply to a tracing request: the server went away or never was.
            self.stop(p.ttl, ReverseStop::NotSupported, now);
            return;
        };
        let ResponseBody::Success { hop, rtt_ns, value } = r.body else {
            let state = u8::from(r.state());
            self.stop(p.ttl, ReverseStop::ServerError { state }, now);
            return;
        };
        if self.cfg.flow_probe.is_some() {
            // Did the server send the flow's own packet (our server marks it), or ignore the
            // object and send an ordinary probe (the reference's `main`)?
            if value == revtr::FLOW_PROBE_MARK {
                self.flow_marks.0 += 1;
            } else {
                self.flow_marks.1 += 1;
            }
        }
        let reply = ProbeReply {
            addr: Some(hop),
            rtt_ms: Some(rtt_ns as f64 / 1e6),
            tag: ident,
            ..ProbeReply::default()
        };
        self.last_wall = Some(ts);
        if let Some(slot) = self.hops.get_mut(&p.ttl).and_then(|h| h.get_mut(p.index)) {
            *slot = Some(reply);
        }
        self.advance(now);
    }

    fn presence(&mut self, now: Instant, state: Option<State>) {
        // state 1 is the answer to TTL 0; a plain echo reply (code 0, or a kernel's copy of
        // the request, too short to be a response) is not a server.
        if self.phase != Phase::Presence {
            return;
        }
        match state {
            Some(State::Ttl) => {
                self.phase = Phase::Tracing;
                self.events.push_back(ReverseEvent::ServerPresent);
                self.fill_window();
            }
            _ => self.stop(0, ReverseStop::NotSupported, now),
        }
    }

    /// Ends the trace at `ttl` (TTLs above it are dropped).
    fn stop(&mut self, ttl: u8, why: ReverseStop, now: Instant) {
        if self.stop_at.is_none() {
            self.stop_at = Some((ttl, why));
        }
        self.to_send.clear();
        self.advance(now);
    }

    /// Streams the complete TTLs in order, applies the stop rules, and finishes.
    fn advance(&mut self, _now: Instant) {
        if self.phase == Phase::Done {
            return;
        }
        loop {
            let ttl = self.next_stream;
            if let Some((at, _)) = &self.stop_at {
                if ttl > *at || *at == 0 {
                    break;
                }
            }
            let Some(slots) = self.hops.get(&ttl) else {
                break;
            };
            let complete = slots.iter().enumerate().all(|(i, s)| {
                s.is_some()
                    || !self.ids.iter().any(|(_, p)| p.ttl == ttl && p.index == i)
                        && !self.to_send.contains(&(ttl, i))
            });
            if !complete {
                break;
            }
            let hop = Hop {
                ttl,
                probes: slots
                    .iter()
                    .map(|s| s.clone().unwrap_or_default())
                    .collect(),
            };
            let addrs = hop.addrs();
            self.events.push_back(ReverseEvent::Hop(hop));
            self.next_stream = ttl.saturating_add(1);
            if addrs.is_empty() {
                self.missing += 1;
            } else {
                self.missing = 0;
            }
            let prev: Vec<IpAddr> = ttl
                .checked_sub(1)
                .and_then(|t| self.hops.get(&t))
                .map(|s| s.iter().flatten().filter_map(|p| p.addr).collect())
                .unwrap_or_default();
            let reached = addrs.contains(&self.source)
                || (addrs.len() == 1 && !prev.is_empty() && prev.iter().all(|a| *a == addrs[0]));
            let why = if reached {
                Some(ReverseStop::Reached)
            } else if self.cfg.max_missing > 0 && self.missing >= self.cfg.max_missing {
                Some(ReverseStop::MaxMissing)
            } else if ttl >= self.cfg.max_ttl {
                Some(ReverseStop::MaxTtl)
            } else {
                None
            };
            if let Some(why) = why {
                self.stop_at = Some((ttl, why));
                self.to_send.clear();
                break;
            }
            if ttl == u8::MAX {
                break;
            }
        }
        match &self.stop_at {
            Some((at, _)) if self.next_stream > *at || *at == 0 => self.finish(),
            Some(_) => {}
            None => self.fill_window(),
        }
    }

    fn finish(&mut self) {
        if self.phase == Phase::Done {
            return;
        }
        self.phase = Phase::Done;
        let (at, why) = self
            .stop_at
            .clone()
            .unwrap_or((0, ReverseStop::Interrupted));
        for id in self.ids.clear() {
            self.scheduler.remove(&id);
        }
        self.to_send.clear();
        let hops: Vec<Hop> = self
            .hops
            .iter()
            .filter(|(t, _)| **t <= at && **t < self.next_stream)
            .map(|(t, s)| Hop {
                ttl: *t,
                probes: s.iter().map(|p| p.clone().unwrap_or_default()).collect(),
            })
            .collect();
        let fmt = |t: Option<SystemTime>| {
            humantime::format_rfc3339_micros(t.unwrap_or(SystemTime::UNIX_EPOCH)).to_string()
        };
        self.events
            .push_back(ReverseEvent::Finished(Box::new(ReverseResult {
                direction: "reverse".into(),
                source: self.server,
                destination: self.source,
                protocol: self.cfg.protocol,
                flow: self.cfg.flow,
                ip_version: if self.server.is_ipv4() { 4 } else { 6 },
                start: fmt(self.start),
                end: fmt(self.last_wall),
                stop_reason: why,
                graph: PathGraph::from_flow(&hops),
                requests_sent: self.requests,
                responses: self.responses,
                // Only what the server said it sent: every answered probe marked.
                flow_shaped: self.cfg.flow_probe.is_some()
                    && self.flow_marks.0 > 0
                    && self.flow_marks.1 == 0,
            })));
    }

    /// Requests whose wait is over: their probes count as silent.
    pub fn handle_timeout(&mut self, now: Now) {
        self.last_wall = Some(now.wall);
        let mut presence_lost = false;
        for id in self.scheduler.take_due(now.mono) {
            let Some(p) = self.ids.get(id) else {
                continue;
            };
            if p.deadline > now.mono {
                self.scheduler.arm(id, p.deadline);
                continue;
            }
            // Not reused soon: its response may still come.
            self.ids.expired(id);
            if p.ttl == 0 {
                presence_lost = true;
            } else if let Some(slot) = self.hops.get_mut(&p.ttl).and_then(|h| h.get_mut(p.index)) {
                slot.get_or_insert_with(ProbeReply::default);
            }
        }
        if presence_lost && self.phase == Phase::Presence {
            self.stop(0, ReverseStop::NoServer, now.mono);
        } else {
            self.advance(now.mono);
        }
    }

    /// A request could not be sent: its probe is silent, with the error.
    pub fn handle_send_error(&mut self, now: Now, tx: &Transmit, error: String) {
        let Some(p) = self.ids.answered(tx.ident) else {
            return;
        };
        self.scheduler.remove(&tx.ident);
        if p.ttl == 0 {
            self.stop(0, ReverseStop::NoServer, now.mono);
            return;
        }
        if let Some(slot) = self.hops.get_mut(&p.ttl).and_then(|h| h.get_mut(p.index)) {
            *slot = Some(ProbeReply {
                error: Some(error),
                ..ProbeReply::default()
            });
        }
        self.advance(now.mono);
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ReverseEvent> {
        self.events.pop_front()
    }

    /// When the next request's wait is over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        self.scheduler.next_deadline()
    }

    /// A single trace has nothing to stop starting: it goes on to its end.
    pub fn stop_starting(&mut self, _now: Now) {}

    /// Ends now, with the TTLs complete so far.
    pub fn interrupt(&mut self, now: Now) {
        if self.phase == Phase::Done {
            return;
        }
        self.last_wall = Some(now.wall);
        let at = self.next_stream.saturating_sub(1);
        self.stop_at = Some((at, ReverseStop::Interrupted));
        self.finish();
    }

    /// Finished.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Not counted: keeping a run's replies (`--pcap`) is for the flow and traceroute
    /// engines.
    pub fn replies_matched(&self) -> Option<u64> {
        None
    }
}

crate::machine::machine_by_inherent_methods!(ReverseClient, ReverseEvent);

//! Multipath discovery: every path a destination's traffic can take through per-flow load
//! balancers, with a bound on the probability of missing one (the Multipath Detection
//! Algorithm of Augustin et al., "Measuring load-balanced paths in the Internet", IMC 2007,
//! with the stopping rule of Veitch et al., "Failure control in multipath route tracing",
//! INFOCOM 2009). Sans-IO, like every [`crate::Machine`].
//!
//! # Flow identifiers
//!
//! A per-flow load balancer sends every packet of a flow (what it hashes: addresses, protocol,
//! ports, for IPv6 also the flow label) the same way, and different flows, pseudo-randomly,
//! any way. So each probe carries a *flow identifier* `f`, and two probes with the same `f` at
//! TTL `t` and `t + 1` met two routers linked on one path. What varies with `f`:
//!
//! | protocol | the flow identifier | the probe's number (to match replies) | the process marker |
//! |---|---|---|---|
//! | UDP | destination port `base + f` (and the IPv6 flow label) | the UDP checksum (Paris) | the source port |
//! | TCP | source port, one of a reserved block (and the IPv6 flow label) | the low half of the sequence number | its high half |
//! | ICMP | the checksum (the sequence number compensates; and the IPv6 flow label) | IPv4 identification; the first payload bytes | the identifier |
//!
//! Linux routers hash ICMP by addresses and protocol only (their multipath hash has no ICMP
//! field), so over IPv4 every echo probe to a destination takes one path through them; over
//! IPv6 the flow label spreads them like any flow.
//!
//! # The algorithm
//!
//! The trace goes hop by hop, in rounds. At hop `h`, every *node* `v` seen at TTL `h` (and the
//! source, before the first hop) must have its successors at `h + 1` enumerated: the flows
//! known to pass through `v` are probed at `h + 1` until, having seen `k` successors, `n(k)`
//! flows through `v` have answered, where `n(k)` is the least `n` with
//! `(k + 1) * (k / (k + 1))^n <= a`: were there a `k + 1`-th successor, `n` probes spread
//! uniformly would all have missed it with probability at most `a` (a union bound over the
//! `k + 1` successors). Only a node that really has an unseen successor can fail its test,
//! so the trace's failure bound `1 - confidence` is split over the load balancers a path
//! meets, [`BRANCH_TESTS`] of them: `a = (1 - confidence) / BRANCH_TESTS`. At 0.95 this
//! gives `n(1) = 8, n(2) = 14, n(3) = 21, n(4) = 27, ...`. Measured over 1,104 simulated
//! runs on eleven topologies (diamonds of width 2 to 16, nested, unequal lengths, silent and
//! rate-limited routers; `tests/mda.rs`), 1.4 % of the runs missed a node or link.
//!
//! When too few known flows pass through `v`, new flows are sent at TTL `h` (*node control*):
//! as many as the share of flows `v` has had at `h` says are needed, and those that land on
//! `v` are probed at `h + 1` in the next round; where `v` is the only node of TTL `h`, every
//! flow passes it, and new flows go straight to `h + 1`. All probes of a round go out at once
//! (under the driver's rate), so a trace takes a few rounds per hop, not probes times the
//! RTT.
//!
//! * A flow that reached the destination, or a router's Destination Unreachable, ends there:
//!   paths of different lengths are followed each to its own end (a trace that stopped at the
//!   destination's first answer would miss the longer paths' last hops).
//! * Silent probes form the node `*` at their TTL; its flows are enumerated like any node's,
//!   so the trace gets past a silent hop. A hop where nobody answers counts towards
//!   `max_missing`. No link is ever drawn to or from `*`.
//! * A node with two or more successors is checked for per-packet load balancing: flows
//!   that answered are sent again ([`MdaConfig::per_packet_repeats`] probes, 7 at 0.95); a
//!   different answer for the same flow means the balancer ignores flows, which makes flow
//!   identifiers meaningless past it. The trace then stops (`per-packet-balancing`) and
//!   says where, instead of probing forever.
//! * `max_probes` bounds the probes per destination (`max-probes`).
//!
//! What it reports is a [`crate::PathGraph`]: per TTL the nodes with their probes, and the links
//! between consecutive TTLs that one flow took.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use svctr_wire::icmp::{IcmpError, IcmpMessage};
use svctr_wire::packet::{parse_ip, Transport};
use svctr_wire::probe::{
    emit, emit_icmp_message, force_checksum, EchoFields, IpFields, Ipv4Fields, Ipv6Fields,
    TcpFields, TransportFields, UdpFields,
};
use svctr_wire::revtr::{self, Family, Response, ResponseBody, State};

use crate::config::ConfigError;
use crate::flow::{FlowKey, Protocol};
use crate::machine::{Now, Transmit};
use crate::path::{Diamond, GraphHop, Link, PathGraph};
use crate::result::{InterfaceEntry, MplsEntry, ProbeReply};
use crate::reverse::IdentPool;
use crate::scheduler::{Scheduler, TargetQueue};

/// The load balancers on a path the confidence is split over (see the module doc). A path
/// through more of them keeps each one's bound `a`, not the trace-wide one.
pub const BRANCH_TESTS: f64 = 4.0;

/// Parameters of a multipath discovery. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct MdaConfig {
    /// Probe protocol (UDP).
    pub protocol: Protocol,
    /// UDP: the base destination port (33434); TCP: the destination port (80).
    pub port: Option<u16>,
    /// UDP: keep the destination port (`port`, a service's) and vary the source port
    /// instead, like TCP: fresh flows to the service itself, which a stateful firewall
    /// that admits only the service's port lets through (`compare`, `monitor`).
    pub keep_port: bool,
    /// UDP and TCP: the first source port; the driver reserves `reserved_ports` from it.
    pub sport: u16,
    /// TCP (and UDP with `keep_port`): how many consecutive source ports the flow
    /// identifiers use, the most flows a destination can have (256).
    pub source_ports: u16,
    /// ICMP: the echo identifier; TCP: the high half of every sequence number. The driver
    /// reserves it.
    pub marker: u16,
    /// First and last TTL probed (1, 30).
    pub first_ttl: u8,
    /// See `first_ttl`.
    pub max_ttl: u8,
    /// Probability of finding every node and link of a per-flow balanced topology (0.95).
    pub confidence: f64,
    /// Reply wait per probe (2 s).
    pub timeout: Duration,
    /// Stop after this many consecutive TTLs where nobody answered (3; 0: never).
    pub max_missing: u8,
    /// Probes per destination at most (20,000).
    pub max_probes: u32,
    /// TOS / traffic class of the probes.
    pub tos: u8,
    /// At most this many destinations at once (64; 0: all).
    pub parallel: usize,
    /// Reverse mode (`None`: forward): the destinations are reverse-traceroute servers, asked
    /// to send the probes back toward this host (see [`ReverseMda`]).
    pub reverse: Option<ReverseMda>,
}

/// The lowest flow value of a reverse discovery: flow `f` asks for `REVERSE_FLOW_BASE +
/// (flow_offset + f) mod 55,536` (see [`ReverseMda::flow_offset`]), within the range the
/// reference client's multipath mode uses (10000..65535).
pub const REVERSE_FLOW_BASE: u16 = 10_000;

/// Multipath discovery of the path *back*: each probe is a reverse-traceroute request
/// (draft-heiwin-intarea-reverse-traceroute; `svctr_wire::revtr`) asking the destination, a
/// server, to send one probe with the TTL toward this host and to report who answered. The
/// flow identifier is the request's flow value (the UDP/TCP destination port or the ICMP
/// checksum of the server's probe; TOS and IPv6 flow label stay constant, since the server
/// copies them from the request), the probe number is looked up by the request's
/// identifier, unique among those outstanding ([`crate::reverse`]'s identifier rules). A
/// presence check (TTL 0, answered with state 1) comes first; a flow ends where the answer
/// comes from this host, or from the address its TTL before did (a NAT in front of us
/// answers for every TTL beyond it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseMda {
    /// Pad each request's IP datagram with zeros to this many bytes (see
    /// [`crate::reverse::default_pad`]).
    pub pad: usize,
    /// The identifiers this process may use: `ident_first ..= ident_first + ident_count - 1`
    /// (the live driver reserves a block).
    pub ident_first: u16,
    /// See `ident_first`.
    pub ident_count: u16,
    /// Where the flow values start in their range: flow `f` asks for `REVERSE_FLOW_BASE +
    /// (flow_offset + f) mod 55,536`. The live driver draws it per run (as the reference
    /// client draws its flows at random), so that a load balancer whose hash happens to send
    /// the first flows one way does not make every run miss the same branch.
    pub flow_offset: u16,
}

impl Default for MdaConfig {
    fn default() -> Self {
        Self {
            protocol: Protocol::Udp,
            port: None,
            keep_port: false,
            sport: 0,
            source_ports: 256,
            marker: 0,
            first_ttl: 1,
            max_ttl: 30,
            confidence: 0.95,
            timeout: Duration::from_secs(2),
            max_missing: 3,
            max_probes: 20_000,
            tos: 0,
            parallel: 64,
            reverse: None,
        }
    }
}

impl MdaConfig {
    /// The destination port (UDP: the base, flow `f` uses `base + f`).
    pub fn dest_port(&self) -> u16 {
        self.port.unwrap_or(match self.protocol {
            Protocol::Tcp => 80,
            _ => 33434,
        })
    }

    /// Whether the flow identifier is the source port (TCP; UDP with `keep_port`).
    pub fn varies_source_port(&self) -> bool {
        self.protocol == Protocol::Tcp || (self.protocol == Protocol::Udp && self.keep_port)
    }

    /// How many distinct flow identifiers a destination can have.
    pub fn max_flows(&self) -> u16 {
        if self.reverse.is_some() {
            return u16::MAX - REVERSE_FLOW_BASE;
        }
        match self.protocol {
            _ if self.varies_source_port() => self.source_ports.max(1),
            Protocol::Udp => u16::MAX - self.dest_port(),
            _ => 0x7fff,
        }
    }

    /// How many consecutive source ports the driver must reserve.
    pub fn reserved_ports(&self) -> u16 {
        if self.varies_source_port() {
            self.source_ports.max(1)
        } else {
            1
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.first_ttl == 0 || self.first_ttl > self.max_ttl {
            return Err(ConfigError::TtlRange {
                first: self.first_ttl,
                max: self.max_ttl,
            });
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::NoTimeout);
        }
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            return Err(ConfigError::Confidence(self.confidence.to_string()));
        }
        Ok(())
    }

    /// How many flows the per-packet check sends again: were the node balancing per packet
    /// over two or more successors, each repeat would meet the router its flow met before
    /// with probability at most 1/2, so all of them do with probability at most `a`, the
    /// share of the failure bound of one branching test.
    pub fn per_packet_repeats(&self) -> usize {
        let a = (1.0 - self.confidence) / BRANCH_TESTS;
        (a.ln() / 0.5f64.ln()).ceil().max(1.0) as usize
    }

    /// `n(k)`: flows through a node that must have answered, `k` successors seen, before it
    /// is taken to have no other (see the module doc). `n(0)` is `n(1)`: a node whose probes
    /// were all silent is probed as if it had one successor.
    pub fn stopping_point(&self, k: usize) -> usize {
        let k = k.max(1) as f64;
        let a = (1.0 - self.confidence) / BRANCH_TESTS;
        let n = ((a / (k + 1.0)).ln() / (k / (k + 1.0)).ln()).ceil();
        n.max(1.0) as usize
    }
}

/// Why a multipath discovery stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MdaStop {
    /// Every path reached the destination or ended (an unreachable), with the confidence.
    Completed,
    /// `max_missing` TTLs in a row where nobody answered.
    MaxMissing,
    /// The max TTL was probed.
    MaxTtl,
    /// `max_probes` were sent.
    MaxProbes,
    /// A node balances per packet: flow identifiers mean nothing past it.
    PerPacketBalancing,
    /// The destination ran out of flow identifiers (TCP: the reserved source ports).
    FlowsExhausted,
    /// Interrupted.
    Interrupted,
    /// Reverse mode: the presence check had no answer (no server, or requests filtered).
    NoServer,
    /// Reverse mode: the destination answered, but not as a reverse-traceroute server.
    NotSupported,
    /// Reverse mode: the server refused a request (its state is in `server_state`).
    ServerError,
}

crate::names::names!(
    MdaStop,
    "stop reason",
    Completed => "completed",
    MaxMissing => "max-missing",
    MaxTtl => "max-ttl",
    MaxProbes => "max-probes",
    PerPacketBalancing => "per-packet-balancing",
    FlowsExhausted => "flows-exhausted",
    Interrupted => "interrupted",
    NoServer => "no-server",
    NotSupported => "not-supported",
    ServerError => "server-error",
);

impl MdaStop {
    /// Whether the discovery ran (an ordinary end), rather than failed before it could.
    pub fn is_ok(self) -> bool {
        !matches!(
            self,
            Self::NoServer | Self::NotSupported | Self::ServerError
        )
    }
}

/// A node found to balance per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerPacket {
    /// Its TTL.
    pub ttl: u8,
    /// Its address.
    pub addr: IpAddr,
}

/// The result of a multipath discovery to one destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MdaResult {
    /// `"reverse"` for the path back from a reverse-traceroute server (absent: forward).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Where the probes went: the destination (reverse: this host, as the server saw it).
    pub destination: IpAddr,
    /// Where they came from: this host (reverse: the server).
    pub source: IpAddr,
    /// Probe protocol.
    pub protocol: Protocol,
    /// 4 or 6.
    pub ip_version: u8,
    /// First probe (RFC 3339).
    pub start: String,
    /// Finish (RFC 3339).
    pub end: String,
    /// Why it stopped.
    pub stop_reason: MdaStop,
    /// The confidence asked for.
    pub confidence: f64,
    /// Per TTL the nodes with their probes, and the links (see [`PathGraph`]).
    #[serde(flatten)]
    pub graph: PathGraph,
    /// Where the paths split and join.
    pub diamonds: Vec<Diamond>,
    /// Nodes that balance per packet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_packet: Vec<PerPacket>,
    /// Distinct flow identifiers used.
    pub flows: u32,
    /// Probes sent.
    pub probes_sent: u32,
    /// Replies matched.
    pub replies: u32,
    /// Reverse mode: the error state the server answered (`server-error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_state: Option<u8>,
}

/// Something the multipath engine reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MdaEvent {
    /// Discovery of a destination began.
    Started {
        /// The destination.
        target: IpAddr,
        /// The probes' source address.
        source: IpAddr,
    },
    /// A TTL of a destination is final (the next one is enumerated, or the discovery is
    /// over), streamed in TTL order: its nodes, and the links into them from the TTL before.
    Hop {
        /// The destination.
        target: IpAddr,
        /// The TTL's nodes.
        hop: GraphHop,
        /// The links from the TTL before into this one.
        links: Vec<Link>,
    },
    /// A destination is done.
    Finished(Box<MdaResult>),
}

/// What a flow met at a TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Seen {
    /// A router, host or the destination answered from this address.
    Addr(IpAddr),
    /// Nobody answered.
    Silent,
}

#[derive(Debug, Clone)]
enum ProbeState {
    Awaiting { deadline: Instant },
    Answered,
    Silent,
}

#[derive(Debug, Clone)]
struct Probe {
    flow: u16,
    /// Reverse mode: the request's identifier (0 forward).
    ident: u16,
    ttl: u8,
    /// A repeat for the per-packet check (its answer does not count as the flow's).
    check: bool,
    state: ProbeState,
    sent_wall: SystemTime,
    captured_wall: Option<SystemTime>,
    reply: Option<ProbeReply>,
    reply_wall: Option<SystemTime>,
}

/// One destination's discovery.
#[derive(Debug)]
struct Target {
    src: IpAddr,
    /// Probes, by number - 1.
    probes: Vec<Probe>,
    /// What each flow met at each TTL (its first answered probe there).
    seen: HashMap<(u16, u8), Seen>,
    /// Entries of `seen` that were assumed, not observed: flows sent straight past the only
    /// node of a TTL. They never make a link; see [`Mda::unconfirmed`].
    assumed: BTreeSet<(u16, u8)>,
    /// Assumed entries already probed to check them.
    checking: BTreeSet<(u16, u8)>,
    /// Flows that ended (destination reached, unreachable), at which TTL.
    ended: HashMap<u16, u8>,
    /// Flows created, in order.
    flows: u16,
    /// The hop whose nodes' successors are being enumerated (`first_ttl - 1`: the source).
    hop: u8,
    /// Probes of the current round not resolved yet.
    outstanding: usize,
    /// Probes to send in this round: (flow, ttl, check).
    to_send: VecDeque<(u16, u8, bool)>,
    /// Nodes already checked for per-packet balancing.
    checked: BTreeSet<(u8, Seen)>,
    missing: u8,
    stop: Option<MdaStop>,
    per_packet: Vec<PerPacket>,
    /// The first probe of the current round: older ones are all resolved.
    round_start: usize,
    /// TTLs already streamed as hop events.
    emitted: u8,
    replies: u32,
    /// Reverse mode: the error state the server answered.
    server_state: Option<u8>,
}

/// The multipath engine: many destinations at once, each by rounds (see the module doc).
/// Its contract is [`crate::Machine`]'s.
#[derive(Debug)]
pub struct Mda {
    cfg: MdaConfig,
    targets: HashMap<IpAddr, Target>,
    waiting: TargetQueue,
    scheduler: Scheduler<IpAddr>,
    events: VecDeque<MdaEvent>,
    /// Reverse mode: outstanding requests' identifiers, to (server, probe number).
    ids: IdentPool<(IpAddr, u16)>,
    /// Replies matched to a probe (see [`crate::Machine::replies_matched`]).
    replies_matched: u64,
}

/// The source and destination ports of flow `f`'s probes (None for ICMP): the source port
/// varies where the configuration says so, else the destination port.
fn probe_ports(c: &MdaConfig, f: u16) -> Option<(u16, u16)> {
    match c.protocol {
        Protocol::Icmp => None,
        _ if c.varies_source_port() => Some((
            c.sport.wrapping_add(f % c.source_ports.max(1)),
            c.dest_port(),
        )),
        _ => Some((c.sport, c.dest_port().wrapping_add(f))),
    }
}

/// The IPv6 flow label of flow `f`: distinct and non-zero for every `f`, so that routers
/// hashing the label (RFC 6438) see a different flow.
fn flow_label(f: u16) -> u32 {
    (u32::from(f).wrapping_mul(0x9e37) ^ 0x5a5a5) & 0xfffff | 1
}

/// The ICMP checksum that identifies flow `f`: never 0 or 0xffff.
fn icmp_flow_checksum(f: u16) -> u16 {
    0x1000u16.wrapping_add(f)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl Mda {
    /// A new engine.
    pub fn new(cfg: MdaConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let ids = match &cfg.reverse {
            Some(r) => IdentPool::new(r.ident_first, r.ident_count, 0),
            None => IdentPool::new(1, 1, 0),
        };
        Ok(Self {
            cfg,
            targets: HashMap::new(),
            waiting: TargetQueue::default(),
            scheduler: Scheduler::default(),
            events: VecDeque::new(),
            ids,
            replies_matched: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MdaConfig {
        &self.cfg
    }

    /// Adds a destination, discovered from source address `src`: at once, or once fewer than
    /// `parallel` are in progress.
    pub fn add_target(
        &mut self,
        now: Instant,
        dst: IpAddr,
        src: IpAddr,
    ) -> Result<(), crate::TargetError> {
        let active = self.targets.contains_key(&dst);
        self.waiting.push(dst, src, active)?;
        self.start_waiting(now);
        Ok(())
    }

    fn start_waiting(&mut self, now: Instant) {
        while let Some((dst, src)) = self.waiting.next(self.targets.len(), self.cfg.parallel) {
            self.targets.insert(
                dst,
                Target {
                    src,
                    probes: Vec::new(),
                    seen: HashMap::new(),
                    assumed: BTreeSet::new(),
                    checking: BTreeSet::new(),
                    ended: HashMap::new(),
                    flows: 0,
                    hop: self.cfg.first_ttl - 1,
                    outstanding: 0,
                    to_send: VecDeque::new(),
                    checked: BTreeSet::new(),
                    missing: 0,
                    stop: None,
                    per_packet: Vec::new(),
                    round_start: 0,
                    emitted: 0,
                    replies: 0,
                    server_state: None,
                },
            );
            self.events.push_back(MdaEvent::Started {
                target: dst,
                source: src,
            });
            if self.cfg.reverse.is_some() {
                // The presence check first (TTL 0 → state 1): the rounds start once it is
                // answered.
                if let Some(t) = self.targets.get_mut(&dst) {
                    t.to_send.push_back((0, 0, false));
                }
                self.scheduler.enqueue(dst);
            } else {
                self.plan(dst, now);
            }
        }
    }

    /// Number of destinations in progress.
    pub fn active(&self) -> usize {
        self.targets.len()
    }

    /// No new destinations start; those in progress go on.
    pub fn stop_starting(&mut self, _now: Now) {
        self.waiting.close();
    }

    /// Every destination ends now with what it found.
    pub fn interrupt(&mut self, now: Now) {
        self.stop_starting(now);
        let all: Vec<IpAddr> = self.targets.keys().copied().collect();
        for dst in all {
            if let Some(t) = self.targets.get_mut(&dst) {
                t.stop.get_or_insert(MdaStop::Interrupted);
                t.to_send.clear();
                t.outstanding = 0;
            }
            self.finish(dst, now.wall);
        }
    }

    /// Whether every destination is done and none waits.
    pub fn is_done(&self) -> bool {
        self.targets.is_empty() && self.waiting.is_empty()
    }

    /// Replies matched to a probe so far (see [`crate::Machine::replies_matched`]).
    pub fn replies_matched(&self) -> Option<u64> {
        Some(self.replies_matched)
    }

    // ---- the rounds ----------------------------------------------------------------------

    /// The flows that reached TTL `ttl` through each node (only flows that have not ended
    /// before it), by node: at the source (before the first hop) every flow.
    fn parents(t: &Target, first_ttl: u8, hop: u8) -> BTreeMap<Seen, Vec<u16>> {
        let mut out: BTreeMap<Seen, Vec<u16>> = BTreeMap::new();
        if hop < first_ttl {
            out.insert(Seen::Silent, (0..t.flows).collect());
            return out;
        }
        for f in 0..t.flows {
            if t.ended.get(&f).is_some_and(|&e| e <= hop) {
                continue;
            }
            if let Some(s) = t.seen.get(&(f, hop)) {
                out.entry(*s).or_default().push(f);
            }
        }
        out
    }

    /// Flows assumed to pass the only node of TTL `h` that met, at `h + 1`, a node no flow
    /// observed there reached from it: one per such node, to probe at `h` (not yet probed).
    /// Were TTL `h` not really one node (its first flows all went one way, the chance the
    /// stopping rule allows), such a flow may have come another way, and the link from the
    /// assumed node would not exist: it is only drawn once a probe at `h` shows the way.
    fn unconfirmed(t: &Target, parents: &BTreeMap<Seen, Vec<u16>>, h: u8) -> Vec<u16> {
        let next = h.wrapping_add(1);
        let mut out = Vec::new();
        let mut pending: BTreeSet<(Seen, Seen)> = BTreeSet::new();
        for (node, flows) in parents {
            let observed: BTreeSet<Seen> = flows
                .iter()
                .filter(|f| !t.assumed.contains(&(**f, h)))
                .filter_map(|f| t.seen.get(&(*f, next)).copied())
                .collect();
            for f in flows {
                if !t.assumed.contains(&(*f, h)) {
                    continue;
                }
                let Some(to @ Seen::Addr(_)) = t.seen.get(&(*f, next)).copied() else {
                    continue;
                };
                if observed.contains(&to) {
                    continue;
                }
                if t.checking.contains(&(*f, h)) {
                    // Checked, no answer (a round ends once all its probes have): another
                    // flow to the same node may try.
                    continue;
                }
                if pending.insert((*node, to)) {
                    out.push(*f);
                }
            }
        }
        out
    }

    /// Decides the next round of `dst`, or advances to the next hop, or finishes.
    fn plan(&mut self, dst: IpAddr, now: Instant) {
        loop {
            let cfg = &self.cfg;
            let Some(t) = self.targets.get_mut(&dst) else {
                return;
            };
            if t.stop.is_some() {
                break;
            }
            if t.probes.len() as u32 >= cfg.max_probes {
                t.stop = Some(MdaStop::MaxProbes);
                break;
            }
            let h = t.hop;
            let parents = Self::parents(t, cfg.first_ttl, h);
            if parents.is_empty() {
                // Every flow ended: reached the destination or an unreachable.
                t.stop = Some(MdaStop::Completed);
                break;
            }
            let Some(next) = h.checked_add(1).filter(|n| *n <= cfg.max_ttl) else {
                t.stop = Some(MdaStop::MaxTtl);
                break;
            };
            let total_at_h: usize = parents.values().map(Vec::len).sum();
            let mut plan: Vec<(u16, u8, bool)> = Vec::new();
            for f in Self::unconfirmed(t, &parents, h) {
                t.checking.insert((f, h));
                plan.push((f, h, false));
            }
            let mut new_flows = 0usize;
            let mut new_at_h = 0usize;
            let mut new_through: Option<(Seen, usize)> = None;
            for (node, flows) in &parents {
                let probed: Vec<Seen> = flows
                    .iter()
                    .filter_map(|f| t.seen.get(&(*f, next)).copied())
                    .collect();
                let mut distinct: Vec<Seen> = probed.clone();
                distinct.sort();
                distinct.dedup();
                let need = cfg
                    .stopping_point(distinct.len())
                    .saturating_sub(probed.len());
                // Per-packet check, once per node with two or more successors.
                let addrs = distinct
                    .iter()
                    .filter(|s| matches!(s, Seen::Addr(_)))
                    .count();
                if addrs >= 2 && !t.checked.contains(&(h, *node)) {
                    t.checked.insert((h, *node));
                    let answered: Vec<u16> = flows
                        .iter()
                        .copied()
                        .filter(|f| matches!(t.seen.get(&(*f, next)), Some(Seen::Addr(_))))
                        .take(cfg.per_packet_repeats())
                        .collect();
                    let repeats = answered
                        .iter()
                        .copied()
                        .cycle()
                        .take(cfg.per_packet_repeats());
                    plan.extend(repeats.map(|f| (f, next, true)));
                }
                if need == 0 {
                    continue;
                }
                // Known flows through the node not yet sent to the next TTL.
                let unprobed: Vec<u16> = flows
                    .iter()
                    .copied()
                    .filter(|f| !t.seen.contains_key(&(*f, next)))
                    .filter(|f| !t.ended.contains_key(f))
                    .take(need)
                    .collect();
                let short = need - unprobed.len();
                plan.extend(unprobed.into_iter().map(|f| (f, next, false)));
                if short == 0 {
                    continue;
                }
                if h < cfg.first_ttl {
                    // The source: every new flow goes through it.
                    new_flows += short;
                } else if parents.len() == 1 && matches!(node, Seen::Addr(_)) {
                    // The only node of its TTL (enumerated from the TTL before): every flow
                    // passes it, so new flows go straight to the next TTL, without a probe
                    // at this one to learn what is already known.
                    new_through = Some((*node, short));
                } else if *node == Seen::Silent && parents.len() > 1 {
                    // A few silent probes beside routers that answer (loss, a rate limit):
                    // their flows go on, but no new flows are spent looking for more.
                } else {
                    // Node control: new flows at TTL h, as many as the node's share of the
                    // flows seen there says will bring `short` more through it.
                    let share = flows.len() as f64 / total_at_h.max(1) as f64;
                    let n = ((short as f64) / share.max(0.01)).ceil() as usize;
                    new_at_h = new_at_h.max(n.clamp(short, short.saturating_mul(8).max(1)));
                }
            }
            let room = usize::from(cfg.max_flows()).saturating_sub(usize::from(t.flows));
            let wants_new = new_flows > 0 || new_at_h > 0 || new_through.is_some();
            if wants_new && room == 0 && plan.iter().all(|p| p.2) {
                t.stop = Some(MdaStop::FlowsExhausted);
                break;
            }
            for _ in 0..new_flows.min(room) {
                plan.push((t.flows, next, false));
                t.flows += 1;
            }
            if let Some((node, n)) = new_through {
                let room = usize::from(cfg.max_flows()).saturating_sub(usize::from(t.flows));
                for _ in 0..n.min(room) {
                    t.seen.insert((t.flows, h), node);
                    t.assumed.insert((t.flows, h));
                    plan.push((t.flows, next, false));
                    t.flows += 1;
                }
            }
            let room = usize::from(cfg.max_flows()).saturating_sub(usize::from(t.flows));
            for _ in 0..new_at_h.min(room) {
                plan.push((t.flows, h, false));
                t.flows += 1;
            }
            if !plan.is_empty() {
                let mut budget = (cfg.max_probes as usize).saturating_sub(t.probes.len());
                if let Some(r) = &cfg.reverse {
                    // Every request of a round outstanding at once needs an identifier of
                    // its own: rounds stay within half the block (the rest comes next round).
                    budget = budget.min(usize::from(r.ident_count / 2).max(1));
                }
                plan.truncate(budget);
                t.round_start = t.probes.len();
                t.to_send.extend(plan);
                self.scheduler.enqueue(dst);
                return;
            }
            // Hop `next` is enumerated: stream it, then go on from it.
            let silent = parents
                .values()
                .flatten()
                .filter_map(|f| t.seen.get(&(*f, next)))
                .all(|s| *s == Seen::Silent);
            t.hop = next;
            if silent {
                t.missing += 1;
                if cfg.max_missing > 0 && t.missing >= cfg.max_missing {
                    t.stop = Some(MdaStop::MaxMissing);
                }
            } else {
                t.missing = 0;
            }
            self.stream(dst, false);
        }
        self.finish(dst, SystemTime::UNIX_EPOCH);
        let _ = now;
    }

    /// Streams the TTLs enumerated since the last call.
    /// A TTL is final once the next one is enumerated (until then, node control may still
    /// send new flows to it); at the end (`all`), every TTL probed.
    fn stream(&mut self, dst: IpAddr, all: bool) {
        let Some(t) = self.targets.get_mut(&dst) else {
            return;
        };
        let first = self.cfg.first_ttl;
        let last = if all {
            t.probes.iter().map(|p| u16::from(p.ttl)).max().unwrap_or(0)
        } else {
            u16::from(t.hop).saturating_sub(1)
        };
        while u16::from(first) + u16::from(t.emitted) <= last {
            let ttl = first + t.emitted;
            t.emitted += 1;
            if let Some(hop) = graph_hop(t, ttl, &self.cfg) {
                let links = links(t).into_iter().filter(|l| l.ttl + 1 == ttl).collect();
                self.events.push_back(MdaEvent::Hop {
                    target: dst,
                    hop,
                    links,
                });
            }
        }
    }

    fn finish(&mut self, dst: IpAddr, wall: SystemTime) {
        if self
            .targets
            .get(&dst)
            .is_none_or(|t| t.stop.is_none() || t.outstanding > 0)
        {
            return;
        }
        self.stream(dst, true);
        let Some(t) = self.targets.remove(&dst) else {
            return;
        };
        self.scheduler.remove(&dst);
        for p in &t.probes {
            if p.ident != 0 && matches!(p.state, ProbeState::Awaiting { .. }) {
                self.ids.expired(p.ident);
            }
        }
        let graph = build_graph(&t, &self.cfg);
        let start = t
            .probes
            .iter()
            .map(|p| p.captured_wall.unwrap_or(p.sent_wall))
            .min();
        let end = t
            .probes
            .iter()
            .filter_map(|p| p.reply_wall)
            .max()
            .into_iter()
            .chain(start)
            .chain((wall != SystemTime::UNIX_EPOCH).then_some(wall))
            .max();
        let fmt = |w: Option<SystemTime>| {
            humantime::format_rfc3339_micros(w.unwrap_or(SystemTime::UNIX_EPOCH)).to_string()
        };
        let reverse = self.cfg.reverse.is_some();
        let (source, destination) = if reverse { (dst, t.src) } else { (t.src, dst) };
        let result = MdaResult {
            direction: reverse.then(|| "reverse".to_string()),
            destination,
            source,
            protocol: self.cfg.protocol,
            ip_version: if dst.is_ipv4() { 4 } else { 6 },
            start: fmt(start),
            end: fmt(end),
            stop_reason: t.stop.unwrap_or(MdaStop::Interrupted),
            confidence: self.cfg.confidence,
            diamonds: graph.diamonds(),
            graph,
            per_packet: t.per_packet,
            flows: u32::from(t.flows),
            probes_sent: t.probes.len() as u32,
            replies: t.replies,
            server_state: t.server_state,
        };
        self.events.push_back(MdaEvent::Finished(Box::new(result)));
    }

    // ---- probes --------------------------------------------------------------------------

    /// Writes probe number `n` of flow `f` with TTL `ttl` into `buf`; returns its 5-tuple.
    fn build(
        &self,
        src: IpAddr,
        dst: IpAddr,
        f: u16,
        ttl: u8,
        n: u16,
        buf: &mut Vec<u8>,
    ) -> Option<FlowKey> {
        let c = &self.cfg;
        let (sport, dport) = probe_ports(c, f).unwrap_or((0, 0));
        let ip = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => IpFields::V4(Ipv4Fields {
                src: s,
                dst: d,
                ttl,
                tos: c.tos,
                dont_fragment: false,
                ident: n,
            }),
            (IpAddr::V6(s), IpAddr::V6(d)) => IpFields::V6(Ipv6Fields {
                src: s,
                dst: d,
                hop_limit: ttl,
                traffic_class: c.tos,
                flow_label: flow_label(f),
            }),
            _ => return None,
        };
        let h = if dst.is_ipv4() { 20 } else { 40 };
        let (transport, payload): (TransportFields, Vec<u8>) = match c.protocol {
            // Two payload bytes that set the checksum to n (Paris traceroute's trick).
            Protocol::Udp => (
                TransportFields::Udp(UdpFields {
                    src_port: sport,
                    dst_port: dport,
                }),
                vec![0, 0],
            ),
            Protocol::Tcp => (
                TransportFields::Tcp(TcpFields {
                    src_port: sport,
                    dst_port: dport,
                    seq: (u32::from(c.marker) << 16) | u32::from(n),
                    ack: 0,
                    flags: 0x02,
                    window: 64240,
                }),
                Vec::new(),
            ),
            // n in the payload (echoed back and quoted in full over IPv6).
            Protocol::Icmp => (
                TransportFields::Echo(EchoFields {
                    ident: c.marker,
                    seq: 0,
                }),
                n.to_be_bytes().to_vec(),
            ),
        };
        emit(&ip, &transport, &payload, buf);
        match c.protocol {
            Protocol::Udp => force_checksum(buf, h + 6, h + 8, n),
            // The sequence number compensates so that the checksum is the flow's.
            Protocol::Icmp => force_checksum(buf, h + 2, h + 6, icmp_flow_checksum(f)),
            Protocol::Tcp => {}
        }
        Some(FlowKey {
            protocol: c.protocol,
            local: std::net::SocketAddr::new(src, sport),
            remote: std::net::SocketAddr::new(dst, dport),
        })
    }

    /// Reverse mode: writes the request for flow `f` at TTL `ttl` (TTL 0: the presence
    /// check) with identifier `ident` into `buf`.
    #[allow(clippy::too_many_arguments)]
    fn build_request(
        &self,
        r: &ReverseMda,
        src: IpAddr,
        dst: IpAddr,
        f: u16,
        ttl: u8,
        ident: u16,
        buf: &mut Vec<u8>,
    ) -> Option<FlowKey> {
        let protocol = match (self.cfg.protocol, dst) {
            (Protocol::Udp, _) => 17,
            (Protocol::Tcp, _) => 6,
            (Protocol::Icmp, IpAddr::V4(_)) => 1,
            (Protocol::Icmp, IpAddr::V6(_)) => 58,
        };
        let ip_header = if dst.is_ipv4() { 20 } else { 40 };
        let presence = ttl == 0;
        let req = revtr::Request {
            ident,
            seq: 0,
            ttl,
            // The presence check as the reference client sends it (protocol and flow 0).
            protocol: if presence { 0 } else { protocol },
            flow: if presence {
                0
            } else {
                let span = u32::from(u16::MAX - REVERSE_FLOW_BASE) + 1;
                let f = (u32::from(r.flow_offset) + u32::from(f)) % span;
                REVERSE_FLOW_BASE + f as u16
            },
            indirect: None,
            flow_probe: None,
            // Zeros: a first byte 0x2X would read as an extension (reference §1.3).
            padding: r.pad.saturating_sub(ip_header + revtr::REQUEST_LEN),
        };
        let mut icmp = Vec::new();
        // TOS / traffic class and flow label constant (0): the server copies them into its
        // probe, and routers may hash them; only the flow value varies.
        let ip = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                req.emit_v4(&mut icmp);
                IpFields::V4(Ipv4Fields {
                    src: s,
                    dst: d,
                    ttl: 64,
                    tos: 0,
                    dont_fragment: false,
                    ident: 1,
                })
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                req.emit_v6(&s, &d, &mut icmp);
                IpFields::V6(Ipv6Fields {
                    src: s,
                    dst: d,
                    hop_limit: 64,
                    traffic_class: 0,
                    flow_label: 0,
                })
            }
            _ => return None,
        };
        emit_icmp_message(&ip, &icmp, buf);
        Some(FlowKey {
            protocol: Protocol::Icmp,
            local: std::net::SocketAddr::new(src, 0),
            remote: std::net::SocketAddr::new(dst, 0),
        })
    }

    /// Reverse mode: a captured packet, a server's response to one of our requests
    /// (anything else is ignored).
    fn handle_response(
        &mut self,
        now: Instant,
        ts: SystemTime,
        pkt: &svctr_wire::packet::Packet<'_>,
        bytes: &[u8],
    ) {
        let Transport::Icmp(IcmpMessage::EchoReply { ident, .. }) = pkt.transport else {
            return;
        };
        let server = pkt.ip.src;
        match self.ids.get(ident) {
            Some((dst, _)) if dst == server => {}
            _ => return,
        }
        let Some(t) = self.targets.get(&server) else {
            return;
        };
        if pkt.ip.dst != t.src {
            return;
        }
        let Some((_, n)) = self.ids.answered(ident) else {
            return;
        };
        let (family, h) = match server {
            IpAddr::V4(_) => (Family::V4, usize::from(bytes[0] & 0x0f) * 4),
            IpAddr::V6(_) => (Family::V6, 40),
        };
        let response = bytes
            .get(h..)
            .and_then(|icmp| Response::parse(family, icmp).ok());
        let Some(ttl) = t.probes.get(usize::from(n) - 1).map(|p| p.ttl) else {
            return;
        };
        match (ttl, response.map(|r| r.body)) {
            (
                0,
                Some(ResponseBody::Error {
                    state: State::Ttl, ..
                }),
            ) => {
                // The presence check answered: a server is there; the rounds begin.
                let Some(t) = self.targets.get_mut(&server) else {
                    return;
                };
                if let Some(p) = t.probes.get_mut(usize::from(n) - 1) {
                    if matches!(p.state, ProbeState::Awaiting { .. }) {
                        p.state = ProbeState::Answered;
                        p.reply_wall = Some(ts);
                        t.outstanding -= 1;
                        t.replies += 1;
                        self.replies_matched += 1;
                    }
                }
                self.round_done(server, now, ts);
            }
            // A plain echo reply (the kernel answering a ping), or a response that is not
            // the server's: nobody speaks reverse traceroute there.
            (_, None) | (0, Some(_)) => self.abort(server, MdaStop::NotSupported, None, ts),
            (_, Some(ResponseBody::Error { state, .. })) => {
                self.abort(server, MdaStop::ServerError, Some(u8::from(state)), ts)
            }
            (_, Some(ResponseBody::Success { hop, rtt_ns, .. })) => {
                let Some(t) = self.targets.get(&server) else {
                    return;
                };
                // The server's probe met this host, or an address that answered the TTL
                // before for the same flow: a NAT in front of us (routers appear once on a
                // flow's path).
                let flow = t.probes.get(usize::from(n) - 1).map(|p| p.flow);
                let again = flow
                    .zip(ttl.checked_sub(1))
                    .is_some_and(|(f, before)| t.seen.get(&(f, before)) == Some(&Seen::Addr(hop)));
                let reply = ProbeReply {
                    addr: Some(hop),
                    rtt_ms: Some(rtt_ns as f64 / 1e6),
                    reply_ttl: Some(pkt.ip.ttl),
                    ..ProbeReply::default()
                };
                self.reply(now, ts, server, n, reply, again);
            }
        }
    }

    /// Ends `dst`'s discovery at once (reverse mode: the server cannot serve it).
    fn abort(&mut self, dst: IpAddr, why: MdaStop, state: Option<u8>, wall: SystemTime) {
        let Some(t) = self.targets.get_mut(&dst) else {
            return;
        };
        t.stop.get_or_insert(why);
        t.server_state = t.server_state.or(state);
        t.to_send.clear();
        t.outstanding = 0;
        self.finish(dst, wall);
    }

    /// The probe number a probe's bytes carry, if they are one of ours (`t`: the transport
    /// header and what follows; `ident`: IPv4 identification).
    fn probe_number(&self, v6: bool, ident: u16, t: &[u8]) -> Option<u16> {
        let c = &self.cfg;
        let n = match c.protocol {
            Protocol::Udp => {
                let block = c.sport..c.sport.saturating_add(c.reserved_ports());
                if !block.contains(&be16(t, 0)?) {
                    return None;
                }
                be16(t, 6)?
            }
            Protocol::Tcp => {
                let (sport, seq) = (be16(t, 0)?, be32(t, 4)?);
                let block = c.sport..c.sport.saturating_add(c.source_ports.max(1));
                if !block.contains(&sport) || (seq >> 16) as u16 != c.marker {
                    return None;
                }
                (seq & 0xffff) as u16
            }
            Protocol::Icmp => {
                if be16(t, 4)? != c.marker {
                    return None;
                }
                if v6 {
                    be16(t, 8)?
                } else {
                    ident
                }
            }
        };
        (n != 0).then_some(n)
    }

    /// A captured IP packet: our probes leaving, ICMP errors, the destination's answers.
    pub fn handle_packet(&mut self, now: Instant, ts: SystemTime, bytes: &[u8]) {
        let Ok(pkt) = parse_ip(bytes) else { return };
        if self.cfg.reverse.is_some() {
            self.handle_response(now, ts, &pkt, bytes);
            return;
        }
        let v6 = pkt.ip.src.is_ipv6();
        let h = if v6 {
            40
        } else {
            usize::from(bytes[0] & 0x0f) * 4
        };
        let body = bytes.get(h..).unwrap_or_default();
        // Our own probe leaving: its kernel timestamp.
        if self.targets.contains_key(&pkt.ip.dst) {
            let is_probe = match &pkt.transport {
                Transport::Icmp(IcmpMessage::EchoRequest { .. }) => true,
                Transport::Icmp(_) => false,
                _ => true,
            };
            if is_probe {
                if let Some(n) = self.probe_number(v6, pkt.ip.ident, body) {
                    if let Some(p) = self
                        .targets
                        .get_mut(&pkt.ip.dst)
                        .and_then(|t| t.probes.get_mut(usize::from(n) - 1))
                    {
                        if p.ttl == pkt.ip.ttl && p.captured_wall.is_none() {
                            p.captured_wall = Some(ts);
                        }
                    }
                    return;
                }
            }
        }
        let (dst, n, reply, ends) = match &pkt.transport {
            Transport::Icmp(IcmpMessage::Error(err)) => {
                let q = &err.quote;
                if !self.targets.contains_key(&q.dst) {
                    return;
                }
                let Some(n) = self.probe_number(v6, q.ident, q.transport) else {
                    return;
                };
                let unreachable = err.kind == svctr_wire::icmp::ErrorKind::DestinationUnreachable;
                (
                    q.dst,
                    n,
                    error_reply(pkt.ip.src, pkt.ip.ttl, err),
                    unreachable,
                )
            }
            Transport::Icmp(IcmpMessage::EchoReply { ident, .. })
                if self.cfg.protocol == Protocol::Icmp && *ident == self.cfg.marker =>
            {
                let Some(n) = be16(body, 8) else { return };
                let reply = ProbeReply {
                    addr: Some(pkt.ip.src),
                    icmp_type: Some(if v6 { 129 } else { 0 }),
                    icmp_code: Some(0),
                    reply_ttl: Some(pkt.ip.ttl),
                    ..ProbeReply::default()
                };
                (pkt.ip.src, n, reply, true)
            }
            Transport::Tcp(t) if self.cfg.protocol == Protocol::Tcp => {
                // SYN-ACK or RST from the destination acknowledges seq + 1.
                let seq = t.ack.wrapping_sub(1);
                if t.flags & 0x14 == 0 || (seq >> 16) as u16 != self.cfg.marker {
                    return;
                }
                let reply = ProbeReply {
                    addr: Some(pkt.ip.src),
                    reply_ttl: Some(pkt.ip.ttl),
                    tcp_flags: Some(t.flags),
                    ..ProbeReply::default()
                };
                (pkt.ip.src, (seq & 0xffff) as u16, reply, true)
            }
            _ => return,
        };
        self.reply(now, ts, dst, n, reply, ends);
    }

    fn reply(
        &mut self,
        now: Instant,
        ts: SystemTime,
        dst: IpAddr,
        n: u16,
        reply: ProbeReply,
        ends: bool,
    ) {
        let Some(t) = self.targets.get_mut(&dst) else {
            return;
        };
        let Some(p) = n
            .checked_sub(1)
            .and_then(|i| t.probes.get_mut(usize::from(i)))
        else {
            return;
        };
        if !matches!(p.state, ProbeState::Awaiting { .. }) {
            return; // late, or a duplicate
        }
        let Some(addr) = reply.addr else { return };
        p.state = ProbeState::Answered;
        p.reply_wall = Some(ts);
        let sent = p.captured_wall.unwrap_or(p.sent_wall);
        let mut reply = reply;
        reply.tag = n;
        reply.ip_id = dst.is_ipv4().then_some(n);
        if reply.rtt_ms.is_none() {
            reply.rtt_ms = ts
                .duration_since(sent)
                .ok()
                .map(|d| d.as_nanos() as f64 / 1e6);
        }
        p.reply = Some(reply);
        let (f, ttl, check) = (p.flow, p.ttl, p.check);
        if let Some(r) = &mut p.reply {
            r.flow = Some(f);
            // Forward only: a reverse discovery's probes are the server's, their ports its.
            if let Some((sport, dport)) =
                probe_ports(&self.cfg, f).filter(|_| self.cfg.reverse.is_none())
            {
                (r.src_port, r.dst_port) = (Some(sport), Some(dport));
            }
        }
        t.replies += 1;
        self.replies_matched += 1;
        t.outstanding -= 1;
        let seen = Seen::Addr(addr);
        if check {
            // The per-packet check: the same flow met another router than before.
            if t.seen
                .get(&(f, ttl))
                .is_some_and(|s| matches!(s, Seen::Addr(a) if *a != addr))
            {
                let parent = t.seen.get(&(f, ttl - 1)).copied();
                if let Some(Seen::Addr(p)) = parent {
                    let node = PerPacket {
                        ttl: ttl - 1,
                        addr: p,
                    };
                    if !t.per_packet.contains(&node) {
                        t.per_packet.push(node);
                    }
                }
                t.stop = Some(MdaStop::PerPacketBalancing);
                t.to_send.clear();
            }
        } else {
            if t.assumed.remove(&(f, ttl)) {
                // The check of an assumption: what the flow really met.
                t.seen.insert((f, ttl), seen);
            }
            match t.seen.get(&(f, ttl)) {
                Some(Seen::Addr(_)) => {}
                _ => {
                    t.seen.insert((f, ttl), seen);
                }
            }
            let end = if self.cfg.reverse.is_some() {
                t.src
            } else {
                dst
            };
            if addr == end || ends {
                let e = t.ended.entry(f).or_insert(ttl);
                *e = (*e).min(ttl);
            }
        }
        self.round_done(dst, now, ts);
    }

    /// After a probe resolved: plan the next round when the round is over.
    fn round_done(&mut self, dst: IpAddr, now: Instant, wall: SystemTime) {
        let Some(t) = self.targets.get(&dst) else {
            return;
        };
        if t.outstanding > 0 || !t.to_send.is_empty() {
            self.rearm(dst);
            return;
        }
        if t.stop.is_some() {
            self.finish(dst, wall);
            self.start_waiting(now);
            return;
        }
        self.plan(dst, now);
        if !self.targets.contains_key(&dst) {
            self.start_waiting(now);
        } else {
            self.rearm(dst);
        }
    }

    fn rearm(&mut self, dst: IpAddr) {
        let Some(t) = self.targets.get(&dst) else {
            return;
        };
        let deadline = t.probes[t.round_start.min(t.probes.len())..]
            .iter()
            .filter_map(|p| match p.state {
                ProbeState::Awaiting { deadline } => Some(deadline),
                _ => None,
            })
            .min();
        if let Some(at) = deadline {
            self.scheduler.arm(dst, at);
        }
    }

    /// Expires overdue probes (their flows met `*`), then plans the rounds that are over.
    pub fn handle_timeout(&mut self, now: Now) {
        for dst in self.scheduler.take_due(now.mono) {
            let Some(t) = self.targets.get_mut(&dst) else {
                continue;
            };
            let from = t.round_start.min(t.probes.len());
            for p in &mut t.probes[from..] {
                if let ProbeState::Awaiting { deadline } = p.state {
                    if deadline <= now.mono {
                        p.state = ProbeState::Silent;
                        t.outstanding -= 1;
                        if p.ident != 0 {
                            // Not reused soon: its response may still come.
                            self.ids.expired(p.ident);
                        }
                        if p.ttl == 0 {
                            // The presence check (reverse mode) had no answer.
                            t.stop.get_or_insert(MdaStop::NoServer);
                            t.to_send.clear();
                        } else if !p.check {
                            t.seen.entry((p.flow, p.ttl)).or_insert(Seen::Silent);
                        }
                    }
                }
            }
            self.round_done(dst, now.mono, now.wall);
        }
    }

    /// The next probe to send, into `buf`.
    pub fn poll_transmit(&mut self, now: Now, buf: &mut Vec<u8>) -> Option<Transmit> {
        while let Some(dst) = self.scheduler.dequeue() {
            let Some(t) = self.targets.get_mut(&dst) else {
                continue;
            };
            let Some((f, ttl, check)) = t.to_send.pop_front() else {
                continue;
            };
            let n = match u16::try_from(t.probes.len() + 1) {
                Ok(n) if n < u16::MAX => n,
                _ => {
                    t.stop = Some(MdaStop::MaxProbes);
                    t.to_send.clear();
                    self.round_done(dst, now.mono, now.wall);
                    continue;
                }
            };
            let ident = match self.cfg.reverse {
                Some(_) => match self.ids.take((dst, n)) {
                    Some(id) => id,
                    None => {
                        // Every identifier outstanding (rounds stay within half the block,
                        // so only with many servers at once): try again when one is free.
                        t.to_send.push_front((f, ttl, check));
                        self.scheduler
                            .arm(dst, now.mono + Duration::from_millis(10));
                        continue;
                    }
                },
                None => 0,
            };
            t.probes.push(Probe {
                flow: f,
                ident,
                ttl,
                check,
                state: ProbeState::Awaiting {
                    deadline: now.mono + self.cfg.timeout,
                },
                sent_wall: now.wall,
                captured_wall: None,
                reply: None,
                reply_wall: None,
            });
            t.outstanding += 1;
            let src = t.src;
            let more = !t.to_send.is_empty();
            let built = match &self.cfg.reverse {
                Some(r) => self.build_request(r, src, dst, f, ttl, ident, buf),
                None => self.build(src, dst, f, ttl, n, buf),
            };
            let Some(flow) = built else {
                continue;
            };
            if more {
                self.scheduler.enqueue(dst);
            }
            self.rearm(dst);
            return Some(Transmit {
                dst,
                len: buf.len(),
                flow,
                // A request travels with an ordinary TTL: the one it asks for is inside.
                ttl: if ident != 0 { 64 } else { ttl },
                ident: n,
            });
        }
        None
    }

    /// Whether probes are due now.
    pub fn has_pending_transmit(&self) -> bool {
        self.scheduler.has_queued()
    }

    /// The driver could not send `tx`: the probe counts as silent.
    pub fn handle_send_error(&mut self, now: Now, tx: &Transmit, error: String) {
        if let Some(p) = self
            .targets
            .get_mut(&tx.dst)
            .and_then(|t| t.probes.get_mut(usize::from(tx.ident) - 1))
        {
            if matches!(p.state, ProbeState::Awaiting { .. }) {
                p.state = ProbeState::Awaiting { deadline: now.mono };
                p.reply = Some(ProbeReply {
                    error: Some(error),
                    ..ProbeReply::default()
                });
            }
        }
        self.scheduler.arm(tx.dst, now.mono);
    }

    /// When to call `handle_timeout` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.scheduler.next_deadline()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<MdaEvent> {
        self.events.pop_front()
    }
}

crate::machine::machine_by_inherent_methods!(Mda, MdaEvent);

/// The reply an ICMP error carries.
fn error_reply(from: IpAddr, ttl: u8, err: &IcmpError<'_>) -> ProbeReply {
    ProbeReply {
        addr: Some(from),
        icmp_type: Some(err.icmp_type),
        icmp_code: Some(err.icmp_code),
        reply_ttl: Some(ttl),
        quoted_ttl: Some(err.quote.ttl),
        mpls: err.mpls.iter().map(MplsEntry::from).collect(),
        interfaces: err.interfaces.iter().map(InterfaceEntry::from).collect(),
        mtu: (err.mtu != 0).then_some(err.mtu),
        ..ProbeReply::default()
    }
}

/// A TTL's nodes: its probes (checks excluded) grouped by who answered.
fn graph_hop(t: &Target, ttl: u8, cfg: &MdaConfig) -> Option<GraphHop> {
    let probes: Vec<ProbeReply> = t
        .probes
        .iter()
        .filter(|p| p.ttl == ttl && !p.check)
        .map(|p| {
            p.reply.clone().unwrap_or_else(|| {
                // Unanswered: its flow and ports all the same (forward only, as in `reply`).
                let ports = probe_ports(cfg, p.flow).filter(|_| cfg.reverse.is_none());
                ProbeReply {
                    tag: 0,
                    flow: Some(p.flow),
                    src_port: ports.map(|p| p.0),
                    dst_port: ports.map(|p| p.1),
                    ..ProbeReply::default()
                }
            })
        })
        .collect();
    (!probes.is_empty()).then(|| GraphHop::from_hop(&crate::Hop { ttl, probes }))
}

/// The graph of a discovery: every TTL probed, the links one flow took.
fn build_graph(t: &Target, cfg: &MdaConfig) -> PathGraph {
    let mut ttls: Vec<u8> = t
        .probes
        .iter()
        .filter(|p| !p.check && p.ttl > 0)
        .map(|p| p.ttl)
        .collect();
    ttls.sort_unstable();
    ttls.dedup();
    let hops = ttls
        .iter()
        .filter_map(|&ttl| graph_hop(t, ttl, cfg))
        .collect();
    PathGraph {
        hops,
        links: links(t),
    }
}

/// The links one flow took: it met `from` at a TTL and `to` at the next, in order (both
/// observed, never assumed).
fn links(t: &Target) -> Vec<Link> {
    let mut links = BTreeSet::new();
    for (&(f, ttl), s) in &t.seen {
        if t.assumed.contains(&(f, ttl)) {
            continue;
        }
        let next = ttl.checked_add(1).and_then(|n| t.seen.get(&(f, n)));
        if let (Seen::Addr(from), Some(Seen::Addr(to))) = (s, next) {
            links.insert(Link {
                ttl,
                from: *from,
                to: *to,
            });
        }
    }
    links.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stopping_points_are_the_papers_within_a_probe() {
        let c = MdaConfig::default();
        let n: Vec<usize> = (1..=6).map(|k| c.stopping_point(k)).collect();
        assert_eq!(n, vec![8, 14, 21, 27, 34, 42]);
        assert_eq!(c.per_packet_repeats(), 7);
        assert_eq!(c.stopping_point(0), c.stopping_point(1));
        let strict = MdaConfig {
            confidence: 0.99,
            ..c
        };
        assert!(strict.stopping_point(1) > 8);
    }

    #[test]
    fn flow_labels_and_checksums_are_distinct_and_never_zero() {
        let labels: BTreeSet<u32> = (0..5000u16).map(flow_label).collect();
        assert_eq!(labels.len(), 5000);
        assert!(labels.iter().all(|l| *l != 0 && *l <= 0xfffff));
        assert!((0..0x7fff)
            .map(icmp_flow_checksum)
            .all(|c| c != 0 && c != 0xffff));
    }
}

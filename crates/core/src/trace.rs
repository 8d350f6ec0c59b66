//! The state machine of one trace: which probe goes out when, which reply belongs to which
//! probe, and when the trace is over.
//!
//! Probes are laid out TTL-major: index `(ttl - first_ttl) * probes_per_hop + attempt`. They are
//! sent in index order; the algorithm only decides *when* the next one may go:
//! * concurrent: right after the previous one (plus the inter-probe / inter-hop gap);
//! * hop-by-hop: the next TTL waits until every probe of the previous TTL is resolved;
//! * packet-by-packet: every probe waits until the previous one is resolved.
//!
//! Stop rules are evaluated on the resolved *prefix* of TTLs, in TTL order, so that the outcome
//! is the same whatever order replies arrive in. A reply from the remote, from a `stop_at`
//! address, or a Destination Unreachable lowers the TTL limit at once, cancelling the probes
//! above it, so the trace does not wait for them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use svctr_wire::icmp::{ErrorKind, IcmpError, InterfaceInfo, MplsLabel};

use crate::config::{Algorithm, TraceConfig};
use crate::flow::FlowKey;
use crate::probe::ProbeShape;
use crate::result::{
    Endpoint, FlowInfo, Hop, InterfaceEntry, MplsEntry, ProbeReply, StopReason, TraceResult,
};

#[derive(Debug, Clone, PartialEq)]
enum ProbeState {
    NotSent,
    Awaiting {
        deadline: Instant,
    },
    Replied,
    TimedOut,
    Failed(String),
    /// Never sent, or no longer awaited, because the trace stopped below its TTL.
    Cancelled {
        was_sent: bool,
    },
}

impl ProbeState {
    fn is_resolved(&self) -> bool {
        !matches!(self, Self::NotSent | Self::Awaiting { .. })
    }
}

#[derive(Debug, Clone)]
struct Reply {
    addr: IpAddr,
    wall: SystemTime,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
    reply_ttl: u8,
    quoted_ttl: Option<u8>,
    tcp_flags: Option<u8>,
    unreachable: bool,
    mpls: Vec<MplsEntry>,
    interfaces: Vec<InterfaceEntry>,
    mtu: Option<u32>,
}

/// A reply as the engines hand it to a trace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplyInfo<'a> {
    pub(crate) from: IpAddr,
    pub(crate) reply_ttl: u8,
    /// ICMP type and code (None for a TCP reply from the destination).
    pub(crate) icmp_type: Option<u8>,
    pub(crate) icmp_code: Option<u8>,
    /// The TTL the router saw, from the quote (None for a reply that quotes nothing).
    pub(crate) quoted_ttl: Option<u8>,
    /// TCP flags of a TCP reply (SYN-ACK or RST from the destination).
    pub(crate) tcp_flags: Option<u8>,
    /// A Destination Unreachable: the probe's packets go no further.
    pub(crate) unreachable: bool,
    pub(crate) mpls: &'a [MplsLabel],
    pub(crate) interfaces: &'a [InterfaceInfo],
    /// The next-hop MTU an ICMP error carried (0: none).
    pub(crate) mtu: u32,
}

impl<'a> ReplyInfo<'a> {
    /// The reply carried by an ICMP error.
    pub(crate) fn from_icmp_error(from: IpAddr, reply_ttl: u8, err: &'a IcmpError<'_>) -> Self {
        Self {
            from,
            reply_ttl,
            icmp_type: Some(err.icmp_type),
            icmp_code: Some(err.icmp_code),
            quoted_ttl: Some(err.quote.ttl),
            tcp_flags: None,
            unreachable: err.kind == ErrorKind::DestinationUnreachable,
            mpls: &err.mpls,
            interfaces: &err.interfaces,
            mtu: err.mtu,
        }
    }
}

#[derive(Debug, Clone)]
struct Probe {
    ttl: u8,
    ident: u16,
    shape: Option<ProbeShape>,
    state: ProbeState,
    /// Wall clock read just before the send: used only if the capture of the probe is missing.
    sent_wall: Option<SystemTime>,
    /// Kernel timestamp of the probe's own capture.
    captured_wall: Option<SystemTime>,
    reply: Option<Reply>,
}

impl Probe {
    /// A probe of TTL `ttl` not sent yet.
    fn unsent(ttl: u8) -> Self {
        Self {
            ttl,
            ident: 0,
            shape: None,
            state: ProbeState::NotSent,
            sent_wall: None,
            captured_wall: None,
            reply: None,
        }
    }

    fn send_time(&self) -> Option<SystemTime> {
        self.captured_wall.or(self.sent_wall)
    }
}

/// A probe the trace wants sent now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Due {
    pub(crate) index: usize,
    pub(crate) ttl: u8,
    pub(crate) ident: u16,
}

/// What a reply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyOutcome {
    Matched,
    /// No probe awaits this identification (late, duplicate, another tool's, spoofed).
    NoProbe,
}

#[derive(Debug)]
pub(crate) struct Trace {
    key: FlowKey,
    algorithm: Algorithm,
    first_ttl: u8,
    probes_per_hop: u8,
    /// TTL limit from the config and the remote's distance.
    cap_ttl: u8,
    cap_from_remote: bool,
    /// Highest TTL still of interest; lowered by stop rules.
    limit_ttl: u8,
    remote_distance: Option<u8>,
    probes: Vec<Probe>,
    by_ident: HashMap<u16, usize>,
    /// IPv6 TCP probes carry their tag as a sequence number (see the probe module): the map
    /// from the number back to the tag.
    by_seq: HashMap<u32, u16>,
    /// The next probe's tag; tags advance by `tag_stride` (the flow tracer keeps its process
    /// slot in the low bits, see `TraceConfig::slot`) and skip 0.
    next_ident: u16,
    tag_stride: u16,
    cursor: usize,
    /// Every probe below this index is resolved. Probes are sent in index order at
    /// non-decreasing times with one timeout, so the awaited probe with the earliest deadline
    /// is the first awaited one at or above `oldest`: timers cost O(1) amortized, not a scan.
    oldest: usize,
    next_send: Option<Instant>,
    /// No probe goes before this instant (a retry after probes that failed to be sent).
    resend_after: Option<Instant>,
    /// TTLs of the prefix already evaluated by the stop rules.
    evaluated: u8,
    missing: u8,
    stop: Option<StopReason>,
    /// Set when probing must stop for a reason outside the path (flow end, interrupt).
    halt: Option<StopReason>,
    pending: usize,
    sent: u32,
    replies: u32,
    inter_probe: Duration,
    inter_hop: Duration,
    timeout: Duration,
    max_missing: u8,
    stop_at: Vec<IpAddr>,
    max_in_flight: usize,
    /// Extra rounds for a TTL nobody answered, and the rounds used per TTL.
    retries: u8,
    retries_used: Vec<u8>,
    /// TTLs already handed out by `take_new_hops`.
    emitted: u8,
}

impl Trace {
    pub(crate) fn new(
        key: FlowKey,
        cfg: &TraceConfig,
        remote_distance: Option<u8>,
        first_ident: u16,
        tag_stride: u16,
        now: Instant,
    ) -> Self {
        let tag_stride = tag_stride.max(1);
        let (cap_ttl, cap_from_remote) = match remote_distance {
            Some(d) if !cfg.probe_remote && d < cfg.max_ttl => (d, true),
            _ => (cfg.max_ttl, false),
        };
        let hops = usize::from(cap_ttl.saturating_sub(cfg.first_ttl)) + 1;
        let count = if cap_ttl < cfg.first_ttl {
            0
        } else {
            hops * usize::from(cfg.probes_per_hop)
        };
        let probes = (0..count)
            .map(|i| Probe::unsent(cfg.first_ttl + (i / usize::from(cfg.probes_per_hop)) as u8))
            .collect();
        let mut t = Self {
            key,
            algorithm: cfg.algorithm,
            first_ttl: cfg.first_ttl,
            probes_per_hop: cfg.probes_per_hop,
            cap_ttl,
            cap_from_remote,
            limit_ttl: cap_ttl,
            remote_distance,
            probes,
            by_ident: HashMap::new(),
            by_seq: HashMap::new(),
            next_ident: if first_ident == 0 {
                tag_stride
            } else {
                first_ident
            },
            tag_stride,
            cursor: 0,
            oldest: 0,
            next_send: Some(now),
            resend_after: None,
            evaluated: 0,
            missing: 0,
            stop: None,
            halt: None,
            pending: 0,
            sent: 0,
            replies: 0,
            inter_probe: cfg.inter_probe,
            inter_hop: cfg.inter_hop,
            timeout: cfg.timeout,
            max_missing: cfg.max_missing,
            stop_at: cfg.stop_at.clone(),
            max_in_flight: cfg.max_in_flight,
            retries: cfg.retries,
            retries_used: vec![0; hops],
            emitted: 0,
        };
        if t.probes.is_empty() {
            t.stop = Some(StopReason::NothingToProbe);
            t.next_send = None;
        }
        t
    }

    fn window_full(&self) -> bool {
        self.max_in_flight != 0 && self.pending >= self.max_in_flight
    }

    /// When the probe at the cursor may go, if it may go at all: not halted or stopped, the
    /// window not full, and the probe still wanted (a stop rule may have cancelled it).
    pub(crate) fn send_at(&self) -> Option<Instant> {
        if self.halt.is_some() || self.stop.is_some() || self.window_full() {
            return None;
        }
        let p = self.probes.get(self.cursor)?;
        if p.ttl > self.limit_ttl || p.state != ProbeState::NotSent {
            return None;
        }
        match (self.next_send, self.resend_after) {
            (Some(at), Some(hold)) => Some(at.max(hold)),
            (at, _) => at,
        }
    }

    /// The probe to send now, if one is due.
    pub(crate) fn due(&self, now: Instant) -> Option<Due> {
        let at = self.send_at()?;
        if at > now {
            return None;
        }
        let p = &self.probes[self.cursor];
        Some(Due {
            index: self.cursor,
            ttl: p.ttl,
            ident: self.next_ident,
        })
    }

    /// Records that probe `due` was handed to the driver at `now` (`wall` read before sending).
    pub(crate) fn mark_sent(
        &mut self,
        due: Due,
        shape: ProbeShape,
        now: Instant,
        wall: SystemTime,
    ) {
        let p = &mut self.probes[due.index];
        p.ident = due.ident;
        p.shape = Some(shape);
        p.sent_wall = Some(wall);
        p.state = ProbeState::Awaiting {
            deadline: now + self.timeout,
        };
        self.by_ident.insert(due.ident, due.index);
        if let (true, Some(seq)) = (self.key.local.is_ipv6(), shape.tcp_seq) {
            self.by_seq.insert(seq, due.ident);
        }
        self.pending += 1;
        self.sent += 1;
        // Identification 0 is skipped: Linux fills in its own value for 0 (see probe.rs).
        self.next_ident = match self.next_ident.wrapping_add(self.tag_stride) {
            0 => self.tag_stride,
            n => n,
        };
        self.cursor += 1;
        self.schedule_next(now);
    }

    /// Whether an IPv6 TCP probe of this trace already uses sequence number `seq`.
    pub(crate) fn seq_taken(&self, seq: u32) -> bool {
        self.by_seq.contains_key(&seq)
    }

    /// The tag of the IPv6 TCP probe with sequence number `seq`.
    pub(crate) fn tag_of_seq(&self, seq: u32) -> Option<u16> {
        self.by_seq.get(&seq).copied()
    }

    /// The probe could not be built (flow state missing); the trace cannot go on.
    pub(crate) fn cannot_build(&mut self) {
        let idx = self.cursor;
        if let Some(p) = self.probes.get_mut(idx) {
            p.state = ProbeState::Failed("no TCP state to build a probe from".into());
        }
        self.halt(StopReason::Interrupted);
    }

    /// The driver failed to send probe `ident`.
    pub(crate) fn send_failed(&mut self, ident: u16, error: String, now: Instant) {
        if let Some(&i) = self.by_ident.get(&ident) {
            if matches!(self.probes[i].state, ProbeState::Awaiting { .. }) {
                self.probes[i].state = ProbeState::Failed(error);
                self.pending -= 1;
                self.advance(now);
            }
        }
    }

    fn gap_before(&self, index: usize) -> Duration {
        if index > 0 && index % usize::from(self.probes_per_hop) == 0 {
            self.inter_hop
        } else {
            self.inter_probe
        }
    }

    /// Decides when the probe at the cursor may go, given the algorithm.
    fn schedule_next(&mut self, now: Instant) {
        let i = self.cursor;
        if i >= self.probes.len() {
            self.next_send = None;
            return;
        }
        let ready = match self.algorithm {
            Algorithm::Concurrent => true,
            Algorithm::HopByHop => {
                let pph = usize::from(self.probes_per_hop);
                // Within a TTL no waiting; the first probe of a TTL waits for the previous TTL.
                i % pph != 0
                    || self.probes[i - pph..i]
                        .iter()
                        .all(|p| p.state.is_resolved())
            }
            Algorithm::PacketByPacket => i == 0 || self.probes[i - 1].state.is_resolved(),
        };
        self.next_send = ready.then(|| now + self.gap_before(i));
    }

    /// Is this outgoing packet (identification, TTL, shape) one of our probes? Records its
    /// capture time if so.
    pub(crate) fn capture_of_probe(
        &mut self,
        ident: u16,
        ttl: u8,
        ip_len: u16,
        tcp_seq: Option<u32>,
        ts: SystemTime,
    ) -> bool {
        let Some(&i) = self.by_ident.get(&ident) else {
            return false;
        };
        let p = &mut self.probes[i];
        let shape_ok = p
            .shape
            .is_some_and(|s| s.ip_len == ip_len && (s.tcp_seq.is_none() || s.tcp_seq == tcp_seq));
        if p.ttl != ttl || !shape_ok {
            return false;
        }
        if p.captured_wall.is_none() {
            p.captured_wall = Some(ts);
        }
        true
    }

    /// Records a reply to the probe with identification `ident`, if that probe is awaiting one
    /// and `verify` accepts its shape (the caller checks the quoted fields that must equal the
    /// probe's, so that an error about another packet is never taken for a probe's).
    pub(crate) fn handle_reply(
        &mut self,
        now: Instant,
        ts: SystemTime,
        ident: u16,
        verify: impl FnOnce(&ProbeShape) -> bool,
        reply: ReplyInfo<'_>,
    ) -> ReplyOutcome {
        let Some(&i) = self.by_ident.get(&ident) else {
            return ReplyOutcome::NoProbe;
        };
        let p = &mut self.probes[i];
        let Some(shape) = p.shape else {
            return ReplyOutcome::NoProbe;
        };
        if !verify(&shape) || !matches!(p.state, ProbeState::Awaiting { .. }) {
            return ReplyOutcome::NoProbe;
        }
        p.state = ProbeState::Replied;
        p.reply = Some(Reply {
            addr: reply.from,
            wall: ts,
            icmp_type: reply.icmp_type,
            icmp_code: reply.icmp_code,
            reply_ttl: reply.reply_ttl,
            quoted_ttl: reply.quoted_ttl,
            tcp_flags: reply.tcp_flags,
            unreachable: reply.unreachable,
            mpls: reply.mpls.iter().map(MplsEntry::from).collect(),
            interfaces: reply.interfaces.iter().map(InterfaceEntry::from).collect(),
            mtu: (reply.mtu != 0).then_some(reply.mtu),
        });
        let ttl = p.ttl;
        self.pending -= 1;
        self.replies += 1;
        // Early limits: nothing beyond the remote, a stop address, or an unreachable.
        if reply.from == self.key.remote.ip() || self.is_stop_at(reply.from) || reply.unreachable {
            self.lower_limit(ttl);
        }
        self.advance(now);
        ReplyOutcome::Matched
    }

    fn is_stop_at(&self, addr: IpAddr) -> bool {
        self.stop_at.contains(&addr)
    }

    /// Cancels everything above `ttl`.
    fn lower_limit(&mut self, ttl: u8) {
        if ttl >= self.limit_ttl {
            return;
        }
        self.limit_ttl = ttl;
        for p in self.probes.iter_mut().filter(|p| p.ttl > ttl) {
            match p.state {
                ProbeState::NotSent => p.state = ProbeState::Cancelled { was_sent: false },
                ProbeState::Awaiting { .. } => {
                    p.state = ProbeState::Cancelled { was_sent: true };
                    self.pending -= 1;
                }
                _ => {}
            }
        }
    }

    /// Stops sending for a reason outside the path. Probes in flight are still awaited unless
    /// `interrupted`.
    pub(crate) fn halt(&mut self, reason: StopReason) {
        if self.halt.is_some() || self.stop.is_some() {
            return;
        }
        self.halt = Some(reason);
        self.next_send = None;
        for p in &mut self.probes {
            match p.state {
                ProbeState::NotSent => p.state = ProbeState::Cancelled { was_sent: false },
                ProbeState::Awaiting { .. } if reason == StopReason::Interrupted => {
                    p.state = ProbeState::TimedOut;
                    self.pending -= 1;
                }
                _ => {}
            }
        }
    }

    /// Moves `oldest` past resolved probes.
    fn skip_resolved(&mut self) {
        while self
            .probes
            .get(self.oldest)
            .is_some_and(|p| p.state.is_resolved())
        {
            self.oldest += 1;
        }
    }

    /// The earliest deadline among awaited probes.
    pub(crate) fn earliest_deadline(&self) -> Option<Instant> {
        self.probes[self.oldest.min(self.probes.len())
            ..self.cursor.max(self.oldest).min(self.probes.len())]
            .iter()
            .find_map(|p| match p.state {
                ProbeState::Awaiting { deadline } => Some(deadline),
                _ => None,
            })
    }

    /// Expires probes whose reply is overdue.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.skip_resolved();
        let mut changed = false;
        for p in &mut self.probes[self.oldest..self.cursor.max(self.oldest)] {
            match p.state {
                ProbeState::Awaiting { deadline } if deadline <= now => {
                    p.state = ProbeState::TimedOut;
                    self.pending -= 1;
                    changed = true;
                }
                // Later probes were sent later: their deadlines are later too.
                ProbeState::Awaiting { .. } => break,
                _ => {}
            }
        }
        if changed {
            self.skip_resolved();
            self.advance(now);
        }
    }

    /// Evaluates the stop rules on the resolved prefix and reschedules a waiting algorithm.
    /// Inserts one more round of probes for silent TTL `ttl` at the send cursor, so they go
    /// next (before the next TTL in hop-by-hop and packet-by-packet order). Only probes at or
    /// after the cursor move, and none of them has been sent, so the identification map and
    /// the `oldest` timer cursor stay valid.
    fn retry(&mut self, ttl: u8, now: Instant) {
        if self
            .probes
            .iter()
            .filter(|p| p.ttl == ttl)
            .all(|p| matches!(p.state, ProbeState::Failed(_)))
        {
            // Every probe of the TTL failed to leave this host (the interface down, no route):
            // the retry waits a probe's timeout, as for a lost probe, instead of failing again
            // at once, so an outage shorter than the timeout costs no hop.
            self.resend_after = Some(now + self.timeout);
        }
        let round = (0..self.probes_per_hop).map(|_| Probe::unsent(ttl));
        let at = self.cursor.min(self.probes.len());
        self.probes.splice(at..at, round);
        // The timer cursor may have passed every probe already (all resolved, the cancelled
        // ones above the cursor too): the new round is not resolved, so it starts there again,
        // or its probes' deadlines would never be looked at and the trace would wait forever.
        self.oldest = self.oldest.min(at);
        if let Some(used) = self.retries_used.get_mut(usize::from(ttl - self.first_ttl)) {
            *used += 1;
        }
        if self.next_send.is_none() {
            self.next_send = Some(now + self.inter_probe);
        }
    }

    fn advance(&mut self, now: Instant) {
        while self.stop.is_none() {
            let ttl = self.first_ttl.saturating_add(self.evaluated);
            if ttl > self.limit_ttl || ttl > self.cap_ttl {
                break;
            }
            // All probes of this TTL, rounds of retries included (they are not contiguous).
            let hop: Vec<&Probe> = self.probes.iter().filter(|p| p.ttl == ttl).collect();
            if hop.is_empty() || !hop.iter().all(|p| p.state.is_resolved()) {
                break;
            }
            if hop
                .iter()
                .all(|p| matches!(p.state, ProbeState::Cancelled { was_sent: false }))
            {
                // Never probed (halted before this TTL): not a silent hop.
                break;
            }
            let silent = hop.iter().all(|p| p.reply.is_none());
            let used = self
                .retries_used
                .get(usize::from(ttl - self.first_ttl))
                .copied()
                .unwrap_or(u8::MAX);
            if silent && used < self.retries && self.halt.is_none() {
                self.retry(ttl, now);
                break;
            }
            let hop: Vec<&Probe> = self.probes.iter().filter(|p| p.ttl == ttl).collect();
            self.evaluated += 1;
            let replies: Vec<&Reply> = hop.iter().filter_map(|p| p.reply.as_ref()).collect();
            let remote = self.key.remote.ip();
            let reason = if replies.iter().any(|r| r.addr == remote) {
                Some(StopReason::RemoteReached)
            } else if replies.iter().any(|r| self.is_stop_at(r.addr)) {
                Some(StopReason::StopAt)
            } else if !replies.is_empty() && replies.iter().all(|r| r.unreachable) {
                Some(StopReason::Unreachable)
            } else if replies.is_empty() {
                self.missing += 1;
                // The gap rule ends a path that went silent, not one with silent routers in
                // the middle (rate-limited ICMP, routers that never answer): a higher TTL that
                // already answered (probes of every TTL go at once) says the path goes on.
                let answered_above = self.probes.iter().any(|p| p.ttl > ttl && p.reply.is_some());
                (self.max_missing > 0 && self.missing >= self.max_missing && !answered_above)
                    .then_some(StopReason::MaxMissing)
            } else {
                self.missing = 0;
                None
            };
            let reason = reason.or_else(|| {
                (ttl == self.limit_ttl && ttl == self.cap_ttl).then_some(if self.cap_from_remote {
                    StopReason::RemoteDistance
                } else {
                    StopReason::MaxTtl
                })
            });
            if let Some(r) = reason {
                self.lower_limit(ttl);
                self.stop = Some(r);
                self.next_send = None;
            }
        }
        if self.stop.is_none() && self.halt.is_none() && self.next_send.is_none() {
            self.schedule_next(now);
        }
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.pending == 0 && (self.stop.is_some() || self.halt.is_some())
    }

    fn probe_reply(p: &Probe, v4: bool) -> ProbeReply {
        let r = p.reply.as_ref();
        let rtt_ms = match (r, p.send_time()) {
            // Rounded to the nanosecond: the timestamps' own resolution.
            (Some(r), Some(s)) => r
                .wall
                .duration_since(s)
                .ok()
                .map(|d| (d.as_nanos() as f64) / 1e6),
            _ => None,
        };
        ProbeReply {
            addr: r.map(|r| r.addr),
            name: None,
            asn: None,
            rtt_ms,
            icmp_type: r.and_then(|r| r.icmp_type),
            icmp_code: r.and_then(|r| r.icmp_code),
            reply_ttl: r.map(|r| r.reply_ttl),
            quoted_ttl: r.and_then(|r| r.quoted_ttl),
            tcp_flags: r.and_then(|r| r.tcp_flags),
            ip_id: v4.then_some(p.ident),
            tag: p.ident,
            mpls: r.map(|r| r.mpls.clone()).unwrap_or_default(),
            interfaces: r.map(|r| r.interfaces.clone()).unwrap_or_default(),
            mtu: r.and_then(|r| r.mtu),
            flow: None,
            src_port: None,
            dst_port: None,
            error: match &p.state {
                ProbeState::Failed(e) => Some(e.clone()),
                _ => None,
            },
        }
    }

    /// The hops from TTL `first` to `last` (probes that were sent), in TTL order; a TTL's
    /// retry rounds follow its first round, wherever they sit in the probe list.
    fn hops_between(&self, first: u8, last: u8) -> Vec<Hop> {
        (first..=last)
            .filter_map(|ttl| {
                let probes: Vec<ProbeReply> = self
                    .probes
                    .iter()
                    .filter(|p| p.ttl == ttl && p.sent_wall.is_some())
                    .map(|p| Self::probe_reply(p, self.key.local.is_ipv4()))
                    .collect();
                (!probes.is_empty()).then_some(Hop { ttl, probes })
            })
            .collect()
    }

    /// Hops whose probes are all resolved and that the stop rules have passed over, not yet
    /// handed out: a caller streams them in TTL order as the trace goes.
    pub(crate) fn take_new_hops(&mut self) -> Vec<Hop> {
        let done = self.evaluated.min(
            self.limit_ttl
                .saturating_sub(self.first_ttl)
                .saturating_add(1),
        );
        if done <= self.emitted {
            return Vec::new();
        }
        let first = self.first_ttl.saturating_add(self.emitted);
        let last = self.first_ttl.saturating_add(done - 1);
        self.emitted = done;
        self.hops_between(first, last)
    }

    pub(crate) fn finish(&self, end: SystemTime) -> TraceResult {
        let last_sent_ttl = self
            .probes
            .iter()
            .filter(|p| p.sent_wall.is_some())
            .map(|p| p.ttl)
            .max()
            .unwrap_or(0);
        let last = last_sent_ttl.min(self.limit_ttl);
        let hops = self.hops_between(self.first_ttl, last);
        let start = self
            .probes
            .iter()
            .filter_map(Probe::send_time)
            .min()
            .unwrap_or(end);
        // A path stop found in the evaluated prefix explains the trace better than a halt that
        // came later; otherwise the halt (flow end, interrupt) is why it stopped.
        let stop_reason = self.stop.or(self.halt).unwrap_or(StopReason::Interrupted);
        TraceResult {
            flow: FlowInfo {
                protocol: self.key.protocol,
                local: Endpoint {
                    ip: self.key.local.ip(),
                    port: self.key.local.port(),
                },
                remote: Endpoint {
                    ip: self.key.remote.ip(),
                    port: self.key.remote.port(),
                },
                flow_label: None,
                service: None,
                name: None,
                matched_by: None,
            },
            algorithm: self.algorithm,
            start: humantime::format_rfc3339_micros(start).to_string(),
            end: humantime::format_rfc3339_micros(end.max(start)).to_string(),
            stop_reason,
            hops,
            remote_distance: self.remote_distance,
            probes_sent: self.sent,
            replies: self.replies,
            syn_copies: false,
            reverse_flow: None,
        }
    }
}

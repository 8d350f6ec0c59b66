//! The engine: demultiplexes captured packets to flows, starts traces, and hands out probes,
//! timers and results.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use svctr_wire::icmp::{IcmpError, IcmpMessage};
use svctr_wire::packet::{parse_ip, Packet, Transport};

use crate::config::{ConfigError, TraceConfig, SLOT_BITS};
use crate::flow::{flow_of, FlowFilter, FlowKey, FlowState, Protocol};
use crate::machine::{Now, Transmit};
use crate::probe::{self, ProbeKind, ProbeShape};
use crate::result::{ServiceTag, StopReason, TraceResult};
use crate::scheduler::Scheduler;
use crate::trace::{ReplyInfo, ReplyOutcome, Trace};

/// Something the engine reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A flow matching the selector was seen for the first time.
    FlowSelected(FlowKey),
    /// Probing of a flow started; `remote_distance` is the number of routers to the remote
    /// read from its packets' TTL, if known.
    TraceStarted {
        /// The flow.
        flow: FlowKey,
        /// Routers to the remote, if known.
        remote_distance: Option<u8>,
        /// The flow's handshake is not answered: its probes are copies of its SYN, whose
        /// initial sequence number this is (a driver shields the local stack from the errors
        /// they draw; see the probe module).
        syn_copy_of: Option<u32>,
    },
    /// A trace is complete.
    TraceFinished(Box<TraceResult>),
    /// A selected flow was dropped without a trace: it went silent before the engine could
    /// build a probe for it, or the run stopped selecting.
    FlowForgotten(FlowKey),
    /// A selected flow cannot be traced (for now), and why; it is still watched, and traced
    /// should that change (a connection whose handshake completes later).
    FlowNotTraced {
        /// The flow.
        flow: FlowKey,
        /// Why.
        reason: NotTraced,
    },
}

/// Why a selected flow was not traced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotTraced {
    /// An IPv6 TCP connection whose SYNs go unanswered.
    #[error(
        "its TCP handshake is not answered (no reply to its SYNs), and an IPv6 copy of a SYN has \
         no field that could tell the probes apart: IPv6 has no identification, and the \
         addresses, ports and flow label (hashed by routers) and the sequence number and options \
         (checked by the server and by firewalls) must stay the SYN's"
    )]
    Ipv6Handshake,
    /// The flow ended (FIN or RST) before its trace could start.
    #[error("it ended (FIN or RST) before its trace could start")]
    EndedFirst,
}

/// Counters, for diagnostics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Packets handed to the engine.
    pub packets: u64,
    /// Packets that could not be parsed.
    pub malformed: u64,
    /// ICMP errors seen.
    pub icmp_errors: u64,
    /// ICMP errors matched to a probe.
    pub replies_matched: u64,
    /// ICMP errors that quote a traced flow but match no probe awaiting a reply.
    pub replies_unmatched: u64,
    /// Captures of our own probes.
    pub probe_captures: u64,
    /// Probes handed out.
    pub probes_sent: u64,
    /// Flows selected.
    pub flows_selected: u64,
    /// Traces started.
    pub traces_started: u64,
    /// Traces finished.
    pub traces_finished: u64,
    /// Flows not yet traced forgotten to make room for a new one: the table of flows was
    /// full ([`Engine::set_max_flows`]); the oldest watched flow goes first.
    pub flows_evicted: u64,
    /// New flows not taken because the table was full of flows being traced.
    pub flows_refused: u64,
    /// Traced flows forgotten from the memory that keeps a run from tracing a flow twice
    /// (selector mode), oldest first: such a flow, seen again, is traced again.
    pub done_evicted: u64,
}

#[derive(Debug)]
enum Phase {
    Observing,
    Tracing(Box<Trace>),
}

#[derive(Debug)]
struct Entry {
    state: FlowState,
    phase: Phase,
    /// The service the flow was selected for (external selection).
    tag: Option<ServiceTag>,
    /// What its probes look like (set when its trace starts).
    kind: ProbeKind,
    /// A `FlowNotTraced` event was reported for it.
    reported: bool,
    /// Its place in the order flows were taken (eviction of the oldest watched flow).
    seq: u64,
}

/// Flows watched or traced at once, by default: beyond it the oldest flow not being traced is
/// forgotten. About 300 bytes each, so the default bounds the table near 20 MB whatever
/// floods the capture (a scan, a SYN flood, a million new 5-tuples a minute).
pub const DEFAULT_MAX_FLOWS: usize = 65_536;

/// Flows not traced and silent this long are forgotten.
const OBSERVING_IDLE_LIMIT: Duration = Duration::from_secs(120);

/// The flow tracer.
///
/// # Contract
/// * Inputs: [`handle_packet`](Self::handle_packet) for every captured IP packet (flow packets
///   in both directions, the capture of our own probes, and ICMP/ICMPv6), and
///   [`handle_timeout`](Self::handle_timeout) when the instant from
///   [`poll_timeout`](Self::poll_timeout) has come.
/// * Outputs, polled after every input in this order: [`poll_transmit`](Self::poll_transmit)
///   until `None` (a rate-limited driver may stop earlier: the rest stays queued, see
///   [`has_pending_transmit`](Self::has_pending_transmit)), then
///   [`poll_event`](Self::poll_event) until `None`, then [`poll_timeout`](Self::poll_timeout)
///   to know when to wake up.
/// * Time is monotonic across calls; the engine never reads a clock.
///
/// # Which flows
/// [`Engine::new`] traces the flows a [`FlowFilter`] passes, each once (at most
/// [`set_max_traces`](Self::set_max_traces) of them). [`Engine::external`]
/// traces only the flows it is told about with [`watch`](Self::watch) (the
/// [`crate::Monitor`] decides which, by service, and when to trace a flow again).
///
/// # Cost
/// Work per input is independent of the number of flows: each flow is filed in a timer set
/// under its next deadline (a probe to send, a reply overdue, a flow gone idle), flows with a
/// probe due wait in a round-robin queue, and a packet touches only its own flow.
#[derive(Debug)]
pub struct Engine {
    cfg: TraceConfig,
    /// `None`: flows are selected from outside with `watch`.
    selector: Option<FlowFilter>,
    local: Vec<IpAddr>,
    flows: HashMap<FlowKey, Entry>,
    /// Flows already traced: never traced twice in one run (selector mode); at most
    /// `max_flows`, oldest first out (`done_order`).
    done: HashSet<FlowKey>,
    done_order: VecDeque<FlowKey>,
    /// The flows being watched, not traced, by the order they were taken (`Entry::seq`).
    observing: BTreeMap<u64, FlowKey>,
    next_seq: u64,
    /// Flows watched or traced at once (at least 1).
    max_flows: usize,
    events: VecDeque<Event>,
    /// Flows by their next deadline, and those with a probe due (round-robin).
    scheduler: Scheduler<FlowKey>,
    accepting: bool,
    /// Start at most this many traces (0: no limit).
    max_traces: usize,
    tracing: usize,
    stats: EngineStats,
}

impl Engine {
    /// A new engine tracing the flows `selector` passes, each once; `local` are this host's
    /// addresses (they tell outgoing packets from incoming ones).
    pub fn new(
        cfg: TraceConfig,
        selector: FlowFilter,
        local: Vec<IpAddr>,
    ) -> Result<Self, ConfigError> {
        Self::with_selection(cfg, Some(selector), local)
    }

    /// A new engine tracing only the flows given to [`watch`](Self::watch).
    pub fn external(cfg: TraceConfig, local: Vec<IpAddr>) -> Result<Self, ConfigError> {
        Self::with_selection(cfg, None, local)
    }

    fn with_selection(
        cfg: TraceConfig,
        selector: Option<FlowFilter>,
        local: Vec<IpAddr>,
    ) -> Result<Self, ConfigError> {
        cfg.validate_flow()?;
        if local.is_empty() {
            return Err(ConfigError::NoLocalAddress);
        }
        Ok(Self {
            cfg,
            selector,
            local,
            flows: HashMap::new(),
            done: HashSet::new(),
            done_order: VecDeque::new(),
            observing: BTreeMap::new(),
            next_seq: 0,
            max_flows: DEFAULT_MAX_FLOWS,
            events: VecDeque::new(),
            scheduler: Scheduler::default(),
            accepting: true,
            max_traces: 0,
            tracing: 0,
            stats: EngineStats::default(),
        })
    }

    /// Start at most `n` traces, then select no more flows (0: no limit).
    pub fn set_max_traces(&mut self, n: usize) {
        self.max_traces = n;
    }

    /// Track at most `n` flows at once (watched or traced; default [`DEFAULT_MAX_FLOWS`], at
    /// least 1): a new flow then evicts the oldest flow not being traced
    /// ([`Event::FlowForgotten`], counted in [`EngineStats::flows_evicted`]), or is refused
    /// when every flow is being traced ([`EngineStats::flows_refused`]).
    pub fn set_max_flows(&mut self, n: usize) {
        self.max_flows = n.max(1);
    }

    /// The bound of the table of flows ([`set_max_flows`](Self::set_max_flows)).
    pub fn max_flows(&self) -> usize {
        self.max_flows
    }

    /// Whether the engine takes new flows: selection not stopped, the trace limit not reached.
    pub fn is_accepting(&self) -> bool {
        self.accepting && !self.traces_exhausted()
    }

    /// Counters so far.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// This host's addresses, as given.
    pub fn local_addresses(&self) -> &[IpAddr] {
        &self.local
    }

    /// Number of traces in progress.
    pub fn active_traces(&self) -> usize {
        self.tracing
    }

    /// Number of flows watched or traced.
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Whether no trace is in progress.
    pub fn is_idle(&self) -> bool {
        self.tracing == 0
    }

    /// Whether `flow` is watched or traced.
    pub fn is_tracking(&self, flow: &FlowKey) -> bool {
        self.flows.contains_key(flow)
    }

    /// Whether probes are queued, due now (a rate-limited driver that stopped calling
    /// [`poll_transmit`](Self::poll_transmit) uses this to know it must come back).
    pub fn has_pending_transmit(&self) -> bool {
        self.scheduler.has_queued()
    }

    /// Select no new flows; traces in progress go on. Flows watched but not yet traced are
    /// dropped (each reported as [`Event::FlowForgotten`]).
    pub fn stop_selecting(&mut self) {
        self.accepting = false;
        self.drop_watched();
    }

    /// Drops the flows watched but not traced.
    fn drop_watched(&mut self) {
        self.observing.clear();
        let (events, scheduler) = (&mut self.events, &mut self.scheduler);
        self.flows.retain(|k, e| {
            let keep = matches!(e.phase, Phase::Tracing(_));
            if !keep {
                scheduler.remove(k);
                events.push_back(Event::FlowForgotten(*k));
            }
            keep
        });
    }

    /// [`stop_selecting`](Self::stop_selecting), as [`crate::Machine::stop_starting`].
    pub fn stop_starting(&mut self, _now: Now) {
        self.stop_selecting();
    }

    /// Whether no trace is in progress and none will start (selection stopped, or the trace
    /// limit reached).
    pub fn is_done(&self) -> bool {
        self.tracing == 0 && (!self.accepting || self.traces_exhausted())
    }

    /// Replies matched to a probe so far (see [`crate::Machine::replies_matched`]).
    pub fn replies_matched(&self) -> Option<u64> {
        Some(self.stats.replies_matched)
    }

    /// Finish every trace now (stop reason `interrupted` unless one was already known) and
    /// select no new flows.
    pub fn interrupt(&mut self, now: Now) {
        self.stop_selecting();
        for e in self.flows.values_mut() {
            if let Phase::Tracing(t) = &mut e.phase {
                t.halt(StopReason::Interrupted);
            }
        }
        let keys: Vec<FlowKey> = self.flows.keys().copied().collect();
        for k in keys {
            self.finish_if_done(&k, now.wall);
        }
    }

    fn traces_exhausted(&self) -> bool {
        self.max_traces != 0 && self.stats.traces_started as usize >= self.max_traces
    }

    /// Starts watching `flow` (external selection): the engine learns its state from its
    /// packets from now on and traces it once it can build harmless probes. `tag` is reported
    /// in the result. Returns false if the flow is already watched or traced, or the engine
    /// selects no more flows. Call it before handing the engine the packet that made the
    /// flow interesting, so that packet counts too.
    pub fn watch(&mut self, now: Instant, flow: FlowKey, tag: Option<ServiceTag>) -> bool {
        if !self.is_accepting()
            || self.flows.contains_key(&flow)
            || flow.local.is_ipv4() != flow.remote.is_ipv4()
        {
            return false;
        }
        if !matches!(flow.protocol, Protocol::Tcp | Protocol::Udp) {
            return false;
        }
        if self.flows.len() >= self.max_flows {
            // Full: the oldest flow still only watched makes room (a flood of new 5-tuples
            // cannot grow the table), or, every flow being traced, the new one is refused.
            let Some((_, oldest)) = self.observing.pop_first() else {
                self.stats.flows_refused += 1;
                return false;
            };
            self.stats.flows_evicted += 1;
            self.forget(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.observing.insert(seq, flow);
        self.flows.insert(
            flow,
            Entry {
                state: FlowState::new(now),
                phase: Phase::Observing,
                tag,
                kind: ProbeKind::Flow,
                reported: false,
                seq,
            },
        );
        self.stats.flows_selected += 1;
        self.events.push_back(Event::FlowSelected(flow));
        self.rearm(&flow);
        true
    }

    /// Handles one captured IP packet with its capture timestamp `ts`.
    pub fn handle_packet(&mut self, now: Instant, ts: SystemTime, bytes: &[u8]) {
        self.stats.packets += 1;
        let Ok(pkt) = parse_ip(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        self.handle_parsed(now, ts, &pkt);
    }

    /// [`handle_packet`](Self::handle_packet) for a packet already parsed.
    pub fn handle_parsed(&mut self, now: Instant, ts: SystemTime, pkt: &Packet<'_>) {
        let flow = flow_of(&self.local, pkt);
        self.handle_classified(now, ts, pkt, flow);
    }

    /// [`handle_parsed`](Self::handle_parsed) for a packet whose flow (and direction) the
    /// caller already derived with [`flow_of`]: a packet's flow key is derived once.
    pub(crate) fn handle_classified(
        &mut self,
        now: Instant,
        ts: SystemTime,
        pkt: &Packet<'_>,
        flow: Option<(FlowKey, bool)>,
    ) {
        match (&pkt.transport, flow) {
            (Transport::Icmp(IcmpMessage::Error(err)), _) if self.local.contains(&pkt.ip.dst) => {
                self.handle_icmp_error(now, ts, pkt, err)
            }
            (Transport::Tcp(_) | Transport::Udp(_), Some((key, outgoing))) => {
                self.handle_flow_packet(now, ts, pkt, key, outgoing)
            }
            _ => {}
        }
    }

    fn handle_icmp_error(
        &mut self,
        now: Instant,
        ts: SystemTime,
        pkt: &Packet<'_>,
        err: &IcmpError<'_>,
    ) {
        self.stats.icmp_errors += 1;
        let Some(protocol) = protocol_of(err.quote.protocol) else {
            return;
        };
        let Some((sport, dport)) = err.quote.ports() else {
            return;
        };
        let key = FlowKey {
            protocol,
            local: SocketAddr::new(err.quote.src, sport),
            remote: SocketAddr::new(err.quote.dst, dport),
        };
        let Some(Entry {
            phase: Phase::Tracing(trace),
            ..
        }) = self.flows.get_mut(&key)
        else {
            return;
        };
        // The probe's tag: IPv4 identification; IPv6 UDP checksum or TCP sequence number (see
        // the probe module).
        let tag = match (key.local.ip(), protocol) {
            (IpAddr::V4(_), _) => Some(err.quote.ident),
            (IpAddr::V6(_), Protocol::Udp) => err.quote.udp_checksum(),
            (IpAddr::V6(_), _) => err.quote.tcp_seq().and_then(|s| trace.tag_of_seq(s)),
        };
        // The quoted length and TCP sequence number must be the probe's: an error about one of
        // the flow's own packets (same 5-tuple) is never taken for a probe's.
        let verify = |shape: &ProbeShape| {
            err.quote.length == shape.ip_len
                && match (shape.tcp_seq, err.quote.tcp_seq()) {
                    (Some(want), Some(got)) => want == got,
                    _ => true,
                }
        };
        let reply = ReplyInfo::from_icmp_error(pkt.ip.src, pkt.ip.ttl, err);
        let outcome = match tag {
            Some(tag) => trace.handle_reply(now, ts, tag, verify, reply),
            None => ReplyOutcome::NoProbe,
        };
        match outcome {
            ReplyOutcome::Matched => self.stats.replies_matched += 1,
            ReplyOutcome::NoProbe => self.stats.replies_unmatched += 1,
        }
        self.touch(&key, now, ts);
    }

    fn handle_flow_packet(
        &mut self,
        now: Instant,
        ts: SystemTime,
        pkt: &Packet<'_>,
        key: FlowKey,
        outgoing: bool,
    ) {
        let tcp = match &pkt.transport {
            Transport::Tcp(t) => Some(t),
            _ => None,
        };
        if !self.flows.contains_key(&key) && !self.select(now, &key) {
            return;
        }
        let Some(entry) = self.flows.get_mut(&key) else {
            return;
        };
        if let Phase::Tracing(trace) = &mut entry.phase {
            if outgoing {
                let tag = match (pkt.ip.src, &pkt.transport) {
                    (IpAddr::V4(_), _) => Some(pkt.ip.ident),
                    (IpAddr::V6(_), Transport::Udp(u)) => Some(u.checksum),
                    (IpAddr::V6(_), Transport::Tcp(t)) => trace.tag_of_seq(t.seq),
                    _ => None,
                };
                let ip_len = ip_length(pkt);
                if tag.is_some_and(|tag| {
                    trace.capture_of_probe(tag, pkt.ip.ttl, ip_len, tcp.map(|t| t.seq), ts)
                }) {
                    self.stats.probe_captures += 1;
                    return;
                }
            }
        }
        let was_ended = entry.state.ended;
        entry.state.update(now, outgoing, &pkt.ip, tcp);
        if let Phase::Tracing(trace) = &mut entry.phase {
            if entry.state.ended && !was_ended {
                trace.halt(StopReason::FlowEnded);
            } else if !outgoing && entry.kind == ProbeKind::SynCopy {
                // The remote answered the handshake (a SYN-ACK): no more SYN copies, which in
                // an established connection would draw challenge ACKs (RFC 5961 §4).
                trace.halt(StopReason::RemoteReached);
            }
        }
        self.maybe_start(&key, now);
        self.touch(&key, now, ts);
    }

    /// Selector mode: the first packet of a flow the selector picks creates its entry.
    fn select(&mut self, now: Instant, key: &FlowKey) -> bool {
        let Some(selector) = &self.selector else {
            return false;
        };
        if !self.accepting
            || self.traces_exhausted()
            || self.done.contains(key)
            || !selector.matches(key)
        {
            return false;
        }
        self.watch(now, *key, None)
    }

    /// Starts tracing a flow once its packets tell enough to build harmless probes.
    fn maybe_start(&mut self, key: &FlowKey, now: Instant) {
        if self.traces_exhausted() {
            return;
        }
        let Some(entry) = self.flows.get_mut(key) else {
            return;
        };
        if !matches!(entry.phase, Phase::Observing) {
            return;
        }
        let s = &entry.state;
        if s.ended {
            // A flow that ended before it could be traced is not traced (nor selected again
            // by its last packets).
            if self.selector.is_some() {
                Self::remember_done(
                    &mut self.done,
                    &mut self.done_order,
                    &mut self.stats,
                    self.max_flows,
                    *key,
                );
            }
            if s.packets_out + s.packets_in > 1 {
                // Not merely the last packet of a flow that was over before we looked.
                self.events.push_back(Event::FlowNotTraced {
                    flow: *key,
                    reason: NotTraced::EndedFirst,
                });
            }
            self.forget(key);
            return;
        }
        let kind = match key.protocol {
            // Both directions seen after the handshake: SND.UNA and RCV.NXT are known.
            Protocol::Tcp if s.tcp.established && probe::tcp_probe_numbers(s).is_some() => {
                ProbeKind::Flow
            }
            // SYNs unanswered for a while: the handshake is stuck (see the probe module).
            Protocol::Tcp if handshake_stuck(&self.cfg, s, now) => {
                if key.local.is_ipv6() {
                    if !entry.reported {
                        entry.reported = true;
                        self.events.push_back(Event::FlowNotTraced {
                            flow: *key,
                            reason: NotTraced::Ipv6Handshake,
                        });
                    }
                    return;
                }
                ProbeKind::SynCopy
            }
            // The remote's reply gives its distance; without one, wait a little for it.
            Protocol::Udp
                if s.packets_out > 0
                    && (s.packets_in > 0 || now >= s.first_seen + self.cfg.udp_reply_wait) =>
            {
                ProbeKind::Flow
            }
            // Not yet (ICMP flows are never selected).
            _ => return,
        };
        let distance = s.remote_router_hops();
        // The process slot in the low bits of every tag, the rest counts from a per-trace start.
        let start = ident_seed(self.cfg.ident_seed, self.stats.traces_started, key);
        let first_tag = (start << SLOT_BITS) | u16::from(self.cfg.slot);
        let stride = 1 << SLOT_BITS;
        let syn_copy_of = (kind == ProbeKind::SynCopy)
            .then(|| s.syn.map(|syn| syn.seq))
            .flatten();
        let trace = if kind == ProbeKind::SynCopy {
            // Copies of the SYN go a TTL's worth at a time and stay below the TTL that the
            // shield tells them apart by (see the probe module).
            let cfg = TraceConfig {
                max_ttl: self.cfg.max_ttl.min(probe::SYN_COPY_MAX_TTL),
                max_in_flight: match self.cfg.max_in_flight {
                    0 => usize::from(self.cfg.probes_per_hop),
                    n => n.min(usize::from(self.cfg.probes_per_hop)),
                },
                probe_remote: true,
                ..self.cfg.clone()
            };
            Trace::new(*key, &cfg, None, first_tag, stride, now)
        } else {
            Trace::new(*key, &self.cfg, distance, first_tag, stride, now)
        };
        entry.phase = Phase::Tracing(Box::new(trace));
        entry.kind = kind;
        self.observing.remove(&entry.seq);
        self.tracing += 1;
        self.stats.traces_started += 1;
        self.events.push_back(Event::TraceStarted {
            flow: *key,
            remote_distance: distance,
            syn_copy_of,
        });
        if self.traces_exhausted() {
            // No more traces: flows still waiting are let go.
            self.drop_watched();
        }
    }

    fn forget(&mut self, key: &FlowKey) {
        if let Some(e) = self.flows.remove(key) {
            self.scheduler.remove(key);
            if matches!(e.phase, Phase::Tracing(_)) {
                self.tracing -= 1;
            } else {
                self.observing.remove(&e.seq);
            }
            self.events.push_back(Event::FlowForgotten(*key));
        }
    }

    /// Remembers a flow as traced (or over) so the run does not take it again; the memory
    /// keeps the latest `max` flows, the oldest forgotten and counted.
    fn remember_done(
        done: &mut HashSet<FlowKey>,
        order: &mut VecDeque<FlowKey>,
        stats: &mut EngineStats,
        max: usize,
        key: FlowKey,
    ) {
        if !done.insert(key) {
            return;
        }
        order.push_back(key);
        while order.len() > max {
            if let Some(old) = order.pop_front() {
                done.remove(&old);
                stats.done_evicted += 1;
            }
        }
    }

    /// After anything happened to a flow: report it if its trace is over, queue it if a probe
    /// is due, and file it under its next deadline.
    fn touch(&mut self, key: &FlowKey, now: Instant, wall: SystemTime) {
        if self.finish_if_done(key, wall) {
            return;
        }
        let Some(e) = self.flows.get_mut(key) else {
            return;
        };
        if let Phase::Tracing(t) = &e.phase {
            if t.due(now).is_some() {
                self.scheduler.enqueue(*key);
            }
        }
        self.rearm(key);
    }

    /// The next instant a flow needs attention, whatever its packets do meanwhile.
    fn next_deadline(cfg: &TraceConfig, key: &FlowKey, e: &Entry, queued: bool) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut take = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        match &e.phase {
            Phase::Tracing(t) => {
                if let Some(at) = t.earliest_deadline() {
                    take(at);
                }
                // A flow in the transmit queue has its probe due already: the queue serves it.
                if let Some(at) = t.send_at().filter(|_| !queued) {
                    take(at);
                }
                if key.protocol == Protocol::Udp && !cfg.flow_timeout.is_zero() {
                    take(e.state.last_seen + cfg.flow_timeout);
                }
            }
            Phase::Observing => {
                if key.protocol == Protocol::Udp
                    && e.state.packets_in == 0
                    && e.state.packets_out > 0
                {
                    take(e.state.first_seen + cfg.udp_reply_wait);
                }
                if let Some(syn) = e.state.syn.filter(|_| {
                    key.protocol == Protocol::Tcp
                        && !cfg.handshake_wait.is_zero()
                        && e.state.packets_in == 0
                        && !e.reported
                }) {
                    take(syn.first + cfg.handshake_wait);
                }
                take(e.state.last_seen + OBSERVING_IDLE_LIMIT);
            }
        }
        next
    }

    /// Files the flow under its next deadline, unless it is already filed no later (a flow
    /// filed too early is looked at and filed again: cheaper than moving it on every packet).
    fn rearm(&mut self, key: &FlowKey) {
        let Some(e) = self.flows.get(key) else {
            return;
        };
        let queued = self.scheduler.is_queued(key);
        if let Some(next) = Self::next_deadline(&self.cfg, key, e, queued) {
            self.scheduler.arm(*key, next);
        }
    }

    /// Reports the flow's trace if it is over. Returns true if it was.
    fn finish_if_done(&mut self, key: &FlowKey, wall: SystemTime) -> bool {
        let finished = matches!(self.flows.get(key), Some(Entry { phase: Phase::Tracing(t), .. }) if t.is_finished());
        if !finished {
            return false;
        }
        let Some(e) = self.flows.remove(key) else {
            return false;
        };
        self.scheduler.remove(key);
        let Phase::Tracing(t) = e.phase else {
            return false;
        };
        self.tracing -= 1;
        if self.selector.is_some() {
            Self::remember_done(
                &mut self.done,
                &mut self.done_order,
                &mut self.stats,
                self.max_flows,
                *key,
            );
        }
        self.stats.traces_finished += 1;
        let mut result = t.finish(wall);
        if key.local.is_ipv6() {
            result.flow.flow_label = Some(e.state.flow_label);
        }
        if let Some(tag) = &e.tag {
            result.flow.tag(tag);
        }
        result.syn_copies = e.kind == ProbeKind::SynCopy;
        result.reverse_flow = e.state.reverse_flow(key);
        self.events
            .push_back(Event::TraceFinished(Box::new(result)));
        true
    }

    /// Handles timers: overdue probes, probes due, idle UDP flows, UDP flows that waited for a
    /// reply, flows watched but silent too long.
    pub fn handle_timeout(&mut self, now: Now) {
        // Take every flow due first: a flow filed again at `now` waits for the next call.
        for key in self.scheduler.take_due(now.mono) {
            let Some(e) = self.flows.get_mut(&key) else {
                continue;
            };
            match &mut e.phase {
                Phase::Tracing(t) => {
                    t.handle_timeout(now.mono);
                    let ft = self.cfg.flow_timeout;
                    if key.protocol == Protocol::Udp
                        && !ft.is_zero()
                        && now.mono >= e.state.last_seen + ft
                    {
                        t.halt(StopReason::FlowTimeout);
                    }
                }
                Phase::Observing => {
                    if now.mono >= e.state.last_seen + OBSERVING_IDLE_LIMIT {
                        self.forget(&key);
                        continue;
                    }
                    self.maybe_start(&key, now.mono);
                }
            }
            self.touch(&key, now.mono, now.wall);
        }
    }

    /// The next probe to send, written into `buf`. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Now, buf: &mut Vec<u8>) -> Option<Transmit> {
        while let Some(key) = self.scheduler.dequeue() {
            let Some(e) = self.flows.get_mut(&key) else {
                continue;
            };
            let Entry {
                state,
                phase: Phase::Tracing(t),
                kind,
                ..
            } = e
            else {
                continue;
            };
            let Some(due) = t.due(now.mono) else {
                self.rearm(&key);
                continue;
            };
            let Some(shape) = probe::build(
                state,
                &key,
                *kind,
                due.ttl,
                due.ident,
                |s| t.seq_taken(s),
                buf,
            ) else {
                t.cannot_build();
                self.touch(&key, now.mono, now.wall);
                continue;
            };
            t.mark_sent(due, shape, now.mono, now.wall);
            self.stats.probes_sent += 1;
            let tx = Transmit {
                dst: key.remote.ip(),
                len: buf.len(),
                flow: key,
                ttl: due.ttl,
                ident: due.ident,
            };
            self.touch(&key, now.mono, now.wall);
            return Some(tx);
        }
        None
    }

    /// The driver could not send the probe `ident` of `flow`.
    pub fn handle_send_error(&mut self, now: Now, tx: &Transmit, error: String) {
        if let Some(Entry {
            phase: Phase::Tracing(t),
            ..
        }) = self.flows.get_mut(&tx.flow)
        {
            t.send_failed(tx.ident, error, now.mono);
        }
        self.touch(&tx.flow, now.mono, now.wall);
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next. (Probes already due are
    /// in the transmit queue: see [`has_pending_transmit`](Self::has_pending_transmit).)
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.scheduler.next_deadline()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The flows being traced.
    pub fn tracing(&self) -> impl Iterator<Item = &FlowKey> {
        self.flows
            .iter()
            .filter_map(|(k, e)| matches!(e.phase, Phase::Tracing(_)).then_some(k))
    }
}

crate::machine::machine_by_inherent_methods!(Engine, Event);

fn protocol_of(n: u8) -> Option<Protocol> {
    match n {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        _ => None,
    }
}

/// A TCP connection whose SYNs have gone unanswered for the configured wait.
fn handshake_stuck(cfg: &TraceConfig, s: &FlowState, now: Instant) -> bool {
    !cfg.handshake_wait.is_zero()
        && !s.tcp.established
        && s.packets_in == 0
        && s.syn
            .is_some_and(|syn| now >= syn.first + cfg.handshake_wait)
}

/// The length of a captured packet as its header announces it, in the unit a probe shape
/// uses: IPv4 total length (20-byte header), IPv6 payload length.
fn ip_length(pkt: &Packet<'_>) -> u16 {
    let ip_header: u32 = if pkt.ip.src.is_ipv4() { 20 } else { 0 };
    let len = match &pkt.transport {
        // Options are known for SYNs only; other probes carry none.
        Transport::Tcp(t) => ip_header + 20 + t.syn_options.as_slice().len() as u32 + t.payload_len,
        Transport::Udp(u) => ip_header + 8 + u32::from(u.payload_len),
        _ => 0,
    };
    len.min(u32::from(u16::MAX)) as u16
}

/// A per-trace starting point of the tag sequence: flows do not share one tag space (they are
/// told apart by the quoted 5-tuple) and processes have their own slots, but distinct starting
/// points make a late reply to an earlier trace of the same 5-tuple (a re-trace, an earlier
/// run) unlikely to be taken for a probe of this one.
fn ident_seed(seed: u16, trace_number: u64, key: &FlowKey) -> u16 {
    // FNV-1a over the 5-tuple and the trace's number: cheap, deterministic, no dependency.
    let mut h: u32 = 0x811c_9dc5 ^ u32::from(seed);
    let mut feed = |b: u8| {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    };
    feed(key.protocol.number());
    for addr in [key.local, key.remote] {
        match addr.ip() {
            IpAddr::V4(a) => a.octets().into_iter().for_each(&mut feed),
            IpAddr::V6(a) => a.octets().into_iter().for_each(&mut feed),
        }
        addr.port().to_be_bytes().into_iter().for_each(&mut feed);
    }
    trace_number.to_le_bytes().into_iter().for_each(&mut feed);
    (h ^ (h >> 16)) as u16
}

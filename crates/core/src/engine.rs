//! The engine: demultiplexes captured packets to flows, starts traces, and hands out probes,
//! timers and results.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use svctr_wire::icmp::IcmpMessage;
use svctr_wire::packet::{parse_ip, Transport};

use crate::config::{ConfigError, TraceConfig};
use crate::flow::{FlowKey, FlowSelector, FlowState, Protocol};
use crate::probe::{self, ProbeShape};
use crate::result::{StopReason, TraceResult};
use crate::trace::{ReplyInfo, ReplyOutcome, Trace};

/// The time of an input: a monotonic instant for timers and the wall clock for results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time (timers). Must never go backwards between calls.
    pub mono: Instant,
    /// Wall-clock time (reported start/end, fallback send time).
    pub wall: SystemTime,
}

/// A probe to send: the IP datagram is in the buffer given to [`Engine::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// Destination address (for the raw socket's `sendto`).
    pub dst: IpAddr,
    /// Bytes of the buffer to send.
    pub len: usize,
    /// The flow this probe imitates.
    pub flow: FlowKey,
    /// The probe's TTL.
    pub ttl: u8,
    /// The probe's IP identification (pass it back to [`Engine::handle_send_error`]).
    pub ident: u16,
}

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
    },
    /// A trace is complete.
    TraceFinished(Box<TraceResult>),
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
}

/// Flows not traced and silent this long are forgotten.
const OBSERVING_IDLE_LIMIT: Duration = Duration::from_secs(120);

/// The flow tracer.
///
/// # Contract
/// * Inputs: [`handle_packet`](Self::handle_packet) for every captured IP packet (flow packets
///   in both directions, the capture of our own probes, and ICMP), and
///   [`handle_timeout`](Self::handle_timeout) when the instant from
///   [`poll_timeout`](Self::poll_timeout) has come.
/// * Outputs, polled after every input in this order: [`poll_transmit`](Self::poll_transmit)
///   until `None`, then [`poll_event`](Self::poll_event) until `None`, then
///   [`poll_timeout`](Self::poll_timeout) to know when to wake up.
/// * Time is monotonic across calls; the engine never reads a clock.
#[derive(Debug)]
pub struct Engine {
    cfg: TraceConfig,
    selector: FlowSelector,
    local: Vec<IpAddr>,
    flows: HashMap<FlowKey, Entry>,
    /// Flows already traced: never traced twice in one run.
    done: HashSet<FlowKey>,
    events: VecDeque<Event>,
    /// Flows with a probe due, served round-robin so that flows interleave; refilled by one
    /// scan when empty, so a burst of N probes costs one scan, not N.
    tx_queue: VecDeque<FlowKey>,
    accepting: bool,
    stats: EngineStats,
}

impl Engine {
    /// A new engine tracing the flows `selector` picks; `local` are this host's addresses (they
    /// tell outgoing packets from incoming ones).
    pub fn new(cfg: TraceConfig, selector: FlowSelector, local: Vec<IpAddr>) -> Result<Self, ConfigError> {
        cfg.validate()?;
        if local.is_empty() {
            return Err(ConfigError::NoLocalAddress);
        }
        Ok(Self {
            cfg,
            selector,
            local,
            flows: HashMap::new(),
            done: HashSet::new(),
            events: VecDeque::new(),
            tx_queue: VecDeque::new(),
            accepting: true,
            stats: EngineStats::default(),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Number of traces in progress.
    pub fn active_traces(&self) -> usize {
        self.flows.values().filter(|e| matches!(e.phase, Phase::Tracing(_))).count()
    }

    /// Whether no trace is in progress.
    pub fn is_idle(&self) -> bool {
        self.active_traces() == 0
    }

    /// Select no new flows; traces in progress go on.
    pub fn stop_selecting(&mut self) {
        self.accepting = false;
        self.flows.retain(|_, e| matches!(e.phase, Phase::Tracing(_)));
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
        self.collect_finished(now.wall);
    }

    fn traces_exhausted(&self) -> bool {
        self.cfg.max_flows != 0 && self.stats.traces_started as usize >= self.cfg.max_flows
    }

    /// Handles one captured IP packet with its capture timestamp `ts`.
    pub fn handle_packet(&mut self, now: Instant, ts: SystemTime, bytes: &[u8]) {
        self.stats.packets += 1;
        let Ok(pkt) = parse_ip(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        let outgoing = self.local.contains(&pkt.ip.src);
        let incoming = self.local.contains(&pkt.ip.dst);
        if !outgoing && !incoming {
            return;
        }
        match &pkt.transport {
            Transport::Icmp(IcmpMessage::Error(err)) if incoming => {
                self.stats.icmp_errors += 1;
                let Some(protocol) = protocol_of(err.quote.protocol) else { return };
                let Some((sport, dport)) = err.quote.ports() else { return };
                let key = FlowKey {
                    protocol,
                    local: SocketAddr::new(err.quote.src, sport),
                    remote: SocketAddr::new(err.quote.dst, dport),
                };
                let Some(Entry { phase: Phase::Tracing(trace), .. }) = self.flows.get_mut(&key) else {
                    return;
                };
                // The quoted length and TCP sequence number must be the probe's: an error about
                // one of the flow's own packets (same 5-tuple) is never taken for a probe's.
                let verify = |shape: &ProbeShape| {
                    err.quote.length == shape.ip_len
                        && match (shape.tcp_seq, err.quote.tcp_seq()) {
                            (Some(want), Some(got)) => want == got,
                            _ => true,
                        }
                };
                let reply = ReplyInfo::from_icmp_error(pkt.ip.src, pkt.ip.ttl, err);
                match trace.handle_reply(now, ts, err.quote.ident, verify, reply) {
                    ReplyOutcome::Matched => self.stats.replies_matched += 1,
                    ReplyOutcome::NoProbe => self.stats.replies_unmatched += 1,
                }
                self.finish_if_done(&key, ts);
            }
            Transport::Tcp(_) | Transport::Udp(_) => self.handle_flow_packet(now, ts, &pkt, outgoing),
            _ => {}
        }
    }

    fn handle_flow_packet(&mut self, now: Instant, ts: SystemTime, pkt: &svctr_wire::packet::Packet<'_>, outgoing: bool) {
        let (protocol, sport, dport, tcp) = match &pkt.transport {
            Transport::Tcp(t) => (Protocol::Tcp, t.src_port, t.dst_port, Some(t)),
            Transport::Udp(u) => (Protocol::Udp, u.src_port, u.dst_port, None),
            _ => return,
        };
        let (local, remote) = if outgoing {
            (SocketAddr::new(pkt.ip.src, sport), SocketAddr::new(pkt.ip.dst, dport))
        } else {
            (SocketAddr::new(pkt.ip.dst, dport), SocketAddr::new(pkt.ip.src, sport))
        };
        let key = FlowKey { protocol, local, remote };
        if let Some(entry) = self.flows.get_mut(&key) {
            if let Phase::Tracing(trace) = &mut entry.phase {
                if outgoing {
                    let ip_len = ip_length(pkt);
                    if trace.capture_of_probe(pkt.ip.ident, pkt.ip.ttl, ip_len, tcp.map(|t| t.seq), ts) {
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
                }
            }
        } else {
            if !self.accepting || self.traces_exhausted() || self.done.contains(&key) || !self.selector.matches(&key) {
                return;
            }
            // Flows of another IP version than the probes we can build are not selected.
            if !matches!((local.ip(), remote.ip()), (IpAddr::V4(_), IpAddr::V4(_))) {
                return;
            }
            let mut state = FlowState::new(now);
            state.update(now, outgoing, &pkt.ip, tcp);
            if state.ended {
                return;
            }
            self.flows.insert(key, Entry { state, phase: Phase::Observing });
            self.stats.flows_selected += 1;
            self.events.push_back(Event::FlowSelected(key));
        }
        self.maybe_start(&key, now);
        self.finish_if_done(&key, ts);
    }

    /// Starts tracing a flow once its packets tell enough to build harmless probes.
    fn maybe_start(&mut self, key: &FlowKey, now: Instant) {
        if self.traces_exhausted() {
            return;
        }
        let Some(entry) = self.flows.get_mut(key) else { return };
        if !matches!(entry.phase, Phase::Observing) || entry.state.ended {
            return;
        }
        let s = &entry.state;
        let ready = match key.protocol {
            // Both directions seen after the handshake: SND.UNA and RCV.NXT are known.
            Protocol::Tcp => s.tcp.established && probe::tcp_probe_numbers(s).is_some(),
            // The remote's reply gives its distance; without one, wait a little for it.
            Protocol::Udp => s.packets_out > 0 && (s.packets_in > 0 || now >= s.first_seen + self.cfg.udp_reply_wait),
            // Never selected: flows are TCP or UDP.
            Protocol::Icmp => false,
        };
        if !ready {
            return;
        }
        let distance = s.remote_router_hops();
        let first_ident = ident_seed(self.cfg.ident_seed, key);
        let trace = Trace::new(*key, &self.cfg, distance, first_ident, now);
        entry.phase = Phase::Tracing(Box::new(trace));
        self.stats.traces_started += 1;
        self.events.push_back(Event::TraceStarted { flow: *key, remote_distance: distance });
        if self.traces_exhausted() {
            self.flows.retain(|_, e| matches!(e.phase, Phase::Tracing(_)));
        }
    }

    fn finish_if_done(&mut self, key: &FlowKey, wall: SystemTime) {
        let finished = matches!(self.flows.get(key), Some(Entry { phase: Phase::Tracing(t), .. }) if t.is_finished());
        if finished {
            if let Some(Entry { phase: Phase::Tracing(t), .. }) = self.flows.remove(key) {
                self.done.insert(*key);
                self.stats.traces_finished += 1;
                self.events.push_back(Event::TraceFinished(Box::new(t.finish(wall))));
            }
        }
    }

    fn collect_finished(&mut self, wall: SystemTime) {
        let keys: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, e)| matches!(&e.phase, Phase::Tracing(t) if t.is_finished()))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.finish_if_done(&k, wall);
        }
    }

    /// Handles timers: overdue probes, idle UDP flows, UDP flows that waited for a reply.
    pub fn handle_timeout(&mut self, now: Now) {
        let mut start = Vec::new();
        let flow_timeout = self.cfg.flow_timeout;
        self.flows.retain(|key, e| match &mut e.phase {
            Phase::Tracing(t) => {
                t.handle_timeout(now.mono);
                if key.protocol == Protocol::Udp && !flow_timeout.is_zero() && now.mono >= e.state.last_seen + flow_timeout {
                    t.halt(StopReason::FlowTimeout);
                }
                true
            }
            Phase::Observing => {
                start.push(*key);
                now.mono < e.state.last_seen + OBSERVING_IDLE_LIMIT
            }
        });
        for k in start {
            self.maybe_start(&k, now.mono);
        }
        self.collect_finished(now.wall);
    }

    /// The next probe to send, written into `buf`. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Now, buf: &mut Vec<u8>) -> Option<Transmit> {
        if self.tx_queue.is_empty() {
            let due = self.flows.iter().filter(|(_, e)| matches!(&e.phase, Phase::Tracing(t) if t.due(now.mono).is_some()));
            self.tx_queue.extend(due.map(|(k, _)| *k));
        }
        while let Some(key) = self.tx_queue.pop_front() {
            let Some(Entry { state, phase: Phase::Tracing(t) }) = self.flows.get_mut(&key) else { continue };
            let Some(due) = t.due(now.mono) else { continue };
            let Some(shape) = probe::build(state, &key, due.ttl, due.ident, buf) else {
                t.cannot_build();
                self.finish_if_done(&key, now.wall);
                continue;
            };
            t.mark_sent(due, shape, now.mono, now.wall);
            if t.due(now.mono).is_some() {
                self.tx_queue.push_back(key);
            }
            self.stats.probes_sent += 1;
            return Some(Transmit { dst: key.remote.ip(), len: buf.len(), flow: key, ttl: due.ttl, ident: due.ident });
        }
        None
    }

    /// The driver could not send the probe `ident` of `flow`.
    pub fn handle_send_error(&mut self, now: Now, flow: &FlowKey, ident: u16, error: String) {
        if let Some(Entry { phase: Phase::Tracing(t), .. }) = self.flows.get_mut(flow) {
            t.send_failed(ident, error, now.mono);
        }
        self.finish_if_done(flow, now.wall);
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) / `poll_transmit` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut take = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for (key, e) in &self.flows {
            match &e.phase {
                Phase::Tracing(t) => {
                    if let Some(at) = t.poll_timeout() {
                        take(at);
                    }
                    if key.protocol == Protocol::Udp && !self.cfg.flow_timeout.is_zero() {
                        take(e.state.last_seen + self.cfg.flow_timeout);
                    }
                }
                Phase::Observing => {
                    if key.protocol == Protocol::Udp && e.state.packets_in == 0 {
                        take(e.state.first_seen + self.cfg.udp_reply_wait);
                    }
                    take(e.state.last_seen + OBSERVING_IDLE_LIMIT);
                }
            }
        }
        next
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The flows being traced.
    pub fn tracing(&self) -> impl Iterator<Item = &FlowKey> {
        self.flows.iter().filter_map(|(k, e)| matches!(e.phase, Phase::Tracing(_)).then_some(k))
    }
}

fn protocol_of(n: u8) -> Option<Protocol> {
    match n {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        _ => None,
    }
}

/// The IP length of a captured packet as its header announces it (IPv4 total length).
fn ip_length(pkt: &svctr_wire::packet::Packet<'_>) -> u16 {
    match &pkt.transport {
        Transport::Tcp(t) => (40 + t.payload_len).min(u32::from(u16::MAX)) as u16,
        Transport::Udp(u) => 28u16.saturating_add(u.payload_len),
        _ => 0,
    }
}

/// A per-flow starting identification: flows do not share one identification space (they are
/// told apart by the quoted 5-tuple), but distinct starting points make the probes of two traces
/// of the same 5-tuple in two runs unlikely to be confused by a late reply.
fn ident_seed(seed: u16, key: &FlowKey) -> u16 {
    // FNV-1a over the 5-tuple: cheap, deterministic, no dependency.
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
    match (h ^ (h >> 16)) as u16 {
        0 => 1,
        n => n,
    }
}

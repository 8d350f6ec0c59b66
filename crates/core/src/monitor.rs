//! The monitor: finds the flows of named services by itself and keeps tracing them while it
//! runs (the second idea of the Service Traceroute paper, §2.1).
//!
//! A [`Monitor`] puts three things together:
//! * a [`Detector`] (crate `svctr-detect`) that recognises a service's flows from sniffed DNS
//!   answers, TLS ClientHello and QUIC Initial server names, and IP prefixes;
//! * a policy: which flows may be traced now ([`FlowFilter`]), at which granularity one trace
//!   stands for many flows ([`Granularity`]: per flow, per destination and port, per
//!   destination, as the original tool's `-samehost`/`-sameport`), and when a long-lived flow
//!   is traced again ([`MonitorConfig::retrace_after`]);
//! * an [`Engine`] in external-selection mode, which traces the flows the policy hands it.
//!
//! Like the engine it is sans-IO: packets and time in; probes, timers and results out.
//!
//! # Two kinds of input
//! * [`handle_packet`](Monitor::handle_packet): what the engine needs, i.e. the packets of
//!   the flows (headers are enough: a small snap length) and ICMP errors.
//! * [`handle_detection_packet`](Monitor::handle_detection_packet): what the detector needs
//!   whole: DNS responses, the segments that carry a TLS ClientHello, QUIC long-header
//!   datagrams. A live driver captures these with a second, narrowly filtered capture with a
//!   large snap length; a driver with a single capture passes every packet to both.
//!
//! A flow is looked at when it shows up in `handle_packet` and is not being traced: if it
//! passes the filter and (when services are given) is recognised, and its granularity group is
//! neither being traced nor traced less than `retrace_after` ago, the engine starts watching
//! it. A flow recognised by its ClientHello is remembered, so that later packets of the flow
//! (a re-trace ten minutes later) still know its service after the DNS answer expired.
//!
//! # Memory
//! Per flow being watched or traced: the engine's state (see [`Engine`]). Per recognised flow:
//! one map entry, dropped after [`KNOWN_IDLE`] without packets. Per granularity group traced:
//! one map entry, dropped once `retrace_after` has passed (it then no longer holds anything
//! back); without `retrace_after` (trace once) it is kept for the run. The detector's own
//! bounds are in [`svctr_detect::DetectorConfig`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use svctr_detect::{Detector, DetectorConfig, DetectorStats, ServiceMatch, Signatures, Source};
use svctr_wire::packet::{parse_ip, Transport};

use crate::config::{ConfigError, TraceConfig};
use crate::engine::{Engine, EngineStats, Event};
use crate::flow::{flow_of, FlowFilter, FlowKey, Protocol};
use crate::machine::{Now, Transmit};
use crate::result::{MatchSource, ServiceTag};

/// A recognised flow without packets this long is forgotten.
pub const KNOWN_IDLE: Duration = Duration::from_secs(300);
/// How often the monitor's own maps are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How many flows one trace stands for (the original tool's `-samehost` / `-sameport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    /// Every flow is traced (each 5-tuple may hash onto its own path).
    #[default]
    Flow,
    /// One trace per protocol, destination address and port at a time.
    DestinationPort,
    /// One trace per protocol and destination address at a time.
    Destination,
}

crate::names::names!(
    Granularity,
    "granularity",
    Flow => "flow",
    DestinationPort => "destination-port",
    Destination => "destination",
);

/// What the monitor traces and how.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// Parameters of each trace.
    pub trace: TraceConfig,
    /// Which flows may be traced at all.
    pub filter: FlowFilter,
    /// Trace only the flows of these services (`None`: every flow the filter passes).
    pub services: Option<Signatures>,
    /// What the detector looks at (DNS, TLS, QUIC, prefixes) and its memory bounds.
    pub detector: DetectorConfig,
    /// One trace per flow, per destination and port, or per destination.
    pub granularity: Granularity,
    /// Trace a group again once this long has passed since its last trace ended (`None`:
    /// once per run). The original tool's default was 600 s.
    pub retrace_after: Option<Duration>,
    /// Start at most this many traces, then select no more (0: no limit).
    pub max_traces: usize,
    /// Flows watched or traced at once, and the bound of each of the monitor's own tables
    /// (see [`Engine::set_max_flows`]).
    pub max_flows: usize,
}

impl Default for MonitorConfig {
    /// Default trace parameters, every TCP and UDP flow, per-flow traces, re-traced after
    /// 600 s, no limit.
    fn default() -> Self {
        Self {
            trace: TraceConfig::default(),
            filter: FlowFilter::default(),
            services: None,
            detector: DetectorConfig::default(),
            granularity: Granularity::Flow,
            retrace_after: Some(Duration::from_secs(600)),
            max_traces: 0,
            max_flows: crate::engine::DEFAULT_MAX_FLOWS,
        }
    }
}

/// Counters of a monitor.
#[derive(Debug, Clone, Copy, Default)]
pub struct MonitorStats {
    /// The engine's counters.
    pub engine: EngineStats,
    /// The detector's counters (no detector: all zero).
    pub detector: DetectorStats,
    /// Flows recognised as a service's (DNS, prefix or ClientHello).
    pub flows_recognised: u64,
    /// Flows handed to the engine to trace.
    pub flows_watched: u64,
    /// Packets of flows not handed over because their group was being traced or had been
    /// traced less than `retrace_after` ago (counted per packet: a long flow counts often).
    pub packets_held_back: u64,
    /// Packets of another tracer's probes (see [`PROBE_TTL_MAX`]) and of their replies, not
    /// taken for flows.
    pub probe_packets_ignored: u64,
    /// Entries forgotten before their time to bound the monitor's own tables (recognised
    /// flows, probes' 5-tuples, groups waiting for `retrace_after`), oldest first; the
    /// engine's evictions are in `engine.flows_evicted`.
    pub entries_evicted: u64,
}

/// A TCP or UDP packet that leaves this host with a TTL (hop limit) this low is a tracer's
/// probe (a multipath discovery's, of this process or another, traceroute -T, mtr), never
/// an application's (which start at 64 or more): its 5-tuple is not a flow to trace, and the
/// replies to it are ignored for [`PROBE_MEMORY`].
pub const PROBE_TTL_MAX: u8 = 32;
/// How long a probe's 5-tuple is remembered, so that the answers it draws (a SYN-ACK, our
/// kernel's RST) are not taken for a flow either.
pub const PROBE_MEMORY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Group {
    Flow(FlowKey),
    DestinationPort(Protocol, SocketAddr),
    Destination(Protocol, IpAddr),
}

#[derive(Debug, Default)]
struct GroupState {
    /// The flow of this group the engine watches or traces.
    active: Option<FlowKey>,
    /// When the group's last trace ended.
    last_end: Option<Instant>,
}

#[derive(Debug)]
struct Known {
    tag: ServiceTag,
    last_seen: Instant,
}

/// The service monitor (see the module doc).
///
/// # Contract
/// As [`Engine`]'s: inputs [`handle_packet`](Self::handle_packet),
/// [`handle_detection_packet`](Self::handle_detection_packet) and
/// [`handle_timeout`](Self::handle_timeout); outputs, polled after every input,
/// [`poll_transmit`](Self::poll_transmit), [`poll_event`](Self::poll_event) (the engine's
/// [`Event`]s, results tagged with their service) and [`poll_timeout`](Self::poll_timeout).
/// Time is monotonic; nothing reads a clock.
#[derive(Debug)]
pub struct Monitor {
    cfg: MonitorConfig,
    engine: Engine,
    detector: Option<Detector>,
    known: HashMap<FlowKey, Known>,
    groups: HashMap<Group, GroupState>,
    events: VecDeque<Event>,
    selecting: bool,
    next_sweep: Option<Instant>,
    /// The time of the latest input (when a result is collected, its trace ended then).
    last_now: Option<Instant>,
    /// The 5-tuples of other tracers' probes seen lately (see [`PROBE_TTL_MAX`]).
    probes: HashMap<FlowKey, Instant>,
    stats: MonitorStats,
}

impl Monitor {
    /// A monitor for this host (`local`: its addresses, both families welcome).
    pub fn new(cfg: MonitorConfig, local: Vec<IpAddr>) -> Result<Self, ConfigError> {
        let mut engine = Engine::external(cfg.trace.clone(), local)?;
        engine.set_max_traces(cfg.max_traces);
        engine.set_max_flows(cfg.max_flows);
        let detector = cfg
            .services
            .clone()
            .map(|s| Detector::new(s, cfg.detector.clone()));
        Ok(Self {
            cfg,
            engine,
            detector,
            known: HashMap::new(),
            groups: HashMap::new(),
            events: VecDeque::new(),
            selecting: true,
            next_sweep: None,
            last_now: None,
            probes: HashMap::new(),
            stats: MonitorStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MonitorConfig {
        &self.cfg
    }

    /// The engine (counters, flows traced).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The detector, when services were given.
    pub fn detector(&self) -> Option<&Detector> {
        self.detector.as_ref()
    }

    /// Counters so far.
    pub fn stats(&self) -> MonitorStats {
        let mut s = self.stats;
        s.engine = self.engine.stats();
        s.detector = self
            .detector
            .as_ref()
            .map(Detector::stats)
            .unwrap_or_default();
        s
    }

    /// Whether no trace is in progress.
    pub fn is_idle(&self) -> bool {
        self.engine.is_idle()
    }

    /// Whether it still selects new flows (it stops once `max_traces` traces started, or
    /// after [`stop_selecting`](Self::stop_selecting)).
    pub fn is_selecting(&self) -> bool {
        // The engine enforces `max_traces` (it lets the flows still waiting go).
        self.selecting && self.engine.is_accepting()
    }

    /// Select no new flows; traces in progress go on.
    pub fn stop_selecting(&mut self) {
        self.selecting = false;
        self.engine.stop_selecting();
        self.pump();
    }

    /// [`stop_selecting`](Self::stop_selecting), as [`crate::Machine::stop_starting`].
    pub fn stop_starting(&mut self, _now: Now) {
        self.stop_selecting();
    }

    /// Whether no trace is in progress and none will start.
    pub fn is_done(&self) -> bool {
        self.is_idle() && !self.is_selecting()
    }

    /// The engine's replies matched to a probe (see [`crate::Machine::replies_matched`]).
    pub fn replies_matched(&self) -> Option<u64> {
        self.engine.replies_matched()
    }

    /// Finish every trace now (`interrupted`) and select no new flows.
    pub fn interrupt(&mut self, now: Now) {
        self.last_now = Some(now.mono);
        self.selecting = false;
        self.engine.interrupt(now);
        self.pump();
    }

    /// One captured IP packet for the engine: a packet of a flow (either direction, our own
    /// probes included) or an ICMP/ICMPv6 error. The capture may cut payloads.
    pub fn handle_packet(&mut self, now: Instant, ts: SystemTime, bytes: &[u8]) {
        self.last_now = Some(now);
        let Ok(pkt) = parse_ip(bytes) else {
            self.engine.handle_packet(now, ts, bytes); // counted as malformed there
            return;
        };
        // The packet's flow, derived once for the policy and the engine.
        let flow = flow_of(self.engine.local_addresses(), &pkt);
        if let Some((key, outgoing)) = flow {
            if !self.engine.is_tracking(&key) {
                let rst = matches!(&pkt.transport, Transport::Tcp(t) if t.flags & 0x04 != 0);
                if self.is_probe(now, &key, outgoing, pkt.ip.ttl, rst) {
                    self.stats.probe_packets_ignored += 1;
                    return;
                }
                self.consider(now, key);
            }
        }
        self.engine.handle_classified(now, ts, &pkt, flow);
        self.pump();
    }

    /// Whether a packet of an untracked flow belongs to a tracer's probe (see
    /// [`PROBE_TTL_MAX`]), remembering the probe's 5-tuple: the probe itself, or, for
    /// [`PROBE_MEMORY`], what it draws: an incoming packet, or this host's kernel's RST.
    /// Another outgoing packet with an application's TTL is the application's own, even on a
    /// 5-tuple that tracers probe too (other processes tracing the same live flow probe with
    /// its 5-tuple): its flow is taken.
    fn is_probe(
        &mut self,
        now: Instant,
        key: &FlowKey,
        outgoing: bool,
        ttl: u8,
        rst: bool,
    ) -> bool {
        if outgoing && ttl <= PROBE_TTL_MAX {
            if self.probes.len() >= MAX_PROBE_MEMORY && !self.probes.contains_key(key) {
                self.probes.retain(|_, seen| now < *seen + PROBE_MEMORY);
                self.stats.entries_evicted += evict_oldest(&mut self.probes, |seen| *seen);
            }
            self.probes.insert(*key, now);
            return true;
        }
        match self.probes.get(key) {
            Some(_) if outgoing && !rst => {
                self.probes.remove(key);
                false
            }
            Some(seen) if now < *seen + PROBE_MEMORY => true,
            Some(_) => {
                self.probes.remove(key);
                false
            }
            None => false,
        }
    }

    /// One captured IP packet for the detector (DNS responses, TLS ClientHello segments,
    /// QUIC long-header datagrams; anything else is ignored cheaply). Needs the whole packet.
    pub fn handle_detection_packet(&mut self, now: Instant, bytes: &[u8]) {
        self.last_now = Some(now);
        let Some(det) = &mut self.detector else {
            return;
        };
        let Some((key, m)) = det.handle_packet(now, bytes, self.engine.local_addresses()) else {
            return;
        };
        self.remember(now, key, tag_of(&m));
        // The flow may be waiting in no queue at all (its handshake is over): look at it now.
        if !self.engine.is_tracking(&key) {
            self.consider(now, key);
        }
        self.pump();
    }

    fn remember(&mut self, now: Instant, key: FlowKey, tag: ServiceTag) {
        if self.known.len() >= self.max_table() && !self.known.contains_key(&key) {
            self.known.retain(|_, k| k.last_seen + KNOWN_IDLE > now);
            self.stats.entries_evicted += evict_oldest(&mut self.known, |k| k.last_seen);
        }
        if self
            .known
            .insert(
                key,
                Known {
                    tag,
                    last_seen: now,
                },
            )
            .is_none()
        {
            self.stats.flows_recognised += 1;
        }
        self.schedule_sweep(now);
    }

    fn schedule_sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_EVERY);
        }
    }

    fn group_of(&self, key: &FlowKey) -> Group {
        match self.cfg.granularity {
            Granularity::Flow => Group::Flow(*key),
            Granularity::DestinationPort => Group::DestinationPort(key.protocol, key.remote),
            Granularity::Destination => Group::Destination(key.protocol, key.remote.ip()),
        }
    }

    /// Hands a flow not being traced to the engine if the policy allows it now.
    fn consider(&mut self, now: Instant, key: FlowKey) {
        if !self.is_selecting() || !self.cfg.filter.matches(&key) {
            return;
        }
        // With services: a recognised flow (its entry kept fresh), or none of ours.
        match &self.detector {
            None => {}
            Some(det) => match self.known.get_mut(&key) {
                Some(k) => k.last_seen = now,
                None => {
                    let Some(m) = det.lookup(now, &key) else {
                        return;
                    };
                    self.remember(now, key, tag_of(&m));
                }
            },
        }
        let group = self.group_of(&key);
        if self.groups.get(&group).is_some_and(|g| self.holds(g, now)) {
            self.stats.packets_held_back += 1;
            return;
        }
        // The tag is copied for a flow handed over only, not for each packet held back.
        let tag = if self.detector.is_some() {
            self.known.get(&key).map(|k| k.tag.clone())
        } else {
            None
        };
        if self.engine.watch(now, key, tag) {
            // The engine's evictions (events) release their groups first.
            self.pump();
            // Groups with a flow in the engine are bounded by the engine's table; those that
            // only wait out `retrace_after` get a bound of their own, as large.
            if self.groups.len() >= 2 * self.max_table() && !self.groups.contains_key(&group) {
                self.bound_groups(now);
            }
            self.groups.entry(group).or_default().active = Some(key);
            self.stats.flows_watched += 1;
            self.schedule_sweep(now);
        }
    }

    /// Whether a group holds its flows back now: one of them is watched or traced, or its last
    /// trace ended less than `retrace_after` ago.
    fn holds(&self, g: &GroupState, now: Instant) -> bool {
        g.active.is_some()
            || g.last_end
                .is_some_and(|end| self.cfg.retrace_after.is_none_or(|d| now < end + d))
    }

    /// Moves the engine's events out, keeping the groups up to date.
    fn pump(&mut self) {
        while let Some(ev) = self.engine.poll_event() {
            match &ev {
                Event::TraceFinished(r) => self.release(&r.flow.key(), true),
                Event::FlowForgotten(key) => self.release(key, false),
                _ => {}
            }
            self.events.push_back(ev);
        }
    }

    fn release(&mut self, key: &FlowKey, traced: bool) {
        let group = self.group_of(key);
        if let Some(g) = self.groups.get_mut(&group) {
            if g.active == Some(*key) {
                g.active = None;
            }
            if traced {
                // The result is collected right after the input that ended the trace.
                g.last_end = self.last_now;
            }
            if g.active.is_none() && g.last_end.is_none() {
                // Holds nothing back: the same as no entry (flows forgotten untraced, as in a
                // flood of new 5-tuples, leave nothing behind).
                self.groups.remove(&group);
            }
        }
    }

    /// The bound of each of the monitor's tables: the engine's, so that a flood of new flows
    /// keeps every table bounded (see [`Engine::set_max_flows`]).
    fn max_table(&self) -> usize {
        self.engine.max_flows()
    }

    /// Makes room in a full table of groups: those that hold nothing back go, then the half
    /// that ended their trace longest ago (traced again sooner than `retrace_after`).
    fn bound_groups(&mut self, now: Instant) {
        let groups = std::mem::take(&mut self.groups);
        let mut kept: HashMap<Group, GroupState> = groups
            .into_iter()
            .filter(|(_, g)| self.holds(g, now))
            .collect();
        if kept.len() >= 2 * self.max_table() {
            // Groups with a flow in the engine stay: the engine bounds them.
            let mut ended: HashMap<Group, Instant> = kept
                .iter()
                .filter(|(_, g)| g.active.is_none())
                .filter_map(|(k, g)| g.last_end.map(|t| (*k, t)))
                .collect();
            let before = ended.len();
            evict_oldest(&mut ended, |t| *t);
            let evicted = before - ended.len();
            if evicted > 0 {
                kept.retain(|k, g| g.active.is_some() || ended.contains_key(k));
                self.stats.entries_evicted += evicted as u64;
            }
        }
        self.groups = kept;
    }

    /// Handles timers (the engine's and the detector's, and the monitor's sweeps).
    pub fn handle_timeout(&mut self, now: Now) {
        self.last_now = Some(now.mono);
        self.engine.handle_timeout(now);
        if let Some(det) = &mut self.detector {
            if det.next_timeout().is_some_and(|t| t <= now.mono) {
                det.handle_timeout(now.mono);
            }
        }
        self.pump();
        if self.next_sweep.is_some_and(|t| t <= now.mono) {
            self.sweep(now.mono);
        }
    }

    fn sweep(&mut self, now: Instant) {
        self.known.retain(|_, k| k.last_seen + KNOWN_IDLE > now);
        // A group that holds nothing back is the same as no entry.
        let groups = std::mem::take(&mut self.groups);
        self.groups = groups
            .into_iter()
            .filter(|(_, g)| self.holds(g, now))
            .collect();
        self.next_sweep =
            (!self.known.is_empty() || !self.groups.is_empty()).then_some(now + SWEEP_EVERY);
    }

    /// The next probe to send. Call until `None` (or until a rate limit says stop).
    pub fn poll_transmit(&mut self, now: Now, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.last_now = Some(now.mono);
        let tx = self.engine.poll_transmit(now, buf);
        self.pump();
        tx
    }

    /// Whether probes are due and queued (see [`Engine::has_pending_transmit`]).
    pub fn has_pending_transmit(&self) -> bool {
        self.engine.has_pending_transmit()
    }

    /// The driver could not send a probe.
    pub fn handle_send_error(&mut self, now: Now, tx: &Transmit, error: String) {
        self.last_now = Some(now.mono);
        self.engine.handle_send_error(now, tx, error);
        self.pump();
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let det = self.detector.as_ref().and_then(Detector::next_timeout);
        [self.engine.poll_timeout(), det, self.next_sweep]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next event: the engine's, with every result tagged with its service.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

crate::machine::machine_by_inherent_methods!(Monitor, Event);

/// How many probes' 5-tuples are remembered at most (see [`PROBE_MEMORY`]).
const MAX_PROBE_MEMORY: usize = 65_536;

/// Removes the older half of a full map by the instant `at` gives each entry (at least one
/// entry); returns how many went. Linear, and run only when a table is full, so a flood pays
/// it once per half a table of new entries.
fn evict_oldest<K: Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    at: impl Fn(&V) -> Instant,
) -> u64 {
    if map.is_empty() {
        return 0;
    }
    let mut times: Vec<Instant> = map.values().map(&at).collect();
    let mid = times.len() / 2;
    let (_, median, _) = times.select_nth_unstable(mid);
    let median = *median;
    let before = map.len();
    map.retain(|_, v| at(v) > median);
    (before - map.len()) as u64
}

fn tag_of(m: &ServiceMatch) -> ServiceTag {
    ServiceTag {
        service: m.service.to_string(),
        name: m.name.clone(),
        source: match m.source {
            Source::Dns => MatchSource::Dns,
            Source::TlsSni => MatchSource::TlsSni,
            Source::QuicSni => MatchSource::QuicSni,
            Source::Prefix => MatchSource::Prefix,
        },
    }
}

//! The flow tracer and the service monitor, live: the [`Monitor`] on the run loop (see the
//! run module) with its captures (the flow capture, the detection capture when services are
//! named, and the fast lane, opened when first needed) and its hooks (results, the UDP shield,
//! the fast lane).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use svctr_core::{
    Event, FlowFilter, FlowKey, Granularity, Monitor, MonitorConfig, MonitorStats, NotTraced,
    Protocol, TraceConfig, TraceResult,
};

use crate::capture::{Capture, Delivery, DETECTION_SNAPLEN, SNAPLEN};
use crate::filter::{detection_filter, flow_filter, lane_filter, DetectionSources, LANE_FLOWS};
use crate::iface::interface_addresses;
use crate::live::{LiveStats, LIVE_EVERY};
use crate::run::{Hooks, Limits, Source, Sources};
use crate::sender::RawSockets;
use crate::shield::{Guarded, Shield};
use crate::Error;

/// What to trace and how: the flows of one 5-tuple selection (the `flow` command). A thin
/// form of [`MonitorOptions`] kept for existing callers.
#[derive(Debug, Clone)]
pub struct FlowTraceOptions {
    /// Interface to capture on and send from.
    pub iface: String,
    /// Which flows.
    pub filter: FlowFilter,
    /// Trace parameters.
    pub trace: TraceConfig,
    /// Stop after this many traces (0: until `duration` or the stop flag).
    pub max_traces: usize,
    /// Stop selecting new flows after this long; in-flight traces finish.
    pub duration: Option<Duration>,
    /// Install the nftables rule that keeps ICMP errors caused by UDP probes away from the
    /// local UDP socket (see the shield module).
    pub udp_shield: bool,
}

/// What the monitor traces and how (the `monitor` command, and `flow --service`).
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    /// Interface to capture on and send from (`any`: every interface, Linux cooked capture).
    pub iface: String,
    /// Which flows, which services, granularity, re-tracing, trace parameters, how many.
    pub config: MonitorConfig,
    /// Select flows for at most this long; then exit once traces in flight finish.
    pub duration: Option<Duration>,
    /// Install the nftables rules that keep ICMP errors caused by UDP probes away from the
    /// local UDP sockets.
    pub udp_shield: bool,
    /// At most this many probes per second over all flows (0: no limit).
    pub rate: u32,
    /// The flow capture's kernel ring in bytes (`None`: 4 MiB when at most 64 traces are
    /// asked for, else 32 MiB).
    pub capture_buffer: Option<usize>,
    /// Counters to keep up to date while the run goes on, for another thread to read (`None`:
    /// none; the [`RunSummary`] has them all at the end).
    pub live: Option<Arc<LiveStats>>,
    /// Keep every probe as it left and every reply matched to one in this pcap file, with
    /// their kernel timestamps.
    pub pcap: Option<std::path::PathBuf>,
}

impl From<&FlowTraceOptions> for MonitorOptions {
    fn from(o: &FlowTraceOptions) -> Self {
        Self {
            iface: o.iface.clone(),
            config: MonitorConfig {
                trace: o.trace.clone(),
                filter: o.filter,
                services: None,
                granularity: Granularity::Flow,
                retrace_after: None,
                max_traces: o.max_traces,
                ..MonitorConfig::default()
            },
            duration: o.duration,
            udp_shield: o.udp_shield,
            rate: 0,
            capture_buffer: None,
            live: None,
            pcap: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Traces completed.
    pub traced: usize,
    /// The monitor's counters (engine and detector included).
    pub stats: MonitorStats,
    /// Packets the captures dropped (kernel buffer full): if non-zero, replies may be missing.
    pub capture_drops: u32,
    /// Packets the flow capture's kernel filter passed to the driver.
    pub captured: u32,
    /// Packets the detection capture's kernel filter passed to the driver.
    pub detection_captured: u32,
    /// The most traces in progress at once.
    pub peak_traces: usize,
    /// Flows that were selected but could not be traced, and why (the first few).
    pub not_traced: Vec<(FlowKey, NotTraced)>,
}

/// The selection in words, for "nothing matched".
fn describe(cfg: &MonitorConfig) -> String {
    let f = &cfg.filter;
    let mut s = f
        .protocol
        .map_or_else(|| "tcp or udp".to_string(), |p| p.as_str().to_string());
    match (f.remote_ip, f.remote_port) {
        (Some(ip), Some(p)) => s.push_str(&format!(" remote {}", std::net::SocketAddr::new(ip, p))),
        (Some(ip), None) => s.push_str(&format!(" remote {ip}")),
        (None, Some(p)) => s.push_str(&format!(" remote port {p}")),
        (None, None) => {}
    }
    if let Some(p) = f.local_port {
        s.push_str(&format!(" local port {p}"));
    }
    if let Some(sigs) = &cfg.services {
        let names: Vec<&str> = sigs.services().iter().map(|s| s.name.as_str()).collect();
        s.push_str(&format!(" of {}", names.join(", ")));
    }
    s
}

/// Kernel ring of the flow capture: room for a second or more of the packets of thousands of
/// flows, their probes and replies (~70,000 packets of up to the snap length), so that a busy
/// machine's scheduling hiccups lose nothing...
const FLOW_RING: usize = 32 << 20;
/// ...or of a few (`--count` up to [`FEW_FLOWS`]): a small ring is set up faster (the kernel
/// allocates and maps the whole ring when the capture opens).
const FEW_FLOWS_RING: usize = 4 << 20;
const FEW_FLOWS: usize = 64;
/// Kernel ring of the detection capture (few, large packets).
const DETECTION_RING: i32 = 16 << 20;
/// Both captures hand over packets in blocks, at most 2 ms late: a wake-up per block, not per
/// packet, is what keeps the tracer cheap next to a bulk transfer (see the capture module).
const BATCHED: Delivery = Delivery::Batched { timeout_ms: 2 };

/// Traces live flows until `count` traces are done, `duration` has passed (and in-flight traces
/// finished), or `stop` is set (in-flight traces are then reported as interrupted). Calls
/// `on_result` for each finished trace as soon as it finishes.
pub fn trace_flows(
    opts: &FlowTraceOptions,
    stop: &AtomicBool,
    on_result: impl FnMut(TraceResult),
) -> Result<RunSummary, Error> {
    monitor(&MonitorOptions::from(opts), stop, on_result)
}

/// Runs the monitor: traces the flows `opts.config` selects (by 5-tuple, by service, or both)
/// until `max_traces` traces are done, `duration` has passed (and traces in flight finished),
/// or `stop` is set (traces in flight are then reported as `interrupted`). Calls `on_result`
/// for each finished trace as soon as it finishes, tagged with its service.
pub fn monitor(
    opts: &MonitorOptions,
    stop: &AtomicBool,
    on_result: impl FnMut(TraceResult),
) -> Result<RunSummary, Error> {
    let cfg = &opts.config;
    let mut local = interface_addresses(&opts.iface)?;
    if let Some(r) = cfg.filter.remote_ip {
        local.retain(|a| a.is_ipv4() == r.is_ipv4());
    }
    if local.is_empty() {
        return Err(Error::NoAddress(opts.iface.clone()));
    }
    // This process's slot, held until the run ends: the kernel filter and the engine take only
    // replies that carry it (see the reserve module).
    let (slot, _slot_reservation) = crate::reserve::flow_slot()?;
    let mut mcfg = cfg.clone();
    mcfg.trace.ident_seed = seed();
    mcfg.trace.slot = slot;
    if !opts.udp_shield {
        // Copies of a SYN are harmless only behind the shield (see the shield module).
        mcfg.trace.handshake_wait = Duration::ZERO;
    }
    // The configuration is checked here, once, before anything needs privileges.
    let mut mon = Monitor::new(mcfg, local.clone())?;
    // The raw sockets first: their EPERM is the clearest privilege error.
    let sender = RawSockets::open(
        Some(&opts.iface),
        local.iter().any(IpAddr::is_ipv4),
        local.iter().any(IpAddr::is_ipv6),
    )?;
    // Checked now, not at the first UDP flow (a monitor would fail hours into its run), and
    // the tables of processes that are gone removed.
    let shield = if opts.udp_shield {
        Some(Shield::checked(
            local.iter().any(IpAddr::is_ipv4),
            local.iter().any(IpAddr::is_ipv6),
        )?)
    } else {
        None
    };
    let ring = opts
        .capture_buffer
        .unwrap_or(if (1..=FEW_FLOWS).contains(&cfg.max_traces) {
            FEW_FLOWS_RING
        } else {
            FLOW_RING
        });
    let ring = i32::try_from(ring).unwrap_or(i32::MAX);
    let mut sources = Sources::new();
    let flow_capture = sources.add(Source {
        cap: Capture::open_with(
            &opts.iface,
            &flow_filter(&cfg.filter, &local, slot),
            SNAPLEN,
            ring,
            BATCHED,
        )?
        .into(),
        feed: Monitor::handle_packet,
        paced: true,
    });
    let what = DetectionSources {
        dns: cfg.detector.dns,
        tls: cfg.detector.tls,
        quic: cfg.detector.quic,
    };
    let detection = match (&cfg.services, detection_filter(&cfg.filter, &local, what)) {
        (Some(_), Some(f)) => Some(
            sources.add(Source {
                cap: Capture::open_with(
                    &opts.iface,
                    &f,
                    DETECTION_SNAPLEN,
                    DETECTION_RING,
                    BATCHED,
                )?
                .into(),
                feed: |m: &mut Monitor, now, _ts, packet| m.handle_detection_packet(now, packet),
                paced: false,
            }),
        ),
        _ => None,
    };
    let mut hooks = MonitorHooks {
        lane: Lane::new(&opts.iface),
        shield,
        shielded: Shielded::default(),
        traced: 0,
        active: 0,
        peak_traces: 0,
        not_traced: Vec::new(),
        live: opts.live.clone(),
        next_live: Instant::now(),
        on_result,
    };
    let packets = opts
        .pcap
        .as_deref()
        .map(crate::savefile::PacketLog::create)
        .transpose()?
        .map(std::cell::RefCell::new);
    let limits = Limits {
        iface: &opts.iface,
        rate: opts.rate,
        duration: opts.duration,
        stop,
        packets: packets.as_ref(),
    };
    let end = crate::run::run(&mut mon, sources, &sender, &limits, &mut hooks)?;
    if let Some(p) = packets {
        p.into_inner().finish()?;
    }
    let received = |id: Option<usize>| id.and_then(|i| end.received.get(i).copied()).unwrap_or(0);
    let summary = RunSummary {
        traced: hooks.traced,
        stats: mon.stats(),
        capture_drops: end.dropped,
        captured: received(Some(flow_capture)) + received(hooks.lane.source),
        detection_captured: received(detection),
        peak_traces: hooks.peak_traces,
        not_traced: hooks.not_traced,
    };
    if let Some(live) = &opts.live {
        // The final values (the captures' last drops were read at their close).
        let st = &summary.stats;
        store(&live.flows_recognised, st.flows_recognised);
        store(&live.flows_watched, st.flows_watched);
        store(&live.traces_active, 0);
        live.capture_drops
            .fetch_max(u64::from(summary.capture_drops), Ordering::Relaxed);
    }
    if summary.traced == 0 && !end.interrupted {
        if let Some(d) = opts.duration {
            if summary.stats.flows_watched == 0 {
                return Err(Error::NothingMatched {
                    selector: describe(cfg),
                    duration: d,
                });
            }
        }
    }
    Ok(summary)
}

/// What the monitor's run does with its events: results out, the shield up for the traces
/// that need it, the fast lane for the flows waiting.
struct MonitorHooks<F> {
    lane: Lane,
    shield: Option<Shield>,
    shielded: Shielded,
    traced: usize,
    /// Traces in progress, and the most at once.
    active: usize,
    peak_traces: usize,
    not_traced: Vec<(FlowKey, NotTraced)>,
    /// Counters for another thread, and when those read from the monitor and the captures
    /// are next refreshed.
    live: Option<Arc<LiveStats>>,
    next_live: Instant,
    on_result: F,
}

fn store(counter: &AtomicU64, v: u64) {
    counter.store(v, Ordering::Relaxed);
}

impl<F: FnMut(TraceResult)> Hooks<Monitor> for MonitorHooks<F> {
    fn on_event(&mut self, ev: Event) -> Result<(), Error> {
        match ev {
            Event::FlowSelected(flow) => self.lane.add(flow, Instant::now()),
            Event::FlowForgotten(flow) => self.lane.remove(&flow),
            Event::FlowNotTraced { flow, reason } if self.not_traced.len() < NOT_TRACED_KEPT => {
                self.not_traced.push((flow, reason));
            }
            Event::TraceStarted {
                flow, syn_copy_of, ..
            } => {
                self.lane.remove(&flow);
                self.active += 1;
                self.peak_traces = self.peak_traces.max(self.active);
                if let Some(live) = &self.live {
                    live.traces_started.fetch_add(1, Ordering::Relaxed);
                    store(&live.traces_active, self.active as u64);
                }
                let guard = match (flow.protocol, syn_copy_of) {
                    (Protocol::Udp, _) => Some(Guarded::Udp(flow)),
                    (Protocol::Tcp, Some(seq)) => Some(Guarded::SynCopies(flow, seq)),
                    _ => None,
                };
                if let Some(g) = guard {
                    self.shielded.active.insert(flow, g);
                    self.shielded.started.push(g);
                }
            }
            Event::TraceFinished(r) => {
                if let Some(g) = self.shielded.active.remove(&r.flow.key()) {
                    self.shielded.finished.push(g);
                }
                self.traced += 1;
                self.active = self.active.saturating_sub(1);
                if let Some(live) = &self.live {
                    store(&live.traces_active, self.active as u64);
                }
                (self.on_result)(*r);
            }
            _ => {}
        }
        Ok(())
    }

    /// A flow's shield must be in place before its first probe.
    fn before_send(&mut self, _now: Instant) -> Result<(), Error> {
        if let Some(shield) = &mut self.shield {
            shield.protect(&self.shielded.started)?;
        }
        self.shielded.started.clear();
        Ok(())
    }

    fn after_turn(&mut self, now: Instant, sources: &mut Sources<Monitor>) -> Result<(), Error> {
        if let Some(shield) = &mut self.shield {
            shield.release(&self.shielded.finished, now);
            shield.expire(now)?;
        }
        self.shielded.finished.clear();
        self.lane.update(now, sources)
    }

    fn observe(&mut self, now: Instant, mon: &Monitor, sources: &mut Sources<Monitor>) {
        let Some(live) = &self.live else { return };
        if now < self.next_live {
            return;
        }
        self.next_live = now + LIVE_EVERY;
        let st = mon.stats();
        store(&live.flows_recognised, st.flows_recognised);
        store(&live.flows_watched, st.flows_watched);
        store(&live.capture_drops, u64::from(sources.drops()));
    }

    fn next_wake(&self) -> Option<Instant> {
        self.lane.next_work()
    }
}

/// Kernel ring of the fast lane (a few flows' packets at a time).
const LANE_RING: i32 = 1 << 20;
/// The lane's filter is replaced at most this often (less often when it is slow to compile).
const LANE_UPDATE: Duration = Duration::from_millis(5);
/// The lane is opened once a flow has waited this long for its first incoming packets (most
/// flows get them from the flow capture at once; a capture costs ~20 ms to set up and to close).
const LANE_OPEN_AFTER: Duration = Duration::from_millis(20);

/// The fast lane: a third capture that passes every incoming packet of the flows the engine
/// watches but does not trace yet (see [`lane_filter`]), so that a flow already running starts
/// at its next packet instead of waiting for the flow capture's sample. Opened when first
/// needed.
struct Lane {
    iface: String,
    /// Its place among the run's captures, once open.
    source: Option<usize>,
    /// Flows waiting, with the instant they began to, in that order (with flows since gone:
    /// see `member`).
    waiting: VecDeque<(FlowKey, Instant)>,
    member: HashSet<FlowKey>,
    /// The flows the installed filter passes.
    shown: Vec<FlowKey>,
    dirty: bool,
    next_update: Instant,
}

impl Lane {
    fn new(iface: &str) -> Self {
        Self {
            iface: iface.to_string(),
            source: None,
            waiting: VecDeque::new(),
            member: HashSet::new(),
            shown: Vec::new(),
            dirty: false,
            next_update: Instant::now(),
        }
    }

    fn add(&mut self, flow: FlowKey, now: Instant) {
        if self.member.insert(flow) {
            self.waiting.push_back((flow, now));
            self.dirty |= self.shown.len() < LANE_FLOWS;
        }
    }

    fn remove(&mut self, flow: &FlowKey) {
        if self.member.remove(flow) {
            self.dirty |= self.shown.contains(flow);
        }
    }

    /// When `update` next has work.
    fn next_work(&self) -> Option<Instant> {
        if !self.dirty {
            return None;
        }
        match (&self.source, self.waiting.front()) {
            (None, Some((_, since))) => Some(*since + LANE_OPEN_AFTER),
            (None, None) => None,
            (Some(_), _) => Some(self.next_update),
        }
    }

    /// Installs the filter for the first waiting flows if they changed (rate-limited), opening
    /// the capture the first time a flow has waited [`LANE_OPEN_AFTER`].
    fn update(&mut self, now: Instant, sources: &mut Sources<Monitor>) -> Result<(), Error> {
        while self
            .waiting
            .front()
            .is_some_and(|(f, _)| !self.member.contains(f))
        {
            self.waiting.pop_front();
        }
        if self.waiting.len() > 2 * self.member.len() + 1024 {
            // Flows gone behind one still waiting at the front (a flood of flows forgotten
            // untraced): the queue stays bounded by the engine's table.
            let member = &self.member;
            self.waiting.retain(|(f, _)| member.contains(f));
        }
        if !self.dirty || now < self.next_update {
            return Ok(());
        }
        let id = match self.source {
            Some(id) => id,
            None if self
                .waiting
                .front()
                .is_some_and(|(_, since)| now >= *since + LANE_OPEN_AFTER) =>
            {
                let cap = Capture::open_with(
                    &self.iface,
                    &lane_filter(&[]),
                    SNAPLEN,
                    LANE_RING,
                    BATCHED,
                )?;
                let id = sources.add(Source {
                    cap: cap.into(),
                    feed: Monitor::handle_packet,
                    paced: false,
                });
                *self.source.insert(id)
            }
            None => return Ok(()),
        };
        let Some(lane) = sources.get_mut(id) else {
            return Ok(());
        };
        self.shown = self
            .waiting
            .iter()
            .map(|(f, _)| *f)
            .filter(|f| self.member.contains(f))
            .take(LANE_FLOWS)
            .collect();
        let t = Instant::now();
        lane.cap.set_filter(&lane_filter(&self.shown))?;
        // Compiling the filter costs milliseconds with many servers: wait ten times what it
        // took before the next update, so the lane never takes more than a tenth of a core.
        self.dirty = false;
        self.next_update = now + LANE_UPDATE.max(t.elapsed() * 10);
        Ok(())
    }
}

/// Shielded traces: those in progress, and those that started and ended in this turn of the
/// loop (the shield's work, batched).
#[derive(Default)]
struct Shielded {
    active: HashMap<FlowKey, Guarded>,
    started: Vec<Guarded>,
    finished: Vec<Guarded>,
}

/// Flows reported as not traced: at most this many are kept for the summary.
const NOT_TRACED_KEPT: usize = 16;

/// A per-run seed for probe identifications (no RNG dependency: time and pid are enough to
/// make two runs differ).
fn seed() -> u16 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ std::process::id().rotate_left(16)) as u16
}

/// Starts the monitor in a background thread: iterate over the results as traces finish,
/// cancel it at any time (traces in flight end as `interrupted`), then `wait` for the summary.
pub fn spawn_monitor(opts: MonitorOptions) -> crate::MonitorHandle {
    crate::handle::spawn(move |stop, emit| monitor(&opts, stop, emit))
}

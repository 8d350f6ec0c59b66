//! The run loop of the flow tracer and the service monitor: two captures → monitor → raw
//! sockets, with `poll(2)` on the captures' descriptors so the loop sleeps exactly until the
//! next packet, the monitor's next timer, or the next token of the probe rate.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use svctr_core::{
    Event, FlowKey, FlowSelector, Granularity, Monitor, MonitorConfig, MonitorStats, NotTraced,
    Now, Pacer, Protocol, TraceConfig, TraceResult,
};

use crate::capture::{Capture, Delivery, DETECTION_SNAPLEN, SNAPLEN};
use crate::filter::{detection_filter, flow_filter, lane_filter, DetectionSources, LANE_FLOWS};
use crate::iface::interface_addresses;
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
    pub selector: FlowSelector,
    /// Trace parameters.
    pub trace: TraceConfig,
    /// Stop after this many traced flows (0: until `duration` or the stop flag).
    pub count: usize,
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
}

impl From<&FlowTraceOptions> for MonitorOptions {
    fn from(o: &FlowTraceOptions) -> Self {
        Self {
            iface: o.iface.clone(),
            config: MonitorConfig {
                trace: o.trace.clone(),
                filter: o.selector.into(),
                services: None,
                granularity: Granularity::Flow,
                retrace_after: None,
                max_traces: o.count,
                ..MonitorConfig::default()
            },
            duration: o.duration,
            udp_shield: o.udp_shield,
            rate: 0,
            capture_buffer: None,
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

/// The longest the loop sleeps, so the stop flag and the duration are noticed promptly.
const MAX_SLEEP: Duration = Duration::from_millis(50);
/// Packets read from a capture per loop turn: timers and probes are served in between.
pub(crate) const DRAIN_MAX: usize = 4096;
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
    mut on_result: impl FnMut(TraceResult),
) -> Result<RunSummary, Error> {
    let cfg = &opts.config;
    let mut local = interface_addresses(&opts.iface)?;
    if let Some(r) = cfg.filter.remote_ip {
        local.retain(|a| a.is_ipv4() == r.is_ipv4());
    }
    if local.is_empty() {
        return Err(Error::NoAddress(opts.iface.clone()));
    }
    // The raw sockets first: their EPERM is the clearest privilege error.
    let sender = RawSockets::open(
        Some(&opts.iface),
        local.iter().any(IpAddr::is_ipv4),
        local.iter().any(IpAddr::is_ipv6),
    )?;
    let ring = opts
        .capture_buffer
        .unwrap_or(if (1..=FEW_FLOWS).contains(&cfg.max_traces) {
            FEW_FLOWS_RING
        } else {
            FLOW_RING
        });
    let ring = i32::try_from(ring).unwrap_or(i32::MAX);
    // This process's slot, held until the run ends: the kernel filter and the engine take only
    // replies that carry it (see the reserve module).
    let (slot, _slot_reservation) = crate::reserve::flow_slot()?;
    let mut capture = Capture::open_with(
        &opts.iface,
        &flow_filter(&cfg.filter, &local, slot),
        SNAPLEN,
        ring,
        BATCHED,
    )?;
    let mut detection = match &cfg.services {
        Some(_) => {
            let what = DetectionSources {
                dns: cfg.detector.dns,
                tls: cfg.detector.tls,
                quic: cfg.detector.quic,
            };
            match detection_filter(&cfg.filter, &local, what) {
                Some(f) => Some(Capture::open_with(
                    &opts.iface,
                    &f,
                    DETECTION_SNAPLEN,
                    DETECTION_RING,
                    BATCHED,
                )?),
                None => None,
            }
        }
        None => None,
    };
    let mut lane = Lane::new(&opts.iface);
    let mut shield = Shield::new();
    let mut shielded = Shielded::default();
    let mut not_traced = Vec::new();
    let mut mcfg = cfg.clone();
    mcfg.trace.ident_seed = seed();
    mcfg.trace.slot = slot;
    if !opts.udp_shield {
        // Copies of a SYN are harmless only behind the shield (see the shield module).
        mcfg.trace.handshake_wait = Duration::ZERO;
    }
    let mut mon = Monitor::new(mcfg, local).map_err(|e| Error::Unsupported(e.to_string()))?;
    let mut pacer = Pacer::new(opts.rate);

    let started = Instant::now();
    let mut traced = 0usize;
    let mut buf = Vec::with_capacity(128);
    let mut selecting = true;
    let mut interrupted = false;
    let mut peak_traces = 0;
    loop {
        let t = now();
        if stop.load(Ordering::Relaxed) && !interrupted {
            interrupted = true;
            mon.interrupt(t);
        }
        if selecting && opts.duration.is_some_and(|d| t.mono >= started + d) {
            selecting = false;
            mon.stop_selecting();
        }
        if let Some(d) = &mut detection {
            d.drain(DRAIN_MAX, |_, ip| {
                mon.handle_detection_packet(Instant::now(), ip)
            })
            .map_err(|e| Error::Capture {
                iface: opts.iface.clone(),
                source: e,
            })?;
        }
        let read = capture
            .drain(DRAIN_MAX, |ts, ip| {
                mon.handle_packet(Instant::now(), ts, ip)
            })
            .map_err(|e| Error::Capture {
                iface: opts.iface.clone(),
                source: e,
            })?;
        // Back-pressure: while the capture holds more than one turn's worth, send nothing new
        // (every probe adds its own capture and a reply to read); the ring drains first. So a
        // slower machine or build sends slower instead of overflowing the ring with replies.
        let backlog = read >= DRAIN_MAX;
        if let Some(cap) = &mut lane.cap {
            cap.drain(DRAIN_MAX, |ts, ip| {
                mon.handle_packet(Instant::now(), ts, ip)
            })
            .map_err(|e| Error::Capture {
                iface: opts.iface.clone(),
                source: e,
            })?;
        }
        let t = now();
        mon.handle_timeout(t);
        // Events before probes: a UDP flow's shield must be in place before its first probe.
        let mut events = Events {
            shielded: &mut shielded,
            lane: &mut lane,
            traced: &mut traced,
            not_traced: &mut not_traced,
            on_result: &mut on_result,
        };
        events.handle(&mut mon);
        if opts.udp_shield {
            shield.protect(&shielded.started)?;
        }
        shielded.started.clear();
        while !backlog && pacer.next_at(t.mono).is_none() {
            let Some(tx) = mon.poll_transmit(t, &mut buf) else {
                break;
            };
            pacer.try_take(t.mono);
            if let Err(e) = sender.send(tx.dst, &buf[..tx.len]) {
                mon.handle_send_error(t, &tx.flow, tx.ident, e.to_string());
            }
        }
        Events {
            shielded: &mut shielded,
            lane: &mut lane,
            traced: &mut traced,
            not_traced: &mut not_traced,
            on_result: &mut on_result,
        }
        .handle(&mut mon);
        if opts.udp_shield {
            shield.release(&shielded.finished, t.mono);
            shield.expire(t.mono)?;
        }
        shielded.finished.clear();
        lane.update(t.mono)?;

        peak_traces = peak_traces.max(mon.engine().active_traces());
        if mon.is_idle() && (interrupted || !selecting || !mon.is_selecting()) {
            break;
        }
        let t = Instant::now();
        let mut wake = t + MAX_SLEEP;
        if let Some(at) = mon.poll_timeout() {
            wake = wake.min(at);
        }
        if let Some(at) = lane.next_work() {
            wake = wake.min(at);
        }
        if mon.has_pending_transmit() {
            // Probes are due: as soon as the rate allows (at once without a limit).
            wake = wake.min(pacer.next_at(t).unwrap_or(t));
        }
        let sleep = if backlog {
            Duration::ZERO
        } else {
            wake.saturating_duration_since(t)
        };
        if !sleep.is_zero() {
            let mut fds = vec![capture.fd()];
            if let Some(c) = &lane.cap {
                fds.push(c.fd());
            }
            if let Some(d) = &detection {
                fds.push(d.fd());
            }
            wait_readable(&fds, sleep);
        }
    }
    let drops = capture.drops()
        + lane.cap.as_mut().map_or(0, Capture::drops)
        + detection.as_mut().map_or(0, Capture::drops);
    let summary = RunSummary {
        traced,
        stats: mon.stats(),
        capture_drops: drops,
        captured: capture.received() + lane.cap.as_mut().map_or(0, Capture::received),
        detection_captured: detection.as_mut().map_or(0, Capture::received),
        peak_traces,
        not_traced,
    };
    // Closing a packet socket waits for an RCU grace period (~20 ms): close them side by side.
    close_together([Some(capture), lane.cap.take(), detection]);
    if traced == 0 && !interrupted {
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

/// Closes captures in parallel threads and waits for all.
fn close_together<const N: usize>(caps: [Option<Capture>; N]) {
    std::thread::scope(|s| {
        for c in caps.into_iter().flatten() {
            s.spawn(move || drop(c));
        }
    });
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
    cap: Option<Capture>,
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
            cap: None,
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
        match (&self.cap, self.waiting.front()) {
            (None, Some((_, since))) => Some(*since + LANE_OPEN_AFTER),
            (None, None) => None,
            (Some(_), _) => Some(self.next_update),
        }
    }

    /// Installs the filter for the first waiting flows if they changed (rate-limited), opening
    /// the capture the first time a flow has waited [`LANE_OPEN_AFTER`].
    fn update(&mut self, now: Instant) -> Result<(), Error> {
        while self
            .waiting
            .front()
            .is_some_and(|(f, _)| !self.member.contains(f))
        {
            self.waiting.pop_front();
        }
        if !self.dirty || now < self.next_update {
            return Ok(());
        }
        let cap = match &mut self.cap {
            Some(c) => c,
            None if self
                .waiting
                .front()
                .is_some_and(|(_, since)| now >= *since + LANE_OPEN_AFTER) =>
            {
                self.cap.insert(Capture::open_with(
                    &self.iface,
                    &lane_filter(&[]),
                    SNAPLEN,
                    LANE_RING,
                    BATCHED,
                )?)
            }
            None => return Ok(()),
        };
        self.shown = self
            .waiting
            .iter()
            .map(|(f, _)| *f)
            .filter(|f| self.member.contains(f))
            .take(LANE_FLOWS)
            .collect();
        let t = Instant::now();
        cap.set_filter(&lane_filter(&self.shown))?;
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

/// What the loop does with the monitor's events.
struct Events<'a, F> {
    shielded: &'a mut Shielded,
    lane: &'a mut Lane,
    traced: &'a mut usize,
    not_traced: &'a mut Vec<(FlowKey, NotTraced)>,
    on_result: &'a mut F,
}

impl<F: FnMut(TraceResult)> Events<'_, F> {
    fn handle(&mut self, mon: &mut Monitor) {
        while let Some(ev) = mon.poll_event() {
            match ev {
                Event::FlowSelected(flow) => self.lane.add(flow, Instant::now()),
                Event::FlowForgotten(flow) => self.lane.remove(&flow),
                Event::FlowNotTraced { flow, reason }
                    if self.not_traced.len() < NOT_TRACED_KEPT =>
                {
                    self.not_traced.push((flow, reason));
                }
                Event::TraceStarted {
                    flow, syn_copy_of, ..
                } => {
                    self.lane.remove(&flow);
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
                    *self.traced += 1;
                    (self.on_result)(*r);
                }
                _ => {}
            }
        }
    }
}

fn now() -> Now {
    Now {
        mono: Instant::now(),
        wall: SystemTime::now(),
    }
}

/// Sleeps until one of `fds` is readable or `d` has passed.
pub(crate) fn wait_readable(fds: &[BorrowedFd<'_>], d: Duration) {
    // poll(2) takes milliseconds: round up, so a sub-millisecond wait is a real wait.
    let ms = u16::try_from(d.as_micros().div_ceil(1000).max(1)).unwrap_or(u16::MAX);
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    // EINTR (a signal) just ends the wait early: the loop checks the stop flag.
    let _ = poll(&mut pfds, PollTimeout::from(ms));
}

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

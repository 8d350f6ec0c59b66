//! The run loop: capture → engine → raw socket, with `poll(2)` on the capture's descriptor so
//! the loop sleeps exactly until the next packet or the engine's next timer.

use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use svctr_core::{Engine, EngineStats, Event, FlowSelector, Now, Protocol, TraceConfig, TraceResult};

use crate::capture::{bpf_filter, Capture};
use crate::iface::interface_addresses;
use crate::sender::Sender;
use crate::shield::Shield;
use crate::Error;

/// What to trace and how.
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

/// What a run did.
#[derive(Debug, Clone, Copy)]
pub struct RunSummary {
    /// Traces completed.
    pub traced: usize,
    /// Engine counters.
    pub stats: EngineStats,
    /// Packets the capture dropped (kernel buffer full): if non-zero, replies may be missing.
    pub capture_drops: u32,
}

fn describe(sel: &FlowSelector) -> String {
    let mut s = sel.protocol.as_str().to_string();
    match (sel.remote_ip, sel.remote_port) {
        (Some(ip), Some(p)) => s.push_str(&format!(" remote {ip}:{p}")),
        (Some(ip), None) => s.push_str(&format!(" remote {ip}")),
        (None, Some(p)) => s.push_str(&format!(" remote port {p}")),
        (None, None) => {}
    }
    if let Some(p) = sel.local_port {
        s.push_str(&format!(" local port {p}"));
    }
    s
}

/// The longest the loop sleeps, so the stop flag and the duration are noticed promptly.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// Traces live flows until `count` traces are done, `duration` has passed (and in-flight traces
/// finished), or `stop` is set (in-flight traces are then reported as interrupted). Calls
/// `on_result` for each finished trace as soon as it finishes.
pub fn trace_flows(
    opts: &FlowTraceOptions,
    stop: &AtomicBool,
    mut on_result: impl FnMut(TraceResult),
) -> Result<RunSummary, Error> {
    if let Some(IpAddr::V6(_)) = opts.selector.remote_ip {
        return Err(Error::Unsupported("IPv6 flows are not supported yet: give an IPv4 --remote".into()));
    }
    let local: Vec<IpAddr> = interface_addresses(&opts.iface)?.into_iter().filter(IpAddr::is_ipv4).collect();
    if local.is_empty() {
        return Err(Error::NoAddress(opts.iface.clone()));
    }
    // The raw socket first: its EPERM is the clearest privilege error.
    let sender = Sender::open(&opts.iface)?;
    let filter = bpf_filter(&opts.selector);
    let mut capture = Capture::open(&opts.iface, &filter)?;
    let mut shield = Shield::new();

    let mut cfg = opts.trace.clone();
    cfg.max_flows = opts.count;
    cfg.ident_seed = seed();
    let mut engine = Engine::new(cfg, opts.selector, local).map_err(|e| Error::Unsupported(e.to_string()))?;

    let started = Instant::now();
    let mut traced = 0usize;
    let mut buf = Vec::with_capacity(128);
    let mut selecting = true;
    loop {
        if stop.load(Ordering::Relaxed) {
            engine.interrupt(now());
        }
        let t = now();
        if selecting && opts.duration.is_some_and(|d| t.mono >= started + d) {
            selecting = false;
            engine.stop_selecting();
        }
        capture
            .drain(|ts, ip| engine.handle_packet(Instant::now(), ts, ip))
            .map_err(|e| Error::Capture { iface: opts.iface.clone(), source: e })?;
        let t = now();
        engine.handle_timeout(t);
        // Events before probes: a UDP flow's shield must be in place before its first probe.
        handle_events(&mut engine, &mut shield, opts, &mut traced, &mut on_result)?;
        while let Some(tx) = engine.poll_transmit(t, &mut buf) {
            if let Err(e) = sender.send(tx.dst, &buf[..tx.len]) {
                engine.handle_send_error(t, &tx.flow, tx.ident, e.to_string());
            }
        }
        handle_events(&mut engine, &mut shield, opts, &mut traced, &mut on_result)?;

        let idle = engine.is_idle();
        if idle && (stop.load(Ordering::Relaxed) || (opts.count != 0 && traced >= opts.count) || !selecting) {
            break;
        }
        let t = Instant::now();
        let mut sleep = MAX_SLEEP;
        if let Some(at) = engine.poll_timeout() {
            sleep = sleep.min(at.saturating_duration_since(t));
        }
        if !sleep.is_zero() {
            wait_readable(capture.fd(), sleep);
        }
    }
    let summary = RunSummary { traced, stats: engine.stats(), capture_drops: capture.drops() };
    if traced == 0 && !stop.load(Ordering::Relaxed) {
        if let Some(d) = opts.duration {
            if summary.stats.flows_selected == 0 {
                return Err(Error::NothingMatched { selector: describe(&opts.selector), duration: d });
            }
        }
    }
    Ok(summary)
}

fn handle_events(
    engine: &mut Engine,
    shield: &mut Shield,
    opts: &FlowTraceOptions,
    traced: &mut usize,
    on_result: &mut impl FnMut(TraceResult),
) -> Result<(), Error> {
    while let Some(ev) = engine.poll_event() {
        match ev {
            Event::TraceStarted { flow, .. } if flow.protocol == Protocol::Udp && opts.udp_shield => shield.protect(&flow)?,
            Event::TraceFinished(r) => {
                *traced += 1;
                on_result(*r);
            }
            _ => {}
        }
    }
    Ok(())
}

fn now() -> Now {
    Now { mono: Instant::now(), wall: SystemTime::now() }
}

pub(crate) fn wait_readable(fd: BorrowedFd<'_>, d: Duration) {
    // poll(2) takes milliseconds: round up, so a sub-millisecond wait is a real wait.
    let ms = u16::try_from(d.as_micros().div_ceil(1000).max(1)).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    // EINTR (a signal) just ends the wait early: the loop checks the stop flag.
    let _ = poll(&mut fds, PollTimeout::from(ms));
}

/// A per-run seed for probe identifications (no RNG dependency: time and pid are enough to
/// make two runs differ).
fn seed() -> u16 {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    (nanos ^ std::process::id().rotate_left(16)) as u16
}

//! The one run loop of the live driver: it connects any sans-IO [`Machine`] of `svctr-core` to
//! libpcap captures and raw sockets, under a probe rate, until the machine is done, its
//! duration is over or the stop flag is set.
//!
//! A turn: read what the captures hold (at most [`DRAIN_MAX`] packets each, so a flood cannot
//! starve the timers), hand timers to the machine, take its events (before any probe: a UDP
//! flow's shield must be in place before its first probe), send the probes due as the rate
//! allows (at most [`SEND_MAX`]: the replies are read between bursts), take the events again, let the hooks do their housekeeping, then sleep in poll(2)
//! on the captures' descriptors until the next packet, the machine's next timer, the hooks'
//! next wake-up or the rate's next token.
//!
//! What differs between engines is not here: which captures (and their kernel filters) a
//! machine has, and what happens to its events ([`Hooks`]: printing, the UDP shield, the fast
//! lane, reverse DNS). An engine added to `svctr-core` needs a `Hooks` and a few lines that
//! open its captures, nothing more.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use svctr_core::{Machine, Now, Pacer};

use crate::capture::Capture;
use crate::replies::RawReplies;
use crate::sender::RawSockets;
use crate::Error;

/// Packets read from a capture per loop turn: timers and probes are served in between.
pub(crate) const DRAIN_MAX: usize = 4096;
/// Probes sent per loop turn at most: with no rate limit, thousands of destinations have
/// tens of thousands of probes due at once, and their replies (and a capture's copies of the
/// probes) would pile up in the kernel's buffer until the burst ends; a turn's worth of them
/// is read before the next burst.
pub(crate) const SEND_MAX: usize = 512;
/// The longest the loop sleeps, so the stop flag and the duration are noticed promptly.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// Where a source's packets come from: a libpcap capture, or raw sockets (replies only, for
/// runs with few destinations: see the replies module).
pub(crate) enum Input {
    Capture(Capture),
    Raw(RawReplies),
}

impl From<Capture> for Input {
    fn from(c: Capture) -> Self {
        Self::Capture(c)
    }
}

impl From<RawReplies> for Input {
    fn from(r: RawReplies) -> Self {
        Self::Raw(r)
    }
}

impl Input {
    /// Reads what is there now, at most `max` packets (see [`Capture::drain`]).
    fn drain(
        &mut self,
        max: usize,
        iface: &str,
        f: impl FnMut(SystemTime, &[u8]),
    ) -> Result<usize, Error> {
        match self {
            Self::Capture(c) => c.drain(max, f).map_err(|e| Error::Capture {
                iface: iface.to_string(),
                source: e,
            }),
            Self::Raw(r) => r.drain(max, f).map_err(|e| Error::Socket {
                what: "receiving replies".into(),
                source: e,
            }),
        }
    }

    /// Adds the descriptors to wait on to `out`.
    fn add_fds<'a>(&'a self, out: &mut Vec<BorrowedFd<'a>>) {
        match self {
            Self::Capture(c) => out.push(c.fd()),
            Self::Raw(r) => out.extend(r.fds()),
        }
    }

    /// Packets its kernel filter passed so far.
    fn received(&mut self) -> u32 {
        match self {
            Self::Capture(c) => c.received(),
            Self::Raw(r) => r.received(),
        }
    }

    /// Packets the kernel had no room for.
    fn drops(&mut self) -> u32 {
        match self {
            Self::Capture(c) => c.drops(),
            Self::Raw(r) => r.drops(),
        }
    }

    /// Replaces a capture's kernel filter.
    pub(crate) fn set_filter(&mut self, filter: &str) -> Result<(), Error> {
        match self {
            Self::Capture(c) => c.set_filter(filter),
            Self::Raw(_) => Err(Error::Unsupported(
                "changing the filter of raw reply sockets".into(),
            )),
        }
    }
}

/// A capture (or raw sockets) and what its packets are for.
pub(crate) struct Source<M> {
    pub(crate) cap: Input,
    /// Hands one captured packet (with its kernel timestamp) to the machine.
    pub(crate) feed: fn(&mut M, Instant, SystemTime, &[u8]),
    /// A full drain of this capture holds probes back for a turn (back-pressure: every probe
    /// adds its own capture and a reply to read, so the ring drains first and a slower
    /// machine sends slower instead of overflowing it).
    pub(crate) paced: bool,
}

/// The captures of a run; hooks may open one later (see [`Hooks::after_turn`]).
pub(crate) struct Sources<M> {
    slots: Vec<Option<Source<M>>>,
}

impl<M> Sources<M> {
    pub(crate) fn new() -> Self {
        Self { slots: Vec::new() }
    }

    /// Adds a capture; returns its place.
    pub(crate) fn add(&mut self, source: Source<M>) -> usize {
        self.slots.push(Some(source));
        self.slots.len() - 1
    }

    /// The capture at `id`, if it is open.
    pub(crate) fn get_mut(&mut self, id: usize) -> Option<&mut Source<M>> {
        self.slots.get_mut(id).and_then(Option::as_mut)
    }

    /// Packets the kernel dropped so far, all captures together.
    pub(crate) fn drops(&mut self) -> u32 {
        self.iter_mut()
            .map(|s| s.cap.drops())
            .fold(0, u32::saturating_add)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Source<M>> {
        self.slots.iter_mut().flatten()
    }
}

/// What a run does besides driving its machine.
pub(crate) trait Hooks<M: Machine> {
    /// An event of the machine.
    fn on_event(&mut self, ev: M::Event) -> Result<(), Error>;
    /// Before this turn's probes go out.
    fn before_send(&mut self, _now: Instant) -> Result<(), Error> {
        Ok(())
    }
    /// The turn's housekeeping; may open or change captures.
    fn after_turn(&mut self, _now: Instant, _sources: &mut Sources<M>) -> Result<(), Error> {
        Ok(())
    }
    /// After the turn's housekeeping: a look at the machine and the captures (live counters).
    fn observe(&mut self, _now: Instant, _machine: &M, _sources: &mut Sources<M>) {}
    /// When the hooks next need a turn.
    fn next_wake(&self) -> Option<Instant> {
        None
    }
    /// The hooks still hold work (events waiting): the run is not over yet.
    fn busy(&self) -> bool {
        false
    }
}

/// How a run is bounded.
pub(crate) struct Limits<'a> {
    /// Interface (for error messages).
    pub(crate) iface: &'a str,
    /// Probes per second (0: no limit).
    pub(crate) rate: u32,
    /// Start nothing new after this long; then end once the machine is done.
    pub(crate) duration: Option<Duration>,
    /// Set from elsewhere (a signal, a closed output, a canceller): everything ends now.
    pub(crate) stop: &'a AtomicBool,
    /// Where the run's probes and replies are kept (`--pcap`), if anywhere.
    pub(crate) packets: Option<&'a std::cell::RefCell<crate::savefile::PacketLog>>,
}

/// How a run ended.
#[derive(Debug, Clone, Default)]
pub(crate) struct End {
    /// The stop flag ended it.
    pub(crate) interrupted: bool,
    /// Per capture (by the place [`Sources::add`] gave it): packets its filter passed.
    pub(crate) received: Vec<u32>,
    /// Packets the kernel dropped, all captures together (a ring full).
    pub(crate) dropped: u32,
}

fn now() -> Now {
    Now {
        mono: Instant::now(),
        wall: SystemTime::now(),
    }
}

fn drain_events<M: Machine>(m: &mut M, hooks: &mut impl Hooks<M>) -> Result<(), Error> {
    while let Some(ev) = m.poll_event() {
        hooks.on_event(ev)?;
    }
    Ok(())
}

/// Runs `machine` until it is done (see the module doc). The captures are closed side by side
/// at the end (closing a packet socket waits for an RCU grace period, ~20 ms each).
pub(crate) fn run<M: Machine, H: Hooks<M>>(
    machine: &mut M,
    mut sources: Sources<M>,
    sender: &RawSockets,
    limits: &Limits<'_>,
    hooks: &mut H,
) -> Result<End, Error> {
    // Captures and raw sockets are open: keep only what is still needed from here on.
    crate::privilege::setup_done()?;
    let mut pacer = Pacer::new(limits.rate);
    let started = Instant::now();
    let mut end = End::default();
    let mut starting = true;
    let mut buf = Vec::with_capacity(256);
    loop {
        let t = now();
        if limits.stop.load(Ordering::Relaxed) && !end.interrupted {
            end.interrupted = true;
            machine.interrupt(t);
        }
        if starting && limits.duration.is_some_and(|d| t.mono >= started + d) {
            starting = false;
            machine.stop_starting(t);
        }
        let mut backlog = false;
        for src in sources.iter_mut() {
            let feed = src.feed;
            let read = src.cap.drain(DRAIN_MAX, limits.iface, |ts, ip| {
                feed(machine, Instant::now(), ts, ip);
                if let Some(log) = limits.packets {
                    log.borrow_mut().after(machine.replies_matched(), ts, ip);
                }
            })?;
            backlog |= src.paced && read >= DRAIN_MAX;
        }
        let t = now();
        machine.handle_timeout(t);
        drain_events(machine, hooks)?;
        hooks.before_send(t.mono)?;
        let mut t = t;
        let mut sent = 0;
        while !backlog && sent < SEND_MAX && pacer.next_at(t.mono).is_none() {
            sent += 1;
            // Each probe its own time: where no capture sees probes leave (raw reply
            // sockets), this is its send time.
            t = now();
            let Some(tx) = machine.poll_transmit(t, &mut buf) else {
                break;
            };
            pacer.try_take(t.mono);
            if let Err(e) = sender.send(tx.dst, &buf[..tx.len]) {
                machine.handle_send_error(t, &tx, e.to_string());
            } else if let Some(log) = limits.packets {
                log.borrow_mut()
                    .sent(t.mono, tx.dst, tx.ttl, &buf[..tx.len]);
            }
        }
        drain_events(machine, hooks)?;
        hooks.after_turn(t.mono, &mut sources)?;
        hooks.observe(t.mono, machine, &mut sources);
        if machine.is_done() && !hooks.busy() {
            break;
        }
        let t = Instant::now();
        let mut wake = t + MAX_SLEEP;
        for at in [machine.poll_timeout(), hooks.next_wake()]
            .into_iter()
            .flatten()
        {
            wake = wake.min(at);
        }
        if machine.has_pending_transmit() {
            // Probes are due: as soon as the rate allows (at once without a limit; a probe
            // left queued means the tokens ran out, so this waits for the next one).
            wake = wake.min(pacer.next_at(t).unwrap_or(t));
        }
        let sleep = if backlog {
            Duration::ZERO
        } else {
            wake.saturating_duration_since(t)
        };
        if !sleep.is_zero() {
            let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
            for s in sources.iter_mut() {
                s.cap.add_fds(&mut fds);
            }
            wait_readable(&fds, sleep);
        }
    }
    for src in &mut sources.slots {
        let (received, dropped) = src
            .as_mut()
            .map_or((0, 0), |s| (s.cap.received(), s.cap.drops()));
        end.received.push(received);
        end.dropped += dropped;
    }
    close_together(sources);
    Ok(end)
}

/// Closes the captures in parallel threads (each waits for an RCU grace period) and waits
/// for all; raw sockets close at once, here.
fn close_together<M>(sources: Sources<M>) {
    let captures: Vec<Input> = sources
        .slots
        .into_iter()
        .flatten()
        .map(|s| s.cap)
        .filter(|c| matches!(c, Input::Capture(_)))
        .collect();
    match captures.len() {
        0 => {}
        1 => drop(captures),
        _ => std::thread::scope(|s| {
            for cap in captures {
                s.spawn(move || drop(cap));
            }
        }),
    }
}

/// Sleeps until one of `fds` is readable or `d` has passed.
fn wait_readable(fds: &[BorrowedFd<'_>], d: Duration) {
    // poll(2) takes milliseconds: round up, so a sub-millisecond wait is a real wait.
    let ms = u16::try_from(d.as_micros().div_ceil(1000).max(1)).unwrap_or(u16::MAX);
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    // EINTR (a signal) just ends the wait early: the loop checks the stop flag.
    let _ = poll(&mut pfds, PollTimeout::from(ms));
}

//! The contract every engine offers a driver: the shape of quinn-proto's connection, packets
//! and time in; probes, timers and events out. One live run loop (`svctr-io`) drives any
//! [`Machine`], and tests drive the same methods with scripted packets and virtual time.
//!
//! # The contract
//!
//! * **Inputs.** [`handle_packet`](Machine::handle_packet) for every packet the machine's
//!   captures take (with the capture's kernel timestamp), and
//!   [`handle_timeout`](Machine::handle_timeout) once the instant from
//!   [`poll_timeout`](Machine::poll_timeout) has come (calling it early is harmless).
//! * **Outputs, polled after every input, in this order.**
//!   [`poll_transmit`](Machine::poll_transmit) until `None` (a rate-limited driver may stop
//!   earlier: the rest stays queued, and [`has_pending_transmit`](Machine::has_pending_transmit)
//!   says so), a failed send reported back with
//!   [`handle_send_error`](Machine::handle_send_error); then
//!   [`poll_event`](Machine::poll_event) until `None`; then
//!   [`poll_timeout`](Machine::poll_timeout) to know when to wake.
//! * **Ending.** [`stop_starting`](Machine::stop_starting): no new work, what is in progress
//!   goes on (a run's duration is over); [`interrupt`](Machine::interrupt): everything ends
//!   now, results as far as they got; [`is_done`](Machine::is_done): nothing in progress and
//!   nothing more will start.
//! * **Time** is monotonic across calls. A machine never reads a clock, opens a socket or
//!   prints.
//!
//! # Adding an engine
//!
//! Implement `Machine` (keep per-key deadlines and the transmit queue in a
//! [`crate::Scheduler`]); the driver's run loop then gives it captures, raw sockets, the probe
//! rate, signals and shutdown. Its kernel filter (what its captures take) and what it does with
//! its events are the only driver code it needs.

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use crate::flow::FlowKey;

/// The time of an input: a monotonic instant for timers and the wall clock for results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time (timers). Must never go backwards between calls.
    pub mono: Instant,
    /// Wall-clock time (reported start/end, fallback send time).
    pub wall: SystemTime,
}

/// A probe to send: the IP datagram is in the buffer given to
/// [`poll_transmit`](Machine::poll_transmit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// Destination address (for the raw socket's `sendto`).
    pub dst: IpAddr,
    /// Bytes of the buffer to send.
    pub len: usize,
    /// The 5-tuple the probe carries (the flow it imitates, or the traceroute's flow
    /// identifier for this probe).
    pub flow: FlowKey,
    /// The probe's TTL.
    pub ttl: u8,
    /// The probe's tag within its trace (the flow tracer's tag, the traceroute's probe number).
    pub ident: u16,
}

/// A sans-IO engine (see the module doc).
pub trait Machine {
    /// What it reports.
    type Event;

    /// A captured IP packet and its kernel timestamp.
    fn handle_packet(&mut self, now: Instant, ts: SystemTime, packet: &[u8]);
    /// Timers due at `now`.
    fn handle_timeout(&mut self, now: Now);
    /// The next probe to send, written into `buf`.
    fn poll_transmit(&mut self, now: Now, buf: &mut Vec<u8>) -> Option<Transmit>;
    /// Whether probes are due now (queued for `poll_transmit`).
    fn has_pending_transmit(&self) -> bool;
    /// The driver could not send `tx`.
    fn handle_send_error(&mut self, now: Now, tx: &Transmit, error: String);
    /// The next event.
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// When to call `handle_timeout` next.
    fn poll_timeout(&self) -> Option<Instant>;
    /// No new work from now on; work in progress goes on.
    fn stop_starting(&mut self, now: Now);
    /// Everything ends now, as far as it got.
    fn interrupt(&mut self, now: Now);
    /// Nothing in progress, and nothing more will start.
    fn is_done(&self) -> bool;
    /// Replies matched to a probe so far, if it counts them (None: it does not). A driver
    /// that keeps the run's packets (`--pcap`) compares the count before and after each
    /// packet: the packet that raised it is a reply of the run.
    fn replies_matched(&self) -> Option<u64>;
}

/// Implements [`Machine`] for a type whose inherent methods have the machine's names and
/// signatures (each engine keeps its inherent methods, documented where they are).
macro_rules! machine_by_inherent_methods {
    ($ty:ty, $event:ty) => {
        impl $crate::machine::Machine for $ty {
            type Event = $event;
            fn handle_packet(&mut self, now: Instant, ts: SystemTime, packet: &[u8]) {
                <$ty>::handle_packet(self, now, ts, packet)
            }
            fn handle_timeout(&mut self, now: $crate::machine::Now) {
                <$ty>::handle_timeout(self, now)
            }
            fn poll_transmit(
                &mut self,
                now: $crate::machine::Now,
                buf: &mut Vec<u8>,
            ) -> Option<$crate::machine::Transmit> {
                <$ty>::poll_transmit(self, now, buf)
            }
            fn has_pending_transmit(&self) -> bool {
                <$ty>::has_pending_transmit(self)
            }
            fn handle_send_error(
                &mut self,
                now: $crate::machine::Now,
                tx: &$crate::machine::Transmit,
                error: String,
            ) {
                <$ty>::handle_send_error(self, now, tx, error)
            }
            fn poll_event(&mut self) -> Option<$event> {
                <$ty>::poll_event(self)
            }
            fn poll_timeout(&self) -> Option<Instant> {
                <$ty>::poll_timeout(self)
            }
            fn stop_starting(&mut self, now: $crate::machine::Now) {
                <$ty>::stop_starting(self, now)
            }
            fn interrupt(&mut self, now: $crate::machine::Now) {
                <$ty>::interrupt(self, now)
            }
            fn is_done(&self) -> bool {
                <$ty>::is_done(self)
            }
            fn replies_matched(&self) -> Option<u64> {
                <$ty>::replies_matched(self)
            }
        }
    };
}
pub(crate) use machine_by_inherent_methods;

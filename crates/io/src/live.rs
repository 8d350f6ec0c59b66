//! A running monitor's counters, readable from another thread while it runs (a metrics
//! endpoint, a status line): the driver stores into them where it already counts, at most
//! every [`LIVE_EVERY`] for those it reads from the engine and the captures, and once more
//! with the final values when the run ends. Nothing reads them back in the driver.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// How often the counters read from the engine and the captures are refreshed.
pub const LIVE_EVERY: Duration = Duration::from_millis(100);

/// Counters of a running monitor (see the module doc), shared with the driver through
/// [`MonitorOptions::live`](crate::MonitorOptions::live). Each is a plain atomic, read with
/// `load(Ordering::Relaxed)`.
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Flows recognised as a service's (DNS, prefix or server name), since the run began.
    pub flows_recognised: AtomicU64,
    /// Flows handed to the engine to trace, since the run began.
    pub flows_watched: AtomicU64,
    /// Traces started, since the run began.
    pub traces_started: AtomicU64,
    /// Traces in progress now.
    pub traces_active: AtomicU64,
    /// Packets the captures dropped (kernel ring full), since the run began.
    pub capture_drops: AtomicU64,
}

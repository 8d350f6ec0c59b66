//! A delay-and-loss line: what `tc qdisc ... netem delay 20ms 1ms loss 5%` would do, for a
//! kernel without `sch_netem` (nor `fq` or `etf`).
//!
//! A line sits in the middle of one lab link, in a namespace of its own: the link's two veth
//! pairs end there in `la` (towards the client-side node) and `lb` (towards the server side),
//! with no address and no IP stack of their own (IPv6 off, nothing answered). One thread per
//! direction reads every frame that arrives on its ingress interface through libpcap
//! (immediate mode, incoming frames only, the kernel's nanosecond receive timestamp), drops a
//! configured share of them at random, and holds the others until their receive time plus the
//! delay (plus a uniform jitter), then injects them unchanged on the other interface. Frames
//! leave in the order they came (a frame never overtakes an earlier one: its departure is at
//! least the previous frame's), as a real link with jitter from queueing would.
//!
//! Bounded: at most [`MAX_QUEUED_BYTES`] per direction wait (a frame beyond it is dropped and
//! counted as an overflow). Accurate: the thread sleeps with `ppoll` and a timer slack of 1 µs
//! until the next departure, and measures how late each frame left
//! ([`LineStats::late_us`]: median, 99th percentile, maximum), so a figure measured through
//! a line says how far to trust it.
//!
//! Frames must be whole Ethernet frames with correct checksums when they are read: the lab
//! turns segmentation and checksum offloads off on the four interfaces of a line (`ethtool -K
//! tx off tso off gso off gro off`), so that no 64 KB GSO frame or partial checksum reaches
//! the line.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context, Result};
use nix::poll::{PollFd, PollFlags};

use crate::util::spawn_in_netns;

/// Bytes of frames waiting per direction, at most (about 2 s of a 100 Mbit/s link).
pub const MAX_QUEUED_BYTES: usize = 32 << 20;

/// What a line does to each frame, the same both ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineConfig {
    /// Role of the client-side node of the link (e.g. "r1").
    pub a: String,
    /// Role of the server-side node of the link (e.g. "r2").
    pub b: String,
    /// One-way delay added to every frame.
    pub delay: Duration,
    /// Each frame's delay is `delay` plus a uniform draw in [-jitter, +jitter] (never below
    /// zero; frames keep their order).
    pub jitter: Duration,
    /// Frames dropped per million, in each direction (50,000: 5 %).
    pub loss_ppm: u32,
}

impl LineConfig {
    /// A line on the link `a`-`b` with a one-way `delay`, no jitter, no loss.
    pub fn new(a: &str, b: &str, delay: Duration) -> LineConfig {
        LineConfig {
            a: a.to_string(),
            b: b.to_string(),
            delay,
            jitter: Duration::ZERO,
            loss_ppm: 0,
        }
    }
}

/// Counters of one direction of a line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineStats {
    /// Frames read.
    pub frames: u64,
    /// Frames sent on after their delay.
    pub forwarded: u64,
    /// Frames dropped by the configured loss.
    pub lost: u64,
    /// Frames dropped because [`MAX_QUEUED_BYTES`] were waiting.
    pub overflow: u64,
    /// Frames whose injection failed.
    pub send_errors: u64,
    /// How late frames left, in µs after their due time: median, 99th percentile, maximum.
    pub late_us: (u64, u64, u64),
}

/// Lateness histogram: 1 µs buckets up to 100 ms, then one bucket.
const HIST: usize = 100_000;

struct Shared {
    stats: LineStats,
    hist: Vec<u32>,
}

impl Shared {
    fn new() -> Self {
        Self {
            stats: LineStats::default(),
            hist: vec![0; HIST + 1],
        }
    }

    fn late(&mut self, us: u64) {
        self.hist[(us as usize).min(HIST)] += 1;
        self.stats.late_us.2 = self.stats.late_us.2.max(us);
    }

    fn snapshot(&self) -> LineStats {
        let mut s = self.stats.clone();
        let n: u64 = self.hist.iter().map(|&c| u64::from(c)).sum();
        let quantile = |q: f64| -> u64 {
            let want = ((n as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0u64;
            for (us, &c) in self.hist.iter().enumerate() {
                seen += u64::from(c);
                if seen >= want {
                    return us as u64;
                }
            }
            0
        };
        if n > 0 {
            s.late_us.0 = quantile(0.5);
            s.late_us.1 = quantile(0.99);
        }
        s
    }
}

/// A running line (both directions); stopped when dropped.
pub struct DelayLine {
    cfg: LineConfig,
    stop: Arc<AtomicBool>,
    /// a -> b, then b -> a.
    shared: [Arc<Mutex<Shared>>; 2],
    threads: Vec<JoinHandle<Result<()>>>,
}

impl std::fmt::Debug for DelayLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayLine").field("cfg", &self.cfg).finish()
    }
}

impl DelayLine {
    /// Starts forwarding between `la` and `lb` in namespace `ns` (both up, offloads off).
    pub(crate) fn start(ns: &str, cfg: LineConfig, seed: u64) -> Result<DelayLine> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = [
            Arc::new(Mutex::new(Shared::new())),
            Arc::new(Mutex::new(Shared::new())),
        ];
        let mut threads = Vec::new();
        for (i, (from, to)) in [("la", "lb"), ("lb", "la")].into_iter().enumerate() {
            let (stop, shared, cfg) = (Arc::clone(&stop), Arc::clone(&shared[i]), cfg.clone());
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let rng = Rng(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            threads.push(spawn_in_netns(ns, "delay-line", move || {
                let opened = open(from, to);
                let (rx, tx) = match opened {
                    Ok(p) => {
                        let _ = ready_tx.send(Ok(()));
                        p
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e:#}")));
                        return Err(e);
                    }
                };
                forward(rx, tx, &cfg, &stop, &shared, rng)
            })?);
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| anyhow!("delay line {from}->{to} did not start"))?
                .map_err(|e| anyhow!("delay line {from}->{to}: {e}"))?;
        }
        Ok(DelayLine {
            cfg,
            stop,
            shared,
            threads,
        })
    }

    /// The line's configuration.
    pub fn config(&self) -> &LineConfig {
        &self.cfg
    }

    /// Counters so far: (a -> b, b -> a).
    pub fn stats(&self) -> (LineStats, LineStats) {
        let get = |s: &Arc<Mutex<Shared>>| s.lock().unwrap_or_else(|e| e.into_inner()).snapshot();
        (get(&self.shared[0]), get(&self.shared[1]))
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

type Active = pcap::Capture<pcap::Active>;

/// The ingress capture (every incoming frame, as it comes) and the egress handle (sends
/// only: its filter passes nothing).
fn open(from: &str, to: &str) -> Result<(Active, Active)> {
    let rx = pcap::Capture::from_device(from)
        .and_then(|c| {
            c.promisc(true)
                .snaplen(65_535)
                .immediate_mode(true)
                .buffer_size(8 << 20)
                .precision(pcap::Precision::Nano)
                .open()
        })
        .with_context(|| format!("capture on {from}"))?;
    rx.direction(pcap::Direction::In)
        .with_context(|| format!("direction on {from}"))?;
    let rx = rx.setnonblock().context("nonblocking")?;
    let mut tx = pcap::Capture::from_device(to)
        .and_then(|c| c.snaplen(64).buffer_size(1 << 16).open())
        .with_context(|| format!("handle on {to}"))?;
    tx.filter("less 1", true).context("tx filter")?;
    Ok((rx, tx))
}

/// Small deterministic generator for loss and jitter (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn forward(
    mut rx: Active,
    mut tx: Active,
    cfg: &LineConfig,
    stop: &AtomicBool,
    shared: &Mutex<Shared>,
    mut rng: Rng,
) -> Result<()> {
    // Wake-ups as precise as the timer allows: the default slack is 50 µs.
    let _ = nix::sys::prctl::set_timerslack(1);
    let mut queue: VecDeque<(SystemTime, Vec<u8>)> = VecDeque::new();
    let mut queued_bytes = 0usize;
    let mut last_due = SystemTime::UNIX_EPOCH;
    // How late a timed sleep wakes up, on average (see the end of the loop).
    let mut oversleep_ns: f64 = 50_000.0;
    while !stop.load(Ordering::Relaxed) {
        // Everything that arrived.
        loop {
            match rx.next_packet() {
                Ok(p) => {
                    let arrived = SystemTime::UNIX_EPOCH
                        + Duration::new(
                            p.header.ts.tv_sec.max(0) as u64,
                            p.header.ts.tv_usec.clamp(0, 999_999_999) as u32,
                        );
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    s.stats.frames += 1;
                    if cfg.loss_ppm > 0 && rng.next_f64() * 1e6 < f64::from(cfg.loss_ppm) {
                        s.stats.lost += 1;
                        continue;
                    }
                    if queued_bytes + p.data.len() > MAX_QUEUED_BYTES {
                        s.stats.overflow += 1;
                        continue;
                    }
                    drop(s);
                    let mut delay = cfg.delay;
                    if !cfg.jitter.is_zero() {
                        let j = cfg.jitter.mul_f64(rng.next_f64() * 2.0);
                        delay = (delay + j).saturating_sub(cfg.jitter);
                    }
                    let due = (arrived + delay).max(last_due);
                    last_due = due;
                    queued_bytes += p.data.len();
                    queue.push_back((due, p.data.to_vec()));
                }
                Err(pcap::Error::TimeoutExpired) => break,
                Err(e) => return Err(anyhow!("reading a frame: {e}")),
            }
        }
        // Everything due.
        let now = SystemTime::now();
        while queue.front().is_some_and(|(due, _)| *due <= now) {
            let (due, frame) = queue.pop_front().expect("front");
            queued_bytes -= frame.len();
            // Lateness at departure (the send runs the receiving side's stack too).
            let late = SystemTime::now().duration_since(due).unwrap_or_default();
            let sent = tx.sendpacket(frame.as_slice());
            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
            match sent {
                Ok(()) => {
                    s.stats.forwarded += 1;
                    s.late(late.as_micros() as u64);
                }
                Err(_) => s.stats.send_errors += 1,
            }
        }
        // Sleep until the next departure or arrival (at most 50 ms: the stop flag). A sleep
        // overshoots by the wake-up latency (tens of µs here): it is measured and the sleep
        // ends that much early, and the last few µs are spent yielding until the due time.
        let wait = queue
            .front()
            .map(|(due, _)| due.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        if wait.is_zero() {
            continue;
        }
        let early = Duration::from_nanos(oversleep_ns as u64);
        if wait <= early {
            std::thread::yield_now();
            continue;
        }
        let sleep = wait - early;
        let mut fds = [PollFd::new(rx.as_fd(), PollFlags::POLLIN)];
        let ts = nix::sys::time::TimeSpec::from_duration(sleep);
        let t0 = std::time::Instant::now();
        let woke_by_frame = matches!(nix::poll::ppoll(&mut fds, Some(ts), None), Ok(n) if n > 0);
        if !woke_by_frame {
            let over = t0.elapsed().saturating_sub(sleep).as_nanos() as f64;
            oversleep_ns = (0.9 * oversleep_ns + 0.1 * over).min(500_000.0);
        }
    }
    Ok(())
}

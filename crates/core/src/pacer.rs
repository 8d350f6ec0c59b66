//! The global probe rate: a token bucket that drivers consult before each probe, like
//! scamper's `-p` packets-per-second limit.
//!
//! Tokens accrue continuously at `rate` per second up to a burst of 10 ms worth (at least one),
//! so over any interval of length `T` at most `rate * T + burst` probes go out, however many
//! flows or targets want to send. Time is an input, as everywhere in this crate.

use std::time::{Duration, Instant};

/// The flow tracer's default probe rate (probes per second over all flows): a single trace
/// goes out at once, and thousands of flows do not flood the path, nor the capture ring with
/// their replies (BENCHMARKS.md: 10,000 flows without a limit overflow a 32 MiB ring).
pub const FLOW_RATE: u32 = 10_000;

/// A token bucket (see the module doc).
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Tokens per second; 0: no limit.
    rate: u32,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Pacer {
    /// At most `rate` probes per second on average (0: no limit).
    pub fn new(rate: u32) -> Self {
        let burst = (f64::from(rate) / 100.0).max(1.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Whether there is a limit.
    pub fn is_limited(&self) -> bool {
        self.rate != 0
    }

    /// The largest burst: probes that may go back to back after a pause.
    pub fn burst(&self) -> u32 {
        if self.rate == 0 {
            u32::MAX
        } else {
            self.burst as u32
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * f64::from(self.rate)).min(self.burst);
        }
        self.last = Some(now);
    }

    /// Takes a token if one is there: true means one probe may go now.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be there, if none is now (`None`: one is, or no limit).
    pub fn next_at(&self, now: Instant) -> Option<Instant> {
        if self.rate == 0 {
            return None;
        }
        let elapsed = self
            .last
            .map_or(0.0, |l| now.saturating_duration_since(l).as_secs_f64());
        let tokens = (self.tokens + elapsed * f64::from(self.rate)).min(self.burst);
        if tokens >= 1.0 {
            return None;
        }
        Some(now + Duration::from_secs_f64((1.0 - tokens) / f64::from(self.rate)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_always_allows() {
        let mut p = Pacer::new(0);
        let t = Instant::now();
        assert!((0..100_000).all(|_| p.try_take(t)));
        assert_eq!(p.next_at(t), None);
    }

    #[test]
    fn never_more_than_rate_times_interval_plus_burst() {
        let rate = 10_000;
        let mut p = Pacer::new(rate);
        let t0 = Instant::now();
        // Try to send every 10 µs for 2 s of virtual time.
        let mut sent = Vec::new();
        for i in 0..200_000u64 {
            let t = t0 + Duration::from_micros(10 * i);
            if p.try_take(t) {
                sent.push(t);
            }
        }
        // Over the whole run: rate * 2 s + the burst, and close to it (the bucket was kept busy).
        let n = sent.len() as f64;
        assert!(
            n <= 2.0 * f64::from(rate) + f64::from(p.burst()) + 1.0,
            "{n}"
        );
        assert!(n >= 2.0 * f64::from(rate) * 0.99, "{n}");
        // Any 100 ms window: at most rate/10 + burst.
        let win = Duration::from_millis(100);
        let mut j = 0;
        for i in 0..sent.len() {
            while sent[i] - sent[j] > win {
                j += 1;
            }
            assert!(
                (i - j + 1) as u32 <= rate / 10 + p.burst() + 1,
                "window at {i}: {}",
                i - j + 1
            );
        }
    }

    #[test]
    fn next_at_says_when_a_token_comes() {
        let mut p = Pacer::new(100); // burst 1
        let t = Instant::now();
        assert!(p.try_take(t));
        assert!(!p.try_take(t));
        let at = p.next_at(t).expect("empty bucket");
        assert!(
            at > t && at <= t + Duration::from_millis(10),
            "{:?}",
            at - t
        );
        assert!(p.try_take(at));
    }
}

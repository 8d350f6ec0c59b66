//! The timer set and transmit queue every engine keeps for its many traces: work per input
//! independent of the number of traces.
//!
//! Each key (a flow, a target) is *filed* under the next instant it needs attention (a reply
//! overdue, a probe to send, a flow gone idle), and keys with a probe due now wait in a
//! round-robin queue, so that thousands of traces under a rate limit interleave and each call
//! costs what is due, never a scan of all keys. A key may be filed earlier than it needs (a
//! later input pushed its deadline back): it is then looked at and filed again, which is
//! cheaper than moving it in the timer set on every packet.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use svctr_core::Scheduler;
//!
//! let t0 = Instant::now();
//! let mut s = Scheduler::default();
//! s.arm("a", t0 + Duration::from_secs(2));
//! s.arm("b", t0 + Duration::from_secs(1));
//! s.arm("a", t0 + Duration::from_secs(3)); // later than filed: stays at 2 s
//! assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(1)));
//! assert_eq!(s.take_due(t0 + Duration::from_secs(2)), vec!["b", "a"]);
//! s.enqueue("b");
//! s.enqueue("b"); // at most once in the queue
//! assert_eq!(s.dequeue(), Some("b"));
//! assert_eq!(s.dequeue(), None);
//! ```

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::Instant;

/// Where a key stands.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The instant it is filed under in the timer set.
    armed: Option<Instant>,
    /// Whether it is in the transmit queue.
    queued: bool,
}

/// Per-key deadlines and a round-robin transmit queue (see the module doc).
#[derive(Debug)]
pub struct Scheduler<K> {
    timers: BTreeSet<(Instant, K)>,
    queue: VecDeque<K>,
    slots: HashMap<K, Slot>,
    /// Keys whose slot says queued (the queue may also hold removed keys).
    queued: usize,
}

impl<K> Default for Scheduler<K> {
    fn default() -> Self {
        Self {
            timers: BTreeSet::new(),
            queue: VecDeque::new(),
            slots: HashMap::new(),
            queued: 0,
        }
    }
}

impl<K: Copy + Ord + Hash> Scheduler<K> {
    /// Files `key` under `at`, unless it is filed no later already.
    pub fn arm(&mut self, key: K, at: Instant) {
        let slot = self.slots.entry(key).or_default();
        if slot.armed.is_some_and(|t| t <= at) {
            return;
        }
        if let Some(t) = slot.armed.replace(at) {
            self.timers.remove(&(t, key));
        }
        self.timers.insert((at, key));
    }

    /// Forgets `key`: out of the timer set and, lazily, out of the queue.
    pub fn remove(&mut self, key: &K) {
        if let Some(slot) = self.slots.remove(key) {
            if let Some(t) = slot.armed {
                self.timers.remove(&(t, *key));
            }
            if slot.queued {
                self.queued -= 1;
            }
        }
    }

    /// Takes every key filed at or before `now`, earliest first; each is no longer filed (a
    /// key filed again meanwhile at `now` waits for the next call).
    pub fn take_due(&mut self, now: Instant) -> Vec<K> {
        let mut due = Vec::new();
        while let Some(&(at, key)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(slot) = self.slots.get_mut(&key) {
                slot.armed = None;
            }
            due.push(key);
        }
        due
    }

    /// The earliest instant a key is filed under.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Puts `key` at the back of the transmit queue, unless it is in it already.
    pub fn enqueue(&mut self, key: K) {
        let slot = self.slots.entry(key).or_default();
        if !slot.queued {
            slot.queued = true;
            self.queued += 1;
            self.queue.push_back(key);
        }
    }

    /// The key at the front of the transmit queue (skipping keys removed meanwhile).
    pub fn dequeue(&mut self) -> Option<K> {
        while let Some(key) = self.queue.pop_front() {
            if let Some(slot) = self.slots.get_mut(&key) {
                if slot.queued {
                    slot.queued = false;
                    self.queued -= 1;
                    return Some(key);
                }
            }
        }
        None
    }

    /// Whether `key` waits in the transmit queue.
    pub fn is_queued(&self, key: &K) -> bool {
        self.slots.get(key).is_some_and(|s| s.queued)
    }

    /// Whether any key waits in the transmit queue.
    pub fn has_queued(&self) -> bool {
        self.queued > 0
    }
}

/// Destinations given to an engine that works on at most `parallel` of them at once (0: no
/// limit): the rest wait here, in order, each with its source address.
#[derive(Debug, Default)]
pub(crate) struct TargetQueue {
    waiting: VecDeque<(IpAddr, IpAddr)>,
    /// The destinations in `waiting`: a duplicate is found without a scan (tens of thousands
    /// of destinations queue behind `parallel`).
    queued: HashSet<IpAddr>,
    closed: bool,
}

impl TargetQueue {
    /// Queues `dst` (probed from `src`): an error for mixed families, or a destination
    /// already in progress (`active`) or waiting.
    pub(crate) fn push(
        &mut self,
        dst: IpAddr,
        src: IpAddr,
        active: bool,
    ) -> Result<(), crate::TargetError> {
        if dst.is_ipv4() != src.is_ipv4() {
            return Err(crate::TargetError::Family { src, dst });
        }
        if active || self.queued.contains(&dst) {
            return Err(crate::TargetError::Duplicate(dst));
        }
        self.queued.insert(dst);
        self.waiting.push_back((dst, src));
        Ok(())
    }

    /// The next destination to start, if fewer than `parallel` are in progress.
    pub(crate) fn next(&mut self, in_progress: usize, parallel: usize) -> Option<(IpAddr, IpAddr)> {
        let limit = if parallel == 0 { usize::MAX } else { parallel };
        if self.closed || in_progress >= limit {
            return None;
        }
        let next = self.waiting.pop_front()?;
        self.queued.remove(&next.0);
        Some(next)
    }

    /// No destination starts any more; those waiting are dropped.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.waiting.clear();
        self.queued.clear();
    }

    /// Destinations waiting.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether none waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_key_filed_earlier_stays_and_a_removed_key_is_gone() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Scheduler::default();
        s.arm(1u32, t0 + ms(10));
        s.arm(1, t0 + ms(5));
        s.arm(2, t0 + ms(7));
        assert_eq!(s.next_deadline(), Some(t0 + ms(5)));
        s.remove(&1);
        assert_eq!(s.next_deadline(), Some(t0 + ms(7)));
        s.enqueue(3);
        s.remove(&3);
        assert_eq!(s.dequeue(), None, "a removed key leaves the queue");
        assert!(s.take_due(t0 + ms(6)).is_empty());
        assert_eq!(s.take_due(t0 + ms(7)), vec![2]);
        assert_eq!(s.next_deadline(), None);
        // Filed again after being taken: a new deadline.
        s.arm(2, t0 + ms(9));
        assert_eq!(s.next_deadline(), Some(t0 + ms(9)));
    }

    #[test]
    fn the_queue_is_round_robin() {
        let mut s = Scheduler::default();
        for k in [1u8, 2, 3, 1] {
            s.enqueue(k);
        }
        assert!(s.has_queued() && s.is_queued(&1));
        assert_eq!(s.dequeue(), Some(1));
        s.enqueue(1); // more to send: to the back
        assert_eq!(
            std::iter::from_fn(|| s.dequeue()).collect::<Vec<_>>(),
            vec![2, 3, 1]
        );
        assert!(!s.has_queued());
    }
}

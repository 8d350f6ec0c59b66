//! Reverse DNS for hop addresses, off the probing path: a few worker threads resolve addresses
//! as hops are found, so a slow or dead resolver never delays a probe or a reply. The caller
//! asks for a name when it prints, waiting at most a bounded time for pending ones.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Cache = Arc<(Mutex<HashMap<IpAddr, Option<Option<String>>>>, Condvar)>;

/// Background reverse-DNS resolver with a cache.
pub struct NameResolver {
    cache: Cache,
    tx: Option<mpsc::Sender<IpAddr>>,
    workers: Vec<JoinHandle<()>>,
}

impl NameResolver {
    /// Starts `threads` workers (each blocks in getnameinfo(3) for one address at a time).
    pub fn new(threads: usize) -> Self {
        let cache: Cache = Arc::new((Mutex::new(HashMap::new()), Condvar::new()));
        let (tx, rx) = mpsc::channel::<IpAddr>();
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..threads.max(1))
            .map(|_| {
                let rx = Arc::clone(&rx);
                let cache = Arc::clone(&cache);
                std::thread::spawn(move || {
                    // Reads answers from the network (a resolver's): no privilege at all.
                    crate::privilege::drop_all_in_thread();
                    loop {
                        let next = rx.lock().map(|r| r.recv());
                        let Ok(Ok(ip)) = next else { return };
                        let name = dns_lookup::lookup_addr(&ip)
                            .ok()
                            .filter(|n| n != &ip.to_string());
                        let (lock, cv) = &*cache;
                        if let Ok(mut m) = lock.lock() {
                            m.insert(ip, Some(name));
                        }
                        cv.notify_all();
                    }
                })
            })
            .collect();
        Self {
            cache,
            tx: Some(tx),
            workers,
        }
    }

    /// Asks for `ip`'s name (once; later calls are free).
    pub fn request(&self, ip: IpAddr) {
        let (lock, _) = &*self.cache;
        let Ok(mut m) = lock.lock() else { return };
        if m.contains_key(&ip) {
            return;
        }
        m.insert(ip, None);
        if let Some(tx) = &self.tx {
            let _ = tx.send(ip);
        }
    }

    /// The names of `ips` known now (asking for the others), and whether every one of them is
    /// settled (resolved to a name or to none). Never waits.
    pub fn try_names(&self, ips: &[IpAddr]) -> (HashMap<IpAddr, String>, bool) {
        for ip in ips {
            self.request(*ip);
        }
        let (lock, _) = &*self.cache;
        let Ok(m) = lock.lock() else {
            return (HashMap::new(), true);
        };
        let settled = ips.iter().all(|ip| !matches!(m.get(ip), Some(None)));
        let names = ips
            .iter()
            .filter_map(|ip| m.get(ip).cloned().flatten().flatten().map(|n| (*ip, n)))
            .collect();
        (names, settled)
    }

    /// The names of `ips`, waiting until `deadline` at most for pending ones. Addresses
    /// without a name (or not resolved in time) are absent.
    pub fn names(&self, ips: &[IpAddr], deadline: Instant) -> HashMap<IpAddr, String> {
        for ip in ips {
            self.request(*ip);
        }
        let (lock, cv) = &*self.cache;
        let Ok(mut m) = lock.lock() else {
            return HashMap::new();
        };
        loop {
            let pending = ips.iter().any(|ip| matches!(m.get(ip), Some(None)));
            let now = Instant::now();
            if !pending || now >= deadline {
                break;
            }
            match cv.wait_timeout(m, deadline - now) {
                Ok((g, _)) => m = g,
                Err(_) => return HashMap::new(),
            }
        }
        ips.iter()
            .filter_map(|ip| m.get(ip).cloned().flatten().flatten().map(|n| (*ip, n)))
            .collect()
    }
}

impl Drop for NameResolver {
    fn drop(&mut self) {
        // Closing the channel ends idle workers; a worker blocked in getnameinfo is detached
        // rather than waited for, so a dead resolver never delays the exit.
        self.tx.take();
        for w in self.workers.drain(..) {
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
}

/// How long printing waits for names still being resolved.
pub const NAME_WAIT: Duration = Duration::from_millis(500);

/// How often a run loop looks for names while it holds events for them.
pub(crate) const NAME_POLL: Duration = Duration::from_millis(5);

/// An event whose addresses get names (see [`NameGate`]).
pub(crate) trait Named {
    /// The target it is about (events of one target stay in order).
    fn target(&self) -> Option<IpAddr>;
    /// The addresses to name.
    fn addrs(&self) -> Vec<IpAddr>;
    /// A result whose parts were each held already: it waits for nothing more.
    fn is_final(&self) -> bool;
    /// Writes the names known.
    fn set_names(&mut self, names: &HashMap<IpAddr, String>);
}

/// Holds the events of each target until the names of their addresses are known (at most
/// [`NAME_WAIT`] after the event), so that a hop is printed with its names, as traceroute(8)
/// does, while probing goes on; a target's events stay in order.
pub(crate) struct NameGate<E> {
    resolver: NameResolver,
    /// Per target, its events in order, each with the instant it gives up on names.
    held: HashMap<IpAddr, VecDeque<(E, Instant)>>,
}

impl<E: Named> NameGate<E> {
    pub(crate) fn new(resolver: NameResolver) -> Self {
        Self {
            resolver,
            held: HashMap::new(),
        }
    }

    pub(crate) fn push(&mut self, ev: E, now: Instant) {
        for a in ev.addrs() {
            self.resolver.request(a);
        }
        let Some(target) = ev.target() else { return };
        self.held
            .entry(target)
            .or_default()
            .push_back((ev, now + NAME_WAIT));
    }

    /// Emits, per target in order, the events whose names are settled or whose wait is over.
    pub(crate) fn release(&mut self, now: Instant, emit: &mut impl FnMut(E)) {
        for queue in self.held.values_mut() {
            while let Some((ev, deadline)) = queue.front_mut() {
                let (names, settled) = self.resolver.try_names(&ev.addrs());
                if !settled && !ev.is_final() && now < *deadline {
                    break;
                }
                ev.set_names(&names);
                if let Some((ev, _)) = queue.pop_front() {
                    emit(ev);
                }
            }
        }
        self.held.retain(|_, q| !q.is_empty());
    }

    pub(crate) fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }
}

/// The hooks of a run whose events get names before they go out (traceroute, multipath
/// discovery, reverse traceroute): each event is held in a [`NameGate`] until the names of its
/// addresses are known (at most [`NAME_WAIT`]), then handed to `emit`; without name
/// resolution, handed at once.
pub(crate) struct NamedHooks<E, F> {
    gate: Option<NameGate<E>>,
    emit: F,
}

impl<E: Named, F: FnMut(E)> NamedHooks<E, F> {
    /// With reverse DNS when `resolve`.
    pub(crate) fn new(resolve: bool, emit: F) -> Self {
        Self {
            gate: resolve.then(|| NameGate::new(NameResolver::new(4))),
            emit,
        }
    }
}

impl<M, E, F> crate::run::Hooks<M> for NamedHooks<E, F>
where
    M: svctr_core::Machine<Event = E>,
    E: Named,
    F: FnMut(E),
{
    fn on_event(&mut self, ev: E) -> Result<(), crate::Error> {
        match &mut self.gate {
            Some(g) => g.push(ev, Instant::now()),
            None => (self.emit)(ev),
        }
        Ok(())
    }

    fn after_turn(
        &mut self,
        now: Instant,
        _: &mut crate::run::Sources<M>,
    ) -> Result<(), crate::Error> {
        if let Some(g) = &mut self.gate {
            g.release(now, &mut self.emit);
        }
        Ok(())
    }

    fn next_wake(&self) -> Option<Instant> {
        // Names come from other threads: look again soon while events are held.
        self.gate
            .as_ref()
            .is_some_and(NameGate::is_holding)
            .then(|| Instant::now() + NAME_POLL)
    }

    fn busy(&self) -> bool {
        self.gate.as_ref().is_some_and(NameGate::is_holding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolves_or_is_absent_and_never_blocks_past_the_deadline() {
        let r = NameResolver::new(2);
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        let start = Instant::now();
        let names = r.names(&ips, Instant::now() + Duration::from_secs(2));
        assert!(start.elapsed() < Duration::from_secs(3));
        if let Some(n) = names.get(&ips[0]) {
            assert!(!n.is_empty());
        }
    }
}

//! Reverse DNS for hop addresses, off the probing path: a few worker threads resolve addresses
//! as hops are found, so a slow or dead resolver never delays a probe or a reply. The caller
//! asks for a name when it prints, waiting at most a bounded time for pending ones.

use std::collections::HashMap;
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
                std::thread::spawn(move || loop {
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

//! What keeps a reverse-traceroute server from being a weapon: token buckets per source and
//! overall, and a source allowlist read from a CIDR file.
//!
//! The reference server (HSAnet/reverse-traceroute) has neither rate limit: only its session
//! table bounds it, so spoofed requests can aim its probes at third parties at about one byte
//! out per byte in (`../shared/reference/reverse-traceroute.md` §2.5). Here every admitted
//! request spends a token from its source's bucket and one from the global bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// A rate: `per_sec` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens per second (0: nothing is ever admitted).
    pub per_sec: f64,
    /// Bucket size: how many may come at once after a quiet time (at least 1).
    pub burst: f64,
}

impl Rate {
    /// `per_sec` per second with a burst of `burst`.
    pub const fn new(per_sec: f64, burst: f64) -> Self {
        Self { per_sec, burst }
    }
}

/// A token bucket; time is an input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst.max(1.0),
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate.per_sec).min(rate.burst.max(1.0));
        self.last = now;
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket would be full at `now` (its state says nothing a new one would not).
    fn is_full_at(&self, rate: Rate, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + dt * rate.per_sec >= rate.burst.max(1.0)
    }
}

/// Why a request was not admitted by the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    /// Its source spent its tokens.
    Source,
    /// Every source together spent the global tokens.
    Global,
    /// The table of sources is full of sources that are all busy.
    Sources,
}

/// Per-source buckets (IPv6 by /64: one host owns a whole /64) and the global one; at most
/// `max_sources` sources are tracked, idle ones are forgotten first.
#[derive(Debug)]
pub(crate) struct Limits {
    source: Rate,
    global_rate: Rate,
    global: Bucket,
    sources: HashMap<IpAddr, Bucket>,
    max_sources: usize,
    last_sweep: Instant,
}

/// The key a source is limited under: the address, or its /64 for IPv6.
pub(crate) fn source_key(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(_) => a,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

impl Limits {
    pub(crate) fn new(source: Rate, global: Rate, max_sources: usize, now: Instant) -> Self {
        Self {
            source,
            global_rate: global,
            global: Bucket::full(global, now),
            sources: HashMap::new(),
            max_sources: max_sources.max(1),
            last_sweep: now,
        }
    }

    /// How many sources are tracked.
    pub(crate) fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Admits one request from `src`, or says which limit refused it. The source's token is
    /// only spent when the global bucket has one too, so that a flood from elsewhere does not
    /// also drain the buckets of the sources it crowds out.
    pub(crate) fn admit(&mut self, src: IpAddr, now: Instant) -> Result<(), Limited> {
        let key = source_key(src);
        if !self.sources.contains_key(&key) && self.sources.len() >= self.max_sources {
            self.sweep(now);
            if self.sources.len() >= self.max_sources {
                return Err(Limited::Sources);
            }
        }
        let rate = self.source;
        let bucket = self
            .sources
            .entry(key)
            .or_insert_with(|| Bucket::full(rate, now));
        let mut probe = *bucket;
        if !probe.take(rate, now) {
            *bucket = probe;
            return Err(Limited::Source);
        }
        if !self.global.take(self.global_rate, now) {
            return Err(Limited::Global);
        }
        *bucket = probe;
        Ok(())
    }

    /// Forgets the sources whose buckets have refilled (at most once per 100 ms: a flood of
    /// new sources must not make every request scan the table).
    fn sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep) < Duration::from_millis(100) {
            return;
        }
        self.last_sweep = now;
        let rate = self.source;
        self.sources.retain(|_, b| !b.is_full_at(rate, now));
    }
}

/// A CIDR allowlist file's error: the line and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct AllowlistError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses an allowlist: one `address/prefix` per line (a bare address is a host prefix),
/// `#` starts a comment, blank lines are skipped. As the reference server does, a prefix with
/// host bits set is an error (`198.18.0.1/24` is almost always a typo for a /32 or for
/// `198.18.0.0/24`), and any error refuses the whole file.
pub fn parse_allowlist(text: &str) -> Result<Vec<IpNet>, AllowlistError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| AllowlistError {
            line: i + 1,
            message,
        };
        let net: IpNet = if line.contains('/') {
            line.parse()
                .map_err(|_| err(format!("`{line}` is not an address/prefix")))?
        } else {
            let a: IpAddr = line
                .parse()
                .map_err(|_| err(format!("`{line}` is not an address/prefix")))?;
            IpNet::from(a)
        };
        if net.trunc() != net {
            return Err(err(format!(
                "`{line}` has host bits set (did you mean {}?)",
                net.trunc()
            )));
        }
        out.push(net);
    }
    Ok(out)
}

/// Whether `a` is inside one of `nets` (IPv4-mapped IPv6 addresses count as IPv4).
pub(crate) fn allowed(nets: &[IpNet], a: IpAddr) -> bool {
    let a = match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_lines_comments_and_errors() {
        let nets =
            parse_allowlist("# clients\n198.18.0.0/15\n\n  2001:2::/48  # lab\n198.19.7.7\n")
                .unwrap();
        assert_eq!(nets.len(), 3);
        assert!(allowed(&nets, "198.19.1.2".parse().unwrap()));
        assert!(allowed(&nets, "198.19.7.7".parse().unwrap()));
        assert!(allowed(&nets, "2001:2:0:1::5".parse().unwrap()));
        assert!(allowed(&nets, "::ffff:198.18.0.9".parse().unwrap()));
        assert!(!allowed(&nets, "192.0.2.1".parse().unwrap()));
        let e = parse_allowlist("198.18.0.0/15\n198.18.0.1/24\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("host bits"), "{e}");
        assert!(e.to_string().contains("198.18.0.0/24"), "{e}");
        let e = parse_allowlist("\n\nexample.org\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(parse_allowlist("198.18.0.0/33").unwrap_err().line, 1);
        assert!(parse_allowlist("").unwrap().is_empty());
    }

    #[test]
    fn per_source_and_global_buckets() {
        let t0 = Instant::now();
        let mut l = Limits::new(Rate::new(10.0, 5.0), Rate::new(100.0, 8.0), 4, t0);
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        // a's burst of 5, then refused
        for _ in 0..5 {
            assert_eq!(l.admit(a, t0), Ok(()));
        }
        assert_eq!(l.admit(a, t0), Err(Limited::Source));
        // b gets the 3 global tokens left
        for _ in 0..3 {
            assert_eq!(l.admit(b, t0), Ok(()));
        }
        assert_eq!(l.admit(b, t0), Err(Limited::Global));
        // 100 ms later: a has 1 more token, the global bucket 10
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.admit(a, t1), Ok(()));
        assert_eq!(l.admit(a, t1), Err(Limited::Source));
        // over 10 s, a gets 10/s at most
        let mut ok = 0;
        for i in 0..10_000u64 {
            let t = t1 + Duration::from_millis(i);
            ok += usize::from(l.admit(a, t).is_ok());
        }
        assert!((99..=106).contains(&ok), "{ok}");
    }

    #[test]
    fn the_source_table_is_bounded_and_forgets_idle_sources() {
        let t0 = Instant::now();
        let mut l = Limits::new(Rate::new(1.0, 2.0), Rate::new(1e9, 1e9), 3, t0);
        for i in 1..=3u8 {
            assert!(l.admit(IpAddr::from([198, 18, 0, i]), t0).is_ok());
        }
        assert_eq!(
            l.admit("198.18.0.4".parse().unwrap(), t0),
            Err(Limited::Sources)
        );
        assert_eq!(l.tracked(), 3);
        // after the buckets refill, the idle sources are forgotten
        let t1 = t0 + Duration::from_secs(2);
        assert!(l.admit("198.18.0.4".parse().unwrap(), t1).is_ok());
        assert!(l.tracked() <= 3);
        // IPv6 sources of one /64 share a bucket
        let mut l = Limits::new(Rate::new(1.0, 2.0), Rate::new(1e9, 1e9), 10, t0);
        assert!(l.admit("2001:2::1".parse().unwrap(), t0).is_ok());
        assert!(l.admit("2001:2::2".parse().unwrap(), t0).is_ok());
        assert_eq!(
            l.admit("2001:2::3".parse().unwrap(), t0),
            Err(Limited::Source)
        );
        assert!(l.admit("2001:2:0:1::1".parse().unwrap(), t0).is_ok());
    }
}

//! A cache of what sniffed DNS answers said: which names resolve to which address, through
//! which CNAME chain, until when.
//!
//! What it does:
//! - parses one DNS message with `hickory-proto` and learns from responses only (QR = 1,
//!   opcode QUERY, RCODE NOERROR); queries and error responses are ignored after a look at
//!   the 12-byte header, and header counts that cannot fit in the message are rejected before
//!   parsing (hickory-proto would otherwise reserve room for up to 65535 questions);
//! - records A and AAAA answers (address -> owner name) and CNAME answers (alias -> target),
//!   each until its TTL runs out (RFC 1035 §3.2.1; a TTL with the top bit set counts as 0,
//!   RFC 2181 §8; TTLs are capped at 7 days). Chains are joined at lookup time, so a response
//!   `a.test CNAME b.test` followed by a separate response `b.test A 192.0.2.1` gives
//!   `names_of(192.0.2.1) = [a.test, b.test]` while the CNAME is unexpired; a name reached
//!   through a chain lives only as long as the shortest TTL along the chain;
//! - uses every record of the answer section, whatever the questions; from the authority and
//!   additional sections only A/AAAA/CNAME records whose owner continues a chain from a
//!   question name, an answer owner or an answer CNAME target (this keeps the CNAME target's
//!   address that some servers put in the additional section, and drops unrelated glue such
//!   as name server addresses);
//! - stores names lower-cased without the trailing dot; a name with bytes other than printable
//!   ASCII (or a dot inside a label) is skipped;
//! - bounds memory: at most `max_addresses` (address, owner name) entries and as many CNAMEs,
//!   evicting the soonest-to-expire; at most 8 owner names per address and 16 aliases per
//!   CNAME target; [`DnsCache::names_of`] returns at most 8 names. CNAME loops are harmless:
//!   chains are walked with a visited set.
//!
//! What it does not do: it does not split TCP DNS streams into messages (the caller strips the
//! 2-byte length prefix), does not validate DNSSEC, does not match answers to queries (any
//! response the host receives is believed), and does not read mDNS, DoT, DoH or DoQ.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RData, Record};

/// Owner names kept per address (a CDN address shared by many names keeps the freshest ones).
pub const MAX_NAMES_PER_ADDRESS: usize = 8;
/// Aliases kept per CNAME target.
const MAX_ALIASES_PER_TARGET: usize = 16;
/// Longest chain (names) returned by `names_of`.
const MAX_CHAIN: usize = 8;
/// TTL cap (RFC 8767 §4 suggests 7 days as the longest sensible TTL).
const MAX_TTL: u32 = 7 * 24 * 3600;

/// A DNS message that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// hickory-proto rejected the message.
    #[error("malformed DNS message: {0}")]
    Malformed(String),
}

#[derive(Debug, Clone)]
struct Owner {
    name: Arc<str>,
    expires: Instant,
}

#[derive(Debug, Clone)]
struct Cname {
    target: Arc<str>,
    expires: Instant,
}

/// Address and CNAME knowledge learned from DNS responses. See the module documentation.
#[derive(Debug, Clone)]
pub struct DnsCache {
    max_addresses: usize,
    /// address -> owner names (A/AAAA owners), oldest first.
    addrs: HashMap<IpAddr, Vec<Owner>>,
    /// (expiry, address, owner) of every address entry, for eviction and expiry.
    addr_expiry: BTreeSet<(Instant, IpAddr, Arc<str>)>,
    /// alias -> target.
    cnames: HashMap<Arc<str>, Cname>,
    /// target -> aliases pointing at it.
    aliases: HashMap<Arc<str>, Vec<Arc<str>>>,
    /// (expiry, alias) of every CNAME.
    cname_expiry: BTreeSet<(Instant, Arc<str>)>,
}

impl DnsCache {
    /// An empty cache holding at most `max_addresses` (address, name) entries (and at most as
    /// many CNAMEs).
    pub fn new(max_addresses: usize) -> DnsCache {
        DnsCache {
            max_addresses,
            addrs: HashMap::new(),
            addr_expiry: BTreeSet::new(),
            cnames: HashMap::new(),
            aliases: HashMap::new(),
            cname_expiry: BTreeSet::new(),
        }
    }

    /// One DNS message (a UDP payload, or one message from a TCP stream without its 2-byte
    /// length prefix). Learns from responses only (QR=1, RCODE NOERROR); queries are ignored.
    /// Returns how many address entries were added or refreshed.
    pub fn handle_message(&mut self, now: Instant, msg: &[u8]) -> Result<usize, DnsError> {
        // RFC 1035 §4.1.1 header: ID, flags (QR, Opcode, AA, TC, RD, RA, Z, RCODE), QDCOUNT,
        // ANCOUNT, NSCOUNT, ARCOUNT.
        let Some(h) = msg.get(..12) else {
            return Err(DnsError::Malformed(
                "shorter than the 12-byte header".to_string(),
            ));
        };
        if h[2] & 0x80 == 0 || (h[2] >> 3) & 0x0f != 0 || h[3] & 0x0f != 0 {
            return Ok(0); // a query, not opcode QUERY, or an error RCODE: nothing to learn
        }
        // Every question takes at least 5 bytes and every record 11: reject impossible counts
        // before hickory-proto allocates room for them.
        let count = |i: usize| usize::from(u16::from_be_bytes([h[i], h[i + 1]]));
        let min_len = 12 + 5 * count(4) + 11 * (count(6) + count(8) + count(10));
        if min_len > msg.len() {
            return Err(DnsError::Malformed(format!(
                "the header's counts need at least {min_len} bytes, the message has {}",
                msg.len()
            )));
        }
        let m =
            Message::from_vec(msg).map_err(|e| DnsError::Malformed(one_line(&e.to_string())))?;
        if m.metadata.message_type != MessageType::Response
            || m.metadata.op_code != OpCode::Query
            || m.metadata.response_code != ResponseCode::NoError
        {
            return Ok(0);
        }
        // Names from which chains may continue into the authority/additional sections.
        let mut reachable: HashSet<String> = m
            .queries
            .iter()
            .filter_map(|q| name_text(q.name()))
            .collect();
        let mut accepted: Vec<(&Record, String)> = Vec::new();
        for r in &m.answers {
            if let Some(owner) = usable(r) {
                reachable.insert(owner.clone());
                if let RData::CNAME(c) = &r.data {
                    if let Some(t) = name_text(&c.0) {
                        reachable.insert(t);
                    }
                }
                accepted.push((r, owner));
            }
        }
        let mut extra: Vec<(&Record, String)> = m
            .authorities
            .iter()
            .chain(&m.additionals)
            .filter_map(|r| usable(r).map(|o| (r, o)))
            .collect();
        // Fixed point: a CNAME in the additional section may continue into another one.
        loop {
            let before = extra.len();
            let mut k = 0;
            while k < extra.len() {
                if reachable.contains(&extra[k].1) {
                    let (r, owner) = extra.swap_remove(k);
                    if let RData::CNAME(c) = &r.data {
                        if let Some(t) = name_text(&c.0) {
                            reachable.insert(t);
                        }
                    }
                    accepted.push((r, owner));
                } else {
                    k += 1;
                }
            }
            if extra.len() == before {
                break;
            }
        }
        // CNAMEs first so that the chains exist when the addresses are looked up.
        let mut learned = 0;
        for (r, owner) in &accepted {
            if let RData::CNAME(c) = &r.data {
                if let Some(target) = name_text(&c.0) {
                    if let Some(exp) = expiry(now, r.ttl) {
                        self.insert_cname(owner, &target, exp);
                    }
                }
            }
        }
        for (r, owner) in &accepted {
            let ip = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            if let Some(exp) = expiry(now, r.ttl) {
                if self.insert_addr(ip, owner, exp) {
                    learned += 1;
                }
            }
        }
        Ok(learned)
    }

    /// Every name that currently resolves to `ip` (unexpired), in chain order from the name
    /// asked for down to the name that owns the A/AAAA record (e.g.
    /// `["video.example.test", "edge.cdn.test"]`). Several owners give several chains, one
    /// after the other. Empty if unknown; at most 8 names.
    pub fn names_of(&self, now: Instant, ip: IpAddr) -> Vec<&str> {
        let mut out = Vec::new();
        self.for_each_name(now, ip, |n| {
            out.push(n);
            false
        });
        out
    }

    /// Calls `f` with the names of `names_of` in the same order until `f` returns true;
    /// returns the name `f` accepted. Costs one hash lookup when the address is unknown.
    pub(crate) fn for_each_name<'a>(
        &'a self,
        now: Instant,
        ip: IpAddr,
        mut f: impl FnMut(&'a str) -> bool,
    ) -> Option<&'a str> {
        let owners = self.addrs.get(&ip)?;
        let mut emitted: Vec<&'a str> = Vec::new();
        for o in owners {
            if o.expires <= now || emitted.len() >= MAX_CHAIN {
                continue;
            }
            // Walk up the aliases breadth-first; each name lives until the soonest expiry on
            // its path to the owner.
            let mut chain: Vec<&'a str> = vec![&o.name];
            let mut frontier: Vec<(&'a str, Instant)> = vec![(&o.name, o.expires)];
            while let Some((name, exp)) = frontier.pop() {
                let Some(aliases) = self.aliases.get(name) else {
                    continue;
                };
                for a in aliases {
                    if chain.len() + emitted.len() >= MAX_CHAIN {
                        break;
                    }
                    let Some(c) = self.cnames.get(a) else {
                        continue;
                    };
                    let exp = exp.min(c.expires);
                    if exp <= now || chain.contains(&&**a) || emitted.contains(&&**a) {
                        continue;
                    }
                    chain.push(a);
                    frontier.insert(0, (a, exp));
                }
            }
            // chain is owner-first; report from the name asked for down to the owner
            for n in chain.into_iter().rev() {
                if emitted.contains(&n) {
                    continue;
                }
                if f(n) {
                    return Some(n);
                }
                emitted.push(n);
            }
        }
        None
    }

    /// Drops every entry that expired at or before `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some((exp, ip, name)) = self.addr_expiry.first().cloned() {
            if exp > now {
                break;
            }
            self.remove_addr(ip, &name);
        }
        while let Some((exp, alias)) = self.cname_expiry.first().cloned() {
            if exp > now {
                break;
            }
            self.remove_cname(&alias);
        }
    }

    /// When the next entry expires, if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        let a = self.addr_expiry.first().map(|e| e.0);
        let c = self.cname_expiry.first().map(|e| e.0);
        match (a, c) {
            (Some(a), Some(c)) => Some(a.min(c)),
            (a, c) => a.or(c),
        }
    }

    /// Number of (address, name) entries (expired ones count until [`DnsCache::expire`]).
    pub fn len(&self) -> usize {
        self.addr_expiry.len()
    }

    /// True if no address is known.
    pub fn is_empty(&self) -> bool {
        self.addr_expiry.is_empty()
    }

    /// Number of CNAME entries.
    pub fn cname_len(&self) -> usize {
        self.cnames.len()
    }

    /// Adds or refreshes (ip, owner). Returns true if stored.
    fn insert_addr(&mut self, ip: IpAddr, owner: &str, expires: Instant) -> bool {
        if self.max_addresses == 0 {
            return false;
        }
        let owners = self.addrs.entry(ip).or_default();
        if let Some(o) = owners.iter_mut().find(|o| &*o.name == owner) {
            self.addr_expiry.remove(&(o.expires, ip, o.name.clone()));
            o.expires = expires;
            self.addr_expiry.insert((expires, ip, o.name.clone()));
            return true;
        }
        let name: Arc<str> = Arc::from(owner);
        owners.push(Owner {
            name: name.clone(),
            expires,
        });
        self.addr_expiry.insert((expires, ip, name));
        if owners.len() > MAX_NAMES_PER_ADDRESS {
            if let Some(victim) = owners
                .iter()
                .min_by_key(|o| o.expires)
                .map(|o| o.name.clone())
            {
                self.remove_addr(ip, &victim);
            }
        }
        while self.addr_expiry.len() > self.max_addresses {
            let Some((_, vip, vname)) = self.addr_expiry.first().cloned() else {
                break;
            };
            self.remove_addr(vip, &vname);
        }
        true
    }

    fn remove_addr(&mut self, ip: IpAddr, name: &str) {
        if let Some(owners) = self.addrs.get_mut(&ip) {
            if let Some(k) = owners.iter().position(|o| &*o.name == name) {
                let o = owners.remove(k);
                self.addr_expiry.remove(&(o.expires, ip, o.name));
            }
            if owners.is_empty() {
                self.addrs.remove(&ip);
            }
        }
    }

    fn insert_cname(&mut self, alias: &str, target: &str, expires: Instant) {
        if alias == target || self.max_addresses == 0 {
            return;
        }
        if let Some(old) = self.cnames.get(alias) {
            // RFC 1034 §3.6.2: a name has at most one CNAME; the newest answer replaces it.
            if &*old.target == target {
                let alias: Arc<str> = self
                    .cnames
                    .get_key_value(alias)
                    .map(|(k, _)| k.clone())
                    .unwrap_or_else(|| Arc::from(alias));
                let old_exp = old.expires;
                self.cname_expiry.remove(&(old_exp, alias.clone()));
                self.cname_expiry.insert((expires, alias.clone()));
                if let Some(c) = self.cnames.get_mut(&alias) {
                    c.expires = expires;
                }
                return;
            }
            self.remove_cname(alias);
        }
        let alias: Arc<str> = Arc::from(alias);
        let target: Arc<str> = self
            .aliases
            .get_key_value(target)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Arc::from(target));
        let list = self.aliases.entry(target.clone()).or_default();
        list.push(alias.clone());
        let evict = if list.len() > MAX_ALIASES_PER_TARGET {
            list.iter()
                .filter_map(|a| self.cnames.get(a).map(|c| (c.expires, a.clone())))
                .min()
                .map(|(_, a)| a)
        } else {
            None
        };
        self.cnames.insert(alias.clone(), Cname { target, expires });
        self.cname_expiry.insert((expires, alias));
        if let Some(a) = evict {
            self.remove_cname(&a);
        }
        while self.cname_expiry.len() > self.max_addresses {
            let Some((_, a)) = self.cname_expiry.first().cloned() else {
                break;
            };
            self.remove_cname(&a);
        }
    }

    fn remove_cname(&mut self, alias: &str) {
        let Some((alias, c)) = self.cnames.remove_entry(alias) else {
            return;
        };
        self.cname_expiry.remove(&(c.expires, alias.clone()));
        if let Some(list) = self.aliases.get_mut(&c.target) {
            list.retain(|a| *a != alias);
            if list.is_empty() {
                self.aliases.remove(&c.target);
            }
        }
    }
}

/// The owner name of an A, AAAA or CNAME record of class IN, normalised.
fn usable(r: &Record) -> Option<String> {
    match r.data {
        RData::A(_) | RData::AAAA(_) | RData::CNAME(_) => {}
        _ => return None,
    }
    if r.dns_class != hickory_proto::rr::DNSClass::IN {
        return None;
    }
    name_text(&r.name)
}

/// A name as lower-case text without the trailing dot, or None for the root or for labels
/// that cannot be written as plain text (bytes outside printable ASCII, or a dot).
pub(crate) fn name_text(name: &Name) -> Option<String> {
    let mut s = String::new();
    for label in name.iter() {
        if label.is_empty() || !label.iter().all(|&b| b.is_ascii_graphic() && b != b'.') {
            return None;
        }
        if !s.is_empty() {
            s.push('.');
        }
        for &b in label {
            s.push(char::from(b.to_ascii_lowercase()));
        }
    }
    if s.is_empty() || s.len() > 253 {
        return None;
    }
    Some(s)
}

/// The expiry of a record with `ttl`, or None if it is already expired (TTL 0).
fn expiry(now: Instant, ttl: u32) -> Option<Instant> {
    // RFC 2181 §8: a TTL with the most significant bit set is treated as zero.
    let ttl = if ttl > i32::MAX as u32 {
        0
    } else {
        ttl.min(MAX_TTL)
    };
    if ttl == 0 {
        return None;
    }
    now.checked_add(Duration::from_secs(u64::from(ttl)))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{
        CNAME_CHAIN, DNS_ALL, NO_QUESTION, POINTER_CYCLE, POINTER_LOOP, QUERY, TWO_QUESTIONS,
    };
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS};
    use hickory_proto::rr::RecordType;
    use std::str::FromStr;

    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
        Record::from_rdata(
            name(owner),
            ttl,
            RData::A(A::new(ip[0], ip[1], ip[2], ip[3])),
        )
    }

    fn cname(owner: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
    }

    /// A NOERROR response built with hickory (the bytes a resolver would send).
    fn response(questions: &[&str], answers: Vec<Record>, additionals: Vec<Record>) -> Vec<u8> {
        let mut m = Message::response(0x1234, OpCode::Query);
        for q in questions {
            m.add_query(Query::query(name(q), RecordType::A));
        }
        m.add_answers(answers);
        m.add_additionals(additionals);
        m.to_vec().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hand_written_cname_chain() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(100);
        assert_eq!(c.handle_message(t0, CNAME_CHAIN), Ok(1));
        assert_eq!(
            c.names_of(t0, ip("192.0.2.7")),
            ["video.example.test", "edge.cdn.test"]
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c.cname_len(), 1);
        // the A record (TTL 60) expires first; the chain goes with it
        assert_eq!(
            c.names_of(t0 + Duration::from_secs(59), ip("192.0.2.7"))
                .len(),
            2
        );
        assert!(c
            .names_of(t0 + Duration::from_secs(60), ip("192.0.2.7"))
            .is_empty());
        assert_eq!(c.next_expiry(), Some(t0 + Duration::from_secs(60)));
        c.expire(t0 + Duration::from_secs(60));
        assert!(c.is_empty());
        assert_eq!(c.cname_len(), 1);
        c.expire(t0 + Duration::from_secs(300));
        assert_eq!(c.cname_len(), 0);
        assert_eq!(c.next_expiry(), None);
    }

    #[test]
    fn hand_written_others() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(100);
        assert_eq!(c.handle_message(t0, TWO_QUESTIONS), Ok(2));
        assert_eq!(c.names_of(t0, ip("198.51.100.1")), ["a.test"]);
        assert_eq!(c.names_of(t0, ip("2001:db8::1")), ["b.test"]);
        assert_eq!(c.handle_message(t0, NO_QUESTION), Ok(1));
        assert_eq!(c.names_of(t0, ip("203.0.113.5")), ["upper.case.test"]);
        assert_eq!(c.handle_message(t0, QUERY), Ok(0));
        assert!(matches!(
            c.handle_message(t0, POINTER_LOOP),
            Err(DnsError::Malformed(_))
        ));
        assert!(matches!(
            c.handle_message(t0, POINTER_CYCLE),
            Err(DnsError::Malformed(_))
        ));
        assert!(matches!(
            c.handle_message(t0, &[]),
            Err(DnsError::Malformed(_))
        ));
        // counts that cannot fit are rejected before hickory-proto sizes its vectors by them
        let mut big = TWO_QUESTIONS.to_vec();
        big[4..6].copy_from_slice(&[0xff, 0xff]);
        assert!(
            matches!(c.handle_message(t0, &big), Err(DnsError::Malformed(m)) if m.contains("counts"))
        );
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn truncated_at_every_length() {
        let t0 = Instant::now();
        for (label, msg) in DNS_ALL {
            for cut in 0..msg.len() {
                let mut c = DnsCache::new(10);
                // a cut message is rejected (the counts no longer fit), and learns nothing
                match c.handle_message(t0, &msg[..cut]) {
                    Err(DnsError::Malformed(e)) => assert!(!e.contains('\n'), "{label}"),
                    Ok(n) => {
                        // only a cut query passes (ignored without parsing)
                        assert_eq!((*label, n), ("query", 0), "cut at {cut}");
                    }
                }
                assert!(c.is_empty());
            }
        }
    }

    #[test]
    fn rcode_and_opcode_filters() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(10);
        let mut m = Message::response(1, OpCode::Query);
        m.metadata.response_code = ResponseCode::NXDomain;
        m.add_answer(a("x.test", 60, [192, 0, 2, 1]));
        assert_eq!(c.handle_message(t0, &m.to_vec().unwrap()), Ok(0));
        let mut m = Message::query();
        m.add_answer(a("x.test", 60, [192, 0, 2, 1]));
        assert_eq!(c.handle_message(t0, &m.to_vec().unwrap()), Ok(0));
        assert!(c.is_empty());
    }

    #[test]
    fn chain_across_responses() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(100);
        let r1 = response(&["a.test"], vec![cname("a.test", 100, "b.test")], vec![]);
        assert_eq!(c.handle_message(t0, &r1), Ok(0));
        let r2 = response(&["b.test"], vec![a("b.test", 1000, [192, 0, 2, 4])], vec![]);
        assert_eq!(c.handle_message(t0 + Duration::from_secs(1), &r2), Ok(1));
        let t = t0 + Duration::from_secs(50);
        assert_eq!(c.names_of(t, ip("192.0.2.4")), ["a.test", "b.test"]);
        // the alias lives as long as the CNAME, the owner as long as its A record
        assert_eq!(
            c.names_of(t0 + Duration::from_secs(100), ip("192.0.2.4")),
            ["b.test"]
        );
        // and the other order (address first, CNAME later) joins too
        let mut c = DnsCache::new(100);
        c.handle_message(t0, &r2).unwrap();
        c.handle_message(t0, &r1).unwrap();
        assert_eq!(c.names_of(t0, ip("192.0.2.4")), ["a.test", "b.test"]);
    }

    #[test]
    fn long_chain_min_ttl_and_multiple_questions() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(100);
        let r = response(
            &["www.video.test", "img.video.test"],
            vec![
                cname("WWW.Video.Test.", 300, "www.video.test.cdn1.test"),
                cname("www.video.test.cdn1.test", 20, "edge.cdn2.test"),
                a("edge.cdn2.test", 600, [198, 51, 100, 9]),
                cname("img.video.test", 300, "img.cdn.test"),
                Record::from_rdata(
                    name("img.cdn.test"),
                    60,
                    RData::AAAA(AAAA::from_str("2001:db8::9").unwrap()),
                ),
            ],
            vec![],
        );
        assert_eq!(c.handle_message(t0, &r), Ok(2));
        assert_eq!(
            c.names_of(t0, ip("198.51.100.9")),
            [
                "www.video.test",
                "www.video.test.cdn1.test",
                "edge.cdn2.test"
            ]
        );
        assert_eq!(
            c.names_of(t0, ip("2001:db8::9")),
            ["img.video.test", "img.cdn.test"]
        );
        // after 20 s the middle CNAME expired: the first name is cut off with it
        assert_eq!(
            c.names_of(t0 + Duration::from_secs(20), ip("198.51.100.9")),
            ["edge.cdn2.test"]
        );
    }

    #[test]
    fn additional_section_only_when_continuing_a_chain() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(100);
        let mut m = Message::response(7, OpCode::Query);
        m.add_query(Query::query(name("s.test"), RecordType::A));
        m.add_answer(cname("s.test", 60, "t.cdn.test"));
        m.add_authority(Record::from_rdata(
            name("cdn.test"),
            60,
            RData::NS(NS(name("ns.cdn.test"))),
        ));
        m.add_additional(a("t.cdn.test", 60, [192, 0, 2, 20])); // continues the chain
        m.add_additional(a("ns.cdn.test", 60, [192, 0, 2, 53])); // glue: ignored
        m.add_additional(cname("unrelated.test", 60, "s.test")); // owner not reachable: ignored
        assert_eq!(c.handle_message(t0, &m.to_vec().unwrap()), Ok(1));
        assert_eq!(c.names_of(t0, ip("192.0.2.20")), ["s.test", "t.cdn.test"]);
        assert!(c.names_of(t0, ip("192.0.2.53")).is_empty());
        assert_eq!(c.cname_len(), 1);
    }

    #[test]
    fn ttl_rules() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(100);
        let r = response(
            &[],
            vec![
                a("zero.test", 0, [192, 0, 2, 1]),
                a("msb.test", 0x8000_0000, [192, 0, 2, 2]),
                a("huge.test", 0x7fff_ffff, [192, 0, 2, 3]),
            ],
            vec![],
        );
        assert_eq!(c.handle_message(t0, &r), Ok(1));
        assert!(c.names_of(t0, ip("192.0.2.1")).is_empty());
        assert!(c.names_of(t0, ip("192.0.2.2")).is_empty());
        assert_eq!(
            c.next_expiry(),
            Some(t0 + Duration::from_secs(u64::from(MAX_TTL)))
        );
    }

    #[test]
    fn refresh_and_multiple_owners() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(100);
        c.handle_message(
            t0,
            &response(&[], vec![a("x.test", 10, [192, 0, 2, 1])], vec![]),
        )
        .unwrap();
        assert_eq!(
            c.handle_message(
                t0 + Duration::from_secs(5),
                &response(&[], vec![a("x.test", 10, [192, 0, 2, 1])], vec![])
            ),
            Ok(1)
        );
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.names_of(t0 + Duration::from_secs(12), ip("192.0.2.1")),
            ["x.test"]
        );
        c.handle_message(
            t0,
            &response(&[], vec![a("y.test", 100, [192, 0, 2, 1])], vec![]),
        )
        .unwrap();
        assert_eq!(
            c.names_of(t0 + Duration::from_secs(12), ip("192.0.2.1")),
            ["x.test", "y.test"]
        );
        // at most 8 owners per address: the soonest-to-expire is evicted
        for k in 0..20u32 {
            let r = response(
                &[],
                vec![a(&format!("n{k}.test"), 1000 + k, [192, 0, 2, 1])],
                vec![],
            );
            c.handle_message(t0, &r).unwrap();
        }
        let names = c.names_of(t0, ip("192.0.2.1"));
        assert_eq!(names.len(), MAX_NAMES_PER_ADDRESS);
        assert_eq!(names[0], "n12.test");
        assert_eq!(c.len(), MAX_NAMES_PER_ADDRESS);
    }

    #[test]
    fn bounded_memory_evicts_soonest_expiry() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(50);
        for k in 0..200u32 {
            let ipb = k.to_be_bytes();
            let r = response(
                &[],
                vec![
                    cname(&format!("alias{k}.test"), 500 + k, &format!("host{k}.test")),
                    a(
                        &format!("host{k}.test"),
                        1000 + k,
                        [10, ipb[1], ipb[2], ipb[3]],
                    ),
                ],
                vec![],
            );
            c.handle_message(t0, &r).unwrap();
        }
        assert_eq!(c.len(), 50);
        assert_eq!(c.cname_len(), 50);
        assert!(c.names_of(t0, ip("10.0.0.0")).is_empty());
        assert_eq!(
            c.names_of(t0, ip("10.0.0.199")),
            ["alias199.test", "host199.test"]
        );
        let c0 = DnsCache::new(0);
        let mut c0b = c0.clone();
        assert_eq!(c0b.handle_message(t0, CNAME_CHAIN), Ok(0));
        assert!(c0b.is_empty());
    }

    #[test]
    fn cname_loops_and_fanout() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(100);
        let r = response(
            &[],
            vec![
                cname("a.test", 60, "b.test"),
                cname("b.test", 60, "a.test"),
                cname("self.test", 60, "self.test"),
                a("a.test", 60, [192, 0, 2, 1]),
            ],
            vec![],
        );
        c.handle_message(t0, &r).unwrap();
        assert_eq!(c.names_of(t0, ip("192.0.2.1")), ["b.test", "a.test"]);
        // many aliases of one target: bounded
        let answers = (0..40)
            .map(|k| cname(&format!("s{k}.test"), 60, "edge.test"))
            .chain([a("edge.test", 60, [192, 0, 2, 9])])
            .collect();
        c.handle_message(t0, &response(&[], answers, vec![]))
            .unwrap();
        let names = c.names_of(t0, ip("192.0.2.9"));
        assert_eq!(names.len(), MAX_CHAIN);
        assert_eq!(names.last(), Some(&"edge.test"));
        // a CNAME replaced by a newer answer with another target
        c.handle_message(
            t0,
            &response(&[], vec![cname("s39.test", 60, "other.test")], vec![]),
        )
        .unwrap();
        assert!(c
            .aliases
            .get("edge.test")
            .is_none_or(|l| !l.iter().any(|a| &**a == "s39.test")));
    }

    #[test]
    fn odd_names_are_skipped() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(100);
        // a label containing a dot and one with a space, written with hickory's raw labels
        let dotted = Name::from_labels(vec![&b"a.b"[..], b"test"]).unwrap();
        let spaced = Name::from_labels(vec![&b"a b"[..], b"test"]).unwrap();
        let r = response(
            &[],
            vec![
                Record::from_rdata(dotted, 60, RData::A(A::new(192, 0, 2, 1))),
                Record::from_rdata(spaced, 60, RData::A(A::new(192, 0, 2, 2))),
                Record::from_rdata(Name::root(), 60, RData::A(A::new(192, 0, 2, 3))),
            ],
            vec![],
        );
        assert_eq!(c.handle_message(t0, &r), Ok(0));
    }
}

//! AS numbers of hop addresses from an offline table (`--asn FILE`): iptoasn.com's
//! "ip2asn" TSV files (<https://iptoasn.com/>, public domain, updated hourly), one range per
//! line, tab-separated:
//!
//! ```text
//! range_start  range_end  AS_number  country_code  AS_description
//! 1.0.0.0      1.0.0.255  13335      US            CLOUDFLARENET
//! ```
//!
//! The IPv4, IPv6 and combined files all have this shape; AS number 0 marks a range that no
//! AS announces ("Not routed"), which gives no AS. Lookups are a binary search over the
//! ranges sorted by start, so a table of the whole Internet (about 500,000 ranges) answers
//! in microseconds; overlapping ranges (not in iptoasn's files) resolve to the one starting
//! last at or before the address.

use std::fmt;
use std::net::IpAddr;

use crate::Hop;

/// One range: first and last address (as integers of their family), AS number and name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range<T> {
    start: T,
    end: T,
    asn: u32,
    name: String,
}

/// An IP-to-AS table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AsnTable {
    v4: Vec<Range<u32>>,
    v6: Vec<Range<u128>>,
}

/// A line of the table that is not a range (1-based line number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsnError {
    /// The line.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for AsnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for AsnError {}

impl AsnTable {
    /// Parses an ip2asn TSV file. Empty lines are skipped; anything else that is not a range
    /// of one family with an AS number is an error naming its line.
    pub fn from_tsv(text: &str) -> Result<Self, AsnError> {
        let mut t = Self::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let err = |reason: String| AsnError {
                line: i + 1,
                reason,
            };
            let mut f = line.split('\t');
            let (Some(a), Some(b), Some(asn)) = (f.next(), f.next(), f.next()) else {
                return Err(err(
                    "expected range_start, range_end and AS_number separated by tabs".into(),
                ));
            };
            let name = f.nth(1).unwrap_or("").to_string();
            let asn: u32 = asn
                .trim()
                .parse()
                .map_err(|_| err(format!("AS number {asn:?} is not a number")))?;
            let parse = |s: &str| {
                s.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| err(format!("{s:?} is not an IP address")))
            };
            match (parse(a)?, parse(b)?) {
                (IpAddr::V4(s), IpAddr::V4(e)) if s <= e => t.v4.push(Range {
                    start: u32::from(s),
                    end: u32::from(e),
                    asn,
                    name,
                }),
                (IpAddr::V6(s), IpAddr::V6(e)) if s <= e => t.v6.push(Range {
                    start: u128::from(s),
                    end: u128::from(e),
                    asn,
                    name,
                }),
                (s, e) if s.is_ipv4() == e.is_ipv4() => {
                    return Err(err(format!("the range {s} - {e} ends before it starts")))
                }
                (s, e) => return Err(err(format!("the range {s} - {e} mixes IPv4 and IPv6"))),
            }
        }
        t.v4.sort_by_key(|r| r.start);
        t.v6.sort_by_key(|r| r.start);
        Ok(t)
    }

    /// Ranges in the table.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether it has no range.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The AS number announcing `addr` and its name, if an AS does.
    pub fn lookup(&self, addr: IpAddr) -> Option<(u32, &str)> {
        let hit = match addr {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => find(&self.v4, u32::from(v4)),
                None => find(&self.v6, u128::from(a)),
            },
        };
        hit.filter(|(asn, _)| *asn != 0)
    }

    /// Sets the AS number of every answered probe of `hops`.
    pub fn annotate(&self, hops: &mut [Hop]) {
        for p in hops.iter_mut().flat_map(|h| h.probes.iter_mut()) {
            p.asn = p.addr.and_then(|a| self.lookup(a)).map(|(asn, _)| asn);
        }
    }
}

fn find<T: Ord + Copy>(ranges: &[Range<T>], x: T) -> Option<(u32, &str)> {
    // The last range starting at or before x.
    let i = ranges.partition_point(|r| r.start <= x).checked_sub(1)?;
    let r = &ranges[i];
    (x <= r.end).then_some((r.asn, r.name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TSV: &str = "1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET\n\
                       1.0.1.0\t1.0.3.255\t0\tNone\tNot routed\n\
                       198.18.0.0\t198.19.255.255\t64512\tZZ\tLAB-BENCHMARK\n\
                       2001:2::\t2001:2:0:ffff:ffff:ffff:ffff:ffff\t64513\tZZ\tLAB-V6\n\
                       \n\
                       8.8.8.0\t8.8.8.255\t15169\tUS\tGOOGLE\r\n";

    #[test]
    fn ranges_of_both_families_in_any_order() {
        let t = AsnTable::from_tsv(TSV).unwrap();
        assert_eq!(t.len(), 5);
        let l = |a: &str| t.lookup(a.parse().unwrap());
        assert_eq!(l("1.0.0.0"), Some((13335, "CLOUDFLARENET")));
        assert_eq!(l("1.0.0.255"), Some((13335, "CLOUDFLARENET")));
        assert_eq!(l("8.8.8.8"), Some((15169, "GOOGLE")));
        assert_eq!(l("198.19.1.2"), Some((64512, "LAB-BENCHMARK")));
        assert_eq!(l("2001:2:0:1901::2"), Some((64513, "LAB-V6")));
        assert_eq!(l("::ffff:198.18.1.1"), Some((64512, "LAB-BENCHMARK")));
        // Not routed (AS 0), in a gap, before the first and after the last range.
        assert_eq!(l("1.0.2.1"), None);
        assert_eq!(l("1.0.4.0"), None);
        assert_eq!(l("0.0.0.1"), None);
        assert_eq!(l("255.255.255.255"), None);
        assert_eq!(l("2001:3::1"), None);
    }

    #[test]
    fn bad_lines_name_their_number() {
        let e = |text: &str| AsnTable::from_tsv(text).unwrap_err();
        assert_eq!(e("1.0.0.0 1.0.0.255 13335").line, 1);
        assert!(e("\n1.0.0.0\t1.0.0.255\tAS13335\n")
            .to_string()
            .starts_with("line 2: AS number"));
        assert!(e("1.0.0.x\t1.0.0.255\t1\n")
            .reason
            .contains("not an IP address"));
        assert!(e("1.0.0.9\t1.0.0.1\t1\n").reason.contains("ends before"));
        assert!(e("1.0.0.0\t::1\t1\n").reason.contains("mixes"));
        assert!(AsnTable::from_tsv("").unwrap().is_empty());
    }

    #[test]
    fn annotate_sets_the_answered_probes_asn() {
        let t = AsnTable::from_tsv(TSV).unwrap();
        let mut hops = vec![Hop {
            ttl: 1,
            probes: vec![
                crate::ProbeReply {
                    addr: Some("198.18.1.1".parse().unwrap()),
                    ..Default::default()
                },
                crate::ProbeReply::default(),
                crate::ProbeReply {
                    addr: Some("1.0.2.1".parse().unwrap()),
                    ..Default::default()
                },
            ],
        }];
        t.annotate(&mut hops);
        let asns: Vec<_> = hops[0].probes.iter().map(|p| p.asn).collect();
        assert_eq!(asns, [Some(64512), None, None]);
    }
}

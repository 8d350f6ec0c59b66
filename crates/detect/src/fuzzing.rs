//! Entry points shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and by the
//! deterministic `no_panic` unit tests: each takes arbitrary bytes, drives one part of the
//! crate through its public API, checks a few invariants, and must never panic.
//!
//! Not a stable API (hidden from the documentation). Input layouts:
//!
//! | function | input |
//! |---|---|
//! | [`dns`] | one DNS message |
//! | [`tls`] | byte 0: segment count (low 3 bits + 1) and "SYN seen" (bit 7); byte 1: seed of the cut points and segment order; the rest: the TCP stream (also given whole, and without its first 5 bytes, to `sni_from_handshake`) |
//! | [`quic`] | byte 0: bit 0 "pass the RFC DCID as the original", bit 1 "pass the packet's own first 8 bytes"; the rest: one UDP datagram, also read as CRYPTO pieces `[offset u16][len u8][data]` |
//! | [`signatures`] | a signature file (lossy UTF-8) |
//! | [`detector`] | IP packets, each prefixed by its length (u16, big endian); a length that does not fit makes the rest one packet. This host is 192.0.2.10 and 2001:db8::10 |

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{
    decrypt_initial, sni_from_handshake, ClientHelloAssembler, CryptoAssembler, Detector,
    DetectorConfig, DnsCache, Progress, ServiceSpec, Signatures, Source,
};

/// The DCID of the RFC 9001 / RFC 9369 example Initials.
const RFC_DCID: [u8; 8] = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];

/// A deterministic generator for cut points and orders (not for security).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn check_name(name: &str) {
    assert_eq!(
        crate::tls::validate_host_name(name.as_bytes()).as_deref(),
        Some(name),
        "an SNI that is not a normalised host name escaped validation"
    );
}

/// One DNS message into a small cache, then lookups and expiry.
pub fn dns(now: Instant, data: &[u8]) {
    let mut c = DnsCache::new(64);
    let _ = c.handle_message(now, data);
    let _ = c.handle_message(now + Duration::from_secs(1), data);
    for ip in ["192.0.2.1", "2001:db8::1", "0.0.0.0"] {
        let ip: IpAddr = ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        for n in c.names_of(now, ip) {
            assert!(!n.is_empty() && !n.ends_with('.') && n.len() <= 253);
            assert_eq!(n, n.to_ascii_lowercase());
        }
    }
    let _ = c.next_expiry();
    c.expire(now + Duration::from_secs(8 * 24 * 3600));
    assert!(c.is_empty());
}

/// `sni_from_handshake` on the input, and a `ClientHelloAssembler` over the input cut into
/// segments delivered out of order.
pub fn tls(data: &[u8]) {
    let (ctrl, stream) = match data {
        [a, b, rest @ ..] => ((*a, *b), rest),
        _ => {
            let _ = sni_from_handshake(data);
            return;
        }
    };
    for m in [stream, stream.get(5..).unwrap_or(&[])] {
        if let Ok(Some(name)) = sni_from_handshake(m) {
            check_name(&name);
        }
    }
    let mut rng = Lcg(u64::from(ctrl.1) | 0x5eed_0000);
    let pieces = 1 + usize::from(ctrl.0 & 7);
    let mut cuts: Vec<usize> = (0..pieces - 1)
        .map(|_| rng.below(stream.len() + 1))
        .collect();
    cuts.push(0);
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut segs: Vec<(usize, &[u8])> = cuts
        .windows(2)
        .filter(|w| w[0] < w[1])
        .map(|w| (w[0], &stream[w[0]..w[1]]))
        .collect();
    for k in (1..segs.len()).rev() {
        segs.swap(k, rng.below(k + 1));
    }
    if let Some(&first) = segs.first() {
        segs.push(first); // a retransmission
    }
    let isn = (rng.next() as u32).wrapping_mul(0x9e37_79b9);
    let mut a = ClientHelloAssembler::new((ctrl.0 & 0x80 != 0).then_some(isn));
    let mut last = Progress::NeedMore;
    for (off, seg) in segs {
        last = a.push(isn.wrapping_add(off as u32), seg);
        if let Progress::Done(Some(name)) = &last {
            check_name(name);
        }
    }
    // a finished assembler keeps its verdict
    if last != Progress::NeedMore {
        assert_eq!(a.push(isn, stream), last);
    }
}

/// `decrypt_initial` with and without an original DCID, then `CryptoAssembler` over the
/// decrypted frames and over the input read as CRYPTO pieces.
pub fn quic(data: &[u8]) {
    let Some((&ctrl, dgram)) = data.split_first() else {
        let _ = decrypt_initial(data, None);
        return;
    };
    let mut originals: Vec<Option<&[u8]>> = vec![None];
    if ctrl & 1 != 0 {
        originals.push(Some(&RFC_DCID));
    }
    if ctrl & 2 != 0 {
        originals.push(Some(&dgram[..dgram.len().min(8)]));
    }
    for original in originals {
        if let Ok(pkts) = decrypt_initial(dgram, original) {
            assert!(!pkts.is_empty());
            let mut a = CryptoAssembler::new();
            for p in &pkts {
                assert!(p.dcid.len() <= 20 && p.scid.len() <= 20);
                if let Progress::Done(Some(name)) = a.push_packet(p) {
                    check_name(&name);
                }
            }
        }
    }
    let mut a = CryptoAssembler::new();
    let mut rest = dgram;
    while let [o1, o2, len, tail @ ..] = rest {
        let off = u64::from(u16::from_be_bytes([*o1, *o2])) << (ctrl >> 6);
        let n = usize::from(*len).min(tail.len());
        if let Progress::Done(Some(name)) = a.push(off, &tail[..n]) {
            check_name(&name);
        }
        rest = &tail[n..];
    }
}

/// A signature file; when it parses, lookups, selection and merging.
pub fn signatures(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(s) = Signatures::from_toml_str(&text, "fuzz") else {
        return;
    };
    for name in [
        "example.test",
        "a.b.c.d",
        "r1---sn-x.googlevideo.com",
        "",
        ".",
    ] {
        if let Some(svc) = s.match_name(name) {
            assert!(s.services().iter().any(|x| x.name == svc.name));
        }
    }
    for ip in ["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1"] {
        if let Ok(ip) = ip.parse() {
            let _ = s.match_addr(ip);
        }
    }
    let names: Vec<&str> = s.services().iter().map(|x| x.name.as_str()).collect();
    let sel = s.select(&names).map(|sel| sel.services().len());
    assert_eq!(sel, Ok(s.services().len()));
    let mut m = Signatures::empty();
    m.merge(s.clone());
    assert_eq!(m.services().len(), s.services().len());
}

fn detector_signatures() -> &'static Signatures {
    static SIGS: OnceLock<Signatures> = OnceLock::new();
    SIGS.get_or_init(|| {
        let mut s = Signatures::builtin();
        // A catch-all last, so that any ClientHello that parses reaches the match path.
        let _ = s.add(
            ServiceSpec {
                name: "Any".into(),
                domains: vec!["example.test".into(), "example.com".into()],
                regexes: vec![".+".into()],
                prefixes: vec!["198.51.100.0/24".into()],
            },
            "fuzz",
        );
        s
    })
}

/// A sequence of IP packets through one detector, then timeouts and lookups.
pub fn detector(now: Instant, data: &[u8]) {
    let local: [IpAddr; 2] = [
        IpAddr::from([192, 0, 2, 10]),
        IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10]),
    ];
    let cfg = DetectorConfig {
        max_pending: 4,
        max_dns_addresses: 16,
        ..DetectorConfig::default()
    };
    let mut d = Detector::new(detector_signatures().clone(), cfg);
    let mut rest = data;
    let mut t = now;
    let mut found = Vec::new();
    while !rest.is_empty() {
        let pkt = match rest {
            [h, l, tail @ ..] if usize::from(u16::from_be_bytes([*h, *l])) <= tail.len() => {
                let n = usize::from(u16::from_be_bytes([*h, *l]));
                rest = &tail[n..];
                &tail[..n]
            }
            _ => std::mem::take(&mut rest),
        };
        if let Some((tuple, m)) = d.handle_packet(t, pkt, &local) {
            assert!(matches!(m.source, Source::TlsSni | Source::QuicSni));
            check_name(m.name.as_deref().unwrap_or("-"));
            assert!(local.contains(&tuple.local.ip()));
            found.push(tuple);
        }
        t += Duration::from_millis(100);
    }
    for tuple in &found {
        let _ = d.lookup(t, tuple);
    }
    let _ = d.next_timeout();
    d.handle_timeout(t + Duration::from_secs(3600));
    d.handle_timeout(t + Duration::from_secs(30 * 24 * 3600));
    let st = d.stats();
    assert_eq!(st.pending_now, 0);
    assert!(d.dns().is_empty());
}

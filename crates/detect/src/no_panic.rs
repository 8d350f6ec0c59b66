//! Deterministic stand-ins for the fuzz targets, run by every `cargo test`: pseudo-random and
//! mutated inputs (seeded xorshift, so failures reproduce) through the same entry points as
//! `fuzz/fuzz_targets/*` ([`crate::fuzzing`]). The seeds are the test vectors of the other
//! modules; `write_fuzz_seeds` writes them out as the fuzz corpora's seeds.

use std::time::Instant;

use crate::fuzzing;
use crate::quic::build::{crypto_frame, initial, other_long};
use crate::quic::QuicVersion;
use crate::testdata::{
    client_hello, record, tcp4, udp4, udp6, CH_CURL, CH_LARGE, CH_NO_SNI, CH_OPENSSL, DNS_ALL,
    RFC9001_CLIENT_INITIAL, RFC9001_SERVER_INITIAL, RFC9369_CLIENT_INITIAL,
};
use crate::BUILTIN_SIGNATURES;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        out.extend((0..n).map(|_| self.next() as u8));
    }
}

/// Replaces `out` with a mutation of `seed`: a few bytes changed, then maybe cut, extended,
/// or a range inserted or removed.
fn mutate(rng: &mut XorShift, seed: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(seed);
    for _ in 0..1 + rng.below(2) {
        match rng.below(6) {
            0..=2 if !out.is_empty() => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(out.len());
                    out[at] = match rng.below(4) {
                        0 => 0,
                        1 => 0xff,
                        2 => out[at] ^ (1 << rng.below(8)),
                        _ => rng.next() as u8,
                    };
                }
            }
            3 => {
                let at = rng.below(out.len() + 1);
                out.truncate(at);
            }
            4 => {
                let at = rng.below(out.len() + 1);
                let mut ins = Vec::new();
                let n = 1 + rng.below(40);
                rng.fill(&mut ins, n);
                out.splice(at..at, ins);
            }
            _ if !out.is_empty() => {
                let a = rng.below(out.len());
                let b = (a + 1 + rng.below(40)).min(out.len());
                out.drain(a..b);
            }
            _ => {}
        }
    }
}

/// Runs `f` over `rounds` inputs: one in `mutate_every` a mutation of one of `seeds`, the
/// others random bytes (lengths up to `max_random`) behind `prefix`; then the seeds themselves.
/// Returns the number of executions.
fn drive(
    seed: u64,
    rounds: usize,
    mutate_every: usize,
    (prefix, max_random): (&[u8], usize),
    seeds: &[Vec<u8>],
    mut f: impl FnMut(&[u8]),
) -> usize {
    let mut rng = XorShift(seed);
    let mut buf = Vec::with_capacity(4096);
    for round in 0..rounds {
        if round % mutate_every.max(1) != 0 || seeds.is_empty() {
            buf.clear();
            if rng.below(2) == 0 {
                buf.extend_from_slice(prefix);
            }
            let n = rng.below(max_random + 1);
            rng.fill(&mut buf, n);
        } else {
            let s = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, s, &mut buf);
        }
        f(&buf);
    }
    for s in seeds {
        f(s);
    }
    rounds + seeds.len()
}

const ME4: [u8; 4] = [192, 0, 2, 10];
const PEER4: [u8; 4] = [198, 51, 100, 20];
const ME6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
const PEER6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20,
];

fn framed(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in packets {
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// The seed inputs of every target: (target, name, bytes).
pub(crate) fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, m) in DNS_ALL {
        out.push(("dns", (*name).to_string(), m.to_vec()));
    }

    let captures: [(&str, &[u8]); 4] = [
        ("openssl", CH_OPENSSL),
        ("curl", CH_CURL),
        ("large", CH_LARGE),
        ("no_sni", CH_NO_SNI),
    ];
    for (name, rec) in captures {
        out.push((
            "tls",
            format!("{name}_1seg"),
            [&[0x80, 0][..], rec].concat(),
        ));
        out.push((
            "tls",
            format!("{name}_3seg_nosyn"),
            [&[0x02, 7][..], rec].concat(),
        ));
    }
    // a ClientHello in 50-byte records, cut into 5 segments, SYN seen
    let m = client_hello("video.example.test", 0);
    let mut multi = vec![0x84, 3];
    for c in m.chunks(50) {
        multi.extend_from_slice(&[22, 3, 1, 0, c.len() as u8]);
        multi.extend_from_slice(c);
    }
    out.push(("tls", "multi_record".into(), multi));

    let dcid = [0xd1u8; 8];
    let ch = client_hello("r3---sn-abc.googlevideo.com", 0);
    let own_v1 = initial(
        QuicVersion::V1,
        &dcid,
        &dcid,
        b"s",
        b"",
        0,
        &crypto_frame(0, &ch),
        1200,
    );
    let own_v2 = initial(
        QuicVersion::V2,
        &dcid,
        &dcid,
        b"s",
        b"t",
        1,
        &[&[1u8, 0, 0][..], &crypto_frame(0, &ch)].concat(),
        1200,
    );
    let mut coalesced = initial(
        QuicVersion::V1,
        &dcid,
        &dcid,
        b"",
        b"",
        2,
        &crypto_frame(0, &ch[..100]),
        0,
    );
    coalesced.extend(other_long(QuicVersion::V1, 1, &dcid, 200));
    for (name, ctrl, d) in [
        ("rfc9001", 1u8, RFC9001_CLIENT_INITIAL.to_vec()),
        ("rfc9369", 0, RFC9369_CLIENT_INITIAL.to_vec()),
        ("rfc9001_server", 1, RFC9001_SERVER_INITIAL.to_vec()),
        ("own_v1", 2, own_v1.clone()),
        ("own_v2", 0, own_v2),
        ("coalesced", 0, coalesced),
    ] {
        out.push(("quic", name.into(), [&[ctrl][..], &d].concat()));
    }
    let mut pieces = vec![0u8];
    for (k, c) in ch.chunks(37).enumerate().rev() {
        pieces.extend_from_slice(&((k * 37) as u16).to_be_bytes());
        pieces.push(c.len() as u8);
        pieces.extend_from_slice(c);
    }
    out.push(("quic", "crypto_pieces".into(), pieces));

    out.push((
        "signatures",
        "builtin".into(),
        BUILTIN_SIGNATURES.as_bytes().to_vec(),
    ));
    out.push((
        "signatures",
        "small".into(),
        br#"format = 1
[[service]]
name = "A"
domains = ["a.test", "b.test."]
regexes = ['^x[0-9]+\.y\.test$', 'z.*']
prefixes = ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]
[[service]]
name = "B"
prefixes = ["10.0.0.0/8"]
"#
        .to_vec(),
    ));

    let rec = record(&client_hello("www.youtube.com", 300));
    let tls_flow = framed(&[
        tcp4(ME4, PEER4, 40000, 443, 99, "S", b""),
        tcp4(ME4, PEER4, 40000, 443, 100 + 200, "", &rec[200..]),
        tcp4(ME4, PEER4, 40000, 443, 100, "", &rec[..200]),
    ]);
    out.push(("detector", "tls_flow".into(), tls_flow));
    out.push((
        "detector",
        "quic_v1".into(),
        framed(&[udp4(ME4, PEER4, 50000, 443, RFC9001_CLIENT_INITIAL)]),
    ));
    out.push((
        "detector",
        "quic_v2_v6".into(),
        framed(&[udp6(ME6, PEER6, 50000, 443, RFC9369_CLIENT_INITIAL)]),
    ));
    for (name, m) in DNS_ALL.iter().take(3) {
        out.push((
            "detector",
            format!("dns_{name}"),
            framed(&[udp4([192, 0, 2, 53], ME4, 53, 33333, m)]),
        ));
    }
    let mut dns_tcp = Vec::new();
    dns_tcp.extend_from_slice(&(DNS_ALL[0].1.len() as u16).to_be_bytes());
    dns_tcp.extend_from_slice(DNS_ALL[0].1);
    out.push((
        "detector",
        "dns_tcp".into(),
        framed(&[
            tcp4([192, 0, 2, 53], ME4, 53, 40001, 7, "S", b""),
            tcp4([192, 0, 2, 53], ME4, 53, 40001, 8, "", &dns_tcp[..10]),
            tcp4([192, 0, 2, 53], ME4, 53, 40001, 18, "", &dns_tcp[10..]),
        ]),
    ));
    out
}

fn seeds_of(target: &str) -> Vec<Vec<u8>> {
    seeds()
        .into_iter()
        .filter(|(t, _, _)| *t == target)
        .map(|(_, _, b)| b)
        .collect()
}

// Executions per test are chosen so that the whole module stays within a few seconds in a
// debug build on 2 cores; the totals are printed with `--nocapture`.

#[test]
fn dns_inputs_never_panic() {
    let now = Instant::now();
    // random bytes behind a plausible response header (ID, QR/RD/RA, 1 question, 1-2 answers)
    let header: &[u8] = &[0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
    let n = drive(
        0x0d45_0001,
        50_000,
        6,
        (header, 300),
        &seeds_of("dns"),
        |b| fuzzing::dns(now, b),
    );
    // and many short ones: every way a header can be cut or inconsistent
    let n = n + drive(0x0d45_0011, 80_000, usize::MAX, (header, 40), &[], |b| {
        fuzzing::dns(now, b)
    });
    eprintln!("dns: {n} executions");
}

#[test]
fn tls_inputs_never_panic() {
    // random bytes behind control bytes and a ClientHello record + handshake header
    let prefix: &[u8] = &[0x83, 0x11, 22, 3, 1, 0x01, 0x00, 1, 0x00, 0x00, 0xfc, 3, 3];
    let n = drive(
        0x0715_0002,
        60_000,
        2,
        (prefix, 600),
        &seeds_of("tls"),
        fuzzing::tls,
    );
    let n = n + drive(
        0x0715_0012,
        60_000,
        usize::MAX,
        (prefix, 40),
        &[],
        fuzzing::tls,
    );
    eprintln!("tls: {n} executions");
}

#[test]
fn quic_inputs_never_panic() {
    // random bytes behind a control byte and a v1 Initial header start (version 1, 8-byte DCID)
    let prefix: &[u8] = &[0x03, 0xc3, 0, 0, 0, 1, 8];
    let n = drive(
        0x0a1c_0003,
        15_000,
        10,
        (prefix, 1400),
        &seeds_of("quic"),
        fuzzing::quic,
    );
    let n = n + drive(
        0x0a1c_0013,
        30_000,
        usize::MAX,
        (prefix, 60),
        &[],
        fuzzing::quic,
    );
    eprintln!("quic: {n} executions");
}

#[test]
fn quic_frames_behind_valid_protection_never_panic() {
    // Mutating a protected packet only exercises the AEAD rejection; here random and mutated
    // *plaintexts* are encrypted properly, so the frame parser sees them.
    let mut rng = XorShift(0x0a1c_0004);
    let ch = client_hello("example.com", 0);
    let good = [
        crypto_frame(0, &ch),
        [
            &[0x02u8, 5, 0, 1, 0, 1, 1][..],
            &crypto_frame(5, &ch[5..40]),
        ]
        .concat(),
        [&[0x1cu8, 1, 6, 2, b'h', b'i'][..], &[0, 0, 1]].concat(),
    ];
    let mut frames = Vec::new();
    let rounds = 1_500;
    for round in 0..rounds {
        if round % 3 == 0 {
            frames.clear();
            let n = rng.below(60);
            rng.fill(&mut frames, n);
        } else {
            let g = &good[rng.below(good.len())];
            mutate(&mut rng, g, &mut frames);
        }
        let v = if round % 2 == 0 {
            QuicVersion::V1
        } else {
            QuicVersion::V2
        };
        let p = initial(v, &[3; 8], &[3; 8], b"", b"", round, &frames, 1200);
        fuzzing::quic(&[&[0u8][..], &p].concat());
    }
    eprintln!("quic frames: {rounds} executions");
}

#[test]
fn signature_files_never_panic() {
    let seeds = seeds_of("signatures");
    // The builtin file is large (its regexes are compiled whenever a mutation still parses):
    // mutate the small seed most of the time.
    let small = seeds[1].clone();
    let n = drive(
        0x5165_0005,
        3_000,
        2,
        (b"format = 1\n", 200),
        &[small],
        fuzzing::signatures,
    ) + drive(0x5165_0006, 40, 1, (b"", 0), &seeds, fuzzing::signatures);
    eprintln!("signatures: {n} executions");
}

#[test]
fn detector_inputs_never_panic() {
    let now = Instant::now();
    let seeds = seeds_of("detector");
    let mut n = drive(0xde7e_0007, 8_000, 3, (&[0x45], 200), &seeds, |b| {
        fuzzing::detector(now, b)
    });
    // Random bytes behind a plausible IPv4/IPv6 + TCP/UDP header, one packet per input.
    let mut rng = XorShift(0xde7e_0008);
    let mut buf = Vec::new();
    let local = [ME4.into(), ME6.into()];
    for round in 0..10_000u32 {
        buf.clear();
        let len = rng.below(1500);
        rng.fill(&mut buf, len);
        let sport = [53, 443, rng.below(65536) as u16][rng.below(3)];
        let dport = [53, 443, rng.below(65536) as u16][rng.below(3)];
        let pkt = match round % 4 {
            0 => tcp4(
                PEER4,
                ME4,
                sport,
                dport,
                rng.next() as u32,
                if rng.below(4) == 0 { "S" } else { "" },
                &buf,
            ),
            1 => tcp4(
                ME4,
                PEER4,
                sport,
                dport,
                rng.next() as u32,
                "",
                &[&[22, 3, 1][..], &buf].concat(),
            ),
            2 => udp4(PEER4, ME4, sport, dport, &buf),
            _ => udp6(
                ME6,
                PEER6,
                sport,
                dport,
                &[&[0xc3, 0, 0, 0, 1, 8][..], &buf].concat(),
            ),
        };
        // No signature matches anything, so random input can never produce a match; with the
        // catch-all signatures of the fuzz entry point it must still not panic.
        let mut d =
            crate::Detector::new(crate::Signatures::empty(), crate::DetectorConfig::default());
        assert_eq!(d.handle_packet(now, &pkt, &local), None);
        fuzzing::detector(now, &framed(&[pkt]));
        n += 1;
    }
    eprintln!("detector: {n} executions");
}

/// Writes every seed to `fuzz/seeds/<target>/<name>.bin` (see fuzz/README.md). Run on demand:
/// `cargo test -p svctr-detect -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes files into fuzz/seeds"]
fn write_fuzz_seeds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    for (target, name, bytes) in seeds() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
    }
}

//! The server name (SNI, RFC 6066 §3) of a TLS ClientHello, from a complete handshake message
//! or from one direction of a TCP stream.
//!
//! What it does:
//! - [`sni_from_handshake`] parses one complete handshake message that starts at the
//!   handshake type byte (as carried in TLS records, or in QUIC CRYPTO frames, RFC 9001 §4)
//!   with `tls-parser`, walks the extensions and returns the validated host name: ASCII
//!   letters, digits, `-` and `_`, labels of 1..=63 characters, at most 253 in all, one trailing
//!   dot removed, lower-cased; IP literals are rejected (RFC 6066 §3 forbids them);
//! - [`ClientHelloAssembler`] reassembles the TCP byte stream (out-of-order, duplicated and
//!   overlapping segments; wrapping sequence numbers) and the TLS record layer: a handshake
//!   message may be fragmented over several records (RFC 8446 §5.1), which `tls-parser` cannot
//!   reassemble itself (rusticata/tls-parser issue #84).
//!
//! What it does not do: it does not decrypt anything. With Encrypted Client Hello
//! (draft-ietf-tls-esni) the real server name is in the encrypted inner ClientHello; the name
//! reported is the outer one (the ECH provider's public name), so an ECH flow matches the
//! provider, not the service. It never reassembles more than [`MAX_HELLO_LEN`] bytes of
//! handshake message nor buffers more than [`MAX_STREAM_LEN`] bytes of stream.

use std::net::Ipv4Addr;

use tls_parser::{
    parse_tls_extension_sni_content, parse_tls_handshake_client_hello, SNIType, TlsExtension,
};

use crate::reassembly::{Reassembly, TooManyHoles};

/// The longest ClientHello handshake message (4-byte header included) that is reassembled.
/// Real ones are 200 bytes to ~2 KiB (a post-quantum X25519MLKEM768 key share adds 1216
/// bytes); 16 KiB is a TLS record's maximum plaintext (RFC 8446 §5.1).
pub const MAX_HELLO_LEN: usize = 16 * 1024;

/// The most stream bytes buffered before giving up: [`MAX_HELLO_LEN`] plus the record headers
/// of a heavily fragmented message and a little slack.
pub const MAX_STREAM_LEN: usize = MAX_HELLO_LEN + 1024;

/// Non-handshake records (change_cipher_spec, alert, application_data) tolerated before the
/// ClientHello before the stream is declared not TLS.
const MAX_SKIPPED_RECORDS: u8 = 2;

/// Segments kept while the stream start is unknown (no SYN seen, no TLS record header yet).
const MAX_UNANCHORED_SEGMENTS: usize = 4;

/// Disjoint byte ranges (holes + 1) kept for one stream.
const MAX_RANGES: usize = 16;

/// Why a handshake message yielded no server name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The message is shorter than its header says.
    #[error("incomplete handshake message: {needed} more bytes needed")]
    Incomplete {
        /// Bytes missing (at least 1).
        needed: usize,
    },
    /// The handshake type is not client_hello (1).
    #[error("not a ClientHello (handshake type {0})")]
    NotClientHello(u8),
    /// A length or field of the ClientHello is inconsistent.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The server_name extension holds something that is not a DNS host name.
    #[error("server name is not a valid DNS host name")]
    InvalidServerName,
}

/// The SNI host name of a complete TLS handshake message that is a ClientHello (bytes start at
/// the handshake type byte 0x01, as carried in TLS records or in QUIC CRYPTO frames).
/// `Ok(None)`: a ClientHello without SNI. `Err`: not a ClientHello, malformed, incomplete, or
/// an SNI that is not a valid host name. Bytes after the message are ignored.
pub fn sni_from_handshake(msg: &[u8]) -> Result<Option<String>, TlsError> {
    // RFC 8446 §4: Handshake { msg_type (1), length (3), body }
    let Some(&msg_type) = msg.first() else {
        return Err(TlsError::Incomplete { needed: 4 });
    };
    if msg_type != 1 {
        return Err(TlsError::NotClientHello(msg_type));
    }
    if msg.len() < 4 {
        return Err(TlsError::Incomplete {
            needed: 4 - msg.len(),
        });
    }
    let len = u24(&msg[1..4]);
    let total = 4 + len;
    if msg.len() < total {
        return Err(TlsError::Incomplete {
            needed: total - msg.len(),
        });
    }
    let body = &msg[4..total];
    let (rest, hello) = parse_tls_handshake_client_hello(body)
        .map_err(|_| TlsError::Malformed("truncated or inconsistent ClientHello fields"))?;
    if !rest.is_empty() {
        // tls-parser returns ext = None and leaves the bytes when the extensions length is
        // inconsistent; the body must end exactly with the extensions (RFC 8446 §4.1.2).
        return Err(TlsError::Malformed("bytes after the extensions"));
    }
    if hello.version.0 >> 8 != 3 {
        return Err(TlsError::Malformed("legacy_version is not 3.x"));
    }
    let Some(mut ext) = hello.ext else {
        return Ok(None);
    };
    // RFC 8446 §4.2: Extension { extension_type (2), extension_data<0..2^16-1> }
    while !ext.is_empty() {
        if ext.len() < 4 {
            return Err(TlsError::Malformed("truncated extension header"));
        }
        let ty = u16::from_be_bytes([ext[0], ext[1]]);
        let len = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        let Some(data) = ext.get(4..4 + len) else {
            return Err(TlsError::Malformed(
                "extension longer than the extensions block",
            ));
        };
        ext = &ext[4 + len..];
        if ty != 0 {
            continue;
        }
        // server_name (RFC 6066 §3). The first host_name entry is used; RFC 6066 allows only
        // one per name type.
        let Ok((_, TlsExtension::SNI(names))) = parse_tls_extension_sni_content(data) else {
            return Err(TlsError::Malformed("server_name extension"));
        };
        let Some((_, name)) = names.iter().find(|(t, _)| *t == SNIType::HostName) else {
            return Err(TlsError::Malformed(
                "server_name extension without a host_name",
            ));
        };
        return validate_host_name(name)
            .map(Some)
            .ok_or(TlsError::InvalidServerName);
    }
    Ok(None)
}

/// Validates and normalises a DNS host name from the wire (SNI): see the module doc.
pub(crate) fn validate_host_name(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_suffix(b".").unwrap_or(raw);
    if raw.is_empty() || raw.len() > 253 {
        return None;
    }
    for label in raw.split(|&b| b == b'.') {
        if label.is_empty()
            || label.len() > 63
            || !label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
    }
    let name = String::from_utf8(raw.to_ascii_lowercase()).ok()?;
    // "Literal IPv4 and IPv6 addresses are not permitted in HostName" (RFC 6066 §3); IPv6
    // literals already failed the character check.
    if name.parse::<Ipv4Addr>().is_ok() {
        return None;
    }
    Some(name)
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// The state of a ClientHello reassembly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not complete yet; push more data.
    NeedMore,
    /// The ClientHello is complete: its validated SNI, or None if it has none.
    Done(Option<String>),
    /// The stream is not a TLS client's first flight (or the ClientHello is malformed, or too
    /// large): give up on it.
    NotTls,
}

/// Reassembles one direction of a TCP stream from its first data byte until the ClientHello
/// handshake message is complete, across several TCP segments and several TLS records
/// (RFC 8446 §5.1 allows a handshake message to be fragmented over records).
///
/// Once it returned [`Progress::Done`] or [`Progress::NotTls`], every later push returns the
/// same value; the buffers are released.
#[derive(Debug, Clone)]
pub struct ClientHelloAssembler {
    /// Sequence number of the first stream byte, once known.
    base: Option<u32>,
    stream: Reassembly,
    /// Segments seen while `base` is unknown: (seq, payload).
    unanchored: Vec<(u32, Vec<u8>)>,
    unanchored_seen: usize,
    /// Stream offset of the next record header to parse.
    parsed: usize,
    /// Handshake-layer bytes gathered from the records parsed so far.
    handshake: Vec<u8>,
    skipped_records: u8,
    outcome: Option<Progress>,
    error: Option<TlsError>,
}

impl ClientHelloAssembler {
    /// `isn_plus_one`: the sequence number of the first data byte (SYN's seq + 1) if the SYN was
    /// seen; otherwise None and the stream starts at the first segment whose payload begins
    /// with a TLS handshake record header (0x16 0x03 0x0[0-4]) followed, when present, by the
    /// client_hello type byte.
    pub fn new(isn_plus_one: Option<u32>) -> Self {
        ClientHelloAssembler {
            base: isn_plus_one,
            stream: Reassembly::new(MAX_STREAM_LEN, MAX_RANGES),
            unanchored: Vec::new(),
            unanchored_seen: 0,
            parsed: 0,
            handshake: Vec::new(),
            skipped_records: 0,
            outcome: None,
            error: None,
        }
    }

    /// Adds one TCP segment's payload (`seq`: the segment's sequence number). Segments may
    /// arrive out of order, duplicated or overlapping; sequence arithmetic wraps.
    pub fn push(&mut self, seq: u32, payload: &[u8]) -> Progress {
        if let Some(done) = &self.outcome {
            return done.clone();
        }
        if payload.is_empty() {
            return Progress::NeedMore;
        }
        let base = match self.base {
            Some(b) => b,
            None => {
                if starts_client_hello_record(payload) {
                    self.base = Some(seq);
                    let held = std::mem::take(&mut self.unanchored);
                    for (s, p) in held {
                        if let Err(p) = self.insert(seq, s, &p) {
                            return p;
                        }
                    }
                    seq
                } else {
                    self.unanchored_seen += 1;
                    if self.unanchored_seen > MAX_UNANCHORED_SEGMENTS {
                        return self.finish(Progress::NotTls);
                    }
                    // all held segments together stay within one stream's bound
                    let held: usize = self.unanchored.iter().map(|(_, p)| p.len()).sum();
                    let keep = payload.len().min(MAX_STREAM_LEN.saturating_sub(held));
                    if keep > 0 {
                        self.unanchored.push((seq, payload[..keep].to_vec()));
                    }
                    return Progress::NeedMore;
                }
            }
        };
        if let Err(p) = self.insert(base, seq, payload) {
            return p;
        }
        self.parse_records()
    }

    /// The reason the complete ClientHello yielded nothing, when [`Progress::NotTls`] came from
    /// a ClientHello that failed to parse (rather than from a stream that is not TLS at all).
    pub fn error(&self) -> Option<&TlsError> {
        self.error.as_ref()
    }

    fn insert(&mut self, base: u32, seq: u32, payload: &[u8]) -> Result<(), Progress> {
        // Offset of the segment from the stream start, in wrapping sequence space (RFC 9293
        // §3.4): a segment less than 2^31 bytes "before" the start is a retransmission of
        // older bytes (e.g. the SYN's retransmitted data) and is trimmed.
        let off = seq.wrapping_sub(base) as i32;
        let (off, data) = if off < 0 {
            let skip = off.unsigned_abs() as usize;
            if skip >= payload.len() {
                return Ok(());
            }
            (0u64, &payload[skip..])
        } else {
            (u64::from(off.unsigned_abs()), payload)
        };
        match self.stream.insert(off, data) {
            Ok(()) => Ok(()),
            Err(TooManyHoles) => Err(self.finish(Progress::NotTls)),
        }
    }

    fn parse_records(&mut self) -> Progress {
        loop {
            let avail = self.stream.contiguous();
            let Some(hdr) = avail.get(self.parsed..self.parsed + 5) else {
                break;
            };
            // RFC 8446 §5.1: TLSPlaintext { type (1), legacy_record_version (2), length (2) }
            let content_type = hdr[0];
            if hdr[1] != 3 || hdr[2] > 4 {
                return self.finish(Progress::NotTls);
            }
            let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
            // "The length MUST NOT exceed 2^14 bytes"; zero-length handshake fragments are
            // forbidden too.
            if len == 0 || len > 16384 {
                return self.finish(Progress::NotTls);
            }
            match content_type {
                22 => {}
                20 | 21 | 23 => {
                    self.skipped_records += 1;
                    if self.skipped_records > MAX_SKIPPED_RECORDS {
                        return self.finish(Progress::NotTls);
                    }
                }
                _ => return self.finish(Progress::NotTls),
            }
            let Some(fragment) = avail.get(self.parsed + 5..self.parsed + 5 + len) else {
                break;
            };
            if content_type == 22 {
                self.handshake.extend_from_slice(fragment);
            }
            self.parsed += 5 + len;
            if let Some(p) = self.check_handshake() {
                return p;
            }
        }
        if self.stream.is_full() {
            return self.finish(Progress::NotTls);
        }
        Progress::NeedMore
    }

    fn check_handshake(&mut self) -> Option<Progress> {
        let hs = &self.handshake;
        match hs.first() {
            None => return None,
            Some(1) => {}
            Some(_) => return Some(self.finish(Progress::NotTls)),
        }
        if hs.len() < 4 {
            return None;
        }
        let need = 4 + u24(&hs[1..4]);
        if need > MAX_HELLO_LEN {
            return Some(self.finish(Progress::NotTls));
        }
        if hs.len() < need {
            return None;
        }
        let result = sni_from_handshake(&hs[..need]);
        Some(match result {
            Ok(sni) => self.finish(Progress::Done(sni)),
            Err(e) => {
                self.error = Some(e);
                self.finish(Progress::NotTls)
            }
        })
    }

    fn finish(&mut self, p: Progress) -> Progress {
        self.stream.clear();
        self.unanchored = Vec::new();
        self.handshake = Vec::new();
        self.outcome = Some(p.clone());
        p
    }
}

/// A TLS handshake record header (RFC 8446 §5.1; versions 3.0 to 3.4 as seen in
/// legacy_record_version) followed by the client_hello type if the byte is there.
fn starts_client_hello_record(p: &[u8]) -> bool {
    p.len() >= 5 && p[0] == 22 && p[1] == 3 && p[2] <= 4 && p.get(5).is_none_or(|&t| t == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{CH_CURL, CH_LARGE, CH_NO_SNI, CH_OPENSSL};

    /// (record bytes, expected SNI)
    const REAL: &[(&[u8], Option<&str>)] = &[
        (CH_OPENSSL, Some("video.example.test")),
        (CH_CURL, Some("www.example.test")),
        (CH_LARGE, Some("big.example.test")),
        (CH_NO_SNI, None),
    ];

    /// The handshake message inside a single-record capture.
    fn msg(record: &[u8]) -> &[u8] {
        &record[5..]
    }

    /// Re-frames a handshake message into records of at most `chunk` bytes.
    fn records(hs: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in hs.chunks(chunk) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(c.len() as u16).to_be_bytes());
            out.extend_from_slice(c);
        }
        out
    }

    /// A ClientHello with the given server_name extension body and nothing else.
    fn hello_with_sni_ext(ext_body: &[u8]) -> Vec<u8> {
        hello(&[(0, ext_body)])
    }

    /// A ClientHello with the given extensions (type, body).
    fn hello(extensions: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0x11; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        let mut exts = Vec::new();
        for (ty, body) in extensions {
            exts.extend_from_slice(&ty.to_be_bytes());
            exts.extend_from_slice(&(body.len() as u16).to_be_bytes());
            exts.extend_from_slice(body);
        }
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut m = vec![1];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        m.extend_from_slice(&body);
        m
    }

    fn sni_ext(name: &[u8]) -> Vec<u8> {
        // ServerNameList { ServerName { name_type 0, HostName<1..2^16-1> } }
        let mut e = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        e.push(0);
        e.extend_from_slice(&(name.len() as u16).to_be_bytes());
        e.extend_from_slice(name);
        e
    }

    #[test]
    fn real_client_hellos() {
        for (rec, want) in REAL {
            assert_eq!(sni_from_handshake(msg(rec)).unwrap().as_deref(), *want);
        }
        // The large one really is larger than one Ethernet MTU.
        assert!(CH_LARGE.len() > 1500);
        // trailing bytes after the message are ignored
        let mut m = msg(CH_OPENSSL).to_vec();
        m.extend_from_slice(&[0x14, 0x03, 0x03, 0, 1, 1]);
        assert_eq!(
            sni_from_handshake(&m).unwrap().as_deref(),
            Some("video.example.test")
        );
    }

    #[test]
    fn truncated_at_every_length() {
        for (rec, _) in REAL {
            let m = msg(rec);
            for cut in 0..m.len() {
                match sni_from_handshake(&m[..cut]) {
                    Err(TlsError::Incomplete { needed }) => {
                        assert_eq!(needed, if cut < 4 { 4 - cut } else { m.len() - cut });
                    }
                    other => panic!("cut at {cut}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn not_client_hello_and_malformed() {
        // ServerHello type
        let mut m = msg(CH_OPENSSL).to_vec();
        m[0] = 2;
        assert_eq!(sni_from_handshake(&m), Err(TlsError::NotClientHello(2)));
        // shorten the declared handshake length by one: extensions no longer fit
        let mut m = msg(CH_OPENSSL).to_vec();
        m[3] -= 1;
        assert!(
            matches!(sni_from_handshake(&m), Err(TlsError::Malformed(_))),
            "{:?}",
            sni_from_handshake(&m)
        );
        // legacy_version 0x0101
        let mut m = msg(CH_OPENSSL).to_vec();
        m[4] = 1;
        assert_eq!(
            sni_from_handshake(&m),
            Err(TlsError::Malformed("legacy_version is not 3.x"))
        );
        // every single-byte corruption either still parses or fails cleanly
        for (rec, _) in REAL {
            let m = msg(rec);
            for i in 0..m.len() {
                for v in [0u8, 0xff, m[i] ^ 0x80] {
                    let mut c = m.to_vec();
                    c[i] = v;
                    if let Ok(Some(s)) = sni_from_handshake(&c) {
                        assert!(validate_host_name(s.as_bytes()).is_some());
                    }
                }
            }
        }
    }

    #[test]
    fn sni_validation() {
        let ok = |n: &[u8]| sni_from_handshake(&hello_with_sni_ext(&sni_ext(n)));
        assert_eq!(
            ok(b"Video.Example.TEST.").unwrap().as_deref(),
            Some("video.example.test")
        );
        assert_eq!(
            ok(b"_srv.a-b.test").unwrap().as_deref(),
            Some("_srv.a-b.test")
        );
        assert_eq!(ok(&[b'a'; 63]).unwrap().map(|s| s.len()), Some(63));
        for bad in [
            &b""[..],
            b".",
            b"a..b",
            b"a b.test",
            b"caf\xc3\xa9.test",
            b"a\0.test",
            b"192.0.2.1",
            b"[2001:db8::1]",
            b"2001:db8::1",
            &[b'a'; 64],
        ] {
            assert_eq!(ok(bad), Err(TlsError::InvalidServerName), "{bad:?}");
        }
        let long = ["abcdefghi"; 26].join(".");
        assert_eq!(ok(long.as_bytes()), Err(TlsError::InvalidServerName));
        // a server_name list with only a non-host_name entry
        assert!(matches!(
            sni_from_handshake(&hello_with_sni_ext(&[0, 4, 7, 0, 1, b'x'])),
            Err(TlsError::Malformed(_))
        ));
        // an empty server_name extension (as servers send it) in a ClientHello
        assert!(sni_from_handshake(&hello_with_sni_ext(&[])).is_err());
    }

    fn assemble(segments: &[(u32, &[u8])], isn_plus_one: Option<u32>) -> Progress {
        let mut a = ClientHelloAssembler::new(isn_plus_one);
        let mut last = Progress::NeedMore;
        for (seq, p) in segments {
            last = a.push(*seq, p);
            if last != Progress::NeedMore {
                break;
            }
        }
        last
    }

    #[test]
    fn one_segment_each_capture() {
        for (rec, want) in REAL {
            let want = Progress::Done(want.map(str::to_string));
            assert_eq!(assemble(&[(1000, rec)], Some(1000)), want);
            assert_eq!(assemble(&[(1000, rec)], None), want);
        }
    }

    #[test]
    fn split_in_two_and_three_at_every_offset() {
        let isn = u32::MAX - 200; // crosses the sequence-number wrap
        for (rec, want) in REAL {
            let want = Progress::Done(want.map(str::to_string));
            let n = rec.len();
            for i in 1..n {
                let (a, b) = rec.split_at(i);
                let s = |o: usize| isn.wrapping_add(o as u32);
                assert_eq!(assemble(&[(s(0), a), (s(i), b)], Some(isn)), want, "{i}");
                // reversed order, with the SYN seen
                assert_eq!(
                    assemble(&[(s(i), b), (s(0), a)], Some(isn)),
                    want,
                    "rev {i}"
                );
                // reversed order without the SYN: the tail is held until the head anchors
                // (the head must hold a whole record header to anchor)
                if i >= 5 {
                    assert_eq!(
                        assemble(&[(s(i), b), (s(0), a)], None),
                        want,
                        "rev no-isn {i}"
                    );
                } else {
                    assert_eq!(assemble(&[(s(i), b), (s(0), a)], None), Progress::NeedMore);
                }
            }
            // three pieces: the first cut at every offset, the second right after it, a few
            // bytes later, in the middle of what is left and at the end (all offset pairs
            // would be quadratic)
            for i in 1..n - 1 {
                let mut js = vec![i + 1, i + 2, i + 5, i + 17, i + 300, (i + n) / 2, n - 1];
                js.retain(|&j| j > i && j < n);
                js.dedup();
                for j in js {
                    let s = |o: usize| isn.wrapping_add(o as u32);
                    let (p0, p1, p2) = (&rec[..i], &rec[i..j], &rec[j..]);
                    assert_eq!(
                        assemble(&[(s(0), p0), (s(i), p1), (s(j), p2)], Some(isn)),
                        want
                    );
                    assert_eq!(
                        assemble(&[(s(j), p2), (s(0), p0), (s(i), p1)], Some(isn)),
                        want
                    );
                    // retransmission overlapping the first two pieces, then the rest
                    assert_eq!(
                        assemble(
                            &[(s(i), p1), (s(0), &rec[..j]), (s(0), p0), (s(j), p2)],
                            Some(isn)
                        ),
                        want
                    );
                }
            }
        }
    }

    #[test]
    fn multi_record_client_hello() {
        for (rec, want) in REAL {
            let want = Progress::Done(want.map(str::to_string));
            for chunk in [1, 2, 3, 5, 100, 1000] {
                let stream = records(msg(rec), chunk);
                assert_eq!(assemble(&[(7, &stream)], Some(7)), want, "chunk {chunk}");
                // and one TCP segment per 10 bytes, in reverse order
                let segs: Vec<(u32, &[u8])> = stream
                    .chunks(10)
                    .enumerate()
                    .map(|(k, c)| (7 + 10 * k as u32, c))
                    .rev()
                    .collect();
                assert_eq!(assemble(&segs, Some(7)), want, "chunk {chunk} reversed");
            }
        }
    }

    #[test]
    fn one_byte_records_exceed_the_stream_bound() {
        // 1-byte records make the stream 6x the message: beyond MAX_STREAM_LEN for the large
        // ClientHello, so the assembler gives up instead of buffering without bound.
        let sni = sni_ext(b"big.example.test");
        let m = hello(&[(0, &sni), (21, &[0; 3000])]);
        assert_eq!(
            sni_from_handshake(&m).unwrap().as_deref(),
            Some("big.example.test")
        );
        assert_eq!(
            assemble(&[(0, &records(&m, 1000))], Some(0)),
            Progress::Done(Some("big.example.test".into()))
        );
        let stream = records(&m, 1);
        assert!(stream.len() > MAX_STREAM_LEN);
        assert_eq!(assemble(&[(0, &stream)], Some(0)), Progress::NotTls);
        // a ClientHello announcing more than MAX_HELLO_LEN is not waited for
        let m = hello(&[(0, &sni), (21, &[0; MAX_HELLO_LEN])]);
        assert_eq!(
            assemble(&[(0, &records(&m, 16000)[..16005])], Some(0)),
            Progress::NotTls
        );
    }

    #[test]
    fn truncated_stream_needs_more() {
        for (rec, _) in REAL {
            for cut in 0..rec.len() {
                let mut a = ClientHelloAssembler::new(Some(5));
                assert_eq!(a.push(5, &rec[..cut]), Progress::NeedMore, "{cut}");
            }
        }
    }

    #[test]
    fn not_tls_streams() {
        assert_eq!(
            assemble(&[(1, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")], Some(1)),
            Progress::NotTls
        );
        // a ServerHello record
        let mut sh = CH_OPENSSL.to_vec();
        sh[5] = 2;
        assert_eq!(assemble(&[(1, &sh)], Some(1)), Progress::NotTls);
        // record length 0 / oversized / bad version
        assert_eq!(
            assemble(&[(1, &[22, 3, 1, 0, 0])], Some(1)),
            Progress::NotTls
        );
        assert_eq!(
            assemble(&[(1, &[22, 3, 1, 0x40, 1])], Some(1)),
            Progress::NotTls
        );
        assert_eq!(
            assemble(&[(1, &[22, 3, 9, 0, 1])], Some(1)),
            Progress::NotTls
        );
        // application data records: tolerated twice, then given up
        let app = [23u8, 3, 3, 0, 2, 0xaa, 0xbb];
        let three: Vec<u8> = app.iter().chain(&app).chain(&app).copied().collect();
        assert_eq!(assemble(&[(1, &three)], Some(1)), Progress::NotTls);
        let mut two_then_hello: Vec<u8> = app.iter().chain(&app).copied().collect();
        two_then_hello.extend_from_slice(CH_CURL);
        assert_eq!(
            assemble(&[(1, &two_then_hello)], Some(1)),
            Progress::Done(Some("www.example.test".into()))
        );
        // without the SYN, a mid-stream flow (application data) is given up after a few segments
        let mut a = ClientHelloAssembler::new(None);
        for k in 0..MAX_UNANCHORED_SEGMENTS as u32 {
            assert_eq!(a.push(1000 * k, &app), Progress::NeedMore);
        }
        assert_eq!(a.push(9000, &app), Progress::NotTls);
        // and stays so
        assert_eq!(a.push(0, CH_CURL), Progress::NotTls);
        // a handshake record whose first handshake byte is not client_hello does not anchor
        let mut a = ClientHelloAssembler::new(None);
        assert_eq!(a.push(0, &sh), Progress::NeedMore);
    }

    #[test]
    fn malformed_hello_reports_the_error() {
        let mut rec = CH_OPENSSL.to_vec();
        rec[5 + 4] = 1; // legacy_version 0x0103
        let mut a = ClientHelloAssembler::new(Some(0));
        assert_eq!(a.push(0, &rec), Progress::NotTls);
        assert_eq!(
            a.error(),
            Some(&TlsError::Malformed("legacy_version is not 3.x"))
        );
        let mut a = ClientHelloAssembler::new(Some(0));
        assert_eq!(a.push(0, b"\x16\x03\x01\x00\x01\x02"), Progress::NotTls);
        assert_eq!(a.error(), None);
    }

    #[test]
    fn segments_before_the_stream_start_are_trimmed() {
        // The SYN's seq + 1 is 100; a retransmission starting at 90 carries 10 stale bytes.
        let mut seg = vec![0xee; 10];
        seg.extend_from_slice(CH_OPENSSL);
        assert_eq!(
            assemble(&[(90, &seg)], Some(100)),
            Progress::Done(Some("video.example.test".into()))
        );
        assert_eq!(
            assemble(&[(80, &[0xee; 10])], Some(100)),
            Progress::NeedMore
        );
    }

    #[test]
    fn too_many_holes_gives_up() {
        let mut a = ClientHelloAssembler::new(Some(0));
        let mut last = Progress::NeedMore;
        for k in 0..=MAX_RANGES as u32 {
            last = a.push(100 + 10 * k, &[1]);
        }
        assert_eq!(last, Progress::NotTls);
    }
}

//! The ClientHello carried in QUIC client Initial packets: QUIC version 1 (RFC 9000, RFC 9001)
//! and version 2 (RFC 9369).
//!
//! What it does:
//! - walks the long-header packets coalesced in one UDP datagram (RFC 9000 §12.2, §17.2),
//!   skipping 0-RTT and Handshake packets by their Length field and stopping at a Retry, a
//!   short-header packet or an unknown version;
//! - derives the client Initial keys from the Destination Connection ID (RFC 9001 §5.2, with
//!   the version's salt and labels, RFC 9369 §3.3), removes header protection (RFC 9001 §5.4,
//!   AES-128) and decrypts the payload with AEAD_AES_128_GCM (RFC 9001 §5.3), all with `ring`;
//! - parses the frames allowed in Initial packets (RFC 9000 §12.4, §19: PADDING, PING, ACK,
//!   CRYPTO, CONNECTION_CLOSE of type 0x1c) and returns the CRYPTO frames;
//! - [`CryptoAssembler`] puts CRYPTO data back together by offset (browsers split the
//!   ClientHello into several frames, shuffle them and spread them over several packets) and
//!   hands the complete ClientHello to [`crate::sni_from_handshake`].
//!
//! What it does not do: it never decrypts server Initials, Handshake or 1-RTT packets (only
//! the client's Initial keys are derivable by an observer), does not verify Retry integrity
//! tags, and does not reconstruct full packet numbers (a client's first Initials use small
//! packet numbers, so the truncated number is used for the nonce).
//!
//! All length arithmetic is checked; any byte string yields a value or an error, never a panic.

use ring::aead::{self, quic as hp, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

use crate::reassembly::{Reassembly, TooManyHoles};
use crate::tls::{sni_from_handshake, Progress, TlsError, MAX_HELLO_LEN};

/// RFC 9001 §5.2.
const SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];
/// RFC 9369 §3.3.1.
const SALT_V2: [u8; 20] = [
    0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb,
    0xf9, 0xbd, 0x2e, 0xd9,
];

/// Largest connection ID of versions 1 and 2 (RFC 9000 §17.2).
const MAX_CID_LEN: usize = 20;
/// AEAD_AES_128_GCM tag length.
const TAG_LEN: usize = 16;
/// Header protection sample length (RFC 9001 §5.4.2).
const SAMPLE_LEN: usize = 16;
/// Disjoint CRYPTO ranges kept while reassembling.
const MAX_CRYPTO_RANGES: usize = 32;

/// A QUIC version whose Initial packets this module can decrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuicVersion {
    /// QUIC version 1 (RFC 9000), 0x00000001.
    V1,
    /// QUIC version 2 (RFC 9369), 0x6b3343cf.
    V2,
}

impl QuicVersion {
    /// The version for a wire version number, if supported.
    pub fn from_wire(v: u32) -> Option<Self> {
        match v {
            0x0000_0001 => Some(QuicVersion::V1),
            0x6b33_43cf => Some(QuicVersion::V2),
            _ => None,
        }
    }

    /// The wire version number.
    pub fn wire(self) -> u32 {
        match self {
            QuicVersion::V1 => 0x0000_0001,
            QuicVersion::V2 => 0x6b33_43cf,
        }
    }

    fn salt(self) -> &'static [u8; 20] {
        match self {
            QuicVersion::V1 => &SALT_V1,
            QuicVersion::V2 => &SALT_V2,
        }
    }

    /// Labels for key, iv and hp (RFC 9001 §5.1; RFC 9369 §3.3.2).
    fn labels(self) -> [&'static [u8]; 3] {
        match self {
            QuicVersion::V1 => [b"quic key", b"quic iv", b"quic hp"],
            QuicVersion::V2 => [b"quicv2 key", b"quicv2 iv", b"quicv2 hp"],
        }
    }

    /// Long header packet type (the two type bits) of each kind (RFC 9000 §17.2, RFC 9369
    /// §3.2).
    fn packet_type(self, bits: u8) -> LongType {
        match (self, bits & 3) {
            (QuicVersion::V1, 0) | (QuicVersion::V2, 1) => LongType::Initial,
            (QuicVersion::V1, 1) | (QuicVersion::V2, 2) => LongType::ZeroRtt,
            (QuicVersion::V1, 2) | (QuicVersion::V2, 3) => LongType::Handshake,
            _ => LongType::Retry,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LongType {
    Initial,
    ZeroRtt,
    Handshake,
    Retry,
}

/// Why a datagram yielded no client Initial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// The datagram does not start with a long-header packet.
    #[error("not a QUIC long-header packet")]
    NotLongHeader,
    /// A version this module cannot decrypt (0 is version negotiation).
    #[error("unsupported QUIC version 0x{0:08x}")]
    UnsupportedVersion(u32),
    /// The datagram ends inside a header or inside the packet its Length announces.
    #[error("truncated QUIC packet: {0}")]
    Truncated(&'static str),
    /// A header or frame field is invalid.
    #[error("malformed QUIC packet: {0}")]
    Malformed(&'static str),
    /// Long-header packets, but no Initial among them.
    #[error("no Initial packet in the datagram")]
    NoInitial,
    /// The AEAD rejected the packet with the client Initial keys (a server Initial, another
    /// connection's DCID, or corrupted bytes).
    #[error("Initial packet does not decrypt with the client Initial keys")]
    Decrypt,
    /// A frame type that is not allowed in Initial packets (RFC 9000 §12.4).
    #[error("frame type 0x{0:x} is not allowed in an Initial packet")]
    UnexpectedFrame(u64),
}

/// One decrypted client Initial packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialPacket {
    /// The packet's version.
    pub version: QuicVersion,
    /// Destination Connection ID as carried by the packet.
    pub dcid: Vec<u8>,
    /// Source Connection ID.
    pub scid: Vec<u8>,
    /// CRYPTO frames, in packet order: (stream offset, data).
    pub crypto: Vec<(u64, Vec<u8>)>,
}

/// A cursor over untrusted bytes with checked reads.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, QuicError> {
        let b = *self.buf.get(self.pos).ok_or(QuicError::Truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], QuicError> {
        let end = self.pos.checked_add(n).ok_or(QuicError::Truncated(what))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(QuicError::Truncated(what))?;
        self.pos = end;
        Ok(s)
    }

    /// A variable-length integer (RFC 9000 §16): the two high bits of the first byte give the
    /// length, 1, 2, 4 or 8 bytes.
    fn varint(&mut self, what: &'static str) -> Result<u64, QuicError> {
        let first = self.u8(what)?;
        let len = 1usize << (first >> 6);
        let mut v = u64::from(first & 0x3f);
        for &b in self.take(len - 1, what)? {
            v = (v << 8) | u64::from(b);
        }
        Ok(v)
    }

    fn varint_len(&mut self, what: &'static str) -> Result<usize, QuicError> {
        usize::try_from(self.varint(what)?).map_err(|_| QuicError::Truncated(what))
    }
}

/// The fields of a long header up to the (protected) packet number.
struct LongHeader<'a> {
    version: QuicVersion,
    ty: LongType,
    dcid: &'a [u8],
    scid: &'a [u8],
    /// Offset of the packet number from the packet start.
    pn_offset: usize,
    /// Length of the whole packet (header + Length bytes) from the packet start; for a Retry,
    /// the rest of the datagram.
    len: usize,
}

/// Parses the long header at the start of `pkt` (RFC 9000 §17.2).
fn parse_long_header(pkt: &[u8]) -> Result<LongHeader<'_>, QuicError> {
    let mut r = Reader::new(pkt);
    let first = r.u8("first byte")?;
    if first & 0x80 == 0 {
        return Err(QuicError::NotLongHeader);
    }
    let wire = r.take(4, "version")?;
    let wire = u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]);
    let version = QuicVersion::from_wire(wire).ok_or(QuicError::UnsupportedVersion(wire))?;
    let dcid_len = usize::from(r.u8("DCID length")?);
    if dcid_len > MAX_CID_LEN {
        return Err(QuicError::Malformed(
            "Destination Connection ID longer than 20 bytes",
        ));
    }
    let dcid = r.take(dcid_len, "DCID")?;
    let scid_len = usize::from(r.u8("SCID length")?);
    if scid_len > MAX_CID_LEN {
        return Err(QuicError::Malformed(
            "Source Connection ID longer than 20 bytes",
        ));
    }
    let scid = r.take(scid_len, "SCID")?;
    let ty = version.packet_type(first >> 4);
    if ty == LongType::Retry {
        return Ok(LongHeader {
            version,
            ty,
            dcid,
            scid,
            pn_offset: r.pos,
            len: pkt.len(),
        });
    }
    if ty == LongType::Initial {
        // RFC 9000 §17.2.2: Token Length (i), Token (..)
        let token_len = r.varint_len("token length")?;
        r.take(token_len, "token")?;
    }
    let length = r.varint_len("Length")?;
    let pn_offset = r.pos;
    let len = pn_offset
        .checked_add(length)
        .filter(|&l| l <= pkt.len())
        .ok_or(QuicError::Truncated("packet shorter than its Length field"))?;
    Ok(LongHeader {
        version,
        ty,
        dcid,
        scid,
        pn_offset,
        len,
    })
}

/// The client Initial packet protection keys of one DCID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InitialKeys {
    pub(crate) key: [u8; 16],
    pub(crate) iv: [u8; 12],
    pub(crate) hp: [u8; 16],
}

struct OkmLen(usize);

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context, as used by RFC 9001 §5.1.
fn expand_label(prk: &hkdf::Prk, label: &[u8], out: &mut [u8]) -> Result<(), QuicError> {
    let len = u16::try_from(out.len())
        .map_err(|_| QuicError::Malformed("key length"))?
        .to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).map_err(|_| QuicError::Malformed("label"))?];
    // struct { uint16 length; opaque label<7..255> = "tls13 " + Label; opaque context<0..255>; }
    let info: [&[u8]; 5] = [&len, &label_len, b"tls13 ", label, &[0]];
    prk.expand(&info, OkmLen(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| QuicError::Malformed("key derivation"))
}

/// RFC 9001 §5.2: initial_secret = HKDF-Extract(initial_salt, client_dst_connection_id);
/// client_initial_secret = HKDF-Expand-Label(initial_secret, "client in", "", 32); then key,
/// iv and hp with the version's labels.
pub(crate) fn client_initial_keys(
    version: QuicVersion,
    dcid: &[u8],
) -> Result<InitialKeys, QuicError> {
    let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, version.salt()).extract(dcid);
    let mut client_secret = [0u8; 32];
    expand_label(&initial, b"client in", &mut client_secret)?;
    let client = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &client_secret);
    let [kl, il, hl] = version.labels();
    let mut keys = InitialKeys {
        key: [0; 16],
        iv: [0; 12],
        hp: [0; 16],
    };
    expand_label(&client, kl, &mut keys.key)?;
    expand_label(&client, il, &mut keys.iv)?;
    expand_label(&client, hl, &mut keys.hp)?;
    Ok(keys)
}

/// Removes header and packet protection of one Initial packet (`pkt` = exactly the packet)
/// with `keys`. Returns the plaintext payload (frames).
fn unprotect(pkt: &[u8], pn_offset: usize, keys: &InitialKeys) -> Result<Vec<u8>, QuicError> {
    // RFC 9001 §5.4.2: the sample starts 4 bytes after the start of the Packet Number field.
    let sample_at = pn_offset + 4;
    let sample = pkt
        .get(sample_at..sample_at + SAMPLE_LEN)
        .ok_or(QuicError::Truncated(
            "packet too short for the header protection sample",
        ))?;
    let hp_key = hp::HeaderProtectionKey::new(&hp::AES_128, &keys.hp)
        .map_err(|_| QuicError::Malformed("header protection key"))?;
    let mask = hp_key
        .new_mask(sample)
        .map_err(|_| QuicError::Malformed("header protection sample"))?;
    let mut buf = pkt.to_vec();
    // RFC 9001 §5.4.1: long headers protect the low 4 bits of the first byte.
    buf[0] ^= mask[0] & 0x0f;
    let pn_len = usize::from(buf[0] & 0x03) + 1;
    let mut pn: u64 = 0;
    for i in 0..pn_len {
        buf[pn_offset + i] ^= mask[1 + i];
        pn = (pn << 8) | u64::from(buf[pn_offset + i]);
    }
    let header_len = pn_offset + pn_len;
    if buf.len() < header_len + TAG_LEN {
        return Err(QuicError::Truncated("payload shorter than the AEAD tag"));
    }
    // RFC 9001 §5.3: the nonce is the IV XORed with the packet number, left-padded to the IV
    // length.
    let mut nonce = keys.iv;
    for (n, p) in nonce[4..].iter_mut().zip(pn.to_be_bytes()) {
        *n ^= p;
    }
    let key = LessSafeKey::new(
        UnboundKey::new(&aead::AES_128_GCM, &keys.key)
            .map_err(|_| QuicError::Malformed("packet protection key"))?,
    );
    let (header, payload) = buf.split_at_mut(header_len);
    let plain_len = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&*header),
            payload,
        )
        .map_err(|_| QuicError::Decrypt)?
        .len();
    // RFC 9000 §17.2: the reserved bits must be 0 once protection is removed.
    if header[0] & 0x0c != 0 {
        return Err(QuicError::Malformed("reserved header bits set"));
    }
    Ok(buf[header_len..header_len + plain_len].to_vec())
}

/// Parses the frames of a decrypted Initial packet; returns the CRYPTO frames.
fn parse_frames(plain: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, QuicError> {
    if plain.is_empty() {
        // RFC 9000 §12.4: a packet containing no frames is a PROTOCOL_VIOLATION.
        return Err(QuicError::Malformed("packet without frames"));
    }
    let mut r = Reader::new(plain);
    let mut crypto = Vec::new();
    while !r.is_empty() {
        match r.varint("frame type")? {
            // PADDING (§19.1), PING (§19.2)
            0x00 | 0x01 => {}
            // ACK (§19.3): Largest Acknowledged, ACK Delay, ACK Range Count, First ACK Range,
            // ACK Range (Gap, ACK Range Length) ..., and for 0x03 the ECN Counts.
            ty @ (0x02 | 0x03) => {
                r.varint("ACK largest")?;
                r.varint("ACK delay")?;
                let ranges = r.varint("ACK range count")?;
                r.varint("ACK first range")?;
                // Each range takes at least 2 bytes, so this ends within plain.len()/2 rounds.
                for _ in 0..ranges {
                    r.varint("ACK gap")?;
                    r.varint("ACK range length")?;
                }
                if ty == 0x03 {
                    r.varint("ECT0 count")?;
                    r.varint("ECT1 count")?;
                    r.varint("ECN-CE count")?;
                }
            }
            // CRYPTO (§19.6): Offset (i), Length (i), Crypto Data (..)
            0x06 => {
                let offset = r.varint("CRYPTO offset")?;
                let len = r.varint_len("CRYPTO length")?;
                let data = r.take(len, "CRYPTO data")?;
                // "The largest offset delivered on a stream ... cannot exceed 2^62-1"
                if offset
                    .checked_add(len as u64)
                    .is_none_or(|end| end > (1 << 62) - 1)
                {
                    return Err(QuicError::Malformed("CRYPTO frame beyond 2^62-1"));
                }
                crypto.push((offset, data.to_vec()));
            }
            // CONNECTION_CLOSE, transport variant (§19.19): Error Code, Frame Type, Reason
            // Phrase Length, Reason Phrase.
            0x1c => {
                r.varint("CONNECTION_CLOSE error code")?;
                r.varint("CONNECTION_CLOSE frame type")?;
                let len = r.varint_len("reason length")?;
                r.take(len, "reason phrase")?;
            }
            other => return Err(QuicError::UnexpectedFrame(other)),
        }
    }
    Ok(crypto)
}

/// Decrypts the client Initial packets of one UDP datagram.
///
/// `original_dcid`: the DCID of the connection's first Initial if known. Later client Initials
/// (after the server replied) carry another DCID but their keys still come from the original
/// one (RFC 9001 §5.2); after a Retry the client derives keys from the new DCID, so the
/// packet's own DCID is tried when the original's keys fail. Without `original_dcid`, the
/// packet's own DCID is used.
///
/// Coalesced packets (RFC 9000 §12.2) are walked by their Length: 0-RTT and Handshake packets
/// are skipped; a Retry, a short-header packet, an unknown version or trailing bytes end the
/// walk. Errors: the first packet is not a decryptable client Initial and no Initial decrypted
/// (a later packet that fails after one succeeded ends the walk without error).
pub fn decrypt_initial(
    datagram: &[u8],
    original_dcid: Option<&[u8]>,
) -> Result<Vec<InitialPacket>, QuicError> {
    if datagram.is_empty() {
        return Err(QuicError::Truncated("empty datagram"));
    }
    let mut out = Vec::new();
    let mut pos = 0;
    let mut first_error = None;
    while pos < datagram.len() {
        let pkt = &datagram[pos..];
        let hdr = match parse_long_header(pkt) {
            Ok(h) => h,
            Err(e) => {
                first_error.get_or_insert(e);
                break;
            }
        };
        match hdr.ty {
            LongType::Initial => match decrypt_one(pkt, &hdr, original_dcid) {
                Ok(p) => out.push(p),
                Err(e) => {
                    first_error.get_or_insert(e);
                    break;
                }
            },
            LongType::ZeroRtt | LongType::Handshake => {}
            LongType::Retry => break,
        }
        pos += hdr.len;
    }
    if out.is_empty() {
        return Err(first_error.unwrap_or(QuicError::NoInitial));
    }
    Ok(out)
}

fn decrypt_one(
    pkt: &[u8],
    hdr: &LongHeader<'_>,
    original_dcid: Option<&[u8]>,
) -> Result<InitialPacket, QuicError> {
    let pkt = &pkt[..hdr.len];
    let mut candidates: [Option<&[u8]>; 2] = [original_dcid, None];
    if original_dcid != Some(hdr.dcid) {
        candidates[1] = Some(hdr.dcid);
    }
    let mut err = QuicError::Decrypt;
    for dcid in candidates.into_iter().flatten() {
        if dcid.len() > MAX_CID_LEN {
            continue;
        }
        let keys = client_initial_keys(hdr.version, dcid)?;
        match unprotect(pkt, hdr.pn_offset, &keys) {
            Ok(plain) => {
                return Ok(InitialPacket {
                    version: hdr.version,
                    dcid: hdr.dcid.to_vec(),
                    scid: hdr.scid.to_vec(),
                    crypto: parse_frames(&plain)?,
                })
            }
            // A truncated packet fails the same way with every key: report that.
            Err(e @ QuicError::Truncated(_)) => return Err(e),
            Err(e) => err = e,
        }
    }
    Err(err)
}

/// Reassembles the client's CRYPTO stream at the Initial level by offset (frames arrive
/// split, out of order, duplicated and across packets) until the ClientHello handshake message
/// is complete, then extracts its SNI with [`sni_from_handshake`].
///
/// Bounded: at most [`MAX_HELLO_LEN`] bytes of stream are kept and at most 32 disjoint ranges;
/// a ClientHello announcing more, or more scattered pieces, gives [`Progress::NotTls`]. Once
/// it returned `Done` or `NotTls`, every later push returns the same.
#[derive(Debug, Clone)]
pub struct CryptoAssembler {
    data: Reassembly,
    outcome: Option<Progress>,
    error: Option<TlsError>,
}

impl Default for CryptoAssembler {
    fn default() -> Self {
        Self::new()
    }
}

impl CryptoAssembler {
    /// An empty assembler.
    pub fn new() -> Self {
        CryptoAssembler {
            data: Reassembly::new(MAX_HELLO_LEN, MAX_CRYPTO_RANGES),
            outcome: None,
            error: None,
        }
    }

    /// Adds one CRYPTO frame's data at its stream offset.
    pub fn push(&mut self, offset: u64, data: &[u8]) -> Progress {
        if let Some(p) = &self.outcome {
            return p.clone();
        }
        if self.data.insert(offset, data) == Err(TooManyHoles) {
            return self.finish(Progress::NotTls);
        }
        let c = self.data.contiguous();
        match c.first() {
            None => return Progress::NeedMore,
            Some(1) => {}
            Some(_) => return self.finish(Progress::NotTls),
        }
        if c.len() < 4 {
            return Progress::NeedMore;
        }
        let need = 4 + ((usize::from(c[1]) << 16) | (usize::from(c[2]) << 8) | usize::from(c[3]));
        if need > MAX_HELLO_LEN {
            return self.finish(Progress::NotTls);
        }
        if c.len() < need {
            return Progress::NeedMore;
        }
        match sni_from_handshake(&c[..need]) {
            Ok(sni) => self.finish(Progress::Done(sni)),
            Err(e) => {
                self.error = Some(e);
                self.finish(Progress::NotTls)
            }
        }
    }

    /// Pushes every CRYPTO frame of a decrypted packet; returns the progress after the last.
    pub fn push_packet(&mut self, packet: &InitialPacket) -> Progress {
        let mut p = Progress::NeedMore;
        for (off, data) in &packet.crypto {
            p = self.push(*off, data);
            if p != Progress::NeedMore {
                break;
            }
        }
        p
    }

    /// The parse error of a complete but unusable ClientHello, if that is why it gave up.
    pub fn error(&self) -> Option<&TlsError> {
        self.error.as_ref()
    }

    fn finish(&mut self, p: Progress) -> Progress {
        self.data.clear();
        self.outcome = Some(p.clone());
        p
    }
}

/// Test helpers: an Initial packet *encryptor* (the inverse of [`decrypt_initial`]) so that
/// tests can build arbitrary client Initials.
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    pub(crate) fn varint(v: u64) -> Vec<u8> {
        match v {
            0..=63 => vec![v as u8],
            64..=16383 => ((v as u16) | 0x4000).to_be_bytes().to_vec(),
            16384..=0x3fff_ffff => ((v as u32) | 0x8000_0000).to_be_bytes().to_vec(),
            _ => (v | 0xc000_0000_0000_0000).to_be_bytes().to_vec(),
        }
    }

    pub(crate) fn crypto_frame(offset: u64, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0x06];
        f.extend(varint(offset));
        f.extend(varint(data.len() as u64));
        f.extend_from_slice(data);
        f
    }

    /// A protected Initial packet of `version` with the keys of `key_dcid`, carrying `dcid`,
    /// `scid`, packet number `pn` (4-byte encoding) and `frames`, padded with PADDING frames to
    /// at least `min_len` bytes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn initial(
        version: QuicVersion,
        key_dcid: &[u8],
        dcid: &[u8],
        scid: &[u8],
        token: &[u8],
        pn: u32,
        frames: &[u8],
        min_len: usize,
    ) -> Vec<u8> {
        let ty = match version {
            QuicVersion::V1 => 0,
            QuicVersion::V2 => 1,
        };
        let mut payload = frames.to_vec();
        let build_header = |payload_len: usize| {
            let mut h = vec![0xc0 | (ty << 4) | 0x03];
            h.extend_from_slice(&version.wire().to_be_bytes());
            h.push(dcid.len() as u8);
            h.extend_from_slice(dcid);
            h.push(scid.len() as u8);
            h.extend_from_slice(scid);
            h.extend(varint(token.len() as u64));
            h.extend_from_slice(token);
            // Length: 2-byte varint always, so padding arithmetic is stable
            h.extend_from_slice(&(((4 + payload_len + TAG_LEN) as u16) | 0x4000).to_be_bytes());
            h.extend_from_slice(&pn.to_be_bytes());
            h
        };
        // Pad with PADDING frames up to min_len (the header length does not depend on the
        // payload length: Length is always a 2-byte varint here).
        let header_len = build_header(0).len();
        let want = min_len.saturating_sub(header_len + TAG_LEN).max(4);
        if payload.len() < want {
            payload.resize(want, 0);
        }
        let header = build_header(payload.len());
        let keys = client_initial_keys(version, key_dcid).unwrap();
        let pn_offset = header.len() - 4;
        let mut nonce = keys.iv;
        for (n, p) in nonce[4..].iter_mut().zip(u64::from(pn).to_be_bytes()) {
            *n ^= p;
        }
        let key = LessSafeKey::new(UnboundKey::new(&aead::AES_128_GCM, &keys.key).unwrap());
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&header[..]),
            &mut payload,
        )
        .unwrap();
        let mut pkt = header;
        pkt.extend_from_slice(&payload);
        let hp_key = hp::HeaderProtectionKey::new(&hp::AES_128, &keys.hp).unwrap();
        let mask = hp_key
            .new_mask(&pkt[pn_offset + 4..pn_offset + 4 + SAMPLE_LEN])
            .unwrap();
        pkt[0] ^= mask[0] & 0x0f;
        for i in 0..4 {
            pkt[pn_offset + i] ^= mask[1 + i];
        }
        pkt
    }

    /// A (not decryptable, garbage-payload) long-header packet of another type, for
    /// coalescing tests.
    pub(crate) fn other_long(
        version: QuicVersion,
        ty_bits: u8,
        dcid: &[u8],
        payload_len: usize,
    ) -> Vec<u8> {
        let mut h = vec![0xc0 | (ty_bits << 4) | 0x03];
        h.extend_from_slice(&version.wire().to_be_bytes());
        h.push(dcid.len() as u8);
        h.extend_from_slice(dcid);
        h.push(0);
        h.extend_from_slice(&((payload_len as u16) | 0x4000).to_be_bytes());
        h.extend(std::iter::repeat_n(0x5a, payload_len));
        h
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use crate::testdata::{
        CH_CURL, CH_LARGE, RFC9001_CLIENT_INITIAL, RFC9001_SERVER_INITIAL, RFC9369_CLIENT_INITIAL,
        RFC_CLIENT_INITIAL_CRYPTO_FRAME, RFC_DCID,
    };

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The ClientHello inside the RFC's CRYPTO frame (type, offset 0, 2-byte length).
    fn rfc_client_hello() -> &'static [u8] {
        &RFC_CLIENT_INITIAL_CRYPTO_FRAME[4..]
    }

    #[test]
    fn varints() {
        // RFC 9000 §A.1 examples
        for (bytes, v) in [
            (
                &b"\xc2\x19\x7c\x5e\xff\x14\xe8\x8c"[..],
                151_288_809_941_952_652u64,
            ),
            (b"\x9d\x7f\x3e\x7d", 494_878_333),
            (b"\x7b\xbd", 15_293),
            (b"\x25", 37),
            (b"\x40\x25", 37),
        ] {
            assert_eq!(Reader::new(bytes).varint("t").unwrap(), v);
        }
        assert_eq!(
            Reader::new(b"\x80\x00").varint("t"),
            Err(QuicError::Truncated("t"))
        );
        for v in [0, 63, 64, 16383, 16384, 1 << 30, (1 << 62) - 1] {
            assert_eq!(Reader::new(&varint(v)).varint("t").unwrap(), v);
        }
    }

    #[test]
    fn rfc9001_a1_keys() {
        let k = client_initial_keys(QuicVersion::V1, &RFC_DCID).unwrap();
        assert_eq!(k.key.to_vec(), hex("1f369613dd76d5467730efcbe3b1a22d"));
        assert_eq!(k.iv.to_vec(), hex("fa044b2f42a3fd3b46fb255c"));
        assert_eq!(k.hp.to_vec(), hex("9f50449e04a0e810283a1e9933adedd2"));
    }

    #[test]
    fn rfc9369_a1_keys() {
        let k = client_initial_keys(QuicVersion::V2, &RFC_DCID).unwrap();
        assert_eq!(k.key.to_vec(), hex("8b1a0bc121284290a29e0971b5cd045d"));
        assert_eq!(k.iv.to_vec(), hex("91f73e2351d8fa91660e909f"));
        assert_eq!(k.hp.to_vec(), hex("45b95e15235d6f45a6b19cbcb0294ba9"));
    }

    #[test]
    fn rfc_client_initials_decrypt() {
        for (dgram, version) in [
            (RFC9001_CLIENT_INITIAL, QuicVersion::V1),
            (RFC9369_CLIENT_INITIAL, QuicVersion::V2),
        ] {
            for original in [None, Some(&RFC_DCID[..])] {
                let pkts = decrypt_initial(dgram, original).unwrap();
                assert_eq!(pkts.len(), 1);
                let p = &pkts[0];
                assert_eq!(p.version, version);
                assert_eq!(p.dcid, RFC_DCID);
                assert!(p.scid.is_empty());
                // exactly the RFC's CRYPTO frame: offset 0, 241 bytes
                assert_eq!(p.crypto, vec![(0, rfc_client_hello().to_vec())]);
                assert_eq!(rfc_client_hello().len(), 0xf1);
                assert_eq!(
                    sni_from_handshake(&p.crypto[0].1).unwrap().as_deref(),
                    Some("example.com")
                );
                let mut a = CryptoAssembler::new();
                assert_eq!(a.push_packet(p), Progress::Done(Some("example.com".into())));
            }
        }
    }

    #[test]
    fn server_initial_is_rejected() {
        // Protected with the server keys: the client keys fail authentication.
        assert_eq!(
            decrypt_initial(RFC9001_SERVER_INITIAL, None),
            Err(QuicError::Decrypt)
        );
        assert_eq!(
            decrypt_initial(RFC9001_SERVER_INITIAL, Some(&RFC_DCID)),
            Err(QuicError::Decrypt)
        );
    }

    #[test]
    fn rfc_initial_truncated_at_every_length() {
        for dgram in [RFC9001_CLIENT_INITIAL, RFC9369_CLIENT_INITIAL] {
            for cut in 0..dgram.len() {
                let r = decrypt_initial(&dgram[..cut], None);
                assert!(
                    matches!(r, Err(QuicError::Truncated(_))),
                    "cut {cut}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn corrupted_bytes_never_decrypt() {
        // Any changed byte of the protected packet breaks the header, the AEAD tag or the
        // version; nothing panics and nothing yields a packet.
        let mut d = RFC9001_CLIENT_INITIAL.to_vec();
        for i in 0..d.len() {
            let orig = d[i];
            d[i] ^= 0x41;
            let r = decrypt_initial(&d, None);
            assert!(r.is_err(), "byte {i}");
            d[i] = orig;
        }
    }

    #[test]
    fn wrong_version_and_garbage() {
        let mut d = RFC9001_CLIENT_INITIAL.to_vec();
        d[1..5].copy_from_slice(&0xff00_001du32.to_be_bytes()); // draft-29
        assert_eq!(
            decrypt_initial(&d, None),
            Err(QuicError::UnsupportedVersion(0xff00_001d))
        );
        d[1..5].copy_from_slice(&[0; 4]); // version negotiation
        assert_eq!(
            decrypt_initial(&d, None),
            Err(QuicError::UnsupportedVersion(0))
        );
        assert_eq!(
            decrypt_initial(&[0x40; 1200], None),
            Err(QuicError::NotLongHeader)
        );
        assert!(matches!(
            decrypt_initial(&[], None),
            Err(QuicError::Truncated(_))
        ));
        // DCID length 21
        let mut d = RFC9001_CLIENT_INITIAL.to_vec();
        d[5] = 21;
        assert!(matches!(
            decrypt_initial(&d, None),
            Err(QuicError::Malformed(_))
        ));
        // the v1 packet labelled as v2: type bits 0b00 now mean Retry (v2 Initial is 0b01)
        let mut d = RFC9001_CLIENT_INITIAL.to_vec();
        d[1..5].copy_from_slice(&QuicVersion::V2.wire().to_be_bytes());
        assert_eq!(decrypt_initial(&d, None), Err(QuicError::NoInitial));
        // garbage after a long header byte
        let mut rng = 0x1234_5678_u32;
        for _ in 0..200 {
            let mut g = vec![0u8; 1200];
            for b in &mut g {
                rng ^= rng << 13;
                rng ^= rng >> 17;
                rng ^= rng << 5;
                *b = rng as u8;
            }
            g[0] = 0xc3;
            g[1..5].copy_from_slice(&[0, 0, 0, 1]);
            g[5] = 8;
            assert!(decrypt_initial(&g, None).is_err());
        }
        assert_eq!(QuicVersion::from_wire(1), Some(QuicVersion::V1));
        assert_eq!(
            QuicVersion::from_wire(0x6b33_43cf).map(QuicVersion::wire),
            Some(0x6b33_43cf)
        );
        assert_eq!(QuicVersion::from_wire(2), None);
    }

    fn dcid() -> Vec<u8> {
        vec![0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8]
    }

    #[test]
    fn own_initials_split_shuffled_padded() {
        for version in [QuicVersion::V1, QuicVersion::V2] {
            for ch in [&CH_CURL[5..], &CH_LARGE[5..]] {
                // Chrome-like: 5 CRYPTO frames, shuffled, PING/PADDING between them, over two
                // Initial packets (the large one needs two anyway).
                let n = ch.len();
                let cuts = [0, n / 7, n / 3, n / 2, 4 * n / 5, n];
                let frames: Vec<Vec<u8>> = (0..5)
                    .map(|k| crypto_frame(cuts[k] as u64, &ch[cuts[k]..cuts[k + 1]]))
                    .collect();
                let mut f1 = vec![0x01];
                f1.extend(&frames[3]);
                f1.extend([0, 0, 0]);
                f1.extend(&frames[0]);
                f1.extend(&frames[4]);
                let mut f2 = frames[2].clone();
                f2.push(0x01);
                f2.extend(&frames[1]);
                // an ACK frame with ECN counts and one extra range
                f2.extend([
                    0x03, 0x05, 0x40, 0x10, 0x01, 0x00, 0x01, 0x01, 0x07, 0x00, 0x41, 0x00,
                ]);
                let p1 = initial(version, &dcid(), &dcid(), b"sc", b"", 0, &f1, 1200);
                let p2 = initial(version, &dcid(), &dcid(), b"sc", b"tok", 1, &f2, 1200);
                let mut a = CryptoAssembler::new();
                let d1 = decrypt_initial(&p1, None).unwrap();
                assert_eq!(d1[0].crypto.len(), 3);
                assert_eq!(a.push_packet(&d1[0]), Progress::NeedMore);
                let d2 = decrypt_initial(&p2, Some(&dcid())).unwrap();
                assert_eq!(d2[0].scid, b"sc");
                let want = Progress::Done(Some(
                    if n > 1500 {
                        "big.example.test"
                    } else {
                        "www.example.test"
                    }
                    .into(),
                ));
                assert_eq!(a.push_packet(&d2[0]), want);
                // the same frames in the other packet order
                let mut a = CryptoAssembler::new();
                assert_eq!(a.push_packet(&d2[0]), Progress::NeedMore);
                assert_eq!(a.push_packet(&d1[0]), want);
            }
        }
    }

    #[test]
    fn hello_over_three_initials_in_every_order() {
        // A >2 KiB ClientHello (a post-quantum key share makes Chrome's this large) in three
        // Initial packets; the assembler completes on whichever arrives last.
        let ch = crate::testdata::client_hello("three.example.test", 2000);
        let n = ch.len();
        let parts = [(0, n / 3), (n / 3, 2 * n / 3), (2 * n / 3, n)];
        let pkts: Vec<InitialPacket> = parts
            .iter()
            .enumerate()
            .map(|(k, &(a, b))| {
                let frames = [&[0x01u8][..], &crypto_frame(a as u64, &ch[a..b])].concat();
                let p = initial(
                    QuicVersion::V1,
                    &dcid(),
                    &dcid(),
                    b"",
                    b"",
                    k as u32,
                    &frames,
                    1200,
                );
                decrypt_initial(&p, Some(&dcid())).unwrap().remove(0)
            })
            .collect();
        let want = Progress::Done(Some("three.example.test".into()));
        for order in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            let mut a = CryptoAssembler::new();
            assert_eq!(a.push_packet(&pkts[order[0]]), Progress::NeedMore);
            assert_eq!(a.push_packet(&pkts[order[1]]), Progress::NeedMore);
            assert_eq!(a.push_packet(&pkts[order[2]]), want, "{order:?}");
        }
    }

    #[test]
    fn crypto_overlapping_and_duplicated() {
        let ch = &CH_CURL[5..];
        let want = Progress::Done(Some("www.example.test".into()));
        for step in [1usize, 3, 50, 200] {
            let mut a = CryptoAssembler::new();
            // overlapping windows of 2*step at every step, from the end backwards
            let mut starts: Vec<usize> = (0..ch.len()).step_by(step).collect();
            starts.reverse();
            let mut last = Progress::NeedMore;
            for s in starts {
                let e = (s + 2 * step).min(ch.len());
                last = a.push(s as u64, &ch[s..e]);
                // a duplicate of the same frame
                if last == Progress::NeedMore {
                    last = a.push(s as u64, &ch[s..e]);
                }
            }
            assert_eq!(last, want, "step {step}");
            // later pushes return the same result
            assert_eq!(a.push(0, b"\x02junk"), want);
        }
        // not a ClientHello, or too big, or too scattered
        assert_eq!(
            CryptoAssembler::new().push(0, &[2, 0, 0, 1, 0]),
            Progress::NotTls
        );
        assert_eq!(
            CryptoAssembler::new().push(0, &[1, 0x01, 0, 0]),
            Progress::NotTls
        );
        let mut a = CryptoAssembler::new();
        let mut last = Progress::NeedMore;
        for k in 0..40u64 {
            last = a.push(10 + 3 * k, &[1]);
        }
        assert_eq!(last, Progress::NotTls);
        // data beyond the bound is ignored, not buffered
        let mut a = CryptoAssembler::new();
        assert_eq!(a.push(1 << 40, &[1; 100]), Progress::NeedMore);
        // a complete but malformed ClientHello
        let mut bad = ch.to_vec();
        bad[4] = 9;
        let mut a = CryptoAssembler::new();
        assert_eq!(a.push(0, &bad), Progress::NotTls);
        assert!(a.error().is_some());
    }

    #[test]
    fn coalesced_initial_and_0rtt() {
        let frames = crypto_frame(0, &CH_CURL[5..]);
        for version in [QuicVersion::V1, QuicVersion::V2] {
            let ty_0rtt = match version {
                QuicVersion::V1 => 1,
                QuicVersion::V2 => 2,
            };
            let ini = initial(version, &dcid(), &dcid(), b"", b"", 0, &frames, 0);
            let zero = other_long(version, ty_0rtt, &dcid(), 300);
            let mut d = ini.clone();
            d.extend(&zero);
            d.extend([0u8; 50]); // trailing zeros (not a packet) end the walk
            let pkts = decrypt_initial(&d, None).unwrap();
            assert_eq!(pkts.len(), 1);
            // 0-RTT first, then the Initial: still found
            let mut d = zero.clone();
            d.extend(&ini);
            assert_eq!(decrypt_initial(&d, None).unwrap().len(), 1);
            // two Initials in one datagram
            let ini2 = initial(version, &dcid(), &dcid(), b"", b"", 1, &[0x01], 0);
            let mut d = ini.clone();
            d.extend(&ini2);
            let pkts = decrypt_initial(&d, None).unwrap();
            assert_eq!(pkts.len(), 2);
            assert!(pkts[1].crypto.is_empty());
            // only 0-RTT: no Initial
            assert_eq!(decrypt_initial(&zero, None), Err(QuicError::NoInitial));
            // a Retry ends the walk
            let mut retry = other_long(
                version,
                if version == QuicVersion::V1 { 3 } else { 0 },
                &dcid(),
                20,
            );
            retry.extend(&ini);
            assert_eq!(decrypt_initial(&retry, None), Err(QuicError::NoInitial));
        }
    }

    #[test]
    fn second_initial_with_server_chosen_dcid() {
        // After the server's Initial, the client addresses the server's SCID but keeps the
        // keys of its original DCID (RFC 9001 §5.2).
        let server_cid = [0x5e; 5];
        let p = initial(
            QuicVersion::V1,
            &dcid(),
            &server_cid,
            b"c",
            b"",
            2,
            &crypto_frame(0, &CH_CURL[5..]),
            1200,
        );
        assert_eq!(decrypt_initial(&p, None), Err(QuicError::Decrypt));
        let pkts = decrypt_initial(&p, Some(&dcid())).unwrap();
        assert_eq!(pkts[0].dcid, server_cid);
        // After a Retry the keys come from the new DCID: the packet's own DCID is tried.
        let p = initial(
            QuicVersion::V2,
            &server_cid,
            &server_cid,
            b"c",
            b"retry-token",
            0,
            &[1],
            1200,
        );
        assert_eq!(
            decrypt_initial(&p, Some(&dcid())).unwrap()[0].dcid,
            server_cid
        );
        // a zero-length DCID works too
        let p = initial(QuicVersion::V1, &[], &[], b"", b"", 0, &[1], 1200);
        assert!(decrypt_initial(&p, None).is_ok());
    }

    #[test]
    fn frames() {
        let ok = |f: &[u8]| parse_frames(f);
        assert_eq!(ok(&[0, 0, 1, 0]), Ok(vec![]));
        assert_eq!(ok(&crypto_frame(5, b"ab")), Ok(vec![(5, b"ab".to_vec())]));
        assert_eq!(ok(&[]), Err(QuicError::Malformed("packet without frames")));
        // CONNECTION_CLOSE 0x1c with a reason
        assert_eq!(ok(&[0x1c, 0x0a, 0x06, 0x03, b'b', b'a', b'd']), Ok(vec![]));
        assert_eq!(ok(&[0x1d, 0, 0]), Err(QuicError::UnexpectedFrame(0x1d)));
        assert_eq!(ok(&[0x08, 0]), Err(QuicError::UnexpectedFrame(0x08)));
        // ACK with a huge range count runs out of bytes instead of looping
        assert!(matches!(
            ok(&[0x02, 0, 0, 0xbf, 0xff, 0xff, 0xff, 0, 0, 0]),
            Err(QuicError::Truncated(_))
        ));
        // CRYPTO beyond 2^62-1
        let mut f = vec![0x06];
        f.extend(varint((1 << 62) - 1));
        f.extend([0x01, 0xaa]);
        assert_eq!(
            ok(&f),
            Err(QuicError::Malformed("CRYPTO frame beyond 2^62-1"))
        );
        // CRYPTO length beyond the packet
        assert!(matches!(
            ok(&[0x06, 0, 0x05, 1, 2]),
            Err(QuicError::Truncated(_))
        ));
        // every truncation of a frame sequence is an error or a shorter frame list
        let mut all = vec![0x01];
        all.extend([0x02, 0x05, 0x40, 0x10, 0x01, 0x00, 0x01, 0x01]);
        all.extend(crypto_frame(0x1234, b"hello"));
        all.extend([0x1c, 0x0a, 0x06, 0x01, b'x']);
        assert_eq!(ok(&all).unwrap(), vec![(0x1234, b"hello".to_vec())]);
        for cut in 1..all.len() {
            let _ = ok(&all[..cut]);
        }
    }

    #[test]
    fn own_initials_truncated_at_every_length() {
        let p = initial(
            QuicVersion::V2,
            &dcid(),
            &dcid(),
            b"s",
            b"t",
            7,
            &crypto_frame(0, &CH_CURL[5..]),
            1200,
        );
        assert!(decrypt_initial(&p, None).is_ok());
        for cut in 0..p.len() {
            assert!(
                matches!(
                    decrypt_initial(&p[..cut], None),
                    Err(QuicError::Truncated(_))
                ),
                "{cut}"
            );
        }
    }
}

//! ICMP (RFC 792) and ICMPv6 (RFC 4443) messages, the datagram an error quotes, and RFC 4884
//! multi-part extensions (MPLS label stack objects, RFC 4950).
//!
//! What it does:
//! - classifies a message: the errors a tracer cares about (Time Exceeded, Destination
//!   Unreachable, Packet Too Big, Parameter Problem), echo request/reply, everything else as
//!   [`IcmpMessage::Other`];
//! - parses the quoted datagram *laxly*: only the quoted IP header itself must be present
//!   (IHL*4 bytes for IPv4, 40 bytes for IPv6). RFC 792 only guarantees the IP header plus 64
//!   bits of the original datagram, so the quoted IP total length is never required to fit
//!   (requiring it, as smoltcp does, rejects most real Time Exceeded messages). Quoted IPv4
//!   options are honoured (the transport starts at IHL*4); quoted IPv6 extension headers are
//!   skipped when they are completely quoted;
//! - finds RFC 4884 extension structures, both where the ICMP "length" field puts them
//!   (RFC 4884 §4) and at the fixed offset 128 used by pre-RFC 4884 MPLS routers (RFC 4884 §5),
//!   and collects MPLS label stack entries (RFC 4950). Malformed extensions are ignored: they
//!   never make the whole message fail.
//!
//! What it does not do: it never verifies the ICMP checksum (captures are cut by the snap
//! length, so the checksummed bytes are often not all there, and the kernel already dropped
//! corrupt messages before a raw socket or pcap could show them to us), it does not interpret
//! extension objects other than MPLS label stacks (interface information, RFC 5837, is
//! skipped), and it does not parse ICMP messages that are not errors beyond their echo fields.

use std::net::IpAddr;

use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice};

use crate::packet::skip_ipv6_extensions;
use crate::Error;

/// A parsed ICMP or ICMPv6 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IcmpMessage<'a> {
    /// An error that quotes the datagram that caused it.
    Error(IcmpError<'a>),
    /// Echo reply (ICMP type 0 / ICMPv6 type 129).
    EchoReply {
        /// identifier
        ident: u16,
        /// sequence
        seq: u16,
    },
    /// Echo request (ICMP type 8 / ICMPv6 type 128).
    EchoRequest {
        /// identifier
        ident: u16,
        /// sequence
        seq: u16,
    },
    /// Any other type (kept, never a parse error).
    Other {
        /// type
        icmp_type: u8,
        /// code
        icmp_code: u8,
    },
}

/// The class of an ICMP error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// IPv4 type 11 / IPv6 type 3.
    TimeExceeded,
    /// IPv4 type 3 / IPv6 type 1.
    DestinationUnreachable,
    /// IPv6 type 2 (IPv4 uses DestinationUnreachable code 4).
    PacketTooBig,
    /// IPv4 type 12 / IPv6 type 4.
    ParameterProblem,
}

/// An ICMP error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpError<'a> {
    /// Class of the error.
    pub kind: ErrorKind,
    /// Raw ICMP type.
    pub icmp_type: u8,
    /// Raw ICMP code.
    pub icmp_code: u8,
    /// Next-hop MTU (IPv4 frag-needed, IPv6 packet-too-big), 0 otherwise.
    pub mtu: u32,
    /// The quoted datagram.
    pub quote: Quote<'a>,
    /// MPLS label stack entries from an RFC 4884/4950 extension, outermost first (empty if none).
    pub mpls: Vec<MplsLabel>,
    /// RFC 5837 Interface Information Objects from the same extension, in the order sent.
    pub interfaces: Vec<InterfaceInfo>,
}

/// What the interface of an RFC 5837 Interface Information Object is to the router (§4.1,
/// the C-Type's Interface Role bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterfaceRole {
    /// The IP interface on which the datagram arrived.
    Incoming,
    /// A sub-IP component of the incoming interface (a member of a bundle, say).
    SubIpIncoming,
    /// The IP interface through which the datagram would have been forwarded.
    Outgoing,
    /// The IP next hop to which it would have been forwarded.
    NextHop,
}

impl InterfaceRole {
    /// The role's name in the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incoming => "incoming",
            Self::SubIpIncoming => "sub-ip-incoming",
            Self::Outgoing => "outgoing",
            Self::NextHop => "next-hop",
        }
    }
}

/// An RFC 5837 Interface Information Object (class-num 2): what a router says about one of
/// its interfaces. Every part but the role is optional (the C-Type says which are there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub role: InterfaceRole,
    /// The interface's ifIndex (RFC 2863).
    pub if_index: Option<u32>,
    /// An address of the interface.
    pub addr: Option<IpAddr>,
    /// The interface's name (RFC 2863 ifName), as sent: UTF-8, up to 63 bytes; bytes that
    /// are not UTF-8 are replaced.
    pub name: Option<String>,
    /// The interface's MTU.
    pub mtu: Option<u32>,
}

/// One MPLS label stack entry (RFC 4950 §7, RFC 3032 §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MplsLabel {
    /// 20-bit label.
    pub label: u32,
    /// 3-bit traffic class (formerly EXP).
    pub tc: u8,
    /// bottom-of-stack bit.
    pub bottom: bool,
    /// TTL.
    pub ttl: u8,
}

/// The datagram quoted by an ICMP error: its IP header (however much was quoted) and the first
/// bytes of its transport header. Often only 8 transport bytes are quoted (RFC 792).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote<'a> {
    /// Quoted source address (the prober, or the NAT-translated one on the far side of a NAT).
    pub src: IpAddr,
    /// Quoted destination.
    pub dst: IpAddr,
    /// Quoted IP protocol / IPv6 next header (after skipping extension headers).
    pub protocol: u8,
    /// Quoted TTL / hop limit (as the router saw it).
    pub ttl: u8,
    /// Quoted TOS / traffic class.
    pub tos: u8,
    /// Quoted IPv4 identification (0 for IPv6).
    pub ident: u16,
    /// Quoted IPv6 flow label (0 for IPv4).
    pub flow_label: u32,
    /// Quoted IPv4 total length / IPv6 payload length.
    pub length: u16,
    /// The quoted bytes after the IP header (and IPv6 extension headers), as many as quoted.
    /// Excludes RFC 4884 padding/extension when the ICMP length field says where the quote ends.
    pub transport: &'a [u8],
}

impl Quote<'_> {
    /// Source and destination ports (TCP/UDP/SCTP-style first 4 bytes), if quoted.
    pub fn ports(&self) -> Option<(u16, u16)> {
        Some((
            crate::be16(self.transport, 0)?,
            crate::be16(self.transport, 2)?,
        ))
    }
    /// The quoted TCP sequence number (transport bytes 4..8), if protocol is TCP and quoted.
    pub fn tcp_seq(&self) -> Option<u32> {
        if self.protocol != PROTO_TCP {
            return None;
        }
        crate::be32(self.transport, 4)
    }
    /// The quoted UDP checksum (transport bytes 6..8), if protocol is UDP and quoted.
    pub fn udp_checksum(&self) -> Option<u16> {
        if self.protocol != PROTO_UDP {
            return None;
        }
        crate::be16(self.transport, 6)
    }
    /// The quoted TCP acknowledgment number (transport bytes 8..12), if protocol is TCP and at
    /// least 12 transport bytes are quoted (more than the RFC 792 minimum of 8).
    pub fn tcp_ack(&self) -> Option<u32> {
        if self.protocol != PROTO_TCP {
            return None;
        }
        crate::be32(self.transport, 8)
    }
    /// The quoted ICMP/ICMPv6 echo identifier and sequence (transport bytes 4..8), if the quoted
    /// protocol is ICMP (1, in an IPv4 quote) / ICMPv6 (58, in an IPv6 quote) and the bytes are
    /// quoted. The quoted type is not checked (errors are about echo requests in practice;
    /// `transport[0]` has the type: 8 / 128 for an echo request).
    pub fn icmp_echo(&self) -> Option<(u16, u16)> {
        if !self.is_icmp() {
            return None;
        }
        Some((
            crate::be16(self.transport, 4)?,
            crate::be16(self.transport, 6)?,
        ))
    }
    /// The quoted ICMP/ICMPv6 checksum (transport bytes 2..4), if the quoted protocol is ICMP
    /// (IPv4 quote) / ICMPv6 (IPv6 quote). With Paris traceroute for ICMP it is constant across
    /// the probes of a flow. (The TCP checksum sits at bytes 16..18 and the UDP one at 6..8,
    /// see [`Quote::udp_checksum`].)
    pub fn icmp_checksum(&self) -> Option<u16> {
        if !self.is_icmp() {
            return None;
        }
        crate::be16(self.transport, 2)
    }
    /// Whether the quoted protocol is the ICMP of the quoted IP version.
    fn is_icmp(&self) -> bool {
        matches!(
            (self.src, self.protocol),
            (IpAddr::V4(_), PROTO_ICMP) | (IpAddr::V6(_), PROTO_ICMPV6)
        )
    }
}

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;

/// Length of the fixed ICMP/ICMPv6 header: type, code, checksum and the 4-byte "rest of
/// header" (RFC 792, RFC 4443 §2.1). Every message this module interprets has it.
const ICMP_HEADER_LEN: usize = 8;

/// RFC 4884 §5: pre-RFC 4884 implementations (MPLS extensions per the RFC 4950 drafts) put the
/// extension structure right after a 128-byte original datagram field without setting the
/// length field.
const NON_COMPLIANT_OFFSET: usize = 128;

/// RFC 4884 §7: version of the extension structure.
const EXTENSION_VERSION: u8 = 2;

/// RFC 4950 §7: MPLS Label Stack object, class-num 1, c-type 1 (incoming label stack).
const MPLS_CLASS: u8 = 1;
const MPLS_CTYPE: u8 = 1;

/// RFC 5837 §4.1: Interface Information Object, class-num 2.
const INTERFACE_CLASS: u8 = 2;

/// What an extension structure carries (RFC 4884 §7-8).
#[derive(Debug, Default)]
struct Extensions {
    mpls: Vec<MplsLabel>,
    interfaces: Vec<InterfaceInfo>,
}

impl<'a> IcmpError<'a> {
    fn new(
        kind: ErrorKind,
        (icmp_type, icmp_code): (u8, u8),
        mtu: u32,
        quote: Quote<'a>,
        ext: Extensions,
    ) -> Self {
        Self {
            kind,
            icmp_type,
            icmp_code,
            mtu,
            quote,
            mpls: ext.mpls,
            interfaces: ext.interfaces,
        }
    }
}

/// A message of a type the tracer does not read.
fn other<'a>(icmp_type: u8, icmp_code: u8) -> IcmpMessage<'a> {
    IcmpMessage::Other {
        icmp_type,
        icmp_code,
    }
}

/// An echo request or reply: identifier and sequence number in bytes 4..8 (RFC 792, RFC 4443
/// §4), the same for both families.
fn echo(icmp: &[u8], is_reply: bool) -> Result<IcmpMessage<'_>, crate::Error> {
    let (ident, seq) = echo_fields(icmp)?;
    Ok(if is_reply {
        IcmpMessage::EchoReply { ident, seq }
    } else {
        IcmpMessage::EchoRequest { ident, seq }
    })
}

/// Parses an ICMPv4 message (starting at the ICMP type byte; may be truncated by the capture).
///
/// The checksum is deliberately not verified: captures may be truncated (see module docs).
pub fn parse_icmpv4(icmp: &[u8]) -> Result<IcmpMessage<'_>, crate::Error> {
    let (icmp_type, icmp_code) = type_code(icmp)?;
    let kind = match icmp_type {
        // RFC 792: echo reply (0) / echo request (8).
        0 | 8 => return echo(icmp, icmp_type == 0),
        3 => ErrorKind::DestinationUnreachable,
        11 => ErrorKind::TimeExceeded,
        12 => ErrorKind::ParameterProblem,
        _ => return Ok(other(icmp_type, icmp_code)),
    };
    let header = fixed_header(icmp)?;
    // RFC 1191 §4: "Fragmentation needed and DF set" carries the next-hop MTU in the low-order
    // 16 bits of the second word (bytes 6..8).
    let mtu = if icmp_type == 3 && icmp_code == 4 {
        u32::from(u16::from_be_bytes([header[6], header[7]]))
    } else {
        0
    };
    // RFC 4884 §4.1: for types 3, 11 and 12 the second word's second byte (offset 5) is the
    // length of the original datagram field, in 32-bit words.
    let length_words = header[5];
    let payload = icmp.get(ICMP_HEADER_LEN..).unwrap_or_default();
    let (quoted, ext) = split_extensions(payload, usize::from(length_words) * 4, 20);
    let quote = parse_quote_v4(quoted)?;
    Ok(IcmpMessage::Error(IcmpError::new(
        kind,
        (icmp_type, icmp_code),
        mtu,
        quote,
        ext,
    )))
}

/// Parses an ICMPv6 message (starting at the ICMPv6 type byte).
///
/// The checksum is deliberately not verified: captures may be truncated (see module docs), and
/// verifying it would also need the outer IPv6 addresses (RFC 4443 §2.3 pseudo-header).
pub fn parse_icmpv6(icmp: &[u8]) -> Result<IcmpMessage<'_>, crate::Error> {
    let (icmp_type, icmp_code) = type_code(icmp)?;
    let kind = match icmp_type {
        // RFC 4443 §4.1/§4.2: echo request (128) / reply (129).
        128 | 129 => return echo(icmp, icmp_type == 129),
        1 => ErrorKind::DestinationUnreachable,
        2 => ErrorKind::PacketTooBig,
        3 => ErrorKind::TimeExceeded,
        4 => ErrorKind::ParameterProblem,
        _ => return Ok(other(icmp_type, icmp_code)),
    };
    let header = fixed_header(icmp)?;
    let word = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    // RFC 4443 §3.2: Packet Too Big carries the 32-bit MTU in the second word.
    let mtu = if icmp_type == 2 { word } else { 0 };
    // RFC 4884 §4.2: only Destination Unreachable (1) and Time Exceeded (3) have the length
    // field, in the first byte of the second word (offset 4), counted in 64-bit words. Packet
    // Too Big uses that word for the MTU and Parameter Problem for the pointer.
    let payload = icmp.get(ICMP_HEADER_LEN..).unwrap_or_default();
    let (quoted, ext) = if icmp_type == 1 || icmp_type == 3 {
        split_extensions(payload, usize::from(header[4]) * 8, 40)
    } else {
        (payload, Extensions::default())
    };
    let quote = parse_quote_v6(quoted)?;
    Ok(IcmpMessage::Error(IcmpError::new(
        kind,
        (icmp_type, icmp_code),
        mtu,
        quote,
        ext,
    )))
}

fn type_code(icmp: &[u8]) -> Result<(u8, u8), Error> {
    match icmp {
        [t, c, ..] => Ok((*t, *c)),
        _ => Err(Error::Truncated {
            need: 2,
            have: icmp.len(),
        }),
    }
}

fn fixed_header(icmp: &[u8]) -> Result<&[u8; ICMP_HEADER_LEN], Error> {
    icmp.get(..ICMP_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(Error::Truncated {
            need: ICMP_HEADER_LEN,
            have: icmp.len(),
        })
}

fn echo_fields(icmp: &[u8]) -> Result<(u16, u16), Error> {
    let h = fixed_header(icmp)?;
    Ok((
        u16::from_be_bytes([h[4], h[5]]),
        u16::from_be_bytes([h[6], h[7]]),
    ))
}

/// Splits the ICMP payload (everything after the 8-byte header) of an error that has an
/// RFC 4884 length field into the original-datagram field and what an extension structure
/// carries, if there is one.
///
/// `length` is the length field converted to bytes; `min_quote` is the size of the quoted IP
/// header, below which a non-zero length field cannot be right.
fn split_extensions(payload: &[u8], length: usize, min_quote: usize) -> (&[u8], Extensions) {
    if length != 0 {
        // RFC 4884 §4: the length field says where the original datagram field ends and the
        // extension structure begins. Before RFC 4884 this byte was "unused" and some stacks
        // left garbage in it, so a length too short to even hold the quoted IP header is
        // ignored rather than trusted.
        if length < min_quote {
            return (payload, Extensions::default());
        }
        return match (payload.get(..length), payload.get(length..)) {
            (Some(quoted), Some(ext)) => (quoted, parse_extension(ext, false).unwrap_or_default()),
            // The capture (or the router) cut the message inside the original datagram field:
            // everything present is quote, there is no extension to see.
            _ => (payload, Extensions::default()),
        };
    }
    // RFC 4884 §5: a length of 0 with more than 128 bytes of payload may be a pre-RFC 4884
    // implementation that appends the extension at offset 128. Because a long quote can hold
    // anything at offset 128, the structure is only accepted when its header is convincing
    // (version 2, reserved bits zero, checksum valid or zero, at least one sane object).
    if payload.len() > NON_COMPLIANT_OFFSET {
        if let (Some(quoted), Some(ext)) = (
            payload.get(..NON_COMPLIANT_OFFSET),
            payload.get(NON_COMPLIANT_OFFSET..),
        ) {
            if let Some(found) = parse_extension(ext, true) {
                return (quoted, found);
            }
        }
    }
    (payload, Extensions::default())
}

/// Parses an RFC 4884 §7 extension structure and returns the MPLS label stack entries (RFC
/// 4950) and the interface information (RFC 5837) of its objects. Returns `None` when the
/// bytes are not an extension structure (wrong version, too short, or, when `strict`, a bad
/// checksum / reserved bits / no valid object).
///
/// Objects (RFC 4884 §8) are walked while their length is at least 4 (the object header) and
/// fits in what was captured; the first malformed object ends the walk silently.
fn parse_extension(ext: &[u8], strict: bool) -> Option<Extensions> {
    let header = ext.get(..4)?;
    if header[0] >> 4 != EXTENSION_VERSION {
        return None;
    }
    if strict {
        let reserved = u16::from_be_bytes([header[0], header[1]]) & 0x0fff;
        let checksum = u16::from_be_bytes([header[2], header[3]]);
        // RFC 4884 §7: the checksum covers the whole extension structure; 0 means "not
        // computed". A valid one's-complement checksum makes the sum over all words 0xffff.
        if reserved != 0 || (checksum != 0 && ones_complement_sum(ext) != 0xffff) {
            return None;
        }
    }
    let mut found = Extensions::default();
    let mut objects = ext.get(4..)?;
    let mut saw_object = false;
    while let Some(obj_header) = objects.get(..4) {
        let len = usize::from(u16::from_be_bytes([obj_header[0], obj_header[1]]));
        let (class, ctype) = (obj_header[2], obj_header[3]);
        // A length below the 4-byte object header is malformed (and would never advance);
        // a length beyond the captured bytes cannot be read. Either ends the walk.
        if len < 4 {
            break;
        }
        let Some(body) = objects.get(4..len) else {
            break;
        };
        saw_object = true;
        if class == MPLS_CLASS && ctype == MPLS_CTYPE {
            // RFC 4950 §7 / RFC 3032 §2.1: label (20 bits) | TC (3) | S (1) | TTL (8).
            found.mpls.extend(body.chunks_exact(4).map(|e| {
                let v = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
                MplsLabel {
                    label: v >> 12,
                    tc: ((v >> 9) & 0x7) as u8,
                    bottom: (v >> 8) & 1 == 1,
                    ttl: (v & 0xff) as u8,
                }
            }));
        } else if class == INTERFACE_CLASS {
            found.interfaces.extend(parse_interface(ctype, body));
        }
        objects = objects.get(len..).unwrap_or_default();
    }
    if strict && !saw_object {
        return None;
    }
    Some(found)
}

/// Parses the body of an RFC 5837 §4.1 Interface Information Object. The C-Type is
/// `role (2 bits) | reserved (2) | ifIndex | IP address | name | MTU` (one bit each), and the
/// parts the bits announce follow in that order: ifIndex (4 bytes); the IP Address
/// Sub-Object (§4.2: AFI (2 bytes, 1 IPv4, 2 IPv6), reserved (2), the address); the
/// Interface Name Sub-Object (§4.3: a length byte counting itself, a multiple of 4 up to 64,
/// then the name, NUL-padded); the MTU (4 bytes). `None` when the body is shorter than what
/// the bits announce, or a sub-object is malformed (an unknown AFI, a bad name length).
fn parse_interface(ctype: u8, body: &[u8]) -> Option<InterfaceInfo> {
    let role = match ctype >> 6 {
        0 => InterfaceRole::Incoming,
        1 => InterfaceRole::SubIpIncoming,
        2 => InterfaceRole::Outgoing,
        _ => InterfaceRole::NextHop,
    };
    let mut rest = body;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let if_index = if ctype & 0x08 != 0 {
        Some(word(take(4)?))
    } else {
        None
    };
    let addr = if ctype & 0x04 != 0 {
        let afi = take(4)?;
        match u16::from_be_bytes([afi[0], afi[1]]) {
            1 => {
                let a: [u8; 4] = take(4)?.try_into().ok()?;
                Some(IpAddr::from(a))
            }
            2 => {
                let a: [u8; 16] = take(16)?.try_into().ok()?;
                Some(IpAddr::from(a))
            }
            _ => return None,
        }
    } else {
        None
    };
    let name = if ctype & 0x02 != 0 {
        let len = usize::from(*take(1)?.first()?);
        if !(4..=64).contains(&len) || len % 4 != 0 {
            return None;
        }
        let bytes = take(len - 1)?;
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
    } else {
        None
    };
    let mtu = if ctype & 0x01 != 0 {
        Some(word(take(4)?))
    } else {
        None
    };
    Some(InterfaceInfo {
        role,
        if_index,
        addr,
        name,
        mtu,
    })
}

/// The one's-complement sum (RFC 1071) of `bytes` as 16-bit big-endian words, an odd trailing
/// byte padded with zero.
pub(crate) fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Where a quote's transport bytes end: at the quoted datagram's own length when the quote is
/// longer (RFC 4884 zero padding, or trailing bytes a router added), but never less than 8
/// transport bytes, because some old stacks quote a wrong length (e.g. BSD's host-order or
/// header-less `ip_len`) and the ports must survive that.
fn transport_end(quoted_len: usize, transport_start: usize, datagram_len: usize) -> usize {
    let floor = transport_start.saturating_add(8);
    datagram_len.max(floor).min(quoted_len)
}

fn parse_quote_v4(q: &[u8]) -> Result<Quote<'_>, Error> {
    // Ipv4HeaderSlice checks exactly what a quote must have: version 4, IHL >= 5 and IHL*4
    // bytes present. It does not look at the total length, which a quote never satisfies.
    let h = Ipv4HeaderSlice::from_slice(q)?;
    let start = h.slice().len();
    let end = transport_end(q.len(), start, usize::from(h.total_len()));
    Ok(Quote {
        src: IpAddr::V4(h.source_addr()),
        dst: IpAddr::V4(h.destination_addr()),
        protocol: h.protocol().0,
        ttl: h.ttl(),
        tos: h.slice()[1],
        ident: h.identification(),
        flow_label: 0,
        length: h.total_len(),
        transport: q.get(start..end).unwrap_or_default(),
    })
}

fn parse_quote_v6(q: &[u8]) -> Result<Quote<'_>, Error> {
    let h = Ipv6HeaderSlice::from_slice(q)?;
    let after_header = q.get(40..).unwrap_or_default();
    // RFC 4443 §2.4(c) lets a router quote as much as fits, so extension headers are usually
    // all there; skip the ones that are completely quoted.
    let walk = skip_ipv6_extensions(h.next_header().0, after_header);
    let start = 40 + walk.offset;
    let end = transport_end(q.len(), start, 40 + usize::from(h.payload_length()));
    Ok(Quote {
        src: IpAddr::V6(h.source_addr()),
        dst: IpAddr::V6(h.destination_addr()),
        protocol: walk.protocol,
        ttl: h.hop_limit(),
        tos: h.traffic_class(),
        ident: 0,
        flow_label: h.flow_label().value(),
        length: h.payload_length(),
        transport: q.get(start..end).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const PROBER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    const TARGET: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20));
    const PROBER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10));
    const TARGET6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20));

    /// The ICMP part of a vector (after the outer IPv4 / IPv6 header).
    fn icmp4(v: &[u8]) -> &[u8] {
        &v[20..]
    }
    fn icmp6(v: &[u8]) -> &[u8] {
        &v[40..]
    }

    fn error(m: Result<IcmpMessage<'_>, Error>) -> IcmpError<'_> {
        match m {
            Ok(IcmpMessage::Error(e)) => e,
            other => panic!("not an ICMP error: {other:?}"),
        }
    }

    /// `v` with the bytes at the given offsets replaced.
    fn edited(v: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
        let mut v = v.to_vec();
        for &(at, b) in edits {
            v[at] = b;
        }
        v
    }

    /// Checks the quote of the TCP probe that most vectors quote.
    fn assert_tcp_probe_quote(q: &Quote<'_>) {
        assert_eq!((q.src, q.dst), (PROBER, TARGET));
        assert_eq!((q.protocol, q.ttl, q.tos), (6, 1, 0));
        assert_eq!((q.ident, q.flow_label), (0x4a5b, 0));
        assert_eq!(q.ports(), Some((40000, 443)));
        assert_eq!(q.tcp_seq(), Some(0x1122_3344));
        assert_eq!(q.udp_checksum(), None, "not UDP");
    }

    #[test]
    fn time_exceeded_minimal_quote() {
        let e = error(parse_icmpv4(icmp4(TE_TCP_8)));
        assert_eq!(e.kind, ErrorKind::TimeExceeded);
        assert_eq!((e.icmp_type, e.icmp_code, e.mtu), (11, 0, 0));
        assert_tcp_probe_quote(&e.quote);
        // Only 8 transport bytes, although the quoted total length says 40: accepted.
        assert_eq!(e.quote.length, 40);
        assert_eq!(
            e.quote.transport,
            &[0x9c, 0x40, 0x01, 0xbb, 0x11, 0x22, 0x33, 0x44]
        );
        assert!(e.mpls.is_empty());
    }

    #[test]
    fn time_exceeded_full_quote() {
        let e = error(parse_icmpv4(icmp4(TE_TCP_FULL)));
        assert_tcp_probe_quote(&e.quote);
        assert_eq!(e.quote.transport.len(), 20);
        assert_eq!(&e.quote.transport[8..12], &[0x55, 0x66, 0x77, 0x88]);
        assert!(e.mpls.is_empty());
    }

    #[test]
    fn quote_with_ip_options() {
        let e = error(parse_icmpv4(icmp4(TE_QUOTE_OPTS)));
        assert_tcp_probe_quote(&e.quote);
        assert_eq!(e.quote.length, 44);
        assert_eq!(e.quote.transport.len(), 8, "transport starts at IHL*4 = 24");
    }

    #[test]
    fn rfc4884_mpls_extension() {
        let e = error(parse_icmpv4(icmp4(TE_MPLS_4884)));
        assert_tcp_probe_quote(&e.quote);
        // The 88 bytes of padding and the extension are not transport bytes.
        assert_eq!(e.quote.transport.len(), 20);
        assert_eq!(
            e.mpls,
            vec![
                MplsLabel {
                    label: 16005,
                    tc: 0,
                    bottom: false,
                    ttl: 1
                },
                MplsLabel {
                    label: 24001,
                    tc: 5,
                    bottom: true,
                    ttl: 1
                },
            ]
        );
        // The extension checksum in the vector is valid (checked independently of the parser).
        assert_eq!(ones_complement_sum(&TE_MPLS_4884[156..]), 0xffff);
        // The compliant layout does not depend on the checksum or reserved bits.
        let v = edited(TE_MPLS_4884, &[(157, 0x01), (158, 0)]);
        assert_eq!(error(parse_icmpv4(icmp4(&v))).mpls.len(), 2);
        // A wrong extension version: no labels, but the quote still ends at the length field.
        let v = edited(TE_MPLS_4884, &[(156, 0x10)]);
        let e = error(parse_icmpv4(icmp4(&v)));
        assert!(e.mpls.is_empty());
        assert_eq!(e.quote.transport.len(), 20);
    }

    /// RFC 5837 objects after a compliant original datagram field: the incoming interface
    /// with every part, the outgoing one with its IPv6 address only.
    fn ifinfo_vector(ext: &[u8]) -> Vec<u8> {
        let mut v = TE_MPLS_4884[..156].to_vec();
        v.extend_from_slice(ext);
        v
    }

    #[test]
    fn rfc5837_interface_information() {
        let v = ifinfo_vector(IFINFO_5837_EXT);
        // The vector's checksum is valid (checked independently of the parser).
        assert_eq!(ones_complement_sum(IFINFO_5837_EXT), 0xffff);
        let e = error(parse_icmpv4(icmp4(&v)));
        assert_tcp_probe_quote(&e.quote);
        assert!(e.mpls.is_empty());
        assert_eq!(
            e.interfaces,
            vec![
                InterfaceInfo {
                    role: InterfaceRole::Incoming,
                    if_index: Some(3),
                    addr: Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1))),
                    name: Some("eth1".into()),
                    mtu: Some(1500),
                },
                InterfaceInfo {
                    role: InterfaceRole::Outgoing,
                    if_index: None,
                    addr: Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))),
                    name: None,
                    mtu: None,
                },
            ]
        );
        // The roles of the C-Type's two high bits.
        for (ctype, role) in [
            (0x84, InterfaceRole::Outgoing),
            (0x44, InterfaceRole::SubIpIncoming),
            (0xc4, InterfaceRole::NextHop),
        ] {
            let v = ifinfo_vector(&edited(IFINFO_5837_EXT, &[(35, ctype)]));
            assert_eq!(error(parse_icmpv4(icmp4(&v))).interfaces[1].role, role);
        }
        // Beside an MPLS object, in the same structure: both are read.
        let mut ext = IFINFO_5837_EXT.to_vec();
        ext.extend_from_slice(&[0x00, 0x08, 0x01, 0x01, 0x03, 0xe8, 0x51, 0x01]);
        let v = ifinfo_vector(&ext);
        let e = error(parse_icmpv4(icmp4(&v)));
        assert_eq!((e.interfaces.len(), e.mpls.len()), (2, 1));
        assert_eq!(e.mpls[0].label, 16005);
    }

    #[test]
    fn rfc5837_malformed_objects_are_skipped() {
        // A name length that is not a multiple of 4, or beyond the object: the first object
        // is dropped, the second still read.
        for len in [0x07, 0x00, 0x44] {
            let v = ifinfo_vector(&edited(IFINFO_5837_EXT, &[(20, len)]));
            let e = error(parse_icmpv4(icmp4(&v)));
            assert_eq!(e.interfaces.len(), 1, "name length {len:#x}");
            assert_eq!(e.interfaces[0].role, InterfaceRole::Outgoing);
        }
        // An unknown AFI.
        let v = ifinfo_vector(&edited(IFINFO_5837_EXT, &[(13, 9)]));
        assert_eq!(error(parse_icmpv4(icmp4(&v))).interfaces.len(), 1);
        // Bits that announce more than the object holds: MTU and name on the second object.
        let v = ifinfo_vector(&edited(IFINFO_5837_EXT, &[(35, 0x87)]));
        assert_eq!(error(parse_icmpv4(icmp4(&v))).interfaces.len(), 1);
        // A name that is not UTF-8 is kept, replaced.
        let v = ifinfo_vector(&edited(IFINFO_5837_EXT, &[(21, 0xff)]));
        let e = error(parse_icmpv4(icmp4(&v)));
        assert_eq!(e.interfaces[0].name.as_deref(), Some("\u{fffd}th1"));
        // Cut anywhere: never a panic, and never an object that was not whole.
        let whole = ifinfo_vector(IFINFO_5837_EXT);
        for cut in 156..whole.len() {
            let e = error(parse_icmpv4(icmp4(&whole[..cut])));
            assert!(e.interfaces.len() <= 1, "cut at {cut}");
        }
    }

    #[test]
    fn rfc4884_non_compliant_layout() {
        let e = error(parse_icmpv4(icmp4(TE_MPLS_NONCOMPLIANT)));
        assert_tcp_probe_quote(&e.quote);
        assert_eq!(e.quote.transport.len(), 20);
        assert_eq!(
            e.mpls,
            vec![MplsLabel {
                label: 299_776,
                tc: 0,
                bottom: true,
                ttl: 254
            }]
        );
        assert_eq!(ones_complement_sum(&TE_MPLS_NONCOMPLIANT[156..]), 0xffff);
        // Checksum 0 means "not computed" (RFC 4884 §7): accepted.
        let v = edited(TE_MPLS_NONCOMPLIANT, &[(158, 0), (159, 0)]);
        assert_eq!(error(parse_icmpv4(icmp4(&v))).mpls.len(), 1);
        // A wrong checksum, version or reserved bits: this is quoted data, not an extension.
        for edit in [(159, 0x00), (156, 0x30), (157, 0x80)] {
            let v = edited(TE_MPLS_NONCOMPLIANT, &[edit]);
            let e = error(parse_icmpv4(icmp4(&v)));
            assert!(e.mpls.is_empty(), "{edit:?}");
            assert_tcp_probe_quote(&e.quote);
        }
    }

    #[test]
    fn port_unreachable_quoting_udp() {
        let e = error(parse_icmpv4(icmp4(PORT_UNREACH_UDP)));
        assert_eq!(e.kind, ErrorKind::DestinationUnreachable);
        assert_eq!((e.icmp_type, e.icmp_code, e.mtu), (3, 3, 0));
        let q = &e.quote;
        assert_eq!(
            (q.src, q.dst, q.protocol, q.ident, q.length),
            (PROBER, TARGET, 17, 0x1b2c, 36)
        );
        assert_eq!(q.ports(), Some((40001, 33435)));
        assert_eq!(
            q.udp_checksum(),
            Some(u16::from_be_bytes([
                PORT_UNREACH_UDP[54],
                PORT_UNREACH_UDP[55]
            ]))
        );
        assert_eq!(q.tcp_seq(), None, "not TCP");
        assert_eq!(q.transport.len(), 16);
        assert_eq!(&q.transport[8..], b"svctr-ud");
    }

    #[test]
    fn fragmentation_needed_mtu() {
        let e = error(parse_icmpv4(icmp4(FRAG_NEEDED)));
        assert_eq!(e.kind, ErrorKind::DestinationUnreachable);
        assert_eq!((e.icmp_code, e.mtu), (4, 1400));
        assert_tcp_probe_quote(&e.quote);
    }

    #[test]
    fn parameter_problem_v4() {
        // Type 12 code 0, pointer 8 (the TTL byte), quoting the minimal TCP probe quote.
        let v = edited(TE_TCP_8, &[(20, 12), (24, 8)]);
        let e = error(parse_icmpv4(icmp4(&v)));
        assert_eq!(e.kind, ErrorKind::ParameterProblem);
        assert_tcp_probe_quote(&e.quote);
    }

    #[test]
    fn icmpv6_time_exceeded_quoting_udp() {
        let e = error(parse_icmpv6(icmp6(V6_TE_UDP)));
        assert_eq!(e.kind, ErrorKind::TimeExceeded);
        assert_eq!((e.icmp_type, e.icmp_code, e.mtu), (3, 0, 0));
        let q = &e.quote;
        assert_eq!((q.src, q.dst), (PROBER6, TARGET6));
        assert_eq!((q.protocol, q.ttl, q.tos, q.ident), (17, 1, 0, 0));
        assert_eq!((q.flow_label, q.length), (0xabcde, 16));
        assert_eq!(q.ports(), Some((40000, 53)));
        assert_eq!(
            q.udp_checksum(),
            Some(u16::from_be_bytes([V6_TE_UDP[94], V6_TE_UDP[95]]))
        );
        assert_eq!(q.transport.len(), 16);
        assert!(e.mpls.is_empty());
    }

    #[test]
    fn icmpv6_packet_too_big_with_extension_header_in_quote() {
        let e = error(parse_icmpv6(icmp6(V6_PTB)));
        assert_eq!(e.kind, ErrorKind::PacketTooBig);
        assert_eq!(e.mtu, 1280);
        let q = &e.quote;
        assert_eq!(
            (q.protocol, q.ttl, q.flow_label, q.length),
            (6, 7, 0x12345, 1228)
        );
        assert_eq!(q.ports(), Some((40000, 443)));
        assert_eq!(q.tcp_seq(), Some(0x1122_3344));
        // Cut inside the destination options header: it is not skipped, the protocol is the
        // extension header's number, and there are no ports to trust.
        let e = error(parse_icmpv6(&icmp6(V6_PTB)[..8 + 40 + 4]));
        assert_eq!(e.quote.protocol, 60);
        assert_eq!(e.quote.tcp_seq(), None);
    }

    #[test]
    fn icmpv6_rfc4884_length_field() {
        // Time Exceeded with length 16 (x 8 bytes = 128): the 56-byte quote, 72 bytes of zero
        // padding, then an extension with one MPLS entry (label 100, TC 0, S 1, TTL 1).
        let mut v = icmp6(V6_TE_UDP).to_vec();
        v[4] = 16;
        v.resize(8 + 128, 0);
        #[rustfmt::skip]
        v.extend_from_slice(&[
            0x20, 0x00, 0x00, 0x00, // version 2, checksum 0 (not computed)
            0x00, 0x08, 0x01, 0x01, // object: length 8, class 1, c-type 1
            0x00, 0x06, 0x41, 0x01, // label 100, TC 0, S 1, TTL 1
        ]);
        let e = error(parse_icmpv6(&v));
        assert_eq!(
            e.mpls,
            vec![MplsLabel {
                label: 100,
                tc: 0,
                bottom: true,
                ttl: 1
            }]
        );
        assert_eq!(e.quote.transport.len(), 16);
        assert_eq!(e.quote.ports(), Some((40000, 53)));
        // Packet Too Big has no length field: byte 4 is part of the MTU.
        v[0] = 2;
        let e = error(parse_icmpv6(&v));
        assert!(e.mpls.is_empty());
        assert_eq!(e.mtu, 16 << 24);
    }

    #[test]
    fn echo_and_other_messages() {
        assert_eq!(
            parse_icmpv4(&V4_ECHO_REQUEST[20..]),
            Ok(IcmpMessage::EchoRequest {
                ident: 0x1234,
                seq: 7
            })
        );
        assert_eq!(
            parse_icmpv4(&[0, 0, 0xff, 0xff, 0xab, 0xcd, 0x00, 0x02]),
            Ok(IcmpMessage::EchoReply {
                ident: 0xabcd,
                seq: 2
            })
        );
        assert_eq!(
            parse_icmpv6(&[128, 0, 0, 0, 0, 1, 0, 9]),
            Ok(IcmpMessage::EchoRequest { ident: 1, seq: 9 })
        );
        assert_eq!(
            parse_icmpv6(&[129, 0, 0, 0, 0, 1, 0, 9]),
            Ok(IcmpMessage::EchoReply { ident: 1, seq: 9 })
        );
        // Redirect (5), timestamp (13, too short for etherparse's check), router solicitation.
        assert_eq!(
            parse_icmpv4(&[5, 1, 0, 0]),
            Ok(IcmpMessage::Other {
                icmp_type: 5,
                icmp_code: 1
            })
        );
        assert_eq!(
            parse_icmpv4(&[13, 0]),
            Ok(IcmpMessage::Other {
                icmp_type: 13,
                icmp_code: 0
            })
        );
        assert_eq!(
            parse_icmpv6(&[133, 0]),
            Ok(IcmpMessage::Other {
                icmp_type: 133,
                icmp_code: 0
            })
        );
        assert_eq!(
            parse_icmpv4(&[8, 0, 0, 0, 0]),
            Err(Error::Truncated { need: 8, have: 5 })
        );
        assert_eq!(
            parse_icmpv6(&[1]),
            Err(Error::Truncated { need: 2, have: 1 })
        );
    }

    #[test]
    fn quote_accessors_need_the_bytes() {
        let mut e = error(parse_icmpv4(icmp4(TE_TCP_8)));
        e.quote.transport = &TE_TCP_8[48..51];
        assert_eq!((e.quote.ports(), e.quote.tcp_seq()), (None, None));
        e.quote.transport = &TE_TCP_8[48..55];
        assert_eq!(
            (e.quote.ports(), e.quote.tcp_seq()),
            (Some((40000, 443)), None)
        );
        e.quote.transport = &[];
        assert_eq!(e.quote.ports(), None);
    }

    type Parser = fn(&[u8]) -> Result<IcmpMessage<'_>, Error>;

    #[test]
    fn every_truncation_is_handled() {
        for (name, v) in ALL {
            let (icmp, parse): (&[u8], Parser) = match (v[0] >> 4, v[9], v[6]) {
                (4, 1, _) => (icmp4(v), parse_icmpv4),
                (6, _, 58) => (icmp6(v), parse_icmpv6),
                _ => continue,
            };
            let full = parse(icmp).unwrap();
            for len in 0..icmp.len() {
                let r = parse(&icmp[..len]);
                let IcmpMessage::Error(full) = &full else {
                    assert!(len >= 8 || r.is_err(), "{name}[..{len}]");
                    continue;
                };
                // The quoted IP header must be complete: IHL*4 (IPv4) or 40 (IPv6) bytes.
                let quote_header = if v[0] >> 4 == 4 {
                    8 + usize::from(icmp[8] & 0xf) * 4
                } else {
                    8 + 40
                };
                match r {
                    Ok(IcmpMessage::Error(e)) => {
                        assert!(len >= quote_header, "{name}[..{len}]");
                        assert_eq!((e.quote.src, e.quote.dst), (full.quote.src, full.quote.dst));
                        // (A quoted IPv6 extension header that is cut off is not skipped;
                        // then the protocol says so and the "ports" are not ports.)
                        if e.quote.transport.len() >= 4 && e.quote.protocol == full.quote.protocol {
                            assert_eq!(e.quote.ports(), full.quote.ports(), "{name}[..{len}]");
                        }
                    }
                    Err(_) => assert!(len < quote_header, "{name}[..{len}]"),
                    Ok(other) => panic!("{name}[..{len}]: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn impossible_quote_headers() {
        // Quoted IHL 15 (60 bytes) but only 28 bytes quoted.
        let v = edited(TE_TCP_8, &[(28, 0x4f)]);
        assert_eq!(
            parse_icmpv4(icmp4(&v)),
            Err(Error::Truncated { need: 60, have: 28 })
        );
        // Quoted IHL 4 and quoted version 6 in an ICMPv4 error.
        let v = edited(TE_TCP_8, &[(28, 0x44)]);
        assert!(matches!(parse_icmpv4(icmp4(&v)), Err(Error::Malformed(_))));
        let v = edited(TE_TCP_8, &[(28, 0x65)]);
        assert!(matches!(parse_icmpv4(icmp4(&v)), Err(Error::Malformed(_))));
        // Quoted total length 0 or 20 (old BSD stacks): the 8 transport bytes still count.
        for tl in [0u8, 20] {
            let v = edited(TE_TCP_FULL, &[(30, 0), (31, tl)]);
            let e = error(parse_icmpv4(icmp4(&v)));
            assert_eq!(e.quote.transport.len(), 8);
            assert_tcp_probe_quote(&e.quote);
        }
        // A garbage RFC 4884 length too small for the quoted header is ignored.
        let v = edited(TE_TCP_FULL, &[(25, 1)]);
        assert_eq!(error(parse_icmpv4(icmp4(&v))).quote.transport.len(), 20);
        // A length beyond the captured bytes: everything present is quote.
        let v = edited(TE_TCP_FULL, &[(25, 200)]);
        assert_eq!(error(parse_icmpv4(icmp4(&v))).quote.transport.len(), 20);
    }

    #[test]
    fn malformed_extension_objects_are_ignored() {
        // Object length 0 (would never advance), 2 (< header), 0xffff (beyond the buffer),
        // and a length that cuts the last MPLS entry off the capture.
        for (hi, lo) in [(0x00, 0x00), (0x00, 0x02), (0xff, 0xff), (0x00, 0x10)] {
            let v = edited(TE_MPLS_4884, &[(160, hi), (161, lo)]);
            let e = error(parse_icmpv4(icmp4(&v)));
            assert!(e.mpls.is_empty(), "{hi:#x} {lo:#x}");
            assert_tcp_probe_quote(&e.quote);
        }
        // An object length that is not a multiple of 4: whole entries only.
        let v = edited(TE_MPLS_4884, &[(161, 0x0a)]);
        assert_eq!(error(parse_icmpv4(icmp4(&v))).mpls.len(), 1);
        // Other object classes (e.g. RFC 5837 interface information, class 2) are skipped.
        let v = edited(TE_MPLS_4884, &[(162, 2)]);
        assert!(error(parse_icmpv4(icmp4(&v))).mpls.is_empty());
        // A second object after the first is read too.
        let mut v = TE_MPLS_4884.to_vec();
        v.extend_from_slice(&[0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x01, 0x40]);
        let e = error(parse_icmpv4(icmp4(&v)));
        assert_eq!(e.mpls.len(), 3);
        assert_eq!(
            e.mpls[2],
            MplsLabel {
                label: 0,
                tc: 0,
                bottom: true,
                ttl: 64
            }
        );
        // Extension header alone, or cut inside it.
        for cut in 156..TE_MPLS_4884.len() {
            let e = error(parse_icmpv4(icmp4(&TE_MPLS_4884[..cut])));
            assert_tcp_probe_quote(&e.quote);
            assert!(e.mpls.is_empty(), "the object does not fit in {cut} bytes");
        }
    }

    #[test]
    fn time_exceeded_quoting_icmp_echo() {
        let e = error(parse_icmpv4(icmp4(TE_ICMP_ECHO)));
        assert_eq!(e.kind, ErrorKind::TimeExceeded);
        let q = &e.quote;
        assert_eq!((q.src, q.dst), (PROBER, TARGET));
        assert_eq!((q.protocol, q.ttl, q.tos, q.ident), (1, 1, 0, 0x3333));
        assert_eq!((q.flow_label, q.length), (0, 32));
        assert_eq!(q.transport.len(), 8);
        assert_eq!(q.icmp_echo(), Some((0x1234, 7)));
        assert_eq!(q.icmp_checksum(), Some(0x20fe));
        // The quoted echo is the one in V4_ECHO_REQUEST (checked independently).
        assert_eq!(q.transport, &V4_ECHO_REQUEST[20..28]);
        assert_eq!(
            (q.tcp_seq(), q.tcp_ack(), q.udp_checksum()),
            (None, None, None)
        );
    }

    #[test]
    fn icmpv6_time_exceeded_quoting_icmpv6_echo() {
        let e = error(parse_icmpv6(icmp6(V6_TE_ICMP_ECHO)));
        assert_eq!(e.kind, ErrorKind::TimeExceeded);
        assert_eq!((e.icmp_type, e.icmp_code), (3, 0));
        let q = &e.quote;
        assert_eq!((q.src, q.dst), (PROBER6, TARGET6));
        assert_eq!((q.protocol, q.ttl, q.tos, q.ident), (58, 1, 0, 0));
        // length = the quoted IPv6 payload length; the quoted flow label.
        assert_eq!((q.flow_label, q.length), (0x54321, 13));
        assert_eq!(q.transport, &V6_ECHO_PROBE[40..]);
        assert_eq!(q.icmp_echo(), Some((0x1234, 7)));
        assert_eq!(q.icmp_checksum(), Some(0xe813));
        assert_eq!(
            (q.tcp_seq(), q.tcp_ack(), q.udp_checksum()),
            (None, None, None)
        );
        // The whole message, through parse_ip.
        let p = crate::packet::parse_ip(V6_TE_ICMP_ECHO).unwrap();
        let crate::packet::Transport::Icmp(IcmpMessage::Error(e)) = p.transport else {
            panic!("not an ICMP error: {:?}", p.transport)
        };
        assert_eq!(e.quote.icmp_echo(), Some((0x1234, 7)));
    }

    #[test]
    fn quoted_tcp_ack_needs_12_bytes() {
        let e = error(parse_icmpv4(icmp4(TE_TCP_FULL)));
        assert_eq!(e.quote.tcp_ack(), Some(0x5566_7788));
        assert_eq!((e.quote.icmp_echo(), e.quote.icmp_checksum()), (None, None));
        let mut q = e.quote.clone();
        q.transport = &q.transport[..12];
        assert_eq!(q.tcp_ack(), Some(0x5566_7788));
        q.transport = &q.transport[..11];
        assert_eq!(q.tcp_ack(), None);
        assert_eq!(q.tcp_seq(), Some(0x1122_3344));
        // RFC 792 minimum quote: 8 bytes, no acknowledgment number.
        let e = error(parse_icmpv4(icmp4(TE_TCP_8)));
        assert_eq!(e.quote.tcp_ack(), None);
        // Not TCP.
        let e = error(parse_icmpv4(icmp4(PORT_UNREACH_UDP)));
        assert_eq!(e.quote.transport.len(), 16);
        assert_eq!(e.quote.tcp_ack(), None);
        // IPv6: the quoted TCP header after a destination options header, 8 bytes only;
        // an IPv6 quote of a whole TCP header.
        assert_eq!(error(parse_icmpv6(icmp6(V6_PTB))).quote.tcp_ack(), None);
        let mut v = icmp6(V6_TE_UDP).to_vec();
        v[8 + 6] = 6; // quoted next header: TCP; the 16 quoted bytes are then a TCP prefix
        let e = error(parse_icmpv6(&v));
        assert_eq!(e.quote.tcp_ack(), Some(u32::from_be_bytes(*b"svct")));
    }

    #[test]
    fn icmp_quote_accessors_need_the_bytes_and_the_right_family() {
        let e = error(parse_icmpv4(icmp4(TE_ICMP_ECHO)));
        let mut q = e.quote.clone();
        q.transport = &TE_ICMP_ECHO[48..55];
        assert_eq!((q.icmp_echo(), q.icmp_checksum()), (None, Some(0x20fe)));
        q.transport = &TE_ICMP_ECHO[48..51];
        assert_eq!((q.icmp_echo(), q.icmp_checksum()), (None, None));
        q.transport = &[];
        assert_eq!((q.icmp_echo(), q.icmp_checksum()), (None, None));
        // Protocol 58 in an IPv4 quote and 1 in an IPv6 quote are not "the ICMP".
        let v = edited(TE_ICMP_ECHO, &[(37, 58)]);
        let q = error(parse_icmpv4(icmp4(&v))).quote;
        assert_eq!((q.icmp_echo(), q.icmp_checksum()), (None, None));
        let v = edited(V6_TE_ICMP_ECHO, &[(54, 1)]);
        let q = error(parse_icmpv6(icmp6(&v))).quote;
        assert_eq!(q.protocol, 1);
        assert_eq!((q.icmp_echo(), q.icmp_checksum()), (None, None));
        // TCP and UDP quotes have no ICMP fields.
        for v in [TE_TCP_FULL, PORT_UNREACH_UDP] {
            let q = error(parse_icmpv4(icmp4(v))).quote;
            assert_eq!((q.icmp_echo(), q.icmp_checksum()), (None, None));
        }
        let q = error(parse_icmpv6(icmp6(V6_TE_UDP))).quote;
        assert_eq!((q.icmp_echo(), q.icmp_checksum()), (None, None));
    }

    /// A Paris ICMP probe as emitted, quoted by a router: the quoted checksum is the constant
    /// the prober chose and the quoted sequence identifies the probe.
    #[test]
    fn paris_icmp_probe_round_trips_through_a_quote() {
        use crate::probe::{emit_icmp_echo_v4, paris_icmp_ident_v4, EchoFields, Ipv4Fields};
        let ip = Ipv4Fields {
            src: Ipv4Addr::new(192, 0, 2, 10),
            dst: Ipv4Addr::new(198, 51, 100, 20),
            ttl: 1,
            tos: 0,
            dont_fragment: false,
            ident: 0x3333,
        };
        let mut probe = Vec::new();
        for seq in [0u16, 1, 2, 0x8000, 0xffff] {
            let ident = paris_icmp_ident_v4(seq, b"abcd", 0xc0de);
            emit_icmp_echo_v4(&ip, &EchoFields { ident, seq }, b"abcd", &mut probe);
            // Time Exceeded header (checksum not verified by the parser) + the first 28 bytes.
            let mut msg = vec![11, 0, 0, 0, 0, 0, 0, 0];
            msg.extend_from_slice(&probe[..28]);
            let q = error(parse_icmpv4(&msg)).quote;
            assert_eq!(q.icmp_checksum(), Some(0xc0de));
            assert_eq!(q.icmp_echo(), Some((ident, seq)));
        }
    }
}

//! Emission of probe packets: complete IPv4 datagrams ready for a raw socket with IP_HDRINCL,
//! and complete IPv6 packets (header included) for an AF_PACKET / IPV6_HDRINCL-style socket.
//! Checksums are computed; the IPv4 total length / IPv6 payload length is the real length.
//!
//! What it does:
//! - IPv4: a 20-byte header (RFC 791, no options, header checksum computed);
//! - IPv6: a 40-byte header (RFC 8200 §3: version 6, traffic class, 20-bit flow label, payload
//!   length, next header, hop limit, addresses; no extension headers);
//! - then a 20-byte TCP header (RFC 9293 §3.1, no options, checksum over the pseudo-header of
//!   RFC 9293 §3.1 / RFC 8200 §8.1), an 8-byte UDP header (RFC 768, checksum over the
//!   pseudo-header; a computed 0 is sent as 0xFFFF, and over IPv6 the checksum is mandatory,
//!   RFC 8200 §8.1), or an ICMP echo request (RFC 792 type 8; RFC 4443 §4.1 type 128, whose
//!   checksum covers the RFC 4443 §2.3 pseudo-header);
//! - then the payload. The header types and checksum code are etherparse's;
//! - Paris traceroute helpers (Augustin et al., "Avoiding traceroute anomalies with Paris
//!   traceroute", IMC 2006): the UDP payload that sets the UDP checksum to a chosen value, and
//!   the ICMP echo identifier that keeps the ICMP checksum constant while the sequence changes.
//!   They use a hand-written RFC 1071 sum and are tested against the emitters.
//!
//! What it does not do: IP or IPv6 extension options, TCP options other than copied ones
//! ([`emit_tcp_v4_with_options`]), fragmentation, jumbograms.
//! Payloads longer than the IPv4 total length / IPv6 payload length can carry are cut to fit
//! (emission never fails and never panics).
//!
//! Buffers: the IPv4 TCP/UDP emitters clear `out` and append; the other emitters resize `out`
//! to the packet length and overwrite every byte. Either way `out` holds exactly the packet.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpDscp, IpEcn, IpNumber,
    Ipv4Header, Ipv6FlowLabel, Ipv6Header, TcpHeader, UdpHeader,
};

/// The IPv4 header fields a probe sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Fields {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// TTL.
    pub ttl: u8,
    /// TOS byte (DSCP << 2 | ECN), copied from the flow.
    pub tos: u8,
    /// Don't-fragment flag, copied from the flow.
    pub dont_fragment: bool,
    /// Identification: identifies the probe. Must not be 0 (Linux fills 0 in with IP_HDRINCL).
    pub ident: u16,
}

/// A TCP probe segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFields {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags byte (see [`crate::packet::TcpInfo::flags`]).
    pub flags: u8,
    /// Raw window field.
    pub window: u16,
}

/// A UDP probe datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFields {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

/// The IP header of a probe, of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFields {
    /// IPv4.
    V4(Ipv4Fields),
    /// IPv6.
    V6(Ipv6Fields),
}

/// The transport header of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFields {
    /// A TCP segment.
    Tcp(TcpFields),
    /// A UDP datagram.
    Udp(UdpFields),
    /// An ICMP / ICMPv6 echo request.
    Echo(EchoFields),
}

/// Writes a probe of either family with any transport: the emitter below that the two headers
/// name. Returns the length.
pub fn emit(
    ip: &IpFields,
    transport: &TransportFields,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> usize {
    match (ip, transport) {
        (IpFields::V4(ip), TransportFields::Tcp(t)) => emit_tcp_v4(ip, t, payload, out),
        (IpFields::V4(ip), TransportFields::Udp(u)) => emit_udp_v4(ip, u, payload, out),
        (IpFields::V4(ip), TransportFields::Echo(e)) => emit_icmp_echo_v4(ip, e, payload, out),
        (IpFields::V6(ip), TransportFields::Tcp(t)) => emit_tcp_v6(ip, t, payload, out),
        (IpFields::V6(ip), TransportFields::Udp(u)) => emit_udp_v6(ip, u, payload, out),
        (IpFields::V6(ip), TransportFields::Echo(e)) => emit_icmp_echo_v6(ip, e, payload, out),
    }
}

/// Writes an IPv4+TCP probe with `payload` into `out` (cleared first). Returns the length.
///
/// A payload longer than 65535 - 40 bytes is cut to fit the IPv4 total length.
pub fn emit_tcp_v4(ip: &Ipv4Fields, tcp: &TcpFields, payload: &[u8], out: &mut Vec<u8>) -> usize {
    out.clear();
    let payload = fit(payload, TcpHeader::MIN_LEN);
    let mut header = tcp_header(tcp);
    let ip_header = ipv4_header(ip, IpNumber::TCP, TcpHeader::MIN_LEN + payload.len());
    // RFC 9293 §3.1: the checksum covers the pseudo-header (source, destination, zero,
    // protocol, TCP length), the header and the payload. It only fails on a length that does
    // not fit 16 bits, which `fit` rules out.
    header.checksum = header.calc_checksum_ipv4(&ip_header, payload).unwrap_or(0);
    out.extend_from_slice(&ip_header.to_bytes());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    out.len()
}

/// Writes an IPv4+TCP segment with TCP `options` (a copy of a client's SYN: its option bytes
/// as sent) and no payload into `out` (cleared first). Returns the length.
///
/// Options that are not a whole number of 32-bit words, or longer than 40 bytes, cannot be a
/// real header's: they are left out.
pub fn emit_tcp_v4_with_options(
    ip: &Ipv4Fields,
    tcp: &TcpFields,
    options: &[u8],
    out: &mut Vec<u8>,
) -> usize {
    out.clear();
    let mut header = tcp_header(tcp);
    if options.len() % 4 != 0 || header.set_options_raw(options).is_err() {
        header = tcp_header(tcp);
    }
    let ip_header = ipv4_header(ip, IpNumber::TCP, header.header_len());
    header.checksum = header.calc_checksum_ipv4(&ip_header, &[]).unwrap_or(0);
    out.extend_from_slice(&ip_header.to_bytes());
    out.extend_from_slice(&header.to_bytes());
    out.len()
}

/// Writes an IPv4+UDP probe with `payload` into `out` (cleared first). Returns the length.
///
/// A payload longer than 65535 - 28 bytes is cut to fit the IPv4 total length.
pub fn emit_udp_v4(ip: &Ipv4Fields, udp: &UdpFields, payload: &[u8], out: &mut Vec<u8>) -> usize {
    out.clear();
    let payload = fit(payload, UdpHeader::LEN);
    let ip_header = ipv4_header(ip, IpNumber::UDP, UdpHeader::LEN + payload.len());
    // RFC 768: checksum over the pseudo-header, header and payload; a computed 0 is sent as
    // all ones, because 0 means "no checksum". etherparse applies that rule itself. It only
    // fails on a payload too long for the length field, which `fit` rules out; the fallback
    // exists so that this function has no panic path.
    let header = UdpHeader::with_ipv4_checksum(udp.src_port, udp.dst_port, &ip_header, payload)
        .unwrap_or(UdpHeader {
            source_port: udp.src_port,
            destination_port: udp.dst_port,
            length: 0,
            checksum: 0,
        });
    out.extend_from_slice(&ip_header.to_bytes());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    out.len()
}

/// The IPv6 header fields a probe sets (RFC 8200 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Fields {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class (DSCP << 2 | ECN), copied from the flow.
    pub traffic_class: u8,
    /// Flow label. Only the low 20 bits are sent (the upper 12 are ignored). Routers may hash
    /// it for per-flow load balancing (RFC 6437), so it must stay constant within a flow.
    pub flow_label: u32,
}

/// ICMP echo request fields (RFC 792; RFC 4443 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoFields {
    /// Identifier.
    pub ident: u16,
    /// Sequence number.
    pub seq: u16,
}

/// Length of an ICMP/ICMPv6 echo header: type, code, checksum, identifier, sequence.
const ICMP_ECHO_LEN: usize = 8;
/// ICMP echo request type (RFC 792) and ICMPv6 echo request type (RFC 4443 §4.1).
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// Writes an IPv6+TCP probe with `payload` into `out` (resized to the packet length, every byte
/// overwritten). Returns the length.
///
/// The checksum covers the RFC 8200 §8.1 pseudo-header. A payload longer than 65535 - 20 bytes
/// is cut to fit the IPv6 payload length.
pub fn emit_tcp_v6(ip: &Ipv6Fields, tcp: &TcpFields, payload: &[u8], out: &mut Vec<u8>) -> usize {
    let payload = fit_v6(payload, TcpHeader::MIN_LEN);
    let ip_header = ipv6_header(ip, IpNumber::TCP, TcpHeader::MIN_LEN + payload.len());
    let mut header = tcp_header(tcp);
    // Fails only on a payload longer than u32::MAX, which `fit_v6` rules out.
    header.checksum = header.calc_checksum_ipv6(&ip_header, payload).unwrap_or(0);
    write_parts(out, &[&ip_header.to_bytes(), &header.to_bytes(), payload])
}

/// Writes an IPv6+TCP segment with `options` (raw option bytes, a whole number of 32-bit
/// words, at most 40) and no payload into `out` (cleared first). Returns the length. As
/// [`emit_tcp_v4_with_options`], options that cannot be a real header's are left out.
pub fn emit_tcp_v6_with_options(
    ip: &Ipv6Fields,
    tcp: &TcpFields,
    options: &[u8],
    out: &mut Vec<u8>,
) -> usize {
    out.clear();
    let mut header = tcp_header(tcp);
    if options.len() % 4 != 0 || header.set_options_raw(options).is_err() {
        header = tcp_header(tcp);
    }
    let ip_header = ipv6_header(ip, IpNumber::TCP, header.header_len());
    header.checksum = header.calc_checksum_ipv6(&ip_header, &[]).unwrap_or(0);
    out.extend_from_slice(&ip_header.to_bytes());
    out.extend_from_slice(&header.to_bytes());
    out.len()
}

/// Writes an IPv6+UDP probe with `payload` into `out` (resized to the packet length, every byte
/// overwritten). Returns the length.
///
/// The checksum is mandatory over IPv6 (RFC 8200 §8.1): a computed 0 is sent as 0xFFFF. A
/// payload longer than 65535 - 8 bytes is cut to fit the UDP and IPv6 length fields.
pub fn emit_udp_v6(ip: &Ipv6Fields, udp: &UdpFields, payload: &[u8], out: &mut Vec<u8>) -> usize {
    let payload = fit_v6(payload, UdpHeader::LEN);
    let ip_header = ipv6_header(ip, IpNumber::UDP, UdpHeader::LEN + payload.len());
    // etherparse sends a computed 0 as 0xFFFF. It fails only on a payload longer than the
    // length field, which `fit_v6` rules out; the fallback (checksum from the hand-written sum)
    // exists so that this function has no panic path.
    let header = UdpHeader::with_ipv6_checksum(udp.src_port, udp.dst_port, &ip_header, payload)
        .unwrap_or_else(|_| {
            let length = u16::try_from(UdpHeader::LEN + payload.len()).unwrap_or(u16::MAX);
            let sum = udp_fixed_sum(residue(&ip.src.octets()) + residue(&ip.dst.octets()), udp)
                + residue(payload);
            UdpHeader {
                source_port: udp.src_port,
                destination_port: udp.dst_port,
                length,
                checksum: match !fold(sum) {
                    0 => 0xffff,
                    c => c,
                },
            }
        });
    write_parts(out, &[&ip_header.to_bytes(), &header.to_bytes(), payload])
}

/// One's-complement 16-bit addition (RFC 1071).
pub fn ones_add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// Makes the checksum at `csum_at` of an emitted packet equal `want` by writing the 16-bit
/// word at `word_at`, which must hold 0 and lie inside the checksummed data at an even offset
/// from its start. Adding `x` to the one's-complement sum `s` turns the checksum `!s` into
/// `!(s + x)`, so `x = !want - s` (RFC 1624's incremental update, run backwards). This is how
/// Paris traceroute keeps a flow identifier constant while the probe number changes (UDP:
/// checksum = probe number via two payload bytes; ICMP: constant checksum via the identifier).
/// Out-of-range offsets leave `buf` unchanged.
pub fn force_checksum(buf: &mut [u8], csum_at: usize, word_at: usize, want: u16) {
    let (Some(c), Some(_)) = (buf.get(csum_at..csum_at + 2), buf.get(word_at..word_at + 2)) else {
        return;
    };
    let current = u16::from_be_bytes([c[0], c[1]]);
    let x = ones_add(!want, current);
    buf[word_at..word_at + 2].copy_from_slice(&x.to_be_bytes());
    buf[csum_at..csum_at + 2].copy_from_slice(&want.to_be_bytes());
}

/// Writes an IPv4 ICMP echo request (RFC 792 type 8, code 0, checksum computed) with `payload`
/// into `out` (resized to the packet length, every byte overwritten). Returns the length.
///
/// A payload longer than 65535 - 28 bytes is cut to fit the IPv4 total length.
pub fn emit_icmp_echo_v4(
    ip: &Ipv4Fields,
    echo: &EchoFields,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> usize {
    let payload = fit(payload, ICMP_ECHO_LEN);
    let ip_header = ipv4_header(ip, IpNumber::ICMP, ICMP_ECHO_LEN + payload.len());
    let icmp = Icmpv4Header::with_checksum(
        Icmpv4Type::EchoRequest(IcmpEchoHeader {
            id: echo.ident,
            seq: echo.seq,
        }),
        payload,
    );
    write_parts(out, &[&ip_header.to_bytes(), &icmp.to_bytes(), payload])
}

/// Writes an IPv6 ICMPv6 echo request (next header 58; RFC 4443 §4.1 type 128, code 0) with
/// `payload` into `out` (resized to the packet length, every byte overwritten). Returns the
/// length. The checksum covers the RFC 4443 §2.3 pseudo-header.
///
/// A payload longer than 65535 - 8 bytes is cut to fit the IPv6 payload length.
pub fn emit_icmp_echo_v6(
    ip: &Ipv6Fields,
    echo: &EchoFields,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> usize {
    let payload = fit_v6(payload, ICMP_ECHO_LEN);
    let ip_header = ipv6_header(ip, IpNumber::IPV6_ICMP, ICMP_ECHO_LEN + payload.len());
    let icmp_type = Icmpv6Type::EchoRequest(IcmpEchoHeader {
        id: echo.ident,
        seq: echo.seq,
    });
    // Fails only on a payload longer than u32::MAX, which `fit_v6` rules out; the fallback
    // computes the same checksum with the hand-written sum.
    let icmp = Icmpv6Header::with_checksum(icmp_type, ip.src.octets(), ip.dst.octets(), payload)
        .unwrap_or_else(|_| Icmpv6Header {
            icmp_type,
            checksum: !fold(
                icmpv6_echo_fixed_sum(ip, echo.seq, payload.len())
                    + u64::from(echo.ident)
                    + residue(payload),
            ),
        });
    write_parts(out, &[&ip_header.to_bytes(), &icmp.to_bytes(), payload])
}

/// Writes an IP datagram of either family carrying the ICMP / ICMPv6 message `icmp` (type,
/// code, a checksum field, then the body, e.g. a reverse-traceroute request or response) into
/// `out`; the checksum at `icmp[2..4]` is computed (RFC 792; ICMPv6 over the RFC 4443 §2.3
/// pseudo-header). Returns the length. A message that does not fit the IP length field is cut.
pub fn emit_icmp_message(ip: &IpFields, icmp: &[u8], out: &mut Vec<u8>) -> usize {
    let (header, icmp): (Vec<u8>, &[u8]) = match ip {
        IpFields::V4(v4) => {
            let icmp = fit(icmp, 0);
            (
                ipv4_header(v4, IpNumber::ICMP, icmp.len())
                    .to_bytes()
                    .to_vec(),
                icmp,
            )
        }
        IpFields::V6(v6) => {
            let icmp = fit_v6(icmp, 0);
            (
                ipv6_header(v6, IpNumber::IPV6_ICMP, icmp.len())
                    .to_bytes()
                    .to_vec(),
                icmp,
            )
        }
    };
    let len = write_parts(out, &[&header, icmp]);
    let h = header.len();
    if len < h + 4 {
        return len;
    }
    out[h + 2] = 0;
    out[h + 3] = 0;
    let pseudo = match ip {
        IpFields::V4(_) => 0,
        IpFields::V6(v6) => {
            residue(&v6.src.octets())
                + residue(&v6.dst.octets())
                + (icmp.len() as u64 % 0xffff)
                + u64::from(IpNumber::IPV6_ICMP.0)
        }
    };
    let sum = pseudo + residue(&out[h..]);
    // RFC 1071: the complement of the folded sum (a sum that folds to 0xFFFF gives 0).
    let checksum = !fold(sum);
    out[h + 2..h + 4].copy_from_slice(&checksum.to_be_bytes());
    len
}

/// Paris traceroute for UDP over IPv4 (Augustin et al., IMC 2006): the two payload bytes that
/// make the UDP checksum of this datagram equal `want`, when the datagram is
/// [`emit_udp_v4`]`(ip, udp, &payload)` with exactly these 2 bytes as payload (UDP length 10).
/// Per-flow load balancers hash the 5-tuple, which stays constant, while the probe number is
/// carried in the checksum, which routers quote back.
///
/// Only the addresses and ports enter the checksum (the IPv4 TTL, TOS, identification and DF do
/// not). Every `want` in 1..=0xFFFF is reached exactly: 0xFFFF because a computed 0 is sent as
/// 0xFFFF (RFC 768). `want == 0` cannot be reached (0 means "no checksum"): the returned bytes
/// then give 0xFFFF, the same as for `want == 0xFFFF`.
pub fn paris_udp_payload_v4(ip: &Ipv4Fields, udp: &UdpFields, want: u16) -> [u8; 2] {
    let addresses = residue(&ip.src.octets()) + residue(&ip.dst.octets());
    solve(udp_fixed_sum(addresses, udp), !want).to_be_bytes()
}

/// Paris traceroute for UDP over IPv6: the two payload bytes that make the UDP checksum of
/// [`emit_udp_v6`]`(ip, udp, &payload)` (payload = exactly these 2 bytes) equal `want`. See
/// [`paris_udp_payload_v4`]; the edge cases are the same (0 is never sent over IPv6 either,
/// RFC 8200 §8.1: `want == 0` gives 0xFFFF). Only the addresses and ports enter the checksum
/// (not the hop limit, traffic class or flow label).
pub fn paris_udp_payload_v6(ip: &Ipv6Fields, udp: &UdpFields, want: u16) -> [u8; 2] {
    let addresses = residue(&ip.src.octets()) + residue(&ip.dst.octets());
    solve(udp_fixed_sum(addresses, udp), !want).to_be_bytes()
}

/// Paris traceroute for ICMP echo over IPv4: per-flow load balancers hash the first 4 bytes of
/// the ICMP header (type, code, checksum), so the checksum must stay constant while the
/// sequence number changes. Returns the identifier that makes the checksum of
/// [`emit_icmp_echo_v4`] with this `seq` and `payload` equal `want_checksum`.
///
/// Every `want_checksum` in 0..=0xFFFE is reached exactly. 0xFFFF is impossible (it needs a
/// one's-complement sum of 0, and the type byte 8 makes the sum non-zero): the returned
/// identifier then gives checksum 0. The payload is cut like [`emit_icmp_echo_v4`] cuts it.
pub fn paris_icmp_ident_v4(seq: u16, payload: &[u8], want_checksum: u16) -> u16 {
    let payload = fit(payload, ICMP_ECHO_LEN);
    let fixed =
        u64::from(u16::from_be_bytes([ICMP_ECHO_REQUEST, 0])) + u64::from(seq) + residue(payload);
    solve(fixed, !want_checksum)
}

/// Paris traceroute for ICMPv6 echo: as [`paris_icmp_ident_v4`], for [`emit_icmp_echo_v6`].
/// The ICMPv6 checksum also covers the RFC 4443 §2.3 pseudo-header (addresses, length, next
/// header 58), hence `ip` (only its addresses matter). Every `want_checksum` in 0..=0xFFFE is
/// reached exactly; 0xFFFF gives 0 instead.
pub fn paris_icmp_ident_v6(ip: &Ipv6Fields, seq: u16, payload: &[u8], want_checksum: u16) -> u16 {
    let payload = fit_v6(payload, ICMP_ECHO_LEN);
    let fixed = icmpv6_echo_fixed_sum(ip, seq, payload.len()) + residue(payload);
    solve(fixed, !want_checksum)
}

/// The TCP header of a probe (no options, checksum 0).
fn tcp_header(tcp: &TcpFields) -> TcpHeader {
    let mut header = TcpHeader::new(tcp.src_port, tcp.dst_port, tcp.seq, tcp.window);
    header.acknowledgment_number = tcp.ack;
    header.fin = tcp.flags & 0x01 != 0;
    header.syn = tcp.flags & 0x02 != 0;
    header.rst = tcp.flags & 0x04 != 0;
    header.psh = tcp.flags & 0x08 != 0;
    header.ack = tcp.flags & 0x10 != 0;
    header.urg = tcp.flags & 0x20 != 0;
    header.ece = tcp.flags & 0x40 != 0;
    header.cwr = tcp.flags & 0x80 != 0;
    header
}

/// The 40-byte IPv6 header of a probe whose upper-layer header and payload take
/// `ip_payload_len` bytes (no extension headers).
fn ipv6_header(ip: &Ipv6Fields, next_header: IpNumber, ip_payload_len: usize) -> Ipv6Header {
    Ipv6Header {
        traffic_class: ip.traffic_class,
        // The mask makes `try_new` infallible (it rejects values above 20 bits).
        flow_label: Ipv6FlowLabel::try_new(ip.flow_label & Ipv6FlowLabel::MAX_U32)
            .unwrap_or(Ipv6FlowLabel::ZERO),
        payload_length: u16::try_from(ip_payload_len).unwrap_or(u16::MAX),
        next_header,
        hop_limit: ip.hop_limit,
        source: ip.src.octets(),
        destination: ip.dst.octets(),
    }
}

/// Resizes `out` to the total length of `parts` and copies them in, one after the other, over
/// whatever `out` held. Returns the length.
fn write_parts(out: &mut Vec<u8>, parts: &[&[u8]]) -> usize {
    let len = parts.iter().map(|p| p.len()).sum();
    out.resize(len, 0);
    let mut at = 0;
    for part in parts {
        let end = at + part.len();
        if let Some(dst) = out.get_mut(at..end) {
            dst.copy_from_slice(part);
        }
        at = end;
    }
    len
}

/// The RFC 1071 sum of `bytes` (big-endian 16-bit words, an odd last byte padded with zero)
/// modulo 0xFFFF. One's-complement addition is addition modulo 0xFFFF (2^16 ≡ 1), so residues
/// of word-aligned pieces can simply be added; [`fold`] turns the result back into the 16-bit
/// one's-complement sum. A u64 cannot overflow: even 2^40 bytes of 0xFF sum to below 2^56.
fn residue(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(2);
    let mut sum: u64 = (&mut words)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum % 0xffff
}

/// The 16-bit one's-complement sum (RFC 1071, end-around carry) of words whose plain sum is
/// congruent to `sum` modulo 0xFFFF and not zero: a multiple of 0xFFFF folds to 0xFFFF ("-0"),
/// never to 0, because a sum of words that are not all zero never folds to 0.
fn fold(sum: u64) -> u16 {
    match sum % 0xffff {
        0 => 0xffff,
        r => r as u16,
    }
}

/// The 16-bit word `x` (0..=0xFFFE) that makes `fixed + x` congruent to `target` modulo 0xFFFF.
///
/// Used with `target = !want`: the checksum is the complement of the folded sum, and the fixed
/// words are never all zero (they hold the protocol number or the ICMP type), so the folded sum
/// is `!want` when that is in 1..=0xFFFE, and 0xFFFF when `!want` is 0 or 0xFFFF.
fn solve(fixed: u64, target: u16) -> u16 {
    let target = u64::from(target) % 0xffff;
    ((target + 0xffff - fixed % 0xffff) % 0xffff) as u16
}

/// Sum (modulo 0xFFFF) of the UDP words that do not depend on the payload bytes, for a
/// datagram with a 2-byte payload: pseudo-header (addresses, given as `addresses`; protocol 17;
/// UDP length 10; RFC 768 / RFC 8200 §8.1: the 32-bit IPv6 length of 10 has the same sum as
/// the 16-bit one), ports, UDP length 10 again, and the checksum field taken as 0.
fn udp_fixed_sum(addresses: u64, udp: &UdpFields) -> u64 {
    const UDP_LEN: u64 = UdpHeader::LEN as u64 + 2;
    addresses
        + u64::from(IpNumber::UDP.0)
        + UDP_LEN
        + u64::from(udp.src_port)
        + u64::from(udp.dst_port)
        + UDP_LEN
}

/// Sum (modulo 0xFFFF) of the ICMPv6 echo request words other than the identifier and the
/// payload: the RFC 4443 §2.3 pseudo-header (addresses, upper-layer length, next header 58),
/// type 128 / code 0, the sequence number, and the checksum field taken as 0.
fn icmpv6_echo_fixed_sum(ip: &Ipv6Fields, seq: u16, payload_len: usize) -> u64 {
    // RFC 4443 §2.3: the 32-bit upper-layer packet length; its two words sum to this.
    let length = (ICMP_ECHO_LEN as u64).saturating_add(payload_len as u64) % 0xffff;
    residue(&ip.src.octets())
        + residue(&ip.dst.octets())
        + length
        + u64::from(IpNumber::IPV6_ICMP.0)
        + u64::from(u16::from_be_bytes([ICMPV6_ECHO_REQUEST, 0]))
        + u64::from(seq)
}

/// Cuts `payload` so that a `transport_header`-byte header and the payload fit the 16-bit IPv6
/// payload length (no extension headers).
fn fit_v6(payload: &[u8], transport_header: usize) -> &[u8] {
    let max = usize::from(u16::MAX) - transport_header;
    payload.get(..max).unwrap_or(payload)
}

/// Cuts `payload` so that a 20-byte IPv4 header, a `transport_header`-byte header and the
/// payload fit the 16-bit IPv4 total length.
fn fit(payload: &[u8], transport_header: usize) -> &[u8] {
    let max = usize::from(u16::MAX) - Ipv4Header::MIN_LEN - transport_header;
    payload.get(..max).unwrap_or(payload)
}

/// The 20-byte IPv4 header of a probe carrying `ip_payload_len` bytes, checksum included.
fn ipv4_header(ip: &Ipv4Fields, protocol: IpNumber, ip_payload_len: usize) -> Ipv4Header {
    let mut h = Ipv4Header {
        // RFC 2474 / RFC 3168: the TOS byte is DSCP (6 bits) then ECN (2 bits). Both
        // constructors only fail on values wider than their field, which the shifts/masks
        // rule out.
        dscp: IpDscp::try_new(ip.tos >> 2).unwrap_or(IpDscp::ZERO),
        ecn: IpEcn::try_new(ip.tos & 0x3).unwrap_or(IpEcn::ZERO),
        total_len: u16::try_from(Ipv4Header::MIN_LEN + ip_payload_len).unwrap_or(u16::MAX),
        identification: ip.ident,
        dont_fragment: ip.dont_fragment,
        more_fragments: false,
        fragment_offset: Default::default(),
        time_to_live: ip.ttl,
        protocol,
        header_checksum: 0,
        source: ip.src.octets(),
        destination: ip.dst.octets(),
        options: Default::default(),
    };
    h.header_checksum = h.calc_header_checksum();
    h
}

#[cfg(test)]
mod tests {

    /// `emit_icmp_message` computes the checksums of the reverse-traceroute vectors (IPv4,
    /// and IPv6 over its pseudo-header), whatever the checksum field held.
    #[test]
    fn icmp_messages_get_the_vectors_checksums() {
        use crate::vectors::{REVTR_REQUEST, REVTR_SUCCESS, REVTR_SUCCESS_V6};
        let v4 = IpFields::V4(Ipv4Fields {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: Ipv4Addr::new(198, 51, 100, 1),
            ttl: 64,
            tos: 0,
            dont_fragment: false,
            ident: 0,
        });
        let v6 = IpFields::V6(Ipv6Fields {
            src: "2001:db8::20".parse().unwrap(),
            dst: "2001:db8::10".parse().unwrap(),
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
        });
        for (ip, msg, h) in [
            (v4, REVTR_REQUEST, 20),
            (v4, REVTR_SUCCESS, 20),
            (v6, REVTR_SUCCESS_V6, 40),
        ] {
            let mut zeroed = msg.to_vec();
            zeroed[2] = 0xde;
            zeroed[3] = 0xad;
            let mut out = Vec::new();
            assert_eq!(emit_icmp_message(&ip, &zeroed, &mut out), h + msg.len());
            assert_eq!(&out[h..], msg);
            let p = crate::packet::parse_ip(&out).unwrap();
            assert_eq!(p.ip.ttl, 64);
        }
    }

    use super::*;
    use crate::icmp::{ones_complement_sum, IcmpMessage};
    use crate::packet::{parse_ip, IpInfo, Transport, UdpInfo};
    use crate::vectors::{
        XorShift, V4_ECHO_PROBE, V4_ECHO_REQUEST, V6_ECHO_PROBE, V6_TCP_PROBE, V6_UDP_PROBE,
    };
    use std::net::IpAddr;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);

    fn ip_fields(ttl: u8, tos: u8, dont_fragment: bool, ident: u16) -> Ipv4Fields {
        Ipv4Fields {
            src: SRC,
            dst: DST,
            ttl,
            tos,
            dont_fragment,
            ident,
        }
    }

    /// A copy of a real SYN, options included, is byte for byte the SYN (checksums too); with
    /// another TTL and identification only those and the IP checksum change.
    #[test]
    fn a_syn_copy_is_the_syn() {
        let syn = crate::vectors::V4_TCP_SYN;
        let ip = Ipv4Fields {
            src: "192.0.2.10".parse().unwrap(),
            dst: "198.51.100.20".parse().unwrap(),
            ttl: 64,
            tos: 0x02,
            dont_fragment: true,
            ident: 0x7a7b,
        };
        let tcp = TcpFields {
            src_port: 40000,
            dst_port: 443,
            seq: 0x0a0b_0c0d,
            ack: 0,
            flags: 0x02,
            window: 64240,
        };
        let mut buf = vec![0xa5; 100];
        assert_eq!(
            emit_tcp_v4_with_options(&ip, &tcp, &syn[40..60], &mut buf),
            60
        );
        assert_eq!(buf, syn);
        let probe = Ipv4Fields {
            ttl: 3,
            ident: 0x1235,
            ..ip
        };
        emit_tcp_v4_with_options(&probe, &tcp, &syn[40..60], &mut buf);
        let differ: Vec<usize> = (0..60).filter(|&i| buf[i] != syn[i]).collect();
        assert_eq!(
            differ,
            vec![4, 5, 8, 10, 11],
            "identification, TTL, header checksum"
        );
        // Options that no header can carry are left out rather than emitted wrong.
        assert_eq!(
            emit_tcp_v4_with_options(&ip, &tcp, &syn[40..59], &mut buf),
            40
        );
        assert_eq!(emit_tcp_v4_with_options(&ip, &tcp, &[1; 44], &mut buf), 40);
    }

    #[test]
    fn forced_udp_checksums_verify() {
        let ip = Ipv4Fields {
            src: "198.18.0.2".parse().unwrap(),
            dst: "198.19.1.2".parse().unwrap(),
            ttl: 3,
            tos: 0,
            dont_fragment: true,
            ident: 7,
        };
        let udp = UdpFields {
            src_port: 40000,
            dst_port: 33434,
        };
        let mut buf = Vec::new();
        for want in [1u16, 2, 0x1234, 0x8000, 0xfffe, 65025] {
            for extra in [0usize, 1, 7, 40] {
                emit_udp_v4(&ip, &udp, &vec![0u8; 2 + extra], &mut buf);
                force_checksum(&mut buf, 26, 28, want);
                assert_eq!(u16::from_be_bytes([buf[26], buf[27]]), want);
                assert_eq!(
                    transport_sum(&buf),
                    0xffff,
                    "want {want:#x} extra {extra}: the datagram verifies"
                );
            }
        }
        // Out of range: unchanged, no panic.
        let before = buf.clone();
        force_checksum(&mut buf, 1000, 28, 5);
        assert_eq!(buf, before);
    }

    /// Independent check of a transport checksum: the one's-complement sum over the RFC 768 /
    /// RFC 9293 pseudo-header, the transport header and the payload must be 0xffff.
    fn transport_sum(packet: &[u8]) -> u16 {
        let ihl = usize::from(packet[0] & 0xf) * 4;
        let transport = &packet[ihl..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&packet[12..20]); // source, destination
        pseudo.extend_from_slice(&[0, packet[9]]); // zero, protocol
        pseudo.extend_from_slice(&(transport.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(transport);
        ones_complement_sum(&pseudo)
    }

    #[rustfmt::skip]
    const TCP_PROBE: [u8; 42] = [
        // IPv4 (RFC 791): version 4, IHL 5, TOS 0x02, total length 42
        0x45, 0x02, 0x00, 0x2a,
        // ident 0x1234, flags DF, fragment offset 0
        0x12, 0x34, 0x40, 0x00,
        // TTL 5, protocol 6, header checksum 0x7746
        0x05, 0x06, 0x77, 0x46,
        // source 192.0.2.10
        0xc0, 0x00, 0x02, 0x0a,
        // destination 198.51.100.20
        0xc6, 0x33, 0x64, 0x14,
        // TCP (RFC 9293 §3.1): source port 40000, destination port 443
        0x9c, 0x40, 0x01, 0xbb,
        // sequence number 0x11223344
        0x11, 0x22, 0x33, 0x44,
        // acknowledgment number 0x55667788
        0x55, 0x66, 0x77, 0x88,
        // data offset 5, flags 0x18 (PSH|ACK), window 501
        0x50, 0x18, 0x01, 0xf5,
        // checksum 0xa9c9, urgent pointer 0
        0xa9, 0xc9, 0x00, 0x00,
        // payload "hi"
        0x68, 0x69,
    ];

    #[rustfmt::skip]
    const UDP_PROBE: [u8; 33] = [
        // IPv4 (RFC 791): version 4, IHL 5, TOS 0xb8 (DSCP EF), total length 33
        0x45, 0xb8, 0x00, 0x21,
        // ident 0xbeef, no flags, fragment offset 0
        0xbe, 0xef, 0x00, 0x00,
        // TTL 3, protocol 17, header checksum 0x0bd3
        0x03, 0x11, 0x0b, 0xd3,
        // source 192.0.2.10
        0xc0, 0x00, 0x02, 0x0a,
        // destination 198.51.100.20
        0xc6, 0x33, 0x64, 0x14,
        // UDP (RFC 768): source port 40001, destination port 33435
        0x9c, 0x41, 0x82, 0x9b,
        // length 13, checksum 0xabb9
        0x00, 0x0d, 0xab, 0xb9,
        // payload "svctr" (odd length: the checksum pads it with a zero byte)
        0x73, 0x76, 0x63, 0x74, 0x72,
    ];

    fn tcp_fields() -> TcpFields {
        TcpFields {
            src_port: 40000,
            dst_port: 443,
            seq: 0x1122_3344,
            ack: 0x5566_7788,
            flags: 0x18,
            window: 501,
        }
    }

    #[test]
    fn emit_tcp_exact_bytes() {
        let mut out = vec![0xaa; 7]; // stale content must be cleared
        let n = emit_tcp_v4(
            &ip_fields(5, 0x02, true, 0x1234),
            &tcp_fields(),
            b"hi",
            &mut out,
        );
        assert_eq!(n, 42);
        assert_eq!(&out[..], &TCP_PROBE[..]);
    }

    #[test]
    fn emit_udp_exact_bytes() {
        let mut out = Vec::new();
        let udp = UdpFields {
            src_port: 40001,
            dst_port: 33435,
        };
        let n = emit_udp_v4(&ip_fields(3, 0xb8, false, 0xbeef), &udp, b"svctr", &mut out);
        assert_eq!(n, 33);
        assert_eq!(&out[..], &UDP_PROBE[..]);
    }

    #[test]
    fn emitted_checksums_verify() {
        let mut out = Vec::new();
        emit_tcp_v4(
            &ip_fields(5, 0x02, true, 0x1234),
            &tcp_fields(),
            b"hi",
            &mut out,
        );
        assert_eq!(
            ones_complement_sum(&out[..20]),
            0xffff,
            "IPv4 header checksum"
        );
        assert_eq!(transport_sum(&out), 0xffff, "TCP checksum");
        // etherparse agrees (it recomputes the checksums from the parsed headers).
        let (ip, rest) = etherparse::Ipv4Header::from_slice(&out).unwrap();
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        let (tcp, payload) = etherparse::TcpHeader::from_slice(rest).unwrap();
        assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(&ip, payload).unwrap());

        let udp = UdpFields {
            src_port: 40001,
            dst_port: 33435,
        };
        for payload in [&b""[..], b"x", b"svctr", &[0xff; 301]] {
            emit_udp_v4(&ip_fields(3, 0xb8, false, 0xbeef), &udp, payload, &mut out);
            assert_eq!(ones_complement_sum(&out[..20]), 0xffff);
            assert_eq!(transport_sum(&out), 0xffff);
        }
    }

    #[test]
    fn emitted_probe_parses_back() {
        let mut out = Vec::new();
        emit_tcp_v4(
            &ip_fields(5, 0x02, true, 0x1234),
            &tcp_fields(),
            b"hi",
            &mut out,
        );
        let p = parse_ip(&out).unwrap();
        assert_eq!(p.ip.ttl, 5);
        assert_eq!(p.ip.tos, 0x02);
        assert!(p.ip.dont_fragment);
        assert_eq!(p.ip.ident, 0x1234);
        let Transport::Tcp(t) = p.transport else {
            panic!("not TCP: {:?}", p.transport)
        };
        assert_eq!(
            (t.src_port, t.dst_port, t.seq, t.ack),
            (40000, 443, 0x1122_3344, 0x5566_7788)
        );
        assert_eq!((t.flags, t.window, t.payload_len), (0x18, 501, 2));
        // every flag bit round-trips
        for bit in 0..8 {
            let tcp = TcpFields {
                flags: 1 << bit,
                ..tcp_fields()
            };
            emit_tcp_v4(&ip_fields(1, 0, false, 1), &tcp, &[], &mut out);
            assert_eq!(out[33], 1 << bit);
            assert_eq!(transport_sum(&out), 0xffff);
        }
    }

    #[test]
    fn udp_zero_checksum_is_sent_as_all_ones() {
        let ip = ip_fields(3, 0, false, 0x0101);
        let udp = UdpFields {
            src_port: 40001,
            dst_port: 33435,
        };
        let mut out = Vec::new();
        // With a 2-byte payload of 0, the checksum is c = !S. Sending c itself as the payload
        // adds c to the sum: S + !S = 0xffff, so the computed checksum becomes !0xffff = 0.
        emit_udp_v4(&ip, &udp, &[0, 0], &mut out);
        let c = [out[26], out[27]];
        emit_udp_v4(&ip, &udp, &c, &mut out);
        assert_eq!(
            &out[26..28],
            &[0xff, 0xff],
            "RFC 768: computed 0 is transmitted as 0xffff"
        );
        assert_eq!(transport_sum(&out), 0xffff);
    }

    #[test]
    fn oversized_payload_is_cut_to_fit() {
        let big = vec![0x5a; 70_000];
        let mut out = Vec::new();
        let n = emit_tcp_v4(&ip_fields(1, 0, true, 7), &tcp_fields(), &big, &mut out);
        assert_eq!(n, 65535);
        assert_eq!(&out[2..4], &[0xff, 0xff]);
        assert_eq!(transport_sum(&out), 0xffff);
        let udp = UdpFields {
            src_port: 1,
            dst_port: 2,
        };
        let n = emit_udp_v4(&ip_fields(1, 0, true, 7), &udp, &big, &mut out);
        assert_eq!(n, 65535);
        assert_eq!(&out[24..26], &(65535u16 - 20).to_be_bytes());
        assert_eq!(transport_sum(&out), 0xffff);
    }

    const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
    const DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20);

    fn ip6_fields(hop_limit: u8, traffic_class: u8, flow_label: u32) -> Ipv6Fields {
        Ipv6Fields {
            src: SRC6,
            dst: DST6,
            hop_limit,
            traffic_class,
            flow_label,
        }
    }

    /// Independent check of an IPv6 upper-layer checksum: the one's-complement sum over the
    /// RFC 8200 §8.1 / RFC 4443 §2.3 pseudo-header (source, destination, 32-bit upper-layer
    /// length, three zero bytes, next header) and the upper-layer packet must be 0xffff.
    fn transport_sum_v6(packet: &[u8]) -> u16 {
        let upper = &packet[40..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&packet[8..40]); // source, destination
        pseudo.extend_from_slice(&(upper.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, packet[6]]); // zero, next header
        pseudo.extend_from_slice(upper);
        ones_complement_sum(&pseudo)
    }

    /// A buffer full of 0xa5 and longer than any test packet: a byte the emitter forgets to
    /// write keeps 0xa5 and breaks the exact-bytes comparison.
    fn prefilled() -> Vec<u8> {
        vec![0xa5; 256]
    }

    fn random_v4(rng: &mut XorShift) -> Ipv4Fields {
        Ipv4Fields {
            src: Ipv4Addr::from(rng.next() as u32),
            dst: Ipv4Addr::from(rng.next() as u32),
            ttl: rng.next() as u8,
            tos: rng.next() as u8,
            dont_fragment: rng.below(2) == 0,
            ident: rng.next() as u16,
        }
    }

    fn random_v6(rng: &mut XorShift) -> Ipv6Fields {
        let addr = |rng: &mut XorShift| {
            Ipv6Addr::from(u128::from(rng.next()) << 64 | u128::from(rng.next()))
        };
        Ipv6Fields {
            src: addr(rng),
            dst: addr(rng),
            hop_limit: rng.next() as u8,
            traffic_class: rng.next() as u8,
            flow_label: rng.next() as u32,
        }
    }

    fn random_payload(rng: &mut XorShift, max: usize) -> Vec<u8> {
        (0..rng.below(max + 1)).map(|_| rng.next() as u8).collect()
    }

    #[test]
    fn emit_tcp_v6_exact_bytes() {
        let ip = ip6_fields(5, 0x02, 0x12345);
        for mut out in [prefilled(), vec![0xa5; 3], Vec::new()] {
            let n = emit_tcp_v6(&ip, &tcp_fields(), b"hi", &mut out);
            assert_eq!(n, 62);
            assert_eq!(&out[..], V6_TCP_PROBE);
        }
        assert_eq!(transport_sum_v6(V6_TCP_PROBE), 0xffff);
    }

    #[test]
    fn emit_udp_v6_exact_bytes() {
        let udp = UdpFields {
            src_port: 40001,
            dst_port: 33435,
        };
        let mut out = prefilled();
        let n = emit_udp_v6(&ip6_fields(3, 0xb8, 0xabcde), &udp, b"svctr", &mut out);
        assert_eq!(n, 53);
        assert_eq!(&out[..], V6_UDP_PROBE);
        assert_eq!(transport_sum_v6(V6_UDP_PROBE), 0xffff);
    }

    #[test]
    fn emit_icmp_echo_v4_exact_bytes() {
        let mut out = prefilled();
        let echo = EchoFields {
            ident: 0xbeef,
            seq: 0x0102,
        };
        let n = emit_icmp_echo_v4(&ip_fields(2, 0x10, true, 0x5151), &echo, b"abcde", &mut out);
        assert_eq!(n, 33);
        assert_eq!(&out[..], V4_ECHO_PROBE);
        assert_eq!(ones_complement_sum(&out[..20]), 0xffff, "IPv4 header");
        assert_eq!(
            ones_complement_sum(&out[20..]),
            0xffff,
            "ICMP (no pseudo-header)"
        );
        // The echo request vector of the parser tests, too.
        let mut out = prefilled();
        let echo = EchoFields {
            ident: 0x1234,
            seq: 7,
        };
        emit_icmp_echo_v4(&ip_fields(64, 0, false, 0x3333), &echo, b"abcd", &mut out);
        assert_eq!(&out[..], V4_ECHO_REQUEST);
    }

    #[test]
    fn emit_icmp_echo_v6_exact_bytes() {
        let mut out = prefilled();
        let echo = EchoFields {
            ident: 0x1234,
            seq: 7,
        };
        let n = emit_icmp_echo_v6(&ip6_fields(1, 0, 0x54321), &echo, b"abcde", &mut out);
        assert_eq!(n, 53);
        assert_eq!(&out[..], V6_ECHO_PROBE);
        assert_eq!(transport_sum_v6(V6_ECHO_PROBE), 0xffff);
    }

    #[test]
    fn flow_label_is_masked_to_20_bits() {
        let mut out = prefilled();
        let ip = ip6_fields(5, 0x02, 0xfff1_2345);
        emit_tcp_v6(&ip, &tcp_fields(), b"hi", &mut out);
        assert_eq!(
            &out[..],
            V6_TCP_PROBE,
            "version and traffic class untouched"
        );
        let p = parse_ip(&out).unwrap();
        assert_eq!(p.ip.flow_label, 0x12345);
        // All 20 bits and all 8 traffic-class bits are carried.
        let ip = ip6_fields(5, 0xff, 0xfffff);
        emit_udp_v6(
            &ip,
            &UdpFields {
                src_port: 1,
                dst_port: 2,
            },
            &[],
            &mut out,
        );
        assert_eq!(&out[..4], &[0x6f, 0xff, 0xff, 0xff]);
        let p = parse_ip(&out).unwrap();
        assert_eq!((p.ip.tos, p.ip.flow_label), (0xff, 0xfffff));
    }

    /// Emits random probes of every new kind and checks them independently of etherparse:
    /// checksums (pseudo-header sums), length fields, and the parse back through `parse_ip`.
    #[test]
    fn random_probes_verify_and_parse_back() {
        let mut rng = XorShift(0x0bad_cafe_f00d_1234);
        let mut out = Vec::new();
        for _ in 0..2000 {
            let ip6 = random_v6(&mut rng);
            let ip4 = random_v4(&mut rng);
            let payload = random_payload(&mut rng, 300);
            let tcp = TcpFields {
                src_port: rng.next() as u16,
                dst_port: rng.next() as u16,
                seq: rng.next() as u32,
                ack: rng.next() as u32,
                flags: rng.next() as u8,
                window: rng.next() as u16,
            };
            let udp = UdpFields {
                src_port: rng.next() as u16,
                dst_port: rng.next() as u16,
            };
            let echo = EchoFields {
                ident: rng.next() as u16,
                seq: rng.next() as u16,
            };
            let ip6_info = |protocol| IpInfo {
                src: IpAddr::V6(ip6.src),
                dst: IpAddr::V6(ip6.dst),
                ttl: ip6.hop_limit,
                tos: ip6.traffic_class,
                dont_fragment: false,
                ident: 0,
                flow_label: ip6.flow_label & 0xfffff,
                protocol,
                is_fragment: false,
            };

            out.resize(400, 0xa5);
            let n = emit_tcp_v6(&ip6, &tcp, &payload, &mut out);
            assert_eq!(n, 60 + payload.len());
            assert_eq!(out.len(), n);
            assert_eq!(&out[4..6], &((20 + payload.len()) as u16).to_be_bytes());
            assert_eq!(transport_sum_v6(&out), 0xffff);
            assert_eq!(&out[60..], &payload[..]);
            let p = parse_ip(&out).unwrap();
            assert_eq!(p.ip, ip6_info(6));
            let Transport::Tcp(t) = p.transport else {
                panic!("not TCP: {:?}", p.transport)
            };
            assert_eq!(
                (t.src_port, t.dst_port, t.seq, t.ack, t.flags, t.window),
                (
                    tcp.src_port,
                    tcp.dst_port,
                    tcp.seq,
                    tcp.ack,
                    tcp.flags,
                    tcp.window
                )
            );
            assert_eq!(t.payload_len as usize, payload.len());

            out.resize(400, 0xa5);
            let n = emit_udp_v6(&ip6, &udp, &payload, &mut out);
            assert_eq!(n, 48 + payload.len());
            assert_eq!(&out[4..6], &((8 + payload.len()) as u16).to_be_bytes());
            assert_eq!(&out[44..46], &out[4..6], "UDP length = payload length");
            assert_eq!(transport_sum_v6(&out), 0xffff);
            assert_ne!(&out[46..48], &[0, 0], "RFC 8200 §8.1: never 0");
            let p = parse_ip(&out).unwrap();
            assert_eq!(p.ip, ip6_info(17));
            assert_eq!(
                p.transport,
                Transport::Udp(UdpInfo {
                    src_port: udp.src_port,
                    dst_port: udp.dst_port,
                    payload_len: payload.len() as u16,
                    checksum: u16::from_be_bytes([out[46], out[47]]),
                })
            );

            out.resize(400, 0xa5);
            let n = emit_icmp_echo_v6(&ip6, &echo, &payload, &mut out);
            assert_eq!(n, 48 + payload.len());
            assert_eq!((out[6], out[40], out[41]), (58, 128, 0));
            assert_eq!(transport_sum_v6(&out), 0xffff);
            let p = parse_ip(&out).unwrap();
            assert_eq!(p.ip, ip6_info(58));
            assert_eq!(
                p.transport,
                Transport::Icmp(IcmpMessage::EchoRequest {
                    ident: echo.ident,
                    seq: echo.seq
                })
            );

            out.resize(400, 0xa5);
            let n = emit_icmp_echo_v4(&ip4, &echo, &payload, &mut out);
            assert_eq!(n, 28 + payload.len());
            assert_eq!(&out[2..4], &(n as u16).to_be_bytes());
            assert_eq!((out[9], out[20], out[21]), (1, 8, 0));
            assert_eq!(ones_complement_sum(&out[..20]), 0xffff);
            assert_eq!(ones_complement_sum(&out[20..]), 0xffff);
            let p = parse_ip(&out).unwrap();
            assert_eq!(
                (p.ip.ttl, p.ip.tos, p.ip.ident, p.ip.dont_fragment),
                (ip4.ttl, ip4.tos, ip4.ident, ip4.dont_fragment)
            );
            assert_eq!(
                p.transport,
                Transport::Icmp(IcmpMessage::EchoRequest {
                    ident: echo.ident,
                    seq: echo.seq
                })
            );
        }
    }

    #[test]
    fn udp_v6_zero_checksum_is_sent_as_all_ones() {
        let ip = ip6_fields(3, 0, 0);
        let udp = UdpFields {
            src_port: 40001,
            dst_port: 33435,
        };
        let mut out = Vec::new();
        // As in the IPv4 test: the checksum of a zero 2-byte payload, sent as the payload,
        // makes the computed checksum 0, which RFC 8200 §8.1 forbids: 0xffff goes out.
        emit_udp_v6(&ip, &udp, &[0, 0], &mut out);
        let c = [out[46], out[47]];
        emit_udp_v6(&ip, &udp, &c, &mut out);
        assert_eq!(&out[46..48], &[0xff, 0xff]);
        assert_eq!(transport_sum_v6(&out), 0xffff);
    }

    #[test]
    fn oversized_payload_is_cut_to_fit_v6_and_icmp() {
        let big = vec![0x5a; 70_000];
        let mut out = Vec::new();
        let ip6 = ip6_fields(1, 0, 7);
        let udp = UdpFields {
            src_port: 1,
            dst_port: 2,
        };
        let echo = EchoFields { ident: 1, seq: 2 };
        assert_eq!(emit_tcp_v6(&ip6, &tcp_fields(), &big, &mut out), 40 + 65535);
        assert_eq!(&out[4..6], &[0xff, 0xff]);
        assert_eq!(transport_sum_v6(&out), 0xffff);
        assert_eq!(emit_udp_v6(&ip6, &udp, &big, &mut out), 40 + 65535);
        assert_eq!(
            (&out[4..6], &out[44..46]),
            (&[0xff, 0xff][..], &[0xff, 0xff][..])
        );
        assert_eq!(transport_sum_v6(&out), 0xffff);
        assert_eq!(emit_icmp_echo_v6(&ip6, &echo, &big, &mut out), 40 + 65535);
        assert_eq!(transport_sum_v6(&out), 0xffff);
        let ip4 = ip_fields(1, 0, true, 7);
        assert_eq!(emit_icmp_echo_v4(&ip4, &echo, &big, &mut out), 65535);
        assert_eq!(&out[2..4], &[0xff, 0xff]);
        assert_eq!(ones_complement_sum(&out[20..]), 0xffff);
        // The Paris helpers cut the payload the same way.
        let ident = paris_icmp_ident_v4(2, &big, 0x1234);
        emit_icmp_echo_v4(&ip4, &EchoFields { ident, seq: 2 }, &big, &mut out);
        assert_eq!(&out[22..24], &[0x12, 0x34]);
        let ident = paris_icmp_ident_v6(&ip6, 2, &big, 0x1234);
        emit_icmp_echo_v6(&ip6, &EchoFields { ident, seq: 2 }, &big, &mut out);
        assert_eq!(&out[42..44], &[0x12, 0x34]);
    }

    /// Dublin traceroute identifies IPv6 UDP probes by their payload length (the 5-tuple and
    /// flow label stay constant): the length must come back from the parse.
    #[test]
    fn dublin_payload_length_round_trips() {
        let udp = UdpFields {
            src_port: 12345,
            dst_port: 33434,
        };
        let mut out = Vec::new();
        for n in [0, 1, 2, 7, 8, 9, 100, 1232, 1452, 65535 - 8] {
            let payload = vec![0u8; n];
            let len = emit_udp_v6(&ip6_fields(4, 0, 0xdb11), &udp, &payload, &mut out);
            assert_eq!(len, 48 + n);
            assert_eq!(&out[4..6], &((8 + n) as u16).to_be_bytes());
            let p = parse_ip(&out).unwrap();
            assert_eq!(p.ip.flow_label, 0xdb11);
            let Transport::Udp(u) = p.transport else {
                panic!("not UDP: {:?}", p.transport)
            };
            assert_eq!(usize::from(u.payload_len), n);
            // ...also when the capture cut the packet right after the UDP header.
            let p = parse_ip(&out[..48]).unwrap();
            let Transport::Udp(u) = p.transport else {
                panic!("not UDP: {:?}", p.transport)
            };
            assert_eq!(usize::from(u.payload_len), n);
        }
    }

    /// What the UDP checksum field of a Paris probe is for `want` (see the helpers' docs).
    fn udp_expected(want: u16) -> u16 {
        if want == 0 {
            0xffff
        } else {
            want
        }
    }

    #[test]
    fn paris_udp_payload_sets_the_checksum() {
        let mut rng = XorShift(0x9a41_5005_dead_beef);
        let mut out = Vec::new();
        let edge = [0u16, 1, 2, 0x7fff, 0x8000, 0xfffe, 0xffff];
        for round in 0..20_000 {
            let want = edge.get(round % 50).copied().unwrap_or(rng.next() as u16);
            let udp = UdpFields {
                src_port: rng.next() as u16,
                dst_port: rng.next() as u16,
            };
            let ip4 = random_v4(&mut rng);
            let payload = paris_udp_payload_v4(&ip4, &udp, want);
            emit_udp_v4(&ip4, &udp, &payload, &mut out);
            assert_eq!(out.len(), 30);
            let got = u16::from_be_bytes([out[26], out[27]]);
            assert_eq!(got, udp_expected(want), "{ip4:?} {udp:?} {want:#x}");
            assert_eq!(transport_sum(&out), 0xffff);
            // The checksum only depends on the addresses and ports.
            let other = Ipv4Fields {
                ttl: ip4.ttl ^ 0xff,
                tos: ip4.tos ^ 0xff,
                ident: !ip4.ident,
                dont_fragment: !ip4.dont_fragment,
                ..ip4
            };
            assert_eq!(paris_udp_payload_v4(&other, &udp, want), payload);

            let ip6 = random_v6(&mut rng);
            let payload = paris_udp_payload_v6(&ip6, &udp, want);
            emit_udp_v6(&ip6, &udp, &payload, &mut out);
            assert_eq!(out.len(), 50);
            let got = u16::from_be_bytes([out[46], out[47]]);
            assert_eq!(got, udp_expected(want), "{ip6:?} {udp:?} {want:#x}");
            assert_eq!(transport_sum_v6(&out), 0xffff);
            let other = Ipv6Fields {
                hop_limit: !ip6.hop_limit,
                traffic_class: !ip6.traffic_class,
                flow_label: !ip6.flow_label,
                ..ip6
            };
            assert_eq!(paris_udp_payload_v6(&other, &udp, want), payload);
        }
    }

    /// Paris traceroute keeps the 5-tuple constant: consecutive probes differ only in the
    /// payload, and the probe number comes back in the quoted checksum.
    #[test]
    fn paris_udp_probes_share_the_flow() {
        let ip = ip6_fields(1, 0, 0x1234);
        let udp = UdpFields {
            src_port: 40000,
            dst_port: 33434,
        };
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for probe in 1..=2000u16 {
            let payload = paris_udp_payload_v6(&ip, &udp, probe);
            emit_udp_v6(&ip, &udp, &payload, &mut out);
            assert_eq!(&out[..44], &V6_UDP_FLOW_HEAD[..], "same header: {probe}");
            assert_eq!(u16::from_be_bytes([out[46], out[47]]), probe);
            assert!(seen.insert(payload));
        }
    }

    /// Header bytes shared by every probe of `paris_udp_probes_share_the_flow`.
    #[rustfmt::skip]
    const V6_UDP_FLOW_HEAD: [u8; 44] = [
        0x60, 0x00, 0x12, 0x34, 0x00, 0x0a, 0x11, 0x01,
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20,
        0x9c, 0x40, 0x82, 0x9a,
    ];

    /// What the ICMP checksum of a Paris probe is for `want` (see the helpers' docs).
    fn icmp_expected(want: u16) -> u16 {
        if want == 0xffff {
            0
        } else {
            want
        }
    }

    #[test]
    fn paris_icmp_ident_keeps_the_checksum_for_every_seq() {
        let mut rng = XorShift(0x1c3b_0000_5eed_0001);
        let payloads: [Vec<u8>; 3] = [
            Vec::new(),
            b"svctr-paris".to_vec(),
            random_payload(&mut rng, 64),
        ];
        let mut out = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            let want = [0x0000, 0xbeef, rng.next() as u16][i];
            let ip4 = random_v4(&mut rng);
            let ip6 = random_v6(&mut rng);
            for seq in 0..=u16::MAX {
                let ident = paris_icmp_ident_v4(seq, payload, want);
                emit_icmp_echo_v4(&ip4, &EchoFields { ident, seq }, payload, &mut out);
                assert_eq!(u16::from_be_bytes([out[22], out[23]]), want, "v4 seq {seq}");
                assert_eq!(
                    &out[24..28],
                    &[ident.to_be_bytes(), seq.to_be_bytes()].concat()[..]
                );

                let ident = paris_icmp_ident_v6(&ip6, seq, payload, want);
                emit_icmp_echo_v6(&ip6, &EchoFields { ident, seq }, payload, &mut out);
                assert_eq!(u16::from_be_bytes([out[42], out[43]]), want, "v6 seq {seq}");
            }
            // Independent check of one probe per payload.
            assert_eq!(transport_sum_v6(&out), 0xffff);
        }
    }

    #[test]
    fn paris_icmp_ident_random_and_edge_wants() {
        let mut rng = XorShift(0x77aa_1020_3040_5060);
        let mut out = Vec::new();
        let edge = [0u16, 1, 0x0800, 0xf7ff, 0x7fff, 0xfffe, 0xffff];
        for round in 0..20_000 {
            let want = edge.get(round % 50).copied().unwrap_or(rng.next() as u16);
            let seq = rng.next() as u16;
            let payload = random_payload(&mut rng, 40);
            let ident = paris_icmp_ident_v4(seq, &payload, want);
            let ip4 = random_v4(&mut rng);
            emit_icmp_echo_v4(&ip4, &EchoFields { ident, seq }, &payload, &mut out);
            assert_eq!(u16::from_be_bytes([out[22], out[23]]), icmp_expected(want));
            assert_eq!(ones_complement_sum(&out[20..]), 0xffff);

            let ip6 = random_v6(&mut rng);
            let ident = paris_icmp_ident_v6(&ip6, seq, &payload, want);
            emit_icmp_echo_v6(&ip6, &EchoFields { ident, seq }, &payload, &mut out);
            assert_eq!(u16::from_be_bytes([out[42], out[43]]), icmp_expected(want));
            assert_eq!(transport_sum_v6(&out), 0xffff);
        }
    }

    #[test]
    fn residue_and_fold_match_rfc1071() {
        let mut rng = XorShift(0x0ddb_a11c_0ffe_e000);
        for _ in 0..5000 {
            let bytes = random_payload(&mut rng, 200);
            if bytes.iter().all(|&b| b == 0) {
                continue; // fold() is only defined for sums of words not all zero
            }
            assert_eq!(
                fold(residue(&bytes)),
                ones_complement_sum(&bytes),
                "{bytes:?}"
            );
        }
        assert_eq!(fold(residue(&[0xff, 0xff])), 0xffff);
        assert_eq!(fold(residue(&[0xff, 0xff, 0x00, 0x01])), 1);
        assert_eq!(residue(&[]), 0);
        assert_eq!(solve(0x1234, 0x1234), 0);
        assert_eq!(solve(0xfffe, 0), 1);
    }
}

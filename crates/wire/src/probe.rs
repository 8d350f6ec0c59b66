//! Emission of probe packets: complete IPv4 datagrams (header + TCP/UDP) ready for a raw socket
//! with IP_HDRINCL. Checksums are computed; the IPv4 total length is the real length.
//!
//! What it does: a 20-byte IPv4 header (RFC 791, no options, header checksum computed), then a
//! 20-byte TCP header (RFC 9293 §3.1, no options, checksum over the RFC 9293 §3.1 pseudo-header)
//! or an 8-byte UDP header (RFC 768, checksum over the pseudo-header, a computed 0 sent as
//! 0xFFFF), then the payload. The header types and checksum code are etherparse's.
//!
//! What it does not do: IPv6 probes, IP or TCP options, fragmentation. Payloads longer than an
//! IPv4 datagram can carry are cut to fit (emission never fails and never panics).

use std::net::Ipv4Addr;

use etherparse::{IpDscp, IpEcn, IpNumber, Ipv4Header, TcpHeader, UdpHeader};

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

/// Writes an IPv4+TCP probe with `payload` into `out` (cleared first). Returns the length.
///
/// A payload longer than 65535 - 40 bytes is cut to fit the IPv4 total length.
pub fn emit_tcp_v4(ip: &Ipv4Fields, tcp: &TcpFields, payload: &[u8], out: &mut Vec<u8>) -> usize {
    out.clear();
    let payload = fit(payload, TcpHeader::MIN_LEN);
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
    use super::*;
    use crate::icmp::ones_complement_sum;
    use crate::packet::{parse_ip, Transport};

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
}

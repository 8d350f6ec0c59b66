//! A summary of one captured IP packet, parsed laxly (the capture may be cut by the snap length).
//!
//! What it does: reads the IPv4 (RFC 791) or IPv6 (RFC 8200) header, skips IPv6 extension
//! headers (hop-by-hop, routing, fragment, destination options), and summarises the TCP
//! (RFC 9293) or UDP (RFC 768) header, or hands ICMP/ICMPv6 to [`crate::icmp`]. Length-derived
//! values (TCP payload length) come from the IP length fields, not from the number of captured
//! bytes, because the snap length usually cuts the payload off.
//!
//! What it does not do: no checksum verification (truncated captures cannot be checked, and
//! TX-side captures with checksum offload carry garbage there), no reassembly of fragments
//! (a non-first fragment is reported with [`IpInfo::is_fragment`] and no transport), no
//! IPsec (AH/ESP are reported as [`Transport::Other`]), no TCP option other than window scale.

use std::net::IpAddr;

use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice, TcpHeaderSlice, UdpHeaderSlice};

use crate::icmp::IcmpMessage;
use crate::Error;

/// The IP-level fields of a captured packet that the tracer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpInfo {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 TOS byte / IPv6 traffic class (DSCP << 2 | ECN).
    pub tos: u8,
    /// IPv4 "don't fragment" flag (always false for IPv6).
    pub dont_fragment: bool,
    /// IPv4 identification (0 for IPv6).
    pub ident: u16,
    /// IPv6 flow label (0 for IPv4).
    pub flow_label: u32,
    /// IP protocol / IPv6 upper-layer next header.
    pub protocol: u8,
    /// True when this is a non-first fragment (no transport header).
    pub is_fragment: bool,
}

/// TCP header fields the tracer tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20, ECE 0x40, CWR 0x80).
    pub flags: u8,
    /// Raw (unscaled) window field.
    pub window: u16,
    /// Window-scale shift from a SYN's option (RFC 7323), if this segment carries one.
    pub window_scale: Option<u8>,
    /// The option bytes of a SYN segment, as sent (empty for other segments, and for a SYN
    /// whose options the capture cut off): a probe that copies a client's SYN copies them.
    pub syn_options: TcpOptions,
    /// TCP payload length computed from the IP length fields (not from the captured bytes).
    pub payload_len: u32,
}

/// The option bytes of a TCP header (at most 40, RFC 9293 §3.1), kept by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOptions {
    len: u8,
    bytes: [u8; 40],
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            len: 0,
            bytes: [0; 40],
        }
    }
}

impl TcpOptions {
    /// The options; `None` if there are more than 40 bytes (impossible in a valid header).
    pub fn new(options: &[u8]) -> Option<Self> {
        let mut bytes = [0u8; 40];
        bytes.get_mut(..options.len())?.copy_from_slice(options);
        Some(Self {
            len: u8::try_from(options.len()).ok()?,
            bytes,
        })
    }

    /// The option bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// UDP header fields the tracer tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpInfo {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// UDP payload length (from the UDP length field).
    pub payload_len: u16,
    /// Checksum field as captured (on the sending host, checksum offload may leave a partial
    /// sum here; the IPv6 flow tracer reads its own probes' checksums, which it computes).
    pub checksum: u16,
}

/// What the packet carries above IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport<'a> {
    /// TCP segment.
    Tcp(TcpInfo),
    /// UDP datagram.
    Udp(UdpInfo),
    /// ICMP (IPv4) or ICMPv6 message.
    Icmp(IcmpMessage<'a>),
    /// Anything else, or a transport header cut off by the capture.
    Other,
}

/// One captured packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    /// IP fields.
    pub ip: IpInfo,
    /// Transport.
    pub transport: Transport<'a>,
}

/// Parses an IPv4 or IPv6 packet (version from the first nibble). Lax: the buffer may be shorter
/// than the IP total length (snap length); a transport header that is cut off gives
/// [`Transport::Other`], never an error. IPv6 extension headers are skipped.
///
/// Errors: empty buffer, a version other than 4 or 6, an IPv4 IHL below 5, or an IP header
/// (IHL*4 bytes / 40 bytes) that is not completely captured.
pub fn parse_ip(bytes: &[u8]) -> Result<Packet<'_>, crate::Error> {
    let first = bytes.first().ok_or(Error::Truncated { need: 1, have: 0 })?;
    match first >> 4 {
        4 => parse_ipv4(bytes),
        6 => parse_ipv6(bytes),
        _ => Err(Error::Malformed("IP version is neither 4 nor 6")),
    }
}

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;

fn parse_ipv4(bytes: &[u8]) -> Result<Packet<'_>, Error> {
    // Checks version 4, IHL >= 5 and that IHL*4 bytes are present; not the total length.
    let h = Ipv4HeaderSlice::from_slice(bytes)?;
    let header_len = h.slice().len();
    let total_len = usize::from(h.total_len());
    // RFC 791: a fragment offset other than 0 means this fragment starts in the middle of the
    // datagram and carries no transport header. The first fragment (offset 0, MF set) does.
    let is_fragment = h.fragments_offset().value() != 0;
    // The IP payload as announced by the header. Linux TSO/BIG TCP captures can carry a total
    // length of 0 (the real length is in the skb, not the header); then the captured bytes are
    // the best we have.
    let ip_payload_len = if total_len == 0 {
        bytes.len().saturating_sub(header_len)
    } else {
        total_len.saturating_sub(header_len)
    };
    // Bytes of the IP payload that were captured. Capped at the total length so that Ethernet
    // minimum-frame padding after a short packet is not taken for payload.
    let captured_end = if total_len >= header_len {
        total_len.min(bytes.len())
    } else {
        bytes.len()
    };
    let payload = Payload {
        capped: bytes.get(header_len..captured_end).unwrap_or_default(),
        captured: bytes.get(header_len..).unwrap_or_default(),
    };
    let protocol = h.protocol().0;
    let ip = IpInfo {
        src: IpAddr::V4(h.source_addr()),
        dst: IpAddr::V4(h.destination_addr()),
        ttl: h.ttl(),
        tos: h.slice()[1],
        dont_fragment: h.dont_fragment(),
        ident: h.identification(),
        flow_label: 0,
        protocol,
        is_fragment,
    };
    let transport = if is_fragment {
        Transport::Other
    } else {
        parse_transport(protocol, PROTO_ICMP, payload, ip_payload_len)
    };
    Ok(Packet { ip, transport })
}

fn parse_ipv6(bytes: &[u8]) -> Result<Packet<'_>, Error> {
    let h = Ipv6HeaderSlice::from_slice(bytes)?;
    let payload_length = usize::from(h.payload_length());
    // A payload length of 0 is a jumbogram (RFC 2675) or a TSO/BIG TCP capture: use what was
    // captured. Otherwise cap at the payload length (Ethernet padding, see parse_ipv4).
    let (announced, captured_end) = if payload_length == 0 {
        (bytes.len().saturating_sub(40), bytes.len())
    } else {
        (
            payload_length,
            payload_length.saturating_add(40).min(bytes.len()),
        )
    };
    let after_header = bytes.get(40..).unwrap_or_default();
    let walk = skip_ipv6_extensions(h.next_header().0, after_header);
    let ip = IpInfo {
        src: IpAddr::V6(h.source_addr()),
        dst: IpAddr::V6(h.destination_addr()),
        ttl: h.hop_limit(),
        tos: h.traffic_class(),
        dont_fragment: false,
        ident: 0,
        flow_label: h.flow_label().value(),
        protocol: walk.protocol,
        is_fragment: walk.non_first_fragment,
    };
    let transport = if walk.non_first_fragment || !walk.complete {
        Transport::Other
    } else {
        let start = 40 + walk.offset;
        let payload = Payload {
            capped: bytes
                .get(start..captured_end.max(start))
                .unwrap_or_default(),
            captured: bytes.get(start..).unwrap_or_default(),
        };
        parse_transport(
            walk.protocol,
            PROTO_ICMPV6,
            payload,
            announced.saturating_sub(walk.offset),
        )
    };
    Ok(Packet { ip, transport })
}

/// The captured bytes after the IP header and any extension headers.
struct Payload<'a> {
    /// Cut at the end the IP length fields announce, so that link-layer padding (Ethernet
    /// pads frames to 60 bytes) is not taken for data. Used for ICMP, whose quote runs to the
    /// end of the message.
    capped: &'a [u8],
    /// Everything captured. Used for TCP/UDP headers, so that a header is still read when an
    /// inconsistent IP length claims it is not there (its payload length then saturates to 0).
    captured: &'a [u8],
}

/// Summarises the transport header. `announced_len` is the transport length according to the
/// IP header(s). `icmp_proto` is the ICMP protocol number of this IP version (1 or 58).
fn parse_transport<'a>(
    protocol: u8,
    icmp_proto: u8,
    payload: Payload<'a>,
    announced_len: usize,
) -> Transport<'a> {
    match protocol {
        PROTO_TCP => {
            parse_tcp(payload.captured, announced_len).map_or(Transport::Other, Transport::Tcp)
        }
        PROTO_UDP => parse_udp(payload.captured).map_or(Transport::Other, Transport::Udp),
        PROTO_ICMP if icmp_proto == PROTO_ICMP => {
            crate::icmp::parse_icmpv4(payload.capped).map_or(Transport::Other, Transport::Icmp)
        }
        PROTO_ICMPV6 if icmp_proto == PROTO_ICMPV6 => {
            crate::icmp::parse_icmpv6(payload.capped).map_or(Transport::Other, Transport::Icmp)
        }
        _ => Transport::Other,
    }
}

fn parse_tcp(payload: &[u8], announced_len: usize) -> Option<TcpInfo> {
    // Requires the whole header including options (data offset * 4 bytes) and a data offset
    // of at least 5; anything less is a cut-off or malformed header.
    let tcp = TcpHeaderSlice::from_slice(payload).ok()?;
    let header = tcp.slice();
    let flags = header[13];
    // RFC 7323 §2.2: the window scale option is only meaningful in a SYN segment.
    let window_scale = if tcp.syn() {
        window_scale_option(tcp.options())
    } else {
        None
    };
    let payload_len = announced_len.saturating_sub(header.len());
    let syn_options = if tcp.syn() {
        TcpOptions::new(tcp.options()).unwrap_or_default()
    } else {
        TcpOptions::default()
    };
    Some(TcpInfo {
        src_port: tcp.source_port(),
        dst_port: tcp.destination_port(),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        flags,
        window: tcp.window_size(),
        window_scale,
        syn_options,
        payload_len: u32::try_from(payload_len).unwrap_or(u32::MAX),
    })
}

/// Finds the window scale option (kind 3, length 3, RFC 7323 §2.2) in TCP options.
///
/// Hand-written instead of etherparse's `TcpOptionsIterator` because that iterator stops at
/// the first option kind it does not know (MD5 19, TCP-AO 29, MPTCP 30, Fast Open 34, ...),
/// which would hide a window scale option behind them. RFC 9293 §3.1: every option except
/// End of Option List (0) and No-Operation (1) has a length byte that includes kind and length.
fn window_scale_option(mut options: &[u8]) -> Option<u8> {
    loop {
        match options {
            [] | [0, ..] => return None,
            [1, rest @ ..] => options = rest,
            [kind, len, ..] => {
                let len = usize::from(*len);
                if len < 2 {
                    return None; // malformed: would not advance
                }
                let option = options.get(..len)?;
                if *kind == 3 && len == 3 {
                    return Some(option[2]);
                }
                options = options.get(len..)?;
            }
            [_] => return None,
        }
    }
}

fn parse_udp(payload: &[u8]) -> Option<UdpInfo> {
    let udp = UdpHeaderSlice::from_slice(payload).ok()?;
    Some(UdpInfo {
        src_port: udp.source_port(),
        dst_port: udp.destination_port(),
        // RFC 768: the length counts the 8-byte header.
        payload_len: udp.length().saturating_sub(8),
        checksum: udp.checksum(),
    })
}

/// Result of walking IPv6 extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ipv6Walk {
    /// The upper-layer protocol, or the extension header the walk stopped at.
    pub(crate) protocol: u8,
    /// Bytes of extension headers skipped (offset of the upper-layer header).
    pub(crate) offset: usize,
    /// A fragment header with a non-zero offset was found (no upper-layer header follows).
    pub(crate) non_first_fragment: bool,
    /// False when the walk stopped at an extension header that is not completely present.
    pub(crate) complete: bool,
}

/// Skips the IPv6 extension headers (RFC 8200 §4) that start `bytes`, beginning with next
/// header value `next`: hop-by-hop (0), routing (43), fragment (44), destination options (60).
/// Only headers that are completely present are skipped.
pub(crate) fn skip_ipv6_extensions(mut next: u8, bytes: &[u8]) -> Ipv6Walk {
    let mut offset = 0usize;
    let stop = |protocol, offset, complete| Ipv6Walk {
        protocol,
        offset,
        non_first_fragment: false,
        complete,
    };
    loop {
        match next {
            // RFC 8200 §4.3/4.4/4.6: next header, then "Hdr Ext Len" in 8-octet units not
            // counting the first 8 octets.
            0 | 43 | 60 => {
                let Some(&[nh, units]) = bytes.get(offset..offset + 2) else {
                    return stop(next, offset, false);
                };
                let len = (usize::from(units) + 1) * 8;
                if bytes.len() < offset + len {
                    return stop(next, offset, false);
                }
                next = nh;
                offset += len;
            }
            // RFC 8200 §4.5: fixed 8 bytes; the fragment offset is the top 13 bits of bytes
            // 2..4. A non-zero offset means no upper-layer header follows.
            44 => {
                let Some(frag) = bytes.get(offset..offset + 8) else {
                    return stop(next, offset, false);
                };
                let frag_offset = u16::from_be_bytes([frag[2], frag[3]]) >> 3;
                next = frag[0];
                offset += 8;
                if frag_offset != 0 {
                    return Ipv6Walk {
                        protocol: next,
                        offset,
                        non_first_fragment: true,
                        complete: true,
                    };
                }
            }
            _ => return stop(next, offset, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::icmp::{ErrorKind, IcmpError};
    use crate::vectors::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn edited(v: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
        let mut v = v.to_vec();
        for &(at, b) in edits {
            v[at] = b;
        }
        v
    }

    fn tcp(p: &Packet<'_>) -> TcpInfo {
        match p.transport {
            Transport::Tcp(t) => t,
            ref other => panic!("not TCP: {other:?}"),
        }
    }

    fn icmp_error<'a>(p: &'a Packet<'_>) -> &'a IcmpError<'a> {
        match &p.transport {
            Transport::Icmp(IcmpMessage::Error(e)) => e,
            other => panic!("not an ICMP error: {other:?}"),
        }
    }

    #[test]
    fn ipv4_tcp_syn() {
        let p = parse_ip(V4_TCP_SYN).unwrap();
        assert_eq!(
            p.ip,
            IpInfo {
                src: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
                dst: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20)),
                ttl: 64,
                tos: 0x02,
                dont_fragment: true,
                ident: 0x7a7b,
                flow_label: 0,
                protocol: 6,
                is_fragment: false,
            }
        );
        assert_eq!(
            tcp(&p),
            TcpInfo {
                src_port: 40000,
                dst_port: 443,
                seq: 0x0a0b_0c0d,
                ack: 0,
                flags: 0x02,
                window: 64240,
                window_scale: Some(7),
                syn_options: TcpOptions::new(&V4_TCP_SYN[40..60]).unwrap(),
                payload_len: 0,
            }
        );
        // MSS 1460, SACK permitted, timestamps, NOP, window scale 7: all 20 bytes, as sent.
        assert_eq!(
            tcp(&p).syn_options.as_slice(),
            &[2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]
        );
    }

    #[test]
    fn window_scale_behind_unknown_option() {
        let t = tcp(&parse_ip(V4_TCP_SYN_MD5).unwrap());
        assert_eq!((t.flags, t.window, t.window_scale), (0x12, 65535, Some(14)));
    }

    #[test]
    fn window_scale_only_in_syn() {
        // The same segment with ACK instead of SYN: RFC 7323 §2.2 ignores the option.
        let t = tcp(&parse_ip(&edited(V4_TCP_SYN, &[(33, 0x10)])).unwrap());
        assert_eq!(t.window_scale, None);
    }

    #[test]
    fn window_scale_option_walk() {
        assert_eq!(window_scale_option(&[3, 3, 9]), Some(9));
        assert_eq!(window_scale_option(&[1, 1, 3, 3, 9]), Some(9));
        assert_eq!(
            window_scale_option(&[0, 3, 3, 9]),
            None,
            "after End of Option List"
        );
        assert_eq!(window_scale_option(&[3, 4, 9, 0]), None, "wrong length");
        assert_eq!(window_scale_option(&[2, 0, 3, 3, 9]), None, "length 0");
        assert_eq!(window_scale_option(&[2, 1, 3, 3, 9]), None, "length 1");
        assert_eq!(
            window_scale_option(&[30, 40, 3, 3, 9]),
            None,
            "length beyond the end"
        );
        assert_eq!(window_scale_option(&[3, 3]), None, "cut off");
        assert_eq!(window_scale_option(&[3]), None);
        assert_eq!(window_scale_option(&[]), None);
    }

    #[test]
    fn tcp_payload_len_from_ip_length() {
        // Total length 160 while only the 60-byte header was captured: 100 bytes of payload.
        let t = tcp(&parse_ip(&edited(V4_TCP_SYN, &[(2, 0), (3, 160)])).unwrap());
        assert_eq!(t.payload_len, 100);
        // Total length smaller than the headers: saturates at 0.
        let t = tcp(&parse_ip(&edited(V4_TCP_SYN, &[(2, 0), (3, 21)])).unwrap());
        assert_eq!(t.payload_len, 0);
        // Total length 0 (TSO / BIG TCP capture): fall back to the captured bytes.
        let mut v = edited(V4_TCP_SYN, &[(2, 0), (3, 0)]);
        v.extend_from_slice(&[0; 7]);
        assert_eq!(tcp(&parse_ip(&v).unwrap()).payload_len, 7);
    }

    #[test]
    fn ipv6_tcp_with_hop_by_hop_cut_by_snaplen() {
        let p = parse_ip(V6_TCP_HBH_CUT).unwrap();
        assert_eq!(
            p.ip.src,
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10))
        );
        assert_eq!(
            p.ip.dst,
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20))
        );
        assert_eq!((p.ip.ttl, p.ip.tos, p.ip.flow_label), (57, 0x0a, 0x54321));
        assert_eq!(
            (
                p.ip.protocol,
                p.ip.ident,
                p.ip.dont_fragment,
                p.ip.is_fragment
            ),
            (6, 0, false, false)
        );
        let t = tcp(&p);
        assert_eq!(
            (t.seq, t.ack, t.flags, t.window),
            (0x0102_0304, 0x0506_0708, 0x18, 1024)
        );
        assert_eq!(t.payload_len, 1000, "1028 - 8 (hop-by-hop) - 20 (TCP)");
    }

    #[test]
    fn cut_off_transport_is_other() {
        // The SYN's options are cut: the TCP header is incomplete.
        let p = parse_ip(&V4_TCP_SYN[..40]).unwrap();
        assert_eq!((p.ip.protocol, p.transport), (6, Transport::Other));
        let p = parse_ip(&V6_TCP_HBH_CUT[..60]).unwrap();
        assert_eq!((p.ip.protocol, p.transport), (6, Transport::Other));
        // Cut inside the hop-by-hop header: protocol is the extension header's number.
        let p = parse_ip(&V6_TCP_HBH_CUT[..44]).unwrap();
        assert_eq!((p.ip.protocol, p.transport), (0, Transport::Other));
        // Data offset 15 (60 bytes) in a 40-byte segment, and data offset 4 (< 20 bytes).
        for data_offset in [0xf0, 0x40] {
            let v = edited(V4_TCP_SYN, &[(32, data_offset)]);
            assert_eq!(parse_ip(&v).unwrap().transport, Transport::Other);
        }
        // UDP with 7 bytes.
        let p = parse_ip(&V4_UDP[..27]).unwrap();
        assert_eq!((p.ip.protocol, p.transport), (17, Transport::Other));
        // An ICMP error whose quoted IP header is cut.
        let p = parse_ip(&TE_TCP_8[..40]).unwrap();
        assert_eq!((p.ip.protocol, p.transport), (1, Transport::Other));
    }

    #[test]
    fn ipv4_udp() {
        let p = parse_ip(V4_UDP).unwrap();
        assert_eq!((p.ip.ttl, p.ip.ident, p.ip.protocol), (17, 0x2222, 17));
        assert_eq!(
            p.transport,
            Transport::Udp(UdpInfo {
                src_port: 40001,
                dst_port: 33435,
                payload_len: 4,
                checksum: u16::from_be_bytes([V4_UDP[26], V4_UDP[27]]),
            })
        );
    }

    #[test]
    fn ipv4_fragments() {
        let p = parse_ip(V4_FRAGMENT).unwrap();
        assert!(p.ip.is_fragment);
        assert_eq!((p.ip.protocol, p.transport), (17, Transport::Other));
        // The first fragment (MF set, offset 0) has the transport header.
        let v = edited(V4_UDP, &[(6, 0x20)]);
        let p = parse_ip(&v).unwrap();
        assert!(!p.ip.is_fragment);
        assert!(matches!(p.transport, Transport::Udp(_)));
    }

    #[test]
    fn ipv6_fragments() {
        // IPv6 header + Fragment header (RFC 8200 §4.5) + 8 bytes of UDP.
        #[rustfmt::skip]
        let mut v = vec![
            0x60, 0x00, 0x00, 0x00, // version 6
            0x00, 0x10, 44, 64,     // payload length 16, next header 44 (fragment), hop limit 64
        ];
        v.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ]);
        v.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20,
        ]);
        #[rustfmt::skip]
        v.extend_from_slice(&[
            17, 0, 0x00, 0x01,      // next header UDP, reserved, offset 0, M = 1
            0xde, 0xad, 0xbe, 0xef, // identification
            0x9c, 0x40, 0x00, 0x35, // UDP ports 40000 -> 53
            0x05, 0xd0, 0x00, 0x00, // length 1488, checksum
        ]);
        let p = parse_ip(&v).unwrap();
        assert!(!p.ip.is_fragment);
        assert_eq!(p.ip.protocol, 17);
        assert_eq!(
            p.transport,
            Transport::Udp(UdpInfo {
                src_port: 40000,
                dst_port: 53,
                payload_len: 1480,
                checksum: 0,
            })
        );
        // Offset 185 (x 8 bytes): non-first fragment.
        v[42] = 0x05;
        v[43] = 0xc8;
        let p = parse_ip(&v).unwrap();
        assert!(p.ip.is_fragment);
        assert_eq!((p.ip.protocol, p.transport), (17, Transport::Other));
    }

    #[test]
    fn ipv6_routing_and_destination_options_are_skipped() {
        // IPv6 + Routing header (type 4, 24 bytes) + Destination Options (8) + UDP.
        let mut v = V6_TCP_HBH_CUT[..40].to_vec();
        v[4..6].copy_from_slice(&(24u16 + 8 + 8).to_be_bytes());
        v[6] = 43;
        v.extend_from_slice(&[60, 2, 4, 0, 0, 0, 0, 0]); // next 60, length 2 (= 24 bytes)
        v.extend_from_slice(&[0; 16]);
        v.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // next 17 (UDP), PadN
        v.extend_from_slice(&[0x00, 0x07, 0x00, 0x09, 0x00, 0x08, 0x00, 0x00]);
        let p = parse_ip(&v).unwrap();
        assert_eq!(p.ip.protocol, 17);
        assert_eq!(
            p.transport,
            Transport::Udp(UdpInfo {
                src_port: 7,
                dst_port: 9,
                payload_len: 0,
                checksum: 0,
            })
        );
    }

    #[test]
    fn icmp_in_ip() {
        let p = parse_ip(V4_ECHO_REQUEST).unwrap();
        assert_eq!(
            p.transport,
            Transport::Icmp(IcmpMessage::EchoRequest {
                ident: 0x1234,
                seq: 7
            })
        );

        let p = parse_ip(TE_TCP_8).unwrap();
        assert_eq!(p.ip.src, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)));
        assert_eq!((p.ip.tos, p.ip.protocol), (0xc0, 1));
        let e = icmp_error(&p);
        assert_eq!(e.kind, ErrorKind::TimeExceeded);
        assert_eq!(e.quote.ports(), Some((40000, 443)));

        let p = parse_ip(V6_TE_UDP).unwrap();
        assert_eq!(p.ip.protocol, 58);
        let e = icmp_error(&p);
        assert_eq!(e.kind, ErrorKind::TimeExceeded);
        assert_eq!(e.quote.ports(), Some((40000, 53)));

        let p = parse_ip(TE_MPLS_4884).unwrap();
        assert_eq!(icmp_error(&p).mpls.len(), 2);
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        // 6 bytes of minimum-frame padding after a 56-byte ICMP error: the quote still ends
        // at the outer IP total length.
        let mut v = TE_TCP_8.to_vec();
        v.extend_from_slice(&[0; 6]);
        let p = parse_ip(&v).unwrap();
        assert_eq!(icmp_error(&p).quote.transport.len(), 8);
    }

    #[test]
    fn bad_ip_headers_are_errors() {
        assert_eq!(parse_ip(&[]), Err(Error::Truncated { need: 1, have: 0 }));
        assert!(matches!(parse_ip(&[0x55; 40]), Err(Error::Malformed(_))));
        assert!(matches!(parse_ip(&[0x00; 40]), Err(Error::Malformed(_))));
        assert!(matches!(
            parse_ip(&edited(V4_UDP, &[(0, 0x44)])),
            Err(Error::Malformed(_))
        ));
        // IHL 15 (60 bytes) in a 30-byte buffer.
        assert_eq!(
            parse_ip(&edited(&V4_UDP[..30], &[(0, 0x4f)])),
            Err(Error::Truncated { need: 60, have: 30 })
        );
        assert_eq!(
            parse_ip(&V4_UDP[..19]),
            Err(Error::Truncated { need: 20, have: 19 })
        );
        assert_eq!(
            parse_ip(&V6_TE_UDP[..39]),
            Err(Error::Truncated { need: 40, have: 39 })
        );
    }

    #[test]
    fn every_truncation_is_handled() {
        for (name, v) in ALL {
            let header_len = if v[0] >> 4 == 4 {
                usize::from(v[0] & 0xf) * 4
            } else {
                40
            };
            for len in 0..=v.len() {
                let r = parse_ip(&v[..len]);
                assert_eq!(r.is_ok(), len >= header_len, "{name}[..{len}]: {r:?}");
            }
        }
    }

    /// Exercises everything a caller would touch on a parse result.
    fn poke(p: &Packet<'_>) {
        if let Transport::Icmp(IcmpMessage::Error(e)) = &p.transport {
            let q = &e.quote;
            let _ = (q.ports(), q.tcp_seq(), q.tcp_ack(), q.udp_checksum());
            let _ = (q.icmp_echo(), q.icmp_checksum());
            assert!(e.quote.transport.len() <= 65535);
        }
    }

    #[test]
    fn pseudo_random_inputs_never_panic() {
        let mut rng = XorShift(0x5eed_0f5e_77ac_e000);
        let mut buf = Vec::with_capacity(512);
        for round in 0..100_000 {
            buf.clear();
            if round % 2 == 0 {
                // Random bytes, half of them with a plausible IP version nibble.
                let len = rng.below(300);
                buf.extend((0..len).map(|_| rng.next() as u8));
                if let Some(b) = buf.first_mut() {
                    if round % 4 == 0 {
                        *b = if rng.below(2) == 0 { 0x45 } else { 0x60 };
                    }
                }
            } else {
                // A test vector with a few bytes mutated, then cut or extended.
                let (_, v) = ALL[rng.below(ALL.len())];
                buf.extend_from_slice(v);
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(buf.len());
                    buf[at] = rng.next() as u8;
                }
                match rng.below(3) {
                    0 => buf.truncate(rng.below(buf.len() + 1)),
                    1 => buf.extend((0..rng.below(200)).map(|_| rng.next() as u8)),
                    _ => {}
                }
            }
            if let Ok(p) = parse_ip(&buf) {
                poke(&p);
            }
            for &dlt in crate::link::dlt::ALL {
                if let Some(ip) = crate::link::ip_payload(dlt, &buf) {
                    if let Ok(p) = parse_ip(ip) {
                        poke(&p);
                    }
                }
            }
        }
    }
}

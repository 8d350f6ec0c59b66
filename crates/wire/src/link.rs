//! Link-layer headers of captured frames (libpcap DLT_* / LINKTYPE_* values).
//!
//! What it does: finds the IPv4/IPv6 packet inside a frame of the link types a tracer meets on
//! Linux and the BSDs: Ethernet II with any number of 802.1Q / 802.1ad VLAN tags, Linux cooked
//! captures (SLL, SLL2, as produced when capturing on "any" or on tunnels), raw IP, and BSD
//! loopback (NULL/LOOP).
//!
//! What it does not do: it ignores everything else in the link header (addresses, packet type,
//! VLAN ids), does not handle 802.3/LLC/SNAP framing, MACsec, PPP or 802.11, and does not look
//! at the IP packet beyond its version nibble for raw link types.

use etherparse::EtherType;

/// libpcap link types this crate understands.
pub mod dlt {
    /// BSD loopback (4-byte host-order family).
    pub const NULL: i32 = 0;
    /// Ethernet II (optionally 802.1Q / 802.1ad tagged).
    pub const EN10MB: i32 = 1;
    /// Raw IP (DLT_RAW on most platforms).
    pub const RAW: i32 = 12;
    /// Raw IP (OpenBSD value).
    pub const RAW_OPENBSD: i32 = 14;
    /// LINKTYPE_RAW.
    pub const LINKTYPE_RAW: i32 = 101;
    /// Linux cooked capture v1.
    pub const LINUX_SLL: i32 = 113;
    /// LINKTYPE_IPV4.
    pub const IPV4: i32 = 228;
    /// LINKTYPE_IPV6.
    pub const IPV6: i32 = 229;
    /// Linux cooked capture v2.
    pub const LINUX_SLL2: i32 = 276;
    /// OpenBSD loopback (like NULL but the family is in network byte order).
    pub const LOOP: i32 = 108;

    /// Every link type [`super::ip_payload`] understands.
    pub const ALL: &[i32] = &[
        NULL,
        EN10MB,
        RAW,
        RAW_OPENBSD,
        LINKTYPE_RAW,
        LINUX_SLL,
        IPV4,
        IPV6,
        LINUX_SLL2,
        LOOP,
    ];
}

/// Returns the IP packet inside a captured frame of link type `linktype`, or `None` when the
/// frame is not IPv4/IPv6 or is too short.
pub fn ip_payload(linktype: i32, frame: &[u8]) -> Option<&[u8]> {
    match linktype {
        dlt::EN10MB => ethernet(frame),
        // https://www.tcpdump.org/linktypes/LINKTYPE_LINUX_SLL.html: packet type (2), ARPHRD
        // type (2), address length (2), address (8), protocol type (2) = 16 bytes.
        dlt::LINUX_SLL => by_ethertype(be16(frame, 14)?, frame.get(16..)?),
        // https://www.tcpdump.org/linktypes/LINKTYPE_LINUX_SLL2.html: protocol type (2),
        // reserved (2), interface index (4), ARPHRD type (2), packet type (1), address
        // length (1), address (8) = 20 bytes.
        dlt::LINUX_SLL2 => by_ethertype(be16(frame, 0)?, frame.get(20..)?),
        dlt::RAW | dlt::RAW_OPENBSD | dlt::LINKTYPE_RAW => raw_ip(frame, &[4, 6]),
        dlt::IPV4 => raw_ip(frame, &[4]),
        dlt::IPV6 => raw_ip(frame, &[6]),
        dlt::NULL | dlt::LOOP => loopback(frame),
        _ => None,
    }
}

fn be16(b: &[u8], at: usize) -> Option<EtherType> {
    crate::be16(b, at).map(EtherType)
}

fn by_ethertype(ether_type: EtherType, payload: &[u8]) -> Option<&[u8]> {
    match ether_type {
        EtherType::IPV4 | EtherType::IPV6 => Some(payload),
        _ => None,
    }
}

/// Ethernet II: destination (6), source (6), EtherType (2). An EtherType of 0x8100 (802.1Q),
/// 0x88A8 (802.1ad S-tag) or 0x9100 (pre-standard QinQ) is a 4-byte tag (TCI, then the next
/// EtherType), and tags may be stacked (QinQ).
fn ethernet(frame: &[u8]) -> Option<&[u8]> {
    let mut offset = 12;
    loop {
        let ether_type = be16(frame, offset)?;
        match ether_type {
            EtherType::VLAN_TAGGED_FRAME
            | EtherType::PROVIDER_BRIDGING
            | EtherType::VLAN_DOUBLE_TAGGED_FRAME => offset += 4,
            // Each iteration advances by 4 bytes or returns, so the loop ends at the frame end.
            _ => return by_ethertype(ether_type, frame.get(offset + 2..)?),
        }
    }
}

/// Raw IP: the frame is the packet; checked only by its version nibble.
fn raw_ip<'a>(frame: &'a [u8], versions: &[u8]) -> Option<&'a [u8]> {
    let version = frame.first()? >> 4;
    versions.contains(&version).then_some(frame)
}

/// BSD loopback: a 4-byte address family, in the byte order of the capturing host for NULL
/// (so a file from another host can have either order) and network order for LOOP. AF_INET is
/// 2 everywhere; AF_INET6 is 24 (NetBSD/OpenBSD), 28 (FreeBSD), 30 (macOS) or 10 (Linux).
fn loopback(frame: &[u8]) -> Option<&[u8]> {
    let family: [u8; 4] = frame.get(..4)?.try_into().ok()?;
    let is = |v: u32| u32::from_le_bytes(family) == v || u32::from_be_bytes(family) == v;
    if is(2) || is(10) || is(24) || is(28) || is(30) {
        frame.get(4..)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{parse_ip, Transport};
    use crate::vectors::{V4_UDP, V6_TE_UDP};

    fn frame(header: &[u8], ip: &[u8]) -> Vec<u8> {
        [header, ip].concat()
    }

    #[rustfmt::skip]
    const ETH_VLAN_QINQ: [u8; 22] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // destination MAC
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // source MAC
        0x88, 0xa8, 0x00, 0x64,             // 802.1ad S-tag, VLAN 100
        0x81, 0x00, 0x20, 0x0a,             // 802.1Q C-tag, PCP 1, VLAN 10
        0x08, 0x00,                         // EtherType IPv4
    ];

    #[test]
    fn ethernet_untagged_and_tagged() {
        let mut plain = ETH_VLAN_QINQ[..12].to_vec();
        plain.extend_from_slice(&[0x86, 0xdd]);
        let f = frame(&plain, V6_TE_UDP);
        assert_eq!(ip_payload(dlt::EN10MB, &f), Some(V6_TE_UDP));

        let f = frame(&ETH_VLAN_QINQ, V4_UDP);
        assert_eq!(ip_payload(dlt::EN10MB, &f), Some(V4_UDP));
        let p = parse_ip(ip_payload(dlt::EN10MB, &f).unwrap()).unwrap();
        assert!(matches!(p.transport, Transport::Udp(_)));

        // Single 802.1Q tag.
        let mut single = ETH_VLAN_QINQ[..12].to_vec();
        single.extend_from_slice(&ETH_VLAN_QINQ[16..]);
        assert_eq!(
            ip_payload(dlt::EN10MB, &frame(&single, V4_UDP)),
            Some(V4_UDP)
        );
        // ARP is not IP.
        let mut arp = ETH_VLAN_QINQ.to_vec();
        arp[20..22].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(ip_payload(dlt::EN10MB, &frame(&arp, V4_UDP)), None);
        // A frame that ends inside the tags.
        for len in 0..ETH_VLAN_QINQ.len() {
            assert_eq!(
                ip_payload(dlt::EN10MB, &ETH_VLAN_QINQ[..len]),
                None,
                "{len}"
            );
        }
        assert_eq!(ip_payload(dlt::EN10MB, &ETH_VLAN_QINQ), Some(&[][..]));
        // Hundreds of stacked tags end at the frame end.
        let mut tags = ETH_VLAN_QINQ[..12].to_vec();
        for _ in 0..300 {
            tags.extend_from_slice(&[0x81, 0x00, 0x00, 0x01]);
        }
        assert_eq!(ip_payload(dlt::EN10MB, &tags), None);
    }

    #[test]
    fn linux_cooked_v1() {
        #[rustfmt::skip]
        let sll = [
            0x00, 0x04,                                     // packet type: outgoing
            0x00, 0x01,                                     // ARPHRD_ETHER
            0x00, 0x06,                                     // address length 6
            0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, // address, padded to 8
            0x08, 0x00,                                     // protocol: IPv4
        ];
        let f = frame(&sll, V4_UDP);
        assert_eq!(ip_payload(dlt::LINUX_SLL, &f), Some(V4_UDP));
        let mut v6 = sll;
        v6[14..16].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(
            ip_payload(dlt::LINUX_SLL, &frame(&v6, V6_TE_UDP)),
            Some(V6_TE_UDP)
        );
        let mut other = sll;
        other[14..16].copy_from_slice(&[0x00, 0x04]); // 802.2 frames
        assert_eq!(ip_payload(dlt::LINUX_SLL, &frame(&other, V4_UDP)), None);
        assert_eq!(ip_payload(dlt::LINUX_SLL, &sll[..15]), None);
    }

    #[test]
    fn linux_cooked_v2() {
        #[rustfmt::skip]
        let sll2 = [
            0x86, 0xdd,                                     // protocol: IPv6
            0x00, 0x00,                                     // reserved
            0x00, 0x00, 0x00, 0x03,                         // interface index 3
            0x00, 0x01,                                     // ARPHRD_ETHER
            0x00,                                           // packet type: to us
            0x06,                                           // address length 6
            0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, // address, padded to 8
        ];
        let f = frame(&sll2, V6_TE_UDP);
        assert_eq!(ip_payload(dlt::LINUX_SLL2, &f), Some(V6_TE_UDP));
        let mut v4 = sll2;
        v4[0..2].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(
            ip_payload(dlt::LINUX_SLL2, &frame(&v4, V4_UDP)),
            Some(V4_UDP)
        );
        // Cooked v1 layout under the v2 link type: protocol 0x0004 is not IP.
        assert_eq!(
            ip_payload(dlt::LINUX_SLL2, &frame(&[0x00, 0x04], &sll2)),
            None
        );
        assert_eq!(ip_payload(dlt::LINUX_SLL2, &sll2[..19]), None);
    }

    #[test]
    fn raw_ip() {
        for lt in [dlt::RAW, dlt::RAW_OPENBSD, dlt::LINKTYPE_RAW] {
            assert_eq!(ip_payload(lt, V4_UDP), Some(V4_UDP));
            assert_eq!(ip_payload(lt, V6_TE_UDP), Some(V6_TE_UDP));
            assert_eq!(ip_payload(lt, &[0x55, 0]), None);
            assert_eq!(ip_payload(lt, &[]), None);
        }
        assert_eq!(ip_payload(dlt::IPV4, V4_UDP), Some(V4_UDP));
        assert_eq!(ip_payload(dlt::IPV4, V6_TE_UDP), None);
        assert_eq!(ip_payload(dlt::IPV6, V6_TE_UDP), Some(V6_TE_UDP));
        assert_eq!(ip_payload(dlt::IPV6, V4_UDP), None);
    }

    #[test]
    fn bsd_loopback_either_byte_order() {
        for family in [2u32, 10, 24, 28, 30] {
            for header in [family.to_le_bytes(), family.to_be_bytes()] {
                assert_eq!(ip_payload(dlt::NULL, &frame(&header, V4_UDP)), Some(V4_UDP));
                assert_eq!(ip_payload(dlt::LOOP, &frame(&header, V4_UDP)), Some(V4_UDP));
            }
        }
        assert_eq!(
            ip_payload(dlt::NULL, &frame(&7u32.to_le_bytes(), V4_UDP)),
            None
        );
        assert_eq!(ip_payload(dlt::NULL, &[2, 0, 0]), None);
    }

    #[test]
    fn unknown_link_type() {
        assert_eq!(ip_payload(105, V4_UDP), None); // IEEE 802.11
        assert_eq!(ip_payload(-1, V4_UDP), None);
    }
}

//! Fuzz target: every probe shape emitted, then parsed back (`svctr_wire::probe::emit` →
//! `svctr_wire::packet::parse_ip`). Input: the fields (family, protocol, addresses, ports,
//! TTL, TOS / traffic class, DF, IPv4 identification, IPv6 flow label, TCP numbers and flags,
//! echo identifier and sequence) and a payload; with the first byte's bit 3, the last two
//! payload bytes (zero, at an even offset) force the checksum (Paris traceroute's trick, as
//! the probes do). What parses
//! must be what was emitted, the checksums valid.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use svctr_wire::icmp::IcmpMessage;
use svctr_wire::packet::{parse_ip, Transport};
use svctr_wire::probe::{
    emit, force_checksum, EchoFields, IpFields, Ipv4Fields, Ipv6Fields, TcpFields,
    TransportFields, UdpFields,
};

fn be16(d: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([d[i], d[i + 1]])
}

fn be32(d: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]])
}

/// RFC 1071 over `b`: 0 when a checksum field inside it is right.
fn sum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fuzz_target!(|data: &[u8]| {
    // 64 bytes of fields, the rest payload (at most 512 bytes).
    if data.len() < 64 {
        return;
    }
    let (f, payload) = data.split_at(64);
    let mut payload = payload[..payload.len().min(512)].to_vec();
    let v6 = f[0] & 1 == 1;
    let proto = f[0] >> 1 & 3;
    // force_checksum's contract, as the probes keep it: the word it writes holds 0 and lies
    // at an even offset of the checksummed data.
    let force = f[0] & 8 == 8 && payload.len() >= 2 && payload.len() % 2 == 0;
    if force {
        let n = payload.len();
        payload[n - 2..].fill(0);
    }
    let payload = &payload[..];
    let ttl = f[1].max(1);
    let tos = f[2];
    let ip = if v6 {
        IpFields::V6(Ipv6Fields {
            src: Ipv6Addr::from(u128::from_be_bytes(f[4..20].try_into().unwrap())),
            dst: Ipv6Addr::from(u128::from_be_bytes(f[20..36].try_into().unwrap())),
            hop_limit: ttl,
            traffic_class: tos,
            flow_label: be32(f, 36) & 0xfffff,
        })
    } else {
        IpFields::V4(Ipv4Fields {
            src: Ipv4Addr::from(be32(f, 4)),
            dst: Ipv4Addr::from(be32(f, 8)),
            ttl,
            tos,
            dont_fragment: f[3] & 1 == 1,
            ident: be16(f, 12).max(1),
        })
    };
    let transport = match proto {
        0 => TransportFields::Udp(UdpFields {
            src_port: be16(f, 40),
            dst_port: be16(f, 42),
        }),
        1 => TransportFields::Tcp(TcpFields {
            src_port: be16(f, 40),
            dst_port: be16(f, 42),
            seq: be32(f, 44),
            ack: be32(f, 48),
            flags: f[52],
            window: be16(f, 53),
        }),
        _ => TransportFields::Echo(EchoFields {
            ident: be16(f, 40),
            seq: be16(f, 42),
        }),
    };
    let mut buf = Vec::new();
    let len = emit(&ip, &transport, payload, &mut buf);
    assert_eq!(len, buf.len());
    let h = if v6 { 40 } else { 20 };
    let header = match transport {
        TransportFields::Tcp(_) => 20,
        _ => 8,
    };
    assert_eq!(buf.len(), h + header + payload.len());
    let mut want_checksum = None;
    if force && !matches!(transport, TransportFields::Tcp(_)) {
        let want = be16(f, 56).max(1);
        let at = match transport {
            TransportFields::Udp(_) => h + 6,
            _ => h + 2,
        };
        let n = buf.len();
        force_checksum(&mut buf, at, n - 2, want);
        want_checksum = Some((at, want));
    }
    let p = parse_ip(&buf).expect("an emitted probe parses");
    let (src, dst): (IpAddr, IpAddr) = match &ip {
        IpFields::V4(i) => (i.src.into(), i.dst.into()),
        IpFields::V6(i) => (i.src.into(), i.dst.into()),
    };
    assert_eq!((p.ip.src, p.ip.dst, p.ip.ttl, p.ip.tos), (src, dst, ttl, tos));
    match &ip {
        IpFields::V4(i) => {
            assert_eq!((p.ip.ident, p.ip.dont_fragment), (i.ident, i.dont_fragment));
            assert_eq!(sum(&buf[..20]), 0, "IPv4 header checksum");
        }
        IpFields::V6(i) => assert_eq!(p.ip.flow_label, i.flow_label),
    }
    match (transport, p.transport) {
        (TransportFields::Udp(u), Transport::Udp(got)) => {
            assert_eq!((got.src_port, got.dst_port), (u.src_port, u.dst_port));
            assert_eq!(usize::from(got.payload_len), payload.len());
        }
        (TransportFields::Tcp(t), Transport::Tcp(got)) => {
            assert_eq!(
                (got.src_port, got.dst_port, got.seq, got.ack, got.flags, got.window),
                (t.src_port, t.dst_port, t.seq, t.ack, t.flags, t.window)
            );
        }
        (TransportFields::Echo(e), Transport::Icmp(IcmpMessage::EchoRequest { ident, seq })) => {
            assert_eq!((ident, seq), (e.ident, e.seq));
        }
        (t, got) => panic!("emitted {t:?}, parsed {got:?}"),
    }
    if let Some((at, want)) = want_checksum {
        let got = be16(&buf, at);
        assert!(got == want || (want == 0xffff && got == 0), "checksum {got:#x}, wanted {want:#x}");
    }
    // The IPv4 ICMP checksum covers the message alone: it must verify.
    if !v6 && matches!(transport, TransportFields::Echo(_)) {
        assert_eq!(sum(&buf[20..]), 0, "ICMP checksum");
    }
});

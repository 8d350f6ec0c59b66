//! Fuzz target: the first byte selects a link type from `svctr_wire::link::dlt::ALL` (modulo
//! its length), the rest is a captured frame. `ip_payload` then `parse_ip` must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svctr_wire::icmp::IcmpMessage;
use svctr_wire::link::{dlt, ip_payload};
use svctr_wire::packet::{parse_ip, Transport};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let linktype = dlt::ALL[usize::from(selector) % dlt::ALL.len()];
    if let Some(ip) = ip_payload(linktype, frame) {
        // The IP packet is a suffix of the frame.
        assert!(ip.len() <= frame.len());
        if let Ok(packet) = parse_ip(ip) {
            if let Transport::Icmp(IcmpMessage::Error(e)) = &packet.transport {
                let _ = (e.quote.ports(), e.quote.tcp_seq(), e.quote.udp_checksum());
            }
        }
    }
});

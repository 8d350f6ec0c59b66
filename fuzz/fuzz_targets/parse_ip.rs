//! Fuzz target: raw bytes as a captured IP packet. `parse_ip` must never panic, and neither
//! must the accessors the tracer calls on an ICMP error's quote.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svctr_wire::icmp::IcmpMessage;
use svctr_wire::packet::{parse_ip, Transport};

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = parse_ip(data) {
        if let Transport::Icmp(IcmpMessage::Error(e)) = &packet.transport {
            let _ = (e.quote.ports(), e.quote.tcp_seq(), e.quote.udp_checksum());
            // The quote is a sub-slice of the input.
            assert!(e.quote.transport.len() <= data.len());
        }
    }
});

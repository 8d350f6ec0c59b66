//! Fuzz target: raw bytes as a reverse-traceroute ICMP message (`svctr_wire::revtr`), parsed as
//! a request and as a response in both families, and as a probe's transport header by the
//! matchers. Nothing may panic, and whatever parses must round-trip: emitted, it parses to the
//! same value, and that value emits the same bytes again.
#![no_main]

use std::net::Ipv6Addr;

use libfuzzer_sys::fuzz_target;
use svctr_wire::revtr::{
    answer_identifier, quoted_identifier, Family, Request, Response, TcpProbe,
};

const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const SERVER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20);

fn emit_request(r: &Request, family: Family, out: &mut Vec<u8>) {
    match family {
        Family::V4 => r.emit_v4(out),
        Family::V6 => r.emit_v6(&CLIENT, &SERVER, out),
    };
}

fn emit_response(r: &Response, family: Family, out: &mut Vec<u8>) {
    match family {
        Family::V4 => r.emit_v4(out),
        Family::V6 => r.emit_v6(&SERVER, &CLIENT, out),
    };
}

fuzz_target!(|data: &[u8]| {
    let (mut first, mut again) = (Vec::new(), Vec::new());
    for family in [Family::V4, Family::V6] {
        if let Ok(r) = Request::parse(family, data) {
            emit_request(&r, family, &mut first);
            assert_eq!(Request::parse(family, &first), Ok(r));
            emit_request(&r, family, &mut again);
            assert_eq!(first, again);
            for tcp in [TcpProbe::Syn, TcpProbe::Plain] {
                let _ = r.probe(family, r.ident, tcp);
            }
            let _ = r.indirect_target(family);
        }
        if let Ok(r) = Response::parse(family, data) {
            emit_response(&r, family, &mut first);
            assert_eq!(Response::parse(family, &first), Ok(r));
            emit_response(&r, family, &mut again);
            assert_eq!(first, again);
        }
    }
    for protocol in [1, 6, 17, 58] {
        let _ = quoted_identifier(protocol, data);
        let _ = svctr_wire::revtr::FlowProbe::tag(protocol, data);
        let _ = answer_identifier(protocol, data, TcpProbe::Syn);
        let _ = answer_identifier(protocol, data, TcpProbe::Plain);
    }
});

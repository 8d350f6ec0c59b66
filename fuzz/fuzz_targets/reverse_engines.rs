//! Fuzz target: captured packets into the reverse-traceroute engines (`svctr_core::reverse`).
//! Input: IP packets, each prefixed by its length (u16, big endian; a length that does not fit
//! makes the rest one packet), fed 1 ms apart to a server (this host: 198.19.1.2 and
//! 2001:2:0:1901::2; at most 64 sessions), to a client tracing back from 198.19.1.2 to
//! 198.18.1.2 (with `flow --reverse`'s flow-shaped probes when the first byte's bit 1 is set)
//! and to a reverse multipath discovery (the MDA in reverse mode) from the same server.
//! Nothing may panic; the server never holds more than its sessions and never sends anything
//! to an address that did not send it a packet (no indirect target is allowed); the client
//! never has two requests out with one identifier.
#![no_main]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use svctr_core::reverse::{ClientConfig, ReverseClient, ReverseServer, ServerConfig};
use svctr_core::{Mda, MdaConfig, Now, ReverseMda};
use svctr_wire::packet::parse_ip;

fuzz_target!(|data: &[u8]| {
    let server_addrs: Vec<IpAddr> = vec![
        "198.19.1.2".parse().unwrap(),
        "2001:2:0:1901::2".parse().unwrap(),
    ];
    let mut srv = ReverseServer::new(ServerConfig {
        max_sessions: 64,
        addresses: server_addrs.clone(),
        ..ServerConfig::default()
    });
    let mut cl = ReverseClient::new(
        ClientConfig {
            presence_check: data.first().is_some_and(|b| b & 1 == 1),
            flow_probe: data
                .first()
                .is_some_and(|b| b & 2 == 2)
                .then_some(svctr_core::reverse::ReverseFlow {
                    server_port: 8080,
                    client_port: 40_000,
                    seq: 1_000_000,
                    ack: 2_000_000,
                    window: 500,
                    tos: 0,
                    flow_label: 0,
                    distance: Some(5),
                }),
            protocol: svctr_core::Protocol::Tcp,
            ..ClientConfig::default()
        },
        server_addrs[0],
        "198.18.1.2".parse().unwrap(),
    )
    .unwrap();
    let mut mda = Mda::new(MdaConfig {
        reverse: Some(ReverseMda {
            pad: 0,
            ident_first: 1,
            ident_count: 1024,
            flow_offset: 0,
        }),
        ..MdaConfig::default()
    })
    .unwrap();
    let t0 = Instant::now();
    mda.add_target(t0, server_addrs[0], "198.18.1.2".parse().unwrap())
        .unwrap();
    let w0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut senders: BTreeSet<IpAddr> = BTreeSet::new();
    let mut buf = Vec::new();
    let mut out_ids: BTreeSet<u16> = BTreeSet::new();
    let mut rest = data;
    let mut i = 0u64;
    while !rest.is_empty() {
        let (pkt, next) = match rest {
            [a, b, tail @ ..] => {
                let n = usize::from(u16::from_be_bytes([*a, *b]));
                if n <= tail.len() {
                    (&tail[..n], &tail[n..])
                } else {
                    (tail, &[][..])
                }
            }
            _ => (rest, &[][..]),
        };
        rest = next;
        i += 1;
        let now = Now {
            mono: t0 + Duration::from_millis(i),
            wall: w0 + Duration::from_millis(i),
        };
        if let Ok(p) = parse_ip(pkt) {
            senders.insert(p.ip.src);
        }
        srv.handle_packet(now.mono, now.wall, pkt);
        cl.handle_packet(now.mono, now.wall, pkt);
        mda.handle_packet(now.mono, now.wall, pkt);
        srv.handle_timeout(now);
        cl.handle_timeout(now);
        mda.handle_timeout(now);
        while mda.poll_transmit(now, &mut buf).is_some() {}
        while mda.poll_event().is_some() {}
        while let Some(tx) = srv.poll_transmit(now, &mut buf) {
            assert!(senders.contains(&tx.dst), "sent to {} who sent nothing", tx.dst);
            assert!(server_addrs.contains(&parse_ip(&buf[..tx.len]).unwrap().ip.src));
        }
        while let Some(tx) = cl.poll_transmit(now, &mut buf) {
            out_ids.insert(tx.ident);
        }
        while srv.poll_event().is_some() {}
        while cl.poll_event().is_some() {}
        assert!(srv.open_sessions() <= 64);
    }
});

//! Results the unit tests of the output formats share.

use svctr_core::{Algorithm, Hop, ProbeReply, Protocol, StopReason, Strategy, TracerouteResult};

/// A reply from `addr` after `rtt` ms with ICMP (type, code) and a reply TTL of 63.
pub(crate) fn reply(addr: &str, rtt: f64, icmp: (u8, u8)) -> ProbeReply {
    ProbeReply {
        addr: Some(addr.parse().unwrap()),
        rtt_ms: Some(rtt),
        icmp_type: Some(icmp.0),
        icmp_code: Some(icmp.1),
        reply_ttl: Some(63),
        ..ProbeReply::default()
    }
}

/// IPv4 UDP Paris, 3 hops, the second probe at TTL 1 unanswered.
pub(crate) fn udp4() -> TracerouteResult {
    TracerouteResult {
        destination: "198.19.1.2".parse().unwrap(),
        port: Some(33434),
        source: "198.18.1.2".parse().unwrap(),
        source_port: Some(40000),
        source_port_count: None,
        protocol: Protocol::Udp,
        strategy: Strategy::Paris,
        ip_version: 4,
        algorithm: Algorithm::Concurrent,
        start: "2026-12-05T15:26:34.980058Z".into(),
        end: "2026-12-05T15:26:35.500000Z".into(),
        stop_reason: StopReason::RemoteReached,
        hops: vec![
            Hop {
                ttl: 1,
                probes: vec![
                    reply("198.18.1.1", 0.0504641, (11, 0)),
                    ProbeReply::default(),
                ],
            },
            Hop {
                ttl: 2,
                probes: vec![reply("198.18.2.2", 1.5, (3, 1))],
            },
            Hop {
                ttl: 3,
                probes: vec![reply("198.19.1.2", 2.25, (3, 3))],
            },
        ],
        probes_sent: 4,
        replies: 3,
    }
}

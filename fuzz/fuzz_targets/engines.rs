//! Fuzz target: captured packets and time into the flow tracer's `Engine`, the service
//! `Monitor` (with the shipped signatures: DNS, TLS and QUIC from the packets) and the
//! classic `Traceroute` (`svctr_core`). Input: records of [time step (u8, ms), which engine
//! (u8), length (u16 BE), packet]; the local host is 198.18.1.2 / 2001:2:0:1801::2, the
//! traceroute's targets 198.19.1.2 and 2001:2:0:1901::2. Each step: the packet in, timers,
//! every probe out, every event drained. Nothing may panic; traces in progress never exceed
//! the limits set (4 for the engine, 8 for the monitor); the engine never tracks more flows
//! than packets it was given.
#![no_main]

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use svctr_core::{
    Engine, FlowFilter, Machine, Monitor, MonitorConfig, Now, Signatures, TraceConfig,
    Traceroute, TracerouteConfig,
};

fn step<M: Machine>(m: &mut M, now: Now, pkt: Option<&[u8]>, buf: &mut Vec<u8>) {
    if let Some(p) = pkt {
        m.handle_packet(now.mono, now.wall, p);
    }
    m.handle_timeout(now);
    let mut n = 0;
    while m.poll_transmit(now, buf).is_some() {
        n += 1;
        assert!(n < 100_000, "a machine that never stops sending");
    }
    while m.poll_event().is_some() {}
}

/// The shipped signatures, built once (building them is most of a run's time otherwise).
fn signatures() -> Signatures {
    static SIGS: std::sync::OnceLock<Signatures> = std::sync::OnceLock::new();
    SIGS.get_or_init(Signatures::builtin).clone()
}

fuzz_target!(|data: &[u8]| {
    let local: Vec<IpAddr> = vec![
        "198.18.1.2".parse().unwrap(),
        "2001:2:0:1801::2".parse().unwrap(),
    ];
    let cfg = TraceConfig {
        timeout: Duration::from_millis(200),
        ..TraceConfig::default()
    };
    let mut engine = Engine::new(cfg.clone(), FlowFilter::default(), local.clone()).unwrap();
    engine.set_max_traces(4);
    let mut monitor = Monitor::new(
        MonitorConfig {
            trace: cfg,
            services: Some(signatures()),
            max_traces: 8,
            ..MonitorConfig::default()
        },
        local.clone(),
    )
    .unwrap();
    let mut traceroute = Traceroute::new(TracerouteConfig {
        timeout: Duration::from_millis(200),
        ..TracerouteConfig::default()
    })
    .unwrap();
    let t0 = Instant::now();
    let w0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let _ = traceroute.add_target(t0, "198.19.1.2".parse().unwrap(), local[0]);
    let _ = traceroute.add_target(t0, "2001:2:0:1901::2".parse().unwrap(), local[1]);
    let mut buf = Vec::new();
    let mut rest = data;
    let mut t = Duration::ZERO;
    let mut packets = 0usize;
    while rest.len() >= 4 {
        t += Duration::from_millis(u64::from(rest[0]));
        let which = rest[1];
        let n = usize::from(u16::from_be_bytes([rest[2], rest[3]])).min(rest.len() - 4);
        let pkt = &rest[4..4 + n];
        rest = &rest[4 + n..];
        let now = Now {
            mono: t0 + t,
            wall: w0 + t,
        };
        packets += 1;
        match which % 4 {
            0 => step(&mut engine, now, Some(pkt), &mut buf),
            1 => step(&mut monitor, now, Some(pkt), &mut buf),
            2 => {
                monitor.handle_detection_packet(now.mono, pkt);
                step(&mut monitor, now, None, &mut buf);
            }
            _ => step(&mut traceroute, now, Some(pkt), &mut buf),
        }
        assert!(engine.active_traces() <= 4);
        assert!(engine.flows() <= packets);
        assert!(monitor.engine().active_traces() <= 8);
    }
    // Long after: every timer fires, nothing left hanging that panics.
    let end = Now {
        mono: t0 + t + Duration::from_secs(3600),
        wall: w0 + t + Duration::from_secs(3600),
    };
    step(&mut engine, end, None, &mut buf);
    step(&mut monitor, end, None, &mut buf);
    step(&mut traceroute, end, None, &mut buf);
});

//! The sans-IO engine of service-traceroute.
//!
//! [`Engine`] watches the packets of live application flows and traces the path of each selected
//! flow with TTL-limited probes that carry the flow's exact 5-tuple, so that load balancers, NATs
//! and firewalls treat the probes as the flow itself. It matches the ICMP errors that routers
//! send back to the probe that caused them and produces one [`TraceResult`] per traced flow.
//!
//! What it does not do: it opens no socket, captures nothing and never reads a clock. Packets and
//! time are inputs; probes to send, the next timer and results are outputs. The live driver
//! (crate `svctr-io`) connects it to libpcap and a raw socket; tests drive it with scripted
//! packets and virtual time.
//!
//! ```
//! use std::time::{Duration, Instant, SystemTime};
//! use svctr_core::{Engine, FlowSelector, Now, Protocol, TraceConfig};
//!
//! let selector = FlowSelector { protocol: Protocol::Tcp, ..FlowSelector::default() };
//! let local = vec!["198.18.0.2".parse().unwrap()];
//! let mut engine = Engine::new(TraceConfig::default(), selector, local).unwrap();
//! let now = Now { mono: Instant::now(), wall: SystemTime::now() };
//! // feed captured IP packets with engine.handle_packet(now, capture_ts, bytes),
//! // send what engine.poll_transmit(now, &mut buf) returns, sleep until engine.poll_timeout(),
//! // call engine.handle_timeout(now), and collect engine.poll_event().
//! engine.handle_timeout(now);
//! assert!(engine.poll_event().is_none());
//! let _ = Duration::ZERO;
//! ```

mod classic;
mod compare;
mod config;
mod engine;
mod flow;
mod monitor;
mod pacer;
mod probe;
mod report;
mod result;
mod trace;

pub use classic::{
    ProbeOut, Strategy, TargetError, Traceroute, TracerouteConfig, TracerouteEvent,
    TracerouteResult, CLASSIC_TCP_PORTS,
};
pub use compare::{compare, render_comparison, Comparison, TtlComparison};
pub use config::{Algorithm, ConfigError, TraceConfig, FLOW_SLOTS, MAX_FLOW_PROBES, SLOT_BITS};
pub use engine::{Engine, EngineStats, Event, NotTraced, Now, Transmit};
pub use flow::{FlowKey, FlowSelector, Protocol};
pub use monitor::{FlowFilter, Granularity, Monitor, MonitorConfig, MonitorStats, KNOWN_IDLE};
pub use pacer::Pacer;
pub use probe::SYN_COPY_MAX_TTL;
pub use report::{
    render_hop, render_text, render_traceroute_text, traceroute_header, traceroute_stop_line,
};
pub use result::{
    Endpoint, FlowInfo, Hop, MatchSource, MplsEntry, ProbeReply, ServiceTag, StopReason,
    TraceResult,
};
/// Service recognition (re-exported from `svctr-detect`): signatures and the detector's settings.
pub use svctr_detect::{
    DetectorConfig, DetectorStats, Service, ServiceSpec, SignatureError, Signatures,
};

//! The sans-IO engines of service-traceroute, and what they share.
//!
//! Every engine is a [`Machine`]: packets and time in; probes, timers and events out. It
//! opens no socket, captures nothing and never reads a clock, so tests drive it with scripted
//! packets and virtual time, and one live run loop (crate `svctr-io`) drives them all.
//!
//! * [`Engine`], the flow tracer: watches the packets of live application flows and traces
//!   the path of each selected flow with TTL-limited probes that carry the flow's exact
//!   5-tuple, so that load balancers, NATs and firewalls treat them as the flow itself; it
//!   matches the ICMP errors routers send back and produces one [`TraceResult`] per flow.
//! * [`Monitor`]: the flow tracer with service recognition (`svctr-detect`), granularity and
//!   re-tracing.
//! * [`Traceroute`]: classic, Paris and Dublin traceroute to many targets.
//!
//! What they share: the [`Scheduler`] (per-key deadlines and a round-robin transmit queue, so
//! work per input does not grow with the number of traces), the configurations with their
//! defaults ([`TraceConfig`], [`TracerouteConfig`]), the [`Pacer`], the results and the
//! [`PathGraph`] every result can be seen as (per-TTL nodes and links; a single path is its
//! simplest case), and text rendering. A new engine (multipath discovery, reverse traceroute)
//! implements [`Machine`], keeps its traces in a [`Scheduler`] and reports [`PathGraph`]s.
//!
//! ```
//! use std::time::{Duration, Instant, SystemTime};
//! use svctr_core::{Engine, FlowFilter, Now, Protocol, TraceConfig};
//!
//! let selector = FlowFilter::protocol(Protocol::Tcp);
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

mod asn;
mod classic;
mod compare;
mod config;
mod dot;
mod engine;
mod flow;
mod machine;
mod mda;
mod monitor;
mod names;
mod pacer;
mod path;
mod probe;
mod report;
mod result;
mod scheduler;
mod trace;

pub mod reverse;

pub use asn::{AsnError, AsnTable};
pub use classic::{
    Strategy, TargetError, Traceroute, TracerouteConfig, TracerouteEvent, TracerouteResult,
    CLASSIC_TCP_PORTS,
};
pub use compare::{
    compare, compare_multipath, render_comparison, render_multipath_comparison, BranchTtl,
    Comparison, FlowBranch, MultipathComparison, TtlComparison,
};
pub use config::{Algorithm, ConfigError, TraceConfig, FLOW_SLOTS, MAX_FLOW_PROBES, SLOT_BITS};
pub use dot::{render_dot, DotPart};
pub use engine::{Engine, EngineStats, Event, NotTraced, DEFAULT_MAX_FLOWS};
pub use flow::{FlowFilter, FlowKey, Protocol};
pub use machine::{Machine, Now, Transmit};
pub use mda::{
    Mda, MdaConfig, MdaEvent, MdaResult, MdaStop, PerPacket, ReverseMda, BRANCH_TESTS,
    REVERSE_FLOW_BASE,
};
pub use monitor::{
    Granularity, Monitor, MonitorConfig, MonitorStats, KNOWN_IDLE, PROBE_MEMORY, PROBE_TTL_MAX,
};
pub use pacer::{Pacer, FLOW_RATE};
pub use path::{Diamond, GraphHop, Link, Node, PathGraph};
pub use probe::SYN_COPY_MAX_TTL;
pub use report::{
    multipath_footer, multipath_header, multipath_stop_text, render_hop, render_multipath_hop,
    render_multipath_text, render_text, render_traceroute_text, traceroute_header,
    traceroute_stop_line,
};
pub use result::{
    Endpoint, FlowInfo, Hop, InterfaceEntry, MatchSource, MplsEntry, ProbeReply, ServiceTag,
    StopReason, TraceResult,
};
pub use scheduler::Scheduler;
/// Service recognition (re-exported from `svctr-detect`): signatures and the detector's settings.
pub use svctr_detect::{
    DetectorConfig, DetectorStats, Service, ServiceSpec, SignatureError, Signatures,
};

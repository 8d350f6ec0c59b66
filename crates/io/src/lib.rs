//! The live driver of service-traceroute: connects the sans-IO engines of `svctr-core` (the
//! flow tracer and service [`svctr_core::Monitor`], the classic/Paris/Dublin
//! [`svctr_core::Traceroute`], the multipath [`svctr_core::Mda`]) to libpcap captures
//! (kernel BPF filters, block or immediate delivery, kernel timestamps) and to raw IPv4/IPv6
//! sockets that send the probes.
//!
//! One run loop (module `run`) drives any [`svctr_core::Machine`]: captures, raw sockets, the
//! probe rate, the stop flag and shutdown live there once. What differs between engines is
//! only which captures they have (their kernel filters, module `filter`), the per-process
//! marker they reserve (module `reserve`) and what their hooks do with events (the monitor's
//! UDP shield and fast lane, trace's reverse DNS).
//!
//! What it does not do: decide anything about probes or replies (the engines' job), or print
//! (results and counters go back to the caller).
//!
//! Trace the flows of one 5-tuple selection:
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use svctr_core::{FlowFilter, Protocol, TraceConfig};
//! use svctr_io::{trace_flows, FlowTraceOptions};
//!
//! let opts = FlowTraceOptions {
//!     iface: "eth0".into(),
//!     filter: FlowFilter { protocol: Some(Protocol::Tcp), remote_port: Some(443), ..Default::default() },
//!     trace: TraceConfig::default(),
//!     max_traces: 1,
//!     duration: Some(std::time::Duration::from_secs(30)),
//!     udp_shield: true,
//! };
//! let stop = AtomicBool::new(false);
//! trace_flows(&opts, &stop, |result| println!("{}", svctr_core::render_text(&result))).unwrap();
//! ```
//!
//! Or watch for a service's flows and stream the traces as they finish:
//!
//! ```no_run
//! use svctr_core::{MonitorConfig, ServiceSpec, Signatures};
//! use svctr_io::{spawn_monitor, MonitorOptions};
//!
//! let mut services = Signatures::builtin().select(&["YouTube"]).unwrap();
//! services.add(ServiceSpec { name: "my-cdn".into(), domains: vec!["cdn.example".into()], ..Default::default() }, "code").unwrap();
//! let run = spawn_monitor(MonitorOptions {
//!     iface: "eth0".into(),
//!     config: MonitorConfig { services: Some(services), ..MonitorConfig::default() },
//!     duration: None,
//!     udp_shield: true,
//!     rate: 1000,
//!     capture_buffer: None,
//!     live: None,
//!     pcap: None,
//! });
//! for result in run {
//!     println!("{:?} {:?}: {} hops", result.flow.service, result.flow.name, result.hops.len());
//! }
//! ```

mod capture;
mod driver;
mod error;
mod filter;
mod handle;
mod iface;
mod live;
mod multipath;
mod names;
pub mod privilege;
mod probing;
mod replies;
mod reserve;
mod reverse;
mod run;
mod savefile;
mod sender;
mod shield;
mod traceroute;

pub use capture::{DETECTION_SNAPLEN, SNAPLEN};
pub use driver::{
    monitor, spawn_monitor, trace_flows, FlowTraceOptions, MonitorOptions, RunSummary,
};
pub use error::Error;
pub use filter::{
    detection_filter, flow_filter, lane_filter, multipath_filter, reverse_client_filter,
    reverse_server_filter, traceroute_filter, DetectionSources, LANE_FLOWS,
};
pub use handle::{Canceller, RunHandle};
pub use iface::interface_addresses;
pub use live::{LiveStats, LIVE_EVERY};
pub use multipath::{
    multipath, multipath_one, spawn_multipath, MultipathOptions, MultipathSummary,
};
pub use names::{NameResolver, NAME_WAIT};
pub use probing::Receive;
pub use replies::RAW_TARGETS;
pub use reverse::{reverse, reverse_multipath, serve, ReverseOptions, ServerOptions};
pub use traceroute::{
    spawn_traceroute, traceroute, traceroute_one, TracerouteOptions, TracerouteSummary,
};

/// A traceroute running in the background ([`spawn_traceroute`]): hops and results as they
/// come, then every result.
pub type TracerouteHandle = RunHandle<svctr_core::TracerouteEvent, TracerouteSummary>;
/// A monitor running in the background ([`spawn_monitor`]): results as traces finish, then
/// the run's summary.
pub type MonitorHandle = RunHandle<svctr_core::TraceResult, RunSummary>;
/// A multipath discovery running in the background ([`spawn_multipath`]): TTLs and results
/// as they come, then every result.
pub type MultipathHandle = RunHandle<svctr_core::MdaEvent, MultipathSummary>;

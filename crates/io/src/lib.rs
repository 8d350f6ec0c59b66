//! The live driver of service-traceroute: connects the sans-IO [`svctr_core::Engine`] to a
//! libpcap capture (kernel BPF filter, immediate mode, kernel timestamps) and to a raw IPv4
//! socket that sends the probes.
//!
//! What it does not do: decide anything about probes or replies. All of that is the engine's.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use svctr_core::{FlowSelector, Protocol, TraceConfig};
//! use svctr_io::{trace_flows, FlowTraceOptions};
//!
//! let opts = FlowTraceOptions {
//!     iface: "eth0".into(),
//!     selector: FlowSelector { protocol: Protocol::Tcp, remote_port: Some(443), ..Default::default() },
//!     trace: TraceConfig::default(),
//!     count: 1,
//!     duration: Some(std::time::Duration::from_secs(30)),
//!     udp_shield: true,
//! };
//! let stop = AtomicBool::new(false);
//! trace_flows(&opts, &stop, |result| println!("{}", svctr_core::render_text(&result))).unwrap();
//! ```

mod capture;
mod driver;
mod error;
mod iface;
mod names;
mod sender;
mod shield;
mod traceroute;

pub use capture::{bpf_filter, SNAPLEN};
pub use driver::{trace_flows, FlowTraceOptions, RunSummary};
pub use error::Error;
pub use iface::interface_addresses;
pub use names::{NameResolver, NAME_WAIT};
pub use traceroute::{spawn_traceroute, traceroute, traceroute_one, TracerouteHandle, TracerouteOptions};

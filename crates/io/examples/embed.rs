//! Embedding service-traceroute in another Rust program.
//!
//! Traces the next TCP flow to REMOTE:PORT seen on IFACE and prints each hop's address, the way
//! a monitoring system would consume results (as values, not text):
//!
//! ```text
//! sudo cargo run -p svctr-io --example embed -- eth0 203.0.113.7:443
//! ```
//!
//! The same [`svctr_core::TraceResult`] values are what the CLI prints as text or JSON.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use svctr_core::{Algorithm, FlowSelector, Protocol, TraceConfig};
use svctr_io::{trace_flows, FlowTraceOptions};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(iface), Some(remote)) = (args.get(1), args.get(2).and_then(|r| r.parse::<SocketAddr>().ok())) else {
        eprintln!("usage: embed IFACE REMOTE_IP:PORT");
        return ExitCode::from(2);
    };
    let opts = FlowTraceOptions {
        iface: iface.clone(),
        selector: FlowSelector {
            protocol: Protocol::Tcp,
            remote_ip: Some(remote.ip()),
            remote_port: Some(remote.port()),
            local_port: None,
        },
        trace: TraceConfig { algorithm: Algorithm::Concurrent, ..TraceConfig::default() },
        count: 1,
        duration: Some(Duration::from_secs(30)),
        udp_shield: true,
    };
    // A monitoring system would set this flag from its own shutdown path.
    let stop = AtomicBool::new(false);
    let result = trace_flows(&opts, &stop, |trace| {
        println!("flow {}:{} -> {}:{} ({})", trace.flow.local.ip, trace.flow.local.port, trace.flow.remote.ip, trace.flow.remote.port, trace.stop_reason.as_str());
        for hop in &trace.hops {
            let addrs: Vec<String> = hop.addrs().iter().map(ToString::to_string).collect();
            let best = hop.probes.iter().filter_map(|p| p.rtt_ms).fold(f64::INFINITY, f64::min);
            println!("  ttl {:2}  {:<30} best rtt {}", hop.ttl, if addrs.is_empty() { "*".into() } else { addrs.join(" ") }, if best.is_finite() { format!("{best:.3} ms") } else { "-".into() });
        }
    });
    match result {
        Ok(summary) => {
            eprintln!("{} flow(s) traced, {} probes sent", summary.traced, summary.stats.probes_sent);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("embed: {e}");
            ExitCode::FAILURE
        }
    }
}

//! Embedding service-traceroute in another Rust program.
//!
//! Traces the next TCP flow to REMOTE:PORT seen on IFACE, or (with `--service NAME`) watches
//! for the flows of a service for a minute and streams each trace as it finishes, printing each
//! hop's address the way a monitoring system would consume results (as values, not text):
//!
//! ```text
//! sudo cargo run -p svctr-io --example embed -- eth0 203.0.113.7:443
//! sudo cargo run -p svctr-io --example embed -- eth0 --service YouTube
//! ```
//!
//! The same [`svctr_core::TraceResult`] values are what the CLI prints as text or JSON.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use svctr_core::{
    Algorithm, FlowFilter, MonitorConfig, Protocol, Signatures, TraceConfig, TraceResult,
};
use svctr_io::{spawn_monitor, trace_flows, FlowTraceOptions, MonitorOptions};

fn print(trace: &TraceResult) {
    let f = &trace.flow;
    let service = f
        .service
        .as_deref()
        .map(|s| format!(" service {s}"))
        .unwrap_or_default();
    println!(
        "flow {} -> {}{service} ({})",
        SocketAddr::new(f.local.ip, f.local.port),
        SocketAddr::new(f.remote.ip, f.remote.port),
        trace.stop_reason.as_str()
    );
    for hop in &trace.hops {
        let addrs: Vec<String> = hop.addrs().iter().map(ToString::to_string).collect();
        let best = hop
            .probes
            .iter()
            .filter_map(|p| p.rtt_ms)
            .fold(f64::INFINITY, f64::min);
        println!(
            "  ttl {:2}  {:<30} best rtt {}",
            hop.ttl,
            if addrs.is_empty() {
                "*".into()
            } else {
                addrs.join(" ")
            },
            if best.is_finite() {
                format!("{best:.3} ms")
            } else {
                "-".into()
            }
        );
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1), args.get(2).map(String::as_str), args.get(3)) {
        (Some(iface), Some("--service"), Some(name)) => watch_service(iface, name),
        (Some(iface), Some(remote), None) => match remote.parse::<SocketAddr>() {
            Ok(remote) => trace_one(iface, remote),
            Err(_) => usage(),
        },
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: embed IFACE REMOTE_IP:PORT | embed IFACE --service NAME");
    ExitCode::from(2)
}

fn trace_one(iface: &str, remote: SocketAddr) -> ExitCode {
    let opts = FlowTraceOptions {
        iface: iface.to_string(),
        filter: FlowFilter {
            protocol: Some(Protocol::Tcp),
            remote_ip: Some(remote.ip()),
            remote_port: Some(remote.port()),
            local_port: None,
        },
        trace: TraceConfig {
            algorithm: Algorithm::Concurrent,
            ..TraceConfig::default()
        },
        max_traces: 1,
        duration: Some(Duration::from_secs(30)),
        udp_shield: true,
    };
    // A monitoring system would set this flag from its own shutdown path.
    let stop = AtomicBool::new(false);
    match trace_flows(&opts, &stop, |trace| print(&trace)) {
        Ok(summary) => {
            eprintln!(
                "{} flow(s) traced, {} probes sent",
                summary.traced, summary.stats.engine.probes_sent
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("embed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn watch_service(iface: &str, name: &str) -> ExitCode {
    // The signature set is a value: the shipped one narrowed down here, or built in code with
    // `Signatures::add(ServiceSpec { .. })`.
    let services = match Signatures::builtin().select(&[name]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("embed: {e}");
            return ExitCode::from(2);
        }
    };
    let mut run = spawn_monitor(MonitorOptions {
        iface: iface.to_string(),
        config: MonitorConfig {
            services: Some(services),
            ..MonitorConfig::default()
        },
        duration: Some(Duration::from_secs(60)),
        udp_shield: true,
        rate: 1000,
        capture_buffer: None,
        live: None,
        pcap: None,
    });
    for trace in run.by_ref() {
        print(&trace);
    }
    match run.wait() {
        Ok(summary) => {
            eprintln!(
                "{} trace(s), {} flow(s) recognised",
                summary.traced, summary.stats.flows_recognised
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("embed: {e}");
            ExitCode::FAILURE
        }
    }
}

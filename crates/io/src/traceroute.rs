//! The live driver of the classic/Paris/Dublin traceroute engine: source-address selection,
//! a per-process source port, raw IPv4 and IPv6 sockets, and the libpcap capture that gives
//! kernel timestamps of probes and replies.
//!
//! Several processes can trace at once: each reserves its marker from the kernel for as long as
//! it runs (its source port, or its ICMP echo identifier: see the reserve module), the kernel
//! filter passes only replies that carry it, and the engine checks every reply again, so no
//! process takes another's replies.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use svctr_core::{Traceroute, TracerouteConfig, TracerouteEvent, TracerouteResult};

use crate::names::NamedHooks;
use crate::probing::{reserve_marker, Probing, Receive};
use crate::Error;

/// What to trace.
#[derive(Debug, Clone, Default)]
pub struct TracerouteOptions {
    /// Destinations (IPv4 and IPv6 may be mixed).
    pub targets: Vec<IpAddr>,
    /// Probe parameters. `sport` 0 (UDP, TCP) and `marker` 0 (ICMP) mean "reserve one for
    /// this process"; a value given is reserved too, and an error if another process holds it.
    pub config: TracerouteConfig,
    /// Interface to send from and capture on (`None`: chosen by the routing table, captured
    /// on `any`).
    pub iface: Option<String>,
    /// At most this many probes per second over all targets (0: no limit).
    pub rate: u32,
    /// Resolve hop addresses to names (reverse DNS) in background threads: names are asked
    /// for as hops are found, and each hop event and result carries them
    /// (`ProbeReply::name`). A hop event is held until its names are known, at most
    /// [`crate::NAME_WAIT`]; probing never waits.
    pub resolve_names: bool,
    /// The probes' source address (traceroute's `-s`; `None`: the one the routing table picks
    /// for each target). Targets of the other IP version use the routing table's.
    pub source: Option<IpAddr>,
    /// How replies are received: raw sockets (cheap to open and close) or a capture (see
    /// [`Receive`]); by default raw sockets up to [`crate::RAW_TARGETS`] targets.
    pub receive: Receive,
    /// Keep every probe as it left and every reply matched to one in this pcap file, with
    /// their kernel timestamps (receives with a capture; an error with [`Receive::Raw`]).
    pub pcap: Option<std::path::PathBuf>,
}

/// What a traceroute run did.
#[derive(Debug, Clone)]
pub struct TracerouteSummary {
    /// Every target's result, in the order they finished.
    pub results: Vec<TracerouteResult>,
    /// Packets the capture dropped (its kernel ring full): if non-zero, some replies or the
    /// kernel send timestamps of some probes may be missing.
    pub capture_drops: u32,
}

/// Traces every target, calling `on_event` for each trace's start, each hop as it is found
/// and each finished trace, until all are done or `stop` is set (remaining traces end as
/// `interrupted`).
pub fn traceroute(
    opts: &TracerouteOptions,
    stop: &AtomicBool,
    mut on_event: impl FnMut(&TracerouteEvent),
) -> Result<TracerouteSummary, Error> {
    let probing = Probing {
        targets: &opts.targets,
        source: opts.source,
        iface: opts.iface.as_deref(),
        rate: opts.rate,
        receive: opts.receive,
        pcap: opts.pcap.as_deref(),
    };
    probing.check_iface()?;
    let mut cfg = opts.config.clone();
    // This process's marker, held until the run ends (see the reserve module): the source
    // port(s) for UDP and TCP, the echo identifier for ICMP. The kernel filter and the engine
    // take only replies that carry it.
    let (_reservation, sport, marker) =
        reserve_marker(cfg.protocol, cfg.sport, cfg.marker, cfg.tcp_ports())?;
    (cfg.sport, cfg.marker) = (sport, marker);
    let sources = probing.sources()?;
    let filter_cfg = cfg.clone();
    let filter =
        move |v4, v6, leaving| crate::filter::traceroute_filter_with(&filter_cfg, v4, v6, leaving);
    let protocol = cfg.protocol;
    // The configuration is checked here, once, before anything needs privileges.
    let mut engine = Traceroute::new(cfg)?;
    let start = Instant::now();
    for &(dst, src) in &sources {
        engine
            .add_target(start, dst, src)
            .map_err(|e| Error::Unsupported(e.to_string()))?;
    }
    let mut results = Vec::new();
    let mut hooks = NamedHooks::new(opts.resolve_names, |ev: TracerouteEvent| {
        on_event(&ev);
        if let TracerouteEvent::Finished(r) = ev {
            results.push(*r);
        }
    });
    let end = probing.run(
        &mut engine,
        protocol,
        filter,
        Traceroute::handle_packet,
        stop,
        &mut hooks,
    )?;
    drop(hooks);
    Ok(TracerouteSummary {
        results,
        capture_drops: end.dropped,
    })
}

impl crate::names::Named for TracerouteEvent {
    fn target(&self) -> Option<IpAddr> {
        match self {
            TracerouteEvent::Started { target, .. } | TracerouteEvent::Hop { target, .. } => {
                Some(*target)
            }
            TracerouteEvent::Finished(r) => Some(r.destination),
            _ => None,
        }
    }

    fn addrs(&self) -> Vec<IpAddr> {
        let hops = match self {
            TracerouteEvent::Hop { hop, .. } => std::slice::from_ref(hop),
            TracerouteEvent::Finished(r) => &r.hops[..],
            _ => &[],
        };
        hops.iter()
            .flat_map(|h| h.probes.iter().filter_map(|p| p.addr))
            .collect()
    }

    fn is_final(&self) -> bool {
        matches!(self, TracerouteEvent::Finished(_))
    }

    fn set_names(&mut self, names: &HashMap<IpAddr, String>) {
        let hops = match self {
            TracerouteEvent::Hop { hop, .. } => std::slice::from_mut(hop),
            TracerouteEvent::Finished(r) => &mut r.hops[..],
            _ => &mut [],
        };
        for p in hops.iter_mut().flat_map(|h| h.probes.iter_mut()) {
            p.name = p.addr.and_then(|a| names.get(&a).cloned());
        }
    }
}

/// Traces one target and returns its result (blocking).
pub fn traceroute_one(
    target: IpAddr,
    config: TracerouteConfig,
    iface: Option<String>,
) -> Result<TracerouteResult, Error> {
    let opts = TracerouteOptions {
        targets: vec![target],
        config,
        iface,
        ..TracerouteOptions::default()
    };
    traceroute(&opts, &AtomicBool::new(false), |_| {})?
        .results
        .pop()
        .ok_or_else(|| Error::Unsupported(format!("no result for {target}")))
}

/// Starts tracing in a background thread (non-blocking): iterate over its events as hops are
/// found, cancel it at any time, then `wait` for the results.
pub fn spawn_traceroute(opts: TracerouteOptions) -> crate::TracerouteHandle {
    crate::handle::spawn(move |stop, emit| traceroute(&opts, stop, |ev| emit(ev.clone())))
}

//! The live driver of the multipath engine ([`svctr_core::Mda`]): the same run loop, raw
//! sockets and capture as traceroute, with the marks of multipath probes (see
//! [`crate::multipath_filter`]) and the process's marker reserved from the kernel.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use svctr_core::{Mda, MdaConfig, MdaEvent, MdaResult};

use crate::names::{Named, NamedHooks};
use crate::probing::{reserve_marker, Probing};
use crate::Error;

/// What to discover.
#[derive(Debug, Clone, Default)]
pub struct MultipathOptions {
    /// Destinations (IPv4 and IPv6 may be mixed).
    pub targets: Vec<IpAddr>,
    /// The engine's parameters. `sport` 0 (UDP, TCP) and `marker` 0 (ICMP) mean "reserve
    /// for this process"; a value given is reserved too, and an error if another process
    /// holds it.
    pub config: MdaConfig,
    /// Interface to send from and capture on (`None`: chosen by the routing table, captured
    /// on `any`).
    pub iface: Option<String>,
    /// At most this many probes per second over all destinations (0: no limit).
    pub rate: u32,
    /// Resolve node addresses to names (reverse DNS, off the probing path; see
    /// [`crate::TracerouteOptions::resolve_names`]).
    pub resolve_names: bool,
    /// The probes' source address (`None`: the routing table's for each destination).
    pub source: Option<IpAddr>,
    /// How replies are received (see [`crate::Receive`]).
    pub receive: crate::Receive,
    /// Keep every probe as it left and every reply matched to one in this pcap file (see
    /// [`crate::TracerouteOptions::pcap`]).
    pub pcap: Option<std::path::PathBuf>,
}

/// What a multipath run did.
#[derive(Debug, Clone)]
pub struct MultipathSummary {
    /// Every destination's result, in the order they finished.
    pub results: Vec<MdaResult>,
    /// Packets the capture dropped (its kernel ring full): if non-zero, replies may be
    /// missing, and with them nodes or links.
    pub capture_drops: u32,
}

/// Discovers the load-balanced paths to every target, calling `on_event` for each start,
/// each TTL as it is enumerated and each result, until all are done or `stop` is set (those
/// in progress end as `interrupted`, with what they found).
pub fn multipath(
    opts: &MultipathOptions,
    stop: &AtomicBool,
    mut on_event: impl FnMut(&MdaEvent),
) -> Result<MultipathSummary, Error> {
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
    // The process's marker, held for the run: the ICMP identifier, or the source port(s)
    // (TCP, and UDP keeping its destination port: a block, one per flow identifier, whose
    // first port is also the high half of every TCP sequence number).
    let (_reservation, sport, marker) =
        reserve_marker(cfg.protocol, cfg.sport, cfg.marker, cfg.reserved_ports())?;
    (cfg.sport, cfg.marker) = (sport, marker);
    let sources = probing.sources()?;
    let filter_cfg = cfg.clone();
    let filter =
        move |v4, v6, leaving| crate::filter::multipath_filter_with(&filter_cfg, v4, v6, leaving);
    let protocol = cfg.protocol;
    let mut engine = Mda::new(cfg)?;
    let start = Instant::now();
    for &(dst, src) in &sources {
        engine
            .add_target(start, dst, src)
            .map_err(|e| Error::Unsupported(e.to_string()))?;
    }
    let mut results = Vec::new();
    let mut hooks = NamedHooks::new(opts.resolve_names, |ev: MdaEvent| {
        on_event(&ev);
        if let MdaEvent::Finished(r) = ev {
            results.push(*r);
        }
    });
    let end = probing.run(
        &mut engine,
        protocol,
        filter,
        Mda::handle_packet,
        stop,
        &mut hooks,
    )?;
    drop(hooks);
    Ok(MultipathSummary {
        results,
        capture_drops: end.dropped,
    })
}

/// Discovers the paths to one target and returns its result (blocking).
pub fn multipath_one(
    target: IpAddr,
    config: MdaConfig,
    iface: Option<String>,
) -> Result<MdaResult, Error> {
    let opts = MultipathOptions {
        targets: vec![target],
        config,
        iface,
        ..MultipathOptions::default()
    };
    multipath(&opts, &AtomicBool::new(false), |_| {})?
        .results
        .pop()
        .ok_or_else(|| Error::Unsupported(format!("no result for {target}")))
}

/// Starts a discovery in a background thread: iterate over its events as TTLs are
/// enumerated, cancel it at any time, then `wait` for the results.
pub fn spawn_multipath(opts: MultipathOptions) -> crate::MultipathHandle {
    crate::handle::spawn(move |stop, emit| multipath(&opts, stop, |ev| emit(ev.clone())))
}

impl Named for MdaEvent {
    fn target(&self) -> Option<IpAddr> {
        match self {
            MdaEvent::Started { target, .. } | MdaEvent::Hop { target, .. } => Some(*target),
            // Reverse mode: the destination key is the server, where the probes start.
            MdaEvent::Finished(r) if r.direction.is_some() => Some(r.source),
            MdaEvent::Finished(r) => Some(r.destination),
            _ => None,
        }
    }

    fn addrs(&self) -> Vec<IpAddr> {
        let hops = match self {
            MdaEvent::Hop { hop, .. } => std::slice::from_ref(hop),
            MdaEvent::Finished(r) => &r.graph.hops[..],
            _ => &[],
        };
        hops.iter().flat_map(|h| h.addrs()).collect()
    }

    fn is_final(&self) -> bool {
        matches!(self, MdaEvent::Finished(_))
    }

    fn set_names(&mut self, names: &HashMap<IpAddr, String>) {
        let hops = match self {
            MdaEvent::Hop { hop, .. } => std::slice::from_mut(hop),
            MdaEvent::Finished(r) => &mut r.graph.hops[..],
            _ => &mut [],
        };
        for p in hops
            .iter_mut()
            .flat_map(|h| h.nodes.iter_mut())
            .flat_map(|n| n.probes.iter_mut())
        {
            p.name = p.addr.and_then(|a| names.get(&a).cloned());
        }
    }
}

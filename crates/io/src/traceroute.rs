//! The live driver of the classic/Paris/Dublin traceroute engine: source-address selection,
//! a per-process source port, raw IPv4 and IPv6 sockets, and the libpcap capture that gives
//! kernel timestamps of probes and replies.
//!
//! Several processes can trace at once: each reserves its source port by binding a socket to
//! it (for as long as it runs) and uses it as its marker, and the engine checks every reply
//! against it, so no process takes another's replies.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use socket2::{Domain, SockAddr, Socket, Type};
use svctr_core::{
    Now, Pacer, Protocol, Traceroute, TracerouteConfig, TracerouteEvent, TracerouteResult,
};

use crate::capture::Capture;
use crate::driver::DRAIN_MAX;
use crate::names::{NameResolver, NAME_WAIT};
use crate::sender::RawSockets;
use crate::Error;

/// What to trace.
#[derive(Debug, Clone)]
pub struct TracerouteOptions {
    /// Destinations (IPv4 and IPv6 may be mixed).
    pub targets: Vec<IpAddr>,
    /// Probe parameters. `sport` 0 and `marker` 0 mean "reserve one for this process".
    pub config: TracerouteConfig,
    /// Interface to send from and capture on (`None`: chosen by the routing table, captured
    /// on `any`).
    pub iface: Option<String>,
    /// At most this many targets traced at once (0: all).
    pub parallel: usize,
    /// At most this many probes per second over all targets (0: no limit).
    pub rate: u32,
    /// Resolve hop addresses to names (reverse DNS) in background threads: names are asked
    /// for as hops are found and attached to each result (`ProbeReply::name`) when it
    /// finishes, waiting at most [`crate::NAME_WAIT`] for pending ones. Probing never waits.
    pub resolve_names: bool,
}

impl Default for TracerouteOptions {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            config: TracerouteConfig::default(),
            iface: None,
            parallel: 1024,
            rate: 0,
            resolve_names: false,
        }
    }
}

/// The address this host would use to reach `dst` (a connected UDP socket sends nothing).
fn source_for(dst: IpAddr, iface: Option<&str>) -> Result<IpAddr, Error> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM, None).map_err(|e| Error::Socket {
        what: "opening a UDP socket".into(),
        source: e,
    })?;
    if let Some(i) = iface {
        sock.bind_device(Some(i.as_bytes()))
            .map_err(|e| Error::Socket {
                what: format!("binding to {i}"),
                source: e,
            })?;
    }
    sock.connect(&SockAddr::from(SocketAddr::new(dst, 33434)))
        .map_err(|e| Error::Socket {
            what: format!("no route to {dst}"),
            source: e,
        })?;
    let local = sock.local_addr().map_err(|e| Error::Socket {
        what: "reading the source address".into(),
        source: e,
    })?;
    local
        .as_socket()
        .map(|s| s.ip())
        .ok_or_else(|| Error::Unsupported(format!("no source address for {dst}")))
}

/// A socket held for the whole run so that no other process gets our source port.
fn reserve_port(protocol: Protocol) -> Result<(Socket, u16), Error> {
    let ty = if protocol == Protocol::Tcp {
        Type::STREAM
    } else {
        Type::DGRAM
    };
    let what = |e: io::Error| Error::Socket {
        what: "reserving a source port".into(),
        source: e,
    };
    // Dual-stack: one port for IPv4 and IPv6 alike.
    let (sock, addr): (Socket, SocketAddr) = match Socket::new(Domain::IPV6, ty, None) {
        Ok(s) => {
            s.set_only_v6(false).map_err(what)?;
            (s, "[::]:0".parse().expect("literal"))
        }
        Err(_) => (
            Socket::new(Domain::IPV4, ty, None).map_err(what)?,
            "0.0.0.0:0".parse().expect("literal"),
        ),
    };
    sock.bind(&SockAddr::from(addr)).map_err(what)?;
    let port = sock
        .local_addr()
        .map_err(what)?
        .as_socket()
        .map(|s| s.port())
        .unwrap_or(0);
    Ok((sock, port))
}

/// The kernel-side filter: this process's probes leaving, and replies that can only be for it.
/// An ICMP error is kept when its quoted source port (IPv4: ICMP bytes 28-29 behind a 20-byte
/// quoted header, as our probes have no options; IPv6: bytes 88-89 of the outer packet, behind
/// the 40-byte outer header, 8 ICMPv6 bytes and the 40-byte quoted header) is ours, so several
/// processes each see only their own replies; the engine checks every reply again.
fn bpf_filter(cfg: &TracerouteConfig) -> String {
    let (lo, hi) = match (cfg.protocol, cfg.strategy) {
        (Protocol::Tcp, svctr_core::Strategy::Classic) => (
            cfg.sport,
            cfg.sport
                .saturating_add(u16::from(cfg.max_ttl) * u16::from(cfg.probes_per_hop)),
        ),
        _ => (cfg.sport, cfg.sport),
    };
    let quoted = format!(
        "(icmp and icmp[28:2] >= {lo} and icmp[28:2] <= {hi}) or (icmp6 and ip6[88:2] >= {lo} and ip6[88:2] <= {hi})"
    );
    match cfg.protocol {
        Protocol::Icmp => "icmp or icmp6".to_string(),
        Protocol::Udp => format!("{quoted} or (udp and src port {lo})"),
        Protocol::Tcp => format!("{quoted} or (tcp and portrange {lo}-{hi})"),
    }
}

/// Traces every target, calling `on_event` for each hop as it is found and each finished
/// trace, until all are done or `stop` is set (remaining traces end as `interrupted`).
/// Returns the results in the order they finished.
pub fn traceroute(
    opts: &TracerouteOptions,
    stop: &AtomicBool,
    mut on_event: impl FnMut(&TracerouteEvent),
) -> Result<Vec<TracerouteResult>, Error> {
    let iface = opts.iface.as_deref();
    if let Some(i) = iface {
        if nix::net::if_::if_nametoindex(i).is_err() {
            return Err(Error::UnknownInterface(i.to_string()));
        }
    }
    let mut cfg = opts.config.clone();
    let _reservation = if cfg.protocol != Protocol::Icmp && cfg.sport == 0 {
        let (sock, port) = reserve_port(cfg.protocol)?;
        cfg.sport = port;
        Some(sock)
    } else {
        None
    };
    if cfg.marker == 0 {
        // UDP/TCP: the reserved port is unique on this host; ICMP: the process id.
        cfg.marker = if cfg.protocol == Protocol::Icmp {
            (std::process::id() as u16) | 1
        } else {
            cfg.sport
        };
    }
    let mut pending: VecDeque<(IpAddr, IpAddr)> = VecDeque::new();
    for &dst in &opts.targets {
        pending.push_back((dst, source_for(dst, iface)?));
    }
    let raw = RawSockets::open(
        iface,
        opts.targets.iter().any(IpAddr::is_ipv4),
        opts.targets.iter().any(IpAddr::is_ipv6),
    )?;
    let filter = bpf_filter(&cfg);
    let mut capture = Capture::open_with_buffer(iface.unwrap_or("any"), &filter, 16 << 20)?;
    let mut engine = Traceroute::new(cfg).map_err(|e| Error::Unsupported(e.to_string()))?;

    let resolver = opts.resolve_names.then(|| NameResolver::new(4));
    let parallel = if opts.parallel == 0 {
        usize::MAX
    } else {
        opts.parallel
    };
    let mut results = Vec::new();
    let mut buf = Vec::with_capacity(256);
    let mut pacer = Pacer::new(opts.rate);
    let mut interrupted = false;
    loop {
        let now = Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        };
        if stop.load(Ordering::Relaxed) && !interrupted {
            interrupted = true;
            pending.clear();
            engine.cancel_all(now);
        }
        while engine.active() < parallel {
            let Some((dst, src)) = pending.pop_front() else {
                break;
            };
            if let Err(e) = engine.add_target(now.mono, dst, src) {
                return Err(Error::Unsupported(e.to_string()));
            }
        }
        capture
            .drain(DRAIN_MAX, |ts, ip| {
                engine.handle_packet(Instant::now(), ts, ip)
            })
            .map_err(|e| Error::Capture {
                iface: iface.unwrap_or("any").to_string(),
                source: e,
            })?;
        let now = Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        };
        engine.handle_timeout(now);
        while pacer.next_at(now.mono).is_none() {
            let Some(tx) = engine.poll_transmit(now, &mut buf) else {
                break;
            };
            pacer.try_take(now.mono);
            if let Err(e) = raw.send(tx.dst, &buf[..tx.len]) {
                engine.handle_send_error(now, tx.dst, tx.probe, e.to_string());
            }
        }
        while let Some(mut ev) = engine.poll_event() {
            if let Some(res) = &resolver {
                match &mut ev {
                    TracerouteEvent::Hop { hop, .. } => hop
                        .probes
                        .iter()
                        .filter_map(|p| p.addr)
                        .for_each(|a| res.request(a)),
                    TracerouteEvent::Finished(r) => attach_names(res, r),
                    _ => {}
                }
            }
            on_event(&ev);
            if let TracerouteEvent::Finished(r) = ev {
                results.push(*r);
            }
        }
        if engine.active() == 0 && pending.is_empty() {
            let drops = capture.drops();
            if drops > 0 {
                eprintln!("service-traceroute: warning: the capture dropped {drops} packets (kernel ring full): some replies, or the kernel send timestamps of some probes, may be missing");
            }
            break;
        }
        let t = Instant::now();
        let mut wake = t + Duration::from_millis(50);
        if let Some(at) = engine.poll_timeout() {
            wake = wake.min(at);
        }
        if engine.has_pending_transmit() {
            // Probes are due: as soon as the rate allows (at once without a limit; a probe left
            // queued means the tokens ran out, so this waits for the next one, never spins).
            wake = wake.min(pacer.next_at(t).unwrap_or(t));
        }
        let sleep = wake.saturating_duration_since(t);
        if !sleep.is_zero() {
            crate::driver::wait_readable(&[capture.fd()], sleep);
        }
    }
    Ok(results)
}

/// Fills in `name` of every answered probe, waiting at most [`NAME_WAIT`] for pending names.
fn attach_names(res: &NameResolver, r: &mut TracerouteResult) {
    let ips: Vec<IpAddr> = r
        .hops
        .iter()
        .flat_map(|h| h.probes.iter().filter_map(|p| p.addr))
        .collect();
    let names = res.names(&ips, Instant::now() + NAME_WAIT);
    for p in r.hops.iter_mut().flat_map(|h| h.probes.iter_mut()) {
        p.name = p.addr.and_then(|a| names.get(&a).cloned());
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
        .pop()
        .ok_or_else(|| Error::Unsupported(format!("no result for {target}")))
}

/// Starts tracing in a background thread (non-blocking): iterate over its events as hops are
/// found, cancel it at any time, then `wait` for the results.
pub fn spawn_traceroute(opts: TracerouteOptions) -> crate::TracerouteHandle {
    crate::handle::spawn(move |stop, emit| traceroute(&opts, stop, |ev| emit(ev.clone())))
}

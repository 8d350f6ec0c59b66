//! The live drivers of reverse traceroute: the client ([`svctr_core::reverse::ReverseClient`])
//! and the server ([`svctr_core::reverse::ReverseServer`]), on the one run loop with a capture
//! and raw sockets.
//!
//! # The server: in user space, beside the kernel
//!
//! The reference server is an eBPF program on tc ingress that rewrites each request into its
//! probe and bounces it out of the interface it came in on, Ethernet MACs swapped: it needs
//! Ethernet (no L3 devices) and assumes the way back leaves where the request came in. This
//! one captures with libpcap (which sees a packet before the IP layer does), answers through
//! raw sockets that follow the routing table (so an asymmetric path back is the path the
//! probes take, and any interface type works), and keeps the kernel out of the exchange with
//! an nftables table in front of the local stack:
//!
//! * echo requests of code 1 are dropped on input: Linux would answer them itself as pings
//!   (`icmp_echo` / `icmpv6_echo_reply` copy the request, code 1 included);
//! * TCP to port 1021 (the probes' source port, RFC 4727 experimental) is dropped on input:
//!   the SYN-ACK or RST a target answers a TCP probe with would draw the kernel's RST.
//!
//! * ICMP errors quoting a UDP datagram of 2 payload bytes are dropped on input: those are
//!   the flow-shaped probes of `flow --reverse` (experimental, [`svctr_wire::revtr::FlowProbe`]),
//!   which carry a live flow's own ports, so the kernel would hand the errors to the
//!   service's UDP socket (`__udp4_lib_err`: `EHOSTUNREACH` on its next call with
//!   `IP_RECVERR`), as the flow tracer's shield keeps them from the client's. (Offsets from
//!   the ICMP header: the quoted IPv4 total length at 10, 30 bytes, protocol at 17; the quoted
//!   IPv6 payload length at 12, 10 bytes, next header at 14.) Errors about the TCP ones need
//!   no rule: their sequence number lies below the connection's `SND.UNA`, and Linux
//!   `tcp_v4_err()` / `tcp_v6_err()` ignore such errors (`OutOfWindowIcmps`).
//!
//! Ordinary pings (code 0) still reach the kernel and are answered. Echo replies to the ICMP
//! probes and ICMP errors about them reach the kernel too, which ignores them (no socket).
//! The table (`svctr_<pid>`, families `ip` and `ip6`) is deleted on exit, and tables left by
//! a process that is gone are removed at start (as the flow tracer's shield does).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use svctr_core::reverse::{
    ClientConfig, ReverseClient, ReverseEvent, ReverseResult, ReverseServer, ServerConfig,
    ServerEvent, ServerStats,
};

use svctr_core::{Mda, MdaConfig, MdaEvent, MdaResult, Protocol, ReverseMda};

use crate::capture::Capture;
use crate::names::{Named, NamedHooks};
use crate::probing::Probing;
use crate::run::{Hooks, Limits, Source, Sources};
use crate::sender::RawSockets;
use crate::Error;

/// What to trace back.
#[derive(Debug, Clone, Default)]
pub struct ReverseOptions {
    /// The server (it runs a reverse-traceroute server).
    pub server: Option<IpAddr>,
    /// The engine's settings. `ident_first`/`ident_count` are replaced by this process's
    /// reserved block.
    pub config: ClientConfig,
    /// Interface to send from and capture on (`None`: chosen by the routing table).
    pub iface: Option<String>,
    /// Requests per second at most (0: no limit).
    pub rate: u32,
    /// This host's address toward the server (`None`: the routing table's).
    pub source: Option<IpAddr>,
    /// Resolve the hops' addresses to names (reverse DNS, in background threads, never
    /// delaying a request; see [`crate::TracerouteOptions::resolve_names`]).
    pub resolve_names: bool,
    /// How responses are received (see [`crate::Receive`]).
    pub receive: crate::Receive,
}

/// Traces the path back from `opts.server`, calling `on_event` as TTLs complete, until it
/// ends or `stop` is set.
pub fn reverse(
    opts: &ReverseOptions,
    stop: &AtomicBool,
    mut on_event: impl FnMut(&ReverseEvent),
) -> Result<ReverseResult, Error> {
    with_client(opts, |probing, server, source, (first, count), filter| {
        let mut cfg = opts.config.clone();
        cfg.ident_first = first;
        cfg.ident_count = count;
        cfg.seed = u64::from(std::process::id());
        let mut engine = ReverseClient::new(cfg, server, source).map_err(Error::Unsupported)?;
        let mut result = None;
        let mut hooks = NamedHooks::new(opts.resolve_names, |ev: ReverseEvent| {
            on_event(&ev);
            if let ReverseEvent::Finished(r) = ev {
                result = Some(*r);
            }
        });
        probing.run(
            &mut engine,
            Protocol::Icmp,
            |_, _, _| filter.to_string(),
            ReverseClient::handle_packet,
            stop,
            &mut hooks,
        )?;
        drop(hooks);
        result.ok_or_else(|| Error::Unsupported(format!("no result from {server}")))
    })
}

/// What a client run toward `opts.server` needs, for `body`: its probing (interface, rate,
/// source), the server, this host's address toward it, this process's block of request
/// identifiers (first, count; held until `body` returns) and the capture filter of their
/// responses.
fn with_client<R>(
    opts: &ReverseOptions,
    body: impl FnOnce(&Probing<'_>, IpAddr, IpAddr, (u16, u16), &str) -> Result<R, Error>,
) -> Result<R, Error> {
    let server = opts
        .server
        .ok_or_else(|| Error::Unsupported("no server to trace back from".into()))?;
    let targets = [server];
    let probing = Probing {
        targets: &targets,
        source: opts.source,
        iface: opts.iface.as_deref(),
        rate: opts.rate,
        receive: opts.receive,
        pcap: None,
    };
    probing.check_iface()?;
    let (first, count, _reservation) = crate::reserve::reverse_ident_block()?;
    let (_, source) = probing.sources()?[0];
    let filter = crate::filter::reverse_client_filter(server, first, first + (count - 1));
    body(&probing, server, source, (first, count), &filter)
}

/// Discovers every way back from `opts.server` through per-flow load balancers (the
/// multipath engine in reverse mode: [`svctr_core::ReverseMda`], the request's flow value
/// varied), calling `on_event` as TTLs are enumerated, until it ends or `stop` is set. `mda`
/// gives the protocol, TTLs, confidence, wait and limits; its `reverse` is filled here (this
/// process's identifier block, and `pad`: `None` for [`default_pad`]).
///
/// [`default_pad`]: svctr_core::reverse::default_pad
pub fn reverse_multipath(
    opts: &ReverseOptions,
    mda: &MdaConfig,
    pad: Option<usize>,
    stop: &AtomicBool,
    mut on_event: impl FnMut(&MdaEvent),
) -> Result<MdaResult, Error> {
    with_client(opts, |probing, server, source, (first, count), filter| {
        let mut cfg = mda.clone();
        cfg.reverse = Some(ReverseMda {
            pad: pad.unwrap_or_else(|| svctr_core::reverse::default_pad(server.is_ipv6())),
            ident_first: first,
            ident_count: count,
            flow_offset: seed() as u16,
        });
        let mut engine = Mda::new(cfg)?;
        engine
            .add_target(std::time::Instant::now(), server, source)
            .map_err(|e| Error::Unsupported(e.to_string()))?;
        let mut result = None;
        let mut hooks = NamedHooks::new(opts.resolve_names, |ev: MdaEvent| {
            on_event(&ev);
            if let MdaEvent::Finished(r) = ev {
                result = Some(*r);
            }
        });
        // The server's responses are ICMP echo replies, whatever the probes' protocol.
        probing.run(
            &mut engine,
            Protocol::Icmp,
            |_, _, _| filter.to_string(),
            Mda::handle_packet,
            stop,
            &mut hooks,
        )?;
        drop(hooks);
        result.ok_or_else(|| Error::Unsupported(format!("no result from {server}")))
    })
}

/// One trace: every event is about the server.
impl Named for ReverseEvent {
    fn target(&self) -> Option<IpAddr> {
        Some(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    fn addrs(&self) -> Vec<IpAddr> {
        match self {
            ReverseEvent::Hop(h) => h.addrs(),
            ReverseEvent::Finished(r) => r.graph.hops.iter().flat_map(|h| h.addrs()).collect(),
            _ => Vec::new(),
        }
    }

    fn is_final(&self) -> bool {
        matches!(self, ReverseEvent::Finished(_))
    }

    fn set_names(&mut self, names: &HashMap<IpAddr, String>) {
        let probes: Vec<&mut svctr_core::ProbeReply> = match self {
            ReverseEvent::Hop(h) => h.probes.iter_mut().collect(),
            ReverseEvent::Finished(r) => r
                .graph
                .hops
                .iter_mut()
                .flat_map(|h| h.nodes.iter_mut())
                .flat_map(|n| n.probes.iter_mut())
                .collect(),
            _ => Vec::new(),
        };
        for p in probes {
            p.name = p.addr.and_then(|a| names.get(&a).cloned());
        }
    }
}

/// How to serve.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// The interface whose addresses requests are served on.
    pub iface: String,
    /// The engine's settings (`addresses` is filled from the interface when empty).
    pub config: ServerConfig,
}

/// Runs a reverse-traceroute server until `stop` is set: `on_ready` once it serves (the
/// kernel kept out, the capture open), each session's events to `on_event`; returns the
/// counters.
pub fn serve(
    opts: &ServerOptions,
    stop: &AtomicBool,
    on_ready: impl FnOnce(&[IpAddr]),
    mut on_event: impl FnMut(&ServerEvent),
) -> Result<ServerStats, Error> {
    let mut cfg = opts.config.clone();
    if cfg.addresses.is_empty() {
        cfg.addresses = crate::iface::interface_addresses(&opts.iface)?
            .into_iter()
            .filter(|a| !is_link_local(a))
            .collect();
    } else {
        crate::iface::interface_addresses(&opts.iface)?;
    }
    let v4 = cfg.addresses.iter().any(IpAddr::is_ipv4);
    let v6 = cfg.addresses.iter().any(IpAddr::is_ipv6);
    if !v4 && !v6 {
        return Err(Error::Unsupported(format!(
            "{} has no address to serve requests on",
            opts.iface
        )));
    }
    // Probes and responses follow the routing table (not bound to the interface): the way
    // back may leave by another interface than the request came in by.
    let sender = RawSockets::open(None, v4, v6)?;
    let guard = KernelGuard::install(v4, v6)?;
    let mut sources = Sources::new();
    // Requests on the interface; answers to probes on any (the way back may differ).
    sources.add(Source {
        cap: Capture::open_with_buffer(
            "any",
            &crate::filter::reverse_server_filter(v4, v6),
            32 << 20,
        )?
        .into(),
        feed: ReverseServer::handle_packet,
        paced: false,
    });
    on_ready(&cfg.addresses);
    let mut engine = ReverseServer::new(ServerConfig {
        seed: seed(),
        ..cfg
    });
    let limits = Limits {
        iface: &opts.iface,
        rate: 0,
        duration: None,
        stop,
        packets: None,
    };
    let mut hooks = ServerHooks {
        on_event: &mut on_event,
    };
    let run = crate::run::run(&mut engine, sources, &sender, &limits, &mut hooks);
    drop(guard);
    run?;
    Ok(engine.stats())
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// A seed no client can guess: the probes' payload bytes come from it.
fn seed() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    u64::from_le_bytes(b) ^ t ^ u64::from(std::process::id())
}

struct ServerHooks<'a, F> {
    on_event: &'a mut F,
}

impl<F: FnMut(&ServerEvent)> Hooks<ReverseServer> for ServerHooks<'_, F> {
    fn on_event(&mut self, ev: ServerEvent) -> Result<(), Error> {
        (self.on_event)(&ev);
        Ok(())
    }
}

/// The nftables table that keeps the kernel from answering requests and probe answers (see
/// the module doc); deleted when dropped.
struct KernelGuard {
    table: String,
    families: Vec<&'static str>,
}

impl KernelGuard {
    fn install(v4: bool, v6: bool) -> Result<Self, Error> {
        crate::shield::remove_stale();
        let table = format!("svctr_{}", std::process::id());
        let mut script = String::new();
        let mut families = Vec::new();
        // Priority -300: before conntrack and any filter.
        if v4 {
            families.push("ip");
            script.push_str(&format!(
                "table ip {table} {{\n chain input {{ type filter hook input priority -300; policy accept;\n  \
                 icmp type echo-request icmp code 1 counter drop\n  tcp dport 1021 counter drop\n  \
                 icmp type {{ destination-unreachable, time-exceeded }} @th,80,16 30 @th,136,8 17 counter drop\n }}\n}}\n"
            ));
        }
        if v6 {
            families.push("ip6");
            script.push_str(&format!(
                "table ip6 {table} {{\n chain input {{ type filter hook input priority -300; policy accept;\n  \
                 icmpv6 type echo-request icmpv6 code 1 counter drop\n  tcp dport 1021 counter drop\n  \
                 icmpv6 type {{ destination-unreachable, time-exceeded }} @th,96,16 10 @th,112,8 17 counter drop\n }}\n}}\n"
            ));
        }
        crate::shield::nft(&script).map_err(|e| {
            if e.contains("Operation not permitted") {
                Error::Privilege {
                    what: "keeping the kernel from answering requests (nftables)".into(),
                }
            } else {
                Error::Unsupported(format!("installing the server's nftables table: {e}"))
            }
        })?;
        Ok(Self { table, families })
    }
}

impl Drop for KernelGuard {
    fn drop(&mut self) {
        for f in &self.families {
            let _ = crate::shield::nft(&format!("delete table {f} {}\n", self.table));
        }
    }
}

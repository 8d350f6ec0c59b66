//! What the runs that probe the destinations they are given (traceroute, multipath) share
//! around their engine: the interface and source address checked, this process's marker
//! reserved, each destination's source address, and the run itself (raw sockets, one capture,
//! the run loop).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::time::{Instant, SystemTime};

use socket2::{Domain, SockAddr, Socket, Type};
use svctr_core::{Machine, Protocol};

use crate::capture::Capture;
use crate::replies::{Programs, RawReplies, RAW_TARGETS};
use crate::reserve::Reservation;
use crate::run::{End, Hooks, Limits, Source, Sources};
use crate::sender::RawSockets;
use crate::Error;

/// A UDP socket bound to `iface` if given: the probe of a source address.
fn udp_socket(v4: bool, iface: Option<&str>) -> Result<Socket, Error> {
    let domain = if v4 { Domain::IPV4 } else { Domain::IPV6 };
    let sock = Socket::new(domain, Type::DGRAM, None).map_err(|e| Error::Socket {
        what: "opening a UDP socket".into(),
        source: e,
    })?;
    crate::sender::bind_device(&sock, iface)?;
    Ok(sock)
}

/// The address this host would use to reach `dst` (a connected UDP socket sends nothing).
fn source_for(dst: IpAddr, iface: Option<&str>) -> Result<IpAddr, Error> {
    let sock = udp_socket(dst.is_ipv4(), iface)?;
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

/// Checks that `src` is an address of this host (of `iface`, if given) by binding to it.
fn check_source(src: IpAddr, iface: Option<&str>) -> Result<(), Error> {
    udp_socket(src.is_ipv4(), iface)?
        .bind(&SockAddr::from(SocketAddr::new(src, 0)))
        .map_err(|e| Error::Socket {
            what: format!("cannot send from {src}"),
            source: e,
        })
}

/// Reserves this process's marker (see the reserve module): for ICMP the echo identifier
/// (`marker`, 0: any free one), else `ports` consecutive source ports from `sport` (0: any
/// free block), whose first is also the marker. Returns the reservation, held for the run, and
/// the source port and marker to use.
pub(crate) fn reserve_marker(
    protocol: Protocol,
    sport: u16,
    marker: u16,
    ports: u16,
) -> Result<(Reservation, u16, u16), Error> {
    if protocol == Protocol::Icmp {
        let (marker, r) = crate::reserve::icmp_marker((marker != 0).then_some(marker))?;
        Ok((r, sport, marker))
    } else {
        let want = (sport != 0).then_some(sport);
        let (port, r) = crate::reserve::source_ports(protocol, want, ports)?;
        Ok((r, port, port))
    }
}

/// A run over given destinations.
pub(crate) struct Probing<'a> {
    pub(crate) targets: &'a [IpAddr],
    /// The probes' source address (`None`: the routing table's per destination).
    pub(crate) source: Option<IpAddr>,
    pub(crate) iface: Option<&'a str>,
    /// Probes per second over all destinations (0: no limit).
    pub(crate) rate: u32,
    /// How replies are received.
    pub(crate) receive: Receive,
    /// Keep the run's probes and replies in this pcap file (needs a capture: see
    /// [`Receive`]).
    pub(crate) pcap: Option<&'a std::path::Path>,
}

/// How a run receives replies (and, with a capture, sees its probes leave).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Receive {
    /// Raw sockets up to [`crate::RAW_TARGETS`] destinations, a capture beyond.
    #[default]
    Auto,
    /// Raw sockets with kernel filters (see the replies module): nothing to set up or tear
    /// down but the sockets, so a short run costs about 30 ms less; a probe's send time is
    /// taken in user space.
    Raw,
    /// A libpcap capture: kernel timestamps of the probes leaving too, and a memory-mapped
    /// ring that keeps up with many destinations' replies.
    Capture,
}

impl Probing<'_> {
    /// The interface, if one is given, exists.
    pub(crate) fn check_iface(&self) -> Result<(), Error> {
        if let Some(i) = self.iface {
            if nix::net::if_::if_nametoindex(i).is_err() {
                return Err(Error::UnknownInterface(i.to_string()));
            }
        }
        Ok(())
    }

    /// Which IP versions the destinations use.
    pub(crate) fn families(&self) -> (bool, bool) {
        (
            self.targets.iter().any(IpAddr::is_ipv4),
            self.targets.iter().any(IpAddr::is_ipv6),
        )
    }

    /// Each destination with its source address: the one given (checked to be this host's,
    /// and of some destination's version), else the one the routing table picks.
    pub(crate) fn sources(&self) -> Result<Vec<(IpAddr, IpAddr)>, Error> {
        if let Some(src) = self.source {
            check_source(src, self.iface)?;
            if !self.targets.iter().any(|t| t.is_ipv4() == src.is_ipv4()) {
                return Err(Error::Unsupported(format!(
                    "source address {src} is IPv{} but no target is",
                    if src.is_ipv4() { 4 } else { 6 }
                )));
            }
        }
        let one = |dst: IpAddr| -> Result<(IpAddr, IpAddr), Error> {
            let src = match self.source {
                Some(s) if s.is_ipv4() == dst.is_ipv4() => s,
                _ => source_for(dst, self.iface)?,
            };
            Ok((dst, src))
        };
        // Four system calls a destination: with tens of thousands, the cores share them.
        // (Asked only then: std reads the cgroup files and mountinfo to answer.)
        let threads = if self.targets.len() < 1024 {
            1
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        };
        if threads < 2 {
            return self.targets.iter().map(|&d| one(d)).collect();
        }
        let chunk = self.targets.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = self
                .targets
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().map(|&d| one(d)).collect::<Result<Vec<_>, _>>()))
                .collect();
            let mut all = Vec::with_capacity(self.targets.len());
            for p in parts {
                all.extend(p.join().map_err(|_| {
                    Error::Unsupported("looking up source addresses failed".into())
                })??);
            }
            Ok(all)
        })
    }

    /// The capture's kernel ring: 512 KiB a target (a trace's probes and replies, a thousand
    /// packets, with room for a multipath discovery's), from 1 MiB to 16 MiB. The kernel
    /// allocates and clears it at start: 16 MiB cost a one-destination trace 8 ms.
    fn ring(&self) -> i32 {
        let per_target = 512 << 10;
        let bytes = self.targets.len().saturating_mul(per_target);
        bytes.clamp(1 << 20, 16 << 20) as i32
    }

    /// Opens the raw sockets and what receives the replies to probes of `protocol` (raw
    /// sockets or a capture, see [`Receive`]; `filter(v4, v6, leaving)` is the kernel filter
    /// for those families, passing our probes leaving too if `leaving`), hands packets to
    /// `feed`, and runs `engine` until it is done or `stop` is set.
    pub(crate) fn run<M: Machine, H: Hooks<M>>(
        &self,
        engine: &mut M,
        protocol: Protocol,
        filter: impl Fn(bool, bool, bool) -> String,
        feed: fn(&mut M, Instant, SystemTime, &[u8]),
        stop: &AtomicBool,
        hooks: &mut H,
    ) -> Result<End, Error> {
        let (v4, v6) = self.families();
        let sender = RawSockets::open(self.iface, v4, v6)?;
        let programs = || {
            Programs::new(
                v4.then(|| filter(true, false, false)).as_deref(),
                v6.then(|| filter(false, true, false)).as_deref(),
            )
        };
        // A packet file needs the probes' own captures (kernel timestamps of them leaving):
        // a capture, not raw sockets.
        let receive = match (self.pcap, self.receive) {
            (Some(_), Receive::Raw) => return Err(Error::Unsupported(
                "--pcap needs a capture (--receive pcap): raw sockets do not see the probes leave"
                    .into(),
            )),
            (Some(_), _) => Receive::Capture,
            (None, r) => r,
        };
        let raw = match receive {
            // A program that cannot run on an IPv6 raw socket falls back to a capture.
            Receive::Auto if self.targets.len() <= RAW_TARGETS => programs()?,
            Receive::Raw => Some(programs()?.ok_or_else(|| {
                Error::Unsupported(
                    "this kernel filter cannot run on an IPv6 raw socket: use a capture".into(),
                )
            })?),
            _ => None,
        };
        let cap = match raw {
            Some(programs) => {
                RawReplies::open(self.iface, protocol, &programs, self.targets.len())?.into()
            }
            None => Capture::open_with_buffer(
                self.iface.unwrap_or("any"),
                &filter(v4, v6, true),
                self.ring(),
            )?
            .into(),
        };
        let mut sources = Sources::new();
        sources.add(Source {
            cap,
            feed,
            paced: true,
        });
        let packets = self
            .pcap
            .map(crate::savefile::PacketLog::create)
            .transpose()?
            .map(std::cell::RefCell::new);
        let limits = Limits {
            iface: self.iface.unwrap_or("any"),
            rate: self.rate,
            duration: None,
            stop,
            packets: packets.as_ref(),
        };
        let end = crate::run::run(engine, sources, &sender, &limits, hooks)?;
        if let Some(p) = packets {
            p.into_inner().finish()?;
        }
        Ok(end)
    }
}

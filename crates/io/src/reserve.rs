//! Per-process markers that no two live processes can share, so that several processes tracing
//! at once (the same target, the same flow) never take each other's replies.
//!
//! Every probe carries its process's marker in a field that the ICMP error quotes, and both the
//! kernel filter of the capture and the engine check it on every reply. A marker only isolates
//! if it is *unique*, so each is reserved from the kernel for as long as the process lives, and
//! is released by the kernel when it dies, however it dies:
//!
//! * **UDP and TCP traceroute: the source port**, reserved by binding a socket to it (the
//!   kernel gives each port to one socket). Classic TCP varies the source port per probe, so it
//!   reserves a block of consecutive ports.
//! * **ICMP traceroute: the echo identifier**, reserved in two namespaces at once: the kernel's
//!   ping-socket identifiers (a bound `SOCK_DGRAM`/`IPPROTO_ICMP` socket owns its identifier,
//!   the space ping(8) draws from, when `net.ipv4.ping_group_range` lets this process open one)
//!   and an abstract Unix socket named after the identifier (always available, no privilege, no
//!   file), which every service-traceroute process checks.
//! * **The flow tracer: a slot** of [`FLOW_SLOTS`], again an abstract Unix socket name. A flow's
//!   probes must keep its 5-tuple, so the slot goes into the low bits of the probe's tag (IPv4
//!   identification, IPv6 UDP checksum or TCP sequence number; see `svctr_core::TraceConfig::slot`).
//!
//! Abstract Unix socket names live in the network namespace (unix(7)), which is exactly where
//! processes can see each other's ICMP errors: processes in other namespaces need no isolation.

use std::io;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

use socket2::{Domain, SockAddr, Socket, Type};
use svctr_core::{Protocol, FLOW_SLOTS};

use crate::Error;

/// A reservation: the sockets that hold it, closed (and the marker released) on drop.
#[derive(Debug, Default)]
pub(crate) struct Reservation {
    _ports: Vec<Socket>,
    _names: Vec<UnixDatagram>,
}

/// A pseudo-random start for the searches below (no RNG dependency: time and pid differ per
/// run; uniqueness comes from the kernel, not from this number).
fn start() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos.wrapping_mul(0x9e37_79b9) ^ std::process::id().rotate_left(13)
}

/// Claims the abstract Unix socket name `service-traceroute/<what>/<n>`: `Ok(None)` when
/// another live process holds it.
fn claim(what: &str, n: u32) -> Result<Option<UnixDatagram>, Error> {
    let name = format!("service-traceroute/{what}/{n}");
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).map_err(|e| Error::Socket {
        what: format!("naming the reservation {name}"),
        source: e,
    })?;
    match UnixDatagram::bind_addr(&addr) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(Error::Socket {
            what: format!("reserving {name}"),
            source: e,
        }),
    }
}

/// Reserves a flow-tracer slot (`0..FLOW_SLOTS`).
pub(crate) fn flow_slot() -> Result<(u8, Reservation), Error> {
    let first = start() % u32::from(FLOW_SLOTS);
    for i in 0..u32::from(FLOW_SLOTS) {
        let slot = (first + i) % u32::from(FLOW_SLOTS);
        if let Some(s) = claim("flow-slot", slot)? {
            let slot = u8::try_from(slot).unwrap_or(0);
            return Ok((
                slot,
                Reservation {
                    _ports: Vec::new(),
                    _names: vec![s],
                },
            ));
        }
    }
    Err(Error::Busy(format!(
        "{FLOW_SLOTS} service-traceroute processes already trace flows in this network namespace \
         (each needs its own probe marker): wait for one to finish"
    )))
}

/// Request identifiers per reverse-traceroute client process: 64 blocks of 1,024 (the
/// first without identifier 0).
pub(crate) const REVERSE_BLOCK: u16 = 1024;

/// Reserves a block of reverse-traceroute request identifiers: `(first, count)`. The server
/// echoes nothing but the identifier (its response's sequence number is always 0, reference
/// §1.4), so processes tell their responses apart by disjoint blocks.
pub(crate) fn reverse_ident_block() -> Result<(u16, u16, Reservation), Error> {
    let blocks = u32::from(u16::MAX / REVERSE_BLOCK) + 1;
    let first = start() % blocks;
    for i in 0..blocks {
        let b = (first + i) % blocks;
        if let Some(s) = claim("reverse-idents", b)? {
            let base = u16::try_from(b * u32::from(REVERSE_BLOCK)).unwrap_or(0);
            let (first, count) = if base == 0 {
                (1, REVERSE_BLOCK - 1)
            } else {
                (base, REVERSE_BLOCK)
            };
            return Ok((
                first,
                count,
                Reservation {
                    _ports: Vec::new(),
                    _names: vec![s],
                },
            ));
        }
    }
    Err(Error::Busy(format!(
        "{blocks} reverse-traceroute clients already run in this network namespace (each needs \
         its own block of request identifiers): wait for one to finish"
    )))
}

/// A ping socket's identifier, if this process may open one (`ping_group_range`): the socket
/// holds the identifier in the kernel's ping-socket namespace.
fn ping_socket_ident() -> Option<(u16, Socket)> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(socket2::Protocol::ICMPV4)).ok()?;
    s.bind(&SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))))
        .ok()?;
    // Echo replies to this identifier are also queued on the socket, never read: keep that
    // queue small.
    let _ = s.set_recv_buffer_size(1);
    let port = s.local_addr().ok()?.as_socket()?.port();
    Some((port, s))
}

/// Reserves an ICMP echo identifier: `want` if given (an error when another process holds it),
/// else a free one. Never 0 or 0xffff: 0 means "reserve one", and Paris ICMP derives its
/// constant checksum from the complement of the identifier.
pub(crate) fn icmp_marker(want: Option<u16>) -> Result<(u16, Reservation), Error> {
    if let Some(m) = want {
        return match claim("icmp-marker", u32::from(m))? {
            Some(s) => Ok((
                m,
                Reservation {
                    _ports: Vec::new(),
                    _names: vec![s],
                },
            )),
            None => Err(Error::Busy(format!(
                "ICMP marker {m} is in use by another service-traceroute process"
            ))),
        };
    }
    let mut seed = start();
    for _ in 0..4096 {
        // Prefer an identifier the kernel gives a ping socket: then ping(8) cannot be using it
        // either. Without ping sockets, any identifier our processes do not hold.
        let (candidate, ping) = match ping_socket_ident() {
            Some((id, s)) => (id, Some(s)),
            None => {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((seed >> 16) as u16, None)
            }
        };
        if candidate == 0 || candidate == 0xffff {
            continue;
        }
        if let Some(name) = claim("icmp-marker", u32::from(candidate))? {
            return Ok((
                candidate,
                Reservation {
                    _ports: ping.into_iter().collect(),
                    _names: vec![name],
                },
            ));
        }
    }
    Err(Error::Busy(
        "no free ICMP echo identifier to mark this process's probes".into(),
    ))
}

fn bind_port(protocol: Protocol, port: u16) -> io::Result<Socket> {
    let ty = if protocol == Protocol::Tcp {
        Type::STREAM
    } else {
        Type::DGRAM
    };
    // Dual-stack: one port for IPv4 and IPv6 alike; IPv4 alone where IPv6 is off.
    match Socket::new(Domain::IPV6, ty, None) {
        Ok(s) => {
            s.set_only_v6(false)?;
            s.bind(&SockAddr::from(SocketAddr::from(([0u16; 8], port))))?;
            Ok(s)
        }
        Err(_) => {
            let s = Socket::new(Domain::IPV4, ty, None)?;
            s.bind(&SockAddr::from(SocketAddr::from(([0, 0, 0, 0], port))))?;
            Ok(s)
        }
    }
}

fn bound_port(s: &Socket) -> io::Result<u16> {
    s.local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("no port"))
}

/// Reserves `count` consecutive source ports for `protocol` (1 for every strategy but classic
/// TCP): starting at `want` if given (an error when one is in use), else wherever a block is
/// free. Returns the first port.
pub(crate) fn source_ports(
    protocol: Protocol,
    want: Option<u16>,
    count: u16,
) -> Result<(u16, Reservation), Error> {
    let what = |e: io::Error| Error::Socket {
        what: "reserving a source port".into(),
        source: e,
    };
    let count = count.max(1);
    if let Some(first) = want {
        let mut socks = Vec::new();
        for i in 0..count {
            let port = first.checked_add(i).ok_or_else(|| {
                Error::Unsupported(format!("source ports {first}+{count} go past 65535"))
            })?;
            match bind_port(protocol, port) {
                Ok(s) => socks.push(s),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    return Err(Error::Busy(format!(
                        "source port {port} ({}) is in use by another socket",
                        protocol.as_str()
                    )))
                }
                Err(e) => return Err(what(e)),
            }
        }
        return Ok((
            first,
            Reservation {
                _ports: socks,
                _names: Vec::new(),
            },
        ));
    }
    // The kernel picks a free first port; the rest of the block must be free too, else try
    // another first port.
    for _ in 0..64 {
        let first_sock = bind_port(protocol, 0).map_err(what)?;
        let first = bound_port(&first_sock).map_err(what)?;
        if u32::from(first) + u32::from(count) > 65536 {
            continue;
        }
        let mut socks = vec![first_sock];
        for i in 1..count {
            match bind_port(protocol, first + i) {
                Ok(s) => socks.push(s),
                Err(_) => break,
            }
        }
        if socks.len() == usize::from(count) {
            return Ok((
                first,
                Reservation {
                    _ports: socks,
                    _names: Vec::new(),
                },
            ));
        }
    }
    Err(Error::Busy(format!(
        "no block of {count} free {} source ports",
        protocol.as_str()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abstract_name_is_held_until_its_reservation_is_dropped() {
        let n = 4_000_000 + (start() % 1_000_000);
        let first = claim("test", n).unwrap().expect("free");
        assert!(claim("test", n).unwrap().is_none(), "held by `first`");
        drop(first);
        assert!(claim("test", n).unwrap().is_some(), "released on close");
    }

    #[test]
    fn flow_slots_are_distinct_while_held() {
        // Other tests of this process (or other processes) may hold slots: take what is left
        // and check that no two are the same.
        let mut held = Vec::new();
        while let Ok((slot, r)) = flow_slot() {
            assert!(slot < FLOW_SLOTS);
            assert!(
                held.iter().all(|(s, _)| *s != slot),
                "slot {slot} given twice"
            );
            held.push((slot, r));
        }
        assert!(!held.is_empty());
        let Err(Error::Busy(msg)) = flow_slot() else {
            panic!("all slots are held")
        };
        assert!(msg.contains("already trace flows"), "{msg}");
        held.pop();
        assert!(flow_slot().is_ok(), "a released slot is free again");
    }

    #[test]
    fn icmp_markers_are_distinct_and_an_explicit_one_is_refused_while_held() {
        let (a, ra) = icmp_marker(None).unwrap();
        let (b, _rb) = icmp_marker(None).unwrap();
        assert_ne!(a, b);
        assert!(a != 0 && a != 0xffff && b != 0 && b != 0xffff);
        assert!(matches!(icmp_marker(Some(a)), Err(Error::Busy(_))));
        drop(ra);
        assert_eq!(icmp_marker(Some(a)).unwrap().0, a);
    }

    #[test]
    fn port_blocks_are_consecutive_and_exclusive() {
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            let (first, _r) = source_ports(protocol, None, 8).unwrap();
            for i in 0..8 {
                assert!(
                    bind_port(protocol, first + i).is_err(),
                    "{protocol:?} {first}+{i}"
                );
            }
            assert!(matches!(
                source_ports(protocol, Some(first + 3), 1),
                Err(Error::Busy(_))
            ));
        }
    }
}

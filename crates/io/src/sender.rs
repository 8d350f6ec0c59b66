//! The raw sockets that send probes: complete IPv4 and IPv6 packets (`IPPROTO_RAW` implies
//! `IP_HDRINCL` / `IPV6_HDRINCL`, see raw(7)), optionally bound to an interface so the probes
//! leave where the flow does.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::Error;

/// Binds `sock` to interface `iface`, if given: it then sends and receives there only.
pub(crate) fn bind_device(sock: &Socket, iface: Option<&str>) -> Result<(), Error> {
    let Some(i) = iface else { return Ok(()) };
    sock.bind_device(Some(i.as_bytes()))
        .map_err(|e| Error::Socket {
            what: format!("binding a socket to {i}"),
            source: e,
        })
}

/// One raw socket per IP version in use.
pub(crate) struct RawSockets {
    v4: Option<Socket>,
    v6: Option<Socket>,
}

impl RawSockets {
    /// Opens the sockets of the versions asked for, bound to `iface` if given (`any` binds to
    /// nothing).
    pub(crate) fn open(iface: Option<&str>, v4: bool, v6: bool) -> Result<Self, Error> {
        let open = |domain: Domain| -> Result<Socket, Error> {
            let s = Socket::new(
                domain,
                Type::RAW,
                Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
            )
            .map_err(|e| {
                if e.kind() == io::ErrorKind::PermissionDenied {
                    Error::Privilege {
                        what: "sending probes (raw socket)".into(),
                    }
                } else {
                    Error::Socket {
                        what: "opening a raw socket".into(),
                        source: e,
                    }
                }
            })?;
            bind_device(&s, iface.filter(|i| *i != "any"))?;
            Ok(s)
        };
        Ok(Self {
            v4: if v4 { Some(open(Domain::IPV4)?) } else { None },
            v6: if v6 { Some(open(Domain::IPV6)?) } else { None },
        })
    }

    /// Sends one complete IP packet to `dst`.
    pub(crate) fn send(&self, dst: IpAddr, packet: &[u8]) -> io::Result<()> {
        let sock = if dst.is_ipv4() {
            self.v4.as_ref()
        } else {
            self.v6.as_ref()
        };
        let sock = sock.ok_or_else(|| io::Error::other("no raw socket for this IP version"))?;
        let n = sock.send_to(packet, &SockAddr::from(SocketAddr::new(dst, 0)))?;
        if n != packet.len() {
            return Err(io::Error::other(format!(
                "short send: {n} of {} bytes",
                packet.len()
            )));
        }
        Ok(())
    }
}

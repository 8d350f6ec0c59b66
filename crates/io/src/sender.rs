//! The raw socket that sends probes: complete IPv4 datagrams (`IPPROTO_RAW` implies
//! `IP_HDRINCL`, see raw(7)), bound to the capture interface so the probes leave where the flow
//! does.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::Error;

pub(crate) struct Sender {
    v4: Socket,
}

impl Sender {
    pub(crate) fn open(iface: &str) -> Result<Self, Error> {
        let v4 = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW))).map_err(|e| {
            if e.kind() == io::ErrorKind::PermissionDenied {
                Error::Privilege { what: "sending probes (raw socket)".into() }
            } else {
                Error::Socket { what: "opening the raw socket".into(), source: e }
            }
        })?;
        if iface != "any" {
            v4.bind_device(Some(iface.as_bytes())).map_err(|e| Error::Socket {
                what: format!("binding the raw socket to {iface}"),
                source: e,
            })?;
        }
        Ok(Self { v4 })
    }

    pub(crate) fn send(&self, dst: IpAddr, datagram: &[u8]) -> io::Result<()> {
        match dst {
            IpAddr::V4(_) => {
                let n = self.v4.send_to(datagram, &SockAddr::from(SocketAddr::new(dst, 0)))?;
                if n != datagram.len() {
                    return Err(io::Error::other(format!("short send: {n} of {} bytes", datagram.len())));
                }
                Ok(())
            }
            IpAddr::V6(_) => Err(io::Error::new(io::ErrorKind::Unsupported, "IPv6 probes are not supported yet")),
        }
    }
}

//! Interface checks and addresses.

use std::net::IpAddr;

use crate::Error;

/// The addresses of interface `iface`, or an error if it does not exist.
pub fn interface_addresses(iface: &str) -> Result<Vec<IpAddr>, Error> {
    if iface != "any" && nix::net::if_::if_nametoindex(iface).is_err() {
        return Err(Error::UnknownInterface(iface.to_string()));
    }
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| Error::Socket {
        what: "listing interface addresses".into(),
        source: e.into(),
    })?;
    let mut out = Vec::new();
    for a in addrs {
        if iface != "any" && a.interface_name != iface {
            continue;
        }
        let Some(sa) = a.address else { continue };
        if let Some(v4) = sa.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}

//! A DNS server in the server namespace and a real resolver in the client.
//!
//! The server is dnsmasq (Debian `dnsmasq-base`: the binary without a system
//! service) in the foreground, answering only the records it is given: no upstream
//! (`--no-resolv`), no `/etc/hosts` (`--no-hosts`), no configuration file, and
//! `--local=/#/`, so every other name is NXDOMAIN at once instead of a timeout. It
//! listens on the server's two addresses only (`--bind-interfaces
//! --listen-address=198.19.1.2,2001:2:0:1901::2`). Records become `--host-record`
//! (A, AAAA, with their TTL) and `--cname` (with its TTL; a CNAME may point at
//! another CNAME, dnsmasq 2.90 follows the chain and answers it whole).
//!
//! Starting it points the client's resolver at it: `/etc/netns/<client>/resolv.conf`,
//! which `ip netns exec` bind-mounts over `/etc/resolv.conf`, lists the server's
//! IPv4 then IPv6 address. [`Lab::resolve`] then runs glibc's resolver there
//! (`getent ahosts*`), which sends real queries over the client's eth0, where a
//! capture sees them and their answers. Dropping the [`DnsServer`] kills dnsmasq and
//! restores the lab's default (`nameserver 127.0.0.1`: nothing leaves the lab).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::util::{output_with_timeout, wait_listening, NsProcess};
use crate::{Family, Lab, DEFAULT_RESOLV_CONF};

/// How long dnsmasq may take to listen.
const DNS_START: Duration = Duration::from_secs(10);

/// One record the lab's DNS server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsRecord {
    /// `name` has IPv4 address `addr` (several records for one name give several
    /// addresses).
    A {
        /// Owner name, e.g. "www.example.test".
        name: String,
        /// The address.
        addr: Ipv4Addr,
        /// TTL in seconds.
        ttl: u32,
    },
    /// `name` has IPv6 address `addr`.
    Aaaa {
        /// Owner name.
        name: String,
        /// The address.
        addr: Ipv6Addr,
        /// TTL in seconds.
        ttl: u32,
    },
    /// `name` is an alias of `target` (which may itself be a CNAME, or have A/AAAA
    /// records here; dnsmasq only serves CNAMEs whose target it knows).
    Cname {
        /// The alias.
        name: String,
        /// The canonical name.
        target: String,
        /// TTL in seconds.
        ttl: u32,
    },
}

impl DnsRecord {
    /// The dnsmasq option that serves this record.
    fn dnsmasq_arg(&self) -> Result<String> {
        Ok(match self {
            DnsRecord::A { name, addr, ttl } => {
                check_name(name)?;
                format!("--host-record={name},{addr},{ttl}")
            }
            DnsRecord::Aaaa { name, addr, ttl } => {
                check_name(name)?;
                format!("--host-record={name},{addr},{ttl}")
            }
            DnsRecord::Cname { name, target, ttl } => {
                check_name(name)?;
                check_name(target)?;
                format!("--cname={name},{target},{ttl}")
            }
        })
    }
}

/// Names go into dnsmasq options: letters, digits, '-', '_' and '.', no empty label.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !ok {
        bail!("invalid DNS name {name:?}");
    }
    Ok(())
}

/// A running dnsmasq in the server namespace; see the module documentation.
pub struct DnsServer {
    proc: NsProcess,
    addrs: Vec<IpAddr>,
    resolv_conf: std::path::PathBuf,
}

impl DnsServer {
    /// The addresses it listens on (port 53, UDP and TCP): the server's IPv4 and
    /// IPv6 addresses.
    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }

    /// dnsmasq's log so far (`--log-queries`: one line per query and answer).
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// Stops dnsmasq and restores the client's resolver (also done on drop).
    pub fn stop(self) {}
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // The NsProcess field kills dnsmasq when it is dropped right after this.
        if self.resolv_conf.parent().is_some_and(|d| d.exists()) {
            let _ = std::fs::write(&self.resolv_conf, DEFAULT_RESOLV_CONF);
        }
    }
}

/// Starts dnsmasq in the server namespace serving `records` (see the module
/// documentation) and points the client's resolver at it. Fails if dnsmasq is
/// missing (`apt-get install dnsmasq-base`) or does not listen within 10 s.
pub fn dns_server(lab: &Lab, records: &[DnsRecord]) -> Result<DnsServer> {
    let addrs = vec![
        IpAddr::V4(lab.server_addr()),
        IpAddr::V6(lab.server_addr6()),
    ];
    let mut c = lab.command(lab.server_ns(), "dnsmasq");
    c.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--bind-interfaces",
        "--port=53",
        "--pid-file=",
        "--user=root",
        "--group=root",
        "--local=/#/",
        "--log-queries",
        "--log-facility=-",
    ])
    .arg(format!("--listen-address={},{}", addrs[0], addrs[1]));
    for r in records {
        c.arg(r.dnsmasq_arg()?);
    }
    let mut proc = NsProcess::spawn(&mut c, false)?;
    for v6 in [false, true] {
        wait_listening(lab.server_ns(), false, v6, 53, DNS_START, || {
            match proc.try_status() {
                Some(st) => bail!("dnsmasq exited ({st}): {}", proc.stderr().trim()),
                None => Ok(()),
            }
        })
        .with_context(|| format!("starting `{}`", proc.what()))?;
    }
    let resolv_conf = lab.name_file(lab.client_ns(), "resolv.conf");
    let srv = DnsServer {
        proc,
        addrs,
        resolv_conf,
    };
    lab.set_client_nameservers(&srv.addrs)?;
    Ok(srv)
}

impl Lab {
    /// Rewrites the client's `resolv.conf` (`/etc/netns/<client>/resolv.conf`, which
    /// `ip netns exec` bind-mounts) to use `servers` in this order, with a 1 s timeout
    /// and one attempt. An empty list restores the lab's default (`127.0.0.1`).
    pub fn set_client_nameservers(&self, servers: &[IpAddr]) -> Result<()> {
        let path = self.name_file(self.client_ns(), "resolv.conf");
        let text = if servers.is_empty() {
            DEFAULT_RESOLV_CONF.to_string()
        } else {
            let mut t: String = servers
                .iter()
                .map(|s| format!("nameserver {s}\n"))
                .collect();
            t.push_str("options timeout:1 attempts:1\n");
            t
        };
        // In place (same inode): a process that already has it bind-mounted sees it.
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Resolves `name` with a real resolver in the client namespace: `ip netns exec
    /// <client> getent ahostsv4|ahostsv6|ahosts NAME` for `Some(V4)`, `Some(V6)`,
    /// `None`. glibc looks at the client's hosts file first (the lab's
    /// `<node>.lab.test` names), then sends A/AAAA queries to the nameservers of
    /// its `resolv.conf` (see [`dns_server`]) over eth0. Returns the distinct
    /// addresses in glibc's order; IPv4-mapped answers of `ahostsv6` are left out,
    /// so an IPv6 lookup of an A-only name fails. An unknown name is an error.
    pub fn resolve(&self, name: &str, family: Option<Family>) -> Result<Vec<IpAddr>> {
        check_name(name)?;
        let db = match family {
            Some(Family::V4) => "ahostsv4",
            Some(Family::V6) => "ahostsv6",
            None => "ahosts",
        };
        let mut c = self.command(self.client_ns(), "getent");
        c.args([db, name]);
        let out = output_with_timeout(&mut c, None, Duration::from_secs(15))?;
        let text = String::from_utf8_lossy(&out.stdout);
        match out.status.code() {
            Some(0) => {}
            Some(2) => bail!("{name}: not found ({db} in {})", self.client_ns()),
            _ => bail!(
                "getent {db} {name} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
        let addrs = parse_getent_ahosts(&text, family == Some(Family::V6));
        if addrs.is_empty() {
            bail!("{name}: no {db} address");
        }
        Ok(addrs)
    }
}

/// Distinct addresses of `getent ahosts*` output (address first on each line), in
/// order; with `drop_mapped`, IPv4-mapped IPv6 addresses are left out.
fn parse_getent_ahosts(text: &str, drop_mapped: bool) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = Vec::new();
    for line in text.lines() {
        let Some(a) = line
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<IpAddr>().ok())
        else {
            continue;
        };
        if drop_mapped {
            if let IpAddr::V6(a6) = a {
                if a6.to_ipv4_mapped().is_some() {
                    continue;
                }
            }
        }
        if !v.contains(&a) {
            v.push(a);
        }
    }
    v
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn getent_output() {
        let t = "198.19.1.2      STREAM www.example.test\n198.19.1.2      DGRAM  \n198.19.128.1    STREAM \n";
        assert_eq!(
            parse_getent_ahosts(t, false),
            vec![
                "198.19.1.2".parse::<IpAddr>().unwrap(),
                "198.19.128.1".parse().unwrap()
            ]
        );
        let t6 = "::ffff:198.19.1.2 STREAM a\n2001:2:0:1901::2 STREAM \n";
        assert_eq!(
            parse_getent_ahosts(t6, true),
            vec!["2001:2:0:1901::2".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn names_and_args() {
        assert!(check_name("www.example.test").is_ok());
        assert!(check_name("a..b").is_err());
        assert!(check_name("a,b").is_err());
        assert!(check_name("").is_err());
        let r = DnsRecord::Cname {
            name: "a.test".into(),
            target: "b.test".into(),
            ttl: 60,
        };
        assert_eq!(r.dnsmasq_arg().unwrap(), "--cname=a.test,b.test,60");
        let r = DnsRecord::Aaaa {
            name: "a.test".into(),
            addr: "2001:2:0:1901::2".parse().unwrap(),
            ttl: 5,
        };
        assert_eq!(
            r.dnsmasq_arg().unwrap(),
            "--host-record=a.test,2001:2:0:1901::2,5"
        );
    }
}

//! The UDP ICMP shield: an nftables rule in front of the local stack that drops the ICMP errors
//! quoting our empty UDP probes, after libpcap has seen them (AF_PACKET taps a packet in
//! `__netif_receive_skb` before the IP layer and its netfilter hooks).
//!
//! Why: Linux `__udp4_lib_err()` hands an ICMP error quoting a connected UDP socket's 5-tuple to
//! that socket; with `IP_RECVERR` the application's next `recv()` fails (`EHOSTUNREACH` for a
//! Time Exceeded), and a Destination Unreachable is a hard error even without it. A UDP probe
//! has no field the stack checks (unlike TCP's sequence number, see the engine's probe module),
//! so the errors must not reach the stack. The rule matches the quoted 5-tuple and the quoted
//! length of our probe shape (IPv4: total length 28, an empty datagram; IPv6: payload length
//! 10, the two bytes that set the checksum, see the engine's probe module), so errors about the
//! application's own datagrams still get through. IPv6 (`__udp6_lib_err()`, `IPV6_RECVERR`) is
//! the same story with ICMPv6.
//!
//! One rule per family matches the probe shape and looks the quoted 5-tuple up in a set of the
//! flows being traced, so that thousands of flows cost one rule. The table, its sets and rules
//! are set up once, at start, with `nft` (a listing, which checks that `nft` works and finds
//! the tables of processes that are gone, removed then; and the set-up itself); from then on
//! everything goes over netlink
//! from inside the process (the `rustables` crate): flows are added to and removed from the
//! sets in one batch per turn of the driver's loop, whose acknowledgement the kernel sends
//! while it takes the batch, so reading it does not hold up the capture, and the tables are
//! deleted at exit. (It used to be one `nft` process per batch: about 5 ms of CPU each,
//! BENCHMARKS.md section 4.) A flow stays in the set for
//! [`LINGER`] after its trace ended, for replies that come late (a probe given up after its
//! timeout may still be answered).
//!
//! The same goes for the copies of a SYN that trace an IPv4 connection stuck in its handshake
//! (see the engine's probe module): Linux `tcp_v4_err()` aborts a SYN_SENT connection on an
//! error that quotes its SYN. A second set holds such flows with their SYN's sequence number,
//! and its rule drops only errors whose quote has a TTL no higher than the copies' (at most
//! 32), so that the errors the client's own SYNs (sent with 64) draw still reach it.
//!
//! The tables (`ip` and `ip6` families) are named after the process (`svctr_<pid>`) and
//! deleted on exit; tables left by a process that no longer exists are removed at start.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use svctr_core::{FlowKey, SYN_COPY_MAX_TTL};

use crate::Error;

/// How long a flow stays shielded after its trace ended.
pub(crate) const LINGER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Tracing,
    /// Trace over; removed from the set at this instant.
    Lingering(Instant),
}

/// What to shield: the errors about a UDP flow's probes, or about the copies of a TCP
/// connection's SYN (with its initial sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Guarded {
    Udp(FlowKey),
    SynCopies(FlowKey, u32),
}

/// A shielded flow: its state and where its element is.
struct Entry {
    state: State,
    family: &'static str,
    set: &'static str,
    key: Vec<u8>,
}

/// A set element's key as it goes over netlink: its bytes as they are (see [`element`]).
struct Key(Vec<u8>);

impl rustables::data_type::DataType for Key {
    // Only the elements' keys go over netlink: the set itself is made by `nft`.
    const TYPE: u32 = 0;
    const LEN: u32 = 0;

    fn data(&self) -> Vec<u8> {
        self.0.clone()
    }
}

/// Adds (or deletes) these elements, in one netlink batch: (family, set, key).
fn update(
    table: &str,
    add: bool,
    elements: &[(&'static str, &'static str, Vec<u8>)],
) -> Result<(), String> {
    use rustables::{Batch, MsgType, ProtocolFamily, Table};
    if elements.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::new();
    let mut groups: Vec<(&str, &str)> = elements.iter().map(|(f, s, _)| (*f, *s)).collect();
    groups.sort_unstable();
    groups.dedup();
    for (family, set) in groups {
        let fam = if family == "ip" {
            ProtocolFamily::Ipv4
        } else {
            ProtocolFamily::Ipv6
        };
        let t = Table::new(fam).with_name(table);
        let mut builder = rustables::set::SetBuilder::<Key>::new(set, &t)
            .map_err(|e| format!("netlink set element: {e}"))?;
        for (_, _, key) in elements
            .iter()
            .filter(|(f, s, _)| *f == family && *s == set)
        {
            builder.add(&Key(key.clone()));
        }
        let (_, list) = builder.finish();
        batch.add(&list, if add { MsgType::Add } else { MsgType::Del });
    }
    batch.send().map_err(|e| match e {
        rustables::error::QueryError::NetlinkError(n) => {
            format!("netlink: {}", nix::errno::Errno::from_raw(-n.error))
        }
        e => format!("netlink: {e}"),
    })
}

pub(crate) struct Shield {
    table: String,
    /// The `ip` / `ip6` table exists.
    v4: bool,
    v6: bool,
    stale_removed: bool,
    flows: HashMap<Guarded, Entry>,
    next_expiry: Option<Instant>,
}

/// Runs `nft -f -` with `script`; the first line of its error output on failure.
pub(crate) fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .arg("-f")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .unwrap_or("nft failed")
            .to_string())
    }
}

/// Whether the shield can work here: `nft` runs and may read the ruleset (it needs
/// `CAP_NET_ADMIN`, which the process makes ambient, see the privilege module); the tables
/// its listing shows for processes that are gone are removed on the way (one `nft` run).
fn check() -> Result<(), Error> {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Shield(format!("running nft: {e}")))?;
    if !out.status.success() {
        return Err(Error::Shield(
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("nft failed")
                .to_string(),
        ));
    }
    let stale: String = stale_tables(&String::from_utf8_lossy(&out.stdout))
        .iter()
        .map(|(family, name)| format!("delete table {family} {name}\n"))
        .collect();
    if !stale.is_empty() {
        let _ = nft(&stale);
    }
    Ok(())
}

/// The `svctr_<pid>` tables of an `nft list tables` listing whose process is gone.
fn stale_tables(listing: &str) -> Vec<(String, String)> {
    listing
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (Some("table"), Some(family), Some(name)) = (w.next(), w.next(), w.next()) else {
                return None;
            };
            let pid = name.strip_prefix("svctr_")?;
            (pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists())
                .then(|| (family.to_string(), name.to_string()))
        })
        .collect()
}

/// Removes `svctr_<pid>` tables whose process is gone.
pub(crate) fn remove_stale() {
    for family in ["ip", "ip6"] {
        let Ok(out) = Command::new("nft")
            .args(["list", "tables", family])
            .output()
        else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.strip_prefix(&format!("table {family} ")) else {
                continue;
            };
            let Some(pid) = name.strip_prefix("svctr_") else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = nft(&format!("delete table {family} {name}\n"));
            }
        }
    }
}

/// The set element of a guarded flow: quoted source, destination, source port, destination
/// port (and the SYN's sequence number), as the raw payload matches of the rule read them,
/// each field in network byte order in a 32-bit register slot of its own (nftables pads a
/// concatenation's 16-bit parts to 32 bits, zeros after); with the family and the set.
/// `None` for a flow that mixes families, or IPv6 SYN copies (never traced, see the engine's
/// probe module).
fn element(g: &Guarded) -> Option<(&'static str, &'static str, Vec<u8>)> {
    let (flow, seq) = match g {
        Guarded::Udp(f) => (f, None),
        Guarded::SynCopies(f, seq) => (f, Some(*seq)),
    };
    let (local, remote) = (flow.local.ip(), flow.remote.ip());
    if local.is_ipv4() != remote.is_ipv4() || (seq.is_some() && local.is_ipv6()) {
        return None;
    }
    let family = if local.is_ipv4() { "ip" } else { "ip6" };
    let octets = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut key = octets(local);
    key.extend(octets(remote));
    for port in [flow.local.port(), flow.remote.port()] {
        key.extend(port.to_be_bytes());
        key.extend([0, 0]);
    }
    let set = match seq {
        Some(seq) => {
            key.extend(seq.to_be_bytes());
            "syn"
        }
        None => "flows",
    };
    Some((family, set, key))
}

impl Shield {
    /// A shield set up at start for the families this host has (`v4`, `v6`): `nft` checked,
    /// stale tables removed, the tables, sets and rules installed (one `nft` run), so that a
    /// monitor does not fail hours into its run at its first UDP flow, and no `nft` process
    /// delays a first probe; flows then come and go over netlink only.
    pub(crate) fn checked(v4: bool, v6: bool) -> Result<Self, Error> {
        check()?;
        let mut s = Self::new();
        s.stale_removed = true;
        let mut script = String::new();
        if v4 {
            script.push_str(&s.table_script("ip"));
        }
        if v6 {
            script.push_str(&s.table_script("ip6"));
        }
        if !script.is_empty() {
            nft(&script).map_err(Error::Shield)?;
        }
        (s.v4, s.v6) = (v4, v6);
        Ok(s)
    }

    pub(crate) fn new() -> Self {
        Self {
            table: format!("svctr_{}", std::process::id()),
            v4: false,
            v6: false,
            stale_removed: false,
            flows: HashMap::new(),
            next_expiry: None,
        }
    }

    /// The table, set and rule of a family (priority -300: before conntrack at -200 and any
    /// filter, so nothing else sees the errors).
    fn table_script(&self, family: &str) -> String {
        let t = &self.table;
        if family == "ip" {
            // Offsets from the start of the ICMP header (@th): quoted IPv4 header at 8: total
            // length 8+2, protocol 8+9, source 8+12, destination 8+16; quoted ports at 28, 30
            // (our probes carry no IP options, and a quote carries the header as sent).
            // The SYN set adds the quoted sequence number (32 bits at 32) and the rule the quoted
            // TTL (8 bits at 8+8): see the module doc.
            format!(
                "table ip {t} {{\n set flows {{ typeof @th,160,32 . @th,192,32 . @th,224,16 . @th,240,16; }}\n \
                 set syn {{ typeof @th,160,32 . @th,192,32 . @th,224,16 . @th,240,16 . @th,256,32; }}\n \
                 chain input {{ type filter hook input priority -300; policy accept;\n  \
                 ip protocol icmp icmp type {{ destination-unreachable, time-exceeded, parameter-problem }} @th,80,16 28 @th,136,8 17 \
                 @th,160,32 . @th,192,32 . @th,224,16 . @th,240,16 @flows counter drop\n  \
                 ip protocol icmp icmp type {{ destination-unreachable, time-exceeded, parameter-problem }} @th,136,8 6 \
                 @th,128,8 <= {SYN_COPY_MAX_TTL} @th,160,32 . @th,192,32 . @th,224,16 . @th,240,16 . @th,256,32 @syn counter drop\n }}\n}}\n"
            )
        } else {
            // Offsets from the ICMPv6 header: quoted IPv6 header at 8: payload length 8+4, next
            // header 8+6, source 8+8, destination 8+24; quoted ports at 48, 50.
            format!(
                "table ip6 {t} {{\n set flows {{ typeof @th,128,128 . @th,256,128 . @th,384,16 . @th,400,16; }}\n \
                 chain input {{ type filter hook input priority -300; policy accept;\n  \
                 meta l4proto ipv6-icmp icmpv6 type {{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem }} \
                 @th,96,16 10 @th,112,8 17 @th,128,128 . @th,256,128 . @th,384,16 . @th,400,16 @flows counter drop\n }}\n}}\n"
            )
        }
    }

    /// Drops ICMP/ICMPv6 errors quoting a probe of these flows from now on (one `nft` run for
    /// all of them).
    pub(crate) fn protect(&mut self, flows: &[Guarded]) -> Result<(), Error> {
        if flows.is_empty() {
            return Ok(());
        }
        if !self.stale_removed {
            remove_stale();
            self.stale_removed = true;
        }
        let mut script = String::new();
        let mut added = Vec::new();
        let (mut v4, mut v6) = (self.v4, self.v6);
        for flow in flows {
            let Some((family, set, key)) = element(flow) else {
                return Err(Error::Unsupported(
                    "a flow mixes IPv4 and IPv6 addresses".into(),
                ));
            };
            // Still in the set (traced again before its lingering ended): keep it.
            if let Some(e) = self.flows.get_mut(flow) {
                e.state = State::Tracing;
                continue;
            }
            self.flows.insert(
                *flow,
                Entry {
                    state: State::Tracing,
                    family,
                    set,
                    key: key.clone(),
                },
            );
            let created = if family == "ip" { &mut v4 } else { &mut v6 };
            if !*created {
                script.push_str(&self.table_script(family));
                *created = true;
            }
            added.push((family, set, key));
        }
        // The table, sets and rule of a family the first time (nft), then the elements
        // (netlink).
        if !script.is_empty() {
            nft(&script).map_err(Error::Shield)?;
            (self.v4, self.v6) = (v4, v6);
        }
        update(&self.table, true, &added).map_err(Error::Shield)
    }

    /// These flows' traces ended: they leave the set after [`LINGER`].
    pub(crate) fn release(&mut self, flows: &[Guarded], now: Instant) {
        for flow in flows {
            if let Some(e) = self.flows.get_mut(flow) {
                e.state = State::Lingering(now + LINGER);
                self.next_expiry = Some(
                    self.next_expiry
                        .map_or(now + LINGER, |t| t.min(now + LINGER)),
                );
            }
        }
    }

    /// Removes the flows whose lingering is over (one `nft` run for all of them).
    pub(crate) fn expire(&mut self, now: Instant) -> Result<(), Error> {
        if self.next_expiry.is_none_or(|t| t > now) {
            return Ok(());
        }
        let mut gone = Vec::new();
        let mut next = None;
        self.flows.retain(|_, e| match e.state {
            State::Lingering(at) if at <= now => {
                gone.push((e.family, e.set, std::mem::take(&mut e.key)));
                false
            }
            State::Lingering(at) => {
                next = Some(next.map_or(at, |n: Instant| n.min(at)));
                true
            }
            State::Tracing => true,
        });
        self.next_expiry = next;
        update(&self.table, false, &gone).map_err(Error::Shield)
    }
}

impl Drop for Shield {
    /// The tables go, in one netlink batch (`nft` as the fallback).
    fn drop(&mut self) {
        use rustables::{Batch, MsgType, ProtocolFamily, Table};
        let installed: Vec<(&str, ProtocolFamily)> = [
            ("ip", self.v4, ProtocolFamily::Ipv4),
            ("ip6", self.v6, ProtocolFamily::Ipv6),
        ]
        .into_iter()
        .filter(|(_, on, _)| *on)
        .map(|(name, _, fam)| (name, fam))
        .collect();
        if installed.is_empty() {
            return;
        }
        let mut batch = Batch::new();
        for (_, fam) in &installed {
            batch.add(&Table::new(*fam).with_name(&self.table), MsgType::Del);
        }
        if batch.send().is_err() {
            for (family, _) in installed {
                let _ = nft(&format!("delete table {family} {}\n", self.table));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use svctr_core::Protocol;

    fn flow(protocol: Protocol, local: &str, remote: &str) -> FlowKey {
        FlowKey {
            protocol,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
        }
    }

    #[test]
    fn stale_tables_are_those_of_processes_that_are_gone() {
        let listing = "table inet filter\ntable ip svctr_4000000000\ntable ip6 svctr_1\n\
                       table ip svctr_x\ntable ip6 svctr_3999999999\n";
        assert_eq!(
            stale_tables(listing),
            vec![
                ("ip".to_string(), "svctr_4000000000".to_string()),
                ("ip6".to_string(), "svctr_3999999999".to_string())
            ],
            "pid 1 lives; svctr_x is not ours"
        );
    }

    #[test]
    fn elements_are_what_the_rules_read() {
        let u4 = flow(Protocol::Udp, "198.18.1.2:40000", "198.19.1.2:9000");
        assert_eq!(
            element(&Guarded::Udp(u4)),
            Some((
                "ip",
                "flows",
                vec![198, 18, 1, 2, 198, 19, 1, 2, 0x9c, 0x40, 0, 0, 0x23, 0x28, 0, 0]
            ))
        );
        let u6 = flow(Protocol::Udp, "[2001:db8::2]:40000", "[2001:db8:9::2]:443");
        let (family, set, key) = element(&Guarded::Udp(u6)).unwrap();
        assert_eq!((family, set, key.len()), ("ip6", "flows", 40));
        assert_eq!(&key[..2], &[0x20, 0x01]);
        assert_eq!(&key[15..17], &[2, 0x20]);
        assert_eq!(&key[32..], &[0x9c, 0x40, 0, 0, 0x01, 0xbb, 0, 0]);
        let t4 = flow(Protocol::Tcp, "198.18.1.2:40000", "198.19.1.2:8099");
        assert_eq!(
            element(&Guarded::SynCopies(t4, 0x1234_5678)),
            Some((
                "ip",
                "syn",
                vec![
                    198, 18, 1, 2, 198, 19, 1, 2, 0x9c, 0x40, 0, 0, 0x1f, 0xa3, 0, 0, 0x12, 0x34,
                    0x56, 0x78
                ]
            ))
        );
        let t6 = flow(Protocol::Tcp, "[2001:db8::2]:40000", "[2001:db8:9::2]:443");
        assert_eq!(
            element(&Guarded::SynCopies(t6, 1)),
            None,
            "IPv6 SYN copies: never"
        );
        let mixed = flow(Protocol::Udp, "198.18.1.2:1", "[2001:db8::1]:2");
        assert_eq!(element(&Guarded::Udp(mixed)), None);
    }
}

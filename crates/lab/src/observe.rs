//! What the application's own packets did, and ground truth in bulk.
//!
//! * **Observer.** r2 (the ECMP router) records, for every TCP or UDP packet that
//!   arrives from r1 and leaves on a branch, the flow's (source, source port,
//!   destination, destination port) and the output interface, in nftables sets filled
//!   from the packet path (`add @set { ... }`): `table inet svctr_observe`, a forward
//!   chain at priority 100, after the firewall (a firewall drop is final, so dropped
//!   packets are not recorded) and after the IPv6 oracle (priority -200, whose marked
//!   packets it drops). Only packets whose TTL / hop limit at r2 is above
//!   [`OBSERVER_MIN_TTL`] count: applications start at 64 (62 at r2's forward hook,
//!   after r1's and r2's decrements), a tracer's probes at 32 or less, so a probe
//!   that copies the flow's 5-tuple is not mistaken for the flow. The tracer does
//!   not need to cooperate, and cannot fake the observation.
//!
//!   The sets are per protocol and family (`tcp4`, `udp4`, `tcp6`, `udp6`) because
//!   nft 1.0.6 lists a set with more than five concatenated fields wrongly (the
//!   protocol as a sixth field came back as garbage); with five fields (`ipv6_addr`
//!   16 bytes, `inet_service` 2 padded to 4, `iface_index` 4: 44 bytes of the 64 a
//!   key may have) the listing is exact and prints the branch interface by name.
//! * **Bulk ground truth.** [`Lab::expected_paths`] answers many IPv4 flows with one
//!   `ip -batch` process in r2 (and, with NAT, one read of r1's conntrack table);
//!   IPv6 flows go through the per-flow oracle.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::util::run_checked;
use crate::{Lab, Proto, CMD_TIMEOUT};

/// Packets with a TTL / hop limit at r2's forward hook at or below this are not
/// observed (tracer probes); applications' packets arrive with 62.
pub const OBSERVER_MIN_TTL: u8 = 40;

/// Capacity of each observer set (flows per protocol and family). When a set is
/// full, further flows are not recorded (the packets still pass).
pub const OBSERVER_CAPACITY: usize = 262_144;

/// A flow as r2 sees it: TCP or UDP, either family. With NAT (IPv4), `src`/`sport`
/// are r1's translation of the client's address and port ([`Lab::app_flow`] maps a
/// client port to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppFlow {
    /// [`Proto::Tcp`] or [`Proto::Udp`].
    pub proto: Proto,
    /// Source address as seen by r2.
    pub src: IpAddr,
    /// Source port as seen by r2.
    pub sport: u16,
    /// Destination address (the server or a fan-out target).
    pub dst: IpAddr,
    /// Destination port.
    pub dport: u16,
}

/// One flow for [`Lab::expected_paths`]: (source, source port, destination,
/// destination port, IPv6 flow label). The source is the client's address (with
/// NAT, translated from r1's conntrack table) or any other address (taken as is).
pub type FlowSpec = (IpAddr, u16, IpAddr, u16, u32);

fn observer_set(proto: Proto, v6: bool) -> &'static str {
    match (proto, v6) {
        (Proto::Tcp, false) => "tcp4",
        (Proto::Udp, false) => "udp4",
        (Proto::Tcp, true) => "tcp6",
        _ => "udp6",
    }
}

impl Lab {
    /// Installs r2's application-flow observer (see the module documentation), and b1's
    /// when the lab has the second stage.
    pub(crate) fn install_observer(&self) -> Result<()> {
        self.install_observer_on("r2", "r1", 'b')?;
        if self.config().sub_branches > 0 {
            self.install_observer_on("b1", "r2", 'c')?;
        }
        Ok(())
    }

    fn install_observer_on(&self, router: &str, iif: &str, prefix: char) -> Result<()> {
        let ns = self.router_ns(router)?.to_string();
        let mut sets = String::new();
        let mut rules = String::new();
        for (v6, addr_type, ip, ttl) in [
            (false, "ipv4_addr", "ip", "ip ttl"),
            (true, "ipv6_addr", "ip6", "ip6 hoplimit"),
        ] {
            for proto in [Proto::Tcp, Proto::Udp] {
                let set = observer_set(proto, v6);
                let p = proto.name();
                sets.push_str(&format!(
                    "  set {set} {{\n    type {addr_type} . inet_service . {addr_type} . inet_service . iface_index\n    flags dynamic\n    size {OBSERVER_CAPACITY}\n  }}\n"
                ));
                rules.push_str(&format!(
                    "    iifname \"{iif}\" oifname \"{prefix}*\" {ttl} > {OBSERVER_MIN_TTL} meta l4proto {p} add @{set} {{ {ip} saddr . {p} sport . {ip} daddr . {p} dport . meta oif }}\n"
                ));
            }
        }
        let script = format!(
            "table inet svctr_observe {{\n{sets}  chain forward {{\n    type filter hook forward priority 100; policy accept;\n{rules}  }}\n}}\n"
        );
        let mut c = self.command(&ns, "nft");
        c.args(["-f", "-"]);
        run_checked(&mut c, Some(&script), CMD_TIMEOUT)?;
        Ok(())
    }

    /// Which branches (1-based) the application packets of each TCP/UDP flow took
    /// at r2 since the lab was built (or since [`Lab::clear_observed`]), read with
    /// one `nft -j list`. Independent of any tracer: probes (TTL/hop limit <= 40 at
    /// r2) are not counted. A flow normally has exactly one branch; more mean its
    /// packets were spread (e.g. an IPv6 flow whose label changed). Flows are as r2
    /// sees them: with NAT, IPv4 sources are r1's translations ([`Lab::app_flow`]).
    pub fn observed_branches(&self) -> Result<HashMap<AppFlow, BTreeSet<usize>>> {
        self.observed_at("r2", 'b', self.cfg.branches)
    }

    /// With the second stage ([`crate::LabConfig::sub_branches`]): which routers c1..cN
    /// (1-based) the application packets of each TCP/UDP flow took at b1, like
    /// [`Lab::observed_branches`].
    pub fn observed_sub_branches(&self) -> Result<HashMap<AppFlow, BTreeSet<usize>>> {
        if self.cfg.sub_branches == 0 {
            bail!("lab {} has no second stage behind b1", self.name());
        }
        self.observed_at("b1", 'c', self.cfg.sub_branches)
    }

    fn observed_at(
        &self,
        router: &str,
        prefix: char,
        count: usize,
    ) -> Result<HashMap<AppFlow, BTreeSet<usize>>> {
        let ns = self.router_ns(router)?.to_string();
        let mut c = self.command(&ns, "nft");
        c.args(["-j", "list", "table", "inet", "svctr_observe"]);
        let out = run_checked(&mut c, None, CMD_TIMEOUT)?;
        let v: serde_json::Value = serde_json::from_str(&out).context("parsing nft -j output")?;
        let mut ifindex_names: Option<HashMap<u64, String>> = None;
        let mut flows: HashMap<AppFlow, BTreeSet<usize>> = HashMap::new();
        for item in v["nftables"].as_array().into_iter().flatten() {
            let Some(set) = item.get("set") else { continue };
            let proto = match set["name"].as_str() {
                Some("tcp4" | "tcp6") => Proto::Tcp,
                Some("udp4" | "udp6") => Proto::Udp,
                _ => continue,
            };
            for e in set["elem"].as_array().into_iter().flatten() {
                // Plain elements are {"concat": [...]}; elements with attributes
                // (timeouts, counters) would be {"elem": {"val": {"concat": ...}}}.
                let concat = e
                    .get("concat")
                    .or_else(|| e.get("elem").and_then(|x| x["val"].get("concat")))
                    .and_then(|c| c.as_array())
                    .ok_or_else(|| anyhow!("unexpected observer element {e}"))?;
                let [saddr, sport, daddr, dport, oif] = concat.as_slice() else {
                    bail!("unexpected observer element {e}");
                };
                let addr = |x: &serde_json::Value| -> Result<IpAddr> {
                    x.as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| anyhow!("bad address in observer element {e}"))
                };
                let port = |x: &serde_json::Value| -> Result<u16> {
                    x.as_u64()
                        .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
                        .and_then(|p| u16::try_from(p).ok())
                        .ok_or_else(|| anyhow!("bad port in observer element {e}"))
                };
                // nft prints the interface by name; by number only if it cannot
                // resolve it (then ask `ip link` once).
                let name = match oif {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => {
                        if ifindex_names.is_none() {
                            ifindex_names = Some(self.ifindex_names(&ns)?);
                        }
                        let idx = n.as_u64().unwrap_or(0);
                        ifindex_names
                            .as_ref()
                            .and_then(|m| m.get(&idx).cloned())
                            .ok_or_else(|| anyhow!("{router} has no interface with index {idx}"))?
                    }
                    _ => bail!("bad interface in observer element {e}"),
                };
                let Some(k) = name
                    .strip_prefix(prefix)
                    .and_then(|k| k.parse::<usize>().ok())
                    .filter(|k| (1..=count).contains(k))
                else {
                    continue;
                };
                let flow = AppFlow {
                    proto,
                    src: addr(saddr)?,
                    sport: port(sport)?,
                    dst: addr(daddr)?,
                    dport: port(dport)?,
                };
                flows.entry(flow).or_default().insert(k);
            }
        }
        Ok(flows)
    }

    /// Forgets every observed flow (flushes the observers' sets).
    pub fn clear_observed(&self) -> Result<()> {
        let routers: &[&str] = if self.cfg.sub_branches > 0 {
            &["r2", "b1"]
        } else {
            &["r2"]
        };
        for router in routers {
            let ns = self.router_ns(router)?.to_string();
            let script: String = ["tcp4", "udp4", "tcp6", "udp6"]
                .iter()
                .map(|s| format!("flush set inet svctr_observe {s}\n"))
                .collect();
            let mut c = self.command(&ns, "nft");
            c.args(["-f", "-"]);
            run_checked(&mut c, Some(&script), CMD_TIMEOUT)?;
        }
        Ok(())
    }

    /// The [`AppFlow`] under which r2 observes the client's flow from `local_port`
    /// to `dst`: the client's address of `dst`'s family and `local_port`, or with NAT
    /// (IPv4) r1's translation, read from its conntrack table like
    /// [`Lab::nat_translation_to`] (error if the flow has no entry yet).
    pub fn app_flow(&self, proto: Proto, local_port: u16, dst: SocketAddr) -> Result<AppFlow> {
        if !proto.has_ports() {
            bail!("the observer records TCP and UDP flows only");
        }
        let (src, sport) = match dst.ip() {
            IpAddr::V4(d) => {
                let (a, p) = self.nat_translation_to(proto, local_port, d, dst.port())?;
                (IpAddr::V4(a), p)
            }
            IpAddr::V6(_) => (IpAddr::V6(self.client_addr6()), local_port),
        };
        Ok(AppFlow {
            proto,
            src,
            sport,
            dst: dst.ip(),
            dport: dst.port(),
        })
    }

    /// Interface index -> name in namespace `ns`.
    fn ifindex_names(&self, ns: &str) -> Result<HashMap<u64, String>> {
        let out = run_checked(
            Command::new("ip").args(["-n", ns, "-o", "link", "show"]),
            None,
            CMD_TIMEOUT,
        )?;
        let mut m = HashMap::new();
        for line in out.lines() {
            let mut it = line.split(':');
            let (Some(idx), Some(name)) = (it.next(), it.next()) else {
                continue;
            };
            let name = name.trim().split('@').next().unwrap_or("").to_string();
            if let Ok(i) = idx.trim().parse::<u64>() {
                m.insert(i, name);
            }
        }
        Ok(m)
    }

    /// Ground truth for many flows at once: for each `(src, sport, dst, dport,
    /// flow_label)`, the hop addresses [`Lab::expected_path_ip`] would give, in order.
    ///
    /// IPv4 flows are answered by one `ip -n <r2> -4 -o -batch -` process of
    /// `route get <dst> from <src> iif r1 ipproto <p> [sport S dport D]` lines (one
    /// output line per query; the batch stops at the first failing line, which is then
    /// the error), so 10,000 flows take well under a second. With NAT, flows from the
    /// client are translated with one read of r1's conntrack table (`conntrack -L -p
    /// tcp|udp|icmp`, all entries); a flow without an entry is an error. IPv6 flows go through
    /// the per-flow oracle (fine for dozens, about a millisecond each).
    pub fn expected_paths(&self, proto: Proto, flows: &[FlowSpec]) -> Result<Vec<Vec<IpAddr>>> {
        for &(src, _, dst, _, label) in flows {
            if src.is_ipv4() != dst.is_ipv4() {
                bail!("source {src} and destination {dst} are of different families");
            }
            if !self.is_destination(dst) {
                bail!(
                    "{dst} is not a destination behind r4 (the server or one of the {} fan-out targets)",
                    self.cfg.fanout
                );
            }
            if dst.is_ipv6() && label > 0xf_ffff {
                bail!("flow label {label:#x} has more than 20 bits");
            }
        }
        let client = IpAddr::V4(self.client_addr());
        let nat = if self.cfg.nat && flows.iter().any(|f| f.0 == client) {
            Some(self.conntrack_table(proto)?)
        } else {
            None
        };
        let mut branches: Vec<usize> = vec![0; flows.len()];
        let mut batch = String::new();
        let mut v4_idx = Vec::new();
        for (i, &(src, sport, dst, dport, label)) in flows.iter().enumerate() {
            let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
                branches[i] = self.route_branch_ip(proto, src, sport, dst, dport, label)?;
                continue;
            };
            let (s, sport) = match &nat {
                Some(t) if src == client => {
                    let key = if proto.has_ports() {
                        (s, sport, d, dport)
                    } else {
                        (s, 0, d, 0)
                    };
                    let (a, p) = t.get(&key).copied().ok_or_else(|| {
                        anyhow!(
                            "no conntrack entry on r1 for {} {s}:{sport} -> {d}:{dport} (flow not started?)",
                            proto.name()
                        )
                    })?;
                    (a, if proto.has_ports() { p } else { sport })
                }
                _ => (s, sport),
            };
            batch.push_str(&format!(
                "route get {d} from {s} iif r1 ipproto {}",
                proto.name()
            ));
            if proto.has_ports() {
                batch.push_str(&format!(" sport {sport} dport {dport}"));
            }
            batch.push('\n');
            v4_idx.push(i);
        }
        if !v4_idx.is_empty() {
            let ns = self.router_ns("r2")?.to_string();
            let mut c = Command::new("ip");
            c.args(["-n", &ns, "-4", "-o", "-batch", "-"]);
            let out = run_checked(&mut c, Some(&batch), CMD_TIMEOUT)?;
            let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.len() != v4_idx.len() {
                bail!(
                    "`ip -batch` in r2 answered {} of {} route queries",
                    lines.len(),
                    v4_idx.len()
                );
            }
            for (line, &i) in lines.iter().zip(&v4_idx) {
                let toks: Vec<&str> = line.split_whitespace().collect();
                if toks.first().and_then(|t| t.parse::<IpAddr>().ok()) != Some(flows[i].2) {
                    bail!(
                        "`ip -batch` answer out of step: {line:?} for flow {:?}",
                        flows[i]
                    );
                }
                let dev = toks
                    .windows(2)
                    .find(|w| w[0] == "dev")
                    .map(|w| w[1])
                    .ok_or_else(|| anyhow!("cannot parse `ip route get` output: {line}"))?;
                branches[i] = dev
                    .strip_prefix('b')
                    .and_then(|s| s.parse().ok())
                    .filter(|k| (1..=self.cfg.branches).contains(k))
                    .ok_or_else(|| anyhow!("r2 routes {:?} via {dev:?}, not a branch", flows[i]))?;
            }
        }
        Ok(flows
            .iter()
            .zip(branches)
            .map(|(f, k)| self.branch_path_ip(k, f.2.is_ipv6()))
            .collect())
    }

    /// r1's conntrack entries for `proto`, original (src, sport, dst, dport) ->
    /// translated (src, sport) (the reply tuple's destination). ICMP entries have
    /// ports 0 on both sides.
    fn conntrack_table(&self, proto: Proto) -> Result<HashMap<Tuple4, (Ipv4Addr, u16)>> {
        let ns = self.router_ns("r1")?.to_string();
        let mut c = self.command(&ns, "conntrack");
        c.args(["-L", "-p", proto.name()]);
        let out = run_checked(&mut c, None, CMD_TIMEOUT)?;
        let mut m = HashMap::new();
        for line in out.lines() {
            if let Some((k, v)) = parse_conntrack_entry(line) {
                m.insert(k, v);
            }
        }
        Ok(m)
    }
}

/// (src, sport, dst, dport) of an IPv4 flow.
type Tuple4 = (Ipv4Addr, u16, Ipv4Addr, u16);

/// From a `conntrack -L` line: original (src, sport, dst, dport) and the reply
/// tuple's (dst, dport), i.e. the translated source. ICMP lines have no ports (0).
fn parse_conntrack_entry(line: &str) -> Option<(Tuple4, (Ipv4Addr, u16))> {
    let vals = |key: &str| -> Vec<&str> {
        line.split_whitespace()
            .filter_map(|t| t.strip_prefix(key))
            .collect()
    };
    let (srcs, dsts, sports, dports) = (vals("src="), vals("dst="), vals("sport="), vals("dport="));
    if srcs.len() < 2 || dsts.len() < 2 {
        return None;
    }
    let port = |v: &[&str], i: usize| -> Option<u16> {
        match v.get(i) {
            Some(p) => p.parse().ok(),
            None if v.is_empty() => Some(0),
            None => None,
        }
    };
    let orig = (
        srcs[0].parse().ok()?,
        port(&sports, 0)?,
        dsts[0].parse().ok()?,
        port(&dports, 0)?,
    );
    Some((orig, (dsts[1].parse().ok()?, port(&dports, 1)?)))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn conntrack_entries() {
        let l = "udp      17 29 src=198.18.1.2 dst=198.19.1.2 sport=40000 dport=9000 [UNREPLIED] src=198.19.1.2 dst=198.18.2.1 sport=9000 dport=61234 mark=0 use=1";
        let a = Ipv4Addr::new(198, 18, 1, 2);
        let d = Ipv4Addr::new(198, 19, 1, 2);
        assert_eq!(
            parse_conntrack_entry(l),
            Some(((a, 40000, d, 9000), (Ipv4Addr::new(198, 18, 2, 1), 61234)))
        );
        let icmp = "icmp     1 29 src=198.18.1.2 dst=198.19.1.2 type=8 code=0 id=7 src=198.19.1.2 dst=198.18.2.1 type=0 code=0 id=7 mark=0 use=1";
        assert_eq!(
            parse_conntrack_entry(icmp),
            Some(((a, 0, d, 0), (Ipv4Addr::new(198, 18, 2, 1), 0)))
        );
        assert_eq!(
            parse_conntrack_entry("conntrack v1.4.7: 0 flow entries"),
            None
        );
    }
}

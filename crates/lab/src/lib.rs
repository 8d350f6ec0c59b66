//! # svctr-lab — an emulated multi-path network made of Linux network namespaces
//!
//! Every box below is a network namespace; the routers are plain Linux kernels
//! (`ip_forward=1`). Links are veth pairs created directly inside the namespaces
//! (nothing is ever created in, or changed in, the root namespace).
//!
//! ```text
//!                                      +-- b1 --+
//!  client --- r1 --- r2 ==ECMP(hash)==>+-- b2 --+==> r3 --- r4 --- server
//!            (NAT)  (firewall)         +-- b3 --+
//!                                      +-- ..   +
//! ```
//!
//! ## Address plan (IPv4, all inside 198.18.0.0/15)
//! The client half of the network is 198.18.0.0/16, the server half 198.19.0.0/16,
//! one /24 per link; on a link the end nearer to the client is `.1`, except on the
//! two host links where the router is `.1` and the host `.2`.
//!
//! | link          | subnet              | addresses                        | iface names (ns: name)     |
//! |---------------|---------------------|----------------------------------|----------------------------|
//! | client — r1   | 198.18.1.0/24       | r1 .1, client .2                 | client: eth0, r1: client   |
//! | r1 — r2       | 198.18.2.0/24       | r1 .1, r2 .2                     | r1: r2, r2: r1             |
//! | r2 — bK       | 198.18.(10+K).0/24  | r2 .1, bK .2                     | r2: bK, bK: r2             |
//! | bK — r3       | 198.19.(10+K).0/24  | bK .1, r3 .2                     | bK: r3, r3: bK             |
//! | r3 — r4       | 198.19.2.0/24       | r3 .1, r4 .2                     | r3: r4, r4: r3             |
//! | r4 — server   | 198.19.1.0/24       | r4 .1, server .2                 | r4: server, server: eth0   |
//!
//! Client 198.18.1.2 (default route via r1), server 198.19.1.2 (default route via r4).
//! A packet from the client meets 5 routers; the ICMP source address of each hop is
//! the address of the interface where the probe arrived
//! (`net.ipv4.icmp_errors_use_inbound_ifaddr=1`), so for branch K the hops are
//! `198.18.1.1, 198.18.2.2, 198.18.(10+K).2, 198.19.(10+K).2, 198.19.2.2`.
//!
//! r2 splits traffic towards 198.19.0.0/16 over the branches with an ECMP route,
//! r3 splits the return traffic towards 198.18.0.0/16 the same way. Both use
//! `fib_multipath_hash_policy=3` with `fib_multipath_hash_fields=0x0037`
//! (src/dst address, protocol, src/dst port). Policy 1 is NOT used: it reuses the
//! sending socket's flow hash, which veth carries across namespaces, so an
//! application's packets and raw-socket probes with the same 5-tuple could diverge.
//!
//! Optional NAT: nftables `masquerade random` on r1's uplink for 198.18.1.0/24
//! (the client's source port is randomised, so ground truth must read conntrack).
//! Optional stateful firewall on r2 (forward policy drop; established/related,
//! ICMP echo and NEW flows to the configured service ports arriving from r1). It sits
//! on the second router so that everything behind it (the ECMP stage, r3, r4) is what a
//! classic traceroute cannot see: r2 still answers TTL-expired probes (the TTL check
//! comes before the forward hook), every later hop is silent to new flows.
//!
//! ## Ground truth
//! [`Lab::expected_path`] asks the ECMP router itself:
//! `ip route get <server> from <src> iif r1 ipproto <p> sport <S> dport <D>` in r2's
//! namespace, where (src, S) is the client's address/port or, with NAT, the translated
//! pair read from r1's conntrack table.
//!
//! IPv6 is not configured yet; the topology is described by tables of nodes and links
//! (see [`LinkSpec`]) so a second address family can be added per link.

mod apps;
mod util;

pub use apps::{
    pattern_byte, tcp_download, tcp_server, udp_server, udp_session, DownloadReport, TcpDownload,
    TcpServer, UdpReport, UdpServer, UdpSession,
};
pub use util::{
    describe, enter_netns, lab_test_guard, open_netns, output_with_timeout, run_checked, spawn_in_netns,
    NETNS_DIR,
};

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// Timeout for the small configuration commands (`ip`, `sysctl`, `nft`, ...).
const CMD_TIMEOUT: Duration = Duration::from_secs(20);
/// Maximum number of ECMP branches.
pub const MAX_BRANCHES: usize = 32;

/// Lab parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabConfig {
    /// Number of equal-cost branches between r2 and r3 (3..=32).
    pub branches: usize,
    /// Masquerade the client's traffic on r1's uplink.
    pub nat: bool,
    /// Stateful firewall on r2 that only admits new flows to the service ports.
    pub firewall: bool,
    /// TCP ports the firewall admits new flows to (the lab's TCP servers' ports).
    pub service_ports_tcp: Vec<u16>,
    /// UDP ports the firewall admits new flows to (the lab's UDP servers' ports).
    pub service_ports_udp: Vec<u16>,
}

impl Default for LabConfig {
    /// 3 branches, no NAT, no firewall, TCP service ports 8080..=8089,
    /// UDP service ports 9000..=9009.
    fn default() -> Self {
        LabConfig {
            branches: 3,
            nat: false,
            firewall: false,
            service_ports_tcp: (8080..=8089).collect(),
            service_ports_udp: (9000..=9009).collect(),
        }
    }
}

/// Transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// Name as used by `ip route get ipproto` and `conntrack -p`.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One namespace of the lab.
#[derive(Debug, Clone)]
struct Node {
    role: String,
    ns: String,
    router: bool,
}

/// One point-to-point link (a veth pair). `a` is the end nearer to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    /// Role of the node at the client-side end.
    pub a: String,
    /// Interface name inside `a`'s namespace.
    pub a_if: String,
    /// Last octet of `a`'s address on this link.
    pub a_host: u8,
    /// Role of the node at the server-side end.
    pub b: String,
    /// Interface name inside `b`'s namespace.
    pub b_if: String,
    /// Last octet of `b`'s address on this link.
    pub b_host: u8,
    /// The link's IPv4 /24.
    pub net_v4: Ipv4Addr,
}

impl LinkSpec {
    /// Address of the `a` end.
    pub fn addr_a(&self) -> Ipv4Addr {
        host(self.net_v4, self.a_host)
    }
    /// Address of the `b` end.
    pub fn addr_b(&self) -> Ipv4Addr {
        host(self.net_v4, self.b_host)
    }
}

fn host(net: Ipv4Addr, h: u8) -> Ipv4Addr {
    let o = net.octets();
    Ipv4Addr::new(o[0], o[1], o[2], h)
}

/// Address plan constants (see the crate documentation).
pub mod plan {
    use std::net::Ipv4Addr;
    /// Client-side half of the lab.
    pub const CLIENT_HALF: &str = "198.18.0.0/16";
    /// Server-side half of the lab.
    pub const SERVER_HALF: &str = "198.19.0.0/16";
    /// client — r1
    pub const CLIENT_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 0);
    /// r1 — r2
    pub const R1_R2_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 0);
    /// r3 — r4
    pub const R3_R4_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 0);
    /// r4 — server
    pub const SERVER_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 0);
    /// r2 — bK is 198.18.(10+K).0/24
    pub fn r2_branch_net(k: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, (10 + k) as u8, 0)
    }
    /// bK — r3 is 198.19.(10+K).0/24
    pub fn branch_r3_net(k: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, (10 + k) as u8, 0)
    }
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running lab. Dropping it kills processes left in its namespaces, stops the
/// application threads started on it and deletes its namespaces.
pub struct Lab {
    cfg: LabConfig,
    prefix: String,
    nodes: Vec<Node>,
    links: Vec<LinkSpec>,
    /// Namespaces this instance created (only these are deleted).
    created: Vec<String>,
    /// Stop flags of the application threads started on this lab.
    stops: Mutex<Vec<Weak<AtomicBool>>>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.prefix)
            .field("cfg", &self.cfg)
            .finish()
    }
}

fn ip(args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(args);
    c
}

/// Checks that a lab name/prefix is short and made of safe characters.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.len() > 20 {
        bail!("lab name {prefix:?} must be 1..=20 characters");
    }
    if !prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        bail!("lab name {prefix:?} may only contain ASCII letters, digits and '_'");
    }
    Ok(())
}

/// Names of existing namespaces (from /run/netns).
pub fn list_netns() -> Result<Vec<String>> {
    let mut v = Vec::new();
    let rd = match std::fs::read_dir(util::NETNS_DIR) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(e).context("reading /run/netns"),
    };
    for e in rd {
        v.push(e?.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

/// Deletes every namespace named `<prefix>-*` (leftovers of a lab that was killed),
/// killing the processes inside first. Returns the deleted names.
pub fn remove_lab(prefix: &str) -> Result<Vec<String>> {
    validate_prefix(prefix)?;
    let pat = format!("{prefix}-");
    let mut removed = Vec::new();
    for ns in list_netns()? {
        if ns.starts_with(&pat) {
            kill_ns_processes(&ns);
            run_checked(&mut ip(&["netns", "del", &ns]), None, CMD_TIMEOUT)?;
            removed.push(ns);
        }
    }
    Ok(removed)
}

/// SIGKILLs every process (except ourselves) whose network namespace is `ns`.
fn kill_ns_processes(ns: &str) {
    let Ok(out) = util::output_with_timeout(&mut ip(&["netns", "pids", ns]), None, CMD_TIMEOUT)
    else {
        return;
    };
    let me = std::process::id() as i32;
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(p) = pid.parse::<i32>() {
            if p != me && p > 1 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Lab {
    /// Builds a lab with an automatic unique name (`st<pid>x<counter>`).
    pub fn build(cfg: LabConfig) -> Result<Lab> {
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("st{}x{}", std::process::id(), n);
        Self::build_named(cfg, &prefix)
    }

    /// Builds a lab whose namespaces are `<prefix>-<role>`. Fails if any already exists.
    pub fn build_named(cfg: LabConfig, prefix: &str) -> Result<Lab> {
        validate_prefix(prefix)?;
        if !(3..=MAX_BRANCHES).contains(&cfg.branches) {
            bail!(
                "branches must be in 3..={MAX_BRANCHES}, got {}",
                cfg.branches
            );
        }
        if !nix::unistd::geteuid().is_root() {
            bail!("building a lab needs root (network namespaces)");
        }
        let (nodes, links) = topology(prefix, cfg.branches);
        let mut lab = Lab {
            cfg,
            prefix: prefix.to_string(),
            nodes,
            links,
            created: Vec::new(),
            stops: Mutex::new(Vec::new()),
        };
        // On any error `lab` is dropped here, which deletes what was created.
        lab.setup()
            .with_context(|| format!("building lab {prefix}"))?;
        Ok(lab)
    }

    fn setup(&mut self) -> Result<()> {
        let existing = list_netns()?;
        for n in &self.nodes {
            if existing.contains(&n.ns) {
                bail!(
                    "network namespace {} already exists (leftover? try `svctr-lab down {}`)",
                    n.ns,
                    self.prefix
                );
            }
        }
        for i in 0..self.nodes.len() {
            let ns = self.nodes[i].ns.clone();
            run_checked(&mut ip(&["netns", "add", &ns]), None, CMD_TIMEOUT)?;
            self.created.push(ns);
        }
        // sysctls before creating interfaces so that conf.default applies to them.
        for n in &self.nodes {
            let mut kv: Vec<String> = vec![
                // IPv4-only lab for now: keep IPv6 ND/RS chatter off the links.
                "net.ipv6.conf.all.disable_ipv6=1".into(),
                "net.ipv6.conf.default.disable_ipv6=1".into(),
                "net.ipv4.conf.all.rp_filter=0".into(),
                "net.ipv4.conf.default.rp_filter=0".into(),
                // No ICMP rate limiting anywhere (routers' time-exceeded, server's
                // port-unreachable): tests send bursts of probes.
                "net.ipv4.icmp_ratelimit=0".into(),
                "net.ipv4.icmp_msgs_per_sec=1000000".into(),
                "net.ipv4.icmp_msgs_burst=1000000".into(),
            ];
            if n.router {
                kv.push("net.ipv4.ip_forward=1".into());
                kv.push("net.ipv4.icmp_errors_use_inbound_ifaddr=1".into());
            }
            if n.role == "r2" || n.role == "r3" {
                kv.push("net.ipv4.fib_multipath_hash_policy=3".into());
                kv.push("net.ipv4.fib_multipath_hash_fields=0x0037".into());
            }
            let mut c = self.command(&n.ns, "sysctl");
            c.arg("-q").arg("-w").args(&kv);
            run_checked(&mut c, None, CMD_TIMEOUT)?;
        }
        // veth pairs, created from inside `a`'s namespace with the peer directly in `b`'s.
        for l in &self.links {
            let a_ns = self.ns_of(&l.a)?.to_string();
            let b_ns = self.ns_of(&l.b)?.to_string();
            run_checked(
                &mut ip(&[
                    "-n", &a_ns, "link", "add", &l.a_if, "type", "veth", "peer", "name", &l.b_if,
                    "netns", &b_ns,
                ]),
                None,
                CMD_TIMEOUT,
            )?;
        }
        // Addresses, links up, routes: one `ip -batch` per namespace.
        for n in &self.nodes {
            let batch = self.ip_batch(n);
            run_checked(
                &mut ip(&["-n", &n.ns, "-batch", "-"]),
                Some(&batch),
                CMD_TIMEOUT,
            )?;
        }
        if self.cfg.nat {
            let ns = self.ns_of("r1")?.to_string();
            let script = format!(
                "table ip svctr_nat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"r2\" ip saddr {}/24 masquerade random\n  }}\n}}\n",
                plan::CLIENT_NET
            );
            let mut c = self.command(&ns, "nft");
            c.args(["-f", "-"]);
            run_checked(&mut c, Some(&script), CMD_TIMEOUT)?;
        }
        if self.cfg.firewall {
            let ns = self.ns_of("r2")?.to_string();
            let mut rules = String::new();
            rules.push_str("    ct state established,related accept\n");
            rules.push_str("    ct state invalid drop\n");
            rules.push_str("    icmp type echo-request accept\n");
            let join = |v: &[u16]| {
                v.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !self.cfg.service_ports_tcp.is_empty() {
                rules.push_str(&format!(
                    "    iifname \"r1\" tcp dport {{ {} }} ct state new accept\n",
                    join(&self.cfg.service_ports_tcp)
                ));
            }
            if !self.cfg.service_ports_udp.is_empty() {
                rules.push_str(&format!(
                    "    iifname \"r1\" udp dport {{ {} }} ct state new accept\n",
                    join(&self.cfg.service_ports_udp)
                ));
            }
            let script = format!(
                "table inet svctr_fw {{\n  chain forward {{\n    type filter hook forward priority filter; policy drop;\n{rules}  }}\n}}\n"
            );
            let mut c = self.command(&ns, "nft");
            c.args(["-f", "-"]);
            run_checked(&mut c, Some(&script), CMD_TIMEOUT)?;
        }
        Ok(())
    }

    fn ip_batch(&self, n: &Node) -> String {
        let mut b = String::new();
        b.push_str("link set lo up\n");
        for l in &self.links {
            let (ifn, addr) = if l.a == n.role {
                (&l.a_if, l.addr_a())
            } else if l.b == n.role {
                (&l.b_if, l.addr_b())
            } else {
                continue;
            };
            b.push_str(&format!("addr add {addr}/24 dev {ifn}\n"));
            b.push_str(&format!("link set {ifn} up\n"));
        }
        let k = self.cfg.branches;
        let client_link = &self.links[0];
        let ecmp = |hops: Vec<(Ipv4Addr, String)>| {
            hops.iter()
                .map(|(gw, dev)| format!(" nexthop via {gw} dev {dev}"))
                .collect::<String>()
        };
        match n.role.as_str() {
            "client" => b.push_str(&format!(
                "route add default via {} dev eth0\n",
                client_link.addr_a()
            )),
            "server" => b.push_str(&format!(
                "route add default via {} dev eth0\n",
                host(plan::SERVER_NET, 1)
            )),
            "r1" => b.push_str(&format!(
                "route add 198.18.0.0/15 via {} dev r2\n",
                host(plan::R1_R2_NET, 2)
            )),
            "r2" => {
                b.push_str(&format!(
                    "route add {}/24 via {} dev r1\n",
                    plan::CLIENT_NET,
                    host(plan::R1_R2_NET, 1)
                ));
                let hops = (1..=k)
                    .map(|i| (host(plan::r2_branch_net(i), 2), format!("b{i}")))
                    .collect();
                b.push_str(&format!("route add {}{}\n", plan::SERVER_HALF, ecmp(hops)));
            }
            "r3" => {
                b.push_str(&format!(
                    "route add {}/24 via {} dev r4\n",
                    plan::SERVER_NET,
                    host(plan::R3_R4_NET, 2)
                ));
                let hops = (1..=k)
                    .map(|i| (host(plan::branch_r3_net(i), 1), format!("b{i}")))
                    .collect();
                b.push_str(&format!("route add {}{}\n", plan::CLIENT_HALF, ecmp(hops)));
            }
            "r4" => b.push_str(&format!(
                "route add 198.18.0.0/15 via {} dev r3\n",
                host(plan::R3_R4_NET, 1)
            )),
            role => {
                // branch router bK
                let i: usize = role[1..].parse().expect("branch role");
                b.push_str(&format!(
                    "route add {} via {} dev r2\n",
                    plan::CLIENT_HALF,
                    host(plan::r2_branch_net(i), 1)
                ));
                b.push_str(&format!(
                    "route add {} via {} dev r3\n",
                    plan::SERVER_HALF,
                    host(plan::branch_r3_net(i), 2)
                ));
            }
        }
        b
    }

    fn ns_of(&self, role: &str) -> Result<&str> {
        self.nodes
            .iter()
            .find(|n| n.role == role)
            .map(|n| n.ns.as_str())
            .ok_or_else(|| anyhow!("lab {} has no node {role:?}", self.prefix))
    }

    /// The lab's name (prefix of all its namespace names).
    pub fn name(&self) -> &str {
        &self.prefix
    }

    /// The configuration the lab was built with.
    pub fn config(&self) -> &LabConfig {
        &self.cfg
    }

    /// Namespace of the client host.
    pub fn client_ns(&self) -> &str {
        &self.nodes[0].ns
    }

    /// Namespace of the server host.
    pub fn server_ns(&self) -> &str {
        &self.nodes[self.nodes.len() - 1].ns
    }

    /// Namespace of a router: "r1", "r2", "b1".."bN", "r3", "r4".
    pub fn router_ns(&self, name: &str) -> Result<&str> {
        match self.nodes.iter().find(|n| n.role == name && n.router) {
            Some(n) => Ok(&n.ns),
            None => bail!(
                "lab {} has no router {name:?} (routers: {:?})",
                self.prefix,
                self.router_names()
            ),
        }
    }

    /// Router names in path order (branches in the middle).
    pub fn router_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.router)
            .map(|n| n.role.clone())
            .collect()
    }

    /// All namespaces of this lab (client first, server last).
    pub fn namespaces(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.ns.clone()).collect()
    }

    /// Links of the topology.
    pub fn links(&self) -> &[LinkSpec] {
        &self.links
    }

    /// Interface name inside the client namespace ("eth0").
    pub fn client_iface(&self) -> &str {
        &self.links[0].b_if
    }

    /// Interface name inside the server namespace ("eth0").
    pub fn server_iface(&self) -> &str {
        &self.links[self.links.len() - 1].b_if
    }

    /// 198.18.1.2
    pub fn client_addr(&self) -> Ipv4Addr {
        self.links[0].addr_b()
    }

    /// 198.19.1.2
    pub fn server_addr(&self) -> Ipv4Addr {
        self.links[self.links.len() - 1].addr_b()
    }

    /// Number of routers on the client→server path (5).
    pub fn hop_count(&self) -> usize {
        5
    }

    /// Number of ECMP branches.
    pub fn branches(&self) -> usize {
        self.cfg.branches
    }

    /// The hop addresses (ICMP sources) of the path through branch `k` (1-based).
    pub fn branch_path(&self, k: usize) -> Vec<Ipv4Addr> {
        vec![
            host(plan::CLIENT_NET, 1),
            host(plan::R1_R2_NET, 2),
            host(plan::r2_branch_net(k), 2),
            host(plan::branch_r3_net(k), 2),
            host(plan::R3_R4_NET, 2),
        ]
    }

    /// Which branch (1-based) a hop list goes through, judged by its 3rd hop.
    pub fn branch_of_path(&self, path: &[Option<Ipv4Addr>]) -> Option<usize> {
        let h3 = (*path.get(2)?)?;
        (1..=self.cfg.branches).find(|&k| host(plan::r2_branch_net(k), 2) == h3)
    }

    /// The branch (1-based) an address belongs to: bK's or r3's address on a link of branch K.
    pub fn branch_of_addr(&self, addr: Ipv4Addr) -> Option<usize> {
        (1..=self.cfg.branches).find(|&k| {
            let o = addr.octets();
            let (a, b) = (
                plan::r2_branch_net(k).octets(),
                plan::branch_r3_net(k).octets(),
            );
            o[..3] == a[..3] || o[..3] == b[..3]
        })
    }

    /// Name of the node ("r1", "b2", "server", ...) owning an address.
    pub fn addr_owner(&self, addr: Ipv4Addr) -> Option<&str> {
        for l in &self.links {
            if l.addr_a() == addr {
                return Some(&l.a);
            }
            if l.addr_b() == addr {
                return Some(&l.b);
            }
        }
        None
    }

    /// `ip netns exec <ns> <program>`.
    pub fn command(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    /// With NAT: the (address, port) r1 translated the client's (client_addr, client_port)
    /// to, for the flow to (server_addr, server_port), read from r1's conntrack table.
    /// Without NAT: (client_addr, client_port).
    pub fn nat_translation(
        &self,
        proto: Proto,
        client_port: u16,
        server_port: u16,
    ) -> Result<(Ipv4Addr, u16)> {
        if !self.cfg.nat {
            return Ok((self.client_addr(), client_port));
        }
        let ns = self.router_ns("r1")?.to_string();
        let mut c = self.command(&ns, "conntrack");
        c.args(["-L", "-p", proto.name()])
            .args(["--orig-src", &self.client_addr().to_string()])
            .args(["--orig-dst", &self.server_addr().to_string()])
            .args(["--orig-port-src", &client_port.to_string()])
            .args(["--orig-port-dst", &server_port.to_string()]);
        let out = run_checked(&mut c, None, CMD_TIMEOUT)?;
        for line in out.lines() {
            if let Some(t) = parse_conntrack_reply(line) {
                return Ok(t);
            }
        }
        bail!(
            "no conntrack entry on r1 for {} {}:{} -> {}:{} (flow not started?)",
            proto.name(),
            self.client_addr(),
            client_port,
            self.server_addr(),
            server_port
        )
    }

    /// Branch (1-based) that r2 picks for a packet arriving from r1 with this 5-tuple.
    pub fn route_branch(
        &self,
        proto: Proto,
        src: Ipv4Addr,
        sport: u16,
        dst: Ipv4Addr,
        dport: u16,
    ) -> Result<usize> {
        let ns = self.router_ns("r2")?.to_string();
        let mut c = Command::new("ip");
        c.args([
            "-n",
            &ns,
            "-4",
            "-o",
            "route",
            "get",
            &dst.to_string(),
            "from",
            &src.to_string(),
            "iif",
            "r1",
        ])
        .args([
            "ipproto",
            proto.name(),
            "sport",
            &sport.to_string(),
            "dport",
            &dport.to_string(),
        ]);
        let out = run_checked(&mut c, None, CMD_TIMEOUT)?;
        let toks: Vec<&str> = out.split_whitespace().collect();
        let dev = toks
            .windows(2)
            .find(|w| w[0] == "dev")
            .map(|w| w[1])
            .ok_or_else(|| anyhow!("cannot parse `ip route get` output: {out}"))?;
        let k: usize = dev
            .strip_prefix('b')
            .and_then(|s| s.parse().ok())
            .filter(|k| (1..=self.cfg.branches).contains(k))
            .ok_or_else(|| anyhow!("r2 routes this flow via {dev:?}, not a branch: {out}"))?;
        if let Some(w) = toks.windows(2).find(|w| w[0] == "via") {
            let via: Ipv4Addr = w[1].parse().with_context(|| format!("bad via in {out}"))?;
            if via != host(plan::r2_branch_net(k), 2) {
                bail!("unexpected gateway {via} for dev {dev}: {out}");
            }
        }
        Ok(k)
    }

    /// Ground truth: the hop addresses (hop 1..=hop_count) that packets of this flow
    /// meet. `client_port` is the client socket's local port, `server_port` the
    /// server's. With NAT, the tuple seen by r2 is read from r1's conntrack (error if
    /// the flow has no entry yet).
    pub fn expected_path(
        &self,
        proto: Proto,
        client_port: u16,
        server_port: u16,
    ) -> Result<Vec<Ipv4Addr>> {
        let (src, sport) = self.nat_translation(proto, client_port, server_port)?;
        let k = self.route_branch(proto, src, sport, self.server_addr(), server_port)?;
        Ok(self.branch_path(k))
    }

    /// Absolute SNMP/netstat counters of a namespace (`nstat -asz --json`), e.g.
    /// "TcpRetransSegs", "TcpExtTCPLostRetransmit", "UdpInErrors", "IcmpInTimeExcds".
    pub fn nstat(&self, ns: &str) -> Result<BTreeMap<String, u64>> {
        let mut c = self.command(ns, "nstat");
        c.args(["-a", "-s", "-z", "--json"]);
        let out = run_checked(&mut c, None, CMD_TIMEOUT)?;
        parse_nstat_json(&out)
    }

    /// Registers a stop flag to be raised when the lab is dropped.
    pub(crate) fn register_stop(&self, flag: &Arc<AtomicBool>) {
        let mut v = self.stops.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(flag));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let stops = std::mem::take(&mut *self.stops.lock().unwrap_or_else(|e| e.into_inner()));
        let mut any = false;
        for w in stops {
            if let Some(f) = w.upgrade() {
                f.store(true, Ordering::SeqCst);
                any = true;
            }
        }
        if any {
            // Application threads poll their flag every <=100 ms.
            std::thread::sleep(Duration::from_millis(150));
        }
        for ns in self.created.iter().rev() {
            kill_ns_processes(ns);
        }
        for ns in self.created.iter().rev() {
            if let Err(e) = run_checked(&mut ip(&["netns", "del", ns]), None, CMD_TIMEOUT) {
                eprintln!("svctr-lab: cleanup of {ns} failed: {e:#}");
            }
        }
        self.created.clear();
    }
}

/// Nodes and links of the topology for `branches` branches.
fn topology(prefix: &str, branches: usize) -> (Vec<Node>, Vec<LinkSpec>) {
    let node = |role: &str, router: bool| Node {
        role: role.to_string(),
        ns: format!("{prefix}-{role}"),
        router,
    };
    let mut nodes = vec![node("client", false), node("r1", true), node("r2", true)];
    for k in 1..=branches {
        nodes.push(node(&format!("b{k}"), true));
    }
    nodes.push(node("r3", true));
    nodes.push(node("r4", true));
    nodes.push(node("server", false));

    let link = |a: &str, a_if: &str, a_host: u8, b: &str, b_if: &str, b_host: u8, net: Ipv4Addr| {
        LinkSpec {
            a: a.into(),
            a_if: a_if.into(),
            a_host,
            b: b.into(),
            b_if: b_if.into(),
            b_host,
            net_v4: net,
        }
    };
    // links[0] is the client link (the client is its `b` end so the router gets .1),
    // the last is the server link.
    let mut links = vec![
        link("r1", "client", 1, "client", "eth0", 2, plan::CLIENT_NET),
        link("r1", "r2", 1, "r2", "r1", 2, plan::R1_R2_NET),
    ];
    for k in 1..=branches {
        let bk = format!("b{k}");
        links.push(link("r2", &bk, 1, &bk, "r2", 2, plan::r2_branch_net(k)));
        links.push(link(&bk, "r3", 1, "r3", &bk, 2, plan::branch_r3_net(k)));
    }
    links.push(link("r3", "r4", 1, "r4", "r3", 2, plan::R3_R4_NET));
    links.push(link(
        "r4",
        "server",
        1,
        "server",
        "eth0",
        2,
        plan::SERVER_NET,
    ));
    (nodes, links)
}

/// From a `conntrack -L` line, the reply tuple's (dst, dport) = the translated source.
fn parse_conntrack_reply(line: &str) -> Option<(Ipv4Addr, u16)> {
    let dsts: Vec<&str> = line
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("dst="))
        .collect();
    let dports: Vec<&str> = line
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("dport="))
        .collect();
    if dsts.len() < 2 || dports.len() < 2 {
        return None;
    }
    Some((dsts[1].parse().ok()?, dports[1].parse().ok()?))
}

fn parse_nstat_json(s: &str) -> Result<BTreeMap<String, u64>> {
    let v: serde_json::Value = serde_json::from_str(s).context("parsing nstat --json output")?;
    let obj = v
        .get("kernel")
        .and_then(|k| k.as_object())
        .ok_or_else(|| anyhow!("nstat output has no \"kernel\" object"))?;
    let mut m = BTreeMap::new();
    for (k, v) in obj {
        if let Some(n) = v.as_u64() {
            m.insert(k.clone(), n);
        }
    }
    Ok(m)
}

/// Parses a traceroute-style output (one hop per line starting with the hop
/// number) into `hops[i] = Some(addr)` for hop i+1, `None` for `*`.
pub fn parse_traceroute(out: &str) -> Vec<Option<Ipv4Addr>> {
    let mut hops: Vec<Option<Ipv4Addr>> = Vec::new();
    for line in out.lines() {
        let mut toks = line.split_whitespace();
        let Some(n) = toks.next().and_then(|t| t.parse::<usize>().ok()) else {
            continue;
        };
        if n == 0 || n > 255 {
            continue;
        }
        let addr = toks
            .map(|t| t.trim_matches(|c| c == '(' || c == ')'))
            .find_map(|t| t.parse::<Ipv4Addr>().ok());
        if hops.len() < n {
            hops.resize(n, None);
        }
        if hops[n - 1].is_none() {
            hops[n - 1] = addr;
        }
    }
    hops
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn conntrack_line() {
        let l = "tcp      6 431999 ESTABLISHED src=198.18.1.2 dst=198.19.1.2 sport=40000 dport=8080 src=198.19.1.2 dst=198.18.2.1 sport=8080 dport=61234 [ASSURED] mark=0 use=1";
        assert_eq!(
            parse_conntrack_reply(l),
            Some((Ipv4Addr::new(198, 18, 2, 1), 61234))
        );
        assert_eq!(
            parse_conntrack_reply("conntrack v1.4.7: 0 flow entries"),
            None
        );
    }

    #[test]
    fn traceroute_parse() {
        let out = "traceroute to 198.19.1.2 (198.19.1.2), 6 hops max, 60 byte packets\n 1  198.18.1.1  0.05 ms\n 2  *\n 3  198.18.12.2  0.1 ms\n";
        let h = parse_traceroute(out);
        assert_eq!(
            h,
            vec![
                Some(Ipv4Addr::new(198, 18, 1, 1)),
                None,
                Some(Ipv4Addr::new(198, 18, 12, 2))
            ]
        );
    }

    #[test]
    fn topology_shape() {
        let (nodes, links) = topology("t", 4);
        assert_eq!(nodes.len(), 2 + 2 + 4 + 2);
        assert_eq!(links.len(), 4 + 2 * 4);
        assert_eq!(links[0].addr_b(), Ipv4Addr::new(198, 18, 1, 2));
        assert_eq!(links.last().unwrap().addr_b(), Ipv4Addr::new(198, 19, 1, 2));
    }

    #[test]
    fn nstat_json() {
        let m = parse_nstat_json(r#"{"kernel":{"IpInReceives":12,"TcpRetransSegs":0}}"#).unwrap();
        assert_eq!(m["IpInReceives"], 12);
    }
}

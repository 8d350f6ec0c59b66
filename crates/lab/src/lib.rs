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
//! ## Address plan (IPv6, all inside the benchmarking prefix 2001:2::/48, RFC 5180)
//! Every link also has an IPv6 /64 that spells its IPv4 /24 ([`plan::v6_net`]):
//! `198.A.B.0/24` -> `2001:2:0:ABB::/64` (A and two-digit B written as decimal digits
//! in a hex group), host `.h` -> `::h`. Client half 2001:2:0:1800::/56, server half
//! 2001:2:0:1900::/56, whole lab 2001:2:0:1800::/55.
//!
//! | link          | subnet                  | addresses             |
//! |---------------|-------------------------|-----------------------|
//! | client — r1   | 2001:2:0:1801::/64      | r1 ::1, client ::2    |
//! | r1 — r2       | 2001:2:0:1802::/64      | r1 ::1, r2 ::2        |
//! | r2 — bK       | 2001:2:0:18(10+K)::/64  | r2 ::1, bK ::2        |
//! | bK — r3       | 2001:2:0:19(10+K)::/64  | bK ::1, r3 ::2        |
//! | r3 — r4       | 2001:2:0:1902::/64      | r3 ::1, r4 ::2        |
//! | r4 — server   | 2001:2:0:1901::/64      | r4 ::1, server ::2    |
//!
//! Client 2001:2:0:1801::2, server 2001:2:0:1901::2. Addresses are added with
//! `nodad` (and `accept_dad=0`), so they are usable at once; routers have
//! `net.ipv6.conf.all.forwarding=1`, nobody accepts RAs or sends RSs, ICMPv6 is not
//! rate-limited (`net.ipv6.icmp.ratelimit=0`; the global `icmp_msgs_per_sec` budget
//! is shared with IPv4), and `net.ipv6.auto_flowlabels=0`, so packets carry flow
//! label 0 unless the application sets one. For branch K the IPv6 hops are
//! `2001:2:0:1801::1, 2001:2:0:1802::2, 2001:2:0:18(10+K)::2, 2001:2:0:19(10+K)::2,
//! 2001:2:0:1902::2` ([`Lab::branch_path6`]).
//!
//! **ICMPv6 error source address.** Linux has no `icmp_errors_use_inbound_ifaddr` for
//! IPv6 and needs none: `icmp6_send` (net/ipv6/icmp.c) uses the packet's destination if
//! it is local (port unreachable from a host), else, unless the route back to the
//! sender has a preferred source (`src`, `icmpv6_rt_has_prefsrc`), calls
//! `ipv6_dev_get_saddr()` with the *input* interface as the preferred device (commit
//! fac6fce9bdb5 "net: icmp6: provide input address for traceroute6"; the `src`
//! exception came with a later fix). RFC 6724
//! rule 5 (prefer the outgoing interface) then picks the input interface's global
//! address. The lab sets no `src` on any route and each interface has one global
//! address, so each hop answers from its inbound interface, like IPv4, whatever the
//! return path.
//!
//! r2 splits traffic towards the server half over the branches with an ECMP route,
//! r3 splits the return traffic towards the client half the same way, in both
//! families. Both use `fib_multipath_hash_policy=3`, IPv4 with
//! `fib_multipath_hash_fields=0x0037` (src/dst address, protocol, src/dst port),
//! IPv6 with `0x003f` (the same plus the flow label). Policy 1 is NOT used: it reuses
//! the sending socket's flow hash, which veth carries across namespaces, so an
//! application's packets and raw-socket probes with the same 5-tuple could diverge.
//!
//! ## The multipath lab: a second stage
//! With [`LabConfig::sub_branches`] = N, b1 splits again over c1..cN, which lead to r3
//! (b1 loses its direct link to r3): `svctr-lab up --branches 2 --sub-branches 3`.
//!
//! ```text
//!                         +-- c1 --+
//!                  +- b1 -+-- c2 --+-+
//!  client - r1 - r2        +-- c3 --+ +- r3 - r4 - server
//!                  +- b2 -------------+
//! ```
//!
//! | link     | subnet              | addresses    | IPv6                    |
//! |----------|---------------------|--------------|-------------------------|
//! | b1 — cJ  | 198.18.(60+J).0/24  | b1 .1, cJ .2 | 2001:2:0:18(60+J)::/64  |
//! | cJ — r3  | 198.19.(60+J).0/24  | cJ .1, r3 .2 | 2001:2:0:19(60+J)::/64  |
//!
//! Paths through b1 meet 6 routers, the others 5: the paths differ in width (2, then 3
//! on one side only) and length, the link b2 -> r3 skips a level, and r3 answers from
//! the interface a probe came in on, so the paths join again at r4
//! ([`Lab::all_paths_ip`]). b1 hashes like r2 (same policy and fields) but with a seed
//! of its own: with one kernel-wide seed the two would be polarized (the flows r2 sends
//! to b1 all fall on two of its three routers). ICMP echo has no ports, so over IPv4
//! every echo to one destination takes one path; over IPv6 the flow label spreads them.
//! Ground truth per flow: [`Lab::expected_path_ip`] asks r2 and then b1
//! (`ip route get`, or the routing oracle, which b1 also has); the application's own
//! packets are observed at b1 too ([`Lab::observed_sub_branches`]).
//!
//! ## Asymmetric routing: a way back of its own
//! With [`LabConfig::return_branches`] = M, r3 sends the traffic toward the client half over
//! routers d1..dM of its own (ECMP, hash policy 3), which lead to r2, while the way out still
//! goes through b1..bK: the reverse path differs from the forward one, including an ECMP stage
//! only the way back has (`svctr-lab up --return-branches 3`). The b's keep their routes to
//! the client half for their own ICMP errors. Truth for the way back: r3's `ip route get ...
//! iif r4` for IPv4 ([`Lab::reverse_branch_v4`]), counters on d1..dM for the probes' own
//! packets for IPv6 ([`Lab::install_return_observer`]); hop addresses
//! [`Lab::reverse_path_ip`].
//!
//! | link     | subnet              | addresses    | IPv6                    |
//! |----------|---------------------|--------------|-------------------------|
//! | r2 — dJ  | 198.18.(80+J).0/24  | r2 .1, dJ .2 | 2001:2:0:18(80+J)::/64  |
//! | dJ — r3  | 198.19.(80+J).0/24  | dJ .1, r3 .2 | 2001:2:0:19(80+J)::/64  |
//!
//! ## Fan-out
//! With `LabConfig::fanout = n`, the server also owns 198.19.128.1.. (n /32s) and
//! 2001:2:0:1980::1.. (n /128s) on its loopback; r3 and r4 route 198.19.128.0/17 and
//! 2001:2:0:1980::/64 towards it (r2 and the branches already cover the server half).
//! They answer UDP with port unreachable, TCP SYN with RST and echo requests, from the
//! probed address. Building a lab with 1000 takes about as long as without (~1.3 s):
//! all addresses go through one `ip -batch`.
//!
//! Optional NAT: nftables `masquerade random` on r1's uplink for 198.18.1.0/24
//! (the client's source port is randomised, so ground truth must read conntrack).
//! IPv6 is never translated. Optional stateful firewall on r2 (forward policy drop;
//! established/related, ICMP/ICMPv6 echo and NEW flows to the configured service
//! ports arriving from r1; both families). It sits on the second router so that
//! everything behind it (the ECMP stage, r3, r4) is what a classic traceroute cannot
//! see: r2 still answers TTL-expired probes (the TTL check comes before the forward
//! hook), every later hop is silent to new flows.
//!
//! ## Ground truth
//! [`Lab::expected_path_ip`] (and [`Lab::expected_path`] for the client-to-server
//! IPv4 case) asks the ECMP router itself. IPv4:
//! `ip route get <dst> from <src> iif r1 ipproto <p> sport <S> dport <D>` in r2's
//! namespace, where (src, S) is the client's address/port or, with NAT, the translated
//! pair read from r1's conntrack table. The kernel builds a dummy packet for an IPv4
//! `route get` with `iif`, so the answer goes through the same hash as forwarding.
//!
//! IPv6 cannot use `ip -6 route get`: with `iif` it looks the route up without a
//! packet, and under policy 3 the packet-less hash (`rt6_multipath_custom_hash_fl6`)
//! differs from the forwarding one (`rt6_multipath_custom_hash_skb`, which also mixes
//! in an inner-header hash with `jhash_2words`, and takes the flow label in host byte
//! order). Observed on 6.18: it agreed with `traceroute -6 -T` for 7 of 16 source ports,
//! i.e. by chance. So the lab asks by experiment: r1 sends into r2 a packet with the
//! flow's addresses, next header, ports and flow label, marked with traffic class 0xff
//! and hop limit 255 (the hash ignores both); an nftables chain on r2
//! (`table ip6 svctr_oracle`, forward hook, priority -200) drops marked packets with a
//! counter per output branch. One query costs a raw send and an `nft -j list`.
//! [`Lab::expected_paths`] answers many flows at once (one `ip -batch` for IPv4).
//!
//! ## What the applications really did, and real applications
//! r2 also records which branch the application packets of every TCP/UDP flow took
//! (TTL/hop limit > 40 at r2, so a tracer's probes do not count):
//! [`Lab::observed_branches`]. With [`LabConfig::client_flow_labels`] the client's
//! IPv6 flows carry their own flow labels, which the ECMP hash uses. Besides the
//! TCP/UDP test apps (any address, both families), the lab runs real programs:
//! dnsmasq and glibc's resolver ([`dns_server`], [`Lab::resolve`]), OpenSSL and curl
//! ([`tls_server`], [`tls_download`], [`openssl_client`],
//! [`Lab::split_client_segments`]), quinn for QUIC version 1 ([`quic_server`],
//! [`quic_download`]; quinn has no QUIC version 2), and an epoll flow generator for
//! 10,000+ concurrent flows ([`flow_generator`], [`echo_server`]).
//! [`Lab::capture`] runs tcpdump in a namespace for the self-tests.

mod apps;
mod capture;
mod dns;
mod flowgen;
mod line;
mod observe;
mod quic;
mod tls;
mod util;

pub use apps::{
    pattern_byte, tcp_download, tcp_download_patient, tcp_download_to, tcp_server, tcp_server_on,
    udp_server, udp_server_on, udp_session, udp_session_to, DownloadReport, TcpDownload, TcpServer,
    UdpReport, UdpServer, UdpSession,
};
pub use capture::{Capture, CapturedPacket, PacketInfo};
pub use dns::{dns_server, DnsRecord, DnsServer};
pub use flowgen::{
    echo_server, echo_server_process, flow_generator, lab_binary, run_echo_process, EchoServer,
    FlowGenerator, FlowStats, FLOW_MESSAGE_LEN, MAX_CONNECTING,
};
pub use line::{DelayLine, LineConfig, LineStats, MAX_QUEUED_BYTES};
pub use observe::{AppFlow, FlowSpec, OBSERVER_CAPACITY, OBSERVER_MIN_TTL};
pub use quic::{quic_download, quic_server, QuicDownload, QuicReport, QuicServer, QUIC_V1};
pub use tls::{
    openssl_client, tls_download, tls_server, tls_server_paced, OpensslClient, TlsDownload,
    TlsReport, TlsServer, TLS_FILE_PATH,
};
pub use util::{
    describe, enter_netns, lab_test_guard, nft_rule_packets, open_netns, output_with_timeout,
    process_rss_kib, run_checked, send_raw_flood, spawn_in_netns, udp_flood, NETNS_DIR,
};

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// The hop limit of an oracle packet at r2's forward hook: r1 sends it with 255, r2
/// decrements it before the hook (ip6_forward). Sent with 254 it passes r2 and meets b1's
/// oracle with one less.
const ORACLE_HOPLIMIT: u8 = 254;

/// Timeout for the small configuration commands (`ip`, `sysctl`, `nft`, ...).
const CMD_TIMEOUT: Duration = Duration::from_secs(20);
/// `net.ipv6.fib_multipath_hash_fields` on r2 and r3: source and destination address,
/// next header, flow label, source and destination port.
pub const IPV6_HASH_FIELDS: u32 = 0x003f;
/// Maximum number of ECMP branches.
pub const MAX_BRANCHES: usize = 32;
/// Maximum number of second-stage branches behind b1 ([`LabConfig::sub_branches`]).
pub const MAX_SUB_BRANCHES: usize = 8;
/// b1's multipath hash seed when it splits again (see `Lab::setup`).
const SUB_STAGE_SEED: u32 = 0x5eed_00b1;
/// Maximum number of fan-out destinations per family (198.19.128.0/17 holds 32767).
pub const MAX_FANOUT: usize = 32767;

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
    /// Number of extra destinations behind r4: the server also owns the IPv4 /32s
    /// 198.19.128.1.. and the IPv6 /128s 2001:2:0:1980::1.. (`fanout` of each, on its
    /// loopback), see [`Lab::fanout_targets`]. 0..=[`MAX_FANOUT`].
    pub fanout: usize,
    /// The fan-out in IPv4 only, owned by one local route for the whole 198.19.128.0/17 on
    /// the server's loopback (Linux "AnyIP": every address of the prefix is the server's,
    /// and its errors come from the address probed, RTCF_LOCAL) instead of one address each:
    /// tens of thousands of destinations cost nothing to set up. No IPv6 fan-out then
    /// (adding IPv6 addresses grows quadratically, and IPv6's errors for an AnyIP address
    /// come from the interface's address, not the one probed).
    pub fanout_v4_only: bool,
    /// A second ECMP stage behind b1 only: b1 splits its traffic towards the server over
    /// `sub_branches` routers c1..cN, which lead to r3 (b1 has no direct link to r3). Paths
    /// through b1 are one router longer, so the lab's paths differ in width and length and
    /// the link b2..bK -> r3 skips a level ([`Lab::all_paths_ip`]). 0 (the default): no
    /// second stage; else 2..=[`MAX_SUB_BRANCHES`], and `branches` may then be 2.
    pub sub_branches: usize,
    /// Asymmetric routing: the way back from the server half goes through a stage of its
    /// own, `return_branches` routers d1..dM between r3 and r2 over which r3 balances the
    /// traffic toward the client (ECMP, hash policy 3), while the way out still goes through
    /// b1..bK. The reverse path then differs from the forward one, including a reverse-only
    /// ECMP stage ([`Lab::reverse_path_ip`]). 0 (the default): the way back goes through the
    /// b's as the way out does; else 2..=[`MAX_SUB_BRANCHES`].
    pub return_branches: usize,
    /// Give the client's IPv6 flows their own non-zero flow labels
    /// (`net.ipv6.auto_flowlabels=1` in the client namespace), which r2's ECMP hash
    /// uses (fields [`IPV6_HASH_FIELDS`]). Each TCP connection and each connected UDP
    /// socket draws a random label (TCP draws a new one after a retransmission
    /// timeout); an unconnected UDP socket's label is a hash of its flow. Off by
    /// default: every packet carries label 0 unless the application sets one.
    pub client_flow_labels: bool,
    /// Routers keep Linux's default ICMP rate limits, as real routers do: per destination a
    /// burst of 6 errors, then one per `icmp_ratelimit` (1000 ms), ICMP and ICMPv6, within a
    /// global 1000 per second (burst 50). Off by default: lab tests send bursts of probes, so
    /// nothing is rate-limited; the client and the server are never limited.
    pub router_icmp_defaults: bool,
    /// Delay-and-loss lines on chosen links (see [`LineConfig`] and the `line` module): the
    /// kernel has no `netem`, so a line forwards each frame after its delay in a namespace of
    /// its own in the middle of the link. None by default: the lab's round trips are then tens
    /// of microseconds.
    pub lines: Vec<LineConfig>,
}

impl Default for LabConfig {
    /// 3 branches, no NAT, no firewall, TCP service ports 8080..=8089,
    /// UDP service ports 9000..=9009, no fan-out, IPv6 flow label 0.
    fn default() -> Self {
        LabConfig {
            branches: 3,
            nat: false,
            firewall: false,
            service_ports_tcp: (8080..=8089).collect(),
            service_ports_udp: (9000..=9009).collect(),
            fanout: 0,
            fanout_v4_only: false,
            sub_branches: 0,
            return_branches: 0,
            client_flow_labels: false,
            router_icmp_defaults: false,
            lines: Vec::new(),
        }
    }
}

/// Address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4
    V4,
    /// IPv6
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: IpAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// Transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP (IPv4) or ICMPv6 (IPv6), e.g. echo requests. Has no ports: the ECMP hash
    /// only sees addresses and protocol (and the IPv6 flow label).
    Icmp,
}

impl Proto {
    /// Name as used by `ip route get ipproto` and `conntrack -p` (IPv4: "icmp").
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }

    /// IP protocol number: 6, 17, 1 (ICMP) or 58 (ICMPv6 when `v6`).
    pub fn number(self, v6: bool) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp if v6 => 58,
            Proto::Icmp => 1,
        }
    }

    /// Whether the protocol has ports (TCP, UDP).
    pub fn has_ports(self) -> bool {
        !matches!(self, Proto::Icmp)
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
    /// The link's IPv6 /64 ([`plan::v6_net`] of `net_v4`).
    pub net_v6: Ipv6Addr,
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
    /// IPv6 address of the `a` end (interface identifier `::a_host`).
    pub fn addr6_a(&self) -> Ipv6Addr {
        host6(self.net_v6, self.a_host)
    }
    /// IPv6 address of the `b` end (interface identifier `::b_host`).
    pub fn addr6_b(&self) -> Ipv6Addr {
        host6(self.net_v6, self.b_host)
    }
}

fn host6(net: Ipv6Addr, h: u8) -> Ipv6Addr {
    let s = net.segments();
    Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, u16::from(h))
}

/// Routes to `halves` (IPv4, IPv6) through the `.h` end of link `net` (both families) on `dev`.
fn both(
    route: &mut impl FnMut(&str, String, &str),
    halves: (&str, &str),
    net: Ipv4Addr,
    h: u8,
    dev: &str,
) {
    route(halves.0, host(net, h).to_string(), dev);
    route(halves.1, host6(plan::v6_net(net), h).to_string(), dev);
}

fn host(net: Ipv4Addr, h: u8) -> Ipv4Addr {
    let o = net.octets();
    Ipv4Addr::new(o[0], o[1], o[2], h)
}

/// Address plan constants (see the crate documentation).
pub mod plan {
    use std::net::{Ipv4Addr, Ipv6Addr};
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
    /// b1 — cJ (the second stage) is 198.18.(60+J).0/24
    pub fn b1_sub_net(j: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, (60 + j) as u8, 0)
    }
    /// cJ — r3 is 198.19.(60+J).0/24
    pub fn sub_r3_net(j: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, (60 + j) as u8, 0)
    }
    /// r2 — dJ (the return stage) is 198.18.(80+J).0/24
    pub fn r2_return_net(j: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, (80 + j) as u8, 0)
    }
    /// dJ — r3 is 198.19.(80+J).0/24
    pub fn return_r3_net(j: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, (80 + j) as u8, 0)
    }

    /// The whole lab in IPv6: inside the benchmarking prefix 2001:2::/48 (RFC 5180).
    pub const LAB6: &str = "2001:2:0:1800::/55";
    /// Client-side half of the lab (mirrors 198.18.0.0/16).
    pub const CLIENT_HALF6: &str = "2001:2:0:1800::/56";
    /// Server-side half of the lab (mirrors 198.19.0.0/16).
    pub const SERVER_HALF6: &str = "2001:2:0:1900::/56";
    /// The IPv6 /64 of the link whose IPv4 /24 is `198.A.B.0`: `2001:2:0:ABB::/64`, the
    /// fourth group spelling A and B (two digits) in decimal, e.g. 198.18.1.0/24 ->
    /// 2001:2:0:1801::/64, 198.19.12.0/24 -> 2001:2:0:1912::/64. The host `.h` of the
    /// IPv4 link is `::h` (hex, h < 10 in the lab) on the IPv6 link.
    pub fn v6_net(v4: Ipv4Addr) -> Ipv6Addr {
        let o = v4.octets();
        let group = u16::from_str_radix(&format!("{}{:02}", o[1], o[2]), 16)
            .expect("lab IPv4 subnets map to a hex group");
        Ipv6Addr::new(0x2001, 2, 0, group, 0, 0, 0, 0)
    }

    /// Fan-out destinations (IPv4): 198.19.128.0/17, target i (1-based) is
    /// 198.19.128.0 + i, i.e. 198.19.128.1, ..., 198.19.129.0, ...
    pub const FANOUT_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 0);
    /// Prefix length of [`FANOUT_NET`].
    pub const FANOUT_PREFIX_LEN: u8 = 17;
    /// Fan-out destinations (IPv6): 2001:2:0:1980::/64, target i is 2001:2:0:1980::i
    /// (i in hex), e.g. 2001:2:0:1980::1, ..., 2001:2:0:1980::3e8.
    pub const FANOUT_NET6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x1980, 0, 0, 0, 0);
    /// Prefix length of [`FANOUT_NET6`].
    pub const FANOUT_PREFIX_LEN6: u8 = 64;

    /// IPv4 fan-out target i (1-based).
    pub fn fanout_v4(i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(FANOUT_NET) + i as u32)
    }
    /// IPv6 fan-out target i (1-based).
    pub fn fanout_v6(i: usize) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(FANOUT_NET6) + i as u128)
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
    /// Last-read packet counters of each IPv6 routing oracle (one query at a time).
    oracle: Mutex<BTreeMap<String, Vec<u64>>>,
    /// The running delay lines, in the order of `cfg.lines`.
    lines: Vec<DelayLine>,
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
            remove_name_files(&ns);
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
        let min_branches = if cfg.sub_branches > 0 { 2 } else { 3 };
        if !(min_branches..=MAX_BRANCHES).contains(&cfg.branches) {
            bail!(
                "branches must be in {min_branches}..={MAX_BRANCHES}, got {}",
                cfg.branches
            );
        }
        if cfg.sub_branches == 1 || cfg.sub_branches > MAX_SUB_BRANCHES {
            bail!(
                "sub_branches must be 0 or in 2..={MAX_SUB_BRANCHES}, got {}",
                cfg.sub_branches
            );
        }
        if cfg.return_branches == 1 || cfg.return_branches > MAX_SUB_BRANCHES {
            bail!(
                "return_branches must be 0 or in 2..={MAX_SUB_BRANCHES}, got {}",
                cfg.return_branches
            );
        }
        if cfg.fanout > MAX_FANOUT {
            bail!("fanout must be at most {MAX_FANOUT}, got {}", cfg.fanout);
        }
        if !nix::unistd::geteuid().is_root() {
            bail!("building a lab needs root (network namespaces)");
        }
        let (nodes, links) = topology(prefix, cfg.branches, cfg.sub_branches, cfg.return_branches);
        let mut lab = Lab {
            cfg,
            prefix: prefix.to_string(),
            nodes,
            links,
            created: Vec::new(),
            stops: Mutex::new(Vec::new()),
            oracle: Mutex::new(BTreeMap::new()),
            lines: Vec::new(),
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
        // Delay lines: a namespace each, no IP stack to speak of (IPv6 off, no address).
        for (i, line) in self.cfg.lines.iter().enumerate() {
            let on_link = self
                .links
                .iter()
                .any(|l| (l.a == line.a && l.b == line.b) || (l.a == line.b && l.b == line.a));
            if !on_link {
                bail!(
                    "a delay line on {}-{}: the lab has no such link",
                    line.a,
                    line.b
                );
            }
            if line.loss_ppm > 1_000_000 {
                bail!(
                    "a delay line's loss is at most 1,000,000 per million, got {}",
                    line.loss_ppm
                );
            }
            let ns = format!("{}-line{i}", self.prefix);
            run_checked(&mut ip(&["netns", "add", &ns]), None, CMD_TIMEOUT)?;
            self.created.push(ns.clone());
            let mut c = self.command(&ns, "sysctl");
            c.args([
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]);
            run_checked(&mut c, None, CMD_TIMEOUT)?;
        }
        self.write_name_files()?;
        // sysctls before creating interfaces so that conf.default applies to them.
        for n in &self.nodes {
            let mut kv: Vec<String> = vec![
                "net.ipv4.conf.all.rp_filter=0".into(),
                "net.ipv4.conf.default.rp_filter=0".into(),
                // No ICMP rate limiting anywhere (routers' time-exceeded, server's
                // port-unreachable): tests send bursts of probes. The global
                // msgs_per_sec/burst budget is shared by ICMP and ICMPv6.
                "net.ipv4.icmp_ratelimit=0".into(),
                "net.ipv4.icmp_msgs_per_sec=1000000".into(),
                "net.ipv4.icmp_msgs_burst=1000000".into(),
                // Unprivileged-style ICMP echo sockets (used by `Lab::ping`).
                "net.ipv4.ping_group_range=0 2147483647".into(),
                // IPv6: on, usable at once (no DAD), no autoconfiguration chatter.
                "net.ipv6.conf.all.disable_ipv6=0".into(),
                "net.ipv6.conf.default.disable_ipv6=0".into(),
                "net.ipv6.conf.all.accept_dad=0".into(),
                "net.ipv6.conf.default.accept_dad=0".into(),
                "net.ipv6.conf.all.accept_ra=0".into(),
                "net.ipv6.conf.default.accept_ra=0".into(),
                "net.ipv6.conf.all.router_solicitations=0".into(),
                "net.ipv6.conf.default.router_solicitations=0".into(),
                "net.ipv6.icmp.ratelimit=0".into(),
                // Packets carry flow label 0 unless the application sets one, so that
                // the ECMP choice is a function of the 5-tuple (as for IPv4). With
                // the default (1), each TCP connection gets a random label, re-drawn
                // on retransmission timeouts, and UDP/raw labels are a flow hash.
                // `client_flow_labels` turns them on in the client (below).
                "net.ipv6.auto_flowlabels=0".into(),
            ];
            if n.role == "client" && self.cfg.client_flow_labels {
                kv.retain(|s| !s.starts_with("net.ipv6.auto_flowlabels="));
                kv.push("net.ipv6.auto_flowlabels=1".into());
            }
            if n.router {
                kv.push("net.ipv4.ip_forward=1".into());
                kv.push("net.ipv4.icmp_errors_use_inbound_ifaddr=1".into());
                kv.push("net.ipv6.conf.all.forwarding=1".into());
                kv.push("net.ipv6.conf.default.forwarding=1".into());
                if self.cfg.router_icmp_defaults {
                    kv.retain(|s| {
                        !s.starts_with("net.ipv4.icmp_") && !s.starts_with("net.ipv6.icmp.")
                    });
                    kv.extend([
                        "net.ipv4.icmp_ratelimit=1000".into(),
                        "net.ipv4.icmp_ratemask=6168".into(),
                        "net.ipv4.icmp_msgs_per_sec=1000".into(),
                        "net.ipv4.icmp_msgs_burst=50".into(),
                        "net.ipv6.icmp.ratelimit=1000".into(),
                    ]);
                }
            }
            if n.role == "r2" || n.role == "r3" || (n.role == "b1" && self.cfg.sub_branches > 0) {
                kv.push("net.ipv4.fib_multipath_hash_policy=3".into());
                kv.push("net.ipv4.fib_multipath_hash_fields=0x0037".into());
                kv.push("net.ipv6.fib_multipath_hash_policy=3".into());
                kv.push(format!(
                    "net.ipv6.fib_multipath_hash_fields={IPV6_HASH_FIELDS:#06x}"
                ));
            }
            if n.role == "b1" && self.cfg.sub_branches > 0 {
                // Hash polarization: with the default seed (0: one random key for the
                // whole kernel, every namespace alike) b1 computes the same hash as r2,
                // so the flows r2 sends to b1 (the lower half of the hash space, by
                // hash-threshold) all fall on c1 and c2, and c3 never carries a flow. A
                // seed of its own (Linux 6.11+; IPv4 and IPv6) makes b1 independent,
                // as operators make their routers.
                kv.push(format!("net.ipv4.fib_multipath_hash_seed={SUB_STAGE_SEED}"));
            }
            let mut c = self.command(&n.ns, "sysctl");
            c.arg("-q").arg("-w").args(&kv);
            run_checked(&mut c, None, CMD_TIMEOUT)?;
        }
        // veth pairs, created from inside `a`'s namespace with the peer directly in `b`'s.
        for l in &self.links {
            let a_ns = self.ns_of(&l.a)?.to_string();
            let b_ns = self.ns_of(&l.b)?.to_string();
            if self.line_of(l).is_some() {
                // A delay line in the middle: a_if <-> la (line) lb <-> b_if.
                let line_ns = self.line_ns(l);
                run_checked(
                    &mut ip(&[
                        "-n", &a_ns, "link", "add", &l.a_if, "type", "veth", "peer", "name", "la",
                        "netns", &line_ns,
                    ]),
                    None,
                    CMD_TIMEOUT,
                )?;
                run_checked(
                    &mut ip(&[
                        "-n", &line_ns, "link", "add", "lb", "type", "veth", "peer", "name",
                        &l.b_if, "netns", &b_ns,
                    ]),
                    None,
                    CMD_TIMEOUT,
                )?;
                continue;
            }
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
        self.start_lines()?;
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
        // IPv6 routing oracles (see `oracle_branch`): on r2, and on b1 for the second stage.
        self.install_oracle("r2", "r1", ORACLE_HOPLIMIT, 'b', self.cfg.branches)?;
        if self.cfg.sub_branches > 0 {
            self.install_oracle("b1", "r2", ORACLE_HOPLIMIT - 1, 'c', self.cfg.sub_branches)?;
        }
        self.install_observer()?;
        if self.cfg.firewall {
            let ns = self.ns_of("r2")?.to_string();
            let mut rules = String::new();
            rules.push_str("    ct state established,related accept\n");
            rules.push_str("    ct state invalid drop\n");
            rules.push_str("    icmp type echo-request accept\n");
            rules.push_str("    icmpv6 type echo-request accept\n");
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
        self.verify_reachability()
    }

    /// An IPv6 routing oracle chain on `router`: marked packets (traffic class 0xff and
    /// hop limit `hoplimit` at its forward hook) that arrive from `iif` are dropped with a
    /// counter per output interface `<prefix>1..<prefix>count`, then a catch-all.
    fn install_oracle(
        &self,
        router: &str,
        iif: &str,
        hoplimit: u8,
        prefix: char,
        count: usize,
    ) -> Result<()> {
        let ns = self.ns_of(router)?.to_string();
        let mark = format!("ip6 dscp 0x3f ip6 ecn ce ip6 hoplimit {hoplimit} iifname \"{iif}\"");
        let mut rules = String::new();
        for k in 1..=count {
            rules.push_str(&format!(
                "    {mark} oifname \"{prefix}{k}\" counter drop\n"
            ));
        }
        rules.push_str(&format!("    {mark} counter drop\n"));
        let script = format!(
            "table ip6 svctr_oracle {{\n  chain forward {{\n    type filter hook forward priority -200; policy accept;\n{rules}  }}\n}}\n"
        );
        let mut c = self.command(&ns, "nft");
        c.args(["-f", "-"]);
        run_checked(&mut c, Some(&script), CMD_TIMEOUT)?;
        Ok(())
    }

    fn ip_batch(&self, n: &Node) -> String {
        let mut b = String::new();
        b.push_str("link set lo up\n");
        for l in &self.links {
            let (ifn, addr, addr6) = if l.a == n.role {
                (&l.a_if, l.addr_a(), l.addr6_a())
            } else if l.b == n.role {
                (&l.b_if, l.addr_b(), l.addr6_b())
            } else {
                continue;
            };
            b.push_str(&format!("addr add {addr}/24 dev {ifn}\n"));
            // nodad: usable at once (accept_dad=0 covers the link-local address).
            b.push_str(&format!("addr add {addr6}/64 dev {ifn} nodad\n"));
            b.push_str(&format!("link set {ifn} up\n"));
        }
        let k = self.cfg.branches;
        let subs = self.cfg.sub_branches;
        let returns = self.cfg.return_branches;
        let v6 = |net: Ipv4Addr, h: u8| host6(plan::v6_net(net), h);
        let ecmp = |hops: Vec<(String, String)>| {
            hops.iter()
                .map(|(gw, dev)| format!(" nexthop via {gw} dev {dev}"))
                .collect::<String>()
        };
        let fanout = self.cfg.fanout > 0;
        let fan4 = format!("{}/{}", plan::FANOUT_NET, plan::FANOUT_PREFIX_LEN);
        let fan6 = format!("{}/{}", plan::FANOUT_NET6, plan::FANOUT_PREFIX_LEN6);
        let mut route = |dst: &str, gw: String, dev: &str| {
            b.push_str(&format!("route add {dst} via {gw} dev {dev}\n"));
        };
        match n.role.as_str() {
            "client" => {
                route("default", host(plan::CLIENT_NET, 1).to_string(), "eth0");
                route("::/0", v6(plan::CLIENT_NET, 1).to_string(), "eth0");
            }
            "server" => {
                route("default", host(plan::SERVER_NET, 1).to_string(), "eth0");
                route("::/0", v6(plan::SERVER_NET, 1).to_string(), "eth0");
            }
            "r1" => {
                route("198.18.0.0/15", host(plan::R1_R2_NET, 2).to_string(), "r2");
                route(plan::LAB6, v6(plan::R1_R2_NET, 2).to_string(), "r2");
            }
            "r2" => {
                let client4 = format!("{}/24", plan::CLIENT_NET);
                let client6 = format!("{}/64", plan::v6_net(plan::CLIENT_NET));
                route(&client4, host(plan::R1_R2_NET, 1).to_string(), "r1");
                route(&client6, v6(plan::R1_R2_NET, 1).to_string(), "r1");
                let hops = (1..=k)
                    .map(|i| (host(plan::r2_branch_net(i), 2).to_string(), format!("b{i}")))
                    .collect();
                b.push_str(&format!("route add {}{}\n", plan::SERVER_HALF, ecmp(hops)));
                let hops = (1..=k)
                    .map(|i| (v6(plan::r2_branch_net(i), 2).to_string(), format!("b{i}")))
                    .collect();
                b.push_str(&format!("route add {}{}\n", plan::SERVER_HALF6, ecmp(hops)));
            }
            "r3" => {
                let server4 = format!("{}/24", plan::SERVER_NET);
                let server6 = format!("{}/64", plan::v6_net(plan::SERVER_NET));
                route(&server4, host(plan::R3_R4_NET, 2).to_string(), "r4");
                route(&server6, v6(plan::R3_R4_NET, 2).to_string(), "r4");
                if fanout {
                    route(&fan4, host(plan::R3_R4_NET, 2).to_string(), "r4");
                    route(&fan6, v6(plan::R3_R4_NET, 2).to_string(), "r4");
                }
                // Back over every router that leads to r3: b1..bK, or with the second
                // stage b2..bK and c1..cN.
                let back = |v6net: bool| -> Vec<(String, String)> {
                    let gw = |net: Ipv4Addr| {
                        if v6net {
                            v6(net, 1).to_string()
                        } else {
                            host(net, 1).to_string()
                        }
                    };
                    if returns > 0 {
                        // The return stage: the way back differs from the way out.
                        return (1..=returns)
                            .map(|j| (gw(plan::return_r3_net(j)), format!("d{j}")))
                            .collect();
                    }
                    let first = if subs > 0 { 2 } else { 1 };
                    (first..=k)
                        .map(|i| (gw(plan::branch_r3_net(i)), format!("b{i}")))
                        .chain((1..=subs).map(|j| (gw(plan::sub_r3_net(j)), format!("c{j}"))))
                        .collect()
                };
                b.push_str(&format!(
                    "route add {}{}\n",
                    plan::CLIENT_HALF,
                    ecmp(back(false))
                ));
                b.push_str(&format!(
                    "route add {}{}\n",
                    plan::CLIENT_HALF6,
                    ecmp(back(true))
                ));
            }
            "r4" => {
                route("198.18.0.0/15", host(plan::R3_R4_NET, 1).to_string(), "r3");
                route(plan::LAB6, v6(plan::R3_R4_NET, 1).to_string(), "r3");
                if fanout {
                    route(&fan4, host(plan::SERVER_NET, 2).to_string(), "server");
                    route(&fan6, v6(plan::SERVER_NET, 2).to_string(), "server");
                }
            }
            role if role.starts_with('d') => {
                // return-stage router dJ, between r3 and r2: toward the client by r2, and
                // toward the server (its own errors) by r3
                let j: usize = role[1..].parse().expect("return-stage role");
                both(
                    &mut route,
                    (plan::CLIENT_HALF, plan::CLIENT_HALF6),
                    plan::r2_return_net(j),
                    1,
                    "r2",
                );
                both(
                    &mut route,
                    (plan::SERVER_HALF, plan::SERVER_HALF6),
                    plan::return_r3_net(j),
                    2,
                    "r3",
                );
            }
            role if role.starts_with('c') => {
                // second-stage router cJ, between b1 and r3
                let j: usize = role[1..].parse().expect("second-stage role");
                both(
                    &mut route,
                    (plan::CLIENT_HALF, plan::CLIENT_HALF6),
                    plan::b1_sub_net(j),
                    1,
                    "b1",
                );
                both(
                    &mut route,
                    (plan::SERVER_HALF, plan::SERVER_HALF6),
                    plan::sub_r3_net(j),
                    2,
                    "r3",
                );
            }
            "b1" if subs > 0 => {
                both(
                    &mut route,
                    (plan::CLIENT_HALF, plan::CLIENT_HALF6),
                    plan::r2_branch_net(1),
                    1,
                    "r2",
                );
                let hops = (1..=subs)
                    .map(|j| (host(plan::b1_sub_net(j), 2).to_string(), format!("c{j}")))
                    .collect();
                b.push_str(&format!("route add {}{}\n", plan::SERVER_HALF, ecmp(hops)));
                let hops = (1..=subs)
                    .map(|j| (v6(plan::b1_sub_net(j), 2).to_string(), format!("c{j}")))
                    .collect();
                b.push_str(&format!("route add {}{}\n", plan::SERVER_HALF6, ecmp(hops)));
            }
            role => {
                // branch router bK
                let i: usize = role[1..].parse().expect("branch role");
                both(
                    &mut route,
                    (plan::CLIENT_HALF, plan::CLIENT_HALF6),
                    plan::r2_branch_net(i),
                    1,
                    "r2",
                );
                both(
                    &mut route,
                    (plan::SERVER_HALF, plan::SERVER_HALF6),
                    plan::branch_r3_net(i),
                    2,
                    "r3",
                );
            }
        }
        if n.role == "server" {
            // Fan-out destinations as host addresses on the loopback. Errors the
            // server sends for them (port unreachable, RST, echo reply) come from the
            // probed address (IPv4: RTCF_LOCAL; IPv6: icmp6_send uses a local daddr).
            if self.cfg.fanout_v4_only && self.cfg.fanout > 0 {
                b.push_str(&format!(
                    "route add local {}/{} dev lo\n",
                    plan::FANOUT_NET,
                    plan::FANOUT_PREFIX_LEN
                ));
            } else {
                for i in 1..=self.cfg.fanout {
                    b.push_str(&format!("addr add {}/32 dev lo\n", plan::fanout_v4(i)));
                    b.push_str(&format!(
                        "addr add {}/128 dev lo nodad\n",
                        plan::fanout_v6(i)
                    ));
                }
            }
        }
        b
    }

    /// Checks after setup that both families reach the server (and the first and
    /// last fan-out targets): an ICMP echo from the client, up to 3 tries of 1 s each.
    /// Also fails if any IPv6 address is still tentative.
    fn verify_reachability(&self) -> Result<()> {
        for n in &self.nodes {
            let out = run_checked(
                &mut ip(&["-n", &n.ns, "-6", "-o", "addr", "show", "tentative"]),
                None,
                CMD_TIMEOUT,
            )?;
            if !out.trim().is_empty() {
                bail!("tentative IPv6 addresses in {}: {out}", n.ns);
            }
        }
        let mut dsts = vec![
            IpAddr::V4(self.server_addr()),
            IpAddr::V6(self.server_addr6()),
        ];
        if self.cfg.fanout > 0 {
            for i in [1, self.cfg.fanout] {
                dsts.push(IpAddr::V4(plan::fanout_v4(i)));
                if !self.cfg.fanout_v4_only {
                    dsts.push(IpAddr::V6(plan::fanout_v6(i)));
                }
            }
        }
        for dst in dsts {
            let mut last = None;
            for _ in 0..3 {
                match self.ping(self.client_ns(), dst, Duration::from_secs(1)) {
                    Ok(_) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            if let Some(e) = last {
                return Err(e.context(format!("{dst} is unreachable from the client")));
            }
        }
        Ok(())
    }

    /// Sends one ICMP/ICMPv6 echo request from namespace `ns` to `dst` and waits up to
    /// `timeout` for the reply. Returns the round-trip time.
    pub fn ping(&self, ns: &str, dst: IpAddr, timeout: Duration) -> Result<Duration> {
        util::ping_in_netns(ns, dst, timeout)
    }

    /// The delay line configured on link `l`, with its index.
    fn line_of(&self, l: &LinkSpec) -> Option<(usize, &LineConfig)> {
        self.cfg
            .lines
            .iter()
            .enumerate()
            .find(|(_, c)| (c.a == l.a && c.b == l.b) || (c.a == l.b && c.b == l.a))
    }

    /// The namespace of the delay line on link `l`.
    fn line_ns(&self, l: &LinkSpec) -> String {
        let i = self.line_of(l).map_or(0, |(i, _)| i);
        format!("{}-line{i}", self.prefix)
    }

    /// Brings every delay line's interfaces up with offloads off (whole frames, checksums
    /// computed: see the `line` module) on them and on the link's two ends, and starts its
    /// forwarding threads.
    fn start_lines(&mut self) -> Result<()> {
        let mut started = Vec::new();
        for l in &self.links {
            let Some((i, cfg)) = self.line_of(l) else {
                continue;
            };
            let ns = self.line_ns(l);
            let batch = "link set la up\nlink set lb up\n";
            run_checked(
                &mut ip(&["-n", &ns, "-batch", "-"]),
                Some(batch),
                CMD_TIMEOUT,
            )?;
            let ends = [
                (ns.clone(), "la".to_string()),
                (ns.clone(), "lb".to_string()),
                (self.ns_of(&l.a)?.to_string(), l.a_if.clone()),
                (self.ns_of(&l.b)?.to_string(), l.b_if.clone()),
            ];
            for (ns, dev) in ends {
                let mut c = self.command(&ns, "ethtool");
                c.args([
                    "-K", &dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
                ]);
                run_checked(&mut c, None, CMD_TIMEOUT)
                    .with_context(|| format!("offloads off on {dev} in {ns}"))?;
            }
            started.push(DelayLine::start(&ns, cfg.clone(), 0x5eed + i as u64)?);
        }
        self.lines = started;
        Ok(())
    }

    /// The delay lines, in the order of [`LabConfig::lines`].
    pub fn lines(&self) -> &[DelayLine] {
        &self.lines
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

    /// 2001:2:0:1801::2
    pub fn client_addr6(&self) -> Ipv6Addr {
        self.links[0].addr6_b()
    }

    /// 2001:2:0:1901::2
    pub fn server_addr6(&self) -> Ipv6Addr {
        self.links[self.links.len() - 1].addr6_b()
    }

    /// The client's address in the family of `like` (to pair with a destination).
    pub fn client_addr_for(&self, like: IpAddr) -> IpAddr {
        match like {
            IpAddr::V4(_) => IpAddr::V4(self.client_addr()),
            IpAddr::V6(_) => IpAddr::V6(self.client_addr6()),
        }
    }

    /// The IPv4 fan-out destinations: 198.19.128.1, 198.19.128.2, ... (`cfg.fanout`).
    pub fn fanout_targets_v4(&self) -> Vec<Ipv4Addr> {
        (1..=self.cfg.fanout).map(plan::fanout_v4).collect()
    }

    /// The IPv6 fan-out destinations: 2001:2:0:1980::1, ::2, ... (`cfg.fanout`).
    /// None with `fanout_v4_only`.
    pub fn fanout_targets_v6(&self) -> Vec<Ipv6Addr> {
        if self.cfg.fanout_v4_only {
            return Vec::new();
        }
        (1..=self.cfg.fanout).map(plan::fanout_v6).collect()
    }

    /// All fan-out destinations, IPv4 first, then IPv6 (2 * `cfg.fanout`).
    pub fn fanout_targets(&self) -> Vec<IpAddr> {
        self.fanout_targets_v4()
            .into_iter()
            .map(IpAddr::V4)
            .chain(self.fanout_targets_v6().into_iter().map(IpAddr::V6))
            .collect()
    }

    /// Whether `dst` is a destination behind r4: the server's address or a fan-out target.
    pub fn is_destination(&self, dst: IpAddr) -> bool {
        match dst {
            IpAddr::V4(a) => {
                let i = u32::from(a).wrapping_sub(u32::from(plan::FANOUT_NET)) as usize;
                a == self.server_addr() || (1..=self.cfg.fanout).contains(&i)
            }
            IpAddr::V6(a) => {
                let i = u128::from(a).wrapping_sub(u128::from(plan::FANOUT_NET6));
                a == self.server_addr6()
                    || (!self.cfg.fanout_v4_only && (1..=self.cfg.fanout as u128).contains(&i))
            }
        }
    }

    /// Number of routers on the client→server path (5).
    pub fn hop_count(&self) -> usize {
        5
    }

    /// Number of ECMP branches.
    pub fn branches(&self) -> usize {
        self.cfg.branches
    }

    /// The hop addresses (routers r1 to r4) of the path through branch `k` (1-based) and,
    /// for b1 with the second stage, through `cJ` (`sub` = J; ignored elsewhere).
    pub fn path_ip(&self, k: usize, sub: Option<usize>, v6: bool) -> Vec<IpAddr> {
        let path = match sub {
            Some(j) if k == 1 && self.cfg.sub_branches > 0 => vec![
                host(plan::CLIENT_NET, 1),
                host(plan::R1_R2_NET, 2),
                host(plan::r2_branch_net(1), 2),
                host(plan::b1_sub_net(j), 2),
                host(plan::sub_r3_net(j), 2),
                host(plan::R3_R4_NET, 2),
            ],
            _ => self.branch_path(k),
        };
        path.into_iter()
            .map(|a| match v6 {
                true => IpAddr::V6(v4_to_v6(a).expect("lab address")),
                false => IpAddr::V4(a),
            })
            .collect()
    }

    /// Every path from the client towards the server half, as [`Lab::path_ip`] gives them:
    /// one per branch, and with the second stage one per cJ instead of b1's.
    pub fn all_paths_ip(&self, v6: bool) -> Vec<Vec<IpAddr>> {
        let mut out = Vec::new();
        for k in 1..=self.cfg.branches {
            if k == 1 && self.cfg.sub_branches > 0 {
                for j in 1..=self.cfg.sub_branches {
                    out.push(self.path_ip(1, Some(j), v6));
                }
            } else {
                out.push(self.path_ip(k, None, v6));
            }
        }
        out
    }

    /// The second-stage router (1-based J of cJ) an address belongs to: cJ's or r3's
    /// address on a link of cJ.
    pub fn sub_branch_of_ip(&self, addr: IpAddr) -> Option<usize> {
        let a = match addr {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => v6_to_v4(a)?,
        };
        (1..=self.cfg.sub_branches).find(|&j| {
            let o = a.octets();
            o[..3] == plan::b1_sub_net(j).octets()[..3]
                || o[..3] == plan::sub_r3_net(j).octets()[..3]
        })
    }

    /// The hop addresses (ICMP sources) of the path through branch `k` (1-based), without
    /// the second stage ([`Lab::path_ip`] has it).
    pub fn branch_path(&self, k: usize) -> Vec<Ipv4Addr> {
        vec![
            host(plan::CLIENT_NET, 1),
            host(plan::R1_R2_NET, 2),
            host(plan::r2_branch_net(k), 2),
            host(plan::branch_r3_net(k), 2),
            host(plan::R3_R4_NET, 2),
        ]
    }

    /// The IPv6 hop addresses of the path through branch `k` (1-based):
    /// `2001:2:0:1801::1, 2001:2:0:1802::2, 2001:2:0:18(10+K)::2, 2001:2:0:19(10+K)::2,
    /// 2001:2:0:1902::2` (each router answers from its inbound interface).
    pub fn branch_path6(&self, k: usize) -> Vec<Ipv6Addr> {
        self.branch_path(k)
            .into_iter()
            .map(|a| v4_to_v6(a).expect("lab address"))
            .collect()
    }

    /// [`Lab::branch_path`] or [`Lab::branch_path6`].
    pub fn branch_path_ip(&self, k: usize, v6: bool) -> Vec<IpAddr> {
        if v6 {
            self.branch_path6(k).into_iter().map(IpAddr::V6).collect()
        } else {
            self.branch_path(k).into_iter().map(IpAddr::V4).collect()
        }
    }

    /// Which branch (1-based) a hop list of either family goes through (3rd hop).
    pub fn branch_of_path_ip(&self, path: &[Option<IpAddr>]) -> Option<usize> {
        let h3 = (*path.get(2)?)?;
        (1..=self.cfg.branches).find(|&k| self.branch_path_ip(k, h3.is_ipv6())[2] == h3)
    }

    /// The branch (1-based) an address of either family belongs to.
    pub fn branch_of_ip(&self, addr: IpAddr) -> Option<usize> {
        match addr {
            IpAddr::V4(a) => self.branch_of_addr(a),
            IpAddr::V6(a) => self.branch_of_addr(v6_to_v4(a)?),
        }
    }

    /// Name of the node owning an address of either family (fan-out targets: "server").
    pub fn addr_owner_ip(&self, addr: IpAddr) -> Option<&str> {
        if self.is_destination(addr) {
            return Some(&self.nodes[self.nodes.len() - 1].role);
        }
        match addr {
            IpAddr::V4(a) => self.addr_owner(a),
            IpAddr::V6(a) => {
                let v4 = v6_to_v4(a)?;
                (v4_to_v6(v4)? == a).then_some(())?;
                self.addr_owner(v4)
            }
        }
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
        self.nat_translation_to(proto, client_port, self.server_addr(), server_port)
    }

    /// [`Lab::nat_translation`] for a flow to any IPv4 destination `dst` (e.g. a
    /// fan-out target). For [`Proto::Icmp`] the ports are ignored and the returned
    /// port is 0 (the translated source address is read from any ICMP entry
    /// client -> dst).
    pub fn nat_translation_to(
        &self,
        proto: Proto,
        client_port: u16,
        dst: Ipv4Addr,
        dport: u16,
    ) -> Result<(Ipv4Addr, u16)> {
        if !self.cfg.nat {
            return Ok((self.client_addr(), client_port));
        }
        let ns = self.router_ns("r1")?.to_string();
        let mut c = self.command(&ns, "conntrack");
        c.args(["-L", "-p", proto.name()])
            .args(["--orig-src", &self.client_addr().to_string()])
            .args(["--orig-dst", &dst.to_string()]);
        if proto.has_ports() {
            c.args(["--orig-port-src", &client_port.to_string()])
                .args(["--orig-port-dst", &dport.to_string()]);
        }
        let out = run_checked(&mut c, None, CMD_TIMEOUT)?;
        for line in out.lines() {
            if proto.has_ports() {
                if let Some(t) = parse_conntrack_reply(line) {
                    return Ok(t);
                }
            } else if let Some(a) = parse_conntrack_reply_addr(line) {
                return Ok((a, 0));
            }
        }
        bail!(
            "no conntrack entry on r1 for {} {}:{} -> {}:{} (flow not started?)",
            proto.name(),
            self.client_addr(),
            client_port,
            dst,
            dport
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
        self.route_branch_ip(proto, src.into(), sport, dst.into(), dport, 0)
    }

    /// Branch (1-based) that r2 picks for a packet arriving from r1, either family.
    /// Ports are ignored for [`Proto::Icmp`]; `flow_label` is ignored for IPv4.
    ///
    /// IPv4 asks `ip route get ... iif r1 ipproto P [sport S dport D]` in r2. IPv6
    /// cannot (see the crate documentation: under hash policy 3 `ip -6 route get`
    /// hashes differently from forwarding), so it injects a marked copy of the packet
    /// into r2 from r1 and reads which branch r2 forwarded it to; r2 drops it there.
    pub fn route_branch_ip(
        &self,
        proto: Proto,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        flow_label: u32,
    ) -> Result<usize> {
        if src.is_ipv4() != dst.is_ipv4() {
            bail!("source {src} and destination {dst} are of different families");
        }
        let v6 = dst.is_ipv6();
        if v6 && flow_label > 0xf_ffff {
            bail!("flow label {flow_label:#x} has more than 20 bits");
        }
        if v6 {
            return self.oracle_branch("r2", proto, src, sport, dst, dport, flow_label);
        }
        self.route_get_v4(
            "r2",
            "r1",
            'b',
            self.cfg.branches,
            proto,
            src,
            sport,
            dst,
            dport,
        )
    }

    /// The branch (1-based) r3 picks for a packet from the server to the client (the way
    /// back, reverse traceroute's probes: `src_port -> dst_port`, ports ignored for ICMP),
    /// by `ip route get ... iif r4` in r3: bK, or dJ with the return stage
    /// ([`LabConfig::return_branches`]). IPv4, and the lab without a second stage only.
    pub fn reverse_branch_v4(&self, proto: Proto, src_port: u16, dst_port: u16) -> Result<usize> {
        if self.cfg.sub_branches > 0 {
            bail!("the way back is only modelled for the lab without a second stage");
        }
        let (prefix, count) = match self.cfg.return_branches {
            0 => ('b', self.cfg.branches),
            m => ('d', m),
        };
        self.route_get_v4(
            "r3",
            "r4",
            prefix,
            count,
            proto,
            IpAddr::V4(self.server_addr()),
            src_port,
            IpAddr::V4(self.client_addr()),
            dst_port,
        )
    }

    /// The hop addresses of the way back from the server to the client through branch `k`
    /// (1-based: bK, or dJ with the return stage), as reverse traceroute meets them: each
    /// router answers from the interface the probe came in on (r4, r3, bK or dJ, r2, r1),
    /// then the client itself.
    pub fn reverse_path_ip(&self, k: usize, v6: bool) -> Vec<IpAddr> {
        let (stage, r2_side) = match self.cfg.return_branches {
            0 => (plan::branch_r3_net(k), plan::r2_branch_net(k)),
            _ => (plan::return_r3_net(k), plan::r2_return_net(k)),
        };
        [
            host(plan::SERVER_NET, 1),
            host(plan::R3_R4_NET, 1),
            host(stage, 1),
            host(r2_side, 1),
            host(plan::R1_R2_NET, 1),
            self.client_addr(),
        ]
        .into_iter()
        .map(|a| match v6 {
            true => IpAddr::V6(v4_to_v6(a).expect("lab address")),
            false => IpAddr::V4(a),
        })
        .collect()
    }

    /// How many ways back r3 balances over: the return stage's routers, or the branches.
    pub fn reverse_branches(&self) -> usize {
        match self.cfg.return_branches {
            0 => self.cfg.branches,
            m => m,
        }
    }

    /// With the return stage: counts, on each of d1..dM, the reverse-traceroute probes
    /// (UDP and TCP from port 1021, echo requests) the server sends, both families; read
    /// them with [`Lab::return_probe_counts`]; and the server's other TCP and UDP packets
    /// ([`Lab::return_flow_counts`]). The way back of IPv6 probes by their own packets
    /// (`ip -6 route get` does not predict forwarding under hash policy 3).
    pub fn install_return_observer(&self) -> Result<()> {
        let (s4, s6) = (self.server_addr(), self.server_addr6());
        for j in 1..=self.cfg.return_branches {
            let ns = self.ns_of(&format!("d{j}"))?.to_string();
            let script = format!(
                "table inet svctr_return_obs {{\n  chain fwd_probes {{\n    type filter hook forward priority 0; policy accept;\n    \
                 ip saddr {s4} udp sport 1021 counter\n    ip saddr {s4} tcp sport 1021 counter\n    \
                 ip saddr {s4} icmp type echo-request counter\n    ip6 saddr {s6} udp sport 1021 counter\n    \
                 ip6 saddr {s6} tcp sport 1021 counter\n    ip6 saddr {s6} icmpv6 type echo-request counter\n  }}\n}}\n\
                 table inet svctr_return_flows {{\n  chain fwd_flows {{\n    type filter hook forward priority 0; policy accept;\n    \
                 ip saddr {s4} meta l4proto {{ tcp, udp }} th sport != 1021 counter\n    \
                 ip6 saddr {s6} meta l4proto {{ tcp, udp }} th sport != 1021 counter\n  }}\n}}\n"
            );
            let mut c = self.command(&ns, "nft");
            c.args(["-f", "-"]);
            run_checked(&mut c, Some(&script), CMD_TIMEOUT)?;
        }
        Ok(())
    }

    /// The probes each of d1..dM has forwarded so far (see [`Lab::install_return_observer`]).
    pub fn return_probe_counts(&self) -> Result<Vec<u64>> {
        (1..=self.cfg.return_branches)
            .map(|j| {
                let ns = self.ns_of(&format!("d{j}"))?.to_string();
                let mut c = self.command(&ns, "nft");
                c.args(["list", "table", "inet", "svctr_return_obs"]);
                let out = run_checked(&mut c, None, CMD_TIMEOUT)?;
                Ok(out.lines().filter_map(nft_rule_packets).sum())
            })
            .collect()
    }

    /// The TCP and UDP packets from the server other than reverse-traceroute probes (a flow's
    /// own, and the flow-shaped probes of `flow --reverse`, which share its 5-tuple) each of
    /// d1..dM has forwarded so far (see [`Lab::install_return_observer`]).
    pub fn return_flow_counts(&self) -> Result<Vec<u64>> {
        (1..=self.cfg.return_branches)
            .map(|j| {
                let ns = self.ns_of(&format!("d{j}"))?.to_string();
                let mut c = self.command(&ns, "nft");
                c.args(["list", "table", "inet", "svctr_return_flows"]);
                let out = run_checked(&mut c, None, CMD_TIMEOUT)?;
                Ok(out.lines().filter_map(nft_rule_packets).sum())
            })
            .collect()
    }

    /// With the second stage ([`LabConfig::sub_branches`]): the router c1..cN (1-based)
    /// that b1 picks for a packet of this flow arriving from r2 (the flow must go through
    /// b1: see [`Lab::route_branch_ip`]). IPv4 by `ip route get ... iif r2` in b1, IPv6 by
    /// b1's routing oracle.
    pub fn route_sub_branch_ip(
        &self,
        proto: Proto,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        flow_label: u32,
    ) -> Result<usize> {
        if self.cfg.sub_branches == 0 {
            bail!("lab {} has no second stage behind b1", self.prefix);
        }
        if dst.is_ipv6() {
            return self.oracle_branch("b1", proto, src, sport, dst, dport, flow_label);
        }
        let n = self.cfg.sub_branches;
        self.route_get_v4("b1", "r2", 'c', n, proto, src, sport, dst, dport)
    }

    /// `ip route get` in `router` for a packet from `iif`: the output interface
    /// `<prefix>N`, N in 1..=count.
    #[allow(clippy::too_many_arguments)]
    fn route_get_v4(
        &self,
        router: &str,
        iif: &str,
        prefix: char,
        count: usize,
        proto: Proto,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
    ) -> Result<usize> {
        let ns = self.router_ns(router)?.to_string();
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
            iif,
            "ipproto",
            proto.name(),
        ]);
        if proto.has_ports() {
            c.args(["sport", &sport.to_string(), "dport", &dport.to_string()]);
        }
        let out = run_checked(&mut c, None, CMD_TIMEOUT)?;
        let toks: Vec<&str> = out.split_whitespace().collect();
        let dev = toks
            .windows(2)
            .find(|w| w[0] == "dev")
            .map(|w| w[1])
            .ok_or_else(|| anyhow!("cannot parse `ip route get` output: {out}"))?;
        dev.strip_prefix(prefix)
            .and_then(|s| s.parse().ok())
            .filter(|k| (1..=count).contains(k))
            .ok_or_else(|| anyhow!("{router} routes this flow via {dev:?}, not a branch: {out}"))
    }

    /// IPv6 ground truth by experiment: r1 sends a packet with the flow's header
    /// fields (addresses, next header, ports, flow label) into r2, marked with traffic
    /// class 0xff and hop limit 255, which the ECMP hash ignores. r2 routes it like the
    /// flow, and its `svctr_oracle` forward chain drops it with a per-branch counter.
    /// For the second stage (`router` b1) it is sent with hop limit 254: r2's chain lets it
    /// through, r2 forwards it like the flow (to b1, for a flow that goes there), and b1's
    /// chain drops it with a counter per second-stage router.
    #[allow(clippy::too_many_arguments)]
    fn oracle_branch(
        &self,
        router: &str,
        proto: Proto,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        flow_label: u32,
    ) -> Result<usize> {
        let (IpAddr::V6(src6), IpAddr::V6(dst6)) = (src, dst) else {
            bail!("the routing oracle is IPv6-only");
        };
        let (count, hoplimit) = match router {
            "r2" => (self.cfg.branches, 255),
            _ => (self.cfg.sub_branches, 254),
        };
        let mut pkt =
            util::oracle_packet6(proto.number(true), src6, dst6, sport, dport, flow_label);
        pkt[7] = hoplimit;
        let r1 = self.router_ns("r1")?.to_string();
        let ns = self.router_ns(router)?.to_string();
        let mut all = self.oracle.lock().unwrap_or_else(|e| e.into_inner());
        let seen = all.entry(router.to_string()).or_default();
        util::send_raw6(&r1, dst6, pkt)?;
        // The routers forward in softirq context right after r1's transmit; poll briefly.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let now = self.oracle_counters(&ns)?;
            if now.len() != count + 1 {
                bail!("unexpected svctr_oracle chain on {router}: {now:?}");
            }
            let old = std::mem::replace(seen, now.clone());
            let grown: Vec<usize> = (0..now.len())
                .filter(|&i| now[i] > old.get(i).copied().unwrap_or(0))
                .collect();
            match grown.as_slice() {
                [] if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                [] => bail!(
                    "routing oracle: {router} did not forward the probe {src}:{sport} -> {dst}:{dport} ({})",
                    proto.name()
                ),
                [i] if *i < count => return Ok(i + 1),
                [_] => bail!("routing oracle: {router} routes {src} -> {dst} to no branch"),
                _ => bail!("routing oracle: counters moved on several branches {grown:?}"),
            }
        }
    }

    /// Packet counters of r2's oracle rules: one per branch, then the catch-all.
    fn oracle_counters(&self, r2: &str) -> Result<Vec<u64>> {
        let mut c = self.command(r2, "nft");
        c.args(["-j", "list", "table", "ip6", "svctr_oracle"]);
        let out = run_checked(&mut c, None, CMD_TIMEOUT)?;
        let v: serde_json::Value = serde_json::from_str(&out).context("nft -j output")?;
        let mut counters = Vec::new();
        for item in v["nftables"].as_array().into_iter().flatten() {
            let Some(exprs) = item["rule"]["expr"].as_array() else {
                continue;
            };
            if let Some(n) = exprs.iter().find_map(|e| e["counter"]["packets"].as_u64()) {
                counters.push(n);
            }
        }
        Ok(counters)
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
        let path = self.expected_path_ip(
            proto,
            self.client_addr().into(),
            self.server_addr().into(),
            client_port,
            server_port,
            0,
        )?;
        Ok(path
            .into_iter()
            .filter_map(|a| match a {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect())
    }

    /// Ground truth for either family: the hop addresses (hop 1..=hop_count) that the
    /// packets `src:sport -> dst:dport` (protocol `proto`, IPv6 flow label
    /// `flow_label`) sent by the client meet. `dst` is the server or a fan-out target
    /// ([`Lab::is_destination`]); ports are ignored for [`Proto::Icmp`], the flow label
    /// for IPv4. With NAT (IPv4 only) and `src` = the client, the tuple seen by r2 is
    /// read from r1's conntrack (error if the flow has no entry yet); other sources
    /// are taken as they are.
    pub fn expected_path_ip(
        &self,
        proto: Proto,
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        flow_label: u32,
    ) -> Result<Vec<IpAddr>> {
        if src.is_ipv4() != dst.is_ipv4() {
            bail!("source {src} and destination {dst} are of different families");
        }
        if !self.is_destination(dst) {
            bail!(
                "{dst} is not a destination behind r4 (the server or one of the {} fan-out targets)",
                self.cfg.fanout
            );
        }
        let (src, sport) = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) if self.cfg.nat && s == self.client_addr() => {
                let (a, p) = self.nat_translation_to(proto, sport, d, dport)?;
                (IpAddr::V4(a), if proto.has_ports() { p } else { sport })
            }
            _ => (src, sport),
        };
        let k = self.route_branch_ip(proto, src, sport, dst, dport, flow_label)?;
        let j = if k == 1 && self.cfg.sub_branches > 0 {
            Some(self.route_sub_branch_ip(proto, src, sport, dst, dport, flow_label)?)
        } else {
            None
        };
        Ok(self.path_ip(k, j, dst.is_ipv6()))
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

impl Lab {
    /// Per-namespace name files, bind-mounted by `ip netns exec` (ip-netns(8)): a `hosts`
    /// naming every lab address `<node>.lab.test`, so reverse DNS in the lab is answered
    /// locally and deterministically, and a `resolv.conf` whose only nameserver is the
    /// namespace's own loopback, so no DNS query from a lab namespace can leave the lab.
    fn write_name_files(&self) -> Result<()> {
        let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for l in &self.links {
            hosts.push_str(&format!("{} {}.lab.test\n", l.addr_a(), l.a));
            hosts.push_str(&format!("{} {}.lab.test\n", l.addr_b(), l.b));
            hosts.push_str(&format!("{} {}.lab.test\n", l.addr6_a(), l.a));
            hosts.push_str(&format!("{} {}.lab.test\n", l.addr6_b(), l.b));
        }
        for ns in &self.created {
            let dir = std::path::Path::new("/etc/netns").join(ns);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(dir.join("hosts"), &hosts)
                .with_context(|| format!("writing {}/hosts", dir.display()))?;
            std::fs::write(dir.join("resolv.conf"), DEFAULT_RESOLV_CONF)
                .with_context(|| format!("writing {}/resolv.conf", dir.display()))?;
        }
        Ok(())
    }
}

/// The `resolv.conf` of every lab namespace: its only nameserver is its own loopback
/// (where nothing listens unless a test starts a server), so no DNS query from a lab
/// namespace can leave the lab. [`dns_server`] replaces the client's.
pub(crate) const DEFAULT_RESOLV_CONF: &str = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n";

impl Lab {
    /// `/etc/netns/<ns>/<file>`, which `ip netns exec` bind-mounts over `/etc/<file>`.
    pub(crate) fn name_file(&self, ns: &str, file: &str) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns").join(ns).join(file)
    }
}

/// Removes the `/etc/netns/<ns>` files a lab wrote.
fn remove_name_files(ns: &str) {
    let dir = std::path::Path::new("/etc/netns").join(ns);
    if dir.exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The lines' threads hold sockets in namespaces about to go.
        self.lines.clear();
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
            remove_name_files(ns);
        }
        self.created.clear();
    }
}

/// The IPv6 twin of a lab IPv4 link address (see [`plan::v6_net`]).
fn v4_to_v6(a: Ipv4Addr) -> Option<Ipv6Addr> {
    let o = a.octets();
    if o[0] != 198 || !(18..=19).contains(&o[1]) || o[2] > 99 || o[3] > 9 {
        return None;
    }
    Some(host6(plan::v6_net(host(a, 0)), o[3]))
}

/// The IPv4 twin of a lab IPv6 link address (inverse of [`v4_to_v6`]).
fn v6_to_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    if s[..3] != [0x2001, 2, 0] || s[4..7] != [0, 0, 0] || s[7] > 9 {
        return None;
    }
    let digits = format!("{:04x}", s[3]);
    if !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (hi, lo): (u8, u8) = (digits[..2].parse().ok()?, digits[2..].parse().ok()?);
    if !(18..=19).contains(&hi) {
        return None;
    }
    Some(Ipv4Addr::new(198, hi, lo, s[7] as u8))
}

/// Nodes and links of the topology for `branches` branches.
fn topology(
    prefix: &str,
    branches: usize,
    subs: usize,
    returns: usize,
) -> (Vec<Node>, Vec<LinkSpec>) {
    let node = |role: &str, router: bool| Node {
        role: role.to_string(),
        ns: format!("{prefix}-{role}"),
        router,
    };
    let mut nodes = vec![node("client", false), node("r1", true), node("r2", true)];
    for k in 1..=branches {
        nodes.push(node(&format!("b{k}"), true));
    }
    for j in 1..=subs {
        nodes.push(node(&format!("c{j}"), true));
    }
    for j in 1..=returns {
        nodes.push(node(&format!("d{j}"), true));
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
            net_v6: plan::v6_net(net),
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
        if k == 1 && subs > 0 {
            for j in 1..=subs {
                let cj = format!("c{j}");
                links.push(link("b1", &cj, 1, &cj, "b1", 2, plan::b1_sub_net(j)));
                links.push(link(&cj, "r3", 1, "r3", &cj, 2, plan::sub_r3_net(j)));
            }
        } else {
            links.push(link(&bk, "r3", 1, "r3", &bk, 2, plan::branch_r3_net(k)));
        }
    }
    for j in 1..=returns {
        let dj = format!("d{j}");
        links.push(link("r2", &dj, 1, &dj, "r2", 2, plan::r2_return_net(j)));
        links.push(link(&dj, "r3", 1, "r3", &dj, 2, plan::return_r3_net(j)));
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

/// From a `conntrack -L` line, the reply tuple's dst (for ICMP entries, which have no ports).
fn parse_conntrack_reply_addr(line: &str) -> Option<Ipv4Addr> {
    line.split_whitespace()
        .filter_map(|t| t.strip_prefix("dst="))
        .nth(1)?
        .parse()
        .ok()
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
/// IPv4 only: see [`parse_traceroute_ip`] for `traceroute -6`.
pub fn parse_traceroute(out: &str) -> Vec<Option<Ipv4Addr>> {
    parse_traceroute_ip(out)
        .into_iter()
        .map(|h| match h {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        })
        .collect()
}

/// [`parse_traceroute`] for either family (`traceroute -6` output too).
pub fn parse_traceroute_ip(out: &str) -> Vec<Option<IpAddr>> {
    let mut hops: Vec<Option<IpAddr>> = Vec::new();
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
            .find_map(|t| t.parse::<IpAddr>().ok());
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
        let (nodes, links) = topology("t", 4, 0, 0);
        assert_eq!(nodes.len(), 2 + 2 + 4 + 2);
        assert_eq!(links.len(), 4 + 2 * 4);
        assert_eq!(links[0].addr_b(), Ipv4Addr::new(198, 18, 1, 2));
        assert_eq!(links.last().unwrap().addr_b(), Ipv4Addr::new(198, 19, 1, 2));
        // The return stage: d1..d3 between r2 and r3, on subnets of their own.
        let (nodes, links) = topology("t", 3, 0, 3);
        assert_eq!(nodes.len(), 2 + 2 + 3 + 3 + 2);
        assert_eq!(links.len(), 4 + 2 * 3 + 2 * 3);
        let d2: Vec<_> = links
            .iter()
            .filter(|l| l.a == "d2" || l.b == "d2")
            .collect();
        assert_eq!(d2.len(), 2);
        assert_eq!(d2[0].addr_a(), Ipv4Addr::new(198, 18, 82, 1));
        assert_eq!(d2[1].addr_b(), Ipv4Addr::new(198, 19, 82, 2));
    }

    #[test]
    fn v6_plan() {
        assert_eq!(
            plan::v6_net(plan::CLIENT_NET).to_string(),
            "2001:2:0:1801::"
        );
        assert_eq!(
            plan::v6_net(plan::branch_r3_net(32)).to_string(),
            "2001:2:0:1942::"
        );
        let (_, links) = topology("t", 3, 0, 0);
        assert_eq!(links[0].addr6_a().to_string(), "2001:2:0:1801::1");
        assert_eq!(links[0].addr6_b().to_string(), "2001:2:0:1801::2");
        assert_eq!(
            links.last().unwrap().addr6_b().to_string(),
            "2001:2:0:1901::2"
        );
        for l in &links {
            for (a4, a6) in [(l.addr_a(), l.addr6_a()), (l.addr_b(), l.addr6_b())] {
                assert_eq!(v4_to_v6(a4), Some(a6));
                assert_eq!(v6_to_v4(a6), Some(a4));
            }
        }
        assert_eq!(v6_to_v4("2001:2:0:1a01::1".parse().unwrap()), None);
        assert_eq!(plan::fanout_v4(256), Ipv4Addr::new(198, 19, 129, 0));
        assert_eq!(plan::fanout_v6(1000).to_string(), "2001:2:0:1980::3e8");
        assert_eq!(
            plan::fanout_v4(MAX_FANOUT),
            Ipv4Addr::new(198, 19, 255, 255)
        );
    }

    #[test]
    fn traceroute_parse_v6() {
        let out = "traceroute to 2001:2:0:1901::2 (2001:2:0:1901::2), 6 hops max, 80 byte packets\n 1  2001:2:0:1801::1  0.054 ms\n 2  *\n 3  2001:2:0:1813::2  0.060 ms\n";
        let h = parse_traceroute_ip(out);
        assert_eq!(
            h,
            vec![
                Some("2001:2:0:1801::1".parse().unwrap()),
                None,
                Some("2001:2:0:1813::2".parse().unwrap())
            ]
        );
        // The IPv4-only parser sees no addresses in it.
        assert_eq!(parse_traceroute(out), vec![None, None, None]);
    }

    #[test]
    fn oracle_packet_layout() {
        let (s, d): (Ipv6Addr, Ipv6Addr) = (
            "2001:2:0:1801::2".parse().unwrap(),
            "2001:2:0:1901::2".parse().unwrap(),
        );
        let p = util::oracle_packet6(17, s, d, 1234, 9000, 0x12345);
        assert_eq!(p.len(), 48);
        assert_eq!(
            &p[..4],
            &[0x6f, 0xf1, 0x23, 0x45],
            "version 6, tclass 0xff, label"
        );
        assert_eq!((p[6], p[7]), (17, 255));
        assert_eq!(&p[40..44], &[0x04, 0xd2, 0x23, 0x28]);
        assert_eq!(util::oracle_packet6(6, s, d, 1, 2, 0).len(), 60);
        assert_eq!(util::oracle_packet6(58, s, d, 1, 2, 0)[40], 128);
    }

    #[test]
    fn nstat_json() {
        let m = parse_nstat_json(r#"{"kernel":{"IpInReceives":12,"TcpRetransSegs":0}}"#).unwrap();
        assert_eq!(m["IpInReceives"], 12);
    }
}

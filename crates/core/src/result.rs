//! The result of one trace. Its JSON form is a contract other programs parse: fields may be
//! added, the ones documented in the README must not be renamed.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::Algorithm;
use crate::flow::{FlowKey, Protocol};

/// Why a trace stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// A reply came from the remote itself.
    RemoteReached,
    /// Every TTL short of the remote was probed; the remote's distance comes from the TTL of its
    /// packets (probes stop there so they never reach the remote application).
    RemoteDistance,
    /// A reply came from a `stop_at` address.
    StopAt,
    /// `max_missing` consecutive TTLs stayed silent.
    MaxMissing,
    /// The max TTL was probed.
    MaxTtl,
    /// A router answered with Destination Unreachable: the flow's packets go no further.
    Unreachable,
    /// The flow ended (TCP FIN or RST) during the trace.
    FlowEnded,
    /// The UDP flow was idle longer than the flow timeout during the trace.
    FlowTimeout,
    /// The trace was cut short (interrupt, end of the run).
    Interrupted,
    /// Nothing to probe: the remote is directly connected or closer than the first TTL.
    NothingToProbe,
}

crate::names::names!(
    StopReason,
    "stop reason",
    RemoteReached => "remote-reached",
    RemoteDistance => "remote-distance",
    StopAt => "stop-at",
    MaxMissing => "max-missing",
    MaxTtl => "max-ttl",
    Unreachable => "unreachable",
    FlowEnded => "flow-ended",
    FlowTimeout => "flow-timeout",
    Interrupted => "interrupted",
    NothingToProbe => "nothing-to-probe",
);

/// One end of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Address.
    pub ip: IpAddr,
    /// Port.
    pub port: u16,
}

/// How a flow was recognised as a service's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchSource {
    /// A sniffed DNS answer resolved a service's name to the remote address.
    Dns,
    /// The TLS ClientHello's server name (SNI).
    TlsSni,
    /// The server name in the QUIC Initial's ClientHello.
    QuicSni,
    /// The remote address is in one of the service's IP prefixes.
    Prefix,
}

crate::names::names!(
    MatchSource,
    "match source",
    Dns => "dns",
    TlsSni => "tls-sni",
    QuicSni => "quic-sni",
    Prefix => "prefix",
);

/// Which service a flow belongs to, and what showed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTag {
    /// The service's name (from the signatures, or the `--domain` / `--cidr` given).
    pub service: String,
    /// The domain name or server name that matched (absent for a prefix match).
    pub name: Option<String>,
    /// What recognised the flow.
    pub source: MatchSource,
}

/// The traced flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowInfo {
    /// tcp or udp.
    pub protocol: Protocol,
    /// This host's end.
    pub local: Endpoint,
    /// The far end.
    pub remote: Endpoint,
    /// IPv6 only: the flow label the probes carried (the flow's own, which routers may hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_label: Option<u32>,
    /// The service the flow was recognised as (flows selected by service only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The domain name or TLS/QUIC server name that matched the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What recognised the flow: `dns`, `tls-sni`, `quic-sni` or `prefix`.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matched_by: Option<MatchSource>,
}

impl TraceResult {
    /// The trace as the traceroute it is to tools that know only traceroutes (Atlas, warts):
    /// a Paris traceroute of the flow's 5-tuple to its remote end (one flow identifier),
    /// stopping where the flow trace stopped (short of the remote when its distance was
    /// known).
    pub fn to_traceroute(&self) -> crate::TracerouteResult {
        let f = &self.flow;
        crate::TracerouteResult {
            destination: f.remote.ip,
            port: Some(f.remote.port),
            source: f.local.ip,
            source_port: Some(f.local.port),
            source_port_count: None,
            protocol: f.protocol,
            strategy: crate::Strategy::Paris,
            ip_version: if f.remote.ip.is_ipv4() { 4 } else { 6 },
            algorithm: self.algorithm,
            start: self.start.clone(),
            end: self.end.clone(),
            stop_reason: self.stop_reason,
            hops: self.hops.clone(),
            probes_sent: self.probes_sent,
            replies: self.replies,
        }
    }

    /// The trace as a path graph (one flow: a chain of links where each TTL has one router).
    pub fn graph(&self) -> crate::PathGraph {
        crate::PathGraph::from_flow(&self.hops)
    }
}

impl FlowInfo {
    /// The flow's 5-tuple.
    pub fn key(&self) -> FlowKey {
        FlowKey {
            protocol: self.protocol,
            local: std::net::SocketAddr::new(self.local.ip, self.local.port),
            remote: std::net::SocketAddr::new(self.remote.ip, self.remote.port),
        }
    }

    /// Adds a service tag's fields.
    pub fn tag(&mut self, tag: &ServiceTag) {
        self.service = Some(tag.service.clone());
        self.name.clone_from(&tag.name);
        self.matched_by = Some(tag.source);
    }
}

/// One MPLS label stack entry quoted in an RFC 4950 extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MplsEntry {
    /// Label.
    pub label: u32,
    /// Traffic class.
    pub tc: u8,
    /// Bottom of stack.
    pub s: bool,
    /// TTL.
    pub ttl: u8,
}

impl From<&svctr_wire::icmp::MplsLabel> for MplsEntry {
    fn from(m: &svctr_wire::icmp::MplsLabel) -> Self {
        Self {
            label: m.label,
            tc: m.tc,
            s: m.bottom,
            ttl: m.ttl,
        }
    }
}

/// What a router said about one of its interfaces (RFC 5837 Interface Information Object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceEntry {
    /// `incoming`, `sub-ip-incoming`, `outgoing` or `next-hop` (RFC 5837 §4.1).
    pub role: String,
    /// The interface's ifIndex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_index: Option<u32>,
    /// An address of the interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<IpAddr>,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

impl From<&svctr_wire::icmp::InterfaceInfo> for InterfaceEntry {
    fn from(i: &svctr_wire::icmp::InterfaceInfo) -> Self {
        Self {
            role: i.role.as_str().to_owned(),
            if_index: i.if_index,
            addr: i.addr,
            name: i.name.clone(),
            mtu: i.mtu,
        }
    }
}

/// One probe and its reply (all reply fields are null for a probe nobody answered).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProbeReply {
    /// Who replied.
    pub addr: Option<IpAddr>,
    /// Its name by reverse DNS, when resolved (traceroute without `-n`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The AS announcing it, from an offline IP-to-AS table (`--asn FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    /// Round-trip time in milliseconds: the reply's kernel receive timestamp minus the probe's
    /// send time, which is the kernel timestamp of the probe's own capture, or, where replies
    /// come over raw sockets (`trace` of a few targets), the time taken in user space right
    /// before the probe was sent.
    pub rtt_ms: Option<f64>,
    /// ICMP type of the reply.
    pub icmp_type: Option<u8>,
    /// ICMP code of the reply.
    pub icmp_code: Option<u8>,
    /// TTL of the reply packet as it arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_ttl: Option<u8>,
    /// TTL the router saw in the quoted probe (1 unless a middlebox rewrote it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quoted_ttl: Option<u8>,
    /// TCP flags of a TCP reply from the destination (SYN-ACK 18, RST 4 or 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<u8>,
    /// The probe's IPv4 identification (IPv4 probes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_id: Option<u16>,
    /// What tells the probe apart from the other probes of its trace: the flow tracer's tag
    /// (IPv4 identification; IPv6 UDP checksum or the tag of the TCP sequence number it
    /// carried), the traceroute engine's probe number (1, 2, ...).
    #[serde(default)]
    pub tag: u16,
    /// MPLS labels from an RFC 4950 extension.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mpls: Vec<MplsEntry>,
    /// Interface information from RFC 5837 objects, in the order the router sent them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceEntry>,
    /// The next-hop MTU of a Fragmentation Needed (RFC 1191) or Packet Too Big (RFC 4443
    /// §3.2) error: the path MTU at that router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Multipath discovery: the flow identifier of the probe (probes of one flow take one
    /// path through per-flow load balancers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<u16>,
    /// Multipath discovery (UDP, TCP): the probe's own source and destination ports, which
    /// vary with its flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    /// See `src_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// Why the probe could not be sent, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One TTL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    /// The probes' TTL.
    pub ttl: u8,
    /// The probes sent with this TTL, in send order.
    pub probes: Vec<ProbeReply>,
}

impl Hop {
    /// The distinct addresses that answered, in order of first answer.
    pub fn addrs(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        for a in self.probes.iter().filter_map(|p| p.addr) {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }
}

/// The result of tracing one flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceResult {
    /// The flow.
    pub flow: FlowInfo,
    /// Scheduling used.
    pub algorithm: Algorithm,
    /// When the first probe was sent (RFC 3339, UTC).
    pub start: String,
    /// When the trace finished (RFC 3339, UTC).
    pub end: String,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// One entry per TTL probed, in TTL order.
    pub hops: Vec<Hop>,
    /// Routers between this host and the remote, read from the TTL of the remote's packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_distance: Option<u8>,
    /// Probes sent.
    pub probes_sent: u32,
    /// Replies matched to a probe.
    pub replies: u32,
    /// The TCP connection's handshake was not answered, so the probes were copies of its SYN
    /// (see the probe module): the trace shows where the SYNs go.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub syn_copies: bool,
    /// The flow as its remote's server would send flow-shaped reverse probes (`flow
    /// --reverse`), when the trace ended: not part of the JSON.
    #[serde(skip)]
    pub reverse_flow: Option<crate::reverse::ReverseFlow>,
}

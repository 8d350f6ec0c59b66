//! The kernel BPF filters of the live driver, as libpcap filter expressions.
//!
//! Two captures run side by side:
//!
//! * the **flow capture** (small snap length) gives the engine what it tracks: the packets of
//!   the selected flows that change or reveal their state, our own probes leaving, and the
//!   ICMP/ICMPv6 errors about TCP and UDP packets;
//! * the **detection capture** (large snap length) gives the detector what it must read
//!   whole: DNS responses, the segments that carry a TLS ClientHello, and QUIC long-header
//!   datagrams big enough to be a client Initial.
//!
//! # Keeping the capture cheap under bulk traffic
//!
//! A multi-gigabit transfer must not be copied to user space packet by packet. The engine
//! does not need a flow's data, only its headers, and not every header either: probes copy
//! `SND.UNA` (from incoming ACK numbers), `RCV.NXT` and the window (from outgoing segments),
//! the TOS / traffic class and flow label (outgoing), the remote's TTL (incoming), and see the
//! flow end (FIN, RST). So the flow capture takes, of a TCP flow:
//! * every segment with SYN, FIN or RST;
//! * every segment without payload (pure ACKs: the receiver's side of a bulk transfer, one
//!   per one or two data segments, or per GRO batch);
//! * outgoing segments of at most one Ethernet MTU: small writes, requests, ClientHellos. A
//!   bulk *upload* leaves as GSO super-packets larger than that and is not taken;
//! * incoming segments of at most 576 bytes (IPv6: a 536-byte payload): the answers of
//!   request/response traffic, whose ACK numbers give `SND.UNA` (a server that answers with
//!   data sends no pure ACK); bulk data comes in full-sized segments;
//! * a sample of the other incoming data segments, so that the ACK number they carry keeps
//!   `SND.UNA` fresh during a download (and gives it at all when the tracer starts after the
//!   handshake).
//!
//! and of a UDP flow: outgoing datagrams of at most one MTU, incoming datagrams of at most 512
//! payload bytes or starting with a QUIC long header, and a sample of the others.
//!
//! # Sampling without state
//!
//! Classic BPF has no state and no clock, so a sample is a test on the packet's own fields. A
//! test on bits of the sequence number can miss a flow for ever: segments of a regular size
//! `2^k * m` leave the `k` low bits constant (a server writing 16 KB at a time moves it by
//! 2^14), and the higher bits change too slowly. A test on residues cannot: a segment is taken
//! when its sequence number is divisible by 61 or by 67 (BPF's `mod`, Linux 3.7). A flow whose
//! segments advance by a stride `s` visits every residue modulo a prime `p` that does not
//! divide `s`, so it is sampled at least once in 67 segments unless `s` is a multiple of 4087,
//! and about 3 % of random-looking numbers pass. UDP has no sequence number: a datagram is taken when the low 6 bits
//! of its checksum are zero (random on a real network; on veth the sender's checksum offload
//! leaves a partial sum, constant per flow and length) or, over IPv4, those of its
//! identification (incremented per datagram by Linux connected sockets).
//!
//! libpcap's `tcp[...]` and `udp[...]` index IPv4 packets only; IPv6 clauses index `ip6[...]`
//! from a 40-byte header, and IPv6 packets with extension headers are all taken (rare; the
//! engine walks the extension headers itself).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use svctr_core::{FlowFilter, FlowKey, MdaConfig, Protocol, Strategy, TracerouteConfig, SLOT_BITS};

/// Outgoing packets up to this IPv4 total length are taken: one Ethernet MTU.
const MTU_V4: u16 = 1500;
/// The same for the IPv6 payload length (1500 - 40).
const MTU_V6_PAYLOAD: u16 = 1460;

fn src_local(local: &[IpAddr], v6: bool) -> Option<String> {
    let v: Vec<String> = local
        .iter()
        .filter(|a| a.is_ipv6() == v6)
        .map(|a| format!("src host {a}"))
        .collect();
    (!v.is_empty()).then(|| format!("({})", v.join(" or ")))
}

/// ` and host R and port P and port L` for the fields the filter sets (IPv4 or IPv6 only).
fn narrowing(f: &FlowFilter) -> String {
    let mut s = String::new();
    if let Some(ip) = f.remote_ip {
        let _ = write!(s, " and host {ip}");
    }
    if let Some(p) = f.remote_port {
        let _ = write!(s, " and port {p}");
    }
    if let Some(p) = f.local_port {
        let _ = write!(s, " and port {p}");
    }
    s
}

fn wants(f: &FlowFilter, p: Protocol) -> bool {
    f.protocol.is_none_or(|q| q == p)
}

fn family_ok(f: &FlowFilter, local: &[IpAddr], v6: bool) -> bool {
    local.iter().any(|a| a.is_ipv6() == v6) && f.remote_ip.is_none_or(|r| r.is_ipv6() == v6)
}

fn quoted_protocols(f: &FlowFilter, at: &str) -> String {
    match f.protocol {
        Some(p) => format!("{at} == {}", p.number()),
        None => format!("({at} == 6 or {at} == 17)"),
    }
}

/// The sample of TCP data segments by their sequence number (at `seq`): divisible by 61 or 67
/// (see the module doc).
fn seq_sample(seq: &str) -> String {
    format!("({seq} % 61 == 0 or {seq} % 67 == 0)")
}

/// The flow capture's filter (see the module doc). `slot` is this process's slot: only ICMP
/// errors whose quoted tag has it in its low bits are this process's replies (see
/// `svctr_core::TraceConfig::slot`); the quoted IPv4 identification, IPv6 UDP checksum and
/// IPv6 TCP sequence number all end in the same byte of the quote.
pub fn flow_filter(f: &FlowFilter, local: &[IpAddr], slot: u8) -> String {
    let mask = (1u32 << SLOT_BITS) - 1;
    let mut clauses = Vec::new();
    let n = narrowing(f);
    if family_ok(f, local, false) {
        let src = src_local(local, false).unwrap_or_default();
        // ICMP errors (3 unreachable, 11 time exceeded, 12 parameter problem) quoting TCP/UDP;
        // the quoted header starts at icmp[8] (probes carry no IP options).
        // The quoted identification at icmp[12:2]: its low byte carries the slot.
        let mut icmp = format!(
            "(icmp and (icmp[0] == 3 or icmp[0] == 11 or icmp[0] == 12) and {} \
             and icmp[13] & {mask} == {slot}",
            quoted_protocols(f, "icmp[17]")
        );
        if let Some(IpAddr::V4(r)) = f.remote_ip {
            let _ = write!(icmp, " and icmp[24:4] == 0x{:08x}", u32::from(r));
        }
        if let Some(p) = f.remote_port {
            let _ = write!(icmp, " and icmp[30:2] == {p}");
        }
        icmp.push(')');
        clauses.push(icmp);
        if wants(f, Protocol::Tcp) {
            clauses.push(format!(
                "(ip and tcp{n} and (tcp[13] & 7 != 0 or ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2) == 0 \
                 or ip[2:2] <= 576 or ({src} and ip[2:2] <= {MTU_V4}) or {}))",
                seq_sample("tcp[4:4]")
            ));
        }
        if wants(f, Protocol::Udp) {
            clauses.push(format!(
                "(ip and udp{n} and (({src} and ip[2:2] <= {MTU_V4}) or udp[4:2] <= 520 or udp[8] & 0xc0 == 0xc0 \
                 or udp[6:2] & 0x3f == 0 or ip[4:2] & 0x3f == 0))"
            ));
        }
    }
    if family_ok(f, local, true) {
        let src = src_local(local, true).unwrap_or_default();
        // ICMPv6 errors (1 unreachable, 2 too big, 3 time exceeded, 4 parameter problem): the
        // ICMPv6 header at ip6[40], the quoted header at ip6[48] (next header at 54,
        // destination at 72..88), the quoted ports at ip6[88] and ip6[90].
        // The quoted UDP checksum (ip6[94:2]) and TCP sequence number (ip6[92:4]) both end at
        // ip6[95], whose low bits carry the slot.
        let mut icmp6 = format!(
            "(ip6[6] == 58 and ip6[40] >= 1 and ip6[40] <= 4 and {} and ip6[95] & {mask} == {slot}",
            quoted_protocols(f, "ip6[54]")
        );
        if let Some(IpAddr::V6(r)) = f.remote_ip {
            for (i, word) in r.octets().chunks(4).enumerate() {
                let _ = write!(
                    icmp6,
                    " and ip6[{}:4] == 0x{:08x}",
                    72 + 4 * i,
                    u32::from_be_bytes([word[0], word[1], word[2], word[3]])
                );
            }
        }
        if let Some(p) = f.remote_port {
            let _ = write!(icmp6, " and ip6[90:2] == {p}");
        }
        icmp6.push(')');
        clauses.push(icmp6);
        if wants(f, Protocol::Tcp) {
            // TCP at ip6[40]: seq 44..48, data offset 52, flags 53.
            clauses.push(format!(
                "(ip6[6] == 6{n} and (ip6[53] & 7 != 0 or ip6[4:2] - ((ip6[52] & 0xf0) >> 2) == 0 \
                 or ip6[4:2] <= 536 or ({src} and ip6[4:2] <= {MTU_V6_PAYLOAD}) or {}))",
                seq_sample("ip6[44:4]")
            ));
        }
        if wants(f, Protocol::Udp) {
            // UDP at ip6[40]: length 44, checksum 46, payload 48.
            clauses.push(format!(
                "(ip6[6] == 17{n} and (({src} and ip6[4:2] <= {MTU_V6_PAYLOAD}) or ip6[44:2] <= 520 \
                 or ip6[48] & 0xc0 == 0xc0 or ip6[46:2] & 0x3f == 0))"
            ));
        }
        // Extension headers (hop-by-hop 0, routing 43, fragment 44, destination options 60).
        clauses.push(format!(
            "(ip6 and (ip6[6] == 0 or ip6[6] == 43 or ip6[6] == 44 or ip6[6] == 60){n})"
        ));
    }
    clauses.join(" or ")
}

/// The traceroute capture's filter: this process's probes leaving, and the replies that can
/// only be to them, for the IP versions in use. Every clause checks the process's marker (see
/// the reserve module and `svctr_core::Traceroute`): the reserved source port (TCP: also the
/// high half of the sequence number, or of the acknowledgment in a reply) or the reserved ICMP
/// echo identifier (Paris: the constant checksum derived from it; Dublin: identifier and
/// sequence number), so that processes tracing at once never see each other's replies.
///
/// Offsets: an IPv4 ICMP error quotes the probe's 20-byte header (our probes have no options)
/// at `icmp[8]`, so its transport header starts at `icmp[28]`; an ICMPv6 error starts at
/// `ip6[40]`, the quoted IPv6 header at `ip6[48]` (next header at `ip6[54]`) and its transport
/// header at `ip6[88]`.
pub fn traceroute_filter(cfg: &TracerouteConfig, v4: bool, v6: bool) -> String {
    traceroute_filter_with(cfg, v4, v6, true)
}

/// [`traceroute_filter`], without our probes leaving if `!leaving`: for raw reply sockets.
pub(crate) fn traceroute_filter_with(
    cfg: &TracerouteConfig,
    v4: bool,
    v6: bool,
    leaving: bool,
) -> String {
    let m = cfg.marker;
    let echo = match cfg.strategy {
        Strategy::Classic => EchoMark::Ident(m),
        Strategy::Paris => EchoMark::Checksum {
            request: cfg.paris_checksum(),
            reply_v4: cfg.paris_reply_checksum(false),
            reply_v6: cfg.paris_reply_checksum(true),
        },
        Strategy::Dublin => EchoMark::IdentSeq(m),
    };
    probe_filter(
        &ProbeMarks {
            protocol: cfg.protocol,
            ports: (cfg.sport, cfg.sport.saturating_add(cfg.tcp_ports() - 1)),
            dest_port: cfg.dest_port(),
            marker: m,
            echo,
            leaving,
        },
        v4,
        v6,
    )
}

/// The multipath capture's filter: like [`traceroute_filter`], for the marks of
/// `svctr_core::Mda` (UDP: the reserved source port, whatever the destination port of the
/// flow; TCP: the reserved block of source ports and the high half of the sequence number;
/// ICMP: the reserved echo identifier).
pub fn multipath_filter(cfg: &MdaConfig, v4: bool, v6: bool) -> String {
    multipath_filter_with(cfg, v4, v6, true)
}

/// [`multipath_filter`], without our probes leaving if `!leaving`: for raw reply sockets.
pub(crate) fn multipath_filter_with(cfg: &MdaConfig, v4: bool, v6: bool, leaving: bool) -> String {
    probe_filter(
        &ProbeMarks {
            protocol: cfg.protocol,
            ports: (
                cfg.sport,
                cfg.sport.saturating_add(cfg.reserved_ports() - 1),
            ),
            dest_port: cfg.dest_port(),
            marker: cfg.marker,
            echo: EchoMark::Ident(cfg.marker),
            leaving,
        },
        v4,
        v6,
    )
}

/// The kernel filter of a reverse-traceroute client: the server's echo replies (responses
/// are code 1; a host without a server answers the presence check with a plain reply, which
/// the engine reads as "not supported") whose identifier is in this process's block
/// `first..=last`.
pub fn reverse_client_filter(server: IpAddr, first: u16, last: u16) -> String {
    match server {
        IpAddr::V4(s) => format!(
            "(icmp and src host {s} and icmp[0] == 0 and icmp[4:2] >= {first} and icmp[4:2] <= {last})"
        ),
        IpAddr::V6(s) => format!(
            "(icmp6 and src host {s} and ip6[6] == 58 and ip6[40] == 129 and ip6[44:2] >= {first} \
             and ip6[44:2] <= {last})"
        ),
    }
}

/// The kernel filter of a reverse-traceroute server: requests (echo request code 1), its own
/// probes leaving (to time them) and their answers (reference §1.7): errors quoting a probe
/// (UDP or TCP from port 1021, an echo request with sequence 0xFFFF), echo replies with
/// sequence 0xFFFF, and TCP to port 1021; and the errors quoting a flow-shaped probe
/// (`flow --reverse`, [`svctr_wire::revtr::FlowProbe`]): a pure ACK with no options or payload
/// (quoted IPv4 length 40 / IPv6 payload 20, and flags 0x10 where the quote reaches them:
/// an IPv4 router may quote only the RFC 792 minimum of 8 transport bytes, ICMPv6 quotes it
/// all), or a UDP datagram of 2 payload bytes (30 / 10). Those clauses also take errors about
/// the host's own pure ACKs (and, under short quotes, any 40-byte TCP segment); the engine
/// drops whatever matches no session.
/// Offsets assume no IPv4 options and no IPv6 extension headers in the quoted probe (the
/// server sends neither). The flow-shaped probes leaving are not captured (they look like the
/// service's own segments): their RTT starts when they are queued.
pub fn reverse_server_filter(v4: bool, v6: bool) -> String {
    let mut clauses = Vec::new();
    if v4 {
        clauses.push(
            "(icmp and ((icmp[0] == 8 and icmp[1] == 1) \
             or ((icmp[0] == 8 or icmp[0] == 0) and icmp[1] == 0 and icmp[6:2] == 0xffff) \
             or ((icmp[0] == 11 or icmp[0] == 3) and (((icmp[17] == 17 or icmp[17] == 6) \
             and icmp[28:2] == 1021) or (icmp[17] == 1 and icmp[28] == 8 and icmp[34:2] == 0xffff) \
             or (icmp[8] == 0x45 and icmp[17] == 6 and icmp[10:2] == 40 \
             and (ip[2:2] <= 56 or icmp[41] == 0x10)) \
             or (icmp[8] == 0x45 and icmp[17] == 17 and icmp[10:2] == 30)))))"
                .to_string(),
        );
        clauses.push("(ip and tcp port 1021)".into());
        clauses.push("(ip and udp src port 1021)".into());
    }
    if v6 {
        clauses.push(
            "(ip6 and ip6[6] == 58 and ((ip6[40] == 128 and ip6[41] == 1) \
             or ((ip6[40] == 128 or ip6[40] == 129) and ip6[41] == 0 and ip6[46:2] == 0xffff) \
             or ((ip6[40] == 1 or ip6[40] == 3) and (((ip6[54] == 17 or ip6[54] == 6) \
             and ip6[88:2] == 1021) or (ip6[54] == 58 and ip6[88] == 128 and ip6[94:2] == 0xffff) \
             or (ip6[54] == 6 and ip6[52:2] == 20 and ip6[101] == 0x10) \
             or (ip6[54] == 17 and ip6[52:2] == 10)))))"
                .to_string(),
        );
        clauses.push("(ip6 and tcp port 1021)".into());
        clauses.push("(ip6 and udp src port 1021)".into());
    }
    clauses.join(" or ")
}

/// What marks an echo request as this process's.
enum EchoMark {
    /// The identifier.
    Ident(u16),
    /// A constant checksum (it changes with the type in the reply, RFC 1624).
    Checksum {
        request: u16,
        reply_v4: u16,
        reply_v6: u16,
    },
    /// Identifier and sequence number both.
    IdentSeq(u16),
}

/// The marks a process's probes carry (see the reserve module).
struct ProbeMarks {
    protocol: Protocol,
    /// The reserved source ports, first and last.
    ports: (u16, u16),
    /// TCP: the destination port.
    dest_port: u16,
    /// TCP: the high half of every sequence number.
    marker: u16,
    echo: EchoMark,
    /// Pass our probes leaving too (a capture sees them, and their kernel timestamps are
    /// the send times); raw reply sockets never see them, and a UDP clause would not
    /// compile for an IPv6 one (see the replies module).
    leaving: bool,
}

fn probe_filter(marks: &ProbeMarks, v4: bool, v6: bool) -> String {
    let m = marks.marker;
    let (lo, hi) = marks.ports;
    let d = marks.dest_port;
    let errors4 = "icmp and (icmp[0] == 3 or icmp[0] == 11 or icmp[0] == 12)";
    let errors6 = "ip6[6] == 58 and ip6[40] >= 1 and ip6[40] <= 4";
    let mut clauses = Vec::new();
    match marks.protocol {
        Protocol::Udp => {
            // The reserved source port, or block of them (multipath with a kept port).
            if v4 {
                clauses.push(format!(
                    "({errors4} and icmp[17] == 17 and icmp[28:2] >= {lo} and icmp[28:2] <= {hi})"
                ));
            }
            if v6 {
                clauses.push(format!(
                    "({errors6} and ip6[54] == 17 and ip6[88:2] >= {lo} and ip6[88:2] <= {hi})"
                ));
            }
            if marks.leaving {
                clauses.push(format!("(udp and src portrange {lo}-{hi})"));
            }
        }
        Protocol::Tcp => {
            if v4 {
                clauses.push(format!(
                    "({errors4} and icmp[17] == 6 and icmp[28:2] >= {lo} and icmp[28:2] <= {hi} \
                     and icmp[32:2] == {m})"
                ));
                // Our SYNs leaving (seq high half), the destination's SYN-ACK or RST (ack).
                clauses.push(format!(
                    "(ip and tcp and ((tcp[0:2] >= {lo} and tcp[0:2] <= {hi} and tcp[2:2] == {d} \
                     and tcp[4:2] == {m}) or (tcp[0:2] == {d} and tcp[2:2] >= {lo} and tcp[2:2] <= {hi} \
                     and tcp[8:2] == {m})))"
                ));
            }
            if v6 {
                clauses.push(format!(
                    "({errors6} and ip6[54] == 6 and ip6[88:2] >= {lo} and ip6[88:2] <= {hi} \
                     and ip6[92:2] == {m})"
                ));
                clauses.push(format!(
                    "(ip6[6] == 6 and ((ip6[40:2] >= {lo} and ip6[40:2] <= {hi} and ip6[42:2] == {d} \
                     and ip6[44:2] == {m}) or (ip6[40:2] == {d} and ip6[42:2] >= {lo} \
                     and ip6[42:2] <= {hi} and ip6[48:2] == {m})))"
                ));
            }
        }
        Protocol::Icmp => {
            // What identifies our echo requests, at `at` (the start of an ICMP header).
            let request = |p: &str, at: usize| match marks.echo {
                EchoMark::Ident(m) => format!("{p}[{}:2] == {m}", at + 4),
                EchoMark::Checksum { request, .. } => format!("{p}[{}:2] == {request}", at + 2),
                EchoMark::IdentSeq(m) => {
                    format!("{p}[{}:2] == {m} and {p}[{}:2] == {m}", at + 4, at + 6)
                }
            };
            // An echo reply: the same, but a constant checksum changes with the type.
            let reply = |p: &str, at: usize, v6: bool| match marks.echo {
                EchoMark::Checksum {
                    reply_v4, reply_v6, ..
                } => match if v6 { reply_v6 } else { reply_v4 } {
                    // 0x0000 and 0xffff are the same one's-complement number.
                    0 | 0xffff => format!("({p}[{0}:2] == 0 or {p}[{0}:2] == 65535)", at + 2),
                    c => format!("{p}[{}:2] == {c}", at + 2),
                },
                _ => request(p, at),
            };
            if v4 {
                clauses.push(format!(
                    "({errors4} and icmp[17] == 1 and {})",
                    request("icmp", 28)
                ));
                if marks.leaving {
                    clauses.push(format!("(icmp[0] == 8 and {})", request("icmp", 0)));
                }
                clauses.push(format!("(icmp[0] == 0 and {})", reply("icmp", 0, false)));
            }
            if v6 {
                clauses.push(format!(
                    "({errors6} and ip6[54] == 58 and {})",
                    request("ip6", 88)
                ));
                if marks.leaving {
                    clauses.push(format!(
                        "(ip6[6] == 58 and ip6[40] == 128 and {})",
                        request("ip6", 40)
                    ));
                }
                clauses.push(format!(
                    "(ip6[6] == 58 and ip6[40] == 129 and {})",
                    reply("ip6", 40, true)
                ));
            }
        }
    }
    clauses.join(" or ")
}

/// Flows in the fast lane at most: the lane's filter grows by a dozen instructions per flow,
/// and the kernel accepts 4096.
pub const LANE_FLOWS: usize = 64;

/// The fast lane's filter: every incoming packet of `flows` (at most [`LANE_FLOWS`] are used).
///
/// Why a lane: the flow capture samples the data a busy remote sends, which is cheap but can
/// take dozens of segments to give a flow that was already running when it was selected its
/// first incoming packet (`SND.UNA` for TCP, the remote's distance for UDP). The lane takes
/// the few flows the engine watches but cannot trace yet and passes all their incoming
/// packets, so they start at the next one; a flow leaves the lane when its trace starts.
///
/// Flows to the same remote endpoint share one clause with a list of local ports: libpcap's
/// optimizer, which runs on every update, takes ~40 ms for 64 separate clauses and ~2 ms for a
/// service's 64 flows to one server written this way.
pub fn lane_filter(flows: &[FlowKey]) -> String {
    // Remote endpoints in the order of their first flow, each with its local ports.
    let mut groups: Vec<((Protocol, SocketAddr), Vec<u16>)> = Vec::new();
    for k in flows.iter().take(LANE_FLOWS) {
        let remote = (k.protocol, k.remote);
        match groups.iter_mut().find(|(r, _)| *r == remote) {
            Some((_, ports)) => ports.push(k.local.port()),
            None => groups.push((remote, vec![k.local.port()])),
        }
    }
    let clauses: Vec<String> = groups
        .iter()
        .map(|((proto, remote), ports)| {
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            let ports = if ports.len() == 1 {
                ports[0].clone()
            } else {
                format!("({})", ports.join(" or "))
            };
            format!(
                "({} and src host {} and src port {} and dst port {ports})",
                proto.as_str(),
                remote.ip(),
                remote.port()
            )
        })
        .collect();
    if clauses.is_empty() {
        // Nothing: a test no packet passes.
        "ip and ip[0] == 0".to_string()
    } else {
        clauses.join(" or ")
    }
}

/// What the detector reads (see [`detection_filter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectionSources {
    /// DNS responses.
    pub dns: bool,
    /// TLS ClientHellos on TCP.
    pub tls: bool,
    /// QUIC Initials on UDP.
    pub quic: bool,
}

/// The detection capture's filter, or `None` if it has nothing to read.
pub fn detection_filter(
    f: &FlowFilter,
    local: &[IpAddr],
    what: DetectionSources,
) -> Option<String> {
    let mut clauses = Vec::new();
    if what.dns {
        // DNS over UDP and TCP, from any resolver (answers to this host).
        clauses.push("(udp src port 53 or tcp src port 53)".to_string());
    }
    let n = narrowing(f);
    for v6 in [false, true] {
        if !family_ok(f, local, v6) {
            continue;
        }
        let src = src_local(local, v6).unwrap_or_default();
        if what.tls && wants(f, Protocol::Tcp) {
            // A segment that starts a TLS handshake record (0x16 0x03), and outgoing segments
            // of at most one MTU that carry data: the rest of a ClientHello split over several.
            clauses.push(if v6 {
                format!(
                    "(ip6[6] == 6{n} and (ip6[(40 + ((ip6[52] & 0xf0) >> 2)):2] == 0x1603 or ({src} and ip6[4:2] <= {MTU_V6_PAYLOAD} \
                     and ip6[4:2] - ((ip6[52] & 0xf0) >> 2) != 0)))"
                )
            } else {
                format!(
                    "(ip and tcp{n} and (tcp[((tcp[12] & 0xf0) >> 2):2] == 0x1603 or ({src} and ip[2:2] <= {MTU_V4} \
                     and ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2) != 0)))"
                )
            });
        }
        if what.quic && wants(f, Protocol::Udp) {
            // A long header (RFC 9000 §17.2) in a datagram of at least 1200 bytes, the
            // minimum size of a client Initial (RFC 9000 §14.1).
            clauses.push(if v6 {
                format!("(ip6[6] == 17{n} and ip6[48] & 0xc0 == 0xc0 and ip6[44:2] >= 1208)")
            } else {
                format!("(ip and udp{n} and udp[8] & 0xc0 == 0xc0 and udp[4:2] >= 1208)")
            });
        }
    }
    (!clauses.is_empty()).then(|| clauses.join(" or "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    use svctr_wire::probe::{
        emit_tcp_v4, emit_tcp_v6, emit_udp_v4, emit_udp_v6, Ipv4Fields, Ipv6Fields, TcpFields,
        UdpFields,
    };

    const ME4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
    const THEM4: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 2);
    const ME6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x1801, 0, 0, 0, 2);
    const THEM6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x1901, 0, 0, 0, 2);

    fn local() -> Vec<IpAddr> {
        vec![IpAddr::V4(ME4), IpAddr::V6(ME6)]
    }

    /// `expr` compiled for raw IP packets (DLT_RAW), run by libpcap's own interpreter.
    struct Bpf(pcap::BpfProgram);

    impl Bpf {
        fn new(expr: &str) -> Self {
            let dead = pcap::Capture::dead(pcap::Linktype(12)).expect("dead capture");
            Self(
                dead.compile(expr, true)
                    .unwrap_or_else(|e| panic!("{e}: {expr}")),
            )
        }
    }

    fn passes(prog: &Bpf, pkt: &[u8]) -> bool {
        prog.0.filter(pkt)
    }

    fn tcp4(out: bool, seq: u32, flags: u8, payload: usize) -> Vec<u8> {
        let (src, dst, sp, dp) = if out {
            (ME4, THEM4, 40000, 443)
        } else {
            (THEM4, ME4, 443, 40000)
        };
        let mut b = Vec::new();
        emit_tcp_v4(
            &Ipv4Fields {
                src,
                dst,
                ttl: 60,
                tos: 0,
                dont_fragment: true,
                ident: 1,
            },
            &TcpFields {
                src_port: sp,
                dst_port: dp,
                seq,
                ack: 1,
                flags,
                window: 500,
            },
            &vec![0x17; payload],
            &mut b,
        );
        b
    }

    fn tcp6(out: bool, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let (src, dst, sp, dp) = if out {
            (ME6, THEM6, 40000, 443)
        } else {
            (THEM6, ME6, 443, 40000)
        };
        let mut b = Vec::new();
        emit_tcp_v6(
            &Ipv6Fields {
                src,
                dst,
                hop_limit: 60,
                traffic_class: 0,
                flow_label: 7,
            },
            &TcpFields {
                src_port: sp,
                dst_port: dp,
                seq,
                ack: 1,
                flags,
                window: 500,
            },
            payload,
            &mut b,
        );
        b
    }

    fn udp4(out: bool, payload: &[u8]) -> Vec<u8> {
        let (src, dst, sp, dp) = if out {
            (ME4, THEM4, 40000, 443)
        } else {
            (THEM4, ME4, 443, 40000)
        };
        let mut b = Vec::new();
        emit_udp_v4(
            &Ipv4Fields {
                src,
                dst,
                ttl: 60,
                tos: 0,
                dont_fragment: true,
                ident: 1,
            },
            &UdpFields {
                src_port: sp,
                dst_port: dp,
            },
            payload,
            &mut b,
        );
        b
    }

    fn udp6(out: bool, payload: &[u8]) -> Vec<u8> {
        let (src, dst, sp, dp) = if out {
            (ME6, THEM6, 40000, 443)
        } else {
            (THEM6, ME6, 443, 40000)
        };
        let mut b = Vec::new();
        emit_udp_v6(
            &Ipv6Fields {
                src,
                dst,
                hop_limit: 60,
                traffic_class: 0,
                flow_label: 7,
            },
            &UdpFields {
                src_port: sp,
                dst_port: dp,
            },
            payload,
            &mut b,
        );
        b
    }

    /// A flow probe with tag `tag` (IPv4: the identification; IPv6: the UDP checksum or the
    /// TCP sequence number), as the flow tracer writes it.
    fn tagged(mut p: Vec<u8>, tag: u16) -> Vec<u8> {
        if p[0] >> 4 == 4 {
            p[4..6].copy_from_slice(&tag.to_be_bytes());
        } else if p[6] == 17 {
            p[46..48].copy_from_slice(&tag.to_be_bytes());
        } else {
            p[44..48].copy_from_slice(&(0x1234_0000 | u32::from(tag)).to_be_bytes());
        }
        p
    }

    /// The probes a traceroute engine with `cfg` sends to `dst` (TTLs 1 to 3).
    fn traceroute_probes(cfg: &TracerouteConfig, dst: IpAddr) -> Vec<Vec<u8>> {
        use std::time::{Instant, SystemTime};
        let src = if dst.is_ipv4() {
            IpAddr::V4(ME4)
        } else {
            IpAddr::V6(ME6)
        };
        let cfg = TracerouteConfig {
            max_ttl: 3,
            max_in_flight: 0,
            ..cfg.clone()
        };
        let mut engine = svctr_core::Traceroute::new(cfg).unwrap();
        let now = svctr_core::Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        };
        engine.add_target(now.mono, dst, src).unwrap();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(tx) = engine.poll_transmit(now, &mut buf) {
            out.push(buf[..tx.len].to_vec());
        }
        assert_eq!(out.len(), 9);
        out
    }

    fn ones_sum(data: &[u8], mut s: u32) -> u16 {
        for c in data.chunks(2) {
            s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// The replies a probe can draw: a router's Time Exceeded quoting it, and the
    /// destination's answer (Port Unreachable, SYN-ACK, Echo Reply with its checksum computed
    /// as a real replier does).
    fn replies_to(probe: &[u8]) -> Vec<Vec<u8>> {
        let v6 = probe[0] >> 4 == 6;
        let h = if v6 { 40 } else { 20 };
        let (src, dst) = if v6 {
            (IpAddr::V6(THEM6), IpAddr::V6(ME6))
        } else {
            (IpAddr::V4(THEM4), IpAddr::V4(ME4))
        };
        let mut out = Vec::new();
        let mut quoted = probe.to_vec();
        quoted[if v6 { 7 } else { 8 }] = 1;
        if v6 {
            out.push(icmp6_error(3, &quoted));
            out.push(icmp6_error(1, &quoted));
        } else {
            out.push(icmp4_error(11, &quoted));
            out.push(icmp4_error(3, &quoted));
        }
        let proto = probe[if v6 { 6 } else { 9 }];
        if proto == 6 {
            let (sp, dp) = (&probe[h..h + 2], &probe[h + 2..h + 4]);
            let seq = u32::from_be_bytes(probe[h + 4..h + 8].try_into().unwrap());
            let tcp = TcpFields {
                src_port: u16::from_be_bytes([dp[0], dp[1]]),
                dst_port: u16::from_be_bytes([sp[0], sp[1]]),
                seq: 77,
                ack: seq.wrapping_add(1),
                flags: 0x12,
                window: 500,
            };
            let mut b = Vec::new();
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    let ip = Ipv4Fields {
                        src: s,
                        dst: d,
                        ttl: 60,
                        tos: 0,
                        dont_fragment: true,
                        ident: 3,
                    };
                    emit_tcp_v4(&ip, &tcp, &[], &mut b);
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    let ip = Ipv6Fields {
                        src: s,
                        dst: d,
                        hop_limit: 60,
                        traffic_class: 0,
                        flow_label: 0,
                    };
                    emit_tcp_v6(&ip, &tcp, &[], &mut b);
                }
                _ => unreachable!(),
            }
            out.push(b);
        }
        if proto == 1 || proto == 58 {
            let mut icmp = probe[h..].to_vec();
            icmp[0] = if v6 { 129 } else { 0 };
            icmp[2..4].copy_from_slice(&[0, 0]);
            let pseudo = if v6 {
                let mut p = Vec::new();
                p.extend_from_slice(&probe[8..40]);
                p.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
                p.extend_from_slice(&[0, 0, 0, 58]);
                u32::from(ones_sum(&p, 0))
            } else {
                0
            };
            let c = !ones_sum(&icmp, pseudo);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            let mut b = probe[..h].to_vec();
            if v6 {
                b[8..24].copy_from_slice(&probe[24..40]);
                b[24..40].copy_from_slice(&probe[8..24]);
            } else {
                b[12..16].copy_from_slice(&probe[16..20]);
                b[16..20].copy_from_slice(&probe[12..16]);
            }
            b.extend_from_slice(&icmp);
            out.push(b);
        }
        out
    }

    /// For every protocol x strategy x IP version: the filter of one process passes its own
    /// probes and every reply they draw, and none of another process's (another marker), even
    /// to the same destination with the same probe numbers.
    #[test]
    fn traceroute_capture_passes_only_its_own_process_packets() {
        for (dst, v4, v6) in [
            (IpAddr::V4(THEM4), true, false),
            (IpAddr::V6(THEM6), false, true),
        ] {
            for protocol in [Protocol::Udp, Protocol::Tcp, Protocol::Icmp] {
                for strategy in [Strategy::Classic, Strategy::Paris, Strategy::Dublin] {
                    let ours = TracerouteConfig {
                        protocol,
                        strategy,
                        sport: 40100,
                        marker: if protocol == Protocol::Icmp {
                            0x1234
                        } else {
                            40100
                        },
                        ..TracerouteConfig::default()
                    };
                    // The neighbour's marker differs only in its low bit: PIDs 2k and 2k+1
                    // once shared one.
                    let theirs = TracerouteConfig {
                        sport: if protocol == Protocol::Tcp && strategy == Strategy::Classic {
                            40100 + ours.tcp_ports()
                        } else {
                            40101
                        },
                        marker: if protocol == Protocol::Icmp {
                            0x1235
                        } else {
                            40101
                        },
                        ..ours.clone()
                    };
                    let theirs = TracerouteConfig {
                        marker: if protocol == Protocol::Icmp {
                            theirs.marker
                        } else {
                            theirs.sport
                        },
                        ..theirs
                    };
                    let expr = Bpf::new(&traceroute_filter(&ours, v4, v6));
                    let case = format!("{protocol:?} {strategy:?} {dst}");
                    for probe in traceroute_probes(&ours, dst) {
                        assert!(passes(&expr, &probe), "{case}: our probe");
                        for r in replies_to(&probe) {
                            assert!(passes(&expr, &r), "{case}: a reply to our probe {r:02x?}");
                        }
                    }
                    for probe in traceroute_probes(&theirs, dst) {
                        assert!(!passes(&expr, &probe), "{case}: their probe");
                        for r in replies_to(&probe) {
                            assert!(
                                !passes(&expr, &r),
                                "{case}: a reply to their probe {r:02x?}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The multipath capture, the same way: a process's probes (many flow identifiers: UDP
    /// destination ports, TCP source ports of its block, ICMP checksums) and their replies
    /// pass, another process's do not.
    #[test]
    fn multipath_capture_passes_only_its_own_process_packets() {
        for (dst, v4, v6) in [
            (IpAddr::V4(THEM4), true, false),
            (IpAddr::V6(THEM6), false, true),
        ] {
            for (protocol, keep_port) in [
                (Protocol::Udp, false),
                (Protocol::Udp, true),
                (Protocol::Tcp, false),
                (Protocol::Icmp, false),
            ] {
                let ours = MdaConfig {
                    protocol,
                    keep_port,
                    port: keep_port.then_some(9000),
                    sport: 40100,
                    source_ports: 8,
                    marker: if protocol == Protocol::Icmp {
                        0x1234
                    } else {
                        40100
                    },
                    ..MdaConfig::default()
                };
                let next = 40100 + ours.reserved_ports();
                let theirs = MdaConfig {
                    sport: next,
                    marker: if protocol == Protocol::Icmp {
                        0x1235
                    } else {
                        next
                    },
                    ..ours.clone()
                };
                let expr = Bpf::new(&multipath_filter(&ours, v4, v6));
                let case = format!("{protocol:?} {dst}");
                let (mine, other) = (multipath_probes(&ours, dst), multipath_probes(&theirs, dst));
                assert!(mine.len() >= 8, "{case}: {}", mine.len());
                for probe in mine {
                    assert!(passes(&expr, &probe), "{case}: our probe");
                    for r in replies_to(&probe) {
                        assert!(passes(&expr, &r), "{case}: a reply to our probe {r:02x?}");
                    }
                }
                for probe in other {
                    assert!(!passes(&expr, &probe), "{case}: their probe");
                    for r in replies_to(&probe) {
                        assert!(!passes(&expr, &r), "{case}: a reply to their probe");
                    }
                }
            }
        }
    }

    /// The first round of a multipath engine with `cfg` to `dst`.
    fn multipath_probes(cfg: &MdaConfig, dst: IpAddr) -> Vec<Vec<u8>> {
        use std::time::{Instant, SystemTime};
        let src = if dst.is_ipv4() {
            IpAddr::V4(ME4)
        } else {
            IpAddr::V6(ME6)
        };
        let mut engine = svctr_core::Mda::new(cfg.clone()).unwrap();
        let now = svctr_core::Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        };
        engine.add_target(now.mono, dst, src).unwrap();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(tx) = engine.poll_transmit(now, &mut buf) {
            out.push(buf[..tx.len].to_vec());
        }
        out
    }

    #[test]
    fn flow_capture_passes_only_errors_about_its_own_slot() {
        let f = FlowFilter::default();
        for slot in [0u8, 5, 15] {
            let expr = Bpf::new(&flow_filter(&f, &local(), slot));
            for other in 0..16u8 {
                for tag in [
                    u16::from(other),
                    0x1230 | u16::from(other),
                    0xfff0 | u16::from(other),
                ] {
                    let quotes = [
                        icmp4_error(11, &tagged(tcp4(true, 1, 0x10, 0), tag)),
                        icmp4_error(11, &tagged(udp4(true, &[]), tag)),
                        icmp6_error(3, &tagged(tcp6(true, 1, 0x10, &[]), tag)),
                        icmp6_error(3, &tagged(udp6(true, &[0, 0]), tag)),
                    ];
                    for q in quotes {
                        assert_eq!(
                            passes(&expr, &q),
                            other == slot,
                            "slot {slot}, tag {tag:#x}"
                        );
                    }
                }
            }
        }
    }

    /// A GSO super-packet as the sender's capture shows it: the IP length says 64000.
    fn gso4() -> Vec<u8> {
        let mut b = tcp4(true, 5000, 0x10, 1000);
        b[2..4].copy_from_slice(&64000u16.to_be_bytes());
        b
    }

    fn icmp4_error(kind: u8, quoted: &[u8]) -> Vec<u8> {
        let mut icmp = vec![kind, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted[..28]);
        let mut p = vec![
            0x45,
            0,
            0,
            (20 + icmp.len()) as u8,
            0,
            0,
            0,
            0,
            64,
            1,
            0,
            0,
            198,
            18,
            2,
            2,
        ];
        p.extend_from_slice(&ME4.octets());
        p.extend_from_slice(&icmp);
        p
    }

    fn icmp6_error(kind: u8, quoted: &[u8]) -> Vec<u8> {
        let mut icmp = vec![kind, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quoted);
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        p.extend_from_slice(&[58, 64]);
        p.extend_from_slice(&Ipv6Addr::new(0x2001, 2, 0, 0x1802, 0, 0, 0, 2).octets());
        p.extend_from_slice(&ME6.octets());
        p.extend_from_slice(&icmp);
        p
    }

    #[test]
    fn flow_capture_takes_state_and_leaves_bulk_data() {
        let f = FlowFilter::default();
        let expr = Bpf::new(&flow_filter(&f, &local(), 1));
        // TCP, IPv4: control, pure ACKs both ways, small outgoing data, ICMP errors: taken.
        assert!(passes(&expr, &tcp4(true, 1, 0x02, 0)), "SYN");
        assert!(passes(&expr, &tcp4(false, 9, 0x11, 0)), "FIN");
        assert!(passes(&expr, &tcp4(false, 9, 0x04, 0)), "RST");
        assert!(passes(&expr, &tcp4(true, 9, 0x10, 0)), "pure ACK out");
        assert!(passes(&expr, &tcp4(false, 9, 0x10, 0)), "pure ACK in");
        assert!(passes(&expr, &tcp4(true, 70_000, 0x18, 300)), "a request");
        assert!(
            passes(&expr, &tcp4(false, 0x9e37_79b9, 0x18, 200)),
            "an answer"
        );
        assert!(
            passes(&expr, &icmp4_error(11, &tcp4(true, 1, 0x10, 0))),
            "time exceeded about TCP"
        );
        assert!(
            passes(&expr, &icmp4_error(3, &udp4(true, &[]))),
            "unreachable about UDP"
        );
        // Bulk: incoming data segments outside the sample, GSO uploads: left in the kernel.
        assert!(
            !passes(&expr, &tcp4(false, 0x9e37_79b9, 0x10, 1448)),
            "download data"
        );
        assert!(
            passes(&expr, &tcp4(false, 61 * 1_000_003, 0x10, 1448)),
            "a sampled one"
        );
        // Every regular stride is sampled at least once in 67 segments, whatever the start; about
        // 3 % in all.
        for stride in [1448u32, 1000, 2896, 16_384, 65_536, 64_000, 4096, 100_000] {
            for start in [0x1234_5677u32, 0xdead_beef, 0x8765_4321, 0x7777_7777, 1] {
                let seqs: Vec<bool> = (0..1340u32)
                    .map(|i| {
                        passes(
                            &expr,
                            &tcp4(false, start.wrapping_add(i * stride), 0x10, 1448),
                        )
                    })
                    .collect();
                let hits = seqs.iter().filter(|b| **b).count();
                assert!(
                    (20..=60).contains(&hits),
                    "stride {stride} start {start:#x}: {hits} of 1340"
                );
                assert!(
                    seqs.windows(67).all(|w| w.iter().any(|b| *b)),
                    "stride {stride} start {start:#x}: a gap of 67"
                );
            }
        }
        assert!(!passes(&expr, &gso4()), "GSO upload");
        // IPv6 alike.
        assert!(passes(&expr, &tcp6(true, 1, 0x02, &[])));
        assert!(passes(&expr, &tcp6(false, 9, 0x10, &[])));
        assert!(passes(&expr, &tcp6(true, 70_000, 0x18, &[1; 300])));
        assert!(
            passes(&expr, &tcp6(false, 0x9e37_79b9, 0x18, &[1; 300])),
            "an answer"
        );
        assert!(!passes(&expr, &tcp6(false, 0x9e37_79b9, 0x10, &[1; 1400])));
        let hits = (0..1340u32)
            .filter(|i| {
                passes(
                    &expr,
                    &tcp6(
                        false,
                        0x8765_4321u32.wrapping_add(i * 16_384),
                        0x10,
                        &[1; 1400],
                    ),
                )
            })
            .count();
        assert!((20..=60).contains(&hits), "IPv6 stride 16384: {hits}");
        assert!(passes(&expr, &icmp6_error(3, &tcp6(true, 1, 0x10, &[]))));
        assert!(passes(
            &expr,
            &icmp6_error(1, &tagged(udp6(true, &[0, 0]), 1))
        ));
        // UDP: outgoing, small incoming, QUIC long headers; big incoming mostly not.
        assert!(passes(&expr, &udp4(true, &[0; 1200])));
        assert!(passes(&expr, &udp4(false, &[0; 100])));
        assert!(passes(&expr, &udp6(false, &[0xc3; 1250])), "long header");
        let bulk: Vec<bool> = (0..64u8)
            .map(|i| passes(&expr, &udp6(false, &[0x40 | (i & 0x3f); 1300])))
            .collect();
        let taken = bulk.iter().filter(|b| **b).count();
        assert!(
            taken < 8,
            "short-header bulk datagrams are sampled: {taken} of 64"
        );
        // Not ICMP errors about other protocols, not echo.
        let mut echo = icmp4_error(8, &tcp4(true, 1, 0x10, 0));
        echo[20] = 8;
        assert!(!passes(&expr, &echo));
    }

    #[test]
    fn flow_capture_narrows_to_the_given_remote() {
        let f = FlowFilter {
            protocol: Some(Protocol::Tcp),
            remote_ip: Some(IpAddr::V4(THEM4)),
            remote_port: Some(443),
            local_port: None,
        };
        let text = flow_filter(&f, &local(), 1);
        assert!(
            !text.contains("ip6"),
            "an IPv4 remote needs no IPv6 clauses: {text}"
        );
        let expr = Bpf::new(&text);
        assert!(passes(&expr, &tcp4(true, 9, 0x10, 0)));
        assert!(!passes(&expr, &udp4(true, &[1])), "UDP is not selected");
        assert!(passes(&expr, &icmp4_error(11, &tcp4(true, 1, 0x10, 0))));
        assert!(!passes(&expr, &icmp4_error(11, &udp4(true, &[]))));
        let f6 = FlowFilter {
            protocol: Some(Protocol::Udp),
            remote_ip: Some(IpAddr::V6(THEM6)),
            remote_port: Some(443),
            local_port: None,
        };
        let expr = Bpf::new(&flow_filter(&f6, &local(), 1));
        assert!(passes(&expr, &udp6(true, &[1])));
        assert!(passes(
            &expr,
            &icmp6_error(3, &tagged(udp6(true, &[0, 0]), 1))
        ));
        let mut other = tagged(udp6(true, &[0, 0]), 1);
        other[39] = 9; // another destination
        assert!(!passes(&expr, &icmp6_error(3, &other)));
    }

    #[test]
    fn the_lane_takes_the_incoming_packets_of_its_flows_only() {
        let k4 = FlowKey {
            protocol: Protocol::Tcp,
            local: "198.18.1.2:40000".parse().unwrap(),
            remote: "198.19.1.2:443".parse().unwrap(),
        };
        let k6 = FlowKey {
            protocol: Protocol::Udp,
            local: "[2001:2:0:1801::2]:40000".parse().unwrap(),
            remote: "[2001:2:0:1901::2]:443".parse().unwrap(),
        };
        let lane = Bpf::new(&lane_filter(&[k4, k6]));
        assert!(
            passes(&lane, &tcp4(false, 0x9e37_79b9, 0x10, 1448)),
            "incoming bulk data of a lane flow"
        );
        assert!(!passes(&lane, &tcp4(true, 1, 0x10, 0)), "outgoing");
        assert!(passes(&lane, &udp6(false, &[0x40; 1300])));
        assert!(!passes(&lane, &udp4(false, &[0x40; 1300])), "another flow");
        let empty = Bpf::new(&lane_filter(&[]));
        assert!(!passes(&empty, &tcp4(false, 1, 0x10, 1448)));
        let many: Vec<FlowKey> = (0..200u16)
            .map(|i| FlowKey {
                local: SocketAddr::new(k4.local.ip(), 10_000 + i),
                ..k4
            })
            .collect();
        let big = Bpf::new(&lane_filter(&many)); // compiles: at most LANE_FLOWS flows
        assert!(!passes(&big, &tcp4(false, 1, 0x10, 1448)));
        // Flows to one server share a clause; each still passes, the next one does not.
        let mut first = tcp4(false, 1, 0x10, 1448);
        first[22..24].copy_from_slice(&10_000u16.to_be_bytes());
        assert!(passes(&big, &first));
        let mut last = first.clone();
        last[22..24].copy_from_slice(&(10_000 + LANE_FLOWS as u16 - 1).to_be_bytes());
        assert!(passes(&big, &last));
        last[22..24].copy_from_slice(&(10_000 + LANE_FLOWS as u16).to_be_bytes());
        assert!(!passes(&big, &last), "beyond the lane's flows");
        assert_eq!(lane_filter(&many).matches("src host").count(), 1);
        // Separate servers: a clause each, every flow passes.
        let spread: Vec<FlowKey> = (0..LANE_FLOWS as u8)
            .map(|i| FlowKey {
                remote: SocketAddr::new(
                    IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 128, i + 1)),
                    443,
                ),
                ..k4
            })
            .collect();
        let wide = Bpf::new(&lane_filter(&spread));
        let mut pkt = tcp4(false, 1, 0x10, 1448);
        pkt[12..16].copy_from_slice(&[198, 19, 128, LANE_FLOWS as u8]);
        assert!(passes(&wide, &pkt));
    }

    #[test]
    fn detection_capture_takes_dns_hellos_and_initials_only() {
        let all = DetectionSources {
            dns: true,
            tls: true,
            quic: true,
        };
        let expr = Bpf::new(
            &detection_filter(&FlowFilter::default(), &local(), all).expect("something to read"),
        );
        let mut dns = udp4(false, &[0; 100]);
        dns[20..22].copy_from_slice(&53u16.to_be_bytes());
        assert!(passes(&expr, &dns), "DNS response");
        let mut hello = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
        hello.resize(517, 0);
        let mut seg = tcp4(true, 1, 0x18, 0);
        seg.extend_from_slice(&hello);
        let total = seg.len() as u16;
        seg[2..4].copy_from_slice(&total.to_be_bytes());
        assert!(passes(&expr, &seg), "ClientHello");
        assert!(
            passes(&expr, &tcp6(false, 1, 0x18, &hello)),
            "incoming ClientHello (we serve)"
        );
        assert!(
            passes(&expr, &tcp4(true, 600, 0x10, 900)),
            "the rest of a split ClientHello"
        );
        assert!(
            !passes(&expr, &tcp4(false, 70_000, 0x10, 1448)),
            "incoming data"
        );
        assert!(!passes(&expr, &tcp4(true, 1, 0x10, 0)), "pure ACK");
        assert!(!passes(&expr, &gso4()), "GSO upload");
        assert!(passes(&expr, &udp4(true, &[0xc0; 1250])), "QUIC Initial");
        assert!(
            passes(&expr, &udp6(true, &[0xc0; 1250])),
            "QUIC Initial over IPv6"
        );
        assert!(
            !passes(&expr, &udp6(true, &[0xc0; 300])),
            "too small for a client Initial"
        );
        assert!(!passes(&expr, &udp4(false, &[0x40; 1250])), "short header");
        let none = DetectionSources {
            dns: false,
            tls: false,
            quic: false,
        };
        assert_eq!(
            detection_filter(&FlowFilter::default(), &local(), none),
            None
        );
        let dns_only = DetectionSources {
            dns: true,
            tls: false,
            quic: false,
        };
        let expr = Bpf::new(&detection_filter(&FlowFilter::default(), &local(), dns_only).unwrap());
        assert!(!passes(&expr, &seg));
    }

    /// A reverse-traceroute request from THEM (the client) to ME (the server).
    fn revtr_request(v6: bool, id: u16, proto: u8, code: u8) -> Vec<u8> {
        let req = svctr_wire::revtr::Request {
            ident: id,
            seq: 0,
            ttl: 3,
            protocol: proto,
            flow: 5353,
            indirect: None,
            flow_probe: None,
            padding: 0,
        };
        revtr_request_of(v6, &req, code)
    }

    fn revtr_request_of(v6: bool, req: &svctr_wire::revtr::Request, code: u8) -> Vec<u8> {
        use svctr_wire::probe::{emit_icmp_message, IpFields};
        let mut icmp = Vec::new();
        let ip = if v6 {
            req.emit_v6(&THEM6, &ME6, &mut icmp);
            IpFields::V6(Ipv6Fields {
                src: THEM6,
                dst: ME6,
                hop_limit: 64,
                traffic_class: 0,
                flow_label: 0,
            })
        } else {
            req.emit_v4(&mut icmp);
            IpFields::V4(Ipv4Fields {
                src: THEM4,
                dst: ME4,
                ttl: 64,
                tos: 0,
                dont_fragment: false,
                ident: 1,
            })
        };
        icmp[1] = code;
        let mut out = Vec::new();
        emit_icmp_message(&ip, &icmp, &mut out);
        out
    }

    /// The server's capture passes requests, its probes of every protocol and every answer
    /// they draw, and nothing of ordinary pings, traceroutes or traffic; the client's passes
    /// the responses to its block of identifiers only.
    #[test]
    fn reverse_traceroute_captures() {
        use svctr_core::reverse::{ReverseServer, ServerConfig};
        use svctr_core::Now;
        let server = Bpf::new(&reverse_server_filter(true, true));
        let now = Now {
            mono: std::time::Instant::now(),
            wall: std::time::SystemTime::now(),
        };
        for v6 in [false, true] {
            let icmp = if v6 { 58 } else { 1 };
            for proto in [17u8, 6, icmp] {
                let mut srv = ReverseServer::new(ServerConfig::default());
                let req = revtr_request(v6, 0x4321, proto, 1);
                assert!(passes(&server, &req), "request {proto} v6={v6}");
                srv.handle_packet(now.mono, now.wall, &req);
                let mut probe = Vec::new();
                let _tx = srv.poll_transmit(now, &mut probe).expect("a probe");
                assert!(passes(&server, &probe), "probe {proto} v6={v6}");
                for (i, answer) in replies_to(&probe).iter().enumerate() {
                    assert!(passes(&server, answer), "answer {i} to {proto} v6={v6}");
                }
                // A response goes out: the server does not need to see it.
                let ping = revtr_request(v6, 0x4321, proto, 0);
                assert!(!passes(&server, &ping), "a plain ping {proto} v6={v6}");
            }
            // Flow-shaped probes (`flow --reverse`): their errors are taken.
            for proto in [17u8, 6] {
                let mut srv = ReverseServer::new(ServerConfig::default());
                let req = revtr_request_of(
                    v6,
                    &svctr_wire::revtr::Request {
                        ident: 0x4322,
                        ttl: 3,
                        protocol: proto,
                        flow: 50_000,
                        flow_probe: Some(svctr_wire::revtr::FlowProbe {
                            server_port: 8080,
                            client_port: 50_000,
                            seq: 1000,
                            ack: 2000,
                            window: 300,
                        }),
                        ..Default::default()
                    },
                    1,
                );
                assert!(passes(&server, &req), "flow request {proto} v6={v6}");
                srv.handle_packet(now.mono, now.wall, &req);
                let mut probe = Vec::new();
                let _tx = srv.poll_transmit(now, &mut probe).expect("a flow probe");
                // The routers' errors (the first reply: a time exceeded).
                let errors = replies_to(&probe);
                assert!(
                    passes(&server, &errors[0]),
                    "error about a flow probe {proto} v6={v6}"
                );
            }
            // Another tool's probes and their errors are not taken.
            let (udp, tcp) = if v6 {
                (udp6(true, &[0; 4]), tcp6(true, 5, 0x02, &[]))
            } else {
                // (A SYN with options: a 40-byte TCP segment's error with a short quote could
                // be a flow-shaped probe's, and is taken; the engine drops it.)
                (udp4(true, &[0; 4]), tcp4(true, 5, 0x02, 4))
            };
            for other in [udp, tcp] {
                assert!(!passes(&server, &other), "v6={v6}");
                for r in replies_to(&other) {
                    assert!(!passes(&server, &r), "v6={v6}: a reply to another probe");
                }
            }
        }
        // The client: responses from its server with an identifier in its block.
        for (srv_addr, v6) in [(IpAddr::V4(THEM4), false), (IpAddr::V6(THEM6), true)] {
            let client = Bpf::new(&reverse_client_filter(srv_addr, 1024, 2047));
            for (id, want) in [
                (1024u16, true),
                (2047, true),
                (1500, true),
                (1023, false),
                (2048, false),
            ] {
                let mut resp = revtr_request(v6, id, 17, 1);
                // Turn the request around: an echo reply from THEM to ME.
                let h = if v6 { 40 } else { 20 };
                resp[h] = if v6 { 129 } else { 0 };
                if v6 {
                    resp[8..24].copy_from_slice(&THEM6.octets());
                    resp[24..40].copy_from_slice(&ME6.octets());
                } else {
                    resp[12..16].copy_from_slice(&THEM4.octets());
                    resp[16..20].copy_from_slice(&ME4.octets());
                }
                assert_eq!(passes(&client, &resp), want, "id {id} v6={v6}");
                // The same from another host: never.
                if v6 {
                    resp[8..24].copy_from_slice(&ME6.octets());
                } else {
                    resp[12..16].copy_from_slice(&ME4.octets());
                }
                assert!(!passes(&client, &resp));
            }
        }
    }
}

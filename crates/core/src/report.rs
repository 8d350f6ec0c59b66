//! Text rendering of a trace, in the style of traceroute(8).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::classic::{Strategy, TracerouteResult};
use crate::flow::Protocol;
use crate::mda::{MdaResult, MdaStop};
use crate::path::{GraphHop, Link};
use crate::result::{Hop, InterfaceEntry, ProbeReply, StopReason, TraceResult};

/// traceroute's annotation for a Destination Unreachable code (ICMP: RFC 792, RFC 1812
/// §5.2.7.1; ICMPv6: RFC 4443 §3.1).
fn unreachable_mark(p: &ProbeReply) -> Option<String> {
    if p.addr.is_some_and(|a| a.is_ipv6()) {
        if p.icmp_type != Some(1) {
            return None;
        }
        return Some(match p.icmp_code? {
            0 => "!N".to_string(),
            1 | 5 | 6 => "!X".to_string(),
            3 => "!H".to_string(),
            4 => return None, // port unreachable: the destination answered
            c => format!("!<{c}>"),
        });
    }
    if p.icmp_type != Some(3) {
        return None;
    }
    Some(match p.icmp_code? {
        0 => "!N".to_string(),
        1 => "!H".to_string(),
        2 => "!P".to_string(),
        3 => return None, // port unreachable: the destination answered
        4 => "!F".to_string(),
        5 => "!S".to_string(),
        9 | 10 | 13 => "!X".to_string(),
        14 => "!V".to_string(),
        15 => "!C".to_string(),
        c => format!("!<{c}>"),
    })
}

/// Why an interrupted trace stopped, in words.
const INTERRUPTED: &str =
    "stopped before the trace was complete: Ctrl-C, SIGTERM, SIGHUP or a closed output";

fn stop_text(r: &TraceResult) -> String {
    let why = match r.stop_reason {
        StopReason::RemoteReached => "the remote answered".to_string(),
        StopReason::RemoteDistance => match r.remote_distance {
            Some(d) => format!(
                "probed every router: the remote is {} hops away by its packets' TTL",
                u16::from(d) + 1
            ),
            None => "probed every router before the remote".to_string(),
        },
        StopReason::StopAt => "reached a --stop-at address".to_string(),
        StopReason::MaxMissing => "too many silent hops in a row".to_string(),
        StopReason::MaxTtl => "reached the max TTL".to_string(),
        StopReason::Unreachable => "a router reported the remote unreachable".to_string(),
        StopReason::FlowEnded => "the flow ended (FIN or RST)".to_string(),
        StopReason::FlowTimeout => "the flow went idle".to_string(),
        StopReason::Interrupted => INTERRUPTED.to_string(),
        StopReason::NothingToProbe => {
            "nothing to probe: the remote is directly connected".to_string()
        }
    };
    format!("stop: {} ({why})", r.stop_reason.as_str())
}

/// One line per TTL: addresses, RTTs, `*` for silence, unreachable marks, MPLS labels.
fn render_hops(out: &mut String, hops: &[Hop]) {
    for hop in hops {
        render_hop_into(out, hop, true);
    }
}

/// One TTL as traceroute(8) prints it: addresses (or `name (address)`), RTTs, `*` for
/// silence, unreachable marks (`!H`, `!N`, ...); with `extensions`, the MPLS label stacks that
/// routers quoted (RFC 4950), a line each, as traceroute's `-e` shows ICMP extensions.
pub fn render_hop(hop: &Hop, extensions: bool) -> String {
    let mut out = String::new();
    render_hop_into(&mut out, hop, extensions);
    out
}

fn render_hop_into(out: &mut String, hop: &Hop, extensions: bool) {
    let _ = write!(out, "{:2} ", hop.ttl);
    let mut last_addr = None;
    let mut mpls = Vec::new();
    let mut interfaces: Vec<&InterfaceEntry> = Vec::new();
    let mut mtus: Vec<u32> = Vec::new();
    for p in &hop.probes {
        match (p.addr, p.rtt_ms) {
            (Some(a), rtt) => {
                if last_addr != Some(a) {
                    match &p.name {
                        // traceroute(8) style: name (address).
                        Some(n) => {
                            let _ = write!(out, " {n} ({a})");
                        }
                        None => {
                            let _ = write!(out, " {a}");
                        }
                    }
                    // traceroute(8) -A style: the AS after the address.
                    if let Some(asn) = p.asn {
                        let _ = write!(out, " [AS{asn}]");
                    }
                    last_addr = Some(a);
                }
                match rtt {
                    Some(ms) => {
                        let _ = write!(out, "  {ms:.3} ms");
                    }
                    None => out.push_str("  ? ms"),
                }
                if let Some(m) = unreachable_mark(p) {
                    let _ = write!(out, " {m}");
                }
                for e in &p.mpls {
                    if !mpls.contains(e) {
                        mpls.push(*e);
                    }
                }
                for i in &p.interfaces {
                    if !interfaces.contains(&i) {
                        interfaces.push(i);
                    }
                }
                if let Some(m) = p.mtu.filter(|m| !mtus.contains(m)) {
                    mtus.push(m);
                }
            }
            (None, _) => out.push_str(" *"),
        }
    }
    // A probe that never left this host (the interface down, no route) is not a silent
    // router: say why, once per distinct error.
    let mut errors: Vec<&str> = Vec::new();
    for e in hop.probes.iter().filter_map(|p| p.error.as_deref()) {
        if !errors.contains(&e) {
            errors.push(e);
        }
    }
    if !errors.is_empty() {
        let _ = write!(out, "  (not sent: {})", errors.join("; "));
    }
    out.push('\n');
    if !extensions {
        return;
    }
    for e in &mpls {
        let _ = writeln!(
            out,
            "     [MPLS: Lbl {}, TC {}, S {}, TTL {}]",
            e.label,
            e.tc,
            u8::from(e.s),
            e.ttl
        );
    }
    for i in interfaces {
        let _ = writeln!(out, "     [{}]", interface_text(i));
    }
    for m in mtus {
        let _ = writeln!(out, "     [path MTU {m}]");
    }
}

/// An RFC 5837 interface as a line of text: `IF incoming: eth1, 203.0.113.1, ifIndex 3,
/// MTU 1500`. The name comes from the network: control characters are replaced.
fn interface_text(i: &InterfaceEntry) -> String {
    let mut parts = Vec::new();
    if let Some(n) = &i.name {
        parts.push(
            n.chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect::<String>(),
        );
    }
    if let Some(a) = i.addr {
        parts.push(a.to_string());
    }
    if let Some(x) = i.if_index {
        parts.push(format!("ifIndex {x}"));
    }
    if let Some(m) = i.mtu {
        parts.push(format!("MTU {m}"));
    }
    format!("IF {}: {}", i.role, parts.join(", "))
}

/// What a classic/Paris/Dublin trace's text starts with, printed before its first hop:
/// `traceroute to NAME (ADDRESS) port P, udp paris from SOURCE, 30 hops max`. `name` is the
/// target as given when it was a host name; the port is absent for ICMP, the hop count when
/// not known.
#[allow(clippy::too_many_arguments)]
pub fn traceroute_header(
    destination: IpAddr,
    name: Option<&str>,
    port: Option<u16>,
    protocol: Protocol,
    strategy: Strategy,
    source: IpAddr,
    max_ttl: Option<u8>,
) -> String {
    let target = match name {
        Some(n) => format!("{n} ({destination})"),
        None => destination.to_string(),
    };
    let port = port.map(|p| format!(" port {p}")).unwrap_or_default();
    let hops = max_ttl
        .map(|m| format!(", {m} hops max"))
        .unwrap_or_default();
    format!(
        "traceroute to {target}{port}, {} {} from {source}{hops}",
        protocol.as_str(),
        strategy.as_str()
    )
}

/// The last line of a classic/Paris/Dublin trace's text: why it stopped and how many probes
/// it took.
pub fn traceroute_stop_line(r: &TracerouteResult) -> String {
    let why = match r.stop_reason {
        StopReason::RemoteReached => "the destination answered",
        StopReason::MaxMissing => "too many silent hops in a row",
        StopReason::MaxTtl => "reached the max TTL",
        StopReason::Unreachable => "a router reported the destination unreachable",
        StopReason::Interrupted => INTERRUPTED,
        StopReason::NothingToProbe => "nothing to probe",
        _ => "",
    };
    format!(
        "stop: {} ({why}); {} probes sent, {} answered",
        r.stop_reason.as_str(),
        r.probes_sent,
        r.replies
    )
}

/// Renders a classic/Paris/Dublin traceroute as text, like traceroute(8): the header, a line
/// per TTL (with MPLS extensions), the stop line.
pub fn render_traceroute_text(r: &TracerouteResult) -> String {
    let mut out = traceroute_header(
        r.destination,
        None,
        r.port,
        r.protocol,
        r.strategy,
        r.source,
        None,
    );
    out.push('\n');
    render_hops(&mut out, &r.hops);
    out.push_str(&traceroute_stop_line(r));
    out.push('\n');
    out
}

/// Renders a trace as text: a header line, one line per TTL (addresses, RTTs, `*` for
/// silence, unreachable marks, MPLS labels) and the stop reason.
pub fn render_text(r: &TraceResult) -> String {
    let mut out = String::new();
    let service = match (&r.flow.service, &r.flow.name, r.flow.matched_by) {
        (Some(s), Some(n), Some(m)) => format!(", service {s} ({n} by {})", m.as_str()),
        (Some(s), None, Some(m)) => format!(", service {s} (by {})", m.as_str()),
        (Some(s), _, None) => format!(", service {s}"),
        _ => String::new(),
    };
    let syn = if r.syn_copies {
        ", handshake not answered (probes: copies of its SYN)"
    } else {
        ""
    };
    let label = r
        .flow
        .flow_label
        .map(|l| format!(", flow label 0x{l:05x}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "service-traceroute {} {} -> {}{service}{label}{syn}, {} algorithm, {} probes sent",
        r.flow.protocol.as_str(),
        SocketAddr::new(r.flow.local.ip, r.flow.local.port),
        SocketAddr::new(r.flow.remote.ip, r.flow.remote.port),
        r.algorithm.as_str(),
        r.probes_sent
    );
    render_hops(&mut out, &r.hops);
    if r.stop_reason == StopReason::RemoteDistance {
        if let Some(d) = r.remote_distance {
            let _ = writeln!(
                out,
                "{:2}  {}  (the remote, not probed)",
                u16::from(d) + 1,
                r.flow.remote.ip
            );
        }
    }
    let _ = writeln!(out, "{}", stop_text(r));
    out
}

/// The first line of a multipath discovery's text.
pub fn multipath_header(
    destination: IpAddr,
    name: Option<&str>,
    protocol: Protocol,
    port: Option<u16>,
    source: IpAddr,
    max_ttl: u8,
    confidence: f64,
) -> String {
    let target = match name {
        Some(n) => format!("{n} ({destination})"),
        None => destination.to_string(),
    };
    let port = match (protocol, port) {
        (Protocol::Udp, Some(p)) => format!(" port {p}+"),
        (_, Some(p)) => format!(" port {p}"),
        (_, None) => String::new(),
    };
    format!(
        "multipath to {target}, {}{port} from {source}, {max_ttl} hops max, confidence {confidence}",
        protocol.as_str()
    )
}

/// The median RTT of `probes`' answers, in ms.
fn median_rtt(probes: &[ProbeReply]) -> Option<f64> {
    let mut rtts: Vec<f64> = probes.iter().filter_map(|p| p.rtt_ms).collect();
    if rtts.is_empty() {
        return None;
    }
    rtts.sort_by(f64::total_cmp);
    Some(rtts[rtts.len() / 2])
}

/// A multipath TTL: a line per node (name and address, median RTT, probes answered, the
/// nodes of the TTL before that link to it), `*` with the silent probes.
pub fn render_multipath_hop(hop: &GraphHop, links: &[Link]) -> String {
    let mut out = String::new();
    for (i, n) in hop.nodes.iter().enumerate() {
        let lead = if i == 0 {
            format!("{:2}  ", hop.ttl)
        } else {
            "    ".to_string()
        };
        let k = n.probes.len();
        let probes = format!("{k} probe{}", if k == 1 { "" } else { "s" });
        match n.addr {
            Some(a) => {
                let who = match n.probes.iter().find_map(|p| p.name.as_deref()) {
                    Some(name) => format!("{name} ({a})"),
                    None => a.to_string(),
                };
                let rtt = median_rtt(&n.probes)
                    .map(|r| format!("  {r:.3} ms"))
                    .unwrap_or_default();
                let mark = n
                    .probes
                    .iter()
                    .find_map(unreachable_mark)
                    .map(|m| format!(" {m}"))
                    .unwrap_or_default();
                let from: Vec<String> = links
                    .iter()
                    .filter(|l| l.to == a && l.ttl + 1 == hop.ttl)
                    .map(|l| l.from.to_string())
                    .collect();
                let from = if from.is_empty() {
                    String::new()
                } else {
                    format!(", from {}", from.join(", "))
                };
                let _ = writeln!(out, "{lead}{who}{mark}{rtt}  ({probes}{from})");
            }
            None => {
                let _ = writeln!(out, "{lead}*  ({probes})");
            }
        }
    }
    out
}

/// The end of a multipath discovery's text: its diamonds, the nodes that balance per
/// packet, and the stop line.
pub fn multipath_footer(r: &MdaResult) -> String {
    let mut out = String::new();
    if !r.diamonds.is_empty() {
        out.push_str("diamonds:\n");
        for d in &r.diamonds {
            let join = match d.convergence {
                Some(c) => {
                    let ttls: Vec<String> = d.convergence_ttls.iter().map(u8::to_string).collect();
                    format!("joins at {c} (TTL {})", ttls.join(", "))
                }
                None => "does not join again".to_string(),
            };
            let _ = writeln!(
                out,
                "  {} (TTL {}) splits {} ways, {join}: width {}, length {}",
                d.divergence, d.divergence_ttl, d.successors, d.width, d.length
            );
        }
    }
    for p in &r.per_packet {
        let _ = writeln!(
            out,
            "per-packet load balancing at {} (TTL {}): flows mean nothing past it",
            p.addr, p.ttl
        );
    }
    let why = multipath_stop_text(r);
    let paths = r.graph.node_count();
    let _ = writeln!(
        out,
        "stop: {} ({why}); {} probes sent, {} answered, {} flows, {paths} addresses, {} links",
        r.stop_reason.as_str(),
        r.probes_sent,
        r.replies,
        r.flows,
        r.graph.links.len()
    );
    out
}

/// Why a multipath discovery stopped, in a sentence.
pub fn multipath_stop_text(r: &MdaResult) -> String {
    match r.stop_reason {
        MdaStop::Completed => format!(
            "every path reached its end; a branch was missed with probability at most {:.2}",
            1.0 - r.confidence
        ),
        MdaStop::MaxMissing => "too many silent hops in a row".to_string(),
        MdaStop::MaxTtl => "reached the max TTL".to_string(),
        MdaStop::MaxProbes => "sent --max-probes probes; paths may be missing".to_string(),
        MdaStop::PerPacketBalancing => "a router balances per packet".to_string(),
        MdaStop::FlowsExhausted => "no flow identifier left (TCP: the source ports)".to_string(),
        MdaStop::Interrupted => INTERRUPTED.to_string(),
        MdaStop::NoServer => {
            "no answer to the presence check (no reverse-traceroute server, or ICMP echo \
         requests of code 1 are filtered on the way)"
                .to_string()
        }
        MdaStop::NotSupported => {
            "the server answered as a plain ping: it does not run reverse traceroute".to_string()
        }
        MdaStop::ServerError => format!(
            "the server refused the request: {}",
            crate::reverse::state_text(r.server_state.unwrap_or_default())
        ),
    }
}

/// A multipath discovery's whole text: header, TTLs, diamonds, stop line.
pub fn render_multipath_text(r: &MdaResult, name: Option<&str>, port: Option<u16>) -> String {
    let max_ttl = r.graph.hops.last().map_or(0, |h| h.ttl);
    let mut out = multipath_header(
        r.destination,
        name,
        r.protocol,
        port,
        r.source,
        max_ttl,
        r.confidence,
    );
    out.push('\n');
    for hop in &r.graph.hops {
        out.push_str(&render_multipath_hop(hop, &r.graph.links));
    }
    out.push_str(&multipath_footer(r));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{compare, render_comparison};
    use crate::config::Algorithm;
    use crate::result::{Endpoint, FlowInfo, InterfaceEntry, MplsEntry};

    fn reply(addr: &str, ttl: u8) -> ProbeReply {
        ProbeReply {
            addr: Some(addr.parse().unwrap()),
            name: None,
            asn: None,
            rtt_ms: Some(1.5),
            icmp_type: Some(3),
            icmp_code: Some(0),
            reply_ttl: Some(64 - ttl),
            quoted_ttl: Some(1),
            tcp_flags: None,
            ip_id: None,
            tag: 16,
            mpls: vec![MplsEntry {
                label: 300,
                tc: 0,
                s: true,
                ttl: 1,
            }],
            interfaces: Vec::new(),
            mtu: None,
            flow: None,
            src_port: None,
            dst_port: None,
            error: None,
        }
    }

    fn v6_trace(stop: StopReason) -> TraceResult {
        TraceResult {
            flow: FlowInfo {
                protocol: Protocol::Tcp,
                local: Endpoint {
                    ip: "2001:db8::2".parse().unwrap(),
                    port: 40000,
                },
                remote: Endpoint {
                    ip: "2001:db8:9::2".parse().unwrap(),
                    port: 443,
                },
                flow_label: Some(5),
                service: None,
                name: None,
                matched_by: None,
            },
            algorithm: Algorithm::Concurrent,
            start: "2026-12-04T00:00:00Z".into(),
            end: "2026-12-04T00:00:01Z".into(),
            stop_reason: stop,
            hops: vec![Hop {
                ttl: 1,
                probes: vec![reply("2001:db8:1::1", 1)],
            }],
            remote_distance: None,
            probes_sent: 1,
            replies: 1,
            syn_copies: false,
            reverse_flow: None,
        }
    }

    #[test]
    fn an_interrupted_trace_says_what_stopped_it_once() {
        let text = render_text(&v6_trace(StopReason::Interrupted));
        let stop = text.lines().last().unwrap();
        assert_eq!(
            stop,
            "stop: interrupted (stopped before the trace was complete: Ctrl-C, SIGTERM, SIGHUP or \
             a closed output)"
        );
        assert!(!text.contains("(interrupted)"));
    }

    #[test]
    fn ipv6_endpoints_are_bracketed_in_the_comparison_header() {
        let c = compare(v6_trace(StopReason::MaxTtl), Vec::new());
        let header = render_comparison(&c).lines().next().unwrap().to_string();
        assert_eq!(
            header,
            "tcp flow [2001:db8::2]:40000 -> [2001:db8:9::2]:443 vs 0 fresh Paris flow(s) to the \
             same port"
        );
    }

    #[test]
    fn extensions_are_shown_on_request() {
        let hop = &v6_trace(StopReason::MaxTtl).hops[0];
        let plain = render_hop(hop, false);
        assert_eq!(plain, " 1  2001:db8:1::1  1.500 ms\n");
        let ext = render_hop(hop, true);
        assert_eq!(
            ext,
            format!("{plain}     [MPLS: Lbl 300, TC 0, S 1, TTL 1]\n")
        );
    }

    #[test]
    fn interfaces_and_path_mtu_are_extensions() {
        let mut t = v6_trace(StopReason::MaxTtl);
        let p = &mut t.hops[0].probes[0];
        p.mpls.clear();
        p.mtu = Some(1400);
        p.interfaces = vec![
            InterfaceEntry {
                role: "incoming".into(),
                if_index: Some(3),
                addr: Some("2001:db8:1::1".parse().unwrap()),
                name: Some("eth1\u{1b}[2J".into()),
                mtu: Some(1500),
            },
            InterfaceEntry {
                role: "outgoing".into(),
                if_index: None,
                addr: None,
                name: Some("eth2".into()),
                mtu: None,
            },
        ];
        let hop = &t.hops[0];
        let plain = render_hop(hop, false);
        assert_eq!(plain, " 1  2001:db8:1::1  1.500 ms\n");
        assert_eq!(
            render_hop(hop, true),
            format!(
                "{plain}     [IF incoming: eth1?[2J, 2001:db8:1::1, ifIndex 3, MTU 1500]\n     \
                 [IF outgoing: eth2]\n     [path MTU 1400]\n"
            )
        );
        let json = serde_json::to_value(hop).unwrap();
        assert_eq!(
            json["probes"][0]["interfaces"],
            serde_json::json!([
                {"role": "incoming", "if_index": 3, "addr": "2001:db8:1::1",
                 "name": "eth1\u{1b}[2J", "mtu": 1500},
                {"role": "outgoing", "name": "eth2"}
            ])
        );
        assert_eq!(json["probes"][0]["mtu"], 1400);
    }

    #[test]
    fn ipv6_probes_have_no_ip_id_in_json() {
        let json = serde_json::to_string(&v6_trace(StopReason::MaxTtl)).unwrap();
        assert!(!json.contains("ip_id"), "{json}");
        assert!(json.contains("\"tag\":16"), "{json}");
    }
}

//! `--format replies`: one flat JSON line per probe, answered or not, the shape analytics
//! stores take (a row per probe as Diamond-Miner's per-reply tables, fields named after them:
//! `probe_*` for what was sent, `reply_*` for what came back). Each row carries the record
//! envelope of the contract (see the record module) and the trace it belongs to (`trace_id`,
//! `trace_start`, its stop reason, the flow's service), so that a store can rebuild each
//! trace's path and follow a service's paths over time without the trace records.
//!
//! `schema/clickhouse/replies.sql` is the ClickHouse table these lines load into
//! (`INSERT INTO replies FORMAT JSONEachRow`), with example queries beside it.

use std::net::IpAddr;

use serde::Serialize;
use svctr_core::reverse::{ForwardPath, ReverseResult};
use svctr_core::{
    Hop, MdaResult, PathGraph, ProbeReply, Protocol, Strategy, TraceResult, TracerouteResult,
};

/// One probe and its reply: a row.
#[derive(Serialize)]
pub(crate) struct Reply<'a> {
    /// Shared by the rows of one trace (a UUID version 7, as record ids).
    trace_id: &'a str,
    /// `flow-trace` (a live flow's) or `traceroute`.
    trace_type: &'static str,
    /// When the trace's first probe left (RFC 3339).
    trace_start: &'a str,
    /// Why the trace stopped (the trace record's `stop_reason`).
    trace_stop_reason: &'a str,
    /// The flow's service and the name that matched it (flow traces selected by service).
    service: Option<&'a str>,
    server_name: Option<&'a str>,
    probe_protocol: Protocol,
    probe_src_addr: IpAddr,
    probe_src_port: Option<u16>,
    probe_dst_addr: IpAddr,
    probe_dst_port: Option<u16>,
    probe_ttl: u8,
    /// The probe's place among the probes of its TTL (0, 1, ...).
    probe_index: usize,
    /// A multipath discovery's flow identifier (probes of one flow take one path through
    /// per-flow load balancers); a reverse trace's flow value; null otherwise.
    probe_flow: Option<u16>,
    /// What told the probe apart from the trace's others (the record's `tag`).
    probe_tag: u16,
    /// Why the probe could not be sent, if it could not.
    probe_error: Option<&'a str>,
    /// Who answered (null: nobody, and the other reply fields are null too).
    reply_src_addr: Option<IpAddr>,
    /// The AS announcing it (`--asn FILE`; null without a table or outside every range).
    reply_asn: Option<u32>,
    rtt_ms: Option<f64>,
    reply_icmp_type: Option<u8>,
    reply_icmp_code: Option<u8>,
    reply_ttl: Option<u8>,
    /// The probe's TTL as the router saw it, from the quoted packet.
    quoted_ttl: Option<u8>,
    reply_tcp_flags: Option<u8>,
    /// MPLS labels of an RFC 4950 extension, top of the stack first.
    reply_mpls_labels: Vec<u32>,
    /// The next-hop MTU of a Fragmentation Needed or Packet Too Big.
    reply_mtu: Option<u32>,
}

impl crate::record::Record for Reply<'_> {
    const TYPE: &'static str = "reply";
}

/// What the rows of one trace share.
struct Trace<'a> {
    id: String,
    kind: &'static str,
    start: &'a str,
    stop: String,
    service: Option<&'a str>,
    server_name: Option<&'a str>,
    protocol: Protocol,
    src: (IpAddr, Option<u16>),
    dst: (IpAddr, Option<u16>),
    /// Classic traceroute's ports move with the probe number (the tag).
    ports: Ports,
    /// A reverse trace's flow value (each probe of a multipath discovery has its own).
    flow: Option<u16>,
}

/// How a probe's ports follow from its number: fixed (Paris, Dublin, live flows), or classic
/// traceroute's (UDP: destination port base + n - 1; TCP: source port base + (n - 1) modulo
/// the count, see `svctr_core::TracerouteResult::source_port_count`).
#[derive(Clone, Copy)]
enum Ports {
    Fixed,
    ClassicUdp,
    ClassicTcp(u16),
}

impl Trace<'_> {
    /// The rows of the trace's probes, TTL by TTL in send order, as JSON lines.
    fn lines(&self, hops: &[Hop]) -> String {
        let mut out = String::new();
        for h in hops {
            for (i, p) in h.probes.iter().enumerate() {
                out.push_str(&crate::record::line(&self.row(h.ttl, i, p)));
            }
        }
        out
    }

    /// The rows of a path graph's probes (multipath, reverse): TTL by TTL, each TTL's nodes
    /// in order of first answer, the unanswered last. A multipath discovery's probes that
    /// only checked for per-packet balancing are not in its graph, so not in its rows.
    fn graph_lines(&self, graph: &PathGraph) -> String {
        let mut out = String::new();
        for h in &graph.hops {
            let probes = h.nodes.iter().flat_map(|n| &n.probes);
            for (i, p) in probes.enumerate() {
                out.push_str(&crate::record::line(&self.row(h.ttl, i, p)));
            }
        }
        out
    }

    fn row<'a>(&'a self, ttl: u8, index: usize, p: &'a ProbeReply) -> Reply<'a> {
        let step = p.tag.wrapping_sub(1);
        let (src_port, dst_port) = match self.ports {
            // A multipath probe's own ports, which vary with its flow.
            _ if p.src_port.is_some() || p.dst_port.is_some() => (p.src_port, p.dst_port),
            Ports::Fixed => (self.src.1, self.dst.1),
            Ports::ClassicUdp => (self.src.1, self.dst.1.map(|d| d.wrapping_add(step))),
            Ports::ClassicTcp(n) => (
                self.src.1.map(|s| s.wrapping_add(step % n.max(1))),
                self.dst.1,
            ),
        };
        Reply {
            trace_id: &self.id,
            trace_type: self.kind,
            trace_start: self.start,
            trace_stop_reason: &self.stop,
            service: self.service,
            server_name: self.server_name,
            probe_protocol: self.protocol,
            probe_src_addr: self.src.0,
            probe_src_port: src_port,
            probe_dst_addr: self.dst.0,
            probe_dst_port: dst_port,
            probe_ttl: ttl,
            probe_index: index,
            probe_flow: p.flow.or(self.flow),
            probe_tag: p.tag,
            probe_error: p.error.as_deref(),
            reply_src_addr: p.addr,
            reply_asn: p.asn,
            rtt_ms: p.rtt_ms,
            reply_icmp_type: p.icmp_type,
            reply_icmp_code: p.icmp_code,
            reply_ttl: p.reply_ttl,
            quoted_ttl: p.quoted_ttl,
            reply_tcp_flags: p.tcp_flags,
            reply_mpls_labels: p.mpls.iter().map(|m| m.label).collect(),
            reply_mtu: p.mtu,
        }
    }
}

fn trace_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The rows of a live flow's trace.
pub(crate) fn flow_lines(r: &TraceResult) -> String {
    let f = &r.flow;
    Trace {
        id: trace_id(),
        kind: "flow-trace",
        start: &r.start,
        stop: r.stop_reason.as_str().into(),
        service: f.service.as_deref(),
        server_name: f.name.as_deref(),
        protocol: f.protocol,
        src: (f.local.ip, Some(f.local.port)),
        dst: (f.remote.ip, Some(f.remote.port)),
        ports: Ports::Fixed,
        flow: None,
    }
    .lines(&r.hops)
}

/// The rows of a traceroute.
pub(crate) fn traceroute_lines(r: &TracerouteResult) -> String {
    Trace {
        id: trace_id(),
        kind: "traceroute",
        start: &r.start,
        stop: r.stop_reason.as_str().into(),
        service: None,
        server_name: None,
        protocol: r.protocol,
        src: (r.source, r.source_port),
        dst: (r.destination, r.port),
        ports: match (r.strategy, r.protocol) {
            (Strategy::Classic, Protocol::Udp) => Ports::ClassicUdp,
            (Strategy::Classic, Protocol::Tcp) => {
                Ports::ClassicTcp(r.source_port_count.unwrap_or(1))
            }
            _ => Ports::Fixed,
        },
        flow: None,
    }
    .lines(&r.hops)
}

/// What the rows of a path graph share (multipath, reverse, the way out of `reverse
/// --two-way`).
fn graph_trace<'a>(
    kind: &'static str,
    start: &'a str,
    stop: String,
    protocol: Protocol,
    src: (IpAddr, Option<u16>),
    dst: (IpAddr, Option<u16>),
    flow: Option<u16>,
) -> Trace<'a> {
    Trace {
        id: trace_id(),
        kind,
        start,
        stop,
        service: None,
        server_name: None,
        protocol,
        src,
        dst,
        ports: Ports::Fixed,
        flow,
    }
}

/// The rows of a multipath discovery (forward, or the way back with `direction` reverse):
/// each probe with its own flow and ports.
pub(crate) fn multipath_lines(r: &MdaResult) -> String {
    let kind = if r.direction.is_some() {
        "reverse-multipath"
    } else {
        "multipath"
    };
    graph_trace(
        kind,
        &r.start,
        r.stop_reason.as_str().into(),
        r.protocol,
        (r.source, None),
        (r.destination, None),
        None,
    )
    .graph_lines(&r.graph)
}

/// The rows of a reverse trace: probes from the server back to this host, at the server's
/// times.
pub(crate) fn reverse_lines(r: &ReverseResult) -> String {
    graph_trace(
        "reverse",
        &r.start,
        stop_name(&r.stop_reason),
        r.protocol,
        (r.source, None),
        (r.destination, None),
        Some(r.flow),
    )
    .graph_lines(&r.graph)
}

/// The rows of `reverse --two-way`'s way out (a traceroute toward the server).
pub(crate) fn forward_lines(r: &ForwardPath) -> String {
    graph_trace(
        "traceroute",
        &r.start,
        r.stop_reason.as_str().into(),
        r.protocol,
        (r.source, r.source_port),
        (r.destination, r.port),
        None,
    )
    .graph_lines(&r.graph)
}

/// A stop reason's name as its JSON says it: the string, or the key of an object
/// (`{"server-error": {"state": 3}}`: `server-error`).
fn stop_name<T: Serialize>(reason: &T) -> String {
    match serde_json::to_value(reason) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(o)) => o.keys().next().cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn traceroute(strategy: Strategy, protocol: Protocol) -> TracerouteResult {
        let reply = |addr: &str, tag: u16| ProbeReply {
            addr: Some(addr.parse().unwrap()),
            rtt_ms: Some(1.25),
            icmp_type: Some(11),
            icmp_code: Some(0),
            reply_ttl: Some(63),
            quoted_ttl: Some(1),
            tag,
            mpls: vec![svctr_core::MplsEntry {
                label: 16_001,
                tc: 0,
                s: true,
                ttl: 1,
            }],
            ..ProbeReply::default()
        };
        TracerouteResult {
            destination: "198.19.1.2".parse().unwrap(),
            port: Some(33434),
            source: "198.18.1.2".parse().unwrap(),
            source_port: Some(40000),
            source_port_count: (protocol == Protocol::Tcp).then_some(4),
            protocol,
            strategy,
            ip_version: 4,
            algorithm: svctr_core::Algorithm::Concurrent,
            start: "2026-12-05T15:26:34.980058Z".into(),
            end: "2026-12-05T15:26:35.5Z".into(),
            stop_reason: svctr_core::StopReason::RemoteReached,
            hops: vec![
                Hop {
                    ttl: 1,
                    probes: vec![
                        reply("198.18.1.1", 1),
                        ProbeReply {
                            tag: 2,
                            ..ProbeReply::default()
                        },
                    ],
                },
                Hop {
                    ttl: 2,
                    probes: vec![reply("198.18.2.2", 6)],
                },
            ],
            probes_sent: 3,
            replies: 2,
        }
    }

    fn rows(text: &str) -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn one_flat_row_per_probe_answered_or_not() {
        let rows = rows(&traceroute_lines(&traceroute(
            Strategy::Paris,
            Protocol::Udp,
        )));
        assert_eq!(rows.len(), 3);
        let r = &rows[0];
        assert_eq!(r["record_type"], "reply");
        assert_eq!(r["schema_version"], 1);
        assert_eq!(r["trace_type"], "traceroute");
        assert_eq!(r["trace_stop_reason"], "remote-reached");
        assert_eq!(r["probe_protocol"], "udp");
        assert_eq!(r["probe_src_addr"], "198.18.1.2");
        assert_eq!(r["probe_dst_port"], 33434);
        assert_eq!(r["probe_ttl"], 1);
        assert_eq!(r["reply_src_addr"], "198.18.1.1");
        assert_eq!(r["rtt_ms"], 1.25);
        assert_eq!(r["reply_mpls_labels"], serde_json::json!([16_001]));
        // Flat: no object or array of objects anywhere.
        for v in r.as_object().unwrap().values() {
            assert!(!v.is_object(), "{r}");
        }
        // The unanswered probe: a row of its own, every reply field null.
        let u = &rows[1];
        assert_eq!(u["probe_index"], 1);
        for k in ["reply_src_addr", "rtt_ms", "reply_icmp_type", "reply_ttl"] {
            assert!(u[k].is_null(), "{k}: {u}");
        }
        // One trace: one trace id, and every row its own record id; every row has the same
        // fields (a table's columns).
        assert!(rows.iter().all(|x| x["trace_id"] == r["trace_id"]));
        assert_ne!(rows[0]["record_id"], rows[1]["record_id"]);
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert!(rows.iter().all(|x| keys(x) == keys(r)));
        // Another trace, another id.
        let again = traceroute_lines(&traceroute(Strategy::Paris, Protocol::Udp));
        assert_ne!(self::rows(&again)[0]["trace_id"], r["trace_id"]);
    }

    #[test]
    fn classic_ports_follow_the_probe_number() {
        let udp = rows(&traceroute_lines(&traceroute(
            Strategy::Classic,
            Protocol::Udp,
        )));
        let dports: Vec<_> = udp.iter().map(|r| r["probe_dst_port"].clone()).collect();
        assert_eq!(dports, [33434, 33435, 33439]);
        assert!(udp.iter().all(|r| r["probe_src_port"] == 40000));
        let tcp = rows(&traceroute_lines(&traceroute(
            Strategy::Classic,
            Protocol::Tcp,
        )));
        // Probe 6 of 4 ports: 40000 + (5 mod 4).
        let sports: Vec<_> = tcp.iter().map(|r| r["probe_src_port"].clone()).collect();
        assert_eq!(sports, [40000, 40001, 40001]);
    }

    /// A multipath discovery's rows: each probe with its own flow and ports, the unanswered
    /// too, TTL by TTL.
    #[test]
    fn multipath_rows_carry_each_probes_flow_and_ports() {
        let r: MdaResult = serde_json::from_value(serde_json::json!({
            "destination": "198.19.1.2", "source": "198.18.1.2", "protocol": "udp",
            "ip_version": 4, "start": "2026-12-05T15:26:34.98Z", "end": "2026-12-05T15:26:35Z",
            "stop_reason": "completed", "confidence": 0.95,
            "hops": [{"ttl": 3, "nodes": [
                {"addr": "198.18.11.2", "probes": [
                    {"addr": "198.18.11.2", "rtt_ms": 0.5, "icmp_type": 11, "icmp_code": 0,
                     "tag": 7, "flow": 0, "src_port": 40000, "dst_port": 33434}]},
                {"addr": "198.18.12.2", "probes": [
                    {"addr": "198.18.12.2", "rtt_ms": 0.6, "icmp_type": 11, "icmp_code": 0,
                     "tag": 8, "flow": 1, "src_port": 40000, "dst_port": 33435}]},
                {"addr": null, "probes": [
                    {"addr": null, "rtt_ms": null, "icmp_type": null, "icmp_code": null,
                     "tag": 0, "flow": 2, "src_port": 40000, "dst_port": 33436}]}]}],
            "links": [], "diamonds": [], "flows": 3, "probes_sent": 3, "replies": 2
        }))
        .unwrap();
        let rows = rows(&multipath_lines(&r));
        assert_eq!(rows.len(), 3);
        let col = |k: &str| rows.iter().map(|r| r[k].clone()).collect::<Vec<_>>();
        assert_eq!(col("trace_type"), ["multipath"; 3]);
        assert_eq!(col("trace_stop_reason"), ["completed"; 3]);
        assert_eq!(col("probe_flow"), [0, 1, 2]);
        assert_eq!(col("probe_dst_port"), [33434, 33435, 33436]);
        assert_eq!(col("probe_index"), [0, 1, 2]);
        assert_eq!(col("reply_src_addr")[..2], ["198.18.11.2", "198.18.12.2"]);
        assert!(rows[2]["reply_src_addr"].is_null());
        assert!(rows.iter().all(|x| x["trace_id"] == rows[0]["trace_id"]));
        // The same discovery of the way back.
        let back = MdaResult {
            direction: Some("reverse".into()),
            ..r
        };
        assert!(self::rows(&multipath_lines(&back))
            .iter()
            .all(|x| x["trace_type"] == "reverse-multipath"));
    }

    /// A reverse trace's rows: from the server back to this host, its flow value on every
    /// row, and a stop reason that is an object in the JSON named by its key.
    #[test]
    fn reverse_rows_go_from_the_server() {
        let r: ReverseResult = serde_json::from_value(serde_json::json!({
            "direction": "reverse", "source": "198.19.1.2", "destination": "198.18.1.2",
            "protocol": "icmp", "flow": 7, "ip_version": 4,
            "start": "2026-12-05T15:26:34.98Z", "end": "2026-12-05T15:26:35Z",
            "stop_reason": {"server-error": {"state": 3}},
            "hops": [{"ttl": 1, "nodes": [{"addr": "198.19.1.1", "probes": [
                {"addr": "198.19.1.1", "rtt_ms": 0.2, "icmp_type": 11, "icmp_code": 0,
                 "tag": 1}]}]}],
            "links": [], "requests_sent": 2, "responses": 1
        }))
        .unwrap();
        let rows = rows(&reverse_lines(&r));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["trace_type"], "reverse");
        assert_eq!(rows[0]["trace_stop_reason"], "server-error");
        assert_eq!(rows[0]["probe_src_addr"], "198.19.1.2");
        assert_eq!(rows[0]["probe_dst_addr"], "198.18.1.2");
        assert_eq!(rows[0]["probe_flow"], 7);
        assert!(rows[0]["probe_src_port"].is_null());
    }
}

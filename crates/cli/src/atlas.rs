//! `trace --format atlas`: RIPE Atlas traceroute results, one JSON object per line, so that
//! what analyses Atlas data (its own library, ripe.atlas.sagan, and the tools built on it)
//! reads ours. The fields are Atlas's (<https://atlas.ripe.net/docs/apis/result-format/>,
//! traceroute): what Atlas knows and we do not (a measurement and probe id) is 0; `fw` is a
//! firmware version recent enough that readers take the modern layout (sagan reads `pf` for
//! versions below 4460); `timestamp` and `endtime` are integer Unix seconds; a probe nobody
//! answered is `{"x": "*"}`.

use std::net::IpAddr;

use serde_json::{json, Map, Value};
use svctr_core::{Hop, ProbeReply, Protocol, Strategy, TraceResult, TracerouteResult};

/// The firmware version the records claim: the modern result layout (>= 4460; 5020 is the
/// version that introduced the current traceroute fields).
const FIRMWARE: u32 = 5020;

/// One Atlas traceroute result as one JSON line.
pub(crate) fn traceroute_line(r: &TracerouteResult) -> String {
    let proto = match r.protocol {
        Protocol::Icmp => "ICMP",
        Protocol::Udp => "UDP",
        Protocol::Tcp => "TCP",
    };
    let v = json!({
        "fw": FIRMWARE,
        "lts": -1,
        "af": r.ip_version,
        "dst_addr": r.destination.to_string(),
        "dst_name": r.destination.to_string(),
        "src_addr": r.source.to_string(),
        "from": r.source.to_string(),
        "proto": proto,
        // Atlas's Paris traceroute varies its flow identifier per measurement (1-16); ours
        // keeps one flow per target: 1 for Paris and Dublin, 0 (no Paris) for classic.
        "paris_id": u8::from(r.strategy != Strategy::Classic),
        "msm_id": 0,
        "prb_id": 0,
        "msm_name": "Traceroute",
        "type": "traceroute",
        "timestamp": unix_seconds(&r.start),
        "endtime": unix_seconds(&r.end),
        "result": r.hops.iter().map(|h| hop(h, r)).collect::<Vec<_>>(),
    });
    serde_json::to_string(&v).map_or_else(|_| String::new(), |t| t + "\n")
}

/// A live flow's trace as one Atlas traceroute result: the Paris traceroute of the flow's
/// 5-tuple to its remote end (`TraceResult::to_traceroute`). A flow trace stops one hop short
/// of the remote when it knows the remote's distance, so Atlas's `destination_ip_responded`
/// is then false: the remote was not probed.
pub(crate) fn flow_line(r: &TraceResult) -> String {
    traceroute_line(&r.to_traceroute())
}

fn hop(h: &Hop, r: &TracerouteResult) -> Value {
    json!({
        "hop": h.ttl,
        "result": h.probes.iter().map(|p| packet(p, r.ip_version, r.destination)).collect::<Vec<_>>(),
    })
}

/// One probe's answer, as Atlas writes it: `from`, `rtt` (ms), `ttl` (of the reply), `err`
/// for an unreachable from a router (N, H, A, P, p: Atlas's letters for the ICMP codes), TCP
/// `flags` of the destination's answer, MPLS labels as Atlas's `icmpext`.
fn packet(p: &ProbeReply, af: u8, destination: IpAddr) -> Value {
    let (Some(addr), Some(rtt)) = (p.addr, p.rtt_ms) else {
        return json!({"x": "*"});
    };
    let mut o = Map::new();
    o.insert("from".into(), json!(addr.to_string()));
    o.insert("rtt".into(), json!((rtt * 1000.0).round() / 1000.0));
    if let Some(ttl) = p.reply_ttl {
        o.insert("ttl".into(), json!(ttl));
    }
    // The destination's own Port Unreachable (UDP) or Echo Reply is the answer the trace
    // wants, not an error; Atlas marks only the others.
    if addr != destination {
        if let Some(e) = unreachable_letter(af, p.icmp_type, p.icmp_code) {
            o.insert("err".into(), json!(e));
        }
    }
    if let Some(f) = p.tcp_flags {
        o.insert("flags".into(), json!(tcp_flags(f)));
    }
    if let Some(m) = p.mtu {
        o.insert("mtu".into(), json!(m));
    }
    if !p.mpls.is_empty() {
        let labels: Vec<Value> = p
            .mpls
            .iter()
            .map(|e| json!({"label": e.label, "exp": e.tc, "s": u8::from(e.s), "ttl": e.ttl}))
            .collect();
        o.insert(
            "icmpext".into(),
            json!({"version": 2, "rfc4884": 1, "obj": [{"class": 1, "type": 1, "mpls": labels}]}),
        );
    }
    Value::Object(o)
}

/// Atlas's letter for a Destination Unreachable: N network, H host, A administratively
/// prohibited, P protocol, p port (RFC 792 codes 0, 1, 13, 2, 3; RFC 4443 codes 0, 3, 1, 4).
fn unreachable_letter(
    ip_version: u8,
    icmp_type: Option<u8>,
    code: Option<u8>,
) -> Option<&'static str> {
    match (ip_version, icmp_type?, code?) {
        (4, 3, 0) | (6, 1, 0) => Some("N"),
        (4, 3, 1) | (6, 1, 3) => Some("H"),
        (4, 3, 13) | (4, 3, 9) | (4, 3, 10) | (6, 1, 1) => Some("A"),
        (4, 3, 2) => Some("P"),
        (4, 3, 3) | (6, 1, 4) => Some("p"),
        _ => None,
    }
}

/// TCP flags as Atlas writes them ("SA" for SYN-ACK, "R" or "RA" for a reset).
fn tcp_flags(f: u8) -> String {
    [
        (0x01, 'F'),
        (0x02, 'S'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, 'A'),
        (0x20, 'U'),
    ]
    .iter()
    .filter(|(bit, _)| f & bit != 0)
    .map(|(_, c)| *c)
    .collect()
}

/// Unix seconds of an RFC 3339 time of ours (0 if it does not parse, which ours always do).
fn unix_seconds(t: &str) -> u64 {
    humantime::parse_rfc3339_weak(t)
        .ok()
        .and_then(|s| s.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testdata::udp4 as result;

    #[test]
    fn atlas_fields_as_atlas_writes_them() {
        let v: Value = serde_json::from_str(&traceroute_line(&result())).unwrap();
        assert_eq!(v["type"], "traceroute");
        assert_eq!(v["proto"], "UDP");
        assert_eq!(v["af"], 4);
        assert_eq!(v["timestamp"], 1_796_484_394);
        assert_eq!(v["endtime"], 1_796_484_395);
        assert!(v["fw"].as_u64().unwrap() >= 4460);
        assert_eq!(v["paris_id"], 1);
        let hops = v["result"].as_array().unwrap();
        assert_eq!(hops[0]["hop"], 1);
        assert_eq!(
            hops[0]["result"],
            json!([{"from": "198.18.1.1", "rtt": 0.05, "ttl": 63}, {"x": "*"}])
        );
        // A router's Host Unreachable is an error; the destination's Port Unreachable is not.
        assert_eq!(hops[1]["result"][0]["err"], "H");
        assert!(hops[2]["result"][0].get("err").is_none());
    }

    #[test]
    fn tcp_flags_letters() {
        assert_eq!(tcp_flags(0x12), "SA");
        assert_eq!(tcp_flags(0x14), "RA");
        assert_eq!(tcp_flags(0x04), "R");
    }
}

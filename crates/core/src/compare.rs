//! The paper's experiment: does a fresh flow to the same destination and port take the
//! application flow's path? Compares, TTL by TTL, the routers the flow's own probes met with
//! those met by fresh Paris traces.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::classic::TracerouteResult;
use crate::result::{Hop, TraceResult};

/// One TTL of a comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlComparison {
    /// The TTL.
    pub ttl: u8,
    /// Routers that answered the flow's probes.
    pub flow: Vec<IpAddr>,
    /// Routers that answered each fresh trace's probes.
    pub fresh: Vec<Vec<IpAddr>>,
    /// Some fresh trace met other routers than the flow here (both answered).
    pub differs: bool,
}

/// The comparison of an application flow's path with fresh flows' paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Any TTL differs.
    pub differs: bool,
    /// The TTLs where the paths differ.
    pub differing_ttls: Vec<u8>,
    /// Per TTL, the addresses of each.
    pub per_ttl: Vec<TtlComparison>,
    /// The flow's trace.
    pub flow: TraceResult,
    /// The fresh traces.
    pub fresh: Vec<TracerouteResult>,
}

fn addrs_at(hops: &[Hop], ttl: u8) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = hops
        .iter()
        .find(|h| h.ttl == ttl)
        .map(Hop::addrs)
        .unwrap_or_default();
    v.sort();
    v
}

/// Compares the flow's path with each fresh trace, TTL by TTL, over the TTLs the flow probed.
/// A TTL where either side got no answer is not counted as a difference: silence is not a
/// path.
pub fn compare(flow: TraceResult, fresh: Vec<TracerouteResult>) -> Comparison {
    let mut per_ttl = Vec::new();
    for hop in &flow.hops {
        let f = addrs_at(&flow.hops, hop.ttl);
        let others: Vec<Vec<IpAddr>> = fresh.iter().map(|r| addrs_at(&r.hops, hop.ttl)).collect();
        let differs = !f.is_empty() && others.iter().any(|o| !o.is_empty() && *o != f);
        per_ttl.push(TtlComparison {
            ttl: hop.ttl,
            flow: f,
            fresh: others,
            differs,
        });
    }
    let differing_ttls: Vec<u8> = per_ttl
        .iter()
        .filter(|t| t.differs)
        .map(|t| t.ttl)
        .collect();
    Comparison {
        differs: !differing_ttls.is_empty(),
        differing_ttls,
        per_ttl,
        flow,
        fresh,
    }
}

/// Side-by-side text.
pub fn render_comparison(c: &Comparison) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let f = &c.flow.flow;
    let _ = writeln!(
        out,
        "{} flow {} -> {} vs {} fresh Paris flow(s) to the same port",
        f.protocol.as_str(),
        std::net::SocketAddr::new(f.local.ip, f.local.port),
        std::net::SocketAddr::new(f.remote.ip, f.remote.port),
        c.fresh.len()
    );
    let fresh_ports: Vec<String> = c
        .fresh
        .iter()
        .map(|r| {
            format!(
                "{:<24}",
                format!("fresh (sport {})", r.source_port.unwrap_or(0))
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "ttl  {:<24} {}",
        "application flow",
        fresh_ports.join(" ").trim_end()
    );
    let show = |v: &[IpAddr]| {
        if v.is_empty() {
            "*".to_string()
        } else {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    for t in &c.per_ttl {
        let others: Vec<String> = t.fresh.iter().map(|o| format!("{:<24}", show(o))).collect();
        let line = format!("{:3}  {:<24} {}", t.ttl, show(&t.flow), others.join(" "));
        let _ = writeln!(
            out,
            "{}{}",
            line.trim_end(),
            if t.differs { "  <- differs" } else { "" }
        );
    }
    let _ = writeln!(
        out,
        "{}",
        if c.differs {
            format!("the paths DIFFER at TTL {:?}", c.differing_ttls)
        } else {
            "the paths are the same".to_string()
        }
    );
    out
}

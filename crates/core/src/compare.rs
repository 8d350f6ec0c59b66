//! The paper's experiment: does a fresh flow to the same destination and port take the
//! application flow's path? Compares, TTL by TTL, the routers the flow's own probes met with
//! those met by fresh Paris traces; or places the flow's path among every load-balanced path
//! a multipath discovery found ([`compare_multipath`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::classic::TracerouteResult;
use crate::mda::MdaResult;
use crate::path::{Link, PathGraph};
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

/// One TTL of an application flow's path among all of a destination's paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchTtl {
    /// The TTL.
    pub ttl: u8,
    /// The router the flow's probes met (none: silent, or several).
    pub flow: Option<IpAddr>,
    /// Every router the discovery met at this TTL.
    pub nodes: Vec<IpAddr>,
    /// How many of the discovered paths pass the flow's router at this TTL (the flow's own
    /// included); 0 where the flow's router is not in the discovered graph.
    pub paths_through: u64,
}

/// An application flow's path (its own probes) placed among every load-balanced path to its
/// destination (a multipath discovery with fresh flows): `compare --multipath`, and the
/// branch of each flow in `monitor --multipath`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultipathComparison {
    /// Distinct paths in the discovered graph (from its first TTL to where each ends).
    pub paths: u64,
    /// Every link of the flow's path is in the discovered graph: the flow takes one of
    /// the paths found.
    pub flow_path_found: bool,
    /// The flow's links (consecutive TTLs where it met one router each).
    pub flow_links: Vec<Link>,
    /// The flow's links the discovery did not find.
    pub missing_links: Vec<Link>,
    /// Per TTL of the discovery, the flow's router and how many paths share it.
    pub per_ttl: Vec<BranchTtl>,
    /// The result in one sentence.
    pub summary: String,
    /// The flow's trace.
    pub flow: TraceResult,
    /// The discovery.
    pub multipath: MdaResult,
}

/// The mark `monitor --multipath` puts in a flow's result: its path among the
/// destination's (a [`MultipathComparison`] without the two results it compares).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowBranch {
    /// The destination discovered.
    pub destination: IpAddr,
    /// Distinct paths found.
    pub paths: u64,
    /// The flow takes one of them.
    pub flow_path_found: bool,
    /// The flow's links the discovery did not find.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_links: Vec<Link>,
    /// Per TTL, the flow's router, every router found, the paths through the flow's.
    pub per_ttl: Vec<BranchTtl>,
    /// The result in one sentence.
    pub summary: String,
    /// The discovery's confidence, probes and stop reason.
    pub confidence: f64,
    /// See `confidence`.
    pub probes_sent: u32,
    /// See `confidence`.
    pub stop_reason: crate::mda::MdaStop,
}

impl MultipathComparison {
    /// The flow's mark ([`FlowBranch`]).
    pub fn branch(&self) -> FlowBranch {
        FlowBranch {
            destination: self.multipath.destination,
            paths: self.paths,
            flow_path_found: self.flow_path_found,
            missing_links: self.missing_links.clone(),
            per_ttl: self.per_ttl.clone(),
            summary: self.summary.clone(),
            confidence: self.multipath.confidence,
            probes_sent: self.multipath.probes_sent,
            stop_reason: self.multipath.stop_reason,
        }
    }
}

/// How many paths of `g` reach and leave each (TTL, address) node, the graph being a DAG
/// by TTL: `(to, from)`; a path runs from a node without incoming link to one without
/// outgoing link.
/// Paths per (TTL, address) node.
type PathCounts = BTreeMap<(u8, IpAddr), u64>;

fn path_counts(g: &PathGraph) -> (PathCounts, PathCounts) {
    let nodes: BTreeSet<(u8, IpAddr)> = g
        .hops
        .iter()
        .flat_map(|h| h.addrs().map(move |a| (h.ttl, a)))
        .chain(
            g.links
                .iter()
                .flat_map(|l| [(l.ttl, l.from), (l.ttl + 1, l.to)]),
        )
        .collect();
    let mut to = PathCounts::new();
    // TTL order is a topological order: links go from TTL t to t + 1.
    for &n in &nodes {
        let incoming: Vec<&Link> = g.links.iter().filter(|l| (l.ttl + 1, l.to) == n).collect();
        let v = if incoming.is_empty() {
            1
        } else {
            incoming
                .iter()
                .map(|l| to.get(&(l.ttl, l.from)).copied().unwrap_or(0))
                .fold(0u64, u64::saturating_add)
        };
        to.insert(n, v);
    }
    let mut from = PathCounts::new();
    for &n in nodes.iter().rev() {
        let outgoing: Vec<&Link> = g.links.iter().filter(|l| (l.ttl, l.from) == n).collect();
        let v = if outgoing.is_empty() {
            1
        } else {
            outgoing
                .iter()
                .map(|l| from.get(&(l.ttl + 1, l.to)).copied().unwrap_or(0))
                .fold(0u64, u64::saturating_add)
        };
        from.insert(n, v);
    }
    (to, from)
}

/// Places the flow's path among the discovered ones.
pub fn compare_multipath(flow: TraceResult, multipath: MdaResult) -> MultipathComparison {
    let g = &multipath.graph;
    let flow_links = PathGraph::from_flow(&flow.hops).links;
    let found: BTreeSet<Link> = g.links.iter().copied().collect();
    let missing_links: Vec<Link> = flow_links
        .iter()
        .filter(|l| !found.contains(l))
        .copied()
        .collect();
    let (to, from) = path_counts(g);
    let paths: u64 = from
        .iter()
        .filter(|(n, _)| to.get(n) == Some(&1) && !g.links.iter().any(|l| (l.ttl + 1, l.to) == **n))
        .map(|(_, v)| *v)
        .fold(0u64, u64::saturating_add);
    let per_ttl: Vec<BranchTtl> = g
        .hops
        .iter()
        .map(|h| {
            let addrs = flow
                .hops
                .iter()
                .find(|fh| fh.ttl == h.ttl)
                .map(Hop::addrs)
                .unwrap_or_default();
            let flow_addr = match addrs.as_slice() {
                [one] => Some(*one),
                _ => None,
            };
            let through = flow_addr
                .map(|a| {
                    let n = (h.ttl, a);
                    to.get(&n).copied().unwrap_or(0) * from.get(&n).copied().unwrap_or(0)
                })
                .unwrap_or(0);
            BranchTtl {
                ttl: h.ttl,
                flow: flow_addr,
                nodes: h.addrs().collect(),
                paths_through: through,
            }
        })
        .collect();
    let flow_path_found = !flow_links.is_empty() && missing_links.is_empty();
    let summary = summarize(paths, flow_path_found, &per_ttl, &missing_links);
    MultipathComparison {
        paths,
        flow_path_found,
        flow_links,
        missing_links,
        per_ttl,
        summary,
        flow,
        multipath,
    }
}

fn ttl_range(a: u8, b: u8) -> String {
    if a == b {
        format!("TTL {a}")
    } else {
        format!("TTL {a}-{b}")
    }
}

fn summarize(paths: u64, found: bool, per_ttl: &[BranchTtl], missing: &[Link]) -> String {
    let plural = |n: u64| if n == 1 { "path" } else { "paths" };
    if !found {
        return match missing.first() {
            Some(l) => format!(
                "the application flow's path is not among the {paths} {} found: none of \
                 them goes from {} (TTL {}) to {} (TTL {})",
                plural(paths),
                l.from,
                l.ttl,
                l.to,
                l.ttl + 1
            ),
            None => format!(
                "the application flow's path is unknown (its probes met no two routers in a \
                 row); {paths} {} found",
                plural(paths)
            ),
        };
    }
    // Runs of consecutive TTLs with the same number of paths through the flow's router.
    let mut runs: Vec<(u8, u8, u64)> = Vec::new();
    for t in per_ttl
        .iter()
        .filter(|t| t.flow.is_some() && t.paths_through > 0)
    {
        match runs.last_mut() {
            Some((_, end, k)) if *k == t.paths_through && *end + 1 == t.ttl => *end = t.ttl,
            _ => runs.push((t.ttl, t.ttl, t.paths_through)),
        }
    }
    let parts: Vec<String> = runs
        .iter()
        .map(|&(a, b, k)| {
            let who = if k >= paths {
                "all of them".to_string()
            } else if k <= 1 {
                "none of the others".to_string()
            } else {
                format!("{} of the others", k - 1)
            };
            format!("{} with {who}", ttl_range(a, b))
        })
        .collect();
    format!(
        "the application flow takes 1 of {paths} {}; it shares {}",
        plural(paths),
        parts.join(", ")
    )
}

/// Text: the flow's router per TTL beside every router found there, the paths through it,
/// then the summary.
pub fn render_multipath_comparison(c: &MultipathComparison) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let f = &c.flow.flow;
    let m = &c.multipath;
    let _ = writeln!(
        out,
        "{} flow {} -> {} among {} {} to {} (multipath, {} flows, {} probes, confidence {})",
        f.protocol.as_str(),
        std::net::SocketAddr::new(f.local.ip, f.local.port),
        std::net::SocketAddr::new(f.remote.ip, f.remote.port),
        c.paths,
        if c.paths == 1 { "path" } else { "paths" },
        m.destination,
        m.flows,
        m.probes_sent,
        m.confidence
    );
    let _ = writeln!(
        out,
        "ttl  {:<24} {:<8} every router found",
        "application flow", "paths"
    );
    let probed = c.flow.hops.last().map_or(0, |h| h.ttl);
    for t in &c.per_ttl {
        let flow = match t.flow {
            Some(a) => a.to_string(),
            None if t.ttl <= probed => "*".to_string(),
            // The flow's probes stop short of its remote, by design.
            None => "-".to_string(),
        };
        let paths = if t.flow.is_some() {
            format!("{}/{}", t.paths_through, c.paths)
        } else {
            String::new()
        };
        let all: Vec<String> = t
            .nodes
            .iter()
            .map(|a| {
                if Some(*a) == t.flow {
                    format!("[{a}]")
                } else {
                    a.to_string()
                }
            })
            .collect();
        let _ = writeln!(out, "{:3}  {flow:<24} {paths:<8} {}", t.ttl, all.join(" "));
    }
    let _ = writeln!(out, "{}", c.summary);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn paths_through_each_node_of_the_lab_shape() {
        let g = crate::path::multipath_lab_graph();
        let (to, from) = path_counts(&g);
        let through = |ttl: u8, x: &str| to[&(ttl, a(x))] * from[&(ttl, a(x))];
        assert_eq!(through(1, "10.0.1.1"), 4, "every path");
        assert_eq!(through(3, "10.0.11.2"), 3);
        assert_eq!(through(3, "10.0.12.2"), 1);
        assert_eq!(through(4, "10.0.62.2"), 1);
        assert_eq!(
            through(6, "10.1.2.2"),
            3,
            "r4 at TTL 6: the three longer paths"
        );
        let per_ttl: Vec<BranchTtl> = [
            (1, "10.0.1.1", 4),
            (2, "10.0.2.2", 4),
            (3, "10.0.11.2", 3),
            (4, "10.0.62.2", 1),
            (5, "10.1.62.2", 1),
        ]
        .iter()
        .map(|&(ttl, x, k)| BranchTtl {
            ttl,
            flow: Some(a(x)),
            nodes: vec![],
            paths_through: k,
        })
        .collect();
        assert_eq!(
            summarize(4, true, &per_ttl, &[]),
            "the application flow takes 1 of 4 paths; it shares TTL 1-2 with all of them, \
             TTL 3 with 2 of the others, TTL 4-5 with none of the others"
        );
        let missing = [Link {
            ttl: 3,
            from: a("10.0.11.2"),
            to: a("10.9.9.9"),
        }];
        assert!(summarize(4, false, &per_ttl, &missing).contains("is not among the 4 paths"));
    }
}

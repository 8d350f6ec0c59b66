//! The path model: what a trace found, as a graph that holds more than one path. Per TTL the
//! *nodes* (each address that answered, with the probes it answered; the silent probes as a
//! node without address), and the *links* between nodes of consecutive TTLs that one flow
//! was seen to take. A single path is its simplest case: one node per TTL, a chain of links.
//! A multipath discovery (several flow identifiers through load balancers) and a reverse path
//! measured by someone else are graphs too, so every kind of result prints and serializes
//! through [`PathGraph`].
//!
//! Its JSON is the contract the multipath and reverse-traceroute results use:
//! `{"hops": [{"ttl": N, "nodes": [{"addr": ADDR|null, "probes": [...]}]}], "links": [{"ttl":
//! N, "from": ADDR, "to": ADDR}]}`, a link's `ttl` being the TTL of its `from` node.
//!
//! ```
//! use svctr_core::{Hop, PathGraph, ProbeReply};
//!
//! let probe = |addr: &str| ProbeReply { addr: Some(addr.parse().unwrap()), ..ProbeReply::default() };
//! let hops = vec![
//!     Hop { ttl: 1, probes: vec![probe("192.0.2.1"), probe("192.0.2.1")] },
//!     Hop { ttl: 2, probes: vec![probe("198.51.100.1"), ProbeReply::default()] },
//! ];
//! let g = PathGraph::from_flow(&hops);
//! assert_eq!(g.hops[1].nodes.len(), 2); // the router and the silence
//! assert_eq!(g.links.len(), 1); // 192.0.2.1 -> 198.51.100.1
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use petgraph::algo::dominators;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};

use crate::result::{Hop, ProbeReply};

/// A measured path or set of paths (see the module doc).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PathGraph {
    /// Per TTL probed, in TTL order, its nodes.
    pub hops: Vec<GraphHop>,
    /// Links between nodes of consecutive TTLs.
    pub links: Vec<Link>,
}

/// One TTL of a [`PathGraph`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphHop {
    /// The TTL.
    pub ttl: u8,
    /// Who answered (in order of first answer), then the silence if some probes had none.
    pub nodes: Vec<Node>,
}

/// An address at a TTL and the probes it answered; `addr` null: the probes nobody answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The router or host, or none.
    pub addr: Option<IpAddr>,
    /// Its probes, in send order.
    pub probes: Vec<ProbeReply>,
}

/// A flow went from `from` (at `ttl`) to `to` (at `ttl + 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Link {
    /// The TTL of `from`.
    pub ttl: u8,
    /// The node at `ttl`.
    pub from: IpAddr,
    /// The node at `ttl + 1`.
    pub to: IpAddr,
}

/// Where the paths from one node split and meet again ([`PathGraph::diamonds`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diamond {
    /// The node where the paths split, and its TTL.
    pub divergence: IpAddr,
    /// See `divergence`.
    pub divergence_ttl: u8,
    /// How many ways it splits (its successors).
    pub successors: usize,
    /// The first node every path from `divergence` passes through again (absent: they end
    /// apart).
    pub convergence: Option<IpAddr>,
    /// The TTLs at which the paths from `divergence` meet `convergence` (several when they
    /// differ in length).
    pub convergence_ttls: Vec<u8>,
    /// The most nodes at one TTL between the two.
    pub width: usize,
    /// The most TTLs from `divergence` to `convergence` (or the paths' last node).
    pub length: u8,
}

impl GraphHop {
    /// Groups a TTL's probes by the address that answered them.
    pub fn from_hop(hop: &Hop) -> Self {
        let mut nodes: Vec<Node> = Vec::new();
        let mut silent = Vec::new();
        for p in &hop.probes {
            match p.addr {
                None => silent.push(p.clone()),
                Some(a) => match nodes.iter_mut().find(|n| n.addr == Some(a)) {
                    Some(n) => n.probes.push(p.clone()),
                    None => nodes.push(Node {
                        addr: Some(a),
                        probes: vec![p.clone()],
                    }),
                },
            }
        }
        if !silent.is_empty() {
            nodes.push(Node {
                addr: None,
                probes: silent,
            });
        }
        Self {
            ttl: hop.ttl,
            nodes,
        }
    }

    /// The addresses that answered at this TTL.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.nodes.iter().filter_map(|n| n.addr)
    }
}

impl PathGraph {
    /// The graph of one flow's trace (one flow identifier for every probe: the flow tracer,
    /// Paris and Dublin traceroute). A link joins two consecutive TTLs where exactly one
    /// address answered at each: a flow takes one path, so those two are on it; where a TTL
    /// shows several addresses (a per-packet load balancer) no link is claimed.
    pub fn from_flow(hops: &[Hop]) -> Self {
        let mut g = Self::from_probes(hops);
        for pair in g.hops.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if b.ttl != a.ttl.saturating_add(1) {
                continue;
            }
            if let ([from], [to]) = (
                a.addrs().collect::<Vec<_>>().as_slice(),
                b.addrs().collect::<Vec<_>>().as_slice(),
            ) {
                g.links.push(Link {
                    ttl: a.ttl,
                    from: *from,
                    to: *to,
                });
            }
        }
        g
    }

    /// The nodes of probes whose flow identifiers differ (classic traceroute): no links, since
    /// no two probes are known to have taken one path.
    pub fn from_probes(hops: &[Hop]) -> Self {
        Self {
            hops: hops.iter().map(GraphHop::from_hop).collect(),
            links: Vec::new(),
        }
    }

    /// The routers and hosts as one graph: a node per address (a router met at several TTLs,
    /// on paths of different lengths, is one node), an edge per pair of addresses linked at
    /// any TTL. Returns the graph and each address's node.
    pub fn routers(&self) -> (DiGraph<IpAddr, ()>, BTreeMap<IpAddr, NodeIndex>) {
        let mut g = DiGraph::new();
        let mut index = BTreeMap::new();
        let mut node = |g: &mut DiGraph<IpAddr, ()>, a: IpAddr| {
            *index.entry(a).or_insert_with(|| g.add_node(a))
        };
        for a in self.hops.iter().flat_map(GraphHop::addrs) {
            node(&mut g, a);
        }
        let mut seen = BTreeSet::new();
        for l in &self.links {
            let (from, to) = (node(&mut g, l.from), node(&mut g, l.to));
            if seen.insert((from, to)) {
                g.add_edge(from, to, ());
            }
        }
        (g, index)
    }

    /// The TTLs at which `addr` answered.
    pub fn ttls_of(&self, addr: IpAddr) -> Vec<u8> {
        self.hops
            .iter()
            .filter(|h| h.addrs().any(|a| a == addr))
            .map(|h| h.ttl)
            .collect()
    }

    /// Where the paths split and meet again: for every node with two or more successors,
    /// the first node that every path from it passes through again (its immediate
    /// post-dominator: the immediate dominator in the reversed graph, every path's end
    /// joined to one virtual exit), the most nodes at one TTL between the two, and the
    /// longest stretch of TTLs from one to the other.
    pub fn diamonds(&self) -> Vec<Diamond> {
        let (forward, index) = self.routers();
        // Reversed, with a virtual exit (`None`) before every node that has no successor.
        let mut rev: DiGraph<Option<IpAddr>, ()> = forward.map(|_, a| Some(*a), |_, _| ());
        rev.reverse();
        let exit = rev.add_node(None);
        for n in forward.node_indices() {
            if forward.neighbors(n).next().is_none() {
                rev.add_edge(exit, n, ());
            }
        }
        let doms = dominators::simple_fast(&rev, exit);
        let mut out = Vec::new();
        for (&addr, &n) in &index {
            let succ: BTreeSet<NodeIndex> = forward.neighbors(n).collect();
            let successors = succ.len();
            if successors < 2 {
                continue;
            }
            let conv = doms.immediate_dominator(n).filter(|d| *d != exit);
            // The nodes between: reachable from `addr` without passing the convergence.
            let mut between = BTreeSet::new();
            let mut stack: Vec<NodeIndex> = succ.into_iter().collect();
            while let Some(x) = stack.pop() {
                if Some(x) == conv || !between.insert(forward[x]) {
                    continue;
                }
                stack.extend(forward.neighbors(x));
            }
            let d_ttl = self.ttls_of(addr).first().copied().unwrap_or(0);
            let mut width = 0;
            let mut last = d_ttl;
            for h in self.hops.iter().filter(|h| h.ttl > d_ttl) {
                let c = h.addrs().filter(|a| between.contains(a)).count();
                width = width.max(c);
                if c > 0 {
                    last = last.max(h.ttl);
                }
            }
            let convergence = conv.map(|c| forward[c]);
            // The TTLs at which the paths from here meet it (not where others do).
            let mut convergence_ttls: Vec<u8> = match convergence {
                Some(c) => self
                    .links
                    .iter()
                    .filter(|l| l.to == c && (l.from == addr || between.contains(&l.from)))
                    .map(|l| l.ttl.saturating_add(1))
                    .collect(),
                None => Vec::new(),
            };
            convergence_ttls.sort_unstable();
            convergence_ttls.dedup();
            let end = convergence_ttls.iter().copied().max().unwrap_or(last);
            out.push(Diamond {
                divergence: addr,
                divergence_ttl: d_ttl,
                successors,
                convergence,
                convergence_ttls,
                width,
                length: end.saturating_sub(d_ttl),
            });
        }
        out.sort_by_key(|d| (d.divergence_ttl, d.divergence));
        out
    }

    /// Distinct addresses over all TTLs.
    pub fn node_count(&self) -> usize {
        let mut all: Vec<IpAddr> = self.hops.iter().flat_map(GraphHop::addrs).collect();
        all.sort();
        all.dedup();
        all.len()
    }

    /// Text, a line per TTL: each node with how many of the TTL's probes it answered, `*` for
    /// the silent ones; then the links, one line each.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for hop in &self.hops {
            let total: usize = hop.nodes.iter().map(|n| n.probes.len()).sum();
            let _ = write!(out, "{:2} ", hop.ttl);
            for n in &hop.nodes {
                match n.addr {
                    Some(a) => {
                        let _ = write!(out, " {a} ({}/{total})", n.probes.len());
                    }
                    None => {
                        let _ = write!(out, " * ({}/{total})", n.probes.len());
                    }
                }
            }
            out.push('\n');
        }
        for l in &self.links {
            let _ = writeln!(out, "    {} {} -> {}", l.ttl, l.from, l.to);
        }
        out
    }
}

/// The multipath lab at interface level: r2 (10.0.2.2) splits to b1 and b2, b1 again to
/// c1..c3; r3 answers from the interface a probe came in on (10.1.12.2, 10.1.6J.2), so the
/// paths join at r4 (10.1.2.2), at TTL 5 via b2 and 6 via the c's; the destination
/// (10.1.1.2) at TTL 6 and 7.
#[cfg(test)]
pub(crate) fn multipath_lab_graph() -> PathGraph {
    let a = |s: &str| -> IpAddr { s.parse().unwrap() };
    let l = |ttl: u8, from: &str, to: &str| Link {
        ttl,
        from: a(from),
        to: a(to),
    };
    let mut links = vec![
        l(1, "10.0.1.1", "10.0.2.2"),
        l(2, "10.0.2.2", "10.0.11.2"),
        l(2, "10.0.2.2", "10.0.12.2"),
        l(3, "10.0.12.2", "10.1.12.2"),
        l(4, "10.1.12.2", "10.1.2.2"),
        l(5, "10.1.2.2", "10.1.1.2"),
        l(6, "10.1.2.2", "10.1.1.2"),
    ];
    for j in 1..=3 {
        links.push(l(3, "10.0.11.2", &format!("10.0.6{j}.2")));
        links.push(l(4, &format!("10.0.6{j}.2"), &format!("10.1.6{j}.2")));
        links.push(l(5, &format!("10.1.6{j}.2"), "10.1.2.2"));
    }
    let hops = [
        (1, vec!["10.0.1.1"]),
        (2, vec!["10.0.2.2"]),
        (3, vec!["10.0.11.2", "10.0.12.2"]),
        (4, vec!["10.0.61.2", "10.0.62.2", "10.0.63.2", "10.1.12.2"]),
        (5, vec!["10.1.61.2", "10.1.62.2", "10.1.63.2", "10.1.2.2"]),
        (6, vec!["10.1.1.2", "10.1.2.2"]),
        (7, vec!["10.1.1.2"]),
    ]
    .into_iter()
    .map(|(ttl, xs)| GraphHop {
        ttl,
        nodes: xs
            .into_iter()
            .map(|x| Node {
                addr: Some(a(x)),
                probes: vec![ProbeReply::default()],
            })
            .collect(),
    })
    .collect();
    PathGraph { hops, links }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(addr: Option<&str>) -> ProbeReply {
        ProbeReply {
            addr: addr.map(|a| a.parse().unwrap()),
            ..ProbeReply::default()
        }
    }

    fn hop(ttl: u8, addrs: &[Option<&str>]) -> Hop {
        Hop {
            ttl,
            probes: addrs.iter().map(|a| probe(*a)).collect(),
        }
    }

    #[test]
    fn a_single_path_is_a_chain() {
        let hops = vec![
            hop(1, &[Some("10.0.0.1"); 3]),
            hop(2, &[Some("10.0.1.1"), None, Some("10.0.1.1")]),
            hop(3, &[None, None, None]),
            hop(4, &[Some("10.0.3.1"); 3]),
            hop(5, &[Some("10.0.4.1"); 3]),
        ];
        let g = PathGraph::from_flow(&hops);
        assert_eq!(g.hops.len(), 5);
        assert_eq!(g.hops[1].nodes.len(), 2);
        assert_eq!(g.hops[1].nodes[0].probes.len(), 2);
        assert_eq!(g.hops[1].nodes[1].addr, None);
        let links: Vec<(u8, String, String)> = g
            .links
            .iter()
            .map(|l| (l.ttl, l.from.to_string(), l.to.to_string()))
            .collect();
        assert_eq!(
            links,
            vec![
                (1, "10.0.0.1".into(), "10.0.1.1".into()),
                (4, "10.0.3.1".into(), "10.0.4.1".into()),
            ],
            "no link across the silent TTL 3"
        );
        assert_eq!(g.node_count(), 4);
        assert_eq!(
            g.render_text(),
            " 1  10.0.0.1 (3/3)\n 2  10.0.1.1 (2/3) * (1/3)\n 3  * (3/3)\n 4  10.0.3.1 (3/3)\n \
             5  10.0.4.1 (3/3)\n    1 10.0.0.1 -> 10.0.1.1\n    4 10.0.3.1 -> 10.0.4.1\n"
        );
    }

    #[test]
    fn several_addresses_at_a_ttl_claim_no_link() {
        let hops = vec![
            hop(1, &[Some("10.0.0.1"); 2]),
            hop(2, &[Some("10.0.1.1"), Some("10.0.1.2")]),
            hop(3, &[Some("10.0.2.1"); 2]),
        ];
        let g = PathGraph::from_flow(&hops);
        assert!(g.links.is_empty(), "{:?}", g.links);
        assert_eq!(g.hops[1].addrs().count(), 2);
        assert!(PathGraph::from_probes(&hops).links.is_empty());
    }

    /// The multipath lab at interface level (see [`multipath_lab_graph`]).
    #[test]
    fn diamonds_of_the_multipath_lab() {
        let a = |s: &str| -> IpAddr { s.parse().unwrap() };
        let d = multipath_lab_graph().diamonds();
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(
            (d[0].divergence, d[0].successors, d[0].convergence),
            (a("10.0.2.2"), 2, Some(a("10.1.2.2")))
        );
        assert_eq!(d[0].convergence_ttls, vec![5, 6]);
        assert_eq!((d[0].width, d[0].length), (4, 4));
        assert_eq!(
            (d[1].divergence, d[1].successors, d[1].convergence),
            (a("10.0.11.2"), 3, Some(a("10.1.2.2")))
        );
        assert_eq!(
            d[1].convergence_ttls,
            vec![6],
            "b1's paths meet r4 at TTL 6 only"
        );
        assert_eq!((d[1].width, d[1].length), (3, 3));
    }

    #[test]
    fn json_is_the_multipath_contract() {
        let g = PathGraph::from_flow(&[hop(1, &[Some("10.0.0.1")]), hop(2, &[Some("10.0.1.1")])]);
        let v = serde_json::to_value(&g).unwrap();
        assert_eq!(v["hops"][0]["ttl"], 1);
        assert_eq!(v["hops"][0]["nodes"][0]["addr"], "10.0.0.1");
        assert!(v["hops"][0]["nodes"][0]["probes"].is_array());
        assert_eq!(
            v["links"][0],
            serde_json::json!({"ttl": 1, "from": "10.0.0.1", "to": "10.0.1.1"})
        );
        let back: PathGraph = serde_json::from_value(v).unwrap();
        assert_eq!(back, g);
    }
}

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

use std::fmt::Write as _;
use std::net::IpAddr;

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

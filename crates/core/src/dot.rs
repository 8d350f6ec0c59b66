//! Graphviz DOT of [`PathGraph`]s: a node per router (once, however many TTLs it was met
//! at), its TTLs and probe count in its label; the nodes of each TTL in one column, with the
//! column's TTL on top; links as edges; the diamonds visible (the node where paths split and
//! the node where they join again drawn bold, the routers between them shaded); an optional
//! set of links drawn as one path (the application flow's, in `compare --multipath`).
//! Several graphs (several destinations, or both directions of a two-way trace) are drawn
//! side by side, each in its own cluster.
//!
//! Written with `dot-writer` (the statements, scopes and attribute lists); labels are escaped
//! here, since names come from reverse DNS, which anyone can fill.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use dot_writer::{Attributes, DotWriter, Rank, RankDirection, Scope};

use crate::path::{Link, PathGraph};

/// One graph of a picture.
#[derive(Debug, Clone)]
pub struct DotPart<'a> {
    /// The cluster's title (e.g. "198.18.0.2 to 198.19.1.2, UDP, confidence 0.95").
    pub title: String,
    /// The probes' source, drawn before the first TTL.
    pub source: Option<IpAddr>,
    /// The destination (drawn as such when it answered).
    pub destination: Option<IpAddr>,
    /// What was measured.
    pub graph: &'a PathGraph,
    /// Links to draw as one highlighted path.
    pub highlight: &'a [Link],
    /// Nodes found to balance per packet (drawn red).
    pub per_packet: &'a [IpAddr],
}

/// Escapes a label for a quoted DOT string (`"` and `\` would end or change it; a newline
/// becomes DOT's centred line break).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A node id, unique over the picture's parts.
fn id(part: usize, what: &str) -> String {
    format!("\"p{part}_{}\"", escape(what))
}

/// The picture of `parts`, as DOT.
pub fn render_dot(parts: &[DotPart<'_>]) -> String {
    let mut out = Vec::new();
    {
        let mut w = DotWriter::from(&mut out);
        w.set_pretty_print(true);
        let mut g = w.digraph();
        g.set_rank_direction(RankDirection::LeftRight);
        g.graph_attributes()
            .set("fontname", "Helvetica", true)
            .set("nodesep", "0.25", false)
            .set("ranksep", "0.6", false);
        g.node_attributes()
            .set("fontname", "Helvetica", true)
            .set("fontsize", "10", false)
            .set("shape", "box", false)
            .set("style", "rounded", true);
        g.edge_attributes().set("arrowsize", "0.6", false);
        if let [only] = parts {
            draw(&mut g, 0, only);
        } else {
            for (i, p) in parts.iter().enumerate() {
                let mut c = g.cluster();
                draw(&mut c, i, p);
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn draw(s: &mut Scope<'_, '_>, part: usize, p: &DotPart<'_>) {
    s.set_label(&escape(&p.title));
    let g = p.graph;
    // Each address once, in the column of the first TTL it was met at.
    let mut first_ttl: BTreeMap<IpAddr, u8> = BTreeMap::new();
    let mut probes: BTreeMap<IpAddr, usize> = BTreeMap::new();
    let mut names: BTreeMap<IpAddr, String> = BTreeMap::new();
    for hop in &g.hops {
        for n in &hop.nodes {
            let Some(a) = n.addr else { continue };
            first_ttl.entry(a).or_insert(hop.ttl);
            *probes.entry(a).or_default() += n.probes.len();
            if let Some(name) = n.probes.iter().find_map(|r| r.name.clone()) {
                names.entry(a).or_insert(name);
            }
        }
    }
    let diamonds = g.diamonds();
    let ends: BTreeSet<IpAddr> = diamonds
        .iter()
        .flat_map(|d| std::iter::once(d.divergence).chain(d.convergence))
        .collect();
    let inside: BTreeSet<IpAddr> = diamonds
        .iter()
        .flat_map(|d| {
            let end = d.divergence_ttl + d.length;
            g.links
                .iter()
                .filter(move |l| l.ttl >= d.divergence_ttl && l.ttl < end)
                .filter(move |l| l.from == d.divergence || l.ttl > d.divergence_ttl)
                .map(|l| l.to)
        })
        .filter(|a| !ends.contains(a))
        .collect();
    let highlighted: BTreeSet<IpAddr> = p.highlight.iter().flat_map(|l| [l.from, l.to]).collect();

    // The TTL columns: a title node per TTL, chained invisibly so the columns keep order.
    let ttls: Vec<u8> = g.hops.iter().map(|h| h.ttl).collect();
    let src_id = id(part, "source");
    if let Some(src) = p.source {
        s.node_named(&src_id)
            .set_label(&format!("{src}\\nsource"))
            .set("shape", "house", false)
            .set("style", "filled", true)
            .set("fillcolor", "#e8eef7", true);
    }
    for (i, ttl) in ttls.iter().enumerate() {
        let col = id(part, &format!("ttl{ttl}"));
        s.node_named(&col)
            .set_label(&format!("TTL {ttl}"))
            .set("shape", "plaintext", false)
            .set("fontcolor", "#666666", true);
        if i > 0 {
            s.edge(id(part, &format!("ttl{}", ttls[i - 1])), &col)
                .attributes()
                .set("style", "invis", false);
        }
    }
    for hop in &g.hops {
        let mut column = s.subgraph();
        column.set_rank(Rank::Same);
        column.node_named(id(part, &format!("ttl{}", hop.ttl)));
        for n in &hop.nodes {
            match n.addr {
                Some(a) if first_ttl.get(&a) == Some(&hop.ttl) => {
                    let ttls = g.ttls_of(a);
                    let ttls = ttls
                        .iter()
                        .map(u8::to_string)
                        .collect::<Vec<_>>()
                        .join(", ");
                    let mut label = match names.get(&a) {
                        Some(name) => format!("{name}\n{a}"),
                        None => a.to_string(),
                    };
                    label.push_str(&format!(
                        "\nTTL {ttls} · {} probe{}",
                        probes[&a],
                        if probes[&a] == 1 { "" } else { "s" }
                    ));
                    let mut node = column.node_named(id(part, &a.to_string()));
                    node.set_label(&escape(&label));
                    if Some(a) == p.destination {
                        node.set("shape", "doubleoctagon", false);
                    }
                    if p.per_packet.contains(&a) {
                        node.set("color", "#c0392b", true)
                            .set("penwidth", "2", false)
                            .set("xlabel", "per-packet", true);
                    } else if ends.contains(&a) {
                        node.set("penwidth", "2.2", false);
                    }
                    if highlighted.contains(&a) {
                        node.set("style", "rounded,filled,bold", true)
                            .set("fillcolor", "#fde2c8", true)
                            .set("color", "#d35400", true);
                    } else if inside.contains(&a) {
                        node.set("style", "rounded,filled", true)
                            .set("fillcolor", "#f3f3f3", true);
                    }
                }
                Some(_) => {}
                None => {
                    let k = n.probes.len();
                    column
                        .node_named(id(part, &format!("silent{}", hop.ttl)))
                        .set_label(&format!("*\\n{k} probe{}", if k == 1 { "" } else { "s" }))
                        .set("shape", "ellipse", false)
                        .set("style", "dashed", true)
                        .set("color", "#999999", true)
                        .set("fontcolor", "#999999", true);
                }
            }
        }
    }
    // The source to the nodes of the first TTL.
    if p.source.is_some() {
        if let Some(first) = g.hops.first() {
            for a in first.addrs() {
                s.edge(&src_id, id(part, &a.to_string()))
                    .attributes()
                    .set("color", "#999999", true);
            }
        }
    }
    let on_path: BTreeSet<(IpAddr, IpAddr)> = p.highlight.iter().map(|l| (l.from, l.to)).collect();
    let mut drawn = BTreeSet::new();
    for l in &g.links {
        if !drawn.insert((l.from, l.to)) {
            continue;
        }
        let e = s.edge(id(part, &l.from.to_string()), id(part, &l.to.to_string()));
        let mut attrs = e.attributes();
        if on_path.contains(&(l.from, l.to)) {
            attrs
                .set("color", "#d35400", true)
                .set("penwidth", "2.5", false);
        }
        // A link that skips columns (a router met at a later TTL on a longer path) must
        // not pull the columns out of order.
        if first_ttl.get(&l.to).copied() != Some(l.ttl + 1) {
            attrs.set("constraint", "false", false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::{GraphHop, Node};
    use crate::result::ProbeReply;

    fn node(a: &str, k: usize) -> Node {
        Node {
            addr: Some(a.parse().unwrap()),
            probes: vec![ProbeReply::default(); k],
        }
    }

    fn link(ttl: u8, from: &str, to: &str) -> Link {
        Link {
            ttl,
            from: from.parse().unwrap(),
            to: to.parse().unwrap(),
        }
    }

    #[test]
    fn a_diamond_in_dot() {
        let mut evil = node("10.0.1.1", 3);
        evil.probes[0].name = Some("r1\"] evil [x=\"".into());
        let g = PathGraph {
            hops: vec![
                GraphHop {
                    ttl: 1,
                    nodes: vec![node("10.0.0.1", 9)],
                },
                GraphHop {
                    ttl: 2,
                    nodes: vec![
                        evil,
                        node("10.0.2.1", 6),
                        Node {
                            addr: None,
                            probes: vec![ProbeReply::default()],
                        },
                    ],
                },
                GraphHop {
                    ttl: 3,
                    nodes: vec![node("10.0.3.1", 9)],
                },
            ],
            links: vec![
                link(1, "10.0.0.1", "10.0.1.1"),
                link(1, "10.0.0.1", "10.0.2.1"),
                link(2, "10.0.1.1", "10.0.3.1"),
                link(2, "10.0.2.1", "10.0.3.1"),
            ],
        };
        let hl = [link(1, "10.0.0.1", "10.0.2.1")];
        let dot = render_dot(&[DotPart {
            title: "to 10.0.3.1".into(),
            source: Some("10.9.9.9".parse().unwrap()),
            destination: Some("10.0.3.1".parse().unwrap()),
            graph: &g,
            highlight: &hl,
            per_packet: &[],
        }]);
        assert!(dot.starts_with("digraph {"), "{dot}");
        assert!(dot.contains("\"p0_10.0.0.1\" -> \"p0_10.0.1.1\""), "{dot}");
        assert!(dot.contains("\"p0_10.0.1.1\" -> \"p0_10.0.3.1\""), "{dot}");
        assert!(dot.contains("rank=same"), "{dot}");
        assert!(
            dot.contains("r1\\\"] evil [x=\\\""),
            "the name is escaped: {dot}"
        );
        assert!(dot.contains("doubleoctagon"), "{dot}");
        assert!(dot.contains("\"p0_silent2\""), "{dot}");
        // The split and the join are bold, the highlighted link too.
        assert_eq!(dot.matches("penwidth=2.2").count(), 2, "{dot}");
        assert!(dot.contains("penwidth=2.5"), "{dot}");
        // Two parts: two clusters, ids apart.
        let two = render_dot(&[
            DotPart {
                title: "a".into(),
                source: None,
                destination: None,
                graph: &g,
                highlight: &[],
                per_packet: &[],
            },
            DotPart {
                title: "b".into(),
                source: None,
                destination: None,
                graph: &g,
                highlight: &[],
                per_packet: &[],
            },
        ]);
        assert_eq!(two.matches("subgraph cluster_").count(), 2, "{two}");
        assert!(two.contains("\"p1_10.0.0.1\""), "{two}");
    }
}

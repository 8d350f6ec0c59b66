//! Multipath discovery end to end, in the multipath lab (`--branches 2 --sub-branches 3`: r2
//! splits over b1 and b2, b1 splits again over c1..c3, so the paths differ in width and
//! length and the link b2 -> r3 skips a level), checked against the topology's truth:
//! every node and link of every path, never one that does not exist. Root only (see
//! `svctr_lab::lab_test_guard`).

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{stderr, tracer_for};
use svctr_core::{MdaResult, MdaStop, MultipathComparison};
use svctr_lab::{lab_test_guard, tcp_download_to, tcp_server_on, Lab, LabConfig, Proto};

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn multipath_lab() -> Lab {
    Lab::build(LabConfig {
        branches: 2,
        sub_branches: 3,
        ..LabConfig::default()
    })
    .expect("build the multipath lab")
}

type Nodes = BTreeSet<(u8, IpAddr)>;
type Links = BTreeSet<(u8, IpAddr, IpAddr)>;

/// The nodes (TTL, address) and links of `paths`, each followed by the destination.
fn truth_of(paths: &[Vec<IpAddr>], dst: IpAddr) -> (Nodes, Links) {
    let mut nodes = BTreeSet::new();
    let mut links = BTreeSet::new();
    for p in paths {
        let full: Vec<IpAddr> = p.iter().copied().chain([dst]).collect();
        for (i, a) in full.iter().enumerate() {
            let ttl = i as u8 + 1;
            nodes.insert((ttl, *a));
            if i > 0 {
                links.insert((ttl - 1, full[i - 1], *a));
            }
        }
    }
    (nodes, links)
}

fn found(r: &MdaResult) -> (Nodes, Links) {
    let nodes = r
        .graph
        .hops
        .iter()
        .flat_map(|h| h.addrs().map(move |a| (h.ttl, a)))
        .collect();
    let links = r
        .graph
        .links
        .iter()
        .map(|l| (l.ttl, l.from, l.to))
        .collect();
    (nodes, links)
}

/// The truth of a discovery to the server: every path for UDP, TCP and ICMPv6 (whose flow
/// label the routers hash); for ICMP over IPv4 (no ports to hash) the one path r2 and b1
/// give echo requests.
fn truth(lab: &Lab, proto: Proto, v6: bool) -> (Nodes, Links) {
    let (src, dst) = if v6 {
        (
            IpAddr::V6(lab.client_addr6()),
            IpAddr::V6(lab.server_addr6()),
        )
    } else {
        (IpAddr::V4(lab.client_addr()), IpAddr::V4(lab.server_addr()))
    };
    let paths = if proto == Proto::Icmp && !v6 {
        vec![lab
            .expected_path_ip(Proto::Icmp, src, dst, 0, 0, 0)
            .expect("the echo requests' path")]
    } else {
        lab.all_paths_ip(v6)
    };
    truth_of(&paths, dst)
}

/// UDP, TCP and ICMP, IPv4 and IPv6, ten runs each at confidence 0.95: the discovered nodes
/// and links equal the truth in at least 95 % of the runs, and no run ever reports a node or
/// link that does not exist.
#[test]
fn every_protocol_and_family_finds_the_labs_paths() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = multipath_lab();
    let (mut runs, mut exact, mut probes) = (0, 0, 0u64);
    let mut report = Vec::new();
    for (proto, flag) in [
        (Proto::Udp, None),
        (Proto::Tcp, Some("-T")),
        (Proto::Icmp, Some("-I")),
    ] {
        for v6 in [false, true] {
            let dst = if v6 {
                lab.server_addr6().to_string()
            } else {
                lab.server_addr().to_string()
            };
            let (tn, tl) = truth(&lab, proto, v6);
            let mut exact_here = 0;
            for _ in 0..10 {
                let mut args = vec!["trace", "--multipath", "-n", "--format", "json"];
                args.extend(flag);
                args.push(&dst);
                let out = tracer_for(&lab, &args, SECS(60));
                assert!(out.status.success(), "{args:?}: {}", stderr(&out));
                let r: MdaResult = common::record(&out.stdout);
                let (fnodes, flinks) = found(&r);
                let false_nodes: Vec<_> = fnodes.difference(&tn).collect();
                let false_links: Vec<_> = flinks.difference(&tl).collect();
                assert!(
                    false_nodes.is_empty() && false_links.is_empty(),
                    "{args:?}: nodes {false_nodes:?} and links {false_links:?} do not exist"
                );
                assert_eq!(r.stop_reason, MdaStop::Completed, "{args:?}");
                runs += 1;
                probes += u64::from(r.probes_sent);
                if fnodes == tn && flinks == tl {
                    exact += 1;
                    exact_here += 1;
                }
            }
            report.push(format!(
                "{} {}: {exact_here}/10 exact ({} nodes, {} links)",
                proto.name(),
                if v6 { "v6" } else { "v4" },
                tn.len(),
                tl.len()
            ));
        }
    }
    eprintln!(
        "{}\n{exact} of {runs} runs found exactly the truth; {} probes per run",
        report.join("\n"),
        probes / runs
    );
    assert!(
        exact * 100 >= runs * 95,
        "only {exact} of {runs} runs found every node and link:\n{}",
        report.join("\n")
    );
}

/// Text (per TTL, then the diamonds), Graphviz DOT that Graphviz's own parser renders, SVG,
/// and several destinations of both families in one run under a rate.
#[test]
fn text_dot_svg_and_many_destinations() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = multipath_lab();
    let dst = lab.server_addr().to_string();
    let out = tracer_for(
        &lab,
        // Both splits must be found for the diamonds' text: at 0.999 a run misses a branch
        // about once in 2,400 (at 0.95, once in 70: n(1) = 8 flows all one way of two,
        // n(2) = 14 all on two of three).
        &["trace", "--multipath", "--confidence", "0.999", "-n", &dst],
        SECS(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("multipath to {dst}, udp port 33434+")),
        "{text}"
    );
    // r2 splits 2 ways, b1 3 ways; both join again at r4.
    assert!(text.contains("diamonds:"), "{text}");
    assert!(
        text.contains("(TTL 2) splits 2 ways, joins at 198.19.2.2 (TTL 5, 6)"),
        "{text}"
    );
    assert!(text.contains("198.18.11.2 (TTL 3) splits 3 ways"), "{text}");
    assert!(text.contains("stop: completed"), "{text}");

    let out = tracer_for(
        &lab,
        &["trace", "--multipath", "-n", "--format", "dot", &dst],
        SECS(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut dot = lab.command(lab.client_ns(), "dot");
    dot.arg("-Tsvg");
    let rendered = svctr_lab::output_with_timeout(
        &mut dot,
        Some(&String::from_utf8_lossy(&out.stdout)),
        SECS(30),
    )
    .expect("dot runs");
    assert!(
        rendered.status.success(),
        "dot rejected our DOT: {}",
        stderr(&rendered)
    );
    assert!(String::from_utf8_lossy(&rendered.stdout).contains("<svg"));

    let out = tracer_for(
        &lab,
        &["trace", "--multipath", "-n", "--format", "svg", &dst],
        SECS(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let svg = String::from_utf8_lossy(&out.stdout);
    assert!(svg.contains("<svg") && svg.contains("198.18.63.2"), "{svg}");

    // Both families at once, each one result line, under a probe rate.
    let dst6 = lab.server_addr6().to_string();
    let out = tracer_for(
        &lab,
        &[
            "trace",
            "--multipath",
            "-n",
            "--rate",
            "2000",
            "--format",
            "jsonl",
            &dst,
            &dst6,
        ],
        SECS(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<MdaResult> = common::json_lines(&out);
    assert_eq!(lines.len(), 2);
    for r in &lines {
        let (tn, tl) = truth(&lab, Proto::Udp, r.destination.is_ipv6());
        let (fnodes, flinks) = found(r);
        assert!(fnodes.is_subset(&tn) && flinks.is_subset(&tl), "{r:?}");
        assert_eq!(r.stop_reason, MdaStop::Completed);
    }

    // A probe budget: stopped, said why, exit 0 with what was found.
    let out = tracer_for(
        &lab,
        &[
            "trace",
            "--multipath",
            "-n",
            "--max-probes",
            "40",
            "--format",
            "json",
            &dst,
        ],
        SECS(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r: MdaResult = common::record(&out.stdout);
    assert_eq!(r.stop_reason, MdaStop::MaxProbes);
    assert!(r.probes_sent <= 40);
}

/// `compare --multipath` on TCP downloads of both families: the flow's path (its own probes)
/// is the branch the routers really gave its packets (r2's and b1's observers, which see the
/// application's packets and not the probes), and it is found among the 4 paths.
#[test]
fn compare_multipath_places_the_flow_on_its_true_branch() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = multipath_lab();
    let servers = [
        SocketAddr::new(IpAddr::V4(lab.server_addr()), 8080),
        SocketAddr::new(IpAddr::V6(lab.server_addr6()), 8080),
    ];
    let _srv: Vec<_> = servers
        .iter()
        .map(|s| tcp_server_on(&lab, *s, 200_000).expect("server"))
        .collect();
    let mut on_b1 = 0;
    for i in 0..6 {
        let dst = servers[i % 2];
        let d = tcp_download_to(&lab, dst, 0, 50_000_000, false).expect("download");
        let port = d.wait_established(SECS(10)).expect("established");
        let remote = match dst.ip() {
            IpAddr::V4(a) => format!("{a}:8080"),
            IpAddr::V6(a) => format!("[{a}]:8080"),
        };
        let out = tracer_for(
            &lab,
            &[
                "compare",
                "--multipath",
                // Every path must be found (see text_dot_svg_and_many_destinations).
                "--confidence",
                "0.999",
                "--tcp",
                "-i",
                lab.client_iface(),
                "--remote",
                &remote,
                "--local-port",
                &port.to_string(),
                "--duration",
                "10",
                "--format",
                "json",
            ],
            SECS(60),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let c: MultipathComparison = common::record(&out.stdout);
        // Ground truth from the application's own packets.
        let flow = lab.app_flow(Proto::Tcp, port, dst).expect("app flow");
        let k = *lab.observed_branches().expect("observer")[&flow]
            .iter()
            .next()
            .expect("a branch");
        let j = (k == 1).then(|| {
            *lab.observed_sub_branches().expect("observer")[&flow]
                .iter()
                .next()
                .expect("a second-stage branch")
        });
        on_b1 += usize::from(k == 1);
        let path = lab.path_ip(k, j, dst.is_ipv6());
        let highlighted: Vec<IpAddr> = c
            .flow_links
            .iter()
            .map(|l| l.from)
            .chain(c.flow_links.last().map(|l| l.to))
            .collect();
        // The flow's probes stop where its remote's distance says (by the TTL of the remote's
        // packets, which may come back another way): the true path up to there, at least
        // past both splits (TTL 4).
        assert!(highlighted.len() >= 4, "{highlighted:?}");
        assert_eq!(
            highlighted,
            path[..highlighted.len()],
            "the highlighted branch is the flow's true one"
        );
        assert!(c.flow_path_found, "{}", c.summary);
        assert_eq!(c.paths, 4, "{}", c.summary);
        assert!(
            c.summary
                .starts_with("the application flow takes 1 of 4 paths"),
            "{}",
            c.summary
        );
        let at3 = c.per_ttl.iter().find(|t| t.ttl == 3).expect("TTL 3");
        assert_eq!(
            at3.paths_through,
            if k == 1 { 3 } else { 1 },
            "{}",
            c.summary
        );
        drop(d);
    }
    eprintln!("{on_b1} of 6 flows went through b1");
}

/// `monitor --multipath`: every traced flow's result carries its branch among the
/// destination's paths, discovered once, and the discovery's own probes are never taken for
/// flows (only the two downloads are traced).
#[test]
fn monitor_multipath_marks_each_flows_branch() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = multipath_lab();
    let dst = SocketAddr::new(IpAddr::V4(lab.server_addr()), 8080);
    let _srv = tcp_server_on(&lab, dst, 200_000).expect("server");
    let downloads: Vec<_> = (0..2)
        .map(|_| tcp_download_to(&lab, dst, 0, 50_000_000, false).expect("download"))
        .collect();
    let ports: Vec<u16> = downloads
        .iter()
        .map(|d| d.wait_established(SECS(10)).expect("established"))
        .collect();
    let out = tracer_for(
        &lab,
        &[
            "monitor",
            "--multipath",
            "--confidence",
            "0.999",
            "--tcp",
            "-i",
            lab.client_iface(),
            "--remote",
            &dst.to_string(),
            "--count",
            "2",
            "--duration",
            "20",
            "--format",
            "jsonl",
        ],
        SECS(60),
    );
    let lines: Vec<serde_json::Value> = common::json_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        let port = l["flow"]["local"]["port"].as_u64().expect("port") as u16;
        assert!(ports.contains(&port), "traced {port}, not a download: {l}");
        let m = &l["multipath"];
        assert_eq!(m["paths"], 4, "{l}");
        assert_eq!(m["flow_path_found"], true, "{l}");
        let truth = lab
            .expected_path_ip(
                Proto::Tcp,
                IpAddr::V4(lab.client_addr()),
                dst.ip(),
                port,
                8080,
                0,
            )
            .expect("truth");
        let on_path: Vec<IpAddr> = m["per_ttl"]
            .as_array()
            .expect("per_ttl")
            .iter()
            .filter_map(|t| t["flow"].as_str()?.parse().ok())
            .filter(|a: &IpAddr| truth.contains(a))
            .collect();
        // The flow's probes stop at its remote's distance by the TTL of the remote's packets
        // (which may come back a shorter way): the true path up to there, past both splits.
        assert!(on_path.len() >= 4, "{l}");
        assert_eq!(on_path, truth[..on_path.len()], "{l}");
    }
}

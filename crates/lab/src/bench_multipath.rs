//! `svctr-lab bench-multipath`: multipath discovery on the multipath lab (`--branches 2
//! --sub-branches 3`: r2 splits over b1 and b2, b1 again over c1..c3; 4 paths of 5 and 6
//! routers), ours against scamper's `tracelb` and Dublin traceroute, in one run.
//!
//! # Method
//!
//! **6. Multipath discovery** (`bench-multipath`). One lab; `--reps` runs of each tool,
//! interleaved run by run, in the client namespace, towards the server (IPv4, UDP probes
//! whose destination port is the flow identifier, as all three do by default):
//!
//! * ours: `service-traceroute trace --multipath -n --format json S` (confidence 0.95);
//! * scamper: `scamper -O json -c 'tracelb -P udp-dport -c 95' -i S` (the MDA, confidence
//!   95 %, its defaults otherwise: 250 ms between probes, 5 s timeout);
//! * Dublin traceroute: `dublin-traceroute -n 20 S` (20 flows, its default; it has no
//!   stopping rule, so no confidence), run in a temporary directory for its `trace.json`.
//!
//! Per run: wall time (spawn → exit), probes (packets the client's interface sent during the
//! run, the same count for every tool), and completeness against the lab's truth: the
//! addresses (routers by the interface they answer from, and the server) and the links
//! between them over every path (`Lab::all_paths_ip`). A run is *complete* when it has every
//! address and link, *false* if it reports one that does not exist. Addresses, not
//! (TTL, address) pairs: neither peer reports a node per TTL.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use svctr_lab::{Lab, LabConfig};

use crate::bench::{client_tx_packets, run_timed};

/// The arguments of `bench-multipath`.
pub(crate) struct MultipathArgs {
    pub(crate) tracer: PathBuf,
    pub(crate) reps: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Ours,
    Scamper,
    Dublin,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Ours => "service-traceroute trace --multipath",
            Tool::Scamper => "scamper tracelb -c 95",
            Tool::Dublin => "dublin-traceroute -n 20",
        }
    }
}

type Addrs = BTreeSet<IpAddr>;
type Links = BTreeSet<(IpAddr, IpAddr)>;

struct Sample {
    wall: f64,
    probes: u64,
    complete: bool,
    invented: bool,
    addrs: usize,
    links: usize,
}

fn ours(out: &str) -> Result<(Addrs, Links)> {
    let v: Value = serde_json::from_str(out).context("our JSON")?;
    let mut addrs = BTreeSet::new();
    for h in v["hops"].as_array().into_iter().flatten() {
        for n in h["nodes"].as_array().into_iter().flatten() {
            if let Some(a) = n["addr"].as_str().and_then(|a| a.parse().ok()) {
                addrs.insert(a);
            }
        }
    }
    let mut links = BTreeSet::new();
    for l in v["links"].as_array().into_iter().flatten() {
        let (Some(f), Some(t)) = (
            l["from"].as_str().and_then(|a| a.parse().ok()),
            l["to"].as_str().and_then(|a| a.parse().ok()),
        ) else {
            bail!("bad link {l}");
        };
        links.insert((f, t));
    }
    Ok((addrs, links))
}

/// scamper's tracelb JSON: nodes, each with `links`, an array of arrays of link objects whose
/// `addr` is the far end.
fn scamper(out: &str) -> Result<(Addrs, Links)> {
    let mut addrs = BTreeSet::new();
    let mut links = BTreeSet::new();
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).context("scamper JSON")?;
        if v["type"] != "tracelb" {
            continue;
        }
        for n in v["nodes"].as_array().into_iter().flatten() {
            let Some(from) = n["addr"].as_str().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            addrs.insert(from);
            for group in n["links"].as_array().into_iter().flatten() {
                for l in group.as_array().into_iter().flatten() {
                    if let Some(to) = l["addr"].as_str().and_then(|a| a.parse().ok()) {
                        addrs.insert(to);
                        links.insert((from, to));
                    }
                }
            }
        }
    }
    Ok((addrs, links))
}

/// Dublin traceroute's `trace.json`: per flow (destination port), its probes by TTL.
fn dublin(text: &str) -> Result<(Addrs, Links)> {
    let v: Value = serde_json::from_str(text).context("dublin-traceroute JSON")?;
    let mut addrs = BTreeSet::new();
    let mut links = BTreeSet::new();
    for hops in v["flows"].as_object().into_iter().flat_map(|m| m.values()) {
        let mut prev: Option<(u64, IpAddr)> = None;
        let mut seq: Vec<(u64, IpAddr)> = hops
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| {
                let ttl = h["sent"]["ip"]["ttl"].as_u64()?;
                let a = h["received"]["ip"]["src"].as_str()?.parse().ok()?;
                Some((ttl, a))
            })
            .collect();
        seq.sort();
        for (ttl, a) in seq {
            addrs.insert(a);
            if let Some((pt, pa)) = prev {
                if pt + 1 == ttl && pa != a {
                    links.insert((pa, a));
                }
            }
            prev = Some((ttl, a));
        }
    }
    Ok((addrs, links))
}

fn truth(lab: &Lab) -> (Addrs, Links) {
    let dst = IpAddr::V4(lab.server_addr());
    let mut addrs = BTreeSet::new();
    let mut links = BTreeSet::new();
    for p in lab.all_paths_ip(false) {
        let full: Vec<IpAddr> = p.into_iter().chain([dst]).collect();
        addrs.extend(full.iter().copied());
        links.extend(full.windows(2).map(|w| (w[0], w[1])));
    }
    (addrs, links)
}

fn one(lab: &Lab, tool: Tool, tracer: &Path, tmp: &Path) -> Result<Sample> {
    let dst = lab.server_addr().to_string();
    let cmd = match tool {
        Tool::Ours => {
            let mut c = lab.command(lab.client_ns(), &tracer.to_string_lossy());
            c.args(["trace", "--multipath", "-n", "--format", "json", &dst]);
            c
        }
        Tool::Scamper => {
            let mut c = lab.command(lab.client_ns(), "scamper");
            c.args(["-O", "json", "-c", "tracelb -P udp-dport -c 95", "-i", &dst]);
            c
        }
        Tool::Dublin => {
            let mut c = lab.command(lab.client_ns(), "dublin-traceroute");
            c.args(["-n", "20", &dst]).current_dir(tmp);
            c
        }
    };
    let before = client_tx_packets(lab)?;
    let run = run_timed(cmd, Duration::from_secs(300))?;
    let after = client_tx_packets(lab)?;
    if !run.status.success() {
        bail!(
            "{} failed ({}): {}",
            tool.name(),
            run.status,
            run.stderr.trim()
        );
    }
    let (addrs, links) = match tool {
        Tool::Ours => ours(&run.stdout)?,
        Tool::Scamper => scamper(&run.stdout)?,
        Tool::Dublin => {
            let path = tmp.join("trace.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let _ = std::fs::remove_file(&path);
            dublin(&text)?
        }
    };
    let (ta, tl) = truth(lab);
    Ok(Sample {
        wall: run.wall.as_secs_f64(),
        probes: after.saturating_sub(before),
        complete: ta.is_subset(&addrs) && tl.is_subset(&links),
        invented: !addrs.is_subset(&ta) || !links.is_subset(&tl),
        addrs: addrs.len(),
        links: links.len(),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Runs section 6 and returns its Markdown report.
pub(crate) fn run(args: &MultipathArgs, command_line: &str, stop: &AtomicBool) -> Result<String> {
    for (prog, pkg) in [
        ("scamper", "scamper"),
        ("dublin-traceroute", "dublin-traceroute"),
    ] {
        if !crate::bench::in_path(prog) {
            bail!("{prog} is not installed: apt-get install {pkg}");
        }
    }
    let lab = Lab::build(LabConfig {
        branches: 2,
        sub_branches: 3,
        ..LabConfig::default()
    })?;
    let tmp = std::env::temp_dir().join(format!("svctr-bench-multipath-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let tools = [Tool::Ours, Tool::Scamper, Tool::Dublin];
    let mut samples: Vec<Vec<Sample>> = tools.iter().map(|_| Vec::new()).collect();
    for rep in 0..args.reps {
        for (i, tool) in tools.iter().enumerate() {
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            let s = one(&lab, *tool, &args.tracer, &tmp)
                .with_context(|| format!("run {} of {}", rep + 1, tool.name()))?;
            samples[i].push(s);
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let (ta, tl) = truth(&lab);
    let mut out = String::new();
    crate::bench::header(&mut out, command_line, &args.tracer)?;
    let dublin = crate::bench::tool_output(std::process::Command::new("dpkg-query").args([
        "-W",
        "-f",
        "${Package} ${Version}",
        "dublin-traceroute",
    ]));
    writeln!(out, "* also: {dublin}\n")?;
    writeln!(
        out,
        "## 6. Multipath discovery (`svctr-lab bench-multipath`)\n"
    )?;
    writeln!(
        out,
        "* lab: 2 branches, b1 splits again over 3; truth: {} addresses, {} links, 4 paths of 5 and 6 routers; {} runs per tool, interleaved\n",
        ta.len(),
        tl.len(),
        args.reps
    )?;
    writeln!(
        out,
        "| tool | complete runs | runs reporting a false node or link | median probes | median wall time | probes vs ours | time vs ours | median addresses / links found |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    let ours_probes = median(samples[0].iter().map(|s| s.probes as f64).collect());
    let ours_wall = median(samples[0].iter().map(|s| s.wall).collect());
    for (tool, ss) in tools.iter().zip(&samples) {
        let probes = median(ss.iter().map(|s| s.probes as f64).collect());
        let wall = median(ss.iter().map(|s| s.wall).collect());
        let addrs = median(ss.iter().map(|s| s.addrs as f64).collect());
        let links = median(ss.iter().map(|s| s.links as f64).collect());
        writeln!(
            out,
            "| {} | {}/{} | {} | {probes:.0} | {} | {:.2}× | {:.0}× | {addrs:.0} / {links:.0} |",
            tool.name(),
            ss.iter().filter(|s| s.complete).count(),
            ss.len(),
            ss.iter().filter(|s| s.invented).count(),
            if wall < 1.0 {
                format!("{:.0} ms", wall * 1000.0)
            } else {
                format!("{wall:.1} s")
            },
            probes / ours_probes,
            wall / ours_wall
        )?;
    }
    Ok(out)
}

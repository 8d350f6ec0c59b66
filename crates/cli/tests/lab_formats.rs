//! End-to-end tests of the formats other programs read, each read by that program: the
//! `replies` rows loaded into a real ClickHouse engine (chdb) with the repository's table
//! and example queries, and a live flow's trace as a RIPE Atlas result read by
//! ripe.atlas.sagan. Ground truth is the lab's ECMP routing.
//!
//! They need root. Without root they are skipped with a message, unless `CI` is set: then
//! they fail, so they can never be skipped silently in CI.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{record, stderr, tracer_for};
use serde_json::Value;
use svctr_lab::{
    lab_test_guard, output_with_timeout, plan, run_checked, tcp_download_to, tcp_server_on, Lab,
    LabConfig, Proto, TcpDownload,
};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The Python of a tool the test scripts installed (`var`), or None where the test may be
/// skipped (not in CI).
fn python_of(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(p) => Some(p),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs scripts/test.sh, which installs {what} and sets {var}"
            );
            eprintln!("skipped: {var} is not set (scripts/test.sh sets it)");
            None
        }
    }
}

/// One local port per ECMP branch for TCP to `dst`: (port, branch), ports from `first` on.
fn port_per_branch(lab: &Lab, dst: SocketAddr, first: u16) -> Vec<(u16, usize)> {
    let IpAddr::V4(d) = dst.ip() else {
        panic!("IPv4 only")
    };
    let mut found: BTreeMap<usize, u16> = BTreeMap::new();
    for port in first..first + 200 {
        let k = lab
            .route_branch(Proto::Tcp, lab.client_addr(), port, d, dst.port())
            .expect("route get");
        found.entry(k).or_insert(port);
        if found.len() == lab.branches() {
            break;
        }
    }
    assert_eq!(found.len(), lab.branches(), "a port for every branch");
    found.into_iter().map(|(k, p)| (p, k)).collect()
}

/// Long downloads from the lab's server on these local ports, established.
fn downloads(lab: &Lab, dst: SocketAddr, ports: &[(u16, usize)]) -> Vec<TcpDownload> {
    ports
        .iter()
        .map(|&(p, _)| {
            let d = tcp_download_to(lab, dst, p, 50_000_000, true).expect("download");
            d.wait_established(secs(10)).expect("established");
            d
        })
        .collect()
}

/// `flow` tracing one live TCP flow: to `remote` from local port `port`, once.
fn flow_args<'a>(remote: &'a str, port: &'a str) -> Vec<&'a str> {
    vec![
        "flow",
        "-i",
        "eth0",
        "--tcp",
        "--remote",
        remote,
        "--local-port",
        port,
        "--count",
        "1",
        "--duration",
        "20",
    ]
}

/// The objects of one `type` that scamper's sc_warts2json reads in the warts output of a
/// successful run (kept in `file`).
fn warts_objects(out: &std::process::Output, file: &std::path::Path, kind: &str) -> Vec<Value> {
    assert!(out.status.success(), "{}", stderr(out));
    std::fs::write(file, &out.stdout).unwrap();
    let mut c = std::process::Command::new("sc_warts2json");
    c.arg(file);
    let read = output_with_timeout(&mut c, None, secs(30)).expect("sc_warts2json runs");
    assert!(read.status.success(), "sc_warts2json: {}", stderr(&read));
    String::from_utf8_lossy(&read.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("sc_warts2json's JSON"))
        .filter(|v| v["type"] == kind)
        .collect()
}

/// The rows of a successful `--format replies` run, each checked against the schema.
fn rows(out: &std::process::Output) -> Vec<Value> {
    assert!(out.status.success(), "{:?}: {}", out.status, stderr(out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(record::<Value>)
        .collect()
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// A trace's path as the trace_paths view writes it: per TTL in order, the answering
/// addresses sorted and joined by `|`, `*` for none; TTLs joined by spaces.
fn paths_of(rows: &[Value]) -> BTreeMap<String, String> {
    let mut hops: BTreeMap<String, BTreeMap<u64, BTreeSet<String>>> = BTreeMap::new();
    for r in rows {
        let set = hops
            .entry(text(&r["trace_id"]))
            .or_default()
            .entry(r["probe_ttl"].as_u64().unwrap())
            .or_default();
        if let Some(a) = r["reply_src_addr"].as_str() {
            set.insert(a.to_string());
        }
    }
    hops.into_iter()
        .map(|(id, ttls)| {
            let path: Vec<String> = ttls
                .values()
                .map(|s| {
                    if s.is_empty() {
                        "*".to_string()
                    } else {
                        s.iter().cloned().collect::<Vec<_>>().join("|")
                    }
                })
                .collect();
            (id, path.join(" "))
        })
        .collect()
}

/// Loads the rows into a fresh in-process ClickHouse with schema/clickhouse/replies.sql,
/// runs every query of schema/clickhouse/queries (and reads the trace_paths view), and
/// returns each one's rows by file name.
const CLICKHOUSE: &str = r#"
import glob, json, os, re, sys
from chdb import session
root, rows_file = sys.argv[1], sys.argv[2]
s = session.Session()
ddl = open(os.path.join(root, "schema/clickhouse/replies.sql")).read()
# Statements end with a semicolon at the end of a line; comments may hold semicolons.
for stmt in re.split(r";\s*$", ddl, flags=re.M):
    if re.sub(r"--[^\n]*", "", stmt).strip():
        s.query(stmt)
# As the documented clickhouse-client command loads them: JSON lines, columns by name,
# RFC 3339 times.
s.query("INSERT INTO replies SETTINGS date_time_input_format = 'best_effort' "
        "FORMAT JSONEachRow\n" + open(rows_file).read())
out = {"rows": json.loads(s.query("SELECT count() AS n FROM replies", "JSON").bytes())["data"],
       "trace_paths": json.loads(s.query(
           "SELECT toString(trace_id) AS trace_id, path FROM trace_paths", "JSON").bytes())["data"]}
for q in sorted(glob.glob(os.path.join(root, "schema/clickhouse/queries/*.sql"))):
    name = os.path.basename(q)[:-4]
    out[name] = json.loads(s.query(open(q).read(), "JSON").bytes())["data"]
print(json.dumps(out))
"#;

fn clickhouse(python: &str, rows: &[Value]) -> Value {
    let dir = std::env::temp_dir().join(format!("svctr-ch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("replies.jsonl");
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut py = std::process::Command::new(python);
    py.args(["-c", CLICKHOUSE, root, file.to_str().unwrap()]);
    let out = output_with_timeout(&mut py, None, secs(120)).expect("python runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "chdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the queries' JSON")
}

/// A monitor's rows of three flows on three branches and a repeated `trace` of one 5-tuple
/// across a route change, loaded into ClickHouse: the view rebuilds every trace's path, and
/// the example queries find the path changes (the branches and the route change), the flows
/// off the fresh flow's branch, and the per-hop RTTs, each equal to what the rows say and to
/// the lab's routing.
#[test]
fn replies_load_into_clickhouse_and_the_example_queries_answer() {
    let Some(_g) = lab_test_guard() else { return };
    let Some(python) = python_of("SVCTR_CHDB_PYTHON", "chdb") else {
        return;
    };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let server = SocketAddr::new(lab.server_addr().into(), 8080);
    let _srv = tcp_server_on(&lab, "0.0.0.0:8080".parse().unwrap(), 200_000).expect("server");
    let flows = port_per_branch(&lab, server, 42000);
    let _downloads = downloads(&lab, server, &flows);
    let service = format!("{}/32", lab.server_addr());
    // An iptoasn table of the lab: the client's half and the server's half are two ASes.
    let asn_dir = std::env::temp_dir().join(format!("svctr-asn-{}", std::process::id()));
    std::fs::create_dir_all(&asn_dir).unwrap();
    let asn_file = asn_dir.join("ip2asn-lab.tsv");
    std::fs::write(
        &asn_file,
        "198.18.0.0\t198.18.255.255\t64512\tZZ\tLAB-CLIENT-SIDE\n\
         198.19.0.0\t198.19.255.255\t64513\tZZ\tLAB-SERVER-SIDE\n",
    )
    .unwrap();
    let out = tracer_for(
        &lab,
        &[
            "monitor",
            "-i",
            "eth0",
            "--tcp",
            "--cidr",
            &service,
            "--count",
            "3",
            "--duration",
            "30",
            "--format",
            "replies",
            "--vantage",
            "vp-a",
            "--asn",
            asn_file.to_str().unwrap(),
        ],
        secs(60),
    );
    let _ = std::fs::remove_dir_all(&asn_dir);
    let mut all = rows(&out);
    assert_eq!(paths_of(&all).len(), 3, "three traces: {}", stderr(&out));
    // Each flow's rows: on its own branch's routers (the lab's truth), up to the server.
    for r in &all {
        assert_eq!(r["vantage"], "vp-a");
        assert_eq!(r["trace_type"], "flow-trace");
        assert_eq!(r["service"], service.as_str());
        let port = r["probe_src_port"].as_u64().unwrap() as u16;
        let k = flows.iter().find(|f| f.0 == port).expect("one of ours").1;
        let ttl = r["probe_ttl"].as_u64().unwrap() as usize;
        let truth = lab.branch_path_ip(k, false);
        assert_eq!(
            text(&r["reply_src_addr"]),
            truth[ttl - 1].to_string(),
            "{r}"
        );
        let side = if text(&r["reply_src_addr"]).starts_with("198.18.") {
            64512
        } else {
            64513
        };
        assert_eq!(r["reply_asn"], side, "{r}");
    }
    // One 5-tuple traced twice, r2 sending it down another branch in between.
    let sport = 43000u16;
    let IpAddr::V4(s4) = server.ip() else {
        unreachable!()
    };
    let before = lab
        .route_branch(Proto::Tcp, lab.client_addr(), sport, s4, 8080)
        .unwrap();
    let trace = |lab: &Lab| {
        rows(&tracer_for(
            lab,
            &[
                "trace",
                "-n",
                "-T",
                "-p",
                "8080",
                "--sport",
                "43000",
                "-q",
                "2",
                "--format",
                "replies",
                "--vantage",
                "vp-b",
                &server.ip().to_string(),
            ],
            secs(60),
        ))
    };
    // Each run on its branch: the one r2 picks for it, then the one the new route names.
    let third_hop = |rows: &[Value]| -> BTreeSet<String> {
        rows.iter()
            .filter(|r| r["probe_ttl"] == 3)
            .map(|r| text(&r["reply_src_addr"]))
            .collect()
    };
    let first = trace(&lab);
    let hop3 = |k: usize| BTreeSet::from([lab.branch_path_ip(k, false)[2].to_string()]);
    assert_eq!(third_hop(&first), hop3(before));
    all.extend(first);
    let after = before % lab.branches() + 1;
    let r2 = lab.router_ns("r2").unwrap().to_string();
    let via = std::net::Ipv4Addr::from(u32::from(plan::r2_branch_net(after)) + 2).to_string();
    let dev = format!("b{after}");
    let mut ip = lab.command(&r2, "ip");
    ip.args([
        "route",
        "replace",
        plan::SERVER_HALF,
        "via",
        &via,
        "dev",
        &dev,
    ]);
    run_checked(&mut ip, None, secs(10)).expect("route change");
    let second = trace(&lab);
    assert_eq!(third_hop(&second), hop3(after));
    all.extend(second);

    let paths = paths_of(&all);
    assert_eq!(paths.len(), 5);
    let ch = clickhouse(&python, &all);
    assert_eq!(ch["rows"][0]["n"], all.len(), "{ch}");
    // The view: every trace's path, as the rows make it.
    let view: BTreeMap<String, String> = ch["trace_paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (text(&t["trace_id"]), text(&t["path"])))
        .collect();
    assert_eq!(view, paths);
    // Path changes, per destination of a service: the monitor's three flows took three
    // branches (two changes), and the trace's two runs the route change (one).
    let by_service: BTreeMap<String, (u64, u64)> = ch["path_changes"]
        .as_array()
        .unwrap()
        .iter()
        .fold(BTreeMap::new(), |mut m, r| {
            let e = m.entry(text(&r["service"])).or_insert((0, 0));
            e.0 += text(&r["traces"]).parse::<u64>().unwrap();
            e.1 += text(&r["path_changes"]).parse::<u64>().unwrap();
            m
        });
    let want = BTreeMap::from([(String::new(), (2, 1)), (service.clone(), (3, 2))]);
    assert_eq!(by_service, want, "{}", ch["path_changes"]);
    // Flows off the fresh flow's path: of the monitor's three flows on three branches, the
    // two that are not the last traced; the trace's one flow is its own fresh flow.
    let listed: BTreeSet<u64> = ch["differs_from_fresh"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["vantage"], "vp-a", "{r}");
            assert_eq!(r["service"], service.as_str());
            text(&r["source_port"]).parse().unwrap()
        })
        .collect();
    let latest = all
        .iter()
        .filter(|r| r["vantage"] == "vp-a")
        .max_by_key(|r| text(&r["trace_start"]))
        .unwrap()["probe_src_port"]
        .as_u64()
        .unwrap();
    let others: BTreeSet<u64> = flows
        .iter()
        .map(|f| u64::from(f.0))
        .filter(|&p| p != latest)
        .collect();
    assert_eq!(listed, others, "{}", ch["differs_from_fresh"]);
    // Per-hop RTTs: counts, lower medians and maxima of the rows.
    let mut rtts: BTreeMap<(String, u64, String), Vec<f64>> = BTreeMap::new();
    for r in &all {
        if let (Some(a), Some(rtt)) = (r["reply_src_addr"].as_str(), r["rtt_ms"].as_f64()) {
            let key = (
                text(&r["vantage"]),
                r["probe_ttl"].as_u64().unwrap(),
                a.to_string(),
            );
            rtts.entry(key).or_default().push(rtt);
        }
    }
    let got = ch["hop_rtt"].as_array().unwrap();
    assert_eq!(got.len(), rtts.len(), "{}", ch["hop_rtt"]);
    for g in got {
        let key = (
            text(&g["vantage"]),
            g["probe_ttl"].as_u64().unwrap(),
            text(&g["hop"]),
        );
        let mut v = rtts[&key].clone();
        v.sort_by(f64::total_cmp);
        assert_eq!(text(&g["replies"]), v.len().to_string(), "{g}");
        let close = |x: &Value, want: f64| (x.as_f64().unwrap() - want).abs() < 1e-9;
        assert!(
            close(&g["median_rtt_ms"], v[(v.len() - 1) / 2]),
            "{g}: {v:?}"
        );
        assert!(close(&g["max_rtt_ms"], v[v.len() - 1]), "{g}: {v:?}");
    }
}

/// A live flow's trace as a RIPE Atlas result (`flow --format atlas`), read by Atlas's own
/// parser: the hops are the flow's branch's routers.
#[test]
fn a_flows_trace_as_atlas_is_read_by_ripe_atlas_sagan() {
    let Some(_g) = lab_test_guard() else { return };
    let Some(python) = python_of("SVCTR_SAGAN_PYTHON", "ripe.atlas.sagan") else {
        return;
    };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let server = SocketAddr::new(lab.server_addr().into(), 8080);
    let _srv = tcp_server_on(&lab, "0.0.0.0:8080".parse().unwrap(), 200_000).expect("server");
    let flows = port_per_branch(&lab, server, 44000);
    let _downloads = downloads(&lab, server, &flows[..1]);
    let (port, k) = flows[0];
    let (remote, port_s) = (server.to_string(), port.to_string());
    let mut args = flow_args(&remote, &port_s);
    args.extend(["--format", "atlas"]);
    let out = tracer_for(&lab, &args, secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    const SAGAN: &str = r#"
import json, sys
from ripe.atlas.sagan import TracerouteResult
for line in sys.stdin:
    r = TracerouteResult(json.loads(line), on_malformation=TracerouteResult.ACTION_FAIL)
    print(json.dumps({"protocol": r.protocol, "dst": r.destination_address,
                      "src": r.source_address, "paths": r.ip_path, "af": r.af,
                      "reached": r.destination_ip_responded}))
"#;
    let mut py = std::process::Command::new(&python);
    py.args(["-c", SAGAN]);
    let read = output_with_timeout(&mut py, Some(&line), secs(60)).expect("python runs");
    assert!(
        read.status.success(),
        "sagan: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    let sagan: Value = serde_json::from_slice(&read.stdout).expect("one result");
    assert_eq!(sagan["protocol"], "TCP");
    assert_eq!(sagan["af"], 4);
    assert_eq!(sagan["dst"], lab.server_addr().to_string());
    assert_eq!(sagan["src"], lab.client_addr().to_string());
    // The flow's trace stops one short of the server (its distance is known from the
    // server's packets), so the destination did not answer a probe: every hop is a router
    // of the flow's branch.
    assert_eq!(sagan["reached"], false);
    let truth = lab.branch_path_ip(k, false);
    let paths = sagan["paths"].as_array().unwrap();
    assert_eq!(paths.len(), truth.len(), "{sagan}");
    for (hop, want) in paths.iter().zip(&truth) {
        for a in hop.as_array().unwrap() {
            assert_eq!(text(a), want.to_string(), "{sagan}");
        }
    }
}

/// What tshark reads in a packet file: (time, source, TTL or hop limit) per packet, the
/// outer header's (an ICMP error's quoted header comes second).
fn tshark(file: &std::path::Path) -> Vec<(f64, IpAddr, u8)> {
    let mut c = std::process::Command::new("tshark");
    c.args(["-n", "-r"]).arg(file).args([
        "-T",
        "fields",
        "-E",
        "separator=;",
        "-e",
        "frame.time_epoch",
        "-e",
        "ip.src",
        "-e",
        "ipv6.src",
        "-e",
        "ip.ttl",
        "-e",
        "ipv6.hlim",
    ]);
    let out = output_with_timeout(&mut c, None, secs(60)).expect("tshark runs");
    assert!(out.status.success(), "tshark: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(';').collect();
            let first = |s: &str| s.split(',').next().unwrap_or("").to_string();
            let (src, ttl) = if f[1].is_empty() {
                (first(f[2]), first(f[4]))
            } else {
                (first(f[1]), first(f[3]))
            };
            (
                f[0].parse().expect("a time"),
                src.parse().unwrap_or_else(|_| panic!("a source in {l:?}")),
                ttl.parse().expect("a TTL"),
            )
        })
        .collect()
}

fn unix(t: &str) -> f64 {
    humantime::parse_rfc3339_weak(t)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `--pcap`: tshark reads the file, and it holds exactly the run's probes (from this host,
/// with the probes' TTLs) and its matched replies (from the routers and the destinations the
/// results name), each at a kernel time within its trace: for traceroutes of both families
/// and protocols, a multipath discovery of both families, and a live flow's trace.
#[test]
fn pcap_files_hold_exactly_the_runs_probes_and_replies_for_tshark() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let server = SocketAddr::new(lab.server_addr().into(), 8080);
    let _srv = tcp_server_on(&lab, "0.0.0.0:8080".parse().unwrap(), 200_000).expect("server");
    let dir = std::env::temp_dir().join(format!("svctr-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let v4 = lab.server_addr().to_string();
    let v6 = lab.server_addr6().to_string();
    let flows = port_per_branch(&lab, server, 45000);
    let _downloads = downloads(&lab, server, &flows[..1]);
    let flow_port = flows[0].0.to_string();
    let remote = server.to_string();
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("udp", vec!["trace", "-n", "-q", "2", "-U", &v4, &v6]),
        (
            "multipath",
            vec!["trace", "-n", "--multipath", "-U", &v4, &v6],
        ),
        (
            "tcp",
            vec!["trace", "-n", "-q", "3", "-T", "-p", "8080", &v4, &v6],
        ),
        ("flow", flow_args(&remote, &flow_port)),
    ];
    for (name, args) in runs {
        let file = dir.join(format!("{name}.pcap"));
        let mut a = args.clone();
        a.extend(["--format", "jsonl", "--pcap", file.to_str().unwrap()]);
        let out = tracer_for(&lab, &a, secs(60));
        assert!(out.status.success(), "{a:?}: {}", stderr(&out));
        let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(record::<Value>)
            .collect();
        let packets = tshark(&file);
        let ours = |ip: &IpAddr| *ip == lab.client_addr() || *ip == lab.client_addr6();
        let (probes, replies): (Vec<&(f64, IpAddr, u8)>, Vec<_>) =
            packets.iter().partition(|p| ours(&p.1));
        let sent: u64 = results
            .iter()
            .map(|r| r["probes_sent"].as_u64().unwrap())
            .sum();
        let answered: u64 = results.iter().map(|r| r["replies"].as_u64().unwrap()).sum();
        assert_eq!(probes.len() as u64, sent, "{name}: probes");
        assert_eq!(replies.len() as u64, answered, "{name}: replies");
        assert!(
            probes.iter().all(|p| p.2 <= 32),
            "{name}: probes' TTLs {probes:?}"
        );
        // The replies came from the hops the results name, as many from each.
        let mut named: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for r in &results {
            // A traceroute's and a flow's hops hold probes; a multipath result's hops hold
            // nodes, each with its probes.
            for h in r["hops"].as_array().unwrap() {
                let nodes = h
                    .get("nodes")
                    .map_or_else(|| vec![h.clone()], |n| n.as_array().unwrap().clone());
                for p in nodes.iter().flat_map(|n| n["probes"].as_array().unwrap()) {
                    if let Some(a) = p["addr"].as_str() {
                        *named.entry(a.parse().unwrap()).or_default() += 1;
                    }
                }
            }
        }
        let mut seen: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for p in &replies {
            *seen.entry(p.1).or_default() += 1;
        }
        if name == "multipath" {
            // A discovery's graph keeps the probes that placed its nodes; the replies to its
            // per-packet checks are counted in `replies` but not listed: the same repliers,
            // each at least as often as the graph lists it.
            assert!(
                seen.keys().eq(named.keys()) && named.iter().all(|(a, n)| seen[a] >= *n),
                "{name}: repliers {seen:?} against {named:?}"
            );
        } else {
            assert_eq!(seen, named, "{name}: repliers");
        }
        // Every packet at a time within the run's traces (kernel times, in the same clock).
        let first = results
            .iter()
            .map(|r| unix(&text(&r["start"])))
            .fold(f64::MAX, f64::min);
        let last = results
            .iter()
            .map(|r| unix(&text(&r["end"])))
            .fold(0.0, f64::max);
        for p in &packets {
            assert!(
                p.0 >= first - 0.001 && p.0 <= last + 0.001,
                "{name}: {p:?} not in {first}..{last}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `trace --format warts`, read back by scamper's own sc_warts2json and sc_wartsdump: every
/// trace's method, endpoints and stop reason, and every reply on the routers of the branch
/// the lab's ECMP router picks for that 5-tuple (the destination last), for UDP, TCP and
/// ICMP over IPv4 and IPv6 in one file per protocol; and a live flow's trace
/// (`flow --format warts`) on its branch.
#[test]
fn warts_files_are_read_by_scamper_with_the_labs_hops() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let dir = std::env::temp_dir().join(format!("svctr-warts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dsts: [IpAddr; 2] = [lab.server_addr().into(), lab.server_addr6().into()];
    let cases: [(&str, Proto, Vec<&str>, u16, &str); 3] = [
        (
            "udp",
            Proto::Udp,
            vec!["-U", "--sport", "46001"],
            33434,
            "udp-paris",
        ),
        (
            "tcp",
            Proto::Tcp,
            vec!["-T", "-p", "8080", "--sport", "46002"],
            8080,
            "tcp",
        ),
        ("icmp", Proto::Icmp, vec!["-I"], 0, "icmp-echo-paris"),
    ];
    for (name, proto, flags, dport, method) in cases {
        let file = dir.join(format!("{name}.warts"));
        let (v4, v6) = (dsts[0].to_string(), dsts[1].to_string());
        let mut args = vec!["trace", "-n", "-q", "2", "--format", "warts"];
        args.extend(&flags);
        args.extend([v4.as_str(), v6.as_str()]);
        let out = tracer_for(&lab, &args, secs(60));
        let traces = warts_objects(&out, &file, "trace");
        assert_eq!(traces.len(), 2, "{name}: {traces:?}");
        for t in &traces {
            let dst: IpAddr = text(&t["dst"]).parse().unwrap();
            let src = lab.client_addr_for(dst);
            assert_eq!(t["method"], method, "{name}");
            assert_eq!(text(&t["src"]), src.to_string(), "{name}");
            assert_eq!(t["stop_reason"], "COMPLETED", "{name}: {t}");
            let sport = t["sport"].as_u64().unwrap_or(0) as u16;
            let k = lab
                .route_branch_ip(proto, src, sport, dst, dport, 0)
                .expect("the lab's branch");
            let mut truth = lab.branch_path_ip(k, dst.is_ipv6());
            truth.push(dst);
            assert_eq!(t["hop_count"], truth.len(), "{name} {dst}: {t}");
            let hops = t["hops"].as_array().unwrap();
            // Both probes of every TTL answered, each by the router of that TTL.
            assert_eq!(hops.len(), 2 * truth.len(), "{name} {dst}: {t}");
            for h in hops {
                let ttl = h["probe_ttl"].as_u64().unwrap() as usize;
                assert_eq!(
                    text(&h["addr"]),
                    truth[ttl - 1].to_string(),
                    "{name} {dst}: {h}"
                );
                let rtt = h["rtt"].as_f64().unwrap();
                assert!(rtt > 0.0 && rtt < 1000.0, "{h}");
            }
        }
        let mut c = std::process::Command::new("sc_wartsdump");
        c.arg(&file);
        let dump = output_with_timeout(&mut c, None, secs(30)).expect("sc_wartsdump runs");
        assert!(dump.status.success(), "sc_wartsdump: {}", stderr(&dump));
        let dump = String::from_utf8_lossy(&dump.stdout);
        for d in dsts {
            assert!(
                dump.contains(&d.to_string()),
                "{name}: sc_wartsdump names {d}"
            );
        }
    }
    // A live flow's trace (`flow --format warts`): TCP, the flow's ports, every probe of
    // every TTL answered by its branch's router, up to the one before the server.
    let server = SocketAddr::new(lab.server_addr().into(), 8080);
    let _srv = tcp_server_on(&lab, "0.0.0.0:8080".parse().unwrap(), 200_000).expect("server");
    let flows = port_per_branch(&lab, server, 46100);
    let _downloads = downloads(&lab, server, &flows[..1]);
    let (port, k) = flows[0];
    let (remote, port_s) = (server.to_string(), port.to_string());
    let mut args = flow_args(&remote, &port_s);
    args.extend(["--format", "warts"]);
    let out = tracer_for(&lab, &args, secs(60));
    let t = warts_objects(&out, &dir.join("flow.warts"), "trace")
        .pop()
        .expect("the flow's trace");
    assert_eq!(t["method"], "tcp");
    assert_eq!(t["sport"], port);
    assert_eq!(t["dport"], 8080);
    assert_eq!(t["stop_reason"], "HOPLIMIT", "{t}");
    let truth = lab.branch_path_ip(k, false);
    let hops = t["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 3 * truth.len(), "{t}");
    for h in hops {
        let ttl = h["probe_ttl"].as_u64().unwrap() as usize;
        assert_eq!(text(&h["addr"]), truth[ttl - 1].to_string(), "{h}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `trace --multipath --format replies`: a row for every probe of the discovery's graph, each
/// with its own ports, and every answer the router of the branch the lab's ECMP router picks
/// for that probe's 5-tuple (the destination last), for UDP (the destination port varies) and
/// TCP (the source port varies).
#[test]
fn multipath_rows_follow_each_probes_flow_on_its_branch() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let dst = lab.server_addr();
    let dst_s = dst.to_string();
    for (proto, flags) in [
        (Proto::Udp, vec!["-U"]),
        (Proto::Tcp, vec!["-T", "-p", "8080"]),
    ] {
        let mut args = vec!["trace", "-n", "--multipath", "--format", "replies"];
        args.extend(&flags);
        args.push(&dst_s);
        let out = tracer_for(&lab, &args, secs(120));
        let rows = rows(&out);
        assert!(rows.len() >= 20, "{proto:?}: {} rows", rows.len());
        let mut branches = BTreeSet::new();
        let mut cache: BTreeMap<(u16, u16), usize> = BTreeMap::new();
        for r in &rows {
            assert_eq!(r["trace_type"], "multipath", "{r}");
            assert!(r["probe_flow"].is_u64(), "{r}");
            let Some(from) = r["reply_src_addr"].as_str() else {
                continue;
            };
            let sport = r["probe_src_port"].as_u64().expect("a port") as u16;
            let dport = r["probe_dst_port"].as_u64().expect("a port") as u16;
            let k = *cache.entry((sport, dport)).or_insert_with(|| {
                lab.route_branch(proto, lab.client_addr(), sport, dst, dport)
                    .expect("the lab's branch")
            });
            branches.insert(k);
            let ttl = r["probe_ttl"].as_u64().unwrap() as usize;
            let mut truth = lab.branch_path_ip(k, false);
            truth.push(dst.into());
            assert_eq!(from, truth[ttl - 1].to_string(), "{proto:?}: {r}");
        }
        assert_eq!(
            branches.len(),
            lab.branches(),
            "{proto:?}: every branch found"
        );
    }
}

/// `trace --multipath --format warts`: scamper's tracelb object, read back by sc_warts2json,
/// holds exactly the lab's nodes and links toward the server (every ECMP branch), for UDP
/// (the destination port varies) and TCP (the source port varies).
#[test]
fn multipath_warts_is_scampers_tracelb_with_the_labs_graph() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let dst: IpAddr = lab.server_addr().into();
    let dst_s = dst.to_string();
    let mut want_nodes = BTreeSet::new();
    let mut want_links = BTreeSet::new();
    for p in lab.all_paths_ip(false) {
        let full: Vec<IpAddr> = p.into_iter().chain([dst]).collect();
        want_nodes.extend(full.iter().copied());
        want_links.extend(full.windows(2).map(|w| (w[0], w[1])));
    }
    let dir = std::env::temp_dir().join(format!("svctr-tracelb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, flags, method) in [
        ("udp", vec!["-U"], "udp-dport"),
        ("tcp", vec!["-T", "-p", "8080"], "tcp-sport"),
    ] {
        let mut args = vec!["trace", "-n", "--multipath", "--format", "warts"];
        args.extend(&flags);
        args.push(&dst_s);
        let out = tracer_for(&lab, &args, secs(120));
        let lb = warts_objects(&out, &dir.join(format!("{name}.warts")), "tracelb")
            .pop()
            .expect("a tracelb object");
        assert_eq!(lb["method"], method, "{name}");
        assert_eq!(lb["src"], lab.client_addr().to_string());
        assert_eq!(lb["dst"], dst_s);
        let (mut nodes, mut links) = (BTreeSet::new(), BTreeSet::new());
        for n in lb["nodes"].as_array().unwrap() {
            let from: IpAddr = text(&n["addr"]).parse().unwrap();
            nodes.insert(from);
            for set in n["links"].as_array().unwrap() {
                for l in set.as_array().unwrap() {
                    let to: IpAddr = text(&l["addr"]).parse().unwrap();
                    // scamper lists only nodes with links out: the destination is a target.
                    nodes.insert(to);
                    links.insert((from, to));
                    for p in l["probes"].as_array().unwrap() {
                        for r in p["replies"].as_array().unwrap() {
                            let rtt = r["rtt"].as_f64().unwrap();
                            assert!(rtt > 0.0 && rtt < 1000.0, "{r}");
                        }
                    }
                }
            }
        }
        assert_eq!(nodes, want_nodes, "{name}: nodes");
        assert_eq!(links, want_links, "{name}: links");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

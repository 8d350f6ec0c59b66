//! End-to-end tests of reverse traceroute in the namespace lab: our server in the server's
//! namespace, our client in the client's, the path back checked against the return ECMP
//! stage's ground truth (r3 splits the traffic toward the client over the branches).
//! Root only (see `svctr_lab::lab_test_guard`).

mod common;

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{stderr, tracer_for, TRACER};
use svctr_core::reverse::{ReverseResult, ReverseStop};
use svctr_lab::{lab_test_guard, Lab, LabConfig, Proto};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// `reverse-server` running in the server's namespace; stopped (SIGTERM) when dropped. Its
/// output is read as it comes (a full pipe would stall it).
struct Server {
    child: Option<Child>,
    stderr: mpsc::Receiver<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    fn start(lab: &Lab, extra: &[&str]) -> Self {
        let mut c = lab.command(lab.server_ns(), TRACER);
        c.args(["reverse-server", "--iface", lab.server_iface()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("reverse-server starts");
        let out = child.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(out), &mut s);
            s
        });
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let s = Self {
            child: Some(child),
            stderr: rx,
            stdout: Some(stdout),
        };
        let deadline = Instant::now() + SECS(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match s.stderr.recv_timeout(left) {
                Ok(l) if l.contains("serving on") => return s,
                Ok(_) => {}
                Err(e) => panic!("reverse-server did not start: {e}"),
            }
        }
    }

    /// Stops it; returns its stdout (the session log) and the rest of its stderr.
    fn stop(mut self) -> (String, String) {
        let (Some(mut child), Some(stdout)) = (self.child.take(), self.stdout.take()) else {
            return Default::default();
        };
        let stderr = &self.stderr;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + SECS(10);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let out = stdout.join().unwrap_or_default();
        let mut err = String::new();
        while let Ok(l) = stderr.recv_timeout(Duration::from_millis(200)) {
            err.push_str(&l);
            err.push('\n');
        }
        (out, err)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn reverse_json(lab: &Lab, args: &[&str]) -> ReverseResult {
    let mut all = vec!["reverse", "--format", "json"];
    all.extend_from_slice(args);
    let out = tracer_for(lab, &all, SECS(60));
    assert!(out.status.success(), "{all:?}: {}", stderr(&out));
    common::record(&out.stdout)
}

/// Per TTL the one address that answered (every probe of a TTL the same).
fn hop_addrs(r: &ReverseResult) -> Vec<IpAddr> {
    r.graph
        .hops
        .iter()
        .map(|h| {
            let addrs: Vec<IpAddr> = h.nodes.iter().filter_map(|n| n.addr).collect();
            assert_eq!(addrs.len(), 1, "TTL {}: {addrs:?}", h.ttl);
            assert!(
                h.nodes.iter().all(|n| n.addr.is_some()),
                "TTL {}: a probe unanswered",
                h.ttl
            );
            addrs[0]
        })
        .collect()
}

/// The lab with asymmetric routing (out through b1..b3, back through a stage of its own,
/// d1..d3): UDP, TCP and ICMP, IPv4 and IPv6, several flow values: every hop of the way back
/// equals the return stage's truth (IPv4: r3's `ip route get` for the probe's 5-tuple; IPv6:
/// the dJ that forwarded the probes, counted there), and the trace stops at the client. Before the server runs, the kernel answers the presence check as a ping: exit 1
/// with the reason; while it runs, ordinary pings are still answered and the kernel's own
/// answers to requests are dropped (the server's nftables counter says so); on SIGTERM the
/// table is gone.
#[test]
fn the_way_back_equals_the_return_stages_truth() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig {
        return_branches: 3,
        ..LabConfig::default()
    })
    .expect("lab");
    lab.install_return_observer().expect("observer");
    let server4 = lab.server_addr().to_string();
    let server6 = lab.server_addr6().to_string();
    // No server yet: the kernel answers the presence check as a plain ping.
    let out = tracer_for(&lab, &["reverse", &server4], SECS(30));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not run reverse traceroute"),
        "{}",
        stderr(&out)
    );
    let server = Server::start(&lab, &[]);
    let mut branches_seen = std::collections::BTreeSet::new();
    for (proto, flag) in [(Proto::Udp, "-U"), (Proto::Tcp, "-T"), (Proto::Icmp, "-I")] {
        for flow in [4000u16, 4001, 4002, 4003] {
            // IPv4: the exact way back.
            let f = flow.to_string();
            let r = reverse_json(&lab, &[flag, "--flow", &f, &server4]);
            assert_eq!(r.stop_reason, ReverseStop::Reached, "{proto:?} {flow}");
            let (sport, dport) = match proto {
                Proto::Icmp => (0, 0),
                _ => (1021, flow),
            };
            let k = lab.reverse_branch_v4(proto, sport, dport).expect("truth");
            branches_seen.insert(k);
            assert_eq!(
                hop_addrs(&r),
                lab.reverse_path_ip(k, false),
                "{proto:?} flow {flow}: the way back through b{k}"
            );
            assert_eq!(r.source, lab.server_addr());
            assert_eq!(r.destination, lab.client_addr());
            assert!(r.graph.hops.iter().all(|h| h.nodes[0].probes.len() == 3));
            // IPv6: the way back the probes' own packets took (counted on d1..d3).
            let before = lab.return_probe_counts().expect("counts");
            let r = reverse_json(&lab, &["-6", flag, "--flow", &f, &server6]);
            let after = lab.return_probe_counts().expect("counts");
            assert_eq!(r.stop_reason, ReverseStop::Reached, "v6 {proto:?} {flow}");
            let used: Vec<usize> = (0..after.len())
                .filter(|&j| after[j] > before[j])
                .map(|j| j + 1)
                .collect();
            assert_eq!(
                used.len(),
                1,
                "v6 {proto:?} flow {flow}: probes through {used:?}"
            );
            assert_eq!(
                hop_addrs(&r),
                lab.reverse_path_ip(used[0], true),
                "v6 {proto:?} flow {flow}: the way back through d{}",
                used[0]
            );
        }
    }
    // UDP and TCP flows spread over the return stage (ICMP over IPv4 hashes addresses only).
    assert!(branches_seen.len() >= 2, "{branches_seen:?}");
    // The way out does not go through the return stage: a forward trace meets a bK.
    let out = tracer_for(&lab, &["trace", "-n", "-q", "1", &server4], SECS(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        (1..=lab.branches()).any(|k| text.contains(&format!(" 198.18.1{k}.2 "))),
        "{text}"
    );
    assert!(!text.contains(" 198.18.8"), "{text}");
    // Ordinary pings are answered by the kernel still.
    lab.ping(lab.client_ns(), lab.server_addr().into(), SECS(2))
        .expect("a plain ping is answered while the server runs");
    lab.ping(lab.client_ns(), lab.server_addr6().into(), SECS(2))
        .expect("a plain IPv6 ping is answered while the server runs");
    // The requests never reached the kernel, which would have answered them as pings (nft
    // prints code 1 by its ICMP name: host-unreachable, admin-prohibited for ICMPv6).
    let mut c = lab.command(lab.server_ns(), "nft");
    c.args(["list", "ruleset"]);
    let rules = svctr_lab::output_with_timeout(&mut c, None, SECS(10)).expect("nft");
    let rules = String::from_utf8_lossy(&rules.stdout).to_string();
    let dropped: u64 = rules
        .lines()
        .filter(|l| l.contains("echo-request") && l.contains("drop"))
        .filter_map(svctr_lab::nft_rule_packets)
        .sum();
    assert!(dropped >= 24 * 2, "{rules}");
    let (log, err) = server.stop();
    assert!(
        log.contains("session created: udp probe, flow 4000"),
        "{log}"
    );
    assert!(log.contains("probe answer received from"), "{log}");
    assert!(log.contains("presence check (TTL 0) answered"), "{log}");
    assert!(err.contains("stopped; counters"), "{err}");
    let mut c = lab.command(lab.server_ns(), "nft");
    c.args(["list", "tables"]);
    let tables = svctr_lab::output_with_timeout(&mut c, None, SECS(10)).expect("nft");
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("svctr_"),
        "the server's table is removed on exit"
    );
}

/// `--two-way` in the asymmetric lab (out through b1..b3, back through d1..d2): one result
/// with both directions, each equal to its truth (forward: r2's choice for the Paris probes'
/// 5-tuple; back: r3's for the reverse probes'), in text, JSON and DOT (one cluster per
/// direction).
#[test]
fn two_way_holds_both_directions_each_equal_to_its_truth() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig {
        return_branches: 2,
        ..LabConfig::default()
    })
    .expect("lab");
    let server = Server::start(&lab, &[]);
    let s4 = lab.server_addr().to_string();
    for (proto, flag, flow) in [(Proto::Udp, "-U", 5000u16), (Proto::Tcp, "-T", 8080)] {
        let f = flow.to_string();
        let out = tracer_for(
            &lab,
            &[
                "reverse",
                "--two-way",
                "--format",
                "json",
                flag,
                "--flow",
                &f,
                &s4,
            ],
            SECS(60),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let r: svctr_core::reverse::TwoWayResult = common::record(&out.stdout);
        let sport = r.forward.source_port.expect("a source port");
        let mut want = lab
            .expected_path_ip(
                proto,
                lab.client_addr().into(),
                lab.server_addr().into(),
                sport,
                flow,
                0,
            )
            .expect("forward truth");
        want.push(lab.server_addr().into());
        let fwd: Vec<IpAddr> = r
            .forward
            .graph
            .hops
            .iter()
            .map(|h| h.nodes[0].addr.expect("answered"))
            .collect();
        assert_eq!(fwd, want, "{proto:?}: forward");
        assert_eq!(r.forward.graph.links.len(), want.len() - 1);
        let k = lab
            .reverse_branch_v4(proto, 1021, flow)
            .expect("reverse truth");
        assert_eq!(
            hop_addrs(&r.reverse),
            lab.reverse_path_ip(k, false),
            "{proto:?}: back"
        );
    }
    // The same as rows (`--format replies`): the way out as a traceroute's rows, the way
    // back as rows of probes from the server, each answer the truth's.
    let out = tracer_for(
        &lab,
        &[
            "reverse",
            "--two-way",
            "--format",
            "replies",
            "-U",
            "--flow",
            "5000",
            &s4,
        ],
        SECS(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(common::record)
        .collect();
    let (fwd, back): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r["trace_type"] == "traceroute");
    assert!(!fwd.is_empty() && !back.is_empty(), "{rows:?}");
    let sport = fwd[0]["probe_src_port"].as_u64().expect("a source port") as u16;
    let mut want = lab
        .expected_path_ip(
            Proto::Udp,
            lab.client_addr().into(),
            lab.server_addr().into(),
            sport,
            5000,
            0,
        )
        .expect("forward truth");
    want.push(lab.server_addr().into());
    let back_truth = lab.reverse_path_ip(
        lab.reverse_branch_v4(Proto::Udp, 1021, 5000)
            .expect("reverse truth"),
        false,
    );
    for (rows, truth, from) in [
        (&fwd, &want, lab.client_addr().to_string()),
        (&back, &back_truth, s4.clone()),
    ] {
        for r in rows {
            assert_eq!(r["probe_src_addr"], from.as_str(), "{r}");
            let ttl = r["probe_ttl"].as_u64().unwrap() as usize;
            assert_eq!(r["reply_src_addr"], truth[ttl - 1].to_string(), "{r}");
        }
    }
    assert!(back
        .iter()
        .all(|r| r["trace_type"] == "reverse" && r["probe_flow"] == 5000));
    // Text: both sections, each with its stop line; DOT: a cluster per direction.
    let out = tracer_for(&lab, &["reverse", "--two-way", "-I", &s4], SECS(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.starts_with("forward: traceroute to"), "{text}");
    assert!(
        text.contains("\nreverse: reverse traceroute from"),
        "{text}"
    );
    assert!(text.contains("stop: reached this host"), "{text}");
    // Without -n the hops are named (the lab's hosts files): r4 answers first on the way back.
    let reverse_part = text.split("\nreverse: ").nth(1).unwrap_or_default();
    assert!(
        reverse_part.contains(" 1  r4.lab.test (198.19.1.1)"),
        "{reverse_part}"
    );
    let out = tracer_for(
        &lab,
        &["reverse", "--two-way", "--format", "dot", &s4],
        SECS(60),
    );
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(dot.contains("FORWARD") && dot.contains("REVERSE"), "{dot}");
    let mut c = lab.command(lab.client_ns(), "dot");
    c.arg("-Tsvg");
    let svg = svctr_lab::output_with_timeout(&mut c, Some(&dot), SECS(30)).expect("graphviz");
    assert!(
        svg.status.success(),
        "{}",
        String::from_utf8_lossy(&svg.stderr)
    );
    let _ = server.stop();
}

/// The shipped systemd unit's capabilities are enough and each is needed: the server runs as
/// an unprivileged user (65534) with exactly the unit's `AmbientCapabilities` and answers a
/// reverse trace; without either capability it refuses to start, in one line, exit 2.
#[test]
fn the_server_runs_with_the_units_capabilities_and_no_more() {
    let Some(_g) = lab_test_guard() else { return };
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dist/service-traceroute-reverse@.service"
    ))
    .expect("the unit file");
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect();
    assert_eq!(caps, ["net_raw", "net_admin"]);
    let lab = Lab::build(LabConfig::default()).expect("lab");
    // A copy the unprivileged user can run wherever the checkout is (its directories may be
    // closed to others).
    struct TempDir(std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = std::env::temp_dir().join(format!("svctr-caps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _cleanup = TempDir(dir.clone());
    let bin = dir.join("service-traceroute");
    std::fs::copy(TRACER, &bin).expect("copy the binary");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = bin.to_string_lossy().to_string();
    let setpriv = |caps: &[String]| -> std::process::Command {
        let set = caps.iter().map(|c| format!(",+{c}")).collect::<String>();
        let mut c = lab.command(lab.server_ns(), "setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &format!("--inh-caps=-all{set}"),
            &format!("--ambient-caps=-all{set}"),
            &format!("--bounding-set=-all{set}"),
            &bin,
            "reverse-server",
            "--iface",
            lab.server_iface(),
        ]);
        c
    };
    for missing in 0..caps.len() {
        let fewer: Vec<String> = caps
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != missing)
            .map(|(_, c)| c.clone())
            .collect();
        let out =
            svctr_lab::output_with_timeout(&mut setpriv(&fewer), None, SECS(20)).expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "without {}: {err}",
            caps[missing]
        );
        assert!(err.contains("needs root or the capabilities"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let mut c = setpriv(&caps);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("setpriv");
    let err = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(err).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(first.contains("serving on"), "{first}");
    let out = tracer_for(
        &lab,
        &[
            "reverse",
            "--format",
            "json",
            "-T",
            &lab.server_addr().to_string(),
        ],
        SECS(60),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: ReverseResult = common::record(&out.stdout);
    assert_eq!(r.stop_reason, ReverseStop::Reached);
}

/// Packet counters of an nftables table, by the comment of each rule.
fn nft_counters(lab: &Lab, ns: &str, table: &str) -> std::collections::BTreeMap<String, u64> {
    let mut c = lab.command(ns, "nft");
    c.args(["list", "table", "ip", table]);
    let out = svctr_lab::output_with_timeout(&mut c, None, SECS(10)).expect("nft");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let n = svctr_lab::nft_rule_packets(l)?;
            let name = l.split("comment \"").nth(1)?.split('"').next()?.to_string();
            Some((name, n))
        })
        .collect()
}

/// The server under a flood: 1,000,000 requests from 10,000 spoofed sources, as fast as the
/// client's raw socket sends them. The session table never exceeds `-n` (its counters), memory
/// stays flat once the capture ring is in use, the probes that leave (counted on r4, the
/// router next to the server, not by the server) stay within the global rate, nothing leaves
/// for an address that sent no request, and pings are answered throughout.
#[test]
fn a_spoofed_flood_is_held_to_the_limits() {
    let Some(_g) = lab_test_guard() else { return };
    use svctr_wire::probe::{emit_icmp_message, IpFields, Ipv4Fields};
    let lab = Lab::build(LabConfig::default()).expect("lab");
    let (rate, burst, max) = (5000.0f64, 1000.0f64, 1000u64);
    let server = Server::start(
        &lab,
        &[
            "-n", "1000", "-t", "1", "--rate", "5000", "--burst", "1000", "--format", "jsonl",
        ],
    );
    let pid = server.child.as_ref().map(Child::id).expect("pid");
    // r4 counts what the server sends, by kind and by destination.
    let table = "svctr_flood_count";
    let script = format!(
        "table ip {table} {{\n chain counting {{ type filter hook forward priority 0; policy accept;\n  \
         ip saddr {s} udp sport 1021 counter comment \"probes\"\n  \
         ip saddr {s} icmp type echo-reply icmp code 1 counter comment \"responses\"\n  \
         ip saddr {s} ip daddr != {{ 198.18.128.0/17, {c} }} counter comment \"elsewhere\"\n }}\n}}\n",
        s = lab.server_addr(),
        c = lab.client_addr()
    );
    let r4 = lab.router_ns("r4").expect("r4").to_string();
    let mut c = lab.command(&r4, "nft");
    c.args(["-f", "-"]);
    let out = svctr_lab::output_with_timeout(&mut c, Some(&script), SECS(10)).expect("nft");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 10,000 sources in 198.18.128.0/17, 100 requests each (UDP, TTL 2: r3 answers each probe
    // at once, so sessions close and the global rate is what binds), identifiers differing
    // per round.
    let dst = IpAddr::V4(lab.server_addr());
    let build = |src: u32, id: u16| {
        let req = svctr_wire::revtr::Request {
            ident: id,
            seq: 0,
            ttl: 2,
            protocol: 17,
            flow: 53,
            indirect: None,
            flow_probe: None,
            padding: 0,
        };
        let mut icmp = Vec::new();
        req.emit_v4(&mut icmp);
        let ip = IpFields::V4(Ipv4Fields {
            src: std::net::Ipv4Addr::from(
                u32::from(std::net::Ipv4Addr::new(198, 18, 128, 1)) + src,
            ),
            dst: lab.server_addr(),
            ttl: 64,
            tos: 0,
            dont_fragment: false,
            ident: 1,
        });
        let mut out = Vec::new();
        emit_icmp_message(&ip, &icmp, &mut out);
        (dst, out)
    };
    let start = Instant::now();
    let deadline = start + SECS(60);
    let mut sent = 0u64;
    let mut rss = Vec::new();
    for chunk in 0..10u16 {
        let packets: Vec<_> = (0..10_000u32)
            .flat_map(|s| (0..10u16).map(move |r| (s, chunk * 10 + r + 1)))
            .map(|(s, id)| build(s, id))
            .collect();
        sent += svctr_lab::send_raw_flood(lab.client_ns(), packets, 1, deadline).expect("flood");
        rss.push(svctr_lab::process_rss_kib(pid));
        if chunk == 4 {
            lab.ping(lab.client_ns(), lab.server_addr().into(), SECS(2))
                .expect("a ping is answered during the flood");
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1500));
    lab.ping(lab.client_ns(), lab.server_addr().into(), SECS(2))
        .expect("a ping is answered after the flood");
    let counts = nft_counters(&lab, &r4, table);
    let (log, err) = server.stop();
    assert_eq!(
        sent, 1_000_000,
        "the flood was cut short after {elapsed:.1} s"
    );
    let probes = counts.get("probes").copied().unwrap_or(0);
    let bound = (rate * (elapsed + 1.5) + burst) as u64;
    assert!(
        probes <= bound,
        "{probes} probes in {elapsed:.1} s > {bound}: {counts:?}"
    );
    // ... and it is the rate that binds (not a stall): at least 80 % of it was used.
    assert!(
        probes as f64 >= 0.8 * rate * elapsed,
        "{probes} probes in {elapsed:.1} s: {counts:?}"
    );
    assert!(
        counts.get("responses").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    assert_eq!(counts.get("elsewhere"), Some(&0), "{counts:?}");
    // The server's own counters: the table never held more than -n.
    let stats = err
        .lines()
        .find_map(|l| l.split("counters ").nth(1))
        .expect("counters at exit");
    let stats: serde_json::Value = serde_json::from_str(stats).expect("JSON counters");
    assert!(stats["open_max"].as_u64().unwrap() <= max, "{stats}");
    assert!(
        stats["refused"]["global_rate"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(
        log.contains("\"event\":\"created\""),
        "the session log: {}",
        &log[..log.len().min(500)]
    );
    // Memory: flat once the ring is in use (after the first tenth).
    let (lo, hi) = (
        rss[1..].iter().min().copied().unwrap_or(0),
        rss[1..].iter().max().copied().unwrap_or(0),
    );
    assert!(
        hi - lo < 16 * 1024,
        "RSS grew from {lo} to {hi} KiB: {rss:?}"
    );
    eprintln!(
        "flood: {sent} requests in {elapsed:.1} s, {probes} probes left (bound {bound}), RSS {rss:?} KiB, {stats}"
    );
}

type Nodes = std::collections::BTreeSet<(u8, IpAddr)>;
type Links = std::collections::BTreeSet<(u8, IpAddr, IpAddr)>;

/// The nodes and links of the ways back `ks` (return-stage routers) of the lab.
fn back_truth(lab: &Lab, ks: &[usize], v6: bool) -> (Nodes, Links) {
    let (mut nodes, mut links) = (Nodes::new(), Links::new());
    for &k in ks {
        let path = lab.reverse_path_ip(k, v6);
        for (i, a) in path.iter().enumerate() {
            let ttl = i as u8 + 1;
            nodes.insert((ttl, *a));
            if i > 0 {
                links.insert((ttl - 1, path[i - 1], *a));
            }
        }
    }
    (nodes, links)
}

fn mda_found(r: &svctr_core::MdaResult) -> (Nodes, Links) {
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

/// `reverse --multipath` in the asymmetric lab (r3 balances the way back over d1..d3, a stage
/// the way out never meets): UDP and TCP, IPv4 and IPv6, twenty runs each at confidence 0.95,
/// every way back found (the return stage's three routers and every link) in at least 95 %
/// of the runs, and never a node or link that does not exist. ICMP (constant flow label, and
/// IPv4 routers hash no ICMP field) takes one way: the one r3 chooses (IPv4: `ip route get`;
/// IPv6: the dJ that counted the probes). `--two-way --multipath`: one JSON object with both
/// directions, the way out over b1..b3.
#[test]
fn reverse_multipath_finds_the_return_stage() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig {
        return_branches: 3,
        ..LabConfig::default()
    })
    .expect("lab");
    lab.install_return_observer().expect("observer");
    // The runs follow each other as fast as the client starts, about 100 requests each:
    // more than the default 200 per second from one source, which the server would drop
    // (silently, as it must under a flood), and the silent probes would send flows on past
    // this host. The limits have their own test (the flood, below).
    let server = Server::start(
        &lab,
        &["--source-rate", "100000", "--source-burst", "100000"],
    );
    let all: Vec<usize> = (1..=lab.reverse_branches()).collect();
    let (mut runs, mut stage_found, mut exact, mut requests) = (0u32, 0u32, 0u32, 0u64);
    let mut report = Vec::new();
    for (proto, flag) in [(Proto::Udp, "-U"), (Proto::Tcp, "-T"), (Proto::Icmp, "-I")] {
        for v6 in [false, true] {
            let server_addr = if v6 {
                lab.server_addr6().to_string()
            } else {
                lab.server_addr().to_string()
            };
            let reps = if proto == Proto::Icmp { 3 } else { 20 };
            let mut exact_here = 0;
            for _ in 0..reps {
                let before = lab.return_probe_counts().expect("counts");
                let args = [
                    "reverse",
                    "--multipath",
                    "-n",
                    "--format",
                    "json",
                    flag,
                    &server_addr,
                ];
                let out = tracer_for(&lab, &args, SECS(60));
                assert!(out.status.success(), "{args:?}: {}", stderr(&out));
                let r: svctr_core::MdaResult = common::record(&out.stdout);
                let after = lab.return_probe_counts().expect("counts");
                assert_eq!(r.direction.as_deref(), Some("reverse"));
                assert_eq!(r.stop_reason, svctr_core::MdaStop::Completed, "{args:?}");
                let ways = if proto != Proto::Icmp {
                    all.clone()
                } else if !v6 {
                    vec![lab.reverse_branch_v4(proto, 0, 0).expect("truth")]
                } else {
                    let used: Vec<usize> = (0..after.len())
                        .filter(|&j| after[j] > before[j])
                        .map(|j| j + 1)
                        .collect();
                    assert_eq!(used.len(), 1, "ICMPv6 probes through {used:?}");
                    used
                };
                let (tn, tl) = back_truth(&lab, &ways, v6);
                let (fnodes, flinks) = mda_found(&r);
                let false_nodes: Vec<_> = fnodes.difference(&tn).collect();
                let false_links: Vec<_> = flinks.difference(&tl).collect();
                assert!(
                    false_nodes.is_empty() && false_links.is_empty(),
                    "{args:?}: nodes {false_nodes:?} and links {false_links:?} do not exist"
                );
                runs += 1;
                requests += u64::from(r.probes_sent);
                let stage: Vec<_> = tn.iter().filter(|(t, _)| *t == 3).collect();
                if stage.iter().all(|n| fnodes.contains(n)) {
                    stage_found += 1;
                }
                if fnodes == tn && flinks == tl {
                    exact += 1;
                    exact_here += 1;
                }
            }
            report.push(format!(
                "{} {}: {exact_here}/{reps} exact",
                proto.name(),
                if v6 { "v6" } else { "v4" }
            ));
        }
    }
    eprintln!(
        "{}\nthe return stage found in {stage_found} of {runs} runs, every node and link in \
         {exact}; {} requests per run",
        report.join("\n"),
        requests / u64::from(runs)
    );
    assert!(
        stage_found * 100 >= runs * 95 && exact * 100 >= runs * 95,
        "stage {stage_found}, exact {exact} of {runs}:\n{}",
        report.join("\n")
    );
    // Both directions in one object: out over b1..b3, back over d1..d3.
    let s4 = lab.server_addr().to_string();
    let out = tracer_for(
        &lab,
        &[
            "reverse",
            "--two-way",
            "--multipath",
            "--confidence",
            "0.99",
            "-n",
            "--format",
            "json",
            &s4,
        ],
        SECS(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let both: svctr_core::reverse::TwoWayMultipath = common::record(&out.stdout);
    assert_eq!(both.forward.direction, None);
    assert_eq!(both.forward.destination, IpAddr::from(lab.server_addr()));
    assert_eq!(both.reverse.source, IpAddr::from(lab.server_addr()));
    let out_stage: std::collections::BTreeSet<IpAddr> = both
        .forward
        .graph
        .hops
        .iter()
        .filter(|h| h.ttl == 3)
        .flat_map(|h| h.addrs())
        .collect();
    let back_stage: std::collections::BTreeSet<IpAddr> = both
        .reverse
        .graph
        .hops
        .iter()
        .filter(|h| h.ttl == 3)
        .flat_map(|h| h.addrs())
        .collect();
    assert_eq!(out_stage.len(), lab.branches(), "{out_stage:?}");
    assert_eq!(back_stage.len(), lab.reverse_branches(), "{back_stage:?}");
    assert!(out_stage.is_disjoint(&back_stage));
    // No server on the way: the presence check fails with its reason, exit 1.
    drop(server.stop());
    let out = tracer_for(
        &lab,
        &["reverse", "--multipath", "-w", "0.5", &s4],
        SECS(30),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not run reverse traceroute"),
        "{}",
        stderr(&out)
    );
}

const RETRANS_COUNTERS: &[&str] = &[
    "TcpRetransSegs",
    "TcpExtTCPLostRetransmit",
    "TcpExtTCPFastRetrans",
    "TcpExtTCPTimeouts",
    "TcpExtTCPLossProbes",
    "TcpExtTCPSackRecovery",
    "TcpExtTCPDSACKRecv",
];
const ODD_SEGMENT_COUNTERS: &[&str] = &[
    "TcpExtTCPChallengeACK",
    "TcpExtTCPACKSkippedSeq",
    "TcpExtPAWSEstab",
    "TcpExtBeyondWindow",
];

fn counter_delta(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    name: &str,
) -> u64 {
    after
        .get(name)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(name).copied().unwrap_or(0))
}

/// `flow --reverse` output (JSON): the forward result and its way back.
fn flow_reverse(
    lab: &Lab,
    proto: &str,
    remote: std::net::SocketAddr,
) -> (
    svctr_core::TraceResult,
    Option<ReverseResult>,
    Option<String>,
) {
    let remote = remote.to_string();
    let args = [
        "flow",
        "-i",
        "eth0",
        proto,
        "--remote",
        &remote,
        "--reverse",
        "--duration",
        "10",
        "--format",
        "json",
    ];
    let out = tracer_for(lab, &args, SECS(60));
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    let v: serde_json::Value = common::record(&out.stdout);
    let forward: svctr_core::TraceResult = serde_json::from_value(v.clone()).expect("result");
    let back = serde_json::from_value(v["reverse"].clone()).ok();
    let note = v["reverse_note"].as_str().map(str::to_string);
    (forward, back, note)
}

/// The routers of the way back that r3 (IPv4: `ip route get` for the flow's reverse 5-tuple)
/// or the d that forwarded the flow's own packets (IPv6: counters on d1..d3) gives.
fn back_truth_of(
    lab: &Lab,
    proto: Proto,
    v6: bool,
    server_port: u16,
    client_port: u16,
    used: &[usize],
) -> Vec<IpAddr> {
    let k = if v6 {
        assert_eq!(used.len(), 1, "the flow's packets went through d{used:?}");
        used[0]
    } else {
        lab.reverse_branch_v4(proto, server_port, client_port)
            .expect("truth")
    };
    let mut path = lab.reverse_path_ip(k, v6);
    path.pop(); // this host: the flow's probes stop one hop short of it
    path
}

/// `flow --reverse` on a live TCP download and a live UDP session, IPv4 and IPv6, in the
/// asymmetric lab with our server beside the applications: the way out equals r2's choice for
/// the flow, the way back the flow's own branch of the return stage (the probes carry the
/// flow's reverse 5-tuple), and the flow tracer's harmlessness holds both ways: the download
/// arrives intact with no socket error, no retransmission or odd segment on either end
/// beyond an untraced run's, the server's TCP ignored the errors its probes drew (out of
/// window), the UDP session's every answer intact (no probe reached the client's
/// application), and the server's shield kept the UDP probes' errors from its sockets. With
/// `--no-flow-probes` (as the reference server) the way back falls back to ordinary probes,
/// with a notice.
#[test]
fn flow_reverse_traces_both_directions_of_a_live_flow() {
    let Some(_g) = lab_test_guard() else { return };
    use std::net::SocketAddr;
    use svctr_lab::{tcp_download_to, tcp_server_on, udp_server_on, udp_session_to};
    let lab = Lab::build(LabConfig {
        return_branches: 3,
        ..LabConfig::default()
    })
    .expect("lab");
    lab.install_return_observer().expect("observer");
    let _t4 = tcp_server_on(&lab, "0.0.0.0:8080".parse().unwrap(), 1_000_000).expect("tcp");
    let _t6 = tcp_server_on(&lab, "[::]:8080".parse().unwrap(), 1_000_000).expect("tcp6");
    let _u4 = udp_server_on(&lab, "0.0.0.0:9000".parse().unwrap()).expect("udp");
    let _u6 = udp_server_on(&lab, "[::]:9000".parse().unwrap()).expect("udp6");
    let server = Server::start(&lab, &[]);
    let pid = server.child.as_ref().map(Child::id).expect("pid");
    for v6 in [false, true] {
        let s_ip: IpAddr = if v6 {
            lab.server_addr6().into()
        } else {
            lab.server_addr().into()
        };
        let c_ip: IpAddr = if v6 {
            lab.client_addr6().into()
        } else {
            lab.client_addr().into()
        };
        // TCP: an untraced download, then one traced three times.
        let download = |traces: usize| {
            let (c0, s0) = (
                lab.nstat(lab.client_ns()).unwrap(),
                lab.nstat(lab.server_ns()).unwrap(),
            );
            let d = tcp_download_to(&lab, SocketAddr::new(s_ip, 8080), 0, 3_000_000, true)
                .expect("download");
            d.wait_established(SECS(10)).expect("established");
            let mut results = Vec::new();
            for _ in 0..traces {
                let before = lab.return_flow_counts().expect("counts");
                let (fwd, back, note) = flow_reverse(&lab, "--tcp", SocketAddr::new(s_ip, 8080));
                let after = lab.return_flow_counts().expect("counts");
                let used: Vec<usize> = (0..after.len())
                    .filter(|&j| after[j] > before[j])
                    .map(|j| j + 1)
                    .collect();
                results.push((fwd, back, note, used));
            }
            let rep = d.wait().expect("report");
            assert!(rep.intact && rep.bytes == 3_000_000, "v6={v6}: {rep:?}");
            assert!(rep.errors.is_empty(), "v6={v6}: {rep:?}");
            let (c1, s1) = (
                lab.nstat(lab.client_ns()).unwrap(),
                lab.nstat(lab.server_ns()).unwrap(),
            );
            (c0, c1, s0, s1, results, rep.local_port)
        };
        let (bc0, bc1, bs0, bs1, _, _) = download(0);
        let (c0, c1, s0, s1, results, port) = download(3);
        for (fwd, back, note, used) in &results {
            assert_eq!(fwd.flow.local.port, port);
            // The way out: r2's choice for the flow.
            let want = lab
                .expected_path_ip(
                    Proto::Tcp,
                    c_ip,
                    s_ip,
                    port,
                    8080,
                    fwd.flow.flow_label.unwrap_or(0),
                )
                .expect("forward truth");
            let got: Vec<IpAddr> = fwd.hops[..want.len()]
                .iter()
                .map(|h| h.probes[0].addr.expect("answered"))
                .collect();
            assert_eq!(got, want, "v6={v6} tcp forward");
            // The way back: the flow's own branch.
            let back = back
                .as_ref()
                .unwrap_or_else(|| panic!("v6={v6}: no way back: {note:?}"));
            assert!(back.flow_shaped && note.is_none(), "{note:?}");
            assert_eq!(back.stop_reason, ReverseStop::MaxTtl);
            assert_eq!(
                hop_addrs(back),
                back_truth_of(&lab, Proto::Tcp, v6, 8080, port, used),
                "v6={v6} tcp back"
            );
        }
        for name in RETRANS_COUNTERS.iter().chain(ODD_SEGMENT_COUNTERS) {
            let (traced_c, base_c) = (
                counter_delta(&c0, &c1, name),
                counter_delta(&bc0, &bc1, name),
            );
            let (traced_s, base_s) = (
                counter_delta(&s0, &s1, name),
                counter_delta(&bs0, &bs1, name),
            );
            assert!(
                traced_c <= base_c,
                "v6={v6} client {name}: {traced_c} > {base_c}"
            );
            assert!(
                traced_s <= base_s,
                "v6={v6} server {name}: {traced_s} > {base_s}"
            );
        }
        // The errors the server's probes drew reached its TCP, which ignored them: 3 traces ×
        // 5 routers × 3 probes (the client's own traces add theirs on the client only).
        let ignored = counter_delta(&s0, &s1, "TcpExtOutOfWindowIcmps");
        assert!(
            ignored >= 45,
            "v6={v6}: the server ignored {ignored} ICMP errors"
        );

        // UDP: a live session, traced three times.
        let table = format!("svctr_{pid}");
        let shield_drops = || -> u64 {
            let family = if v6 { "ip6" } else { "ip" };
            let mut c = lab.command(lab.server_ns(), "nft");
            c.args(["list", "table", family, &table]);
            let out = svctr_lab::output_with_timeout(&mut c, None, SECS(10)).expect("nft");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("time-exceeded"))
                .filter_map(svctr_lab::nft_rule_packets)
                .sum()
        };
        let dropped0 = shield_drops();
        let dst = SocketAddr::new(s_ip, 9000);
        let session =
            udp_session_to(&lab, dst, 0, 150, Duration::from_millis(20), true).expect("session");
        let port = session.wait_started(SECS(10)).expect("started");
        for _ in 0..3 {
            let before = lab.return_flow_counts().expect("counts");
            let (fwd, back, note) = flow_reverse(&lab, "--udp", dst);
            let after = lab.return_flow_counts().expect("counts");
            let used: Vec<usize> = (0..after.len())
                .filter(|&j| after[j] > before[j])
                .map(|j| j + 1)
                .collect();
            let want = lab
                .expected_path_ip(
                    Proto::Udp,
                    c_ip,
                    s_ip,
                    port,
                    9000,
                    fwd.flow.flow_label.unwrap_or(0),
                )
                .expect("forward truth");
            let got: Vec<IpAddr> = fwd
                .hops
                .iter()
                .map(|h| h.probes[0].addr.expect("answered"))
                .collect();
            assert_eq!(got, want, "v6={v6} udp forward");
            let back = back.unwrap_or_else(|| panic!("v6={v6}: no way back: {note:?}"));
            assert!(back.flow_shaped);
            assert_eq!(
                hop_addrs(&back),
                back_truth_of(&lab, Proto::Udp, v6, 9000, port, &used),
                "v6={v6} udp back"
            );
        }
        let rep = session.wait().expect("report");
        assert!(
            rep.intact && rep.answered == rep.sent && rep.errors.is_empty(),
            "v6={v6}: no probe reached the client's application, no error: {rep:?}"
        );
        let dropped = shield_drops() - dropped0;
        assert!(
            dropped >= 45,
            "v6={v6}: the server's shield dropped {dropped} errors about its UDP probes"
        );
    }
    drop(server.stop());
    // A server that refuses the flow-probe object (the reference's answer, state 4): the way
    // back with ordinary probes, and a notice.
    let _server = Server::start(&lab, &["--no-flow-probes"]);
    let d = tcp_download_to(
        &lab,
        SocketAddr::new(lab.server_addr().into(), 8080),
        0,
        2_000_000,
        true,
    )
    .expect("download");
    d.wait_established(SECS(10)).expect("established");
    let remote = format!("{}:8080", lab.server_addr());
    let args = [
        "flow",
        "-i",
        "eth0",
        "--tcp",
        "--remote",
        &remote,
        "--reverse",
        "--duration",
        "10",
    ];
    let out = tracer_for(&lab, &args, SECS(60));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not take the flow-probe extension (state 4)"),
        "{}",
        stderr(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ordinary probes from port 1021"), "{text}");
    assert!(text.contains(" 3  198.19.8"), "the return stage: {text}");
    let rep = d.wait().expect("report");
    assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
}

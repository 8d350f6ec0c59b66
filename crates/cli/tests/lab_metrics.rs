//! `monitor --metrics-listen`, scraped by a real Prometheus server (Debian's `prometheus`) in
//! the lab's client namespace: the series Prometheus stored equal what the monitor printed
//! (traces per service and stop reason, probes, replies, trace durations, path changes), and
//! the live counters are there. Also: a bind failure is one line and status 2 before anything
//! runs. The lab test needs root (see `svctr_lab::lab_test_guard`).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{record, stderr, TRACER};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use svctr_core::{Protocol, StopReason, TraceResult};
use svctr_lab::{
    lab_test_guard, output_with_timeout, tcp_download_to, tcp_server_on, udp_server_on,
    udp_session_to, Lab, LabConfig,
};

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// Where the monitor serves its metrics, and where Prometheus listens, in the client
/// namespace (fresh for the test: both ports are free).
const METRICS: &str = "127.0.0.1:9464";
const PROMETHEUS: &str = "127.0.0.1:9090";
const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";

/// A process of the test, killed and reaped whatever happens.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory of the test's, removed whatever happens.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let p = std::env::temp_dir().join(format!("svctr-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `curl` in the client namespace: (HTTP status, headers and body as `curl -i` shows them).
fn curl(lab: &Lab, args: &[&str]) -> String {
    let mut c = lab.command(lab.client_ns(), "curl");
    c.args(["-sS", "-i", "--max-time", "5"]).args(args);
    let out = output_with_timeout(&mut c, None, SECS(10)).expect("curl runs");
    assert!(out.status.success(), "curl {args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One PromQL instant query to the lab's Prometheus: each series' labels and value.
fn query(lab: &Lab, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let url = format!("http://{PROMETHEUS}/api/v1/query");
    let mut c = lab.command(lab.client_ns(), "curl");
    c.args(["-sS", "--max-time", "5", "-G", &url, "--data-urlencode"])
        .arg(format!("query={q}"));
    let out = output_with_timeout(&mut c, None, SECS(10)).expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => return Vec::new(), // not up yet
    };
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let labels = s["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let value = s["value"][1]
                .as_str()
                .and_then(|x| x.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            (labels, value)
        })
        .collect()
}

/// The value of a query that gives one series (none: `None`).
fn scalar(lab: &Lab, q: &str) -> Option<f64> {
    let r = query(lab, q);
    assert!(r.len() <= 1, "{q}: {r:?}");
    r.first().map(|(_, v)| *v)
}

/// Per service, a value of the query's series.
fn by_service(lab: &Lab, q: &str) -> BTreeMap<String, f64> {
    query(lab, q)
        .into_iter()
        .map(|(l, v)| (l.get("service").cloned().unwrap_or_default(), v))
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

/// The metrics' rule for a path change (see crates/cli/src/metrics.rs), on the printed
/// records in their order: per service, the traces whose path (per TTL, the set of addresses
/// that answered) differs from the last one of the same service, protocol and remote address
/// and port; interrupted traces are left out.
fn path_changes(results: &[TraceResult]) -> BTreeMap<String, f64> {
    type Group = (Option<String>, Protocol, SocketAddr);
    let mut last: BTreeMap<Group, Vec<Vec<IpAddr>>> = BTreeMap::new();
    let mut changes = BTreeMap::new();
    for r in results {
        let service = r.flow.service.clone().unwrap_or_default();
        let n = changes.entry(service).or_insert(0.0);
        if r.stop_reason == StopReason::Interrupted {
            continue;
        }
        let path: Vec<Vec<IpAddr>> = r
            .hops
            .iter()
            .map(|h| {
                let mut a = h.addrs();
                a.sort();
                a
            })
            .collect();
        let group = (
            r.flow.service.clone(),
            r.flow.protocol,
            SocketAddr::new(r.flow.remote.ip, r.flow.remote.port),
        );
        if last.insert(group, path.clone()).is_some_and(|p| p != path) {
            *n += 1.0;
        }
    }
    changes
}

fn seconds(r: &TraceResult) -> f64 {
    let t = |s: &str| humantime::parse_rfc3339_weak(s).expect("an RFC 3339 time");
    t(&r.end).duration_since(t(&r.start)).unwrap().as_secs_f64()
}

/// A monitor serving its metrics in the client namespace, TCP and UDP flows of two services
/// (an IPv4 and an IPv6 prefix) across the ECMP stage, and Prometheus scraping it every
/// second in the same namespace: once every flow is traced, Prometheus holds exactly the
/// printed traces per service and stop reason, their probes, replies, durations and path
/// changes, every flow watched, nothing in progress; then SIGINT ends the monitor, status 0.
#[test]
fn prometheus_scrapes_what_the_monitor_printed() {
    let Some(_g) = lab_test_guard() else { return };
    assert!(
        Path::new(PROMETHEUS_BIN).exists(),
        "{PROMETHEUS_BIN} is missing: install Debian's prometheus (scripts/setup.sh)"
    );
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let (v4, v6) = ("198.19.0.0/16", "2001:2:0:1900::/56");
    let _servers = (
        tcp_server_on(&lab, "0.0.0.0:8080".parse().unwrap(), 200_000).unwrap(),
        tcp_server_on(&lab, "[::]:8080".parse().unwrap(), 200_000).unwrap(),
        udp_server_on(&lab, "0.0.0.0:9000".parse().unwrap()).unwrap(),
    );

    // The monitor, its records collected as they come.
    let mut c = lab.command(lab.client_ns(), TRACER);
    c.args([
        "monitor",
        "-i",
        "eth0",
        "--cidr",
        v4,
        "--cidr",
        v6,
        "--retrace-after",
        "never",
        "--format",
        "jsonl",
        "--stats",
        "--metrics-listen",
        METRICS,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut monitor = Reaper(c.spawn().expect("monitor starts"));
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let out = monitor.0.stdout.take().unwrap();
    let reader = {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                lines.lock().unwrap().push(l);
            }
        })
    };
    let mut err_pipe = monitor.0.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });

    // Prometheus in the same namespace, scraping the monitor every second.
    let dir = TempDir::new("prometheus");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: svctr\n    static_configs:\n      - targets: ['{METRICS}']\n"
        ),
    )
    .unwrap();
    let mut p = lab.command(lab.client_ns(), PROMETHEUS_BIN);
    p.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let prometheus = Reaper(p.spawn().expect("prometheus starts"));
    let ready = Instant::now();
    while !curl_ok(&lab, &format!("http://{PROMETHEUS}/-/ready")) {
        assert!(ready.elapsed() < SECS(60), "Prometheus not ready in 60 s");
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(SECS(1)); // the monitor's captures open

    // The flows: TCP downloads over IPv4 and IPv6 and UDP sessions, each from its own port,
    // so they spread over the ECMP branches.
    let server4 = SocketAddr::new(lab.server_addr().into(), 8080);
    let server6 = SocketAddr::new(lab.server_addr6().into(), 8080);
    let udp4 = SocketAddr::new(lab.server_addr().into(), 9000);
    let mut downloads = Vec::new();
    for (i, dst) in [server4, server4, server4, server4, server6, server6]
        .into_iter()
        .enumerate()
    {
        let d = tcp_download_to(&lab, dst, 41001 + i as u16, 2_000_000, true).expect("download");
        d.wait_established(SECS(10)).expect("established");
        downloads.push(d);
    }
    let mut sessions = Vec::new();
    for i in 0..3u16 {
        let s = udp_session_to(&lab, udp4, 42001 + i, 200, Duration::from_millis(50), true)
            .expect("session");
        s.wait_started(SECS(10)).expect("started");
        sessions.push(s);
    }
    let flows = downloads.len() + sessions.len();

    // Every flow traced once.
    let t = Instant::now();
    while lines.lock().unwrap().len() < flows {
        assert!(
            t.elapsed() < SECS(60),
            "{} of {flows} traces in 60 s",
            lines.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let results: Vec<TraceResult> = lines.lock().unwrap().iter().map(record).collect();
    assert_eq!(results.len(), flows);

    // What Prometheus holds, once its last scrape has them all.
    let t = Instant::now();
    loop {
        let n = scalar(&lab, "sum(service_traceroute_traces_total)");
        if n == Some(flows as f64) {
            break;
        }
        assert!(
            t.elapsed() < SECS(60),
            "Prometheus shows {n:?} traces, the monitor printed {flows}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(scalar(&lab, r#"up{job="svctr"}"#), Some(1.0));
    let mut want_traces: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut want_probes: BTreeMap<String, f64> = BTreeMap::new();
    let mut want_replies: BTreeMap<String, f64> = BTreeMap::new();
    let mut want_seconds: BTreeMap<String, f64> = BTreeMap::new();
    let mut want_count: BTreeMap<String, f64> = BTreeMap::new();
    for r in &results {
        let s = r.flow.service.clone().expect("a service's flow");
        *want_traces
            .entry((s.clone(), r.stop_reason.as_str().to_string()))
            .or_default() += 1.0;
        *want_probes.entry(s.clone()).or_default() += f64::from(r.probes_sent);
        *want_replies.entry(s.clone()).or_default() += f64::from(r.replies);
        *want_seconds.entry(s.clone()).or_default() += seconds(r);
        *want_count.entry(s).or_default() += 1.0;
    }
    assert_eq!(
        want_count.keys().map(String::as_str).collect::<Vec<_>>(),
        [v4, v6],
        "flows of both services"
    );
    let traces: BTreeMap<(String, String), f64> = query(&lab, "service_traceroute_traces_total")
        .into_iter()
        .map(|(l, v)| ((l["service"].clone(), l["stop_reason"].clone()), v))
        .collect();
    assert_eq!(traces, want_traces);
    assert_eq!(
        by_service(&lab, "service_traceroute_probes_sent_total"),
        want_probes
    );
    assert_eq!(
        by_service(&lab, "service_traceroute_replies_matched_total"),
        want_replies
    );
    assert_eq!(
        by_service(&lab, "service_traceroute_trace_duration_seconds_count"),
        want_count
    );
    assert_eq!(
        by_service(
            &lab,
            r#"service_traceroute_trace_duration_seconds_bucket{le="+Inf"}"#
        ),
        want_count
    );
    let secs = by_service(&lab, "service_traceroute_trace_duration_seconds_sum");
    assert_eq!(secs.len(), want_seconds.len(), "{secs:?}");
    for (s, want) in &want_seconds {
        assert!(close(secs[s], *want), "{s}: {} s, want {want} s", secs[s]);
    }
    assert_eq!(
        by_service(&lab, "service_traceroute_path_changes_total"),
        path_changes(&results)
    );
    let watched = scalar(&lab, "service_traceroute_flows_watched_total").expect("flows watched");
    assert_eq!(watched, flows as f64);
    let recognised = scalar(&lab, "service_traceroute_flows_recognised_total").expect("recognised");
    assert!(recognised >= flows as f64, "{recognised}");
    assert_eq!(
        scalar(&lab, "service_traceroute_traces_started_total"),
        Some(flows as f64)
    );
    assert_eq!(
        scalar(&lab, "service_traceroute_traces_in_progress"),
        Some(0.0)
    );
    let drops = scalar(&lab, "service_traceroute_capture_drops_total").expect("capture drops");

    // The endpoint itself: OpenMetrics text at /metrics, 404 elsewhere.
    let page = curl(&lab, &[&format!("http://{METRICS}/metrics")]);
    let (head, body) = page.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    eprintln!("GET /metrics:\n{body}");
    let missing = curl(&lab, &[&format!("http://{METRICS}/")]);
    assert!(missing.starts_with("HTTP/1.1 404 Not Found"), "{missing}");

    // A second monitor cannot take the address: one line, status 2, nothing traced.
    let mut c = lab.command(lab.client_ns(), TRACER);
    c.args([
        "monitor",
        "-i",
        "eth0",
        "--tcp",
        "--metrics-listen",
        METRICS,
    ]);
    let o = output_with_timeout(&mut c, None, SECS(20)).expect("second monitor");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("--metrics-listen {METRICS}")) && err.contains("in use"),
        "{err}"
    );

    // The server thread parses requests from the network: it holds no capability, and the
    // process runs as nobody (the default --user), like every monitor started as root.
    let metrics_thread = thread_status(monitor.0.id(), "metrics");
    assert_eq!(
        metrics_thread.get("Uid").map(String::as_str),
        Some("65534\t65534\t65534\t65534")
    );
    for cap in ["CapPrm", "CapEff", "CapInh", "CapAmb"] {
        assert_eq!(
            metrics_thread.get(cap).map(String::as_str),
            Some("0000000000000000"),
            "{cap} of the metrics thread: {metrics_thread:?}"
        );
    }

    // Ctrl-C: status 0, nothing more printed, and the drops no more than the run's.
    kill(Pid::from_raw(monitor.0.id() as i32), Signal::SIGINT).expect("SIGINT");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = monitor.0.try_wait().expect("wait") {
            break s;
        }
        assert!(t.elapsed() < SECS(10), "the monitor did not end on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().unwrap();
    let err = err_reader.join().unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(lines.lock().unwrap().len(), flows, "{err}");
    let dropped: f64 = err
        .split("dropped ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no drop count in --stats: {err}"));
    assert!(
        drops <= dropped,
        "Prometheus saw {drops} drops, --stats {dropped}"
    );
    drop(prometheus);
    for d in downloads {
        let rep = d.wait().expect("download report");
        assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
    }
    for s in sessions {
        let rep = s.wait().expect("session report");
        assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
    }
}

/// The `/proc` status fields of the thread of process `pid` named `name`.
fn thread_status(pid: u32, name: &str) -> BTreeMap<String, String> {
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let text = std::fs::read_to_string(t.path().join("status")).expect("status");
            return text
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect();
        }
    }
    panic!("no thread {name} in process {pid}");
}

/// Whether a GET of `url` in the client namespace answers 200.
fn curl_ok(lab: &Lab, url: &str) -> bool {
    let mut c = lab.command(lab.client_ns(), "curl");
    c.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "2",
        url,
    ]);
    output_with_timeout(&mut c, None, SECS(5))
        .map(|o| o.stdout == b"200")
        .unwrap_or(false)
}

/// An address already taken, or not this host's: one line naming the option, status 2, and
/// nothing opened (no capture, no probe: it fails before any, without root too).
#[test]
fn a_metrics_address_that_cannot_be_bound_is_one_line_and_exit_2() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for (addr, text) in [
        (format!("127.0.0.1:{port}"), "in use"),
        // TEST-NET-1: no address of this host (bind fails; nothing is sent).
        ("192.0.2.1:9464".to_string(), "address"),
    ] {
        let out = std::process::Command::new(TRACER)
            .args(["monitor", "-i", "lo", "--tcp", "--metrics-listen", &addr])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{addr}: {err}");
        assert_eq!(err.lines().count(), 1, "{addr}: {err}");
        assert!(
            err.contains(&format!("--metrics-listen {addr}: cannot listen")) && err.contains(text),
            "{addr}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
    // Not an address: the parser's one line.
    let out = std::process::Command::new(TRACER)
        .args([
            "monitor",
            "-i",
            "lo",
            "--tcp",
            "--metrics-listen",
            "localhost",
        ])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--metrics-listen"), "{err}");
}

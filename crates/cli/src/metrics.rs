//! `monitor --metrics-listen ADDR`: Prometheus metrics over HTTP while the monitor runs.
//!
//! The metrics are kept with `prometheus-client` and served as its OpenMetrics text by a
//! small HTTP server on a thread of its own (std's `TcpListener`, one request per connection,
//! `Connection: close`): `GET /metrics` answers 200 with the exposition, anything else 404.
//! A request's head is read up to [`REQUEST_MAX`] bytes within [`REQUEST_TIME`], and the
//! answer written within as long again, so a slow or silent client holds the server that long
//! at most; a larger head gets 400.
//!
//! The listener is bound by the command before the monitor starts, while the process still
//! has its privileges (a port below 1024 as root), so a bind failure is an error before
//! anything runs; the thread then drops every capability of its own at once
//! (`svctr_io::privilege::drop_all_in_thread`): it parses requests from the network.
//!
//! What is counted, all names prefixed `service_traceroute_` (no label per hop address; the
//! `service` label is the flow's service, empty for flows selected by 5-tuple):
//!
//! | metric | type | labels | from |
//! |---|---|---|---|
//! | `flows_recognised_total` | counter | | flows recognised as a service's (live) |
//! | `flows_watched_total` | counter | | flows handed to the engine to trace (live) |
//! | `traces_started_total` | counter | | traces started (live) |
//! | `traces_in_progress` | gauge | | traces in progress (live) |
//! | `capture_drops_total` | counter | | packets the captures dropped, kernel ring full (live) |
//! | `traces_total` | counter | `service`, `stop_reason` | each result |
//! | `probes_sent_total` | counter | `service` | each result's `probes_sent` |
//! | `replies_matched_total` | counter | `service` | each result's `replies` |
//! | `trace_duration_seconds` | histogram | `service` | each result's `end - start` |
//! | `path_changes_total` | counter | `service` | see below |
//!
//! The live ones are read at each scrape from the driver's [`LiveStats`] (refreshed every
//! 100 ms while the monitor runs). A path change is a trace whose path (per TTL, the set of
//! addresses that answered) differs from the previous trace of its group: the same service,
//! protocol and remote address and port. The first trace of a group counts none, and an
//! interrupted trace (a partial path) is neither compared nor remembered. At most `max_flows`
//! groups are remembered, the least recently traced forgotten first.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use svctr_core::{Protocol, StopReason, TraceResult};
use svctr_io::{LiveStats, MonitorOptions};

use crate::error::CliError;

/// The prefix of every metric's name.
const PREFIX: &str = "service_traceroute";
/// The `Content-Type` of the exposition: prometheus-client writes OpenMetrics text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The most a request's head may take, in bytes...
const REQUEST_MAX: usize = 8 * 1024;
/// ...and in time, from the connection's accept to its blank line.
const REQUEST_TIME: Duration = Duration::from_secs(2);

/// Binds `addr`, sets `opts` to keep the live counters, and serves the metrics on a thread of
/// its own until the process exits. Returns what records each result.
pub(crate) fn start(addr: SocketAddr, opts: &mut MonitorOptions) -> Result<Metrics, CliError> {
    let listen_error = |source| CliError::Listen { addr, source };
    let listener = TcpListener::bind(addr).map_err(listen_error)?;
    let live = Arc::new(LiveStats::default());
    opts.live = Some(Arc::clone(&live));
    let (metrics, registry) = Metrics::new(live, opts.config.max_flows);
    serve(listener, registry, REQUEST_TIME).map_err(listen_error)?;
    Ok(metrics)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceLabels {
    service: String,
    stop_reason: &'static str,
}

/// Trace durations: 1 ms to 65.5 s, doubling.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The metrics fed by the monitor's results (the live ones are read by [`Live`]).
pub(crate) struct Metrics {
    traces: Family<TraceLabels, Counter>,
    probes_sent: Family<ServiceLabels, Counter>,
    replies: Family<ServiceLabels, Counter>,
    durations: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    path_changes: Family<ServiceLabels, Counter>,
    paths: Paths,
}

impl Metrics {
    /// The metrics, and the registry that shows them with `live`'s counters; at most
    /// `max_groups` paths remembered.
    pub(crate) fn new(live: Arc<LiveStats>, max_groups: usize) -> (Self, Registry) {
        let m = Self {
            traces: Family::default(),
            probes_sent: Family::default(),
            replies: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            path_changes: Family::default(),
            paths: Paths::new(max_groups),
        };
        let mut reg = Registry::with_prefix(PREFIX);
        reg.register(
            "traces",
            "Traces completed, by service and stop reason",
            m.traces.clone(),
        );
        reg.register(
            "probes_sent",
            "Probes sent by the completed traces",
            m.probes_sent.clone(),
        );
        reg.register(
            "replies_matched",
            "Replies matched to a probe of the completed traces",
            m.replies.clone(),
        );
        reg.register_with_unit(
            "trace_duration",
            "Time from a trace's first probe to its end",
            Unit::Seconds,
            m.durations.clone(),
        );
        reg.register(
            "path_changes",
            "Traces whose path differs from the previous trace of the same service, protocol \
             and remote address and port",
            m.path_changes.clone(),
        );
        reg.register_collector(Box::new(Live(live)));
        (m, reg)
    }

    /// Counts one finished trace.
    pub(crate) fn observe(&mut self, r: &TraceResult) {
        let service = r.flow.service.clone().unwrap_or_default();
        let s = ServiceLabels {
            service: service.clone(),
        };
        self.traces
            .get_or_create(&TraceLabels {
                service: service.clone(),
                stop_reason: r.stop_reason.as_str(),
            })
            .inc();
        self.probes_sent
            .get_or_create(&s)
            .inc_by(u64::from(r.probes_sent));
        self.replies.get_or_create(&s).inc_by(u64::from(r.replies));
        if let Some(d) = duration(r) {
            self.durations.get_or_create(&s).observe(d.as_secs_f64());
        }
        // Shown from a service's first trace on, at 0 until a change (for rate()).
        let changes = self.path_changes.get_or_create(&s);
        if r.stop_reason != StopReason::Interrupted {
            let group = Group {
                service: r.flow.service.clone(),
                protocol: r.flow.protocol,
                remote: SocketAddr::new(r.flow.remote.ip, r.flow.remote.port),
            };
            if self.paths.changed(group, path(r)) {
                changes.inc();
            }
        }
    }
}

/// A trace's time from its first probe to its end, when both times are there.
fn duration(r: &TraceResult) -> Option<Duration> {
    let start = humantime::parse_rfc3339_weak(&r.start).ok()?;
    let end = humantime::parse_rfc3339_weak(&r.end).ok()?;
    end.duration_since(start).ok()
}

/// A trace's path: per TTL, the addresses that answered, sorted.
fn path(r: &TraceResult) -> Vec<Vec<IpAddr>> {
    r.hops
        .iter()
        .map(|h| {
            let mut a = h.addrs();
            a.sort_unstable();
            a
        })
        .collect()
}

/// The traces whose paths are compared with each other.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Group {
    service: Option<String>,
    protocol: Protocol,
    remote: SocketAddr,
}

/// The last path of each group, the least recently traced forgotten first beyond `max`.
struct Paths {
    /// Each group's path and the number of its last update.
    last: HashMap<Group, (u64, Vec<Vec<IpAddr>>)>,
    /// Updates in order (an entry is stale once its group was updated again).
    order: VecDeque<(u64, Group)>,
    seq: u64,
    max: usize,
}

impl Paths {
    fn new(max: usize) -> Self {
        Self {
            last: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
            max: max.max(1),
        }
    }

    /// Remembers `path` as the group's; whether the group had another before.
    fn changed(&mut self, group: Group, path: Vec<Vec<IpAddr>>) -> bool {
        self.seq += 1;
        self.order.push_back((self.seq, group.clone()));
        let before = self.last.insert(group, (self.seq, path.clone()));
        let changed = before.is_some_and(|(_, p)| p != path);
        while self.last.len() > self.max {
            let Some((seq, g)) = self.order.pop_front() else {
                break;
            };
            if self.last.get(&g).is_some_and(|(s, _)| *s == seq) {
                self.last.remove(&g);
            }
        }
        if self.order.len() > 2 * self.last.len() + 1024 {
            let last = &self.last;
            self.order
                .retain(|(seq, g)| last.get(g).is_some_and(|(s, _)| s == seq));
        }
        changed
    }
}

/// The driver's live counters, read at each scrape.
#[derive(Debug)]
struct Live(Arc<LiveStats>);

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let l = &self.0;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "flows_recognised",
                "Flows recognised as a service's.",
                &l.flows_recognised,
            ),
            (
                "flows_watched",
                "Flows handed to the engine to trace.",
                &l.flows_watched,
            ),
            ("traces_started", "Traces started.", &l.traces_started),
            (
                "capture_drops",
                "Packets the captures dropped (kernel ring full): replies may be missing.",
                &l.capture_drops,
            ),
        ] {
            let c = ConstCounter::new(read(value));
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let g = ConstGauge::new(i64::try_from(read(&l.traces_active)).unwrap_or(i64::MAX));
        g.encode(encoder.encode_descriptor(
            "traces_in_progress",
            "Traces in progress.",
            None,
            g.metric_type(),
        )?)
    }
}

/// Serves `registry` on `listener` from a thread of its own, until the process exits; a
/// request's head may take `request_time` at most.
fn serve(listener: TcpListener, registry: Registry, request_time: Duration) -> io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            svctr_io::privilege::drop_all_in_thread();
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => handle(stream, &registry, request_time),
                    // Out of descriptors, or a connection reset before its accept: the next.
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .map(drop)
}

/// Answers one connection's request, then closes it.
fn handle(mut stream: TcpStream, registry: &Registry, request_time: Duration) {
    let Some(head) = read_head(&mut stream, request_time) else {
        return;
    };
    let (status, content_type, body) = match head {
        Head::TooLarge => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "request too large\n".into(),
        ),
        Head::Complete(h) => respond(&h, registry),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let response = [head.as_bytes(), body.as_bytes()].concat();
    if write_within(&mut stream, &response, Instant::now() + request_time) {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
}

/// Writes `data` by `deadline` (a client that reads slowly is given up on then); whether all
/// of it was written.
fn write_within(stream: &mut TcpStream, mut data: &[u8], deadline: Instant) -> bool {
    while !data.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_write_timeout(Some(left)).is_err() {
            return false;
        }
        match stream.write(data) {
            Ok(0) => return false,
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// What came of reading a request's head.
enum Head {
    Complete(Vec<u8>),
    TooLarge,
}

/// Reads a request's head (up to its blank line) within `time`; `None` for a client that
/// went silent, closed early or failed.
fn read_head(stream: &mut TcpStream, time: Duration) -> Option<Head> {
    let deadline = Instant::now() + time;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Some(Head::Complete(head));
        }
        if head.len() >= REQUEST_MAX {
            return Some(Head::TooLarge);
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).ok()?;
        let want = buf.len().min(REQUEST_MAX - head.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// The answer to a request's head: (status, content type, body).
fn respond(head: &[u8], registry: &Registry) -> (&'static str, &'static str, String) {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split('?').next().unwrap_or_default());
    if method == Some("GET") && path == Some("/metrics") {
        let mut body = String::new();
        match prometheus_client::encoding::text::encode(&mut body, registry) {
            Ok(()) => ("200 OK", CONTENT_TYPE, body),
            Err(_) => (
                "500 Internal Server Error",
                "text/plain; charset=utf-8",
                "encoding the metrics failed\n".into(),
            ),
        }
    } else {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: the metrics are at GET /metrics\n".into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use svctr_core::{Algorithm, Endpoint, FlowInfo, Hop, ProbeReply};

    fn reply(addr: &str) -> ProbeReply {
        ProbeReply {
            addr: Some(addr.parse().unwrap()),
            rtt_ms: Some(1.0),
            ..ProbeReply::default()
        }
    }

    /// A trace of `service`'s flow from local port `lport` to 198.19.1.2:443 over `hops`
    /// (one address per TTL, each answering twice, one probe of 3 unanswered), 250 ms long.
    fn result(service: Option<&str>, lport: u16, hops: &[&str], stop: StopReason) -> TraceResult {
        TraceResult {
            flow: FlowInfo {
                protocol: Protocol::Tcp,
                local: Endpoint {
                    ip: "198.18.1.2".parse().unwrap(),
                    port: lport,
                },
                remote: Endpoint {
                    ip: "198.19.1.2".parse().unwrap(),
                    port: 443,
                },
                flow_label: None,
                service: service.map(str::to_string),
                name: None,
                matched_by: None,
            },
            algorithm: Algorithm::default(),
            start: "2026-05-01T10:00:00.000Z".into(),
            end: "2026-05-01T10:00:00.250Z".into(),
            stop_reason: stop,
            hops: hops
                .iter()
                .zip(1u8..)
                .map(|(a, ttl)| Hop {
                    ttl,
                    probes: vec![reply(a), ProbeReply::default(), reply(a)],
                })
                .collect(),
            remote_distance: None,
            probes_sent: 3 * hops.len() as u32,
            replies: 2 * hops.len() as u32,
            syn_copies: false,
            reverse_flow: None,
        }
    }

    fn text(reg: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, reg).unwrap();
        s
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }

    const A: [&str; 3] = ["198.18.1.1", "198.18.2.2", "198.18.11.2"];
    const B: [&str; 3] = ["198.18.1.1", "198.18.2.2", "198.18.12.2"];

    #[test]
    fn two_paths_of_one_service_are_one_change() {
        let live = Arc::new(LiveStats::default());
        let (mut m, reg) = Metrics::new(Arc::clone(&live), 100);
        let s = Some("video");
        m.observe(&result(s, 40001, &A, StopReason::RemoteDistance));
        // Before a second trace of its group, nothing changed.
        has(
            &text(&reg),
            r#"service_traceroute_path_changes_total{service="video"} 0"#,
        );
        m.observe(&result(s, 40002, &B, StopReason::RemoteDistance));
        // The same path again (another flow of the group) is no change; a 5-tuple flow to
        // the same remote is another group.
        m.observe(&result(s, 40003, &B, StopReason::RemoteDistance));
        m.observe(&result(None, 40004, &A, StopReason::RemoteDistance));
        m.observe(&result(None, 40005, &A, StopReason::MaxMissing));
        // An interrupted trace (a partial path) is neither compared nor remembered.
        m.observe(&result(s, 40006, &A[..1], StopReason::Interrupted));
        m.observe(&result(s, 40007, &B, StopReason::RemoteDistance));
        live.flows_watched.store(7, Ordering::Relaxed);
        live.flows_recognised.store(5, Ordering::Relaxed);
        live.traces_started.store(8, Ordering::Relaxed);
        live.traces_active.store(1, Ordering::Relaxed);
        live.capture_drops.store(3, Ordering::Relaxed);
        let t = text(&reg);
        for line in [
            r#"service_traceroute_path_changes_total{service="video"} 1"#,
            r#"service_traceroute_path_changes_total{service=""} 0"#,
            r#"service_traceroute_traces_total{service="video",stop_reason="remote-distance"} 4"#,
            r#"service_traceroute_traces_total{service="video",stop_reason="interrupted"} 1"#,
            r#"service_traceroute_traces_total{service="",stop_reason="remote-distance"} 1"#,
            r#"service_traceroute_traces_total{service="",stop_reason="max-missing"} 1"#,
            // 4 traces of 3 TTLs and one of 1: 13 TTLs, 3 probes and 2 replies each.
            r#"service_traceroute_probes_sent_total{service="video"} 39"#,
            r#"service_traceroute_replies_matched_total{service="video"} 26"#,
            r#"service_traceroute_probes_sent_total{service=""} 18"#,
            r#"service_traceroute_replies_matched_total{service=""} 12"#,
            "# TYPE service_traceroute_trace_duration_seconds histogram",
            "# UNIT service_traceroute_trace_duration_seconds seconds",
            r#"service_traceroute_trace_duration_seconds_count{service="video"} 5"#,
            r#"service_traceroute_trace_duration_seconds_sum{service="video"} 1.25"#,
            r#"service_traceroute_trace_duration_seconds_bucket{le="0.128",service="video"} 0"#,
            r#"service_traceroute_trace_duration_seconds_bucket{le="0.256",service="video"} 5"#,
            "service_traceroute_flows_watched_total 7",
            "service_traceroute_flows_recognised_total 5",
            "service_traceroute_traces_started_total 8",
            "service_traceroute_traces_in_progress 1",
            "service_traceroute_capture_drops_total 3",
            "# TYPE service_traceroute_traces_in_progress gauge",
            "# EOF",
        ] {
            has(&t, line);
        }
        // No label but service and stop reason (no hop address).
        assert!(!t.contains("198.1"), "{t}");
    }

    #[test]
    fn paths_forget_the_least_recently_traced_group_first() {
        let mut p = Paths::new(2);
        let g = |port: u16| Group {
            service: None,
            protocol: Protocol::Udp,
            remote: SocketAddr::new("198.19.1.2".parse().unwrap(), port),
        };
        let path = |a: &str| vec![vec![a.parse::<IpAddr>().unwrap()]];
        assert!(!p.changed(g(1), path("198.18.1.1")));
        assert!(!p.changed(g(2), path("198.18.1.1")));
        assert!(p.changed(g(1), path("198.18.1.9"))); // 1 is now the most recent
        assert!(!p.changed(g(3), path("198.18.1.1"))); // 2 forgotten
        assert!(!p.changed(g(2), path("198.18.1.9"))); // new again; 1 forgotten
        assert!(p.changed(g(3), path("198.18.1.2")));
        assert_eq!(p.last.len(), 2);
        for i in 0..10_000 {
            p.changed(
                g(3),
                path(if i % 2 == 0 {
                    "198.18.1.1"
                } else {
                    "198.18.1.2"
                }),
            );
        }
        assert!(
            p.order.len() <= 2 * p.last.len() + 1025,
            "{}",
            p.order.len()
        );
    }

    /// A server on 127.0.0.1 (port chosen by the kernel) with one trace counted.
    fn server(request_time: Duration) -> SocketAddr {
        let (mut m, reg) = Metrics::new(Arc::new(LiveStats::default()), 100);
        m.observe(&result(
            Some("video"),
            40001,
            &A,
            StopReason::RemoteDistance,
        ));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        serve(l, reg, request_time).unwrap();
        addr
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn http_serves_get_metrics_and_404_otherwise() {
        let addr = server(REQUEST_TIME);
        let ok = get(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
        );
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        let head: Vec<&str> = head.lines().collect();
        assert_eq!(head[0], "HTTP/1.1 200 OK", "{ok}");
        assert!(
            head.contains(&format!("Content-Type: {CONTENT_TYPE}").as_str()),
            "{ok}"
        );
        assert!(head.contains(&"Connection: close"), "{ok}");
        assert!(
            head.contains(&format!("Content-Length: {}", body.len()).as_str()),
            "{ok}"
        );
        has(
            body,
            r#"service_traceroute_traces_total{service="video",stop_reason="remote-distance"} 1"#,
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        // A query string is no other page.
        let q = get(addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(q.starts_with("HTTP/1.1 200 OK\r\n"), "{q}");
        for req in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET /metricsx HTTP/1.1\r\n\r\n",
            "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "nonsense\n\n",
        ] {
            let r = get(addr, req);
            assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{req:?}: {r}");
        }
        let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(big.as_bytes());
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    }

    /// A client that connects and says nothing holds the server `request_time` at most.
    #[test]
    fn a_silent_client_does_not_hang_the_server() {
        let addr = server(Duration::from_millis(300));
        let silent = TcpStream::connect(addr).unwrap();
        let t = Instant::now();
        let ok = get(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        drop(silent);
    }
}

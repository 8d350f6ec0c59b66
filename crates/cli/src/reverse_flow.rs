//! `flow --reverse` and `monitor --reverse`: each traced flow's path *back* as well, asked of
//! the flow's remote end when it runs our reverse-traceroute server.
//!
//! The request carries this project's experimental flow-probe object
//! ([`svctr_wire::revtr::FlowProbe`]): the server sends each probe as the flow's own packet
//! from its end (the service port to this host's port; for TCP the keep-alive shape with the
//! numbers this host saw), so load balancers on the way back treat the probes as the flow's
//! packets, and only up to the flow's distance (read from the TTL of the remote's packets),
//! so none reaches this host's application. A server that does not know the object is noticed
//! in one line: the reference's `main` ignores it and sends its ordinary probes (from port 1021
//! to this host's port: the path of *a* flow to this port, not necessarily the
//! application's), which the responses tell (our server marks those of flow-shaped probes);
//! one that refuses it (state 4: the reference's `indirect_multipart`, ours with
//! `--no-flow-probes`) gets a second trace with ordinary probes.
//!
//! The monitor's results come in on a channel; a printer thread traces each one's way back
//! (one at a time: each is a few round trips) and prints the two together.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use svctr_core::reverse::{ClientConfig, ReverseResult, ReverseStop};
use svctr_core::{Protocol, TraceResult};
use svctr_io::{reverse, ReverseOptions};

use crate::args::Format;
use crate::output::Run;

/// What every way back of a run shares.
#[derive(Debug, Clone)]
pub(crate) struct BackConfig {
    pub(crate) iface: Option<String>,
    pub(crate) rate: u32,
    pub(crate) probes: u8,
    pub(crate) timeout: Duration,
}

/// A traced flow's result with its way back (JSON: the result's fields, then `reverse`).
#[derive(Debug, Serialize)]
pub(crate) struct WithReverse {
    #[serde(flatten)]
    pub(crate) result: TraceResult,
    /// The way back from the remote, in the path contract.
    pub(crate) reverse: Option<ReverseResult>,
    /// Why there is no way back, or how it was traced instead (a server without the
    /// flow-probe object).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reverse_note: Option<String>,
}

/// Starts the printer: send it each result; when the channel closes it finishes the way
/// back in progress and returns the run and, for JSON, every result with its way back.
pub(crate) fn spawn_printer(
    run: Run,
    format: Format,
    cfg: BackConfig,
) -> (
    mpsc::Sender<TraceResult>,
    JoinHandle<(Run, Vec<WithReverse>)>,
) {
    let (tx, rx) = mpsc::channel::<TraceResult>();
    let thread = std::thread::spawn(move || {
        let mut run = run;
        let stop = std::sync::Arc::clone(&run.stop);
        let mut collected = Vec::new();
        loop {
            // Settle to what the monitor's run loop kept, as soon as it has (see
            // svctr_io::privilege), also while waiting.
            svctr_io::privilege::sync_thread();
            let r = match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(r) => r,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            // Again: the run loop may have set up (and switched user, emptying this thread's
            // effective set) while this thread waited.
            svctr_io::privilege::sync_thread();
            let item = trace_back(&cfg, r, &stop);
            match format {
                Format::Text => run.print(&render_text(&item)),
                Format::Jsonl => run.print(&crate::record::line(&item)),
                Format::Json => collected.push(item),
                // Refused before the run (see flow::run_monitor).
                Format::Atlas | Format::Replies | Format::Warts => {}
            }
        }
        (run, collected)
    });
    (tx, thread)
}

/// The way back of `r`'s flow (see the module doc).
fn trace_back(cfg: &BackConfig, r: TraceResult, stop: &AtomicBool) -> WithReverse {
    let done = |result, reverse, note: Option<String>| WithReverse {
        result,
        reverse,
        reverse_note: note,
    };
    if stop.load(Ordering::Relaxed) {
        return done(r, None, Some("interrupted".into()));
    }
    let Some(flow) = r.reverse_flow else {
        return done(
            r,
            None,
            Some("not traced: the flow's state is not known (a TCP connection needs packets both ways)".into()),
        );
    };
    let Some(distance) = flow.distance.filter(|d| *d > 0) else {
        return done(
            r,
            None,
            Some(
                "not traced: no router between the two ends (or their distance is unknown)".into(),
            ),
        );
    };
    let server: IpAddr = r.flow.remote.ip;
    let mut opts = ReverseOptions {
        server: Some(server),
        config: ClientConfig {
            protocol: r.flow.protocol,
            flow: flow.client_port,
            first_ttl: 1,
            // Up to the flow's distance: the probes never reach this host's application.
            max_ttl: distance,
            probes: cfg.probes,
            timeout: cfg.timeout,
            flow_probe: Some(flow),
            ..ClientConfig::default()
        },
        iface: cfg.iface.clone(),
        rate: cfg.rate,
        source: Some(r.flow.local.ip),
        receive: svctr_io::Receive::Auto,
        resolve_names: false,
    };
    let first = match reverse(&opts, stop, |_| {}) {
        Ok(back) => back,
        Err(e) => return done(r, None, Some(format!("not traced: {e}"))),
    };
    match first.stop_reason {
        ReverseStop::ServerError { state: 4 } => {
            let note = format!(
                "{server} does not take the flow-probe extension (state 4): its way back traced \
                 with ordinary probes to port {} instead",
                flow.client_port
            );
            eprintln!("service-traceroute: {note}");
            opts.config.flow_probe = None;
            match reverse(&opts, stop, |_| {}) {
                Ok(back) if back.stop_reason.is_ok() => done(r, Some(back), Some(note)),
                Ok(back) => {
                    let why = back.stop_reason.describe();
                    done(r, Some(back), Some(format!("{note}; {why}")))
                }
                Err(e) => done(r, None, Some(format!("{note}; not traced: {e}"))),
            }
        }
        ref why if !why.is_ok() => {
            let why = why.describe();
            done(r, Some(first), Some(format!("not traced: {why}")))
        }
        // Answered, but not marked as the flow's own packets: the server ignored the object
        // (the reference's `main` does) and sent ordinary probes, up to the flow's distance.
        _ if !first.flow_shaped => {
            let note = format!(
                "{server} ignored the flow-probe extension: its way back traced with ordinary \
                 probes from port 1021 to port {} instead",
                flow.client_port
            );
            eprintln!("service-traceroute: {note}");
            done(r, Some(first), Some(note))
        }
        _ => done(r, Some(first), None),
    }
}

/// The flow's text, then its way back.
fn render_text(item: &WithReverse) -> String {
    let mut out = svctr_core::render_text(&item.result);
    let f = &item.result.flow;
    let proto = match f.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
    };
    let join = |ip: IpAddr, port: u16| match ip {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        IpAddr::V4(a) => format!("{a}:{port}"),
    };
    out.push_str(&format!(
        "reverse: from {} back to {}, {proto}",
        join(f.remote.ip, f.remote.port),
        join(f.local.ip, f.local.port)
    ));
    match &item.reverse {
        Some(back) => {
            out.push_str(if back.flow_shaped {
                ", the flow's own 5-tuple\n"
            } else {
                ", ordinary probes from port 1021\n"
            });
            for h in &back.graph.hops {
                out.push_str(&svctr_core::render_hop(&hop_of(h), false));
            }
            let why = match &back.stop_reason {
                // Asked up to the flow's distance: the next hop is this host.
                ReverseStop::MaxTtl => "the flow's distance (this host is next)".to_string(),
                other => other.describe(),
            };
            out.push_str(&format!(
                "stop: {why}; {} requests, {} responses\n",
                back.requests_sent, back.responses
            ));
        }
        None => out.push('\n'),
    }
    if let Some(note) = &item.reverse_note {
        out.push_str(&format!("note: {note}\n"));
    }
    out.push('\n');
    out
}

/// A TTL of a path graph as the traceroute text renders it.
fn hop_of(h: &svctr_core::GraphHop) -> svctr_core::Hop {
    svctr_core::Hop {
        ttl: h.ttl,
        probes: h.nodes.iter().flat_map(|n| n.probes.clone()).collect(),
    }
}

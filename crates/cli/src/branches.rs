//! `monitor --multipath` (and `flow --multipath`): each destination's load-balanced paths are
//! discovered once (fresh flows, the MDA engine, in the background), and every traced flow's
//! result is marked with its branch among them ([`svctr_core::FlowBranch`]).
//!
//! The monitor's results come in on a channel; a printer thread starts the discoveries, holds
//! each result until its destination's discovery is over (new results of a destination
//! already discovered pass at once) and prints. The discoveries' own probes leave with low
//! TTLs, which the monitor never takes for flows (`svctr_core::PROBE_TTL_MAX`).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use svctr_core::{FlowBranch, MdaConfig, MdaEvent, MdaResult, Protocol, TraceResult};
use svctr_io::{spawn_multipath, MultipathHandle, MultipathOptions};

use crate::args::Format;
use crate::output::Run;

/// Discoveries running at once; more destinations wait their turn.
const PARALLEL: usize = 4;
/// How often the printer looks at the discoveries while it waits for results.
const TICK: Duration = Duration::from_millis(20);

/// What every discovery of a run shares.
#[derive(Debug, Clone)]
pub(crate) struct MarkerConfig {
    pub(crate) iface: Option<String>,
    pub(crate) rate: u32,
    pub(crate) confidence: f64,
    pub(crate) max_probes: u32,
    pub(crate) timeout: Duration,
}

/// A traced flow's result with its branch (JSON: the result's fields, then `multipath`).
#[derive(Debug, Serialize)]
pub(crate) struct Marked {
    #[serde(flatten)]
    pub(crate) result: TraceResult,
    /// The flow's path among its destination's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) multipath: Option<FlowBranch>,
    /// Why the destination's discovery failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) multipath_error: Option<String>,
}

/// What is discovered once: a protocol, a destination and, for TCP, its port (UDP
/// discoveries use the traceroute ports, never the application's).
type Key = (Protocol, IpAddr, Option<u16>);

fn key_of(r: &TraceResult) -> Key {
    let f = &r.flow;
    let port = (f.protocol == Protocol::Tcp).then_some(f.remote.port);
    (f.protocol, f.remote.ip, port)
}

enum Discovery {
    Waiting(IpAddr),
    Running(MultipathHandle),
    Done(Result<MdaResult, String>),
}

/// The printer thread's state.
struct Printer {
    cfg: MarkerConfig,
    format: Format,
    discoveries: HashMap<Key, Discovery>,
    queue: VecDeque<Key>,
    held: Vec<TraceResult>,
    collected: Vec<Marked>,
    stop: Arc<AtomicBool>,
}

/// Starts the printer: send it each result; when the channel closes it finishes the
/// discoveries (cancelled if the run was stopped), prints what it holds and returns the run
/// and, for JSON, every marked result.
pub(crate) fn spawn_printer(
    run: Run,
    format: Format,
    cfg: MarkerConfig,
) -> (mpsc::Sender<TraceResult>, JoinHandle<(Run, Vec<Marked>)>) {
    let (tx, rx) = mpsc::channel::<TraceResult>();
    let thread = std::thread::spawn(move || {
        let mut run = run;
        let mut p = Printer {
            cfg,
            format,
            discoveries: HashMap::new(),
            queue: VecDeque::new(),
            held: Vec::new(),
            collected: Vec::new(),
            stop: Arc::clone(&run.stop),
        };
        loop {
            // Settle to what the monitor's run loop kept (see svctr_io::privilege).
            svctr_io::privilege::sync_thread();
            let got = rx.recv_timeout(TICK);
            // Again before starting discoveries: the run loop may have set up meanwhile.
            svctr_io::privilege::sync_thread();
            match got {
                Ok(r) => p.take(r),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            p.poll();
            p.release(&mut run);
        }
        // The monitor is over: the discoveries under way finish (or end as interrupted).
        while p
            .discoveries
            .values()
            .any(|d| !matches!(d, Discovery::Done(_)))
        {
            if p.stop.load(Ordering::Relaxed) {
                p.cancel_all();
            }
            p.poll();
            p.release(&mut run);
            std::thread::sleep(TICK);
        }
        p.release(&mut run);
        (run, p.collected)
    });
    (tx, thread)
}

impl Printer {
    fn take(&mut self, r: TraceResult) {
        let key = key_of(&r);
        if let std::collections::hash_map::Entry::Vacant(e) = self.discoveries.entry(key) {
            e.insert(Discovery::Waiting(r.flow.local.ip));
            self.queue.push_back(key);
        }
        self.held.push(r);
    }

    fn start(&self, key: &Key, source: IpAddr) -> MultipathHandle {
        let (protocol, dst, port) = *key;
        spawn_multipath(MultipathOptions {
            targets: vec![dst],
            config: MdaConfig {
                protocol,
                port,
                confidence: self.cfg.confidence,
                max_probes: self.cfg.max_probes,
                timeout: self.cfg.timeout,
                ..MdaConfig::default()
            },
            iface: self.cfg.iface.clone(),
            rate: self.cfg.rate,
            resolve_names: false,
            source: Some(source),
            receive: svctr_io::Receive::Auto,
            pcap: None,
        })
    }

    /// Starts waiting discoveries as room allows; collects those that ended.
    fn poll(&mut self) {
        for d in self.discoveries.values_mut() {
            let Discovery::Running(h) = d else { continue };
            let mut finished = None;
            let over = loop {
                match h.try_next_event() {
                    Some(MdaEvent::Finished(r)) => finished = Some(*r),
                    Some(_) => {}
                    None => break h.is_finished(),
                }
            };
            if finished.is_some() || over {
                let Discovery::Running(h) =
                    std::mem::replace(d, Discovery::Done(Err(String::new())))
                else {
                    continue;
                };
                *d = Discovery::Done(match (finished, h.wait()) {
                    (Some(r), _) => Ok(r),
                    (None, Err(e)) => Err(e.to_string()),
                    (None, Ok(mut s)) => s.results.pop().ok_or_else(|| "no result".into()),
                });
            }
        }
        let running = self
            .discoveries
            .values()
            .filter(|d| matches!(d, Discovery::Running(_)))
            .count();
        for _ in running..PARALLEL {
            let Some(key) = self.queue.pop_front() else {
                break;
            };
            if let Some(Discovery::Waiting(src)) = self.discoveries.get(&key) {
                let h = self.start(&key, *src);
                self.discoveries.insert(key, Discovery::Running(h));
            }
        }
    }

    fn cancel_all(&mut self) {
        self.queue.clear();
        for d in self.discoveries.values_mut() {
            match d {
                Discovery::Running(h) => h.cancel(),
                Discovery::Waiting(_) => {
                    *d = Discovery::Done(Err("interrupted before it started".into()));
                }
                Discovery::Done(_) => {}
            }
        }
    }

    /// Prints (or keeps, for JSON) the held results whose destination is discovered.
    fn release(&mut self, run: &mut Run) {
        let held = std::mem::take(&mut self.held);
        for r in held {
            let Some(Discovery::Done(d)) = self.discoveries.get(&key_of(&r)) else {
                self.held.push(r);
                continue;
            };
            let marked = match d {
                Ok(mda) => Marked {
                    multipath: Some(svctr_core::compare_multipath(r.clone(), mda.clone()).branch()),
                    result: r,
                    multipath_error: None,
                },
                Err(e) => Marked {
                    result: r,
                    multipath: None,
                    multipath_error: Some(e.clone()),
                },
            };
            match self.format {
                Format::Text => {
                    let line = match (&marked.multipath, &marked.multipath_error) {
                        (Some(b), _) => format!("multipath: {}\n", b.summary),
                        (None, Some(e)) => format!("multipath: discovery failed: {e}\n"),
                        (None, None) => String::new(),
                    };
                    run.print(&format!(
                        "{}{line}\n",
                        svctr_core::render_text(&marked.result)
                    ));
                }
                Format::Jsonl => run.print(&crate::record::line(&marked)),
                Format::Json => self.collected.push(marked),
                // Refused before the run (see flow::run_monitor).
                Format::Atlas | Format::Replies | Format::Warts => {}
            }
        }
    }
}

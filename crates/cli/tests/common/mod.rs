//! Helpers shared by the end-to-end tests: running the tracer in the lab's client namespace
//! and reading its JSON lines.

#![allow(dead_code)] // each test file uses its own subset

use std::process::Output;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::de::DeserializeOwned;
use svctr_lab::{output_with_timeout, Lab};

pub(crate) mod record;
pub(crate) use record::record;

pub(crate) const TRACER: &str = env!("CARGO_BIN_EXE_service-traceroute");

/// Runs the tracer in the client namespace (at most `timeout`).
pub(crate) fn tracer_for(lab: &Lab, args: &[&str], timeout: Duration) -> Output {
    let mut c = lab.command(lab.client_ns(), TRACER);
    c.args(args);
    output_with_timeout(&mut c, None, timeout).expect("tracer runs")
}

/// Starts the tracer in the client namespace in the background.
pub(crate) fn tracer_in_background(
    lab: &Lab,
    args: &[&str],
    timeout: Duration,
) -> JoinHandle<Output> {
    let mut c = lab.command(lab.client_ns(), TRACER);
    c.args(args);
    std::thread::spawn(move || output_with_timeout(&mut c, None, timeout).expect("tracer runs"))
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON lines of a successful run.
pub(crate) fn json_lines<T: DeserializeOwned>(out: &Output) -> Vec<T> {
    assert!(
        out.status.success(),
        "tracer failed ({:?}): {}",
        out.status,
        stderr(out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(record)
        .collect()
}

/// Loads an nftables script in namespace `ns`; panics on failure.
pub(crate) fn nft_in(lab: &Lab, ns: &str, script: &str) {
    let mut c = lab.command(ns, "nft");
    c.args(["-f", "-"]);
    let out = output_with_timeout(&mut c, Some(script), Duration::from_secs(10)).expect("nft");
    assert!(out.status.success(), "nft in {ns}: {}", stderr(&out));
}

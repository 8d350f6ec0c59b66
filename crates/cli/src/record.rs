//! The JSON contract: every record the tool prints carries the same envelope, ahead of its own
//! fields (`schema/record.schema.json` describes both, and the tests validate every JSON
//! record they read against it):
//!
//! * `schema_version`: this contract's version, raised when a field changes meaning or goes;
//! * `record_type`: what the record is (`flow-trace`, `traceroute`, `multipath`, ...);
//! * `record_id`: unique, a UUID version 7 (RFC 9562 section 5.7: time-ordered, so stores
//!   that sort by it keep records in time order);
//! * `tool`, `tool_version`: `service-traceroute` and the version of the binary;
//! * `vantage`: the name of the measuring machine (`--vantage`, default the host name).

use std::sync::OnceLock;

use serde::Serialize;
use svctr_core::reverse::{ReverseResult, ServerEvent, TwoWayMultipath, TwoWayResult};
use svctr_core::{Comparison, MdaResult, MultipathComparison, TraceResult, TracerouteResult};

/// The version of the contract (schema/record.schema.json's `schema_version`).
pub(crate) const SCHEMA_VERSION: u32 = 1;

static VANTAGE: OnceLock<String> = OnceLock::new();

/// Names the vantage point for every record of this process (once, at start).
pub(crate) fn set_vantage(name: Option<String>) {
    let name = name.unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
    });
    let _ = VANTAGE.set(name);
}

/// A record of the contract: its `record_type`.
pub(crate) trait Record: Serialize {
    const TYPE: &'static str;
}

macro_rules! records {
    ($($t:ty => $name:literal),* $(,)?) => {
        $(impl Record for $t { const TYPE: &'static str = $name; })*
    };
}

records! {
    TraceResult => "flow-trace",
    crate::branches::Marked => "flow-trace",
    crate::reverse_flow::WithReverse => "flow-trace",
    TracerouteResult => "traceroute",
    MdaResult => "multipath",
    Comparison => "comparison",
    MultipathComparison => "multipath-comparison",
    ReverseResult => "reverse",
    TwoWayResult => "two-way",
    TwoWayMultipath => "two-way-multipath",
    ServerEvent => "reverse-server-event",
}

impl<T: Record> Record for Box<T> {
    const TYPE: &'static str = T::TYPE;
}

/// A record with the envelope ahead of its fields.
#[derive(Serialize)]
pub(crate) struct Stamped<'a, T> {
    schema_version: u32,
    record_type: &'static str,
    record_id: String,
    tool: &'static str,
    tool_version: &'static str,
    vantage: &'static str,
    #[serde(flatten)]
    record: &'a T,
}

pub(crate) fn stamp<T: Record>(record: &T) -> Stamped<'_, T> {
    Stamped {
        schema_version: SCHEMA_VERSION,
        record_type: T::TYPE,
        record_id: uuid::Uuid::now_v7().to_string(),
        tool: crate::BIN,
        tool_version: env!("CARGO_PKG_VERSION"),
        vantage: VANTAGE.get().map_or("", String::as_str),
        record,
    }
}

/// One record as one JSON line (JSON lines output).
pub(crate) fn line<T: Record>(record: &T) -> String {
    serde_json::to_string(&stamp(record)).map_or_else(|_| String::new(), |t| t + "\n")
}

/// Records collected for `--format json`: one object for one record, else an array.
pub(crate) fn collection<T: Record>(items: &[T]) -> String {
    let text = if items.len() == 1 {
        serde_json::to_string_pretty(&stamp(&items[0]))
    } else {
        let all: Vec<_> = items.iter().map(stamp).collect();
        serde_json::to_string_pretty(&all)
    };
    text.map(|t| t + "\n").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_comes_first_and_ids_differ() {
        set_vantage(Some("vp-1".into()));
        let r = ServerEvent {
            at: "2026-12-05T00:00:00Z".into(),
            client: "198.18.1.2".parse().unwrap(),
            id: 7,
            event: svctr_core::reverse::SessionEvent::TimedOut,
        };
        let a = line(&r);
        let b = line(&r);
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert!(a.starts_with("{\"schema_version\":1,\"record_type\":\"reverse-server-event\""));
        assert_eq!(v["vantage"], "vp-1");
        assert_eq!(v["tool"], "service-traceroute");
        assert_eq!(v["tool_version"], env!("CARGO_PKG_VERSION"));
        // The record's own `id` (the request's) stays what it was.
        assert_eq!(v["id"], 7);
        let id = v["record_id"].as_str().unwrap();
        let parsed = uuid::Uuid::parse_str(id).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        let w: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_ne!(v["record_id"], w["record_id"]);
        // Time-ordered: a later record's id sorts after.
        assert!(w["record_id"].as_str().unwrap() > id);
    }
}

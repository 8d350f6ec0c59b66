//! schema/record.schema.json itself: a record as the tool prints it passes, and the mistakes
//! the contract is there to catch do not (an unnamed field, a missing envelope field, an id
//! that is not a UUIDv7, an address that is not one, an unknown record type). The records the
//! tool really prints are checked in every lab test that reads them (common/record.rs); this
//! file needs no network.

#[path = "common/record.rs"]
mod record;

use serde_json::{json, Value};

fn valid() -> Value {
    json!({
        "schema_version": 1,
        "record_type": "traceroute",
        "record_id": "01a246c9-e21e-7313-89ac-337ed03adea6",
        "tool": "service-traceroute",
        "tool_version": "0.1.0",
        "vantage": "vp-1",
        "destination": "198.19.1.2",
        "port": 33434,
        "source": "198.18.1.2",
        "source_port": 41699,
        "protocol": "udp",
        "strategy": "paris",
        "ip_version": 4,
        "algorithm": "concurrent",
        "start": "2026-12-05T15:19:25.470398Z",
        "end": "2026-12-05T15:19:25.470846Z",
        "stop_reason": "remote-reached",
        "hops": [
            {"ttl": 1, "probes": [
                {"addr": "198.18.1.1", "rtt_ms": 0.042, "icmp_type": 11, "icmp_code": 0,
                 "reply_ttl": 64, "quoted_ttl": 1, "ip_id": 1, "tag": 1},
                {"addr": null, "rtt_ms": null, "icmp_type": null, "icmp_code": null, "tag": 2}
            ]}
        ],
        "probes_sent": 2,
        "replies": 1
    })
}

fn rejected(v: &Value) -> bool {
    std::panic::catch_unwind(|| record::check(v)).is_err()
}

#[test]
fn the_schema_accepts_a_record_and_rejects_what_breaks_the_contract() {
    record::check(&valid());
    record::check(&json!([valid(), valid()]));

    let mut extra = valid();
    extra["surprise"] = json!(1);
    assert!(rejected(&extra), "a field the schema does not name");
    let mut deep = valid();
    deep["hops"][0]["probes"][0]["surprise"] = json!(1);
    assert!(rejected(&deep), "the same, in a probe");
    for key in [
        "schema_version",
        "record_type",
        "record_id",
        "tool",
        "tool_version",
        "vantage",
    ] {
        let mut missing = valid();
        missing.as_object_mut().unwrap().remove(key);
        assert!(rejected(&missing), "without {key}");
    }
    for (key, value, what) in [
        (
            "record_id",
            json!("0b1e8c3e-5d6f-4a7b-8c9d-0e1f2a3b4c5d"),
            "a UUID of version 4",
        ),
        (
            "destination",
            json!("198.19.1.300"),
            "an address that is not one",
        ),
        ("start", json!("yesterday"), "a time that is not RFC 3339"),
        (
            "record_type",
            json!("flow-trace"),
            "a traceroute's fields under another type",
        ),
        (
            "schema_version",
            json!(2),
            "another version of the contract",
        ),
    ] {
        let mut v = valid();
        v[key] = value;
        assert!(rejected(&v), "{what}");
    }
}

//! Every JSON record a test reads is first checked against `schema/record.schema.json`, the
//! contract the tool's JSON keeps (envelope, record types, no field the schema does not name).

#![allow(dead_code)] // each test file uses its own subset

use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde_json::Value;

fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schema/record.schema.json"
        );
        let text = std::fs::read_to_string(path).expect("schema/record.schema.json");
        let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("the schema is a valid JSON Schema")
    })
}

/// Checks `v` (one record, or an array of records) against the schema; panics with the
/// schema's complaints and the record.
pub(crate) fn check(v: &Value) {
    let errors: Vec<String> = validator()
        .iter_errors(v)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "not a record of schema/record.schema.json:\n{}\n{v}",
        errors.join("\n")
    );
}

/// Parses one JSON record (or an array of them), checks it against the schema and reads it
/// as `T`.
pub(crate) fn record<T: DeserializeOwned>(text: impl AsRef<[u8]>) -> T {
    let text = text.as_ref();
    let v: Value = serde_json::from_slice(text).unwrap_or_else(|e| {
        panic!("bad JSON ({e}): {}", String::from_utf8_lossy(text));
    });
    check(&v);
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
}

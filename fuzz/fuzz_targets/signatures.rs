//! Fuzz target: a signature file (lossy UTF-8) into `Signatures::from_toml_str`; when it
//! parses, name and address lookups, `select` and `merge`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    svctr_detect::fuzzing::signatures(data);
});

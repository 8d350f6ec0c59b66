//! Fuzz target: a sequence of IP packets (each prefixed by its u16 length) through one
//! `Detector` (this host: 192.0.2.10 and 2001:db8::10; the builtin signatures plus a
//! catch-all), then timeouts and lookups. A match must come from a ClientHello with a valid
//! SNI, and every reassembly must be gone after the timeouts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    svctr_detect::fuzzing::detector(std::time::Instant::now(), data);
});

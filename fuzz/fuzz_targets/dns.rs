//! Fuzz target: one DNS message into `DnsCache::handle_message` (twice, a second apart), then
//! lookups and expiry. Nothing may panic; names handed out are normalised.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    svctr_detect::fuzzing::dns(std::time::Instant::now(), data);
});

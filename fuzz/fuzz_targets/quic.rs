//! Fuzz target: `decrypt_initial` on a UDP datagram with and without an original DCID (byte 0
//! chooses), the decrypted CRYPTO frames through a `CryptoAssembler`, and the datagram read as
//! `[offset][len][data]` CRYPTO pieces (see `svctr_detect::fuzzing::quic`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    svctr_detect::fuzzing::quic(data);
});

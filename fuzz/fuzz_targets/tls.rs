//! Fuzz target: `sni_from_handshake` on the input, and `ClientHelloAssembler` over the input
//! cut into segments delivered out of order with a retransmission (bytes 0-1 choose the
//! segmentation, see `svctr_detect::fuzzing::tls`). An SNI that comes out must be a valid,
//! normalised host name.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    svctr_detect::fuzzing::tls(data);
});

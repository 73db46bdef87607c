#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| attestation_fuzz::envelope_message(data));

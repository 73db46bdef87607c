#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| attestation_fuzz::tpm_public(data));

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| attestation_fuzz::x509_ek_cert(data));

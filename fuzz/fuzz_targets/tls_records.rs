#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| c100k::fuzzing::tls_records(data));

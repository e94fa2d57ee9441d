#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bench_client::fuzz_response(data));

#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| c100k::fuzzing::sse_position(data));

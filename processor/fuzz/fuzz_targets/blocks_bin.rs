#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| processor::fuzzing::blocks_bin(data));

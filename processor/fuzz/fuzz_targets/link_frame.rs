#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| processor::fuzzing::link_frame(data));

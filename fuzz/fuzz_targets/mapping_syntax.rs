#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rewrite_fuzz::mapping_syntax(data));

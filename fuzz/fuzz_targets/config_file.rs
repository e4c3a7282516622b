#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rewrite_fuzz::config_file(data));

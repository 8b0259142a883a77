//! Any text as a config file: the loader lists problems or returns a config, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = infergate::config::parse(text, "fuzz");
    }
});

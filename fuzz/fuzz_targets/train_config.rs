//! Fuzz target: the TOML training configuration (`ppcr train --config`, a run's config.toml).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ppcr::fuzzing::train_config(text);
    }
});

//! Fuzz target: image files (PNG, JPEG, BMP, TIFF) decoded and converted as the loader does.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ppcr::fuzzing::image(data);
});

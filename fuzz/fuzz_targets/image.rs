//! Fuzz target: image files (PNG, JPEG, BMP, TIFF) decoded and converted as the loader does.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys aborts on every panic, even one the library catches. zune-jpeg 0.5.15
    // panics in its IDCT on some malformed JPEGs (a dependency bug, recorded in
    // docs/reliability.md), which `decode_image_bytes` catches and reports as a bad file; so
    // that the run goes on past it, panics from zune-jpeg's sources unwind to that catch,
    // and every other panic still aborts.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let abort_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_zune = info
                .location()
                .is_some_and(|location| location.file().contains("/zune-jpeg-"));
            if !in_zune {
                abort_hook(info);
            }
        }));
    });
    let _ = ppcr::fuzzing::image(data);
});

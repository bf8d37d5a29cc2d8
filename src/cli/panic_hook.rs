//! The process's panic hook: silent for the one panic the loader catches on purpose, the
//! default message for every other.
//!
//! zune-jpeg 0.5.15 (the `image` crate's JPEG decoder) panics on some malformed JPEGs (found by
//! the `image` fuzz target; see docs/reliability.md). The loader catches that panic and reports
//! a bad file naming it, but the default hook would first print a "panicked at" message and
//! make a clean error look like a crash. Panics anywhere else are bugs and keep the default
//! report.

use std::panic::{self, PanicHookInfo};

/// Whether a panic was raised inside zune-jpeg's sources.
fn raised_in_jpeg_decoder(info: &PanicHookInfo<'_>) -> bool {
    info.location()
        .is_some_and(|location| location.file().contains("zune-jpeg"))
}

/// Install the hook; call once, at the start of `main`.
pub fn install() {
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if !raised_in_jpeg_decoder(info) {
            default_hook(info);
        }
    }));
}

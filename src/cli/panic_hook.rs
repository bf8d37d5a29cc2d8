//! The process's panic hook: silent for the one panic the loader catches on purpose and for
//! panics while a GPU device is being tried out, the default message for every other.
//!
//! zune-jpeg 0.5.15 (the `image` crate's JPEG decoder) panics on some malformed JPEGs (found by
//! the `image` fuzz target; see docs/reliability.md). The loader catches that panic and reports
//! a bad file naming it, but the default hook would first print a "panicked at" message and
//! make a clean error look like a crash. Likewise, a GPU backend whose driver library is
//! missing panics on its own device threads; [`quietly`] records those messages so `--device`
//! can report them as one clean error. Panics anywhere else are bugs and keep the default
//! report.

use std::panic::{self, PanicHookInfo};
use std::sync::Mutex;

/// Messages of panics raised while [`quietly`] runs (`None` when it is not running).
static QUIET_PANICS: Mutex<Option<Vec<String>>> = Mutex::new(None);

/// Run `operation` with panic reports held back: the messages of panics raised meanwhile, on any
/// thread, are returned instead of printed.
pub fn quietly<R>(operation: impl FnOnce() -> R) -> (R, Vec<String>) {
    *QUIET_PANICS.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    let result = operation();
    let messages = QUIET_PANICS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    (result, messages)
}

/// The panic's message, if [`quietly`] is running: then it is recorded rather than printed.
fn record_if_quiet(info: &PanicHookInfo<'_>) -> bool {
    let mut quiet = QUIET_PANICS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(messages) = quiet.as_mut() else {
        return false;
    };
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".to_string());
    messages.push(message);
    true
}

/// Whether a panic was raised inside zune-jpeg's sources.
fn raised_in_jpeg_decoder(info: &PanicHookInfo<'_>) -> bool {
    info.location()
        .is_some_and(|location| location.file().contains("zune-jpeg"))
}

/// Install the hook; call once, at the start of `main`.
pub fn install() {
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if !raised_in_jpeg_decoder(info) && !record_if_quiet(info) {
            default_hook(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_on_other_threads_are_recorded_while_quiet_and_reported_after() {
        install();
        let (joined, messages) = quietly(|| {
            std::thread::spawn(|| panic!("no driver library here"))
                .join()
                .is_err()
        });
        assert!(joined);
        assert_eq!(messages, vec!["no driver library here".to_string()]);
        assert!(QUIET_PANICS.lock().unwrap().is_none());
    }
}

//! Pause points for crash tests: a way to stop the training process at an exact moment
//! (mid-epoch, mid-checkpoint, between a checkpoint and its pointer) so a test can kill it
//! there with SIGKILL and prove that resuming loses nothing.
//!
//! When the environment variable `PPCR_PAUSE_AT` names a point the run reaches, the process
//! creates the file named by `PPCR_PAUSE_MARKER` (so the test knows it is there) and waits
//! until the test kills it or deletes the marker (to let it go on, e.g. after filling the
//! disk). Points: `step:E:S` (after step S of epoch E), `checkpoint:E` (inside the
//! write of epoch E's checkpoint, after the model file and before the optimizer file) and
//! `pointer:E` (epoch E's folder is complete but `latest` still names epoch E-1). Without the
//! variable this costs one environment lookup per process.

use std::sync::OnceLock;
use std::time::Duration;

/// Environment variable naming the pause point.
pub const PAUSE_AT_VAR: &str = "PPCR_PAUSE_AT";
/// Environment variable naming the file created on reaching the pause point.
pub const PAUSE_MARKER_VAR: &str = "PPCR_PAUSE_MARKER";

fn requested() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| std::env::var(PAUSE_AT_VAR).ok())
        .as_deref()
}

/// Wait at `point` if it is the pause point this process was asked to stop at.
pub(crate) fn pause_point(point: impl FnOnce() -> String) {
    let Some(wanted) = requested() else {
        return;
    };
    if point() != wanted {
        return;
    }
    let Some(marker) = std::env::var_os(PAUSE_MARKER_VAR) else {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    };
    if std::fs::write(&marker, wanted).is_err() {
        return;
    }
    while std::path::Path::new(&marker).exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! Says on stderr what a first run on a GPU waits for: while CubeCL compiles kernels (minutes on
//! a new machine), a line every few seconds with the count so far, and one when it stops, so a
//! run does not sit silently on its header. A process that compiles nothing prints nothing.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often the counter is read.
const POLL: Duration = Duration::from_millis(250);
/// Compilation must run this long before the first line (a few kernels are not worth a line).
const FIRST_LINE_AFTER: Duration = Duration::from_secs(2);
/// Time between lines while kernels keep compiling.
const LINE_EVERY: Duration = Duration::from_secs(10);
/// Quiet this long after a kernel means compiling has stopped for now.
const QUIET: Duration = Duration::from_secs(3);

/// Start the watcher for the life of the process (once; later calls do nothing).
pub fn start(cache_dir: PathBuf) {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("ppcr-compile-notice".into())
            .spawn(move || watch(cache_dir));
        // Without the thread the run works the same, only without the notices.
        drop(spawned);
    });
}

fn watch(cache_dir: PathBuf) {
    let mut seen = 0usize;
    let mut burst: Option<(Instant, usize)> = None; // start and count when the burst began
    let mut last_change = Instant::now();
    let mut last_line: Option<Instant> = None;
    loop {
        std::thread::sleep(POLL);
        let count = ppcr::gpu::kernels_compiled();
        let now = Instant::now();
        if count != seen {
            seen = count;
            last_change = now;
            burst.get_or_insert((now, count.saturating_sub(1)));
        }
        let Some((began, before)) = burst else {
            continue;
        };
        let quiet = now.duration_since(last_change) >= QUIET;
        let due = match last_line {
            None => now.duration_since(began) >= FIRST_LINE_AFTER,
            Some(at) => now.duration_since(at) >= LINE_EVERY,
        };
        if quiet {
            if last_line.is_some() {
                line(&format!(
                    "compiled {} GPU kernels in {:.0} s; kept in {} for later runs",
                    seen - before,
                    last_change.duration_since(began).as_secs_f64(),
                    cache_dir.display()
                ));
            }
            burst = None;
            last_line = None;
        } else if due {
            line(&format!(
                "compiling GPU kernels: {} so far ({:.0} s; a first run on this machine \
                 compiles and tunes them, later runs reuse what {} keeps)",
                seen - before,
                now.duration_since(began).as_secs_f64(),
                cache_dir.display()
            ));
            last_line = Some(now);
        }
    }
}

/// One line on stderr; a closed stderr is not worth stopping a run for.
fn line(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

//! How many GPU kernels this process has compiled: CubeCL reports each compilation as a
//! `log` record (see [`super::configure_runtime`]), and a `log` logger that only counts them
//! turns that into a number a progress display can poll.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The prefixes of CubeCL's compilation message at its basic and full levels (cubecl-server
/// 0.11.3, `CompiledKernel::format_basic` and `format_full`).
const COMPILATION_PREFIXES: [&str; 2] = ["[Compiling kernel]", "[START_KERNEL_COMPILATION]"];

fn is_compilation(text: &str) -> bool {
    COMPILATION_PREFIXES
        .iter()
        .any(|prefix| text.starts_with(prefix))
}

static COMPILED: AtomicUsize = AtomicUsize::new(0);

struct CompileCounter;

impl log::Log for CompileCounter {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record) {
        if record.level() == log::Level::Info
            && record.args().as_str().map_or_else(
                || is_compilation(&record.args().to_string()),
                is_compilation,
            )
        {
            COMPILED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

static COUNTER: CompileCounter = CompileCounter;

/// Install the counting logger as the process's `log` logger (once; later calls, and a process
/// that installed another logger first, leave things as they are). Records other than
/// compilation messages are dropped, as they were with no logger.
pub fn count_compilations() {
    if log::set_logger(&COUNTER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// GPU kernels compiled by this process so far (0 until [`count_compilations`] ran).
pub fn kernels_compiled() -> usize {
    COMPILED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_compilation_messages_are_counted() {
        count_compilations();
        let before = kernels_compiled();
        log::info!(target: "cubecl", "[Compiling kernel] matmul_entry");
        log::info!(target: "cubecl", "[START_KERNEL_COMPILATION]\nname: {}", "conv2d");
        log::info!(target: "wgpu", "Adapter selected");
        log::warn!("[Compiling kernel] at the wrong level");
        // Other tests in this process may compile kernels too (a GPU build's kernel tests), so
        // the count grows by at least the two messages above.
        assert!(kernels_compiled() >= before + 2);
        if cfg!(not(any(feature = "cuda", feature = "wgpu"))) {
            assert_eq!(kernels_compiled(), before + 2);
        }
    }
}

//! The GPU kernel cache (src/gpu): a second process, started in another working directory,
//! finds in `PPCR_CACHE_DIR` what the first one tuned (CubeCL's autotune results) and, where
//! the backend keeps compiled kernels (CUDA's PTX, wgpu's SPIR-V with the `vulkan` feature),
//! what it compiled; nothing is written under either working directory. Run on wgpu's CPU
//! adapter (lavapipe), as CI builds it (`--features wgpu`: WGSL, which the driver compiles in
//! every process, so there only the autotune results can be reused).

#![cfg(feature = "wgpu")]

mod common;

use std::path::Path;
use std::process::Command;

/// How often `what` occurs in CubeCL's log file (`CUBECL_DEBUG_LOG`, full level).
fn occurrences(log: &Path, what: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(what)
        .count()
}

/// Kernels compiled, as CubeCL's log reports them.
fn compilations(log: &Path) -> usize {
    occurrences(log, "[START_KERNEL_COMPILATION]")
}

/// Operations autotuned (PPCR's kernel tunes its thread layout), as CubeCL's log reports them.
fn tunings(log: &Path) -> usize {
    occurrences(log, "Fastest result")
}

/// The PPCR unit's forward and backward on the CPU adapter, once, from `dir`.
fn bench_unit(dir: &Path, cache: &Path, log: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ppcr"))
        .args([
            "bench", "--suite", "unit", "--device", "wgpu:cpu", "--runs", "1", "--warmup", "0",
            "--shape", "2x16x6x6",
        ])
        .current_dir(dir)
        .env("PPCR_CACHE_DIR", cache)
        .env("CUBECL_DEBUG_LOG", log)
        .output()
        .expect("the ppcr binary runs")
}

#[test]
fn a_second_process_in_another_directory_reuses_what_the_first_tuned_and_compiled() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let (first_dir, second_dir) = (root.path().join("a"), root.path().join("b"));
    std::fs::create_dir_all(&first_dir).unwrap();
    std::fs::create_dir_all(&second_dir).unwrap();
    let (first_log, second_log) = (
        root.path().join("first.log"),
        root.path().join("second.log"),
    );

    let first = bench_unit(&first_dir, &cache, &first_log);
    let stderr = String::from_utf8_lossy(&first.stderr);
    if !first.status.success() && stderr.contains("cannot use device wgpu:cpu") {
        common::skip("no wgpu CPU adapter (install Mesa's Vulkan driver: mesa-vulkan-drivers)");
        return;
    }
    assert!(first.status.success(), "first run failed: {stderr}");
    let (compiled, tuned) = (compilations(&first_log), tunings(&first_log));
    assert!(compiled > 0, "the first run compiled kernels");
    assert!(tuned > 0, "the first run autotuned");
    assert!(
        std::fs::read_dir(&cache).unwrap().next().is_some(),
        "the cache directory holds the store"
    );

    let second = bench_unit(&second_dir, &cache, &second_log);
    assert!(
        second.status.success(),
        "second run failed: {}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        tunings(&second_log),
        0,
        "the second process autotuned again ({tuned} the first time)"
    );
    if cfg!(feature = "vulkan") {
        assert_eq!(
            compilations(&second_log),
            0,
            "the second process compiled again ({compiled} the first time)"
        );
    }
    for dir in [&first_dir, &second_dir] {
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            0,
            "nothing is written under the working directory {}",
            dir.display()
        );
    }
}

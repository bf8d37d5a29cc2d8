//! The binary's settings for glibc's allocator: freed feature-map buffers stay in the process
//! for the next step instead of going back to the kernel.
//!
//! Training, evaluation and the benchmarks allocate and free the same multi-megabyte tensors in
//! every step. By default glibc serves a block above an adaptive threshold from a fresh `mmap`
//! and hands the top of its heap back once more than twice that threshold lies free there, so
//! whether a step's buffers are fresh memory depends on what the process allocated before. Fresh
//! memory costs a page fault for every 4 KiB on first touch: in the PPCR unit benchmark at the
//! ResNet-18 stage-1 shape, 13 thousand faults per forward+backward, about half its time.

/// Blocks up to this size come from the heap, so they are reused once freed (glibc's maximum for
/// this setting on 64-bit systems; larger blocks are still mapped and unmapped each time).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HEAP_BLOCKS_UP_TO: libc::c_int = 32 << 20;

/// Free memory at the top of the heap kept for reuse before glibc returns the excess.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEEP_FREE_UP_TO: libc::c_int = 512 << 20;

/// Apply the settings (glibc only; other C libraries keep their defaults). Call it first in
/// `main`, before other threads allocate.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes the allocator's parameters; both values are within the
    // ranges glibc accepts, and a rejected value leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE_UP_TO);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn glibc_accepts_both_settings() {
        // `mallopt` returns 1 on success and 0 for a value outside its range.
        // SAFETY: as in `keep_freed_buffers`.
        unsafe {
            assert_eq!(libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO), 1);
            assert_eq!(libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE_UP_TO), 1);
        }
    }
}

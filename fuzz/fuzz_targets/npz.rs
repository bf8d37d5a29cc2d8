//! Fuzz target: a MedMNIST `.npz` file (zip archive of `.npy` arrays), parsed from memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ppcr::fuzzing::npz(data);
});

//! Fuzz target: a CIFAR-10/100 binary batch file and a class-name list, parsed from memory.
//! The first byte picks the variant (odd: CIFAR-100); the rest is the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&selector, file)) = data.split_first() {
        let _ = ppcr::fuzzing::cifar(file, selector & 1 == 1);
    }
});

//! Fuzz target: the CSV image list (`path,label[,split]`), parsed from memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ppcr::fuzzing::csv_labels(data);
});

//! Fuzz target: checkpoint files. The first byte picks the file (model.bpk, optimizer.bpk,
//! state.json, run.json, by its value modulo 4); the rest is its contents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ppcr::fuzzing::CheckpointFile;

fuzz_target!(|data: &[u8]| {
    if let Some((&selector, file)) = data.split_first() {
        let kind = match selector % 4 {
            0 => CheckpointFile::Model,
            1 => CheckpointFile::Optimizer,
            2 => CheckpointFile::State,
            _ => CheckpointFile::RunInfo,
        };
        let _ = ppcr::fuzzing::checkpoint(kind, file);
    }
});

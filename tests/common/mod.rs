//! Helpers the end-to-end tests share: running the `ppcr` binary, the fixture folder, and the
//! two ways a command may end (success, or a clean failure with a named error and no panic).

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use ppcr::runfiles::RunDir;
use ppcr::train::load_trained_model;

/// Run the `ppcr` binary built for these tests.
pub fn ppcr<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ppcr"))
        .args(args)
        .output()
        .expect("the ppcr binary runs")
}

/// Under CI (`.ci/run` sets `PPCR_REQUIRE_ALL=1`) a test that cannot run here fails with
/// `notice`; elsewhere it prints the notice and the caller returns.
pub fn skip(notice: &str) {
    assert!(
        std::env::var_os("PPCR_REQUIRE_ALL").is_none(),
        "PPCR_REQUIRE_ALL is set and a test cannot run: {notice}"
    );
    eprintln!("NOTICE: skipped: {notice}");
}

/// `tests/fixtures/data`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

/// The command's standard output.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts the command succeeded, showing its output when it did not.
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "command failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Asserts a clean failure: non-zero exit, an `error:` line mentioning every needle, no panic.
pub fn assert_clean_failure(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "expected failure, stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(stderr.contains("error:"), "no error line: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "'{needle}' missing from: {stderr}");
    }
}

/// Arguments of `ppcr train` for a PPCR ResNet-20 on the PBC fixture images at 32 px, batch 4,
/// for `epochs` epochs into `run`.
pub fn tiny_train_args(run: &Path, epochs: usize) -> Vec<String> {
    let data = fixtures().join("pbc_mini");
    let epochs = epochs.to_string();
    [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--size",
        "32",
        "--epochs",
        &epochs,
        "--batch",
        "4",
        "--attn",
        "ppcr",
        "--out",
        run.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// Trains a PPCR ResNet-20 on the PBC fixture images at 32 px for `epochs` epochs into
/// `folder/run`, and returns the run folder.
pub fn train_tiny(folder: &Path, epochs: usize) -> PathBuf {
    let run = folder.join("run");
    assert_success(&ppcr(tiny_train_args(&run, epochs)));
    run
}

struct CollectWeights(Vec<Vec<f32>>);

impl ModuleVisitor for CollectWeights {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0
            .push(param.val().into_data().try_to_vec::<f32>().unwrap());
    }
}

/// Every float parameter of the run's `latest` checkpoint, in module order, for comparing
/// two runs bit for bit.
pub fn latest_weights(run: &Path) -> Vec<Vec<f32>> {
    let (model, _) =
        load_trained_model(&RunDir::open(run).unwrap(), "latest", &Device::flex()).unwrap();
    weights(&model)
}

/// The trained weights of a run's `latest` checkpoint (not the moving average a run that keeps
/// one evaluates), every float tensor flattened.
pub fn latest_live_weights(run: &Path) -> Vec<Vec<f32>> {
    let dir = RunDir::open(run).unwrap();
    let (model, _) = load_trained_model(&dir, "latest", &Device::flex()).unwrap();
    weights(&dir.load_live_model(model).unwrap())
}

/// Every float tensor of `model`, flattened.
pub fn weights(model: &ppcr::models::ResNet) -> Vec<Vec<f32>> {
    let mut weights = CollectWeights(Vec::new());
    model.visit(&mut weights);
    weights.0
}

/// `ppcr export --checkpoint RUN --format FORMAT --out OUT`, asserted to succeed; returns the
/// written file's bytes.
pub fn export(run: &Path, format: &str, out: &Path) -> Vec<u8> {
    let output = ppcr([
        "export",
        "--checkpoint",
        run.to_str().unwrap(),
        "--format",
        format,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_success(&output);
    std::fs::read(out).unwrap()
}

//! The folders a report is made of, read into typed structs.
//!
//! * a **run folder** of `ppcr train` (it has `run.json`): `run.json`, `metrics.json`, the
//!   per-epoch log (`log.csv` or `log.jsonl`) and, where the run wrote it,
//!   `test_predictions.csv`;
//! * a **comparison folder** of `ppcr compare` (it has `compare.json`): the summary and the
//!   logs of the runs under `runs/*/`;
//! * a **gallery**: any other folder with PNG images (searched up to [`GALLERY_DEPTH`] levels
//!   deep), plus its `explain.json` where there is one.
//!
//! Every error names the file at fault and says what is wrong with it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ReportError;
use crate::metrics::{ClassificationReport, RocCurve, one_vs_rest_auc, roc_curves};
use crate::train::{EpochRecord, RunInfo, SelectionMetric};

/// How many folder levels below a gallery folder are searched for PNG images.
pub const GALLERY_DEPTH: usize = 3;

/// At most this many images of one gallery are embedded; the rest are counted.
pub const MAX_GALLERY_IMAGES: usize = 200;

/// The first eight bytes of every PNG file.
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// One folder of a report.
#[derive(Debug, Clone)]
pub enum Source {
    /// A training run.
    Run(Box<RunSource>),
    /// A comparison of attention units over seeds.
    Compare(Box<CompareSource>),
    /// A folder of PNG images.
    Gallery(GallerySource),
}

impl Source {
    /// Read `path` as a run folder if it has `run.json`, else as a comparison folder if it has
    /// `compare.json`, else as a gallery if it holds PNG images; anything else is an error.
    pub fn read(path: &Path) -> Result<Self, ReportError> {
        if !path.is_dir() {
            let message = if path.exists() {
                "not a folder"
            } else {
                "no such folder"
            };
            return Err(io_error(path, message));
        }
        if path.join("run.json").is_file() {
            return Ok(Source::Run(Box::new(RunSource::read(path)?)));
        }
        if path.join("compare.json").is_file() {
            return Ok(Source::Compare(Box::new(CompareSource::read(path)?)));
        }
        match GallerySource::read(path)? {
            Some(gallery) => Ok(Source::Gallery(gallery)),
            None => Err(ReportError::NotAReportFolder {
                path: path.to_path_buf(),
            }),
        }
    }

    /// The folder it was read from.
    pub fn root(&self) -> &Path {
        match self {
            Source::Run(run) => &run.root,
            Source::Compare(compare) => &compare.root,
            Source::Gallery(gallery) => &gallery.root,
        }
    }
}

fn io_error(path: &Path, message: impl std::fmt::Display) -> ReportError {
    ReportError::Io {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn corrupt(path: &Path, message: impl std::fmt::Display) -> ReportError {
    ReportError::Corrupt {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn read_text(path: &Path) -> Result<String, ReportError> {
    fs::read_to_string(path).map_err(|e| io_error(path, format!("cannot read: {e}")))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ReportError> {
    serde_json::from_str(&read_text(path)?).map_err(|e| corrupt(path, e))
}

/// `metrics.json` of a finished run.
#[derive(Debug, Clone, Deserialize)]
pub struct RunMetrics {
    /// Epoch (1-based) whose weights were evaluated.
    pub best_epoch: usize,
    /// The validation metric that chose it.
    #[serde(default)]
    pub selected_on: Option<SelectionMetric>,
    /// Backbone name.
    pub backbone: String,
    /// Attention unit name.
    pub attention: String,
    /// Trainable parameters.
    pub params: usize,
    /// Epochs trained.
    pub epochs: usize,
    /// Wall time of all epochs, seconds.
    #[serde(default)]
    pub train_seconds: Option<f64>,
    /// Validation loss of the chosen weights.
    #[serde(default)]
    pub val_loss: Option<f64>,
    /// Test loss of the chosen weights.
    #[serde(default)]
    pub test_loss: Option<f64>,
    /// Validation metrics of the chosen weights.
    pub val: ClassificationReport,
    /// Test metrics of the chosen weights.
    pub test: ClassificationReport,
}

/// `test_predictions.csv`: per test image its label and class probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct TestPredictions {
    /// Number of classes (probability columns).
    pub num_classes: usize,
    /// True class per image.
    pub labels: Vec<usize>,
    /// Row-major `labels.len() x num_classes` probabilities.
    pub probabilities: Vec<f32>,
}

impl TestPredictions {
    /// Read `path`, whose header must have `index,label,predicted` and one `p_<class>` column
    /// per class of `class_names`.
    pub fn read(path: &Path, class_names: &[String]) -> Result<Self, ReportError> {
        let text = read_text(path)?;
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let header = reader.headers().map_err(|e| corrupt(path, e))?.clone();
        let expected: Vec<String> = ["index", "label", "predicted"]
            .iter()
            .map(|s| s.to_string())
            .chain(class_names.iter().map(|name| format!("p_{name}")))
            .collect();
        if header.iter().ne(expected.iter().map(String::as_str)) {
            return Err(corrupt(
                path,
                format!(
                    "header is '{}', expected '{}' for the classes of run.json",
                    header.iter().collect::<Vec<_>>().join(","),
                    expected.join(",")
                ),
            ));
        }
        let num_classes = class_names.len();
        let mut labels = Vec::new();
        let mut probabilities = Vec::new();
        for (row, record) in reader.records().enumerate() {
            let line = row + 2;
            let record = record.map_err(|e| corrupt(path, e))?;
            let label: usize = record[1].trim().parse().map_err(|_| {
                corrupt(
                    path,
                    format!("line {line}: label '{}' is not a class index", &record[1]),
                )
            })?;
            if label >= num_classes {
                return Err(corrupt(
                    path,
                    format!("line {line}: label {label} is out of range for {num_classes} classes"),
                ));
            }
            labels.push(label);
            for value in record.iter().skip(3) {
                let p: f32 = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|p: &f32| p.is_finite())
                    .ok_or_else(|| {
                        corrupt(path, format!("line {line}: '{value}' is not a probability"))
                    })?;
                probabilities.push(p);
            }
        }
        if labels.is_empty() {
            return Err(corrupt(path, "no predictions"));
        }
        Ok(TestPredictions {
            num_classes,
            labels,
            probabilities,
        })
    }

    /// One-vs-rest ROC curve and AUC of every class; `None` where a class has no positive or
    /// no negative test image.
    pub fn roc(&self) -> Vec<Option<(RocCurve, f64)>> {
        // The reader checked sizes, labels and finiteness, which is all these can fail on.
        let curves = roc_curves(&self.probabilities, self.num_classes, &self.labels)
            .expect("predictions were validated when read");
        let aucs = one_vs_rest_auc(&self.probabilities, self.num_classes, &self.labels)
            .expect("predictions were validated when read");
        curves
            .into_iter()
            .zip(aucs.per_class)
            .map(|(curve, auc)| curve.zip(auc))
            .collect()
    }
}

/// Read `log.csv` or `log.jsonl` of a run folder.
fn read_log(root: &Path) -> Result<Vec<EpochRecord>, ReportError> {
    let csv_path = root.join("log.csv");
    let jsonl_path = root.join("log.jsonl");
    if csv_path.is_file() {
        let text = read_text(&csv_path)?;
        csv::Reader::from_reader(text.as_bytes())
            .deserialize()
            .enumerate()
            .map(|(row, record)| {
                record.map_err(|e| corrupt(&csv_path, format!("line {}: {e}", row + 2)))
            })
            .collect()
    } else if jsonl_path.is_file() {
        let text = read_text(&jsonl_path)?;
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(row, line)| {
                serde_json::from_str(line)
                    .map_err(|e| corrupt(&jsonl_path, format!("line {}: {e}", row + 1)))
            })
            .collect()
    } else {
        Err(io_error(
            &csv_path,
            "missing (and no log.jsonl either): the run has no epoch log",
        ))
    }
}

/// A run folder of `ppcr train`.
#[derive(Debug, Clone)]
pub struct RunSource {
    /// The folder.
    pub root: PathBuf,
    /// `run.json`.
    pub info: RunInfo,
    /// `metrics.json`.
    pub metrics: RunMetrics,
    /// The per-epoch log.
    pub log: Vec<EpochRecord>,
    /// `test_predictions.csv`; `None` for runs made before ppcr wrote it.
    pub predictions: Option<TestPredictions>,
}

impl RunSource {
    /// Read a run folder; `run.json`, `metrics.json` and the log must be there.
    pub fn read(root: &Path) -> Result<Self, ReportError> {
        let info: RunInfo = read_json(&root.join("run.json"))?;
        let metrics_path = root.join("metrics.json");
        if !metrics_path.is_file() {
            return Err(io_error(
                &metrics_path,
                "missing: the run has not finished (ppcr train writes it after the last epoch)",
            ));
        }
        let metrics: RunMetrics = read_json(&metrics_path)?;
        let classes = info.class_names.len();
        let matrix = &metrics.test.confusion_matrix;
        if matrix.len() != classes || matrix.iter().any(|row| row.len() != classes) {
            return Err(corrupt(
                &metrics_path,
                format!(
                    "the test confusion matrix is not {classes} x {classes} as run.json's classes"
                ),
            ));
        }
        let log = read_log(root)?;
        let predictions_path = root.join("test_predictions.csv");
        let predictions = if predictions_path.is_file() {
            Some(TestPredictions::read(&predictions_path, &info.class_names)?)
        } else {
            None
        };
        Ok(RunSource {
            root: root.to_path_buf(),
            info,
            metrics,
            log,
            predictions,
        })
    }
}

/// A mean and standard deviation over seeds (`null` in the file reads as `None`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MeanStd {
    /// Mean.
    pub mean: Option<f64>,
    /// Standard deviation.
    #[serde(default)]
    pub std: Option<f64>,
}

/// A metric's mean, standard deviation and per-seed values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MetricSummary {
    /// Mean over seeds.
    pub mean: Option<f64>,
    /// Standard deviation over seeds.
    #[serde(default)]
    pub std: Option<f64>,
    /// The value of each seed.
    #[serde(default)]
    pub values: Vec<Option<f64>>,
}

/// One unit's row of `compare.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CompareRow {
    /// The attention unit.
    pub attention: String,
    /// Runs (seeds) summarised.
    pub runs: usize,
    /// Trainable parameters.
    #[serde(default)]
    pub params: Option<u64>,
    /// Multiply-accumulates of one forward pass.
    #[serde(default)]
    pub macs: Option<u64>,
    /// Training wall time, seconds.
    #[serde(default)]
    pub train_seconds: Option<MeanStd>,
    /// Test metrics by name (`accuracy`, `auc_macro`, ...).
    pub metrics: BTreeMap<String, MetricSummary>,
}

/// A paired comparison of `compare.json`: a unit against a baseline over the same seeds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PairedRow {
    /// The unit the difference is taken against.
    pub baseline: String,
    /// The unit compared, where the file names it.
    #[serde(default, alias = "candidate", alias = "attention")]
    pub unit: Option<String>,
    /// The metric.
    pub metric: String,
    /// Mean over seeds of (unit - baseline).
    pub mean_difference: Option<f64>,
    /// p-value of the paired test.
    #[serde(default)]
    pub p_value: Option<f64>,
    /// Seeds paired.
    pub seeds: usize,
}

/// `compare.json`, written by `ppcr compare`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CompareFile {
    /// The data set compared on.
    pub data: String,
    /// Seeds of the runs.
    pub seeds: Vec<u64>,
    /// Units compared, in display order.
    pub units: Vec<String>,
    /// One row per unit.
    pub rows: Vec<CompareRow>,
    /// Paired comparisons.
    #[serde(default)]
    pub paired: Vec<PairedRow>,
}

/// One run of a comparison (`runs/NAME/`), as far as a report needs it.
#[derive(Debug, Clone)]
pub struct CompareRun {
    /// The run folder.
    pub root: PathBuf,
    /// Its attention unit, from `run.json`.
    pub unit: String,
    /// Its per-epoch log.
    pub log: Vec<EpochRecord>,
}

/// A comparison folder of `ppcr compare`.
#[derive(Debug, Clone)]
pub struct CompareSource {
    /// The folder.
    pub root: PathBuf,
    /// `compare.json`.
    pub summary: CompareFile,
    /// The runs under `runs/*/` (folders with a `run.json`), by folder name.
    pub runs: Vec<CompareRun>,
}

impl CompareSource {
    /// Read a comparison folder: `compare.json` and, for every `runs/*/` with a `run.json`, that
    /// run's unit and log (a folder without `runs/` has no curves).
    pub fn read(root: &Path) -> Result<Self, ReportError> {
        let summary: CompareFile = read_json(&root.join("compare.json"))?;
        let runs_dir = root.join("runs");
        let mut runs = Vec::new();
        if runs_dir.is_dir() {
            for folder in sorted_entries(&runs_dir)? {
                if !folder.join("run.json").is_file() {
                    continue;
                }
                let info: RunInfo = read_json(&folder.join("run.json"))?;
                runs.push(CompareRun {
                    unit: info.model.attention.kind.name().to_string(),
                    log: read_log(&folder)?,
                    root: folder,
                });
            }
        }
        Ok(CompareSource {
            root: root.to_path_buf(),
            summary,
            runs,
        })
    }
}

/// The entries of a folder, sorted by name, hidden ones (`.name`) left out.
fn sorted_entries(folder: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let entries =
        fs::read_dir(folder).map_err(|e| io_error(folder, format!("cannot list: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .map(|entry| entry.path())
        .collect();
    paths.sort();
    Ok(paths)
}

/// One PNG image of a gallery.
#[derive(Debug, Clone, PartialEq)]
pub struct GalleryImage {
    /// Path relative to the gallery folder, `/`-separated: the caption.
    pub name: String,
    /// The file's bytes.
    pub png: Vec<u8>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// A folder of PNG images.
#[derive(Debug, Clone)]
pub struct GallerySource {
    /// The folder.
    pub root: PathBuf,
    /// The images, sorted by relative path, at most [`MAX_GALLERY_IMAGES`].
    pub images: Vec<GalleryImage>,
    /// Images found beyond [`MAX_GALLERY_IMAGES`] and left out.
    pub left_out: usize,
    /// `explain.json` of the folder, pretty-printed, where there is one.
    pub explain: Option<String>,
}

impl GallerySource {
    /// Read the PNG images in `root` and its subfolders (up to [`GALLERY_DEPTH`] levels);
    /// `None` when there is none. A `.png` file that is not a PNG image is an error.
    pub fn read(root: &Path) -> Result<Option<Self>, ReportError> {
        let mut files = Vec::new();
        collect_pngs(root, 0, &mut files)?;
        if files.is_empty() {
            return Ok(None);
        }
        files.sort();
        let left_out = files.len().saturating_sub(MAX_GALLERY_IMAGES);
        files.truncate(MAX_GALLERY_IMAGES);
        let images = files
            .iter()
            .map(|path| read_png(root, path))
            .collect::<Result<Vec<_>, _>>()?;
        let explain_path = root.join("explain.json");
        let explain = if explain_path.is_file() {
            let value: serde_json::Value = read_json(&explain_path)?;
            Some(serde_json::to_string_pretty(&value).expect("a JSON value serialises"))
        } else {
            None
        };
        Ok(Some(GallerySource {
            root: root.to_path_buf(),
            images,
            left_out,
            explain,
        }))
    }
}

fn collect_pngs(folder: &Path, depth: usize, files: &mut Vec<PathBuf>) -> Result<(), ReportError> {
    for path in sorted_entries(folder)? {
        if path.is_dir() {
            if depth < GALLERY_DEPTH {
                collect_pngs(&path, depth + 1, files)?;
            }
        } else if path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("png"))
        {
            files.push(path);
        }
    }
    Ok(())
}

fn read_png(root: &Path, path: &Path) -> Result<GalleryImage, ReportError> {
    let png = fs::read(path).map_err(|e| io_error(path, format!("cannot read: {e}")))?;
    // The signature, then the IHDR chunk: length (4 bytes), "IHDR", width, height.
    if png.len() < 24 || png[..8] != PNG_SIGNATURE || &png[12..16] != b"IHDR" {
        return Err(corrupt(path, "not a PNG image"));
    }
    let width = u32::from_be_bytes(png[16..20].try_into().expect("4 bytes"));
    let height = u32::from_be_bytes(png[20..24].try_into().expect("4 bytes"));
    let name = path
        .strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/");
    Ok(GalleryImage {
        name,
        png,
        width,
        height,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metrics::evaluate;

    pub(crate) fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/report")
            .join(name)
    }

    fn log_record(epoch: usize) -> EpochRecord {
        EpochRecord {
            epoch,
            lr: 0.1 / epoch as f64,
            train_loss: 1.0 / epoch as f64,
            train_accuracy: 0.5 + 0.1 * epoch as f64,
            val_loss: 1.1 / epoch as f64,
            val_accuracy: 0.4 + 0.1 * epoch as f64,
            val_auc: (epoch > 1).then_some(0.6 + 0.1 * epoch as f64),
            val_balanced_accuracy: 0.4 + 0.1 * epoch as f64,
            seconds: 1.5,
            images_per_second: 100.0,
            devices: 1,
        }
    }

    /// A finished run of 3 classes and 3 epochs, in the layout `ppcr train` writes.
    pub(crate) fn write_run(root: &Path) {
        fs::create_dir_all(root).unwrap();
        fs::copy(
            fixture("compare/runs/ppcr-seed0/run.json"),
            root.join("run.json"),
        )
        .unwrap();
        let probabilities = [
            0.7, 0.2, 0.1, 0.2, 0.5, 0.3, 0.1, 0.3, 0.6, 0.4, 0.4, 0.2, 0.3, 0.3, 0.4, 0.1, 0.1,
            0.8,
        ];
        let labels = [0, 1, 2, 0, 1, 2];
        let report = evaluate(&probabilities, 3, &labels).unwrap();
        let metrics = serde_json::json!({
            "best_epoch": 2, "selected_on": "auc", "backbone": "resnet20",
            "attention": "ppcr", "params": 329747, "epochs": 3, "train_seconds": 4.5,
            "val_loss": 0.9, "test_loss": 0.8, "val": report, "test": report,
        });
        fs::write(root.join("metrics.json"), metrics.to_string()).unwrap();
        let mut log = csv::Writer::from_writer(Vec::new());
        for epoch in 1..=3 {
            log.serialize(log_record(epoch)).unwrap();
        }
        fs::write(root.join("log.csv"), log.into_inner().unwrap()).unwrap();
        let mut predictions =
            String::from("index,label,predicted,p_basophil,p_erythroblast,p_platelet\n");
        for (i, (row, label)) in probabilities.chunks(3).zip(labels).enumerate() {
            let predicted = crate::metrics::predicted_classes(row, 3).unwrap()[0];
            predictions.push_str(&format!(
                "{i},{label},{predicted},{},{},{}\n",
                row[0], row[1], row[2]
            ));
        }
        fs::write(root.join("test_predictions.csv"), predictions).unwrap();
    }

    /// A small valid PNG of `width x height` with a colour gradient.
    pub(crate) fn write_png(path: &Path, width: u32, height: u32) {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
        });
        image.save(path).unwrap();
    }

    fn error_text(result: Result<Source, ReportError>) -> String {
        result.expect_err("expected an error").to_string()
    }

    #[test]
    fn reads_a_run_folder() {
        let dir = tempfile::tempdir().unwrap();
        write_run(dir.path());
        let Source::Run(run) = Source::read(dir.path()).unwrap() else {
            panic!("not read as a run");
        };
        assert_eq!(run.info.class_names.len(), 3);
        assert_eq!(run.metrics.best_epoch, 2);
        assert_eq!(run.metrics.selected_on, Some(SelectionMetric::Auc));
        assert_eq!(run.log.len(), 3);
        assert_eq!(run.log[0], log_record(1));
        assert_eq!(run.log[0].val_auc, None);
        let predictions = run.predictions.as_ref().unwrap();
        assert_eq!(predictions.labels, vec![0, 1, 2, 0, 1, 2]);
        let roc = predictions.roc();
        assert_eq!(roc.len(), 3);
        for (class, entry) in roc.iter().enumerate() {
            let (curve, auc) = entry.as_ref().unwrap();
            assert_eq!(Some(*auc), run.metrics.test.per_class[class].auc);
            assert_eq!((curve.fpr[0], curve.tpr[0]), (0.0, 0.0));
            assert_eq!(
                (*curve.fpr.last().unwrap(), *curve.tpr.last().unwrap()),
                (1.0, 1.0)
            );
        }
    }

    #[test]
    fn reads_a_jsonl_log_and_a_run_without_predictions() {
        let dir = tempfile::tempdir().unwrap();
        write_run(dir.path());
        fs::remove_file(dir.path().join("log.csv")).unwrap();
        fs::remove_file(dir.path().join("test_predictions.csv")).unwrap();
        let lines: Vec<String> = (1..=2)
            .map(|e| serde_json::to_string(&log_record(e)).unwrap())
            .collect();
        fs::write(dir.path().join("log.jsonl"), lines.join("\n") + "\n").unwrap();
        let Source::Run(run) = Source::read(dir.path()).unwrap() else {
            panic!("not read as a run");
        };
        assert_eq!(run.log, vec![log_record(1), log_record(2)]);
        assert!(run.predictions.is_none());
    }

    #[test]
    fn reads_the_compare_fixture() {
        let Source::Compare(compare) = Source::read(&fixture("compare")).unwrap() else {
            panic!("not read as a comparison");
        };
        let summary = &compare.summary;
        assert_eq!(summary.units, ["none", "se", "ppcr"]);
        assert_eq!(summary.seeds, [0, 1, 2]);
        assert_eq!(summary.rows.len(), 3);
        let ppcr = &summary.rows[2];
        assert_eq!((ppcr.attention.as_str(), ppcr.runs), ("ppcr", 3));
        assert_eq!((ppcr.params, ppcr.macs), (Some(330072), Some(41_000_000)));
        assert_eq!(ppcr.train_seconds.as_ref().unwrap().mean, Some(180.1));
        let accuracy = &ppcr.metrics["accuracy"];
        assert_eq!((accuracy.mean, accuracy.std), (Some(0.908), Some(0.005)));
        assert_eq!(accuracy.values.len(), 3);
        assert_eq!(summary.paired.len(), 3);
        assert_eq!(summary.paired[1].baseline, "se");
        assert_eq!(summary.paired[1].p_value, Some(0.041));
        assert_eq!(compare.runs.len(), 9);
        assert_eq!(compare.runs.iter().filter(|r| r.unit == "se").count(), 3);
        assert!(compare.runs.iter().all(|r| r.log.len() == 6));
    }

    #[test]
    fn compare_tolerates_nulls_and_a_missing_runs_folder() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("compare.json"),
            r#"{"data": "d", "seeds": [0], "units": ["se"], "rows": [{"attention": "se",
                "runs": 1, "metrics": {"auc_macro": {"mean": null, "std": null}}}]}"#,
        )
        .unwrap();
        let Source::Compare(compare) = Source::read(dir.path()).unwrap() else {
            panic!("not read as a comparison");
        };
        assert!(compare.runs.is_empty() && compare.summary.paired.is_empty());
        assert_eq!(compare.summary.rows[0].metrics["auc_macro"].mean, None);
    }

    #[test]
    fn reads_a_gallery_with_subfolders_and_explain_json() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("overlays")).unwrap();
        write_png(&dir.path().join("overlays/b.png"), 12, 8);
        write_png(&dir.path().join("a.PNG"), 4, 4);
        fs::write(dir.path().join("explain.json"), r#"{"method":"gradcam"}"#).unwrap();
        fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        let Source::Gallery(gallery) = Source::read(dir.path()).unwrap() else {
            panic!("not read as a gallery");
        };
        let names: Vec<_> = gallery.images.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a.PNG", "overlays/b.png"]);
        assert_eq!((gallery.images[1].width, gallery.images[1].height), (12, 8));
        assert!(gallery.explain.as_ref().unwrap().contains("gradcam"));
        assert_eq!(gallery.left_out, 0);
    }

    #[test]
    fn a_folder_of_no_kind_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        let message = error_text(Source::read(dir.path()));
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("not a run folder"), "{message}");
        let missing = dir.path().join("nope");
        let message = error_text(Source::read(&missing));
        assert!(
            message.contains("nope") && message.contains("no such folder"),
            "{message}"
        );
        let message = error_text(Source::read(&dir.path().join("notes.txt")));
        assert!(message.contains("not a folder"), "{message}");
    }

    #[test]
    fn run_errors_name_the_file() {
        let cases: [(&str, &str, &str); 6] = [
            (
                "metrics.json",
                "{\"best_epoch\": ",
                "metrics.json: unreadable or corrupt",
            ),
            ("run.json", "[]", "run.json: unreadable or corrupt"),
            (
                "log.csv",
                "epoch,lr\n1,x\n",
                "log.csv: unreadable or corrupt (line 2",
            ),
            (
                "test_predictions.csv",
                "index,label,predicted,p_a\n0,0,0,1\n",
                "test_predictions.csv: unreadable or corrupt (header",
            ),
            (
                "test_predictions.csv",
                "index,label,predicted,p_basophil,p_erythroblast,p_platelet\n0,5,0,1,0,0\n",
                "label 5 is out of range",
            ),
            (
                "test_predictions.csv",
                "index,label,predicted,p_basophil,p_erythroblast,p_platelet\n0,1,0,1,NaN,0\n",
                "'NaN' is not a probability",
            ),
        ];
        for (file, contents, needle) in cases {
            let dir = tempfile::tempdir().unwrap();
            write_run(dir.path());
            fs::write(dir.path().join(file), contents).unwrap();
            let message = error_text(Source::read(dir.path()));
            assert!(message.contains(needle), "{file}: {message}");
            assert!(
                message.contains(&dir.path().display().to_string()),
                "{message}"
            );
        }
        for (file, needle) in [
            (
                "metrics.json",
                "metrics.json: missing: the run has not finished",
            ),
            ("log.csv", "log.csv: missing (and no log.jsonl either)"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            write_run(dir.path());
            fs::remove_file(dir.path().join(file)).unwrap();
            let message = error_text(Source::read(dir.path()));
            assert!(message.contains(needle), "{file}: {message}");
        }
    }

    #[test]
    fn compare_and_gallery_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("compare.json"), r#"{"data": "d"}"#).unwrap();
        let message = error_text(Source::read(dir.path()));
        assert!(
            message.contains("compare.json: unreadable or corrupt"),
            "{message}"
        );
        assert!(message.contains("missing field"), "{message}");

        let dir = tempfile::tempdir().unwrap();
        fs::copy(
            fixture("compare/compare.json"),
            dir.path().join("compare.json"),
        )
        .unwrap();
        fs::create_dir_all(dir.path().join("runs/x")).unwrap();
        fs::copy(
            fixture("compare/runs/se-seed0/run.json"),
            dir.path().join("runs/x/run.json"),
        )
        .unwrap();
        let message = error_text(Source::read(dir.path()));
        assert!(message.contains("runs/x/log.csv: missing"), "{message}");

        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("good.png"), 2, 2);
        fs::write(dir.path().join("bad.png"), "not a png at all, just text").unwrap();
        let message = error_text(Source::read(dir.path()));
        assert!(
            message.contains("bad.png: unreadable or corrupt (not a PNG image)"),
            "{message}"
        );
    }
}

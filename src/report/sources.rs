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

use std::fs;
use std::path::{Path, PathBuf};

use super::ReportError;
use crate::attention::AttentionKind;
use crate::runfiles::{
    CompareSummary, EpochRecord, RunInfo, RunMetrics, TestPredictions, read_json, read_log,
};

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
        let metrics = RunMetrics::read(root, info.class_names.len())?;
        let log = read_log(root)?;
        let predictions_path = root.join(TestPredictions::FILE_NAME);
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

/// One run of a comparison (`runs/NAME/`), as far as a report needs it.
#[derive(Debug, Clone)]
pub struct CompareRun {
    /// The run folder.
    pub root: PathBuf,
    /// Its attention unit, from `run.json`.
    pub unit: AttentionKind,
    /// Its per-epoch log.
    pub log: Vec<EpochRecord>,
}

/// A comparison folder of `ppcr compare`.
#[derive(Debug, Clone)]
pub struct CompareSource {
    /// The folder.
    pub root: PathBuf,
    /// `compare.json`.
    pub summary: CompareSummary,
    /// The runs under `runs/*/` (folders with a `run.json`), by folder name.
    pub runs: Vec<CompareRun>,
}

impl CompareSource {
    /// Read a comparison folder: `compare.json` and, for every `runs/*/` with a `run.json`, that
    /// run's unit and log (a folder without `runs/` has no curves).
    pub fn read(root: &Path) -> Result<Self, ReportError> {
        let summary = CompareSummary::read(root)?;
        let runs_dir = root.join("runs");
        let mut runs = Vec::new();
        if runs_dir.is_dir() {
            for folder in sorted_entries(&runs_dir)? {
                if !folder.join("run.json").is_file() {
                    continue;
                }
                let info: RunInfo = read_json(&folder.join("run.json"))?;
                runs.push(CompareRun {
                    unit: info.model.attention.kind,
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
            train_supcon_loss: None,
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
        assert_eq!(
            run.metrics.selected_on,
            Some(crate::runfiles::SelectionMetric::Auc)
        );
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
        use AttentionKind::{None as Plain, Ppcr, Se};
        assert_eq!(summary.units, [Plain, Se, Ppcr]);
        assert_eq!(summary.seeds, [0, 1, 2]);
        assert_eq!(summary.rows.len(), 3);
        let ppcr = &summary.rows[2];
        assert_eq!((ppcr.attention, ppcr.runs), (Ppcr, 3));
        assert_eq!((ppcr.params, ppcr.macs), (330072, 41_000_000));
        assert_eq!(ppcr.train_seconds.mean, 180.1);
        let accuracy = &ppcr.metrics["accuracy"];
        assert_eq!((accuracy.mean, accuracy.std), (0.908, 0.005));
        assert_eq!(accuracy.values.len(), 3);
        assert_eq!(summary.paired.len(), 3);
        assert_eq!(
            (summary.paired[1].candidate, summary.paired[1].baseline),
            (Ppcr, Se)
        );
        assert_eq!(summary.paired[1].p_value, Some(0.041));
        assert_eq!(compare.runs.len(), 9);
        assert_eq!(compare.runs.iter().filter(|r| r.unit == Se).count(), 3);
        assert!(compare.runs.iter().all(|r| r.log.len() == 6));
    }

    #[test]
    fn compare_tolerates_nulls_and_a_missing_runs_folder() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("compare.json"),
            r#"{"data": "d", "seeds": [0], "units": ["se"], "missing_runs": 0, "paired": [],
                "rows": [{"attention": "se", "runs": 1, "params": 1, "macs": 2, "seeds": [0],
                "train_seconds": {"mean": 1.0, "std": null, "values": [1.0]},
                "metrics": {"auc_macro": {"mean": null, "std": null, "values": [null]}}}]}"#,
        )
        .unwrap();
        let Source::Compare(compare) = Source::read(dir.path()).unwrap() else {
            panic!("not read as a comparison");
        };
        assert!(compare.runs.is_empty() && compare.summary.paired.is_empty());
        assert!(compare.summary.rows[0].metrics["auc_macro"].mean.is_nan());
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

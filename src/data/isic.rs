//! ISIC 2018 Task 3 (skin lesion classification; Codella et al. 2019, Tschandl et al.,
//! HAM10000, Scientific Data 2018), the data set of the PPCR paper's released code, in the
//! layout the challenge distributes it:
//!
//! ```text
//! ROOT/
//!   ISIC2018_Task3_Training_Input/ISIC_0024306.jpg ...
//!   ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
//!   ISIC2018_Task3_Validation_Input/ ...   ISIC2018_Task3_Validation_GroundTruth/...csv
//!   ISIC2018_Task3_Test_Input/ ...         ISIC2018_Task3_Test_GroundTruth/...csv
//! ```
//!
//! Each ground-truth CSV has the header `image,MEL,NV,BCC,AKIEC,BKL,DF,VASC` and one one-hot
//! row per image (`ISIC_0024306,0.0,1.0,0.0,0.0,0.0,0.0,0.0`); the image is
//! `<split>_Input/<image>.jpg`. A CSV may also sit directly in ROOT. The Training set is
//! required; a missing Validation or Test set is carved out of Training, seeded and
//! stratified, as for any data set without that split.

use std::path::{Path, PathBuf};

use super::dataset::{Dataset, LoadOptions};
use super::error::DataError;
use super::files::{LabelledFile, SplitName, dataset_from_files};

/// The challenge's names of the three sets, with the split each is.
const SETS: [(&str, SplitName); 3] = [
    ("Training", SplitName::Train),
    ("Validation", SplitName::Val),
    ("Test", SplitName::Test),
];

/// The ground-truth CSV of `set` under `root` (in its `_GroundTruth` folder or in `root`).
fn ground_truth(root: &Path, set: &str) -> Option<PathBuf> {
    let name = format!("ISIC2018_Task3_{set}_GroundTruth");
    [
        root.join(&name).join(format!("{name}.csv")),
        root.join(format!("{name}.csv")),
    ]
    .into_iter()
    .find(|path| path.is_file())
}

/// Whether `root` holds ISIC 2018 Task 3 in the challenge's layout (its Training ground truth).
pub(crate) fn is_isic_root(root: &Path) -> bool {
    ground_truth(root, "Training").is_some()
}

/// Loads ISIC 2018 Task 3 from `root` (see the module documentation).
pub(crate) fn load_isic(root: &Path, options: &LoadOptions) -> Result<Dataset, DataError> {
    let mut class_names: Option<(Vec<String>, PathBuf)> = None;
    let mut files = Vec::new();
    for (set, split) in SETS {
        let Some(csv_path) = ground_truth(root, set) else {
            continue;
        };
        let images = root.join(format!("ISIC2018_Task3_{set}_Input"));
        let (names, listed) = parse_ground_truth(&csv_path, &images, split)?;
        match &class_names {
            Some((first, first_path)) if *first != names => {
                return Err(DataError::ClassMismatch {
                    path: csv_path,
                    reason: format!(
                        "its classes {} differ from {}'s {}",
                        names.join(","),
                        first_path.display(),
                        first.join(",")
                    ),
                });
            }
            Some(_) => {}
            None => class_names = Some((names, csv_path.clone())),
        }
        files.extend(listed);
    }
    let (class_names, _) = class_names.ok_or_else(|| DataError::UnrecognisedLayout {
        path: root.to_path_buf(),
        reason: "no ISIC2018_Task3_Training_GroundTruth.csv".into(),
    })?;
    dataset_from_files(
        "isic2018".into(),
        root.to_path_buf(),
        class_names,
        files,
        options,
    )
}

/// The class names (header columns after `image`) and the labelled images of one ground-truth
/// CSV, whose images are `images/<image>.jpg`.
fn parse_ground_truth(
    csv_path: &Path,
    images: &Path,
    split: SplitName,
) -> Result<(Vec<String>, Vec<LabelledFile>), DataError> {
    let text = std::fs::read_to_string(csv_path).map_err(|error| DataError::io(csv_path, error))?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.trim_start_matches('\u{feff}').as_bytes());
    let bad = |line: u64, reason: String| DataError::BadCsv {
        path: csv_path.to_path_buf(),
        line,
        reason,
    };
    let header = reader.headers().map_err(|e| bad(1, e.to_string()))?.clone();
    if header.len() < 3 || !header[0].eq_ignore_ascii_case("image") {
        return Err(bad(
            1,
            format!(
                "expected the header image,<class>,<class>,... (ISIC 2018: \
                 image,MEL,NV,BCC,AKIEC,BKL,DF,VASC), found '{}'",
                header.iter().collect::<Vec<_>>().join(",")
            ),
        ));
    }
    let class_names: Vec<String> = header.iter().skip(1).map(String::from).collect();
    let file_name = csv_path
        .file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
    let mut files = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| bad(0, e.to_string()))?;
        let line = record.position().map_or(0, |position| position.line());
        if record.iter().all(str::is_empty) {
            continue;
        }
        if record.len() != header.len() {
            return Err(bad(
                line,
                format!("{} fields, the header has {}", record.len(), header.len()),
            ));
        }
        let mut hot = Vec::new();
        for (column, value) in record.iter().enumerate().skip(1) {
            let number: f64 = value.parse().map_err(|_| {
                bad(
                    line,
                    format!("'{value}' under {} is not 0 or 1", &header[column]),
                )
            })?;
            if number == 1.0 {
                hot.push(column - 1);
            } else if number != 0.0 {
                return Err(bad(
                    line,
                    format!("'{value}' under {} is not 0 or 1", &header[column]),
                ));
            }
        }
        let [label] = hot[..] else {
            return Err(DataError::BadLabel {
                path: csv_path.to_path_buf(),
                location: format!("line {line}"),
                reason: format!(
                    "{} classes are marked 1 for {}; each image needs exactly one",
                    hot.len(),
                    &record[0]
                ),
            });
        };
        let image = &record[0];
        let file = if Path::new(image).extension().is_some() {
            images.join(image)
        } else {
            images.join(format!("{image}.jpg"))
        };
        files.push(LabelledFile {
            path: file,
            label,
            split: Some(split),
            listed_at: Some(format!("line {line} of {file_name}")),
        });
    }
    Ok((class_names, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/isic2018_mini")
    }

    #[test]
    fn the_fixture_loads_with_the_challenge_splits_and_classes() {
        let dataset = load_isic(&fixture(), &LoadOptions::default()).unwrap();
        assert_eq!(
            dataset.class_names,
            ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
        );
        assert_eq!(
            (dataset.train.len(), dataset.val.len(), dataset.test.len()),
            (14, 7, 7)
        );
        assert_eq!(dataset.train.class_counts(7), vec![2; 7]);
        assert_eq!(dataset.test.class_counts(7), vec![1; 7]);
        assert!(is_isic_root(&fixture()));
        // Through the general loader, as `--data` takes it.
        let loaded = super::super::load(&fixture(), &LoadOptions::default()).unwrap();
        assert_eq!(loaded.train.labels, dataset.train.labels);
    }

    #[test]
    fn rows_not_one_hot_are_refused_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("ISIC2018_Task3_Training_GroundTruth.csv");
        std::fs::write(&csv, "image,MEL,NV\nISIC_1,1.0,0.0\nISIC_2,1.0,1.0\n").unwrap();
        let message = load_isic(dir.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("line 3") && message.contains("2 classes are marked 1 for ISIC_2"),
            "{message}"
        );
        std::fs::write(&csv, "image,MEL,NV\nISIC_1,0.5,0.5\n").unwrap();
        let message = load_isic(dir.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("'0.5' under MEL is not 0 or 1"),
            "{message}"
        );
        std::fs::write(&csv, "name,label\nISIC_1,MEL\n").unwrap();
        let message = load_isic(dir.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("expected the header image,<class>"),
            "{message}"
        );
        // A listed image that is not there is named with its line.
        std::fs::write(&csv, "image,MEL,NV\nISIC_404,1.0,0.0\nISIC_2,0.0,1.0\n").unwrap();
        let message = load_isic(dir.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(message.contains("ISIC_404.jpg"), "{message}");
    }
}

//! Data sets listed in a CSV file, one image per row: `path,label[,split]`.
//!
//! * `path` is relative to the CSV file's folder (absolute paths are kept).
//! * `label` is either a class name or a class index. The first data row decides: if its label
//!   is a whole number, every label must be one, the classes are `0..=max` (named "0", "1", ...)
//!   and none may be left without rows; otherwise labels are class names, sorted by name.
//! * `split`, when the column is present, is train/val/test (also training, valid, validation,
//!   testing; any case). A missing val or test split is carved out of train; without the
//!   column the whole list is split with a seeded stratified split.
//! * The first row is a header, and skipped, when its path field is neither an existing file nor
//!   a name with an image extension (so `path,label` and `filename,class,split` are headers).
//!   Columns are positional whatever the header says.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use super::dataset::{Dataset, LoadOptions};
use super::error::DataError;
use super::files::{LabelledFile, SplitName, dataset_from_files};
use super::image_io::has_image_extension;

/// Largest class index accepted, so a typo like 1000000 cannot create a million empty classes.
const MAX_CLASS_INDEX: usize = 65_535;

struct Row {
    line: u64,
    path: String,
    label: String,
    split: Option<String>,
}

/// Loads the data set listed in the CSV file at `csv_path`.
pub(crate) fn load_csv(csv_path: &Path, options: &LoadOptions) -> Result<Dataset, DataError> {
    let base_dir = csv_path.parent().unwrap_or_else(|| Path::new(""));
    let file = std::fs::File::open(csv_path).map_err(|error| DataError::io(csv_path, error))?;
    let (class_names, files) = parse_csv(file, csv_path, base_dir)?;
    let name = csv_path.file_stem().map_or_else(
        || "dataset".to_string(),
        |stem| stem.to_string_lossy().into_owned(),
    );
    dataset_from_files(name, csv_path.to_path_buf(), class_names, files, options)
}

/// Parses a CSV list read from `reader` into class names and the listed files (paths joined to
/// `base_dir`), without touching the images; `csv_path` names the file in errors.
pub(crate) fn parse_csv<R: Read>(
    reader: R,
    csv_path: &Path,
    base_dir: &Path,
) -> Result<(Vec<String>, Vec<LabelledFile>), DataError> {
    let rows = read_rows(reader, csv_path, base_dir)?;
    let file_name = csv_path
        .file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
    let bad_label = |row: &Row, reason: String| DataError::BadLabel {
        path: csv_path.to_path_buf(),
        location: format!("line {}", row.line),
        reason,
    };

    let integer_labels = rows[0].label.parse::<u64>().is_ok();
    let (class_names, labels) = if integer_labels {
        let mut labels = Vec::with_capacity(rows.len());
        for row in &rows {
            let label = row.label.parse::<u64>().map_err(|_| {
                bad_label(
                    row,
                    format!(
                        "label '{}' is not a class index, but line {} uses integer labels; use \
                         either class indices or class names throughout",
                        row.label, rows[0].line
                    ),
                )
            })?;
            if label > MAX_CLASS_INDEX as u64 {
                return Err(bad_label(
                    row,
                    format!(
                        "label {label} is out of range (class indices go up to {MAX_CLASS_INDEX})"
                    ),
                ));
            }
            labels.push(label as usize);
        }
        let num_classes = labels.iter().max().map_or(0, |&max| max + 1);
        let present: BTreeSet<usize> = labels.iter().copied().collect();
        if present.len() != num_classes {
            let (max_row, _) = rows
                .iter()
                .zip(&labels)
                .max_by_key(|(_, label)| **label)
                .unwrap_or((&rows[0], &0));
            let missing: Vec<String> = (0..num_classes)
                .filter(|class| !present.contains(class))
                .map(|class| class.to_string())
                .collect();
            return Err(bad_label(
                max_row,
                format!(
                    "label {max} is out of range: it leaves class(es) {} without rows; with \
                     integer labels the classes are 0..={max}, so indices must run from 0 to \
                     k-1 without gaps (is {max} a typo?)",
                    missing.join(", "),
                    max = num_classes - 1,
                ),
            ));
        }
        let class_names = (0..num_classes).map(|class| class.to_string()).collect();
        (class_names, labels)
    } else {
        let class_names: Vec<String> = rows
            .iter()
            .map(|row| row.label.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let labels = rows
            .iter()
            .map(|row| class_names.binary_search(&row.label).unwrap_or(0))
            .collect();
        (class_names, labels)
    };

    let has_split_column = rows
        .iter()
        .any(|row| row.split.as_deref().is_some_and(|split| !split.is_empty()));
    let mut files = Vec::with_capacity(rows.len());
    for (row, label) in rows.iter().zip(labels) {
        let split = if has_split_column {
            let text = row.split.as_deref().unwrap_or("");
            Some(SplitName::parse(text).ok_or_else(|| DataError::BadCsv {
                path: csv_path.to_path_buf(),
                line: row.line,
                reason: if text.is_empty() {
                    "no split given, while other rows have one; give every row a split \
                     (train, val or test) or none"
                        .to_string()
                } else {
                    format!("unknown split '{text}'; use train, val or test")
                },
            })?)
        } else {
            None
        };
        files.push(LabelledFile {
            path: base_dir.join(&row.path),
            label,
            split,
            listed_at: Some(format!("line {} of {file_name}", row.line)),
        });
    }
    Ok((class_names, files))
}

/// Reads the data rows (header dropped, fields trimmed), checking each has 2 or 3 non-empty
/// leading fields.
fn read_rows<R: Read>(reader: R, csv_path: &Path, base_dir: &Path) -> Result<Vec<Row>, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|error| csv_error(csv_path, error))?;
        let line = record.position().map_or(0, |position| position.line());
        if record.iter().all(str::is_empty) {
            continue;
        }
        let bad = |reason: String| DataError::BadCsv {
            path: csv_path.to_path_buf(),
            line,
            reason,
        };
        if record.len() < 2 || record.len() > 3 {
            return Err(bad(format!(
                "expected 2 or 3 columns (path,label[,split]), found {}",
                record.len()
            )));
        }
        let row = Row {
            line,
            path: record[0].to_string(),
            label: record[1].to_string(),
            split: record.get(2).map(str::to_string),
        };
        if rows.is_empty() && is_header(&row, base_dir) {
            continue;
        }
        if row.path.is_empty() {
            return Err(bad("empty image path".to_string()));
        }
        if row.label.is_empty() {
            return Err(DataError::BadLabel {
                path: csv_path.to_path_buf(),
                location: format!("line {line}"),
                reason: "empty label".to_string(),
            });
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(DataError::UnrecognisedLayout {
            path: csv_path.to_path_buf(),
            reason: "the CSV file lists no images (expected rows path,label[,split])".to_string(),
        });
    }
    Ok(rows)
}

fn is_header(row: &Row, base_dir: &Path) -> bool {
    let path = Path::new(&row.path);
    !has_image_extension(path) && !base_dir.join(path).is_file()
}

fn csv_error(csv_path: &Path, error: csv::Error) -> DataError {
    let line = error.position().map_or(0, |position| position.line());
    match error.into_kind() {
        csv::ErrorKind::Io(source) => DataError::io(csv_path, source),
        csv::ErrorKind::Utf8 { err, .. } => DataError::BadCsv {
            path: csv_path.to_path_buf(),
            line,
            reason: format!("not valid UTF-8 text: {err}"),
        },
        other => DataError::BadCsv {
            path: csv_path.to_path_buf(),
            line,
            reason: format!("{other:?}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::BadFilePolicy;
    use crate::data::load;
    use crate::data::test_support::{TempDir, fixtures};

    fn write_csv(temp: &TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let path = temp.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// An absolute path to a fixture image, so CSVs in temp folders can point at it.
    fn image(relative: &str) -> String {
        fixtures()
            .join("pbc_mini")
            .join(relative)
            .display()
            .to_string()
    }

    #[test]
    fn csv_with_header_names_and_splits_matches_the_folder() {
        let dataset = load(&fixtures().join("pbc_mini.csv"), &LoadOptions::default()).unwrap();
        assert_eq!(dataset.name, "pbc_mini");
        assert_eq!(
            dataset.class_names,
            ["basophil", "erythroblast", "platelet"]
        );
        assert_eq!(
            (dataset.train.len(), dataset.val.len(), dataset.test.len()),
            (9, 3, 3)
        );
        let folder = load(&fixtures().join("pbc_mini"), &LoadOptions::default()).unwrap();
        assert_eq!(dataset.train, folder.train);
        assert_eq!(dataset.test, folder.test);
    }

    #[test]
    fn csv_without_header_with_integer_labels_draws_the_split() {
        let options = LoadOptions {
            split_seed: 3,
            ..Default::default()
        };
        let dataset = load(&fixtures().join("pbc_mini_noheader.csv"), &options).unwrap();
        assert_eq!(dataset.class_names, ["0", "1", "2"]);
        // 15 rows, 5 per class: 3 train, 1 val, 1 test each.
        assert_eq!(
            (dataset.train.len(), dataset.val.len(), dataset.test.len()),
            (9, 3, 3)
        );
        assert_eq!(dataset.val.class_counts(3), vec![1, 1, 1]);
        assert_eq!(
            dataset.test,
            load(&fixtures().join("pbc_mini_noheader.csv"), &options)
                .unwrap()
                .test
        );
    }

    #[test]
    fn a_file_listed_twice_is_refused_naming_both_lines() {
        let temp = TempDir::new("csv-duplicates");
        let mut rows = String::new();
        for (class, files) in [
            ("basophil", ["BA_184682", "BA_354415", "BA_720056"]),
            ("erythroblast", ["ERB_153470", "ERB_233", "ERB_565930"]),
            (
                "platelet",
                ["PLATELET_312111", "PLATELET_466299", "PLATELET_821680"],
            ),
        ] {
            for file in files {
                let path = image(&format!("pbc_mini/train/{class}/{file}.jpg"));
                rows.push_str(&format!("{path},{class}\n"));
            }
        }
        let first = image("pbc_mini/train/basophil/BA_184682.jpg");
        // The error for the nine rows plus `first` again under `class`, in file `name`.
        let with_first_as = |name: &str, class: &str| {
            let path = write_csv(&temp, name, &format!("{rows}{first},{class}\n"));
            load(&path, &LoadOptions::default())
                .unwrap_err()
                .to_string()
        };
        let text = with_first_as("twice.csv", "basophil");
        assert!(
            text.contains(
                "read twice, as class 'basophil' on line 1 of twice.csv and as class \
                 'basophil' on line 10 of twice.csv"
            ),
            "{text}"
        );
        let text = with_first_as("conflict.csv", "platelet");
        assert!(
            text.contains(
                "under two classes: class 'basophil' on line 1 of conflict.csv and \
                 class 'platelet' on line 10"
            ),
            "{text}"
        );
    }

    #[test]
    fn bad_label_names_the_line() {
        let error = load(&fixtures().join("bad_label.csv"), &LoadOptions::default()).unwrap_err();
        let DataError::BadLabel { location, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!(location, "line 4");
        let message = error.to_string();
        assert!(
            message.contains("bad_label.csv") && message.contains("'basophil'"),
            "{message}"
        );
    }

    #[test]
    fn missing_file_names_the_file_and_the_line() {
        let path = fixtures().join("missing_file.csv");
        let error = load(&path, &LoadOptions::default()).unwrap_err();
        assert!(matches!(error, DataError::BadImage { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("does_not_exist.jpg")
                && message.contains("file not found")
                && message.contains("line 7 of missing_file.csv"),
            "{message}"
        );
        let skip = LoadOptions {
            on_bad_file: BadFilePolicy::Skip,
            ..Default::default()
        };
        let dataset = load(&path, &skip).unwrap();
        assert_eq!(dataset.skipped_files.len(), 1);
        assert_eq!(
            dataset.train.len() + dataset.val.len() + dataset.test.len(),
            5
        );
    }

    #[test]
    fn malformed_rows_are_reported_with_their_line() {
        let temp = TempDir::new("csv_malformed");
        let first = image("train/basophil/BA_184682.jpg");
        let second = image("train/platelet/PLATELET_312111.jpg");

        let path = write_csv(
            &temp,
            "split.csv",
            &format!("{first},a,train\n{second},b,holdout\n"),
        );
        let message = load(&path, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("line 2") && message.contains("unknown split 'holdout'"),
            "{message}"
        );

        let path = write_csv(
            &temp,
            "columns.csv",
            &format!("path,label\n{first},a\n{second}\n"),
        );
        let message = load(&path, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("line 3") && message.contains("expected 2 or 3 columns"),
            "{message}"
        );

        let path = write_csv(&temp, "gap.csv", &format!("{first},0\n{second},7\n"));
        let error = load(&path, &LoadOptions::default()).unwrap_err();
        assert!(
            matches!(&error, DataError::BadLabel { location, .. } if location == "line 2"),
            "{error}"
        );
        assert!(error.to_string().contains("out of range"), "{error}");

        let path = write_csv(
            &temp,
            "huge.csv",
            &format!("{first},0\n{second},99999999\n"),
        );
        let message = load(&path, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("line 2") && message.contains("out of range"),
            "{message}"
        );

        let path = write_csv(&temp, "empty.csv", "path,label\n\n");
        let message = load(&path, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(message.contains("lists no images"), "{message}");

        let path = write_csv(
            &temp,
            "partial_split.csv",
            &format!("{first},a,train\n{second},b,\n"),
        );
        let message = load(&path, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("line 2") && message.contains("no split given"),
            "{message}"
        );
    }

    #[test]
    fn relative_paths_resolve_from_the_csv_folder_despite_a_byte_order_mark() {
        let temp = TempDir::new("csv_relative");
        let images = temp.path().join("imgs");
        std::fs::create_dir(&images).unwrap();
        // Spreadsheet exports often start with a UTF-8 byte-order mark; no header here, so the
        // first path must still resolve.
        let mut rows = String::from("\u{feff}");
        for (index, class) in ["a", "a", "a", "b", "b", "b"].iter().enumerate() {
            let name = format!("{index}.jpg");
            std::fs::copy(image("train/basophil/BA_184682.jpg"), images.join(&name)).unwrap();
            rows.push_str(&format!("imgs/{name},{class}\n"));
        }
        let path = write_csv(&temp, "list.csv", &rows);
        let dataset = load(&path, &LoadOptions::default()).unwrap();
        assert_eq!(dataset.class_names, ["a", "b"]);
        assert_eq!(
            (dataset.train.len(), dataset.val.len(), dataset.test.len()),
            (2, 2, 2)
        );
    }
}

//! `test_predictions.csv`: per test image its label, predicted class and class probabilities,
//! so ROC curves and error analyses can be redrawn without rerunning the model.

use std::path::Path;

use super::RunFileError;
use super::error::{read_text, write_file};
use crate::metrics::{RocCurve, argmax, one_vs_rest_auc, roc_curves};

/// `test_predictions.csv` of a run: per test image its label and class probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct TestPredictions {
    /// Number of classes (probability columns).
    pub num_classes: usize,
    /// True class per image.
    pub labels: Vec<usize>,
    /// Row-major `labels.len() x num_classes` probabilities.
    pub probabilities: Vec<f32>,
}

/// The header every file has: `index,label,predicted,p_<class>...`.
fn header(class_names: &[String]) -> Vec<String> {
    ["index", "label", "predicted"]
        .iter()
        .map(|s| s.to_string())
        .chain(class_names.iter().map(|name| format!("p_{name}")))
        .collect()
}

impl TestPredictions {
    /// The file's name in a run folder.
    pub const FILE_NAME: &str = "test_predictions.csv";

    /// Write the file into the run folder `root` (atomically), with one `p_<class>` column per
    /// name of `class_names`.
    pub fn write(&self, root: &Path, class_names: &[String]) -> Result<(), RunFileError> {
        let classes = self.num_classes;
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer
            .write_record(header(class_names))
            .expect("in-memory writer");
        for (index, &label) in self.labels.iter().enumerate() {
            let row = &self.probabilities[index * classes..(index + 1) * classes];
            let mut record = vec![
                index.to_string(),
                label.to_string(),
                argmax(row).to_string(),
            ];
            record.extend(row.iter().map(|p| p.to_string()));
            writer.write_record(&record).expect("in-memory writer");
        }
        write_file(
            &root.join(Self::FILE_NAME),
            &writer.into_inner().expect("in-memory writer"),
        )
    }

    /// Read `path`, whose header must have `index,label,predicted` and one `p_<class>` column
    /// per class of `class_names`.
    pub fn read(path: &Path, class_names: &[String]) -> Result<Self, RunFileError> {
        let corrupt = |message: String| RunFileError::corrupt(path, message);
        let text = read_text(path)?;
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let found = reader
            .headers()
            .map_err(|e| corrupt(e.to_string()))?
            .clone();
        let expected = header(class_names);
        if found.iter().ne(expected.iter().map(String::as_str)) {
            return Err(corrupt(format!(
                "header is '{}', expected '{}' for the classes of run.json",
                found.iter().collect::<Vec<_>>().join(","),
                expected.join(",")
            )));
        }
        let num_classes = class_names.len();
        let mut labels = Vec::new();
        let mut probabilities = Vec::new();
        for (row, record) in reader.records().enumerate() {
            let line = row + 2;
            let record = record.map_err(|e| corrupt(e.to_string()))?;
            let label: usize = record[1].trim().parse().map_err(|_| {
                corrupt(format!(
                    "line {line}: label '{}' is not a class index",
                    &record[1]
                ))
            })?;
            if label >= num_classes {
                return Err(corrupt(format!(
                    "line {line}: label {label} is out of range for {num_classes} classes"
                )));
            }
            labels.push(label);
            for value in record.iter().skip(3) {
                let p: f32 = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|p: &f32| p.is_finite())
                    .ok_or_else(|| {
                        corrupt(format!("line {line}: '{value}' is not a probability"))
                    })?;
                probabilities.push(p);
            }
        }
        if labels.is_empty() {
            return Err(corrupt("no predictions".into()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["benign".to_string(), "malignant".to_string()];
        let written = TestPredictions {
            num_classes: 2,
            labels: vec![0, 1, 1],
            probabilities: vec![0.75, 0.25, 0.125, 0.875, 0.5, 0.5],
        };
        written.write(dir.path(), &names).unwrap();
        let path = dir.path().join(TestPredictions::FILE_NAME);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("index,label,predicted,p_benign,p_malignant\n0,0,0,0.75,0.25\n"));
        assert_eq!(TestPredictions::read(&path, &names).unwrap(), written);
        let other = vec!["a".to_string(), "b".to_string()];
        let message = TestPredictions::read(&path, &other)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("expected 'index,label,predicted,p_a,p_b'"),
            "{message}"
        );
    }
}

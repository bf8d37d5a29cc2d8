//! The per-epoch log of a run, `log.csv` or `log.jsonl`: one [`EpochRecord`] per completed
//! epoch, rewritten whole from the checkpointed history so it never disagrees with the
//! checkpoint a resumed run starts from.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::RunFileError;
use super::error::{read_text, write_file};

/// One epoch's record in the log and the training state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number, 1-based.
    pub epoch: usize,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (on augmented batches).
    pub train_accuracy: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_accuracy: f64,
    /// Validation macro AUC, where defined.
    pub val_auc: Option<f64>,
    /// Validation balanced accuracy.
    pub val_balanced_accuracy: f64,
    /// How many devices the epoch's batches were split across (`train --devices`). Logs written
    /// before this field existed read as 1.
    #[serde(default = "one_device")]
    pub devices: usize,
    /// Wall time of the epoch (training and validation), seconds.
    pub seconds: f64,
    /// Training throughput, images per second (views, with contrastive training).
    pub images_per_second: f64,
    /// Mean supervised contrastive loss (unweighted) of the epoch's steps, where the run trains
    /// with it (`supcon_weight > 0`).
    #[serde(default)]
    pub train_supcon_loss: Option<f64>,
}

fn one_device() -> usize {
    1
}

/// Format of the per-epoch log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `log.csv`, one row per epoch.
    Csv,
    /// `log.jsonl`, one JSON object per epoch.
    Jsonl,
}

impl LogFormat {
    /// The log's file name in a run folder.
    pub fn file_name(self) -> &'static str {
        match self {
            LogFormat::Csv => "log.csv",
            LogFormat::Jsonl => "log.jsonl",
        }
    }
}

/// Write the whole log of `history` into the run folder `root`, atomically.
pub fn write_log(
    root: &Path,
    format: LogFormat,
    history: &[EpochRecord],
) -> Result<(), RunFileError> {
    let bytes = match format {
        LogFormat::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            for record in history {
                writer.serialize(record).expect("epoch records serialise");
            }
            writer.into_inner().expect("in-memory writer")
        }
        LogFormat::Jsonl => {
            let mut bytes = Vec::new();
            for record in history {
                serde_json::to_writer(&mut bytes, record).expect("epoch records serialise");
                bytes.push(b'\n');
            }
            bytes
        }
    };
    write_file(&root.join(format.file_name()), &bytes)
}

/// Read the log of the run folder `root`: `log.csv`, else `log.jsonl`.
pub fn read_log(root: &Path) -> Result<Vec<EpochRecord>, RunFileError> {
    let csv_path = root.join(LogFormat::Csv.file_name());
    let jsonl_path = root.join(LogFormat::Jsonl.file_name());
    if csv_path.is_file() {
        let text = read_text(&csv_path)?;
        csv::Reader::from_reader(text.as_bytes())
            .deserialize()
            .enumerate()
            .map(|(row, record)| {
                record
                    .map_err(|e| RunFileError::corrupt(&csv_path, format!("line {}: {e}", row + 2)))
            })
            .collect()
    } else if jsonl_path.is_file() {
        let text = read_text(&jsonl_path)?;
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(row, line)| {
                serde_json::from_str(line).map_err(|e| {
                    RunFileError::corrupt(&jsonl_path, format!("line {}: {e}", row + 1))
                })
            })
            .collect()
    } else {
        Err(RunFileError::Io {
            path: csv_path,
            message: "missing (and no log.jsonl either): the run has no epoch log".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize) -> EpochRecord {
        EpochRecord {
            epoch,
            lr: 0.1,
            train_loss: 0.5,
            train_accuracy: 0.75,
            val_loss: 0.625,
            val_accuracy: 0.5,
            val_auc: (epoch > 1).then_some(0.875),
            val_balanced_accuracy: 0.5,
            devices: 1,
            seconds: 2.0,
            images_per_second: 100.0,
            train_supcon_loss: (epoch > 1).then_some(3.5),
        }
    }

    #[test]
    fn both_formats_read_back_what_was_written() {
        for format in [LogFormat::Csv, LogFormat::Jsonl] {
            let dir = tempfile::tempdir().unwrap();
            let history = vec![record(1), record(2)];
            write_log(dir.path(), format, &history).unwrap();
            assert!(dir.path().join(format.file_name()).is_file());
            assert_eq!(read_log(dir.path()).unwrap(), history);
        }
    }

    #[test]
    fn a_bad_row_is_named_by_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), LogFormat::Jsonl, &[record(1)]).unwrap();
        let path = dir.path().join("log.jsonl");
        let text = std::fs::read_to_string(&path).unwrap() + "{\"epoch\": 2}\n";
        std::fs::write(&path, text).unwrap();
        let message = read_log(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("log.jsonl") && message.contains("line 2"),
            "{message}"
        );
    }
}

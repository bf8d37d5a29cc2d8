//! The files ppcr writes and reads back, one type per file, shared by their writers (`train`,
//! `compare`) and their readers (`eval`, `predict`, `explain`, `report`, `compare`), all written
//! atomically so that a crash at any moment leaves every file readable.
//!
//! ```text
//! RUN/                       a run folder of `ppcr train` (RunDir)
//!   config.toml              resolved training configuration (train::TrainConfig)
//!   run.json                 model configuration, class names, normalisation (RunInfo)
//!   log.csv | log.jsonl      one record per epoch (EpochRecord, write_log, read_log)
//!   metrics.json             final validation and test metrics (RunMetrics)
//!   test_predictions.csv     per test image: label and probabilities (TestPredictions)
//!   .lock                    held while a process trains in the folder
//!   checkpoints/
//!     epoch-0007/            model.bpk, optimizer.bpk, state.json (TrainState); with
//!                            --ema-decay, model.bpk is the average and live.bpk the weights
//!     latest                 name of the newest complete epoch folder
//!     best                   name of the kept epoch folder (chosen on validation, or the
//!                            last with --select-on last)
//!
//! COMPARISON/                a comparison folder of `ppcr compare`
//!   compare.json             the summary (CompareSummary); compare.md and compare.csv show it
//!   runs/<unit>-s<seed>/     one run folder per unit and seed
//! ```

mod atomic;
mod checkpoint;
mod compare_summary;
mod epoch_log;
mod error;
mod pause;
mod run_dir;
mod run_info;
mod run_metrics;
mod test_predictions;
mod train_state;

pub use atomic::write_atomic;
pub(crate) use checkpoint::{load_model_bytes, load_optimizer_bytes};
pub use compare_summary::{CompareSummary, MetricStats, PairedComparison, UnitSummary};
pub use epoch_log::{EpochRecord, LogFormat, read_log, write_log};
pub use error::RunFileError;
pub(crate) use error::{parse_json, read_json, write_file};
pub(crate) use pause::pause_point;
pub use pause::{PAUSE_AT_VAR, PAUSE_MARKER_VAR};
pub use run_dir::RunDir;
pub use run_info::RunInfo;
pub use run_metrics::{RunMetrics, SelectionMetric};
pub use test_predictions::TestPredictions;
pub use train_state::{LossScaleState, TrainState};

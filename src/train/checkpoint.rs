//! The run folder and its checkpoints, written so that a crash at any moment leaves every
//! checkpoint on disk readable.
//!
//! ```text
//! RUN/
//!   config.toml            resolved training configuration
//!   run.json               model configuration, class names, normalisation
//!   log.csv | log.jsonl    one record per epoch
//!   metrics.json           final validation and test metrics
//!   checkpoints/
//!     epoch-0007/          model.bpk, optimizer.bpk, state.json
//!     latest               name of the newest complete epoch folder
//!     best                 name of the epoch folder chosen on validation
//! ```
//!
//! An epoch folder is assembled under a temporary name and renamed into place only once every
//! file in it is on disk; the `latest` and `best` pointers are replaced atomically after that.
//! Older epoch folders are removed only once no pointer names them.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::ModuleOptimizer;
use burn::optim::record::OptimizerRecord;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, DType, Tensor};
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::atomic::write_atomic;
use super::pause::pause_point;
use crate::data::Normalization;
use crate::models::{ResNet, ResNetConfig};

/// What a trained model needs besides its weights: its architecture, its classes and how its
/// inputs were normalised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    /// Architecture.
    pub model: ResNetConfig,
    /// Class names, by class index.
    pub class_names: Vec<String>,
    /// Input normalisation.
    pub normalization: Normalization,
    /// Where the training data came from.
    pub dataset: String,
}

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
    /// Training throughput, images per second.
    pub images_per_second: f64,
}

fn one_device() -> usize {
    1
}

/// Where training stands after a completed epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epochs_completed: usize,
    /// Best epoch on the selection metric so far.
    pub best_epoch: Option<usize>,
    /// Its score (higher is better; loss is negated).
    pub best_score: Option<f64>,
    /// Every completed epoch.
    pub history: Vec<EpochRecord>,
}

/// The file a training process locks in its run folder.
const LOCK_FILE: &str = ".lock";

/// A run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
    /// The folder's lock file, held (locked) while a process trains in it: see
    /// [`RunDir::create`]. The operating system releases it when the process ends, however it
    /// ends, so a killed run leaves nothing that blocks its resume.
    #[allow(dead_code)] // Held, never read: the lock lasts as long as the file is open.
    lock: Option<std::sync::Arc<fs::File>>,
}

fn io_error(path: &Path, action: &str, error: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        message: format!("{action}: {error}"),
    }
}

/// Like [`io_error`], and on a full disk says how to carry on.
fn write_error(path: &Path, error: std::io::Error) -> TrainError {
    let hint = if error.kind() == std::io::ErrorKind::StorageFull {
        "; the disk is full: free space, then continue the run with --resume (every completed \
         epoch is kept)"
    } else {
        ""
    };
    io_error(path, "cannot write", format!("{error}{hint}"))
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

impl RunDir {
    /// Create (or reuse) a run folder, lock it for this process (a second process is refused
    /// with [`TrainError::Locked`] while this one holds it) and prove it is writable before
    /// any work starts.
    pub fn create(root: &Path) -> Result<Self, TrainError> {
        fs::create_dir_all(root.join("checkpoints"))
            .map_err(|e| io_error(root, "cannot create the output folder", e))?;
        // Before anything is written or cleaned up: a second process must not remove the first
        // one's files in flight, nor overwrite its run.
        let lock_path = root.join(LOCK_FILE);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error(root, "output folder is not writable", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(TrainError::Locked {
                    path: root.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(io_error(&lock_path, "cannot lock the run folder", e));
            }
        }
        let probe = root.join(".write-test");
        write_atomic(&probe, b"ok")
            .map_err(|e| io_error(root, "output folder is not writable", e))?;
        let _ = fs::remove_file(probe);
        let run = RunDir {
            root: root.to_path_buf(),
            lock: Some(std::sync::Arc::new(lock)),
        };
        run.remove_leftovers();
        Ok(run)
    }

    /// Remove what a process killed mid-write left behind: temporary files of atomic writes
    /// and partial epoch folders. None of them is ever read, but they would pile up.
    fn remove_leftovers(&self) {
        for folder in [self.root.clone(), self.checkpoints()] {
            let Ok(entries) = fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if name.starts_with('.') && name.contains(".tmp-") && path.is_file() {
                    let _ = fs::remove_file(&path);
                } else if name.starts_with('.') && name.ends_with(".partial") && path.is_dir() {
                    let _ = fs::remove_dir_all(&path);
                }
            }
        }
    }

    /// Open an existing run folder (for evaluation, prediction or resuming).
    pub fn open(root: &Path) -> Result<Self, TrainError> {
        if !root.is_dir() {
            return Err(TrainError::Io {
                path: root.to_path_buf(),
                message: "no such folder".into(),
            });
        }
        let run = RunDir {
            root: root.to_path_buf(),
            lock: None,
        };
        if !run.run_info_path().is_file() {
            return Err(TrainError::NotARun {
                path: root.to_path_buf(),
            });
        }
        Ok(run)
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// `run.json`.
    pub fn run_info_path(&self) -> PathBuf {
        self.root.join("run.json")
    }

    /// `metrics.json`.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.json")
    }

    fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// Write a small text or JSON file atomically.
    pub fn write_file(&self, path: &Path, contents: &[u8]) -> Result<(), TrainError> {
        write_atomic(path, contents).map_err(|e| write_error(path, e))
    }

    /// Refuse to start when the disk cannot hold the checkpoints the run will keep: at the
    /// moment a new epoch is saved, the `best` folder, the previous `latest` folder and the new
    /// one coexist. `checkpoint_bytes` is the size of one epoch folder.
    pub fn ensure_space_for_checkpoints(&self, checkpoint_bytes: u64) -> Result<(), TrainError> {
        let existing = fs::read_dir(self.checkpoints())
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("epoch-"))
                    .count()
            })
            .unwrap_or(0);
        let needed = checkpoint_bytes * (3usize.saturating_sub(existing).max(1)) as u64;
        let free = fs4::available_space(&self.root)
            .map_err(|e| io_error(&self.root, "cannot read the free disk space", e))?;
        if free < needed {
            return Err(TrainError::Io {
                path: self.root.clone(),
                message: format!(
                    "not enough free disk space for the checkpoints: they need about {} ({} per \
                     epoch folder), {} is free; free space or choose another --out",
                    megabytes(needed),
                    megabytes(checkpoint_bytes),
                    megabytes(free)
                ),
            });
        }
        Ok(())
    }

    /// Read `run.json`.
    pub fn read_run_info(&self) -> Result<RunInfo, TrainError> {
        let path = self.run_info_path();
        let text = fs::read_to_string(&path).map_err(|e| io_error(&path, "cannot read", e))?;
        parse_json(&text, &path)
    }

    /// Name of the epoch folder a pointer (`latest` or `best`) names, if any.
    fn pointer(&self, name: &str) -> Result<Option<String>, TrainError> {
        let path = self.checkpoints().join(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_string())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error(&path, "cannot read", error)),
        }
    }

    /// Whether the run has a completed epoch to resume from.
    pub fn has_checkpoint(&self) -> Result<bool, TrainError> {
        Ok(self.pointer("latest")?.is_some())
    }

    /// Save a completed epoch; `is_best` also moves the `best` pointer to it.
    pub fn save_epoch(
        &self,
        model: &ResNet,
        optimizer: &ModuleOptimizer,
        state: &TrainState,
        is_best: bool,
    ) -> Result<(), TrainError> {
        let name = format!("epoch-{:04}", state.epochs_completed);
        let checkpoints = self.checkpoints();
        let partial = checkpoints.join(format!(".{name}.partial"));
        let final_dir = checkpoints.join(&name);
        if partial.exists() {
            fs::remove_dir_all(&partial).map_err(|e| io_error(&partial, "cannot clear", e))?;
        }
        fs::create_dir_all(&partial).map_err(|e| write_error(&partial, e))?;
        let written = self.write_epoch_files(&partial, model, optimizer, state);
        if written.is_err() {
            // A half-written folder is never read, but on a full disk it holds the space the
            // user needs back.
            let _ = fs::remove_dir_all(&partial);
        }
        written?;
        if final_dir.exists() {
            // Left by a run that crashed after this rename but before moving `latest`.
            fs::remove_dir_all(&final_dir)
                .map_err(|e| io_error(&final_dir, "cannot replace", e))?;
        }
        fs::rename(&partial, &final_dir).map_err(|e| io_error(&final_dir, "cannot finish", e))?;
        pause_point(|| format!("pointer:{}", state.epochs_completed));
        self.write_file(&checkpoints.join("latest"), name.as_bytes())?;
        if is_best {
            self.write_file(&checkpoints.join("best"), name.as_bytes())?;
        }
        self.prune()
    }

    /// The files of an epoch folder, written into `partial`.
    fn write_epoch_files(
        &self,
        partial: &Path,
        model: &ResNet,
        optimizer: &ModuleOptimizer,
        state: &TrainState,
    ) -> Result<(), TrainError> {
        let model_bytes = model
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| io_error(partial, "cannot serialise the model", e))?;
        let optimizer_bytes = optimizer
            .to_record()
            .into_bytes()
            .map_err(|e| io_error(partial, "cannot serialise the optimizer", e))?;
        let state_json = serde_json::to_vec_pretty(state).expect("state serialises");
        for (file, bytes) in [
            ("model.bpk", &model_bytes[..]),
            ("optimizer.bpk", &optimizer_bytes[..]),
            ("state.json", &state_json[..]),
        ] {
            self.write_file(&partial.join(file), bytes)?;
            if file == "model.bpk" {
                pause_point(|| format!("checkpoint:{}", state.epochs_completed));
            }
        }
        Ok(())
    }

    /// Remove epoch folders no pointer names (and partial folders of crashed writes).
    fn prune(&self) -> Result<(), TrainError> {
        let keep = [self.pointer("latest")?, self.pointer("best")?];
        let checkpoints = self.checkpoints();
        let entries =
            fs::read_dir(&checkpoints).map_err(|e| io_error(&checkpoints, "cannot list", e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_epoch = name.starts_with("epoch-") || name.ends_with(".partial");
            let kept = keep.iter().flatten().any(|k| *k == name);
            if is_epoch && !kept && entry.path().is_dir() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    fn epoch_dir(&self, pointer: &str) -> Result<PathBuf, TrainError> {
        let Some(name) = self.pointer(pointer)? else {
            // Epoch folders without the pointer: the pointer file was lost, the run was not.
            let mut epochs: Vec<String> = fs::read_dir(self.checkpoints())
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("epoch-"))
                .collect();
            epochs.sort();
            return Err(match epochs.last() {
                Some(last) => TrainError::Corrupt {
                    path: self.checkpoints().join(pointer),
                    message: format!(
                        "the '{pointer}' pointer file is missing, though epoch folders exist (the \
                         last is {last}); write the name of the epoch folder to use into it"
                    ),
                },
                None => TrainError::NoCheckpoint {
                    path: self.root.clone(),
                },
            });
        };
        Ok(self.checkpoints().join(name))
    }

    /// Load the model weights of the `latest` or `best` checkpoint into `model`.
    pub fn load_model(&self, model: ResNet, pointer: &str) -> Result<ResNet, TrainError> {
        let path = self.epoch_dir(pointer)?.join("model.bpk");
        let bytes = fs::read(&path).map_err(|e| io_error(&path, "cannot read", e))?;
        load_model_bytes(model, bytes, &path)
    }

    /// Load the optimizer state and training state of the `latest` checkpoint; the optimizer
    /// state is checked against `model`, the model it will train.
    pub fn load_training_state(
        &self,
        optimizer: ModuleOptimizer,
        model: &ResNet,
    ) -> Result<(ModuleOptimizer, TrainState), TrainError> {
        let dir = self.epoch_dir("latest")?;
        let path = dir.join("optimizer.bpk");
        let bytes = fs::read(&path).map_err(|e| io_error(&path, "cannot read", e))?;
        let optimizer = load_optimizer_bytes(optimizer, bytes, &path, model)?;
        let path = dir.join("state.json");
        let text = fs::read_to_string(&path).map_err(|e| io_error(&path, "cannot read", e))?;
        let state = parse_json(&text, &path)?;
        Ok((optimizer, state))
    }
}

/// Loads model weights from the contents of a `model.bpk` file; `path` names it in errors.
pub(crate) fn load_model_bytes(
    model: ResNet,
    bytes: Vec<u8>,
    path: &Path,
) -> Result<ResNet, TrainError> {
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|e| {
        TrainError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })?;
    let model = model
        .try_load_record(record)
        .map_err(|e| TrainError::Corrupt {
            path: path.to_path_buf(),
            message: format!("the weights do not fit this model (was run.json edited?): {e}"),
        })?;
    // A training run never saves a non-finite weight (divergence stops it first), so one here
    // means the file was damaged: say so now, not as NaN probabilities later.
    if let Some((index, value)) = first_non_finite_weight(&model) {
        return Err(TrainError::Corrupt {
            path: path.to_path_buf(),
            message: format!(
                "weight tensor {index} holds {value}; the file is damaged (retrain, or load \
                 another epoch's checkpoint)"
            ),
        });
    }
    Ok(model)
}

/// The first non-finite float among the model's parameters and buffers: `(tensor number in
/// module order, value)`.
fn first_non_finite_weight(model: &ResNet) -> Option<(usize, f32)> {
    struct Finder {
        index: usize,
        found: Option<(usize, f32)>,
    }
    impl ModuleVisitor for Finder {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.found.is_none()
                && let Ok(values) = param.val().into_data().try_to_vec::<f32>()
                && let Some(value) = values.into_iter().find(|v| !v.is_finite())
            {
                self.found = Some((self.index, value));
            }
            self.index += 1;
        }
    }
    let mut finder = Finder {
        index: 0,
        found: None,
    };
    model.visit(&mut finder);
    finder.found
}

/// Shape and dtype of every float parameter of a model, by parameter id.
fn parameter_layouts(model: &ResNet) -> HashMap<u64, (Vec<usize>, DType)> {
    struct Layouts(HashMap<u64, (Vec<usize>, DType)>);
    impl ModuleVisitor for Layouts {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            self.0
                .insert(param.id.val(), (value.shape().to_vec(), value.dtype()));
        }
    }
    let mut layouts = Layouts(HashMap::new());
    model.visit(&mut layouts);
    layouts.0
}

/// Checks an `optimizer.bpk` file against the model it is to train before burn loads it:
/// burn's `load_record` panics on a state tensor without a parameter id, and state whose
/// shape, dtype or rank does not fit its parameter panics at the next step, mid-training.
/// SGD's only state is a momentum buffer shaped like its parameter.
fn check_optimizer_file(bytes: Bytes, model: &ResNet) -> Result<(), String> {
    let reader = burn_pack::Reader::from_bytes(bytes).map_err(|e| e.to_string())?;
    let layouts = parameter_layouts(model);
    let layout = |id: u64, what: &str| {
        layouts
            .get(&id)
            .ok_or_else(|| format!("{what} belongs to parameter {id}, which this model lacks"))
    };
    for (name, scalar) in reader.scalars() {
        if let Some(id) = name.strip_suffix(".__rank") {
            let (shape, _) = layout(id.parse().unwrap_or(u64::MAX), name)?;
            if usize::try_from(*scalar).ok() != Some(shape.len()) {
                return Err(format!(
                    "{name} is {scalar:?} but the parameter has rank {}",
                    shape.len()
                ));
            }
        }
    }
    for tensor in reader.into_tensors().map_err(|e| e.to_string())? {
        let id = tensor
            .param_id
            .ok_or_else(|| format!("state tensor '{}' has no parameter id", tensor.name))?;
        let (shape, dtype) = layout(id, &format!("state tensor '{}'", tensor.name))?;
        if tensor.shape.to_vec() != *shape || tensor.dtype != *dtype {
            return Err(format!(
                "state tensor '{}' is {:?} {:?} but its parameter is {dtype:?} {shape:?}",
                tensor.name,
                tensor.dtype,
                tensor.shape.to_vec()
            ));
        }
    }
    Ok(())
}

/// Loads optimizer state from the contents of an `optimizer.bpk` file, checked against the
/// `model` it will train; `path` names the file in errors.
pub(crate) fn load_optimizer_bytes(
    optimizer: ModuleOptimizer,
    bytes: Vec<u8>,
    path: &Path,
    model: &ResNet,
) -> Result<ModuleOptimizer, TrainError> {
    let bytes = Bytes::from_bytes_vec(bytes);
    check_optimizer_file(bytes.clone(), model).map_err(|message| TrainError::Corrupt {
        path: path.to_path_buf(),
        message: format!("the optimizer state does not fit this model: {message}"),
    })?;
    let record = OptimizerRecord::from_bytes(bytes).map_err(|e| TrainError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(optimizer.load_record(record))
}

/// Parses a run's JSON file (`state.json`, `run.json`); `path` names it in errors.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, TrainError> {
    serde_json::from_str(text).map_err(|e| TrainError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_folder_is_locked_while_it_is_open_for_training() {
        let folder = tempfile::tempdir().unwrap();
        let run = RunDir::create(folder.path()).unwrap();
        let clone = run.clone();
        drop(run);
        let error = RunDir::create(folder.path()).unwrap_err();
        assert!(matches!(error, TrainError::Locked { .. }), "{error}");
        assert!(error.to_string().contains("another ppcr process"));
        // Reading is not blocked, and the last holder's end releases the folder.
        assert!(
            RunDir::open(folder.path()).is_err_and(|e| matches!(e, TrainError::NotARun { .. }))
        );
        drop(clone);
        RunDir::create(folder.path()).unwrap();
    }

    #[test]
    fn opening_a_run_for_writing_removes_what_a_killed_write_left() {
        let folder = tempfile::tempdir().unwrap();
        let run = RunDir::create(folder.path()).unwrap();
        let checkpoints = folder.path().join("checkpoints");
        fs::write(checkpoints.join(".latest.tmp-4242"), b"epoch-00").unwrap();
        fs::write(folder.path().join(".log.csv.tmp-4242"), b"epoch,lr").unwrap();
        fs::create_dir_all(checkpoints.join(".epoch-0003.partial")).unwrap();
        fs::write(checkpoints.join(".epoch-0003.partial/model.bpk"), b"half").unwrap();
        fs::write(checkpoints.join("latest"), b"epoch-0002").unwrap();
        drop(run);

        RunDir::create(folder.path()).unwrap();
        let mut left: Vec<String> = fs::read_dir(&checkpoints)
            .unwrap()
            .chain(fs::read_dir(folder.path()).unwrap())
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // The lock file stays: it is the folder's, not a leftover.
        assert_eq!(left, [".lock", "checkpoints", "latest"]);
    }

    use crate::fuzzing::{checkpoint_model, checkpoint_optimizer, optimizer_step};

    /// Found by the `checkpoint` fuzz target: an optimizer file whose state tensor lacks a
    /// parameter id made burn's `load_record` panic (its state is also for parameters this
    /// model lacks, which the check reports first).
    #[test]
    fn optimizer_state_without_a_parameter_id_is_refused() {
        let path = Path::new("tests/fixtures/fuzz/optimizer_without_param_id.bpk");
        let bytes = fs::read(path).unwrap();
        let error = load_optimizer_bytes(checkpoint_optimizer(), bytes, path, &checkpoint_model())
            .err()
            .expect("refused");
        let message = error.to_string();
        assert!(
            message.contains("optimizer_without_param_id.bpk"),
            "{message}"
        );
        assert!(message.contains("does not fit this model"), "{message}");
    }

    /// State that fits another model (here one layer's) is refused before it can fail a step.
    #[test]
    fn optimizer_state_of_another_model_is_refused() {
        let model = checkpoint_model();
        let mut optimizer = checkpoint_optimizer();
        // A fresh classifier has new parameter ids, as a model of another run would.
        let other = crate::models::ResNetConfig::new(
            crate::models::Backbone::ResNet20,
            crate::attention::AttentionConfig::new(crate::attention::AttentionKind::Ppcr),
            2,
        )
        .with_in_channels(1)
        .with_input_size(8)
        .init(&burn::tensor::Device::flex().autodiff())
        .unwrap();
        optimizer_step(&mut optimizer, other);
        let bytes = optimizer.to_record().into_bytes().unwrap().to_vec();
        let error = load_optimizer_bytes(
            checkpoint_optimizer(),
            bytes.clone(),
            Path::new("optimizer.bpk"),
            &model,
        )
        .err()
        .expect("refused");
        assert!(
            error.to_string().contains("which this model lacks"),
            "{error}"
        );

        let mut own = checkpoint_optimizer();
        optimizer_step(&mut own, model.clone());
        let bytes = own.to_record().into_bytes().unwrap().to_vec();
        let mut loaded = load_optimizer_bytes(
            checkpoint_optimizer(),
            bytes,
            Path::new("optimizer.bpk"),
            &model,
        )
        .unwrap();
        optimizer_step(&mut loaded, model);
    }
}

//! The checkpoint of a completed epoch (`checkpoints/epoch-NNNN/`: `model.bpk`,
//! `optimizer.bpk`, `state.json`, and `live.bpk` in a run that averages its weights), written so that a crash at any moment leaves every
//! checkpoint on disk readable, and read back with checks that turn a damaged or mismatched
//! file into an error naming it instead of a panic or NaN mid-training.
//!
//! An epoch folder is assembled under a temporary name and renamed into place only once every
//! file in it is on disk; the `latest` and `best` pointers are replaced atomically after that.
//! Older epoch folders are removed only once no pointer names them.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::ModuleOptimizer;
use burn::optim::record::OptimizerRecord;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, DType, Tensor};

use super::error::{parse_json, read_text};
use super::pause::pause_point;
use super::{RunDir, RunFileError, TrainState};
use crate::models::ResNet;

/// The weights an epoch is evaluated with: what `predict`, `eval`, `explain` and `export` read.
const WEIGHTS_FILE: &str = "model.bpk";
/// The trained weights themselves, where they differ from [`WEIGHTS_FILE`] (a run that keeps a
/// moving average of its weights evaluates the average): what `--resume` trains on from.
const LIVE_WEIGHTS_FILE: &str = "live.bpk";

/// The checkpoint folder of imported weights (see [`RunDir::save_weights`]).
const IMPORTED: &str = "imported";

impl RunDir {
    /// Save a completed epoch: the trained `model` and, in a run that evaluates a moving
    /// average of its weights, that `average`; `is_best` also moves the `best` pointer to it.
    pub fn save_epoch(
        &self,
        model: &ResNet,
        average: Option<&ResNet>,
        optimizer: &ModuleOptimizer,
        state: &TrainState,
        is_best: bool,
    ) -> Result<(), RunFileError> {
        let name = format!("epoch-{:04}", state.epochs_completed);
        let checkpoints = self.checkpoints();
        let partial = checkpoints.join(format!(".{name}.partial"));
        let final_dir = checkpoints.join(&name);
        if partial.exists() {
            fs::remove_dir_all(&partial)
                .map_err(|e| RunFileError::io(&partial, "cannot clear", e))?;
        }
        fs::create_dir_all(&partial).map_err(|e| RunFileError::write(&partial, e))?;
        let written = self.write_epoch_files(&partial, model, average, optimizer, state);
        if written.is_err() {
            // A half-written folder is never read, but on a full disk it holds the space the
            // user needs back.
            let _ = fs::remove_dir_all(&partial);
        }
        written?;
        if final_dir.exists() {
            // Left by a run that crashed after this rename but before moving `latest`.
            fs::remove_dir_all(&final_dir)
                .map_err(|e| RunFileError::io(&final_dir, "cannot replace", e))?;
        }
        fs::rename(&partial, &final_dir)
            .map_err(|e| RunFileError::io(&final_dir, "cannot finish", e))?;
        pause_point(|| format!("pointer:{}", state.epochs_completed));
        self.write_file(&checkpoints.join("latest"), name.as_bytes())?;
        if is_best {
            self.write_file(&checkpoints.join("best"), name.as_bytes())?;
        }
        self.prune()
    }

    /// Save weights that no training here produced (an imported network) as the run's `best`
    /// checkpoint, in `checkpoints/imported/`, without optimizer state: `predict`, `eval`,
    /// `explain` and `train --pretrained` read it; there is nothing for `--resume` to resume.
    pub fn save_weights(&self, model: &ResNet) -> Result<(), RunFileError> {
        let checkpoints = self.checkpoints();
        let partial = checkpoints.join(format!(".{IMPORTED}.partial"));
        let final_dir = checkpoints.join(IMPORTED);
        for dir in [&partial, &final_dir] {
            if dir.exists() {
                fs::remove_dir_all(dir).map_err(|e| RunFileError::io(dir, "cannot clear", e))?;
            }
        }
        fs::create_dir_all(&partial).map_err(|e| RunFileError::write(&partial, e))?;
        let bytes = model
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| RunFileError::io(&partial, "cannot serialise the model", e))?;
        let written = self.write_file(&partial.join(WEIGHTS_FILE), &bytes);
        if written.is_err() {
            let _ = fs::remove_dir_all(&partial);
        }
        written?;
        fs::rename(&partial, &final_dir)
            .map_err(|e| RunFileError::io(&final_dir, "cannot finish", e))?;
        self.write_file(&checkpoints.join("best"), IMPORTED.as_bytes())
    }

    /// Whether the run has weights to predict with (a `best` checkpoint, trained or imported).
    pub fn has_weights(&self) -> Result<bool, RunFileError> {
        Ok(self.pointer("best")?.is_some())
    }

    /// The files of an epoch folder, written into `partial`.
    fn write_epoch_files(
        &self,
        partial: &Path,
        model: &ResNet,
        average: Option<&ResNet>,
        optimizer: &ModuleOptimizer,
        state: &TrainState,
    ) -> Result<(), RunFileError> {
        let serialise = |model: &ResNet| {
            model
                .clone()
                .into_record()
                .into_bytes()
                .map_err(|e| RunFileError::io(partial, "cannot serialise the model", e))
        };
        if average.is_some() {
            self.write_file(&partial.join(LIVE_WEIGHTS_FILE), &serialise(model)?)?;
        }
        let model_bytes = serialise(average.unwrap_or(model))?;
        let optimizer_bytes = optimizer
            .to_record()
            .into_bytes()
            .map_err(|e| RunFileError::io(partial, "cannot serialise the optimizer", e))?;
        let state_json = serde_json::to_vec_pretty(state).expect("state serialises");
        for (file, bytes) in [
            (WEIGHTS_FILE, &model_bytes[..]),
            ("optimizer.bpk", &optimizer_bytes[..]),
            ("state.json", &state_json[..]),
        ] {
            self.write_file(&partial.join(file), bytes)?;
            if file == WEIGHTS_FILE {
                pause_point(|| format!("checkpoint:{}", state.epochs_completed));
            }
        }
        Ok(())
    }

    /// Remove epoch folders no pointer names (and partial folders of crashed writes).
    fn prune(&self) -> Result<(), RunFileError> {
        let keep = [self.pointer("latest")?, self.pointer("best")?];
        let checkpoints = self.checkpoints();
        let entries = fs::read_dir(&checkpoints)
            .map_err(|e| RunFileError::io(&checkpoints, "cannot list", e))?;
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

    /// Load the weights the `latest` or `best` checkpoint is evaluated with into `model` (the
    /// moving average, in a run that keeps one).
    pub fn load_model(&self, model: ResNet, pointer: &str) -> Result<ResNet, RunFileError> {
        let path = self.epoch_dir(pointer)?.join(WEIGHTS_FILE);
        let bytes = fs::read(&path).map_err(|e| RunFileError::io(&path, "cannot read", e))?;
        load_model_bytes(model, bytes, &path)
    }

    /// Load the trained weights of the `latest` checkpoint into `model`, to train on from: the
    /// same as [`RunDir::load_model`] unless the run keeps a moving average of its weights.
    pub fn load_live_model(&self, model: ResNet) -> Result<ResNet, RunFileError> {
        let live = self.epoch_dir("latest")?.join(LIVE_WEIGHTS_FILE);
        if !live.exists() {
            return self.load_model(model, "latest");
        }
        let bytes = fs::read(&live).map_err(|e| RunFileError::io(&live, "cannot read", e))?;
        load_model_bytes(model, bytes, &live)
    }

    /// Load the optimizer state and training state of the `latest` checkpoint; the optimizer
    /// state is checked against `model`, the model it will train.
    pub fn load_training_state(
        &self,
        optimizer: ModuleOptimizer,
        model: &ResNet,
    ) -> Result<(ModuleOptimizer, TrainState), RunFileError> {
        let dir = self.epoch_dir("latest")?;
        let path = dir.join("optimizer.bpk");
        let bytes = fs::read(&path).map_err(|e| RunFileError::io(&path, "cannot read", e))?;
        let optimizer = load_optimizer_bytes(optimizer, bytes, &path, model)?;
        let path = dir.join("state.json");
        let state = parse_json(&read_text(&path)?, &path)?;
        Ok((optimizer, state))
    }
}

/// Loads model weights from the contents of a `model.bpk` file; `path` names it in errors.
pub(crate) fn load_model_bytes(
    model: ResNet,
    bytes: Vec<u8>,
    path: &Path,
) -> Result<ResNet, RunFileError> {
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|e| {
        RunFileError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })?;
    let model = model
        .try_load_record(record)
        .map_err(|e| RunFileError::Corrupt {
            path: path.to_path_buf(),
            message: format!("the weights do not fit this model (was run.json edited?): {e}"),
        })?;
    // A training run never saves a non-finite weight (divergence stops it first), so one here
    // means the file was damaged: say so now, not as NaN probabilities later.
    if let Some((index, value)) = first_non_finite_weight(&model) {
        return Err(RunFileError::Corrupt {
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
) -> Result<ModuleOptimizer, RunFileError> {
    let bytes = Bytes::from_bytes_vec(bytes);
    check_optimizer_file(bytes.clone(), model).map_err(|message| RunFileError::Corrupt {
        path: path.to_path_buf(),
        message: format!("the optimizer state does not fit this model: {message}"),
    })?;
    let record = OptimizerRecord::from_bytes(bytes).map_err(|e| RunFileError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(optimizer.load_record(record))
}

#[cfg(test)]
mod tests {
    use super::*;

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

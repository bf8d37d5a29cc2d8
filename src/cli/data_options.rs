//! The data options shared by the commands that read a data set, and loading it.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use ppcr::data::{BadFilePolicy, Dataset, LoadOptions, builtin_breastmnist, load};
use ppcr::train::TrainConfig;

/// Where the images come from and how they are shaped.
#[derive(Args, Debug)]
pub struct DataArgs {
    /// Data: a MedMNIST .npz, an image folder (root/{train,val,test}/<class>/* or
    /// root/<class>/*), a CSV file (path,label[,split]), a CIFAR-10/100 binary folder or an
    /// ISIC 2018 Task 3 folder (ISIC2018_Task3_*_Input/ with their _GroundTruth CSVs)
    /// [default: the built-in BreastMNIST].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Resize images to N x N pixels [default: the data's own size].
    #[arg(long)]
    size: Option<usize>,
    /// Force 1 (grey) or 3 (RGB) channels [default: as stored].
    #[arg(long)]
    channels: Option<usize>,
    /// Seed of weight init, data order, augmentation and any split drawn [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Skip unreadable image files with a warning instead of stopping.
    #[arg(long)]
    skip_bad_files: bool,
}

impl DataArgs {
    /// The `--seed` given, if any.
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// Write the given options into a training configuration (flags win over the file).
    pub fn apply(&self, config: &mut TrainConfig) {
        if let Some(data) = &self.data {
            config.data = Some(data.clone());
        }
        if let Some(size) = self.size {
            config.size = Some(size);
        }
        if let Some(channels) = self.channels {
            config.channels = Some(channels);
        }
        if let Some(seed) = self.seed {
            config.seed = seed;
        }
        if self.skip_bad_files {
            config.on_bad_file = BadFilePolicy::Skip;
        }
    }
}

/// Load the data set a training configuration names (the built-in one when it names none).
pub fn load_dataset(config: &TrainConfig) -> anyhow::Result<Dataset> {
    let options = LoadOptions {
        size: config.size,
        channels: config.channels,
        split_seed: config.data_split_seed(),
        val_fraction: config.val_fraction,
        test_fraction: config.test_fraction,
        on_bad_file: config.on_bad_file,
    };
    let dataset = match &config.data {
        Some(path) => load(path, &options),
        None => builtin_breastmnist(&options),
    };
    let source = config
        .data
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the built-in BreastMNIST".into());
    dataset.with_context(|| format!("cannot load {source}"))
}

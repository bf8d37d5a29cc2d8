//! `ppcr predict`: class and probabilities for image files, from a trained run.

use std::path::PathBuf;

use clap::Args;

use super::device::DeviceArgs;
use super::eval::chosen_tta;
use ppcr::data::{Split, load_image_file};
use ppcr::runfiles::RunDir;
use ppcr::train::{load_trained_model, predict_probabilities};

/// Options of `ppcr predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Run folder written by `ppcr train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Image files (PNG, JPEG, BMP, TIFF).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Print CSV (path, predicted class, one probability column per class).
    #[arg(long)]
    csv: bool,
    /// Test-time augmentation: none, hflip or flips [default: the run's `tta`].
    #[arg(long, value_name = "VIEWS")]
    tta: Option<String>,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Run `ppcr predict`.
pub fn run(args: &PredictArgs) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let run = RunDir::open(&args.checkpoint)?;
    let (model, info) = load_trained_model(&run, "best", &device)?;
    let tta = chosen_tta(args.tta.as_deref(), &info)?;
    let (size, channels) = (info.model.input_size, info.model.in_channels);
    let mut images = Vec::with_capacity(args.images.len() * size * size * channels);
    for path in &args.images {
        images.extend(load_image_file(path, size, channels)?);
    }
    let split = Split {
        images,
        labels: vec![0; args.images.len()],
        height: size,
        width: size,
        channels,
    };
    let probabilities = predict_probabilities(
        &model,
        &split,
        &info.normalization,
        // One batch, as a list of files on the command line is short.
        split.len().max(1),
        tta,
        &device,
    )?;
    let classes = info.class_names.len();
    let mut writer = csv::Writer::from_writer(std::io::stdout());
    if args.csv {
        let mut header = vec!["path".to_string(), "predicted".to_string()];
        header.extend(info.class_names.iter().map(|name| format!("p_{name}")));
        writer.write_record(&header)?;
    }
    for (i, path) in args.images.iter().enumerate() {
        let row = &probabilities[i * classes..(i + 1) * classes];
        let (best, probability) = row
            .iter()
            .copied()
            .enumerate()
            .fold((0, f32::MIN), |a, b| if b.1 > a.1 { b } else { a });
        if args.csv {
            let mut record = vec![path.display().to_string(), info.class_names[best].clone()];
            record.extend(row.iter().map(|p| format!("{p:.6}")));
            writer.write_record(&record)?;
        } else {
            let all = info
                .class_names
                .iter()
                .zip(row)
                .map(|(name, p)| format!("{name}={p:.3}"))
                .collect::<Vec<_>>()
                .join(" ");
            out!(
                "{}: {} ({probability:.3})  [{all}]",
                path.display(),
                info.class_names[best]
            );
        }
    }
    writer.flush()?;
    Ok(())
}

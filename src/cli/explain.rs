//! `ppcr explain`: Grad-CAM (Selvaraju et al., ICCV 2017) and attention-map figures for image
//! files from a trained run: where the network looks, and where its PPCR units (Zhang et al.,
//! arXiv 2303.01917) put weight.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::tensor::{Tensor, TensorData};
use clap::Args;
use image::RgbImage;
use serde::Serialize;

use super::device::DeviceArgs;
use ppcr::data::{Split, load_image_file, load_image_file_rgb, make_batch};
use ppcr::explain::{
    ColorBar, Colormap, Heatmap, Rect, ResNetExplanation, Target, display_size, explain_resnet,
    render_panel, resize_rgb, save_png,
};
use ppcr::runfiles::{RunDir, RunInfo, write_atomic};
use ppcr::train::load_trained_model;

/// Options of `ppcr explain`.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Run folder written by `ppcr train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Image files (PNG, JPEG, BMP, TIFF).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Folder for the figures and explain.json (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Class to explain, by name or index [default: each image's predicted class].
    #[arg(long)]
    class: Option<String>,
    /// Stage whose attention maps are drawn, 1-based [default: the last stage].
    #[arg(long)]
    stage: Option<usize>,
    /// Also draw every block's attention map, not only the stage mean.
    #[arg(long)]
    per_block: bool,
    /// Colour map: jet or viridis.
    #[arg(long, default_value_t = Colormap::Jet)]
    colormap: Colormap,
    #[command(flatten)]
    device: DeviceArgs,
}

/// explain.json.
#[derive(Serialize)]
struct Report {
    checkpoint: String,
    backbone: String,
    attention: String,
    class_names: Vec<String>,
    /// Stage Grad-CAM looks at (1-based; always the last).
    gradcam_stage: usize,
    /// Stage whose attention maps were drawn (1-based).
    attention_stage: usize,
    /// Whether the units have spatial maps at all.
    attention_maps: bool,
    colormap: String,
    images: Vec<ImageReport>,
}

#[derive(Serialize)]
struct ImageReport {
    file: String,
    width: usize,
    height: usize,
    predicted: String,
    predicted_index: usize,
    /// Softmax probabilities in `class_names` order.
    probabilities: Vec<f32>,
    explained: String,
    explained_index: usize,
    outputs: Vec<Figure>,
}

/// One PNG written.
#[derive(Serialize)]
struct Figure {
    /// `gradcam`, `attention_mean` or `attention_block`.
    kind: &'static str,
    /// File name inside the output folder.
    file: String,
    stage: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    block: Option<usize>,
    /// Range of the map before it was scaled to [0, 1] for colouring.
    min: f32,
    max: f32,
    overlay: Rect,
    colorbar: Rect,
}

/// An input image: the model's view and the one drawn on.
struct LoadedImage {
    path: PathBuf,
    model_pixels: Vec<u8>,
    display: RgbImage,
    width: usize,
    height: usize,
}

/// Run `ppcr explain`.
pub fn run(args: &ExplainArgs) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let run = RunDir::open(&args.checkpoint)?;
    let (model, info) = load_trained_model(&run, "best", &device)?;
    let classes = &info.class_names;
    let target = match &args.class {
        Some(spec) => Target::Class(parse_class(spec, classes)?),
        None => Target::Predicted,
    };
    let stages = model.stages.len();
    let stage = match args.stage {
        None => stages,
        Some(stage) if (1..=stages).contains(&stage) => stage,
        Some(stage) => {
            bail!("--stage {stage} is out of range: the model has {stages} stages (1-{stages})")
        }
    };
    // Every image is read before anything is written, so bad input leaves no half output.
    let images = args
        .images
        .iter()
        .map(|path| load(path, &info))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create the output folder", args.out.display()))?;

    let unit = info.model.attention.kind.name();
    let mut report = Report {
        checkpoint: args.checkpoint.display().to_string(),
        backbone: info.model.backbone.name().to_string(),
        attention: unit.to_string(),
        class_names: classes.clone(),
        gradcam_stage: stages,
        attention_stage: stage,
        attention_maps: true,
        colormap: args.colormap.name().to_string(),
        images: Vec::with_capacity(images.len()),
    };
    let mut stems = HashSet::new();
    for (index, image) in images.iter().enumerate() {
        let input = model_input(image, &info, &device);
        let explanation = explain_resnet(&model, input, target, stage - 1)
            .with_context(|| image.path.display().to_string())?
            .remove(0);
        let stem = unique_stem(&image.path, index, &mut stems);
        let outputs = write_figures(args, &info, image, &explanation, &stem, stage, stages)?;
        if explanation.attention.is_none() && report.attention_maps {
            report.attention_maps = false;
            eprintln!(
                "note: '{unit}' units have no spatial attention map; only Grad-CAM is drawn \
                 (PPCR, CBAM and SimAM have one)"
            );
        }
        let predicted = explanation.predicted;
        let explained = explanation.grad_cam.class;
        out!(
            "{}: {} ({:.3}) -> {}",
            image.path.display(),
            classes[predicted],
            explanation.probabilities[predicted],
            outputs
                .iter()
                .map(|figure| figure.file.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        report.images.push(ImageReport {
            file: image.path.display().to_string(),
            width: image.width,
            height: image.height,
            predicted: classes[predicted].clone(),
            predicted_index: predicted,
            probabilities: explanation.probabilities.clone(),
            explained: classes[explained].clone(),
            explained_index: explained,
            outputs,
        });
    }
    let json_path = args.out.join("explain.json");
    let json = serde_json::to_string_pretty(&report)? + "\n";
    write_atomic(&json_path, json.as_bytes())
        .with_context(|| format!("{}: cannot write", json_path.display()))?;
    out!("wrote {}", json_path.display());
    Ok(())
}

/// The class `spec` names: a class name, or else an index.
fn parse_class(spec: &str, classes: &[String]) -> anyhow::Result<usize> {
    let wanted = spec.trim();
    // Names first: a data set whose classes are called "1", "2", ... means them by name.
    if let Some(index) = classes
        .iter()
        .position(|name| name.eq_ignore_ascii_case(wanted))
    {
        return Ok(index);
    }
    let listing = classes
        .iter()
        .enumerate()
        .map(|(index, name)| format!("{index} {name}"))
        .collect::<Vec<_>>()
        .join(", ");
    match wanted.parse::<usize>() {
        Ok(index) if index < classes.len() => Ok(index),
        Ok(index) => bail!(
            "--class {index} is out of range: the model has {} classes ({listing})",
            classes.len()
        ),
        Err(_) => bail!("--class '{spec}' is not a class of this model; classes: {listing}"),
    }
}

fn load(path: &Path, info: &RunInfo) -> anyhow::Result<LoadedImage> {
    let (size, channels) = (info.model.input_size, info.model.in_channels);
    let model_pixels = load_image_file(path, size, channels)?;
    let (pixels, shape) = load_image_file_rgb(path)?;
    let display = RgbImage::from_raw(shape.width as u32, shape.height as u32, pixels)
        .with_context(|| format!("{}: decoded pixels do not fill the image", path.display()))?;
    Ok(LoadedImage {
        path: path.to_path_buf(),
        model_pixels,
        display,
        width: shape.width,
        height: shape.height,
    })
}

/// The image normalised as in training, `[1, C, size, size]`.
fn model_input(image: &LoadedImage, info: &RunInfo, device: &burn::tensor::Device) -> Tensor<4> {
    let (size, channels) = (info.model.input_size, info.model.in_channels);
    let split = Split {
        images: image.model_pixels.clone(),
        labels: vec![0],
        height: size,
        width: size,
        channels,
    };
    // Inference draws no randomness; the generator only satisfies make_batch's signature.
    let mut unused_rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let (pixels, _) = make_batch(&split, &[0], None, &mut unused_rng, &info.normalization);
    Tensor::from_data(TensorData::new(pixels, [1, channels, size, size]), device)
}

/// The image's file stem, made safe for file names and distinct from earlier images'.
fn unique_stem(path: &Path, index: usize, used: &mut HashSet<String>) -> String {
    let stem = sanitize(
        &path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into()),
    );
    let stem = if used.contains(&stem) {
        format!("{stem}_{}", index + 1)
    } else {
        stem
    };
    used.insert(stem.clone());
    stem
}

fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Labels for a colour bar from `min` to `max`, with just enough decimals to tell them apart
/// (PPCR maps early in training vary in the third decimal).
fn range_labels(min: f32, max: f32) -> ColorBar {
    let decimals = (2..=6)
        .find(|&d| format!("{min:.d$}") != format!("{max:.d$}"))
        .unwrap_or(2);
    ColorBar {
        low: format!("{min:.decimals$}"),
        high: format!("{max:.decimals$}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn write_figures(
    args: &ExplainArgs,
    info: &RunInfo,
    image: &LoadedImage,
    explanation: &ResNetExplanation,
    stem: &str,
    stage: usize,
    stages: usize,
) -> anyhow::Result<Vec<Figure>> {
    let classes = &info.class_names;
    let (width, height) = display_size(image.width as u32, image.height as u32);
    let base = resize_rgb(&image.display, width, height);
    let predicted = explanation.predicted;
    let explained = explanation.grad_cam.class;
    let probability = |class: usize| explanation.probabilities[class];
    let class_line = if explained == predicted {
        format!("{} p={:.3}", classes[explained], probability(explained))
    } else {
        format!(
            "{} p={:.3} (predicted {} p={:.3})",
            classes[explained],
            probability(explained),
            classes[predicted],
            probability(predicted)
        )
    };
    let model_name = format!(
        "{} + {}",
        info.model.backbone.name(),
        info.model.attention.kind.name()
    );
    let unit = info.model.attention.kind.name();
    let unit_label = info.model.attention.kind.label().to_string();
    let mut figures = Vec::new();
    let mut draw = |kind: &'static str,
                    file: String,
                    map: &Heatmap,
                    title: String,
                    bar: ColorBar,
                    stage: usize,
                    block: Option<usize>|
     -> anyhow::Result<()> {
        let (min, max) = map.min_max();
        let lines = [title, class_line.clone()];
        let panel = render_panel(&base, &map.normalized(), args.colormap, &lines, &bar)?;
        save_png(&panel.image, &args.out.join(&file))?;
        figures.push(Figure {
            kind,
            file,
            stage,
            block,
            min,
            max,
            overlay: panel.overlay,
            colorbar: panel.colorbar,
        });
        Ok(())
    };

    let cam = &explanation.grad_cam.cam;
    draw(
        "gradcam",
        format!(
            "{stem}_gradcam_{}_p{:.3}.png",
            sanitize(&classes[explained]),
            probability(explained)
        ),
        cam,
        format!("Grad-CAM, stage {stages}, {model_name}"),
        ColorBar {
            low: "0".into(),
            high: "1".into(),
        },
        stages,
        None,
    )?;
    if let Some(attention) = &explanation.attention {
        let (min, max) = attention.mean.min_max();
        draw(
            "attention_mean",
            format!("{stem}_{unit}_stage{stage}_mean.png"),
            &attention.mean,
            format!(
                "{unit_label} attention, stage {stage}, mean of {} blocks",
                attention.blocks.len()
            ),
            range_labels(min, max),
            stage,
            None,
        )?;
        if args.per_block {
            for (block, map) in attention.blocks.iter().enumerate() {
                let (min, max) = map.min_max();
                draw(
                    "attention_block",
                    format!("{stem}_{unit}_stage{stage}_block{}.png", block + 1),
                    map,
                    format!("{unit_label} attention, stage {stage}, block {}", block + 1),
                    range_labels(min, max),
                    stage,
                    Some(block + 1),
                )?;
            }
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["basophil", "erythroblast", "platelet"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn class_is_found_by_name_or_index_and_bad_ones_are_named() {
        assert_eq!(parse_class("platelet", &names()).unwrap(), 2);
        assert_eq!(parse_class("Basophil", &names()).unwrap(), 0);
        assert_eq!(parse_class("1", &names()).unwrap(), 1);
        let error = parse_class("3", &names()).unwrap_err().to_string();
        assert!(
            error.contains("--class 3") && error.contains("3 classes"),
            "{error}"
        );
        let error = parse_class("neutrophil", &names()).unwrap_err().to_string();
        assert!(
            error.contains("'neutrophil'") && error.contains("2 platelet"),
            "{error}"
        );
        // A class named "1" wins over index 1.
        let numeric = ["0", "2", "1"].map(String::from).to_vec();
        assert_eq!(parse_class("1", &numeric).unwrap(), 2);
    }

    #[test]
    fn range_labels_show_enough_decimals_to_differ() {
        let bar = range_labels(0.4991, 0.5012);
        assert_eq!((bar.low.as_str(), bar.high.as_str()), ("0.499", "0.501"));
        let bar = range_labels(0.1, 0.9);
        assert_eq!((bar.low.as_str(), bar.high.as_str()), ("0.10", "0.90"));
    }

    #[test]
    fn stems_are_safe_and_unique() {
        let mut used = HashSet::new();
        assert_eq!(unique_stem(Path::new("a/x y.png"), 0, &mut used), "x_y");
        assert_eq!(unique_stem(Path::new("b/x y.jpg"), 1, &mut used), "x_y_2");
    }
}

//! `ppcr models`: every backbone x attention unit with its parameter counts.

use anyhow::Context;
use burn::tensor::Device;
use clap::Args;
use serde::Serialize;

use ppcr::attention::{AttentionConfig, AttentionKind};
use ppcr::models::{Backbone, Family, ResNetConfig};
use ppcr::params::count_trainable;

/// Options of `ppcr models`.
#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// Input size in pixels [default: 32 for CIFAR ResNets, 224 for ImageNet ResNets].
    #[arg(long)]
    input: Option<usize>,
    /// Number of classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Input channels (1 for grey images).
    #[arg(long, default_value_t = 3)]
    in_channels: usize,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// One line of the listing.
#[derive(Debug, Serialize)]
struct ModelRow {
    backbone: String,
    attention: String,
    input: usize,
    classes: usize,
    in_channels: usize,
    params: usize,
    attention_params: usize,
}

fn build_rows(args: &ModelsArgs) -> anyhow::Result<Vec<ModelRow>> {
    // Only parameters are counted, nothing is computed: the CPU is always there and costs no
    // GPU memory, so this command has no --device.
    let device = Device::flex();
    let mut rows = Vec::new();
    for &backbone in Backbone::ALL {
        let input = args.input.unwrap_or(match backbone.spec().family {
            Family::Cifar => 32,
            Family::ImageNet => 224,
        });
        let count = |kind: AttentionKind| -> anyhow::Result<usize> {
            let model = ResNetConfig::new(backbone, AttentionConfig::new(kind), args.classes)
                .with_in_channels(args.in_channels)
                .with_input_size(input)
                .init(&device)
                .with_context(|| format!("building {backbone} with {kind} at {input} px"))?;
            Ok(count_trainable(&model))
        };
        let plain = count(AttentionKind::None)?;
        for &kind in AttentionKind::ALL {
            let params = count(kind)?;
            rows.push(ModelRow {
                backbone: backbone.name().to_string(),
                attention: kind.name().to_string(),
                input,
                classes: args.classes,
                in_channels: args.in_channels,
                params,
                attention_params: params - plain,
            });
        }
    }
    Ok(rows)
}

/// Run `ppcr models`.
pub fn run(args: &ModelsArgs) -> anyhow::Result<()> {
    let rows = build_rows(args)?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    out!(
        "{:<10} {:<6} {:>5} {:>7} {:>12} {:>12} {:>8}",
        "backbone",
        "attn",
        "input",
        "classes",
        "params",
        "attn params",
        "attn %"
    );
    for row in &rows {
        let share =
            100.0 * row.attention_params as f64 / (row.params - row.attention_params) as f64;
        out!(
            "{:<10} {:<6} {:>5} {:>7} {:>12} {:>12} {:>7.2}%",
            row.backbone,
            row.attention,
            row.input,
            row.classes,
            row.params,
            row.attention_params,
            share
        );
    }
    out!(
        "Counts are of the classifier network. Training with --supcon-weight adds a projection \
         head (two linear layers on the pooled features, training only), which evaluation, \
         export and these counts leave out."
    );
    Ok(())
}

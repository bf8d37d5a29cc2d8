//! `ppcr import`: a torchvision ImageNet checkpoint as an ordinary run folder.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use ppcr::models::Backbone;
use ppcr::train::import_torchvision;

/// Options of `ppcr import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// A torchvision state dict: `.pth`/`.pt` as `torch.save(model.state_dict(), FILE)` writes
    /// it (torchvision's download cache holds these), or `.safetensors`.
    file: PathBuf,
    /// The network the file holds: resnet18, resnet34 or resnet50.
    #[arg(long)]
    backbone: String,
    /// The run folder to write (must not hold a run).
    #[arg(long)]
    out: PathBuf,
    /// A text file of class names, one per line, in class-index order (ImageNet's 1000);
    /// without it classes are named by index.
    #[arg(long, value_name = "FILE")]
    class_names: Option<PathBuf>,
}

/// Run `ppcr import`.
pub fn run(args: &ImportArgs) -> anyhow::Result<()> {
    let backbone: Backbone = args.backbone.parse()?;
    let class_names = match &args.class_names {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read the class names", path.display()))?;
            Some(
                text.lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                    .map(String::from)
                    .collect(),
            )
        }
        None => None,
    };
    let outcome = import_torchvision(&args.file, backbone, class_names, &args.out)?;
    out!(
        "imported {} ({} parameters, {} classes, 224 px RGB, ImageNet mean/std) into {}",
        backbone,
        outcome.params,
        outcome.num_classes,
        args.out.display()
    );
    out!(
        "use it with: ppcr predict --checkpoint {0} IMAGE..., or ppcr train --pretrained {0}",
        args.out.display()
    );
    Ok(())
}

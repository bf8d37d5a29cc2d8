//! Where does a network look, and where do its attention units put weight: Grad-CAM
//! (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
//! Localization", ICCV 2017) and the spatial maps of PPCR (Zhang et al., arXiv 2303.01917),
//! CBAM and SimAM, drawn over the input image with a colour bar.
//!
//! The pieces are independent of any command line: [`grad_cam`] works on any feature map and
//! any differentiable head; [`explain_resnet`] applies it and collects the attention maps for a
//! [`ResNet`](crate::models::ResNet); [`Heatmap`], [`Colormap`], [`render_panel`] and
//! [`save_png`] turn the maps into images.

mod colormap;
mod gradcam;
mod heatmap;
mod overlay;
mod resnet;
mod text;

use std::path::PathBuf;

pub use colormap::Colormap;
pub use gradcam::{GradCam, Target, grad_cam};
pub use heatmap::Heatmap;
pub use overlay::{
    ColorBar, DISPLAY_MAX_SIDE, DISPLAY_MIN_SIDE, OVERLAY_ALPHA, Panel, Rect, blend, display_size,
    render_panel, resize_rgb, save_png,
};
pub use resnet::{ResNetExplanation, StageAttention, explain_resnet};
pub use text::{draw_text, line_height, text_width};

/// Why an explanation could not be computed or written.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The class to explain is not one of the head's outputs.
    #[error("class index {class} is out of range: the model has {classes} classes (0..{classes})")]
    ClassOutOfRange {
        /// The class asked for.
        class: usize,
        /// How many classes the head outputs.
        classes: usize,
    },
    /// A stage index past the model's last stage.
    #[error("stage index {stage} is out of range: the model has {stages} stages")]
    StageOutOfRange {
        /// The stage asked for (0-based).
        stage: usize,
        /// How many stages the model has.
        stages: usize,
    },
    /// A tensor or map does not have the shape the computation needs.
    #[error("{0}")]
    Shape(String),
    /// The model refused the input.
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    /// Writing an image failed.
    #[error("{}: cannot write image: {message}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

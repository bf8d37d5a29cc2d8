//! ppcr: attention-recalibrated CNNs for medical image classification, on burn.
//!
//! The headline is the PPCR unit (Pyramid Pixel Context Recalibration; Zhang et al., arXiv
//! 2303.01917), a plug-in that weights every pixel of a feature map from that pixel's own
//! multi-scale channel context. [`attention`] holds it and the units it is compared to;
//! [`models`] the ResNets they plug into; [`metrics`] the classification metrics reviewers ask
//! for; [`explain`] Grad-CAM and the units' attention maps drawn over the input image;
//! [`train`] and [`compare`] the training loop and the grid of units over seeds, whose files
//! (one type per file: run folder, checkpoints, logs, metrics, comparison summary) are in
//! [`runfiles`], shared by their writers and readers; [`report`] the HTML report of runs and
//! comparisons.

pub mod attention;
pub mod compare;
pub mod data;
pub mod explain;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod gpu;
#[doc(hidden)]
pub(crate) mod kernels;
pub mod metrics;
pub mod models;
pub mod onnx;
pub mod params;
pub mod profile;
pub mod report;
pub mod runfiles;
pub mod train;

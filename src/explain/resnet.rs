//! Explaining a [`ResNet`]: Grad-CAM (Selvaraju et al., ICCV 2017) at the last stage, and the
//! spatial attention maps of one stage's units, the analysis of where PPCR (Zhang et al.,
//! arXiv 2303.01917) puts weight; CBAM's spatial branch and SimAM's neuron weights are
//! collected the same way.

use crate::metrics::argmax;
use burn::module::Module;
use burn::tensor::Tensor;

use super::{ExplainError, GradCam, Heatmap, Target, grad_cam};
use crate::models::ResNet;

/// One stage's attention maps for one image.
#[derive(Debug, Clone)]
pub struct StageAttention {
    /// The stage, 0-based.
    pub stage: usize,
    /// Each block's map, in block order, at the stage's feature-map size (values as the unit
    /// computes them, e.g. PPCR's sigmoid weights in `(0, 1)`).
    pub blocks: Vec<Heatmap>,
    /// The blocks' maps averaged element-wise.
    pub mean: Heatmap,
}

/// What [`explain_resnet`] finds for one image.
#[derive(Debug, Clone)]
pub struct ResNetExplanation {
    /// Softmax probabilities of every class.
    pub probabilities: Vec<f32>,
    /// The highest-probability class.
    pub predicted: usize,
    /// Grad-CAM at the last stage for the explained class.
    pub grad_cam: GradCam,
    /// The chosen stage's spatial attention maps; `None` when its units have none (SE, ECA,
    /// SRM, GCT, no unit).
    pub attention: Option<StageAttention>,
}

/// Explains every image of `images` (`[B, C, H, W]`, normalised as in training): Grad-CAM for
/// `target` at the last stage and the spatial attention maps of stage `stage` (0-based).
///
/// The model runs in inference mode (BatchNorm with its running statistics) whatever device it
/// was loaded on, so the explanation is of the predictions `ppcr predict` reports.
pub fn explain_resnet(
    model: &ResNet,
    images: Tensor<4>,
    target: Target,
    stage: usize,
) -> Result<Vec<ResNetExplanation>, ExplainError> {
    let stages = model.stages.len();
    if stage >= stages {
        return Err(ExplainError::StageOutOfRange { stage, stages });
    }
    let model = model.valid();
    let (features, mut maps) = model.forward_features_with_attention_maps(images)?;
    let cams = grad_cam(features, |features| model.forward_head(features), target)?;

    let mut per_block: Vec<Vec<Heatmap>> = Vec::new();
    for map in maps.swap_remove(stage).into_iter().flatten() {
        per_block.push(Heatmap::from_tensor(map)?);
    }
    let mut explanations = Vec::with_capacity(cams.len());
    for (index, grad_cam) in cams.into_iter().enumerate() {
        let probabilities = softmax(&grad_cam.logits);
        let predicted = argmax(&probabilities);
        let blocks: Vec<Heatmap> = per_block.iter().map(|block| block[index].clone()).collect();
        let attention = Heatmap::mean(&blocks).map(|mean| StageAttention {
            stage,
            blocks,
            mean,
        });
        explanations.push(ResNetExplanation {
            probabilities,
            predicted,
            grad_cam,
            attention,
        });
    }
    Ok(explanations)
}

/// Softmax with the maximum subtracted first, so that large logits cannot overflow.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&logit| (logit - max).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.into_iter().map(|value| value / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::random_tensor;
    use crate::attention::{AttentionConfig, AttentionKind};
    use crate::models::{Backbone, ResNetConfig};
    use burn::tensor::{Device, activation};

    fn model(kind: AttentionKind) -> ResNet {
        ResNetConfig::new(Backbone::ResNet20, AttentionConfig::new(kind), 3)
            .with_input_size(16)
            .init(&Device::flex())
            .unwrap()
    }

    #[test]
    fn resnet_explanation_matches_the_model_and_its_linear_head() {
        let model = model(AttentionKind::Ppcr);
        let images = random_tensor([2, 3, 16, 16], 7, &Device::flex());
        let explanations = explain_resnet(&model, images.clone(), Target::Predicted, 0).unwrap();
        assert_eq!(explanations.len(), 2);

        let expected = activation::softmax(model.valid().forward(images), 1)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        // The ResNet head is global average pooling and a linear layer, so Grad-CAM's channel
        // weights are the classifier's weights for the class over the 4x4 = 16 cells.
        let weight = model
            .classifier
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let classes = 3;
        for (index, explanation) in explanations.iter().enumerate() {
            for (got, want) in explanation
                .probabilities
                .iter()
                .zip(&expected[index * classes..(index + 1) * classes])
            {
                assert!((got - want).abs() < 1e-5, "{got} vs {want}");
            }
            let cam = &explanation.grad_cam;
            assert_eq!(cam.class, explanation.predicted);
            assert_eq!((cam.cam.height(), cam.cam.width()), (4, 4));
            assert_eq!(cam.weights.len(), 64);
            for (channel, &alpha) in cam.weights.iter().enumerate() {
                let want = weight[channel * classes + cam.class] / 16.0;
                assert!(
                    (alpha - want).abs() < 1e-6,
                    "channel {channel}: {alpha} vs {want}"
                );
            }
            assert!(cam.cam.values().iter().all(|&value| value >= 0.0));

            // Stage 1 of ResNet-20 has 3 blocks at 16x16; PPCR's weights start at zero, so
            // every map is sigmoid(0) = 0.5.
            let attention = explanation.attention.as_ref().unwrap();
            assert_eq!(attention.blocks.len(), 3);
            assert_eq!((attention.mean.height(), attention.mean.width()), (16, 16));
            assert!(
                attention
                    .mean
                    .values()
                    .iter()
                    .all(|&value| (value - 0.5).abs() < 1e-6)
            );
        }
    }

    #[test]
    fn units_without_maps_and_bad_stages() {
        let images = random_tensor([1, 3, 16, 16], 8, &Device::flex());
        let explanation = explain_resnet(
            &model(AttentionKind::Se),
            images.clone(),
            Target::Class(2),
            2,
        )
        .unwrap()
        .remove(0);
        assert!(explanation.attention.is_none());
        assert_eq!(explanation.grad_cam.class, 2);
        let simam = explain_resnet(
            &model(AttentionKind::SimAm),
            images.clone(),
            Target::Predicted,
            2,
        )
        .unwrap()
        .remove(0);
        assert_eq!(simam.attention.unwrap().mean.height(), 4);
        let error = explain_resnet(&model(AttentionKind::Se), images, Target::Predicted, 3)
            .unwrap_err()
            .to_string();
        assert!(error.contains("3 stages"), "{error}");
    }
}

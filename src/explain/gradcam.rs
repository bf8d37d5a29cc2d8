//! Grad-CAM: Selvaraju, Cogswell, Das, Vedantam, Parikh, Batra, "Grad-CAM: Visual Explanations
//! from Deep Networks via Gradient-based Localization" (ICCV 2017).
//!
//! For a class `c` with logit `y_c` and a feature map `A` (`K` channels of `h x w`), each
//! channel's weight is the spatial mean of the gradient, `alpha_k = 1/(h w) sum_ij dy_c/dA_k(i,j)`
//! (the paper's eq. 1), and the map is `ReLU(sum_k alpha_k A_k)` (eq. 2). Nothing here knows a
//! particular network: the head that turns the feature map into logits is any differentiable
//! closure, which is what lets the tests check the method on heads with a known answer.

use crate::metrics::argmax;
use burn::tensor::{Tensor, TensorData, activation::relu};

use super::{ExplainError, Heatmap};

/// Which class to explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Each image's highest-scoring class.
    Predicted,
    /// This class for every image.
    Class(usize),
}

/// Grad-CAM of one image.
#[derive(Debug, Clone)]
pub struct GradCam {
    /// The class explained.
    pub class: usize,
    /// The head's logits for the image (all classes).
    pub logits: Vec<f32>,
    /// `alpha_k`, one per feature channel.
    pub weights: Vec<f32>,
    /// `ReLU(sum_k alpha_k A_k)` at the feature map's resolution, not normalised.
    pub cam: Heatmap,
}

/// Grad-CAM of every image of `features` (`[B, K, h, w]`) through `head` (features to logits
/// `[B, classes]`) for `target`.
///
/// The gradient comes from burn's autodiff: the features, taken as plain values, become a leaf
/// that requires a gradient on an autodiff device, `head` runs on it, and the explained
/// classes' logits are summed and back-propagated. Summing over the batch gives each image its
/// own gradient only when `head` treats images independently (global pooling and a linear
/// layer do; a head with batch statistics would not). Parameters the head uses may live on the
/// plain device: autodiff treats them as constants.
pub fn grad_cam<F>(
    features: Tensor<4>,
    head: F,
    target: Target,
) -> Result<Vec<GradCam>, ExplainError>
where
    F: FnOnce(Tensor<4>) -> Tensor<2>,
{
    let [batch, channels, height, width] = features.dims();
    let features = features.without_autodiff();
    let leaf = features.clone().autodiff().require_grad();
    let logits = head(leaf.clone());
    let [rows, classes] = logits.dims();
    if rows != batch {
        return Err(ExplainError::Shape(format!(
            "the head returned logits for {rows} images but was given {batch}"
        )));
    }
    let logit_values = to_vec(logits.clone().without_autodiff())?;
    let explained: Vec<usize> = logit_values
        .chunks(classes)
        .map(|row| match target {
            Target::Predicted => Ok(argmax(row)),
            Target::Class(class) if class < classes => Ok(class),
            Target::Class(class) => Err(ExplainError::ClassOutOfRange { class, classes }),
        })
        .collect::<Result<_, _>>()?;

    let mut selection = vec![0.0f32; batch * classes];
    for (row, &class) in explained.iter().enumerate() {
        selection[row * classes + class] = 1.0;
    }
    let selection = Tensor::<2>::from_data(
        TensorData::new(selection, [batch, classes]),
        &logits.device(),
    );
    // A head that ignores its input records no graph: its gradient is zero everywhere.
    let gradient = if logits.is_autodiff() && logits.is_tracked() {
        let gradients = (logits * selection).sum().backward();
        leaf.grad(&gradients).map(Tensor::without_autodiff)
    } else {
        None
    }
    .unwrap_or_else(|| Tensor::zeros([batch, channels, height, width], &features.device()));

    let alpha = gradient.mean_dims(&[2, 3]);
    let cams = relu((features * alpha.clone()).sum_dim(1));
    let weights = to_vec(alpha)?;
    let cams = Heatmap::from_tensor(cams)?;
    Ok(cams
        .into_iter()
        .enumerate()
        .map(|(row, cam)| GradCam {
            class: explained[row],
            logits: logit_values[row * classes..(row + 1) * classes].to_vec(),
            weights: weights[row * channels..(row + 1) * channels].to_vec(),
            cam,
        })
        .collect())
}

fn to_vec<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>, ExplainError> {
    tensor
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|error| ExplainError::Shape(format!("reading tensor values: {error:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::seeded_values;
    use burn::tensor::{Device, s};

    fn tensor4(values: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(values, shape), &Device::flex())
    }

    /// `[1, 3, 4, 4]`: channel 0 is 2 on the top-left 2x2 block, channel 1 is 3 on the
    /// bottom-right block, channel 2 is noise everywhere.
    fn regional_features() -> Tensor<4> {
        let mut values = vec![0.0f32; 3 * 16];
        for (row, col) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            values[row * 4 + col] = 2.0;
            values[16 + (row + 2) * 4 + col + 2] = 3.0;
        }
        values[32..].copy_from_slice(&seeded_values(16, 3));
        tensor4(values, [1, 3, 4, 4])
    }

    /// Class 0 sums channel 0 over the top-left block, class 1 channel 1 over the bottom-right.
    fn regional_head(features: Tensor<4>) -> Tensor<2> {
        let [batch, ..] = features.dims();
        let top_left = features
            .clone()
            .slice(s![.., 0..1, 0..2, 0..2])
            .sum_dim(2)
            .sum_dim(3)
            .reshape([batch, 1]);
        let bottom_right = features
            .slice(s![.., 1..2, 2..4, 2..4])
            .sum_dim(2)
            .sum_dim(3)
            .reshape([batch, 1]);
        Tensor::cat(vec![top_left, bottom_right], 1)
    }

    #[test]
    fn cam_is_positive_on_the_region_the_logit_reads_and_zero_elsewhere() {
        let cam = grad_cam(regional_features(), regional_head, Target::Class(0))
            .unwrap()
            .remove(0);
        assert_eq!(cam.class, 0);
        // dy/dA_0 is 1 on 4 of 16 cells: alpha_0 = 4/16; the other channels do not matter.
        assert_eq!(cam.weights, vec![0.25, 0.0, 0.0]);
        assert_eq!(cam.logits, vec![8.0, 12.0]);
        for row in 0..4 {
            for col in 0..4 {
                let value = cam.cam.get(row, col);
                if row < 2 && col < 2 {
                    assert!((value - 0.5).abs() < 1e-6, "({row}, {col}) = {value}");
                } else {
                    assert_eq!(value, 0.0, "({row}, {col})");
                }
            }
        }
        // The predicted class (1: logit 12) looks at the bottom-right block instead.
        let cam = grad_cam(regional_features(), regional_head, Target::Predicted)
            .unwrap()
            .remove(0);
        assert_eq!(cam.class, 1);
        assert_eq!(cam.weights, vec![0.0, 0.25, 0.0]);
        for row in 0..4 {
            for col in 0..4 {
                let expected = if row >= 2 && col >= 2 { 0.75 } else { 0.0 };
                assert!((cam.cam.get(row, col) - expected).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn linear_pooling_head_gives_the_hand_computed_cam() {
        // A global-average-pooling linear head: y_c = sum_k W[c,k] mean(A_k) + b_c, so
        // alpha_k = W[c,k] / (h w) = W[c,k] / 4.
        let image = vec![
            1.0, 2.0, 3.0, 4.0, // A_0
            4.0, 3.0, 2.0, 1.0, // A_1
            0.0, 0.0, 0.0, 8.0, // A_2
        ];
        // The second image is the first doubled: its cam must double, untouched by the first.
        let doubled: Vec<f32> = image.iter().map(|v| 2.0 * v).collect();
        let features = tensor4([image, doubled].concat(), [2, 3, 2, 2]);
        let device = Device::flex();
        // W^T, [K = 3, classes = 2]: W = [[1, -1, 0.5], [-2, 1, 0]].
        let weight_t = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, -2.0, -1.0, 1.0, 0.5, 0.0], [3, 2]),
            &device,
        );
        let bias = Tensor::<2>::from_data(TensorData::new(vec![0.1f32, -0.2], [1, 2]), &device);
        let head = |features: Tensor<4>| {
            let [batch, channels, _, _] = features.dims();
            features
                .mean_dims(&[2, 3])
                .reshape([batch, channels])
                .matmul(weight_t.clone())
                + bias.clone()
        };
        let cams = grad_cam(features.clone(), head, Target::Class(0)).unwrap();
        assert_eq!(cams[0].weights, vec![0.25, -0.25, 0.125]);
        assert_eq!(cams[1].weights, vec![0.25, -0.25, 0.125]);
        // Pixel by pixel: 0.25 A_0 - 0.25 A_1 + 0.125 A_2 = -0.75, -0.25, 0.25, 1.75.
        let close = |got: &[f32], want: &[f32]| {
            got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6) && got.len() == want.len()
        };
        assert!(close(cams[0].cam.values(), &[0.0, 0.0, 0.25, 1.75]));
        assert!(close(cams[1].cam.values(), &[0.0, 0.0, 0.5, 3.5]));
        // Logits: means (2.5, 2.5, 2): 2.5 - 2.5 + 1 + 0.1 and -5 + 2.5 - 0.2.
        assert!(close(&cams[0].logits, &[1.1, -2.7]));

        // Class 1: alpha = (-0.5, 0.25, 0); only the first pixel survives the ReLU.
        let cams = grad_cam(features, head, Target::Class(1)).unwrap();
        assert!(close(&cams[0].weights, &[-0.5, 0.25, 0.0]));
        assert!(close(cams[0].cam.values(), &[0.5, 0.0, 0.0, 0.0]));
    }

    #[test]
    fn bad_targets_and_heads_are_errors() {
        let error = grad_cam(regional_features(), regional_head, Target::Class(2)).unwrap_err();
        assert!(
            matches!(
                error,
                ExplainError::ClassOutOfRange {
                    class: 2,
                    classes: 2
                }
            ),
            "{error}"
        );
        let error = grad_cam(
            regional_features(),
            |features| regional_head(features).reshape([2, 1]),
            Target::Predicted,
        )
        .unwrap_err();
        assert!(error.to_string().contains("2 images"), "{error}");
    }

    #[test]
    fn head_that_ignores_the_features_gives_an_all_zero_cam() {
        let cams = grad_cam(
            regional_features(),
            |features| Tensor::ones([features.dims()[0], 3], &Device::flex()),
            Target::Predicted,
        )
        .unwrap();
        assert_eq!(cams[0].weights, vec![0.0; 3]);
        assert!(cams[0].cam.values().iter().all(|&value| value == 0.0));
    }
}

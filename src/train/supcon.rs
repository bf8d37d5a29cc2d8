//! The supervised contrastive loss (Khosla et al., "Supervised Contrastive Learning", NeurIPS
//! 2020), as the PPCR journal version (PPCA, IEEE TNNLS) trains with it: every view is an
//! anchor ("contrast mode all"), its positives are the other views of its class, and
//!
//! ```text
//! L = mean over anchors i of  -(T / T_b) * mean over positives p of
//!         [ z_i . z_p / T  -  log sum over a != i of exp(z_i . z_a / T) ]
//! ```
//!
//! with unit-length embeddings `z`, temperature `T` and base temperature `T_b` (both 0.07 in
//! the paper and the authors' code).

use burn::tensor::{Tensor, TensorData};

/// The temperature of the paper and the authors' code, also its base temperature.
pub const DEFAULT_TEMPERATURE: f64 = 0.07;

/// The loss of unit-length embeddings `[2N, d]` with their class `labels`; every anchor must
/// have a positive (with two views of every image, each has its other view).
pub fn supcon_loss(
    embeddings: Tensor<2>,
    labels: &[usize],
    temperature: f64,
    base_temperature: f64,
) -> Tensor<1> {
    let [views, _] = embeddings.dims();
    assert_eq!(views, labels.len(), "one label per view");
    let device = embeddings.device();
    let similarity = embeddings
        .clone()
        .matmul(embeddings.transpose())
        .div_scalar(temperature);
    // Subtracting each row's maximum (a constant per anchor) keeps exp from overflowing and
    // cancels in the log-ratio, as in the reference implementation.
    let similarity = similarity.clone() - similarity.detach().max_dim(1);
    let mut others = vec![1.0f32; views * views];
    let mut positives = vec![0.0f32; views * views];
    for i in 0..views {
        others[i * views + i] = 0.0;
        for p in 0..views {
            if p != i && labels[p] == labels[i] {
                positives[i * views + p] = 1.0;
            }
        }
    }
    let counts: Vec<f32> = positives
        .chunks(views)
        .map(|row| row.iter().sum::<f32>().max(1.0))
        .collect();
    let matrix =
        |values: Vec<f32>| Tensor::<2>::from_data(TensorData::new(values, [views, views]), &device);
    let others = matrix(others);
    let positives = matrix(positives);
    let counts = Tensor::<2>::from_data(TensorData::new(counts, [views, 1]), &device);
    let log_denominator = (similarity.clone().exp() * others).sum_dim(1).log();
    let log_probability = similarity - log_denominator;
    let mean_positive = (log_probability * positives).sum_dim(1) / counts;
    mean_positive
        .mean()
        .mul_scalar(-temperature / base_temperature)
        .reshape([1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// Four unit vectors, classes 0, 0, 1, 1, T = T_b = 0.5. Similarities / T per anchor
    /// (rows): [2, 1.2, 0, -1.2], [1.2, 2, 1.6, 0.56], [0, 1.6, 2, 1.6], [-1.2, 0.56, 1.6, 2].
    /// Anchor 0: log(e^1.2 + e^0 + e^-1.2) = 1.530678, positive term 1.2 - 1.530678; likewise
    /// 1.2 - 2.304964, 1.6 - 2.389319, 1.6 - 1.946610 for anchors 1-3; the loss is minus their
    /// mean, 0.642893 (numpy with Khosla et al.'s formula: 0.6428929321).
    const Z: [f32; 8] = [1.0, 0.0, 0.6, 0.8, 0.0, 1.0, -0.6, 0.8];
    const LABELS: [usize; 4] = [0, 0, 1, 1];

    fn loss_of(values: &[f32], temperature: f64, base: f64, device: &Device) -> Tensor<1> {
        let z = Tensor::<2>::from_data(TensorData::new(values.to_vec(), [4, 2]), device);
        supcon_loss(z, &LABELS, temperature, base)
    }

    #[test]
    fn matches_the_hand_computed_case() {
        let device = Device::flex();
        let loss: f32 = loss_of(&Z, 0.5, 0.5, &device).into_scalar();
        assert!((loss - 0.642_893).abs() < 1e-5, "{loss}");
        // T / T_b scales the loss: with T_b = 0.07, by 0.5 / 0.07.
        let scaled: f32 = loss_of(&Z, 0.5, 0.07, &device).into_scalar();
        assert!((scaled - 4.592_092).abs() < 1e-4, "{scaled}");
        // Swapping the labels of the two classes changes nothing.
        let z = Tensor::<2>::from_data(TensorData::new(Z.to_vec(), [4, 2]), &device);
        let swapped: f32 = supcon_loss(z, &[1, 1, 0, 0], 0.5, 0.5).into_scalar();
        assert!((swapped - loss).abs() < 1e-6);
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let device = Device::flex().autodiff();
        let z = Tensor::<2>::from_data(TensorData::new(Z.to_vec(), [4, 2]), &device).require_grad();
        let loss = supcon_loss(z.clone(), &LABELS, 0.5, 0.5);
        let grads = loss.backward();
        let analytic = z
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let plain = Device::flex();
        let h = 1e-3f32;
        for index in 0..8 {
            let mut up = Z;
            up[index] += h;
            let mut down = Z;
            down[index] -= h;
            let up: f32 = loss_of(&up, 0.5, 0.5, &plain).into_scalar();
            let down: f32 = loss_of(&down, 0.5, 0.5, &plain).into_scalar();
            let numeric = (up - down) / (2.0 * h);
            assert!(
                (numeric - analytic[index]).abs() < 2e-3,
                "d/dz[{index}]: {numeric} by differences, {} by autodiff",
                analytic[index]
            );
        }
    }
}

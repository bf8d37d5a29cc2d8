//! A 2-D map of scores over an image (a Grad-CAM, an attention unit's spatial weights), with the
//! two operations every explanation figure needs: min-max normalisation and bilinear
//! upsampling to the image's size (Selvaraju et al., ICCV 2017, upsample the coarse Grad-CAM
//! the same way).

use burn::tensor::Tensor;

use super::ExplainError;

/// A `height x width` grid of values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    height: usize,
    width: usize,
    values: Vec<f32>,
}

impl Heatmap {
    /// A map from row-major `values`; an error unless there are exactly `height * width` of
    /// them and the map is not empty.
    pub fn new(height: usize, width: usize, values: Vec<f32>) -> Result<Self, ExplainError> {
        if height == 0 || width == 0 || values.len() != height * width {
            return Err(ExplainError::Shape(format!(
                "a {height}x{width} heatmap needs {} values, got {}",
                height * width,
                values.len()
            )));
        }
        Ok(Heatmap {
            height,
            width,
            values,
        })
    }

    /// One map per batch item of a `[B, 1, H, W]` tensor.
    pub fn from_tensor(maps: Tensor<4>) -> Result<Vec<Self>, ExplainError> {
        let [batch, channels, height, width] = maps.dims();
        if channels != 1 {
            return Err(ExplainError::Shape(format!(
                "a heatmap tensor must have one channel ([B, 1, H, W]), got {channels}"
            )));
        }
        let values = maps
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|error| ExplainError::Shape(format!("heatmap values: {error:?}")))?;
        values
            .chunks(height * width)
            .take(batch)
            .map(|chunk| Heatmap::new(height, width, chunk.to_vec()))
            .collect()
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Columns.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The values, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The value at `row`, `col`.
    pub fn get(&self, row: usize, col: usize) -> f32 {
        self.values[row * self.width + col]
    }

    /// Smallest and largest finite value (`(0, 0)` when none is finite).
    pub fn min_max(&self) -> (f32, f32) {
        let (min, max) = self
            .values
            .iter()
            .copied()
            .filter(|value| value.is_finite())
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(min, max), value| {
                (min.min(value), max.max(value))
            });
        if min > max { (0.0, 0.0) } else { (min, max) }
    }

    /// The map rescaled to `[0, 1]` by its own minimum and maximum.
    ///
    /// A constant map has no place that stands out, so it becomes all zeros rather than a
    /// division by zero; non-finite values become 0 so that one NaN cannot blank a figure.
    pub fn normalized(&self) -> Heatmap {
        let (min, max) = self.min_max();
        let range = max - min;
        let flat = range <= f32::EPSILON * max.abs().max(min.abs()).max(1.0);
        let values = self
            .values
            .iter()
            .map(|&value| {
                if flat || !value.is_finite() {
                    0.0
                } else {
                    ((value - min) / range).clamp(0.0, 1.0)
                }
            })
            .collect();
        Heatmap {
            height: self.height,
            width: self.width,
            values,
        }
    }

    /// Element-wise mean of maps of one size (`None` for no maps or differing sizes).
    pub fn mean(maps: &[Heatmap]) -> Option<Heatmap> {
        let first = maps.first()?;
        if maps
            .iter()
            .any(|map| map.height != first.height || map.width != first.width)
        {
            return None;
        }
        let count = maps.len() as f32;
        let values = (0..first.values.len())
            .map(|index| maps.iter().map(|map| map.values[index]).sum::<f32>() / count)
            .collect();
        Some(Heatmap {
            height: first.height,
            width: first.width,
            values,
        })
    }

    /// The map resampled to `height x width` by bilinear interpolation with half-pixel centres
    /// (PyTorch's `interpolate(align_corners=False)`, OpenCV's `resize`), as Grad-CAM code
    /// upsamples its maps: each cell covers an equal share of the image, so a feature-map
    /// cell lands over the image region it was computed from.
    pub fn resize_bilinear(&self, height: usize, width: usize) -> Heatmap {
        let rows = axis_weights(self.height, height);
        let cols = axis_weights(self.width, width);
        let mut values = Vec::with_capacity(height * width);
        for &(r0, r1, fr) in &rows {
            for &(c0, c1, fc) in &cols {
                let top = self.get(r0, c0) * (1.0 - fc) + self.get(r0, c1) * fc;
                let bottom = self.get(r1, c0) * (1.0 - fc) + self.get(r1, c1) * fc;
                values.push(top * (1.0 - fr) + bottom * fr);
            }
        }
        Heatmap {
            height,
            width,
            values,
        }
    }
}

/// For each output index along one axis: the two source indices and the weight of the second.
fn axis_weights(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|index| {
            // Outside the outermost centres the edge value is held, not extrapolated.
            let source = ((index as f64 + 0.5) * scale - 0.5).clamp(0.0, (input - 1) as f64);
            let low = source.floor() as usize;
            let high = (low + 1).min(input - 1);
            (low, high, (source - low as f64) as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn new_refuses_a_wrong_value_count() {
        assert!(Heatmap::new(2, 2, vec![0.0; 3]).is_err());
        assert!(Heatmap::new(0, 2, vec![]).is_err());
        assert_eq!(Heatmap::new(1, 2, vec![1.0, 2.0]).unwrap().get(0, 1), 2.0);
    }

    #[test]
    fn constant_map_stays_constant_when_upsampled() {
        let map = Heatmap::new(3, 2, vec![0.37; 6]).unwrap();
        let big = map.resize_bilinear(17, 29);
        assert_eq!((big.height(), big.width()), (17, 29));
        for &value in big.values() {
            assert!((value - 0.37).abs() < 1e-6, "{value}");
        }
    }

    #[test]
    fn bilinear_upsampling_matches_half_pixel_interpolation() {
        // PyTorch: interpolate([[0, 1]], size=4, mode="linear", align_corners=False)
        // = [0, 0.25, 0.75, 1].
        let map = Heatmap::new(1, 2, vec![0.0, 1.0]).unwrap();
        let up = map.resize_bilinear(1, 4);
        assert_eq!(up.values(), &[0.0, 0.25, 0.75, 1.0]);
        // In 2-D the weights multiply: the centre of a 2x2 map upsampled to 3x3 is the mean.
        let map = Heatmap::new(2, 2, vec![0.0, 4.0, 8.0, 12.0]).unwrap();
        let up = map.resize_bilinear(3, 3);
        assert!((up.get(1, 1) - 6.0).abs() < 1e-6, "{:?}", up.values());
        assert_eq!(up.get(0, 0), 0.0);
        assert_eq!(up.get(2, 2), 12.0);
        // Downsampling a map to its own size is the identity.
        assert_eq!(map.resize_bilinear(2, 2), map);
    }

    #[test]
    fn normalisation_maps_min_to_zero_and_max_to_one() {
        let map = Heatmap::new(1, 4, vec![2.0, 4.0, 3.0, f32::NAN]).unwrap();
        assert_eq!(map.min_max(), (2.0, 4.0));
        assert_eq!(map.normalized().values(), &[0.0, 1.0, 0.5, 0.0]);
        let flat = Heatmap::new(2, 2, vec![0.5; 4]).unwrap();
        assert_eq!(flat.normalized().values(), &[0.0; 4]);
    }

    #[test]
    fn mean_averages_element_wise_and_refuses_mixed_sizes() {
        let a = Heatmap::new(1, 2, vec![1.0, 2.0]).unwrap();
        let b = Heatmap::new(1, 2, vec![3.0, 6.0]).unwrap();
        assert_eq!(
            Heatmap::mean(&[a.clone(), b]).unwrap().values(),
            &[2.0, 4.0]
        );
        assert!(Heatmap::mean(&[]).is_none());
        assert!(Heatmap::mean(&[a, Heatmap::new(2, 1, vec![0.0; 2]).unwrap()]).is_none());
    }

    #[test]
    fn from_tensor_splits_the_batch() {
        let tensor = Tensor::<4>::from_data(
            TensorData::new((0..8).map(|v| v as f32).collect::<Vec<_>>(), [2, 1, 2, 2]),
            &Device::flex(),
        );
        let maps = Heatmap::from_tensor(tensor).unwrap();
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[1].values(), &[4.0, 5.0, 6.0, 7.0]);
        let two_channels = Tensor::<4>::zeros([1, 2, 2, 2], &Device::flex());
        assert!(Heatmap::from_tensor(two_channels).is_err());
    }
}

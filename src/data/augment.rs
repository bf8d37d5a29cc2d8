//! Seeded, per-image training augmentations on u8 H x W x C images; every output has the input's
//! shape.
//!
//! The operations follow torchvision's definitions so published recipes carry over:
//! `RandomCrop(size, padding)` with zero padding (the CIFAR recipe of He et al., 2016),
//! `RandomResizedCrop(scale, ratio)` (Szegedy et al., 2015), horizontal/vertical flips,
//! `RandomRotation(degrees)` with bilinear sampling and zero fill, and `ColorJitter`
//! (brightness, contrast, saturation). [`AugmentConfig::apply`] runs them in that order;
//! colour jitter applies brightness, then contrast, then saturation (torchvision shuffles the
//! order; a fixed order keeps the random stream simpler and the effect is the same in kind).
//!
//! All randomness comes from the caller's `ChaCha8Rng`, so a seed fixes every augmented pixel.
//! Resampling for the resized crop uses the `image` crate's triangle filter (bilinear,
//! antialiased when shrinking); rotation is sampled here because the `image` crate only rotates
//! by multiples of 90 degrees.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::dataset::ImageShape;
use super::error::DataError;
use super::image_io::resize_pixels;

/// Zero-pad every side by `padding` pixels, then cut a random window of the original size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomCrop {
    /// Pixels of zero padding on each side.
    pub padding: usize,
}

/// Cut a random region of random area and aspect ratio and resize it back to full size.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomResizedCrop {
    /// Range of the region's area as a fraction of the image area, `[min, max]`.
    pub scale: [f32; 2],
    /// Range of the region's width / height, `[min, max]`, sampled log-uniformly.
    pub ratio: [f32; 2],
}

impl Default for RandomResizedCrop {
    /// torchvision's defaults: scale 0.08..1, ratio 3/4..4/3.
    fn default() -> Self {
        Self {
            scale: [0.08, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
        }
    }
}

/// Random brightness, contrast, saturation and hue changes, as torchvision's `ColorJitter`
/// (applied in that fixed order; torchvision shuffles it): each factor is drawn uniformly from
/// `[max(0, 1 - amount), 1 + amount]`, the hue shift from `[-hue, hue]` of a full turn, and an
/// amount of 0 leaves that property alone. The whole jitter happens with `probability`
/// (torchvision's `RandomApply`; 1 = always, which draws no extra number).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColorJitter {
    /// Scales pixel values.
    pub brightness: f32,
    /// Blends with the image's mean grey level.
    pub contrast: f32,
    /// Blends with the per-pixel grey value (RGB images only).
    pub saturation: f32,
    /// Rotates the hue by up to this fraction of a turn, 0..=0.5 (RGB images only).
    pub hue: f32,
    /// Probability of jittering an image at all.
    pub probability: f32,
}

impl Default for ColorJitter {
    /// No change (every amount 0), applied always.
    fn default() -> Self {
        ColorJitter {
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
            probability: 1.0,
        }
    }
}

/// Gaussian blur with a standard deviation drawn uniformly from `sigma` (in pixels), applied
/// with `probability`: SimCLR's blur, which the PPCR authors' ISIC recipe uses (their code
/// calls PIL's `GaussianBlur(radius=sigma)`, a box-filter approximation; this is the exact
/// separable Gaussian, truncated at 3 sigma, edges replicated).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaussianBlur {
    /// Range of the standard deviation, pixels.
    pub sigma: [f32; 2],
    /// Probability of blurring an image.
    pub probability: f32,
}

/// Which augmentations are on, with their parameters. The default turns everything off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Padded random crop.
    pub random_crop: Option<RandomCrop>,
    /// Random resized crop.
    pub random_resized_crop: Option<RandomResizedCrop>,
    /// Probability of a left-right flip (0 = off; 0.5 is the usual value).
    pub horizontal_flip: f32,
    /// Probability of an upside-down flip (0 = off). Sensible for orientation-free images such
    /// as histology or cell images, not for chest X-rays.
    pub vertical_flip: f32,
    /// Rotate by an angle drawn uniformly from `[-rotation_degrees, rotation_degrees]`
    /// (0 = off).
    pub rotation_degrees: f32,
    /// Colour jitter.
    pub color_jitter: Option<ColorJitter>,
    /// Gaussian blur.
    pub gaussian_blur: Option<GaussianBlur>,
}

impl AugmentConfig {
    /// No augmentation at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// The default training augmentation for `size x size` images with `channels` channels.
    ///
    /// * `size <= 64` (MedMNIST 28/64, CIFAR 32): padded random crop with `padding = size / 8`
    ///   (4 for 32 px, the CIFAR recipe) and horizontal flip.
    /// * larger: random resized crop with scale 0.35..1 (milder than ImageNet's 0.08, because a
    ///   lesion or cell must stay in view) and ratio 3/4..4/3, horizontal flip, and rotation of
    ///   up to 10 degrees.
    ///
    /// Colour jitter stays off for grey and RGB images alike: intensity and colour carry
    /// diagnostic meaning (echogenicity, staining); opt in where the task tolerates it.
    pub fn default_for(size: usize, channels: usize) -> Self {
        // Both channel counts get the same geometric defaults today (see above); the argument
        // lets a modality-specific default change without changing callers.
        let _ = channels;
        if size <= 64 {
            Self {
                random_crop: Some(RandomCrop {
                    padding: (size / 8).max(1),
                }),
                horizontal_flip: 0.5,
                ..Self::default()
            }
        } else {
            Self {
                random_resized_crop: Some(RandomResizedCrop {
                    scale: [0.35, 1.0],
                    ratio: [3.0 / 4.0, 4.0 / 3.0],
                }),
                horizontal_flip: 0.5,
                rotation_degrees: 10.0,
                ..Self::default()
            }
        }
    }

    /// Whether the configuration leaves images untouched.
    pub fn is_identity(&self) -> bool {
        self.random_crop.is_none_or(|crop| crop.padding == 0)
            && self.random_resized_crop.is_none()
            && self.horizontal_flip <= 0.0
            && self.vertical_flip <= 0.0
            && self.rotation_degrees == 0.0
            && self.color_jitter.is_none_or(|jitter| {
                ColorJitter {
                    probability: 1.0,
                    ..jitter
                } == ColorJitter::default()
            })
            && self
                .gaussian_blur
                .is_none_or(|blur| blur.probability <= 0.0 || blur.sigma[1] <= 0.0)
    }

    /// Checks every parameter is in range (e.g. after reading a configuration file).
    pub fn validate(&self) -> Result<(), DataError> {
        let invalid = |reason: String| Err(DataError::InvalidOptions { reason });
        for (name, probability) in [
            ("horizontal_flip", self.horizontal_flip),
            ("vertical_flip", self.vertical_flip),
        ] {
            if !(0.0..=1.0).contains(&probability) {
                return invalid(format!(
                    "{name} probability {probability} must be in [0, 1]"
                ));
            }
        }
        if !(0.0..=180.0).contains(&self.rotation_degrees) {
            return invalid(format!(
                "rotation_degrees {} must be in [0, 180]",
                self.rotation_degrees
            ));
        }
        if let Some(crop) = self.random_crop
            && crop.padding > 4096
        {
            return invalid(format!("random_crop padding {} is too large", crop.padding));
        }
        if let Some(RandomResizedCrop { scale, ratio }) = self.random_resized_crop {
            if !(scale[0] > 0.0 && scale[0] <= scale[1] && scale[1] <= 1.0) {
                return invalid(format!(
                    "random_resized_crop scale {scale:?} must satisfy 0 < min <= max <= 1"
                ));
            }
            if !(ratio[0] > 0.0 && ratio[0] <= ratio[1] && ratio[1].is_finite()) {
                return invalid(format!(
                    "random_resized_crop ratio {ratio:?} must satisfy 0 < min <= max"
                ));
            }
        }
        if let Some(jitter) = self.color_jitter {
            for (name, amount) in [
                ("brightness", jitter.brightness),
                ("contrast", jitter.contrast),
                ("saturation", jitter.saturation),
            ] {
                if !(0.0..=10.0).contains(&amount) {
                    return invalid(format!("color_jitter {name} {amount} must be in [0, 10]"));
                }
            }
            if !(0.0..=0.5).contains(&jitter.hue) {
                return invalid(format!(
                    "color_jitter hue {} must be in [0, 0.5]",
                    jitter.hue
                ));
            }
            if !(0.0..=1.0).contains(&jitter.probability) {
                return invalid(format!(
                    "color_jitter probability {} must be in [0, 1]",
                    jitter.probability
                ));
            }
        }
        if let Some(GaussianBlur { sigma, probability }) = self.gaussian_blur {
            if !(sigma[0] >= 0.0 && sigma[0] <= sigma[1] && sigma[1] <= 50.0) {
                return invalid(format!(
                    "gaussian_blur sigma {sigma:?} must satisfy 0 <= min <= max <= 50"
                ));
            }
            if !(0.0..=1.0).contains(&probability) {
                return invalid(format!(
                    "gaussian_blur probability {probability} must be in [0, 1]"
                ));
            }
        }
        Ok(())
    }

    /// Augments one image: resized crop, padded crop, flips, rotation, colour jitter, blur,
    /// each where enabled, drawing from `rng` only for enabled operations.
    ///
    /// Parameters are assumed valid ([`AugmentConfig::validate`]).
    ///
    /// # Panics
    /// If `image.len() != shape.num_values()`.
    pub fn apply(&self, image: &[u8], shape: ImageShape, rng: &mut ChaCha8Rng) -> Vec<u8> {
        assert_eq!(
            image.len(),
            shape.num_values(),
            "image does not match its shape"
        );
        let mut pixels = image.to_vec();
        if let Some(crop) = self.random_resized_crop {
            pixels = random_resized_crop(&pixels, shape, crop, rng);
        }
        if let Some(crop) = self.random_crop {
            pixels = random_crop(&pixels, shape, crop.padding, rng);
        }
        if self.horizontal_flip > 0.0 && rng.random::<f32>() < self.horizontal_flip {
            pixels = flip_horizontal(&pixels, shape);
        }
        if self.vertical_flip > 0.0 && rng.random::<f32>() < self.vertical_flip {
            pixels = flip_vertical(&pixels, shape);
        }
        if self.rotation_degrees > 0.0 {
            let degrees = rng.random_range(-self.rotation_degrees..=self.rotation_degrees);
            pixels = rotate(&pixels, shape, degrees);
        }
        if let Some(jitter) = self.color_jitter
            && (jitter.probability >= 1.0 || rng.random::<f32>() < jitter.probability)
        {
            color_jitter(&mut pixels, shape, jitter, rng);
        }
        if let Some(blur) = self.gaussian_blur
            && blur.probability > 0.0
            && rng.random::<f32>() < blur.probability
        {
            let sigma = rng.random_range(blur.sigma[0]..=blur.sigma[1]);
            pixels = gaussian_blur(&pixels, shape, sigma);
        }
        pixels
    }
}

/// Mirrors the image left to right.
pub fn flip_horizontal(image: &[u8], shape: ImageShape) -> Vec<u8> {
    let row_len = shape.width * shape.channels;
    let mut out = Vec::with_capacity(image.len());
    for row in image.chunks_exact(row_len) {
        for pixel in row.chunks_exact(shape.channels).rev() {
            out.extend_from_slice(pixel);
        }
    }
    out
}

/// Mirrors the image top to bottom.
pub fn flip_vertical(image: &[u8], shape: ImageShape) -> Vec<u8> {
    let row_len = shape.width * shape.channels;
    image
        .chunks_exact(row_len)
        .rev()
        .flatten()
        .copied()
        .collect()
}

/// The window of the original size at (`top`, `left`) of the image zero-padded by `padding`
/// on every side; `top` and `left` range over `0..=2 * padding`.
pub fn pad_and_crop(
    image: &[u8],
    shape: ImageShape,
    padding: usize,
    top: usize,
    left: usize,
) -> Vec<u8> {
    let ImageShape {
        height,
        width,
        channels,
    } = shape;
    let mut out = vec![0u8; image.len()];
    for out_y in 0..height {
        // Row in the unpadded image, if the window's row falls inside it.
        let Some(source_y) = (out_y + top).checked_sub(padding).filter(|&y| y < height) else {
            continue;
        };
        // Columns of the window that overlap the unpadded image.
        let first_x = padding.saturating_sub(left);
        let last_x = (width + padding).saturating_sub(left).min(width);
        if first_x >= last_x {
            continue;
        }
        let source_x = first_x + left - padding;
        let count = (last_x - first_x) * channels;
        let out_start = (out_y * width + first_x) * channels;
        let source_start = (source_y * width + source_x) * channels;
        out[out_start..out_start + count]
            .copy_from_slice(&image[source_start..source_start + count]);
    }
    out
}

/// Zero-pads by `padding` and cuts a uniformly placed window of the original size.
pub fn random_crop(
    image: &[u8],
    shape: ImageShape,
    padding: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<u8> {
    let top = rng.random_range(0..=2 * padding);
    let left = rng.random_range(0..=2 * padding);
    pad_and_crop(image, shape, padding, top, left)
}

/// Cuts the `crop_height x crop_width` region at (`top`, `left`) and resizes it to the full
/// image size (triangle filter).
///
/// # Panics
/// If the region does not lie inside the image or is empty.
pub fn resized_crop(
    image: &[u8],
    shape: ImageShape,
    top: usize,
    left: usize,
    crop_height: usize,
    crop_width: usize,
) -> Vec<u8> {
    assert!(crop_height > 0 && crop_width > 0, "empty crop region");
    assert!(top + crop_height <= shape.height && left + crop_width <= shape.width);
    let channels = shape.channels;
    let mut region = Vec::with_capacity(crop_height * crop_width * channels);
    for y in top..top + crop_height {
        let start = (y * shape.width + left) * channels;
        region.extend_from_slice(&image[start..start + crop_width * channels]);
    }
    let region_shape = ImageShape::new(crop_height, crop_width, channels);
    resize_pixels(&region, region_shape, shape.height, shape.width)
}

/// torchvision's `RandomResizedCrop`: up to 10 tries at a region of random area and aspect
/// ratio that fits, else the central region clamped to the ratio range.
pub fn random_resized_crop(
    image: &[u8],
    shape: ImageShape,
    params: RandomResizedCrop,
    rng: &mut ChaCha8Rng,
) -> Vec<u8> {
    let (height, width) = (shape.height as f64, shape.width as f64);
    let area = height * width;
    let [scale_min, scale_max] = params.scale.map(f64::from);
    let [ratio_min, ratio_max] = params.ratio.map(f64::from);
    for _ in 0..10 {
        let target_area = area * rng.random_range(scale_min..=scale_max);
        let aspect = rng.random_range(ratio_min.ln()..=ratio_max.ln()).exp();
        let crop_width = (target_area * aspect).sqrt().round() as usize;
        let crop_height = (target_area / aspect).sqrt().round() as usize;
        if (1..=shape.width).contains(&crop_width) && (1..=shape.height).contains(&crop_height) {
            let top = rng.random_range(0..=shape.height - crop_height);
            let left = rng.random_range(0..=shape.width - crop_width);
            return resized_crop(image, shape, top, left, crop_height, crop_width);
        }
    }
    let image_ratio = width / height;
    let (crop_height, crop_width) = if image_ratio < ratio_min {
        ((width / ratio_min).round() as usize, shape.width)
    } else if image_ratio > ratio_max {
        (shape.height, (height * ratio_max).round() as usize)
    } else {
        (shape.height, shape.width)
    };
    let (crop_height, crop_width) = (
        crop_height.clamp(1, shape.height),
        crop_width.clamp(1, shape.width),
    );
    let top = (shape.height - crop_height) / 2;
    let left = (shape.width - crop_width) / 2;
    resized_crop(image, shape, top, left, crop_height, crop_width)
}

/// Rotates counter-clockwise by `degrees` about the image centre, bilinear, zero fill.
pub fn rotate(image: &[u8], shape: ImageShape, degrees: f32) -> Vec<u8> {
    let ImageShape {
        height,
        width,
        channels,
    } = shape;
    let (mut sin, mut cos) = f64::from(degrees).to_radians().sin_cos();
    // Snap the float residue of multiples of 90 degrees so those rotations are exact.
    for value in [&mut sin, &mut cos] {
        if value.abs() < 1e-9 {
            *value = 0.0;
        }
    }
    let center_x = (width as f64 - 1.0) / 2.0;
    let center_y = (height as f64 - 1.0) / 2.0;
    let pixel = |x: i64, y: i64, channel: usize| -> f64 {
        if x < 0 || y < 0 || x >= width as i64 || y >= height as i64 {
            0.0
        } else {
            f64::from(image[(y as usize * width + x as usize) * channels + channel])
        }
    };
    let mut out = vec![0u8; image.len()];
    for y in 0..height {
        for x in 0..width {
            // Inverse map: the output pixel takes its value from the input point rotated back.
            let dx = x as f64 - center_x;
            let dy = y as f64 - center_y;
            let source_x = center_x + dx * cos - dy * sin;
            let source_y = center_y + dx * sin + dy * cos;
            let x0 = source_x.floor();
            let y0 = source_y.floor();
            let (fx, fy) = (source_x - x0, source_y - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            for channel in 0..channels {
                let value = (1.0 - fy)
                    * ((1.0 - fx) * pixel(x0, y0, channel) + fx * pixel(x0 + 1, y0, channel))
                    + fy * ((1.0 - fx) * pixel(x0, y0 + 1, channel)
                        + fx * pixel(x0 + 1, y0 + 1, channel));
                out[(y * width + x) * channels + channel] = value.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// ITU-R BT.601 luma, torchvision's `rgb_to_grayscale` weights.
fn grey_value(rgb: &[u8]) -> f32 {
    0.299 * f32::from(rgb[0]) + 0.587 * f32::from(rgb[1]) + 0.114 * f32::from(rgb[2])
}

fn to_u8(value: f32) -> u8 {
    value.round().clamp(0.0, 255.0) as u8
}

/// Multiplies every value by `factor`.
pub fn adjust_brightness(image: &mut [u8], factor: f32) {
    for value in image.iter_mut() {
        *value = to_u8(f32::from(*value) * factor);
    }
}

/// Blends every value with the image's mean grey level: `factor * v + (1 - factor) * mean`.
pub fn adjust_contrast(image: &mut [u8], shape: ImageShape, factor: f32) {
    if image.is_empty() {
        return;
    }
    let mean = if shape.channels == 3 {
        image.chunks_exact(3).map(grey_value).sum::<f32>() / (image.len() / 3) as f32
    } else {
        image.iter().map(|&value| f32::from(value)).sum::<f32>() / image.len() as f32
    };
    for value in image.iter_mut() {
        *value = to_u8(factor * f32::from(*value) + (1.0 - factor) * mean);
    }
}

/// Blends each RGB pixel with its own grey value: `factor * v + (1 - factor) * grey`.
/// Images without 3 channels are left alone.
pub fn adjust_saturation(image: &mut [u8], shape: ImageShape, factor: f32) {
    if shape.channels != 3 {
        return;
    }
    for rgb in image.chunks_exact_mut(3) {
        let grey = grey_value(rgb);
        for value in rgb.iter_mut() {
            *value = to_u8(factor * f32::from(*value) + (1.0 - factor) * grey);
        }
    }
}

fn color_jitter(image: &mut [u8], shape: ImageShape, jitter: ColorJitter, rng: &mut ChaCha8Rng) {
    let mut factor = |amount: f32| rng.random_range((1.0 - amount).max(0.0)..=1.0 + amount);
    if jitter.brightness > 0.0 {
        adjust_brightness(image, factor(jitter.brightness));
    }
    if jitter.contrast > 0.0 {
        adjust_contrast(image, shape, factor(jitter.contrast));
    }
    if jitter.saturation > 0.0 && shape.channels == 3 {
        adjust_saturation(image, shape, factor(jitter.saturation));
    }
    if jitter.hue > 0.0 && shape.channels == 3 {
        let shift = rng.random_range(-jitter.hue..=jitter.hue);
        adjust_hue(image, shift);
    }
}

/// Rotates the hue of every RGB pixel by `shift` of a full turn (HSV, as torchvision's
/// `adjust_hue`).
pub fn adjust_hue(image: &mut [u8], shift: f32) {
    for rgb in image.chunks_exact_mut(3) {
        let [r, g, b] = [rgb[0], rgb[1], rgb[2]].map(|v| f32::from(v) / 255.0);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let delta = max - min;
        if delta <= 0.0 {
            continue; // grey: no hue to turn
        }
        let hue = if max == r {
            ((g - b) / delta).rem_euclid(6.0)
        } else if max == g {
            (b - r) / delta + 2.0
        } else {
            (r - g) / delta + 4.0
        } / 6.0;
        let hue = (hue + shift).rem_euclid(1.0) * 6.0;
        let (value, chroma) = (max, delta);
        let x = chroma * (1.0 - ((hue % 2.0) - 1.0).abs());
        let (r, g, b) = match hue as u32 {
            0 => (chroma, x, 0.0),
            1 => (x, chroma, 0.0),
            2 => (0.0, chroma, x),
            3 => (0.0, x, chroma),
            4 => (x, 0.0, chroma),
            _ => (chroma, 0.0, x),
        };
        let offset = value - chroma;
        for (out, v) in rgb.iter_mut().zip([r, g, b]) {
            *out = to_u8((v + offset) * 255.0);
        }
    }
}

/// The image blurred by a Gaussian of standard deviation `sigma` pixels (separable, truncated
/// at 3 sigma, edges replicated); `sigma` near 0 returns it unchanged.
pub fn gaussian_blur(image: &[u8], shape: ImageShape, sigma: f32) -> Vec<u8> {
    if sigma < 1e-3 {
        return image.to_vec();
    }
    let radius = (3.0 * sigma).ceil() as isize;
    let weights: Vec<f32> = (-radius..=radius)
        .map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = weights.iter().sum();
    let weights: Vec<f32> = weights.iter().map(|w| w / total).collect();
    let ImageShape {
        height,
        width,
        channels,
    } = shape;
    let pass = |input: &[f32], horizontal: bool| -> Vec<f32> {
        let mut output = vec![0.0f32; input.len()];
        for y in 0..height {
            for x in 0..width {
                for c in 0..channels {
                    let mut sum = 0.0;
                    for (k, w) in weights.iter().enumerate() {
                        let d = k as isize - radius;
                        let (sy, sx) = if horizontal {
                            (y as isize, (x as isize + d).clamp(0, width as isize - 1))
                        } else {
                            ((y as isize + d).clamp(0, height as isize - 1), x as isize)
                        };
                        sum += w * input[(sy as usize * width + sx as usize) * channels + c];
                    }
                    output[(y * width + x) * channels + c] = sum;
                }
            }
        }
        output
    };
    let values: Vec<f32> = image.iter().map(|&v| f32::from(v)).collect();
    let blurred = pass(&pass(&values, true), false);
    blurred.into_iter().map(to_u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A 5x7 RGB image with distinct, position-coded values.
    fn test_image() -> (Vec<u8>, ImageShape) {
        let shape = ImageShape::new(5, 7, 3);
        let pixels = (0..shape.num_values())
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        (pixels, shape)
    }

    fn everything_on() -> AugmentConfig {
        AugmentConfig {
            random_crop: Some(RandomCrop { padding: 2 }),
            random_resized_crop: Some(RandomResizedCrop {
                scale: [0.3, 1.0],
                ..Default::default()
            }),
            horizontal_flip: 0.5,
            vertical_flip: 0.5,
            rotation_degrees: 30.0,
            color_jitter: Some(ColorJitter {
                brightness: 0.3,
                contrast: 0.3,
                saturation: 0.3,
                hue: 0.1,
                probability: 0.8,
            }),
            gaussian_blur: Some(GaussianBlur {
                sigma: [0.1, 2.0],
                probability: 0.5,
            }),
        }
    }

    #[test]
    fn flipping_twice_is_the_identity_and_once_mirrors() {
        let (image, shape) = test_image();
        assert_eq!(
            flip_horizontal(&flip_horizontal(&image, shape), shape),
            image
        );
        assert_eq!(flip_vertical(&flip_vertical(&image, shape), shape), image);
        let flipped = flip_horizontal(&image, shape);
        assert_eq!(
            &flipped[0..3],
            &image[6 * 3..7 * 3],
            "first pixel <- last of row 0"
        );
        let flipped = flip_vertical(&image, shape);
        assert_eq!(
            &flipped[0..21],
            &image[4 * 21..5 * 21],
            "first row <- last row"
        );
    }

    #[test]
    fn crop_without_padding_at_full_size_is_the_identity() {
        let (image, shape) = test_image();
        assert_eq!(pad_and_crop(&image, shape, 0, 0, 0), image);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(random_crop(&image, shape, 0, &mut rng), image);
        assert_eq!(resized_crop(&image, shape, 0, 0, 5, 7), image);
        // Centre window of a padded image is the image itself.
        assert_eq!(pad_and_crop(&image, shape, 3, 3, 3), image);
    }

    #[test]
    fn padded_crop_shifts_and_fills_with_zeros() {
        let shape = ImageShape::new(2, 3, 1);
        let image = vec![1, 2, 3, 4, 5, 6];
        // Window starts one pixel up and one left of the image: zero row, zero column.
        assert_eq!(pad_and_crop(&image, shape, 1, 0, 0), vec![0, 0, 0, 0, 1, 2]);
        // Window one pixel down and right.
        assert_eq!(pad_and_crop(&image, shape, 1, 2, 2), vec![5, 6, 0, 0, 0, 0]);
        // Padding wider than the image: the far corner sees only zeros.
        assert_eq!(pad_and_crop(&image, shape, 4, 0, 0), vec![0; 6]);
    }

    #[test]
    fn rotation_by_zero_is_the_identity_and_by_90_is_exact() {
        let (image, shape) = test_image();
        assert_eq!(rotate(&image, shape, 0.0), image);
        assert_eq!(rotate(&image, shape, 360.0), image);
        let square = ImageShape::new(3, 3, 1);
        let digits: Vec<u8> = (1..=9).collect();
        // Counter-clockwise: the right column becomes the top row.
        assert_eq!(
            rotate(&digits, square, 90.0),
            vec![3, 6, 9, 2, 5, 8, 1, 4, 7]
        );
        assert_eq!(
            rotate(&digits, square, 180.0),
            (1..=9).rev().collect::<Vec<u8>>()
        );
        // A 45-degree turn moves the corners out of the frame: they are zero-filled.
        let turned = rotate(&[200; 49], ImageShape::new(7, 7, 1), 45.0);
        assert_eq!(turned[0], 0);
        assert_eq!(turned[24], 200, "the centre stays");
    }

    #[test]
    fn colour_adjustments_follow_torchvision_formulas() {
        let mut image = vec![100, 50, 0, 200, 150, 100];
        adjust_brightness(&mut image, 1.5);
        assert_eq!(image, vec![150, 75, 0, 255, 225, 150]);
        let mut grey = vec![10, 30];
        adjust_contrast(&mut grey, ImageShape::new(1, 2, 1), 0.5);
        assert_eq!(grey, vec![15, 25], "halfway to the mean 20");
        let mut rgb = vec![255, 0, 0];
        adjust_saturation(&mut rgb, ImageShape::new(1, 1, 3), 0.0);
        assert_eq!(rgb, vec![76, 76, 76], "fully desaturated red is its luma");
        let mut untouched = vec![9, 9];
        adjust_saturation(&mut untouched, ImageShape::new(1, 2, 1), 0.0);
        assert_eq!(untouched, vec![9, 9]);
    }

    #[test]
    fn augmentation_is_deterministic_for_a_seed_and_keeps_the_shape() {
        let (image, shape) = test_image();
        let config = everything_on();
        let run = |seed| config.apply(&image, shape, &mut ChaCha8Rng::seed_from_u64(seed));
        let first = run(11);
        assert_eq!(first.len(), image.len());
        assert_eq!(first, run(11));
        let outputs: Vec<Vec<u8>> = (0..8).map(run).collect();
        assert!(
            outputs.iter().any(|out| *out != first),
            "different seeds differ"
        );
        for size in [28, 128] {
            let config = AugmentConfig::default_for(size, 1);
            let shape = ImageShape::new(size, size, 1);
            let image: Vec<u8> = (0..shape.num_values()).map(|i| (i % 256) as u8).collect();
            let out = config.apply(&image, shape, &mut ChaCha8Rng::seed_from_u64(3));
            assert_eq!(out.len(), shape.num_values());
        }
    }

    #[test]
    fn identity_config_returns_the_input_and_consumes_no_randomness() {
        let (image, shape) = test_image();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        assert!(AugmentConfig::none().is_identity());
        assert_eq!(AugmentConfig::none().apply(&image, shape, &mut rng), image);
        assert_eq!(
            rng.random::<u64>(),
            ChaCha8Rng::seed_from_u64(5).random::<u64>()
        );
    }

    #[test]
    fn default_for_picks_the_documented_recipe() {
        let small = AugmentConfig::default_for(32, 3);
        assert_eq!(small.random_crop, Some(RandomCrop { padding: 4 }));
        assert_eq!(small.horizontal_flip, 0.5);
        assert!(small.random_resized_crop.is_none());
        assert_eq!(
            AugmentConfig::default_for(28, 1).random_crop,
            Some(RandomCrop { padding: 3 })
        );
        let large = AugmentConfig::default_for(128, 3);
        assert!(large.random_crop.is_none());
        assert_eq!(large.random_resized_crop.unwrap().scale, [0.35, 1.0]);
        assert_eq!(large.rotation_degrees, 10.0);
        assert!(large.validate().is_ok() && small.validate().is_ok());
    }

    #[test]
    fn config_round_trips_through_json_and_validation_rejects_bad_values() {
        let config = everything_on();
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<AugmentConfig>(&json).unwrap(),
            config
        );
        let partial: AugmentConfig = serde_json::from_str(r#"{"horizontal_flip": 0.5}"#).unwrap();
        assert_eq!(partial.horizontal_flip, 0.5);
        assert!(partial.random_crop.is_none());
        assert!(serde_json::from_str::<AugmentConfig>(r#"{"hflip": 0.5}"#).is_err());
        for bad in [
            AugmentConfig {
                horizontal_flip: 1.5,
                ..Default::default()
            },
            AugmentConfig {
                rotation_degrees: f32::NAN,
                ..Default::default()
            },
            AugmentConfig {
                random_resized_crop: Some(RandomResizedCrop {
                    scale: [0.0, 1.0],
                    ..Default::default()
                }),
                ..Default::default()
            },
            AugmentConfig {
                color_jitter: Some(ColorJitter {
                    brightness: -1.0,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn random_resized_crop_of_a_constant_image_is_constant() {
        let shape = ImageShape::new(40, 30, 3);
        let image = vec![77u8; shape.num_values()];
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..20 {
            let out = random_resized_crop(&image, shape, RandomResizedCrop::default(), &mut rng);
            assert_eq!(out, image);
        }
    }

    #[test]
    fn hue_turns_red_to_green_and_cyan_and_leaves_grey() {
        let mut image = vec![255, 0, 0, 90, 90, 90];
        adjust_hue(&mut image, 1.0 / 3.0);
        assert_eq!(image, [0, 255, 0, 90, 90, 90]);
        let mut image = vec![255, 0, 0];
        adjust_hue(&mut image, 0.5);
        assert_eq!(image, [0, 255, 255]);
        let mut image = vec![255, 0, 0];
        adjust_hue(&mut image, -1.0 / 6.0);
        assert_eq!(image, [255, 0, 255]);
    }

    #[test]
    fn gaussian_blur_spreads_a_point_by_the_hand_computed_kernel() {
        // sigma 1: weights exp(-d^2 / 2) for d = -3..3 sum to 2.50665; the centre weight is
        // 0.398943 and its neighbour's 0.241971, so a 255 point becomes 255 * 0.398943^2 =
        // 40.58 at the centre and 255 * 0.398943 * 0.241971 = 24.62 beside it.
        let shape = ImageShape::new(9, 9, 1);
        let mut image = vec![0u8; 81];
        image[4 * 9 + 4] = 255;
        let blurred = gaussian_blur(&image, shape, 1.0);
        assert_eq!(blurred[4 * 9 + 4], 41);
        assert_eq!(blurred[4 * 9 + 5], 25);
        assert_eq!(blurred[3 * 9 + 4], 25);
        assert_eq!(blurred[0], 0);
        let constant = vec![77u8; 81];
        assert_eq!(gaussian_blur(&constant, shape, 1.7), constant);
        assert_eq!(gaussian_blur(&image, shape, 0.0), image);
    }

    #[test]
    fn jitter_and_blur_happen_with_their_probability() {
        let (image, shape) = test_image();
        let jitter_only = |probability| AugmentConfig {
            color_jitter: Some(ColorJitter {
                brightness: 0.5,
                probability,
                ..ColorJitter::default()
            }),
            ..AugmentConfig::none()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20 {
            assert_eq!(jitter_only(0.0).apply(&image, shape, &mut rng), image);
        }
        let blur_only = |probability| AugmentConfig {
            gaussian_blur: Some(GaussianBlur {
                sigma: [1.0, 2.0],
                probability,
            }),
            ..AugmentConfig::none()
        };
        let changed = (0..200)
            .filter(|_| blur_only(0.5).apply(&image, shape, &mut rng) != image)
            .count();
        assert!(
            (70..=130).contains(&changed),
            "{changed} of 200 blurred at p 0.5"
        );
        assert!(blur_only(0.0).is_identity() && !blur_only(0.5).is_identity());
        let bad = AugmentConfig {
            color_jitter: Some(ColorJitter {
                hue: 0.7,
                ..ColorJitter::default()
            }),
            ..AugmentConfig::none()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("hue 0.7"));
    }
}

//! Decoding image files (PNG, JPEG, BMP, TIFF via the `image` crate) and bringing pixels to a
//! common size and channel count.
//!
//! Resizing uses the `image` crate's triangle filter: bilinear when enlarging, and with its
//! support widened by the scale factor when shrinking, i.e. antialiased like torchvision's
//! `Resize(antialias=True)` and PIL's bilinear. Grey conversion uses the `image` crate's
//! Rec. 709 luma weights; grey to RGB replicates the value.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, ImageBuffer, ImageDecoder, ImageReader, Pixel, RgbImage};

use super::dataset::ImageShape;
use super::error::DataError;

/// Largest image accepted, in pixels (that of an 8192 x 8192 image): bigger ones are refused
/// from their header, before decoding, so a small file cannot claim gigabytes of pixels.
pub(crate) const MAX_IMAGE_PIXELS: u64 = 8192 * 8192;

/// File extensions (lower case) treated as images in folders.
pub(crate) const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// Whether `path` ends in one of [`IMAGE_EXTENSIONS`], ignoring case.
pub(crate) fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| {
            IMAGE_EXTENSIONS
                .iter()
                .any(|known| extension.eq_ignore_ascii_case(known))
        })
}

/// A decoded image converted to the requested size and channel count.
#[derive(Clone, Debug)]
pub(crate) struct LoadedImage {
    /// H x W x C interleaved pixels after conversion.
    pub pixels: Vec<u8>,
    /// Shape of `pixels`.
    pub shape: ImageShape,
    /// Channels as stored in the file (1 for grey, 3 for colour), before any conversion;
    /// what the mixed-channel check compares.
    pub stored_channels: usize,
}

/// The error for an image file the loader cannot use, which bad-file policies may skip.
fn bad_image(path: &Path, reason: String) -> DataError {
    DataError::BadImage {
        path: path.to_path_buf(),
        reason,
    }
}

/// Reads and decodes one image file, then converts it (see [`finish_image`]).
///
/// Every failure is a [`DataError::BadImage`] naming the file, so the caller's bad-file policy
/// can skip it.
pub(crate) fn decode_image_file(
    path: &Path,
    size: Option<usize>,
    channels: Option<usize>,
) -> Result<LoadedImage, DataError> {
    let bad = |reason: String| bad_image(path, reason);
    let bytes = std::fs::read(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            bad("file not found".to_string())
        } else {
            bad(format!("cannot read: {error}"))
        }
    })?;
    decode_image_bytes(&bytes, path, size, channels)
}

/// Decodes an image file's contents, then converts it (see [`finish_image`]); `path` only names
/// the file in errors. Split from [`decode_image_file`] so the decoder can be fuzzed in memory.
pub(crate) fn decode_image_bytes(
    bytes: &[u8],
    path: &Path,
    size: Option<usize>,
    channels: Option<usize>,
) -> Result<LoadedImage, DataError> {
    let bad = |reason: String| bad_image(path, reason);
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|error| bad(format!("cannot read: {error}")))?;
    let Some(format) = reader.format() else {
        return Err(bad(
            "not a PNG, JPEG, BMP or TIFF image (unrecognised file signature)".to_string(),
        ));
    };
    let corrupt =
        |error: image::ImageError| bad(format!("corrupt or unsupported {format:?} image: {error}"));
    let decoder = reader.into_decoder().map_err(corrupt)?;
    // The header's dimensions are checked before anything is decoded: a few hundred bytes of
    // JPEG can declare 16643 x 9988 pixels, which took over 10 s and 800 MB to decode and
    // convert (found by the `image` fuzz target).
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(bad(format!(
            "image is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS} pixels (8192 x 8192) \
             are accepted; downscale it first"
        )));
    }
    // zune-jpeg 0.5.15 (the image crate's JPEG decoder) panics on some malformed JPEGs (an
    // unwrap in its AVX2 IDCT, found by the `image` fuzz target); nothing visible in the
    // header predicts it, so the panic is caught here and reported as a bad file.
    let image = catch_unwind(AssertUnwindSafe(|| DynamicImage::from_decoder(decoder)))
        .map_err(|_| {
            bad(format!(
                "corrupt {format:?} image (the decoder failed on malformed data)"
            ))
        })?
        .map_err(corrupt)?;
    if format == image::ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        // The JPEG decoder fills a cut-off scan with grey instead of failing; a truncated file
        // would silently become a half-grey training image.
        return Err(bad(
            "truncated JPEG (no end-of-image marker); re-copy or re-export the file".to_string(),
        ));
    }
    finish_image(image, size, channels).map_err(bad)
}

/// Whether a JPEG stream carries its end-of-image marker (FF D9) near its end.
///
/// Some writers append padding or metadata after the marker, so the tail is searched rather
/// than only the last two bytes.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    const TAIL: usize = 4096;
    let tail = &bytes[bytes.len().saturating_sub(TAIL)..];
    tail.windows(2).any(|pair| pair == [0xFF, 0xD9])
}

/// Converts a decoded image to `channels` (1 or 3; `None` keeps grey as 1 and colour as 3,
/// dropping alpha) and resizes it to `size x size` when asked.
///
/// The error is a reason string; the caller knows which file it concerns.
pub(crate) fn finish_image(
    image: DynamicImage,
    size: Option<usize>,
    channels: Option<usize>,
) -> Result<LoadedImage, String> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    if width == 0 || height == 0 {
        return Err(format!("image has zero width or height ({width}x{height})"));
    }
    let non_finite = match &image {
        DynamicImage::ImageRgb32F(buffer) => buffer.iter().any(|value| !value.is_finite()),
        DynamicImage::ImageRgba32F(buffer) => buffer.iter().any(|value| !value.is_finite()),
        _ => false,
    };
    if non_finite {
        // Converting to 8 bits would silently turn NaN into black and infinity into white.
        return Err(
            "floating-point image contains NaN or infinite pixel values; fix or drop the file"
                .to_string(),
        );
    }
    let stored_channels = if image.color().has_color() { 3 } else { 1 };
    let target_channels = channels.unwrap_or(stored_channels);
    let (out_height, out_width) = size.map_or((height, width), |size| (size, size));
    let pixels = match target_channels {
        1 => resize_buffer(image.into_luma8(), out_height, out_width).into_raw(),
        3 => resize_buffer(image.into_rgb8(), out_height, out_width).into_raw(),
        other => return Err(format!("cannot convert to {other} channels (use 1 or 3)")),
    };
    Ok(LoadedImage {
        pixels,
        shape: ImageShape::new(out_height, out_width, target_channels),
        stored_channels,
    })
}

fn resize_buffer<P: Pixel<Subpixel = u8> + 'static>(
    buffer: ImageBuffer<P, Vec<u8>>,
    height: usize,
    width: usize,
) -> ImageBuffer<P, Vec<u8>> {
    if buffer.dimensions() == (width as u32, height as u32) {
        buffer
    } else {
        imageops::resize(&buffer, width as u32, height as u32, FilterType::Triangle)
    }
}

/// Converts raw H x W x C pixels (C = 1 or 3, e.g. from an `.npz` or CIFAR file) exactly as a
/// decoded file would be converted; returns the pixels unchanged when nothing is asked.
///
/// Returns `None` if `pixels` does not match `shape` or `shape.channels` is not 1 or 3.
pub(crate) fn convert_raw(
    pixels: Vec<u8>,
    shape: ImageShape,
    size: Option<usize>,
    channels: Option<usize>,
) -> Option<(Vec<u8>, ImageShape)> {
    let same_size = size.is_none_or(|size| size == shape.height && size == shape.width);
    let same_channels = channels.is_none_or(|channels| channels == shape.channels);
    if same_size && same_channels {
        return (pixels.len() == shape.num_values()).then_some((pixels, shape));
    }
    let (width, height) = (shape.width as u32, shape.height as u32);
    let image = match shape.channels {
        1 => DynamicImage::ImageLuma8(GrayImage::from_raw(width, height, pixels)?),
        3 => DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, pixels)?),
        _ => return None,
    };
    let loaded = finish_image(image, size, channels).ok()?;
    Some((loaded.pixels, loaded.shape))
}

/// Resizes H x W x C pixels to `out_height x out_width` with the triangle filter.
///
/// Grey and RGB images go through the `image` crate directly; other channel counts are resized
/// plane by plane so any C works.
pub(crate) fn resize_pixels(
    pixels: &[u8],
    shape: ImageShape,
    out_height: usize,
    out_width: usize,
) -> Vec<u8> {
    let (width, height) = (shape.width as u32, shape.height as u32);
    let resize = |buffer| resize_buffer(buffer, out_height, out_width).into_raw();
    match shape.channels {
        1 => {
            if let Some(buffer) = GrayImage::from_raw(width, height, pixels.to_vec()) {
                return resize(buffer);
            }
        }
        3 => {
            if let Some(buffer) = RgbImage::from_raw(width, height, pixels.to_vec()) {
                return resize_buffer(buffer, out_height, out_width).into_raw();
            }
        }
        _ => {}
    }
    let channels = shape.channels;
    let mut out = vec![0u8; out_height * out_width * channels];
    for channel in 0..channels {
        let plane: Vec<u8> = pixels
            .iter()
            .skip(channel)
            .step_by(channels)
            .copied()
            .collect();
        let Some(buffer) = GrayImage::from_raw(width, height, plane) else {
            continue;
        };
        for (index, value) in resize(buffer).into_iter().enumerate() {
            out[index * channels + channel] = value;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `image` fuzz target: this JPEG makes zune-jpeg 0.5.15 panic (an unwrap in
    /// its AVX2 IDCT, on CPUs with AVX2); it must come back as a bad file, not a crash.
    #[test]
    fn jpeg_that_panics_the_decoder_is_a_bad_image() {
        let path = Path::new("tests/fixtures/fuzz/jpeg_zune_idct_panic.jpg");
        let bytes = std::fs::read(path).unwrap();
        for (size, channels) in [(None, Some(3)), (Some(8), Some(1))] {
            // A decoder that no longer panics may decode it: then it must be a whole image of
            // the asked-for shape.
            match decode_image_bytes(&bytes, path, size, channels) {
                Err(error) => assert!(matches!(error, DataError::BadImage { .. }), "{error}"),
                Ok(image) => {
                    let shape = image.shape;
                    assert_eq!(Some(shape.channels), channels);
                    if let Some(size) = size {
                        assert_eq!([shape.height, shape.width], [size, size]);
                    }
                    assert!(shape.height > 0 && shape.width > 0);
                    assert_eq!(
                        image.pixels.len(),
                        shape.height * shape.width * shape.channels
                    );
                }
            }
        }
    }

    /// Found by the `image` fuzz target: a 923-byte JPEG declaring 16643 x 9988 pixels took
    /// over 10 s and 800 MB to decode; it is refused from its header.
    #[test]
    fn huge_declared_dimensions_are_refused_before_decoding() {
        let path = Path::new("tests/fixtures/fuzz/jpeg_16643x9988_in_923_bytes.jpg");
        let bytes = std::fs::read(path).unwrap();
        let start = std::time::Instant::now();
        let error = decode_image_bytes(&bytes, path, None, Some(3)).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("jpeg_16643x9988_in_923_bytes.jpg"),
            "{message}"
        );
        assert!(message.contains("9988x16643 pixels"), "{message}");
        assert!(start.elapsed().as_secs() < 2);
    }

    #[test]
    fn float_images_with_nan_or_infinity_are_refused() {
        let mut buffer = image::Rgb32FImage::from_pixel(4, 4, image::Rgb([0.25, 0.5, 0.75]));
        let clean = finish_image(DynamicImage::ImageRgb32F(buffer.clone()), None, None).unwrap();
        assert_eq!(&clean.pixels[..3], &[64, 128, 191]);
        buffer.put_pixel(2, 1, image::Rgb([0.1, f32::NAN, 0.1]));
        let error = finish_image(DynamicImage::ImageRgb32F(buffer.clone()), None, None);
        assert!(error.unwrap_err().contains("NaN"));
        buffer.put_pixel(2, 1, image::Rgb([0.1, 0.1, f32::INFINITY]));
        assert!(finish_image(DynamicImage::ImageRgb32F(buffer), Some(8), Some(1)).is_err());
    }

    #[test]
    fn image_extensions_ignore_case() {
        assert!(has_image_extension(Path::new("a/b.JPG")));
        assert!(has_image_extension(Path::new("b.tiff")));
        assert!(!has_image_extension(Path::new("b.txt")));
        assert!(!has_image_extension(Path::new("jpg")));
    }

    #[test]
    fn convert_raw_replicates_grey_and_resizes() {
        let grey = vec![10, 20, 30, 40];
        let (rgb, shape) =
            convert_raw(grey.clone(), ImageShape::new(2, 2, 1), None, Some(3)).unwrap();
        assert_eq!(shape, ImageShape::new(2, 2, 3));
        assert_eq!(rgb, vec![10, 10, 10, 20, 20, 20, 30, 30, 30, 40, 40, 40]);
        let (same, _) =
            convert_raw(grey.clone(), ImageShape::new(2, 2, 1), Some(2), Some(1)).unwrap();
        assert_eq!(same, grey);
        let (big, shape) =
            convert_raw(vec![7; 4], ImageShape::new(2, 2, 1), Some(5), None).unwrap();
        assert_eq!(shape, ImageShape::new(5, 5, 1));
        assert_eq!(
            big,
            vec![7; 25],
            "a constant image stays constant when resized"
        );
        assert!(convert_raw(vec![1, 2, 3], ImageShape::new(2, 2, 1), None, None).is_none());
    }

    #[test]
    fn resize_pixels_handles_any_channel_count() {
        let two_channel = vec![5u8, 9, 5, 9, 5, 9, 5, 9];
        let out = resize_pixels(&two_channel, ImageShape::new(2, 2, 2), 3, 3);
        assert_eq!(out, [5, 9].repeat(9));
        let rgb = [1u8, 2, 3].repeat(4);
        assert_eq!(
            resize_pixels(&rgb, ImageShape::new(2, 2, 3), 1, 1),
            vec![1, 2, 3]
        );
    }
}

//! Explanation figures: a heatmap upsampled to the image, blended over it in colour, a colour
//! bar beside it with its end values, a title above, written as PNG.
//!
//! The blend follows the usual Grad-CAM figure (Selvaraju et al., ICCV 2017; the reference
//! implementations mix the colour-mapped cam and the image half and half).

use std::path::Path;

use image::imageops::{self, FilterType};
use image::{ImageFormat, Rgb, RgbImage};
use serde::Serialize;

use super::text::{draw_text, line_height, text_width};
use super::{Colormap, ExplainError, Heatmap};

/// Weight of the heatmap's colour in the blend (the image gets the rest).
pub const OVERLAY_ALPHA: f32 = 0.5;
/// Figures of smaller images are enlarged until their longer side is this long, so that 28 px
/// MedMNIST images stay readable.
pub const DISPLAY_MIN_SIDE: u32 = 256;
/// Figures of larger images are shrunk until their longer side is this long.
pub const DISPLAY_MAX_SIDE: u32 = 1024;

const MARGIN: u32 = 8;
const FONT_SIZE: f32 = 14.0;
const TITLE_LINE_GAP: u32 = 2;
const BAR_GAP: u32 = 8;
const BAR_WIDTH: u32 = 16;
const LABEL_GAP: u32 = 4;
const BACKGROUND: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [0, 0, 0];

/// A rectangle of a figure, in pixels from the top-left corner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// The labels at the ends of a colour bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColorBar {
    /// Label at the bottom (the value shown as the colour map's 0).
    pub low: String,
    /// Label at the top (the value shown as the colour map's 1).
    pub high: String,
}

/// A rendered figure and where its parts are, so that tools can crop them.
#[derive(Debug, Clone)]
pub struct Panel {
    /// The whole figure.
    pub image: RgbImage,
    /// Where the blended image is.
    pub overlay: Rect,
    /// Where the colour bar's gradient is (top row = colour of 1, bottom row = colour of 0).
    pub colorbar: Rect,
}

/// Size at which an image of `width x height` is shown: the same aspect ratio, the longer side
/// brought into [`DISPLAY_MIN_SIDE`]..=[`DISPLAY_MAX_SIDE`].
pub fn display_size(width: u32, height: u32) -> (u32, u32) {
    let longer = width.max(height).max(1) as f64;
    let scale = if longer < DISPLAY_MIN_SIDE as f64 {
        DISPLAY_MIN_SIDE as f64 / longer
    } else if longer > DISPLAY_MAX_SIDE as f64 {
        DISPLAY_MAX_SIDE as f64 / longer
    } else {
        1.0
    };
    let side = |value: u32| ((value as f64 * scale).round() as u32).max(1);
    (side(width), side(height))
}

/// `image` resampled to `width x height` with the triangle filter (bilinear, antialiased when
/// shrinking), as the data loaders resize.
pub fn resize_rgb(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if image.dimensions() == (width, height) {
        image.clone()
    } else {
        imageops::resize(image, width, height, FilterType::Triangle)
    }
}

/// `image` with `heat` (values in `[0, 1]`, the image's size) drawn over it in `colormap`,
/// the colour weighted by `alpha`.
pub fn blend(
    image: &RgbImage,
    heat: &Heatmap,
    colormap: Colormap,
    alpha: f32,
) -> Result<RgbImage, ExplainError> {
    let (width, height) = image.dimensions();
    if (heat.width(), heat.height()) != (width as usize, height as usize) {
        return Err(ExplainError::Shape(format!(
            "heatmap is {}x{} but the image is {width}x{height} (width x height)",
            heat.width(),
            heat.height()
        )));
    }
    let alpha = alpha.clamp(0.0, 1.0);
    let mut out = image.clone();
    for (x, y, pixel) in out.enumerate_pixels_mut() {
        let color = colormap.rgb(heat.get(y as usize, x as usize));
        for (channel, &tint) in pixel.0.iter_mut().zip(&color) {
            *channel = (*channel as f32 * (1.0 - alpha) + tint as f32 * alpha).round() as u8;
        }
    }
    Ok(out)
}

/// The figure for one map: title lines on top, `image` with `heat` (values in `[0, 1]`, any
/// size; upsampled bilinearly to the image) blended over it, and a colour bar labelled with
/// `bar` on the right.
pub fn render_panel(
    image: &RgbImage,
    heat: &Heatmap,
    colormap: Colormap,
    title: &[String],
    bar: &ColorBar,
) -> Result<Panel, ExplainError> {
    let (width, height) = image.dimensions();
    let heat = heat.resize_bilinear(height as usize, width as usize);
    let blended = blend(image, &heat, colormap, OVERLAY_ALPHA)?;

    let line = line_height(FONT_SIZE);
    let title_height = title.len() as u32 * (line + TITLE_LINE_GAP);
    let top = MARGIN + title_height + if title.is_empty() { 0 } else { MARGIN };
    let overlay = Rect {
        x: MARGIN,
        y: top,
        width,
        height,
    };
    let colorbar = Rect {
        x: overlay.x + width + BAR_GAP,
        y: top,
        width: BAR_WIDTH,
        height,
    };
    let label_x = colorbar.x + BAR_WIDTH + LABEL_GAP;
    let label_width = text_width(&bar.low, FONT_SIZE).max(text_width(&bar.high, FONT_SIZE));
    let title_width = title
        .iter()
        .map(|text| text_width(text, FONT_SIZE))
        .max()
        .unwrap_or(0);
    let total_width = (label_x + label_width + MARGIN).max(MARGIN + title_width + MARGIN);
    let total_height = top + height + MARGIN;

    let mut figure = RgbImage::from_pixel(total_width, total_height, Rgb(BACKGROUND));
    for (row, text) in title.iter().enumerate() {
        let y = MARGIN + row as u32 * (line + TITLE_LINE_GAP);
        draw_text(&mut figure, MARGIN as i32, y as i32, text, FONT_SIZE, INK);
    }
    imageops::replace(&mut figure, &blended, overlay.x as i64, overlay.y as i64);
    for row in 0..height {
        // Top row is 1, bottom row 0, so the bar reads like a y axis.
        let value = if height > 1 {
            1.0 - row as f32 / (height - 1) as f32
        } else {
            1.0
        };
        let color = Rgb(colormap.rgb(value));
        for column in 0..BAR_WIDTH {
            figure.put_pixel(colorbar.x + column, colorbar.y + row, color);
        }
    }
    draw_bar_frame(&mut figure, colorbar);
    draw_text(
        &mut figure,
        label_x as i32,
        top as i32,
        &bar.high,
        FONT_SIZE,
        INK,
    );
    let low_y = (top + height).saturating_sub(line);
    draw_text(
        &mut figure,
        label_x as i32,
        low_y as i32,
        &bar.low,
        FONT_SIZE,
        INK,
    );
    Ok(Panel {
        image: figure,
        overlay,
        colorbar,
    })
}

/// A one-pixel frame just outside the bar, so that its pale end stays visible on white while
/// the rectangle itself holds only the gradient.
fn draw_bar_frame(figure: &mut RgbImage, bar: Rect) {
    let (left, top) = (bar.x as i64 - 1, bar.y as i64 - 1);
    let (right, bottom) = ((bar.x + bar.width) as i64, (bar.y + bar.height) as i64);
    let mut put = |x: i64, y: i64| {
        if x >= 0 && y >= 0 && (x as u32) < figure.width() && (y as u32) < figure.height() {
            figure.put_pixel(x as u32, y as u32, Rgb(INK));
        }
    };
    for x in left..=right {
        put(x, top);
        put(x, bottom);
    }
    for y in top..=bottom {
        put(left, y);
        put(right, y);
    }
}

/// Writes `image` to `path` as PNG.
pub fn save_png(image: &RgbImage, path: &Path) -> Result<(), ExplainError> {
    image
        .save_with_format(path, ImageFormat::Png)
        .map_err(|error| ExplainError::Write {
            path: path.to_path_buf(),
            message: error.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(width: u32, height: u32, value: u8) -> RgbImage {
        RgbImage::from_pixel(width, height, Rgb([value; 3]))
    }

    #[test]
    fn display_size_keeps_the_aspect_ratio() {
        assert_eq!(display_size(28, 28), (256, 256));
        assert_eq!(display_size(128, 80), (256, 160));
        assert_eq!(display_size(360, 363), (360, 363));
        assert_eq!(display_size(4096, 2048), (1024, 512));
    }

    #[test]
    fn blend_mixes_image_and_colour_half_and_half() {
        let image = grey(3, 2, 100);
        let heat = Heatmap::new(2, 3, vec![1.0, 0.0, 0.5, 1.0, 1.0, 1.0]).unwrap();
        let out = blend(&image, &heat, Colormap::Jet, 0.5).unwrap();
        assert_eq!(out.dimensions(), (3, 2));
        // jet(1) = (128, 0, 0): (100 + 128) / 2 = 114, 100 / 2 = 50.
        assert_eq!(out.get_pixel(0, 0).0, [114, 50, 50]);
        // jet(0) = (0, 0, 128).
        assert_eq!(out.get_pixel(1, 0).0, [50, 50, 114]);
        // jet(0.5) = (128, 255, 128): 177.5 rounds to 178.
        assert_eq!(out.get_pixel(2, 0).0, [114, 178, 114]);
        let wrong = Heatmap::new(3, 2, vec![0.0; 6]).unwrap();
        assert!(blend(&image, &wrong, Colormap::Jet, 0.5).is_err());
    }

    #[test]
    fn panel_holds_overlay_and_colour_bar_where_it_says() {
        let image = grey(40, 30, 200);
        // A 2x2 map: left column hot, right column cold.
        let heat = Heatmap::new(2, 2, vec![1.0, 0.0, 1.0, 0.0]).unwrap();
        let bar = ColorBar {
            low: "0".into(),
            high: "1".into(),
        };
        let title = vec!["Grad-CAM".to_string(), "platelet p=0.873".to_string()];
        let panel = render_panel(&image, &heat, Colormap::Viridis, &title, &bar).unwrap();
        let (width, height) = panel.image.dimensions();
        assert_eq!((panel.overlay.width, panel.overlay.height), (40, 30));
        assert!(
            panel.overlay.y > 2 * line_height(FONT_SIZE),
            "room for the title"
        );
        assert_eq!(height, panel.overlay.y + 30 + MARGIN);
        assert!(panel.colorbar.x >= panel.overlay.x + 40);
        assert!(width > panel.colorbar.x + panel.colorbar.width + text_width("1", 14.0));
        assert!(width >= text_width("platelet p=0.873", 14.0));
        // The bar runs from the colour of 1 at the top to the colour of 0 at the bottom.
        let bar_pixel = |row| {
            panel
                .image
                .get_pixel(panel.colorbar.x + 3, panel.colorbar.y + row)
                .0
        };
        assert_eq!(bar_pixel(0), Colormap::Viridis.rgb(1.0));
        assert_eq!(bar_pixel(29), Colormap::Viridis.rgb(0.0));
        // The overlay's left edge is the hot end blended over grey 200, the right edge cold.
        let overlay_pixel = |x| {
            panel
                .image
                .get_pixel(panel.overlay.x + x, panel.overlay.y)
                .0
        };
        let hot = Colormap::Viridis.rgb(1.0);
        let expected = hot.map(|c| ((200.0 + c as f32) / 2.0).round() as u8);
        assert_eq!(overlay_pixel(0), expected);
        let cold = Colormap::Viridis.rgb(0.0);
        let expected = cold.map(|c| ((200.0 + c as f32) / 2.0).round() as u8);
        assert_eq!(overlay_pixel(39), expected);
    }

    #[test]
    fn png_is_written_and_reads_back_identically() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("figure.png");
        let heat = Heatmap::new(1, 2, vec![0.0, 1.0]).unwrap();
        let bar = ColorBar {
            low: "0.25".into(),
            high: "0.75".into(),
        };
        let panel = render_panel(&grey(50, 20, 10), &heat, Colormap::Jet, &[], &bar).unwrap();
        save_png(&panel.image, &path).unwrap();
        let back = image::open(&path).unwrap().into_rgb8();
        assert_eq!(back.dimensions(), panel.image.dimensions());
        assert_eq!(back, panel.image);
        let error = save_png(&panel.image, &folder.path().join("missing/figure.png"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing"), "{error}");
    }
}

//! Text on explanation figures (colour-bar labels, class and probability) with the `ab_glyph`
//! rasteriser and a bundled DejaVu Sans (`assets/fonts/`, Bitstream Vera licence), so figures
//! look the same on every machine whatever fonts it has installed.

use ab_glyph::{Font, FontRef, GlyphId, PxScale, ScaleFont, point};
use image::RgbImage;

/// DejaVu Sans 2.37, unmodified.
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn font() -> FontRef<'static> {
    FontRef::try_from_slice(FONT).expect("the bundled DejaVu Sans parses")
}

/// Lays `text` out on one line at `size` px and calls `place` for each glyph with its pen
/// position; returns the line's advance width.
fn layout(text: &str, size: f32, mut place: impl FnMut(GlyphId, f32)) -> f32 {
    let font = font();
    let scaled = font.as_scaled(PxScale::from(size));
    let mut caret = 0.0;
    let mut previous: Option<GlyphId> = None;
    for character in text.chars() {
        let id = scaled.glyph_id(character);
        if let Some(previous) = previous {
            caret += scaled.kern(previous, id);
        }
        place(id, caret);
        caret += scaled.h_advance(id);
        previous = Some(id);
    }
    caret
}

/// Width in pixels of `text` on one line at `size` px (rounded up).
pub fn text_width(text: &str, size: f32) -> u32 {
    layout(text, size, |_, _| {}).ceil().max(0.0) as u32
}

/// Height in pixels of one line at `size` px: ascent plus descent.
pub fn line_height(size: f32) -> u32 {
    let font = font();
    let scaled = font.as_scaled(PxScale::from(size));
    (scaled.ascent() - scaled.descent()).ceil() as u32
}

/// Draws `text` in `color` with its line's top-left corner at `(x, y)`, anti-aliased over
/// what is there; what falls outside the image is clipped.
pub fn draw_text(image: &mut RgbImage, x: i32, y: i32, text: &str, size: f32, color: [u8; 3]) {
    let font = font();
    let ascent = font.as_scaled(PxScale::from(size)).ascent();
    let (width, height) = (image.width() as i32, image.height() as i32);
    layout(text, size, |id, caret| {
        let glyph = id.with_scale_and_position(size, point(x as f32 + caret, y as f32 + ascent));
        let Some(outline) = font.outline_glyph(glyph) else {
            return;
        };
        let bounds = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            let px = bounds.min.x as i32 + gx as i32;
            let py = bounds.min.y as i32 + gy as i32;
            if px < 0 || py < 0 || px >= width || py >= height {
                return;
            }
            let pixel = image.get_pixel_mut(px as u32, py as u32);
            let coverage = coverage.clamp(0.0, 1.0);
            for (channel, &ink) in pixel.0.iter_mut().zip(&color) {
                *channel =
                    (*channel as f32 * (1.0 - coverage) + ink as f32 * coverage).round() as u8;
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn text_has_width_and_draws_ink_inside_its_box() {
        let size = 14.0;
        let width = text_width("p=0.873", size);
        assert!(
            (30..=80).contains(&width),
            "width {width} for 7 characters at 14 px"
        );
        assert!(text_width("", size) == 0);
        assert!(text_width("WWWW", size) > text_width("iiii", size));
        let height = line_height(size);
        assert!((14..=20).contains(&height), "{height}");

        let mut image = RgbImage::from_pixel(100, 30, Rgb([255, 255, 255]));
        draw_text(&mut image, 5, 5, "10", size, [0, 0, 0]);
        let dark: Vec<(u32, u32)> = image
            .enumerate_pixels()
            .filter(|(_, _, pixel)| pixel.0[0] < 128)
            .map(|(x, y, _)| (x, y))
            .collect();
        assert!(dark.len() > 10, "hardly any ink: {}", dark.len());
        let right = 5 + text_width("10", size) + 1;
        for &(x, y) in &dark {
            assert!(
                (5..=right).contains(&x) && (5..5 + height + 1).contains(&y),
                "ink at ({x}, {y}) outside the text box"
            );
        }
        // Drawing past the edge clips instead of panicking.
        draw_text(&mut image, 95, 25, "clipped", size, [0, 0, 0]);
        draw_text(&mut image, -50, -50, "clipped", size, [0, 0, 0]);
    }
}

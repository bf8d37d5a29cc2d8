//! Colour maps that turn a value in `[0, 1]` into a colour, for heatmap overlays.
//!
//! Jet is MATLAB's piecewise-linear map, the one the Grad-CAM paper (Selvaraju et al.,
//! ICCV 2017) and most attention-map figures use; viridis (Smith and van der Walt, matplotlib,
//! CC0) is the perceptually uniform alternative whose lightness grows monotonically, so that
//! its figures survive grey-scale printing and colour-blind readers.

use std::fmt;
use std::str::FromStr;

/// A colour map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Colormap {
    /// Dark blue, blue, cyan, yellow, red, dark red.
    #[default]
    Jet,
    /// Dark purple, blue, green, yellow; lightness increases monotonically.
    Viridis,
}

/// matplotlib's viridis at entries 0, 32, ..., 224 and 255 of its 256-entry table; linear
/// interpolation between them stays within about 1/100 of the full table.
const VIRIDIS: [[f32; 3]; 9] = [
    [0.267004, 0.004874, 0.329415],
    [0.278826, 0.175490, 0.483397],
    [0.229739, 0.322361, 0.545706],
    [0.172719, 0.448791, 0.557885],
    [0.127568, 0.566949, 0.550556],
    [0.157851, 0.683765, 0.501686],
    [0.369214, 0.788888, 0.382914],
    [0.678489, 0.863742, 0.189503],
    [0.993248, 0.906157, 0.143936],
];

/// Table position of each [`VIRIDIS`] entry, as a fraction of the full table.
const VIRIDIS_AT: [f32; 9] = [
    0.0,
    32.0 / 255.0,
    64.0 / 255.0,
    96.0 / 255.0,
    128.0 / 255.0,
    160.0 / 255.0,
    192.0 / 255.0,
    224.0 / 255.0,
    1.0,
];

impl Colormap {
    /// Every colour map, in the order the command line lists them.
    pub const ALL: &'static [Colormap] = &[Colormap::Jet, Colormap::Viridis];

    /// The map's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Colormap::Jet => "jet",
            Colormap::Viridis => "viridis",
        }
    }

    /// The colour of `value`, clamped to `[0, 1]` (NaN counts as 0).
    pub fn rgb(self, value: f32) -> [u8; 3] {
        let t = if value.is_nan() {
            0.0
        } else {
            value.clamp(0.0, 1.0)
        };
        let [r, g, b] = match self {
            Colormap::Jet => {
                let ramp = |centre: f32| (1.5 - (4.0 * t - centre).abs()).clamp(0.0, 1.0);
                [ramp(3.0), ramp(2.0), ramp(1.0)]
            }
            Colormap::Viridis => viridis(t),
        };
        [to_byte(r), to_byte(g), to_byte(b)]
    }
}

fn viridis(t: f32) -> [f32; 3] {
    let segment = VIRIDIS_AT
        .windows(2)
        .position(|pair| t <= pair[1])
        .unwrap_or(VIRIDIS_AT.len() - 2);
    let (start, end) = (VIRIDIS_AT[segment], VIRIDIS_AT[segment + 1]);
    let f = ((t - start) / (end - start)).clamp(0.0, 1.0);
    let (a, b) = (VIRIDIS[segment], VIRIDIS[segment + 1]);
    [0, 1, 2].map(|channel| a[channel] + (b[channel] - a[channel]) * f)
}

fn to_byte(value: f32) -> u8 {
    (value * 255.0).round().clamp(0.0, 255.0) as u8
}

impl fmt::Display for Colormap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Colormap {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let wanted = name.trim().to_ascii_lowercase();
        Colormap::ALL
            .iter()
            .copied()
            .find(|map| map.name() == wanted)
            .ok_or_else(|| format!("unknown colour map '{name}'; valid: jet, viridis"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rec. 709 luma of an sRGB colour, a proxy for perceived lightness.
    fn luma([r, g, b]: [u8; 3]) -> f32 {
        0.2126 * r as f32 + 0.7152 * g as f32 + 0.0722 * b as f32
    }

    #[test]
    fn jet_has_matlab_values() {
        assert_eq!(Colormap::Jet.rgb(0.0), [0, 0, 128]);
        assert_eq!(Colormap::Jet.rgb(0.25), [0, 128, 255]);
        assert_eq!(Colormap::Jet.rgb(0.5), [128, 255, 128]);
        assert_eq!(Colormap::Jet.rgb(0.75), [255, 128, 0]);
        assert_eq!(Colormap::Jet.rgb(1.0), [128, 0, 0]);
        // Out-of-range values are clamped, NaN is the low end.
        assert_eq!(Colormap::Jet.rgb(-3.0), [0, 0, 128]);
        assert_eq!(Colormap::Jet.rgb(7.0), [128, 0, 0]);
        assert_eq!(Colormap::Jet.rgb(f32::NAN), [0, 0, 128]);
    }

    #[test]
    fn viridis_has_matplotlib_endpoints_and_monotonic_lightness() {
        assert_eq!(Colormap::Viridis.rgb(0.0), [68, 1, 84]);
        assert_eq!(Colormap::Viridis.rgb(1.0), [253, 231, 37]);
        // Entry 128 of the table.
        assert_eq!(Colormap::Viridis.rgb(128.0 / 255.0), [33, 145, 140]);
        // Steps of 1/50 keep every step's lightness gain above the rounding to whole bytes.
        let lightness: Vec<f32> = (0..=50)
            .map(|i| luma(Colormap::Viridis.rgb(i as f32 / 50.0)))
            .collect();
        for pair in lightness.windows(2) {
            assert!(pair[1] >= pair[0], "lightness drops: {pair:?}");
        }
        assert!(lightness[50] - lightness[0] > 180.0);
    }

    #[test]
    fn names_round_trip() {
        for map in Colormap::ALL {
            assert_eq!(map.name().parse::<Colormap>().unwrap(), *map);
        }
        assert!("hot".parse::<Colormap>().unwrap_err().contains("'hot'"));
    }
}

//! The plots of a report, drawn with `plotters`' SVG backend into strings that are inlined in
//! the page: line charts (training curves, ROC curves) and the confusion-matrix heat map.
//!
//! SVG text is left to the browser's fonts (plotters only estimates text extents for layout),
//! so no font file is needed, and `plotters` escapes every label it writes.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::ReportError;

/// Width and height of a line chart, pixels.
const LINE_CHART_SIZE: (u32, u32) = (560, 350);

/// Margin around a line chart, and the room of its caption and axis labels, pixels.
const MARGIN: u32 = 14;
const CAPTION: u32 = 30;
const X_LABEL_AREA: u32 = 44;
const Y_LABEL_AREA: u32 = 60;

/// Size of a line chart's plotting area, pixels (the chart less margins, caption and labels).
const PLOT_AREA: (f64, f64) = (
    (LINE_CHART_SIZE.0 - 2 * MARGIN - Y_LABEL_AREA) as f64,
    (LINE_CHART_SIZE.1 - 2 * MARGIN - CAPTION - X_LABEL_AREA) as f64,
);

/// Legend font size, pixels.
const LEGEND_FONT: u32 = 15;

/// Tableau 10: distinguishable line colours, in order of use.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Colour of reference lines (chance diagonal, best-epoch marker).
const REFERENCE: RGBColor = RGBColor(150, 150, 150);

/// The line colour of the `index`-th series.
pub(crate) fn series_colour(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// One named line.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    /// Legend text.
    pub name: String,
    /// Points in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// The corner the legend goes to when the lines leave it free (else another free place is
/// taken, or room is made above the lines).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Legend {
    UpperRight,
    LowerRight,
}

/// A line chart to draw.
#[derive(Debug, Clone)]
pub(crate) struct LineChart {
    /// Title above the plot.
    pub title: String,
    /// Description of the x axis.
    pub x_label: String,
    /// Description of the y axis.
    pub y_label: String,
    /// The lines; empty ones are skipped.
    pub series: Vec<Series>,
    /// Fixed x range; `None` fits the data.
    pub x_range: Option<(f64, f64)>,
    /// Fixed y range; `None` fits the data.
    pub y_range: Option<(f64, f64)>,
    /// The y range never reaches beyond these bounds when fitted to the data.
    pub y_bounds: Option<(f64, f64)>,
    /// Label only whole numbers on the x axis (epochs).
    pub integer_x: bool,
    /// Mark points with dots (few points per line).
    pub dots: bool,
    /// A dashed vertical line at this x, with its legend text.
    pub vertical_marker: Option<(f64, String)>,
    /// A dashed diagonal from (0, 0) to (1, 1), with its legend text (ROC chance line).
    pub diagonal: Option<String>,
    /// Preferred legend corner.
    pub legend: Legend,
}

impl LineChart {
    /// A chart with the given title and axis descriptions and no lines yet.
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        LineChart {
            title: title.to_string(),
            x_label: x_label.to_string(),
            y_label: y_label.to_string(),
            series: Vec::new(),
            x_range: None,
            y_range: None,
            y_bounds: None,
            integer_x: false,
            dots: false,
            vertical_marker: None,
            diagonal: None,
            legend: Legend::UpperRight,
        }
    }
}

fn plot_error(what: &str) -> impl Fn(String) -> ReportError + '_ {
    move |message| ReportError::Plot {
        what: what.to_string(),
        message,
    }
}

/// A range covering `values` with some padding, never empty, kept within `bounds`.
fn fitted_range(values: impl Iterator<Item = f64>, bounds: Option<(f64, f64)>) -> (f64, f64) {
    let (min, max) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !min.is_finite() {
        return bounds.unwrap_or((0.0, 1.0));
    }
    let span = max - min;
    let pad = if span > 1e-12 {
        span * 0.08
    } else {
        (max.abs() * 0.05).max(0.05)
    };
    let (mut lo, mut hi) = (min - pad, max + pad);
    if let Some((low_bound, high_bound)) = bounds {
        // A little beyond the bounds, so a line on a bound is not hidden by the axis.
        let slack = (high_bound - low_bound) * 0.02;
        lo = lo.max(low_bound - slack);
        hi = hi.min(high_bound + slack);
    }
    (lo, hi)
}

/// Every drawn line as points, each segment sampled densely enough to find where it crosses.
fn sampled_points(chart: &LineChart, (y0, y1): (f64, f64)) -> Vec<(f64, f64)> {
    let mut lines: Vec<Vec<(f64, f64)>> = chart.series.iter().map(|s| s.points.clone()).collect();
    if chart.diagonal.is_some() {
        lines.push(vec![(0.0, 0.0), (1.0, 1.0)]);
    }
    if let Some((x, _)) = &chart.vertical_marker {
        lines.push(vec![(*x, y0), (*x, y1)]);
    }
    let mut points = Vec::new();
    for line in lines {
        if line.len() == 1 {
            points.push(line[0]);
        }
        for pair in line.windows(2) {
            let ((ax, ay), (bx, by)) = (pair[0], pair[1]);
            for step in 0..=16 {
                let t = step as f64 / 16.0;
                points.push((ax + (bx - ax) * t, ay + (by - ay) * t));
            }
        }
    }
    points
}

/// Where to put the legend so that it covers no line: the preferred corner if it is free,
/// else the first free one of the other places; if none is free, the top range is raised
/// (unless the y range is fixed) to make room above the lines. Returns the position and the
/// top of the y range.
fn place_legend(
    chart: &LineChart,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> (SeriesLabelPosition, f64) {
    use SeriesLabelPosition::*;
    let mut labels: Vec<&str> = chart
        .series
        .iter()
        .filter(|s| !s.points.is_empty())
        .map(|s| s.name.as_str())
        .collect();
    labels.extend(chart.diagonal.as_deref());
    labels.extend(
        chart
            .vertical_marker
            .as_ref()
            .map(|(_, name)| name.as_str()),
    );
    // plotters' estimate of the legend box: text width, sample area and margins.
    let em = LEGEND_FONT as f64 / 1.24 / 1.24;
    let chars = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as f64;
    let width = em * 0.7 * chars + 30.0 + 20.0 + 5.0;
    let height = labels.len() as f64 * em * 1.6 + 20.0 + 5.0;
    let (sx, sy) = ((x1 - x0) / PLOT_AREA.0, (y1 - y0) / PLOT_AREA.1);
    let (w, h) = (width * sx, height * sy);
    let box_of = |position: &SeriesLabelPosition| {
        let (left, right) = match position {
            UpperLeft | MiddleLeft | LowerLeft => (x0, x0 + w),
            _ => (x1 - w, x1),
        };
        let (bottom, top) = match position {
            UpperLeft | UpperRight => (y1 - h, y1),
            LowerLeft | LowerRight => (y0, y0 + h),
            _ => ((y0 + y1 - h) / 2.0, (y0 + y1 + h) / 2.0),
        };
        (left, right, bottom, top)
    };
    let points = sampled_points(chart, (y0, y1));
    let is_free = |position: &SeriesLabelPosition| {
        let (left, right, bottom, top) = box_of(position);
        !points
            .iter()
            .any(|&(x, y)| x >= left && x <= right && y >= bottom && y <= top)
    };
    let candidates = match chart.legend {
        Legend::UpperRight => [UpperRight, LowerRight, UpperLeft, LowerLeft, MiddleRight],
        Legend::LowerRight => [LowerRight, UpperRight, LowerLeft, UpperLeft, MiddleRight],
    };
    let preferred = candidates[0].clone();
    if let Some(position) = candidates.into_iter().find(|p| is_free(p)) {
        return (position, y1);
    }
    if chart.y_range.is_some() || height >= PLOT_AREA.1 * 0.6 {
        return (preferred, y1);
    }
    // Raise the top so the legend's height sits above the highest line.
    let share = height / PLOT_AREA.1;
    (UpperRight, y1 + (y1 - y0) * share / (1.0 - share))
}

/// Draw a line chart as an SVG document.
pub(crate) fn line_chart(chart: &LineChart) -> Result<String, ReportError> {
    let error = plot_error(&chart.title);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, LINE_CHART_SIZE).into_drawing_area();
        draw_line_chart(&root, chart).map_err(&error)?;
        root.present().map_err(|e| error(e.to_string()))?;
    }
    Ok(svg)
}

fn draw_line_chart(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    chart: &LineChart,
) -> Result<(), String> {
    let text = |e: plotters::drawing::DrawingAreaErrorKind<_>| e.to_string();
    root.fill(&WHITE).map_err(text)?;
    let points = || chart.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = chart.x_range.unwrap_or_else(|| {
        let (lo, hi) = fitted_range(points().map(|p| p.0), None);
        if chart.integer_x {
            // Whole epochs from the first to the last, with half an epoch either side.
            let first = points().map(|p| p.0).fold(f64::INFINITY, f64::min);
            let last = points().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
            if first.is_finite() {
                (first - 0.5, last + 0.5)
            } else {
                (lo, hi)
            }
        } else {
            (lo, hi)
        }
    });
    let (y0, y1) = chart
        .y_range
        .unwrap_or_else(|| fitted_range(points().map(|p| p.1), chart.y_bounds));
    let (legend_position, y1) = place_legend(chart, (x0, x1), (y0, y1));
    let mut context = ChartBuilder::on(root)
        .caption(&chart.title, ("sans-serif", 20))
        .margin(MARGIN)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(Y_LABEL_AREA)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(text)?;
    let integer_x = chart.integer_x;
    let x_format = move |x: &f64| {
        if !integer_x {
            format!("{x:.2}")
        } else if (x - x.round()).abs() < 1e-6 {
            format!("{x:.0}")
        } else {
            String::new()
        }
    };
    let epochs = (x1 - x0).round() as usize;
    let x_labels = if integer_x { epochs.clamp(2, 12) } else { 6 };
    context
        .configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .x_labels(x_labels)
        .y_labels(6)
        .x_label_formatter(&x_format)
        .y_label_formatter(&|y: &f64| format!("{y:.2}"))
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(215, 215, 215))
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(text)?;
    let reference = ShapeStyle::from(&REFERENCE).stroke_width(1);
    if let Some(name) = &chart.diagonal {
        context
            .draw_series(DashedLineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                6,
                4,
                reference,
            ))
            .map_err(text)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], reference));
    }
    if let Some((x, name)) = &chart.vertical_marker {
        context
            .draw_series(DashedLineSeries::new([(*x, y0), (*x, y1)], 6, 4, reference))
            .map_err(text)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], reference));
    }
    for (index, series) in chart.series.iter().enumerate() {
        if series.points.is_empty() {
            continue;
        }
        let style = ShapeStyle::from(&series_colour(index)).stroke_width(2);
        let dots = if chart.dots { 3 } else { 0 };
        context
            .draw_series(LineSeries::new(series.points.iter().copied(), style).point_size(dots))
            .map_err(text)?
            .label(series.name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    }
    context
        .configure_series_labels()
        .position(legend_position)
        .label_font(("sans-serif", LEGEND_FONT))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(190, 190, 190))
        .draw()
        .map_err(text)?;
    Ok(())
}

/// A white-to-blue colour for a fraction in [0, 1] (matplotlib's "Blues", roughly).
fn blues(fraction: f64) -> RGBColor {
    let t = fraction.clamp(0.0, 1.0);
    let mix = |from: f64, to: f64| (from + (to - from) * t).round() as u8;
    RGBColor(mix(247.0, 8.0), mix(251.0, 48.0), mix(255.0, 107.0))
}

/// Draw a confusion matrix (rows: true class, columns: predicted class) as a heat map coloured
/// by each row's fraction (the per-class recall on the diagonal), with the counts written in.
pub(crate) fn confusion_heatmap(
    matrix: &[Vec<u64>],
    class_names: &[String],
) -> Result<String, ReportError> {
    let error = plot_error("confusion matrix");
    let n = matrix.len().max(1) as i32;
    let cell = (440 / n).clamp(26, 84);
    let grid = cell * n;
    // Labels are 14 px sans-serif (11.3 px once plotters scales it): about 6.5 px per character.
    let longest = class_names
        .iter()
        .map(|name| name.chars().count())
        .max()
        .unwrap_or(1) as i32;
    let label_room = (longest * 7 + 10).clamp(30, 240);
    let (left, top) = (label_room + 30, 44);
    let width = (left + grid + 24).max(320);
    let height = top + grid + label_room + 34;
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (width as u32, height as u32)).into_drawing_area();
        draw_heatmap(
            &root,
            matrix,
            class_names,
            cell,
            (left, top),
            (width, height),
        )
        .map_err(&error)?;
        root.present().map_err(|e| error(e.to_string()))?;
    }
    Ok(svg)
}

fn draw_heatmap(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    matrix: &[Vec<u64>],
    class_names: &[String],
    cell: i32,
    (left, top): (i32, i32),
    (width, height): (i32, i32),
) -> Result<(), String> {
    let text = |e: plotters::drawing::DrawingAreaErrorKind<_>| e.to_string();
    root.fill(&WHITE).map_err(text)?;
    let font = |size: i32| TextStyle::from(("sans-serif", size).into_font());
    let centred = Pos::new(HPos::Center, VPos::Center);
    root.draw(&Text::new(
        "Confusion matrix (test)",
        (width / 2, 12),
        font(20).pos(Pos::new(HPos::Center, VPos::Top)),
    ))
    .map_err(text)?;
    let grid = cell * matrix.len() as i32;
    let white = RGBColor(255, 255, 255);
    for (i, row) in matrix.iter().enumerate() {
        let total: u64 = row.iter().sum();
        let y = top + i as i32 * cell;
        for (j, &count) in row.iter().enumerate() {
            let fraction = if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            };
            let x = left + j as i32 * cell;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                blues(fraction).filled(),
            ))
            .map_err(text)?;
            root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], white))
                .map_err(text)?;
            let ink = if fraction > 0.5 { white } else { BLACK };
            let size = (cell / 3).clamp(12, 22);
            root.draw(&Text::new(
                count.to_string(),
                (x + cell / 2, y + cell / 2),
                font(size).color(&ink).pos(centred),
            ))
            .map_err(text)?;
        }
        let name = class_names.get(i).map_or("", String::as_str);
        root.draw(&Text::new(
            name.to_string(),
            (left - 6, y + cell / 2),
            font(14).pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(text)?;
        // Column labels read upwards, ending just below the grid.
        root.draw(&Text::new(
            name.to_string(),
            (left + i as i32 * cell + cell / 2, top + grid + 6),
            font(14)
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(text)?;
    }
    root.draw(&Text::new(
        "predicted class",
        (left + grid / 2, height - 6),
        font(16).pos(Pos::new(HPos::Center, VPos::Bottom)),
    ))
    .map_err(text)?;
    root.draw(&Text::new(
        "true class",
        (10, top + grid / 2),
        font(16)
            .transform(FontTransform::Rotate270)
            .pos(Pos::new(HPos::Center, VPos::Top)),
    ))
    .map_err(text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(svg: &str, tag: &str) -> usize {
        svg.matches(&format!("<{tag}")).count()
    }

    #[test]
    fn line_chart_draws_every_series_and_escapes_labels() {
        let mut chart = LineChart::new("Loss <per> epoch", "epoch", "loss");
        chart.integer_x = true;
        chart.dots = true;
        chart.vertical_marker = Some((2.0, "best epoch".into()));
        chart.series = vec![
            Series {
                name: "train & more".into(),
                points: vec![(1.0, 1.0), (2.0, 0.8), (3.0, 0.7)],
            },
            Series {
                name: "val".into(),
                points: vec![(1.0, 1.1), (2.0, 0.9), (3.0, 0.95)],
            },
            Series {
                name: "empty".into(),
                points: vec![],
            },
        ];
        let svg = line_chart(&chart).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Loss &lt;per&gt; epoch"));
        assert!(
            svg.contains("train &amp; more") && svg.contains(">\nval\n<") || svg.contains("val")
        );
        assert!(!svg.contains("empty"));
        // Two data lines, the marker and three legend samples.
        assert!(count(&svg, "polyline") >= 3, "{svg}");
        assert_eq!(count(&svg, "circle"), 6);
    }

    #[test]
    fn a_single_epoch_and_flat_values_still_draw() {
        let mut chart = LineChart::new("one", "epoch", "accuracy");
        chart.integer_x = true;
        chart.y_bounds = Some((0.0, 1.0));
        chart.series = vec![Series {
            name: "val".into(),
            points: vec![(1.0, 1.0)],
        }];
        assert!(line_chart(&chart).unwrap().contains("<svg"));
        chart.series.clear();
        assert!(line_chart(&chart).unwrap().contains("<svg"));
    }

    #[test]
    fn fitted_ranges_are_padded_bounded_and_never_empty() {
        assert_eq!(fitted_range([0.5, 0.5].into_iter(), None), (0.45, 0.55));
        let (lo, hi) = fitted_range([0.2, 1.0].into_iter(), Some((0.0, 1.0)));
        assert!((lo - 0.136).abs() < 1e-9 && hi == 1.02);
        assert_eq!(fitted_range(std::iter::empty(), None), (0.0, 1.0));
    }

    #[test]
    fn the_legend_goes_where_no_line_is() {
        let mut chart = LineChart::new("t", "x", "y");
        let rising = |name: &str| Series {
            name: name.into(),
            points: vec![(0.0, 0.0), (1.0, 1.0)],
        };
        chart.series = vec![rising("a")];
        // A rising line leaves the upper left and lower right free.
        let (position, top) = place_legend(&chart, (0.0, 1.0), (0.0, 1.0));
        assert!(matches!(position, SeriesLabelPosition::LowerRight) && top == 1.0);
        chart.legend = Legend::UpperRight;
        chart.series.push(Series {
            name: "b".into(),
            points: vec![(0.0, 1.0), (1.0, 0.0)],
        });
        chart.series.push(Series {
            name: "c".into(),
            points: vec![(0.0, 0.5), (1.0, 0.5)],
        });
        // Every corner and the middle are crossed: room is made above the lines.
        let (position, top) = place_legend(&chart, (0.0, 1.0), (0.0, 1.0));
        assert!(
            matches!(position, SeriesLabelPosition::UpperRight) && top > 1.2,
            "{top}"
        );
        chart.y_range = Some((0.0, 1.0));
        assert_eq!(place_legend(&chart, (0.0, 1.0), (0.0, 1.0)).1, 1.0);
    }

    #[test]
    fn heatmap_has_a_cell_and_a_count_per_entry() {
        let matrix = vec![vec![5, 1, 0], vec![0, 3, 3], vec![2, 0, 7]];
        let names: Vec<String> = ["a", "b", "c&d"].iter().map(|s| s.to_string()).collect();
        let svg = confusion_heatmap(&matrix, &names).unwrap();
        // A filled cell and its outline per entry, plus the background.
        assert_eq!(count(&svg, "rect"), 9 * 2 + 1);
        assert!(svg.contains("c&amp;d"));
        for value in ["5", "7", "3"] {
            assert!(
                svg.contains(&format!(">\n{value}\n</text>")),
                "{value}: {svg}"
            );
        }
        assert!(svg.contains("rotate(270"));
    }

    #[test]
    fn blues_runs_from_near_white_to_dark_blue() {
        assert_eq!(blues(0.0), RGBColor(247, 251, 255));
        assert_eq!(blues(1.0), RGBColor(8, 48, 107));
        assert_eq!(blues(2.0), blues(1.0));
    }
}

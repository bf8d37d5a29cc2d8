//! The HTML page of a report: a header (title, generation time, ppcr version, contents), then
//! one section per folder. Everything is inline (style sheet, SVG plots, images as data URIs),
//! so the page makes no request when opened.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::plots::{self, Legend, LineChart, Series};
use super::sources::{CompareSource, GallerySource, MAX_GALLERY_IMAGES, RunSource, Source};
use super::{Report, ReportError};
use crate::attention::AttentionKind;
use crate::metrics::ClassificationReport;
use crate::runfiles::{EpochRecord, MetricStats, SelectionMetric, UnitSummary};

/// The style sheet of the page.
const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2430;\
background:#f4f6f9;margin:0;line-height:1.45}
main{max-width:1260px;margin:0 auto;padding:0 20px 40px}
header{background:#1f3a5f;color:#fff;padding:22px 0 16px;margin-bottom:20px}
header .inner{max-width:1260px;margin:0 auto;padding:0 20px}
header h1{margin:0 0 4px;font-size:28px}
header .meta{margin:0 0 10px;color:#c9d6e8;font-size:14px}
header nav ol{margin:0;padding-left:20px;font-size:14px}
header nav a{color:#fff}
section{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:6px 22px 18px;\
margin:0 0 22px;box-shadow:0 1px 2px rgba(0,0,0,.04)}
h2{font-size:22px;margin:14px 0 2px}
h2 .kind{color:#5b6b80;font-weight:normal}
h3{font-size:17px;margin:20px 0 8px;color:#1f3a5f;border-bottom:1px solid #e6eaf0;padding-bottom:3px}
.path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;color:#5b6b80;margin:0 0 8px;\
word-break:break-all}
table{border-collapse:collapse;font-size:14px;margin:4px 0 6px}
th,td{padding:4px 10px;border-bottom:1px solid #e6eaf0;text-align:right;white-space:nowrap}
th{background:#eef2f7;font-weight:600}
th:first-child,td:first-child,th.l,td.l{text-align:left}
.scroll{overflow-x:auto}
table.comparison th{white-space:normal}
tbody tr:nth-child(even){background:#fafbfc}
table.facts th{background:none;text-align:left;color:#5b6b80;font-weight:normal}
table.facts td{text-align:left;white-space:normal}
td.best{font-weight:700}
td.significant{color:#0b6e2f;font-weight:600}
.tables{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
.figures{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;border:1px solid #e6eaf0;border-radius:6px;padding:6px;background:#fff}
figure svg{display:block;max-width:100%;height:auto}
figcaption{font-size:13px;color:#5b6b80;padding:4px 4px 0;max-width:560px}
.note{font-size:13px;color:#7a5b00;background:#fff8e1;border-left:3px solid #f0c000;padding:4px 10px}
.gallery-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:12px}
.gallery-grid img{display:block;width:100%;height:auto;background:#eee}
.gallery-grid img.small{image-rendering:pixelated}
.gallery-grid figcaption{word-break:break-all}
details pre{font-size:12px;background:#f6f8fa;padding:8px;overflow:auto;max-height:360px}
footer{color:#7b8794;font-size:12px;text-align:center;margin-top:10px}
";

/// The version of ppcr that wrote the page.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Escape text for HTML element content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// `time` as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn format_utc(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days: days since 1970-01-01 to a proleptic Gregorian date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// `1234567` as `1,234,567`.
fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count of operations in M or G.
fn operations(value: u64) -> String {
    let v = value as f64;
    if v >= 1e9 {
        format!("{:.2} G", v / 1e9)
    } else {
        format!("{:.1} M", v / 1e6)
    }
}

fn seconds(value: f64) -> String {
    if value >= 120.0 {
        format!(
            "{} min {:02} s",
            (value / 60.0).floor(),
            (value % 60.0).round()
        )
    } else {
        format!("{value:.1} s")
    }
}

fn number(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.digits$}"))
}

/// `mean ± std` over seeds; "n/a" where the mean is undefined (NaN: `null` in the file).
fn mean_std(stats: &MetricStats, digits: usize) -> String {
    match (stats.mean, stats.std) {
        (mean, _) if !mean.is_finite() => "n/a".to_string(),
        (mean, std) if !std.is_finite() => format!("{mean:.digits$}"),
        (mean, std) => format!("{mean:.digits$} ± {std:.digits$}"),
    }
}

/// Display name of a metric key of `compare.json`, and whether lower is better.
fn metric_name(key: &str) -> (String, bool) {
    let (name, lower) = match key {
        "accuracy" => ("accuracy", false),
        "balanced_accuracy" => ("balanced accuracy", false),
        "auc_macro" => ("AUC", false),
        "f1_macro" => ("macro F1", false),
        "precision_macro" => ("macro precision", false),
        "recall_macro" => ("macro recall", false),
        "f1_weighted" => ("weighted F1", false),
        "kappa" => ("kappa", false),
        "kappa_quadratic" => ("quadratic kappa", false),
        "ece" => ("ECE", true),
        "brier" => ("Brier", true),
        other => (other, other.contains("loss")),
    };
    (name.to_string(), lower)
}

/// The order metric columns appear in; others follow alphabetically.
const METRIC_ORDER: [&str; 11] = [
    "accuracy",
    "balanced_accuracy",
    "auc_macro",
    "f1_macro",
    "precision_macro",
    "recall_macro",
    "f1_weighted",
    "kappa",
    "kappa_quadratic",
    "ece",
    "brier",
];

fn folder_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn section_title(source: &Source) -> String {
    match source {
        Source::Run(run) => format!(
            "Run: {} + {} ({})",
            run.metrics.backbone,
            run.metrics.attention,
            folder_name(&run.root)
        ),
        Source::Compare(compare) => format!("Comparison: {}", folder_name(&compare.root)),
        Source::Gallery(gallery) => format!("Images: {}", folder_name(&gallery.root)),
    }
}

/// The whole page.
pub(crate) fn render(report: &Report, generated: SystemTime) -> Result<String, ReportError> {
    let mut page = String::new();
    let title = escape(&report.title);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"ppcr {VERSION}\">\n<title>{title}</title>\n\
         <style>\n{STYLE}</style>\n</head>\n<body>\n<header><div class=\"inner\">\n\
         <h1>{title}</h1>\n<p class=\"meta\">Generated {} by ppcr {VERSION} from {} folder{}.</p>\n\
         <nav><ol>\n",
        format_utc(generated),
        report.sources.len(),
        if report.sources.len() == 1 { "" } else { "s" }
    );
    for (index, source) in report.sources.iter().enumerate() {
        let _ = writeln!(
            page,
            "<li><a href=\"#section-{}\">{}</a></li>",
            index + 1,
            escape(&section_title(source))
        );
    }
    page.push_str("</ol></nav>\n</div></header>\n<main>\n");
    for (index, source) in report.sources.iter().enumerate() {
        let id = index + 1;
        let (class, body) = match source {
            Source::Run(run) => ("run", run_section(run)?),
            Source::Compare(compare) => ("compare", compare_section(compare)?),
            Source::Gallery(gallery) => ("gallery", gallery_section(gallery)),
        };
        let _ = write!(
            page,
            "<section class=\"{class}\" id=\"section-{id}\">\n<h2>{}</h2>\n\
             <p class=\"path\">{}</p>\n{body}</section>\n",
            escape(&section_title(source)),
            escape(&source.root().display().to_string()),
        );
    }
    let _ = write!(
        page,
        "</main>\n<footer>ppcr {VERSION} report, generated {}.</footer>\n</body>\n</html>\n",
        format_utc(generated)
    );
    Ok(page)
}

/// A figure holding an inline SVG plot.
fn svg_figure(kind: &str, svg: &str, caption: &str) -> String {
    format!(
        "<figure class=\"plot\" data-plot=\"{kind}\">\n{svg}<figcaption>{}</figcaption>\n</figure>\n",
        escape(caption)
    )
}

fn note(text: &str) -> String {
    format!("<p class=\"note\">{}</p>\n", escape(text))
}

fn selection_name(metric: Option<SelectionMetric>) -> &'static str {
    metric.map_or("chosen on validation", SelectionMetric::choice)
}

fn epoch_series(name: &str, log: &[EpochRecord], value: fn(&EpochRecord) -> Option<f64>) -> Series {
    Series {
        name: name.to_string(),
        points: log
            .iter()
            .filter_map(|r| value(r).map(|v| (r.epoch as f64, v)))
            .collect(),
    }
}

fn run_section(run: &RunSource) -> Result<String, ReportError> {
    let mut html = String::new();
    let info = &run.info;
    let metrics = &run.metrics;
    let model = &info.model;
    let facts: Vec<(&str, String)> = vec![
        ("backbone", metrics.backbone.clone()),
        ("attention", metrics.attention.clone()),
        ("data", info.dataset.clone()),
        (
            "classes",
            format!(
                "{}: {}",
                info.class_names.len(),
                info.class_names.join(", ")
            ),
        ),
        (
            "input",
            format!("{0} x {0} x {1}", model.input_size, model.in_channels),
        ),
        (
            "best epoch",
            format!(
                "{} of {} ({})",
                metrics.best_epoch,
                metrics.epochs,
                selection_name(metrics.selected_on)
            ),
        ),
        ("parameters", thousands(metrics.params as u64)),
        (
            "training time",
            metrics.train_seconds.map_or("n/a".into(), seconds),
        ),
    ];
    html.push_str("<table class=\"facts\">\n");
    for (key, value) in facts {
        let _ = writeln!(html, "<tr><th>{key}</th><td>{}</td></tr>", escape(&value));
    }
    html.push_str("</table>\n<h3>Training curves</h3>\n");
    if run.log.is_empty() {
        html.push_str(&note("The log has no epochs."));
    } else {
        let best = Some((
            metrics.best_epoch as f64,
            format!("best epoch ({})", metrics.best_epoch),
        ));
        let mut loss = LineChart::new("Loss per epoch", "epoch", "cross-entropy loss");
        loss.integer_x = true;
        loss.dots = run.log.len() <= 30;
        loss.vertical_marker = best.clone();
        loss.series = vec![
            epoch_series("train loss", &run.log, |r| Some(r.train_loss)),
            epoch_series("validation loss", &run.log, |r| Some(r.val_loss)),
        ];
        let mut scores = LineChart::new("Validation accuracy and AUC", "epoch", "score");
        scores.integer_x = true;
        scores.dots = loss.dots;
        scores.y_bounds = Some((0.0, 1.0));
        scores.legend = Legend::LowerRight;
        scores.vertical_marker = best;
        scores.series = vec![
            epoch_series("validation accuracy", &run.log, |r| Some(r.val_accuracy)),
            epoch_series("validation AUC", &run.log, |r| r.val_auc),
        ];
        html.push_str("<div class=\"figures\">\n");
        html.push_str(&svg_figure(
            "loss",
            &plots::line_chart(&loss)?,
            "Mean training loss (augmented batches) and validation loss per epoch; dashed: the \
             epoch whose weights were evaluated.",
        ));
        html.push_str(&svg_figure(
            "validation",
            &plots::line_chart(&scores)?,
            "Validation accuracy and macro one-vs-rest AUC per epoch.",
        ));
        html.push_str("</div>\n");
    }
    html.push_str("<h3>Test metrics</h3>\n<div class=\"tables\">\n");
    html.push_str(&metrics_table(
        &metrics.val,
        &metrics.test,
        metrics.val_loss,
        metrics.test_loss,
    ));
    html.push_str(&per_class_table(&metrics.test, &info.class_names));
    html.push_str("</div>\n<h3>Confusion matrix and ROC curves</h3>\n<div class=\"figures\">\n");
    html.push_str(&svg_figure(
        "confusion",
        &plots::confusion_heatmap(&metrics.test.confusion_matrix, &info.class_names)?,
        "Test confusion matrix: counts, coloured by the fraction of each true class (row).",
    ));
    let mut notes = String::new();
    match &run.predictions {
        None => notes.push_str(&note(
            "No test_predictions.csv in this run (made before ppcr wrote it): no ROC curves.",
        )),
        Some(predictions) => {
            let mut roc = LineChart::new(
                "ROC curves (test, one-vs-rest)",
                "false-positive rate",
                "true-positive rate",
            );
            // A little beyond [0, 1], so curves along the edges are not hidden by the axes.
            roc.x_range = Some((-0.02, 1.02));
            roc.y_range = Some((-0.02, 1.02));
            roc.diagonal = Some("chance".into());
            roc.legend = Legend::LowerRight;
            let mut missing = Vec::new();
            for (class, entry) in predictions.roc().into_iter().enumerate() {
                let name = info.class_names[class].clone();
                match entry {
                    Some((curve, auc)) => roc.series.push(Series {
                        name: format!("{name} (AUC {auc:.3})"),
                        points: curve.fpr.into_iter().zip(curve.tpr).collect(),
                    }),
                    None => missing.push(name),
                }
            }
            html.push_str(&svg_figure(
                "roc",
                &plots::line_chart(&roc)?,
                &format!(
                    "One-vs-rest ROC curve of each class on the {} test images, from \
                     test_predictions.csv.",
                    predictions.labels.len()
                ),
            ));
            if !missing.is_empty() {
                notes.push_str(&note(&format!(
                    "No ROC curve for {}: the test split has no image of the class, or only such images.",
                    missing.join(", ")
                )));
            }
        }
    }
    html.push_str("</div>\n");
    html.push_str(&notes);
    Ok(html)
}

fn metrics_table(
    val: &ClassificationReport,
    test: &ClassificationReport,
    val_loss: Option<f64>,
    test_loss: Option<f64>,
) -> String {
    let brier = format!("Brier score ({})", test.brier_form.name());
    let rows: [(&str, Option<f64>, Option<f64>); 11] = [
        ("accuracy", Some(val.accuracy), Some(test.accuracy)),
        (
            "balanced accuracy",
            Some(val.balanced_accuracy),
            Some(test.balanced_accuracy),
        ),
        (
            "macro precision",
            Some(val.precision_macro),
            Some(test.precision_macro),
        ),
        (
            "macro recall",
            Some(val.recall_macro),
            Some(test.recall_macro),
        ),
        ("macro F1", Some(val.f1_macro), Some(test.f1_macro)),
        ("Cohen's kappa", Some(val.kappa), Some(test.kappa)),
        (
            "quadratic kappa",
            Some(val.kappa_quadratic),
            Some(test.kappa_quadratic),
        ),
        ("AUC (macro one-vs-rest)", val.auc_macro, test.auc_macro),
        ("ECE (15 bins)", Some(val.ece), Some(test.ece)),
        (&brier, Some(val.brier), Some(test.brier)),
        ("loss", val_loss, test_loss),
    ];
    let mut html = String::from(
        "<table class=\"metrics\">\n<thead><tr><th>metric</th><th>test</th><th>validation</th>\
         </tr></thead>\n<tbody>\n",
    );
    for (name, val, test) in rows {
        let _ = writeln!(
            html,
            "<tr><td>{name}</td><td>{}</td><td>{}</td></tr>",
            number(test, 4),
            number(val, 4)
        );
    }
    let _ = writeln!(
        html,
        "<tr><td>images</td><td>{}</td><td>{}</td></tr>\n</tbody>\n</table>",
        test.num_samples, val.num_samples
    );
    html
}

fn per_class_table(test: &ClassificationReport, class_names: &[String]) -> String {
    let mut html = String::from(
        "<table class=\"per-class\">\n<thead><tr><th>class (test)</th><th>precision</th>\
         <th>recall</th><th>specificity</th><th>F1</th><th>AUC</th><th>support</th></tr></thead>\n\
         <tbody>\n",
    );
    for (class, scores) in test.per_class.iter().enumerate() {
        let name = class_names
            .get(class)
            .cloned()
            .unwrap_or_else(|| class.to_string());
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td>\
             <td>{}</td></tr>",
            escape(&name),
            scores.precision,
            scores.recall,
            scores.specificity,
            scores.f1,
            number(scores.auc, 4),
            scores.support
        );
    }
    html.push_str("</tbody>\n</table>\n");
    html
}

/// The units of a comparison in display order: `units` of the file, then any other unit found
/// in its rows or runs.
fn unit_order(compare: &CompareSource) -> Vec<AttentionKind> {
    let mut units = compare.summary.units.clone();
    let others = compare
        .summary
        .rows
        .iter()
        .map(|row| &row.attention)
        .chain(compare.runs.iter().map(|run| &run.unit));
    for unit in others {
        if !units.contains(unit) {
            units.push(*unit);
        }
    }
    units
}

fn compare_section(compare: &CompareSource) -> Result<String, ReportError> {
    let summary = &compare.summary;
    let mut html = String::new();
    let seeds: Vec<String> = summary.seeds.iter().map(u64::to_string).collect();
    let _ = writeln!(
        html,
        "<table class=\"facts\">\n<tr><th>data</th><td>{}</td></tr>\n\
         <tr><th>units</th><td>{}</td></tr>\n<tr><th>seeds</th><td>{}</td></tr>\n\
         <tr><th>runs found</th><td>{} under runs/</td></tr>\n</table>",
        escape(&summary.data),
        escape(
            &summary
                .units
                .iter()
                .map(|unit| unit.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        seeds.join(", "),
        compare.runs.len()
    );
    let order = unit_order(compare);
    let mut rows: Vec<&UnitSummary> = summary.rows.iter().collect();
    rows.sort_by_key(|row| order.iter().position(|u| *u == row.attention));
    let mut keys: Vec<String> = METRIC_ORDER
        .iter()
        .filter(|key| rows.iter().any(|row| row.metrics.contains_key(**key)))
        .map(|key| key.to_string())
        .collect();
    let mut others: Vec<String> = rows
        .iter()
        .flat_map(|row| row.metrics.keys())
        .filter(|key| !METRIC_ORDER.contains(&key.as_str()))
        .cloned()
        .collect();
    others.sort();
    others.dedup();
    keys.extend(others);
    // The best mean of each metric, to show in bold.
    let best: BTreeMap<&str, f64> = keys
        .iter()
        .filter_map(|key| {
            let lower = metric_name(key).1;
            let means = rows
                .iter()
                .filter_map(|row| row.metrics.get(key).map(|m| m.mean))
                .filter(|mean| mean.is_finite());
            let best = if lower {
                means.fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.min(v))))
            } else {
                means.fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.max(v))))
            };
            best.map(|b| (key.as_str(), b))
        })
        .collect();
    html.push_str(
        "<h3>Test metrics, mean ± standard deviation over seeds</h3>\n\
         <div class=\"scroll\"><table class=\"comparison\">\n<thead><tr><th>unit</th><th>runs</th><th>params</th>\
         <th>MACs</th><th>train time (s)</th>",
    );
    for key in &keys {
        let _ = write!(html, "<th>{}</th>", escape(&metric_name(key).0));
    }
    html.push_str("</tr></thead>\n<tbody>\n");
    for row in &rows {
        let _ = write!(
            html,
            "<tr data-unit=\"{0}\"><td>{0}</td><td>{1}</td><td>{2}</td><td>{3}</td><td>{4}</td>",
            escape(row.attention.name()),
            row.runs,
            thousands(row.params as u64),
            operations(row.macs),
            mean_std(&row.train_seconds, 1),
        );
        for key in &keys {
            match row.metrics.get(key) {
                Some(summary) => {
                    let is_best = Some(summary.mean) == best.get(key.as_str()).copied();
                    let class = if is_best && rows.len() > 1 {
                        " class=\"best\""
                    } else {
                        ""
                    };
                    let _ = write!(html, "<td{class}>{}</td>", mean_std(summary, 3));
                }
                None => html.push_str("<td>n/a</td>"),
            }
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody>\n</table></div>\n");
    html.push_str(&note(
        "Bold: the best mean of each metric (lowest for ECE and Brier). MACs: multiply-accumulates \
         of one forward pass.",
    ));
    html.push_str("<h3>Paired comparisons</h3>\n");
    if summary.paired.is_empty() {
        html.push_str(&note("compare.json has no paired comparisons."));
    } else {
        html.push_str("<table class=\"paired\">\n<thead><tr><th>unit</th>");
        html.push_str(
            "<th class=\"l\">baseline</th><th class=\"l\">metric</th><th>mean difference</th><th>p-value</th>\
             <th>seeds</th></tr></thead>\n<tbody>\n",
        );
        for paired in &summary.paired {
            let _ = write!(html, "<tr><td>{}</td>", escape(paired.candidate.name()));
            let p_value = match paired.p_value {
                Some(p) if p < 0.001 => "&lt; 0.001".to_string(),
                Some(p) => format!("{p:.3}"),
                None => "n/a".to_string(),
            };
            let significant = if paired.p_value.is_some_and(|p| p < 0.05) {
                " class=\"significant\""
            } else {
                ""
            };
            let _ = writeln!(
                html,
                "<td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td{significant}>{p_value}</td>\
                 <td>{}</td></tr>",
                escape(paired.baseline.name()),
                escape(&metric_name(&paired.metric).0),
                if paired.mean_difference.is_finite() {
                    format!("{:+.4}", paired.mean_difference)
                } else {
                    "n/a".into()
                },
                paired.seeds
            );
        }
        html.push_str("</tbody>\n</table>\n");
        html.push_str(&note(
            "Mean difference over seeds of the compared unit minus the baseline; green: p < 0.05.",
        ));
    }
    html.push_str("<h3>Validation curves, mean over seeds</h3>\n");
    if compare.runs.is_empty() {
        html.push_str(&note("No run folders under runs/: no curves."));
    } else {
        let mut accuracy = LineChart::new("Validation accuracy per epoch", "epoch", "accuracy");
        accuracy.y_bounds = Some((0.0, 1.0));
        accuracy.legend = Legend::LowerRight;
        let mut loss = LineChart::new("Validation loss per epoch", "epoch", "cross-entropy loss");
        for unit in &order {
            let logs: Vec<&[EpochRecord]> = compare
                .runs
                .iter()
                .filter(|run| run.unit == *unit)
                .map(|run| run.log.as_slice())
                .collect();
            if logs.is_empty() {
                continue;
            }
            let name = format!(
                "{unit} ({} run{})",
                logs.len(),
                if logs.len() == 1 { "" } else { "s" }
            );
            accuracy
                .series
                .push(mean_curve(&name, &logs, |r| r.val_accuracy));
            loss.series.push(mean_curve(&name, &logs, |r| r.val_loss));
        }
        for chart in [&mut accuracy, &mut loss] {
            chart.integer_x = true;
            chart.dots = chart.series.iter().all(|series| series.points.len() <= 30);
        }
        html.push_str("<div class=\"figures\">\n");
        html.push_str(&svg_figure(
            "compare-accuracy",
            &plots::line_chart(&accuracy)?,
            "Validation accuracy per epoch, one line per unit: the mean over its runs (seeds).",
        ));
        html.push_str(&svg_figure(
            "compare-loss",
            &plots::line_chart(&loss)?,
            "Validation loss per epoch, one line per unit: the mean over its runs (seeds).",
        ));
        html.push_str("</div>\n");
    }
    Ok(html)
}

/// Per epoch, the mean of `value` over the logs that reached that epoch.
fn mean_curve(name: &str, logs: &[&[EpochRecord]], value: fn(&EpochRecord) -> f64) -> Series {
    let mut sums: BTreeMap<usize, (f64, usize)> = BTreeMap::new();
    for record in logs.iter().flat_map(|log| log.iter()) {
        let entry = sums.entry(record.epoch).or_default();
        entry.0 += value(record);
        entry.1 += 1;
    }
    Series {
        name: name.to_string(),
        points: sums
            .into_iter()
            .map(|(epoch, (sum, count))| (epoch as f64, sum / count as f64))
            .collect(),
    }
}

fn gallery_section(gallery: &GallerySource) -> String {
    let mut html = String::new();
    let _ = writeln!(
        html,
        "<p>{} PNG image{} from this folder and its subfolders.</p>\n<div class=\"gallery-grid\">",
        gallery.images.len() + gallery.left_out,
        if gallery.images.len() + gallery.left_out == 1 {
            ""
        } else {
            "s"
        }
    );
    for image in &gallery.images {
        let name = escape(&image.name);
        let class = if image.width < 200 {
            " class=\"small\""
        } else {
            ""
        };
        let _ = writeln!(
            html,
            "<figure class=\"image\"><img{class} src=\"data:image/png;base64,{}\" alt=\"{name}\" \
             width=\"{}\" height=\"{}\"><figcaption>{name} ({} x {})</figcaption></figure>",
            BASE64.encode(&image.png),
            image.width,
            image.height,
            image.width,
            image.height
        );
    }
    html.push_str("</div>\n");
    if gallery.left_out > 0 {
        html.push_str(&note(&format!(
            "{} more images left out: a report embeds at most {MAX_GALLERY_IMAGES} per folder.",
            gallery.left_out
        )));
    }
    if let Some(explain) = &gallery.explain {
        let _ = writeln!(
            html,
            "<details><summary>explain.json</summary><pre>{}</pre></details>",
            escape(explain)
        );
    }
    html
}

#[cfg(test)]
mod tests {
    use super::super::sources::tests::{fixture, write_png, write_run};
    use super::*;
    use std::time::Duration;

    fn page(folders: &[&Path]) -> String {
        Report::from_folders(folders)
            .unwrap()
            .with_title("Test <report>")
            .to_html(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
            .unwrap()
    }

    #[test]
    fn dates_format_as_utc() {
        let at = |s: u64| format_utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(at(951_825_600), "2000-02-29 12:00:00 UTC");
    }

    #[test]
    fn numbers_format_for_reading() {
        assert_eq!(thousands(330_072), "330,072");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(operations(41_000_000), "41.0 M");
        assert_eq!(operations(1_820_000_000), "1.82 G");
        assert_eq!(seconds(80.14), "80.1 s");
        assert_eq!(seconds(185.0), "3 min 05 s");
        let stats = |mean, std| MetricStats {
            mean,
            std,
            values: vec![],
        };
        assert_eq!(mean_std(&stats(0.95, 0.01), 4), "0.9500 ± 0.0100");
        assert_eq!(mean_std(&stats(f64::NAN, 0.01), 4), "n/a");
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }

    #[test]
    fn a_run_section_has_facts_curves_tables_and_figures() {
        let dir = tempfile::tempdir().unwrap();
        write_run(dir.path());
        let html = page(&[dir.path()]);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<title>Test &lt;report&gt;</title>"));
        assert!(html.contains("Generated 2023-11-14 22:13:20 UTC by ppcr "));
        assert!(html.contains("Run: resnet20 + ppcr"));
        assert!(html.contains("2 of 3 (chosen on validation AUC)"));
        assert!(html.contains("<tr><th>parameters</th><td>329,747</td></tr>"));
        for plot in ["loss", "validation", "confusion", "roc"] {
            assert!(html.contains(&format!("data-plot=\"{plot}\"")), "{plot}");
        }
        assert_eq!(html.matches("<svg").count(), 4);
        assert!(html.contains("basophil (AUC "));
        assert!(html.contains("<table class=\"per-class\">"));
        // Self-contained: nothing is fetched.
        assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
        assert!(!html.contains("<script") && !html.contains("<link"));
    }

    #[test]
    fn a_compare_section_has_both_tables_and_the_curves() {
        let html = page(&[&fixture("compare")]);
        for unit in ["none", "se", "ppcr"] {
            assert!(
                html.contains(&format!("<tr data-unit=\"{unit}\">")),
                "{unit}"
            );
        }
        // Rows follow the units' order, and the best mean is bold.
        let position = |needle: &str| html.find(needle).unwrap();
        assert!(position("data-unit=\"none\"") < position("data-unit=\"ppcr\""));
        assert!(html.contains("<td class=\"best\">0.908 ± 0.005</td>"));
        assert!(html.contains("<td class=\"best\">0.029 ± 0.003</td>"));
        assert!(html.contains("<td>0.861 ± 0.004</td>"));
        assert!(html.contains("<td>330,072</td><td>41.0 M</td><td>180.1 ± 2.0</td>"));
        assert!(html.contains("<table class=\"paired\">"));
        assert!(html.contains("<td>+0.0470</td><td class=\"significant\">0.003</td>"));
        assert!(html.contains("<td>+0.0040</td><td>0.200</td>"));
        assert!(html.contains("ppcr (3 runs)"));
        assert!(html.contains("data-plot=\"compare-accuracy\""));
        assert!(html.contains("data-plot=\"compare-loss\""));
    }

    #[test]
    fn a_gallery_section_embeds_every_image() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("overlay <1>.png"), 8, 6);
        let html = page(&[dir.path()]);
        let image = fs_png(&dir.path().join("overlay <1>.png"));
        assert!(html.contains(&format!("src=\"data:image/png;base64,{image}\"")));
        assert!(html.contains("<figcaption>overlay &lt;1&gt;.png (8 x 6)</figcaption>"));
    }

    fn fs_png(path: &Path) -> String {
        BASE64.encode(std::fs::read(path).unwrap())
    }
}

//! `ppcr report` opened in a real headless browser (Debian's chromium): a report of a run the
//! binary trains here, the comparison fixture and a folder with a PNG image must render to a
//! non-blank screenshot, and the DOM the browser builds must hold the comparison table's rows
//! and every figure with its content. Without chromium the test prints a notice and returns
//! (CI installs it in `.ci/run`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{assert_success, ppcr, train_tiny};

/// The longest a browser call may take before the test fails.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);

fn chromium() -> Option<PathBuf> {
    let installed = Path::new("/usr/bin/chromium");
    if installed.exists() {
        return Some(installed.to_path_buf());
    }
    let on_path = Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    on_path.then(|| PathBuf::from("chromium"))
}

/// Run headless chromium on `page` with `extra` arguments and a fresh profile; returns stdout.
fn run_chromium(browser: &Path, page: &Path, extra: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,4000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    // Read both pipes on threads so a full pipe never blocks the browser.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BROWSER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium took more than {BROWSER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "chromium failed ({status}): {err}");
    out
}

/// The text of every element `<tag ...>...</tag>` whose opening tag contains `marker`.
fn elements<'a>(dom: &'a str, tag: &str, marker: &str) -> Vec<&'a str> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(start) = rest.find(&open) {
        let from = &rest[start..];
        let end = from.find(&close).expect("element is closed") + close.len();
        let element = &from[..end];
        let opening = &element[..element.find('>').unwrap()];
        if opening.contains(marker) {
            found.push(element);
        }
        rest = &from[end..];
    }
    found
}

/// The value of attribute `name` in the first tag of `element`.
fn attribute<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    let opening = &element[..element.find('>')?];
    let key = format!(" {name}=\"");
    let start = opening.find(&key)? + key.len();
    let end = opening[start..].find('"')? + start;
    Some(&opening[start..end])
}

#[test]
fn report_renders_in_a_headless_browser() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_tiny(dir.path(), 2);

    let gallery = dir.path().join("explain");
    std::fs::create_dir_all(&gallery).unwrap();
    let overlay = image::RgbImage::from_fn(96, 64, |x, y| {
        image::Rgb([(x * 255 / 96) as u8, (y * 255 / 64) as u8, 160])
    });
    overlay.save(gallery.join("overlay-0.png")).unwrap();
    std::fs::write(gallery.join("explain.json"), r#"{"method": "gradcam"}"#).unwrap();

    let compare = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report/compare");
    let page = dir.path().join("report.html");
    let output = ppcr([
        "report",
        run.to_str().unwrap(),
        compare.to_str().unwrap(),
        gallery.to_str().unwrap(),
        "-o",
        page.to_str().unwrap(),
    ]);
    assert_success(&output);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));

    let Some(browser) = chromium() else {
        common::skip(
            "chromium is not installed (apt-get install chromium); the browser checks of the \
             report did not run",
        );
        return;
    };

    // The screenshot: a real picture of the page, not a blank or an error page.
    let shot = dir.path().join("report.png");
    run_chromium(
        &browser,
        &page,
        &[format!("--screenshot={}", shot.display())],
    );
    assert!(shot.is_file(), "no screenshot written");
    let picture = image::open(&shot)
        .expect("the screenshot decodes")
        .to_rgb8();
    assert_eq!(picture.width(), 1280);
    let colours: std::collections::HashSet<[u8; 3]> = picture.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 1, "the screenshot is blank");
    // The page's own style sheet was applied: its header colour is on screen.
    assert!(
        colours.contains(&[31, 58, 95]),
        "the header colour is missing"
    );

    // The DOM the browser built from the page.
    let dom = run_chromium(&browser, &page, &["--dump-dom".to_string()]);
    assert!(
        dom.contains("<h1>ppcr report</h1>"),
        "{}",
        &dom[..dom.len().min(2000)]
    );
    assert!(dom.contains(concat!("by ppcr ", env!("CARGO_PKG_VERSION"))));
    assert!(!dom.contains("src=\"http") && !dom.contains("href=\"http"));

    let sections = elements(&dom, "section", "class=");
    let kinds: Vec<_> = sections
        .iter()
        .map(|s| attribute(s, "class").unwrap())
        .collect();
    assert_eq!(kinds, ["run", "compare", "gallery"]);

    let tables = elements(&dom, "table", "class=\"comparison\"");
    assert_eq!(tables.len(), 1);
    let units: Vec<_> = elements(tables[0], "tr", "data-unit=")
        .iter()
        .map(|row| attribute(row, "data-unit").unwrap())
        .collect();
    assert_eq!(units, ["none", "se", "ppcr"]);
    let ppcr_row = elements(tables[0], "tr", "data-unit=\"ppcr\"")[0];
    for cell in [
        "330,072",
        "41.0 M",
        "180.1 ± 2.0",
        "0.908 ± 0.005",
        "0.991 ± 0.001",
    ] {
        assert!(ppcr_row.contains(cell), "{cell} missing from {ppcr_row}");
    }
    let paired = elements(&dom, "table", "class=\"paired\"");
    assert_eq!(
        elements(paired[0], "tr", "").len(),
        1 + 3,
        "header and 3 paired rows"
    );

    // Every figure is there and has content: plots with drawn shapes, images that decode.
    let figures = elements(&dom, "figure", "class=");
    let plots: Vec<_> = figures
        .iter()
        .filter_map(|f| attribute(f, "data-plot"))
        .collect();
    assert_eq!(
        plots,
        [
            "loss",
            "validation",
            "confusion",
            "roc",
            "compare-accuracy",
            "compare-loss"
        ]
    );
    for figure in &figures {
        assert!(figure.contains("<figcaption>"), "no caption: {figure}");
        if attribute(figure, "class") == Some("plot") {
            let svgs = elements(figure, "svg", "");
            assert_eq!(svgs.len(), 1, "{figure}");
            let width: u32 = attribute(svgs[0], "width").unwrap().parse().unwrap();
            assert!(width > 0);
            let shapes = ["<polyline", "<rect", "<circle", "<line", "<path"]
                .iter()
                .map(|tag| svgs[0].matches(tag).count())
                .sum::<usize>();
            assert!(shapes >= 5, "an empty plot: {}", svgs[0]);
            assert!(svgs[0].contains("<text"), "a plot without text");
        } else {
            // `img` has no closing tag: take its opening tag alone.
            let at = figure.find("<img").expect("an image figure holds an img");
            let image_tag = &figure[at..];
            let source = attribute(image_tag, "src").unwrap();
            let payload = source
                .strip_prefix("data:image/png;base64,")
                .expect("the image is embedded");
            let bytes = BASE64.decode(payload).expect("valid base64");
            let decoded = image::load_from_memory(&bytes).expect("an embedded PNG decodes");
            assert_eq!((decoded.width(), decoded.height()), (96, 64));
            assert!(figure.contains("overlay-0.png"));
        }
    }
    assert_eq!(figures.len(), 7, "6 plots and 1 image");
    let roc = figures
        .iter()
        .find(|f| attribute(f, "data-plot") == Some("roc"))
        .unwrap();
    for class in ["basophil", "erythroblast", "platelet"] {
        assert!(
            roc.contains(&format!("{class} (AUC ")),
            "{class} missing from the ROC legend"
        );
    }
}

//! `ppcr explain` end to end: a PPCR ResNet-20 trained for one epoch on the PBC blood-cell
//! fixtures, Grad-CAM (Selvaraju et al., ICCV 2017) and PPCR attention figures for a square
//! JPEG and a non-square PNG, checked pixel by pixel where explain.json says the overlay and
//! colour bar are; and bad input ending in a clear error, a non-zero exit and no panic.

mod common;

use common::{assert_success, fixtures, ppcr, train_tiny};

use ppcr::explain::{Colormap, display_size};

#[test]
fn explain_writes_overlays_with_colour_bars_and_lists_them() {
    let folder = tempfile::tempdir().unwrap();
    let run = train_tiny(folder.path(), 1);
    let square = fixtures().join("pbc_mini/test/platelet/PLATELET_459043.jpg");
    // A 128x80 crop, so that the figures must keep a non-square aspect ratio.
    let wide = folder.path().join("wide cell.png");
    image::open(&square)
        .unwrap()
        .crop_imm(0, 20, 128, 80)
        .save(&wide)
        .unwrap();
    let out = folder.path().join("explained");
    let output = ppcr([
        "explain",
        "--checkpoint",
        run.to_str().unwrap(),
        square.to_str().unwrap(),
        wide.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--per-block",
    ]);
    assert_success(&output);

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("explain.json")).unwrap()).unwrap();
    assert_eq!(report["attention"], "ppcr");
    assert_eq!(report["gradcam_stage"], 3);
    assert_eq!(report["attention_stage"], 3, "default: the last stage");
    let classes: Vec<&str> = report["class_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    assert_eq!(classes, ["basophil", "erythroblast", "platelet"]);
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);

    let mut written = 0;
    for (entry, (width, height)) in images.iter().zip([(128u32, 128u32), (128, 80)]) {
        assert_eq!(entry["width"], width);
        assert_eq!(entry["height"], height);
        let probabilities: Vec<f64> = entry["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect();
        assert_eq!(probabilities.len(), 3);
        assert!((probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-4);
        let predicted = entry["predicted_index"].as_u64().unwrap() as usize;
        assert!(probabilities.iter().all(|&p| p <= probabilities[predicted]));
        assert_eq!(entry["predicted"], classes[predicted]);
        assert_eq!(entry["explained_index"], predicted as u64);

        // Grad-CAM, the stage mean and one figure per block of ResNet-20's 3-block stage.
        let outputs = entry["outputs"].as_array().unwrap();
        let kinds: Vec<&str> = outputs
            .iter()
            .map(|figure| figure["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "gradcam",
                "attention_mean",
                "attention_block",
                "attention_block",
                "attention_block"
            ]
        );
        let gradcam_file = outputs[0]["file"].as_str().unwrap();
        let probability = format!("p{:.3}", probabilities[predicted]);
        assert!(
            gradcam_file.contains(classes[predicted]) && gradcam_file.contains(&probability),
            "{gradcam_file} should name {} and {probability}",
            classes[predicted]
        );
        assert!(outputs[0]["min"].as_f64().unwrap() >= 0.0, "ReLU'd cam");
        // PPCR's weights are sigmoids.
        for figure in &outputs[1..] {
            let (min, max) = (
                figure["min"].as_f64().unwrap(),
                figure["max"].as_f64().unwrap(),
            );
            assert!(0.0 < min && min <= max && max < 1.0, "{figure}");
        }

        let (display_width, display_height) = display_size(width, height);
        assert_eq!(
            display_width as u64 * height as u64,
            display_height as u64 * width as u64,
            "display keeps the aspect ratio"
        );
        for figure in outputs {
            let path = out.join(figure["file"].as_str().unwrap());
            let png = image::open(&path)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
                .into_rgb8();
            let rect = |key: &str| {
                let rect = &figure[key];
                ["x", "y", "width", "height"].map(|field| rect[field].as_u64().unwrap() as u32)
            };
            let [ox, oy, ow, oh] = rect("overlay");
            let [bx, by, bw, bh] = rect("colorbar");
            assert_eq!((ow, oh), (display_width, display_height), "{figure}");
            assert!(ox + ow <= bx, "bar right of the overlay");
            assert_eq!((by, bh), (oy, oh), "bar as tall as the overlay");
            assert!(bx + bw + 5 < png.width(), "room for the labels");
            assert_eq!(png.height(), oy + oh + 8);
            // The bar is the colour map, 1 at the top and 0 at the bottom.
            let column = bx + bw / 2;
            assert_eq!(png.get_pixel(column, by).0, Colormap::Jet.rgb(1.0));
            assert_eq!(png.get_pixel(column, by + bh - 1).0, Colormap::Jet.rgb(0.0));
            assert_eq!(
                png.get_pixel(column, by + bh / 2).0,
                Colormap::Jet.rgb(1.0 - (bh / 2) as f32 / (bh - 1) as f32)
            );
            // Above the overlay, the title is ink on white.
            let title_ink = (0..oy.saturating_sub(2))
                .flat_map(|y| (0..png.width()).map(move |x| (x, y)))
                .filter(|&(x, y)| png.get_pixel(x, y).0[0] < 100)
                .count();
            assert!(title_ink > 50, "no title text in {}", path.display());
            written += 1;
        }
    }
    assert_eq!(written, 10);
    let pngs = std::fs::read_dir(&out)
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .unwrap_or_default()
                == "png"
        })
        .count();
    assert_eq!(pngs, 10, "explain.json lists every PNG written");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("wide_cell_gradcam_"), "{stdout}");
}

#[test]
fn explain_refuses_bad_input_with_a_clear_error() {
    let folder = tempfile::tempdir().unwrap();
    let run = train_tiny(folder.path(), 1);
    let run_arg = run.to_str().unwrap();
    let image = fixtures().join("pbc_mini/test/basophil/BA_970453.jpg");
    let image_arg = image.to_str().unwrap();
    let out = folder.path().join("out");
    let out_arg = out.to_str().unwrap();
    let missing = folder.path().join("no_such_cell.jpg");
    let not_an_image = folder.path().join("notes.png");
    std::fs::write(&not_an_image, "not a picture").unwrap();

    let cases: [(Vec<&str>, &[&str]); 5] = [
        (
            vec![image_arg, missing.to_str().unwrap()],
            &["no_such_cell.jpg"],
        ),
        (vec![not_an_image.to_str().unwrap()], &["notes.png"]),
        (vec!["--class", "3", image_arg], &["--class 3", "3 classes"]),
        (
            vec!["--class", "neutrophil", image_arg],
            &["'neutrophil'", "2 platelet"],
        ),
        (vec!["--stage", "4", image_arg], &["--stage 4", "3 stages"]),
    ];
    for (extra, needles) in cases {
        let mut args = vec!["explain", "--checkpoint", run_arg, "--out", out_arg];
        args.extend(extra);
        let output = ppcr(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(!stderr.contains("panicked"), "panic: {stderr}");
        assert!(stderr.contains("error:"), "no error line: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "'{needle}' missing from: {stderr}");
        }
        assert!(!out.exists(), "{args:?} wrote output before failing");
    }

    let output = ppcr([
        "explain",
        "--checkpoint",
        folder.path().to_str().unwrap(),
        "--out",
        out_arg,
        image_arg,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("not a ppcr run folder"), "{stderr}");
}

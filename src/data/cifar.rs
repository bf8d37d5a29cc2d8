//! CIFAR-10 and CIFAR-100 in their binary distribution format (Krizhevsky, "Learning Multiple
//! Layers of Features from Tiny Images", tech. report, University of Toronto, 2009).
//!
//! * CIFAR-10: `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`, records of
//!   1 label byte + 3072 pixel bytes; class names from `batches.meta.txt` when present.
//! * CIFAR-100: `train.bin` and `test.bin`, records of 1 coarse label byte + 1 fine label byte +
//!   3072 pixel bytes; the 100 fine labels are used; names from `fine_label_names.txt`.
//!
//! Pixels are planar (1024 red, 1024 green, then 1024 blue values, rows top to bottom) and are
//! interleaved here to 32 x 32 x 3. The folder may also be the one that holds the extracted
//! `cifar-10-batches-bin` or `cifar-100-binary` folder. CIFAR has no validation split, so a
//! seeded stratified `val_fraction` of the training set becomes validation.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::dataset::{Dataset, ImageShape, LoadOptions, Split};
use super::error::DataError;
use super::files::check_splits_usable;
use super::image_io::convert_raw;
use super::split::stratified_split;

const SIDE: usize = 32;
const PIXEL_BYTES: usize = SIDE * SIDE * 3;

const CIFAR10_TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];

/// Class names of CIFAR-10, used when `batches.meta.txt` is absent.
pub const CIFAR10_CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Fine class names of CIFAR-100, used when `fine_label_names.txt` is absent.
pub const CIFAR100_CLASS_NAMES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// Which CIFAR variant a folder holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Cifar10,
    Cifar100,
}

impl Variant {
    fn record_size(self) -> usize {
        match self {
            Variant::Cifar10 => 1 + PIXEL_BYTES,
            Variant::Cifar100 => 2 + PIXEL_BYTES,
        }
    }

    fn num_classes(self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 => 100,
        }
    }
}

/// The folder holding the batch files, if `path` (or its extracted subfolder) is a CIFAR set.
pub(crate) fn find_cifar_dir(path: &Path) -> Option<PathBuf> {
    let candidates = [
        path.to_path_buf(),
        path.join("cifar-10-batches-bin"),
        path.join("cifar-100-binary"),
    ];
    candidates.into_iter().find(|dir| detect(dir).is_some())
}

fn detect(dir: &Path) -> Option<Variant> {
    if dir.join("test_batch.bin").is_file() || dir.join("data_batch_1.bin").is_file() {
        Some(Variant::Cifar10)
    } else if dir.join("train.bin").is_file() && dir.join("test.bin").is_file() {
        Some(Variant::Cifar100)
    } else {
        None
    }
}

/// Loads a CIFAR-10/100 binary folder found by [`find_cifar_dir`].
pub(crate) fn load_cifar(dir: &Path, options: &LoadOptions) -> Result<Dataset, DataError> {
    let Some(variant) = detect(dir) else {
        return Err(DataError::UnrecognisedLayout {
            path: dir.to_path_buf(),
            reason: "no CIFAR batch files found".to_string(),
        });
    };
    let (train_files, test_files, name, names_file): (Vec<&str>, Vec<&str>, &str, &str) =
        match variant {
            Variant::Cifar10 => (
                CIFAR10_TRAIN_FILES.to_vec(),
                vec!["test_batch.bin"],
                "cifar10",
                "batches.meta.txt",
            ),
            Variant::Cifar100 => (
                vec!["train.bin"],
                vec!["test.bin"],
                "cifar100",
                "fine_label_names.txt",
            ),
        };
    let missing: Vec<&str> = train_files
        .iter()
        .chain(&test_files)
        .copied()
        .filter(|file| !dir.join(file).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(DataError::UnrecognisedLayout {
            path: dir.to_path_buf(),
            reason: format!(
                "this looks like a {name} binary folder but lacks {}",
                missing.join(", ")
            ),
        });
    }
    let class_names = read_class_names(dir, names_file, variant)?;
    let full_train = read_batches(dir, &train_files, variant, options)?;
    let test = read_batches(dir, &test_files, variant, options)?;
    let carved = stratified_split(
        &full_train.labels,
        options.val_fraction,
        0.0,
        options.split_seed,
    );
    let dataset = Dataset {
        name: name.to_string(),
        source: dir.to_path_buf(),
        class_names,
        train: full_train.subset(&carved.train),
        val: full_train.subset(&carved.val),
        test,
        skipped_files: Vec::new(),
    };
    check_splits_usable(&dataset)?;
    Ok(dataset)
}

fn read_class_names(dir: &Path, file: &str, variant: Variant) -> Result<Vec<String>, DataError> {
    let path = dir.join(file);
    let defaults: &[&str] = match variant {
        Variant::Cifar10 => &CIFAR10_CLASS_NAMES,
        Variant::Cifar100 => &CIFAR100_CLASS_NAMES,
    };
    if !path.is_file() {
        return Ok(defaults.iter().map(|name| name.to_string()).collect());
    }
    let text = std::fs::read_to_string(&path).map_err(|error| DataError::io(&path, error))?;
    parse_class_names(&text, path, variant)
}

/// Parses a class-name list (one name per line, blank lines ignored); `path` names the file in
/// errors.
fn parse_class_names(
    text: &str,
    path: PathBuf,
    variant: Variant,
) -> Result<Vec<String>, DataError> {
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect();
    if names.len() != variant.num_classes() {
        return Err(DataError::BadLabel {
            path,
            location: "class name list".to_string(),
            reason: format!(
                "lists {} class names, expected {} (one per line)",
                names.len(),
                variant.num_classes()
            ),
        });
    }
    Ok(names)
}

/// One record after conversion.
struct DecodedRecord {
    pixels: Vec<u8>,
    shape: ImageShape,
    label: usize,
}

/// Reads and concatenates batch files into one split, converting images as `options` ask.
fn read_batches(
    dir: &Path,
    files: &[&str],
    variant: Variant,
    options: &LoadOptions,
) -> Result<Split, DataError> {
    let mut split: Option<Split> = None;
    for file in files {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).map_err(|error| DataError::io(&path, error))?;
        for DecodedRecord {
            pixels,
            shape,
            label,
        } in decode_batch(&bytes, &path, variant, options)?
        {
            split
                .get_or_insert_with(|| Split::empty(shape))
                .push(&pixels, label);
        }
    }
    split.ok_or_else(|| DataError::UnrecognisedLayout {
        path: dir.to_path_buf(),
        reason: "no CIFAR records found".to_string(),
    })
}

/// Decodes one batch file's contents (whole records of a label byte or two and 3072 planar
/// pixel bytes), converting images as `options` ask; `path` names the file in errors.
fn decode_batch(
    bytes: &[u8],
    path: &Path,
    variant: Variant,
    options: &LoadOptions,
) -> Result<Vec<DecodedRecord>, DataError> {
    let record_size = variant.record_size();
    if bytes.is_empty() || !bytes.len().is_multiple_of(record_size) {
        return Err(DataError::CifarTruncated {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            record_size,
        });
    }
    let label_offset = record_size - PIXEL_BYTES - 1;
    bytes
        .par_chunks_exact(record_size)
        .enumerate()
        .map(|(record_index, record)| {
            let label = record[label_offset] as usize;
            if label >= variant.num_classes() {
                return Err(DataError::BadLabel {
                    path: path.to_path_buf(),
                    location: format!("record {record_index}"),
                    reason: format!(
                        "label {label} is out of range for {} classes",
                        variant.num_classes()
                    ),
                });
            }
            let pixels = planar_to_interleaved(&record[label_offset + 1..]);
            let shape = ImageShape::new(SIDE, SIDE, 3);
            let (pixels, shape) = convert_raw(pixels, shape, options.size, options.channels)
                .ok_or_else(|| DataError::BadImage {
                    path: path.to_path_buf(),
                    reason: format!("record {record_index}: cannot convert the image"),
                })?;
            Ok(DecodedRecord {
                pixels,
                shape,
                label,
            })
        })
        .collect()
}

/// Parses one CIFAR batch file's contents and, as a class-name list, `names`, for the fuzz
/// target; returns the number of records decoded and of class names read.
pub(crate) fn parse_cifar_for_fuzzing(
    batch: &[u8],
    names: &str,
    cifar100: bool,
    options: &LoadOptions,
) -> (Result<usize, DataError>, Result<usize, DataError>) {
    let variant = if cifar100 {
        Variant::Cifar100
    } else {
        Variant::Cifar10
    };
    let records = decode_batch(batch, Path::new("fuzz-batch.bin"), variant, options);
    let names = parse_class_names(names, PathBuf::from("fuzz-names.txt"), variant);
    (
        records.map(|records| records.len()),
        names.map(|names| names.len()),
    )
}

/// CIFAR stores each colour plane whole; decoders and augmentations here expect H x W x C.
fn planar_to_interleaved(planar: &[u8]) -> Vec<u8> {
    let plane = SIDE * SIDE;
    let mut interleaved = vec![0u8; PIXEL_BYTES];
    for (pixel, rgb) in interleaved.chunks_exact_mut(3).enumerate() {
        rgb[0] = planar[pixel];
        rgb[1] = planar[plane + pixel];
        rgb[2] = planar[2 * plane + pixel];
    }
    interleaved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_support::TempDir;

    /// A record whose pixel (row, col) has red = label*10 + row, green = col, blue = 255 - row.
    fn synthetic_record(variant: Variant, label: u8) -> Vec<u8> {
        let mut record = match variant {
            Variant::Cifar10 => vec![label],
            Variant::Cifar100 => vec![label / 5, label],
        };
        let mut planes = vec![0u8; PIXEL_BYTES];
        for row in 0..SIDE {
            for col in 0..SIDE {
                let pixel = row * SIDE + col;
                planes[pixel] = label.wrapping_mul(10).wrapping_add(row as u8);
                planes[1024 + pixel] = col as u8;
                planes[2048 + pixel] = 255 - row as u8;
            }
        }
        record.extend(planes);
        record
    }

    /// Train batches with `per_batch` records of labels cycling 0..10, one test batch of 10.
    fn write_cifar10(dir: &Path, per_batch: usize) {
        for file in CIFAR10_TRAIN_FILES {
            let bytes: Vec<u8> = (0..per_batch)
                .flat_map(|i| synthetic_record(Variant::Cifar10, (i % 10) as u8))
                .collect();
            std::fs::write(dir.join(file), bytes).unwrap();
        }
        let test: Vec<u8> = (0..10u8)
            .flat_map(|label| synthetic_record(Variant::Cifar10, label))
            .collect();
        std::fs::write(dir.join("test_batch.bin"), test).unwrap();
    }

    #[test]
    fn cifar100_has_one_hundred_distinct_class_names() {
        let unique: std::collections::BTreeSet<_> = CIFAR100_CLASS_NAMES.iter().collect();
        assert_eq!(unique.len(), 100);
    }

    #[test]
    fn cifar10_decodes_planar_rgb_labels_and_carves_validation() {
        let temp = TempDir::new("cifar10");
        write_cifar10(temp.path(), 20);
        let options = LoadOptions {
            val_fraction: 0.1,
            ..Default::default()
        };
        let dataset = crate::data::load(temp.path(), &options).unwrap();
        assert_eq!(dataset.name, "cifar10");
        assert_eq!(dataset.num_classes(), 10);
        assert_eq!(dataset.class_names[0], "airplane");
        assert_eq!(dataset.class_names[9], "truck");
        // 100 train records, 10 per class: 1 per class to validation.
        assert_eq!(
            (dataset.train.len(), dataset.val.len(), dataset.test.len()),
            (90, 10, 10)
        );
        assert_eq!(dataset.val.class_counts(10), vec![1; 10]);
        assert_eq!(dataset.image_shape(), ImageShape::new(32, 32, 3));
        assert_eq!(dataset.test.labels, (0..10).collect::<Vec<_>>());
        let image = dataset.test.image(7);
        let at = |row: usize, col: usize| &image[(row * 32 + col) * 3..(row * 32 + col) * 3 + 3];
        assert_eq!(at(0, 0), &[70, 0, 255]);
        assert_eq!(at(3, 5), &[73, 5, 252]);
        assert_eq!(at(31, 31), &[101, 31, 224]);
    }

    #[test]
    fn cifar_reads_meta_names_subfolder_and_converts_to_grey() {
        let temp = TempDir::new("cifar10_meta");
        let inner = temp.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&inner).unwrap();
        write_cifar10(&inner, 10);
        let names: String = (0..10).map(|i| format!("thing{i}\n")).collect();
        std::fs::write(inner.join("batches.meta.txt"), names + "\n").unwrap();
        let options = LoadOptions {
            channels: Some(1),
            size: Some(16),
            ..Default::default()
        };
        let dataset = crate::data::load(temp.path(), &options).unwrap();
        assert_eq!(dataset.class_names[3], "thing3");
        assert_eq!(dataset.image_shape(), ImageShape::new(16, 16, 1));
        assert_eq!(dataset.test.images.len(), 10 * 16 * 16);
    }

    #[test]
    fn cifar100_uses_fine_labels() {
        let temp = TempDir::new("cifar100");
        let train: Vec<u8> = (0..300)
            .flat_map(|i| synthetic_record(Variant::Cifar100, (i % 100) as u8))
            .collect();
        std::fs::write(temp.path().join("train.bin"), train).unwrap();
        let test: Vec<u8> = [99u8, 42, 0]
            .iter()
            .flat_map(|&label| synthetic_record(Variant::Cifar100, label))
            .collect();
        std::fs::write(temp.path().join("test.bin"), test).unwrap();
        let dataset = crate::data::load(temp.path(), &LoadOptions::default()).unwrap();
        assert_eq!(dataset.name, "cifar100");
        assert_eq!(dataset.num_classes(), 100);
        assert_eq!(dataset.test.labels, vec![99, 42, 0]);
        assert_eq!(dataset.class_names[99], "worm");
        assert_eq!(dataset.train.len() + dataset.val.len(), 300);
        assert_eq!(
            dataset.val.len(),
            100,
            "3 per class: one each to validation"
        );
    }

    #[test]
    fn truncated_cifar_batch_is_reported_with_its_length() {
        let temp = TempDir::new("cifar10_truncated");
        write_cifar10(temp.path(), 10);
        let path = temp.path().join("data_batch_3.bin");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let error = crate::data::load(temp.path(), &LoadOptions::default()).unwrap_err();
        assert!(
            matches!(&error, DataError::CifarTruncated { len, record_size: 3073, .. } if *len == 10 * 3073 - 100),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains("data_batch_3.bin") && message.contains("3073"),
            "{message}"
        );
    }

    #[test]
    fn cifar_label_out_of_range_names_the_record() {
        let temp = TempDir::new("cifar10_badlabel");
        write_cifar10(temp.path(), 10);
        let mut test = synthetic_record(Variant::Cifar10, 1);
        test.extend(synthetic_record(Variant::Cifar10, 12));
        std::fs::write(temp.path().join("test_batch.bin"), test).unwrap();
        let error = crate::data::load(temp.path(), &LoadOptions::default()).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("test_batch.bin") && message.contains("record 1"),
            "{message}"
        );
    }

    #[test]
    fn cifar_missing_batch_is_named() {
        let temp = TempDir::new("cifar10_missing");
        write_cifar10(temp.path(), 10);
        std::fs::remove_file(temp.path().join("data_batch_4.bin")).unwrap();
        let message = crate::data::load(temp.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(message.contains("lacks data_batch_4.bin"), "{message}");
    }
}

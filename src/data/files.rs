//! Turning a list of labelled image files (from an image folder or a CSV list) into a
//! [`Dataset`]: parallel decoding, the bad-file policy, size and channel consistency checks,
//! and the train/val/test assignment.

use std::path::PathBuf;

use rayon::prelude::*;

use super::dataset::{BadFilePolicy, Dataset, LoadOptions, Split};
use super::error::DataError;
use super::image_io::{LoadedImage, decode_image_file};
use super::split::{SplitIndices, stratified_split};

/// One of the three splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum SplitName {
    Train,
    Val,
    Test,
}

impl SplitName {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Val => "val",
            SplitName::Test => "test",
        }
    }

    /// Parses the usual spellings, ignoring case: train/training, val/valid/validation,
    /// test/testing.
    pub(crate) fn parse(text: &str) -> Option<SplitName> {
        match text.trim().to_ascii_lowercase().as_str() {
            "train" | "training" => Some(SplitName::Train),
            "val" | "valid" | "validation" => Some(SplitName::Val),
            "test" | "testing" => Some(SplitName::Test),
            _ => None,
        }
    }
}

/// An image file with its class index and, when the source says so, its split.
#[derive(Clone, Debug)]
pub(crate) struct LabelledFile {
    pub path: PathBuf,
    pub label: usize,
    pub split: Option<SplitName>,
    /// Where the file was listed, e.g. "line 7 of labels.csv", quoted in errors.
    pub listed_at: Option<String>,
}

/// `files` with every file once: the same file reached twice (a CSV row repeated, a symbolic
/// link into a sibling class folder) is an error naming both places, or with the skip policy a
/// warning that keeps the first. Files are compared by their canonical path, so links and
/// `a/../a` spellings of one file are the same file.
fn read_each_file_once(
    files: Vec<LabelledFile>,
    class_names: &[String],
    policy: BadFilePolicy,
) -> Result<Vec<LabelledFile>, DataError> {
    let canonical: Vec<PathBuf> = files
        .par_iter()
        .map(|file| std::fs::canonicalize(&file.path).unwrap_or_else(|_| file.path.clone()))
        .collect();
    let mut first_seen: std::collections::HashMap<&PathBuf, usize> =
        std::collections::HashMap::with_capacity(files.len());
    let mut keep = vec![true; files.len()];
    for (index, path) in canonical.iter().enumerate() {
        let Some(&first) = first_seen.get(path) else {
            first_seen.insert(path, index);
            continue;
        };
        let place = |file: &LabelledFile| {
            let class = class_names.get(file.label).map_or("?", String::as_str);
            match &file.listed_at {
                Some(listed_at) => format!("class '{class}' on {listed_at}"),
                None => format!("class '{class}' as {}", file.path.display()),
            }
        };
        let (a, b) = (&files[first], &files[index]);
        let reason = if a.label == b.label {
            format!("read twice, as {} and as {}", place(a), place(b))
        } else {
            format!("under two classes: {} and {}", place(a), place(b))
        };
        let error = DataError::DuplicateFile {
            path: path.clone(),
            reason,
        };
        if policy != BadFilePolicy::Skip {
            return Err(error);
        }
        // Keep the file where it lives: the occurrence reached through fewer symbolic links
        // (a link from one class folder into another loses), else the first.
        let (kept, dropped) = if links_in(&b.path) < links_in(&a.path) {
            first_seen.insert(path, index);
            (index, first)
        } else {
            (first, index)
        };
        eprintln!(
            "warning: skipping a repeated file, kept as {}: {error}",
            files[kept].path.display()
        );
        keep[dropped] = false;
    }
    Ok(files
        .into_iter()
        .zip(keep)
        .filter_map(|(file, keep)| keep.then_some(file))
        .collect())
}

/// How many of `path`'s components are symbolic links.
fn links_in(path: &std::path::Path) -> usize {
    path.ancestors()
        .filter(|ancestor| {
            std::fs::symlink_metadata(ancestor).is_ok_and(|meta| meta.file_type().is_symlink())
        })
        .count()
}

/// Decodes `files` in parallel and assembles the data set.
///
/// Either every file carries a split or none does. When none does, the split is drawn with
/// [`stratified_split`]; when some splits are absent (no validation folder, say), they are
/// carved out of the training files the same way.
pub(crate) fn dataset_from_files(
    name: String,
    source: PathBuf,
    class_names: Vec<String>,
    files: Vec<LabelledFile>,
    options: &LoadOptions,
) -> Result<Dataset, DataError> {
    let files = read_each_file_once(files, &class_names, options.on_bad_file)?;
    let total_files = files.len();
    let decoded: Vec<Result<LoadedImage, DataError>> = files
        .par_iter()
        .map(|file| {
            decode_image_file(&file.path, options.size, options.channels).map_err(|error| {
                match (error, &file.listed_at) {
                    (DataError::BadImage { path, reason }, Some(listed_at)) => {
                        DataError::BadImage {
                            path,
                            reason: format!("{reason} (listed on {listed_at})"),
                        }
                    }
                    (error, _) => error,
                }
            })
        })
        .collect();

    // Walk the results in file order so the reported error and the warnings are the same on
    // every run, whatever order the threads finished in.
    let mut kept: Vec<(LabelledFile, LoadedImage)> = Vec::with_capacity(total_files);
    let mut skipped_files = Vec::new();
    for (file, result) in files.into_iter().zip(decoded) {
        match result {
            Ok(image) => kept.push((file, image)),
            Err(error) if error.is_bad_file() && options.on_bad_file == BadFilePolicy::Skip => {
                eprintln!("warning: skipping unreadable image: {error}");
                skipped_files.push(file.path);
            }
            Err(error) => return Err(error),
        }
    }
    if kept.is_empty() {
        return Err(DataError::EmptySplit {
            path: source,
            split: "train".to_string(),
            hint: format!("; none of the {total_files} image files could be read"),
        });
    }
    check_consistent_images(&kept, options)?;

    let labels: Vec<usize> = kept.iter().map(|(file, _)| file.label).collect();
    let assignment = assign_splits(&kept, &labels, options, &source)?;
    let shape = kept[0].1.shape;
    let mut slots: Vec<Option<LoadedImage>> =
        kept.into_iter().map(|(_, image)| Some(image)).collect();
    let mut build_split = |indices: &[usize]| {
        let mut split = Split::empty(shape);
        split
            .images
            .reserve_exact(indices.len() * shape.num_values());
        for &index in indices {
            // Each image is taken once and dropped right after copying, so peak memory stays
            // near one copy of the data set rather than two.
            if let Some(image) = slots[index].take() {
                split.push(&image.pixels, labels[index]);
            }
        }
        split
    };
    let dataset = Dataset {
        name,
        source,
        class_names,
        train: build_split(&assignment.train),
        val: build_split(&assignment.val),
        test: build_split(&assignment.test),
        skipped_files,
    };
    check_splits_usable(&dataset)?;
    Ok(dataset)
}

/// With channels or size left free, all images must agree on them; the error names one
/// example file of each kind.
fn check_consistent_images(
    kept: &[(LabelledFile, LoadedImage)],
    options: &LoadOptions,
) -> Result<(), DataError> {
    let (first_file, first_image) = &kept[0];
    if options.channels.is_none()
        && let Some((other_file, other_image)) = kept
            .iter()
            .find(|(_, image)| image.stored_channels != first_image.stored_channels)
    {
        return Err(DataError::MixedChannels {
            first_path: first_file.path.clone(),
            first_channels: first_image.stored_channels,
            other_path: other_file.path.clone(),
            other_channels: other_image.stored_channels,
        });
    }
    let size_of = |image: &LoadedImage| (image.shape.width, image.shape.height);
    if let Some((other_file, other_image)) = kept
        .iter()
        .find(|(_, image)| size_of(image) != size_of(first_image))
    {
        return Err(DataError::MixedSizes {
            first_path: first_file.path.clone(),
            first_size: size_of(first_image),
            other_path: other_file.path.clone(),
            other_size: size_of(other_image),
        });
    }
    Ok(())
}

/// Indices (into `kept`) of each split: given splits are kept, missing ones are drawn.
fn assign_splits(
    kept: &[(LabelledFile, LoadedImage)],
    labels: &[usize],
    options: &LoadOptions,
    source: &std::path::Path,
) -> Result<SplitIndices, DataError> {
    if kept.iter().all(|(file, _)| file.split.is_none()) {
        return Ok(stratified_split(
            labels,
            options.val_fraction,
            options.test_fraction,
            options.split_seed,
        ));
    }
    let mut given = SplitIndices::default();
    for (index, (file, _)) in kept.iter().enumerate() {
        match file.split.unwrap_or(SplitName::Train) {
            SplitName::Train => given.train.push(index),
            SplitName::Val => given.val.push(index),
            SplitName::Test => given.test.push(index),
        }
    }
    if given.train.is_empty() {
        return Err(DataError::EmptySplit {
            path: source.to_path_buf(),
            split: "train".to_string(),
            hint: "; a data set with given splits needs training images (a train folder or rows \
                   whose split is train)"
                .to_string(),
        });
    }
    let carve_val = given.val.is_empty();
    let carve_test = given.test.is_empty();
    if carve_val || carve_test {
        let val_fraction = if carve_val { options.val_fraction } else { 0.0 };
        let test_fraction = if carve_test {
            options.test_fraction
        } else {
            0.0
        };
        let train_labels: Vec<usize> = given.train.iter().map(|&index| labels[index]).collect();
        let carved = stratified_split(
            &train_labels,
            val_fraction,
            test_fraction,
            options.split_seed,
        );
        let to_pool = |positions: &[usize]| -> Vec<usize> {
            positions
                .iter()
                .map(|&position| given.train[position])
                .collect()
        };
        if carve_val {
            given.val = to_pool(&carved.val);
        }
        if carve_test {
            given.test = to_pool(&carved.test);
        }
        given.train = to_pool(&carved.train);
    }
    Ok(given)
}

/// Every split must hold images and every class must be trainable.
pub(crate) fn check_splits_usable(dataset: &Dataset) -> Result<(), DataError> {
    for (split_name, split) in [
        ("train", &dataset.train),
        ("val", &dataset.val),
        ("test", &dataset.test),
    ] {
        if split.is_empty() {
            return Err(DataError::EmptySplit {
                path: dataset.source.clone(),
                split: split_name.to_string(),
                hint: "; each class needs at least 3 images to reach every split, or give the \
                       split explicitly (a folder or CSV split column); val_fraction and \
                       test_fraction must be above 0"
                    .to_string(),
            });
        }
    }
    let counts = dataset.train.class_counts(dataset.num_classes());
    if let Some(class) = counts.iter().position(|&count| count == 0) {
        return Err(DataError::ClassMismatch {
            path: dataset.source.clone(),
            reason: format!(
                "class '{}' has no training images; every class needs at least one",
                dataset.class_names[class]
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_parse_common_spellings() {
        assert_eq!(SplitName::parse(" Train "), Some(SplitName::Train));
        assert_eq!(SplitName::parse("VALIDATION"), Some(SplitName::Val));
        assert_eq!(SplitName::parse("valid"), Some(SplitName::Val));
        assert_eq!(SplitName::parse("testing"), Some(SplitName::Test));
        assert_eq!(SplitName::parse("holdout"), None);
        assert_eq!(SplitName::Val.as_str(), "val");
    }
}

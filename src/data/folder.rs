//! Image-folder data sets, the layout torchvision's `ImageFolder` reads:
//! `root/{train,val,test}/<class>/<image>` with the splits given, or `root/<class>/<image>`
//! with a seeded stratified split drawn at load time.
//!
//! Classes are the class folders sorted by name; with given splits, all split folders must hold
//! the same classes (a missing `val` or `test` folder is carved out of `train`). Images are found
//! recursively under each class folder by extension (PNG, JPEG, BMP, TIFF); hidden files and
//! folders (name starting with '.') are skipped, and other files are ignored with one note.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::dataset::{Dataset, LoadOptions};
use super::error::DataError;
use super::files::{LabelledFile, SplitName, dataset_from_files};
use super::image_io::has_image_extension;

/// A folder's name and path.
type NamedFolder = (String, PathBuf);

/// Deepest nesting searched below a class folder; guards against symlink loops.
const MAX_DEPTH: usize = 16;

/// Loads an image folder (either layout).
pub(crate) fn load_image_folder(root: &Path, options: &LoadOptions) -> Result<Dataset, DataError> {
    let subfolders = list_subfolders(root)?;
    if subfolders.is_empty() {
        return Err(DataError::UnrecognisedLayout {
            path: root.to_path_buf(),
            reason: "the folder has no subfolders (an image folder needs one folder per class)"
                .to_string(),
        });
    }
    let split_folders: Vec<(SplitName, &(String, PathBuf))> = subfolders
        .iter()
        .filter_map(|entry| SplitName::parse(&entry.0).map(|split| (split, entry)))
        .collect();
    let mut ignored = IgnoredFiles::default();
    let (class_names, files) = if split_folders.is_empty() {
        let class_names: Vec<String> = subfolders.iter().map(|(name, _)| name.clone()).collect();
        let mut files = Vec::new();
        for (label, (_, class_dir)) in subfolders.iter().enumerate() {
            for path in list_class_images(class_dir, &mut ignored)? {
                files.push(LabelledFile {
                    path,
                    label,
                    split: None,
                    listed_at: None,
                });
            }
        }
        (class_names, files)
    } else {
        load_split_layout(root, &subfolders, &split_folders, &mut ignored)?
    };
    ignored.report(root);
    let name = root.file_name().map_or_else(
        || "dataset".to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    dataset_from_files(name, root.to_path_buf(), class_names, files, options)
}

/// Reads `root/{train,val,test}/<class>/...`, checking the class folders agree.
fn load_split_layout(
    root: &Path,
    subfolders: &[(String, PathBuf)],
    split_folders: &[(SplitName, &(String, PathBuf))],
    ignored: &mut IgnoredFiles,
) -> Result<(Vec<String>, Vec<LabelledFile>), DataError> {
    let layout_error = |reason: String| DataError::UnrecognisedLayout {
        path: root.to_path_buf(),
        reason,
    };
    if split_folders.len() != subfolders.len() {
        let others: Vec<&str> = subfolders
            .iter()
            .filter(|(name, _)| SplitName::parse(name).is_none())
            .map(|(name, _)| name.as_str())
            .collect();
        return Err(layout_error(format!(
            "it mixes split folders ({}) with other folders ({}); use either \
             root/{{train,val,test}}/<class> or root/<class>",
            split_folders
                .iter()
                .map(|(_, (name, _))| name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            others.join(", ")
        )));
    }
    let mut seen = BTreeSet::new();
    for (split, (name, _)) in split_folders {
        if !seen.insert(*split) {
            return Err(layout_error(format!(
                "two folders name the {} split (one is '{name}'); keep one",
                split.as_str()
            )));
        }
    }

    let mut class_lists: Vec<(SplitName, &Path, Vec<NamedFolder>)> = Vec::new();
    for (split, (_, split_dir)) in split_folders {
        let classes = list_subfolders(split_dir)?;
        if classes.is_empty() {
            return Err(DataError::EmptySplit {
                path: split_dir.clone(),
                split: split.as_str().to_string(),
                hint: "; put one folder per class inside it, or remove it".to_string(),
            });
        }
        class_lists.push((*split, split_dir, classes));
    }
    class_lists.sort_by_key(|(split, _, _)| *split);
    let reference: Vec<String> = class_lists[0]
        .2
        .iter()
        .map(|(name, _)| name.clone())
        .collect();
    for (split, split_dir, classes) in &class_lists[1..] {
        let names: Vec<String> = classes.iter().map(|(name, _)| name.clone()).collect();
        if names != reference {
            let missing: Vec<&str> = reference
                .iter()
                .filter(|name| !names.contains(name))
                .map(String::as_str)
                .collect();
            let extra: Vec<&str> = names
                .iter()
                .filter(|name| !reference.contains(name))
                .map(String::as_str)
                .collect();
            return Err(DataError::ClassMismatch {
                path: root.to_path_buf(),
                reason: format!(
                    "the {} folder {} has different class folders than {}: missing [{}], extra [{}]; \
                     every split needs the same class folders",
                    split.as_str(),
                    split_dir.display(),
                    class_lists[0].0.as_str(),
                    missing.join(", "),
                    extra.join(", ")
                ),
            });
        }
    }

    let mut files = Vec::new();
    for (split, _, classes) in &class_lists {
        for (label, (_, class_dir)) in classes.iter().enumerate() {
            for path in list_class_images(class_dir, ignored)? {
                files.push(LabelledFile {
                    path,
                    label,
                    split: Some(*split),
                    listed_at: None,
                });
            }
        }
    }
    Ok((reference, files))
}

/// Non-hidden subfolders of `dir` (symlinks followed), sorted by name.
fn list_subfolders(dir: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    let mut folders = Vec::new();
    for entry in read_dir_sorted(dir)? {
        let name = entry
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.starts_with('.') && entry.is_dir() {
            folders.push((name, entry));
        }
    }
    Ok(folders)
}

/// Entries of `dir`, sorted by path so every listing (and hence every seeded split) is the same
/// whatever order the file system returns.
fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|error| DataError::io(dir, error))? {
        paths.push(entry.map_err(|error| DataError::io(dir, error))?.path());
    }
    paths.sort();
    Ok(paths)
}

/// Files with image extensions anywhere below `class_dir`, sorted; an empty result is an error.
fn list_class_images(
    class_dir: &Path,
    ignored: &mut IgnoredFiles,
) -> Result<Vec<PathBuf>, DataError> {
    let mut images = Vec::new();
    let mut visited = std::collections::HashSet::new();
    collect_images(class_dir, 0, &mut images, &mut visited, ignored)?;
    if images.is_empty() {
        return Err(DataError::EmptyClass {
            path: class_dir.to_path_buf(),
        });
    }
    Ok(images)
}

/// Image files below `dir`, depth first in name order. A folder reached again through a
/// symbolic link (a loop) is not walked twice; `visited` holds the canonical folders walked.
fn collect_images(
    dir: &Path,
    depth: usize,
    images: &mut Vec<PathBuf>,
    visited: &mut std::collections::HashSet<PathBuf>,
    ignored: &mut IgnoredFiles,
) -> Result<(), DataError> {
    let canonical = std::fs::canonicalize(dir).map_err(|error| DataError::io(dir, error))?;
    if !visited.insert(canonical) {
        return Ok(());
    }
    for path in read_dir_sorted(dir)? {
        let hidden = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            if depth < MAX_DEPTH {
                collect_images(&path, depth + 1, images, visited, ignored)?;
            }
        } else if has_image_extension(&path) {
            images.push(path);
        } else {
            ignored.add(path);
        }
    }
    Ok(())
}

/// Files passed over for their extension, reported once rather than once per file.
#[derive(Default)]
struct IgnoredFiles {
    count: usize,
    example: Option<PathBuf>,
}

impl IgnoredFiles {
    fn add(&mut self, path: PathBuf) {
        self.count += 1;
        self.example.get_or_insert(path);
    }

    fn report(&self, root: &Path) {
        if let Some(example) = &self.example {
            eprintln!(
                "note: {}: ignored {} file(s) without a PNG/JPEG/BMP/TIFF extension, e.g. {}",
                root.display(),
                self.count,
                example.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::{BadFilePolicy, ImageShape};
    use crate::data::load;
    use crate::data::test_support::{TempDir, copy_tree, fixtures, shared_data};

    const CLASSES: [&str; 3] = ["basophil", "erythroblast", "platelet"];

    fn pbc_mini() -> PathBuf {
        fixtures().join("pbc_mini")
    }

    /// The 15 fixture images rearranged as root/<class>/<image>.
    fn flat_copy(temp: &TempDir) -> PathBuf {
        let root = temp.path().join("pbc_flat");
        for split in ["train", "val", "test"] {
            for class in CLASSES {
                copy_tree(&pbc_mini().join(split).join(class), &root.join(class));
            }
        }
        root
    }

    fn write_png(path: &Path, width: u32, height: u32, grey: bool) {
        if grey {
            image::GrayImage::from_pixel(width, height, image::Luma([90]))
                .save(path)
                .unwrap();
        } else {
            image::RgbImage::from_pixel(width, height, image::Rgb([9, 99, 199]))
                .save(path)
                .unwrap();
        }
    }

    #[test]
    fn split_folder_layout_keeps_the_given_splits() {
        let dataset = load(&pbc_mini(), &LoadOptions::default()).unwrap();
        assert_eq!(dataset.name, "pbc_mini");
        assert_eq!(dataset.class_names, CLASSES);
        assert_eq!(
            (dataset.train.len(), dataset.val.len(), dataset.test.len()),
            (9, 3, 3)
        );
        assert_eq!(dataset.train.class_counts(3), vec![3, 3, 3]);
        assert_eq!(dataset.val.labels, vec![0, 1, 2]);
        assert_eq!(dataset.image_shape(), ImageShape::new(128, 128, 3));
        assert!(dataset.skipped_files.is_empty());

        let small = load(
            &pbc_mini(),
            &LoadOptions {
                size: Some(32),
                channels: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(small.image_shape(), ImageShape::new(32, 32, 1));
        assert_eq!(small.test.images.len(), 3 * 32 * 32);
    }

    #[test]
    fn links_are_followed_once_and_a_file_under_two_classes_is_refused() {
        let temp = TempDir::new("links");
        let root = flat_copy(&temp);
        // A loop inside a class folder: its images are still read once.
        std::os::unix::fs::symlink(root.join("basophil"), root.join("basophil/again")).unwrap();
        let dataset = load(&root, &LoadOptions::default()).unwrap();
        let total = dataset.train.len() + dataset.val.len() + dataset.test.len();
        assert_eq!(total, 15, "5 images in each of 3 classes, each read once");

        // A link from one class into another: the same files under two labels.
        std::os::unix::fs::symlink(root.join("platelet"), root.join("erythroblast/platelets"))
            .unwrap();
        let error = load(&root, &LoadOptions::default()).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, DataError::DuplicateFile { .. }), "{text}");
        assert!(
            text.contains("under two classes: class 'erythroblast'")
                && text.contains("and class 'platelet'"),
            "{text}"
        );
        let skipping = LoadOptions {
            on_bad_file: BadFilePolicy::Skip,
            ..Default::default()
        };
        let dataset = load(&root, &skipping).unwrap();
        let total = dataset.train.len() + dataset.val.len() + dataset.test.len();
        assert_eq!(total, 15, "one of each pair kept");
        let counts: Vec<usize> = [&dataset.train, &dataset.val, &dataset.test]
            .iter()
            .map(|split| split.class_counts(3))
            .fold(vec![0; 3], |sum, c| {
                sum.iter().zip(c).map(|(a, b)| a + b).collect()
            });
        assert_eq!(
            counts,
            vec![5, 5, 5],
            "each kept under the class folder it lives in"
        );
    }

    #[test]
    fn flat_layout_draws_a_seeded_stratified_split() {
        let temp = TempDir::new("flat");
        let root = flat_copy(&temp);
        // Hidden files and folders are not images and not classes.
        std::fs::write(root.join("basophil/.DS_Store"), b"junk").unwrap();
        std::fs::create_dir(root.join(".cache")).unwrap();
        std::fs::write(root.join("README.txt"), b"notes").unwrap();
        let options = LoadOptions {
            split_seed: 1,
            ..Default::default()
        };
        let dataset = load(&root, &options).unwrap();
        assert_eq!(dataset.class_names, CLASSES);
        // 5 images per class: 3 train, 1 val, 1 test.
        assert_eq!(
            (dataset.train.len(), dataset.val.len(), dataset.test.len()),
            (9, 3, 3)
        );
        assert_eq!(dataset.test.class_counts(3), vec![1, 1, 1]);
        let again = load(&root, &options).unwrap();
        assert_eq!(again.test, dataset.test);
        let differs = (2..12).any(|seed| {
            let other = load(
                &root,
                &LoadOptions {
                    split_seed: seed,
                    ..Default::default()
                },
            )
            .unwrap();
            other.test.images != dataset.test.images
        });
        assert!(differs, "another seed draws another split");
    }

    #[test]
    fn bad_files_fail_or_are_skipped_by_policy() {
        let temp = TempDir::new("bad_files");
        let root = temp.path().join("data");
        copy_tree(&pbc_mini(), &root);
        std::fs::copy(
            fixtures().join("bad/truncated.jpg"),
            root.join("train/basophil/truncated.jpg"),
        )
        .unwrap();
        std::fs::copy(
            fixtures().join("bad/not_an_image.jpg"),
            root.join("val/platelet/not_an_image.jpg"),
        )
        .unwrap();

        let error = load(&root, &LoadOptions::default()).unwrap_err();
        assert!(matches!(error, DataError::BadImage { .. }), "{error}");
        assert!(
            error.to_string().contains("train/basophil/truncated.jpg"),
            "{error}"
        );

        let skip = LoadOptions {
            on_bad_file: BadFilePolicy::Skip,
            ..Default::default()
        };
        let dataset = load(&root, &skip).unwrap();
        assert_eq!(
            (dataset.train.len(), dataset.val.len(), dataset.test.len()),
            (9, 3, 3)
        );
        assert_eq!(dataset.skipped_files.len(), 2);
        assert!(dataset.skipped_files[1].ends_with("val/platelet/not_an_image.jpg"));
        assert!(dataset.summary().contains("2 unreadable files skipped"));

        std::fs::remove_file(root.join("train/basophil/truncated.jpg")).unwrap();
        let message = load(&root, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("not_an_image.jpg") && message.contains("not a PNG, JPEG"),
            "{message}"
        );
    }

    #[test]
    fn mixed_channels_and_sizes_name_an_example_of_each() {
        let temp = TempDir::new("mixed");
        let root = temp.path().join("data");
        copy_tree(&pbc_mini(), &root);
        let grey = root.join("train/erythroblast/grey.png");
        write_png(&grey, 128, 128, true);
        let error = load(&root, &LoadOptions::default()).unwrap_err();
        let DataError::MixedChannels {
            first_channels: 3,
            other_channels: 1,
            other_path,
            ..
        } = &error
        else {
            panic!("{error}");
        };
        assert_eq!(other_path, &grey);
        let forced = load(
            &root,
            &LoadOptions {
                channels: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(forced.train.len(), 10);

        std::fs::remove_file(&grey).unwrap();
        let small = root.join("test/platelet/small.png");
        write_png(&small, 64, 48, false);
        let error = load(&root, &LoadOptions::default()).unwrap_err();
        assert!(
            matches!(&error, DataError::MixedSizes { first_size: (128, 128), other_size: (64, 48), other_path, .. } if *other_path == small),
            "{error}"
        );
        let resized = load(
            &root,
            &LoadOptions {
                size: Some(40),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(resized.image_shape(), ImageShape::new(40, 40, 3));
        assert_eq!(resized.test.len(), 4);
    }

    #[test]
    fn layout_problems_are_explained() {
        let temp = TempDir::new("layouts");
        // Class missing from one split.
        let root = temp.path().join("mismatch");
        copy_tree(&pbc_mini(), &root);
        std::fs::remove_dir_all(root.join("val/platelet")).unwrap();
        let message = load(&root, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("missing [platelet]") && message.contains("val"),
            "{message}"
        );

        // Empty class folder.
        let flat = flat_copy(&temp);
        std::fs::create_dir(flat.join("monocyte")).unwrap();
        std::fs::write(flat.join("monocyte/notes.txt"), b"no images").unwrap();
        let error = load(&flat, &LoadOptions::default()).unwrap_err();
        assert!(
            matches!(&error, DataError::EmptyClass { path } if path.ends_with("monocyte")),
            "{error}"
        );

        // Split folders next to class folders.
        let mixed = temp.path().join("mixed");
        copy_tree(&pbc_mini(), &mixed);
        std::fs::create_dir(mixed.join("extra_class")).unwrap();
        let message = load(&mixed, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("mixes split folders") && message.contains("extra_class"),
            "{message}"
        );

        // No validation folder: carved out of train.
        let no_val = temp.path().join("no_val");
        copy_tree(&pbc_mini(), &no_val);
        std::fs::remove_dir_all(no_val.join("val")).unwrap();
        let dataset = load(&no_val, &LoadOptions::default()).unwrap();
        assert_eq!(
            (dataset.train.len(), dataset.val.len(), dataset.test.len()),
            (6, 3, 3)
        );

        // Too few images per class to fill every split.
        let tiny = temp.path().join("tiny");
        for class in CLASSES {
            copy_tree(&pbc_mini().join("val").join(class), &tiny.join(class));
        }
        let error = load(&tiny, &LoadOptions::default()).unwrap_err();
        assert!(
            matches!(&error, DataError::EmptySplit { split, .. } if split == "val"),
            "{error}"
        );
    }

    #[test]
    fn full_pbc_folder_at_size_32() {
        let Some(shared) = shared_data() else {
            return;
        };
        let root = shared.join("pbc128");
        if !root.is_dir() {
            crate::attention::testing::skip(&format!("{} is absent", root.display()));
            return;
        }
        let options = LoadOptions {
            size: Some(32),
            ..Default::default()
        };
        let dataset = load(&root, &options).unwrap();
        // Files on disk (and the README's per-class table) give 3416 test images; the README's
        // headline total of 17,074 is 2 short of the 17,076 files present.
        assert_eq!(
            (dataset.train.len(), dataset.val.len(), dataset.test.len()),
            (11953, 1707, 3416)
        );
        assert_eq!(
            dataset.class_names,
            [
                "basophil",
                "eosinophil",
                "erythroblast",
                "ig",
                "lymphocyte",
                "monocyte",
                "neutrophil",
                "platelet"
            ]
        );
        assert_eq!(
            dataset.train.class_counts(8),
            vec![848, 2178, 1086, 2024, 850, 993, 2330, 1644]
        );
        assert_eq!(
            dataset.test.class_counts(8),
            vec![243, 622, 310, 579, 243, 284, 666, 469]
        );
        assert_eq!(dataset.image_shape(), ImageShape::new(32, 32, 3));
    }
}

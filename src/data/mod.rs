//! Data loading for image classification: MedMNIST `.npz` files, image folders, CSV lists and
//! CIFAR binaries become one in-memory [`Dataset`] of u8 images with train/val/test splits;
//! [`augment`] and [`batch`] turn its images into normalised f32 training batches.
//!
//! This layer knows no model and no deep-learning framework: batches are plain `Vec<f32>` in
//! N x C x H x W order. Bad input never panics; it becomes a [`DataError`] naming the file.
//!
//! The built-in demo set is BreastMNIST from MedMNIST v2 (Yang et al., Scientific Data 2023),
//! derived from the BUSI breast ultrasound images (Al-Dhabyani et al., Data in Brief 2020),
//! CC BY 4.0.

pub mod augment;
pub mod batch;
mod cifar;
mod csv_list;
mod dataset;
mod error;
mod files;
mod folder;
mod image_io;
mod isic;
mod npz;
pub mod split;
mod test_time_augmentation;

use std::path::Path;

pub use augment::AugmentConfig;
pub use batch::{Normalization, make_batch};
pub(crate) use cifar::parse_cifar_for_fuzzing as cifar_from_bytes;
pub use cifar::{CIFAR10_CLASS_NAMES, CIFAR100_CLASS_NAMES};
pub use dataset::{BadFilePolicy, Dataset, ImageShape, LoadOptions, MAX_IMAGE_SIZE, Split};
pub use error::{ACCEPTED_LAYOUTS, DataError};
pub use npz::MEDMNIST_CLASS_NAMES;
pub(crate) use npz::load_npz_bytes as npz_from_bytes;

/// Decodes an image file's contents as the loader does (for the fuzz targets); returns the
/// converted shape as (height, width, channels).
pub(crate) fn image_from_bytes(
    bytes: &[u8],
    size: Option<usize>,
    channels: Option<usize>,
) -> Result<(usize, usize, usize), DataError> {
    let image = image_io::decode_image_bytes(bytes, Path::new("fuzz-image"), size, channels)?;
    Ok((image.shape.height, image.shape.width, image.shape.channels))
}

/// Parses a CSV list's contents as if read from `csv_path` (for the fuzz targets); returns the
/// number of classes and of listed files.
pub(crate) fn csv_from_reader(bytes: &[u8], csv_path: &Path) -> Result<(usize, usize), DataError> {
    let base_dir = csv_path.parent().unwrap_or_else(|| Path::new(""));
    let (classes, files) = csv_list::parse_csv(bytes, csv_path, base_dir)?;
    Ok((classes.len(), files.len()))
}
pub use split::{SplitIndices, stratified_split};
pub use test_time_augmentation::TestTimeAugmentation;

/// BreastMNIST (28 x 28 grey, 2 classes, 546/78/156 images), shipped inside the binary.
const BREASTMNIST_NPZ: &[u8] = include_bytes!("../../assets/breastmnist.npz");

/// Loads a data set from `path`, deciding by what the path is:
///
/// 1. a `.npz` file: a MedMNIST subset (any size; grey `(N,H,W)` or RGB `(N,H,W,3)` uint8;
///    single-label `(N,1)` labels; its own train/val/test split);
/// 2. a `.csv` file with rows `path,label[,split]`: an optional header row; paths relative to
///    the CSV's folder; labels either all class names (sorted into classes) or all class
///    indices `0..k-1`; split `train`/`val`/`test` per row, or no split column at all;
/// 3. a folder with CIFAR-10/100 binary batches (or the folder holding the extracted
///    `cifar-10-batches-bin` / `cifar-100-binary`); validation is carved out of train;
/// 4. any other folder: an image folder, `root/{train,val,test}/<class>/*` (a missing `val`
///    or `test` folder is carved out of `train`) or `root/<class>/*`; classes sorted by name.
///
/// Splits the source does not give are drawn with [`stratified_split`] using
/// `options.split_seed`, `val_fraction` and `test_fraction` (of the pool being split).
/// Images are resized and converted as `options.size` and `options.channels` say, and
/// unreadable image files are handled by `options.on_bad_file`.
pub fn load(path: &Path, options: &LoadOptions) -> Result<Dataset, DataError> {
    options.validate()?;
    let metadata = std::fs::metadata(path).map_err(|error| DataError::io(path, error))?;
    if metadata.is_dir() {
        if let Some(cifar_dir) = cifar::find_cifar_dir(path) {
            return cifar::load_cifar(&cifar_dir, options);
        }
        if isic::is_isic_root(path) {
            return isic::load_isic(path, options);
        }
        return folder::load_image_folder(path, options)
            .map_err(|error| explain_folder_without_subfolders(path, error));
    }
    let extension = path
        .extension()
        .and_then(|extension| extension.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match extension.as_str() {
        "npz" => npz::load_npz_file(path, options),
        "csv" => csv_list::load_csv(path, options),
        _ if image_io::has_image_extension(path) => Err(DataError::UnrecognisedLayout {
            path: path.to_path_buf(),
            reason: "this is a single image, not a data set (use load_image_file to read one \
                     image for prediction)"
                .to_string(),
        }),
        _ => Err(DataError::UnrecognisedLayout {
            path: path.to_path_buf(),
            reason: format!(
                "a file with extension '{extension}' (expected .npz or .csv, or a folder)"
            ),
        }),
    }
}

/// Points at a data file when a folder without class folders holds exactly one.
fn explain_folder_without_subfolders(path: &Path, error: DataError) -> DataError {
    let DataError::UnrecognisedLayout {
        path: error_path,
        reason,
    } = error
    else {
        return error;
    };
    let data_files: Vec<String> = std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|file| {
            file.extension()
                .and_then(|extension| extension.to_str())
                .is_some_and(|extension| {
                    extension.eq_ignore_ascii_case("npz") || extension.eq_ignore_ascii_case("csv")
                })
        })
        .map(|file| file.display().to_string())
        .collect();
    let reason = match data_files.as_slice() {
        [only] => format!("{reason}; it contains {only}: pass that file instead"),
        _ => reason,
    };
    DataError::UnrecognisedLayout {
        path: error_path,
        reason,
    }
}

/// The built-in BreastMNIST data set (MedMNIST v2; 28 x 28 grey breast ultrasound images;
/// class 0 "malignant", class 1 "normal, benign"; train 546 / val 78 / test 156), embedded in
/// the binary so the demo runs without any download.
///
/// `options.size` and `options.channels` apply (e.g. size 64 or 3 channels for a pretrained
/// RGB network); the split is MedMNIST's own, so the split options are not used.
pub fn builtin_breastmnist(options: &LoadOptions) -> Result<Dataset, DataError> {
    options.validate()?;
    npz::load_npz_bytes(
        BREASTMNIST_NPZ,
        Path::new("builtin:breastmnist.npz"),
        "breastmnist",
        options,
    )
}

/// Reads one image file for prediction, converted exactly as training images are: resized to
/// `size x size` and converted to `channels` (1 or 3) channels, returned H x W x C interleaved.
pub fn load_image_file(path: &Path, size: usize, channels: usize) -> Result<Vec<u8>, DataError> {
    LoadOptions {
        size: Some(size),
        channels: Some(channels),
        ..LoadOptions::default()
    }
    .validate()?;
    if !path.exists() {
        return Err(DataError::NotFound {
            path: path.to_path_buf(),
        });
    }
    image_io::decode_image_file(path, Some(size), Some(channels)).map(|image| image.pixels)
}

/// Reads one image file at its own size as 8-bit RGB (grey replicated, alpha dropped), H x W x 3
/// interleaved with its shape, for drawing results over the image as the user sees it.
pub fn load_image_file_rgb(path: &Path) -> Result<(Vec<u8>, ImageShape), DataError> {
    if !path.exists() {
        return Err(DataError::NotFound {
            path: path.to_path_buf(),
        });
    }
    image_io::decode_image_file(path, None, Some(3)).map(|image| (image.pixels, image.shape))
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Paths to fixtures and a self-deleting temporary folder for the data tests.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The crate root (where Cargo.toml is).
    pub fn project_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// `tests/fixtures/data` under the crate root.
    pub fn fixtures() -> PathBuf {
        project_root().join("tests/fixtures/data")
    }

    /// The real data sets shared beside the project, if this machine has them.
    pub fn shared_data() -> Option<PathBuf> {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data"));
        if dir.is_dir() {
            Some(dir)
        } else {
            crate::attention::testing::skip(&format!(
                "{} is absent (the full PBC data set)",
                dir.display()
            ));
            None
        }
    }

    /// A fresh folder under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(label: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "ppcr-data-test-{}-{}-{label}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Copies a folder tree.
    pub fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_tree(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{TempDir, fixtures};
    use super::*;

    #[test]
    fn missing_path_is_reported_as_not_found() {
        let error = load(Path::new("/no/such/dataset"), &LoadOptions::default()).unwrap_err();
        assert!(matches!(error, DataError::NotFound { .. }), "{error}");
        assert!(error.to_string().contains("/no/such/dataset"));
    }

    #[test]
    fn unrecognised_inputs_list_the_accepted_layouts() {
        let temp = TempDir::new("unrecognised");
        let text_file = temp.path().join("notes.txt");
        std::fs::write(&text_file, "hello").unwrap();
        let message = load(&text_file, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("notes.txt") && message.contains(ACCEPTED_LAYOUTS),
            "{message}"
        );

        // A folder without class folders, holding one data file: point at it.
        std::fs::copy(
            fixtures().join("pbc_mini.csv"),
            temp.path().join("labels.csv"),
        )
        .unwrap();
        let message = load(temp.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("labels.csv: pass that file instead"),
            "{message}"
        );

        let image = fixtures().join("pbc_mini/test/platelet/PLATELET_459043.jpg");
        let message = load(&image, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(message.contains("single image"), "{message}");
    }

    #[test]
    fn invalid_options_are_refused_before_reading() {
        let options = LoadOptions {
            channels: Some(4),
            ..Default::default()
        };
        assert!(matches!(
            builtin_breastmnist(&options),
            Err(DataError::InvalidOptions { .. })
        ));
    }

    #[test]
    fn load_image_file_resizes_and_converts() {
        let image = fixtures().join("pbc_mini/train/basophil/BA_184682.jpg");
        let rgb = load_image_file(&image, 32, 3).unwrap();
        assert_eq!(rgb.len(), 32 * 32 * 3);
        let grey = load_image_file(&image, 16, 1).unwrap();
        assert_eq!(grey.len(), 16 * 16);
        let missing = load_image_file(Path::new("/no/such.png"), 32, 3).unwrap_err();
        assert!(matches!(missing, DataError::NotFound { .. }));
        let not_image = load_image_file(&fixtures().join("bad/not_an_image.jpg"), 32, 3);
        assert!(matches!(not_image, Err(DataError::BadImage { .. })));
    }
}

//! The one error type of the data layer.
//!
//! Every message names the file (and where useful the line, record or array) and the problem,
//! and says what to do where there is something to do, because the person reading it is usually
//! a researcher pointing the tool at their own data for the first time.

use std::path::PathBuf;

/// What the data layer accepts as input; quoted by errors about unrecognised inputs.
pub const ACCEPTED_LAYOUTS: &str = "accepted inputs are: a MedMNIST .npz file; an image folder \
laid out as root/{train,val,test}/<class>/<image> or root/<class>/<image> (PNG, JPEG, BMP or TIFF); \
a .csv file with rows path,label[,split]; a CIFAR-10/100 binary folder \
(data_batch_1.bin..data_batch_5.bin + test_batch.bin, or train.bin + test.bin); or an ISIC 2018 \
Task 3 folder (ISIC2018_Task3_Training_Input/ and \
ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv, with the Validation \
and Test sets where present)";

/// Everything that can go wrong while loading or checking a data set.
///
/// Loading never panics on bad input; each failure becomes one of these variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The given path does not exist.
    #[error("{}: no such file or folder (check the path; relative paths are taken from the current directory)", path.display())]
    NotFound {
        /// The missing path.
        path: PathBuf,
    },

    /// An operating-system error while reading a file or listing a folder.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file or folder being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The path exists but matches none of the supported layouts.
    #[error("{}: not a recognised data set: {reason}; {ACCEPTED_LAYOUTS}", path.display())]
    UnrecognisedLayout {
        /// The path given to `load`.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },

    /// A `LoadOptions` or augmentation setting is out of its valid range.
    #[error("invalid option: {reason}")]
    InvalidOptions {
        /// Which setting and why.
        reason: String,
    },

    /// The `.npz` archive is truncated, not a zip file, or otherwise unreadable.
    #[error("{}: truncated or corrupt .npz file: {reason}; re-download or re-export it (numpy.savez / numpy.savez_compressed)", path.display())]
    CorruptNpz {
        /// The archive.
        path: PathBuf,
        /// What the reader found.
        reason: String,
    },

    /// A required array is missing from the `.npz` archive.
    #[error("{}: no array '{key}' in the .npz file (arrays present: {}); a MedMNIST file has train_images, train_labels, val_images, val_labels, test_images and test_labels", path.display(), if present.is_empty() { "none".to_string() } else { present.join(", ") })]
    MissingKey {
        /// The archive.
        path: PathBuf,
        /// The array that was looked for.
        key: String,
        /// The arrays the archive does hold.
        present: Vec<String>,
    },

    /// An array in the `.npz` archive has the wrong dtype, shape or layout.
    #[error("{}: array '{key}': {reason}", path.display())]
    BadArray {
        /// The archive.
        path: PathBuf,
        /// The array.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An array header declares more data than the file can hold; refused before allocating.
    #[error("{}: array '{key}' declares {declared} bytes but the file can hold at most {available}; the file is truncated or corrupt (nothing was allocated for it)", path.display())]
    DeclaredSizeTooLarge {
        /// The archive.
        path: PathBuf,
        /// The array.
        key: String,
        /// Bytes the header claims.
        declared: u64,
        /// Bytes the file can actually provide.
        available: u64,
    },

    /// The labels carry several columns per image (a multi-label set such as ChestMNIST).
    #[error("{}: '{key}' has {columns} label columns per image, i.e. a multi-label data set (like ChestMNIST); only single-label multi-class data is supported: reduce it to one class index per image first", path.display())]
    MultiLabel {
        /// The archive.
        path: PathBuf,
        /// The label array.
        key: String,
        /// Number of label columns found.
        columns: u64,
    },

    /// A file in an image folder or CSV list is missing, corrupt or not an image.
    #[error("{}: {reason}", path.display())]
    BadImage {
        /// The image file.
        path: PathBuf,
        /// What the decoder said, plus where the file was listed when that helps.
        reason: String,
    },

    /// The same image file is reached twice (a repeated CSV row, a link into another class).
    #[error("{}: {reason}; each image must be listed once, under one class (--skip-bad-files keeps the first)", path.display())]
    DuplicateFile {
        /// The file (its canonical path).
        path: PathBuf,
        /// Where it was reached, and whether under one class or two.
        reason: String,
    },

    /// A label is out of range or not a number.
    #[error("{}: {location}: {reason}", path.display())]
    BadLabel {
        /// The file holding the label.
        path: PathBuf,
        /// Line, record or array element, e.g. "line 7" or "record 12".
        location: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A CSV file is malformed (wrong number of columns, unknown split name, ...).
    #[error("{}: line {line}: {reason}", path.display())]
    BadCsv {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong with the line.
        reason: String,
    },

    /// Images have different channel counts and `LoadOptions::channels` was not set.
    #[error("images have mixed channel counts: {} has {first_channels} and {} has {other_channels}; set the channels option to 1 or 3 to convert all images", first_path.display(), other_path.display())]
    MixedChannels {
        /// An example image of the first kind.
        first_path: PathBuf,
        /// Its channel count.
        first_channels: usize,
        /// An example image of the other kind.
        other_path: PathBuf,
        /// Its channel count.
        other_channels: usize,
    },

    /// Images have different sizes and `LoadOptions::size` was not set.
    #[error("images have mixed sizes: {} is {}x{} and {} is {}x{} (width x height); set the size option to resize all images", first_path.display(), first_size.0, first_size.1, other_path.display(), other_size.0, other_size.1)]
    MixedSizes {
        /// An example image of the first size.
        first_path: PathBuf,
        /// Its (width, height).
        first_size: (usize, usize),
        /// An example image of another size.
        other_path: PathBuf,
        /// Its (width, height).
        other_size: (usize, usize),
    },

    /// A class folder holds no images.
    #[error("{}: class folder contains no images (PNG, JPEG, BMP or TIFF); remove it or add images", path.display())]
    EmptyClass {
        /// The class folder.
        path: PathBuf,
    },

    /// The class folders differ between the train, val and test folders.
    #[error("{}: {reason}", path.display())]
    ClassMismatch {
        /// The data set root.
        path: PathBuf,
        /// Which classes are missing where.
        reason: String,
    },

    /// A split ended up with no images.
    #[error("{}: the {split} split has no images{hint}", path.display())]
    EmptySplit {
        /// The data set.
        path: PathBuf,
        /// "train", "val" or "test".
        split: String,
        /// What to do about it (starts with "; " when present).
        hint: String,
    },

    /// A CIFAR binary file whose length is not a whole number of records.
    #[error("{}: {len} bytes is not a multiple of the {record_size}-byte CIFAR record; the file is truncated or not a CIFAR binary batch", path.display())]
    CifarTruncated {
        /// The batch file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
        /// Expected record size (3073 for CIFAR-10, 3074 for CIFAR-100).
        record_size: usize,
    },
}

impl DataError {
    /// Whether the `Skip` policy may step over this error: only problems confined to one image
    /// file are skippable; anything about the data set as a whole is not.
    pub fn is_bad_file(&self) -> bool {
        matches!(self, DataError::BadImage { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound { path }
        } else {
            DataError::Io { path, source }
        }
    }
}

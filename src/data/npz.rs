//! MedMNIST `.npz` files (Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for
//! 2D and 3D biomedical image classification", Scientific Data 10, 41, 2023).
//!
//! Every 2D MedMNIST subset, at any of its sizes (28, 64, 128, 224), stores the arrays
//! `{train,val,test}_images` as uint8 `(N, H, W)` (grey) or `(N, H, W, 3)` (RGB) and
//! `{train,val,test}_labels` as integers `(N, 1)`. Multi-label subsets (ChestMNIST, labels
//! `(N, 14)`) and 3D volumes are refused with a message saying so.
//!
//! The archive is read with `npyz` (and the `zip` crate it re-exports). Because a `.npz` may come
//! from anywhere, every size an array declares is checked against what the file can hold before
//! anything is allocated for it: a stored entry cannot exceed the file, and a deflated one cannot
//! expand beyond DEFLATE's maximum ratio of 1032:1.

use std::io::{self, Read, Seek};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use npyz::npz::NpzArchive;
use npyz::zip::CompressionMethod;
use npyz::{DType, NpyFile, NpyHeader, Order, TypeChar};
use rayon::prelude::*;

use super::dataset::{Dataset, ImageShape, LoadOptions, Split};
use super::error::DataError;
use super::files::check_splits_usable;
use super::image_io::convert_raw;

/// DEFLATE cannot expand data by more than this factor (RFC 1951 worst case is about 1032:1).
const MAX_DEFLATE_RATIO: u64 = 1032;

/// numpy writes headers of a few hundred bytes; anything near this is not a real header.
const MAX_NPY_HEADER_BYTES: u64 = 1 << 20;

/// Largest accepted class index; a bigger one means a corrupt or non-label array.
const MAX_CLASS_INDEX: i64 = 65_535;

/// Class names of the 2D MedMNIST v2 subsets, from the `medmnist` package's `INFO` table.
pub const MEDMNIST_CLASS_NAMES: &[(&str, &[&str])] = &[
    (
        "pathmnist",
        &[
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth muscle",
            "normal colon mucosa",
            "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ],
    ),
    (
        "dermamnist",
        &[
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ],
    ),
    (
        "octmnist",
        &[
            "choroidal neovascularization",
            "diabetic macular edema",
            "drusen",
            "normal",
        ],
    ),
    ("pneumoniamnist", &["normal", "pneumonia"]),
    ("breastmnist", &["malignant", "normal, benign"]),
    (
        "bloodmnist",
        &[
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ],
    ),
    (
        "tissuemnist",
        &[
            "Collecting Duct, Connecting Tubule",
            "Distal Convoluted Tubule",
            "Glomerular endothelial cells",
            "Interstitial endothelial cells",
            "Leukocytes",
            "Podocytes",
            "Proximal Tubule Segments",
            "Thick Ascending Limb",
        ],
    ),
    ("organamnist", ORGAN_CLASS_NAMES),
    ("organcmnist", ORGAN_CLASS_NAMES),
    ("organsmnist", ORGAN_CLASS_NAMES),
];

const ORGAN_CLASS_NAMES: &[&str] = &[
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
];

/// The known class names for a MedMNIST file name such as `bloodmnist_64`, if any.
fn known_class_names(name: &str) -> Option<&'static [&'static str]> {
    let lower = name.to_ascii_lowercase();
    // MedMNIST+ files are named like "pathmnist_224"; the classes do not depend on the size.
    let base = match lower.rsplit_once('_') {
        Some((base, suffix)) if suffix.chars().all(|c| c.is_ascii_digit()) => base,
        _ => lower.as_str(),
    };
    MEDMNIST_CLASS_NAMES
        .iter()
        .find(|(subset, _)| *subset == base)
        .map(|(_, names)| *names)
}

/// Loads a MedMNIST `.npz` file from disk.
pub(crate) fn load_npz_file(path: &Path, options: &LoadOptions) -> Result<Dataset, DataError> {
    let file = std::fs::File::open(path).map_err(|error| DataError::io(path, error))?;
    let file_len = file
        .metadata()
        .map_err(|error| DataError::io(path, error))?
        .len();
    let name = path.file_stem().map_or_else(
        || "npz".to_string(),
        |stem| stem.to_string_lossy().into_owned(),
    );
    read_npz(io::BufReader::new(file), file_len, path, &name, options)
}

/// Loads a MedMNIST `.npz` held in memory (the built-in data set).
pub(crate) fn load_npz_bytes(
    bytes: &[u8],
    source: &Path,
    name: &str,
    options: &LoadOptions,
) -> Result<Dataset, DataError> {
    read_npz(
        io::Cursor::new(bytes),
        bytes.len() as u64,
        source,
        name,
        options,
    )
}

fn read_npz<R: Read + Seek>(
    reader: R,
    file_len: u64,
    source: &Path,
    name: &str,
    options: &LoadOptions,
) -> Result<Dataset, DataError> {
    // zip 0.6 and npyz do unchecked arithmetic on header fields; a crafted archive could make
    // them panic. That must surface as an error about the file, not bring the program down.
    catch_unwind(AssertUnwindSafe(|| {
        read_npz_checked(reader, file_len, source, name, options)
    }))
    .unwrap_or_else(|_| {
        Err(DataError::CorruptNpz {
            path: source.to_path_buf(),
            reason: "the archive reader failed on malformed data".to_string(),
        })
    })
}

/// One array's header and raw data bytes.
struct RawArray {
    header: NpyHeader,
    data: Vec<u8>,
}

fn read_npz_checked<R: Read + Seek>(
    reader: R,
    file_len: u64,
    source: &Path,
    name: &str,
    options: &LoadOptions,
) -> Result<Dataset, DataError> {
    let corrupt = |reason: String| DataError::CorruptNpz {
        path: source.to_path_buf(),
        reason,
    };
    let mut archive = NpzArchive::new(reader)
        .map_err(|error| corrupt(format!("not a readable zip archive ({error})")))?;
    let present: Vec<String> = archive.array_names().map(str::to_string).collect();

    let mut splits: Vec<(Split, &str)> = Vec::with_capacity(3);
    let mut reference: Option<(ImageShape, String)> = None;
    for split_name in ["train", "val", "test"] {
        let images_key = format!("{split_name}_images");
        let labels_key = format!("{split_name}_labels");
        let images = read_array(&mut archive, &images_key, &present, file_len, source)?;
        let labels = read_array(&mut archive, &labels_key, &present, file_len, source)?;
        let (count, shape) = image_array_shape(&images.header)
            .map_err(|reason| bad_array(source, &images_key, reason))?;
        if let Some((first_shape, first_key)) = &reference
            && *first_shape != shape
        {
            return Err(bad_array(
                source,
                &images_key,
                format!(
                    "images are {}x{}x{} but {first_key} holds {}x{}x{}; all splits must match",
                    shape.height,
                    shape.width,
                    shape.channels,
                    first_shape.height,
                    first_shape.width,
                    first_shape.channels
                ),
            ));
        }
        reference.get_or_insert((shape, images_key.clone()));
        let labels = decode_labels(labels, &labels_key, count, source)?;
        let split = convert_images(
            images.data,
            labels,
            count,
            shape,
            options,
            source,
            &images_key,
        )?;
        splits.push((split, split_name));
    }

    // Where the largest label is, for the errors below: `(split name, index, value)`.
    let (max_split, max_index, max_label) = splits
        .iter()
        .flat_map(|(split, split_name)| {
            split
                .labels
                .iter()
                .enumerate()
                .map(move |(index, &label)| (*split_name, index, label))
        })
        .max_by_key(|&(_, _, label)| label)
        .unwrap_or(("train", 0, 0));
    let out_of_range = |reason: String| DataError::BadLabel {
        path: source.to_path_buf(),
        location: format!("{max_split}_labels[{max_index}]"),
        reason,
    };
    let class_names: Vec<String> = match known_class_names(name) {
        Some(names) if max_label < names.len() => names.iter().map(|n| n.to_string()).collect(),
        Some(names) => {
            return Err(out_of_range(format!(
                "label {max_label} is out of range: {name} has {} classes (0..={})",
                names.len(),
                names.len() - 1
            )));
        }
        None => {
            let mut seen = vec![false; max_label + 1];
            for (split, _) in &splits {
                for &label in &split.labels {
                    seen[label] = true;
                }
            }
            let missing: Vec<String> = (0..=max_label)
                .filter(|&class| !seen[class])
                .map(|class| class.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(out_of_range(format!(
                    "label {max_label} leaves class(es) {} without any image; labels must run \
                     from 0 to k-1 without gaps (is {max_label} a typo?)",
                    missing.join(", ")
                )));
            }
            (0..=max_label).map(|class| class.to_string()).collect()
        }
    };
    let mut splits = splits.into_iter().map(|(split, _)| split);
    let (Some(train), Some(val), Some(test)) = (splits.next(), splits.next(), splits.next()) else {
        return Err(corrupt("missing splits".to_string()));
    };
    let dataset = Dataset {
        name: name.to_string(),
        source: source.to_path_buf(),
        class_names,
        train,
        val,
        test,
        skipped_files: Vec::new(),
    };
    check_splits_usable(&dataset)?;
    Ok(dataset)
}

fn bad_array(source: &Path, key: &str, reason: String) -> DataError {
    DataError::BadArray {
        path: source.to_path_buf(),
        key: key.to_string(),
        reason,
    }
}

/// Reads one array, checking every declared size against the file before trusting it.
fn read_array<R: Read + Seek>(
    archive: &mut NpzArchive<R>,
    key: &str,
    present: &[String],
    file_len: u64,
    source: &Path,
) -> Result<RawArray, DataError> {
    let corrupt = |reason: String| DataError::CorruptNpz {
        path: source.to_path_buf(),
        reason,
    };
    if !present.iter().any(|name| name == key) {
        return Err(DataError::MissingKey {
            path: source.to_path_buf(),
            key: key.to_string(),
            present: present.to_vec(),
        });
    }
    let mut entry = archive
        .zip_archive()
        .by_name(&npyz::npz::file_name_from_array_name(key))
        .map_err(|error| corrupt(format!("cannot open array '{key}': {error}")))?;

    // 1. The zip entry's own sizes must fit the file.
    let compressed = entry.compressed_size();
    if compressed > file_len {
        return Err(DataError::DeclaredSizeTooLarge {
            path: source.to_path_buf(),
            key: key.to_string(),
            declared: compressed,
            available: file_len,
        });
    }
    let max_expanded = match entry.compression() {
        CompressionMethod::Stored => compressed,
        CompressionMethod::Deflated => compressed
            .saturating_mul(MAX_DEFLATE_RATIO)
            .saturating_add(1024),
        other => {
            return Err(bad_array(
                source,
                key,
                format!("compressed with {other:?}; numpy writes stored or deflated entries only"),
            ));
        }
    };
    let entry_size = entry.size();
    if entry_size > max_expanded {
        return Err(DataError::DeclaredSizeTooLarge {
            path: source.to_path_buf(),
            key: key.to_string(),
            declared: entry_size,
            available: max_expanded,
        });
    }

    // 2. The .npy header: its length is read here only to bound it before npyz allocates a
    //    buffer of that length; npyz parses the header itself.
    let mut preamble = vec![0u8; 10];
    entry.read_exact(&mut preamble).map_err(|error| {
        corrupt(format!(
            "array '{key}' is too short for an .npy header ({error})"
        ))
    })?;
    if &preamble[..6] != b"\x93NUMPY" {
        return Err(corrupt(format!(
            "array '{key}' is not an .npy array (bad magic bytes)"
        )));
    }
    let header_len = match preamble[6] {
        1 => u64::from(u16::from_le_bytes([preamble[8], preamble[9]])),
        2 | 3 => {
            let mut rest = [0u8; 2];
            entry.read_exact(&mut rest).map_err(|error| {
                corrupt(format!("array '{key}': truncated .npy header ({error})"))
            })?;
            preamble.extend_from_slice(&rest);
            u64::from(u32::from_le_bytes([
                preamble[8],
                preamble[9],
                rest[0],
                rest[1],
            ]))
        }
        version => {
            return Err(corrupt(format!(
                "array '{key}' uses .npy format version {version}, which numpy never wrote"
            )));
        }
    };
    let prefix_len = preamble.len() as u64 + header_len;
    if header_len > MAX_NPY_HEADER_BYTES || prefix_len > entry_size {
        return Err(corrupt(format!(
            "array '{key}' declares a {header_len}-byte header in a {entry_size}-byte entry"
        )));
    }
    let mut header_bytes = preamble;
    header_bytes.resize(prefix_len as usize, 0);
    let preamble_len = header_bytes.len() - header_len as usize;
    entry
        .read_exact(&mut header_bytes[preamble_len..])
        .map_err(|error| corrupt(format!("array '{key}': truncated .npy header ({error})")))?;
    let header = catch_unwind(|| NpyHeader::from_reader(&header_bytes[..]))
        .map_err(|_| {
            bad_array(
                source,
                key,
                "the header declares an impossibly large shape".into(),
            )
        })?
        .map_err(|error| bad_array(source, key, format!("unreadable .npy header: {error}")))?;

    // 3. The data the header declares must fit in what the entry holds.
    let item_size = header
        .dtype()
        .num_bytes()
        .filter(|_| !header.uses_pickled_array())
        .ok_or_else(|| {
            bad_array(
                source,
                key,
                format!("unsupported dtype {}", header.dtype().descr()),
            )
        })?;
    let declared = header
        .shape()
        .iter()
        .try_fold(item_size as u64, |total, &dim| total.checked_mul(dim))
        .unwrap_or(u64::MAX);
    let available = entry_size - prefix_len;
    if declared > available {
        return Err(DataError::DeclaredSizeTooLarge {
            path: source.to_path_buf(),
            key: key.to_string(),
            declared,
            available,
        });
    }
    if header.order() == Order::Fortran && header.shape().len() > 1 {
        return Err(bad_array(
            source,
            key,
            "stored in Fortran order; save it in C order (numpy.ascontiguousarray)".to_string(),
        ));
    }

    // 4. Read the data, growing the buffer only as bytes actually arrive.
    let mut data = Vec::with_capacity(declared.min(1 << 26) as usize);
    (&mut entry)
        .take(declared)
        .read_to_end(&mut data)
        .map_err(|error| corrupt(format!("array '{key}': {error}")))?;
    if (data.len() as u64) < declared {
        return Err(corrupt(format!(
            "array '{key}' ends after {} of its {declared} data bytes",
            data.len()
        )));
    }
    // Reading on to the end of the entry makes the zip reader verify its CRC-32.
    io::copy(
        &mut (&mut entry).take(available - declared + 1),
        &mut io::sink(),
    )
    .map_err(|error| corrupt(format!("array '{key}': {error}")))?;
    Ok(RawArray { header, data })
}

/// `(N, shape)` for an image array, or why it is not one.
fn image_array_shape(header: &NpyHeader) -> Result<(usize, ImageShape), String> {
    let is_u8 = matches!(header.dtype(), DType::Plain(ref ts)
        if ts.type_char() == TypeChar::Uint && ts.size_field() == 1);
    if !is_u8 {
        return Err(format!(
            "dtype {} but images must be uint8",
            header.dtype().descr()
        ));
    }
    let dims: Vec<usize> = header.shape().iter().map(|&dim| dim as usize).collect();
    let (count, height, width, channels) = match dims[..] {
        [n, h, w] => (n, h, w, 1),
        [n, h, w, c] if c == 1 || c == 3 => (n, h, w, c),
        [_, _, _, _] | [_, _, _, _, _] => {
            return Err(format!(
                "shape {dims:?} is not (N, H, W) or (N, H, W, 3); 3D volumes (the MedMNIST 3D \
                 subsets) are not supported"
            ));
        }
        _ => return Err(format!("shape {dims:?} is not (N, H, W) or (N, H, W, 3)")),
    };
    if height == 0 || width == 0 {
        return Err(format!("shape {dims:?} has empty images"));
    }
    Ok((count, ImageShape::new(height, width, channels)))
}

/// Integer class indices from a `(N,)` or `(N, 1)` label array.
fn decode_labels(
    array: RawArray,
    key: &str,
    image_count: usize,
    source: &Path,
) -> Result<Vec<usize>, DataError> {
    let shape = array.header.shape().to_vec();
    let count = match shape[..] {
        [n] | [n, 1] => n as usize,
        [_, columns] => {
            return Err(DataError::MultiLabel {
                path: source.to_path_buf(),
                key: key.to_string(),
                columns,
            });
        }
        _ => {
            return Err(bad_array(
                source,
                key,
                format!("shape {shape:?} is not (N, 1) or (N,)"),
            ));
        }
    };
    if count != image_count {
        return Err(bad_array(
            source,
            key,
            format!("{count} labels for {image_count} images"),
        ));
    }
    let dtype = array.header.dtype();
    let DType::Plain(type_str) = &dtype else {
        return Err(bad_array(
            source,
            key,
            format!("dtype {} is not an integer type", dtype.descr()),
        ));
    };
    let decoded = |result: io::Result<Vec<i64>>| {
        result.map_err(|error| bad_array(source, key, format!("unreadable labels: {error}")))
    };
    let values: Vec<i64> = match (type_str.type_char(), type_str.size_field()) {
        (TypeChar::Uint, 1) => array.data.iter().map(|&value| i64::from(value)).collect(),
        (TypeChar::Int, 1) => decoded(read_as::<i8>(array))?,
        (TypeChar::Uint, 2) => decoded(read_as::<u16>(array))?,
        (TypeChar::Int, 2) => decoded(read_as::<i16>(array))?,
        (TypeChar::Uint, 4) => decoded(read_as::<u32>(array))?,
        (TypeChar::Int, 4) => decoded(read_as::<i32>(array))?,
        (TypeChar::Int, 8) => decoded(read_as::<i64>(array))?,
        (TypeChar::Uint, 8) => decoded(
            NpyFile::with_header(array.header, &array.data[..])
                .into_vec::<u64>()
                .map(|values| {
                    // Anything above i64::MAX is out of range anyway; saturate so the range
                    // check below reports it.
                    values
                        .into_iter()
                        .map(|value| i64::try_from(value).unwrap_or(i64::MAX))
                        .collect()
                }),
        )?,
        _ => {
            return Err(bad_array(
                source,
                key,
                format!("dtype {} but labels must be integers", dtype.descr()),
            ));
        }
    };
    let mut labels = Vec::with_capacity(values.len());
    for (index, value) in values.into_iter().enumerate() {
        if !(0..=MAX_CLASS_INDEX).contains(&value) {
            return Err(DataError::BadLabel {
                path: source.to_path_buf(),
                location: format!("{key}[{index}]"),
                reason: format!("label {value} is out of range (0..={MAX_CLASS_INDEX})"),
            });
        }
        labels.push(value as usize);
    }
    Ok(labels)
}

/// Decodes an integer label array of element type `T` with npyz.
fn read_as<T: npyz::Deserialize + Into<i64>>(array: RawArray) -> io::Result<Vec<i64>> {
    NpyFile::with_header(array.header, &array.data[..])
        .into_vec::<T>()
        .map(|values| values.into_iter().map(Into::into).collect())
}

/// Builds a split from raw images, resizing or converting channels when asked.
fn convert_images(
    data: Vec<u8>,
    labels: Vec<usize>,
    count: usize,
    shape: ImageShape,
    options: &LoadOptions,
    source: &Path,
    key: &str,
) -> Result<Split, DataError> {
    let unchanged = options
        .size
        .is_none_or(|size| size == shape.height && size == shape.width)
        && options
            .channels
            .is_none_or(|channels| channels == shape.channels);
    if unchanged {
        return Ok(Split {
            images: data,
            labels,
            height: shape.height,
            width: shape.width,
            channels: shape.channels,
        });
    }
    let converted: Vec<Option<(Vec<u8>, ImageShape)>> = data
        .par_chunks_exact(shape.num_values())
        .map(|pixels| convert_raw(pixels.to_vec(), shape, options.size, options.channels))
        .collect();
    let out_shape = ImageShape::new(
        options.size.unwrap_or(shape.height),
        options.size.unwrap_or(shape.width),
        options.channels.unwrap_or(shape.channels),
    );
    let mut split = Split::empty(out_shape);
    split.images.reserve_exact(count * out_shape.num_values());
    for (pixels, label) in converted.into_iter().zip(labels) {
        let Some((pixels, _)) = pixels else {
            return Err(bad_array(source, key, "cannot convert images".to_string()));
        };
        split.push(&pixels, label);
    }
    Ok(split)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use npyz::WriterBuilder;
    use npyz::npz::NpzWriter;
    use npyz::zip::write::FileOptions;

    use super::*;
    use crate::data::test_support::{TempDir, project_root};
    use crate::data::{BREASTMNIST_NPZ, Normalization, builtin_breastmnist, load};

    fn add_array<T: npyz::AutoSerialize + Clone, W: Write + Seek>(
        npz: &mut NpzWriter<W>,
        name: &str,
        shape: &[u64],
        data: &[T],
    ) {
        let mut writer = npz
            .array::<T>(name, FileOptions::default())
            .unwrap()
            .default_dtype()
            .shape(shape)
            .begin_nd()
            .unwrap();
        writer.extend(data.iter().cloned()).unwrap();
        writer.finish().unwrap();
    }

    /// Writes a small MedMNIST-style npz: `count` images per split of `image_shape`
    /// (after N), labels cycling through `classes`, with `label_columns` label columns.
    fn write_synthetic(
        path: &Path,
        image_shape: &[u64],
        classes: usize,
        label_columns: u64,
        skip: &[&str],
    ) {
        let mut npz = NpzWriter::create(path).unwrap();
        let count = 12u64;
        for split in ["train", "val", "test"] {
            let mut shape = vec![count];
            shape.extend_from_slice(image_shape);
            let values: u64 = shape.iter().product();
            let pixels: Vec<u8> = (0..values).map(|i| (i % 251) as u8).collect();
            let key = format!("{split}_images");
            if !skip.contains(&key.as_str()) {
                add_array(&mut npz, &key, &shape, &pixels);
            }
            let labels: Vec<u8> = (0..count * label_columns)
                .map(|i| ((i / label_columns) as usize % classes) as u8)
                .collect();
            let key = format!("{split}_labels");
            if !skip.contains(&key.as_str()) {
                add_array(&mut npz, &key, &[count, label_columns], &labels);
            }
        }
    }

    #[test]
    fn builtin_breastmnist_matches_the_medmnist_release() {
        let dataset = builtin_breastmnist(&LoadOptions::default()).unwrap();
        assert_eq!(dataset.name, "breastmnist");
        assert_eq!(dataset.class_names, vec!["malignant", "normal, benign"]);
        assert_eq!(
            (dataset.train.len(), dataset.val.len(), dataset.test.len()),
            (546, 78, 156)
        );
        assert_eq!(dataset.train.class_counts(2), vec![147, 399]);
        assert_eq!(dataset.val.class_counts(2), vec![21, 57]);
        assert_eq!(dataset.test.class_counts(2), vec![42, 114]);
        assert_eq!(dataset.image_shape(), ImageShape::new(28, 28, 1));
        assert_eq!(dataset.train.images.len(), 546 * 28 * 28);
        assert_eq!(&dataset.train.labels[..10], &[1, 1, 1, 1, 0, 1, 1, 1, 0, 1]);
        // Values read with numpy from the same file.
        assert_eq!(&dataset.train.image(0)[..5], &[139, 139, 138, 139, 142]);
        assert_eq!(
            &dataset.train.image(0)[14 * 28 + 10..14 * 28 + 15],
            &[198, 202, 180, 169, 167]
        );
        assert_eq!(dataset.train.image(545)[27 * 28 + 27], 20);
        assert_eq!(dataset.train.image(100)[5 * 28 + 7], 118);
        assert_eq!(dataset.test.image(155)[13 * 28 + 13], 160);
        assert_eq!(dataset.val.image(0)[20 * 28 + 3], 15);
        // numpy: train_images.mean() / 255, train_images.std() / 255.
        let norm = Normalization::from_split(&dataset.train);
        assert!((norm.mean[0] - 0.327_580_5).abs() < 1e-6, "{norm:?}");
        assert!((norm.std[0] - 0.205_730_15).abs() < 1e-6, "{norm:?}");
        assert!(dataset.summary().contains("train 546 / val 78 / test 156"));
    }

    #[test]
    fn breastmnist_from_the_assets_file_equals_the_builtin_copy() {
        let path = project_root().join("assets/breastmnist.npz");
        let from_file = load(&path, &LoadOptions::default()).unwrap();
        let builtin = builtin_breastmnist(&LoadOptions::default()).unwrap();
        assert_eq!(from_file.source, path);
        assert_eq!(from_file.train, builtin.train);
        assert_eq!(from_file.test, builtin.test);
        assert_eq!(from_file.class_names, builtin.class_names);
    }

    #[test]
    fn breastmnist_can_be_resized_and_made_rgb() {
        let options = LoadOptions {
            size: Some(64),
            channels: Some(3),
            ..Default::default()
        };
        let dataset = builtin_breastmnist(&options).unwrap();
        assert_eq!(dataset.image_shape(), ImageShape::new(64, 64, 3));
        assert_eq!(dataset.val.images.len(), 78 * 64 * 64 * 3);
        let image = dataset.train.image(0);
        assert!(
            image
                .chunks_exact(3)
                .all(|rgb| rgb[0] == rgb[1] && rgb[1] == rgb[2])
        );
    }

    #[test]
    fn rgb_npz_with_a_known_subset_name_gets_its_class_names() {
        let temp = TempDir::new("npz_rgb");
        let path = temp.path().join("bloodmnist_64.npz");
        write_synthetic(&path, &[4, 5, 3], 8, 1, &[]);
        let dataset = load(&path, &LoadOptions::default()).unwrap();
        assert_eq!(dataset.name, "bloodmnist_64");
        assert_eq!(dataset.num_classes(), 8);
        assert_eq!(dataset.class_names[7], "platelet");
        assert_eq!(dataset.image_shape(), ImageShape::new(4, 5, 3));
        assert_eq!(&dataset.test.image(1)[..3], &[60, 61, 62]);
        // (N, 1) labels and unknown names fall back to numbers.
        let other = temp.path().join("mystery.npz");
        write_synthetic(&other, &[6, 6], 3, 1, &[]);
        let dataset = load(&other, &LoadOptions::default()).unwrap();
        assert_eq!(dataset.class_names, vec!["0", "1", "2"]);
        assert_eq!(dataset.image_shape(), ImageShape::new(6, 6, 1));
    }

    #[test]
    fn truncated_npz_is_reported_as_corrupt() {
        let temp = TempDir::new("npz_truncated");
        let path = temp.path().join("breastmnist.npz");
        std::fs::write(&path, &BREASTMNIST_NPZ[..BREASTMNIST_NPZ.len() / 2]).unwrap();
        let error = load(&path, &LoadOptions::default()).unwrap_err();
        assert!(matches!(error, DataError::CorruptNpz { .. }), "{error}");
        assert!(error.to_string().contains("breastmnist.npz"), "{error}");
        // Not a zip at all.
        std::fs::write(&path, b"hello").unwrap();
        let error = load(&path, &LoadOptions::default()).unwrap_err();
        assert!(matches!(error, DataError::CorruptNpz { .. }), "{error}");
    }

    #[test]
    fn corrupted_compressed_data_is_caught() {
        let temp = TempDir::new("npz_bitflip");
        let path = temp.path().join("breastmnist.npz");
        let mut bytes = BREASTMNIST_NPZ.to_vec();
        // Flip bytes inside the first (deflated) member, train_images.
        for byte in &mut bytes[5_000..5_064] {
            *byte ^= 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
        let error = load(&path, &LoadOptions::default()).unwrap_err();
        assert!(matches!(error, DataError::CorruptNpz { .. }), "{error}");
    }

    #[test]
    fn missing_key_lists_the_arrays_present() {
        let temp = TempDir::new("npz_missing");
        let path = temp.path().join("partial.npz");
        write_synthetic(&path, &[4, 4], 2, 1, &["val_labels"]);
        let error = load(&path, &LoadOptions::default()).unwrap_err();
        let DataError::MissingKey { key, present, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!(key, "val_labels");
        assert_eq!(present.len(), 5);
        let message = error.to_string();
        assert!(
            message.contains("partial.npz") && message.contains("train_images, train_labels"),
            "{message}"
        );
    }

    #[test]
    fn multi_label_subsets_are_refused_clearly() {
        let temp = TempDir::new("npz_multilabel");
        let path = temp.path().join("chestmnist.npz");
        write_synthetic(&path, &[4, 4], 2, 14, &[]);
        let error = load(&path, &LoadOptions::default()).unwrap_err();
        assert!(
            matches!(error, DataError::MultiLabel { columns: 14, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("multi-label"), "{error}");
    }

    #[test]
    fn a_label_out_of_range_names_the_array_index_and_value() {
        let temp = TempDir::new("npz_label_range");
        // BreastMNIST has two classes; labels cycling through three reach 2.
        let path = temp.path().join("breastmnist.npz");
        write_synthetic(&path, &[4, 4], 3, 1, &[]);
        let message = load(&path, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("test_labels[11]: label 2 is out of range: breastmnist has 2 classes"),
            "{message}"
        );
        // Any name: a label that leaves a class without a single image.
        let path = temp.path().join("gaps.npz");
        let mut npz = NpzWriter::create(&path).unwrap();
        for split in ["train", "val", "test"] {
            add_array(&mut npz, &format!("{split}_images"), &[3, 2, 2], &[7u8; 12]);
            let labels: &[u8] = if split == "val" {
                &[0, 7, 1]
            } else {
                &[0, 1, 1]
            };
            add_array(&mut npz, &format!("{split}_labels"), &[3, 1], labels);
        }
        drop(npz);
        let message = load(&path, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(
                "val_labels[1]: label 7 leaves class(es) 2, 3, 4, 5, 6 without any image"
            ),
            "{message}"
        );
    }

    #[test]
    fn wrong_dtype_and_shape_are_named() {
        let temp = TempDir::new("npz_dtype");
        let path = temp.path().join("floats.npz");
        let mut npz = NpzWriter::create(&path).unwrap();
        add_array(&mut npz, "train_images", &[2, 2, 2], &[0.5f32; 8]);
        add_array(&mut npz, "train_labels", &[2, 1], &[0u8, 1]);
        drop(npz);
        let message = load(&path, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("'train_images'") && message.contains("uint8"),
            "{message}"
        );

        let path = temp.path().join("volumes.npz");
        let mut npz = NpzWriter::create(&path).unwrap();
        add_array(&mut npz, "train_images", &[1, 2, 2, 2], &[0u8; 8]);
        add_array(&mut npz, "train_labels", &[1, 1], &[0u8]);
        drop(npz);
        let message = load(&path, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(message.contains("3D volumes"), "{message}");

        let path = temp.path().join("negative.npz");
        let mut npz = NpzWriter::create(&path).unwrap();
        add_array(&mut npz, "train_images", &[2, 1, 1], &[0u8; 2]);
        add_array(&mut npz, "train_labels", &[2, 1], &[0i64, -3]);
        drop(npz);
        let message = load(&path, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("train_labels[1]") && message.contains("-3"),
            "{message}"
        );
    }

    /// A stored entry whose .npy header claims `shape` but holds only 16 data bytes.
    fn write_lying_npz(path: &Path, shape: &str) {
        let mut npz = NpzWriter::create(path).unwrap();
        let options = FileOptions::default().compression_method(CompressionMethod::Stored);
        let zip = npz.zip_writer();
        zip.start_file("train_images.npy", options).unwrap();
        let mut header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        zip.write_all(b"\x93NUMPY\x01\x00").unwrap();
        zip.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
        zip.write_all(header.as_bytes()).unwrap();
        zip.write_all(&[7u8; 16]).unwrap();
    }

    #[test]
    fn declared_sizes_beyond_the_file_are_refused_before_allocating() {
        let temp = TempDir::new("npz_lying");
        let path = temp.path().join("lying.npz");
        write_lying_npz(&path, "(1000000, 1000, 1000)");
        let error = load(&path, &LoadOptions::default()).unwrap_err();
        assert!(
            matches!(
                error,
                DataError::DeclaredSizeTooLarge {
                    declared: 1_000_000_000_000,
                    available: 16,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("'train_images'"), "{error}");
        // A shape whose product overflows 64 bits.
        write_lying_npz(&path, "(4294967296, 4294967296, 4294967296)");
        let error = load(&path, &LoadOptions::default()).unwrap_err();
        assert!(
            matches!(
                error,
                DataError::DeclaredSizeTooLarge { .. } | DataError::BadArray { .. }
            ),
            "{error}"
        );
    }

    #[test]
    fn subset_names_with_size_suffixes_are_recognised() {
        assert_eq!(known_class_names("PathMNIST_224").map(<[_]>::len), Some(9));
        assert_eq!(known_class_names("organsmnist").map(<[_]>::len), Some(11));
        assert!(known_class_names("chestmnist").is_none());
        assert!(known_class_names("my_data").is_none());
    }
}

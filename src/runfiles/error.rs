//! Why a file of a run or comparison folder could not be read or written: every error names the
//! file (or folder) at fault and says what is wrong with it.

use std::path::{Path, PathBuf};

/// Why a run or comparison file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RunFileError {
    /// Reading or writing a file or folder failed.
    #[error("{path}: {message}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A file exists but cannot be understood.
    #[error("{path}: unreadable or corrupt ({message})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A folder given as a run is not one.
    #[error("{path}: not a ppcr run folder (no run.json); pass the --out folder of `ppcr train`")]
    NotARun {
        /// The folder.
        path: PathBuf,
    },
    /// A run folder has no completed epoch.
    #[error("{path}: the run has no completed checkpoint yet")]
    NoCheckpoint {
        /// The folder.
        path: PathBuf,
    },
    /// A run folder has checkpoints but no final metrics.
    #[error(
        "{path}: missing: the run has not finished (ppcr train writes it after the last epoch)"
    )]
    Unfinished {
        /// The `metrics.json` that is missing.
        path: PathBuf,
    },
    /// Another process is training in the run folder.
    #[error(
        "{path}: another ppcr process is training in this folder; wait for it to finish, or \
         give another --out"
    )]
    Locked {
        /// The run folder.
        path: PathBuf,
    },
}

impl RunFileError {
    /// An I/O failure: `action` (e.g. "cannot read") and the error, on `path`.
    pub(crate) fn io(path: &Path, action: &str, error: impl std::fmt::Display) -> Self {
        RunFileError::Io {
            path: path.to_path_buf(),
            message: format!("{action}: {error}"),
        }
    }

    /// A write failure; on a full disk it also says how to carry on.
    pub(crate) fn write(path: &Path, error: std::io::Error) -> Self {
        let hint = if error.kind() == std::io::ErrorKind::StorageFull {
            "; the disk is full: free space, then continue the run with --resume (every \
             completed epoch is kept)"
        } else {
            ""
        };
        Self::io(path, "cannot write", format!("{error}{hint}"))
    }

    /// A file that cannot be understood.
    pub(crate) fn corrupt(path: &Path, message: impl std::fmt::Display) -> Self {
        RunFileError::Corrupt {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// Read a whole text file, naming it on failure.
pub(crate) fn read_text(path: &Path) -> Result<String, RunFileError> {
    std::fs::read_to_string(path).map_err(|e| RunFileError::io(path, "cannot read", e))
}

/// Read and parse a JSON file, naming it on failure.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, RunFileError> {
    parse_json(&read_text(path)?, path)
}

/// Parse JSON read from `path` (named in errors).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, RunFileError> {
    serde_json::from_str(text).map_err(|e| RunFileError::corrupt(path, e))
}

/// Write `bytes` to `path` atomically (see [`super::write_atomic`]), naming it on failure.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RunFileError> {
    super::write_atomic(path, bytes).map_err(|e| RunFileError::write(path, e))
}

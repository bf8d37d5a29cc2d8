//! A self-contained HTML report of run, comparison and image folders.
//!
//! [`Report::from_folders`] reads each folder into a typed [`Source`] (see [`sources`]): a run
//! folder of `ppcr train` (it has `run.json`), a comparison folder of `ppcr compare` (it has
//! `compare.json`), or any other folder holding PNG images (such as the output of
//! `ppcr explain`). [`Report::to_html`] turns them into one HTML page that needs nothing beside
//! it: the plots are SVG drawn with `plotters` and inlined, images are embedded as base64 data
//! URIs, and the style sheet is inline, so the page makes no request when opened.
//!
//! The module knows nothing of the command line; `ppcr report` is a thin wrapper around it.

mod html;
mod plots;
pub mod sources;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use sources::{CompareRun, CompareSource, GalleryImage, GallerySource, RunSource, Source};

use crate::runfiles::write_atomic;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading or writing a file or folder failed.
    #[error("{path}: {message}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A file of a run or comparison folder could not be read.
    #[error(transparent)]
    Files(#[from] crate::runfiles::RunFileError),
    /// A file exists but cannot be understood.
    #[error("{path}: unreadable or corrupt ({message})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A folder is none of the kinds a report is made of.
    #[error(
        "{path}: not a run folder (no run.json), a comparison folder (no compare.json) \
         or a folder of PNG images"
    )]
    NotAReportFolder {
        /// The folder.
        path: PathBuf,
    },
    /// A plot could not be drawn.
    #[error("cannot draw the {what} plot: {message}")]
    Plot {
        /// Which plot.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// No folder was given.
    #[error("nothing to report: give at least one folder")]
    NoFolders,
}

/// The title a report gets unless another is set.
pub const DEFAULT_TITLE: &str = "ppcr report";

/// A report: a title and the folders it shows, one section each, in the order given.
#[derive(Debug, Clone)]
pub struct Report {
    /// Title of the page.
    pub title: String,
    /// The folders, read.
    pub sources: Vec<Source>,
}

impl Report {
    /// Read every folder (see [`Source::read`]); fails on the first one that cannot be read,
    /// naming the file at fault.
    pub fn from_folders<P: AsRef<Path>>(folders: &[P]) -> Result<Self, ReportError> {
        if folders.is_empty() {
            return Err(ReportError::NoFolders);
        }
        let sources = folders
            .iter()
            .map(|folder| Source::read(folder.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Report {
            title: DEFAULT_TITLE.to_string(),
            sources,
        })
    }

    /// The same report under another title.
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// The HTML page, stamped as generated at `generated`.
    pub fn to_html(&self, generated: SystemTime) -> Result<String, ReportError> {
        html::render(self, generated)
    }

    /// Write the HTML page to `path` atomically (a reader never sees half a page); returns its
    /// size in bytes.
    pub fn write(&self, path: &Path) -> Result<usize, ReportError> {
        if path.is_dir() {
            return Err(ReportError::Io {
                path: path.to_path_buf(),
                message: "cannot write the report: this is a folder; give a file name such as \
                          report.html"
                    .into(),
            });
        }
        let page = self.to_html(SystemTime::now())?;
        write_atomic(path, page.as_bytes()).map_err(|e| ReportError::Io {
            path: path.to_path_buf(),
            message: format!("cannot write the report: {e}"),
        })?;
        Ok(page.len())
    }
}

//! The run folder of `ppcr train`: its layout, its lock, and the pointers to its epoch
//! folders (the checkpoints themselves are in `checkpoint.rs`).

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{parse_json, read_text, write_file};
use super::{RunFileError, RunInfo};

/// The file a training process locks in its run folder.
const LOCK_FILE: &str = ".lock";

/// A run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub(super) root: PathBuf,
    /// The folder's lock file, held (locked) while a process trains in it: see
    /// [`RunDir::create`]. The operating system releases it when the process ends, however it
    /// ends, so a killed run leaves nothing that blocks its resume.
    #[allow(dead_code)] // Held, never read: the lock lasts as long as the file is open.
    lock: Option<std::sync::Arc<fs::File>>,
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

impl RunDir {
    /// Create (or reuse) a run folder, lock it for this process (a second process is refused
    /// with [`RunFileError::Locked`] while this one holds it) and prove it is writable before
    /// any work starts.
    pub fn create(root: &Path) -> Result<Self, RunFileError> {
        fs::create_dir_all(root.join("checkpoints"))
            .map_err(|e| RunFileError::io(root, "cannot create the output folder", e))?;
        // Before anything is written or cleaned up: a second process must not remove the first
        // one's files in flight, nor overwrite its run.
        let lock_path = root.join(LOCK_FILE);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| RunFileError::io(root, "output folder is not writable", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(RunFileError::Locked {
                    path: root.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(RunFileError::io(
                    &lock_path,
                    "cannot lock the run folder",
                    e,
                ));
            }
        }
        let probe = root.join(".write-test");
        super::write_atomic(&probe, b"ok")
            .map_err(|e| RunFileError::io(root, "output folder is not writable", e))?;
        let _ = fs::remove_file(probe);
        let run = RunDir {
            root: root.to_path_buf(),
            lock: Some(std::sync::Arc::new(lock)),
        };
        run.remove_leftovers();
        Ok(run)
    }

    /// Remove what a process killed mid-write left behind: temporary files of atomic writes
    /// and partial epoch folders. None of them is ever read, but they would pile up.
    fn remove_leftovers(&self) {
        for folder in [self.root.clone(), self.checkpoints()] {
            let Ok(entries) = fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if name.starts_with('.') && name.contains(".tmp-") && path.is_file() {
                    let _ = fs::remove_file(&path);
                } else if name.starts_with('.') && name.ends_with(".partial") && path.is_dir() {
                    let _ = fs::remove_dir_all(&path);
                }
            }
        }
    }

    /// Open an existing run folder (for evaluation, prediction or resuming).
    pub fn open(root: &Path) -> Result<Self, RunFileError> {
        if !root.is_dir() {
            return Err(RunFileError::Io {
                path: root.to_path_buf(),
                message: "no such folder".into(),
            });
        }
        let run = RunDir {
            root: root.to_path_buf(),
            lock: None,
        };
        if !run.run_info_path().is_file() {
            return Err(RunFileError::NotARun {
                path: root.to_path_buf(),
            });
        }
        Ok(run)
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// The text of `config.toml` (the resolved training configuration, which `train` parses).
    pub fn read_config_text(&self) -> Result<String, RunFileError> {
        read_text(&self.config_path())
    }

    /// `run.json`.
    pub fn run_info_path(&self) -> PathBuf {
        self.root.join("run.json")
    }

    /// `metrics.json`.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join(super::RunMetrics::FILE_NAME)
    }

    pub(super) fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// Write a small text or JSON file atomically.
    pub fn write_file(&self, path: &Path, contents: &[u8]) -> Result<(), RunFileError> {
        write_file(path, contents)
    }

    /// Refuse to start when the disk cannot hold the checkpoints the run will keep: at the
    /// moment a new epoch is saved, the `best` folder, the previous `latest` folder and the new
    /// one coexist. `checkpoint_bytes` is the size of one epoch folder.
    pub fn ensure_space_for_checkpoints(&self, checkpoint_bytes: u64) -> Result<(), RunFileError> {
        let existing = fs::read_dir(self.checkpoints())
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("epoch-"))
                    .count()
            })
            .unwrap_or(0);
        let needed = checkpoint_bytes * (3usize.saturating_sub(existing).max(1)) as u64;
        let free = fs4::available_space(&self.root)
            .map_err(|e| RunFileError::io(&self.root, "cannot read the free disk space", e))?;
        if free < needed {
            return Err(RunFileError::Io {
                path: self.root.clone(),
                message: format!(
                    "not enough free disk space for the checkpoints: they need about {} ({} per \
                     epoch folder), {} is free; free space or choose another --out",
                    megabytes(needed),
                    megabytes(checkpoint_bytes),
                    megabytes(free)
                ),
            });
        }
        Ok(())
    }

    /// Read `run.json`.
    pub fn read_run_info(&self) -> Result<RunInfo, RunFileError> {
        let path = self.run_info_path();
        parse_json(&read_text(&path)?, &path)
    }

    /// Name of the epoch folder a pointer (`latest` or `best`) names, if any.
    pub(super) fn pointer(&self, name: &str) -> Result<Option<String>, RunFileError> {
        let path = self.checkpoints().join(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_string())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(RunFileError::io(&path, "cannot read", error)),
        }
    }

    /// Whether the run has a completed epoch to resume from.
    pub fn has_checkpoint(&self) -> Result<bool, RunFileError> {
        Ok(self.pointer("latest")?.is_some())
    }

    pub(super) fn epoch_dir(&self, pointer: &str) -> Result<PathBuf, RunFileError> {
        let Some(name) = self.pointer(pointer)? else {
            // Epoch folders without the pointer: the pointer file was lost, the run was not.
            let mut epochs: Vec<String> = fs::read_dir(self.checkpoints())
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("epoch-"))
                .collect();
            epochs.sort();
            return Err(match epochs.last() {
                Some(last) => RunFileError::Corrupt {
                    path: self.checkpoints().join(pointer),
                    message: format!(
                        "the '{pointer}' pointer file is missing, though epoch folders exist (the \
                         last is {last}); write the name of the epoch folder to use into it"
                    ),
                },
                None => RunFileError::NoCheckpoint {
                    path: self.root.clone(),
                },
            });
        };
        Ok(self.checkpoints().join(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_folder_is_locked_while_it_is_open_for_training() {
        let folder = tempfile::tempdir().unwrap();
        let run = RunDir::create(folder.path()).unwrap();
        let clone = run.clone();
        drop(run);
        let error = RunDir::create(folder.path()).unwrap_err();
        assert!(matches!(error, RunFileError::Locked { .. }), "{error}");
        assert!(error.to_string().contains("another ppcr process"));
        // Reading is not blocked, and the last holder's end releases the folder.
        assert!(
            RunDir::open(folder.path()).is_err_and(|e| matches!(e, RunFileError::NotARun { .. }))
        );
        drop(clone);
        RunDir::create(folder.path()).unwrap();
    }

    #[test]
    fn opening_a_run_for_writing_removes_what_a_killed_write_left() {
        let folder = tempfile::tempdir().unwrap();
        let run = RunDir::create(folder.path()).unwrap();
        let checkpoints = folder.path().join("checkpoints");
        fs::write(checkpoints.join(".latest.tmp-4242"), b"epoch-00").unwrap();
        fs::write(folder.path().join(".log.csv.tmp-4242"), b"epoch,lr").unwrap();
        fs::create_dir_all(checkpoints.join(".epoch-0003.partial")).unwrap();
        fs::write(checkpoints.join(".epoch-0003.partial/model.bpk"), b"half").unwrap();
        fs::write(checkpoints.join("latest"), b"epoch-0002").unwrap();
        drop(run);

        RunDir::create(folder.path()).unwrap();
        let mut left: Vec<String> = fs::read_dir(&checkpoints)
            .unwrap()
            .chain(fs::read_dir(folder.path()).unwrap())
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // The lock file stays: it is the folder's, not a leftover.
        assert_eq!(left, [".lock", "checkpoints", "latest"]);
    }
}

//! The list of runs of a comparison, their folders, their state on disk, and sharding.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::CompareError;
use crate::attention::AttentionKind;

/// One (unit, seed) run of a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareRun {
    /// Position in the full run list (0-based).
    pub index: usize,
    /// The unit.
    pub attention: AttentionKind,
    /// The training seed.
    pub seed: u64,
    /// Its run folder.
    pub dir: PathBuf,
}

/// How far a run has got, read from its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// No checkpoint yet.
    NotStarted,
    /// Has a checkpoint but no final metrics: resume it.
    Interrupted,
    /// `metrics.json` written.
    Finished,
}

impl CompareRun {
    /// The run's state on disk.
    pub fn status(&self) -> RunStatus {
        if self.dir.join("metrics.json").is_file() {
            RunStatus::Finished
        } else if self.dir.join("checkpoints").join("latest").is_file() {
            RunStatus::Interrupted
        } else {
            RunStatus::NotStarted
        }
    }
}

/// Every run of a comparison, seed by seed (so that a partial grid holds complete seeds
/// first), each unit in the order given.
pub fn plan_runs(out: &Path, units: &[AttentionKind], seeds: &[u64]) -> Vec<CompareRun> {
    seeds
        .iter()
        .flat_map(|&seed| units.iter().map(move |&attention| (attention, seed)))
        .enumerate()
        .map(|(index, (attention, seed))| CompareRun {
            index,
            attention,
            seed,
            dir: out.join("runs").join(format!("{attention}-s{seed}")),
        })
        .collect()
}

/// Run only every `count`-th run starting at `index`, e.g. one Slurm array task:
/// `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Shard {
    /// Whether `run` belongs to this shard.
    pub fn contains(&self, run: &CompareRun) -> bool {
        run.index % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = CompareError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || CompareError::Shard(text.to_string());
        let (index, count) = text.split_once('/').ok_or_else(invalid)?;
        let index: usize = index.trim().parse().map_err(|_| invalid())?;
        let count: usize = count.trim().parse().map_err(|_| invalid())?;
        if count == 0 || index >= count {
            return Err(invalid());
        }
        Ok(Shard { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_seed_major_and_shards_partition_it() {
        let units = [AttentionKind::None, AttentionKind::Ppcr];
        let runs = plan_runs(Path::new("out"), &units, &[0, 1, 2]);
        assert_eq!(runs.len(), 6);
        assert_eq!(runs[1].attention, AttentionKind::Ppcr);
        assert_eq!(runs[1].seed, 0);
        assert_eq!(runs[2].seed, 1);
        assert_eq!(runs[3].dir, Path::new("out/runs/ppcr-s1"));
        let shards: Vec<Shard> = (0..4).map(|k| format!("{k}/4").parse().unwrap()).collect();
        for run in &runs {
            assert_eq!(shards.iter().filter(|s| s.contains(run)).count(), 1);
        }
        assert_eq!(runs.iter().filter(|r| shards[1].contains(r)).count(), 2);
    }

    #[test]
    fn shard_syntax_is_checked() {
        assert_eq!(
            "3/8".parse::<Shard>().unwrap(),
            Shard { index: 3, count: 8 }
        );
        for bad in ["8/8", "1/0", "x/2", "2", "-1/3"] {
            let error = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn status_follows_the_files_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let run = &plan_runs(dir.path(), &[AttentionKind::Se], &[4])[0];
        assert_eq!(run.status(), RunStatus::NotStarted);
        std::fs::create_dir_all(run.dir.join("checkpoints")).unwrap();
        std::fs::write(run.dir.join("checkpoints/latest"), "epoch-0001").unwrap();
        assert_eq!(run.status(), RunStatus::Interrupted);
        std::fs::write(run.dir.join("metrics.json"), "{}").unwrap();
        assert_eq!(run.status(), RunStatus::Finished);
    }
}

//! Comparing attention units as the paper does: every unit trained with every seed under
//! identical settings (the same data order and augmentation per seed), summarised as mean and
//! standard deviation of the test metrics with a paired comparison of PPCR against each other
//! unit over seeds.
//!
//! The grid lives in one folder of ordinary run folders (`runs/<unit>-s<seed>/`), so it is
//! resumable (finished runs are found and not trained again, interrupted ones resume from their
//! checkpoint) and can be spread over machines by sharding the run list.

mod plan;
mod summary;

pub use plan::{CompareRun, RunStatus, Shard, plan_runs};
pub use summary::{SUMMARY_METRICS, paired_t_test, summarise, write_summary};

/// Why a comparison could not be planned or summarised.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A `--shard K/N` value that is not one.
    #[error(
        "invalid shard '{0}': expected K/N with 0 <= K < N, e.g. 0/4 (shards count from 0; a \
         Slurm array numbered from 1, --array=1-N, gives $((SLURM_ARRAY_TASK_ID - 1))/N)"
    )]
    Shard(String),
    /// A file of the comparison or of one of its runs could not be read or written.
    #[error(transparent)]
    Files(#[from] crate::runfiles::RunFileError),
    /// A run's model could not be built.
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
}

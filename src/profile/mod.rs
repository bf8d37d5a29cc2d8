//! Measuring what the attention units cost: parameters and multiply-accumulates counted from
//! shapes, unit-level and network-level timings with medians
//! and ratios measured in one run, for the paper's claim that PPCR costs next to nothing; and
//! resident memory over long runs.

mod benches;
mod conv;
mod macs;
mod memory;
mod timing;
mod units;

pub use benches::{
    EndToEndBench, NetworkBench, NetworkCase, UnitBench, UnitShape, ZooBench, end_to_end_bench,
    network_bench, step_bench, unit_bench, unit_bench_shapes, zoo_bench,
};
pub use conv::{ConvBench, ConvShape, conv_bench, conv_bench_shapes};
pub use macs::{MacCount, count_macs};
pub use memory::{MemoryCurve, MemorySample, resident_set_bytes};
pub use timing::{Timing, median, time_median};
pub use units::{UnitProfile, profile_units};

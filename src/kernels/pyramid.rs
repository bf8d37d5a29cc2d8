//! The channel pyramid of PPCR (Zhang et al., arXiv 2303.01917): how many context maps an
//! `L`-level pyramid has and which channels each group holds, shared by the unit's tensor
//! formulation and its CPU and GPU kernels so all three split channels the same way.

/// Number of context maps `K = 2^L - 1` of an `L`-level channel pyramid.
pub fn pyramid_maps(levels: usize) -> usize {
    (1 << levels) - 1
}

/// First channel of group `group` when `channels` are split into `groups` contiguous groups:
/// `floor(C * g / n)`, as the released code's slicing does (so `C` need not divide evenly).
pub(crate) fn group_start(channels: usize, groups: usize, group: usize) -> usize {
    channels * group / groups
}

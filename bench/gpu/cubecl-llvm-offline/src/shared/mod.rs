pub mod lowered_features {
    use cubecl_core::ir::DeviceProperties;
    /// The GPU target a device's features are narrowed for.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum GpuTarget {
        Nvptx,
    }
    /// Only the LLVM backend narrows features; it is absent here.
    pub fn restrict_features(_props: &mut DeviceProperties, _target: GpuTarget) {}
}

pub mod ptx_version;

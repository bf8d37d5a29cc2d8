//! The directory that keeps CubeCL's compiled kernels and autotune results for every GPU device
//! of the machine, and the runtime configuration that points CubeCL at it.
//!
//! Left to itself, CubeCL keeps them under `target/environment` of the nearest Cargo project
//! above the working directory (else the user cache), and keeps compiled kernels only when a
//! `cubecl.toml` in the working directory asks for it: an installed `ppcr` started from
//! another directory recompiled every kernel in every process.

use std::path::PathBuf;

/// The environment variable that moves the kernel cache (a directory; created when missing).
pub const CACHE_DIR_VARIABLE: &str = "PPCR_CACHE_DIR";

/// The kernel cache directory: `$PPCR_CACHE_DIR` when set, else `ppcr` in the user's cache
/// directory (`$XDG_CACHE_HOME`, else `~/.cache` on Linux), else `ppcr-cache` in the temporary
/// directory.
pub fn kernel_cache_dir() -> PathBuf {
    resolve_cache_dir(
        std::env::var_os(CACHE_DIR_VARIABLE).map(PathBuf::from),
        dirs::cache_dir(),
    )
}

/// [`kernel_cache_dir`] from its inputs: an explicit directory (empty counts as unset) wins over
/// the platform's user cache directory.
pub fn resolve_cache_dir(explicit: Option<PathBuf>, user_cache: Option<PathBuf>) -> PathBuf {
    match (
        explicit.filter(|dir| !dir.as_os_str().is_empty()),
        user_cache,
    ) {
        (Some(dir), _) => dir,
        (None, Some(cache)) => cache.join("ppcr"),
        (None, None) => std::env::temp_dir().join("ppcr-cache"),
    }
}

/// Point CubeCL at `dir` for compiled kernels and autotune results, keep compiled kernels
/// there, and route its compilation messages to [`super::count_compilations`]'s counter. Call
/// before the first GPU device opens; once CubeCL has read its configuration (a device opened
/// earlier in the process) this changes nothing and returns `false`.
///
/// A `cubecl.toml` in the working directory and CubeCL's environment variables (such as
/// `CUBECL_AUTOTUNE_LEVEL`) still apply; only the store's place, kernel caching and the
/// compilation messages are set here.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub fn configure_runtime(dir: &std::path::Path) -> Result<bool, String> {
    use cubecl::config::cache::CacheConfig;
    use cubecl::config::compilation::CompilationLogLevel;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

    std::fs::create_dir_all(dir).map_err(|error| {
        format!(
            "cannot create the GPU kernel cache {} ({error}); set {CACHE_DIR_VARIABLE} to a \
             writable directory",
            dir.display()
        )
    })?;
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.environment.path = CacheConfig::Directory(dir.to_path_buf());
    config.compilation.cache = true;
    // Each compiled kernel is also reported through the `log` crate, where the counter sees it
    // (CubeCL reports a kernel it compiles, not one it loads from the store). The sinks a user
    // asked for (`CUBECL_DEBUG_LOG`) stay, at their level.
    let logger = &mut config.compilation.logger;
    logger.log = Some(
        toml::Value::String("info".into())
            .try_into()
            .map_err(|e| format!("{e}"))?,
    );
    if matches!(logger.level, CompilationLogLevel::Disabled) {
        logger.level = CompilationLogLevel::Basic;
    }
    super::count_compilations();
    Ok(CubeClRuntimeConfig::try_set(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_directory_wins_and_the_user_cache_gets_a_ppcr_folder() {
        let user = Some(PathBuf::from("/home/u/.cache"));
        assert_eq!(
            resolve_cache_dir(Some("/data/kernels".into()), user.clone()),
            PathBuf::from("/data/kernels")
        );
        assert_eq!(
            resolve_cache_dir(None, user.clone()),
            PathBuf::from("/home/u/.cache/ppcr")
        );
        assert_eq!(
            resolve_cache_dir(Some(PathBuf::new()), user),
            PathBuf::from("/home/u/.cache/ppcr"),
            "an empty variable counts as unset"
        );
        assert_eq!(
            resolve_cache_dir(None, None),
            std::env::temp_dir().join("ppcr-cache")
        );
    }
}

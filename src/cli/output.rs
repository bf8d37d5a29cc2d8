//! Standard output that a closed pipe cannot stop: `ppcr models | head -1` or `ppcr train |
//! head -1` must not panic on the broken pipe (Rust's `println!` does), and a training run must
//! go on to its checkpoints and `metrics.json` whatever happened to its reader. The macros write
//! like `println!` and `print!` and drop write errors.

/// `println!` that ignores a failed write (a closed pipe).
macro_rules! out {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` that ignores a failed write (a closed pipe).
macro_rules! out_inline {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Whether `error` comes from writing to a closed pipe: the reader stopped reading, which is not
/// this program's failure.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<csv::Error>()
                .is_some_and(|csv| matches!(csv.kind(), csv::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe))
    })
}

//! The `ppcr` command line: see `ppcr --help`.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::keep_freed_buffers();
    cli::install_panic_hook();
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of the output went away (`ppcr predict ... | head`): nothing failed here.
        Err(error) if cli::is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

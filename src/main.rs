//! The `ppcr` command line: see `ppcr --help`.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::keep_freed_buffers();
    cli::install_panic_hook();
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

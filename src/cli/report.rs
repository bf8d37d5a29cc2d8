//! `ppcr report`: one self-contained HTML page of run folders, comparison folders and folders
//! of images.

use std::path::PathBuf;

use clap::Args;

use ppcr::report::{DEFAULT_TITLE, Report};

/// Options of `ppcr report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Folders to show, one section each, in order: run folders of `ppcr train` (with
    /// run.json), comparison folders of `ppcr compare` (with compare.json), or any folder of
    /// PNG images (such as the output of `ppcr explain`).
    #[arg(required = true, value_name = "FOLDER")]
    folders: Vec<PathBuf>,
    /// The HTML file to write (replaced atomically).
    #[arg(short, long, default_value = "report.html")]
    out: PathBuf,
    /// Title of the page.
    #[arg(long, default_value = DEFAULT_TITLE)]
    title: String,
}

/// Run `ppcr report`.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let report = Report::from_folders(&args.folders)?.with_title(&args.title);
    let bytes = report.write(&args.out)?;
    out!(
        "wrote {} ({} section{}, {} KiB)",
        args.out.display(),
        report.sources.len(),
        if report.sources.len() == 1 { "" } else { "s" },
        bytes.div_ceil(1024)
    );
    Ok(())
}

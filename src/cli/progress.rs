//! Training progress on the terminal: an indicatif bar per epoch when stdout is a terminal,
//! plain lines (one per epoch) when it is a file or a pipe, so logs stay readable.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use ppcr::runfiles::EpochRecord;
use ppcr::train::{StepProgress, TrainObserver};

/// Prints training progress.
pub struct ConsoleProgress {
    bar: Option<ProgressBar>,
    interactive: bool,
    epochs: usize,
}

impl ConsoleProgress {
    /// A progress printer that picks bar or lines by whether stdout is a terminal.
    pub fn new() -> Self {
        ConsoleProgress {
            bar: None,
            interactive: std::io::stdout().is_terminal(),
            epochs: 0,
        }
    }
}

impl TrainObserver for ConsoleProgress {
    fn on_start(&mut self, first_epoch: usize, epochs: usize, summary: &str) {
        self.epochs = epochs;
        out!("{summary}");
        if first_epoch > 1 {
            out!("resuming at epoch {first_epoch} of {epochs}");
        }
    }

    fn on_step(&mut self, progress: &StepProgress) {
        if !self.interactive {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(progress.steps as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("epoch {:>3}/{}", progress.epoch, progress.epochs));
            bar
        });
        bar.set_position(progress.step as u64);
        bar.set_message(format!(
            "loss {:.4} acc {:.3} {:.0} img/s lr {:.4}",
            progress.loss, progress.accuracy, progress.images_per_second, progress.lr
        ));
    }

    fn on_epoch(&mut self, record: &EpochRecord, is_best: bool) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let auc = record
            .val_auc
            .map(|auc| format!("{auc:.4}"))
            .unwrap_or_else(|| "n/a".into());
        out!(
            "epoch {:>3}/{} train loss {:.4} acc {:.3} | val loss {:.4} acc {:.3} auc {} | {:.1}s {:.0} img/s{}",
            record.epoch,
            self.epochs,
            record.train_loss,
            record.train_accuracy,
            record.val_loss,
            record.val_accuracy,
            auc,
            record.seconds,
            record.images_per_second,
            if is_best { " *" } else { "" }
        );
    }
}

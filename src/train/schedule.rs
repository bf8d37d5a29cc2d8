//! Learning-rate schedules: cosine annealing with linear warm-up (Loshchilov & Hutter, SGDR,
//! ICLR 2017; Goyal et al. 2017 for the warm-up) and step decay (He et al. 2016).
//!
//! The rate is a pure function of the global step, so a resumed run needs no schedule state.

use serde::{Deserialize, Serialize};

/// How the learning rate moves over training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LrSchedule {
    /// Linear warm-up from `lr / (warmup steps)` to `lr`, then cosine decay to `min_lr`.
    Cosine {
        /// Warm-up length in epochs (may be fractional or 0).
        #[serde(default = "default_warmup")]
        warmup_epochs: f64,
        /// Final learning rate.
        #[serde(default)]
        min_lr: f64,
    },
    /// Multiply by `gamma` at each milestone epoch.
    Step {
        /// Epochs (0-based, the first epoch with the reduced rate) where the rate drops.
        milestones: Vec<usize>,
        /// Factor applied at each milestone.
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
    /// Multiply by `gamma` every `period` epochs (after epochs `period`, `2 period`, ...),
    /// whatever the run's length: "decreased by a factor of 5 per 25 epochs".
    Periodic {
        /// Epochs between drops.
        period: usize,
        /// Factor applied at each drop.
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
    /// The same rate throughout.
    Constant,
}

fn default_warmup() -> f64 {
    1.0
}

fn default_gamma() -> f64 {
    0.1
}

impl Default for LrSchedule {
    fn default() -> Self {
        LrSchedule::Cosine {
            warmup_epochs: default_warmup(),
            min_lr: 0.0,
        }
    }
}

impl LrSchedule {
    /// The rate for global step `step` (0-based) of `total_steps`, with `steps_per_epoch`
    /// steps per epoch and peak rate `base_lr`.
    pub fn lr_at(
        &self,
        base_lr: f64,
        step: usize,
        steps_per_epoch: usize,
        total_steps: usize,
    ) -> f64 {
        match self {
            LrSchedule::Constant => base_lr,
            LrSchedule::Step { milestones, gamma } => {
                let epoch = step / steps_per_epoch.max(1);
                let drops = milestones.iter().filter(|&&m| epoch >= m).count();
                base_lr * gamma.powi(drops as i32)
            }
            LrSchedule::Periodic { period, gamma } => {
                let epoch = step / steps_per_epoch.max(1);
                base_lr * gamma.powi((epoch / (*period).max(1)) as i32)
            }
            LrSchedule::Cosine {
                warmup_epochs,
                min_lr,
            } => {
                let warmup = (warmup_epochs * steps_per_epoch as f64).round() as usize;
                let warmup = warmup.min(total_steps.saturating_sub(1));
                if step < warmup {
                    return base_lr * (step + 1) as f64 / warmup as f64;
                }
                let decay_steps = (total_steps - warmup).max(1) as f64;
                let progress = ((step - warmup) as f64 / decay_steps).min(1.0);
                min_lr + (base_lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_drops_by_gamma_every_period() {
        let schedule = LrSchedule::Periodic {
            period: 25,
            gamma: 0.2,
        };
        // 4 steps per epoch: epoch 24 is steps 96..100, epoch 25 starts at step 100.
        assert_eq!(schedule.lr_at(0.0025, 99, 4, 600), 0.0025);
        assert!((schedule.lr_at(0.0025, 100, 4, 600) - 0.0005).abs() < 1e-15);
        assert!((schedule.lr_at(0.0025, 4 * 149, 4, 600) - 0.0025 * 0.2f64.powi(5)).abs() < 1e-15);
    }

    #[test]
    fn cosine_warms_up_linearly_then_decays_to_the_minimum() {
        let schedule = LrSchedule::Cosine {
            warmup_epochs: 1.0,
            min_lr: 0.0,
        };
        // 10 steps per epoch, 5 epochs: warm-up over steps 0..10, cosine over 40 steps.
        assert!((schedule.lr_at(0.1, 0, 10, 50) - 0.01).abs() < 1e-12);
        assert!((schedule.lr_at(0.1, 9, 10, 50) - 0.1).abs() < 1e-12);
        assert!((schedule.lr_at(0.1, 10, 10, 50) - 0.1).abs() < 1e-12);
        // Half-way through the decay: cos(pi/2) = 0 -> half the peak.
        assert!((schedule.lr_at(0.1, 30, 10, 50) - 0.05).abs() < 1e-12);
        // A quarter of the way: 0.5 * (1 + cos(pi/4)).
        let quarter = 0.1 * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2);
        assert!((schedule.lr_at(0.1, 20, 10, 50) - quarter).abs() < 1e-12);
    }

    #[test]
    fn step_schedule_drops_at_milestones() {
        let schedule = LrSchedule::Step {
            milestones: vec![2, 4],
            gamma: 0.1,
        };
        assert!((schedule.lr_at(1.0, 19, 10, 60) - 1.0).abs() < 1e-12);
        assert!((schedule.lr_at(1.0, 20, 10, 60) - 0.1).abs() < 1e-12);
        assert!((schedule.lr_at(1.0, 45, 10, 60) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn schedules_read_from_toml() {
        #[derive(Deserialize)]
        struct Holder {
            schedule: LrSchedule,
        }
        let holder: Holder =
            toml::from_str("schedule = { kind = \"step\", milestones = [30, 60] }").unwrap();
        assert_eq!(
            holder.schedule,
            LrSchedule::Step {
                milestones: vec![30, 60],
                gamma: 0.1
            }
        );
        let holder: Holder = toml::from_str("schedule = { kind = \"cosine\" }").unwrap();
        assert_eq!(holder.schedule, LrSchedule::default());
    }
}

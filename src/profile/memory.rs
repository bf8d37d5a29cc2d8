//! Resident memory of this process, and the curve a long (soak) run records with it: memory
//! must stay flat over hours of training, or an overnight run dies of a slow leak.

use serde::Serialize;

/// Physical memory this process uses now (resident set size), in bytes; `None` where the
/// operating system does not say.
pub fn resident_set_bytes() -> Option<u64> {
    memory_stats::memory_stats().map(|stats| stats.physical_mem as u64)
}

/// One sample of a memory curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MemorySample {
    /// Epoch just completed, 1-based.
    pub epoch: usize,
    /// Seconds since the run started.
    pub seconds: f64,
    /// Resident set size after the epoch, bytes.
    pub resident_bytes: u64,
}

/// Resident memory after each epoch of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryCurve {
    /// Samples, in epoch order.
    pub samples: Vec<MemorySample>,
}

impl MemoryCurve {
    /// Growth of the largest later sample over the first one, as a fraction (0.05 = 5%).
    ///
    /// The first epoch is the baseline because it pays for every one-time allocation (the
    /// framework's buffer pools, the data in memory, the first checkpoint's buffers); what
    /// comes after it must not grow. `None` with fewer than two samples.
    pub fn growth_after_first_epoch(&self) -> Option<f64> {
        let (first, rest) = self.samples.split_first()?;
        let largest = rest.iter().map(|s| s.resident_bytes).max()?;
        Some((largest as f64 - first.resident_bytes as f64) / first.resident_bytes as f64)
    }

    /// The curve as CSV: `epoch,seconds,resident_mib`.
    pub fn to_csv(&self) -> String {
        let mut csv = String::from("epoch,seconds,resident_mib\n");
        for sample in &self.samples {
            csv.push_str(&format!(
                "{},{:.1},{:.1}\n",
                sample.epoch,
                sample.seconds,
                sample.resident_bytes as f64 / (1024.0 * 1024.0)
            ));
        }
        csv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(mib: &[u64]) -> MemoryCurve {
        MemoryCurve {
            samples: mib
                .iter()
                .enumerate()
                .map(|(i, &m)| MemorySample {
                    epoch: i + 1,
                    seconds: 10.0 * (i + 1) as f64,
                    resident_bytes: m << 20,
                })
                .collect(),
        }
    }

    #[test]
    fn growth_is_measured_against_the_first_epoch() {
        assert_eq!(curve(&[200]).growth_after_first_epoch(), None);
        assert_eq!(
            curve(&[200, 190, 210]).growth_after_first_epoch(),
            Some(0.05)
        );
        assert_eq!(
            curve(&[200, 300, 250]).growth_after_first_epoch(),
            Some(0.5)
        );
        assert_eq!(
            curve(&[200, 100]).to_csv(),
            "epoch,seconds,resident_mib\n1,10.0,200.0\n2,20.0,100.0\n"
        );
    }

    #[test]
    fn resident_memory_follows_touched_allocations() {
        let before = resident_set_bytes().expect("this OS reports resident memory");
        let block = vec![1u8; 512 << 20];
        let during = resident_set_bytes().unwrap();
        assert!(block.iter().step_by(4096).all(|&b| b == 1));
        // Other tests run in parallel and allocate too, so only a lower bound holds.
        assert!(during > before + (384 << 20), "{before} -> {during}");
    }
}

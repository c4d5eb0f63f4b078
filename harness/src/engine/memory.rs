//! Memory over the run: the run process's resident size and what each library says it holds,
//! sampled at a steady interval with a bounded number of samples.

use super::workload::Ctx;
use crate::state::{MemorySample, MemoryState};

/// First interval between two samples, ms.
pub(crate) const FIRST_INTERVAL_MS: u64 = 1000;
/// Most samples kept; at the limit every second one goes and the interval doubles.
const MAX_SAMPLES: usize = 512;

/// A `kB` field of /proc/self/status (0 when absent).
pub(crate) fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// The sampler the event loop drives.
pub(crate) struct Sampler {
    state: MemoryState,
    next_ms: u64,
}

impl Sampler {
    pub(crate) fn new() -> Sampler {
        Sampler { state: MemoryState { samples: Vec::new(), interval_ms: FIRST_INTERVAL_MS }, next_ms: 0 }
    }

    /// Takes a sample when one is due at `now_ms`.
    pub(crate) fn tick(&mut self, ctx: &Ctx, now_ms: u64) {
        if now_ms < self.next_ms {
            return;
        }
        self.next_ms = now_ms + self.state.interval_ms;
        self.take(ctx, now_ms);
    }

    /// Takes a sample now (the last one, at the end of the run).
    pub(crate) fn take(&mut self, ctx: &Ctx, now_ms: u64) {
        let libs_resident = ctx
            .slots
            .iter()
            .map(|slot| {
                // A library being checked or reloaded right now is not waited for.
                let g = slot.state.try_read().ok()?;
                let l = g.as_ref()?;
                l.p.memory().map(|m| m.resident_bytes)
            })
            .collect();
        self.state.samples.push(MemorySample {
            at_ms: now_ms,
            rss_kib: status_kib("VmRSS:"),
            anon_kib: status_kib("RssAnon:"),
            libs_resident,
        });
        if self.state.samples.len() >= MAX_SAMPLES {
            let mut i = 0;
            self.state.samples.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.state.interval_ms *= 2;
        }
    }

    pub(crate) fn finish(self) -> MemoryState {
        self.state
    }
}

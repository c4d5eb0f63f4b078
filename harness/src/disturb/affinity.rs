//! `sched_setaffinity` of a random worker to a random subset of the usable CPUs.

use crate::cpu;
use crate::engine::Engine;

impl Engine {
    /// One affinity event: `target` picks the worker, `mask` the CPUs among the usable ones.
    pub(crate) fn affinity(&mut self, target: u32, mask: u64) -> String {
        let ctx = self.ctx.clone();
        let tids = ctx.workers.lock().unwrap().clone();
        if tids.is_empty() {
            return "skipped: no worker".into();
        }
        let tid = tids[target as usize % tids.len()];
        let usable = ctx.usable_cpus();
        if usable.is_empty() {
            return "skipped: no usable CPU".into();
        }
        let mut cpus: Vec<u32> =
            usable.iter().enumerate().filter(|(i, _)| mask >> (i % 64) & 1 == 1).map(|(_, &c)| c).collect();
        if cpus.is_empty() {
            cpus.push(usable[(mask % usable.len() as u64) as usize]);
        }
        match cpu::set_affinity(tid, &cpus) {
            Ok(()) => {
                self.affinity.0 += 1;
                format!("thread {tid} -> {}", rseq::topology::format_cpu_list(&cpus))
            }
            Err(e) => {
                self.affinity.1 += 1;
                format!("thread {tid} -> {}: refused ({e})", rseq::topology::format_cpu_list(&cpus))
            }
        }
    }
}

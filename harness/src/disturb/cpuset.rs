//! The run's cpuset cgroup (`rseq-harness-<pid>`), whose `cpuset.cpus` changes to a random
//! non-empty subset of the online CPUs. Created and removed by the engine (see `cpu::Cpuset`).

use crate::cpu;
use crate::engine::Engine;

impl Engine {
    /// One cpuset event: `mask` picks the CPUs among the online ones.
    pub(crate) fn cpuset_change(&mut self, mask: u64) -> String {
        let ctx = self.ctx.clone();
        let Some(cs) = &self.cpuset else {
            return self.cpuset_note.clone().unwrap_or_else(|| "skipped: cpuset disabled".into());
        };
        let online = cpu::online_cpus();
        let mut cpus: Vec<u32> =
            online.iter().enumerate().filter(|(i, _)| mask >> (i % 64) & 1 == 1).map(|(_, &c)| c).collect();
        if cpus.is_empty() {
            cpus = online.clone();
        }
        match cs.set_cpus(&cpus) {
            Ok(()) => {
                self.cpuset_changes.0 += 1;
                *ctx.cpuset_cpus.lock().unwrap() = Some(cpus.clone());
                format!("cpuset.cpus = {}", rseq::topology::format_cpu_list(&cpus))
            }
            Err(e) => {
                self.cpuset_changes.1 += 1;
                format!("cpuset.cpus = {}: refused ({e})", rseq::topology::format_cpu_list(&cpus))
            }
        }
    }
}

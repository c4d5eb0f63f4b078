//! CPU hotplug: `real` (sysfs online files, CPUs other than cpu0; every CPU taken offline
//! comes back, see `cpu::HotplugGuard`), `simulated` (every thread's affinity excludes a CPU
//! for a while), the CPU kept offline from the start, and CPUs that appear during the run.

use crate::cpu;
use crate::engine::Engine;
use crate::scenario::HotplugMode;

impl Engine {
    /// Takes a CPU other than cpu0 offline (`pick` chooses among the online candidates).
    pub(crate) fn hotplug_offline(&mut self, pick: u32) -> String {
        let ctx = self.ctx.clone();
        if self.hotplug != HotplugMode::Real {
            return self.hotplug_note.clone().unwrap_or_else(|| "skipped: hotplug off".into());
        }
        let cands: Vec<u32> = cpu::hotplug_candidates().into_iter().filter(|&c| cpu::is_online(c)).collect();
        if cands.is_empty() {
            return "skipped: no CPU to take offline".into();
        }
        let c = cands[pick as usize % cands.len()];
        // A v1 cpuset left without CPUs would push our threads out into the parent:
        // widen it first.
        if let Some(cs) = &self.cpuset {
            let only_c = ctx.cpuset_cpus.lock().unwrap().as_ref().is_some_and(|v| v.iter().all(|&x| x == c));
            if only_c {
                let online = cpu::online_cpus();
                if cs.set_cpus(&online).is_ok() {
                    *ctx.cpuset_cpus.lock().unwrap() = Some(online);
                }
            }
        }
        match cpu::set_online(c, false) {
            Ok(()) => {
                self.offlined += 1;
                self.last_offlined = Some(c);
                format!("cpu{c} offline")
            }
            Err(e) => format!("cpu{c} offline refused: {e}"),
        }
    }

    /// Brings back the CPU of the last `hotplug_offline`.
    pub(crate) fn hotplug_online(&mut self) -> String {
        match self.last_offlined.take() {
            Some(c) => self.bring_online(c),
            None => "skipped: nothing offline".into(),
        }
    }

    /// Brings online the CPU that was offline since the start of the run.
    pub(crate) fn bring_initial_online(&mut self) -> String {
        match self.initial_offline.take() {
            Some(c) => self.bring_online(c),
            None => self.hotplug_note.clone().unwrap_or_else(|| "skipped: no CPU was offline at start".into()),
        }
    }

    /// Simulated offline: every thread's affinity excludes one usable CPU.
    pub(crate) fn sim_offline(&mut self, pick: u32) -> String {
        let ctx = self.ctx.clone();
        let usable = ctx.usable_cpus();
        if usable.len() < 2 {
            return "skipped: fewer than two usable CPUs".into();
        }
        let c = usable[pick as usize % usable.len()];
        ctx.excluded.lock().unwrap().insert(c);
        let rest = ctx.usable_cpus();
        let (ok, err) = ctx.set_all_affinity(&rest);
        format!("cpu{c} excluded from {ok} threads ({err} refused)")
    }

    /// Simulated online: every thread gets the excluded CPUs back.
    pub(crate) fn sim_online(&mut self) -> String {
        let ctx = self.ctx.clone();
        let back: Vec<u32> = std::mem::take(&mut *ctx.excluded.lock().unwrap()).into_iter().collect();
        if back.is_empty() {
            return "skipped: nothing excluded".into();
        }
        let all = ctx.usable_cpus();
        let (ok, err) = ctx.set_all_affinity(&all);
        format!("cpu {} back for {ok} threads ({err} refused)", rseq::topology::format_cpu_list(&back))
    }

    /// CPUs that came online for the first time during the run — hot-added to the machine
    /// (e.g. a VM's vCPU) and onlined by someone else: the libraries sized their per-CPU
    /// data before those CPUs existed. Every thread's affinity (and the run's cpuset) is
    /// widened so that the workload, and the affinity disturbance, use them.
    pub(crate) fn scan_new_cpus(&mut self, now_ms: u64) {
        let online = cpu::online_cpus();
        let new: Vec<u32> = {
            let mut seen = self.ctx.seen_online.lock().unwrap();
            online.iter().copied().filter(|c| seen.insert(*c)).collect()
        };
        let added: Vec<u32> = new.into_iter().filter(|c| !self.initial_online.contains(c)).collect();
        if added.is_empty() {
            return;
        }
        if let Some(cs) = &self.cpuset {
            if cs.set_cpus(&online).is_ok() {
                *self.ctx.cpuset_cpus.lock().unwrap() = Some(online.clone());
            }
            let _ = cs.move_all_in();
        }
        let usable = self.ctx.usable_cpus();
        let (ok, _) = self.ctx.set_all_affinity(&usable);
        let workers = self.ctx.workers.lock().unwrap().clone();
        for (k, c) in added.into_iter().enumerate() {
            // Two workers go there right away; the affinity disturbance and the scheduler
            // spread the rest.
            let pinned =
                workers.iter().skip(2 * k).take(2).filter(|&&tid| cpu::set_affinity(tid, &[c]).is_ok()).count();
            self.cpu_notes.push(format!(
                "cpu{c} appeared at {:.2} s (not online at the start): {ok} threads may use it, {pinned} pinned to it",
                now_ms as f64 / 1000.0
            ));
            self.added_during_run.push(c);
        }
    }

    pub(crate) fn bring_online(&mut self, c: u32) -> String {
        match cpu::set_online(c, true) {
            Ok(()) => {
                self.onlined += 1;
                // A v1 cpuset does not get a CPU back by itself, nor do thread masks: give it
                // back so that the new CPU is used.
                let online = cpu::online_cpus();
                if let Some(cs) = &self.cpuset {
                    if cs.set_cpus(&online).is_ok() {
                        *self.ctx.cpuset_cpus.lock().unwrap() = Some(online.clone());
                    }
                    // Threads the kernel moved out while the cpuset was empty come back.
                    let _ = cs.move_all_in();
                }
                let usable = self.ctx.usable_cpus();
                let (ok, _) = self.ctx.set_all_affinity(&usable);
                format!("cpu{c} online ({ok} threads may use it)")
            }
            Err(e) => format!("cpu{c} online refused: {e}"),
        }
    }
}

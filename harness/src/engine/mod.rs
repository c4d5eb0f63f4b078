//! The run process: loads the libraries, starts the workload, executes the schedule of
//! events (each kind of disturbance in its own file of `crate::disturb`), checks every
//! library and collects the [`RunState`].

pub(crate) mod memory;
mod progress;
mod workload;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cpu;
use crate::disturb;
use crate::participants::{self, CheckOk};
use crate::scenario::{HotplugMode, Scenario};
use crate::schedule::{Event, EventKind, Plan};
use crate::state::*;
use progress::Progress;
pub(crate) use workload::{churn_body, spawn_small, Ctx, Loaded, Slot};
use workload::{lib_worker, mixed_worker, SlotInfo};

/// What the supervisor hands the run process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The scenario, seed filled in.
    pub scenario: Scenario,
    /// Every library and plugin, in command-line order.
    pub libs: Vec<crate::scenario::LibSpec>,
    /// Load order and events.
    pub plan: Plan,
    /// Why real hotplug is not used although asked for.
    pub hotplug_note: Option<String>,
    /// Show a progress bar / progress lines.
    pub progress: bool,
}

/// How often the engine looks for CPUs that came online outside the harness, ms.
const CPU_SCAN_MS: u64 = 100;
/// Nice value of the event thread during the run (needs CAP_SYS_NICE; kept at 0 otherwise).
const ENGINE_NICE: i32 = -10;

/// A quiesced check waiting this long for the work units in flight prints where the threads are.
const STUCK_AFTER: Duration = Duration::from_secs(10);

/// Facts about how this process reaches rseq.
pub fn probe_process() -> ProcessRseq {
    // SAFETY: dlsym of libc's constant rseq symbols with their C types.
    let (size, offset_present) = unsafe {
        let s = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        let o = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
        (if s.is_null() { 0 } else { s.cast::<u32>().read() }, !o.is_null())
    };
    // rseq(NULL, 0, 0, 0) registers nothing: EINVAL where rseq exists, ENOSYS where not.
    // SAFETY: invalid arguments that the kernel rejects without side effects.
    let r = unsafe { libc::syscall(libc::SYS_rseq, std::ptr::null_mut::<u8>(), 0u32, 0i32, 0u32) };
    let probe_errno = if r == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap_or(-1) };
    // SAFETY: getauxval has no preconditions.
    let kernel_feature_size = unsafe { libc::getauxval(27) } as u64;
    ProcessRseq { libc_size: size, libc_offset_present: offset_present, probe_errno, kernel_feature_size }
}

pub(crate) struct Engine {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) job: Job,
    pub(crate) hotplug: HotplugMode,
    pub(crate) hotplug_note: Option<String>,
    pub(crate) last_offlined: Option<u32>,
    /// Online when the run started (before the harness took any CPU offline).
    pub(crate) initial_online: Vec<u32>,
    /// CPUs first seen online during the run, and what was done about them.
    pub(crate) added_during_run: Vec<u32>,
    pub(crate) cpu_notes: Vec<String>,
    pub(crate) initial_offline: Option<u32>,
    pub(crate) first_offline: Option<u32>,
    pub(crate) cpuset: Option<cpu::Cpuset>,
    pub(crate) cpuset_note: Option<String>,
    pub(crate) log: Vec<LogEntry>,
    pub(crate) forks: Vec<ForkRecord>,
    pub(crate) offlined: u64,
    pub(crate) onlined: u64,
    pub(crate) signals_sent: u64,
    pub(crate) affinity: (u64, u64),
    pub(crate) cpuset_changes: (u64, u64),
    pub(crate) bursts: Vec<JoinHandle<(u64, u64)>>,
    pub(crate) log_file: Option<std::fs::File>,
    /// Event-log entries written to `log_file` (kept in `log` only when there is no file).
    pub(crate) logged: u64,
    pub(crate) memory: memory::Sampler,
}

/// Runs a job in this process and returns what it established.
pub fn run_job(job: Job) -> RunState {
    cpu::install_restore_handlers();
    let guard = cpu::HotplugGuard::new();
    disturb::signals::install_handler();
    let s = job.scenario.clone();
    let seed = job.plan.seed;
    let initial_online = cpu::online_cpus();
    let process = probe_process();

    let mut hotplug = job.plan.hotplug;
    let mut hotplug_note = job.hotplug_note.clone();
    if hotplug == HotplugMode::Real {
        if let Some(why) = cpu::hotplug_unavailable_reason() {
            hotplug_note = Some(format!("real hotplug {why}"));
            hotplug = HotplugMode::Off;
        }
    }

    let slots: Vec<Arc<Slot>> = job
        .libs
        .iter()
        .map(|l| {
            Arc::new(Slot {
                path: l.path.clone(),
                config: l.config.clone(),
                state: RwLock::new(None),
                units: AtomicU64::new(0),
                work_error_count: AtomicU64::new(0),
                incarnation: AtomicU32::new(0),
                forced: AtomicBool::new(false),
                thread_hook: AtomicBool::new(false),
                info: Mutex::new(SlotInfo {
                    name: l.path.file_name().map_or_else(|| "?".into(), |f| f.to_string_lossy().into_owned()),
                    ..SlotInfo::default()
                }),
            })
        })
        .collect();
    let ctx = Arc::new(Ctx {
        scenario: s.clone(),
        seed,
        flags: participants::dlopen_flags(s.rtld_global),
        slots,
        start: Instant::now(),
        stop: AtomicBool::new(false),
        workers: Mutex::new(Vec::new()),
        work_by_cpu: (0..rseq::topology::nr_possible_cpus()).map(|_| AtomicU64::new(0)).collect(),
        seen_online: Mutex::new(BTreeSet::new()),
        excluded: Mutex::new(BTreeSet::new()),
        cpuset_cpus: Mutex::new(None),
        created: AtomicU64::new(0),
        alive: AtomicU64::new(0),
        max_alive: AtomicU64::new(0),
        spawn_failures: AtomicU64::new(0),
        panics: Mutex::new(Vec::new()),
    });
    let mut eng = Engine {
        ctx: ctx.clone(),
        job,
        hotplug,
        hotplug_note,
        last_offlined: None,
        initial_online: initial_online.clone(),
        added_during_run: Vec::new(),
        cpu_notes: Vec::new(),
        initial_offline: None,
        first_offline: None,
        cpuset: None,
        cpuset_note: None,
        log: Vec::new(),
        forks: Vec::new(),
        offlined: 0,
        onlined: 0,
        signals_sent: 0,
        affinity: (0, 0),
        cpuset_changes: (0, 0),
        bursts: Vec::new(),
        log_file: std::env::var_os(crate::supervisor::ENV_LOG).and_then(|p| std::fs::File::create(p).ok()),
        logged: 0,
        memory: memory::Sampler::new(),
    };
    let mut fatal = Vec::new();
    let mut load_errors = Vec::new();
    let malloc_from = match crate::preload::check(s.expect_preload) {
        Ok(line) => line,
        Err(e) => {
            fatal.push(e.clone());
            e
        }
    };

    // A CPU offline before anything is allocated: it comes online mid-run.
    if eng.hotplug == HotplugMode::Real && s.hotplug.start_offline {
        let cands: Vec<u32> = cpu::hotplug_candidates().into_iter().filter(|&c| cpu::is_online(c)).collect();
        if let Some(&c) = cands.last() {
            match cpu::set_online(c, false) {
                Ok(()) => {
                    eng.initial_offline = Some(c);
                    eng.first_offline = Some(c);
                    eng.offlined += 1;
                }
                Err(e) => eng.hotplug_note = Some(format!("could not start with cpu{c} offline: {e}")),
            }
        }
    }
    if s.cpuset.active() {
        match cpu::Cpuset::create() {
            Ok(cs) => eng.cpuset = Some(cs),
            Err(why) => eng.cpuset_note = Some(why),
        }
    }

    // Load in the planned order.
    for (pos, &i) in eng.job.plan.load_order.clone().iter().enumerate() {
        let Some(slot) = ctx.slots.get(i) else { continue };
        let cfg = ctx.setup_config(slot);
        match participants::open_participant(&slot.path, ctx.flags, &cfg) {
            Ok(p) => {
                let mut info = slot.info.lock().unwrap();
                info.name = p.name().to_string();
                info.kind = p.kind().to_string();
                info.lazy = p.registers_lazily();
                info.index_used = p.index_used();
                info.load_position = pos;
                info.foreign = p.foreign_area();
                info.never_unload = p.never_unload();
                drop(info);
                slot.thread_hook.store(p.has_thread_start(), Ordering::SeqCst);
                *slot.state.write().unwrap() = Some(Loaded { p, incarnation: 0 });
            }
            Err(e) => load_errors.push(format!("{e:#}")),
        }
    }
    fatal.extend(load_errors.iter().cloned());

    let mut threads = Vec::new();
    let mut engine_priority = String::from("default (the run did not start)");
    let start = Instant::now();
    if fatal.is_empty() {
        // Workers.
        for id in 0..s.threads as u64 {
            let cx = ctx.clone();
            match std::thread::Builder::new().name(format!("mixed-{id}")).spawn(move || mixed_worker(cx, id)) {
                Ok(h) => threads.push(h),
                Err(e) => fatal.push(format!("cannot start worker thread: {e}")),
            }
        }
        for (si, _) in ctx.slots.iter().enumerate() {
            for w in 0..s.per_lib_workers as u64 {
                let cx = ctx.clone();
                let id = 1000 + si as u64 * 100 + w;
                match std::thread::Builder::new().name(format!("lib{si}-{w}")).spawn(move || lib_worker(cx, id, si)) {
                    Ok(h) => threads.push(h),
                    Err(e) => fatal.push(format!("cannot start worker thread: {e}")),
                }
            }
        }
        if s.churn.enabled && s.churn.rate > 0.0 {
            let cx = ctx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("churn".into())
                    .spawn(move || disturb::churn::churn_driver(cx))
                    .unwrap(),
            );
        }
        // The event thread must keep to the schedule while the workers keep every CPU busy
        // (on a slow guest a default-priority thread fell tens of seconds behind). Raised
        // only now, so that the workers started above keep the default priority.
        engine_priority = match cpu::set_thread_nice(ENGINE_NICE) {
            Ok(()) => format!("nice {ENGINE_NICE}"),
            Err(e) => format!("default (nice {ENGINE_NICE} refused: {e})"),
        };
        eng.schedule_loop(start);
        let _ = cpu::set_thread_nice(0);
    }

    let offline_at_start = eng.first_offline;
    // A burst still building up finishes first (the workers keep running meanwhile).
    let mut burst = None;
    for h in std::mem::take(&mut eng.bursts) {
        match h.join() {
            Ok(r) => burst = Some(r),
            Err(e) => ctx.note_panic("alive burst", e),
        }
    }
    // Stop and join.
    ctx.stop.store(true, Ordering::SeqCst);
    for h in threads {
        if let Err(e) = h.join() {
            ctx.note_panic("harness thread", e);
        }
    }
    let elapsed_ms = start.elapsed().as_millis() as u64;

    // Everything back: CPUs, cpuset, affinity, forced fallbacks.
    if let Some(c) = eng.initial_offline.take() {
        if cpu::set_online(c, true).is_ok() {
            eng.onlined += 1;
        }
    }
    if let Some(c) = eng.last_offlined.take() {
        if !cpu::is_online(c) && cpu::set_online(c, true).is_ok() {
            eng.onlined += 1;
        }
    }
    let restore_failures: Vec<String> = cpu::restore_all().into_iter().map(|(c, e)| format!("cpu{c}: {e}")).collect();
    let cpuset_hierarchy = match eng.cpuset.take().map(|cs| cs.hierarchy) {
        Some(cpu::Hierarchy::V1) => "v1",
        Some(cpu::Hierarchy::V2) => "v2",
        None => "",
    };
    ctx.excluded.lock().unwrap().clear();
    *ctx.cpuset_cpus.lock().unwrap() = None;
    let all = cpu::online_cpus();
    ctx.set_all_affinity(&all);

    // Final checks, then unload in reverse load order.
    let at = elapsed_ms;
    for slot in &ctx.slots {
        let g =
            crate::stuck::watch(&format!("final check of {}", slot.path.display()), STUCK_AFTER, || slot.quiesced());
        if let Some(l) = g.as_ref() {
            if slot.forced.swap(false, Ordering::SeqCst) {
                l.p.force_fallback(false);
            }
            let r = l.p.check();
            record_check(slot, at, "final", r);
            slot.info.lock().unwrap().memory = l.p.memory();
        }
    }
    eng.memory.take(&ctx, ctx.ms());
    let mut unload_order = eng.job.plan.load_order.clone();
    unload_order.reverse();
    let mut loaded_at_end = vec![false; ctx.slots.len()];
    for i in unload_order {
        let Some(slot) = ctx.slots.get(i) else { continue };
        let mut g = slot.state.write().unwrap();
        if let Some(l) = g.take() {
            loaded_at_end[i] = true;
            let c = l.p.report();
            l.p.teardown();
            drop(l);
            let unmapped = !participants::is_mapped(&slot.path);
            let mut info = slot.info.lock().unwrap();
            info.retired.add(&c);
            info.final_unmapped = Some(unmapped);
        }
    }
    drop(guard);
    let final_online = cpu::online_cpus();

    let libs = ctx
        .slots
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let info = std::mem::take(&mut *slot.info.lock().unwrap());
            LibState {
                name: info.name,
                kind: info.kind,
                index_used: info.index_used.map(str::to_string),
                path: slot.path.clone(),
                load_position: info.load_position,
                counts: info.retired,
                units: slot.units.load(Ordering::Relaxed),
                modes: info.modes,
                lazy: info.lazy,
                forced_periods: info.forced_periods,
                checks: info.checks,
                work_errors: info.work_errors,
                work_error_count: slot.work_error_count.load(Ordering::Relaxed),
                reloads: info.reloads,
                final_unmapped: info.final_unmapped,
                foreign_area: info.foreign,
                memory: info.memory,
                never_unload: info.never_unload,
                loaded_at_end: loaded_at_end[i],
            }
        })
        .collect();

    let panics = ctx.panics.lock().unwrap().clone();
    RunState {
        seed,
        scenario: s.clone(),
        mode: s.mode,
        index: s.index,
        hotplug: eng.hotplug,
        process,
        libs,
        forks: std::mem::take(&mut eng.forks),
        cpus: CpuState {
            initial_online,
            final_online,
            offline_at_start,
            offlined: eng.offlined,
            onlined: eng.onlined,
            restore_failures,
            offline_by_others: Vec::new(),
            hotplug_note: eng.hotplug_note.clone(),
            cpuset_note: eng.cpuset_note.clone(),
            cpuset_hierarchy: cpuset_hierarchy.to_string(),
            work_by_cpu: ctx.work_by_cpu.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
            possible: rseq::topology::possible_cpus().to_vec(),
            added_during_run: std::mem::take(&mut eng.added_during_run),
            cpu_notes: std::mem::take(&mut eng.cpu_notes),
            rss_kib: memory::status_kib("VmRSS:"),
            peak_rss_kib: memory::status_kib("VmHWM:"),
        },
        threads: ThreadState {
            created: ctx.created.load(Ordering::Relaxed),
            max_alive: ctx.max_alive.load(Ordering::Relaxed),
            spawn_failures: ctx.spawn_failures.load(Ordering::Relaxed),
            alive_burst: burst,
        },
        signals_sent: eng.signals_sent,
        signals_received: disturb::signals::received(),
        affinity_changes: eng.affinity,
        cpuset_changes: eng.cpuset_changes,
        panics,
        fatal,
        load_errors,
        events: std::mem::take(&mut eng.log),
        elapsed_ms,
        interrupted: cpu::stop_requested(),
        memory: std::mem::replace(&mut eng.memory, memory::Sampler::new()).finish(),
        engine_priority,
        malloc_from,
    }
}

pub(crate) fn record_check(slot: &Slot, at_ms: u64, phase: &str, r: Result<CheckOk, String>) {
    let rec = match r {
        Ok(c) => CheckRecord { at_ms, phase: phase.into(), ok: true, checked: c.checked, message: c.what },
        Err(m) => CheckRecord { at_ms, phase: phase.into(), ok: false, checked: 0, message: m },
    };
    slot.info.lock().unwrap().checks.push(rec);
}

impl Engine {
    fn schedule_loop(&mut self, start: Instant) {
        let duration = self.job.scenario.duration_ms;
        let events = self.job.plan.events.clone();
        let mut next = 0;
        let mut progress = Progress::new(duration, self.job.progress);
        let mut next_cpu_scan = 0;
        loop {
            let now = start.elapsed().as_millis() as u64;
            if now >= next_cpu_scan {
                next_cpu_scan = now + CPU_SCAN_MS;
                self.scan_new_cpus(now);
            }
            self.memory.tick(&self.ctx, now);
            if now >= duration || cpu::stop_requested() {
                break;
            }
            while next < events.len() && events[next].at_ms <= now {
                let ev = &events[next];
                let ran_ms = start.elapsed().as_millis() as u64;
                // A run that fell behind (slow checks on a loaded machine) ends at its
                // duration all the same: the backlog is reported as not run below.
                if ran_ms >= duration {
                    break;
                }
                let outcome = self.exec(ev);
                let took_ms = (start.elapsed().as_millis() as u64).saturating_sub(ran_ms);
                self.push_log(LogEntry { at_ms: ev.at_ms, ran_ms, took_ms, event: ev.clone(), outcome });
                next += 1;
                if cpu::stop_requested() {
                    break;
                }
            }
            let units: u64 = self.ctx.slots.iter().map(|s| s.units.load(Ordering::Relaxed)).sum();
            progress.update(
                now,
                format!(
                    "{units} units, {} threads made, {} events, {} alive",
                    self.ctx.created.load(Ordering::Relaxed),
                    next,
                    self.ctx.alive.load(Ordering::Relaxed)
                ),
            );
            let until_next = events.get(next).map_or(u64::MAX, |e| e.at_ms.saturating_sub(now));
            let until_end = duration.saturating_sub(now);
            std::thread::sleep(Duration::from_millis(until_next.min(until_end).clamp(1, 20)));
        }
        progress.finish();
        for ev in &events[next..] {
            let ran_ms = start.elapsed().as_millis() as u64;
            // Pairs must not leave CPUs away or libraries forced.
            let outcome = match ev.kind {
                EventKind::HotplugOnline
                | EventKind::BringInitialOnline
                | EventKind::SimOnline
                | EventKind::FallbackOff { .. } => self.exec(ev),
                _ => "not run: the run stopped first".into(),
            };
            let took_ms = (start.elapsed().as_millis() as u64).saturating_sub(ran_ms);
            self.push_log(LogEntry { at_ms: ev.at_ms, ran_ms, took_ms, event: ev.clone(), outcome });
        }
    }

    /// Keeps the entry and appends it to the log file, so that a crash leaves the log behind.
    /// Keeps the entry only in the log file when there is one (the supervisor reads the log
    /// from there), so that the run process's memory does not grow with the log.
    pub(crate) fn push_log(&mut self, e: LogEntry) {
        if let Some(f) = &mut self.log_file {
            use std::io::Write as _;
            if let Ok(line) = serde_json::to_string(&e) {
                if writeln!(f, "{line}").is_ok() {
                    self.logged += 1;
                    return;
                }
            }
        }
        self.log.push(e);
    }

    /// The library `pick` chooses among those that may be unloaded (a plugin with
    /// `RHP_FLAG_NEVER_UNLOAD` never is); the same as [`Engine::slot`] when all may.
    fn reloadable_slot(&self, pick: u32) -> Option<Arc<Slot>> {
        let ok: Vec<&Arc<Slot>> = self.ctx.slots.iter().filter(|s| !s.info.lock().unwrap().never_unload).collect();
        (!ok.is_empty()).then(|| ok[pick as usize % ok.len()].clone())
    }

    pub(crate) fn slot(&self, pick: u32) -> Option<Arc<Slot>> {
        let n = self.ctx.slots.len();
        (n > 0).then(|| self.ctx.slots[pick as usize % n].clone())
    }

    fn exec(&mut self, ev: &Event) -> String {
        match ev.kind {
            EventKind::Affinity { target, mask } => self.affinity(target, mask),
            EventKind::Cpuset { mask } => self.cpuset_change(mask),
            EventKind::HotplugOffline { pick } => self.hotplug_offline(pick),
            EventKind::HotplugOnline => self.hotplug_online(),
            EventKind::BringInitialOnline => self.bring_initial_online(),
            EventKind::SimOffline { pick } => self.sim_offline(pick),
            EventKind::SimOnline => self.sim_online(),
            EventKind::SignalStorm { target, count } => self.signal_storm(target, count),
            EventKind::Fork { seed } => self.fork(seed),
            EventKind::Reload { lib } => match self.reloadable_slot(lib) {
                Some(slot) => self.reload(&slot),
                None => "skipped: no library that may be unloaded".into(),
            },
            EventKind::Check { lib } => self.check(lib),
            EventKind::FallbackOn { lib } => self.fallback(lib, true),
            EventKind::FallbackOff { lib } => self.fallback(lib, false),
            EventKind::AliveBurst { count } => self.alive_burst(count),
        }
    }

    /// A quiesced check of the library `lib` picks, mid-run, while the others keep running.
    fn check(&mut self, lib: u32) -> String {
        let ctx = self.ctx.clone();
        let Some(slot) = self.slot(lib) else { return "skipped: no library".into() };
        let asked = Instant::now();
        let g = crate::stuck::watch(&format!("check of {}", slot.path.display()), STUCK_AFTER, || slot.quiesced());
        let waited = asked.elapsed().as_millis();
        let Some(l) = g.as_ref() else { return "skipped: not loaded".into() };
        let r = l.p.check();
        // Where a slow check spent its time: waiting for the work units in flight,
        // or checking.
        let wait_note =
            if waited >= 100 { format!("; waited {waited} ms for the units in flight") } else { String::new() };
        let out = match &r {
            Ok(c) => format!("{}: ok ({} facts{wait_note})", l.p.name(), c.checked),
            Err(m) => format!("{}: BROKEN: {m}{wait_note}", l.p.name()),
        };
        record_check(&slot, ctx.ms(), "mid-run", r);
        out
    }
}

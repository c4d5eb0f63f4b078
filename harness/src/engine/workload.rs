//! The workload: the libraries of the run ([`Slot`]), the shared context of every harness
//! thread ([`Ctx`]), and the worker threads that interleave the libraries' units of work.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cpu;
use crate::participants::{Counts, Foreign, Memory, Participant, SetupConfig, ThreadMode};
use crate::scenario::Scenario;
use crate::schedule;
use crate::state::*;

/// One work unit in this many is attributed to the CPU it ran on.
pub(crate) const WORK_SAMPLE: u64 = 32;

pub(crate) struct Loaded {
    pub(crate) p: Box<dyn Participant>,
    pub(crate) incarnation: u32,
}

/// One library of the run and what is learned about it.
pub(crate) struct Slot {
    pub(crate) path: PathBuf,
    pub(crate) config: String,
    pub(crate) state: RwLock<Option<Loaded>>,
    pub(crate) units: AtomicU64,
    pub(crate) work_error_count: AtomicU64,
    pub(crate) incarnation: AtomicU32,
    pub(crate) forced: AtomicBool,
    /// The loaded participant has a thread-start hook.
    pub(crate) thread_hook: AtomicBool,
    pub(crate) info: Mutex<SlotInfo>,
}

#[derive(Default)]
pub(crate) struct SlotInfo {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) index_used: Option<&'static str>,
    pub(crate) lazy: bool,
    pub(crate) load_position: usize,
    pub(crate) modes: BTreeMap<String, ModeSeen>,
    pub(crate) retired: Counts,
    pub(crate) forced_periods: u64,
    pub(crate) checks: Vec<CheckRecord>,
    pub(crate) work_errors: Vec<String>,
    pub(crate) reloads: Vec<ReloadRecord>,
    pub(crate) final_unmapped: Option<bool>,
    /// Registers an rseq area of its own (a foreign rseq user).
    pub(crate) foreign: bool,
    /// Never unloaded.
    pub(crate) never_unload: bool,
    /// What it said it held before the final unload.
    pub(crate) memory: Option<Memory>,
}

pub(crate) struct Ctx {
    pub(crate) scenario: Scenario,
    pub(crate) seed: u64,
    pub(crate) flags: i32,
    pub(crate) slots: Vec<Arc<Slot>>,
    pub(crate) start: Instant,
    pub(crate) stop: AtomicBool,
    pub(crate) workers: Mutex<Vec<i32>>,
    /// Work units per CPU, sampled (see `WORK_SAMPLE`).
    pub(crate) work_by_cpu: Vec<AtomicU64>,
    /// Every CPU seen online during the run.
    pub(crate) seen_online: Mutex<BTreeSet<u32>>,
    pub(crate) excluded: Mutex<BTreeSet<u32>>,
    pub(crate) cpuset_cpus: Mutex<Option<Vec<u32>>>,
    pub(crate) created: AtomicU64,
    pub(crate) alive: AtomicU64,
    pub(crate) max_alive: AtomicU64,
    pub(crate) spawn_failures: AtomicU64,
    pub(crate) panics: Mutex<Vec<String>>,
}

/// How long a worker sleeps when it finds a library being quiesced.
pub(crate) const QUIESCE_BACKOFF: Duration = Duration::from_micros(500);

impl Slot {
    /// Exclusive access: waits for the work units in flight and keeps new ones out (workers
    /// skip this library meanwhile), so that checks see a quiescent library.
    pub(crate) fn quiesced(&self) -> std::sync::RwLockWriteGuard<'_, Option<Loaded>> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ctx {
    pub(crate) fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub(crate) fn setup_config(&self, slot: &Slot) -> SetupConfig {
        SetupConfig { index: self.scenario.index, seed: self.seed, extra: slot.config.clone() }
    }

    /// One work unit of `slot` on the calling thread; samples the thread's mode the first
    /// time this thread uses this incarnation.
    pub(crate) fn unit(&self, slot: &Slot, seed: u64, seen: &mut u32) {
        let Ok(g) = slot.state.try_read() else {
            // A check or a reload is waiting for the units in flight: step aside instead of
            // spinning past it, so that those units get the CPU (on a crowded CPU, or in an
            // emulated guest, spinning skippers starved them for tens of seconds).
            std::thread::sleep(QUIESCE_BACKOFF);
            return;
        };
        let Some(l) = g.as_ref() else { return };
        if let Err(msg) = l.p.work(seed) {
            let n = slot.work_error_count.fetch_add(1, Ordering::Relaxed);
            if n < 10 {
                let at = self.ms();
                slot.info.lock().unwrap().work_errors.push(format!(
                    "{msg} (thread {}, work seed {seed}, at {:.3} s)",
                    cpu::gettid(),
                    at as f64 / 1000.0
                ));
            }
        }
        let done = slot.units.fetch_add(1, Ordering::Relaxed);
        if done.is_multiple_of(WORK_SAMPLE) {
            // Which CPU does the work: sampled, so the cost stays off the work itself.
            if let Some(c) = rseq::topology::current_cpu().and_then(|c| self.work_by_cpu.get(c as usize)) {
                c.fetch_add(WORK_SAMPLE, Ordering::Relaxed);
            }
        }
        if *seen != l.incarnation {
            *seen = l.incarnation;
            let m = l.p.thread_mode();
            let forced = slot.forced.load(Ordering::Relaxed);
            self.note_mode(slot, m, forced);
        }
    }

    pub(crate) fn note_mode(&self, slot: &Slot, m: ThreadMode, forced_now: bool) {
        let mut info = slot.info.lock().unwrap();
        let foreign = if info.foreign {
            Foreign::ThisLibrary
        } else if self.scenario.foreign_rseq {
            Foreign::Expected
        } else {
            Foreign::No
        };
        let allowed = m.allowed(self.scenario.mode, info.lazy, forced_now || info.forced_periods > 0, foreign);
        let name = m.name();
        let e = info.modes.entry(name.clone()).or_insert_with(|| ModeSeen {
            mode: name,
            fast: m.is_fast(),
            allowed,
            threads: 0,
            first: format!("thread {} at {:.3} s", cpu::gettid(), self.ms() as f64 / 1000.0),
        });
        e.threads += 1;
        e.allowed &= allowed;
    }

    /// One round over every library in a random order.
    pub(crate) fn round(&self, rng: &mut ChaCha8Rng, seen: &mut [u32], order: &mut [usize]) {
        order.shuffle(rng);
        for &i in order.iter() {
            self.unit(&self.slots[i], rng.random(), &mut seen[i]);
        }
    }

    /// The thread-start hooks of the loaded libraries that have one, first thing in a thread
    /// the harness created (before any library runs in it).
    pub(crate) fn run_thread_hooks(&self) {
        for slot in &self.slots {
            if slot.thread_hook.load(Ordering::Relaxed) {
                let g = slot.state.read().unwrap_or_else(|e| e.into_inner());
                if let Some(l) = g.as_ref() {
                    l.p.thread_start();
                }
            }
        }
    }

    pub(crate) fn thread_started(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
        let a = self.alive.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_alive.fetch_max(a, Ordering::Relaxed);
    }

    pub(crate) fn thread_ended(&self) {
        self.alive.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn register_worker(&self) {
        self.workers.lock().unwrap().push(cpu::gettid());
    }

    pub(crate) fn unregister_worker(&self) {
        let tid = cpu::gettid();
        self.workers.lock().unwrap().retain(|&t| t != tid);
    }

    pub(crate) fn note_panic(&self, what: &str, e: Box<dyn std::any::Any + Send>) {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into());
        self.panics.lock().unwrap().push(format!("{what}: {msg}"));
    }

    /// CPUs a thread may be given now: online, not excluded by simulated hotplug, inside the
    /// run's cpuset.
    pub(crate) fn usable_cpus(&self) -> Vec<u32> {
        let excluded = self.excluded.lock().unwrap().clone();
        let cs = self.cpuset_cpus.lock().unwrap().clone();
        cpu::online_cpus()
            .into_iter()
            .filter(|c| !excluded.contains(c) && cs.as_ref().is_none_or(|s| s.contains(c)))
            .collect()
    }

    /// Gives every thread of the process `cpus` (after a CPU came back).
    pub(crate) fn set_all_affinity(&self, cpus: &[u32]) -> (u64, u64) {
        let (mut ok, mut err) = (0, 0);
        if cpus.is_empty() {
            return (0, 0);
        }
        for tid in cpu::task_ids() {
            match cpu::set_affinity(tid, cpus) {
                Ok(()) => ok += 1,
                Err(_) => err += 1,
            }
        }
        (ok, err)
    }
}

pub(crate) fn spawn_small<F: FnOnce() + Send + 'static>(
    stack_kib: usize,
    name: &str,
    f: F,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).stack_size(stack_kib * 1024).spawn(f)
}

pub(crate) fn mixed_worker(ctx: Arc<Ctx>, id: u64) {
    ctx.run_thread_hooks();
    ctx.thread_started();
    ctx.register_worker();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut rng = ChaCha8Rng::seed_from_u64(schedule::thread_seed(ctx.seed, id));
        let mut seen = vec![u32::MAX; ctx.slots.len()];
        let mut order: Vec<usize> = (0..ctx.slots.len()).collect();
        while !ctx.stopping() {
            ctx.round(&mut rng, &mut seen, &mut order);
        }
    }));
    if let Err(e) = r {
        ctx.note_panic(&format!("mixed worker {id}"), e);
    }
    ctx.unregister_worker();
    ctx.thread_ended();
}

pub(crate) fn lib_worker(ctx: Arc<Ctx>, id: u64, slot: usize) {
    ctx.run_thread_hooks();
    ctx.thread_started();
    ctx.register_worker();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut rng = ChaCha8Rng::seed_from_u64(schedule::thread_seed(ctx.seed, id));
        let mut seen = u32::MAX;
        while !ctx.stopping() {
            ctx.unit(&ctx.slots[slot], rng.random(), &mut seen);
        }
    }));
    if let Err(e) = r {
        ctx.note_panic(&format!("worker {id} of library #{slot}"), e);
    }
    ctx.unregister_worker();
    ctx.thread_ended();
}

/// Body of a short-lived thread: `rounds` rounds over every library.
pub(crate) fn churn_body(ctx: &Ctx, seed: u64, rounds: u32) {
    ctx.run_thread_hooks();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = vec![u32::MAX; ctx.slots.len()];
    let mut order: Vec<usize> = (0..ctx.slots.len()).collect();
    for _ in 0..rounds {
        ctx.round(&mut rng, &mut seen, &mut order);
    }
}

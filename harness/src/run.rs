//! The run process: loads the libraries, starts the workload, executes the schedule of
//! disturbances, checks every library and collects the [`RunState`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::cpu;
use crate::participant::{self, CheckOk, Counts, Participant, SetupConfig, ThreadMode};
use crate::scenario::{HotplugMode, Scenario};
use crate::schedule::{self, Event, EventKind, Plan};
use crate::state::*;

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

/// One work unit in this many is attributed to the CPU it ran on.
const WORK_SAMPLE: u64 = 32;

/// How often the engine looks for CPUs that came online outside the harness, ms.
const CPU_SCAN_MS: u64 = 100;
/// Nice value of the event thread during the run (needs CAP_SYS_NICE; kept at 0 otherwise).
const ENGINE_NICE: i32 = -10;

struct Loaded {
    p: Box<dyn Participant>,
    incarnation: u32,
}

/// One library of the run and what is learned about it.
struct Slot {
    path: PathBuf,
    config: String,
    state: RwLock<Option<Loaded>>,
    units: AtomicU64,
    work_error_count: AtomicU64,
    incarnation: AtomicU32,
    forced: AtomicBool,
    info: Mutex<SlotInfo>,
}

#[derive(Default)]
struct SlotInfo {
    name: String,
    kind: String,
    index_used: Option<&'static str>,
    lazy: bool,
    load_position: usize,
    modes: BTreeMap<String, ModeSeen>,
    retired: Counts,
    forced_periods: u64,
    checks: Vec<CheckRecord>,
    work_errors: Vec<String>,
    reloads: Vec<ReloadRecord>,
    final_unmapped: Option<bool>,
}

/// Signals seen by the storm handler.
static SIGNALS_RECEIVED: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_storm_signal(_: libc::c_int) {
    SIGNALS_RECEIVED.fetch_add(1, Ordering::Relaxed);
}

/// The storm signal: the first real-time signal glibc leaves to programs (real-time signals
/// queue, so every one sent is delivered).
fn storm_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

struct Ctx {
    scenario: Scenario,
    seed: u64,
    flags: i32,
    slots: Vec<Arc<Slot>>,
    start: Instant,
    stop: AtomicBool,
    workers: Mutex<Vec<i32>>,
    /// Work units per CPU, sampled (see `WORK_SAMPLE`).
    work_by_cpu: Vec<AtomicU64>,
    /// Every CPU seen online during the run.
    seen_online: Mutex<BTreeSet<u32>>,
    excluded: Mutex<BTreeSet<u32>>,
    cpuset_cpus: Mutex<Option<Vec<u32>>>,
    created: AtomicU64,
    alive: AtomicU64,
    max_alive: AtomicU64,
    spawn_failures: AtomicU64,
    panics: Mutex<Vec<String>>,
}

/// How long a worker sleeps when it finds a library being quiesced.
const QUIESCE_BACKOFF: Duration = Duration::from_micros(500);

/// A quiesced check waiting this long for the work units in flight prints where the threads are.
const STUCK_AFTER: Duration = Duration::from_secs(10);

impl Slot {
    /// Exclusive access: waits for the work units in flight and keeps new ones out (workers
    /// skip this library meanwhile), so that checks see a quiescent library.
    fn quiesced(&self) -> std::sync::RwLockWriteGuard<'_, Option<Loaded>> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ctx {
    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn setup_config(&self, slot: &Slot) -> SetupConfig {
        SetupConfig { index: self.scenario.index, seed: self.seed, extra: slot.config.clone() }
    }

    /// One work unit of `slot` on the calling thread; samples the thread's mode the first
    /// time this thread uses this incarnation.
    fn unit(&self, slot: &Slot, seed: u64, seen: &mut u32) {
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

    fn note_mode(&self, slot: &Slot, m: ThreadMode, forced_now: bool) {
        let mut info = slot.info.lock().unwrap();
        let allowed = m.allowed(self.scenario.mode, info.lazy, forced_now || info.forced_periods > 0);
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
    fn round(&self, rng: &mut ChaCha8Rng, seen: &mut [u32], order: &mut [usize]) {
        order.shuffle(rng);
        for &i in order.iter() {
            self.unit(&self.slots[i], rng.random(), &mut seen[i]);
        }
    }

    fn thread_started(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
        let a = self.alive.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_alive.fetch_max(a, Ordering::Relaxed);
    }

    fn thread_ended(&self) {
        self.alive.fetch_sub(1, Ordering::Relaxed);
    }

    fn register_worker(&self) {
        self.workers.lock().unwrap().push(cpu::gettid());
    }

    fn unregister_worker(&self) {
        let tid = cpu::gettid();
        self.workers.lock().unwrap().retain(|&t| t != tid);
    }

    fn note_panic(&self, what: &str, e: Box<dyn std::any::Any + Send>) {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into());
        self.panics.lock().unwrap().push(format!("{what}: {msg}"));
    }

    /// CPUs a thread may be given now: online, not excluded by simulated hotplug, inside the
    /// run's cpuset.
    fn usable_cpus(&self) -> Vec<u32> {
        let excluded = self.excluded.lock().unwrap().clone();
        let cs = self.cpuset_cpus.lock().unwrap().clone();
        cpu::online_cpus()
            .into_iter()
            .filter(|c| !excluded.contains(c) && cs.as_ref().is_none_or(|s| s.contains(c)))
            .collect()
    }

    /// Gives every thread of the process `cpus` (after a CPU came back).
    fn set_all_affinity(&self, cpus: &[u32]) -> (u64, u64) {
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

fn spawn_small<F: FnOnce() + Send + 'static>(stack_kib: usize, name: &str, f: F) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).stack_size(stack_kib * 1024).spawn(f)
}

fn mixed_worker(ctx: Arc<Ctx>, id: u64) {
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

fn lib_worker(ctx: Arc<Ctx>, id: u64, slot: usize) {
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
fn churn_body(ctx: &Ctx, seed: u64, rounds: u32) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = vec![u32::MAX; ctx.slots.len()];
    let mut order: Vec<usize> = (0..ctx.slots.len()).collect();
    for _ in 0..rounds {
        ctx.round(&mut rng, &mut seen, &mut order);
    }
}

fn churn_driver(ctx: Arc<Ctx>) {
    let c = ctx.scenario.churn.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(schedule::thread_seed(ctx.seed, 1 << 20));
    let mut handles: VecDeque<JoinHandle<()>> = VecDeque::new();
    let t0 = Instant::now();
    let mut made = 0u64;
    while !ctx.stopping() {
        let due = (t0.elapsed().as_secs_f64() * c.rate) as u64;
        let mut spawned = false;
        while made < due && handles.len() < c.max_in_flight && !ctx.stopping() {
            let seed = rng.random();
            let cx = ctx.clone();
            let rounds = c.rounds.max(1);
            cx.thread_started();
            let r = spawn_small(c.stack_kib, "churn", move || {
                churn_body(&cx, seed, rounds);
                cx.thread_ended();
            });
            match r {
                Ok(h) => handles.push_back(h),
                Err(_) => {
                    ctx.thread_ended();
                    ctx.created.fetch_sub(1, Ordering::Relaxed);
                    ctx.spawn_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            made += 1;
            spawned = true;
        }
        while handles.front().is_some_and(|h| h.is_finished()) {
            if let Some(h) = handles.pop_front() {
                if let Err(e) = h.join() {
                    ctx.note_panic("churn thread", e);
                }
            }
        }
        if !spawned {
            std::thread::sleep(Duration::from_micros(500));
        } else if handles.len() >= c.max_in_flight {
            if let Some(h) = handles.pop_front() {
                if let Err(e) = h.join() {
                    ctx.note_panic("churn thread", e);
                }
            }
        }
    }
    for h in handles {
        if let Err(e) = h.join() {
            ctx.note_panic("churn thread", e);
        }
    }
}

/// Holds `count` threads alive at once; returns how many were alive together.
fn alive_burst(ctx: Arc<Ctx>, count: u32) -> (u64, u64) {
    // Started by the event thread: back to the workers' priority, for this thread and the
    // threads it creates.
    let _ = cpu::set_thread_nice(0);
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let started = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(count as usize);
    for i in 0..count {
        // Only SIGINT/SIGTERM cut a burst short: the run waits for it otherwise.
        if cpu::stop_requested() {
            break;
        }
        let (cx, g, st) = (ctx.clone(), gate.clone(), started.clone());
        let seed = schedule::thread_seed(ctx.seed, (2 << 20) + i as u64);
        cx.thread_started();
        let r = spawn_small(ctx.scenario.churn.stack_kib, "alive", move || {
            churn_body(&cx, seed, 1);
            st.fetch_add(1, Ordering::SeqCst);
            let (m, cv) = &*g;
            let mut open = m.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            drop(open);
            cx.thread_ended();
        });
        match r {
            Ok(h) => handles.push(h),
            Err(_) => {
                ctx.thread_ended();
                ctx.created.fetch_sub(1, Ordering::Relaxed);
                ctx.spawn_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let want = handles.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while started.load(Ordering::SeqCst) < want && Instant::now() < deadline && !cpu::stop_requested() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let reached = started.load(Ordering::SeqCst);
    {
        let (m, cv) = &*gate;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }
    for h in handles {
        if let Err(e) = h.join() {
            ctx.note_panic("alive-burst thread", e);
        }
    }
    (count as u64, reached)
}

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

struct Engine {
    ctx: Arc<Ctx>,
    job: Job,
    hotplug: HotplugMode,
    hotplug_note: Option<String>,
    last_offlined: Option<u32>,
    /// Online when the run started (before the harness took any CPU offline).
    initial_online: Vec<u32>,
    /// CPUs first seen online during the run, and what was done about them.
    added_during_run: Vec<u32>,
    cpu_notes: Vec<String>,
    initial_offline: Option<u32>,
    first_offline: Option<u32>,
    cpuset: Option<cpu::Cpuset>,
    cpuset_note: Option<String>,
    log: Vec<LogEntry>,
    forks: Vec<ForkRecord>,
    offlined: u64,
    onlined: u64,
    signals_sent: u64,
    affinity: (u64, u64),
    cpuset_changes: (u64, u64),
    bursts: Vec<JoinHandle<(u64, u64)>>,
    log_file: Option<std::fs::File>,
}

/// A `kB` field of /proc/self/status (0 when absent).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Runs a job in this process and returns what it established.
pub fn run_job(job: Job) -> RunState {
    cpu::install_restore_handlers();
    let guard = cpu::HotplugGuard::new();
    // SAFETY: installing a handler that only increments an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_storm_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(storm_signal(), &sa, std::ptr::null_mut());
    }
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
        flags: participant::dlopen_flags(s.rtld_global),
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
    };
    let mut fatal = Vec::new();
    let mut load_errors = Vec::new();

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
        match participant::open_participant(&slot.path, ctx.flags, &cfg) {
            Ok(p) => {
                let mut info = slot.info.lock().unwrap();
                info.name = p.name().to_string();
                info.kind = p.kind().to_string();
                info.lazy = p.registers_lazily();
                info.index_used = p.index_used();
                info.load_position = pos;
                drop(info);
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
            threads.push(std::thread::Builder::new().name("churn".into()).spawn(move || churn_driver(cx)).unwrap());
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
        }
    }
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
            let unmapped = !participant::is_mapped(&slot.path);
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
            hotplug_note: eng.hotplug_note.clone(),
            cpuset_note: eng.cpuset_note.clone(),
            cpuset_hierarchy: cpuset_hierarchy.to_string(),
            work_by_cpu: ctx.work_by_cpu.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
            possible: rseq::topology::possible_cpus().to_vec(),
            added_during_run: std::mem::take(&mut eng.added_during_run),
            cpu_notes: std::mem::take(&mut eng.cpu_notes),
            rss_kib: status_kib("VmRSS:"),
            peak_rss_kib: status_kib("VmHWM:"),
        },
        threads: ThreadState {
            created: ctx.created.load(Ordering::Relaxed),
            max_alive: ctx.max_alive.load(Ordering::Relaxed),
            spawn_failures: ctx.spawn_failures.load(Ordering::Relaxed),
            alive_burst: burst,
        },
        signals_sent: eng.signals_sent,
        signals_received: SIGNALS_RECEIVED.load(Ordering::Relaxed),
        affinity_changes: eng.affinity,
        cpuset_changes: eng.cpuset_changes,
        panics,
        fatal,
        load_errors,
        events: std::mem::take(&mut eng.log),
        elapsed_ms,
        interrupted: cpu::stop_requested(),
        engine_priority,
    }
}

fn record_check(slot: &Slot, at_ms: u64, phase: &str, r: Result<CheckOk, String>) {
    let rec = match r {
        Ok(c) => CheckRecord { at_ms, phase: phase.into(), ok: true, checked: c.checked, message: c.what },
        Err(m) => CheckRecord { at_ms, phase: phase.into(), ok: false, checked: 0, message: m },
    };
    slot.info.lock().unwrap().checks.push(rec);
}

/// Progress display: a bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    next_line_ms: u64,
    step_ms: u64,
    enabled: bool,
}

impl Progress {
    fn new(duration_ms: u64, enabled: bool) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let bar = (enabled && tty).then(|| {
            let b = indicatif::ProgressBar::new(duration_ms);
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Progress { bar, next_line_ms: 0, step_ms: (duration_ms / 10).clamp(1000, 10_000), enabled }
    }

    fn update(&mut self, at_ms: u64, msg: String) {
        if let Some(b) = &self.bar {
            b.set_position(at_ms);
            b.set_message(msg);
        } else if self.enabled && at_ms >= self.next_line_ms {
            eprintln!("harness: {:>6.1} s  {msg}", at_ms as f64 / 1000.0);
            self.next_line_ms = at_ms + self.step_ms;
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
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
    fn push_log(&mut self, e: LogEntry) {
        if let Some(f) = &mut self.log_file {
            use std::io::Write as _;
            if let Ok(line) = serde_json::to_string(&e) {
                let _ = writeln!(f, "{line}");
            }
        }
        self.log.push(e);
    }

    fn slot(&self, pick: u32) -> Option<Arc<Slot>> {
        let n = self.ctx.slots.len();
        (n > 0).then(|| self.ctx.slots[pick as usize % n].clone())
    }

    fn exec(&mut self, ev: &Event) -> String {
        let ctx = self.ctx.clone();
        match ev.kind {
            EventKind::Affinity { target, mask } => {
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
            EventKind::Cpuset { mask } => {
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
            EventKind::HotplugOffline { pick } => {
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
            EventKind::HotplugOnline => match self.last_offlined.take() {
                Some(c) => self.bring_online(c),
                None => "skipped: nothing offline".into(),
            },
            EventKind::BringInitialOnline => match self.initial_offline.take() {
                Some(c) => self.bring_online(c),
                None => self.hotplug_note.clone().unwrap_or_else(|| "skipped: no CPU was offline at start".into()),
            },
            EventKind::SimOffline { pick } => {
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
            EventKind::SimOnline => {
                let back: Vec<u32> = std::mem::take(&mut *ctx.excluded.lock().unwrap()).into_iter().collect();
                if back.is_empty() {
                    return "skipped: nothing excluded".into();
                }
                let all = ctx.usable_cpus();
                let (ok, err) = ctx.set_all_affinity(&all);
                format!("cpu {} back for {ok} threads ({err} refused)", rseq::topology::format_cpu_list(&back))
            }
            EventKind::SignalStorm { target, count } => {
                let tids = ctx.workers.lock().unwrap().clone();
                if tids.is_empty() {
                    return "skipped: no worker".into();
                }
                // SAFETY: getpid has no preconditions.
                let pid = unsafe { libc::getpid() };
                let mut sent = 0;
                for i in 0..count {
                    let tid = tids[(target as usize + i as usize) % tids.len()];
                    // SAFETY: tgkill to a thread of this process; a thread that exited gives ESRCH.
                    if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, storm_signal()) } == 0 {
                        sent += 1;
                    }
                }
                self.signals_sent += sent;
                format!("{sent} signals to {} threads", tids.len().min(count as usize))
            }
            EventKind::Fork { seed } => {
                let at = ctx.ms();
                let rec = self.fork_once(seed, at);
                let out = format!("{}: {}", if rec.ok { "child ok" } else { "CHILD FAILED" }, rec.verdict.join("; "));
                self.forks.push(rec);
                out
            }
            EventKind::Reload { lib } => match self.slot(lib) {
                Some(slot) => self.reload(&slot),
                None => "skipped: no library".into(),
            },
            EventKind::Check { lib } => match self.slot(lib) {
                Some(slot) => {
                    let asked = Instant::now();
                    let g = crate::stuck::watch(&format!("check of {}", slot.path.display()), STUCK_AFTER, || {
                        slot.quiesced()
                    });
                    let waited = asked.elapsed().as_millis();
                    let Some(l) = g.as_ref() else { return "skipped: not loaded".into() };
                    let r = l.p.check();
                    // Where a slow check spent its time: waiting for the work units in flight,
                    // or checking.
                    let wait_note = if waited >= 100 {
                        format!("; waited {waited} ms for the units in flight")
                    } else {
                        String::new()
                    };
                    let out = match &r {
                        Ok(c) => format!("{}: ok ({} facts{wait_note})", l.p.name(), c.checked),
                        Err(m) => format!("{}: BROKEN: {m}{wait_note}", l.p.name()),
                    };
                    record_check(&slot, ctx.ms(), "mid-run", r);
                    out
                }
                None => "skipped: no library".into(),
            },
            EventKind::FallbackOn { lib } | EventKind::FallbackOff { lib } => {
                let on = matches!(ev.kind, EventKind::FallbackOn { .. });
                let Some(slot) = self.slot(lib) else { return "skipped: no library".into() };
                let g = slot.state.read().unwrap();
                let Some(l) = g.as_ref() else { return "skipped: not loaded".into() };
                if on {
                    // Mark first: threads sampling from now on may see "disabled".
                    slot.forced.store(true, Ordering::SeqCst);
                    if l.p.force_fallback(true) {
                        slot.info.lock().unwrap().forced_periods += 1;
                        format!("{}: fallback forced", l.p.name())
                    } else {
                        slot.forced.store(false, Ordering::SeqCst);
                        format!("{}: skipped (no force-fallback in its API)", l.p.name())
                    }
                } else if slot.forced.load(Ordering::SeqCst) {
                    l.p.force_fallback(false);
                    slot.forced.store(false, Ordering::SeqCst);
                    format!("{}: fallback released", l.p.name())
                } else {
                    "skipped: not forced".into()
                }
            }
            EventKind::AliveBurst { count } => {
                let cx = ctx.clone();
                match std::thread::Builder::new().name("alive-burst".into()).spawn(move || alive_burst(cx, count)) {
                    Ok(h) => {
                        self.bursts.push(h);
                        format!("burst of {count} threads started")
                    }
                    Err(e) => format!("cannot start burst: {e}"),
                }
            }
        }
    }

    /// CPUs that came online for the first time during the run — hot-added to the machine
    /// (e.g. a VM's vCPU) and onlined by someone else: the libraries sized their per-CPU
    /// data before those CPUs existed. Every thread's affinity (and the run's cpuset) is
    /// widened so that the workload, and the affinity disturbance, use them.
    fn scan_new_cpus(&mut self, now_ms: u64) {
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

    fn bring_online(&mut self, c: u32) -> String {
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

    fn reload(&mut self, slot: &Arc<Slot>) -> String {
        let ctx = self.ctx.clone();
        let t0 = Instant::now();
        let at = ctx.ms();
        let mut g = slot.state.write().unwrap();
        let Some(old) = g.take() else { return "skipped: not loaded".into() };
        let name = old.p.name().to_string();
        if slot.forced.swap(false, Ordering::SeqCst) {
            old.p.force_fallback(false);
        }
        let before = old.p.before_unload();
        record_check(slot, at, "before-unload", before);
        let counts = old.p.report();
        old.p.teardown();
        let inc = old.incarnation + 1;
        drop(old);
        let unmapped = !participant::is_mapped(&slot.path);
        slot.info.lock().unwrap().retired.add(&counts);
        let cfg = ctx.setup_config(slot);
        let (load_error, out) = match participant::open_participant(&slot.path, ctx.flags, &cfg) {
            Ok(p) => {
                if unmapped {
                    let fresh = p.fresh_after_reload();
                    record_check(slot, ctx.ms(), "fresh-load", fresh);
                }
                slot.incarnation.store(inc, Ordering::SeqCst);
                *g = Some(Loaded { p, incarnation: inc });
                (
                    None,
                    format!("{name}: unloaded ({}), loaded again", if unmapped { "unmapped" } else { "still mapped" }),
                )
            }
            Err(e) => (Some(format!("{e:#}")), format!("{name}: RELOAD FAILED: {e:#}")),
        };
        drop(g);
        slot.info.lock().unwrap().reloads.push(ReloadRecord {
            at_ms: at,
            unmapped,
            load_error,
            gap_ms: t0.elapsed().as_millis() as u64,
        });
        out
    }

    /// Forks; the child uses every library on its only thread and reports through a pipe.
    fn fork_once(&mut self, seed: u64, at_ms: u64) -> ForkRecord {
        let slots = self.ctx.slots.clone();
        // Quiesce the libraries that need it; hold the others' read locks so that no reload
        // runs meanwhile (only this thread reloads anyway).
        enum G<'a> {
            R(std::sync::RwLockReadGuard<'a, Option<Loaded>>),
            W(std::sync::RwLockWriteGuard<'a, Option<Loaded>>),
        }
        let mut guards = Vec::new();
        for s in &slots {
            let needs = s.state.read().unwrap().as_ref().is_some_and(|l| l.p.fork_needs_quiescence());
            guards.push(if needs { G::W(s.state.write().unwrap()) } else { G::R(s.state.read().unwrap()) });
        }
        let parts: Vec<(&dyn Participant, String)> = guards
            .iter()
            .filter_map(|g| {
                let l = match g {
                    G::R(r) => r.as_ref(),
                    G::W(w) => w.as_ref(),
                }?;
                Some((l.p.as_ref(), l.p.name().to_string()))
            })
            .collect();
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return ForkRecord {
                at_ms,
                ok: false,
                verdict: vec![format!("pipe: {}", std::io::Error::last_os_error())],
            };
        }
        // SAFETY: fork; the child only runs the libraries, formats its verdict (malloc is
        // fork-safe in glibc), writes it and leaves with _exit, touching no lock that another
        // thread might have held.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: closing the read end in the child.
            unsafe { libc::close(fds[0]) };
            let mut all_ok = true;
            let mut text = String::new();
            for (i, (p, name)) in parts.iter().enumerate() {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.fork_child(seed ^ i as u64)));
                let mode = p.thread_mode().name();
                match r {
                    Ok(Ok(c)) => text.push_str(&format!("{name}: ok ({} facts, mode {mode})\n", c.checked)),
                    Ok(Err(m)) => {
                        all_ok = false;
                        text.push_str(&format!("{name}: FAILED in the child: {m} (mode {mode})\n"));
                    }
                    Err(_) => {
                        all_ok = false;
                        text.push_str(&format!("{name}: panicked in the child\n"));
                    }
                }
            }
            let b = text.as_bytes();
            let mut off = 0;
            while off < b.len() {
                // SAFETY: writing our own buffer to the pipe.
                let n = unsafe { libc::write(fds[1], b[off..].as_ptr().cast(), b.len() - off) };
                if n <= 0 {
                    break;
                }
                off += n as usize;
            }
            // SAFETY: leave the child without running atexit handlers or destructors.
            unsafe { libc::_exit(if all_ok { 0 } else { 1 }) };
        }
        // SAFETY: closing the write end in the parent.
        unsafe { libc::close(fds[1]) };
        if pid < 0 {
            // SAFETY: closing our read end.
            unsafe { libc::close(fds[0]) };
            return ForkRecord {
                at_ms,
                ok: false,
                verdict: vec![format!("fork: {}", std::io::Error::last_os_error())],
            };
        }
        let (text, timed_out) = read_with_timeout(fds[0], Duration::from_secs(15));
        // SAFETY: closing our read end.
        unsafe { libc::close(fds[0]) };
        if timed_out {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let nparts = parts.len();
        drop(parts);
        drop(guards);
        let mut verdict: Vec<String> = text.lines().map(str::to_string).collect();
        let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        if timed_out {
            verdict.push("the child did not finish within 15 s (deadlock after fork?) and was killed".into());
        } else if libc::WIFSIGNALED(status) {
            verdict.push(format!("the child died from signal {}", libc::WTERMSIG(status)));
        } else if !exited_ok {
            verdict.push(format!("the child exited with {}", libc::WEXITSTATUS(status)));
        }
        let ok = exited_ok && !timed_out && verdict.len() == nparts;
        ForkRecord { at_ms, ok, verdict }
    }
}

fn read_with_timeout(fd: i32, limit: Duration) -> (String, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (String::from_utf8_lossy(&out).into_owned(), true);
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return (String::from_utf8_lossy(&out).into_owned(), false);
        }
        if r == 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: reading into our buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            return (String::from_utf8_lossy(&out).into_owned(), false);
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

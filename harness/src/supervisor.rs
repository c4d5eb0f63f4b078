//! The supervisor: resolves the scenario and the libraries, prints the seed, starts the run
//! process (re-exec of this executable, in the requested registration mode), restores CPUs
//! and the cpuset whatever happened to it, evaluates the invariants, reports, and writes the
//! replay file of a failure.

use std::io::Write as _;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use anyhow::{anyhow, bail, Context, Result};

use crate::cli::OutputArgs;
use crate::cpu;
use crate::engine::{self, Job};
use crate::invariants;
use crate::report::{self, Report};
use crate::scenario::{HotplugMode, LibSpec, RegMode, Scenario};
use crate::schedule;
use crate::state::*;

/// Environment variable that tells the re-executed harness to be the run process.
pub const ENV_JOB: &str = "RSEQ_HARNESS_JOB";
/// Where the run process writes its [`RunState`].
pub const ENV_OUT: &str = "RSEQ_HARNESS_OUT";
/// Where the run process appends its event log as it goes (JSON lines).
pub const ENV_LOG: &str = "RSEQ_HARNESS_LOG";

/// Exit codes.
pub const EXIT_OK: u8 = 0;
/// An invariant broke.
pub const EXIT_VIOLATION: u8 = 1;
/// The run could not start.
pub const EXIT_SETUP: u8 = 2;
/// Interrupted.
pub const EXIT_INTERRUPTED: u8 = 130;

/// The cargo target directory this harness was built into (`target/<profile>/harness`, or
/// `target/<profile>/deps/...` for tests), if it looks like one.
pub fn target_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(d));
    }
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent()?;
    }
    // dir = target/<profile>
    dir.parent().map(Path::to_path_buf)
}

/// The workspace's build of `file`: `target/release/<file>`, else `target/debug/<file>`.
pub fn find_built(file: &str) -> Option<PathBuf> {
    let t = target_dir()?;
    ["release", "debug"].iter().map(|p| t.join(p).join(file)).find(|p| p.exists())
}

/// Plugins built by `make -C harness/plugins`: `target/<dir>/*.so` (`harness-plugins`, or
/// `harness-plugins/foreign` for the foreign rseq user).
pub fn default_plugins(dir: &str) -> Vec<PathBuf> {
    let Some(t) = target_dir() else { return Vec::new() };
    let Ok(rd) = std::fs::read_dir(t.join(dir)) else { return Vec::new() };
    let mut v: Vec<PathBuf> =
        rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "so")).collect();
    v.sort();
    v
}

/// Every library of the run: the scenario's, or the workspace's build and default plugins.
pub fn resolve_libs(s: &Scenario) -> Result<Vec<LibSpec>> {
    let mut libs = s.libs.clone();
    if libs.is_empty() && !s.no_default_libs {
        for f in crate::participants::registry::default_files() {
            match find_built(f) {
                Some(p) => libs.push(LibSpec { path: p, config: String::new() }),
                None => bail!(
                    "{f} not found in {}/release or {}/debug: build the libraries with \
                     `cargo build --release --workspace`, or name them with --lib PATH",
                    target_dir().map_or("target".into(), |t| t.display().to_string()),
                    target_dir().map_or("target".into(), |t| t.display().to_string()),
                ),
            }
        }
    }
    let mut plugins = s.plugins.clone();
    if plugins.is_empty() && !s.no_default_libs {
        plugins = default_plugins("harness-plugins")
            .into_iter()
            .map(|p| LibSpec { path: p, config: String::new() })
            .collect();
        if s.foreign_rseq {
            // The foreign rseq user is only discovered when the run expects it.
            let foreign = default_plugins("harness-plugins/foreign");
            if foreign.is_empty() {
                bail!(
                    "--foreign-rseq: no plugin in {}/harness-plugins/foreign/ (build it with `make -C harness/plugins`, \
                     or name it with --plugin PATH)",
                    target_dir().map_or("target".into(), |t| t.display().to_string())
                );
            }
            plugins.extend(foreign.into_iter().map(|p| LibSpec { path: p, config: String::new() }));
        }
    }
    libs.extend(plugins);
    for l in &mut libs {
        if !l.path.exists() {
            bail!(
                "library {} does not exist (build it first: `cargo build --release --workspace` for the project's \
                 libraries, `make -C harness/plugins` for the example plugin)",
                l.path.display()
            );
        }
        l.path = std::fs::canonicalize(&l.path).with_context(|| format!("cannot resolve {}", l.path.display()))?;
    }
    if libs.is_empty() {
        bail!("no library to run: name some with --lib PATH or --plugin PATH");
    }
    Ok(libs)
}

/// `auto` made concrete, and why real hotplug is not used when it is not.
pub fn resolve_hotplug(mode: HotplugMode) -> (HotplugMode, Option<String>) {
    let why = cpu::hotplug_unavailable_reason();
    match (mode, why) {
        (HotplugMode::Auto, None) => (HotplugMode::Real, None),
        (HotplugMode::Auto, Some(w)) => (HotplugMode::Simulated, Some(format!("real hotplug {w}; simulated instead"))),
        (HotplugMode::Real, Some(w)) => (HotplugMode::Off, Some(format!("real hotplug {w}"))),
        (m, _) => (m, None),
    }
}

fn random_seed() -> u64 {
    rand::random()
}

/// Makes the job of a new run (seed drawn when the scenario has none).
pub fn make_job(mut s: Scenario, progress: bool) -> Result<Job> {
    let seed = *s.seed.get_or_insert_with(random_seed);
    let libs = resolve_libs(&s)?;
    let (hotplug, note) = resolve_hotplug(s.hotplug.mode);
    let plan = schedule::generate(&s, seed, libs.len(), hotplug);
    Ok(Job { scenario: s, libs, plan, hotplug_note: note, progress })
}

static CHILD: AtomicI32 = AtomicI32::new(0);
/// A SIGINT/SIGTERM/SIGHUP reached the supervisor (a soak stops after the run in progress).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether a SIGINT/SIGTERM/SIGHUP reached the supervisor since its first run started.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

extern "C" fn forward_signal(sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    // The run process has its own process group: a terminal's Ctrl-C or a signal to this
    // process's group reaches it only through here, exactly once.
    let child = CHILD.load(Ordering::SeqCst);
    if child > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(child, sig) };
    }
}

fn install_forwarding() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn tunables_with_rseq_off() -> String {
    match std::env::var("GLIBC_TUNABLES") {
        Ok(t) if !t.is_empty() => format!("{t}:glibc.pthread.rseq=0"),
        _ => "glibc.pthread.rseq=0".into(),
    }
}

/// Runs a job in a child process and returns what it established (or what killed it).
fn run_child(job: &Job, workdir: &Path) -> Result<(RunState, Vec<String>)> {
    let job_path = workdir.join("job.json");
    let out_path = workdir.join("state.json");
    let log_path = workdir.join("events.jsonl");
    std::fs::write(&job_path, serde_json::to_vec(job)?).context("cannot write the job file")?;
    let initial_online = cpu::online_cpus();

    let mut cmd = Command::new("/proc/self/exe");
    cmd.env(ENV_JOB, &job_path).env(ENV_OUT, &out_path).env(ENV_LOG, &log_path);
    match job.scenario.mode {
        RegMode::Libc => {}
        RegMode::Reserved => {
            cmd.env("GLIBC_TUNABLES", tunables_with_rseq_off());
        }
        RegMode::None => {
            // SAFETY: the hook only makes system calls (prctl), which is allowed between fork
            // and exec.
            unsafe {
                cmd.pre_exec(rseq::testing::deny_rseq_with_enosys);
            }
        }
    }
    if let Some(p) = &job.scenario.preload {
        let p = std::fs::canonicalize(p).with_context(|| format!("preload library {} does not exist", p.display()))?;
        cmd.env("LD_PRELOAD", p);
    }
    // SAFETY: the hook only makes system calls: the run process gets SIGTERM (and so restores
    // CPUs) if the supervisor dies, and has its own process group (signals reach it once,
    // forwarded by the supervisor).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    install_forwarding();
    let mut child = cmd.spawn().context("cannot start the run process (/proc/self/exe)")?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    let status = child.wait().context("waiting for the run process")?;
    CHILD.store(0, Ordering::SeqCst);

    // Whatever happened: every CPU that was online before is online again, no cgroup left.
    // Only a real-hotplug run writes CPU online files: a CPU that went offline during any
    // other run was taken by someone else on this machine (another test's hotplug), and is
    // theirs to bring back.
    let mut notes = Vec::new();
    let real = job.plan.hotplug == HotplugMode::Real;
    for c in initial_online.iter().copied().filter(|&c| c != 0 && !cpu::is_online(c)) {
        if !real {
            notes.push(format!(
                "cpu{c} went offline during the run, not by this run (hotplug {}): left as it is",
                job.plan.hotplug.name()
            ));
            continue;
        }
        match cpu::set_online(c, true) {
            Ok(()) => notes.push(format!("cpu{c} was left offline by the run process; the supervisor brought it back")),
            Err(e) => notes.push(format!("cpu{c} is offline and could not be brought back: {e}")),
        }
    }
    if cpu::remove_leftover_cpuset(child.id()) {
        notes.push(format!("removed leftover cgroup {}", cpu::cpuset_dir_name(child.id())));
    }

    let state = match std::fs::read(&out_path) {
        Ok(bytes) if status.success() => {
            let mut st = serde_json::from_slice::<RunState>(&bytes).context("the run process wrote a bad state")?;
            if st.events.is_empty() {
                // The run process keeps its event log in the file only.
                st.events = read_log(&log_path);
            }
            st
        }
        _ => {
            let why = match (status.code(), status.signal()) {
                (_, Some(sig)) => format!("the run process died from signal {sig} ({})", signal_name(sig)),
                (Some(c), _) => format!("the run process exited with status {c} without a report"),
                _ => "the run process ended without a report".into(),
            };
            crashed_state(job, why, &log_path, &initial_online)
        }
    };
    Ok((state, notes))
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGABRT => "SIGABRT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}

/// The event log the run process appended to `path` (JSON lines).
fn read_log(path: &Path) -> Vec<LogEntry> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn crashed_state(job: &Job, why: String, log_path: &Path, initial_online: &[u32]) -> RunState {
    let events = read_log(log_path);
    RunState {
        seed: job.plan.seed,
        scenario: job.scenario.clone(),
        mode: job.scenario.mode,
        index: job.scenario.index,
        hotplug: job.plan.hotplug,
        process: ProcessRseq::default(),
        libs: job
            .libs
            .iter()
            .map(|l| LibState {
                name: l.path.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
                path: l.path.clone(),
                loaded_at_end: true,
                ..LibState::default()
            })
            .collect(),
        forks: Vec::new(),
        cpus: CpuState {
            initial_online: initial_online.to_vec(),
            final_online: cpu::online_cpus(),
            ..CpuState::default()
        },
        threads: ThreadState::default(),
        signals_sent: 0,
        signals_received: 0,
        affinity_changes: (0, 0),
        cpuset_changes: (0, 0),
        panics: Vec::new(),
        load_errors: Vec::new(),
        fatal: vec![format!(
            "{why}{}",
            events.last().map_or(String::new(), |e| format!(
                "; last event: {} at {:.3} s ({})",
                e.event.kind.name(),
                e.ran_ms as f64 / 1000.0,
                e.outcome
            ))
        )],
        events,
        elapsed_ms: 0,
        interrupted: false,
        engine_priority: String::new(),
        malloc_from: String::new(),
        memory: MemoryState::default(),
    }
}

/// Path of the lock that real-hotplug runs (and any other tool that takes CPUs offline and
/// wants to cooperate) hold with `flock(LOCK_EX)` while they may have a CPU offline.
pub fn hotplug_lock_path() -> PathBuf {
    std::env::temp_dir().join("rseq-hotplug.lock")
}

/// Takes the machine-wide hotplug lock (waits for another run that holds it).
fn hotplug_lock() -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = hotplug_lock_path();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        println!("harness: waiting for another run with real hotplug ({})", path.display());
        // SAFETY: as above, blocking.
        while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(anyhow!("cannot lock {}: {e}", path.display()));
            }
        }
    }
    Ok(f)
}

/// Runs a job end to end (child, invariants, report); returns the exit code.
pub fn execute(job: Job, out: &OutputArgs) -> Result<u8> {
    let s = &job.scenario;
    println!(
        "harness: mode {}, index {}, hotplug {}{}, {:.1} s, {} mixed threads + {} per library",
        s.mode.name(),
        s.index.name(),
        job.plan.hotplug.name(),
        job.hotplug_note.as_ref().map_or(String::new(), |n| format!(" ({n})")),
        s.duration_ms as f64 / 1000.0,
        s.threads,
        s.per_lib_workers,
    );
    println!("harness: load order:");
    for (pos, &i) in job.plan.load_order.iter().enumerate() {
        println!("  {}. {}", pos + 1, job.libs[i].path.display());
    }
    let _ = std::io::stdout().flush();
    let Some(rep) = run_and_evaluate(&job, out.replay_dir.as_deref())? else { return Ok(EXIT_SETUP) };
    print!("{}", report::summary(&rep));
    if let Some(p) = &out.json {
        std::fs::write(p, serde_json::to_string_pretty(&rep)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(exit_code(&rep))
}

/// The exit code of a finished run.
pub fn exit_code(rep: &Report) -> u8 {
    if !rep.passed {
        EXIT_VIOLATION
    } else if rep.state.interrupted {
        EXIT_INTERRUPTED
    } else {
        EXIT_OK
    }
}

/// Runs a job in the run process, evaluates every invariant and writes the replay file of a
/// failure (into `replay_dir`, default the current directory). `None`: a library could not
/// be loaded (said on stderr), the run did not start.
pub fn run_and_evaluate(job: &Job, replay_dir: Option<&Path>) -> Result<Option<Report>> {
    // Real hotplug runs take turns machine-wide: one run's safety net must not undo another's
    // offline CPU.
    let _hotplug_lock = if job.plan.hotplug == HotplugMode::Real { Some(hotplug_lock()?) } else { None };
    let workdir = std::env::temp_dir().join(format!("rseq-harness-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).with_context(|| format!("cannot create {}", workdir.display()))?;
    let r = run_child(job, &workdir);
    let _ = std::fs::remove_dir_all(&workdir);
    let (mut state, notes) = r?;
    for n in notes {
        if n.contains("left offline") || n.contains("could not be brought back") {
            state.cpus.restore_failures.push(n);
        } else if n.contains("not by this run") {
            eprintln!("harness: {n}");
            state.cpus.cpu_notes.push(n);
        } else {
            eprintln!("harness: {n}");
        }
    }
    state.cpus.final_online = cpu::online_cpus();
    if job.plan.hotplug != HotplugMode::Real {
        state.cpus.offline_by_others =
            state.cpus.initial_online.iter().copied().filter(|c| !state.cpus.final_online.contains(c)).collect();
    }
    if !state.load_errors.is_empty() && state.cpus.restore_failures.is_empty() {
        for e in &state.load_errors {
            eprintln!("harness: error: {e}");
        }
        return Ok(None);
    }

    let (verdicts, violations) = invariants::evaluate(&state);
    let passed = violations.is_empty();
    let mut rep = Report { seed: state.seed, passed, invariants: verdicts, violations, replay_file: None, state };
    if !passed {
        let dir = replay_dir.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        match report::write_replay(&dir, job, &rep.violations, &rep.state.events) {
            Ok(p) => rep.replay_file = Some(p),
            Err(e) => eprintln!("harness: {e:#}"),
        }
    }
    Ok(Some(rep))
}

/// `harness replay FILE`.
pub fn replay(file: &Path, out: &OutputArgs) -> Result<u8> {
    let rf = report::read_replay(file)?;
    let mut job = rf.job;
    println!("seed: {}", job.plan.seed);
    println!("harness: replaying {} ({} events)", file.display(), job.plan.events.len());
    for l in &job.libs {
        if !l.path.exists() {
            return Err(anyhow!("library {} of the replay file does not exist", l.path.display()));
        }
    }
    job.progress = !out.no_progress;
    execute(job, out)
}

/// The run process's entry: reads the job, runs it, writes the state.
pub fn child_main(job_path: &Path) -> Result<()> {
    let job: Job = serde_json::from_slice(&std::fs::read(job_path).context("cannot read the job file")?)
        .context("bad job file")?;
    let out = std::env::var_os(ENV_OUT).map(PathBuf::from).ok_or_else(|| anyhow!("{ENV_OUT} not set"))?;
    let state = engine::run_job(job);
    std::fs::write(&out, serde_json::to_vec(&state)?).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

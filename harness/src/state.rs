//! Everything a run establishes, as plain data: what the invariants read and what the JSON
//! report and the replay file hold.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::participants::{Counts, Memory};
use crate::scenario::{HotplugMode, IndexMode, RegMode, Scenario};

/// Threads that reported one mode for one library.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModeSeen {
    /// Mode name (`libc-owned`, `unavailable(ENOSYS)`, ...).
    pub mode: String,
    /// Whether critical sections run in this mode.
    pub fast: bool,
    /// Whether the requested registration mode allows it for this library.
    pub allowed: bool,
    /// Thread samples (one per thread and library incarnation).
    pub threads: u64,
    /// Where it was first seen.
    pub first: String,
}

/// One invariant check of one library.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckRecord {
    /// Milliseconds after the workers started.
    pub at_ms: u64,
    /// `mid-run`, `final`, `before-unload`, `fresh-load`.
    pub phase: String,
    /// Whether the invariants held.
    pub ok: bool,
    /// Individual facts checked.
    pub checked: u64,
    /// What was checked, or what broke.
    pub message: String,
}

/// One unload/reload of a library.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReloadRecord {
    /// Milliseconds after the workers started.
    pub at_ms: u64,
    /// The file was gone from the address space after `dlclose`.
    pub unmapped: bool,
    /// Loading it again failed (the library then stays out of the run).
    pub load_error: Option<String>,
    /// How long the library was out of the run, ms.
    pub gap_ms: u64,
    /// Anonymous resident memory (`RssAnon`: heap and anonymous mappings, not the libraries'
    /// file pages) of the run process right before the unload, KiB.
    #[serde(default)]
    pub anon_before_kib: u64,
    /// `RssAnon` right after the unload (before the fresh load), KiB: a copy that returns its
    /// memory at unload shows a drop of about what it held.
    #[serde(default)]
    pub anon_unloaded_kib: u64,
    /// `RssAnon` right after the fresh load (and its setup), KiB.
    #[serde(default)]
    pub anon_after_kib: u64,
    /// What the unloaded copy said it held (its own statistics), if it says.
    #[serde(default)]
    pub memory_before: Option<Memory>,
}

/// What the run established about one library.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LibState {
    /// Name the library gave itself.
    pub name: String,
    /// `counters` or `plugin`.
    pub kind: String,
    /// Per-CPU index the library reported using (`cpu_id` / `mm_cid`), if it reports one.
    #[serde(default)]
    pub index_used: Option<String>,
    /// Its file.
    pub path: PathBuf,
    /// Position in the load order (0 first).
    pub load_position: usize,
    /// Counts summed over every incarnation.
    pub counts: Counts,
    /// Work units the harness ran.
    pub units: u64,
    /// Thread modes seen.
    pub modes: BTreeMap<String, ModeSeen>,
    /// The library registers libc's reserved area itself.
    pub lazy: bool,
    /// Forced fallback periods it went through.
    pub forced_periods: u64,
    /// Quiesced checks.
    pub checks: Vec<CheckRecord>,
    /// Work units that reported a broken invariant (first few).
    pub work_errors: Vec<String>,
    /// Number of such units.
    pub work_error_count: u64,
    /// Unload/reload cycles.
    pub reloads: Vec<ReloadRecord>,
    /// Unmapped after the final `dlclose` (None: not unloaded).
    pub final_unmapped: Option<bool>,
    /// Loaded at the end of the run.
    pub loaded_at_end: bool,
    /// Registers an rseq area of its own (a foreign rseq user, `RHP_FLAG_FOREIGN_AREA`).
    #[serde(default)]
    pub foreign_area: bool,
    /// Never unloaded (`RHP_FLAG_NEVER_UNLOAD`): left out of the reload disturbance.
    #[serde(default)]
    pub never_unload: bool,
    /// What the library said it held at the end, before the final unload (its own
    /// statistics: `pcounters_memory`, `rhp_memory`); `None`: it does not say.
    #[serde(default)]
    pub memory: Option<Memory>,
}

/// One sample of the run process's memory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemorySample {
    /// Milliseconds after the workers started.
    pub at_ms: u64,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// `RssAnon` (heap and anonymous mappings), KiB.
    #[serde(default)]
    pub anon_kib: u64,
    /// Per library (in the order of `libs`): resident bytes by its own statistics, `None`
    /// when it does not say (or was being checked or reloaded at that moment).
    pub libs_resident: Vec<Option<u64>>,
}

/// Memory over the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryState {
    /// Samples, oldest first: every `interval_ms` at the start; when they reach the limit,
    /// every second one is dropped and the interval doubles (a day-long run keeps a few
    /// hundred).
    pub samples: Vec<MemorySample>,
    /// The interval between the samples at the end of the run, ms.
    pub interval_ms: u64,
}

/// One fork.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForkRecord {
    /// Milliseconds after the workers started.
    pub at_ms: u64,
    /// The child reported success for every library and exited with 0.
    pub ok: bool,
    /// The child's verdict lines, or why none came.
    pub verdict: Vec<String>,
}

/// CPUs before and after.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuState {
    /// Online before the run (before any CPU was taken offline).
    pub initial_online: Vec<u32>,
    /// Online after the run.
    pub final_online: Vec<u32>,
    /// CPU kept offline from the start until mid-run.
    pub offline_at_start: Option<u32>,
    /// Successful offline operations.
    pub offlined: u64,
    /// Successful online operations.
    pub onlined: u64,
    /// CPUs online at the start and offline at the end of a run that never takes a CPU
    /// offline itself (hotplug simulated or off): someone else on the machine took them.
    #[serde(default)]
    pub offline_by_others: Vec<u32>,
    /// CPUs that could not be brought back.
    pub restore_failures: Vec<String>,
    /// Why real hotplug was skipped, if it was.
    pub hotplug_note: Option<String>,
    /// Why the cpuset disturbance was skipped, if it was.
    pub cpuset_note: Option<String>,
    /// The cgroup hierarchy of the run's cpuset ("v1", "v2"; empty when there was none).
    #[serde(default)]
    pub cpuset_hierarchy: String,
    /// Work units done on each CPU (index = CPU number), sampled every
    /// `WORK_SAMPLE` units of each library: shows that CPUs onlined or hot-added during the
    /// run got work.
    #[serde(default)]
    pub work_by_cpu: Vec<u64>,
    /// CPUs the kernel reports as possible (what per-CPU areas are sized by).
    #[serde(default)]
    pub possible: Vec<u32>,
    /// CPUs online at some point during the run that were not online at its start.
    #[serde(default)]
    pub added_during_run: Vec<u32>,
    /// What the harness did about those CPUs.
    #[serde(default)]
    pub cpu_notes: Vec<String>,
    /// Resident memory of the run process at the end and at its peak, in KiB
    /// (`VmRSS` / `VmHWM`).
    #[serde(default)]
    pub rss_kib: u64,
    /// Peak resident memory, KiB.
    #[serde(default)]
    pub peak_rss_kib: u64,
}

/// Threads of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ThreadState {
    /// Threads created by the harness during the run (workers, churn, bursts).
    pub created: u64,
    /// Most of them alive at once.
    pub max_alive: u64,
    /// Creations that failed.
    pub spawn_failures: u64,
    /// Threads requested / reached in the alive burst.
    pub alive_burst: Option<(u64, u64)>,
}

/// One executed (or skipped) event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Planned time, ms.
    pub at_ms: u64,
    /// Actual time, ms.
    pub ran_ms: u64,
    /// How long the event took, ms.
    #[serde(default)]
    pub took_ms: u64,
    /// The event, as scheduled.
    pub event: crate::schedule::Event,
    /// What happened.
    pub outcome: String,
}

/// How the process reached rseq, measured in the run process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessRseq {
    /// `__rseq_size` (0: libc did not register).
    pub libc_size: u32,
    /// `__rseq_offset` exists.
    pub libc_offset_present: bool,
    /// Result of registering an area of our own in a probe thread: 0, or the errno.
    pub probe_errno: i32,
    /// `getauxval(AT_RSEQ_FEATURE_SIZE)`.
    pub kernel_feature_size: u64,
}

/// Everything the run established.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Seed of the run.
    pub seed: u64,
    /// The scenario (seed filled in).
    pub scenario: Scenario,
    /// Registration mode.
    pub mode: RegMode,
    /// Index mode.
    pub index: IndexMode,
    /// Hotplug flavour in effect.
    pub hotplug: HotplugMode,
    /// rseq as the process saw it.
    pub process: ProcessRseq,
    /// Per library, in the order of the command line (`load_position` gives the load order).
    pub libs: Vec<LibState>,
    /// Forks.
    pub forks: Vec<ForkRecord>,
    /// CPUs.
    pub cpus: CpuState,
    /// Threads.
    pub threads: ThreadState,
    /// Signals sent to workers.
    pub signals_sent: u64,
    /// Signals the handler saw.
    pub signals_received: u64,
    /// Affinity changes that the kernel accepted / refused.
    pub affinity_changes: (u64, u64),
    /// cpuset changes that the kernel accepted / refused.
    pub cpuset_changes: (u64, u64),
    /// Panics of harness threads.
    pub panics: Vec<String>,
    /// Problems that stop the run from meaning anything (a library failed to load, the run
    /// process died).
    pub fatal: Vec<String>,
    /// Libraries that could not be loaded at the start (the run then does not start).
    #[serde(default)]
    pub load_errors: Vec<String>,
    /// Event log.
    pub events: Vec<LogEntry>,
    /// Length of the run, ms.
    pub elapsed_ms: u64,
    /// SIGINT/SIGTERM stopped it early.
    pub interrupted: bool,
    /// Memory over the run.
    #[serde(default)]
    pub memory: MemoryState,
    /// The scheduling priority the event thread ran with ("nice -10", or why it kept the
    /// default); the lag of each event is `ran_ms - at_ms` in the event log.
    #[serde(default)]
    pub engine_priority: String,
    /// Where `malloc` came from in the run process (`preload::check`).
    #[serde(default)]
    pub malloc_from: String,
}

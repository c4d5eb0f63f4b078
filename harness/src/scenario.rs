//! What a run does: the libraries, the workload and every disturbance with its rate. Loadable
//! from a JSON file (`--scenario FILE`); command-line options override single fields.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the process reaches rseq (the run process is started accordingly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RegMode {
    /// libc registers the area for every thread (the default on glibc 2.35+).
    Libc,
    /// libc reserves the area but does not register it (`GLIBC_TUNABLES=glibc.pthread.rseq=0`);
    /// the libraries register it lazily.
    Reserved,
    /// No rseq at all: a seccomp filter answers `ENOSYS`; everything runs on fallback paths.
    None,
}

impl RegMode {
    /// A short stable name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            RegMode::Libc => "libc",
            RegMode::Reserved => "reserved",
            RegMode::None => "none",
        }
    }
}

/// Which field of the rseq area indexes per-CPU data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum IndexMode {
    /// The CPU number.
    #[value(name = "cpu_id")]
    CpuId,
    /// The concurrency id (Linux 6.3+; libraries fall back to `cpu_id` on older kernels).
    #[value(name = "mm_cid")]
    MmCid,
}

impl IndexMode {
    /// `cpu_id` or `mm_cid`.
    pub fn name(self) -> &'static str {
        match self {
            IndexMode::CpuId => "cpu_id",
            IndexMode::MmCid => "mm_cid",
        }
    }
}

/// CPU hotplug flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum HotplugMode {
    /// `real` when sysfs CPU online files are writable (root), else `simulated`.
    Auto,
    /// Offline and online CPUs other than cpu0 through sysfs; always restored.
    Real,
    /// Every thread's affinity excludes a CPU for a while, then it comes back.
    Simulated,
    /// No hotplug.
    Off,
}

impl HotplugMode {
    /// A short stable name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            HotplugMode::Auto => "auto",
            HotplugMode::Real => "real",
            HotplugMode::Simulated => "simulated",
            HotplugMode::Off => "off",
        }
    }
}

/// A library (or plugin) of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LibSpec {
    /// Path of the shared object.
    pub path: PathBuf,
    /// Extra configuration passed to a plugin's `rhp_setup` (after the harness's own keys).
    #[serde(default)]
    pub config: String,
}

/// Thread churn: short-lived threads created continuously.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Churn {
    /// On/off.
    pub enabled: bool,
    /// Threads created per second.
    pub rate: f64,
    /// Most churn threads alive at once (the creator waits above it).
    pub max_in_flight: usize,
    /// Rounds of work over every library that each churn thread does before it exits.
    pub rounds: u32,
    /// Threads to hold alive at once in one burst mid-run (0: none).
    pub alive: usize,
    /// Stack size of churn and burst threads, KiB.
    pub stack_kib: usize,
}

impl Default for Churn {
    fn default() -> Self {
        Churn { enabled: true, rate: 1200.0, max_in_flight: 64, rounds: 1, alive: 0, stack_kib: 64 }
    }
}

/// A disturbance that happens as discrete events at some rate (events per second).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rated {
    /// On/off.
    pub enabled: bool,
    /// Events per second.
    pub rate: f64,
}

impl Rated {
    fn on(rate: f64) -> Rated {
        Rated { enabled: true, rate }
    }

    /// Whether any event of this kind is generated.
    pub fn active(&self) -> bool {
        self.enabled && self.rate > 0.0
    }
}

impl Default for Rated {
    fn default() -> Self {
        Rated::on(1.0)
    }
}

/// CPU hotplug.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hotplug {
    /// Flavour.
    pub mode: HotplugMode,
    /// Offline/online cycles per second.
    pub rate: f64,
    /// How long a CPU stays away in one cycle, ms.
    pub offline_ms: u64,
    /// Start with a CPU offline (before the libraries allocate their per-CPU data) and bring
    /// it online mid-run.
    pub start_offline: bool,
}

impl Default for Hotplug {
    fn default() -> Self {
        Hotplug { mode: HotplugMode::Auto, rate: 0.33, offline_ms: 600, start_offline: true }
    }
}

/// Signal storms sent to worker threads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Signals {
    /// On/off.
    pub enabled: bool,
    /// Storms per second.
    pub rate: f64,
    /// Signals per storm.
    pub per_storm: u32,
}

impl Default for Signals {
    fn default() -> Self {
        Signals { enabled: true, rate: 20.0, per_storm: 64 }
    }
}

/// Forcing one library onto its fallback path for a while, next to the others.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FallbackToggle {
    /// On/off.
    pub enabled: bool,
    /// Periods per second.
    pub rate: f64,
    /// Length of one forced period, ms.
    pub length_ms: u64,
}

impl Default for FallbackToggle {
    fn default() -> Self {
        FallbackToggle { enabled: true, rate: 0.25, length_ms: 400 }
    }
}

/// Everything a run does. The schedule of events derives from `seed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Scenario {
    /// Length of the run, ms.
    pub duration_ms: u64,
    /// Seed of the whole schedule; `None` draws one (and the run prints it first).
    pub seed: Option<u64>,
    /// Libraries of the project (`.so`); empty: found in the workspace's build.
    pub libs: Vec<LibSpec>,
    /// Plugins (`.so` with the `rhp_` ABI); empty: those in `target/harness-plugins/`.
    pub plugins: Vec<LibSpec>,
    /// Do not add default libraries and plugins when the lists above are empty.
    pub no_default_libs: bool,
    /// Load with `RTLD_GLOBAL` instead of `RTLD_LOCAL`.
    pub rtld_global: bool,
    /// A library to load as the whole process's malloc through `LD_PRELOAD` (re-exec).
    pub preload: Option<PathBuf>,
    /// Fail the run unless the run process's `malloc` comes from a library `LD_PRELOAD`
    /// names (set by `--preload` or in the environment).
    pub expect_preload: bool,
    /// Registration mode.
    pub mode: RegMode,
    /// Per-CPU index.
    pub index: IndexMode,
    /// Threads that interleave every library.
    pub threads: usize,
    /// Long-lived workers per library that use only that library.
    pub per_lib_workers: usize,
    /// Thread churn.
    pub churn: Churn,
    /// `sched_setaffinity` of random threads to random CPU subsets.
    pub affinity: Rated,
    /// cpuset cgroup changes (a v1 cpuset hierarchy, else cgroup v2 with the cpuset controller).
    pub cpuset: Rated,
    /// CPU hotplug.
    pub hotplug: Hotplug,
    /// Signal storms.
    pub signals: Signals,
    /// `fork` mid-run; the child exercises every library.
    pub fork: Rated,
    /// Unload and reload one library while the others keep running.
    pub reload: Rated,
    /// Forced fallback periods.
    pub fallback_toggle: FallbackToggle,
    /// Quiesced invariant checks of one library mid-run, per second.
    pub checks: Rated,
    /// The run includes a foreign rseq user (a plugin with `RHP_FLAG_FOREIGN_AREA` that
    /// registers an area of its own): under `reserved` the other libraries may find
    /// registration refused with `EINVAL` and run their fallback path there; sums stay exact.
    pub foreign_rseq: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            duration_ms: 30_000,
            seed: None,
            libs: Vec::new(),
            plugins: Vec::new(),
            no_default_libs: false,
            rtld_global: false,
            preload: None,
            expect_preload: false,
            mode: RegMode::Libc,
            index: IndexMode::CpuId,
            threads: 4,
            per_lib_workers: 1,
            churn: Churn::default(),
            affinity: Rated::on(20.0),
            cpuset: Rated::on(1.0),
            hotplug: Hotplug::default(),
            signals: Signals::default(),
            fork: Rated::on(0.5),
            reload: Rated::on(0.2),
            fallback_toggle: FallbackToggle::default(),
            checks: Rated::on(2.0),
            foreign_rseq: false,
        }
    }
}

impl Scenario {
    /// Loads a scenario from a JSON file; missing fields take their defaults.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read scenario file {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("invalid scenario file {}: {e}", path.display()))
    }

    /// Turns every disturbance off (the workload alone).
    pub fn disable_disturbances(&mut self) {
        self.churn.enabled = false;
        self.affinity.enabled = false;
        self.cpuset.enabled = false;
        self.hotplug.mode = HotplugMode::Off;
        self.signals.enabled = false;
        self.fork.enabled = false;
        self.reload.enabled = false;
        self.fallback_toggle.enabled = false;
    }

    /// Rejects values that cannot run.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.duration_ms > 0, "duration must be positive");
        anyhow::ensure!(self.duration_ms <= 24 * 3600 * 1000, "duration above 24 hours");
        anyhow::ensure!(self.threads + self.per_lib_workers > 0, "at least one worker thread is needed");
        anyhow::ensure!(self.threads <= 4096 && self.per_lib_workers <= 256, "too many worker threads");
        anyhow::ensure!(self.churn.stack_kib >= 16, "thread stacks below 16 KiB");
        anyhow::ensure!(self.churn.alive <= 30_000, "--alive above 30000");
        anyhow::ensure!(self.churn.max_in_flight >= 1, "churn max_in_flight must be at least 1");
        for (name, r) in [
            ("churn", self.churn.rate),
            ("affinity", self.affinity.rate),
            ("cpuset", self.cpuset.rate),
            ("hotplug", self.hotplug.rate),
            ("signals", self.signals.rate),
            ("fork", self.fork.rate),
            ("reload", self.reload.rate),
            ("fallback toggle", self.fallback_toggle.rate),
            ("checks", self.checks.rate),
        ] {
            anyhow::ensure!(r.is_finite() && r >= 0.0, "{name} rate must be a non-negative number");
            anyhow::ensure!(r <= 100_000.0, "{name} rate above 100000 per second");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_json_takes_defaults() {
        let s: Scenario =
            serde_json::from_str(r#"{"duration_ms": 500, "mode": "reserved", "signals": {"rate": 3}}"#).expect("parse");
        assert_eq!(s.duration_ms, 500);
        assert_eq!(s.mode, RegMode::Reserved);
        assert_eq!(s.signals.rate, 3.0);
        assert!(s.signals.enabled);
        assert_eq!(s.threads, Scenario::default().threads);
    }

    #[test]
    fn round_trip() {
        let s = Scenario { seed: Some(7), ..Scenario::default() };
        let back: Scenario = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(s, back);
    }
}

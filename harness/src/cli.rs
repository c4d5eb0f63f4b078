//! Command line: `harness [run] [OPTIONS]` and `harness replay FILE`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::scenario::{HotplugMode, IndexMode, LibSpec, RegMode, Scenario};

/// Runs independent rseq libraries together in one process under disturbance, checks their
/// invariants, and replays failures from their seed.
///
/// Every run prints its seed first; the whole schedule of events derives from it. Exit code
/// 0 only when every invariant held (1: an invariant broke, 2: the run could not start,
/// 130: interrupted).
#[derive(Debug, Parser)]
#[command(name = "harness", version, args_conflicts_with_subcommands = true, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands (`run` is the default).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario (the default when no subcommand is given).
    Run(Box<RunArgs>),
    /// Run a failed run again from its replay file: same scenario, seed, load order and
    /// schedule of events.
    Replay(ReplayArgs),
    /// Run the scenario again and again with fresh seeds, rotating through registration modes
    /// x index modes x rtld flags (load orders drawn from each seed; real hotplug when root
    /// unless --hotplug says otherwise), and end with one aggregated table (--json FILE: the
    /// aggregate as JSON). Every run option applies to every run. The way to qualify a change.
    Soak(Box<SoakArgs>),
}

/// Options of `harness soak`.
#[derive(Debug, Args, Clone)]
pub struct SoakArgs {
    /// Soak this long (minutes, fractions allowed); the run in progress finishes.
    #[arg(long, value_name = "N")]
    pub minutes: Option<f64>,
    /// Stop after N runs (with --minutes: whichever comes first).
    #[arg(long, value_name = "N")]
    pub runs: Option<u64>,
    /// Length of each run in seconds [default: --duration, else 30].
    #[arg(long, value_name = "SECS")]
    pub run_seconds: Option<f64>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Options of `harness replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The replay file (`harness-replay-<seed>.json`) a failed run wrote.
    pub file: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Output options shared by `run` and `replay`.
#[derive(Debug, Args, Clone, Default)]
pub struct OutputArgs {
    /// Write the full report (every library, check, event and verdict) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Directory for the replay file a failing run writes [default: current directory].
    #[arg(long, value_name = "DIR")]
    pub replay_dir: Option<PathBuf>,
    /// No progress bar or progress lines.
    #[arg(long)]
    pub no_progress: bool,
}

/// Options of a run. Every option overrides the field of the scenario file.
#[derive(Debug, Args, Clone, Default)]
pub struct RunArgs {
    /// Scenario file (JSON; every field optional, see `--print-scenario` for the defaults).
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Print the effective scenario and its schedule of events as JSON, and exit.
    #[arg(long)]
    pub print_scenario: bool,
    /// Length of the run in seconds (fractions allowed) [default: 30].
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Seed of the whole schedule (decimal or 0x-hex) [default: drawn at random].
    #[arg(long, value_parser = parse_seed)]
    pub seed: Option<u64>,
    /// A project library to load (repeatable); replaces the default discovery of
    /// target/{release,debug}/libpcounters.so.
    #[arg(long = "lib", value_name = "PATH")]
    pub libs: Vec<PathBuf>,
    /// A plugin (.so exporting the rhp_* ABI of harness/include/rseq_harness_plugin.h) to add
    /// to the run (repeatable); replaces the default discovery of target/harness-plugins/*.so.
    #[arg(long = "plugin", value_name = "PATH")]
    pub plugins: Vec<PathBuf>,
    /// Load only what --lib and --plugin name (no default libraries or plugins).
    #[arg(long)]
    pub no_default_libs: bool,
    /// Load libraries with RTLD_GLOBAL instead of RTLD_LOCAL (always with RTLD_NOW).
    #[arg(long)]
    pub rtld_global: bool,
    /// Load PATH as the whole process's malloc through LD_PRELOAD (the run process is
    /// started with it).
    #[arg(long, value_name = "PATH")]
    pub preload: Option<PathBuf>,
    /// Fail unless the run process's malloc comes from a library LD_PRELOAD names (from
    /// --preload or the environment, which the run process inherits).
    #[arg(long)]
    pub expect_preload: bool,
    /// Registration mode: libc = glibc registers rseq (default); reserved = glibc reserves
    /// the area but does not register it (GLIBC_TUNABLES=glibc.pthread.rseq=0), libraries
    /// register it lazily; none = a seccomp filter answers ENOSYS to rseq, every library
    /// runs its fallback path.
    #[arg(long, value_enum)]
    pub mode: Option<RegMode>,
    /// Per-CPU index the libraries are asked to use.
    #[arg(long, value_enum)]
    pub index: Option<IndexMode>,
    /// Threads that interleave every library [default: 4].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Long-lived workers per library that use only that library [default: 1].
    #[arg(long, value_name = "N")]
    pub per_lib_workers: Option<usize>,
    /// Turn every disturbance off (a rate option such as --fork-rate, or --hotplug, turns that
    /// one back on).
    #[arg(long)]
    pub no_disturbances: bool,
    /// No thread churn.
    #[arg(long)]
    pub no_churn: bool,
    /// Short-lived threads created per second [default: 1200].
    #[arg(long, value_name = "PER_SEC")]
    pub churn_rate: Option<f64>,
    /// Hold N threads alive at once in one burst mid-run (e.g. 10000; small stacks).
    #[arg(long, value_name = "N")]
    pub alive: Option<usize>,
    /// Stack size of churn and burst threads in KiB [default: 64].
    #[arg(long, value_name = "KIB")]
    pub stack_kib: Option<usize>,
    /// No sched_setaffinity of random threads.
    #[arg(long)]
    pub no_affinity: bool,
    /// Affinity changes per second [default: 20].
    #[arg(long, value_name = "PER_SEC")]
    pub affinity_rate: Option<f64>,
    /// No cpuset cgroup changes.
    #[arg(long)]
    pub no_cpuset: bool,
    /// cpuset changes per second [default: 1].
    #[arg(long, value_name = "PER_SEC")]
    pub cpuset_rate: Option<f64>,
    /// CPU hotplug: real = offline/online CPUs other than cpu0 through sysfs (root; always
    /// restored, also on panic, SIGINT and SIGTERM); simulated = every thread's affinity
    /// excludes a CPU for a while; auto = real when possible, else simulated; off.
    #[arg(long, value_enum)]
    pub hotplug: Option<HotplugMode>,
    /// Hotplug offline/online cycles per second [default: 0.33].
    #[arg(long, value_name = "PER_SEC")]
    pub hotplug_rate: Option<f64>,
    /// Do not start with a CPU offline (by default one comes online mid-run, after the
    /// libraries allocated their per-CPU data).
    #[arg(long)]
    pub no_start_offline: bool,
    /// No signal storms.
    #[arg(long)]
    pub no_signals: bool,
    /// Signal storms per second [default: 20].
    #[arg(long, value_name = "PER_SEC")]
    pub signal_rate: Option<f64>,
    /// Signals per storm [default: 64].
    #[arg(long, value_name = "N")]
    pub signals_per_storm: Option<u32>,
    /// No fork mid-run.
    #[arg(long)]
    pub no_fork: bool,
    /// Forks per second [default: 0.5].
    #[arg(long, value_name = "PER_SEC")]
    pub fork_rate: Option<f64>,
    /// No unload/reload of libraries.
    #[arg(long)]
    pub no_reload: bool,
    /// Unload/reload cycles per second [default: 0.2].
    #[arg(long, value_name = "PER_SEC")]
    pub reload_rate: Option<f64>,
    /// No forced fallback periods.
    #[arg(long)]
    pub no_fallback_toggle: bool,
    /// Forced fallback periods per second [default: 0.25].
    #[arg(long, value_name = "PER_SEC")]
    pub fallback_toggle_rate: Option<f64>,
    /// Expect a foreign rseq user (a plugin that registers an rseq area of its own, like
    /// harness/plugins/foreign_rseq.c, which the default discovery then adds from
    /// target/harness-plugins/foreign/): the other libraries may get EINVAL under
    /// --mode reserved and must still keep exact sums.
    #[arg(long)]
    pub foreign_rseq: bool,
    /// Quiesced mid-run invariant checks per second [default: 2].
    #[arg(long, value_name = "PER_SEC")]
    pub check_rate: Option<f64>,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("invalid seed {s:?}: {e}"))
}

fn rate(dst: &mut crate::scenario::Rated, off: bool, r: Option<f64>) {
    if let Some(r) = r {
        dst.rate = r;
        dst.enabled = true;
    }
    if off {
        dst.enabled = false;
    }
}

impl RunArgs {
    /// The scenario file (or the defaults) with every override of the command line applied.
    pub fn scenario(&self) -> anyhow::Result<Scenario> {
        let mut s = match &self.scenario {
            Some(p) => Scenario::load(p)?,
            None => Scenario::default(),
        };
        if self.no_disturbances {
            s.disable_disturbances();
        }
        if let Some(d) = self.duration {
            anyhow::ensure!(d.is_finite() && d > 0.0, "--duration must be a positive number of seconds");
            s.duration_ms = (d * 1000.0).round().max(1.0) as u64;
        }
        if self.seed.is_some() {
            s.seed = self.seed;
        }
        if !self.libs.is_empty() {
            s.libs = self.libs.iter().map(|p| LibSpec { path: p.clone(), config: String::new() }).collect();
        }
        if !self.plugins.is_empty() {
            s.plugins = self.plugins.iter().map(|p| LibSpec { path: p.clone(), config: String::new() }).collect();
        }
        if self.no_default_libs {
            s.no_default_libs = true;
        }
        if self.rtld_global {
            s.rtld_global = true;
        }
        if self.preload.is_some() {
            s.preload = self.preload.clone();
        }
        if self.expect_preload {
            s.expect_preload = true;
        }
        if let Some(m) = self.mode {
            s.mode = m;
        }
        if let Some(i) = self.index {
            s.index = i;
        }
        if let Some(t) = self.threads {
            s.threads = t;
        }
        if let Some(t) = self.per_lib_workers {
            s.per_lib_workers = t;
        }
        if let Some(r) = self.churn_rate {
            s.churn.rate = r;
            s.churn.enabled = true;
        }
        if self.no_churn {
            s.churn.enabled = false;
        }
        if let Some(a) = self.alive {
            s.churn.alive = a;
        }
        if let Some(k) = self.stack_kib {
            s.churn.stack_kib = k;
        }
        rate(&mut s.affinity, self.no_affinity, self.affinity_rate);
        rate(&mut s.cpuset, self.no_cpuset, self.cpuset_rate);
        if let Some(h) = self.hotplug {
            s.hotplug.mode = h;
        }
        if let Some(r) = self.hotplug_rate {
            s.hotplug.rate = r;
        }
        if self.no_start_offline {
            s.hotplug.start_offline = false;
        }
        if let Some(r) = self.signal_rate {
            s.signals.rate = r;
            s.signals.enabled = true;
        }
        if let Some(n) = self.signals_per_storm {
            s.signals.per_storm = n;
        }
        if self.no_signals {
            s.signals.enabled = false;
        }
        rate(&mut s.fork, self.no_fork, self.fork_rate);
        rate(&mut s.reload, self.no_reload, self.reload_rate);
        if let Some(r) = self.fallback_toggle_rate {
            s.fallback_toggle.rate = r;
            s.fallback_toggle.enabled = true;
        }
        if self.no_fallback_toggle {
            s.fallback_toggle.enabled = false;
        }
        if self.foreign_rseq {
            s.foreign_rseq = true;
        }
        if let Some(r) = self.check_rate {
            s.checks.rate = r;
            s.checks.enabled = true;
        }
        s.validate()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn overrides_apply() {
        let cli = Cli::parse_from([
            "harness",
            "--duration",
            "1.5",
            "--seed",
            "0x10",
            "--mode",
            "reserved",
            "--index",
            "mm_cid",
            "--no-signals",
            "--fork-rate",
            "3",
        ]);
        let s = cli.run.scenario().unwrap();
        assert_eq!(s.duration_ms, 1500);
        assert_eq!(s.seed, Some(16));
        assert_eq!(s.mode, RegMode::Reserved);
        assert_eq!(s.index, IndexMode::MmCid);
        assert!(!s.signals.enabled);
        assert_eq!(s.fork.rate, 3.0);
    }

    #[test]
    fn soak_subcommand() {
        let cli = Cli::parse_from([
            "harness",
            "soak",
            "--minutes",
            "0.2",
            "--run-seconds",
            "1.5",
            "--hotplug",
            "simulated",
            "--json",
            "s.json",
        ]);
        match cli.command {
            Some(Command::Soak(a)) => {
                assert_eq!(a.minutes, Some(0.2));
                assert_eq!(a.run_seconds, Some(1.5));
                assert_eq!(a.runs, None);
                assert_eq!(a.run.hotplug, Some(HotplugMode::Simulated));
                assert_eq!(a.run.output.json, Some(PathBuf::from("s.json")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replay_subcommand() {
        let cli = Cli::parse_from(["harness", "replay", "f.json", "--json", "out.json"]);
        match cli.command {
            Some(Command::Replay(r)) => {
                assert_eq!(r.file, PathBuf::from("f.json"));
                assert_eq!(r.output.json, Some(PathBuf::from("out.json")));
            }
            other => panic!("{other:?}"),
        }
    }
}

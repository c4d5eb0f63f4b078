//! `harness soak`: runs the scenario again and again with fresh seeds, rotating through the
//! matrix of registration modes × index modes × rtld flags (the load order is drawn from
//! each run's seed), and ends with one aggregated table and JSON. The way to qualify a change.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::cli::SoakArgs;
use crate::report::Report;
use crate::scenario::{IndexMode, RegMode};
use crate::supervisor::{self, EXIT_INTERRUPTED, EXIT_OK, EXIT_SETUP, EXIT_VIOLATION};

/// Registration modes, index modes and rtld flags, in rotation order: run `i` takes mode
/// `i % 3`, index `(i / 3) % 2` and rtld `(i / 6) % 2`, so that every 12 runs cover the
/// matrix and the first three cover the modes.
const MODES: [RegMode; 3] = [RegMode::Libc, RegMode::Reserved, RegMode::None];
const INDEXES: [IndexMode; 2] = [IndexMode::CpuId, IndexMode::MmCid];

/// The cell of the matrix of run number `i`.
pub fn cell(i: u64) -> (RegMode, IndexMode, bool) {
    (MODES[(i % 3) as usize], INDEXES[((i / 3) % 2) as usize], (i / 6) % 2 == 1)
}

/// One run of a soak.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SoakRun {
    /// Its seed (`harness --seed` runs it again alone).
    pub seed: u64,
    /// Registration mode, index mode, `RTLD_GLOBAL`.
    pub mode: RegMode,
    /// Index mode.
    pub index: IndexMode,
    /// Loaded with `RTLD_GLOBAL`.
    pub rtld_global: bool,
    /// Hotplug flavour in effect.
    pub hotplug: String,
    /// The libraries in load order (names).
    pub load_order: Vec<String>,
    /// Every invariant held.
    pub passed: bool,
    /// Exit code of the run.
    pub exit_code: u8,
    /// Length, ms.
    pub elapsed_ms: u64,
    /// CPUs taken offline (real) or excluded from every thread (simulated).
    pub hotplug_cycles: u64,
    /// Unload/reload cycles.
    pub reloads: u64,
    /// Threads created by the harness.
    pub threads_created: u64,
    /// Signals the workers' handler saw.
    pub signals_delivered: u64,
    /// Forks.
    pub forks: u64,
    /// Resident size of the run process at its end and peak, KiB.
    pub rss_kib: u64,
    /// Peak resident size, KiB.
    pub peak_rss_kib: u64,
    /// The replay file of a failed run.
    pub replay_file: Option<PathBuf>,
}

/// One broken invariant of a soak, with what it takes to see it again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SoakViolation {
    /// Run number (from 0).
    pub run: u64,
    /// Seed of that run.
    pub seed: u64,
    /// Invariant, place and message.
    pub violation: crate::invariants::Violation,
    /// `harness replay FILE` runs it again.
    pub replay_file: Option<PathBuf>,
}

/// Runs of one cell of the matrix.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CellCount {
    /// Runs.
    pub runs: u64,
    /// Runs in which every invariant held.
    pub passed: u64,
}

/// The aggregate of a soak (`--json FILE`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SoakReport {
    /// The seed the run seeds were drawn from (`harness soak --seed` repeats them).
    pub seed: u64,
    /// Minutes the soak ran.
    pub minutes: f64,
    /// Runs done.
    pub runs: u64,
    /// Runs in which every invariant held.
    pub passed: u64,
    /// Sums over the runs.
    pub hotplug_cycles: u64,
    /// Unload/reload cycles.
    pub reloads: u64,
    /// Threads churned (created by the harness).
    pub threads_churned: u64,
    /// Signals delivered.
    pub signals_delivered: u64,
    /// Forks.
    pub forks: u64,
    /// Runs per `mode/index/rtld` cell.
    pub per_cell: BTreeMap<String, CellCount>,
    /// Runs per load order.
    pub per_load_order: BTreeMap<String, u64>,
    /// Every broken invariant, with its seed and replay file.
    pub violations: Vec<SoakViolation>,
    /// A SIGINT/SIGTERM ended the soak.
    pub interrupted: bool,
    /// Every run.
    pub run_list: Vec<SoakRun>,
}

fn cell_name(mode: RegMode, index: IndexMode, global: bool) -> String {
    format!("{}/{}/{}", mode.name(), index.name(), if global { "global" } else { "local" })
}

fn summarise(rep: &Report, code: u8) -> SoakRun {
    let st = &rep.state;
    let sim = st
        .events
        .iter()
        .filter(|e| e.event.kind.name() == "sim_offline" && e.outcome.contains("excluded from"))
        .count() as u64;
    let mut libs: Vec<_> = st.libs.iter().collect();
    libs.sort_by_key(|l| l.load_position);
    SoakRun {
        seed: st.seed,
        mode: st.mode,
        index: st.index,
        rtld_global: st.scenario.rtld_global,
        hotplug: st.hotplug.name().into(),
        load_order: libs.iter().map(|l| l.name.clone()).collect(),
        passed: rep.passed,
        exit_code: code,
        elapsed_ms: st.elapsed_ms,
        hotplug_cycles: st.cpus.offlined + sim,
        reloads: st.libs.iter().map(|l| l.reloads.len() as u64).sum(),
        threads_created: st.threads.created,
        signals_delivered: st.signals_received,
        forks: st.forks.len() as u64,
        rss_kib: st.cpus.rss_kib,
        peak_rss_kib: st.cpus.peak_rss_kib,
        replay_file: rep.replay_file.clone(),
    }
}

/// Adds one run to the aggregate.
fn add(agg: &mut SoakReport, i: u64, run: SoakRun, rep: &Report) {
    agg.runs += 1;
    agg.passed += run.passed as u64;
    agg.hotplug_cycles += run.hotplug_cycles;
    agg.reloads += run.reloads;
    agg.threads_churned += run.threads_created;
    agg.signals_delivered += run.signals_delivered;
    agg.forks += run.forks;
    let c = agg.per_cell.entry(cell_name(run.mode, run.index, run.rtld_global)).or_default();
    c.runs += 1;
    c.passed += run.passed as u64;
    *agg.per_load_order.entry(run.load_order.join(" > ")).or_default() += 1;
    for v in &rep.violations {
        agg.violations.push(SoakViolation {
            run: i,
            seed: run.seed,
            violation: v.clone(),
            replay_file: run.replay_file.clone(),
        });
    }
    agg.run_list.push(run);
}

/// The table printed at the end of a soak.
pub fn table(a: &SoakReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nsoak: {:.1} minutes, {} runs, {} passed, {} failed{} (seed {})",
        a.minutes,
        a.runs,
        a.passed,
        a.runs - a.passed,
        if a.interrupted { ", interrupted" } else { "" },
        a.seed
    );
    let _ = writeln!(o, "\n{:<28} {:>6} {:>7}", "mode/index/rtld", "runs", "passed");
    for (k, c) in &a.per_cell {
        let _ = writeln!(o, "{k:<28} {:>6} {:>7}", c.runs, c.passed);
    }
    let _ = writeln!(o, "\n{:<28} {:>10}", "totals", "");
    for (k, v) in [
        ("hotplug cycles", a.hotplug_cycles),
        ("unload/reload cycles", a.reloads),
        ("threads churned", a.threads_churned),
        ("signals delivered", a.signals_delivered),
        ("forks", a.forks),
        ("load orders seen", a.per_load_order.len() as u64),
    ] {
        let _ = writeln!(o, "{k:<28} {v:>10}");
    }
    if let (Some(max), Some(peak)) =
        (a.run_list.iter().map(|r| r.rss_kib).max(), a.run_list.iter().map(|r| r.peak_rss_kib).max())
    {
        let _ = writeln!(
            o,
            "{:<28} {:>10}",
            "rss at the end, max (MiB)",
            format!("{:.1} (peak {:.1})", max as f64 / 1024.0, peak as f64 / 1024.0)
        );
    }
    if a.violations.is_empty() {
        let _ = writeln!(o, "\ninvariant violations: none");
    } else {
        let _ = writeln!(o, "\ninvariant violations: {}", a.violations.len());
        for v in &a.violations {
            let _ = writeln!(
                o,
                "  run {} (seed {}): {}{}",
                v.run,
                v.seed,
                v.violation,
                v.replay_file.as_ref().map_or(String::new(), |p| format!("\n    harness replay {}", p.display()))
            );
        }
    }
    o
}

/// `harness soak`: returns the exit code (0 every run held every invariant, 1 one broke,
/// 2 a run could not start, 130 interrupted).
pub fn soak(a: &SoakArgs) -> Result<u8> {
    let base = a.run.scenario()?;
    let seed = a.run.seed.unwrap_or_else(rand::random);
    println!("seed: {seed}");
    let run_ms = match (a.run_seconds, a.run.duration) {
        (Some(s), _) | (None, Some(s)) => {
            anyhow::ensure!(s.is_finite() && s > 0.0, "--run-seconds must be a positive number of seconds");
            (s * 1000.0).round().max(1.0) as u64
        }
        (None, None) => 30_000,
    };
    let limit_ms = a.minutes.map(|m| (m * 60_000.0).max(0.0) as u64);
    anyhow::ensure!(
        a.minutes.is_some() || a.runs.is_some(),
        "say how long to soak: --minutes N (fractions allowed) and/or --runs N"
    );
    let mut seeds = ChaCha8Rng::seed_from_u64(seed);
    let mut agg = SoakReport {
        seed,
        minutes: 0.0,
        runs: 0,
        passed: 0,
        hotplug_cycles: 0,
        reloads: 0,
        threads_churned: 0,
        signals_delivered: 0,
        forks: 0,
        per_cell: BTreeMap::new(),
        per_load_order: BTreeMap::new(),
        violations: Vec::new(),
        interrupted: false,
        run_list: Vec::new(),
    };
    let progress = !a.run.output.no_progress;
    let bar = (progress && std::io::stderr().is_terminal()).then(|| {
        let b = match limit_ms {
            Some(ms) => indicatif::ProgressBar::new(ms),
            None => indicatif::ProgressBar::new(a.runs.unwrap_or(1)),
        };
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let start = Instant::now();
    let mut code = EXIT_OK;
    let mut i = 0u64;
    loop {
        let elapsed = start.elapsed().as_millis() as u64;
        if supervisor::interrupted() {
            agg.interrupted = true;
            break;
        }
        if a.runs.is_some_and(|n| i >= n) || limit_ms.is_some_and(|l| elapsed >= l) {
            break;
        }
        let (mode, index, global) = cell(i);
        let mut s = base.clone();
        s.duration_ms = run_ms;
        s.mode = mode;
        s.index = index;
        s.rtld_global = global;
        s.seed = Some(seeds.random());
        let job = supervisor::make_job(s, false)?;
        let Some(rep) = supervisor::run_and_evaluate(&job, a.run.output.replay_dir.as_deref())? else {
            code = EXIT_SETUP;
            break;
        };
        let rc = supervisor::exit_code(&rep);
        let run = summarise(&rep, rc);
        let line = format!(
            "run {i} ({}, seed {}): {} in {:.1} s, {} threads, {} reloads, {} hotplug cycles",
            cell_name(mode, index, global),
            run.seed,
            if run.passed { "PASS" } else { "FAIL" },
            run.elapsed_ms as f64 / 1000.0,
            run.threads_created,
            run.reloads,
            run.hotplug_cycles
        );
        add(&mut agg, i, run, &rep);
        match &bar {
            Some(b) => {
                b.set_position(if limit_ms.is_some() { start.elapsed().as_millis() as u64 } else { i + 1 });
                b.set_message(format!("{} runs, {} failed", agg.runs, agg.runs - agg.passed));
                if !rep.passed {
                    b.println(line);
                }
            }
            None if progress => eprintln!("harness soak: {line}"),
            None => {}
        }
        if !rep.passed {
            code = EXIT_VIOLATION;
        }
        i += 1;
        if rep.state.interrupted || supervisor::interrupted() {
            agg.interrupted = true;
            break;
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    agg.minutes = start.elapsed().as_secs_f64() / 60.0;
    print!("{}", table(&agg));
    if let Some(p) = &a.run.output.json {
        std::fs::write(p, serde_json::to_string_pretty(&agg)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(if code == EXIT_OK && agg.interrupted { EXIT_INTERRUPTED } else { code })
}

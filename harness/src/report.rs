//! The report: summary table for people, JSON for programs, replay files for failures.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::engine::Job;
use crate::invariants::{Verdict, Violation};
use crate::state::{LogEntry, MemorySample, RunState};

/// The full report of a run (`--json FILE`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Seed of the run.
    pub seed: u64,
    /// Every invariant held.
    pub passed: bool,
    /// One verdict per invariant.
    pub invariants: Vec<Verdict>,
    /// What broke.
    pub violations: Vec<Violation>,
    /// The replay file written for a failure.
    pub replay_file: Option<PathBuf>,
    /// Everything the run established.
    pub state: RunState,
}

/// What `harness replay FILE` reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplayFile {
    /// Format version.
    pub version: u32,
    /// How to run it again: scenario, libraries, seed, load order and schedule.
    pub job: Job,
    /// What broke the first time.
    pub violations: Vec<Violation>,
    /// The event log of the failed run.
    pub log: Vec<LogEntry>,
}

/// Current replay file format.
pub const REPLAY_VERSION: u32 = 1;

/// Writes `harness-replay-<seed>.json` into `dir`.
pub fn write_replay(dir: &Path, job: &Job, violations: &[Violation], log: &[LogEntry]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("harness-replay-{}.json", job.plan.seed));
    let rf =
        ReplayFile { version: REPLAY_VERSION, job: job.clone(), violations: violations.to_vec(), log: log.to_vec() };
    std::fs::write(&path, serde_json::to_string_pretty(&rf)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Reads a replay file.
pub fn read_replay(path: &Path) -> Result<ReplayFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read replay file {}", path.display()))?;
    let rf: ReplayFile =
        serde_json::from_str(&text).with_context(|| format!("{} is not a harness replay file", path.display()))?;
    anyhow::ensure!(
        rf.version == REPLAY_VERSION,
        "{} has replay format {}, this harness reads {REPLAY_VERSION}",
        path.display(),
        rf.version
    );
    Ok(rf)
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.2}%", 100.0 * part as f64 / whole as f64)
    }
}

fn fit(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        format!("{s:<w$}")
    } else {
        let t: String = s.chars().take(w.saturating_sub(1)).collect();
        format!("{t}…")
    }
}

/// The summary printed after a run.
/// Work per CPU (sampled), CPUs that appeared during the run, memory.
fn cpu_lines(c: &crate::state::CpuState) -> String {
    let total: u64 = c.work_by_cpu.iter().sum();
    let mut work = String::new();
    for (cpu, n) in c.work_by_cpu.iter().enumerate().filter(|(_, n)| **n > 0) {
        let share = if total == 0 { 0.0 } else { *n as f64 * 100.0 / total as f64 };
        let _ = write!(work, " cpu{cpu} {share:.0}%");
    }
    let mut o = format!(
        "work by cpu (sampled):{}{}",
        if work.is_empty() { " none recorded".to_string() } else { work },
        if c.possible.is_empty() { String::new() } else { format!(" (of {} possible)", c.possible.len()) }
    );
    for note in &c.cpu_notes {
        let _ = write!(o, "\nadded during the run: {note}");
    }
    o
}

/// Growth of the resident size over the second half of the run, KiB per minute (least
/// squares over the samples); `None` with fewer than three samples there.
pub fn rss_trend_kib_per_min(samples: &[MemorySample]) -> Option<f64> {
    let end = samples.last()?.at_ms;
    let half: Vec<(f64, f64)> =
        samples.iter().filter(|s| s.at_ms * 2 >= end).map(|s| (s.at_ms as f64 / 60_000.0, s.rss_kib as f64)).collect();
    if half.len() < 3 {
        return None;
    }
    let n = half.len() as f64;
    let (mx, my) = (half.iter().map(|p| p.0).sum::<f64>() / n, half.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = half.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    let sxy: f64 = half.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

fn bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1024 {
        format!("{:.0} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// Memory: resident size at the end, at its peak and over the run, what each library says it
/// holds, and how the resident size changed across each library's reloads.
fn memory_lines(st: &RunState) -> String {
    let c = &st.cpus;
    let m = &st.memory;
    let mut o = format!(
        "memory: rss {:.1} MiB at the end, peak {:.1} MiB",
        c.rss_kib as f64 / 1024.0,
        c.peak_rss_kib as f64 / 1024.0
    );
    if m.samples.len() >= 2 {
        let step = m.samples.len().div_ceil(8).max(1);
        let mut shown: Vec<&MemorySample> = m.samples.iter().step_by(step).collect();
        if shown.last().map(|s| s.at_ms) != m.samples.last().map(|s| s.at_ms) {
            shown.extend(m.samples.last());
        }
        let pts: Vec<String> = shown
            .iter()
            .map(|s| {
                let at = s.at_ms as f64 / 1000.0;
                let at = if st.elapsed_ms < 60_000 { format!("{at:.1}") } else { format!("{at:.0}") };
                format!("{at} s {:.1}", s.rss_kib as f64 / 1024.0)
            })
            .collect();
        let _ = write!(o, "; over the run (MiB): {}", pts.join(", "));
        if let Some(t) = rss_trend_kib_per_min(&m.samples) {
            let _ = write!(o, "; trend {t:+.0} KiB/min over the second half");
        }
    }
    let held: Vec<String> = st
        .libs
        .iter()
        .map(|l| match l.memory {
            Some(mem) => {
                format!("{} {} resident / {} reserved", l.name, bytes(mem.resident_bytes), bytes(mem.reserved_bytes))
            }
            None => format!("{} n/a", l.name),
        })
        .collect();
    if !held.is_empty() {
        let _ = write!(o, "\nmemory held by each library (its own statistics, at the end): {}", held.join(", "));
    }
    for l in &st.libs {
        let mut d: Vec<i64> = l
            .reloads
            .iter()
            .filter(|r| r.anon_before_kib > 0 && r.anon_after_kib > 0)
            .map(|r| r.anon_after_kib as i64 - r.anon_before_kib as i64)
            .collect();
        if d.is_empty() {
            continue;
        }
        d.sort_unstable();
        let total: i64 = d.iter().sum();
        let mut held: Vec<u64> = l.reloads.iter().filter_map(|r| r.memory_before.map(|m| m.resident_bytes)).collect();
        held.sort_unstable();
        let held = match held.get(held.len() / 2) {
            Some(h) => format!(", the copy said it held {} resident (median)", bytes(*h)),
            None => String::new(),
        };
        let mut drop_at_unload: Vec<i64> = l
            .reloads
            .iter()
            .filter(|r| r.anon_before_kib > 0 && r.anon_unloaded_kib > 0)
            .map(|r| r.anon_unloaded_kib as i64 - r.anon_before_kib as i64)
            .collect();
        drop_at_unload.sort_unstable();
        let at_unload = match drop_at_unload.get(drop_at_unload.len() / 2) {
            Some(u) => format!("; at the unload: {u:+} KiB (median){held}"),
            None => String::new(),
        };
        let _ = write!(
            o,
            "\nanonymous rss across the reloads of {} (after the fresh load minus before the unload): median \
             {:+} KiB, total {:+} KiB over {} reloads{at_unload}",
            l.name,
            d[d.len() / 2],
            total,
            d.len()
        );
    }
    o
}

/// How well the run kept to its schedule: events run, and how late (ran_ms - at_ms).
fn schedule_line(st: &RunState) -> String {
    let skipped = st.events.iter().filter(|e| e.outcome.starts_with("not run")).count();
    let mut lags: Vec<u64> = st
        .events
        .iter()
        .filter(|e| !e.outcome.starts_with("not run"))
        .map(|e| e.ran_ms.saturating_sub(e.at_ms))
        .collect();
    lags.sort_unstable();
    let lag = match (lags.get(lags.len() / 2), lags.last()) {
        (Some(median), Some(max)) => format!("; lag median {median} ms, max {max} ms"),
        _ => String::new(),
    };
    let prio =
        if st.engine_priority.is_empty() { String::new() } else { format!(" (event thread: {})", st.engine_priority) };
    format!(
        "events: {} of {} ran{}{lag}{prio}",
        st.events.len() - skipped,
        st.events.len(),
        if skipped > 0 { format!(" ({skipped} not run: the run stopped first)") } else { String::new() }
    )
}

pub fn summary(r: &Report) -> String {
    let st = &r.state;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n{:<22} {:<9} {:>4} {:>10} {:>12} {:>9} {:>9} {:>7} {:>7}  modes (thread samples)",
        "library", "kind", "load", "units", "operations", "aborts", "fallback", "checked", "reloads"
    );
    let mut libs: Vec<_> = st.libs.iter().collect();
    libs.sort_by_key(|l| l.load_position);
    for l in libs {
        let modes: Vec<String> = l.modes.values().map(|m| format!("{} x{}", m.mode, m.threads)).collect();
        let facts: u64 = l.checks.iter().map(|c| c.checked).sum();
        let bad = l.checks.iter().filter(|c| !c.ok).count();
        let checks = if bad > 0 { format!("{bad} BAD") } else { format!("{facts}") };
        let _ = writeln!(
            o,
            "{:<22} {:<9} {:>4} {:>10} {:>12} {:>9} {:>9} {:>7} {:>7}  {}",
            fit(&l.name, 22),
            l.kind,
            format!("#{}", l.load_position + 1),
            l.units,
            l.counts.ops,
            l.counts.aborts,
            pct(l.counts.fallback_ops, l.counts.ops),
            checks,
            l.reloads.len(),
            modes.join(", ")
        );
    }
    let forks_ok = st.forks.iter().filter(|f| f.ok).count();
    let _ = writeln!(
        o,
        "\nthreads: {} created, {} alive at most{}{}",
        st.threads.created,
        st.threads.max_alive,
        st.threads.alive_burst.map_or(String::new(), |(want, got)| format!(", burst {got}/{want} alive at once")),
        if st.threads.spawn_failures > 0 {
            format!(", {} creations failed", st.threads.spawn_failures)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        o,
        "signals: {} sent, {} handled; affinity: {} set, {} refused; cpuset{}: {}",
        st.signals_sent,
        st.signals_received,
        st.affinity_changes.0,
        st.affinity_changes.1,
        if st.cpus.cpuset_hierarchy.is_empty() { String::new() } else { format!(" ({})", st.cpus.cpuset_hierarchy) },
        st.cpus
            .cpuset_note
            .clone()
            .unwrap_or_else(|| format!("{} changes, {} refused", st.cpuset_changes.0, st.cpuset_changes.1))
    );
    let _ = writeln!(
        o,
        "hotplug ({}): {} offline, {} online{}{}; forks: {}/{} children ok",
        st.hotplug.name(),
        st.cpus.offlined,
        st.cpus.onlined,
        st.cpus.offline_at_start.map_or(String::new(), |c| format!(", cpu{c} offline at start")),
        st.cpus.hotplug_note.as_ref().map_or(String::new(), |n| format!(" [{n}]")),
        forks_ok,
        st.forks.len()
    );
    let _ = writeln!(o, "{}", schedule_line(st));
    if !st.malloc_from.is_empty() {
        let _ = writeln!(o, "{}", st.malloc_from);
    }
    let _ = writeln!(
        o,
        "rseq: mode {} (__rseq_size {}, kernel feature size {}, mm_cid {}), index {}",
        st.mode.name(),
        st.process.libc_size,
        st.process.kernel_feature_size,
        if st.process.kernel_feature_size >= 28 { "present" } else { "absent" },
        st.index.name()
    );
    for l in st.libs.iter().filter(|l| l.index_used.is_some()) {
        let used = l.index_used.as_deref().unwrap_or("?");
        let why = if used != st.index.name() { " (this kernel has no mm_cid: the library fell back)" } else { "" };
        let _ = writeln!(o, "index used by {}: {used}, asked {}{why}", l.name, st.index.name());
    }
    let _ = writeln!(o, "{}", cpu_lines(&st.cpus));
    let _ = writeln!(o, "{}", memory_lines(st));
    let _ = writeln!(o, "\n{:<18} {:<6} {:>9}  detail", "invariant", "result", "facts");
    for v in &r.invariants {
        let _ = writeln!(
            o,
            "{:<18} {:<6} {:>9}  {}",
            v.invariant,
            if v.ok {
                "ok"
            } else if v.message.starts_with("not evaluated") {
                "-"
            } else {
                "BROKEN"
            },
            if v.ok { v.count.to_string() } else { "-".into() },
            v.message
        );
    }
    let secs = st.elapsed_ms as f64 / 1000.0;
    if r.passed {
        let _ = writeln!(o, "\nPASS: every invariant held (seed {}, {secs:.1} s)", r.seed);
    } else {
        let _ = writeln!(o, "\nFAIL: {} invariant(s) broke (seed {}, {secs:.1} s)", r.violations.len(), r.seed);
        for v in &r.violations {
            let _ = writeln!(o, "  {v}");
        }
        if let Some(p) = &r.replay_file {
            let _ = writeln!(o, "replay: harness replay {}", p.display());
        }
    }
    if st.interrupted {
        let _ = writeln!(o, "(interrupted by a signal before the end of the scenario)");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, rss_kib: u64) -> MemorySample {
        MemorySample { at_ms, rss_kib, anon_kib: 0, libs_resident: Vec::new() }
    }

    #[test]
    fn rss_trend_over_the_second_half() {
        // 0-10 s flat at 5000 KiB, then +600 KiB per 10 s: 3600 KiB/min over the second half.
        let mut v: Vec<MemorySample> = (0..=10).map(|i| sample(i * 1000, 5000)).collect();
        v.extend((11..=20).map(|i| sample(i * 1000, 5000 + (i - 10) * 60)));
        let t = rss_trend_kib_per_min(&v).unwrap();
        assert!((t - 3600.0).abs() < 1.0, "trend {t}");
        assert_eq!(rss_trend_kib_per_min(&v[..2]), None);
    }
}

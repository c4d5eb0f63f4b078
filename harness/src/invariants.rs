//! The invariants of a run: one plain function each, over the [`RunState`] the run collected.
//! Each says what it checked, or what broke, where and with which seed.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::scenario::RegMode;
use crate::state::{LibState, RunState};

/// What an invariant established.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checked {
    /// Invariant name.
    pub invariant: String,
    /// Facts checked.
    pub count: u64,
    /// Summary.
    pub detail: String,
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// Invariant name.
    pub invariant: String,
    /// Where: the library (and file), or the part of the run.
    pub place: String,
    /// Seed of the run.
    pub seed: u64,
    /// What broke.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant `{}` broke in {} (seed {}): {}", self.invariant, self.place, self.seed, self.message)
    }
}

/// An invariant function.
pub type Invariant = fn(&RunState) -> Result<Checked, Violation>;

/// Every invariant, in report order.
pub const ALL: &[(&str, Invariant)] = &[
    ("run_completed", run_completed),
    ("registration_mode", registration_mode),
    ("library_checks", library_checks),
    ("work_units", work_units),
    ("thread_modes", thread_modes),
    ("fallback_visible", fallback_visible),
    ("reload", reload),
    ("fork_children", fork_children),
    ("cpus_restored", cpus_restored),
    ("no_panics", no_panics),
];

/// Result of one invariant, as reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Invariant name.
    pub invariant: String,
    /// Held.
    pub ok: bool,
    /// Facts checked (when held).
    pub count: u64,
    /// Summary or violation message.
    pub message: String,
}

/// Runs every invariant.
pub fn evaluate(st: &RunState) -> (Vec<Verdict>, Vec<Violation>) {
    let mut verdicts = Vec::new();
    let mut violations = Vec::new();
    // A run that did not complete has no data for the invariants that read its results.
    let always = ["run_completed", "cpus_restored", "no_panics"];
    for (name, f) in ALL {
        if !st.fatal.is_empty() && !always.contains(name) {
            verdicts.push(Verdict {
                invariant: name.to_string(),
                ok: false,
                count: 0,
                message: "not evaluated: the run did not complete".into(),
            });
            continue;
        }
        match f(st) {
            Ok(c) => {
                verdicts.push(Verdict { invariant: name.to_string(), ok: true, count: c.count, message: c.detail })
            }
            Err(v) => {
                verdicts.push(Verdict { invariant: name.to_string(), ok: false, count: 0, message: v.to_string() });
                violations.push(v);
            }
        }
    }
    (verdicts, violations)
}

fn place(l: &LibState) -> String {
    format!("{} ({})", l.name, l.path.display())
}

fn violation(st: &RunState, invariant: &str, place: String, message: String) -> Violation {
    Violation { invariant: invariant.into(), place, seed: st.seed, message }
}

fn ok(invariant: &str, count: u64, detail: String) -> Result<Checked, Violation> {
    Ok(Checked { invariant: invariant.into(), count, detail })
}

/// Nothing stopped the run from meaning something: every library loaded, the run process
/// finished.
pub fn run_completed(st: &RunState) -> Result<Checked, Violation> {
    if let Some(f) = st.fatal.first() {
        let more = if st.fatal.len() > 1 { format!(" (and {} more)", st.fatal.len() - 1) } else { String::new() };
        return Err(violation(st, "run_completed", "the run".into(), format!("{f}{more}")));
    }
    ok("run_completed", 1, format!("{} libraries ran for {:.1} s", st.libs.len(), st.elapsed_ms as f64 / 1000.0))
}

/// The process reaches rseq the way the requested mode says.
pub fn registration_mode(st: &RunState) -> Result<Checked, Violation> {
    let p = &st.process;
    let bad = |m: String| Err(violation(st, "registration_mode", "the run process".into(), m));
    match st.mode {
        RegMode::Libc if p.libc_size == 0 => bad(format!(
            "mode libc requested but libc did not register rseq (__rseq_size = 0, offset present: {})",
            p.libc_offset_present
        )),
        RegMode::Reserved if p.libc_size != 0 || !p.libc_offset_present => bad(format!(
            "mode reserved requested but __rseq_size = {} and __rseq_offset present: {}",
            p.libc_size, p.libc_offset_present
        )),
        RegMode::None if p.probe_errno != libc::ENOSYS => bad(format!(
            "mode none requested but rseq(2) answered {} instead of ENOSYS",
            if p.probe_errno == 0 { "success".to_string() } else { crate::participants::errno_name(p.probe_errno) }
        )),
        _ => ok(
            "registration_mode",
            1,
            format!("mode {}: __rseq_size = {}, probe errno {}", st.mode.name(), p.libc_size, p.probe_errno),
        ),
    }
}

/// Every quiesced check of every library held (for the counters: exact sums).
pub fn library_checks(st: &RunState) -> Result<Checked, Violation> {
    let mut n = 0;
    let mut facts = 0;
    for l in &st.libs {
        if let Some(c) = l.checks.iter().find(|c| !c.ok) {
            return Err(violation(
                st,
                "library_checks",
                place(l),
                format!("{} check at {:.3} s: {}", c.phase, c.at_ms as f64 / 1000.0, c.message),
            ));
        }
        if l.checks.is_empty() && l.loaded_at_end {
            return Err(violation(st, "library_checks", place(l), "never checked".into()));
        }
        n += l.checks.len() as u64;
        facts += l.checks.iter().map(|c| c.checked).sum::<u64>();
    }
    ok("library_checks", facts, format!("{n} quiesced checks, {facts} facts (exact sums, plugin invariants)"))
}

/// No work unit saw an invariant break on the spot.
pub fn work_units(st: &RunState) -> Result<Checked, Violation> {
    for l in &st.libs {
        if l.work_error_count > 0 {
            return Err(violation(
                st,
                "work_units",
                place(l),
                format!(
                    "{} work units failed; first: {}",
                    l.work_error_count,
                    l.work_errors.first().cloned().unwrap_or_default()
                ),
            ));
        }
    }
    let units: u64 = st.libs.iter().map(|l| l.units).sum();
    ok("work_units", units, format!("{units} work units"))
}

/// Every thread got the rseq mode the requested registration mode promises.
pub fn thread_modes(st: &RunState) -> Result<Checked, Violation> {
    let mut samples = 0;
    let foreign: Vec<&LibState> = st.libs.iter().filter(|l| l.foreign_area).collect();
    if st.scenario.foreign_rseq && foreign.is_empty() {
        return Err(violation(
            st,
            "thread_modes",
            "the run".into(),
            "--foreign-rseq expects a foreign rseq user, but no library registers an area of its own \
             (RHP_FLAG_FOREIGN_AREA; harness/plugins/foreign_rseq.c is one)"
                .into(),
        ));
    }
    for l in &st.libs {
        if let Some(m) = l.modes.values().find(|m| !m.allowed) {
            let hint = if !foreign.is_empty() && !st.scenario.foreign_rseq && !l.foreign_area {
                format!(
                    "; {} registers an rseq area of its own (a foreign rseq user): run with --foreign-rseq to expect it",
                    foreign.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ")
                )
            } else {
                String::new()
            };
            return Err(violation(
                st,
                "thread_modes",
                place(l),
                format!(
                    "{} thread(s) saw mode {} (first: {}), not what mode {} promises{}{hint}",
                    m.threads,
                    m.mode,
                    m.first,
                    st.mode.name(),
                    if l.foreign_area {
                        " to a foreign rseq user"
                    } else if l.lazy {
                        " to a library that registers lazily"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if l.units > 0 && l.modes.is_empty() {
            return Err(violation(st, "thread_modes", place(l), "no thread reported a mode".into()));
        }
        samples += l.modes.values().map(|m| m.threads).sum::<u64>();
    }
    let with = if st.scenario.foreign_rseq {
        let einval: u64 = st
            .libs
            .iter()
            .flat_map(|l| l.modes.values())
            .filter(|m| m.mode == "unavailable(EINVAL)")
            .map(|m| m.threads)
            .sum();
        format!(" with a foreign rseq user ({einval} samples of unavailable(EINVAL))")
    } else {
        String::new()
    };
    ok("thread_modes", samples, format!("{samples} thread samples, all as mode {} promises{with}", st.mode.name()))
}

/// Fallback use agrees with the modes: none without rseq means every operation on the
/// fallback path and no aborts; with rseq on every thread and no forced period, the fallback
/// stays marginal. The shares are in the report, so a silent fall-back is visible.
pub fn fallback_visible(st: &RunState) -> Result<Checked, Violation> {
    for l in &st.libs {
        let c = &l.counts;
        let all_fast = l.modes.values().all(|m| m.fast);
        let any_fast = l.modes.values().any(|m| m.fast);
        if !any_fast && c.aborts > 0 {
            return Err(violation(
                st,
                "fallback_visible",
                place(l),
                format!("{} aborts reported although no thread had an rseq area", c.aborts),
            ));
        }
        if !any_fast && c.ops > 0 && c.fallback_ops == 0 {
            return Err(violation(
                st,
                "fallback_visible",
                place(l),
                format!("{} operations without an rseq area but no fallback operation reported", c.ops),
            ));
        }
        if all_fast && l.forced_periods == 0 && c.ops > 0 && c.fallback_ops > c.ops / 100 + 100 {
            return Err(violation(
                st,
                "fallback_visible",
                place(l),
                format!(
                    "{} of {} operations ({:.2}%) took the fallback path although every thread had rseq",
                    c.fallback_ops,
                    c.ops,
                    100.0 * c.fallback_ops as f64 / c.ops as f64
                ),
            ));
        }
    }
    ok("fallback_visible", st.libs.len() as u64, "fallback shares agree with the thread modes".into())
}

/// Unload/reload: the library left the address space, came back, and (checked as
/// `before-unload` / `fresh-load` library checks) kept its sums before and started from
/// zero after.
pub fn reload(st: &RunState) -> Result<Checked, Violation> {
    let mut n = 0;
    for l in &st.libs {
        for r in &l.reloads {
            n += 1;
            let at = r.at_ms as f64 / 1000.0;
            if !r.unmapped && l.kind != "plugin" {
                return Err(violation(
                    st,
                    "reload",
                    place(l),
                    format!(
                        "still mapped after dlclose at {at:.3} s: the library cannot be unloaded (a thread-local \
                         destructor or NODELETE pins it), so loading it again gave the old copy{}",
                        r.load_error.as_ref().map_or(String::new(), |e| format!("; then: {e}"))
                    ),
                ));
            }
            if let Some(e) = &r.load_error {
                return Err(violation(st, "reload", place(l), format!("reload at {at:.3} s failed: {e}")));
            }
        }
        if !l.loaded_at_end {
            return Err(violation(st, "reload", place(l), "not loaded at the end of the run".into()));
        }
        if l.final_unmapped == Some(false) && l.kind != "plugin" {
            return Err(violation(st, "reload", place(l), "still mapped after the final dlclose".into()));
        }
    }
    ok("reload", n, format!("{n} unload/reload cycles"))
}

/// Every forked child used every library and reported success.
pub fn fork_children(st: &RunState) -> Result<Checked, Violation> {
    for f in &st.forks {
        if !f.ok {
            return Err(violation(
                st,
                "fork_children",
                format!("the child forked at {:.3} s", f.at_ms as f64 / 1000.0),
                f.verdict.join("; "),
            ));
        }
    }
    ok("fork_children", st.forks.len() as u64, format!("{} children used every library", st.forks.len()))
}

/// Every CPU that was online before the run is online after it.
pub fn cpus_restored(st: &RunState) -> Result<Checked, Violation> {
    let missing: Vec<u32> = st
        .cpus
        .initial_online
        .iter()
        .copied()
        .filter(|c| !st.cpus.final_online.contains(c) && !st.cpus.offline_by_others.contains(c))
        .collect();
    if !missing.is_empty() || !st.cpus.restore_failures.is_empty() {
        return Err(violation(
            st,
            "cpus_restored",
            "CPU hotplug".into(),
            if missing.is_empty() {
                st.cpus.restore_failures.join("; ")
            } else {
                format!(
                    "cpu {} still offline after the run; {}",
                    rseq::topology::format_cpu_list(&missing),
                    st.cpus.restore_failures.join("; ")
                )
            },
        ));
    }
    ok(
        "cpus_restored",
        st.cpus.offlined,
        format!(
            "{} offline / {} online operations, online at the end: {}{}",
            st.cpus.offlined,
            st.cpus.onlined,
            rseq::topology::format_cpu_list(&st.cpus.final_online),
            if st.cpus.offline_by_others.is_empty() {
                String::new()
            } else {
                format!(
                    " (cpu {} went offline during the run, not by this run)",
                    rseq::topology::format_cpu_list(&st.cpus.offline_by_others)
                )
            }
        ),
    )
}

/// No harness thread panicked.
pub fn no_panics(st: &RunState) -> Result<Checked, Violation> {
    if let Some(p) = st.panics.first() {
        return Err(violation(st, "no_panics", "a harness thread".into(), p.clone()));
    }
    ok("no_panics", 1, "no thread panicked".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::participants::Counts;
    use crate::scenario::{HotplugMode, IndexMode, Scenario};
    use crate::state::*;

    fn state(mode: RegMode) -> RunState {
        RunState {
            seed: 99,
            scenario: Scenario::default(),
            mode,
            index: IndexMode::CpuId,
            hotplug: HotplugMode::Off,
            process: ProcessRseq {
                libc_size: if mode == RegMode::Libc { 20 } else { 0 },
                libc_offset_present: true,
                probe_errno: if mode == RegMode::None { libc::ENOSYS } else { libc::EINVAL },
                kernel_feature_size: 28,
            },
            libs: vec![LibState {
                name: "pcounters".into(),
                kind: "counters".into(),
                path: "/x/libpcounters.so".into(),
                units: 10,
                counts: Counts { ops: 1000, ..Counts::default() },
                lazy: true,
                loaded_at_end: true,
                final_unmapped: Some(true),
                checks: vec![CheckRecord {
                    at_ms: 5,
                    phase: "final".into(),
                    ok: true,
                    checked: 3,
                    message: String::new(),
                }],
                modes: [(
                    "libc-owned".to_string(),
                    ModeSeen { mode: "libc-owned".into(), fast: true, allowed: true, threads: 4, first: "t".into() },
                )]
                .into(),
                ..LibState::default()
            }],
            forks: Vec::new(),
            cpus: CpuState { initial_online: vec![0, 1], final_online: vec![0, 1], ..CpuState::default() },
            threads: ThreadState::default(),
            signals_sent: 0,
            signals_received: 0,
            affinity_changes: (0, 0),
            cpuset_changes: (0, 0),
            panics: Vec::new(),
            fatal: Vec::new(),
            load_errors: Vec::new(),
            events: Vec::new(),
            elapsed_ms: 1000,
            interrupted: false,
            engine_priority: String::new(),
            malloc_from: String::new(),
            memory: MemoryState::default(),
        }
    }

    #[test]
    fn a_good_run_holds_every_invariant() {
        let (verdicts, violations) = evaluate(&state(RegMode::Libc));
        assert!(violations.is_empty(), "{violations:?}");
        assert_eq!(verdicts.len(), ALL.len());
    }

    #[test]
    fn a_broken_check_names_library_file_phase_and_seed() {
        let mut st = state(RegMode::Libc);
        st.libs[0].checks.push(CheckRecord {
            at_ms: 1500,
            phase: "mid-run".into(),
            ok: false,
            checked: 0,
            message: "counter c reads 5 but the adds sum to 6".into(),
        });
        let v = library_checks(&st).unwrap_err();
        let text = v.to_string();
        for part in ["library_checks", "pcounters", "/x/libpcounters.so", "seed 99", "mid-run", "1.500 s", "reads 5"] {
            assert!(text.contains(part), "{part} missing from: {text}");
        }
    }

    #[test]
    fn silent_fallback_is_caught() {
        let mut st = state(RegMode::Libc);
        st.libs[0].counts.fallback_ops = 500;
        assert!(fallback_visible(&st).is_err());
        st.libs[0].forced_periods = 1;
        assert!(fallback_visible(&st).is_ok());
    }

    #[test]
    fn wrong_mode_and_offline_cpu_are_caught() {
        let st = state(RegMode::None);
        assert!(registration_mode(&st).is_ok());
        let mut st2 = state(RegMode::Libc);
        st2.process.libc_size = 0;
        assert!(registration_mode(&st2).is_err());
        let mut st3 = state(RegMode::Libc);
        st3.cpus.final_online = vec![0];
        assert!(cpus_restored(&st3).unwrap_err().message.contains("cpu 1 still offline"));
        // Taken by someone else during a run that never offlines a CPU: noted, not broken.
        st3.cpus.offline_by_others = vec![1];
        assert!(cpus_restored(&st3).unwrap().detail.contains("not by this run"));
        let mut st4 = state(RegMode::Libc);
        st4.libs[0].reloads.push(ReloadRecord {
            at_ms: 1,
            unmapped: false,
            load_error: None,
            gap_ms: 1,
            anon_before_kib: 0,
            anon_unloaded_kib: 0,
            anon_after_kib: 0,
            memory_before: None,
        });
        assert!(reload(&st4).unwrap_err().message.contains("still mapped"));
    }

    #[test]
    fn a_foreign_rseq_user_is_expected_and_named() {
        // A foreign user in the run, not expected: its name and the option are in the message.
        let mut st = state(RegMode::Reserved);
        st.libs[0].modes = [(
            "unavailable(EINVAL)".to_string(),
            ModeSeen { mode: "unavailable(EINVAL)".into(), fast: false, allowed: false, threads: 3, first: "t".into() },
        )]
        .into();
        let mut f = st.libs[0].clone();
        f.name = "foreign_rseq".into();
        f.kind = "plugin".into();
        f.foreign_area = true;
        f.modes = [(
            "registered-by-us".to_string(),
            ModeSeen { mode: "registered-by-us".into(), fast: true, allowed: true, threads: 3, first: "t".into() },
        )]
        .into();
        st.libs.push(f);
        let v = thread_modes(&st).unwrap_err();
        assert!(v.message.contains("foreign_rseq registers an rseq area of its own"), "{v}");
        assert!(v.message.contains("--foreign-rseq"), "{v}");
        // Expected (the modes were judged allowed when sampled): it holds and says so.
        st.scenario.foreign_rseq = true;
        st.libs[0].modes.get_mut("unavailable(EINVAL)").unwrap().allowed = true;
        let ok = thread_modes(&st).unwrap();
        assert!(ok.detail.contains("3 samples of unavailable(EINVAL)"), "{}", ok.detail);
        // Expected without one: a violation.
        st.libs.pop();
        assert!(thread_modes(&st).unwrap_err().message.contains("expects a foreign rseq user"));
    }
}

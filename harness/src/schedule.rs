//! The schedule of a run: every discrete event, derived from the seed with ChaCha.
//!
//! Each kind of disturbance draws from its own ChaCha stream, so switching one off leaves the
//! times of the others unchanged. Random choices that depend on the machine's state at run
//! time (which thread, which CPUs) are stored as raw random numbers and mapped onto what
//! exists when the event runs.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::scenario::{HotplugMode, Scenario};

/// What happens at one point of the schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// Set one worker thread's affinity to a random subset of the usable CPUs.
    Affinity {
        /// Picks the thread among the live workers.
        target: u32,
        /// Picks the CPUs among the usable ones (bit i: i-th usable CPU).
        mask: u64,
    },
    /// Change the run's cpuset to a random non-empty subset of the online CPUs.
    Cpuset {
        /// Picks the CPUs among the online ones.
        mask: u64,
    },
    /// Offline a CPU other than cpu0 through sysfs.
    HotplugOffline {
        /// Picks the CPU among the candidates.
        pick: u32,
    },
    /// Bring back the CPU of the last `hotplug_offline`.
    HotplugOnline,
    /// Bring online the CPU that was offline since the start of the run.
    BringInitialOnline,
    /// Exclude one CPU from every thread's affinity.
    SimOffline {
        /// Picks the CPU among the usable ones.
        pick: u32,
    },
    /// Give every thread the excluded CPU back.
    SimOnline,
    /// Send a burst of signals to worker threads.
    SignalStorm {
        /// Picks the first target thread.
        target: u32,
        /// Number of signals.
        count: u32,
    },
    /// Fork; the child exercises every library and reports a verdict.
    Fork {
        /// Seed of the child's work.
        seed: u64,
    },
    /// Unload one library (others keep running) and load it again.
    Reload {
        /// Picks the library.
        lib: u32,
    },
    /// Quiesce one library and check its invariants.
    Check {
        /// Picks the library.
        lib: u32,
    },
    /// Force one library onto its fallback path.
    FallbackOn {
        /// Picks the library.
        lib: u32,
    },
    /// End the forced fallback period of that library.
    FallbackOff {
        /// Picks the library.
        lib: u32,
    },
    /// Hold many threads alive at once.
    AliveBurst {
        /// Threads.
        count: u32,
    },
}

impl EventKind {
    /// A short name, for logs and counts.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Affinity { .. } => "affinity",
            EventKind::Cpuset { .. } => "cpuset",
            EventKind::HotplugOffline { .. } => "hotplug_offline",
            EventKind::HotplugOnline => "hotplug_online",
            EventKind::BringInitialOnline => "bring_initial_online",
            EventKind::SimOffline { .. } => "sim_offline",
            EventKind::SimOnline => "sim_online",
            EventKind::SignalStorm { .. } => "signal_storm",
            EventKind::Fork { .. } => "fork",
            EventKind::Reload { .. } => "reload",
            EventKind::Check { .. } => "check",
            EventKind::FallbackOn { .. } => "fallback_on",
            EventKind::FallbackOff { .. } => "fallback_off",
            EventKind::AliveBurst { .. } => "alive_burst",
        }
    }
}

/// One scheduled event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds after the workers start.
    pub at_ms: u64,
    /// What happens.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Everything that derives from the seed before the run starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The seed.
    pub seed: u64,
    /// Order in which the libraries are loaded (indices into the run's library list).
    pub load_order: Vec<usize>,
    /// Hotplug flavour the plan was made for (`auto` resolved).
    pub hotplug: HotplugMode,
    /// Events, sorted by time.
    pub events: Vec<Event>,
}

// Stream numbers: one per kind of randomness.
const S_ORDER: u64 = 1;
const S_AFFINITY: u64 = 2;
const S_CPUSET: u64 = 3;
const S_HOTPLUG: u64 = 4;
const S_SIGNALS: u64 = 5;
const S_FORK: u64 = 6;
const S_RELOAD: u64 = 7;
const S_CHECK: u64 = 8;
const S_FALLBACK: u64 = 9;
const S_ALIVE: u64 = 10;
/// First stream of the per-thread seeds ([`thread_seed`]).
const S_THREADS: u64 = 1 << 32;

/// A ChaCha generator on stream `stream` of `seed`.
pub fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// The seed of long-lived thread number `id` (workers, churn driver).
pub fn thread_seed(seed: u64, id: u64) -> u64 {
    rng(seed, S_THREADS + id).random()
}

/// Times (ms) of a rated event kind: the first within the first period (or the first 80% of
/// a shorter run), then every period on average, jittered by ±50%.
fn times(r: &mut ChaCha8Rng, rate: f64, duration_ms: u64) -> Vec<u64> {
    let mut out = Vec::new();
    if rate <= 0.0 || !rate.is_finite() {
        return out;
    }
    let period = 1000.0 / rate;
    let d = duration_ms as f64;
    let mut t = r.random_range(0.2..0.8) * period.min(d * 0.8);
    while t < d {
        out.push(t as u64);
        t += period * r.random_range(0.5..1.5);
    }
    out
}

/// Makes the plan of a run over `nlibs` libraries with hotplug flavour `hotplug` (resolved).
pub fn generate(s: &Scenario, seed: u64, nlibs: usize, hotplug: HotplugMode) -> Plan {
    let d = s.duration_ms;
    let mut events = Vec::new();

    let mut load_order: Vec<usize> = (0..nlibs).collect();
    load_order.shuffle(&mut rng(seed, S_ORDER));

    if s.affinity.active() {
        let mut r = rng(seed, S_AFFINITY);
        for at_ms in times(&mut r, s.affinity.rate, d) {
            events.push(Event { at_ms, kind: EventKind::Affinity { target: r.random(), mask: r.random() } });
        }
    }
    if s.cpuset.active() {
        let mut r = rng(seed, S_CPUSET);
        for at_ms in times(&mut r, s.cpuset.rate, d) {
            events.push(Event { at_ms, kind: EventKind::Cpuset { mask: r.random() } });
        }
    }
    if hotplug == HotplugMode::Real || hotplug == HotplugMode::Simulated {
        let real = hotplug == HotplugMode::Real;
        let mut r = rng(seed, S_HOTPLUG);
        let mut free_from = 0u64;
        if s.hotplug.start_offline {
            let at = (d as f64 * r.random_range(0.15..0.3)) as u64;
            if real {
                events.push(Event { at_ms: at, kind: EventKind::BringInitialOnline });
            } else {
                events.push(Event { at_ms: 0, kind: EventKind::SimOffline { pick: r.random() } });
                events.push(Event { at_ms: at, kind: EventKind::SimOnline });
            }
            free_from = at + 50;
        }
        for at in times(&mut r, s.hotplug.rate, d) {
            let back = at + s.hotplug.offline_ms;
            if at < free_from || back + 50 > d {
                continue;
            }
            let pick = r.random();
            let (off, on) = if real {
                (EventKind::HotplugOffline { pick }, EventKind::HotplugOnline)
            } else {
                (EventKind::SimOffline { pick }, EventKind::SimOnline)
            };
            events.push(Event { at_ms: at, kind: off });
            events.push(Event { at_ms: back, kind: on });
            free_from = back + 50;
        }
    }
    if s.signals.enabled && s.signals.per_storm > 0 {
        let mut r = rng(seed, S_SIGNALS);
        for at_ms in times(&mut r, s.signals.rate, d) {
            events
                .push(Event { at_ms, kind: EventKind::SignalStorm { target: r.random(), count: s.signals.per_storm } });
        }
    }
    if s.fork.active() {
        let mut r = rng(seed, S_FORK);
        for at_ms in times(&mut r, s.fork.rate, d) {
            events.push(Event { at_ms, kind: EventKind::Fork { seed: r.random() } });
        }
    }
    if nlibs > 0 {
        if s.reload.active() {
            let mut r = rng(seed, S_RELOAD);
            for at_ms in times(&mut r, s.reload.rate, d) {
                events.push(Event { at_ms, kind: EventKind::Reload { lib: r.random() } });
            }
        }
        if s.checks.active() {
            let mut r = rng(seed, S_CHECK);
            for at_ms in times(&mut r, s.checks.rate, d) {
                events.push(Event { at_ms, kind: EventKind::Check { lib: r.random() } });
            }
        }
        if s.fallback_toggle.enabled && s.fallback_toggle.rate > 0.0 {
            let mut r = rng(seed, S_FALLBACK);
            let mut free_from = 0;
            for at in times(&mut r, s.fallback_toggle.rate, d) {
                let end = at + s.fallback_toggle.length_ms;
                if at < free_from || end + 20 > d {
                    continue;
                }
                let lib = r.random();
                events.push(Event { at_ms: at, kind: EventKind::FallbackOn { lib } });
                events.push(Event { at_ms: end, kind: EventKind::FallbackOff { lib } });
                free_from = end + 20;
            }
        }
    }
    if s.churn.alive > 0 {
        let mut r = rng(seed, S_ALIVE);
        let at = (d as f64 * r.random_range(0.1..0.2)) as u64;
        events.push(Event { at_ms: at, kind: EventKind::AliveBurst { count: s.churn.alive as u32 } });
    }

    // Stable: events at the same time keep the order above (offline before online).
    events.sort_by_key(|e| e.at_ms);
    Plan { seed, load_order, hotplug, events }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_plan() {
        let s = Scenario { duration_ms: 3000, ..Scenario::default() };
        let a = generate(&s, 42, 3, HotplugMode::Real);
        let b = generate(&s, 42, 3, HotplugMode::Real);
        assert_eq!(a, b);
        let c = generate(&s, 43, 3, HotplugMode::Real);
        assert_ne!(a.events, c.events);
    }

    #[test]
    fn switching_one_kind_off_keeps_the_others() {
        let s = Scenario { duration_ms: 3000, ..Scenario::default() };
        let mut t = s.clone();
        t.signals.enabled = false;
        let a = generate(&s, 9, 2, HotplugMode::Simulated);
        let b = generate(&t, 9, 2, HotplugMode::Simulated);
        let without: Vec<_> = a.events.iter().filter(|e| e.kind.name() != "signal_storm").cloned().collect();
        assert_eq!(without, b.events);
    }

    #[test]
    fn every_enabled_kind_happens_in_a_short_run() {
        let s = Scenario { duration_ms: 1500, ..Scenario::default() };
        let p = generate(&s, 1, 2, HotplugMode::Real);
        for kind in ["affinity", "cpuset", "bring_initial_online", "signal_storm", "fork", "reload", "check"] {
            assert!(p.events.iter().any(|e| e.kind.name() == kind), "no {kind} in {:?}", p.events);
        }
        assert!(p.events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(p.events.iter().all(|e| e.at_ms < s.duration_ms));
    }

    /// Scenarios, seeds, library counts and hotplug flavours whose plans are pinned in
    /// `tests/data/schedule-reference.json`.
    fn reference_cases() -> Vec<(Scenario, u64, usize, HotplugMode)> {
        let json = |j: &str| -> Scenario { serde_json::from_str(j).expect("reference scenario") };
        let mut quiet = json(r#"{"duration_ms": 3000}"#);
        quiet.disable_disturbances();
        vec![
            (json(r#"{"duration_ms": 5000}"#), 1, 2, HotplugMode::Real),
            (json(r#"{"duration_ms": 5000}"#), 0xdead_beef, 3, HotplugMode::Simulated),
            (json(r#"{}"#), 42, 2, HotplugMode::Real),
            (
                json(
                    r#"{"duration_ms": 4000, "churn": {"alive": 10000}, "fork": {"rate": 3}, "reload": {"rate": 2},
                        "hotplug": {"rate": 2, "start_offline": false}}"#,
                ),
                u64::MAX,
                4,
                HotplugMode::Simulated,
            ),
            (quiet, 7, 1, HotplugMode::Off),
        ]
    }

    /// The same seeds give the same schedules as the code that generated the reference
    /// (commit 59d20d4, before the harness's layout changed). Set
    /// `HARNESS_WRITE_SCHEDULE_REFERENCE=1` to write the reference instead of checking it
    /// (only when a change of the schedules is intended: replay files of older runs then
    /// replay their own stored schedule, but a seed no longer gives the same run).
    #[test]
    fn pinned_plans_of_a_few_seeds() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/schedule-reference.json");
        let mut got = Vec::new();
        for (s, seed, nlibs, hotplug) in reference_cases() {
            let plan = generate(&s, seed, nlibs, hotplug);
            let threads: Vec<u64> =
                [0, 1, 3, 1000, 1101, 1 << 20, 2 << 20].iter().map(|&id| thread_seed(seed, id)).collect();
            got.push(serde_json::json!({ "plan": plan, "thread_seeds": threads }));
        }
        if std::env::var_os("HARNESS_WRITE_SCHEDULE_REFERENCE").is_some() {
            let mut text = String::from("[\n");
            for (i, g) in got.iter().enumerate() {
                text.push_str(&serde_json::to_string(g).unwrap());
                text.push_str(if i + 1 < got.len() { ",\n" } else { "\n" });
            }
            text.push_str("]\n");
            std::fs::write(path, text).expect("write the schedule reference");
            return;
        }
        let want: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(path).expect("read the schedule reference")).unwrap();
        assert_eq!(want.len(), got.len(), "number of reference cases");
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            let seed = &w["plan"]["seed"];
            assert_eq!(w["thread_seeds"], g["thread_seeds"], "case {i} (seed {seed}): thread seeds differ");
            assert_eq!(w["plan"]["load_order"], g["plan"]["load_order"], "case {i} (seed {seed}): load order differs");
            let (we, ge) = (w["plan"]["events"].as_array().unwrap(), g["plan"]["events"].as_array().unwrap());
            if let Some(k) = (0..we.len().max(ge.len())).find(|&k| we.get(k) != ge.get(k)) {
                panic!(
                    "case {i} (seed {seed}): event {k} differs: reference {:?}, now {:?} ({} vs {} events)",
                    we.get(k),
                    ge.get(k),
                    we.len(),
                    ge.len()
                );
            }
            assert_eq!(w, g, "case {i} (seed {seed}): plan differs");
        }
    }

    #[test]
    fn hotplug_cycles_pair_up() {
        let s = Scenario { duration_ms: 20_000, ..Scenario::default() };
        let p = generate(&s, 5, 1, HotplugMode::Real);
        let mut offline = false;
        for e in &p.events {
            match e.kind {
                EventKind::HotplugOffline { .. } => {
                    assert!(!offline, "two offlines in a row");
                    offline = true;
                }
                EventKind::HotplugOnline => {
                    assert!(offline, "online without offline");
                    offline = false;
                }
                _ => {}
            }
        }
        assert!(!offline, "the plan ends with a CPU offline");
    }
}

//! Short scenarios in the three registration modes, every disturbance on (real hotplug when
//! root and writable, else simulated), the counters next to the example C plugin.

mod common;

use common::*;

fn run_mode(name: &str, mode: &str, index: &str) -> Run {
    let _t = turn();
    let before = online();
    let mut args: Vec<String> = lib_args();
    args.extend(["--duration", "2", "--mode", mode, "--index", index, "--seed", "12345"].map(String::from));
    // Every disturbance at least once in two seconds.
    args.extend(["--fork-rate", "2", "--reload-rate", "1.5", "--hotplug-rate", "1.5"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run(name, &argv);
    assert_eq!(online(), before, "CPUs online before and after the run differ");
    assert_eq!(r.code(), 0, "{}", r.describe());
    assert!(r.stdout.starts_with("seed: 12345\n"), "the seed is not printed first:\n{}", r.stdout);
    assert_eq!(r.report()["passed"], true);
    r
}

fn common_checks(r: &Run) {
    let st = &r.report()["state"];
    let hotplug = st["hotplug"].as_str().unwrap();
    if real_hotplug_possible() {
        assert_eq!(hotplug, "real", "{}", r.describe());
        assert!(st["cpus"]["offlined"].as_u64().unwrap() >= 1, "no CPU went offline: {}", r.describe());
        assert!(st["cpus"]["offline_at_start"].is_u64(), "no CPU offline at the start");
    } else {
        assert_eq!(hotplug, "simulated");
    }
    assert!(!st["forks"].as_array().unwrap().is_empty(), "no fork happened");
    let reloads: usize = st["libs"].as_array().unwrap().iter().map(|l| l["reloads"].as_array().unwrap().len()).sum();
    assert!(reloads >= 1, "no reload happened");
    assert!(st["threads"]["created"].as_u64().unwrap() > 100, "little thread churn: {}", st["threads"]);
    assert!(st["signals_sent"].as_u64().unwrap() > 0);
    for l in st["libs"].as_array().unwrap() {
        assert!(l["units"].as_u64().unwrap() > 0, "{} did no work", l["name"]);
        assert!(!l["checks"].as_array().unwrap().is_empty(), "{} never checked", l["name"]);
    }
    // The event log says when each event ran and how long it took, and the summary says how
    // well the run kept to its schedule.
    let elapsed = st["elapsed_ms"].as_u64().unwrap();
    let events = st["events"].as_array().unwrap();
    assert!(!events.is_empty());
    for e in events {
        let (ran, took) = (e["ran_ms"].as_u64().unwrap(), e["took_ms"].as_u64().unwrap());
        assert!(ran + took <= elapsed + 1, "event ends after the run: {e} (run {elapsed} ms)");
    }
    let prio = st["engine_priority"].as_str().unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(prio, "nice -10");
    } else {
        assert!(prio.starts_with("default"), "{prio}");
    }
    assert!(
        r.stdout.contains(&format!("events: {} of {} ran", events.len(), events.len()))
            || r.stdout.contains(" not run: the run stopped first)"),
        "{}",
        r.stdout
    );
    // The summary table is there.
    assert!(r.stdout.contains("PASS: every invariant held"), "{}", r.stdout);
    assert!(r.stdout.contains("percpu_counter"));
    assert!(r.stdout.contains("pcounters"));
}

#[test]
fn libc_owned_mode() {
    let r = run_mode("mode-libc", "libc", "cpu_id");
    common_checks(&r);
    assert!(r.modes("counters").iter().all(|m| m == "libc-owned" || m == "disabled"), "{:?}", r.modes("counters"));
    assert_eq!(r.modes("plugin"), vec!["libc-owned"]);
    assert_eq!(r.lib("plugin")["counts"]["fallback_ops"], 0);
}

#[test]
fn reserved_but_unregistered_mode() {
    let r = run_mode("mode-reserved", "reserved", "mm_cid");
    common_checks(&r);
    // The counters library and the example plugin both register libc's reserved area, each
    // without knowing about the other: in each thread whichever comes first registers it and
    // the other finds it registered. The plugin records which (EBUSY: a peer was first) and
    // sees both outcomes; libpcounters reads the registration from the area itself (no
    // thread-local) and reports "registered". (A thread created by a registered thread is
    // registered by glibc itself at its start; both then find it registered.)
    let m = r.modes("counters");
    assert!(m.iter().all(|m| m == "registered" || m == "disabled"), "counters: {m:?}");
    assert!(m.iter().any(|m| m == "registered"), "counters: {m:?}");
    let m = r.modes("plugin");
    assert!(m.iter().all(|m| m.starts_with("registered-by-") || m == "disabled"), "plugin: {m:?}");
    for want in ["registered-by-us", "registered-by-peer"] {
        assert!(m.iter().any(|m| m == want), "plugin: no thread {want}: {m:?}");
    }
    // Registrations by libpcounters must have happened (in threads it reached first).
    assert!(r.lib("counters")["counts"]["registered_by_us"].as_u64().unwrap_or(0) > 0, "{}", r.lib("counters"));
    let c = &r.lib("plugin")["counts"];
    assert_eq!(c["fallback_ops"], 0, "{c}");
    assert!(c["ops"].as_u64().unwrap() > 0);
    assert_eq!(r.lib("plugin")["lazy"], true);
}

#[test]
fn no_rseq_mode() {
    let r = run_mode("mode-none", "none", "cpu_id");
    common_checks(&r);
    let m = r.modes("counters");
    assert!(m.iter().all(|m| m == "unavailable(ENOSYS)" || m == "disabled"), "{m:?}");
    let c = &r.lib("counters")["counts"];
    assert_eq!(c["aborts"], 0);
    assert!(c["fallback_ops"].as_u64().unwrap() >= c["ops"].as_u64().unwrap());
    assert_eq!(r.report()["state"]["process"]["probe_errno"], libc::ENOSYS);
    // The plugin tried to register libc's reserved area and says why it could not.
    assert_eq!(r.modes("plugin"), vec!["unavailable(ENOSYS)"]);
    let p = &r.lib("plugin")["counts"];
    assert_eq!(p["fallback_ops"], p["ops"]);
}

//! The locks participant (libplocks): plain per-CPU data guarded by the per-CPU mutex and
//! the big-reader lock stays exact next to the counters and the example plugin in every
//! registration mode, across reloads and forks (with locks held by other threads); and a
//! lock that is skipped on purpose (`HARNESS_PLOCKS_BREAK`) fails the run with its seed.

mod common;

use common::*;
use serde_json::Value;

fn args_with(extra: &[&str]) -> Vec<String> {
    let mut a = lib_args();
    a.extend(["--lib".to_string(), locks_lib().display().to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn checks(lib: &Value) -> Vec<(String, bool, String)> {
    lib["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["phase"].as_str().unwrap().to_string(),
                c["ok"].as_bool().unwrap(),
                c["message"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn in_mode(name: &str, mode: &str, expect_mode: &str) {
    let _t = turn();
    let before = online();
    let a = args_with(&[
        "--duration",
        "2",
        "--mode",
        mode,
        "--seed",
        "4242",
        "--fork-rate",
        "2",
        "--reload-rate",
        "1.5",
        "--hotplug-rate",
        "1.5",
    ]);
    let argv: Vec<&str> = a.iter().map(String::as_str).collect();
    let r = run(name, &argv);
    assert_eq!(online(), before, "CPUs online before and after the run differ");
    assert_eq!(r.code(), 0, "{}", r.describe());
    let l = r.lib("locks");
    assert!(l["units"].as_u64().unwrap() > 0, "{}", r.describe());
    let cs = checks(l);
    assert!(!cs.is_empty());
    for (phase, ok, msg) in &cs {
        assert!(ok, "{phase}: {msg}");
    }
    let (_, _, last) = cs.last().unwrap();
    assert!(last.contains("mutex updates exact over"), "{last}");
    assert!(last.contains("never torn"), "{last}");
    // Every thread sample in the mode the registration mode promises (or forced fallback).
    let modes = r.modes("locks");
    assert!(modes.iter().any(|m| m == expect_mode), "{modes:?}");
    assert!(modes.iter().all(|m| m == expect_mode || m == "disabled"), "{modes:?}");
    // Forked children used the locks as the fork left them.
    let forks = r.report()["state"]["forks"].as_array().unwrap();
    assert!(!forks.is_empty(), "no fork happened");
    for f in forks {
        let v: Vec<&str> = f["verdict"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
        assert!(v.iter().any(|x| x.starts_with("plocks ") && x.contains(": ok (")), "{v:?}");
    }
    if mode == "none" {
        // Every read pair went through the atomic path, and the library counted it.
        assert!(l["counts"]["fallback_ops"].as_u64().unwrap() > 0, "{}", l["counts"]);
        assert_eq!(l["counts"]["aborts"].as_u64().unwrap(), 0);
    }
}

#[test]
fn locks_exact_next_to_the_others_libc() {
    in_mode("locks-libc", "libc", "libc-owned");
}

#[test]
fn locks_exact_next_to_the_others_reserved() {
    in_mode("locks-reserved", "reserved", "registered");
}

#[test]
fn locks_exact_next_to_the_others_without_rseq() {
    in_mode("locks-none", "none", "unavailable(ENOSYS)");
}

#[test]
fn locks_reloaded_and_forked_while_held() {
    let _t = turn();
    let lib = locks_lib();
    let a = [
        "--lib",
        lib.to_str().unwrap(),
        "--no-default-libs",
        "--duration",
        "2",
        "--seed",
        "99",
        "--reload-rate",
        "3",
        "--fork-rate",
        "6",
        "--threads",
        "6",
    ];
    let r = run("locks-reload", &a);
    assert_eq!(r.code(), 0, "{}", r.describe());
    let l = r.lib("locks");
    assert!(!l["reloads"].as_array().unwrap().is_empty(), "no reload: {}", r.describe());
    for rl in l["reloads"].as_array().unwrap() {
        assert_eq!(rl["unmapped"], true, "{rl}");
    }
    let cs = checks(l);
    assert!(cs.iter().any(|(p, ok, m)| p == "before-unload" && *ok && m.contains("mutex updates exact")), "{cs:?}");
    assert!(cs.iter().any(|(p, ok, m)| p == "fresh-load" && *ok && m.contains("0 mutex updates")), "{cs:?}");
    let forks = r.report()["state"]["forks"].as_array().unwrap();
    assert!(forks.len() >= 3, "few forks: {}", forks.len());
    assert!(forks.iter().all(|f| f["ok"] == true), "{forks:?}");
    // Some fork found a lock held by another thread (it must stay held in the child).
    let verdicts: Vec<String> =
        forks.iter().flat_map(|f| f["verdict"].as_array().unwrap().clone()).map(|v| v.to_string()).collect();
    assert!(
        verdicts.iter().any(|v| v.contains("held by parent threads") && !v.contains(" 0 held by parent threads")),
        "no fork happened while a lock was held: {verdicts:?}"
    );
}

fn broken(name: &str, which: &str, expect: &[&str]) -> Run {
    let _t = turn();
    let lib = locks_lib();
    let a = [
        "--lib",
        lib.to_str().unwrap(),
        "--no-default-libs",
        "--duration",
        "2",
        "--seed",
        "31337",
        "--hotplug",
        "off",
        "--no-cpuset",
    ];
    let r = run_env(name, &a, &[("HARNESS_PLOCKS_BREAK", which)]);
    assert_eq!(r.code(), 1, "a skipped {which} lock went unnoticed: {}", r.describe());
    assert!(r.stdout.contains("(seed 31337)"), "{}", r.describe());
    for e in expect {
        assert!(r.stdout.contains(e), "missing {e:?}: {}", r.describe());
    }
    let replay = r.replay_dir.join("harness-replay-31337.json");
    assert!(replay.exists(), "no replay file: {}", r.describe());
    r
}

#[test]
fn a_skipped_mutex_is_caught() {
    let r = broken(
        "locks-broken-mutex",
        "mutex",
        &["invariant `work_units` broke in plocks", "invariant `library_checks` broke in plocks", "mutex skipped"],
    );
    let out = &r.stdout;
    assert!(out.contains("half updated") || out.contains("two threads held one lock"), "{out}");
    assert!(out.contains("under its lock"), "no lost update in the quiesced check: {out}");
}

#[test]
fn a_skipped_read_lock_is_caught() {
    let r = broken(
        "locks-broken-rwlock",
        "rwlock",
        &["invariant `work_units` broke in plocks", "saw a writer's half-done update", "read lock skipped"],
    );
    // The replay runs the same schedule and fails the same way.
    let replay = r.replay_dir.join("harness-replay-31337.json");
    let _t = turn();
    let again = run_env(
        "locks-broken-rwlock-replay",
        &["replay", replay.to_str().unwrap()],
        &[("HARNESS_PLOCKS_BREAK", "rwlock")],
    );
    assert_eq!(again.code(), 1, "{}", again.describe());
    assert!(again.stdout.contains("saw a writer's half-done update"), "{}", again.describe());
}

#[test]
fn a_bad_break_switch_is_refused() {
    let _t = turn();
    let lib = locks_lib();
    let r = run_env(
        "locks-bad-switch",
        &["--lib", lib.to_str().unwrap(), "--no-default-libs", "--duration", "0.5"],
        &[("HARNESS_PLOCKS_BREAK", "everything")],
    );
    assert_eq!(r.code(), 2, "{}", r.describe());
    assert!(r.describe().contains("HARNESS_PLOCKS_BREAK=everything: expected mutex or rwlock"), "{}", r.describe());
}

//! A foreign rseq user in the run: `plugins/foreign_rseq.c` registers an rseq area of its own
//! in every thread it reaches first. Under `--mode reserved` the contract-following libraries
//! then get EINVAL and run their fallback path there, with exact sums; `--foreign-rseq`
//! expects that, and a run without it names the foreign user.

mod common;

use common::*;

fn foreign_args(mode: &str, seed: &str) -> Vec<String> {
    let mut a = lib_args();
    a.extend(["--plugin".to_string(), foreign_plugin().display().to_string()]);
    a.extend(
        [
            "--duration",
            "2",
            "--seed",
            seed,
            "--mode",
            mode,
            "--hotplug",
            "simulated",
            "--fork-rate",
            "2",
            "--reload-rate",
            "3",
            "--alive",
            "500",
        ]
        .map(String::from),
    );
    a
}

fn lib_named<'a>(r: &'a Run, name: &str) -> &'a serde_json::Value {
    r.report()["state"]["libs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"].as_str().is_some_and(|n| n.starts_with(name)))
        .unwrap_or_else(|| panic!("no library {name} in the report; {}", r.describe()))
}

fn modes_of(r: &Run, name: &str) -> Vec<String> {
    lib_named(r, name)["modes"].as_object().unwrap().keys().cloned().collect()
}

/// Every quiesced check of every library held, and there were some (exact sums).
fn exact_sums_everywhere(r: &Run) {
    for l in r.report()["state"]["libs"].as_array().unwrap() {
        let checks = l["checks"].as_array().unwrap();
        assert!(!checks.is_empty(), "{} was never checked; {}", l["name"], r.describe());
        assert!(checks.iter().all(|c| c["ok"] == true), "{}: a check failed; {}", l["name"], r.describe());
    }
}

#[test]
fn reserved_mode_with_a_foreign_user_keeps_exact_sums() {
    let _t = turn();
    let mut args = foreign_args("reserved", "4242");
    args.push("--foreign-rseq".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run("foreign-reserved", &argv);
    assert_eq!(r.code(), 0, "{}", r.describe());
    exact_sums_everywhere(&r);
    // The foreign user registered its own areas; the others were refused with EINVAL.
    let foreign = modes_of(&r, "foreign_rseq");
    assert!(foreign.contains(&"registered-by-us".to_string()), "foreign modes {foreign:?}; {}", r.describe());
    for name in ["pcounters", "percpu_counter"] {
        let m = modes_of(&r, name);
        assert!(m.contains(&"unavailable(EINVAL)".to_string()), "{name} modes {m:?}; {}", r.describe());
        let l = lib_named(&r, name);
        assert!(l["counts"]["fallback_ops"].as_u64().unwrap() > 0, "{name}: no fallback; {}", r.describe());
    }
    // Never unloaded: flagged, left out of the reloads (which the others went through).
    let f = lib_named(&r, "foreign_rseq");
    assert_eq!(f["never_unload"], true, "{}", r.describe());
    assert_eq!(f["foreign_area"], true, "{}", r.describe());
    assert!(f["reloads"].as_array().unwrap().is_empty(), "{}", r.describe());
    let reloads: usize =
        r.report()["state"]["libs"].as_array().unwrap().iter().map(|l| l["reloads"].as_array().unwrap().len()).sum();
    assert!(reloads > 0, "no reload happened; {}", r.describe());
    let tm = r.report()["invariants"].as_array().unwrap().iter().find(|v| v["invariant"] == "thread_modes").unwrap();
    assert!(tm["message"].as_str().unwrap().contains("with a foreign rseq user"), "{}", r.describe());
}

#[test]
fn libc_mode_the_foreign_user_takes_glibcs_area() {
    let _t = turn();
    let mut args = foreign_args("libc", "4343");
    args.push("--foreign-rseq".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run("foreign-libc", &argv);
    assert_eq!(r.code(), 0, "{}", r.describe());
    exact_sums_everywhere(&r);
    assert_eq!(modes_of(&r, "foreign_rseq"), vec!["libc-owned".to_string()], "{}", r.describe());
    assert!(modes_of(&r, "pcounters").iter().all(|m| m == "libc-owned" || m == "disabled"), "{}", r.describe());
}

#[test]
fn an_unexpected_foreign_user_is_named() {
    let _t = turn();
    let args = foreign_args("reserved", "4444");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run("foreign-unexpected", &argv);
    assert_eq!(r.code(), 1, "{}", r.describe());
    assert!(r.stdout.starts_with("seed: 4444\n"), "{}", r.describe());
    assert!(r.stdout.contains("invariant `thread_modes` broke"), "{}", r.describe());
    assert!(r.stdout.contains("unavailable(EINVAL)"), "{}", r.describe());
    assert!(r.stdout.contains("foreign_rseq registers an rseq area of its own"), "{}", r.describe());
    assert!(r.stdout.contains("--foreign-rseq"), "{}", r.describe());
    // The sums were exact all the same.
    exact_sums_everywhere(&r);
}

#[test]
fn foreign_rseq_without_a_foreign_user_is_a_violation() {
    let _t = turn();
    let mut args = lib_args();
    args.extend(["--duration", "0.5", "--seed", "4545", "--hotplug", "off", "--foreign-rseq"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run("foreign-missing", &argv);
    assert_eq!(r.code(), 1, "{}", r.describe());
    assert!(r.stdout.contains("--foreign-rseq expects a foreign rseq user"), "{}", r.describe());
}

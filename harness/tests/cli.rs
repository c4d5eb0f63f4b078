//! The command line: help, seeds, determinism of the schedule.

mod common;

use std::process::Command;

use common::*;

fn harness_out(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(harness()).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn help_explains_every_option() {
    let (code, out, _) = harness_out(&["--help"]);
    assert_eq!(code, 0);
    for opt in [
        "--scenario",
        "--duration",
        "--seed",
        "--lib",
        "--plugin",
        "--rtld-global",
        "--preload",
        "--mode",
        "--index",
        "--threads",
        "--alive",
        "--no-churn",
        "--no-affinity",
        "--no-cpuset",
        "--hotplug",
        "--no-signals",
        "--no-fork",
        "--no-reload",
        "--json",
        "replay",
    ] {
        assert!(out.contains(opt), "--help does not mention {opt}:\n{out}");
    }
    assert!(out.contains("reserved") && out.contains("ENOSYS"), "{out}");
}

#[test]
fn same_seed_same_schedule() {
    let counters = counters_lib();
    let plugin = example_plugin();
    let args = |seed: &str| {
        harness_out(&[
            "--print-scenario",
            "--seed",
            seed,
            "--duration",
            "5",
            "--lib",
            counters.to_str().unwrap(),
            "--plugin",
            plugin.to_str().unwrap(),
        ])
    };
    let (c1, a, _) = args("4242");
    let (c2, b, _) = args("4242");
    let (_, c, _) = args("4243");
    assert_eq!((c1, c2), (0, 0));
    assert!(a.starts_with("seed: 4242\n"), "{a}");
    assert_eq!(a, b, "the same seed gave two schedules");
    assert_ne!(a.lines().skip(1).collect::<Vec<_>>(), c.lines().skip(1).collect::<Vec<_>>());
    let v: serde_json::Value = serde_json::from_str(a.split_once('\n').unwrap().1).unwrap();
    assert!(!v["plan"]["events"].as_array().unwrap().is_empty());
    assert_eq!(v["plan"]["load_order"].as_array().unwrap().len(), 2);
}

#[test]
fn a_drawn_seed_is_printed_first() {
    let (code, out, _) =
        harness_out(&["--print-scenario", "--no-default-libs", "--plugin", example_plugin().to_str().unwrap()]);
    assert_eq!(code, 0);
    let first = out.lines().next().unwrap();
    assert!(first.strip_prefix("seed: ").is_some_and(|s| s.parse::<u64>().is_ok()), "{first}");
}

#[test]
fn scenario_file_and_overrides() {
    let f = tmp().join("scenario.json");
    std::fs::write(&f, r#"{"duration_ms": 1234, "threads": 3, "signals": {"rate": 7}}"#).unwrap();
    let (code, out, err) = harness_out(&[
        "--print-scenario",
        "--scenario",
        f.to_str().unwrap(),
        "--threads",
        "2",
        "--no-default-libs",
        "--plugin",
        example_plugin().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.split_once('\n').unwrap().1).unwrap();
    assert_eq!(v["scenario"]["duration_ms"], 1234);
    assert_eq!(v["scenario"]["threads"], 2);
    assert_eq!(v["scenario"]["signals"]["rate"], 7.0);
    let (code, _, err) = harness_out(&["--print-scenario", "--scenario", "/nonexistent/scenario.json"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/scenario.json"), "{err}");
}

#[test]
fn a_repeated_option_takes_its_last_value() {
    // Scripts (the kernel-matrix runner's --harness-arg) append options to override earlier ones.
    let (code, out, err) = harness_out(&[
        "--print-scenario",
        "--no-default-libs",
        "--plugin",
        example_plugin().to_str().unwrap(),
        "--duration",
        "1",
        "--duration",
        "2.5",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"duration_ms\": 2500"), "{out}");
}

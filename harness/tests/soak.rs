//! `harness soak`: a tiny soak rotates through the matrix, and its aggregate adds up.

mod common;

use std::process::Command;

use common::*;

#[test]
fn a_tiny_soak_adds_up() {
    let _t = turn();
    let json = tmp().join("soak.json");
    let _ = std::fs::remove_file(&json);
    let mut args = lib_args();
    args.extend(
        [
            "soak",
            "--runs",
            "4",
            "--minutes",
            "5",
            "--run-seconds",
            "0.6",
            "--seed",
            "2024",
            "--no-progress",
            "--hotplug",
        ]
        .map(String::from),
    );
    args.push(if real_hotplug_possible() { "auto".into() } else { "simulated".into() });
    args.extend(["--reload-rate".to_string(), "4".to_string(), "--fork-rate".to_string(), "4".to_string()]);
    args.push("--json".into());
    args.push(json.display().to_string());
    args.push("--replay-dir".into());
    args.push(tmp().join("soak-replay").display().to_string());
    // `soak` first: the library options are the run options of the subcommand.
    let i = args.iter().position(|a| a == "soak").unwrap();
    let soak = args.remove(i);
    args.insert(0, soak);
    let before = online();
    let out = Command::new(harness()).args(&args).output().expect("run harness soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let describe = format!("{:?}\nstdout:\n{stdout}\nstderr:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert_eq!(online(), before, "CPUs not restored; {describe}");
    assert!(stdout.starts_with("seed: 2024\n"), "{describe}");
    assert_eq!(out.status.code(), Some(0), "{describe}");
    let a: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("soak JSON")).unwrap();
    let runs = a["run_list"].as_array().unwrap();
    assert_eq!(a["runs"], 4, "{describe}");
    assert_eq!(runs.len(), 4, "{describe}");
    assert_eq!(a["passed"], 4, "{describe}");
    // The first runs rotate through the registration modes, then the index mode changes.
    let cells: Vec<String> = runs
        .iter()
        .map(|r| format!("{}/{}/{}", r["mode"].as_str().unwrap(), r["index"].as_str().unwrap(), r["rtld_global"]))
        .collect();
    assert_eq!(
        cells,
        ["libc/cpu_id/false", "reserved/cpu_id/false", "none/cpu_id/false", "libc/mm_cid/false"],
        "{describe}"
    );
    // Fresh seeds, all different.
    let mut seeds: Vec<u64> = runs.iter().map(|r| r["seed"].as_u64().unwrap()).collect();
    seeds.sort_unstable();
    seeds.dedup();
    assert_eq!(seeds.len(), 4, "{describe}");
    // The totals are the sums over the runs.
    for (total, field) in [
        ("hotplug_cycles", "hotplug_cycles"),
        ("reloads", "reloads"),
        ("threads_churned", "threads_created"),
        ("signals_delivered", "signals_delivered"),
        ("forks", "forks"),
    ] {
        let sum: u64 = runs.iter().map(|r| r[field].as_u64().unwrap()).sum();
        assert_eq!(a[total].as_u64().unwrap(), sum, "{total}; {describe}");
    }
    assert!(a["threads_churned"].as_u64().unwrap() > 4, "{describe}");
    assert!(a["reloads"].as_u64().unwrap() > 0, "{describe}");
    let per_cell: u64 = a["per_cell"].as_object().unwrap().values().map(|c| c["runs"].as_u64().unwrap()).sum();
    assert_eq!(per_cell, 4, "{describe}");
    let per_order: u64 = a["per_load_order"].as_object().unwrap().values().map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(per_order, 4, "{describe}");
    assert!(a["violations"].as_array().unwrap().is_empty(), "{describe}");
    assert!(a["minutes"].as_f64().unwrap() > 0.0, "{describe}");
    for part in ["soak: ", "4 runs, 4 passed, 0 failed", "threads churned", "invariant violations: none"] {
        assert!(stdout.contains(part), "{part} missing; {describe}");
    }
}

#[test]
fn a_soak_with_a_broken_plugin_lists_each_violation_with_seed_and_replay_file() {
    let _t = turn();
    let json = tmp().join("soak-broken.json");
    let replay_dir = tmp().join("soak-broken-replay");
    let _ = std::fs::remove_dir_all(&replay_dir);
    let args = [
        "soak".to_string(),
        "--runs".into(),
        "2".into(),
        "--run-seconds".into(),
        "0.6".into(),
        "--seed".into(),
        "77".into(),
        "--hotplug".into(),
        "off".into(),
        "--no-cpuset".into(),
        "--no-progress".into(),
        "--lib".into(),
        counters_lib().display().to_string(),
        "--plugin".into(),
        broken_plugin().display().to_string(),
        "--json".into(),
        json.display().to_string(),
        "--replay-dir".into(),
        replay_dir.display().to_string(),
    ];
    let out = Command::new(harness()).args(&args).output().expect("run harness soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let describe = format!("{:?}\nstdout:\n{stdout}", out.status);
    assert_eq!(out.status.code(), Some(1), "{describe}");
    let a: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("soak JSON")).unwrap();
    let v = a["violations"].as_array().unwrap();
    assert!(v.len() >= 2, "{describe}");
    for x in v {
        let seed = x["seed"].as_u64().unwrap();
        let file = x["replay_file"].as_str().unwrap();
        assert!(file.ends_with(&format!("harness-replay-{seed}.json")), "{file}; {describe}");
        assert!(std::path::Path::new(file).exists(), "{file}; {describe}");
        assert!(stdout.contains(&format!("(seed {seed})")), "{describe}");
    }
    assert!(stdout.contains("harness replay "), "{describe}");
}

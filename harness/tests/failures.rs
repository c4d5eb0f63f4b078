//! The failure paths: clear errors for missing or broken libraries, a broken invariant gives
//! exit code 1, a message with the seed, a replay file, and `harness replay` reproduces it;
//! CPUs come back whatever stops the run.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn missing_library_is_named() {
    let missing = tmp().join("no-such-dir/libnothere.so");
    let r = run("missing-lib", &["--duration", "0.2", "--lib", missing.to_str().unwrap()]);
    assert_eq!(r.code(), 2, "{}", r.describe());
    assert!(r.stdout.starts_with("seed: "), "{}", r.describe());
    assert!(r.stderr.contains(missing.to_str().unwrap()), "the error does not name the file: {}", r.describe());
    assert!(r.stderr.contains("cargo build --release --workspace"), "{}", r.describe());
}

#[test]
fn broken_library_is_named() {
    let bad = tmp().join("libgarbage.so");
    std::fs::write(&bad, b"this is not an ELF file").unwrap();
    let _t = turn();
    let r = run("garbage-lib", &["--duration", "0.2", "--no-default-libs", "--plugin", bad.to_str().unwrap()]);
    assert_eq!(r.code(), 2, "{}", r.describe());
    assert!(r.stderr.contains(&format!("cannot load library {}", bad.display())), "{}", r.describe());
}

#[test]
fn library_without_a_known_api_is_named() {
    let libm = ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib64/libm.so.6"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(libm) = libm else { return };
    let _t = turn();
    let r = run("foreign-lib", &["--duration", "0.2", "--no-default-libs", "--lib", libm]);
    assert_eq!(r.code(), 2, "{}", r.describe());
    assert!(r.stderr.contains("exports neither the harness plugin ABI"), "{}", r.describe());
    assert!(r.stderr.contains(libm), "{}", r.describe());
}

#[test]
fn broken_invariant_writes_a_replay_file_and_replays() {
    let _t = turn();
    let broken = broken_plugin();
    let counters = counters_lib();
    let args = [
        "--duration",
        "1",
        "--seed",
        "777",
        "--lib",
        counters.to_str().unwrap(),
        "--plugin",
        broken.to_str().unwrap(),
        "--hotplug",
        "off",
        "--no-cpuset",
    ];
    let r = run("broken-plugin", &args);
    assert_eq!(r.code(), 1, "{}", r.describe());
    assert!(r.stdout.starts_with("seed: 777\n"));
    assert!(r.stdout.contains("invariant `library_checks` broke in broken_counter"), "{}", r.describe());
    assert!(r.stdout.contains("(seed 777)"), "{}", r.describe());
    assert!(r.stdout.contains("counted "), "the plugin's message is missing: {}", r.describe());
    let replay = r.replay_dir.join("harness-replay-777.json");
    assert!(replay.exists(), "no replay file: {}", r.describe());
    assert!(r.stdout.contains(&format!("harness replay {}", replay.display())), "{}", r.describe());
    assert_eq!(r.report()["passed"], false);
    // The replay file holds the scenario, the seed and the event log.
    let rf: serde_json::Value = serde_json::from_slice(&std::fs::read(&replay).unwrap()).unwrap();
    assert_eq!(rf["job"]["plan"]["seed"], 777);
    assert!(!rf["job"]["plan"]["events"].as_array().unwrap().is_empty());
    assert!(!rf["log"].as_array().unwrap().is_empty());

    let again = run("broken-plugin-replay", &["replay", replay.to_str().unwrap()]);
    assert_eq!(again.code(), 1, "{}", again.describe());
    assert!(again.stdout.starts_with("seed: 777\n"), "{}", again.describe());
    assert!(again.stdout.contains("invariant `library_checks` broke in broken_counter"), "{}", again.describe());
    assert_eq!(
        again.report()["state"]["events"].as_array().unwrap().len(),
        rf["job"]["plan"]["events"].as_array().unwrap().len(),
        "the replay did not run the same schedule"
    );
}

fn wait_for(cond: impl Fn() -> bool, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The run process of a supervisor (its only child).
fn run_process(sup: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{sup}/task/{sup}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

fn start_long_run(name: &str) -> std::process::Child {
    let mut args = lib_args();
    args.extend(["--duration", "30", "--hotplug", "real", "--no-progress", "--replay-dir"].map(String::from));
    args.push(tmp().join(format!("{name}-replay")).display().to_string());
    Command::new(harness())
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the harness")
}

#[test]
fn sigterm_brings_offline_cpus_back() {
    if !real_hotplug_possible() {
        eprintln!("skipped: not root / not writable");
        return;
    }
    let _t = turn();
    let before = online();
    let child = start_long_run("sigterm");
    // The run starts with a CPU offline.
    let went = wait_for(|| online() != before, Duration::from_secs(10));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(went, "no CPU went offline: {stdout}");
    assert_eq!(online(), before, "CPUs not restored after SIGTERM: {stdout}");
    assert_eq!(out.status.code(), Some(130), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("interrupted"), "{stdout}");
}

#[test]
fn killed_run_process_is_reported_and_cpus_come_back() {
    if !real_hotplug_possible() {
        eprintln!("skipped: not root / not writable");
        return;
    }
    let _t = turn();
    let before = online();
    let child = start_long_run("sigkill");
    let went = wait_for(|| online() != before, Duration::from_secs(10));
    let rp = run_process(child.id()).expect("the supervisor has a run process");
    // SAFETY: killing our own grandchild, the run process.
    unsafe { libc::kill(rp as i32, libc::SIGKILL) };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(went, "no CPU went offline: {stdout}");
    assert_eq!(online(), before, "the supervisor did not bring CPUs back: {stdout}");
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("died from signal 9 (SIGKILL)"), "{stdout}");
    assert!(stdout.contains("harness replay "), "{stdout}");
    assert!(
        !std::fs::read_dir("/sys/fs/cgroup/cpuset")
            .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy() == format!("rseq-harness-{rp}")))
            .unwrap_or(false),
        "the run process's cgroup is left behind"
    );
}

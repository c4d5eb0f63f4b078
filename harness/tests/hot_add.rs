//! A CPU that was offline when the run started (before the libraries allocated their
//! per-CPU data) comes online from outside the harness mid-run, as a hot-added vCPU does:
//! the harness must notice it, put work on it, and every invariant must hold.

mod common;

use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use common::{harness, lib_args, real_hotplug_possible, tmp, turn};

/// Brings the CPU back online however the test ends.
struct Online(u32);

impl Drop for Online {
    fn drop(&mut self) {
        let _ = std::fs::write(format!("/sys/devices/system/cpu/cpu{}/online", self.0), "1");
    }
}

#[test]
fn cpu_onlined_from_outside_gets_work() {
    if !real_hotplug_possible() {
        eprintln!("skipped: needs root and a writable CPU online file other than cpu0");
        return;
    }
    let _turn = turn();
    // Cooperate with other tools that take CPUs offline (the harness's own lock).
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("rseq-hotplug.lock"))
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

    let cpu = rseq::topology::online_cpus().unwrap().into_iter().filter(|&c| c != 0).max().expect("a second CPU");
    let path = format!("/sys/devices/system/cpu/cpu{cpu}/online");
    let _restore = Online(cpu);
    std::fs::write(&path, "0").expect("offline the CPU");

    let json = tmp().join("hot-add.json");
    let _ = std::fs::remove_file(&json);
    let child = Command::new(harness())
        .args(lib_args())
        .args(["--duration", "3", "--hotplug", "off", "--no-cpuset", "--no-progress", "--json"])
        .arg(&json)
        .arg("--replay-dir")
        .arg(tmp().join("hot-add-replay"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the harness");
    std::thread::sleep(Duration::from_millis(1300));
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all(b"1").expect("online the CPU");
    let out = child.wait_with_output().expect("harness");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "harness failed:\n{text}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let cpus = &report["state"]["cpus"];
    let added: Vec<u64> = cpus["added_during_run"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(added, vec![cpu as u64], "the harness did not see cpu{cpu} appear:\n{text}");
    let work = cpus["work_by_cpu"][cpu as usize].as_u64().unwrap_or(0);
    assert!(work > 0, "no work ran on cpu{cpu} after it appeared:\n{text}");
    assert!(text.contains(&format!("cpu{cpu} appeared at")), "{text}");
}

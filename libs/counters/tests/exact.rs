//! Exact sums under disturbance: signal storms with adds inside the handler, thousands of
//! threads created and exiting, affinity changes, the fallback path switched on and off,
//! and every rseq registration mode (this binary re-runs itself as a child process with
//! glibc's rseq registration disabled, and with `rseq(2)` denied by seccomp).

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{handler_adds_to, handler_stop, serial, with_storm, Rng, Storm};
use pcounters::{Counter, Index, Mode};

const STORM: Duration = Duration::from_micros(50);
const RUN: Duration = Duration::from_millis(400);
const WORKERS: usize = 6;

/// Adds random amounts (both signs) to random counters of `cs` for `run` (or `rounds`
/// batches of 256 when given), changing the thread's CPU affinity every few batches when
/// `affinity` is set (one CPU, or all). Returns what it added to each counter.
fn add_randomly(cs: &[Counter], seed: u64, run: Duration, rounds: Option<u64>, affinity: bool) -> Vec<i64> {
    let mut sums = vec![0i64; cs.len()];
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    // Other processes may take CPUs offline meanwhile: choose among the possible ones and
    // accept that a single-CPU set may be refused.
    let possible = rseq::topology::possible_cpus();
    let end = Instant::now() + run;
    let mut batch = 0u64;
    loop {
        match rounds {
            Some(r) if batch >= r => break,
            None if Instant::now() >= end => break,
            _ => {}
        }
        for _ in 0..256 {
            let x = rng.next();
            let i = (x as usize >> 3) % cs.len();
            let amount = if x & 3 == 0 { -((x >> 16) as i64 % 7) } else { (x >> 24) as i64 % 5 + 1 };
            cs[i].try_add(amount).expect("add to a live counter");
            sums[i] += amount;
        }
        batch += 1;
        if affinity && batch.is_multiple_of(4) {
            let x = rng.next() as usize;
            // One CPU (forcing a migration), or every CPU again.
            let set = if x.is_multiple_of(3) { possible.to_vec() } else { vec![possible[x % possible.len()]] };
            if rseq::topology::set_thread_affinity(&set).is_err() {
                // That CPU is offline (or outside our cpuset) right now.
                rseq::topology::set_thread_affinity(possible).expect("set affinity to every possible CPU");
            }
        }
    }
    sums
}

fn counters(tag: &str) -> Vec<Counter> {
    vec![
        Counter::new(&format!("exact_{tag}_cpu"), Index::CpuId).unwrap(),
        Counter::new(&format!("exact_{tag}_cid"), Index::MmCid).unwrap(),
        Counter::new(&format!("exact_{tag}_cpu2"), Index::CpuId).unwrap(),
    ]
}

fn check_and_delete(cs: Vec<Counter>, expect: &[i64], what: &str) {
    for (c, &e) in cs.iter().zip(expect) {
        assert_eq!(c.get(), Ok(e), "{what}: counter {} ({:?})", c.name().unwrap(), c.index());
    }
    for c in cs {
        c.delete().unwrap();
    }
}

/// Workers add under a signal storm aimed at them; the handler adds to counter 0 too.
/// Returns (signals sent, aborts, fallback adds).
fn storm_run(tag: &str, affinity: bool) -> (u64, u64, u64) {
    let cs = counters(tag);
    let totals = Arc::new(Mutex::new(vec![0i64; cs.len()]));
    handler_adds_to(cs[0]);
    let before = pcounters::rseq_stats();
    let signals = {
        let (cs, totals) = (cs.clone(), totals.clone());
        with_storm(WORKERS, STORM, move |i| {
            let sums = add_randomly(&cs, i as u64 + 1, RUN, None, affinity);
            let mut t = totals.lock().unwrap();
            t.iter_mut().zip(sums).for_each(|(t, s)| *t += s);
        })
    };
    let after = pcounters::rseq_stats();
    let mut expect = totals.lock().unwrap().clone();
    let in_handlers = handler_stop();
    println!(
        "{tag}: {signals} signals, {} aborts, {} fallback adds, {in_handlers} added in handlers, sums {expect:?}",
        after.aborts - before.aborts,
        after.fallback_ops - before.fallback_ops
    );
    expect[0] += in_handlers;
    check_and_delete(cs, &expect, tag);
    (signals, after.aborts - before.aborts, after.fallback_ops - before.fallback_ops)
}

/// Threads created and exiting continuously (`total` of them, `alive` at a time), each
/// adding `rounds` batches, while signals go to the whole process.
fn churn_run(tag: &str, total: usize, alive: usize, rounds: u64) -> u64 {
    let cs = counters(tag);
    handler_adds_to(cs[1]);
    let storm = Storm::start(Vec::new(), STORM);
    let mut expect = vec![0i64; cs.len()];
    let mut running = std::collections::VecDeque::new();
    for t in 0..total {
        if running.len() == alive {
            let h: std::thread::JoinHandle<Vec<i64>> = running.pop_front().unwrap();
            expect.iter_mut().zip(h.join().unwrap()).for_each(|(e, s)| *e += s);
        }
        let cs = cs.clone();
        let h = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || add_randomly(&cs, t as u64 + 7, Duration::ZERO, Some(rounds), t % 5 == 0))
            .expect("spawn");
        running.push_back(h);
    }
    for h in running {
        expect.iter_mut().zip(h.join().unwrap()).for_each(|(e, s)| *e += s);
    }
    let signals = storm.stop();
    // Let process-directed signals still pending be handled before the handler stops adding.
    std::thread::sleep(Duration::from_millis(20));
    let in_handlers = handler_stop();
    println!("{tag}: {total} threads, {signals} signals, {in_handlers} added in handlers, sums {expect:?}");
    expect[1] += in_handlers;
    check_and_delete(cs, &expect, tag);
    signals
}

/// Storm runs (each checked exactly) until one saw a restarted critical section: a signal
/// must land inside the few instructions of a section, which an unoptimised build makes
/// rare. Returns the totals of all runs.
fn storm_until_restarted(tag: &str, affinity: bool) -> (u64, u64, u64) {
    let mut total = (0, 0, 0);
    for round in 0..5 {
        let (s, a, f) = storm_run(&format!("{tag}{round}"), affinity);
        total = (total.0 + s, total.1 + a, total.2 + f);
        if total.1 > 0 {
            break;
        }
    }
    total
}

#[test]
fn exact_under_signal_storm_with_adds_in_handlers() {
    let _s = serial();
    let (signals, aborts, fallback) = storm_until_restarted("storm", false);
    assert!(signals > 100, "only {signals} signals sent");
    assert!(aborts > 0, "no critical section was restarted ({signals} signals)");
    assert_eq!(fallback, 0, "the rseq path fell back");
}

#[test]
fn exact_with_affinity_changes_under_storm() {
    let _s = serial();
    let (signals, aborts, fallback) = storm_until_restarted("affinity", true);
    assert!(signals > 100);
    assert!(aborts > 0, "no critical section was restarted ({signals} signals)");
    assert_eq!(fallback, 0);
}

#[test]
fn exact_with_thread_churn() {
    let _s = serial();
    let before = pcounters::rseq_stats();
    let signals = churn_run("churn", 3000, 8, 40);
    let after = pcounters::rseq_stats();
    assert!(signals > 10, "only {signals} signals sent");
    assert_eq!(after.fallback_ops, before.fallback_ops);
}

#[test]
fn exact_while_the_fallback_path_is_switched_on_and_off() {
    let _s = serial();
    let cs = counters("toggle");
    let totals = Arc::new(Mutex::new(vec![0i64; cs.len()]));
    let stop = Arc::new(AtomicBool::new(false));
    let toggler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut on = false;
            while !stop.load(Ordering::Relaxed) {
                on = !on;
                pcounters::force_fallback(on);
                std::thread::sleep(Duration::from_millis(1));
            }
            pcounters::force_fallback(false);
        })
    };
    handler_adds_to(cs[2]);
    let before = pcounters::rseq_stats();
    {
        let (cs, totals) = (cs.clone(), totals.clone());
        with_storm(WORKERS, STORM, move |i| {
            let sums = add_randomly(&cs, i as u64 + 100, RUN, None, false);
            let mut t = totals.lock().unwrap();
            t.iter_mut().zip(sums).for_each(|(t, s)| *t += s);
        });
    }
    stop.store(true, Ordering::Relaxed);
    toggler.join().unwrap();
    let after = pcounters::rseq_stats();
    let mut expect = totals.lock().unwrap().clone();
    expect[2] += handler_stop();
    check_and_delete(cs, &expect, "toggle");
    assert!(after.fallback_ops > before.fallback_ops, "the fallback path was never taken");
}

// ---- Registration modes, in child processes ------------------------------------------

const CHILD_ENV: &str = "PCOUNTERS_TEST_CHILD_MODE";

/// The workload of a child process (does nothing unless run as one): checks the rseq mode
/// of the main thread and of workers, then runs the storm, affinity and churn workloads.
#[test]
fn child_workload() {
    let Ok(expect) = std::env::var(CHILD_ENV) else {
        return;
    };
    let _s = serial();
    let wanted = expect.clone();
    let check_mode = move |m: Mode| match wanted.as_str() {
        "lazy" => assert!(m == Mode::Registered, "mode {m:?}"),
        "enosys" => assert_eq!(m, Mode::Unavailable { errno: libc::ENOSYS }),
        other => panic!("unknown child mode {other}"),
    };
    check_mode(pcounters::rseq_mode());
    std::thread::spawn(move || check_mode(pcounters::rseq_mode())).join().unwrap();
    let before = pcounters::rseq_stats();
    let (signals, aborts, fallback) = storm_until_restarted("child_storm", true);
    churn_run("child_churn", 500, 8, 20);
    let after = pcounters::rseq_stats();
    assert!(signals > 100);
    match expect.as_str() {
        "lazy" => {
            assert!(aborts > 0, "no critical section restarted");
            assert_eq!(fallback, 0);
            // glibc registers a thread itself when the thread creating it is registered
            // (nptl/pthread_create.c inherits the state), so few threads need us; none failed.
            assert!(after.registered_by_us >= 1, "{after:?}");
            assert_eq!(after.registration_failures, before.registration_failures, "{after:?}");
        }
        _ => {
            assert_eq!(aborts, 0);
            assert!(fallback > 0);
            assert!(after.registration_failures > before.registration_failures + 500, "{after:?}");
        }
    }
    println!("PCOUNTERS_CHILD_DONE mode={expect} {:?}", pcounters::rseq_mode());
}

fn run_child(mode: &str, configure: impl FnOnce(&mut Command)) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_workload", "--nocapture", "--test-threads=1"]).env(CHILD_ENV, mode);
    configure(&mut cmd);
    let out = cmd.output().expect("run the test binary as a child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child ({mode}) failed: {}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains(&format!("PCOUNTERS_CHILD_DONE mode={mode}")), "child did not run:\n{stdout}\n{stderr}");
}

#[test]
fn exact_when_glibc_leaves_registration_to_the_library() {
    let _s = serial();
    run_child("lazy", |cmd| {
        cmd.env("GLIBC_TUNABLES", "glibc.pthread.rseq=0");
    });
}

#[test]
fn exact_on_the_fallback_path_when_rseq_is_denied() {
    let _s = serial();
    run_child("enosys", |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: the hook only makes system calls (prctl), which is allowed after fork.
        unsafe {
            cmd.pre_exec(rseq::testing::deny_rseq_with_enosys);
        }
    });
}

// ---- CPU hotplug (opt-in: it disturbs the whole machine) ------------------------------

/// Sets a CPU's online state through sysfs, and back when dropped.
struct Offline {
    path: String,
}

impl Offline {
    fn take(cpu: u32) -> std::io::Result<Offline> {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/online");
        std::fs::write(&path, "0")?;
        Ok(Offline { path })
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, "1");
    }
}

#[test]
#[ignore = "takes a CPU offline for a moment; needs root: cargo test -p counters --test exact -- --ignored"]
fn counts_left_on_a_cpu_that_went_offline_are_still_read() {
    let _s = serial();
    let online = rseq::topology::online_cpus().unwrap();
    let Some(&cpu) = online.iter().find(|&&c| c != 0) else {
        println!("only CPU 0 is online: skipped");
        return;
    };
    let cs = [
        Counter::new("exact_hotplug_cpu", Index::CpuId).unwrap(),
        Counter::new("exact_hotplug_cid", Index::MmCid).unwrap(),
    ];
    let pinned_adds = move |n: i64| {
        std::thread::spawn(move || {
            rseq::topology::set_thread_affinity(&[cpu]).unwrap();
            assert_eq!(rseq::topology::current_cpu(), Some(cpu));
            for c in cs {
                c.add(n);
            }
        })
        .join()
        .unwrap();
    };
    pinned_adds(1000);
    let offline = match Offline::take(cpu) {
        Ok(o) => o,
        Err(e) => {
            println!("cannot take CPU {cpu} offline ({e}): skipped");
            return;
        }
    };
    assert!(!rseq::topology::online_cpus().unwrap().contains(&cpu));
    for c in cs {
        assert_eq!(c.get(), Ok(1000), "counts left on offline CPU {cpu}");
        c.add(5);
        assert_eq!(c.get(), Ok(1005));
    }
    drop(offline);
    // Online again: counting there just works.
    let mut tries = 0;
    while !rseq::topology::online_cpus().unwrap().contains(&cpu) && tries < 100 {
        std::thread::sleep(Duration::from_millis(10));
        tries += 1;
    }
    pinned_adds(1);
    for c in cs {
        assert_eq!(c.get(), Ok(1006));
        c.delete().unwrap();
    }
}

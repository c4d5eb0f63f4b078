//! The odd places, each in a child process of its own (fresh allocator state, its own
//! environment): exact accounting in every registration mode under a signal storm,
//! draining a cache the process no longer runs on, fork while other threads hold the
//! allocator's locks, thread churn, running out of address space, checking mode, and
//! pointers that are not palloc's.

use std::ffi::c_void;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palloc::ffi::*;
use workspace_tests::{child_setup, run_child, Setup};

fn stats() -> palloc::Stats {
    let mut s = palloc::Stats::default();
    // SAFETY: a writable struct of that size.
    assert_eq!(unsafe { palloc_stats(&mut s, std::mem::size_of::<palloc::Stats>()) }, 0);
    s
}

/// Runs ignored test `name` of this binary as a child with extra environment; returns
/// (success, output).
fn run_role(name: &str, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--ignored", "--nocapture", "--test-threads=1"]);
    cmd.env("PALLOC_TEST_ROLE", name);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status, format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn in_role(name: &str) -> bool {
    std::env::var("PALLOC_TEST_ROLE").as_deref() == Ok(name)
}

extern "C" fn touch_on_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}
static SIGNALS: AtomicU64 = AtomicU64::new(0);

/// Workers allocate, write, hand over and free blocks of every class while a thread sends
/// them SIGUSR1 continuously; at each quiescent point the allocator's own count of live
/// blocks equals what the test holds, exactly.
fn exact_accounting_under_signals() {
    // SAFETY: installing a handler that only increments an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = touch_on_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let base = stats().live_objects;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for t in 0..6u64 {
        workers.push(std::thread::spawn(move || {
            let mut held: Vec<(usize, usize)> = Vec::new();
            let mut x = 0x2545_f491_4f6c_dd1du64 ^ t;
            for i in 0..60_000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if held.len() < 500 && (x & 3 != 0 || held.is_empty()) {
                    let n = 1 + (x >> 20) as usize % [64, 512, 4096, 40_000][(i % 4) as usize];
                    let p = palloc_malloc(n);
                    assert!(!p.is_null());
                    // SAFETY: `n` bytes of our block.
                    unsafe { *p.cast::<u64>() = p as u64 ^ 0x5a5a };
                    held.push((p as usize, n));
                } else {
                    let k = (x >> 32) as usize % held.len();
                    let (p, _) = held.swap_remove(k);
                    // SAFETY: the block is live.
                    assert_eq!(unsafe { *(p as *const u64) }, p as u64 ^ 0x5a5a, "block {p:#x} corrupted");
                    palloc_free(p as *mut c_void);
                }
            }
            held
        }));
    }
    let me = std::thread::spawn({
        let stop = stop.clone();
        let pids: Vec<libc::pthread_t> = workers
            .iter()
            .map(|w| {
                use std::os::unix::thread::JoinHandleExt;
                w.as_pthread_t()
            })
            .collect();
        move || {
            while !stop.load(Ordering::Relaxed) {
                for &p in &pids {
                    // SAFETY: the workers are alive until joined after `stop`.
                    unsafe { libc::pthread_kill(p, libc::SIGUSR1) };
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    });
    let mut held = Vec::new();
    for w in workers {
        held.extend(w.join().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    me.join().unwrap();
    let small = held.iter().filter(|&&(_, n)| n <= 256 * 1024).count() as u64;
    assert_eq!(stats().live_objects - base, small, "live objects by palloc's count vs held");
    for (p, _) in held {
        palloc_free(p as *mut c_void);
    }
    assert_eq!(stats().live_objects, base, "all freed");
    println!("exact: {} signals, mode {}", SIGNALS.load(Ordering::Relaxed), palloc_thread_mode());
}

#[test]
fn exact_accounting_libc_owned() {
    run_child("child_exact", Setup::LibcOwned);
}

#[test]
fn exact_accounting_reserved() {
    run_child("child_exact", Setup::Reserved);
}

#[test]
fn exact_accounting_without_rseq() {
    let out = run_child("child_exact", Setup::NoRseq);
    assert!(out.contains("mode 4"), "{out}");
}

#[test]
#[ignore = "child role"]
fn child_exact() {
    child_setup().expect("a child of the exact_accounting tests");
    exact_accounting_under_signals();
}

/// Objects cached on CPU 1 are drained to the central layer once no thread runs there,
/// within a bounded time of allocator activity elsewhere.
#[test]
fn cache_of_a_cpu_no_longer_used_is_drained() {
    let (st, out) = run_role("child_drain", &[]);
    assert!(st.success(), "{out}");
}

#[test]
#[ignore = "child role"]
fn child_drain() {
    if !in_role("child_drain") {
        return;
    }
    let allowed = rseq::topology::allowed_cpus().unwrap();
    if allowed.len() < 2 {
        println!("SKIP: needs two allowed CPUs");
        return;
    }
    let (a, b) = (allowed[0], allowed[1]);
    assert_eq!(palloc_set_index(0), 0, "cpu_id index before the first allocation");
    rseq::topology::set_thread_affinity(&[b]).unwrap();
    let ps: Vec<_> = (0..100).map(|_| palloc_malloc(48)).collect();
    for p in ps {
        palloc_free(p);
    }
    let mut c = palloc::CpuStats::default();
    // SAFETY: a writable struct.
    assert_eq!(unsafe { palloc_cpu_stats(b, &mut c) }, 0);
    assert!(c.cached_bytes > 0, "CPU {b} caches the freed blocks");
    rseq::topology::set_thread_affinity(&[a]).unwrap();
    let t0 = Instant::now();
    loop {
        // Slow paths on CPU a: a class with a tiny cache.
        let ps: Vec<_> = (0..8).map(|_| palloc_malloc(30_000)).collect();
        for p in ps {
            palloc_free(p);
        }
        // SAFETY: as above.
        assert_eq!(unsafe { palloc_cpu_stats(b, &mut c) }, 0);
        if c.cached_bytes == 0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "CPU {b} still caches {} bytes", c.cached_bytes);
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = stats();
    assert!(s.drains >= 1 && s.drained_objects >= 1, "{s:?}");
    println!("drained CPU {b} after {:?}", t0.elapsed());
}

/// A child forked while other threads allocate and free (holding class locks, fallback
/// locks, mapping chunks) can allocate and free; 30 forks.
#[test]
fn fork_while_other_threads_allocate() {
    let (st, out) = run_role("child_fork", &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")]);
    assert!(st.success(), "{out}");
    let (st, out) = run_role("child_fork", &[]);
    assert!(st.success(), "{out}");
}

#[test]
#[ignore = "child role"]
fn child_fork() {
    if !in_role("child_fork") {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let n = [16, 300, 5000, 100_000, 400_000][(i + t) % 5];
                    let ps: Vec<_> = (0..64).map(|_| palloc_malloc(n)).collect();
                    for p in ps {
                        palloc_free(p);
                    }
                    if i.is_multiple_of(97) {
                        palloc_trim();
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(3));
        // SAFETY: the child only calls palloc, which holds its locks across fork, and _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: alarm has no preconditions: a hang ends the child.
            unsafe { libc::alarm(10) };
            let mut ok = true;
            for round in 0..200 {
                let ps: Vec<_> = (0..50).map(|k| palloc_malloc(16 + 97 * k + round)).collect();
                ok &= ps.iter().all(|p| !p.is_null());
                for p in ps {
                    palloc_free(p);
                }
            }
            palloc_trim();
            // SAFETY: leaving the child without running the parent's handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
}

/// 30,000 short-lived threads that each allocate and free: nothing stays behind.
#[test]
fn thread_churn_leaves_nothing_behind() {
    let (st, out) = run_role("child_churn", &[]);
    assert!(st.success(), "{out}");
}

#[test]
#[ignore = "child role"]
fn child_churn() {
    if !in_role("child_churn") {
        return;
    }
    let base = stats();
    for wave in 0..(30_000 / 8) {
        let ts: Vec<_> = (0..8)
            .map(|t| {
                std::thread::spawn(move || {
                    let ps: Vec<_> = (0..16).map(|k| palloc_malloc(8 + 64 * k + t + wave % 7)).collect();
                    for p in ps {
                        palloc_free(p);
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
    }
    let s = stats();
    assert_eq!(s.live_objects, base.live_objects, "{s:?}");
    assert!(s.resident_bytes < base.resident_bytes + 16 * 1024 * 1024, "RSS grew: {base:?} -> {s:?}");
    println!("churn: resident {} KiB -> {} KiB", base.resident_bytes / 1024, s.resident_bytes / 1024);
}

fn minor_faults() -> i64 {
    // SAFETY: getrusage with a valid out-struct.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut ru), 0);
        ru.ru_minflt
    }
}

/// Allocates `n` blocks of `size` bytes and writes every page of them.
fn allocate_touched(n: usize, size: usize) -> Vec<usize> {
    (0..n)
        .map(|_| {
            let p = palloc_malloc(size);
            assert!(!p.is_null());
            for off in (0..size).step_by(512) {
                // SAFETY: inside the block just allocated.
                unsafe { p.cast::<u8>().add(off).write(1) };
            }
            p as usize
        })
        .collect()
}

/// Empty spans stay backed for a while and are then given back: a batch freed and
/// allocated again at once does not fault its pages in again, and a second later the
/// spans past the reserve are released (the next allocator call runs the decay pass).
#[test]
fn empty_spans_are_reused_then_released() {
    let (st, out) = run_role("child_decay", &[]);
    assert!(st.success(), "{out}");
}

#[test]
#[ignore = "child role"]
fn child_decay() {
    if !in_role("child_decay") {
        return;
    }
    const N: usize = 4096;
    const SIZE: usize = 1000;
    for p in allocate_touched(N, SIZE) {
        palloc_free(p as *mut c_void);
    }
    let freed = stats();
    let before = minor_faults();
    let again = allocate_touched(N, SIZE);
    let refaults = minor_faults() - before;
    for p in again {
        palloc_free(p as *mut c_void);
    }
    // 4 MiB is ~1000 pages; the few faults left are the test's own (stats, vector).
    assert!(refaults < 200, "allocating a freed batch again faulted {refaults} pages in ({freed:?})");
    let kept = stats();
    std::thread::sleep(Duration::from_millis(1300));
    // The first allocation of another class goes to the central layer, which runs the pass.
    let q = palloc_malloc(24);
    palloc_free(q);
    let later = stats();
    assert!(
        later.resident_bytes + 5 * 1024 * 1024 / 2 <= kept.resident_bytes,
        "empty spans were not given back a second later: {kept:?} -> {later:?}"
    );
    assert!(later.span_releases > kept.span_releases, "{kept:?} -> {later:?}");
    println!(
        "decay: {refaults} faults on reallocation; resident {} KiB -> {} KiB",
        kept.resident_bytes / 1024,
        later.resident_bytes / 1024
    );
}

/// Under RLIMIT_AS, allocations fail with NULL and ENOMEM; nothing aborts, and freeing
/// lets allocation succeed again.
#[test]
fn out_of_address_space_is_enomem() {
    let (st, out) = run_role("child_oom", &[]);
    assert!(st.success(), "{out}");
}

#[test]
#[ignore = "child role"]
fn child_oom() {
    if !in_role("child_oom") {
        return;
    }
    // Warm up the per-CPU layer and the test harness's own threads first.
    palloc_free(palloc_malloc(100));
    let vm = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 =
        vm.lines().find(|l| l.starts_with("VmSize:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let lim = libc::rlimit { rlim_cur: (kb + 96 * 1024) * 1024, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a valid limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0);
    for size in [1usize << 20, 100_000, 1000, 16] {
        let mut held = Vec::new();
        loop {
            // SAFETY: errno location.
            unsafe { *libc::__errno_location() = 0 };
            let p = palloc_malloc(size);
            if p.is_null() {
                // SAFETY: as above.
                assert_eq!(unsafe { *libc::__errno_location() }, libc::ENOMEM, "size {size}");
                break;
            }
            held.push(p);
            assert!(held.len() < 100_000_000);
        }
        assert!(!held.is_empty(), "size {size}: nothing fit");
        for p in held {
            palloc_free(p);
        }
        palloc_trim();
        let p = palloc_malloc(size);
        assert!(!p.is_null(), "size {size}: allocation works again after freeing");
        palloc_free(p);
    }
}

fn expect_abort(role: &str, env: &[(&str, &str)], message: &str) {
    let (st, out) = run_role(role, env);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGABRT), "{role}: expected an abort, got {st}:\n{out}");
    assert!(out.contains(message), "{role}: message {message:?} missing:\n{out}");
}

#[test]
fn checking_mode_reports_double_and_invalid_frees() {
    expect_abort("child_double_free", &[("PALLOC_CHECK", "1")], "block is not allocated (double free)");
    expect_abort("child_interior_free", &[("PALLOC_CHECK", "1")], "not the start of a block");
}

#[test]
fn a_foreign_pointer_is_refused_by_name() {
    expect_abort("child_foreign_free", &[], "palloc_free(0x");
    expect_abort("child_foreign_free", &[], "pointer not allocated by palloc");
}

#[test]
#[ignore = "child role"]
fn child_double_free() {
    if !in_role("child_double_free") {
        return;
    }
    let p = palloc_malloc(40);
    palloc_free(p);
    palloc_free(p);
}

#[test]
#[ignore = "child role"]
fn child_interior_free() {
    if !in_role("child_interior_free") {
        return;
    }
    let p = palloc_malloc(64);
    // SAFETY: inside the block.
    palloc_free(unsafe { p.cast::<u8>().add(16) }.cast());
}

#[test]
#[ignore = "child role"]
fn child_foreign_free() {
    if !in_role("child_foreign_free") {
        return;
    }
    // SAFETY: glibc's malloc.
    let p = unsafe { libc::malloc(64) };
    palloc_free(p);
}

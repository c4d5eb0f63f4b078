//! First use of the foundation's process-wide state, in fresh processes: a fork while
//! another thread is initialising must leave the child a state it can use (no once-cell
//! stuck "running"), and `force_fallback` racing with the first use must win.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const ROLE: &str = "RSEQ_LAZY_STATE_ROLE";

/// Runs this test binary again as a fresh process in `role`, returning its output.
fn run_role(test: &str, role: &str) -> (bool, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1", "--ignored"])
        .env(ROLE, role)
        .output()
        .expect("run the test binary as a child");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Everything a first use initialises, in the order a library would reach it.
fn first_use() -> usize {
    let n = rseq::topology::possible_cpus().len() + rseq::topology::nr_possible_cpus();
    let _ = rseq::membarrier::supported_commands();
    let _ = rseq::feature_size();
    let _ = rseq::mode();
    n
}

/// Waits for `pid` at most `limit`; kills it and returns `None` when it does not exit.
fn wait_with_limit(pid: libc::pid_t, limit: Duration) -> Option<i32> {
    let end = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: our own child; WNOHANG does not block.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(status);
        }
        if Instant::now() > end {
            // SAFETY: our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn fork_during_first_use_leaves_a_usable_child() {
    // The code before the second pass hung in the first process; 16 keep the test short in
    // emulated guests (ci/vm runs it single-stepped).
    const PROCESSES: usize = 16;
    let mut forks = 0;
    for p in 0..PROCESSES {
        let (ok, out) = run_role("role_fork_during_first_use", "fork");
        assert!(ok, "process {p}: a forked child could not use the foundation:\n{out}");
        forks += out
            .lines()
            .find_map(|l| l.split_once("forks: ").map(|(_, n)| n))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0);
    }
    eprintln!("{forks} forks during first use in {PROCESSES} fresh processes, every child done in time");
    assert!(forks >= PROCESSES, "too few forks overlapped the first use ({forks})");
}

/// One fresh process: a thread makes the first use while the main thread forks as fast as
/// it can; every child makes its own first use and must finish within a few seconds.
#[test]
#[ignore = "role of fork_during_first_use_leaves_a_usable_child"]
fn role_fork_during_first_use() {
    if std::env::var(ROLE).as_deref() != Ok("fork") {
        return;
    }
    let go = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let user = {
        let (go, done) = (go.clone(), done.clone());
        std::thread::spawn(move || {
            // Start only once the main thread is about to fork, so the first fork copies the
            // process while this thread is inside the first use.
            while !go.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            let n = first_use();
            done.store(true, Ordering::SeqCst);
            n
        })
    };
    std::thread::sleep(Duration::from_millis(5));
    go.store(true, Ordering::SeqCst);
    let mut children = Vec::new();
    while children.is_empty() || (!done.load(Ordering::SeqCst) && children.len() < 64) {
        // SAFETY: the child only makes the first use (allocation is fine: glibc resets its
        // malloc locks in the child) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = first_use() > 0;
            // SAFETY: leaving the child without the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        children.push(pid);
    }
    assert!(user.join().unwrap() > 0);
    let (mut hung, mut failed) = (0, 0);
    for pid in &children {
        // Every child is waited for (and killed when it hangs): none may outlive this
        // process holding the test's output pipe.
        match wait_with_limit(*pid, Duration::from_secs(5)) {
            Some(status) if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 => {}
            Some(_) => failed += 1,
            None => hung += 1,
        }
    }
    println!("forks: {}", children.len());
    assert_eq!(hung, 0, "{hung} children forked during first use hung (a once-cell left running by the fork)");
    assert_eq!(failed, 0, "{failed} children forked during first use failed");
}

#[test]
fn force_fallback_racing_the_first_use_wins() {
    for p in 0..12 {
        let (ok, out) = run_role("role_force_during_first_use", "force");
        assert!(ok, "process {p}:\n{out}");
    }
}

/// One fresh process: `force_fallback(true)` on one thread while another makes the first
/// operation (which runs the lazy initialisation); afterwards every operation must take the
/// fallback path.
#[test]
#[ignore = "role of force_fallback_racing_the_first_use_wins"]
fn role_force_during_first_use() {
    if std::env::var(ROLE).as_deref() != Ok("force") {
        return;
    }
    let pool = Box::leak(Box::new(rseq::pool::PercpuPool::new(4096).expect("pool")));
    // SAFETY: zeroed pool slots are valid u64 / AtomicU64 copies; `new` read the CPU count
    // only, leaving the area lookup to the first operation.
    let (w, f): (rseq::PercpuArray<u64>, rseq::PercpuArray<std::sync::atomic::AtomicU64>) = unsafe {
        let raw =
            |p: rseq::PercpuPtr<u8>| rseq::PercpuArray::from_raw_resolved(p, pool.ncpus() as u32, rseq::Index::CpuId);
        (raw(pool.alloc(8, 8).unwrap()).cast(), raw(pool.alloc(8, 8).unwrap()).cast())
    };
    let go = Arc::new(Barrier::new(2));
    let user = {
        let go = go.clone();
        std::thread::spawn(move || {
            go.wait();
            // SAFETY: live pool arrays; the words are written only by sections.
            unsafe { rseq::percpu_add(&w, &f, 1) }
        })
    };
    go.wait();
    rseq::force_fallback(true);
    user.join().unwrap();
    let after = std::thread::spawn(move || {
        // SAFETY: as above.
        (unsafe { rseq::percpu_add(&w, &f, 1) }, rseq::mode())
    })
    .join()
    .unwrap();
    assert_eq!(after, (rseq::Path::Fallback, rseq::Mode::Disabled), "a forced run kept the fast path");
    // SAFETY: as above.
    assert_eq!(unsafe { rseq::percpu_sum(&w, &f) }, 2);
}

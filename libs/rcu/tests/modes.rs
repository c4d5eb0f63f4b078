//! The torture pipeline in a child process per registration mode and index: libc-owned,
//! libc-reserved (`GLIBC_TUNABLES=glibc.pthread.rseq=0`, the library registers), rseq denied
//! by a seccomp filter (`ENOSYS`: every reader falls back), forced fallback (no membarrier
//! assumed: atomics and full fences), `mm_cid` indexing; and misuse that must abort with a
//! clear message in checking mode; and a forked child that reads, synchronizes and queues
//! callbacks.

#[path = "common/torture.rs"]
mod torture;

use std::process::Command;

const CHILD: &str = "PRCU_TEST_CHILD";

fn child(test: &str, envs: &[(&str, &str)], deny_rseq: bool) -> (bool, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--ignored", "--nocapture", "--test-threads=1"]);
    cmd.env(CHILD, "1").env_remove("GLIBC_TUNABLES").env("PRCU_TORTURE_SECS", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    if deny_rseq {
        use std::os::unix::process::CommandExt;
        // SAFETY: the hook only makes system calls.
        unsafe { cmd.pre_exec(rseq::testing::deny_rseq_with_enosys) };
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn passes(envs: &[(&str, &str)], deny: bool, expect: &str) {
    let (ok, text) = child("child_torture", envs, deny);
    assert!(ok && text.contains("1 passed"), "child under {envs:?} deny={deny} failed:\n{text}");
    assert!(text.contains(expect), "expected {expect:?} under {envs:?}:\n{text}");
}

#[test]
#[ignore = "run by the mode tests in a child process"]
fn child_torture() {
    assert!(std::env::var_os(CHILD).is_some());
    torture::run_torture(1.0);
    eprintln!("index {} mode {}", prcu::current_index().name(), rseq::mode().name());
}

#[test]
fn torture_libc_owned() {
    passes(&[], false, "fast path true");
}

#[test]
fn torture_reserved_area_registered_by_the_library() {
    passes(&[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")], false, "fast path true");
}

#[test]
fn torture_rseq_denied_falls_back() {
    // The area exists but cannot be registered: writers still fence, every reader falls back.
    passes(&[], true, "mode unavailable");
}

#[test]
fn torture_forced_fallback() {
    passes(&[("PRCU_FORCE_FALLBACK", "1")], false, "fast path false");
}

#[test]
fn torture_mm_cid() {
    let expect = if rseq::feature_size() >= 28 { "index mm_cid" } else { "index cpu_id" };
    passes(&[("PRCU_INDEX", "mm_cid")], false, expect);
}

#[test]
#[ignore = "run by synchronize_in_a_reader_aborts_in_checking_mode"]
fn child_synchronize_in_reader() {
    let _t = prcu::read_lock();
    prcu::synchronize();
}

#[test]
fn synchronize_in_a_reader_aborts_in_checking_mode() {
    let (ok, text) = child("child_synchronize_in_reader", &[("PRCU_CHECK", "1")], false);
    assert!(!ok, "{text}");
    assert!(text.contains("prcu_synchronize called inside a read-side critical section"), "{text}");
}

#[test]
#[ignore = "run by double_unlock_is_refused_in_checking_mode"]
fn child_double_unlock() {
    let t = prcu::read_lock();
    assert_eq!(prcu::read_unlock(t), Ok(()));
    assert_eq!(prcu::read_unlock(t), Err(prcu::TokenError::AlreadyUnlocked));
    prcu::synchronize();
    eprintln!("double unlock refused");
}

#[test]
fn double_unlock_is_refused_in_checking_mode() {
    let (ok, text) = child("child_double_unlock", &[("PRCU_CHECK", "1")], false);
    assert!(ok && text.contains("double unlock refused"), "{text}");
}

#[test]
#[ignore = "run by checking_mode_switched_at_run_time_takes_effect_at_once"]
fn child_checking_toggle() {
    // Unchecked tokens (bit 1 clear) from the rseq read path.
    for _ in 0..1000 {
        let t = prcu::read_lock();
        assert_eq!(t.into_raw() & 2, 0);
        assert_eq!(prcu::read_unlock(t), Ok(()));
    }
    // Checking on: the rseq read path is withdrawn, every token is recorded.
    prcu::set_checking(true);
    let held: Vec<_> = (0..100).map(|_| prcu::read_lock()).collect();
    for t in &held {
        assert_eq!(t.into_raw() & 2, 2, "a token taken after set_checking(true) is unchecked");
    }
    for t in &held {
        assert_eq!(prcu::read_unlock(*t), Ok(()));
        assert_eq!(prcu::read_unlock(*t), Err(prcu::TokenError::AlreadyUnlocked));
    }
    // Checking off again: unchecked tokens, and the counts still balance (synchronize ends).
    prcu::set_checking(false);
    for _ in 0..1000 {
        let t = prcu::read_lock();
        assert_eq!(t.into_raw() & 2, 0);
        assert_eq!(prcu::read_unlock(t), Ok(()));
    }
    // A forged value next to a genuine one is refused on the rseq path too.
    let t = prcu::read_lock();
    assert_eq!(prcu::read_unlock(prcu::Token::from_raw(t.into_raw() ^ 1 << 40)), Err(prcu::TokenError::Forged));
    assert_eq!(prcu::read_unlock(prcu::Token::from_raw(t.into_raw() ^ 1)), Err(prcu::TokenError::Forged));
    assert_eq!(prcu::read_unlock(t), Ok(()));
    prcu::synchronize();
    eprintln!("checking toggled: fast path {}", prcu::fast_path());
}

#[test]
fn checking_mode_switched_at_run_time_takes_effect_at_once() {
    let (ok, text) = child("child_checking_toggle", &[], false);
    assert!(ok && text.contains("checking toggled: fast path true"), "{text}");
}

static FORK_RAN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
unsafe extern "C" fn mark(_: *mut libc::c_void) {
    FORK_RAN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

#[test]
#[ignore = "run by forked_child_reads_synchronizes_and_calls_back"]
fn child_fork() {
    use std::sync::atomic::Ordering;
    // Readers in other threads hold tokens across the fork; the worker is running.
    // SAFETY: mark only touches an atomic.
    unsafe { prcu::call_rcu(mark, std::ptr::null_mut()) };
    prcu::barrier();
    let hold = std::thread::spawn(|| {
        let t = prcu::read_lock();
        std::thread::sleep(std::time::Duration::from_millis(300));
        prcu::read_unlock(t).unwrap();
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    for generation in 0..3 {
        // SAFETY: the child only uses the library and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let t = prcu::read_lock();
            prcu::read_unlock(t).unwrap();
            prcu::synchronize();
            // SAFETY: as above.
            unsafe { prcu::call_rcu(mark, std::ptr::null_mut()) };
            prcu::barrier();
            let ok = FORK_RAN.load(Ordering::SeqCst) == 2 + generation;
            // SAFETY: leaving the child without running the parent's exit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        let mut status = 0;
        // SAFETY: our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "generation {generation}: status {status:#x}"
        );
        // SAFETY: as above.
        unsafe { prcu::call_rcu(mark, std::ptr::null_mut()) };
        prcu::barrier();
    }
    hold.join().unwrap();
    eprintln!("fork generations passed");
}

#[test]
fn forked_child_reads_synchronizes_and_calls_back() {
    let (ok, text) = child("child_fork", &[], false);
    assert!(ok && text.contains("fork generations passed"), "{text}");
}

static QUEUED_BY_TEST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[test]
#[ignore = "run by forks_while_the_worker_takes_a_batch_lose_nothing"]
fn child_fork_during_take() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // The worker pauses 2 ms between taking the queue and holding it as its batch, while a
    // thread keeps queueing: forks land in that moment. Each child must still run every
    // callback the parent had queued and not run (barrier returns, run == queued).
    prcu::set_take_pause_for_tests(2000);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let producer = std::thread::spawn(move || {
        while !s2.load(Ordering::Relaxed) {
            // SAFETY: mark only touches an atomic.
            unsafe { prcu::call_rcu(mark, std::ptr::null_mut()) };
            QUEUED_BY_TEST.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    });
    let mut failures = Vec::new();
    for round in 0..40u64 {
        std::thread::sleep(std::time::Duration::from_micros(700 + (round * 337) % 2500));
        // SAFETY: the child only uses the library and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // A lost callback makes barrier wait forever: SIGALRM ends the child then.
            // SAFETY: plain system calls in the child.
            unsafe { libc::alarm(4) };
            prcu::set_take_pause_for_tests(0);
            prcu::barrier();
            let s = prcu::stats();
            // SAFETY: as above.
            unsafe { libc::_exit(if s.callbacks_run == s.callbacks_queued { 0 } else { 3 }) };
        }
        let mut status = 0;
        // SAFETY: our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            failures.push(format!(
                "round {round}: child status {status:#x}{}",
                if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGALRM {
                    " (barrier never returned: callbacks lost across the fork)"
                } else {
                    ""
                }
            ));
        }
    }
    stop.store(true, Ordering::SeqCst);
    producer.join().unwrap();
    prcu::set_take_pause_for_tests(0);
    prcu::barrier();
    assert!(failures.is_empty(), "{failures:?}");
    eprintln!("fork during take passed ({} callbacks queued)", QUEUED_BY_TEST.load(Ordering::SeqCst));
}

#[test]
fn forks_while_the_worker_takes_a_batch_lose_nothing() {
    let (ok, text) = child("child_fork_during_take", &[], false);
    assert!(ok && text.contains("fork during take passed"), "{text}");
}

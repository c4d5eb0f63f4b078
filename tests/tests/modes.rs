//! The three registration setups, each in a child process, with two independent copies of
//! the foundation (two `RTLD_LOCAL` loads of `librseq_copy.so`) used by the same threads.
//! The mode query must say the right thing and every sum must be exact, also in a child
//! forked from the process.

use std::sync::Arc;

use rseq_copy::{MODE_LIBC_OWNED, MODE_REGISTERED, MODE_UNAVAILABLE};
use workspace_tests::{child_setup, run_child, RseqCopy, Setup};

const THREADS: u64 = 6;
const ADDS: u64 = 200_000;

#[test]
fn libc_owned_setup() {
    let out = run_child("child_two_copies", Setup::LibcOwned);
    assert!(out.contains("modes: libc-owned"), "{out}");
}

#[test]
fn reserved_setup_both_copies_reach_the_fast_path() {
    let out = run_child("child_two_copies", Setup::Reserved);
    assert!(out.contains("modes: registered, one registration per thread"), "{out}");
}

#[test]
fn no_rseq_setup_falls_back() {
    let out = run_child("child_two_copies", Setup::NoRseq);
    assert!(out.contains("modes: unavailable (ENOSYS)"), "{out}");
}

/// Runs only as a child of the tests above (`--ignored` in `run_child`).
#[test]
#[ignore = "child role of the setup tests"]
fn child_two_copies() {
    let setup = child_setup().expect("runs as a child of the setup tests");
    let a = Arc::new(RseqCopy::load("copy-a.so"));
    let b = Arc::new(RseqCopy::load("copy-b.so"));
    assert_eq!(a.feature_size(), b.feature_size(), "copies disagree on the feature size");
    let mut handles = Vec::new();
    for t in 0..THREADS {
        let (a, b) = (a.clone(), b.clone());
        handles.push(std::thread::spawn(move || {
            // Alternate which copy touches the thread first: either may be the registrant.
            let (first, second) = if t % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let m1 = first.mode();
            let m2 = second.mode();
            match setup {
                Setup::LibcOwned => assert_eq!((m1, m2), ((MODE_LIBC_OWNED, 0), (MODE_LIBC_OWNED, 0))),
                Setup::Reserved => assert_eq!((m1, m2), ((MODE_REGISTERED, 0), (MODE_REGISTERED, 0))),
                Setup::NoRseq => {
                    let e = (MODE_UNAVAILABLE, libc::ENOSYS);
                    assert_eq!((m1, m2), (e, e))
                }
            }
            let mut fast = 0u64;
            for k in 0..ADDS {
                let mm_cid = k % 2 == 1;
                fast += a.add(1, mm_cid) as u64;
                fast += b.add(2, mm_cid) as u64;
            }
            assert!(a.rseq_cs_is_clear() && b.rseq_cs_is_clear(), "rseq_cs left set");
            fast
        }));
    }
    let fast: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(a.sum(), THREADS * ADDS, "copy a lost updates");
    assert_eq!(b.sum(), 2 * THREADS * ADDS, "copy b lost updates");
    if setup == Setup::Reserved {
        // Exactly one of the two copies registered each thread: the other found it registered
        // by looking at the area, without asking the kernel.
        assert_eq!(a.registered_by_us() + b.registered_by_us(), THREADS, "registrations");
    }
    match setup {
        Setup::NoRseq => {
            assert_eq!(fast, 0, "an operation claims the rseq path without rseq");
            assert!(a.fallback_ops() >= THREADS * ADDS && b.fallback_ops() >= THREADS * ADDS);
        }
        _ => assert_eq!(fast, 2 * THREADS * ADDS, "operations fell back"),
    }

    // The foundation linked into this test binary is a third copy with the same view.
    match (setup, rseq::mode()) {
        (Setup::LibcOwned, rseq::Mode::LibcOwned) | (Setup::Reserved, rseq::Mode::Registered) => {}
        (Setup::NoRseq, rseq::Mode::Unavailable { errno }) if errno == libc::ENOSYS => {}
        (s, m) => panic!("setup {s:?} but this copy reports {m:?}"),
    }

    fork_child_counts_on(&a, &b);

    println!(
        "modes: {}",
        match setup {
            Setup::LibcOwned => "libc-owned",
            Setup::Reserved => "registered, one registration per thread",
            Setup::NoRseq => "unavailable (ENOSYS)",
        }
    );
}

/// After `fork`, the child sees the parent's sums and counts on exactly, on the path its
/// setup allows (the registration is inherited by the child).
fn fork_child_counts_on(a: &RseqCopy, b: &RseqCopy) {
    let (sa, sb) = (a.sum(), b.sum());
    // SAFETY: the child only calls the copies' functions (no allocation, no locks) and
    // leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        for _ in 0..10_000 {
            a.add(3, false);
            b.add(5, true);
        }
        let ok = a.sum() == sa + 30_000 && b.sum() == sb + 50_000;
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "forked child counted wrong ({status:#x})");
    assert_eq!((a.sum(), b.sum()), (sa, sb), "the child's adds leaked into the parent");
}

#[test]
fn reserved_setup_survives_an_unregistered_area() {
    let out = run_child("child_unregisters", Setup::Reserved);
    assert!(out.contains("unregistered and re-registered: exact"), "{out}");
}

/// A thread whose area is unregistered behind the libraries' backs (as a tracer, a
/// checkpoint/restore tool or a foreign runtime may do) keeps adding: the kernel sets its
/// `cpu_id` to -1, every section sees an index out of range, and the next operation
/// registers the area again. Before the in-section bound check, the `cpu_id` add wrote
/// 4 GiB * stride past the array (SIGSEGV) and the `mm_cid` add hit copy 0 unprotected.
#[test]
#[ignore = "child role of reserved_setup_survives_an_unregistered_area"]
fn child_unregisters() {
    let setup = child_setup().expect("runs as a child");
    assert_eq!(setup, Setup::Reserved);
    let a = Arc::new(RseqCopy::load("copy-u.so"));
    let mut handles = Vec::new();
    for _ in 0..4 {
        let a = a.clone();
        handles.push(std::thread::spawn(move || {
            let mut fast = 0u64;
            for round in 0..200u64 {
                assert_eq!(a.mode(), (MODE_REGISTERED, 0));
                assert_eq!(a.unregister(), 0, "unregistering the area");
                for k in 0..1_000u64 {
                    fast += a.add(1, (round + k) % 2 == 1) as u64;
                }
            }
            fast
        }));
    }
    let fast: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(a.sum(), 4 * 200 * 1_000, "lost or stray adds");
    // Every round re-registered the area (in the first add after the unregistration).
    assert!(a.registered_by_us() >= 4 * 200, "registrations: {}", a.registered_by_us());
    assert_eq!(fast, 4 * 200 * 1_000, "adds fell back although the area could be registered again");
    println!("unregistered and re-registered: exact");
}

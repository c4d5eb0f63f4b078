//! Locks with the time-slice extension option. On a kernel without it (feature size below
//! 32) nothing changes: no request is written, the counters stay 0, every lock is exact.
//! There the request protocol is also simulated (`rseq::slice::simulate_for_tests`: bytes 28
//! and 29 of the area, which such a kernel ignores) to check that nested holds keep the
//! outer request, that a lock released on another CPU ends its holder's request, and that
//! per-CPU counter sections run by the holders stay exact while requests come and go.
//!
//! One test function: simulation is a process-wide switch.

use std::sync::atomic::AtomicU64;

use plocks::{BrLock, PercpuMutex};
use rseq::pool::PercpuPool;
use rseq::slice;
use rseq::{percpu_add, percpu_sum, Index, PercpuArray};

fn words<T>() -> PercpuArray<T> {
    static POOL: std::sync::OnceLock<PercpuPool> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| PercpuPool::new(rseq::pool::DEFAULT_STRIDE).expect("pool"));
    // SAFETY: zeroed, 8-byte aligned pool copies are valid u64 / AtomicU64 values.
    unsafe { pool.alloc_array(8, 8, Index::CpuId).unwrap().cast() }
}

/// Threads take `m`, run `adds` counter sections and a short loop while holding it, and
/// count under the lock too: both totals must be exact.
fn hammer(m: &PercpuMutex, threads: u64, rounds: u64, check_request: bool) {
    let w: PercpuArray<u64> = words();
    let f: PercpuArray<AtomicU64> = words();
    let under = (0..m.count()).map(|_| std::sync::atomic::AtomicU64::new(0)).collect::<Vec<_>>();
    let (w, f, under) = (&w, &f, &under);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(move || {
                for _ in 0..rounds {
                    let i = m.lock().unwrap();
                    // Plain read-modify-write under the lock: lost updates if it is broken.
                    let v = under[i].load(std::sync::atomic::Ordering::Relaxed);
                    for _ in 0..2 {
                        // SAFETY: live pool arrays; the words are written only by sections.
                        unsafe { percpu_add(w, f, 1) };
                    }
                    if check_request {
                        assert_eq!(slice::current_bytes().map(|b| b.0), Some(1), "request lost while held");
                    }
                    under[i].store(v + 1, std::sync::atomic::Ordering::Relaxed);
                    m.unlock(i).unwrap();
                    if check_request {
                        assert_eq!(slice::current_bytes(), Some((0, 0)), "request left after unlock");
                    }
                }
            });
        }
    });
    let total: u64 = under.iter().map(|a| a.load(std::sync::atomic::Ordering::Relaxed)).sum();
    assert_eq!(total, threads * rounds);
    // SAFETY: as above; every writer finished.
    assert_eq!(unsafe { percpu_sum(w, f) }, 2 * threads * rounds);
}

#[test]
fn slice_extension_option() {
    let m = PercpuMutex::with_slice_extension(true);
    assert!(m.slice_extension());
    if rseq::feature_size() >= slice::MIN_FEATURE_SIZE {
        eprintln!("kernel knows slice_ctrl (supported: {}): checking the real requests", plocks::slice_supported());
        hammer(&m, 4, 2000, false);
        return;
    }

    // 1. Kernel without the feature: nothing changes.
    assert!(!plocks::slice_supported());
    let before = slice::current_bytes();
    hammer(&m, 4, 5000, false);
    hammer(&PercpuMutex::new(), 4, 5000, false);
    assert_eq!(plocks::slice_stats(), plocks::SliceStats::default(), "requests counted without the feature");
    assert_eq!(slice::current_bytes(), before);

    // 2. Simulated: the request protocol.
    if !rseq::mode().is_fast() || !slice::simulate_for_tests(true) {
        eprintln!("skip simulation: no rseq area");
        return;
    }
    let other = PercpuMutex::with_slice_extension(true);
    let rw = BrLock::with_slice_extension(true);
    let plain = PercpuMutex::new();

    // Nested: outer mutex, inner mutex, writer; the inner releases keep the outer request.
    let a = m.lock().unwrap();
    assert_eq!(slice::current_bytes(), Some((1, 0)));
    let b = other.lock().unwrap();
    rw.write_lock().unwrap();
    let c = m.lock().unwrap(); // a second lock of the same array (the caller holds `a`)
    assert_ne!(a, c);
    m.unlock(c).unwrap();
    rw.write_unlock().unwrap();
    other.unlock(b).unwrap();
    assert_eq!(slice::current_bytes(), Some((1, 0)), "an inner unlock cleared the outer request");
    // A lock without the option neither requests nor clears.
    let p = plain.lock().unwrap();
    plain.unlock(p).unwrap();
    assert_eq!(slice::current_bytes(), Some((1, 0)));
    m.unlock(a).unwrap();
    assert_eq!(slice::current_bytes(), Some((0, 0)));
    let s = plocks::slice_stats();
    assert_eq!((s.requests, s.nested, s.grants), (1, 3, 0));

    // A grant during the hold: the release yields (simulated: the kernel is not asked).
    let a = m.lock().unwrap();
    assert!(slice::simulate_grant());
    let b = other.lock().unwrap(); // nested inside a grant
    other.unlock(b).unwrap();
    assert_eq!(slice::current_bytes(), Some((0, 1)));
    m.unlock(a).unwrap();
    slice::simulate_clear_grant();
    let s = plocks::slice_stats();
    assert_eq!((s.requests, s.nested, s.grants), (2, 4, 1));

    // Released on another CPU: the request is the thread's and still ends.
    let cpus = rseq::topology::nr_possible_cpus();
    let a = m.lock().unwrap();
    if cpus > 1 {
        // SAFETY: a zeroed cpu_set_t, then one CPU set in it; sched_setaffinity on self.
        unsafe {
            let mut set: libc::cpu_set_t = core::mem::zeroed();
            libc::CPU_SET((a + 1) % cpus.min(libc::CPU_SETSIZE as usize), &mut set);
            libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    m.unlock(a).unwrap();
    assert_eq!(slice::current_bytes(), Some((0, 0)));

    // Holders' counter sections stay exact while requests are set and cleared.
    hammer(&m, 4, 5000, true);
    slice::simulate_for_tests(false);
}

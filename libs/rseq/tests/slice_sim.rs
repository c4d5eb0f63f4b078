//! The time-slice extension's request protocol, simulated on kernels without the field
//! (feature size below 32: bytes 28 and 29 of the area are padding the kernel ignores), so
//! nesting and coexistence are checked everywhere. Where the kernel knows the field the
//! simulation is refused and the tests say so and pass on nothing (slice.rs then checks the
//! real thing).
//!
//! Coexistence: threads keep running this crate's critical sections (per-CPU adds) while
//! their request is set, granted and cleared; every add must land exactly once and the
//! request byte must survive the sections untouched.

use std::sync::atomic::AtomicU64;

use rseq::pool::PercpuPool;
use rseq::slice::{self, Released, Token};
use rseq::{percpu_add, percpu_sum, Index, PercpuArray};

fn pool() -> &'static PercpuPool {
    static POOL: std::sync::OnceLock<PercpuPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| PercpuPool::new(rseq::pool::DEFAULT_STRIDE).expect("pool"))
}

fn words<T>() -> PercpuArray<T> {
    // SAFETY: zeroed, 8-byte aligned pool copies are valid u64 / AtomicU64 values.
    unsafe { pool().alloc_array(8, 8, Index::CpuId).unwrap().cast() }
}

fn simulating() -> bool {
    if !rseq::mode().is_fast() || !slice::simulate_for_tests(true) {
        eprintln!("skip: the kernel knows slice_ctrl or there is no rseq area; see slice.rs");
        return false;
    }
    true
}

#[test]
fn simulated() {
    if !simulating() {
        return;
    }
    nesting();
    nesting_with_grant();
    coexistence();
    slice::simulate_for_tests(false);
    assert_eq!(slice::request(), Token::Unsupported, "simulation off: unsupported again");
}

fn nesting() {
    assert_eq!(slice::current_bytes(), Some((0, 0)));
    let outer = slice::request();
    assert_eq!(outer, Token::Requested);
    assert_eq!(slice::current_bytes(), Some((1, 0)));
    let inner = slice::request();
    assert_eq!(inner, Token::Nested);
    let innermost = slice::request();
    assert_eq!(innermost, Token::Nested);
    assert_eq!(slice::release(innermost), Released::Nothing);
    assert_eq!(slice::release(inner), Released::Nothing);
    // The inner releases must not clear the outer holder's request.
    assert_eq!(slice::current_bytes(), Some((1, 0)));
    assert_eq!(slice::release(outer), Released::Cleared);
    assert_eq!(slice::current_bytes(), Some((0, 0)));
}

fn nesting_with_grant() {
    let outer = slice::request();
    assert_eq!(outer, Token::Requested);
    // The kernel grants: request cleared, granted set. An inner request must see the grant
    // as "outer active" and neither re-request nor, at its release, yield.
    assert!(slice::simulate_grant());
    assert_eq!(slice::current_bytes(), Some((0, 1)));
    let inner = slice::request();
    assert_eq!(inner, Token::Nested);
    assert_eq!(slice::current_bytes(), Some((0, 1)));
    assert_eq!(slice::release(inner), Released::Nothing);
    assert_eq!(slice::release(outer), Released::Yielded { yielded: false });
    slice::simulate_clear_grant();
    assert_eq!(slice::current_bytes(), Some((0, 0)));
}

fn coexistence() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 20_000;
    const ADDS: u64 = 3;
    let w: PercpuArray<u64> = words();
    let f: PercpuArray<AtomicU64> = words();
    let (w, f) = (&w, &f);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                for r in 0..ROUNDS {
                    let tok = slice::request();
                    assert_eq!(tok, Token::Requested);
                    let grant = (r + t) % 7 == 0;
                    if grant {
                        slice::simulate_grant();
                    }
                    for _ in 0..ADDS {
                        // SAFETY: live pool arrays; the words are written only by sections.
                        unsafe { percpu_add(w, f, 1) };
                    }
                    let expect = if grant { (0, 1) } else { (1, 0) };
                    assert_eq!(slice::current_bytes(), Some(expect), "a section changed slice_ctrl");
                    let rel = slice::release(tok);
                    if grant {
                        assert_eq!(rel, Released::Yielded { yielded: false });
                        slice::simulate_clear_grant();
                    } else {
                        assert_eq!(rel, Released::Cleared);
                    }
                    // SAFETY: as above.
                    unsafe { percpu_add(w, f, 1) };
                }
            });
        }
    });
    // SAFETY: as above; every writer has finished.
    let total = unsafe { percpu_sum(w, f) };
    assert_eq!(total, THREADS * ROUNDS * (ADDS + 1));
}

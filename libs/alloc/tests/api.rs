//! The prefixed C API's semantics, through the Rust side of the same functions.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use palloc::ffi::*;

fn errno() -> i32 {
    // SAFETY: the thread's errno location.
    unsafe { *libc::__errno_location() }
}

fn set_errno(e: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e };
}

fn fill(p: *mut c_void, n: usize, seed: u8) {
    // SAFETY: the callers own `n` bytes at `p`.
    unsafe { std::ptr::write_bytes(p.cast::<u8>(), seed, n) };
}

fn check(p: *mut c_void, n: usize, seed: u8) {
    // SAFETY: as above.
    let s = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) };
    if let Some(i) = s.iter().position(|&b| b != seed) {
        panic!("block {p:p} byte {i} of {n} is {:#x}, wrote {seed:#x}", s[i]);
    }
}

#[test]
fn sizes_alignment_and_usable_size() {
    let mut sizes: Vec<usize> = (0..=1100).collect();
    sizes.extend([4095, 4096, 4097, 65536, 100_000, 262_144, 262_145, 1 << 20, (3 << 20) + 7]);
    let mut live = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let p = palloc_malloc(n);
        assert!(!p.is_null(), "malloc({n})");
        assert_eq!(p as usize % 16, 0, "malloc({n}) = {p:p} not 16-aligned");
        let u = palloc_usable_size(p);
        assert!(u >= n.max(1), "usable_size {u} < {n}");
        fill(p, u, i as u8);
        live.push((p, u, i as u8));
    }
    // No two live blocks overlap.
    let mut by_addr: BTreeMap<usize, usize> = BTreeMap::new();
    for &(p, u, _) in &live {
        by_addr.insert(p as usize, u);
    }
    assert_eq!(by_addr.len(), live.len(), "a block was handed out twice");
    let mut end = 0;
    for (&a, &u) in &by_addr {
        assert!(a >= end, "blocks overlap at {a:#x}");
        end = a + u;
    }
    for (p, u, s) in live {
        check(p, u, s);
        palloc_free(p);
    }
    palloc_free(std::ptr::null_mut());
    assert_eq!(palloc_usable_size(std::ptr::null_mut()), 0);
}

#[test]
fn calloc_zeroes_and_refuses_overflow() {
    for n in [1usize, 17, 1000, 5000, 300_000] {
        let p = palloc_malloc(n);
        fill(p, n, 0xab);
        palloc_free(p);
        let q = palloc_calloc(1, n);
        check(q, n, 0);
        palloc_free(q);
    }
    set_errno(0);
    assert!(palloc_calloc(usize::MAX / 2, 3).is_null());
    assert_eq!(errno(), libc::ENOMEM);
}

#[test]
fn realloc_keeps_contents_across_classes_and_into_large() {
    let mut p = palloc_realloc(std::ptr::null_mut(), 10);
    fill(p, 10, 7);
    let mut n = 10;
    for next in [24, 100, 1000, 70_000, 262_144, 500_000, 3_000_000, 200, 8] {
        let q = palloc_realloc(p, next);
        assert!(!q.is_null());
        check(q, n.min(next), 7);
        fill(q, next, 7);
        p = q;
        n = next;
    }
    assert!(palloc_realloc(p, 0).is_null(), "realloc(p, 0) frees and returns NULL");
}

#[test]
fn aligned_alloc_honours_alignment_and_refuses_bad_ones() {
    let mut align = 16;
    while align <= 1 << 22 {
        for n in [1, align / 2 + 1, align, 3 * align + 5, 300_000] {
            let p = palloc_aligned_alloc(align, n);
            assert!(!p.is_null(), "aligned_alloc({align}, {n})");
            assert_eq!(p as usize % align, 0, "aligned_alloc({align}, {n}) = {p:p}");
            assert!(palloc_usable_size(p) >= n);
            fill(p, n, 3);
            palloc_free(p);
        }
        align *= 2;
    }
    set_errno(0);
    assert!(palloc_aligned_alloc(24, 100).is_null());
    assert_eq!(errno(), libc::EINVAL);
    assert!(palloc_aligned_alloc(0, 100).is_null());
}

#[test]
fn malloc_refuses_impossible_sizes_with_enomem() {
    set_errno(0);
    assert!(palloc_malloc(usize::MAX - 100).is_null());
    assert_eq!(errno(), libc::ENOMEM);
    assert!(palloc_malloc(1 << 62).is_null());
}

/// Producers on one set of threads, consumers freeing on others; contents checked on the
/// other side; every block distinct.
#[test]
fn cross_thread_frees_keep_contents() {
    let (tx, rx) = mpsc::sync_channel::<(usize, usize, u8)>(4096);
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for t in 0..4u8 {
        let tx = tx.clone();
        producers.push(std::thread::spawn(move || {
            let mut x = 0x9e37_79b9u64 ^ t as u64;
            for _ in 0..50_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = [8, 24, 64, 200, 1500, 9000, 40_000][(x % 7) as usize];
                let p = palloc_malloc(n);
                assert!(!p.is_null());
                fill(p, n, (x >> 8) as u8);
                tx.send((p as usize, n, (x >> 8) as u8)).unwrap();
            }
        }));
    }
    drop(tx);
    let consumer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            for (p, len, seed) in rx {
                check(p as *mut c_void, len, seed);
                palloc_free(p as *mut c_void);
                n += 1;
            }
            stop.store(true, Ordering::SeqCst);
            n
        })
    };
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(consumer.join().unwrap(), 200_000);
}

#[test]
fn stats_and_trim_answer() {
    let mut s = std::mem::MaybeUninit::<palloc::Stats>::zeroed();
    // SAFETY: a writable struct of the given size.
    assert_eq!(unsafe { palloc_stats(s.as_mut_ptr(), std::mem::size_of::<palloc::Stats>()) }, 0);
    // SAFETY: filled above.
    let s = unsafe { s.assume_init() };
    assert!(s.mapped_bytes >= s.chunk_bytes);
    // SAFETY: null is refused.
    assert_eq!(unsafe { palloc_stats(std::ptr::null_mut(), 8) }, -libc::EINVAL);
    let mut c = palloc::CpuStats::default();
    // SAFETY: a writable struct.
    let r = unsafe { palloc_cpu_stats(u32::MAX, &mut c) };
    assert!(r == -libc::ERANGE || r == -libc::ENODEV, "{r}");
    assert_eq!(palloc_set_index(7), -libc::EINVAL);
    let _ = palloc_trim();
}

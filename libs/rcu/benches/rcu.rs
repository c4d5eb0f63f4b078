//! Side-by-side figures in one run: read-side pair (Rust API inlined, C API through the
//! cdylib, `pthread_rwlock` read lock, a `std::sync::RwLock`) with 1, 2 and 64 threads;
//! `synchronize` latency with 2 busy readers and with 10,000 idle threads alive; map
//! lookups against a `RwLock<HashMap>`. Medians of 5 rounds; ratios to prcu's figure.
//! `cargo bench -p rcu --bench rcu`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, RwLock};
use std::time::Instant;

const ITERS: u64 = 2_000_000;

/// One measured operation, shared by the threads that run it.
type Op = Arc<dyn Fn() + Send + Sync>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// ns of CPU time per operation per thread, with `threads` threads each running `op`.
fn per_op(threads: usize, op: Op) -> f64 {
    let iters = if threads > 8 { ITERS / 16 } else { ITERS };
    let rounds: Vec<f64> = (0..5)
        .map(|_| {
            let b = Arc::new(Barrier::new(threads));
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    let (b, op) = (b.clone(), op.clone());
                    std::thread::spawn(move || {
                        b.wait();
                        // CPU time of this thread, so that oversubscription does not count.
                        let t0 = cpu_ns();
                        for _ in 0..iters {
                            op();
                        }
                        (cpu_ns() - t0) as f64 / iters as f64
                    })
                })
                .collect();
            median(hs.into_iter().map(|h| h.join().unwrap()).collect())
        })
        .collect();
    median(rounds)
}

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct CApi {
    lock: unsafe extern "C" fn() -> u64,
    unlock: unsafe extern "C" fn(u64) -> i32,
    _lib: libloading::os::unix::Library,
}

fn c_api() -> CApi {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let so =
        [dir.join("deps/libprcu.so"), dir.join("libprcu.so")].into_iter().find(|p| p.is_file()).expect("libprcu.so");
    // SAFETY: our library.
    let lib = unsafe { libloading::os::unix::Library::open(Some(&so), libc::RTLD_NOW | libc::RTLD_LOCAL) }.unwrap();
    // SAFETY: prcu.h signatures.
    unsafe {
        CApi {
            lock: *lib.get(b"prcu_read_lock\0").unwrap(),
            unlock: *lib.get(b"prcu_read_unlock\0").unwrap(),
            _lib: lib,
        }
    }
}

struct PthreadRw(std::cell::UnsafeCell<libc::pthread_rwlock_t>);
// SAFETY: pthread rwlocks are made for sharing.
unsafe impl Sync for PthreadRw {}
// SAFETY: as above.
unsafe impl Send for PthreadRw {}

fn main() {
    let c = Arc::new(c_api());
    let rw = Arc::new(PthreadRw(std::cell::UnsafeCell::new(libc::PTHREAD_RWLOCK_INITIALIZER)));
    let srw = Arc::new(RwLock::new(0u64));
    println!("read-side pair, ns per pair per thread (CPU time), median of 5; ratio = peer / prcu Rust");
    println!("{:<36} {:>10} {:>10} {:>10}", "variant", "1 thread", "2 threads", "64 threads");
    let mut rows: Vec<(&str, Vec<f64>)> = Vec::new();
    let variants: Vec<(&str, Op)> = vec![
        (
            "prcu Rust API (inlined)",
            Arc::new(|| {
                let t = prcu::read_lock();
                black_box(&t);
                let _ = prcu::read_unlock(t);
            }),
        ),
        ("prcu C API (dlopen'd libprcu.so)", {
            let c = c.clone();
            // SAFETY: the C API.
            Arc::new(move || unsafe {
                let t = (c.lock)();
                (c.unlock)(black_box(t));
            })
        }),
        ("pthread_rwlock read pair", {
            let rw = rw.clone();
            // SAFETY: an initialised rwlock.
            Arc::new(move || unsafe {
                libc::pthread_rwlock_rdlock(rw.0.get());
                libc::pthread_rwlock_unlock(rw.0.get());
            })
        }),
        ("std RwLock read pair", {
            let srw = srw.clone();
            Arc::new(move || {
                black_box(*srw.read().unwrap());
            })
        }),
    ];
    for (name, op) in variants {
        let v: Vec<f64> = [1, 2, 64].iter().map(|&n| per_op(n, op.clone())).collect();
        rows.push((name, v));
    }
    let base = rows[0].1.clone();
    for (name, v) in &rows {
        println!(
            "{:<36} {:>6.2} ({:>4.1}x) {:>6.2} ({:>4.1}x) {:>6.2} ({:>4.1}x)",
            name,
            v[0],
            v[0] / base[0],
            v[1],
            v[1] / base[1],
            v[2],
            v[2] / base[2]
        );
    }

    // synchronize latency.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t = prcu::read_lock();
                    let _ = prcu::read_unlock(t);
                }
            })
        })
        .collect();
    let sync_us = |n: usize| {
        let v: Vec<f64> = (0..n)
            .map(|_| {
                let t0 = Instant::now();
                prcu::synchronize();
                t0.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        median(v)
    };
    let with_readers = sync_us(200);
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().unwrap();
    }
    let idle_stop = Arc::new(Barrier::new(10_001));
    let idle: Vec<_> = (0..10_000)
        .map(|_| {
            let b = idle_stop.clone();
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let t = prcu::read_lock();
                    let _ = prcu::read_unlock(t);
                    b.wait();
                })
                .unwrap()
        })
        .collect();
    let with_idle = sync_us(200);
    idle_stop.wait();
    for h in idle {
        h.join().unwrap();
    }
    let alone = sync_us(200);
    println!("\nsynchronize latency, median of 200 (wall µs): alone {alone:.1}, 2 busy readers {with_readers:.1}, 10,000 idle threads {with_idle:.1} (ratio idle/alone {:.2})", with_idle / alone);

    // Map lookups.
    let map = Arc::new(prcu::Map::new(1024));
    let mut hm = HashMap::new();
    for k in 0..10_000u64 {
        map.insert(k, k).unwrap();
        hm.insert(k, k);
    }
    let hm = Arc::new(RwLock::new(hm));
    let m2 = map.clone();
    let prcu_map: Op = Arc::new(move || {
        black_box(m2.get(black_box(4321)));
    });
    let h2 = hm.clone();
    let rw_map: Op = Arc::new(move || {
        black_box(h2.read().unwrap().get(&black_box(4321)).copied());
    });
    let (a1, a2) = (per_op(1, prcu_map.clone()), per_op(2, prcu_map));
    let (b1, b2) = (per_op(1, rw_map.clone()), per_op(2, rw_map));
    println!("\nmap lookup (10,000 keys), ns per lookup per thread: prcu Map {a1:.2} / {a2:.2} (1 / 2 threads); RwLock<HashMap> {b1:.2} / {b2:.2} (ratio {:.1}x / {:.1}x)", b1 / a1, b2 / a2);
}

//! Side-by-side lock figures in one run (docs/BENCHMARKS.md, "Locks").
//!
//! - Read pair: `BrLock` read_lock + read_unlock (Rust API, and the C API through a
//!   `dlopen`ed `libplocks.so`) against `pthread_rwlock` rdlock + unlock, `parking_lot::RwLock`
//!   and `std::sync::RwLock` read guards.
//! - Lock pair: `PercpuMutex` lock + unlock (current CPU's lock; Rust and C API) against one
//!   `pthread_mutex`, `parking_lot::Mutex` and `std::sync::Mutex`.
//! - Each with 1, 2 and 64 threads. The figure is ns per pair = wall time × busy CPUs / pairs
//!   (busy CPUs = min(threads, online CPUs)), so a lock whose waiters sleep pays for the idle
//!   CPU. Every round runs every variant and thread count once (interleaved), and the table
//!   shows the median of the rounds; ratios are peer / ours (Rust API).
//! - Writer latency: write_lock + write_unlock wall time, median and 99th percentile of many,
//!   with 0 and with 2 readers spinning on read pairs, for ours and the peers (the pthread
//!   rwlock prefers writers here, `PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP`: glibc's
//!   default lets 2 overlapping readers starve the writer).
//!
//! `cargo bench -p locks --bench locks` (about a minute); `-- --quick` (or
//! `PLOCKS_BENCH_QUICK=1`) for a few seconds in CI. `-- --rounds N` and `-- --iters N` (pairs per thread
//! with 1 and 2 threads) override the round count and the length.

use std::cell::UnsafeCell;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::Instant;

use plocks::{BrLock, PercpuMutex};

struct Cfg {
    rounds: usize,
    /// Pairs per thread with 1 or 2 threads (64 threads do a 16th of it each).
    iters: u64,
    writer_samples: usize,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p) as usize]
}

fn online_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One measurement with `threads` threads each running `op` `iters` times: the median over
/// the threads of CPU ns per pair (CPU time, so that a host whose other load deschedules a
/// thread does not inflate it), and the parallelism achieved (the threads' CPU time summed
/// over the wall time from the first start to the last finish: about 2 when 2 threads really
/// ran at the same time on 2 CPUs).
fn run<F: Fn() + Sync>(threads: usize, iters: u64, op: &F) -> (f64, f64) {
    let b = Barrier::new(threads);
    let spans: Vec<(Instant, Instant, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    b.wait();
                    let (t0, c0) = (Instant::now(), thread_cpu_ns());
                    for _ in 0..iters {
                        op();
                    }
                    (t0, Instant::now(), thread_cpu_ns() - c0)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first = spans.iter().map(|s| s.0).min().unwrap();
    let last = spans.iter().map(|s| s.1).max().unwrap();
    let wall = (last - first).as_secs_f64() * 1e9;
    let cpu: u64 = spans.iter().map(|s| s.2).sum();
    let mut per: Vec<f64> = spans.iter().map(|s| s.2 as f64 / iters as f64).collect();
    (median(&mut per), cpu as f64 / wall)
}

// ---- the C API through the cdylib -----------------------------------------------------------

#[allow(non_camel_case_types)]
type plock_t = core::ffi::c_void;

struct CApi {
    rw_create: unsafe extern "C" fn() -> *mut plock_t,
    rd_lock: unsafe extern "C" fn(*const plock_t) -> i32,
    rd_unlock: unsafe extern "C" fn(*const plock_t) -> i32,
    wr_lock: unsafe extern "C" fn(*const plock_t) -> i32,
    wr_unlock: unsafe extern "C" fn(*const plock_t) -> i32,
    mx_create: unsafe extern "C" fn() -> *mut plock_t,
    mx_lock: unsafe extern "C" fn(*const plock_t) -> i32,
    mx_unlock: unsafe extern "C" fn(*const plock_t, i32) -> i32,
    path: std::path::PathBuf,
    _lib: libloading::os::unix::Library,
}

fn c_api() -> CApi {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let so = [dir.join("libplocks.so"), dir.join("deps/libplocks.so")]
        .into_iter()
        .find(|p| p.is_file())
        .expect("libplocks.so next to the bench binary (cargo bench -p locks builds it)");
    // SAFETY: our own library; its constructor only sets up the rseq foundation.
    let lib = unsafe { libloading::os::unix::Library::open(Some(&so), libc::RTLD_NOW | libc::RTLD_LOCAL) }.unwrap();
    // SAFETY: the signatures of include/plocks.h (handles as opaque pointers).
    unsafe {
        CApi {
            rw_create: *lib.get(b"plock_rwlock_create\0").unwrap(),
            rd_lock: *lib.get(b"plock_rwlock_read_lock\0").unwrap(),
            rd_unlock: *lib.get(b"plock_rwlock_read_unlock\0").unwrap(),
            wr_lock: *lib.get(b"plock_rwlock_write_lock\0").unwrap(),
            wr_unlock: *lib.get(b"plock_rwlock_write_unlock\0").unwrap(),
            mx_create: *lib.get(b"plock_mutex_create\0").unwrap(),
            mx_lock: *lib.get(b"plock_mutex_lock\0").unwrap(),
            mx_unlock: *lib.get(b"plock_mutex_unlock\0").unwrap(),
            path: so,
            _lib: lib,
        }
    }
}

/// A C handle shared by the threads (the library's locks are thread-safe).
#[derive(Clone, Copy)]
struct Handle(*mut plock_t);
// SAFETY: plock handles are made to be used from any thread.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl Handle {
    fn ptr(self) -> *const plock_t {
        self.0
    }
}

// ---- pthread peers --------------------------------------------------------------------------

/// glibc's `PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP` (pthread.h; not in the libc crate).
const PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP: libc::c_int = 2;

struct PRw(UnsafeCell<libc::pthread_rwlock_t>);
// SAFETY: pthread rwlocks are made for sharing between threads.
unsafe impl Sync for PRw {}

impl PRw {
    fn get(&self) -> *mut libc::pthread_rwlock_t {
        self.0.get()
    }

    fn new(prefer_writer: bool) -> Box<PRw> {
        let l = Box::new(PRw(UnsafeCell::new(libc::PTHREAD_RWLOCK_INITIALIZER)));
        if prefer_writer {
            // SAFETY: attribute object initialised, used and destroyed here; the lock is not
            // in use yet and does not move (boxed).
            unsafe {
                let mut a: libc::pthread_rwlockattr_t = core::mem::zeroed();
                libc::pthread_rwlockattr_init(&mut a);
                libc::pthread_rwlockattr_setkind_np(&mut a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
                libc::pthread_rwlock_init(l.0.get(), &a);
                libc::pthread_rwlockattr_destroy(&mut a);
            }
        }
        l
    }
}

struct PMx(UnsafeCell<libc::pthread_mutex_t>);
// SAFETY: pthread mutexes are made for sharing between threads.
unsafe impl Sync for PMx {}

impl PMx {
    fn get(&self) -> *mut libc::pthread_mutex_t {
        self.0.get()
    }
}

type Row<'a> = (&'a str, Box<dyn Fn(usize, u64) -> (f64, f64) + 'a>);

fn table(title: &str, rows: &[Row<'_>], cfg: &Cfg) -> Vec<Vec<f64>> {
    const THREADS: [usize; 3] = [1, 2, 64];
    let mut samples = vec![vec![Vec::new(); THREADS.len()]; rows.len()];
    let mut par = vec![Vec::new(); rows.len()];
    for _ in 0..cfg.rounds {
        for (k, &t) in THREADS.iter().enumerate() {
            let iters = if t > 8 { cfg.iters / 16 } else { cfg.iters };
            for (r, (_, f)) in rows.iter().enumerate() {
                let (ns, p) = f(t, iters);
                samples[r][k].push(ns);
                if t == 2 {
                    par[r].push(p);
                }
            }
        }
    }
    let med: Vec<Vec<f64>> = samples.iter_mut().map(|v| v.iter_mut().map(|s| median(s)).collect()).collect();
    println!("\n{title}: CPU ns per pair per thread, median of {} interleaved rounds", cfg.rounds);
    println!("ratio = this / ours (Rust API); par = parallelism achieved with 2 threads (2.0: both ran at once)");
    println!("{:<40} {:>16} {:>16} {:>16} {:>5}", "", "1 thread", "2 threads", "64 threads", "par");
    for (r, (name, _)) in rows.iter().enumerate() {
        print!("{name:<40}");
        for (v, base) in med[r].iter().zip(&med[0]) {
            print!(" {v:>8.2} ({:>5.1}x)", v / base);
        }
        println!(" {:>5.2}", median(&mut par[r]));
    }
    med
}

/// Median and 99th percentile (µs) of `n` write_lock + write_unlock, with `readers` threads
/// running read pairs meanwhile.
fn writer_latency<W, R>(n: usize, readers: usize, write: &W, read: &R) -> (f64, f64)
where
    W: Fn() + Sync,
    R: Fn() + Sync,
{
    let stop = AtomicBool::new(false);
    let started = Barrier::new(readers + 1);
    std::thread::scope(|s| {
        for _ in 0..readers {
            s.spawn(|| {
                started.wait();
                while !stop.load(Ordering::Relaxed) {
                    read();
                }
            });
        }
        started.wait();
        let mut v: Vec<f64> = (0..n)
            .map(|_| {
                let t0 = Instant::now();
                write();
                t0.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        (median(&mut v), pct(&mut v, 0.99))
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick") || std::env::var_os("PLOCKS_BENCH_QUICK").is_some();
    let mut cfg = if quick {
        Cfg { rounds: 3, iters: 100_000, writer_samples: 300 }
    } else {
        Cfg { rounds: 7, iters: 1_000_000, writer_samples: 3_000 }
    };
    if let Some(i) = args.iter().position(|a| a == "--rounds") {
        cfg.rounds = args.get(i + 1).and_then(|s| s.parse().ok()).expect("--rounds N");
    }
    if let Some(i) = args.iter().position(|a| a == "--iters") {
        cfg.iters = args.get(i + 1).and_then(|s| s.parse().ok()).expect("--iters N");
    }
    let c = c_api();
    println!(
        "locks benchmark{}: {} online CPUs, rseq mode {}, C API from {}",
        if quick { " (quick)" } else { "" },
        online_cpus(),
        plocks::rseq_mode().name(),
        c.path.display()
    );

    // ---- read pairs ----
    let br = BrLock::new();
    assert!(br.uses_rseq() || !plocks::rseq_mode().is_fast(), "BrLock without rseq on an rseq thread");
    // SAFETY: the C API's constructor.
    let crw = Handle(unsafe { (c.rw_create)() });
    let prw = PRw::new(false);
    let plrw = parking_lot::RwLock::new(0u64);
    let srw = std::sync::RwLock::new(0u64);
    let read_rows: Vec<Row> = vec![
        (
            "plock BrLock read pair (Rust API)",
            Box::new(|t, n| {
                run(t, n, &|| {
                    br.read_lock().unwrap();
                    br.read_unlock();
                })
            }),
        ),
        (
            "plock_rwlock read pair (C API, .so)",
            Box::new(|t, n| {
                let h = crw;
                // SAFETY: a live handle from plock_rwlock_create.
                run(t, n, &|| unsafe {
                    (c.rd_lock)(h.ptr());
                    (c.rd_unlock)(h.ptr());
                })
            }),
        ),
        (
            "pthread_rwlock rdlock + unlock",
            Box::new(|t, n| {
                // SAFETY: an initialised rwlock.
                run(t, n, &|| unsafe {
                    libc::pthread_rwlock_rdlock(prw.get());
                    libc::pthread_rwlock_unlock(prw.get());
                })
            }),
        ),
        ("parking_lot RwLock read", Box::new(|t, n| run(t, n, &|| drop(black_box(plrw.read()))))),
        ("std RwLock read", Box::new(|t, n| run(t, n, &|| drop(black_box(srw.read().unwrap()))))),
    ];
    let rd = table("Read-lock pair", &read_rows, &cfg);

    // ---- lock pairs ----
    let pm = PercpuMutex::new();
    // SAFETY: the C API's constructor.
    let cmx = Handle(unsafe { (c.mx_create)() });
    let pmx = PMx(UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER));
    let plmx = parking_lot::Mutex::new(0u64);
    let smx = std::sync::Mutex::new(0u64);
    let mutex_rows: Vec<Row> = vec![
        (
            "plock PercpuMutex lock + unlock (Rust)",
            Box::new(|t, n| {
                run(t, n, &|| {
                    let i = pm.lock().unwrap();
                    pm.unlock(black_box(i)).unwrap();
                })
            }),
        ),
        (
            "plock_mutex lock + unlock (C API, .so)",
            Box::new(|t, n| {
                let h = cmx;
                // SAFETY: a live handle from plock_mutex_create.
                run(t, n, &|| unsafe {
                    let i = (c.mx_lock)(h.ptr());
                    (c.mx_unlock)(h.ptr(), black_box(i));
                })
            }),
        ),
        (
            "pthread_mutex lock + unlock (one)",
            Box::new(|t, n| {
                // SAFETY: an initialised mutex.
                run(t, n, &|| unsafe {
                    libc::pthread_mutex_lock(pmx.get());
                    libc::pthread_mutex_unlock(pmx.get());
                })
            }),
        ),
        ("parking_lot Mutex lock", Box::new(|t, n| run(t, n, &|| drop(black_box(plmx.lock()))))),
        ("std Mutex lock", Box::new(|t, n| run(t, n, &|| drop(black_box(smx.lock().unwrap()))))),
    ];
    table("Lock pair (one lock; ours: the current CPU's)", &mutex_rows, &cfg);

    // ---- writer latency ----
    let wprw = PRw::new(true);
    let ns = cfg.writer_samples;
    type WRow<'a> = (&'a str, Box<dyn Fn(usize) -> (f64, f64) + 'a>);
    let wrows: Vec<WRow> = vec![
        (
            "plock BrLock (Rust API)",
            Box::new(|r| {
                writer_latency(
                    ns,
                    r,
                    &|| {
                        br.write_lock().unwrap();
                        br.write_unlock().unwrap();
                    },
                    &|| {
                        br.read_lock().unwrap();
                        br.read_unlock();
                    },
                )
            }),
        ),
        (
            "plock_rwlock (C API, .so)",
            Box::new(|r| {
                let h = crw;
                writer_latency(
                    ns,
                    r,
                    // SAFETY: a live handle.
                    &|| unsafe {
                        (c.wr_lock)(h.ptr());
                        (c.wr_unlock)(h.ptr());
                    },
                    // SAFETY: a live handle.
                    &|| unsafe {
                        (c.rd_lock)(h.ptr());
                        (c.rd_unlock)(h.ptr());
                    },
                )
            }),
        ),
        (
            "pthread_rwlock (prefer writer)",
            Box::new(|r| {
                writer_latency(
                    ns,
                    r,
                    // SAFETY: an initialised rwlock.
                    &|| unsafe {
                        libc::pthread_rwlock_wrlock(wprw.get());
                        libc::pthread_rwlock_unlock(wprw.get());
                    },
                    // SAFETY: as above.
                    &|| unsafe {
                        libc::pthread_rwlock_rdlock(wprw.get());
                        libc::pthread_rwlock_unlock(wprw.get());
                    },
                )
            }),
        ),
        (
            "parking_lot RwLock",
            Box::new(|r| writer_latency(ns, r, &|| drop(black_box(plrw.write())), &|| drop(black_box(plrw.read())))),
        ),
        (
            "std RwLock",
            Box::new(|r| {
                writer_latency(ns, r, &|| drop(black_box(srw.write().unwrap())), &|| {
                    drop(black_box(srw.read().unwrap()))
                })
            }),
        ),
    ];
    let mut w = vec![[Vec::new(), Vec::new(), Vec::new(), Vec::new()]; wrows.len()];
    for _ in 0..cfg.rounds {
        for (r, (_, f)) in wrows.iter().enumerate() {
            for (k, readers) in [0usize, 2].into_iter().enumerate() {
                let (m, p) = f(readers);
                w[r][2 * k].push(m);
                w[r][2 * k + 1].push(p);
            }
        }
    }
    println!(
        "\nWriter latency: write_lock + write_unlock, wall µs, median / p99 of {ns} per round, median of {} rounds",
        cfg.rounds
    );
    println!("{:<40} {:>22} {:>22}", "", "0 readers", "2 busy readers");
    for (r, (name, _)) in wrows.iter().enumerate() {
        let m: Vec<f64> = w[r].iter_mut().map(|s| median(s)).collect();
        println!("{name:<40} {:>9.2} / {:>9.2}  {:>9.2} / {:>9.2}", m[0], m[1], m[2], m[3]);
    }

    let ratio = rd[2][1] / rd[0][1];
    let ratio_c = rd[2][1] / rd[1][1];
    println!(
        "\ntarget: read pair >= 5x faster than pthread_rwlock with 2 readers: Rust API {ratio:.1}x ({}), C API {ratio_c:.1}x ({})",
        if ratio >= 5.0 { "met" } else { "missed" },
        if ratio_c >= 5.0 { "met" } else { "missed" }
    );
}

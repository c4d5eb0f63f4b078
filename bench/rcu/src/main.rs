//! libprcu against its peers, side by side in one run (issue 12's benchmark):
//!
//! - read-side pair with 1, 2 and 64 threads: libprcu through its C API (the dlopened
//!   `libprcu.so`) and inlined from the Rust rlib; liburcu memb and qsbr through their shared
//!   libraries and inlined (`_LGPL_SOURCE`); `pthread_rwlock`; crossbeam-epoch pin/unpin;
//!   arc-swap load; `std::sync::RwLock`;
//! - `synchronize` latency alone, with 2 busy readers, and with N idle threads alive
//!   (registered with memb, registered and offline with qsbr, merely existing for libprcu);
//! - map lookups at a few sizes: `prcu::Map` (rlib), `prcu_map_lookup` (C API), liburcu's
//!   rculfhash (memb, inlined read side), and a `RwLock<HashMap>`.
//!
//! Every figure is a median of several rounds, and the rounds interleave the variants, so
//! that a noisy neighbour hits them alike. Times are per-thread CPU time per operation
//! (oversubscription does not count) except synchronize, which is wall time.
//!
//! `cargo run --release -p rcu-bench` (about a minute), `-- --quick` (seconds).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{compiler_fence, AtomicI32, Ordering};
use std::sync::{Arc, Barrier, LazyLock, OnceLock, RwLock};
use std::time::Instant;

mod peers {
    use core::ffi::c_void;
    pub type LockFn = unsafe extern "C" fn() -> u64;
    pub type UnlockFn = unsafe extern "C" fn(u64) -> i32;
    pub type LookupFn = unsafe extern "C" fn(*const c_void, u64, *mut u64) -> i32;
    // Compiled from csrc/ by build.rs; each function is plain C without preconditions beyond
    // those noted at the call sites (registration for the liburcu ones).
    extern "C" {
        pub fn memb_so_register_thread();
        pub fn memb_so_unregister_thread();
        pub fn memb_so_synchronize();
        pub fn memb_so_pairs(iters: u64);
        pub fn memb_so_read_until(stop: *const i32);
        pub fn memb_so_idle_begin();
        pub fn memb_so_idle_end();
        pub fn memb_inline_pairs(iters: u64);
        pub fn qsbr_so_register_thread();
        pub fn qsbr_so_unregister_thread();
        pub fn qsbr_so_synchronize();
        pub fn qsbr_so_pairs(iters: u64);
        pub fn qsbr_so_read_until(stop: *const i32);
        pub fn qsbr_so_idle_begin();
        pub fn qsbr_so_idle_end();
        pub fn qsbr_inline_pairs(iters: u64);
        pub fn rwlock_pairs(iters: u64);
        pub fn capi_pairs(lock: LockFn, unlock: UnlockFn, iters: u64) -> u64;
        pub fn capi_map_lookups(lookup: LookupFn, map: *const c_void, n: u64, iters: u64) -> u64;
        pub fn lfht_build(n: u64) -> *mut c_void;
        pub fn lfht_lookups(ht: *mut c_void, n: u64, iters: u64) -> u64;
        /// 1 when the liburcu peers were compiled in, 0 when build.rs found no liburcu headers.
        pub fn rcu_bench_have_urcu() -> i32;
    }
}

// ---------------------------------------------------------------------------------------
// Configuration.

struct Cfg {
    rounds: usize,
    pair_iters: u64,
    threads: Vec<usize>,
    idle: usize,
    syncs: usize,
    sizes: Vec<u64>,
    lookups: u64,
    so: Option<PathBuf>,
    /// `--pair NAME`: run only that read-pair variant on one thread (for perf/callgrind).
    only_pair: Option<String>,
}

fn parse_args() -> Cfg {
    let mut cfg = Cfg {
        rounds: 5,
        pair_iters: 2_000_000,
        threads: vec![1, 2, 64],
        idle: 10_000,
        syncs: 200,
        sizes: vec![1_000, 100_000, 1_000_000],
        lookups: 1_000_000,
        so: std::env::var_os("PRCU_SO").map(PathBuf::from),
        only_pair: None,
    };
    let mut idle_given = None;
    let mut rounds_given = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value =
            |what: &str| -> String { args.next().unwrap_or_else(|| usage(&format!("{what} needs a value"))) };
        match a.as_str() {
            "--quick" => {
                cfg.rounds = 3;
                cfg.pair_iters = 200_000;
                cfg.idle = 1_000;
                cfg.syncs = 30;
                cfg.sizes = vec![1_000, 100_000];
                cfg.lookups = 100_000;
            }
            "--rounds" => rounds_given = Some(number(&value("--rounds"))),
            "--idle-threads" => idle_given = Some(number(&value("--idle-threads"))),
            "--prcu-so" => cfg.so = Some(PathBuf::from(value("--prcu-so"))),
            "--pair" => cfg.only_pair = Some(value("--pair")),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if let Some(r) = rounds_given {
        if r == 0 {
            usage("--rounds must be at least 1");
        }
        cfg.rounds = r;
    }
    if let Some(n) = idle_given {
        cfg.idle = n;
    }
    cfg
}

const USAGE: &str = "usage: rcu-bench [--quick] [--rounds N] [--idle-threads N] [--prcu-so PATH]
  --quick           seconds instead of a minute: fewer rounds, iterations, idle threads, sizes
  --rounds N        interleaved rounds per figure (default 5, quick 3)
  --idle-threads N  idle threads alive for the synchronize figure (default 10000, quick 1000)
  --prcu-so PATH    the libprcu.so to dlopen (default: $PRCU_SO, else next to the binary)
  --pair NAME       only this read-pair variant (a prefix of its name), one thread, for a
                    profiler: e.g. perf stat -e instructions rcu-bench --pair \"prcu Rust\"";

fn usage(msg: &str) -> ! {
    eprintln!("rcu-bench: {msg}\n{USAGE}");
    std::process::exit(2);
}

fn number(s: &str) -> usize {
    s.parse().unwrap_or_else(|_| usage(&format!("not a number: {s:?}")))
}

// ---------------------------------------------------------------------------------------
// libprcu's C API, through the shared library.

struct CApi {
    lock: peers::LockFn,
    unlock: peers::UnlockFn,
    synchronize: unsafe extern "C" fn(),
    map_create: unsafe extern "C" fn(usize) -> *mut core::ffi::c_void,
    map_insert: unsafe extern "C" fn(*mut core::ffi::c_void, u64, u64) -> i32,
    map_lookup: peers::LookupFn,
    _lib: libloading::os::unix::Library,
}

static CAPI: OnceLock<CApi> = OnceLock::new();

fn capi() -> &'static CApi {
    CAPI.get().expect("the C API is loaded first")
}

fn load_capi(given: Option<PathBuf>) -> PathBuf {
    let so = given.unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe.parent().expect("the binary's directory").to_path_buf();
        // Cargo builds the dependency's cdylib into deps/; target/<profile>/libprcu.so is the
        // one `cargo build -p rcu` left, possibly older. The newest wins.
        let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        [dir.join("deps/libprcu.so"), dir.join("libprcu.so")]
            .into_iter()
            .filter(|p| p.is_file())
            .max_by_key(mtime)
            .unwrap_or_else(|| {
                eprintln!(
                    "rcu-bench: no libprcu.so next to {} (build it: cargo build --release -p rcu; or pass --prcu-so)",
                    exe.display()
                );
                std::process::exit(1)
            })
    });
    // SAFETY: loading libprcu runs its constructors, which only read the environment.
    let lib = unsafe { libloading::os::unix::Library::open(Some(&so), libc::RTLD_NOW | libc::RTLD_LOCAL) }
        .unwrap_or_else(|e| {
            eprintln!("rcu-bench: cannot load {}: {e}", so.display());
            std::process::exit(1)
        });
    // SAFETY: the signatures of include/prcu.h.
    let api = unsafe {
        let sym = |name: &[u8]| -> *const () {
            *lib.get::<*const ()>(name).unwrap_or_else(|e| {
                eprintln!("rcu-bench: {}: {e}", so.display());
                std::process::exit(1)
            })
        };
        CApi {
            lock: core::mem::transmute::<*const (), peers::LockFn>(sym(b"prcu_read_lock\0")),
            unlock: core::mem::transmute::<*const (), peers::UnlockFn>(sym(b"prcu_read_unlock\0")),
            synchronize: core::mem::transmute::<*const (), unsafe extern "C" fn()>(sym(b"prcu_synchronize\0")),
            map_create: core::mem::transmute::<*const (), unsafe extern "C" fn(usize) -> *mut core::ffi::c_void>(sym(
                b"prcu_map_create\0",
            )),
            map_insert: core::mem::transmute::<*const (), unsafe extern "C" fn(*mut core::ffi::c_void, u64, u64) -> i32>(
                sym(b"prcu_map_insert\0"),
            ),
            map_lookup: core::mem::transmute::<*const (), peers::LookupFn>(sym(b"prcu_map_lookup\0")),
            _lib: lib,
        }
    };
    assert!(CAPI.set(api).is_ok());
    so
}

// ---------------------------------------------------------------------------------------
// Measurement.

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The order of the variants in round `r`: rotated by one each round, so that no variant
/// always runs first (after the previous variant's data evicted its own from the caches).
fn rotation(r: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (i + r) % n)
}

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A measured per-thread job: `enter` and `leave` run outside the timed part (liburcu's
/// registration), `run(iters)` is timed.
#[derive(Clone)]
struct Job {
    name: &'static str,
    enter: fn(),
    leave: fn(),
    run: Arc<dyn Fn(u64) + Send + Sync>,
}

fn nothing() {}

/// ns of CPU time per operation: the median over `threads` threads each running the job.
fn per_op(threads: usize, job: &Job, iters: u64) -> f64 {
    let start = Arc::new(Barrier::new(threads));
    let done = Arc::new(Barrier::new(threads));
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (start, done, job) = (start.clone(), done.clone(), job.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    (job.enter)();
                    start.wait();
                    let t0 = cpu_ns();
                    (job.run)(iters);
                    let ns = (cpu_ns() - t0) as f64 / iters as f64;
                    done.wait();
                    (job.leave)();
                    ns
                })
                .expect("spawn")
        })
        .collect();
    median(hs.into_iter().map(|h| h.join().expect("measured thread")).collect())
}

// ---------------------------------------------------------------------------------------
// Read-side pairs.

static ARC_SWAP: LazyLock<arc_swap::ArcSwap<u64>> = LazyLock::new(|| arc_swap::ArcSwap::from_pointee(7));
static STD_RW: RwLock<u64> = RwLock::new(7);

fn prcu_rust_pairs(iters: u64) {
    let mut refused = 0u64;
    for _ in 0..iters {
        let t = prcu::read_lock();
        compiler_fence(Ordering::SeqCst);
        refused += u64::from(prcu::read_unlock(t).is_err());
    }
    assert_eq!(refused, 0, "prcu refused a token it issued");
}

fn prcu_capi_pairs(iters: u64) {
    let c = capi();
    // SAFETY: the library's own functions.
    let refused = unsafe { peers::capi_pairs(c.lock, c.unlock, iters) };
    assert_eq!(refused, 0, "libprcu refused a token it issued");
}

fn pair_jobs() -> Vec<Job> {
    // SAFETY (every liburcu job): `enter` registers the thread with the flavour before its
    // read sections and `leave` unregisters it after.
    fn job(name: &'static str, enter: fn(), leave: fn(), run: fn(u64)) -> Job {
        Job { name, enter, leave, run: Arc::new(run) }
    }
    let memb_reg: fn() = || unsafe { peers::memb_so_register_thread() };
    let memb_unreg: fn() = || unsafe { peers::memb_so_unregister_thread() };
    let qsbr_reg: fn() = || unsafe { peers::qsbr_so_register_thread() };
    let qsbr_unreg: fn() = || unsafe { peers::qsbr_so_unregister_thread() };
    vec![
        job("prcu C API (libprcu.so)", nothing, nothing, prcu_capi_pairs),
        job("prcu Rust (rlib, inlined)", nothing, nothing, prcu_rust_pairs),
        job("liburcu memb (.so)", memb_reg, memb_unreg, |n| unsafe { peers::memb_so_pairs(n) }),
        job("liburcu memb (inlined)", memb_reg, memb_unreg, |n| unsafe { peers::memb_inline_pairs(n) }),
        job("liburcu qsbr (.so)", qsbr_reg, qsbr_unreg, |n| unsafe { peers::qsbr_so_pairs(n) }),
        job("liburcu qsbr (inlined)", qsbr_reg, qsbr_unreg, |n| unsafe { peers::qsbr_inline_pairs(n) }),
        job("pthread_rwlock read pair", nothing, nothing, |n| unsafe { peers::rwlock_pairs(n) }),
        job("crossbeam-epoch pin+unpin", nothing, nothing, |n| {
            for _ in 0..n {
                let g = crossbeam_epoch::pin();
                compiler_fence(Ordering::SeqCst);
                drop(g);
            }
        }),
        job("arc-swap load+drop", nothing, nothing, |n| {
            let a = &*ARC_SWAP;
            for _ in 0..n {
                black_box(**a.load());
            }
        }),
        job("std RwLock read pair", nothing, nothing, |n| {
            for _ in 0..n {
                black_box(*STD_RW.read().unwrap());
            }
        }),
    ]
}

// ---------------------------------------------------------------------------------------
// Synchronize latency.

struct SyncVariant {
    name: &'static str,
    sync: fn(),
    /// A reader thread body: reads until `*stop != 0`.
    reader: fn(&AtomicI32),
}

fn sync_variants() -> Vec<SyncVariant> {
    vec![
        SyncVariant {
            name: "prcu (rlib)",
            sync: prcu::synchronize,
            reader: |stop| {
                while stop.load(Ordering::Relaxed) == 0 {
                    prcu_rust_pairs(1024);
                }
            },
        },
        SyncVariant {
            name: "prcu C API (libprcu.so)",
            // SAFETY: the library's function.
            sync: || unsafe { (capi().synchronize)() },
            reader: |stop| {
                while stop.load(Ordering::Relaxed) == 0 {
                    prcu_capi_pairs(1024);
                }
            },
        },
        SyncVariant {
            name: "liburcu memb",
            // SAFETY: synchronize needs no registration; the reader registers first.
            sync: || unsafe { peers::memb_so_synchronize() },
            reader: |stop| unsafe {
                peers::memb_so_register_thread();
                peers::memb_so_read_until(stop.as_ptr());
                peers::memb_so_unregister_thread();
            },
        },
        SyncVariant {
            name: "liburcu qsbr",
            // SAFETY: as above; qsbr readers announce quiescent states while they read.
            sync: || unsafe { peers::qsbr_so_synchronize() },
            reader: |stop| unsafe {
                peers::qsbr_so_register_thread();
                peers::qsbr_so_read_until(stop.as_ptr());
                peers::qsbr_so_unregister_thread();
            },
        },
    ]
}

/// Median wall µs of `n` synchronize calls, with `readers` reader threads running.
fn sync_latency(v: &SyncVariant, n: usize, readers: usize) -> f64 {
    let stop = Arc::new(AtomicI32::new(0));
    let hs: Vec<_> = (0..readers)
        .map(|_| {
            let (stop, reader) = (stop.clone(), v.reader);
            std::thread::spawn(move || reader(&stop))
        })
        .collect();
    if readers > 0 {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let lat: Vec<f64> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            (v.sync)();
            t0.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    stop.store(1, Ordering::Relaxed);
    for h in hs {
        h.join().expect("reader");
    }
    median(lat)
}

/// `n` idle threads, registered with memb and (offline) with qsbr, each blocked until the
/// returned barrier is passed.
fn spawn_idle(n: usize) -> (Arc<Barrier>, Vec<std::thread::JoinHandle<()>>) {
    let ready = Arc::new(Barrier::new(n + 1));
    let release = Arc::new(Barrier::new(n + 1));
    let hs = (0..n)
        .map(|_| {
            let (ready, release) = (ready.clone(), release.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    // SAFETY: registration and its undoing in the same thread.
                    unsafe {
                        peers::memb_so_idle_begin();
                        peers::qsbr_so_idle_begin();
                    }
                    ready.wait();
                    release.wait();
                    // SAFETY: as above.
                    unsafe {
                        peers::qsbr_so_idle_end();
                        peers::memb_so_idle_end();
                    }
                })
                .unwrap_or_else(|e| {
                    eprintln!("rcu-bench: cannot create {n} idle threads ({e}); try --idle-threads");
                    std::process::exit(1)
                })
        })
        .collect();
    ready.wait();
    (release, hs)
}

// ---------------------------------------------------------------------------------------
// Map lookups.

/// splitmix64's finaliser, the hash every map of the benchmark uses.
#[derive(Default)]
struct Mix(u64);

impl Hasher for Mix {
    fn finish(&self) -> u64 {
        let mut x = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("u64 keys only")
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type RwMap = RwLock<HashMap<u64, u64, BuildHasherDefault<Mix>>>;

#[inline(always)]
fn key_at(i: u64, n: u64) -> u64 {
    i.wrapping_mul(2_654_435_761) % n
}

fn expected_sum(n: u64, iters: u64) -> u64 {
    (0..iters).fold(0u64, |s, i| s.wrapping_add(key_at(i, n) * 3 + 1))
}

/// A raw pointer that the lookups share (the maps outlive every measured thread).
#[derive(Clone, Copy)]
struct Shared(*mut core::ffi::c_void);
// SAFETY: the pointee is a concurrent map whose lookups may run on any thread.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    fn ptr(self) -> *mut core::ffi::c_void {
        self.0
    }
}

fn map_jobs(n: u64, iters: u64) -> Vec<Job> {
    let want = expected_sum(n, iters);
    let ours = Arc::new(prcu::Map::new(n as usize));
    let c = capi();
    // SAFETY: the C API's constructor; the map is never destroyed (it lives for the run).
    let cmap = Shared(unsafe { (c.map_create)(n as usize) });
    assert!(!cmap.0.is_null(), "prcu_map_create failed");
    let mut hm = HashMap::with_capacity_and_hasher(n as usize, BuildHasherDefault::<Mix>::default());
    for k in 0..n {
        ours.insert(k, k * 3 + 1).expect("insert");
        // SAFETY: a live map from prcu_map_create.
        assert_eq!(unsafe { (c.map_insert)(cmap.0, k, k * 3 + 1) }, 0, "prcu_map_insert");
        hm.insert(k, k * 3 + 1);
    }
    let rw: Arc<RwMap> = Arc::new(RwLock::new(hm));
    // SAFETY: the building thread registers with memb (lfht_build's precondition).
    let ht = unsafe {
        peers::memb_so_register_thread();
        let ht = Shared(peers::lfht_build(n));
        peers::memb_so_unregister_thread();
        ht
    };
    assert!(!ht.0.is_null(), "cds_lfht build failed");
    let check = move |name: &str, got: u64| {
        if got != want {
            eprintln!("rcu-bench: {name} with {n} keys returned sum {got}, expected {want} (a lookup missed)");
            std::process::exit(1);
        }
    };
    let memb_reg: fn() = || unsafe { peers::memb_so_register_thread() };
    let memb_unreg: fn() = || unsafe { peers::memb_so_unregister_thread() };
    vec![
        Job {
            name: "prcu Map::get (rlib)",
            enter: nothing,
            leave: nothing,
            run: Arc::new(move |it| {
                let mut s = 0u64;
                for i in 0..it {
                    s = s.wrapping_add(ours.get(key_at(i, n)).unwrap_or(u64::MAX / 2));
                }
                check("prcu Map::get", s);
            }),
        },
        Job {
            name: "prcu_map_lookup (libprcu.so)",
            enter: nothing,
            leave: nothing,
            run: Arc::new(move |it| {
                let c = capi();
                // SAFETY: a live map of the loaded library.
                check("prcu_map_lookup", unsafe { peers::capi_map_lookups(c.map_lookup, cmap.ptr(), n, it) });
            }),
        },
        Job {
            name: "liburcu rculfhash (memb, inlined)",
            enter: memb_reg,
            leave: memb_unreg,
            run: Arc::new(move |it| {
                // SAFETY: the thread is registered (enter) and the table lives for the run.
                check("cds_lfht", unsafe { peers::lfht_lookups(ht.ptr(), n, it) });
            }),
        },
        Job {
            name: "RwLock<HashMap>",
            enter: nothing,
            leave: nothing,
            run: Arc::new(move |it| {
                let mut s = 0u64;
                for i in 0..it {
                    let g = rw.read().unwrap();
                    s = s.wrapping_add(g.get(&key_at(i, n)).copied().unwrap_or(u64::MAX / 2));
                }
                check("RwLock<HashMap>", s);
            }),
        },
    ]
}

// ---------------------------------------------------------------------------------------
// Report.

/// Keys, medians per variant (1 and 2 threads), variant names.
type MapRow = (u64, Vec<[f64; 2]>, Vec<&'static str>);

fn ratio_cell(peer: f64, ours: f64) -> String {
    format!("{:.2}×", peer / ours)
}

/// "met" or "missed by X%" for "ours <= limit".
fn verdict_le(ours: f64, limit: f64) -> String {
    if ours <= limit {
        format!("met ({:.2} <= {:.2}, {:.0}% under)", ours, limit, (1.0 - ours / limit) * 100.0)
    } else {
        format!("MISSED by {:.0}% ({:.2} > {:.2})", (ours / limit - 1.0) * 100.0, ours, limit)
    }
}

fn main() {
    let cfg = parse_args();
    let so = load_capi(cfg.so.clone());
    // SAFETY: a constant function of the C peers.
    if unsafe { peers::rcu_bench_have_urcu() } == 0 {
        eprintln!(
            "rcu-bench: built without liburcu (its headers were missing): install liburcu-dev (Debian) and rebuild"
        );
        std::process::exit(2);
    }
    // Decide both copies' reader modes before measuring.
    drop(prcu::Guard::new());
    println!(
        "# rcu-bench: {} rounds interleaved, medians; libprcu.so = {}; prcu fast path {}, index {}; {} CPUs online",
        cfg.rounds,
        so.display(),
        prcu::fast_path(),
        prcu::current_index().name(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Read-side pairs: rounds outermost, so each round runs every variant once.
    let jobs = pair_jobs();
    if let Some(name) = &cfg.only_pair {
        let j = jobs.iter().find(|j| j.name.starts_with(name.as_str())).unwrap_or_else(|| {
            let names: Vec<_> = jobs.iter().map(|j| j.name).collect();
            usage(&format!("no read-pair variant starts with {name:?} (variants: {})", names.join(", ")))
        });
        println!("{}: {:.2} ns per pair ({} pairs)", j.name, per_op(1, j, cfg.pair_iters), cfg.pair_iters);
        return;
    }
    let mut pair: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); cfg.threads.len()]; jobs.len()];
    for r in 0..cfg.rounds {
        for (ti, &t) in cfg.threads.iter().enumerate() {
            let iters = if t > 8 { (cfg.pair_iters / 16).max(1000) } else { cfg.pair_iters };
            for ji in rotation(r, jobs.len()) {
                pair[ji][ti].push(per_op(t, &jobs[ji], iters));
            }
        }
    }
    let pair: Vec<Vec<f64>> = pair.into_iter().map(|v| v.into_iter().map(median).collect()).collect();
    println!("\n## Read-side pair: ns of CPU time per lock+unlock per thread (median)\n");
    let head: Vec<String> = cfg.threads.iter().map(|t| format!("{t} thr")).collect();
    println!(
        "| variant | {} | {} |",
        head.join(" | "),
        head.iter().map(|h| format!("÷C API {h}")).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---:|".repeat(2 * cfg.threads.len()));
    for (j, v) in jobs.iter().zip(&pair) {
        let ns: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
        let r: Vec<String> = v.iter().zip(&pair[0]).map(|(p, o)| ratio_cell(*p, *o)).collect();
        println!("| {} | {} | {} |", j.name, ns.join(" | "), r.join(" | "));
    }

    // Synchronize.
    let sv = sync_variants();
    let mut sync: Vec<[Vec<f64>; 3]> = sv.iter().map(|_| [Vec::new(), Vec::new(), Vec::new()]).collect();
    for r in 0..cfg.rounds {
        for i in rotation(r, sv.len()) {
            sync[i][0].push(sync_latency(&sv[i], cfg.syncs, 0));
            sync[i][1].push(sync_latency(&sv[i], cfg.syncs, 2));
        }
    }
    let t0 = Instant::now();
    let (release, idle) = spawn_idle(cfg.idle);
    let spawn_ms = t0.elapsed().as_secs_f64() * 1e3;
    for r in 0..cfg.rounds {
        for i in rotation(r, sv.len()) {
            sync[i][2].push(sync_latency(&sv[i], cfg.syncs, 0));
        }
    }
    release.wait();
    for h in idle {
        h.join().expect("idle thread");
    }
    let sync: Vec<[f64; 3]> = sync.into_iter().map(|[a, b, c]| [median(a), median(b), median(c)]).collect();
    println!(
        "\n## synchronize: wall µs (median of {} calls, median of rounds); {} idle threads took {spawn_ms:.0} ms to create and register\n",
        cfg.syncs, cfg.idle
    );
    println!(
        "| variant | alone | 2 busy readers | {} idle threads | ÷prcu alone | ÷prcu 2 readers | ÷prcu idle |",
        cfg.idle
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (v, s) in sv.iter().zip(&sync) {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            v.name,
            s[0],
            s[1],
            s[2],
            ratio_cell(s[0], sync[0][0]),
            ratio_cell(s[1], sync[0][1]),
            ratio_cell(s[2], sync[0][2])
        );
    }

    // Map lookups.
    let map_threads = [1usize, 2];
    println!("\n## Map lookups: ns of CPU time per lookup per thread (median), every key present\n");
    println!("| keys | variant | 1 thr | 2 thr | ÷prcu Map 1 thr | ÷prcu Map 2 thr |");
    println!("|---:|---|---:|---:|---:|---:|");
    let mut map_rows: Vec<MapRow> = Vec::new();
    for &n in &cfg.sizes {
        let jobs = map_jobs(n, cfg.lookups);
        let mut m: Vec<[Vec<f64>; 2]> = jobs.iter().map(|_| [Vec::new(), Vec::new()]).collect();
        // One untimed pass each, so that no variant pays for faulting in its map.
        for j in &jobs {
            per_op(1, j, cfg.lookups);
        }
        for r in 0..cfg.rounds {
            for (ti, &t) in map_threads.iter().enumerate() {
                for ji in rotation(r, jobs.len()) {
                    m[ji][ti].push(per_op(t, &jobs[ji], cfg.lookups));
                }
            }
        }
        let m: Vec<[f64; 2]> = m.into_iter().map(|[a, b]| [median(a), median(b)]).collect();
        for (j, v) in jobs.iter().zip(&m) {
            println!(
                "| {n} | {} | {:.2} | {:.2} | {} | {} |",
                j.name,
                v[0],
                v[1],
                ratio_cell(v[0], m[0][0]),
                ratio_cell(v[1], m[0][1])
            );
        }
        map_rows.push((n, m, jobs.iter().map(|j| j.name).collect()));
    }

    // Targets of issue 12.
    println!("\n## Targets\n");
    let find = |name: &str| jobs.iter().position(|j| j.name == name).expect("variant");
    let (capi_i, rust_i, memb_so, memb_in) = (
        find("prcu C API (libprcu.so)"),
        find("prcu Rust (rlib, inlined)"),
        find("liburcu memb (.so)"),
        find("liburcu memb (inlined)"),
    );
    for (ti, t) in cfg.threads.iter().enumerate() {
        println!("- read pair, C API <= memb .so, {t} thr: {}", verdict_le(pair[capi_i][ti], pair[memb_so][ti]));
    }
    for (ti, t) in cfg.threads.iter().enumerate() {
        println!(
            "- read pair, Rust inlined <= memb inlined, {t} thr: {}",
            verdict_le(pair[rust_i][ti], pair[memb_in][ti])
        );
    }
    let speedup = sync[2][2] / sync[0][2];
    println!(
        "- synchronize with {} idle threads >= 10x faster than memb: {} ({:.1}× faster: {:.1} µs vs {:.1} µs)",
        cfg.idle,
        if speedup >= 10.0 { "met" } else { "MISSED" },
        speedup,
        sync[0][2],
        sync[2][2]
    );
    for (n, m, names) in &map_rows {
        let lf = names.iter().position(|x| x.starts_with("liburcu rculfhash")).expect("lfht");
        for (ti, t) in map_threads.iter().enumerate() {
            println!(
                "- map lookups >= rculfhash ({n} keys, {t} thr): prcu Map {}; C API {}",
                verdict_le(m[0][ti], m[lf][ti]),
                verdict_le(m[1][ti], m[lf][ti])
            );
        }
    }
}

//! Side-by-side cost of a counter add and a counter read.
//!
//! Run: `cargo bench -p counters --bench counters` (about 45 s).
//!
//! Adds (1, 2 and 64 threads, each adding 1 in a loop to one counter):
//! - private increment: each thread increments its own word on its own cache line (floor),
//!   inline, and behind a call through a function pointer (the C API's call shape);
//! - shared `lock xadd`: one atomic word for all threads;
//! - `sched_getcpu()` + atomic per-CPU shard: an atomic add on the current CPU's line;
//! - thread-local + registry: each thread owns a registered word (single-writer load+store),
//!   readers sum the registry;
//! - `rseq::percpu_add` on two pool words, without handle or table (the foundation's floor);
//! - pcounters, Rust API (rlib, inlined) and C API (the real `libpcounters.so` through
//!   `dlopen`, one call per add), and the C API with the fallback path forced.
//!
//! "ns/add" is CPU time per add: the threads' summed CPU time (`CLOCK_THREAD_CPUTIME_ID`)
//! divided by the adds they made, so 64 threads on 2 CPUs are charged for the time they
//! ran, not for the time they waited. Each cell is the median of `REPS` runs.
//!
//! Reads: the cost of one read of a counter that `n` threads (10 and 10,000, parked, 64 KiB
//! stacks) have each added to once.
//!
//! Deletes (1, 2 and 8 threads, each creating and deleting counters in a loop): wall-clock
//! time per create + delete pair and the membarriers issued per delete (deletes that queue
//! behind a membarrier in progress share the next one), against the same threads each issuing
//! one `membarrier(PRIVATE_EXPEDITED_RSEQ)` per loop (a delete issuing its own).

use std::cell::OnceCell;
use std::ffi::{c_char, c_int};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use pcounters::ffi::pcounters_counter;
use pcounters::{Counter, Index};

const RUN: Duration = Duration::from_millis(150);
const REPS: usize = 3;
const BATCH: u64 = 1024;
const THREADS: [usize; 3] = [1, 2, 64];

#[repr(align(128))]
struct Padded(AtomicU64);

// ---- the peers --------------------------------------------------------------------------

static SHARED: Padded = Padded(AtomicU64::new(0));

fn shards() -> &'static [Padded] {
    static SHARDS: std::sync::OnceLock<Vec<Padded>> = std::sync::OnceLock::new();
    SHARDS.get_or_init(|| (0..rseq::topology::nr_possible_cpus()).map(|_| Padded(AtomicU64::new(0))).collect())
}

#[inline(always)]
fn shard_add() {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    shards()[cpu.max(0) as usize].0.fetch_add(1, Ordering::Relaxed);
}

fn shard_read() -> u64 {
    shards().iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
}

static REGISTRY: Mutex<Vec<&'static Padded>> = Mutex::new(Vec::new());

thread_local! {
    static MY_SLOT: OnceCell<&'static Padded> = const { OnceCell::new() };
}

#[inline(always)]
fn tls_add() {
    MY_SLOT.with(|s| {
        let slot = s.get_or_init(|| {
            let slot: &'static Padded = Box::leak(Box::new(Padded(AtomicU64::new(0))));
            REGISTRY.lock().unwrap().push(slot);
            slot
        });
        // Single writer: a plain load and store, no locked instruction.
        slot.0.store(slot.0.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    });
}

fn tls_read() -> u64 {
    REGISTRY.lock().unwrap().iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
}

// ---- the C API through the real shared library -----------------------------------------

type CreateFn = unsafe extern "C" fn(*const c_char, c_int, *mut pcounters_counter) -> c_int;
type AddFn = unsafe extern "C" fn(pcounters_counter, i64) -> c_int;
type GetFn = unsafe extern "C" fn(pcounters_counter, *mut i64) -> c_int;
type FallbackFn = unsafe extern "C" fn(c_int) -> c_int;
type PrivFn = unsafe extern "C" fn(*mut u64, i64) -> c_int;

/// Compiles and loads a one-function C library: a private increment with the C API's call
/// shape, so the cost of calling into a shared library is measured on its own.
fn load_private_so() -> Option<(PrivFn, libloading::Library)> {
    let dir = std::env::temp_dir().join(format!("pcounters-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let src = dir.join("priv.c");
    let so = dir.join("libpriv.so");
    std::fs::write(
        &src,
        "#include <stdint.h>\nint priv_add(uint64_t *w, int64_t a) { *w += (uint64_t)a; return 0; }\n",
    )
    .ok()?;
    let ok = std::process::Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let loaded = ok.then(|| {
        // SAFETY: the library just compiled has one function with this signature.
        unsafe {
            let lib = libloading::Library::new(&so).ok()?;
            let f = *lib.get::<PrivFn>(b"priv_add\0").ok()?;
            Some((f, lib))
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    loaded.flatten()
}

struct CApi {
    /// `int priv_add(uint64_t *word, int64_t amount)` from a C library compiled now with
    /// `cc -O2 -shared -fPIC` (None without a C compiler).
    priv_so: Option<PrivFn>,
    _priv_lib: Option<libloading::Library>,
    add: AddFn,
    get: GetFn,
    force_fallback: FallbackFn,
    counter: pcounters_counter,
    _lib: libloading::Library,
}

fn load_c_api() -> CApi {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let path = [deps.join("libpcounters.so"), deps.parent().unwrap().join("libpcounters.so")]
        .into_iter()
        .find(|p| p.is_file())
        .expect("libpcounters.so next to the benchmark (cargo bench builds it)");
    // SAFETY: our own library; the symbols have the C signatures of pcounters.h.
    unsafe {
        let lib = libloading::os::unix::Library::open(Some(&path), libc::RTLD_NOW | libc::RTLD_LOCAL).unwrap();
        let lib = libloading::Library::from(lib);
        let create = *lib.get::<CreateFn>(b"pcounters_create\0").unwrap();
        let add = *lib.get::<AddFn>(b"pcounters_add\0").unwrap();
        let get = *lib.get::<GetFn>(b"pcounters_get\0").unwrap();
        let force_fallback = *lib.get::<FallbackFn>(b"pcounters_force_fallback\0").unwrap();
        let mut counter = pcounters_counter { id: 0 };
        assert_eq!(create(c"bench_c".as_ptr(), 0, &mut counter), 0);
        let (priv_so, priv_lib) = match load_private_so() {
            Some((f, l)) => (Some(f), Some(l)),
            None => (None, None),
        };
        CApi { priv_so, _priv_lib: priv_lib, add, get, force_fallback, counter, _lib: lib }
    }
}

// ---- measuring adds ----------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Private,
    PrivateCall,
    PrivateSo,
    Xadd,
    Shard,
    Tls,
    RawRseq,
    Rust,
    C,
    CFallback,
}

const KINDS: [(Kind, &str); 10] = [
    (Kind::Private, "private increment (inline)"),
    (Kind::PrivateCall, "private increment behind a call"),
    (Kind::PrivateSo, "private increment behind a call into a .so"),
    (Kind::Xadd, "shared lock xadd"),
    (Kind::Shard, "sched_getcpu + atomic shard"),
    (Kind::Tls, "thread-local + registry"),
    (Kind::RawRseq, "rseq::percpu_add, no handle (floor)"),
    (Kind::Rust, "pcounters Rust API"),
    (Kind::C, "pcounters C API (.so)"),
    (Kind::CFallback, "pcounters C API, fallback forced"),
];

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A private increment with the C API's call shape (handle-sized pointer, amount, int
/// result), called through a pointer the compiler cannot see through: the cost of the call
/// itself.
#[inline(never)]
extern "C" fn private_call(word: *mut u64, amount: i64) -> c_int {
    // SAFETY: the caller passes its own word.
    unsafe { *word = (*word).wrapping_add(amount as u64) };
    0
}

/// The per-CPU words of the raw-rseq row.
fn raw_words() -> (rseq::PercpuArray<u64>, rseq::PercpuArray<AtomicU64>) {
    static POOL: std::sync::OnceLock<rseq::pool::PercpuPool> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| rseq::pool::PercpuPool::new(rseq::pool::DEFAULT_STRIDE).unwrap());
    static WORDS: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    let (w, f) =
        *WORDS.get_or_init(|| (pool.alloc(8, 8).unwrap().base() as usize, pool.alloc(8, 8).unwrap().base() as usize));
    let array = |p: usize| rseq::PercpuPtr::new(p as *mut u8, pool.stride());
    // SAFETY: two pool slots with a zeroed 8-byte copy for each of the pool's CPUs, never freed.
    unsafe {
        (
            rseq::PercpuArray::from_raw(array(w), pool.ncpus(), rseq::Index::CpuId).cast(),
            rseq::PercpuArray::from_raw(array(f), pool.ncpus(), rseq::Index::CpuId).cast(),
        )
    }
}

/// One batch of `BATCH` adds of `kind`.
#[inline(never)]
fn batch(kind: Kind, private: &mut u64, rust: Counter, c: &CApi) {
    match kind {
        Kind::PrivateCall => {
            let f = black_box(private_call as extern "C" fn(*mut u64, i64) -> c_int);
            let p: *mut u64 = private;
            for _ in 0..BATCH {
                f(p, 1);
            }
        }
        Kind::PrivateSo => {
            let p: *mut u64 = private;
            if let Some(f) = c.priv_so {
                let f = black_box(f);
                for _ in 0..BATCH {
                    // SAFETY: the thread's own word.
                    unsafe { f(p, 1) };
                }
            }
        }
        Kind::RawRseq => {
            let (words, fallback) = raw_words();
            for _ in 0..BATCH {
                // SAFETY: pool words for every possible CPU; the rseq set is only written by
                // critical sections.
                unsafe { rseq::percpu_add(&words, &fallback, 1) };
            }
        }
        Kind::Private => {
            for _ in 0..BATCH {
                // SAFETY: `private` is this thread's own word; volatile keeps one memory
                // increment per iteration, as a counter in memory costs.
                unsafe { std::ptr::write_volatile(private, std::ptr::read_volatile(private) + 1) };
            }
        }
        Kind::Xadd => {
            for _ in 0..BATCH {
                SHARED.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        Kind::Shard => {
            for _ in 0..BATCH {
                shard_add();
            }
        }
        Kind::Tls => {
            for _ in 0..BATCH {
                tls_add();
            }
        }
        Kind::Rust => {
            for _ in 0..BATCH {
                rust.add(1);
            }
        }
        Kind::C | Kind::CFallback => {
            let (add, counter) = (black_box(c.add), c.counter);
            for _ in 0..BATCH {
                // SAFETY: a live handle of the loaded library.
                unsafe { add(counter, 1) };
            }
        }
    }
}

/// CPU ns per add for `threads` threads adding for `RUN`.
fn measure_add(kind: Kind, threads: usize, rust: Counter, c: &Arc<CApi>) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, start, c) = (stop.clone(), start.clone(), c.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut private = Box::new(Padded(AtomicU64::new(0)));
                    let word = private.0.get_mut();
                    batch(kind, word, rust, &c); // warm up (registers, faults pages in)
                    start.wait();
                    let t0 = thread_cpu_ns();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        batch(kind, word, rust, &c);
                        n += BATCH;
                    }
                    black_box(*word);
                    (thread_cpu_ns() - t0, n)
                })
                .unwrap()
        })
        .collect();
    start.wait();
    std::thread::sleep(RUN);
    stop.store(true, Ordering::Relaxed);
    let (mut cpu, mut ops) = (0u64, 0u64);
    for h in handles {
        let (t, n) = h.join().unwrap();
        cpu += t;
        ops += n;
    }
    cpu as f64 / ops as f64
}

fn online_now() -> usize {
    rseq::topology::online_cpus().map_or(0, |v| v.len())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

// ---- measuring reads ---------------------------------------------------------------------

/// Spawns `n` parked threads (64 KiB stacks) that have each added once through every
/// variant; returns a function that releases and joins them.
fn park_threads(n: usize, rust: Counter, c: &Arc<CApi>) -> impl FnOnce() {
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let ready = Arc::new(Barrier::new(n + 1));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (gate, ready, c) = (gate.clone(), ready.clone(), c.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    rust.add(1);
                    // SAFETY: a live handle of the loaded library.
                    unsafe { (c.add)(c.counter, 1) };
                    tls_add();
                    shard_add();
                    SHARED.0.fetch_add(1, Ordering::Relaxed);
                    ready.wait();
                    let (lock, cv) = &*gate;
                    let mut open = lock.lock().unwrap();
                    while !*open {
                        open = cv.wait(open).unwrap();
                    }
                })
                .expect("spawn a parked thread")
        })
        .collect();
    ready.wait();
    move || {
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        for h in handles {
            h.join().unwrap();
        }
    }
}

/// A way to read one counter.
type Reader = Box<dyn Fn() -> i64>;

/// ns per read, median of `REPS` timings of as many reads as fit in 20 ms.
fn measure_read(read: &dyn Fn() -> i64) -> f64 {
    let mut samples = Vec::new();
    for _ in 0..REPS {
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed() < Duration::from_millis(20) {
            for _ in 0..64 {
                black_box(read());
            }
            n += 64;
        }
        samples.push(t0.elapsed().as_nanos() as f64 / n as f64);
    }
    median(samples)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let c = Arc::new(load_c_api());
    let rust = Counter::new("bench_rust", Index::CpuId).unwrap();
    let online = rseq::topology::online_cpus().map(|v| v.len()).unwrap_or(0);
    println!(
        "pcounters benchmark: {} online / {} possible CPUs, rseq mode {:?}, feature size {}",
        online,
        rseq::topology::nr_possible_cpus(),
        pcounters::rseq_mode(),
        rseq::feature_size()
    );
    println!("ns per add (CPU time per add, median of {REPS} runs of {} ms)\n", RUN.as_millis());
    print!("| variant |");
    for t in THREADS {
        print!(" {t} thr |");
    }
    println!();
    println!("|---|{}", "---:|".repeat(THREADS.len()));
    let mut table = Vec::new();
    let mut any_short = false;
    for (kind, name) in KINDS {
        if kind == Kind::PrivateSo && c.priv_so.is_none() {
            println!("| {name} | n/a (no C compiler `cc`) |||");
            table.push((kind, vec![f64::NAN; THREADS.len()]));
            continue;
        }
        if kind == Kind::CFallback {
            // SAFETY: the library's own switch.
            unsafe { (c.force_fallback)(1) };
        }
        let mut short = vec![false; THREADS.len()];
        let row: Vec<f64> = THREADS
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let want = t.min(rseq::topology::nr_possible_cpus());
                median(
                    (0..REPS)
                        .map(|_| {
                            let before = online_now();
                            let v = measure_add(kind, t, rust, &c);
                            short[i] |= before.min(online_now()) < want;
                            v
                        })
                        .collect(),
                )
            })
            .collect();
        if kind == Kind::CFallback {
            // SAFETY: as above.
            unsafe { (c.force_fallback)(0) };
        }
        print!("| {name} |");
        for (v, short) in row.iter().zip(&short) {
            print!(" {v:.2}{} |", if *short { "*" } else { "" });
            any_short |= short;
        }
        println!();
        table.push((kind, row));
    }
    if any_short {
        println!("\n\\* fewer CPUs were online than threads during this measurement (CPU hotplug by another process)");
    }
    let row = |k: Kind| &table.iter().find(|(kind, _)| *kind == k).unwrap().1;
    let (private, so_call, xadd) = (row(Kind::Private), row(Kind::PrivateSo), row(Kind::Xadd));
    let (capi, rapi) = (row(Kind::C), row(Kind::Rust));
    println!("\nratios (lower is better for the first three, higher for the last two)\n");
    print!("| ratio |");
    for t in THREADS {
        print!(" {t} thr |");
    }
    println!("\n|---|{}", "---:|".repeat(THREADS.len()));
    let ratios: [(&str, &dyn Fn(usize) -> f64); 5] = [
        ("C API / private increment (inline)", &|i| capi[i] / private[i]),
        ("C API / private increment behind a call into a .so", &|i| capi[i] / so_call[i]),
        ("Rust API / private increment (inline)", &|i| rapi[i] / private[i]),
        ("shared lock xadd / C API", &|i| xadd[i] / capi[i]),
        ("shared lock xadd / Rust API", &|i| xadd[i] / rapi[i]),
    ];
    for (name, f) in ratios {
        print!("| {name} |");
        for i in 0..THREADS.len() {
            print!(" {:.2} |", f(i));
        }
        println!();
    }

    println!("\nns per read with N threads alive (each added once; parked, 64 KiB stacks)\n");
    println!("| variant | 10 threads | 10,000 threads |\n|---|---:|---:|");
    let readers: [(&str, Reader); 5] = [
        ("pcounters Rust API get", Box::new(move || rust.get().unwrap())),
        (
            "pcounters C API get (.so)",
            Box::new({
                let c = c.clone();
                move || {
                    let mut v = 0;
                    // SAFETY: a live handle and a valid out-pointer.
                    unsafe { (c.get)(c.counter, &mut v) };
                    v
                }
            }),
        ),
        ("shared atomic load", Box::new(|| SHARED.0.load(Ordering::Relaxed) as i64)),
        ("atomic shards: sum over possible CPUs", Box::new(|| shard_read() as i64)),
        ("thread-local + registry: sum", Box::new(|| tls_read() as i64)),
    ];
    let mut results = vec![Vec::new(); readers.len()];
    for n in [10usize, 10_000] {
        let release = park_threads(n, rust, &c);
        for (i, (_, read)) in readers.iter().enumerate() {
            results[i].push(measure_read(read.as_ref()));
        }
        release();
    }
    for ((name, _), r) in readers.iter().zip(results) {
        println!("| {name} | {:.1} | {:.1} |", r[0], r[1]);
    }
    deletes();
}

// ---- measuring deletes -------------------------------------------------------------------

/// Threads of the delete measurement.
const DELETE_THREADS: [usize; 3] = [1, 2, 8];

/// `threads` threads each running `op` in a loop for `RUN`; wall-clock µs per op (all
/// threads together) and the number of ops.
fn measure_ops(threads: usize, op: impl Fn(usize, u64) + Sync) -> (f64, u64) {
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let start = Barrier::new(threads + 1);
    let t0 = std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, total, start, op) = (&stop, &total, &start, &op);
            s.spawn(move || {
                start.wait();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    op(t, n);
                    n += 1;
                }
                total.fetch_add(n, Ordering::Relaxed);
            });
        }
        start.wait();
        let t0 = Instant::now();
        std::thread::sleep(RUN);
        stop.store(true, Ordering::Relaxed);
        t0
    });
    let n = total.load(Ordering::Relaxed).max(1);
    (t0.elapsed().as_secs_f64() * 1e6 / n as f64, n)
}

/// A create + delete pair per op, against one `membarrier(PRIVATE_EXPEDITED_RSEQ)` per op
/// issued by every thread (what each delete cost when every delete issued its own).
fn deletes() {
    use rseq::membarrier::{private_expedited_rseq, register_private_expedited_rseq};
    if register_private_expedited_rseq().is_err() {
        println!("\ndeletes: no membarrier(PRIVATE_EXPEDITED_RSEQ) on this kernel, skipped");
        return;
    }
    println!(
        "\nµs per operation, wall clock, all threads together (median of {REPS} runs of {} ms)\n",
        RUN.as_millis()
    );
    print!("| variant |");
    for t in DELETE_THREADS {
        print!(" {t} thr |");
    }
    println!("\n|---|{}", "---:|".repeat(DELETE_THREADS.len()));
    let mut pair = Vec::new();
    let mut per_delete = Vec::new();
    let mut raw = Vec::new();
    for t in DELETE_THREADS {
        let mut times = Vec::new();
        let mut ratio = Vec::new();
        for _ in 0..REPS {
            let (issued0, _, _) = pcounters::delete_fence_stats();
            let (us, n) = measure_ops(t, |thread, i| {
                let c = Counter::new(&format!("bench_delete_{thread}_{i}"), Index::CpuId).unwrap();
                c.delete().unwrap();
            });
            let (issued1, _, _) = pcounters::delete_fence_stats();
            times.push(us);
            ratio.push((issued1 - issued0) as f64 / n as f64);
        }
        pair.push(median(times));
        per_delete.push(median(ratio));
        raw.push(median((0..REPS).map(|_| measure_ops(t, |_, _| private_expedited_rseq(None).unwrap()).0).collect()));
    }
    let rows: [(&str, &Vec<f64>); 3] = [
        ("pcounters create + delete", &pair),
        ("membarrier(PRIVATE_EXPEDITED_RSEQ) per op", &raw),
        ("membarriers issued per delete", &per_delete),
    ];
    for (name, row) in rows {
        print!("| {name} |");
        for v in row {
            print!(" {v:.2} |");
        }
        println!();
    }
    print!("| one membarrier per op / pcounters create + delete |");
    for (r, p) in raw.iter().zip(&pair) {
        print!(" {:.2} |", r / p);
    }
    println!();
}

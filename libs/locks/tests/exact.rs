//! Mutual exclusion, exactly: non-atomic data under each lock stays exact with more threads
//! than CPUs, under a signal storm, with holders that migrate (sched_setaffinity while
//! holding) and sleep, in every registration mode (child processes), with and without the
//! forced fallback; readers never see a writer's half-done update.

use std::cell::UnsafeCell;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plocks::{BrLock, Error, PercpuMutex};

/// Tests that use signals, affinity or the fallback switch hold this.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Plain memory shared by the threads and guarded only by the lock under test.
struct Plain<T>(UnsafeCell<T>);
// SAFETY: every access happens under the lock under test (that is what is tested).
unsafe impl<T> Sync for Plain<T> {}

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn allowed() -> Vec<u32> {
    rseq::topology::allowed_cpus().unwrap()
}

static SIGNALS: AtomicU64 = AtomicU64::new(0);
extern "C" fn on_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

fn install_handler() {
    // SAFETY: a handler that only does an atomic add.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
}

/// Signals the process every 50 us until dropped.
struct Storm(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);
impl Storm {
    fn start() -> Storm {
        install_handler();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            // SAFETY: blocks SIGUSR1 on this thread only.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR1);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
            while !s.load(Ordering::Relaxed) {
                // SAFETY: kill on our own pid.
                unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        Storm(stop, Some(h))
    }
}
impl Drop for Storm {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(h) = self.1.take() {
            h.join().unwrap();
        }
    }
}

const THREADS: usize = 8;

/// Workers take the current CPU's lock (and, when `by_index`, every third time a random
/// index), increment that index's plain counter in two halves (a read, a pause, a write,
/// so overlapping holders lose updates), sometimes migrate or yield while holding, release.
fn mutex_workload(m: &Arc<PercpuMutex>, iters: u64, by_index: bool, seed: u64) {
    let n = m.count();
    let data = Arc::new(Plain(UnsafeCell::new(vec![0u64; n])));
    let expect: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let cpus = allowed();
    let hs: Vec<_> = (0..THREADS)
        .map(|t| {
            let (m, data, expect, cpus) = (m.clone(), data.clone(), expect.clone(), cpus.clone());
            std::thread::spawn(move || {
                let mut r = rng(seed ^ (t as u64 + 1));
                for k in 0..iters {
                    let i = if by_index && k % 3 == 0 {
                        let i = (r() % n as u64) as usize;
                        m.lock_index(i).unwrap();
                        i
                    } else {
                        m.lock().unwrap()
                    };
                    assert_eq!(m.is_locked(i), Some(true));
                    // SAFETY: index i's counter is only touched under lock i.
                    unsafe {
                        let p = (*data.0.get()).as_mut_ptr().add(i);
                        let v = p.read_volatile();
                        for _ in 0..(r() % 16) {
                            std::hint::spin_loop();
                        }
                        match r() % 64 {
                            0 => std::thread::yield_now(),
                            1 => {
                                let c = cpus[(r() % cpus.len() as u64) as usize];
                                rseq::topology::set_thread_affinity(&[c]).unwrap();
                            }
                            2 => rseq::topology::set_thread_affinity(&cpus).unwrap(),
                            _ => {}
                        }
                        p.write_volatile(v + 1);
                    }
                    expect[i].fetch_add(1, Ordering::Relaxed);
                    m.unlock(i).unwrap();
                }
                rseq::topology::set_thread_affinity(&cpus).unwrap();
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    // SAFETY: every worker has been joined.
    let got = unsafe { &*data.0.get() };
    let total: u64 = got.iter().sum();
    assert_eq!(total, THREADS as u64 * iters, "seed {seed:#x}: updates lost under the per-CPU mutex");
    for (i, e) in expect.iter().enumerate() {
        assert_eq!(got[i], e.load(Ordering::Relaxed), "seed {seed:#x}: index {i}");
    }
    assert!(!m.any_locked(), "seed {seed:#x}: a lock was left held");
}

fn seed() -> u64 {
    std::env::var("PLOCKS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    })
}

#[test]
fn mutex_exact_under_storm_and_migration() {
    let _s = serial();
    let _storm = Storm::start();
    let m = Arc::new(PercpuMutex::new());
    let before = rseq::stats();
    mutex_workload(&m, 20_000, false, seed());
    let after = rseq::stats();
    eprintln!(
        "aborts {} fallback {} signals {}",
        after.aborts - before.aborts,
        after.fallback_ops - before.fallback_ops,
        SIGNALS.load(Ordering::Relaxed)
    );
}

#[test]
fn mutex_exact_with_index_takers_racing_sections() {
    let _s = serial();
    let m = Arc::new(PercpuMutex::new());
    // Two CPUs' locks contended by section takers and by index takers at once.
    mutex_workload(&m, 30_000, true, seed());
}

#[test]
fn mutex_exact_on_forced_fallback() {
    let _s = serial();
    plocks::force_fallback(true);
    let m = Arc::new(PercpuMutex::new());
    mutex_workload(&m, 10_000, true, seed());
    plocks::force_fallback(false);
}

/// Writers store a generation in every word of a block (canary first, odd while writing);
/// readers check the block is whole and the canary even.
fn rwlock_workload(l: &Arc<BrLock>, millis: u64, seed: u64) -> (u64, u64) {
    const WORDS: usize = 16;
    let block = Arc::new(Plain(UnsafeCell::new([0u64; WORDS + 1])));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let cpus = allowed();
    let readers: Vec<_> = (0..THREADS - 2)
        .map(|t| {
            let (l, block, stop, reads, cpus) = (l.clone(), block.clone(), stop.clone(), reads.clone(), cpus.clone());
            std::thread::spawn(move || {
                let mut r = rng(seed ^ (t as u64 + 7));
                while !stop.load(Ordering::Relaxed) {
                    l.read_lock().unwrap();
                    // SAFETY: read under the read lock.
                    unsafe {
                        let p = (*block.0.get()).as_ptr();
                        let canary = p.read_volatile();
                        assert_eq!(canary % 2, 0, "seed {seed:#x}: reader saw a writer in progress");
                        if r().is_multiple_of(32) {
                            let c = cpus[(r() % cpus.len() as u64) as usize];
                            rseq::topology::set_thread_affinity(&[c]).unwrap();
                        }
                        for w in 1..=WORDS {
                            let v = p.add(w).read_volatile();
                            assert_eq!(v, canary / 2, "seed {seed:#x}: reader saw a half-done update");
                        }
                        assert_eq!(p.read_volatile(), canary, "seed {seed:#x}: a writer overlapped a reader");
                    }
                    l.read_unlock();
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                rseq::topology::set_thread_affinity(&cpus).unwrap();
            })
        })
        .collect();
    let writes = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (l, block, stop, writes) = (l.clone(), block.clone(), stop.clone(), writes.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    l.write_lock().unwrap();
                    // SAFETY: written under the write lock.
                    unsafe {
                        let p = (*block.0.get()).as_mut_ptr();
                        let g = p.read_volatile() / 2 + 1;
                        p.write_volatile(2 * g - 1);
                        for w in 1..=WORDS {
                            p.add(w).write_volatile(g);
                            std::hint::spin_loop();
                        }
                        p.write_volatile(2 * g);
                    }
                    writes.fetch_add(1, Ordering::Relaxed);
                    l.write_unlock().unwrap();
                    std::thread::sleep(Duration::from_micros(100));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(millis));
    stop.store(true, Ordering::Relaxed);
    for h in readers.into_iter().chain(writers) {
        h.join().unwrap();
    }
    // SAFETY: all threads joined.
    let g = unsafe { (*block.0.get())[0] };
    let w = writes.load(Ordering::Relaxed);
    assert_eq!(g, 2 * w, "seed {seed:#x}: writer updates lost");
    assert!(!l.is_busy());
    (reads.load(Ordering::Relaxed), w)
}

#[test]
fn rwlock_readers_and_writers_never_overlap() {
    let _s = serial();
    let _storm = Storm::start();
    let l = Arc::new(BrLock::new());
    let (r, w) = rwlock_workload(&l, 1500, seed());
    assert!(r > 100 && w > 10, "reads {r} writes {w}");
}

#[test]
fn rwlock_on_forced_fallback() {
    let _s = serial();
    plocks::force_fallback(true);
    let l = Arc::new(BrLock::new());
    let (r, w) = rwlock_workload(&l, 500, seed());
    plocks::force_fallback(false);
    assert!(r > 100 && w > 10, "reads {r} writes {w}");
}

#[test]
fn holder_migrates_and_releases_elsewhere() {
    let _s = serial();
    let cpus = allowed();
    let m = PercpuMutex::new();
    for &c in &cpus {
        rseq::topology::set_thread_affinity(&[c]).unwrap();
        let i = m.lock().unwrap();
        if m.uses_rseq() && rseq::mode().is_fast() {
            assert_eq!(i, c as usize, "the current CPU's lock");
        }
        let other = cpus[(cpus.iter().position(|&x| x == c).unwrap() + 1) % cpus.len()];
        rseq::topology::set_thread_affinity(&[other]).unwrap();
        // Another thread cannot release it, and cannot take it.
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(m.unlock(i), Err(Error::NotOwner));
                assert_eq!(m.try_lock_index(i), Err(Error::Busy));
            });
        });
        m.unlock(i).unwrap();
        assert_eq!(m.unlock(i), Err(Error::NotOwner));
    }
    rseq::topology::set_thread_affinity(&cpus).unwrap();
}

#[test]
fn bad_input_is_refused() {
    let m = PercpuMutex::new();
    let n = m.count();
    assert_eq!(m.lock_index(n), Err(Error::InvalidArgument));
    assert_eq!(m.unlock(n), Err(Error::InvalidArgument));
    assert_eq!(m.unlock(0), Err(Error::NotOwner));
    m.lock_index(0).unwrap();
    assert_eq!(m.lock_index(0), Err(Error::Deadlock));
    assert_eq!(m.try_lock_index(0), Err(Error::Deadlock));
    m.unlock(0).unwrap();
    let l = BrLock::new();
    assert_eq!(l.write_unlock(), Err(Error::NotOwner));
    l.write_lock().unwrap();
    assert_eq!(l.write_lock(), Err(Error::Deadlock));
    assert_eq!(l.read_lock(), Err(Error::Deadlock));
    l.write_unlock().unwrap();
}

#[test]
fn waiters_sleep_while_a_holder_is_preempted() {
    // A holder that sleeps 300 ms: 4 waiters must not burn that time spinning.
    let _s = serial();
    let m = Arc::new(PercpuMutex::new());
    m.lock_index(0).unwrap();
    let usage = || {
        // SAFETY: getrusage into a local.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(ru.ru_utime) + t(ru.ru_stime)
    };
    let start = usage();
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                m.lock_index(0).unwrap();
                m.unlock(0).unwrap();
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    m.unlock(0).unwrap();
    for h in hs {
        h.join().unwrap();
    }
    let cpu = usage() - start;
    // 4 spinning waiters would use ~0.6 s of CPU on 2 vCPUs; sleeping ones a few ms.
    assert!(cpu < 0.15, "waiters used {cpu:.3} s of CPU while the holder slept 0.3 s");
}

// ---- Fork -------------------------------------------------------------------------------

#[test]
fn fork_with_locks_held_by_other_threads() {
    let _s = serial();
    let m = Arc::new(PercpuMutex::new());
    let l = Arc::new(BrLock::new());
    let (held, go) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let t = {
        let (m, l, held, go) = (m.clone(), l.clone(), held.clone(), go.clone());
        std::thread::spawn(move || {
            m.lock_index(0).unwrap();
            l.read_lock().unwrap();
            held.store(true, Ordering::SeqCst);
            while !go.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            l.read_unlock();
            m.unlock(0).unwrap();
        })
    };
    while !held.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    let mine = if m.count() > 1 { 1 } else { 0 };
    if mine != 0 {
        m.lock_index(mine).unwrap();
    }
    // SAFETY: the child only uses the locks (no allocation-free guarantee is needed: the
    // forking thread holds no allocator lock here) and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let ok = (|| {
            // Held by a thread the child does not have: stays held.
            if m.try_lock_index(0) != Err(Error::Busy) {
                return 10;
            }
            if mine != 0 {
                // Held by this thread: still ours.
                if m.unlock(mine).is_err() {
                    return 11;
                }
            }
            // The current CPU's lock, away from CPU 0 (whose lock stays held: lock() there
            // would wait forever, as documented).
            let away: Vec<u32> = allowed().into_iter().filter(|&c| c != 0).collect();
            if away.is_empty() || rseq::topology::set_thread_affinity(&away).is_err() {
                return 0;
            }
            for _ in 0..1000 {
                let i = match m.lock() {
                    Ok(i) => i,
                    Err(_) => return 12,
                };
                if i == 0 || m.unlock(i).is_err() {
                    return 13;
                }
                if m.count() == 1 {
                    break;
                }
            }
            // A reader inside in the parent keeps writers out in the child; readers work.
            if l.read_lock().is_err() {
                return 14;
            }
            l.read_unlock();
            if !l.is_busy() {
                return 15;
            }
            0
        })();
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(ok) };
    }
    let mut status = 0;
    // SAFETY: waiting for our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    go.store(true, Ordering::SeqCst);
    t.join().unwrap();
    if mine != 0 {
        m.unlock(mine).unwrap();
    }
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
}

// ---- Registration modes, in child processes ---------------------------------------------

const CHILD_ENV: &str = "PLOCKS_TEST_CHILD_MODE";

/// The workload of a child process (does nothing unless run as one).
#[test]
fn child_workload() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let _s = serial();
    let m = plocks::rseq_mode();
    match mode.as_str() {
        "reserved" => assert!(m == plocks::Mode::Registered || m.is_fast(), "mode {m:?}"),
        "enosys" => assert_eq!(m, plocks::Mode::Unavailable { errno: libc::ENOSYS }),
        "libc" => assert!(m.is_fast(), "mode {m:?}"),
        other => panic!("unknown mode {other}"),
    }
    let start = Instant::now();
    let _storm = Storm::start();
    let mx = Arc::new(PercpuMutex::new());
    mutex_workload(&mx, 10_000, true, seed());
    let l = Arc::new(BrLock::new());
    let (r, w) = rwlock_workload(&l, 500, seed());
    assert!(r > 100 && w > 10);
    println!("PLOCKS_CHILD_DONE mode={mode} {:?} in {:?}", plocks::rseq_mode(), start.elapsed());
}

fn run_child(mode: &str, configure: impl FnOnce(&mut Command)) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_workload", "--nocapture", "--test-threads=1"]).env(CHILD_ENV, mode);
    configure(&mut cmd);
    let out = cmd.output().expect("run the test binary as a child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child ({mode}) failed: {}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains(&format!("PLOCKS_CHILD_DONE mode={mode}")), "child did not run:\n{stdout}\n{stderr}");
}

#[test]
fn exact_in_libc_owned_mode() {
    let _s = serial();
    run_child("libc", |_| {});
}

#[test]
fn exact_when_glibc_only_reserves_the_area() {
    let _s = serial();
    run_child("reserved", |cmd| {
        cmd.env("GLIBC_TUNABLES", "glibc.pthread.rseq=0");
    });
}

#[test]
fn exact_when_rseq_is_denied() {
    let _s = serial();
    run_child("enosys", |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: the hook only makes system calls (prctl).
        unsafe {
            cmd.pre_exec(rseq::testing::deny_rseq_with_enosys);
        }
    });
}

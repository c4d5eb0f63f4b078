//! A signal handler that adds through a freshly `dlopen`ed copy of the foundation while the
//! thread it interrupted is inside `malloc`. The first access to a dlopened library's
//! thread-local storage in a thread goes through `__tls_get_addr`, which allocates the
//! thread's block with `malloc`: from a handler that interrupted `malloc` (holding its arena
//! lock) that deadlocks. The foundation keeps no thread-local state on any operation path,
//! so the handler's add must complete, in every thread, and every add must count.
//! Run under `GLIBC_TUNABLES=glibc.pthread.rseq=0`, where every thread's first operation
//! registers the area (formerly recorded in a thread-local).

use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use workspace_tests::{child_setup, run_child, RseqCopy, Setup};

const THREADS: usize = 1500;
const ALIVE: usize = 6;

static COPY: AtomicPtr<RseqCopy> = AtomicPtr::new(std::ptr::null_mut());
static HANDLED: AtomicU64 = AtomicU64::new(0);
/// Kernel thread ids of the workers alive now (0: free slot).
static ALIVE_TIDS: [AtomicI32; ALIVE] = [const { AtomicI32::new(0) }; ALIVE];

extern "C" fn on_signal(_: libc::c_int) {
    let copy = COPY.load(Ordering::Acquire);
    if !copy.is_null() {
        // SAFETY: the copy is leaked for the whole run; `add` is a plain C call.
        unsafe { (*copy).add(1, false) };
        HANDLED.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn handler_adds_while_the_thread_is_in_malloc() {
    let out = run_child("child_handler_in_malloc", Setup::Reserved);
    assert!(out.contains("handler adds in malloc: exact"), "{out}");
}

#[test]
#[ignore = "child role of handler_adds_while_the_thread_is_in_malloc"]
fn child_handler_in_malloc() {
    assert_eq!(child_setup(), Some(Setup::Reserved), "runs as a child");
    // A watchdog: a deadlocked handler never lets the run finish.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        eprintln!("HANG: a signal handler that interrupted malloc never returned");
        std::process::exit(3);
    });
    let copy: &'static RseqCopy = Box::leak(Box::new(RseqCopy::load("copy-malloc.so")));
    COPY.store(copy as *const RseqCopy as *mut RseqCopy, Ordering::Release);
    // SAFETY: a plain sigaction; the handler only makes async-signal-safe calls (the copy's
    // add, an atomic increment).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let storm = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            // SAFETY: getpid has no preconditions.
            let pid = unsafe { libc::getpid() };
            while !stop.load(Ordering::Relaxed) {
                for slot in &ALIVE_TIDS {
                    let tid = slot.load(Ordering::Acquire);
                    // SAFETY: tgkill to a thread of this process; a thread that exited
                    // meanwhile answers ESRCH (tids are not reused within this short run).
                    if tid != 0 && unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR1) } == 0 {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };
    let started = Instant::now();
    for batch in 0..THREADS / ALIVE {
        let workers: Vec<_> = (0..ALIVE)
            .map(|slot| {
                std::thread::spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
                    ALIVE_TIDS[slot].store(tid, Ordering::Release);
                    let t0 = Instant::now();
                    let mut keep: Vec<Vec<u8>> = Vec::new();
                    let mut x = (batch * ALIVE + slot) as u64 | 1;
                    // Mostly inside malloc and free, for a few milliseconds.
                    while t0.elapsed() < Duration::from_millis(3) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        keep.push(vec![0u8; 16 + (x % 4000) as usize]);
                        if keep.len() > 64 {
                            keep.swap_remove((x >> 20) as usize % keep.len());
                        }
                    }
                    ALIVE_TIDS[slot].store(0, Ordering::Release);
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    storm.join().unwrap();
    let handled = HANDLED.load(Ordering::Relaxed);
    assert!(handled > 1000, "only {handled} signals handled ({} sent)", sent.load(Ordering::Relaxed));
    assert_eq!(copy.sum(), handled, "adds made in handlers were lost");
    println!(
        "{THREADS} threads, {handled} handler adds in {:.1} s, {} registrations",
        started.elapsed().as_secs_f64(),
        copy.registered_by_us()
    );
    println!("handler adds in malloc: exact");
}

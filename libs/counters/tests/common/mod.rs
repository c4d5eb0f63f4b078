//! Shared by the integration tests: serialisation, a SIGUSR1 handler that adds to a
//! counter, signal storms, and the paths of the built library.

#![allow(dead_code)]

use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pcounters::Counter;

/// Raw handle of the counter the signal handler adds to (0: none).
pub static HANDLER_COUNTER: AtomicU64 = AtomicU64::new(0);
/// What the handler adds each time.
pub const HANDLER_AMOUNT: i64 = 5;
/// Signals handled while a handler counter was set and the add succeeded.
pub static HANDLED: AtomicU64 = AtomicU64::new(0);
/// Handlers running right now.
static IN_HANDLER: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    let raw = HANDLER_COUNTER.load(Ordering::SeqCst);
    if raw != 0 && Counter::from_raw(raw).try_add(HANDLER_AMOUNT).is_ok() {
        HANDLED.fetch_add(1, Ordering::Relaxed);
    }
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
}

/// Tests that use signals, affinity or the process-wide fallback switch hold this for their
/// whole run.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs the SIGUSR1 handler, adding to `c` from now on (and resets the handled count).
pub fn handler_adds_to(c: Counter) {
    // SAFETY: a plain sigaction whose handler only does async-signal-safe work (atomics and
    // a lock-free counter add).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    HANDLED.store(0, Ordering::Relaxed);
    HANDLER_COUNTER.store(c.to_raw(), Ordering::Release);
}

/// Stops the handler from adding; returns how much it added in total. Waits for handlers
/// that saw the counter before it was withdrawn.
pub fn handler_stop() -> i64 {
    HANDLER_COUNTER.store(0, Ordering::SeqCst);
    while IN_HANDLER.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
    HANDLED.load(Ordering::Relaxed) as i64 * HANDLER_AMOUNT
}

/// A thread sending SIGUSR1 every `interval`, either to the given threads or to the process.
pub struct Storm {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    sender: Option<std::thread::JoinHandle<()>>,
}

impl Storm {
    /// Signals random threads of `targets` (all must stay alive until [`Storm::stop`]), or the
    /// whole process (any thread not blocking SIGUSR1) when `targets` is empty.
    pub fn start(targets: Vec<libc::pthread_t>, interval: Duration) -> Storm {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let sender = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                // Sleep as long as asked, not the default 50 us longer.
                // SAFETY: plain prctl on the calling thread.
                unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
                let mut x = 0x9e37_79b9_7f4a_7c15u64;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // SAFETY: targets stay alive until `stop` (caller's contract); kill on our
                    // own pid is always valid.
                    let r = unsafe {
                        if targets.is_empty() {
                            libc::kill(libc::getpid(), libc::SIGUSR1)
                        } else {
                            libc::pthread_kill(targets[(x as usize) % targets.len()], libc::SIGUSR1)
                        }
                    };
                    if r == 0 {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(interval);
                }
            })
        };
        Storm { stop, sent, sender: Some(sender) }
    }

    /// Stops sending; returns how many signals were sent.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sender.take() {
            s.join().unwrap();
        }
        self.sent.load(Ordering::Relaxed)
    }
}

/// Runs `threads` workers calling `work(i)` under a storm aimed at them; returns the number
/// of signals sent. Signalling stops before any worker is joined.
pub fn with_storm<F>(threads: usize, interval: Duration, work: F) -> u64
where
    F: Fn(usize) + Send + Sync + 'static,
{
    let work = Arc::new(work);
    let start = Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (work, start) = (work.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                work(i);
            })
        })
        .collect();
    let storm = Storm::start(handles.iter().map(|h| h.as_pthread_t()).collect(), interval);
    start.wait();
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let sent = storm.stop();
    for h in handles {
        if let Err(e) = h.join() {
            std::panic::resume_unwind(e);
        }
    }
    sent
}

/// The directory cargo builds this profile's artifacts into (`target/<profile>`), found
/// from the test executable (`target/<profile>/deps/<test>-<hash>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(|deps| deps.parent()).expect("test executable is in target/<profile>/deps").to_path_buf()
}

/// The cdylib built together with the rlib this test links (the library's crate types
/// include cdylib). It is `target/<profile>/deps/libpcounters.so`: `cargo test` does not
/// copy it up to `target/<profile>/`, so the copy there may be stale or missing.
pub fn cdylib() -> PathBuf {
    let dir = profile_dir();
    let p = dir.join("deps/libpcounters.so");
    if p.is_file() {
        return p;
    }
    let p = dir.join("libpcounters.so");
    assert!(p.is_file(), "libpcounters.so not found in {}: build it with cargo build -p counters", dir.display());
    p
}

/// A fresh empty directory under the system's temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "pcounters-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// A small xorshift generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Forks; the child runs `child` (single-threaded) and exits with its result. Returns the
/// child's exit status.
pub fn in_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only uses the library (whose lock is handled by its fork handlers),
    // the allocator (fork-safe in glibc) and `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // A child stuck on a lock inherited taken dies of SIGALRM instead of hanging the test.
        // SAFETY: alarm has no preconditions.
        unsafe { libc::alarm(20) };
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(100);
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just created.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    libc::WEXITSTATUS(status)
}

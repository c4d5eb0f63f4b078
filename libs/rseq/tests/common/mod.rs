//! Shared by the integration tests: worker threads under a signal storm.

#![allow(dead_code)]

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// Signal handlers installed by the tests call this, if set, so that operations also run
/// inside handlers (interrupting the same operation on the same thread).
pub static HANDLER_HOOK: AtomicU64 = AtomicU64::new(0);
/// Number of signals handled.
pub static HANDLED: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    let hook = HANDLER_HOOK.load(Ordering::Relaxed);
    if hook != 0 {
        // SAFETY: the hook is a `fn()` stored by `set_handler_hook`.
        let f: fn() = unsafe { std::mem::transmute::<usize, fn()>(hook as usize) };
        f();
    }
}

/// Storms share the handler, its hook and the process-wide fallback switch: tests that
/// use them hold this guard for their whole run.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long each storm worker keeps operating at least.
pub const RUN: Duration = Duration::from_millis(400);

/// Longest a storm keeps going while it waits for enough signals and a restart (slow
/// machines, emulators that rarely interrupt inside a section).
pub const MAX_RUN: Duration = Duration::from_secs(20);

/// Signals a storm sends at least before its workers may stop.
pub const MIN_SIGNALS: u64 = 150;

/// Set by the storm when its workers may stop: `RUN` has passed, `MIN_SIGNALS` were sent
/// and a critical section was restarted (or `MAX_RUN` has passed, or the run has no
/// critical sections to restart).
static ENOUGH: AtomicBool = AtomicBool::new(false);

/// Calls `op` in batches until the storm says enough; returns how many calls were made.
/// Outside a storm it runs for `RUN`.
pub fn for_a_while(mut op: impl FnMut(u64)) -> u64 {
    let end = std::time::Instant::now() + MAX_RUN;
    let mut n = 0u64;
    while !ENOUGH.load(Ordering::Relaxed) && std::time::Instant::now() < end {
        for _ in 0..1000 {
            op(n);
            n += 1;
        }
    }
    n
}

/// Installs the SIGUSR1 handler used by storms.
pub fn install_handler() {
    // SAFETY: a plain sigaction with a handler that only does async-signal-safe work.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
}

/// Result of a storm run.
pub struct StormReport {
    /// Critical sections restarted, summed over the workers.
    pub aborts: u64,
    /// Fallback operations of the workers.
    pub fallback_ops: u64,
    /// Signals sent.
    pub signals: u64,
}

/// Runs `threads` workers, each calling `work(worker_index)` once, while another thread
/// sends SIGUSR1 to random workers every `interval` (several kHz); the handler calls `hook`.
/// Returns the abort and fallback counts of the run (handlers included).
pub fn storm<F>(threads: usize, interval: Duration, hook: Option<fn()>, work: F) -> StormReport
where
    F: Fn(usize) + Send + Sync + 'static,
{
    install_handler();
    HANDLED.store(0, Ordering::Relaxed);
    ENOUGH.store(false, Ordering::Relaxed);
    let aborts_at_start = rseq::stats().aborts;
    let fallbacks_at_start = rseq::stats().fallback_ops;
    let started = std::time::Instant::now();
    HANDLER_HOOK.store(hook.map_or(0, |f| f as usize as u64), Ordering::Relaxed);
    let work = Arc::new(work);
    let start = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::new();
    for i in 0..threads {
        let (work, start) = (work.clone(), start.clone());
        handles.push(std::thread::spawn(move || {
            start.wait();
            work(i);
        }));
    }
    let tids: Vec<libc::pthread_t> = handles.iter().map(|h| h.as_pthread_t()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            while !stop.load(Ordering::Relaxed) {
                let elapsed = started.elapsed();
                let restarted = rseq::stats().aborts > aborts_at_start;
                // A run forced onto the fallback path has nothing to restart.
                let nothing_to_restart = rseq::mode() == rseq::Mode::Disabled;
                if elapsed >= RUN
                    && sent.load(Ordering::Relaxed) >= MIN_SIGNALS
                    && (restarted || nothing_to_restart || elapsed >= MAX_RUN)
                {
                    ENOUGH.store(true, Ordering::Relaxed);
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let t = tids[(x as usize) % tids.len()];
                // SAFETY: the thread is joined only after `stop`, so `t` is alive.
                if unsafe { libc::pthread_kill(t, libc::SIGUSR1) } == 0 {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(interval);
            }
        })
    };
    start.wait();
    // Keep signalling until every worker has finished (normally or not), and stop before
    // any is joined: a joined thread's pthread_t must not be signalled.
    while !handles.iter().all(|h| h.is_finished()) {
        if started.elapsed() > MAX_RUN + Duration::from_secs(10) {
            ENOUGH.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    for h in handles {
        if let Err(e) = h.join() {
            std::panic::resume_unwind(e);
        }
    }
    HANDLER_HOOK.store(0, Ordering::Relaxed);
    // Process-wide counts of this copy over the storm (the tests hold `serial`, so nothing
    // else runs operations meanwhile).
    StormReport {
        aborts: rseq::stats().aborts - aborts_at_start,
        fallback_ops: rseq::stats().fallback_ops - fallbacks_at_start,
        signals: sent.load(Ordering::Relaxed),
    }
}

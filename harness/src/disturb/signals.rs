//! Signal storms: bursts of a real-time signal to the workers (aborts inside critical
//! sections). The handler only counts.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::Engine;

/// Signals seen by the storm handler.
static SIGNALS_RECEIVED: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_storm_signal(_: libc::c_int) {
    SIGNALS_RECEIVED.fetch_add(1, Ordering::Relaxed);
}

/// The storm signal: the first real-time signal glibc leaves to programs (real-time signals
/// queue, so every one sent is delivered).
fn storm_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Installs the storm handler (once per run process, before the workers start).
pub(crate) fn install_handler() {
    // SAFETY: installing a handler that only increments an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_storm_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(storm_signal(), &sa, std::ptr::null_mut());
    }
}

/// Signals the handler saw so far.
pub(crate) fn received() -> u64 {
    SIGNALS_RECEIVED.load(Ordering::Relaxed)
}

impl Engine {
    /// One storm: `count` signals to the workers, starting at the one `target` picks.
    pub(crate) fn signal_storm(&mut self, target: u32, count: u32) -> String {
        let ctx = self.ctx.clone();
        let tids = ctx.workers.lock().unwrap().clone();
        if tids.is_empty() {
            return "skipped: no worker".into();
        }
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let mut sent = 0;
        for i in 0..count {
            let tid = tids[(target as usize + i as usize) % tids.len()];
            // SAFETY: tgkill to a thread of this process; a thread that exited gives ESRCH.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, storm_signal()) } == 0 {
                sent += 1;
            }
        }
        self.signals_sent += sent;
        format!("{sent} signals to {} threads", tids.len().min(count as usize))
    }
}

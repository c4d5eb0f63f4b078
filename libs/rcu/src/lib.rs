//! Per-CPU read-copy-update on restartable sequences, without thread registration
//! (`libprcu.so`; C API in `include/prcu.h`, design in `libs/rcu/README.md`).
//!
//! ```
//! let t = prcu::read_lock();
//! // ... read RCU-protected data ...
//! prcu::read_unlock(t).unwrap();
//! prcu::synchronize();
//! ```
//!
//! Readers add to per-CPU lock/unlock counts of one of two periods by rseq sections on the
//! CPU they run on, with compiler barriers only; a grace period costs O(possible CPUs), not
//! O(threads). Any thread can read at any time (just created, exiting, in a signal handler),
//! because nothing is per thread.

mod callbacks;
mod check;
mod domain;
pub mod ffi;
use futex_lock as lock;
pub mod map;
mod unload;

use core::ffi::c_void;
use core::sync::atomic::{AtomicU8, Ordering};

pub use domain::{
    current_index, fast_path, grace_periods, poll, poll_cookie, read_lock, read_unlock, set_index, set_stall_limit,
    stalls, synchronize, wait_for, Token, TokenError,
};
pub use map::{Map, MapError};
pub use rseq::Index;

rseq::init_at_load!();

#[used]
#[link_section = ".init_array"]
static PRCU_INIT_AT_LOAD: extern "C" fn() = {
    extern "C" fn prcu_init_at_load() {
        domain::init_from_env();
        ensure_atfork();
        unload::register_exit_mark();
    }
    prcu_init_at_load
};

/// An open read section that ends when dropped.
pub struct Guard(Token);

impl Guard {
    /// Enters a read section.
    pub fn new() -> Guard {
        Guard(read_lock())
    }
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = read_unlock(self.0);
    }
}

/// Queues `func(arg)` to run once, on the library's worker thread, after a grace period.
///
/// # Safety
/// `func(arg)` must be safe to call once from another thread at any later time.
pub unsafe fn call_rcu(func: unsafe extern "C" fn(*mut c_void), arg: *mut c_void) {
    callbacks::call(callbacks::Callback { func, arg });
}

/// Queues a Rust closure to run after a grace period.
pub fn defer(f: impl FnOnce() + Send + 'static) {
    unsafe extern "C" fn run_boxed(arg: *mut c_void) {
        // SAFETY: `arg` came from Box::into_raw below and is run once.
        let f = unsafe { Box::from_raw(arg.cast::<Box<dyn FnOnce() + Send>>()) };
        f();
    }
    let b: Box<Box<dyn FnOnce() + Send>> = Box::new(Box::new(f));
    // SAFETY: the closure is Send and run exactly once.
    unsafe { call_rcu(run_boxed, Box::into_raw(b).cast()) };
}

/// Waits until every callback queued before the call has run.
pub fn barrier() {
    callbacks::barrier();
}

/// A cookie for a grace period that the worker is asked to run; [`poll`] says when it has
/// elapsed.
pub fn start_poll() -> u64 {
    let c = poll_cookie();
    callbacks::want_grace_period();
    c
}

/// Turns checking mode on or off (see `prcu_set_checking`).
pub fn set_checking(on: bool) {
    check::set_enabled(on);
}

#[doc(hidden)]
pub use callbacks::set_take_pause_for_tests;

/// Counts for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub grace_periods: u64,
    pub callbacks_queued: u64,
    pub callbacks_run: u64,
    pub callback_batches: u64,
    pub stalls: u64,
}

/// The counts now.
pub fn stats() -> Stats {
    let (q, r, b) = callbacks::counts();
    Stats {
        grace_periods: grace_periods(),
        callbacks_queued: q,
        callbacks_run: r,
        callback_batches: b,
        stalls: stalls(),
    }
}

/// Writes `msg` to stderr and aborts (misuse that would otherwise deadlock or corrupt).
pub(crate) fn fatal(msg: &str) -> ! {
    let mut m = String::from(msg);
    m.push('\n');
    // SAFETY: a byte buffer to stderr; abort has no preconditions.
    unsafe {
        libc::write(2, m.as_ptr().cast(), m.len());
        libc::abort()
    }
}

static ATFORK: AtomicU8 = AtomicU8::new(0);

fn ensure_atfork() {
    if ATFORK.swap(1, Ordering::AcqRel) != 0 {
        return;
    }
    // SAFETY: plain functions of this library; libc drops them when it is unloaded.
    unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork_in_parent), Some(after_fork_in_child)) };
}

extern "C" fn before_fork() {
    if check::holds_token() {
        fatal("prcu: fork called inside a read-side critical section (this thread holds a token)");
    }
    check::OPEN.raw_lock();
    callbacks::before_fork();
}

extern "C" fn after_fork_in_parent() {
    callbacks::after_fork_in_parent();
    // SAFETY: taken in before_fork by this thread.
    unsafe { check::OPEN.raw_unlock() };
}

extern "C" fn after_fork_in_child() {
    callbacks::after_fork_in_child();
    // SAFETY: the child's only thread took it in before_fork.
    unsafe { check::OPEN.reset_in_child() };
    // The parent's other threads and their sections are gone.
    check::OPEN.lock().clear();
    domain::after_fork_in_child();
}

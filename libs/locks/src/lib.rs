//! Per-CPU locks on restartable sequences: `libplocks.so` (C API in [`ffi`], header
//! `include/plocks.h`) and a Rust library.
//!
//! - [`PercpuMutex`]: one mutex per possible CPU. [`PercpuMutex::lock`] takes the lock of
//!   the CPU the caller runs on with one rseq load-compare-store and returns its index; the
//!   holder may migrate and release it from any CPU. For per-CPU data that no single rseq
//!   commit can update.
//! - [`BrLock`]: a big-reader lock. A reader adds to its CPU's words only (one rseq add to
//!   lock, one to unlock, no fence); a writer sets the writer word, fences every CPU with
//!   `membarrier(PRIVATE_EXPEDITED_RSEQ)` and waits for the readers to drain.
//!
//! Waiters spin briefly and then sleep on a futex, so a preempted holder costs the others
//! no CPU. Threads without a usable rseq area take compare-and-swap and atomic paths on the
//! same protocols (see each module). Nothing is per thread, so thread exit, `dlclose` and
//! reloading need nothing.
//!
//! ```
//! let m = plocks::PercpuMutex::new();
//! let i = m.lock().unwrap();
//! m.unlock(i).unwrap();
//! let rw = plocks::BrLock::new();
//! rw.read_lock().unwrap();
//! rw.read_unlock();
//! rw.write_lock().unwrap();
//! rw.write_unlock().unwrap();
//! ```
//!
//! # Fork
//!
//! A child made by `fork` keeps every lock in the state it had: a lock held by another
//! thread of the parent stays held in the child forever (try-lock answers `Busy`, destroy
//! `Busy`); locks the forking thread held are still held by the child's thread and can be
//! released there. A child that forks while other threads hold locks must not wait for them.

#![warn(missing_docs)]

mod error;
pub mod ffi;
mod futex;
mod mutex;
mod rwlock;
pub mod slice;

pub use error::Error;
pub use mutex::PercpuMutex;
pub use rseq::Mode;
pub use rwlock::BrLock;
pub use slice::{slice_stats, slice_supported, SliceStats};

rseq::init_at_load!();

/// The rseq registration state of the calling thread (as the foundation sees it).
pub fn rseq_mode() -> Mode {
    rseq::mode()
}

/// Sends every later operation of this library copy down the fallback path (`true`), or
/// lets it use rseq again. For tests and benchmarks.
pub fn force_fallback(on: bool) {
    rseq::force_fallback(on);
}

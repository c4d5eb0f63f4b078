//! The delete fence: `membarrier(PRIVATE_EXPEDITED_RSEQ)`, shared by concurrent deletes.
//!
//! A delete that has stored `DEAD` in a handle word needs one membarrier that *began after*
//! that store: when it returns, every rseq add that read the old handle has been restarted
//! (and then refuses) or has committed. Membarriers are numbered as they begin
//! (`STARTED`); `COMPLETED` is the number of the last one that returned. A delete reads
//! `STARTED` after its store and needs `COMPLETED` to pass that number. Deletes take turns
//! on a lock; one that gets it and finds itself covered by a membarrier another delete
//! issued meanwhile returns without a system call. So while one membarrier is in progress
//! (it can wait for seconds behind a CPU hotplug operation), any number of deletes queue
//! up and are all covered by the next one, instead of issuing one each.
//!
//! Fork: a child inherits the lock as it was; [`reset_in_child`] frees it (the threads that
//! could hold it are gone). The membarrier registration is per address space: a child
//! registers again on first use.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use rseq::membarrier::{private_expedited_rseq, register_private_expedited_rseq, MembarrierError};

use crate::lock::Lock;

static LOCK: Lock<()> = Lock::new(());
/// Membarriers begun (the number of the latest).
static STARTED: AtomicU64 = AtomicU64::new(0);
/// Number of the latest membarrier that returned.
static COMPLETED: AtomicU64 = AtomicU64::new(0);
/// Fences that found themselves covered by another delete's membarrier.
static COVERED: AtomicU64 = AtomicU64::new(0);

/// Test hook: while set, a delete waits inside the fence (holding its lock) before it
/// looks at what is covered.
static HOLD: AtomicBool = AtomicBool::new(false);

const UNKNOWN: u8 = 0;
const AVAILABLE: u8 = 1;
const UNAVAILABLE: u8 = 2;
/// Whether this kernel has the rseq membarrier, found out on first use. Not a OnceLock: a
/// fork may catch a thread registering, and a child must not wait for a thread it does not
/// have. Racing registrations are harmless (the kernel's registration is idempotent).
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

fn available() -> bool {
    let mut state = STATE.load(Ordering::Acquire);
    if state == UNKNOWN {
        state = if register_private_expedited_rseq().is_ok() { AVAILABLE } else { UNAVAILABLE };
        STATE.store(state, Ordering::Release);
    }
    state == AVAILABLE
}

/// Returns once a membarrier that began after the caller's `DEAD` store (made with
/// `SeqCst` before the call) has returned. Does nothing where the kernel lacks the rseq
/// membarrier (the registry's reuse delay then covers every add).
pub(crate) fn fence_rseq_adds() {
    // SeqCst, after the caller's SeqCst store: any membarrier numbered above `seen` took its
    // number after this load, hence after the store, and was issued after that.
    let seen = STARTED.load(Ordering::SeqCst);
    let _turn = LOCK.lock();
    while HOLD.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    if !available() {
        return;
    }
    if COMPLETED.load(Ordering::Acquire) > seen {
        COVERED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let n = STARTED.fetch_add(1, Ordering::SeqCst) + 1;
    // A forked child has a new address space without the registration: register again.
    if let Err(MembarrierError::NotRegistered) = private_expedited_rseq(None) {
        if register_private_expedited_rseq().is_ok() {
            let _ = private_expedited_rseq(None);
        }
    }
    COMPLETED.store(n, Ordering::Release);
}

/// In a forked child: frees the lock a thread of the parent may have held at `fork`.
pub(crate) fn reset_in_child() {
    // SAFETY: the child runs only the thread that forked, which is not inside a fence.
    unsafe { LOCK.reset_in_child() };
}

/// Makes deletes wait inside their fence (`true`) until released (`false`).
pub(crate) fn hold(on: bool) {
    HOLD.store(on, Ordering::SeqCst);
}

/// Membarriers issued by deletes, and delete fences that another delete's membarrier covered.
pub(crate) fn stats() -> (u64, u64) {
    (STARTED.load(Ordering::Relaxed), COVERED.load(Ordering::Relaxed))
}

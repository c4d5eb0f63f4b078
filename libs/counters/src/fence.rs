//! The delete fence: `membarrier(PRIVATE_EXPEDITED_RSEQ)`, shared by concurrent deletes.
//!
//! A delete that has stored `DEAD` in a handle word needs one membarrier that *began after*
//! that store: when it returns, every rseq add that read the old handle has been restarted
//! (and then refuses) or has committed. Membarriers are numbered as they begin
//! (`STARTED`); `COMPLETED` is the number of the last one that returned. A delete reads
//! `STARTED` after its store ([`needed`]) and needs `COMPLETED` to reach one more. Deletes
//! take turns on a lock; one that gets it and finds itself covered by a membarrier another
//! delete issued meanwhile returns without a system call. So while one membarrier is in
//! progress (it can wait for seconds behind a CPU hotplug operation), any number of deletes
//! queue up and are all covered by the next one.
//!
//! A membarrier that fails is not a fence: `COMPLETED` does not move, the slot stays out of
//! reuse, and the next delete's membarrier covers it.
//!
//! Kernels without the rseq membarrier (before 5.10): nothing could fence rseq adds, so
//! [`init`] sends every add of this library to the fallback path for good (the in-flight
//! counts cover those), and every fence is trivially complete.
//!
//! Fork: a child inherits the lock as it was; [`reset_in_child`] frees it (the threads that
//! could hold it are gone). The membarrier registration is per address space:
//! `rseq::membarrier::fence_rseq` registers again in a child.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use rseq::membarrier::{supported_commands, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ};

use crate::lock::Lock;

static LOCK: Lock<()> = Lock::new(());
/// Membarriers begun (the number of the latest).
static STARTED: AtomicU64 = AtomicU64::new(0);
/// Number of the latest membarrier that returned successfully.
static COMPLETED: AtomicU64 = AtomicU64::new(0);
/// Fences that found themselves covered by another delete's membarrier.
static COVERED: AtomicU64 = AtomicU64::new(0);
/// Membarriers that failed.
static FAILED: AtomicU64 = AtomicU64::new(0);

/// Test hook: while set, a delete waits inside the fence (holding its lock) before it
/// looks at what is covered.
static HOLD: AtomicBool = AtomicBool::new(false);
/// Test hook: while set, membarriers are treated as failed.
static FAIL: AtomicBool = AtomicBool::new(false);

const UNKNOWN: u8 = 0;
const AVAILABLE: u8 = 1;
const UNAVAILABLE: u8 = 2;
/// Whether this kernel has the rseq membarrier. An atomic, not a once-cell: a fork may catch
/// a thread finding out, and a child must not wait for a thread it does not have.
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Finds out whether the rseq membarrier exists; without it, forces this library's adds onto
/// the fallback path. Run at load (and on first create, for the Rust library). Idempotent.
pub(crate) fn init() {
    if STATE.load(Ordering::Acquire) != UNKNOWN {
        return;
    }
    let has = supported_commands().is_ok_and(|m| m & MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ as u32 != 0);
    if !has {
        rseq::force_fallback(true);
    }
    STATE.store(if has { AVAILABLE } else { UNAVAILABLE }, Ordering::Release);
}

/// Whether critical sections may be used at all (false: the kernel cannot fence them).
pub(crate) fn rseq_allowed() -> bool {
    init();
    STATE.load(Ordering::Acquire) == AVAILABLE
}

/// The fence number a delete needs, read after its `SeqCst` `DEAD` store: any membarrier
/// numbered at least this took its number after the store, hence was issued after it.
pub(crate) fn needed() -> u64 {
    STARTED.load(Ordering::SeqCst) + 1
}

/// Whether a fence numbered `needed` or later has completed.
pub(crate) fn is_complete(needed: u64) -> bool {
    STATE.load(Ordering::Acquire) == UNAVAILABLE || COMPLETED.load(Ordering::Acquire) >= needed
}

/// Makes sure a fence numbered `needed` or later has completed, issuing a membarrier when no
/// other delete's covers it. `false` when the membarrier failed (nothing is fenced then).
pub(crate) fn complete(needed: u64) -> bool {
    init();
    let _turn = LOCK.lock();
    while HOLD.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    if is_complete(needed) {
        COVERED.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    let n = STARTED.fetch_add(1, Ordering::SeqCst) + 1;
    let ok = !FAIL.load(Ordering::SeqCst) && rseq::membarrier::fence_rseq(None).is_ok();
    if ok {
        COMPLETED.store(n, Ordering::Release);
    } else {
        FAILED.fetch_add(1, Ordering::Relaxed);
    }
    ok
}

/// In a forked child: frees the lock a thread of the parent may have held at `fork`, and
/// counts every fence as done (no other thread, hence no add in flight, exists).
pub(crate) fn reset_in_child() {
    // SAFETY: the child runs only the thread that forked, which is not inside a fence.
    unsafe { LOCK.reset_in_child() };
    COMPLETED.store(STARTED.load(Ordering::Relaxed), Ordering::Release);
}

/// Makes deletes wait inside their fence (`true`) until released (`false`).
pub(crate) fn hold(on: bool) {
    HOLD.store(on, Ordering::SeqCst);
}

/// Makes membarriers count as failed (`true`) until called with `false`.
pub(crate) fn fail(on: bool) {
    FAIL.store(on, Ordering::SeqCst);
}

/// Membarriers issued by deletes, delete fences that another delete's membarrier covered,
/// and membarriers that failed.
pub(crate) fn stats() -> (u64, u64, u64) {
    (STARTED.load(Ordering::Relaxed), COVERED.load(Ordering::Relaxed), FAILED.load(Ordering::Relaxed))
}

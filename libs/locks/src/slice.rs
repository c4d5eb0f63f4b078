//! Holding a lock with the scheduler time-slice extension (Linux 7.x): an option per lock,
//! chosen at creation ([`PercpuMutex::with_slice_extension`](crate::PercpuMutex::with_slice_extension),
//! [`BrLock::with_slice_extension`](crate::BrLock::with_slice_extension) for the writer;
//! `PLOCK_SLICE_EXTENSION` in C).
//!
//! A holder of such a lock asks the kernel not to preempt it right after taking the lock
//! ([`rseq::slice::request`]) and ends the request right after releasing it, giving the CPU
//! back with `rseq_slice_yield` when the kernel granted an extension meanwhile. The request
//! belongs to the thread (its rseq area), so a lock released on another CPU ends it all the
//! same. What the request did is kept in the lock, next to the lock word, by the holder: an
//! inner lock taken while an outer one already requested records "nested" and leaves the
//! request alone at its release. Where the kernel lacks the extension the option costs two
//! loads per lock and changes nothing else.

use core::sync::atomic::{AtomicU64, Ordering};

use rseq::slice::{Released, Token};

/// Recorded in a held lock: this hold made no request (option off, unsupported, nested).
pub(crate) const NONE: u8 = 0;
/// Recorded in a held lock: this hold set the request and must end it.
pub(crate) const REQUESTED: u8 = 1;

static REQUESTS: AtomicU64 = AtomicU64::new(0);
static NESTED: AtomicU64 = AtomicU64::new(0);
static GRANTS: AtomicU64 = AtomicU64::new(0);
static YIELDED: AtomicU64 = AtomicU64::new(0);

/// Counters of this library copy's time-slice requests, process-wide since it was loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SliceStats {
    /// Holds that set the request.
    pub requests: u64,
    /// Holds that found a request or grant already active (an outer holder) and left it.
    pub nested: u64,
    /// Releases that found the extension granted, and so called `rseq_slice_yield`.
    pub grants: u64,
    /// Of those, yields the kernel reported as giving the CPU up within the grant.
    pub yielded: u64,
}

/// This copy's time-slice counters.
pub fn slice_stats() -> SliceStats {
    SliceStats {
        requests: REQUESTS.load(Ordering::Relaxed),
        nested: NESTED.load(Ordering::Relaxed),
        grants: GRANTS.load(Ordering::Relaxed),
        yielded: YIELDED.load(Ordering::Relaxed),
    }
}

/// Whether the kernel offers the extension to this process's threads (see
/// [`rseq::slice::supported`]). Where it does not, the option changes nothing.
pub fn slice_supported() -> bool {
    rseq::slice::supported()
}

/// Called by a new holder of a lock with the option: the value to record in the lock.
#[inline]
pub(crate) fn begin() -> u8 {
    match rseq::slice::request() {
        Token::Requested => {
            REQUESTS.fetch_add(1, Ordering::Relaxed);
            REQUESTED
        }
        Token::Nested => {
            NESTED.fetch_add(1, Ordering::Relaxed);
            NONE
        }
        Token::Unsupported => NONE,
    }
}

/// Called after the release of a lock whose hold recorded `state`.
#[inline]
pub(crate) fn end(state: u8) {
    if state != REQUESTED {
        return;
    }
    if let Released::Yielded { yielded } = rseq::slice::release(Token::Requested) {
        GRANTS.fetch_add(1, Ordering::Relaxed);
        if yielded {
            YIELDED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

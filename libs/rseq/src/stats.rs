//! Counts that make a silent fall-back to the slow path visible: aborts, fallback
//! operations and registration outcomes, per copy of the crate (process-wide). No
//! per-thread counts: those would need thread-local storage on the operation paths.

use core::sync::atomic::{AtomicU64, Ordering};

const SHARDS: usize = 8;

#[repr(align(128))]
struct Shard(AtomicU64);

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: Shard = Shard(AtomicU64::new(0));

static ABORTS: [Shard; SHARDS] = [ZERO; SHARDS];
static FALLBACK_OPS: [Shard; SHARDS] = [ZERO; SHARDS];
static REGISTERED_BY_US: AtomicU64 = AtomicU64::new(0);
static REGISTERED_BY_PEER: AtomicU64 = AtomicU64::new(0);
static REGISTRATION_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Process-wide counts for this copy of the crate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Critical sections restarted by the kernel.
    pub aborts: u64,
    /// Operations that ran on the fallback path.
    pub fallback_ops: u64,
    /// Threads for which this copy registered libc's reserved area.
    pub registered_by_us: u64,
    /// Registrations that found the area already registered (`EBUSY`; rare, since a
    /// registered area is recognised without asking the kernel).
    pub registered_by_peer: u64,
    /// Threads whose registration failed (they use the fallback path; each thread tries
    /// once per copy at most, and not at all when a peer's attempt already failed).
    pub registration_failures: u64,
}

fn shard() -> usize {
    // Threads have distinct thread pointers; spread them over the shards.
    (crate::arch::thread_pointer() as usize >> 12) % SHARDS
}

fn sum(shards: &[Shard; SHARDS]) -> u64 {
    shards.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
}

#[cold]
pub(crate) fn note_abort() {
    ABORTS[shard()].0.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn note_fallback() {
    FALLBACK_OPS[shard()].0.fetch_add(1, Ordering::Relaxed);
}

/// Outcome of one registration attempt.
pub(crate) enum Registered {
    ByUs,
    ByPeer,
    Failed,
}

pub(crate) fn note_registration(outcome: Registered) {
    let counter = match outcome {
        Registered::ByUs => &REGISTERED_BY_US,
        Registered::ByPeer => &REGISTERED_BY_PEER,
        Registered::Failed => &REGISTRATION_FAILURES,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Process-wide counts of this copy of the crate.
pub fn stats() -> Stats {
    Stats {
        aborts: sum(&ABORTS),
        fallback_ops: sum(&FALLBACK_OPS),
        registered_by_us: REGISTERED_BY_US.load(Ordering::Relaxed),
        registered_by_peer: REGISTERED_BY_PEER.load(Ordering::Relaxed),
        registration_failures: REGISTRATION_FAILURES.load(Ordering::Relaxed),
    }
}

/// Counts one operation that a library ran on a fallback path of its own (outside
/// [`crate::fallback`]), so that [`stats`] shows it.
pub fn note_fallback_op() {
    note_fallback();
}

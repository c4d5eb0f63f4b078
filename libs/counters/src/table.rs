//! The handle table and the lock-free paths (add, read) that go through it.
//!
//! A handle is a `u64`: bits 0-23 the slot, bit 24 the resolved index (`mm_cid` when set),
//! bits 25-63 the slot's generation (from 1). The table is a fixed array of chunk
//! pointers; a chunk holds [`CHUNK_LEN`] entries and is published once, never moved and
//! never freed, so a lookup needs no lock and a stale or forged handle only ever reads a
//! live entry (or finds no chunk) and is refused by the generation check.
//!
//! Each entry owns two per-CPU `u64` words for good: one written by rseq critical
//! sections, one by the atomic fallback path. A deleted slot is reused by a later counter
//! only after a quarantine (see the registry), and the new counter starts from a
//! *baseline*, the sum of the words when it was created, instead of zeroing them: an add
//! that passed its handle check just before the delete may still land in the words, and
//! zeroing would race with it. Reads subtract the baseline.

use core::ptr;
use core::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use rseq::pool::PercpuPool;
use rseq::{percpu_sum, Index, Outcome, PercpuPtr, ThreadArea};

use crate::error::Error;

/// Bits of the slot field of a handle.
const SLOT_FIELD_MASK: u64 = (1 << 24) - 1;
/// Set in handles of counters indexed by `mm_cid`.
const INDEX_BIT: u64 = 1 << 24;
const GEN_SHIFT: u32 = 25;
/// Largest generation a slot can reach (never in practice: 2^39 reuses of one slot).
const MAX_GENERATION: u64 = (1 << (64 - GEN_SHIFT)) - 1;

const CHUNK_BITS: u32 = 10;
/// Entries per chunk.
pub(crate) const CHUNK_LEN: usize = 1 << CHUNK_BITS;
const CHUNK_MASK: usize = CHUNK_LEN - 1;
/// Most counters that can exist at once.
pub const MAX_COUNTERS: usize = 1 << 20;
const NCHUNKS: usize = MAX_COUNTERS / CHUNK_LEN;

/// The handle value of a slot without a live counter: its slot field is out of range, so
/// no handle that passes the lookup can equal it.
const DEAD: u64 = u64::MAX;

/// Distance between two CPUs' copies of a word (the pool's stride).
pub(crate) const STRIDE: usize = rseq::pool::DEFAULT_STRIDE;

static CHUNKS: [AtomicPtr<Entry>; NCHUNKS] = [const { AtomicPtr::new(ptr::null_mut()) }; NCHUNKS];
/// Copies of every word (possible CPUs), set before the first chunk is published.
static NCPUS: AtomicUsize = AtomicUsize::new(0);

/// One slot of the table, on its own cache line.
#[repr(C, align(64))]
pub(crate) struct Entry {
    /// The live counter's handle, or [`DEAD`].
    handle: AtomicU64,
    /// The last generation handed out for this slot (0: never used).
    generation: AtomicU64,
    /// Sum of the words when the live counter was created.
    baseline: AtomicU64,
    /// Copy 0 of the rseq-written word; fixed when the chunk is made.
    words: *mut u64,
    /// Copy 0 of the fallback word; fixed when the chunk is made.
    fallback: *mut AtomicU64,
}

impl Entry {
    #[inline(always)]
    fn words(&self) -> PercpuPtr<u64> {
        PercpuPtr::new(self.words, STRIDE)
    }

    #[inline(always)]
    fn fallback(&self) -> PercpuPtr<AtomicU64> {
        PercpuPtr::new(self.fallback, STRIDE)
    }

    fn sum(&self) -> u64 {
        // SAFETY: both word sets come from the pool and have a copy for each of the NCPUS
        // possible CPUs; they are never unmapped.
        unsafe { percpu_sum(self.words(), self.fallback(), NCPUS.load(Ordering::Relaxed)) }
    }
}

#[inline(always)]
fn slot_of(h: u64) -> usize {
    (h & SLOT_FIELD_MASK) as usize
}

#[inline(always)]
fn index_of_handle(h: u64) -> Index {
    if h & INDEX_BIT != 0 {
        Index::MmCid
    } else {
        Index::CpuId
    }
}

/// The entry of slot `slot`, if its chunk exists.
#[inline(always)]
fn entry(slot: usize) -> Option<&'static Entry> {
    let chunk = CHUNKS.get(slot >> CHUNK_BITS)?.load(Ordering::Acquire);
    if chunk.is_null() {
        return None;
    }
    // SAFETY: a published chunk is an initialised array of CHUNK_LEN entries that is never
    // freed or moved; the offset is below CHUNK_LEN.
    Some(unsafe { &*chunk.add(slot & CHUNK_MASK) })
}

/// The entry of `h` when `h` is the handle of a live counter.
#[inline(always)]
fn live(h: u64) -> Result<&'static Entry, Error> {
    match entry(slot_of(h)) {
        Some(e) if e.handle.load(Ordering::Acquire) == h => Ok(e),
        _ => Err(classify(h)),
    }
}

/// Why `h` is not live: a handle this table once issued is `NotFound`, anything else
/// `InvalidArgument`.
#[cold]
#[inline(never)]
fn classify(h: u64) -> Error {
    let generation = h >> GEN_SHIFT;
    match entry(slot_of(h)) {
        Some(e) if generation != 0 && generation <= e.generation.load(Ordering::Acquire) => Error::NotFound,
        _ => Error::InvalidArgument,
    }
}

/// Adds `amount` to the counter `h`: one rseq per-CPU add (or an atomic add on the
/// fallback word). Lock-free and async-signal-safe.
///
/// The handle check is made *inside* the critical section ([`ThreadArea::try_add_if_equal`]
/// on the entry's handle word): [`retire`] stores `DEAD` and the delete then issues
/// `membarrier(PRIVATE_EXPEDITED_RSEQ)` ([`crate::fence`]), after which no rseq add that
/// saw the old handle can still commit. Only fallback-path adds (threads without rseq) check outside a section;
/// the registry's reuse delay covers them.
///
/// The inlined part is the chunk lookup and a single critical section; a restart, or a
/// thread without an rseq area, continues out of line, which keeps the common path free of
/// register spills.
#[inline(always)]
pub(crate) fn add(h: u64, amount: i64) -> Result<(), Error> {
    let Some(e) = entry(slot_of(h)) else { return Err(Error::InvalidArgument) };
    let index = index_of_handle(h);
    if let Some(area) = ThreadArea::current() {
        // SAFETY: the words of an entry are pool memory with a copy for every possible CPU,
        // written only by critical sections; the handle word is an AtomicU64 of the entry
        // (never freed); `index` was resolved when the counter was created (a forged handle
        // with the other index bit fails the handle comparison).
        match unsafe { area.try_add_if_equal(index, e.handle.as_ptr(), h, e.words(), amount as u64) } {
            (Outcome::Committed, _) => return Ok(()),
            (Outcome::CompareFailed, _) => return Err(classify(h)),
            (Outcome::Aborted, _) => {}
        }
    }
    add_slow(e, h, index, amount)
}

#[cold]
#[inline(never)]
fn add_slow(e: &Entry, h: u64, index: Index, amount: i64) -> Result<(), Error> {
    if let Some(area) = ThreadArea::current() {
        for _ in 0..rseq::ops::MAX_RESTARTS {
            // SAFETY: as in `add`.
            match unsafe { area.try_add_if_equal(index, e.handle.as_ptr(), h, e.words(), amount as u64) } {
                (Outcome::Committed, _) => return Ok(()),
                (Outcome::CompareFailed, _) => return Err(classify(h)),
                (Outcome::Aborted, _) => {}
            }
        }
    }
    if e.handle.load(Ordering::Acquire) != h {
        return Err(classify(h));
    }
    // SAFETY: the fallback set is a distinct pool word per CPU, only written atomically.
    unsafe { rseq::fallback::add(e.fallback(), amount as u64) };
    Ok(())
}

/// The exact value of the counter `h`: the sum of both word sets over every possible CPU,
/// less the baseline. Lock-free and async-signal-safe.
pub(crate) fn get(h: u64) -> Result<i64, Error> {
    let e = live(h)?;
    let baseline = e.baseline.load(Ordering::Relaxed);
    let sum = e.sum();
    // Seqlock-style: make sure the slot still holds this counter, so the baseline and the
    // sum belong to the same one.
    fence(Ordering::Acquire);
    if e.handle.load(Ordering::Relaxed) != h {
        return Err(Error::NotFound);
    }
    Ok(sum.wrapping_sub(baseline) as i64)
}

/// The index the counter `h` uses.
pub(crate) fn index(h: u64) -> Result<Index, Error> {
    live(h)?;
    Ok(index_of_handle(h))
}

/// Checks that `h` is live and returns its slot (caller holds the registry lock).
pub(crate) fn live_slot(h: u64) -> Result<usize, Error> {
    live(h).map(|_| slot_of(h))
}

/// The live handle of `slot` (caller holds the registry lock and knows the slot is live).
pub(crate) fn handle_of(slot: usize) -> u64 {
    entry(slot).map_or(DEAD, |e| e.handle.load(Ordering::Relaxed))
}

/// Makes chunk `k` (slots `k * CHUNK_LEN ..`), with its per-CPU words from `pool`.
/// Caller holds the registry lock.
pub(crate) fn alloc_chunk(pool: &PercpuPool, k: usize) -> Result<(), Error> {
    debug_assert!(CHUNKS[k].load(Ordering::Relaxed).is_null());
    NCPUS.store(pool.ncpus(), Ordering::Relaxed);
    let bytes = CHUNK_LEN * 8;
    let words = pool.alloc(bytes, 64).ok_or(Error::OutOfMemory)?;
    let Some(fallback) = pool.alloc(bytes, 64) else {
        // SAFETY: `words` was just allocated with this size and nobody has seen it.
        unsafe { pool.free(words, bytes) };
        return Err(Error::OutOfMemory);
    };
    let layout = std::alloc::Layout::new::<[Entry; CHUNK_LEN]>();
    // SAFETY: the layout has a non-zero size.
    let chunk = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<Entry>();
    if chunk.is_null() {
        // SAFETY: as above, both slots are unused.
        unsafe {
            pool.free(words, bytes);
            pool.free(fallback, bytes);
        }
        return Err(Error::OutOfMemory);
    }
    for i in 0..CHUNK_LEN {
        // SAFETY: `chunk` is a fresh, zeroed (valid: atomics and null pointers) array of
        // CHUNK_LEN entries that no other thread can see yet.
        unsafe {
            let e = chunk.add(i);
            (*e).handle = AtomicU64::new(DEAD);
            (*e).words = words.base().add(i * 8).cast();
            (*e).fallback = fallback.base().add(i * 8).cast();
        }
    }
    CHUNKS[k].store(chunk, Ordering::Release);
    Ok(())
}

/// Gives `slot` (whose chunk exists and which holds no live counter) a new counter with
/// `index`, starting at zero, and returns its handle. Caller holds the registry lock.
pub(crate) fn publish(slot: usize, index: Index) -> Result<u64, Error> {
    let e = entry(slot).ok_or(Error::Internal)?;
    let generation = e.generation.load(Ordering::Relaxed) + 1;
    if generation > MAX_GENERATION {
        return Err(Error::NoSpace);
    }
    let index_bit = if index == Index::MmCid { INDEX_BIT } else { 0 };
    let h = (generation << GEN_SHIFT) | index_bit | slot as u64;
    e.generation.store(generation, Ordering::Relaxed);
    e.baseline.store(e.sum(), Ordering::Relaxed);
    e.handle.store(h, Ordering::Release);
    Ok(h)
}

/// Marks the live counter `h` deleted and returns its slot. Caller holds the registry lock,
/// and calls [`crate::fence::fence_rseq_adds`] before the slot may be reused.
pub(crate) fn retire(h: u64) -> Result<usize, Error> {
    let e = live(h)?;
    e.handle.store(DEAD, Ordering::SeqCst);
    Ok(slot_of(h))
}

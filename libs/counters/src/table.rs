//! The handle table and the lock-free paths (add, read) that go through it.
//!
//! A handle is a `u64`: bits 0-23 the slot, bit 24 the resolved index (`mm_cid` when set),
//! bits 25-63 the slot's generation (from 1). The table is a fixed array of chunk
//! pointers; a chunk holds [`CHUNK_LEN`] entries and is published once, never moved and
//! never freed, so a lookup needs no lock and a stale or forged handle only ever reads a
//! live entry (or finds no chunk) and is refused by the generation check.
//!
//! Each entry owns three per-CPU `u64` words for good: one written by rseq critical
//! sections, one by the atomic fallback path, and the fallback path's in-flight count.
//! A deleted slot is reused only once no add that saw its old handle can still land:
//! - an rseq add checks the handle inside its critical section, and the delete's
//!   `membarrier(PRIVATE_EXPEDITED_RSEQ)` restarts every section that might have seen it;
//! - a fallback add raises the in-flight count of its CPU copy, checks the handle, adds,
//!   and lowers the count; the delete waits, after marking the slot dead, until every copy
//!   of the count has been seen at zero. (An add that raised after the dead mark sees it and
//!   backs out; one that raised before is waited for.) No timer is involved.
//!
//! A new counter starts from a *baseline*, the sum of the words when it was created, which
//! reads subtract: nothing can land in the words any more by then, and not zeroing leaves
//! untouched CPU copies unpopulated.

use core::ptr;
use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use rseq::pool::PercpuPool;
use rseq::{percpu_sum, Index, Outcome, PercpuArray, PercpuPtr, ThreadArea};

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
static NCPUS: AtomicUsize = AtomicUsize::new(1);

/// Test hook: while set, a fallback-path add that passed its handle check waits before it
/// adds (see [`park_fallback_adds`]).
static PARK_FALLBACK_ADDS: AtomicBool = AtomicBool::new(false);
/// Fallback adds parked by the hook right now.
static PARKED: AtomicU64 = AtomicU64::new(0);

/// Bytes of one chunk of entries.
pub(crate) const CHUNK_BYTES: usize = core::mem::size_of::<[Entry; CHUNK_LEN]>();

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
    /// Copy 0 of the fallback path's in-flight count; fixed when the chunk is made.
    inflight: *mut AtomicU64,
    /// Set by the first negative add of the live counter: it is exported as a gauge.
    may_decrease: AtomicBool,
}

#[inline(always)]
fn ncpus() -> u32 {
    NCPUS.load(Ordering::Relaxed) as u32
}

impl Entry {
    /// The rseq-written words, indexed by `index` (resolved: it comes from a handle made by
    /// `publish`, or a forged handle whose comparison inside the section fails first).
    #[inline(always)]
    fn words(&self, index: Index) -> PercpuArray<u64> {
        // SAFETY: pool memory with a copy for each of the NCPUS possible CPUs, never unmapped.
        unsafe { PercpuArray::from_raw_resolved(PercpuPtr::new(self.words, STRIDE), ncpus(), index) }
    }

    #[inline(always)]
    fn fallback(&self) -> PercpuArray<AtomicU64> {
        // SAFETY: as in `words`; the index does not matter on the fallback path.
        unsafe { PercpuArray::from_raw_resolved(PercpuPtr::new(self.fallback, STRIDE), ncpus(), Index::CpuId) }
    }

    #[inline(always)]
    fn inflight(&self) -> PercpuArray<AtomicU64> {
        // SAFETY: as in `fallback`.
        unsafe { PercpuArray::from_raw_resolved(PercpuPtr::new(self.inflight, STRIDE), ncpus(), Index::CpuId) }
    }

    fn sum(&self) -> u64 {
        // SAFETY: both word sets are alive (see `words`).
        unsafe { percpu_sum(&self.words(Index::CpuId), &self.fallback()) }
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
/// saw the old handle can still commit. Fallback-path adds are covered by the in-flight
/// counts (see the module).
///
/// The inlined part is the chunk lookup and a single critical section; a restart, an
/// unregistered area, or a thread without an rseq area continues out of line, which keeps
/// the common path free of register spills.
#[inline(always)]
pub(crate) fn add(h: u64, amount: i64) -> Result<(), Error> {
    let Some(e) = entry(slot_of(h)) else { return Err(Error::InvalidArgument) };
    if amount < 0 && !e.may_decrease.load(Ordering::Relaxed) {
        note_decrease(e, h);
    }
    if let Some(area) = ThreadArea::current() {
        // SAFETY: the words of an entry are alive and written only by critical sections; the
        // handle word is an AtomicU64 of the entry (never freed).
        match unsafe { area.try_add_if_equal(e.handle.as_ptr(), h, &e.words(index_of_handle(h)), amount as u64) } {
            (Outcome::Committed, _) => return Ok(()),
            (Outcome::CompareFailed, _) => return Err(classify(h)),
            (Outcome::Aborted | Outcome::Unusable, _) => {}
        }
    }
    add_slow(e, h, amount)
}

/// Marks the live counter `h` as one that may decrease (a gauge in the export).
#[cold]
#[inline(never)]
fn note_decrease(e: &Entry, h: u64) {
    if e.handle.load(Ordering::Acquire) == h {
        e.may_decrease.store(true, Ordering::Relaxed);
    }
}

#[cold]
#[inline(never)]
fn add_slow(e: &Entry, h: u64, amount: i64) -> Result<(), Error> {
    let words = e.words(index_of_handle(h));
    // Restarts, and registers the area if nobody tried in this thread yet.
    // SAFETY: as in `add`.
    match rseq::ops::run_section(|area| unsafe { area.try_add_if_equal(e.handle.as_ptr(), h, &words, amount as u64) }) {
        Some((Outcome::Committed, _)) => Ok(()),
        Some(_) => Err(classify(h)),
        None => add_fallback(e, h, amount),
    }
}

/// The fallback path: raise the in-flight count, check the handle, add, lower the count.
fn add_fallback(e: &Entry, h: u64, amount: i64) -> Result<(), Error> {
    let cpu = rseq::fallback::current_index() % ncpus() as usize;
    // SAFETY: `cpu < ncpus`: live pool words, only used atomically.
    let (inflight, word) = unsafe { (&*e.inflight().ptr().at(cpu), &*e.fallback().ptr().at(cpu)) };
    // SeqCst on both sides (here: raise, then read the handle; in `wait_for_fallback_adds`:
    // the DEAD store, then read the count): if this add sees the live handle, the delete sees
    // it in flight.
    inflight.fetch_add(1, Ordering::SeqCst);
    if e.handle.load(Ordering::SeqCst) != h {
        inflight.fetch_sub(1, Ordering::Release);
        return Err(classify(h));
    }
    if PARK_FALLBACK_ADDS.load(Ordering::Relaxed) {
        park();
    }
    rseq::stats::note_fallback_op();
    word.fetch_add(amount as u64, Ordering::Relaxed);
    inflight.fetch_sub(1, Ordering::Release);
    Ok(())
}

#[cold]
fn park() {
    PARKED.fetch_add(1, Ordering::SeqCst);
    while PARK_FALLBACK_ADDS.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    PARKED.fetch_sub(1, Ordering::SeqCst);
}

/// Test hook: while `true`, fallback-path adds stop between their handle check and their
/// add (the window a delete must wait for). Returns how many are parked right now.
pub(crate) fn park_fallback_adds(on: Option<bool>) -> u64 {
    if let Some(on) = on {
        PARK_FALLBACK_ADDS.store(on, Ordering::SeqCst);
    }
    PARKED.load(Ordering::SeqCst)
}

/// Waits until no fallback add that may have seen the live handle of `slot` is still in
/// flight: each CPU copy of its in-flight count is seen at zero once, after the caller's
/// `DEAD` store (adds that raise later see `DEAD` and back out at once).
pub(crate) fn wait_for_fallback_adds(slot: usize) {
    if let Some(e) = entry(slot) {
        wait_inflight_zero(e);
    }
}

fn wait_inflight_zero(e: &Entry) {
    let inflight = e.inflight();
    for cpu in 0..inflight.ncpus() as usize {
        // SAFETY: `cpu < ncpus`: a live pool word.
        let count = unsafe { &*inflight.ptr().at(cpu) };
        let mut spins = 0u32;
        while count.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < 100 {
                core::hint::spin_loop();
            } else {
                // An add preempted, stopped or in a long signal handler between its raise and
                // its lower: sleep rather than burn the CPU it needs.
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
    }
}

/// In a forked child (only the forking thread exists): clears the in-flight counts that
/// threads of the parent left raised, so deletes in the child do not wait for them.
/// Caller holds the registry lock, `nslots` slots exist.
pub(crate) fn reset_inflight_in_child(nslots: usize) {
    for slot in 0..nslots {
        let Some(e) = entry(slot) else { continue };
        let inflight = e.inflight();
        for cpu in 0..inflight.ncpus() as usize {
            // SAFETY: as in `wait_for_fallback_adds`; read first so untouched copies stay
            // unpopulated.
            let count = unsafe { &*inflight.ptr().at(cpu) };
            if count.load(Ordering::Relaxed) != 0 {
                count.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// Chunks taken out of the table by [`unpublish_chunks`], for [`free_chunks`].
static UNPUBLISHED: [AtomicPtr<Entry>; NCHUNKS] = [const { AtomicPtr::new(ptr::null_mut()) }; NCHUNKS];

/// Removes every chunk from the table (adds and reads find no counter any more), keeping
/// them for [`wait_for_fallback_adds_raw`] and [`free_chunks`]. Caller holds the registry
/// lock.
pub(crate) fn unpublish_chunks() {
    for (k, c) in CHUNKS.iter().enumerate() {
        UNPUBLISHED[k].store(c.swap(ptr::null_mut(), Ordering::AcqRel), Ordering::Relaxed);
    }
}

fn unpublished_entry(slot: usize) -> Option<&'static Entry> {
    let chunk = UNPUBLISHED.get(slot >> CHUNK_BITS)?.load(Ordering::Relaxed);
    // SAFETY: an unpublished chunk is still allocated until `free_chunks`.
    (!chunk.is_null()).then(|| unsafe { &*chunk.add(slot & CHUNK_MASK) })
}

/// [`wait_for_fallback_adds`] for a slot of an unpublished chunk.
pub(crate) fn wait_for_fallback_adds_raw(slot: usize) {
    if let Some(e) = unpublished_entry(slot) {
        wait_inflight_zero(e);
    }
}

/// Frees the unpublished chunks.
///
/// # Safety
/// [`unpublish_chunks`] ran and no add or read uses an entry any more.
pub(crate) unsafe fn free_chunks(nslots: usize) {
    let layout = std::alloc::Layout::new::<[Entry; CHUNK_LEN]>();
    for c in UNPUBLISHED.iter().take(nslots.div_ceil(CHUNK_LEN)) {
        let chunk = c.swap(ptr::null_mut(), Ordering::Relaxed);
        if !chunk.is_null() {
            // SAFETY: allocated by `alloc_chunk` with this layout; nobody uses it.
            unsafe { std::alloc::dealloc(chunk.cast(), layout) };
        }
    }
}

/// Whether the live counter `h` ever received a negative add.
pub(crate) fn may_decrease(h: u64) -> bool {
    live(h).is_ok_and(|e| e.may_decrease.load(Ordering::Relaxed))
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
    NCPUS.store(pool.ncpus().max(1), Ordering::Relaxed);
    let bytes = CHUNK_LEN * 8;
    let mut parts = [None; 3];
    for part in parts.iter_mut() {
        *part = pool.alloc(bytes, 64);
    }
    let layout = std::alloc::Layout::new::<[Entry; CHUNK_LEN]>();
    // SAFETY: the layout has a non-zero size.
    let chunk = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<Entry>();
    let (Some(words), Some(fallback), Some(inflight), false) = (parts[0], parts[1], parts[2], chunk.is_null()) else {
        for p in parts.into_iter().flatten() {
            // SAFETY: allocated just above with this size; nobody has seen it.
            unsafe { pool.free(p, bytes) };
        }
        if !chunk.is_null() {
            // SAFETY: allocated just above with this layout.
            unsafe { std::alloc::dealloc(chunk.cast(), layout) };
        }
        return Err(Error::OutOfMemory);
    };
    for i in 0..CHUNK_LEN {
        // SAFETY: `chunk` is a fresh, zeroed (valid: atomics and null pointers) array of
        // CHUNK_LEN entries that no other thread can see yet.
        unsafe {
            let e = chunk.add(i);
            (*e).handle = AtomicU64::new(DEAD);
            (*e).words = words.base().add(i * 8).cast();
            (*e).fallback = fallback.base().add(i * 8).cast();
            (*e).inflight = inflight.base().add(i * 8).cast();
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
    e.may_decrease.store(false, Ordering::Relaxed);
    e.baseline.store(e.sum(), Ordering::Relaxed);
    e.handle.store(h, Ordering::Release);
    Ok(h)
}

/// Marks the live counter `h` deleted and returns its slot. Caller holds the registry lock;
/// before the slot may be reused, a fence ([`crate::fence`]) must cover the rseq adds and
/// [`wait_for_fallback_adds`] the fallback ones.
pub(crate) fn retire(h: u64) -> Result<usize, Error> {
    let e = live(h)?;
    e.handle.store(DEAD, Ordering::SeqCst);
    Ok(slot_of(h))
}

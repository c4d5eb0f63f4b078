//! The per-CPU layer: for every class up to 32 KiB, a per-CPU stack of free objects
//! (`rseq::PercpuStack`: pushed and popped by rseq critical sections, with a locked
//! fallback half for threads without rseq), all sharing one per-CPU "stopped" word so that
//! one fence drains a whole CPU cache. Plus per-CPU counters (misses, overflows, and hits
//! when statistics are on) added by rseq sections.
//!
//! The layer is built by the first allocation that wants it and published with one atomic
//! pointer; until then (and when building it failed, or while a recursive call comes from
//! inside the building — the per-CPU pool's own bookkeeping may allocate), every call goes
//! to the central layer. So nothing ever waits for it: a forked child or a signal handler
//! finds it built, not built, or being built, and is served in each case.
//!
//! Reclaiming: a cache of a CPU that went offline, that no thread may run on any more
//! (affinity, cpusets), or an `mm_cid` no longer in use, stops changing. Slow paths (a
//! refill or an overflow anywhere in the process) run a maintenance pass at most every
//! [`MAINTENANCE_MS`]: a cache that holds objects and whose activity (slow-path counts and
//! stack depths) did not change over two passes is drained to the central layer behind one
//! `membarrier(PRIVATE_EXPEDITED_RSEQ)` fence (CPU-targeted for `cpu_id` indexing, all CPUs
//! for `mm_cid`).

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering};

use rseq::pool::PercpuPool;
use rseq::{Index, PercpuArray, PercpuStack};

use crate::class::{self, NCACHED};
use crate::lock::SpinLock;
use crate::{central, meta, sys};

/// Shortest time between two maintenance passes.
pub const MAINTENANCE_MS: u64 = 50;

/// Per-CPU counters of the layer.
#[derive(Clone, Copy)]
pub struct Counter {
    words: PercpuArray<u64>,
    fallback: PercpuArray<AtomicU64>,
}

impl Counter {
    fn alloc(pool: &PercpuPool, index: Index) -> Option<Counter> {
        let words = pool.alloc_array(8, 8, index)?;
        let fallback = pool.alloc_array(8, 8, index)?;
        // SAFETY: zeroed 8-byte slots: valid u64 / AtomicU64 copies.
        Some(unsafe { Counter { words: words.cast(), fallback: fallback.cast() } })
    }

    #[inline]
    fn add(&self, n: u64) {
        // SAFETY: the arrays live as long as the layer (until unload).
        unsafe { rseq::percpu_add(&self.words, &self.fallback, n) };
    }

    /// Value of copy `i` (both words).
    pub fn at(&self, i: usize) -> u64 {
        // SAFETY: `i < ncpus` (callers iterate over the layer's indexes); live memory.
        unsafe {
            let w = AtomicU64::from_ptr(self.words.ptr().at(i)).load(Ordering::Relaxed);
            w.wrapping_add((*self.fallback.ptr().at(i)).load(Ordering::Relaxed))
        }
    }
}

/// The per-CPU layer.
pub struct Caches {
    /// Per-class stacks (classes `0..NCACHED`).
    pub stacks: [PercpuStack; NCACHED],
    /// Refills from the central layer.
    pub misses: Counter,
    /// Pushes that found the stack full (a batch went to the central layer).
    pub overflows: Counter,
    /// Objects handed out of a CPU cache (counted when statistics are on).
    pub hits: Counter,
    /// Number of copies.
    pub ncpus: usize,
    /// The index used.
    pub index: Index,
    /// Maintenance: per copy, the last activity seen and how many passes saw it unchanged.
    seen: *mut [u64; 2],
    /// Where a drain collects (class, object) pairs.
    drain_buf: *mut [u64; 2],
    pool: *mut PercpuPool,
}

/// Objects one CPU cache can hold at most: both halves of every stack.
const DRAIN_SLOTS: usize = {
    let mut c = 0;
    let mut n = 0;
    while c < NCACHED {
        n += 2 * class::cache_capacity(c);
        c += 1;
    }
    n
};

// SAFETY: everything inside is either per-CPU memory used through rseq sections and
// atomics, or `seen`, used under the maintenance lock.
unsafe impl Sync for Caches {}
// SAFETY: as above.
unsafe impl Send for Caches {}

const NONE: u8 = 0;
const BUILDING: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(NONE);
static CACHES: AtomicPtr<Caches> = AtomicPtr::new(ptr::null_mut());

/// The index asked for (`PALLOC_INDEX`, or [`set_index`] before the first allocation).
static WANT_MM_CID: AtomicBool = AtomicBool::new(true);
/// Whether per-CPU caching is off (`PALLOC_PERCPU=0`): everything goes to the central layer.
pub static DISABLED: AtomicBool = AtomicBool::new(false);
/// Whether hits are counted.
pub static COUNT_HITS: AtomicBool = AtomicBool::new(false);

/// Drains done and drains that failed (no membarrier, a concurrent drainer).
pub static DRAINS: AtomicU64 = AtomicU64::new(0);
/// See [`DRAINS`].
pub static DRAIN_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Objects moved back to the central layer by drains.
pub static DRAINED_OBJECTS: AtomicU64 = AtomicU64::new(0);

static MAINT: SpinLock<u64> = SpinLock::new(0);
static LAST_MAINT: AtomicU64 = AtomicU64::new(0);

/// Chooses the index before the layer is built; false once it is.
pub fn set_index(mm_cid: bool) -> bool {
    if STATE.load(Ordering::Acquire) != NONE {
        return false;
    }
    WANT_MM_CID.store(mm_cid, Ordering::Release);
    true
}

/// The layer, when built.
#[inline(always)]
pub fn get() -> Option<&'static Caches> {
    let p = CACHES.load(Ordering::Acquire);
    if p.is_null() {
        build_if_none()
    } else {
        // SAFETY: published once built; lives until unload.
        Some(unsafe { &*p })
    }
}

/// The layer if built, without building it.
#[inline(always)]
pub fn built() -> Option<&'static Caches> {
    let p = CACHES.load(Ordering::Acquire);
    // SAFETY: as in `get`.
    (!p.is_null()).then(|| unsafe { &*p })
}

#[cold]
fn build_if_none() -> Option<&'static Caches> {
    if STATE.load(Ordering::Acquire) != NONE
        || DISABLED.load(Ordering::Relaxed)
        || STATE.compare_exchange(NONE, BUILDING, Ordering::AcqRel, Ordering::Acquire).is_err()
    {
        return None;
    }
    let e = sys::errno();
    let built = build();
    sys::set_errno(e);
    match built {
        Some(c) => {
            CACHES.store(c, Ordering::Release);
            STATE.store(READY, Ordering::Release);
            // SAFETY: just published.
            Some(unsafe { &*c })
        }
        None => {
            STATE.store(FAILED, Ordering::Release);
            None
        }
    }
}

fn build() -> Option<*mut Caches> {
    // rseq::init finds the area with dlsym, which may allocate: those calls see BUILDING
    // and go to the central layer.
    rseq::init();
    let index = if WANT_MM_CID.load(Ordering::Acquire) { Index::MmCid } else { Index::CpuId }.resolve();
    let pool_rec = meta::alloc(core::mem::size_of::<PercpuPool>(), 64)?.cast::<PercpuPool>();
    let pool = PercpuPool::new(64 * 1024).ok()?;
    // SAFETY: a fresh record of the right size and alignment; written once.
    unsafe { pool_rec.write(pool) };
    // SAFETY: just written; lives until unload.
    let pool = unsafe { &*pool_rec };
    let stopped = PercpuStack::alloc_stopped_words(pool, index)?;
    let mut stacks: [Option<PercpuStack>; NCACHED] = [None; NCACHED];
    for (c, s) in stacks.iter_mut().enumerate() {
        *s = Some(PercpuStack::alloc_sharing_stopped(pool, class::cache_capacity(c), stopped)?);
    }
    let ncpus = pool.ncpus();
    let seen = meta::alloc(ncpus * 16, 64)?.cast::<[u64; 2]>();
    let drain_buf = meta::alloc(DRAIN_SLOTS * 16, 64)?.cast::<[u64; 2]>();
    let rec = meta::alloc(core::mem::size_of::<Caches>(), 64)?.cast::<Caches>();
    let caches = Caches {
        stacks: stacks.map(|s| s.expect("every stack was allocated above")),
        misses: Counter::alloc(pool, index)?,
        overflows: Counter::alloc(pool, index)?,
        hits: Counter::alloc(pool, index)?,
        ncpus,
        index,
        seen,
        drain_buf,
        pool: pool_rec,
    };
    // SAFETY: a fresh record of the right size and alignment.
    unsafe { rec.write(caches) };
    Some(rec)
}

impl Caches {
    /// Pops an object of class `c` from the calling CPU's cache.
    #[inline(always)]
    pub fn pop(&self, c: usize) -> Option<u64> {
        // SAFETY: the stacks live until unload.
        let r = unsafe { self.stacks[c].pop() }.map(|(v, _)| v);
        if r.is_some() && COUNT_HITS.load(Ordering::Relaxed) {
            self.hits.add(1);
        }
        r
    }

    /// Pushes an object of class `c` on the calling CPU's cache; `Err` when full.
    #[inline(always)]
    pub fn push(&self, c: usize, p: u64) -> Result<(), u64> {
        // SAFETY: as in `pop`.
        unsafe { self.stacks[c].push(p) }.map(|_| ())
    }

    /// A miss: refills the calling CPU's cache of class `c` from the central layer and
    /// returns one object (0: out of memory).
    #[cold]
    pub fn refill(&self, c: usize) -> u64 {
        self.misses.add(1);
        let mut buf = [0u64; class::MAX_BATCH];
        let n = central::take(c, &mut buf[..class::batch(c)]);
        if n == 0 {
            return 0;
        }
        let obj = buf[n - 1];
        if n > 1 {
            // SAFETY: as in `pop`.
            let (k, _) = unsafe { self.stacks[c].push_batch(&buf[..n - 1]) };
            central::give(c, &buf[k..n - 1]);
        }
        self.maintain();
        obj
    }

    /// An overflow: the calling CPU's cache of class `c` is full; moves a batch of it and
    /// `p` to the central layer.
    #[cold]
    pub fn overflow(&self, c: usize, p: u64) {
        self.overflows.add(1);
        let mut buf = [0u64; class::MAX_BATCH + 1];
        // SAFETY: as in `pop`.
        let (k, _) = unsafe { self.stacks[c].pop_batch(&mut buf[..class::batch(c)]) };
        buf[k] = p;
        central::give(c, &buf[..k + 1]);
        self.maintain();
    }

    /// Objects of class `c` cached on copy `i` (racy while in use).
    pub fn cached(&self, c: usize, i: usize) -> u64 {
        // SAFETY: as in `pop`.
        unsafe { self.stacks[c].len_at(i as u32) }.unwrap_or(0) as u64
    }

    /// Bytes cached on copy `i`.
    pub fn cached_bytes(&self, i: usize) -> u64 {
        (0..NCACHED).map(|c| self.cached(c, i) * class::class_size(c) as u64).sum()
    }

    fn activity(&self, i: usize) -> u64 {
        let mut a = self.misses.at(i).wrapping_mul(31).wrapping_add(self.overflows.at(i));
        for c in 0..NCACHED {
            a = a.wrapping_mul(0x100_0000_01b3).wrapping_add(self.cached(c, i));
        }
        a
    }

    /// A maintenance pass when one is due (see the module's documentation).
    fn maintain(&self) {
        let now = sys::coarse_ms();
        let last = LAST_MAINT.load(Ordering::Relaxed);
        if now.wrapping_sub(last) < MAINTENANCE_MS
            || LAST_MAINT.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let Some(_g) = MAINT.try_lock() else { return };
        let e = sys::errno();
        for i in 0..self.ncpus {
            let a = self.activity(i);
            // SAFETY: `seen` has `ncpus` entries, used under MAINT.
            let seen = unsafe { &mut *self.seen.add(i) };
            if a != seen[0] {
                *seen = [a, 0];
                continue;
            }
            seen[1] += 1;
            if seen[1] >= 2 && self.cached_bytes(i) > 0 {
                self.drain_locked(i);
                seen[0] = self.activity(i);
                seen[1] = 0;
            }
        }
        sys::set_errno(e);
    }

    /// Drains copy `i` of every class to the central layer (maintenance lock held): one
    /// stop and one fence for the whole CPU cache.
    fn drain_locked(&self, i: usize) -> bool {
        let mut n = 0usize;
        // SAFETY: as in `pop`; `out` only fills the drain buffer (it runs under fallback
        // locks, where no central lock may be taken), which holds both halves of every
        // stack (DRAIN_SLOTS) and is used under the maintenance lock only.
        let r = unsafe {
            PercpuStack::drain_sharing_stop(&self.stacks, i as u32, |c, v| {
                if n < DRAIN_SLOTS {
                    self.drain_buf.add(n).write([c as u64, v]);
                    n += 1;
                }
            })
        };
        // SAFETY: `n` entries were written above.
        let got = unsafe { core::slice::from_raw_parts(self.drain_buf, n) };
        let mut start = 0;
        let mut run = [0u64; 64];
        while start < got.len() {
            let c = got[start][0] as usize;
            let mut k = 0;
            while start < got.len() && got[start][0] as usize == c && k < run.len() {
                run[k] = got[start][1];
                k += 1;
                start += 1;
            }
            central::give(c, &run[..k]);
        }
        DRAINED_OBJECTS.fetch_add(n as u64, Ordering::Relaxed);
        match r {
            Ok(_) => {
                DRAINS.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                DRAIN_FAILURES.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Drains every copy (trim); returns whether every drain succeeded.
    pub fn drain_all(&self) -> bool {
        let _g = MAINT.lock();
        let mut ok = true;
        for i in 0..self.ncpus {
            if self.cached_bytes(i) > 0 {
                ok &= self.drain_locked(i);
            }
        }
        ok
    }

    /// Fork support: the maintenance lock and every fallback lock.
    fn hold(&self) {
        for s in &self.stacks {
            // SAFETY: live stacks; this thread holds none of their locks.
            unsafe { s.hold_fallback_locks() };
        }
    }

    /// See [`hold`].
    unsafe fn release_held(&self) {
        for s in &self.stacks {
            // SAFETY: forwarded contract.
            unsafe { s.release_fallback_locks() };
        }
    }

    /// Memory of the per-CPU pool.
    pub fn pool_bytes(&self) -> (usize, usize) {
        // SAFETY: the pool lives until unload.
        let p = unsafe { &*self.pool };
        (p.resident_bytes(), p.reserved_bytes())
    }
}

/// Fork support: takes the maintenance lock (no drain runs across `fork`) and every
/// fallback lock of the layer.
pub fn hold() {
    MAINT.hold();
    if let Some(c) = built() {
        c.hold();
    }
}

/// See [`hold`].
///
/// # Safety
/// After [`hold`], in the same thread or the child forked from it.
pub unsafe fn release_held() {
    // SAFETY: forwarded contract.
    unsafe {
        if let Some(c) = built() {
            c.release_held();
        }
        MAINT.release_held();
    }
}

/// In a forked child: a layer the parent was building when it forked will never be
/// finished; the child goes on without it.
pub fn after_fork_child() {
    let _ = STATE.compare_exchange(BUILDING, FAILED, Ordering::AcqRel, Ordering::Acquire);
}

/// At unload: drops the per-CPU pool and forgets the layer.
///
/// # Safety
/// Nothing uses the allocator any more.
pub unsafe fn unmap_all() {
    let p = CACHES.swap(ptr::null_mut(), Ordering::AcqRel);
    if !p.is_null() {
        // SAFETY: the pool was written at build time and is no longer used.
        unsafe { ptr::drop_in_place((*p).pool) };
    }
    STATE.store(NONE, Ordering::Release);
}

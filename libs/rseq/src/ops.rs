//! Per-CPU operations named by their effect.
//!
//! Two layers:
//! - `ThreadArea::try_*`: one critical section on the calling thread's area, reporting an
//!   [`Outcome`] (aborts are counted in [`crate::stats`]). `rseq_cs` is cleared on every exit.
//! - `percpu_*` and [`PercpuStack`]: the operation completed, restarting after aborts,
//!   registering the area when a section finds it unregistered, and run on the fallback path
//!   (atomics on a *separate* set of words, see [`crate::fallback`]) when the thread has no
//!   usable area, the index has no copy, the copy is stopped, or the section keeps being
//!   restarted. The result says which [`Path`] it took.
//!
//! Every operation takes its data as [`PercpuArray`]s, which carry the number of copies and
//! the resolved index: the bound check inside each section makes "the index is in range" an
//! invariant. What remains for the caller (the `unsafe` of these functions) is that the
//! arrays' memory is alive and that rseq-written words are written only by critical
//! sections — or, for a stack, by the thread that stopped its index ([`PercpuStack::drain`]).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::{self, STATUS_ABORTED, STATUS_COMMITTED, STATUS_COMPARE_FAILED, STATUS_UNUSABLE};
use crate::area::ThreadArea;
use crate::fallback;
use crate::membarrier::{self, MembarrierError};
use crate::percpu::PercpuArray;
use crate::pool::PercpuPool;
use crate::stats;

/// Which field of the area indexes a per-CPU structure. A structure is always indexed the
/// same way: a thread indexing by CPU and another by concurrency id may hold the same
/// index at the same time, so mixing them on one structure loses updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Index {
    /// The CPU number: below the number of possible CPUs.
    CpuId,
    /// The concurrency id (Linux 6.3+): compact, below the number of possible CPUs and of
    /// threads, so only the first few copies of a structure are touched.
    MmCid,
}

impl Index {
    /// The index a structure that asks for `self` gets on this kernel: `MmCid` becomes
    /// `CpuId` when the area does not carry `mm_cid` (feature size below 28, e.g. Linux 6.1).
    pub fn resolve(self) -> Index {
        match self {
            Index::MmCid if crate::area::feature_size() < 28 => Index::CpuId,
            other => other,
        }
    }

    /// A short stable name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Index::CpuId => "cpu_id",
            Index::MmCid => "mm_cid",
        }
    }

    /// Parses `cpu_id` or `mm_cid`.
    pub fn from_name(name: &str) -> Option<Index> {
        match name {
            "cpu_id" | "cpu" => Some(Index::CpuId),
            "mm_cid" | "cid" => Some(Index::MmCid),
            _ => None,
        }
    }
}

/// Result of one critical section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The commit store happened.
    Committed,
    /// The comparison failed (or the stack was full/empty); nothing was written.
    CompareFailed,
    /// The kernel restarted the section; nothing was committed.
    Aborted,
    /// The index the section loaded is unusable: the thread's area is not registered (its
    /// `cpu_id` is -1, -2 or a failure mark), the structure has no copy for it, or the copy
    /// is stopped. Nothing was touched.
    Unusable,
}

/// Which path a completed operation took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// A critical section on the thread's rseq area.
    Rseq,
    /// Atomics (or a lock) on the fallback words.
    Fallback,
}

/// Consecutive restarts after which an operation gives up on the critical section and
/// takes the fallback path (only reached under pathological interference, such as a
/// debugger single-stepping through the section).
pub const MAX_RESTARTS: u32 = 256;

// A chain of comparisons with "committed" first and no unreachable arm: a `match` with a
// panicking default compiled into a bounds check and an indirect jump through a table on
// every operation (the read lock of libs/rcu spent about 1 ns of its pair there).
#[inline(always)]
fn outcome(status: u32) -> Outcome {
    debug_assert!(
        matches!(status, STATUS_COMMITTED | STATUS_ABORTED | STATUS_COMPARE_FAILED | STATUS_UNUSABLE),
        "critical sections report 0, 1, 2 or 3"
    );
    if status == STATUS_COMMITTED {
        Outcome::Committed
    } else if status == STATUS_COMPARE_FAILED {
        Outcome::CompareFailed
    } else if status == STATUS_ABORTED {
        stats::note_abort();
        Outcome::Aborted
    } else {
        Outcome::Unusable
    }
}

// Calls the instance of an arch operation that reads the array's index field.
macro_rules! dispatch {
    ($index:expr, $op:ident $(::<$extra:tt>)? ( $($arg:expr),* $(,)? )) => {
        match $index {
            Index::CpuId => arch::$op::<false $(, $extra)?>($($arg),*),
            Index::MmCid => arch::$op::<true $(, $extra)?>($($arg),*),
        }
    };
}

// Every `try_*` below has the same contract (see the module): the arrays' memory is alive,
// and their rseq-written words are written only by critical sections.
impl ThreadArea {
    /// One critical section: `words[idx] += amount` (wrapping). Returns the outcome and the
    /// index loaded.
    ///
    /// # Safety
    /// See above.
    #[inline(always)]
    pub unsafe fn try_add(self, words: &PercpuArray<u64>, amount: u64) -> (Outcome, u32) {
        // SAFETY: forwarded contract; the section checks the index against `ncpus`.
        let (s, cpu) = unsafe {
            dispatch!(words.index(), add(self.as_ptr(), words.ncpus(), words.base().cast(), words.stride(), amount))
        };
        (outcome(s), cpu)
    }

    /// The add as it was before the bound check existed, for the benchmark that measures the
    /// check. Not for data: an unregistered area makes it write far past the array.
    ///
    /// # Safety
    /// As for [`ThreadArea::try_add`], and the thread's area is registered with an index
    /// below `words.ncpus()`.
    #[doc(hidden)]
    #[inline(always)]
    pub unsafe fn try_add_unchecked(self, words: &PercpuArray<u64>, amount: u64) -> (Outcome, u32) {
        use crate::area::offsets::{CPU_ID, MM_CID};
        let (base, stride) = (words.base().cast(), words.stride());
        // SAFETY: forwarded contract.
        let (s, cpu) = unsafe {
            match words.index() {
                Index::CpuId => arch::add_unchecked::<CPU_ID>(self.as_ptr(), base, stride, amount),
                Index::MmCid => arch::add_unchecked::<MM_CID>(self.as_ptr(), base, stride, amount),
            }
        };
        (outcome(s), cpu)
    }

    /// One critical section: if `*check == expect`, `words[idx] += amount`. The check is
    /// made inside the section: after a writer changes `*check` and issues
    /// [`crate::membarrier::private_expedited_rseq`], no add that saw the old value can
    /// still commit (the barrier restarts every section in flight). A mismatch is
    /// `CompareFailed`.
    ///
    /// # Safety
    /// See above; `check` is a valid, 8-byte aligned `u64` (written by others only with
    /// atomic stores).
    #[inline(always)]
    pub unsafe fn try_add_if_equal(
        self,
        check: *const u64,
        expect: u64,
        words: &PercpuArray<u64>,
        amount: u64,
    ) -> (Outcome, u32) {
        let (area, n, base, stride) = (self.as_ptr(), words.ncpus(), words.base().cast(), words.stride());
        // SAFETY: forwarded contract.
        let (s, cpu) = unsafe { dispatch!(words.index(), add_if_equal(area, n, check, expect, base, stride, amount)) };
        (outcome(s), cpu)
    }

    /// [`ThreadArea::try_add_if_equal`] that waits `spins` pause instructions between the
    /// check and the add, inside the section. For tests: it widens a two-instruction window
    /// so that a writer on another CPU can change `*check` while the section is open.
    ///
    /// # Safety
    /// As for [`ThreadArea::try_add_if_equal`].
    #[doc(hidden)]
    #[inline(always)]
    pub unsafe fn try_add_if_equal_delayed(
        self,
        check: *const u64,
        expect: u64,
        words: &PercpuArray<u64>,
        amount: u64,
        spins: u64,
    ) -> (Outcome, u32) {
        let (area, n, base, stride) = (self.as_ptr(), words.ncpus(), words.base().cast(), words.stride());
        // SAFETY: forwarded contract.
        let (s, cpu) = unsafe {
            dispatch!(words.index(), add_if_equal_delayed(area, n, check, expect, base, stride, amount, spins))
        };
        (outcome(s), cpu)
    }

    /// One critical section: if `words[idx] == expect`, store `new` (a plain store: for
    /// readers on the same CPU and remote readers that read only this word).
    ///
    /// # Safety
    /// See above.
    #[inline(always)]
    pub unsafe fn try_load_compare_store(self, words: &PercpuArray<u64>, expect: u64, new: u64) -> (Outcome, u32) {
        let (area, n, base, stride) = (self.as_ptr(), words.ncpus(), words.base().cast(), words.stride());
        // SAFETY: forwarded contract.
        let (s, cpu) =
            unsafe { dispatch!(words.index(), load_compare_store::<false>(area, n, base, stride, expect, new)) };
        (outcome(s), cpu)
    }

    /// [`ThreadArea::try_load_compare_store`] whose commit is a release store: a remote
    /// reader that acquires the word also sees everything the thread wrote before (for
    /// publishing a pointer to freshly written data).
    ///
    /// # Safety
    /// See above.
    #[inline(always)]
    pub unsafe fn try_load_compare_store_release(
        self,
        words: &PercpuArray<u64>,
        expect: u64,
        new: u64,
    ) -> (Outcome, u32) {
        let (area, n, base, stride) = (self.as_ptr(), words.ncpus(), words.base().cast(), words.stride());
        // SAFETY: forwarded contract.
        let (s, cpu) =
            unsafe { dispatch!(words.index(), load_compare_store::<true>(area, n, base, stride, expect, new)) };
        (outcome(s), cpu)
    }

    /// One critical section: push `value` on this index's rseq stack. A full stack is
    /// `CompareFailed`; a stopped index `Unusable`.
    ///
    /// # Safety
    /// See above.
    #[inline(always)]
    pub unsafe fn try_push(self, stack: &PercpuStack, value: u64) -> (Outcome, u32) {
        let (area, (n, base, stopped, stride)) = (self.as_ptr(), stack.raw());
        // SAFETY: forwarded contract; the stack's parts were checked when it was made.
        let (s, cpu) =
            unsafe { dispatch!(stack.rseq.index(), push(area, n, base, stopped, stride, stack.cap as u64, value)) };
        (outcome(s), cpu)
    }

    /// One critical section: pop the top of this index's rseq stack. An empty stack is
    /// `CompareFailed`. Returns the outcome, the value (meaningful when committed) and the
    /// index.
    ///
    /// # Safety
    /// See above.
    #[inline(always)]
    pub unsafe fn try_pop(self, stack: &PercpuStack) -> (Outcome, u64, u32) {
        let (area, (n, base, stopped, stride)) = (self.as_ptr(), stack.raw());
        // SAFETY: as in `try_push`.
        let (s, v, cpu) = unsafe { dispatch!(stack.rseq.index(), pop(area, n, base, stopped, stride)) };
        (outcome(s), v, cpu)
    }

    /// One critical section: copy as many of `src` as fit onto this index's rseq stack and
    /// commit them with one store. Returns the outcome and how many were taken from the
    /// front of `src`.
    ///
    /// # Safety
    /// See above.
    #[inline(always)]
    pub unsafe fn try_push_batch(self, stack: &PercpuStack, src: &[u64]) -> (Outcome, usize) {
        let (area, (n, base, stopped, stride)) = (self.as_ptr(), stack.raw());
        let (cap, len) = (stack.cap as u64, src.len() as u64);
        // SAFETY: as in `try_push`; `src` is a valid slice.
        let (s, k) = unsafe {
            dispatch!(stack.rseq.index(), push_batch(area, n, base, stopped, stride, cap, src.as_ptr(), len))
        };
        let o = outcome(s);
        (o, if o == Outcome::Committed { k as usize } else { 0 })
    }

    /// One critical section: move up to `dst.len()` values from the top of this index's
    /// rseq stack into `dst` (topmost last) with one commit store. Returns the outcome and
    /// how many were moved.
    ///
    /// # Safety
    /// See above.
    #[inline(always)]
    pub unsafe fn try_pop_batch(self, stack: &PercpuStack, dst: &mut [u64]) -> (Outcome, usize) {
        let (area, (n, base, stopped, stride)) = (self.as_ptr(), stack.raw());
        let (ptr, len) = (dst.as_mut_ptr(), dst.len() as u64);
        // SAFETY: as in `try_push`; `dst` is a valid slice.
        let (s, k) = unsafe { dispatch!(stack.rseq.index(), pop_batch(area, n, base, stopped, stride, ptr, len)) };
        let o = outcome(s);
        (o, if o == Outcome::Committed { k as usize } else { 0 })
    }
}

/// Runs one critical section (`attempt`) on the calling thread's area until it commits or
/// its comparison fails, and returns that outcome with the attempt's value: restarts after
/// aborts; an unusable index gets one chance — the area is registered if nobody tried yet in
/// this thread, and the section runs again. `None` when the thread has no area, the index
/// stays unusable (registration failed, no copy for it, a stopped copy) or the section kept
/// aborting (`MAX_RESTARTS`): the caller then takes its fallback path. The restart and
/// registration policy every operation (and every library's own sections) shares.
#[inline(always)]
pub fn run_section<R>(mut attempt: impl FnMut(ThreadArea) -> (Outcome, R)) -> Option<(Outcome, R)> {
    let area = ThreadArea::current()?;
    let mut tried_registering = false;
    for _ in 0..MAX_RESTARTS {
        match attempt(area) {
            (Outcome::Aborted, _) => {}
            (Outcome::Unusable, _) => {
                if tried_registering || !area.make_usable() {
                    return None;
                }
                tried_registering = true;
            }
            done => return Some(done),
        }
    }
    None
}

/// Adds `amount` (wrapping; a negative amount is `amount as u64`) to the calling CPU's copy:
/// one critical section on `words`, or an atomic add on `fallback` when the thread cannot
/// run one. A reader sums both arrays ([`percpu_sum`]).
///
/// # Safety
/// Both arrays' memory is alive, they are disjoint, and `words` is only ever written by
/// critical sections.
#[inline(always)]
pub unsafe fn percpu_add(words: &PercpuArray<u64>, fallback: &PercpuArray<AtomicU64>, amount: u64) -> Path {
    // One section inline; restarts, registration and the fallback out of line, so the common
    // path stays a handful of instructions without spills.
    if let Some(area) = ThreadArea::current() {
        // SAFETY: forwarded contract.
        if unsafe { area.try_add(words, amount) }.0 == Outcome::Committed {
            return Path::Rseq;
        }
    }
    // SAFETY: forwarded contract.
    unsafe { percpu_add_slow(words, fallback, amount) }
}

#[cold]
#[inline(never)]
unsafe fn percpu_add_slow(words: &PercpuArray<u64>, fallback: &PercpuArray<AtomicU64>, amount: u64) -> Path {
    // SAFETY: forwarded contract.
    if run_section(|area| unsafe { area.try_add(words, amount) }).is_some() {
        return Path::Rseq;
    }
    // SAFETY: forwarded contract.
    unsafe { fallback::add(fallback, amount) };
    Path::Fallback
}

/// Sum of every copy of both arrays written by [`percpu_add`] (wrapping).
///
/// # Safety
/// Both arrays' memory is alive.
pub unsafe fn percpu_sum(words: &PercpuArray<u64>, fallback: &PercpuArray<AtomicU64>) -> u64 {
    let mut total = 0u64;
    for cpu in 0..words.ncpus() as usize {
        // SAFETY: `cpu < ncpus`, memory alive; critical sections write these words with plain
        // stores, so read them with relaxed atomic loads (8-byte aligned, never torn).
        total = total.wrapping_add(unsafe { AtomicU64::from_ptr(words.ptr().at(cpu)) }.load(Ordering::Relaxed));
    }
    for cpu in 0..fallback.ncpus() as usize {
        // SAFETY: as above.
        total = total.wrapping_add(unsafe { (*fallback.ptr().at(cpu)).load(Ordering::Relaxed) });
    }
    total
}

/// If the calling CPU's copy equals `expect`, stores `new`: a critical section on `words`, or
/// a compare-and-swap on `fallback` when the thread cannot run one. `Ok` on success, `Err`
/// on a mismatch; both carry the index whose copy was examined and the path taken.
///
/// The two arrays are distinct objects: a structure that needs one shared word for both
/// paths (a lock) must keep fallback users off it (see docs/DESIGN.md §4).
///
/// # Safety
/// As for [`percpu_add`].
#[inline(always)]
pub unsafe fn percpu_load_compare_store(
    words: &PercpuArray<u64>,
    fallback: &PercpuArray<AtomicU64>,
    expect: u64,
    new: u64,
) -> Result<(u32, Path), (u32, Path)> {
    // SAFETY: forwarded contract.
    match run_section(|area| unsafe { area.try_load_compare_store(words, expect, new) }) {
        Some((Outcome::Committed, cpu)) => return Ok((cpu, Path::Rseq)),
        Some((_, cpu)) => return Err((cpu, Path::Rseq)),
        None => {}
    }
    // SAFETY: forwarded contract.
    match unsafe { fallback::load_compare_store(fallback, expect, new) } {
        Ok(cpu) => Ok((cpu, Path::Fallback)),
        Err(cpu) => Err((cpu, Path::Fallback)),
    }
}

/// Why a [`PercpuStack`] could not be made from its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackError {
    /// The rseq bank and the stopped words have different strides (they share one offset
    /// computation inside the section).
    StrideMismatch,
    /// The stopped words have fewer copies than the rseq bank.
    TooFewStoppedWords,
    /// A capacity of 0 slots.
    ZeroCapacity,
}

/// Why [`PercpuStack::drain`] did not drain.
#[derive(Debug)]
pub enum DrainError {
    /// No copy has this index.
    OutOfRange,
    /// Another thread is draining this index (its stopped word is set).
    Busy,
    /// The fence failed (`Unsupported` before Linux 5.10): the copy was left alone.
    Fence(MembarrierError),
    /// The stacks given to [`PercpuStack::drain_sharing_stop`] do not share their stopped
    /// words and index.
    NotShared,
}

impl core::fmt::Display for DrainError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DrainError::OutOfRange => f.write_str("no per-CPU copy has this index"),
            DrainError::Busy => f.write_str("another thread is draining this index"),
            DrainError::Fence(e) => write!(f, "cannot fence the index's CPU: {e}"),
            DrainError::NotShared => f.write_str("the stacks do not share their stopped words"),
        }
    }
}

impl std::error::Error for DrainError {}

/// A per-CPU stack of `u64` values. Each index has one logical stack in two halves: the
/// rseq bank (layout `count, slots[cap]`), pushed and popped by critical sections, and the
/// fallback bank (layout `lock, count, slots[cap]`, see [`crate::fallback`]), used under a
/// lock by threads that cannot run a section (no area, a stopped index, too many restarts).
/// A pop that finds the rseq bank empty looks at the fallback bank too, so nothing pushed
/// on either half strands there.
///
/// A per-CPU "stopped" word (possibly shared by many stacks, e.g. every size class of an
/// allocator's CPU cache) lets one thread own another index's rseq bank: see
/// [`PercpuStack::drain`].
#[derive(Clone, Copy, Debug)]
pub struct PercpuStack {
    rseq: PercpuArray<u64>,
    stopped: PercpuArray<AtomicU64>,
    fallback: PercpuArray<u64>,
    cap: usize,
}

impl PercpuStack {
    /// Bytes one copy of the rseq bank needs for `cap` slots.
    pub const fn rseq_bytes(cap: usize) -> usize {
        8 + 8 * cap
    }

    /// Bytes one copy of the fallback bank needs for `cap` slots.
    pub const fn fallback_bytes(cap: usize) -> usize {
        fallback::STACK_HEADER + 8 * cap
    }

    /// A stack from its parts. The index is the rseq bank's; `stopped` is used with it.
    ///
    /// # Safety
    /// Every copy of `rseq` holds [`rseq_bytes`](Self::rseq_bytes)`(cap)` zeroed-or-valid
    /// bytes, every copy of `fallback` [`fallback_bytes`](Self::fallback_bytes)`(cap)`, every
    /// copy of `stopped` a `u64` that only [`drain`](Self::drain) sets; all of it alive while
    /// the stack is used, and written by nothing else.
    pub unsafe fn from_parts(
        rseq: PercpuArray<u64>,
        stopped: PercpuArray<AtomicU64>,
        fallback: PercpuArray<u64>,
        cap: usize,
    ) -> Result<PercpuStack, StackError> {
        if rseq.stride() != stopped.stride() {
            return Err(StackError::StrideMismatch);
        }
        if stopped.ncpus() < rseq.ncpus() {
            return Err(StackError::TooFewStoppedWords);
        }
        if cap == 0 {
            return Err(StackError::ZeroCapacity);
        }
        Ok(PercpuStack { rseq, stopped: stopped.with_index(rseq.index()), fallback, cap })
    }

    /// Per-CPU stopped words from `pool`, to share between stacks of the same pool.
    pub fn alloc_stopped_words(pool: &PercpuPool, index: Index) -> Option<PercpuArray<AtomicU64>> {
        // SAFETY: pool slots are zeroed, 8-byte aligned memory: a valid AtomicU64 each.
        pool.alloc_array(8, 8, index).map(|a| unsafe { a.cast() })
    }

    /// A stack of `cap` slots per index in `pool`, with its own stopped words (`None` when
    /// the pool is out of memory or one copy cannot hold `cap` slots). It is valid until its
    /// slots are freed ([`free`](Self::free)) or the pool dropped.
    pub fn alloc(pool: &PercpuPool, cap: usize, index: Index) -> Option<PercpuStack> {
        let stopped = Self::alloc_stopped_words(pool, index)?;
        let s = Self::alloc_sharing_stopped(pool, cap, stopped);
        if s.is_none() {
            // SAFETY: allocated just above, never shared.
            unsafe { pool.free(stopped.ptr().cast(), 8) };
        }
        s
    }

    /// A stack of `cap` slots per index in `pool` that uses the given stopped words (from
    /// [`alloc_stopped_words`](Self::alloc_stopped_words) of the same pool).
    pub fn alloc_sharing_stopped(
        pool: &PercpuPool,
        cap: usize,
        stopped: PercpuArray<AtomicU64>,
    ) -> Option<PercpuStack> {
        let rseq = pool.alloc_array(Self::rseq_bytes(cap), 8, stopped.index())?;
        let Some(fb) = pool.alloc_array(Self::fallback_bytes(cap), 8, stopped.index()) else {
            // SAFETY: allocated just above, never shared.
            unsafe { pool.free(rseq.ptr(), Self::rseq_bytes(cap)) };
            return None;
        };
        // SAFETY: fresh zeroed slots of the right sizes from one pool (same stride and
        // number of copies); the stopped words come from the same pool.
        unsafe { Self::from_parts(rseq.cast(), stopped, fb.cast(), cap) }.ok()
    }

    /// Returns the two banks to `pool` (not the stopped words, which may be shared).
    ///
    /// # Safety
    /// The stack came from [`alloc`](Self::alloc) or
    /// [`alloc_sharing_stopped`](Self::alloc_sharing_stopped) of `pool`, and nobody uses it
    /// any more.
    pub unsafe fn free(self, pool: &PercpuPool) {
        // SAFETY: forwarded contract.
        unsafe {
            pool.free(self.rseq.ptr().cast(), Self::rseq_bytes(self.cap));
            pool.free(self.fallback.ptr().cast(), Self::fallback_bytes(self.cap));
        }
    }

    /// Slots per index and bank.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// The (resolved) index of the stack.
    pub fn index(&self) -> Index {
        self.rseq.index()
    }

    /// Number of indexes (copies).
    pub fn ncpus(&self) -> u32 {
        self.rseq.ncpus()
    }

    /// The stack's stopped words.
    pub fn stopped_words(&self) -> PercpuArray<AtomicU64> {
        self.stopped
    }

    #[inline(always)]
    fn raw(&self) -> (u32, *mut u8, *const u8, usize) {
        (self.rseq.ncpus(), self.rseq.base().cast(), self.stopped.base().cast(), self.rseq.stride())
    }

    /// Pushes `value` on the calling CPU's stack. `Err(value)` when that stack is full.
    ///
    /// # Safety
    /// The stack's memory is alive.
    #[inline(always)]
    pub unsafe fn push(&self, value: u64) -> Result<Path, u64> {
        // One section inline (an allocator's free path); restarts, registration, a full
        // stack and the fallback out of line, so the common path keeps few registers live.
        if let Some(area) = ThreadArea::current() {
            // SAFETY: forwarded contract.
            if let (Outcome::Committed, _) = unsafe { area.try_push(self, value) } {
                return Ok(Path::Rseq);
            }
        }
        // SAFETY: forwarded contract.
        unsafe { self.push_slow(value) }
    }

    #[cold]
    #[inline(never)]
    unsafe fn push_slow(&self, value: u64) -> Result<Path, u64> {
        // SAFETY: forwarded contract.
        match run_section(|area| unsafe { area.try_push(self, value) }) {
            Some((Outcome::Committed, _)) => Ok(Path::Rseq),
            Some(_) => Err(value),
            // SAFETY: forwarded contract.
            None => unsafe { fallback::push(&self.fallback, self.cap, value) }.map(|()| Path::Fallback),
        }
    }

    /// Pops from the calling CPU's stack (its rseq half, else its fallback half); `None` when
    /// both are empty.
    ///
    /// # Safety
    /// As for [`PercpuStack::push`].
    #[inline(always)]
    pub unsafe fn pop(&self) -> Option<(u64, Path)> {
        // One section inline, as in `push`.
        if let Some(area) = ThreadArea::current() {
            // SAFETY: forwarded contract.
            if let (Outcome::Committed, v, _) = unsafe { area.try_pop(self) } {
                return Some((v, Path::Rseq));
            }
        }
        // SAFETY: forwarded contract.
        unsafe { self.pop_slow() }
    }

    #[cold]
    #[inline(never)]
    unsafe fn pop_slow(&self) -> Option<(u64, Path)> {
        // SAFETY: forwarded contract.
        let r = run_section(|area| {
            let (o, v, _) = unsafe { area.try_pop(self) };
            (o, v)
        });
        match r {
            Some((Outcome::Committed, v)) => Some((v, Path::Rseq)),
            // SAFETY: forwarded contract.
            Some(_) if !unsafe { fallback::has_entries(&self.fallback) } => None,
            // SAFETY: forwarded contract.
            _ => unsafe { fallback::pop(&self.fallback) }.map(|v| (v, Path::Fallback)),
        }
    }

    /// Pushes as many of `src` as fit on the calling CPU's stack with one commit; returns
    /// how many were taken from the front of `src` (0 when full).
    ///
    /// # Safety
    /// As for [`PercpuStack::push`].
    #[inline(always)]
    pub unsafe fn push_batch(&self, src: &[u64]) -> (usize, Path) {
        // SAFETY: forwarded contract.
        match run_section(|area| unsafe { area.try_push_batch(self, src) }) {
            Some((_, k)) => (k, Path::Rseq),
            // SAFETY: forwarded contract.
            None => (unsafe { fallback::push_batch(&self.fallback, self.cap, src) }, Path::Fallback),
        }
    }

    /// Moves up to `dst.len()` values from the calling CPU's stack into `dst` with one
    /// commit (from the fallback half when the rseq half is empty); returns how many.
    ///
    /// # Safety
    /// As for [`PercpuStack::push`].
    #[inline(always)]
    pub unsafe fn pop_batch(&self, dst: &mut [u64]) -> (usize, Path) {
        // SAFETY: forwarded contract.
        match run_section(|area| unsafe { area.try_pop_batch(self, dst) }) {
            Some((_, k)) if k > 0 => (k, Path::Rseq),
            // SAFETY: forwarded contract.
            Some(_) if !unsafe { fallback::has_entries(&self.fallback) } => (0, Path::Rseq),
            // SAFETY: forwarded contract.
            _ => (unsafe { fallback::pop_batch(&self.fallback, dst) }, Path::Fallback),
        }
    }

    /// Takes every value of index `i` — both halves — passing each to `out`, while other
    /// threads keep using the stack; returns how many. For reclaiming the cache of a CPU that
    /// went offline or that the process may no longer run on.
    ///
    /// The protocol: set `i`'s stopped word (sections that see it take the fallback half);
    /// `membarrier(PRIVATE_EXPEDITED_RSEQ)` on CPU `i` (on every CPU when the stack is
    /// indexed by `mm_cid`, which any CPU may run), after which no section that started
    /// before the stop can still commit and that CPU's stores are visible here; take the
    /// rseq half with plain loads and stores; clear the stopped word (a release: sections
    /// that see it clear see the emptied copy); drain the fallback half under its lock.
    /// `out` must not use this stack.
    ///
    /// # Safety
    /// As for [`PercpuStack::push`].
    pub unsafe fn drain(&self, i: u32, mut out: impl FnMut(u64)) -> Result<usize, DrainError> {
        // SAFETY: forwarded contract.
        unsafe { Self::drain_sharing_stop(core::slice::from_ref(self), i, |_, v| out(v)) }
    }

    /// [`drain`](Self::drain) of index `i` of several stacks that share their stopped words
    /// (e.g. every size class of one CPU cache), behind **one** stop and one fence: `out`
    /// gets the position of the stack in `stacks` and each value. Returns how many values
    /// were taken in all. `Err(DrainError::NotShared)` when the stacks do not share their
    /// stopped words and index (nothing is touched then).
    ///
    /// # Safety
    /// As for [`PercpuStack::push`], for every stack; `out` uses none of them.
    pub unsafe fn drain_sharing_stop(
        stacks: &[PercpuStack],
        i: u32,
        mut out: impl FnMut(usize, u64),
    ) -> Result<usize, DrainError> {
        let Some(first) = stacks.first() else { return Ok(0) };
        if stacks.iter().any(|s| s.stopped.base() != first.stopped.base() || s.rseq.index() != first.rseq.index()) {
            return Err(DrainError::NotShared);
        }
        if stacks.iter().any(|s| i >= s.rseq.ncpus()) {
            return Err(DrainError::OutOfRange);
        }
        let stopped_word = first.stopped.get(i as usize).ok_or(DrainError::OutOfRange)?;
        // SAFETY: a live stopped word of the stacks.
        let stopped = unsafe { &*stopped_word };
        stopped.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst).map_err(|_| DrainError::Busy)?;
        let target = match first.rseq.index() {
            Index::CpuId => Some(i),
            Index::MmCid => None,
        };
        if let Err(e) = membarrier::fence_rseq(target) {
            stopped.store(0, Ordering::Release);
            return Err(DrainError::Fence(e));
        }
        let mut n = 0;
        for (pos, s) in stacks.iter().enumerate() {
            let copy = s.rseq.ptr().at(i as usize);
            // SAFETY: the copy is ours until the stopped word is cleared (see `drain`): no
            // section writes it, so plain accesses are exclusive. `count <= cap` slots follow
            // the count.
            unsafe {
                let count = (copy.read_volatile() as usize).min(s.cap);
                for k in 0..count {
                    out(pos, copy.add(1 + k).read_volatile());
                }
                copy.write_volatile(0);
                n += count;
            }
        }
        stopped.store(0, Ordering::Release);
        for (pos, s) in stacks.iter().enumerate() {
            if (i as usize) < s.fallback.ncpus() as usize {
                // SAFETY: forwarded contract; `i` is in range.
                n += unsafe { fallback::drain(&s.fallback, i as usize, |v| out(pos, v)) };
            }
        }
        Ok(n)
    }

    /// Takes the fallback half's lock of every index and keeps them, e.g. in a
    /// `pthread_atfork` prepare handler, so that a forked child inherits no lock held by a
    /// thread it does not have. Release with [`release_fallback_locks`](Self::release_fallback_locks)
    /// in the parent and in the child. (The rseq half needs nothing: a section either
    /// committed before `fork` or never will.)
    ///
    /// # Safety
    /// As for [`PercpuStack::push`]; the calling thread holds none of the locks.
    pub unsafe fn hold_fallback_locks(&self) {
        // SAFETY: forwarded contract.
        unsafe { fallback::lock_all(&self.fallback) }
    }

    /// Releases what [`hold_fallback_locks`](Self::hold_fallback_locks) took.
    ///
    /// # Safety
    /// The calling thread (or, in a forked child, its parent thread) took them.
    pub unsafe fn release_fallback_locks(&self) {
        // SAFETY: forwarded contract.
        unsafe { fallback::unlock_all(&self.fallback) }
    }

    /// Values held by index `i` (both halves) right now; `None` when out of range. For tests
    /// and reports (racy while the stack is in use).
    ///
    /// # Safety
    /// As for [`PercpuStack::push`].
    pub unsafe fn len_at(&self, i: u32) -> Option<usize> {
        let r = self.rseq.get(i as usize)?;
        let f = self.fallback.get(i as usize)?;
        // SAFETY: live copies; both counts are read atomically (others write them).
        unsafe {
            let rc = AtomicU64::from_ptr(r).load(Ordering::Relaxed);
            let fc = AtomicU64::from_ptr(f.cast::<u8>().add(8).cast()).load(Ordering::Relaxed);
            Some(rc as usize + fc as usize)
        }
    }
}

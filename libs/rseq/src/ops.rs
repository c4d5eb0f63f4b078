//! Per-CPU operations named by their effect.
//!
//! Two layers:
//! - `ThreadArea::try_*`: one critical section on the calling thread's area, reporting
//!   [`Outcome::Committed`], [`Outcome::CompareFailed`] or [`Outcome::Aborted`] (aborts are
//!   counted in [`crate::stats`]). `rseq_cs` is cleared on every exit.
//! - `percpu_*`: the operation completed, restarting after aborts, and run on the fallback
//!   path (atomics on a *separate* set of words, see [`crate::fallback`]) when the thread has
//!   no usable area or keeps being restarted. The result says which [`Path`] it took.

use core::sync::atomic::AtomicU64;

use crate::arch::{self, STATUS_ABORTED, STATUS_COMMITTED, STATUS_COMPARE_FAILED};
use crate::area::{offsets, ThreadArea};
use crate::fallback;
use crate::percpu::PercpuPtr;
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
}

/// Which path a completed operation took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// A critical section on the thread's rseq area.
    Rseq,
    /// Atomics on the fallback words.
    Fallback,
}

/// Consecutive restarts after which an operation gives up on the critical section and
/// takes the fallback path (only reached under pathological interference, such as a
/// debugger single-stepping through the section).
pub const MAX_RESTARTS: u32 = 256;

#[inline(always)]
fn outcome(status: u32) -> Outcome {
    match status {
        STATUS_COMMITTED => Outcome::Committed,
        STATUS_ABORTED => {
            stats::note_abort();
            Outcome::Aborted
        }
        STATUS_COMPARE_FAILED => Outcome::CompareFailed,
        _ => unreachable!("critical sections report 0, 1 or 2"),
    }
}

// Dispatches to the instance of an arch operation that reads the requested field.
macro_rules! by_index {
    ($index:expr, $op:ident ( $($arg:expr),* )) => {
        match $index {
            Index::CpuId => arch::$op::<{ offsets::CPU_ID }>($($arg),*),
            Index::MmCid => arch::$op::<{ offsets::MM_CID }>($($arg),*),
        }
    };
}

impl ThreadArea {
    /// One critical section: `words[idx] += amount` (wrapping). Returns the outcome and the
    /// index used.
    ///
    /// # Safety
    /// `words.at(i)` is a valid `u64` for every index below the number of possible CPUs, and
    /// is written only by critical sections (never by the fallback path). `index` was
    /// [`Index::resolve`]d.
    #[inline(always)]
    pub unsafe fn try_add(self, index: Index, words: PercpuPtr<u64>, amount: u64) -> (Outcome, u32) {
        // SAFETY: forwarded contract.
        let (s, cpu) = unsafe { by_index!(index, add(self.as_ptr(), words.base().cast(), words.stride(), amount)) };
        (outcome(s), cpu)
    }

    /// One critical section: if `*check == expect`, `words[idx] += amount`. The check is
    /// made inside the section: after a writer changes `*check` and issues
    /// [`crate::membarrier::private_expedited_rseq`], no add that saw the old value can
    /// still commit (the barrier restarts every section in flight). A mismatch is
    /// `CompareFailed`.
    ///
    /// # Safety
    /// As for [`ThreadArea::try_add`]; `check` is a valid, 8-byte aligned `u64` (written by
    /// others only with atomic stores).
    #[inline(always)]
    pub unsafe fn try_add_if_equal(
        self,
        index: Index,
        check: *const u64,
        expect: u64,
        words: PercpuPtr<u64>,
        amount: u64,
    ) -> (Outcome, u32) {
        // SAFETY: forwarded contract.
        let (s, cpu) = unsafe {
            by_index!(index, add_if_equal(self.as_ptr(), check, expect, words.base().cast(), words.stride(), amount))
        };
        (outcome(s), cpu)
    }

    /// [`ThreadArea::try_add_if_equal`] that waits `spins` pause instructions between the
    /// check and the add, inside the section. For tests: it widens a two-instruction window
    /// so that a writer on another CPU can change `*check` while the section is open, which
    /// shows whether the writer's membarrier really restarts it.
    ///
    /// # Safety
    /// As for [`ThreadArea::try_add_if_equal`].
    #[doc(hidden)]
    #[inline(always)]
    pub unsafe fn try_add_if_equal_delayed(
        self,
        index: Index,
        check: *const u64,
        expect: u64,
        words: PercpuPtr<u64>,
        amount: u64,
        spins: u64,
    ) -> (Outcome, u32) {
        // SAFETY: forwarded contract.
        let (s, cpu) = unsafe {
            by_index!(
                index,
                add_if_equal_delayed(self.as_ptr(), check, expect, words.base().cast(), words.stride(), amount, spins)
            )
        };
        (outcome(s), cpu)
    }

    /// One critical section: if `words[idx] == expect`, store `new`.
    ///
    /// # Safety
    /// As for [`ThreadArea::try_add`].
    #[inline(always)]
    pub unsafe fn try_load_compare_store(
        self,
        index: Index,
        words: PercpuPtr<u64>,
        expect: u64,
        new: u64,
    ) -> (Outcome, u32) {
        // SAFETY: forwarded contract.
        let (s, cpu) = unsafe {
            by_index!(index, load_compare_store(self.as_ptr(), words.base().cast(), words.stride(), expect, new))
        };
        (outcome(s), cpu)
    }

    /// One critical section: push `value` on this index's stack (`count: u64` then `cap`
    /// slots). A full stack is `CompareFailed`.
    ///
    /// # Safety
    /// As for [`ThreadArea::try_add`], with a stack of `cap` slots in each copy.
    #[inline(always)]
    pub unsafe fn try_push(self, index: Index, stack: PercpuPtr<u64>, cap: usize, value: u64) -> (Outcome, u32) {
        // SAFETY: forwarded contract.
        let (s, cpu) =
            unsafe { by_index!(index, push(self.as_ptr(), stack.base().cast(), stack.stride(), cap as u64, value)) };
        (outcome(s), cpu)
    }

    /// One critical section: pop the top of this index's stack. An empty stack is
    /// `CompareFailed`. Returns the outcome, the value (meaningful when committed) and the
    /// index.
    ///
    /// # Safety
    /// As for [`ThreadArea::try_push`].
    #[inline(always)]
    pub unsafe fn try_pop(self, index: Index, stack: PercpuPtr<u64>) -> (Outcome, u64, u32) {
        // SAFETY: forwarded contract.
        let (s, v, cpu) = unsafe { by_index!(index, pop(self.as_ptr(), stack.base().cast(), stack.stride())) };
        (outcome(s), v, cpu)
    }

    /// One critical section: copy as many of `src` as fit onto this index's stack and
    /// commit them with one store. Returns the outcome and how many were taken from the
    /// front of `src`.
    ///
    /// # Safety
    /// As for [`ThreadArea::try_push`].
    #[inline(always)]
    pub unsafe fn try_push_batch(
        self,
        index: Index,
        stack: PercpuPtr<u64>,
        cap: usize,
        src: &[u64],
    ) -> (Outcome, usize) {
        // SAFETY: forwarded contract; `src` is a valid slice.
        let (s, k) = unsafe {
            by_index!(
                index,
                push_batch(
                    self.as_ptr(),
                    stack.base().cast(),
                    stack.stride(),
                    cap as u64,
                    src.as_ptr(),
                    src.len() as u64
                )
            )
        };
        let o = outcome(s);
        (o, if o == Outcome::Committed { k as usize } else { 0 })
    }

    /// One critical section: move up to `dst.len()` values from the top of this index's
    /// stack into `dst` (topmost last) with one commit store. Returns the outcome and how
    /// many were moved.
    ///
    /// # Safety
    /// As for [`ThreadArea::try_push`].
    #[inline(always)]
    pub unsafe fn try_pop_batch(self, index: Index, stack: PercpuPtr<u64>, dst: &mut [u64]) -> (Outcome, usize) {
        // SAFETY: forwarded contract; `dst` is a valid slice.
        let (s, k) = unsafe {
            by_index!(
                index,
                pop_batch(self.as_ptr(), stack.base().cast(), stack.stride(), dst.as_mut_ptr(), dst.len() as u64)
            )
        };
        let o = outcome(s);
        (o, if o == Outcome::Committed { k as usize } else { 0 })
    }
}

/// Runs `attempt` on the thread's area until it does not abort; `None` when the thread
/// has no area or the section kept aborting (the caller then takes the fallback path).
#[inline(always)]
fn with_restarts<R>(mut attempt: impl FnMut(ThreadArea) -> Option<R>) -> Option<R> {
    let area = ThreadArea::current()?;
    for _ in 0..MAX_RESTARTS {
        if let Some(r) = attempt(area) {
            return Some(r);
        }
    }
    None
}

/// Adds `amount` (wrapping; a negative amount is `amount as u64`) to the calling CPU's copy:
/// one critical section on `words`, or an atomic add on `fallback` when the thread has no
/// area. A reader sums both sets over every possible CPU ([`percpu_sum`]).
///
/// # Safety
/// `words` and `fallback` are disjoint per-CPU `u64`s valid for every possible CPU index;
/// `words` is only ever written by critical sections. `index` was resolved.
#[inline(always)]
pub unsafe fn percpu_add(index: Index, words: PercpuPtr<u64>, fallback: PercpuPtr<AtomicU64>, amount: u64) -> Path {
    // SAFETY: forwarded contract.
    let done = with_restarts(|area| match unsafe { area.try_add(index, words, amount) } {
        (Outcome::Aborted, _) => None,
        _ => Some(()),
    });
    if done.is_some() {
        return Path::Rseq;
    }
    // SAFETY: forwarded contract.
    unsafe { fallback::add(fallback, amount) };
    Path::Fallback
}

/// Sum of the copies `0..ncpus` of both word sets written by [`percpu_add`] (wrapping).
///
/// # Safety
/// Both sets are valid for `ncpus` copies.
pub unsafe fn percpu_sum(words: PercpuPtr<u64>, fallback: PercpuPtr<AtomicU64>, ncpus: usize) -> u64 {
    let mut total = 0u64;
    for cpu in 0..ncpus {
        // SAFETY: valid per the contract; critical sections write these words with plain
        // stores, so read them with relaxed atomic loads (8-byte aligned, never torn).
        let (r, f) = unsafe {
            (
                AtomicU64::from_ptr(words.at(cpu)).load(core::sync::atomic::Ordering::Relaxed),
                (*fallback.at(cpu)).load(core::sync::atomic::Ordering::Relaxed),
            )
        };
        total = total.wrapping_add(r).wrapping_add(f);
    }
    total
}

/// If the calling CPU's copy equals `expect`, stores `new`: a critical section on `words`, or
/// a compare-and-swap on `fallback` without an area. `Ok` on success, `Err` on a mismatch;
/// both carry the index whose copy was examined and the path taken.
///
/// The two word sets are distinct objects: a structure that needs one shared word for
/// both paths (a lock) must keep fallback users off it (see the design notes).
///
/// # Safety
/// As for [`percpu_add`].
#[inline(always)]
pub unsafe fn percpu_load_compare_store(
    index: Index,
    words: PercpuPtr<u64>,
    fallback: PercpuPtr<AtomicU64>,
    expect: u64,
    new: u64,
) -> Result<(u32, Path), (u32, Path)> {
    // SAFETY: forwarded contract.
    let r = with_restarts(|area| match unsafe { area.try_load_compare_store(index, words, expect, new) } {
        (Outcome::Committed, cpu) => Some(Ok((cpu, Path::Rseq))),
        (Outcome::CompareFailed, cpu) => Some(Err((cpu, Path::Rseq))),
        (Outcome::Aborted, _) => None,
    });
    if let Some(r) = r {
        return r;
    }
    // SAFETY: forwarded contract.
    match unsafe { fallback::load_compare_store(fallback, expect, new) } {
        Ok(cpu) => Ok((cpu, Path::Fallback)),
        Err(cpu) => Err((cpu, Path::Fallback)),
    }
}

/// A per-CPU stack of `u64` values in two banks: `rseq` (layout `count, slots[cap]`) used by
/// critical sections, and `fallback` (layout `lock, count, slots[cap]`, see
/// [`crate::fallback`]) used under a lock by threads without an area.
#[derive(Clone, Copy, Debug)]
pub struct PercpuStack {
    /// Bank written by critical sections.
    pub rseq: PercpuPtr<u64>,
    /// Bank written under its per-CPU lock.
    pub fallback: PercpuPtr<u64>,
    /// Slots per CPU and bank.
    pub cap: usize,
}

impl PercpuStack {
    /// Bytes one CPU's copy of the rseq bank needs for `cap` slots.
    pub const fn rseq_bytes(cap: usize) -> usize {
        8 + 8 * cap
    }

    /// Bytes one CPU's copy of the fallback bank needs for `cap` slots.
    pub const fn fallback_bytes(cap: usize) -> usize {
        fallback::STACK_HEADER + 8 * cap
    }

    /// Pushes `value` on the calling CPU's stack. `Err(value)` when that stack is full.
    ///
    /// # Safety
    /// Both banks are valid for every possible CPU with `cap` slots; `index` was resolved.
    #[inline(always)]
    pub unsafe fn push(&self, index: Index, value: u64) -> Result<Path, u64> {
        // SAFETY: forwarded contract.
        let r = with_restarts(|area| match unsafe { area.try_push(index, self.rseq, self.cap, value) } {
            (Outcome::Committed, _) => Some(Ok(Path::Rseq)),
            (Outcome::CompareFailed, _) => Some(Err(value)),
            (Outcome::Aborted, _) => None,
        });
        if let Some(r) = r {
            return r;
        }
        // SAFETY: forwarded contract.
        unsafe { fallback::push(self.fallback, self.cap, value) }.map(|()| Path::Fallback)
    }

    /// Pops from the calling CPU's stack; `None` when it is empty.
    ///
    /// # Safety
    /// As for [`PercpuStack::push`].
    #[inline(always)]
    pub unsafe fn pop(&self, index: Index) -> Option<(u64, Path)> {
        // SAFETY: forwarded contract.
        let r = with_restarts(|area| match unsafe { area.try_pop(index, self.rseq) } {
            (Outcome::Committed, v, _) => Some(Some((v, Path::Rseq))),
            (Outcome::CompareFailed, _, _) => Some(None),
            (Outcome::Aborted, _, _) => None,
        });
        if let Some(r) = r {
            return r;
        }
        // SAFETY: forwarded contract.
        unsafe { fallback::pop(self.fallback) }.map(|v| (v, Path::Fallback))
    }

    /// Pushes as many of `src` as fit on the calling CPU's stack with one commit; returns
    /// how many were taken from the front of `src` (0 when full).
    ///
    /// # Safety
    /// As for [`PercpuStack::push`].
    #[inline(always)]
    pub unsafe fn push_batch(&self, index: Index, src: &[u64]) -> (usize, Path) {
        // SAFETY: forwarded contract.
        let r = with_restarts(|area| match unsafe { area.try_push_batch(index, self.rseq, self.cap, src) } {
            (Outcome::Aborted, _) => None,
            (_, k) => Some(k),
        });
        if let Some(k) = r {
            return (k, Path::Rseq);
        }
        // SAFETY: forwarded contract.
        (unsafe { fallback::push_batch(self.fallback, self.cap, src) }, Path::Fallback)
    }

    /// Moves up to `dst.len()` values from the calling CPU's stack into `dst` with one
    /// commit; returns how many.
    ///
    /// # Safety
    /// As for [`PercpuStack::push`].
    #[inline(always)]
    pub unsafe fn pop_batch(&self, index: Index, dst: &mut [u64]) -> (usize, Path) {
        // SAFETY: forwarded contract.
        let r = with_restarts(|area| match unsafe { area.try_pop_batch(index, self.rseq, dst) } {
            (Outcome::Aborted, _) => None,
            (_, k) => Some(k),
        });
        if let Some(k) = r {
            return (k, Path::Rseq);
        }
        // SAFETY: forwarded contract.
        (unsafe { fallback::pop_batch(self.fallback, dst) }, Path::Fallback)
    }
}

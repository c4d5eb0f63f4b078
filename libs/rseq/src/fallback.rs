//! The fallback path: the same operations with atomics, for threads without a usable rseq
//! area (no libc area, registration refused, seccomp answering `ENOSYS`) or after repeated
//! restarts.
//!
//! These functions only ever touch the *fallback* words of a structure. A non-atomic
//! critical section and an atomic instruction on the same word lose updates (docs/DESIGN.md
//! §2), so each structure keeps the two sets apart and combines them on read.
//!
//! The copy used is the CPU the thread runs on (`sched_getcpu`), reduced into the array's
//! range, which spreads contention the same way the rseq path does; correctness does not
//! depend on it (any copy is correct for an atomic).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::percpu::PercpuArray;
use crate::stats;

/// Bytes before the slots of a fallback stack copy: `lock: u64`, `count: u64`.
pub const STACK_HEADER: usize = 16;

/// The CPU a fallback operation starts from: the current CPU (0 if unknown).
#[inline]
pub fn current_index() -> usize {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        0
    } else {
        cpu as usize
    }
}

/// `fallback[cpu] += amount` with an atomic add. Async-signal-safe.
///
/// # Safety
/// The array's memory is alive.
pub unsafe fn add(fallback: &PercpuArray<AtomicU64>, amount: u64) {
    stats::note_fallback();
    // SAFETY: `wrapped` stays inside the array, whose memory is alive.
    unsafe { (*fallback.wrapped(current_index())).fetch_add(amount, Ordering::Relaxed) };
}

/// Compare-and-swap on the current CPU's fallback word. Returns the index examined.
///
/// # Safety
/// As for [`add`].
pub unsafe fn load_compare_store(fallback: &PercpuArray<AtomicU64>, expect: u64, new: u64) -> Result<u32, u32> {
    stats::note_fallback();
    let cpu = current_index() % fallback.ncpus() as usize;
    // SAFETY: `cpu < ncpus`; the memory is alive.
    let word = unsafe { &*fallback.ptr().at(cpu) };
    match word.compare_exchange(expect, new, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Ok(cpu as u32),
        Err(_) => Err(cpu as u32),
    }
}

/// A locked view of one CPU's fallback stack.
struct Locked {
    base: *mut u8,
}

impl Locked {
    /// Spins (then yields) until the stack's lock is taken. Not async-signal-safe: a
    /// handler interrupting the holder on the same thread would wait forever.
    fn lock(base: *mut u8) -> Locked {
        // SAFETY: the caller passes a valid copy; the lock word is only used atomically.
        let lock = unsafe { AtomicU64::from_ptr(base.cast()) };
        let mut spins = 0u32;
        while lock.compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            spins += 1;
            if spins < 64 {
                core::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        Locked { base }
    }

    fn count(&self) -> usize {
        // SAFETY: count is a u64 after the lock; we hold the lock.
        unsafe { *self.base.add(8).cast::<u64>() as usize }
    }

    fn set_count(&mut self, n: usize) {
        // SAFETY: as in `count`.
        unsafe { *self.base.add(8).cast::<u64>() = n as u64 };
    }

    fn slots(&mut self) -> *mut u64 {
        // SAFETY: the slots follow the header inside the copy.
        unsafe { self.base.add(STACK_HEADER).cast() }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: we hold the lock word of a valid copy.
        unsafe { AtomicU64::from_ptr(self.base.cast()) }.store(0, Ordering::Release);
    }
}

fn locked_current(stack: &PercpuArray<u64>) -> Locked {
    stats::note_fallback();
    Locked::lock(stack.wrapped(current_index()).cast())
}

/// Pushes on the current CPU's fallback stack; `Err(value)` when full.
///
/// # Safety
/// Every copy of `stack` is a valid fallback stack (header + `cap` slots), alive.
pub unsafe fn push(stack: &PercpuArray<u64>, cap: usize, value: u64) -> Result<(), u64> {
    let mut s = locked_current(stack);
    let n = s.count();
    if n >= cap {
        return Err(value);
    }
    // SAFETY: n < cap, inside the copy; we hold the lock.
    unsafe { *s.slots().add(n) = value };
    s.set_count(n + 1);
    Ok(())
}

/// Pops from the current CPU's fallback stack.
///
/// # Safety
/// As for [`push`].
pub unsafe fn pop(stack: &PercpuArray<u64>) -> Option<u64> {
    let mut s = locked_current(stack);
    let n = s.count();
    if n == 0 {
        return None;
    }
    // SAFETY: n - 1 < count <= cap; we hold the lock.
    let v = unsafe { *s.slots().add(n - 1) };
    s.set_count(n - 1);
    Some(v)
}

/// Pushes as many of `src` as fit; returns how many were taken from its front.
///
/// # Safety
/// As for [`push`].
pub unsafe fn push_batch(stack: &PercpuArray<u64>, cap: usize, src: &[u64]) -> usize {
    let mut s = locked_current(stack);
    let n = s.count();
    let k = src.len().min(cap.saturating_sub(n));
    // SAFETY: n + k <= cap; we hold the lock.
    unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), s.slots().add(n), k) };
    s.set_count(n + k);
    k
}

/// Moves up to `dst.len()` values from the top into `dst` (topmost last); returns how many.
///
/// # Safety
/// As for [`push`].
pub unsafe fn pop_batch(stack: &PercpuArray<u64>, dst: &mut [u64]) -> usize {
    let mut s = locked_current(stack);
    let n = s.count();
    let k = dst.len().min(n);
    // SAFETY: n - k + k <= count; we hold the lock.
    unsafe { core::ptr::copy_nonoverlapping(s.slots().add(n - k), dst.as_mut_ptr(), k) };
    s.set_count(n - k);
    k
}

/// Whether the current CPU's fallback stack holds anything (a lock-free peek, so that an
/// empty rseq stack only takes the lock when there is something to find).
///
/// # Safety
/// As for [`push`].
pub unsafe fn has_entries(stack: &PercpuArray<u64>) -> bool {
    // SAFETY: the count is the second word of a live copy; others write it under the lock,
    // so read it atomically.
    unsafe { AtomicU64::from_ptr(stack.wrapped(current_index()).cast::<u8>().add(8).cast()) }.load(Ordering::Relaxed)
        != 0
}

/// Takes every value of index `cpu`'s fallback stack, passing each to `out`; returns how
/// many. `out` runs under the stack's lock and must not use this stack.
///
/// # Safety
/// As for [`push`]; `cpu < stack.ncpus()`.
pub unsafe fn drain(stack: &PercpuArray<u64>, cpu: usize, mut out: impl FnMut(u64)) -> usize {
    let mut s = Locked::lock(stack.ptr().at(cpu).cast());
    let n = s.count();
    for i in 0..n {
        // SAFETY: `i < count <= cap`: an initialised slot; we hold the lock.
        out(unsafe { *s.slots().add(i) });
    }
    s.set_count(0);
    n
}

/// Takes the lock of every copy of `stack`, in index order, and keeps them (for `fork`: a
/// child must not inherit a lock held by a thread it does not have). Pair with
/// [`unlock_all`]; nothing else may take two of these locks, so the order cannot deadlock.
///
/// # Safety
/// As for [`push`]; the caller holds none of the locks.
pub unsafe fn lock_all(stack: &PercpuArray<u64>) {
    for cpu in 0..stack.ncpus() as usize {
        core::mem::forget(Locked::lock(stack.ptr().at(cpu).cast()));
    }
}

/// Releases the locks [`lock_all`] took (in the parent and in the child after `fork`).
///
/// # Safety
/// As for [`push`]; the caller took them with [`lock_all`].
pub unsafe fn unlock_all(stack: &PercpuArray<u64>) {
    for cpu in 0..stack.ncpus() as usize {
        drop(Locked { base: stack.ptr().at(cpu).cast() });
    }
}

//! The per-CPU mutex array: one lock word per possible CPU.
//!
//! A lock word is 0 when free and the holder's tag (its `pthread_self()`, never 0) when held.
//! - Taking the current CPU's lock is one rseq load-compare-store on that CPU's word
//!   (0 → tag). Two takers on one CPU are serialised by the kernel's restarts.
//! - Taking a given index (or any index from a thread without rseq) is a compare-and-swap
//!   0 → tag, which could race with a section on that CPU that loaded 0 just before and is
//!   about to store its own tag. So the taker then fences that CPU
//!   (`membarrier(PRIVATE_EXPEDITED_RSEQ, FLAG_CPU)`: every section running there has
//!   committed or restarted) and reads the word again: still its tag, it holds the lock;
//!   anything else, a section's commit overwrote it and the section's thread holds it.
//!   Tags are unique among live threads, so the re-read cannot be fooled by another taker.
//! - Release is a compare-and-swap tag → 0 from any CPU (a held word makes every section
//!   fail its comparison, so nothing else writes it meanwhile): a release by a thread that
//!   does not hold the lock is refused.
//! - Waiters spin briefly, then sleep on a per-index futex sequence word; a release wakes
//!   one when the index has waiters.
//!
//! Without the rseq membarrier (kernels before 5.10) no section is ever used on a lock and
//! every path is the compare-and-swap.

use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

use rseq::{Index, Outcome, PercpuArray, PercpuPtr, ThreadArea};

use crate::{futex, Error};

/// Spins on a busy lock before sleeping.
pub(crate) const SPINS: u32 = 100;
/// Longest single sleep (a backstop only: wake-ups are not lost).
pub(crate) const SLEEP_NS: u64 = 10_000_000;
/// Bytes between two indexes' slots.
const SLOT: usize = 128;

#[repr(C, align(128))]
struct Slot {
    /// 0 or the holder's tag; written by sections (commit) and compare-and-swaps.
    word: AtomicU64,
    /// Threads waiting for this index.
    waiters: AtomicU32,
    /// Bumped by a release that has waiters to wake (the futex word).
    seq: AtomicU32,
    /// Written and read by the holder only: what its time-slice request did
    /// (`crate::slice::NONE` or `REQUESTED`).
    slice: AtomicU8,
}

const _: () = assert!(core::mem::size_of::<Slot>() == SLOT);

/// The caller's tag: its `pthread_self()`, unique among live threads and never 0.
#[inline(always)]
pub(crate) fn my_tag() -> u64 {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as u64 }
}

/// Whether locks made now may use critical sections: the remote-CPU fence works.
pub(crate) fn rseq_usable() -> bool {
    rseq::membarrier::fence_rseq(Some(0)).is_ok()
}

/// A per-CPU mutex array: one lock per possible CPU. See the module text for the protocol.
pub struct PercpuMutex {
    slots: Box<[Slot]>,
    words: PercpuArray<u64>,
    use_rseq: bool,
    slice_ext: bool,
}

// SAFETY: the slots are atomics (the rseq words are written by critical sections and read
// with atomic loads); `words` only names them.
unsafe impl Send for PercpuMutex {}
// SAFETY: as above.
unsafe impl Sync for PercpuMutex {}

impl PercpuMutex {
    /// One lock per possible CPU, all free.
    pub fn new() -> PercpuMutex {
        let n = rseq::topology::nr_possible_cpus().max(1);
        let slots: Box<[Slot]> = (0..n)
            .map(|_| Slot {
                word: AtomicU64::new(0),
                waiters: AtomicU32::new(0),
                seq: AtomicU32::new(0),
                slice: AtomicU8::new(0),
            })
            .collect();
        // SAFETY: slot i's word is at base + i * SLOT, valid and aligned while `slots` lives,
        // which is as long as `words` is used (both owned by self).
        let words = unsafe { PercpuArray::from_raw(PercpuPtr::new(slots.as_ptr() as *mut u64, SLOT), n, Index::CpuId) };
        PercpuMutex { slots, words, use_rseq: rseq_usable(), slice_ext: false }
    }

    /// Like [`PercpuMutex::new`], with holders requesting the scheduler time-slice extension
    /// while they hold a lock (`on`; see [`crate::slice`]). Where the kernel lacks it, the
    /// same as `new`.
    pub fn with_slice_extension(on: bool) -> PercpuMutex {
        let mut m = PercpuMutex::new();
        m.slice_ext = on;
        m
    }

    /// Whether holders request the time-slice extension.
    pub fn slice_extension(&self) -> bool {
        self.slice_ext
    }

    /// The new holder of lock `i` records its time-slice request.
    #[inline(always)]
    fn held(&self, i: usize) {
        if self.slice_ext {
            self.slots[i].slice.store(crate::slice::begin(), Ordering::Relaxed);
        }
    }

    /// Number of locks (indexes `0..count()`): the number of possible CPUs.
    pub fn count(&self) -> usize {
        self.slots.len()
    }

    /// Whether this array takes the current CPU's lock with a critical section.
    pub fn uses_rseq(&self) -> bool {
        self.use_rseq
    }

    /// Takes the lock of the CPU the caller runs on, waiting while it is held, and returns
    /// its index. The caller may migrate while holding it and release it from anywhere.
    /// When that lock is held by the caller itself, the next free one is taken instead;
    /// `Deadlock` when the caller holds them all.
    pub fn lock(&self) -> Result<usize, Error> {
        let tag = my_tag();
        loop {
            let busy = match self.take_current(tag) {
                Ok(i) => {
                    self.held(i);
                    return Ok(i);
                }
                Err(i) => i,
            };
            if self.slots[busy].word.load(Ordering::Relaxed) == tag {
                return self.take_any_other(busy, tag);
            }
            self.wait_free(busy);
        }
    }

    /// One attempt at the current CPU's lock: `Ok(index)` held, `Err(index)` busy.
    #[inline(always)]
    fn take_current(&self, tag: u64) -> Result<usize, usize> {
        if self.use_rseq {
            if let Some(area) = ThreadArea::current() {
                // SAFETY: the words are alive and written only by sections and by
                // compare-and-swaps that follow the fence protocol of the module.
                let (o, cpu) = unsafe { area.try_load_compare_store(&self.words, 0, tag) };
                match o {
                    Outcome::Committed => {
                        fence(Ordering::Acquire);
                        return Ok(cpu as usize);
                    }
                    Outcome::CompareFailed => return Err(cpu as usize),
                    _ => {}
                }
            }
            // SAFETY: as above.
            match rseq::ops::run_section(|area| unsafe { area.try_load_compare_store(&self.words, 0, tag) }) {
                Some((Outcome::Committed, cpu)) => {
                    fence(Ordering::Acquire);
                    return Ok(cpu as usize);
                }
                Some((_, cpu)) => return Err(cpu as usize),
                None => {}
            }
        }
        let i = rseq::fallback::current_index() % self.count();
        match self.try_take_index(i, tag) {
            Ok(()) => Ok(i),
            Err(_) => Err(i),
        }
    }

    #[cold]
    fn take_any_other(&self, held: usize, tag: u64) -> Result<usize, Error> {
        let n = self.count();
        for k in 1..n {
            let i = (held + k) % n;
            if self.slots[i].word.load(Ordering::Relaxed) == tag {
                continue;
            }
            self.lock_index(i)?;
            return Ok(i);
        }
        Err(Error::Deadlock)
    }

    /// Takes lock `index`, waiting while it is held.
    pub fn lock_index(&self, index: usize) -> Result<(), Error> {
        let tag = my_tag();
        loop {
            match self.try_lock_index(index) {
                Err(Error::Busy) => self.wait_free(index),
                r => return r,
            }
            if self.slots[index].word.load(Ordering::Relaxed) == tag {
                return Err(Error::Deadlock);
            }
        }
    }

    /// Takes lock `index` if it is free: `Busy` otherwise, `Deadlock` if the caller holds it.
    pub fn try_lock_index(&self, index: usize) -> Result<(), Error> {
        let slot = self.slots.get(index).ok_or(Error::InvalidArgument)?;
        let tag = my_tag();
        if slot.word.load(Ordering::Relaxed) == tag {
            return Err(Error::Deadlock);
        }
        self.try_take_index(index, tag)?;
        self.held(index);
        Ok(())
    }

    /// CAS 0 → tag, then (with sections in use) fence the CPU and check the word is still ours.
    fn try_take_index(&self, i: usize, tag: u64) -> Result<(), Error> {
        let slot = &self.slots[i];
        if slot.word.compare_exchange(0, tag, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return Err(Error::Busy);
        }
        if !self.use_rseq {
            return Ok(());
        }
        if rseq::membarrier::fence_rseq(Some(i as u32)).is_err() {
            // Cannot tell whether a section overwrote the tag: release what is ours, if
            // anything, and report it.
            let _ = slot.word.compare_exchange(tag, 0, Ordering::Release, Ordering::Relaxed);
            self.wake(slot);
            return Err(Error::Internal);
        }
        if slot.word.load(Ordering::Acquire) == tag {
            Ok(())
        } else {
            // A section on CPU i loaded 0 before our swap and committed after it: its
            // thread holds the lock.
            Err(Error::Busy)
        }
    }

    /// Spins, then sleeps until lock `i` looks free.
    fn wait_free(&self, i: usize) {
        let slot = &self.slots[i];
        for _ in 0..SPINS {
            if slot.word.load(Ordering::Relaxed) == 0 {
                return;
            }
            core::hint::spin_loop();
        }
        slot.waiters.fetch_add(1, Ordering::SeqCst);
        loop {
            let s = slot.seq.load(Ordering::SeqCst);
            if slot.word.load(Ordering::SeqCst) == 0 {
                break;
            }
            futex::wait(&slot.seq, s, SLEEP_NS);
        }
        slot.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Releases lock `index`, from any CPU. `NotOwner` when the caller does not hold it.
    pub fn unlock(&self, index: usize) -> Result<(), Error> {
        let slot = self.slots.get(index).ok_or(Error::InvalidArgument)?;
        let tag = my_tag();
        if slot.word.load(Ordering::Relaxed) != tag {
            return Err(Error::NotOwner);
        }
        // Held by the caller (only the holder changes a word holding its tag): the slice
        // record is the caller's, and the next holder writes its own after taking the lock.
        let slice = slot.slice.swap(crate::slice::NONE, Ordering::Relaxed);
        slot.word.compare_exchange(tag, 0, Ordering::Release, Ordering::Relaxed).map_err(|_| Error::NotOwner)?;
        self.wake(slot);
        crate::slice::end(slice);
        Ok(())
    }

    #[inline(always)]
    fn wake(&self, slot: &Slot) {
        fence(Ordering::SeqCst);
        if slot.waiters.load(Ordering::SeqCst) != 0 {
            slot.seq.fetch_add(1, Ordering::SeqCst);
            futex::wake(&slot.seq, 1);
        }
    }

    /// Whether lock `index` is held (by anyone), `None` out of range.
    pub fn is_locked(&self, index: usize) -> Option<bool> {
        self.slots.get(index).map(|s| s.word.load(Ordering::Acquire) != 0)
    }

    /// Whether any lock is held.
    pub fn any_locked(&self) -> bool {
        self.slots.iter().any(|s| s.word.load(Ordering::Acquire) != 0)
    }
}

impl Default for PercpuMutex {
    fn default() -> Self {
        Self::new()
    }
}

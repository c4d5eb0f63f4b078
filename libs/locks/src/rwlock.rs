//! The per-CPU big-reader lock.
//!
//! Each possible CPU has two reader words written only by critical sections (`locks`,
//! `unlocks`: one rseq add each) and two written only by atomic adds (the same counts for
//! threads without rseq). A read lock adds 1 to its CPU's `locks`, then reads the writer
//! word; a read unlock adds 1 to `unlocks` of whatever CPU it runs on then, so a reader may
//! migrate. Readers use no fence: a writer sets the writer word, issues
//! `membarrier(PRIVATE_EXPEDITED_RSEQ)` on every CPU, which orders every running reader's
//! add before its read of the writer word, and then waits until the sum of every `unlocks`
//! word (read first) equals the sum of every `locks` word (read after a fence): each unlock
//! it counted had its lock counted, so equal sums mean no reader is inside. A reader that
//! finds the writer word set undoes its lock (an unlock) and sleeps until the writer leaves.
//! Without the rseq membarrier every reader takes the atomic path and the writer uses a
//! plain fence.

use core::sync::atomic::{compiler_fence, fence, AtomicU32, AtomicU64, Ordering};

use rseq::{Index, Outcome, PercpuArray, PercpuPtr, ThreadArea};

use crate::mutex::{my_tag, rseq_usable, SLEEP_NS, SPINS};
use crate::{futex, Error};

const SLOT: usize = 128;

#[repr(C, align(128))]
struct Slot {
    locks: u64,
    unlocks: u64,
    locks_atomic: AtomicU64,
    unlocks_atomic: AtomicU64,
}

const _: () = assert!(core::mem::size_of::<Slot>() == SLOT);

/// A big-reader lock: readers touch only their CPU's words, a writer excludes every reader
/// on every possible CPU.
pub struct BrLock {
    slots: Box<[core::cell::UnsafeCell<Slot>]>,
    locks: PercpuArray<u64>,
    unlocks: PercpuArray<u64>,
    locks_atomic: PercpuArray<AtomicU64>,
    unlocks_atomic: PercpuArray<AtomicU64>,
    /// 0 or the writer's tag.
    writer: AtomicU64,
    /// Threads (readers and writers) waiting for the writer word to clear.
    waiters: AtomicU32,
    /// Bumped when a writer leaves with waiters (their futex word).
    writer_seq: AtomicU32,
    /// Bumped by a reader that leaves while a writer is set (the draining writer's futex).
    drain_seq: AtomicU32,
    use_rseq: bool,
    /// Writers request the time-slice extension while they hold the lock.
    slice_ext: bool,
    /// Written and read by the writer only: what its time-slice request did.
    writer_slice: core::sync::atomic::AtomicU8,
}

// SAFETY: the reader words are written only by critical sections and atomic adds and read
// with atomic loads; everything else is atomic.
unsafe impl Send for BrLock {}
// SAFETY: as above.
unsafe impl Sync for BrLock {}

impl BrLock {
    /// A free lock.
    pub fn new() -> BrLock {
        let n = rseq::topology::nr_possible_cpus().max(1);
        let slots: Box<[core::cell::UnsafeCell<Slot>]> = (0..n)
            .map(|_| {
                core::cell::UnsafeCell::new(Slot {
                    locks: 0,
                    unlocks: 0,
                    locks_atomic: AtomicU64::new(0),
                    unlocks_atomic: AtomicU64::new(0),
                })
            })
            .collect();
        let base = slots.as_ptr() as *mut u8;
        // SAFETY: each array names one field of every slot (offsets 0, 8, 16, 24, stride
        // SLOT), valid and aligned while `slots` lives, as long as the arrays (owned by self).
        let arr =
            |off: usize| unsafe { PercpuArray::from_raw(PercpuPtr::new(base.add(off).cast(), SLOT), n, Index::CpuId) };
        BrLock {
            locks: arr(0),
            unlocks: arr(8),
            // SAFETY: as above.
            locks_atomic: unsafe { PercpuArray::from_raw(PercpuPtr::new(base.add(16).cast(), SLOT), n, Index::CpuId) },
            // SAFETY: as above.
            unlocks_atomic: unsafe {
                PercpuArray::from_raw(PercpuPtr::new(base.add(24).cast(), SLOT), n, Index::CpuId)
            },
            slots,
            writer: AtomicU64::new(0),
            waiters: AtomicU32::new(0),
            writer_seq: AtomicU32::new(0),
            drain_seq: AtomicU32::new(0),
            use_rseq: rseq_usable(),
            slice_ext: false,
            writer_slice: core::sync::atomic::AtomicU8::new(0),
        }
    }

    /// Like [`BrLock::new`], with the writer requesting the scheduler time-slice extension
    /// while it holds the lock (`on`; see [`crate::slice`]). Readers never request it: a read
    /// hold is per CPU and does not stop other readers.
    pub fn with_slice_extension(on: bool) -> BrLock {
        let mut l = BrLock::new();
        l.slice_ext = on;
        l
    }

    /// Whether readers use critical sections.
    pub fn uses_rseq(&self) -> bool {
        self.use_rseq
    }

    #[inline(always)]
    fn add(&self, words: &PercpuArray<u64>, atomic: &PercpuArray<AtomicU64>) {
        if self.use_rseq {
            // SAFETY: disjoint arrays inside live slots; `words` is written only by sections.
            unsafe { rseq::percpu_add(words, atomic, 1) };
        } else {
            // SAFETY: live slots.
            unsafe { rseq::fallback::add(atomic, 1) };
            fence(Ordering::SeqCst);
        }
    }

    /// One critical section adding 1 to the calling CPU's word of `words`; `false` when it
    /// did not commit (nothing was added: the caller takes the complete path).
    #[inline(always)]
    fn try_add_fast(&self, words: &PercpuArray<u64>) -> bool {
        if self.use_rseq {
            if let Some(area) = ThreadArea::current() {
                // SAFETY: `words` lies inside live slots and is written only by sections.
                return unsafe { area.try_add(words, 1) }.0 == Outcome::Committed;
            }
        }
        false
    }

    /// Takes the lock for reading (shared with other readers), waiting while a writer holds
    /// it. Not re-entrant with the caller's own write lock (`Deadlock`).
    ///
    /// The common case (one committed section, no writer) is inline and calls nothing; the
    /// restarts, the fallback and the wait for a writer are out of line, so the fast path
    /// keeps its few registers.
    #[inline]
    pub fn read_lock(&self) -> Result<(), Error> {
        if self.try_add_fast(&self.locks) {
            compiler_fence(Ordering::SeqCst);
            if self.writer.load(Ordering::Relaxed) == 0 {
                fence(Ordering::Acquire);
                return Ok(());
            }
            return self.read_lock_slow(true);
        }
        self.read_lock_slow(false)
    }

    /// The rest of [`BrLock::read_lock`]: `added` when the fast path's add committed and
    /// then found a writer.
    #[cold]
    #[inline(never)]
    fn read_lock_slow(&self, added: bool) -> Result<(), Error> {
        if added {
            self.read_back_off()?;
        }
        loop {
            self.add(&self.locks, &self.locks_atomic);
            compiler_fence(Ordering::SeqCst);
            if self.writer.load(Ordering::Relaxed) == 0 {
                fence(Ordering::Acquire);
                return Ok(());
            }
            self.read_back_off()?;
        }
    }

    #[cold]
    fn read_back_off(&self) -> Result<(), Error> {
        self.read_unlock();
        if self.writer.load(Ordering::Relaxed) == my_tag() {
            return Err(Error::Deadlock);
        }
        self.wait_writer_gone();
        Ok(())
    }

    /// Releases a read lock, on any CPU. A release without a matching [`BrLock::read_lock`]
    /// is not detected and leaves the lock unusable for writers.
    #[inline]
    pub fn read_unlock(&self) {
        fence(Ordering::Release);
        if !self.try_add_fast(&self.unlocks) {
            self.add_unlock_slow();
        }
        compiler_fence(Ordering::SeqCst);
        if self.writer.load(Ordering::Relaxed) != 0 {
            self.wake_writer();
        }
    }

    /// The unlock add when the fast path's section did not commit (nothing was added).
    #[cold]
    #[inline(never)]
    fn add_unlock_slow(&self) {
        self.add(&self.unlocks, &self.unlocks_atomic);
    }

    #[cold]
    fn wake_writer(&self) {
        self.drain_seq.fetch_add(1, Ordering::SeqCst);
        futex::wake(&self.drain_seq, i32::MAX);
    }

    fn wait_writer_gone(&self) {
        for _ in 0..SPINS {
            if self.writer.load(Ordering::Relaxed) == 0 {
                return;
            }
            core::hint::spin_loop();
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        loop {
            let s = self.writer_seq.load(Ordering::SeqCst);
            if self.writer.load(Ordering::SeqCst) == 0 {
                break;
            }
            futex::wait(&self.writer_seq, s, SLEEP_NS);
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Readers inside now (unlocks summed first, then locks): 0 means none.
    fn readers_inside(&self) -> u64 {
        let mut u = 0u64;
        for s in self.slots.iter() {
            let s = s.get();
            // SAFETY: live slot; sections write `unlocks` with plain aligned stores.
            u = u.wrapping_add(unsafe { AtomicU64::from_ptr(&raw mut (*s).unlocks) }.load(Ordering::Acquire));
            // SAFETY: live slot.
            u = u.wrapping_add(unsafe { &(*s).unlocks_atomic }.load(Ordering::Acquire));
        }
        fence(Ordering::SeqCst);
        let mut l = 0u64;
        for s in self.slots.iter() {
            let s = s.get();
            // SAFETY: as above.
            l = l.wrapping_add(unsafe { AtomicU64::from_ptr(&raw mut (*s).locks) }.load(Ordering::Acquire));
            // SAFETY: live slot.
            l = l.wrapping_add(unsafe { &(*s).locks_atomic }.load(Ordering::Acquire));
        }
        l.wrapping_sub(u)
    }

    /// Takes the lock for writing: excludes other writers and every reader.
    pub fn write_lock(&self) -> Result<(), Error> {
        let tag = my_tag();
        loop {
            match self.writer.compare_exchange(0, tag, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => break,
                Err(t) if t == tag => return Err(Error::Deadlock),
                Err(_) => self.wait_writer_gone(),
            }
        }
        if let Err(e) = self.fence_readers() {
            self.release_writer();
            return Err(e);
        }
        let mut spins = 0u32;
        loop {
            let s = self.drain_seq.load(Ordering::SeqCst);
            if self.readers_inside() == 0 {
                fence(Ordering::Acquire);
                if self.slice_ext {
                    self.writer_slice.store(crate::slice::begin(), Ordering::Relaxed);
                }
                return Ok(());
            }
            spins += 1;
            if spins < SPINS {
                core::hint::spin_loop();
            } else {
                futex::wait(&self.drain_seq, s, SLEEP_NS / 10);
            }
        }
    }

    fn fence_readers(&self) -> Result<(), Error> {
        if self.use_rseq {
            rseq::membarrier::fence_rseq(None).map_err(|_| Error::Internal)
        } else {
            fence(Ordering::SeqCst);
            Ok(())
        }
    }

    /// Releases the write lock. `NotOwner` when the caller does not hold it.
    pub fn write_unlock(&self) -> Result<(), Error> {
        if self.writer.load(Ordering::Relaxed) != my_tag() {
            return Err(Error::NotOwner);
        }
        let slice = self.writer_slice.swap(crate::slice::NONE, Ordering::Relaxed);
        self.release_writer();
        crate::slice::end(slice);
        Ok(())
    }

    fn release_writer(&self) {
        self.writer.store(0, Ordering::Release);
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.writer_seq.fetch_add(1, Ordering::SeqCst);
            futex::wake(&self.writer_seq, i32::MAX);
        }
    }

    /// Whether a writer holds the lock or a reader is inside (for destroy checks).
    pub fn is_busy(&self) -> bool {
        self.writer.load(Ordering::SeqCst) != 0 || self.readers_inside() != 0
    }
}

impl Default for BrLock {
    fn default() -> Self {
        Self::new()
    }
}

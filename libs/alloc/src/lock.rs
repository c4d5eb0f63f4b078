//! The allocator's lock: a spin lock that yields the CPU after a short spin, so that a
//! preempted holder does not keep waiters burning a 2-vCPU machine. Never held across a
//! call that can allocate. A lock is held across `fork` by the prepare handler (see
//! `fork.rs`), so a child never inherits one held by a thread it does not have.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};

/// A lock protecting a `T`.
pub struct SpinLock<T> {
    state: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through a guard, which only one thread holds.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// An unlocked lock.
    pub const fn new(value: T) -> Self {
        SpinLock { state: AtomicU32::new(0), value: UnsafeCell::new(value) }
    }

    /// Takes the lock.
    #[inline]
    pub fn lock(&self) -> Guard<'_, T> {
        if self.state.compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.lock_slow();
        }
        Guard { lock: self }
    }

    #[cold]
    fn lock_slow(&self) {
        let mut spins = 0u32;
        loop {
            if self.state.load(Ordering::Relaxed) == 0
                && self.state.compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                return;
            }
            spins += 1;
            if spins < 64 {
                core::hint::spin_loop();
            } else {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
    }

    /// Takes the lock when it is free; `None` otherwise.
    pub fn try_lock(&self) -> Option<Guard<'_, T>> {
        self.state.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).ok().map(|_| Guard { lock: self })
    }

    /// Takes the lock and keeps it without a guard (fork's prepare handler).
    pub fn hold(&self) {
        core::mem::forget(self.lock());
    }

    /// Releases a lock taken with [`hold`](Self::hold).
    ///
    /// # Safety
    /// The lock was taken with `hold` by this thread (or, in a forked child, by the parent
    /// thread it was forked from), and no guard of it exists.
    pub unsafe fn release_held(&self) {
        self.state.store(0, Ordering::Release);
    }

    /// The value, without locking.
    ///
    /// # Safety
    /// Nothing else uses the value meanwhile (e.g. it is only read for a report while its
    /// fields are plain words that may be torn into stale but harmless numbers).
    pub unsafe fn get_unlocked(&self) -> *mut T {
        self.value.get()
    }
}

/// Exclusive access to the value while the lock is held.
pub struct Guard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> core::ops::Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> core::ops::DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        self.lock.state.store(0, Ordering::Release);
    }
}

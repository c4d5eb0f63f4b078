//! A small futex mutex for the libraries' own bookkeeping (libpcounters' registry,
//! libprcu's grace-period runner, callback queue and map writers). Each library links its
//! own copy; a lock is plain memory, so nothing is shared between copies.
//!
//! `std::sync::Mutex` cannot be taken in a `pthread_atfork` prepare handler and released
//! in the parent and child handlers (its guard is the only way to unlock it). This lock
//! can: [`Lock::raw_lock`] / [`Lock::raw_unlock`] work without a guard, and
//! [`Lock::reset_in_child`] makes the single thread of a forked child the owner of a
//! free lock. It has no thread-local state and no destructor, so the library stays
//! unloadable.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
/// Locked, and a thread may be sleeping on the futex.
const CONTENDED: u32 = 2;

/// A mutual-exclusion lock around `T`.
///
/// Not reentrant: a thread that takes it twice waits forever.
pub struct Lock<T> {
    state: AtomicU32,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through a guard, which exists on one thread at a time.
unsafe impl<T: Send> Sync for Lock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Lock<T> {}

impl<T> Lock<T> {
    pub const fn new(data: T) -> Self {
        Lock { state: AtomicU32::new(UNLOCKED), data: UnsafeCell::new(data) }
    }

    /// Takes the lock.
    pub fn lock(&self) -> Guard<'_, T> {
        self.raw_lock();
        Guard { lock: self }
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Option<Guard<'_, T>> {
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Guard { lock: self })
    }

    /// Takes the lock without a guard; release it with [`Lock::raw_unlock`].
    pub fn raw_lock(&self) {
        if self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return;
        }
        // The sections it guards are short: spin a little before sleeping.
        for _ in 0..100 {
            core::hint::spin_loop();
            if self.state.load(Ordering::Relaxed) == UNLOCKED
                && self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                return;
            }
        }
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            futex(&self.state, libc::FUTEX_WAIT, CONTENDED);
        }
    }

    /// Releases the lock taken by [`Lock::raw_lock`].
    ///
    /// # Safety
    /// The calling thread holds the lock and no guard for it exists.
    pub unsafe fn raw_unlock(&self) {
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            futex(&self.state, libc::FUTEX_WAKE, 1);
        }
    }

    /// In a forked child, whose only thread took the lock in the prepare handler: frees it.
    ///
    /// # Safety
    /// Only in the child handler of `pthread_atfork`, after the prepare handler took the lock.
    pub unsafe fn reset_in_child(&self) {
        self.state.store(UNLOCKED, Ordering::Release);
    }
}

fn futex(word: &AtomicU32, op: libc::c_int, val: u32) {
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; FUTEX_WAIT with
    // no timeout and FUTEX_WAKE take no other pointer. Errors (EAGAIN, EINTR) only mean
    // "look at the word again", which every caller does.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op | libc::FUTEX_PRIVATE_FLAG,
            val,
            core::ptr::null::<libc::timespec>(),
        );
    }
}

/// Access to the locked data; releases the lock when dropped.
pub struct Guard<'a, T> {
    lock: &'a Lock<T>,
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held by this thread.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, and `&mut self` makes this the only reference.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard was created by `lock`, so this thread holds the lock.
        unsafe { self.lock.raw_unlock() };
    }
}

#[cfg(test)]
mod tests {
    use super::Lock;
    use std::sync::Arc;

    #[test]
    fn a_non_atomic_counter_under_the_lock_stays_exact() {
        let lock = Arc::new(Lock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u32 {
                        if i % 3 == 0 {
                            lock.raw_lock();
                            // SAFETY: this thread holds the lock (raw_lock), no guard exists.
                            unsafe {
                                *lock.data.get() += 1;
                                lock.raw_unlock();
                            }
                        } else {
                            *lock.lock() += 1;
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 4 * 50_000);
    }

    #[test]
    fn try_lock_fails_while_held_and_succeeds_after() {
        let lock = Lock::new(7);
        let g = lock.lock();
        assert!(lock.try_lock().is_none());
        drop(g);
        assert_eq!(*lock.try_lock().expect("free lock"), 7);
    }

    #[test]
    fn reset_in_child_frees_a_lock_taken_before_fork() {
        let lock = Lock::new(());
        lock.raw_lock();
        // SAFETY: the test thread took it with raw_lock (as a prepare handler would).
        unsafe { lock.reset_in_child() };
        assert!(lock.try_lock().is_some());
    }
}

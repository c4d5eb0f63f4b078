//! Sleeping on a 32-bit word (`futex(2)`, process-private), with a timeout as a backstop.

use core::sync::atomic::AtomicU32;

/// Sleeps while `*word == expect`, at most `timeout_ns` nanoseconds (0: no limit). Returns
/// on a wake, a timeout, a signal or a mismatch alike: callers re-check their condition.
pub(crate) fn wait(word: &AtomicU32, expect: u32, timeout_ns: u64) {
    let ts = libc::timespec { tv_sec: (timeout_ns / 1_000_000_000) as _, tv_nsec: (timeout_ns % 1_000_000_000) as _ };
    let tsp: *const libc::timespec = if timeout_ns == 0 { core::ptr::null() } else { &ts };
    // SAFETY: `word` is a live, aligned 32-bit word; the kernel only reads it and `ts`.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, expect, tsp);
    }
}

/// Wakes up to `n` threads sleeping on `word`.
pub(crate) fn wake(word: &AtomicU32, n: i32) {
    // SAFETY: as for `wait`; FUTEX_WAKE does not dereference the word.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, n);
    }
}

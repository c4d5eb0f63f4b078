//! Raw system calls this crate makes itself.

/// `rseq(area, len, flags = 0, sig)`: registers `area` for the calling thread.
/// Returns the errno on failure. Async-signal-safe.
pub fn rseq_register(area: *mut u8, len: u32, sig: u32) -> Result<(), i32> {
    // SAFETY: the kernel validates every argument; a bad area yields EFAULT/EINVAL.
    let r = unsafe { libc::syscall(libc::SYS_rseq, area, len, 0, sig) };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// The calling thread's `errno`.
pub fn errno() -> i32 {
    // SAFETY: __errno_location always returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() }
}

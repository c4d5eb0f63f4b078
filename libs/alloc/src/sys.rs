//! The few system calls the allocator makes, as thin wrappers: anonymous mappings, giving
//! pages back, `errno`, and a coarse clock. None of them allocates.

use core::ptr;

/// Page size the allocator assumes for its own arithmetic (x86_64 and the common aarch64
/// kernels). Spans and chunks are multiples of 64 KiB, so 16 KiB and 64 KiB pages work too.
pub const PAGE: usize = 4096;

/// Maps `len` bytes of fresh zeroed memory; `None` when the kernel refuses (`errno` is
/// then `ENOMEM` or similar).
pub fn map(len: usize) -> Option<*mut u8> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choice.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p.cast())
}

/// Maps `len` bytes aligned to `align` (a power of two >= PAGE): maps `len + align` and
/// unmaps the excess on both sides.
pub fn map_aligned(len: usize, align: usize) -> Option<*mut u8> {
    if align <= PAGE {
        return map(len);
    }
    let total = len.checked_add(align)?;
    let raw = map(total)? as usize;
    let start = (raw + align - 1) & !(align - 1);
    // SAFETY: both pieces lie inside the mapping just made, which nobody else knows of.
    unsafe {
        if start > raw {
            libc::munmap(raw as *mut _, start - raw);
        }
        let end = start + len;
        if raw + total > end {
            libc::munmap(end as *mut _, raw + total - end);
        }
    }
    Some(start as *mut u8)
}

/// Unmaps a mapping made here.
///
/// # Safety
/// `[p, p + len)` is a mapping of this allocator that nothing uses any more.
pub unsafe fn unmap(p: *mut u8, len: usize) {
    // SAFETY: forwarded contract.
    unsafe { libc::munmap(p.cast(), len) };
}

/// Gives the pages of `[p, p + len)` back to the kernel; they read as zero when touched
/// again. Keeps `errno`.
///
/// # Safety
/// The range is page-aligned, inside a mapping of this allocator, and holds nothing live.
pub unsafe fn release(p: *mut u8, len: usize) {
    let e = errno();
    // SAFETY: forwarded contract.
    unsafe { libc::madvise(p.cast(), len, libc::MADV_DONTNEED) };
    set_errno(e);
}

/// The calling thread's `errno`.
#[inline]
pub fn errno() -> i32 {
    // SAFETY: libc's errno location is valid for the calling thread.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
#[inline]
pub fn set_errno(e: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e };
}

/// Milliseconds of `CLOCK_MONOTONIC_COARSE` (a vDSO read, no system call).
pub fn coarse_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Writes all of `bytes` to file descriptor `fd` (best effort; for messages and reports).
pub fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: a valid buffer of `bytes.len()` bytes.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// A fixed buffer that `core::fmt` writes into, for messages formatted without allocating.
pub struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        StackBuf { buf: [0; N], len: 0 }
    }

    /// What was written (cut at `N` bytes).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> Default for StackBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let k = s.len().min(N - self.len);
        self.buf[self.len..self.len + k].copy_from_slice(&s.as_bytes()[..k]);
        self.len += k;
        Ok(())
    }
}

/// Ends the process with a message on stderr, without allocating: the allocator's answer to
/// a corrupted heap or an invalid pointer (continuing would corrupt memory silently).
pub fn fatal(args: core::fmt::Arguments<'_>) -> ! {
    use core::fmt::Write;
    let mut b = StackBuf::<512>::new();
    let _ = b.write_fmt(args);
    let _ = b.write_str("\n");
    write_all(2, b"palloc: ");
    write_all(2, b.as_bytes());
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// `getenv(name)` as bytes, without allocating; `name` ends with a NUL.
pub fn env(name: &[u8]) -> Option<&'static [u8]> {
    debug_assert_eq!(name.last(), Some(&0));
    // SAFETY: a NUL-terminated name; the value lives as long as the environment is not
    // changed, which the allocator reads only at start-up.
    unsafe {
        let v = libc::getenv(name.as_ptr().cast());
        if v.is_null() {
            None
        } else {
            Some(core::ffi::CStr::from_ptr(v).to_bytes())
        }
    }
}

/// Whether the environment variable is set to something other than empty or `0`.
pub fn env_flag(name: &[u8]) -> bool {
    matches!(env(name), Some(v) if !v.is_empty() && v != b"0")
}

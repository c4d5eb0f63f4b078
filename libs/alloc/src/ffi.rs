//! The prefixed C API (`include/palloc.h`). These functions never replace anyone's
//! `malloc`: a program that loads `libpalloc.so` (even with `RTLD_GLOBAL`) keeps its own
//! allocator and calls these by name. A pointer they did not hand out ends the process
//! with a message naming it.

use core::ffi::{c_int, c_void};

use crate::api::{self, Foreign};
use crate::{cache, stats, sys};

/// `malloc`.
#[no_mangle]
pub extern "C" fn palloc_malloc(size: usize) -> *mut c_void {
    api::malloc(size).cast()
}

/// `free`.
#[no_mangle]
pub extern "C" fn palloc_free(p: *mut c_void) {
    api::free(p.cast(), Foreign::Abort("palloc_free"))
}

/// `calloc`.
#[no_mangle]
pub extern "C" fn palloc_calloc(n: usize, size: usize) -> *mut c_void {
    api::calloc(n, size).cast()
}

/// `realloc`.
#[no_mangle]
pub extern "C" fn palloc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    api::realloc(p.cast(), size, Foreign::Abort("palloc_realloc")).cast()
}

/// `aligned_alloc`: `align` a power of two, else null with `EINVAL`.
#[no_mangle]
pub extern "C" fn palloc_aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        sys::set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    api::aligned(align, size).cast()
}

/// `malloc_usable_size`.
#[no_mangle]
pub extern "C" fn palloc_usable_size(p: *mut c_void) -> usize {
    api::usable_size(p.cast(), Foreign::Abort("palloc_usable_size"))
}

/// Returns cached memory to the kernel where it can; 1 when something was released.
#[no_mangle]
pub extern "C" fn palloc_trim() -> c_int {
    api::trim() as c_int
}

/// Fills `*out` (of `size` bytes, for growth) with the statistics; 0, or `-EINVAL`.
///
/// # Safety
/// `out` points to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn palloc_stats(out: *mut stats::Stats, size: usize) -> c_int {
    if out.is_null() || size == 0 {
        return -libc::EINVAL;
    }
    let s = stats::stats();
    let n = size.min(core::mem::size_of::<stats::Stats>());
    // SAFETY: `out` has `size >= n` bytes; `s` has `n`.
    unsafe { core::ptr::copy_nonoverlapping((&s as *const stats::Stats).cast::<u8>(), out.cast::<u8>(), n) };
    0
}

/// Fills `*out` with the statistics of CPU cache `cpu`; 0, `-EINVAL` (null), `-ERANGE`
/// (no such copy), `-ENODEV` (no per-CPU layer yet).
///
/// # Safety
/// `out` points to a writable `struct palloc_cpu_stats`.
#[no_mangle]
pub unsafe extern "C" fn palloc_cpu_stats(cpu: u32, out: *mut stats::CpuStats) -> c_int {
    if out.is_null() {
        return -libc::EINVAL;
    }
    let Some(k) = cache::built() else { return -libc::ENODEV };
    if cpu as usize >= k.ncpus {
        return -libc::ERANGE;
    }
    match stats::cpu_stats(cpu as usize) {
        Some(s) => {
            // SAFETY: a writable struct.
            unsafe { out.write(s) };
            0
        }
        None => -libc::ERANGE,
    }
}

/// Prints the statistics table to file descriptor `fd`.
#[no_mangle]
pub extern "C" fn palloc_print_stats(fd: c_int) {
    stats::print(fd)
}

/// Chooses the per-CPU index (`PALLOC_INDEX_CPU_ID` 0 or `PALLOC_INDEX_MM_CID` 1, which
/// falls back to `cpu_id` where the kernel has no `mm_cid`) before the first allocation;
/// 0, `-EINVAL` (unknown index) or `-EBUSY` (the per-CPU layer exists).
#[no_mangle]
pub extern "C" fn palloc_set_index(index: c_int) -> c_int {
    let mm = match index {
        0 => false,
        1 => true,
        _ => return -libc::EINVAL,
    };
    if cache::set_index(mm) {
        0
    } else {
        -libc::EBUSY
    }
}

/// Turns counting of per-CPU hits on (1) or off (0); returns the previous setting.
#[no_mangle]
pub extern "C" fn palloc_count_hits(on: c_int) -> c_int {
    cache::COUNT_HITS.swap(on != 0, core::sync::atomic::Ordering::Relaxed) as c_int
}

/// Moves the calling process's per-CPU caches onto their fallback halves (1) or back (0):
/// for tests of the path taken without rseq.
#[no_mangle]
pub extern "C" fn palloc_force_fallback(on: c_int) {
    rseq::force_fallback(on != 0)
}

/// The calling thread's rseq mode as libs/rseq reports it: 1 libc-owned, 2 registered,
/// 4 unavailable, 5 disabled (the numbering of libpcounters).
#[no_mangle]
pub extern "C" fn palloc_thread_mode() -> c_int {
    match rseq::mode() {
        rseq::Mode::LibcOwned => 1,
        rseq::Mode::Registered => 2,
        rseq::Mode::Unavailable { .. } => 4,
        rseq::Mode::Disabled => 5,
    }
}

/// The errno of the calling thread's failed registration (0 if none).
#[no_mangle]
pub extern "C" fn palloc_thread_errno() -> c_int {
    match rseq::mode() {
        rseq::Mode::Unavailable { errno } => errno,
        _ => 0,
    }
}

/// Library version, `"0.1.0"`.
#[no_mangle]
pub extern "C" fn palloc_version() -> *const core::ffi::c_char {
    c"0.1.0".as_ptr()
}

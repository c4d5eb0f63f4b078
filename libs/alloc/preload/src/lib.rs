//! `libpalloc_preload.so`: palloc as the process's `malloc`, for `LD_PRELOAD` (or linking
//! ahead of libc). It exports the C allocation API with glibc's semantics plus palloc's own
//! prefixed API (statistics, trim). Rust code inside it allocates through palloc directly.
//!
//! A pointer palloc did not hand out (memory glibc's malloc gave before the preload took
//! over, or that a library obtained from `__libc_malloc`) is passed to glibc: `free` calls
//! `__libc_free`, `realloc` calls `__libc_realloc`, `malloc_usable_size` glibc's own.

use core::ffi::{c_int, c_void};

use palloc::c as api;
use palloc::Foreign;

#[global_allocator]
static ALLOC: palloc::Palloc = palloc::Palloc;

const F: Foreign = Foreign::Libc;

/// `malloc(3)`.
#[no_mangle]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    api::malloc(size).cast()
}

/// `free(3)`; keeps `errno`.
#[no_mangle]
pub extern "C" fn free(p: *mut c_void) {
    let e = api::errno();
    api::free(p.cast(), F);
    api::set_errno(e);
}

/// The obsolete `cfree`.
#[no_mangle]
pub extern "C" fn cfree(p: *mut c_void) {
    free(p)
}

/// `calloc(3)`: null with `ENOMEM` when `n * size` overflows.
#[no_mangle]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    api::calloc(n, size).cast()
}

/// `realloc(3)`: `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` frees `p` and returns
/// NULL (glibc's behaviour).
#[no_mangle]
pub extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    api::realloc(p.cast(), size, F).cast()
}

/// `reallocarray(3)`: null with `ENOMEM` on overflow, the block unchanged.
#[no_mangle]
pub extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) => realloc(p, total),
        None => {
            api::set_errno(libc::ENOMEM);
            core::ptr::null_mut()
        }
    }
}

/// `posix_memalign(3)`: `EINVAL` unless `align` is a power of two multiple of
/// `sizeof(void *)`; `ENOMEM` when out of memory (`errno` unchanged either way).
///
/// # Safety
/// `out` is a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<usize>()) {
        return libc::EINVAL;
    }
    let e = api::errno();
    let p = api::aligned(align, size);
    api::set_errno(e);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller's valid out-pointer.
    unsafe { out.write(p.cast()) };
    0
}

/// `aligned_alloc(3)`: null with `EINVAL` unless `align` is a power of two.
#[no_mangle]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        api::set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    api::aligned(align, size).cast()
}

/// `memalign(3)`: an alignment that is not a power of two is rounded up to one (glibc).
#[no_mangle]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    let a = align.max(1).checked_next_power_of_two();
    match a {
        Some(a) if a <= isize::MAX as usize / 2 => api::aligned(a, size).cast(),
        _ => {
            api::set_errno(libc::EINVAL);
            core::ptr::null_mut()
        }
    }
}

fn page() -> usize {
    // SAFETY: no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// `valloc(3)`: page-aligned.
#[no_mangle]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    api::aligned(page(), size).cast()
}

/// `pvalloc(3)`: page-aligned, size rounded up to whole pages (one page for 0).
#[no_mangle]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let pg = page();
    match size.max(1).checked_add(pg - 1) {
        Some(n) => api::aligned(pg, n & !(pg - 1)).cast(),
        None => {
            api::set_errno(libc::ENOMEM);
            core::ptr::null_mut()
        }
    }
}

/// `malloc_usable_size(3)`.
#[no_mangle]
pub extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    api::usable_size(p.cast(), F)
}

/// `malloc_trim(3)`: drains the CPU caches and returns free pages; 1 when memory was
/// released. The padding argument is ignored.
#[no_mangle]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    api::trim() as c_int
}

/// `malloc_stats(3)`: palloc's statistics table on stderr.
#[no_mangle]
pub extern "C" fn malloc_stats() {
    api::print(2)
}

/// `malloc_info(3)`: a small XML document with palloc's totals; `EINVAL` for options != 0.
///
/// # Safety
/// `stream` is a valid `FILE *`.
#[no_mangle]
pub unsafe extern "C" fn malloc_info(options: c_int, stream: *mut libc::FILE) -> c_int {
    if options != 0 || stream.is_null() {
        api::set_errno(libc::EINVAL);
        return -1;
    }
    let s = api::stats();
    let text = format!(
        "<malloc version=\"palloc-0.1.0\">\n<total type=\"mapped\" size=\"{}\"/>\n<total type=\"resident\" \
         size=\"{}\"/>\n<total type=\"live\" size=\"{}\"/>\n<total type=\"cached\" size=\"{}\"/>\n<total \
         type=\"large\" count=\"{}\" size=\"{}\"/>\n</malloc>\n\0",
        s.mapped_bytes,
        s.resident_bytes,
        s.live_bytes,
        s.cached_bytes + s.transfer_bytes,
        s.large_count,
        s.large_bytes
    );
    // SAFETY: a NUL-terminated string and the caller's stream.
    unsafe { libc::fputs(text.as_ptr().cast(), stream) };
    0
}

/// Finds glibc's `malloc_usable_size` for pointers that are not palloc's.
extern "C" fn at_load() {
    // SAFETY: dlsym with a NUL-terminated name; may allocate, which palloc serves.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"malloc_usable_size".as_ptr()) };
    api::LIBC_USABLE_SIZE.store(f as usize, core::sync::atomic::Ordering::Release);
}

#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;

//! The allocation functions with C semantics (null, `errno`, zero sizes, alignment), used by
//! the prefixed C API ([`crate::ffi`]), the drop-in build and the Rust [`crate::Palloc`].

// The functions take C's contract: any pointer the caller passes must be one this allocator
// handed out (or, in the drop-in, glibc's); they check what is cheap to check (README).
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use core::ptr;
use core::sync::atomic::Ordering;

use crate::central::{self, Mark};
use crate::class::{self, MAX_SMALL, NCACHED};
use crate::{cache, large, pagemap, sys};

/// What to do with a pointer that palloc did not hand out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Foreign {
    /// End the process with a message naming the pointer and the call (the prefixed API:
    /// the caller mixed allocators).
    Abort(&'static str),
    /// Hand it to glibc's allocator (the drop-in build: memory glibc's malloc handed out
    /// before the preload took over, or to a library bound to it directly).
    Libc,
}

extern "C" {
    fn __libc_free(p: *mut libc::c_void);
    fn __libc_realloc(p: *mut libc::c_void, n: usize) -> *mut libc::c_void;
}

/// glibc's `malloc_usable_size`, found with `dlsym(RTLD_NEXT)` at load time by the drop-in.
pub static LIBC_USABLE_SIZE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

#[inline]
fn check_on() -> bool {
    central::CHECK.load(Ordering::Relaxed)
}

#[cold]
fn mark_allocated(p: u64) {
    let chunk = pagemap::lookup(p as usize);
    // SAFETY: chunk records live until unload; `p` came from a span of this chunk.
    if let Mark::Wrong = central::mark(unsafe { &*chunk }, p as usize, true) {
        sys::fatal(format_args!("heap corruption: {:#x} handed out while already allocated (a double free?)", p));
    }
}

/// An object of class `c`; null with `errno = ENOMEM` when out of memory.
#[inline(always)]
fn small(c: usize) -> *mut u8 {
    let p = match cache::get() {
        Some(k) if c < NCACHED => match k.pop(c) {
            Some(v) => v,
            None => k.refill(c),
        },
        _ => central_one(c),
    };
    if p == 0 {
        return small_after_oom(c);
    }
    if check_on() {
        mark_allocated(p);
    }
    p as *mut u8
}

/// Out of memory for class `c`: return what the caches hold (empty chunks can then serve
/// this class) and try once more.
#[cold]
fn small_after_oom(c: usize) -> *mut u8 {
    trim();
    let p = central_one(c);
    if p == 0 {
        sys::set_errno(libc::ENOMEM);
        return ptr::null_mut();
    }
    if check_on() {
        mark_allocated(p);
    }
    p as *mut u8
}

#[cold]
fn central_one(c: usize) -> u64 {
    let mut b = [0u64; 1];
    if central::take(c, &mut b) == 0 {
        0
    } else {
        b[0]
    }
}

/// `malloc`: at least `size` bytes aligned to 16 (a unique block for 0).
#[inline]
pub fn malloc(size: usize) -> *mut u8 {
    if size <= MAX_SMALL {
        small(class::class_of(size))
    } else {
        large::alloc(size, sys::PAGE, false)
    }
}

/// `calloc`: `n * size` zeroed bytes; null with `ENOMEM` on overflow.
pub fn calloc(n: usize, size: usize) -> *mut u8 {
    let Some(total) = n.checked_mul(size) else {
        sys::set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    if total > MAX_SMALL {
        return large::alloc(total, sys::PAGE, true);
    }
    let p = malloc(total);
    if !p.is_null() {
        // SAFETY: a fresh block of at least `total` bytes.
        unsafe { ptr::write_bytes(p, 0, total) };
    }
    p
}

/// An allocation aligned to `align`, a power of two (callers check).
pub fn aligned(align: usize, size: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two());
    if align <= 16 {
        return malloc(size);
    }
    let want = size.max(align);
    if want <= MAX_SMALL && align <= 64 * 1024 {
        // Objects sit at multiples of the class size from a span start aligned to at least
        // 64 KiB: a class whose size is a multiple of `align` gives aligned objects, and
        // the next power of two is always such a class.
        let mut c = class::class_of(want);
        while !class::class_size(c).is_multiple_of(align) {
            c += 1;
        }
        return small(c);
    }
    large::alloc(size.max(1), align.max(sys::PAGE), false)
}

#[cold]
fn foreign_free(p: *mut u8, foreign: Foreign) {
    match foreign {
        Foreign::Abort(call) => sys::fatal(format_args!("{call}({p:p}): pointer not allocated by palloc")),
        // SAFETY: the drop-in passes glibc the pointers it does not know; glibc's own checks
        // report a pointer that is nobody's.
        Foreign::Libc => unsafe { __libc_free(p.cast()) },
    }
}

#[cold]
fn bad_free(p: *mut u8, what: &str, call: &str) -> ! {
    sys::fatal(format_args!("{call}({p:p}): {what}"))
}

/// `free`; keeps `errno`.
#[inline]
pub fn free(p: *mut u8, foreign: Foreign) {
    if p.is_null() {
        return;
    }
    let chunk = pagemap::lookup(p as usize);
    if chunk.is_null() {
        return free_not_small(p, foreign);
    }
    // SAFETY: chunk records live until unload.
    let c = unsafe { (*chunk).class } as usize;
    if check_on() {
        let call = match foreign {
            Foreign::Abort(call) => call,
            Foreign::Libc => "free",
        };
        // SAFETY: as above.
        match central::mark(unsafe { &*chunk }, p as usize, false) {
            Mark::Ok => {}
            Mark::NotAnObject => bad_free(p, "not the start of a block palloc handed out (invalid free)", call),
            Mark::Wrong => bad_free(p, "block is not allocated (double free)", call),
        }
    }
    match cache::built() {
        Some(k) if c < NCACHED => {
            if let Err(v) = k.push(c, p as u64) {
                k.overflow(c, v);
            }
        }
        _ => central::give(c, &[p as u64]),
    }
}

#[cold]
fn free_not_small(p: *mut u8, foreign: Foreign) {
    if !large::free(p as usize) {
        foreign_free(p, foreign);
    }
}

/// `malloc_usable_size`: bytes usable at `p` (0 for null).
pub fn usable_size(p: *mut u8, foreign: Foreign) -> usize {
    if p.is_null() {
        return 0;
    }
    let chunk = pagemap::lookup(p as usize);
    if !chunk.is_null() {
        // SAFETY: chunk records live until unload.
        return class::class_size(unsafe { (*chunk).class } as usize);
    }
    if let Some(len) = large::len_of(p as usize) {
        return len;
    }
    match foreign {
        Foreign::Abort(call) => sys::fatal(format_args!("{call}({p:p}): pointer not allocated by palloc")),
        Foreign::Libc => {
            let f = LIBC_USABLE_SIZE.load(Ordering::Acquire);
            if f == 0 {
                return 0;
            }
            // SAFETY: glibc's malloc_usable_size, for a pointer of glibc's.
            let f: extern "C" fn(*mut libc::c_void) -> usize = unsafe { core::mem::transmute(f) };
            f(p.cast())
        }
    }
}

/// `realloc`, with glibc's rules: null → `malloc`, size 0 → `free` and null; on failure
/// null with `ENOMEM` and the block unchanged.
pub fn realloc(p: *mut u8, size: usize, foreign: Foreign) -> *mut u8 {
    if p.is_null() {
        return malloc(size);
    }
    if size == 0 {
        free(p, foreign);
        return ptr::null_mut();
    }
    let chunk = pagemap::lookup(p as usize);
    let old = if !chunk.is_null() {
        // SAFETY: chunk records live until unload.
        let old = class::class_size(unsafe { (*chunk).class } as usize);
        if size <= old && size >= old / 2 {
            return p;
        }
        old
    } else if let Some(len) = large::len_of(p as usize) {
        if size > MAX_SMALL {
            let q = large::resize(p as usize, len, size);
            if q.is_null() {
                sys::set_errno(libc::ENOMEM);
            }
            return q;
        }
        len
    } else {
        return match foreign {
            Foreign::Abort(call) => sys::fatal(format_args!("{call}({p:p}): pointer not allocated by palloc")),
            // SAFETY: a block of glibc's stays glibc's.
            Foreign::Libc => unsafe { __libc_realloc(p.cast(), size).cast() },
        };
    };
    let q = malloc(size);
    if !q.is_null() {
        // SAFETY: both blocks hold at least `min(old, size)` bytes and are distinct.
        unsafe { ptr::copy_nonoverlapping(p, q, old.min(size)) };
        free(p, foreign);
    }
    q
}

/// Returns cached memory: drains every CPU cache, empties the transfer stacks (spans that
/// become empty give their pages back). True when something was returned.
pub fn trim() -> bool {
    let before = central::CENTRAL.iter().map(|c| c.lock().releases).sum::<u64>();
    let e = sys::errno();
    if let Some(k) = cache::built() {
        k.drain_all();
    }
    central::flush_all();
    let had_cached = large::CACHED_BYTES.load(Ordering::Relaxed) > 0;
    large::unmap_cached();
    let unmapped = central::unmap_empty_chunks() + had_cached as usize;
    sys::set_errno(e);
    unmapped > 0 || central::CENTRAL.iter().map(|c| c.lock().releases).sum::<u64>() > before
}

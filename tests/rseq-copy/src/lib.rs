//! A tiny library carrying its own copy of `libs/rseq`, for the tests. The test suite copies
//! the built `.so` to several file names and loads each with `RTLD_LOCAL`: every load is an
//! independent library with its own copy of the crate, exactly like two unrelated libraries
//! in one process. It exports a per-copy counter and the copy's view of rseq.
//!
//! Nothing here has a thread-local destructor, so the library really unloads on `dlclose`.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use rseq::pool::PercpuPool;
use rseq::{Index, Mode, PercpuArray};

/// Two per-CPU counters, one indexed by `cpu_id` and one by `mm_cid`: a structure must
/// always be indexed the same way (a thread indexing by CPU and another by concurrency id
/// could both hold index 1 at once).
struct Counter {
    _pool: PercpuPool,
    words: [PercpuArray<u64>; 2],
    fallback: [PercpuArray<AtomicU64>; 2],
}

/// Made when the library is loaded (no once-cell a forked child could find mid-way); the
/// pool is leaked: its memory must outlive any thread still counting at unload.
static COUNTER: AtomicPtr<Counter> = AtomicPtr::new(std::ptr::null_mut());

rseq::init_at_load!();

#[used]
#[link_section = ".init_array"]
static MAKE_COUNTER_AT_LOAD: extern "C" fn() = {
    extern "C" fn make_counter() {
        let pool = PercpuPool::new(4096).expect("per-CPU pool");
        // SAFETY: zeroed 8-byte slots are valid u64 / AtomicU64 copies.
        let slot = |index| pool.alloc_array(8, 8, index).expect("slot");
        // SAFETY: as above.
        let words = unsafe { [slot(Index::CpuId).cast(), slot(Index::MmCid).cast()] };
        // SAFETY: as above.
        let fallback = unsafe { [slot(Index::CpuId).cast(), slot(Index::CpuId).cast()] };
        let c = Box::new(Counter { _pool: pool, words, fallback });
        COUNTER.store(Box::into_raw(c), Ordering::Release);
    }
    make_counter
};

fn counter() -> &'static Counter {
    // SAFETY: set at load, before any caller can reach this library, and never freed.
    unsafe { &*COUNTER.load(Ordering::Acquire) }
}

/// Mode codes returned by [`rseqcopy_mode`].
pub const MODE_LIBC_OWNED: i32 = 0;
/// libc only reserved the area; a library (this copy or a peer) registered it.
pub const MODE_REGISTERED: i32 = 1;
/// No area: fallback path.
pub const MODE_UNAVAILABLE: i32 = 3;
/// Fallback forced.
pub const MODE_DISABLED: i32 = 4;

/// The calling thread's mode as this copy sees it; `errno` receives the registration error.
///
/// # Safety
/// `errno` is NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn rseqcopy_mode(errno: *mut i32) -> i32 {
    let (code, e) = match rseq::mode() {
        Mode::LibcOwned => (MODE_LIBC_OWNED, 0),
        Mode::Registered => (MODE_REGISTERED, 0),
        Mode::Unavailable { errno } => (MODE_UNAVAILABLE, errno),
        Mode::Disabled => (MODE_DISABLED, 0),
    };
    if !errno.is_null() {
        // SAFETY: the caller passes a valid pointer or NULL.
        unsafe { *errno = e };
    }
    code
}

/// Adds `n` to this copy's per-CPU counter (index by `mm_cid` when `mm_cid != 0`).
/// Returns 0 when the rseq path was taken, 1 for the fallback path.
#[no_mangle]
pub extern "C" fn rseqcopy_add(n: u64, mm_cid: i32) -> i32 {
    let c = counter();
    let k = usize::from(mm_cid != 0);
    // SAFETY: both arrays are live pool slots; the words are written only by sections.
    match unsafe { rseq::percpu_add(&c.words[k], &c.fallback[k], n) } {
        rseq::Path::Rseq => 0,
        rseq::Path::Fallback => 1,
    }
}

/// Exact sum of this copy's counters.
#[no_mangle]
pub extern "C" fn rseqcopy_sum() -> u64 {
    let c = counter();
    // SAFETY: as in `rseqcopy_add`.
    (0..2).map(|k| unsafe { rseq::percpu_sum(&c.words[k], &c.fallback[k]) }).sum()
}

/// This copy's process-wide abort count.
#[no_mangle]
pub extern "C" fn rseqcopy_aborts() -> u64 {
    rseq::stats().aborts
}

/// This copy's process-wide count of threads it registered libc's reserved area for.
#[no_mangle]
pub extern "C" fn rseqcopy_registered_by_us() -> u64 {
    rseq::stats().registered_by_us
}

/// This copy's process-wide count of fallback operations.
#[no_mangle]
pub extern "C" fn rseqcopy_fallback_ops() -> u64 {
    rseq::stats().fallback_ops
}

/// The usable feature size of the area as this copy computed it.
#[no_mangle]
pub extern "C" fn rseqcopy_feature_size() -> u32 {
    rseq::feature_size()
}

/// Unregisters the calling thread's area (`RSEQ_FLAG_UNREGISTER`), as a tracer or a foreign
/// runtime could; returns 0 or the errno.
#[no_mangle]
pub extern "C" fn rseqcopy_unregister() -> i32 {
    match rseq::ThreadArea::current() {
        // SAFETY: the raw syscall with the thread's own area, length and signature.
        Some(a) => unsafe {
            if libc::syscall(libc::SYS_rseq, a.as_ptr(), 32u32, 1, rseq::RSEQ_SIG) == 0 {
                0
            } else {
                *libc::__errno_location()
            }
        },
        None => libc::ENOENT,
    }
}

/// 1 when the calling thread's `rseq_cs` is clear (or it has no area), 0 otherwise.
#[no_mangle]
pub extern "C" fn rseqcopy_rseq_cs_is_clear() -> i32 {
    match rseq::ThreadArea::current() {
        // SAFETY: the area is the calling thread's.
        Some(a) => unsafe { (std::ptr::addr_of!((*a.as_ptr()).rseq_cs).read_volatile() == 0) as i32 },
        None => 1,
    }
}

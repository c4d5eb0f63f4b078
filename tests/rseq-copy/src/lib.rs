//! A tiny library carrying its own copy of `libs/rseq`, for the tests. The test suite copies
//! the built `.so` to several file names and loads each with `RTLD_LOCAL`: every load is an
//! independent library with its own copy of the crate, exactly like two unrelated libraries
//! in one process. It exports a per-copy counter and the copy's view of rseq.
//!
//! Nothing here has a thread-local destructor, so the library really unloads on `dlclose`.

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use rseq::pool::PercpuPool;
use rseq::{Index, Mode, PercpuPtr};

/// Two per-CPU counters, one indexed by `cpu_id` and one by `mm_cid`: a structure must
/// always be indexed the same way (a thread indexing by CPU and another by concurrency id
/// could both hold index 1 at once).
struct Counter {
    pool: PercpuPool,
    words: [PercpuPtr<u64>; 2],
    fallback: [PercpuPtr<AtomicU64>; 2],
}

static COUNTER: OnceLock<Counter> = OnceLock::new();

fn counter() -> &'static Counter {
    COUNTER.get_or_init(|| {
        let pool = PercpuPool::new(4096).expect("per-CPU pool");
        let slot = || pool.alloc(8, 8).expect("slot");
        let words = [slot().cast(), slot().cast()];
        let fallback = [slot().cast(), slot().cast()];
        Counter { pool, words, fallback }
    })
}

/// Mode codes returned by [`rseqcopy_mode`].
pub const MODE_LIBC_OWNED: i32 = 0;
/// This copy registered libc's reserved area for the thread.
pub const MODE_REGISTERED_BY_US: i32 = 1;
/// A peer had registered it (`EBUSY`).
pub const MODE_REGISTERED_BY_PEER: i32 = 2;
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
        Mode::RegisteredByUs => (MODE_REGISTERED_BY_US, 0),
        Mode::RegisteredByPeer => (MODE_REGISTERED_BY_PEER, 0),
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
    let (k, index) = if mm_cid != 0 { (1, Index::MmCid.resolve()) } else { (0, Index::CpuId) };
    // SAFETY: both word sets are pool slots sized for every possible CPU.
    match unsafe { rseq::percpu_add(index, c.words[k], c.fallback[k], n) } {
        rseq::Path::Rseq => 0,
        rseq::Path::Fallback => 1,
    }
}

/// Exact sum of this copy's counters.
#[no_mangle]
pub extern "C" fn rseqcopy_sum() -> u64 {
    let c = counter();
    // SAFETY: as in `rseqcopy_add`.
    (0..2).map(|k| unsafe { rseq::percpu_sum(c.words[k], c.fallback[k], c.pool.ncpus()) }).sum()
}

/// This copy's process-wide abort count.
#[no_mangle]
pub extern "C" fn rseqcopy_aborts() -> u64 {
    rseq::stats().aborts
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

/// 1 when the calling thread's `rseq_cs` is clear (or it has no area), 0 otherwise.
#[no_mangle]
pub extern "C" fn rseqcopy_rseq_cs_is_clear() -> i32 {
    match rseq::ThreadArea::current() {
        // SAFETY: the area is the calling thread's.
        Some(a) => unsafe { (std::ptr::addr_of!((*a.as_ptr()).rseq_cs).read_volatile() == 0) as i32 },
        None => 1,
    }
}

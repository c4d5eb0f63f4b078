//! Finding the calling thread's rseq area (design notes §2, "one rseq area per thread").
//!
//! The area always lives in libc's thread control block at thread pointer + `__rseq_offset`.
//! When libc registered it (`__rseq_size > 0`) every thread already has it. When libc only
//! reserved it (`__rseq_size == 0`, e.g. `GLIBC_TUNABLES=glibc.pthread.rseq=0`), this copy
//! registers that same slot for the calling thread on first use; a peer copy that did so
//! first makes the kernel answer `EBUSY`, which is just as good. The outcome is remembered in
//! this copy's own thread-local flag, never inferred from the area's contents.
//!
//! Nothing here allocates, locks or unwinds, so the lookup is usable from signal handlers.

use core::cell::Cell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicIsize, AtomicU32, AtomicU8, Ordering};

use crate::arch;

/// The signature that precedes every abort handler and that registrations use.
pub const RSEQ_SIG: u32 = arch::RSEQ_SIG;

/// Byte offsets of the fields of the kernel's `struct rseq`.
pub mod offsets {
    /// `u32 cpu_id_start`.
    pub const CPU_ID_START: usize = 0;
    /// `u32 cpu_id`.
    pub const CPU_ID: usize = 4;
    /// `u64 rseq_cs`, the pointer to the active critical-section descriptor.
    pub const RSEQ_CS: usize = 8;
    /// `u32 flags`.
    pub const FLAGS: usize = 16;
    /// `u32 node_id` (feature size >= 24).
    pub const NODE_ID: usize = 20;
    /// `u32 mm_cid` (feature size >= 28).
    pub const MM_CID: usize = 24;
}

/// `getauxval` key for the kernel's supported rseq feature size (Linux 6.3+).
const AT_RSEQ_FEATURE_SIZE: libc::c_ulong = 27;

/// Length passed to `rseq(2)` when this copy registers libc's reserved slot.
const REGISTER_LEN: u32 = 32;

/// The kernel's `struct rseq` as far as this crate reads it. Never written by us except
/// `rseq_cs`.
#[repr(C, align(32))]
pub struct RseqArea {
    /// CPU the thread last started a critical section on (kernel-owned).
    pub cpu_id_start: u32,
    /// CPU the thread runs on (kernel-owned).
    pub cpu_id: u32,
    /// Active critical-section descriptor, or 0.
    pub rseq_cs: u64,
    /// Deprecated flags, always 0.
    pub flags: u32,
    /// NUMA node of `cpu_id` (kernel-owned).
    pub node_id: u32,
    /// Concurrency id (kernel-owned).
    pub mm_cid: u32,
}

/// How the calling thread reaches an rseq area, as reported by [`mode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// libc registered the area for every thread.
    LibcOwned,
    /// libc only reserved the area and this copy registered it for this thread.
    RegisteredByUs,
    /// libc only reserved the area and a peer copy registered it first (`EBUSY`).
    RegisteredByPeer,
    /// No usable area: every operation of this thread takes the fallback path. `errno` is
    /// the error `rseq(2)` returned, or 0 when libc exposes no area at all.
    Unavailable {
        /// Error from the registration attempt (`ENOSYS`, `EINVAL`, `EPERM`, ...), or 0.
        errno: i32,
    },
    /// The fallback path was forced for this library copy with [`force_fallback`].
    Disabled,
}

impl Mode {
    /// Whether critical sections run on this thread.
    pub fn is_fast(self) -> bool {
        matches!(self, Mode::LibcOwned | Mode::RegisteredByUs | Mode::RegisteredByPeer)
    }

    /// A short stable name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::LibcOwned => "libc-owned",
            Mode::RegisteredByUs => "registered-by-us",
            Mode::RegisteredByPeer => "registered-by-peer",
            Mode::Unavailable { .. } => "unavailable",
            Mode::Disabled => "disabled",
        }
    }
}

// Process-wide state of this copy. STATE moves once from UNINIT to one of the others,
// except that `force_fallback` may switch it to and from FORCED.
const UNINIT: u8 = 0;
const LIBC_OWNED: u8 = 1;
const LAZY: u8 = 2;
const NO_AREA: u8 = 3;
const FORCED: u8 = 4;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
/// State before `force_fallback(true)`, restored by `force_fallback(false)`.
static STATE_BEFORE_FORCE: AtomicU8 = AtomicU8::new(UNINIT);
/// libc's `__rseq_offset` while STATE is LIBC_OWNED; `isize::MIN` otherwise, so the fast
/// path needs a single load.
static FAST_OFFSET: AtomicIsize = AtomicIsize::new(isize::MIN);
/// libc's `__rseq_offset` whenever libc has one (any state).
static OFFSET: AtomicIsize = AtomicIsize::new(0);
static FEATURE_SIZE: AtomicU32 = AtomicU32::new(0);
static LIBC_SIZE: AtomicU32 = AtomicU32::new(0);

// Per-thread outcome of the lazy registration (LAZY state only).
const T_UNTRIED: u8 = 0;
const T_OURS: u8 = 1;
const T_PEER: u8 = 2;
const T_FAILED: u8 = 3;

thread_local! {
    // Const-initialised and without destructors: the library stays unloadable.
    static THREAD_STATE: Cell<u8> = const { Cell::new(T_UNTRIED) };
    static THREAD_ERRNO: Cell<i32> = const { Cell::new(0) };
}

/// A pointer to the calling thread's registered area. Not `Send`: it is only meaningful on
/// the thread that obtained it.
#[derive(Clone, Copy, Debug)]
pub struct ThreadArea {
    ptr: NonNull<RseqArea>,
    _not_send: core::marker::PhantomData<*mut ()>,
}

impl ThreadArea {
    /// The calling thread's area when critical sections can run on it, registering libc's
    /// reserved slot first if needed; `None` means: use the fallback path.
    #[inline(always)]
    pub fn current() -> Option<ThreadArea> {
        let off = FAST_OFFSET.load(Ordering::Relaxed);
        if off != isize::MIN {
            return Some(ThreadArea::at_offset(off));
        }
        current_slow()
    }

    #[inline(always)]
    fn at_offset(off: isize) -> ThreadArea {
        let tp = arch::thread_pointer();
        // SAFETY: libc guarantees that thread pointer + __rseq_offset is the (32-byte
        // aligned, non-null) area of the calling thread for the thread's whole life.
        let ptr = unsafe { NonNull::new_unchecked(tp.wrapping_offset(off).cast::<RseqArea>()) };
        ThreadArea { ptr, _not_send: core::marker::PhantomData }
    }

    /// The raw area pointer, for the critical sections.
    #[inline(always)]
    pub fn as_ptr(self) -> *mut RseqArea {
        self.ptr.as_ptr()
    }

    /// The CPU the thread runs on right now (may be stale by the time it is used).
    #[inline(always)]
    pub fn cpu_id(self) -> u32 {
        // SAFETY: the area is valid for the calling thread; the kernel updates the field
        // concurrently, so read it volatile.
        unsafe { core::ptr::addr_of!((*self.as_ptr()).cpu_id).read_volatile() }
    }

    /// The thread's concurrency id right now, when the kernel provides it.
    #[inline(always)]
    pub fn mm_cid(self) -> Option<u32> {
        if feature_size() < 28 {
            return None;
        }
        // SAFETY: as in `cpu_id`.
        Some(unsafe { core::ptr::addr_of!((*self.as_ptr()).mm_cid).read_volatile() })
    }
}

#[cold]
#[inline(never)]
fn current_slow() -> Option<ThreadArea> {
    let mut state = STATE.load(Ordering::Acquire);
    if state == UNINIT {
        init();
        state = STATE.load(Ordering::Acquire);
    }
    match state {
        LIBC_OWNED => Some(ThreadArea::at_offset(OFFSET.load(Ordering::Relaxed))),
        LAZY => {
            let t = THREAD_STATE.with(|s| s.get());
            let t = if t == T_UNTRIED { register_current_thread() } else { t };
            match t {
                T_OURS | T_PEER => Some(ThreadArea::at_offset(OFFSET.load(Ordering::Relaxed))),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Registers libc's reserved slot for the calling thread and remembers the outcome.
fn register_current_thread() -> u8 {
    let area = arch::thread_pointer().wrapping_offset(OFFSET.load(Ordering::Relaxed));
    let (t, errno) = match crate::sys::rseq_register(area, REGISTER_LEN, RSEQ_SIG) {
        Ok(()) => (T_OURS, 0),
        Err(libc::EBUSY) => (T_PEER, 0),
        Err(e) => (T_FAILED, e),
    };
    THREAD_ERRNO.with(|c| c.set(errno));
    THREAD_STATE.with(|c| c.set(t));
    crate::stats::note_registration(t == T_OURS, t == T_PEER, t == T_FAILED);
    t
}

/// Looks up libc's rseq symbols once. Racing callers compute the same values.
fn init() {
    let offset = lookup_symbol::<isize>(c"__rseq_offset");
    let size = lookup_symbol::<u32>(c"__rseq_size");
    let aux = getauxval(AT_RSEQ_FEATURE_SIZE);
    // A kernel that does not report a feature size has the original 20-byte layout.
    let kernel_features = if aux == 0 { 20 } else { aux.min(32) as u32 };
    let (state, feature_size, libc_size) = match (offset, size) {
        (Some(off), Some(size)) if size > 0 => {
            OFFSET.store(off, Ordering::Relaxed);
            // glibc reserves 32 bytes but may report 20 (2.36) or 32: trust the kernel then.
            let fs = if size == 20 || size == 32 { kernel_features } else { size };
            (LIBC_OWNED, fs, size)
        }
        (Some(off), _) => {
            OFFSET.store(off, Ordering::Relaxed);
            (LAZY, kernel_features, 0)
        }
        _ => (NO_AREA, 0, 0),
    };
    FEATURE_SIZE.store(feature_size, Ordering::Relaxed);
    LIBC_SIZE.store(libc_size, Ordering::Relaxed);
    if state == LIBC_OWNED {
        FAST_OFFSET.store(OFFSET.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    let _ = STATE.compare_exchange(UNINIT, state, Ordering::AcqRel, Ordering::Acquire);
}

fn lookup_symbol<T: Copy>(name: &core::ffi::CStr) -> Option<T> {
    // SAFETY: dlsym with a NUL-terminated name; glibc's `__rseq_*` symbols are constant
    // after start-up and have the C types `ptrdiff_t` / `unsigned int`.
    unsafe {
        let p = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
        if p.is_null() {
            None
        } else {
            Some(p.cast::<T>().read())
        }
    }
}

fn getauxval(key: libc::c_ulong) -> u64 {
    // SAFETY: getauxval has no preconditions; unknown keys return 0.
    unsafe { libc::getauxval(key) as u64 }
}

/// Ensures the process-wide lookup has run (cheap after the first call).
fn ensure_init() -> u8 {
    let s = STATE.load(Ordering::Acquire);
    if s != UNINIT {
        return s;
    }
    init();
    STATE.load(Ordering::Acquire)
}

/// How the calling thread reaches an rseq area, registering libc's reserved slot on the way
/// when that is what the process needs.
pub fn mode() -> Mode {
    match ensure_init() {
        LIBC_OWNED => Mode::LibcOwned,
        LAZY => {
            let t = THREAD_STATE.with(|s| s.get());
            let t = if t == T_UNTRIED { register_current_thread() } else { t };
            match t {
                T_OURS => Mode::RegisteredByUs,
                T_PEER => Mode::RegisteredByPeer,
                _ => Mode::Unavailable { errno: THREAD_ERRNO.with(|c| c.get()) },
            }
        }
        FORCED => Mode::Disabled,
        _ => Mode::Unavailable { errno: 0 },
    }
}

/// Usable size of the area in bytes: 20 (no `node_id`), 24, 28 (`mm_cid`) or 32; 0 without
/// an area.
pub fn feature_size() -> u32 {
    ensure_init();
    FEATURE_SIZE.load(Ordering::Relaxed)
}

/// The size libc reports in `__rseq_size` (0 when libc did not register).
pub fn libc_reported_size() -> u32 {
    ensure_init();
    LIBC_SIZE.load(Ordering::Relaxed)
}

/// Forces every thread of the process onto the fallback path for this copy of the crate
/// (`true`), or restores the normal choice (`false`). Used by benchmarks and by the harness
/// to run one library on its slow path next to the others. Threads inside an operation
/// finish it on the path they started on; both paths stay correct together because they
/// never write the same word.
pub fn force_fallback(on: bool) {
    let cur = ensure_init();
    if on {
        if cur != FORCED {
            STATE_BEFORE_FORCE.store(cur, Ordering::Relaxed);
            FAST_OFFSET.store(isize::MIN, Ordering::Relaxed);
            STATE.store(FORCED, Ordering::Release);
        }
    } else if cur == FORCED {
        let prev = STATE_BEFORE_FORCE.load(Ordering::Relaxed);
        STATE.store(prev, Ordering::Release);
        if prev == LIBC_OWNED {
            FAST_OFFSET.store(OFFSET.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

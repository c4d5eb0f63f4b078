//! Finding the calling thread's rseq area (docs/DESIGN.md §2, "one rseq area per thread").
//!
//! The area always lives in libc's thread control block at thread pointer + `__rseq_offset`.
//! When libc registered it (`__rseq_size > 0`) every thread already has it. When libc only
//! reserved it (`__rseq_size == 0`, e.g. `GLIBC_TUNABLES=glibc.pthread.rseq=0`), this copy
//! registers that same slot for the calling thread when a critical section finds it
//! unregistered; a peer copy that did so first makes the kernel answer `EBUSY`, which is
//! just as good.
//!
//! No thread-local state. Whether the calling thread is registered is read from the area
//! itself: glibc stores `RSEQ_CPU_ID_REGISTRATION_FAILED` (-2) into `cpu_id` of every thread
//! it does not register, at thread start (so a reused thread control block starts afresh),
//! the kernel stores -1 when an area is unregistered, and while registered the kernel keeps
//! a real CPU there. Every critical section compares the index with the structure's size
//! inside the section, so an unregistered area simply reports the index unusable and the
//! operation comes here. When registering fails (`EINVAL`: another area is registered, as
//! older tcmalloc and librseq do; `ENOSYS`: seccomp), the errno is written into `cpu_id` of
//! the *unregistered* area as `0xffff_0000 | errno` — still out of range for every
//! structure, never touched by the kernel (it only writes registered areas, and registration
//! rewrites the field) and reset by glibc at the next thread start — so the thread takes
//! the fallback path without asking the kernel again, and [`mode`] can report the errno.
//!
//! Nothing here allocates, locks or unwinds, and nothing uses dynamic TLS (which may call
//! malloc): the lookup and the registration are usable from signal handlers and from inside
//! an allocator.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicIsize, AtomicU32, AtomicU8, Ordering};

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
    /// libc only reserved the area, and a library registered it for this thread: this copy
    /// or a peer (which one is not recorded: that would take per-thread state).
    Registered,
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
        matches!(self, Mode::LibcOwned | Mode::Registered)
    }

    /// A short stable name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::LibcOwned => "libc-owned",
            Mode::Registered => "registered",
            Mode::Unavailable { .. } => "unavailable",
            Mode::Disabled => "disabled",
        }
    }
}

// Process-wide state of this copy: moves once from UNINIT to one of the others.
const UNINIT: u8 = 0;
const LIBC_OWNED: u8 = 1;
const LAZY: u8 = 2;
const NO_AREA: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
/// Set by `force_fallback(true)`.
static FORCED: AtomicBool = AtomicBool::new(false);
/// libc's `__rseq_offset` while critical sections may run (LIBC_OWNED or LAZY, not forced);
/// `isize::MIN` otherwise, so the fast path needs a single load. Whoever stores an offset
/// here checks `FORCED` afterwards and undoes it when set (see [`publish_fast_offset`]).
static FAST_OFFSET: AtomicIsize = AtomicIsize::new(isize::MIN);
/// libc's `__rseq_offset` whenever libc has one (any state).
static OFFSET: AtomicIsize = AtomicIsize::new(0);
static FEATURE_SIZE: AtomicU32 = AtomicU32::new(0);
static LIBC_SIZE: AtomicU32 = AtomicU32::new(0);

/// `cpu_id` of an area that was never initialised, or that the kernel unregistered.
const CPU_ID_UNINITIALIZED: u32 = u32::MAX;
/// `cpu_id` glibc stores in threads it does not register.
const CPU_ID_REGISTRATION_FAILED: u32 = u32::MAX - 1;
/// `cpu_id` marks "this copy (or a peer) tried to register and got `errno`": this base
/// plus the errno.
const CPU_ID_FAILED_BASE: u32 = 0xffff_0000;

/// What the `cpu_id` of the calling thread's area says about its registration.
enum Registration {
    /// A CPU number: registered.
    Registered,
    /// -1 or -2: not registered, and nobody tried in this thread.
    Untried,
    /// A registration already failed in this thread with this errno.
    Failed(i32),
}

fn classify(cpu_id: u32) -> Registration {
    match cpu_id {
        CPU_ID_UNINITIALIZED | CPU_ID_REGISTRATION_FAILED => Registration::Untried,
        c if c >= CPU_ID_FAILED_BASE => Registration::Failed((c - CPU_ID_FAILED_BASE) as i32),
        c if c < 1 << 31 => Registration::Registered,
        // No kernel reports such a CPU number; nothing to do but fall back.
        _ => Registration::Failed(0),
    }
}

/// A pointer to the calling thread's area (registered or not). Not `Send`: it is only
/// meaningful on the thread that obtained it.
#[derive(Clone, Copy, Debug)]
pub struct ThreadArea {
    ptr: NonNull<RseqArea>,
    _not_send: core::marker::PhantomData<*mut ()>,
}

impl ThreadArea {
    /// The calling thread's area when critical sections may run on it; `None` means: use
    /// the fallback path. The area may be unregistered: its sections then report the index
    /// unusable, and [`ThreadArea::make_usable`] registers it when that is possible.
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

    /// The `cpu_id` field right now: a CPU while registered, else -1, -2 or a failure mark.
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

    /// Called when a critical section reported its index unusable: registers the area for
    /// the calling thread when nobody has tried yet (libc reserved it but did not register
    /// it, or it was unregistered), and says whether retrying the section can help. `false`
    /// means: take the fallback path (registration failed now or earlier in this thread, or
    /// the area is registered and the index is simply beyond the structure, or stopped).
    /// Async-signal-safe; no allocation.
    #[cold]
    #[inline(never)]
    pub fn make_usable(self) -> bool {
        if !matches!(classify(self.cpu_id()), Registration::Untried) {
            return false;
        }
        let area = self.as_ptr().cast::<u8>();
        match crate::sys::rseq_register(area, REGISTER_LEN, RSEQ_SIG) {
            Ok(()) => {
                crate::stats::note_registration(crate::stats::Registered::ByUs);
                true
            }
            Err(libc::EBUSY) => {
                crate::stats::note_registration(crate::stats::Registered::ByPeer);
                true
            }
            Err(errno) => {
                crate::stats::note_registration(crate::stats::Registered::Failed);
                // Still unregistered after the failure, so the kernel does not own the field:
                // leave the errno for the next operation and for `mode`, unless a signal
                // handler registered the area meanwhile.
                if matches!(classify(self.cpu_id()), Registration::Untried) {
                    let mark = CPU_ID_FAILED_BASE | (errno.clamp(0, 0xfffd) as u32);
                    // SAFETY: the calling thread's area, not registered: only this thread and
                    // glibc (at thread start) write `cpu_id` now.
                    unsafe { core::ptr::addr_of_mut!((*self.as_ptr()).cpu_id).write_volatile(mark) };
                }
                false
            }
        }
    }
}

#[cold]
#[inline(never)]
fn current_slow() -> Option<ThreadArea> {
    let state = ensure_init();
    if FORCED.load(Ordering::Acquire) {
        return None;
    }
    match state {
        LIBC_OWNED | LAZY => {
            // Not forced, yet the fast offset is unset: a `force_fallback(false)` racing with
            // a `force_fallback(true)` left it so. Publish it again.
            publish_fast_offset();
            Some(ThreadArea::at_offset(OFFSET.load(Ordering::Relaxed)))
        }
        _ => None,
    }
}

/// Stores the fast offset when critical sections may run, then undoes that if the fallback
/// is forced meanwhile. With every store and load `SeqCst`, a concurrent
/// `force_fallback(true)` either stores `isize::MIN` after this store or has set `FORCED`
/// before this load: either way the fast path ends up off.
fn publish_fast_offset() {
    if matches!(STATE.load(Ordering::SeqCst), LIBC_OWNED | LAZY) && !FORCED.load(Ordering::SeqCst) {
        FAST_OFFSET.store(OFFSET.load(Ordering::SeqCst), Ordering::SeqCst);
        if FORCED.load(Ordering::SeqCst) {
            FAST_OFFSET.store(isize::MIN, Ordering::SeqCst);
        }
    }
}

/// Looks up libc's rseq symbols and the kernel's feature size (idempotent: racing callers
/// compute the same values). Called on first use, or from a library's load-time constructor
/// through [`crate::init`].
pub(crate) fn init() {
    if STATE.load(Ordering::Acquire) != UNINIT {
        return;
    }
    let offset = lookup_symbol::<isize>(c"__rseq_offset");
    let size = lookup_symbol::<u32>(c"__rseq_size");
    let aux = getauxval(AT_RSEQ_FEATURE_SIZE);
    // A kernel that does not report a feature size has the original 20-byte layout.
    let kernel_features = if aux == 0 { 20 } else { aux.min(32) as u32 };
    let (state, feature_size, libc_size) = match (offset, size) {
        (Some(off), Some(size)) if size > 0 => {
            OFFSET.store(off, Ordering::SeqCst);
            // glibc reserves 32 bytes but may report 20 (2.36) or 32: trust the kernel then.
            let fs = if size == 20 || size == 32 { kernel_features } else { size };
            (LIBC_OWNED, fs, size)
        }
        (Some(off), _) => {
            OFFSET.store(off, Ordering::SeqCst);
            (LAZY, kernel_features, 0)
        }
        _ => (NO_AREA, 0, 0),
    };
    FEATURE_SIZE.store(feature_size, Ordering::Relaxed);
    LIBC_SIZE.store(libc_size, Ordering::Relaxed);
    let _ = STATE.compare_exchange(UNINIT, state, Ordering::SeqCst, Ordering::SeqCst);
    publish_fast_offset();
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
/// when that is what the process needs. Async-signal-safe.
pub fn mode() -> Mode {
    let state = ensure_init();
    if FORCED.load(Ordering::Acquire) {
        return Mode::Disabled;
    }
    if !matches!(state, LIBC_OWNED | LAZY) {
        return Mode::Unavailable { errno: 0 };
    }
    let area = ThreadArea::at_offset(OFFSET.load(Ordering::Relaxed));
    if matches!(classify(area.cpu_id()), Registration::Untried) {
        area.make_usable();
    }
    match classify(area.cpu_id()) {
        Registration::Registered if state == LIBC_OWNED => Mode::LibcOwned,
        Registration::Registered => Mode::Registered,
        Registration::Failed(errno) => Mode::Unavailable { errno },
        Registration::Untried => Mode::Unavailable { errno: 0 },
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
/// never write the same word. Safe against a concurrent first use (`init`) and against
/// concurrent calls: once the last call returned, the fast path is on exactly when the last
/// call asked for it (or, if two callers disagreed at the same moment, off with `false`
/// until the next operation republishes it).
pub fn force_fallback(on: bool) {
    ensure_init();
    FORCED.store(on, Ordering::SeqCst);
    if on {
        FAST_OFFSET.store(isize::MIN, Ordering::SeqCst);
    } else {
        publish_fast_offset();
    }
}

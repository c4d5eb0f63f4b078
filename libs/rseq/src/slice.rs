//! The scheduler time-slice extension (Linux 7.x): a thread that holds a lock asks the kernel
//! not to preempt it for a short while, through the `slice_ctrl` field of its rseq area.
//!
//! Kernel ABI, as read in `include/uapi/linux/rseq.h`, `kernel/rseq.c` and
//! `include/linux/rseq_entry.h` of Linux 7.x:
//! - `struct rseq` gains `slice_ctrl` at byte 28 (after `mm_cid`): `u8 request` (byte 28, set
//!   by user space, cleared by user space or the kernel), `u8 granted` (byte 29, kernel-owned,
//!   read-only for user space) and two reserved bytes. The kernel's feature size
//!   (`AT_RSEQ_FEATURE_SIZE`) is then at least 32 (33 with the reserved byte after it).
//! - Bits 4 (`SLICE_EXT_AVAILABLE`) and 5 (`SLICE_EXT_ENABLED`) of the area's `flags` are
//!   written by the kernel: available at registration when the kernel was built with the
//!   feature, it is not disabled with `rseq_slice_ext=` and the registration qualifies; enabled
//!   once the *thread* turned it on.
//! - The switch is per thread: `prctl(PR_RSEQ_SLICE_EXTENSION = 79, SET = 2, ENABLE = 1)`
//!   sets the calling task's state only (`ENXIO` when the thread has no registered area,
//!   `ENOTSUPP`/`EINVAL` when the kernel lacks or disabled the feature). `GET = 1` reads it.
//!   A registration flag turns it on by default, but glibc registers the threads, not us.
//! - When an interrupt would preempt a thread whose `request` is set, the kernel may grant
//!   an extension instead (bounded by its `rseq_slice_ext_nsec`, 5–50 µs), clearing
//!   `request` and setting `granted`. The thread must then call `rseq_slice_yield()`
//!   (syscall 471 on x86_64 and on the generic table used by arm64) when its section ends;
//!   any other system call revokes the grant (the kernel reschedules on its entry).
//!
//! How this module uses it, and why it cannot disturb anyone else sharing the area:
//! - Enabling is done lazily per thread by [`request`] itself, with one `prctl` the first
//!   time, and only when the area's `flags` show "available" but not "enabled". That needs no
//!   thread-local state (the kernel's flags *are* the per-thread record), no `Once`, no
//!   allocation: a plain system call, usable in a forked child and in a signal handler. A
//!   process-wide atomic remembers a definitive refusal (`ENOTSUPP`, `EINVAL`) so later calls
//!   cost one load. Enabling changes nothing by itself: the kernel looks at `request` only.
//! - `request` is a plain byte store to the calling thread's own area. Only this thread (in
//!   user mode) and the kernel (on this thread's behalf, while the thread is not running user
//!   code) access the field, so no atomic read-modify-write is needed: a byte store is
//!   single-copy atomic, and a compiler fence orders it with the lock word. Other libraries'
//!   critical sections use `rseq_cs`, `cpu_id_start`, `cpu_id`, `mm_cid`: different bytes
//!   that this module never writes.
//! - Nesting is by save and restore, with no counter: [`request`] reports whether an extension
//!   was already requested or granted when it was called ([`Token::Nested`]), and [`release`]
//!   of a nested token does nothing, so an inner lock's release never clears an outer
//!   holder's request — whichever library the outer holder belongs to, as long as it follows
//!   the same rule. (Releases out of order — A, B, release A, release B — end the request at
//!   the first release: the rest of B's hold is unprotected, which only loses the hint.)
//! - A granted extension delays the thread's preemption by at most the kernel's limit, and
//!   only while the thread asked for it; sections of other libraries still restart on
//!   preemption, migration and signals exactly as before.

use core::sync::atomic::{compiler_fence, AtomicU8, Ordering};

use crate::area::ThreadArea;

/// Byte offset of `slice_ctrl.request` in `struct rseq`.
pub const REQUEST_OFFSET: usize = 28;
/// Byte offset of `slice_ctrl.granted` in `struct rseq`.
pub const GRANTED_OFFSET: usize = 29;
/// Feature size the kernel reports when `slice_ctrl` exists.
pub const MIN_FEATURE_SIZE: u32 = 32;
/// `flags` bit: the kernel offers the extension for this registration.
pub const FLAG_AVAILABLE: u32 = 1 << 4;
/// `flags` bit: the thread enabled it.
pub const FLAG_ENABLED: u32 = 1 << 5;

const PR_RSEQ_SLICE_EXTENSION: libc::c_int = 79;
const PR_RSEQ_SLICE_EXTENSION_GET: libc::c_ulong = 1;
const PR_RSEQ_SLICE_EXTENSION_SET: libc::c_ulong = 2;
const PR_RSEQ_SLICE_EXT_ENABLE: libc::c_ulong = 1;
/// `rseq_slice_yield()`; the same number on x86_64 and on the generic syscall table.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_RSEQ_SLICE_YIELD: libc::c_long = 471;

// Process-wide knowledge: UNKNOWN until a probe or a refusal says otherwise.
const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;
static SUPPORT: AtomicU8 = AtomicU8::new(UNKNOWN);
/// Set by [`force_unsupported`]: behave as on a kernel without the feature.
static FORCED_OFF: AtomicU8 = AtomicU8::new(0);
/// Set by [`simulate_for_tests`]: use bytes 28 and 29 of the area although the kernel does
/// not know them.
static SIMULATE: AtomicU8 = AtomicU8::new(0);

/// What [`request`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// The kernel or the thread's area lacks the feature (or this thread has no registered
    /// area): nothing was written.
    Unsupported,
    /// An extension was already requested or granted (an outer holder): nothing was written,
    /// and the matching [`release`] does nothing.
    Nested,
    /// This call set the request; the matching [`release`] clears it.
    Requested,
}

/// What [`release`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// Nothing to do ([`Token::Unsupported`] or [`Token::Nested`]).
    Nothing,
    /// The request was cleared; the kernel had not granted an extension.
    Cleared,
    /// The kernel had granted an extension: `rseq_slice_yield` was called. `yielded` is its
    /// answer (true: the CPU was given up within the grant).
    Yielded {
        /// The system call returned 1.
        yielded: bool,
    },
}

/// Whether the kernel offers the extension to the calling thread's registration: feature size
/// at least 32, a registered area whose `flags` say "available", and a `prctl` that answers.
/// Probes at most once per process when the answer is yes or a definitive no (an unregistered
/// calling thread leaves it unknown). Async-signal-safe.
pub fn supported() -> bool {
    if FORCED_OFF.load(Ordering::Relaxed) != 0 {
        return false;
    }
    match SUPPORT.load(Ordering::Relaxed) {
        YES => true,
        NO => false,
        _ => probe(),
    }
}

/// Makes every later [`request`] of this copy answer [`Token::Unsupported`] (`true`), as on a
/// kernel without the feature, or lifts that (`false`). For tests and benchmarks.
pub fn force_unsupported(on: bool) {
    FORCED_OFF.store(on as u8, Ordering::SeqCst);
}

/// Test hook for kernels *without* the field (feature size below 32): [`request`] and
/// [`release`] then use bytes 28 and 29 of the thread's area as if the kernel offered the
/// extension, so that nesting and coexistence can be checked anywhere. Those bytes are
/// padding that such a kernel never reads or writes, inside the 32 bytes libc reserves. A
/// test simulates a grant by writing the granted byte itself ([`simulate_grant`]). Returns
/// whether simulation is on: it is refused (false) where the kernel knows the field.
pub fn simulate_for_tests(on: bool) -> bool {
    if on && crate::area::feature_size() >= MIN_FEATURE_SIZE {
        return false;
    }
    SIMULATE.store(on as u8, Ordering::SeqCst);
    on
}

/// With [`simulate_for_tests`] on: sets the calling thread's granted byte and clears its
/// request byte, as the kernel does when it grants. `false` when simulation is off or the
/// thread has no registered area.
pub fn simulate_grant() -> bool {
    if SIMULATE.load(Ordering::SeqCst) == 0 {
        return false;
    }
    let Some(area) = registered_area() else { return false };
    // SAFETY: as in `request`; the kernel does not use these bytes (simulation is refused
    // where it does).
    unsafe {
        byte(area, REQUEST_OFFSET).write_volatile(0);
        byte(area, GRANTED_OFFSET).write_volatile(1);
    }
    true
}

/// With [`simulate_for_tests`] on: clears the granted byte (what the kernel's yield or next
/// preemption does).
pub fn simulate_clear_grant() {
    if SIMULATE.load(Ordering::SeqCst) == 0 {
        return;
    }
    if let Some(area) = registered_area() {
        // SAFETY: as in `simulate_grant`.
        unsafe { byte(area, GRANTED_OFFSET).write_volatile(0) };
    }
}

#[cold]
fn probe() -> bool {
    if crate::area::feature_size() < MIN_FEATURE_SIZE {
        SUPPORT.store(NO, Ordering::Relaxed);
        return false;
    }
    let Some(area) = registered_area() else { return false };
    if flags(area) & FLAG_AVAILABLE == 0 {
        // The kernel writes the bit at registration: without it this kernel (or this kind
        // of registration, the same for every thread of the process) has no extension.
        SUPPORT.store(NO, Ordering::Relaxed);
        return false;
    }
    match prctl(PR_RSEQ_SLICE_EXTENSION_GET, 0) {
        Ok(_) => {
            SUPPORT.store(YES, Ordering::Relaxed);
            true
        }
        Err(libc::ENXIO) => false,
        Err(_) => {
            SUPPORT.store(NO, Ordering::Relaxed);
            false
        }
    }
}

/// The calling thread's area when requests may be written to it: the kernel offers the
/// extension and the thread enabled it (enabling it now if needed), or simulation is on.
#[inline(always)]
fn usable_area() -> Option<ThreadArea> {
    if SIMULATE.load(Ordering::Relaxed) != 0 {
        return registered_area();
    }
    if !supported() {
        return None;
    }
    let area = registered_area()?;
    if flags(area) & FLAG_ENABLED == 0 && !enable_in(area) {
        return None;
    }
    Some(area)
}

/// The calling thread's area when the kernel has registered it (its `cpu_id` is a CPU).
#[inline(always)]
fn registered_area() -> Option<ThreadArea> {
    let area = ThreadArea::current()?;
    if area.cpu_id() < 1 << 31 {
        Some(area)
    } else {
        None
    }
}

#[inline(always)]
fn flags(area: ThreadArea) -> u32 {
    // SAFETY: the calling thread's area; the kernel writes `flags`, so read it volatile.
    unsafe { core::ptr::addr_of!((*area.as_ptr()).flags).read_volatile() }
}

#[inline(always)]
fn byte(area: ThreadArea, offset: usize) -> *mut u8 {
    // `offset` < 32 and the area is at least 32 bytes (libc reserves 32, the kernel struct
    // is 32-byte aligned and sized).
    area.as_ptr().cast::<u8>().wrapping_add(offset)
}

fn prctl(op: libc::c_ulong, arg: libc::c_ulong) -> Result<libc::c_int, i32> {
    // SAFETY: prctl with integer arguments only; unknown options answer EINVAL.
    let r = unsafe { libc::prctl(PR_RSEQ_SLICE_EXTENSION, op, arg, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r < 0 {
        Err(crate::sys::errno())
    } else {
        Ok(r)
    }
}

/// Turns the extension on for the calling thread (idempotent). `false` when it is not
/// available. [`request`] does this itself; a thread may call it up front to keep the
/// system call out of its first lock.
pub fn enable_current_thread() -> bool {
    if !supported() {
        return false;
    }
    let Some(area) = registered_area() else { return false };
    enable_in(area)
}

#[cold]
#[inline(never)]
fn enable_in(area: ThreadArea) -> bool {
    let f = flags(area);
    if f & FLAG_AVAILABLE == 0 {
        return false;
    }
    if f & FLAG_ENABLED != 0 {
        return true;
    }
    match prctl(PR_RSEQ_SLICE_EXTENSION_SET, PR_RSEQ_SLICE_EXT_ENABLE) {
        Ok(_) => true,
        Err(libc::ENXIO) => false,
        Err(_) => {
            SUPPORT.store(NO, Ordering::Relaxed);
            false
        }
    }
}

/// Asks the kernel for an extension of the calling thread's time slice, until the matching
/// [`release`]. Call it right after taking a lock. Cheap where unsupported (two loads).
#[inline]
pub fn request() -> Token {
    let Some(area) = usable_area() else { return Token::Unsupported };
    // SAFETY: bytes 28 and 29 of the calling thread's registered area, which is at least 32
    // bytes; only this thread and the kernel (on its behalf) access them.
    unsafe {
        // One 16-bit read of request and granted together, so an interrupt cannot slip
        // between reading one and the other.
        let both = byte(area, REQUEST_OFFSET).cast::<u16>().read_volatile();
        if both != 0 {
            return Token::Nested;
        }
        byte(area, REQUEST_OFFSET).write_volatile(1);
    }
    compiler_fence(Ordering::SeqCst);
    Token::Requested
}

/// Ends what [`request`] started: for [`Token::Requested`], clears the request and, when the
/// kernel granted an extension meanwhile, gives the CPU back with `rseq_slice_yield`. Call
/// it right after releasing the lock, on the same thread (any CPU).
#[inline]
pub fn release(token: Token) -> Released {
    if token != Token::Requested {
        return Released::Nothing;
    }
    let Some(area) = registered_area() else { return Released::Nothing };
    compiler_fence(Ordering::SeqCst);
    // SAFETY: as in `request`.
    let granted = unsafe {
        byte(area, REQUEST_OFFSET).write_volatile(0);
        byte(area, GRANTED_OFFSET).read_volatile()
    };
    if granted == 0 {
        return Released::Cleared;
    }
    if SIMULATE.load(Ordering::Relaxed) != 0 {
        // No kernel to yield to: count it as a yield that gave nothing back.
        return Released::Yielded { yielded: false };
    }
    Released::Yielded { yielded: slice_yield() }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn slice_yield() -> bool {
    // SAFETY: a system call without arguments; on kernels without it the answer is ENOSYS.
    unsafe { libc::syscall(SYS_RSEQ_SLICE_YIELD) == 1 }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn slice_yield() -> bool {
    false
}

/// The calling thread's `slice_ctrl` request and granted bytes, `None` without a registered
/// area. For tests and diagnostics.
pub fn current_bytes() -> Option<(u8, u8)> {
    let area = registered_area()?;
    // SAFETY: as in `request`.
    unsafe { Some((byte(area, REQUEST_OFFSET).read_volatile(), byte(area, GRANTED_OFFSET).read_volatile())) }
}

/// Whether the calling thread has the extension enabled (the kernel's `flags` bit).
pub fn enabled_current_thread() -> bool {
    registered_area().is_some_and(|a| flags(a) & FLAG_ENABLED != 0)
}

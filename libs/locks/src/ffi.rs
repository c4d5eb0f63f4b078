//! The C API (`include/plocks.h`). Every entry point checks its handle (NULL, or not a live
//! lock of this copy: a destroyed handle's magic is cleared) and returns a negative
//! `PLOCK_E*` code for bad input. No panic crosses this boundary (release builds abort on
//! panic with the message; the code below does not panic on any input).

use core::ffi::{c_char, c_int};

use crate::{BrLock, Error, PercpuMutex};

const MUTEX_MAGIC: u64 = 0x706c_6f63_6b6d_7478; // "plockmtx"
const RWLOCK_MAGIC: u64 = 0x706c_6f63_6b72_776c; // "plockrwl"

/// `plock_mutex_t`.
#[allow(non_camel_case_types)]
pub struct plock_mutex_t {
    magic: core::sync::atomic::AtomicU64,
    inner: PercpuMutex,
}

/// `plock_rwlock_t`.
#[allow(non_camel_case_types)]
pub struct plock_rwlock_t {
    magic: core::sync::atomic::AtomicU64,
    inner: BrLock,
}

fn code(r: Result<(), Error>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => e.code(),
    }
}

/// # Safety
/// `m` is NULL or a pointer returned by `plock_mutex_create` (destroyed ones are caught
/// while their memory is not reused).
unsafe fn mutex<'a>(m: *const plock_mutex_t) -> Result<&'a PercpuMutex, Error> {
    // SAFETY: per the caller's contract.
    let m = unsafe { m.as_ref() }.ok_or(Error::InvalidArgument)?;
    if m.magic.load(core::sync::atomic::Ordering::Relaxed) != MUTEX_MAGIC {
        return Err(Error::InvalidArgument);
    }
    Ok(&m.inner)
}

/// # Safety
/// As for [`mutex`].
unsafe fn rwlock<'a>(l: *const plock_rwlock_t) -> Result<&'a BrLock, Error> {
    // SAFETY: per the caller's contract.
    let l = unsafe { l.as_ref() }.ok_or(Error::InvalidArgument)?;
    if l.magic.load(core::sync::atomic::Ordering::Relaxed) != RWLOCK_MAGIC {
        return Err(Error::InvalidArgument);
    }
    Ok(&l.inner)
}

/// Creates a per-CPU mutex array (aborts with a message when out of memory).
#[no_mangle]
pub extern "C" fn plock_mutex_create() -> *mut plock_mutex_t {
    let b = Box::new(plock_mutex_t { magic: MUTEX_MAGIC.into(), inner: PercpuMutex::new() });
    Box::into_raw(b)
}

/// `PLOCK_SLICE_EXTENSION`: holders request the scheduler time-slice extension.
pub const PLOCK_SLICE_EXTENSION: u32 = 1;

/// Creates a per-CPU mutex array with `flags` (`PLOCK_SLICE_EXTENSION` or 0); NULL for
/// unknown flag bits (aborts with a message when out of memory).
#[no_mangle]
pub extern "C" fn plock_mutex_create_flags(flags: u32) -> *mut plock_mutex_t {
    if flags & !PLOCK_SLICE_EXTENSION != 0 {
        return core::ptr::null_mut();
    }
    let inner = PercpuMutex::with_slice_extension(flags & PLOCK_SLICE_EXTENSION != 0);
    Box::into_raw(Box::new(plock_mutex_t { magic: MUTEX_MAGIC.into(), inner }))
}

/// Destroys `m`: `PLOCK_EBUSY` (and nothing freed) while any of its locks is held.
///
/// # Safety
/// `m` is NULL or from `plock_mutex_create`, and no other thread uses it any more.
#[no_mangle]
pub unsafe extern "C" fn plock_mutex_destroy(m: *mut plock_mutex_t) -> c_int {
    // SAFETY: forwarded contract.
    let inner = match unsafe { mutex(m) } {
        Ok(i) => i,
        Err(e) => return e.code(),
    };
    if inner.any_locked() {
        return Error::Busy.code();
    }
    // SAFETY: checked live above; created by Box::into_raw.
    unsafe {
        (*m).magic.store(0, core::sync::atomic::Ordering::Relaxed);
        drop(Box::from_raw(m));
    }
    0
}

/// Number of locks in `m` (indexes `0..count`), or a negative code.
///
/// # Safety
/// As for `plock_mutex_destroy`, without the "no other thread" part (likewise below).
#[no_mangle]
pub unsafe extern "C" fn plock_mutex_count(m: *const plock_mutex_t) -> c_int {
    // SAFETY: forwarded contract.
    match unsafe { mutex(m) } {
        Ok(i) => i.count() as c_int,
        Err(e) => e.code(),
    }
}

/// Takes the current CPU's lock (waiting): its index, or a negative code.
///
/// # Safety
/// See `plock_mutex_count`.
#[no_mangle]
pub unsafe extern "C" fn plock_mutex_lock(m: *const plock_mutex_t) -> c_int {
    // SAFETY: forwarded contract.
    match unsafe { mutex(m) }.and_then(|i| i.lock()) {
        Ok(i) => i as c_int,
        Err(e) => e.code(),
    }
}

/// Takes lock `index` (waiting).
///
/// # Safety
/// See `plock_mutex_count`.
#[no_mangle]
pub unsafe extern "C" fn plock_mutex_lock_index(m: *const plock_mutex_t, index: c_int) -> c_int {
    let Ok(index) = usize::try_from(index) else { return Error::InvalidArgument.code() };
    // SAFETY: forwarded contract.
    code(unsafe { mutex(m) }.and_then(|i| i.lock_index(index)))
}

/// Takes lock `index` if free (`PLOCK_EBUSY` otherwise).
///
/// # Safety
/// See `plock_mutex_count`.
#[no_mangle]
pub unsafe extern "C" fn plock_mutex_trylock_index(m: *const plock_mutex_t, index: c_int) -> c_int {
    let Ok(index) = usize::try_from(index) else { return Error::InvalidArgument.code() };
    // SAFETY: forwarded contract.
    code(unsafe { mutex(m) }.and_then(|i| i.try_lock_index(index)))
}

/// Releases lock `index` (from any CPU).
///
/// # Safety
/// See `plock_mutex_count`.
#[no_mangle]
pub unsafe extern "C" fn plock_mutex_unlock(m: *const plock_mutex_t, index: c_int) -> c_int {
    let Ok(index) = usize::try_from(index) else { return Error::InvalidArgument.code() };
    // SAFETY: forwarded contract.
    code(unsafe { mutex(m) }.and_then(|i| i.unlock(index)))
}

/// Creates a big-reader lock (aborts with a message when out of memory).
#[no_mangle]
pub extern "C" fn plock_rwlock_create() -> *mut plock_rwlock_t {
    Box::into_raw(Box::new(plock_rwlock_t { magic: RWLOCK_MAGIC.into(), inner: BrLock::new() }))
}

/// Creates a big-reader lock with `flags` (`PLOCK_SLICE_EXTENSION`: the writer requests the
/// time-slice extension, or 0); NULL for unknown flag bits.
#[no_mangle]
pub extern "C" fn plock_rwlock_create_flags(flags: u32) -> *mut plock_rwlock_t {
    if flags & !PLOCK_SLICE_EXTENSION != 0 {
        return core::ptr::null_mut();
    }
    let inner = BrLock::with_slice_extension(flags & PLOCK_SLICE_EXTENSION != 0);
    Box::into_raw(Box::new(plock_rwlock_t { magic: RWLOCK_MAGIC.into(), inner }))
}

/// Destroys `l`: `PLOCK_EBUSY` (nothing freed) while a writer holds it or a reader is inside.
///
/// # Safety
/// See `plock_mutex_destroy`.
#[no_mangle]
pub unsafe extern "C" fn plock_rwlock_destroy(l: *mut plock_rwlock_t) -> c_int {
    // SAFETY: forwarded contract.
    let inner = match unsafe { rwlock(l) } {
        Ok(i) => i,
        Err(e) => return e.code(),
    };
    if inner.is_busy() {
        return Error::Busy.code();
    }
    // SAFETY: checked live above; created by Box::into_raw.
    unsafe {
        (*l).magic.store(0, core::sync::atomic::Ordering::Relaxed);
        drop(Box::from_raw(l));
    }
    0
}

/// Takes `l` for reading (waiting while a writer holds it).
///
/// # Safety
/// See `plock_mutex_count`.
#[no_mangle]
pub unsafe extern "C" fn plock_rwlock_read_lock(l: *const plock_rwlock_t) -> c_int {
    // SAFETY: forwarded contract.
    code(unsafe { rwlock(l) }.and_then(|i| i.read_lock()))
}

/// Releases a read lock (on any CPU).
///
/// # Safety
/// See `plock_mutex_count`.
#[no_mangle]
pub unsafe extern "C" fn plock_rwlock_read_unlock(l: *const plock_rwlock_t) -> c_int {
    // SAFETY: forwarded contract.
    code(unsafe { rwlock(l) }.map(|i| i.read_unlock()))
}

/// Takes `l` for writing.
///
/// # Safety
/// See `plock_mutex_count`.
#[no_mangle]
pub unsafe extern "C" fn plock_rwlock_write_lock(l: *const plock_rwlock_t) -> c_int {
    // SAFETY: forwarded contract.
    code(unsafe { rwlock(l) }.and_then(|i| i.write_lock()))
}

/// Releases the write lock.
///
/// # Safety
/// See `plock_mutex_count`.
#[no_mangle]
pub unsafe extern "C" fn plock_rwlock_write_unlock(l: *const plock_rwlock_t) -> c_int {
    // SAFETY: forwarded contract.
    code(unsafe { rwlock(l) }.and_then(|i| i.write_unlock()))
}

/// A static description of `code`.
#[no_mangle]
pub extern "C" fn plock_strerror(code: c_int) -> *const c_char {
    let s: &'static [u8] = match code {
        0 => b"success\0",
        -1 => b"invalid argument (NULL or destroyed lock, index out of range)\0",
        -2 => b"the lock is held\0",
        -3 => b"the caller does not hold this lock\0",
        -4 => b"the caller already holds this lock\0",
        -5 => b"out of memory\0",
        -6 => b"internal error\0",
        _ => b"unknown error code\0",
    };
    s.as_ptr().cast()
}

/// The library version, "0.1.0".
#[no_mangle]
pub extern "C" fn plock_version() -> *const c_char {
    c"0.1.0".as_ptr()
}

/// Sends this copy's later operations down the fallback path (non-zero) or not (0).
#[no_mangle]
pub extern "C" fn plock_force_fallback(on: c_int) {
    crate::force_fallback(on != 0);
}

/// `PLOCK_MODE_LIBC_OWNED`: libc registered the calling thread's rseq area.
pub const PLOCK_MODE_LIBC_OWNED: c_int = 1;
/// `PLOCK_MODE_REGISTERED`: libc reserved the area and a library registered it.
pub const PLOCK_MODE_REGISTERED: c_int = 2;
/// `PLOCK_MODE_UNAVAILABLE`: no usable area (errno of the refused registration in `*err`).
pub const PLOCK_MODE_UNAVAILABLE: c_int = 4;
/// `PLOCK_MODE_DISABLED`: the fallback path is forced (`plock_force_fallback`).
pub const PLOCK_MODE_DISABLED: c_int = 5;

/// The calling thread's rseq mode as this copy sees it (`PLOCK_MODE_*`), registering
/// libc's reserved area on the way when the process needs that; the errno of a refused
/// registration in `*err` (0 otherwise).
///
/// # Safety
/// `err` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn plock_rseq_mode(err: *mut c_int) -> c_int {
    let (m, e) = match rseq::mode() {
        rseq::Mode::LibcOwned => (PLOCK_MODE_LIBC_OWNED, 0),
        rseq::Mode::Registered => (PLOCK_MODE_REGISTERED, 0),
        rseq::Mode::Unavailable { errno } => (PLOCK_MODE_UNAVAILABLE, errno),
        rseq::Mode::Disabled => (PLOCK_MODE_DISABLED, 0),
    };
    if !err.is_null() {
        // SAFETY: the caller's pointer, NULL or writable.
        unsafe { err.write(e) };
    }
    m
}

/// Mirrors `struct plock_rseq_statistics`.
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct plock_rseq_statistics {
    /// Critical sections restarted by the kernel.
    pub aborts: u64,
    /// Operations on the atomic fallback path (big-reader lock adds).
    pub fallback_ops: u64,
    /// Threads for which this copy registered libc's reserved area.
    pub registered_by_us: u64,
    /// Registrations that found the area registered by a peer.
    pub registered_by_peer: u64,
    /// Threads whose registration failed.
    pub registration_failures: u64,
}

/// This copy's rseq statistics (process-wide, since it was loaded). `PLOCK_EINVAL` for NULL.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn plock_rseq_stats(out: *mut plock_rseq_statistics) -> c_int {
    if out.is_null() {
        return Error::InvalidArgument.code();
    }
    let s = rseq::stats();
    // SAFETY: checked non-null; writable per the caller's contract.
    unsafe {
        out.write(plock_rseq_statistics {
            aborts: s.aborts,
            fallback_ops: s.fallback_ops,
            registered_by_us: s.registered_by_us,
            registered_by_peer: s.registered_by_peer,
            registration_failures: s.registration_failures,
        })
    };
    0
}

/// 1 when the kernel offers the time-slice extension to this process's threads, else 0.
#[no_mangle]
pub extern "C" fn plock_slice_supported() -> c_int {
    crate::slice_supported() as c_int
}

/// Mirrors `struct plock_slice_statistics`.
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct plock_slice_statistics {
    /// Holds that set the time-slice request.
    pub requests: u64,
    /// Holds nested in an active request, which left it alone.
    pub nested: u64,
    /// Releases that found an extension granted and called `rseq_slice_yield`.
    pub grants: u64,
    /// Of those, yields that gave the CPU up within the grant.
    pub yielded: u64,
}

/// This copy's time-slice counters (process-wide). `PLOCK_EINVAL` for NULL.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn plock_slice_stats(out: *mut plock_slice_statistics) -> c_int {
    if out.is_null() {
        return Error::InvalidArgument.code();
    }
    let s = crate::slice_stats();
    // SAFETY: checked non-null; writable per the caller's contract.
    unsafe {
        out.write(plock_slice_statistics {
            requests: s.requests,
            nested: s.nested,
            grants: s.grants,
            yielded: s.yielded,
        })
    };
    0
}

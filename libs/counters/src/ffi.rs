//! The C API, declared in `include/pcounters.h` (read it for the contract of each function).
//!
//! Every function returns a `PCOUNTERS_*` code (or a documented value) for any input a C
//! caller can produce: null pointers, forged or deleted handles, bad names and buffers
//! that are too small. A Rust panic never leaves this module: each body runs under
//! `catch_unwind` and a panic becomes `PCOUNTERS_EINTERNAL`.

#![allow(non_camel_case_types)]

use core::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use rseq::{Index, Mode};

use crate::error::{validate_name, Error, NAME_MAX, PCOUNTERS_EINTERNAL, PCOUNTERS_OK};
use crate::{registry, table};

/// `pcounters_counter`: a counter handle. `id == 0` is never a valid handle.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct pcounters_counter {
    /// Opaque handle value.
    pub id: u64,
}

/// `pcounters_value`: one counter of a snapshot.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pcounters_value {
    /// The counter's handle.
    pub counter: pcounters_counter,
    /// Its value.
    pub value: i64,
    /// Its name, NUL-terminated.
    pub name: [c_char; NAME_MAX + 1],
}

/// `pcounters_rseq_statistics`: this library copy's rseq statistics.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct pcounters_rseq_statistics {
    /// Critical sections restarted by the kernel.
    pub aborts: u64,
    /// Adds that took the fallback path.
    pub fallback_ops: u64,
    /// Threads for which this copy registered libc's reserved rseq area.
    pub registered_by_us: u64,
    /// Registrations that found the area already registered (`EBUSY`).
    pub registered_by_peer: u64,
    /// Threads whose registration failed.
    pub registration_failures: u64,
}

/// `pcounters_visit_fn`: the callback of [`pcounters_foreach`].
pub type pcounters_visit_fn = Option<
    unsafe extern "C" fn(name: *const c_char, value: i64, counter: pcounters_counter, arg: *mut c_void) -> c_int,
>;

/// `PCOUNTERS_INDEX_CPU_ID`.
pub const PCOUNTERS_INDEX_CPU_ID: c_int = 0;
/// `PCOUNTERS_INDEX_MM_CID`.
pub const PCOUNTERS_INDEX_MM_CID: c_int = 1;

/// `PCOUNTERS_MODE_LIBC_OWNED`.
pub const PCOUNTERS_MODE_LIBC_OWNED: c_int = 1;
/// `PCOUNTERS_MODE_REGISTERED`.
pub const PCOUNTERS_MODE_REGISTERED: c_int = 2;
/// `PCOUNTERS_MODE_REGISTERED_BY_US`: the 0.1 name of [`PCOUNTERS_MODE_REGISTERED`].
pub const PCOUNTERS_MODE_REGISTERED_BY_US: c_int = PCOUNTERS_MODE_REGISTERED;
/// `PCOUNTERS_MODE_REGISTERED_BY_PEER`: no longer returned (who registered is not recorded).
pub const PCOUNTERS_MODE_REGISTERED_BY_PEER: c_int = 3;
/// `PCOUNTERS_MODE_UNAVAILABLE`.
pub const PCOUNTERS_MODE_UNAVAILABLE: c_int = 4;
/// `PCOUNTERS_MODE_DISABLED`.
pub const PCOUNTERS_MODE_DISABLED: c_int = 5;

/// Runs `f`, turning an error into its code and a panic into `PCOUNTERS_EINTERNAL`.
#[inline(always)]
fn guard(f: impl FnOnce() -> Result<(), Error>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => PCOUNTERS_OK,
        Ok(Err(e)) => e.code(),
        Err(_) => PCOUNTERS_EINTERNAL,
    }
}

fn index_from_c(index: c_int) -> Result<Index, Error> {
    match index {
        PCOUNTERS_INDEX_CPU_ID => Ok(Index::CpuId),
        PCOUNTERS_INDEX_MM_CID => Ok(Index::MmCid),
        _ => Err(Error::InvalidArgument),
    }
}

/// Reads a NUL-terminated name, looking at no more than `NAME_MAX + 1` bytes.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string (or at least `NAME_MAX + 1` readable
/// bytes).
unsafe fn name_from_c<'a>(p: *const c_char) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(Error::InvalidArgument);
    }
    let mut len = 0;
    // SAFETY: per the contract, every byte up to the NUL (or the bound) is readable.
    while len <= NAME_MAX && unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    if len > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    // SAFETY: the `len` bytes before the NUL were just read.
    let bytes = unsafe { core::slice::from_raw_parts(p.cast::<u8>(), len) };
    validate_name(bytes)?;
    core::str::from_utf8(bytes).map_err(|_| Error::InvalidArgument)
}

/// Writes through an out-pointer that may be null.
///
/// # Safety
/// `p` is null or valid for writing a `T`.
unsafe fn put<T>(p: *mut T, v: T) -> Result<(), Error> {
    if p.is_null() {
        return Err(Error::InvalidArgument);
    }
    // SAFETY: non-null and valid per the contract.
    unsafe { p.write(v) };
    Ok(())
}

/// Copies `s` and a NUL into `buf` of `size` bytes, truncating when it does not fit.
/// Returns whether all of it fitted.
///
/// # Safety
/// `buf` is valid for writing `size` bytes (and non-null when `size > 0`).
unsafe fn copy_out(s: &[u8], buf: *mut c_char, size: usize) -> bool {
    if size == 0 {
        return false;
    }
    let n = s.len().min(size - 1);
    // SAFETY: `n + 1 <= size` bytes of `buf` are written; `s` is a separate Rust slice.
    unsafe {
        core::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), buf, n);
        *buf.add(n) = 0;
    }
    n == s.len()
}

fn value_of(name: &str, value: i64, handle: u64) -> pcounters_value {
    let mut v = pcounters_value { counter: pcounters_counter { id: handle }, value, name: [0; NAME_MAX + 1] };
    for (d, &b) in v.name.iter_mut().zip(name.as_bytes()) {
        *d = b as c_char;
    }
    v
}

/// Creates a counter. See `pcounters.h`.
///
/// # Safety
/// `name` is null or a NUL-terminated string; `out` is null or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn pcounters_create(name: *const c_char, index: c_int, out: *mut pcounters_counter) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(Error::InvalidArgument);
        }
        // SAFETY: forwarded contract.
        let name = unsafe { name_from_c(name) }?;
        let h = registry::create(name, index_from_c(index)?)?;
        // SAFETY: forwarded contract.
        unsafe { put(out, pcounters_counter { id: h }) }
    })
}

/// Finds a counter by name. See `pcounters.h`.
///
/// # Safety
/// As for [`pcounters_create`].
#[no_mangle]
pub unsafe extern "C" fn pcounters_lookup(name: *const c_char, out: *mut pcounters_counter) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(Error::InvalidArgument);
        }
        // SAFETY: forwarded contract.
        let h = registry::lookup(unsafe { name_from_c(name) }?)?;
        // SAFETY: forwarded contract.
        unsafe { put(out, pcounters_counter { id: h }) }
    })
}

/// Adds to a counter. See `pcounters.h`.
#[no_mangle]
pub extern "C" fn pcounters_add(counter: pcounters_counter, amount: i64) -> c_int {
    guard(|| table::add(counter.id, amount))
}

/// Reads a counter. See `pcounters.h`.
///
/// # Safety
/// `value` is null or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn pcounters_get(counter: pcounters_counter, value: *mut i64) -> c_int {
    guard(|| {
        if value.is_null() {
            return Err(Error::InvalidArgument);
        }
        let v = table::get(counter.id)?;
        // SAFETY: forwarded contract.
        unsafe { put(value, v) }
    })
}

/// Deletes a counter. See `pcounters.h`.
#[no_mangle]
pub extern "C" fn pcounters_delete(counter: pcounters_counter) -> c_int {
    guard(|| registry::delete(counter.id))
}

/// The effective index of a counter. See `pcounters.h`.
///
/// # Safety
/// `index` is null or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn pcounters_index(counter: pcounters_counter, index: *mut c_int) -> c_int {
    guard(|| {
        if index.is_null() {
            return Err(Error::InvalidArgument);
        }
        let i = match table::index(counter.id)? {
            Index::CpuId => PCOUNTERS_INDEX_CPU_ID,
            Index::MmCid => PCOUNTERS_INDEX_MM_CID,
        };
        // SAFETY: forwarded contract.
        unsafe { put(index, i) }
    })
}

/// Copies a counter's name. See `pcounters.h`.
///
/// # Safety
/// `buf` is valid for writing `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn pcounters_name(counter: pcounters_counter, buf: *mut c_char, size: usize) -> c_int {
    guard(|| {
        if buf.is_null() || size == 0 {
            return Err(Error::InvalidArgument);
        }
        // SAFETY: forwarded contract.
        let fits = registry::with_name(counter.id, |n| unsafe { copy_out(n.as_bytes(), buf, size) })?;
        if fits {
            Ok(())
        } else {
            Err(Error::BufferTooSmall)
        }
    })
}

/// Number of live counters. See `pcounters.h`.
#[no_mangle]
pub extern "C" fn pcounters_count() -> usize {
    catch_unwind(registry::len).unwrap_or(0)
}

/// Copies every counter into `out`. See `pcounters.h`.
///
/// # Safety
/// `out` is null (with `capacity == 0`) or valid for writing `capacity` values; `count` is
/// null or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn pcounters_snapshot(out: *mut pcounters_value, capacity: usize, count: *mut usize) -> c_int {
    guard(|| {
        if count.is_null() || (out.is_null() && capacity != 0) {
            return Err(Error::InvalidArgument);
        }
        registry::with_sorted(|items| {
            for (i, it) in items.iter().take(capacity).enumerate() {
                // SAFETY: i < capacity: inside the caller's array.
                unsafe { out.add(i).write(value_of(it.name, it.value, it.handle)) };
            }
            // SAFETY: forwarded contract.
            unsafe { put(count, items.len()) }?;
            if items.len() > capacity {
                Err(Error::BufferTooSmall)
            } else {
                Ok(())
            }
        })
    })
}

/// Calls `visit` for every counter. See `pcounters.h`.
///
/// # Safety
/// `visit` is a valid function that does not unwind or `longjmp` out.
#[no_mangle]
pub unsafe extern "C" fn pcounters_foreach(visit: pcounters_visit_fn, arg: *mut c_void) -> c_int {
    let Some(visit) = visit else {
        return Error::InvalidArgument.code();
    };
    // Copy first, so the callback runs without the registry lock and may call anything.
    let values = catch_unwind(|| {
        registry::with_sorted(|items| {
            let mut v = Vec::new();
            v.try_reserve_exact(items.len())?;
            v.extend(items.iter().map(|it| value_of(it.name, it.value, it.handle)));
            Ok(v)
        })
    });
    let values = match values {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return e.code(),
        Err(_) => return PCOUNTERS_EINTERNAL,
    };
    for v in &values {
        // SAFETY: the name is NUL-terminated and lives until the loop ends; `visit` is valid
        // per the contract.
        let r = unsafe { visit(v.name.as_ptr(), v.value, v.counter, arg) };
        if r != 0 {
            return r;
        }
    }
    PCOUNTERS_OK
}

/// Writes the Prometheus text exposition. See `pcounters.h`.
///
/// # Safety
/// `buf` is null (with `size == 0`) or valid for writing `size` bytes; `length` is null or
/// valid for writing.
#[no_mangle]
pub unsafe extern "C" fn pcounters_prometheus(buf: *mut c_char, size: usize, length: *mut usize) -> c_int {
    guard(|| {
        if length.is_null() || (buf.is_null() && size != 0) {
            return Err(Error::InvalidArgument);
        }
        let text = crate::prometheus()?;
        // SAFETY: forwarded contract.
        unsafe { put(length, text.len()) }?;
        // SAFETY: forwarded contract (`size == 0` writes nothing).
        if size > 0 && unsafe { copy_out(text.as_bytes(), buf, size) } {
            Ok(())
        } else {
            Err(Error::BufferTooSmall)
        }
    })
}

/// The calling thread's rseq mode. See `pcounters.h`.
///
/// # Safety
/// `err` is null or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn pcounters_rseq_mode(err: *mut c_int) -> c_int {
    let (mode, errno) = catch_unwind(|| match rseq::mode() {
        Mode::LibcOwned => (PCOUNTERS_MODE_LIBC_OWNED, 0),
        Mode::Registered => (PCOUNTERS_MODE_REGISTERED, 0),
        Mode::Unavailable { errno } => (PCOUNTERS_MODE_UNAVAILABLE, errno),
        Mode::Disabled => (PCOUNTERS_MODE_DISABLED, 0),
    })
    .unwrap_or((PCOUNTERS_EINTERNAL, 0));
    if !err.is_null() {
        // SAFETY: non-null and valid per the contract.
        unsafe { err.write(errno) };
    }
    mode
}

/// This library copy's rseq statistics. See `pcounters.h`.
///
/// # Safety
/// `out` is null or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn pcounters_rseq_stats(out: *mut pcounters_rseq_statistics) -> c_int {
    guard(|| {
        let s = rseq::stats();
        let v = pcounters_rseq_statistics {
            aborts: s.aborts,
            fallback_ops: s.fallback_ops,
            registered_by_us: s.registered_by_us,
            registered_by_peer: s.registered_by_peer,
            registration_failures: s.registration_failures,
        };
        // SAFETY: forwarded contract.
        unsafe { put(out, v) }
    })
}

/// Forces the fallback path on or off. See `pcounters.h`.
#[no_mangle]
pub extern "C" fn pcounters_force_fallback(on: c_int) -> c_int {
    guard(|| {
        crate::force_fallback(on != 0);
        Ok(())
    })
}

/// The memory this library copy holds. See `pcounters.h`.
///
/// # Safety
/// `resident` and `reserved` are null or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn pcounters_memory(resident: *mut u64, reserved: *mut u64) -> c_int {
    guard(|| {
        let (res, rsv) = registry::memory();
        // SAFETY: forwarded contract (each pointer null or valid).
        unsafe {
            if !resident.is_null() {
                resident.write(res);
            }
            if !reserved.is_null() {
                reserved.write(rsv);
            }
        }
        Ok(())
    })
}

/// A description of a code. See `pcounters.h`.
#[no_mangle]
pub extern "C" fn pcounters_strerror(code: c_int) -> *const c_char {
    let s: &'static CStr = match Error::from_code(code) {
        _ if code == PCOUNTERS_OK => c"success",
        Some(Error::InvalidArgument) => {
            c"invalid argument (null pointer, malformed handle, bad index mode or bad name)"
        }
        Some(Error::NotFound) => c"no such counter (deleted handle or unknown name)",
        Some(Error::Exists) => c"a counter with this name exists already",
        Some(Error::NameTooLong) => c"counter name longer than 127 bytes",
        Some(Error::OutOfMemory) => c"out of memory",
        Some(Error::NoSpace) => c"too many counters (1048576 slots in use)",
        Some(Error::BufferTooSmall) => c"buffer too small for the result",
        Some(Error::Internal) => c"internal error in libpcounters (a bug: please report it)",
        None => c"unknown pcounters error code",
    };
    s.as_ptr()
}

/// The library's version string. See `pcounters.h`.
#[no_mangle]
pub extern "C" fn pcounters_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strerror_matches_messages() {
        for code in -8..=-1 {
            let e = Error::from_code(code).unwrap();
            // SAFETY: strerror returns a static NUL-terminated string.
            let s = unsafe { CStr::from_ptr(pcounters_strerror(code)) };
            assert_eq!(s.to_str().unwrap(), e.message());
            assert_eq!(e.code(), code);
        }
    }
}

//! The C API (`include/prcu.h`). Every entry point checks its pointers and answers bad
//! input with a `PRCU_E*` code.
#![allow(non_camel_case_types)]

use core::ffi::{c_int, c_void};

use crate::map::{Map, MapError};
use crate::{domain, Index, TokenError};

pub const PRCU_OK: c_int = 0;
pub const PRCU_EINVAL: c_int = -1;
pub const PRCU_EALREADY: c_int = -2;
pub const PRCU_EEXIST: c_int = -3;
pub const PRCU_ENOENT: c_int = -4;

pub const PRCU_INDEX_CPU_ID: c_int = 0;
pub const PRCU_INDEX_MM_CID: c_int = 1;

/// Mirrors `struct prcu_stats`.
#[repr(C)]
pub struct prcu_stats {
    pub grace_periods: u64,
    pub callbacks_queued: u64,
    pub callbacks_run: u64,
    pub callback_batches: u64,
    pub stalls: u64,
}

/// Opaque map handle.
pub type prcu_map = Map;

#[no_mangle]
pub extern "C" fn prcu_read_lock() -> u64 {
    domain::read_lock().into_raw()
}

#[no_mangle]
pub extern "C" fn prcu_read_unlock(token: u64) -> c_int {
    match domain::read_unlock(crate::Token::from_raw(token)) {
        Ok(()) => PRCU_OK,
        Err(TokenError::Forged) => PRCU_EINVAL,
        Err(TokenError::AlreadyUnlocked) => PRCU_EALREADY,
    }
}

#[no_mangle]
pub extern "C" fn prcu_synchronize() {
    domain::synchronize();
}

/// # Safety
/// `func(arg)` may be called once, from another thread, after a grace period.
#[no_mangle]
pub unsafe extern "C" fn prcu_call(func: Option<unsafe extern "C" fn(*mut c_void)>, arg: *mut c_void) -> c_int {
    match func {
        // SAFETY: forwarded contract.
        Some(f) => unsafe { crate::call_rcu(f, arg) },
        None => return PRCU_EINVAL,
    }
    PRCU_OK
}

#[no_mangle]
pub extern "C" fn prcu_barrier() {
    crate::barrier();
}

#[no_mangle]
pub extern "C" fn prcu_poll_cookie() -> u64 {
    domain::poll_cookie()
}

#[no_mangle]
pub extern "C" fn prcu_start_poll() -> u64 {
    crate::start_poll()
}

#[no_mangle]
pub extern "C" fn prcu_poll(cookie: u64) -> c_int {
    c_int::from(domain::poll(cookie))
}

#[no_mangle]
pub extern "C" fn prcu_poll_wait(cookie: u64) {
    domain::wait_for(cookie);
}

#[no_mangle]
pub extern "C" fn prcu_set_index(index: c_int) -> c_int {
    let i = match index {
        PRCU_INDEX_CPU_ID => Index::CpuId,
        PRCU_INDEX_MM_CID => Index::MmCid,
        _ => return PRCU_EINVAL,
    };
    if domain::set_index(i) {
        PRCU_OK
    } else {
        PRCU_EALREADY
    }
}

#[no_mangle]
pub extern "C" fn prcu_index() -> c_int {
    match domain::current_index() {
        Index::CpuId => PRCU_INDEX_CPU_ID,
        Index::MmCid => PRCU_INDEX_MM_CID,
    }
}

#[no_mangle]
pub extern "C" fn prcu_fast_path() -> c_int {
    c_int::from(domain::fast_path())
}

#[no_mangle]
pub extern "C" fn prcu_set_checking(on: c_int) {
    crate::set_checking(on != 0);
}

#[no_mangle]
pub extern "C" fn prcu_set_stall_ms(ms: u64) {
    domain::set_stall_limit(ms);
}

/// # Safety
/// `out` is NULL or points to a writable `struct prcu_stats`.
#[no_mangle]
pub unsafe extern "C" fn prcu_get_stats(out: *mut prcu_stats) -> c_int {
    if out.is_null() {
        return PRCU_EINVAL;
    }
    let s = crate::stats();
    // SAFETY: checked non-null; the caller's struct.
    unsafe {
        out.write(prcu_stats {
            grace_periods: s.grace_periods,
            callbacks_queued: s.callbacks_queued,
            callbacks_run: s.callbacks_run,
            callback_batches: s.callback_batches,
            stalls: s.stalls,
        })
    };
    PRCU_OK
}

// RCU-protected pointers: a `void *` slot.

/// # Safety
/// `slot` is NULL or a valid, aligned `void *` used only through these functions.
#[no_mangle]
pub unsafe extern "C" fn prcu_ptr_publish(slot: *mut *mut c_void, value: *mut c_void) -> c_int {
    if slot.is_null() {
        return PRCU_EINVAL;
    }
    // SAFETY: valid aligned pointer slot (contract).
    unsafe { core::sync::atomic::AtomicPtr::from_ptr(slot) }.store(value, core::sync::atomic::Ordering::Release);
    PRCU_OK
}

/// # Safety
/// As for [`prcu_ptr_publish`]; call inside a read section to use the result.
#[no_mangle]
pub unsafe extern "C" fn prcu_ptr_deref(slot: *mut *mut c_void) -> *mut c_void {
    if slot.is_null() {
        return core::ptr::null_mut();
    }
    // SAFETY: contract.
    unsafe { core::sync::atomic::AtomicPtr::from_ptr(slot) }.load(core::sync::atomic::Ordering::Acquire)
}

/// # Safety
/// As for [`prcu_ptr_publish`]. Returns the old value (to be reclaimed after a grace period).
#[no_mangle]
pub unsafe extern "C" fn prcu_ptr_exchange(slot: *mut *mut c_void, value: *mut c_void) -> *mut c_void {
    if slot.is_null() {
        return core::ptr::null_mut();
    }
    // SAFETY: contract.
    unsafe { core::sync::atomic::AtomicPtr::from_ptr(slot) }.swap(value, core::sync::atomic::Ordering::AcqRel)
}

/// Exchanges and hands the old value (if not NULL) to `reclaim` after a grace period.
///
/// # Safety
/// As for [`prcu_ptr_publish`] and [`prcu_call`].
#[no_mangle]
pub unsafe extern "C" fn prcu_ptr_exchange_retire(
    slot: *mut *mut c_void,
    value: *mut c_void,
    reclaim: Option<unsafe extern "C" fn(*mut c_void)>,
) -> c_int {
    let Some(f) = reclaim else { return PRCU_EINVAL };
    if slot.is_null() {
        return PRCU_EINVAL;
    }
    // SAFETY: contract.
    let old = unsafe { prcu_ptr_exchange(slot, value) };
    if !old.is_null() {
        // SAFETY: contract.
        unsafe { crate::call_rcu(f, old) };
    }
    PRCU_OK
}

// The map.

fn map_ref<'a>(m: *const prcu_map) -> Option<&'a Map> {
    if m.is_null() {
        return None;
    }
    // SAFETY: non-null; the magic word rejects most foreign pointers (to maps we made).
    let m = unsafe { &*m };
    m.is_valid().then_some(m)
}

#[no_mangle]
pub extern "C" fn prcu_map_create(capacity: usize) -> *mut prcu_map {
    Box::into_raw(Box::new(Map::new(capacity)))
}

/// # Safety
/// `m` came from [`prcu_map_create`] and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn prcu_map_destroy(m: *mut prcu_map) -> c_int {
    if map_ref(m).is_none() {
        return PRCU_EINVAL;
    }
    // SAFETY: ours, checked.
    drop(unsafe { Box::from_raw(m) });
    PRCU_OK
}

/// # Safety
/// `m` is a live map; `value` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn prcu_map_lookup(m: *const prcu_map, key: u64, value: *mut u64) -> c_int {
    let Some(m) = map_ref(m) else { return PRCU_EINVAL };
    match m.get(key) {
        Some(v) => {
            if !value.is_null() {
                // SAFETY: caller's pointer.
                unsafe { value.write(v) };
            }
            1
        }
        None => 0,
    }
}

fn map_result(r: Result<u64, MapError>, old: *mut u64) -> c_int {
    match r {
        Ok(v) => {
            if !old.is_null() {
                // SAFETY: caller's pointer (contract of the callers).
                unsafe { old.write(v) };
            }
            PRCU_OK
        }
        Err(MapError::Exists) => PRCU_EEXIST,
        Err(MapError::NotFound) => PRCU_ENOENT,
    }
}

/// # Safety
/// `m` is a live map.
#[no_mangle]
pub unsafe extern "C" fn prcu_map_insert(m: *mut prcu_map, key: u64, value: u64) -> c_int {
    let Some(m) = map_ref(m) else { return PRCU_EINVAL };
    map_result(m.insert(key, value).map(|()| 0), core::ptr::null_mut())
}

/// # Safety
/// `m` is a live map; `old` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn prcu_map_replace(m: *mut prcu_map, key: u64, value: u64, old: *mut u64) -> c_int {
    let Some(m) = map_ref(m) else { return PRCU_EINVAL };
    map_result(m.replace(key, value), old)
}

/// # Safety
/// `m` is a live map; `old` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn prcu_map_remove(m: *mut prcu_map, key: u64, old: *mut u64) -> c_int {
    let Some(m) = map_ref(m) else { return PRCU_EINVAL };
    map_result(m.remove(key), old)
}

/// # Safety
/// `m` is a live map.
#[no_mangle]
pub unsafe extern "C" fn prcu_map_len(m: *const prcu_map) -> usize {
    map_ref(m).map_or(0, Map::len)
}

pub const PRCU_MODE_LIBC_OWNED: c_int = 1;
pub const PRCU_MODE_REGISTERED: c_int = 2;
pub const PRCU_MODE_UNAVAILABLE: c_int = 4;
pub const PRCU_MODE_DISABLED: c_int = 5;

/// The calling thread's rseq mode as this copy sees it (`PRCU_MODE_*`; the errno of a
/// refused registration in `*err`).
///
/// # Safety
/// `err` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn prcu_rseq_mode(err: *mut c_int) -> c_int {
    let (m, e) = match rseq::mode() {
        rseq::Mode::LibcOwned => (PRCU_MODE_LIBC_OWNED, 0),
        rseq::Mode::Registered => (PRCU_MODE_REGISTERED, 0),
        rseq::Mode::Unavailable { errno } => (PRCU_MODE_UNAVAILABLE, errno),
        rseq::Mode::Disabled => (PRCU_MODE_DISABLED, 0),
    };
    if !err.is_null() {
        // SAFETY: caller's pointer.
        unsafe { err.write(e) };
    }
    m
}

/// Mirrors `struct prcu_rseq_statistics`.
#[repr(C)]
pub struct prcu_rseq_statistics {
    pub aborts: u64,
    pub fallback_ops: u64,
    pub registered_by_us: u64,
    pub registered_by_peer: u64,
    pub registration_failures: u64,
}

/// This copy's rseq statistics.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn prcu_rseq_stats(out: *mut prcu_rseq_statistics) -> c_int {
    if out.is_null() {
        return PRCU_EINVAL;
    }
    let s = rseq::stats();
    // SAFETY: checked non-null.
    unsafe {
        out.write(prcu_rseq_statistics {
            aborts: s.aborts,
            fallback_ops: s.fallback_ops + crate::domain::FALLBACK_OPS.load(core::sync::atomic::Ordering::Relaxed),
            registered_by_us: s.registered_by_us,
            registered_by_peer: s.registered_by_peer,
            registration_failures: s.registration_failures,
        })
    };
    PRCU_OK
}

/// Sends readers of this copy to the fallback path (atomics and fences) or back. Correct
/// at any time: each reader's counts land in words its unlock and the writers sum.
#[no_mangle]
pub extern "C" fn prcu_force_fallback(on: c_int) -> c_int {
    rseq::force_fallback(on != 0);
    PRCU_OK
}

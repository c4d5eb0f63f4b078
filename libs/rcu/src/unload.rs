//! `dlclose` with callbacks pending: the destructor waits until every queued callback has
//! run (they may free memory of the caller's, and their code may live in this library),
//! then stops and joins the worker thread, so no thread of ours runs unmapped code. At
//! process exit the destructor does nothing (other threads may still be reading; the
//! queue dies with the process). The two are told apart as in libpcounters: an exit
//! handler registered without a DSO handle (run at exit only) posts a semaphore.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicPtr, Ordering};

extern "C" {
    fn __cxa_atexit(func: unsafe extern "C" fn(*mut c_void), arg: *mut c_void, dso: *mut c_void) -> c_int;
}

static EXIT_MARK: AtomicPtr<libc::sem_t> = AtomicPtr::new(core::ptr::null_mut());

/// Registers the exit mark (from the constructor).
pub(crate) fn register_exit_mark() {
    if !EXIT_MARK.load(Ordering::Acquire).is_null() {
        return;
    }
    // SAFETY: as in libpcounters' unload.rs: a never-freed sem_t posted by exit.
    unsafe {
        let sem = libc::malloc(core::mem::size_of::<libc::sem_t>()).cast::<libc::sem_t>();
        if sem.is_null() || libc::sem_init(sem, 0, 0) != 0 {
            return;
        }
        let post: unsafe extern "C" fn(*mut libc::sem_t) -> c_int = libc::sem_post;
        let handler: unsafe extern "C" fn(*mut c_void) = core::mem::transmute(post);
        if __cxa_atexit(handler, sem.cast(), core::ptr::null_mut()) == 0 {
            EXIT_MARK.store(sem, Ordering::Release);
        }
    }
}

fn exiting_or_unknown() -> bool {
    let sem = EXIT_MARK.load(Ordering::Acquire);
    if sem.is_null() {
        return true;
    }
    let mut v: c_int = 0;
    // SAFETY: a live, initialised semaphore.
    unsafe { libc::sem_getvalue(sem, &mut v) };
    v > 0
}

extern "C" fn at_unload() {
    if !exiting_or_unknown() {
        crate::callbacks::stop_at_unload();
    }
}

#[used]
#[link_section = ".fini_array"]
static STOP_AT_UNLOAD: extern "C" fn() = at_unload;

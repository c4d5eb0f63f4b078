//! Telling `dlclose` from process exit in a library's destructor (both run it).
//!
//! A cdylib's `.fini_array` entry runs at `dlclose` and at exit alike, and at exit other
//! threads may still be using the library: releasing memory or stopping a worker then would
//! pull it from under them. [`register`] registers an exit handler with `__cxa_atexit`
//! *without* a DSO handle — such handlers run at exit only, never at `dlclose`, and before
//! glibc's `_dl_fini` runs the destructors (exit handlers run in the reverse order of
//! registration, and `_dl_fini` was registered when the program started). The handler must
//! outlive the library, so it is libc's own `sem_post` on a `sem_t` from the process's
//! `malloc` that is never freed: one exit record and 32 bytes per load. The destructor asks
//! [`exiting_or_unknown`]: posted means exit (keep everything), not posted means `dlclose`.
//!
//! Every library links its own copy of this crate, so each has its own mark; what the
//! destructor then does is the library's policy.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicPtr, Ordering};

extern "C" {
    fn __cxa_atexit(func: unsafe extern "C" fn(*mut c_void), arg: *mut c_void, dso: *mut c_void) -> c_int;
}

/// The semaphore the exit handler posts (null until [`register`] succeeded).
static EXIT_MARK: AtomicPtr<libc::sem_t> = AtomicPtr::new(core::ptr::null_mut());

/// Registers this copy's exit mark; later calls do nothing. Call it from a constructor or
/// under the caller's own lock (two racing first calls would register two marks, both
/// harmless, one of them unused). If `malloc` or `sem_init` fails nothing is registered and
/// [`exiting_or_unknown`] keeps saying "unknown".
pub fn register() {
    if !EXIT_MARK.load(Ordering::Acquire).is_null() {
        return;
    }
    // SAFETY: a malloc'ed sem_t, initialised before use and never freed (it must outlive
    // the library); `sem_post` has the C signature int(sem_t *), called by exit with the
    // argument given here and its result ignored, which the C calling convention allows
    // through a void(void *) pointer.
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

/// Whether the process is exiting (the mark was posted), or it cannot be told (no mark
/// registered): in both cases a destructor must keep everything.
pub fn exiting_or_unknown() -> bool {
    let sem = EXIT_MARK.load(Ordering::Acquire);
    if sem.is_null() {
        return true;
    }
    let mut v: c_int = 0;
    // SAFETY: a live, initialised semaphore (never freed).
    unsafe { libc::sem_getvalue(sem, &mut v) };
    v > 0
}

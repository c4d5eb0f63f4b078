//! Returning a copy's memory when it is unloaded with `dlclose`, and only then.
//!
//! A library's destructor runs at `dlclose` and at process exit alike, and at exit other
//! threads may still be counting: freeing then would pull memory from under them. To tell
//! the two apart, the first `create` (which is what allocates) registers an exit handler
//! with `__cxa_atexit` *without* a DSO handle — such handlers run at exit only, never at
//! `dlclose` — and before glibc's `_dl_fini` runs the destructors (exit handlers run in the
//! reverse order of registration, and `_dl_fini` was registered when the program started).
//! The handler must outlive this library, so it is libc's own `sem_post` on a `sem_t` that
//! is never freed (32 bytes and one exit record per load that created a counter). The
//! destructor finds the semaphore posted at exit and keeps everything; at `dlclose` it is
//! not posted, and the destructor frees the table, the names and the per-CPU pool.
//!
//! Before freeing, every live counter is retired and fenced exactly as a delete does (see
//! [`crate::registry::release_all`]), so an add that a careless caller still runs while
//! unloading completes or is refused; later calls find no table (and would run unmapped
//! code anyway).

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicPtr, Ordering};

extern "C" {
    fn __cxa_atexit(func: unsafe extern "C" fn(*mut c_void), arg: *mut c_void, dso: *mut c_void) -> c_int;
}

/// The semaphore the exit handler posts (null until the first create registered it).
static EXIT_MARK: AtomicPtr<libc::sem_t> = AtomicPtr::new(core::ptr::null_mut());

/// Registers the exit mark once (under the registry lock, by the first create).
pub(crate) fn register_exit_mark() {
    if !EXIT_MARK.load(Ordering::Acquire).is_null() {
        return;
    }
    // SAFETY: malloc of a sem_t, initialised before use and never freed; `sem_post` has the
    // C signature int(sem_t *), called by exit with the argument given here and its result
    // ignored, which the C calling convention allows through a void(void *) pointer.
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

/// Whether the process is exiting (the exit mark was posted), or it cannot be told (no
/// mark: then nothing was allocated either, or registering failed and memory is kept).
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
        crate::registry::release_all();
    }
}

#[used]
#[link_section = ".fini_array"]
static RELEASE_AT_UNLOAD: extern "C" fn() = at_unload;

//! Telling `dlclose` from process exit in the library's destructor (both run it): at load,
//! an exit handler is registered with `__cxa_atexit` *without* a DSO handle — such handlers
//! run at exit only, and before the destructors — and it is libc's own `sem_post` on a
//! semaphore that outlives the library. The destructor finds it posted at exit (and keeps
//! everything: other threads may still allocate) and not posted at `dlclose` (and unmaps
//! everything). What stays per load: one exit record and a 32-byte semaphore.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicPtr, Ordering};

extern "C" {
    fn __cxa_atexit(func: unsafe extern "C" fn(*mut c_void), arg: *mut c_void, dso: *mut c_void) -> c_int;
}

static EXIT_MARK: AtomicPtr<libc::sem_t> = AtomicPtr::new(core::ptr::null_mut());

/// Registers the exit mark (from the constructor).
pub fn register_exit_mark() {
    // SAFETY: the semaphore comes from the process's malloc (not from this library's
    // memory, which goes away at dlclose), is initialised before use and never freed;
    // `sem_post` has the C signature int(sem_t *), called with the argument given here and
    // its result ignored, which the C calling convention allows through void(void *).
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

/// Whether the process is exiting, or it cannot be told (then memory is kept).
pub fn exiting_or_unknown() -> bool {
    let sem = EXIT_MARK.load(Ordering::Acquire);
    if sem.is_null() {
        return true;
    }
    let mut v: c_int = 0;
    // SAFETY: a live, initialised semaphore.
    unsafe { libc::sem_getvalue(sem, &mut v) };
    v > 0
}

/// Whether the process's `malloc` is defined by the object this copy lives in (the
/// drop-in build, preloaded or linked ahead of libc).
pub fn is_process_malloc() -> bool {
    // SAFETY: dlsym/dladdr with valid arguments; both may allocate, which is served.
    unsafe {
        let m = libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr());
        let mut a: libc::Dl_info = core::mem::zeroed();
        let mut b: libc::Dl_info = core::mem::zeroed();
        let here = is_process_malloc as *const c_void;
        !m.is_null() && libc::dladdr(m, &mut a) != 0 && libc::dladdr(here, &mut b) != 0 && a.dli_fbase == b.dli_fbase
    }
}

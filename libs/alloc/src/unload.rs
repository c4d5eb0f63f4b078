//! Telling `dlclose` from process exit in the library's destructor (both run it): at load,
//! an exit handler is registered with `__cxa_atexit` *without* a DSO handle — such handlers
//! run at exit only, and before the destructors — and it is libc's own `sem_post` on a
//! semaphore that outlives the library. The destructor finds it posted at exit (and keeps
//! everything: other threads may still allocate) and not posted at `dlclose` (and unmaps
//! everything). What stays per load: one exit record and a 32-byte semaphore.

use core::ffi::c_void;

/// Registers the exit mark (from the constructor). The mark's semaphore comes from the
/// process's malloc, not from this library's memory, which goes away at dlclose.
pub fn register_exit_mark() {
    rseq::exit_mark::register();
}

/// Whether the process is exiting, or it cannot be told (then memory is kept).
pub fn exiting_or_unknown() -> bool {
    rseq::exit_mark::exiting_or_unknown()
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

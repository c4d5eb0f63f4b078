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

/// Registers the exit mark once (under the registry lock, by the first create).
pub(crate) fn register_exit_mark() {
    rseq::exit_mark::register();
}

extern "C" fn at_unload() {
    if !rseq::exit_mark::exiting_or_unknown() {
        crate::registry::release_all();
    }
}

#[used]
#[link_section = ".fini_array"]
static RELEASE_AT_UNLOAD: extern "C" fn() = at_unload;

//! `fork`: the prepare handler takes every allocator lock (maintenance, the per-CPU
//! fallback locks, each class, the large table, the metadata arena), so that the child
//! inherits none held by a thread it does not have; both sides release them. Registered
//! at load time with `pthread_atfork`.

use crate::{cache, central, large, meta};

extern "C" fn prepare() {
    cache::hold();
    central::hold_all();
    large::hold();
    meta::hold();
}

extern "C" fn parent() {
    // SAFETY: `prepare` took them in this thread.
    unsafe {
        meta::release_held();
        large::release_held();
        central::release_all_held();
        cache::release_held();
    }
}

extern "C" fn child() {
    // SAFETY: the parent thread took them in `prepare`; the child is that thread's copy.
    unsafe {
        meta::release_held();
        large::release_held();
        central::release_all_held();
        cache::release_held();
    }
    cache::after_fork_child();
}

/// Registers the handlers (once per load, from the constructor).
pub fn register() {
    // SAFETY: the handlers are `extern "C" fn()` of this library; glibc unregisters them
    // when the library is unloaded (pthread_atfork records the caller's DSO).
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

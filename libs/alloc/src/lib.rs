//! palloc: a per-CPU caching malloc on restartable sequences that lives in a library.
//!
//! Three ways in: `libpalloc.so` with a prefixed C API (`palloc_malloc`, ...; see
//! `include/palloc.h` and [`ffi`]) for programs that keep their own `malloc`;
//! `libpalloc_preload.so` (the `palloc-preload` crate), the drop-in `malloc` for
//! `LD_PRELOAD`; and [`Palloc`], a Rust `#[global_allocator]`.
//!
//! Layers (README.md has the design and its figures):
//! - [`class`]: 52 size classes up to 256 KiB, each with its per-CPU capacity, batch and
//!   span size;
//! - `cache`: per-CPU stacks of free objects per class (libs/rseq's `PercpuStack`: rseq
//!   sections, a locked fallback half, drains behind a membarrier fence), no per-thread
//!   state anywhere;
//! - `central`: per class a transfer stack and spans cut from 4 MiB chunks, recorded in a
//!   page map (`pagemap`); empty spans give their pages back;
//! - `large`: bigger blocks mapped one by one.
//!
//! Nothing here allocates through the allocator it implements: metadata comes from the
//! allocator's own mappings (`meta`), messages are formatted into stack buffers.

#![warn(missing_docs)]

mod api;
mod cache;
mod central;
pub mod class;
pub mod ffi;
mod fork;
mod global;
mod large;
mod lock;
mod meta;
mod pagemap;
mod stats;
mod sys;
mod unload;

pub use api::Foreign;
pub use global::Palloc;
pub use stats::{CpuStats, Stats};

/// The functions with C semantics, for the drop-in build (not a stable Rust API).
#[doc(hidden)]
pub mod c {
    pub use crate::api::{aligned, calloc, free, malloc, realloc, trim, usable_size, LIBC_USABLE_SIZE};
    pub use crate::stats::{print, stats};
    pub use crate::sys::{errno, set_errno};
}

/// Current statistics (see [`Stats`]).
pub fn stats() -> Stats {
    stats::stats()
}

/// Statistics of one CPU cache.
pub fn cpu_stats(cpu: usize) -> Option<CpuStats> {
    stats::cpu_stats(cpu)
}

/// Drains every CPU cache and returns free pages; true when something was released.
pub fn trim() -> bool {
    api::trim()
}

/// Reads the settings from the environment and registers the fork handlers. Runs when the
/// library is loaded (before that, calls work with the defaults):
/// - `PALLOC_CHECK=1`: checking mode (double and invalid frees are detected and reported);
/// - `PALLOC_INDEX=cpu_id|mm_cid`: the per-CPU index (default `mm_cid` where the kernel has
///   it);
/// - `PALLOC_PERCPU=0`: no per-CPU layer (everything through the central layer);
/// - `PALLOC_STATS=1`: count hits and print the statistics to stderr at exit.
extern "C" fn at_load() {
    rseq::init();
    if sys::env_flag(b"PALLOC_CHECK\0") {
        central::CHECK.store(true, core::sync::atomic::Ordering::Relaxed);
    }
    match sys::env(b"PALLOC_INDEX\0") {
        Some(b"cpu_id") => {
            cache::set_index(false);
        }
        Some(b"mm_cid") | None => {}
        Some(_) => sys::write_all(2, b"palloc: PALLOC_INDEX must be cpu_id or mm_cid; using mm_cid\n"),
    }
    if matches!(sys::env(b"PALLOC_PERCPU\0"), Some(b"0")) {
        cache::DISABLED.store(true, core::sync::atomic::Ordering::Relaxed);
    }
    if sys::env_flag(b"PALLOC_STATS\0") {
        cache::COUNT_HITS.store(true, core::sync::atomic::Ordering::Relaxed);
        PRINT_AT_EXIT.store(true, core::sync::atomic::Ordering::Relaxed);
    }
    fork::register();
    if unload::is_process_malloc() {
        // The drop-in (or a program linking this copy ahead of libc): never unloaded, and
        // its memory must outlive every destructor.
        NEVER_RELEASE.store(true, core::sync::atomic::Ordering::Relaxed);
    } else {
        unload::register_exit_mark();
    }
}

static NEVER_RELEASE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

static PRINT_AT_EXIT: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// At `dlclose` (not at exit, when other threads may still allocate): unmaps everything.
extern "C" fn at_unload() {
    if PRINT_AT_EXIT.load(core::sync::atomic::Ordering::Relaxed) {
        stats::print(2);
    }
    if !NEVER_RELEASE.load(core::sync::atomic::Ordering::Relaxed) && !unload::exiting_or_unknown() {
        // SAFETY: the library is being unloaded: its functions cannot be called any more,
        // and blocks it handed out must not be used after `dlclose` (README: unloading).
        unsafe {
            cache::unmap_all();
            large::unmap_all();
            central::unmap_all();
            meta::release_all();
        }
    }
}

#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;

#[used]
#[link_section = ".fini_array"]
static AT_UNLOAD: extern "C" fn() = at_unload;

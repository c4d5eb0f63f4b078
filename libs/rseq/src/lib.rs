//! The per-CPU foundation that every library of the project links statically.
//!
//! Each library carries its own copy of this crate. Copies never talk to each other: they
//! all follow the coexistence contract of docs/DESIGN.md (one rseq area per thread,
//! owned by libc or registered lazily in libc's reserved slot, `rseq_cs` cleared on every
//! exit, arrays sized by possible CPUs, a fallback that never shares a word with the
//! rseq path).
//!
//! - [`area`]: finding the calling thread's area, and the [`mode`] query.
//! - [`ops`]: critical sections named by effect (`try_*` on a [`ThreadArea`]) and complete
//!   operations with restarts and fallback ([`percpu_add`], [`percpu_load_compare_store`],
//!   [`PercpuStack`], whose `drain` owns another CPU's copy behind a fence). Every operation
//!   takes [`PercpuArray`]s, whose size the sections check.
//! - [`fallback`]: the same operations with atomics on separate words.
//! - [`topology`], [`pool`]: possible/online/allowed CPUs and the per-CPU strided pool.
//! - [`membarrier`]: expedited barriers, including the one that restarts sections.
//! - [`stats`]: aborts, fallback operations, registrations.
//! - [`slice`]: the scheduler time-slice extension of Linux 7.x (request while holding a lock).
//! - [`exit_mark`]: lets a library's destructor tell `dlclose` from process exit.

mod arch;
pub mod area;
#[cfg(feature = "asm-check")]
pub mod asm_check;
pub mod exit_mark;
pub mod fallback;
pub mod membarrier;
pub mod ops;
pub mod percpu;
pub mod pool;
pub mod slice;
pub mod stats;
mod sys;
pub mod testing;
pub mod topology;

pub use area::{feature_size, force_fallback, mode, Mode, ThreadArea, RSEQ_SIG};
pub use ops::{
    percpu_add, percpu_load_compare_store, percpu_sum, DrainError, Index, Outcome, Path, PercpuStack, StackError,
};
pub use percpu::{PercpuArray, PercpuPtr};
pub use stats::{stats, Stats};

/// Does now what every copy of this crate would otherwise do lazily on first use: finds
/// the rseq area (`dlsym`), the kernel's feature size, the number of possible CPUs, and the
/// membarrier commands. Idempotent and cheap after the first call. A library calls it from
/// its load-time constructor ([`init_at_load!`]), so that no first use — in a signal handler,
/// in a forked child, inside an allocator — has to call into the dynamic linker or read
/// sysfs. Everything it caches is a plain atomic that racing callers fill with the same
/// value, so a fork or a signal at any point leaves nothing half-initialised.
pub fn init() {
    area::init();
    let _ = topology::nr_possible_cpus();
    let _ = membarrier::supported_commands();
    let _ = slice::supported();
}

/// Runs [`init`] when the library that expands it is loaded (an ELF `.init_array` entry).
/// Expand it once, at the top level of a cdylib.
#[macro_export]
macro_rules! init_at_load {
    () => {
        #[used]
        #[link_section = ".init_array"]
        static RSEQ_INIT_AT_LOAD: extern "C" fn() = {
            extern "C" fn rseq_init_at_load() {
                $crate::init();
            }
            rseq_init_at_load
        };
    };
}

//! The per-CPU foundation that every library of the project links statically.
//!
//! Each library carries its own copy of this crate. Copies never talk to each other: they
//! all follow the coexistence contract of the design notes (one rseq area per thread,
//! owned by libc or registered lazily in libc's reserved slot, `rseq_cs` cleared on every
//! exit, arrays sized by possible CPUs, a fallback that never shares a word with the
//! rseq path).
//!
//! - [`area`]: finding the calling thread's area, and the [`mode`] query.
//! - [`ops`]: critical sections named by effect (`try_*` on a [`ThreadArea`]) and complete
//!   operations with restarts and fallback ([`percpu_add`], [`percpu_load_compare_store`],
//!   [`PercpuStack`]).
//! - [`fallback`]: the same operations with atomics on separate words.
//! - [`topology`], [`pool`]: possible/online/allowed CPUs and the per-CPU strided pool.
//! - [`membarrier`]: expedited barriers, including the one that restarts sections.
//! - [`stats`]: aborts, fallback operations, registrations.

mod arch;
pub mod area;
#[cfg(feature = "asm-check")]
pub mod asm_check;
pub mod fallback;
pub mod membarrier;
pub mod ops;
pub mod percpu;
pub mod pool;
pub mod stats;
mod sys;
pub mod testing;
pub mod topology;

pub use area::{feature_size, force_fallback, mode, Mode, ThreadArea, RSEQ_SIG};
pub use ops::{percpu_add, percpu_load_compare_store, percpu_sum, Index, Outcome, Path, PercpuStack};
pub use percpu::PercpuPtr;
pub use stats::{stats, Stats};

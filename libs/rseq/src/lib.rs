//! The per-CPU foundation that every library of the project links statically.
//!
//! Each library carries its own copy of this crate. Copies never talk to each other: they
//! all follow the coexistence contract of the design notes (one rseq area per thread,
//! owned by libc or registered lazily in libc's reserved slot, `rseq_cs` cleared on every
//! exit, arrays sized by possible CPUs, a fallback that never shares a word with the
//! rseq path).

pub mod membarrier;
pub mod percpu;
pub mod pool;
pub mod topology;

pub use percpu::PercpuPtr;

//! Critical sections in inline assembly, one module per architecture.
//!
//! Every operation has the same shape:
//! 1. a descriptor `{version 0, flags 0, start, post_commit_offset, abort}` is emitted into the
//!    writable `__rseq_cs` section (relative relocations in a PIC library, no text
//!    relocations);
//! 2. its address is stored in the area's `rseq_cs`; the section starts right after that
//!    store, so there is no instruction boundary at which the pointer is set but the thread
//!    is outside the section;
//! 3. the index (`cpu_id` or `mm_cid`, chosen by the const parameter `IDX`, a byte offset in
//!    the area) is loaded *inside* the section, so any preemption, migration or signal after
//!    it restarts at the abort handler;
//! 4. a single store commits, as the last instruction of the section;
//! 5. every exit — commit, comparison failure, abort — stores 0 to `rseq_cs` before leaving,
//!    so an unloaded library never leaves the kernel a dangling descriptor.
//!
//! The abort handler is preceded by the 4-byte signature the kernel checks. Results are
//! `STATUS_*`. No calls and no system calls happen inside a section, and the kernel-owned
//! fields are never written.

/// The operation committed.
pub const STATUS_COMMITTED: u32 = 0;
/// The comparison (or capacity check) inside the section failed; nothing was written.
pub const STATUS_COMPARE_FAILED: u32 = 1;
/// The kernel restarted the section at its abort handler; nothing was committed.
pub const STATUS_ABORTED: u32 = 2;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::*;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("libs/rseq supports x86_64 and aarch64");

//! Critical sections in inline assembly, one module per architecture.
//!
//! Every operation has the same shape:
//! 1. a descriptor `{version 0, flags 0, start, post_commit_offset, abort}` is emitted into the
//!    writable `__rseq_cs` section (relative relocations in a PIC library, no text
//!    relocations);
//! 2. its address is stored in the area's `rseq_cs`; the section starts right after that
//!    store, so there is no instruction boundary at which the pointer is set but the thread
//!    is outside the section;
//! 3. the index (`cpu_id`, or `mm_cid` when the const parameter `MM` is set) is loaded
//!    *inside* the section, so any preemption, migration or signal after it restarts at the
//!    abort handler, and compared there with the structure's CPU count: an index at or above
//!    it — `-1` (area not initialised), `-2` (glibc did not register the thread), our own
//!    "registration failed" marks, or a CPU id the structure has no copy for — leaves with
//!    [`STATUS_UNUSABLE`] before anything is touched. An `mm_cid` section first requires
//!    `cpu_id` to be valid, because an unregistered area keeps a stale or zero `mm_cid`;
//! 4. the operation's own instructions (stacks also test a per-CPU "stopped" word);
//! 5. a single store commits, as the last instruction of the section;
//! 6. every exit — commit, comparison failure, unusable index, abort — stores 0 to
//!    `rseq_cs` before leaving, so an unloaded library never leaves the kernel a dangling
//!    descriptor.
//!
//! Each architecture writes this once, as a `section!` template; an operation is only its
//! distinctive instructions. The abort handler is preceded by the 4-byte signature the
//! kernel checks. Results are `STATUS_*`. No calls and no system calls happen inside a
//! section, and the kernel-owned fields are never written.

/// The operation committed.
pub const STATUS_COMMITTED: u32 = 0;
/// The comparison (or capacity check) inside the section failed; nothing was written.
pub const STATUS_COMPARE_FAILED: u32 = 1;
/// The kernel restarted the section at its abort handler; nothing was committed.
pub const STATUS_ABORTED: u32 = 2;
/// The index was out of range (thread not registered, or no copy for it) or the copy is
/// stopped; nothing was written.
pub const STATUS_UNUSABLE: u32 = 3;

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

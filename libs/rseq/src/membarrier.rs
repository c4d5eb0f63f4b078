//! The `membarrier` system call: process-wide memory barriers, and restarting the rseq
//! critical sections of other threads (`PRIVATE_EXPEDITED_RSEQ`).
//!
//! Every command is checked against the kernel's `MEMBARRIER_CMD_QUERY` mask (queried
//! once and cached in an atomic, not a once-cell: a child forked while another thread was
//! querying must not wait for it), so a command this kernel lacks gives
//! [`MembarrierError::Unsupported`] instead of a bare `EINVAL`.
//!
//! [`fence_rseq`] is the fence for touching another CPU's rseq-written data: it registers
//! the process on first use (again in a forked child, whose new address space is not
//! registered) and restarts the critical sections on one CPU or on all of them.

use core::sync::atomic::{AtomicU64, Ordering};
use std::fmt;
use std::io;

/// Returns the bit mask of supported commands.
pub const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
/// Memory barrier on every running thread of this process (needs registration).
pub const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
/// Registers this process for [`MEMBARRIER_CMD_PRIVATE_EXPEDITED`].
pub const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;
/// Restarts the rseq critical sections running in this process's threads.
pub const MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ: libc::c_int = 1 << 7;
/// Registers this process for [`MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ`].
pub const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ: libc::c_int = 1 << 8;
/// Flag of `PRIVATE_EXPEDITED_RSEQ`: target only the CPU given in the third argument.
pub const MEMBARRIER_CMD_FLAG_CPU: libc::c_uint = 1;

/// A membarrier command that could not be run.
#[derive(Debug)]
pub enum MembarrierError {
    /// The kernel does not offer this command (named without the `MEMBARRIER_CMD_` prefix).
    Unsupported(&'static str),
    /// The command was issued before the process registered for it.
    NotRegistered,
    /// Any other failure of the system call.
    Os(io::Error),
}

fn needed_kernel(command: &str) -> &'static str {
    match command {
        "QUERY" => "Linux 4.3",
        "PRIVATE_EXPEDITED" | "REGISTER_PRIVATE_EXPEDITED" => "Linux 4.14",
        "PRIVATE_EXPEDITED_RSEQ" | "REGISTER_PRIVATE_EXPEDITED_RSEQ" => "Linux 5.10",
        _ => "a newer kernel",
    }
}

impl fmt::Display for MembarrierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembarrierError::Unsupported(cmd) => {
                write!(f, "membarrier {cmd} is not supported by this kernel (needs {})", needed_kernel(cmd))
            }
            MembarrierError::NotRegistered => f.write_str(
                "membarrier command issued before the process registered for it \
                 (call the matching register function first)",
            ),
            MembarrierError::Os(e) => write!(f, "membarrier failed: {e}"),
        }
    }
}

impl std::error::Error for MembarrierError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MembarrierError::Os(e) => Some(e),
            _ => None,
        }
    }
}

fn raw_membarrier(cmd: libc::c_int, flags: libc::c_uint, cpu: libc::c_int) -> Result<(), io::Error> {
    // SAFETY: membarrier takes three integers and touches no user memory.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, cmd, flags, cpu) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

const QUERY_OK: u64 = 1 << 32;
const QUERY_FAILED: u64 = 2 << 32;

/// The query answer: the mask, or the errno of a failed query. Cached as `QUERY_OK | mask`
/// or `QUERY_FAILED | errno` (0 until known); racing callers store the same answer.
fn query() -> Result<u32, i32> {
    static ANSWER: AtomicU64 = AtomicU64::new(0);
    let mut a = ANSWER.load(Ordering::Relaxed);
    if a == 0 {
        // SAFETY: as in raw_membarrier; QUERY returns the mask or -1.
        let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0) };
        a = if r < 0 { QUERY_FAILED | crate::sys::errno() as u32 as u64 } else { QUERY_OK | (r as u32 as u64) };
        ANSWER.store(a, Ordering::Relaxed);
    }
    if a & QUERY_OK != 0 {
        Ok(a as u32)
    } else {
        Err(a as u32 as i32)
    }
}

/// The bit mask of commands this kernel supports (`MEMBARRIER_CMD_QUERY`), cached after
/// the first call.
pub fn supported_commands() -> Result<u32, MembarrierError> {
    query().map_err(|errno| {
        if errno == libc::ENOSYS {
            MembarrierError::Unsupported("QUERY")
        } else {
            MembarrierError::Os(io::Error::from_raw_os_error(errno))
        }
    })
}

/// Checks the query mask for `cmd`: a kernel without membarrier (or a filter answering
/// `ENOSYS`) supports nothing.
fn check(cmd: libc::c_int, name: &'static str) -> Result<(), MembarrierError> {
    match query() {
        Ok(mask) if mask & cmd as u32 != 0 => Ok(()),
        Ok(_) => Err(MembarrierError::Unsupported(name)),
        Err(errno) if errno == libc::ENOSYS => Err(MembarrierError::Unsupported(name)),
        Err(errno) => Err(MembarrierError::Os(io::Error::from_raw_os_error(errno))),
    }
}

fn register(cmd: libc::c_int, name: &'static str) -> Result<(), MembarrierError> {
    check(cmd, name)?;
    raw_membarrier(cmd, 0, 0).map_err(MembarrierError::Os)
}

fn issue(cmd: libc::c_int, name: &'static str, flags: libc::c_uint, cpu: libc::c_int) -> Result<(), MembarrierError> {
    check(cmd, name)?;
    raw_membarrier(cmd, flags, cpu).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => MembarrierError::NotRegistered,
        _ => MembarrierError::Os(e),
    })
}

/// Registers the process for [`private_expedited`] (process-wide; idempotent).
pub fn register_private_expedited() -> Result<(), MembarrierError> {
    register(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, "REGISTER_PRIVATE_EXPEDITED")
}

/// A full memory barrier on every CPU running a thread of this process.
pub fn private_expedited() -> Result<(), MembarrierError> {
    issue(MEMBARRIER_CMD_PRIVATE_EXPEDITED, "PRIVATE_EXPEDITED", 0, 0)
}

/// Registers the process for [`private_expedited_rseq`] (process-wide; idempotent).
pub fn register_private_expedited_rseq() -> Result<(), MembarrierError> {
    register(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, "REGISTER_PRIVATE_EXPEDITED_RSEQ")
}

/// Restarts (aborts) any rseq critical section that a thread of this process is running,
/// on every CPU, or only on `cpu` when given (`MEMBARRIER_CMD_FLAG_CPU`). When it returns,
/// no critical section that started before the call is still running. A CPU that is not
/// online has nothing to restart, and the kernel answers success; an id above `i32::MAX`
/// gives `Os(EINVAL)`.
pub fn private_expedited_rseq(cpu: Option<u32>) -> Result<(), MembarrierError> {
    let (flags, cpu_arg) = match cpu {
        Some(c) => {
            let c = libc::c_int::try_from(c)
                .map_err(|_| MembarrierError::Os(io::Error::from_raw_os_error(libc::EINVAL)))?;
            (MEMBARRIER_CMD_FLAG_CPU, c)
        }
        None => (0, 0),
    };
    issue(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, "PRIVATE_EXPEDITED_RSEQ", flags, cpu_arg)
}

/// Whether this process registered for `PRIVATE_EXPEDITED_RSEQ` (0 unknown, 1 yes). A forked
/// child inherits 1 without the kernel's registration: [`fence_rseq`] notices the
/// `NotRegistered` answer and registers again.
static RSEQ_REGISTERED: AtomicU64 = AtomicU64::new(0);

/// The remote-CPU fence: `membarrier(PRIVATE_EXPEDITED_RSEQ)` on `cpu` (or every CPU),
/// registering the process first when needed. When it returns `Ok`, every critical section
/// of this process that was running on the target CPUs has been restarted or has finished,
/// and those CPUs executed a full memory barrier. `Unsupported` on kernels before 5.10;
/// then nobody can own another CPU's rseq-written data.
pub fn fence_rseq(cpu: Option<u32>) -> Result<(), MembarrierError> {
    if RSEQ_REGISTERED.load(Ordering::Acquire) == 0 {
        register_private_expedited_rseq()?;
        RSEQ_REGISTERED.store(1, Ordering::Release);
    }
    match private_expedited_rseq(cpu) {
        Err(MembarrierError::NotRegistered) => {
            register_private_expedited_rseq()?;
            private_expedited_rseq(cpu)
        }
        r => r,
    }
}

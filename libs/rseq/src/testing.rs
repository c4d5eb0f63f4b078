//! Helpers for tests and the harness: running a process without rseq.

use std::io;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Installs a seccomp filter on the calling thread that makes `rseq(2)` fail with `ENOSYS`
/// and allows everything else. It is inherited by children and kept across `execve`, so
/// call it in a `pre_exec` hook: libc in the new program then sees no rseq either.
/// Only makes system calls, so it is safe between `fork` and `exec`.
pub fn deny_rseq_with_enosys() -> io::Result<()> {
    let ld_w_abs = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let jeq_k = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let ret_k = (libc::BPF_RET | libc::BPF_K) as u16;
    let filter = [
        stmt(ld_w_abs, 4),                        // seccomp_data.arch
        jump(jeq_k, AUDIT_ARCH, 0, 3),            // other ABI: allow
        stmt(ld_w_abs, 0),                        // seccomp_data.nr
        jump(jeq_k, libc::SYS_rseq as u32, 0, 1), // not rseq: allow
        stmt(ret_k, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(ret_k, SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut _ };
    // SAFETY: plain prctl calls; `prog` outlives them and the kernel copies the filter.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

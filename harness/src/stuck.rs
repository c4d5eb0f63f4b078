//! Where the process's threads are, for a wait that is taking too long: each thread's
//! scheduler state, current system call and kernel wait channel, and the kernel stack of the
//! blocked ones (readable as root), from `/proc/self/task`.

use std::fmt::Write as _;
use std::fs;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `f`; if it has not returned after `after`, prints `what` and the threads' states to
/// stderr (once), so that a stalled quiesced check names what it is waiting for.
pub fn watch<T>(what: &str, after: Duration, f: impl FnOnce() -> T) -> T {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let watcher =
            std::thread::Builder::new().name("harness-watch".into()).stack_size(64 << 10).spawn_scoped(s, move || {
                if rx.recv_timeout(after) == Err(mpsc::RecvTimeoutError::Timeout) {
                    eprintln!("harness: {what}: still waiting after {} s; threads:\n{}", after.as_secs(), threads());
                    eprint!("{}", user_ips(3, Duration::from_millis(300)));
                }
            });
        let out = f();
        drop(tx);
        if let Ok(h) = watcher {
            let _ = h.join();
        }
        out
    })
}

/// One line per thread (`tid comm state syscall wchan`), plus the kernel stack of threads in
/// uninterruptible sleep or inside a system call other than a futex wait.
pub fn threads() -> String {
    let mut out = String::new();
    let mut tids = crate::cpu::task_ids();
    tids.sort_unstable();
    // Idle workers and lock waiters sleep in futex waits: not interesting.
    let futex = libc::SYS_futex.to_string();
    for tid in tids {
        let base = format!("/proc/self/task/{tid}");
        let read = |f: &str| fs::read_to_string(format!("{base}/{f}")).unwrap_or_default();
        let comm = read("comm");
        let status = read("status");
        let state = status.lines().find_map(|l| l.strip_prefix("State:")).unwrap_or("?").trim().to_string();
        let syscall = read("syscall");
        let nr = syscall.split_whitespace().next().unwrap_or("?").to_string();
        let wchan = read("wchan");
        let _ = writeln!(out, "  {tid} {} state={state} syscall={nr} wchan={}", comm.trim(), wchan.trim());
        let interesting = state.starts_with('D') || (nr != futex && nr != "running" && nr != "?");
        if interesting {
            for line in read("stack").lines().take(8) {
                let _ = writeln!(out, "      {line}");
            }
        }
    }
    out
}

const IP_SLOTS: usize = 256;
static IP_NEXT: AtomicUsize = AtomicUsize::new(0);
static IP_TID: [AtomicI32; IP_SLOTS] = [const { AtomicI32::new(0) }; IP_SLOTS];
static IP_AT: [AtomicU64; IP_SLOTS] = [const { AtomicU64::new(0) }; IP_SLOTS];

/// The signal that asks a thread where it is; the run's storms use SIGRTMIN.
fn ip_signal() -> libc::c_int {
    libc::SIGRTMAX() - 1
}

/// Records the interrupted user-space instruction pointer of the calling thread.
extern "C" fn on_ip_signal(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let ip = interrupted_ip(ctx);
    let i = IP_NEXT.fetch_add(1, Ordering::Relaxed);
    if i < IP_SLOTS {
        IP_AT[i].store(ip, Ordering::Relaxed);
        // Async-signal-safe: a raw system call and atomic stores.
        IP_TID[i].store(crate::cpu::gettid(), Ordering::Release);
    }
}

#[cfg(target_arch = "x86_64")]
fn interrupted_ip(ctx: *mut libc::c_void) -> u64 {
    // SAFETY: the kernel passes a valid ucontext_t to an SA_SIGINFO handler.
    unsafe { (*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RIP as usize] as u64 }
}

#[cfg(target_arch = "aarch64")]
fn interrupted_ip(ctx: *mut libc::c_void) -> u64 {
    // SAFETY: the kernel passes a valid ucontext_t to an SA_SIGINFO handler.
    unsafe { (*(ctx as *const libc::ucontext_t)).uc_mcontext.pc }
}

/// Where the running threads are in user space: `rounds` samples, `gap` apart, of every
/// thread in state R, each IP given as `file+offset` (resolve it with `addr2line -e FILE`
/// against the unstripped build) — a thread whose IP stays in one place is spinning there.
pub fn user_ips(rounds: usize, gap: Duration) -> String {
    // SAFETY: a zeroed sigaction with a valid SA_SIGINFO handler and an empty mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_ip_signal as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(ip_signal(), &sa, std::ptr::null_mut());
    }
    let maps = fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let pid = std::process::id() as libc::pid_t;
    let me = crate::cpu::gettid();
    let mut out = String::new();
    for round in 0..rounds {
        IP_NEXT.store(0, Ordering::SeqCst);
        for t in IP_TID.iter() {
            t.store(0, Ordering::Relaxed);
        }
        let running: Vec<i32> = crate::cpu::task_ids()
            .into_iter()
            .filter(|&t| t != me)
            .filter(|t| {
                fs::read_to_string(format!("/proc/self/task/{t}/stat"))
                    .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('R')))
            })
            .collect();
        for &t in &running {
            // SAFETY: a signal with an installed handler to a thread of this process.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, t, ip_signal()) };
        }
        std::thread::sleep(gap);
        let n = IP_NEXT.load(Ordering::SeqCst).min(IP_SLOTS);
        let _ = write!(out, "  user IPs, sample {} of {rounds} ({} running threads):", round + 1, running.len());
        for i in 0..n {
            let tid = IP_TID[i].load(Ordering::Acquire);
            if tid != 0 {
                let _ = write!(out, " {tid}@{}", locate(&maps, IP_AT[i].load(Ordering::Relaxed)));
            }
        }
        out.push('\n');
    }
    out
}

/// `file+0xoffset` of `ip` according to `maps` (the text of /proc/self/maps).
fn locate(maps: &str, ip: u64) -> String {
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(_perms), Some(off)) = (f.next(), f.next(), f.next()) else { continue };
        let Some((a, b)) = range.split_once('-') else { continue };
        let (Ok(a), Ok(b), Ok(off)) =
            (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16), u64::from_str_radix(off, 16))
        else {
            continue;
        };
        if (a..b).contains(&ip) {
            let path = f.nth(2).unwrap_or("[anon]");
            let name = path.rsplit('/').next().unwrap_or(path);
            return format!("{name}+{:#x}", ip - a + off);
        }
    }
    format!("{ip:#x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_calling_thread() {
        let me = crate::cpu::gettid();
        let text = threads();
        assert!(text.lines().any(|l| l.trim_start().starts_with(&format!("{me} "))), "{text}");
    }

    #[test]
    fn a_spinning_thread_is_found_in_this_binary() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let spinner = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s2.load(Ordering::Relaxed) {
                n = std::hint::black_box(n.wrapping_add(1));
            }
            crate::cpu::gettid()
        });
        std::thread::sleep(Duration::from_millis(50));
        let text = user_ips(2, Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        let tid = spinner.join().unwrap();
        let exe = std::env::current_exe().unwrap();
        let exe_name = exe.file_name().unwrap().to_str().unwrap().to_string();
        assert!(text.contains(&format!(" {tid}@{exe_name}+0x")), "{text}");
    }

    #[test]
    fn an_ip_is_named_by_file_and_offset() {
        let maps = "55d0a0000000-55d0a0100000 r-xp 00002000 fd:01 1234 /payload/bin/harness\n\
                    7f0000000000-7f0000001000 rw-p 00000000 00:00 0\n";
        assert_eq!(locate(maps, 0x55d0_a000_0010), "harness+0x2010");
        assert_eq!(locate(maps, 0x7f00_0000_0008), "[anon]+0x8");
        assert_eq!(locate(maps, 0x10), "0x10");
    }

    #[test]
    fn a_quick_wait_returns_its_value_without_a_report() {
        assert_eq!(watch("test", Duration::from_secs(5), || 7), 7);
    }
}

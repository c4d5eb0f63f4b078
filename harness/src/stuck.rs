//! Where the process's threads are, for a wait that is taking too long: each thread's
//! scheduler state, current system call and kernel wait channel, and the kernel stack of the
//! blocked ones (readable as root), from `/proc/self/task`.

use std::fmt::Write as _;
use std::fs;
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
    let Ok(dir) = fs::read_dir("/proc/self/task") else { return "  (no /proc/self/task)".into() };
    let mut tids: Vec<u32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    tids.sort_unstable();
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
        // Idle workers and lock waiters sleep in futex waits: not interesting.
        let futex = libc::SYS_futex.to_string();
        let interesting = state.starts_with('D') || (nr != futex && nr != "running" && nr != "?");
        if interesting {
            for line in read("stack").lines().take(8) {
                let _ = writeln!(out, "      {line}");
            }
        }
    }
    out
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
    fn a_quick_wait_returns_its_value_without_a_report() {
        assert_eq!(watch("test", Duration::from_secs(5), || 7), 7);
    }
}

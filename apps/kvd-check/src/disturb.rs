//! Disturbance of a running server: CPU hotplug (cpu1 offline and back), affinity changes of
//! every server thread, and a move into a child cgroup-v1 cpuset whose CPUs change. Everything
//! changed is restored when the driver stops, on panic (the panic hook) and on SIGINT, SIGTERM
//! and SIGHUP (an async-signal-safe handler). Steps that need root or a writable file are
//! skipped and counted as such.

use crate::rng::Rng;
use std::ffi::CString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

const CPU1_ONLINE: &str = "/sys/devices/system/cpu/cpu1/online";
const CPUSET_ROOT: &str = "/sys/fs/cgroup/cpuset";

/// What must be undone, prepared ahead so that the signal handler only makes system calls.
struct Restore {
    online: CString,
    /// Set while cpu1 is offline because of us.
    cpu_offline: AtomicBool,
    /// The child cpuset directory, and the parent's `cgroup.procs` with the server's pid.
    cpuset_dir: Option<CString>,
    parent_procs: Option<CString>,
    pid: Vec<u8>,
}

static RESTORE: AtomicPtr<Restore> = AtomicPtr::new(std::ptr::null_mut());

fn write_raw(path: &CString, data: &[u8]) -> bool {
    // SAFETY: open/write/close on a NUL-terminated path with a valid buffer; async-signal-safe.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        libc::close(fd);
        n == data.len() as isize
    }
}

/// Undoes everything recorded in `RESTORE`. Async-signal-safe: atomics and system calls only.
fn restore_now() {
    let p = RESTORE.load(Ordering::Acquire);
    if p.is_null() {
        return;
    }
    // SAFETY: a published Restore is leaked (never freed), so the pointer stays valid.
    let r = unsafe { &*p };
    if r.cpu_offline.swap(false, Ordering::AcqRel) {
        write_raw(&r.online, b"1");
    }
    if let (Some(dir), Some(procs)) = (&r.cpuset_dir, &r.parent_procs) {
        write_raw(procs, &r.pid);
        // SAFETY: rmdir on a NUL-terminated path.
        unsafe {
            libc::rmdir(dir.as_ptr());
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    restore_now();
    // SAFETY: back to the default action and re-raise, so that the process ends as the signal says.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

fn install_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_now();
            prev(info);
        }));
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler is async-signal-safe (see restore_now).
            unsafe {
                libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
            }
        }
    });
}

/// Counts of disturbance steps done and skipped.
#[derive(Debug, Default, Clone)]
pub struct Log {
    pub hotplug: u64,
    pub affinity: u64,
    pub cpuset: u64,
    pub skipped: Vec<String>,
}

impl Log {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} cpu1 offline/online cycles, {} affinity changes, {} cpuset changes",
            self.hotplug, self.affinity, self.cpuset
        );
        if !self.skipped.is_empty() {
            s.push_str(&format!("; skipped: {}", self.skipped.join("; ")));
        }
        s
    }
}

/// A running disturbance thread.
pub struct Disturber {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Log>>,
}

fn tasks(pid: u32) -> Vec<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn set_affinity(tid: i32, cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET stay within it; the syscall reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn online_cpus() -> Vec<usize> {
    let s = fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_else(|_| "0".into());
    let mut v = Vec::new();
    for part in s.trim().split(',') {
        let mut it = part.split('-');
        let a: usize = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        let b: usize = it.next().and_then(|x| x.parse().ok()).unwrap_or(a);
        v.extend(a..=b);
    }
    v
}

fn writable(p: &str) -> bool {
    let c = CString::new(p).expect("path");
    // SAFETY: access(2) on a NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// The server's current cpuset path (relative to the cpuset root), from /proc/PID/cpuset.
fn cpuset_of(pid: u32) -> Option<PathBuf> {
    let s = fs::read_to_string(format!("/proc/{pid}/cpuset")).ok()?;
    Some(PathBuf::from(CPUSET_ROOT).join(s.trim().trim_start_matches('/')))
}

/// Sets up the child cpuset and moves the server into it; None (with the reason) when it cannot.
fn make_cpuset(pid: u32) -> Result<(PathBuf, PathBuf), String> {
    if !Path::new(CPUSET_ROOT).join("cpuset.cpus").exists() {
        return Err(format!("no cgroup v1 cpuset at {CPUSET_ROOT}"));
    }
    let parent = cpuset_of(pid).ok_or("cannot read /proc/PID/cpuset")?;
    let dir = parent.join(format!("kvd-check-{}", std::process::id()));
    fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let copy = |f: &str| -> Result<(), String> {
        let v = fs::read_to_string(parent.join(f)).map_err(|e| format!("{f}: {e}"))?;
        fs::write(dir.join(f), v.trim()).map_err(|e| format!("{f}: {e}"))
    };
    if let Err(e) = copy("cpuset.cpus").and_then(|_| copy("cpuset.mems")) {
        let _ = fs::remove_dir(&dir);
        return Err(e);
    }
    Ok((dir, parent))
}

impl Disturber {
    /// Starts disturbing server `pid`; `seed` picks the order and timing of the steps.
    pub fn start(pid: u32, seed: u64) -> Disturber {
        install_handlers();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let handle = std::thread::spawn(move || disturb(pid, seed, &s2));
        Disturber { stop, handle: Some(handle) }
    }

    /// Stops, restores everything, and returns what was done.
    pub fn finish(mut self) -> Log {
        self.stop.store(true, Ordering::Relaxed);
        let log = self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default();
        restore_now();
        log
    }
}

impl Drop for Disturber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        restore_now();
    }
}

fn disturb(pid: u32, seed: u64, stop: &AtomicBool) -> Log {
    let mut log = Log::default();
    let mut rng = Rng::new(seed ^ 0xd157);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let hotplug = root && writable(CPU1_ONLINE);
    if !hotplug {
        log.skipped.push(format!("hotplug ({CPU1_ONLINE} not writable{})", if root { "" } else { ", not root" }));
    }
    let cpuset = if root {
        match make_cpuset(pid) {
            Ok(x) => Some(x),
            Err(e) => {
                log.skipped.push(format!("cpuset ({e})"));
                None
            }
        }
    } else {
        log.skipped.push("cpuset (not root)".into());
        None
    };
    let r = Box::new(Restore {
        online: CString::new(CPU1_ONLINE).expect("path"),
        cpu_offline: AtomicBool::new(false),
        cpuset_dir: cpuset.as_ref().map(|(d, _)| CString::new(d.to_str().expect("utf-8 path")).expect("path")),
        parent_procs: cpuset
            .as_ref()
            .map(|(_, p)| CString::new(p.join("cgroup.procs").to_str().expect("utf-8 path")).expect("path")),
        pid: pid.to_string().into_bytes(),
    });
    // Published before anything is changed; leaked so that the signal handler may use it.
    RESTORE.store(Box::into_raw(r), Ordering::Release);
    if let Some((dir, _)) = &cpuset {
        if fs::write(dir.join("cgroup.procs"), pid.to_string()).is_err() {
            log.skipped.push("cpuset (moving the server failed)".into());
        }
    }
    let mut affinity_err = false;
    // The kinds of step take turns (from a seeded start), so that even a short run sees each.
    let mut turn = rng.below(3);
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        match turn % 3 {
            0 if hotplug => {
                let p = RESTORE.load(Ordering::Acquire);
                // SAFETY: published above, never freed.
                let r = unsafe { &*p };
                r.cpu_offline.store(true, Ordering::Release);
                if write_raw(&r.online, b"0") {
                    std::thread::sleep(Duration::from_millis(30 + rng.below(120)));
                    if r.cpu_offline.swap(false, Ordering::AcqRel) && !write_raw(&r.online, b"1") {
                        log.skipped.push("cpu1 did not come back online at once".into());
                        r.cpu_offline.store(true, Ordering::Release);
                    }
                    log.hotplug += 1;
                } else {
                    r.cpu_offline.store(false, Ordering::Release);
                }
            }
            1 => {
                let on = online_cpus();
                let choice: Vec<usize> = match rng.below(3) {
                    0 => vec![on[0]],
                    1 => vec![*on.last().unwrap_or(&0)],
                    _ => on.clone(),
                };
                for t in tasks(pid) {
                    match set_affinity(t, &choice) {
                        Ok(()) => log.affinity += 1,
                        // ESRCH: the thread exited; EINVAL: the mask is outside the server's
                        // cpuset at the moment (the kernel refuses it, as it should).
                        Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH) | Some(libc::EINVAL)) => {}
                        Err(e) => {
                            if !affinity_err {
                                log.skipped.push(format!("affinity of thread {t}: {e}"));
                                affinity_err = true;
                            }
                        }
                    }
                }
            }
            _ => {
                if let Some((dir, _)) = &cpuset {
                    let on = online_cpus();
                    let cpus = match rng.below(3) {
                        0 => on[0].to_string(),
                        1 => on.last().unwrap_or(&0).to_string(),
                        _ => on.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
                    };
                    if fs::write(dir.join("cpuset.cpus"), &cpus).is_ok() {
                        log.cpuset += 1;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10 + rng.below(40)));
    }
    // Leave the server's threads free to run anywhere again.
    let on = online_cpus();
    for t in tasks(pid) {
        let _ = set_affinity(t, &on);
    }
    log
}

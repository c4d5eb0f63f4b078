//! CPUs: real hotplug through sysfs (always restored), thread affinity, the cpuset cgroup.
//!
//! Every CPU this process takes offline is marked in a static bitmap *before* the write.
//! [`restore_all`] (normal code, the [`HotplugGuard`], the panic hook) and
//! [`restore_all_signal_safe`] (the SIGINT/SIGTERM handler and fatal-signal handlers) write
//! "1" back to the online file of every marked CPU. The supervisor process checks once more
//! after the run process has gone, whatever killed it.

use std::ffi::{c_char, CString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// CPUs whose hotplug state can be tracked (and restored).
pub const MAX_TRACKED_CPUS: usize = 4096;

static CHANGED: [AtomicU64; MAX_TRACKED_CPUS / 64] = [const { AtomicU64::new(0) }; MAX_TRACKED_CPUS / 64];
/// NUL-terminated sysfs CPU directory (leaked), for the signal handlers.
static ROOT: AtomicPtr<c_char> = AtomicPtr::new(std::ptr::null_mut());
static ROOT_LEN: AtomicUsize = AtomicUsize::new(0);

/// Set by SIGINT/SIGTERM: the run stops early.
pub static STOP: AtomicBool = AtomicBool::new(false);
static SIGNALS_SEEN: AtomicUsize = AtomicUsize::new(0);

/// The sysfs directory of CPUs: `/sys/devices/system/cpu`, or `$RSEQ_HARNESS_SYSFS_CPU`
/// (tests point it at a fake tree).
pub fn sysfs_root() -> PathBuf {
    std::env::var_os("RSEQ_HARNESS_SYSFS_CPU").map_or_else(|| PathBuf::from("/sys/devices/system/cpu"), PathBuf::from)
}

fn ensure_root() {
    if !ROOT.load(Ordering::Acquire).is_null() {
        return;
    }
    let root = sysfs_root();
    let c = CString::new(root.as_os_str().as_encoded_bytes()).unwrap_or_else(|_| c"/sys/devices/system/cpu".into());
    let len = c.as_bytes().len();
    let p = c.into_raw();
    if ROOT.compare_exchange(std::ptr::null_mut(), p, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        ROOT_LEN.store(len, Ordering::Release);
    } else {
        // SAFETY: `p` came from `CString::into_raw` just above and was not published.
        drop(unsafe { CString::from_raw(p) });
    }
}

/// Path of `cpuN/online`.
pub fn online_path(cpu: u32) -> PathBuf {
    sysfs_root().join(format!("cpu{cpu}")).join("online")
}

/// Whether `cpu` is online (a CPU without an online file, like cpu0 usually, is).
pub fn is_online(cpu: u32) -> bool {
    match std::fs::read_to_string(online_path(cpu)) {
        Ok(s) => s.trim() != "0",
        Err(_) => true,
    }
}

/// The CPUs online now, from `online` of the sysfs root (falls back to scanning `cpuN/online`).
pub fn online_cpus() -> Vec<u32> {
    if let Ok(s) = std::fs::read_to_string(sysfs_root().join("online")) {
        if let Ok(v) = rseq::topology::parse_cpu_list(&s) {
            return v;
        }
    }
    rseq::topology::possible_cpus().iter().copied().filter(|&c| is_online(c)).collect()
}

/// Why real hotplug cannot run here, or `None` when it can: some CPU other than cpu0 has an
/// online file that this process may write.
pub fn hotplug_unavailable_reason() -> Option<String> {
    let cands = hotplug_candidates();
    if cands.is_empty() {
        return Some("skipped: no CPU other than cpu0 has a writable online file (not root / not writable)".into());
    }
    None
}

/// CPUs other than cpu0 whose online file exists and is writable by this process.
pub fn hotplug_candidates() -> Vec<u32> {
    let mut out = Vec::new();
    for &cpu in rseq::topology::possible_cpus() {
        if cpu == 0 || cpu as usize >= MAX_TRACKED_CPUS {
            continue;
        }
        let p = online_path(cpu);
        let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else { continue };
        // SAFETY: NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0 {
            out.push(cpu);
        }
    }
    out
}

fn mark(cpu: u32, changed: bool) {
    let (w, b) = (cpu as usize / 64, cpu as usize % 64);
    if w < CHANGED.len() {
        if changed {
            CHANGED[w].fetch_or(1 << b, Ordering::SeqCst);
        } else {
            CHANGED[w].fetch_and(!(1 << b), Ordering::SeqCst);
        }
    }
}

/// CPUs this process took offline and has not brought back.
pub fn changed_cpus() -> Vec<u32> {
    let mut out = Vec::new();
    for (w, word) in CHANGED.iter().enumerate() {
        let mut bits = word.load(Ordering::SeqCst);
        while bits != 0 {
            let b = bits.trailing_zeros();
            out.push((w * 64) as u32 + b);
            bits &= bits - 1;
        }
    }
    out
}

/// Offlines (`false`) or onlines (`true`) `cpu` through sysfs. An offline is recorded for
/// restoring before the write; a successful online clears it. Refuses cpu0.
pub fn set_online(cpu: u32, on: bool) -> io::Result<()> {
    if cpu == 0 && !on {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "cpu0 is never taken offline"));
    }
    if cpu as usize >= MAX_TRACKED_CPUS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "CPU id above the tracked range"));
    }
    ensure_root();
    if !on {
        mark(cpu, true);
    }
    let r = std::fs::write(online_path(cpu), if on { "1" } else { "0" });
    match (&r, on) {
        (Ok(()), true) => mark(cpu, false),
        // The offline did not happen: nothing to restore unless it is offline anyway.
        (Err(_), false) if is_online(cpu) => mark(cpu, false),
        _ => {}
    }
    r
}

/// Brings back every CPU this process took offline. Returns what failed.
pub fn restore_all() -> Vec<(u32, io::Error)> {
    let mut failed = Vec::new();
    for cpu in changed_cpus() {
        if let Err(e) = set_online(cpu, true) {
            // Already online counts as restored.
            if is_online(cpu) {
                mark(cpu, false);
            } else {
                failed.push((cpu, e));
            }
        }
    }
    failed
}

/// [`restore_all`] for signal handlers: no allocation, no locks, only open/write/close.
pub fn restore_all_signal_safe() {
    let root = ROOT.load(Ordering::Acquire);
    let root_len = ROOT_LEN.load(Ordering::Acquire);
    if root.is_null() || root_len == 0 || root_len > 200 {
        return;
    }
    for (w, word) in CHANGED.iter().enumerate() {
        let mut bits = word.load(Ordering::SeqCst);
        while bits != 0 {
            let b = bits.trailing_zeros();
            bits &= bits - 1;
            let cpu = (w * 64) as u32 + b;
            let mut buf = [0u8; 256];
            // SAFETY: ROOT points at `root_len` bytes plus a NUL, leaked for the process's life.
            let rootb = unsafe { std::slice::from_raw_parts(root.cast::<u8>(), root_len) };
            let mut n = 0;
            for part in [rootb, b"/cpu"] {
                buf[n..n + part.len()].copy_from_slice(part);
                n += part.len();
            }
            let mut digits = [0u8; 10];
            let mut d = 0;
            let mut v = cpu;
            loop {
                digits[d] = b'0' + (v % 10) as u8;
                d += 1;
                v /= 10;
                if v == 0 {
                    break;
                }
            }
            while d > 0 {
                d -= 1;
                buf[n] = digits[d];
                n += 1;
            }
            let tail = b"/online\0";
            buf[n..n + tail.len()].copy_from_slice(tail);
            // SAFETY: `buf` holds a NUL-terminated path; open/write/close are async-signal-safe.
            unsafe {
                let fd = libc::open(buf.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    if libc::write(fd, b"1".as_ptr().cast(), 1) == 1 {
                        word.fetch_and(!(1u64 << b), Ordering::SeqCst);
                    }
                    libc::close(fd);
                }
            }
        }
    }
}

/// Brings every changed CPU back when dropped.
pub struct HotplugGuard(());

impl HotplugGuard {
    /// A guard for this process's hotplug changes (prepares the signal-safe restore path).
    pub fn new() -> HotplugGuard {
        ensure_root();
        HotplugGuard(())
    }
}

impl Drop for HotplugGuard {
    fn drop(&mut self) {
        for (cpu, e) in restore_all() {
            eprintln!("harness: could not bring cpu{cpu} back online: {e}");
        }
    }
}

extern "C" fn on_stop_signal(sig: libc::c_int) {
    restore_all_signal_safe();
    if SIGNALS_SEEN.fetch_add(1, Ordering::SeqCst) == 0 {
        STOP.store(true, Ordering::SeqCst);
    } else {
        // Second signal: leave now, with the default action of the signal.
        // SAFETY: signal and raise are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

extern "C" fn on_fatal_signal(_sig: libc::c_int) {
    // SA_RESETHAND restored the default action: returning re-runs the faulting instruction
    // (or abort() raises again), which then kills the process as it would have.
    restore_all_signal_safe();
}

fn install(sig: libc::c_int, handler: extern "C" fn(libc::c_int), flags: libc::c_int) {
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask is a valid argument.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// SIGINT/SIGTERM/SIGHUP/SIGQUIT bring CPUs back and request a stop (a second one exits);
/// fatal signals bring CPUs back before the process dies; a panic brings them back too.
pub fn install_restore_handlers() {
    ensure_root();
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        install(sig, on_stop_signal, libc::SA_RESTART);
    }
    for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGABRT] {
        install(sig, on_fatal_signal, libc::SA_RESETHAND | libc::SA_NODEFER);
    }
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_all_signal_safe();
        prev(info);
    }));
}

/// Whether SIGINT/SIGTERM asked the run to stop.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// The thread ids of this process.
pub fn task_ids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Sets the calling thread's nice value (Linux keeps one per thread). Threads created
/// afterwards by this thread inherit it.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: setpriority on our own thread id; no memory is passed.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, gettid() as libc::id_t, nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `sched_setaffinity(tid, cpus)`.
pub fn set_affinity(tid: i32, cpus: &[u32]) -> io::Result<()> {
    let max = cpus.iter().copied().max().ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let words = (rseq::topology::nr_possible_cpus().max(max as usize + 1)).div_ceil(64).max(16);
    let mut mask = vec![0u64; words];
    for &c in cpus {
        mask[c as usize / 64] |= 1 << (c % 64);
    }
    // SAFETY: `mask` is readable for the size passed; cpu_set_t is only a bit array.
    let r = unsafe { libc::sched_setaffinity(tid, words * 8, mask.as_ptr().cast()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Which cgroup hierarchy holds the cpuset controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: a `cpuset` hierarchy of its own; threads move one by one through `tasks`.
    V1,
    /// cgroup v2: the unified hierarchy; the whole process moves through `cgroup.procs`.
    V2,
}

/// The cpuset cgroup of a run, `rseq-harness-<pid>`: on v1 created next to the process's
/// cpuset, on v2 directly under the root of the unified hierarchy (the only place where any
/// process may sit next to cgroups with controllers enabled). The process moves in; `Drop`
/// moves it back to where it was and removes the cgroup.
pub struct Cpuset {
    dir: PathBuf,
    /// Where the process was, and goes back to.
    home: PathBuf,
    /// Which hierarchy.
    pub hierarchy: Hierarchy,
    /// v2: the cpuset controller was enabled in the root's `cgroup.subtree_control` by us
    /// (disabled again by `Drop`, when nothing else uses it).
    enabled_controller: bool,
    /// The CPUs the cgroup started with (the parent's).
    pub parent_cpus: String,
}

/// Where a run's cpuset cgroup goes: (hierarchy, directory to create it in, the process's
/// current cgroup). v1 is preferred where a v1 cpuset hierarchy is mounted.
fn cpuset_location() -> Option<(Hierarchy, PathBuf, PathBuf)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    pick_cpuset_location(&mounts, &cgroup, |mount| {
        std::fs::read_to_string(mount.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "cpuset"))
    })
}

/// `cpuset_location` on the text of /proc/self/mounts and /proc/self/cgroup;
/// `v2_has_cpuset` says whether a cgroup2 mount's root offers the cpuset controller.
fn pick_cpuset_location(
    mounts: &str,
    cgroup: &str,
    v2_has_cpuset: impl Fn(&Path) -> bool,
) -> Option<(Hierarchy, PathBuf, PathBuf)> {
    // "ID:controllers:/path" lines; v2's is "0::/path".
    let path_where = |want: &dyn Fn(&str) -> bool| {
        cgroup.lines().find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctl, path) = (it.next()?, it.next()?, it.next()?);
            want(ctl).then(|| path.trim_start_matches('/').to_string())
        })
    };
    let under = |mount: &Path, rel: String| if rel.is_empty() { mount.to_path_buf() } else { mount.join(rel) };
    let fields = || mounts.lines().map(|l| l.split_whitespace().collect::<Vec<&str>>()).filter(|f| f.len() >= 4);
    let v1 = fields().find(|f| f[2] == "cgroup" && f[3].split(',').any(|o| o == "cpuset")).map(|f| PathBuf::from(f[1]));
    if let Some(mount) = v1 {
        let here = under(&mount, path_where(&|ctl: &str| ctl.split(',').any(|c| c == "cpuset"))?);
        return Some((Hierarchy::V1, here.clone(), here));
    }
    let mount = fields().filter(|f| f[2] == "cgroup2").map(|f| PathBuf::from(f[1])).find(|m| v2_has_cpuset(m))?;
    let here = under(&mount, path_where(&|ctl: &str| ctl.is_empty())?);
    Some((Hierarchy::V2, mount, here))
}

/// Name of the cgroup directory of the run process `pid`.
pub fn cpuset_dir_name(pid: u32) -> String {
    format!("rseq-harness-{pid}")
}

impl Cpuset {
    /// Creates `rseq-harness-<pid>` and moves the process in; `Err` says why not
    /// (unavailable, not writable).
    pub fn create() -> Result<Cpuset, String> {
        let (hierarchy, parent, home) = cpuset_location()
            .ok_or("skipped: no cpuset controller (neither a v1 cpuset hierarchy nor cgroup v2 with cpuset)")?;
        let dir = parent.join(cpuset_dir_name(std::process::id()));
        let mut enabled_controller = false;
        let parent_cpus = match hierarchy {
            Hierarchy::V1 => std::fs::read_to_string(parent.join("cpuset.cpus"))
                .map_err(|e| format!("skipped: cannot read {}: {e}", parent.join("cpuset.cpus").display()))?,
            Hierarchy::V2 => {
                let ctl = parent.join("cgroup.subtree_control");
                let on = std::fs::read_to_string(&ctl)
                    .map_err(|e| format!("skipped: cannot read {}: {e}", ctl.display()))?;
                if !on.split_whitespace().any(|c| c == "cpuset") {
                    std::fs::write(&ctl, "+cpuset").map_err(|e| {
                        format!("skipped: cannot enable cpuset in {} ({e}): not root / not writable", ctl.display())
                    })?;
                    enabled_controller = true;
                }
                rseq::topology::format_cpu_list(&online_cpus())
            }
        };
        if let Err(e) = std::fs::create_dir(&dir) {
            if enabled_controller {
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), "-cpuset");
            }
            return Err(format!("skipped: cannot create {} ({e}): not root / not writable", dir.display()));
        }
        let cs = Cpuset { dir, home, hierarchy, enabled_controller, parent_cpus: parent_cpus.trim().to_string() };
        let setup = || -> io::Result<()> {
            if hierarchy == Hierarchy::V1 {
                // v1 starts a cpuset with no memory nodes and no CPUs; v2 inherits both.
                let mems = std::fs::read_to_string(parent.join("cpuset.mems"))?;
                std::fs::write(cs.dir.join("cpuset.mems"), mems.trim())?;
            }
            std::fs::write(cs.dir.join("cpuset.cpus"), &cs.parent_cpus)?;
            Ok(())
        };
        setup().map_err(|e| format!("skipped: cannot configure {}: {e}", cs.dir.display()))?;
        cs.move_all_in().map_err(|e| format!("skipped: cannot move the process into {}: {e}", cs.dir.display()))?;
        Ok(cs)
    }

    /// Moves every thread of the process into the cgroup (new threads follow their creator).
    pub fn move_all_in(&self) -> io::Result<()> {
        move_process(self.hierarchy, &self.dir)
    }

    /// Sets `cpuset.cpus`.
    pub fn set_cpus(&self, cpus: &[u32]) -> io::Result<()> {
        std::fs::write(self.dir.join("cpuset.cpus"), rseq::topology::format_cpu_list(cpus))
    }
}

/// Moves the calling process (v2) or each of its threads (v1) into cgroup `dir`.
fn move_process(hierarchy: Hierarchy, dir: &Path) -> io::Result<()> {
    match hierarchy {
        Hierarchy::V2 => std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()),
        Hierarchy::V1 => {
            let mut last = Ok(());
            for tid in task_ids() {
                // A thread may exit meanwhile (ESRCH): ignore that.
                if let Err(e) = std::fs::write(dir.join("tasks"), tid.to_string()) {
                    if e.raw_os_error() != Some(libc::ESRCH) {
                        last = Err(e);
                    }
                }
            }
            last
        }
    }
}

impl Drop for Cpuset {
    fn drop(&mut self) {
        for _ in 0..20 {
            let _ = move_process(self.hierarchy, &self.home);
            if std::fs::remove_dir(&self.dir).is_ok() {
                if self.enabled_controller {
                    // Refused (EBUSY) when another cgroup has started to use it meanwhile.
                    if let Some(root) = self.dir.parent() {
                        let _ = std::fs::write(root.join("cgroup.subtree_control"), "-cpuset");
                    }
                }
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("harness: could not remove cgroup {}", self.dir.display());
    }
}

/// Removes a run process's leftover cgroup (the supervisor does this after the run process
/// is gone). Returns whether one was removed.
pub fn remove_leftover_cpuset(pid: u32) -> bool {
    let Some((_, parent, _)) = cpuset_location() else { return false };
    let dir = parent.join(cpuset_dir_name(pid));
    dir.exists() && std::fs::remove_dir(&dir).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "tmpfs /sys/fs/cgroup tmpfs rw 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
    const HYBRID_CGROUP: &str = "5:cpu:/user.slice\n3:cpuset:/\n0::/user.slice/session-1.scope\n";
    const V2_MOUNTS: &str = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
    const V2_CGROUP: &str = "0::/user.slice/session-1.scope\n";

    #[test]
    fn cpuset_location_prefers_v1_and_finds_the_process_there() {
        let (h, parent, home) = pick_cpuset_location(HYBRID_MOUNTS, HYBRID_CGROUP, |_| true).unwrap();
        assert_eq!(h, Hierarchy::V1);
        assert_eq!(parent, PathBuf::from("/sys/fs/cgroup/cpuset"));
        assert_eq!(home, parent);
        let nested = "3:cpuset:/jobs/a\n0::/x\n";
        let (_, parent, home) = pick_cpuset_location(HYBRID_MOUNTS, nested, |_| true).unwrap();
        assert_eq!(
            (parent.as_path(), home.as_path()),
            (Path::new("/sys/fs/cgroup/cpuset/jobs/a"), Path::new("/sys/fs/cgroup/cpuset/jobs/a"))
        );
    }

    #[test]
    fn cpuset_location_on_v2_creates_under_the_root_and_returns_home() {
        let (h, parent, home) =
            pick_cpuset_location(V2_MOUNTS, V2_CGROUP, |m| m == Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(h, Hierarchy::V2);
        assert_eq!(parent, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(home, PathBuf::from("/sys/fs/cgroup/user.slice/session-1.scope"));
        let at_root = pick_cpuset_location(V2_MOUNTS, "0::/\n", |_| true).unwrap();
        assert_eq!(at_root.2, PathBuf::from("/sys/fs/cgroup"));
    }

    #[test]
    fn cpuset_location_without_a_cpuset_controller_is_none() {
        // v2 mounted but cpuset bound elsewhere (or compiled out).
        assert_eq!(pick_cpuset_location(V2_MOUNTS, V2_CGROUP, |_| false), None);
        // No cgroup mounted at all.
        assert_eq!(pick_cpuset_location("proc /proc proc rw 0 0\n", V2_CGROUP, |_| true), None);
        // v1 cpuset mounted but the process has no cpuset line.
        assert_eq!(pick_cpuset_location(HYBRID_MOUNTS, "0::/x\n", |_| true), None);
    }

    #[test]
    fn signal_safe_restore_writes_marked_cpus() {
        // A fake sysfs tree (the environment variable is read once per process by ensure_root;
        // this test only runs the signal-safe path against a tree it made).
        let dir = std::env::temp_dir().join(format!("harness-fake-sysfs-{}", std::process::id()));
        for c in 0..3 {
            std::fs::create_dir_all(dir.join(format!("cpu{c}"))).unwrap();
            std::fs::write(dir.join(format!("cpu{c}/online")), "0").unwrap();
        }
        let c = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        let len = c.as_bytes().len();
        let old = ROOT.swap(c.into_raw(), Ordering::AcqRel);
        let old_len = ROOT_LEN.swap(len, Ordering::AcqRel);
        mark(2, true);
        restore_all_signal_safe();
        assert_eq!(std::fs::read_to_string(dir.join("cpu2/online")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("cpu1/online")).unwrap(), "0");
        assert!(!changed_cpus().contains(&2));
        let ours = ROOT.swap(old, Ordering::AcqRel);
        ROOT_LEN.store(old_len, Ordering::Release);
        // SAFETY: `ours` is the pointer installed above.
        drop(unsafe { CString::from_raw(ours) });
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! How the harness uses a library: the [`Participant`] trait that every adapter implements,
//! what a participant reports (thread modes, counts, checks), and opening a `.so` by path.
//! One file per kind of library (`counters.rs`: libpcounters; `alloc.rs`: libpalloc;
//! `rcu.rs`: libprcu; `locks.rs`: libplocks; `plugin.rs`: any plugin of the `rhp_` ABI);
//! `registry.rs` maps a loaded library to its adapter.

pub mod alloc;
pub mod counters;
pub mod locks;
pub mod plugin;
pub mod rcu;
pub mod registry;

pub use registry::open_participant;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use libloading::os::unix::Library;
use serde::{Deserialize, Serialize};

use crate::scenario::{IndexMode, RegMode};

/// How one thread reached an rseq area, as a library reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThreadMode {
    /// libc registered the area.
    LibcOwned,
    /// The library registered libc's reserved area for this thread.
    RegisteredByUs,
    /// Another library had registered it (`EBUSY`).
    RegisteredByPeer,
    /// libc only reserved the area and a library registered it (which one, the library does
    /// not record: libpcounters 0.2 on).
    Registered,
    /// No usable area; `errno` of the registration attempt, 0 when none was made.
    Unavailable {
        /// Error of the attempt.
        errno: i32,
    },
    /// The fallback path was forced.
    Disabled,
    /// The library did not say (raw code).
    Unknown(i64),
}

impl ThreadMode {
    /// A stable name for reports, e.g. `unavailable(ENOSYS)`.
    pub fn name(self) -> String {
        match self {
            ThreadMode::LibcOwned => "libc-owned".into(),
            ThreadMode::RegisteredByUs => "registered-by-us".into(),
            ThreadMode::RegisteredByPeer => "registered-by-peer".into(),
            ThreadMode::Registered => "registered".into(),
            ThreadMode::Unavailable { errno: 0 } => "unavailable".into(),
            ThreadMode::Unavailable { errno } => format!("unavailable({})", errno_name(errno)),
            ThreadMode::Disabled => "disabled".into(),
            ThreadMode::Unknown(c) => format!("unknown({c})"),
        }
    }

    /// Whether critical sections run in this mode.
    pub fn is_fast(self) -> bool {
        matches!(
            self,
            ThreadMode::LibcOwned | ThreadMode::RegisteredByUs | ThreadMode::RegisteredByPeer | ThreadMode::Registered
        )
    }

    /// Whether a library that reports this mode does what the requested registration mode
    /// promises. `lazy`: the library registers libc's reserved area itself; `forced`: its
    /// fallback was forced at some point of the run.
    /// `foreign`: whether a foreign rseq user is expected in the process, or this library
    /// is one.
    pub fn allowed(self, mode: RegMode, lazy: bool, forced: bool, foreign: Foreign) -> bool {
        if self == ThreadMode::Disabled {
            return forced;
        }
        if foreign == Foreign::ThisLibrary {
            // Its own area, or glibc's area registered by someone else, or no rseq at all.
            return match mode {
                RegMode::Libc => self == ThreadMode::LibcOwned,
                RegMode::Reserved => matches!(self, ThreadMode::RegisteredByUs | ThreadMode::RegisteredByPeer),
                RegMode::None => self == ThreadMode::Unavailable { errno: libc::ENOSYS },
            };
        }
        if foreign == Foreign::Expected
            && mode == RegMode::Reserved
            && self == (ThreadMode::Unavailable { errno: libc::EINVAL })
        {
            // The foreign user registered its own area in this thread first.
            return true;
        }
        match mode {
            RegMode::Libc => self == ThreadMode::LibcOwned,
            RegMode::Reserved => {
                if lazy {
                    matches!(self, ThreadMode::RegisteredByUs | ThreadMode::RegisteredByPeer | ThreadMode::Registered)
                } else {
                    // A library that only uses an area libc registered takes its fallback.
                    matches!(
                        self,
                        ThreadMode::RegisteredByUs
                            | ThreadMode::RegisteredByPeer
                            | ThreadMode::Registered
                            | ThreadMode::Unavailable { errno: 0 }
                    )
                }
            }
            RegMode::None => match self {
                ThreadMode::Unavailable { errno } => errno == libc::ENOSYS || (!lazy && errno == 0),
                _ => false,
            },
        }
    }
}

/// Name of an errno value for reports.
pub fn errno_name(e: i32) -> String {
    match e {
        libc::ENOSYS => "ENOSYS".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EPERM => "EPERM".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::EFAULT => "EFAULT".into(),
        other => format!("errno {other}"),
    }
}

/// Counts a library reports about itself (process-wide, since it was loaded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Operations completed.
    pub ops: u64,
    /// Critical sections restarted by the kernel.
    pub aborts: u64,
    /// Operations on the fallback path.
    pub fallback_ops: u64,
    /// Threads for which the library registered libc's reserved area.
    pub registered_by_us: u64,
    /// Threads for which a peer had registered it.
    pub registered_by_peer: u64,
    /// Threads whose registration failed.
    pub registration_failures: u64,
}

impl Counts {
    /// Field-wise sum.
    pub fn add(&mut self, o: &Counts) {
        self.ops += o.ops;
        self.aborts += o.aborts;
        self.fallback_ops += o.fallback_ops;
        self.registered_by_us += o.registered_by_us;
        self.registered_by_peer += o.registered_by_peer;
        self.registration_failures += o.registration_failures;
    }
}

/// What a successful check established.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOk {
    /// Individual facts checked (e.g. one exact sum per counter).
    pub checked: u64,
    /// A short description.
    pub what: String,
}

/// Settings every participant gets at setup.
#[derive(Clone, Debug)]
pub struct SetupConfig {
    /// Per-CPU index the run asks for.
    pub index: IndexMode,
    /// Seed of the run.
    pub seed: u64,
    /// The library's own configuration from the scenario.
    pub extra: String,
}

/// A library as the harness uses it. Implementations are shared by every worker thread.
pub trait Participant: Send + Sync {
    /// Short name for reports.
    fn name(&self) -> &str;
    /// `counters` or `plugin`.
    fn kind(&self) -> &'static str;
    /// One unit of work on the calling thread. `Err` when the unit itself saw an invariant
    /// break (e.g. a private counter with a wrong sum).
    fn work(&self, seed: u64) -> Result<(), String>;
    /// Checks the library's invariants; called only while no `work` of this participant is
    /// running.
    fn check(&self) -> Result<CheckOk, String>;
    /// The library's own counts.
    fn report(&self) -> Counts;
    /// The calling thread's mode, as the library sees it.
    fn thread_mode(&self) -> ThreadMode;
    /// Whether the library registers libc's reserved area itself.
    fn registers_lazily(&self) -> bool;
    /// Forces the library onto its fallback path (`true`) or back; `false` when unsupported.
    fn force_fallback(&self, on: bool) -> bool;
    /// Runs in a forked child (only the forking thread exists): exercise the library and
    /// check it. Called while no `work` of this participant was running at `fork` time when
    /// [`Participant::fork_needs_quiescence`] says so.
    fn fork_child(&self, seed: u64) -> Result<CheckOk, String>;
    /// Whether `fork_child` needs the library quiescent at `fork` time.
    fn fork_needs_quiescence(&self) -> bool;
    /// Called (quiescent) right before an unload: records what must survive or vanish.
    fn before_unload(&self) -> Result<CheckOk, String>;
    /// Called on a fresh load that follows an unload: what a fresh load must look like.
    fn fresh_after_reload(&self) -> Result<CheckOk, String>;
    /// Called (quiescent) before the library is unloaded.
    fn teardown(&self);
    /// The per-CPU index the library actually uses (`cpu_id` / `mm_cid`), when it says:
    /// a library asked for `mm_cid` on a kernel without it falls back to `cpu_id`.
    fn index_used(&self) -> Option<&'static str> {
        None
    }
    /// Whether [`Participant::thread_start`] does anything (checked once per load).
    fn has_thread_start(&self) -> bool {
        false
    }
    /// Called first thing in every thread the harness creates while the library is loaded
    /// (a plugin's optional `rhp_thread_start`).
    fn thread_start(&self) {}
    /// The library registers an rseq area of its own where nobody registered one: it breaks
    /// the coexistence contract on purpose (an older tcmalloc or librseq), so that the others
    /// get `EINVAL` in those threads.
    fn foreign_area(&self) -> bool {
        false
    }
    /// The library must never be unloaded (it is left out of the reload disturbance, and its
    /// handle is never closed).
    fn never_unload(&self) -> bool {
        false
    }
    /// The bytes the library holds, by its own statistics; `None` when it cannot say.
    fn memory(&self) -> Option<Memory> {
        None
    }
}

/// Memory a library holds, as it reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Bytes resident in memory.
    pub resident_bytes: u64,
    /// Address space reserved.
    pub reserved_bytes: u64,
}

/// Whether a library's thread modes are judged with a foreign rseq user in the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Foreign {
    /// No foreign rseq user is expected.
    No,
    /// The run expects one (`--foreign-rseq`): contract-following libraries may find another
    /// area registered (`EINVAL`) under `reserved` and run their fallback there.
    Expected,
    /// This library is the foreign rseq user.
    ThisLibrary,
}

/// `dlopen` flags of a run.
pub fn dlopen_flags(global: bool) -> i32 {
    (if global { libc::RTLD_GLOBAL } else { libc::RTLD_LOCAL }) | libc::RTLD_NOW
}

/// Opens a shared object by path with `flags`, with an error that names the file.
pub fn open_library(path: &Path, flags: i32) -> Result<Library> {
    if !path.exists() {
        return Err(anyhow!(
            "library {} does not exist (build the workspace's libraries with `cargo build --release --workspace`, \
             or pass the right path)",
            path.display()
        ));
    }
    // SAFETY: loading a library runs its initialisers; the libraries under test are the
    // point of the run, and a broken one is reported as a failure of that file.
    unsafe { Library::open(Some(path), flags) }.with_context(|| format!("cannot load library {}", path.display()))
}

/// Whether a file is still mapped into this process (after `dlclose`).
pub fn is_mapped(path: &Path) -> bool {
    let canon: PathBuf = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return false };
    let want = canon.to_string_lossy();
    maps.lines().any(|l| l.ends_with(want.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_modes() {
        use ThreadMode::*;
        assert!(LibcOwned.allowed(RegMode::Libc, true, false, Foreign::No));
        assert!(!RegisteredByUs.allowed(RegMode::Libc, true, false, Foreign::No));
        assert!(!Disabled.allowed(RegMode::Libc, true, false, Foreign::No));
        assert!(Disabled.allowed(RegMode::Libc, true, true, Foreign::No));
        assert!(RegisteredByPeer.allowed(RegMode::Reserved, true, false, Foreign::No));
        assert!(!Unavailable { errno: 0 }.allowed(RegMode::Reserved, true, false, Foreign::No));
        assert!(Unavailable { errno: 0 }.allowed(RegMode::Reserved, false, false, Foreign::No));
        assert!(!Unavailable { errno: libc::EINVAL }.allowed(RegMode::Reserved, false, false, Foreign::No));
        assert!(Unavailable { errno: libc::ENOSYS }.allowed(RegMode::None, true, false, Foreign::No));
        assert!(!Unavailable { errno: 0 }.allowed(RegMode::None, true, false, Foreign::No));
        assert!(!LibcOwned.allowed(RegMode::None, false, false, Foreign::No));
        assert_eq!(Unavailable { errno: libc::ENOSYS }.name(), "unavailable(ENOSYS)");
        // A foreign rseq user: EINVAL is expected of the others under reserved only.
        let e = Foreign::Expected;
        assert!(Unavailable { errno: libc::EINVAL }.allowed(RegMode::Reserved, true, false, e));
        assert!(Unavailable { errno: libc::EINVAL }.allowed(RegMode::Reserved, false, false, e));
        assert!(!Unavailable { errno: libc::EINVAL }.allowed(RegMode::Libc, true, false, e));
        assert!(!Unavailable { errno: libc::EPERM }.allowed(RegMode::Reserved, true, false, e));
        assert!(RegisteredByUs.allowed(RegMode::Reserved, true, false, e));
        let f = Foreign::ThisLibrary;
        assert!(RegisteredByUs.allowed(RegMode::Reserved, false, false, f));
        assert!(RegisteredByPeer.allowed(RegMode::Reserved, false, false, f));
        assert!(!Unavailable { errno: libc::EINVAL }.allowed(RegMode::Reserved, false, false, f));
        assert!(LibcOwned.allowed(RegMode::Libc, false, false, f));
        assert!(Unavailable { errno: libc::ENOSYS }.allowed(RegMode::None, false, false, f));
    }
}

//! Helpers shared by the workspace tests: finding built libraries, loading independent
//! copies of them, and re-running a test in a child process under another rseq setup.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The cargo target directory of the running test (`target/<profile>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>
    exe.parent().and_then(Path::parent).expect("test executable inside target/<profile>/deps").to_path_buf()
}

/// A cdylib of the workspace, e.g. `built_library("rseq-copy", "librseq_copy.so")`, freshly
/// built. `cargo test` compiles a dependency only as an rlib and leaves its `.so` stale or
/// missing, so this runs `cargo build -p PACKAGE` for the test's own profile first.
pub fn built_library(package: &str, file: &str) -> PathBuf {
    let dir = profile_dir();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", package]).current_dir(env!("CARGO_MANIFEST_DIR"));
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => panic!("cannot tell the cargo profile from {}", dir.display()),
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("running cargo to build {package}: {e}"));
    assert!(status.success(), "`cargo build -p {package}` failed ({status})");
    let p = dir.join(file);
    assert!(p.exists(), "{} is missing after building {package}", p.display());
    p
}

/// Copies `lib` to a fresh file `name` in a per-process temporary directory, so that
/// loading it gives an independent copy of the library.
pub fn private_copy(lib: &Path, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rseq-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dst = dir.join(name);
    std::fs::copy(lib, &dst).unwrap_or_else(|e| panic!("copy {} -> {}: {e}", lib.display(), dst.display()));
    dst
}

/// Loads a library with `RTLD_LOCAL | RTLD_NOW`.
pub fn load_local(path: &Path) -> libloading::os::unix::Library {
    // SAFETY: the test libraries run no unsafe initialisers.
    unsafe { libloading::os::unix::Library::open(Some(path), libc::RTLD_LOCAL | libc::RTLD_NOW) }
        .unwrap_or_else(|e| panic!("dlopen {}: {e}", path.display()))
}

/// Whether a file is mapped in this process.
pub fn is_mapped(path: &Path) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let p = path.to_string_lossy();
    maps.lines().any(|l| l.ends_with(p.as_ref()))
}

/// How a child process reaches rseq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// Default: libc registers the area for every thread.
    LibcOwned,
    /// `GLIBC_TUNABLES=glibc.pthread.rseq=0`: libc reserves the area but leaves it unregistered.
    Reserved,
    /// A seccomp filter answers `ENOSYS` to `rseq(2)`, installed before `exec` so that libc
    /// sees it too.
    NoRseq,
}

impl Setup {
    /// Name used in the environment marker.
    pub fn name(self) -> &'static str {
        match self {
            Setup::LibcOwned => "libc",
            Setup::Reserved => "reserved",
            Setup::NoRseq => "none",
        }
    }
}

/// Environment variable that tells a test it runs as the child of [`run_child`].
pub const CHILD_ENV: &str = "RSEQ_TEST_CHILD_SETUP";

/// The setup this process was started with by [`run_child`], if any.
pub fn child_setup() -> Option<Setup> {
    match std::env::var(CHILD_ENV).ok()?.as_str() {
        "libc" => Some(Setup::LibcOwned),
        "reserved" => Some(Setup::Reserved),
        "none" => Some(Setup::NoRseq),
        other => panic!("unknown {CHILD_ENV}={other}"),
    }
}

/// Re-runs the test `test_name` of the current test binary in a child process under
/// `setup`, and panics with the child's output unless it passes.
pub fn run_child(test_name: &str, setup: Setup) -> String {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args([test_name, "--exact", "--ignored", "--nocapture", "--test-threads=1"]);
    cmd.env(CHILD_ENV, setup.name());
    cmd.env_remove("GLIBC_TUNABLES");
    match setup {
        Setup::LibcOwned => {}
        Setup::Reserved => {
            cmd.env("GLIBC_TUNABLES", "glibc.pthread.rseq=0");
        }
        Setup::NoRseq => {
            use std::os::unix::process::CommandExt;
            // SAFETY: the hook only makes system calls (async-signal-safe after fork).
            unsafe {
                cmd.pre_exec(rseq::testing::deny_rseq_with_enosys);
            }
        }
    }
    let out = cmd.output().expect("spawn child test");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child test {test_name} under {setup:?} failed ({}):\n{text}", out.status);
    assert!(text.contains("1 passed"), "child test {test_name} under {setup:?} did not run:\n{text}");
    text
}

/// One independently loaded copy of `librseq_copy.so` and its exported functions.
pub struct RseqCopy {
    /// Where this copy was loaded from.
    pub path: PathBuf,
    mode: unsafe extern "C" fn(*mut i32) -> i32,
    add: unsafe extern "C" fn(u64, i32) -> i32,
    sum: unsafe extern "C" fn() -> u64,
    aborts: unsafe extern "C" fn() -> u64,
    fallback_ops: unsafe extern "C" fn() -> u64,
    feature_size: unsafe extern "C" fn() -> u32,
    cs_clear: unsafe extern "C" fn() -> i32,
    registered_by_us: unsafe extern "C" fn() -> u64,
    unregister: unsafe extern "C" fn() -> i32,
    lib: Option<libloading::os::unix::Library>,
}

impl RseqCopy {
    /// Copies the built library to `name` and loads it with `RTLD_LOCAL`.
    pub fn load(name: &str) -> RseqCopy {
        let path = private_copy(&built_library("rseq-copy", "librseq_copy.so"), name);
        RseqCopy::load_path(&path)
    }

    /// Loads (again) the library at `path`.
    pub fn load_path(path: &Path) -> RseqCopy {
        let lib = load_local(path);
        // SAFETY: the symbols have exactly these C signatures (tests/rseq-copy/src/lib.rs).
        unsafe {
            RseqCopy {
                path: path.to_path_buf(),
                mode: *lib.get(b"rseqcopy_mode").unwrap(),
                add: *lib.get(b"rseqcopy_add").unwrap(),
                sum: *lib.get(b"rseqcopy_sum").unwrap(),
                aborts: *lib.get(b"rseqcopy_aborts").unwrap(),
                fallback_ops: *lib.get(b"rseqcopy_fallback_ops").unwrap(),
                feature_size: *lib.get(b"rseqcopy_feature_size").unwrap(),
                cs_clear: *lib.get(b"rseqcopy_rseq_cs_is_clear").unwrap(),
                registered_by_us: *lib.get(b"rseqcopy_registered_by_us").unwrap(),
                unregister: *lib.get(b"rseqcopy_unregister").unwrap(),
                lib: Some(lib),
            }
        }
    }

    /// The calling thread's mode code (see `rseq_copy::MODE_*`) and registration errno.
    pub fn mode(&self) -> (i32, i32) {
        let mut e = 0;
        // SAFETY: valid out pointer.
        let m = unsafe { (self.mode)(&mut e) };
        (m, e)
    }

    /// Adds `n`; true when the rseq path was taken.
    pub fn add(&self, n: u64, mm_cid: bool) -> bool {
        // SAFETY: plain C call.
        unsafe { (self.add)(n, mm_cid as i32) == 0 }
    }

    /// Exact sum of this copy's counter.
    pub fn sum(&self) -> u64 {
        // SAFETY: plain C call.
        unsafe { (self.sum)() }
    }

    /// This copy's abort count.
    pub fn aborts(&self) -> u64 {
        // SAFETY: plain C call.
        unsafe { (self.aborts)() }
    }

    /// This copy's fallback operation count.
    pub fn fallback_ops(&self) -> u64 {
        // SAFETY: plain C call.
        unsafe { (self.fallback_ops)() }
    }

    /// The feature size this copy uses.
    pub fn feature_size(&self) -> u32 {
        // SAFETY: plain C call.
        unsafe { (self.feature_size)() }
    }

    /// Whether the calling thread's `rseq_cs` is clear.
    pub fn rseq_cs_is_clear(&self) -> bool {
        // SAFETY: plain C call.
        unsafe { (self.cs_clear)() == 1 }
    }

    /// Threads for which this copy registered libc's reserved area (process-wide).
    pub fn registered_by_us(&self) -> u64 {
        // SAFETY: plain C call.
        unsafe { (self.registered_by_us)() }
    }

    /// Unregisters the calling thread's rseq area; 0 or the errno.
    pub fn unregister(&self) -> i32 {
        // SAFETY: plain C call.
        unsafe { (self.unregister)() }
    }

    /// Unloads the library (`dlclose`); the function pointers must not be used afterwards.
    pub fn unload(mut self) {
        if let Some(lib) = self.lib.take() {
            lib.close().unwrap_or_else(|e| panic!("dlclose {}: {e}", self.path.display()));
        }
    }
}

//! Helpers of the harness tests: the built libraries, the C plugins (compiled here with the
//! system C compiler, outside the Rust build), and running the harness binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde_json::Value;

/// The harness binary under test.
pub fn harness() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_harness"))
}

/// Scratch space of the tests (inside the target directory).
pub fn tmp() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("harness-tests");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `libpcounters.so`: `$HARNESS_TEST_PCOUNTERS` when set, else freshly built for the
/// tests' own profile (`cargo test` alone leaves a dependency's `.so` stale).
pub fn counters_lib() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| match std::env::var_os("HARNESS_TEST_PCOUNTERS") {
        Some(p) => PathBuf::from(p),
        None => workspace_tests::built_library("counters", "libpcounters.so"),
    })
    .clone()
}

/// Compiles a C plugin with `cc -shared -fPIC -O2 -Wall -Wextra -Werror`.
pub fn build_plugin(src: &Path, name: &str) -> PathBuf {
    build_plugin_with(src, name, &[])
}

/// Compiles a C plugin with `cc -shared -fPIC -O2 -Wall -Wextra -Werror` and `extra` flags.
pub fn build_plugin_with(src: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = tmp().join(format!("lib{name}.so"));
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let o = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(&include)
        .arg(src)
        .arg("-o")
        .arg(&out)
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc}: {e}"));
    assert!(o.status.success(), "{cc} failed on {}:\n{}", src.display(), String::from_utf8_lossy(&o.stderr));
    out
}

/// The example plugin `harness/plugins/percpu_counter.c`, built here.
pub fn example_plugin() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        build_plugin(&Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/percpu_counter.c"), "percpu_counter")
    })
    .clone()
}

/// The foreign rseq user `harness/plugins/foreign_rseq.c` (registers areas of its own; never
/// unloaded, linked with `-z nodelete` as its Makefile does), built here.
pub fn foreign_plugin() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        build_plugin_with(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/foreign_rseq.c"),
            "foreign_rseq",
            &["-Wl,-z,nodelete", "-lpthread"],
        )
    })
    .clone()
}

/// The deliberately broken plugin of the failure tests.
pub fn broken_plugin() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        build_plugin(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plugins/broken_counter.c"), "broken_counter")
    })
    .clone()
}

/// Runs of the harness in one test binary take turns: each uses the whole (small) machine,
/// and real hotplug runs must not overlap.
pub fn turn() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// A finished harness run.
pub struct Run {
    pub out: Output,
    pub stdout: String,
    pub stderr: String,
    pub report: Option<Value>,
    pub replay_dir: PathBuf,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }

    pub fn report(&self) -> &Value {
        self.report
            .as_ref()
            .unwrap_or_else(|| panic!("no JSON report; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }

    pub fn describe(&self) -> String {
        format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", self.out.status, self.stdout, self.stderr)
    }

    /// The library entry of the report whose kind is `kind`.
    pub fn lib(&self, kind: &str) -> &Value {
        self.report()["state"]["libs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} library in the report; {}", self.describe()))
    }

    /// Mode names seen by the library of kind `kind`.
    pub fn modes(&self, kind: &str) -> Vec<String> {
        self.lib(kind)["modes"].as_object().unwrap().keys().cloned().collect()
    }
}

/// `libplocks.so`, freshly built for the tests' own profile.
pub fn locks_lib() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| workspace_tests::built_library("locks", "libplocks.so")).clone()
}

/// Runs the harness with `args` plus a JSON report, a private replay directory and no
/// progress output.
pub fn run(name: &str, args: &[&str]) -> Run {
    run_env(name, args, &[])
}

/// [`run`] with extra environment variables (which the run process inherits).
pub fn run_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let args = hotplug_args(args);
    let json = tmp().join(format!("{name}.json"));
    let replay_dir = tmp().join(format!("{name}-replay"));
    let _ = std::fs::remove_file(&json);
    let _ = std::fs::remove_dir_all(&replay_dir);
    let out = Command::new(harness())
        .args(&args)
        .arg("--json")
        .arg(&json)
        .arg("--replay-dir")
        .arg(&replay_dir)
        .arg("--no-progress")
        .envs(env.iter().copied())
        .output()
        .expect("run the harness");
    let report = std::fs::read(&json).ok().map(|b| serde_json::from_slice(&b).expect("valid JSON report"));
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        out,
        report,
        replay_dir,
    }
}

/// The usual libraries of a test run: the counters and the example plugin.
pub fn lib_args() -> Vec<String> {
    vec![
        "--lib".into(),
        counters_lib().display().to_string(),
        "--plugin".into(),
        example_plugin().display().to_string(),
    ]
}

/// Whether `HARNESS_TEST_NO_REAL_HOTPLUG` is set: the tests then never take a CPU offline
/// (on a machine shared with other tests): `auto` and `real` runs become `simulated`, and the
/// tests that need real hotplug are skipped.
pub fn no_real_hotplug() -> bool {
    std::env::var_os("HARNESS_TEST_NO_REAL_HOTPLUG").is_some_and(|v| !v.is_empty() && v != "0")
}

/// `args` with `--hotplug simulated` instead of `auto`/`real` (and added when absent) under
/// `HARNESS_TEST_NO_REAL_HOTPLUG`; unchanged otherwise.
pub fn hotplug_args(args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if no_real_hotplug() && !v.iter().any(|a| a == "replay") {
        let mut seen = false;
        for i in 0..v.len() {
            if v[i] == "--hotplug" && i + 1 < v.len() {
                seen = true;
                if v[i + 1] == "auto" || v[i + 1] == "real" {
                    v[i + 1] = "simulated".into();
                }
            }
        }
        if !seen {
            v.extend(["--hotplug".to_string(), "simulated".to_string()]);
        }
    }
    v
}

/// Whether real hotplug can run here (root and a writable CPU online file other than cpu0),
/// and is not switched off for the tests (`HARNESS_TEST_NO_REAL_HOTPLUG`).
pub fn real_hotplug_possible() -> bool {
    if no_real_hotplug() {
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::fs::read_dir("/sys/devices/system/cpu").is_ok_and(|d| {
        d.filter_map(|e| e.ok()).any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("cpu")
                && n != "cpu0"
                && n[3..].parse::<u32>().is_ok()
                && std::fs::OpenOptions::new().write(true).open(e.path().join("online")).is_ok()
        })
    })
}

/// The CPUs online now.
pub fn online() -> String {
    std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default().trim().to_string()
}

//! The C API as a C program sees it: installs the library, header and pkg-config file into
//! a temporary prefix with `install.sh`, compiles `tests/c/smoke.c` with the system C
//! compiler through `pkg-config`, and runs it (it checks its own results exactly) in every
//! rseq registration mode.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn pkg_config(prefix: &Path) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(["--cflags", "--libs", "pcounters"])
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("pkg-config is not installed; this test needs it: apt-get install pkg-config")
        }
        Err(e) => panic!("cannot run pkg-config: {e}"),
    };
    assert!(out.status.success(), "pkg-config --cflags --libs pcounters failed:\n{}", show(&out));
    String::from_utf8(out.stdout).unwrap().split_whitespace().map(str::to_owned).collect()
}

/// Installs into a fresh prefix and builds the smoke program; returns (prefix, program).
fn install_and_build() -> (PathBuf, PathBuf) {
    let prefix = common::temp_dir("c-api");
    let so = common::cdylib();
    let out = Command::new("bash")
        .arg(manifest_dir().join("install.sh"))
        .arg(&prefix)
        .arg(&so)
        .output()
        .expect("run install.sh with bash");
    assert!(out.status.success(), "install.sh failed:\n{}", show(&out));
    for f in ["lib/libpcounters.so.0", "lib/libpcounters.so", "include/pcounters.h", "lib/pkgconfig/pcounters.pc"] {
        assert!(prefix.join(f).exists(), "install.sh did not install {f}");
    }
    let pc = std::fs::read_to_string(prefix.join("lib/pkgconfig/pcounters.pc")).unwrap();
    assert!(pc.contains(&format!("prefix={}", prefix.display())) && !pc.contains("@PREFIX@"), "{pc}");

    let flags = pkg_config(&prefix);
    let exe = prefix.join("smoke");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = Command::new(&cc)
        .args(["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-pthread", "-o"])
        .arg(&exe)
        .arg(manifest_dir().join("tests/c/smoke.c"))
        .args(&flags)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` ({e}): apt-get install gcc"));
    assert!(out.status.success(), "compiling smoke.c failed (flags {flags:?}):\n{}", show(&out));
    (prefix, exe)
}

fn run_smoke(prefix: &Path, exe: &Path, configure: impl FnOnce(&mut Command)) -> String {
    let mut cmd = Command::new(exe);
    cmd.env("LD_LIBRARY_PATH", prefix.join("lib"));
    configure(&mut cmd);
    let out = cmd.output().expect("run smoke");
    assert!(out.status.success(), "smoke.c reported failures:\n{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("smoke.c: all checks passed"), "{}", show(&out));
    stdout
}

#[test]
fn c_program_built_with_pkg_config_checks_every_result() {
    let (prefix, exe) = install_and_build();

    // The program was linked by SONAME.
    let out = Command::new("readelf").arg("-d").arg(&exe).output().expect("readelf (apt-get install binutils)");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Shared library: [libpcounters.so.0]"), "{}", show(&out));

    // As this process sees it (glibc registers rseq unless the environment says otherwise).
    let normal = run_smoke(&prefix, &exe, |_| {});
    let want = match pcounters::rseq_mode() {
        pcounters::Mode::LibcOwned => "rseq mode 1 ",
        pcounters::Mode::Registered => "rseq mode 2 ",
        _ => "rseq mode 4 ",
    };
    assert!(normal.contains(want), "expected {want:?}:\n{normal}");
    let lazy = run_smoke(&prefix, &exe, |cmd| {
        cmd.env("GLIBC_TUNABLES", "glibc.pthread.rseq=0");
    });
    assert!(lazy.contains("rseq mode 2 ") || lazy.contains("rseq mode 3 "), "{lazy}");
    let denied = run_smoke(&prefix, &exe, |cmd| {
        // SAFETY: the hook only makes system calls (prctl), which is allowed after fork.
        unsafe {
            cmd.pre_exec(rseq::testing::deny_rseq_with_enosys);
        }
    });
    assert!(denied.contains(&format!("rseq mode 4 (errno {})", libc::ENOSYS)), "{denied}");
    let _ = std::fs::remove_dir_all(&prefix);
}

#[test]
fn header_compiles_as_cxx_when_a_cxx_compiler_exists() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_owned());
    let program = "#include <pcounters.h>\nint main() { pcounters_counter c; \
                   return pcounters_create(\"x\", PCOUNTERS_INDEX_CPU_ID, &c) == PCOUNTERS_OK ? 0 : 1; }\n";
    let include = manifest_dir().join("include");
    let child = Command::new(&cxx)
        .args(["-x", "c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-I"])
        .arg(&include)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        println!("no C++ compiler `{cxx}`: skipped");
        return;
    };
    use std::io::Write;
    child.stdin.take().unwrap().write_all(program.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "pcounters.h does not compile as C++:\n{}", show(&out));
}

//! The shared library as other programs see it: only `prcu_` symbols exported, a SONAME,
//! installed with header and pkg-config file and used from C (compiled with -Wall -Wextra
//! -Werror), and a `dlclose` with callbacks pending: the destructor runs them out and
//! joins the worker, the library is unmapped, and the process goes on.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    for p in [dir.join("deps/libprcu.so"), dir.join("libprcu.so")] {
        if p.is_file() {
            return p;
        }
    }
    panic!("libprcu.so not found in {}: cargo build -p rcu", dir.display());
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    text
}

#[test]
fn exports_only_the_prefixed_c_api_and_has_a_soname() {
    let so = cdylib();
    let text = run(Command::new("nm").args(["-D", "--defined-only"]).arg(&so));
    let names: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    let strays: Vec<&&str> = names.iter().filter(|n| !n.starts_with("prcu_")).collect();
    assert!(strays.is_empty(), "exports without the prcu_ prefix: {strays:?}");
    assert!(names.contains(&"prcu_read_lock") && names.contains(&"prcu_map_lookup"), "{text}");
    // Every exported function is declared in the header.
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/prcu.h")).unwrap();
    for n in &names {
        assert!(header.contains(&format!("{n}(")), "{n} is exported but not in prcu.h");
    }
    let d = run(Command::new("readelf").arg("-d").arg(&so));
    assert!(d.contains("Library soname: [libprcu.so.0]"), "{d}");
}

#[test]
fn c_program_against_the_installed_library() {
    let prefix = std::env::temp_dir().join(format!("prcu-c-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&prefix);
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    run(Command::new("bash").arg(here.join("install.sh")).arg(&prefix).arg(cdylib()));
    let flags = run(Command::new("pkg-config")
        .args(["--cflags", "--libs", "prcu"])
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")));
    let exe = prefix.join("use_prcu");
    run(Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-pthread", "-o"])
        .arg(&exe)
        .arg(here.join("tests/c/use_prcu.c"))
        .args(flags.split_whitespace()));
    for tunables in ["", "glibc.pthread.rseq=0"] {
        let out = run(Command::new(&exe).env("LD_LIBRARY_PATH", prefix.join("lib")).env("GLIBC_TUNABLES", tunables));
        assert!(out.contains("c api ok"), "{out}");
    }
    let _ = std::fs::remove_dir_all(&prefix);
}

static RAN: AtomicU64 = AtomicU64::new(0);
unsafe extern "C" fn count(_: *mut libc::c_void) {
    RAN.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn dlclose_with_callbacks_pending_runs_them_and_unmaps() {
    // A private copy, so that this test's loads are independent of the rlib in this binary.
    let copy = std::env::temp_dir().join(format!("libprcu-unload-{}.so", std::process::id()));
    std::fs::copy(cdylib(), &copy).unwrap();
    for cycle in 0..5u64 {
        // SAFETY: loading our own library; its constructors only read the environment.
        let lib =
            unsafe { libloading::os::unix::Library::open(Some(&copy), libc::RTLD_NOW | libc::RTLD_LOCAL) }.unwrap();
        // SAFETY: the C signatures of prcu.h.
        unsafe {
            let call: libloading::os::unix::Symbol<
                unsafe extern "C" fn(unsafe extern "C" fn(*mut libc::c_void), *mut libc::c_void) -> i32,
            > = lib.get(b"prcu_call\0").unwrap();
            let lock: libloading::os::unix::Symbol<extern "C" fn() -> u64> = lib.get(b"prcu_read_lock\0").unwrap();
            let unlock: libloading::os::unix::Symbol<extern "C" fn(u64) -> i32> =
                lib.get(b"prcu_read_unlock\0").unwrap();
            let t = lock();
            for _ in 0..100 {
                assert_eq!(call(count, std::ptr::null_mut()), 0);
            }
            assert_eq!(unlock(t), 0);
        }
        lib.close().unwrap();
        assert_eq!(
            RAN.load(Ordering::SeqCst),
            100 * (cycle + 1),
            "cycle {cycle}: pending callbacks not run at dlclose"
        );
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(!maps.contains(copy.to_str().unwrap()), "cycle {cycle}: still mapped after dlclose");
        // The worker was joined (its code is unmapped: a live worker would crash the test);
        // its /proc/self/task entry can stay visible a moment after the join returns.
        let workers = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "prcu-callbacks"))
                .count()
        };
        let t0 = std::time::Instant::now();
        while workers() > 0 && t0.elapsed() < std::time::Duration::from_secs(2) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(workers(), 0, "cycle {cycle}: the worker outlived the library");
    }
    let _ = std::fs::remove_file(&copy);
}

//! The shared library as other programs see it: only `plock_` symbols, a SONAME, and the C
//! API usable through `dlopen` (a separate copy with its own foundation).

use std::path::PathBuf;
use std::process::Command;

fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let so = dir.join("libplocks.so");
    assert!(so.exists(), "{} missing: build with cargo build -p locks", so.display());
    so
}

fn tool(t: &str, args: &[&str]) -> String {
    let out = Command::new(t)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {t}: {e} (apt-get install binutils)"));
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn exports_only_the_prefixed_c_api_and_has_a_soname() {
    let so = cdylib();
    let text = tool("nm", &["-D", "--defined-only", so.to_str().unwrap()]);
    let mut names: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    names.sort_unstable();
    let expect = [
        "plock_force_fallback",
        "plock_mutex_count",
        "plock_mutex_create",
        "plock_mutex_create_flags",
        "plock_mutex_destroy",
        "plock_mutex_lock",
        "plock_mutex_lock_index",
        "plock_mutex_trylock_index",
        "plock_mutex_unlock",
        "plock_rseq_mode",
        "plock_rseq_stats",
        "plock_rwlock_create",
        "plock_rwlock_create_flags",
        "plock_rwlock_destroy",
        "plock_rwlock_read_lock",
        "plock_rwlock_read_unlock",
        "plock_rwlock_write_lock",
        "plock_rwlock_write_unlock",
        "plock_slice_stats",
        "plock_slice_supported",
        "plock_strerror",
        "plock_version",
    ];
    assert_eq!(names, expect);
    let dynamic = tool("readelf", &["-d", so.to_str().unwrap()]);
    assert!(dynamic.contains("Library soname: [libplocks.so.0]"), "{dynamic}");
}

type Create = unsafe extern "C" fn() -> *mut u8;
type Op = unsafe extern "C" fn(*const u8) -> i32;
type OpIdx = unsafe extern "C" fn(*const u8, i32) -> i32;

#[test]
fn c_api_through_dlopen_refuses_bad_input() {
    // SAFETY: loading our own library; symbols used with their C signatures.
    unsafe {
        let lib = libloading::Library::new(cdylib()).unwrap();
        let create: libloading::Symbol<Create> = lib.get(b"plock_mutex_create").unwrap();
        let destroy: libloading::Symbol<Op> = lib.get(b"plock_mutex_destroy").unwrap();
        let count: libloading::Symbol<Op> = lib.get(b"plock_mutex_count").unwrap();
        let lock: libloading::Symbol<Op> = lib.get(b"plock_mutex_lock").unwrap();
        let unlock: libloading::Symbol<OpIdx> = lib.get(b"plock_mutex_unlock").unwrap();
        let lock_index: libloading::Symbol<OpIdx> = lib.get(b"plock_mutex_lock_index").unwrap();
        let rw_create: libloading::Symbol<Create> = lib.get(b"plock_rwlock_create").unwrap();
        let rw_destroy: libloading::Symbol<Op> = lib.get(b"plock_rwlock_destroy").unwrap();
        let rd: libloading::Symbol<Op> = lib.get(b"plock_rwlock_read_lock").unwrap();
        let rdu: libloading::Symbol<Op> = lib.get(b"plock_rwlock_read_unlock").unwrap();
        let wr: libloading::Symbol<Op> = lib.get(b"plock_rwlock_write_lock").unwrap();
        let wru: libloading::Symbol<Op> = lib.get(b"plock_rwlock_write_unlock").unwrap();

        let null = std::ptr::null();
        assert_eq!(count(null), -1);
        assert_eq!(lock(null), -1);
        assert_eq!(destroy(null), -1);
        assert_eq!(rd(null), -1);
        let m = create();
        let n = count(m);
        assert!(n >= 1);
        assert_eq!(lock_index(m, n), -1, "index out of range");
        assert_eq!(lock_index(m, -1), -1);
        assert_eq!(unlock(m, 0), -3, "not held");
        let i = lock(m);
        assert!(i >= 0 && i < n);
        assert_eq!(lock_index(m, i), -4, "already held by the caller");
        assert_eq!(destroy(m), -2, "destroying a held lock");
        assert_eq!(unlock(m, i), 0);
        assert_eq!(destroy(m), 0);
        let l = rw_create();
        assert_eq!(wru(l), -3);
        assert_eq!(rd(l), 0);
        assert_eq!(rw_destroy(l), -2, "a reader is inside");
        assert_eq!(rdu(l), 0);
        assert_eq!(wr(l), 0);
        assert_eq!(rd(l), -4);
        assert_eq!(rw_destroy(l), -2, "a writer holds it");
        assert_eq!(wru(l), 0);
        assert_eq!(rw_destroy(l), 0);

        // Mode and statistics: NULL is refused, a read pair on a thread with rseq counts no
        // fallback operation, one on the forced fallback counts two.
        type ModeFn = unsafe extern "C" fn(*mut i32) -> i32;
        type StatsFn = unsafe extern "C" fn(*mut [u64; 5]) -> i32;
        type ForceFn = unsafe extern "C" fn(i32);
        let mode: libloading::Symbol<ModeFn> = lib.get(b"plock_rseq_mode").unwrap();
        let stats: libloading::Symbol<StatsFn> = lib.get(b"plock_rseq_stats").unwrap();
        let force: libloading::Symbol<ForceFn> = lib.get(b"plock_force_fallback").unwrap();
        assert_eq!(stats(std::ptr::null_mut()), -1);
        let mut err = -7;
        let m = mode(&mut err);
        assert!([1, 2, 4].contains(&m), "mode {m}");
        assert!(m == 4 || err == 0, "errno {err} with mode {m}");
        assert!([1, 2, 4].contains(&mode(std::ptr::null_mut())));
        let l = rw_create();
        let mut before = [0u64; 5];
        assert_eq!(stats(&mut before), 0);
        assert_eq!(rd(l), 0);
        assert_eq!(rdu(l), 0);
        let mut after = [0u64; 5];
        assert_eq!(stats(&mut after), 0);
        if m != 4 {
            assert_eq!(after[1], before[1], "a read pair with rseq took the fallback path");
        }
        force(1);
        assert_eq!(mode(&mut err), 5, "forced fallback");
        assert_eq!(stats(&mut before), 0);
        assert_eq!(rd(l), 0);
        assert_eq!(rdu(l), 0);
        assert_eq!(stats(&mut after), 0);
        assert_eq!(after[1], before[1] + 2, "a forced read pair is two fallback adds");
        force(0);
        assert_eq!(rw_destroy(l), 0);
        drop(lib);
    }
}

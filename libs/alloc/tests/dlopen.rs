//! `libpalloc.so` as a library next to the program's own malloc: loading it (also with
//! `RTLD_GLOBAL`) replaces nobody's `malloc`, it exports only `palloc_*`, and `dlclose`
//! returns its memory (chunks, large blocks, metadata, per-CPU pool).

use std::ffi::c_void;
use std::path::PathBuf;
use std::process::Command;

fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let so = exe.parent().and_then(|d| d.parent()).unwrap().join("libpalloc.so");
    assert!(so.exists(), "{} missing: build it with `cargo build -p palloc`", so.display());
    so
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().count()
}

fn object_of(addr: *const c_void) -> String {
    // SAFETY: dladdr with a valid out-struct.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        assert!(libc::dladdr(addr, &mut info) != 0);
        std::ffi::CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned()
    }
}

#[test]
fn exports_only_the_prefixed_api() {
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(cdylib()).output().expect("nm (binutils)");
    let text = String::from_utf8(out.stdout).unwrap();
    let strays: Vec<&str> =
        text.lines().filter_map(|l| l.split_whitespace().nth(2)).filter(|n| !n.starts_with("palloc_")).collect();
    assert!(strays.is_empty(), "exports without the palloc_ prefix: {strays:?}");
}

#[test]
fn rtld_global_replaces_no_malloc_and_dlclose_returns_memory() {
    let so = cdylib();
    let path = std::ffi::CString::new(so.to_str().unwrap()).unwrap();
    let before = mappings();
    for round in 0..3 {
        // SAFETY: loading our library; its constructor only reads the environment.
        let h = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        assert!(!h.is_null());
        // SAFETY: looking up symbols.
        let (m, pm, pf) = unsafe {
            (
                libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr()),
                libc::dlsym(h, c"palloc_malloc".as_ptr()),
                libc::dlsym(h, c"palloc_free".as_ptr()),
            )
        };
        assert!(object_of(m).contains("libc.so"), "malloc now comes from {}", object_of(m));
        assert!(!pm.is_null() && !pf.is_null());
        // SAFETY: the exported functions have these C signatures.
        let (pm, pf): (extern "C" fn(usize) -> *mut c_void, extern "C" fn(*mut c_void)) = unsafe {
            (
                std::mem::transmute::<*mut c_void, extern "C" fn(usize) -> *mut c_void>(pm),
                std::mem::transmute::<*mut c_void, extern "C" fn(*mut c_void)>(pf),
            )
        };
        let blocks: Vec<_> = (0..2000).map(|i| pm(16 + i * 37)).chain([pm(5 << 20)]).collect();
        assert!(blocks.iter().all(|p| !p.is_null()));
        for p in blocks {
            pf(p);
        }
        // SAFETY: nothing of the library is used after this.
        assert_eq!(unsafe { libc::dlclose(h) }, 0);
        let after = mappings();
        // A kept copy would leave dozens of mappings (one chunk per class used, the per-CPU
        // pool, the metadata); a few come and go with the test runner's own threads.
        assert!(after <= before + 8, "round {round}: mappings {before} -> {after} (memory kept after dlclose)");
    }
}

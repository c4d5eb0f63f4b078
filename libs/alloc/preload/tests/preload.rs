//! The drop-in build, in processes started with `LD_PRELOAD`: the C API's semantics
//! (`tests/c/preload_check.c`), C++ `new`/`delete`, the statistics table at exit, and what
//! the `.so` exports.

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/libpalloc_preload.so` (built with this test's package).
fn preload() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let so = dir.join("libpalloc_preload.so");
    assert!(so.exists(), "{} missing: build it with `cargo build -p palloc-preload`", so.display());
    so
}

fn compile(src: &str, out: &str, compiler: &str, extra: &[&str]) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let bin = dir.join(out);
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c").join(src);
    let st = Command::new(compiler)
        .args(["-O1", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .args(extra)
        .status()
        .ok()?;
    assert!(st.success(), "{compiler} failed on {}", src.display());
    Some(bin)
}

#[test]
fn c_api_has_glibc_semantics_under_ld_preload() {
    let bin = compile("preload_check.c", "preload_check", "cc", &["-ldl"]).expect("cc (apt-get install gcc)");
    let out = Command::new(&bin).env("LD_PRELOAD", preload()).env("PALLOC_CHECK", "1").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("preload_check: ok"), "{text}");
    assert!(text.contains("<malloc version=\"palloc"), "{text}");
    assert!(text.contains("palloc statistics"), "malloc_stats prints the table:\n{text}");
}

#[test]
fn cxx_new_and_delete_go_through_palloc() {
    let Some(bin) = compile("new_delete.cc", "new_delete", "c++", &[]) else {
        eprintln!("SKIP: no C++ compiler (apt-get install g++)");
        return;
    };
    let out = Command::new(&bin).env("LD_PRELOAD", preload()).env("PALLOC_STATS", "1").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("new_delete: ok"), "{text}");
    // PALLOC_STATS=1: the table at exit, with hits counted.
    assert!(text.contains("palloc statistics") && text.contains("hits"), "{text}");
}

#[test]
fn exports_only_the_allocation_api() {
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(preload()).output().expect("nm (binutils)");
    let text = String::from_utf8(out.stdout).unwrap();
    let c_api = [
        "malloc",
        "free",
        "cfree",
        "calloc",
        "realloc",
        "reallocarray",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
        "malloc_usable_size",
        "malloc_trim",
        "malloc_stats",
        "malloc_info",
    ];
    let names: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    let strays: Vec<&&str> = names.iter().filter(|n| !n.starts_with("palloc_") && !c_api.contains(n)).collect();
    assert!(strays.is_empty(), "unexpected exports: {strays:?}");
    for f in c_api {
        assert!(names.contains(&f), "{f} not exported");
    }
}

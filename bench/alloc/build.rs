//! Compiles the C workloads into a standalone executable (the measured process is plain C
//! calling malloc/free) and a deliberately broken malloc shim used by the tests, and tells the
//! crate where both are.
use std::path::{Path, PathBuf};
use std::process::Command;

fn compile(out: &Path, sources: &[&str], extra: &[&str]) {
    let mut build = cc::Build::new();
    build.opt_level(2).warnings(true).extra_warnings(true).warnings_into_errors(true).cargo_metadata(false);
    let tool = build.try_get_compiler().expect("no C compiler found");
    let mut cmd: Command = tool.to_command();
    cmd.args(["-O2", "-Wall", "-Wextra", "-Werror", "-pthread"]).args(extra).args(sources).arg("-o").arg(out);
    cmd.arg("-ldl");
    let status = cmd.status().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let workload = out_dir.join("alloc-workload");
    compile(
        &workload,
        &["workloads/workloads.c"],
        // Keep every malloc/free: the compiler may otherwise drop a pair whose block does not escape.
        &["-fno-builtin-malloc", "-fno-builtin-free", "-fno-builtin-calloc", "-fno-builtin-realloc"],
    );
    let shim = out_dir.join("libdup-malloc.so");
    compile(&shim, &["tests/dup_malloc.c"], &["-shared", "-fPIC"]);
    println!("cargo:rustc-env=ALLOC_BENCH_WORKLOAD={}", workload.display());
    println!("cargo:rustc-env=ALLOC_BENCH_DUP_SHIM={}", shim.display());
    println!("cargo:rerun-if-changed=workloads/workloads.c");
    println!("cargo:rerun-if-changed=tests/dup_malloc.c");
    println!("cargo:rerun-if-changed=build.rs");
}

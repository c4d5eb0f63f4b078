//! Compiles the C peers (liburcu memb and qsbr through their shared libraries and inlined,
//! rculfhash, pthread_rwlock, and loops over libprcu's C API) into one static library and
//! links liburcu's shared libraries (Debian `liburcu-dev`). Where liburcu's headers are
//! missing, the liburcu peers are replaced by `csrc/no_urcu.c`, so that the workspace still
//! builds; the benchmark then exits with a message naming the package.
use std::path::Path;

fn main() {
    let have_urcu = ["/usr/include", "/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu"]
        .iter()
        .any(|d| Path::new(d).join("urcu/urcu-memb.h").exists() && Path::new(d).join("urcu/rculfhash.h").exists());
    let files: &[&str] = if have_urcu {
        &["memb_so.c", "memb_inline.c", "qsbr_so.c", "qsbr_inline.c", "lfht.c", "misc.c"]
    } else {
        println!("cargo:warning=liburcu headers not found: rcu-bench is built without its liburcu peers and will refuse to run");
        &["no_urcu.c", "misc.c"]
    };
    let mut b = cc::Build::new();
    b.opt_level(2).warnings(true).extra_warnings(true).warnings_into_errors(true).flag("-pthread");
    for f in
        ["memb_so.c", "memb_inline.c", "qsbr_so.c", "qsbr_inline.c", "lfht.c", "misc.c", "no_urcu.c", "urcu_flavor.h"]
    {
        println!("cargo:rerun-if-changed=csrc/{f}");
    }
    for f in files {
        b.file(format!("csrc/{f}"));
    }
    b.compile("rcu_peers");
    if have_urcu {
        for lib in ["urcu-memb", "urcu-qsbr", "urcu-cds", "urcu-common"] {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=/usr/include/urcu");
}

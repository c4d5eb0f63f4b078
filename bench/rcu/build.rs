//! Compiles the C peers (liburcu memb and qsbr through their shared libraries and inlined,
//! rculfhash, pthread_rwlock, and loops over libprcu's C API) into one static library and
//! links liburcu's shared libraries (Debian `liburcu-dev`).

fn main() {
    let files = ["memb_so.c", "memb_inline.c", "qsbr_so.c", "qsbr_inline.c", "lfht.c", "misc.c"];
    let mut b = cc::Build::new();
    b.opt_level(2).warnings(true).extra_warnings(true).warnings_into_errors(true).flag("-pthread");
    for f in files {
        b.file(format!("csrc/{f}"));
        println!("cargo:rerun-if-changed=csrc/{f}");
    }
    println!("cargo:rerun-if-changed=csrc/urcu_flavor.h");
    b.compile("rcu_peers");
    for lib in ["urcu-memb", "urcu-qsbr", "urcu-cds", "urcu-common"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}

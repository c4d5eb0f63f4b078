//! Compiles the liburcu shim of the `strong` stack when liburcu's headers and libraries are
//! present; otherwise the server is built without that stack (`--stack strong` then fails
//! with a message) and the cfg `kvd_urcu` stays unset.
use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kvd_urcu)");
    println!("cargo:rerun-if-changed=csrc/urcu_shim.c");
    let have_headers = ["/usr/include", "/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu"]
        .iter()
        .any(|d| Path::new(d).join("urcu/rculfhash.h").exists() && Path::new(d).join("urcu/urcu-memb.h").exists());
    if !have_headers {
        println!("cargo:warning=liburcu headers not found: building kvd without the `strong` stack");
        return;
    }
    let mut build = cc::Build::new();
    build.file("csrc/urcu_shim.c").flag("-Wall").flag("-Wextra").flag("-Werror");
    if build.try_compile("kvd_urcu_shim").is_err() {
        println!("cargo:warning=the liburcu shim did not compile: building kvd without the `strong` stack");
        return;
    }
    println!("cargo:rustc-link-lib=dylib=urcu-cds");
    println!("cargo:rustc-link-lib=dylib=urcu-memb");
    println!("cargo:rustc-link-lib=dylib=urcu-common");
    println!("cargo:rustc-cfg=kvd_urcu");
}

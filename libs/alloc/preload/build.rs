//! SONAME of the drop-in malloc.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libpalloc_preload.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}

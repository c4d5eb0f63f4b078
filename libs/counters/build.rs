//! Gives the cdylib its SONAME, so that programs linked against `libpcounters.so` record
//! `libpcounters.so.0` (the name `install.sh` installs it under).

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libpcounters.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}

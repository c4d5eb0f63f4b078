//! Gives the cdylib its SONAME, so that programs linked against `libplocks.so` record
//! `libplocks.so.0` (the name `install.sh` installs it under).

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libplocks.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}

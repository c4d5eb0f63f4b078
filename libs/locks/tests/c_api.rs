//! Installs the built library with `install.sh` into a temporary prefix and compiles and runs
//! a C program against it with `-Wall -Wextra -Werror`, found through pkg-config.

use std::process::Command;

#[test]
fn c_program_builds_against_the_installed_header_and_runs() {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::current_exe().unwrap();
    let so = exe.parent().unwrap().parent().unwrap().join("libplocks.so");
    let prefix = std::env::temp_dir().join(format!("plocks-c-api-{}", std::process::id()));
    let st = Command::new("bash").arg(here.join("install.sh")).arg(&prefix).arg(&so).status().unwrap();
    assert!(st.success(), "install.sh failed");
    let pc = prefix.join("lib/pkgconfig");
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "plocks"])
        .env("PKG_CONFIG_PATH", &pc)
        .output()
        .expect("pkg-config (apt-get install pkg-config)");
    assert!(flags.status.success());
    let flags = String::from_utf8(flags.stdout).unwrap();
    let bin = prefix.join("smoke");
    let st = Command::new("gcc")
        .args(["-Wall", "-Wextra", "-Werror"])
        .arg(here.join("tests/c/smoke.c"))
        .args(flags.split_whitespace())
        .arg("-o")
        .arg(&bin)
        .status()
        .expect("gcc");
    assert!(st.success(), "the C program did not compile");
    let out = Command::new(&bin).env("LD_LIBRARY_PATH", prefix.join("lib")).output().unwrap();
    assert!(out.status.success(), "smoke exited {:?}", out.status);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok 0.1.0"));
    let _ = std::fs::remove_dir_all(&prefix);
}

//! Which object the process's `malloc` comes from: with `LD_PRELOAD` set, the run process
//! reports it, and `--expect-preload` makes a run whose `malloc` is not the preloaded
//! library's fail before it starts.

use std::ffi::CStr;
use std::path::PathBuf;

/// The file that defines the `malloc` every library of the process calls (the first in
/// symbol lookup order), or `None` when `dladdr` cannot say.
pub fn malloc_object() -> Option<PathBuf> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name; dladdr fills `info` for an
    // address inside a loaded object and leaves it otherwise untouched.
    unsafe {
        let f = libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr());
        if f.is_null() {
            return None;
        }
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(f, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        let name = CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned();
        Some(std::fs::canonicalize(&name).unwrap_or_else(|_| PathBuf::from(name)))
    }
}

/// The files `LD_PRELOAD` names in this process (separated by spaces or colons).
fn preloaded() -> Vec<PathBuf> {
    let v = std::env::var("LD_PRELOAD").unwrap_or_default();
    v.split([' ', ':'])
        .filter(|s| !s.is_empty())
        .map(|s| std::fs::canonicalize(s).unwrap_or_else(|_| PathBuf::from(s)))
        .collect()
}

/// A line for the report about where `malloc` comes from; `Err` when `expect` and it does
/// not come from a file `LD_PRELOAD` names.
pub fn check(expect: bool) -> Result<String, String> {
    let pre = preloaded();
    let from = malloc_object();
    let from_s = from.as_ref().map_or("an unknown object".to_string(), |p| p.display().to_string());
    let taken = from.as_ref().is_some_and(|f| pre.contains(f));
    let names: Vec<String> = pre.iter().map(|p| p.display().to_string()).collect();
    let line = if pre.is_empty() {
        format!("malloc from {from_s} (no LD_PRELOAD)")
    } else {
        format!(
            "malloc from {from_s} (LD_PRELOAD {}: {})",
            names.join(" "),
            if taken { "took over" } else { "did NOT take over" }
        )
    };
    if expect && !taken {
        return Err(format!("--expect-preload: {line}"));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malloc_of_a_test_process_is_libc() {
        let f = malloc_object().expect("dladdr names malloc's object");
        assert!(f.to_string_lossy().contains("libc"), "malloc from {}", f.display());
        if std::env::var_os("LD_PRELOAD").is_none() {
            assert!(check(true).unwrap_err().contains("no LD_PRELOAD"));
            assert!(check(false).is_ok());
        }
    }
}

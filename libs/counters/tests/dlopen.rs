//! The shared library as other programs see it: only `pcounters_` symbols exported, a
//! SONAME, and unloadable: many `dlopen`/`dlclose` cycles of a separate copy while threads
//! keep counting through the rlib (this binary's own copy), each unload checked in
//! `/proc/self/maps`.

mod common;

use std::ffi::{c_char, c_int};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use libloading::os::unix::{Library, Symbol};
use pcounters::ffi::pcounters_counter;
use pcounters::{Counter, Index};

const EXPORTS: [&str; 17] = [
    "pcounters_add",
    "pcounters_count",
    "pcounters_create",
    "pcounters_delete",
    "pcounters_force_fallback",
    "pcounters_foreach",
    "pcounters_get",
    "pcounters_index",
    "pcounters_lookup",
    "pcounters_memory",
    "pcounters_name",
    "pcounters_prometheus",
    "pcounters_rseq_mode",
    "pcounters_rseq_stats",
    "pcounters_snapshot",
    "pcounters_strerror",
    "pcounters_version",
];

fn tool_output(tool: &str, args: &[&str], package: &str) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {tool} ({e}): install it with `apt-get install {package}`");
    });
    assert!(out.status.success(), "{tool} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn exports_only_the_prefixed_c_api() {
    let so = common::cdylib();
    let text = tool_output("nm", &["-D", "--defined-only", so.to_str().unwrap()], "binutils");
    let mut names: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    names.sort_unstable();
    let strays: Vec<&&str> = names.iter().filter(|n| !n.starts_with("pcounters_")).collect();
    assert!(strays.is_empty(), "exported symbols without the pcounters_ prefix: {strays:?}\n{text}");
    assert_eq!(names, EXPORTS, "exported symbols");
}

#[test]
fn has_a_soname_and_can_be_unloaded() {
    let so = common::cdylib();
    let text = tool_output("readelf", &["-d", so.to_str().unwrap()], "binutils");
    assert!(text.contains("Library soname: [libpcounters.so.0]"), "{text}");
    assert!(!text.contains("NODELETE"), "the library is marked NODELETE:\n{text}");
}

type CreateFn = unsafe extern "C" fn(*const c_char, c_int, *mut pcounters_counter) -> c_int;
type AddFn = unsafe extern "C" fn(pcounters_counter, i64) -> c_int;
type GetFn = unsafe extern "C" fn(pcounters_counter, *mut i64) -> c_int;
type DeleteFn = unsafe extern "C" fn(pcounters_counter) -> c_int;
type CountFn = unsafe extern "C" fn() -> usize;
type FallbackFn = unsafe extern "C" fn(c_int) -> c_int;

fn mapped(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps").lines().any(|l| l.ends_with(path))
}

/// One load of a private copy: counts through it from several threads, leaves a thread
/// alive that has this copy's thread-local state, unloads, and checks the unload.
fn one_cycle(so: &std::path::Path, dir: &std::path::Path, cycle: usize) {
    let copy = dir.join(format!("libpcounters-copy-{cycle}.so"));
    std::fs::copy(so, &copy).expect("copy the library");
    let path = copy.to_str().unwrap().to_owned();
    // SAFETY: loading our own library runs no constructors beyond the C runtime's.
    let lib = unsafe { Library::open(Some(&copy), libc::RTLD_NOW | libc::RTLD_LOCAL) }.expect("dlopen");
    assert!(mapped(&path));
    let (keeper, release) = {
        // SAFETY: the symbols have these C signatures (see pcounters.h).
        let (create, add, get, delete, count, fallback) = unsafe {
            let create: Symbol<CreateFn> = lib.get(b"pcounters_create\0").unwrap();
            let add: Symbol<AddFn> = lib.get(b"pcounters_add\0").unwrap();
            let get: Symbol<GetFn> = lib.get(b"pcounters_get\0").unwrap();
            let delete: Symbol<DeleteFn> = lib.get(b"pcounters_delete\0").unwrap();
            let count: Symbol<CountFn> = lib.get(b"pcounters_count\0").unwrap();
            let fallback: Symbol<FallbackFn> = lib.get(b"pcounters_force_fallback\0").unwrap();
            (*create, *add, *get, *delete, *count, *fallback)
        };
        // SAFETY: calls through the C API with valid arguments; the library stays loaded
        // until every thread using it has been joined (the keeper only waits).
        unsafe {
            assert_eq!(count(), 0, "a fresh copy has its own, empty registry");
            let mut c = pcounters_counter { id: 0 };
            // The rlib copy has a counter with the same name: registries are separate.
            assert_eq!(create(c"dl_shared_name".as_ptr(), (cycle % 2) as c_int, &mut c), 0);
            let adders: Vec<_> = (0..2)
                .map(|_| {
                    std::thread::spawn(move || {
                        for _ in 0..20_000 {
                            assert_eq!(add(c, 2), 0);
                        }
                    })
                })
                .collect();
            for a in adders {
                a.join().unwrap();
            }
            // A thread that keeps this copy's thread-local state (touched by the fallback
            // path's statistics) and is still alive at the unload.
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
            assert_eq!(fallback(1), 0);
            let keeper = std::thread::spawn(move || {
                assert_eq!(add(c, 1), 0);
                ready_tx.send(()).unwrap();
                let _ = rx.recv();
            });
            ready_rx.recv().unwrap();
            assert_eq!(fallback(0), 0);
            let mut v = 0;
            assert_eq!(get(c, &mut v), 0);
            assert_eq!(v, 80_001);
            assert_eq!(delete(c), 0);
            (keeper, tx)
        }
    };
    drop(lib); // dlclose
    assert!(!mapped(&path), "cycle {cycle}: {path} still mapped after dlclose");
    release.send(()).unwrap();
    keeper.join().unwrap();
    std::fs::remove_file(&copy).unwrap();
}

#[test]
fn unloads_and_reloads_while_other_threads_keep_counting() {
    let so = common::cdylib();
    let dir = common::temp_dir("dlopen");
    let mine = Counter::new("dl_shared_name", Index::MmCid).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let added = Arc::new(AtomicI64::new(0));
    let background: Vec<_> = (0..2)
        .map(|_| {
            let (stop, added) = (stop.clone(), added.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    mine.add(1);
                    n += 1;
                }
                added.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();

    for cycle in 0..30 {
        one_cycle(&so, &dir, cycle);
    }

    // The fork handlers of the unloaded copies are gone: fork would call into unmapped code.
    // SAFETY: the child only calls `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just created.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");

    stop.store(true, Ordering::Relaxed);
    for b in background {
        b.join().unwrap();
    }
    assert_eq!(mine.get(), Ok(added.load(Ordering::Relaxed)));
    mine.delete().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

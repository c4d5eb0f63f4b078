//! A copy unloaded with `dlclose` gives its memory back (the table, the names, the per-CPU
//! pool), so loading and unloading it again and again does not grow the process; and a
//! process that exits while threads still count through a loaded copy exits cleanly (the
//! destructor keeps everything at exit).

mod common;

use std::ffi::{c_char, c_int};
use std::process::Command;

use libloading::os::unix::{Library, Symbol};
use pcounters::ffi::pcounters_counter;

type CreateFn = unsafe extern "C" fn(*const c_char, c_int, *mut pcounters_counter) -> c_int;
type AddFn = unsafe extern "C" fn(pcounters_counter, i64) -> c_int;
type DeleteFn = unsafe extern "C" fn(pcounters_counter) -> c_int;
type MemoryFn = unsafe extern "C" fn(*mut u64, *mut u64) -> c_int;

/// Anonymous resident memory of this process (`RssAnon`), in bytes.
fn rss_anon() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).expect("RssAnon line");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("RssAnon value") * 1024
}

/// Heap bytes in use (glibc's `mallinfo2().uordblks`).
fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 has no preconditions.
    unsafe { libc::mallinfo2().uordblks as u64 }
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps").lines().count()
}

/// One load of a private copy: `n` counters created, counted into from two threads, half of
/// them deleted; the copy's own view of its memory checked; then `dlclose`.
fn cycle(copy: &std::path::Path, n: usize) {
    // SAFETY: loading our own library.
    let lib = unsafe { Library::open(Some(copy), libc::RTLD_NOW | libc::RTLD_LOCAL) }.expect("dlopen");
    // SAFETY: the symbols have these C signatures (pcounters.h); calls with valid arguments,
    // all done before the library is closed.
    unsafe {
        let create: Symbol<CreateFn> = lib.get(b"pcounters_create\0").unwrap();
        let add: Symbol<AddFn> = lib.get(b"pcounters_add\0").unwrap();
        let delete: Symbol<DeleteFn> = lib.get(b"pcounters_delete\0").unwrap();
        let memory: Symbol<MemoryFn> = lib.get(b"pcounters_memory\0").unwrap();
        let (add, delete) = (*add, *delete);
        let mut cs = Vec::new();
        for i in 0..n {
            let name = std::ffi::CString::new(format!("unload_mem_{i}")).unwrap();
            let mut c = pcounters_counter { id: 0 };
            assert_eq!(create(name.as_ptr(), (i % 2) as c_int, &mut c), 0);
            cs.push(c);
        }
        let adders: Vec<_> = (0..2)
            .map(|t| {
                let cs = cs.clone();
                std::thread::spawn(move || {
                    for (i, &c) in cs.iter().enumerate() {
                        assert_eq!(add(c, (i + t) as i64), 0);
                    }
                })
            })
            .collect();
        for a in adders {
            a.join().unwrap();
        }
        let (mut resident, mut reserved) = (0u64, 0u64);
        assert_eq!(memory(&mut resident, &mut reserved), 0);
        assert!(resident > 0 && reserved >= resident, "resident {resident}, reserved {reserved}");
        assert_eq!(memory(std::ptr::null_mut(), std::ptr::null_mut()), 0);
        for c in cs.iter().step_by(2) {
            assert_eq!(delete(*c), 0);
        }
    }
    drop(lib);
}

#[test]
fn load_and_unload_cycles_do_not_grow_the_process() {
    let so = common::cdylib();
    let dir = common::temp_dir("unload-memory");
    let copy = dir.join("libpcounters-unload.so");
    std::fs::copy(&so, &copy).expect("copy the library");
    const N: usize = 2000;
    for _ in 0..5 {
        cycle(&copy, N);
    }
    let (rss0, heap0, maps0) = (rss_anon(), heap_in_use(), mappings());
    const CYCLES: u64 = 40;
    for _ in 0..CYCLES {
        cycle(&copy, N);
    }
    let (rss1, heap1, maps1) = (rss_anon(), heap_in_use(), mappings());
    let per_cycle = |a: u64, b: u64| b.saturating_sub(a) / CYCLES;
    eprintln!(
        "per load/unload cycle of {N} counters: RssAnon +{} B, heap +{} B, mappings {maps0} -> {maps1}",
        per_cycle(rss0, rss1),
        per_cycle(heap0, heap1)
    );
    // Before the destructor freed anything, a cycle of 2,000 counters kept ~400 KiB of heap
    // and its per-CPU pages. What may stay: the exit record and semaphore (tens of bytes).
    assert!(per_cycle(heap0, heap1) < 4096, "heap grows by {} B per cycle", per_cycle(heap0, heap1));
    assert!(per_cycle(rss0, rss1) < 16384, "RssAnon grows by {} B per cycle", per_cycle(rss0, rss1));
    assert!(maps1 <= maps0 + 2, "mappings grow: {maps0} -> {maps1} (per-CPU pools not unmapped)");
    let _ = std::fs::remove_dir_all(&dir);
}

const ROLE: &str = "PCOUNTERS_TEST_EXIT_ROLE";

#[test]
fn exit_while_threads_count_through_a_loaded_copy_is_clean() {
    for _ in 0..5 {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "role_exit_while_counting", "--nocapture", "--test-threads=1", "--ignored"])
            .env(ROLE, common::cdylib())
            .output()
            .expect("run the role");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(7), "the exiting process did not exit cleanly ({}):\n{text}", out.status);
    }
}

/// Loads a copy, starts threads that count through it without end, and calls `exit(7)`:
/// the destructor runs while they count, and must leave their memory alone.
#[test]
#[ignore = "role of exit_while_threads_count_through_a_loaded_copy_is_clean"]
fn role_exit_while_counting() {
    let Ok(so) = std::env::var(ROLE) else { return };
    // SAFETY: loading our own library; it stays loaded until the process exits.
    let lib = Box::leak(Box::new(unsafe { Library::open(Some(&so), libc::RTLD_NOW | libc::RTLD_LOCAL) }.unwrap()));
    // SAFETY: as in `cycle`.
    unsafe {
        let create: Symbol<CreateFn> = lib.get(b"pcounters_create\0").unwrap();
        let add: AddFn = *lib.get::<AddFn>(b"pcounters_add\0").unwrap();
        let mut c = pcounters_counter { id: 0 };
        assert_eq!(create(c"exit_race".as_ptr(), 0, &mut c), 0);
        for _ in 0..3 {
            std::thread::spawn(move || loop {
                add(c, 1);
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        libc::exit(7);
    }
}

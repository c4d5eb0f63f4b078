//! Running out of memory in the pool's own bookkeeping (its tables of live and free slots)
//! makes `alloc` return `None`; it never aborts the process. A child process (this test
//! binary re-run) limits its address space and allocates until `alloc` fails.

use std::io::Write;
use std::process::Command;

use rseq::pool::PercpuPool;

const CHILD_ENV: &str = "RSEQ_TEST_POOL_OOM_CHILD";

fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

fn say(msg: &str) {
    // A raw write: printing through std may allocate.
    // SAFETY: writes `msg` to stdout.
    unsafe { libc::write(1, msg.as_ptr().cast(), msg.len()) };
}

fn set_as_limit(limit: u64) {
    let rl = libc::rlimit { rlim_cur: limit, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: changes this process's address-space limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0);
}

#[test]
fn pool_oom_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // Small regions (one page, one copy): the tables of live slots grow by doubling and need
    // megabytes at once long before a one-page region cannot be mapped.
    let pool = PercpuPool::with_cpus(4096, 1).unwrap();
    let first = pool.alloc(8, 8).unwrap().cast::<u64>();
    // SAFETY: copy 0 of a live slot.
    unsafe { first.at(0).write(0x5eed) };
    // Room for the slots' addresses, made before the limit.
    let mut slots = Vec::with_capacity(8 << 20);
    set_as_limit(vm_size() + 4 * 1024 * 1024);
    while let Some(p) = pool.alloc(8, 8) {
        slots.push(p);
        if slots.len() == slots.capacity() {
            say("no failure after 8M slots\n");
            // SAFETY: ends the child.
            unsafe { libc::_exit(2) };
        }
    }
    set_as_limit(libc::RLIM_INFINITY);
    eprintln!("failed after {} slots, {} reserved", slots.len(), pool.reserved_bytes());
    // Everything made so far still works, and the pool goes on.
    // SAFETY: copy 0 of a live slot.
    let kept = unsafe { first.at(0).read() } == 0x5eed;
    let last = slots.last().map(|p| p.cast::<u64>());
    // SAFETY: copy 0 of the last live slot.
    let writable = last.is_some_and(|p| unsafe {
        p.at(0).write(7);
        p.at(0).read() == 7
    });
    let more = pool.alloc(8, 8).is_some();
    // SAFETY: each pointer is a live slot of this pool, freed once, with no other user.
    unsafe {
        for p in slots.drain(..) {
            pool.free(p, 8);
        }
    }
    let reused = pool.alloc(8, 8).is_some();
    let ok = kept && writable && more && reused;
    say(if ok { "POOL_OOM_CHILD_OK\n" } else { "POOL_OOM_CHILD_WRONG\n" });
    // SAFETY: ends the child without the test harness's output (which allocates).
    unsafe { libc::_exit(if ok { 0 } else { 3 }) };
}

#[test]
fn bookkeeping_out_of_memory_is_none_not_an_abort() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "pool_oom_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        // One malloc arena: the tables then grow through brk/mmap, which the limit counts,
        // not inside the 64 MiB that a thread's own arena reserves up front.
        .env("MALLOC_ARENA_MAX", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _ = std::io::stdout().write_all(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("POOL_OOM_CHILD_OK"),
        "child: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Running out of memory is an error code, not an abort: a child process (this test binary
//! re-run) limits its address space and creates counters until creation fails.

use std::io::Write;
use std::process::Command;

use pcounters::{Counter, Error, Index};

const CHILD_ENV: &str = "PCOUNTERS_TEST_OOM_CHILD";

fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Writes `prefix` and `n` in decimal into `buf` without allocating.
fn name<'a>(buf: &'a mut [u8; 32], prefix: &[u8], mut n: u64) -> &'a str {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = prefix.len() + digits.len() - i;
    buf[..prefix.len()].copy_from_slice(prefix);
    buf[prefix.len()..len].copy_from_slice(&digits[i..]);
    std::str::from_utf8(&buf[..len]).unwrap()
}

fn say(msg: &str) {
    // A raw write: printing through std may allocate.
    // SAFETY: writes `msg` to stdout.
    unsafe { libc::write(1, msg.as_ptr().cast(), msg.len()) };
}

#[test]
fn oom_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let first = Counter::new("oom_first", Index::CpuId).unwrap();
    first.add(11);
    let limit = vm_size() + 8 * 1024 * 1024;
    let rl = libc::rlimit { rlim_cur: limit, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: lowers this process's address-space limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0);
    let mut buf = [0u8; 32];
    let mut made = 0u64;
    let err = loop {
        match Counter::new(name(&mut buf, b"oom_", made), Index::CpuId) {
            Ok(c) => {
                c.inc();
                made += 1;
            }
            Err(e) => break e,
        }
        if made == 2_000_000 {
            say("no error after 2000000 counters\n");
            // SAFETY: ends the child.
            unsafe { libc::_exit(2) };
        }
    };
    // Everything made so far still works.
    let ok = err == Error::OutOfMemory
        && first.get() == Ok(11)
        && Counter::lookup(name(&mut buf, b"oom_", made / 2)).and_then(|c| c.get()) == Ok(1);
    say(if ok { "OOM_CHILD_OK\n" } else { "OOM_CHILD_WRONG\n" });
    // SAFETY: ends the child without the harness's output (which allocates).
    unsafe { libc::_exit(if ok { 0 } else { 3 }) };
}

#[test]
fn out_of_memory_is_an_error_code() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "oom_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _ = std::io::stdout().write_all(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OOM_CHILD_OK"),
        "child: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

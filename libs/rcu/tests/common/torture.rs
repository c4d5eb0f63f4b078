#![allow(dead_code)]
//! The rcutorture-style pipeline shared by torture.rs and modes.rs: writers publish fresh versions and retire the old one through
//! `synchronize`, `call_rcu` and the polling API in turn; retired versions are poisoned when
//! reclaimed. Readers (threads, more than CPUs, and signal handlers) check that what they
//! dereference is never poisoned and that its age (grace periods since it was retired) is
//! at most 1. Runs in the process's own registration mode; `modes.rs` reruns it in each.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POISON: u64 = 0xdead_dead_dead_dead;
const LIVE: u64 = 0x600d;

#[repr(C)]
struct Version {
    state: AtomicU64,
    /// Grace periods completed when this version was retired (u64::MAX while current).
    retired_at: AtomicU64,
    serial: u64,
}

static CURRENT: AtomicPtr<Version> = AtomicPtr::new(std::ptr::null_mut());
static BAD: AtomicU64 = AtomicU64::new(0);
static READS: AtomicU64 = AtomicU64::new(0);
static HANDLER_READS: AtomicU64 = AtomicU64::new(0);
static RECLAIMED: AtomicU64 = AtomicU64::new(0);

fn read_once() {
    let t = prcu::read_lock();
    let p = CURRENT.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: inside a read section: a version reachable from CURRENT is not reclaimed.
        let v = unsafe { &*p };
        let s = v.state.load(Ordering::Relaxed);
        let r = v.retired_at.load(Ordering::Relaxed);
        let age = if r == u64::MAX { 0 } else { prcu::grace_periods().saturating_sub(r) };
        if s != LIVE || age > 1 {
            BAD.fetch_add(1, Ordering::SeqCst);
            eprintln!("reader saw version {} state {s:#x} age {age}", v.serial);
        }
        // Hold the section for a varying while, so that a grace period that does not wait
        // for this reader reclaims the version under it.
        for _ in 0..(READS.load(Ordering::Relaxed) % 4096) {
            std::hint::spin_loop();
        }
        if v.state.load(Ordering::Relaxed) != LIVE {
            BAD.fetch_add(1, Ordering::SeqCst);
            eprintln!("version {} poisoned under a reader", v.serial);
        }
    }
    prcu::read_unlock(t).expect("token");
}

extern "C" fn on_signal(_: libc::c_int) {
    read_once();
    HANDLER_READS.fetch_add(1, Ordering::Relaxed);
}

unsafe extern "C" fn reclaim(arg: *mut libc::c_void) {
    // SAFETY: a retired version queued once.
    let v = unsafe { &*(arg as *const Version) };
    v.state.store(POISON, Ordering::SeqCst);
    RECLAIMED.fetch_add(1, Ordering::SeqCst);
    // Poisoned versions are kept (leaked) so that a late reader sees poison, not a reuse.
}

fn retire_now(v: *mut Version) {
    // SAFETY: a retired version, after its grace period.
    unsafe { reclaim(v.cast()) };
}

pub fn run_torture(seconds: f64) {
    // SAFETY: installing a plain handler for SIGUSR1.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ncpu = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut readers = Vec::new();
    for _ in 0..(2 * ncpu + 2) {
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                read_once();
                READS.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Signal storm at the readers.
    let pthreads: Vec<libc::pthread_t> =
        readers.iter().map(std::os::unix::thread::JoinHandleExt::as_pthread_t).collect();
    let stop2 = stop.clone();
    let storm = std::thread::spawn(move || {
        let mut i = 0usize;
        while !stop2.load(Ordering::Relaxed) {
            // SAFETY: the reader threads are alive until `stop` (joined after the storm).
            unsafe { libc::pthread_kill(pthreads[i % pthreads.len()], libc::SIGUSR1) };
            i += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut serial = 0u64;
    let mut polled: Vec<(u64, *mut Version)> = Vec::new();
    while Instant::now() < deadline {
        serial += 1;
        let v = Box::into_raw(Box::new(Version {
            state: AtomicU64::new(LIVE),
            retired_at: AtomicU64::new(u64::MAX),
            serial,
        }));
        let old = CURRENT.swap(v, Ordering::AcqRel);
        if old.is_null() {
            continue;
        }
        // SAFETY: `old` was current until the swap; it is leaked, so always alive.
        unsafe { &*old }.retired_at.store(prcu::grace_periods(), Ordering::SeqCst);
        match serial % 3 {
            0 => {
                prcu::synchronize();
                retire_now(old);
            }
            // SAFETY: reclaim may run once on the worker.
            1 => unsafe { prcu::call_rcu(reclaim, old.cast()) },
            _ => {
                polled.push((prcu::start_poll(), old));
                polled.retain(|&(c, v)| {
                    if prcu::poll(c) {
                        retire_now(v);
                        false
                    } else {
                        true
                    }
                });
            }
        }
    }
    for (c, v) in polled.drain(..) {
        prcu::wait_for(c);
        retire_now(v);
    }
    stop.store(true, Ordering::SeqCst);
    storm.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    prcu::barrier();
    let bad = BAD.load(Ordering::SeqCst);
    eprintln!(
        "torture: {serial} versions, {} reads, {} in handlers, {} reclaimed, {} grace periods, fast path {}",
        READS.load(Ordering::Relaxed),
        HANDLER_READS.load(Ordering::Relaxed),
        RECLAIMED.load(Ordering::SeqCst),
        prcu::grace_periods(),
        prcu::fast_path()
    );
    assert_eq!(bad, 0, "readers saw poisoned or too old versions");
    assert_eq!(RECLAIMED.load(Ordering::SeqCst), serial - 1, "every retired version reclaimed exactly once");
    assert!(READS.load(Ordering::Relaxed) > 0);
}

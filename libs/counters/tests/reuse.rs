//! Slot reuse after a delete, alone in its process (no other test may take the slots): a
//! slot is reused as soon as no add that saw the old handle can still land — no timer —
//! and the new counter starts at zero.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pcounters::{Counter, Error, Index};

fn serial() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

fn slot(c: Counter) -> u64 {
    c.to_raw() & 0xff_ffff
}

#[test]
fn deleted_slot_is_reused_at_once_and_starts_at_zero() {
    let _s = serial();
    let old = Counter::new("api_reuse_old", Index::CpuId).unwrap();
    old.add(1234);
    old.add(-1);
    old.delete().unwrap();
    // Slots are reused oldest first: other tests of this process may have left older ones.
    let mut before = Vec::new();
    let reused = loop {
        let c = Counter::new(&format!("api_reuse_new{}", before.len()), Index::MmCid).unwrap();
        if slot(c) == slot(old) {
            break c;
        }
        before.push(c);
        assert!(before.len() < 8, "the deleted slot was not reused at once");
    };
    for c in before {
        c.delete().unwrap();
    }
    assert_eq!(reused.get(), Ok(0), "a reused slot must start at zero");
    assert_eq!(old.try_add(1), Err(Error::NotFound));
    assert_eq!(old.get(), Err(Error::NotFound));
    reused.add(7);
    assert_eq!(reused.get(), Ok(7));
    assert_eq!(reused.index(), Ok(Index::MmCid.resolve()));
    // The old counter's negative add does not make the new one a gauge.
    let name = reused.name().unwrap();
    let text = pcounters::prometheus().unwrap();
    assert!(text.contains(&format!("# TYPE {name} counter\n{name} 7\n")), "{text}");
    reused.delete().unwrap();
}

#[test]
fn a_slot_whose_membarrier_failed_waits_for_a_later_one() {
    let _s = serial();
    let a = Counter::new("api_reuse_fail_a", Index::CpuId).unwrap();
    pcounters::fail_delete_fences(true);
    let (issued0, ..) = pcounters::delete_fence_stats();
    a.delete().unwrap();
    let (issued1, ..) = pcounters::delete_fence_stats();
    pcounters::fail_delete_fences(false);
    if issued1 == issued0 {
        // No membarrier was needed (a kernel without it sends every add to the fallback path).
        eprintln!("no membarrier on this kernel: nothing to fail");
        return;
    }
    // Not fenced: the slot stays out of reuse.
    let b = Counter::new("api_reuse_fail_b", Index::CpuId).unwrap();
    assert_ne!(slot(b), slot(a), "a slot was reused although its delete's membarrier failed");
    // A later delete's membarrier covers it.
    b.delete().unwrap();
    let mut made = Vec::new();
    for i in 0..2 {
        made.push(Counter::new(&format!("api_reuse_fail_{i}"), Index::CpuId).unwrap());
    }
    assert!(made.iter().any(|&c| slot(c) == slot(a)), "the slot was not reused after a later fence");
    for c in made {
        assert_eq!(c.get(), Ok(0));
        c.delete().unwrap();
    }
}

/// A fallback-path add parked between its handle check and its add, across a delete and a
/// re-create: the delete must wait for it, so the add lands in the old counter and the new
/// one starts at zero. (With the former 100 ms reuse delay, the delete returned at once,
/// the slot was reused after 100 ms, and the parked add landed in the new counter.)
#[test]
fn delete_waits_for_a_fallback_add_between_check_and_add() {
    let _s = serial();
    let c = Counter::new("api_reuse_parked", Index::CpuId).unwrap();
    pcounters::force_fallback(true);
    pcounters::park_fallback_adds(Some(true));
    let adder = std::thread::spawn(move || c.try_add(5));
    let t0 = Instant::now();
    while pcounters::park_fallback_adds(None) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the add never reached the parking point");
        std::thread::sleep(Duration::from_millis(1));
    }
    let done = Arc::new(AtomicBool::new(false));
    let deleter = {
        let done = done.clone();
        std::thread::spawn(move || {
            c.delete().unwrap();
            done.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let returned_early = done.load(Ordering::SeqCst);
    // Creating now must not hand out the slot the parked add may still write.
    let other = Counter::new("api_reuse_while_parked", Index::CpuId).unwrap();
    pcounters::park_fallback_adds(Some(false));
    assert_eq!(adder.join().unwrap(), Ok(()), "the parked add passed its check, so it counts");
    deleter.join().unwrap();
    pcounters::force_fallback(false);
    assert!(!returned_early, "the delete returned while an add that saw the live handle was in flight");
    assert_ne!(slot(other), slot(c), "the slot was reused while an add into it was in flight");
    let reused = Counter::new("api_reuse_after_parked", Index::CpuId).unwrap();
    assert_eq!(slot(reused), slot(c), "the slot was not reused after the delete completed");
    assert_eq!(reused.get(), Ok(0), "the parked add landed in the new counter");
    for c in [other, reused] {
        c.delete().unwrap();
    }
}

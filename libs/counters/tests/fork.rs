//! `fork`: the child sees every counter as it was at the fork and counts on from there,
//! the parent is unaffected, and the child can use the registry even when another thread
//! of the parent was inside it at the fork.

mod common;

use common::in_child;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use pcounters::{Counter, Error, Index};

/// The child's checks; each failure has its own exit code.
fn child_checks(c: Counter, at_fork: i64, busy: Counter, round: usize) -> i32 {
    if c.get() != Ok(at_fork) {
        return 2;
    }
    c.add(5);
    c.add(-2);
    if c.get() != Ok(at_fork + 3) {
        return 3;
    }
    // `busy` was being added to by other parent threads at the fork: the child sees some
    // value and, alone now, counts on from it exactly.
    let Ok(b) = busy.get() else { return 4 };
    for _ in 0..1000 {
        busy.inc();
    }
    if busy.get() != Ok(b + 1000) {
        return 5;
    }
    // The registry works in the child, whatever the parent's threads were doing.
    let Ok(fresh) = Counter::new(&format!("fork_child_new_{round}"), Index::MmCid) else { return 6 };
    fresh.add(7);
    if fresh.get() != Ok(7) {
        return 7;
    }
    let Ok(snap) = pcounters::snapshot() else { return 8 };
    if !snap.iter().any(|s| s.name == "fork_parent" && s.value == at_fork + 3) {
        return 9;
    }
    if fresh.delete().is_err() || c.delete().is_err() || c.get() != Err(Error::NotFound) {
        return 10;
    }
    0
}

#[test]
fn child_sees_values_at_fork_and_counts_on_alone() {
    let c = Counter::new("fork_parent", Index::CpuId).unwrap();
    let busy = Counter::new("fork_busy", Index::MmCid).unwrap();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    c.add(3);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(c.get(), Ok(120_000));

    // Disturbance at every fork: adds in flight, and the registry lock taken and released
    // all the time by another thread.
    let stop = Arc::new(AtomicBool::new(false));
    let added = Arc::new(AtomicI64::new(0));
    let adder = {
        let (stop, added) = (stop.clone(), added.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                busy.inc();
                added.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let churner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Counter::new(&format!("fork_churn_{}", i % 16), Index::CpuId).unwrap();
                t.delete().unwrap();
                let _ = pcounters::prometheus().unwrap();
                i += 1;
            }
        })
    };

    for round in 0..20 {
        let code = in_child(|| child_checks(c, 120_000, busy, round));
        assert_eq!(code, 0, "child check failed in round {round} (see child_checks)");
        // The child's adds, creates and deletes did not reach the parent.
        assert_eq!(c.get(), Ok(120_000));
        assert_eq!(Counter::lookup(&format!("fork_child_new_{round}")), Err(Error::NotFound));
    }

    stop.store(true, Ordering::Relaxed);
    adder.join().unwrap();
    churner.join().unwrap();
    assert_eq!(busy.get(), Ok(added.load(Ordering::Relaxed)));
    c.delete().unwrap();
    busy.delete().unwrap();
}

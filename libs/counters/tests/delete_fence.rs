//! A delete's membarrier runs without the registry lock: while one delete waits in it (for a
//! CPU hotplug operation, say), other threads create, look up, export and delete counters,
//! and the deleted slot is not reused before the fence completes. Alone in its process: the
//! fence hook is process-wide.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::in_child;
use pcounters::{Counter, Error, Index};

const SLOT_MASK: u64 = 0xff_ffff;
/// Longer than the library's 100 ms reuse delay.
const PAST_REUSE_DELAY: Duration = Duration::from_millis(150);

/// Starts deleting `c` on another thread while fences are held; returns once the delete has
/// marked the counter dead and freed its name, with the thread and its "returned" flag.
fn delete_held(c: Counter, name: &str) -> (std::thread::JoinHandle<()>, Arc<AtomicBool>) {
    pcounters::hold_delete_fences(true);
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let t = std::thread::spawn(move || {
        c.delete().unwrap();
        d.store(true, Ordering::SeqCst);
    });
    // Polled on a helper thread: a lookup that waits for the held fence must fail the test,
    // not hang it.
    let (tx, rx) = mpsc::channel();
    let owned = name.to_string();
    std::thread::spawn(move || {
        let start = Instant::now();
        while Counter::lookup(&owned) != Err(Error::NotFound) && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = tx.send(Counter::lookup(&owned));
    });
    match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(Err(Error::NotFound)) => {}
        Ok(other) => panic!("the delete never freed the name {name}: lookup gives {other:?}"),
        Err(_) => panic!("a lookup waited for a delete's fence: the delete holds the registry lock in its fence"),
    }
    (t, done)
}

/// Creates counters until one takes `slot`; all the others are deleted again.
fn create_until_slot(slot: u64, tag: &str) -> Option<Counter> {
    let mut made = Vec::new();
    let mut found = None;
    for i in 0..10_000 {
        let c = Counter::new(&format!("fence_{tag}_{i}"), Index::CpuId).ok()?;
        if c.to_raw() & SLOT_MASK == slot {
            found = Some(c);
            break;
        }
        made.push(c);
    }
    for c in made {
        c.delete().ok()?;
    }
    found
}

#[test]
fn registry_works_while_a_delete_waits_in_its_fence_and_the_slot_waits_for_it() {
    let _serial = common::serial();
    let victim = Counter::new("fence_victim", Index::CpuId).unwrap();
    victim.add(5);
    let slot = victim.to_raw() & SLOT_MASK;
    let (deleter, done) = delete_held(victim, "fence_victim");

    // The counter is dead for adds and reads already.
    assert_eq!(victim.try_add(1), Err(Error::NotFound));
    assert_eq!(victim.get(), Err(Error::NotFound));

    // Every registry operation completes on another thread meanwhile (with the fence under
    // the lock they would wait for it: the deadline turns that into a failure, not a hang).
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let other = Counter::new("fence_other", Index::MmCid).unwrap();
        other.add(3);
        let found = Counter::lookup("fence_other").unwrap();
        let snap = pcounters::snapshot().unwrap();
        let text = pcounters::prometheus().unwrap();
        let _ = tx.send((other, found, snap.len(), text.contains("fence_other"), pcounters::len()));
    });
    let (other, found, snap_len, exported, len) =
        rx.recv_timeout(Duration::from_secs(60)).expect("registry operations waited for a delete's fence");
    assert_eq!(found, other);
    assert_eq!(other.get(), Ok(3));
    assert!(exported && snap_len >= 1 && len >= 1);
    assert!(!done.load(Ordering::SeqCst), "the delete returned before its fence was released");

    // Past the reuse delay, a slot whose fence is pending is still not handed out.
    std::thread::sleep(PAST_REUSE_DELAY);
    let mut fresh = Vec::new();
    for i in 0..64 {
        let c = Counter::new(&format!("fence_fresh_{i}"), Index::CpuId).unwrap();
        assert_ne!(c.to_raw() & SLOT_MASK, slot, "slot {slot} reused before its delete's fence completed");
        fresh.push(c);
    }
    pcounters::hold_delete_fences(false);
    deleter.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    for c in fresh {
        c.delete().unwrap();
    }
    other.delete().unwrap();

    // Once fenced, the slot comes out of quarantine and starts at zero.
    std::thread::sleep(PAST_REUSE_DELAY);
    let reused = create_until_slot(slot, "reuse").expect("the fenced slot was never reused");
    assert_eq!(reused.get(), Ok(0));
    reused.delete().unwrap();
}

#[test]
fn a_child_forked_during_a_fence_reuses_the_slot() {
    let _serial = common::serial();
    let c = Counter::new("fence_fork_victim", Index::CpuId).unwrap();
    let slot = c.to_raw() & SLOT_MASK;
    let (deleter, done) = delete_held(c, "fence_fork_victim");
    // The deleting thread does not exist in the child: its fence must not stay pending there.
    let code = in_child(|| {
        // The hold is inherited; the child's own deletes must not wait for it.
        pcounters::hold_delete_fences(false);
        std::thread::sleep(PAST_REUSE_DELAY);
        match create_until_slot(slot, "child") {
            Some(r) if r.get() == Ok(0) => 0,
            Some(_) => 3,
            None => 4,
        }
    });
    assert!(!done.load(Ordering::SeqCst));
    pcounters::hold_delete_fences(false);
    deleter.join().unwrap();
    assert_eq!(code, 0, "child: 3 = reused slot not at zero, 4 = slot pending forever");
}

#[test]
fn deletes_waiting_for_a_membarrier_share_the_next_one() {
    let _serial = common::serial();
    const N: usize = 8;
    let counters: Vec<Counter> =
        (0..N).map(|i| Counter::new(&format!("fence_batch_{i}"), Index::CpuId).unwrap()).collect();
    let (issued_before, covered_before, _) = pcounters::delete_fence_stats();
    pcounters::hold_delete_fences(true);
    let threads: Vec<_> = counters.into_iter().map(|c| std::thread::spawn(move || c.delete().unwrap())).collect();
    let start = Instant::now();
    for i in 0..N {
        while Counter::lookup(&format!("fence_batch_{i}")) != Err(Error::NotFound) {
            assert!(start.elapsed() < Duration::from_secs(60), "delete {i} never freed its name");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Every delete has stored DEAD; give them time to queue on the fence.
    std::thread::sleep(Duration::from_millis(200));
    pcounters::hold_delete_fences(false);
    for t in threads {
        t.join().unwrap();
    }
    let (issued, covered, _) = pcounters::delete_fence_stats();
    let (issued, covered) = (issued - issued_before, covered - covered_before);
    if issued == 0 && covered == 0 {
        eprintln!("skipped: no membarrier(PRIVATE_EXPEDITED_RSEQ) on this kernel");
        return;
    }
    eprintln!("{N} concurrent deletes: {issued} membarriers, {covered} covered by another's");
    assert_eq!(issued + covered, N as u64, "every delete either issued a membarrier or was covered");
    assert!(issued < N as u64, "{N} deletes queued on one fence issued {issued} membarriers");
}

#[test]
fn a_lone_delete_issues_its_own_membarrier() {
    let _serial = common::serial();
    for i in 0..3 {
        let c = Counter::new(&format!("fence_lone_{i}"), Index::CpuId).unwrap();
        let before = pcounters::delete_fence_stats();
        c.delete().unwrap();
        let after = pcounters::delete_fence_stats();
        if after == before {
            eprintln!("skipped: no membarrier(PRIVATE_EXPEDITED_RSEQ) on this kernel");
            return;
        }
        // Nothing was in progress: no earlier membarrier began after this delete's store.
        assert_eq!((after.0 - before.0, after.1 - before.1), (1, 0), "delete {i}: (issued, covered)");
    }
}

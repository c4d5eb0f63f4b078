//! Owning another CPU's copy (the stopped word and the fence), the two halves of a stack as
//! one logical stack, and arrays with fewer copies than the CPU ids in use. Conservation is
//! checked exactly: every value is somewhere, once.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{for_a_while, serial, storm};
use rseq::pool::PercpuPool;
use rseq::{percpu_add, percpu_sum, Index, Path, PercpuArray, PercpuStack};

const CAP: usize = 32;

fn pool() -> &'static PercpuPool {
    static POOL: std::sync::OnceLock<PercpuPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| PercpuPool::new(rseq::pool::DEFAULT_STRIDE).expect("pool"))
}

/// Checks that `all` holds each of `0..n` exactly once.
fn assert_conserved(all: &[u64], n: u64, what: &str) {
    let mut count: HashMap<u64, u32> = HashMap::new();
    for &v in all {
        *count.entry(v).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, c)| **c > 1).map(|(v, _)| *v).collect();
    assert!(twice.is_empty(), "{what}: values held twice (handed out twice): {twice:?}");
    let lost: Vec<u64> = (0..n).filter(|v| !count.contains_key(v)).collect();
    assert!(lost.is_empty(), "{what}: values lost: {lost:?}");
    assert_eq!(all.len() as u64, n, "{what}: values appeared from nowhere");
}

/// A drainer thread empties random indexes of the stack (stop, fence, take, resume) while
/// poppers and pushers that migrate between CPUs keep using it, under a signal storm. Each
/// value is owned by exactly one party at any time: a popper, the drainer's list, or the
/// stack; at the end all of them together hold every value once.
fn drain_conserves_values(index: Index) {
    let _serial = serial();
    let stack = PercpuStack::alloc(pool(), CAP, index).expect("stack");
    let n_values = 64u64;
    // The drainer's list; it starts with what did not fit on the stack.
    let drained: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::new()));
    for v in 0..n_values {
        // SAFETY (every stack call in this test): the stack is live pool memory, never freed.
        if let Err(v) = unsafe { stack.push(v) } {
            drained.lock().unwrap().push(v);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let drains = Arc::new(AtomicU64::new(0));
    let drainer = {
        let (stop, drained, drains) = (stop.clone(), drained.clone(), drains.clone());
        std::thread::spawn(move || {
            let mut x = 0x1234_5678_9abc_def1u64;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % stack.ncpus() as u64) as u32;
                let mut got = Vec::new();
                match unsafe { stack.drain(i, |v| got.push(v)) } {
                    Ok(_) => {
                        drains.fetch_add(1, Ordering::Relaxed);
                        let mut d = drained.lock().unwrap();
                        d.extend(got);
                        // Give some back, so the stacks keep holding values to race for.
                        while d.len() > 8 {
                            let v = d.pop().unwrap();
                            if let Err(v) = unsafe { stack.push(v) } {
                                d.push(v);
                                break;
                            }
                        }
                    }
                    Err(rseq::DrainError::Fence(e)) => panic!("fence failed: {e}"),
                    Err(e) => panic!("drain: {e}"),
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let held: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::new()));
    let held2 = held.clone();
    let allowed = rseq::topology::allowed_cpus().expect("allowed CPUs");
    let report = storm(6, Duration::from_micros(200), None, move |w| {
        let mut mine: Vec<u64> = Vec::new();
        let mut buf = [0u64; 8];
        let mut x = 0x2545_f491_4f6c_dd1du64 ^ w as u64;
        for_a_while(|k| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if k % 512 == 0 && allowed.len() > 1 {
                // Migrate: the next operations run on another CPU's copy.
                let cpu = allowed[(x as usize >> 3) % allowed.len()];
                let _ = rseq::topology::set_thread_affinity(&[cpu]);
            }
            unsafe {
                match x % 4 {
                    0 => {
                        if let Some((v, _)) = stack.pop() {
                            mine.push(v);
                        }
                    }
                    1 => {
                        let (k, _) = stack.pop_batch(&mut buf[..1 + (x >> 8) as usize % 8]);
                        mine.extend_from_slice(&buf[..k]);
                    }
                    2 => {
                        if let Some(v) = mine.pop() {
                            if let Err(v) = stack.push(v) {
                                mine.push(v);
                            }
                        }
                    }
                    _ => {
                        let from = mine.len().saturating_sub(1 + (x >> 8) as usize % 8);
                        let (k, _) = stack.push_batch(&mine[from..]);
                        mine.drain(from..from + k);
                    }
                }
            }
        });
        held2.lock().unwrap().extend(mine);
    });
    stop.store(true, Ordering::Relaxed);
    drainer.join().expect("drainer");
    let mut all = held.lock().unwrap().clone();
    all.extend(drained.lock().unwrap().iter().copied());
    for i in 0..stack.ncpus() {
        unsafe { stack.drain(i, |v| all.push(v)) }.expect("final drain");
    }
    assert_conserved(&all, n_values, &format!("drain with {index:?}"));
    assert!(drains.load(Ordering::Relaxed) > 20, "only {} drains", drains.load(Ordering::Relaxed));
    assert!(report.aborts > 0, "no critical section was restarted ({} signals)", report.signals);
}

#[test]
fn drain_under_migrating_poppers_conserves_values_cpu_id() {
    drain_conserves_values(Index::CpuId);
}

#[test]
fn drain_under_migrating_poppers_conserves_values_mm_cid() {
    drain_conserves_values(Index::MmCid.resolve());
}

/// Values pushed on the fallback half (here: while the fallback is forced; in production:
/// after too many restarts, or on a stopped index) come back out of ordinary rseq pops.
#[test]
fn pops_find_values_pushed_on_the_fallback_half() {
    let _serial = serial();
    let stack = PercpuStack::alloc(pool(), CAP, Index::CpuId).expect("stack");
    let cpu = rseq::topology::allowed_cpus().unwrap()[0];
    std::thread::spawn(move || {
        rseq::topology::set_thread_affinity(&[cpu]).unwrap();
        rseq::force_fallback(true);
        // SAFETY: live pool memory.
        unsafe {
            for v in 0..5 {
                assert_eq!(stack.push(v), Ok(Path::Fallback));
            }
            assert_eq!(stack.push_batch(&[5, 6, 7]), (3, Path::Fallback));
        }
        rseq::force_fallback(false);
        let mut got = Vec::new();
        // SAFETY: as above.
        unsafe {
            while let Some((v, _)) = stack.pop() {
                got.push(v);
                assert!(got.len() <= 8, "more values than pushed: {got:?}");
            }
            assert_eq!(stack.push_batch(&[8, 9, 10]), (3, Path::Rseq));
            assert_eq!(stack.push(11), Ok(Path::Rseq));
            let mut buf = [0u64; 8];
            loop {
                let (k, _) = stack.pop_batch(&mut buf);
                if k == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..k]);
            }
        }
        got.sort_unstable();
        assert_eq!(got, (0..12).collect::<Vec<u64>>(), "values stranded on one half");
    })
    .join()
    .unwrap();
}

/// A structure whose arrays have fewer copies than the CPU ids the threads run on: the
/// sections find the index out of range and the operation takes the fallback (on a copy
/// reduced into range), so nothing is written past the array and the sum stays exact.
/// Before the in-section bound check, a thread on CPU 1 wrote one stride past a one-copy
/// region.
#[test]
fn arrays_smaller_than_the_cpu_ids_in_use_stay_exact() {
    let _serial = serial();
    let allowed = rseq::topology::allowed_cpus().unwrap();
    let Some(&high) = allowed.iter().find(|&&c| c >= 1) else {
        eprintln!("only CPU 0 allowed: nothing to test");
        return;
    };
    // One copy, in a mapping of its own: a write past it faults.
    let small = Box::leak(Box::new(PercpuPool::with_cpus(rseq::pool::DEFAULT_STRIDE, 1).expect("pool")));
    // SAFETY: zeroed 8-byte copies are valid values.
    let (words, fallback): (PercpuArray<u64>, PercpuArray<AtomicU64>) = unsafe {
        (small.alloc_array(8, 8, Index::CpuId).unwrap().cast(), small.alloc_array(8, 8, Index::CpuId).unwrap().cast())
    };
    let stack = PercpuStack::alloc(small, CAP, Index::CpuId).expect("stack");
    let paths = std::thread::spawn(move || {
        rseq::topology::set_thread_affinity(&[high]).unwrap();
        let mut fallback_adds = 0u64;
        for _ in 0..10_000 {
            // SAFETY: live pool arrays; the words are written only by sections.
            if unsafe { percpu_add(&words, &fallback, 1) } == Path::Fallback {
                fallback_adds += 1;
            }
        }
        // SAFETY: as above.
        unsafe {
            assert!(stack.push(7).is_ok());
            assert_eq!(stack.pop().map(|p| p.0), Some(7));
        }
        fallback_adds
    })
    .join()
    .unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { percpu_sum(&words, &fallback) }, 10_000);
    assert_eq!(paths, 10_000, "adds on CPU {high} must take the fallback path");
    // The one copy still works from CPU 0, on the rseq path.
    if allowed.contains(&0) {
        std::thread::spawn(move || {
            rseq::topology::set_thread_affinity(&[0]).unwrap();
            // SAFETY: as above.
            assert_eq!(unsafe { percpu_add(&words, &fallback, 1) }, Path::Rseq);
        })
        .join()
        .unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { percpu_sum(&words, &fallback) }, 10_001);
    }
}

/// `drain` refuses an index without a copy, and a second drainer of the same index.
#[test]
fn drain_refuses_bad_indexes() {
    let stack = PercpuStack::alloc(pool(), CAP, Index::CpuId).expect("stack");
    // SAFETY: live pool memory.
    unsafe {
        assert!(matches!(stack.drain(stack.ncpus(), |_| ()), Err(rseq::DrainError::OutOfRange)));
        assert!(matches!(stack.drain(u32::MAX, |_| ()), Err(rseq::DrainError::OutOfRange)));
        let stopped = stack.stopped_words();
        (*stopped.get(0).unwrap()).store(1, Ordering::SeqCst);
        assert!(matches!(stack.drain(0, |_| ()), Err(rseq::DrainError::Busy)));
        (*stopped.get(0).unwrap()).store(0, Ordering::SeqCst);
        assert_eq!(stack.drain(0, |_| ()).unwrap(), 0);
    }
}

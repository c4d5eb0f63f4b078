//! One copy of the foundation is unloaded with `dlclose` and loaded again, over and over,
//! while other threads keep running another copy. Threads that used the unloaded copy keep
//! living: if that copy left `rseq_cs` pointing at its (now unmapped) descriptor, the kernel
//! would kill them on their next return to user space. Each reload must also really unmap
//! the library and start from a fresh state.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use workspace_tests::{built_library, is_mapped, private_copy, RseqCopy};

const WORKERS: usize = 3;
const CYCLES: usize = 150;

#[test]
fn unload_and_reload_while_another_copy_runs() {
    let stay = Arc::new(RseqCopy::load("stay.so"));
    let cycling_path = private_copy(&built_library("rseq-copy", "librseq_copy.so"), "cycling.so");
    let cycling: Arc<RwLock<Option<RseqCopy>>> = Arc::new(RwLock::new(None));
    let cycle_adds = Arc::new(AtomicU64::new(0));
    let stay_adds = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (stay, cycling, cycle_adds, stay_adds, stop) =
                (stay.clone(), cycling.clone(), cycle_adds.clone(), stay_adds.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // The same thread alternates between the two copies.
                    for _ in 0..200 {
                        stay.add(1, (k + w as u64).is_multiple_of(2));
                        k += 1;
                    }
                    stay_adds.fetch_add(200, Ordering::Relaxed);
                    if let Some(c) = cycling.read().unwrap().as_ref() {
                        for _ in 0..50 {
                            c.add(1, k.is_multiple_of(3));
                        }
                        cycle_adds.fetch_add(50, Ordering::Relaxed);
                        assert!(c.rseq_cs_is_clear(), "rseq_cs left set by the cycling copy");
                    }
                }
            })
        })
        .collect();

    for cycle in 0..CYCLES {
        let lib = RseqCopy::load_path(&cycling_path);
        assert_eq!(lib.sum(), 0, "cycle {cycle}: a reload did not start from a fresh library");
        // The main thread uses it as well, so it too must come out with rseq_cs clear.
        lib.add(1, false);
        cycle_adds.store(1, Ordering::Relaxed);
        *cycling.write().unwrap() = Some(lib);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let lib = cycling.write().unwrap().take().unwrap();
        assert_eq!(lib.sum(), cycle_adds.load(Ordering::Relaxed), "cycle {cycle}: the cycling copy lost updates");
        lib.unload();
        if cycle % 10 == 0 {
            assert!(!is_mapped(&cycling_path), "cycle {cycle}: dlclose left the library mapped");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    assert_eq!(stay.sum(), stay_adds.load(Ordering::Relaxed), "the copy that stayed lost updates");
}

//! A critical section preempted on its own CPU must abort. Linux 6.19's rseq rework missed
//! exactly this on arm64: a thread preempted inside a section and resumed on the same CPU,
//! with the same ids, went on and committed.
//!
//! Two threads share one CPU (both pinned to it). The section thread runs long sections
//! (`try_add_if_equal_delayed`: the check, then `spins` pause/yield instructions, then the
//! add of 1 to its CPU's word, the commit) one after the other and numbers each attempt; before
//! each it publishes the attempt's number and the word's value. The competitor spins too, so
//! the scheduler alternates between them; the competitor runs only while the section thread is
//! off the CPU. Each time, it looks at the section thread's `rseq_cs` field and at the word:
//! `rseq_cs` set (the section thread stopped between the descriptor store and the clearing after
//! the section) and the word still at its published value (no commit yet) means preempted
//! inside the section, before its commit; it records the attempt's number. (`rseq_cs` set with
//! the word already incremented is a stop after the commit, before the clearing — under TCG
//! the end of a translation block sits there — and is only counted.) An attempt so recorded
//! that then reports "committed" is a commit after a preemption: the kernel did not restart
//! the section. An observation is kept only if the attempt's number did not change while the
//! competitor made it (the section thread made no progress in between).
//!
//! Without enough observed preemptions inside sections the test fails as inconclusive rather
//! than passing on nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rseq::pool::PercpuPool;
use rseq::{Index, Outcome, PercpuArray, ThreadArea};

/// Preemptions inside a section to observe before deciding.
const WANTED: u64 = 200;
/// At most this long in all (single-stepped guests are slow).
const LIMIT: Duration = Duration::from_secs(60);

fn words() -> PercpuArray<u64> {
    static POOL: std::sync::OnceLock<PercpuPool> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| PercpuPool::new(rseq::pool::DEFAULT_STRIDE).expect("pool"));
    // SAFETY: zeroed, 8-byte aligned pool copies are valid u64 values.
    unsafe { pool.alloc_array(8, 8, Index::CpuId).unwrap().cast() }
}

/// The sum of every copy (read after the sections that wrote them, on this thread).
fn total(c: &PercpuArray<u64>) -> u64 {
    (0..c.ncpus() as usize)
        // SAFETY: every index below ncpus is a live, aligned u64 copy.
        .map(|i| unsafe { c.get(i).expect("in range").read_volatile() })
        .sum()
}

#[test]
fn a_section_preempted_on_its_own_cpu_aborts() {
    let allowed = rseq::topology::allowed_cpus().expect("allowed CPUs");
    let cpu = *allowed.last().expect("a CPU");
    rseq::topology::set_thread_affinity(&[cpu]).expect("pin the section thread");
    let area = ThreadArea::current().expect("rseq area");
    // Registered (a CPU number), or registered now (libc reserved the area only).
    if area.cpu_id() >= 1 << 31 && !area.make_usable() {
        eprintln!("rseq is not registered in this process: nothing to test");
        rseq::topology::set_thread_affinity(&allowed).expect("restore the affinity");
        return;
    }
    let c = words();
    let check: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));

    // Spins for sections of about 1 ms on their own (a scheduler slice is a few ms).
    let mut spins = 256u64;
    loop {
        let t = Instant::now();
        // SAFETY: pool words for every possible CPU; `check` is a leaked atomic.
        let (o, _) = unsafe { area.try_add_if_equal_delayed(check.as_ptr(), 0, &c, 1, spins) };
        let took = t.elapsed();
        if o == Outcome::Committed && took >= Duration::from_millis(1) || spins >= 1 << 30 {
            break;
        }
        spins *= 2;
    }
    let calibrated = total(&c);

    // The section thread's rseq_cs (offset 8 of the area) and its CPU's word, read by the
    // competitor while the section thread is off the CPU.
    // SAFETY: the area lives as long as this thread, which outlives the competitor; the word
    // is a live pool copy, 8-byte aligned, so it may be read as an atomic.
    let rseq_cs: &'static AtomicU64 = unsafe { &*((area.as_ptr() as *const u8).add(8) as *const AtomicU64) };
    let word: &'static AtomicU64 =
        unsafe { &*(c.get(cpu as usize).expect("the pinned CPU's word") as *const AtomicU64) };
    let attempt: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let before: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let preempted: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let observed: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let after_commit: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let competitor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            rseq::topology::set_thread_affinity(&[cpu]).expect("pin the competitor");
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                // Only runs while the section thread is off the CPU.
                let a = attempt.load(Ordering::SeqCst);
                if a != last && rseq_cs.load(Ordering::SeqCst) != 0 {
                    let uncommitted = word.load(Ordering::SeqCst) == before.load(Ordering::SeqCst);
                    if attempt.load(Ordering::SeqCst) == a {
                        last = a;
                        if uncommitted {
                            preempted.store(a, Ordering::SeqCst);
                            observed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            after_commit.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                std::hint::spin_loop();
            }
        })
    };

    let (mut committed, mut aborted, mut aborted_after, mut late) = (0u64, 0u64, 0u64, Vec::new());
    let start = Instant::now();
    let mut n = 0u64;
    while observed.load(Ordering::Relaxed) < WANTED && start.elapsed() < LIMIT {
        n += 1;
        before.store(word.load(Ordering::SeqCst), Ordering::SeqCst);
        attempt.store(n, Ordering::SeqCst);
        // SAFETY: as above.
        let (o, idx) = unsafe { area.try_add_if_equal_delayed(check.as_ptr(), 0, &c, 1, spins) };
        let was_preempted = preempted.load(Ordering::SeqCst) == n;
        match o {
            Outcome::Committed => {
                committed += 1;
                if was_preempted {
                    late.push((n, idx));
                }
            }
            Outcome::Aborted => {
                aborted += 1;
                aborted_after += u64::from(was_preempted);
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    competitor.join().expect("competitor");
    rseq::topology::set_thread_affinity(&allowed).expect("restore the affinity");

    let sum = total(&c);
    let seen = observed.load(Ordering::Relaxed);
    eprintln!(
        "same_cpu_preemption: cpu {cpu}, {spins} spins per section, {n} sections in {:.1} s: {committed} committed, {aborted} aborted \
         ({aborted_after} of them seen preempted), {seen} preemptions inside a section seen, {} commits after one, \
         {} stops after a commit",
        start.elapsed().as_secs_f64(),
        late.len(),
        after_commit.load(Ordering::Relaxed)
    );
    assert_eq!(sum - calibrated, committed, "the words do not add up to the committed sections");
    assert!(
        late.is_empty(),
        "{} of {seen} sections preempted on their own CPU committed anyway (attempt, index): {late:?}",
        late.len()
    );
    assert!(seen >= WANTED.min(5), "inconclusive: only {seen} preemptions inside a section in {n} sections");
    assert!(aborted_after > 0, "no section seen preempted reported an abort");
}

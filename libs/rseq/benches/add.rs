//! ns per add, side by side in one run: the rseq path, the fallback path, `fetch_add` on
//! one shared line, a thread-local increment and a private increment, for 1 and 2 threads;
//! and one critical section with and without the in-section bound check (the section as it
//! was before the check, kept for this comparison only).
//!
//! `cargo bench -p rseq --bench add` (figures in docs/BENCHMARKS.md). The machines are noisy
//! guests: compare the ratios within one run, never the absolute numbers across runs.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use rseq::pool::PercpuPool;
use rseq::{percpu_add, Index, Outcome, PercpuArray, ThreadArea};

const OPS: u64 = 20_000_000;
const REPEATS: usize = 5;
const PAIRED_ROUNDS: usize = 21;

#[derive(Clone, Copy)]
enum Variant {
    Private,
    PrivateMemory,
    ThreadLocal,
    Rseq,
    SectionChecked,
    SectionUnchecked,
    Fallback,
    SharedFetchAdd,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Private => "private increment (register)",
            Variant::PrivateMemory => "private increment (memory word)",
            Variant::ThreadLocal => "thread_local! Cell increment",
            Variant::Rseq => "rseq percpu_add (cpu_id)",
            Variant::SectionChecked => "one section, bound checked (now)",
            Variant::SectionUnchecked => "one section, no bound (before)",
            Variant::Fallback => "fallback percpu_add (atomic)",
            Variant::SharedFetchAdd => "AtomicU64::fetch_add, one line",
        }
    }
}

thread_local! {
    static TL: Cell<u64> = const { Cell::new(0) };
}

struct Shared {
    words: PercpuArray<u64>,
    fallback: PercpuArray<AtomicU64>,
    line: AtomicU64,
}

fn run_thread(v: Variant, s: &Shared) {
    match v {
        Variant::Private => {
            let mut x = 0u64;
            for _ in 0..OPS {
                x = black_box(x) + 1;
            }
            black_box(x);
        }
        Variant::PrivateMemory => {
            // A word only this thread touches, read and written in memory each time, as a
            // counter is.
            let mut word = Box::new(0u64);
            let p: *mut u64 = &mut *word;
            for _ in 0..OPS {
                // SAFETY: `p` points to this thread's own live box.
                unsafe { p.write_volatile(p.read_volatile() + black_box(1)) };
            }
            black_box(word);
        }
        Variant::ThreadLocal => {
            for _ in 0..OPS {
                TL.with(|c| c.set(black_box(c.get()) + 1));
            }
        }
        Variant::Rseq | Variant::Fallback => {
            for _ in 0..OPS {
                // SAFETY: pool slots sized for every possible CPU.
                unsafe { percpu_add(&s.words, &s.fallback, black_box(1)) };
            }
        }
        Variant::SectionChecked | Variant::SectionUnchecked => {
            let area = ThreadArea::current().expect("the section rows need an rseq area");
            let checked = matches!(v, Variant::SectionChecked);
            for _ in 0..OPS {
                loop {
                    // SAFETY: pool slots sized for every possible CPU, written only by sections;
                    // the unchecked row runs only on a registered area (see `main`).
                    let (o, _) = unsafe {
                        if checked {
                            area.try_add(&s.words, black_box(1))
                        } else {
                            area.try_add_unchecked(&s.words, black_box(1))
                        }
                    };
                    if o != Outcome::Aborted {
                        assert_eq!(o, Outcome::Committed);
                        break;
                    }
                }
            }
        }
        Variant::SharedFetchAdd => {
            for _ in 0..OPS {
                s.line.fetch_add(black_box(1), Ordering::Relaxed);
            }
        }
    }
}

/// ns per operation of one run of `v` on a fresh thread.
fn one_run(v: Variant, s: &Arc<Shared>) -> f64 {
    let s = s.clone();
    std::thread::spawn(move || {
        let t = Instant::now();
        run_thread(v, &s);
        t.elapsed().as_nanos() as f64 / OPS as f64
    })
    .join()
    .unwrap()
}

/// Median ns per operation per thread over REPEATS runs of `threads` threads.
fn measure(v: Variant, threads: usize, s: &Arc<Shared>) -> f64 {
    rseq::force_fallback(matches!(v, Variant::Fallback));
    let mut samples = Vec::new();
    for _ in 0..REPEATS {
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (s, barrier) = (s.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    run_thread(v, &s);
                    t.elapsed().as_nanos() as f64 / OPS as f64
                })
            })
            .collect();
        let per: Vec<f64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        samples.push(per.iter().sum::<f64>() / per.len() as f64);
    }
    rseq::force_fallback(false);
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

fn main() {
    let pool = Box::leak(Box::new(PercpuPool::new(rseq::pool::DEFAULT_STRIDE).expect("pool")));
    // SAFETY: zeroed 8-byte pool slots are valid u64 / AtomicU64 copies.
    let (words, fallback) = unsafe {
        (pool.alloc_array(8, 8, Index::CpuId).unwrap().cast(), pool.alloc_array(8, 8, Index::CpuId).unwrap().cast())
    };
    let s = Arc::new(Shared { words, fallback, line: AtomicU64::new(0) });
    let sections = rseq::mode().is_fast();
    println!(
        "rseq mode: {}, feature size {}, {} possible CPUs",
        rseq::mode().name(),
        rseq::feature_size(),
        pool.ncpus()
    );
    println!("median of {REPEATS} runs, {OPS} adds per thread, ns per add per thread");
    let mut variants = vec![Variant::Private, Variant::PrivateMemory, Variant::ThreadLocal, Variant::Rseq];
    if sections {
        variants.extend([Variant::SectionChecked, Variant::SectionUnchecked]);
    }
    variants.extend([Variant::Fallback, Variant::SharedFetchAdd]);
    println!("{:<34} {:>10} {:>10} {:>14} {:>14}", "variant", "1 thread", "2 threads", "vs rseq (1t)", "vs rseq (2t)");
    let results: Vec<(Variant, f64, f64)> =
        variants.iter().map(|&v| (v, measure(v, 1, &s), measure(v, 2, &s))).collect();
    let (r1, r2) = results.iter().find(|r| matches!(r.0, Variant::Rseq)).map(|r| (r.1, r.2)).unwrap();
    for (v, t1, t2) in &results {
        println!("{:<34} {:>10.2} {:>10.2} {:>13.2}x {:>13.2}x", v.name(), t1, t2, t1 / r1, t2 / r2);
    }
    // SAFETY: all threads are joined; the slots are pool memory.
    let total = unsafe { rseq::percpu_sum(&s.words, &s.fallback) };
    let rows = if sections { 4 } else { 2 };
    let expect = rows * 3 * REPEATS as u64 * OPS;
    assert_eq!(total, expect, "the benchmarked counter lost updates");
    println!("check: per-CPU counter sum {total} = every add made (rseq, section and fallback runs)");
    if sections {
        let (c1, c2) = results.iter().find(|r| matches!(r.0, Variant::SectionChecked)).map(|r| (r.1, r.2)).unwrap();
        let (u1, u2) = results.iter().find(|r| matches!(r.0, Variant::SectionUnchecked)).map(|r| (r.1, r.2)).unwrap();
        println!("bound check: checked / unchecked section = {:.3} (1 thread), {:.3} (2 threads)", c1 / u1, c2 / u2);
        // The table's rows run minutes apart on a noisy guest: measure the pair again,
        // alternating, and take the median of the per-round ratios.
        let mut ratios: Vec<f64> = (0..PAIRED_ROUNDS)
            .map(|_| one_run(Variant::SectionChecked, &s) / one_run(Variant::SectionUnchecked, &s))
            .collect();
        ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "bound check, {PAIRED_ROUNDS} alternating rounds (1 thread): checked / unchecked median {:.3}, range {:.3}..{:.3}",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }
    let st = rseq::stats();
    println!("aborts {}, fallback operations {}", st.aborts, st.fallback_ops);
}

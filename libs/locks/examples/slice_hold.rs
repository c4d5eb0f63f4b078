//! Lock holders preempted, with and without the time-slice extension.
//!
//! More threads than CPUs, all pinned to the first `--cpus` allowed CPUs, take one
//! `PercpuMutex` (so they share a lock word), run a fixed work loop of about `--hold-us`
//! microseconds while holding it, and release it. Rounds alternate between a lock created
//! without and one created with `with_slice_extension(true)`; each round reports, per hold:
//! - the hold time (from the timestamp counter, no system call inside the hold: any system
//!   call would revoke a granted extension) as p50 / p99 / p99.9 / max;
//! - "preempted": holds with a gap of more than `--gap-us` between two timestamps of the work
//!   loop (the thread was off the CPU inside the hold);
//! - involuntary context switches per 1000 holds (`getrusage(RUSAGE_THREAD)`, read before the
//!   lock and after the unlock: includes switches while waiting).
//!
//! At the end the medians over rounds per mode and the ratios with/without, plus the
//! library's time-slice counters. Where the kernel lacks the extension both modes run the
//! same code and the ratios only show the noise.
//!
//! `cargo run --release -p locks --example slice_hold -- [--threads 3] [--cpus 1]
//! [--hold-us 20] [--rounds 3] [--secs 2] [--gap-us 50]`

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plocks::PercpuMutex;

struct Opts {
    threads: usize,
    cpus: usize,
    hold_us: f64,
    rounds: usize,
    secs: f64,
    gap_us: f64,
}

fn parse() -> Opts {
    let mut o = Opts { threads: 3, cpus: 1, hold_us: 20.0, rounds: 3, secs: 2.0, gap_us: 50.0 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).map(|s| s.as_str()).unwrap_or("");
        let bad = || -> ! {
            eprintln!("slice_hold: bad value {v:?} for {}", args[i]);
            std::process::exit(2)
        };
        match args[i].as_str() {
            "--threads" => o.threads = v.parse().unwrap_or_else(|_| bad()),
            "--cpus" => o.cpus = v.parse().unwrap_or_else(|_| bad()),
            "--hold-us" => o.hold_us = v.parse().unwrap_or_else(|_| bad()),
            "--rounds" => o.rounds = v.parse().unwrap_or_else(|_| bad()),
            "--secs" => o.secs = v.parse().unwrap_or_else(|_| bad()),
            "--gap-us" => o.gap_us = v.parse().unwrap_or_else(|_| bad()),
            other => {
                eprintln!("slice_hold: unknown option {other}");
                std::process::exit(2)
            }
        }
        i += 2;
    }
    if o.threads == 0 || o.cpus == 0 || o.rounds == 0 || o.hold_us <= 0.0 || o.secs <= 0.0 {
        eprintln!("slice_hold: threads, cpus, rounds, hold-us and secs must be positive");
        std::process::exit(2);
    }
    o
}

#[inline(always)]
fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(target_arch = "aarch64")]
    {
        let v: u64;
        // SAFETY: reads the virtual counter, always readable from EL0 on Linux.
        unsafe { core::arch::asm!("mrs {}, cntvct_el0", out(reg) v) };
        v
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        use std::sync::OnceLock;
        static T0: OnceLock<Instant> = OnceLock::new();
        T0.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Ticks per microsecond.
fn calibrate_ticks() -> f64 {
    let (t0, i0) = (ticks(), Instant::now());
    std::thread::sleep(Duration::from_millis(50));
    (ticks() - t0) as f64 / i0.elapsed().as_secs_f64() / 1e6
}

/// One chunk of work (about a microsecond once calibrated).
#[inline(never)]
fn chunk(n: u64, seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        x ^= x >> 29;
    }
    std::hint::black_box(x)
}

/// Iterations of `chunk` that take about 1 µs.
fn calibrate_chunk() -> u64 {
    let n = 100_000;
    let t = Instant::now();
    chunk(n, 7);
    let per = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    ((1.0 / per) as u64).max(1)
}

fn pin(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t filled with CPU_SET, then sched_setaffinity on the caller.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("slice_hold: sched_setaffinity failed");
            std::process::exit(1);
        }
    }
}

fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t filled by sched_getaffinity.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set);
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

fn nivcsw() -> i64 {
    // SAFETY: getrusage fills the zeroed struct.
    unsafe {
        let mut r: libc::rusage = core::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut r);
        r.ru_nivcsw
    }
}

#[derive(Clone, Copy, Default)]
struct Round {
    holds: u64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    preempted_per_k: f64,
    invol_per_k: f64,
}

fn pct(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn round(o: &Opts, slice: bool, cpus: &[usize], chunk_n: u64, tpu: f64) -> Round {
    let m = PercpuMutex::with_slice_extension(slice);
    let stop = AtomicBool::new(false);
    let chunks = o.hold_us.round().max(1.0) as u64;
    let gap = (o.gap_us * tpu) as u64;
    let results: Vec<(Vec<u64>, u64, i64)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..o.threads)
            .map(|t| {
                let (m, stop) = (&m, &stop);
                s.spawn(move || {
                    pin(cpus);
                    rseq::slice::enable_current_thread();
                    let mut holds = Vec::with_capacity(1 << 16);
                    let (mut preempted, mut invol) = (0u64, 0i64);
                    while !stop.load(Ordering::Relaxed) {
                        let v0 = nivcsw();
                        let i = m.lock().unwrap();
                        let start = ticks();
                        let mut last = start;
                        let mut big = false;
                        for c in 0..chunks {
                            chunk(chunk_n, c ^ t as u64);
                            let now = ticks();
                            big |= now - last > gap;
                            last = now;
                        }
                        m.unlock(i).unwrap();
                        invol += nivcsw() - v0;
                        holds.push(last - start);
                        preempted += big as u64;
                    }
                    (holds, preempted, invol)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(o.secs));
        stop.store(true, Ordering::Relaxed);
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<u64> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    all.sort_unstable();
    let n = all.len().max(1) as f64;
    let us = |t: u64| t as f64 / tpu;
    if all.is_empty() {
        return Round::default();
    }
    Round {
        holds: all.len() as u64,
        p50: us(pct(&all, 0.5)),
        p99: us(pct(&all, 0.99)),
        p999: us(pct(&all, 0.999)),
        max: us(*all.last().unwrap()),
        preempted_per_k: results.iter().map(|r| r.1).sum::<u64>() as f64 * 1000.0 / n,
        invol_per_k: results.iter().map(|r| r.2).sum::<i64>() as f64 * 1000.0 / n,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let o = parse();
    let allowed = allowed_cpus();
    let cpus: Vec<usize> = allowed.iter().copied().take(o.cpus).collect();
    let tpu = calibrate_ticks();
    let chunk_n = calibrate_chunk();
    println!(
        "slice_hold: kernel {} | slice supported {} | feature size {} | rseq {} | threads {} on cpus {:?} | hold ~{} us | {} rounds x {} s per mode | gap {} us | {:.0} ticks/us",
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        plocks::slice_supported(),
        rseq::feature_size(),
        rseq::mode().name(),
        o.threads,
        cpus,
        o.hold_us,
        o.rounds,
        o.secs,
        o.gap_us,
        tpu
    );
    let mut res: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for r in 0..o.rounds {
        // Interleaved, alternating which mode goes first.
        let order = if r % 2 == 0 { [false, true] } else { [true, false] };
        for slice in order {
            let x = round(&o, slice, &cpus, chunk_n, tpu);
            println!(
                "round {r} slice={} holds {} hold_us p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1} preempted/1k {:.2} invol/1k {:.2}",
                slice as u8, x.holds, x.p50, x.p99, x.p999, x.max, x.preempted_per_k, x.invol_per_k
            );
            res[slice as usize].push(x);
        }
    }
    let med = |s: usize, f: fn(&Round) -> f64| median(res[s].iter().map(f).collect());
    type Field = (&'static str, fn(&Round) -> f64);
    let fields: [Field; 7] = [
        ("holds", |r| r.holds as f64),
        ("p50_us", |r| r.p50),
        ("p99_us", |r| r.p99),
        ("p99.9_us", |r| r.p999),
        ("max_us", |r| r.max),
        ("preempted_per_1k", |r| r.preempted_per_k),
        ("invol_per_1k", |r| r.invol_per_k),
    ];
    for (name, f) in fields {
        let (off, on) = (med(0, f), med(1, f));
        let ratio = if off > 0.0 { format!("{:.2}", on / off) } else { "-".into() };
        println!("median {name:<17} off {off:>10.2} on {on:>10.2} on/off {ratio}");
    }
    let s = plocks::slice_stats();
    println!("slice stats: requests {} nested {} grants {} yielded {}", s.requests, s.nested, s.grants, s.yielded);
}

//! Topology, per-CPU pool and membarrier tests.

use std::collections::BTreeSet;
use std::io;

use proptest::prelude::*;
use rseq::membarrier::{self, MembarrierError};
use rseq::pool::{PercpuPool, DEFAULT_STRIDE};
use rseq::topology::{
    allowed_cpus, current_cpu, format_cpu_list, nr_possible_cpus, online_cpus, parse_cpu_list, possible_cpus,
    set_thread_affinity,
};
use rseq::PercpuPtr;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

// ---------------------------------------------------------------------------------------
// CPU range lists

/// A small deterministic generator driven by a proptest seed (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-ish in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writes `cpus` (sorted, distinct) as a range list in a random shape: each run of
/// consecutive ids split into pieces, pieces stretched back over their neighbours
/// (overlap), singletons as `a` or `a-a`, some tokens repeated, all tokens shuffled.
fn render_varied(cpus: &[u32], seed: u64, newline: bool) -> String {
    let mut rng = Rng::new(seed);
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let run_start = cpus[i];
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        let run_end = cpus[j];
        let mut s = run_start;
        while s <= run_end {
            let e = s + rng.below(u64::from(run_end - s) + 1) as u32;
            let lo = if rng.below(3) == 0 { run_start + rng.below(u64::from(s - run_start) + 1) as u32 } else { s };
            let token = if lo == e && rng.below(2) == 0 { format!("{lo}") } else { format!("{lo}-{e}") };
            if rng.below(4) == 0 {
                tokens.push(token.clone());
            }
            tokens.push(token);
            s = e + 1;
        }
        i = j + 1;
    }
    for k in (1..tokens.len()).rev() {
        let m = rng.below(k as u64 + 1) as usize;
        tokens.swap(k, m);
    }
    let mut text = tokens.join(",");
    if newline {
        text.push('\n');
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_accepts_every_shape(
        set in prop::collection::btree_set(0u32..4096, 0..96),
        dense in prop::collection::btree_set(0u32..64, 0..64),
        seed in any::<u64>(),
        newline in any::<bool>(),
    ) {
        // `dense` gives long runs; `set` sparse ids all over 0..4096.
        let all: BTreeSet<u32> = set.union(&dense).copied().collect();
        let expected: Vec<u32> = all.into_iter().collect();
        let text = render_varied(&expected, seed, newline);
        prop_assert_eq!(parse_cpu_list(&text).unwrap(), expected.clone(), "input {:?}", text);

        let canon = format_cpu_list(&expected);
        prop_assert_eq!(parse_cpu_list(&canon).unwrap(), expected.clone());
        prop_assert_eq!(format_cpu_list(&parse_cpu_list(&text).unwrap()), canon.clone());
        // Canonical: ascending, maximal ranges, singletons without a dash.
        let mut prev_end: Option<u32> = None;
        for token in canon.split(',').filter(|t| !t.is_empty()) {
            let (lo, hi) = match token.split_once('-') {
                Some((a, b)) => (a.parse::<u32>().unwrap(), b.parse::<u32>().unwrap()),
                None => { let n = token.parse::<u32>().unwrap(); (n, n) }
            };
            prop_assert!(lo < hi || !token.contains('-'), "token {}", token);
            if let Some(p) = prev_end {
                prop_assert!(lo > p + 1, "ranges {} not maximal in {}", token, canon);
            }
            prev_end = Some(hi);
        }
    }
}

#[test]
fn parse_fixed_cases() {
    assert_eq!(parse_cpu_list("").unwrap(), Vec::<u32>::new());
    assert_eq!(parse_cpu_list("\n").unwrap(), Vec::<u32>::new());
    assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
    assert_eq!(parse_cpu_list("0-1\n").unwrap(), vec![0, 1]);
    assert_eq!(parse_cpu_list(" 2 \n").unwrap(), vec![2]);
    assert_eq!(parse_cpu_list("0-3,8-11").unwrap(), vec![0, 1, 2, 3, 8, 9, 10, 11]);
    assert_eq!(parse_cpu_list("8-11,0-3,2-9").unwrap(), (0..12).collect::<Vec<u32>>());
    assert_eq!(parse_cpu_list("7-7,7").unwrap(), vec![7]);
    assert_eq!(parse_cpu_list("1048576").unwrap(), vec![1 << 20]);
}

#[test]
fn parse_rejects_bad_lists() {
    for bad in
        ["5-3", "a", "1,,2", "-1", "3-", "0-7:2", "1048577", "0-1048577", "+1", "1 2", ",1", "1,", "1-2-3", "0x3"]
    {
        let err = parse_cpu_list(bad).expect_err(bad);
        let msg = err.to_string();
        assert!(!err.token().is_empty(), "{bad}: empty token in error");
        assert!(bad.contains(err.token()), "{bad}: error names {:?}", err.token());
        assert!(msg.contains(&format!("{:?}", err.token())), "{bad}: message {msg:?}");
    }
    assert_eq!(
        parse_cpu_list("5-3").unwrap_err().to_string(),
        "invalid CPU list entry \"5-3\": range end is below its start"
    );
    assert_eq!(
        parse_cpu_list("0-7:2").unwrap_err().to_string(),
        "invalid CPU list entry \"0-7:2\": stride ranges (`a-b:n`) are not supported"
    );
    assert_eq!(
        parse_cpu_list("1,,2").unwrap_err().to_string(),
        "invalid CPU list \"1,,2\": empty entry (two commas in a row, or a comma at an end)"
    );
    assert_eq!(parse_cpu_list("4,3-").unwrap_err().token(), "3-");
    let boxed: Box<dyn std::error::Error> = Box::new(parse_cpu_list("a").unwrap_err());
    assert_eq!(
        boxed.to_string(),
        "invalid CPU list entry \"a\": expected a CPU number or a range `a-b` of CPU numbers"
    );
}

#[test]
fn format_fixed_cases() {
    assert_eq!(format_cpu_list(&[]), "");
    assert_eq!(format_cpu_list(&[5]), "5");
    assert_eq!(format_cpu_list(&[1, 3]), "1,3");
    assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 9, 10, 11]), "0-3,8-11");
    assert_eq!(format_cpu_list(&[3, 1, 2, 2, 9]), "1-3,9");
}

// ---------------------------------------------------------------------------------------
// This machine's CPUs

#[test]
fn possible_online_allowed_are_consistent() {
    let possible = possible_cpus();
    assert!(!possible.is_empty());
    assert!(possible.windows(2).all(|w| w[0] < w[1]), "possible not sorted: {possible:?}");
    assert_eq!(nr_possible_cpus(), *possible.last().unwrap() as usize + 1);
    // Cached: same slice every time.
    assert!(std::ptr::eq(possible, possible_cpus()));

    let online = online_cpus().unwrap();
    assert!(!online.is_empty());
    for cpu in &online {
        assert!(possible.contains(cpu), "online CPU {cpu} not possible ({possible:?})");
    }
    assert!(nr_possible_cpus() > *online.iter().max().unwrap() as usize);

    let allowed = allowed_cpus().unwrap();
    assert!(!allowed.is_empty());
    for cpu in &allowed {
        assert!(possible.contains(cpu), "allowed CPU {cpu} not possible ({possible:?})");
    }
    let cpu = current_cpu().expect("sched_getcpu");
    assert!((cpu as usize) < nr_possible_cpus());
}

#[test]
fn affinity_pins_the_thread() {
    std::thread::spawn(|| {
        let original = allowed_cpus().unwrap();
        for &cpu in &original {
            set_thread_affinity(&[cpu]).unwrap();
            assert_eq!(allowed_cpus().unwrap(), vec![cpu]);
            assert_eq!(current_cpu(), Some(cpu));
        }
        set_thread_affinity(&original).unwrap();
        assert_eq!(allowed_cpus().unwrap(), original);

        let empty = set_thread_affinity(&[]).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::InvalidInput);
        let beyond = set_thread_affinity(&[nr_possible_cpus() as u32]).unwrap_err();
        assert_eq!(beyond.raw_os_error(), Some(libc::EINVAL));
        let huge = set_thread_affinity(&[u32::MAX]).unwrap_err();
        assert_eq!(huge.kind(), io::ErrorKind::InvalidInput);
        // Failed calls changed nothing.
        assert_eq!(allowed_cpus().unwrap(), original);
    })
    .join()
    .unwrap();
}

// ---------------------------------------------------------------------------------------
// Per-CPU pool

fn copy_bytes<'a>(p: PercpuPtr<u8>, cpu: usize, len: usize) -> &'a [u8] {
    // SAFETY: tests only read slots they allocated, `cpu < ncpus`, `len` within the slot.
    unsafe { std::slice::from_raw_parts(p.at(cpu), len) }
}

fn fill_copy(p: PercpuPtr<u8>, cpu: usize, len: usize, value: u8) {
    // SAFETY: as in copy_bytes; the test owns the slot exclusively.
    unsafe { std::ptr::write_bytes(p.at(cpu), value, len) }
}

fn pattern(slot: usize, cpu: usize) -> u8 {
    (((slot * 31 + cpu * 7) % 255) + 1) as u8
}

#[test]
fn pool_slots_do_not_overlap_and_come_back_zeroed() {
    let ncpus = 3;
    let pool = PercpuPool::with_cpus(page_size(), ncpus).unwrap();
    let sizes = [1usize, 8, 12, 16, 24, 64, 100, 256, 1000, 2048, 3, 40];
    let mut slots: Vec<(PercpuPtr<u8>, usize)> = Vec::new();
    for k in 0..240 {
        let size = sizes[k % sizes.len()];
        let p = pool.alloc(size, 1).unwrap();
        assert_eq!(p.stride(), page_size());
        for cpu in 0..ncpus {
            assert!(copy_bytes(p, cpu, size).iter().all(|&b| b == 0), "fresh slot {k} not zero");
            fill_copy(p, cpu, size, pattern(k, cpu));
        }
        slots.push((p, size));
    }
    assert!(pool.reserved_bytes() > ncpus * page_size(), "240 slots should need several regions");
    for (k, &(p, size)) in slots.iter().enumerate() {
        for cpu in 0..ncpus {
            assert!(copy_bytes(p, cpu, size).iter().all(|&b| b == pattern(k, cpu)), "slot {k} cpu {cpu} overwritten");
        }
    }
    // No two copies of any slots share a byte.
    let mut spans: Vec<(usize, usize)> =
        slots.iter().flat_map(|&(p, size)| (0..ncpus).map(move |cpu| (p.at(cpu) as usize, size))).collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "overlap: {w:?}");
    }

    // Free every other slot, allocate the same sizes again: all zero everywhere.
    let mut kept = Vec::new();
    for (k, (p, size)) in slots.into_iter().enumerate() {
        if k % 2 == 0 {
            // SAFETY: allocated above with this size, no longer used.
            unsafe { pool.free(p, size) };
        } else {
            kept.push((k, p, size));
        }
    }
    for k in 0..120 {
        let size = sizes[(2 * k) % sizes.len()];
        let p = pool.alloc(size, 1).unwrap();
        for cpu in 0..ncpus {
            assert!(copy_bytes(p, cpu, size).iter().all(|&b| b == 0), "reused slot not zero");
            fill_copy(p, cpu, size, 0xee);
        }
    }
    for &(k, p, size) in &kept {
        for cpu in 0..ncpus {
            assert!(copy_bytes(p, cpu, size).iter().all(|&b| b == pattern(k, cpu)), "kept slot {k} cpu {cpu} damaged");
        }
    }
}

#[test]
fn pool_reuses_a_freed_slot_first() {
    let pool = PercpuPool::with_cpus(DEFAULT_STRIDE, 2).unwrap();
    let a = pool.alloc(64, 8).unwrap();
    let _b = pool.alloc(64, 8).unwrap();
    fill_copy(a, 1, 64, 0x5a);
    // SAFETY: allocated above, unused afterwards.
    unsafe { pool.free(a, 64) };
    let c = pool.alloc(40, 8).unwrap(); // same 64-byte class
    assert_eq!(c.base(), a.base());
    assert!(copy_bytes(c, 0, 64).iter().all(|&b| b == 0));
    assert!(copy_bytes(c, 1, 64).iter().all(|&b| b == 0));
}

#[test]
fn pool_maps_a_new_region_when_full() {
    let stride = page_size();
    let pool = PercpuPool::with_cpus(stride, 2).unwrap();
    assert_eq!(pool.ncpus(), 2);
    assert_eq!(pool.stride(), stride);
    assert_eq!(pool.reserved_bytes(), 2 * stride);
    let first: Vec<_> = (0..stride / 64).map(|_| pool.alloc(64, 64).unwrap()).collect();
    assert_eq!(pool.reserved_bytes(), 2 * stride);
    let lo = first.iter().map(|p| p.base() as usize).min().unwrap();
    let hi = first.iter().map(|p| p.base() as usize).max().unwrap();
    assert_eq!(hi - lo, stride - 64, "the first region is packed with 64-byte slots");
    let next = pool.alloc(64, 64).unwrap();
    assert_eq!(pool.reserved_bytes(), 4 * stride);
    let addr = next.base() as usize;
    assert!(addr < lo || addr >= lo + 2 * stride, "new slot inside the first region");
    // A whole-stride slot fits in a region of its own.
    let whole = pool.alloc(stride, 8).unwrap();
    assert_eq!(whole.base() as usize % stride.min(4096), 0);
    assert_eq!(pool.reserved_bytes(), 6 * stride);
}

#[test]
fn pool_honours_alignment_and_rejects_bad_requests() {
    let pool = PercpuPool::with_cpus(DEFAULT_STRIDE, 2).unwrap();
    let mut align = 1;
    while align <= 4096 {
        for size in [1, 24, 100] {
            let p = pool.alloc(size, align).unwrap();
            assert_eq!(p.base() as usize % align, 0, "size {size} align {align}");
            assert_eq!(p.at(1) as usize % align, 0);
        }
        align *= 2;
    }
    assert!(pool.alloc(8, 3).is_none());
    assert!(pool.alloc(8, 0).is_none());
    assert!(pool.alloc(8, 8192).is_none());
    assert!(pool.alloc(DEFAULT_STRIDE + 1, 8).is_none());
    assert!(pool.alloc(usize::MAX, 8).is_none());
    assert!(pool.alloc(DEFAULT_STRIDE, 8).is_some());
    assert!(pool.alloc(0, 1).is_some());
}

#[test]
fn pool_rejects_bad_strides() {
    let page = page_size();
    for (stride, ncpus) in [(3000, 2), (3 * page, 2), (page / 2, 2), (0, 2), (page, 0), (usize::MAX / 2 + 1, 4)] {
        let err = PercpuPool::with_cpus(stride, ncpus).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "stride {stride} ncpus {ncpus}");
    }
    let pool = PercpuPool::new(DEFAULT_STRIDE).unwrap();
    assert_eq!(pool.ncpus(), nr_possible_cpus());
    assert_eq!(pool.reserved_bytes(), nr_possible_cpus() * DEFAULT_STRIDE);
}

#[test]
fn pool_populates_only_touched_copies() {
    let page = page_size();
    let pool = PercpuPool::with_cpus(DEFAULT_STRIDE, 64).unwrap();
    assert_eq!(pool.reserved_bytes(), 64 * DEFAULT_STRIDE);
    assert_eq!(pool.resident_bytes(), 0);
    let p = pool.alloc(8, 8).unwrap();
    assert_eq!(pool.resident_bytes(), 0, "alloc touches nothing");
    fill_copy(p, 0, 8, 1);
    assert_eq!(pool.resident_bytes(), page);
    fill_copy(p, 37, 8, 1);
    assert_eq!(pool.resident_bytes(), 2 * page);
    let q = pool.alloc(8, 8).unwrap();
    fill_copy(q, 0, 8, 1); // same page as p's copy 0
    assert_eq!(pool.resident_bytes(), 2 * page);
}

#[test]
fn pool_is_send_and_sync_and_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PercpuPool>();
    let pool = PercpuPool::with_cpus(page_size(), 2).unwrap();
    let all: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| (0..200).map(|_| pool.alloc(16, 16).unwrap().base() as usize).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<usize> = all.iter().copied().collect();
    assert_eq!(distinct.len(), 800);
}

#[test]
#[should_panic(expected = "is not from this pool")]
fn pool_free_of_foreign_pointer_panics() {
    let pool = PercpuPool::with_cpus(DEFAULT_STRIDE, 2).unwrap();
    let other = PercpuPool::with_cpus(DEFAULT_STRIDE, 2).unwrap();
    let p = other.alloc(8, 8).unwrap();
    // SAFETY: the pool checks ownership before touching anything and panics.
    unsafe { pool.free(p, 8) };
}

#[test]
#[should_panic(expected = "double free")]
fn pool_double_free_panics() {
    let pool = PercpuPool::with_cpus(DEFAULT_STRIDE, 2).unwrap();
    let p = pool.alloc(8, 8).unwrap();
    // SAFETY: first free is valid; the second is detected before anything is touched.
    unsafe {
        pool.free(p, 8);
        pool.free(p, 8);
    }
}

// ---------------------------------------------------------------------------------------
// membarrier

/// Exit codes of the forked child.
fn child_code(r: &Result<(), MembarrierError>) -> i32 {
    match r {
        Err(MembarrierError::NotRegistered) => 10,
        Ok(()) => 11,
        Err(MembarrierError::Unsupported(_)) => 12,
        Err(MembarrierError::Os(_)) => 13,
    }
}

/// Runs `f` in a forked child and returns its exit status.
fn in_child(f: fn() -> i32) -> i32 {
    // SAFETY: the child runs only `f` (membarrier system calls on an already filled cache,
    // no allocation, no locks) and then `_exit`, all async-signal-safe.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let code = f();
        // SAFETY: leaves the child without running any parent-owned destructor or atexit hook.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just created; `status` is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    libc::WEXITSTATUS(status)
}

// One test, so that the unregistered check runs before this process registers.
#[test]
fn membarrier_commands() {
    let mask = membarrier::supported_commands().unwrap();
    for cmd in [
        membarrier::MEMBARRIER_CMD_PRIVATE_EXPEDITED,
        membarrier::MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
        membarrier::MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
        membarrier::MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ,
    ] {
        assert_ne!(mask & cmd as u32, 0, "command {cmd:#x} missing from {mask:#x}");
    }
    assert_eq!(membarrier::supported_commands().unwrap(), mask);

    // Before registration (the child is a fresh process as far as membarrier goes).
    assert_eq!(in_child(|| child_code(&membarrier::private_expedited_rseq(None))), 10);
    assert_eq!(in_child(|| child_code(&membarrier::private_expedited())), 10);

    membarrier::register_private_expedited().unwrap();
    membarrier::private_expedited().unwrap();
    membarrier::register_private_expedited_rseq().unwrap();
    membarrier::register_private_expedited_rseq().unwrap();
    membarrier::private_expedited_rseq(None).unwrap();
    let cpu = current_cpu().unwrap();
    membarrier::private_expedited_rseq(Some(cpu)).unwrap();
    // The kernel has nothing to restart on a CPU that is not online: success.
    membarrier::private_expedited_rseq(Some(nr_possible_cpus() as u32 + 1000)).unwrap();
    // An id the system call cannot carry (above i32::MAX).
    match membarrier::private_expedited_rseq(Some(u32::MAX)) {
        Err(MembarrierError::Os(e)) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL)),
        other => panic!("CPU id u32::MAX: {other:?}"),
    }
}

#[test]
fn membarrier_error_messages() {
    assert_eq!(
        MembarrierError::Unsupported("PRIVATE_EXPEDITED_RSEQ").to_string(),
        "membarrier PRIVATE_EXPEDITED_RSEQ is not supported by this kernel (needs Linux 5.10)"
    );
    assert_eq!(
        MembarrierError::Unsupported("PRIVATE_EXPEDITED").to_string(),
        "membarrier PRIVATE_EXPEDITED is not supported by this kernel (needs Linux 4.14)"
    );
    assert_eq!(
        MembarrierError::NotRegistered.to_string(),
        "membarrier command issued before the process registered for it (call the matching register function first)"
    );
    let os = MembarrierError::Os(io::Error::from_raw_os_error(libc::EINVAL));
    assert!(os.to_string().starts_with("membarrier failed: "), "{os}");
    assert!(std::error::Error::source(&os).is_some());
}

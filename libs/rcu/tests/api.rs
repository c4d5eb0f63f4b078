//! Grace periods against held tokens, tokens moved between threads, misuse answers, the
//! map under concurrent resizes, callbacks exactly once, the flood.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A token held in another thread, in either period, delays synchronize until released;
/// also checks nested tokens and an unlock on a different thread than the lock.
#[test]
fn synchronize_waits_for_every_preexisting_reader() {
    let _s = serial();
    for round in 0..6 {
        // Alternate the period the held reader sits in.
        prcu::synchronize();
        let outer = prcu::read_lock();
        let inner = prcu::read_lock();
        let released = Arc::new(AtomicBool::new(false));
        let r2 = released.clone();
        // The unlocks run on another thread.
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            r2.store(true, Ordering::SeqCst);
            prcu::read_unlock(inner).unwrap();
            prcu::read_unlock(outer).unwrap();
        });
        let before = prcu::grace_periods();
        prcu::synchronize();
        assert!(released.load(Ordering::SeqCst), "round {round}: synchronize returned while a reader held a token");
        assert!(prcu::grace_periods() > before);
        holder.join().unwrap();
    }
}

#[test]
fn polling_cookie_elapses_only_after_the_reader() {
    let _s = serial();
    let t = prcu::read_lock();
    let c = prcu::start_poll();
    std::thread::sleep(Duration::from_millis(20));
    assert!(!prcu::poll(c), "cookie elapsed while a reader that predates it is open");
    prcu::read_unlock(t).unwrap();
    prcu::wait_for(c);
    assert!(prcu::poll(c));
}

#[test]
fn forged_tokens_are_refused_and_leave_counts_intact() {
    let _s = serial();
    for raw in [0u64, 1, 2, u64::MAX, 0x1234_5678_9abc_def0] {
        assert_eq!(prcu::read_unlock(prcu::Token::from_raw(raw)), Err(prcu::TokenError::Forged), "{raw:#x}");
    }
    let t = prcu::read_lock();
    // A flipped tag bit.
    assert_eq!(prcu::read_unlock(prcu::Token::from_raw(t.into_raw() ^ (1 << 40))), Err(prcu::TokenError::Forged));
    prcu::read_unlock(t).unwrap();
    // The counts balance: a grace period completes.
    prcu::synchronize();
}

#[test]
fn map_lookups_never_miss_a_present_key_across_resizes() {
    let _s = serial();
    let map = Arc::new(prcu::Map::new(4));
    // Keys 0..64 are present throughout; writers add and remove 1000.. and force resizes.
    for k in 0..64 {
        map.insert(k, k * 10).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let misses = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (map, stop, misses) = (map.clone(), stop.clone(), misses.clone());
        readers.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = n % 64;
                let v = map.get(k);
                if v != Some(k * 10) && v != Some(k * 10 + 1) {
                    misses.fetch_add(1, Ordering::SeqCst);
                }
                n += 1;
            }
        }));
    }
    for round in 0..30u64 {
        for k in 1000..(1000 + 200 * (round + 1)) {
            let _ = map.insert(k, round);
        }
        for k in 0..64 {
            let v = if round % 2 == 0 { k * 10 + 1 } else { k * 10 };
            map.replace(k, v).unwrap();
        }
        for k in 1000..(1000 + 200 * (round + 1)) {
            if k % 3 == 0 {
                map.remove(k).unwrap();
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(misses.load(Ordering::SeqCst), 0, "lookups missed a key present throughout");
    // Exactly the keys the writers left.
    let mut keys: Vec<u64> = map.entries().into_iter().map(|(k, _)| k).collect();
    keys.sort_unstable();
    let mut expect: Vec<u64> = (0..64).chain((1000..7000).filter(|k| k % 3 != 0)).collect();
    expect.sort_unstable();
    assert_eq!(keys, expect);
    assert_eq!(map.len(), expect.len());
    assert_eq!(map.insert(5, 0), Err(prcu::MapError::Exists));
    assert_eq!(map.remove(999), Err(prcu::MapError::NotFound));
    assert_eq!(map.replace(999, 1), Err(prcu::MapError::NotFound));
    prcu::barrier();
}

static RAN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

unsafe extern "C" fn count_once(arg: *mut libc::c_void) {
    RAN.lock().unwrap()[arg as usize] += 1;
}

#[test]
fn callbacks_run_exactly_once_after_barrier() {
    let _s = serial();
    const N: usize = 5000;
    *RAN.lock().unwrap() = vec![0; N];
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in (t..N).step_by(4) {
                    // SAFETY: count_once only touches RAN.
                    unsafe { prcu::call_rcu(count_once, i as *mut libc::c_void) };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    prcu::barrier();
    let ran = RAN.lock().unwrap();
    let wrong: Vec<usize> = (0..N).filter(|&i| ran[i] != 1).collect();
    assert!(wrong.is_empty(), "callbacks not run exactly once: {:?}", &wrong[..wrong.len().min(10)]);
}

static FLOOD_LEFT: AtomicU64 = AtomicU64::new(0);
static FLOOD_RUN: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" fn repost(arg: *mut libc::c_void) {
    FLOOD_RUN.fetch_add(1, Ordering::Relaxed);
    // Reposts while tokens are left; a token is taken only when one is there, so the
    // chains end exactly (a wrapping decrement would let them repost forever).
    if FLOOD_LEFT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1)).is_ok() {
        // SAFETY: repost only touches atomics.
        unsafe { prcu::call_rcu(repost, arg) };
    }
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

#[test]
fn callback_flood_completes_with_bounded_memory() {
    let _s = serial();
    let gp0 = prcu::grace_periods();
    let rss0 = rss_kib();
    // 300,000 callbacks: 1,000 self-reposting chains.
    const CHAINS: u64 = 1000;
    const TOTAL: u64 = 300_000;
    FLOOD_LEFT.store(TOTAL - CHAINS, Ordering::SeqCst);
    FLOOD_RUN.store(0, Ordering::SeqCst);
    for _ in 0..CHAINS {
        // SAFETY: as above.
        unsafe { prcu::call_rcu(repost, std::ptr::null_mut()) };
    }
    while FLOOD_RUN.load(Ordering::SeqCst) < TOTAL {
        prcu::barrier();
    }
    prcu::barrier();
    let gps = prcu::grace_periods() - gp0;
    let grown = rss_kib().saturating_sub(rss0);
    eprintln!("flood: {} callbacks, {gps} grace periods, RSS +{grown} KiB", FLOOD_RUN.load(Ordering::SeqCst));
    assert_eq!(FLOOD_RUN.load(Ordering::SeqCst), TOTAL, "every chain stops when the tokens are gone");
    assert!(gps >= 3, "only {gps} grace periods during the flood");
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
}

static TRICKLE_RUN: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" fn count_trickle(_: *mut libc::c_void) {
    TRICKLE_RUN.fetch_add(1, Ordering::Relaxed);
}

/// Callbacks queued one at a time, 200 µs apart (a server retiring one item per request):
/// the worker gathers them into batches instead of running a grace period (several
/// membarriers) for each one. It waits up to `prcu`'s gather interval (2 ms) before taking
/// a batch, so 100 calls over 20+ ms need about a dozen batches; a worker that starts a
/// grace period as soon as it is woken runs about one per call.
#[test]
fn callbacks_queued_one_by_one_share_grace_periods() {
    let _s = serial();
    // The worker is running (its start alone can take longer than the whole trickle).
    // SAFETY: count_trickle only touches an atomic.
    unsafe { prcu::call_rcu(count_trickle, std::ptr::null_mut()) };
    prcu::barrier();
    TRICKLE_RUN.store(0, Ordering::SeqCst);
    let before = prcu::stats();
    const CALLS: u64 = 100;
    for _ in 0..CALLS {
        // SAFETY: count_trickle only touches an atomic.
        unsafe { prcu::call_rcu(count_trickle, std::ptr::null_mut()) };
        std::thread::sleep(Duration::from_micros(200));
    }
    prcu::barrier();
    let after = prcu::stats();
    let batches = after.callback_batches - before.callback_batches;
    let gps = after.grace_periods - before.grace_periods;
    eprintln!("trickle: {CALLS} callbacks in {batches} batches, {gps} grace periods");
    assert_eq!(TRICKLE_RUN.load(Ordering::SeqCst), CALLS);
    assert_eq!(after.callbacks_run - before.callbacks_run, CALLS, "{before:?} {after:?}");
    assert!(batches <= CALLS / 3, "{batches} batches for {CALLS} callbacks queued one by one");
    assert!(gps <= CALLS / 3, "{gps} grace periods for {CALLS} callbacks queued one by one");
}

/// A replace stores the new value into the key's node: no node is allocated and none is
/// retired, so a write-heavy user (a cache replacing values) queues no callback for the map
/// itself. Readers racing the replaces see only values that were stored, whole: each value
/// carries its key in the high half.
#[test]
fn replace_updates_in_place_and_readers_see_whole_values() {
    let _s = serial();
    let map = std::sync::Arc::new(prcu::Map::new(256));
    for k in 0..256u64 {
        map.insert(k, k << 32).unwrap();
    }
    prcu::barrier();
    let before = prcu::stats().callbacks_queued;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (map, stop) = (map.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                let mut bad = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let k = (n * 7 + r) % 256;
                    match map.get(k) {
                        Some(v) if v >> 32 == k => {}
                        _ => bad += 1,
                    }
                    n += 1;
                }
                bad
            })
        })
        .collect();
    for round in 1..=200u64 {
        for k in 0..256u64 {
            let old = map.replace(k, (k << 32) | round).unwrap();
            assert_eq!(old, (k << 32) | (round - 1), "replace returns the value it superseded");
        }
    }
    stop.store(true, Ordering::SeqCst);
    let bad: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert_eq!(bad, 0, "a lookup returned a value never stored for its key");
    assert_eq!(
        prcu::stats().callbacks_queued - before,
        0,
        "51,200 replaces queued callbacks: a replace should store in place"
    );
    for k in 0..256u64 {
        assert_eq!(map.get(k), Some((k << 32) | 200));
    }
}

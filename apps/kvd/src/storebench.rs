//! `kvd --bench-store`: the server's store (index, stripes, eviction queues, counters,
//! allocator) driven by threads in this process, without the network. On the network a
//! request costs a few microseconds of system calls and wake-ups that every stack pays
//! alike; here a get or set costs only its parts, so the stacks' difference is what is
//! measured. `kvd-check bench-store` runs every stack side by side and reports ratios.
//!
//! Each cell preloads `keys` keys, then `threads` threads run a uniform mix of `get` and
//! `set` over them for `secs` seconds (more threads than CPUs is allowed: that is where a
//! reader preempted inside a lock shows). One JSON object per cell goes to stdout. The
//! result is checked: the store's `cmd_get`, `cmd_set`, `get_hits` and `get_misses`
//! counters must equal what the threads did, every get must hit (no key is deleted, and
//! the memory limit holds all of them), and every value read must be one a thread wrote
//! for that key; a mismatch exits with status 1.

use crate::parts::{Stack, C};
use crate::proto::StoreOp;
use crate::store::{now_unix, Store, StoreResult};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

pub struct Config {
    pub threads: Vec<usize>,
    pub get_pcts: Vec<u32>,
    pub sizes: Vec<usize>,
    pub keys: usize,
    pub secs: f64,
    pub seed: u64,
}

pub const USAGE: &str = "usage: kvd --bench-store [--stack S] [--threads 1,2,64] [--mix 90,50] [--sizes 32,1024]
                   [--keys N] [--secs S] [--seed N]
  runs the store without the network: per cell (threads x get% x value size) one JSON line
  with ops, seconds and CPU seconds; exits 1 when a count or a value read is wrong";

fn bad(msg: &str) -> ! {
    eprintln!("kvd --bench-store: {msg}\n{USAGE}");
    std::process::exit(2);
}

fn list<T: std::str::FromStr>(opt: &str, v: &str, ok: impl Fn(&T) -> bool) -> Vec<T> {
    let parsed: Option<Vec<T>> = v.split(',').map(|x| x.trim().parse().ok().filter(&ok)).collect();
    match parsed {
        Some(l) if !l.is_empty() => l,
        _ => bad(&format!("{opt}: bad list {v:?}")),
    }
}

fn one<T: std::str::FromStr>(opt: &str, v: &str, ok: impl Fn(&T) -> bool) -> T {
    match v.trim().parse().ok().filter(ok) {
        Some(x) => x,
        None => bad(&format!("{opt}: bad value {v:?}")),
    }
}

/// Parses the options after `--bench-store` (and `--stack`).
pub fn parse_args(args: &[String]) -> (Stack, Config) {
    let mut stack = Stack::Ours;
    let mut cfg = Config {
        threads: vec![1, 2, 64],
        get_pcts: vec![90, 50],
        sizes: vec![32, 1024],
        keys: 10_000,
        secs: 1.0,
        seed: 1,
    };
    let mut i = 0;
    while i < args.len() {
        let opt = args[i].as_str();
        if opt == "--bench-store" {
            i += 1;
            continue;
        }
        let Some(val) = args.get(i + 1) else { bad(&format!("option {opt} needs a value")) };
        match opt {
            "--stack" => stack = Stack::parse(val).unwrap_or_else(|| bad(&format!("--stack: unknown stack {val:?}"))),
            "--threads" => cfg.threads = list(opt, val, |t: &usize| (1..=1024).contains(t)),
            "--mix" => cfg.get_pcts = list(opt, val, |p: &u32| *p <= 100),
            "--sizes" => cfg.sizes = list(opt, val, |s: &usize| (16..=512 * 1024).contains(s)),
            "--keys" => cfg.keys = one(opt, val, |k: &usize| (1..=10_000_000).contains(k)),
            "--secs" => cfg.secs = one(opt, val, |s: &f64| *s > 0.0 && *s <= 600.0),
            "--seed" => cfg.seed = one(opt, val, |_: &u64| true),
            _ => bad(&format!("unknown option {opt}")),
        }
        i += 2;
    }
    (stack, cfg)
}

/// xorshift64*: each thread's own sequence of key choices and mix draws.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn key_of(k: usize) -> Vec<u8> {
    format!("key:{k:08}").into_bytes()
}

/// A value for key `k` written by `writer` (0: the preload): the first 16 bytes name the key
/// and the writer, the rest is a pattern drawn from both, so a reader can tell a value that
/// belongs to this key from any other bytes, and a value mixed from two writers' values of
/// the key from either of them.
fn fill_value(buf: &mut [u8], k: usize, writer: u64) {
    let tag = (k as u64) ^ 0x5bd1_e995_0000_0000;
    buf[..8].copy_from_slice(&tag.to_le_bytes());
    buf[8..16].copy_from_slice(&writer.to_le_bytes());
    let seed = body_seed(k, writer);
    for (j, chunk) in buf[16..].chunks_mut(8).enumerate() {
        let w = body_word(seed, j).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

fn body_seed(k: usize, writer: u64) -> u64 {
    ((k as u64) ^ writer.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

/// Word `j` of the body (8 bytes, little-endian; the last one may be cut short).
#[inline]
fn body_word(seed: u64, j: usize) -> u64 {
    seed ^ (j as u64).wrapping_mul(0xff51_afd7_ed55_8ccd)
}

/// Checks a `get` reply (`VALUE key flags len\r\n<data>\r\nEND` without the END) for key `k`.
fn check_reply(out: &[u8], k: usize, size: usize) -> Result<(), String> {
    let nl = out.windows(2).position(|w| w == b"\r\n").ok_or("reply without a line end")?;
    let data = &out[nl + 2..out.len() - 2];
    if data.len() != size {
        return Err(format!("key {k}: value of {} bytes, expected {size}", data.len()));
    }
    // Compared in place (no allocation in the measured loop): the writer is read back from
    // the value itself, then every byte must be the one `fill_value` writes.
    let writer = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let tag = (k as u64) ^ 0x5bd1_e995_0000_0000;
    let seed = body_seed(k, writer);
    let good = data[..8] == tag.to_le_bytes()
        && data[16..].chunks(8).enumerate().all(|(j, c)| c == &body_word(seed, j).to_le_bytes()[..c.len()]);
    if !good {
        return Err(format!("key {k}: a value that no thread wrote for this key (writer field {writer:#x})"));
    }
    Ok(())
}

fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// One thread's loop: 64 operations between looks at `stop`.
#[allow(clippy::too_many_arguments)]
fn work(
    store: &Store,
    stop: &AtomicBool,
    keynames: &[Vec<u8>],
    pct: u32,
    writer: u64,
    now: i64,
    rng: &mut Rng,
    out: &mut Vec<u8>,
    val: &mut [u8],
) -> Result<Done, String> {
    let mut done = Done::default();
    let size = val.len();
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..64 {
            let r = rng.next();
            let k = (r >> 32) as usize % keynames.len();
            if (r % 100) < u64::from(pct) {
                out.clear();
                store.get(&keynames[k], false, None, now, out);
                if out.is_empty() {
                    return Err(format!("get of key {k} missed"));
                }
                check_reply(out, k, size)?;
                done.gets += 1;
            } else {
                fill_value(val, k, writer);
                if store.store(StoreOp::Set, &keynames[k], 0, 0, val, 0) != StoreResult::Stored {
                    return Err(format!("set of key {k} not stored"));
                }
                done.sets += 1;
            }
        }
    }
    Ok(done)
}

#[derive(Default, Clone, Copy)]
struct Done {
    gets: u64,
    sets: u64,
}

/// Runs every cell on `stack`, printing one JSON line per cell. Returns false when a check
/// failed (the message is on stderr).
pub fn run(stack: Stack, cfg: &Config) -> Result<bool, String> {
    let mut ok = true;
    // One store for every cell (its counters are named, once per process). Room for every
    // key with the largest value, so that nothing is evicted.
    let largest = cfg.sizes.iter().copied().max().unwrap_or(0) as u64;
    let limit = (cfg.keys as u64 * (largest + 128)).max(64 << 20) * 2;
    let store = Arc::new(Store::new(stack, limit, 1 << 20, u64::MAX)?);
    store.index.register_thread();
    for &size in &cfg.sizes {
        let mut buf = vec![0u8; size];
        for k in 0..cfg.keys {
            fill_value(&mut buf, k, 0);
            if store.store(StoreOp::Set, &key_of(k), 0, 0, &buf, 0) != StoreResult::Stored {
                return Err(format!("preload: key {k} not stored"));
            }
        }
        for &pct in &cfg.get_pcts {
            for &threads in &cfg.threads {
                let (line, good) = cell(&store, cfg, stack, threads, pct, size);
                println!("{line}");
                ok &= good;
            }
        }
    }
    Ok(ok)
}

fn cell(store: &Arc<Store>, cfg: &Config, stack: Stack, threads: usize, pct: u32, size: usize) -> (String, bool) {
    let c = &store.counters;
    let before = [C::cmd_get, C::cmd_set, C::get_hits, C::get_misses].map(|x| c.get(x));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(threads + 1));
    let keynames: Arc<Vec<Vec<u8>>> = Arc::new((0..cfg.keys).map(key_of).collect());
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (store, stop, start) = (store.clone(), stop.clone(), start.clone());
            let (keynames, seed) = (keynames.clone(), cfg.seed);
            std::thread::spawn(move || -> Result<Done, String> {
                store.index.register_thread();
                let writer = (t as u64 + 1) | (u64::from(pct) << 32);
                let mut rng = Rng((seed ^ (t as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
                let mut out = Vec::with_capacity(size + 64);
                let mut val = vec![0u8; size];
                let now = now_unix();
                start.wait();
                let done = work(&store, &stop, &keynames, pct, writer, now, &mut rng, &mut out, &mut val)
                    .map_err(|e| format!("thread {t}: {e}"));
                store.index.unregister_thread();
                done
            })
        })
        .collect();
    let cpu0 = cpu_seconds();
    start.wait();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(cfg.secs));
    stop.store(true, Ordering::Relaxed);
    let mut total = Done::default();
    let mut errors = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(d)) => {
                total.gets += d.gets;
                total.sets += d.sets;
            }
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a thread panicked".into()),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let after = [C::cmd_get, C::cmd_set, C::get_hits, C::get_misses].map(|x| c.get(x));
    let d: Vec<i64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let expect = [total.gets as i64, total.sets as i64, total.gets as i64, 0];
    if errors.is_empty() && d != expect {
        errors.push(format!("counters cmd_get/cmd_set/get_hits/get_misses moved by {d:?}, the threads did {expect:?}"));
    }
    for e in errors.iter().take(3) {
        eprintln!("kvd --bench-store: stack {} threads {threads} get% {pct} size {size}: {e}", stack.name());
    }
    let line = format!(
        "{{\"stack\":\"{}\",\"threads\":{threads},\"get_pct\":{pct},\"size\":{size},\"gets\":{},\"sets\":{},\"secs\":{secs:.4},\"cpu_secs\":{cpu:.4},\"ok\":{}}}",
        stack.name(),
        total.gets,
        total.sets,
        errors.is_empty()
    );
    (line, errors.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut r = format!("VALUE {} 0 {}\r\n", String::from_utf8_lossy(key), data.len()).into_bytes();
        r.extend_from_slice(data);
        r.extend_from_slice(b"\r\n");
        r
    }

    #[test]
    fn a_value_written_for_the_key_passes() {
        for writer in [0, 7, (3 << 32) | 5] {
            let mut v = vec![0u8; 40];
            fill_value(&mut v, 123, writer);
            check_reply(&reply(b"key:00000123", &v), 123, 40).unwrap();
        }
    }

    #[test]
    fn wrong_bytes_length_or_key_fail() {
        let mut v = vec![0u8; 40];
        fill_value(&mut v, 123, 9);
        let mut torn = v.clone();
        torn[30] ^= 1;
        assert!(check_reply(&reply(b"k", &torn), 123, 40).unwrap_err().contains("no thread wrote"));
        let mut other = vec![0u8; 40];
        fill_value(&mut other, 124, 9);
        assert!(check_reply(&reply(b"k", &other), 123, 40).is_err(), "another key's value");
        let mut second = vec![0u8; 40];
        fill_value(&mut second, 123, 10);
        let mut mixed = v.clone();
        mixed[24..].copy_from_slice(&second[24..]);
        assert!(check_reply(&reply(b"k", &mixed), 123, 40).is_err(), "two writers' values mixed");
        check_reply(&reply(b"k", &second), 123, 40).unwrap();
        assert!(check_reply(&reply(b"k", &v[..39]), 123, 40).unwrap_err().contains("39 bytes"));
        assert!(check_reply(b"VALUE k 0 40", 123, 40).is_err(), "no line end");
    }
}

//! The load generator: closed-loop clients (one outstanding request per connection, one thread
//! per connection) running a get/set mix over a preloaded key space, with per-request latency
//! histograms; the same load for every server, cells interleaved across servers and runs.

use crate::client::Conn;
use crate::rng::Rng;
use crate::server::{cpu_secs, rss_kib, Kind, Rseq, Server};
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Latency histogram: 64 powers of two of nanoseconds, 32 linear steps within each (~3%).
#[derive(Clone)]
pub struct Hist(Vec<u64>);

const SUB: u32 = 5;

impl Default for Hist {
    fn default() -> Self {
        Hist(vec![0; 64 << SUB])
    }
}

impl Hist {
    fn bucket(ns: u64) -> usize {
        let ns = ns.max(1);
        let msb = 63 - ns.leading_zeros();
        if msb < SUB {
            return ns as usize;
        }
        let sub = (ns >> (msb - SUB)) & ((1 << SUB) - 1);
        (((msb - SUB + 1) as usize) << SUB) | sub as usize
    }
    fn lower(b: usize) -> u64 {
        let hi = (b >> SUB) as u32;
        let sub = (b & ((1 << SUB) - 1)) as u64;
        if hi == 0 {
            return sub;
        }
        ((1u64 << SUB) | sub) << (hi - 1)
    }
    pub fn record(&mut self, ns: u64) {
        self.0[Self::bucket(ns)] += 1;
    }
    pub fn merge(&mut self, o: &Hist) {
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a += b;
        }
    }
    /// The q-quantile in microseconds (bucket lower bound).
    pub fn quantile_us(&self, q: f64) -> f64 {
        let total: u64 = self.0.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut acc = 0;
        for (b, n) in self.0.iter().enumerate() {
            acc += n;
            if acc >= target {
                return Self::lower(b) as f64 / 1000.0;
            }
        }
        0.0
    }
}

/// The bench's parameters.
#[derive(Clone, Debug)]
pub struct Params {
    pub servers: Vec<Kind>,
    pub conns: Vec<usize>,
    pub get_pcts: Vec<u32>,
    pub sizes: Vec<usize>,
    pub runs: usize,
    pub secs: f64,
    pub keys: usize,
    pub threads: usize,
    pub rss_keys: usize,
    pub seed: u64,
}

/// One measured cell of one run.
#[derive(Clone, Debug)]
pub struct Sample {
    pub server: String,
    pub get_pct: u32,
    pub size: usize,
    pub conns: usize,
    pub run: usize,
    pub ops_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// CPU time of the client process (and of the server) divided by wall time: 1.0 = one CPU.
    pub client_cpu: f64,
    pub server_cpu: f64,
    pub errors: u64,
}

fn self_cpu() -> f64 {
    cpu_secs(std::process::id()).unwrap_or(0.0)
}

fn key(size: usize, i: u64) -> String {
    format!("b{size}:k{i}")
}

fn preload(s: &Server, keys: usize, size: usize) -> io::Result<()> {
    let value = vec![b'x'; size];
    let parts = 4usize;
    let hs: Vec<_> = (0..parts)
        .map(|p| {
            let addr = s.addr;
            let value = value.clone();
            std::thread::spawn(move || -> io::Result<()> {
                let mut c = Conn::connect(addr)?;
                let mut i = (p..keys).step_by(parts).map(|i| key(size, i as u64)).peekable();
                while i.peek().is_some() {
                    let mut chunk = i.by_ref().take(500);
                    c.load_noreply(&mut chunk, &value)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in hs {
        h.join().map_err(|_| io::Error::other("loader panicked"))??;
    }
    Ok(())
}

fn measure(s: &Server, p: &Params, get_pct: u32, size: usize, conns: usize, run: usize) -> Sample {
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(conns + 1));
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let addr = s.addr;
            let (stop, barrier) = (stop.clone(), barrier.clone());
            let keys = p.keys as u64;
            let seed = p.seed ^ ((run as u64) << 32) ^ c as u64;
            std::thread::spawn(move || -> (u64, u64, Hist) {
                let mut h = Hist::default();
                let conn = Conn::connect(addr);
                barrier.wait();
                let mut conn = match conn {
                    Ok(c) => c,
                    Err(_) => return (0, 1, h),
                };
                let mut rng = Rng::new(seed);
                let value = vec![b'y'; size];
                let mut buf = Vec::with_capacity(size + 2);
                let (mut ops, mut errors) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let k = key(size, rng.below(keys));
                    let t0 = Instant::now();
                    let r = if (rng.below(100) as u32) < get_pct {
                        conn.get_one(&k, &mut buf).map(|_| ())
                    } else {
                        conn.store("set", &k, 0, &value, None).map(|_| ())
                    };
                    if r.is_err() {
                        errors += 1;
                        break;
                    }
                    h.record(t0.elapsed().as_nanos() as u64);
                    ops += 1;
                }
                (ops, errors, h)
            })
        })
        .collect();
    barrier.wait();
    let pid = s.pid();
    let (c0, s0, t0) = (self_cpu(), pid.and_then(cpu_secs).unwrap_or(0.0), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(p.secs));
    stop.store(true, Ordering::Relaxed);
    let (c1, s1, wall) = (self_cpu(), pid.and_then(cpu_secs).unwrap_or(0.0), t0.elapsed().as_secs_f64());
    let mut hist = Hist::default();
    let (mut ops, mut errors) = (0, 0);
    for h in handles {
        if let Ok((o, e, hh)) = h.join() {
            ops += o;
            errors += e;
            hist.merge(&hh);
        } else {
            errors += 1;
        }
    }
    let wall_all = t0.elapsed().as_secs_f64();
    Sample {
        server: s.kind.name(),
        get_pct,
        size,
        conns,
        run,
        // The clients stop after their request in flight: count ops over the time until joined.
        ops_per_s: ops as f64 / wall_all,
        p50_us: hist.quantile_us(0.50),
        p99_us: hist.quantile_us(0.99),
        client_cpu: (c1 - c0) / wall,
        server_cpu: (s1 - s0) / wall,
        errors,
    }
}

/// Median of a slice (the mean of the middle two for an even count).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median of each cell over the runs.
#[derive(Clone, Debug)]
pub struct Cell {
    pub server: String,
    pub get_pct: u32,
    pub size: usize,
    pub conns: usize,
    pub ops_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub client_cpu: f64,
    pub server_cpu: f64,
    pub errors: u64,
}

pub struct Results {
    pub samples: Vec<Sample>,
    pub cells: Vec<Cell>,
    /// (server, RSS KiB after loading, curr_items)
    pub rss: Vec<(String, Option<u64>, u64)>,
}

/// Runs every cell on every server, `runs` times interleaved, then the RSS measurement.
pub fn run(p: &Params) -> io::Result<Results> {
    let mut servers = Vec::new();
    for k in &p.servers {
        let s = Server::start(k, p.threads, 1024, Rseq::Libc)
            .map_err(|e| io::Error::other(format!("starting {}: {e}", k.name())))?;
        for &size in &p.sizes {
            preload(&s, p.keys, size)?;
        }
        servers.push(s);
    }
    let mut samples = Vec::new();
    let ncells = p.get_pcts.len() * p.sizes.len() * p.conns.len();
    let mut done = 0;
    for run in 0..p.runs {
        for &g in &p.get_pcts {
            for &size in &p.sizes {
                for &c in &p.conns {
                    done += 1;
                    eprint!("\rrun {}/{} cell {done}/{}   ", run + 1, p.runs, ncells * p.runs);
                    // Rotate the server order from cell to cell, so that none always goes first.
                    let n = servers.len();
                    for i in 0..n {
                        let s = &mut servers[(i + done) % n];
                        if let Some(st) = s.exited() {
                            return Err(io::Error::other(format!(
                                "server {} exited during the bench: {st}",
                                s.kind.name()
                            )));
                        }
                        samples.push(measure(s, p, g, size, c, run));
                    }
                }
            }
        }
    }
    eprintln!();
    drop(servers);
    let mut cells = Vec::new();
    for k in &p.servers {
        for &g in &p.get_pcts {
            for &size in &p.sizes {
                for &c in &p.conns {
                    let m: Vec<&Sample> = samples
                        .iter()
                        .filter(|s| s.server == k.name() && s.get_pct == g && s.size == size && s.conns == c)
                        .collect();
                    let med = |f: &dyn Fn(&Sample) -> f64| median(&mut m.iter().map(|s| f(s)).collect::<Vec<_>>());
                    cells.push(Cell {
                        server: k.name(),
                        get_pct: g,
                        size,
                        conns: c,
                        ops_per_s: med(&|s| s.ops_per_s),
                        p50_us: med(&|s| s.p50_us),
                        p99_us: med(&|s| s.p99_us),
                        client_cpu: med(&|s| s.client_cpu),
                        server_cpu: med(&|s| s.server_cpu),
                        errors: m.iter().map(|s| s.errors).sum(),
                    });
                }
            }
        }
    }
    let mut rss = Vec::new();
    if p.rss_keys > 0 {
        for k in &p.servers {
            let s = Server::start(k, p.threads, 1024, Rseq::Libc)?;
            let before = s.pid().and_then(rss_kib);
            preload(&s, p.rss_keys, 32)?;
            std::thread::sleep(Duration::from_millis(300));
            let after = s.pid().and_then(rss_kib);
            let items = Conn::connect(s.addr)?.stats()?.get("curr_items").and_then(|v| v.parse().ok()).unwrap_or(0);
            eprintln!(
                "{}: RSS {:?} KiB at start, {:?} KiB after loading {} keys ({} items)",
                k.name(),
                before,
                after,
                p.rss_keys,
                items
            );
            rss.push((k.name(), after, items));
        }
    }
    Ok(Results { samples, cells, rss })
}

fn find<'a>(cells: &'a [Cell], server: &str, g: u32, size: usize, c: usize) -> Option<&'a Cell> {
    cells.iter().find(|x| x.server == server && x.get_pct == g && x.size == size && x.conns == c)
}

/// The readable table: one row per cell and server, ratios of `ours` to each peer.
pub fn table(p: &Params, r: &Results) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<10} {:>5} {:>5} {:>5} {:>10} {:>8} {:>8} {:>7} {:>7} {:>9} {:>8} {:>8}",
        "server",
        "get%",
        "size",
        "conns",
        "kops/s",
        "p50 us",
        "p99 us",
        "cli cpu",
        "srv cpu",
        "srv us/op",
        "ours/x",
        "p99 x/o"
    );
    let has_ours = p.servers.iter().any(|k| k.name() == "ours");
    for &g in &p.get_pcts {
        for &size in &p.sizes {
            for &c in &p.conns {
                let ours = find(&r.cells, "ours", g, size, c);
                for k in &p.servers {
                    let Some(x) = find(&r.cells, &k.name(), g, size, c) else { continue };
                    let (ratio, p99r) = match ours {
                        Some(o) if has_ours && k.name() != "ours" => {
                            (format!("{:.2}", o.ops_per_s / x.ops_per_s), format!("{:.2}", x.p99_us / o.p99_us))
                        }
                        _ => ("-".into(), "-".into()),
                    };
                    let _ = writeln!(
                        t,
                        "{:<10} {:>5} {:>5} {:>5} {:>10.1} {:>8.1} {:>8.1} {:>7.2} {:>7.2} {:>9} {:>8} {:>8}{}",
                        x.server,
                        g,
                        size,
                        c,
                        x.ops_per_s / 1000.0,
                        x.p50_us,
                        x.p99_us,
                        x.client_cpu,
                        x.server_cpu,
                        server_us_per_op(x),
                        ratio,
                        p99r,
                        if x.errors > 0 { format!("  ({} errors)", x.errors) } else { String::new() }
                    );
                }
            }
        }
    }
    if !r.rss.is_empty() {
        let _ = writeln!(t, "\nRSS after loading {} keys of 32 B:", p.rss_keys);
        for (s, kib, items) in &r.rss {
            let _ = writeln!(
                t,
                "  {:<10} {:>8} MiB  ({} items)",
                s,
                kib.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
                items
            );
        }
    }
    t
}

/// Server CPU microseconds per request (CPU seconds per wall second over requests per
/// second): on a host where client and server share the CPUs, the cost that throughput alone
/// hides. "-" for a server whose CPU time is not known (one given as HOST:PORT).
fn server_us_per_op(x: &Cell) -> String {
    if x.server_cpu > 0.0 && x.ops_per_s > 0.0 {
        format!("{:.2}", x.server_cpu / x.ops_per_s * 1e6)
    } else {
        "-".into()
    }
}

/// Every sample, then every median, as CSV.
pub fn csv(r: &Results) -> String {
    let mut t =
        String::from("kind,server,get_pct,size,conns,run,ops_per_s,p50_us,p99_us,client_cpu,server_cpu,errors\n");
    for s in &r.samples {
        let _ = writeln!(
            t,
            "sample,{},{},{},{},{},{:.0},{:.2},{:.2},{:.3},{:.3},{}",
            s.server,
            s.get_pct,
            s.size,
            s.conns,
            s.run,
            s.ops_per_s,
            s.p50_us,
            s.p99_us,
            s.client_cpu,
            s.server_cpu,
            s.errors
        );
    }
    for c in &r.cells {
        let _ = writeln!(
            t,
            "median,{},{},{},{},,{:.0},{:.2},{:.2},{:.3},{:.3},{}",
            c.server, c.get_pct, c.size, c.conns, c.ops_per_s, c.p50_us, c.p99_us, c.client_cpu, c.server_cpu, c.errors
        );
    }
    for (s, kib, items) in &r.rss {
        let _ = writeln!(t, "rss_kib,{s},,,,,{},,,,,{items}", kib.unwrap_or(0));
    }
    t
}

/// The medians and RSS as JSON.
pub fn json(p: &Params, r: &Results) -> String {
    let mut t = format!(
        "{{\"runs\":{},\"secs\":{},\"keys\":{},\"server_threads\":{},\"cells\":[",
        p.runs, p.secs, p.keys, p.threads
    );
    for (i, c) in r.cells.iter().enumerate() {
        let _ = write!(
            t,
            "{}{{\"server\":\"{}\",\"get_pct\":{},\"size\":{},\"conns\":{},\"ops_per_s\":{:.0},\"p50_us\":{:.2},\"p99_us\":{:.2},\"client_cpu\":{:.3},\"server_cpu\":{:.3},\"errors\":{}}}",
            if i > 0 { "," } else { "" },
            c.server,
            c.get_pct,
            c.size,
            c.conns,
            c.ops_per_s,
            c.p50_us,
            c.p99_us,
            c.client_cpu,
            c.server_cpu,
            c.errors
        );
    }
    t.push_str("],\"rss\":[");
    for (i, (s, kib, items)) in r.rss.iter().enumerate() {
        let _ = write!(
            t,
            "{}{{\"server\":\"{s}\",\"rss_kib\":{},\"items\":{items}}}",
            if i > 0 { "," } else { "" },
            kib.map_or("null".into(), |k| k.to_string())
        );
    }
    t.push_str("]}\n");
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_the_bucket_precision() {
        let mut h = Hist::default();
        for ns in 1..=100_000u64 {
            h.record(ns * 10);
        }
        let p50 = h.quantile_us(0.5);
        let p99 = h.quantile_us(0.99);
        assert!((p50 - 500.0).abs() / 500.0 < 0.04, "{p50}");
        assert!((p99 - 990.0).abs() / 990.0 < 0.04, "{p99}");
        assert_eq!(Hist::lower(Hist::bucket(7)), 7);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}

//! alloc-bench: runs the C allocation workloads (workloads/workloads.c) under several malloc
//! implementations, each run a child process with `LD_PRELOAD` set to one of them, and reports
//! throughput and peak RSS side by side with ratios.
//!
//! Each cell (workload × threads × allocator) is the median of `--runs` runs; within a cell the
//! runs are interleaved round-robin over the allocators (rotating the first one each round), so
//! a disturbance of the machine falls on all of them alike.

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The C workloads, in report order: (name, full size, quick size, thread counts it runs with).
/// A size is the total number of malloc/free pairs, split over the threads, except for
/// thread-churn, where it is the number of threads started (32 pairs each).
const WORKLOADS: &[(&str, u64, u64, &[u32])] = &[
    ("larson", 2_000_000, 100_000, &[1, 2, 8]),
    ("xmalloc-test", 2_000_000, 100_000, &[1, 2, 8]),
    ("cache-scratch", 200_000, 20_000, &[1, 2, 8]),
    ("mstress", 1_000_000, 50_000, &[1, 2, 8]),
    ("glibc-simple", 5_000_000, 200_000, &[1]),
    ("glibc-thread", 4_000_000, 200_000, &[1, 2, 8]),
    ("thread-churn", 100_000, 2_000, &[1, 2, 8]),
];

const PEERS: &[(&str, &str)] =
    &[("jemalloc", "libjemalloc.so.2"), ("mimalloc", "libmimalloc.so.2"), ("tcmalloc", "libtcmalloc_minimal.so.4")];

const OURS: &str = "ours";
const OURS_FILE: &str = "libpalloc_preload.so";

#[derive(Parser, Debug)]
#[command(
    name = "alloc-bench",
    about = "Allocation workloads under glibc, jemalloc, mimalloc, tcmalloc-minimal and ours (LD_PRELOAD), side by side"
)]
struct Args {
    /// Small sizes and one run per cell (a smoke test of a few seconds)
    #[arg(long)]
    quick: bool,
    /// Runs per cell (the median is reported); default 5, or 1 with --quick
    #[arg(long)]
    runs: Option<u32>,
    /// Comma-separated workloads (default: all)
    #[arg(long, value_delimiter = ',')]
    workloads: Option<Vec<String>>,
    /// Comma-separated thread counts (default 1,2,8; each workload keeps only those it runs with)
    #[arg(long, value_delimiter = ',')]
    threads: Option<Vec<u32>>,
    /// Comma-separated allocators: glibc, jemalloc, mimalloc, tcmalloc, ours, or NAME=PATH for
    /// any other preloadable malloc (default: all five; missing libraries are skipped)
    #[arg(long, value_delimiter = ',')]
    allocators: Option<Vec<String>>,
    /// Path of our drop-in malloc (default: env PALLOC_PRELOAD, else target/release/libpalloc_preload.so)
    #[arg(long)]
    ours: Option<PathBuf>,
    /// Multiply every workload size by this factor
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Base seed; run r of every cell uses seed + r for every allocator
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds after which a run is killed and counted as failed
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Write all results (every run, medians, ratios) as JSON to this file
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
struct Allocator {
    name: String,
    /// None: glibc's malloc (no LD_PRELOAD).
    path: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
struct Run {
    seed: u64,
    ops: u64,
    elapsed_ns: u64,
    ops_per_s: f64,
    peak_rss_kib: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
struct CellResult {
    runs: Vec<Run>,
    failures: Vec<String>,
    ops_per_s_median: Option<f64>,
    peak_rss_kib_median: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Cell {
    workload: String,
    threads: u32,
    size: u64,
    results: BTreeMap<String, CellResult>,
    /// (numerator, denominator) → ratio of medians, throughput and peak RSS.
    ratios: Vec<Ratio>,
}

#[derive(Debug, Serialize)]
struct Ratio {
    num: String,
    den: String,
    throughput: Option<f64>,
    peak_rss: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    quick: bool,
    runs: u32,
    seed: u64,
    scale: f64,
    nproc: usize,
    kernel: String,
    allocators: Vec<Allocator>,
    skipped: Vec<Skipped>,
    ratio_pairs: Vec<(String, String)>,
    cells: Vec<Cell>,
}

fn lib_dir() -> PathBuf {
    PathBuf::from(format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH))
}

/// Candidate locations of our drop-in, most specific first.
fn ours_candidates(flag: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = flag {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os("PALLOC_PRELOAD") {
        return vec![PathBuf::from(p)];
    }
    let mut out = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        out.push(PathBuf::from(dir).join("release").join(OURS_FILE));
    }
    // target/{debug,release}/alloc-bench → target/release/libpalloc_preload.so
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.parent().and_then(Path::parent) {
            out.push(target.join("release").join(OURS_FILE));
        }
    }
    out.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release").join(OURS_FILE));
    out.dedup();
    out
}

/// An allocator left out of the run: (name, why).
type Skipped = (String, String);

/// Resolves the allocator list; returns the allocators to run and those skipped.
fn resolve_allocators(args: &Args) -> Result<(Vec<Allocator>, Vec<Skipped>)> {
    let explicit = args.allocators.is_some();
    let names: Vec<String> = args
        .allocators
        .clone()
        .unwrap_or_else(|| ["glibc", "jemalloc", "mimalloc", "tcmalloc", OURS].iter().map(|s| s.to_string()).collect());
    let mut run = Vec::new();
    let mut skipped = Vec::new();
    for spec in names {
        let (name, path) = if spec == "glibc" {
            (spec.clone(), None)
        } else if let Some((n, p)) = spec.split_once('=') {
            (n.to_string(), Some(PathBuf::from(p)))
        } else if spec == OURS {
            let candidates = ours_candidates(args.ours.as_deref());
            let found = candidates.iter().find(|p| p.is_file()).cloned();
            match found {
                Some(p) => (spec.clone(), Some(p)),
                None => {
                    let list: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
                    let why = format!(
                        "not found at {} (build it with `cargo build --release`, or point --ours / PALLOC_PRELOAD at it)",
                        list.join(" or ")
                    );
                    // A path the user gave must exist; the default location may not yet.
                    if args.ours.is_some() || std::env::var_os("PALLOC_PRELOAD").is_some() {
                        bail!("ours: {why}");
                    }
                    skipped.push((spec.clone(), why));
                    continue;
                }
            }
        } else if let Some((_, file)) = PEERS.iter().find(|(n, _)| *n == spec) {
            (spec.clone(), Some(lib_dir().join(file)))
        } else {
            bail!("unknown allocator '{spec}' (known: glibc, jemalloc, mimalloc, tcmalloc, ours, or NAME=PATH)");
        };
        if name.is_empty() || name.contains(char::is_whitespace) {
            bail!("bad allocator name in '{spec}'");
        }
        if run.iter().any(|a: &Allocator| a.name == name) {
            bail!("allocator '{name}' given twice");
        }
        if let Some(p) = &path {
            if !p.is_file() {
                let why = format!("{} does not exist (ci/install-deps.sh installs the Debian peers)", p.display());
                if explicit {
                    bail!("{name}: {why}");
                }
                skipped.push((name, why));
                continue;
            }
        }
        run.push(Allocator { name, path });
    }
    if run.is_empty() {
        bail!("no allocator to run");
    }
    Ok((run, skipped))
}

/// Which ratios to report: ours / each peer when ours runs, else each peer / glibc.
fn ratio_pairs(allocators: &[Allocator]) -> Vec<(String, String)> {
    let names: Vec<&str> = allocators.iter().map(|a| a.name.as_str()).collect();
    if names.contains(&OURS) {
        names.iter().filter(|n| **n != OURS).map(|n| (OURS.to_string(), n.to_string())).collect()
    } else if names.contains(&"glibc") {
        names.iter().filter(|n| **n != "glibc").map(|n| (n.to_string(), "glibc".to_string())).collect()
    } else {
        Vec::new()
    }
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.partial_cmp(b).expect("NaN in measurements"));
    let n = values.len();
    Some(if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 })
}

struct Outcome {
    status: libc::c_int,
    rusage: libc::rusage,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

/// Runs a child to completion and collects its exit status and its own resource usage (wait4).
fn run_child(mut cmd: Command, timeout: Duration) -> Result<Outcome> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    loop {
        // SAFETY: pid is our child, not yet reaped (std's Child is never waited on); status and
        // rusage point to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut rusage) };
        if r == pid {
            break;
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("wait4({pid}): {e}");
        }
        if !timed_out && start.elapsed() > timeout {
            timed_out = true;
            // SAFETY: sending a signal to our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Outcome { status, rusage, stdout, stderr, timed_out })
}

/// Parses the workload's line `ops=N elapsed_ns=N malloc_from=PATH`.
fn parse_workload_line(stdout: &str) -> Result<(u64, u64, String)> {
    let line = stdout.lines().find(|l| l.starts_with("ops=")).context("no 'ops=' line in the workload's output")?;
    let mut ops = None;
    let mut elapsed = None;
    let mut from = None;
    for field in line.split_whitespace() {
        match field.split_once('=') {
            Some(("ops", v)) => ops = v.parse::<u64>().ok(),
            Some(("elapsed_ns", v)) => elapsed = v.parse::<u64>().ok(),
            Some(("malloc_from", v)) => from = Some(v.to_string()),
            _ => {}
        }
    }
    match (ops, elapsed, from) {
        (Some(o), Some(e), Some(f)) if o > 0 && e > 0 => Ok((o, e, f)),
        _ => bail!("malformed workload line '{line}'"),
    }
}

/// Checks that `malloc` in the child came from the allocator meant to serve it.
fn check_takeover(alloc: &Allocator, malloc_from: &str) -> Result<()> {
    match &alloc.path {
        None => {
            let file = Path::new(malloc_from).file_name().and_then(|f| f.to_str()).unwrap_or("");
            if !file.starts_with("libc.so") {
                bail!("malloc resolved in {malloc_from}, expected glibc's libc.so (is LD_PRELOAD set in the environment?)");
            }
        }
        Some(p) => {
            let want = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            let got = std::fs::canonicalize(malloc_from).unwrap_or_else(|_| PathBuf::from(malloc_from));
            if want != got {
                bail!(
                    "LD_PRELOAD={} did not take over malloc: it resolved in {malloc_from} (ld.so skips a library it cannot load)",
                    p.display()
                );
            }
        }
    }
    Ok(())
}

fn repro(alloc: &Allocator, workload: &str, threads: u32, size: u64, seed: u64) -> String {
    let pre = alloc.path.as_ref().map(|p| format!("LD_PRELOAD={} ", p.display())).unwrap_or_default();
    format!("{pre}{} {workload} {threads} {size} {seed}", env!("ALLOC_BENCH_WORKLOAD"))
}

fn one_run(alloc: &Allocator, workload: &str, threads: u32, size: u64, seed: u64, timeout: Duration) -> Result<Run> {
    let mut cmd = Command::new(env!("ALLOC_BENCH_WORKLOAD"));
    cmd.args([workload.to_string(), threads.to_string(), size.to_string(), seed.to_string()]);
    match &alloc.path {
        Some(p) => cmd.env("LD_PRELOAD", p),
        None => cmd.env_remove("LD_PRELOAD"),
    };
    let o = run_child(cmd, timeout)?;
    let stderr = o.stderr.trim_end();
    if o.timed_out {
        bail!("killed after {} s; stderr: {stderr}", timeout.as_secs());
    }
    if libc::WIFSIGNALED(o.status) {
        bail!("killed by signal {}; stderr: {stderr}", libc::WTERMSIG(o.status));
    }
    let code = libc::WEXITSTATUS(o.status);
    if code != 0 {
        bail!("exit status {code}; stderr: {stderr}");
    }
    let (ops, elapsed_ns, from) = parse_workload_line(&o.stdout)?;
    check_takeover(alloc, &from)?;
    let peak_rss_kib = o.rusage.ru_maxrss as u64;
    Ok(Run { seed, ops, elapsed_ns, ops_per_s: ops as f64 * 1e9 / elapsed_ns as f64, peak_rss_kib })
}

fn si(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "—".to_string())
}

fn print_table(report: &Report, rss: bool) {
    let names: Vec<&str> = report.allocators.iter().map(|a| a.name.as_str()).collect();
    let runs = report.runs;
    if rss {
        println!("\nPeak RSS (MiB, median of {runs}; ratio < 1: the first uses less; target ours/glibc <= 1.5, '!' marks a miss)");
    } else {
        println!("\nThroughput (malloc/free pairs per second, median of {runs}; ratio > 1: the first is faster)");
    }
    let mut header = vec!["workload".to_string(), "thr".to_string()];
    header.extend(names.iter().map(|n| n.to_string()));
    header.extend(report.ratio_pairs.iter().map(|(a, b)| format!("{a}/{b}")));
    let mut rows = vec![header];
    for cell in &report.cells {
        let mut row = vec![cell.workload.clone(), cell.threads.to_string()];
        for n in &names {
            let r = &cell.results[*n];
            row.push(if !r.failures.is_empty() {
                "FAILED".to_string()
            } else if rss {
                fmt_opt(r.peak_rss_kib_median, |k| format!("{:.1}", k / 1024.0))
            } else {
                fmt_opt(r.ops_per_s_median, si)
            });
        }
        for ratio in &cell.ratios {
            let v = if rss { ratio.peak_rss } else { ratio.throughput };
            let miss = rss && ratio.num == OURS && ratio.den == "glibc" && v.is_some_and(|x| x > 1.5);
            row.push(fmt_opt(v, |x| format!("{x:.2}x{}", if miss { "!" } else { "" })));
        }
        rows.push(row);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| if c == 0 { format!("{s:<w$}", w = widths[c]) } else { format!("{s:>w$}", w = widths[c]) })
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn main() {
    match real_main() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("alloc-bench: error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Returns Ok(false) when some run failed (the report is still printed).
fn real_main() -> Result<bool> {
    let args = Args::parse();
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 5 });
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !(args.scale > 0.0 && args.scale.is_finite()) {
        bail!("--scale must be a positive number");
    }
    if !Path::new(env!("ALLOC_BENCH_WORKLOAD")).is_file() {
        bail!("the workload executable {} is missing (rebuild alloc-bench)", env!("ALLOC_BENCH_WORKLOAD"));
    }
    let selected: Vec<&(&str, u64, u64, &[u32])> = match &args.workloads {
        None => WORKLOADS.iter().collect(),
        Some(list) => {
            let mut v = Vec::new();
            for w in list {
                match WORKLOADS.iter().find(|(n, ..)| n == w) {
                    Some(entry) => v.push(entry),
                    None => {
                        let known: Vec<&str> = WORKLOADS.iter().map(|(n, ..)| *n).collect();
                        bail!("unknown workload '{w}' (known: {})", known.join(", "));
                    }
                }
            }
            v
        }
    };
    let threads_wanted = args.threads.clone().unwrap_or_else(|| vec![1, 2, 8]);
    if let Some(t) = threads_wanted.iter().find(|t| **t == 0 || **t > 1024) {
        bail!("thread count {t} outside 1..1024");
    }
    let (allocators, skipped) = resolve_allocators(&args)?;
    let pairs = ratio_pairs(&allocators);
    for a in &allocators {
        match &a.path {
            Some(p) => eprintln!("alloc-bench: {:<10} LD_PRELOAD={}", a.name, p.display()),
            None => eprintln!("alloc-bench: {:<10} (no LD_PRELOAD: glibc's malloc)", a.name),
        }
    }
    for (name, why) in &skipped {
        eprintln!("alloc-bench: {name:<10} SKIPPED: {why}");
    }
    if !allocators.iter().any(|a| a.name == OURS) {
        eprintln!("alloc-bench: ours is not measured: the ratio columns compare each peer with glibc");
    }
    let timeout = Duration::from_secs(args.timeout);
    let mut cells = Vec::new();
    let mut all_ok = true;
    for (workload, full, quick, counts) in selected {
        let base = if args.quick { *quick } else { *full };
        let size = ((base as f64 * args.scale).round() as u64).max(1);
        for &threads in counts.iter().filter(|t| threads_wanted.contains(t)) {
            let mut results: BTreeMap<String, CellResult> =
                allocators.iter().map(|a| (a.name.clone(), CellResult::default())).collect();
            for r in 0..runs {
                let seed = args.seed + r as u64;
                for k in 0..allocators.len() {
                    let alloc = &allocators[(k + r as usize) % allocators.len()];
                    let res = results.get_mut(&alloc.name).expect("result slot");
                    match one_run(alloc, workload, threads, size, seed, timeout) {
                        Ok(run) => res.runs.push(run),
                        Err(e) => {
                            all_ok = false;
                            let msg = format!("{e:#}");
                            eprintln!(
                                "alloc-bench: FAILED {workload} threads={threads} allocator={} seed={seed}: {msg}\n  reproduce: {}",
                                alloc.name,
                                repro(alloc, workload, threads, size, seed)
                            );
                            res.failures.push(msg);
                        }
                    }
                }
            }
            for res in results.values_mut() {
                if res.failures.is_empty() {
                    res.ops_per_s_median = median(&mut res.runs.iter().map(|r| r.ops_per_s).collect::<Vec<_>>());
                    res.peak_rss_kib_median =
                        median(&mut res.runs.iter().map(|r| r.peak_rss_kib as f64).collect::<Vec<_>>());
                }
            }
            let ratios = pairs
                .iter()
                .map(|(a, b)| {
                    let (ra, rb) = (&results[a], &results[b]);
                    let div = |x: Option<f64>, y: Option<f64>| match (x, y) {
                        (Some(x), Some(y)) if y > 0.0 => Some(x / y),
                        _ => None,
                    };
                    Ratio {
                        num: a.clone(),
                        den: b.clone(),
                        throughput: div(ra.ops_per_s_median, rb.ops_per_s_median),
                        peak_rss: div(ra.peak_rss_kib_median, rb.peak_rss_kib_median),
                    }
                })
                .collect();
            let line: Vec<String> = allocators
                .iter()
                .map(|a| {
                    let r = &results[&a.name];
                    format!(
                        "{}={}",
                        a.name,
                        if r.failures.is_empty() { fmt_opt(r.ops_per_s_median, si) } else { "FAILED".into() }
                    )
                })
                .collect();
            eprintln!("alloc-bench: {workload} threads={threads}: {}", line.join(" "));
            cells.push(Cell { workload: workload.to_string(), threads, size, results, ratios });
        }
    }
    if cells.is_empty() {
        bail!("no cell to run: the selected workloads run with threads {:?} only", WORKLOADS[0].3);
    }
    let report = Report {
        quick: args.quick,
        runs,
        seed: args.seed,
        scale: args.scale,
        nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        kernel: kernel(),
        allocators,
        skipped,
        ratio_pairs: pairs,
        cells,
    };
    println!(
        "alloc-bench: {} run(s) per cell, {} CPUs, kernel {}{}",
        report.runs,
        report.nproc,
        report.kernel,
        if report.quick { ", --quick (smoke sizes: not for figures)" } else { "" }
    );
    for (name, why) in &report.skipped {
        println!("skipped: {name}: {why}");
    }
    print_table(&report, false);
    print_table(&report, true);
    let spread = report
        .cells
        .iter()
        .flat_map(|c| c.results.iter().map(move |(n, r)| (c, n, r)))
        .filter_map(|(c, n, r)| {
            let med = r.ops_per_s_median?;
            let max = r.runs.iter().map(|x| x.ops_per_s).fold(f64::MIN, f64::max);
            let min = r.runs.iter().map(|x| x.ops_per_s).fold(f64::MAX, f64::min);
            Some(((max - min) / med, c, n))
        })
        .max_by(|a, b| a.0.partial_cmp(&b.0).expect("NaN spread"));
    if let (Some((s, c, n)), true) = (spread, report.runs > 1) {
        println!(
            "\nlargest throughput spread (max-min)/median: {:.0}% ({} threads={} {n})",
            s * 100.0,
            c.workload,
            c.threads
        );
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if !all_ok {
        eprintln!("alloc-bench: some runs FAILED (see above)");
    }
    Ok(all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn workload_line_parses_and_rejects_garbage() {
        let (o, e, f) = parse_workload_line("ops=10 elapsed_ns=20 malloc_from=/lib/libc.so.6\n").unwrap();
        assert_eq!((o, e, f.as_str()), (10, 20, "/lib/libc.so.6"));
        assert!(parse_workload_line("ops=0 elapsed_ns=20 malloc_from=x").is_err());
        assert!(parse_workload_line("ops=1 malloc_from=x").is_err());
        assert!(parse_workload_line("").is_err());
    }

    #[test]
    fn takeover_check_rejects_the_wrong_library() {
        let glibc = Allocator { name: "glibc".into(), path: None };
        assert!(check_takeover(&glibc, "/lib/x86_64-linux-gnu/libc.so.6").is_ok());
        assert!(check_takeover(&glibc, "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2").is_err());
        let other = Allocator { name: "x".into(), path: Some("/nonexistent/libx.so".into()) };
        assert!(check_takeover(&other, "/lib/x86_64-linux-gnu/libc.so.6").is_err());
        assert!(check_takeover(&other, "/nonexistent/libx.so").is_ok());
    }

    #[test]
    fn ratios_are_ours_over_peers_or_peers_over_glibc() {
        let a = |n: &str| Allocator { name: n.into(), path: None };
        let with_ours = ratio_pairs(&[a("glibc"), a("mimalloc"), a("ours")]);
        assert_eq!(with_ours, vec![("ours".into(), "glibc".into()), ("ours".into(), "mimalloc".into())]);
        let peers = ratio_pairs(&[a("glibc"), a("mimalloc")]);
        assert_eq!(peers, vec![("mimalloc".into(), "glibc".into())]);
    }
}

use clap::{Parser, Subcommand};
use kvd_check::server::{find_kvd, Kind, Rseq, Server};
use kvd_check::{bench, disturb, storebench, verify};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Parser)]
#[command(about = "Verifies and benchmarks memcached-protocol servers (kvd stacks, memcached)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes known values from several clients and checks every acknowledged write, every value
    /// read and the server's stats counters; optionally disturbs the server meanwhile.
    Verify {
        /// Servers, comma-separated: ours, naive, strong (kvd stacks), memcached, or HOST:PORT.
        #[arg(long, default_value = "ours")]
        server: String,
        /// rseq setups of the server, comma-separated: libc, tunable (GLIBC_TUNABLES=glibc.pthread.rseq=0),
        /// denied (a seccomp filter answers ENOSYS to rseq).
        #[arg(long, default_value = "libc")]
        rseq: String,
        /// Offline/online cpu1, change the server threads' affinity and cpuset while verifying.
        #[arg(long)]
        disturb: bool,
        /// Seed of every client's command sequence (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Data keys per client (plus one counter key per 8).
        #[arg(long, default_value_t = 500)]
        keys: usize,
        /// Commands per client.
        #[arg(long, default_value_t = 5000)]
        ops: usize,
        /// full or simple (set and get only).
        #[arg(long, default_value = "full")]
        mix: String,
        #[arg(long, default_value_t = 2)]
        server_threads: usize,
        #[arg(long, default_value_t = 64)]
        mem_mb: usize,
    },
    /// Closed-loop load: get/set mixes, value sizes and connection counts on every server.
    Bench {
        #[arg(long, default_value = "ours,naive,strong,memcached")]
        servers: String,
        #[arg(long, default_value = "1,4,16,64")]
        conns: String,
        /// Percentages of gets (the rest are sets).
        #[arg(long, default_value = "90,50")]
        mixes: String,
        #[arg(long, default_value = "32,1024")]
        sizes: String,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds per cell and run.
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        /// Server worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Keys loaded (32 B values) before reading each server's RSS; 0 skips it.
        #[arg(long, default_value_t = 1_000_000)]
        rss_keys: usize,
        /// CI smoke size: 1 run of 0.2 s, 32 B values, 1 and 4 connections, 100k keys for RSS.
        #[arg(long)]
        quick: bool,
        /// Output prefix: PREFIX.csv and PREFIX.json.
        #[arg(long, default_value = "target/kvd-bench")]
        out: PathBuf,
        /// Throughput-vs-connections plot (needs python3 with matplotlib); empty: none.
        #[arg(long, default_value = "")]
        plot: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The stacks' parts without the network: `kvd --bench-store` threads on the store of
    /// each stack (index, locks, counters, allocator), side by side, with ratios.
    BenchStore {
        #[arg(long, default_value = "ours,naive,strong")]
        stacks: String,
        /// Threads driving the store (more than the CPUs: holders get preempted).
        #[arg(long, default_value = "1,2,64")]
        threads: String,
        /// Percentages of gets (the rest are sets).
        #[arg(long, default_value = "90,50")]
        mixes: String,
        /// Value sizes in bytes (16 and up: each value carries its key and writer).
        #[arg(long, default_value = "32,1024")]
        sizes: String,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seconds per cell and run.
        #[arg(long, default_value_t = 0.5)]
        secs: f64,
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        /// CI smoke size: 1 run of 0.1 s, 32 B values, 1 and 8 threads, 2000 keys.
        #[arg(long)]
        quick: bool,
        /// Output prefix: PREFIX.csv (every sample) and PREFIX.txt (the table).
        #[arg(long, default_value = "target/kvd-bench-store")]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>, String> {
    s.split(',').map(|x| x.trim().parse().map_err(|_| format!("bad {what} {x:?}"))).collect()
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("kvd-check: {e}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<bool, String> {
    match Cli::parse().cmd {
        Cmd::Verify { server, rseq, disturb, seed, clients, keys, ops, mix, server_threads, mem_mb } => {
            let kinds = server.split(',').map(Kind::parse).collect::<Result<Vec<_>, _>>()?;
            let rseqs = rseq.split(',').map(Rseq::parse).collect::<Result<Vec<_>, _>>()?;
            let mix = verify::Mix::parse(&mix)?;
            if clients == 0 || keys == 0 {
                return Err("--clients and --keys must be at least 1".into());
            }
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
            });
            // Values stay under ~1.5 KiB; with ~100 B of item overhead the working set must fit.
            let working = clients * keys * 1700;
            if working > mem_mb << 19 {
                eprintln!("warning: up to {} MiB of items against -m {mem_mb}: evictions may happen", working >> 20);
            }
            let p = verify::Params { seed, clients, keys, ops, mix };
            let mut all_ok = true;
            for k in &kinds {
                for &r in &rseqs {
                    let repro = format!(
                        "kvd-check verify --server {} --rseq {} --seed {seed} --clients {clients} --keys {keys} --ops {ops} --mix {} --server-threads {server_threads} --mem-mb {mem_mb}{}",
                        k.name(),
                        r.name(),
                        mix.name(),
                        if disturb { " --disturb" } else { "" }
                    );
                    if matches!(k, Kind::Kvd(_)) && find_kvd().is_none() {
                        println!(
                            "FAIL {} rseq={}: kvd binary not found (cargo build --release -p kvd, or KVD_BIN)",
                            k.name(),
                            r.name()
                        );
                        all_ok = false;
                        continue;
                    }
                    let mut srv = match Server::start(k, server_threads, mem_mb, r) {
                        Ok(s) => s,
                        Err(e) => {
                            println!("FAIL {} rseq={}: start: {e}\n  reproduce: {repro}", k.name(), r.name());
                            all_ok = false;
                            continue;
                        }
                    };
                    let d = match (disturb, srv.pid()) {
                        (true, Some(pid)) => Some(disturb::Disturber::start(pid, seed)),
                        _ => None,
                    };
                    let t0 = std::time::Instant::now();
                    let mut out = verify::run(srv.addr, &p, Arc::new(AtomicBool::new(false)));
                    let log = d.map(|d| d.finish());
                    if let Some(st) = srv.exited() {
                        out.failures.push(format!("the server exited during the run: {st}"));
                    } else if let Some(st) = srv.stop() {
                        if !st.success() {
                            out.failures.push(format!("the server did not exit cleanly on SIGTERM: {st}"));
                        }
                    }
                    let ok = out.passed();
                    all_ok &= ok;
                    println!(
                        "{} {} rseq={}: {} commands in {:.2} s, {} keys held at the end, {} evictions, {} failures, {} missing{}",
                        if ok { "ok  " } else { "FAIL" },
                        k.name(),
                        r.name(),
                        out.ops,
                        t0.elapsed().as_secs_f64(),
                        out.items_expected,
                        out.evictions,
                        out.failures.len(),
                        out.missing.len(),
                        log.map(|l| format!("\n  disturbance: {}", l.summary())).unwrap_or_default()
                    );
                    let counts: Vec<String> =
                        verify::COUNTERS.iter().zip(out.counts.0.iter()).map(|(n, v)| format!("{n}={v}")).collect();
                    println!("  counted and matched in stats: {}", counts.join(" "));
                    for f in out.failures.iter().take(20) {
                        println!("  failure: {f}");
                    }
                    for m in out.missing.iter().take(20) {
                        println!(
                            "  missing{}: {m}",
                            if out.evictions > 0 { " (the server evicted items: not counted as a loss)" } else { "" }
                        );
                    }
                    if !ok {
                        println!("  seed {seed}; server: {}\n  reproduce: {repro}", srv.command_line);
                    }
                }
            }
            Ok(all_ok)
        }
        Cmd::Bench { servers, conns, mixes, sizes, runs, secs, keys, threads, rss_keys, quick, out, plot, seed } => {
            let mut kinds = servers.split(',').map(Kind::parse).collect::<Result<Vec<_>, _>>()?;
            if find_kvd().is_none() {
                let before = kinds.len();
                kinds.retain(|k| !matches!(k, Kind::Kvd(_)));
                if kinds.len() != before {
                    eprintln!(
                        "kvd binary not found (cargo build --release -p kvd): benchmarking without the kvd stacks"
                    );
                }
            }
            if kinds.is_empty() {
                return Err("no server to benchmark".into());
            }
            let mut p = bench::Params {
                servers: kinds,
                conns: list(&conns, "connection count")?,
                get_pcts: list(&mixes, "get percentage")?,
                sizes: list(&sizes, "value size")?,
                runs,
                secs,
                keys,
                threads,
                rss_keys,
                seed,
            };
            if quick {
                p.runs = 1;
                p.secs = 0.2;
                p.sizes = vec![32];
                p.conns = vec![1, 4];
                p.keys = 2000;
                p.rss_keys = p.rss_keys.min(100_000);
            }
            if p.runs == 0 || p.conns.contains(&0) || p.get_pcts.iter().any(|&g| g > 100) || p.secs <= 0.0 {
                return Err("bad bench parameters (runs >= 1, conns >= 1, mixes 0..=100, secs > 0)".into());
            }
            let r = bench::run(&p).map_err(|e| e.to_string())?;
            print!("{}", bench::table(&p, &r));
            let errors: u64 = r.cells.iter().map(|c| c.errors).sum();
            if let Some(d) = out.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            let csv = out.with_extension("csv");
            std::fs::write(&csv, bench::csv(&r)).map_err(|e| format!("{}: {e}", csv.display()))?;
            let json = out.with_extension("json");
            std::fs::write(&json, bench::json(&p, &r)).map_err(|e| format!("{}: {e}", json.display()))?;
            println!("wrote {} and {}", csv.display(), json.display());
            if !plot.is_empty() {
                let script = concat!(env!("CARGO_MANIFEST_DIR"), "/plot_throughput.py");
                match std::process::Command::new("python3").args([script, csv.to_str().unwrap_or(""), &plot]).status() {
                    Ok(s) if s.success() => println!("wrote {plot}"),
                    other => {
                        eprintln!("plot not written ({other:?}): needs python3 with matplotlib (ci/install-deps.sh)")
                    }
                }
            }
            if errors > 0 {
                eprintln!("{errors} connections failed during the bench");
            }
            Ok(errors == 0)
        }
        Cmd::BenchStore { stacks, threads, mixes, sizes, runs, secs, keys, quick, out, seed } => {
            let mut p = storebench::Params {
                stacks: stacks.split(',').map(|s| s.trim().to_string()).collect(),
                threads: list(&threads, "thread count")?,
                get_pcts: list(&mixes, "get percentage")?,
                sizes: list(&sizes, "value size")?,
                runs,
                secs,
                keys,
                seed,
            };
            if quick {
                (p.runs, p.secs, p.sizes, p.threads, p.keys) = (1, 0.1, vec![32], vec![1, 8], 2000);
            }
            if let Some(s) = p.stacks.iter().find(|s| !["ours", "naive", "strong"].contains(&s.as_str())) {
                return Err(format!("unknown stack {s:?} (ours, naive, strong)"));
            }
            if p.runs == 0
                || p.keys == 0
                || p.threads.iter().any(|&t| t == 0 || t > 1024)
                || p.get_pcts.iter().any(|&g| g > 100)
                || p.sizes.iter().any(|&z| !(16..=512 * 1024).contains(&z))
                || !(p.secs > 0.0 && p.secs <= 600.0)
            {
                return Err(
                    "bad bench-store parameters (runs, keys >= 1; threads 1..=1024; mixes 0..=100; sizes 16..=524288; 0 < secs <= 600)"
                        .into(),
                );
            }
            let (ran, samples) = storebench::run(&p)?;
            let table = storebench::table(&p, &ran, &samples);
            print!("{table}");
            if let Some(d) = out.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            let csv = out.with_extension("csv");
            std::fs::write(&csv, storebench::csv(&samples)).map_err(|e| format!("{}: {e}", csv.display()))?;
            let txt = out.with_extension("txt");
            std::fs::write(&txt, &table).map_err(|e| format!("{}: {e}", txt.display()))?;
            println!("wrote {} and {}", csv.display(), txt.display());
            Ok(true)
        }
    }
}

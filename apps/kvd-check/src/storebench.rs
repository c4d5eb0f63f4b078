//! `kvd-check bench-store`: the stacks' parts compared without the network. Runs
//! `kvd --bench-store` for every stack and cell (each in its own process, with its own
//! allocator preloaded, as the server runs), rotating the order of the stacks from cell to
//! cell and run to run, and reports the median throughput per cell with ratios against
//! `ours`.
//!
//! Why beside the network bench: over loopback on a small host a request costs a few
//! microseconds of system calls and wake-ups that every stack pays alike (a profile of kvd
//! under the network load puts ~90% of the server's time in the kernel), so the network
//! figures mostly measure the kernel. Here a get or set costs only the index, the locks, the
//! counters and the allocator — the parts the stacks differ in.

use crate::server::find_kvd;
use std::fmt::Write as _;
use std::process::Command;

#[derive(Clone, Debug)]
pub struct Params {
    pub stacks: Vec<String>,
    pub threads: Vec<usize>,
    pub get_pcts: Vec<u32>,
    pub sizes: Vec<usize>,
    pub runs: usize,
    pub secs: f64,
    pub keys: usize,
    pub seed: u64,
}

/// One cell of one run of one stack, as `kvd --bench-store` printed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub stack: String,
    pub run: usize,
    pub threads: usize,
    pub get_pct: u32,
    pub size: usize,
    pub ops: u64,
    pub secs: f64,
    pub cpu_secs: f64,
}

impl Sample {
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    /// CPU nanoseconds per operation (all threads of the process, its RCU workers included).
    pub fn cpu_ns(&self) -> f64 {
        self.cpu_secs * 1e9 / self.ops.max(1) as f64
    }
}

/// The number after `"key":` in a flat JSON object.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().trim_matches('"'))
}

/// Parses one line of `kvd --bench-store` output.
pub fn parse_line(line: &str, run: usize) -> Result<Sample, String> {
    let get = |k: &str| field(line, k).ok_or_else(|| format!("no {k} in {line:?}"));
    let num = |k: &str| -> Result<f64, String> { get(k)?.parse().map_err(|_| format!("bad {k} in {line:?}")) };
    if get("ok")? != "true" {
        return Err(format!("the cell failed its checks: {line}"));
    }
    Ok(Sample {
        stack: get("stack")?.to_string(),
        run,
        threads: num("threads")? as usize,
        get_pct: num("get_pct")? as u32,
        size: num("size")? as usize,
        ops: (num("gets")? + num("sets")?) as u64,
        secs: num("secs")?,
        cpu_secs: num("cpu_secs")?,
    })
}

/// Whether kvd can run `stack` here (`kvd --check-stack`); the reason when it cannot.
fn stack_runs(kvd: &std::path::Path, stack: &str) -> Result<(), String> {
    let out = Command::new(kvd)
        .args(["--stack", stack, "--check-stack"])
        .output()
        .map_err(|e| format!("{}: {e}", kvd.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Runs every stack `runs` times. Stacks that cannot run here are left out with a message;
/// a cell that fails its checks (counts or values) is an error naming the command.
pub fn run(p: &Params) -> Result<(Vec<String>, Vec<Sample>), String> {
    let kvd = find_kvd().ok_or("kvd binary not found (cargo build --release -p kvd, or KVD_BIN)")?;
    let mut stacks = Vec::new();
    for s in &p.stacks {
        match stack_runs(&kvd, s) {
            Ok(()) => stacks.push(s.clone()),
            Err(e) => eprintln!("bench-store: leaving the {s} stack out: {e}"),
        }
    }
    if stacks.is_empty() {
        return Err("no stack runs here".into());
    }
    // One process per stack and cell, the stacks' order rotating from cell to cell and run to
    // run: a slow phase of a noisy host then hits every stack of a cell alike.
    let mut samples = Vec::new();
    let cells: Vec<(u32, usize, usize)> = p
        .get_pcts
        .iter()
        .flat_map(|&g| p.sizes.iter().flat_map(move |&z| p.threads.iter().map(move |&t| (g, z, t))))
        .collect();
    let mut turn = 0;
    for run in 0..p.runs {
        for (ci, &(pct, size, threads)) in cells.iter().enumerate() {
            turn += 1;
            for i in 0..stacks.len() {
                let stack = &stacks[(i + turn) % stacks.len()];
                let args = [
                    "--bench-store".to_string(),
                    "--stack".into(),
                    stack.clone(),
                    "--threads".into(),
                    threads.to_string(),
                    "--mix".into(),
                    pct.to_string(),
                    "--sizes".into(),
                    size.to_string(),
                    "--keys".into(),
                    p.keys.to_string(),
                    "--secs".into(),
                    p.secs.to_string(),
                    "--seed".into(),
                    (p.seed + run as u64).to_string(),
                ];
                eprint!("\rrun {}/{} cell {}/{}      ", run + 1, p.runs, ci + 1, cells.len());
                let out = Command::new(&kvd).args(&args).output().map_err(|e| format!("{}: {e}", kvd.display()))?;
                let cmdline = format!("{} {}", kvd.display(), args.join(" "));
                if !out.status.success() {
                    return Err(format!(
                        "{cmdline}: {}\n{}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).lines().take(10).collect::<Vec<_>>().join("\n")
                    ));
                }
                for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with('{')) {
                    samples.push(parse_line(line, run).map_err(|e| format!("{cmdline}: {e}"))?);
                }
            }
        }
    }
    eprintln!();
    Ok((stacks, samples))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median ops/s and CPU ns per op of one stack in one cell.
pub fn cell_median(samples: &[Sample], stack: &str, pct: u32, size: usize, threads: usize) -> Option<(f64, f64)> {
    let mine: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.stack == stack && s.get_pct == pct && s.size == size && s.threads == threads)
        .collect();
    if mine.is_empty() {
        return None;
    }
    Some((median(mine.iter().map(|s| s.ops_per_s()).collect()), median(mine.iter().map(|s| s.cpu_ns()).collect())))
}

/// The table: per cell, every stack's median Mops/s and CPU ns per op, and the ratio of
/// `ours` to each other stack (above 1: ours is faster).
pub fn table(p: &Params, stacks: &[String], samples: &[Sample]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "store without the network: median of {} runs of {} s per cell, {} keys, uniform; Mops/s (CPU ns per op)",
        p.runs, p.secs, p.keys
    );
    let _ = write!(s, "{:>5} {:>6} {:>7}", "get%", "size", "threads");
    for st in stacks {
        let _ = write!(s, " {:>18}", st);
    }
    for st in stacks.iter().filter(|x| *x != "ours") {
        let _ = write!(s, " {:>10}", format!("ours/{st}"));
    }
    s.push('\n');
    for &pct in &p.get_pcts {
        for &size in &p.sizes {
            for &t in &p.threads {
                let _ = write!(s, "{pct:>5} {size:>6} {t:>7}");
                let ours = cell_median(samples, "ours", pct, size, t);
                for st in stacks {
                    match cell_median(samples, st, pct, size, t) {
                        Some((ops, ns)) => {
                            let _ = write!(s, " {:>18}", format!("{:.2} ({:.0})", ops / 1e6, ns));
                        }
                        None => {
                            let _ = write!(s, " {:>18}", "-");
                        }
                    }
                }
                for st in stacks.iter().filter(|x| *x != "ours") {
                    match (ours, cell_median(samples, st, pct, size, t)) {
                        (Some((a, _)), Some((b, _))) if b > 0.0 => {
                            let _ = write!(s, " {:>10}", format!("{:.2}", a / b));
                        }
                        _ => {
                            let _ = write!(s, " {:>10}", "-");
                        }
                    }
                }
                s.push('\n');
            }
        }
    }
    s
}

pub fn csv(samples: &[Sample]) -> String {
    let mut s = String::from("stack,run,get_pct,size,threads,ops,secs,cpu_secs,ops_per_s,cpu_ns_per_op\n");
    for x in samples {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{:.4},{:.4},{:.0},{:.1}",
            x.stack,
            x.run,
            x.get_pct,
            x.size,
            x.threads,
            x.ops,
            x.secs,
            x.cpu_secs,
            x.ops_per_s(),
            x.cpu_ns()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_line_and_refuses_a_failed_cell() {
        let l = r#"{"stack":"ours","threads":2,"get_pct":90,"size":32,"gets":900,"sets":100,"secs":0.5000,"cpu_secs":1.0000,"ok":true}"#;
        let s = parse_line(l, 3).unwrap();
        assert_eq!(
            s,
            Sample {
                stack: "ours".into(),
                run: 3,
                threads: 2,
                get_pct: 90,
                size: 32,
                ops: 1000,
                secs: 0.5,
                cpu_secs: 1.0
            }
        );
        assert_eq!(s.ops_per_s(), 2000.0);
        assert_eq!(s.cpu_ns(), 1e6);
        let bad = l.replace("\"ok\":true", "\"ok\":false");
        assert!(parse_line(&bad, 0).unwrap_err().contains("failed its checks"));
        assert!(parse_line("{\"stack\":\"ours\"}", 0).is_err());
    }

    #[test]
    fn medians_and_ratios() {
        let mk = |stack: &str, run, ops| Sample {
            stack: stack.into(),
            run,
            threads: 1,
            get_pct: 90,
            size: 32,
            ops,
            secs: 1.0,
            cpu_secs: 1.0,
        };
        let samples =
            vec![mk("ours", 0, 300), mk("ours", 1, 100), mk("ours", 2, 200), mk("naive", 0, 100), mk("naive", 1, 100)];
        assert_eq!(cell_median(&samples, "ours", 90, 32, 1), Some((200.0, 1e9 / 200.0)));
        assert_eq!(cell_median(&samples, "strong", 90, 32, 1), None);
        let p = Params {
            stacks: vec!["ours".into(), "naive".into()],
            threads: vec![1],
            get_pcts: vec![90],
            sizes: vec![32],
            runs: 3,
            secs: 1.0,
            keys: 10,
            seed: 1,
        };
        let t = table(&p, &p.stacks, &samples);
        assert!(t.lines().nth(2).unwrap().trim_end().ends_with("2.00"), "{t}");
    }
}

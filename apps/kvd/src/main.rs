//! kvd: a memcached-compatible key-value server (text protocol) on the project's libraries,
//! with peer stacks for comparison. Usage and design: apps/kvd/README.md.

mod parts;
mod proto;
mod server;
mod store;
mod storebench;

use parts::Stack;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

const USAGE: &str = "usage: kvd [-p PORT] [-l ADDR] [-t THREADS] [-m MEGABYTES] [-c MAXCONN] [-I ITEM_SIZE_MAX]
           [--stack ours|naive|strong] [--metrics-port PORT]
  -p PORT          TCP port (default 11211; 0 = ephemeral)
  -l ADDR          address to listen on (default 127.0.0.1)
  -t THREADS       worker threads (default 4)
  -m MEGABYTES     memory for items, evicting beyond it (default 64)
  -c MAXCONN       simultaneous connections (default 1024)
  -I SIZE          largest item, with k/m suffix (default 1m)
  --stack STACK    ours (libprcu, libplocks, libpcounters, palloc), naive (glibc malloc,
                   pthread rwlock + HashMap, atomics), strong (jemalloc, liburcu rculfhash,
                   atomics); default ours
  --metrics-port P Prometheus text format over HTTP (GET /metrics)
  --hash-mask HEX  AND the 64-bit key hash with this mask (testing: forces collisions)
  --check-stack    set up the stack's parts (allocator, map, libraries), say whether they
                   work here and exit (0: they do; 1: a message names what is missing)
  --bench-store    benchmark the store without the network (kvd --bench-store --help)";

/// The environment marker of a process the server has already re-executed with its
/// allocator preloaded.
const MARKER: &str = "KVD_ALLOCATOR_ARRANGED";

fn bad(msg: &str) -> ! {
    eprintln!("kvd: {msg}\n{USAGE}");
    std::process::exit(2);
}

fn parse_size(s: &str) -> Option<usize> {
    let (num, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult)
}

fn parse_args(args: &[String]) -> server::Config {
    let mut cfg = server::Config {
        port: 11211,
        addr: "127.0.0.1".into(),
        threads: 4,
        megabytes: 64,
        maxconn: 1024,
        item_max: 1024 * 1024,
        stack: Stack::Ours,
        metrics_port: None,
        hash_mask: u64::MAX,
    };
    let mut i = 0;
    while i < args.len() {
        let (opt, inline) = match args[i].split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o.to_string(), Some(v.to_string())),
            _ => (args[i].clone(), None),
        };
        if opt == "-h" || opt == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let val = match inline {
            Some(v) => v,
            None => {
                i += 1;
                match args.get(i) {
                    Some(v) => v.clone(),
                    None => bad(&format!("option {opt} needs a value")),
                }
            }
        };
        let num = |lo: u64, hi: u64| -> u64 {
            match val.parse::<u64>() {
                Ok(v) if (lo..=hi).contains(&v) => v,
                _ => bad(&format!("{opt}: expected a number in {lo}..={hi}, got {val:?}")),
            }
        };
        match opt.as_str() {
            "-p" | "--port" => cfg.port = num(0, 65535) as u16,
            "-l" | "--listen" => cfg.addr = val.clone(),
            "-t" | "--threads" => cfg.threads = num(1, 1024) as usize,
            "-m" | "--memory-limit" => cfg.megabytes = num(1, 1 << 20),
            "-c" | "--conn-limit" => cfg.maxconn = num(1, 1 << 20) as usize,
            "-I" | "--max-item-size" => match parse_size(&val) {
                Some(v) if (1024..=128 << 20).contains(&v) => cfg.item_max = v,
                _ => bad(&format!("-I: expected a size from 1k to 128m, got {val:?}")),
            },
            "--stack" => match Stack::parse(&val) {
                Some(s) => cfg.stack = s,
                None => bad(&format!("--stack: expected ours, naive or strong, got {val:?}")),
            },
            "--metrics-port" => cfg.metrics_port = Some(num(0, 65535) as u16),
            "--hash-mask" => match u64::from_str_radix(val.trim_start_matches("0x"), 16) {
                Ok(v) => cfg.hash_mask = v,
                Err(_) => bad(&format!("--hash-mask: expected hex, got {val:?}")),
            },
            _ => bad(&format!("unknown option {opt}")),
        }
        i += 1;
    }
    cfg
}

/// The allocator library a stack runs on, preloaded by re-executing the server.
fn preload_for(stack: Stack) -> Option<PathBuf> {
    match stack {
        Stack::Ours => Some(parts::exe_dir().join("libpalloc_preload.so")),
        Stack::Strong => Some(std::env::var_os("KVD_JEMALLOC").map(PathBuf::from).unwrap_or_else(|| {
            ["/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"))
        })),
        Stack::Naive => None,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let check_only = args[1..].iter().any(|a| a == "--check-stack");
    let rest: Vec<String> = args[1..].iter().filter(|a| *a != "--check-stack").cloned().collect();
    let bench = rest.iter().any(|a| a == "--bench-store");
    if bench && rest.iter().any(|a| a == "-h" || a == "--help") {
        println!("{}", storebench::USAGE);
        std::process::exit(0);
    }
    let (cfg, bench_cfg) = if bench {
        let (stack, b) = storebench::parse_args(&rest);
        (server::Config { stack, ..parse_args(&[]) }, Some(b))
    } else {
        (parse_args(&rest), None)
    };
    if std::env::var_os(MARKER).is_none() {
        if let Some(lib) = preload_for(cfg.stack) {
            if !lib.exists() {
                eprintln!(
                    "kvd: the {} stack needs {} (build the workspace: cargo build --workspace; jemalloc: Debian libjemalloc2)",
                    cfg.stack.name(),
                    lib.display()
                );
                std::process::exit(1);
            }
            let err = std::process::Command::new("/proc/self/exe")
                .arg0(&args[0])
                .args(&args[1..])
                .env("LD_PRELOAD", &lib)
                .env(MARKER, "1")
                .exec();
            eprintln!("kvd: re-exec with LD_PRELOAD={}: {err}", lib.display());
            std::process::exit(1);
        }
    }
    if check_only {
        if let Err(e) = parts::Index::new(cfg.stack) {
            eprintln!("kvd: {e}");
            std::process::exit(1);
        }
        eprintln!("kvd: the {} stack runs here", cfg.stack.name());
        std::process::exit(0);
    }
    if let Some(b) = bench_cfg {
        match storebench::run(cfg.stack, &b) {
            Ok(true) => std::process::exit(0),
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("kvd --bench-store: {e}");
                std::process::exit(1);
            }
        }
    }
    if let Err(e) = server::run(cfg) {
        eprintln!("kvd: {e}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

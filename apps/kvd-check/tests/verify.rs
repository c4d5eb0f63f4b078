//! The verifier against real servers (memcached; kvd on every stack when its binary is built)
//! and against a small in-test server that loses a write, returns a wrong value or miscounts:
//! the verifier must pass the correct servers and fail every faulty one.

use kvd_check::server::{find_kvd, Kind, Rseq, Server};
use kvd_check::verify::{self, Mix, Params};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

fn params(mix: Mix) -> Params {
    Params { seed: 42, clients: 3, keys: 100, ops: 1500, mix }
}

fn check(addr: SocketAddr, mix: Mix) -> verify::Outcome {
    verify::run(addr, &params(mix), Arc::new(AtomicBool::new(false)))
}

#[test]
fn memcached_passes_with_exact_counters() {
    if std::process::Command::new("memcached").arg("-h").output().is_err() {
        eprintln!("memcached not installed: skipped");
        return;
    }
    let s = Server::start(&Kind::Memcached, 2, 64, Rseq::Libc).expect("start memcached");
    let out = check(s.addr, Mix::Full);
    assert!(out.passed(), "{:?}", out.failures);
    assert_eq!(out.ops, 4500);
    // Every counter the clients track saw traffic, and the stats matched them (passed()).
    assert!(out.counts.0.iter().all(|&c| c > 0), "{:?}", out.counts);
    assert_eq!(out.evictions, 0);
}

#[test]
fn kvd_passes_on_every_stack() {
    if find_kvd().is_none() {
        eprintln!("kvd binary not built: skipped (cargo build -p kvd)");
        return;
    }
    let kvd = find_kvd().unwrap();
    for stack in ["ours", "naive", "strong"] {
        // The strong stack needs Debian's libjemalloc2 and liburcu-dev (ci/install-deps.sh).
        let probe = std::process::Command::new(&kvd).args(["--stack", stack, "--check-stack"]).output().unwrap();
        if stack == "strong" && !probe.status.success() {
            eprintln!("strong stack skipped: {}", String::from_utf8_lossy(&probe.stderr).trim());
            continue;
        }
        for rseq in [Rseq::Libc, Rseq::Denied] {
            let s = Server::start(&Kind::Kvd(stack.into()), 2, 64, rseq).expect("start kvd");
            let out = check(s.addr, Mix::Full);
            assert!(out.passed(), "{stack} {rseq:?}: {:?} {:?}", out.failures, out.missing);
            assert!(out.counts.0.iter().all(|&c| c > 0), "{:?}", out.counts);
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// The 50th set answers STORED but stores nothing, and so do later sets of that key (a
    /// single lost write that a later set supersedes cannot be seen by any client).
    LoseWrite,
    /// The 50th hit returns its value with one byte changed.
    WrongValue,
    /// `stats` reports one get hit more than there were, once there was one.
    MiscountHits,
}

#[derive(Default)]
struct State {
    items: HashMap<String, (u32, Vec<u8>)>,
    sets: u64,
    hits_served: u64,
    cmd_get: u64,
    hits: u64,
    misses: u64,
    lost_key: Option<String>,
}

/// A set/get/stats server, enough for `Mix::Simple`.
fn fake_server(fault: Fault) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let st = Arc::new(Mutex::new(State::default()));
    std::thread::spawn(move || {
        for c in l.incoming() {
            let c = c.unwrap();
            let st = st.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut w = c;
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    let f: Vec<String> = line.split_whitespace().map(String::from).collect();
                    line.clear();
                    let mut out = Vec::new();
                    let mut s = st.lock().unwrap();
                    match f.first().map(String::as_str) {
                        Some("set") => {
                            let len: usize = f[4].parse().unwrap();
                            let mut v = vec![0; len + 2];
                            r.read_exact(&mut v).unwrap();
                            v.truncate(len);
                            s.sets += 1;
                            if fault == Fault::LoseWrite && s.sets == 50 {
                                s.lost_key = Some(f[1].clone());
                            }
                            if s.lost_key.as_deref() != Some(f[1].as_str()) {
                                s.items.insert(f[1].clone(), (f[2].parse().unwrap(), v));
                            }
                            out.extend_from_slice(b"STORED\r\n");
                        }
                        Some("get") => {
                            for k in &f[1..] {
                                s.cmd_get += 1;
                                match s.items.get(k).cloned() {
                                    Some((flags, mut v)) => {
                                        s.hits += 1;
                                        s.hits_served += 1;
                                        if fault == Fault::WrongValue && s.hits_served == 50 {
                                            let last = v.len() - 1;
                                            v[last] ^= 1;
                                        }
                                        write!(out, "VALUE {k} {flags} {}\r\n", v.len()).unwrap();
                                        out.extend_from_slice(&v);
                                        out.extend_from_slice(b"\r\n");
                                    }
                                    None => s.misses += 1,
                                }
                            }
                            out.extend_from_slice(b"END\r\n");
                        }
                        Some("stats") => {
                            let hits = s.hits + u64::from(fault == Fault::MiscountHits && s.hits > 0);
                            write!(
                                out,
                                "STAT cmd_get {}\r\nSTAT get_hits {hits}\r\nSTAT get_misses {}\r\nSTAT cmd_set {}\r\n",
                                s.cmd_get, s.misses, s.sets
                            )
                            .unwrap();
                            for n in [
                                "delete_hits",
                                "delete_misses",
                                "incr_hits",
                                "incr_misses",
                                "cas_hits",
                                "cas_misses",
                                "cas_badval",
                                "evictions",
                            ] {
                                write!(out, "STAT {n} 0\r\n").unwrap();
                            }
                            write!(out, "STAT curr_items {}\r\nEND\r\n", s.items.len()).unwrap();
                        }
                        _ => out.extend_from_slice(b"ERROR\r\n"),
                    }
                    drop(s);
                    if w.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_correct_fake_server_passes() {
    let out = check(fake_server(Fault::None), Mix::Simple);
    assert!(out.passed(), "{:?} {:?}", out.failures, out.missing);
}

#[test]
fn a_lost_write_fails() {
    let out = check(fake_server(Fault::LoseWrite), Mix::Simple);
    assert!(!out.passed());
    // Lost while absent: missing; lost over an older value: the older value is returned.
    let seen = out.missing.iter().any(|m| m.contains("acknowledged write not returned"))
        || out.failures.iter().any(|f| f.contains("wrong value"));
    assert!(seen, "{:?} {:?}", out.missing, out.failures);
}

#[test]
fn a_wrong_value_fails() {
    let out = check(fake_server(Fault::WrongValue), Mix::Simple);
    assert!(!out.passed());
    assert!(out.failures.iter().any(|f| f.contains("wrong value")), "{:?}", out.failures);
}

#[test]
fn a_miscounted_stat_fails() {
    let out = check(fake_server(Fault::MiscountHits), Mix::Simple);
    assert!(!out.passed());
    assert!(out.failures.iter().any(|f| f.contains("get_hits: server")), "{:?}", out.failures);
}

#[test]
fn the_binary_exits_nonzero_and_prints_the_seed_on_failure() {
    let addr = fake_server(Fault::WrongValue);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvd-check"))
        .args([
            "verify",
            "--server",
            &addr.to_string(),
            "--mix",
            "simple",
            "--seed",
            "42",
            "--clients",
            "3",
            "--keys",
            "100",
            "--ops",
            "1500",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("seed 42") && text.contains("reproduce: kvd-check verify --server 127.0.0.1:"), "{text}");
}

//! The benchmark's quick mode runs to the end and reports every variant and every target
//! of issue 12 (figures are not checked: they are timings). The run itself checks results:
//! a refused token or a missed map key makes it exit non-zero.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rcu-bench")).args(args).output().expect("run rcu-bench");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn quick_mode_reports_every_variant_and_target() {
    let (ok, text) = run(&["--quick", "--rounds", "1", "--idle-threads", "200"]);
    if !ok && text.contains("built without liburcu") {
        // A machine without liburcu-dev (ci/install-deps.sh installs it): nothing to compare.
        eprintln!("skipped: {}", text.trim());
        return;
    }
    assert!(ok, "{text}");
    for row in [
        "| prcu C API (libprcu.so) |",
        "| prcu Rust (rlib, inlined) |",
        "| liburcu memb (.so) |",
        "| liburcu memb (inlined) |",
        "| liburcu qsbr (.so) |",
        "| liburcu qsbr (inlined) |",
        "| pthread_rwlock read pair |",
        "| crossbeam-epoch pin+unpin |",
        "| arc-swap load+drop |",
        "| prcu (rlib) |",
        "| liburcu memb |",
        "| liburcu qsbr |",
        "| 1000 | prcu Map::get (rlib) |",
        "| 100000 | prcu_map_lookup (libprcu.so) |",
        "| 100000 | liburcu rculfhash (memb, inlined) |",
        "| 1000 | RwLock<HashMap> |",
    ] {
        let line = text.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no row {row:?}:\n{text}"));
        // Every figure in the row is a positive number (ratios end in ×).
        for cell in line[row.len()..].split('|').map(str::trim).filter(|c| !c.is_empty()) {
            let v: f64 = cell.trim_end_matches('×').parse().unwrap_or_else(|_| panic!("bad cell {cell:?} in {line}"));
            assert!(v.is_finite() && v >= 0.0, "{line}");
        }
    }
    assert!(text.contains("prcu fast path true"), "{text}");
    for target in ["- read pair, C API <= memb .so, 64 thr: ", "- read pair, Rust inlined <= memb inlined, 1 thr: "] {
        assert!(text.contains(target), "no {target:?}:\n{text}");
    }
    assert!(text.contains("- synchronize with 200 idle threads >= 10x faster than memb: "), "{text}");
    assert_eq!(text.matches("- map lookups >= rculfhash (").count(), 4, "{text}");
}

#[test]
fn bad_arguments_are_refused_with_usage() {
    for args in [&["--rounds", "0"][..], &["--idle-threads", "many"], &["--frobnicate"], &["--rounds"]] {
        let (ok, text) = run(args);
        assert!(!ok, "{args:?} accepted:\n{text}");
        assert!(text.contains("usage: rcu-bench"), "{args:?}:\n{text}");
    }
    let (ok, text) = run(&["--prcu-so", "/nonexistent/libprcu.so"]);
    assert!(!ok && text.contains("cannot load /nonexistent/libprcu.so"), "{text}");
}

//! Runs the benchmark binary the way CI and a developer would, on glibc's malloc (always
//! present), and under allocators that must make it fail.
use serde_json::Value;
use std::process::{Command, Output};

const ALL_CELLS: usize = 19; // 6 workloads × 3 thread counts + glibc-simple × 1

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alloc-bench"))
        .args(args)
        .env_remove("LD_PRELOAD")
        .output()
        .expect("run alloc-bench")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn quick_run_on_glibc_reports_every_cell() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = bench(&["--quick", "--allocators", "glibc", "--json", json.to_str().unwrap()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "alloc-bench failed: {}\n{stdout}\n{stderr}", out.status);

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), ALL_CELLS, "{report:#}");
    for cell in cells {
        let glibc = &cell["results"]["glibc"];
        let runs = glibc["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{cell:#}");
        assert!(runs[0]["ops"].as_u64().unwrap() > 0, "{cell:#}");
        assert!(runs[0]["peak_rss_kib"].as_u64().unwrap() > 0, "{cell:#}");
        assert!(glibc["ops_per_s_median"].as_f64().unwrap() > 0.0, "{cell:#}");
        assert!(glibc["failures"].as_array().unwrap().is_empty(), "{cell:#}");
    }

    // The text report: two tables, each with a header and one row per cell.
    for title in ["Throughput", "Peak RSS"] {
        let start = stdout.lines().position(|l| l.starts_with(title)).unwrap_or_else(|| panic!("no {title}: {stdout}"));
        let header: Vec<&str> = stdout.lines().nth(start + 1).unwrap().split_whitespace().collect();
        assert_eq!(header, ["workload", "thr", "glibc"], "{stdout}");
        let rows: Vec<Vec<&str>> =
            stdout.lines().skip(start + 2).take(ALL_CELLS).map(|l| l.split_whitespace().collect()).collect();
        for (row, cell) in rows.iter().zip(cells) {
            assert_eq!(row.len(), 3, "{stdout}");
            assert_eq!(row[0], cell["workload"].as_str().unwrap());
            assert_eq!(row[1].parse::<u64>().unwrap(), cell["threads"].as_u64().unwrap());
        }
    }
}

#[test]
fn an_allocator_that_hands_out_a_live_block_fails_the_run() {
    let shim = env!("ALLOC_BENCH_DUP_SHIM");
    let spec = format!("glibc,dup={shim}");
    let out = bench(&["--quick", "--allocators", &spec, "--workloads", "glibc-simple,larson", "--threads", "1"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("CHECK FAILED").count(), 2, "{stderr}");
    assert!(stderr.contains("allocator=dup seed=1"), "{stderr}");
    assert!(stdout_has_failed_cells(&text(&out.stdout)), "{}", text(&out.stdout));
}

fn stdout_has_failed_cells(stdout: &str) -> bool {
    stdout.lines().filter(|l| l.contains("FAILED")).count() >= 4 // 2 cells × 2 tables
}

#[test]
fn a_preload_that_does_not_load_is_detected() {
    // ld.so skips a preload it cannot load and runs the program anyway: the run must not
    // count as that allocator's.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("libnot-an-elf.so");
    std::fs::write(&bogus, "not a shared object\n").unwrap();
    let spec = format!("bogus={}", bogus.display());
    let out = bench(&["--quick", "--allocators", &spec, "--workloads", "glibc-simple"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not take over malloc"), "{stderr}");
}

#[test]
fn bad_arguments_get_a_clear_error() {
    let out = bench(&["--quick", "--allocators", "jemalloc=/nonexistent/libjemalloc.so"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/libjemalloc.so does not exist"), "{}", text(&out.stderr));
    let out = bench(&["--quick", "--workloads", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown workload 'nosuch'"), "{}", text(&out.stderr));
    let out = bench(&["--quick", "--ours", "/nonexistent/libpalloc_preload.so"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("ours: not found at /nonexistent/libpalloc_preload.so"),
        "{}",
        text(&out.stderr)
    );
}

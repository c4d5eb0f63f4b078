//! Memory in the report: the run process's resident size sampled over the run, what each
//! library says it holds, and the resident size across each reload.

mod common;

use common::*;

#[test]
fn memory_is_sampled_and_reported_per_library() {
    let _t = turn();
    let mut args = lib_args();
    args.extend(["--plugin".to_string(), foreign_plugin().display().to_string()]);
    args.extend(
        ["--duration", "3.5", "--seed", "31337", "--hotplug", "simulated", "--reload-rate", "3", "--foreign-rseq"]
            .map(String::from),
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run("memory", &argv);
    assert_eq!(r.code(), 0, "{}", r.describe());
    let st = &r.report()["state"];
    let libs = st["libs"].as_array().unwrap();
    let m = &st["memory"];
    assert_eq!(m["interval_ms"], 1000, "{}", r.describe());
    let samples = m["samples"].as_array().unwrap();
    // One at the start, one a second, one at the end.
    assert!(samples.len() >= 4, "{} samples; {}", samples.len(), r.describe());
    let mut last = 0;
    for s in samples {
        let at = s["at_ms"].as_u64().unwrap();
        assert!(at >= last, "samples out of order; {}", r.describe());
        last = at;
        assert!(s["rss_kib"].as_u64().unwrap() > 1024, "{}", r.describe());
        assert!(s["anon_kib"].as_u64().unwrap() > 0, "{}", r.describe());
        assert_eq!(s["libs_resident"].as_array().unwrap().len(), libs.len(), "{}", r.describe());
    }
    // The plugins have rhp_memory; libpcounters has pcounters_memory or says nothing.
    for l in libs {
        let name = l["name"].as_str().unwrap();
        let mem = &l["memory"];
        if name.starts_with("pcounters") && mem.is_null() {
            continue;
        }
        let (res, rsv) = (mem["resident_bytes"].as_u64().unwrap(), mem["reserved_bytes"].as_u64().unwrap());
        assert!(res > 0 && res <= rsv, "{name}: {res} resident of {rsv}; {}", r.describe());
    }
    // Reloads record the resident size around them.
    let reloads: Vec<&serde_json::Value> = libs.iter().flat_map(|l| l["reloads"].as_array().unwrap()).collect();
    assert!(!reloads.is_empty(), "{}", r.describe());
    for x in reloads {
        assert!(x["anon_before_kib"].as_u64().unwrap() > 0 && x["anon_after_kib"].as_u64().unwrap() > 0, "{x}");
    }
    assert!(r.stdout.contains("memory: rss "), "{}", r.describe());
    assert!(r.stdout.contains("over the run (MiB): 0.0 s "), "{}", r.describe());
    assert!(r.stdout.contains("memory held by each library (its own statistics, at the end): "), "{}", r.describe());
    assert!(r.stdout.contains("foreign_rseq ") && r.stdout.contains(" resident / "), "{}", r.describe());
    assert!(r.stdout.contains("anonymous rss across the reloads of "), "{}", r.describe());
    // The event log came back from the run process's log file.
    assert!(!st["events"].as_array().unwrap().is_empty(), "{}", r.describe());
}

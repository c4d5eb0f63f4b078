//! proptest-generated short scenarios (few cases), and ten thousand threads alive at once.

mod common;

use common::*;
use proptest::prelude::*;

fn scenario_args() -> impl Strategy<Value = Vec<String>> {
    (
        any::<u64>(),
        prop::sample::select(vec!["libc", "reserved", "none"]),
        prop::sample::select(vec!["cpu_id", "mm_cid"]),
        1usize..4,
        prop::sample::select(vec!["auto", "simulated", "off"]),
        any::<[bool; 7]>(),
    )
        .prop_map(|(seed, mode, index, threads, hotplug, off)| {
            let mut a: Vec<String> = lib_args();
            a.extend(
                [
                    "--duration",
                    "0.5",
                    "--seed",
                    &seed.to_string(),
                    "--mode",
                    mode,
                    "--index",
                    index,
                    "--hotplug",
                    hotplug,
                ]
                .map(String::from),
            );
            a.extend(["--threads".to_string(), threads.to_string()]);
            // Fast enough that every disturbance that is on happens in half a second.
            a.extend(["--fork-rate", "4", "--reload-rate", "4", "--hotplug-rate", "4"].map(String::from));
            for (flag, on) in [
                "--no-churn",
                "--no-affinity",
                "--no-cpuset",
                "--no-signals",
                "--no-fork",
                "--no-reload",
                "--rtld-global",
            ]
            .iter()
            .zip(off)
            {
                if on {
                    a.push(flag.to_string());
                }
            }
            a
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    #[test]
    fn short_scenarios_hold_every_invariant(args in scenario_args()) {
        let _t = turn();
        let before = online();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = run("proptest", &argv);
        prop_assert_eq!(online(), before);
        prop_assert_eq!(r.code(), 0, "{:?}\n{}", args, r.describe());
    }
}

#[test]
fn ten_thousand_threads_alive_at_once() {
    let _t = turn();
    let mut a = lib_args();
    // One mixed worker, so that the burst's creator gets the CPUs.
    a.extend(
        ["--duration", "1", "--alive", "10000", "--no-disturbances", "--threads", "1", "--per-lib-workers", "0"]
            .map(String::from),
    );
    let argv: Vec<&str> = a.iter().map(String::as_str).collect();
    let r = run("alive", &argv);
    assert_eq!(r.code(), 0, "{}", r.describe());
    let t = &r.report()["state"]["threads"];
    assert_eq!(t["alive_burst"], serde_json::json!([10000, 10000]), "{t}");
    assert!(t["max_alive"].as_u64().unwrap() >= 10000, "{t}");
}

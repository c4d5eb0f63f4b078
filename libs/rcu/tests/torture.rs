//! The torture pipeline (tests/common/torture.rs) in this process's own registration mode;
//! `modes.rs` reruns it in every other mode.

#[path = "common/torture.rs"]
mod torture;

#[test]
fn torture_pipeline_with_signal_storm() {
    let secs = std::env::var("PRCU_TORTURE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    torture::run_torture(secs);
}

//! Per-CPU statistics counters (in progress).

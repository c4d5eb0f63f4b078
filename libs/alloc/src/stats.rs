//! Statistics: what every layer holds, computed from the structures themselves (exact once
//! the allocating threads are quiet), and the per-CPU counters.

use core::fmt::Write;
use core::sync::atomic::Ordering;

use crate::class::{self, CHUNK, NCACHED, NCLASSES};
use crate::{cache, central, large, meta, sys};

/// Process-wide statistics (`struct palloc_stats` in `palloc.h`; fields only ever added at
/// the end).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Address space mapped: chunks, large blocks, metadata, per-CPU pool.
    pub mapped_bytes: u64,
    /// Resident memory of chunks (measured with `mincore`), large blocks (counted whole),
    /// metadata (counted whole) and the per-CPU pool.
    pub resident_bytes: u64,
    /// Metadata mapped.
    pub metadata_bytes: u64,
    /// Chunk address space mapped.
    pub chunk_bytes: u64,
    /// Live large blocks and their bytes.
    pub large_count: u64,
    /// See `large_count`.
    pub large_bytes: u64,
    /// Objects of the classes handed to the program and not freed.
    pub live_objects: u64,
    /// Their bytes (class sizes).
    pub live_bytes: u64,
    /// Bytes in every CPU cache.
    pub cached_bytes: u64,
    /// Bytes on the central transfer stacks.
    pub transfer_bytes: u64,
    /// Bytes free in spans (cut, returned, pages still backed).
    pub span_free_bytes: u64,
    /// Spans handed out of chunks; those whose pages are backed.
    pub spans: u64,
    /// See `spans`.
    pub backed_spans: u64,
    /// Spans whose pages went back to the kernel, since start.
    pub span_releases: u64,
    /// CPU caches drained to the central layer; drains that failed; objects drained.
    pub drains: u64,
    /// See `drains`.
    pub drain_failures: u64,
    /// See `drains`.
    pub drained_objects: u64,
    /// Sums over CPUs of the per-CPU counters (hits only while counting is on).
    pub hits: u64,
    /// See `hits`.
    pub misses: u64,
    /// See `hits`.
    pub overflows: u64,
    /// Copies of the per-CPU layer (0: not built).
    pub ncpus: u64,
    /// Its index: 0 `cpu_id`, 1 `mm_cid`, -1 not built.
    pub index: i64,
}

/// One CPU cache (`struct palloc_cpu_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Objects handed out of this cache (while counting is on).
    pub hits: u64,
    /// Refills of this cache from the central layer.
    pub misses: u64,
    /// Batches this cache gave to the central layer because it was full.
    pub overflows: u64,
    /// Objects and bytes cached now.
    pub cached_objects: u64,
    /// See `cached_objects`.
    pub cached_bytes: u64,
}

fn chunk_resident(base: usize) -> u64 {
    let mut vec = [0u8; CHUNK / sys::PAGE];
    // SAFETY: a mapped chunk of CHUNK bytes; `vec` has one byte per page.
    let r = unsafe { libc::mincore(base as *mut _, CHUNK, vec.as_mut_ptr()) };
    if r != 0 {
        return CHUNK as u64;
    }
    vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * sys::PAGE as u64
}

/// Current statistics.
pub fn stats() -> Stats {
    let e = sys::errno();
    let mut s = Stats { index: -1, ..Default::default() };
    let mut cached = [0u64; NCLASSES];
    if let Some(k) = cache::built() {
        s.ncpus = k.ncpus as u64;
        s.index = match k.index {
            rseq::Index::CpuId => 0,
            rseq::Index::MmCid => 1,
        };
        for i in 0..k.ncpus {
            s.hits += k.hits.at(i);
            s.misses += k.misses.at(i);
            s.overflows += k.overflows.at(i);
            for (c, n) in cached.iter_mut().enumerate().take(NCACHED) {
                *n += k.cached(c, i);
            }
        }
        let (res, reserved) = k.pool_bytes();
        s.mapped_bytes += reserved as u64;
        s.resident_bytes += res as u64;
    }
    for (c, &ncached) in cached.iter().enumerate() {
        let k = central::counts(c);
        let size = class::class_size(c) as u64;
        let live = k.out_of_spans.saturating_sub(k.transfer + ncached);
        s.live_objects += live;
        s.live_bytes += live * size;
        s.cached_bytes += ncached * size;
        s.transfer_bytes += k.transfer * size;
        s.span_free_bytes += k.span_free * size;
        s.spans += k.spans;
        s.backed_spans += k.backed_spans;
        s.span_releases += k.releases;
    }
    s.chunk_bytes = central::CHUNK_BYTES.load(Ordering::Relaxed);
    s.metadata_bytes = meta::mapped_bytes() as u64;
    s.large_count = large::LARGE_COUNT.load(Ordering::Relaxed);
    s.large_bytes = large::LARGE_BYTES.load(Ordering::Relaxed);
    let large_cached = large::CACHED_BYTES.load(Ordering::Relaxed);
    s.mapped_bytes += s.chunk_bytes + s.metadata_bytes + s.large_bytes + large_cached;
    let mut chunk_res = 0;
    central::for_each_chunk(|b| chunk_res += chunk_resident(b));
    s.resident_bytes += chunk_res + s.metadata_bytes + s.large_bytes + large_cached;
    s.drains = cache::DRAINS.load(Ordering::Relaxed);
    s.drain_failures = cache::DRAIN_FAILURES.load(Ordering::Relaxed);
    s.drained_objects = cache::DRAINED_OBJECTS.load(Ordering::Relaxed);
    sys::set_errno(e);
    s
}

/// Statistics of CPU cache `i`; `None` when the layer is not built or `i` is out of range.
pub fn cpu_stats(i: usize) -> Option<CpuStats> {
    let k = cache::built()?;
    if i >= k.ncpus {
        return None;
    }
    let cached_objects = (0..NCACHED).map(|c| k.cached(c, i)).sum();
    Some(CpuStats {
        hits: k.hits.at(i),
        misses: k.misses.at(i),
        overflows: k.overflows.at(i),
        cached_objects,
        cached_bytes: k.cached_bytes(i),
    })
}

fn kib(b: u64) -> u64 {
    b.div_ceil(1024)
}

/// Writes the statistics as one readable table to `fd`, without allocating.
pub fn print(fd: i32) {
    let s = stats();
    let mut b = sys::StackBuf::<4096>::new();
    let index = match s.index {
        0 => "cpu_id",
        1 => "mm_cid",
        _ => "none (central layer only)",
    };
    let _ = writeln!(b, "palloc statistics (per-CPU layer: {} copies, index {})", s.ncpus, index);
    let rows: [(&str, u64); 11] = [
        ("mapped", kib(s.mapped_bytes)),
        ("resident", kib(s.resident_bytes)),
        ("metadata", kib(s.metadata_bytes)),
        ("chunks mapped", kib(s.chunk_bytes)),
        ("large blocks", kib(s.large_bytes)),
        ("live small blocks", kib(s.live_bytes)),
        ("cached on CPUs", kib(s.cached_bytes)),
        ("central transfer", kib(s.transfer_bytes)),
        ("free in spans", kib(s.span_free_bytes)),
        ("spans (backed)", s.backed_spans),
        ("spans released", s.span_releases),
    ];
    for (name, v) in rows {
        let unit = if name.starts_with("spans") { "" } else { " KiB" };
        let _ = writeln!(b, "  {name:<20} {v:>12}{unit}");
    }
    let _ = writeln!(
        b,
        "  {:<20} {:>12}  (failed {}, objects {})",
        "drains", s.drains, s.drain_failures, s.drained_objects
    );
    let _ = writeln!(b, "  {:<20} {:>12}", "large blocks (count)", s.large_count);
    let _ = writeln!(b, "  {:<20} {:>12}", "live small (count)", s.live_objects);
    let _ = writeln!(b, "  cpu        hits      misses   overflows   cached KiB");
    for i in 0..s.ncpus as usize {
        if let Some(c) = cpu_stats(i) {
            if c.hits + c.misses + c.overflows + c.cached_objects == 0 {
                continue;
            }
            let _ =
                writeln!(b, "  {i:>3} {:>11} {:>11} {:>11} {:>12}", c.hits, c.misses, c.overflows, kib(c.cached_bytes));
        }
    }
    sys::write_all(fd, b.as_bytes());
}

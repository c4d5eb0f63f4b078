//! The allocator adapter: `libpalloc.so` through its prefixed C API
//! (`libs/alloc/include/palloc.h`), found with `dlsym` at run time; no link-time dependency.
//!
//! Work units allocate blocks of seeded random sizes (every class, large blocks above
//! 256 KiB, aligned blocks), write a pattern derived from the block's address and a seed,
//! reallocate some across classes (the contents must follow), hand some to other threads
//! through shared handoff shards, and take, verify and free blocks that others handed off.
//! The adapter's ledger is the set of blocks in the shards: while no unit runs, every block
//! this copy of the library has handed out and not freed is in a shard, so the library's
//! statistics must count exactly those (only this adapter calls this copy).

use std::ffi::{c_int, c_void, CStr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, Result};
use libloading::os::unix::Library;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{CheckOk, Counts, Memory, Participant, SetupConfig, ThreadMode};
use crate::scenario::IndexMode;

/// palloc's largest size served from a size class (`libs/alloc/src/class.rs` `MAX_SMALL`).
const MAX_SMALL: usize = 256 * 1024;
/// The largest alignment palloc serves from a size class (`libs/alloc/src/api.rs`
/// `aligned`): above it, or when `max(size, align)` exceeds [`MAX_SMALL`], a block is a
/// large mapping of its own.
const MAX_SMALL_ALIGN: usize = 64 * 1024;
/// Largest block a unit asks for.
const MAX_LARGE: usize = 1536 * 1024;
/// Handoff shards and the blocks each may hold.
const SHARDS: usize = 8;
const SHARD_CAP: usize = 96;
/// Bytes of a block the pattern covers whole; beyond it, the last bytes and one word per
/// 4 KiB page (so that a large block costs a few touched pages, not its whole size).
const FULL_PATTERN: usize = 4096;

type MallocFn = unsafe extern "C" fn(usize) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type ReallocFn = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
type AlignedFn = unsafe extern "C" fn(usize, usize) -> *mut c_void;
type UsableFn = unsafe extern "C" fn(*mut c_void) -> usize;
type StatsFn = unsafe extern "C" fn(*mut Stats, usize) -> c_int;
type SetIndexFn = unsafe extern "C" fn(c_int) -> c_int;
type ForceFn = unsafe extern "C" fn(c_int);
type ModeFn = unsafe extern "C" fn() -> c_int;
type VersionFn = unsafe extern "C" fn() -> *const std::ffi::c_char;

/// `struct palloc_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    mapped_bytes: u64,
    resident_bytes: u64,
    metadata_bytes: u64,
    chunk_bytes: u64,
    large_count: u64,
    large_bytes: u64,
    live_objects: u64,
    live_bytes: u64,
    cached_bytes: u64,
    transfer_bytes: u64,
    span_free_bytes: u64,
    spans: u64,
    backed_spans: u64,
    span_releases: u64,
    drains: u64,
    drain_failures: u64,
    drained_objects: u64,
    hits: u64,
    misses: u64,
    overflows: u64,
    ncpus: u64,
    index: i64,
}

struct Api {
    malloc: MallocFn,
    free: FreeFn,
    realloc: ReallocFn,
    aligned: AlignedFn,
    usable: UsableFn,
    stats: StatsFn,
    force: ForceFn,
    mode: ModeFn,
    errno: ModeFn,
}

/// A block handed out by the library: where, what was asked, and the pattern's tag.
#[derive(Clone, Copy, Debug)]
struct Block {
    addr: usize,
    size: usize,
    align: usize,
    tag: u64,
}

impl Block {
    fn small(&self) -> bool {
        is_small(self.size, self.align)
    }
}

/// Whether palloc serves this request from a size class (else: a large mapping).
fn is_small(size: usize, align: usize) -> bool {
    size.max(align) <= MAX_SMALL && align <= MAX_SMALL_ALIGN
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

fn pattern_byte(tag: u64, i: usize) -> u8 {
    (mix(tag ^ (i as u64 >> 3)) >> ((i & 7) * 8)) as u8
}

/// Offsets of a block of `size` bytes the pattern covers.
fn pattern_offsets(size: usize) -> impl Iterator<Item = usize> {
    let full = size.min(FULL_PATTERN);
    let tail_start = size.saturating_sub(64).max(full);
    let pages = (full..tail_start).step_by(4096).flat_map(|o| o..o + 8);
    (0..full).chain(pages.filter(move |&o| o < tail_start)).chain(tail_start..size)
}

/// Writes block `b`'s pattern.
fn write_pattern(b: &Block) {
    let p = b.addr as *mut u8;
    for i in pattern_offsets(b.size) {
        // SAFETY: `b` is a live block of at least `b.size` bytes owned by the caller.
        unsafe { p.add(i).write(pattern_byte(b.tag, i)) };
    }
}

/// Verifies the first `len` bytes of block `b`'s pattern at `addr` (a block that holds `b`'s
/// contents: `b` itself, or where a realloc moved them).
fn verify_pattern(b: &Block, addr: usize, len: usize, what: &str) -> Result<(), String> {
    let p = addr as *const u8;
    for i in pattern_offsets(b.size).take_while(|&i| i < len) {
        // SAFETY: the block at `addr` is live, owned by the caller, at least `len` bytes.
        let got = unsafe { p.add(i).read() };
        let want = pattern_byte(b.tag, i);
        if got != want {
            return Err(format!(
                "{what}: block {addr:#x} ({} bytes asked, align {}, tag {:#x}) byte {i} is {got:#04x}, its pattern says \
                 {want:#04x}",
                b.size, b.align, b.tag
            ));
        }
    }
    Ok(())
}

/// One loaded copy of libpalloc and the adapter's ledger.
pub struct AllocAdapter {
    api: Api,
    name: String,
    index: IndexMode,
    shards: Vec<Mutex<Vec<Block>>>,
    ops: AtomicU64,
    /// Operations on threads that had no rseq area (palloc's locked fallback ran them).
    fallback_ops: AtomicU64,
    handoffs: AtomicU64,
    reallocs: AtomicU64,
    /// `live_objects` and `large_count` found right after the load (a fresh copy: none).
    at_load: (u64, u64),
    _lib: Library,
}

fn symbol<T: Copy>(lib: &Library, path: &Path, name: &str) -> Result<T> {
    let cname = format!("{name}\0");
    // SAFETY: the symbol is used with the C type palloc.h gives it.
    unsafe { lib.get::<T>(cname.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| anyhow!("{} does not export {name} (palloc.h): {e}", path.display()))
}

impl AllocAdapter {
    /// Finds the API and sets the per-CPU index before any allocation.
    pub fn new(lib: Library, path: &Path, cfg: &SetupConfig) -> Result<AllocAdapter> {
        let api = Api {
            malloc: symbol(&lib, path, "palloc_malloc")?,
            free: symbol(&lib, path, "palloc_free")?,
            realloc: symbol(&lib, path, "palloc_realloc")?,
            aligned: symbol(&lib, path, "palloc_aligned_alloc")?,
            usable: symbol(&lib, path, "palloc_usable_size")?,
            stats: symbol(&lib, path, "palloc_stats")?,
            force: symbol(&lib, path, "palloc_force_fallback")?,
            mode: symbol(&lib, path, "palloc_thread_mode")?,
            errno: symbol(&lib, path, "palloc_thread_errno")?,
        };
        let set_index: SetIndexFn = symbol(&lib, path, "palloc_set_index")?;
        let code = match cfg.index {
            IndexMode::CpuId => 0,
            IndexMode::MmCid => 1,
        };
        // SAFETY: plain value; called before this copy's first allocation.
        let r = unsafe { set_index(code) };
        if r != 0 {
            return Err(anyhow!(
                "{}: palloc_set_index({code}) returned {r} right after the load (before any allocation)",
                path.display()
            ));
        }
        let version: VersionFn = symbol(&lib, path, "palloc_version")?;
        // SAFETY: a static NUL-terminated string per palloc.h (NULL checked).
        let v = unsafe {
            let p = version();
            if p.is_null() {
                "?".to_string()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let mut a = AllocAdapter {
            api,
            name: format!("palloc {v}"),
            index: cfg.index,
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            ops: AtomicU64::new(0),
            fallback_ops: AtomicU64::new(0),
            handoffs: AtomicU64::new(0),
            reallocs: AtomicU64::new(0),
            at_load: (0, 0),
            _lib: lib,
        };
        let s = a.stats().map_err(|e| anyhow!("{}: {e}", path.display()))?;
        a.at_load = (s.live_objects, s.large_count);
        Ok(a)
    }

    fn stats(&self) -> Result<Stats, String> {
        let mut s = Stats::default();
        // SAFETY: writable statistics of the size passed.
        let r = unsafe { (self.api.stats)(&mut s, std::mem::size_of::<Stats>()) };
        if r != 0 {
            return Err(format!("palloc_stats returned {r}"));
        }
        Ok(s)
    }

    fn usable(&self, addr: usize) -> usize {
        // SAFETY: a live block of this library.
        unsafe { (self.api.usable)(addr as *mut c_void) }
    }

    /// Allocates a block of `size` bytes (aligned to `align` when above 16) and writes its
    /// pattern.
    fn alloc(&self, size: usize, align: usize, seed: u64) -> Result<Block, String> {
        // SAFETY: plain sizes; `align` is a power of two.
        let p = unsafe {
            if align > 16 {
                (self.api.aligned)(align, size)
            } else {
                (self.api.malloc)(size)
            }
        };
        if p.is_null() {
            return Err(format!("allocation of {size} bytes (align {align}) returned NULL"));
        }
        let b = Block { addr: p as usize, size, align, tag: mix(p as u64 ^ seed) };
        if !b.addr.is_multiple_of(align.max(16)) {
            return Err(format!("block {:#x} of {size} bytes is not aligned to {}", b.addr, align.max(16)));
        }
        let u = self.usable(b.addr);
        if u < size {
            return Err(format!("palloc_usable_size({:#x}) = {u}, below the {size} bytes asked", b.addr));
        }
        write_pattern(&b);
        Ok(b)
    }

    /// Verifies block `b` and frees it (also when the pattern is broken: the error is
    /// returned after the free, so that the ledger stays exact).
    fn verify_and_free(&self, b: Block, what: &str) -> Result<(), String> {
        let r = verify_pattern(&b, b.addr, b.size, what);
        // SAFETY: a live block of this library, owned by the caller, freed once.
        unsafe { (self.api.free)(b.addr as *mut c_void) };
        r
    }

    /// Reallocates `b` to a size of another class; the old contents must follow. Returns
    /// the block that is live afterwards (the old one when realloc returned NULL) and what
    /// went wrong, if anything.
    fn realloc(&self, b: Block, size: usize, seed: u64) -> (Block, Result<(), String>) {
        // SAFETY: a live block of this library, owned by the caller (not aligned: palloc's
        // realloc keeps only the 16-byte alignment).
        let q = unsafe { (self.api.realloc)(b.addr as *mut c_void, size) };
        if q.is_null() {
            return (b, Err(format!("palloc_realloc({:#x}, {size}) returned NULL (old block kept)", b.addr)));
        }
        let kept = b.size.min(size);
        let moved = verify_pattern(&b, q as usize, kept, &format!("realloc {} -> {size} bytes", b.size));
        let nb = Block { addr: q as usize, size, align: 16, tag: mix(q as u64 ^ seed) };
        let u = self.usable(nb.addr);
        write_pattern(&nb);
        if moved.is_err() {
            return (nb, moved);
        }
        if u < size {
            return (nb, Err(format!("palloc_usable_size({:#x}) = {u} after realloc to {size}", nb.addr)));
        }
        (nb, Ok(()))
    }

    fn fast_now(&self) -> bool {
        self.thread_mode().is_fast()
    }

    /// Every held block intact, aligned, big enough, no overlap; exact statistics; RSS
    /// bounded.
    fn quiesced_check(&self, what: &str) -> Result<CheckOk, String> {
        let mut held: Vec<Block> = Vec::new();
        for s in &self.shards {
            held.extend(s.lock().unwrap_or_else(|e| e.into_inner()).iter().copied());
        }
        let mut facts = 0u64;
        for b in &held {
            verify_pattern(b, b.addr, b.size, what)?;
            if !b.addr.is_multiple_of(b.align.max(16)) {
                return Err(format!("{what}: held block {:#x} is not aligned to {}", b.addr, b.align.max(16)));
            }
            let u = self.usable(b.addr);
            if u < b.size {
                return Err(format!(
                    "{what}: palloc_usable_size({:#x}) = {u}, below the {} bytes asked",
                    b.addr, b.size
                ));
            }
            facts += 3;
        }
        held.sort_by_key(|b| b.addr);
        let spans: Vec<(usize, usize)> = held.iter().map(|b| (b.addr, self.usable(b.addr))).collect();
        if let Some(i) = first_overlap(&spans) {
            let (a, b) = (&held[i], &held[i + 1]);
            return Err(format!(
                "{what}: live blocks overlap: {:#x} (usable {} bytes, {} asked) reaches {:#x}, past the start of {:#x} \
                 ({} asked)",
                a.addr,
                spans[i].1,
                a.size,
                a.addr + spans[i].1,
                b.addr,
                b.size
            ));
        }
        facts += held.len().saturating_sub(1) as u64;
        let small = held.iter().filter(|b| b.small()).count() as u64;
        let large = held.len() as u64 - small;
        let s = self.stats()?;
        if s.live_objects != small {
            return Err(format!(
                "{what}: palloc_stats live_objects = {} but the adapter holds {small} small blocks (of {} held; only \
                 this adapter uses this copy)",
                s.live_objects,
                held.len()
            ));
        }
        if s.large_count != large {
            return Err(format!(
                "{what}: palloc_stats large_count = {} but the adapter holds {large} large blocks (of {} held)",
                s.large_count,
                held.len()
            ));
        }
        facts += 2;
        let index_ok = match (self.index, s.index) {
            // No per-CPU layer (yet): nothing is indexed.
            (_, -1) => s.ncpus == 0,
            (IndexMode::CpuId, 0) | (IndexMode::MmCid, 1) => true,
            (IndexMode::MmCid, 0) => rseq::feature_size() < 28,
            _ => false,
        };
        if !index_ok {
            return Err(format!(
                "{what}: palloc_stats index = {} ({} CPU copies), the run asked for {}",
                s.index,
                s.ncpus,
                self.index.name()
            ));
        }
        facts += 1;
        let bound = rss_bound(&s);
        if s.resident_bytes > bound {
            return Err(format!(
                "{what}: resident {} KiB above the bound {} KiB (live {} KiB in {} small blocks, large {} KiB in {}, \
                 cached {} KiB, transfer {} KiB, free in backed spans {} KiB, metadata {} KiB, {} CPUs, mapped {} KiB)",
                s.resident_bytes >> 10,
                bound >> 10,
                s.live_bytes >> 10,
                s.live_objects,
                s.large_bytes >> 10,
                s.large_count,
                s.cached_bytes >> 10,
                s.transfer_bytes >> 10,
                s.span_free_bytes >> 10,
                s.metadata_bytes >> 10,
                s.ncpus,
                s.mapped_bytes >> 10
            ));
        }
        facts += 1;
        Ok(CheckOk {
            checked: facts,
            what: format!(
                "{} blocks held ({small} small, {large} large), intact, aligned, disjoint; stats exact; resident {} KiB \
                 <= bound {} KiB; so far {} operations, {} blocks handed off, {} reallocs",
                held.len(),
                s.resident_bytes >> 10,
                bound >> 10,
                self.ops.load(Ordering::Relaxed),
                self.handoffs.load(Ordering::Relaxed),
                self.reallocs.load(Ordering::Relaxed)
            ),
        })
    }
}

/// The first `i` where block `i` (address, usable bytes; sorted by address) reaches into
/// block `i + 1`.
fn first_overlap(blocks: &[(usize, usize)]) -> Option<usize> {
    blocks.windows(2).position(|w| w[0].0 + w[0].1 > w[1].0)
}

/// The most memory palloc may keep resident for what the adapter holds. Each term:
/// - `live_bytes + large_bytes`: the held blocks themselves (class sizes; large blocks are
///   counted whole by `palloc_stats`), plus `metadata_bytes` (counted whole too);
/// - per CPU copy, at most `PERCPU_BYTES_MAX` of cached objects (class.rs: 254 objects of
///   each class up to 64 bytes, 126 up to 256, 62 up to 1 KiB, 14 up to 4 KiB, 6 up to
///   16 KiB, 2 up to 32 KiB: about 1.4 MiB), counted as 1.5 MiB, plus the per-CPU pool slots
///   that hold them (counted whole: the same again);
/// - the central transfer stacks: about 512 KiB per class (`transfer_capacity`), 52 classes;
/// - empty spans each class keeps backed for good (`central.rs` `keep_empty`: one 64 KiB span
///   per class up to 8 KiB), counted generously as 52 * 256 KiB + 12 * 2 MiB (the twelve
///   classes above 32 KiB have spans of 512 KiB to 2 MiB); plus the empty spans past those that
///   wait up to a second for the decay pass (`DECAYING_MAX`, 8 MiB, passed by at most a span
///   per class when classes empty spans at the same moment: counted as 8 + 8 MiB);
/// - fragmentation: free objects in spans that still hold live objects. palloc only returns
///   a span's pages when the whole span is free, so a span with one live object stays
///   backed; the adapter's random frees leave spans part-full. Bounded here by the live
///   bytes again (spans at least half free across the board would break it) plus 8 MiB.
/// - a fixed 16 MiB margin for the chunk headers and page rounding.
fn rss_bound(s: &Stats) -> u64 {
    const MIB: u64 = 1 << 20;
    let percpu = s.ncpus * 3 * MIB;
    let transfer = 52 * 512 * 1024;
    let empty_kept = 52 * 256 * 1024 + 12 * 2 * MIB + 16 * MIB;
    s.live_bytes * 2 + s.large_bytes + s.metadata_bytes + percpu + transfer + empty_kept + 8 * MIB + 16 * MIB
}

impl Participant for AllocAdapter {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "alloc"
    }

    fn work(&self, seed: u64) -> Result<(), String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut mine: Vec<Block> = Vec::new();
        let mut err: Option<String> = None;
        let mut ops = 0u64;
        let note = |e: Result<(), String>, err: &mut Option<String>| {
            if let Err(e) = e {
                err.get_or_insert(e);
            }
        };
        let n = rng.random_range(8..40);
        for _ in 0..n {
            match rng.random_range(0..100) {
                0..=59 => {
                    let (size, align) = random_request(&mut rng);
                    match self.alloc(size, align, rng.random()) {
                        Ok(b) => mine.push(b),
                        Err(e) => note(Err(e), &mut err),
                    }
                    ops += 1;
                }
                60..=69 if !mine.is_empty() => {
                    let i = rng.random_range(0..mine.len());
                    if mine[i].align > 16 {
                        continue;
                    }
                    let b = mine.swap_remove(i);
                    let (size, _) = random_request(&mut rng);
                    let (live, r) = self.realloc(b, size, rng.random());
                    mine.push(live);
                    note(r, &mut err);
                    self.reallocs.fetch_add(1, Ordering::Relaxed);
                    ops += 1;
                }
                70..=84 if !mine.is_empty() => {
                    let b = mine.swap_remove(rng.random_range(0..mine.len()));
                    note(self.verify_and_free(b, "free by its own thread"), &mut err);
                    ops += 1;
                }
                _ => {
                    let shard = &self.shards[rng.random_range(0..SHARDS)];
                    let taken: Vec<Block> = {
                        let mut g = shard.lock().unwrap_or_else(|e| e.into_inner());
                        let k = rng.random_range(0..=g.len().min(2));
                        let at = g.len() - k;
                        g.split_off(at)
                    };
                    for b in taken {
                        note(self.verify_and_free(b, "free of a block handed off by another thread"), &mut err);
                        ops += 1;
                    }
                }
            }
        }
        // Hand some to other threads, free the rest.
        for b in mine {
            if rng.random_ratio(1, 2) {
                let shard = &self.shards[rng.random_range(0..SHARDS)];
                let mut g = shard.lock().unwrap_or_else(|e| e.into_inner());
                if g.len() < SHARD_CAP {
                    g.push(b);
                    self.handoffs.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            note(self.verify_and_free(b, "free at the end of a unit"), &mut err);
            ops += 1;
        }
        self.ops.fetch_add(ops, Ordering::Relaxed);
        if !self.fast_now() {
            self.fallback_ops.fetch_add(ops, Ordering::Relaxed);
        }
        match err {
            Some(e) => Err(format!("seed {seed}: {e}")),
            None => Ok(()),
        }
    }

    fn check(&self) -> Result<CheckOk, String> {
        self.quiesced_check("quiesced check")
    }

    fn report(&self) -> Counts {
        Counts {
            ops: self.ops.load(Ordering::Relaxed),
            fallback_ops: self.fallback_ops.load(Ordering::Relaxed),
            ..Counts::default()
        }
    }

    fn memory(&self) -> Option<Memory> {
        let s = self.stats().ok()?;
        Some(Memory { resident_bytes: s.resident_bytes, reserved_bytes: s.mapped_bytes })
    }

    fn index_used(&self) -> Option<&'static str> {
        match self.stats().ok()?.index {
            0 => Some("cpu_id"),
            1 => Some("mm_cid"),
            _ => None,
        }
    }

    fn thread_mode(&self) -> ThreadMode {
        // SAFETY: no arguments.
        let m = unsafe { (self.api.mode)() };
        match m {
            1 => ThreadMode::LibcOwned,
            2 => ThreadMode::Registered,
            // SAFETY: no arguments.
            4 => ThreadMode::Unavailable { errno: unsafe { (self.api.errno)() } },
            5 => ThreadMode::Disabled,
            other => ThreadMode::Unknown(other as i64),
        }
    }

    fn registers_lazily(&self) -> bool {
        true
    }

    fn force_fallback(&self, on: bool) -> bool {
        // SAFETY: plain value.
        unsafe { (self.api.force)(c_int::from(on)) };
        true
    }

    fn fork_child(&self, seed: u64) -> Result<CheckOk, String> {
        // Other threads may have held allocator locks (and the adapter's shards) at the fork:
        // the child allocates and frees blocks of its own and checks them, and the library's
        // counts move by exactly its blocks.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let before = self.stats().map_err(|e| format!("in the child: {e}"))?;
        let mut mine = Vec::new();
        for _ in 0..64 {
            let (size, align) = random_request(&mut rng);
            mine.push(self.alloc(size, align, rng.random()).map_err(|e| format!("in the child: {e}"))?);
        }
        let small = mine.iter().filter(|b| b.small()).count() as u64;
        let large = mine.len() as u64 - small;
        let mid = self.stats().map_err(|e| format!("in the child: {e}"))?;
        let mut result = Ok(());
        if mid.live_objects != before.live_objects + small || mid.large_count != before.large_count + large {
            result = Err(format!(
                "in the child: live_objects {} -> {} and large_count {} -> {} after allocating {small} small and \
                 {large} large blocks",
                before.live_objects, mid.live_objects, before.large_count, mid.large_count
            ));
        }
        for b in mine {
            if let Err(e) = self.verify_and_free(b, "in the child") {
                result = result.and(Err(e));
            }
        }
        let after = self.stats().map_err(|e| format!("in the child: {e}"))?;
        if result.is_ok() && (after.live_objects != before.live_objects || after.large_count != before.large_count) {
            result = Err(format!(
                "in the child: live_objects {} and large_count {} after freeing every block, {} and {} before",
                after.live_objects, after.large_count, before.live_objects, before.large_count
            ));
        }
        result.map(|()| CheckOk {
            checked: 3 + 64,
            what: format!("64 blocks ({small} small, {large} large) allocated, checked and freed in the child"),
        })
    }

    fn fork_needs_quiescence(&self) -> bool {
        false
    }

    fn before_unload(&self) -> Result<CheckOk, String> {
        self.quiesced_check("before unload")
    }

    fn fresh_after_reload(&self) -> Result<CheckOk, String> {
        if self.at_load != (0, 0) {
            return Err(format!(
                "a fresh load found live_objects {} and large_count {} (expected none)",
                self.at_load.0, self.at_load.1
            ));
        }
        Ok(CheckOk { checked: 2, what: "fresh load has no live blocks".into() })
    }

    fn teardown(&self) {
        // The held blocks go back before the library goes away.
        for s in &self.shards {
            let blocks = std::mem::take(&mut *s.lock().unwrap_or_else(|e| e.into_inner()));
            for b in blocks {
                // SAFETY: a live block of this library, freed once.
                unsafe { (self.api.free)(b.addr as *mut c_void) };
            }
        }
    }
}

/// A random request: mostly small sizes over every class, some above 256 KiB, some aligned.
fn random_request(rng: &mut ChaCha8Rng) -> (usize, usize) {
    let size = match rng.random_range(0..100) {
        0..=49 => rng.random_range(1..=256),
        50..=74 => rng.random_range(257..=4096),
        75..=89 => rng.random_range(4097..=64 * 1024),
        90..=96 => rng.random_range(64 * 1024 + 1..=MAX_SMALL),
        _ => rng.random_range(MAX_SMALL + 1..=MAX_LARGE),
    };
    let align = if rng.random_ratio(1, 10) { 1usize << rng.random_range(5..=17) } else { 16 };
    (size, align)
}

/// The registry's constructor of this adapter.
pub fn open(lib: Library, path: &Path, cfg: &SetupConfig) -> Result<Box<dyn Participant>> {
    Ok(Box::new(AllocAdapter::new(lib, path, cfg)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_offsets_cover_small_blocks_and_stay_inside() {
        assert_eq!(pattern_offsets(100).collect::<Vec<_>>(), (0..100).collect::<Vec<_>>());
        let big: Vec<usize> = pattern_offsets(1 << 20).collect();
        assert!(big.iter().all(|&o| o < 1 << 20));
        assert!(big.windows(2).all(|w| w[0] < w[1]));
        assert!(big.contains(&((1 << 20) - 1)));
        assert!(big.contains(&(8192 + 3)));
    }

    #[test]
    fn overlaps_are_found() {
        assert_eq!(first_overlap(&[(0, 16), (16, 32), (48, 16)]), None);
        assert_eq!(first_overlap(&[(0, 16), (16, 33), (48, 16)]), Some(1));
        // The same block held twice.
        assert_eq!(first_overlap(&[(0, 16), (64, 16), (64, 16)]), Some(1));
    }

    #[test]
    fn small_or_large_like_palloc() {
        assert!(is_small(MAX_SMALL, 16));
        assert!(!is_small(MAX_SMALL + 1, 16));
        assert!(is_small(100, 64 * 1024));
        assert!(!is_small(100, 128 * 1024));
    }
}

//! Adapter for libplocks (`libs/locks`, `plocks.h`): workers guard plain (non-atomic)
//! per-CPU data with the library's locks and check, on the spot and when quiesced, that no
//! one ever saw another's half-done update.
//!
//! - **Per-CPU mutex array** (`plock_mutex_*`): one [`Cell`] per lock index, four plain
//!   `u64` words that must stay equal and a plain update count. A unit takes a lock — the
//!   current CPU's (`plock_mutex_lock`, most often), a random index (`plock_mutex_lock_index`)
//!   or a random index if free (`plock_mutex_trylock_index`) — checks that the cell's words
//!   are equal, adds `d` to each word one store at a time with pauses (and sometimes a
//!   `sched_yield`, so that the holder is preempted half-way; one update in 64 moves itself
//!   to another CPU of its mask half-way, and restores its mask after the release unless
//!   the harness changed it meanwhile), bumps the count,
//!   adds `d` and 1 to the adapter's atomic ledger of that index, and releases the lock from
//!   whatever CPU it runs on then. A holder count per index (atomic, incremented right
//!   after the take) catches two holders at once directly.
//! - **Big-reader lock** (`plock_rwlock_*`): a [`Block`] of eight plain words. A writer (one
//!   unit in sixteen) takes the write lock, checks that the block is whole and equals the
//!   ledger of completed writes, writes the next value into the words one at a time with
//!   pauses (and sometimes a yield between the halves), counts the write, releases. Readers
//!   take the read lock and read the words with pauses in between: every word must equal
//!   the first, and the first must equal the ledger of completed writes (no writer can be
//!   inside while a reader is).
//!
//! A unit that sees a torn cell or block, two holders, or an error code returns an error
//! (the run fails with its seed). The quiesced check takes every mutex index with
//! `plock_mutex_trylock_index` (all must be free: no unit runs) and compares its cell with
//! the ledger exactly (every increment counted once), takes the write lock and compares the
//! block, and checks the statistics: the ledger's updates add up to the units that
//! completed, and the library counted at least two fallback adds for every read pair of a
//! thread without rseq.
//!
//! **Fork** (while other threads may hold locks: the fork does not quiesce this library).
//! The child keeps every lock as it was (`libs/locks/README.md`): an index whose holder
//! count was non-zero at the fork must answer `PLOCK_EBUSY` in the child (it stays held
//! forever; the child never waits for it), a free one must hold a cell equal to the ledger
//! and can be taken and updated. The child takes the big-reader lock only when no parent
//! thread was inside or waiting for it (a reader inside in the parent would keep the child's
//! writer out forever), and exercises a fresh mutex array and rwlock of its own.
//!
//! **A broken lock is caught**: `HARNESS_PLOCKS_BREAK=mutex` makes mutex units skip the
//! lock (they use the current CPU's cell unlocked), `HARNESS_PLOCKS_BREAK=rwlock` makes
//! readers skip the read lock. Either fails the run (torn views, lost updates); a test
//! shows it. The race the switch creates is the point of it; the words are accessed with
//! aligned volatile loads and stores, so a racing access reads one old or new word.

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{anyhow, Result};
use libloading::os::unix::Library;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{CheckOk, Counts, Participant, SetupConfig, ThreadMode};

/// Equal words of a mutex cell.
const WORDS: usize = 4;
/// Words of the rwlock's block.
const BLOCK: usize = 8;
/// One unit in this many is a writer of the big-reader lock.
const WRITER_ONE_IN: u32 = 16;
/// One mutex update in this many moves its thread to another CPU while it holds the lock.
const MIGRATE_ONE_IN: u32 = 64;

const EBUSY: c_int = -2;

type CreateFn = unsafe extern "C" fn() -> *mut c_void;
type DestroyFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type OpFn = unsafe extern "C" fn(*const c_void) -> c_int;
type OpIdxFn = unsafe extern "C" fn(*const c_void, c_int) -> c_int;
type ModeFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type StatsFn = unsafe extern "C" fn(*mut RseqStats) -> c_int;
type ForceFn = unsafe extern "C" fn(c_int);
type StrFn = unsafe extern "C" fn() -> *const c_char;
type StrErrFn = unsafe extern "C" fn(c_int) -> *const c_char;

/// `struct plock_rseq_statistics`.
#[repr(C)]
#[derive(Default)]
struct RseqStats {
    aborts: u64,
    fallback_ops: u64,
    registered_by_us: u64,
    registered_by_peer: u64,
    registration_failures: u64,
}

#[derive(Clone, Copy)]
struct Api {
    m_create: CreateFn,
    m_destroy: DestroyFn,
    m_count: OpFn,
    m_lock: OpFn,
    m_lock_index: OpIdxFn,
    m_trylock_index: OpIdxFn,
    m_unlock: OpIdxFn,
    rw_create: CreateFn,
    rw_destroy: DestroyFn,
    rd_lock: OpFn,
    rd_unlock: OpFn,
    wr_lock: OpFn,
    wr_unlock: OpFn,
    mode: ModeFn,
    stats: StatsFn,
    force: ForceFn,
    strerror: StrErrFn,
}

/// The plain data one mutex index guards: `WORDS` equal words, then the update count.
#[repr(C, align(128))]
struct Cell(UnsafeCell<[u64; WORDS + 1]>);

/// The plain data the big-reader lock guards.
#[repr(C, align(128))]
struct Block(UnsafeCell<[u64; BLOCK]>);

/// What the adapter knows independently of the data: atomics, one 128-byte line per index.
#[repr(C, align(128))]
#[derive(Default)]
struct IndexLedger {
    /// Sum of the increments made under this index's lock.
    sum: AtomicU64,
    /// Updates made under it.
    updates: AtomicU64,
    /// Units between their take and their release of this index (more than one: two holders).
    holders: AtomicU64,
    /// Reads done by threads on this CPU (a sharded count for the report).
    reads: AtomicU64,
}

/// Which lock `HARNESS_PLOCKS_BREAK` makes the units skip.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Break {
    None,
    Mutex,
    Rwlock,
}

/// One loaded copy of libplocks, its locks, the data they guard and the adapter's ledger.
pub struct LocksAdapter {
    api: Api,
    name: String,
    mutex: usize,
    rwlock: usize,
    count: usize,
    cells: Box<[Cell]>,
    block: Block,
    ledger: Box<[IndexLedger]>,
    /// Completed writes of the block (incremented under the write lock).
    writes: AtomicU64,
    /// Writers between their take and release of the write lock.
    writers_inside: AtomicU64,
    /// Readers and writers between the call that takes the rwlock and the return of the one
    /// that releases it (the fork child takes the rwlock only when both are 0).
    rw_intent: AtomicU64,
    /// Mutex units completed (counted after the release).
    mutex_units: AtomicU64,
    /// Read pairs of threads whose mode had no rseq (each is two fallback adds).
    reads_without_rseq: AtomicU64,
    /// Mutex releases on a CPU other than the take's.
    migrated: AtomicU64,
    /// Takes of the current CPU's lock, of a given index, try-locks that found it busy.
    current_takes: AtomicU64,
    index_takes: AtomicU64,
    try_busy: AtomicU64,
    /// Violations seen by units.
    torn_cells: AtomicU64,
    torn_reads: AtomicU64,
    overlaps: AtomicU64,
    errors: AtomicU64,
    forced_ever: AtomicBool,
    broken: Break,
    _lib: Library,
}

// SAFETY: the cells and the block are plain data shared on purpose: every access happens
// under the library's lock that guards it (mutex index, rwlock), except with the test-only
// `HARNESS_PLOCKS_BREAK`, whose racing accesses are aligned volatile word accesses. The
// lock handles are used only through the library's thread-safe C API.
unsafe impl Sync for LocksAdapter {}
// SAFETY: as above; nothing is tied to the creating thread.
unsafe impl Send for LocksAdapter {}

fn symbol<T: Copy>(lib: &Library, path: &Path, name: &str) -> Result<T> {
    let cname = format!("{name}\0");
    // SAFETY: the symbol is used with the C type plocks.h gives it.
    unsafe { lib.get::<T>(cname.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| anyhow!("{} does not export {name} (plocks.h): {e}", path.display()))
}

/// Busy-waits `n` spins: widens the window in which an update is half done.
fn pause(n: u32) {
    for _ in 0..n {
        std::hint::spin_loop();
    }
}

fn cpu() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::sched_getcpu() }
}

/// Moves the calling thread to another CPU of its affinity mask (narrowing the mask to that
/// one CPU and yielding). Returns the mask to restore, `None` when the thread may run on one
/// CPU only.
fn migrate_self() -> Option<(libc::cpu_set_t, libc::cpu_set_t)> {
    // SAFETY: cpu_set_t is plain data; the calls get its size and the calling thread (0).
    unsafe {
        let mut saved: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut saved) != 0 {
            return None;
        }
        let here = libc::sched_getcpu();
        let other = (0..libc::CPU_SETSIZE as usize).find(|&c| c as i32 != here && libc::CPU_ISSET(c, &saved))?;
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(other, &mut one);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
            return None;
        }
        libc::sched_yield();
        Some((saved, one))
    }
}

/// Undoes [`migrate_self`] unless the harness changed the thread's mask meanwhile (an
/// affinity, cpuset or hotplug event: its mask then stands).
fn restore_affinity(saved: &libc::cpu_set_t, narrowed: &libc::cpu_set_t) {
    // SAFETY: as in migrate_self.
    unsafe {
        let mut now: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut now) == 0
            && libc::CPU_EQUAL(&now, narrowed)
        {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), saved);
        }
    }
}

fn yield_now() {
    // SAFETY: no preconditions.
    unsafe { libc::sched_yield() };
}

impl LocksAdapter {
    fn new(lib: Library, path: &Path, _cfg: &SetupConfig) -> Result<LocksAdapter> {
        let api = Api {
            m_create: symbol(&lib, path, "plock_mutex_create")?,
            m_destroy: symbol(&lib, path, "plock_mutex_destroy")?,
            m_count: symbol(&lib, path, "plock_mutex_count")?,
            m_lock: symbol(&lib, path, "plock_mutex_lock")?,
            m_lock_index: symbol(&lib, path, "plock_mutex_lock_index")?,
            m_trylock_index: symbol(&lib, path, "plock_mutex_trylock_index")?,
            m_unlock: symbol(&lib, path, "plock_mutex_unlock")?,
            rw_create: symbol(&lib, path, "plock_rwlock_create")?,
            rw_destroy: symbol(&lib, path, "plock_rwlock_destroy")?,
            rd_lock: symbol(&lib, path, "plock_rwlock_read_lock")?,
            rd_unlock: symbol(&lib, path, "plock_rwlock_read_unlock")?,
            wr_lock: symbol(&lib, path, "plock_rwlock_write_lock")?,
            wr_unlock: symbol(&lib, path, "plock_rwlock_write_unlock")?,
            mode: symbol(&lib, path, "plock_rseq_mode")?,
            stats: symbol(&lib, path, "plock_rseq_stats")?,
            force: symbol(&lib, path, "plock_force_fallback")?,
            strerror: symbol(&lib, path, "plock_strerror")?,
        };
        let version: StrFn = symbol(&lib, path, "plock_version")?;
        // SAFETY: a static NUL-terminated string.
        let version = unsafe { CStr::from_ptr(version()) }.to_string_lossy().into_owned();
        let broken = match std::env::var("HARNESS_PLOCKS_BREAK").as_deref() {
            Ok("mutex") => Break::Mutex,
            Ok("rwlock") => Break::Rwlock,
            Ok("") | Err(_) => Break::None,
            Ok(other) => return Err(anyhow!("HARNESS_PLOCKS_BREAK={other}: expected mutex or rwlock")),
        };
        // SAFETY: the C API; both abort on out of memory, never return NULL otherwise.
        let (mutex, rwlock) = unsafe { ((api.m_create)(), (api.rw_create)()) };
        if mutex.is_null() || rwlock.is_null() {
            return Err(anyhow!("plock_mutex_create or plock_rwlock_create returned NULL"));
        }
        // SAFETY: a live mutex array.
        let count = unsafe { (api.m_count)(mutex) };
        let possible = rseq::topology::nr_possible_cpus();
        if count < 1 || count as usize != possible {
            return Err(anyhow!("plock_mutex_count says {count} locks; this machine has {possible} possible CPUs"));
        }
        let count = count as usize;
        let name = match broken {
            Break::None => format!("plocks {version}"),
            Break::Mutex => format!("plocks {version} (BROKEN: mutex skipped)"),
            Break::Rwlock => format!("plocks {version} (BROKEN: read lock skipped)"),
        };
        Ok(LocksAdapter {
            api,
            name,
            mutex: mutex as usize,
            rwlock: rwlock as usize,
            count,
            cells: (0..count).map(|_| Cell(UnsafeCell::new([0; WORDS + 1]))).collect(),
            block: Block(UnsafeCell::new([0; BLOCK])),
            ledger: (0..count).map(|_| IndexLedger::default()).collect(),
            writes: AtomicU64::new(0),
            writers_inside: AtomicU64::new(0),
            rw_intent: AtomicU64::new(0),
            mutex_units: AtomicU64::new(0),
            reads_without_rseq: AtomicU64::new(0),
            migrated: AtomicU64::new(0),
            current_takes: AtomicU64::new(0),
            index_takes: AtomicU64::new(0),
            try_busy: AtomicU64::new(0),
            torn_cells: AtomicU64::new(0),
            torn_reads: AtomicU64::new(0),
            overlaps: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            forced_ever: AtomicBool::new(false),
            broken,
            _lib: lib,
        })
    }

    fn m(&self) -> *const c_void {
        self.mutex as *const c_void
    }

    fn rw(&self) -> *const c_void {
        self.rwlock as *const c_void
    }

    fn err(&self, code: c_int) -> String {
        // SAFETY: static NUL-terminated strings.
        let s = unsafe { CStr::from_ptr((self.api.strerror)(code)) }.to_string_lossy().into_owned();
        format!("{code} ({s})")
    }

    fn error(&self, what: String) -> String {
        self.errors.fetch_add(1, Ordering::SeqCst);
        what
    }

    /// Word `k` of cell `i`.
    fn cell_word(&self, i: usize, k: usize) -> *mut u64 {
        // SAFETY: `i < count`, `k <= WORDS`: inside the cell's array.
        unsafe { self.cells[i].0.get().cast::<u64>().add(k) }
    }

    fn block_word(&self, k: usize) -> *mut u64 {
        // SAFETY: `k < BLOCK`.
        unsafe { self.block.0.get().cast::<u64>().add(k) }
    }

    /// The cell's words and count, read one at a time.
    fn read_cell(&self, i: usize) -> ([u64; WORDS], u64) {
        let mut w = [0; WORDS];
        for (k, v) in w.iter_mut().enumerate() {
            // SAFETY: guarded by lock `i`, which the caller holds (or a quiesced check).
            *v = unsafe { self.cell_word(i, k).read_volatile() };
        }
        // SAFETY: as above.
        (w, unsafe { self.cell_word(i, WORDS).read_volatile() })
    }

    /// Updates cell `i` under its lock (held by the caller): checks it is whole, adds `d` to
    /// every word one store at a time, counts the update in the cell and in the ledger.
    /// With `migrate`, the holder moves to another CPU half-way through (returned: the mask
    /// to restore after the release).
    fn update_cell(
        &self,
        i: usize,
        d: u64,
        migrate: bool,
        rng: &mut ChaCha8Rng,
    ) -> (Result<(), String>, Option<(libc::cpu_set_t, libc::cpu_set_t)>) {
        let l = &self.ledger[i];
        if l.holders.fetch_add(1, Ordering::SeqCst) != 0 {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        let (before, n) = self.read_cell(i);
        let mut bad = None;
        if before.iter().any(|&w| w != before[0]) {
            self.torn_cells.fetch_add(1, Ordering::SeqCst);
            bad = Some(format!("lock {i} held, but its cell is half updated: words {before:?}"));
        }
        let yield_at = if migrate || rng.random_range(0..8) == 0 { rng.random_range(1..WORDS) } else { WORDS };
        let mut moved = None;
        for k in 0..WORDS {
            if k == yield_at {
                if migrate {
                    moved = migrate_self();
                } else {
                    yield_now();
                }
            }
            let p = self.cell_word(i, k);
            // SAFETY: guarded by lock `i`.
            unsafe { p.write_volatile(p.read_volatile().wrapping_add(d)) };
            pause(rng.random_range(0..32));
        }
        // SAFETY: guarded by lock `i`.
        unsafe { self.cell_word(i, WORDS).write_volatile(n.wrapping_add(1)) };
        l.sum.fetch_add(d, Ordering::SeqCst);
        l.updates.fetch_add(1, Ordering::SeqCst);
        l.holders.fetch_sub(1, Ordering::SeqCst);
        (bad.map_or(Ok(()), Err), moved)
    }

    /// One mutex update: take a lock (current CPU, given index or try), update, release.
    fn mutex_unit(&self, rng: &mut ChaCha8Rng) -> Result<(), String> {
        let d = rng.random_range(1..=3u64);
        let how = rng.random_range(0..20);
        let i = if self.broken == Break::Mutex {
            // The test-only broken variant: no lock at all.
            let i = (cpu().max(0) as usize) % self.count;
            let (r, _) = self.update_cell(i, d, false, rng);
            self.mutex_units.fetch_add(1, Ordering::SeqCst);
            return r;
        } else if how < 12 {
            // SAFETY: our live mutex array.
            let r = unsafe { (self.api.m_lock)(self.m()) };
            if r < 0 || r as usize >= self.count {
                return Err(self.error(format!("plock_mutex_lock returned {}", self.err(r))));
            }
            self.current_takes.fetch_add(1, Ordering::Relaxed);
            r as usize
        } else {
            let i = rng.random_range(0..self.count);
            // SAFETY: our live mutex array; `i < count`.
            let r = unsafe {
                if how < 17 {
                    (self.api.m_lock_index)(self.m(), i as c_int)
                } else {
                    (self.api.m_trylock_index)(self.m(), i as c_int)
                }
            };
            if r == EBUSY && how >= 17 {
                self.try_busy.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            if r != 0 {
                return Err(self.error(format!("taking lock {i} returned {}", self.err(r))));
            }
            self.index_takes.fetch_add(1, Ordering::Relaxed);
            i
        };
        // The CPU the holder runs on right after the take.
        let at = cpu();
        let migrate = rng.random_range(0..MIGRATE_ONE_IN) == 0;
        let (r, moved) = self.update_cell(i, d, migrate, rng);
        // SAFETY: our live mutex array; lock `i` is ours.
        let u = unsafe { (self.api.m_unlock)(self.m(), i as c_int) };
        if cpu() != at {
            self.migrated.fetch_add(1, Ordering::Relaxed);
        }
        if let Some((saved, one)) = moved {
            restore_affinity(&saved, &one);
        }
        self.mutex_units.fetch_add(1, Ordering::SeqCst);
        r?;
        if u != 0 {
            return Err(
                self.error(format!("plock_mutex_unlock({i}) of a lock this thread holds returned {}", self.err(u)))
            );
        }
        Ok(())
    }

    /// The block's words as a reader sees them: whole, and equal to the completed writes.
    fn read_block(&self, rng: &mut ChaCha8Rng) -> Result<(), String> {
        let mut w = [0u64; BLOCK];
        for (k, v) in w.iter_mut().enumerate() {
            // SAFETY: guarded by the read lock.
            *v = unsafe { self.block_word(k).read_volatile() };
            pause(rng.random_range(0..16));
        }
        let done = self.writes.load(Ordering::SeqCst);
        if w.iter().any(|&x| x != w[0]) || w[0] != done {
            self.torn_reads.fetch_add(1, Ordering::SeqCst);
            return Err(format!(
                "a reader under the read lock saw a writer's half-done update: block {w:?}, {done} writes completed"
            ));
        }
        Ok(())
    }

    fn reader_unit(&self, rng: &mut ChaCha8Rng, fast: bool) -> Result<(), String> {
        self.rw_intent.fetch_add(1, Ordering::SeqCst);
        let skip = self.broken == Break::Rwlock;
        // SAFETY: our live rwlock.
        let r = if skip { 0 } else { unsafe { (self.api.rd_lock)(self.rw()) } };
        if r != 0 {
            self.rw_intent.fetch_sub(1, Ordering::SeqCst);
            return Err(self.error(format!("plock_rwlock_read_lock returned {}", self.err(r))));
        }
        let seen = self.read_block(rng);
        // SAFETY: our live rwlock, read-locked by this thread.
        let u = if skip { 0 } else { unsafe { (self.api.rd_unlock)(self.rw()) } };
        self.rw_intent.fetch_sub(1, Ordering::SeqCst);
        let shard = (cpu().max(0) as usize) % self.count;
        self.ledger[shard].reads.fetch_add(1, Ordering::Relaxed);
        if !fast && !skip {
            self.reads_without_rseq.fetch_add(1, Ordering::Relaxed);
        }
        seen?;
        if u != 0 {
            return Err(self.error(format!("plock_rwlock_read_unlock returned {}", self.err(u))));
        }
        Ok(())
    }

    fn writer_unit(&self, rng: &mut ChaCha8Rng) -> Result<(), String> {
        self.rw_intent.fetch_add(1, Ordering::SeqCst);
        // SAFETY: our live rwlock.
        let r = unsafe { (self.api.wr_lock)(self.rw()) };
        if r != 0 {
            self.rw_intent.fetch_sub(1, Ordering::SeqCst);
            return Err(self.error(format!("plock_rwlock_write_lock returned {}", self.err(r))));
        }
        let res = self.write_block(rng);
        // SAFETY: our live rwlock, write-locked by this thread.
        let u = unsafe { (self.api.wr_unlock)(self.rw()) };
        self.rw_intent.fetch_sub(1, Ordering::SeqCst);
        res?;
        if u != 0 {
            return Err(self.error(format!("plock_rwlock_write_unlock returned {}", self.err(u))));
        }
        Ok(())
    }

    /// Under the write lock: check the block, write the next value one word at a time.
    fn write_block(&self, rng: &mut ChaCha8Rng) -> Result<(), String> {
        if self.writers_inside.fetch_add(1, Ordering::SeqCst) != 0 {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        let done = self.writes.load(Ordering::SeqCst);
        let mut bad = None;
        // SAFETY: guarded by the write lock.
        let first = unsafe { self.block_word(0).read_volatile() };
        if first != done {
            self.torn_cells.fetch_add(1, Ordering::SeqCst);
            bad = Some(format!("the write lock's block holds {first} at entry, {done} writes completed"));
        }
        let yield_half = rng.random_range(0..4) == 0;
        for k in 0..BLOCK {
            if yield_half && k == BLOCK / 2 {
                yield_now();
            }
            // SAFETY: guarded by the write lock.
            unsafe { self.block_word(k).write_volatile(done + 1) };
            pause(rng.random_range(0..64));
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.writers_inside.fetch_sub(1, Ordering::SeqCst);
        bad.map_or(Ok(()), Err)
    }

    fn fast_mode(&self) -> bool {
        self.thread_mode().is_fast()
    }

    fn violations(&self) -> Vec<String> {
        let mut errs = Vec::new();
        for (n, what) in [
            (&self.overlaps, "times two threads held one lock at once"),
            (&self.torn_cells, "times a lock holder found its data half updated"),
            (&self.torn_reads, "reads under the read lock saw a writer's half-done update"),
            (&self.errors, "lock calls returned an unexpected error"),
        ] {
            let n = n.load(Ordering::SeqCst);
            if n != 0 {
                errs.push(format!("{n} {what}"));
            }
        }
        errs
    }

    fn quiesced_check(&self, what: &str) -> Result<CheckOk, String> {
        let mut errs = self.violations();
        let mut updates = 0;
        for i in 0..self.count {
            // SAFETY: our live mutex array; `i < count`.
            let r = unsafe { (self.api.m_trylock_index)(self.m(), i as c_int) };
            if r != 0 {
                errs.push(format!("lock {i} cannot be taken with no unit running: {}", self.err(r)));
                continue;
            }
            let (w, n) = self.read_cell(i);
            let l = &self.ledger[i];
            let (sum, ups) = (l.sum.load(Ordering::SeqCst), l.updates.load(Ordering::SeqCst));
            if w.iter().any(|&x| x != sum) || n != ups {
                errs.push(format!(
                    "cell {i}: words {w:?} and {n} updates, but {ups} updates added {sum} under its lock"
                ));
            }
            updates += ups;
            // SAFETY: taken above.
            let u = unsafe { (self.api.m_unlock)(self.m(), i as c_int) };
            if u != 0 {
                errs.push(format!("releasing lock {i} in the check returned {}", self.err(u)));
            }
        }
        let units = self.mutex_units.load(Ordering::SeqCst);
        let busy = self.try_busy.load(Ordering::SeqCst);
        if updates != units {
            errs.push(format!("{updates} updates in the ledger, but {units} mutex units completed an update"));
        }
        // SAFETY: our live rwlock; no unit runs, so no reader is inside.
        let r = unsafe { (self.api.wr_lock)(self.rw()) };
        let writes = self.writes.load(Ordering::SeqCst);
        if r != 0 {
            errs.push(format!("plock_rwlock_write_lock in the check returned {}", self.err(r)));
        } else {
            let mut w = [0u64; BLOCK];
            for (k, v) in w.iter_mut().enumerate() {
                // SAFETY: write-locked.
                *v = unsafe { self.block_word(k).read_volatile() };
            }
            if w.iter().any(|&x| x != writes) {
                errs.push(format!("block {w:?}, but {writes} writes completed"));
            }
            // SAFETY: write-locked by this thread.
            let u = unsafe { (self.api.wr_unlock)(self.rw()) };
            if u != 0 {
                errs.push(format!("plock_rwlock_write_unlock in the check returned {}", self.err(u)));
            }
        }
        let mut s = RseqStats::default();
        // SAFETY: writable statistics.
        unsafe { (self.api.stats)(&mut s) };
        let slow = self.reads_without_rseq.load(Ordering::SeqCst);
        if !self.forced_ever.load(Ordering::SeqCst) && s.fallback_ops < 2 * slow {
            errs.push(format!(
                "{slow} read pairs ran in threads without rseq, but the library counted only {} fallback adds",
                s.fallback_ops
            ));
        }
        let reads: u64 = self.ledger.iter().map(|l| l.reads.load(Ordering::SeqCst)).sum();
        if errs.is_empty() {
            Ok(CheckOk {
                checked: 2 * self.count as u64 + 3,
                what: format!(
                    "{what}: {updates} mutex updates exact over {} cells ({} current-CPU takes, {} index takes, {busy} \
                     busy try-locks, {} released on another CPU), {writes} writes and {reads} reads never torn \
                     ({slow} reads without rseq, {} fallback adds)",
                    self.count,
                    self.current_takes.load(Ordering::SeqCst),
                    self.index_takes.load(Ordering::SeqCst),
                    self.migrated.load(Ordering::SeqCst),
                    s.fallback_ops
                ),
            })
        } else {
            Err(errs.join("; "))
        }
    }

    /// In a forked child (only this thread): the locks as the fork left them.
    fn child_check(&self, seed: u64) -> Result<CheckOk, String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut free, mut held) = (0u64, 0u64);
        for i in 0..self.count {
            let l = &self.ledger[i];
            let holders = l.holders.load(Ordering::SeqCst);
            // SAFETY: our mutex array, copied into the child; `i < count`; never waits.
            let r = unsafe { (self.api.m_trylock_index)(self.m(), i as c_int) };
            if r == EBUSY {
                held += 1;
                continue;
            }
            if r != 0 {
                return Err(format!("try-lock of lock {i} in the child returned {}", self.err(r)));
            }
            if holders != 0 {
                return Err(format!(
                    "lock {i} was held by a parent thread at the fork, but the child could take it \
                     (it must stay held: libs/locks/README.md, Fork)"
                ));
            }
            free += 1;
            let (w, n) = self.read_cell(i);
            let (sum, ups) = (l.sum.load(Ordering::SeqCst), l.updates.load(Ordering::SeqCst));
            if w.iter().any(|&x| x != sum) || n != ups {
                return Err(format!(
                    "cell {i} in the child: words {w:?}, {n} updates; ledger {ups} updates adding {sum}"
                ));
            }
            self.update_cell(i, 1, false, &mut rng).0?;
            // SAFETY: taken above by this thread.
            let u = unsafe { (self.api.m_unlock)(self.m(), i as c_int) };
            if u != 0 {
                return Err(format!("releasing lock {i} in the child returned {}", self.err(u)));
            }
            let (w, _) = self.read_cell(i);
            if w[0] != sum + 1 {
                return Err(format!("cell {i} in the child reads {} after adding 1 to {sum}", w[0]));
            }
        }
        let rw = if self.rw_intent.load(Ordering::SeqCst) == 0 {
            self.writer_unit(&mut rng)?;
            self.reader_unit(&mut rng, self.fast_mode())?;
            "rwlock free at the fork: written and read"
        } else {
            "rwlock in use by a parent thread at the fork: left alone"
        };
        // Fresh locks of the child's own.
        // SAFETY: the C API; the handles are ours and destroyed below.
        unsafe {
            let m = (self.api.m_create)();
            let i = (self.api.m_lock)(m);
            if i < 0
                || (self.api.m_destroy)(m) != EBUSY
                || (self.api.m_unlock)(m, i) != 0
                || (self.api.m_destroy)(m) != 0
            {
                return Err(format!("a fresh mutex array in the child: lock gave {i}, then destroy/unlock failed"));
            }
            let l = (self.api.rw_create)();
            let r = [(self.api.rd_lock)(l), (self.api.rd_unlock)(l), (self.api.wr_lock)(l), (self.api.wr_unlock)(l)];
            if r != [0; 4] || (self.api.rw_destroy)(l.cast()) != 0 {
                return Err(format!("a fresh rwlock in the child: read/write pairs returned {r:?}"));
            }
        }
        Ok(CheckOk {
            checked: self.count as u64 + 3,
            what: format!(
                "forked child: {free} locks free (cells exact, updated), {held} held by parent threads (busy in the child); {rw}"
            ),
        })
    }
}

impl Participant for LocksAdapter {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "locks"
    }

    fn work(&self, seed: u64) -> Result<(), String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let fast = self.fast_mode();
        for _ in 0..2 {
            self.mutex_unit(&mut rng)?;
        }
        if rng.random_range(0..WRITER_ONE_IN) == 0 {
            self.writer_unit(&mut rng)
        } else {
            for _ in 0..2 {
                self.reader_unit(&mut rng, fast)?;
            }
            Ok(())
        }
    }

    fn check(&self) -> Result<CheckOk, String> {
        self.quiesced_check("quiesced")
    }

    fn report(&self) -> Counts {
        let mut s = RseqStats::default();
        // SAFETY: writable statistics.
        unsafe { (self.api.stats)(&mut s) };
        let updates: u64 = self.ledger.iter().map(|l| l.updates.load(Ordering::Relaxed)).sum();
        let reads: u64 = self.ledger.iter().map(|l| l.reads.load(Ordering::Relaxed)).sum();
        Counts {
            ops: updates + reads + self.writes.load(Ordering::Relaxed),
            aborts: s.aborts,
            fallback_ops: s.fallback_ops,
            registered_by_us: s.registered_by_us,
            registered_by_peer: s.registered_by_peer,
            registration_failures: s.registration_failures,
        }
    }

    fn thread_mode(&self) -> ThreadMode {
        let mut err: c_int = 0;
        // SAFETY: writable int.
        match unsafe { (self.api.mode)(&mut err) } {
            1 => ThreadMode::LibcOwned,
            2 => ThreadMode::Registered,
            4 => ThreadMode::Unavailable { errno: err },
            5 => ThreadMode::Disabled,
            other => ThreadMode::Unknown(other as i64),
        }
    }

    fn registers_lazily(&self) -> bool {
        true
    }

    fn force_fallback(&self, on: bool) -> bool {
        if on {
            self.forced_ever.store(true, Ordering::SeqCst);
        }
        // SAFETY: plain value.
        unsafe { (self.api.force)(c_int::from(on)) };
        true
    }

    fn fork_child(&self, seed: u64) -> Result<CheckOk, String> {
        self.child_check(seed)
    }

    fn fork_needs_quiescence(&self) -> bool {
        // The point: fork while other threads hold the locks (documented behaviour).
        false
    }

    fn before_unload(&self) -> Result<CheckOk, String> {
        self.quiesced_check("before unload")
    }

    fn fresh_after_reload(&self) -> Result<CheckOk, String> {
        // A fresh copy: every lock free, nothing counted (the locks are the adapter's, made
        // by this copy; nothing is carried over).
        let mut s = RseqStats::default();
        // SAFETY: writable statistics.
        unsafe { (self.api.stats)(&mut s) };
        if s.aborts != 0 || s.fallback_ops != 0 {
            return Err(format!(
                "a fresh load reports {} aborts and {} fallback adds before any use",
                s.aborts, s.fallback_ops
            ));
        }
        self.quiesced_check("fresh load")
    }

    fn teardown(&self) {
        // SAFETY: no unit runs; both handles are ours and not used after this.
        let (a, b) = unsafe {
            ((self.api.m_destroy)(self.mutex as *mut c_void), (self.api.rw_destroy)(self.rwlock as *mut c_void))
        };
        if a != 0 || b != 0 {
            // Nothing is freed then; the memory stays with the unloaded copy's heap blocks.
            eprintln!("harness: {}: destroying the locks returned {a} and {b}", self.name);
        }
    }
}

/// The registry's constructor of this adapter.
pub fn open(lib: Library, path: &Path, cfg: &SetupConfig) -> Result<Box<dyn Participant>> {
    Ok(Box::new(LocksAdapter::new(lib, path, cfg)?))
}

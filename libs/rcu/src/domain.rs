//! The read side and grace periods: per-CPU lock and unlock counts in two periods.
//!
//! Each possible CPU (or concurrency id) has one 128-byte slot:
//!
//! | bytes | words | written by |
//! |---|---|---|
//! | 0..32 | `lock[0]`, `lock[1]`, `unlock[0]`, `unlock[1]` | rseq critical sections on that CPU only |
//! | 64..96 | the same four counts | atomic adds from any CPU (the fallback path) |
//!
//! A read lock adds 1 to `lock[p]` of the CPU it runs on, where `p` is the parity of the
//! global period counter; the section re-reads the counter *inside* the critical section
//! (`try_add_if_equal`), so once a writer has advanced the period and issued
//! `membarrier(PRIVATE_EXPEDITED_RSEQ)`, no lock that saw the old period can still commit.
//! The token remembers `p`; the unlock adds 1 to `unlock[p]` of whatever CPU it runs on.
//! Only the sums over all CPUs matter: period `p` has no reader when
//! `Σ unlock[p]` (taken first) equals `Σ lock[p]` (taken after a full fence on every CPU).
//!
//! Readers on the rseq path use compiler barriers only; the writer orders them with
//! `membarrier(PRIVATE_EXPEDITED)`, which runs a full barrier on every CPU running a thread
//! of the process. When membarrier or the rseq fence is missing, every reader takes the
//! fallback: atomic adds with full fences, on words the sections never write.
//!
//! A grace period (kernel SRCU's shape): fence; wait until the inactive period is empty
//! (readers that loaded the period just before the previous flip); advance the period;
//! rseq fence; wait until the old period is empty; fence.

use core::sync::atomic::{
    compiler_fence, fence, AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering,
};
use std::time::{Duration, Instant};

use rseq::membarrier;
use rseq::{Index, Outcome, PercpuArray, PercpuPtr, ThreadArea};

use crate::check;
use crate::lock::Lock;

/// Bytes per CPU slot.
const SLOT: usize = 128;
/// Offset of the fallback words in a slot (own cache line).
const FALLBACK: usize = 64;

/// A read-side token: what [`read_lock`] hands out and [`read_unlock`] takes back.
/// Layout: bit 0 the period parity, bit 1 "registered in the checking table", bits 2..32 a
/// serial (checking mode only), bits 32..64 a tag computed from the low half and a per-load
/// secret, so that a value that was never issued is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Token(pub(crate) u64);

impl Token {
    /// The raw value, for the C API.
    pub fn into_raw(self) -> u64 {
        self.0
    }
    /// A token from its raw value; [`read_unlock`] checks it.
    pub fn from_raw(raw: u64) -> Token {
        Token(raw)
    }
    fn period(self) -> usize {
        (self.0 & 1) as usize
    }
    fn checked(self) -> bool {
        self.0 & 2 != 0
    }
}

/// Why an unlock was refused. The counts are untouched in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// The value was never issued by [`read_lock`] (bad tag).
    Forged,
    /// Checking mode: the token was already unlocked.
    AlreadyUnlocked,
}

static SECRET: AtomicU64 = AtomicU64::new(0);

fn secret() -> u64 {
    let s = SECRET.load(Ordering::Relaxed);
    if s != 0 {
        return s;
    }
    // Racing callers may compute different values; the first stored one wins and all use it.
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let v = (ts.tv_nsec as u64 ^ (ts.tv_sec as u64).rotate_left(32) ^ (&SECRET as *const _ as u64)) | 1;
    match SECRET.compare_exchange(0, v, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => v,
        Err(existing) => existing,
    }
}

#[inline(always)]
fn tag(low: u32, secret: u64) -> u64 {
    let x = (u64::from(low) ^ secret).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x ^ (x >> 29)) & 0xffff_ffff_0000_0000 | 1 << 32
}

#[inline(always)]
fn make_token(low: u32) -> Token {
    Token(tag(low, secret()) | u64::from(low))
}

#[inline(always)]
fn token_is_genuine(t: Token) -> bool {
    tag(t.0 as u32, secret()) == t.0 & 0xffff_ffff_0000_0000
}

// ---------------------------------------------------------------------------------------
// State. Everything is a process-wide atomic: no once-cell, no thread-local.

/// Base of the per-CPU slots (null until the first use maps them).
static SLOTS: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
static NCPUS: AtomicU64 = AtomicU64::new(0);
/// 0 cpu_id, 1 mm_cid (what the caller asked for; resolved when used).
static INDEX: AtomicU8 = AtomicU8::new(0);
/// Set by the first read lock: the index can no longer change.
static INDEX_FROZEN: AtomicBool = AtomicBool::new(false);
/// 0 unknown, 1 readers use rseq + compiler barriers, 2 every reader uses the fallback.
static FAST: AtomicU8 = AtomicU8::new(0);
/// Everything the rseq read path reads, on one cache line: loaded together by every lock
/// and unlock.
#[repr(C, align(64))]
struct ReadPath {
    /// The period counter; its parity selects the counts new readers use. Written only by
    /// the grace-period runner (and a forked child), so the line stays shared between
    /// grace periods.
    period: AtomicU64,
    /// Base of the per-CPU slots while readers may take the rseq path: the reader mode is
    /// decided as rseq + compiler barriers, checking mode is off, the slots are mapped and
    /// the index is frozen and resolved. Null otherwise: every lock and unlock takes the
    /// slow path, which checks all of that itself. Published by [`publish_read_path`].
    base: AtomicPtr<u8>,
    /// The number of slots (valid while `base` is set).
    ncpus: AtomicU32,
    /// Whether the slots are indexed by `mm_cid` (valid while `base` is set).
    mm_cid: AtomicBool,
    /// The unchecked token of each parity (`make_token(p)`, valid while `base` is set): the
    /// rseq lock hands one out without computing its tag, and an unlock that gets one of
    /// them knows it is genuine with one comparison.
    tokens: [AtomicU64; 2],
}

static READ: ReadPath = ReadPath {
    period: AtomicU64::new(0),
    base: AtomicPtr::new(core::ptr::null_mut()),
    ncpus: AtomicU32::new(0),
    mm_cid: AtomicBool::new(false),
    tokens: [AtomicU64::new(0), AtomicU64::new(0)],
};

/// The period counter.
static PERIOD: &AtomicU64 = &READ.period;

/// Grace periods begun and completed (a caller needs one that begins after it arrived).
static GP_STARTED: AtomicU64 = AtomicU64::new(0);
static GP_DONE: AtomicU64 = AtomicU64::new(0);
/// Held by the thread running a grace period.
pub(crate) static GP_RUNNER: Lock<()> = Lock::new(());
/// Read locks and unlocks that took the fallback path (atomics).
pub(crate) static FALLBACK_OPS: AtomicU64 = AtomicU64::new(0);
/// Stall reports written.
static STALLS: AtomicU64 = AtomicU64::new(0);
/// Stall limit in milliseconds (0: default); from `PRCU_STALL_MS`.
static STALL_MS: AtomicU64 = AtomicU64::new(0);
/// Thread id of the grace-period runner (checking: a reader in that thread is a deadlock).
static RUNNER_TID: AtomicI32 = AtomicI32::new(0);

const DEFAULT_STALL_MS: u64 = 21_000;

/// Reads the environment once, from the library constructor (`PRCU_STALL_MS`, `PRCU_INDEX`,
/// `PRCU_CHECK`).
pub(crate) fn init_from_env() {
    let _ = secret();
    let get = |name: &[u8]| -> Option<String> {
        // SAFETY: NUL-terminated name; getenv's result is read at once, at load time.
        let p = unsafe { libc::getenv(name.as_ptr().cast()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: getenv returns a NUL-terminated string.
        Some(unsafe { core::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    if let Some(ms) = get(b"PRCU_STALL_MS\0").and_then(|s| s.trim().parse::<u64>().ok()) {
        STALL_MS.store(ms.max(1), Ordering::Relaxed);
    }
    if let Some(i) = get(b"PRCU_INDEX\0").and_then(|s| Index::from_name(s.trim())) {
        let _ = set_index(i);
    }
    if get(b"PRCU_FORCE_FALLBACK\0").is_some_and(|s| s.trim() == "1") {
        // Every reader on atomics with full fences, every writer fence a local one.
        FAST.store(2, Ordering::Release);
    }
    if let Some(c) = get(b"PRCU_CHECK\0") {
        check::set_enabled(c.trim() == "1");
    }
}

/// Sets the stall limit (milliseconds, at least 1).
pub fn set_stall_limit(ms: u64) {
    STALL_MS.store(ms.max(1), Ordering::Relaxed);
}

fn stall_limit() -> Duration {
    match STALL_MS.load(Ordering::Relaxed) {
        0 => Duration::from_millis(DEFAULT_STALL_MS),
        ms => Duration::from_millis(ms),
    }
}

/// Chooses what indexes the per-CPU counts. Only before the first read lock: `false` after
/// (the counts of one period must all be indexed the same way for... any way, in fact, since
/// only sums matter; but one structure is indexed one way, as the contract says).
pub fn set_index(index: Index) -> bool {
    if INDEX_FROZEN.load(Ordering::Acquire) {
        return current_index() == index.resolve();
    }
    INDEX.store(u8::from(index == Index::MmCid), Ordering::Release);
    true
}

/// The index in use (resolved for this kernel).
pub fn current_index() -> Index {
    // Resolved once frozen (no call into the foundation on the read path); before that, the
    // request may still change.
    match RESOLVED.load(Ordering::Acquire) {
        1 => Index::CpuId,
        2 => Index::MmCid,
        _ => {
            let i = if INDEX.load(Ordering::Acquire) == 1 { Index::MmCid } else { Index::CpuId };
            i.resolve()
        }
    }
}

/// The resolved index once frozen: 0 not yet, 1 cpu_id, 2 mm_cid.
static RESOLVED: AtomicU8 = AtomicU8::new(0);

/// Whether readers run on the rseq path with compiler barriers (`true`) or every reader
/// uses atomics with full fences (`false`: no membarrier, no rseq fence, or no rseq area).
pub fn fast_path() -> bool {
    fast() == 1
}

fn fast() -> u8 {
    match FAST.load(Ordering::Acquire) {
        0 => decide_fast(),
        v => v,
    }
}

#[cold]
fn decide_fast() -> u8 {
    let usable = ThreadArea::current().is_some()
        && membarrier::register_private_expedited().is_ok()
        && membarrier::private_expedited().is_ok()
        && membarrier::fence_rseq(None).is_ok();
    let v = if usable { 1 } else { 2 };
    // Racing callers compute the same answer.
    FAST.store(v, Ordering::Release);
    v
}

fn slots() -> (*mut u8, usize) {
    let p = SLOTS.load(Ordering::Acquire);
    if !p.is_null() {
        return (p, NCPUS.load(Ordering::Relaxed) as usize);
    }
    map_slots()
}

#[cold]
fn map_slots() -> (*mut u8, usize) {
    let n = rseq::topology::nr_possible_cpus().max(1);
    // SAFETY: anonymous private mapping; no pointer arguments.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            n * SLOT,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        crate::fatal("prcu: cannot map the per-CPU read counts (out of memory)");
    }
    let p = p.cast::<u8>();
    NCPUS.store(n as u64, Ordering::Relaxed);
    match SLOTS.compare_exchange(core::ptr::null_mut(), p, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => (p, n),
        Err(existing) => {
            // SAFETY: our own mapping, never published.
            unsafe { libc::munmap(p.cast(), n * SLOT) };
            (existing, n)
        }
    }
}

#[derive(Clone, Copy)]
enum Word {
    Lock,
    Unlock,
}

fn word_offset(w: Word, p: usize) -> usize {
    match w {
        Word::Lock => 8 * p,
        Word::Unlock => 16 + 8 * p,
    }
}

#[inline(always)]
fn rseq_words(base: *mut u8, n: usize, index: Index, w: Word, p: usize) -> PercpuArray<u64> {
    // SAFETY: the mapping holds `n` slots of SLOT bytes and is never unmapped while the
    // library is loaded; each word is 8-byte aligned.
    unsafe { PercpuArray::from_raw_resolved(PercpuPtr::new(base.add(word_offset(w, p)).cast(), SLOT), n as u32, index) }
}

#[inline(always)]
fn fallback_word(base: *mut u8, n: usize, w: Word, p: usize) -> &'static AtomicU64 {
    let cpu = rseq::fallback::current_index() % n;
    // SAFETY: inside the mapping (cpu < n), 8-byte aligned, alive for the library's life.
    unsafe { &*base.add(cpu * SLOT + FALLBACK + word_offset(w, p)).cast::<AtomicU64>() }
}

// ---------------------------------------------------------------------------------------
// Readers.

/// Enters a read-side critical section. Async-signal-safe, no allocation (outside checking
/// mode), no thread-local state; sections nest by holding several tokens, and the token may
/// be unlocked by another thread.
///
/// The rseq path reads one cache line of process-wide state ([`ReadPath`]) and the thread's
/// area, runs one section that checks the period and the index bound inside it, and
/// returns a precomputed token. Anything else (first use, checking mode, fallback mode, an
/// unregistered area, an abort) goes to the slow path, which does the whole job.
#[inline]
pub fn read_lock() -> Token {
    let base = READ.base.load(Ordering::Acquire);
    if !base.is_null() {
        if let Some(area) = ThreadArea::current() {
            let seq = PERIOD.load(Ordering::Relaxed);
            let p = (seq & 1) as usize;
            let words = published_words(base, Word::Lock, p);
            // SAFETY: `words` lies in the live mapping and is written only by sections; the
            // period word is written by others only with atomic operations.
            let (o, _) = unsafe { area.try_add_if_equal(PERIOD.as_ptr(), seq, &words, 1) };
            if o == Outcome::Committed {
                compiler_fence(Ordering::SeqCst);
                return Token(READ.tokens[p].load(Ordering::Relaxed));
            }
        }
    }
    read_lock_slow()
}

/// The rseq words `w[p]` of every slot, from the published read path (`base` non-null).
#[inline(always)]
fn published_words(base: *mut u8, w: Word, p: usize) -> PercpuArray<u64> {
    let n = READ.ncpus.load(Ordering::Relaxed);
    let index = if READ.mm_cid.load(Ordering::Relaxed) { Index::MmCid } else { Index::CpuId };
    // SAFETY: published with `base` after the mapping of `n` slots of SLOT bytes, never
    // unmapped while the library is loaded; each word is 8-byte aligned; `index` was
    // resolved before it was published.
    unsafe { PercpuArray::from_raw_resolved(PercpuPtr::new(base.add(word_offset(w, p)).cast(), SLOT), n, index) }
}

/// Freezes the index (the first read lock) and resolves it once.
fn freeze_index() -> Index {
    if !INDEX_FROZEN.load(Ordering::Relaxed) {
        INDEX_FROZEN.store(true, Ordering::Release);
        let r = current_index();
        RESOLVED.store(if r == Index::MmCid { 2 } else { 1 }, Ordering::Release);
    }
    current_index()
}

/// Publishes the rseq read path when every condition for it holds, and withdraws it when
/// one does not. Racing callers compute the same values; a caller that turns checking mode
/// on withdraws the path after its store (see [`crate::check::set_enabled`]), and a
/// publisher re-reads the checking flag after publishing, so that "checking on" always
/// ends with the path withdrawn.
pub(crate) fn publish_read_path() {
    if !INDEX_FROZEN.load(Ordering::Acquire) || check::enabled() || fast() != 1 {
        READ.base.store(core::ptr::null_mut(), Ordering::SeqCst);
        return;
    }
    let (base, n) = slots();
    let index = current_index();
    READ.ncpus.store(n as u32, Ordering::Relaxed);
    READ.mm_cid.store(index == Index::MmCid, Ordering::Relaxed);
    READ.tokens[0].store(make_token(0).0, Ordering::Relaxed);
    READ.tokens[1].store(make_token(1).0, Ordering::Relaxed);
    READ.base.store(base, Ordering::SeqCst);
    if check::enabled() {
        READ.base.store(core::ptr::null_mut(), Ordering::SeqCst);
    }
}

#[cold]
#[inline(never)]
fn read_lock_slow() -> Token {
    let (base, n) = slots();
    let index = freeze_index();
    let mut p = usize::MAX;
    if fast() == 1 {
        if !check::enabled() && READ.base.load(Ordering::Relaxed).is_null() {
            publish_read_path();
        }
        loop {
            let seq = PERIOD.load(Ordering::Relaxed);
            let words = rseq_words(base, n, index, Word::Lock, (seq & 1) as usize);
            // SAFETY: as in `read_lock`.
            match rseq::ops::run_section(|area| unsafe { area.try_add_if_equal(PERIOD.as_ptr(), seq, &words, 1) }) {
                Some((Outcome::Committed, _)) => {
                    p = (seq & 1) as usize;
                    compiler_fence(Ordering::SeqCst);
                    break;
                }
                Some(_) => continue, // the period moved: read it again
                None => break,
            }
        }
    }
    if p == usize::MAX {
        // Fallback: atomic add on the fallback word, then a full fence (SRCU's barrier B).
        p = (PERIOD.load(Ordering::SeqCst) & 1) as usize;
        fallback_word(base, n, Word::Lock, p).fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        FALLBACK_OPS.fetch_add(1, Ordering::Relaxed);
    }
    if check::enabled() {
        let serial = check::next_serial();
        let t = make_token(p as u32 | 2 | (serial << 2));
        check::record(t);
        return t;
    }
    make_token(p as u32)
}

/// Leaves the read-side critical section `t` opened. An unlock may run on another CPU or
/// thread than its lock. Refuses a value [`read_lock`] never issued, and (checking mode) a
/// second unlock of the same token, without touching the counts.
///
/// The rseq path: an unchecked token is genuine exactly when it equals the published token
/// of its parity (one comparison, no tag computation); then one section adds to the unlock
/// count of this CPU. Everything else takes the slow path.
#[inline]
pub fn read_unlock(t: Token) -> Result<(), TokenError> {
    let base = READ.base.load(Ordering::Acquire);
    let p = t.period();
    if !base.is_null() && t.0 == READ.tokens[p].load(Ordering::Relaxed) {
        compiler_fence(Ordering::SeqCst);
        if let Some(area) = ThreadArea::current() {
            let words = published_words(base, Word::Unlock, p);
            // SAFETY: as in `read_lock`.
            if unsafe { area.try_add(&words, 1) }.0 == Outcome::Committed {
                return Ok(());
            }
        }
    }
    read_unlock_slow(t)
}

#[cold]
#[inline(never)]
fn read_unlock_slow(t: Token) -> Result<(), TokenError> {
    if !token_is_genuine(t) {
        return Err(TokenError::Forged);
    }
    if t.checked() {
        check::forget(t)?;
    }
    let p = t.period();
    compiler_fence(Ordering::SeqCst);
    if fast() == 1 {
        let (base, n) = slots();
        let words = rseq_words(base, n, current_index(), Word::Unlock, p);
        // SAFETY: as in `read_lock`.
        if rseq::ops::run_section(|area| unsafe { area.try_add(&words, 1) }).is_some() {
            return Ok(());
        }
    }
    read_unlock_fallback(p);
    Ok(())
}

fn read_unlock_fallback(p: usize) {
    let (base, n) = slots();
    // SRCU's barrier C: the section's loads complete before the unlock is counted.
    fence(Ordering::SeqCst);
    fallback_word(base, n, Word::Unlock, p).fetch_add(1, Ordering::SeqCst);
    FALLBACK_OPS.fetch_add(1, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------
// Writers.

/// A full barrier on every CPU running a thread of the process (or a fence on this CPU
/// when every reader uses full fences itself).
fn heavy_fence() {
    if fast() == 1 {
        match membarrier::private_expedited() {
            Ok(()) => {}
            Err(membarrier::MembarrierError::NotRegistered) => {
                // A forked child: the registration belongs to the parent's mm.
                if membarrier::register_private_expedited().is_err() || membarrier::private_expedited().is_err() {
                    crate::fatal("prcu: membarrier(PRIVATE_EXPEDITED) stopped working");
                }
            }
            Err(_) => crate::fatal("prcu: membarrier(PRIVATE_EXPEDITED) stopped working"),
        }
    }
    fence(Ordering::SeqCst);
}

/// After the period advanced: no rseq lock that loaded the old period can commit any more.
fn flip_fence() {
    if fast() == 1 && membarrier::fence_rseq(None).is_err() {
        crate::fatal("prcu: membarrier(PRIVATE_EXPEDITED_RSEQ) stopped working");
    }
    fence(Ordering::SeqCst);
}

/// Sum of one count over every CPU, both word sets (wrapping).
fn sum(w: Word, p: usize) -> u64 {
    let (base, n) = slots();
    let mut total = 0u64;
    for cpu in 0..n {
        for off in [0, FALLBACK] {
            // SAFETY: inside the mapping; sections write these words with plain 8-byte
            // stores, read here with relaxed atomic loads (aligned, never torn).
            let v = unsafe { &*base.add(cpu * SLOT + off + word_offset(w, p)).cast::<AtomicU64>() };
            total = total.wrapping_add(v.load(Ordering::Relaxed));
        }
    }
    total
}

/// Whether period `p` has no reader: unlocks first, a full fence everywhere, then locks.
fn period_is_empty(p: usize) -> bool {
    let unlocks = sum(Word::Unlock, p);
    heavy_fence();
    let locks = sum(Word::Lock, p);
    locks == unlocks
}

fn wait_for_readers(p: usize) {
    let start = Instant::now();
    let limit = stall_limit();
    let mut next_report = limit;
    let mut spins = 0u32;
    while !period_is_empty(p) {
        spins += 1;
        if spins < 10 {
            std::thread::yield_now();
        } else {
            let us = (u64::from(spins) * 20).min(1000);
            std::thread::sleep(Duration::from_micros(us));
        }
        let waited = start.elapsed();
        if waited >= next_report {
            report_stall(p, waited);
            next_report += limit;
        }
    }
}

#[cold]
fn report_stall(p: usize, waited: Duration) {
    STALLS.fetch_add(1, Ordering::Relaxed);
    let (base, n) = slots();
    let mut msg = format!(
        "prcu: grace period stalled for {} ms waiting for readers of period {p} (locks {} unlocks {}); per-CPU counts (cpu: lock/unlock rseq + lock/unlock fallback):",
        waited.as_millis(),
        sum(Word::Lock, p),
        sum(Word::Unlock, p)
    );
    for cpu in 0..n {
        let rd = |off: usize, w: Word| {
            // SAFETY: as in `sum`.
            unsafe { &*base.add(cpu * SLOT + off + word_offset(w, p)).cast::<AtomicU64>() }.load(Ordering::Relaxed)
        };
        let (l, u, fl, fu) =
            (rd(0, Word::Lock), rd(0, Word::Unlock), rd(FALLBACK, Word::Lock), rd(FALLBACK, Word::Unlock));
        if l | u | fl | fu != 0 {
            msg.push_str(&format!(" {cpu}: {l}/{u} + {fl}/{fu};"));
        }
    }
    msg.push('\n');
    // SAFETY: writing a byte buffer to stderr.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

fn run_grace_period() {
    heavy_fence();
    let cur = PERIOD.load(Ordering::SeqCst);
    wait_for_readers(((cur + 1) & 1) as usize);
    PERIOD.store(cur.wrapping_add(1), Ordering::SeqCst);
    flip_fence();
    wait_for_readers((cur & 1) as usize);
    heavy_fence();
}

/// Waits until every read-side critical section that began before the call has ended.
/// Concurrent callers share grace periods. Aborts (checking mode) when the calling thread
/// holds a token: that would wait for itself forever.
pub fn synchronize() {
    check::not_in_reader("prcu_synchronize");
    let target = GP_STARTED.load(Ordering::SeqCst).wrapping_add(1);
    wait_for_cookie(target);
}

fn wait_for_cookie(target: u64) {
    let mut spins = 0u32;
    loop {
        if elapsed(target) {
            return;
        }
        if let Some(guard) = GP_RUNNER.try_lock() {
            if !elapsed(target) {
                let n = GP_STARTED.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
                RUNNER_TID.store(gettid(), Ordering::Relaxed);
                run_grace_period();
                RUNNER_TID.store(0, Ordering::Relaxed);
                GP_DONE.store(n, Ordering::SeqCst);
            }
            drop(guard);
            continue;
        }
        spins += 1;
        if spins < 20 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

fn elapsed(cookie: u64) -> bool {
    // Wrapping comparison: done has reached cookie.
    (GP_DONE.load(Ordering::SeqCst).wrapping_sub(cookie) as i64) >= 0
}

/// A cookie for the next grace period to begin; [`poll`] says when it has elapsed. Starts
/// nothing (see [`crate::start_poll`]).
pub fn poll_cookie() -> u64 {
    GP_STARTED.load(Ordering::SeqCst).wrapping_add(1)
}

/// Whether the grace period named by `cookie` has elapsed. Never blocks.
pub fn poll(cookie: u64) -> bool {
    elapsed(cookie)
}

/// Waits until the grace period named by `cookie` has elapsed (running it if needed).
pub fn wait_for(cookie: u64) {
    check::not_in_reader("prcu_poll_wait");
    wait_for_cookie(cookie);
}

/// Grace periods completed.
pub fn grace_periods() -> u64 {
    GP_DONE.load(Ordering::SeqCst)
}

/// Stall reports written.
pub fn stalls() -> u64 {
    STALLS.load(Ordering::Relaxed)
}

pub(crate) fn gettid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// In a forked child (one thread): the parent's other threads and their read sections are
/// gone, so their counts are cleared; a grace period that was running is completed (its
/// runner is gone; no reader remains to wait for). The forking thread must not hold a token.
pub(crate) fn after_fork_in_child() {
    let p = SLOTS.load(Ordering::Acquire);
    if !p.is_null() {
        let n = NCPUS.load(Ordering::Relaxed) as usize;
        // SAFETY: our mapping; the child has one thread, and it is here.
        unsafe { core::ptr::write_bytes(p, 0, n * SLOT) };
    }
    // SAFETY: the child's only thread; a runner in the parent is gone.
    unsafe { GP_RUNNER.reset_in_child() };
    RUNNER_TID.store(0, Ordering::Relaxed);
    GP_DONE.store(GP_STARTED.load(Ordering::SeqCst), Ordering::SeqCst);
}

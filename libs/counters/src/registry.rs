//! The registry: names, slot allocation and reuse, snapshots. Everything here runs under
//! one lock, which `fork` handlers hold across `fork` so a child never inherits it taken.
//! The add and read paths never take it (see [`crate::table`]).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU8, Ordering};

use rseq::pool::PercpuPool;
use rseq::Index;

use crate::error::{validate_name, Error};
use crate::lock::Lock;
use crate::table::{self, CHUNK_LEN, MAX_COUNTERS, STRIDE};

/// Quarantine state of a slot whose delete has not finished waiting for its adds.
const DELETE_PENDING: u64 = u64::MAX;

/// FNV-1a: names are short, and the registry needs a hasher with a `const` constructor
/// and no per-thread random keys.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

struct Registry {
    /// Per-CPU memory of every chunk; made by the first `create`, never dropped.
    pool: Option<PercpuPool>,
    /// Slots handed out so far (`0..nslots` have chunks).
    nslots: usize,
    /// Live counters by name.
    names: HashMap<String, u32, BuildHasherDefault<Fnv>>,
    /// The name of each slot's live counter.
    slot_names: Vec<Option<String>>,
    /// Deleted slots, in deletion order, with the fence number their delete needs
    /// ([`DELETE_PENDING`] until the delete has waited for the fallback adds). A slot is
    /// reused once that fence has completed. Its capacity is kept at least `nslots`, so a
    /// delete never allocates.
    quarantine: VecDeque<(u32, u64)>,
}

static REGISTRY: Lock<Registry> = Lock::new(Registry {
    pool: None,
    nslots: 0,
    names: HashMap::with_hasher(BuildHasherDefault::new()),
    slot_names: Vec::new(),
    quarantine: VecDeque::new(),
});

impl Registry {
    fn pool(&mut self) -> Result<&PercpuPool, Error> {
        if self.pool.is_none() {
            self.pool = Some(PercpuPool::new(STRIDE).map_err(|_| Error::OutOfMemory)?);
        }
        self.pool.as_ref().ok_or(Error::Internal)
    }

    /// A slot for a new counter: the oldest deleted one that nothing can add into any more,
    /// else a fresh one.
    fn take_slot(&mut self) -> Result<usize, Error> {
        let reusable = |&(_, needed): &(u32, u64)| needed != DELETE_PENDING && crate::fence::is_complete(needed);
        if let Some(i) = self.quarantine.iter().position(reusable) {
            let (slot, _) = self.quarantine.remove(i).ok_or(Error::Internal)?;
            return Ok(slot as usize);
        }
        if self.nslots == MAX_COUNTERS {
            return Err(Error::NoSpace);
        }
        let slot = self.nslots;
        if slot.is_multiple_of(CHUNK_LEN) {
            let grow = slot + CHUNK_LEN;
            self.slot_names.try_reserve_exact(grow - self.slot_names.len())?;
            self.quarantine.try_reserve_exact(grow - self.quarantine.len())?;
            let pool = self.pool()?;
            table::alloc_chunk(pool, slot / CHUNK_LEN)?;
        }
        // Capacity was reserved with the chunk.
        self.slot_names.push(None);
        self.nslots += 1;
        Ok(slot)
    }
}

// Fork safety: the prepare handler takes the registry lock, so no other thread is inside a
// registry operation (or inside the pool, which is only used under the lock) at `fork`.
extern "C" fn before_fork() {
    REGISTRY.raw_lock();
}

extern "C" fn after_fork_in_parent() {
    // SAFETY: `before_fork` took the lock on this thread.
    unsafe { REGISTRY.raw_unlock() };
}

extern "C" fn after_fork_in_child() {
    // SAFETY: the child's only thread is the one that took the lock in `before_fork`.
    unsafe { REGISTRY.reset_in_child() };
    crate::fence::reset_in_child();
    let mut r = REGISTRY.lock();
    table::reset_inflight_in_child(r.nslots);
    end_pending_deletes(&mut r);
}

const ATFORK_NONE: u8 = 0;
const ATFORK_BUSY: u8 = 1;
const ATFORK_DONE: u8 = 2;
static ATFORK: AtomicU8 = AtomicU8::new(ATFORK_NONE);

/// Registers the fork handlers once. Not under the registry lock: `fork` runs the prepare
/// handler with libc's atfork lock held, which `pthread_atfork` takes too. The handlers are
/// unregistered by libc when this library is unloaded.
fn ensure_atfork() -> Result<(), Error> {
    if ATFORK.load(Ordering::Acquire) != ATFORK_NONE {
        return Ok(());
    }
    if ATFORK.compare_exchange(ATFORK_NONE, ATFORK_BUSY, Ordering::AcqRel, Ordering::Acquire).is_err() {
        // Another thread is registering them right now: wait for it, or a fork right after
        // our create could copy the registry without the handlers' protection.
        loop {
            match ATFORK.load(Ordering::Acquire) {
                ATFORK_DONE => return Ok(()),
                ATFORK_NONE => return ensure_atfork(),
                _ => std::thread::yield_now(),
            }
        }
    }
    // SAFETY: the three handlers are plain functions of this library that only touch the
    // registry lock; libc keeps them until the library is unloaded.
    let r = unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork_in_parent), Some(after_fork_in_child)) };
    if r != 0 {
        ATFORK.store(ATFORK_NONE, Ordering::Release);
        return Err(Error::OutOfMemory);
    }
    ATFORK.store(ATFORK_DONE, Ordering::Release);
    Ok(())
}

fn owned(name: &str) -> Result<String, Error> {
    let mut s = String::new();
    s.try_reserve_exact(name.len())?;
    s.push_str(name);
    Ok(s)
}

/// Creates the counter `name` indexed by `index` (resolved here); returns its handle.
pub(crate) fn create(name: &str, index: Index) -> Result<u64, Error> {
    validate_name(name.as_bytes())?;
    ensure_atfork()?;
    crate::fence::init();
    // Resolving looks the rseq area up (dlsym) on first use: do it outside the lock, and
    // before any add, so that adds from signal handlers never call into the dynamic linker.
    let index = index.resolve();
    let mut r = REGISTRY.lock();
    crate::unload::register_exit_mark();
    if r.names.contains_key(name) {
        return Err(Error::Exists);
    }
    r.names.try_reserve(1)?;
    let key = owned(name)?;
    let label = owned(name)?;
    let slot = r.take_slot()?;
    // Fails only for a slot reused 2^39 times, which is then retired for good.
    let h = table::publish(slot, index)?;
    r.names.insert(key, slot as u32);
    r.slot_names[slot] = Some(label);
    Ok(h)
}

/// Deletes the live counter `h`: marks it dead and frees its name under the lock; then,
/// without the lock (the membarrier can wait for a CPU hotplug operation, and other registry
/// users must not wait with it), fences the rseq adds in flight and waits for the fallback
/// adds in flight; then makes the slot reusable once its fence has completed (at once,
/// unless the membarrier failed: then the next successful one, issued by a later delete).
pub(crate) fn delete(h: u64) -> Result<(), Error> {
    let (slot, needed) = {
        let mut r = REGISTRY.lock();
        let slot = table::retire(h)?;
        if let Some(name) = r.slot_names.get_mut(slot).and_then(Option::take) {
            r.names.remove(&name);
        }
        // Never reallocates: the capacity covers every slot.
        r.quarantine.push_back((slot as u32, DELETE_PENDING));
        (slot as u32, crate::fence::needed())
    };
    crate::fence::complete(needed);
    table::wait_for_fallback_adds(slot as usize);
    let mut r = REGISTRY.lock();
    // Pushed a moment ago: search from the back.
    if let Some(e) = r.quarantine.iter_mut().rev().find(|e| **e == (slot, DELETE_PENDING)) {
        e.1 = needed;
    }
    Ok(())
}

/// Makes every slot whose delete was in progress at `fork` reusable: the threads that were
/// deleting them do not exist in the child, nor does any add that could be in flight.
fn end_pending_deletes(r: &mut Registry) {
    for e in r.quarantine.iter_mut().filter(|e| e.1 == DELETE_PENDING) {
        e.1 = 0;
    }
}

/// The handle of the live counter called `name`.
pub(crate) fn lookup(name: &str) -> Result<u64, Error> {
    validate_name(name.as_bytes())?;
    let r = REGISTRY.lock();
    let slot = *r.names.get(name).ok_or(Error::NotFound)?;
    Ok(table::handle_of(slot as usize))
}

/// Calls `f` with the name of the live counter `h`, under the lock.
pub(crate) fn with_name<R>(h: u64, f: impl FnOnce(&str) -> R) -> Result<R, Error> {
    let r = REGISTRY.lock();
    let slot = table::live_slot(h)?;
    let name = r.slot_names.get(slot).and_then(Option::as_deref).ok_or(Error::Internal)?;
    Ok(f(name))
}

/// A live counter seen by [`with_sorted`].
pub(crate) struct Item<'a> {
    pub name: &'a str,
    pub handle: u64,
    pub value: i64,
    /// The counter received a negative add: exported as a gauge.
    pub may_decrease: bool,
}

/// Calls `f` with every live counter, sorted by name, values read under the lock (so no
/// counter is deleted while the list is built). `f` must not call back into the registry.
pub(crate) fn with_sorted<R>(f: impl FnOnce(&[Item<'_>]) -> Result<R, Error>) -> Result<R, Error> {
    let r = REGISTRY.lock();
    let mut items: Vec<Item<'_>> = Vec::new();
    items.try_reserve_exact(r.names.len())?;
    for (name, &slot) in &r.names {
        let handle = table::handle_of(slot as usize);
        let value = table::get(handle).map_err(|_| Error::Internal)?;
        items.push(Item { name, handle, value, may_decrease: table::may_decrease(handle) });
    }
    items.sort_unstable_by(|a, b| a.name.cmp(b.name));
    f(&items)
}

/// Bytes this copy holds: (resident, reserved). Resident: the pages of the per-CPU pool
/// that are in memory plus the handle table's chunks; reserved: the pool's virtual
/// reservation plus the chunks.
pub(crate) fn memory() -> (u64, u64) {
    let r = REGISTRY.lock();
    let chunks = (r.nslots.div_ceil(CHUNK_LEN) * table::CHUNK_BYTES) as u64;
    match &r.pool {
        Some(pool) => (pool.resident_bytes() as u64 + chunks, pool.reserved_bytes() as u64 + chunks),
        None => (chunks, chunks),
    }
}

/// At `dlclose` (see [`crate::unload`]): retires every live counter, fences the adds in
/// flight as a delete does, then frees the table, the names and the per-CPU pool.
pub(crate) fn release_all() {
    let mut r = REGISTRY.lock();
    for slot in 0..r.nslots {
        if r.slot_names[slot].is_some() {
            let _ = table::retire(table::handle_of(slot));
        }
    }
    table::unpublish_chunks();
    // One fence, numbered after the last DEAD store, covers every counter.
    crate::fence::complete(crate::fence::needed());
    for slot in 0..r.nslots {
        table::wait_for_fallback_adds_raw(slot);
    }
    // SAFETY: the chunks are unpublished, and no add is in flight any more.
    unsafe { table::free_chunks(r.nslots) };
    r.pool = None;
    r.nslots = 0;
    r.names = HashMap::with_hasher(BuildHasherDefault::new());
    r.slot_names = Vec::new();
    r.quarantine = VecDeque::new();
}

/// Number of live counters.
pub(crate) fn len() -> usize {
    REGISTRY.lock().names.len()
}

/// Appends the Prometheus text exposition of `items` to `out`, without reallocating more
/// than once (so running out of memory is an error, not an abort).
pub(crate) fn render_prometheus(items: &[Item<'_>], out: &mut String) -> Result<(), Error> {
    const TYPE: &str = "# TYPE ";
    const COUNTER: &str = " counter\n";
    const GAUGE: &str = " gauge\n";
    let kind = |it: &Item<'_>| if it.may_decrease { GAUGE } else { COUNTER };
    let mut len = 0usize;
    for it in items {
        len += TYPE.len() + 2 * it.name.len() + kind(it).len() + 1 + decimal(it.value, &mut [0; 20]).len() + 1;
    }
    out.try_reserve_exact(len)?;
    for it in items {
        out.push_str(TYPE);
        out.push_str(it.name);
        out.push_str(kind(it));
        out.push_str(it.name);
        out.push(' ');
        out.push_str(decimal(it.value, &mut [0; 20]));
        out.push('\n');
    }
    Ok(())
}

/// `v` in decimal, written into `buf`.
fn decimal(v: i64, buf: &mut [u8; 20]) -> &str {
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    // Only ASCII digits and '-' were written.
    core::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::decimal;

    #[test]
    fn decimal_matches_display() {
        for v in [0, 1, -1, 9, 10, -10, 1234567890, i64::MAX, i64::MIN, i64::MIN + 1] {
            assert_eq!(decimal(v, &mut [0; 20]), v.to_string());
        }
    }
}

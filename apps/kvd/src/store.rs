//! Items and the commands on them: lock-free reads in the index's read sections, writes
//! serialised per key by a striped lock, memory accounting and clock eviction over per-CPU
//! queues. Shared by every stack (the parts differ: see parts.rs).

use crate::parts::{Counters, Index, Shards, Stack, C};
use crate::proto::{self, StoreOp};
use std::alloc::Layout;
use std::cell::Cell;
use std::ffi::c_void;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, Ordering};
use std::sync::Mutex;

/// An item: this header, then the key, then the value, in one allocation. Immutable once
/// published except `next` (the collision chain, changed under the key's stripe lock),
/// `exptime` (touch) and `accessed` (the clock bit).
#[repr(C)]
pub struct Item {
    next: AtomicPtr<Item>,
    hash: u64,
    cas: u64,
    exptime: AtomicI64,
    flush_gen: u64,
    flags: u32,
    data_len: u32,
    key_len: u8,
    accessed: AtomicBool,
}

const HDR: usize = std::mem::size_of::<Item>();

impl Item {
    fn layout(key_len: usize, data_len: usize) -> Layout {
        Layout::from_size_align(HDR + key_len + data_len, std::mem::align_of::<Item>()).unwrap()
    }
    /// Bytes the item accounts for (memcached's `bytes`).
    pub fn total(&self) -> usize {
        HDR + self.key_len as usize + self.data_len as usize
    }
    pub fn key(&self) -> &[u8] {
        // SAFETY: key_len bytes follow the header in the item's allocation.
        unsafe { std::slice::from_raw_parts((self as *const Item as *const u8).add(HDR), self.key_len as usize) }
    }
    pub fn data(&self) -> &[u8] {
        // SAFETY: data_len bytes follow the key.
        unsafe {
            std::slice::from_raw_parts(
                (self as *const Item as *const u8).add(HDR + self.key_len as usize),
                self.data_len as usize,
            )
        }
    }
}

/// Frees an item (the reclaim callback of the index).
unsafe extern "C" fn free_item(p: *mut c_void) {
    let it = p as *mut Item;
    // SAFETY: p is an item from new_item, no longer reachable by anyone.
    unsafe {
        let layout = Item::layout((*it).key_len as usize, (*it).data_len as usize);
        std::alloc::dealloc(p as *mut u8, layout);
    }
}

thread_local! {
    /// A block of cas uniques reserved from the global counter: [next, end).
    static CAS_BLOCK: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

#[derive(Debug, PartialEq, Eq)]
pub enum StoreResult {
    Stored,
    NotStored,
    Exists,
    NotFound,
    TooLarge,
}

pub enum ArithResult {
    Value(u64),
    NotFound,
    NonNumeric,
}

pub struct Store {
    pub index: Index,
    pub counters: Counters,
    shards: Shards,
    stripes: Box<[Mutex<()>]>,
    pub limit: u64,
    pub item_max: usize,
    hash_mask: u64,
    next_cas: AtomicU64,
    flush_gen: AtomicU64,
    flush_deadline: AtomicI64,
}

const STRIPES: usize = 8192;

/// A 64-bit hash of a key: 8-byte words folded with multiply-rotate, then a final mix.
pub fn hash(key: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (key.len() as u64).wrapping_mul(K) ^ 0x2545_f491_4f6c_dd1d;
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap());
        h = (h ^ w).wrapping_mul(K).rotate_left(31);
    }
    let mut last = [0u8; 8];
    let rem = chunks.remainder();
    last[..rem.len()].copy_from_slice(rem);
    h = (h ^ u64::from_le_bytes(last)).wrapping_mul(K);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

pub fn now_unix() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer; the coarse clock is a vDSO read.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    ts.tv_sec
}

/// Where an item sits in its chain: the item before it (null when it is the head).
struct Found {
    prev: *mut Item,
    item: *mut Item,
}

impl Store {
    pub fn new(stack: Stack, limit: u64, item_max: usize, hash_mask: u64) -> Result<Store, String> {
        Ok(Store {
            index: Index::new(stack)?,
            counters: Counters::new(stack)?,
            shards: Shards::new(stack)?,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            limit,
            item_max,
            hash_mask,
            next_cas: AtomicU64::new(1),
            flush_gen: AtomicU64::new(0),
            flush_deadline: AtomicI64::new(0),
        })
    }

    #[inline]
    fn hash_of(&self, key: &[u8]) -> u64 {
        hash(key) & self.hash_mask
    }

    fn stripe(&self, h: u64) -> std::sync::MutexGuard<'_, ()> {
        // The stripe index mixes the high bits in, so a small hash mask (tests) still spreads.
        let i = ((h ^ (h >> 29)) as usize) % STRIPES;
        self.stripes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_cas(&self) -> u64 {
        CAS_BLOCK.with(|b| {
            let (mut next, mut end) = b.get();
            if next == end {
                next = self.next_cas.fetch_add(1024, Ordering::Relaxed);
                end = next + 1024;
            }
            b.set((next + 1, end));
            next
        })
    }

    /// Whether an item is still valid at `now` (not expired, not flushed).
    #[inline]
    fn live(&self, it: &Item, now: i64) -> bool {
        let e = it.exptime.load(Ordering::Relaxed);
        (e == 0 || e > now) && it.flush_gen >= self.flush_gen.load(Ordering::Relaxed)
    }

    fn flushed(&self, it: &Item) -> bool {
        it.flush_gen < self.flush_gen.load(Ordering::Relaxed)
    }

    /// Finds `key` in the chain under `h`. Inside a read section or under the stripe lock.
    #[inline]
    fn find(&self, h: u64, key: &[u8]) -> Option<Found> {
        let mut p = self.index.lookup(h) as *mut Item;
        let mut prev = std::ptr::null_mut();
        while !p.is_null() {
            // SAFETY: items reachable from the index stay allocated for the read section
            // (or while the stripe lock keeps writers of this hash out).
            let it = unsafe { &*p };
            if it.key() == key {
                return Some(Found { prev, item: p });
            }
            prev = p;
            p = it.next.load(Ordering::Acquire);
        }
        None
    }

    /// Allocates an unpublished item; the caller fills its data.
    fn new_item(&self, h: u64, key: &[u8], data_len: usize, flags: u32, exptime: i64) -> *mut Item {
        let layout = Item::layout(key.len(), data_len);
        // SAFETY: layout has non-zero size (the header).
        let p = unsafe { std::alloc::alloc(layout) } as *mut Item;
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: p is a fresh allocation of the layout's size; the key is copied after the
        // header.
        unsafe {
            p.write(Item {
                next: AtomicPtr::new(std::ptr::null_mut()),
                hash: h,
                cas: self.new_cas(),
                exptime: AtomicI64::new(exptime),
                flush_gen: self.flush_gen.load(Ordering::Relaxed),
                flags,
                data_len: data_len as u32,
                key_len: key.len() as u8,
                accessed: AtomicBool::new(false),
            });
            std::ptr::copy_nonoverlapping(key.as_ptr(), (p as *mut u8).add(HDR), key.len());
        }
        p
    }

    fn data_mut<'a>(p: *mut Item) -> &'a mut [u8] {
        // SAFETY: p is an unpublished item this thread owns; its data follows the key.
        unsafe {
            std::slice::from_raw_parts_mut((p as *mut u8).add(HDR + (*p).key_len as usize), (*p).data_len as usize)
        }
    }

    /// Puts `new` in `old`'s place (or at the chain's head when `old` is None) and retires
    /// `old`. Under the stripe lock and between write_begin/write_end.
    fn link(&self, h: u64, old: Option<&Found>, new: *mut Item) {
        let head = self.index.lookup(h) as *mut Item;
        // SAFETY: new is unpublished; old and prev are live chain members protected by the
        // stripe lock. The Release stores publish new's fields to lock-free readers.
        unsafe {
            match old {
                None => {
                    (*new).next.store(head, Ordering::Relaxed);
                    self.index.set(h, new as u64, !head.is_null());
                }
                Some(f) => {
                    (*new).next.store((*f.item).next.load(Ordering::Relaxed), Ordering::Relaxed);
                    if f.prev.is_null() {
                        self.index.set(h, new as u64, true);
                    } else {
                        (*f.prev).next.store(new, Ordering::Release);
                    }
                    self.account_remove(&*f.item);
                    self.index.retire(free_item, f.item as *mut c_void);
                }
            }
            self.account_add(&*new);
        }
    }

    /// Removes `f.item` from its chain and retires it. Same conditions as `link`.
    fn unlink(&self, h: u64, f: &Found) {
        // SAFETY: as in link.
        unsafe {
            let next = (*f.item).next.load(Ordering::Relaxed);
            if f.prev.is_null() {
                self.index.set(h, next as u64, true);
            } else {
                (*f.prev).next.store(next, Ordering::Release);
            }
            self.account_remove(&*f.item);
            self.index.retire(free_item, f.item as *mut c_void);
        }
    }

    fn account_add(&self, it: &Item) {
        self.counters.add(C::curr_items, 1);
        self.counters.add(C::total_items, 1);
        self.counters.add(C::bytes, it.total() as i64);
    }

    fn account_remove(&self, it: &Item) {
        self.counters.add(C::curr_items, -1);
        self.counters.add(C::bytes, -(it.total() as i64));
    }

    /// After a write published item (h, cas): queue it for the clock and evict while over
    /// the limit. Called with no lock held.
    fn after_write(&self, h: u64, cas: u64) {
        self.shards.push(&[(h, cas)]);
        if self.counters.get(C::bytes) as u64 > self.limit {
            self.evict();
        }
    }

    /// Clock eviction down to just under the limit (1/256 below it, so that a full cache
    /// evicts in batches rather than on every write): entries come in batches from the
    /// queue holding the oldest entry; an entry whose item was replaced or removed since is
    /// dropped, an item read since it was queued gets a second chance (back of the queue),
    /// an expired or flushed item is reclaimed, any other is evicted.
    fn evict(&self) {
        let target = self.limit - self.limit / 256;
        let mut batch = Vec::with_capacity(64);
        let mut again = Vec::new();
        for _ in 0..64 {
            if self.counters.get(C::bytes) as u64 <= target {
                break;
            }
            batch.clear();
            let shard = self.shards.pop_batch(64, &mut batch);
            if batch.is_empty() {
                break;
            }
            let mut used = 0;
            for &(h, cas) in &batch {
                if self.counters.get(C::bytes) as u64 <= target {
                    break;
                }
                used += 1;
                if self.evict_one(h, cas) {
                    again.push((h, cas));
                }
            }
            if used < batch.len() {
                self.shards.push_front(shard, &batch[used..]);
            }
        }
        if !again.is_empty() {
            self.shards.push(&again);
        }
    }

    /// Evicts the item (h, cas) if it is still there; true when it gets a second chance.
    fn evict_one(&self, h: u64, cas: u64) -> bool {
        let now = now_unix();
        let _g = self.stripe(h);
        self.index.write_begin();
        let mut p = self.index.lookup(h) as *mut Item;
        let mut prev = std::ptr::null_mut();
        // SAFETY: chain members are live under the stripe lock.
        while !p.is_null() && unsafe { (*p).cas } != cas {
            prev = p;
            p = unsafe { (*p).next.load(Ordering::Relaxed) };
        }
        let requeue = if p.is_null() {
            false // stale entry: the item was replaced or removed since
        } else {
            // SAFETY: p is a live chain member.
            let it = unsafe { &*p };
            if self.live(it, now) && it.accessed.swap(false, Ordering::Relaxed) {
                true
            } else {
                let c = if self.live(it, now) { C::evictions } else { C::reclaimed };
                self.unlink(h, &Found { prev, item: p });
                self.counters.add(c, 1);
                false
            }
        };
        self.index.write_end();
        requeue
    }

    /// get/gets/gat/gats of one key: appends a VALUE block to `out` when found.
    pub fn get(&self, key: &[u8], with_cas: bool, touch: Option<i64>, now: i64, out: &mut Vec<u8>) {
        let h = self.hash_of(key);
        let _g = touch.map(|_| self.stripe(h)); // gat changes exptime: serialised like a write
        let tok = self.index.read_lock();
        let found = self.find(h, key);
        let mut hit = false;
        let mut expired = false;
        let mut flushed = false;
        if let Some(f) = found {
            // SAFETY: inside the read section the item stays allocated.
            let it = unsafe { &*f.item };
            if self.live(it, now) {
                hit = true;
                if let Some(e) = touch {
                    it.exptime.store(proto::abs_exptime(e, now), Ordering::Relaxed);
                }
                if !it.accessed.load(Ordering::Relaxed) {
                    it.accessed.store(true, Ordering::Relaxed);
                }
                let data = it.data();
                out.extend_from_slice(b"VALUE ");
                out.extend_from_slice(key);
                let _ = write!(out, " {} {}", it.flags, data.len());
                if with_cas {
                    let _ = write!(out, " {}", it.cas);
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            } else {
                let e = it.exptime.load(Ordering::Relaxed);
                if e != 0 && e <= now {
                    expired = true;
                } else {
                    flushed = self.flushed(it);
                }
            }
        }
        self.index.read_unlock(tok);
        let c = &self.counters;
        if touch.is_some() {
            c.add(C::cmd_touch, 1);
            c.add(if hit { C::touch_hits } else { C::touch_misses }, 1);
        } else {
            c.add(C::cmd_get, 1);
            c.add(if hit { C::get_hits } else { C::get_misses }, 1);
            if expired {
                c.add(C::get_expired, 1);
            }
            if flushed {
                c.add(C::get_flushed, 1);
            }
        }
    }

    /// Finds key under the stripe lock; a dead (expired, flushed) item is unlinked first.
    fn find_live(&self, h: u64, key: &[u8], now: i64) -> Option<Found> {
        let f = self.find(h, key)?;
        // SAFETY: live chain member under the stripe lock.
        if self.live(unsafe { &*f.item }, now) {
            Some(f)
        } else {
            self.unlink(h, &f);
            self.counters.add(C::reclaimed, 1);
            None
        }
    }

    /// A storage command whose data block is `data` (without "\r\n").
    pub fn store(&self, op: StoreOp, key: &[u8], flags: u32, exptime: i64, data: &[u8], cas_in: u64) -> StoreResult {
        self.counters.add(C::cmd_set, 1);
        let now = now_unix();
        let h = self.hash_of(key);
        let exp = proto::abs_exptime(exptime, now);
        // set/add/replace/cas know their size: build the item before taking any lock.
        let fresh = match op {
            StoreOp::Append | StoreOp::Prepend => None,
            _ => {
                let p = self.new_item(h, key, data.len(), flags, exp);
                Self::data_mut(p).copy_from_slice(data);
                Some(p)
            }
        };
        let (res, cas) = {
            let _g = self.stripe(h);
            self.index.write_begin();
            let old = self.find_live(h, key, now);
            let mut new = std::ptr::null_mut();
            let res = match (op, &old) {
                (StoreOp::Set, _) => StoreResult::Stored,
                (StoreOp::Add, Some(_)) => StoreResult::NotStored,
                (StoreOp::Add, None) => StoreResult::Stored,
                (StoreOp::Replace | StoreOp::Append | StoreOp::Prepend, None) => StoreResult::NotStored,
                (StoreOp::Replace, Some(_)) => StoreResult::Stored,
                (StoreOp::Cas, None) => StoreResult::NotFound,
                // SAFETY: live chain member under the stripe lock.
                (StoreOp::Cas, Some(f)) if unsafe { (*f.item).cas } != cas_in => StoreResult::Exists,
                (StoreOp::Cas, Some(_)) => StoreResult::Stored,
                (StoreOp::Append | StoreOp::Prepend, Some(f)) => {
                    // SAFETY: as above.
                    let o = unsafe { &*f.item };
                    let od = o.data();
                    if HDR + key.len() + od.len() + data.len() > self.item_max {
                        StoreResult::TooLarge
                    } else {
                        // Keeps the old flags and exptime (protocol.txt: they are ignored).
                        let p =
                            self.new_item(h, key, od.len() + data.len(), o.flags, o.exptime.load(Ordering::Relaxed));
                        let d = Self::data_mut(p);
                        if op == StoreOp::Append {
                            d[..od.len()].copy_from_slice(od);
                            d[od.len()..].copy_from_slice(data);
                        } else {
                            d[..data.len()].copy_from_slice(data);
                            d[data.len()..].copy_from_slice(od);
                        }
                        new = p;
                        StoreResult::Stored
                    }
                }
            };
            if res == StoreResult::Stored {
                if let Some(p) = fresh {
                    new = p;
                }
                self.link(h, old.as_ref(), new);
            }
            self.index.write_end();
            // SAFETY: new was published above and is not retired before our stripe lock
            // is released (only writers holding it retire items of h).
            (res, if new.is_null() { 0 } else { unsafe { (*new).cas } })
        };
        if res != StoreResult::Stored {
            if let Some(p) = fresh {
                // SAFETY: never published.
                unsafe { free_item(p as *mut c_void) };
            }
        }
        if op == StoreOp::Cas {
            self.counters.add(
                match res {
                    StoreResult::Stored => C::cas_hits,
                    StoreResult::Exists => C::cas_badval,
                    _ => C::cas_misses,
                },
                1,
            );
        }
        if res == StoreResult::Stored {
            self.after_write(h, cas);
        }
        res
    }

    /// Whether an item of this key and value length fits the item size limit.
    pub fn fits(&self, key_len: usize, data_len: usize) -> bool {
        HDR + key_len + data_len <= self.item_max
    }

    /// A `set` too large to store removes the key's old value (as memcached does, so that a
    /// failed set never leaves stale data behind).
    pub fn drop_key(&self, key: &[u8]) {
        let h = self.hash_of(key);
        let _g = self.stripe(h);
        self.index.write_begin();
        if let Some(f) = self.find(h, key) {
            self.unlink(h, &f);
        }
        self.index.write_end();
    }

    pub fn delete(&self, key: &[u8]) -> bool {
        let now = now_unix();
        let h = self.hash_of(key);
        let hit = {
            let _g = self.stripe(h);
            self.index.write_begin();
            let f = self.find_live(h, key, now);
            if let Some(f) = &f {
                self.unlink(h, f);
            }
            self.index.write_end();
            f.is_some()
        };
        self.counters.add(if hit { C::delete_hits } else { C::delete_misses }, 1);
        hit
    }

    pub fn arith(&self, key: &[u8], incr: bool, delta: u64) -> ArithResult {
        let now = now_unix();
        let h = self.hash_of(key);
        let (res, cas) = {
            let _g = self.stripe(h);
            self.index.write_begin();
            let r = match self.find_live(h, key, now) {
                None => (ArithResult::NotFound, 0),
                Some(f) => {
                    // SAFETY: live chain member under the stripe lock.
                    let o = unsafe { &*f.item };
                    match proto::item_number(o.data()) {
                        None => (ArithResult::NonNumeric, 0),
                        Some(v) => {
                            let n = if incr { v.wrapping_add(delta) } else { v.saturating_sub(delta) };
                            let text = n.to_string();
                            let p = self.new_item(h, key, text.len(), o.flags, o.exptime.load(Ordering::Relaxed));
                            Self::data_mut(p).copy_from_slice(text.as_bytes());
                            // SAFETY: p is ours until linked.
                            let cas = unsafe { (*p).cas };
                            self.link(h, Some(&f), p);
                            (ArithResult::Value(n), cas)
                        }
                    }
                }
            };
            self.index.write_end();
            r
        };
        let c = &self.counters;
        match (&res, incr) {
            (ArithResult::NotFound, true) => c.add(C::incr_misses, 1),
            (ArithResult::NotFound, false) => c.add(C::decr_misses, 1),
            (ArithResult::Value(_), true) => c.add(C::incr_hits, 1),
            (ArithResult::Value(_), false) => c.add(C::decr_hits, 1),
            (ArithResult::NonNumeric, _) => {}
        }
        if let ArithResult::Value(_) = res {
            self.after_write(h, cas);
        }
        res
    }

    pub fn touch(&self, key: &[u8], exptime: i64) -> bool {
        let now = now_unix();
        let h = self.hash_of(key);
        let hit = {
            let _g = self.stripe(h);
            self.index.write_begin();
            let f = self.find_live(h, key, now);
            if let Some(f) = &f {
                // SAFETY: live chain member under the stripe lock.
                unsafe { &*f.item }.exptime.store(proto::abs_exptime(exptime, now), Ordering::Relaxed);
            }
            self.index.write_end();
            f.is_some()
        };
        self.counters.add(C::cmd_touch, 1);
        self.counters.add(if hit { C::touch_hits } else { C::touch_misses }, 1);
        hit
    }

    /// flush_all: every item stored before now (delay 0) or before now + delay becomes
    /// invalid. Items are reclaimed lazily (by the next write of their key or by eviction).
    pub fn flush_all(&self, delay: i64) {
        self.counters.add(C::cmd_flush, 1);
        if delay <= 0 {
            self.flush_deadline.store(0, Ordering::Relaxed);
            self.flush_gen.fetch_add(1, Ordering::Relaxed);
        } else {
            self.flush_deadline.store(proto::abs_exptime(delay, now_unix()), Ordering::Relaxed);
        }
    }

    /// Runs a delayed flush that has come due (the server's main loop calls it).
    pub fn tick(&self, now: i64) {
        let d = self.flush_deadline.load(Ordering::Relaxed);
        if d != 0
            && now >= d
            && self.flush_deadline.compare_exchange(d, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.flush_gen.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_spreads_and_depends_on_every_byte() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000u32 {
            assert!(seen.insert(hash(format!("key:{i}").as_bytes())));
        }
        assert_ne!(hash(b"abcdefgh1"), hash(b"abcdefgh2"));
        assert_ne!(hash(b""), hash(b"\0"));
    }

    fn naive(limit: u64, mask: u64) -> Store {
        Store::new(Stack::Naive, limit, 1 << 20, mask).unwrap()
    }

    fn get(s: &Store, key: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        s.get(key.as_bytes(), false, None, now_unix(), &mut out);
        if out.is_empty() {
            return None;
        }
        let nl = out.iter().position(|&b| b == b'\n').unwrap();
        Some(out[nl + 1..out.len() - 2].to_vec())
    }

    #[test]
    fn collision_chains_keep_keys_apart() {
        // Mask 0: every key has hash 0, one chain.
        let s = naive(1 << 30, 0);
        for i in 0..50 {
            assert_eq!(
                s.store(StoreOp::Set, format!("k{i}").as_bytes(), 0, 0, format!("v{i}").as_bytes(), 0),
                StoreResult::Stored
            );
        }
        for i in (0..50).step_by(3) {
            assert!(s.delete(format!("k{i}").as_bytes()));
        }
        for i in 0..50 {
            let want = if i % 3 == 0 { None } else { Some(format!("v{i}").into_bytes()) };
            assert_eq!(get(&s, &format!("k{i}")), want, "k{i}");
        }
        assert!(matches!(s.arith(b"k1", true, 5), ArithResult::NonNumeric));
        s.store(StoreOp::Set, b"k1", 0, 0, b"10", 0);
        assert!(matches!(s.arith(b"k1", false, 11), ArithResult::Value(0)));
        assert_eq!(get(&s, "k2"), Some(b"v2".to_vec()));
        assert_eq!(s.counters.get(C::curr_items), 50 - 17);
    }

    #[test]
    fn eviction_keeps_bytes_under_the_limit() {
        let s = naive(64 * 1024, u64::MAX);
        for i in 0..1000 {
            s.store(StoreOp::Set, format!("key{i}").as_bytes(), 0, 0, &[b'x'; 500], 0);
            assert!(s.counters.get(C::bytes) <= 64 * 1024);
        }
        assert!(s.counters.get(C::evictions) > 800);
        assert!(get(&s, "key999").is_some());
        assert!(get(&s, "key0").is_none());
    }
}

//! An RCU hash map from `u64` keys to `u64` values.
//!
//! Readers look up without locks inside a read section: they load the table pointer and
//! walk one bucket's chain with acquire loads. Writers (insert, replace, remove) serialise
//! on the map's lock. A node's key and place never change while a reader may hold it; its
//! value is one atomic word, so a replace stores the new value into the node (release; a
//! reader's acquire load sees the old or the new value, whole, and what the writer wrote
//! before publishing it) — no node is allocated or retired for a replace. A remove unlinks;
//! the node is freed after a grace period (`call_rcu`). When the map holds more keys than
//! buckets, a writer builds a whole new table of twice the size with fresh nodes and
//! publishes it with one store; the old table and all its nodes are freed after a grace
//! period. A lookup therefore walks either
//! the complete old table or the complete new one, so a key present throughout is never
//! missed during a resize.

use core::ffi::c_void;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crate::callbacks::{self, Callback};
use crate::domain;
use crate::lock::Lock;

struct Node {
    key: u64,
    /// Written in place by `replace` (release), read by lookups (acquire).
    value: AtomicU64,
    next: AtomicPtr<Node>,
}

struct Table {
    mask: usize,
    buckets: Box<[AtomicPtr<Node>]>,
}

/// Why a writer refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Insert: the key is present.
    Exists,
    /// Replace or remove: the key is absent.
    NotFound,
}

/// The map. Shared by reference between readers and writers (it is `Sync`).
pub struct Map {
    magic: AtomicU64,
    table: AtomicPtr<Table>,
    writer: Lock<()>,
    len: AtomicUsize,
}

pub(crate) const MAGIC: u64 = 0x7072_6375_6d61_7021;

fn hash(key: u64) -> u64 {
    let mut x = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn new_table(buckets: usize) -> *mut Table {
    let n = buckets.next_power_of_two().max(8);
    let buckets: Box<[AtomicPtr<Node>]> = (0..n).map(|_| AtomicPtr::new(core::ptr::null_mut())).collect();
    Box::into_raw(Box::new(Table { mask: n - 1, buckets }))
}

unsafe extern "C" fn free_node(arg: *mut c_void) {
    // SAFETY: `arg` is a node unlinked by a writer, queued once.
    drop(unsafe { Box::from_raw(arg.cast::<Node>()) });
}

unsafe extern "C" fn free_table_and_nodes(arg: *mut c_void) {
    // SAFETY: `arg` is a table no longer published, queued once; its chains belong to it.
    unsafe { free_table(arg.cast::<Table>()) };
}

unsafe fn free_table(t: *mut Table) {
    // SAFETY: the caller owns `t` and every node reachable from it.
    let t = unsafe { Box::from_raw(t) };
    for b in t.buckets.iter() {
        let mut n = b.load(Ordering::Relaxed);
        while !n.is_null() {
            // SAFETY: owned, see above.
            let node = unsafe { Box::from_raw(n) };
            n = node.next.load(Ordering::Relaxed);
        }
    }
}

impl Map {
    /// A map with room for about `capacity` keys before its first resize: one bucket per
    /// key (rounded up to a power of two), so that a lookup walks about one node.
    pub fn new(capacity: usize) -> Map {
        Map {
            magic: AtomicU64::new(MAGIC),
            table: AtomicPtr::new(new_table(capacity)),
            writer: Lock::new(()),
            len: AtomicUsize::new(0),
        }
    }

    pub(crate) fn is_valid(&self) -> bool {
        self.magic.load(Ordering::Relaxed) == MAGIC
    }

    /// The value for `key`. Opens its own read section (nested inside the caller's, if any).
    /// Async-signal-safe.
    pub fn get(&self, key: u64) -> Option<u64> {
        let t = domain::read_lock();
        // SAFETY: inside a read section, so the table and nodes we reach are not freed.
        let r = unsafe { self.get_in_section(key) };
        let _ = domain::read_unlock(t);
        r
    }

    /// [`Map::get`] for a caller that holds a read section.
    ///
    /// # Safety
    /// The caller holds a read-side token for the whole call.
    pub unsafe fn get_in_section(&self, key: u64) -> Option<u64> {
        let t = self.table.load(Ordering::Acquire);
        // SAFETY: a published table lives until a grace period after it is replaced.
        let t = unsafe { &*t };
        // SAFETY: `mask` is the bucket count minus one (a power of two), so the index is in
        // range; the bounds check would cost a compare and a branch on every lookup.
        let mut n = unsafe { t.buckets.get_unchecked(hash(key) as usize & t.mask) }.load(Ordering::Acquire);
        while !n.is_null() {
            // SAFETY: a node reachable from a published table lives until a grace period
            // after it is unlinked.
            let node = unsafe { &*n };
            if node.key == key {
                return Some(node.value.load(Ordering::Acquire));
            }
            n = node.next.load(Ordering::Acquire);
        }
        None
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn table_mut(&self) -> &Table {
        // SAFETY: under the writer lock the published table is stable and alive.
        unsafe { &*self.table.load(Ordering::Relaxed) }
    }

    /// Finds the link pointing to `key`'s node (writer lock held).
    fn find(&self, key: u64) -> Option<(&AtomicPtr<Node>, *mut Node)> {
        let t = self.table_mut();
        let mut link = &t.buckets[hash(key) as usize & t.mask];
        loop {
            let n = link.load(Ordering::Relaxed);
            if n.is_null() {
                return None;
            }
            // SAFETY: writers hold the lock; nodes of the published table are alive.
            let node = unsafe { &*n };
            if node.key == key {
                return Some((link, n));
            }
            link = &node.next;
        }
    }

    /// Adds `key` → `value`; `Exists` when the key is present.
    pub fn insert(&self, key: u64, value: u64) -> Result<(), MapError> {
        let _w = self.writer.lock();
        if self.find(key).is_some() {
            return Err(MapError::Exists);
        }
        let t = self.table_mut();
        let head = &t.buckets[hash(key) as usize & t.mask];
        let node = Box::into_raw(Box::new(Node {
            key,
            value: AtomicU64::new(value),
            next: AtomicPtr::new(head.load(Ordering::Relaxed)),
        }));
        head.store(node, Ordering::Release);
        let len = self.len.fetch_add(1, Ordering::Relaxed) + 1;
        if len > t.mask + 1 {
            self.grow();
        }
        Ok(())
    }

    /// Sets `key`'s value; returns the old one. `NotFound` when absent.
    pub fn replace(&self, key: u64, value: u64) -> Result<u64, MapError> {
        let _w = self.writer.lock();
        let (_, node) = self.find(key).ok_or(MapError::NotFound)?;
        // SAFETY: `node` is a live node of the published table (writer lock held). Only
        // writers store into `value`, and they hold the lock, so the swap returns exactly
        // the value this replace supersedes.
        Ok(unsafe { (*node).value.swap(value, Ordering::Release) })
    }

    /// Removes `key`; returns its value. `NotFound` when absent.
    pub fn remove(&self, key: u64) -> Result<u64, MapError> {
        let _w = self.writer.lock();
        let (link, old) = self.find(key).ok_or(MapError::NotFound)?;
        // SAFETY: as in `replace`.
        let (old_value, next) = unsafe { ((*old).value.load(Ordering::Relaxed), (*old).next.load(Ordering::Relaxed)) };
        link.store(next, Ordering::Release);
        self.len.fetch_sub(1, Ordering::Relaxed);
        callbacks::call(Callback { func: free_node, arg: old.cast() });
        Ok(old_value)
    }

    fn grow(&self) {
        let old = self.table.load(Ordering::Relaxed);
        // SAFETY: writer lock held; the published table is alive.
        let o = unsafe { &*old };
        let new = new_table((o.mask + 1) * 2);
        // SAFETY: not yet published: only this writer sees it.
        let n = unsafe { &*new };
        for b in o.buckets.iter() {
            let mut p = b.load(Ordering::Relaxed);
            while !p.is_null() {
                // SAFETY: a live node of the old table.
                let node = unsafe { &*p };
                let head = &n.buckets[hash(node.key) as usize & n.mask];
                let copy = Node {
                    key: node.key,
                    value: AtomicU64::new(node.value.load(Ordering::Relaxed)),
                    next: AtomicPtr::new(head.load(Ordering::Relaxed)),
                };
                head.store(Box::into_raw(Box::new(copy)), Ordering::Relaxed);
                p = node.next.load(Ordering::Relaxed);
            }
        }
        self.table.store(new, Ordering::Release);
        callbacks::call(Callback { func: free_table_and_nodes, arg: old.cast() });
    }

    /// Every key and value (writer lock held for the copy), for checks.
    pub fn entries(&self) -> Vec<(u64, u64)> {
        let _w = self.writer.lock();
        let t = self.table_mut();
        let mut out = Vec::new();
        for b in t.buckets.iter() {
            let mut p = b.load(Ordering::Relaxed);
            while !p.is_null() {
                // SAFETY: live nodes of the published table.
                let node = unsafe { &*p };
                out.push((node.key, node.value.load(Ordering::Relaxed)));
                p = node.next.load(Ordering::Relaxed);
            }
        }
        out
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        self.magic.store(0, Ordering::Relaxed);
        // Readers that still walk the table finish first.
        domain::synchronize();
        let t = self.table.swap(core::ptr::null_mut(), Ordering::Relaxed);
        // SAFETY: unpublished and a grace period has elapsed.
        unsafe { free_table(t) };
    }
}

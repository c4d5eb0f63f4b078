//! Allocations above the largest class: their own mapping each, recorded in an
//! open-addressing table (address → length) that lives in mappings of its own and doubles
//! when half full. `free` unmaps, `realloc` uses `mremap`.

use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::lock::SpinLock;
use crate::sys;

struct Table {
    /// `cap` pairs (address, length); address 0 is an empty slot, 1 a deleted one.
    slots: *mut [usize; 2],
    cap: usize,
    used: usize,
    /// Live and deleted slots (for the load factor).
    filled: usize,
}

// SAFETY: the table's memory is its own mapping, used under the lock.
unsafe impl Send for Table {}

static TABLE: SpinLock<Table> = SpinLock::new(Table { slots: ptr::null_mut(), cap: 0, used: 0, filled: 0 });

/// Freed large mappings kept for reuse (a program that allocates and frees blocks of a few
/// hundred KiB would otherwise pay a mapping, page faults and an unmapping every time):
/// at most `CACHE_SLOTS` blocks and `CACHE_BYTES` in all; `trim` unmaps them.
const CACHE_SLOTS: usize = 16;
const CACHE_BYTES: usize = 8 << 20;

struct Cache {
    blocks: [(usize, usize); CACHE_SLOTS],
    n: usize,
    bytes: usize,
}

static CACHE: SpinLock<Cache> = SpinLock::new(Cache { blocks: [(0, 0); CACHE_SLOTS], n: 0, bytes: 0 });

/// Bytes of freed large blocks kept for reuse.
pub static CACHED_BYTES: AtomicU64 = AtomicU64::new(0);

/// A cached mapping of `len..=len + len / 4` bytes aligned to `align`, taken out of the cache.
fn reuse(len: usize, align: usize) -> Option<(usize, usize)> {
    let mut c = CACHE.lock();
    let i = (0..c.n).find(|&i| {
        let (a, l) = c.blocks[i];
        l >= len && l - len <= len / 4 && a & (align - 1) == 0
    })?;
    let b = c.blocks[i];
    c.n -= 1;
    c.blocks[i] = c.blocks[c.n];
    c.bytes -= b.1;
    CACHED_BYTES.store(c.bytes as u64, Ordering::Relaxed);
    Some(b)
}

/// Keeps a freed mapping for reuse; false when the cache is full.
fn keep(addr: usize, len: usize) -> bool {
    let mut c = CACHE.lock();
    if c.n == CACHE_SLOTS || c.bytes + len > CACHE_BYTES {
        return false;
    }
    let n = c.n;
    c.blocks[n] = (addr, len);
    c.n += 1;
    c.bytes += len;
    CACHED_BYTES.store(c.bytes as u64, Ordering::Relaxed);
    true
}

/// Unmaps every cached mapping (trim, unload).
pub fn unmap_cached() {
    let mut c = CACHE.lock();
    for i in 0..c.n {
        let (a, l) = c.blocks[i];
        // SAFETY: cached mappings are ours and unused.
        unsafe { sys::unmap(a as *mut u8, l) };
    }
    c.n = 0;
    c.bytes = 0;
    CACHED_BYTES.store(0, Ordering::Relaxed);
}

/// Bytes mapped for large allocations (live).
pub static LARGE_BYTES: AtomicU64 = AtomicU64::new(0);
/// Live large allocations.
pub static LARGE_COUNT: AtomicU64 = AtomicU64::new(0);

const DELETED: usize = 1;

fn hash(addr: usize) -> usize {
    (addr >> 12).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Table {
    fn find(&self, addr: usize) -> Option<usize> {
        if self.cap == 0 {
            return None;
        }
        let mut i = hash(addr) & (self.cap - 1);
        loop {
            // SAFETY: `i < cap`.
            let s = unsafe { *self.slots.add(i) };
            if s[0] == addr {
                return Some(i);
            }
            if s[0] == 0 {
                return None;
            }
            i = (i + 1) & (self.cap - 1);
        }
    }

    fn grow(&mut self) -> bool {
        // Rehash in place when mostly tombstones, so churn does not grow the table.
        let ncap = if self.cap == 0 {
            256
        } else if self.used * 4 < self.cap {
            self.cap
        } else {
            self.cap * 2
        };
        let Some(m) = sys::map(ncap * 16) else { return false };
        let old = (self.slots, self.cap);
        self.slots = m.cast();
        self.cap = ncap;
        self.used = 0;
        self.filled = 0;
        for i in 0..old.1 {
            // SAFETY: `i < old cap`.
            let s = unsafe { *old.0.add(i) };
            if s[0] > DELETED {
                self.put(s[0], s[1]);
            }
        }
        if !old.0.is_null() {
            // SAFETY: the old table's mapping, replaced.
            unsafe { sys::unmap(old.0.cast(), old.1 * 16) };
        }
        true
    }

    fn put(&mut self, addr: usize, len: usize) {
        let mut i = hash(addr) & (self.cap - 1);
        loop {
            // SAFETY: `i < cap`.
            let s = unsafe { &mut *self.slots.add(i) };
            if s[0] <= DELETED {
                if s[0] == 0 {
                    self.filled += 1;
                }
                *s = [addr, len];
                self.used += 1;
                return;
            }
            i = (i + 1) & (self.cap - 1);
        }
    }

    fn insert(&mut self, addr: usize, len: usize) -> bool {
        if (self.filled + 1) * 2 > self.cap && !self.grow() {
            return false;
        }
        self.put(addr, len);
        true
    }
}

/// Maps a large block of at least `size` bytes aligned to `align` (a power of two), zeroed
/// when `zeroed` (fresh mappings are; reused ones are cleared); null with `errno = ENOMEM`
/// when the kernel refuses.
pub fn alloc(size: usize, align: usize, zeroed: bool) -> *mut u8 {
    let Some(len) = size.checked_add(sys::PAGE - 1).map(|n| n & !(sys::PAGE - 1)) else {
        sys::set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    let (p, len) = match reuse(len, align) {
        Some((a, l)) => {
            if zeroed {
                // SAFETY: a cached mapping of `l >= size` bytes, ours.
                unsafe { ptr::write_bytes(a as *mut u8, 0, size) };
            }
            (a as *mut u8, l)
        }
        None => match sys::map_aligned(len, align) {
            Some(p) => (p, len),
            None => {
                // Cached mappings may be what uses up the address space.
                unmap_cached();
                let Some(p) = sys::map_aligned(len, align) else {
                    sys::set_errno(libc::ENOMEM);
                    return ptr::null_mut();
                };
                (p, len)
            }
        },
    };
    if !TABLE.lock().insert(p as usize, len) {
        // SAFETY: the mapping just made.
        unsafe { sys::unmap(p, len) };
        sys::set_errno(libc::ENOMEM);
        return ptr::null_mut();
    }
    LARGE_BYTES.fetch_add(len as u64, Ordering::Relaxed);
    LARGE_COUNT.fetch_add(1, Ordering::Relaxed);
    p
}

/// The length of the large block at `p`, when `p` is one.
pub fn len_of(p: usize) -> Option<usize> {
    if p & (sys::PAGE - 1) != 0 {
        return None;
    }
    let t = TABLE.lock();
    // SAFETY: `find` returns an index below `cap`.
    t.find(p).map(|i| unsafe { (*t.slots.add(i))[1] })
}

/// Unmaps the large block at `p`; false when `p` is not one.
pub fn free(p: usize) -> bool {
    if p & (sys::PAGE - 1) != 0 {
        return false;
    }
    let len = {
        let mut t = TABLE.lock();
        let Some(i) = t.find(p) else { return false };
        // SAFETY: `i < cap`.
        let s = unsafe { &mut *t.slots.add(i) };
        let len = s[1];
        *s = [DELETED, 0];
        t.used -= 1;
        len
    };
    if !keep(p, len) {
        let e = sys::errno();
        // SAFETY: the block was ours and is no longer recorded.
        unsafe { sys::unmap(p as *mut u8, len) };
        sys::set_errno(e);
    }
    LARGE_BYTES.fetch_sub(len as u64, Ordering::Relaxed);
    LARGE_COUNT.fetch_sub(1, Ordering::Relaxed);
    true
}

/// Resizes the large block at `p` (of length `old`) to hold `size` bytes with `mremap`;
/// null (block unchanged) when the kernel refuses.
pub fn resize(p: usize, old: usize, size: usize) -> *mut u8 {
    let Some(len) = size.checked_add(sys::PAGE - 1).map(|n| n & !(sys::PAGE - 1)) else {
        return ptr::null_mut();
    };
    if len == old {
        return p as *mut u8;
    }
    let mut t = TABLE.lock();
    let Some(i) = t.find(p) else { return ptr::null_mut() };
    // SAFETY: `p` is a live mapping of `old` bytes, ours (recorded); the table lock keeps
    // it from being freed meanwhile.
    let q = unsafe { libc::mremap(p as *mut _, old, len, libc::MREMAP_MAYMOVE) };
    if q == libc::MAP_FAILED {
        sys::set_errno(libc::ENOMEM);
        return ptr::null_mut();
    }
    // SAFETY: `i < cap`.
    unsafe { *t.slots.add(i) = [DELETED, 0] };
    t.used -= 1;
    t.put(q as usize, len);
    LARGE_BYTES.fetch_add(len as u64, Ordering::Relaxed);
    LARGE_BYTES.fetch_sub(old as u64, Ordering::Relaxed);
    q.cast()
}

/// Fork support.
pub fn hold() {
    TABLE.hold();
    CACHE.hold();
}

/// See [`hold`].
///
/// # Safety
/// After [`hold`], in the same thread or the child forked from it.
pub unsafe fn release_held() {
    // SAFETY: forwarded contract.
    unsafe {
        CACHE.release_held();
        TABLE.release_held();
    }
}

/// At unload: unmaps every large block and the table.
///
/// # Safety
/// Nothing uses the blocks any more.
pub unsafe fn unmap_all() {
    unmap_cached();
    let mut t = TABLE.lock();
    for i in 0..t.cap {
        // SAFETY: `i < cap`; live slots name our mappings.
        unsafe {
            let s = *t.slots.add(i);
            if s[0] > DELETED {
                sys::unmap(s[0] as *mut u8, s[1]);
            }
        }
    }
    if !t.slots.is_null() {
        // SAFETY: the table's own mapping.
        unsafe { sys::unmap(t.slots.cast(), t.cap * 16) };
    }
    *t = Table { slots: ptr::null_mut(), cap: 0, used: 0, filled: 0 };
    LARGE_BYTES.store(0, Ordering::Relaxed);
    LARGE_COUNT.store(0, Ordering::Relaxed);
}

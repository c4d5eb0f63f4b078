//! The central layer: per size class, a transfer stack of free objects that moves batches
//! between CPU caches, and behind it the class's spans (runs of pages cut into objects of
//! the class) with their free lists. Spans come from chunks: 4 MiB aligned mappings, each
//! serving one class and recorded in the page map. A span whose objects are all free again
//! gives its pages back to the kernel (`madvise(MADV_DONTNEED)`) and is cut anew on reuse:
//! past a small reserve per class, once it has stayed empty for [`DECAY_MS`] (a program that
//! frees a batch and allocates it again each round does not fault the pages in each round),
//! and at once past a process-wide cap on such spans. Everything of a class is under that class's lock.

use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::class::{self, CHUNK, NCLASSES, TRANSFER_MAX};
use crate::lock::SpinLock;
use crate::{meta, pagemap, sys};

/// Most spans a chunk holds (64 KiB spans).
pub const MAX_SPANS: usize = CHUNK / (64 * 1024);

/// A run of pages cut into objects of one class.
pub struct Span {
    /// Address of the first object.
    pub start: usize,
    /// Head of the free list (through each free object's first word); 0 when empty.
    free: u64,
    /// Objects on the free list.
    nfree: u32,
    /// Objects cut so far (`start + k * size` for `k < carved`).
    carved: u32,
    /// Objects the span holds.
    cap: u32,
    /// On the class's list of spans with room.
    listed: bool,
    /// Its pages are (partly) backed: something was cut since it was last released.
    backed: bool,
    /// `sys::coarse_ms()` when its last object came back (meaningful while it is empty).
    empty_since: u64,
    next: *mut Span,
    prev: *mut Span,
}

/// A chunk's record.
pub struct Chunk {
    /// CHUNK-aligned start.
    pub base: usize,
    /// Its class.
    pub class: u32,
    span_shift: u32,
    nspans: u32,
    /// Spans handed out so far (the rest are untouched).
    used: u32,
    /// Check mode: one bit per object, set while it is allocated (null when off).
    bits: *mut AtomicU64,
    /// Words of `bits` per span.
    bit_words: u32,
    /// Next chunk of the same class.
    next: *mut Chunk,
    spans: [Span; MAX_SPANS],
}

impl Chunk {
    /// Index of the span holding `addr` and its object index, when `addr` is the start of
    /// an object that was cut; `None` for any other address of the chunk.
    pub fn object_index(&self, addr: usize) -> Option<(usize, usize)> {
        let s = (addr - self.base) >> self.span_shift;
        let span = &self.spans[s];
        let size = class::class_size(self.class as usize);
        let off = addr.checked_sub(span.start)?;
        if s >= self.used as usize || off % size != 0 || off / size >= span.cap as usize {
            return None;
        }
        Some((s, off / size))
    }

    /// Check mode: the allocated-bit of object `k` of span `s`.
    fn bit(&self, s: usize, k: usize) -> Option<(&AtomicU64, u64)> {
        if self.bits.is_null() {
            return None;
        }
        // SAFETY: `bits` has `nspans * bit_words` words and `k < cap <= bit_words * 64`.
        let w = unsafe { &*self.bits.add(s * self.bit_words as usize + k / 64) };
        Some((w, 1u64 << (k % 64)))
    }
}

/// What marking an object in check mode found.
pub enum Mark {
    /// Check mode is off for this chunk, or the bit had the expected value.
    Ok,
    /// The address is inside a chunk but not the start of an object.
    NotAnObject,
    /// Allocating an object already marked allocated, or freeing one not allocated.
    Wrong,
}

/// Check mode: marks the object at `addr` allocated (`on`) or free.
pub fn mark(chunk: &Chunk, addr: usize, on: bool) -> Mark {
    let Some((s, k)) = chunk.object_index(addr) else { return Mark::NotAnObject };
    let Some((w, bit)) = chunk.bit(s, k) else { return Mark::Ok };
    let old = if on { w.fetch_or(bit, Ordering::AcqRel) } else { w.fetch_and(!bit, Ordering::AcqRel) };
    if (old & bit != 0) == on {
        Mark::Wrong
    } else {
        Mark::Ok
    }
}

/// One class's central state.
pub struct Central {
    transfer: [u64; TRANSFER_MAX],
    ntransfer: usize,
    /// Spans with free or uncut objects.
    partial: *mut Span,
    /// Newest chunk (spans are handed out from it until it is used up).
    chunks: *mut Chunk,
    /// Spans given back to the kernel since start.
    pub releases: u64,
    /// Empty spans still backed, so that a class that empties and refills a span does not
    /// fault its pages in again each time: up to `keep_empty` for good, more (within
    /// `DECAYING_MAX` for all classes together) until they have been empty for `DECAY_MS`.
    /// Changed only through `set_empty_kept`.
    empty_kept: usize,
}

/// Empty spans a class keeps backed for good: one 64 KiB span (none for classes with bigger
/// spans; with the decay pass keeping more for a second, a bigger reserve only held memory
/// in every class a program had ever used).
fn keep_empty(c: usize) -> usize {
    64 * 1024 / class::span_bytes(c)
}

/// Bytes of empty spans past their class's `keep_empty`, all classes together, that may wait
/// for the decay pass; a span that empties past it is released at once. (Classes check and
/// count under their own locks, so classes emptying spans at the same moment can pass it by
/// a span each.)
pub const DECAYING_MAX: u64 = 8 * 1024 * 1024;

/// Bytes of empty spans past their class's reserve (see `DECAYING_MAX`).
static DECAYING: AtomicU64 = AtomicU64::new(0);

/// Bytes of `kept` empty spans of class `c` past its reserve.
fn decaying_bytes(c: usize, kept: usize) -> u64 {
    (kept.saturating_sub(keep_empty(c)) * class::span_bytes(c)) as u64
}

/// How long an empty span past the reserve stays backed: the decay pass, run by the central
/// layer's operations at most once per `DECAY_MS`, releases those empty for longer.
pub const DECAY_MS: u64 = 1000;

/// `sys::coarse_ms()` of the last decay pass.
static DECAY_AT: AtomicU64 = AtomicU64::new(0);

// SAFETY: the raw pointers name records and memory owned by the allocator, used under the
// class lock.
unsafe impl Send for Central {}

#[allow(clippy::declare_interior_mutable_const)]
const CENTRAL_INIT: SpinLock<Central> = SpinLock::new(Central {
    transfer: [0; TRANSFER_MAX],
    ntransfer: 0,
    partial: ptr::null_mut(),
    chunks: ptr::null_mut(),
    releases: 0,
    empty_kept: 0,
});

/// Every class's central state.
pub static CENTRAL: [SpinLock<Central>; NCLASSES] = [CENTRAL_INIT; NCLASSES];

/// Whether new chunks get check bits (set once at start-up from `PALLOC_CHECK`).
pub static CHECK: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

impl Central {
    fn list(&mut self, s: *mut Span) {
        // SAFETY: a live span record of this class, not listed.
        unsafe {
            (*s).listed = true;
            (*s).prev = ptr::null_mut();
            (*s).next = self.partial;
            if !self.partial.is_null() {
                (*self.partial).prev = s;
            }
        }
        self.partial = s;
    }

    fn unlist(&mut self, s: *mut Span) {
        // SAFETY: a live, listed span record of this class.
        unsafe {
            let (p, n) = ((*s).prev, (*s).next);
            if p.is_null() {
                self.partial = n;
            } else {
                (*p).next = n;
            }
            if !n.is_null() {
                (*n).prev = p;
            }
            (*s).listed = false;
        }
    }

    /// A span with room: a fresh one from the newest chunk, or from a new chunk.
    fn new_span(&mut self, c: usize) -> Option<*mut Span> {
        let mut chunk = self.chunks;
        // SAFETY: chunk records live until unload.
        if chunk.is_null() || unsafe { (*chunk).used == (*chunk).nspans } {
            chunk = new_chunk(c, self.chunks)?;
            self.chunks = chunk;
        }
        // SAFETY: `used < nspans`: a span record of the chunk.
        unsafe {
            let ch = &mut *chunk;
            let i = ch.used as usize;
            ch.used += 1;
            let span_bytes = 1usize << ch.span_shift;
            let s = &mut ch.spans[i];
            s.start = ch.base + i * span_bytes;
            s.cap = (span_bytes / class::class_size(c)) as u32;
            let s: *mut Span = s;
            self.list(s);
            Some(s)
        }
    }

    /// Takes up to `out.len()` objects; returns how many (0: out of memory).
    fn take(&mut self, c: usize, out: &mut [u64]) -> usize {
        let mut n = 0;
        while n < out.len() && self.ntransfer > 0 {
            self.ntransfer -= 1;
            out[n] = self.transfer[self.ntransfer];
            n += 1;
        }
        let size = class::class_size(c) as u64;
        while n < out.len() {
            let s = if self.partial.is_null() {
                match self.new_span(c) {
                    Some(s) => s,
                    None => break,
                }
            } else {
                self.partial
            };
            // SAFETY: a live, listed span of this class; its free objects hold the links.
            unsafe {
                let sp = &mut *s;
                if sp.nfree > 0 && sp.nfree == sp.carved {
                    self.set_empty_kept(c, self.empty_kept - 1);
                }
                while n < out.len() && sp.nfree > 0 {
                    let p = sp.free;
                    sp.free = (p as *const u64).read();
                    sp.nfree -= 1;
                    out[n] = p;
                    n += 1;
                }
                while n < out.len() && sp.carved < sp.cap {
                    out[n] = sp.start as u64 + sp.carved as u64 * size;
                    sp.carved += 1;
                    sp.backed = true;
                    n += 1;
                }
                if sp.nfree == 0 && sp.carved == sp.cap {
                    self.unlist(s);
                }
            }
        }
        n
    }

    /// Returns one object to its span.
    fn return_to_span(&mut self, c: usize, p: u64) {
        let chunk = pagemap::lookup(p as usize);
        debug_assert!(!chunk.is_null());
        // SAFETY: `p` is an object of class `c` (checked when it was freed), so its chunk
        // record is live and of this class.
        unsafe {
            let ch = &mut *chunk;
            let s: *mut Span = &mut ch.spans[(p as usize - ch.base) >> ch.span_shift];
            let sp = &mut *s;
            (p as *mut u64).write(sp.free);
            sp.free = p;
            sp.nfree += 1;
            if !sp.listed {
                self.list(s);
            }
            if sp.nfree == sp.carved {
                let room = self.empty_kept < keep_empty(c)
                    || DECAYING.load(Ordering::Relaxed) + class::span_bytes(c) as u64 <= DECAYING_MAX;
                if room {
                    self.set_empty_kept(c, self.empty_kept + 1);
                    sp.empty_since = sys::coarse_ms();
                } else {
                    release_span(sp, ch.span_shift);
                    self.releases += 1;
                }
            }
        }
    }

    /// Sets the class's count of empty backed spans, keeping `DECAYING` in step.
    fn set_empty_kept(&mut self, c: usize, kept: usize) {
        let (old, new) = (decaying_bytes(c, self.empty_kept), decaying_bytes(c, kept));
        if new > old {
            DECAYING.fetch_add(new - old, Ordering::Relaxed);
        } else if old > new {
            DECAYING.fetch_sub(old - new, Ordering::Relaxed);
        }
        self.empty_kept = kept;
    }

    /// Releases empty spans past the class's reserve that have been empty since before
    /// `cutoff` (a `sys::coarse_ms()` value).
    fn decay(&mut self, c: usize, cutoff: u64) {
        let keep = keep_empty(c);
        let mut ch = self.chunks;
        // SAFETY: chunk records of this class, under its lock.
        unsafe {
            while !ch.is_null() && self.empty_kept > keep {
                let chr = &mut *ch;
                for i in 0..chr.used as usize {
                    let sp = &mut chr.spans[i];
                    if sp.carved > 0 && sp.nfree == sp.carved && sp.empty_since < cutoff {
                        release_span(sp, chr.span_shift);
                        self.releases += 1;
                        self.set_empty_kept(c, self.empty_kept - 1);
                        if self.empty_kept <= keep {
                            break;
                        }
                    }
                }
                ch = chr.next;
            }
        }
    }

    /// Gives the pages of every kept empty span back (trim).
    fn release_kept(&mut self, c: usize) {
        let mut ch = self.chunks;
        // SAFETY: chunk records of this class, under its lock.
        unsafe {
            while !ch.is_null() {
                let chr = &mut *ch;
                for i in 0..chr.used as usize {
                    let sp = &mut chr.spans[i];
                    if sp.carved > 0 && sp.nfree == sp.carved {
                        release_span(sp, chr.span_shift);
                        self.releases += 1;
                    }
                }
                ch = chr.next;
            }
        }
        self.set_empty_kept(c, 0);
    }

    /// Takes `objs` back: onto the transfer stack while it has room, the rest to spans.
    fn give(&mut self, c: usize, objs: &[u64]) {
        let cap = class::transfer_capacity(c);
        let mut i = 0;
        while i < objs.len() && self.ntransfer < cap {
            self.transfer[self.ntransfer] = objs[i];
            self.ntransfer += 1;
            i += 1;
        }
        for &p in &objs[i..] {
            self.return_to_span(c, p);
        }
    }

    /// Empties the transfer stack into the spans (trim).
    fn flush(&mut self, c: usize) {
        while self.ntransfer > 0 {
            self.ntransfer -= 1;
            let p = self.transfer[self.ntransfer];
            self.return_to_span(c, p);
        }
    }
}

/// Every object cut from the span is free again: give its pages back, cut anew later.
fn release_span(sp: &mut Span, span_shift: u32) {
    // SAFETY: the span holds no live object; its pages are ours.
    unsafe { sys::release(sp.start as *mut u8, 1usize << span_shift) };
    sp.free = 0;
    sp.nfree = 0;
    sp.carved = 0;
    sp.backed = false;
}

fn new_chunk(c: usize, prev: *mut Chunk) -> Option<*mut Chunk> {
    let base = sys::map_aligned(CHUNK, CHUNK)? as usize;
    // Chunks are 4 MiB aligned, exactly what transparent huge pages fill: with THP set to
    // "always" (the arm64 guest of the kernel matrix) the first object cut from a class
    // made 2 MiB resident, over 100 MiB for a few MiB live. Objects are cut lazily and spans
    // released page-wise, so chunks use small pages.
    // SAFETY: advice on the mapping just made.
    unsafe { libc::madvise(base as *mut _, CHUNK, libc::MADV_NOHUGEPAGE) };
    let span_bytes = class::span_bytes(c);
    let nspans = CHUNK / span_bytes;
    let Some(rec) = meta::alloc(core::mem::size_of::<Chunk>(), 64) else {
        // SAFETY: the mapping made above, unknown to anyone.
        unsafe { sys::unmap(base as *mut u8, CHUNK) };
        return None;
    };
    let rec = rec.cast::<Chunk>();
    let cap = span_bytes / class::class_size(c);
    let bit_words = cap.div_ceil(64);
    let bits = if CHECK.load(Ordering::Relaxed) {
        meta::alloc(nspans * bit_words * 8, 64).map_or(ptr::null_mut(), |b| b.cast())
    } else {
        ptr::null_mut()
    };
    // SAFETY: zeroed metadata of the right size; all-zero is a valid empty Span array.
    unsafe {
        let ch = &mut *rec;
        ch.base = base;
        ch.class = c as u32;
        ch.span_shift = span_bytes.trailing_zeros();
        ch.nspans = nspans as u32;
        ch.bits = bits;
        ch.bit_words = bit_words as u32;
        ch.next = prev;
    }
    if !pagemap::insert(base, rec) {
        // SAFETY: as above; the record stays in the arena, unused.
        unsafe { sys::unmap(base as *mut u8, CHUNK) };
        return None;
    }
    CHUNK_BYTES.fetch_add(CHUNK as u64, Ordering::Relaxed);
    Some(rec)
}

/// Bytes of address space mapped for chunks.
pub static CHUNK_BYTES: AtomicU64 = AtomicU64::new(0);

/// Takes up to `out.len()` objects of class `c`; returns how many (0: out of memory).
pub fn take(c: usize, out: &mut [u64]) -> usize {
    let n = CENTRAL[c].lock().take(c, out);
    maybe_decay();
    n
}

/// Gives objects of class `c` back.
pub fn give(c: usize, objs: &[u64]) {
    if !objs.is_empty() {
        CENTRAL[c].lock().give(c, objs);
        maybe_decay();
    }
}

/// Runs the decay pass over every class when the last one is `DECAY_MS` old: the thread
/// that claims the pass releases, in each class whose lock it gets without waiting, the
/// empty spans past the reserve that have been empty for `DECAY_MS`. Called with no class
/// lock held; a class that is busy is visited by a later pass.
fn maybe_decay() {
    let now = sys::coarse_ms();
    let last = DECAY_AT.load(Ordering::Relaxed);
    if now < last + DECAY_MS || DECAY_AT.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
        return;
    }
    for (c, central) in CENTRAL.iter().enumerate() {
        if let Some(mut g) = central.try_lock() {
            if g.empty_kept > keep_empty(c) {
                g.decay(c, now.saturating_sub(DECAY_MS));
            }
        }
    }
}

/// Returns every class's transfer stack to its spans (which releases empty spans).
pub fn flush_all() {
    for (c, central) in CENTRAL.iter().enumerate() {
        let mut g = central.lock();
        g.flush(c);
        g.release_kept(c);
    }
}

impl Central {
    /// Unmaps the class's chunks whose spans are all empty (after a flush), so that their
    /// address space can serve any class (under `RLIMIT_AS`, or after a phase that used one
    /// class heavily). Their records stay in the metadata arena, unused.
    fn unmap_empty_chunks(&mut self) -> usize {
        let mut freed = 0;
        let mut link: *mut *mut Chunk = &mut self.chunks;
        // SAFETY: chunk records of this class, under its lock; `link` points at the field
        // that holds the current chunk.
        unsafe {
            while !(*link).is_null() {
                let ch = *link;
                let chr = &mut *ch;
                let empty = chr.spans[..chr.used as usize].iter().all(|s| s.carved == 0);
                if !empty || chr.used == 0 {
                    link = &mut chr.next;
                    continue;
                }
                for i in 0..chr.used as usize {
                    let sp: *mut Span = &mut chr.spans[i];
                    if (*sp).listed {
                        self.unlist(sp);
                    }
                }
                *link = chr.next;
                pagemap::insert(chr.base, ptr::null_mut());
                sys::unmap(chr.base as *mut u8, CHUNK);
                CHUNK_BYTES.fetch_sub(CHUNK as u64, Ordering::Relaxed);
                freed += 1;
            }
        }
        freed
    }
}

/// Unmaps every chunk whose spans are all empty (see `Central::unmap_empty_chunks`);
/// returns how many.
pub fn unmap_empty_chunks() -> usize {
    CENTRAL.iter().map(|c| c.lock().unmap_empty_chunks()).sum()
}

/// Per class: what the central layer holds.
#[derive(Clone, Copy, Default, Debug)]
pub struct ClassCounts {
    /// Objects handed out of spans and not returned to them (live, in CPU caches or in the
    /// transfer stack).
    pub out_of_spans: u64,
    /// Objects on the transfer stack.
    pub transfer: u64,
    /// Spans handed out of chunks.
    pub spans: u64,
    /// Spans whose pages are backed.
    pub backed_spans: u64,
    /// Free objects in spans (cut and returned).
    pub span_free: u64,
    /// Spans given back to the kernel since start.
    pub releases: u64,
}

/// Counts of class `c` (under its lock).
pub fn counts(c: usize) -> ClassCounts {
    let g = CENTRAL[c].lock();
    let mut k = ClassCounts { transfer: g.ntransfer as u64, releases: g.releases, ..Default::default() };
    let mut ch = g.chunks;
    while !ch.is_null() {
        // SAFETY: chunk records of this class, under its lock.
        unsafe {
            let chr = &*ch;
            for s in &chr.spans[..chr.used as usize] {
                k.spans += 1;
                k.backed_spans += s.backed as u64;
                k.span_free += s.nfree as u64;
                k.out_of_spans += (s.carved - s.nfree) as u64;
            }
            ch = (*ch).next;
        }
    }
    k
}

/// Calls `f(base)` for every chunk (under each class lock in turn).
pub fn for_each_chunk(mut f: impl FnMut(usize)) {
    for central in CENTRAL.iter() {
        let g = central.lock();
        let mut ch = g.chunks;
        while !ch.is_null() {
            // SAFETY: chunk records live until unload.
            unsafe {
                f((*ch).base);
                ch = (*ch).next;
            }
        }
    }
}

/// Fork support: takes every class lock, in class order.
pub fn hold_all() {
    for central in CENTRAL.iter() {
        central.hold();
    }
}

/// See [`hold_all`].
///
/// # Safety
/// After [`hold_all`], in the same thread or the child forked from it.
pub unsafe fn release_all_held() {
    for central in CENTRAL.iter() {
        // SAFETY: forwarded contract.
        unsafe { central.release_held() };
    }
}

/// At unload: unmaps every chunk and forgets every class's state.
///
/// # Safety
/// Nothing uses the allocator's memory any more.
pub unsafe fn unmap_all() {
    for (c, central) in CENTRAL.iter().enumerate() {
        let mut g = central.lock();
        let mut ch = g.chunks;
        while !ch.is_null() {
            // SAFETY: chunk records and mappings of this class, no longer used.
            unsafe {
                sys::unmap((*ch).base as *mut u8, CHUNK);
                ch = (*ch).next;
            }
        }
        g.chunks = ptr::null_mut();
        g.partial = ptr::null_mut();
        g.ntransfer = 0;
        g.set_empty_kept(c, 0);
    }
    pagemap::clear();
    CHUNK_BYTES.store(0, Ordering::Relaxed);
}

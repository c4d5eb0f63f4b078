//! A strided per-CPU memory pool.
//!
//! Memory comes in regions: one anonymous `MAP_NORESERVE` mapping of `ncpus * stride`
//! bytes each. A slot at offset `o` of a region has its copy for index `i` at
//! `region + i * stride + o`, so one [`PercpuPtr`] (base + stride) names all copies.
//! Untouched pages cost no memory, so reserving room for every possible CPU is cheap
//! and a CPU that comes online later needs nothing. Regions are unmapped only when the
//! pool is dropped. A forked child inherits the pool as ordinary private memory.
//!
//! Strict overcommit: under `vm.overcommit_memory=2` the kernel ignores `MAP_NORESERVE` and
//! charges the whole region (`ncpus * stride`, e.g. 256 MiB for 4096 possible CPUs and the
//! default stride) against the commit limit when it is mapped. A region that does not fit
//! fails to map: [`PercpuPool::with_cpus`] then returns the `ENOMEM` error and
//! [`PercpuPool::alloc`] returns `None`, with the pool unchanged; nothing aborts. Such
//! systems want a smaller stride, which makes each region smaller.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::ptr::{self, NonNull};
use std::sync::{Mutex, MutexGuard};

use crate::percpu::{PercpuArray, PercpuPtr};
use crate::topology::nr_possible_cpus;
use crate::Index;

/// Default distance between two CPUs' copies: 64 KiB (a multiple of every page size).
pub const DEFAULT_STRIDE: usize = 64 * 1024;

/// Smallest slot size; every request is rounded up to a power of two at least this big.
const MIN_CLASS: usize = 8;

/// Largest alignment [`PercpuPool::alloc`] accepts.
pub const MAX_ALIGN: usize = 4096;

/// Hands out per-CPU slots: each slot has one zero-initialised copy per CPU index
/// (`0..ncpus`), `stride` bytes apart.
pub struct PercpuPool {
    ncpus: usize,
    stride: usize,
    page: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Base address of each region (copy 0 of its first slot), in mapping order.
    regions: Vec<NonNull<u8>>,
    /// Next unused offset inside the last region.
    bump: usize,
    /// Freed (zeroed) slots per size class: index `log2(class) - 3`.
    free: Vec<Vec<NonNull<u8>>>,
    /// Slots handed out and not freed: copy-0 address → size class.
    live: HashMap<usize, usize>,
}

// SAFETY: the raw pointers inside only name memory mappings owned by the pool; every
// access to the bookkeeping goes through the mutex, and the mappings live until Drop.
unsafe impl Send for PercpuPool {}
// SAFETY: as above; shared access only reads `ncpus`, `stride`, `page` or takes the mutex.
unsafe impl Sync for PercpuPool {}

impl fmt::Debug for PercpuPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("PercpuPool")
            .field("ncpus", &self.ncpus)
            .field("stride", &self.stride)
            .field("regions", &inner.regions.len())
            .field("live_slots", &inner.live.len())
            .finish()
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Puts a zeroed slot on a free list. When the list cannot grow (out of memory) the slot is
/// left out: its address space stays reserved and unused, and nothing aborts.
fn push_free(list: &mut Vec<NonNull<u8>>, slot: NonNull<u8>) {
    if list.try_reserve(1).is_ok() {
        list.push(slot);
    }
}

fn class_index(class: usize) -> usize {
    (class.trailing_zeros() - MIN_CLASS.trailing_zeros()) as usize
}

impl PercpuPool {
    /// A pool with one copy per possible CPU ([`nr_possible_cpus`]).
    pub fn new(stride: usize) -> io::Result<PercpuPool> {
        Self::with_cpus(stride, nr_possible_cpus())
    }

    /// A pool with `ncpus` copies per slot. `stride` must be a power of two and a
    /// multiple of the page size; `ncpus` must be at least 1. The first region is
    /// mapped now.
    pub fn with_cpus(stride: usize, ncpus: usize) -> io::Result<PercpuPool> {
        let page = page_size();
        if !stride.is_power_of_two() || !stride.is_multiple_of(page) {
            return Err(invalid(format!(
                "per-CPU pool stride {stride} must be a power of two and a multiple of the page size {page}"
            )));
        }
        if ncpus == 0 {
            return Err(invalid("per-CPU pool needs at least one CPU copy".to_owned()));
        }
        if ncpus.checked_mul(stride).is_none_or(|len| len > isize::MAX as usize) {
            return Err(invalid(format!("per-CPU pool of {ncpus} copies of {stride} bytes is too large")));
        }
        let nclasses = class_index(stride) + 1;
        let pool = PercpuPool {
            ncpus,
            stride,
            page,
            inner: Mutex::new(Inner {
                regions: Vec::new(),
                bump: 0,
                free: vec![Vec::new(); nclasses],
                live: HashMap::new(),
            }),
        };
        let region = pool.map_region()?;
        pool.lock().regions.push(region);
        Ok(pool)
    }

    /// Number of copies of every slot (valid indexes are `0..ncpus`).
    pub fn ncpus(&self) -> usize {
        self.ncpus
    }

    /// Distance in bytes between two neighbouring copies of a slot.
    pub fn stride(&self) -> usize {
        self.stride
    }

    fn region_len(&self) -> usize {
        self.ncpus * self.stride
    }

    /// Virtual memory reserved by the pool (all regions, all copies).
    pub fn reserved_bytes(&self) -> usize {
        self.lock().regions.len() * self.region_len()
    }

    /// Memory of the pool's regions that is resident now (by `mincore`): only pages
    /// that were touched count. A page that was only read maps the kernel's shared zero
    /// page and counts too, although it costs no memory ([`free`](Self::free) reads
    /// every copy of the slot, and writes only copies that hold data).
    pub fn resident_bytes(&self) -> usize {
        let inner = self.lock();
        let len = self.region_len();
        let mut vec = vec![0u8; len / self.page];
        let mut resident = 0;
        for region in &inner.regions {
            // SAFETY: `region` starts a live page-aligned mapping of `len` bytes, and `vec`
            // has one byte per page of it.
            let r = unsafe { libc::mincore(region.as_ptr().cast(), len, vec.as_mut_ptr()) };
            if r == 0 {
                resident += vec.iter().filter(|&&v| v & 1 != 0).count() * self.page;
            }
        }
        resident
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The bookkeeping is updated only after all checks pass, so it stays consistent
        // even if a panic (e.g. a bad free) poisoned the mutex.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn map_region(&self) -> io::Result<NonNull<u8>> {
        // SAFETY: a fresh anonymous private mapping at an address the kernel picks;
        // it overlaps nothing we own.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                self.region_len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // A huge page would span many CPUs' copies and populate them all at the first
        // touch. Failure (a kernel without THP) changes nothing, so it is ignored.
        // SAFETY: advice on the mapping just made; it does not change its contents.
        unsafe { libc::madvise(p, self.region_len(), libc::MADV_NOHUGEPAGE) };
        NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned a null address"))
    }

    /// Allocates a slot of at least `size` bytes aligned to `align` in every copy; every
    /// copy reads as zero. `size` is rounded up to a power of two of at least 8 (and at
    /// least `align`). `None` when `align` is not a power of two or exceeds 4096, when the
    /// slot would exceed the stride, or when memory runs out (a new region cannot be mapped,
    /// or the pool's tables cannot grow); the pool is unchanged then.
    pub fn alloc(&self, size: usize, align: usize) -> Option<PercpuPtr<u8>> {
        if !align.is_power_of_two() || align > MAX_ALIGN {
            return None;
        }
        let class = size.max(MIN_CLASS).checked_next_power_of_two()?.max(align);
        if class > self.stride {
            return None;
        }
        let mut inner = self.lock();
        // The bookkeeping never aborts the process on OOM: room for the new entry first,
        // so that a failure leaves everything as it was.
        inner.live.try_reserve(1).ok()?;
        let slot = match inner.free[class_index(class)].pop() {
            Some(slot) => slot,
            None => self.bump_alloc(&mut inner, class)?,
        };
        inner.live.insert(slot.as_ptr() as usize, class);
        Some(PercpuPtr::new(slot.as_ptr(), self.stride))
    }

    /// [`alloc`](Self::alloc) as a [`PercpuArray`] of this pool's [`ncpus`](Self::ncpus)
    /// copies, indexed by `index` (resolved). The array stays valid until the slot is freed
    /// or the pool dropped.
    pub fn alloc_array(&self, size: usize, align: usize, index: Index) -> Option<PercpuArray<u8>> {
        let p = self.alloc(size, align)?;
        // SAFETY: the slot has a copy of at least `size` bytes for each of the `ncpus` indexes.
        Some(unsafe { PercpuArray::from_raw(p, self.ncpus, index) })
    }

    /// Takes `class` bytes from the current region, mapping a new one when it is full.
    fn bump_alloc(&self, inner: &mut Inner, class: usize) -> Option<NonNull<u8>> {
        let mut off = inner.bump.next_multiple_of(class);
        if off + class > self.stride {
            // Recycle the rest of the full region as free slots, then start a new one.
            inner.regions.try_reserve(1).ok()?;
            let from = inner.bump;
            self.carve(inner, from, self.stride);
            inner.bump = self.stride;
            let region = self.map_region().ok()?;
            inner.regions.push(region);
            inner.bump = 0;
            off = 0;
        } else {
            let from = inner.bump;
            self.carve(inner, from, off);
        }
        inner.bump = off + class;
        let base = *inner.regions.last()?;
        // SAFETY: off + class <= stride, so the address is inside copy 0 of the region.
        Some(unsafe { base.add(off) })
    }

    /// Puts the unused, still-zero bytes `[from, to)` of the last region on the free
    /// lists as naturally aligned power-of-two slots.
    fn carve(&self, inner: &mut Inner, mut from: usize, to: usize) {
        let Some(&base) = inner.regions.last() else {
            return;
        };
        while from + MIN_CLASS <= to {
            let align = if from == 0 { self.stride } else { 1 << from.trailing_zeros() };
            let fit = 1 << (usize::BITS - 1 - (to - from).leading_zeros());
            let class = align.min(fit);
            // SAFETY: from < to <= stride: inside copy 0 of the region.
            let slot = unsafe { base.add(from) };
            push_free(&mut inner.free[class_index(class)], slot);
            from += class;
        }
    }

    /// Returns a slot to the pool after zeroing all its copies (index `0..ncpus`).
    ///
    /// # Safety
    /// `p` came from [`alloc`](Self::alloc) of this pool with the same `size` (or one of
    /// the same size class), and no thread accesses any of its copies during or after
    /// the call.
    ///
    /// # Panics
    /// When `p` is not from this pool, is not the start of a live slot (double free), or
    /// `size` is larger than the slot. Nothing is changed then.
    pub unsafe fn free(&self, p: PercpuPtr<u8>, size: usize) {
        let addr = p.base() as usize;
        assert!(
            p.stride() == self.stride,
            "PercpuPool::free: pointer {:p} has stride {}, this pool's stride is {}: not from this pool",
            p.base(),
            p.stride(),
            self.stride
        );
        let mut inner = self.lock();
        let in_region = inner.regions.iter().any(|r| {
            let base = r.as_ptr() as usize;
            addr >= base && addr < base + self.stride
        });
        assert!(in_region, "PercpuPool::free: pointer {:p} is not from this pool", p.base());
        let Some(&class) = inner.live.get(&addr) else {
            panic!(
                "PercpuPool::free: pointer {:p} is not a live slot of this pool (double free, or not the start of a slot)",
                p.base()
            );
        };
        let requested = size.max(MIN_CLASS).checked_next_power_of_two().unwrap_or(usize::MAX);
        assert!(
            requested <= class,
            "PercpuPool::free: pointer {:p} freed with size {size}, but its slot holds only {class} bytes",
            p.base()
        );
        for i in 0..self.ncpus {
            let copy = p.at(i);
            // SAFETY: the slot is live and owned by the caller (no concurrent access); copy
            // `i < ncpus` lies inside the region at offset < stride with `class` bytes room.
            let bytes = unsafe { std::slice::from_raw_parts(copy, class) };
            // Only write copies that hold data: an untouched copy stays unpopulated.
            if bytes.iter().any(|&b| b != 0) {
                // SAFETY: as above, the `class` bytes are valid for writes.
                unsafe { ptr::write_bytes(copy, 0, class) };
            }
        }
        inner.live.remove(&addr);
        // Always Some: the address lies inside a mapping.
        if let Some(slot) = NonNull::new(p.base()) {
            push_free(&mut inner.free[class_index(class)], slot);
        }
    }
}

impl Drop for PercpuPool {
    fn drop(&mut self) {
        let len = self.region_len();
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        for region in inner.regions.drain(..) {
            // SAFETY: each region is a mapping of `len` bytes made by `map_region`, unmapped
            // only here; `&mut self` means no slot is in use through the pool any more.
            unsafe { libc::munmap(region.as_ptr().cast(), len) };
        }
    }
}

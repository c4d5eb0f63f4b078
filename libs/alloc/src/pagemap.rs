//! From an address to the chunk that holds it: a two-level radix map over a 48-bit user
//! address space (x86_64 uses 47 bits, aarch64 48) at chunk granularity (4 MiB). The root
//! (16384 entries, 128 KiB of `.bss`)
//! points to leaves of 4096 entries allocated from the metadata arena on demand. A lookup
//! is two dependent loads; an address no chunk covers maps to null, which is how frees of
//! pointers that are not ours are recognised.

use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::central::Chunk;
use crate::class::CHUNK;
use crate::meta;

const CHUNK_SHIFT: u32 = CHUNK.trailing_zeros();
const LEAF_BITS: u32 = 12;
/// aarch64's user address space is 48 bits (mappings come from near its top): with 47 here
/// every chunk there was refused and every allocation failed.
const ADDR_BITS: u32 = 48;
const ROOT_BITS: u32 = ADDR_BITS - CHUNK_SHIFT - LEAF_BITS;

struct Leaf([AtomicPtr<Chunk>; 1 << LEAF_BITS]);

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: AtomicPtr<Leaf> = AtomicPtr::new(ptr::null_mut());
static ROOT: [AtomicPtr<Leaf>; 1 << ROOT_BITS] = [EMPTY; 1 << ROOT_BITS];

/// The chunk that holds `addr`, or null.
#[inline]
pub fn lookup(addr: usize) -> *mut Chunk {
    if addr >> ADDR_BITS != 0 {
        return ptr::null_mut();
    }
    let leaf = ROOT[addr >> (CHUNK_SHIFT + LEAF_BITS)].load(Ordering::Acquire);
    if leaf.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: leaves are never freed while the library is loaded.
    unsafe { (*leaf).0[(addr >> CHUNK_SHIFT) & ((1 << LEAF_BITS) - 1)].load(Ordering::Acquire) }
}

/// Records that the chunk at `base` (CHUNK-aligned) is `chunk`; false when the metadata
/// arena is out of memory. Called under the owning class's lock; leaves are created under
/// the arena's lock inside `meta::alloc`, and a racing creator's leaf is discarded.
pub fn insert(base: usize, chunk: *mut Chunk) -> bool {
    if base >> ADDR_BITS != 0 {
        return false;
    }
    let slot = &ROOT[base >> (CHUNK_SHIFT + LEAF_BITS)];
    let mut leaf = slot.load(Ordering::Acquire);
    if leaf.is_null() {
        let Some(fresh) = meta::alloc(core::mem::size_of::<Leaf>(), 64) else { return false };
        let fresh = fresh.cast::<Leaf>();
        leaf = match slot.compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => fresh,
            Err(existing) => existing,
        };
    }
    // SAFETY: a live leaf.
    unsafe { (*leaf).0[(base >> CHUNK_SHIFT) & ((1 << LEAF_BITS) - 1)].store(chunk, Ordering::Release) };
    true
}

/// Forgets every chunk (at unload, after the chunks were unmapped; the leaves go with the
/// metadata arena).
pub fn clear() {
    for slot in ROOT.iter() {
        slot.store(ptr::null_mut(), Ordering::Release);
    }
}

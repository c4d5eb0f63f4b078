//! Memory for the allocator's own bookkeeping (chunk and span records, the page map's
//! leaves, the per-CPU layer's records): a bump allocator over 1 MiB mappings of its own,
//! so that no metadata ever comes from the allocator it describes. Records are never freed
//! one by one; at `dlclose` every mapping is unmapped ([`release_all`]).

use core::ptr;

use crate::lock::SpinLock;
use crate::sys;

const BLOCK: usize = 1 << 20;
/// Each mapping starts with a header: link to the previous mapping, its length.
const HEADER: usize = 64;

struct Arena {
    /// The mapping bumped from.
    block: *mut u8,
    /// Next free byte in `block`.
    bump: usize,
    /// Newest mapping of the chain (each header links to the previous one).
    chain: *mut u8,
    /// Bytes mapped for metadata.
    mapped: usize,
}

// SAFETY: the pointers name mappings owned by the arena, used under its lock.
unsafe impl Send for Arena {}

static ARENA: SpinLock<Arena> =
    SpinLock::new(Arena { block: ptr::null_mut(), bump: BLOCK, chain: ptr::null_mut(), mapped: 0 });

fn new_mapping(a: &mut Arena, len: usize) -> Option<*mut u8> {
    let m = sys::map(len)?;
    // SAFETY: the header lies at the start of the fresh mapping.
    unsafe {
        m.cast::<*mut u8>().write(a.chain);
        m.add(8).cast::<usize>().write(len);
    }
    a.chain = m;
    a.mapped += len;
    Some(m)
}

/// `size` zeroed bytes aligned to `align` (a power of two up to 4096) that live until the
/// library is unloaded; `None` when the kernel has no memory.
pub fn alloc(size: usize, align: usize) -> Option<*mut u8> {
    debug_assert!(align.is_power_of_two() && align <= sys::PAGE);
    let mut a = ARENA.lock();
    if size > BLOCK / 4 {
        let len = (size + sys::PAGE + sys::PAGE - 1) & !(sys::PAGE - 1);
        let m = new_mapping(&mut a, len)?;
        // SAFETY: one page in, inside the mapping.
        return Some(unsafe { m.add(sys::PAGE) });
    }
    let mut start = (a.bump + align - 1) & !(align - 1);
    if a.block.is_null() || start + size > BLOCK {
        a.block = new_mapping(&mut a, BLOCK)?;
        a.bump = HEADER;
        start = (a.bump + align - 1) & !(align - 1);
    }
    a.bump = start + size;
    // SAFETY: `start + size <= BLOCK`: inside the block.
    Some(unsafe { a.block.add(start) })
}

/// Bytes mapped for metadata.
pub fn mapped_bytes() -> usize {
    // SAFETY: a plain word read for a report.
    unsafe { (*ARENA.get_unlocked()).mapped }
}

/// Fork support: holds the arena lock.
pub fn hold() {
    ARENA.hold();
}

/// See [`hold`].
///
/// # Safety
/// After [`hold`], in the same thread or the child forked from it.
pub unsafe fn release_held() {
    // SAFETY: forwarded contract.
    unsafe { ARENA.release_held() }
}

/// Unmaps every metadata mapping (at `dlclose`, when nothing uses the allocator any more).
///
/// # Safety
/// No record of the arena is used afterwards.
pub unsafe fn release_all() {
    let mut a = ARENA.lock();
    let mut m = a.chain;
    while !m.is_null() {
        // SAFETY: every mapping of the chain starts with (link, length).
        unsafe {
            let next = m.cast::<*mut u8>().read();
            let len = m.add(8).cast::<usize>().read();
            sys::unmap(m, len);
            m = next;
        }
    }
    a.block = ptr::null_mut();
    a.chain = ptr::null_mut();
    a.bump = BLOCK;
    a.mapped = 0;
}

//! One out-of-line instance of every critical section (feature `asm-check`): building the
//! rlib for another architecture then assembles all of the inline asm.

use core::sync::atomic::AtomicU64;

use crate::ops::{percpu_add, percpu_load_compare_store, Index, PercpuStack};
use crate::percpu::PercpuPtr;

/// Runs every operation with both indexes.
///
/// # Safety
/// Never meant to be called: it exists to be compiled.
#[inline(never)]
pub unsafe fn instantiate_all(w: PercpuPtr<u64>, f: PercpuPtr<AtomicU64>, s: PercpuStack, buf: &mut [u64]) {
    for index in [Index::CpuId, Index::MmCid] {
        // SAFETY: forwarded (never called).
        unsafe {
            percpu_add(index, w, f, 1);
            if let Some(area) = crate::ThreadArea::current() {
                let _ = area.try_add_if_equal(index, w.base(), 0, w, 1);
                let _ = area.try_add_if_equal_delayed(index, w.base(), 0, w, 1, 100);
            }
            let _ = percpu_load_compare_store(index, w, f, 0, 1);
            let _ = s.push(index, 1);
            let _ = s.pop(index);
            let _ = s.push_batch(index, buf);
            let _ = s.pop_batch(index, buf);
        }
    }
}

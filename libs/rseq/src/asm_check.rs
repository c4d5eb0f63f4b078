//! One out-of-line instance of every critical section (feature `asm-check`): building the
//! rlib for another architecture then assembles all of the inline asm.

use core::sync::atomic::AtomicU64;

use crate::ops::{percpu_add, percpu_load_compare_store, Index, PercpuStack};
use crate::percpu::PercpuArray;

/// Runs every operation with both indexes.
///
/// # Safety
/// Never meant to be called: it exists to be compiled.
#[inline(never)]
pub unsafe fn instantiate_all(w: PercpuArray<u64>, f: PercpuArray<AtomicU64>, s: PercpuStack, buf: &mut [u64]) {
    for index in [Index::CpuId, Index::MmCid] {
        let w = w.with_index(index);
        // SAFETY: forwarded (never called).
        unsafe {
            percpu_add(&w, &f, 1);
            if let Some(area) = crate::ThreadArea::current() {
                let _ = area.try_add_if_equal(w.base(), 0, &w, 1);
                let _ = area.try_add_if_equal_delayed(w.base(), 0, &w, 1, 100);
                let _ = area.try_add_unchecked(&w, 1);
                let _ = area.try_load_compare_store_release(&w, 0, 1);
            }
            let _ = percpu_load_compare_store(&w, &f, 0, 1);
        }
    }
    // SAFETY: forwarded (never called).
    unsafe {
        let _ = s.push(1);
        let _ = s.pop();
        let _ = s.push_batch(buf);
        let _ = s.pop_batch(buf);
        let _ = s.drain(0, |_| ());
    }
}

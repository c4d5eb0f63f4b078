//! palloc as a Rust global allocator.

use core::alloc::{GlobalAlloc, Layout};

use crate::api::{self, Foreign};

/// palloc for `#[global_allocator]`:
///
/// ```
/// #[global_allocator]
/// static ALLOC: palloc::Palloc = palloc::Palloc;
///
/// let v: Vec<u64> = (0..1000).collect();
/// assert_eq!(v.iter().sum::<u64>(), 499_500);
/// ```
pub struct Palloc;

// SAFETY: the functions return blocks of at least the layout's size and alignment (or null),
// which stay valid until passed back; `dealloc` and `realloc` get only such blocks.
unsafe impl GlobalAlloc for Palloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= 16 {
            api::malloc(layout.size())
        } else {
            api::aligned(layout.align(), layout.size())
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _layout: Layout) {
        api::free(p, Foreign::Abort("dealloc"))
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= 16 {
            api::calloc(1, layout.size())
        } else {
            let p = api::aligned(layout.align(), layout.size());
            if !p.is_null() {
                // SAFETY: a fresh block of `layout.size()` bytes.
                unsafe { core::ptr::write_bytes(p, 0, layout.size()) };
            }
            p
        }
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= 16 && new_size > 0 {
            return api::realloc(p, new_size, Foreign::Abort("realloc"));
        }
        // SAFETY: the caller's layout, with the new size (valid per GlobalAlloc's contract).
        let q = unsafe { self.alloc(Layout::from_size_align_unchecked(new_size, layout.align())) };
        if !q.is_null() {
            // SAFETY: both blocks hold `min(old, new)` bytes and are distinct.
            unsafe {
                core::ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                self.dealloc(p, layout);
            }
        }
        q
    }
}

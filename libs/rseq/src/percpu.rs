//! Addresses of per-CPU copies: one base address plus a stride per CPU index.

use core::marker::PhantomData;

/// A per-CPU object: the copy for index `i` (a `cpu_id` or an `mm_cid`) lives at
/// `base + i * stride`. Handed out by [`crate::pool::PercpuPool`]; plain data, `Copy`.
#[derive(Debug)]
pub struct PercpuPtr<T> {
    base: *mut T,
    stride: usize,
    _t: PhantomData<*mut T>,
}

impl<T> Clone for PercpuPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for PercpuPtr<T> {}

// SAFETY: a PercpuPtr is an address and a stride; what may be done through it is
// decided by the unsafe operations that dereference it.
unsafe impl<T> Send for PercpuPtr<T> {}
// SAFETY: as for Send: sharing the address itself is harmless.
unsafe impl<T> Sync for PercpuPtr<T> {}

impl<T> PercpuPtr<T> {
    /// Wraps an address and a stride. The caller guarantees that `base + i * stride`
    /// is valid for a `T` for every index the operations will use.
    pub const fn new(base: *mut T, stride: usize) -> Self {
        PercpuPtr { base, stride, _t: PhantomData }
    }

    /// The copy of index 0.
    pub fn base(self) -> *mut T {
        self.base
    }

    /// Distance in bytes between the copies of two neighbouring indexes.
    pub fn stride(self) -> usize {
        self.stride
    }

    /// The copy of index `i` (no bounds check: the pool sized the area).
    pub fn at(self, i: usize) -> *mut T {
        self.base.cast::<u8>().wrapping_add(i * self.stride).cast()
    }

    /// The same per-CPU object seen at a byte offset inside each copy.
    pub fn byte_add<U>(self, offset: usize) -> PercpuPtr<U> {
        PercpuPtr::new(self.base.cast::<u8>().wrapping_add(offset).cast(), self.stride)
    }

    /// Reinterprets the copies as another type.
    pub fn cast<U>(self) -> PercpuPtr<U> {
        PercpuPtr::new(self.base.cast(), self.stride)
    }
}

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

/// A per-CPU array as every operation takes it: the copies (base and stride), how many
/// there are, and which field of the rseq area indexes them, resolved for this kernel.
/// Built once per structure ([`crate::pool::PercpuPool::alloc_array`], or
/// [`PercpuArray::from_raw`]); the critical sections compare the index they load with
/// [`PercpuArray::ncpus`] *inside* the section, so no index the kernel (or an unregistered
/// area) reports can reach past the last copy.
#[derive(Debug)]
pub struct PercpuArray<T> {
    ptr: PercpuPtr<T>,
    ncpus: u32,
    index: crate::Index,
}

impl<T> Clone for PercpuArray<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for PercpuArray<T> {}

impl<T> PercpuArray<T> {
    /// The array of `ncpus` copies at `ptr`, indexed by `index` (resolved here: `MmCid`
    /// becomes `CpuId` on kernels without `mm_cid`). `ncpus` is clamped to `1..=u32::MAX`.
    ///
    /// # Safety
    /// `ptr.at(i)` is a valid, aligned `T` for every `i < ncpus`, for as long as any
    /// operation uses the array (or a copy of it).
    pub unsafe fn from_raw(ptr: PercpuPtr<T>, ncpus: usize, index: crate::Index) -> Self {
        let ncpus = u32::try_from(ncpus.max(1)).unwrap_or(u32::MAX);
        PercpuArray { ptr, ncpus, index: index.resolve() }
    }

    /// [`PercpuArray::from_raw`] for an index resolved earlier (kept, e.g., in a handle):
    /// no lookup on a hot path.
    ///
    /// # Safety
    /// As for [`PercpuArray::from_raw`], `1 <= ncpus`, and `index == index.resolve()`.
    #[inline(always)]
    pub const unsafe fn from_raw_resolved(ptr: PercpuPtr<T>, ncpus: u32, index: crate::Index) -> Self {
        PercpuArray { ptr, ncpus, index }
    }

    /// Base and stride.
    #[inline(always)]
    pub fn ptr(self) -> PercpuPtr<T> {
        self.ptr
    }

    /// Number of copies: valid indexes are `0..ncpus`.
    #[inline(always)]
    pub fn ncpus(self) -> u32 {
        self.ncpus
    }

    /// The (resolved) field of the rseq area that indexes the array.
    #[inline(always)]
    pub fn index(self) -> crate::Index {
        self.index
    }

    /// The copy of index 0.
    #[inline(always)]
    pub fn base(self) -> *mut T {
        self.ptr.base()
    }

    /// Distance in bytes between neighbouring copies.
    #[inline(always)]
    pub fn stride(self) -> usize {
        self.ptr.stride()
    }

    /// The copy of index `i`, `None` when `i >= ncpus`.
    #[inline(always)]
    pub fn get(self, i: usize) -> Option<*mut T> {
        (i < self.ncpus as usize).then(|| self.ptr.at(i))
    }

    /// The copy for `i` reduced into range (`i % ncpus`): for the fallback path, whose
    /// atomics are correct on any copy and only spread contention by CPU.
    #[inline(always)]
    pub fn wrapped(self, i: usize) -> *mut T {
        let n = self.ncpus as usize;
        self.ptr.at(if i < n { i } else { i % n })
    }

    /// The same array seen at a byte offset inside each copy, as another type.
    ///
    /// # Safety
    /// A `U` at `offset` lies inside every copy.
    pub unsafe fn field<U>(self, offset: usize) -> PercpuArray<U> {
        PercpuArray { ptr: self.ptr.byte_add(offset), ncpus: self.ncpus, index: self.index }
    }

    /// The copies reinterpreted as another type.
    ///
    /// # Safety
    /// Every copy is a valid, aligned `U`.
    pub unsafe fn cast<U>(self) -> PercpuArray<U> {
        // SAFETY: forwarded contract.
        unsafe { self.field(0) }
    }

    /// The same copies indexed by `index` instead (resolved).
    pub fn with_index(self, index: crate::Index) -> Self {
        PercpuArray { index: index.resolve(), ..self }
    }
}

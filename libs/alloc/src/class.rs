//! Size classes and the fixed policy attached to each: how many objects a CPU may cache,
//! how many move between a CPU cache and the central layer at once, how big a span is.
//!
//! Classes: 16 to 128 bytes in steps of 16 (8 classes), then four per power of two up to
//! 256 KiB (`5/4`, `6/4`, `7/4`, `8/4` of each power: 160, 192, 224, 256, 320, ...), 52 in
//! all. Every class size is a multiple of 16; a power of two is always a class, which is
//! what aligned allocations use. Larger requests are mapped directly (`large.rs`).

/// Number of size classes.
pub const NCLASSES: usize = 52;

/// Largest size served from a class.
pub const MAX_SMALL: usize = 256 * 1024;

/// Classes below this number are cached per CPU (up to 32 KiB); bigger ones go straight to
/// the central layer, where a refill costs little next to touching the memory.
pub const NCACHED: usize = 40;

/// A chunk: the unit of address space taken from the kernel for spans, aligned to its size.
pub const CHUNK: usize = 4 << 20;

/// Size in bytes of class `c`.
#[inline]
pub const fn class_size(c: usize) -> usize {
    if c < 8 {
        (c + 1) * 16
    } else {
        let j = c - 8;
        (5 + j % 4) << (5 + j / 4)
    }
}

/// The smallest class that holds `size` bytes (`size <= MAX_SMALL`).
#[inline]
pub fn class_of(size: usize) -> usize {
    debug_assert!(size <= MAX_SMALL);
    if size <= 128 {
        size.max(1).div_ceil(16) - 1
    } else {
        let s = size - 1;
        let lg = (usize::BITS - 1 - s.leading_zeros()) as usize;
        8 + (lg - 7) * 4 + ((s >> (lg - 2)) & 3)
    }
}

/// Objects one CPU may cache of class `c` (0: not cached per CPU). Each value is
/// `2^k / 8 - 2`, so that both halves of a per-CPU stack fill a power-of-two slot of the
/// per-CPU pool exactly. The sum over classes of `capacity * size` is [`PERCPU_BYTES_MAX`].
#[inline]
pub const fn cache_capacity(c: usize) -> usize {
    let size = class_size(c);
    if c >= NCACHED {
        0
    } else if size <= 64 {
        254
    } else if size <= 256 {
        126
    } else if size <= 1024 {
        62
    } else if size <= 4096 {
        14
    } else if size <= 16384 {
        6
    } else {
        2
    }
}

/// Objects moved between a CPU cache and the central layer in one refill or overflow.
#[inline]
pub const fn batch(c: usize) -> usize {
    let cap = cache_capacity(c);
    if cap == 0 {
        1
    } else if cap / 2 > MAX_BATCH {
        MAX_BATCH
    } else {
        cap / 2
    }
}

/// The largest [`batch`].
pub const MAX_BATCH: usize = 32;

/// Bytes of a span of class `c`: 64 KiB up to 8 KiB objects, else the power of two that
/// holds at least 8 objects (up to 2 MiB for 256 KiB objects).
#[inline]
pub const fn span_bytes(c: usize) -> usize {
    let size = class_size(c);
    if size <= 8192 {
        64 * 1024
    } else {
        let b = (size * 8).next_power_of_two();
        if b > CHUNK {
            CHUNK
        } else {
            b
        }
    }
}

/// Objects the central layer keeps in its transfer stack of class `c` before it returns
/// them to their spans (about 256 KiB worth, at least 2, at most 256).
#[inline]
pub const fn transfer_capacity(c: usize) -> usize {
    let n = 256 * 1024 / class_size(c);
    if n < 2 {
        2
    } else if n > TRANSFER_MAX {
        TRANSFER_MAX
    } else {
        n
    }
}

/// The largest [`transfer_capacity`].
pub const TRANSFER_MAX: usize = 256;

/// Upper bound of the bytes one CPU caches, over every class.
pub const PERCPU_BYTES_MAX: usize = {
    let mut c = 0;
    let mut sum = 0;
    while c < NCLASSES {
        sum += cache_capacity(c) * class_size(c);
        c += 1;
    }
    sum
};

/// Alignment every object of class `c` has (objects sit at multiples of the class size from
/// a span start, which is aligned to the span size).
#[inline]
pub const fn class_alignment(c: usize) -> usize {
    let size = class_size(c);
    let a = 1usize << size.trailing_zeros();
    let s = span_bytes(c);
    if a < s {
        a
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_size_tightly() {
        assert_eq!(class_size(NCLASSES - 1), MAX_SMALL);
        for c in 1..NCLASSES {
            assert!(class_size(c) > class_size(c - 1));
        }
        for size in 0..=MAX_SMALL {
            let c = class_of(size);
            assert!(class_size(c) >= size, "size {size} class {c}");
            if c > 0 {
                assert!(class_size(c - 1) < size.max(1), "size {size} not in the smallest class");
            }
        }
        // Internal fragmentation at most 25% above 128 bytes.
        for c in 9..NCLASSES {
            assert!(class_size(c) * 4 <= class_size(c - 1) * 5 + 16 * 4, "class {c}");
        }
    }

    #[test]
    fn powers_of_two_are_classes() {
        let mut p = 16;
        while p <= MAX_SMALL {
            assert_eq!(class_size(class_of(p)), p);
            assert_eq!(class_alignment(class_of(p)), p.min(span_bytes(class_of(p))));
            p *= 2;
        }
    }

    #[test]
    fn per_cpu_bound_and_stack_shapes() {
        const { assert!(PERCPU_BYTES_MAX <= 1536 * 1024) };
        for c in 0..NCLASSES {
            let cap = cache_capacity(c);
            assert_eq!(cap == 0, c >= NCACHED);
            if cap > 0 {
                assert!((cap + 2).is_power_of_two() || cap == 2, "cap {cap}");
                assert!(batch(c) >= 1 && batch(c) <= cap && batch(c) <= MAX_BATCH);
            }
            assert!(span_bytes(c) / class_size(c) >= 8 || span_bytes(c) == CHUNK);
            assert!(CHUNK.is_multiple_of(span_bytes(c)) && span_bytes(c).is_multiple_of(64 * 1024));
            assert!(transfer_capacity(c) <= TRANSFER_MAX);
        }
    }
}

//! aarch64 critical sections. Same template, shape and stack layout as the x86_64 module.
//!
//! Memory ordering. Every commit is a plain `str`: the words a section writes are read by
//! later sections on the *same CPU* (a context switch orders everything the previous thread
//! did on that CPU), by sums that read each word on its own (`percpu_sum`: no other data
//! depends on it), and by a thread that owns another CPU's copy only after stopping it with
//! `membarrier`, which is a full barrier on that CPU. None of them needs the commit to be a
//! release. A remote reader that dereferences what a commit published (a pointer, or slots
//! under a count) does: the `RELEASE` variant of `load_compare_store` commits with `stlr`.
//! The "stopped" word of a stack is read with `ldar`, so a section that sees it clear also
//! sees what the thread that cleared it wrote into the copy.

use core::arch::asm;

use crate::area::RseqArea;

#[cfg(target_endian = "big")]
compile_error!("libs/rseq: big-endian aarch64 needs the byte-swapped data signature; only little-endian is supported");

/// aarch64 signature: the encoding of `brk #0x45e0`, placed before each abort handler.
pub const RSEQ_SIG: u32 = 0xd428_bc00;

/// The thread pointer (`tpidr_el0`), which libc's `__rseq_offset` is relative to.
#[inline(always)]
pub fn thread_pointer() -> *mut u8 {
    let tp: *mut u8;
    // SAFETY: reading tpidr_el0 has no side effects.
    unsafe {
        asm!("mrs {}, tpidr_el0", out(reg) tp, options(nostack, nomem, preserves_flags, pure));
    }
    tp
}

// Labels: 2 descriptor, 3 start, 4 post-commit, 5 comparison failed, 6 abort, 7 exit,
// 8 loops, 9 index unusable. The index is loaded unsigned: -1, -2 and our own marks are out
// of range.
macro_rules! begin {
    () => {
        concat!(
            ".pushsection __rseq_cs, \"aw\"\n",
            ".balign 32\n",
            "2:\n",
            ".long 0, 0\n",
            ".quad 3f, (4f - 3f), 6f\n",
            ".popsection\n",
            "adrp {tmp}, 2b\n",
            "add {tmp}, {tmp}, :lo12:2b\n",
            "str {tmp}, [{area}, #8]\n",
            "3:\n",
            "ldr {cpu:w}, [{area}, #4]\n",
        )
    };
}

// mm_cid sections: registered (cpu_id >= 0) first, then the index is mm_cid.
macro_rules! load_mm_cid {
    () => {
        concat!("tbnz {cpu:w}, #31, 9f\n", "ldr {cpu:w}, [{area}, #24]\n")
    };
}

macro_rules! check_bound {
    () => {
        concat!("cmp {cpu:w}, {ncpus:w}\n", "b.hs 9f\n")
    };
}

macro_rules! end {
    () => {
        concat!(
            "4:\n",
            "mov {status:w}, #0\n",
            "b 7f\n",
            "5:\n",
            "mov {status:w}, #1\n",
            "b 7f\n",
            "9:\n",
            "mov {status:w}, #3\n",
            "b 7f\n",
            ".inst 0xd428bc00\n",
            "6:\n",
            "mov {status:w}, #2\n",
            "7:\n",
            "str xzr, [{area}, #8]\n",
        )
    };
}

/// One critical section: the template around an operation's instructions (see the x86_64
/// module's `section!`).
macro_rules! section {
    ($mm:expr, $area:expr, $ncpus:expr, $status:ident, $cpu:tt, [$($body:expr),* $(,)?], $($op:tt)*) => {
        if $mm {
            asm!(
                begin!(), load_mm_cid!(), check_bound!(), $($body,)* end!(),
                area = in(reg) $area, ncpus = inout(reg) u64::from($ncpus) => _, tmp = out(reg) _,
                cpu = out(reg) $cpu, status = out(reg) $status,
                options(nostack), $($op)*
            )
        } else {
            asm!(
                begin!(), check_bound!(), $($body,)* end!(),
                area = in(reg) $area, ncpus = inout(reg) u64::from($ncpus) => _, tmp = out(reg) _,
                cpu = out(reg) $cpu, status = out(reg) $status,
                options(nostack), $($op)*
            )
        }
    };
}

// The contracts are those of the x86_64 module's functions of the same names.

/// `base[idx] += amount`.
///
/// # Safety
/// See the x86_64 module.
#[inline(always)]
pub unsafe fn add<const MM: bool>(
    area: *mut RseqArea,
    ncpus: u32,
    base: *mut u8,
    stride: usize,
    amount: u64,
) -> (u32, u32) {
    let (status, cpu): (u64, u64);
    // SAFETY: the function's contract; the template keeps to the module's shape.
    unsafe {
        section!(MM, area, ncpus, status, cpu,
            ["madd {p}, {cpu}, {stride}, {base}", "ldr {v}, [{p}]", "add {v}, {v}, {amount}", "str {v}, [{p}]"],
            base = in(reg) base, stride = in(reg) stride, amount = in(reg) amount, p = out(reg) _, v = out(reg) _,
        );
    }
    (status as u32, cpu as u32)
}

/// `base[idx] += amount` without the bound check (benchmark comparison only).
///
/// # Safety
/// See the x86_64 module.
#[doc(hidden)]
#[inline(always)]
pub unsafe fn add_unchecked<const IDX: usize>(
    area: *mut RseqArea,
    base: *mut u8,
    stride: usize,
    amount: u64,
) -> (u32, u32) {
    let (status, cpu): (u64, u64);
    // SAFETY: the function's contract.
    unsafe {
        asm!(
            ".pushsection __rseq_cs, \"aw\"\n.balign 32\n2:\n.long 0, 0\n.quad 3f, (4f - 3f), 6f\n.popsection",
            "adrp {tmp}, 2b", "add {tmp}, {tmp}, :lo12:2b", "str {tmp}, [{area}, #8]", "3:",
            "ldr {cpu:w}, [{area}, #{idx}]", "madd {tmp}, {cpu}, {stride}, {base}", "ldr {v}, [{tmp}]",
            "add {v}, {v}, {amount}", "str {v}, [{tmp}]", end!(),
            area = in(reg) area, base = in(reg) base, stride = in(reg) stride, amount = in(reg) amount,
            idx = const IDX, tmp = out(reg) _, cpu = out(reg) cpu, v = out(reg) _, status = out(reg) status,
            options(nostack),
        );
    }
    (status as u32, cpu as u32)
}

/// If `*check == expect`, `base[idx] += amount`.
///
/// # Safety
/// See the x86_64 module.
#[inline(always)]
pub unsafe fn add_if_equal<const MM: bool>(
    area: *mut RseqArea,
    ncpus: u32,
    check: *const u64,
    expect: u64,
    base: *mut u8,
    stride: usize,
    amount: u64,
) -> (u32, u32) {
    let (status, cpu): (u64, u64);
    // SAFETY: the function's contract.
    unsafe {
        section!(MM, area, ncpus, status, cpu,
            ["ldr {v}, [{check}]", "cmp {v}, {expect}", "b.ne 5f",
             "madd {p}, {cpu}, {stride}, {base}", "ldr {v}, [{p}]", "add {v}, {v}, {amount}", "str {v}, [{p}]"],
            check = in(reg) check, expect = in(reg) expect, base = in(reg) base, stride = in(reg) stride,
            amount = in(reg) amount, p = out(reg) _, v = out(reg) _,
        );
    }
    (status as u32, cpu as u32)
}

/// [`add_if_equal`] with `spins` (at least 1) `yield`s between the check and the add.
///
/// # Safety
/// See the x86_64 module.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn add_if_equal_delayed<const MM: bool>(
    area: *mut RseqArea,
    ncpus: u32,
    check: *const u64,
    expect: u64,
    base: *mut u8,
    stride: usize,
    amount: u64,
    spins: u64,
) -> (u32, u32) {
    let (status, cpu): (u64, u64);
    // SAFETY: the function's contract.
    unsafe {
        section!(MM, area, ncpus, status, cpu,
            ["ldr {v}, [{check}]", "cmp {v}, {expect}", "b.ne 5f",
             "mov {p}, {spins}", "8:", "yield", "subs {p}, {p}, #1", "b.ne 8b",
             "madd {p}, {cpu}, {stride}, {base}", "ldr {v}, [{p}]", "add {v}, {v}, {amount}", "str {v}, [{p}]"],
            check = in(reg) check, expect = in(reg) expect, base = in(reg) base, stride = in(reg) stride,
            amount = in(reg) amount, spins = in(reg) spins.max(1), p = out(reg) _, v = out(reg) _,
        );
    }
    (status as u32, cpu as u32)
}

/// If `base[idx] == expect`, store `new` there; with `RELEASE`, as a release store (`stlr`).
///
/// # Safety
/// See the x86_64 module.
#[inline(always)]
pub unsafe fn load_compare_store<const MM: bool, const RELEASE: bool>(
    area: *mut RseqArea,
    ncpus: u32,
    base: *mut u8,
    stride: usize,
    expect: u64,
    new: u64,
) -> (u32, u32) {
    let (status, cpu): (u64, u64);
    // SAFETY: the function's contract.
    unsafe {
        if RELEASE {
            section!(MM, area, ncpus, status, cpu,
                ["madd {p}, {cpu}, {stride}, {base}", "ldr {v}, [{p}]", "cmp {v}, {expect}", "b.ne 5f",
                 "stlr {new}, [{p}]"],
                base = in(reg) base, stride = in(reg) stride, expect = in(reg) expect, new = in(reg) new,
                p = out(reg) _, v = out(reg) _,
            );
        } else {
            section!(MM, area, ncpus, status, cpu,
                ["madd {p}, {cpu}, {stride}, {base}", "ldr {v}, [{p}]", "cmp {v}, {expect}", "b.ne 5f",
                 "str {new}, [{p}]"],
                base = in(reg) base, stride = in(reg) stride, expect = in(reg) expect, new = in(reg) new,
                p = out(reg) _, v = out(reg) _,
            );
        }
    }
    (status as u32, cpu as u32)
}

/// Pushes `value` if the stack holds fewer than `cap` entries and its index is not stopped.
///
/// # Safety
/// See the x86_64 module.
#[inline(always)]
pub unsafe fn push<const MM: bool>(
    area: *mut RseqArea,
    ncpus: u32,
    base: *mut u8,
    stopped: *const u8,
    stride: usize,
    cap: u64,
    value: u64,
) -> (u32, u32) {
    let (status, cpu): (u64, u64);
    // SAFETY: the function's contract.
    unsafe {
        section!(MM, area, ncpus, status, cpu,
            ["madd {p}, {cpu}, {stride}, {stopped}", "ldar {cnt}, [{p}]", "cbnz {cnt}, 9f",
             "madd {p}, {cpu}, {stride}, {base}", "ldr {cnt}, [{p}]", "cmp {cnt}, {cap}", "b.hs 5f",
             "add {slot}, {p}, {cnt}, lsl #3", "str {value}, [{slot}, #8]", "add {cnt}, {cnt}, #1",
             "str {cnt}, [{p}]"],
            base = in(reg) base, stopped = in(reg) stopped, stride = in(reg) stride, cap = in(reg) cap,
            value = in(reg) value, p = out(reg) _, cnt = out(reg) _, slot = out(reg) _,
        );
    }
    (status as u32, cpu as u32)
}

/// Pops the top of the stack. Returns (status, value, index).
///
/// # Safety
/// See the x86_64 module.
#[inline(always)]
pub unsafe fn pop<const MM: bool>(
    area: *mut RseqArea,
    ncpus: u32,
    base: *mut u8,
    stopped: *const u8,
    stride: usize,
) -> (u32, u64, u32) {
    let (status, cpu, value): (u64, u64, u64);
    // SAFETY: the function's contract.
    unsafe {
        section!(MM, area, ncpus, status, cpu,
            ["madd {p}, {cpu}, {stride}, {stopped}", "ldar {cnt}, [{p}]", "cbnz {cnt}, 9f",
             "madd {p}, {cpu}, {stride}, {base}", "ldr {cnt}, [{p}]", "cbz {cnt}, 5f",
             "ldr {value}, [{p}, {cnt}, lsl #3]", "sub {cnt}, {cnt}, #1", "str {cnt}, [{p}]"],
            base = in(reg) base, stopped = in(reg) stopped, stride = in(reg) stride, p = out(reg) _,
            cnt = out(reg) _, value = out(reg) value,
        );
    }
    (status as u32, value, cpu as u32)
}

/// Copies as many of the `n` values at `src` as fit onto the stack; one commit. Returns
/// (status, copied).
///
/// # Safety
/// See the x86_64 module.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn push_batch<const MM: bool>(
    area: *mut RseqArea,
    ncpus: u32,
    base: *mut u8,
    stopped: *const u8,
    stride: usize,
    cap: u64,
    src: *const u64,
    n: u64,
) -> (u32, u64) {
    let (status, k): (u64, u64);
    // SAFETY: the function's contract.
    unsafe {
        section!(MM, area, ncpus, status, _,
            ["madd {p}, {cpu}, {stride}, {stopped}", "ldar {cnt}, [{p}]", "cbnz {cnt}, 9f",
             "madd {p}, {cpu}, {stride}, {base}", "ldr {cnt}, [{p}]", "sub {k}, {cap}, {cnt}", "cmp {k}, {n}",
             "csel {k}, {n}, {k}, hi", "cbz {k}, 5f",
             "add {d}, {p}, {cnt}, lsl #3", "add {d}, {d}, #8", "mov {i}, #0",
             "8:", "ldr {v}, [{src}, {i}, lsl #3]", "str {v}, [{d}, {i}, lsl #3]", "add {i}, {i}, #1",
             "cmp {i}, {k}", "b.lo 8b",
             "add {cnt}, {cnt}, {k}", "str {cnt}, [{p}]"],
            base = in(reg) base, stopped = in(reg) stopped, stride = in(reg) stride, cap = in(reg) cap,
            src = in(reg) src, n = in(reg) n, p = out(reg) _, cnt = out(reg) _, d = out(reg) _, i = out(reg) _,
            v = out(reg) _, k = out(reg) k,
        );
    }
    (status as u32, k)
}

/// Moves up to `n` values from the top of the stack to `dst` (topmost last); one commit.
/// Returns (status, moved).
///
/// # Safety
/// See the x86_64 module.
#[inline(always)]
pub unsafe fn pop_batch<const MM: bool>(
    area: *mut RseqArea,
    ncpus: u32,
    base: *mut u8,
    stopped: *const u8,
    stride: usize,
    dst: *mut u64,
    n: u64,
) -> (u32, u64) {
    let (status, k): (u64, u64);
    // SAFETY: the function's contract.
    unsafe {
        section!(MM, area, ncpus, status, _,
            ["madd {p}, {cpu}, {stride}, {stopped}", "ldar {cnt}, [{p}]", "cbnz {cnt}, 9f",
             "madd {p}, {cpu}, {stride}, {base}", "ldr {cnt}, [{p}]", "cmp {n}, {cnt}", "csel {k}, {cnt}, {n}, hi",
             "cbz {k}, 5f",
             "sub {cnt}, {cnt}, {k}", "add {s}, {p}, {cnt}, lsl #3", "add {s}, {s}, #8", "mov {i}, #0",
             "8:", "ldr {v}, [{s}, {i}, lsl #3]", "str {v}, [{dst}, {i}, lsl #3]", "add {i}, {i}, #1",
             "cmp {i}, {k}", "b.lo 8b",
             "str {cnt}, [{p}]"],
            base = in(reg) base, stopped = in(reg) stopped, stride = in(reg) stride, dst = in(reg) dst,
            n = in(reg) n, p = out(reg) _, cnt = out(reg) _, s = out(reg) _, i = out(reg) _, v = out(reg) _,
            k = out(reg) k,
        );
    }
    (status as u32, k)
}

//! aarch64 critical sections. Same shape and stack layout as the x86_64 module.

use core::arch::asm;

use crate::area::RseqArea;

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

// Labels: 2 descriptor, 3 start, 4 post-commit, 5 comparison failed, 6 abort, 7 exit, 8 loop.
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
        )
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
            ".inst 0xd428bc00\n",
            "6:\n",
            "mov {status:w}, #2\n",
            "7:\n",
            "str xzr, [{area}, #8]\n",
        )
    };
}

/// See the x86_64 module's `add`.
///
/// # Safety
/// `area` is the calling thread's registered area; `base + i*stride` is a valid, 8-byte
/// aligned `u64` for every possible index `i`.
#[inline(always)]
pub unsafe fn add<const IDX: usize>(area: *mut RseqArea, base: *mut u8, stride: usize, amount: u64) -> (u32, u32) {
    let status: u32;
    let cpu: u64;
    // SAFETY: see the function's contract.
    unsafe {
        asm!(
            begin!(),
            "ldr {cpu:w}, [{area}, #{idx}]",
            "madd {p}, {cpu}, {stride}, {base}",
            "ldr {v}, [{p}]",
            "add {v}, {v}, {amount}",
            "str {v}, [{p}]",
            end!(),
            area = in(reg) area,
            base = in(reg) base,
            stride = in(reg) stride,
            amount = in(reg) amount,
            idx = const IDX,
            tmp = out(reg) _,
            cpu = out(reg) cpu,
            p = out(reg) _,
            v = out(reg) _,
            status = out(reg) status,
            options(nostack),
        );
    }
    (status, cpu as u32)
}

/// See the x86_64 module's `add_if_equal`.
///
/// # Safety
/// As for [`add`]; `check` is a valid, 8-byte aligned `u64`.
#[inline(always)]
pub unsafe fn add_if_equal<const IDX: usize>(
    area: *mut RseqArea,
    check: *const u64,
    expect: u64,
    base: *mut u8,
    stride: usize,
    amount: u64,
) -> (u32, u32) {
    let status: u32;
    let cpu: u64;
    // SAFETY: see the function's contract.
    unsafe {
        asm!(
            begin!(),
            "ldr {v}, [{check}]",
            "cmp {v}, {expect}",
            "b.ne 5f",
            "ldr {cpu:w}, [{area}, #{idx}]",
            "madd {p}, {cpu}, {stride}, {base}",
            "ldr {v}, [{p}]",
            "add {v}, {v}, {amount}",
            "str {v}, [{p}]",
            end!(),
            area = in(reg) area,
            check = in(reg) check,
            expect = in(reg) expect,
            base = in(reg) base,
            stride = in(reg) stride,
            amount = in(reg) amount,
            idx = const IDX,
            tmp = out(reg) _,
            cpu = out(reg) cpu,
            p = out(reg) _,
            v = out(reg) _,
            status = out(reg) status,
            options(nostack),
        );
    }
    (status, cpu as u32)
}

/// See the x86_64 module's `add_if_equal_delayed` (`yield` in the loop).
///
/// # Safety
/// As for [`add_if_equal`].
#[inline(always)]
pub unsafe fn add_if_equal_delayed<const IDX: usize>(
    area: *mut RseqArea,
    check: *const u64,
    expect: u64,
    base: *mut u8,
    stride: usize,
    amount: u64,
    spins: u64,
) -> (u32, u32) {
    let status: u32;
    let cpu: u64;
    // SAFETY: see the function's contract.
    unsafe {
        asm!(
            begin!(),
            "ldr {v}, [{check}]",
            "cmp {v}, {expect}",
            "b.ne 5f",
            "mov {p}, {spins}",
            "8:",
            "yield",
            "subs {p}, {p}, #1",
            "b.ne 8b",
            "ldr {cpu:w}, [{area}, #{idx}]",
            "madd {p}, {cpu}, {stride}, {base}",
            "ldr {v}, [{p}]",
            "add {v}, {v}, {amount}",
            "str {v}, [{p}]",
            end!(),
            area = in(reg) area,
            check = in(reg) check,
            expect = in(reg) expect,
            base = in(reg) base,
            stride = in(reg) stride,
            amount = in(reg) amount,
            spins = in(reg) spins.max(1),
            idx = const IDX,
            tmp = out(reg) _,
            cpu = out(reg) cpu,
            p = out(reg) _,
            v = out(reg) _,
            status = out(reg) status,
            options(nostack),
        );
    }
    (status, cpu as u32)
}

/// See the x86_64 module's `load_compare_store`.
///
/// # Safety
/// As for [`add`].
#[inline(always)]
pub unsafe fn load_compare_store<const IDX: usize>(
    area: *mut RseqArea,
    base: *mut u8,
    stride: usize,
    expect: u64,
    new: u64,
) -> (u32, u32) {
    let status: u32;
    let cpu: u64;
    // SAFETY: see the function's contract.
    unsafe {
        asm!(
            begin!(),
            "ldr {cpu:w}, [{area}, #{idx}]",
            "madd {p}, {cpu}, {stride}, {base}",
            "ldr {v}, [{p}]",
            "cmp {v}, {expect}",
            "b.ne 5f",
            "str {new}, [{p}]",
            end!(),
            area = in(reg) area,
            base = in(reg) base,
            stride = in(reg) stride,
            expect = in(reg) expect,
            new = in(reg) new,
            idx = const IDX,
            tmp = out(reg) _,
            cpu = out(reg) cpu,
            p = out(reg) _,
            v = out(reg) _,
            status = out(reg) status,
            options(nostack),
        );
    }
    (status, cpu as u32)
}

/// See the x86_64 module's `push`.
///
/// # Safety
/// As for [`add`], with a stack of `cap` slots at each copy.
#[inline(always)]
pub unsafe fn push<const IDX: usize>(
    area: *mut RseqArea,
    base: *mut u8,
    stride: usize,
    cap: u64,
    value: u64,
) -> (u32, u32) {
    let status: u32;
    let cpu: u64;
    // SAFETY: see the function's contract.
    unsafe {
        asm!(
            begin!(),
            "ldr {cpu:w}, [{area}, #{idx}]",
            "madd {p}, {cpu}, {stride}, {base}",
            "ldr {cnt}, [{p}]",
            "cmp {cnt}, {cap}",
            "b.hs 5f",
            "add {slot}, {p}, {cnt}, lsl #3",
            "str {value}, [{slot}, #8]",
            "add {cnt}, {cnt}, #1",
            "str {cnt}, [{p}]",
            end!(),
            area = in(reg) area,
            base = in(reg) base,
            stride = in(reg) stride,
            cap = in(reg) cap,
            value = in(reg) value,
            idx = const IDX,
            tmp = out(reg) _,
            cpu = out(reg) cpu,
            p = out(reg) _,
            cnt = out(reg) _,
            slot = out(reg) _,
            status = out(reg) status,
            options(nostack),
        );
    }
    (status, cpu as u32)
}

/// See the x86_64 module's `pop`.
///
/// # Safety
/// As for [`push`].
#[inline(always)]
pub unsafe fn pop<const IDX: usize>(area: *mut RseqArea, base: *mut u8, stride: usize) -> (u32, u64, u32) {
    let status: u32;
    let cpu: u64;
    let value: u64;
    // SAFETY: see the function's contract.
    unsafe {
        asm!(
            begin!(),
            "ldr {cpu:w}, [{area}, #{idx}]",
            "madd {p}, {cpu}, {stride}, {base}",
            "ldr {cnt}, [{p}]",
            "cbz {cnt}, 5f",
            "ldr {value}, [{p}, {cnt}, lsl #3]",
            "sub {cnt}, {cnt}, #1",
            "str {cnt}, [{p}]",
            end!(),
            area = in(reg) area,
            base = in(reg) base,
            stride = in(reg) stride,
            idx = const IDX,
            tmp = out(reg) _,
            cpu = out(reg) cpu,
            p = out(reg) _,
            cnt = out(reg) _,
            value = out(reg) value,
            status = out(reg) status,
            options(nostack),
        );
    }
    (status, value, cpu as u32)
}

/// See the x86_64 module's `push_batch`.
///
/// # Safety
/// As for [`push`]; `src` is valid for reading `n` values.
#[inline(always)]
pub unsafe fn push_batch<const IDX: usize>(
    area: *mut RseqArea,
    base: *mut u8,
    stride: usize,
    cap: u64,
    src: *const u64,
    n: u64,
) -> (u32, u64) {
    let status: u32;
    let k: u64;
    // SAFETY: see the function's contract.
    unsafe {
        asm!(
            begin!(),
            "ldr {p:w}, [{area}, #{idx}]",
            "madd {p}, {p}, {stride}, {base}",
            "ldr {cnt}, [{p}]",
            "sub {k}, {cap}, {cnt}",
            "cmp {k}, {n}",
            "csel {k}, {n}, {k}, hi",
            "cbz {k}, 5f",
            "add {d}, {p}, {cnt}, lsl #3",
            "add {d}, {d}, #8",
            "mov {i}, #0",
            "8:",
            "ldr {tmp}, [{src}, {i}, lsl #3]",
            "str {tmp}, [{d}, {i}, lsl #3]",
            "add {i}, {i}, #1",
            "cmp {i}, {k}",
            "b.lo 8b",
            "add {cnt}, {cnt}, {k}",
            "str {cnt}, [{p}]",
            end!(),
            area = in(reg) area,
            base = in(reg) base,
            stride = in(reg) stride,
            cap = in(reg) cap,
            src = in(reg) src,
            n = in(reg) n,
            idx = const IDX,
            tmp = out(reg) _,
            p = out(reg) _,
            cnt = out(reg) _,
            d = out(reg) _,
            i = out(reg) _,
            k = out(reg) k,
            status = out(reg) status,
            options(nostack),
        );
    }
    (status, k)
}

/// See the x86_64 module's `pop_batch`.
///
/// # Safety
/// As for [`push`]; `dst` is valid for writing `n` values.
#[inline(always)]
pub unsafe fn pop_batch<const IDX: usize>(
    area: *mut RseqArea,
    base: *mut u8,
    stride: usize,
    dst: *mut u64,
    n: u64,
) -> (u32, u64) {
    let status: u32;
    let k: u64;
    // SAFETY: see the function's contract.
    unsafe {
        asm!(
            begin!(),
            "ldr {p:w}, [{area}, #{idx}]",
            "madd {p}, {p}, {stride}, {base}",
            "ldr {cnt}, [{p}]",
            "cmp {n}, {cnt}",
            "csel {k}, {cnt}, {n}, hi",
            "cbz {k}, 5f",
            "sub {cnt}, {cnt}, {k}",
            "add {s}, {p}, {cnt}, lsl #3",
            "add {s}, {s}, #8",
            "mov {i}, #0",
            "8:",
            "ldr {tmp}, [{s}, {i}, lsl #3]",
            "str {tmp}, [{dst}, {i}, lsl #3]",
            "add {i}, {i}, #1",
            "cmp {i}, {k}",
            "b.lo 8b",
            "str {cnt}, [{p}]",
            end!(),
            area = in(reg) area,
            base = in(reg) base,
            stride = in(reg) stride,
            dst = in(reg) dst,
            n = in(reg) n,
            idx = const IDX,
            tmp = out(reg) _,
            p = out(reg) _,
            cnt = out(reg) _,
            s = out(reg) _,
            i = out(reg) _,
            k = out(reg) k,
            status = out(reg) status,
            options(nostack),
        );
    }
    (status, k)
}

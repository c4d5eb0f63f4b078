//! x86_64 critical sections (AT&T syntax). See the module above for the common shape.
//!
//! Per-CPU stacks used by `push`/`pop` and the batch operations have this layout in each
//! CPU's copy: `count: u64` at offset 0, then `slots: [u64; cap]`.

use core::arch::asm;

use crate::area::RseqArea;

/// x86 signature; the bytes before each abort handler encode `ud1 0x53053053(%rip), %edi`
/// so that a disassembler sees one (trapping) instruction rather than garbage.
pub const RSEQ_SIG: u32 = 0x5305_3053;

/// The thread pointer (`%fs` base), which libc's `__rseq_offset` is relative to.
#[inline(always)]
pub fn thread_pointer() -> *mut u8 {
    let tp: *mut u8;
    // SAFETY: on x86_64 Linux `%fs:0` holds the thread control block's own address.
    unsafe {
        asm!("movq %fs:0, {}", out(reg) tp, options(att_syntax, nostack, readonly, preserves_flags, pure));
    }
    tp
}

// Descriptor, `rseq_cs` store and start label (3). Labels: 2 descriptor, 3 start,
// 4 post-commit, 5 comparison failed, 6 abort handler, 7 common exit, 8 loops.
macro_rules! begin {
    () => {
        concat!(
            ".pushsection __rseq_cs, \"aw\"\n",
            ".balign 32\n",
            "2:\n",
            ".long 0, 0\n",
            ".quad 3f, (4f - 3f), 6f\n",
            ".popsection\n",
            "leaq 2b(%rip), {tmp}\n",
            "movq {tmp}, 8({area})\n",
            "3:\n",
        )
    };
}

// Post-commit label (4), the failure and abort exits, and the `rseq_cs` clearing shared
// by all of them.
macro_rules! end {
    () => {
        concat!(
            "4:\n",
            "xorl {status:e}, {status:e}\n",
            "jmp 7f\n",
            "5:\n",
            "movl $1, {status:e}\n",
            "jmp 7f\n",
            ".byte 0x0f, 0xb9, 0x3d\n",
            ".long 0x53053053\n",
            "6:\n",
            "movl $2, {status:e}\n",
            "7:\n",
            "movq $0, 8({area})\n",
        )
    };
}

/// `*(base + idx*stride) += amount` on the current index. Returns (status, index).
///
/// # Safety
/// `area` is the calling thread's registered area; `base + i*stride` is a valid, 8-byte
/// aligned `u64` for every index `i` the kernel may report (possible CPUs).
#[inline(always)]
pub unsafe fn add<const IDX: usize>(area: *mut RseqArea, base: *mut u8, stride: usize, amount: u64) -> (u32, u32) {
    let status: u32;
    let cpu: u64;
    // SAFETY: see the function's contract and the module's shape.
    unsafe {
        asm!(
            begin!(),
            "movl {idx}({area}), {cpu:e}",
            "movq {cpu}, {off}",
            "imulq {stride}, {off}",
            "addq {amount}, ({base}, {off})",
            end!(),
            area = in(reg) area,
            base = in(reg) base,
            stride = in(reg) stride,
            amount = in(reg) amount,
            idx = const IDX,
            tmp = out(reg) _,
            cpu = out(reg) cpu,
            off = out(reg) _,
            status = out(reg) status,
            options(att_syntax, nostack),
        );
    }
    (status, cpu as u32)
}

/// If `*check == expect`, `*(base + idx*stride) += amount` on the current index; the
/// check is inside the section, so a writer that changes `*check` and then issues
/// `membarrier(PRIVATE_EXPEDITED_RSEQ)` knows that no add that saw the old value can still
/// commit. Returns (status, index).
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
    // SAFETY: see the function's contract and the module's shape.
    unsafe {
        asm!(
            begin!(),
            "cmpq {expect}, ({check})",
            "jne 5f",
            "movl {idx}({area}), {cpu:e}",
            "movq {cpu}, {off}",
            "imulq {stride}, {off}",
            "addq {amount}, ({base}, {off})",
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
            off = out(reg) _,
            status = out(reg) status,
            options(att_syntax, nostack),
        );
    }
    (status, cpu as u32)
}

/// [`add_if_equal`] with `spins` (at least 1) `pause` instructions between the check and
/// the add: a test hook that holds the section open long enough for a writer on another CPU
/// to change `*check` in the middle of it (the window of `add_if_equal` is two
/// instructions). Returns (status, index).
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
    // SAFETY: see the function's contract and the module's shape.
    unsafe {
        asm!(
            begin!(),
            "cmpq {expect}, ({check})",
            "jne 5f",
            "movq {spins}, {off}",
            "8:",
            "pause",
            "decq {off}",
            "jnz 8b",
            "movl {idx}({area}), {cpu:e}",
            "movq {cpu}, {off}",
            "imulq {stride}, {off}",
            "addq {amount}, ({base}, {off})",
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
            off = out(reg) _,
            status = out(reg) status,
            options(att_syntax, nostack),
        );
    }
    (status, cpu as u32)
}

/// If `*(base + idx*stride) == expect`, store `new` there. Returns (status, index).
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
    // SAFETY: see the function's contract and the module's shape.
    unsafe {
        asm!(
            begin!(),
            "movl {idx}({area}), {cpu:e}",
            "movq {cpu}, {off}",
            "imulq {stride}, {off}",
            "cmpq {expect}, ({base}, {off})",
            "jne 5f",
            "movq {new}, ({base}, {off})",
            end!(),
            area = in(reg) area,
            base = in(reg) base,
            stride = in(reg) stride,
            expect = in(reg) expect,
            new = in(reg) new,
            idx = const IDX,
            tmp = out(reg) _,
            cpu = out(reg) cpu,
            off = out(reg) _,
            status = out(reg) status,
            options(att_syntax, nostack),
        );
    }
    (status, cpu as u32)
}

/// Pushes `value` on the current index's stack if it holds fewer than `cap` entries
/// (otherwise: comparison failed). Returns (status, index).
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
    // SAFETY: see the function's contract and the module's shape.
    unsafe {
        asm!(
            begin!(),
            "movl {idx}({area}), {cpu:e}",
            "movq {cpu}, {p}",
            "imulq {stride}, {p}",
            "addq {base}, {p}",
            "movq ({p}), {cnt}",
            "cmpq {cap}, {cnt}",
            "jae 5f",
            "movq {value}, 8({p}, {cnt}, 8)",
            "addq $1, {cnt}",
            "movq {cnt}, ({p})",
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
            status = out(reg) status,
            options(att_syntax, nostack),
        );
    }
    (status, cpu as u32)
}

/// Pops the top of the current index's stack (empty: comparison failed).
/// Returns (status, value, index).
///
/// # Safety
/// As for [`push`].
#[inline(always)]
pub unsafe fn pop<const IDX: usize>(area: *mut RseqArea, base: *mut u8, stride: usize) -> (u32, u64, u32) {
    let status: u32;
    let cpu: u64;
    let value: u64;
    // SAFETY: see the function's contract and the module's shape.
    unsafe {
        asm!(
            begin!(),
            "movl {idx}({area}), {cpu:e}",
            "movq {cpu}, {p}",
            "imulq {stride}, {p}",
            "addq {base}, {p}",
            "movq ({p}), {cnt}",
            "testq {cnt}, {cnt}",
            "jz 5f",
            "movq ({p}, {cnt}, 8), {value}",
            "subq $1, {cnt}",
            "movq {cnt}, ({p})",
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
            options(att_syntax, nostack),
        );
    }
    (status, value, cpu as u32)
}

/// Copies up to `n` values from `src` onto the current index's stack, as many as fit below
/// `cap`, and commits them with one store of the new count. Returns (status, copied); a
/// full stack (or `n == 0`) is a comparison failure.
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
    // SAFETY: see the function's contract and the module's shape. `base` and `stride` are
    // reused as scratch registers once the copy's address is known.
    unsafe {
        asm!(
            begin!(),
            "movl {idx}({area}), {p:e}",
            "imulq {stride}, {p}",
            "addq {base}, {p}",
            "movq ({p}), {cnt}",
            "movq {cap}, {k}",
            "subq {cnt}, {k}",
            "cmpq {n}, {k}",
            "cmovaq {n}, {k}",
            "testq {k}, {k}",
            "jz 5f",
            "leaq 8({p}, {cnt}, 8), {base}",
            "xorl {stride:e}, {stride:e}",
            "8:",
            "movq ({src}, {stride}, 8), {tmp}",
            "movq {tmp}, ({base}, {stride}, 8)",
            "addq $1, {stride}",
            "cmpq {k}, {stride}",
            "jb 8b",
            "addq {k}, {cnt}",
            "movq {cnt}, ({p})",
            end!(),
            area = in(reg) area,
            base = inout(reg) base => _,
            stride = inout(reg) stride => _,
            cap = in(reg) cap,
            src = in(reg) src,
            n = in(reg) n,
            idx = const IDX,
            tmp = out(reg) _,
            p = out(reg) _,
            cnt = out(reg) _,
            k = out(reg) k,
            status = out(reg) status,
            options(att_syntax, nostack),
        );
    }
    (status, k)
}

/// Moves up to `n` values from the top of the current index's stack to `dst` (the topmost
/// value last) and commits with one store of the new count. Returns (status, moved); an
/// empty stack (or `n == 0`) is a comparison failure.
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
    // SAFETY: as in `push_batch`.
    unsafe {
        asm!(
            begin!(),
            "movl {idx}({area}), {p:e}",
            "imulq {stride}, {p}",
            "addq {base}, {p}",
            "movq ({p}), {cnt}",
            "movq {n}, {k}",
            "cmpq {cnt}, {k}",
            "cmovaq {cnt}, {k}",
            "testq {k}, {k}",
            "jz 5f",
            "subq {k}, {cnt}",
            "leaq 8({p}, {cnt}, 8), {base}",
            "xorl {stride:e}, {stride:e}",
            "8:",
            "movq ({base}, {stride}, 8), {tmp}",
            "movq {tmp}, ({dst}, {stride}, 8)",
            "addq $1, {stride}",
            "cmpq {k}, {stride}",
            "jb 8b",
            "movq {cnt}, ({p})",
            end!(),
            area = in(reg) area,
            base = inout(reg) base => _,
            stride = inout(reg) stride => _,
            dst = in(reg) dst,
            n = in(reg) n,
            idx = const IDX,
            tmp = out(reg) _,
            p = out(reg) _,
            cnt = out(reg) _,
            k = out(reg) k,
            status = out(reg) status,
            options(att_syntax, nostack),
        );
    }
    (status, k)
}

//! x86_64 critical sections (AT&T syntax). The template ([`section!`]) supplies everything
//! but an operation's own instructions; see the module above for the common shape.
//!
//! x86 stores are ordered (TSO): every commit is also a release store, so the `_release`
//! variants are the plain operations here.

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

// Descriptor (label 2), `rseq_cs` store, start label (3), then the index load. Labels of the
// template: 2 descriptor, 3 start, 4 post-commit, 5 comparison failed, 6 abort handler,
// 7 common exit, 9 index unusable. Operations may use 8 for loops.
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
            // cpu_id; unsigned, so -1 (not initialised), -2 (glibc did not register the
            // thread) and our own "registration failed" marks are all out of range.
            "movl 4({area}), {cpu:e}\n",
        )
    };
}

// mm_cid sections: the thread must be registered (cpu_id >= 0: an unregistered area keeps a
// stale or zero mm_cid), then the index is mm_cid.
macro_rules! load_mm_cid {
    () => {
        concat!("testl {cpu:e}, {cpu:e}\n", "js 9f\n", "movl 24({area}), {cpu:e}\n")
    };
}

// The bound check every section makes, inside the section.
macro_rules! check_bound {
    () => {
        concat!("cmpl {ncpus:e}, {cpu:e}\n", "jae 9f\n")
    };
}

// Post-commit label (4), the other exits, and the `rseq_cs` clearing shared by all of them.
macro_rules! end {
    () => {
        concat!(
            "4:\n",
            "xorl {status:e}, {status:e}\n",
            "jmp 7f\n",
            "5:\n",
            "movl $1, {status:e}\n",
            "jmp 7f\n",
            "9:\n",
            "movl $3, {status:e}\n",
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

/// One critical section: the template around an operation's instructions (`body`, which
/// finds the index, zero-extended, in `{cpu}`; ends with its single commit store and may
/// jump to `5f` for "comparison failed" or `9f` for "index unusable"). `{status}` is free
/// scratch until an exit writes it, and `{ncpus}` after the bound check.
macro_rules! section {
    ($mm:expr, $area:expr, $ncpus:expr, $status:ident, $cpu:tt, [$($body:expr),* $(,)?], $($op:tt)*) => {
        if $mm {
            asm!(
                begin!(), load_mm_cid!(), check_bound!(), $($body,)* end!(),
                area = in(reg) $area, ncpus = inout(reg) u64::from($ncpus) => _, tmp = out(reg) _,
                cpu = out(reg) $cpu, status = out(reg) $status,
                options(att_syntax, nostack), $($op)*
            )
        } else {
            asm!(
                begin!(), check_bound!(), $($body,)* end!(),
                area = in(reg) $area, ncpus = inout(reg) u64::from($ncpus) => _, tmp = out(reg) _,
                cpu = out(reg) $cpu, status = out(reg) $status,
                options(att_syntax, nostack), $($op)*
            )
        }
    };
}

// Every function below: `area` is the calling thread's area (registered or not: an
// unregistered one reports an unusable index); `base + i * stride` is a valid, 8-byte aligned
// copy for every `i < ncpus`; `MM` selects mm_cid over cpu_id. Results are (status, index).

/// `base[idx] += amount`.
///
/// # Safety
/// See above.
#[inline(always)]
pub unsafe fn add<const MM: bool>(
    area: *mut RseqArea,
    ncpus: u32,
    base: *mut u8,
    stride: usize,
    amount: u64,
) -> (u32, u32) {
    let (status, cpu): (u64, u64);
    // SAFETY: the contract above; the template keeps to the module's shape.
    unsafe {
        section!(MM, area, ncpus, status, cpu,
            ["movq {cpu}, {off}", "imulq {stride}, {off}", "addq {amount}, ({base}, {off})"],
            base = in(reg) base, stride = in(reg) stride, amount = in(reg) amount, off = out(reg) _,
        );
    }
    (status as u32, cpu as u32)
}

/// `base[idx] += amount` without the bound check or the registration test: the shape of the
/// sections before the check existed, kept only so that the benchmark can show what the
/// check costs. Never use it on data.
///
/// # Safety
/// See above, and `area` must be registered with an index below `ncpus`.
#[doc(hidden)]
#[inline(always)]
pub unsafe fn add_unchecked<const IDX: usize>(
    area: *mut RseqArea,
    base: *mut u8,
    stride: usize,
    amount: u64,
) -> (u32, u32) {
    let (status, cpu): (u64, u64);
    // SAFETY: the contract above.
    unsafe {
        asm!(
            ".pushsection __rseq_cs, \"aw\"\n.balign 32\n2:\n.long 0, 0\n.quad 3f, (4f - 3f), 6f\n.popsection",
            "leaq 2b(%rip), {tmp}", "movq {tmp}, 8({area})", "3:",
            "movl {idx}({area}), {cpu:e}", "movq {cpu}, {tmp}", "imulq {stride}, {tmp}",
            "addq {amount}, ({base}, {tmp})", end!(),
            area = in(reg) area, base = in(reg) base, stride = in(reg) stride, amount = in(reg) amount,
            idx = const IDX, tmp = out(reg) _, cpu = out(reg) cpu, status = out(reg) status,
            options(att_syntax, nostack),
        );
    }
    (status as u32, cpu as u32)
}

/// If `*check == expect`, `base[idx] += amount`. The check is inside the section, so a
/// writer that changes `*check` and then issues `membarrier(PRIVATE_EXPEDITED_RSEQ)` knows
/// that no add that saw the old value can still commit.
///
/// # Safety
/// See above; `check` is a valid, 8-byte aligned `u64`.
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
    // SAFETY: the contract above.
    unsafe {
        section!(MM, area, ncpus, status, cpu,
            ["cmpq {expect}, ({check})", "jne 5f",
             "movq {cpu}, {off}", "imulq {stride}, {off}", "addq {amount}, ({base}, {off})"],
            check = in(reg) check, expect = in(reg) expect, base = in(reg) base, stride = in(reg) stride,
            amount = in(reg) amount, off = out(reg) _,
        );
    }
    (status as u32, cpu as u32)
}

/// [`add_if_equal`] with `spins` (at least 1) `pause` instructions between the check and the
/// add: a test hook that holds the section open long enough for a writer on another CPU to
/// change `*check` in the middle of it.
///
/// # Safety
/// As for [`add_if_equal`].
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
    // SAFETY: the contract above.
    unsafe {
        section!(MM, area, ncpus, status, cpu,
            ["cmpq {expect}, ({check})", "jne 5f",
             "movq {spins}, {off}", "8:", "pause", "decq {off}", "jnz 8b",
             "movq {cpu}, {off}", "imulq {stride}, {off}", "addq {amount}, ({base}, {off})"],
            check = in(reg) check, expect = in(reg) expect, base = in(reg) base, stride = in(reg) stride,
            amount = in(reg) amount, spins = in(reg) spins.max(1), off = out(reg) _,
        );
    }
    (status as u32, cpu as u32)
}

/// If `base[idx] == expect`, store `new` there (a release store on x86).
///
/// # Safety
/// See above.
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
    // SAFETY: the contract above.
    unsafe {
        section!(MM, area, ncpus, status, cpu,
            ["movq {cpu}, {off}", "imulq {stride}, {off}", "cmpq {expect}, ({base}, {off})", "jne 5f",
             "movq {new}, ({base}, {off})"],
            base = in(reg) base, stride = in(reg) stride, expect = in(reg) expect, new = in(reg) new,
            off = out(reg) _,
        );
    }
    (status as u32, cpu as u32)
}

// Stacks (layout in each copy: `count: u64`, then `slots: [u64; cap]`) come with a per-CPU
// "stopped" word at `stopped + i * stride`: non-zero means another thread owns this index's
// copy (it is draining it), and the section reports the index unusable.

/// Pushes `value` if the stack holds fewer than `cap` entries (otherwise: comparison failed).
///
/// # Safety
/// See above; `stopped + i * stride` is a valid `u64` for every `i < ncpus`.
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
    // SAFETY: the contract above.
    unsafe {
        section!(MM, area, ncpus, status, cpu,
            ["movq {cpu}, {p}", "imulq {stride}, {p}", "cmpq $0, ({stopped}, {p})", "jne 9f", "addq {base}, {p}",
             "movq ({p}), {status}", "cmpq {cap}, {status}", "jae 5f",
             "movq {value}, 8({p}, {status}, 8)", "addq $1, {status}", "movq {status}, ({p})"],
            base = in(reg) base, stopped = in(reg) stopped, stride = in(reg) stride, cap = in(reg) cap,
            value = in(reg) value, p = out(reg) _,
        );
    }
    (status as u32, cpu as u32)
}

/// Pops the top of the stack (empty: comparison failed). Returns (status, value, index).
///
/// # Safety
/// As for [`push`].
#[inline(always)]
pub unsafe fn pop<const MM: bool>(
    area: *mut RseqArea,
    ncpus: u32,
    base: *mut u8,
    stopped: *const u8,
    stride: usize,
) -> (u32, u64, u32) {
    let (status, cpu, value): (u64, u64, u64);
    // SAFETY: the contract above.
    unsafe {
        section!(MM, area, ncpus, status, cpu,
            ["movq {cpu}, {p}", "imulq {stride}, {p}", "cmpq $0, ({stopped}, {p})", "jne 9f", "addq {base}, {p}",
             "movq ({p}), {status}", "testq {status}, {status}", "jz 5f",
             "movq ({p}, {status}, 8), {value}", "subq $1, {status}", "movq {status}, ({p})"],
            base = in(reg) base, stopped = in(reg) stopped, stride = in(reg) stride, p = out(reg) _,
            value = out(reg) value,
        );
    }
    (status as u32, value, cpu as u32)
}

/// Copies as many of the `n` values at `src` as fit below `cap` onto the stack and commits
/// them with one store of the new count. Returns (status, copied); a full stack (or `n == 0`)
/// is a comparison failure.
///
/// # Safety
/// As for [`push`]; `src` is valid for reading `n` values.
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
    // SAFETY: the contract above. `{cpu}` becomes the copy's address, `{ncpus}` the count,
    // `{base}` the first free slot and `{stride}` the loop index.
    unsafe {
        section!(MM, area, ncpus, status, _,
            ["imulq {stride}, {cpu}", "cmpq $0, ({stopped}, {cpu})", "jne 9f", "addq {base}, {cpu}",
             "movq ({cpu}), {ncpus}", "movq {cap}, {k}", "subq {ncpus}, {k}", "cmpq {n}, {k}", "cmovaq {n}, {k}",
             "testq {k}, {k}", "jz 5f",
             "leaq 8({cpu}, {ncpus}, 8), {base}", "xorl {stride:e}, {stride:e}",
             "8:", "movq ({src}, {stride}, 8), {tmp}", "movq {tmp}, ({base}, {stride}, 8)",
             "addq $1, {stride}", "cmpq {k}, {stride}", "jb 8b",
             "addq {k}, {ncpus}", "movq {ncpus}, ({cpu})"],
            base = inout(reg) base => _, stopped = in(reg) stopped, stride = inout(reg) stride => _,
            cap = in(reg) cap, src = in(reg) src, n = in(reg) n, k = out(reg) k,
        );
    }
    (status as u32, k)
}

/// Moves up to `n` values from the top of the stack to `dst` (the topmost value last) and
/// commits with one store of the new count. Returns (status, moved); an empty stack (or
/// `n == 0`) is a comparison failure.
///
/// # Safety
/// As for [`push`]; `dst` is valid for writing `n` values.
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
    // SAFETY: as in `push_batch`.
    unsafe {
        section!(MM, area, ncpus, status, _,
            ["imulq {stride}, {cpu}", "cmpq $0, ({stopped}, {cpu})", "jne 9f", "addq {base}, {cpu}",
             "movq ({cpu}), {ncpus}", "movq {n}, {k}", "cmpq {ncpus}, {k}", "cmovaq {ncpus}, {k}",
             "testq {k}, {k}", "jz 5f",
             "subq {k}, {ncpus}", "leaq 8({cpu}, {ncpus}, 8), {base}", "xorl {stride:e}, {stride:e}",
             "8:", "movq ({base}, {stride}, 8), {tmp}", "movq {tmp}, ({dst}, {stride}, 8)",
             "addq $1, {stride}", "cmpq {k}, {stride}", "jb 8b",
             "movq {ncpus}, ({cpu})"],
            base = inout(reg) base => _, stopped = in(reg) stopped, stride = inout(reg) stride => _,
            dst = in(reg) dst, n = in(reg) n, k = out(reg) k,
        );
    }
    (status as u32, k)
}

//! CPU topology: kernel CPU range lists, possible/online/allowed CPUs, thread affinity.
//!
//! Per-CPU arrays are sized by *possible* CPUs ([`nr_possible_cpus`]), never online ones:
//! both `cpu_id` and `mm_cid` stay below that bound, and a CPU that comes online later
//! needs no event.
//!
//! [`nr_possible_cpus`] and [`for_each_cpu`] neither allocate nor lock (an allocator calls
//! them while it bootstraps, a forked child or a signal handler may call them); cached
//! values are plain atomics that racing callers fill with the same value, never once-cells
//! (a fork while another thread is inside a once-cell's initialiser leaves the child's cell
//! "running" forever).

use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::fmt;
use std::io;
use std::mem::size_of;

/// Largest CPU id a range list may name (a sanity bound far above any real kernel).
pub const MAX_CPU_ID: u32 = 1 << 20;

const POSSIBLE_PATH: &str = "/sys/devices/system/cpu/possible";
const ONLINE_PATH: &str = "/sys/devices/system/cpu/online";

/// Why a token of a CPU range list was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CpuListErrorKind {
    EmptyToken,
    Stride,
    NotANumber,
    TooLarge,
    Reversed,
}

/// A CPU range list (such as `0-3,8-11`) that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuListError {
    token: String,
    kind: CpuListErrorKind,
}

impl CpuListError {
    fn new(token: &str, kind: CpuListErrorKind) -> Self {
        CpuListError { token: token.to_owned(), kind }
    }

    /// The offending token (the whole list when the problem is an empty entry).
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl fmt::Display for CpuListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.kind {
            CpuListErrorKind::EmptyToken => {
                return write!(
                    f,
                    "invalid CPU list {:?}: empty entry (two commas in a row, or a comma at an end)",
                    self.token
                );
            }
            CpuListErrorKind::Stride => "stride ranges (`a-b:n`) are not supported",
            CpuListErrorKind::NotANumber => "expected a CPU number or a range `a-b` of CPU numbers",
            CpuListErrorKind::TooLarge => "CPU number above the sanity bound of 1048576",
            CpuListErrorKind::Reversed => "range end is below its start",
        };
        write!(f, "invalid CPU list entry {:?}: {}", self.token, why)
    }
}

impl std::error::Error for CpuListError {}

fn parse_cpu_number(s: &str) -> Result<u32, CpuListErrorKind> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CpuListErrorKind::NotANumber);
    }
    // All digits: the only possible parse failure is overflow.
    match s.parse::<u32>() {
        Ok(n) if n <= MAX_CPU_ID => Ok(n),
        _ => Err(CpuListErrorKind::TooLarge),
    }
}

/// Calls `f(lo, hi)` for every range of a kernel CPU range list (`0-3,8-11` gives (0, 3)
/// and (8, 11); a single CPU `n` gives (n, n)), in the order written, after checking the
/// whole list. Surrounding whitespace is ignored. Allocation-free.
pub fn for_each_cpu_range(s: &str, mut f: impl FnMut(u32, u32)) -> Result<(), CpuListError> {
    visit_ranges(s, &mut |lo, hi| f(lo, hi)).map_err(|(kind, token)| CpuListError::new(token, kind))
}

/// Calls `f` with every CPU id of a range list, ascending within each range. Allocation-free
/// (see [`for_each_cpu_range`]).
pub fn for_each_cpu(s: &str, mut f: impl FnMut(u32)) -> Result<(), CpuListError> {
    for_each_cpu_range(s, |lo, hi| (lo..=hi).for_each(&mut f))
}

/// The parser: validates the whole list first, then visits its ranges; errors carry the
/// offending token without allocating.
fn visit_ranges<'a>(s: &'a str, f: &mut dyn FnMut(u32, u32)) -> Result<(), (CpuListErrorKind, &'a str)> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(());
    }
    let token_range = |token: &'a str| -> Result<(u32, u32), (CpuListErrorKind, &'a str)> {
        if token.is_empty() {
            return Err((CpuListErrorKind::EmptyToken, s));
        }
        if token.contains(':') {
            return Err((CpuListErrorKind::Stride, token));
        }
        let number = |n: &str| parse_cpu_number(n).map_err(|kind| (kind, token));
        let (lo, hi) = match token.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(token)?;
                (n, n)
            }
        };
        if hi < lo {
            return Err((CpuListErrorKind::Reversed, token));
        }
        Ok((lo, hi))
    };
    for token in s.split(',') {
        token_range(token)?;
    }
    for token in s.split(',') {
        let (lo, hi) = token_range(token)?;
        f(lo, hi);
    }
    Ok(())
}

/// Parses a kernel CPU range list such as `0-3,8-11` (as found in
/// `/sys/devices/system/cpu/online`). Surrounding whitespace, including the final
/// newline, is ignored; an empty list gives an empty vector. The result is sorted
/// ascending without duplicates. Reversed ranges, empty entries, stride ranges
/// (`0-7:2`), non-numbers and ids above [`MAX_CPU_ID`] are rejected.
pub fn parse_cpu_list(s: &str) -> Result<Vec<u32>, CpuListError> {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for_each_cpu_range(s, |lo, hi| ranges.push((lo, hi)))?;
    // Merge before expanding, so repeated large ranges cost nothing extra.
    ranges.sort_unstable();
    let mut cpus = Vec::new();
    let mut next = 0u32; // first id not yet emitted
    for (lo, hi) in ranges {
        let start = lo.max(next);
        if start <= hi {
            cpus.extend(start..=hi);
            next = hi + 1;
        }
    }
    Ok(cpus)
}

/// Formats CPU ids in the kernel's canonical range-list form (`0-3,8-11`, singletons
/// as `5`, no trailing newline). The input may be unsorted or repeat ids.
pub fn format_cpu_list(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let lo = sorted[i];
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j == i {
            out.push_str(&lo.to_string());
        } else {
            out.push_str(&format!("{}-{}", lo, sorted[j]));
        }
        i = j + 1;
    }
    out
}

fn read_cpu_list(path: &str) -> io::Result<Vec<u32>> {
    let text = std::fs::read_to_string(path)?;
    parse_cpu_list(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}")))
}

/// Reads a small sysfs file into `buf` without allocating; returns the text.
fn read_small_file<'a>(path: &core::ffi::CStr, buf: &'a mut [u8]) -> Option<&'a str> {
    // SAFETY: open/read/close on a NUL-terminated path into a buffer we own, with its length.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let mut len = 0usize;
        while len < buf.len() {
            let r = libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len);
            if r > 0 {
                len += r as usize;
            } else if r == 0 || crate::sys::errno() != libc::EINTR {
                break;
            }
        }
        libc::close(fd);
        // A list that fills the buffer may be cut: not trusted.
        (len < buf.len()).then(|| core::str::from_utf8(&buf[..len]).ok()).flatten()
    }
}

/// Highest CPU id + 1 of the possible list; `None` when it cannot be read or parsed.
fn possible_from_sysfs() -> Option<usize> {
    let mut buf = [0u8; 4096];
    let text = read_small_file(c"/sys/devices/system/cpu/possible", &mut buf)?;
    let mut max = None;
    for_each_cpu_range(text, |_, hi| max = max.max(Some(hi))).ok()?;
    max.map(|m| m as usize + 1)
}

/// Highest CPU id + 1 the calling thread may run on, from a mask on the stack (up to 8192
/// CPUs); 1 when even that fails.
fn possible_from_affinity() -> usize {
    let mut mask = [0 as MaskWord; 8192 / WORD_BITS];
    // SAFETY: `mask` is writable for the size passed.
    let r = unsafe { libc::sched_getaffinity(0, size_of::<[MaskWord; 8192 / WORD_BITS]>(), mask.as_mut_ptr().cast()) };
    if r != 0 {
        return 1;
    }
    mask.iter()
        .enumerate()
        .rev()
        .find(|(_, &w)| w != 0)
        .map_or(1, |(i, &w)| i * WORD_BITS + (WORD_BITS - w.leading_zeros() as usize))
}

/// The largest possible CPU id plus one: the size of every per-CPU array (`cpu_id` and
/// `mm_cid` are both below it), from `/sys/devices/system/cpu/possible`. When that file
/// cannot be read or parsed: the highest CPU the thread may run on plus one (a CPU above
/// that, should one ever run a thread, finds no copy: the bound check inside every critical
/// section sends it to the fallback path). Cached in an atomic; allocation-free.
pub fn nr_possible_cpus() -> usize {
    static NR: AtomicUsize = AtomicUsize::new(0);
    let n = NR.load(Ordering::Relaxed);
    if n != 0 {
        return n;
    }
    let n = possible_from_sysfs().unwrap_or_else(possible_from_affinity).clamp(1, MAX_CPU_ID as usize + 1);
    NR.store(n, Ordering::Relaxed);
    n
}

/// The possible CPUs, from `/sys/devices/system/cpu/possible` (when unreadable: `0..`
/// [`nr_possible_cpus`]). Never empty. Allocates the list on first use (racing first
/// callers each build it; one is kept), so it is for reports and set-up, not for paths a
/// signal handler or an allocator can reach.
pub fn possible_cpus() -> &'static [u32] {
    static LIST: AtomicPtr<Vec<u32>> = AtomicPtr::new(core::ptr::null_mut());
    let p = LIST.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: a published list is a leaked Box that is never freed or changed.
        return unsafe { &*p };
    }
    let cpus = match read_cpu_list(POSSIBLE_PATH) {
        Ok(cpus) if !cpus.is_empty() && cpus.last().map(|&m| m as usize + 1) == Some(nr_possible_cpus()) => cpus,
        _ => (0..nr_possible_cpus() as u32).collect(),
    };
    let mine = Box::into_raw(Box::new(cpus));
    match LIST.compare_exchange(core::ptr::null_mut(), mine, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: just published, never freed.
        Ok(_) => unsafe { &*mine },
        Err(theirs) => {
            // SAFETY: `mine` was never shared; `theirs` is a published list.
            unsafe {
                drop(Box::from_raw(mine));
                &*theirs
            }
        }
    }
}

/// The CPUs online now, from `/sys/devices/system/cpu/online` (read on every call:
/// hotplug changes it).
pub fn online_cpus() -> io::Result<Vec<u32>> {
    read_cpu_list(ONLINE_PATH)
}

type MaskWord = libc::c_ulong;
const WORD_BITS: usize = MaskWord::BITS as usize;

fn mask_words(bits: usize) -> usize {
    bits.div_ceil(WORD_BITS).max(1)
}

/// The CPUs the calling thread may run on (`sched_getaffinity(0, ...)`), for any number
/// of CPUs: the mask is sized from [`nr_possible_cpus`] and grown while the kernel
/// answers `EINVAL` (mask smaller than its CPU count).
pub fn allowed_cpus() -> io::Result<Vec<u32>> {
    let max_words = mask_words(MAX_CPU_ID as usize + 1);
    let mut words = mask_words(nr_possible_cpus());
    loop {
        let mut mask: Vec<MaskWord> = vec![0; words];
        // SAFETY: `mask` is writable for `words * size_of::<MaskWord>()` bytes, the size
        // passed; the kernel writes at most that many bytes. cpu_set_t is only a bit array,
        // so a larger buffer behind the pointer is what the size argument describes.
        let r = unsafe { libc::sched_getaffinity(0, words * size_of::<MaskWord>(), mask.as_mut_ptr().cast()) };
        if r == 0 {
            let mut cpus = Vec::new();
            for (w, &word) in mask.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    cpus.push((w * WORD_BITS + b) as u32);
                    bits &= bits - 1;
                }
            }
            return Ok(cpus);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINVAL) && words < max_words {
            words = (words * 2).min(max_words);
            continue;
        }
        return Err(err);
    }
}

/// Restricts the calling thread to `cpus` (`sched_setaffinity(0, ...)`), for any number
/// of CPUs. An empty slice or an id above [`MAX_CPU_ID`] gives `InvalidInput`; a set
/// with no usable CPU gives the kernel's `EINVAL`.
pub fn set_thread_affinity(cpus: &[u32]) -> io::Result<()> {
    let Some(&max) = cpus.iter().max() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty CPU set for thread affinity"));
    };
    if max > MAX_CPU_ID {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {max} is above the sanity bound {MAX_CPU_ID}"),
        ));
    }
    let words = mask_words(nr_possible_cpus().max(max as usize + 1));
    let mut mask: Vec<MaskWord> = vec![0; words];
    for &cpu in cpus {
        let cpu = cpu as usize;
        mask[cpu / WORD_BITS] |= 1 << (cpu % WORD_BITS);
    }
    // SAFETY: `mask` is readable for `words * size_of::<MaskWord>()` bytes, the size passed.
    let r = unsafe { libc::sched_setaffinity(0, words * size_of::<MaskWord>(), mask.as_ptr().cast()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The CPU the calling thread runs on now (`sched_getcpu`), `None` on error. The answer
/// may be stale as soon as it is returned.
pub fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).ok()
}

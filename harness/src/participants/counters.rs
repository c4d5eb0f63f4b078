//! The counters adapter: `libpcounters.so` through its C API (`libs/counters/include/pcounters.h`),
//! found with `dlsym` at run time; no link-time dependency.
//!
//! The adapter keeps its own ledger: every add of a work unit is summed on the calling
//! thread and folded into one atomic per counter before the unit ends, so a quiesced check
//! compares each counter's value with the exact sum of every add that returned OK.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use anyhow::{anyhow, Result};
use libloading::os::unix::Library;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{CheckOk, Counts, Memory, Participant, SetupConfig, ThreadMode};
use crate::scenario::IndexMode;

const OK: c_int = 0;
const ENOENT: c_int = -2;
const ERANGE: c_int = -7;
const INDEX_CPU_ID: c_int = 0;
const INDEX_MM_CID: c_int = 1;
const NAME_MAX: usize = 127;

/// Counters every work unit adds to.
const SHARED: usize = 12;

/// `pcounters_counter`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Handle {
    id: u64,
}

/// `pcounters_value`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Value {
    counter: Handle,
    value: i64,
    name: [c_char; NAME_MAX + 1],
}

/// `pcounters_rseq_statistics`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RseqStats {
    aborts: u64,
    fallback_ops: u64,
    registered_by_us: u64,
    registered_by_peer: u64,
    registration_failures: u64,
}

type CreateFn = unsafe extern "C" fn(*const c_char, c_int, *mut Handle) -> c_int;
type LookupFn = unsafe extern "C" fn(*const c_char, *mut Handle) -> c_int;
type AddFn = unsafe extern "C" fn(Handle, i64) -> c_int;
type GetFn = unsafe extern "C" fn(Handle, *mut i64) -> c_int;
type DeleteFn = unsafe extern "C" fn(Handle) -> c_int;
type IndexFn = unsafe extern "C" fn(Handle, *mut c_int) -> c_int;
type CountFn = unsafe extern "C" fn() -> usize;
type SnapshotFn = unsafe extern "C" fn(*mut Value, usize, *mut usize) -> c_int;
type PrometheusFn = unsafe extern "C" fn(*mut c_char, usize, *mut usize) -> c_int;
type ModeFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type StatsFn = unsafe extern "C" fn(*mut RseqStats) -> c_int;
type ForceFn = unsafe extern "C" fn(c_int) -> c_int;
type StrerrorFn = unsafe extern "C" fn(c_int) -> *const c_char;
type VersionFn = unsafe extern "C" fn() -> *const c_char;
type MemoryFn = unsafe extern "C" fn(*mut u64, *mut u64) -> c_int;

struct Api {
    create: CreateFn,
    lookup: LookupFn,
    add: AddFn,
    get: GetFn,
    delete: DeleteFn,
    index: IndexFn,
    count: CountFn,
    snapshot: SnapshotFn,
    prometheus: PrometheusFn,
    mode: ModeFn,
    stats: StatsFn,
    force: ForceFn,
    strerror: StrerrorFn,
    /// `pcounters_memory`, in libraries that have it (looked up optionally).
    memory: Option<MemoryFn>,
}

/// One loaded copy of libpcounters and the adapter's ledger.
pub struct CountersAdapter {
    api: Api,
    name: String,
    index: IndexMode,
    shared: Vec<(String, Handle)>,
    expected: Vec<AtomicI64>,
    adds: AtomicU64,
    private_seq: AtomicU64,
    /// Live counters found when this copy was loaded (a fresh copy has none).
    count_at_load: usize,
    /// Values of the shared counters right after they were created.
    initial_values: Vec<i64>,
    _lib: Library,
}

fn symbol<T: Copy>(lib: &Library, path: &Path, name: &str) -> Result<T> {
    let cname = format!("{name}\0");
    // SAFETY: the symbol is used with the C type pcounters.h gives it.
    unsafe { lib.get::<T>(cname.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| anyhow!("{} does not export {name} (pcounters.h): {e}", path.display()))
}

impl CountersAdapter {
    /// Finds the API and creates the shared counters.
    pub fn new(lib: Library, path: &Path, cfg: &SetupConfig) -> Result<CountersAdapter> {
        let api = Api {
            create: symbol(&lib, path, "pcounters_create")?,
            lookup: symbol(&lib, path, "pcounters_lookup")?,
            add: symbol(&lib, path, "pcounters_add")?,
            get: symbol(&lib, path, "pcounters_get")?,
            delete: symbol(&lib, path, "pcounters_delete")?,
            index: symbol(&lib, path, "pcounters_index")?,
            count: symbol(&lib, path, "pcounters_count")?,
            snapshot: symbol(&lib, path, "pcounters_snapshot")?,
            prometheus: symbol(&lib, path, "pcounters_prometheus")?,
            mode: symbol(&lib, path, "pcounters_rseq_mode")?,
            stats: symbol(&lib, path, "pcounters_rseq_stats")?,
            force: symbol(&lib, path, "pcounters_force_fallback")?,
            strerror: symbol(&lib, path, "pcounters_strerror")?,
            // SAFETY: the symbol is used with the C type pcounters.h gives it.
            memory: unsafe { lib.get::<MemoryFn>(b"pcounters_memory\0") }.ok().map(|s| *s),
        };
        let version: VersionFn = symbol(&lib, path, "pcounters_version")?;
        // SAFETY: a static NUL-terminated string per pcounters.h (NULL checked).
        let v = unsafe {
            let p = version();
            if p.is_null() {
                "?".to_string()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let mut a = CountersAdapter {
            api,
            name: format!("pcounters {v}"),
            index: cfg.index,
            shared: Vec::new(),
            expected: (0..SHARED).map(|_| AtomicI64::new(0)).collect(),
            adds: AtomicU64::new(0),
            private_seq: AtomicU64::new(0),
            count_at_load: 0,
            initial_values: Vec::new(),
            _lib: lib,
        };
        // SAFETY: pcounters_count takes no arguments.
        a.count_at_load = unsafe { (a.api.count)() };
        for i in 0..SHARED {
            let name = format!("harness_shared_{i}");
            let h = a.create(&name, a.index_code()).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            a.initial_values.push(a.get(h).map_err(|e| anyhow!("{}: {e}", path.display()))?);
            a.shared.push((name, h));
        }
        Ok(a)
    }

    fn index_code(&self) -> c_int {
        match self.index {
            IndexMode::CpuId => INDEX_CPU_ID,
            IndexMode::MmCid => INDEX_MM_CID,
        }
    }

    fn err(&self, code: c_int) -> String {
        // SAFETY: pcounters_strerror returns a static string for any code (NULL checked).
        let s = unsafe {
            let p = (self.api.strerror)(code);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        format!("{code} ({s})")
    }

    fn create(&self, name: &str, index: c_int) -> Result<Handle, String> {
        let c = CString::new(name).map_err(|_| "counter name with NUL".to_string())?;
        let mut h = Handle { id: 0 };
        // SAFETY: NUL-terminated name and a writable handle.
        let r = unsafe { (self.api.create)(c.as_ptr(), index, &mut h) };
        if r != OK {
            return Err(format!("pcounters_create({name}) returned {}", self.err(r)));
        }
        Ok(h)
    }

    fn get(&self, h: Handle) -> Result<i64, String> {
        let mut v = 0i64;
        // SAFETY: writable value.
        let r = unsafe { (self.api.get)(h, &mut v) };
        if r != OK {
            return Err(format!("pcounters_get returned {}", self.err(r)));
        }
        Ok(v)
    }

    fn add(&self, h: Handle, amount: i64) -> c_int {
        // SAFETY: plain values; the library validates the handle.
        unsafe { (self.api.add)(h, amount) }
    }

    /// A counter only this thread uses: its sum must be exact right away, and it must be
    /// refused after its deletion.
    fn private_counter(&self, rng: &mut ChaCha8Rng) -> Result<(), String> {
        let n = self.private_seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("harness_private_{}_{n}", crate::cpu::gettid());
        let index = if rng.random() { INDEX_CPU_ID } else { INDEX_MM_CID };
        let h = self.create(&name, index)?;
        let mut sum = 0i64;
        let n = rng.random_range(1..32);
        for _ in 0..n {
            let a = rng.random_range(-1000..1000i64);
            let r = self.add(h, a);
            if r != OK {
                return Err(format!("pcounters_add on private counter {name} returned {}", self.err(r)));
            }
            sum = sum.wrapping_add(a);
        }
        self.adds.fetch_add(n, Ordering::Relaxed);
        let v = self.get(h)?;
        if v != sum {
            return Err(format!("private counter {name} reads {v}, its only thread added {sum} (off by {})", v - sum));
        }
        // SAFETY: plain value.
        let r = unsafe { (self.api.delete)(h) };
        if r != OK {
            return Err(format!("pcounters_delete({name}) returned {}", self.err(r)));
        }
        let r = self.add(h, 1);
        if r != ENOENT {
            return Err(format!("pcounters_add on deleted counter {name} returned {} instead of ENOENT", self.err(r)));
        }
        Ok(())
    }

    /// Snapshot and Prometheus text while other threads add: well-formed and complete.
    fn exports(&self) -> Result<(), String> {
        let mut count = 0usize;
        // SAFETY: capacity 0 with a NULL array asks for the count.
        let r = unsafe { (self.api.snapshot)(std::ptr::null_mut(), 0, &mut count) };
        if r != OK && r != ERANGE {
            return Err(format!("pcounters_snapshot(count) returned {}", self.err(r)));
        }
        let cap = count + 8;
        let mut vals: Vec<Value> = Vec::with_capacity(cap);
        // SAFETY: `vals` has room for `cap` values; the library writes at most that many and
        // reports how many exist.
        let r = unsafe { (self.api.snapshot)(vals.as_mut_ptr(), cap, &mut count) };
        if r == OK {
            // SAFETY: the library wrote `count` (<= cap) values.
            unsafe { vals.set_len(count.min(cap)) };
            let names: Vec<String> = vals
                .iter()
                .map(|v| {
                    // SAFETY: names are NUL-terminated within the array.
                    unsafe { CStr::from_ptr(v.name.as_ptr()) }.to_string_lossy().into_owned()
                })
                .collect();
            for (n, _) in &self.shared {
                if !names.iter().any(|x| x == n) {
                    return Err(format!("snapshot of {} counters lacks {n}", names.len()));
                }
            }
            if !names.windows(2).all(|w| w[0] <= w[1]) {
                return Err("snapshot not sorted by name".into());
            }
        } else if r != ERANGE {
            return Err(format!("pcounters_snapshot returned {}", self.err(r)));
        }
        let mut len = 0usize;
        // SAFETY: size 0 with NULL asks for the length.
        let r = unsafe { (self.api.prometheus)(std::ptr::null_mut(), 0, &mut len) };
        if r != OK && r != ERANGE {
            return Err(format!("pcounters_prometheus(length) returned {}", self.err(r)));
        }
        let mut buf = vec![0u8; len + 4096];
        // SAFETY: `buf` is writable for its length.
        let r = unsafe { (self.api.prometheus)(buf.as_mut_ptr().cast(), buf.len(), &mut len) };
        if r == OK {
            let text = String::from_utf8_lossy(&buf[..len.min(buf.len())]);
            for (n, _) in &self.shared {
                // A counter that received a negative add is exported as a gauge.
                if !text.contains(&format!("# TYPE {n} counter\n{n} "))
                    && !text.contains(&format!("# TYPE {n} gauge\n{n} "))
                {
                    return Err(format!("prometheus text lacks counter {n}"));
                }
            }
        } else if r != ERANGE {
            return Err(format!("pcounters_prometheus returned {}", self.err(r)));
        }
        Ok(())
    }

    fn exact_sums(&self) -> Result<CheckOk, String> {
        let mut facts = 0;
        let mut total = 0i64;
        for (i, (name, h)) in self.shared.iter().enumerate() {
            let v = self.get(*h).map_err(|e| format!("{name}: {e}"))?;
            let want = self.expected[i].load(Ordering::SeqCst).wrapping_add(self.initial_values[i]);
            if v != want {
                return Err(format!(
                    "counter {name} reads {v} but the adds that returned OK sum to {want} (off by {})",
                    v.wrapping_sub(want)
                ));
            }
            total = total.wrapping_add(v);
            facts += 1;
            let mut idx: c_int = -1;
            // SAFETY: writable int.
            let r = unsafe { (self.api.index)(*h, &mut idx) };
            let ok_idx = match self.index {
                IndexMode::CpuId => idx == INDEX_CPU_ID,
                IndexMode::MmCid => idx == INDEX_MM_CID || (idx == INDEX_CPU_ID && rseq::feature_size() < 28),
            };
            if r != OK || !ok_idx {
                return Err(format!(
                    "pcounters_index({name}) = {idx} (returned {}), asked {}",
                    self.err(r),
                    self.index.name()
                ));
            }
            facts += 1;
        }
        // SAFETY: no arguments.
        let live = unsafe { (self.api.count)() };
        if live != self.shared.len() {
            return Err(format!(
                "{live} live counters while quiescent, expected the {} shared ones",
                self.shared.len()
            ));
        }
        facts += 1;
        Ok(CheckOk { checked: facts, what: format!("exact sums of {} counters (total {total})", self.shared.len()) })
    }
}

impl Participant for CountersAdapter {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "counters"
    }

    fn work(&self, seed: u64) -> Result<(), String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut delta = [0i64; SHARED];
        let n = rng.random_range(16..96);
        let mut err = None;
        let mut done = 0;
        for _ in 0..n {
            let i = rng.random_range(0..SHARED);
            let a = if rng.random_ratio(1, 8) { -rng.random_range(1..100i64) } else { rng.random_range(1..1000i64) };
            let r = self.add(self.shared[i].1, a);
            if r == OK {
                delta[i] = delta[i].wrapping_add(a);
                done += 1;
            } else if err.is_none() {
                err = Some(format!("pcounters_add({}) returned {}", self.shared[i].0, self.err(r)));
            }
        }
        for (i, d) in delta.iter().enumerate() {
            if *d != 0 {
                self.expected[i].fetch_add(*d, Ordering::SeqCst);
            }
        }
        self.adds.fetch_add(done, Ordering::Relaxed);
        if let Some(e) = err {
            return Err(e);
        }
        if rng.random_ratio(1, 16) {
            self.private_counter(&mut rng)?;
        }
        if rng.random_ratio(1, 512) {
            self.exports()?;
        }
        Ok(())
    }

    fn check(&self) -> Result<CheckOk, String> {
        self.exact_sums()
    }

    fn report(&self) -> Counts {
        let mut s = RseqStats::default();
        // SAFETY: writable statistics.
        unsafe { (self.api.stats)(&mut s) };
        Counts {
            ops: self.adds.load(Ordering::Relaxed),
            aborts: s.aborts,
            fallback_ops: s.fallback_ops,
            registered_by_us: s.registered_by_us,
            registered_by_peer: s.registered_by_peer,
            registration_failures: s.registration_failures,
        }
    }

    fn memory(&self) -> Option<Memory> {
        let f = self.api.memory?;
        let (mut resident, mut reserved) = (0u64, 0u64);
        // SAFETY: two writable u64, as pcounters.h says.
        let r = unsafe { f(&mut resident, &mut reserved) };
        (r == 0).then_some(Memory { resident_bytes: resident, reserved_bytes: reserved })
    }

    fn index_used(&self) -> Option<&'static str> {
        let (_, h) = self.shared.first()?;
        let mut idx: c_int = -1;
        // SAFETY: writable int.
        let r = unsafe { (self.api.index)(*h, &mut idx) };
        match (r, idx) {
            (OK, INDEX_CPU_ID) => Some("cpu_id"),
            (OK, INDEX_MM_CID) => Some("mm_cid"),
            _ => None,
        }
    }

    fn thread_mode(&self) -> ThreadMode {
        let mut err: c_int = 0;
        // SAFETY: writable int.
        let m = unsafe { (self.api.mode)(&mut err) };
        match m {
            1 => ThreadMode::LibcOwned,
            // PCOUNTERS_MODE_REGISTERED (2; named REGISTERED_BY_US before 0.2, when 3 meant
            // "by a peer" and was reported as such).
            2 => ThreadMode::Registered,
            3 => ThreadMode::RegisteredByPeer,
            4 => ThreadMode::Unavailable { errno: err },
            5 => ThreadMode::Disabled,
            other => ThreadMode::Unknown(other as i64),
        }
    }

    fn registers_lazily(&self) -> bool {
        true
    }

    fn force_fallback(&self, on: bool) -> bool {
        // SAFETY: plain value.
        unsafe { (self.api.force)(c_int::from(on)) == OK }
    }

    fn fork_child(&self, seed: u64) -> Result<CheckOk, String> {
        // Every handle still works in the child (values: whatever they were at the fork).
        for (name, h) in &self.shared {
            self.get(*h).map_err(|e| format!("shared counter {name} in the child: {e}"))?;
            let c = CString::new(name.as_str()).unwrap_or_default();
            let mut found = Handle { id: 0 };
            // SAFETY: NUL-terminated name, writable handle.
            let r = unsafe { (self.api.lookup)(c.as_ptr(), &mut found) };
            if r != OK || found != *h {
                return Err(format!("pcounters_lookup({name}) in the child returned {}", self.err(r)));
            }
        }
        // A fresh counter in the child: exact at once.
        // SAFETY: getpid has no preconditions.
        let name = format!("harness_fork_child_{}", unsafe { libc::getpid() });
        let h = self.create(&name, self.index_code())?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut sum = 0i64;
        for _ in 0..1000 {
            let a = rng.random_range(-10..1000i64);
            let r = self.add(h, a);
            if r != OK {
                return Err(format!("pcounters_add in the child returned {}", self.err(r)));
            }
            sum = sum.wrapping_add(a);
        }
        let v = self.get(h)?;
        if v != sum {
            return Err(format!("counter {name} reads {v} in the child, which added {sum}"));
        }
        for _ in 0..8 {
            self.work(rng.random())?;
        }
        Ok(CheckOk { checked: 1 + self.shared.len() as u64, what: "fresh counter exact in the child".into() })
    }

    fn fork_needs_quiescence(&self) -> bool {
        false
    }

    fn before_unload(&self) -> Result<CheckOk, String> {
        self.exact_sums().map(|c| CheckOk { what: format!("before unload: {}", c.what), ..c })
    }

    fn fresh_after_reload(&self) -> Result<CheckOk, String> {
        if self.count_at_load != 0 {
            return Err(format!(
                "a fresh load found {} live counters from the unloaded copy (expected none)",
                self.count_at_load
            ));
        }
        if let Some((i, v)) = self.initial_values.iter().enumerate().find(|(_, v)| **v != 0) {
            return Err(format!("counter {} starts at {v} after a fresh load, expected 0", self.shared[i].0));
        }
        Ok(CheckOk { checked: 1 + self.shared.len() as u64, what: "fresh load starts from zero".into() })
    }

    fn teardown(&self) {
        // Nothing to free: the counters go away with the library's registry at the unload,
        // which is what `fresh_after_reload` checks on the next load.
    }
}

/// The registry's constructor of this adapter.
pub fn open(lib: Library, path: &Path, cfg: &SetupConfig) -> Result<Box<dyn Participant>> {
    Ok(Box::new(CountersAdapter::new(lib, path, cfg)?))
}

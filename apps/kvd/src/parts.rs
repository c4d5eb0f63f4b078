//! The parts a stack is made of: the index (hash -> item pointer, with its read sections and
//! deferred reclamation), the statistics counters, and the locks of the eviction shards.
//! Each is an enum over the three stacks, so that the server code above is the same for all.

use std::cell::UnsafeCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    Ours,
    Naive,
    Strong,
}

impl Stack {
    pub fn name(self) -> &'static str {
        match self {
            Stack::Ours => "ours",
            Stack::Naive => "naive",
            Stack::Strong => "strong",
        }
    }
    pub fn parse(s: &str) -> Option<Stack> {
        match s {
            "ours" => Some(Stack::Ours),
            "naive" => Some(Stack::Naive),
            "strong" => Some(Stack::Strong),
            _ => None,
        }
    }
}

// ---- The project's libraries, loaded from the executable's directory -------------------

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PcCounter {
    id: u64,
}

/// Function pointers into libprcu.so, libplocks.so and libpcounters.so (C ABI).
pub struct OursLibs {
    pub dir: PathBuf,
    prcu_read_lock: unsafe extern "C" fn() -> u64,
    prcu_read_unlock: unsafe extern "C" fn(u64) -> c_int,
    prcu_call: unsafe extern "C" fn(unsafe extern "C" fn(*mut c_void), *mut c_void) -> c_int,
    prcu_map_create: unsafe extern "C" fn(usize) -> *mut c_void,
    prcu_map_lookup: unsafe extern "C" fn(*const c_void, u64, *mut u64) -> c_int,
    prcu_map_insert: unsafe extern "C" fn(*mut c_void, u64, u64) -> c_int,
    prcu_map_replace: unsafe extern "C" fn(*mut c_void, u64, u64, *mut u64) -> c_int,
    prcu_map_remove: unsafe extern "C" fn(*mut c_void, u64, *mut u64) -> c_int,
    plock_mutex_create: unsafe extern "C" fn() -> *mut c_void,
    plock_mutex_count: unsafe extern "C" fn(*const c_void) -> c_int,
    plock_mutex_lock: unsafe extern "C" fn(*const c_void) -> c_int,
    plock_mutex_trylock_index: unsafe extern "C" fn(*const c_void, c_int) -> c_int,
    plock_mutex_unlock: unsafe extern "C" fn(*const c_void, c_int) -> c_int,
    plock_version: unsafe extern "C" fn() -> *const c_char,
    pcounters_create: unsafe extern "C" fn(*const c_char, c_int, *mut PcCounter) -> c_int,
    pcounters_add: unsafe extern "C" fn(PcCounter, i64) -> c_int,
    pcounters_get: unsafe extern "C" fn(PcCounter, *mut i64) -> c_int,
    pcounters_prometheus: unsafe extern "C" fn(*mut c_char, usize, *mut usize) -> c_int,
    pcounters_version: unsafe extern "C" fn() -> *const c_char,
}

/// The header version of libprcu the server was written against (libprcu exports no version
/// function; `stats` shows this and the path the library was loaded from).
pub const PRCU_HEADER_VERSION: &str = "0.1.0";

static OURS: OnceLock<OursLibs> = OnceLock::new();

/// The directory holding the running executable (where cargo puts the .so files).
pub fn exe_dir() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_else(|| PathBuf::from("."))
}

macro_rules! sym {
    ($lib:expr, $name:literal) => {{
        // SAFETY: the symbol's type is the one declared in the library's C header
        // (libs/*/include/*.h); the library stays loaded for the whole process (leaked).
        let s = unsafe { $lib.get(concat!($name, "\0").as_bytes()) }.map_err(|e| format!("{}: {e}", $name))?;
        *s
    }};
}

fn open(dir: &Path, name: &str) -> Result<&'static libloading::Library, String> {
    let path = dir.join(name);
    if !path.exists() {
        return Err(format!("{} not found (build the workspace first: cargo build --workspace)", path.display()));
    }
    // SAFETY: loading runs the library's initialisers; the project's libraries are built to
    // be loaded with dlopen in any order (their READMEs: dlopen / dlclose).
    let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Box::leak(Box::new(lib)))
}

/// Loads the three libraries (once); an error names the missing file or symbol.
pub fn ours_libs() -> Result<&'static OursLibs, String> {
    if let Some(l) = OURS.get() {
        return Ok(l);
    }
    let dir = exe_dir();
    let rcu = open(&dir, "libprcu.so")?;
    let locks = open(&dir, "libplocks.so")?;
    let ctr = open(&dir, "libpcounters.so")?;
    let libs = OursLibs {
        dir: dir.clone(),
        prcu_read_lock: sym!(rcu, "prcu_read_lock"),
        prcu_read_unlock: sym!(rcu, "prcu_read_unlock"),
        prcu_call: sym!(rcu, "prcu_call"),
        prcu_map_create: sym!(rcu, "prcu_map_create"),
        prcu_map_lookup: sym!(rcu, "prcu_map_lookup"),
        prcu_map_insert: sym!(rcu, "prcu_map_insert"),
        prcu_map_replace: sym!(rcu, "prcu_map_replace"),
        prcu_map_remove: sym!(rcu, "prcu_map_remove"),
        plock_mutex_create: sym!(locks, "plock_mutex_create"),
        plock_mutex_count: sym!(locks, "plock_mutex_count"),
        plock_mutex_lock: sym!(locks, "plock_mutex_lock"),
        plock_mutex_trylock_index: sym!(locks, "plock_mutex_trylock_index"),
        plock_mutex_unlock: sym!(locks, "plock_mutex_unlock"),
        plock_version: sym!(locks, "plock_version"),
        pcounters_create: sym!(ctr, "pcounters_create"),
        pcounters_add: sym!(ctr, "pcounters_add"),
        pcounters_get: sym!(ctr, "pcounters_get"),
        pcounters_prometheus: sym!(ctr, "pcounters_prometheus"),
        pcounters_version: sym!(ctr, "pcounters_version"),
    };
    Ok(OURS.get_or_init(|| libs))
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return "?".into();
    }
    // SAFETY: the libraries' version functions return static NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl OursLibs {
    pub fn plocks_version(&self) -> String {
        // SAFETY: no arguments; returns a static string.
        cstr(unsafe { (self.plock_version)() })
    }
    pub fn pcounters_version(&self) -> String {
        // SAFETY: as above.
        cstr(unsafe { (self.pcounters_version)() })
    }
}

/// The file that defines the process's `malloc` and a name for it, found at run time with
/// dladdr on the symbol the dynamic linker resolved.
pub fn malloc_provider() -> (String, String) {
    // SAFETY: dlsym/dladdr with a valid NUL-terminated name and a zeroed Dl_info out-param.
    let path = unsafe {
        let sym = libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr());
        let mut info: libc::Dl_info = std::mem::zeroed();
        if sym.is_null() || libc::dladdr(sym, &mut info) == 0 || info.dli_fname.is_null() {
            String::from("?")
        } else {
            CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned()
        }
    };
    let file = Path::new(&path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let name = if file.contains("palloc") {
        "palloc"
    } else if file.contains("jemalloc") {
        "jemalloc"
    } else if file.starts_with("libc.so") || file.starts_with("libc-") {
        "glibc"
    } else {
        "other"
    };
    (name.to_string(), path)
}

/// palloc's version when palloc is the process allocator (the drop-in exports it).
pub fn palloc_version() -> Option<String> {
    // SAFETY: dlsym with a valid name; the symbol, if present, is palloc.h's
    // `const char *palloc_version(void)`.
    unsafe {
        let sym = libc::dlsym(libc::RTLD_DEFAULT, c"palloc_version".as_ptr());
        if sym.is_null() {
            return None;
        }
        let f: unsafe extern "C" fn() -> *const c_char = std::mem::transmute(sym);
        Some(cstr(f()))
    }
}

// ---- Counters ---------------------------------------------------------------------------

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Every statistic of the server; `stats` and the Prometheus dump read them.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug)]
        #[repr(usize)]
        pub enum C { $($name),* }
        pub const COUNTER_NAMES: &[&str] = &[$(stringify!($name)),*];
        pub const ALL_COUNTERS: &[C] = &[$(C::$name),*];
    };
}

counters!(
    curr_connections,
    total_connections,
    rejected_connections,
    cmd_get,
    cmd_set,
    cmd_flush,
    cmd_touch,
    get_hits,
    get_misses,
    get_expired,
    get_flushed,
    delete_misses,
    delete_hits,
    incr_misses,
    incr_hits,
    decr_misses,
    decr_hits,
    cas_misses,
    cas_hits,
    cas_badval,
    touch_hits,
    touch_misses,
    bytes_read,
    bytes_written,
    bytes,
    curr_items,
    total_items,
    evictions,
    reclaimed,
);
const NCOUNTERS: usize = COUNTER_NAMES.len();

#[repr(align(64))]
pub struct Padded(AtomicI64);

#[allow(clippy::large_enum_variant)] // one instance per process
pub enum Counters {
    /// libpcounters: one rseq per-CPU add per update.
    Per(&'static OursLibs, [PcCounter; NCOUNTERS]),
    /// One atomic word per counter, each on its own cache line.
    Atomic(Box<[Padded]>),
}

impl Counters {
    pub fn new(stack: Stack) -> Result<Counters, String> {
        match stack {
            Stack::Ours => {
                let l = ours_libs()?;
                let mut hs = [PcCounter { id: 0 }; NCOUNTERS];
                for (h, n) in hs.iter_mut().zip(COUNTER_NAMES) {
                    let name = std::ffi::CString::new(format!("kvd_{n}")).unwrap();
                    // SAFETY: valid NUL-terminated name and out-pointer.
                    let rc = unsafe { (l.pcounters_create)(name.as_ptr(), 0, h) };
                    if rc != 0 {
                        return Err(format!("pcounters_create(kvd_{n}) failed: {rc}"));
                    }
                }
                Ok(Counters::Per(l, hs))
            }
            _ => Ok(Counters::Atomic((0..NCOUNTERS).map(|_| Padded(AtomicI64::new(0))).collect())),
        }
    }

    #[inline]
    pub fn add(&self, c: C, n: i64) {
        match self {
            // SAFETY: a handle pcounters_create returned; counters are never deleted.
            Counters::Per(l, hs) => unsafe {
                (l.pcounters_add)(hs[c as usize], n);
            },
            Counters::Atomic(a) => {
                a[c as usize].0.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    pub fn get(&self, c: C) -> i64 {
        match self {
            Counters::Per(l, hs) => {
                let mut v = 0i64;
                // SAFETY: valid handle and out-pointer.
                unsafe { (l.pcounters_get)(hs[c as usize], &mut v) };
                v
            }
            Counters::Atomic(a) => a[c as usize].0.load(Ordering::Relaxed),
        }
    }

    /// Prometheus text format (0.0.4) of every counter.
    pub fn prometheus(&self) -> String {
        match self {
            Counters::Per(l, _) => {
                let mut len = 0usize;
                // SAFETY: size 0 with a NULL buffer asks for the length.
                unsafe { (l.pcounters_prometheus)(std::ptr::null_mut(), 0, &mut len) };
                loop {
                    let mut buf = vec![0u8; len + 4096];
                    // SAFETY: buf has buf.len() writable bytes.
                    let rc = unsafe { (l.pcounters_prometheus)(buf.as_mut_ptr().cast(), buf.len(), &mut len) };
                    if rc == 0 {
                        buf.truncate(len);
                        return String::from_utf8_lossy(&buf).into_owned();
                    }
                }
            }
            Counters::Atomic(_) => {
                let mut s = String::new();
                let gauges = ["curr_connections", "bytes", "curr_items"];
                for (n, c) in COUNTER_NAMES.iter().zip(ALL_COUNTERS) {
                    let kind = if gauges.contains(n) { "gauge" } else { "counter" };
                    let v = self.get(*c);
                    s.push_str(&format!("# TYPE kvd_{n} {kind}\nkvd_{n} {v}\n"));
                }
                s
            }
        }
    }
}

// ---- Index: u64 hash -> item pointer ----------------------------------------------------

#[cfg(kvd_urcu)]
mod urcu {
    use std::ffi::c_void;
    extern "C" {
        pub fn kvd_urcu_create(initial: std::ffi::c_ulong) -> *mut c_void;
        pub fn kvd_urcu_register_thread();
        pub fn kvd_urcu_unregister_thread();
        pub fn kvd_urcu_read_lock();
        pub fn kvd_urcu_read_unlock();
        pub fn kvd_urcu_lookup(ht: *mut c_void, key: u64) -> u64;
        pub fn kvd_urcu_put(ht: *mut c_void, key: u64, value: u64) -> u64;
        pub fn kvd_urcu_remove(ht: *mut c_void, key: u64) -> u64;
        pub fn kvd_urcu_retire(func: unsafe extern "C" fn(*mut c_void), arg: *mut c_void);
    }
}

pub struct NaiveMap {
    lock: Box<UnsafeCell<libc::pthread_rwlock_t>>,
    map: UnsafeCell<HashMap<u64, u64>>,
}

pub enum Index {
    /// libprcu's RCU hash map; reads in prcu read sections, retired items freed by prcu_call.
    Prcu { l: &'static OursLibs, map: *mut c_void },
    /// liburcu's rculfhash (urcu-memb flavour); retired items freed by call_rcu.
    #[cfg(kvd_urcu)]
    Urcu { ht: *mut c_void },
    /// std HashMap behind a pthread rwlock: readers hold the read lock over lookup and copy,
    /// writers the write lock over every change, so retired items are freed at once.
    Naive(NaiveMap),
}

// SAFETY: the raw pointers are handles of thread-safe C maps; the naive map is only touched
// under its pthread rwlock (shared for lookups, exclusive for changes).
unsafe impl Send for Index {}
// SAFETY: as above.
unsafe impl Sync for Index {}

impl Index {
    pub fn new(stack: Stack) -> Result<Index, String> {
        match stack {
            Stack::Ours => {
                let l = ours_libs()?;
                // SAFETY: plain constructor.
                let map = unsafe { (l.prcu_map_create)(1 << 16) };
                if map.is_null() {
                    return Err("prcu_map_create failed".into());
                }
                Ok(Index::Prcu { l, map })
            }
            #[cfg(kvd_urcu)]
            Stack::Strong => {
                // SAFETY: plain constructor; callable from unregistered threads.
                let ht = unsafe { urcu::kvd_urcu_create(1 << 16) };
                if ht.is_null() {
                    return Err("cds_lfht_new failed".into());
                }
                Ok(Index::Urcu { ht })
            }
            #[cfg(not(kvd_urcu))]
            Stack::Strong => Err("this kvd was built without liburcu (liburcu-dev headers were missing at build time): the `strong` stack is not available".into()),
            Stack::Naive => {
                let lock = Box::new(UnsafeCell::new(libc::PTHREAD_RWLOCK_INITIALIZER));
                Ok(Index::Naive(NaiveMap { lock, map: UnsafeCell::new(HashMap::with_capacity(1 << 16)) }))
            }
        }
    }

    /// Called once by every thread that uses the index (liburcu needs registered threads).
    pub fn register_thread(&self) {
        #[cfg(kvd_urcu)]
        if let Index::Urcu { .. } = self {
            // SAFETY: registers the calling thread with urcu-memb; threads stay registered
            // until the process exits.
            unsafe { urcu::kvd_urcu_register_thread() };
        }
    }

    /// Called by a thread that registered and is about to exit (the server's workers never
    /// do; `--bench-store` threads do): liburcu keeps a registered thread in its list.
    pub fn unregister_thread(&self) {
        #[cfg(kvd_urcu)]
        if let Index::Urcu { .. } = self {
            // SAFETY: the calling thread registered with urcu-memb and is outside any read
            // section.
            unsafe { urcu::kvd_urcu_unregister_thread() };
        }
    }

    /// Opens a read section; items reached inside stay valid until `read_unlock`.
    #[inline]
    pub fn read_lock(&self) -> u64 {
        match self {
            // SAFETY: prcu_read_lock has no preconditions.
            Index::Prcu { l, .. } => unsafe { (l.prcu_read_lock)() },
            #[cfg(kvd_urcu)]
            // SAFETY: the calling thread is registered (register_thread).
            Index::Urcu { .. } => unsafe {
                urcu::kvd_urcu_read_lock();
                0
            },
            Index::Naive(m) => {
                // SAFETY: an initialised rwlock that is never destroyed.
                unsafe { libc::pthread_rwlock_rdlock(m.lock.get()) };
                0
            }
        }
    }

    #[inline]
    pub fn read_unlock(&self, token: u64) {
        match self {
            // SAFETY: the token read_lock returned.
            Index::Prcu { l, .. } => unsafe {
                (l.prcu_read_unlock)(token);
            },
            #[cfg(kvd_urcu)]
            // SAFETY: closes the section read_lock opened.
            Index::Urcu { .. } => unsafe { urcu::kvd_urcu_read_unlock() },
            // SAFETY: the read lock read_lock took.
            Index::Naive(m) => unsafe {
                libc::pthread_rwlock_unlock(m.lock.get());
            },
        }
    }

    /// Brackets every change (naive: the write lock; the RCU maps need nothing).
    #[inline]
    pub fn write_begin(&self) {
        if let Index::Naive(m) = self {
            // SAFETY: an initialised rwlock; the caller pairs it with write_end.
            unsafe { libc::pthread_rwlock_wrlock(m.lock.get()) };
        }
    }

    #[inline]
    pub fn write_end(&self) {
        if let Index::Naive(m) = self {
            // SAFETY: the write lock write_begin took.
            unsafe { libc::pthread_rwlock_unlock(m.lock.get()) };
        }
    }

    /// The pointer stored under `h`, or 0. Inside a read section, or by a writer.
    #[inline]
    pub fn lookup(&self, h: u64) -> u64 {
        match self {
            Index::Prcu { l, map } => {
                let mut v = 0u64;
                // SAFETY: a live map and a valid out-pointer.
                if unsafe { (l.prcu_map_lookup)(*map, h, &mut v) } == 1 {
                    v
                } else {
                    0
                }
            }
            #[cfg(kvd_urcu)]
            // SAFETY: inside a read section of a registered thread.
            Index::Urcu { ht } => unsafe { urcu::kvd_urcu_lookup(*ht, h) },
            // SAFETY: the caller holds the rwlock (shared or exclusive).
            Index::Naive(m) => unsafe { (*m.map.get()).get(&h).copied().unwrap_or(0) },
        }
    }

    /// Sets the pointer under `h` (`v` = 0 removes it). `had` says whether `h` was present.
    /// The caller holds the key stripe of `h` and is between write_begin and write_end.
    pub fn set(&self, h: u64, v: u64, had: bool) {
        match self {
            Index::Prcu { l, map } => {
                let mut old = 0u64;
                // SAFETY: a live map; writers of one key are serialised by the caller.
                let rc = unsafe {
                    match (v, had) {
                        (0, _) => (l.prcu_map_remove)(*map, h, &mut old),
                        (_, true) => (l.prcu_map_replace)(*map, h, v, &mut old),
                        (_, false) => (l.prcu_map_insert)(*map, h, v),
                    }
                };
                assert_eq!(rc, 0, "prcu map update of a key the stripe lock owns failed");
            }
            #[cfg(kvd_urcu)]
            // SAFETY: a live table; the calling thread is registered.
            Index::Urcu { ht } => unsafe {
                if v == 0 {
                    urcu::kvd_urcu_remove(*ht, h);
                } else {
                    urcu::kvd_urcu_put(*ht, h, v);
                }
            },
            // SAFETY: the caller holds the write lock.
            Index::Naive(m) => unsafe {
                let map = &mut *m.map.get();
                if v == 0 {
                    map.remove(&h);
                } else {
                    map.insert(h, v);
                }
            },
        }
    }

    /// Frees `p` with `free` once no reader can hold it.
    pub fn retire(&self, free: unsafe extern "C" fn(*mut c_void), p: *mut c_void) {
        match self {
            Index::Prcu { l, .. } => {
                // SAFETY: free is valid for p after the grace period prcu_call waits for.
                let rc = unsafe { (l.prcu_call)(free, p) };
                assert_eq!(rc, 0);
            }
            #[cfg(kvd_urcu)]
            // SAFETY: as above, with liburcu's call_rcu.
            Index::Urcu { .. } => unsafe { urcu::kvd_urcu_retire(free, p) },
            // SAFETY: the caller holds the write lock, so no reader holds p.
            Index::Naive(_) => unsafe { free(p) },
        }
    }
}

// ---- Eviction shards ----------------------------------------------------------------------

/// An eviction queue entry: the item's hash and cas unique (which names one item version).
pub type Entry = (u64, u64);

pub enum ShardLocks {
    /// libplocks per-CPU mutexes, one queue per possible CPU: a writer takes the lock of the
    /// CPU it runs on (no membarrier); another CPU's lock only by trylock when that queue
    /// holds the oldest entries (an index take: one membarrier).
    Plock { l: &'static OursLibs, m: *mut c_void },
    /// pthread mutexes, one queue per online CPU, picked with sched_getcpu.
    Pthread(Box<[UnsafeCell<libc::pthread_mutex_t>]>),
}

/// Per-CPU clock queues of (hash, cas) entries. `fronts[i]` mirrors the cas of queue i's
/// first entry (u64::MAX when empty), so the evictor can pick the queue holding the oldest
/// entry without taking every lock.
pub struct Shards {
    locks: ShardLocks,
    queues: Box<[UnsafeCell<VecDeque<Entry>>]>,
    fronts: Box<[AtomicU64]>,
}

// SAFETY: queue i is only touched while lock i is held.
unsafe impl Send for Shards {}
// SAFETY: as above.
unsafe impl Sync for Shards {}

impl Shards {
    pub fn new(stack: Stack) -> Result<Shards, String> {
        let (locks, n) = match stack {
            Stack::Ours => {
                let l = ours_libs()?;
                // SAFETY: plain constructor (aborts when out of memory).
                let m = unsafe { (l.plock_mutex_create)() };
                // SAFETY: m is live.
                let n = unsafe { (l.plock_mutex_count)(m) }.max(1) as usize;
                (ShardLocks::Plock { l, m }, n)
            }
            _ => {
                let n = std::thread::available_parallelism().map_or(1, |n| n.get());
                let locks = (0..n).map(|_| UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER)).collect();
                (ShardLocks::Pthread(locks), n)
            }
        };
        Ok(Shards {
            locks,
            queues: (0..n).map(|_| UnsafeCell::new(VecDeque::new())).collect(),
            fronts: (0..n).map(|_| AtomicU64::new(u64::MAX)).collect(),
        })
    }

    /// Takes the current CPU's lock; returns its index.
    fn lock_current(&self) -> usize {
        match &self.locks {
            ShardLocks::Plock { l, m } => {
                // SAFETY: m is live; the caller unlocks the index.
                let idx = unsafe { (l.plock_mutex_lock)(*m) };
                assert!(idx >= 0, "plock_mutex_lock failed: {idx}");
                idx as usize
            }
            ShardLocks::Pthread(q) => {
                // SAFETY: sched_getcpu has no preconditions; the mutex is initialised, never
                // moved or destroyed, and the caller unlocks it.
                unsafe {
                    let cpu = libc::sched_getcpu().max(0) as usize % q.len();
                    libc::pthread_mutex_lock(q[cpu].get());
                    cpu
                }
            }
        }
    }

    fn try_lock(&self, i: usize) -> bool {
        match &self.locks {
            // SAFETY: m is live; i < count.
            ShardLocks::Plock { l, m } => unsafe { (l.plock_mutex_trylock_index)(*m, i as c_int) == 0 },
            // SAFETY: as in lock_current.
            ShardLocks::Pthread(q) => unsafe { libc::pthread_mutex_trylock(q[i].get()) == 0 },
        }
    }

    fn unlock(&self, i: usize) {
        match &self.locks {
            // SAFETY: lock i is held by this thread.
            ShardLocks::Plock { l, m } => unsafe {
                (l.plock_mutex_unlock)(*m, i as c_int);
            },
            // SAFETY: lock i is held by this thread.
            ShardLocks::Pthread(q) => unsafe {
                libc::pthread_mutex_unlock(q[i].get());
            },
        }
    }

    /// Runs f on queue i, whose lock the caller holds, and refreshes its front mirror.
    fn with<R>(&self, i: usize, f: impl FnOnce(&mut VecDeque<Entry>) -> R) -> R {
        // SAFETY: the caller holds lock i, the only way to reach queue i.
        let q = unsafe { &mut *self.queues[i].get() };
        let r = f(q);
        self.fronts[i].store(q.front().map_or(u64::MAX, |e| e.1), Ordering::Relaxed);
        r
    }

    /// Appends entries to the current CPU's queue.
    pub fn push(&self, entries: &[Entry]) {
        let i = self.lock_current();
        self.with(i, |q| q.extend(entries.iter().copied()));
        self.unlock(i);
    }

    /// Puts entries back at the front of queue i (in their order).
    pub fn push_front(&self, i: usize, entries: &[Entry]) {
        let idx = if self.try_lock(i) { i } else { self.lock_current() };
        self.with(idx, |q| {
            for e in entries.iter().rev() {
                q.push_front(*e);
            }
        });
        self.unlock(idx);
    }

    /// Pops up to `max` entries from the queue whose first entry is the oldest (falling back
    /// to the current CPU's queue when that lock is busy). Returns the queue's index.
    pub fn pop_batch(&self, max: usize, out: &mut Vec<Entry>) -> usize {
        let best = (0..self.fronts.len()).min_by_key(|&i| self.fronts[i].load(Ordering::Relaxed)).unwrap_or(0);
        let cur = self.lock_current();
        let idx = if cur == best {
            cur
        } else {
            self.unlock(cur);
            if self.try_lock(best) {
                best
            } else {
                self.lock_current()
            }
        };
        self.with(idx, |q| {
            let n = max.min(q.len());
            out.extend(q.drain(..n));
        });
        self.unlock(idx);
        idx
    }
}

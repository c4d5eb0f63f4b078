//! Adapter for libprcu (`libs/rcu`, `prcu.h`): workers read RCU structures and, one unit in
//! eight, write them.
//!
//! - A version pointer (`prcu_ptr_*`): readers dereference it inside a read section and
//!   check that the version is live (not poisoned); writers publish a fresh version and
//!   retire the old one through `prcu_ptr_exchange_retire` or through `prcu_synchronize` /
//!   the polling API. The reclaim records whether the grace-period cookie taken at retire
//!   time had elapsed (reclaimed after its grace period, not before) and counts each
//!   version's reclaims (exactly once), then poisons it. Poisoned versions stay in a
//!   quarantine for a while, so that a reader that saw one reads poison, not reused memory.
//! - A map (`prcu_map_*`): keys 0..16 are present throughout with value `7·key`; keys
//!   1000..1512 are inserted and removed by writers, who keep the ledger of what they left.
//!
//! Quiesced check (after `prcu_barrier`): no reader saw poison or a missing stable key,
//! every retired version was reclaimed exactly once and after its grace period, the map
//! holds exactly the ledger's keys.

use std::collections::BTreeSet;
use std::ffi::{c_int, c_void};
use std::path::Path;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, Result};
use libloading::os::unix::Library;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{CheckOk, Counts, Participant, SetupConfig, ThreadMode};
use crate::scenario::IndexMode;

const LIVE: u64 = 0x6c69_7665;
const POISON: u64 = 0xdead_beef_dead_beef;
const STABLE: u64 = 16;
const DYN_BASE: u64 = 1000;
const DYN_KEYS: u64 = 512;

type LockFn = unsafe extern "C" fn() -> u64;
type UnlockFn = unsafe extern "C" fn(u64) -> c_int;
type VoidFn = unsafe extern "C" fn();
type CookieFn = unsafe extern "C" fn() -> u64;
type PollFn = unsafe extern "C" fn(u64) -> c_int;
type PollWaitFn = unsafe extern "C" fn(u64);
type CallFn = unsafe extern "C" fn(Option<unsafe extern "C" fn(*mut c_void)>, *mut c_void) -> c_int;
type DerefFn = unsafe extern "C" fn(*mut *mut c_void) -> *mut c_void;
type ExchangeFn = unsafe extern "C" fn(*mut *mut c_void, *mut c_void) -> *mut c_void;
type RetireFn = unsafe extern "C" fn(*mut *mut c_void, *mut c_void, Option<unsafe extern "C" fn(*mut c_void)>) -> c_int;
type MapCreateFn = unsafe extern "C" fn(usize) -> *mut c_void;
type MapDestroyFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type MapLookupFn = unsafe extern "C" fn(*const c_void, u64, *mut u64) -> c_int;
type MapKvFn = unsafe extern "C" fn(*mut c_void, u64, u64) -> c_int;
type MapRemoveFn = unsafe extern "C" fn(*mut c_void, u64, *mut u64) -> c_int;
type MapLenFn = unsafe extern "C" fn(*const c_void) -> usize;
type SetIndexFn = unsafe extern "C" fn(c_int) -> c_int;
type IndexFn = unsafe extern "C" fn() -> c_int;
type ModeFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type StatsFn = unsafe extern "C" fn(*mut RseqStats) -> c_int;
type ForceFn = unsafe extern "C" fn(c_int) -> c_int;

#[repr(C)]
#[derive(Default)]
struct RseqStats {
    aborts: u64,
    fallback_ops: u64,
    registered_by_us: u64,
    registered_by_peer: u64,
    registration_failures: u64,
}

#[derive(Clone, Copy)]
struct Api {
    lock: LockFn,
    unlock: UnlockFn,
    synchronize: VoidFn,
    barrier: VoidFn,
    cookie: CookieFn,
    poll: PollFn,
    poll_wait: PollWaitFn,
    call: CallFn,
    deref: DerefFn,
    exchange: ExchangeFn,
    retire: RetireFn,
    map_create: MapCreateFn,
    map_destroy: MapDestroyFn,
    map_lookup: MapLookupFn,
    map_insert: MapKvFn,
    map_remove: MapRemoveFn,
    map_len: MapLenFn,
    index: IndexFn,
    mode: ModeFn,
    stats: StatsFn,
    force: ForceFn,
}

/// Counts shared with the reclaim callback (leaked: a callback may run at the library's
/// unload, after the adapter is gone).
#[derive(Default)]
struct Ledger {
    retired: AtomicU64,
    reclaimed: AtomicU64,
    early: AtomicU64,
    twice: AtomicU64,
    bad_reads: AtomicU64,
    missed_keys: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
}

#[repr(C)]
struct Version {
    state: AtomicU64,
    reclaims: AtomicU64,
    cookie: u64,
    poll: PollFn,
    ledger: &'static Ledger,
}

/// Reclaimed versions, freed once 4096 newer ones have been reclaimed.
static QUARANTINE: Mutex<Vec<usize>> = Mutex::new(Vec::new());

unsafe extern "C" fn reclaim(arg: *mut c_void) {
    // SAFETY: a retired version; versions are freed only from the quarantine, much later.
    let v = unsafe { &*(arg as *const Version) };
    // SAFETY: the library's poll, which never blocks.
    if unsafe { (v.poll)(v.cookie) } != 1 {
        v.ledger.early.fetch_add(1, Ordering::SeqCst);
    }
    if v.reclaims.fetch_add(1, Ordering::SeqCst) != 0 {
        v.ledger.twice.fetch_add(1, Ordering::SeqCst);
        return;
    }
    v.state.store(POISON, Ordering::SeqCst);
    v.ledger.reclaimed.fetch_add(1, Ordering::SeqCst);
    let mut q = QUARANTINE.lock().unwrap_or_else(|e| e.into_inner());
    q.push(arg as usize);
    if q.len() > 8192 {
        for p in q.drain(..4096) {
            // SAFETY: made by Box::into_raw, reclaimed long ago, referenced by nobody.
            drop(unsafe { Box::from_raw(p as *mut Version) });
        }
    }
}

/// One loaded copy of libprcu and the adapter's ledger.
pub struct RcuAdapter {
    api: Api,
    name: String,
    slot: Box<AtomicPtr<c_void>>,
    map: usize,
    keys: Mutex<BTreeSet<u64>>,
    ledger: &'static Ledger,
    _lib: Library,
}

fn symbol<T: Copy>(lib: &Library, path: &Path, name: &str) -> Result<T> {
    let cname = format!("{name}\0");
    // SAFETY: the symbol is used with the C type prcu.h gives it.
    unsafe { lib.get::<T>(cname.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| anyhow!("{} does not export {name} (prcu.h): {e}", path.display()))
}

impl RcuAdapter {
    fn new(lib: Library, path: &Path, cfg: &SetupConfig) -> Result<RcuAdapter> {
        let api = Api {
            lock: symbol(&lib, path, "prcu_read_lock")?,
            unlock: symbol(&lib, path, "prcu_read_unlock")?,
            synchronize: symbol(&lib, path, "prcu_synchronize")?,
            barrier: symbol(&lib, path, "prcu_barrier")?,
            cookie: symbol(&lib, path, "prcu_start_poll")?,
            poll: symbol(&lib, path, "prcu_poll")?,
            poll_wait: symbol(&lib, path, "prcu_poll_wait")?,
            call: symbol(&lib, path, "prcu_call")?,
            deref: symbol(&lib, path, "prcu_ptr_deref")?,
            exchange: symbol(&lib, path, "prcu_ptr_exchange")?,
            retire: symbol(&lib, path, "prcu_ptr_exchange_retire")?,
            map_create: symbol(&lib, path, "prcu_map_create")?,
            map_destroy: symbol(&lib, path, "prcu_map_destroy")?,
            map_lookup: symbol(&lib, path, "prcu_map_lookup")?,
            map_insert: symbol(&lib, path, "prcu_map_insert")?,
            map_remove: symbol(&lib, path, "prcu_map_remove")?,
            map_len: symbol(&lib, path, "prcu_map_len")?,
            index: symbol(&lib, path, "prcu_index")?,
            mode: symbol(&lib, path, "prcu_rseq_mode")?,
            stats: symbol(&lib, path, "prcu_rseq_stats")?,
            force: symbol(&lib, path, "prcu_force_fallback")?,
        };
        let set_index: SetIndexFn = symbol(&lib, path, "prcu_set_index")?;
        let want = match cfg.index {
            IndexMode::CpuId => 0,
            IndexMode::MmCid => 1,
        };
        // SAFETY: plain value; a copy already in use keeps its index (reported by index_used).
        unsafe { set_index(want) };
        let ledger: &'static Ledger = Box::leak(Box::default());
        // SAFETY: prcu_map_create takes a capacity.
        let map = unsafe { (api.map_create)(4) };
        if map.is_null() {
            return Err(anyhow!("prcu_map_create failed"));
        }
        let a = RcuAdapter {
            api,
            name: "prcu 0.1.0".into(),
            slot: Box::new(AtomicPtr::new(std::ptr::null_mut())),
            map: map as usize,
            keys: Mutex::new(BTreeSet::new()),
            ledger,
            _lib: lib,
        };
        for k in 0..STABLE {
            // SAFETY: our live map.
            if unsafe { (a.api.map_insert)(a.map(), k, 7 * k) } != 0 {
                return Err(anyhow!("prcu_map_insert of stable key {k} failed"));
            }
        }
        a.publish_new();
        Ok(a)
    }

    fn map(&self) -> *mut c_void {
        self.map as *mut c_void
    }

    fn slot(&self) -> *mut *mut c_void {
        self.slot.as_ptr()
    }

    fn new_version(&self) -> *mut c_void {
        Box::into_raw(Box::new(Version {
            state: AtomicU64::new(LIVE),
            reclaims: AtomicU64::new(0),
            cookie: 0,
            poll: self.api.poll,
            ledger: self.ledger,
        }))
        .cast()
    }

    fn publish_new(&self) {
        let v = self.new_version();
        // SAFETY: our slot; the old value (null at setup) is handled by the caller of work.
        let old = unsafe { (self.api.exchange)(self.slot(), v) };
        assert!(old.is_null());
    }

    fn read(&self, rng: &mut ChaCha8Rng) {
        // SAFETY: the C API.
        let t = unsafe { (self.api.lock)() };
        // SAFETY: our slot, inside a read section.
        let p = unsafe { (self.api.deref)(self.slot()) };
        if !p.is_null() {
            // SAFETY: a version reachable in a read section is not reclaimed until it ends.
            let v = unsafe { &*(p as *const Version) };
            let n = rng.random_range(0..64);
            for _ in 0..n {
                std::hint::spin_loop();
            }
            if v.state.load(Ordering::SeqCst) != LIVE {
                self.ledger.bad_reads.fetch_add(1, Ordering::SeqCst);
            }
        }
        let k = rng.random_range(0..STABLE);
        let mut val = 0u64;
        // SAFETY: our live map; writable value.
        let found = unsafe { (self.api.map_lookup)(self.map(), k, &mut val) };
        if found != 1 || val != 7 * k {
            self.ledger.missed_keys.fetch_add(1, Ordering::SeqCst);
        }
        let dk = DYN_BASE + rng.random_range(0..DYN_KEYS);
        // SAFETY: as above.
        unsafe { (self.api.map_lookup)(self.map(), dk, &mut val) };
        // SAFETY: our token.
        if unsafe { (self.api.unlock)(t) } != 0 {
            self.ledger.bad_reads.fetch_add(1, Ordering::SeqCst);
        }
        self.ledger.reads.fetch_add(1, Ordering::Relaxed);
    }

    fn write(&self, rng: &mut ChaCha8Rng) -> Result<(), String> {
        // Writers are serialised (the ledger lock), as RCU updaters usually are.
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let v = self.new_version();
        match rng.random_range(0..3) {
            0 => {
                // SAFETY: our slot and a version of ours.
                let old = unsafe { (self.api.exchange)(self.slot(), v) };
                self.retired(old);
                // SAFETY: the C API; reclaim runs once after a grace period.
                unsafe { (self.api.call)(Some(reclaim), old) };
            }
            1 => {
                // SAFETY: as above.
                let old = unsafe { (self.api.exchange)(self.slot(), v) };
                let c = self.retired(old);
                // SAFETY: blocking calls of the C API, outside any read section.
                unsafe {
                    if rng.random_bool(0.5) {
                        (self.api.synchronize)();
                    } else {
                        (self.api.poll_wait)(c);
                    }
                    reclaim(old);
                }
            }
            _ => {
                // SAFETY: our slot; writers are serialised, so `old` is what the exchange
                // below unpublishes.
                let old = unsafe { (self.api.deref)(self.slot()) };
                // The cookie is taken before the exchange: a grace period that starts after
                // this cookie's is only later, so "elapsed at reclaim" stays a valid check.
                self.retired(old);
                // SAFETY: the C API; reclaim runs once after a grace period.
                if unsafe { (self.api.retire)(self.slot(), v, Some(reclaim)) } != 0 {
                    return Err("prcu_ptr_exchange_retire failed".into());
                }
            }
        }
        // Map writes, with the ledger held so that it matches the map exactly.
        let k = DYN_BASE + rng.random_range(0..DYN_KEYS);
        // SAFETY: our live map.
        let r = unsafe {
            if keys.contains(&k) {
                (self.api.map_remove)(self.map(), k, std::ptr::null_mut())
            } else {
                (self.api.map_insert)(self.map(), k, k)
            }
        };
        if r != 0 {
            return Err(format!("map write of key {k} answered {r} (ledger: present={})", keys.contains(&k)));
        }
        if !keys.remove(&k) {
            keys.insert(k);
        }
        self.ledger.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Records `old` as retired: its cookie (a grace period that begins after now) must
    /// have elapsed when it is reclaimed.
    fn retired(&self, old: *mut c_void) -> u64 {
        // SAFETY: the C API.
        let c = unsafe { (self.api.cookie)() };
        // SAFETY: `old` is a version of ours unpublished by this (serialised) writer; the
        // field is only read by its reclaim, which runs after the call that follows.
        unsafe { (*(old as *mut Version)).cookie = c };
        self.ledger.retired.fetch_add(1, Ordering::SeqCst);
        c
    }
}

impl RcuAdapter {
    fn quiesced_check(&self, what: &str) -> Result<CheckOk, String> {
        // SAFETY: blocking call outside any read section.
        unsafe { (self.api.barrier)() };
        let l = self.ledger;
        let (retired, reclaimed) = (l.retired.load(Ordering::SeqCst), l.reclaimed.load(Ordering::SeqCst));
        let mut errs = Vec::new();
        if l.bad_reads.load(Ordering::SeqCst) != 0 {
            errs.push(format!(
                "{} reads saw a poisoned version or a refused token",
                l.bad_reads.load(Ordering::SeqCst)
            ));
        }
        if l.missed_keys.load(Ordering::SeqCst) != 0 {
            errs.push(format!("{} lookups missed a key present throughout", l.missed_keys.load(Ordering::SeqCst)));
        }
        if l.early.load(Ordering::SeqCst) != 0 {
            errs.push(format!("{} versions reclaimed before their grace period", l.early.load(Ordering::SeqCst)));
        }
        if l.twice.load(Ordering::SeqCst) != 0 {
            errs.push(format!("{} callbacks ran more than once", l.twice.load(Ordering::SeqCst)));
        }
        if retired != reclaimed {
            errs.push(format!("{retired} versions retired but {reclaimed} reclaimed after prcu_barrier"));
        }
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: our live map.
        let len = unsafe { (self.api.map_len)(self.map()) };
        if len != keys.len() + STABLE as usize {
            errs.push(format!("map holds {len} keys, writers left {}", keys.len() + STABLE as usize));
        }
        for k in DYN_BASE..DYN_BASE + DYN_KEYS {
            let mut v = 0;
            // SAFETY: our live map.
            let found = unsafe { (self.api.map_lookup)(self.map(), k, &mut v) } == 1;
            if found != keys.contains(&k) || (found && v != k) {
                errs.push(format!("key {k}: in map {found} (value {v}), in ledger {}", keys.contains(&k)));
                break;
            }
        }
        if errs.is_empty() {
            Ok(CheckOk {
                checked: 5 + DYN_KEYS,
                what: format!(
                    "{what}: {reclaimed} versions reclaimed once after their grace period, map exact ({len} keys)"
                ),
            })
        } else {
            Err(errs.join("; "))
        }
    }
}

impl Participant for RcuAdapter {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "rcu"
    }

    fn work(&self, seed: u64) -> Result<(), String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        if rng.random_range(0..8) == 0 {
            self.write(&mut rng)
        } else {
            for _ in 0..4 {
                self.read(&mut rng);
            }
            Ok(())
        }
    }

    fn check(&self) -> Result<CheckOk, String> {
        self.quiesced_check("quiesced")
    }

    fn report(&self) -> Counts {
        let mut s = RseqStats::default();
        // SAFETY: writable statistics.
        unsafe { (self.api.stats)(&mut s) };
        Counts {
            ops: self.ledger.reads.load(Ordering::Relaxed) + self.ledger.writes.load(Ordering::Relaxed),
            aborts: s.aborts,
            fallback_ops: s.fallback_ops,
            registered_by_us: s.registered_by_us,
            registered_by_peer: s.registered_by_peer,
            registration_failures: s.registration_failures,
        }
    }

    fn index_used(&self) -> Option<&'static str> {
        // SAFETY: no arguments.
        match unsafe { (self.api.index)() } {
            0 => Some("cpu_id"),
            1 => Some("mm_cid"),
            _ => None,
        }
    }

    fn thread_mode(&self) -> ThreadMode {
        let mut err: c_int = 0;
        // SAFETY: writable int.
        match unsafe { (self.api.mode)(&mut err) } {
            1 => ThreadMode::LibcOwned,
            2 => ThreadMode::Registered,
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
        unsafe { (self.api.force)(c_int::from(on)) == 0 }
    }

    fn fork_child(&self, seed: u64) -> Result<CheckOk, String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..16 {
            self.read(&mut rng);
        }
        for _ in 0..4 {
            self.write(&mut rng)?;
        }
        // SAFETY: blocking call outside any read section.
        unsafe { (self.api.synchronize)() };
        self.quiesced_check("forked child")
    }

    fn fork_needs_quiescence(&self) -> bool {
        true
    }

    fn before_unload(&self) -> Result<CheckOk, String> {
        self.quiesced_check("before unload")
    }

    fn fresh_after_reload(&self) -> Result<CheckOk, String> {
        Ok(CheckOk { checked: 0, what: "fresh load (nothing carried over)".into() })
    }

    fn teardown(&self) {
        // SAFETY: the map and the current version are ours; after the map's destroy (which
        // waits a grace period) and a barrier nothing of the library refers to them.
        unsafe {
            (self.api.map_destroy)(self.map());
            let last = (self.api.exchange)(self.slot(), std::ptr::null_mut());
            (self.api.synchronize)();
            if !last.is_null() {
                drop(Box::from_raw(last as *mut Version));
            }
            (self.api.barrier)();
        }
    }
}

/// The registry's constructor of this adapter.
pub fn open(lib: Library, path: &Path, cfg: &SetupConfig) -> Result<Box<dyn Participant>> {
    Ok(Box::new(RcuAdapter::new(lib, path, cfg)?))
}

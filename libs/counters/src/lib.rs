//! Named per-CPU statistics counters on restartable sequences.
//!
//! The same crate is a C library (`libpcounters.so`, header `include/pcounters.h`, see
//! [`ffi`]) and a Rust library: Rust code adds through [`Counter::add`], which inlines to a
//! handle check and one rseq per-CPU add, without going through the C ABI.
//!
//! ```
//! use pcounters::{Counter, Index};
//!
//! let requests = Counter::new("doc_requests_total", Index::CpuId).unwrap();
//! requests.add(3);
//! requests.inc();
//! assert_eq!(requests.get(), Ok(4));
//! assert!(pcounters::prometheus().unwrap().contains("doc_requests_total 4\n"));
//! requests.delete().unwrap();
//! ```
//!
//! # Storage and exactness
//!
//! Every counter has two 8-byte words per *possible* CPU in a per-CPU strided pool: one
//! written only by rseq critical sections, one written only by atomic adds on the fallback
//! path (threads without an rseq area). A read sums both over every possible CPU, so counts
//! left on a CPU that went offline still count, a CPU that comes online later needs
//! nothing, and the cost of a read does not depend on the number of threads. There is no
//! per-thread memory. Once the adders have stopped, a read equals the sum of every add that
//! returned success, in every rseq registration mode and for adds made in signal handlers.
//!
//! # Handles and deletion
//!
//! A [`Counter`] is a 64-bit handle (slot and generation). Using it after [`Counter::delete`]
//! is refused with [`Error::NotFound`]; a forged value with [`Error::InvalidArgument`] or
//! `NotFound`; no handle can reach memory other than the table and counter words. An add
//! racing with the delete of its counter either counts before the delete returns or is
//! refused, however long it was suspended, and a new counter always starts at zero. On the
//! rseq path the handle check is part of the critical section
//! ([`rseq::ThreadArea::try_add_if_equal`]) and a delete issues
//! `membarrier(PRIVATE_EXPEDITED_RSEQ)` after marking the slot dead, so when it returns no
//! add that saw the old handle can still land. On the fallback path an add raises a per-CPU
//! in-flight count before its check and lowers it after its add, and the delete waits for
//! every copy to be seen at zero. The membarrier is issued without the registry lock (it
//! may wait for a CPU hotplug operation), and deletes queued behind one in progress share
//! the next. A slot is reused as soon as its delete is complete; if the membarrier failed,
//! once a later one succeeded. On kernels without the rseq membarrier (before 5.10) every add
//! takes the fallback path.
//!
//! # Fork and unloading
//!
//! A forked child sees every counter with the value it had at the `fork` and counts on from
//! there, independently of the parent; the registry lock is held across `fork`, so the
//! child may create and delete counters. The library keeps no thread-local destructors and
//! can be unloaded with `dlclose` and loaded again; handles of an unloaded copy mean nothing
//! to the next one. At `dlclose` the copy returns its memory (table, names, per-CPU pool);
//! at process exit, when other threads may still be counting, it keeps it — an exit
//! handler registered by the first create tells the two apart (see `unload.rs`). What
//! stays per load is that handler's record and its 32-byte semaphore.

#![warn(missing_docs)]

mod error;
mod fence;
pub mod ffi;
use futex_lock as lock;
mod registry;
mod table;
mod unload;

pub use error::{validate_name, Error, NAME_MAX};
pub use rseq::{Index, Mode, Stats};
pub use table::MAX_COUNTERS;

/// A named per-CPU counter: a copyable 64-bit handle into this library copy's registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Counter(u64);

impl Counter {
    /// Creates a counter called `name` (1 to [`NAME_MAX`] bytes of `[a-zA-Z_:][a-zA-Z0-9_:]*`,
    /// a Prometheus metric name), starting at 0, whose per-CPU words are indexed by `index`.
    /// `Index::MmCid` becomes `Index::CpuId` on kernels without `mm_cid` (before 6.3); see
    /// [`Counter::index`].
    ///
    /// Errors: `InvalidArgument` (bad characters or empty), `NameTooLong`, `Exists`,
    /// `OutOfMemory`, `NoSpace`.
    pub fn new(name: &str, index: Index) -> Result<Counter, Error> {
        registry::create(name, index).map(Counter)
    }

    /// The live counter called `name` (`NotFound` when there is none).
    pub fn lookup(name: &str) -> Result<Counter, Error> {
        registry::lookup(name).map(Counter)
    }

    /// Adds `amount` (negative amounts subtract; the value wraps around like `i64`
    /// `wrapping_add`). One rseq per-CPU add. Lock-free, async-signal-safe. An add to a
    /// deleted counter is ignored; use [`Counter::try_add`] to see it refused.
    #[inline]
    pub fn add(&self, amount: i64) {
        let _ = table::add(self.0, amount);
    }

    /// Adds 1.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `amount`, or says why it could not (`NotFound` for a deleted counter,
    /// `InvalidArgument` for a forged handle).
    #[inline]
    pub fn try_add(&self, amount: i64) -> Result<(), Error> {
        table::add(self.0, amount)
    }

    /// The exact sum of every add so far (adds still running may or may not be included).
    /// Costs one load per possible CPU and word set, whatever the number of threads.
    /// Lock-free, async-signal-safe.
    pub fn get(&self) -> Result<i64, Error> {
        table::get(self.0)
    }

    /// The index this counter uses (as resolved when it was created).
    pub fn index(&self) -> Result<Index, Error> {
        table::index(self.0)
    }

    /// The counter's name.
    pub fn name(&self) -> Result<String, Error> {
        registry::with_name(self.0, |n| {
            let mut s = String::new();
            s.try_reserve_exact(n.len())?;
            s.push_str(n);
            Ok(s)
        })?
    }

    /// Deletes the counter: its name becomes free, and every copy of this handle is refused
    /// from now on.
    pub fn delete(self) -> Result<(), Error> {
        registry::delete(self.0)
    }

    /// The handle as a number (the `id` of the C API's `pcounters_counter`).
    pub const fn to_raw(self) -> u64 {
        self.0
    }

    /// A handle from a number given by [`Counter::to_raw`] or by the C API of *this same
    /// library copy*. Any value is safe: a wrong one is refused by every operation.
    pub const fn from_raw(raw: u64) -> Counter {
        Counter(raw)
    }
}

/// One counter of a [`snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The counter's name.
    pub name: String,
    /// Its value when the snapshot was taken.
    pub value: i64,
    /// Its handle.
    pub counter: Counter,
}

/// Every live counter with its value, sorted by name. Values are read one after the other
/// while creation and deletion wait; adds keep running meanwhile.
pub fn snapshot() -> Result<Vec<Sample>, Error> {
    registry::with_sorted(|items| {
        let mut out = Vec::new();
        out.try_reserve_exact(items.len())?;
        for it in items {
            let mut name = String::new();
            name.try_reserve_exact(it.name.len())?;
            name.push_str(it.name);
            out.push(Sample { name, value: it.value, counter: Counter(it.handle) });
        }
        Ok(out)
    })
}

/// Every live counter in the Prometheus text exposition format (version 0.0.4), sorted by
/// name: `# TYPE <name> counter` (`gauge` for a counter that received a negative add) then
/// `<name> <value>` (signed 64-bit), each line ending in `\n`. Empty when there are no
/// counters.
pub fn prometheus() -> Result<String, Error> {
    registry::with_sorted(|items| {
        let mut out = String::new();
        registry::render_prometheus(items, &mut out)?;
        Ok(out)
    })
}

/// Number of live counters.
pub fn len() -> usize {
    registry::len()
}

/// Whether no counter exists.
pub fn is_empty() -> bool {
    len() == 0
}

/// How the calling thread reaches its rseq area (registering libc's reserved area for it
/// first if that is what this process needs).
pub fn rseq_mode() -> Mode {
    rseq::mode()
}

/// This library copy's process-wide rseq statistics: critical sections restarted, adds
/// that took the fallback path, threads registered.
pub fn rseq_stats() -> Stats {
    rseq::stats()
}

/// Test hook: while `true`, every [`Counter::delete`] stops after marking its counter dead
/// and freeing its name, before its membarrier, until called again with `false`. Lets tests
/// check what other threads may do meanwhile. Not for production use.
#[doc(hidden)]
pub fn hold_delete_fences(on: bool) {
    fence::hold(on);
}

/// Test hook: membarriers issued by deletes so far, deletes whose fence another delete's
/// membarrier covered, and membarriers that failed.
#[doc(hidden)]
pub fn delete_fence_stats() -> (u64, u64, u64) {
    fence::stats()
}

/// Test hook: while `true`, delete membarriers count as failed (nothing is fenced, slots are
/// not reused until a later one succeeds).
#[doc(hidden)]
pub fn fail_delete_fences(on: bool) {
    fence::fail(on);
}

/// Test hook: `Some(true)` parks every fallback-path add between its handle check and its
/// add until `Some(false)`; returns how many adds are parked now.
#[doc(hidden)]
pub fn park_fallback_adds(on: Option<bool>) -> u64 {
    table::park_fallback_adds(on)
}

/// Bytes this library copy holds: (resident, reserved) — the per-CPU pool's resident pages
/// and reservation, plus the handle table.
pub fn memory() -> (u64, u64) {
    registry::memory()
}

/// Sends every add of this library copy down the fallback path (`true`), or back to rseq
/// where available (`false`; on kernels without the rseq membarrier the fallback stays on).
/// For tests and benchmarks: counts stay exact either way.
pub fn force_fallback(on: bool) {
    rseq::force_fallback(on || !fence::rseq_allowed());
}

// Finds the rseq area, the CPU count and the membarrier commands when the library is
// loaded, so that no first add (in a signal handler, in a forked child) has to.
rseq::init_at_load!();

#[used]
#[link_section = ".init_array"]
static FENCE_INIT_AT_LOAD: extern "C" fn() = {
    extern "C" fn pcounters_fence_init() {
        fence::init();
    }
    pcounters_fence_init
};

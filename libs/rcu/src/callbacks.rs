//! `call_rcu`: callbacks queued until a grace period has elapsed, run by one background
//! worker that this library starts on first use (and again in a forked child, where the
//! parent's worker does not exist). The worker takes the whole queue, waits one grace
//! period for the batch, and runs it in order; `barrier` waits until everything queued
//! before it has run.
//!
//! Batching: a grace period costs membarriers that interrupt every CPU, so the worker,
//! once it sees work, gathers for up to [`GATHER`] before taking the queue (cut short by
//! [`GATHER_MAX`] queued callbacks, a `barrier` or an unload). A caller that queues one
//! callback per request (a server retiring one item per write) then shares one grace
//! period with everything queued in those 2 ms instead of paying one per call, and
//! `call` makes the wake-up system call only when the worker is asleep.
//!
//! Memory is one 16-byte entry per outstanding callback (no per-thread state).
//!
//! Fork: the child keeps the queue and the part of the worker's batch not yet run (the
//! prepare handler waits for a callback being run and for a move from queue to batch), and
//! runs them with a new worker: every callback runs exactly once in the parent and once in
//! the child's copy of memory.
//!
//! Unload: a `dlclose` waits until every queued callback has run, then stops and joins the
//! worker, so no thread is left in unmapped code ([`stop_at_unload`]).

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use crate::lock::Lock;

/// A C callback and its argument.
#[derive(Clone, Copy)]
pub(crate) struct Callback {
    pub func: unsafe extern "C" fn(*mut c_void),
    pub arg: *mut c_void,
}
// SAFETY: the caller of `call_rcu` hands the pointer over to whatever thread runs it.
unsafe impl Send for Callback {}

pub(crate) static QUEUE: Lock<Vec<Callback>> = Lock::new(Vec::new());
/// The batch the worker is running, in order (reversed: the next one is last). The worker
/// holds this lock while it runs one callback, so `fork` (whose prepare handler takes it)
/// never copies a callback half-run: the child requeues exactly the ones not yet run.
static BATCH: Lock<Vec<Callback>> = Lock::new(Vec::new());
/// Callbacks queued / run so far (a barrier waits for `run` to reach `queued`).
static QUEUED: AtomicU64 = AtomicU64::new(0);
static RUN: AtomicU64 = AtomicU64::new(0);
/// Taken by the worker and not yet run.
static IN_HAND: AtomicU64 = AtomicU64::new(0);
/// Poll requests: the worker runs a grace period even with an empty queue.
static GP_WANTED: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);
/// Batches (grace periods waited by the worker).
static BATCHES: AtomicU64 = AtomicU64::new(0);

const NONE: u8 = 0;
const STARTING: u8 = 1;
const RUNNING: u8 = 2;
static WORKER: AtomicU8 = AtomicU8::new(NONE);
/// The worker's pthread (a raw pthread: a Rust `std::thread` would register thread-local
/// destructors with glibc, which keeps the library from being unloaded while it lives).
static HANDLE: Lock<Option<libc::pthread_t>> = Lock::new(None);
/// Bumped to wake the worker (a futex word).
static WAKE: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
/// The worker is (about to be) asleep with nothing to do: `call` must wake it.
static SLEEPING: AtomicBool = AtomicBool::new(false);
/// A `barrier` (or an unload) waits: the worker stops gathering.
static URGENT: AtomicBool = AtomicBool::new(false);
/// How long the worker gathers callbacks before it starts a grace period for them.
pub(crate) const GATHER: Duration = Duration::from_millis(2);
/// Outstanding callbacks that end the gathering at once (bounds the memory held).
pub(crate) const GATHER_MAX: u64 = 4096;
/// Tests: microseconds the worker pauses after taking the queue, before the taken callbacks
/// join the batch (widens the moment a `fork` must not split; 0: no pause).
static TAKE_PAUSE_US: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Tests only: see [`TAKE_PAUSE_US`].
pub fn set_take_pause_for_tests(us: u32) {
    TAKE_PAUSE_US.store(us, Ordering::SeqCst);
}

/// The largest batch vector kept for reuse as the queue's storage (256 KiB of entries).
const SPARE_MAX: usize = 4 * GATHER_MAX as usize;

/// Queues `cb` to run after a grace period. Not async-signal-safe (it may allocate).
pub(crate) fn call(cb: Callback) {
    {
        let mut q = QUEUE.lock();
        q.push(cb);
        QUEUED.fetch_add(1, Ordering::SeqCst);
    }
    ensure_worker();
    // Ordering: QUEUED was raised (SeqCst) before SLEEPING is read; the worker sets
    // SLEEPING before it reads QUEUED. Either this load sees it asleep and wakes it, or
    // the worker's check sees the new callback.
    if SLEEPING.load(Ordering::SeqCst) {
        wake();
    }
}

/// Asks the worker for a grace period (the polling API) without queueing anything.
pub(crate) fn want_grace_period() {
    GP_WANTED.store(true, Ordering::SeqCst);
    ensure_worker();
    wake();
}

/// Waits until every callback queued before the call has run. Aborts (checking mode) when
/// called inside a read section, and when called from a callback (it would wait for
/// itself).
pub(crate) fn barrier() {
    crate::check::not_in_reader("prcu_barrier");
    if worker_is_me() {
        crate::fatal("prcu: prcu_barrier called from an RCU callback: it would wait for itself forever");
    }
    let target = QUEUED.load(Ordering::SeqCst);
    if RUN.load(Ordering::SeqCst) >= target {
        return;
    }
    URGENT.store(true, Ordering::SeqCst);
    ensure_worker();
    wake();
    let mut spins = 0u32;
    while RUN.load(Ordering::SeqCst) < target {
        spins += 1;
        std::thread::sleep(Duration::from_micros(if spins < 20 { 20 } else { 500 }));
    }
}

pub(crate) fn counts() -> (u64, u64, u64) {
    (QUEUED.load(Ordering::SeqCst), RUN.load(Ordering::SeqCst), BATCHES.load(Ordering::SeqCst))
}

static WORKER_TID: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(0);

fn worker_is_me() -> bool {
    WORKER_TID.load(Ordering::Relaxed) == crate::domain::gettid()
}

fn ensure_worker() {
    if WORKER.load(Ordering::Acquire) == RUNNING {
        return;
    }
    if WORKER.compare_exchange(NONE, STARTING, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return; // someone else is starting it; it will find the queue
    }
    STOP.store(false, Ordering::SeqCst);
    match spawn_worker() {
        Some(h) => {
            *HANDLE.lock() = Some(h);
            WORKER.store(RUNNING, Ordering::Release);
        }
        None => {
            // No thread: run what is queued here, after a grace period, so nothing is lost.
            WORKER.store(NONE, Ordering::Release);
            run_batch_here();
        }
    }
}

fn spawn_worker() -> Option<libc::pthread_t> {
    extern "C" fn start(_: *mut c_void) -> *mut c_void {
        // SAFETY: naming the calling thread with a NUL-terminated name of < 16 bytes.
        unsafe { libc::pthread_setname_np(libc::pthread_self(), c"prcu-callbacks".as_ptr()) };
        worker();
        core::ptr::null_mut()
    }
    let mut t: libc::pthread_t = 0;
    // SAFETY: default attributes; `start` is a plain function of this library.
    let r = unsafe { libc::pthread_create(&mut t, core::ptr::null(), start, core::ptr::null_mut()) };
    (r == 0).then_some(t)
}

fn wake() {
    WAKE.fetch_add(1, Ordering::SeqCst);
    // SAFETY: a valid futex word; no other pointers.
    unsafe { libc::syscall(libc::SYS_futex, WAKE.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1) };
}

/// Sleeps until `WAKE` moves from `seen` or `limit` passes (at most 1 s).
fn sleep_until_woken(seen: u32, limit: Duration) {
    let ts = libc::timespec { tv_sec: 0, tv_nsec: limit.as_nanos().min(999_999_999) as libc::c_long };
    // SAFETY: a valid futex word and timespec.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            WAKE.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            seen,
            &ts as *const libc::timespec,
        )
    };
}

/// Moves the queue into the batch, holding the batch lock throughout (then the queue lock:
/// the order `before_fork` and a callback that queues callbacks also take). A `fork` thus
/// finds every callback either in the queue or in the batch, never in the worker's hands
/// between the two (the child would wait for them forever: it runs what the two hold). The
/// emptied vector of the last batch becomes the queue's storage, so `call` pushes into
/// capacity that is already there instead of growing a new vector from nothing after every
/// batch; one larger than [`SPARE_MAX`] entries (left by a flood) is freed instead.
fn take_batch() {
    let mut b = BATCH.lock();
    let spare = if b.is_empty() && b.capacity() <= SPARE_MAX { core::mem::take(&mut *b) } else { Vec::new() };
    let mut batch = {
        let mut q = QUEUE.lock();
        let taken = core::mem::replace(&mut *q, spare);
        IN_HAND.fetch_add(taken.len() as u64, Ordering::SeqCst);
        taken
    };
    let pause = TAKE_PAUSE_US.load(Ordering::Relaxed);
    if pause > 0 {
        std::thread::sleep(Duration::from_micros(u64::from(pause)));
    }
    batch.reverse();
    batch.append(&mut b);
    *b = batch;
}

/// Runs the batch, one callback per lock hold.
fn run_batch() {
    loop {
        let mut b = BATCH.lock();
        let Some(cb) = b.pop() else { return };
        // SAFETY: the caller of `call_rcu` promised that `func(arg)` may run once, on any
        // thread, after a grace period; one has elapsed since it was queued.
        unsafe { (cb.func)(cb.arg) };
        IN_HAND.fetch_sub(1, Ordering::SeqCst);
        RUN.fetch_add(1, Ordering::SeqCst);
        drop(b);
    }
}

fn run_batch_here() {
    take_batch();
    crate::domain::synchronize();
    run_batch();
}

/// Callbacks queued and not yet taken by the worker.
fn outstanding() -> u64 {
    let queued = QUEUED.load(Ordering::SeqCst);
    queued.saturating_sub(RUN.load(Ordering::SeqCst) + IN_HAND.load(Ordering::SeqCst))
}

/// Waits up to [`GATHER`] for more callbacks, ending early for a barrier, an unload or a
/// full queue.
fn gather() {
    let deadline = std::time::Instant::now() + GATHER;
    loop {
        let seen = WAKE.load(Ordering::SeqCst);
        if URGENT.load(Ordering::SeqCst) || STOP.load(Ordering::SeqCst) || outstanding() >= GATHER_MAX {
            return;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        sleep_until_woken(seen, left);
    }
}

fn worker() {
    WORKER_TID.store(crate::domain::gettid(), Ordering::Relaxed);
    loop {
        SLEEPING.store(true, Ordering::SeqCst);
        let seen = WAKE.load(Ordering::SeqCst);
        let pending = outstanding() > 0;
        let wanted = GP_WANTED.swap(false, Ordering::SeqCst);
        if pending || wanted {
            SLEEPING.store(false, Ordering::SeqCst);
            gather();
            URGENT.store(false, Ordering::SeqCst);
            take_batch();
            crate::domain::synchronize();
            BATCHES.fetch_add(1, Ordering::SeqCst);
            run_batch();
            continue;
        }
        if STOP.load(Ordering::SeqCst) {
            SLEEPING.store(false, Ordering::SeqCst);
            break;
        }
        sleep_until_woken(seen, Duration::from_millis(100));
        SLEEPING.store(false, Ordering::SeqCst);
    }
    WORKER_TID.store(0, Ordering::Relaxed);
}

/// At `dlclose`: runs out the queue, then stops and joins the worker.
pub(crate) fn stop_at_unload() {
    if WORKER.load(Ordering::Acquire) != RUNNING {
        return;
    }
    barrier();
    STOP.store(true, Ordering::SeqCst);
    wake();
    let h = HANDLE.lock().take();
    if let Some(h) = h {
        // SAFETY: our joinable worker thread, joined once.
        unsafe { libc::pthread_join(h, core::ptr::null_mut()) };
    }
    WORKER.store(NONE, Ordering::Release);
}

/// Fork handlers: the batch lock (waits for a callback being run), then the queue lock,
/// are held across `fork` so the child's copies are consistent. (A callback may queue
/// callbacks: it takes the queue lock while the worker holds the batch lock, the same
/// order.)
pub(crate) fn before_fork() {
    BATCH.raw_lock();
    QUEUE.raw_lock();
    HANDLE.raw_lock();
}

pub(crate) fn after_fork_in_parent() {
    // SAFETY: taken in `before_fork` by this thread.
    unsafe {
        HANDLE.raw_unlock();
        QUEUE.raw_unlock();
        BATCH.raw_unlock();
    }
}

pub(crate) fn after_fork_in_child() {
    // SAFETY: the child's only thread took both in `before_fork`.
    unsafe {
        HANDLE.reset_in_child();
        QUEUE.reset_in_child();
        BATCH.reset_in_child();
    }
    // The parent's worker does not exist here: what it had not run yet goes back to the
    // front of the queue, to run after a grace period of the child.
    let mut rest = core::mem::take(&mut *BATCH.lock());
    rest.reverse();
    IN_HAND.store(0, Ordering::SeqCst);
    {
        let mut q = QUEUE.lock();
        rest.append(&mut q);
        *q = rest;
    }
    // The handle names a thread of the parent: forget it.
    HANDLE.lock().take();
    SLEEPING.store(false, Ordering::SeqCst);
    URGENT.store(false, Ordering::SeqCst);
    WORKER_TID.store(0, Ordering::Relaxed);
    WORKER.store(NONE, Ordering::Release);
    if QUEUED.load(Ordering::SeqCst) != RUN.load(Ordering::SeqCst) || GP_WANTED.load(Ordering::SeqCst) {
        // Started lazily by the next call_rcu / barrier / start_poll.
        GP_WANTED.store(true, Ordering::SeqCst);
    }
}

//! Checking mode (`PRCU_CHECK=1` or `prcu_set_checking(1)`): every token is recorded with
//! the thread that took it, so that a second unlock of a token is refused, and a thread
//! that calls `synchronize` or `barrier` while holding a token (which would wait for
//! itself forever) is stopped with a clear message. Costs a lock per read section and is
//! not async-signal-safe; off by default.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::domain::{gettid, Token, TokenError};
use crate::lock::Lock;

static ENABLED: AtomicBool = AtomicBool::new(false);
static SERIAL: AtomicU64 = AtomicU64::new(1);
/// (token, thread id) of every open checked section.
pub(crate) static OPEN: Lock<Vec<(u64, i32)>> = Lock::new(Vec::new());

/// Turns checking on or off. The rseq read path hands out unchecked tokens, so it is
/// withdrawn after the store (or published again when checking goes off).
pub(crate) fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
    crate::domain::publish_read_path();
}

#[inline(always)]
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn next_serial() -> u32 {
    (SERIAL.fetch_add(1, Ordering::Relaxed) & 0x3fff_ffff) as u32
}

pub(crate) fn record(t: Token) {
    OPEN.lock().push((t.into_raw(), gettid()));
}

pub(crate) fn forget(t: Token) -> Result<(), TokenError> {
    let mut open = OPEN.lock();
    match open.iter().position(|&(raw, _)| raw == t.into_raw()) {
        Some(i) => {
            open.swap_remove(i);
            Ok(())
        }
        None => Err(TokenError::AlreadyUnlocked),
    }
}

/// Aborts when the calling thread holds a checked token (checking mode only).
pub(crate) fn not_in_reader(what: &str) {
    if !enabled() {
        return;
    }
    let me = gettid();
    let held = OPEN.lock().iter().any(|&(_, tid)| tid == me);
    if held {
        crate::fatal(&format!(
            "prcu: {what} called inside a read-side critical section (this thread holds a token): it would wait for itself forever"
        ));
    }
}

/// Whether the calling thread holds a checked token (for `fork`).
pub(crate) fn holds_token() -> bool {
    let me = gettid();
    enabled() && OPEN.lock().iter().any(|&(_, tid)| tid == me)
}

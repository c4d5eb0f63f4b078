//! `dlclose` with callbacks pending: the destructor waits until every queued callback has
//! run (they may free memory of the caller's, and their code may live in this library),
//! then stops and joins the worker thread, so no thread of ours runs unmapped code. At
//! process exit the destructor does nothing (other threads may still be reading; the
//! queue dies with the process). The two are told apart by `rseq::exit_mark`.

/// Registers the exit mark (from the constructor).
pub(crate) fn register_exit_mark() {
    rseq::exit_mark::register();
}

extern "C" fn at_unload() {
    if !rseq::exit_mark::exiting_or_unknown() {
        crate::callbacks::stop_at_unload();
    }
}

#[used]
#[link_section = ".fini_array"]
static STOP_AT_UNLOAD: extern "C" fn() = at_unload;

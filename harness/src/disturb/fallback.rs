//! Forced fallback periods: one library is put onto its fallback path for a while, next to
//! the others (`pcounters_force_fallback`; plugins have no such switch and are skipped).

use std::sync::atomic::Ordering;

use crate::engine::Engine;

impl Engine {
    /// Starts (`on`) or ends the forced fallback period of the library `lib` picks.
    pub(crate) fn fallback(&mut self, lib: u32, on: bool) -> String {
        let Some(slot) = self.slot(lib) else { return "skipped: no library".into() };
        let g = slot.state.read().unwrap();
        let Some(l) = g.as_ref() else { return "skipped: not loaded".into() };
        if on {
            // Mark first: threads sampling from now on may see "disabled".
            slot.forced.store(true, Ordering::SeqCst);
            if l.p.force_fallback(true) {
                slot.info.lock().unwrap().forced_periods += 1;
                format!("{}: fallback forced", l.p.name())
            } else {
                slot.forced.store(false, Ordering::SeqCst);
                format!("{}: skipped (no force-fallback in its API)", l.p.name())
            }
        } else if slot.forced.load(Ordering::SeqCst) {
            l.p.force_fallback(false);
            slot.forced.store(false, Ordering::SeqCst);
            format!("{}: fallback released", l.p.name())
        } else {
            "skipped: not forced".into()
        }
    }
}

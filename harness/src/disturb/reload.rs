//! Unload/reload of one library while the others keep running: it is checked before the
//! unload, must leave the address space, and a fresh load must start from zero.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::engine::memory::status_kib;
use crate::engine::{record_check, Engine, Loaded, Slot};
use crate::participants;
use crate::state::ReloadRecord;

impl Engine {
    /// One unload/reload cycle of `slot`.
    pub(crate) fn reload(&mut self, slot: &Arc<Slot>) -> String {
        let ctx = self.ctx.clone();
        let t0 = Instant::now();
        let at = ctx.ms();
        let mut g = slot.state.write().unwrap();
        let Some(old) = g.take() else { return "skipped: not loaded".into() };
        let name = old.p.name().to_string();
        let anon_before_kib = status_kib("RssAnon:");
        let memory_before = old.p.memory();
        if slot.forced.swap(false, Ordering::SeqCst) {
            old.p.force_fallback(false);
        }
        let before = old.p.before_unload();
        record_check(slot, at, "before-unload", before);
        let counts = old.p.report();
        old.p.teardown();
        let inc = old.incarnation + 1;
        drop(old);
        let unmapped = !participants::is_mapped(&slot.path);
        let anon_unloaded_kib = status_kib("RssAnon:");
        slot.info.lock().unwrap().retired.add(&counts);
        let cfg = ctx.setup_config(slot);
        let (load_error, out) = match participants::open_participant(&slot.path, ctx.flags, &cfg) {
            Ok(p) => {
                if unmapped {
                    let fresh = p.fresh_after_reload();
                    record_check(slot, ctx.ms(), "fresh-load", fresh);
                }
                slot.incarnation.store(inc, Ordering::SeqCst);
                *g = Some(Loaded { p, incarnation: inc });
                (
                    None,
                    format!("{name}: unloaded ({}), loaded again", if unmapped { "unmapped" } else { "still mapped" }),
                )
            }
            Err(e) => (Some(format!("{e:#}")), format!("{name}: RELOAD FAILED: {e:#}")),
        };
        drop(g);
        slot.info.lock().unwrap().reloads.push(ReloadRecord {
            at_ms: at,
            unmapped,
            load_error,
            gap_ms: t0.elapsed().as_millis() as u64,
            anon_before_kib,
            anon_unloaded_kib,
            anon_after_kib: status_kib("RssAnon:"),
            memory_before,
        });
        out
    }
}

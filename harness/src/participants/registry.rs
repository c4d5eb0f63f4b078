//! The registry of library kinds: which exported symbol identifies a kind, which file the
//! default discovery looks for, and which adapter drives it. Adding a kind of library is one
//! new adapter file in this folder (a [`Participant`] implementation with a constructor of
//! type [`OpenFn`]) and one line in [`KINDS`].

use std::path::Path;

use anyhow::{anyhow, Result};
use libloading::os::unix::Library;

use super::{open_library, Participant, SetupConfig};

/// Makes the adapter of a loaded library (its setup included).
pub type OpenFn = fn(Library, &Path, &SetupConfig) -> Result<Box<dyn Participant>>;

/// One kind of library the harness can drive.
pub struct Kind {
    /// Name of the kind in reports (`counters`, `plugin`).
    pub name: &'static str,
    /// A symbol that only libraries of this kind export (found with `dlsym`).
    pub marker: &'static str,
    /// The file the default discovery looks for in `target/{release,debug}/` (project
    /// libraries); `None` for kinds that are only loaded when named (plugins are found in
    /// `target/harness-plugins/`).
    pub default_file: Option<&'static str>,
    /// The adapter.
    pub open: OpenFn,
}

/// Every kind, in detection order (the first whose marker a library exports wins).
pub const KINDS: &[Kind] = &[
    Kind { name: "plugin", marker: "rhp_plugin_abi_version", default_file: None, open: super::plugin::open },
    Kind {
        name: "counters",
        marker: "pcounters_create",
        default_file: Some("libpcounters.so"),
        open: super::counters::open,
    },
    Kind { name: "rcu", marker: "prcu_read_lock", default_file: Some("libprcu.so"), open: super::rcu::open },
    Kind { name: "alloc", marker: "palloc_malloc", default_file: Some("libpalloc.so"), open: super::alloc::open },
    Kind { name: "locks", marker: "plock_mutex_create", default_file: Some("libplocks.so"), open: super::locks::open },
];

/// Library files of the project the default discovery looks for, in discovery order.
pub fn default_files() -> impl Iterator<Item = &'static str> {
    KINDS.iter().filter_map(|k| k.default_file)
}

/// The kind of a loaded library, from its exports.
pub fn detect(lib: &Library, path: &Path) -> Result<&'static Kind> {
    // SAFETY: only the presence of the symbols is tested; nothing is called.
    let has = |name: &str| unsafe { lib.get::<*const libc::c_void>(format!("{name}\0").as_bytes()).is_ok() };
    KINDS.iter().find(|k| has(k.marker)).ok_or_else(|| {
        let apis: Vec<String> =
            KINDS.iter().filter(|k| k.name != "plugin").map(|k| format!("{} ({})", k.marker, k.name)).collect();
        anyhow!(
            "{} exports neither the harness plugin ABI (rhp_plugin_abi_version, see \
             harness/include/rseq_harness_plugin.h) nor a known library API ({})",
            path.display(),
            apis.join(", ")
        )
    })
}

/// Opens `path` and makes a participant of it (setup included).
pub fn open_participant(path: &Path, flags: i32, cfg: &SetupConfig) -> Result<Box<dyn Participant>> {
    let lib = open_library(path, flags)?;
    let kind = detect(&lib, path)?;
    (kind.open)(lib, path, cfg)
}

//! The generic adapter for plugins written against `harness/include/rseq_harness_plugin.h`.

use std::ffi::{c_char, c_int, CStr, CString};
use std::mem::ManuallyDrop;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use libloading::os::unix::Library;

use super::{CheckOk, Counts, Memory, Participant, SetupConfig, ThreadMode};

/// `RHP_ABI_VERSION` of the header this harness was written against.
pub const RHP_ABI_VERSION: u32 = 1;
/// `RHP_FLAG_REGISTERS_RESERVED_AREA`.
pub const RHP_FLAG_REGISTERS_RESERVED_AREA: u32 = 1;
/// `RHP_FLAG_FOREIGN_AREA`: registers an rseq area of its own (breaks the contract on purpose).
pub const RHP_FLAG_FOREIGN_AREA: u32 = 1 << 1;
/// `RHP_FLAG_NEVER_UNLOAD`: must never be unloaded.
pub const RHP_FLAG_NEVER_UNLOAD: u32 = 1 << 2;

/// `struct rhp_counts`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RhpCounts {
    /// Operations completed.
    pub ops: u64,
    /// Critical sections restarted.
    pub aborts: u64,
    /// Fallback operations.
    pub fallback_ops: u64,
    /// Checks performed.
    pub checks: u64,
    /// `enum rhp_mode` of the calling thread.
    pub thread_mode: u32,
    /// `RHP_FLAG_*`.
    pub flags: u32,
    /// errno of the failed registration behind `RHP_MODE_UNAVAILABLE`; 0: did not try.
    pub unavailable_errno: i32,
    /// Padding.
    pub pad: u32,
    /// Reserved, zero.
    pub reserved: [u64; 3],
}

type VersionFn = unsafe extern "C" fn() -> u32;
type NameFn = unsafe extern "C" fn() -> *const c_char;
type SetupFn = unsafe extern "C" fn(*const c_char) -> c_int;
type WorkFn = unsafe extern "C" fn(u64) -> c_int;
type CheckFn = unsafe extern "C" fn(*mut c_char, usize) -> c_int;
type ReportFn = unsafe extern "C" fn(*mut RhpCounts);
type TeardownFn = unsafe extern "C" fn();
type ThreadStartFn = unsafe extern "C" fn();
type MemoryFn = unsafe extern "C" fn(*mut u64, *mut u64) -> c_int;

/// A loaded plugin. The function pointers stay valid while `lib` is alive (it is dropped
/// last, after `teardown`; never for a plugin with `RHP_FLAG_NEVER_UNLOAD`).
pub struct PluginAdapter {
    name: String,
    work: WorkFn,
    check: CheckFn,
    report: ReportFn,
    teardown: TeardownFn,
    thread_start: Option<ThreadStartFn>,
    memory: Option<MemoryFn>,
    lazy: bool,
    flags: u32,
    lib: ManuallyDrop<Library>,
}

impl Drop for PluginAdapter {
    fn drop(&mut self) {
        if self.flags & RHP_FLAG_NEVER_UNLOAD == 0 {
            // SAFETY: dropped once, here; nothing of the plugin is called afterwards.
            unsafe { ManuallyDrop::drop(&mut self.lib) };
        }
        // A plugin that must stay loaded keeps its handle: dlclose is never called on it.
    }
}

fn optional<T: Copy>(lib: &Library, name: &str) -> Option<T> {
    let cname = format!("{name}\0");
    // SAFETY: the symbol is used with the C type the plugin ABI header gives it.
    unsafe { lib.get::<T>(cname.as_bytes()) }.ok().map(|s| *s)
}

fn symbol<T: Copy>(lib: &Library, path: &Path, name: &str) -> Result<T> {
    let cname = format!("{name}\0");
    // SAFETY: the symbol is used with the C type the plugin ABI header gives it.
    unsafe { lib.get::<T>(cname.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| anyhow!("plugin {} does not export {name} (rseq_harness_plugin.h): {e}", path.display()))
}

impl PluginAdapter {
    /// Checks the ABI version, finds every function and runs `rhp_setup`.
    pub fn new(lib: Library, path: &Path, cfg: &SetupConfig) -> Result<PluginAdapter> {
        let version: VersionFn = symbol(&lib, path, "rhp_plugin_abi_version")?;
        // SAFETY: ABI function without arguments.
        let v = unsafe { version() };
        if v != RHP_ABI_VERSION {
            bail!("plugin {} has ABI version {v}; this harness speaks version {RHP_ABI_VERSION}", path.display());
        }
        let name_fn: NameFn = symbol(&lib, path, "rhp_plugin_name")?;
        let setup: SetupFn = symbol(&lib, path, "rhp_setup")?;
        let work: WorkFn = symbol(&lib, path, "rhp_work")?;
        let check: CheckFn = symbol(&lib, path, "rhp_check")?;
        let report: ReportFn = symbol(&lib, path, "rhp_report")?;
        let teardown: TeardownFn = symbol(&lib, path, "rhp_teardown")?;
        let thread_start: Option<ThreadStartFn> = optional(&lib, "rhp_thread_start");
        let memory: Option<MemoryFn> = optional(&lib, "rhp_memory");
        // SAFETY: the ABI says the name is a constant NUL-terminated string (NULL checked).
        let name = unsafe {
            let p = name_fn();
            if p.is_null() {
                String::from("plugin")
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let mut config = format!("index={},seed={}", cfg.index.name(), cfg.seed);
        if !cfg.extra.is_empty() {
            config.push(',');
            config.push_str(&cfg.extra);
        }
        let config = CString::new(config).map_err(|_| anyhow!("plugin configuration contains a NUL byte"))?;
        // SAFETY: NUL-terminated string that outlives the call.
        let r = unsafe { setup(config.as_ptr()) };
        if r != 0 {
            bail!("plugin {} ({name}): rhp_setup({:?}) returned {r}", path.display(), config);
        }
        let mut counts = RhpCounts::default();
        // SAFETY: `counts` is a valid, writable `struct rhp_counts`.
        unsafe { report(&mut counts) };
        Ok(PluginAdapter {
            name,
            work,
            check,
            report,
            teardown,
            thread_start,
            memory,
            lazy: counts.flags & RHP_FLAG_REGISTERS_RESERVED_AREA != 0,
            flags: counts.flags,
            lib: ManuallyDrop::new(lib),
        })
    }

    fn raw_report(&self) -> RhpCounts {
        let mut c = RhpCounts::default();
        // SAFETY: `c` is a valid, writable `struct rhp_counts`; the plugin is loaded.
        unsafe { (self.report)(&mut c) };
        c
    }

    fn raw_check(&self) -> Result<CheckOk, String> {
        let before = self.raw_report().checks;
        let mut buf = vec![0u8; 1024];
        // SAFETY: `buf` is writable for its length; the plugin writes a NUL-terminated message.
        let r = unsafe { (self.check)(buf.as_mut_ptr().cast(), buf.len()) };
        if r != 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            let msg = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Err(if msg.is_empty() { format!("rhp_check returned {r} without a message") } else { msg });
        }
        let after = self.raw_report().checks;
        Ok(CheckOk { checked: after.saturating_sub(before).max(1), what: "rhp_check".into() })
    }
}

// The C struct is 72 bytes; the split of the old reserved words kept that size.
const _: () = assert!(std::mem::size_of::<RhpCounts>() == 72);

impl Participant for PluginAdapter {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "plugin"
    }

    fn work(&self, seed: u64) -> Result<(), String> {
        // SAFETY: ABI function; callable from any thread while the plugin is loaded.
        let r = unsafe { (self.work)(seed) };
        if r == 0 {
            Ok(())
        } else {
            Err(format!("rhp_work(seed {seed}) returned {r}"))
        }
    }

    fn check(&self) -> Result<CheckOk, String> {
        self.raw_check()
    }

    fn report(&self) -> Counts {
        let c = self.raw_report();
        Counts { ops: c.ops, aborts: c.aborts, fallback_ops: c.fallback_ops, ..Counts::default() }
    }

    fn thread_mode(&self) -> ThreadMode {
        let c = self.raw_report();
        match c.thread_mode {
            1 => ThreadMode::LibcOwned,
            2 => ThreadMode::RegisteredByUs,
            3 => ThreadMode::RegisteredByPeer,
            4 => ThreadMode::Unavailable { errno: c.unavailable_errno },
            5 => ThreadMode::Disabled,
            other => ThreadMode::Unknown(other as i64),
        }
    }

    fn registers_lazily(&self) -> bool {
        self.lazy
    }

    fn force_fallback(&self, _on: bool) -> bool {
        false
    }

    fn fork_child(&self, seed: u64) -> Result<CheckOk, String> {
        for i in 0..32 {
            self.work(seed.wrapping_add(i))?;
        }
        self.raw_check()
    }

    fn fork_needs_quiescence(&self) -> bool {
        true
    }

    fn before_unload(&self) -> Result<CheckOk, String> {
        self.raw_check()
    }

    fn fresh_after_reload(&self) -> Result<CheckOk, String> {
        // A plugin that stayed mapped keeps its counts; one that went away starts from zero.
        // Either way its own invariants must hold.
        self.raw_check()
    }

    fn teardown(&self) {
        // SAFETY: ABI function; the harness calls it once, with nothing else of the plugin running.
        unsafe { (self.teardown)() }
    }

    fn has_thread_start(&self) -> bool {
        self.thread_start.is_some()
    }

    fn thread_start(&self) {
        if let Some(f) = self.thread_start {
            // SAFETY: optional ABI function, called on a thread the harness just created.
            unsafe { f() }
        }
    }

    fn foreign_area(&self) -> bool {
        self.flags & RHP_FLAG_FOREIGN_AREA != 0
    }

    fn never_unload(&self) -> bool {
        self.flags & RHP_FLAG_NEVER_UNLOAD != 0
    }

    fn memory(&self) -> Option<Memory> {
        let f = self.memory?;
        let (mut resident, mut reserved) = (0u64, 0u64);
        // SAFETY: optional ABI function writing two u64.
        let r = unsafe { f(&mut resident, &mut reserved) };
        (r == 0).then_some(Memory { resident_bytes: resident, reserved_bytes: reserved })
    }
}

/// The registry's constructor of this adapter.
pub fn open(lib: Library, path: &Path, cfg: &SetupConfig) -> Result<Box<dyn Participant>> {
    Ok(Box::new(PluginAdapter::new(lib, path, cfg)?))
}

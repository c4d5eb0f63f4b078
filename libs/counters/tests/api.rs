//! The Rust API and the C entry points (called through the rlib): results, errors,
//! handles after delete, slot reuse, snapshots and the Prometheus text.

mod common;

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pcounters::ffi::{self, pcounters_counter, pcounters_value};
use pcounters::{Counter, Error, Index};

#[test]
fn create_add_get_delete() {
    let c = Counter::new("api_basic", Index::CpuId).unwrap();
    assert_eq!(c.get(), Ok(0));
    c.add(5);
    c.inc();
    c.add(-10);
    assert_eq!(c.try_add(2), Ok(()));
    assert_eq!(c.get(), Ok(-2));
    assert_eq!(c.name().as_deref(), Ok("api_basic"));
    assert_eq!(c.index(), Ok(Index::CpuId));
    assert_eq!(Counter::lookup("api_basic"), Ok(c));
    c.delete().unwrap();
    assert_eq!(c.get(), Err(Error::NotFound));
    assert_eq!(c.try_add(1), Err(Error::NotFound));
    c.add(1); // ignored, no panic
    assert_eq!(c.delete(), Err(Error::NotFound));
    assert_eq!(c.name(), Err(Error::NotFound));
    assert_eq!(c.index(), Err(Error::NotFound));
    assert_eq!(Counter::lookup("api_basic"), Err(Error::NotFound));
    // The name is free again; the new counter starts at zero and the old handle stays dead.
    let d = Counter::new("api_basic", Index::CpuId).unwrap();
    assert_ne!(c, d);
    assert_eq!(d.get(), Ok(0));
    assert_eq!(c.try_add(1), Err(Error::NotFound));
    assert_eq!(d.get(), Ok(0));
    d.delete().unwrap();
}

#[test]
fn wrapping_arithmetic() {
    let c = Counter::new("api_wrapping", Index::MmCid).unwrap();
    c.add(i64::MAX);
    c.add(1);
    assert_eq!(c.get(), Ok(i64::MIN));
    c.add(i64::MIN);
    assert_eq!(c.get(), Ok(0));
    c.add(-1);
    assert_eq!(c.get(), Ok(-1));
    c.delete().unwrap();
}

#[test]
fn index_modes_resolve() {
    let cpu = Counter::new("api_index_cpu", Index::CpuId).unwrap();
    let cid = Counter::new("api_index_cid", Index::MmCid).unwrap();
    assert_eq!(cpu.index(), Ok(Index::CpuId));
    assert_eq!(cid.index(), Ok(Index::MmCid.resolve()));
    if rseq::feature_size() >= 28 {
        assert_eq!(cid.index(), Ok(Index::MmCid), "this kernel has mm_cid");
    }
    cpu.delete().unwrap();
    cid.delete().unwrap();
}

#[test]
fn names_are_checked() {
    for bad in ["", "1abc", "a-b", "a b", "é", "a.b", "a\nb", "a/b"] {
        assert_eq!(Counter::new(bad, Index::CpuId), Err(Error::InvalidArgument), "{bad:?}");
        assert_eq!(Counter::lookup(bad), Err(Error::InvalidArgument), "{bad:?}");
    }
    for good in ["a", "_", ":", "A_b:c9", "http_requests_total", "ns:sub:metric_1"] {
        let name = format!("api_names_{good}");
        let c = Counter::new(&name, Index::CpuId).unwrap();
        c.delete().unwrap();
        let c = Counter::new(good, Index::CpuId).unwrap();
        c.delete().unwrap();
    }
    let longest = "n".repeat(pcounters::NAME_MAX);
    let c = Counter::new(&longest, Index::CpuId).unwrap();
    assert_eq!(c.name().unwrap(), longest);
    c.delete().unwrap();
    let too_long = "n".repeat(pcounters::NAME_MAX + 1);
    assert_eq!(Counter::new(&too_long, Index::CpuId), Err(Error::NameTooLong));
    assert_eq!(Counter::new(&"-".repeat(500), Index::CpuId), Err(Error::NameTooLong));
}

#[test]
fn duplicates_are_refused() {
    let c = Counter::new("api_dup", Index::CpuId).unwrap();
    assert_eq!(Counter::new("api_dup", Index::CpuId), Err(Error::Exists));
    assert_eq!(Counter::new("api_dup", Index::MmCid), Err(Error::Exists));
    // Names are case-sensitive.
    let d = Counter::new("API_DUP", Index::CpuId).unwrap();
    c.delete().unwrap();
    d.delete().unwrap();
}

#[test]
fn forged_handles_are_refused() {
    let c = Counter::new("api_forged", Index::CpuId).unwrap();
    let raw = c.to_raw();
    let forged = [
        0,
        1,
        u64::MAX,
        raw ^ (1 << 24),                // other index bit
        raw + (1 << 40),                // generation not issued yet
        raw | 0xff_ffff,                // slot out of range
        (raw & !0xff_ffff) | 1_000_000, // slot whose chunk does not exist
    ];
    for f in forged {
        let f = Counter::from_raw(f);
        let e = f.try_add(1).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument | Error::NotFound), "{f:?}: {e:?}");
        assert!(f.get().is_err());
        assert!(f.delete().is_err());
        assert!(f.name().is_err());
    }
    assert_eq!(Counter::from_raw(0).try_add(1), Err(Error::InvalidArgument));
    assert_eq!(Counter::from_raw(u64::MAX).get(), Err(Error::InvalidArgument));
    assert_eq!(Counter::from_raw(raw + (1 << 40)).get(), Err(Error::InvalidArgument));
    assert_eq!(c.get(), Ok(0), "a refused handle changed a live counter");
    c.delete().unwrap();
}

#[test]
fn adds_racing_a_delete_are_counted_or_refused() {
    for round in 0..20 {
        let c = Counter::new(&format!("api_race_{round}"), Index::CpuId).unwrap();
        let ok = Arc::new(AtomicI64::new(0));
        let refused = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let (ok, refused) = (ok.clone(), refused.clone());
                std::thread::spawn(move || loop {
                    match c.try_add(1) {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert_eq!(e, Error::NotFound);
                            refused.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2));
        let before = c.get().unwrap();
        c.delete().unwrap();
        for w in workers {
            w.join().unwrap();
        }
        assert!(refused.load(Ordering::Relaxed));
        assert!(before <= ok.load(Ordering::Relaxed));
        assert_eq!(c.get(), Err(Error::NotFound));
    }
}

#[test]
fn snapshot_and_prometheus_are_sorted_and_exact() {
    let names = ["api_snap_b", "api_snap_a", "api_snap_c:x"];
    let cs: Vec<Counter> = names.iter().map(|n| Counter::new(n, Index::CpuId).unwrap()).collect();
    cs[0].add(2);
    cs[1].add(-3);
    cs[2].add(i64::MIN);
    let snap = pcounters::snapshot().unwrap();
    assert!(snap.windows(2).all(|w| w[0].name < w[1].name), "snapshot not sorted");
    let mine: Vec<_> = snap.iter().filter(|s| s.name.starts_with("api_snap_")).collect();
    assert_eq!(mine.len(), 3);
    assert_eq!((mine[0].name.as_str(), mine[0].value, mine[0].counter), ("api_snap_a", -3, cs[1]));
    assert_eq!((mine[1].name.as_str(), mine[1].value, mine[1].counter), ("api_snap_b", 2, cs[0]));
    assert_eq!((mine[2].name.as_str(), mine[2].value, mine[2].counter), ("api_snap_c:x", i64::MIN, cs[2]));

    let text = pcounters::prometheus().unwrap();
    assert!(text.is_empty() || text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() % 2, 0);
    for pair in lines.chunks(2) {
        let kind = pair[0].strip_prefix("# TYPE ").expect(pair[0]);
        let name = kind.strip_suffix(" counter").or_else(|| kind.strip_suffix(" gauge")).expect(pair[0]);
        let (n, v) = pair[1].split_once(' ').expect(pair[1]);
        assert_eq!(n, name);
        v.parse::<i64>().expect(v);
    }
    let mine: Vec<&str> = lines.iter().copied().filter(|l| l.contains("api_snap_")).collect();
    assert_eq!(
        mine,
        [
            // Negative adds make a counter a gauge: Prometheus counters never go down.
            "# TYPE api_snap_a gauge",
            "api_snap_a -3",
            "# TYPE api_snap_b counter",
            "api_snap_b 2",
            "# TYPE api_snap_c:x gauge",
            "api_snap_c:x -9223372036854775808",
        ]
    );
    for c in cs {
        c.delete().unwrap();
    }
    assert!(pcounters::snapshot().unwrap().iter().all(|s| !s.name.starts_with("api_snap_")));
}

#[test]
fn counters_cost_no_memory_per_thread() {
    // 2,000 threads each add once: the pool's resident memory does not depend on them.
    let c = Counter::new("api_many_threads", Index::MmCid).unwrap();
    let handles: Vec<_> =
        (0..2000).map(|_| std::thread::Builder::new().stack_size(64 * 1024).spawn(move || c.inc()).unwrap()).collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(c.get(), Ok(2000));
    c.delete().unwrap();
}

// ---- The C entry points, called directly through the rlib ----------------------------

fn rc_of(code: i32) -> Result<(), Error> {
    if code == 0 {
        Ok(())
    } else {
        Err(Error::from_code(code).expect("a known code"))
    }
}

#[test]
fn c_entry_points_refuse_bad_input() {
    let mut c = pcounters_counter { id: 0 };
    // SAFETY: every pointer passed is null or valid; the strings are NUL-terminated.
    unsafe {
        assert_eq!(rc_of(ffi::pcounters_create(std::ptr::null(), 0, &mut c)), Err(Error::InvalidArgument));
        assert_eq!(
            rc_of(ffi::pcounters_create(c"api_ffi".as_ptr(), 0, std::ptr::null_mut())),
            Err(Error::InvalidArgument)
        );
        assert_eq!(rc_of(ffi::pcounters_create(c"api_ffi".as_ptr(), 2, &mut c)), Err(Error::InvalidArgument));
        assert_eq!(rc_of(ffi::pcounters_create(c"api ffi".as_ptr(), 0, &mut c)), Err(Error::InvalidArgument));
        let long = std::ffi::CString::new("x".repeat(10_000)).unwrap();
        assert_eq!(rc_of(ffi::pcounters_create(long.as_ptr(), 0, &mut c)), Err(Error::NameTooLong));
        assert_eq!(c.id, 0, "out written on error");

        assert_eq!(rc_of(ffi::pcounters_create(c"api_ffi".as_ptr(), ffi::PCOUNTERS_INDEX_MM_CID, &mut c)), Ok(()));
        assert_eq!(rc_of(ffi::pcounters_create(c"api_ffi".as_ptr(), 0, &mut c)), Err(Error::Exists));
        assert_eq!(rc_of(ffi::pcounters_add(c, 41)), Ok(()));
        assert_eq!(rc_of(ffi::pcounters_add(c, 1)), Ok(()));
        let mut v = 0i64;
        assert_eq!(rc_of(ffi::pcounters_get(c, &mut v)), Ok(()));
        assert_eq!(v, 42);
        assert_eq!(Counter::from_raw(c.id).get(), Ok(42), "the C handle is the Rust handle");
        assert_eq!(rc_of(ffi::pcounters_get(c, std::ptr::null_mut())), Err(Error::InvalidArgument));
        let mut index = -1;
        assert_eq!(rc_of(ffi::pcounters_index(c, &mut index)), Ok(()));
        assert_eq!(index, if Index::MmCid.resolve() == Index::MmCid { 1 } else { 0 });

        let mut name = [0 as libc::c_char; 8];
        assert_eq!(rc_of(ffi::pcounters_name(c, name.as_mut_ptr(), 8)), Ok(()));
        assert_eq!(CStr::from_ptr(name.as_ptr()).to_str(), Ok("api_ffi"));
        assert_eq!(rc_of(ffi::pcounters_name(c, name.as_mut_ptr(), 7)), Err(Error::BufferTooSmall));
        assert_eq!(CStr::from_ptr(name.as_ptr()).to_str(), Ok("api_ff"));

        let mut count = 0usize;
        assert_eq!(rc_of(ffi::pcounters_snapshot(std::ptr::null_mut(), 1, &mut count)), Err(Error::InvalidArgument));
        assert_eq!(
            rc_of(ffi::pcounters_snapshot(std::ptr::null_mut(), 0, std::ptr::null_mut())),
            Err(Error::InvalidArgument)
        );
        let mut len = 0usize;
        assert_eq!(rc_of(ffi::pcounters_prometheus(std::ptr::null_mut(), 3, &mut len)), Err(Error::InvalidArgument));
        assert_eq!(rc_of(ffi::pcounters_foreach(None, std::ptr::null_mut())), Err(Error::InvalidArgument));
        assert_eq!(rc_of(ffi::pcounters_rseq_stats(std::ptr::null_mut())), Err(Error::InvalidArgument));

        assert_eq!(rc_of(ffi::pcounters_delete(c)), Ok(()));
        assert_eq!(rc_of(ffi::pcounters_delete(c)), Err(Error::NotFound));
        assert_eq!(rc_of(ffi::pcounters_add(c, 1)), Err(Error::NotFound));
        assert_eq!(rc_of(ffi::pcounters_add(pcounters_counter { id: 0 }, 1)), Err(Error::InvalidArgument));
        assert_eq!(rc_of(ffi::pcounters_lookup(c"api_ffi".as_ptr(), &mut c)), Err(Error::NotFound));
    }
}

#[test]
fn c_snapshot_and_prometheus_buffers() {
    let _serial = common::serial(); // counts every counter of the process
    let a = Counter::new("api_cbuf_a", Index::CpuId).unwrap();
    a.add(10);
    let expect_snapshot = pcounters::snapshot().unwrap();
    let n = expect_snapshot.len();
    let mut count = 0usize;
    // SAFETY: buffers are valid for the sizes passed.
    unsafe {
        let mut out: Vec<pcounters_value> = Vec::with_capacity(n + 4);
        let rc = ffi::pcounters_snapshot(out.as_mut_ptr(), n + 4, &mut count);
        if rc == 0 {
            out.set_len(count);
            let got: Vec<(String, i64, u64)> = out
                .iter()
                .map(|v| (CStr::from_ptr(v.name.as_ptr()).to_str().unwrap().to_owned(), v.value, v.counter.id))
                .collect();
            assert!(got.iter().any(|g| g == &("api_cbuf_a".to_owned(), 10, a.to_raw())));
            assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
        } else {
            // Other tests created counters meanwhile.
            assert_eq!(rc_of(rc), Err(Error::BufferTooSmall));
        }

        let text = pcounters::prometheus().unwrap();
        let mut len = 0usize;
        let mut buf = vec![0u8; text.len() + 64];
        let rc = ffi::pcounters_prometheus(buf.as_mut_ptr().cast(), buf.len(), &mut len);
        if rc == 0 {
            assert_eq!(buf[len], 0);
            let got = std::str::from_utf8(&buf[..len]).unwrap();
            assert!(got.contains("# TYPE api_cbuf_a counter\napi_cbuf_a 10\n"));
        }
        let mut small = [0x55u8; 4];
        assert_eq!(
            rc_of(ffi::pcounters_prometheus(small.as_mut_ptr().cast(), small.len(), &mut len)),
            Err(Error::BufferTooSmall)
        );
        assert_eq!(&small, b"# T\0");
        assert!(len > 4);
    }
    a.delete().unwrap();
}

#[test]
fn diagnostics() {
    let _serial = common::serial();
    let mode = pcounters::rseq_mode();
    assert_eq!(mode, rseq::mode());
    let mut err = -1;
    // SAFETY: `err` is valid for writing.
    let c_mode = unsafe { ffi::pcounters_rseq_mode(&mut err) };
    let (want, want_err) = match mode {
        pcounters::Mode::LibcOwned => (ffi::PCOUNTERS_MODE_LIBC_OWNED, 0),
        pcounters::Mode::Registered => (ffi::PCOUNTERS_MODE_REGISTERED, 0),
        pcounters::Mode::Unavailable { errno } => (ffi::PCOUNTERS_MODE_UNAVAILABLE, errno),
        pcounters::Mode::Disabled => (ffi::PCOUNTERS_MODE_DISABLED, 0),
    };
    assert_eq!((c_mode, err), (want, want_err), "{mode:?}");
    let c = Counter::new("api_diag", Index::CpuId).unwrap();
    let before = pcounters::rseq_stats();
    pcounters::force_fallback(true);
    assert_eq!(pcounters::rseq_mode(), pcounters::Mode::Disabled);
    for _ in 0..100 {
        c.inc();
    }
    pcounters::force_fallback(false);
    let after = pcounters::rseq_stats();
    assert!(after.fallback_ops >= before.fallback_ops + 100);
    assert_eq!(pcounters::rseq_mode(), mode);
    assert_eq!(c.get(), Ok(100));
    c.delete().unwrap();
    // SAFETY: static strings.
    unsafe {
        assert_eq!(CStr::from_ptr(ffi::pcounters_version()).to_str(), Ok(env!("CARGO_PKG_VERSION")));
        assert_eq!(CStr::from_ptr(ffi::pcounters_strerror(0)).to_str(), Ok("success"));
        assert!(!CStr::from_ptr(ffi::pcounters_strerror(i32::MIN)).to_bytes().is_empty());
    }
}

//! Slot reuse after a delete, alone in its process: no other test may take the slot.

use std::time::Duration;

use pcounters::{Counter, Error, Index};

#[test]
fn deleted_slot_is_reused_after_the_quarantine_and_starts_at_zero() {
    let old = Counter::new("api_reuse_old", Index::CpuId).unwrap();
    old.add(1234);
    let slot = old.to_raw() & 0xff_ffff;
    old.delete().unwrap();
    // Before the quarantine ends, new counters take other slots.
    let early = Counter::new("api_reuse_early", Index::CpuId).unwrap();
    assert_ne!(early.to_raw() & 0xff_ffff, slot);
    early.delete().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    // Slots leave the quarantine oldest first: create until ours comes out.
    let mut made = Vec::new();
    let reused = loop {
        let c = Counter::new(&format!("api_reuse_{}", made.len()), Index::MmCid).unwrap();
        made.push(c);
        if c.to_raw() & 0xff_ffff == slot {
            break c;
        }
        assert!(made.len() < 10_000, "slot {slot} never reused");
    };
    assert_eq!(reused.get(), Ok(0), "a reused slot must start at zero");
    assert_eq!(old.try_add(1), Err(Error::NotFound));
    assert_eq!(old.get(), Err(Error::NotFound));
    reused.add(7);
    assert_eq!(reused.get(), Ok(7));
    assert_eq!(reused.index(), Ok(Index::MmCid.resolve()));
    for c in made {
        c.delete().unwrap();
    }
}

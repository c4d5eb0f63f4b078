//! The time-slice extension where the kernel lacks it changes nothing, and where it has it
//! the request byte follows [`rseq::slice::request`] / [`rseq::slice::release`].
//!
//! (Simulation of the extension on kernels without it is in `slice_sim.rs`: it switches a
//! process-wide hook, so it lives in its own test binary.)

use rseq::slice::{self, Released, Token};

#[test]
fn request_and_release_match_the_kernel() {
    let fs = rseq::feature_size();
    let mode = rseq::mode();
    let before = slice::current_bytes();
    eprintln!("feature size {fs}, mode {}, supported {}, bytes {before:?}", mode.name(), slice::supported());
    if fs < slice::MIN_FEATURE_SIZE {
        // The kernel has no slice_ctrl: nothing is offered and nothing is written.
        assert!(!slice::supported());
        assert!(!slice::enable_current_thread());
        assert!(!slice::enabled_current_thread());
        let t = slice::request();
        assert_eq!(t, Token::Unsupported);
        assert_eq!(slice::current_bytes(), before, "an unsupported request wrote the area");
        assert_eq!(slice::release(t), Released::Nothing);
        assert_eq!(slice::current_bytes(), before);
        return;
    }
    if !slice::supported() {
        // The field exists but this kernel (or registration) does not offer the extension.
        assert_eq!(slice::request(), Token::Unsupported);
        assert_eq!(slice::current_bytes(), before);
        return;
    }
    assert!(slice::enable_current_thread());
    assert!(slice::enabled_current_thread());
    let t = slice::request();
    assert_eq!(t, Token::Requested);
    let (req, granted) = slice::current_bytes().unwrap();
    // The kernel may have granted (and cleared the request) already.
    assert!(req == 1 || granted == 1, "request not visible: {req} {granted}");
    let inner = slice::request();
    assert_eq!(inner, Token::Nested);
    assert_eq!(slice::release(inner), Released::Nothing);
    assert!(matches!(slice::release(t), Released::Cleared | Released::Yielded { .. }));
    assert_eq!(slice::current_bytes().unwrap().0, 0, "release left the request set");
}

#[test]
fn forced_unsupported_writes_nothing() {
    slice::force_unsupported(true);
    let before = slice::current_bytes();
    assert!(!slice::supported());
    assert_eq!(slice::request(), Token::Unsupported);
    assert_eq!(slice::current_bytes(), before);
    slice::force_unsupported(false);
}

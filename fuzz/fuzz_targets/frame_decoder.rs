//! The frame decoder against tungstenite, on arbitrary bytes cut into arbitrary reads.
//!
//! Input layout: byte 0 picks the limits, bytes 1..=4 the read sizes (cycled, 0 = the rest),
//! the remainder is the client byte stream (frames after the upgrade).
//!
//! Oracles:
//! - tungstenite (server role, same size limit, no fragment limit) reaches the same verdict
//!   and the same messages, up to the differences documented in `customws_fuzz::frames`;
//! - the way the input is cut into reads changes nothing (same messages, same error);
//! - a fragment limit only cuts the run short, with `TooManyFragments`;
//! - the sans-IO contract: consumed within the buffer, a kept tail under 140 bytes, wire-valid
//!   close codes, assembly memory bounded by the limit, no panic.
#![no_main]

use customws::proto::codec::DecoderLimits;
use customws_fuzz::frames::{equivalent, run_ours, run_tungstenite, End};
use customws_fuzz::Reads;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    // At least 125: tungstenite's frame-size limit also applies to control frames (always
    // <= 125 bytes), ours applies to data messages only.
    let max_message = [125usize, 1000, 4096, 65_536][usize::from(select & 3)];
    let max_fragments = [1usize, 2, 5, 100][usize::from((select >> 2) & 3)];
    let reads = Reads::new(rest, 4);
    let input = reads.stream();

    let unlimited = DecoderLimits {
        max_message_size: max_message,
        max_fragments: usize::MAX,
    };
    let ours = run_ours(reads.clone(), &unlimited);
    let theirs = run_tungstenite(input, max_message);
    if let Err(why) = equivalent(input, &ours, &theirs) {
        panic!(
            "{why}\n ours: {:?} after {:?}\n theirs: {:?} after {:?}",
            ours.end, ours.events, theirs.end, theirs.events
        );
    }

    // Read boundaries must not matter.
    let whole = run_ours(std::iter::once(input), &unlimited);
    assert_eq!(whole.events, ours.events, "messages depend on read sizes");
    match (&whole.end, &ours.end) {
        (End::Rejected(a, _), End::Rejected(b, _)) => assert_eq!(a, b, "error depends on reads"),
        (a, b) => assert_eq!(a, b, "verdict depends on read sizes"),
    }

    // A fragment limit only cuts the same run short.
    let limited = run_ours(
        reads,
        &DecoderLimits {
            max_message_size: max_message,
            max_fragments,
        },
    );
    assert!(
        ours.events.starts_with(&limited.events),
        "fragment limit changed messages"
    );
    let same_end = match (&limited.end, &ours.end) {
        (End::Rejected(a, _), End::Rejected(b, _)) => a == b,
        (a, b) => a == b,
    };
    if !(same_end && limited.events == ours.events) {
        assert!(
            matches!(&limited.end, End::Rejected(e, _) if e.starts_with("TooManyFragments")),
            "limited run ended with {:?}, unlimited with {:?}",
            limited.end,
            ours.end
        );
    }
});

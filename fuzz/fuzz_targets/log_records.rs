//! Arbitrary record payloads in a well-formed log segment (valid lengths
//! and checksums), so the fuzzer gets past the framing to the transaction
//! decoder and to applying whatever decodes. A panic is a finding, and so is
//! a tree that does not survive a snapshot round trip.

#![no_main]

use coordinator::storage::{decode_snapshot, encode_snapshot, log_segment_of, replay_bytes};
use coordinator::tree::DataTree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|records: Vec<Vec<u8>>| {
    let segment = log_segment_of(records.iter().map(Vec::as_slice));
    let mut tree = DataTree::new();
    if replay_bytes(&segment, true, &mut tree).is_ok() {
        let file = encode_snapshot(&mut tree).expect("snapshot of a replayed tree");
        let back = decode_snapshot(&file).expect("a snapshot just written reads back");
        assert_eq!(back.last_zxid(), tree.last_zxid());
        assert_eq!(back.paths().count(), tree.paths().count());
    }
});

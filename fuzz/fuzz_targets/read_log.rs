//! Feeds arbitrary bytes to the log reader recovery runs at startup, as the
//! last segment (where a torn tail is cut) and as an earlier one. A panic
//! is a finding; so is a replay that claims a torn tail in an earlier
//! segment, or that leaves a tree that cannot be snapshotted and read back.

#![no_main]

use coordinator::storage::{decode_snapshot, encode_snapshot, replay_bytes};
use coordinator::tree::DataTree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for last in [true, false] {
        let mut tree = DataTree::new();
        if let Ok(replay) = replay_bytes(data, last, &mut tree) {
            assert!(last || replay.torn_at.is_none(), "a torn tail outside the last segment");
            let file = encode_snapshot(&mut tree).expect("snapshot of a replayed tree");
            let back = decode_snapshot(&file).expect("a snapshot just written reads back");
            assert_eq!(back.last_zxid(), tree.last_zxid());
        }
    }
});

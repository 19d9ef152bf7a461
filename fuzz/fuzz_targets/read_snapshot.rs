//! Feeds arbitrary bytes to the snapshot reader, raw and (first byte odd)
//! wrapped with a valid magic and checksum so the tree decoder itself is
//! reached. A panic, or an allocation the input cannot justify, is a
//! finding; a tree that reads must also write and read back the same.

#![no_main]

use coordinator::storage::{decode_snapshot, encode_snapshot, snapshot_file_of};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let file = if mode & 1 == 1 { snapshot_file_of(body) } else { data.to_vec() };
    if let Ok(mut tree) = decode_snapshot(&file) {
        let again = encode_snapshot(&mut tree).expect("a tree that was read can be written");
        let back = decode_snapshot(&again).expect("a snapshot just written reads back");
        assert_eq!(back.last_zxid(), tree.last_zxid());
        assert_eq!(back.paths().count(), tree.paths().count());
    }
});

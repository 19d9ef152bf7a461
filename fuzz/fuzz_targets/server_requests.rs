//! The server's path from bytes on a socket to a state change, without the
//! socket: frames split under `jute.maxbuffer`, request headers and bodies
//! decoded, watches registered, writes validated (`prep`) into transactions
//! that are applied to the tree, logged (encoded and decoded again, as
//! recovery would read them) and turned into watch events. Ends with a
//! snapshot round trip of the tree. A panic or a failed check is a finding.

#![no_main]

use bytes::BytesMut;
use coordinator::prep::{prepare, Ctx};
use coordinator::storage::{decode_snapshot, encode_snapshot};
use coordinator::tree::DataTree;
use coordinator::txn::{decode_record, encode_record, TxnHeader};
use coordinator::watch::WatchManager;
use libfuzzer_sys::fuzz_target;
use zk_wire::codec::{Jute, Reader};
use zk_wire::consts::DEFAULT_MAX_BUFFER;
use zk_wire::frame::split_frame;
use zk_wire::records::{Id, RequestHeader};
use zk_wire::Request;

fuzz_target!(|data: &[u8]| {
    let mut tree = DataTree::new();
    let mut watches = WatchManager::default();
    // Two connections: one with a digest id, one with none.
    let alice = [Id { scheme: "digest".into(), id: "alice:x".into() }];
    watches.set_auth(1, &alice);
    let mut buf = BytesMut::from(data);
    let mut n = 0u64;
    while let Ok(Some(frame)) = split_frame(&mut buf, DEFAULT_MAX_BUFFER) {
        n += 1;
        let conn = n % 2 + 1;
        let auth: &[Id] = if conn == 1 { &alice } else { &[] };
        let mut r = Reader::new(&frame);
        let Ok(hdr) = RequestHeader::read(&mut r) else { continue };
        let Ok(req) = Request::decode(hdr.op, r.rest()) else { continue };
        match &req {
            Request::GetData(w) | Request::Exists(w) if w.watch => watches.add_data(&w.path, conn),
            Request::GetChildren(w) | Request::GetChildren2(w) if w.watch => watches.add_child(&w.path, conn),
            Request::AddWatch(w) => watches.add_persistent(&w.path, conn, w.mode == 1),
            _ => {}
        }
        if !req.is_write() {
            continue;
        }
        let zxid = tree.last_zxid() + 1;
        let ctx = Ctx { session_id: conn as i64, auth, extended_types: true, zxid, time: 1 };
        let txn = prepare(&tree, &ctx, &req);
        let thdr = TxnHeader { session_id: conn as i64, cxid: hdr.xid, zxid, time: 1 };
        let payload = encode_record(&thdr, &txn);
        let (hdr_back, txn_back) = decode_record(&payload).expect("a logged txn reads back");
        assert_eq!((hdr_back, &txn_back), (thdr, &txn));
        let mut triggers = Vec::new();
        tree.apply(&thdr, &txn, &mut triggers);
        let mut notes = Vec::new();
        watches.fire(&triggers, &mut notes);
    }
    let file = encode_snapshot(&mut tree).expect("snapshot");
    let back = decode_snapshot(&file).expect("a snapshot just written reads back");
    assert_eq!(back.paths().count(), tree.paths().count());
});

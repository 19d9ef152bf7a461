//! Feeds arbitrary bytes to everything the coordinator decodes from a
//! client, in the order it does: the frame splitter, the handshake, the
//! request header, then the body for the header's opcode. Any panic, or an
//! allocation the input could not justify, is a finding.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use zk_wire::codec::{Jute, Reader};
use zk_wire::consts::DEFAULT_MAX_BUFFER;
use zk_wire::frame::split_frame;
use zk_wire::records::{ConnectRequest, RequestHeader};
use zk_wire::Request;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut first = true;
    while let Ok(Some(frame)) = split_frame(&mut buf, DEFAULT_MAX_BUFFER) {
        if first {
            first = false;
            let _ = ConnectRequest::decode(&frame);
            continue;
        }
        let mut r = Reader::new(&frame);
        if let Ok(hdr) = RequestHeader::read(&mut r) {
            if let Ok(req) = Request::decode(hdr.op, r.rest()) {
                // What decodes must re-encode and decode to the same value.
                let mut body = Vec::new();
                req.write_body(&mut body);
                assert_eq!(Request::decode(req.op_code().as_i32(), &body), Ok(req));
            }
        }
    }
});

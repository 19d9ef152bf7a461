//! Reply frames: a header and a typed body, length-prefixed. Every frame
//! the server sends is built here, from zk-wire records.

use bytes::Bytes;
use zk_wire::codec::Jute;
use zk_wire::consts::NOTIFICATION_XID;
use zk_wire::frame::{finish_frame, start_frame};
use zk_wire::records::{ConnectResponse, ReplyHeader, Stat, WatcherEvent};
use zk_wire::{ErrorCode, Response};

use crate::tree::Children;

/// A watch event's frame: the notification header (xid -1, no zxid), then
/// the event.
pub(crate) fn notification(event: &WatcherEvent) -> Bytes {
    let mut out = Vec::with_capacity(64);
    let at = start_frame(&mut out);
    ReplyHeader { xid: NOTIFICATION_XID, zxid: -1, err: 0 }.write(&mut out);
    event.write(&mut out);
    finish_frame(&mut out, at);
    Bytes::from(out)
}

/// A reply frame: the header, and the body when the request succeeded (a
/// failed request carries none).
pub(crate) fn reply(xid: i32, zxid: i64, result: Result<&Response, ErrorCode>) -> Bytes {
    let mut out = Vec::with_capacity(64);
    let at = start_frame(&mut out);
    let err = result.as_ref().err().map_or(0, |e| e.as_i32());
    ReplyHeader { xid, zxid, err }.write(&mut out);
    if let Ok(body) = result {
        body.write(&mut out);
    }
    finish_frame(&mut out, at);
    Bytes::from(out)
}

/// The handshake reply: a ConnectResponse with no ReplyHeader.
pub fn connect_frame(reply: &ConnectResponse) -> Bytes {
    let mut out = Vec::with_capacity(48);
    let at = start_frame(&mut out);
    reply.write(&mut out);
    finish_frame(&mut out, at);
    Bytes::from(out)
}

/// A successful getChildren reply, or getChildren2's with its `stat`: the
/// names are copied from the tree's block, already in jute's encoding
/// (see [`Children::write`]).
pub(crate) fn listing(xid: i32, zxid: i64, children: &Children<'_>, stat: Option<&Stat>) -> Bytes {
    let mut out = Vec::with_capacity(96 + children.encoded_len());
    let at = start_frame(&mut out);
    ReplyHeader { xid, zxid, err: 0 }.write(&mut out);
    children.write(&mut out);
    if let Some(stat) = stat {
        stat.write(&mut out);
    }
    finish_frame(&mut out, at);
    Bytes::from(out)
}

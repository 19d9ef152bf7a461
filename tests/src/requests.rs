//! Request records built alike by every suite that speaks the wire
//! protocol itself: nodes open to all (the suites test the protocol, not
//! ACLs, unless they say so) and a fresh session's handshake.

use zk_wire::consts::{perms, CreateMode, OpCode};
use zk_wire::records::{Acl, ConnectRequest, CreateTtlRequest, Id};
use zk_wire::Request;

/// `world:anyone` with every permission.
pub fn open_acl() -> Vec<Acl> {
    vec![Acl { perms: perms::ALL, id: Id { scheme: "world".into(), id: "anyone".into() } }]
}

/// The body of a create of `path` holding `data`, open to all.
pub fn create_body(path: &str, data: &[u8], mode: CreateMode, ttl: i64) -> CreateTtlRequest {
    CreateTtlRequest { path: path.into(), data: Some(data.to_vec()), acl: open_acl(), flags: mode.as_i32(), ttl }
}

/// A plain create (no TTL) of `path` holding `data`, open to all.
pub fn create(path: &str, data: &[u8], mode: CreateMode) -> Request {
    Request::Create(OpCode::Create, create_body(path, data, mode, 0))
}

/// The handshake of a new session (none to resume, nothing seen yet)
/// asking for a 10 s timeout.
pub fn new_session_handshake() -> ConnectRequest {
    ConnectRequest {
        protocol_version: 0,
        last_zxid_seen: 0,
        time_out: 10_000,
        session_id: 0,
        passwd: vec![0; 16],
        read_only: Some(false),
    }
}

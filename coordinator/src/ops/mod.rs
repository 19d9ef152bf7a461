//! What each request does: the dispatcher, and one handler per operation.
//!
//! - [`read`]: exists, getData, getChildren, getACL, multiRead and the
//!   other reads, each a function from the tree to a typed response
//!   record, run under the tree's read lock;
//! - [`write`]: create, delete, setData, setACL, check and multi, through
//!   the committer ([`crate::committer`]), answered from the txn's result;
//! - [`auth`]: addauth and whoAmI.
//!
//! Every reply body is a zk-wire record ([`Response`]), encoded by zk-wire:
//! no handler writes bytes itself.

mod auth;
mod read;
mod write;

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use zk_wire::codec::Jute;
use zk_wire::consts::OpCode;
use zk_wire::frame::{finish_frame, start_frame};
use zk_wire::records::{ConnectResponse, ReplyHeader};
use zk_wire::{ErrorCode, Request, Response};

use crate::committer::Proposal;
use crate::conn::{Answer, Client};
use crate::core::Core;
use crate::stats::RequestKind;
use crate::txn::Txn;

/// Builds one frame: a header and a body record.
pub(crate) fn frame(header: impl Jute, body: &impl Jute) -> Bytes {
    let mut out = Vec::with_capacity(64);
    let at = start_frame(&mut out);
    header.write(&mut out);
    body.write(&mut out);
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

impl Core {
    /// Carries out one request and queues its reply. Returns false when the
    /// connection must close after the reply (closeSession, failed auth).
    pub(crate) fn process(&self, client: &mut Client, xid: i32, req: Request) -> bool {
        let kind = match req {
            Request::Create(..)
            | Request::Delete(_)
            | Request::SetData(_)
            | Request::SetAcl(_)
            | Request::Check(_)
            | Request::Multi(_)
            | Request::CloseSession
            | Request::Unsupported(OpCode::Reconfig) => RequestKind::Update,
            _ => RequestKind::Read,
        };
        self.begin(client, kind);
        let conn = client.conn.clone();
        conn.last_cxid.store(xid.into(), Ordering::Relaxed);
        match req {
            Request::Ping => {
                let zxid = self.committer.last_zxid();
                client.reply(reply(xid, zxid, Ok(&Response::Empty)), zxid);
                true
            }
            Request::Auth(auth) => self.auth(client, xid, &auth),
            Request::Create(..)
            | Request::Delete(_)
            | Request::SetData(_)
            | Request::SetAcl(_)
            | Request::Check(_)
            | Request::Multi(_) => {
                self.write(client, xid, &req);
                true
            }
            Request::CloseSession => {
                self.close_session(client.session_id, Some((client, xid)));
                false
            }
            Request::Unsupported(OpCode::Reconfig) => {
                // A standalone server has reconfiguration disabled; as in
                // ZooKeeper the refusal is an error transaction.
                let code = ErrorCode::ReconfigDisabled;
                self.commit(
                    Proposal { session_id: client.session_id, cxid: xid, auth: &[], from: Some(client) },
                    |_, _| Txn::Error(code),
                    |zxid, _| client.reply(reply(xid, zxid, Err(code)), zxid),
                );
                true
            }
            Request::Unsupported(op) => {
                // ZooKeeper answers ZUNIMPLEMENTED and then drops the
                // connection; we answer the same and keep it, so one odd
                // request does not cost a client its connection.
                tracing::info!(session = format!("{:#x}", client.session_id), op = ?op, "unimplemented request");
                let zxid = self.committer.last_zxid();
                client.reply(reply(xid, zxid, Err(ErrorCode::Unimplemented)), zxid);
                true
            }
            other => {
                self.read(client, xid, &other);
                true
            }
        }
    }

    /// A request has been read: it is outstanding until its reply is
    /// written (see [`crate::conn`]'s writer, which records its latency).
    fn begin(&self, client: &mut Client, kind: RequestKind) {
        client.request = Answer { started: Instant::now(), kind };
        client.conn.outstanding.fetch_add(1, Ordering::Relaxed);
        self.stats.request_began();
    }

    /// Answers a request whose body did not decode for its opcode. As in
    /// ZooKeeper, that is a MarshallingError reply and the connection
    /// carries on: the frame's length was sound, so the next frame starts
    /// where it should.
    pub(crate) fn reject_malformed(&self, client: &mut Client, xid: i32) {
        self.begin(client, RequestKind::Read);
        let zxid = self.committer.last_zxid();
        client.reply(reply(xid, zxid, Err(ErrorCode::MarshallingError)), zxid);
    }
}

//! What each request does: the dispatcher, and one handler per operation.
//!
//! - `read`: exists, getData, getChildren, getACL, multiRead and the
//!   other reads, each a function from the tree to a typed response
//!   record, run under the tree's read lock;
//! - `write`: create, delete, setData, setACL, check and multi, through
//!   the committer (`committer`), answered from the txn's result;
//! - `auth`: addauth and whoAmI;
//! - [`session`]: the handshake that opens or reattaches a session, and
//!   its end (closeSession, the admin API, or expiry);
//! - [`expiry`]: what the server ends on its own, by the clock: sessions
//!   past their deadline, empty containers, stale TTL nodes.
//!
//! Every reply body is a zk-wire record ([`Response`]), encoded by zk-wire
//! (`frames`): no handler writes bytes itself.
//!
//! The handlers sit above [`crate::core`]: they take the server's state as
//! `&Core` and nothing below them calls back up.

mod auth;
pub mod expiry;
mod read;
pub mod session;
mod write;

use std::sync::atomic::Ordering;
use std::time::Instant;

use zk_wire::consts::OpCode;
use zk_wire::{ErrorCode, Request, Response};

use crate::clients::{Answer, Client};
use crate::committer::Proposal;
use crate::core::Core;
use crate::frames::reply;
use crate::session::SessionId;
use crate::stats::RequestKind;
use crate::txn::Txn;

/// Carries out one request and queues its reply. Returns false when the
/// connection must close after the reply (closeSession, failed auth).
pub(crate) fn process(core: &Core, client: &mut Client, xid: i32, req: Request) -> bool {
    let go_on = dispatch(core, client, xid, req);
    client.done(&core.stats);
    go_on
}

fn dispatch(core: &Core, client: &mut Client, xid: i32, req: Request) -> bool {
    // One list of what is a transaction, zk-wire's (see `is_write`).
    let kind = if req.is_write() { RequestKind::Update } else { RequestKind::Read };
    begin(core, client, kind);
    let conn = client.conn.clone();
    conn.last_cxid.store(xid.into(), Ordering::Relaxed);
    match req {
        Request::Ping => {
            let zxid = core.last_zxid();
            client.reply(reply(xid, zxid, Ok(&Response::Empty)), zxid);
            true
        }
        Request::Auth(auth) => auth::auth(core, client, xid, &auth),
        Request::Create(..)
        | Request::Delete(_)
        | Request::SetData(_)
        | Request::SetAcl(_)
        | Request::Check(_)
        | Request::Multi(_) => {
            write::write(core, client, xid, &req);
            true
        }
        Request::CloseSession => {
            session::close_session(core, client.session_id, Some((client, xid)));
            false
        }
        Request::Unsupported(OpCode::Reconfig) => {
            // A standalone server has reconfiguration disabled; as in
            // ZooKeeper the refusal is an error transaction.
            let code = ErrorCode::ReconfigDisabled;
            core.commit(
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
            tracing::info!(session = %SessionId(client.session_id), op = ?op, "unimplemented request");
            let zxid = core.last_zxid();
            client.reply(reply(xid, zxid, Err(ErrorCode::Unimplemented)), zxid);
            true
        }
        other => {
            read::read(core, client, xid, &other);
            true
        }
    }
}

/// A request has been read: it is in process until its reply is queued
/// (and a write's txn is outstanding until durable, see
/// [`Core::outstanding_requests`]). The latency runs until the reply is
/// written ([`crate::conn`]'s writer records it).
fn begin(core: &Core, client: &mut Client, kind: RequestKind) {
    client.request = Answer { started: Instant::now(), kind };
    client.in_process.store(true, Ordering::Relaxed);
    core.stats.request_began(core.unlogged());
}

/// Answers a request whose body did not decode for its opcode. As in
/// ZooKeeper, that is a MarshallingError reply and the connection
/// carries on: the frame's length was sound, so the next frame starts
/// where it should.
pub(crate) fn reject_malformed(core: &Core, client: &mut Client, xid: i32) {
    begin(core, client, RequestKind::Read);
    let zxid = core.last_zxid();
    client.reply(reply(xid, zxid, Err(ErrorCode::MarshallingError)), zxid);
    client.done(&core.stats);
}

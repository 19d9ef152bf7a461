//! The writes: a request goes through the committer, and its reply is
//! built from the txn's result.

use std::sync::atomic::Ordering;

use zk_wire::consts::OpCode;
use zk_wire::records::{Create2Response, PathResponse, StatResponse};
use zk_wire::request::MultiOp;
use zk_wire::response::MultiResult;
use zk_wire::{Request, Response};

use crate::clients::Client;
use crate::committer::Proposal;
use crate::core::Core;
use crate::prep;
use crate::tree::TxnResult;

/// create, delete, setData, setACL, check and multi.
pub(super) fn write(core: &Core, client: &Client, xid: i32, req: &Request) {
    let conn = &client.conn;
    core.commit(
        Proposal { session_id: client.session_id, cxid: xid, auth: &client.auth, from: Some(client) },
        |tree, ctx| prep::prepare(tree, ctx, req),
        |zxid, result| {
            conn.last_zxid.store(zxid, Ordering::Relaxed);
            client.reply(crate::frames::reply(xid, zxid, response(req, result).as_ref().map_err(|e| *e)), zxid);
        },
    )
}

/// The reply to a write, from what its txn did.
fn response(req: &Request, result: &TxnResult) -> Result<Response, zk_wire::ErrorCode> {
    Ok(match result {
        TxnResult::Error(code) => return Err(*code),
        // A plain create answers with the path alone; create2, createTTL
        // and createContainer with the stat too.
        TxnResult::Created { path, .. } if req.op_code() == OpCode::Create => {
            Response::Path(PathResponse { path: path.clone() })
        }
        TxnResult::Created { path, stat } => {
            Response::Create2(Create2Response { path: path.clone(), stat: stat.clone() })
        }
        TxnResult::Stat(stat) => Response::Stat(StatResponse { stat: stat.clone() }),
        TxnResult::Multi(results) => multi_results(req, results),
        TxnResult::MultiError(codes) => Response::Multi(codes.iter().map(|c| MultiResult::Error(*c)).collect()),
        TxnResult::Deleted | TxnResult::Checked | TxnResult::SessionCreated | TxnResult::SessionClosed => {
            Response::Empty
        }
    })
}

/// The reply of a successful multi: one result per op, shaped by the op's
/// opcode.
fn multi_results(req: &Request, results: &[TxnResult]) -> Response {
    let ops: &[MultiOp] = match req {
        Request::Multi(ops) => ops,
        _ => &[],
    };
    let out = ops
        .iter()
        .zip(results)
        .map(|(op, r)| match (op, r) {
            // As ZooKeeper 3.8 answers: create and create2 inside a multi
            // are both logged as a create txn and answer the path alone;
            // createTTL and createContainer answer path and stat under the
            // create2 opcode.
            (MultiOp::Create(OpCode::Create | OpCode::Create2, _), TxnResult::Created { path, .. }) => {
                MultiResult::Create(PathResponse { path: path.clone() })
            }
            (MultiOp::Create(_, _), TxnResult::Created { path, stat }) => {
                MultiResult::Create2(OpCode::Create2, Create2Response { path: path.clone(), stat: stat.clone() })
            }
            (_, TxnResult::Deleted) => MultiResult::Delete,
            (_, TxnResult::Stat(stat)) => MultiResult::SetData(StatResponse { stat: stat.clone() }),
            (_, TxnResult::Checked) => MultiResult::Check,
            (_, TxnResult::Error(code)) => MultiResult::Error(code.as_i32()),
            _ => MultiResult::Error(zk_wire::ErrorCode::RuntimeInconsistency.as_i32()),
        })
        .collect();
    Response::Multi(out)
}

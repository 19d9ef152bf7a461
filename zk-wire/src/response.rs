//! Typed reply bodies.
//!
//! A reply frame is a [`ReplyHeader`] and, when its `err` is 0, a body whose
//! record depends on the request's opcode. A failed request carries no body
//! (multi excepted: its body lists each op's result even when one failed).

use crate::codec::{DecodeError, Jute, Reader};
use crate::consts::OpCode;
use crate::records::*;

/// One op's result inside a multi or multiRead reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultiResult {
    Create(PathResponse),
    /// create2, createTTL and createContainer answer with the stat too.
    Create2(OpCode, Create2Response),
    Delete,
    SetData(StatResponse),
    Check,
    GetChildren(ChildrenResponse),
    GetData(GetDataResponse),
    /// The op's error code; in a failed multi, ops before the failure read
    /// 0 and ops after it read `RuntimeInconsistency`.
    Error(i32),
}

impl MultiResult {
    fn header(&self) -> MultiHeader {
        let (op, err) = match self {
            MultiResult::Create(_) => (OpCode::Create.as_i32(), 0),
            MultiResult::Create2(op, _) => (op.as_i32(), 0),
            MultiResult::Delete => (OpCode::Delete.as_i32(), 0),
            MultiResult::SetData(_) => (OpCode::SetData.as_i32(), 0),
            MultiResult::Check => (OpCode::Check.as_i32(), 0),
            MultiResult::GetChildren(_) => (OpCode::GetChildren.as_i32(), 0),
            MultiResult::GetData(_) => (OpCode::GetData.as_i32(), 0),
            MultiResult::Error(e) => (OpCode::Error.as_i32(), *e),
        };
        MultiHeader { op, done: false, err }
    }
}

/// A decoded reply body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A reply with no body: delete, check, ping, auth, setWatches,
    /// removeWatches, checkWatches, closeSession, and every error.
    Empty,
    /// addWatch's: ZooKeeper answers it with an ErrorResponse whose err is
    /// 0 (four zero bytes), not with an empty body.
    AddWatch(ErrorResponse),
    Path(PathResponse),
    Create2(Create2Response),
    Stat(StatResponse),
    GetData(GetDataResponse),
    Children(ChildrenResponse),
    GetChildren2(GetChildren2Response),
    GetAcl(GetAclResponse),
    AllChildrenNumber(GetAllChildrenNumberResponse),
    WhoAmI(WhoAmIResponse),
    Multi(Vec<MultiResult>),
}

impl Response {
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Response::Empty => {}
            Response::AddWatch(r) => r.write(out),
            Response::Path(r) => r.write(out),
            Response::Create2(r) => r.write(out),
            Response::Stat(r) => r.write(out),
            Response::GetData(r) => r.write(out),
            Response::Children(r) => r.write(out),
            Response::GetChildren2(r) => r.write(out),
            Response::GetAcl(r) => r.write(out),
            Response::AllChildrenNumber(r) => r.write(out),
            Response::WhoAmI(r) => r.write(out),
            Response::Multi(results) => {
                for res in results {
                    res.header().write(out);
                    match res {
                        MultiResult::Create(r) => r.write(out),
                        MultiResult::Create2(_, r) => r.write(out),
                        MultiResult::SetData(r) => r.write(out),
                        MultiResult::GetChildren(r) => r.write(out),
                        MultiResult::GetData(r) => r.write(out),
                        MultiResult::Error(e) => ErrorResponse { err: *e }.write(out),
                        MultiResult::Delete | MultiResult::Check => {}
                    }
                }
                MultiHeader { op: -1, done: true, err: -1 }.write(out);
            }
        }
    }

    /// Decodes the body of a successful reply to a request with opcode `op`
    /// (the client side: the tests' raw client uses it).
    pub fn decode(op: OpCode, body: &[u8]) -> Result<Response, DecodeError> {
        let mut r = Reader::new(body);
        let resp = match op {
            OpCode::Create | OpCode::Sync => Response::Path(Jute::read(&mut r)?),
            OpCode::Create2 | OpCode::CreateTtl | OpCode::CreateContainer => Response::Create2(Jute::read(&mut r)?),
            OpCode::Exists | OpCode::SetData | OpCode::SetAcl => Response::Stat(Jute::read(&mut r)?),
            OpCode::GetData => Response::GetData(Jute::read(&mut r)?),
            OpCode::GetChildren | OpCode::GetEphemerals => Response::Children(Jute::read(&mut r)?),
            OpCode::GetChildren2 => Response::GetChildren2(Jute::read(&mut r)?),
            OpCode::GetAcl => Response::GetAcl(Jute::read(&mut r)?),
            OpCode::GetAllChildrenNumber => Response::AllChildrenNumber(Jute::read(&mut r)?),
            OpCode::WhoAmI => Response::WhoAmI(Jute::read(&mut r)?),
            OpCode::Multi | OpCode::MultiRead => Response::Multi(read_multi_results(&mut r)?),
            OpCode::AddWatch => Response::AddWatch(Jute::read(&mut r)?),
            _ => Response::Empty,
        };
        r.finish()?;
        Ok(resp)
    }
}

fn read_multi_results(r: &mut Reader<'_>) -> Result<Vec<MultiResult>, DecodeError> {
    let mut results = Vec::new();
    loop {
        let h = MultiHeader::read(r)?;
        if h.done {
            return Ok(results);
        }
        let code = OpCode::from_i32(h.op).ok_or(DecodeError::UnknownOpCode(h.op))?;
        results.push(match code {
            OpCode::Create => MultiResult::Create(Jute::read(r)?),
            OpCode::Create2 | OpCode::CreateTtl | OpCode::CreateContainer => MultiResult::Create2(code, Jute::read(r)?),
            OpCode::Delete => MultiResult::Delete,
            OpCode::SetData => MultiResult::SetData(Jute::read(r)?),
            OpCode::Check => MultiResult::Check,
            OpCode::GetChildren => MultiResult::GetChildren(Jute::read(r)?),
            OpCode::GetData => MultiResult::GetData(Jute::read(r)?),
            OpCode::Error => MultiResult::Error(ErrorResponse::read(r)?.err),
            _ => return Err(DecodeError::BadMultiOp { op: h.op, context: "multi reply" }),
        });
    }
}

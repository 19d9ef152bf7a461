//! Typed client requests.
//!
//! A request frame is a [`RequestHeader`] followed by a body whose record
//! depends on the opcode. [`Request::decode`] reads the body for a known
//! opcode; opcodes the protocol defines but a server may not implement
//! (reconfig, sasl, ...) decode to [`Request::Unsupported`] so the server can
//! answer `ZUNIMPLEMENTED` instead of dropping the connection.

use crate::codec::{DecodeError, Jute, Reader};
use crate::consts::{CreateMode, OpCode};
use crate::records::*;

/// One operation inside a `multi` (writes) or `multiRead` (reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultiOp {
    /// create, create2, createContainer or createTTL (the opcode says which
    /// reply shape the result takes).
    Create(OpCode, CreateTtlRequest),
    Delete(DeleteRequest),
    SetData(SetDataRequest),
    Check(CheckVersionRequest),
    /// In a multiRead; the watch flag is carried but ZooKeeper ignores it.
    GetChildren(PathWatchRequest),
    GetData(PathWatchRequest),
}

impl MultiOp {
    pub fn op_code(&self) -> OpCode {
        match self {
            MultiOp::Create(op, _) => *op,
            MultiOp::Delete(_) => OpCode::Delete,
            MultiOp::SetData(_) => OpCode::SetData,
            MultiOp::Check(_) => OpCode::Check,
            MultiOp::GetChildren(_) => OpCode::GetChildren,
            MultiOp::GetData(_) => OpCode::GetData,
        }
    }

    pub fn path(&self) -> &str {
        match self {
            MultiOp::Create(_, r) => &r.path,
            MultiOp::Delete(r) => &r.path,
            MultiOp::SetData(r) => &r.path,
            MultiOp::Check(r) => &r.path,
            MultiOp::GetChildren(r) | MultiOp::GetData(r) => &r.path,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        MultiHeader { op: self.op_code().as_i32(), done: false, err: -1 }.write(out);
        match self {
            MultiOp::Create(OpCode::CreateTtl, r) => r.write(out),
            MultiOp::Create(_, r) => {
                CreateRequest { path: r.path.clone(), data: r.data.clone(), acl: r.acl.clone(), flags: r.flags }
                    .write(out)
            }
            MultiOp::Delete(r) => r.write(out),
            MultiOp::SetData(r) => r.write(out),
            MultiOp::Check(r) => r.write(out),
            MultiOp::GetChildren(r) | MultiOp::GetData(r) => r.write(out),
        }
    }
}

/// A decoded client request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ping,
    CloseSession,
    /// create (1), create2 (15), createContainer (19) or createTTL (21); the
    /// ttl is 0 for the opcodes that carry none.
    Create(OpCode, CreateTtlRequest),
    Delete(DeleteRequest),
    Exists(PathWatchRequest),
    GetData(PathWatchRequest),
    SetData(SetDataRequest),
    GetAcl(PathRequest),
    SetAcl(SetAclRequest),
    GetChildren(PathWatchRequest),
    GetChildren2(PathWatchRequest),
    Sync(PathRequest),
    Check(CheckVersionRequest),
    Multi(Vec<MultiOp>),
    MultiRead(Vec<MultiOp>),
    Auth(AuthPacket),
    SetWatches(SetWatches2),
    SetWatches2(SetWatches2),
    AddWatch(AddWatchRequest),
    CheckWatches(WatchTypeRequest),
    RemoveWatches(WatchTypeRequest),
    GetEphemerals(PathRequest),
    GetAllChildrenNumber(PathRequest),
    WhoAmI,
    /// A defined opcode this protocol layer does not model (reconfig, sasl,
    /// deleteContainer from a client, ...). Its body is not read.
    Unsupported(OpCode),
}

impl Request {
    /// Decodes the body that followed a [`RequestHeader`] with opcode `op`.
    ///
    /// Trailing bytes are tolerated, as ZooKeeper tolerates them: it reads
    /// the record it expects and ignores the rest of the frame.
    pub fn decode(op: i32, body: &[u8]) -> Result<Request, DecodeError> {
        let code = OpCode::from_i32(op).ok_or(DecodeError::UnknownOpCode(op))?;
        let mut r = Reader::new(body);
        Self::read(code, &mut r)
    }

    fn read(code: OpCode, r: &mut Reader<'_>) -> Result<Request, DecodeError> {
        Ok(match code {
            OpCode::Ping => Request::Ping,
            OpCode::CloseSession => Request::CloseSession,
            OpCode::Create | OpCode::Create2 | OpCode::CreateContainer => {
                let c = CreateRequest::read(r)?;
                Request::Create(
                    code,
                    CreateTtlRequest { path: c.path, data: c.data, acl: c.acl, flags: c.flags, ttl: 0 },
                )
            }
            OpCode::CreateTtl => Request::Create(code, CreateTtlRequest::read(r)?),
            OpCode::Delete => Request::Delete(Jute::read(r)?),
            OpCode::Exists => Request::Exists(Jute::read(r)?),
            OpCode::GetData => Request::GetData(Jute::read(r)?),
            OpCode::SetData => Request::SetData(Jute::read(r)?),
            OpCode::GetAcl => Request::GetAcl(Jute::read(r)?),
            OpCode::SetAcl => Request::SetAcl(Jute::read(r)?),
            OpCode::GetChildren => Request::GetChildren(Jute::read(r)?),
            OpCode::GetChildren2 => Request::GetChildren2(Jute::read(r)?),
            OpCode::Sync => Request::Sync(Jute::read(r)?),
            OpCode::Check => Request::Check(Jute::read(r)?),
            OpCode::Multi => Request::Multi(read_multi(r, false)?),
            OpCode::MultiRead => Request::MultiRead(read_multi(r, true)?),
            OpCode::Auth => Request::Auth(Jute::read(r)?),
            OpCode::SetWatches => {
                let w = SetWatches::read(r)?;
                Request::SetWatches(SetWatches2 {
                    relative_zxid: w.relative_zxid,
                    data_watches: w.data_watches,
                    exist_watches: w.exist_watches,
                    child_watches: w.child_watches,
                    persistent_watches: Vec::new(),
                    persistent_recursive_watches: Vec::new(),
                })
            }
            OpCode::SetWatches2 => Request::SetWatches2(Jute::read(r)?),
            OpCode::AddWatch => Request::AddWatch(Jute::read(r)?),
            OpCode::CheckWatches => Request::CheckWatches(Jute::read(r)?),
            OpCode::RemoveWatches => Request::RemoveWatches(Jute::read(r)?),
            OpCode::GetEphemerals => Request::GetEphemerals(Jute::read(r)?),
            OpCode::GetAllChildrenNumber => Request::GetAllChildrenNumber(Jute::read(r)?),
            OpCode::WhoAmI => Request::WhoAmI,
            OpCode::Notification
            | OpCode::Reconfig
            | OpCode::DeleteContainer
            | OpCode::Sasl
            | OpCode::CreateSession
            | OpCode::Error => Request::Unsupported(code),
        })
    }

    pub fn op_code(&self) -> OpCode {
        match self {
            Request::Ping => OpCode::Ping,
            Request::CloseSession => OpCode::CloseSession,
            Request::Create(op, _) => *op,
            Request::Delete(_) => OpCode::Delete,
            Request::Exists(_) => OpCode::Exists,
            Request::GetData(_) => OpCode::GetData,
            Request::SetData(_) => OpCode::SetData,
            Request::GetAcl(_) => OpCode::GetAcl,
            Request::SetAcl(_) => OpCode::SetAcl,
            Request::GetChildren(_) => OpCode::GetChildren,
            Request::GetChildren2(_) => OpCode::GetChildren2,
            Request::Sync(_) => OpCode::Sync,
            Request::Check(_) => OpCode::Check,
            Request::Multi(_) => OpCode::Multi,
            Request::MultiRead(_) => OpCode::MultiRead,
            Request::Auth(_) => OpCode::Auth,
            Request::SetWatches(_) => OpCode::SetWatches,
            Request::SetWatches2(_) => OpCode::SetWatches2,
            Request::AddWatch(_) => OpCode::AddWatch,
            Request::CheckWatches(_) => OpCode::CheckWatches,
            Request::RemoveWatches(_) => OpCode::RemoveWatches,
            Request::GetEphemerals(_) => OpCode::GetEphemerals,
            Request::GetAllChildrenNumber(_) => OpCode::GetAllChildrenNumber,
            Request::WhoAmI => OpCode::WhoAmI,
            Request::Unsupported(op) => *op,
        }
    }

    /// Is this request a transaction: does it take a zxid, and count as an
    /// update (ZooKeeper's `Request.isQuorum`)? Check and reconfig are,
    /// although neither changes the tree: ZooKeeper 3.8's
    /// `PrepRequestProcessor` logs a check as a `CheckVersionTxn`, and a
    /// reconfig refused by a standalone server as an error txn, each with a
    /// zxid, and its stats count both as updates.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Request::Create(..)
                | Request::Delete(_)
                | Request::SetData(_)
                | Request::SetAcl(_)
                | Request::Check(_)
                | Request::Multi(_)
                | Request::CloseSession
                | Request::Unsupported(OpCode::Reconfig)
        )
    }

    /// Encodes the body (without the header). The client side of the tests
    /// uses it; the server only decodes.
    pub fn write_body(&self, out: &mut Vec<u8>) {
        match self {
            Request::Ping | Request::CloseSession | Request::WhoAmI | Request::Unsupported(_) => {}
            Request::Create(OpCode::CreateTtl, r) => r.write(out),
            Request::Create(_, r) => {
                CreateRequest { path: r.path.clone(), data: r.data.clone(), acl: r.acl.clone(), flags: r.flags }
                    .write(out)
            }
            Request::Delete(r) => r.write(out),
            Request::Exists(r) | Request::GetData(r) | Request::GetChildren(r) | Request::GetChildren2(r) => {
                r.write(out)
            }
            Request::SetData(r) => r.write(out),
            Request::GetAcl(r) | Request::Sync(r) | Request::GetEphemerals(r) | Request::GetAllChildrenNumber(r) => {
                r.write(out)
            }
            Request::SetAcl(r) => r.write(out),
            Request::Check(r) => r.write(out),
            Request::Multi(ops) | Request::MultiRead(ops) => {
                for op in ops {
                    op.write(out);
                }
                MultiHeader { op: -1, done: true, err: -1 }.write(out);
            }
            Request::Auth(r) => r.write(out),
            Request::SetWatches(w) => SetWatches {
                relative_zxid: w.relative_zxid,
                data_watches: w.data_watches.clone(),
                exist_watches: w.exist_watches.clone(),
                child_watches: w.child_watches.clone(),
            }
            .write(out),
            Request::SetWatches2(w) => w.write(out),
            Request::AddWatch(r) => r.write(out),
            Request::CheckWatches(r) | Request::RemoveWatches(r) => r.write(out),
        }
    }
}

/// Reads the ops of a multi up to the `done` header. `reads` selects which
/// family is allowed: ZooKeeper rejects a read inside `multi` and a write
/// inside `multiRead` while deserialising, before anything runs.
fn read_multi(r: &mut Reader<'_>, reads: bool) -> Result<Vec<MultiOp>, DecodeError> {
    let context = if reads { "multiRead" } else { "multi" };
    let mut ops = Vec::new();
    loop {
        let h = MultiHeader::read(r)?;
        if h.done {
            return Ok(ops);
        }
        let code = OpCode::from_i32(h.op).ok_or(DecodeError::UnknownOpCode(h.op))?;
        let op = match (code, reads) {
            (OpCode::Create | OpCode::Create2 | OpCode::CreateContainer, false) => {
                let c = CreateRequest::read(r)?;
                MultiOp::Create(
                    code,
                    CreateTtlRequest { path: c.path, data: c.data, acl: c.acl, flags: c.flags, ttl: 0 },
                )
            }
            (OpCode::CreateTtl, false) => {
                // As ZooKeeper reads a multi: a createTTL whose mode is not a
                // TTL mode is a plain create (or createContainer) and its
                // ttl is dropped, so it never reaches validation as createTTL.
                let c: CreateTtlRequest = Jute::read(r)?;
                match CreateMode::from_i32(c.flags) {
                    Some(m) if m.is_ttl() => MultiOp::Create(code, c),
                    Some(CreateMode::Container) => {
                        MultiOp::Create(OpCode::CreateContainer, CreateTtlRequest { ttl: 0, ..c })
                    }
                    _ => MultiOp::Create(OpCode::Create, CreateTtlRequest { ttl: 0, ..c }),
                }
            }
            (OpCode::Delete, false) => MultiOp::Delete(Jute::read(r)?),
            (OpCode::SetData, false) => MultiOp::SetData(Jute::read(r)?),
            (OpCode::Check, false) => MultiOp::Check(Jute::read(r)?),
            (OpCode::GetChildren, true) => MultiOp::GetChildren(Jute::read(r)?),
            (OpCode::GetData, true) => MultiOp::GetData(Jute::read(r)?),
            _ => return Err(DecodeError::BadMultiOp { op: h.op, context }),
        };
        ops.push(op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transactions are ZooKeeper 3.8's (`Request.isQuorum`): check
    /// and reconfig take a zxid although neither changes the tree; the
    /// reads, pings and watch requests do not.
    #[test]
    fn check_and_reconfig_are_transactions_and_reads_are_not() {
        let check = Request::Check(CheckVersionRequest { path: "/a".into(), version: 1 });
        assert!(check.is_write());
        assert!(Request::Unsupported(OpCode::Reconfig).is_write());
        assert!(Request::CloseSession.is_write());
        assert!(!Request::Ping.is_write());
        assert!(!Request::GetData(PathWatchRequest { path: "/a".into(), watch: false }).is_write());
        assert!(!Request::Unsupported(OpCode::Error).is_write());
    }
}

//! Transactions: every change to the tree, as the write-ahead log records it.
//!
//! A request is validated once against the current state ([`crate::prep`]),
//! which either fails it or turns it into a [`Txn`] with its zxid and time.
//! Applying a `Txn` ([`crate::tree::DataTree::apply`]) cannot fail and
//! depends on nothing but the tree and the txn, so replaying the log after a
//! crash rebuilds exactly the tree the clients saw.

use bytes::Bytes;
use std::sync::Arc;
use zk_wire::records::Acl;
use zk_wire::ErrorCode;

/// Who asked, and when the server ordered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnHeader {
    pub session_id: i64,
    pub cxid: i32,
    pub zxid: i64,
    /// Wall-clock milliseconds: becomes ctime/mtime.
    pub time: i64,
}

/// What kind of node a create makes; ZooKeeper encodes it in `ephemeralOwner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Persistent,
    /// Owned by a session; deleted when it ends.
    Ephemeral(i64),
    /// Deleted by the reaper once it has had children and has none left.
    Container,
    /// Deleted by the reaper when childless and unmodified for this many ms.
    Ttl(i64),
}

/// `ephemeralOwner` for containers (`EphemeralType.CONTAINER_EPHEMERAL_OWNER`).
pub const CONTAINER_OWNER: i64 = i64::MIN;
/// The high byte that marks an extended (TTL) `ephemeralOwner`.
const EXTENDED_MASK: i64 = 0xff00_0000_0000_0000u64 as i64;
/// The largest TTL ZooKeeper can encode (2^40 - 1 ms, about 34 years).
pub const MAX_TTL: i64 = 0x0000_00ff_ffff_ffff;

impl NodeKind {
    /// The raw `ephemeralOwner` stored with the node, encoded as ZooKeeper
    /// does so that snapshots mean the same thing in both servers.
    pub fn ephemeral_owner(self) -> i64 {
        match self {
            NodeKind::Persistent => 0,
            NodeKind::Ephemeral(session) => session,
            NodeKind::Container => CONTAINER_OWNER,
            NodeKind::Ttl(ttl) => EXTENDED_MASK | ttl,
        }
    }

    pub fn from_owner(owner: i64) -> NodeKind {
        if owner == 0 {
            NodeKind::Persistent
        } else if owner == CONTAINER_OWNER {
            NodeKind::Container
        } else if owner & EXTENDED_MASK == EXTENDED_MASK {
            NodeKind::Ttl(owner & MAX_TTL)
        } else {
            NodeKind::Ephemeral(owner)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Txn {
    CreateSession {
        timeout_ms: i32,
    },
    /// Ends a session and deletes its ephemeral nodes.
    CloseSession,
    Create {
        path: String,
        data: Option<Bytes>,
        acl: Arc<Vec<Acl>>,
        kind: NodeKind,
        /// The parent's create count after this create (ZooKeeper's
        /// `parentCVersion`): recorded so replay does not depend on order
        /// of evaluation.
        parent_cversion: i32,
    },
    Delete {
        path: String,
    },
    SetData {
        path: String,
        data: Option<Bytes>,
        version: i32,
    },
    SetAcl {
        path: String,
        acl: Arc<Vec<Acl>>,
        version: i32,
    },
    /// A version check inside a multi: changes nothing.
    Check {
        path: String,
    },
    /// A multi whose every op succeeded, applied atomically.
    Multi(Vec<Txn>),
    /// A multi that failed: one code per op (0 before the failing op, its
    /// code, then `RuntimeInconsistency`). Changes nothing.
    MultiError(Vec<i32>),
    /// A write that failed validation. It still takes a zxid, as in
    /// ZooKeeper, so zxids advance identically in both servers.
    Error(ErrorCode),
}

// ---- on-disk encoding ------------------------------------------------------
//
// Transactions are written in jute, like every other record in this server.
// A log record's payload is the header then the txn; the framing (length and
// checksum) belongs to the log (see `storage::log`).

use zk_wire::codec::{DecodeError, Jute, Reader};

const CREATE_SESSION: i32 = 1;
const CLOSE_SESSION: i32 = 2;
const CREATE: i32 = 3;
const DELETE: i32 = 4;
const SET_DATA: i32 = 5;
const SET_ACL: i32 = 6;
const CHECK: i32 = 7;
const MULTI: i32 = 8;
const MULTI_ERROR: i32 = 9;
const ERROR: i32 = 10;

fn write_data(out: &mut Vec<u8>, data: &Option<Bytes>) {
    zk_wire::codec::write_nullable_bytes(out, data.as_deref());
}

fn read_data(r: &mut Reader<'_>) -> Result<Option<Bytes>, DecodeError> {
    Ok(r.nullable_bytes()?.map(Bytes::copy_from_slice))
}

impl Txn {
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Txn::CreateSession { timeout_ms } => {
                CREATE_SESSION.write(out);
                timeout_ms.write(out);
            }
            Txn::CloseSession => CLOSE_SESSION.write(out),
            Txn::Create { path, data, acl, kind, parent_cversion } => {
                CREATE.write(out);
                path.write(out);
                write_data(out, data);
                acl.as_ref().write(out);
                kind.ephemeral_owner().write(out);
                parent_cversion.write(out);
            }
            Txn::Delete { path } => {
                DELETE.write(out);
                path.write(out);
            }
            Txn::SetData { path, data, version } => {
                SET_DATA.write(out);
                path.write(out);
                write_data(out, data);
                version.write(out);
            }
            Txn::SetAcl { path, acl, version } => {
                SET_ACL.write(out);
                path.write(out);
                acl.as_ref().write(out);
                version.write(out);
            }
            Txn::Check { path } => {
                CHECK.write(out);
                path.write(out);
            }
            Txn::Multi(txns) => {
                MULTI.write(out);
                (txns.len() as i32).write(out);
                for t in txns {
                    t.write(out);
                }
            }
            Txn::MultiError(codes) => {
                MULTI_ERROR.write(out);
                (codes.len() as i32).write(out);
                for c in codes {
                    c.write(out);
                }
            }
            Txn::Error(code) => {
                ERROR.write(out);
                code.as_i32().write(out);
            }
        }
    }

    pub fn read(r: &mut Reader<'_>) -> Result<Txn, DecodeError> {
        let kind = r.i32()?;
        Ok(match kind {
            CREATE_SESSION => Txn::CreateSession { timeout_ms: r.i32()? },
            CLOSE_SESSION => Txn::CloseSession,
            CREATE => Txn::Create {
                path: String::read(r)?,
                data: read_data(r)?,
                acl: Arc::new(Vec::<Acl>::read(r)?),
                kind: NodeKind::from_owner(r.i64()?),
                parent_cversion: r.i32()?,
            },
            DELETE => Txn::Delete { path: String::read(r)? },
            SET_DATA => Txn::SetData { path: String::read(r)?, data: read_data(r)?, version: r.i32()? },
            SET_ACL => Txn::SetAcl { path: String::read(r)?, acl: Arc::new(Vec::<Acl>::read(r)?), version: r.i32()? },
            CHECK => Txn::Check { path: String::read(r)? },
            MULTI => {
                let n = r.count()?;
                let mut v = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    v.push(Txn::read(r)?);
                }
                Txn::Multi(v)
            }
            MULTI_ERROR => {
                let n = r.count()?;
                let mut v = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    v.push(r.i32()?);
                }
                Txn::MultiError(v)
            }
            ERROR => {
                let code = r.i32()?;
                Txn::Error(ErrorCode::from_i32(code).unwrap_or(ErrorCode::SystemError))
            }
            other => return Err(DecodeError::UnknownOpCode(other)),
        })
    }
}

impl TxnHeader {
    pub fn write(&self, out: &mut Vec<u8>) {
        self.zxid.write(out);
        self.session_id.write(out);
        self.cxid.write(out);
        self.time.write(out);
    }

    pub fn read(r: &mut Reader<'_>) -> Result<TxnHeader, DecodeError> {
        Ok(TxnHeader { zxid: r.i64()?, session_id: r.i64()?, cxid: r.i32()?, time: r.i64()? })
    }
}

/// One log record's payload.
pub fn encode_record(hdr: &TxnHeader, txn: &Txn) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    hdr.write(&mut out);
    txn.write(&mut out);
    out
}

pub fn decode_record(payload: &[u8]) -> Result<(TxnHeader, Txn), DecodeError> {
    let mut r = Reader::new(payload);
    let hdr = TxnHeader::read(&mut r)?;
    let txn = Txn::read(&mut r)?;
    r.finish()?;
    Ok((hdr, txn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use zk_wire::records::Id;

    #[test]
    fn every_txn_round_trips() {
        let acl = Arc::new(vec![Acl { perms: 31, id: Id { scheme: "world".into(), id: "anyone".into() } }]);
        let txns = vec![
            Txn::CreateSession { timeout_ms: 4000 },
            Txn::CloseSession,
            Txn::Create {
                path: "/a".into(),
                data: None,
                acl: acl.clone(),
                kind: NodeKind::Ttl(99),
                parent_cversion: 3,
            },
            Txn::Create {
                path: "/b".into(),
                data: Some(Bytes::from_static(b"x")),
                acl: acl.clone(),
                kind: NodeKind::Ephemeral(0x1234),
                parent_cversion: 4,
            },
            Txn::Delete { path: "/a".into() },
            Txn::SetData { path: "/b".into(), data: Some(Bytes::new()), version: 2 },
            Txn::SetAcl { path: "/b".into(), acl, version: 1 },
            Txn::Check { path: "/b".into() },
            Txn::Multi(vec![Txn::Delete { path: "/b".into() }, Txn::Check { path: "/".into() }]),
            Txn::MultiError(vec![0, -101, -2]),
            Txn::Error(ErrorCode::NodeExists),
        ];
        for (i, t) in txns.into_iter().enumerate() {
            let hdr = TxnHeader { session_id: 7, cxid: i as i32, zxid: 100 + i as i64, time: 5 };
            let bytes = encode_record(&hdr, &t);
            assert_eq!(decode_record(&bytes), Ok((hdr, t)));
        }
    }
}

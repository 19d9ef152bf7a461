//! Validation of write requests: request in, [`Txn`] out.
//!
//! The checks run in ZooKeeper's order (`PrepRequestProcessor`), because the
//! order decides which error a client sees when several apply: for a create,
//! flags, then TTL, then the path's shape, the ACL, the parent, permission,
//! the sequential suffix, the full path, existence, and finally an ephemeral
//! parent. The differential tests hold both servers to the same answers.
//!
//! A multi validates each op against the state left by the ops before it.
//! Those pending effects live in an overlay (`Pending`) over the tree, so
//! nothing touches the tree until the whole multi is known to succeed.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use zk_wire::consts::{perms, CreateMode, OpCode};
use zk_wire::records::{Acl, CheckVersionRequest, CreateTtlRequest, DeleteRequest, Id, SetAclRequest, SetDataRequest};
use zk_wire::request::MultiOp;
use zk_wire::{ErrorCode, Request};

use crate::acl;
use crate::path;
use crate::tree::{names_fit, DataTree, StatPersisted};
use crate::txn::{NodeKind, Txn, MAX_TTL};

/// Who is asking, and the settings validation depends on.
pub struct Ctx<'a> {
    pub session_id: i64,
    pub auth: &'a [Id],
    pub extended_types: bool,
    pub zxid: i64,
    pub time: i64,
}

/// What validation needs to know of a node, as pending changes leave it.
#[derive(Clone)]
struct View {
    stat: StatPersisted,
    acl: Arc<Vec<Acl>>,
    children: i32,
    /// The bytes of the node's block of children's names, counting the
    /// creates pending under it (deletes free none until applied).
    names_len: usize,
}

/// The tree as the ops validated so far in this request would leave it.
struct Pending<'t> {
    tree: &'t DataTree,
    changes: HashMap<String, Option<View>>,
}

impl Pending<'_> {
    fn get(&self, path: &str) -> Result<View, ErrorCode> {
        let p = path::canonical(path);
        match self.changes.get(p) {
            Some(Some(v)) => Ok(v.clone()),
            Some(None) => Err(ErrorCode::NoNode),
            None => self
                .tree
                .get(p)
                .map(|n| View {
                    stat: n.stat,
                    acl: n.acl().clone(),
                    children: n.num_children() as i32,
                    names_len: n.children().block_len(),
                })
                .ok_or(ErrorCode::NoNode),
        }
    }

    fn set(&mut self, path: &str, view: Option<View>) {
        self.changes.insert(path::canonical(path).to_string(), view);
    }
}

/// Validates a write request and returns the transaction that carries it out
/// (or the error, as a transaction, which still takes a zxid).
pub fn prepare(tree: &DataTree, ctx: &Ctx<'_>, req: &Request) -> Txn {
    let mut pending = Pending { tree, changes: HashMap::new() };
    let result = match req {
        Request::Create(op, r) => create(&mut pending, ctx, *op, r),
        Request::Delete(r) => delete(&mut pending, ctx, r),
        Request::SetData(r) => set_data(&mut pending, ctx, r),
        Request::SetAcl(r) => set_acl(&mut pending, ctx, r),
        Request::Check(r) => check(&mut pending, ctx, r),
        Request::Multi(ops) => return multi(&mut pending, ctx, ops),
        Request::CloseSession => Ok(Txn::CloseSession),
        _ => Err(ErrorCode::Unimplemented),
    };
    result.unwrap_or_else(Txn::Error)
}

fn multi(pending: &mut Pending<'_>, ctx: &Ctx<'_>, ops: &[MultiOp]) -> Txn {
    let mut txns = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let r = match op {
            MultiOp::Create(code, r) => create(pending, ctx, *code, r),
            MultiOp::Delete(r) => delete(pending, ctx, r),
            MultiOp::SetData(r) => set_data(pending, ctx, r),
            MultiOp::Check(r) => check(pending, ctx, r),
            // The decoder keeps reads out of a multi.
            MultiOp::GetChildren(_) | MultiOp::GetData(_) => Err(ErrorCode::BadArguments),
        };
        match r {
            Ok(t) => txns.push(t),
            Err(code) => {
                let mut codes = vec![0; i];
                codes.push(code.as_i32());
                codes.resize(ops.len(), ErrorCode::RuntimeInconsistency.as_i32());
                return Txn::MultiError(codes);
            }
        }
    }
    Txn::Multi(txns)
}

fn create(pending: &mut Pending<'_>, ctx: &Ctx<'_>, op: OpCode, r: &CreateTtlRequest) -> Result<Txn, ErrorCode> {
    let mode = CreateMode::from_i32(r.flags).ok_or(ErrorCode::BadArguments)?;
    if mode.is_ttl() && !ctx.extended_types {
        return Err(ErrorCode::Unimplemented);
    }
    // Only createTTL carries a ttl; the other opcodes read as -1.
    let ttl = if op == OpCode::CreateTtl { r.ttl } else { -1 };
    if mode.is_ttl() {
        if ttl <= 0 || ttl > MAX_TTL {
            return Err(ErrorCode::BadArguments);
        }
    } else if ttl >= 0 || op == OpCode::CreateTtl {
        // createTTL makes a TTL node whatever its flags say, so a non-TTL
        // mode is refused: ZooKeeper refuses it for ttl >= 0 and falls over
        // applying it for ttl < 0, where the ttl would otherwise become a
        // TTL node's lifetime (an "ephemeral" living 34 years) or wrap to 0.
        return Err(ErrorCode::BadArguments);
    }
    let parent_path = match path::parent(&r.path) {
        Some(p) if !r.path.contains('\0') => p,
        _ => return Err(ErrorCode::BadArguments),
    };
    let acl = acl::fixup(&r.acl, ctx.auth)?;
    let mut parent = pending.get(parent_path)?;
    acl::check(&parent.acl, perms::CREATE, ctx.auth)?;
    let path = if mode.is_sequential() {
        // The suffix is the parent's create count, zero-padded to ten digits
        // (and, past i32::MAX, negative: as ZooKeeper formats it).
        format!("{}{:010}", r.path, parent.stat.cversion)
    } else {
        r.path.clone()
    };
    path::validate(&path).map_err(|_| ErrorCode::BadArguments)?;
    if pending.get(&path).is_ok() {
        return Err(ErrorCode::NodeExists);
    }
    if matches!(NodeKind::from_owner(parent.stat.ephemeral_owner), NodeKind::Ephemeral(_)) {
        return Err(ErrorCode::NoChildrenForEphemerals);
    }
    // A parent's names share one block whose offsets are 31-bit (see
    // `tree::names`): past 2 GiB of them it takes no more children.
    // ZooKeeper has no such limit; reaching it takes thousands of
    // megabyte-long names under one node.
    let name = path::name(&path);
    if !names_fit(parent.names_len, 1, name.len()) {
        return Err(ErrorCode::BadArguments);
    }
    parent.names_len += 4 + name.len();
    // The node's kind follows the opcode for containers and TTL nodes, and
    // the flags otherwise: exactly the txn ZooKeeper would log.
    let kind = match op {
        OpCode::CreateContainer => NodeKind::Container,
        OpCode::CreateTtl => NodeKind::Ttl(ttl),
        _ if mode.is_ephemeral() => NodeKind::Ephemeral(ctx.session_id),
        _ => NodeKind::Persistent,
    };
    // A Java int in ZooKeeper: it wraps, and the tree (which only moves
    // it up) leaves it at i32::MAX.
    let parent_cversion = parent.stat.cversion.wrapping_add(1);
    parent.children += 1;
    parent.stat.cversion = parent_cversion;
    parent.stat.pzxid = ctx.zxid;
    pending.set(parent_path, Some(parent));
    let acl = Arc::new(acl);
    let stat = StatPersisted {
        czxid: ctx.zxid,
        mzxid: ctx.zxid,
        ctime: ctx.time,
        mtime: ctx.time,
        ephemeral_owner: kind.ephemeral_owner(),
        pzxid: ctx.zxid,
        ..StatPersisted::default()
    };
    pending.set(&path, Some(View { stat, acl: acl.clone(), children: 0, names_len: 0 }));
    Ok(Txn::Create { path, data: r.data.clone().map(Bytes::from), acl, kind, parent_cversion })
}

fn delete(pending: &mut Pending<'_>, ctx: &Ctx<'_>, r: &DeleteRequest) -> Result<Txn, ErrorCode> {
    let parent_path = match path::parent(&r.path) {
        Some(p) if !r.path.contains('\0') && !path::is_special(&r.path) => p,
        _ => return Err(ErrorCode::BadArguments),
    };
    let mut parent = pending.get(parent_path)?;
    acl::check(&parent.acl, perms::DELETE, ctx.auth)?;
    let node = pending.get(&r.path)?;
    check_version(node.stat.version, r.version)?;
    if node.children > 0 {
        return Err(ErrorCode::NotEmpty);
    }
    parent.children -= 1;
    parent.stat.pzxid = ctx.zxid;
    pending.set(parent_path, Some(parent));
    pending.set(&r.path, None);
    Ok(Txn::Delete { path: r.path.clone() })
}

fn set_data(pending: &mut Pending<'_>, ctx: &Ctx<'_>, r: &SetDataRequest) -> Result<Txn, ErrorCode> {
    path::validate(&r.path).map_err(|_| ErrorCode::BadArguments)?;
    let mut node = pending.get(&r.path)?;
    acl::check(&node.acl, perms::WRITE, ctx.auth)?;
    let version = check_version(node.stat.version, r.version)?;
    node.stat.version = version;
    node.stat.mtime = ctx.time;
    node.stat.mzxid = ctx.zxid;
    pending.set(&r.path, Some(node));
    Ok(Txn::SetData { path: r.path.clone(), data: r.data.clone().map(Bytes::from), version })
}

fn set_acl(pending: &mut Pending<'_>, ctx: &Ctx<'_>, r: &SetAclRequest) -> Result<Txn, ErrorCode> {
    path::validate(&r.path).map_err(|_| ErrorCode::BadArguments)?;
    let acl = Arc::new(acl::fixup(&r.acl, ctx.auth)?);
    let mut node = pending.get(&r.path)?;
    acl::check(&node.acl, perms::ADMIN, ctx.auth)?;
    let version = check_version(node.stat.aversion, r.version)?;
    node.stat.aversion = version;
    node.acl = acl.clone();
    pending.set(&r.path, Some(node));
    Ok(Txn::SetAcl { path: r.path.clone(), acl, version })
}

fn check(pending: &mut Pending<'_>, ctx: &Ctx<'_>, r: &CheckVersionRequest) -> Result<Txn, ErrorCode> {
    path::validate(&r.path).map_err(|_| ErrorCode::BadArguments)?;
    let node = pending.get(&r.path)?;
    acl::check(&node.acl, perms::READ, ctx.auth)?;
    check_version(node.stat.version, r.version)?;
    Ok(Txn::Check { path: r.path.clone() })
}

/// `-1` matches any version; the result is the next version.
fn check_version(current: i32, expected: i32) -> Result<i32, ErrorCode> {
    if expected != -1 && expected != current {
        return Err(ErrorCode::BadVersion);
    }
    Ok(current.wrapping_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::TxnHeader;

    fn ctx(zxid: i64) -> Ctx<'static> {
        Ctx { session_id: 5, auth: &[], extended_types: true, zxid, time: 10 }
    }

    fn create_req(path: &str, flags: i32) -> Request {
        Request::Create(
            OpCode::Create,
            CreateTtlRequest { path: path.into(), data: None, acl: acl::open_acl_unsafe(), flags, ttl: 0 },
        )
    }

    fn run(tree: &mut DataTree, zxid: i64, req: &Request) -> Txn {
        let txn = prepare(tree, &ctx(zxid), req);
        let hdr = TxnHeader { session_id: 5, cxid: 0, zxid, time: 10 };
        tree.apply(&hdr, &txn, &mut Vec::new());
        txn
    }

    #[test]
    fn sequential_names_use_the_parent_create_count() {
        let mut t = DataTree::new();
        run(&mut t, 1, &create_req("/q", 0));
        let Txn::Create { path, .. } = run(&mut t, 2, &create_req("/q/n-", 2)) else { panic!() };
        assert_eq!(path, "/q/n-0000000000");
        let Txn::Create { path, .. } = run(&mut t, 3, &create_req("/q/n-", 2)) else { panic!() };
        assert_eq!(path, "/q/n-0000000001");
    }

    #[test]
    fn error_precedence_matches_zookeeper() {
        let mut t = DataTree::new();
        // Missing parent is reported before the bad trailing slash.
        assert_eq!(prepare(&t, &ctx(1), &create_req("/x/", 0)), Txn::Error(ErrorCode::NoNode));
        run(&mut t, 1, &create_req("/x", 0));
        assert_eq!(prepare(&t, &ctx(2), &create_req("/x/", 0)), Txn::Error(ErrorCode::BadArguments));
        // ...but a sequential create of "/x/" is valid.
        assert!(matches!(prepare(&t, &ctx(2), &create_req("/x/", 2)), Txn::Create { .. }));
        assert_eq!(prepare(&t, &ctx(2), &create_req("nope", 0)), Txn::Error(ErrorCode::BadArguments));
        assert_eq!(prepare(&t, &ctx(2), &create_req("/x", 9)), Txn::Error(ErrorCode::BadArguments));
        run(&mut t, 2, &create_req("/e", 1));
        assert_eq!(prepare(&t, &ctx(3), &create_req("/e/c", 0)), Txn::Error(ErrorCode::NoChildrenForEphemerals));
    }

    /// cversion is a Java int in ZooKeeper and its increment wraps. The
    /// tree only moves a parent's cversion up, so at i32::MAX it stays
    /// there, as ZooKeeper's does: the next sequential name is taken again
    /// (NodeExists) while plain creates go on. Never a panic.
    #[test]
    fn cversion_at_i32_max_wraps_instead_of_panicking() {
        let mut t = DataTree::new();
        run(&mut t, 1, &create_req("/q", 0));
        let hdr = TxnHeader { session_id: 5, cxid: 0, zxid: 2, time: 10 };
        let far = Txn::Create {
            path: "/q/far".into(),
            data: None,
            acl: Arc::new(acl::open_acl_unsafe()),
            kind: NodeKind::Persistent,
            parent_cversion: i32::MAX,
        };
        t.apply(&hdr, &far, &mut Vec::new());
        assert_eq!(t.get("/q").unwrap().stat.cversion, i32::MAX);
        let Txn::Create { path, parent_cversion, .. } = run(&mut t, 3, &create_req("/q/n-", 2)) else { panic!() };
        assert_eq!((path.as_str(), parent_cversion), ("/q/n-2147483647", i32::MIN));
        assert_eq!(t.get("/q").unwrap().stat.cversion, i32::MAX);
        assert_eq!(prepare(&t, &ctx(4), &create_req("/q/n-", 2)), Txn::Error(ErrorCode::NodeExists));
        assert!(matches!(run(&mut t, 4, &create_req("/q/plain", 0)), Txn::Create { .. }));
        assert!(t.get("/q/plain").is_some());
    }

    #[test]
    fn multi_sees_its_own_earlier_ops_and_fails_whole() {
        let mut t = DataTree::new();
        let mk = |p: &str| {
            MultiOp::Create(
                OpCode::Create,
                CreateTtlRequest { path: p.into(), data: None, acl: acl::open_acl_unsafe(), flags: 0, ttl: 0 },
            )
        };
        let ok = Request::Multi(vec![mk("/m"), mk("/m/a")]);
        assert!(matches!(prepare(&t, &ctx(1), &ok), Txn::Multi(ref v) if v.len() == 2));
        let bad = Request::Multi(vec![mk("/m"), mk("/m"), mk("/z")]);
        assert_eq!(prepare(&t, &ctx(1), &bad), Txn::MultiError(vec![0, -110, -2]));
        run(&mut t, 1, &bad);
        assert!(t.get("/m").is_none(), "a failed multi changes nothing");
    }
}

//! The reads: one handler per operation, from the tree to a typed reply.
//!
//! All of them run under the tree's read lock ([`Core::with_tree`]), which is
//! also held while the reply is queued: a read that sees a change is
//! queued after that change's notifications (see [`crate::core`]). A read
//! that sets a watch registers it under the same lock, so no change can
//! fall between what the read saw and the watch.

use zk_wire::consts::{perms, AddWatchMode, WatcherType};
use zk_wire::records::*;
use zk_wire::request::MultiOp;
use zk_wire::response::MultiResult;
use zk_wire::{ErrorCode, Request, Response};

use crate::acl;
use crate::clients::Client;
use crate::core::Core;
use crate::session::SessionId;
use crate::tree::{Children, DataTree, NodeRef};

/// The serialized size of a Stat.
const STAT_BYTES: usize = 68;

/// What every read handler works with.
struct Reader<'a> {
    core: &'a Core,
    tree: &'a DataTree,
    client: &'a Client,
}

type Reply = Result<Response, ErrorCode>;

/// Carries out a read and queues its reply (and, for setWatches, the
/// events it owes first).
pub(super) fn read(core: &Core, client: &Client, xid: i32, req: &Request) {
    let conn = &client.conn;
    core.with_tree(|tree| {
        let zxid = tree.last_zxid();
        let r = Reader { core, tree, client };
        let mut owed = Vec::new();
        // getChildren is answered with a copy of the node's block of names,
        // already in the reply's encoding: no reply record, no walk of the
        // children. The copy is made here, under the lock, because the
        // reply must be queued under it (see the module notes); it is one
        // memcpy of about a megabyte for 100,000 children, where walking
        // them took 20-30 ms.
        if let Request::GetChildren(q) | Request::GetChildren2(q) = req {
            let with_stat = matches!(req, Request::GetChildren2(_));
            let frame = match r.get_children(q) {
                Ok((names, stat)) => {
                    let stat = with_stat.then_some(stat);
                    crate::frames::listing(xid, zxid, &names, stat.as_ref())
                }
                Err(e) => crate::frames::reply(xid, zxid, Err(e)),
            };
            client.reply(frame, zxid);
            return;
        }
        let result = match req {
            Request::Exists(q) => r.exists(q),
            Request::GetData(q) => r.get_data(q),
            Request::GetAcl(q) => r.get_acl(q),
            Request::GetAllChildrenNumber(q) => r.all_children_number(q),
            Request::GetEphemerals(q) => Ok(r.ephemerals(q)),
            Request::MultiRead(ops) => r.multi_read(ops),
            Request::Sync(q) => Ok(Response::Path(PathResponse { path: q.path.clone() })),
            Request::WhoAmI => Ok(super::auth::who_am_i(client)),
            Request::CheckWatches(q) => r.check_watches(q, false),
            Request::RemoveWatches(q) => r.check_watches(q, true),
            Request::AddWatch(q) => r.add_watch(q),
            Request::SetWatches(w) | Request::SetWatches2(w) => Ok(r.set_watches(w, &mut owed)),
            _ => Err(ErrorCode::Unimplemented),
        };
        // Events owed by setWatches go out before its reply, as
        // ZooKeeper sends them.
        for ev in &owed {
            conn.send(crate::frames::notification(ev), zxid);
        }
        // A read may have seen writes not yet on disk: it waits for them.
        client.reply(crate::frames::reply(xid, zxid, result.as_ref().map_err(|e| *e)), zxid);
    })
}

impl<'a> Reader<'a> {
    /// The node at `path`, if the client may `perm` it.
    fn node(&self, path: &str, perm: i32) -> Result<NodeRef<'a>, ErrorCode> {
        let node = self.tree.get(path).ok_or(ErrorCode::NoNode)?;
        acl::check(node.acl(), perm, &self.client.auth)?;
        Ok(node)
    }

    fn conn(&self) -> u64 {
        self.client.conn.id
    }

    fn exists(&self, q: &PathWatchRequest) -> Reply {
        if q.path.contains('\0') {
            return Err(ErrorCode::BadArguments);
        }
        // exists sets its watch whether or not the node is there: on a
        // missing node it waits for its creation. No ACL check: as in
        // ZooKeeper, a node's existence and stat are not secret.
        if q.watch {
            self.core.watches.lock().add_data(&q.path, self.conn());
        }
        let node = self.tree.get(&q.path).ok_or(ErrorCode::NoNode)?;
        Ok(Response::Stat(StatResponse { stat: node.stat() }))
    }

    fn get_data(&self, q: &PathWatchRequest) -> Reply {
        let node = self.node(&q.path, perms::READ)?;
        if q.watch {
            self.core.watches.lock().add_data(&q.path, self.conn());
        }
        Ok(Response::GetData(GetDataResponse { data: node.data().map(<[u8]>::to_vec), stat: node.stat() }))
    }

    /// getChildren and getChildren2: the children, in no promised order
    /// (as ZooKeeper's), and the stat (which only getChildren2 answers
    /// with).
    fn get_children(&self, q: &PathWatchRequest) -> Result<(Children<'a>, Stat), ErrorCode> {
        let node = self.node(&q.path, perms::READ)?;
        if q.watch {
            self.core.watches.lock().add_child(&q.path, self.conn());
        }
        Ok((node.children(), node.stat()))
    }

    fn get_acl(&self, q: &PathRequest) -> Reply {
        let node = self.node(&q.path, perms::READ | perms::ADMIN)?;
        // Without ADMIN, digest identities are shown with their hash
        // masked: reading an ACL must not leak credentials.
        let admin = acl::check(node.acl(), perms::ADMIN, &self.client.auth).is_ok();
        let acl = node
            .acl()
            .iter()
            .map(|a| {
                if !admin && a.id.scheme == "digest" {
                    let user = a.id.id.split(':').next().unwrap_or_default();
                    Acl { perms: a.perms, id: Id { scheme: a.id.scheme.clone(), id: format!("{user}:x") } }
                } else {
                    a.clone()
                }
            })
            .collect();
        Ok(Response::GetAcl(GetAclResponse { acl, stat: node.stat() }))
    }

    fn all_children_number(&self, q: &PathRequest) -> Reply {
        self.node(&q.path, perms::READ)?;
        Ok(Response::AllChildrenNumber(GetAllChildrenNumberResponse {
            total_number: self.tree.descendant_count(&q.path),
        }))
    }

    /// The client's own session's ephemerals, under a prefix (all of them
    /// for "" or "/").
    fn ephemerals(&self, q: &PathRequest) -> Response {
        let prefix = q.path.trim();
        let all = prefix.is_empty() || prefix == "/";
        let children = self
            .tree
            .ephemerals_of(self.client.session_id)
            .filter(|p| all || p.starts_with(&q.path))
            .cloned()
            .collect();
        Response::Children(ChildrenResponse { children })
    }

    fn multi_read(&self, ops: &[MultiOp]) -> Reply {
        // A small request can ask for a huge reply (5,000 getData of a 1 MB
        // node in a 90 KB frame): the reply's size is counted as it is
        // built, and past the limit the request fails before another byte
        // is copied.
        let limit = multi_read_limit(self.core.config.max_buffer);
        let mut size = 0usize;
        let mut results = Vec::with_capacity(ops.len().min(1024));
        for op in ops {
            // Each result: a multi header (type, done, err), then the body.
            size += 12
                + match op {
                    MultiOp::GetData(r) => {
                        self.tree.get(&r.path).map_or(0, |n| 4 + n.data().map_or(0, <[u8]>::len) + STAT_BYTES)
                    }
                    MultiOp::GetChildren(r) => self.tree.get(&r.path).map_or(0, |n| n.children().encoded_len()),
                    _ => 0,
                };
            if size > limit {
                tracing::info!(
                    session = %SessionId(self.client.session_id),
                    ops = ops.len(),
                    limit,
                    "multiRead refused: its reply would pass the size limit"
                );
                return Err(ErrorCode::MarshallingError);
            }
            let r = match op {
                MultiOp::GetData(r) => self.node(&r.path, perms::READ).map(|n| {
                    MultiResult::GetData(GetDataResponse { data: n.data().map(<[u8]>::to_vec), stat: n.stat() })
                }),
                MultiOp::GetChildren(r) => self.node(&r.path, perms::READ).map(|n| {
                    MultiResult::GetChildren(ChildrenResponse {
                        children: n.children().iter().map(str::to_string).collect(),
                    })
                }),
                _ => Err(ErrorCode::BadArguments),
            };
            results.push(r.unwrap_or_else(|e| MultiResult::Error(e.as_i32())));
        }
        Ok(Response::Multi(results))
    }

    /// checkWatches, or removeWatches when `remove`.
    fn check_watches(&self, q: &WatchTypeRequest, remove: bool) -> Reply {
        let kind = WatcherType::from_i32(q.watcher_type).ok_or(ErrorCode::MarshallingError)?;
        let mut w = self.core.watches.lock();
        let found = if remove { w.remove(&q.path, kind, self.conn()) } else { w.contains(&q.path, kind, self.conn()) };
        if found {
            Ok(Response::Empty)
        } else {
            Err(ErrorCode::NoWatcher)
        }
    }

    fn add_watch(&self, q: &AddWatchRequest) -> Reply {
        let mode = AddWatchMode::from_i32(q.mode).ok_or(ErrorCode::MarshallingError)?;
        self.core.watches.lock().add_persistent(&q.path, self.conn(), mode == AddWatchMode::PersistentRecursive);
        Ok(Response::AddWatch(ErrorResponse { err: 0 }))
    }

    /// setWatches (after a reconnect): re-registers the client's watches,
    /// and collects in `owed` the events for changes it missed since
    /// `relative_zxid`.
    fn set_watches(&self, w: &SetWatches2, owed: &mut Vec<WatcherEvent>) -> Response {
        self.core.watches.lock().set_watches(
            self.tree,
            self.conn(),
            w.relative_zxid,
            &w.data_watches,
            &w.exist_watches,
            &w.child_watches,
            &w.persistent_watches,
            &w.persistent_recursive_watches,
            owed,
        );
        Response::Empty
    }
}

/// The largest multiRead reply the server builds: what a client configured
/// with the same `jute.maxbuffer` can read, plus room for one maximal
/// node's header and stat, so any multiRead whose single getData would be
/// answered also is. ZooKeeper has no such limit (it builds the reply and
/// runs out of memory); past it the whole request is answered with
/// MarshallingError, ZooKeeper's code for a packet that cannot be
/// (de)serialized within jute.maxbuffer, and the connection carries on.
fn multi_read_limit(max_buffer: usize) -> usize {
    max_buffer.saturating_add(1024)
}

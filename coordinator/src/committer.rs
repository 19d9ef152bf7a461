//! The committer: the one way the tree changes.
//!
//! ZooKeeper's standalone server passes every write through
//! `PrepRequestProcessor` (validate, build the txn), `SyncRequestProcessor`
//! (log it) and `FinalRequestProcessor` (apply it, fire watches, reply).
//! Here the same stages run in one call, [`Committer::commit`], under the
//! tree's write lock:
//!
//! 1. **check**: the request's session is still live and served by the
//!    connection it came on (`Liveness::check`);
//! 2. **prep**: the txn is built against the latest state
//!    ([`crate::prep`]), and the next zxid assigned;
//! 3. **apply**: the txn changes the tree ([`DataTree::apply`]), which
//!    reports the watch triggers it fired;
//! 4. **log**: the txn is handed to the write-ahead log, whose group commit
//!    makes it durable later; replies wait for that in the connection's
//!    writer, not here;
//! 5. **notify and reply**: the caller delivers the triggers and queues its
//!    reply while the lock is still held (the ordering invariant in
//!    [`crate::core`]).
//!
//! The tree lock is private to this module: reads get `&DataTree` through
//! [`Committer::read`], and nothing outside can obtain `&mut DataTree`
//! except the snapshot writer, which only encodes. So every change is a
//! logged txn and replay reproduces the tree exactly.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use zk_wire::records::Id;

use crate::clients::Client;
use crate::config::Config;
use crate::lock::{self, Level};
use crate::prep;
use crate::storage::{Storage, StorageError};
use crate::tree::{DataTree, Trigger, TxnResult};
use crate::txn::{Txn, TxnHeader};

/// Who proposes a transaction.
pub(crate) struct Proposal<'a> {
    pub session_id: i64,
    pub cxid: i32,
    /// The identities the ACL checks see.
    pub auth: &'a [Id],
    /// For a client's request, the connection it came on: it must still be
    /// the one serving a live session once the lock is held. `None` for the
    /// server's own txns (expiry, reaping, recovery).
    pub from: Option<&'a Client>,
}

impl Proposal<'_> {
    /// A txn the server itself orders on behalf of `session_id`.
    pub(crate) fn server(session_id: i64, cxid: i32) -> Proposal<'static> {
        Proposal { session_id, cxid, auth: &[], from: None }
    }
}

pub(crate) struct Committer {
    tree: lock::RwLock<DataTree>,
    /// The write-ahead log, when the server has a data dir.
    storage: Option<Storage>,
    /// The highest durable zxid (always "everything" without a data dir).
    durable: watch::Receiver<i64>,
    /// The zxid of the last txn applied, readable without the tree lock:
    /// with `durable`, how many txns wait for the log (see `unlogged`).
    applied: AtomicI64,
    extended_types: bool,
    /// Held while a snapshot is written: the periodic one and one asked for
    /// over the admin API must not write the same file at once.
    snapshotting: tokio::sync::Mutex<()>,
}

pub(crate) fn wall_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Committer {
    /// Recovers the tree from `config.data_dir`, or starts an empty one in
    /// memory. Returns the committer and the secret session passwords are
    /// derived from.
    pub(crate) fn open(config: &Config) -> Result<(Committer, [u8; 16]), StorageError> {
        let (tree, secret, storage) = match &config.data_dir {
            Some(dir) => {
                let r = Storage::open_retaining(dir, config.snap_retain_count)?;
                (r.tree, r.secret, Some(r.storage))
            }
            None => (DataTree::in_memory(wall_ms()), rand::random(), None),
        };
        let durable = match &storage {
            Some(s) => s.durable(),
            None => watch::channel(i64::MAX).1,
        };
        let committer = Committer {
            applied: AtomicI64::new(tree.last_zxid()),
            tree: lock::RwLock::new(Level::Tree, tree),
            storage,
            durable,
            extended_types: config.extended_types,
            snapshotting: tokio::sync::Mutex::new(()),
        };
        Ok((committer, secret))
    }

    /// Runs `f` on the tree under the read lock. Reads run in parallel with
    /// each other and queue their replies inside `f`.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&DataTree) -> R) -> R {
        f(&self.tree.read())
    }

    pub(crate) fn last_zxid(&self) -> i64 {
        self.tree.read().last_zxid()
    }

    pub(crate) fn durable(&self) -> watch::Receiver<i64> {
        self.durable.clone()
    }

    /// The highest durable zxid now.
    pub(crate) fn durable_zxid(&self) -> i64 {
        *self.durable.borrow()
    }

    /// Txns applied whose log entry is not yet durable: the writes that,
    /// in ZooKeeper's pipeline, would still be between the log and
    /// `FinalRequestProcessor`. Always 0 without a data dir.
    pub(crate) fn unlogged(&self) -> u64 {
        (self.applied.load(Ordering::Acquire) - self.durable_zxid()).max(0) as u64
    }

    pub(crate) fn storage(&self) -> Option<&Storage> {
        self.storage.as_ref()
    }

    /// Orders one transaction (the stages in the module docs). `build`
    /// prepares the txn against the latest state; `fired` delivers the
    /// watch triggers it fired and `reply` queues the answer, both still
    /// under the lock. A proposal from a connection that no longer serves a
    /// live session is not prepared, applied or logged: its connection is
    /// closed first, so the client never sees the SessionExpired or
    /// SessionMoved that `reply` gets.
    pub(crate) fn commit<R>(
        &self,
        proposal: Proposal<'_>,
        build: impl FnOnce(&DataTree, &prep::Ctx<'_>) -> Txn,
        fired: impl FnOnce(&[Trigger], i64),
        reply: impl FnOnce(i64, &TxnResult) -> R,
    ) -> R {
        let mut tree = self.tree.write();
        if let Some(c) = proposal.from {
            if let Err(code) = c.live.check(c.conn.id) {
                c.conn.close();
                return reply(tree.last_zxid(), &TxnResult::Error(code));
            }
        }
        let zxid = tree.last_zxid() + 1;
        let time = wall_ms();
        let ctx = prep::Ctx {
            session_id: proposal.session_id,
            auth: proposal.auth,
            extended_types: self.extended_types,
            zxid,
            time,
        };
        let txn = build(&tree, &ctx);
        let hdr = TxnHeader { session_id: proposal.session_id, cxid: proposal.cxid, zxid, time };
        let (result, triggers) = self.apply_and_log(&mut tree, &hdr, &txn);
        if !triggers.is_empty() {
            fired(&triggers, zxid);
        }
        reply(zxid, &result)
    }

    /// Orders a createSession. The id is taken from the session table
    /// (`open`) under the tree lock, so the table and the log agree on the
    /// order: no closeSession of the new id can be ordered before its
    /// createSession. Returns the id.
    pub(crate) fn create_session(&self, open: impl FnOnce() -> i64, timeout_ms: i32) -> i64 {
        let mut tree = self.tree.write();
        let id = open();
        let hdr = TxnHeader { session_id: id, cxid: 0, zxid: tree.last_zxid() + 1, time: wall_ms() };
        self.apply_and_log(&mut tree, &hdr, &Txn::CreateSession { timeout_ms });
        id
    }

    /// Apply, then log: the two steps every txn takes, in one place.
    /// Applying first is safe because nothing leaves the server before the
    /// log says the zxid is durable (the writer waits for it).
    fn apply_and_log(&self, tree: &mut DataTree, hdr: &TxnHeader, txn: &Txn) -> (TxnResult, Vec<Trigger>) {
        let mut triggers = Vec::new();
        let result = tree.apply(hdr, txn, &mut triggers);
        if let Some(st) = &self.storage {
            st.append(hdr, txn);
        }
        self.applied.store(hdr.zxid, Ordering::Release);
        (result, triggers)
    }

    // ---- snapshots --------------------------------------------------------

    /// Whether a snapshot is due (see `Storage::snapshot_due`).
    pub(crate) fn snapshot_due(&self, snap_count: u64) -> bool {
        let Some(storage) = &self.storage else { return false };
        let size = self.read(DataTree::snapshot_size_estimate);
        storage.snapshot_due(snap_count, size)
    }

    /// Writes a snapshot of the tree now; returns the zxid it covers, or
    /// `None` when the server keeps no data dir.
    pub(crate) async fn snapshot_now(self: &Arc<Self>) -> anyhow::Result<Option<i64>> {
        let Some(storage) = &self.storage else { return Ok(None) };
        let _one_at_a_time = self.snapshotting.lock().await;
        let started = std::time::Instant::now();
        let header = storage.begin_snapshot(&mut self.tree.write());
        let this = self.clone();
        let written = tokio::task::spawn_blocking(move || {
            let storage = this.storage.as_ref().ok_or_else(|| anyhow::anyhow!("the server keeps no data dir"))?;
            // Each chunk holds the write lock for about a millisecond; writes
            // go on between chunks (the tree keeps what they overwrite until
            // the snapshot has passed it). The longest hold is the figure to
            // watch if write tail latency grows with the tree.
            let (mut chunks, mut locked, mut longest) = (0u32, Duration::ZERO, Duration::ZERO);
            let result = storage.write_snapshot(header, |buf| {
                let t = std::time::Instant::now();
                let progress = this.tree.write().snapshot_chunk(buf, crate::storage::SNAPSHOT_CHUNK);
                let held = t.elapsed();
                (chunks, locked, longest) = (chunks + 1, locked + held, longest.max(held));
                progress
            });
            if result.is_err() {
                this.tree.write().abort_snapshot();
            }
            let zxid = result.map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::Ok((zxid, chunks, locked, longest))
        })
        .await
        .map_err(|e| anyhow::anyhow!("the snapshot task failed: {e}"))?;
        let (zxid, chunks, locked, longest) = written?;
        tracing::info!(
            zxid = format!("{zxid:#x}"),
            chunks,
            tree_locked_ms = locked.as_millis() as u64,
            longest_hold_us = longest.as_micros() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "snapshot taken"
        );
        Ok(Some(zxid))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use zk_wire::records::{Acl, Id, Stat};

    use super::*;
    use crate::acl;
    use crate::core::Core;
    use crate::txn::NodeKind;

    /// A node as a client can see it: data, ACL, stat, sorted children.
    type Contents = (Option<Vec<u8>>, Vec<Acl>, Stat, Vec<String>);

    fn contents(t: &DataTree) -> BTreeMap<String, Contents> {
        t.paths()
            .filter_map(|p| {
                let n = t.get(&p)?;
                let mut children: Vec<String> = n.children().iter().map(str::to_string).collect();
                children.sort_unstable();
                Some((p.clone(), (n.data().map(<[u8]>::to_vec), n.acl().as_ref().clone(), n.stat(), children)))
            })
            .collect()
    }

    /// Commits `build`'s txn through the server and records it with its
    /// header, so the test can replay exactly what was ordered.
    fn commit(core: &Core, log: &Mutex<Vec<(TxnHeader, Txn)>>, build: impl FnOnce(&DataTree) -> Txn) {
        core.commit(
            Proposal::server(0, 0),
            |tree, ctx| {
                let txn = build(tree);
                let hdr = TxnHeader { session_id: 0, cxid: 0, zxid: ctx.zxid, time: ctx.time };
                log.lock().unwrap().push((hdr, txn.clone()));
                txn
            },
            |_, _| (),
        );
    }

    fn create(path: String, data: Vec<u8>, tree: &DataTree) -> Txn {
        let parent = crate::path::parent(&path).map(crate::path::canonical).unwrap_or("/");
        let pcv = tree.get(parent).map_or(0, |p| p.stat.cversion) + 1;
        Txn::Create {
            path,
            data: Some(data.into()),
            acl: Arc::new(acl::open_acl_unsafe()),
            kind: NodeKind::Persistent,
            parent_cversion: pcv,
        }
    }

    /// The snapshot the server writes while a writer thread changes the
    /// tree as fast as it can is the tree as of the snapshot's zxid, node
    /// for node: data, ACL, stat and children, not just the count. The
    /// reference is a tree built by applying, in order, every txn the
    /// server ordered up to that zxid.
    #[test]
    fn a_snapshot_taken_under_concurrent_writes_is_the_tree_at_its_zxid() {
        let dir = std::env::temp_dir().join(format!("coord-cow-{}-{}", std::process::id(), rand::random::<u32>()));
        let core = Arc::new(Core::open(Config { data_dir: Some(dir.clone()), ..Config::for_tests() }).unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        // Enough data for the snapshot to take several 1 MiB chunks, so the
        // writer gets between them.
        const NODES: usize = 6_000;
        commit(&core, &log, |t| create("/n".into(), vec![], t));
        commit(&core, &log, |t| create("/m".into(), vec![], t));
        for i in 0..NODES {
            commit(&core, &log, |t| create(format!("/n/{i}"), vec![b'a'; 1024], t));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (core, log, stop) = (core.clone(), log.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let i = (k * 7919) as usize % NODES;
                    let path = format!("/n/{i}");
                    match k % 4 {
                        0 => commit(&core, &log, |t| Txn::SetData {
                            version: t.get(&path).map_or(0, |n| n.stat.version) + 1,
                            data: Some(format!("v{k}").into_bytes().into()),
                            path,
                        }),
                        1 => commit(&core, &log, |t| Txn::SetAcl {
                            version: t.get(&path).map_or(0, |n| n.stat.aversion) + 1,
                            acl: Arc::new(vec![Acl {
                                perms: 31,
                                id: Id { scheme: "digest".into(), id: format!("u{k}:x") },
                            }]),
                            path,
                        }),
                        2 => commit(&core, &log, |t| create(format!("/m/{k}"), vec![b'b'; 64], t)),
                        _ => commit(&core, &log, |_| Txn::Delete { path: format!("/m/{}", k - 1) }),
                    }
                }
                k
            })
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let zxid = rt.block_on(core.snapshot_now()).unwrap().expect("a data dir");
        let after = core.with_tree(DataTree::last_zxid);
        stop.store(true, Ordering::Relaxed);
        let writes = writer.join().unwrap();
        assert!(after > zxid + 10, "no write was ordered while the snapshot was written ({writes} in all)");

        let file = std::fs::read(dir.join(format!("snapshot.{zxid:016x}"))).unwrap();
        let snapshot = crate::storage::decode_snapshot(&file).unwrap();
        let mut reference = DataTree::new();
        for (hdr, txn) in log.lock().unwrap().iter().filter(|(h, _)| h.zxid <= zxid) {
            reference.apply(hdr, txn, &mut Vec::new());
        }
        assert_eq!(snapshot.last_zxid(), zxid);
        let (got, want) = (contents(&snapshot), contents(&reference));
        assert_eq!(got.len(), want.len());
        for (path, node) in &want {
            assert_eq!(got.get(path), Some(node), "{path} differs from the tree at zxid {zxid:#x}");
        }
        drop(core);
        std::fs::remove_dir_all(dir).ok();
    }
}

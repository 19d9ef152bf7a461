//! The server's shared state: the stages of a request, each behind its own
//! lock, and the one invariant that orders their output.
//!
//! # Ordering, the invariant everything rests on
//!
//! ZooKeeper promises each client that replies come in request order, and
//! that a client sees a watch event before any data that reflects the change
//! behind it. Both follow from one rule here:
//!
//! > every reply and every notification is queued on its connection's
//! > outbound channel *while holding the tree lock that ordered it*.
//!
//! A write takes the tree's write lock, assigns the zxid, applies the txn,
//! queues the notifications it fired, then queues its own reply. A read takes
//! the read lock, reads, registers its watch, and queues its reply before
//! releasing. So a notification queued by a later write cannot overtake the
//! reply of a read that set the watch, and a read that sees new data is
//! queued after the notification of that change. No lock is ever held across
//! I/O: the outbound channels are drained by each connection's writer task.
//!
//! Reads run in parallel with each other; writes are serialised, as a single
//! ordered log of transactions requires, and hold the lock for microseconds.
//!
//! # Who holds what
//!
//! | state | owner | lock level |
//! |---|---|---|
//! | the tree, the log, snapshots | `Committer` | tree (first) |
//! | the session table | [`Sessions`] | sessions |
//! | watches | [`WatchManager`] | watches |
//! | open connections | the connection `Registry` | connections (last) |
//!
//! The levels are the lock order, checked in debug builds (`crate::lock`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::clients::{ConnShared, Registry};
use crate::committer::{Committer, Proposal};
use crate::config::Config;
use crate::lock::{self, Level};
use crate::prep;
use crate::session::{SessionId, Sessions};
use crate::stats::Stats;
use crate::storage::{Storage, StorageError};
use crate::tree::{DataTree, Trigger, TxnResult};
use crate::txn::Txn;
use crate::watch::{Notification, WatchManager};

pub struct Core {
    pub config: Config,
    /// Private: the tree is reached through `Core` alone (`with_tree`,
    /// `commit`), so the handlers above depend on one facade.
    committer: Arc<Committer>,
    pub(crate) sessions: lock::Mutex<Sessions>,
    pub(crate) watches: lock::Mutex<WatchManager>,
    pub(crate) conns: Registry,
    pub stats: Stats,
    pub started: Instant,
}

impl Core {
    /// A server state: recovered from `config.data_dir` when there is one,
    /// empty and in memory otherwise.
    pub fn open(config: Config) -> Result<Self, StorageError> {
        let (committer, secret) = Committer::open(&config)?;
        let mut sessions = Sessions::new(secret, config.tick_time);
        // Sessions outlive a restart: each gets a full timeout from now to
        // reconnect, and expires as usual if its client does not.
        for (id, timeout_ms) in committer.read(|t| t.sessions().collect::<Vec<_>>()) {
            sessions.insert(id, Duration::from_millis(timeout_ms.max(0) as u64));
        }
        if !sessions.is_empty() {
            tracing::info!(sessions = sessions.len(), "restored sessions; each has its timeout to reconnect");
        }
        let stats = Stats::default();
        let core = Core {
            conns: Registry::new(
                config.max_client_connections,
                stats.packets_sent.clone(),
                config.global_queued_bytes_limit,
            ),
            config,
            committer: Arc::new(committer),
            sessions: lock::Mutex::new(Level::Sessions, sessions),
            watches: lock::Mutex::new(Level::Watches, WatchManager::default()),
            stats,
            started: Instant::now(),
        };
        core.close_orphaned_sessions();
        Ok(core)
    }

    /// Recovery's half of "no ephemeral outlives its owner". A log or
    /// snapshot written by an older server (or by one that applied a
    /// request after its session's close) can hold ephemerals whose owner
    /// is not among the restored sessions; nothing would ever delete them,
    /// and an orphan lock node would block its lock for good. Each such
    /// owner gets a closeSession txn, logged like any other, so the tree
    /// is changed only by transactions and replay reproduces it. Returns
    /// how many owners were closed.
    fn close_orphaned_sessions(&self) -> usize {
        let orphans: Vec<(i64, usize)> = self.with_tree(|t| {
            let live: std::collections::HashSet<i64> = t.sessions().map(|(id, _)| id).collect();
            t.sessions_with_ephemerals().filter(|(id, _)| !live.contains(id)).map(|(id, p)| (*id, p.len())).collect()
        });
        for (id, count) in &orphans {
            tracing::warn!(
                session = %SessionId(*id),
                ephemerals = count,
                "deleting the ephemerals of a session that is gone"
            );
            self.commit(Proposal::server(*id, 0), |_, _| Txn::CloseSession, |_, _| ());
        }
        orphans.len()
    }

    /// Orders a transaction through the committer and delivers the watch
    /// events it fired (see [`Committer::commit`]). A client's request
    /// leaves the count of requests in process as its txn is applied:
    /// from then on it counts among the txns the log has not made durable
    /// (see [`Core::outstanding_requests`]), and never twice.
    pub(crate) fn commit<R>(
        &self,
        proposal: Proposal<'_>,
        build: impl FnOnce(&DataTree, &prep::Ctx<'_>) -> Txn,
        reply: impl FnOnce(i64, &TxnResult) -> R,
    ) -> R {
        let from = proposal.from;
        self.committer.commit(
            proposal,
            build,
            |triggers, zxid| self.deliver(triggers, zxid),
            |zxid, result| {
                if let Some(c) = from {
                    c.done(&self.stats);
                }
                reply(zxid, result)
            },
        )
    }

    /// Orders a createSession (see [`Committer::create_session`]).
    pub(crate) fn create_session(&self, open: impl FnOnce() -> i64, timeout_ms: i32) -> i64 {
        self.committer.create_session(open, timeout_ms)
    }

    /// The zxid of the last txn applied.
    pub(crate) fn last_zxid(&self) -> i64 {
        self.committer.last_zxid()
    }

    /// Txns applied and not yet durable (see [`Committer::unlogged`]).
    pub(crate) fn unlogged(&self) -> u64 {
        self.committer.unlogged()
    }

    /// Turns fired triggers into events for the connections watching, and
    /// queues them: called under the tree lock, before the write's reply.
    fn deliver(&self, triggers: &[Trigger], zxid: i64) {
        let mut notes = Vec::new();
        self.watches.lock().fire(triggers, &mut notes);
        self.notify(notes, zxid);
    }

    /// Queues watch events on their connections.
    pub(crate) fn notify(&self, notes: Vec<Notification>, zxid: i64) {
        if notes.is_empty() {
            return;
        }
        self.conns.with(|conns| {
            for (conn_id, event) in notes {
                if let Some(c) = conns.get(&conn_id) {
                    c.send(crate::frames::notification(&event), zxid);
                }
            }
        });
    }

    pub fn durable(&self) -> watch::Receiver<i64> {
        self.committer.durable()
    }

    /// The highest durable zxid now.
    pub fn durable_zxid(&self) -> i64 {
        self.committer.durable_zxid()
    }

    /// Requests received and not yet processed: ZooKeeper's
    /// `outstanding_requests`, and what `globalOutstandingLimit` bounds.
    /// A request is processed once its reply is queued, and a write once
    /// its txn is durable too, as in ZooKeeper, whose final stage (which
    /// applies, replies and takes the request off its count) runs after the
    /// log's fsync. Here a write is applied before the fsync, so it counts
    /// among the unlogged txns until then. A reply that is ready and waits
    /// on a client that does not read it is no longer work: it counts as
    /// bytes (`global_queued_bytes_limit`), not as a request.
    pub fn outstanding_requests(&self) -> u64 {
        self.stats.in_process() + self.unlogged()
    }

    /// Bytes of replies queued on all connections and not yet written.
    pub fn queued_bytes(&self) -> u64 {
        self.conns.totals.queued.load(Ordering::Relaxed) as u64
    }

    /// The write-ahead log, when the server keeps a data dir.
    pub fn storage(&self) -> Option<&Storage> {
        self.committer.storage()
    }

    /// Whether a snapshot is due (see `Storage::snapshot_due`).
    pub(crate) fn snapshot_due(&self) -> bool {
        self.committer.snapshot_due(self.config.snap_count)
    }

    /// Writes a snapshot now; the zxid it covers, or `None` without a data
    /// dir.
    pub async fn snapshot_now(&self) -> anyhow::Result<Option<i64>> {
        self.committer.snapshot_now().await
    }

    // ---- connections -----------------------------------------------------

    pub fn connections(&self) -> Vec<Arc<ConnShared>> {
        self.conns.all()
    }

    pub fn close_all_connections(&self) {
        for c in self.connections() {
            c.close();
        }
    }

    /// Forgets a closed connection: its watches go (they belong to the
    /// connection), its session stays until it expires or is reattached.
    /// It stays listed, and keeps its per-IP slot, until
    /// [`Registry::release`]: the socket may still be open while the writer
    /// flushes.
    pub(crate) fn unregister_conn(&self, conn: &ConnShared) {
        self.watches.lock().remove_conn(conn.id);
        let sid = conn.session_id.load(Ordering::Relaxed);
        if sid != 0 {
            if let Some(s) = self.sessions.lock().get_mut(sid) {
                if s.conn == Some(conn.id) {
                    s.conn = None;
                }
            }
        }
    }

    // ---- introspection ---------------------------------------------------------

    /// Runs `f` on the tree under the read lock. There is no mutable
    /// counterpart: the tree changes only through logged txns.
    pub fn with_tree<R>(&self, f: impl FnOnce(&DataTree) -> R) -> R {
        self.committer.read(f)
    }

    pub fn with_watches<R>(&self, f: impl FnOnce(&WatchManager) -> R) -> R {
        f(&self.watches.lock())
    }

    pub fn with_sessions<R>(&self, f: impl FnOnce(&Sessions) -> R) -> R {
        f(&self.sessions.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl;
    use crate::txn::{NodeKind, TxnHeader};

    fn ephemeral(path: &str, owner: i64, pcv: i32) -> Txn {
        Txn::Create {
            path: path.into(),
            data: None,
            acl: Arc::new(acl::open_acl_unsafe()),
            kind: NodeKind::Ephemeral(owner),
            parent_cversion: pcv,
        }
    }

    fn wait_durable(core_or_storage: watch::Receiver<i64>, zxid: i64) {
        let mut durable = core_or_storage;
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), durable.wait_for(|d| *d >= zxid)).await.unwrap().unwrap();
        });
    }

    /// A log that holds an ephemeral of a session it never opened (what an
    /// older server that applied a request after its session's close left
    /// behind) recovers without it, through a logged closeSession: the
    /// next recovery replays the same deletion.
    #[test]
    fn recovery_closes_the_sessions_of_orphan_ephemerals() {
        let dir =
            std::env::temp_dir().join(format!("coord-core-orphans-{}-{}", std::process::id(), rand::random::<u32>()));
        {
            let rec = Storage::open(&dir).unwrap();
            let txns = [
                (7, Txn::CreateSession { timeout_ms: 30_000 }),
                (7, ephemeral("/alive", 7, 1)),
                (9, ephemeral("/orphan", 9, 2)),
            ];
            for (i, (sid, txn)) in txns.iter().enumerate() {
                let hdr = TxnHeader { session_id: *sid, cxid: 0, zxid: i as i64 + 1, time: 1 };
                rec.storage.append(&hdr, txn);
            }
            wait_durable(rec.storage.durable(), 3);
        }
        let config = Config { data_dir: Some(dir.clone()), ..Config::for_tests() };
        let core = Core::open(config.clone()).unwrap();
        core.with_tree(|t| {
            assert!(t.get("/alive").is_some(), "a restored session keeps its ephemerals");
            assert!(t.get("/orphan").is_none(), "an ephemeral of a session that is gone was kept");
            assert_eq!(t.last_zxid(), 4, "the deletion is a transaction");
        });
        wait_durable(core.durable(), 4);
        drop(core);
        let again = Storage::open(&dir).unwrap();
        assert!(again.tree.get("/orphan").is_none(), "the closeSession was not logged");
        assert_eq!(again.tree.last_zxid(), 4);
        std::fs::remove_dir_all(dir).ok();
    }
}

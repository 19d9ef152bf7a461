//! The server's shared state and the one place requests are carried out.
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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use zk_wire::codec::Jute;
use zk_wire::consts::{perms, AddWatchMode, OpCode, WatcherType, NOTIFICATION_XID};
use zk_wire::frame::{finish_frame, start_frame};
use zk_wire::records::*;
use zk_wire::request::MultiOp;
use zk_wire::response::MultiResult;
use zk_wire::{ErrorCode, Request};

use crate::acl;
use crate::config::Config;
use crate::prep;
use crate::session::{Liveness, Sessions};
use crate::stats::Stats;
use crate::storage::{Storage, StorageError};
use crate::tree::{DataTree, TxnResult};
use crate::txn::{NodeKind, Txn, TxnHeader};
use crate::watch::{ConnId, Notification, WatchManager};

/// A connection's outbound queue holds at most this many bytes; a client
/// that stops reading is disconnected rather than allowed to grow the
/// server's memory without bound.
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// The most identities one connection may hold (its `ip` id, `super`, and
/// the digest ids it added). A real client adds one or two; ZooKeeper keeps
/// every id it is given, so a client adding distinct ids in a loop grew
/// the server's memory, and each addauth re-orders them all. Bounded, the
/// re-ordering costs a bounded time.
const MAX_AUTH_IDS: usize = 16;

/// The longest `user:password` an addauth may carry. Digest users are
/// short names; a megabyte one costs a megabyte per connection and the
/// hashing of it on every ACL check.
const MAX_AUTH_BYTES: usize = 1024;

pub enum Outbound {
    /// A frame, and the zxid that must be durable before it may be sent
    /// (the state it reflects).
    Frame(Bytes, i64),
    /// Flush what is queued, then close the socket.
    Close,
}

/// What the server knows of one TCP connection, shared with its tasks.
pub struct ConnShared {
    pub id: ConnId,
    pub peer: SocketAddr,
    tx: mpsc::UnboundedSender<Outbound>,
    queued: Arc<AtomicUsize>,
    /// Cancelled when the server closes the connection (session expired or
    /// moved, shutdown, slow consumer).
    pub closed: CancellationToken,
    pub session_id: AtomicI64,
    pub timeout_ms: AtomicU64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    global_sent: Arc<AtomicU64>,
    pub last_zxid: AtomicI64,
    pub last_cxid: AtomicI64,
    pub established: SystemTime,
    /// Frames not queued because the connection was condemned: counted, and
    /// logged once when the connection ends (a watch storm towards a dead
    /// client must not become a log storm).
    pub dropped: AtomicU64,
    over_cap: std::sync::atomic::AtomicBool,
}

impl ConnShared {
    /// Queues a frame that may go out once `zxid` is durable. Never blocks:
    /// this runs under the tree lock.
    pub fn send(&self, frame: Bytes, zxid: i64) {
        // A condemned connection's writer stops at the Close it was sent:
        // anything queued after it would never leave, only hold memory.
        if self.closed.is_cancelled() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let n = frame.len();
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > MAX_QUEUED_BYTES {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            // Several reads may cross the cap at once: one of them logs.
            if !self.over_cap.swap(true, Ordering::Relaxed) {
                self.close();
                tracing::warn!(conn = self.id, peer = %self.peer, queued_bytes = MAX_QUEUED_BYTES, "client is not reading its replies; closing");
            }
            return;
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.global_sent.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Outbound::Frame(frame, zxid));
    }

    pub fn close(&self) {
        let _ = self.tx.send(Outbound::Close);
        self.closed.cancel();
    }

    pub fn queued(&self) -> Arc<AtomicUsize> {
        self.queued.clone()
    }
}

/// The per-connection state the connection task owns.
pub struct Client {
    pub conn: Arc<ConnShared>,
    pub session_id: i64,
    pub auth: Vec<Id>,
    pub live: Arc<Liveness>,
}

/// How a handshake ended.
pub enum Handshake {
    Accepted(Client),
    /// The session is unknown, expired or the password is wrong: the reply
    /// (timeout 0) was queued; close after it.
    Refused,
    /// The client has seen a newer zxid than ours; ZooKeeper drops such a
    /// connection without a reply, so the client tries another server.
    Dropped,
}

pub struct Core {
    pub config: Config,
    /// Lock order: `tree` first; `watches`, `sessions`, `conns` and
    /// `per_ip` are held briefly, inside `tree` or alone. Whether a session
    /// may still act (`Liveness`) is atomics, set under `sessions` and read
    /// by the committer under `tree` with no further lock.
    tree: RwLock<DataTree>,
    watches: Mutex<WatchManager>,
    sessions: Mutex<Sessions>,
    conns: Mutex<HashMap<ConnId, Arc<ConnShared>>>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    next_conn: AtomicU64,
    pub stats: Stats,
    pub started: Instant,
    /// The write-ahead log, when the server has a data dir.
    pub storage: Option<Storage>,
    /// The highest durable zxid (always "everything" without a data dir).
    durable: watch::Receiver<i64>,
    /// Held while a snapshot is written: the periodic one and one asked for
    /// over the admin API must not write the same file at once.
    pub snapshotting: tokio::sync::Mutex<()>,
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Builds one reply frame: header, then the body if the request succeeded.
fn frame(xid: i32, zxid: i64, err: i32, body: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut out = Vec::with_capacity(64);
    let at = start_frame(&mut out);
    ReplyHeader { xid, zxid, err }.write(&mut out);
    if err == 0 {
        body(&mut out);
    }
    finish_frame(&mut out, at);
    Bytes::from(out)
}

fn write_data(out: &mut Vec<u8>, data: Option<&[u8]>) {
    match data {
        None => (-1i32).write(out),
        Some(d) => {
            (d.len() as i32).write(out);
            out.extend_from_slice(d);
        }
    }
}

fn write_children(out: &mut Vec<u8>, children: &[&str]) {
    (children.len() as i32).write(out);
    for c in children {
        (c.len() as i32).write(out);
        out.extend_from_slice(c.as_bytes());
    }
}

impl Core {
    /// A server state: recovered from `config.data_dir` when there is one,
    /// empty and in memory otherwise.
    pub fn open(config: Config) -> Result<Self, StorageError> {
        let tick = config.tick_time;
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
        let mut sessions = Sessions::new(secret, tick);
        // Sessions outlive a restart: each gets a full timeout from now to
        // reconnect, and expires as usual if its client does not.
        for (id, timeout_ms) in tree.sessions() {
            sessions.insert(id, Duration::from_millis(timeout_ms.max(0) as u64));
        }
        if !sessions.is_empty() {
            tracing::info!(sessions = sessions.len(), "restored sessions; each has its timeout to reconnect");
        }
        let core = Core {
            config,
            tree: RwLock::new(tree),
            watches: Mutex::new(WatchManager::default()),
            sessions: Mutex::new(sessions),
            conns: Mutex::new(HashMap::new()),
            per_ip: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            stats: Stats::default(),
            started: Instant::now(),
            storage,
            durable,
            snapshotting: tokio::sync::Mutex::new(()),
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
        let orphans: Vec<i64> = self.with_tree(|t| {
            let live: std::collections::HashSet<i64> = t.sessions().map(|(id, _)| id).collect();
            t.sessions_with_ephemerals().map(|(id, _)| *id).filter(|id| !live.contains(id)).collect()
        });
        for id in &orphans {
            let count = self.with_tree(|t| t.ephemerals_of(*id).count());
            tracing::warn!(
                session = format!("{id:#x}"),
                ephemerals = count,
                "deleting the ephemerals of a session that is gone"
            );
            self.commit(*id, 0, |_, _| Txn::CloseSession, |_, _| ());
        }
        orphans.len()
    }

    pub fn durable(&self) -> watch::Receiver<i64> {
        self.durable.clone()
    }

    // ---- connections -----------------------------------------------------

    /// Admits a connection, or refuses it when its IP is at the limit.
    pub fn register_conn(&self, peer: SocketAddr, tx: mpsc::UnboundedSender<Outbound>) -> Option<Arc<ConnShared>> {
        let limit = self.config.max_client_connections;
        {
            let mut per_ip = self.per_ip.lock();
            let n = per_ip.entry(peer.ip()).or_insert(0);
            if limit > 0 && *n >= limit {
                return None;
            }
            *n += 1;
        }
        let conn = Arc::new(ConnShared {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            peer,
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            closed: CancellationToken::new(),
            session_id: AtomicI64::new(0),
            timeout_ms: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            global_sent: self.stats.packets_sent.clone(),
            last_zxid: AtomicI64::new(0),
            last_cxid: AtomicI64::new(0),
            established: SystemTime::now(),
            dropped: AtomicU64::new(0),
            over_cap: std::sync::atomic::AtomicBool::new(false),
        });
        self.conns.lock().insert(conn.id, conn.clone());
        Some(conn)
    }

    /// Forgets a closed connection: its watches go (they belong to the
    /// connection), its session stays until it expires or is reattached.
    /// It stays listed, and keeps its per-IP slot, until
    /// [`Core::release_slot`]: the socket may still be open while the
    /// writer flushes.
    pub fn unregister_conn(&self, conn: &ConnShared) {
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

    /// Gives a connection's per-IP slot back, once its socket is closed.
    /// Freeing it earlier (when the reader stops) let a client that never
    /// reads hold any number of open sockets past the limit.
    /// Until then it is listed (`srvr`, `cons`) as the open socket it is.
    pub fn release_slot(&self, conn: &ConnShared) {
        self.conns.lock().remove(&conn.id);
        let mut per_ip = self.per_ip.lock();
        if let Some(n) = per_ip.get_mut(&conn.peer.ip()) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&conn.peer.ip());
            }
        }
    }

    pub fn connections(&self) -> Vec<Arc<ConnShared>> {
        self.conns.lock().values().cloned().collect()
    }

    pub fn close_all_connections(&self) {
        for c in self.connections() {
            c.close();
        }
    }

    // ---- handshake ---------------------------------------------------------

    pub fn handshake(&self, conn: &Arc<ConnShared>, req: &ConnectRequest) -> Handshake {
        let last_zxid = self.tree.read().last_zxid();
        if req.last_zxid_seen > last_zxid {
            tracing::info!(
                peer = %conn.peer,
                client_zxid = format!("{:#x}", req.last_zxid_seen),
                our_zxid = format!("{last_zxid:#x}"),
                "refusing a client that has seen a newer zxid than ours"
            );
            return Handshake::Dropped;
        }
        // The config checks both bounds fit an i32 and are ordered; an
        // embedder's Config is held to it here too, without a panic.
        let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        let min = ms(self.config.min_session_timeout);
        let timeout_ms = req.time_out.clamp(min, ms(self.config.max_session_timeout).max(min));
        let timeout = Duration::from_millis(timeout_ms as u64);

        let session_id = if req.session_id == 0 {
            let mut tree = self.tree.write();
            let id = self.sessions.lock().open(timeout);
            let zxid = tree.last_zxid() + 1;
            let hdr = TxnHeader { session_id: id, cxid: 0, zxid, time: wall_ms() };
            let txn = Txn::CreateSession { timeout_ms };
            tree.apply(&hdr, &txn, &mut Vec::new());
            if let Some(st) = &self.storage {
                st.append(&hdr, &txn);
            }
            id
        } else {
            let mut sessions = self.sessions.lock();
            let password = sessions.password(req.session_id);
            let valid = req.passwd.as_slice() == password.as_slice()
                && sessions.get(req.session_id).is_some_and(|s| !s.closing);
            if !valid {
                drop(sessions);
                tracing::info!(peer = %conn.peer, session = format!("{:#x}", req.session_id), "refusing reconnect: session expired or wrong password");
                let reply = ConnectResponse {
                    protocol_version: 0,
                    time_out: 0,
                    session_id: 0,
                    passwd: vec![0; 16],
                    read_only: req.read_only.map(|_| false),
                };
                conn.send(connect_frame(&reply), 0);
                return Handshake::Refused;
            }
            let previous = sessions.get_mut(req.session_id).and_then(|s| {
                s.timeout = timeout;
                // From here on, requests the old connection already read
                // are refused by the committer (SessionMoved).
                s.live.attach(conn.id);
                s.conn.take()
            });
            drop(sessions);
            // A session is served by one connection at a time: the old one,
            // if the client left it half-open, is closed.
            if let Some(old) = previous.and_then(|id| self.conns.lock().get(&id).cloned()) {
                tracing::info!(session = format!("{:#x}", req.session_id), old = %old.peer, new = %conn.peer, "session moved to a new connection");
                old.close();
            }
            req.session_id
        };

        let mut sessions = self.sessions.lock();
        let now = sessions.now_ms();
        let password = sessions.password(session_id);
        let Some(session) = sessions.get_mut(session_id) else {
            return Handshake::Refused;
        };
        session.conn = Some(conn.id);
        session.live.attach(conn.id);
        let live = session.live.clone();
        live.touch(now);
        drop(sessions);
        conn.session_id.store(session_id, Ordering::Relaxed);
        conn.timeout_ms.store(timeout_ms as u64, Ordering::Relaxed);
        let reply = ConnectResponse {
            protocol_version: 0,
            time_out: timeout_ms,
            session_id,
            passwd: password.to_vec(),
            // Mirrors the client: a client that sent no readOnly byte gets none.
            read_only: req.read_only.map(|_| false),
        };
        // The session must be on disk before the client may rely on it.
        let zxid = self.tree.read().last_zxid();
        conn.send(connect_frame(&reply), zxid);
        tracing::debug!(session = format!("{session_id:#x}"), peer = %conn.peer, timeout_ms, "session established");
        let auth = vec![Id { scheme: "ip".into(), id: conn.peer.ip().to_string() }];
        self.watches.lock().set_auth(conn.id, &auth);
        Handshake::Accepted(Client { conn: conn.clone(), session_id, auth, live })
    }

    pub fn touch(&self, client: &Client) {
        let now = self.sessions.lock().now_ms();
        client.live.touch(now);
    }

    // ---- requests ----------------------------------------------------------

    /// Carries out one request and queues its reply. Returns false when the
    /// connection must close after the reply (closeSession, failed auth).
    pub fn process(&self, client: &mut Client, xid: i32, req: Request) -> bool {
        let started = Instant::now();
        let conn = client.conn.clone();
        conn.last_cxid.store(xid.into(), Ordering::Relaxed);
        let keep_open = match req {
            Request::Ping => {
                let zxid = self.tree.read().last_zxid();
                conn.send(frame(xid, zxid, 0, |_| {}), zxid);
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
                self.commit_as(
                    client.session_id,
                    xid,
                    &[],
                    Some(client),
                    |_, _| Txn::Error(ErrorCode::ReconfigDisabled),
                    |zxid, _| conn.send(frame(xid, zxid, ErrorCode::ReconfigDisabled.as_i32(), |_| {}), zxid),
                );
                true
            }
            Request::Unsupported(op) => {
                // ZooKeeper answers ZUNIMPLEMENTED and then drops the
                // connection; we answer the same and keep it, so one odd
                // request does not cost a client its connection.
                tracing::info!(session = format!("{:#x}", client.session_id), op = ?op, "unimplemented request");
                let zxid = self.tree.read().last_zxid();
                conn.send(frame(xid, zxid, ErrorCode::Unimplemented.as_i32(), |_| {}), zxid);
                true
            }
            other => {
                self.read(client, xid, other);
                true
            }
        };
        self.stats.record_latency(started.elapsed().as_micros() as u64);
        keep_open
    }

    /// Answers a request whose body did not decode for its opcode. As in
    /// ZooKeeper, that is a MarshallingError reply and the connection
    /// carries on: the frame's length was sound, so the next frame starts
    /// where it should.
    pub fn reject_malformed(&self, client: &Client, xid: i32) {
        let zxid = self.tree.read().last_zxid();
        client.conn.send(frame(xid, zxid, ErrorCode::MarshallingError.as_i32(), |_| {}), zxid);
    }

    fn auth(&self, client: &mut Client, xid: i32, auth: &AuthPacket) -> bool {
        let ok = match auth.scheme.as_str() {
            // Over a bound, the answer is ZooKeeper's for any failed
            // addauth: AuthFailed, and the connection closes. The ids held
            // stay bounded, so ordering them (below) costs a bounded time.
            "digest" if auth.auth.len() > MAX_AUTH_BYTES || client.auth.len() >= MAX_AUTH_IDS => {
                tracing::info!(
                    session = format!("{:#x}", client.session_id),
                    bytes = auth.auth.len(),
                    ids = client.auth.len(),
                    max_bytes = MAX_AUTH_BYTES,
                    max_ids = MAX_AUTH_IDS,
                    "addauth over the per-connection bound"
                );
                false
            }
            "digest" => {
                let id = acl::digest(&String::from_utf8_lossy(&auth.auth));
                if self.config.super_digest.as_deref() == Some(id.as_str()) {
                    client.auth.push(Id { scheme: "super".into(), id: String::new() });
                }
                let id = Id { scheme: "digest".into(), id };
                if !client.auth.contains(&id) {
                    client.auth.push(id);
                }
                // whoAmI and `auth` ACLs list the ids in ZooKeeper's order.
                acl::order_like_zookeeper(&mut client.auth);
                true
            }
            "ip" => true,
            _ => false,
        };
        if ok {
            // Watch events are filtered by the ids the connection holds now.
            self.watches.lock().set_auth(client.conn.id, &client.auth);
        }
        let err = if ok { 0 } else { ErrorCode::AuthFailed.as_i32() };
        client.conn.send(frame(xid, 0, err, |_| {}), 0);
        if !ok {
            tracing::info!(session = format!("{:#x}", client.session_id), scheme = %auth.scheme, "authentication failed; closing the connection");
        }
        ok
    }

    /// Orders a transaction: under the write lock, builds it (validation
    /// sees the latest state), assigns the next zxid, applies it, delivers
    /// the watch events it fired, and hands the result to `reply` while the
    /// lock is still held.
    fn commit<R>(
        &self,
        session_id: i64,
        cxid: i32,
        build: impl FnOnce(&DataTree, &prep::Ctx<'_>) -> Txn,
        reply: impl FnOnce(i64, &TxnResult) -> R,
    ) -> R {
        self.commit_as(session_id, cxid, &[], None, build, reply)
    }

    /// As [`Core::commit`], for a client's request: `client` (when set) must
    /// still be the connection serving a live session once the tree lock is
    /// held, or nothing is prepared, applied or logged and `reply` gets
    /// SessionExpired or SessionMoved (see `Liveness::check`).
    fn commit_as<R>(
        &self,
        session_id: i64,
        cxid: i32,
        auth: &[Id],
        client: Option<&Client>,
        build: impl FnOnce(&DataTree, &prep::Ctx<'_>) -> Txn,
        reply: impl FnOnce(i64, &TxnResult) -> R,
    ) -> R {
        let mut tree = self.tree.write();
        if let Some(c) = client {
            if let Err(code) = c.live.check(c.conn.id) {
                // The connection is condemned (the move or the close closes
                // it too, a moment later): closing it first puts this reply
                // behind the close, so, as with ZooKeeper, the client never
                // sees it; its request simply was not carried out.
                c.conn.close();
                return reply(tree.last_zxid(), &TxnResult::Error(code));
            }
        }
        let zxid = tree.last_zxid() + 1;
        let time = wall_ms();
        let ctx = prep::Ctx { session_id, auth, extended_types: self.config.extended_types, zxid, time };
        let txn = build(&tree, &ctx);
        let hdr = TxnHeader { session_id, cxid, zxid, time };
        let mut triggers = Vec::new();
        let result = tree.apply(&hdr, &txn, &mut triggers);
        if let Some(st) = &self.storage {
            st.append(&hdr, &txn);
        }
        if !triggers.is_empty() {
            let mut notes = Vec::new();
            self.watches.lock().fire(&triggers, &mut notes);
            self.notify(notes, zxid);
        }
        reply(zxid, &result)
    }

    fn notify(&self, notes: Vec<Notification>, zxid: i64) {
        if notes.is_empty() {
            return;
        }
        let conns = self.conns.lock();
        for (conn_id, event) in notes {
            if let Some(c) = conns.get(&conn_id) {
                c.send(frame(NOTIFICATION_XID, -1, 0, |out| event.write(out)), zxid);
            }
        }
    }

    fn write(&self, client: &Client, xid: i32, req: &Request) {
        let conn = &client.conn;
        let op = req.op_code();
        self.commit_as(
            client.session_id,
            xid,
            &client.auth,
            Some(client),
            |tree, ctx| prep::prepare(tree, ctx, req),
            |zxid, result| {
                conn.last_zxid.store(zxid, Ordering::Relaxed);
                let f = match result {
                    TxnResult::Error(code) => frame(xid, zxid, code.as_i32(), |_| {}),
                    TxnResult::Created { path, stat } => frame(xid, zxid, 0, |out| {
                        path.write(out);
                        if op != OpCode::Create {
                            stat.write(out);
                        }
                    }),
                    TxnResult::Stat(stat) => frame(xid, zxid, 0, |out| stat.write(out)),
                    TxnResult::Multi(results) => frame(xid, zxid, 0, |out| {
                        multi_results(req, results).write(out);
                    }),
                    TxnResult::MultiError(codes) => frame(xid, zxid, 0, |out| {
                        zk_wire::Response::Multi(codes.iter().map(|c| MultiResult::Error(*c)).collect()).write(out)
                    }),
                    TxnResult::Deleted | TxnResult::Checked | TxnResult::SessionCreated | TxnResult::SessionClosed => {
                        frame(xid, zxid, 0, |_| {})
                    }
                };
                conn.send(f, zxid);
            },
        )
    }

    // ---- reads ---------------------------------------------------------------

    fn read(&self, client: &Client, xid: i32, req: Request) {
        let conn = &client.conn;
        let tree = self.tree.read();
        let zxid = tree.last_zxid();
        let node_for_read = |path: &str, perm: i32| -> Result<crate::tree::NodeRef<'_>, ErrorCode> {
            let node = tree.get(path).ok_or(ErrorCode::NoNode)?;
            acl::check(node.acl(), perm, &client.auth)?;
            Ok(node)
        };
        let mut pending_events = Vec::new();
        let result: Result<Vec<u8>, ErrorCode> = (|| {
            let mut out = Vec::new();
            match &req {
                Request::Exists(r) => {
                    if r.path.contains('\0') {
                        return Err(ErrorCode::BadArguments);
                    }
                    // exists sets its watch whether or not the node is
                    // there: on a missing node it waits for its creation.
                    if r.watch {
                        self.watches.lock().add_data(&r.path, conn.id);
                    }
                    let node = tree.get(&r.path).ok_or(ErrorCode::NoNode)?;
                    node.stat().write(&mut out);
                }
                Request::GetData(r) => {
                    let node = node_for_read(&r.path, perms::READ)?;
                    if r.watch {
                        self.watches.lock().add_data(&r.path, conn.id);
                    }
                    write_data(&mut out, node.data());
                    node.stat().write(&mut out);
                }
                Request::GetChildren(r) | Request::GetChildren2(r) => {
                    let node = node_for_read(&r.path, perms::READ)?;
                    if r.watch {
                        self.watches.lock().add_child(&r.path, conn.id);
                    }
                    write_children(&mut out, &node.children());
                    if matches!(req, Request::GetChildren2(_)) {
                        node.stat().write(&mut out);
                    }
                }
                Request::GetAcl(r) => {
                    let node = node_for_read(&r.path, perms::READ | perms::ADMIN)?;
                    // Without ADMIN, digest identities are shown with their
                    // hash masked: reading an ACL must not leak credentials.
                    let admin = acl::check(node.acl(), perms::ADMIN, &client.auth).is_ok();
                    let shown: Vec<Acl> = node
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
                    shown.write(&mut out);
                    node.stat().write(&mut out);
                }
                Request::GetAllChildrenNumber(r) => {
                    node_for_read(&r.path, perms::READ)?;
                    tree.descendant_count(&r.path).write(&mut out);
                }
                Request::GetEphemerals(r) => {
                    let prefix = r.path.trim();
                    let all = prefix.is_empty() || prefix == "/";
                    let list: Vec<String> = tree
                        .ephemerals_of(client.session_id)
                        .filter(|p| all || p.starts_with(&r.path))
                        .cloned()
                        .collect();
                    list.write(&mut out);
                }
                Request::MultiRead(ops) => {
                    // A small request can ask for a huge reply (5,000
                    // getData of a 1 MB node in a 90 KB frame): the reply's
                    // size is counted as it is built, and past the limit
                    // the request fails before another byte is copied.
                    let limit = multi_read_limit(self.config.max_buffer);
                    let mut size = 0usize;
                    let mut results = Vec::with_capacity(ops.len().min(1024));
                    for op in ops {
                        // Each result: a multi header (type, done, err), then
                        // the body.
                        size += 12
                            + match op {
                                MultiOp::GetData(r) => {
                                    tree.get(&r.path).map_or(0, |n| 4 + n.data().map_or(0, <[u8]>::len) + STAT_BYTES)
                                }
                                MultiOp::GetChildren(r) => tree
                                    .get(&r.path)
                                    .map_or(0, |n| 4 + n.children().iter().map(|c| 4 + c.len()).sum::<usize>()),
                                _ => 0,
                            };
                        if size > limit {
                            tracing::info!(
                                session = format!("{:#x}", client.session_id),
                                ops = ops.len(),
                                limit,
                                "multiRead refused: its reply would pass the size limit"
                            );
                            return Err(ErrorCode::MarshallingError);
                        }
                        let r = match op {
                            MultiOp::GetData(r) => node_for_read(&r.path, perms::READ).map(|n| {
                                MultiResult::GetData(GetDataResponse {
                                    data: n.data().map(<[u8]>::to_vec),
                                    stat: n.stat(),
                                })
                            }),
                            MultiOp::GetChildren(r) => node_for_read(&r.path, perms::READ).map(|n| {
                                MultiResult::GetChildren(ChildrenResponse {
                                    children: n.children().into_iter().map(str::to_string).collect(),
                                })
                            }),
                            _ => Err(ErrorCode::BadArguments),
                        };
                        results.push(r.unwrap_or_else(|e| MultiResult::Error(e.as_i32())));
                    }
                    zk_wire::Response::Multi(results).write(&mut out);
                }
                Request::Sync(r) => r.path.write(&mut out),
                Request::WhoAmI => {
                    let infos: Vec<ClientInfo> = client
                        .auth
                        .iter()
                        .map(|id| ClientInfo {
                            auth_scheme: id.scheme.clone(),
                            user: match id.scheme.as_str() {
                                "digest" => id.id.split(':').next().unwrap_or_default().to_string(),
                                _ => id.id.clone(),
                            },
                        })
                        .collect();
                    infos.write(&mut out);
                }
                Request::CheckWatches(r) | Request::RemoveWatches(r) => {
                    let kind = WatcherType::from_i32(r.watcher_type).ok_or(ErrorCode::MarshallingError)?;
                    let mut w = self.watches.lock();
                    let found = if matches!(req, Request::CheckWatches(_)) {
                        w.contains(&r.path, kind, conn.id)
                    } else {
                        w.remove(&r.path, kind, conn.id)
                    };
                    if !found {
                        return Err(ErrorCode::NoWatcher);
                    }
                }
                Request::AddWatch(r) => {
                    let mode = AddWatchMode::from_i32(r.mode).ok_or(ErrorCode::MarshallingError)?;
                    self.watches.lock().add_persistent(&r.path, conn.id, mode == AddWatchMode::PersistentRecursive);
                    // ZooKeeper answers addWatch with an ErrorResponse(0) body.
                    0i32.write(&mut out);
                }
                Request::SetWatches(w) | Request::SetWatches2(w) => {
                    self.watches.lock().set_watches(
                        &tree,
                        conn.id,
                        w.relative_zxid,
                        &w.data_watches,
                        &w.exist_watches,
                        &w.child_watches,
                        &w.persistent_watches,
                        &w.persistent_recursive_watches,
                        &mut pending_events,
                    );
                }
                _ => return Err(ErrorCode::Unimplemented),
            }
            Ok(out)
        })();
        // Events owed by setWatches go out before its reply, as ZooKeeper
        // sends them.
        for ev in pending_events {
            conn.send(frame(NOTIFICATION_XID, -1, 0, |out| ev.write(out)), zxid);
        }
        let f = match result {
            Ok(body) => frame(xid, zxid, 0, |out| out.extend_from_slice(&body)),
            Err(code) => frame(xid, zxid, code.as_i32(), |_| {}),
        };
        // A read may have seen writes not yet on disk: it waits for them.
        conn.send(f, zxid);
        drop(tree);
    }

    // ---- sessions --------------------------------------------------------------

    /// Ends a session: deletes its ephemerals (firing their watches), and
    /// closes the connection serving it. `requester` is set when the client
    /// asked (closeSession), and gets the reply.
    pub fn close_session(&self, session_id: i64, requester: Option<(&Client, i32)>) {
        let conn_id = {
            let mut sessions = self.sessions.lock();
            match sessions.get_mut(session_id) {
                Some(s) if !s.closing => {
                    s.closing = true;
                    // Before the closeSession txn is ordered: every txn
                    // ordered after it sees the session ended.
                    s.live.end();
                    s.conn
                }
                _ => return,
            }
        };
        self.commit(
            session_id,
            requester.map_or(0, |(_, x)| x),
            |_, _| Txn::CloseSession,
            |zxid, _| {
                if let Some((client, xid)) = requester {
                    client.conn.send(frame(xid, zxid, 0, |_| {}), zxid);
                }
            },
        );
        self.sessions.lock().remove(session_id);
        if let Some(c) = conn_id.and_then(|id| self.conns.lock().get(&id).cloned()) {
            c.close();
        }
    }

    /// Expires every session whose deadline has passed. Returns how many.
    pub fn expire_sessions(&self) -> usize {
        let expired = self.sessions.lock().expired();
        for id in &expired {
            tracing::info!(session = format!("{id:#x}"), "session expired");
            self.close_session(*id, None);
        }
        expired.len()
    }

    pub fn until_next_step(&self) -> Duration {
        self.sessions.lock().until_next_step()
    }

    /// Deletes empty containers that have had children, and TTL nodes that
    /// are childless and unmodified for longer than their TTL.
    pub fn reap(&self) -> usize {
        let now = wall_ms();
        let candidates: Vec<String> = {
            let tree = self.tree.read();
            let containers =
                tree.containers().filter(|p| tree.get(p).is_some_and(|n| n.stat.cversion > 0 && n.num_children() == 0));
            let ttls = tree.ttls().filter(|p| {
                tree.get(p).is_some_and(
                    |n| matches!(n.kind(), NodeKind::Ttl(ttl) if n.num_children() == 0 && now - n.stat.mtime > ttl),
                )
            });
            containers.chain(ttls).cloned().collect()
        };
        let mut reaped = 0;
        for path in candidates {
            // Checked again under the write lock: a child may have arrived.
            let done = self.commit(
                0,
                0,
                |t, ctx| {
                    let still = t.get(&path).is_some_and(|n| {
                        n.num_children() == 0
                            && match n.kind() {
                                NodeKind::Container => n.stat.cversion > 0,
                                NodeKind::Ttl(ttl) => ctx.time - n.stat.mtime > ttl,
                                _ => false,
                            }
                    });
                    if still {
                        Txn::Delete { path: path.clone() }
                    } else {
                        Txn::Error(ErrorCode::NotEmpty)
                    }
                },
                |_, r| matches!(r, TxnResult::Deleted),
            );
            if done {
                tracing::debug!(path, "reaped");
                reaped += 1;
            }
        }
        reaped
    }

    // ---- introspection ---------------------------------------------------------

    pub fn with_tree<R>(&self, f: impl FnOnce(&DataTree) -> R) -> R {
        f(&self.tree.read())
    }

    /// The tree under the write lock, for snapshots: keep `f` short, every
    /// request waits for it.
    pub fn with_tree_mut<R>(&self, f: impl FnOnce(&mut DataTree) -> R) -> R {
        f(&mut self.tree.write())
    }

    pub fn with_watches<R>(&self, f: impl FnOnce(&WatchManager) -> R) -> R {
        f(&self.watches.lock())
    }

    pub fn with_sessions<R>(&self, f: impl FnOnce(&Sessions) -> R) -> R {
        f(&self.sessions.lock())
    }
}

/// The serialized size of a Stat.
const STAT_BYTES: usize = 68;

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

/// The reply of a successful multi: one result per op, shaped by the op's
/// opcode (a plain create answers with the path only).
fn multi_results(req: &Request, results: &[TxnResult]) -> zk_wire::Response {
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
            _ => MultiResult::Error(ErrorCode::RuntimeInconsistency.as_i32()),
        })
        .collect();
    zk_wire::Response::Multi(out)
}

/// The handshake reply: a ConnectResponse with no ReplyHeader.
pub fn connect_frame(reply: &ConnectResponse) -> Bytes {
    let mut out = Vec::with_capacity(48);
    let at = start_frame(&mut out);
    reply.write(&mut out);
    finish_frame(&mut out, at);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! The connections the server holds open, and what each shares with the
//! rest of the server: its outbound queue, its counters, its session. The
//! sockets themselves are served by [`crate::conn`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use zk_wire::records::Id;

use crate::lock::{self, Level};
use crate::session::Liveness;
use crate::stats::RequestKind;
use crate::watch::ConnId;

/// A connection's outbound queue holds at most this many bytes; a client
/// that stops reading is disconnected rather than allowed to grow the
/// server's memory without bound.
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

pub enum Outbound {
    /// A frame, and the zxid that must be durable before it may be sent
    /// (the state it reflects); for the reply to a request, the request it
    /// answers.
    Frame(Bytes, i64, Option<Answer>),
    /// Flush what is queued, then close the socket.
    Close,
}

/// A connection's outbound queue, drained by its writer. A deque behind a
/// mutex rather than a channel: a channel allocates its first block of
/// slots (over 2 KiB) when it is made, for every connection, idle or not,
/// and that was a third of what an idle session cost; the deque allocates
/// when something is queued, and the writer gives it back once drained.
/// The mutex is a leaf: nothing else is ever taken while it is held, so it
/// has no place in the lock order.
#[derive(Default)]
pub(crate) struct Outbox {
    queue: parking_lot::Mutex<VecDeque<Outbound>>,
    ready: Notify,
}

impl Outbox {
    fn push(&self, item: Outbound) {
        self.queue.lock().push_back(item);
        self.ready.notify_one();
    }

    /// The next item, waiting for one.
    pub(crate) async fn next(&self) -> Outbound {
        loop {
            if let Some(item) = self.try_next() {
                return item;
            }
            // A push between the check and this wait leaves a permit, so
            // no wake-up is lost.
            self.ready.notified().await;
        }
    }

    pub(crate) fn try_next(&self) -> Option<Outbound> {
        self.queue.lock().pop_front()
    }

    /// Frees the queue's memory if nothing is queued; true if so.
    pub(crate) fn release_if_empty(&self) -> bool {
        let mut queue = self.queue.lock();
        if !queue.is_empty() {
            return false;
        }
        if queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
        true
    }
}

/// The request a reply answers: when it was read, and what kind it was.
/// The writer records the latency once the reply has gone out, so the
/// figure includes the wait for the log's fsync, as ZooKeeper's does.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub started: Instant,
    pub kind: RequestKind,
}

/// What the server knows of one TCP connection, shared with its tasks.
pub struct ConnShared {
    pub id: ConnId,
    pub peer: SocketAddr,
    pub(crate) outbox: Outbox,
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
    over_cap: AtomicBool,
    /// Requests read and not yet answered on the socket: the reader adds
    /// one per request, the writer takes one per reply it has written.
    pub outstanding: AtomicUsize,
    /// Signalled by the writer whenever it has written replies, for a
    /// reader that is waiting to be let through admission control.
    pub drained: Notify,
}

impl ConnShared {
    /// Queues a frame that answers no request (a notification, a
    /// handshake reply, a four-letter word's text) to go out once `zxid`
    /// is durable. Never blocks: this runs under the tree lock.
    pub fn send(&self, frame: Bytes, zxid: i64) {
        self.queue(frame, zxid, None);
    }

    /// Queues the reply to a request (see [`ConnShared::send`]).
    pub fn answer(&self, frame: Bytes, zxid: i64, request: Answer) {
        self.queue(frame, zxid, Some(request));
    }

    fn queue(&self, frame: Bytes, zxid: i64, answer: Option<Answer>) {
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
        self.outbox.push(Outbound::Frame(frame, zxid, answer));
    }

    pub fn close(&self) {
        self.outbox.push(Outbound::Close);
        self.closed.cancel();
    }

    /// Bytes queued and not yet written to the socket.
    pub fn queued(&self) -> Arc<AtomicUsize> {
        self.queued.clone()
    }
}

/// The per-connection state the connection's reader owns once the
/// handshake has established a session.
pub struct Client {
    pub conn: Arc<ConnShared>,
    pub session_id: i64,
    pub auth: Vec<Id>,
    pub live: Arc<Liveness>,
    /// The request being carried out (requests are carried out one at a
    /// time, in order, by the connection's reader).
    pub(crate) request: Answer,
}

impl Client {
    /// Queues the reply to the request being carried out.
    pub(crate) fn reply(&self, frame: Bytes, zxid: i64) {
        self.conn.answer(frame, zxid, self.request);
    }
}

/// Every open connection, and how many each client address holds.
pub(crate) struct Registry {
    /// Lock order: last (see [`crate::lock`]). `per_ip` is only ever taken
    /// alone.
    conns: lock::Mutex<HashMap<ConnId, Arc<ConnShared>>>,
    per_ip: parking_lot::Mutex<HashMap<IpAddr, usize>>,
    next: AtomicU64,
    limit: usize,
    /// The server's count of frames sent, which each connection adds to.
    packets_sent: Arc<AtomicU64>,
}

impl Registry {
    pub(crate) fn new(limit_per_ip: usize, packets_sent: Arc<AtomicU64>) -> Self {
        Registry {
            conns: lock::Mutex::new(Level::Connections, HashMap::new()),
            per_ip: parking_lot::Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            limit: limit_per_ip,
            packets_sent,
        }
    }

    /// Admits a connection, or refuses it when its IP is at the limit.
    pub(crate) fn register(&self, peer: SocketAddr) -> Option<Arc<ConnShared>> {
        {
            let mut per_ip = self.per_ip.lock();
            let n = per_ip.entry(peer.ip()).or_insert(0);
            if self.limit > 0 && *n >= self.limit {
                return None;
            }
            *n += 1;
        }
        let conn = Arc::new(ConnShared {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            peer,
            outbox: Outbox::default(),
            queued: Arc::new(AtomicUsize::new(0)),
            closed: CancellationToken::new(),
            session_id: AtomicI64::new(0),
            timeout_ms: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            global_sent: self.packets_sent.clone(),
            last_zxid: AtomicI64::new(0),
            last_cxid: AtomicI64::new(0),
            established: SystemTime::now(),
            dropped: AtomicU64::new(0),
            over_cap: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            drained: Notify::new(),
        });
        self.conns.lock().insert(conn.id, conn.clone());
        Some(conn)
    }

    /// Gives a connection's per-IP slot back, once its socket is closed.
    /// Freeing it earlier (when the reader stops) let a client that never
    /// reads hold any number of open sockets past the limit. Until then it
    /// is listed (`srvr`, `cons`) as the open socket it is.
    pub(crate) fn release(&self, conn: &ConnShared) {
        self.conns.lock().remove(&conn.id);
        let mut per_ip = self.per_ip.lock();
        if let Some(n) = per_ip.get_mut(&conn.peer.ip()) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&conn.peer.ip());
            }
        }
    }

    pub(crate) fn get(&self, id: ConnId) -> Option<Arc<ConnShared>> {
        self.conns.lock().get(&id).cloned()
    }

    pub(crate) fn all(&self) -> Vec<Arc<ConnShared>> {
        self.conns.lock().values().cloned().collect()
    }

    /// Runs `f` with the table locked: delivering a batch of notifications
    /// takes the lock once, not once per event.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&HashMap<ConnId, Arc<ConnShared>>) -> R) -> R {
        f(&self.conns.lock())
    }
}

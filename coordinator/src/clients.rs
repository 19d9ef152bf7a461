//! The connections the server holds open, and what each shares with the
//! rest of the server: its outbound queue, its counters, its session. The
//! sockets themselves are served by [`crate::conn`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use zk_wire::records::Id;

use crate::conn_id::ConnId;
use crate::lock::{self, Level};
use crate::session::{Liveness, SessionId};
use crate::stats::RequestKind;

/// A connection's outbound queue holds at most this many bytes; a client
/// that stops reading is disconnected rather than allowed to grow the
/// server's memory without bound. Across connections, the server's
/// `global_queued_bytes_limit` bounds the total (see [`Registry::shed_unread`]).
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// A connection whose writer has waited this long for its socket to take
/// a byte is not reading. Past the global budget of queued bytes, such
/// connections are closed, those holding the most first; one whose client
/// reads, however slowly, is never closed for it. Long enough for a
/// client's pause (a collection, a slow consumer) not to count, short
/// enough that the budget is exceeded only briefly.
pub(crate) const STALLED_AFTER: Duration = Duration::from_secs(2);

pub enum Outbound {
    Frame(Frame),
    /// Flush what is queued, then close the socket.
    Close,
}

/// A frame on its way to the socket.
pub struct Frame {
    pub bytes: Bytes,
    /// The zxid that must be durable before the frame may be sent: the
    /// state it reflects.
    pub durable_at: i64,
    /// For the reply to a request, the request it answers.
    pub answer: Option<Answer>,
}

/// Why the server closes a connection without flushing its queue.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unread {
    /// It queued more than [`MAX_QUEUED_BYTES`].
    OverConnectionLimit,
    /// The server was over its global budget and this connection, not
    /// reading, held the most.
    OverGlobalBudget,
}

/// A connection's outbound queue, drained by its writer. A deque behind a
/// mutex rather than a channel: a channel allocates its first block of
/// slots (over 2 KiB) when it is made, for every connection, idle or not,
/// and that was a third of what an idle session cost; the deque allocates
/// when something is queued, and the writer gives it back once drained.
/// The mutex is a leaf: nothing else is ever taken while it is held, so it
/// has no place in the lock order.
///
/// Bytes are charged to the connection and to the server as a frame is
/// queued, under the queue's mutex, and once the queue is shut (the
/// connection is ending) nothing more is queued or charged: so what is
/// still charged when the connection ends is exactly what it never wrote,
/// and can be given back.
#[derive(Default)]
pub(crate) struct Outbox {
    queue: parking_lot::Mutex<Queue>,
    ready: Notify,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// Nothing more is queued; the writer is told to close.
    shut: bool,
}

impl Outbox {
    /// Queues `item` and charges `bytes` for it, unless the queue is shut
    /// or `charge` refuses (the connection's limit).
    fn push(&self, item: Outbound, charge: impl FnOnce() -> bool) -> bool {
        let mut q = self.queue.lock();
        if q.shut || !charge() {
            return false;
        }
        q.items.push_back(item);
        drop(q);
        self.ready.notify_one();
        true
    }

    /// Drops what is queued and queues nothing more: the writer sees a
    /// Close next.
    fn shut(&self) {
        let dropped = {
            let mut q = self.queue.lock();
            q.shut = true;
            std::mem::take(&mut q.items)
        };
        // Freed outside the lock.
        drop(dropped);
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
        let mut q = self.queue.lock();
        q.items.pop_front().or_else(|| q.shut.then_some(Outbound::Close))
    }

    /// Frees the queue's memory if nothing is queued; true if so.
    pub(crate) fn release_if_empty(&self) -> bool {
        let mut q = self.queue.lock();
        if !q.items.is_empty() {
            return false;
        }
        if q.items.capacity() > 0 {
            q.items = VecDeque::new();
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
    /// Bytes queued and not yet written to the socket.
    queued: AtomicUsize,
    /// The server's totals, which each connection adds to.
    totals: Arc<Totals>,
    /// Cancelled when the server closes the connection (session expired or
    /// moved, shutdown, slow consumer).
    pub closed: CancellationToken,
    pub session_id: AtomicI64,
    pub timeout_ms: AtomicU64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub last_zxid: AtomicI64,
    pub last_cxid: AtomicI64,
    pub established: SystemTime,
    /// Frames not queued because the connection was condemned: counted, and
    /// logged once when the connection ends (a watch storm towards a dead
    /// client must not become a log storm).
    pub dropped: AtomicU64,
    /// The server dropped the connection's queue (see [`Unread`]).
    abandoned: AtomicBool,
    /// Wakes the writer when the queue is dropped, even mid-write.
    pub(crate) abandon: Notify,
    /// The highest zxid a reply queued here waits for. While it is not
    /// durable the connection has a request in progress, which is what
    /// admission control asks of a connection (`conn::wait_for_admission`).
    pub awaiting: AtomicI64,
    /// When the writer began waiting for the socket to take bytes (ms
    /// since `opened`, plus one), or 0 when it is not waiting: how long
    /// the client has not been reading.
    stuck_since: AtomicU64,
    opened: Instant,
    /// Signalled by the writer whenever it has written something, for a
    /// reader that is waiting to be let through admission control.
    pub drained: Notify,
}

/// What every connection adds to.
pub(crate) struct Totals {
    /// Frames queued, the server's `packets_sent`.
    packets_sent: Arc<AtomicU64>,
    /// Bytes queued on all connections and not yet written.
    pub(crate) queued: AtomicUsize,
    /// The server's budget for `queued` (`global_queued_bytes_limit`); 0
    /// for none.
    pub(crate) budget: usize,
    /// Signalled when `queued` passes `budget`.
    pub(crate) over_budget: Notify,
}

impl Totals {
    pub(crate) fn over_budget(&self) -> bool {
        self.budget > 0 && self.queued.load(Ordering::Relaxed) > self.budget
    }
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
        self.awaiting.fetch_max(zxid, Ordering::Relaxed);
        self.queue(frame, zxid, Some(request));
    }

    fn queue(&self, bytes: Bytes, durable_at: i64, answer: Option<Answer>) {
        // A condemned connection's writer stops at the Close it was sent:
        // anything queued after it would never leave, only hold memory.
        if self.closed.is_cancelled() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let n = bytes.len();
        let mut over_cap = false;
        let queued = self.outbox.push(Outbound::Frame(Frame { bytes, durable_at, answer }), || {
            if self.queued.load(Ordering::Relaxed) + n > MAX_QUEUED_BYTES {
                over_cap = true;
                return false;
            }
            self.queued.fetch_add(n, Ordering::Relaxed);
            let total = self.totals.queued.fetch_add(n, Ordering::Relaxed) + n;
            if self.totals.budget > 0 && total > self.totals.budget {
                self.totals.over_budget.notify_one();
            }
            true
        });
        if !queued {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if over_cap {
                self.drop_unread(Unread::OverConnectionLimit);
            }
            return;
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.totals.packets_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Flushes what is queued, then closes.
    pub fn close(&self) {
        self.outbox.push(Outbound::Close, || true);
        self.closed.cancel();
    }

    /// Closes at once, dropping what is queued: its client is not reading
    /// it, and holding it until the write deadline would let a few such
    /// clients hold the server's memory. Logs once why.
    pub(crate) fn drop_unread(&self, why: Unread) {
        if self.abandoned.swap(true, Ordering::Relaxed) {
            return;
        }
        let queued_bytes = self.queued();
        let session = self.session_id.load(Ordering::Relaxed);
        match why {
            Unread::OverConnectionLimit => tracing::warn!(
                conn = self.id, peer = %self.peer, session = %SessionId(session), queued_bytes, limit = MAX_QUEUED_BYTES,
                "closing connection: its client is not reading its replies and they passed the connection's limit"
            ),
            Unread::OverGlobalBudget => tracing::warn!(
                conn = self.id, peer = %self.peer, session = %SessionId(session), queued_bytes,
                total = self.totals.queued.load(Ordering::Relaxed), budget = self.totals.budget,
                "closing connection: the server holds more unread replies than its budget, this client has read nothing for {STALLED_AFTER:?}, and it holds the most"
            ),
        }
        self.closed.cancel();
        self.outbox.shut();
        self.abandon.notify_one();
    }

    /// Whether the server dropped this connection's queue.
    pub(crate) fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Bytes queued and not yet written to the socket.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// The writer wrote `n` queued bytes.
    pub(crate) fn written(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
        self.totals.queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// The connection has ended and its writer is gone: nothing more is
    /// queued, and what was never written is given back to the server's
    /// total.
    pub(crate) fn discard_queue(&self) {
        self.outbox.shut();
        let left = self.queued.swap(0, Ordering::Relaxed);
        self.totals.queued.fetch_sub(left, Ordering::Relaxed);
    }

    /// The writer is waiting for the socket to take bytes (`true`), or has
    /// just written some (`false`).
    pub(crate) fn set_stuck(&self, stuck: bool) {
        let v = if stuck { self.opened.elapsed().as_millis() as u64 + 1 } else { 0 };
        self.stuck_since.store(v, Ordering::Relaxed);
    }

    /// How long the writer has waited for the socket to take a byte.
    pub(crate) fn stuck_for(&self) -> Duration {
        match self.stuck_since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis((self.opened.elapsed().as_millis() as u64 + 1).saturating_sub(since)),
        }
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
    /// Whether that request still counts among the server's requests in
    /// process (see `ops::begin`): until its reply is queued or, for one
    /// that proposes a txn, until the txn is applied, when the log's count
    /// takes it over (`Core::commit`).
    pub(crate) in_process: AtomicBool,
}

impl Client {
    /// Queues the reply to the request being carried out.
    pub(crate) fn reply(&self, frame: Bytes, zxid: i64) {
        self.conn.answer(frame, zxid, self.request);
    }

    /// Takes the request being carried out off the count of requests in
    /// process, once.
    pub(crate) fn done(&self, stats: &crate::stats::Stats) {
        if self.in_process.swap(false, Ordering::Relaxed) {
            stats.request_done();
        }
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
    pub(crate) totals: Arc<Totals>,
}

impl Registry {
    /// `packets_sent` is the server's count of frames sent, which each
    /// connection adds to; `budget` is `global_queued_bytes_limit`.
    pub(crate) fn new(limit_per_ip: usize, packets_sent: Arc<AtomicU64>, budget: usize) -> Self {
        Registry {
            conns: lock::Mutex::new(Level::Connections, HashMap::new()),
            per_ip: parking_lot::Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            limit: limit_per_ip,
            totals: Arc::new(Totals { packets_sent, queued: AtomicUsize::new(0), budget, over_budget: Notify::new() }),
        }
    }

    /// Past the global budget of queued bytes, closes the connections
    /// that are not reading (their writer has waited [`STALLED_AFTER`] for
    /// the socket), those holding the most first, until what the rest
    /// hold fits the budget. A connection whose client reads is never
    /// closed here: its queue drains, and admission control stops reading
    /// its requests while the server is over budget. Returns how many
    /// were closed.
    pub(crate) fn shed_unread(&self) -> usize {
        let budget = self.totals.budget;
        if !self.totals.over_budget() {
            return 0;
        }
        let (mut holding, leaving) = self.with(|conns| {
            let mut holding = Vec::new();
            let mut leaving = 0;
            for c in conns.values() {
                if c.abandoned() {
                    // Already dropped; its bytes go when its task ends.
                    leaving += c.queued();
                } else if c.queued() > 0 {
                    holding.push((c.queued(), c.clone()));
                }
            }
            (holding, leaving)
        });
        holding.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        let mut excess = self.totals.queued.load(Ordering::Relaxed).saturating_sub(leaving).saturating_sub(budget);
        let mut closed = 0;
        for (bytes, c) in holding {
            if excess == 0 {
                break;
            }
            match c.stuck_for() {
                // Its writer is not waiting on the socket: it reads.
                Duration::ZERO => continue,
                // It may not be reading: wait until that is known, rather
                // than close a lighter one ahead of it.
                stuck if stuck < STALLED_AFTER => break,
                _ => {}
            }
            c.drop_unread(Unread::OverGlobalBudget);
            excess = excess.saturating_sub(bytes);
            closed += 1;
        }
        closed
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
            queued: AtomicUsize::new(0),
            totals: self.totals.clone(),
            closed: CancellationToken::new(),
            session_id: AtomicI64::new(0),
            timeout_ms: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            last_zxid: AtomicI64::new(0),
            last_cxid: AtomicI64::new(0),
            established: SystemTime::now(),
            dropped: AtomicU64::new(0),
            abandoned: AtomicBool::new(false),
            abandon: Notify::new(),
            awaiting: AtomicI64::new(0),
            stuck_since: AtomicU64::new(0),
            opened: Instant::now(),
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

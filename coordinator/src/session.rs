//! The session table: ids, passwords, liveness and deadlines.
//!
//! A session outlives its TCP connections: a client that loses its
//! connection reconnects with its session id and password and carries on,
//! as long as it comes back within the timeout. The server expires a session
//! when it has heard nothing from it for the negotiated timeout, rounded up
//! to the next expiry step. That rounding never shortens the timeout, which
//! is what lets a client that has heard nothing for 2/3 of it (and so
//! considers itself disconnected) step down before the server hands its
//! ephemeral nodes to anyone else.
//!
//! ZooKeeper's expiry queue rounds up to the next *tick* (2 s by default),
//! so a dead client's session ends anywhere between the timeout and the
//! timeout plus a tick. The step here is the tick or [`EXPIRY_STEP`],
//! whichever is shorter: a crashed leader's successor waits for the
//! timeout, not for up to a tick more. Nothing a client can see depends on
//! the step except how soon after its timeout a dead session goes.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

use crate::conn_id::ConnId;

/// A session id as ZooKeeper prints it in logs, four-letter words and
/// admin output: `0x`, then lowercase hex with no padding, a negative id as
/// its 64-bit two's complement (Java's `"0x" + Long.toHexString(id)`).
///
/// Ids stay `i64` in the table, the txns and the tree (an ephemeral's
/// owner is one): that is what the wire and the log carry. This type is how
/// an id is *shown*, so every place that prints one prints it the same way
/// and none spells the format out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub i64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Rust's `{:x}` on a signed integer prints its two's complement,
        // as Java's toHexString does.
        write!(f, "{:#x}", self.0)
    }
}

/// The longest expiry step: how late after its timeout a silent session
/// may end, at most.
pub const EXPIRY_STEP: Duration = Duration::from_millis(100);

/// Liveness shared between the session table and the connection serving it,
/// so a packet costs one atomic store, not a lock.
#[derive(Debug)]
pub struct Liveness {
    /// The table's epoch, copied here so that touching needs no lock.
    epoch: Instant,
    /// Milliseconds since the table's epoch when the client was last heard.
    last_heard: AtomicU64,
    /// The connection allowed to act for the session, or [`ENDED`] once the
    /// session is closing. Changed under the session table's lock; read by
    /// the committer under the tree lock (see [`Liveness::check`]).
    served_by: AtomicU64,
}

/// `served_by` of a session that is closing or expired.
const ENDED: u64 = u64::MAX;

impl Liveness {
    /// The client was heard from now: its deadline moves.
    pub fn touch(&self) {
        self.last_heard.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// From now on only `conn` may act for the session.
    pub fn attach(&self, conn: ConnId) {
        // A session that has ended stays ended: a late reattach (refused
        // anyway by the table) must not revive it.
        let _ = self.served_by.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| (c != ENDED).then_some(conn));
    }

    /// The session is closing: no request of it may be applied any more.
    pub fn end(&self) {
        self.served_by.store(ENDED, Ordering::SeqCst);
    }

    /// Whether a request that arrived on `conn` may still act for the
    /// session. The committer calls this under the tree's write lock, after
    /// the txn is prepared and before it is applied. A request read from
    /// the socket before the session was closed (by expiry, or by a
    /// closeSession from another connection) or moved to another connection
    /// may reach the committer afterwards; checking when the request was
    /// read would let it through. Because `end` and `attach` happen before
    /// the closeSession txn takes the tree lock, every txn ordered after
    /// that txn sees them: a closed session can never gain an ephemeral.
    ///
    /// The errors are ZooKeeper's: SessionExpired for a session that has
    /// ended, SessionMoved for one another connection now serves. Either
    /// way the connection that sent it has been closed, so, as in
    /// ZooKeeper, the client never sees the answer.
    pub fn check(&self, conn: ConnId) -> Result<(), zk_wire::ErrorCode> {
        match self.served_by.load(Ordering::SeqCst) {
            c if c == conn => Ok(()),
            ENDED => Err(zk_wire::ErrorCode::SessionExpired),
            _ => Err(zk_wire::ErrorCode::SessionMoved),
        }
    }
}

#[derive(Debug)]
pub struct Session {
    pub id: i64,
    pub timeout: Duration,
    pub live: Arc<Liveness>,
    /// The connection currently serving it, if any.
    pub conn: Option<ConnId>,
    /// closeSession was accepted: no new requests, no reattach.
    pub closing: bool,
}

#[derive(Debug)]
pub struct Sessions {
    map: HashMap<i64, Session>,
    next_id: i64,
    secret: [u8; 16],
    epoch: Instant,
    /// Deadlines are rounded up to a multiple of this, so one expiry pass
    /// per step is exact.
    step_ms: u64,
}

/// The password a client must present to reattach: derived from the session
/// id and a per-server secret, so it never has to be stored (and survives a
/// restart once the secret is kept in the data dir).
pub fn password(secret: &[u8; 16], session_id: i64) -> [u8; 16] {
    let mut h = Sha1::new();
    h.update(secret);
    h.update(session_id.to_be_bytes());
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

impl Sessions {
    pub fn new(secret: [u8; 16], tick: Duration) -> Self {
        // ZooKeeper's scheme: milliseconds since the Unix epoch in the middle
        // bits, the server id (0 here) in the top byte, then counting up.
        // Ids stay unique across restarts without being stored.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(1);
        let next_id = (((now_ms << 24) as u64) >> 8) as i64;
        Sessions {
            map: HashMap::new(),
            next_id: next_id.max(1),
            secret,
            epoch: Instant::now(),
            step_ms: tick.min(EXPIRY_STEP).as_millis().max(1) as u64,
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn password(&self, id: i64) -> [u8; 16] {
        password(&self.secret, id)
    }

    /// Opens a new session with an already negotiated timeout.
    pub fn open(&mut self, timeout: Duration) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.insert(id, timeout);
        id
    }

    /// Registers a session under a known id (a new one, or one recovered
    /// from the log).
    pub fn insert(&mut self, id: i64, timeout: Duration) {
        // No connection serves a new or recovered session until a handshake
        // attaches one (0 is never a connection id).
        let live = Arc::new(Liveness {
            epoch: self.epoch,
            last_heard: AtomicU64::new(self.now_ms()),
            served_by: AtomicU64::new(0),
        });
        self.map.insert(id, Session { id, timeout, live, conn: None, closing: false });
        if id >= self.next_id {
            self.next_id = id + 1;
        }
    }

    pub fn get(&self, id: i64) -> Option<&Session> {
        self.map.get(&id)
    }

    pub fn get_mut(&mut self, id: i64) -> Option<&mut Session> {
        self.map.get_mut(&id)
    }

    pub fn remove(&mut self, id: i64) -> Option<Session> {
        self.map.remove(&id)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.map.values()
    }

    /// Sessions whose deadline has passed and that are not already closing.
    pub fn expired(&self) -> Vec<i64> {
        let now = self.now_ms();
        self.map.values().filter(|s| !s.closing && now >= self.deadline(s)).map(|s| s.id).collect()
    }

    /// Last heard + timeout, rounded up to the next step boundary.
    fn deadline(&self, s: &Session) -> u64 {
        let t = s.live.last_heard.load(Ordering::Relaxed) + s.timeout.as_millis() as u64;
        (t / self.step_ms + 1) * self.step_ms
    }

    /// How long until the next step boundary: when the expiry pass runs.
    pub fn until_next_step(&self) -> Duration {
        let now = self.now_ms();
        Duration::from_millis((now / self.step_ms + 1) * self.step_ms - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As ZooKeeper prints ids: `"0x" + Long.toHexString(id)`, so no
    /// padding, and a negative id (a server id of 128 or more in the top
    /// byte) as its two's complement.
    #[test]
    fn a_session_id_prints_as_zookeeper_prints_it() {
        assert_eq!(SessionId(0).to_string(), "0x0");
        assert_eq!(SessionId(0x1000_0a2b_3c4d_0001).to_string(), "0x10000a2b3c4d0001");
        assert_eq!(SessionId(-1).to_string(), "0xffffffffffffffff");
        assert_eq!(SessionId(i64::MIN).to_string(), "0x8000000000000000");
    }

    #[test]
    fn passwords_are_per_session_and_stable() {
        let s = [7u8; 16];
        assert_eq!(password(&s, 1), password(&s, 1));
        assert_ne!(password(&s, 1), password(&s, 2));
        assert_ne!(password(&s, 1), password(&[8u8; 16], 1));
    }

    #[test]
    fn only_the_attached_connection_of_a_live_session_may_act() {
        let mut t = Sessions::new([0; 16], Duration::from_millis(50));
        let id = t.open(Duration::from_secs(1));
        let live = t.get(id).map(|s| s.live.clone()).expect("the session");
        assert_eq!(live.check(1), Err(zk_wire::ErrorCode::SessionMoved), "no connection attached yet");
        live.attach(1);
        assert_eq!(live.check(1), Ok(()));
        live.attach(2);
        assert_eq!(live.check(1), Err(zk_wire::ErrorCode::SessionMoved));
        assert_eq!(live.check(2), Ok(()));
        live.end();
        assert_eq!(live.check(2), Err(zk_wire::ErrorCode::SessionExpired));
        // An ended session stays ended, whoever attaches.
        live.attach(3);
        assert_eq!(live.check(3), Err(zk_wire::ErrorCode::SessionExpired));
    }

    #[test]
    fn expiry_never_comes_before_the_timeout() {
        let mut t = Sessions::new([0; 16], Duration::from_millis(50));
        let id = t.open(Duration::from_millis(200));
        assert!(t.expired().is_empty());
        std::thread::sleep(Duration::from_millis(150));
        assert!(t.expired().is_empty());
        std::thread::sleep(Duration::from_millis(110));
        assert_eq!(t.expired(), vec![id]);
    }
}

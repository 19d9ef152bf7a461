//! The client's connection state as a `watch` channel.
//!
//! zookeeper-async reports states to listeners from its I/O task; a `watch`
//! turns that into something any task can `await`, and always holds the
//! latest state, so a recipe that looks late still sees where things stand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use zookeeper_async::{ZkState, ZooKeeper};

/// What a recipe needs to know about the session, in Curator's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// Connected; the session is live.
    Live,
    /// Connection lost; the session may or may not survive. Stop acting on
    /// anything the session holds (locks, leadership).
    Suspended,
    /// The session ended (expired or closed); its ephemerals are gone.
    Lost,
}

impl Session {
    #[allow(deprecated)] // NotConnected is how zookeeper-async 5 reports an expired handshake.
    pub fn from_state(s: ZkState) -> Session {
        match s {
            ZkState::Connected | ZkState::ConnectedReadOnly => Session::Live,
            ZkState::Connecting | ZkState::Associating => Session::Suspended,
            ZkState::NotConnected | ZkState::Closed | ZkState::AuthFailed => Session::Lost,
        }
    }
}

/// A connected client with its session state: what every recipe takes.
/// Cheap to clone; one state listener per connection, however many recipes
/// use it.
#[derive(Clone)]
pub struct Client {
    pub zk: Arc<ZooKeeper>,
    states: watch::Receiver<Session>,
    /// Counts the client's connection state changes, as they happen (the
    /// client library's listener runs before anything else hears of them).
    /// An answer whose request started at one count and ended at another
    /// crossed a reconnect: see [`Client::epoch`].
    changes: Arc<AtomicU64>,
}

impl Client {
    /// Connects, failing with a clear error when no server answers within
    /// `connect_timeout`.
    pub async fn connect(
        connect_string: &str,
        session_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Client, ConnectError> {
        let zk = tokio::time::timeout(connect_timeout, ZooKeeper::connect(connect_string, session_timeout, |_| {}))
            .await
            .map_err(|_| ConnectError::Timeout { addr: connect_string.to_string(), after: connect_timeout })?
            .map_err(|e| ConnectError::Failed { addr: connect_string.to_string(), reason: format!("{e:?}") })?;
        Ok(Client::new(zk))
    }

    /// Connects and authenticates with `auth` (scheme, credentials), which
    /// is added again after every reconnect: see [`Client::authenticated`].
    pub async fn connect_authenticated(
        connect_string: &str,
        session_timeout: Duration,
        connect_timeout: Duration,
        auth: Vec<(String, Vec<u8>)>,
    ) -> Result<Client, ConnectError> {
        let failed = |reason: String| ConnectError::Failed { addr: connect_string.to_string(), reason };
        let zk = tokio::time::timeout(connect_timeout, ZooKeeper::connect(connect_string, session_timeout, |_| {}))
            .await
            .map_err(|_| ConnectError::Timeout { addr: connect_string.to_string(), after: connect_timeout })?
            .map_err(|e| failed(format!("{e:?}")))?;
        tokio::time::timeout(connect_timeout, Client::authenticated(zk, auth))
            .await
            .map_err(|_| ConnectError::Timeout { addr: connect_string.to_string(), after: connect_timeout })?
            .map_err(|e| failed(format!("authentication: {e:?}")))
    }

    /// Wraps a client that has just connected, authenticating it with each
    /// `(scheme, credentials)` pair now and again after every reconnect.
    ///
    /// A server keeps authentication per *connection*, not per session:
    /// when the client reconnects, even to the same session, the new
    /// connection starts anonymous. The Java client re-sends its auth data
    /// first thing on every connection; zookeeper-async does not, so this
    /// does it: on every return to `Connected` the auth packets go out
    /// before the state turns `Live`. Recipes wait for `Live` before they
    /// act after a reconnect, so they do not run anonymous. (A request some
    /// other task sends in the moment between the reconnect and the auth
    /// reply can still be refused with NOAUTH: that is the price of a
    /// client that does not queue auth ahead of everything else.)
    pub async fn authenticated(
        zk: ZooKeeper,
        auth: Vec<(String, Vec<u8>)>,
    ) -> Result<Client, zookeeper_async::ZkError> {
        if auth.is_empty() {
            return Ok(Client::new(zk));
        }
        let zk = Arc::new(zk);
        for (scheme, credentials) in &auth {
            zk.add_auth(scheme, credentials.clone()).await?;
        }
        let (raw_tx, mut raw) = watch::channel(ZkState::Connected);
        let changes = Arc::new(AtomicU64::new(0));
        let counted = changes.clone();
        zk.add_listener(move |s| {
            counted.fetch_add(1, Ordering::SeqCst);
            raw_tx.send_replace(s);
        });
        let (tx, states) = watch::channel(Session::Live);
        // Weak: the listener lives inside the client; a strong reference
        // here would keep the client (and this task) alive forever.
        let weak = Arc::downgrade(&zk);
        tokio::spawn(async move {
            while raw.changed().await.is_ok() {
                let state = Session::from_state(*raw.borrow_and_update());
                if state == Session::Live {
                    let Some(zk) = weak.upgrade() else { return };
                    if !reauthenticate(&zk, &auth, &raw).await {
                        // The connection changed meanwhile: the next state
                        // decides (a new `Connected` authenticates again).
                        continue;
                    }
                }
                tx.send_replace(state);
            }
        });
        Ok(Client { zk, states, changes })
    }

    /// Wraps a client that has just connected.
    pub fn new(zk: ZooKeeper) -> Client {
        let (tx, states) = watch::channel(Session::Live);
        let changes = Arc::new(AtomicU64::new(0));
        let counted = changes.clone();
        zk.add_listener(move |s| {
            counted.fetch_add(1, Ordering::SeqCst);
            tx.send_replace(Session::from_state(s));
        });
        Client { zk: Arc::new(zk), states, changes }
    }

    /// Which connection the client is on: it changes with every
    /// disconnect and reconnect. A NOAUTH to a request that ran while it
    /// changed may be the new connection answering before the re-added
    /// auth (it starts anonymous); one that ran within a single epoch is
    /// the ACL speaking.
    pub fn epoch(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// The session state, now and as it changes.
    pub fn states(&self) -> watch::Receiver<Session> {
        self.states.clone()
    }

    pub fn is_live(&self) -> bool {
        *self.states.borrow() == Session::Live
    }

    /// Waits until the session is live again (after a reconnect or a new
    /// session), or `limit` passes.
    pub async fn wait_live(&self, limit: Duration) -> bool {
        let mut states = self.states();
        tokio::time::timeout(limit, states.wait_for(|s| *s == Session::Live)).await.map(|r| r.is_ok()).unwrap_or(false)
    }

    /// Runs `op` as this client's identity, not as the anonymous one a
    /// reconnect starts with: each try waits for the session to be live
    /// (its auth re-added, see [`Client::authenticated`]), and an answer
    /// that `refused` it (NOAUTH) is believed only when it is the ACL
    /// speaking. Returns the first answer that is not a refusal, or the
    /// refusal once it has come twice on a connection that did not change
    /// while the request ran, after [`MAX_TRIES_AS_OURSELVES`] tries, or at
    /// `deadline`.
    ///
    /// Why twice: the connection counter ([`Client::epoch`]) moves the
    /// instant the client library reports a change, but the live state
    /// follows a moment later, from the task that re-adds the auth. A
    /// reconnect that completes inside that moment looks steady to a
    /// request that read the counter after it, and is refused anonymously
    /// once; the ACL refuses every time. Found twice, one in system-a (a
    /// Submit's create refused right after the coordinator restarted, the
    /// coordinator-restart drill) and one in system-b (a task failed for good
    /// under load when two of its retries landed in re-auth windows,
    /// `attack::reconnects_mid_work_fail_no_task`).
    pub async fn as_ourselves<T, E, F>(
        &self,
        deadline: tokio::time::Instant,
        refused: impl Fn(&E) -> bool,
        op: impl Fn() -> F,
    ) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
    {
        let (mut steady_refusals, mut tries) = (0, 0);
        loop {
            self.wait_live(deadline.saturating_duration_since(tokio::time::Instant::now())).await;
            let epoch = self.epoch();
            let answer = op().await;
            tries += 1;
            match answer {
                Err(e) if refused(&e) => {
                    steady_refusals += u32::from(self.epoch() == epoch);
                    let out_of_time = tokio::time::Instant::now() >= deadline;
                    if steady_refusals >= 2 || tries >= MAX_TRIES_AS_OURSELVES || out_of_time {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }
}

/// The `refused` of [`Client::as_ourselves`] for a plain request: its
/// answer is NOAUTH.
pub fn is_noauth(e: &zookeeper_async::ZkError) -> bool {
    matches!(e, zookeeper_async::ZkError::NoAuth)
}

/// The most tries [`Client::as_ourselves`] gives a request that keeps
/// being refused, reconnects included: a client that reconnects for ever
/// must not hold a caller for ever.
pub const MAX_TRIES_AS_OURSELVES: u32 = 10;

/// Adds every identity to the connection that just came up, and keeps
/// trying while that connection lasts; false once it is gone (the state
/// moved on). An add can fail with the connection still up: zookeeper-async
/// matches replies to requests in order, and a request some other task
/// sent anonymously in the same instant gets NOAUTH, which can come back
/// as the add's answer. Giving up then left the client anonymous and its
/// state short of `Live` for good (tests/tests/acl.rs,
/// `identity_survives_reconnects_under_load_*`). Adding an identity the
/// connection already has is harmless, so trying again is safe.
async fn reauthenticate(zk: &ZooKeeper, auth: &[(String, Vec<u8>)], raw: &watch::Receiver<ZkState>) -> bool {
    let mut pause = Duration::from_millis(20);
    loop {
        let mut failed = None;
        for (scheme, credentials) in auth {
            if let Err(e) = zk.add_auth(scheme, credentials.clone()).await {
                failed = Some(e);
                break;
            }
        }
        if raw.has_changed().unwrap_or(true) {
            return false;
        }
        let Some(e) = failed else { return true };
        tracing::warn!("re-authentication after a reconnect failed ({e:?}); trying again on the same connection");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no ZooKeeper server answered at {addr} within {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("cannot connect to {addr}: {reason}")]
    Failed { addr: String, reason: String },
}

/// A `watch` that turns `true` the first time the session stops being live
/// (suspended or lost), and stays `true`: the "you may no longer hold it"
/// signal for a lock holder or a leader.
pub fn lost_signal(mut states: watch::Receiver<Session>) -> watch::Receiver<bool> {
    let already = *states.borrow_and_update() != Session::Live;
    let (tx, rx) = watch::channel(already);
    if !already {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = states.changed() => {
                        if changed.is_err() || *states.borrow_and_update() != Session::Live {
                            tx.send_replace(true);
                            return;
                        }
                    }
                    // Nobody listens any more: stop.
                    _ = tx.closed() => return,
                }
            }
        });
    }
    rx
}

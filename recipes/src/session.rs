//! The client's connection state as a `watch` channel.
//!
//! zookeeper-async reports states to listeners from its I/O task; a `watch`
//! turns that into something any task can `await`, and always holds the
//! latest state, so a recipe that looks late still sees where things stand.

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

    /// Wraps a client that has just connected.
    pub fn new(zk: ZooKeeper) -> Client {
        let (tx, states) = watch::channel(Session::Live);
        zk.add_listener(move |s| {
            tx.send_replace(Session::from_state(s));
        });
        Client { zk: Arc::new(zk), states }
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

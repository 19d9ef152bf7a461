//! "Be first in line": the shared core of the lock and the election.
//!
//! Each candidate is an ephemeral-sequential child of the queue's node; the
//! lowest sequence number is first. A waiter watches only the candidate
//! just before it (not the parent's children), so a release wakes exactly
//! one waiter instead of the whole herd.
//!
//! A create whose reply is lost to a connection drop may still have
//! happened. Names are therefore *protected*: they start with `_c_<uuid>-`,
//! unique to this attempt, so after a connection loss the candidate looks
//! for its own name among the children before creating again, and never
//! leaves an orphan that would block the queue until the session ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zookeeper_async::{Acl, CreateMode, ZkError};

use crate::join;
use crate::retry::{self, RetryPolicy};
use crate::session::{Client, Session};

/// How long a candidate waits out a connection loss while creating or
/// checking its place before giving up.
const RECONNECT_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// Full path of our node.
    pub path: String,
    /// Its name within the queue.
    pub name: String,
    /// The transaction that created it: unique and increasing across all
    /// candidates ever, so it serves as a fencing token.
    pub czxid: i64,
    /// What it holds (who we are), written back unchanged by [`confirm`].
    pub data: Vec<u8>,
}

/// Predecessor watches that have fired in this process, over every queue.
/// Without a herd, each release wakes exactly the one waiter behind it, so
/// this grows by one per handoff; the benchmark reports it per release.
static WATCH_EVENTS: AtomicU64 = AtomicU64::new(0);

/// How many predecessor watches have fired in this process so far.
pub fn watch_events() -> u64 {
    WATCH_EVENTS.load(Ordering::Relaxed)
}

/// ZooKeeper's `%010d` suffix; names without one sort last.
pub fn sequence(name: &str) -> u64 {
    name.len().checked_sub(10).and_then(|at| name.get(at..)).and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)
}

/// Children of `dir` in queue order.
pub(crate) async fn ordered(client: &Client, dir: &str) -> Result<Vec<String>, ZkError> {
    let mut children = match client.zk.get_children(dir, false).await {
        Ok(c) => c,
        Err(ZkError::NoNode) => vec![],
        Err(e) => return Err(e),
    };
    children.sort_by_key(|c| sequence(c));
    Ok(children)
}

/// Joins the queue under `dir` with `data` (who we are); our node, and
/// `dir` itself if it is missing, get `acl`.
pub(crate) async fn enter(
    client: &Client,
    dir: &str,
    suffix: &str,
    data: &[u8],
    acl: &[Acl],
) -> Result<Candidate, ZkError> {
    let guid = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("_c_{guid}-");
    let deadline = Instant::now() + RECONNECT_LIMIT;
    loop {
        // create2: the reply carries the node's stat, so its czxid (the
        // fencing token) comes with the create instead of costing an
        // `exists` after it, one round trip less per lock and per
        // candidacy (tests/tests/round_trips.rs counts them).
        let created = client
            .zk
            .create2(
                &join(dir, &format!("{prefix}{suffix}")),
                data.to_vec(),
                acl.to_vec(),
                CreateMode::EphemeralSequential,
            )
            .await;
        let (path, czxid) = match created {
            Ok((path, stat)) => (path, stat.czxid),
            // The queue's node is made on first use only: creating the
            // path on every entry would cost a failed create (a logged
            // transaction on the server) per level, per acquisition.
            Err(ZkError::NoNode) if Instant::now() < deadline => {
                retry::ensure_path(&client.zk, dir, acl, deadline).await?;
                continue;
            }
            Err(ZkError::ConnectionLoss) | Err(ZkError::OperationTimeout) => {
                // Did it happen? Look for our protected name once we can.
                if !client.wait_live(deadline.saturating_duration_since(Instant::now())).await {
                    return Err(ZkError::ConnectionLoss);
                }
                // The listing is a read: retried through a second loss
                // (an election right after a reconnect) like any other.
                let listed = retry::retry(&RetryPolicy::default(), deadline, |_| ordered(client, dir)).await?;
                let Some(name) = listed.into_iter().find(|c| c.starts_with(&prefix)) else { continue };
                // Found by name, so its stat is read separately.
                let path = join(dir, &name);
                let stat = retry::retry(&RetryPolicy::default(), deadline, |_| client.zk.exists(&path, false)).await?;
                match stat {
                    Some(stat) => (path, stat.czxid),
                    // Gone already: our session ended between create and read.
                    None => return Err(ZkError::SessionExpired),
                }
            }
            Err(e) => return Err(e),
        };
        let name = path.rsplit('/').next().unwrap_or_default().to_string();
        return Ok(Candidate { path, name, czxid, data: data.to_vec() });
    }
}

/// When a wait for our turn gives up. It gives up only between requests,
/// never with one of ours in flight: a request dropped before its answer
/// leaves an answer nobody reads (the ZooKeeper client logs it as an
/// error), and a write dropped that way may still be applied.
#[derive(Clone, Copy, Default)]
pub(crate) struct GiveUp<'a> {
    /// A lock's acquire timeout.
    pub deadline: Option<Instant>,
    /// A stop asked of the process: a candidate shutting down.
    pub stop: Option<&'a CancellationToken>,
}

impl GiveUp<'_> {
    fn stop_asked(&self) -> bool {
        self.stop.is_some_and(|s| s.is_cancelled())
    }

    /// Resolves when the deadline passes or the stop is asked; never if
    /// there is neither.
    async fn reached(&self) {
        let deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let stop = async {
            match self.stop {
                Some(s) => s.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = deadline => {}
            _ = stop => {}
        }
    }
}

/// Waits until `me` is first in its queue. `Ok(false)` when `deadline`
/// passes first. A session that stops being live fails the wait: whatever
/// place we had may be gone, and the caller decides whether to re-enter.
pub(crate) async fn wait_first(
    client: &Client,
    dir: &str,
    me: &Candidate,
    deadline: Option<Instant>,
) -> Result<bool, ZkError> {
    wait_first_noting(client, dir, me, GiveUp { deadline, stop: None }, &mut None).await
}

/// [`wait_first`], giving up as `give_up` says (`Ok(false)`), and noting in `woken` the last time the wait behind a
/// predecessor ended (its node went, or changed, or the connection did), or
/// the predecessor was found gone: once we are first, that is when we
/// learned the one ahead of us had left. Untouched when we were first at
/// once.
pub(crate) async fn wait_first_noting(
    client: &Client,
    dir: &str,
    me: &Candidate,
    give_up: GiveUp<'_>,
    woken: &mut Option<Instant>,
) -> Result<bool, ZkError> {
    let mut states = client.states();
    loop {
        if give_up.stop_asked() {
            return Ok(false);
        }
        if *states.borrow_and_update() == Session::Lost {
            return Err(ZkError::SessionExpired);
        }
        // A connection lost while waiting (an ensemble's election) costs a
        // wait for the reconnect, not our place: the node lives as long as
        // the session, and the loop's first check sees a session lost.
        let queue = match ordered(client, dir).await {
            Ok(q) => q,
            Err(e) if retry::is_retryable(&e) => {
                wait_reconnect(client, give_up).await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(at) = queue.iter().position(|c| *c == me.name) else {
            // Our node is gone: the session that owned it ended.
            return Err(ZkError::SessionExpired);
        };
        if at == 0 {
            return Ok(true);
        }
        let predecessor = join(dir, &queue[at - 1]);
        let (tx, rx) = oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        let present = client
            .zk
            .exists_w(&predecessor, move |_| {
                WATCH_EVENTS.fetch_add(1, Ordering::Relaxed);
                if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(());
                }
            })
            .await;
        let present = match present {
            Ok(p) => p,
            Err(e) if retry::is_retryable(&e) => {
                wait_reconnect(client, give_up).await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if present.is_none() {
            *woken = Some(Instant::now());
            continue; // it left between our listing and the watch: look again
        }
        // Waiting on a watch, nothing in flight: the one place to give up.
        tokio::select! {
            _ = rx => {}
            // zookeeper-async does not re-arm watches after a reconnect, so
            // any state change means: look at the queue again.
            _ = states.changed() => {}
            _ = give_up.reached() => return Ok(false),
        }
        *woken = Some(Instant::now());
    }
}

/// After a lost connection: waits (a second at a time, and not past
/// `deadline`) for the session to be live again, so the caller can look at
/// the queue once more. `ConnectionLoss` once the deadline has passed.
async fn wait_reconnect(client: &Client, give_up: GiveUp<'_>) -> Result<(), ZkError> {
    let limit = match give_up.deadline {
        Some(d) => d.saturating_duration_since(Instant::now()).min(Duration::from_secs(1)),
        None => Duration::from_secs(1),
    };
    if limit.is_zero() {
        return Err(ZkError::ConnectionLoss);
    }
    let live = tokio::select! {
        live = client.wait_live(limit) => live,
        // The caller's loop sees the stop and gives up.
        _ = give_up.reached(), if give_up.stop.is_some() => return Ok(()),
    };
    if !live {
        // Still away: pause briefly so the loop does not spin on a client
        // that answers every request with ConnectionLoss.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Deletes our node, retrying through connection loss: a holder that gives
/// up must not leave a node that blocks everyone until its session ends.
/// Returns once the node is gone (or its session is, which deletes it).
pub(crate) async fn leave(client: &Client, path: &str) {
    let deadline = Instant::now() + RECONNECT_LIMIT;
    loop {
        match client.zk.delete(path, None).await {
            Ok(()) | Err(ZkError::NoNode) | Err(ZkError::SessionExpired) => return,
            Err(e) => {
                if *client.states().borrow() == Session::Lost || Instant::now() > deadline {
                    tracing::warn!(path, "giving up deleting a queue node: {e:?} (its session's end will remove it)");
                    return;
                }
                client.wait_live(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Whether our place is still ours, asked with a write to our own node: it
/// succeeds only while the node exists, that is while the session that
/// created it lives (an ephemeral dies with its session), and a write goes
/// through the ensemble's leader, so no lagging follower can answer it from
/// a past in which we still held. A read could. The data written is the
/// data the node holds, so what others see does not change (a waiter
/// watching the node wakes, finds itself still behind us, and waits on).
/// `Err` only for a connection loss: we cannot know yet.
pub(crate) async fn confirm(client: &Client, me: &Candidate) -> Result<bool, ZkError> {
    match client.zk.set_data(&me.path, me.data.clone(), None).await {
        Ok(_) => Ok(true),
        Err(ZkError::NoNode) | Err(ZkError::SessionExpired) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A signal for a held place: `true` once the session is no longer live.
pub(crate) fn lost(client: &Client) -> watch::Receiver<bool> {
    crate::session::lost_signal(client.states())
}

//! Watch streams: a task's status as it changes, for any number of
//! callers, at a cost that does not grow with the number of calls.
//!
//! zookeeper-async keeps every watcher a read arms (`get_data_w`,
//! `exists_w`) until *the node changes*: not when the caller goes away,
//! not on a reconnect. A Watch that armed its own watcher would leave one
//! behind for every call on a task that never changes again (about 265
//! bytes each: 100k calls grew system-a by 40 MB). So:
//!
//! - [`Watches::watch`] first reads the node without arming anything. A
//!   finished task (or one that cannot be read) is answered from that read
//!   at once, and nothing is left behind.
//! - A pending task is followed by one follower per task, shared by every
//!   stream on it (`follow`): one armed watcher per task at a time,
//!   whatever the number of callers. The follower stays until its watch
//!   fires (the task changed), so a caller that comes and goes again and
//!   again joins the same follower instead of arming another watcher; it
//!   leaves once it fires with nobody listening, or the task is final.
//!   (A reconnect loses the server's watch but not zookeeper-async's
//!   watcher, so each reconnect re-arms and leaves one stale watcher per
//!   followed task, gone when that task changes.)
//! - Streams are limited per caller address and in total
//!   ([`edge::admit_watch`]): over the limit is RESOURCE_EXHAUSTED.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::Stream;
use task_contract::TaskNode;
use tokio::sync::{oneshot, watch};
use tonic::Status;
use zk_recipes::config::Versioned;
use zk_recipes::retry::RetryPolicy;
use zk_recipes::session::{Client, Session};
use zk_recipes::ZkError;

use crate::edge::{self, WatchLimits};
use crate::proto::TaskUpdate;

pub type UpdateStream = Pin<Box<dyn Stream<Item = Result<TaskUpdate, Status>> + Send>>;

/// The followers of pending tasks, by task id.
type Followers = Arc<Mutex<HashMap<String, Arc<watch::Sender<Option<Versioned>>>>>>;

/// Every Watch stream system-a serves.
pub struct Watches {
    client: Client,
    /// `<root>/tasks`.
    tasks: String,
    limits: WatchLimits,
    open: Arc<Mutex<Open>>,
    followers: Followers,
}

/// How many streams are open, in all and by caller address.
#[derive(Default)]
struct Open {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

/// A stream's place among the open ones, given back when it is dropped
/// (the stream ended, or the caller went away).
struct Place {
    open: Arc<Mutex<Open>>,
    peer: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_peer.remove(&self.peer);
            }
        }
    }
}

/// A lock whose holder never panics while holding it; a poisoned one is
/// still consistent (counters and a map, each updated in one step).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Watches {
    pub fn new(client: Client, tasks: String, limits: WatchLimits) -> Watches {
        Watches { client, tasks, limits, open: Default::default(), followers: Default::default() }
    }

    /// Opens a stream of task `id`'s status for the caller at `peer`.
    pub async fn watch(&self, id: String, peer: Option<SocketAddr>) -> Result<UpdateStream, Status> {
        edge::check_watch(&id)?;
        let place = self.admit(peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip()))?;
        let path = zk_recipes::join(&self.tasks, &id);
        let zk = &self.client.zk;
        // A plain read: it arms nothing.
        let read = zk_recipes::retry::retry_for(Duration::from_secs(5), |_| zk.get_data(&path, false)).await;
        let now = match read {
            Ok((data, stat)) => Versioned { data, mzxid: stat.mzxid },
            Err(ZkError::NoNode) => return Err(Status::not_found(format!("no task {id}"))),
            Err(e) => return Err(Status::unavailable(format!("coordination server: {e:?}"))),
        };
        let values = if TaskNode::is_pending(&now.data) {
            follow(&self.client, &self.followers, &id, &path, now)
        } else {
            // Final (or unreadable): this read is the whole stream.
            watch::channel(Some(now)).1
        };
        Ok(Box::pin(updates(id, values, place)))
    }

    fn admit(&self, peer: IpAddr) -> Result<Place, Status> {
        let mut open = lock(&self.open);
        let from_peer = open.by_peer.get(&peer).copied().unwrap_or(0);
        edge::admit_watch(self.limits, open.total, from_peer, peer)?;
        open.total += 1;
        *open.by_peer.entry(peer).or_default() += 1;
        Ok(Place { open: self.open.clone(), peer })
    }
}

/// Joins the follower of the pending task `id`, starting it if there is
/// none. Under the registry's lock, so a follower never leaves while a
/// stream is joining it.
fn follow(
    client: &Client,
    followers: &Followers,
    id: &str,
    path: &str,
    now: Versioned,
) -> watch::Receiver<Option<Versioned>> {
    let mut all = lock(followers);
    if let Some(values) = all.get(id) {
        return values.subscribe();
    }
    let (values, rx) = watch::channel(Some(now));
    let values = Arc::new(values);
    all.insert(id.to_string(), values.clone());
    tokio::spawn(follower(client.clone(), followers.clone(), id.to_string(), path.to_string(), values));
    rx
}

/// Leaves the registry if `values` is still this task's follower and, when
/// `only_if_unwatched`, nobody is listening. Returns whether it left.
fn leave(
    followers: &Followers,
    id: &str,
    values: &Arc<watch::Sender<Option<Versioned>>>,
    only_if_unwatched: bool,
) -> bool {
    let mut all = lock(followers);
    if only_if_unwatched && values.receiver_count() > 0 {
        return false;
    }
    if all.get(id).is_some_and(|v| Arc::ptr_eq(v, values)) {
        all.remove(id);
    }
    true
}

fn once() -> (impl FnOnce(zookeeper_async::WatchedEvent) + Send + 'static, oneshot::Receiver<()>) {
    let (tx, rx) = oneshot::channel();
    (
        move |_| {
            let _ = tx.send(());
        },
        rx,
    )
}

/// Reads the task and arms one watcher, publishes each new value, and
/// waits for the watcher or a reconnect; see the module docs for when it
/// stops.
async fn follower(
    client: Client,
    followers: Followers,
    id: String,
    path: String,
    values: Arc<watch::Sender<Option<Versioned>>>,
) {
    let mut states = client.states();
    let policy = RetryPolicy::default();
    let mut failures = 0u32;
    loop {
        let (notify, fired) = once();
        match client.zk.get_data_w(&path, notify).await {
            Ok((data, stat)) => {
                failures = 0;
                let finished = !TaskNode::is_pending(&data);
                let new = Versioned { data, mzxid: stat.mzxid };
                values.send_if_modified(|cur| {
                    let changed = cur.as_ref().map(|c| c.mzxid) != Some(new.mzxid);
                    if changed {
                        *cur = Some(new);
                    }
                    changed
                });
                if finished {
                    // The watcher just armed stays until the reaper
                    // deletes the node: one per task, not per call.
                    leave(&followers, &id, &values, false);
                    return;
                }
                tokio::select! {
                    _ = fired => {}
                    reconnected = live_again(&mut states) => if !reconnected { leave(&followers, &id, &values, false); return; },
                }
            }
            Err(ZkError::NoNode) => {
                // Reaped: the streams end.
                values.send_replace(None);
                leave(&followers, &id, &values, false);
                return;
            }
            Err(e) => {
                tracing::debug!(task = id, "watch: {e:?}");
                tokio::time::sleep(policy.backoff(failures)).await;
                failures = failures.saturating_add(1);
            }
        }
        if leave(&followers, &id, &values, true) {
            return;
        }
    }
}

/// Waits until the session has gone away and is live again (the server
/// forgot our watch). False if the client is gone for good.
async fn live_again(states: &mut watch::Receiver<Session>) -> bool {
    loop {
        if states.changed().await.is_err() {
            return false;
        }
        if *states.borrow_and_update() != Session::Live {
            return states.wait_for(|s| *s == Session::Live).await.is_ok();
        }
    }
}

/// A task's status stream: each distinct value of its node, ending after
/// a final status (done/failed) or when the node is deleted. It holds the
/// stream's `place` until it is dropped.
fn updates(
    id: String,
    rx: watch::Receiver<Option<Versioned>>,
    place: Place,
) -> impl Stream<Item = Result<TaskUpdate, Status>> + Send {
    futures::stream::unfold((rx, id, false, false, place), |(mut rx, id, seen, finished, place)| async move {
        if finished {
            return None;
        }
        if seen {
            rx.changed().await.ok()?;
        }
        let value = rx.borrow_and_update().clone();
        // Deleted (reaped), or the follower is gone: the stream is over.
        let v = value?;
        let data_json = String::from_utf8_lossy(&v.data).into_owned();
        let (update, last) = match TaskNode::decode(&v.data) {
            Ok(node) => (
                Ok(TaskUpdate { task_id: id.clone(), status: node.status().to_string(), data_json }),
                node.status().is_final(),
            ),
            // The stream ends with the error: what the node says cannot
            // be known, so nothing more can follow.
            Err(e) => {
                let shown: String = data_json.chars().take(200).collect();
                (Err(Status::data_loss(format!("task {id}: {e}: {shown}"))), true)
            }
        };
        Some((update, (rx, id, true, last, place)))
    })
}

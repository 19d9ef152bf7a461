//! A live value backed by a znode, that always converges on the latest data.
//!
//! Watches fire once and carry no data; between the event and the re-read
//! the node may change again, and after a reconnect zookeeper-async has no
//! watch armed at all. So the loop is: read *and* re-arm in one call,
//! publish if the value is new (by `mzxid`, which changes on every write,
//! even one that writes the same bytes at the same version after a
//! delete/create), wait for an event or a reconnect, repeat. A missing
//! node is watched with `exists` until it appears.

use tokio::sync::{oneshot, watch};
use zookeeper_async::ZkError;

use crate::retry::RetryPolicy;
use crate::session::{Client, Session};

/// A value and the transaction that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub data: Vec<u8>,
    pub mzxid: i64,
}

/// Starts following `path`. The receiver holds `None` while the node does
/// not exist. The follower stops when every receiver is dropped.
pub fn watch_data(client: &Client, path: &str) -> watch::Receiver<Option<Versioned>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(follow(client.clone(), path.to_string(), tx));
    rx
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

async fn follow(client: Client, path: String, tx: watch::Sender<Option<Versioned>>) {
    let mut states = client.states();
    let policy = RetryPolicy::default();
    let mut failures = 0u32;
    loop {
        let (notify, fired) = once();
        let read = client.zk.get_data_w(&path, notify).await;
        let armed = match read {
            Ok((data, stat)) => {
                let new = Versioned { data, mzxid: stat.mzxid };
                tx.send_if_modified(|cur| {
                    if cur.as_ref().map(|c| c.mzxid) != Some(new.mzxid) {
                        *cur = Some(new);
                        true
                    } else {
                        false
                    }
                });
                Some(fired)
            }
            Err(ZkError::NoNode) => {
                let (notify, appeared) = once();
                match client.zk.exists_w(&path, notify).await {
                    Ok(Some(_)) => continue, // created in between: read it
                    Ok(None) => {
                        tx.send_if_modified(|cur| cur.take().is_some());
                        Some(appeared)
                    }
                    Err(e) => {
                        tracing::debug!(path, "config watch: {e:?}");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::debug!(path, "config watch: {e:?}");
                None
            }
        };
        // No watch armed (the read failed): read again after a backoff, or
        // at once on reconnect. Waiting for a state change alone would hang
        // on an error that comes with no disconnect (an operation timeout).
        let retry_after = match armed {
            Some(_) => {
                failures = 0;
                None
            }
            None => {
                failures = failures.saturating_add(1);
                Some(policy.backoff(failures - 1))
            }
        };
        tokio::select! {
            _ = async {
                match (armed, retry_after) {
                    (Some(rx), _) => { let _ = rx.await; }
                    (None, Some(wait)) => tokio::time::sleep(wait).await,
                    (None, None) => std::future::pending().await,
                }
            } => {}
            changed = states.changed() => {
                if changed.is_err() {
                    return;
                }
                // Re-read on reaching Live again; ignore the way down.
                if *states.borrow_and_update() != Session::Live {
                    let _ = states.wait_for(|s| *s == Session::Live).await;
                }
            }
            _ = tx.closed() => return,
        }
    }
}

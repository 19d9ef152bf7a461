//! The transactional outbox: a task system-a has accepted reaches RabbitMQ
//! even if the broker is away when it is submitted, or system-a dies
//! before publishing it.
//!
//! Submit records the task in the coordination server before it answers
//! anything: first `<root>/outbox/<id>` (the message to publish), then the
//! task node `<root>/tasks/<id>`. Once both exist the task is accepted:
//! durable on a quorum, whatever happens to this process or the broker.
//! Submit then publishes it at once; a publisher confirm deletes the
//! outbox entry. When the publish fails or its confirm is lost, the entry
//! stays, and [`drain`] (running in every system-a) publishes it again
//! once RabbitMQ is back. That is at-least-once: a message whose confirm
//! was lost may be published twice, and system-b finds the copy's task
//! node already answered (or the task recorded as its entity's last
//! applied one) and acks it as a no-op. Exactly once in effect.
//!
//! Why the outbox entry comes first: zookeeper-async has no `multi`, so
//! the two creates cannot be one transaction. In this order, "the task
//! node exists" implies "its outbox entry was written", so no accepted
//! task can be stranded unpublished. The reverse gap, an outbox entry
//! whose task node was never created (Submit died or gave up between the
//! two creates), is recognised by the drain (no task node) and, once older
//! than any Submit can take, deleted unpublished: that task was never
//! accepted.
//!
//! The directory also holds request records, `<id>.request` (see
//! `submit`, "Idempotency"): the outbox is the one directory only
//! system-a may write, and a record must outlive its task's result. A
//! record's name is not a task id (no task id has a '.'), and the drain
//! passes it by; the reaper deletes it with its task.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use zk_recipes::retry;
use zk_recipes::session::Client;
use zk_recipes::ZkError;

use crate::metrics::Metrics;
use crate::publisher::{publish, ChannelSlot};
use crate::sightings::Sightings;

/// Entries the drain has seen for less than this are left to the Submit
/// that wrote them (it is publishing them now): the drain would only
/// publish a duplicate.
const FRESH: Duration = Duration::from_secs(2);

/// An entry without its task node seen for longer than this was abandoned
/// between the two creates (longer than any Submit's budget for them).
pub const ORPHANED: Duration = Duration::from_secs(120);

/// The name of a request record (see `submit`): it sits in the outbox, the
/// one directory only system-a may write, and is not an entry to publish.
pub fn record_name(task_id: &str) -> String {
    format!("{task_id}{RECORD_SUFFIX}")
}

/// What ends a request record's name; no task id contains a '.'.
pub const RECORD_SUFFIX: &str = ".request";

/// The task is confirmed by the broker: its outbox entry is done. Deleting
/// it is safe to repeat (`NoNode` means an earlier attempt, or another
/// drain, deleted it); if it cannot be deleted now, the drain will publish
/// the task once more, which system-b de-duplicates.
pub async fn confirmed(client: &Client, entry: &str) {
    let deleted = retry::retry_for(Duration::from_secs(5), |_| async {
        match client.zk.delete(entry, None).await {
            Ok(()) | Err(ZkError::NoNode) => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await;
    if let Err(e) = deleted {
        tracing::warn!(entry, "outbox entry not deleted ({e:?}): the task will be published again");
    }
}

/// Publishes every outbox entry its Submit could not, whenever RabbitMQ is
/// connected: after a broker outage, and on start (entries a previous
/// system-a accepted and died before publishing). Every look also reports
/// the outbox's depth and its oldest entry's age to `metrics`, broker or
/// not: a broker outage is exactly when they grow. An entry's age is how
/// long this drain has seen it ([`Sightings`]), never this machine's wall
/// clock against the server's ctime.
pub async fn drain(
    client: Client,
    outbox_dir: String,
    tasks_dir: String,
    slot: ChannelSlot,
    queue: String,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut sightings = Sightings::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => return,
        }
        let entries = match client.zk.get_children(&outbox_dir, false).await {
            Ok(e) => e,
            Err(ZkError::NoNode) => {
                metrics.outbox(0, Duration::ZERO);
                continue;
            }
            Err(e) => {
                tracing::debug!("outbox: {e:?}");
                continue;
            }
        };
        // Request records share the directory; they are never published.
        let entries: Vec<String> = entries.into_iter().filter(|name| !name.ends_with(RECORD_SUFFIX)).collect();
        sightings.retain_only(entries.iter().map(String::as_str));
        let mut connected = slot.read().await.is_some();
        let mut oldest = Duration::ZERO;
        let count = entries.len();
        for id in entries {
            let entry = zk_recipes::join(&outbox_dir, &id);
            let Ok((body, stat)) = client.zk.get_data(&entry, false).await else { continue };
            let age = sightings.age(&id, stat.czxid, Instant::now());
            oldest = oldest.max(age);
            if !connected || age < FRESH {
                continue;
            }
            match client.zk.exists(&zk_recipes::join(&tasks_dir, &id), false).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    if age > ORPHANED {
                        tracing::info!(task_id = id, "outbox entry of a task never accepted: dropping it");
                        let _ = client.zk.delete(&entry, Some(stat.version)).await;
                    }
                    continue;
                }
                Err(_) => continue,
            }
            match publish(&slot, &queue, &id, &body).await {
                Ok(()) => {
                    tracing::info!(task_id = id, "published from the outbox");
                    confirmed(&client, &entry).await;
                }
                Err(e) => {
                    tracing::warn!(task_id = id, "outbox publish: {e}");
                    // The broker is away again: try the rest later (and
                    // only measure them now).
                    connected = slot.read().await.is_some();
                }
            }
        }
        metrics.outbox(count, oldest);
    }
}

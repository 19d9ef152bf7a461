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
//! was lost may be published twice, and system-b, which records the task
//! ids applied to each entity, applies the copy as a no-op that reports
//! the same result. Exactly once in effect.
//!
//! Why the outbox entry comes first: zookeeper-async has no `multi`, so
//! the two creates cannot be one transaction. In this order, "the task
//! node exists" implies "its outbox entry was written", so no accepted
//! task can be stranded unpublished. The reverse gap, an outbox entry
//! whose task node was never created (Submit died or gave up between the
//! two creates), is recognised by the drain (no task node) and, once older
//! than any Submit can take, deleted unpublished: that task was never
//! accepted.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use zk_recipes::retry;
use zk_recipes::session::Client;
use zk_recipes::ZkError;

/// The current publishing channel; `None` while RabbitMQ is away.
pub type ChannelSlot = Arc<RwLock<Option<lapin::Channel>>>;

/// Entries younger than this are left to the Submit that wrote them (it is
/// publishing them now): the drain would only publish a duplicate.
const FRESH: Duration = Duration::from_secs(2);

/// An entry without its task node older than this was abandoned between
/// the two creates (longer than any Submit's budget for them).
const ORPHANED: Duration = Duration::from_secs(120);

/// Why a task was not confirmed: certainly not queued, or unknown (the
/// broker may have it; only its confirm is missing). Either way the outbox
/// entry stays and the task will be published (again).
pub enum Unpublished {
    NotSent(String),
    Unknown(String),
}

impl std::fmt::Display for Unpublished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unpublished::NotSent(why) | Unpublished::Unknown(why) => f.write_str(why),
        }
    }
}

/// Publishes one task, persistent, mandatory, and waits for its confirm.
pub async fn publish(slot: &ChannelSlot, queue: &str, id: &str, body: &[u8]) -> Result<(), Unpublished> {
    use Unpublished::{NotSent, Unknown};
    let channel = slot.read().await.clone().ok_or(NotSent("RabbitMQ is not connected".into()))?;
    let props = BasicProperties::default()
        .with_delivery_mode(2) // persistent: survives a broker restart
        .with_message_id(id.into())
        .with_content_type("application/json".into());
    let confirm = channel
        .basic_publish(
            servicekit::rabbit::task_exchange(queue).as_str().into(),
            queue.into(),
            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
            body,
            props,
        )
        .await
        .map_err(|e| NotSent(format!("publish failed: {e}")))?;
    match tokio::time::timeout(Duration::from_secs(5), confirm).await {
        Err(_) => Err(Unknown("RabbitMQ did not confirm the task within 5 s".into())),
        Ok(Err(e)) => Err(Unknown(format!("the confirm was lost: {e}"))),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(NotSent(format!("no queue {queue:?} to route the task to"))),
        Ok(Ok(Confirmation::Nack(_))) => Err(NotSent("RabbitMQ refused the task".into())),
        Ok(Ok(Confirmation::NotRequested)) => Err(NotSent("publisher confirms are off".into())),
    }
}

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

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Publishes every outbox entry its Submit could not, whenever RabbitMQ is
/// connected: after a broker outage, and on start (entries a previous
/// system-a accepted and died before publishing).
pub async fn drain(
    client: Client,
    outbox_dir: String,
    tasks_dir: String,
    slot: ChannelSlot,
    queue: String,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => return,
        }
        if slot.read().await.is_none() {
            continue;
        }
        let entries = match client.zk.get_children(&outbox_dir, false).await {
            Ok(e) => e,
            Err(ZkError::NoNode) => continue,
            Err(e) => {
                tracing::debug!("outbox: {e:?}");
                continue;
            }
        };
        for id in entries {
            let entry = zk_recipes::join(&outbox_dir, &id);
            let Ok((body, stat)) = client.zk.get_data(&entry, false).await else { continue };
            let age = Duration::from_millis((now_ms() - stat.ctime).max(0) as u64);
            if age < FRESH {
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
                    // The broker is away again: try the rest later.
                    if slot.read().await.is_none() {
                        break;
                    }
                }
            }
        }
    }
}

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
//! An entry holds the task message and the trace context of the Submit
//! that accepted it ([`Entry`]): a task published later, by the drain of
//! another system-a, still joins its Submit's trace.
//!
//! The directory also holds request records, `<id>.request` (see
//! `submit`, "Idempotency"): the outbox is the one directory only
//! system-a may write, and a record must outlive its task's result. A
//! record's name is not a task id (no task id has a '.'), and the drain
//! passes it by; the reaper deletes it with its task.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use servicekit::telemetry;
use task_contract::TaskMessage;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
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

/// An outbox entry: the message to publish, and the W3C trace context
/// (`traceparent`, `tracestate`) of the Submit that accepted the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub task: TaskMessage,
    #[serde(default)]
    pub trace: HashMap<String, String>,
}

/// What the drain publishes from an entry's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Stored {
    /// The message body.
    pub body: Vec<u8>,
    /// The trace context to continue; empty for none. Read back from the
    /// coordination server, so it is checked like any carrier
    /// (`servicekit::telemetry::continue_trace`).
    pub trace: HashMap<String, String>,
}

impl Entry {
    pub fn new(task: TaskMessage, trace: HashMap<String, String>) -> Entry {
        Entry { task, trace }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// What to publish from an entry's bytes. An entry written before
    /// entries carried a trace context is the bare message; bytes that are
    /// neither are published as they are, as they always were: system-b
    /// dead-letters what it cannot read.
    pub fn decode(bytes: &[u8]) -> Stored {
        match serde_json::from_slice::<Entry>(bytes) {
            Ok(e) => Stored { body: e.task.encode(), trace: e.trace },
            Err(_) => Stored { body: bytes.to_vec(), trace: HashMap::new() },
        }
    }

    /// Whether two entries publish the same message, whatever trace each
    /// carries (two copies of one request are two Submits, two traces).
    pub fn same_message(a: &[u8], b: &[u8]) -> bool {
        Entry::decode(a).body == Entry::decode(b).body
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
            let stored = Entry::decode(&body);
            let span = tracing::info_span!(
                "publish",
                otel.kind = "producer",
                task_id = id,
                from = "outbox",
                trace_id = tracing::field::Empty
            );
            telemetry::continue_trace(&span, &stored.trace, "outbox entry");
            let published = async {
                match publish(&slot, &queue, &id, &stored.body).await {
                    Ok(()) => {
                        tracing::info!("published from the outbox");
                        confirmed(&client, &entry).await;
                        true
                    }
                    Err(e) => {
                        tracing::warn!("outbox publish: {e}");
                        false
                    }
                }
            };
            if !published.instrument(span).await {
                // The broker is away again: try the rest later (and only
                // measure them now).
                connected = slot.read().await.is_some();
            }
        }
        metrics.outbox(count, oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace() -> HashMap<String, String> {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        HashMap::from([("traceparent".to_string(), parent.to_string())])
    }

    #[test]
    fn an_entry_publishes_its_message_with_its_trace() {
        let entry = Entry::new(TaskMessage::new("t1"), trace());
        let stored = Entry::decode(&entry.encode());
        assert_eq!(stored.body, TaskMessage::new("t1").encode());
        assert_eq!(stored.trace, trace());
    }

    #[test]
    fn an_entry_from_before_traces_is_its_message() {
        let bare = TaskMessage::new("t1").encode();
        assert_eq!(Entry::decode(&bare), Stored { body: bare.clone(), trace: HashMap::new() });
        let garbage = b"not json".to_vec();
        assert_eq!(Entry::decode(&garbage).body, garbage, "published as it is, for system-b to dead-letter");
    }

    #[test]
    fn two_copies_of_a_request_are_the_same_entry_whatever_their_traces() {
        let first = Entry::new(TaskMessage::new("t1"), trace()).encode();
        let retry = Entry::new(TaskMessage::new("t1"), HashMap::new()).encode();
        assert!(Entry::same_message(&first, &retry));
        assert!(Entry::same_message(&first, &TaskMessage::new("t1").encode()), "an entry from before traces");
        assert!(!Entry::same_message(&first, &Entry::new(TaskMessage::new("t2"), trace()).encode()));
    }
}

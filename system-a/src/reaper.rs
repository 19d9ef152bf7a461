//! Deletes finished task nodes once they are older than the retention, and
//! with each its request record (see `submit`): a request id is remembered
//! exactly as long as its task.
//!
//! (TTL nodes would do it server-side, but they need `extendedTypesEnabled`
//! on an Apache ZooKeeper ensemble, which a user may not control.)

use std::time::Duration;

use task_contract::TaskNode;
use tokio_util::sync::CancellationToken;
use zk_recipes::session::Client;
use zk_recipes::ZkError;

use crate::outbox::{self, RECORD_SUFFIX};

/// Whether something last changed at `mtime_ms` is past `keep` at `now_ms`.
pub fn expired(now_ms: i64, mtime_ms: i64, keep: Duration) -> bool {
    now_ms.saturating_sub(mtime_ms) > i64::try_from(keep.as_millis()).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Reaps `tasks` (and the records in `outbox`) every 30 s, or every
/// `keep` if that is shorter, until `stop`.
pub async fn run(client: Client, tasks: String, outbox: String, keep: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30).min(keep)) => {}
            _ = stop.cancelled() => return,
        }
        reap_tasks(&client, &tasks, &outbox, keep).await;
        reap_records(&client, &tasks, &outbox, keep).await;
    }
}

async fn reap_tasks(client: &Client, tasks: &str, outbox: &str, keep: Duration) {
    let Ok(children) = client.zk.get_children(tasks, false).await else { return };
    for id in children {
        let path = zk_recipes::join(tasks, &id);
        let Ok((data, stat)) = client.zk.get_data(&path, false).await else { continue };
        // A node we cannot read is not known to be finished: it stays (and
        // says why) rather than vanish with its result.
        let finished = match TaskNode::decode(&data) {
            Ok(node) => node.status().is_final(),
            Err(e) => {
                tracing::warn!(task = %path, "not reaped: {e}");
                false
            }
        };
        if !finished || !expired(now_ms(), stat.mtime, keep) {
            continue;
        }
        // Versioned: never delete a node that changed since we read it.
        // The task first, then its record: a record left behind (we died
        // in between) is reaped below, and meanwhile a retry of its key
        // finds no task and makes a new one, as it would a moment later.
        if client.zk.delete(&path, Some(stat.version)).await.is_ok() {
            let record = zk_recipes::join(outbox, &outbox::record_name(&id));
            match client.zk.delete(&record, None).await {
                Ok(()) | Err(ZkError::NoNode) => {}
                Err(e) => tracing::debug!(record, "not deleted yet: {e:?}"),
            }
        }
    }
}

/// Records whose task node is gone: left by a reaper that died between the
/// two deletes, or by a Submit that died before creating its task. Old
/// enough that no Submit is still working on it.
async fn reap_records(client: &Client, tasks: &str, outbox: &str, keep: Duration) {
    let Ok(children) = client.zk.get_children(outbox, false).await else { return };
    for name in children {
        let Some(id) = name.strip_suffix(RECORD_SUFFIX) else { continue };
        let record = zk_recipes::join(outbox, &name);
        let Ok(Some(stat)) = client.zk.exists(&record, false).await else { continue };
        if !expired(now_ms(), stat.mtime, keep.max(outbox::ORPHANED)) {
            continue;
        }
        if let Ok(None) = client.zk.exists(&zk_recipes::join(tasks, id), false).await {
            let _ = client.zk.delete(&record, Some(stat.version)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_is_older_than_the_retention_expires() {
        let keep = Duration::from_secs(600);
        assert!(!expired(1_000_000, 1_000_000 - 600_000, keep), "exactly the retention");
        assert!(expired(1_000_000, 1_000_000 - 600_001, keep));
        assert!(!expired(1_000_000, 1_000_500, keep), "a clock behind the server's");
        assert!(!expired(0, i64::MIN, Duration::MAX) && expired(i64::MAX, i64::MIN, keep), "no overflow");
    }
}

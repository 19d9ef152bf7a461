//! Deletes finished task nodes once they are older than the retention, and
//! with each its request record (see `submit`): a request id is remembered
//! exactly as long as its task. "Older" is how long this reaper has seen
//! the task finished ([`Sightings`]): at least the retention, whatever this
//! machine's wall clock says against the server's.
//!
//! (TTL nodes would do it server-side, but they need `extendedTypesEnabled`
//! on an Apache ZooKeeper ensemble, which a user may not control.)

use std::time::{Duration, Instant};

use task_contract::TaskNode;
use tokio_util::sync::CancellationToken;
use zk_recipes::session::Client;
use zk_recipes::ZkError;

use crate::outbox::{self, RECORD_SUFFIX};
use crate::sightings::Sightings;

/// Reaps `tasks` (and the records in `outbox`) every 30 s, or every
/// `keep` if that is shorter, until `stop`.
pub async fn run(client: Client, tasks: String, outbox: String, keep: Duration, stop: CancellationToken) {
    let (mut finished, mut records) = (Sightings::default(), Sightings::default());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30).min(keep)) => {}
            _ = stop.cancelled() => return,
        }
        reap_tasks(&client, &tasks, &outbox, keep, &mut finished).await;
        reap_records(&client, &tasks, &outbox, keep, &mut records).await;
    }
}

async fn reap_tasks(client: &Client, tasks: &str, outbox: &str, keep: Duration, finished: &mut Sightings) {
    let Ok(children) = client.zk.get_children(tasks, false).await else { return };
    finished.retain_only(children.iter().map(String::as_str));
    for id in children {
        let path = zk_recipes::join(tasks, &id);
        let Ok((data, stat)) = client.zk.get_data(&path, false).await else { continue };
        // A node we cannot read is not known to be finished: it stays (and
        // says why) rather than vanish with its result.
        let is_final = match TaskNode::decode(&data) {
            Ok(node) => node.status().is_final(),
            Err(e) => {
                tracing::warn!(task = %path, "not reaped: {e}");
                false
            }
        };
        // By mzxid: a node written again since is a new state to age.
        if !is_final || finished.age(&id, stat.mzxid, Instant::now()) <= keep {
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
async fn reap_records(client: &Client, tasks: &str, outbox: &str, keep: Duration, records: &mut Sightings) {
    let Ok(children) = client.zk.get_children(outbox, false).await else { return };
    records.retain_only(children.iter().map(String::as_str));
    for name in children {
        let Some(id) = name.strip_suffix(RECORD_SUFFIX) else { continue };
        let record = zk_recipes::join(outbox, &name);
        let Ok(Some(stat)) = client.zk.exists(&record, false).await else { continue };
        if records.age(&name, stat.czxid, Instant::now()) <= keep.max(outbox::ORPHANED) {
            continue;
        }
        if let Ok(None) = client.zk.exists(&zk_recipes::join(tasks, id), false).await {
            let _ = client.zk.delete(&record, Some(stat.version)).await;
        }
    }
}

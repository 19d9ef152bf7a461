//! Waiting for a task's status without missing it.
//!
//! The requester creates the task's node and arms a watch on it *before* it
//! hands the task to a worker. Publish first and the worker may write the
//! result before the watch exists; the requester would then wait for an
//! event that already happened. Every event (and every reconnect, since
//! watches are not re-armed after one) is followed by a re-read that
//! re-arms the watch, so the last value is always seen.

use std::time::Duration;

use tokio::sync::mpsc;
use zookeeper_async::{Acl, ZkError};

use crate::retry;
use crate::session::Client;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("no matching status within {0:?}")]
    Timeout(Duration),
    #[error("the task node {0} was deleted")]
    Deleted(String),
    #[error("ZooKeeper error: {0:?}")]
    Zk(ZkError),
}

impl From<ZkError> for TaskError {
    fn from(e: ZkError) -> Self {
        TaskError::Zk(e)
    }
}

/// A task node with a watch armed on it.
pub struct TaskStatus {
    client: Client,
    path: String,
    events: mpsc::UnboundedReceiver<()>,
    events_tx: mpsc::UnboundedSender<()>,
    current: Vec<u8>,
    mzxid: i64,
    /// The client's connection ([`Client::epoch`]) when the watch was last
    /// armed: a watch lives on its connection, and zookeeper-async does
    /// not set it again on the next one.
    armed_on: u64,
}

impl TaskStatus {
    /// Creates the task node with `initial` data (parents as needed) and
    /// arms its watch; only after this returns may the task be published.
    /// The node is open to anyone; services use [`TaskStatus::create_with_acl`].
    pub async fn create(client: &Client, path: &str, initial: &[u8]) -> Result<TaskStatus, TaskError> {
        Self::create_with_acl(
            client,
            path,
            initial,
            Acl::open_unsafe(),
            tokio::time::Instant::now() + Duration::from_secs(10),
        )
        .await
    }

    /// [`TaskStatus::create`] with the node's ACL (typically: the requester
    /// reads, the worker reads and writes the result, nobody else touches
    /// it; missing parents get the same ACL), retrying through connection
    /// loss (an ensemble's election) until `deadline`. The task's name is
    /// unique to it, so a create whose reply was lost is recognised on the
    /// retry by the node holding our bytes (see [`retry::create_owned`]).
    pub async fn create_with_acl(
        client: &Client,
        path: &str,
        initial: &[u8],
        acl: &[Acl],
        deadline: tokio::time::Instant,
    ) -> Result<TaskStatus, TaskError> {
        retry::create_owned_in(&client.zk, path, initial, acl, acl, deadline).await?;
        Self::existing(client, path, deadline).await
    }

    /// Follows a task node that already exists (a retried request finding
    /// the node its first attempt created): reads it and arms its watch,
    /// retrying through connection loss until `deadline`. `Deleted` if
    /// there is no such node.
    pub async fn existing(
        client: &Client,
        path: &str,
        deadline: tokio::time::Instant,
    ) -> Result<TaskStatus, TaskError> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut status = TaskStatus {
            client: client.clone(),
            path: path.to_string(),
            events,
            events_tx,
            current: vec![],
            mzxid: -1,
            armed_on: client.epoch(),
        };
        // A read, safe to repeat; a watch left armed by an attempt whose
        // reply was lost only adds a spurious event, and every event is
        // followed by a re-read.
        let policy = retry::RetryPolicy::default();
        let mut attempt = 0u32;
        loop {
            let read = match tokio::time::timeout_at(deadline, status.reread()).await {
                Ok(r) => r,
                Err(_) => Err(TaskError::Zk(ZkError::OperationTimeout)),
            };
            match read {
                Ok(_) => return Ok(status),
                Err(TaskError::Zk(e)) if retry::is_retryable(&e) && tokio::time::Instant::now() < deadline => {
                    let wake = (tokio::time::Instant::now() + policy.backoff(attempt)).min(deadline);
                    tokio::time::sleep_until(wake).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the data and re-arms the watch in the same call.
    async fn reread(&mut self) -> Result<bool, TaskError> {
        let tx = self.events_tx.clone();
        // Read before the request: a connection that changes while it is
        // in flight makes the next wait look again.
        self.armed_on = self.client.epoch();
        match self
            .client
            .zk
            .get_data_w(&self.path, move |_| {
                let _ = tx.send(());
            })
            .await
        {
            Ok((data, stat)) => {
                let changed = stat.mzxid != self.mzxid;
                self.current = data;
                self.mzxid = stat.mzxid;
                Ok(changed)
            }
            Err(ZkError::NoNode) => Err(TaskError::Deleted(self.path.clone())),
            Err(e) => Err(e.into()),
        }
    }

    pub fn current(&self) -> &[u8] {
        &self.current
    }

    /// Waits for the next value different from the last one read (a
    /// stream of status updates is a loop over this).
    ///
    /// It reads again on a watch event, and after the connection changed
    /// (the watch did not survive it). Only a change it has not seen
    /// counts: the session's state as it is now is marked seen first, then
    /// the connection compared with the one the watch was armed on, so a
    /// reconnect before this call is caught by the comparison and one
    /// after it by the state. Waking on the state as it already was cost
    /// every Submit a read for nothing (tests/tests/round_trips.rs).
    pub async fn next_change(&mut self, timeout: Duration) -> Result<Vec<u8>, TaskError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut states = self.client.states();
        states.borrow_and_update();
        let mut look_now = self.client.epoch() != self.armed_on;
        loop {
            if !look_now {
                tokio::select! {
                    _ = self.events.recv() => {}
                    _ = states.changed() => {
                        if !self.client.is_live() {
                            continue; // wait for the reconnect, then re-read
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => return Err(TaskError::Timeout(timeout)),
                }
            }
            look_now = false;
            match self.reread().await {
                Ok(true) => return Ok(self.current.clone()),
                Ok(false) => {}
                Err(TaskError::Zk(ZkError::ConnectionLoss)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until the data satisfies `done`, returning it.
    pub async fn wait_until(&mut self, timeout: Duration, done: impl Fn(&[u8]) -> bool) -> Result<Vec<u8>, TaskError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.current) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(TaskError::Timeout(timeout));
            }
            match self.next_change(left).await {
                Ok(_) => {}
                Err(TaskError::Timeout(_)) => return Err(TaskError::Timeout(timeout)),
                Err(e) => return Err(e),
            }
        }
        Ok(self.current.clone())
    }
}

//! Retrying ZooKeeper operations through a lost connection, until the
//! caller's deadline (what Curator's `RetryPolicy` and kazoo's
//! `KazooRetry` do).
//!
//! When an ensemble's leader dies, every client connected to it loses its
//! connection, and every request in flight fails with `ConnectionLoss`.
//! The session survives: the client reconnects to another member within
//! about a second, long before the session times out. A request that fails
//! then is not a failure the caller should see: it costs the election's
//! latency, as long as the caller's deadline allows it.
//!
//! Only two errors are retried, and only for operations safe to repeat:
//!
//! - `ConnectionLoss`: the connection dropped with the request in flight.
//!   It may or may not have been applied; the operation must tolerate
//!   either (see [`create_owned`] for creates);
//! - `OperationTimeout`: no answer in time, same uncertainty.
//!
//! `SessionExpired` is never retried: the session's ephemerals and watches
//! are gone, and what was built on them (a lock, a leadership) must start
//! over from the top, which is the caller's decision, not a retry loop's.
//! Any other error (`NodeExists`, `NoNode`, `BadVersion`, ...) is an
//! answer from the server and is returned as it is.
//!
//! Backoff is exponential with jitter: after the n-th failure, a wait drawn
//! uniformly from `[d/2, d]` with `d = min(max, first * 2^n)`, so clients
//! cut off together do not all return together; never past the deadline.
//! Each attempt is itself bounded by the deadline: a request queued while
//! the client reconnects waits for the reconnect, which may never come.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use zookeeper_async::{Acl, CreateMode, Stat, ZkError, ZooKeeper};

/// How long to wait between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure (before jitter).
    pub first: Duration,
    /// The longest wait between two attempts.
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// 25 ms doubling to 1 s: an election of about a second is crossed in
    /// a handful of attempts, and a longer outage costs one request a
    /// second per waiting caller.
    fn default() -> Self {
        RetryPolicy { first: Duration::from_millis(25), max: Duration::from_secs(1) }
    }
}

impl RetryPolicy {
    /// The wait after failure number `failures` (0 for the first), jittered
    /// into `[d/2, d]`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let d = self.first.saturating_mul(1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX)).min(self.max);
        // A v4 UUID is 122 bits from the OS's random source: enough jitter
        // without another dependency.
        let r = (uuid::Uuid::new_v4().as_u128() as u64) as f64 / u64::MAX as f64;
        d / 2 + d.mul_f64(r / 2.0)
    }
}

/// Whether `e` leaves the operation's outcome unknown, so that repeating a
/// repeatable operation is the right answer.
///
/// `MarshallingError` is one of them: zookeeper-async pairs replies with
/// requests by order, not by xid, and across a reconnect (an ensemble's
/// leader killed) a request can be handed a reply that is not its own and
/// fails to parse as its type. The request may or may not have been
/// applied, exactly as with `ConnectionLoss` (a drill's observer saw it
/// once, listing children right after the leader's kill).
pub fn is_retryable(e: &ZkError) -> bool {
    matches!(e, ZkError::ConnectionLoss | ZkError::OperationTimeout | ZkError::MarshallingError)
}

/// Runs `op` until it succeeds, fails with an error that is not
/// [retryable](is_retryable), or `deadline` passes (then the last error, or
/// `OperationTimeout` if the attempt was cut short by the deadline).
/// `op` gets the attempt number: from 1 on, an earlier attempt may have
/// been applied, which the operation must allow for. An attempt cut short
/// by the deadline may also still be applied later: zookeeper-async queues
/// requests while it reconnects and sends them once it has, so a give-up
/// leaves the outcome unknown, as `ConnectionLoss` does.
pub async fn retry<T, F, Fut>(policy: &RetryPolicy, deadline: Instant, mut op: F) -> Result<T, ZkError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, ZkError>>,
{
    let mut attempt = 0u32;
    loop {
        let outcome = match tokio::time::timeout_at(deadline, op(attempt)).await {
            Ok(r) => r,
            Err(_) => return Err(ZkError::OperationTimeout),
        };
        match outcome {
            Err(e) if is_retryable(&e) => {
                let wake = (Instant::now() + policy.backoff(attempt)).min(deadline);
                tokio::time::sleep_until(wake).await;
                if Instant::now() >= deadline {
                    tracing::debug!("giving up at the deadline after {} attempts: {e:?}", attempt + 1);
                    return Err(e);
                }
                tracing::debug!("retrying after {e:?} (attempt {})", attempt + 1);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// [`retry`] with the default policy and a deadline `budget` from now.
pub async fn retry_for<T, F, Fut>(budget: Duration, op: F) -> Result<T, ZkError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, ZkError>>,
{
    retry(&RetryPolicy::default(), Instant::now() + budget, op).await
}

/// Creates a persistent node whose name the caller chose (unique to this
/// request, such as a task id), retrying until `deadline`.
///
/// The one case a blind retry gets wrong: the first attempt was applied but
/// its reply was lost, and the retry then meets `NodeExists`. That node is
/// *maybe mine*. Since nobody else uses this name, a node holding exactly
/// our bytes is ours, and the create succeeded; any other content is a
/// genuine `NodeExists`.
pub async fn create_owned(
    zk: &ZooKeeper,
    path: &str,
    data: &[u8],
    acl: &[Acl],
    deadline: Instant,
) -> Result<String, ZkError> {
    retry(&RetryPolicy::default(), deadline, |attempt| async move {
        match zk.create(path, data.to_vec(), acl.to_vec(), CreateMode::Persistent).await {
            Err(ZkError::NodeExists) if attempt > 0 => match zk.get_data(path, false).await {
                Ok((current, _)) if current == data => Ok(path.to_string()),
                Ok(_) => Err(ZkError::NodeExists),
                Err(ZkError::NoNode) => Err(ZkError::ConnectionLoss), // deleted since: try again
                Err(e) => Err(e),
            },
            other => other,
        }
    })
    .await
}

/// Runs `create` (a create of `path`, however it treats a node already
/// there), making the missing parents (as `parent_acl`) only when it says
/// they are missing, then running it once more, as Curator's
/// `creatingParentsIfNeeded` does. Checking each parent before every
/// create cost one `exists` per level on every task, parents that exist
/// for the life of the system: four round trips of eight on system-a's
/// path for a Submit.
pub async fn with_parents<T, Fut>(
    zk: &ZooKeeper,
    path: &str,
    parent_acl: &[Acl],
    deadline: Instant,
    create: impl Fn() -> Fut,
) -> Result<T, ZkError>
where
    Fut: Future<Output = Result<T, ZkError>>,
{
    match create().await {
        Err(ZkError::NoNode) => {
            if let Some((parent, _)) = path.rsplit_once('/').filter(|(p, _)| !p.is_empty()) {
                ensure_path(zk, parent, parent_acl, deadline).await?;
            }
            create().await
        }
        other => other,
    }
}

/// [`create_owned`] [`with_parents`].
pub async fn create_owned_in(
    zk: &ZooKeeper,
    path: &str,
    data: &[u8],
    acl: &[Acl],
    parent_acl: &[Acl],
    deadline: Instant,
) -> Result<String, ZkError> {
    with_parents(zk, path, parent_acl, deadline, || create_owned(zk, path, data, acl, deadline)).await
}

/// Sets `path` to `data` if its version is still `version`, retrying until
/// `deadline`. A `BadVersion` after a lost reply may be our own first
/// attempt, applied: if the node now holds our bytes at `version + 1`, the
/// write was ours and succeeded.
pub async fn set_data_versioned(
    zk: &ZooKeeper,
    path: &str,
    data: &[u8],
    version: i32,
    deadline: Instant,
) -> Result<Stat, ZkError> {
    retry(&RetryPolicy::default(), deadline, |attempt| async move {
        match zk.set_data(path, data.to_vec(), Some(version)).await {
            Err(ZkError::BadVersion) if attempt > 0 => match zk.get_data(path, false).await {
                Ok((current, stat)) if current == data && stat.version == version.wrapping_add(1) => Ok(stat),
                Ok(_) => Err(ZkError::BadVersion),
                Err(e) => Err(e),
            },
            other => other,
        }
    })
    .await
}

/// Creates `path` and its missing ancestors (as [`crate::ensure_path`]),
/// retrying through connection loss until `deadline`: every step is
/// idempotent.
pub async fn ensure_path(zk: &ZooKeeper, path: &str, acl: &[Acl], deadline: Instant) -> Result<(), ZkError> {
    retry(&RetryPolicy::default(), deadline, |_| crate::ensure_path_with_acl(zk, path, acl)).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn an_unknown_outcome_is_retried_and_an_answer_is_not() {
        for unknown in [ZkError::ConnectionLoss, ZkError::OperationTimeout, ZkError::MarshallingError] {
            assert!(is_retryable(&unknown), "{unknown:?}");
        }
        for answer in
            [ZkError::NoNode, ZkError::NodeExists, ZkError::NoAuth, ZkError::BadVersion, ZkError::SessionExpired]
        {
            assert!(!is_retryable(&answer), "{answer:?}");
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy { first: Duration::from_millis(100), max: Duration::from_secs(1) }
    }

    #[test]
    fn backoff_doubles_is_jittered_and_capped() {
        let p = policy();
        for (n, full) in [(0, 100), (1, 200), (2, 400), (3, 800), (4, 1000), (30, 1000), (200, 1000)] {
            for _ in 0..50 {
                let b = p.backoff(n);
                let full = Duration::from_millis(full);
                assert!(b >= full / 2 && b <= full, "backoff({n}) = {b:?}, outside [{:?}, {full:?}]", full / 2);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn connection_loss_is_retried_with_backoff_until_it_succeeds() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let r = retry(&policy(), started + Duration::from_secs(10), |attempt| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            assert_eq!(n, attempt);
            async move {
                match n {
                    0 => Err(ZkError::ConnectionLoss),
                    1 => Err(ZkError::OperationTimeout),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(r, Ok(2));
        // Two waits: [50, 100] ms then [100, 200] ms.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(150) && took <= Duration::from_millis(300), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline_never_after() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(3);
        let r: Result<(), _> = retry(&policy(), deadline, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(ZkError::ConnectionLoss) }
        })
        .await;
        assert_eq!(r, Err(ZkError::ConnectionLoss));
        assert_eq!(Instant::now(), deadline, "it must wait out the whole budget, and not a moment more");
        // 100, 200, 400, 800, then 1 s waits: at least 5, at most 8 attempts in 3 s.
        let n = calls.load(Ordering::SeqCst);
        assert!((5..=9).contains(&n), "{n} attempts");
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_hanging_past_the_deadline_is_cut_short() {
        let started = Instant::now();
        let r: Result<(), _> =
            retry(&policy(), started + Duration::from_secs(2), |_| std::future::pending::<Result<(), ZkError>>()).await;
        assert_eq!(r, Err(ZkError::OperationTimeout));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn session_expiry_and_server_answers_are_not_retried() {
        for e in [ZkError::SessionExpired, ZkError::NodeExists, ZkError::NoNode, ZkError::BadVersion] {
            let calls = AtomicU32::new(0);
            let started = Instant::now();
            let r: Result<(), _> = retry(&policy(), started + Duration::from_secs(10), |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move { Err(e) }
            })
            .await;
            assert_eq!(r, Err(e));
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{e:?} was retried");
            assert_eq!(started.elapsed(), Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_already_past_still_makes_one_attempt_but_no_retry() {
        let calls = AtomicU32::new(0);
        let r: Result<u32, _> = retry(&policy(), Instant::now(), |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok(7) }
        })
        .await;
        // timeout_at with a past deadline still polls the attempt once.
        assert_eq!(r, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

//! What happens to a delivery, decided over plain values.
//!
//! A task that was not done this time failed for one of a few reasons
//! ([`Failure`]); each reason, with the number of attempts the message has
//! had, decides one [`Disposition`]: what to tell the task's node and what
//! to tell the broker. Nothing here talks to a server, so every rule is a
//! unit test below.

use std::time::Duration;

/// Why a task was not done this time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// A fault that heals by itself: a lost connection, a newer lock holder,
    /// a lock lost during the work. Try again now.
    #[error("{0}")]
    Retry(String),
    /// The task can never be applied (an entity no store can name, a value
    /// that would overflow): it fails for good.
    #[error("{0}")]
    Rejected(String),
    /// The task is fine but the store cannot take it until an operator acts
    /// (permissions, a read-only or full disk, a damaged entity file).
    #[error("{reason}")]
    Stuck { reason: String, remedy: String },
    /// A fencing token that can never catch up: the store has seen tokens
    /// this coordination service cannot exceed, and the epoch could not be
    /// advanced past them (see `zk_recipes::fencing`).
    #[error("{reason}")]
    Alarm { reason: String, remedy: String },
    /// The task's node refuses system-b: not even a failure can be told.
    #[error("{0}")]
    Unreportable(String),
    /// The message, or the task's node, is not something this build can
    /// read (garbage, or a newer contract version): parked for an operator,
    /// who can replay it once a worker reads it.
    #[error("{0}")]
    Unreadable(String),
}

/// What to do with the delivery (and the task's node) after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Put a fresh copy of the message back in the queue for another try
    /// (acking the original), after a short pause so a retry loop cannot
    /// spin; its attempt count unchanged. A copy, not a requeue: the
    /// broker counts requeues against the queue's delivery limit, which is
    /// for messages that kill their consumer, not for transient faults.
    Requeue,
    /// Publish a copy carrying attempt number `attempt`, after `delay`, and
    /// ack the original: the attempt count survives the round trip, which a
    /// plain requeue would lose.
    Republish { attempt: i64, delay: Duration },
    /// Write `failed` into the task's node (while still holding the entity's
    /// lock), then dead-letter the message so an operator sees it.
    FailThenDeadLetter { error: String },
    /// Dead-letter the message without telling the node (it refuses us).
    DeadLetter,
}

/// Attempts of a task that meets a permanent store fault before it is
/// dead-lettered. With [`stuck_delay`] they span about 7.5 s.
pub const STUCK_ATTEMPTS: i64 = 5;

/// Backoff before attempt n+1 after a permanent fault: 500 ms doubling,
/// capped at 30 s.
pub fn stuck_delay(attempt: i64) -> Duration {
    let doublings = attempt.clamp(1, 7) - 1;
    (Duration::from_millis(500) * (1u32 << doublings)).min(Duration::from_secs(30))
}

/// The disposition of a delivery on its `attempt`-th try (1 for the first)
/// that ended in `failure`.
pub fn disposition(failure: &Failure, attempt: i64) -> Disposition {
    match failure {
        Failure::Retry(_) => Disposition::Requeue,
        Failure::Rejected(why) => Disposition::FailThenDeadLetter { error: why.clone() },
        // An alarm does not heal by retrying: one attempt, one ERROR, and
        // the task fails so its caller learns now.
        Failure::Alarm { reason, .. } => Disposition::FailThenDeadLetter { error: reason.clone() },
        Failure::Stuck { reason, .. } if attempt >= STUCK_ATTEMPTS => {
            Disposition::FailThenDeadLetter { error: reason.clone() }
        }
        Failure::Stuck { .. } => Disposition::Republish { attempt, delay: stuck_delay(attempt) },
        Failure::Unreportable(_) | Failure::Unreadable(_) => Disposition::DeadLetter,
    }
}

/// The attempt count a delivery carries in its `x-attempts` header, read
/// leniently: any integer type a publisher may have used; 0 if absent or
/// not a number.
pub fn attempts_in(header: Option<&lapin::types::AMQPValue>) -> i64 {
    use lapin::types::AMQPValue;
    match header {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        _ => 0,
    }
    .max(0)
}

/// The header carrying how many attempts a republished task has had.
pub const ATTEMPTS_HEADER: &str = "x-attempts";

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::AMQPValue;

    fn stuck() -> Failure {
        Failure::Stuck { reason: "store /s: read-only".into(), remedy: "remount".into() }
    }

    #[test]
    fn transient_faults_requeue_and_permanent_ones_fail_the_task() {
        assert_eq!(disposition(&Failure::Retry("connection loss".into()), 1), Disposition::Requeue);
        assert_eq!(disposition(&Failure::Retry("connection loss".into()), 99), Disposition::Requeue);
        assert_eq!(
            disposition(&Failure::Rejected("overflow".into()), 1),
            Disposition::FailThenDeadLetter { error: "overflow".into() }
        );
        assert_eq!(disposition(&Failure::Unreportable("NOAUTH".into()), 1), Disposition::DeadLetter);
        assert_eq!(disposition(&Failure::Unreadable("version 3".into()), 1), Disposition::DeadLetter);
    }

    #[test]
    fn a_stuck_store_is_retried_with_backoff_then_dead_lettered() {
        let delays: Vec<Duration> = (1..STUCK_ATTEMPTS)
            .map(|a| match disposition(&stuck(), a) {
                Disposition::Republish { attempt, delay } => {
                    assert_eq!(attempt, a);
                    delay
                }
                other => panic!("attempt {a}: {other:?}"),
            })
            .collect();
        assert_eq!(delays.iter().map(Duration::as_millis).collect::<Vec<_>>(), [500, 1000, 2000, 4000]);
        assert!(matches!(disposition(&stuck(), STUCK_ATTEMPTS), Disposition::FailThenDeadLetter { .. }));
        assert_eq!(stuck_delay(40), Duration::from_secs(30));
    }

    #[test]
    fn a_fencing_alarm_fails_at_once() {
        let alarm = Failure::Alarm { reason: "epoch".into(), remedy: "zkctl".into() };
        assert!(matches!(disposition(&alarm, 1), Disposition::FailThenDeadLetter { .. }));
    }

    #[test]
    fn attempts_are_read_from_any_integer_header() {
        assert_eq!(attempts_in(None), 0);
        assert_eq!(attempts_in(Some(&AMQPValue::LongLongInt(3))), 3);
        assert_eq!(attempts_in(Some(&AMQPValue::ShortShortInt(2))), 2);
        assert_eq!(attempts_in(Some(&AMQPValue::LongInt(-5))), 0, "a forged negative count");
        assert_eq!(attempts_in(Some(&AMQPValue::Boolean(true))), 0);
    }
}

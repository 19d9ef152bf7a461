//! The broker's side: deliveries in, acks out.
//!
//! Manual acks, bounded prefetch. A delivery is acked only after its task
//! is applied and its node answered (or found to need nothing), so a crash
//! anywhere before the ack makes RabbitMQ redeliver it, and the worker's
//! exactly-once rule turns the redelivery into a report or a no-op. A
//! message that cannot be read, or is of a newer contract version, is
//! rejected without requeue and lands in the dead-letter queue instead of
//! looping; it changes nothing (it names no task this build can run).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use task_contract::{ContractError, TaskMessage};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::Outcome;
use crate::outcome::{self, Disposition, Failure};
use crate::worker::{Handled, Worker};

/// How long a stopping consumer lets the tasks in flight finish before it
/// closes the connection. Short, so a stop is quick whatever the
/// coordination server is doing: an unacked task is redelivered, and the
/// exactly-once rule makes the redelivery harmless.
pub const DRAIN: Duration = Duration::from_millis(800);

/// Throttles the ERROR lines of permanent faults, so a broken store costs
/// a few lines, not one per task.
pub struct Alarms(servicekit::fault::Throttle);

impl Default for Alarms {
    fn default() -> Self {
        Alarms(servicekit::fault::Throttle::new(Duration::from_secs(10)))
    }
}

/// Consumes `queue` on one broker connection until it ends or `stop`.
/// `announce` runs once the consumer is registered.
pub async fn consume(
    conn: &lapin::Connection,
    queue: &str,
    prefetch: u16,
    worker: &Arc<Worker>,
    alarms: &Arc<Alarms>,
    stop: &CancellationToken,
    announce: impl FnOnce(),
) -> lapin::Result<()> {
    let channel = conn.create_channel().await?;
    servicekit::rabbit::check_task_topology(&channel, queue).await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    // Confirms, so a task re-published with its attempt count is acked
    // only once the broker holds the copy.
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            worker.instance.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    announce();
    let running = tokio_util::task::TaskTracker::new();
    loop {
        let next = tokio::select! {
            d = deliveries.next() => d,
            _ = stop.cancelled() => break,
        };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        let (w, a, ch, q) = (worker.clone(), alarms.clone(), channel.clone(), queue.to_string());
        running.spawn(async move { handle(&w, &a, delivery, &ch, &q).await });
    }
    running.close();
    let _ = tokio::time::timeout(DRAIN, running.wait()).await;
    Ok(())
}

/// One delivery: decode the message, run its task, settle it with the
/// broker as the outcome says.
async fn handle(
    worker: &Worker,
    alarms: &Alarms,
    delivery: lapin::message::Delivery,
    channel: &lapin::Channel,
    queue: &str,
) {
    let message = match TaskMessage::decode(&delivery.data) {
        Ok(m) => m,
        // Written by a newer system-a: what it asks may not be what this
        // build would do, so it waits in the dead-letter queue until a
        // worker that reads its version replays it.
        Err(e @ ContractError::UnsupportedVersion { .. }) => {
            tracing::warn!(error = %e, "task message of a newer version: dead-lettering it");
            worker.metrics.task(Outcome::DeadLettered);
            let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
        // Not a task message at all. It names nothing this worker may act
        // on, so it changes nothing: in particular it does not fail a task
        // whose id it happens to carry (that would let any publisher fail
        // any task).
        Err(e) => {
            tracing::warn!(error = %e, "poison message: dead-lettering it");
            worker.metrics.task(Outcome::DeadLettered);
            let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
    };
    if delivery.redelivered {
        worker.metrics.redelivered();
    }
    let attempt = outcome::attempts_in(
        delivery.properties.headers().as_ref().and_then(|h| h.inner().get(outcome::ATTEMPTS_HEADER)),
    ) + 1;
    // The task's work continues the trace whose context system-a put in
    // the headers (a malformed one is ignored: the span starts its own).
    let span = tracing::info_span!(
        "task",
        otel.kind = "consumer",
        task_id = %message.id,
        attempt,
        trace_id = tracing::field::Empty
    );
    let headers = servicekit::telemetry::AmqpHeaders(delivery.properties.headers().as_ref());
    servicekit::telemetry::continue_trace(&span, &headers, "AMQP headers");
    // Instrumented, never entered: an entered span held across an await
    // would stay entered on this thread for whatever runs there meanwhile.
    let settled = async {
        let handled = worker.handle(&message.id, attempt).await;
        worker.metrics.task(counted_as(&handled));
        let ack = || delivery.acker.ack(BasicAckOptions::default()).instrument(tracing::info_span!("ack"));
        match handled {
            Handled::Done { .. } => {
                let _ = worker.metrics.stages.time("ack", ack()).await;
            }
            Handled::NoOp(why) => {
                tracing::info!("nothing to do: {why}");
                let _ = ack().await;
            }
            Handled::NotDone(failure, disposition) => {
                settle(alarms, &delivery, channel, queue, &failure, disposition, attempt).await
            }
        }
    };
    settled.instrument(span).await;
}

/// How `system_b_tasks_total` counts a delivery's end.
fn counted_as(handled: &Handled) -> Outcome {
    match handled {
        Handled::Done { fresh: true, .. } => Outcome::Done,
        Handled::Done { fresh: false, .. } => Outcome::Reported,
        Handled::NoOp(_) => Outcome::NoOp,
        Handled::NotDone(_, Disposition::Requeue) => Outcome::Requeued,
        Handled::NotDone(_, Disposition::Republish { .. }) => Outcome::Republished,
        Handled::NotDone(_, Disposition::FailThenDeadLetter { .. }) => Outcome::Failed,
        Handled::NotDone(_, Disposition::DeadLetter) => Outcome::DeadLettered,
    }
}

/// Carries out a disposition with the broker, logging it as loudly as it
/// deserves: a retry is a WARN, a fault an operator must fix an ERROR.
async fn settle(
    alarms: &Alarms,
    delivery: &lapin::message::Delivery,
    channel: &lapin::Channel,
    queue: &str,
    failure: &Failure,
    disposition: Disposition,
    attempt: i64,
) {
    match disposition {
        // A fresh copy rather than a requeue: the queue counts every
        // requeue against its delivery limit (`servicekit::broker::
        // DELIVERY_LIMIT`), and a task that waits out an outage of the
        // coordination server must not be dead-lettered for it. The copy
        // keeps the attempt count: a transient fault is not an attempt.
        Disposition::Requeue => {
            tracing::warn!("task will be retried: {failure}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            republish(delivery, channel, queue, attempt - 1).await;
        }
        Disposition::DeadLetter => {
            tracing::warn!("dead-lettering the task: {failure}");
            let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
        }
        Disposition::FailThenDeadLetter { .. } => {
            match failure {
                Failure::Stuck { reason, remedy } => tracing::error!(
                    "{reason}: a permanent fault, giving up on the task after {} attempts and dead-lettering it; {remedy}",
                    outcome::STUCK_ATTEMPTS
                ),
                Failure::Alarm { reason, remedy } => tracing::error!(
                    "{reason}: a fencing token that cannot catch up; the task failed and is dead-lettered; {remedy}"
                ),
                other => tracing::warn!("task failed for good: {other}"),
            }
            let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
        }
        Disposition::Republish { attempt, delay } => {
            if let Failure::Stuck { reason, remedy } = failure {
                if alarms.0.ready() {
                    tracing::error!(
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        "{reason}: a permanent fault, the task is retried with backoff and dead-lettered after {} \
                         attempts; {remedy}",
                        outcome::STUCK_ATTEMPTS
                    );
                }
            }
            tokio::time::sleep(delay).await;
            republish(delivery, channel, queue, attempt).await;
        }
    }
}

/// Publishes a copy of the delivery carrying `attempts` (the attempts it
/// has had), then acks the original; if the copy is not confirmed, the
/// original goes back instead (its count not advanced, the backoff still
/// applied).
async fn republish(delivery: &lapin::message::Delivery, channel: &lapin::Channel, queue: &str, attempts: i64) {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(outcome::ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(attempts));
    let props = delivery.properties.clone().with_headers(headers);
    let requeued = match channel
        .basic_publish(
            servicekit::rabbit::task_exchange(queue).as_str().into(),
            queue.into(),
            BasicPublishOptions::default(),
            &delivery.data,
            props,
        )
        .await
    {
        Ok(confirm) => matches!(confirm.await, Ok(c) if !c.is_nack()),
        Err(_) => false,
    };
    if requeued {
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
    } else {
        let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
    }
}

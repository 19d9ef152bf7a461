//! The publishing side of RabbitMQ: one confirm-mode channel, kept open
//! across broker outages, and the one way a task is published (persistent,
//! `mandatory`, confirmed).
//!
//! Submit and the outbox drain both publish through [`publish`]; neither
//! owns the channel. [`keep_channel`] puts it in the [`ChannelSlot`] once
//! it is ready and takes it out when the connection drops, so a publisher
//! sees "RabbitMQ is away" at once instead of waiting on a dead channel.
//!
//! A node can also fail in silence: stopped, hung, cut off by a firewall
//! that drops packets. Its socket stays open and nothing closes the
//! connection until two AMQP heartbeats are missed. So a confirm that
//! does not come within [`CONFIRM_LIMIT`] is taken as that sign: the
//! publisher leaves the node for the next one of the cluster, and the
//! outbox publishes again whatever the silent node may have swallowed.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation, ConnectionStatus};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

/// The current publishing channel; `None` while RabbitMQ is away.
pub type ChannelSlot = Arc<RwLock<Option<Publishing>>>;

/// How long a publish may wait for its confirm before the node is taken
/// for silent. A quorum queue confirms once a majority has the message on
/// disk: milliseconds, or a few seconds while it elects a new leader.
pub const CONFIRM_LIMIT: Duration = Duration::from_secs(5);

/// A confirm-mode channel ready to publish on, and how a publisher that
/// waited in vain on it tells [`keep_channel`] to leave its node.
#[derive(Clone)]
pub struct Publishing {
    channel: lapin::Channel,
    /// The connection's state: a broker in a memory or disk alarm *blocks*
    /// publishers (it says so), and a missing confirm then means "wait",
    /// not "this node is gone"; the alarm is the whole cluster's.
    connection: ConnectionStatus,
    leave: CancellationToken,
}

/// Keeps one confirm-mode channel in `slot`, reconnecting with backoff
/// when the broker goes away, until `stop`. Prints `system-a connected to
/// RabbitMQ` each time the channel is (re)established. A refusal (a bad
/// password, rights this user lacks, a topology nobody provisioned) is not
/// retried: the process exits with one message that names the fix.
pub async fn keep_channel(
    broker: servicekit::rabbit::Broker,
    queue: String,
    slot: ChannelSlot,
    stop: CancellationToken,
) {
    while let Some(conn) = servicekit::rabbit::connect_with_backoff(&broker, &stop).await.unwrap_or_else(|r| r.exit()) {
        let ready = async {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            servicekit::rabbit::check_task_topology(&ch, &queue).await?;
            Ok::<_, lapin::Error>(ch)
        }
        .await;
        match ready {
            Ok(ch) => {
                let leave = CancellationToken::new();
                *slot.write().await =
                    Some(Publishing { channel: ch.clone(), connection: conn.status().clone(), leave: leave.clone() });
                tracing::info!("publishing to RabbitMQ");
                println!("system-a connected to RabbitMQ");
                // The broker closes a channel, not the connection, on a
                // refused publish: either ending means a new channel.
                while conn.status().connected() && ch.status().connected() && !stop.is_cancelled() {
                    tokio::select! {
                        _ = leave.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
                *slot.write().await = None;
                // Confirms still pending on this channel are lost with it:
                // their tasks stay in the outbox and the drain publishes
                // them again, through whichever node answers next.
                let left = broker.url().to_string();
                servicekit::rabbit::lost_connection(&broker);
                if leave.is_cancelled() {
                    tracing::warn!(
                        node = left,
                        next = broker.url(),
                        "RabbitMQ did not confirm within {CONFIRM_LIMIT:?}: leaving this node"
                    );
                } else {
                    tracing::warn!(next = broker.url(), "RabbitMQ channel lost; reconnecting");
                }
            }
            Err(e) => match broker.refused(&e) {
                Some(refused) => refused.exit(),
                None => tracing::warn!("cannot set up publishing: {e}"),
            },
        }
        // A silent node never answers the close: the connection is dropped
        // after a moment, and its heartbeat ends it for good.
        let _ = tokio::time::timeout(Duration::from_millis(300), conn.close(0, "bye".into())).await;
        if stop.is_cancelled() {
            return;
        }
    }
}

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

/// Publishes one task, persistent, mandatory, and waits for its confirm,
/// at most [`CONFIRM_LIMIT`]; past that, the node is left (see the module
/// doc). The current span's trace context goes in the message's headers
/// (`traceparent`, `tracestate`), for system-b to continue.
pub async fn publish(slot: &ChannelSlot, queue: &str, id: &str, body: &[u8]) -> Result<(), Unpublished> {
    use Unpublished::{NotSent, Unknown};
    let publishing = slot.read().await.clone().ok_or(NotSent("RabbitMQ is not connected".into()))?;
    let mut headers = lapin::types::FieldTable::default();
    servicekit::telemetry::inject(&tracing::Span::current(), &mut servicekit::telemetry::AmqpHeadersMut(&mut headers));
    let props = BasicProperties::default()
        .with_delivery_mode(2) // persistent: survives a broker restart
        .with_message_id(id.into())
        .with_content_type("application/json".into())
        .with_headers(headers);
    // The send is inside the limit too: to a stopped node, the socket's
    // buffer fills and the send itself waits.
    let confirmed = async {
        let confirm = publishing
            .channel
            .basic_publish(
                servicekit::rabbit::task_exchange(queue).as_str().into(),
                queue.into(),
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                body,
                props,
            )
            .await
            .map_err(|e| NotSent(format!("publish failed: {e}")))?;
        confirm.await.map_err(|e| Unknown(format!("the confirm was lost: {e}")))
    };
    match tokio::time::timeout(CONFIRM_LIMIT, confirmed).await {
        Err(_) if publishing.connection.blocked() => {
            Err(Unknown("RabbitMQ blocks publishers (a memory or disk alarm); waiting for it to lift".into()))
        }
        Err(_) => {
            publishing.leave.cancel();
            Err(Unknown(format!("RabbitMQ did not confirm the task within {CONFIRM_LIMIT:?}")))
        }
        Ok(Err(e)) => Err(e),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(NotSent(format!("no queue {queue:?} to route the task to"))),
        Ok(Ok(Confirmation::Nack(_))) => Err(NotSent("RabbitMQ refused the task".into())),
        Ok(Ok(Confirmation::NotRequested)) => Err(NotSent("publisher confirms are off".into())),
    }
}

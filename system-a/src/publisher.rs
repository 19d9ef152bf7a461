//! The publishing side of RabbitMQ: one confirm-mode channel, kept open
//! across broker outages, and the one way a task is published (persistent,
//! `mandatory`, confirmed).
//!
//! Submit and the outbox drain both publish through [`publish`]; neither
//! owns the channel. [`keep_channel`] puts it in the [`ChannelSlot`] once
//! it is ready and takes it out when the connection drops, so a publisher
//! sees "RabbitMQ is away" at once instead of waiting on a dead channel.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

/// The current publishing channel; `None` while RabbitMQ is away.
pub type ChannelSlot = Arc<RwLock<Option<lapin::Channel>>>;

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
                *slot.write().await = Some(ch.clone());
                tracing::info!("publishing to RabbitMQ");
                println!("system-a connected to RabbitMQ");
                // The broker closes a channel, not the connection, on a
                // refused publish: either ending means a new channel.
                while conn.status().connected() && ch.status().connected() && !stop.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                *slot.write().await = None;
                // Confirms still pending on this channel are lost with it:
                // their tasks stay in the outbox and the drain publishes
                // them again, through whichever node answers next.
                servicekit::rabbit::lost_connection(&broker);
                tracing::warn!(next = broker.url(), "RabbitMQ channel lost; reconnecting");
            }
            Err(e) => match broker.refused(&e) {
                Some(refused) => refused.exit(),
                None => tracing::warn!("cannot set up publishing: {e}"),
            },
        }
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

/// Publishes one task, persistent, mandatory, and waits for its confirm.
/// The current span's trace context goes in the message's headers
/// (`traceparent`, `tracestate`), for system-b to continue.
pub async fn publish(slot: &ChannelSlot, queue: &str, id: &str, body: &[u8]) -> Result<(), Unpublished> {
    use Unpublished::{NotSent, Unknown};
    let channel = slot.read().await.clone().ok_or(NotSent("RabbitMQ is not connected".into()))?;
    let mut headers = lapin::types::FieldTable::default();
    servicekit::telemetry::inject(&tracing::Span::current(), &mut servicekit::telemetry::AmqpHeadersMut(&mut headers));
    let props = BasicProperties::default()
        .with_delivery_mode(2) // persistent: survives a broker restart
        .with_message_id(id.into())
        .with_content_type("application/json".into())
        .with_headers(headers);
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

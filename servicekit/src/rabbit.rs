//! RabbitMQ connections that come back.
//!
//! A broker restart closes every connection; a service must reconnect
//! without hammering a broker that is still booting, so attempts back off
//! exponentially (capped), and the caller re-declares its topology and
//! re-subscribes on each new connection.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

/// Connects, retrying with exponential backoff from 100 ms to 5 s, until
/// it succeeds or `stop` is cancelled (then `None`).
pub async fn connect_with_backoff(url: &str, stop: &CancellationToken) -> Option<Connection> {
    let mut backoff = crate::fault::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let delay = match Connection::connect(url, ConnectionProperties::default()).await {
            Ok(c) => return Some(c),
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(retry_in_ms = delay.as_millis() as u64, "cannot reach RabbitMQ: {e}");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return None,
        }
    }
}

/// Declares the task queue the way every service must agree on (RabbitMQ
/// refuses a re-declaration with different arguments): durable, with
/// rejected messages dead-lettered to `<queue>.dlq` through the fanout
/// exchange `<queue>.dlx`, so a poison message is parked for a human
/// instead of looping through redeliveries.
pub async fn declare_task_queue(channel: &lapin::Channel, queue: &str) -> lapin::Result<()> {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let dlx = format!("{queue}.dlx");
    let dlq = format!("{queue}.dlq");
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel
        .exchange_declare(
            dlx.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
            FieldTable::default(),
        )
        .await?;
    channel.queue_declare(dlq.as_str().into(), durable, FieldTable::default()).await?;
    channel
        .queue_bind(
            dlq.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(dlx.as_str().into()));
    channel.queue_declare(queue.into(), durable, args).await?;
    Ok(())
}

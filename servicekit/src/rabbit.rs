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
    let mut delay = Duration::from_millis(100);
    loop {
        match Connection::connect(url, ConnectionProperties::default()).await {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::warn!(retry_in_ms = delay.as_millis() as u64, "cannot reach RabbitMQ: {e}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

//! `system-b`: scenarios 1 and 2, the worker side.
//!
//! RabbitMQ consumers (several instances) that apply tasks to shared
//! entities, one holder at a time per entity, exactly once in effect, and
//! write each result into the task's znode, which wakes system-a's watch.
//!
//! # Layout
//! - [`run`]: the service (registration, live config, the consumer loop),
//!   called by a thin `main.rs`.
//! - [`consumer`]: the broker's side: deliveries in, acks out.
//! - [`worker`]: one task: read it from its node, lock, fenced apply
//!   exactly once, report. Start here to learn the scenario.
//! - [`store`]: the shared resource: one small file per entity, fenced by
//!   token, recording the last task applied.
//! - [`metrics`]: system-b's Prometheus metrics (tasks by outcome, lock
//!   wait and hold, fenced writes, redeliveries), served on
//!   `--metrics-listen` with the common ones (`servicekit::metrics`).
//! - [`outcome`]: why a task was not done, and what that means for the
//!   message, as functions over plain values.
//!
//! # A task, step by step
//! 1. [`consumer::consume`] takes a delivery; [`task_contract::TaskMessage`]
//!    says only which task.
//! 2. [`worker::Worker::handle`] reads `/tasks/<id>`: what to apply comes
//!    from the node, never from the message.
//! 3. It takes `/locks/<entity>` ([`zk_recipes::lock`]); the token is the
//!    lock node's czxid in the fencing epoch ([`zk_recipes::fencing`]).
//! 4. [`store::Store::read`] fences older tokens out; the entity's last
//!    applied task decides between "report again", "close the previous
//!    task first" and "apply".
//! 5. [`store::Store::apply`] writes the value and the task in one write;
//!    the node is answered with a versioned setData; the lock is released;
//!    only then is the delivery acked.
//!
//! Faults are told apart ([`outcome::Failure`]): transient ones go back to
//! the queue at once; a store an operator must fix is retried with backoff
//! and then dead-lettered; a task that can never be applied fails; a
//! fencing token that cannot catch up is an alarm.
//!
//! Stdout: `system-b ready` once consuming; `config applied ...` on each
//! live config change.

pub mod consumer;
pub mod metrics;
pub mod outcome;
pub mod store;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use servicekit::CommonArgs;
use tokio_util::sync::CancellationToken;

/// system-b's flags.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "system-b", version, about = "Task worker: modifies shared entities under a fenced distributed lock")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub q: servicekit::QueueArgs,
    /// Directory of the shared entity store.
    #[arg(long, env = "STORE_DIR", default_value = "store")]
    pub store_dir: PathBuf,
    /// Unacked messages in flight per instance.
    #[arg(long, env = "PREFETCH", default_value_t = 8)]
    pub prefetch: u16,
}

/// Live settings from `<root>/config/system-b`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Simulated work time while holding the lock.
    #[serde(default)]
    pub work_ms: u64,
}

/// How long deregistering may take on the way out: the node goes with the
/// session anyway, and a stop must be quick whatever the server's state.
const DEREGISTER_LIMIT: Duration = Duration::from_millis(500);

/// Runs system-b until `stop` is cancelled: registers the instance,
/// follows its live config, and consumes tasks, reconnecting to the broker
/// whenever the connection ends.
pub async fn run(args: Args, stop: CancellationToken) -> anyhow::Result<()> {
    // The drain and the deregistration are bounded; this bounds the rest.
    servicekit::exit_after(&stop, consumer::DRAIN + DEREGISTER_LIMIT + Duration::from_millis(300));
    let instance = args.common.instance_id();
    let layout = args.common.layout();
    let store = store::Store::open(&args.store_dir).context("--store-dir")?;
    let mut metrics = servicekit::metrics::Metrics::new();
    let own = crate::metrics::Metrics::register(metrics.registry());
    let common_metrics = metrics.common.clone();
    let client = args.common.connect_zk().await?;
    metrics.serve(args.common.metrics_listen, &client, stop.clone()).await?;
    let status = servicekit::status::Status::new(serde_json::json!({"pid": std::process::id(), "queue": args.q.queue}));
    let settings =
        servicekit::live_config(&client, &layout.config(servicekit::auth::SYSTEM_B), &status, &common_metrics);
    let registration = args.common.register(&client, servicekit::auth::SYSTEM_B, &instance, &status).await?;
    let worker = Arc::new(worker::Worker {
        epoch: zk_recipes::fencing::Epoch::new(&client, layout.fencing()),
        client,
        store,
        layout,
        policy: args.common.policy(),
        settings,
        status,
        instance: instance.clone(),
        metrics: own,
    });
    let alarms = Arc::new(consumer::Alarms::default());
    let mut announced = false;
    // One connection at a time; a broker restart ends it and we come back.
    // A refusal (a bad password, rights this user lacks) is not retried:
    // it ends the service with one message that names the fix.
    let broker = args.q.broker()?;
    while let Some(conn) = servicekit::rabbit::connect_with_backoff(&broker, &stop).await? {
        let announce = || {
            if !announced {
                println!("system-b ready");
                announced = true;
            }
        };
        let consumed = consumer::consume(&conn, &args.q.queue, args.prefetch, &worker, &alarms, &stop, announce).await;
        if let Err(e) = consumed {
            if let Some(refused) = broker.refused(&e) {
                let _ = tokio::time::timeout(DEREGISTER_LIMIT, registration.deregister()).await;
                return Err(refused.into());
            }
            tracing::warn!("RabbitMQ connection ended: {e}; reconnecting");
        }
        // Deliveries not acked on this connection go back to the queue and
        // come again, to this instance or another, through any node.
        servicekit::rabbit::lost_connection(&broker);
        let _ = tokio::time::timeout(Duration::from_millis(300), conn.close(0, "bye".into())).await;
        if stop.is_cancelled() {
            break;
        }
    }
    let _ = tokio::time::timeout(DEREGISTER_LIMIT, registration.deregister()).await;
    Ok(())
}

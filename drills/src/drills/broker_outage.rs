//! `broker-outage`: RabbitMQ stops for a few seconds while clients submit.
//!
//! system-a accepts a task once its node and its outbox entry exist, which
//! needs only the coordination server; the outbox publishes it when the
//! broker is back. Promises: no submit is refused, and every task accepted
//! during the outage is published and done, exactly once.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Ctx;
use crate::workload::{self, fresh_entity, Outcome};

const CLIENTS: usize = 4;
/// Each client submits one task after another for this long.
const SUBMITTING: Duration = Duration::from_secs(14);
const OUTAGE_AT: Duration = Duration::from_secs(3);
const OUTAGE: Duration = Duration::from_secs(6);

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let entity = fresh_entity("broker");
    let system_a = ctx.system.system_a();
    let began = Instant::now();
    let clients = workload::submit_for(&system_a, &entity, CLIENTS, began, SUBMITTING);
    tokio::time::sleep(OUTAGE_AT).await;
    ctx.report.saw("stopping RabbitMQ");
    let stopped = ctx.system.stop_broker();
    let stopped_at = began.elapsed();
    tokio::time::sleep(OUTAGE).await;
    ctx.report.saw(format!("starting RabbitMQ again after {} s", OUTAGE.as_secs()));
    let started = ctx.system.start_broker();
    let back_at = began.elapsed();

    let mut outcomes = Vec::new();
    for c in clients {
        outcomes.extend(c.await.context("a client")?);
    }
    stopped.context("stopping the broker")?;
    started.context("starting the broker")?;
    let during: Vec<&Outcome> =
        outcomes.iter().filter(|(at, o)| *at + o.took >= stopped_at && *at <= back_at).map(|(_, o)| o).collect();
    let slowest = outcomes.iter().map(|(_, o)| o.took).max().unwrap_or_default();
    ctx.report.saw(format!(
        "{} tasks submitted by {CLIENTS} clients, {} of them in flight during the outage; slowest submit → result {:.1} s",
        outcomes.len(),
        during.len(),
        slowest.as_secs_f64()
    ));
    let crossed = during.len();
    workload::judge_stream(
        &mut ctx.report,
        outcomes,
        crossed,
        "the outage",
        &entity,
        "every task was published once the broker was back, and ",
    );
    Ok(())
}

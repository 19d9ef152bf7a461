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
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (a, e) = (system_a.clone(), entity.clone());
            tokio::spawn(async move {
                let mut mine: Vec<(Duration, Outcome)> = Vec::new();
                while began.elapsed() < SUBMITTING {
                    let at = began.elapsed();
                    mine.push((at, workload::add(&a, &e, 1).await));
                }
                mine
            })
        })
        .collect();
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
    let refused: Vec<&String> = outcomes.iter().filter_map(|(_, o)| o.reply.as_ref().err()).collect();
    ctx.report.check(
        refused.is_empty(),
        format!("no submit refused ({} accepted)", outcomes.len()),
        format!("{} submits failed: {:?}", refused.len(), refused.iter().take(3).collect::<Vec<_>>()),
    );
    ctx.report.check(
        !during.is_empty(),
        format!("{} tasks crossed the outage", during.len()),
        "no task was in flight during the outage: the drill proved nothing",
    );
    let all: Vec<Outcome> = outcomes.into_iter().map(|(_, o)| o).collect();
    let once = workload::exactly_once(&all, all.len());
    ctx.report.check(
        once.is_ok(),
        format!("every task was published once the broker was back, and done exactly once ({entity} = {})", all.len()),
        format!("exactly once: {}", once.err().unwrap_or_default()),
    );
    Ok(())
}

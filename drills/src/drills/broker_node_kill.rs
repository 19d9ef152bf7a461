//! `broker-node-kill`: on a RabbitMQ cluster (the compose scale-out
//! profile), the node that leads the task queue is killed -9 while clients
//! submit, and started again a few seconds later.
//!
//! The task queue is a quorum queue with a member on each of the three
//! nodes: the two left elect a new leader among themselves and keep every
//! message a publish confirm covered (a confirm means "on a majority").
//! Services connected to the killed node move to another one
//! (`servicekit::rabbit`): a publish whose confirm died with the node is
//! published again from system-a's outbox, and a delivery whose ack died
//! with it is delivered again, which system-b's exactly-once rule turns
//! into a report of the first result. Promises: no submit is refused,
//! every task is done exactly once, and the killed node rejoins the
//! cluster with its member of the queue back online.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Ctx;
use crate::observe::until;
use crate::workload::{self, fresh_entity, Outcome};

const CLIENTS: usize = 4;
/// Each client submits one task after another for this long.
const SUBMITTING: Duration = Duration::from_secs(20);
const KILL_AT: Duration = Duration::from_secs(4);
/// How long the killed node stays down before it is started again (what a
/// supervisor's restart delay and a slow boot add up to).
const DOWN: Duration = Duration::from_secs(6);
/// The task queue (the services' `TASK_QUEUE` default).
const QUEUE: &str = "tasks";

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let nodes = ctx.system.broker_nodes();
    if nodes.len() < 3 {
        bail!("broker-node-kill needs a 3-node broker cluster: run it with --compose --scale-out");
    }
    let before = ctx.system.queue_state(QUEUE)?;
    ctx.report.saw(format!(
        "the task queue `{QUEUE}` is a {} queue led by {}, members {}",
        before.kind,
        before.leader,
        before.members.join(", ")
    ));
    if before.kind != "quorum" || before.online.len() < 3 {
        bail!("the task queue is not a quorum queue with three members online: {before:?}");
    }
    let victim = service_of(&before.leader)?;
    let entity = fresh_entity("broker-node");
    let system_a = ctx.system.system_a();
    let began = Instant::now();
    let clients = workload::submit_for(&system_a, &entity, CLIENTS, began, SUBMITTING);
    tokio::time::sleep(KILL_AT).await;
    ctx.report.saw(format!("kill -9 of {victim}, the node that leads `{QUEUE}`"));
    let killed = ctx.system.kill(&victim);
    let killed_at = began.elapsed();
    tokio::time::sleep(DOWN).await;
    ctx.report.saw(format!("starting {victim} again after {} s", DOWN.as_secs()));
    let started = ctx.system.start_again(&victim);
    let back_at = began.elapsed();

    let mut outcomes = Vec::new();
    for c in clients {
        outcomes.extend(c.await.context("a client")?);
    }
    killed.with_context(|| format!("killing {victim}"))?;
    started.with_context(|| format!("starting {victim} again"))?;

    let took = |sel: &dyn Fn(Duration, &Outcome) -> bool| -> Vec<Duration> {
        let mut t: Vec<Duration> = outcomes.iter().filter(|(at, o)| sel(*at, o)).map(|(_, o)| o.took).collect();
        t.sort_unstable();
        t
    };
    let quiet = took(&|at, o| at + o.took < killed_at);
    let during = took(&|at, o| at + o.took >= killed_at && at <= back_at);
    ctx.report.saw(format!(
        "{} tasks submitted by {CLIENTS} clients; submit → result before the kill: {}; in flight from the kill \
         to the restart ({}): {}",
        outcomes.len(),
        spread(&quiet),
        during.len(),
        spread(&during)
    ));
    let crossed = during.len();
    workload::judge_stream(&mut ctx.report, outcomes, crossed, "the kill", &entity, "");

    // The node is back in the cluster, its member of the queue online.
    let rejoin = Instant::now();
    let what = format!("{victim} running in the cluster, `{QUEUE}` with three members online");
    let back = until(&what, Duration::from_secs(120), || async {
        let nodes = ctx.system.running_broker_nodes().unwrap_or_default();
        let q = ctx.system.queue_state(QUEUE).ok();
        Ok(q.filter(|q| nodes.len() == 3 && q.online.len() == 3))
    })
    .await;
    match back {
        Ok(after) => ctx.report.kept(format!(
            "{victim} rejoined: 3 nodes running, `{QUEUE}` led by {} with {} of 3 members online ({:.1} s after the \
             clients stopped)",
            after.leader,
            after.online.len(),
            rejoin.elapsed().as_secs_f64()
        )),
        Err(e) => ctx.report.broke(format!("{victim} did not rejoin: {e:#}")),
    }
    Ok(())
}

/// The compose service that runs a node: `rabbit-2@rabbitmq-2` runs in
/// `rabbitmq-2` (the compose file names each node after its service).
fn service_of(node: &str) -> Result<String> {
    match node.split_once('@') {
        Some((_, host)) if !host.is_empty() => Ok(host.to_string()),
        _ => bail!("{node:?} is not a RabbitMQ node name"),
    }
}

/// "p50 X s, p99 Y s, max Z s" of sorted durations.
fn spread(sorted: &[Duration]) -> String {
    if sorted.is_empty() {
        return "none".into();
    }
    let at = |q: f64| sorted[((sorted.len() as f64 - 1.0) * q).round() as usize].as_secs_f64();
    format!("p50 {:.2} s, p99 {:.2} s, max {:.2} s", at(0.5), at(0.99), at(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_map_to_their_services() {
        assert_eq!(service_of("rabbit-2@rabbitmq-2").ok().as_deref(), Some("rabbitmq-2"));
        assert_eq!(service_of("rabbit-1@rabbitmq").ok().as_deref(), Some("rabbitmq"));
        assert!(service_of("rabbit").is_err());
    }

    #[test]
    fn spread_reads_sorted_durations() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(spread(&d), "p50 0.05 s, p99 0.10 s, max 0.10 s");
        assert_eq!(spread(&[]), "none");
    }
}

//! `coordinator-restart`: kill -9 of the coordination server (on an
//! ensemble, its leader), which then starts again on its data.
//!
//! Sessions live in the server's durable state (the coordinator's log, an
//! ensemble's quorum), and a client reconnects within its session timeout
//! with the same session. So ephemeral nodes stay: registrations, lock
//! nodes, the active's election node. Promises: every session, a held lock
//! and the active (in the same term) survive, and no task is lost.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use servicekit::auth::{HA_WORKER, SYSTEM_A, SYSTEM_B};

use super::{restore_config, set_work_ms, Ctx};
use crate::observe::until;
use crate::workload::{self, fresh_entity};

const TASKS: usize = 4;

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    // A task holds its lock across the restart.
    let before = set_work_ms(ctx, 3000).await?;
    let result = drill(ctx).await;
    // The config write needs the server back; it is.
    restore_config(ctx, &before).await?;
    result
}

/// Every registered instance and the session that holds its node.
async fn sessions(ctx: &Ctx) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for service in [SYSTEM_A, SYSTEM_B, HA_WORKER] {
        for m in ctx.obs.members(service).await? {
            out.insert(format!("{service}/{}", m.instance), m.session);
        }
    }
    Ok(out)
}

async fn drill(ctx: &mut Ctx) -> Result<()> {
    let entity = fresh_entity("restart");
    let system_a = ctx.system.system_a();
    let held = workload::spawn_add(&system_a, &entity);
    let (holder, czxid) = ctx.obs.wait_lock_holder(&entity).await?;
    let (active, term) = ctx.obs.active().await?.context("no active ha-worker")?;
    let before = sessions(ctx).await?;
    ctx.report.saw(format!(
        "{} sessions registered; {holder} holds {entity}'s lock (node czxid {czxid}); {} is active with term {term}",
        before.len(),
        active.instance
    ));

    let killed = Instant::now();
    let what = ctx.system.restart_coordination().await?;
    ctx.report.saw(format!("killed {what} with SIGKILL and started it again"));
    // Tasks submitted while the server is away.
    let more: Vec<_> = (1..TASKS).map(|_| workload::spawn_add(&system_a, &entity)).collect();
    let after = until("every session back", Duration::from_secs(60), || async {
        let now = sessions(ctx).await?;
        Ok((now.len() >= before.len()).then_some(now))
    })
    .await?;
    ctx.report.saw(format!(
        "the server answers again; every instance registered {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    ));
    let changed: Vec<&String> = before.iter().filter(|(k, v)| after.get(*k) != Some(v)).map(|(k, _)| k).collect();
    ctx.report.check(
        changed.is_empty(),
        format!("all {} sessions survived (each registration held by the same session)", before.len()),
        format!("sessions lost across the restart: {changed:?}"),
    );
    let mut outcomes = vec![held.await.context("the held task")?];
    for m in more {
        outcomes.push(m.await.context("a task")?);
    }
    let first = outcomes[0].reply.as_ref().ok().map(|r| r.token);
    ctx.report.check(
        first == Some(czxid),
        format!("{holder}'s lock survived: its task was applied under the same lock node (token zxid {czxid})"),
        format!("the task held across the restart was applied with token zxid {first:?}, not {czxid}"),
    );
    // The active suspends while disconnected and resumes its term when it
    // finds its session alive: no failover for a server restart.
    let now = ctx.obs.active().await?;
    ctx.report.check(
        now.as_ref().is_some_and(|(m, t)| m.instance == active.instance && *t == term),
        format!("{} is still active with term {term}", active.instance),
        format!("the active changed across the restart: {:?}", now.map(|(m, t)| (m.instance, t.to_string()))),
    );
    let once = workload::exactly_once(&outcomes, TASKS);
    ctx.report.check(
        once.is_ok(),
        format!("no task lost: all {TASKS} done exactly once ({entity} = {TASKS})"),
        format!("exactly once: {}", once.err().unwrap_or_default()),
    );
    Ok(())
}

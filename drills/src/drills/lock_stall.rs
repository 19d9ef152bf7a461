//! `lock-stall`: the lock holder freezes mid-task, past its session.
//!
//! Kleppmann's timeline, for real: the holder took the lock with token N
//! and read the entity; it freezes (SIGSTOP: a GC pause, a stalled VM); its
//! session expires and the lock passes to another instance, whose token M
//! is newer and which applies its own task. When the frozen holder wakes it
//! goes on with its write, believing it still holds the lock: the store
//! refuses token N, having seen M. Promise: the stale write is refused and
//! the entity's value is exact.

use std::time::Duration;

use anyhow::{Context, Result};
use servicekit::auth::SYSTEM_B;

use super::{restore_config, set_work_ms, Ctx};
use crate::observe::{parse_token, until};
use crate::system::process_of;
use crate::workload::{self, fresh_entity};

/// Tasks on the entity: the frozen holder's, and two that proceed without it.
const TASKS: usize = 3;

/// The work time of each attempt: long enough that the holder is caught
/// between its read and its write. A freeze lands late when the machine is
/// loaded (`compose pause` took over 3 s on one): the task was over by
/// then and there was nothing to catch, so the drill tries again on a
/// fresh entity with more time.
const WORK_MS: [u64; 3] = [3000, 8000, 20000];

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let mut before = None;
    let mut result = Ok(false);
    for ms in WORK_MS {
        let previous = set_work_ms(ctx, ms).await?;
        before.get_or_insert(previous);
        result = drill(ctx).await;
        if !matches!(result, Ok(false)) {
            break;
        }
    }
    if let Some(before) = before {
        restore_config(ctx, &before).await?;
    }
    match result? {
        true => Ok(()),
        false => anyhow::bail!("the freeze landed after the task ended {} times: nothing was caught", WORK_MS.len()),
    }
}

/// One attempt: `Ok(false)` if the freeze came too late to catch the holder
/// mid-task (judged nothing).
async fn drill(ctx: &mut Ctx) -> Result<bool> {
    let entity = fresh_entity("stall");
    let system_a = ctx.system.system_a();
    let first = workload::spawn_add(&system_a, &entity);
    let (holder, czxid) = ctx.obs.wait_lock_holder(&entity).await?;
    let epoch = ctx.obs.epoch().await?;
    let ours = zk_recipes::fencing::Token::new(epoch, czxid);
    let process = process_of(&holder).with_context(|| format!("no process runs instance {holder}"))?;
    let refusals_before = ctx.obs.member(SYSTEM_B, &holder).await?.map_or(0, |m| m.fenced_count());
    ctx.report.saw(format!("{holder} holds {entity}'s lock with token {ours}, mid-task: SIGSTOP {process}"));
    ctx.system.pause(&process)?;
    if ctx.obs.lock_holder(&entity).await? != Some((holder.clone(), czxid)) {
        ctx.system.resume(&process)?;
        ctx.report.saw(format!("the freeze landed after {holder} had released the lock: SIGCONT, and again"));
        let _ = first.await;
        return Ok(false);
    }

    // Others proceed: two more tasks on the same entity.
    let others: Vec<_> = (1..TASKS).map(|_| workload::spawn_add(&system_a, &entity)).collect();
    let resumed = async {
        // The server expires the frozen holder's session: its registration
        // and its lock node go.
        until(&format!("{holder}'s session expiring"), Duration::from_secs(60), || async {
            Ok(ctx.obs.member(SYSTEM_B, &holder).await?.is_none().then_some(()))
        })
        .await?;
        ctx.report.saw(format!("{holder}'s session expired: its lock node is gone"));
        let (next, next_czxid) = until("the lock passing to another instance", Duration::from_secs(30), || async {
            Ok(ctx.obs.lock_holder(&entity).await?.filter(|(h, _)| *h != holder))
        })
        .await?;
        ctx.report.saw(format!(
            "{next} holds the lock with token {}",
            zk_recipes::fencing::Token::new(ctx.obs.epoch().await?, next_czxid)
        ));
        // Wake the stale holder once the newer one has read the entity (its
        // read raises the store's bar) and had time to apply.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        anyhow::Ok(())
    }
    .await;
    ctx.report.saw(format!("SIGCONT {process}"));
    ctx.system.resume(&process)?;
    resumed?;

    let refusal = until(&format!("{holder} reporting its refused write"), Duration::from_secs(30), || async {
        Ok(ctx.obs.member(SYSTEM_B, &holder).await?.filter(|m| m.fenced_count() > refusals_before))
    })
    .await;
    match refusal.as_ref().ok().and_then(|m| m.fenced()) {
        Some((_, what, token, newer)) => {
            let (t, n) = (parse_token(&token), parse_token(&newer));
            ctx.report.check(
                what == entity && t == Some(ours) && n.is_some() && n > t,
                format!("{holder}'s stale write to {entity} with token {token} was refused by the store, which had seen {newer}"),
                format!("{holder} reports a refusal of {what} with token {token} (newer {newer}), not of {entity} with {ours}"),
            );
        }
        None => ctx.report.broke(format!(
            "{holder} woke and reported no refused write: its write with token {ours} was not fenced off ({})",
            refusal.err().map(|e| e.to_string()).unwrap_or_default()
        )),
    }

    let mut outcomes = vec![first.await.context("the first task")?];
    for o in others {
        outcomes.push(o.await.context("a task")?);
    }
    for o in &outcomes {
        if let Ok(r) = &o.reply {
            ctx.report
                .saw(format!("task {}: {} = {} by {} (token zxid {})", r.task_id, entity, r.value, r.worker, r.token));
        }
    }
    let once = workload::exactly_once(&outcomes, TASKS);
    ctx.report.check(
        once.is_ok(),
        format!("{entity}'s value is exact: {TASKS} tasks, each applied once"),
        format!("exactly once: {}", once.err().unwrap_or_default()),
    );
    Ok(true)
}

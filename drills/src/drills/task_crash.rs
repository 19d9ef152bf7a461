//! `task-crash`: kill -9 the system-b that is working on a task.
//!
//! The task's message is unacked when its consumer dies, so RabbitMQ
//! delivers it again (to another instance, or to the same one restarted);
//! the task node, the lock and the store's record of the last applied task
//! make the second delivery apply it once. Promise: the task is done
//! exactly once.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use servicekit::auth::SYSTEM_B;

use super::{restore_config, set_work_ms, Ctx};
use crate::observe::until;
use crate::system::process_of;
use crate::workload::{self, fresh_entity};

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let before = set_work_ms(ctx, 1500).await?;
    let result = drill(ctx).await;
    restore_config(ctx, &before).await?;
    result
}

async fn drill(ctx: &mut Ctx) -> Result<()> {
    let entity = fresh_entity("crash");
    let task = workload::spawn_add(&ctx.system.system_a(), &entity);
    let (victim, _) = ctx.obs.wait_lock_holder(&entity).await?;
    let process = process_of(&victim).with_context(|| format!("no process runs instance {victim}"))?;
    let session_before = ctx.obs.member(SYSTEM_B, &victim).await?.map(|m| m.session);
    ctx.report.saw(format!("{victim} holds {entity}'s lock, mid-task: kill -9 {process}"));
    let killed = Instant::now();
    ctx.system.kill(&process)?;
    ctx.system.start_again(&process)?;

    let outcome = task.await.context("the submitting task")?;
    let took = killed.elapsed();
    match &outcome.reply {
        Ok(r) => ctx.report.saw(format!(
            "task {} {}: value {} by {} (lock token {}), {:.1} s after the kill, {:.1} s after its submit",
            r.task_id,
            r.status,
            r.value,
            r.worker,
            r.token,
            took.as_secs_f64(),
            outcome.took.as_secs_f64()
        )),
        Err(e) => ctx.report.saw(format!("the task has no result: {e}")),
    }
    let once = workload::exactly_once(std::slice::from_ref(&outcome), 1);
    ctx.report.check(
        once.is_ok(),
        format!("the task in flight on {victim} was done exactly once ({entity} = 1)"),
        format!("exactly once: {}", once.err().unwrap_or_default()),
    );

    // The supervisor's part: the killed instance is back, on a new session.
    let back = until(&format!("{victim} registered again"), Duration::from_secs(60), || async {
        let m = ctx.obs.member(SYSTEM_B, &victim).await?;
        Ok(m.filter(|m| Some(m.session) != session_before).map(|_| ()))
    })
    .await;
    ctx.report.check(
        back.is_ok(),
        format!("{victim} restarted and registered on a new session"),
        format!("{victim} did not come back: {}", back.err().map(|e| e.to_string()).unwrap_or_default()),
    );
    Ok(())
}

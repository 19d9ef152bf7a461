//! The drills, one module each. Every drill has the same shape: make sure
//! the system is up, cause one fault the way production causes it, drive
//! the scenario through it, then judge each promise from evidence anyone
//! could read.

mod active;
mod broker_node_kill;
mod broker_outage;
mod config_change;
mod coordinator_restart;
mod lock_stall;
mod task_crash;

use std::time::Duration;

use anyhow::Result;
use servicekit::auth::{HA_WORKER, SYSTEM_A, SYSTEM_B};

use crate::observe::{until, Observer};
use crate::report::Report;
use crate::system::System;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Drill {
    /// kill -9 a system-b mid-task: the task is done exactly once.
    TaskCrash,
    /// Pause the lock holder past its session: its stale write is refused.
    LockStall,
    /// A new config version: every live instance applies it.
    ConfigChange,
    /// kill -9 the active ha-worker: the standby takes over.
    ActiveCrash,
    /// Pause the active ha-worker past its session: its old term is refused.
    ActivePause,
    /// RabbitMQ stopped under submits: nothing refused, nothing lost.
    BrokerOutage,
    /// kill -9 and restart of the coordination server: sessions survive.
    CoordinatorRestart,
    /// kill -9 the broker node leading the task queue (a 3-node cluster):
    /// nothing refused, nothing lost, the node rejoins.
    BrokerNodeKill,
}

impl Drill {
    pub fn name(self) -> &'static str {
        match self {
            Drill::TaskCrash => "task-crash",
            Drill::LockStall => "lock-stall",
            Drill::ConfigChange => "config-change",
            Drill::ActiveCrash => "active-crash",
            Drill::ActivePause => "active-pause",
            Drill::BrokerOutage => "broker-outage",
            Drill::CoordinatorRestart => "coordinator-restart",
            Drill::BrokerNodeKill => "broker-node-kill",
        }
    }

    pub const ALL: [Drill; 8] = [
        Drill::TaskCrash,
        Drill::LockStall,
        Drill::ConfigChange,
        Drill::ActiveCrash,
        Drill::ActivePause,
        Drill::BrokerOutage,
        Drill::CoordinatorRestart,
        Drill::BrokerNodeKill,
    ];
}

/// What every drill works with.
pub struct Ctx {
    pub system: System,
    pub obs: Observer,
    pub report: Report,
}

/// Runs `drill` on `system`; true when every promise held.
pub async fn run(drill: Drill, system: System) -> bool {
    let report = Report::new(drill.name());
    let operator = match system.operator_auth() {
        Ok(a) => a,
        Err(e) => return report.abort(format!("{e:#}")),
    };
    let obs = match Observer::connect(&system.zk(), &operator).await {
        Ok(o) => o,
        Err(e) => return report.abort(format!("{e:#}")),
    };
    let mut ctx = Ctx { system, obs, report };
    if let Err(e) = system_is_up(&ctx).await {
        return ctx.report.abort(format!("the system is not up: {e:#}"));
    }
    let ran = match drill {
        Drill::TaskCrash => task_crash::run(&mut ctx).await,
        Drill::LockStall => lock_stall::run(&mut ctx).await,
        Drill::ConfigChange => config_change::run(&mut ctx).await,
        Drill::ActiveCrash => active::crash(&mut ctx).await,
        Drill::ActivePause => active::pause(&mut ctx).await,
        Drill::BrokerOutage => broker_outage::run(&mut ctx).await,
        Drill::CoordinatorRestart => coordinator_restart::run(&mut ctx).await,
        Drill::BrokerNodeKill => broker_node_kill::run(&mut ctx).await,
    };
    match ran {
        Ok(()) => ctx.report.verdict(),
        Err(e) => ctx.report.abort(format!("{e:#}")),
    }
}

/// Every service registered and an active ha-worker: a drill on a system
/// still starting (or still healing from the last drill) would judge the
/// start-up, not the fault.
async fn system_is_up(ctx: &Ctx) -> Result<()> {
    until("system-a, three system-b, two ha-workers and an active one", Duration::from_secs(90), || async {
        let a = ctx.obs.members(SYSTEM_A).await?.len();
        let b = ctx.obs.members(SYSTEM_B).await?.len();
        let ha = ctx.obs.members(HA_WORKER).await?;
        let active = ha.iter().filter(|m| m.term().is_some()).count();
        Ok((a >= 1 && b >= 3 && ha.len() >= 2 && active == 1).then_some(()))
    })
    .await
}

/// Sets system-b's simulated work time for the drill (long enough to
/// catch a holder mid-task), returning the config to put back.
async fn set_work_ms(ctx: &Ctx, ms: u64) -> Result<Vec<u8>> {
    let path = ctx.obs.layout.config(SYSTEM_B);
    let before = ctx.obs.get(&path).await?.map(|(d, _, _)| d).unwrap_or_default();
    let mut settings: serde_json::Value = serde_json::from_slice(&before).unwrap_or_else(|_| serde_json::json!({}));
    if !settings.is_object() {
        settings = serde_json::json!({});
    }
    settings["work_ms"] = ms.into();
    let (version, _) = ctx.obs.set(&path, settings.to_string().as_bytes()).await?;
    // Every instance runs with it before the drill goes on.
    until("every system-b applying the drill's work time", Duration::from_secs(20), || async {
        let members = ctx.obs.members(SYSTEM_B).await?;
        Ok(members.iter().all(|m| m.config_version() >= Some(version)).then_some(()))
    })
    .await?;
    ctx.report.saw(format!("system-b's work time set to {ms} ms for the drill"));
    Ok(before)
}

async fn restore_config(ctx: &Ctx, before: &[u8]) -> Result<()> {
    ctx.obs.set(&ctx.obs.layout.config(SYSTEM_B), before).await.map(|_| ())
}

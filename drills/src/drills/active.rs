//! `active-crash` and `active-pause`: the active ha-worker dies, or
//! freezes past its session.
//!
//! Either way its election node goes with its session and the standby,
//! watching the node before its own, becomes active with a newer term. A
//! dead worker writes nothing more; a frozen one wakes believing it is
//! still active and writes with its old term, which the journal refuses
//! because it has seen the newer one. Promises: the standby takes over,
//! and the journal's terms never go back (two are never active at once).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use ha_worker::journal::Entry;
use servicekit::auth::HA_WORKER;
use zk_recipes::fencing::Token;

use super::Ctx;
use crate::observe::{now_ms, until, Member};
use crate::system::process_of;

/// The active worker now, and the process that runs it.
async fn the_active(ctx: &Ctx) -> Result<(Member, Token, String)> {
    let (active, term) = ctx.obs.active().await?.context("no ha-worker is active")?;
    let process = process_of(&active.instance).with_context(|| format!("no process runs {}", active.instance))?;
    Ok((active, term, process))
}

/// Waits for another worker to lead a newer term; reports when it began.
async fn takeover(ctx: &mut Ctx, old: &Member, term: Token, lost_at: i64) -> Result<(Member, Token)> {
    let (next, newer) = until("the standby taking over", Duration::from_secs(60), || async {
        Ok(ctx.obs.active().await?.filter(|(m, t)| m.instance != old.instance && *t > term))
    })
    .await?;
    // The registration's mtime is when the new active reported its term,
    // by the server's clock.
    ctx.report.kept(format!(
        "{} took over with term {newer} (after {}'s {term}), {} ms after {} was lost",
        next.instance,
        old.instance,
        (next.mtime - lost_at).max(0),
        old.instance
    ));
    Ok((next, newer))
}

/// The journal's terms, in the order written, never go back.
fn judge_journal(ctx: &mut Ctx) -> Result<Vec<Entry>> {
    let text = ctx.system.journal()?;
    let entries: Vec<Entry> = text.lines().filter_map(Entry::parse).collect();
    if entries.is_empty() {
        bail!("the journal is empty");
    }
    let back = entries.windows(2).find(|w| w[1].token < w[0].token);
    match back {
        None => ctx.report.kept(format!("the journal's {} entries never go back a term", entries.len())),
        Some(w) => ctx.report.broke(format!(
            "the journal went back a term: {} by {} after {} by {}",
            w[1].token, w[1].instance, w[0].token, w[0].instance
        )),
    }
    Ok(entries)
}

pub async fn crash(ctx: &mut Ctx) -> Result<()> {
    let (active, term, process) = the_active(ctx).await?;
    ctx.report.saw(format!("{} is active with term {term}: kill -9 {process}", active.instance));
    let killed_at = now_ms();
    ctx.system.kill(&process)?;
    ctx.system.start_again(&process)?;
    let (_, newer) = takeover(ctx, &active, term, killed_at).await?;
    // The new term has written, and the dead worker's restart stands by.
    until("the new term's first journal write", Duration::from_secs(20), || async {
        let text = ctx.system.journal()?;
        Ok(text.lines().filter_map(Entry::parse).any(|e| e.token == newer).then_some(()))
    })
    .await?;
    judge_journal(ctx)?;
    let back = until(&format!("{} back as a standby", active.instance), Duration::from_secs(60), || async {
        Ok(ctx
            .obs
            .member(HA_WORKER, &active.instance)
            .await?
            .filter(|m| m.session != active.session && m.term().is_none()))
    })
    .await;
    ctx.report.check(
        back.is_ok(),
        format!("{} restarted and stands by", active.instance),
        format!("{} did not come back as a standby", active.instance),
    );
    Ok(())
}

pub async fn pause(ctx: &mut Ctx) -> Result<()> {
    let (active, term, process) = the_active(ctx).await?;
    let refusals_before = active.fenced_count();
    ctx.report.saw(format!("{} is active with term {term}: SIGSTOP {process}", active.instance));
    ctx.system.pause(&process)?;
    let taken = async {
        let expired = until(&format!("{}'s session expiring", active.instance), Duration::from_secs(60), || async {
            Ok(ctx.obs.member(HA_WORKER, &active.instance).await?.is_none().then(now_ms))
        })
        .await?;
        ctx.report.saw(format!("{}'s session expired while it was frozen", active.instance));
        let (_, newer) = takeover(ctx, &active, term, expired).await?;
        until("the new term's first journal write", Duration::from_secs(20), || async {
            let text = ctx.system.journal()?;
            Ok(text.lines().filter_map(Entry::parse).any(|e| e.token == newer).then_some(()))
        })
        .await?;
        ctx.report.saw(format!("the journal has term {newer}'s writes"));
        anyhow::Ok(newer)
    }
    .await;
    ctx.report.saw(format!("SIGCONT {process}"));
    ctx.system.resume(&process)?;
    let newer = taken?;

    let refusal =
        until(&format!("{} reporting its refused write", active.instance), Duration::from_secs(30), || async {
            Ok(ctx.obs.member(HA_WORKER, &active.instance).await?.filter(|m| m.fenced_count() > refusals_before))
        })
        .await;
    match refusal.as_ref().ok().and_then(|m| m.fenced()) {
        Some((_, what, token, seen)) => ctx.report.check(
            what == "journal" && token == term.to_string(),
            format!("{} woke and wrote with term {token}: the journal refused it, having seen {seen}", active.instance),
            format!("{} reports a refusal of {what} with {token}, not of the journal with {term}", active.instance),
        ),
        None => ctx.report.broke(format!(
            "{} woke and reported no refused write: its term {term} was not fenced off",
            active.instance
        )),
    }
    judge_journal(ctx)?;
    let still = ctx.obs.active().await?;
    ctx.report.check(
        still.as_ref().is_some_and(|(m, t)| m.instance != active.instance && *t >= newer),
        format!("one active worker after the wake: not {}", active.instance),
        format!("after the wake the active is {:?}", still.map(|(m, t)| (m.instance, t.to_string()))),
    );
    Ok(())
}

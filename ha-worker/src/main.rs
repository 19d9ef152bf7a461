//! `ha-worker`: scenario 4, active/standby.
//!
//! Every instance campaigns in the election at `<root>/ha/<group>`; the
//! leader is active and appends a line per interval to a journal, stamped
//! with its term's fencing token; the others stand by. The rules that keep
//! two actives from ever interleaving their work:
//!
//! - the active stops the moment its connection drops (SUSPENDED), which
//!   it notices within two thirds of the session timeout: before the
//!   server can expire the session and elect someone else;
//! - if it could not notice (it was paused), the journal refuses its
//!   older token when it resumes;
//! - a graceful stop (SIGTERM) deletes the election node, so a standby
//!   takes over at once rather than after a session timeout.
//!
//! Stdout lines, for tests and operators: `ha-worker standby`,
//! `ha-worker active term=<token>`, `ha-worker stepped down`,
//! `ha-worker fenced`, `ha-worker journal unusable` (a permanent fault: out of
//! the election until fixed), `ha-worker journal usable again`.

mod journal;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use servicekit::CommonArgs;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use zk_recipes::election::Election;
use zk_recipes::registry::Registration;
use zk_recipes::session::Client;

#[derive(Parser, Debug)]
#[command(name = "ha-worker", version, about = "Active/standby worker under leader election")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Election group: instances in the same group back each other up.
    #[arg(long, env = "HA_GROUP", default_value = "workers")]
    group: String,
    /// The fenced journal the active writes to.
    #[arg(long, env = "HA_JOURNAL", default_value = "ha-journal.log")]
    journal: PathBuf,
    /// Work interval when /config/ha-worker does not set one.
    #[arg(long, env = "HA_INTERVAL_MS", default_value_t = 500)]
    interval_ms: u64,
}

/// Live settings from `<root>/config/ha-worker`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Settings {
    interval_ms: Option<u64>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    servicekit::telemetry::init(args.common.log_json);
    if let Err(e) = run(args).await {
        eprintln!("ha-worker: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let instance = args.common.instance_id();
    let stop = servicekit::shutdown_token();
    let client = args.common.connect_zk().await?;
    let meta = serde_json::json!({"pid": std::process::id(), "group": args.group}).to_string();
    let registration = args.common.register(&client, "ha-worker", &instance, meta.as_bytes()).await?;
    let settings: watch::Receiver<Settings> = servicekit::live_config(&client, &args.common.path("/config/ha-worker"));
    let journal = journal::Journal::new(&args.journal);
    let election = Election::new(&client, args.common.path(&format!("/ha/{}", args.group)), instance.clone())
        .with_acl(args.common.policy().ha_group());
    let span = tracing::info_span!("ha", instance = %instance, group = %args.group);
    // Instrumented, not entered: a guard held across awaits would leave the
    // span entered on this thread for whatever else runs on it meanwhile.
    stand(client, stop, election, settings, journal, instance, args, registration).instrument(span).await
}

/// Stands in the election until stopped: standby until elected, active
/// until the term ends, and again.
#[allow(clippy::too_many_arguments)]
async fn stand(
    client: Client,
    stop: CancellationToken,
    election: Election,
    settings: watch::Receiver<Settings>,
    journal: journal::Journal,
    instance: String,
    args: Args,
    registration: Registration,
) -> anyhow::Result<()> {
    // A journal it cannot write is not a reason to hand leadership back and
    // forth: a worker that would win a term only to resign it stays out of
    // the election until the journal is usable again.
    let mut backoff = servicekit::fault::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let alarm = servicekit::fault::Throttle::new(Duration::from_secs(30));
    let mut aside = false;
    loop {
        if let Err(e) = journal.check() {
            if e.is_permanent() {
                aside = true;
                if !step_aside(&e, &mut backoff, &alarm, &stop).await {
                    break;
                }
                continue;
            }
        }
        if std::mem::take(&mut aside) {
            backoff.reset();
            alarm.clear();
            println!("ha-worker journal usable again");
            tracing::info!(journal = %journal.path().display(), "journal usable again: rejoining the election");
        }
        if !client.is_live() {
            tokio::select! {
                _ = client.wait_live(Duration::from_secs(3600)) => {}
                _ = stop.cancelled() => break,
            }
        }
        let leadership = tokio::select! {
            // "standby" once our candidate node exists, not before: only
            // then does a failover of the active find us in line.
            l = election.campaign_then(|| println!("ha-worker standby")) => l,
            _ = stop.cancelled() => break,
        };
        let leadership = match leadership {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("campaign failed ({e:?}); campaigning again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let token = leadership.token();
        println!("ha-worker active term={token}");
        tracing::info!(term = token, "active");
        let mut lost = leadership.lost();
        let mut seq = 0u64;
        loop {
            let interval = Duration::from_millis(settings.borrow().interval_ms.unwrap_or(args.interval_ms));
            tokio::select! {
                _ = stop.cancelled() => {
                    // Hand over now: the standby must not wait a session
                    // timeout. Bounded: if the server is unreachable, the
                    // session's expiry hands over instead.
                    let _ = tokio::time::timeout(Duration::from_secs(3), leadership.resign()).await;
                    registration.deregister().await;
                    println!("ha-worker resigned");
                    return Ok(());
                }
                _ = lost.wait_for(|l| *l) => {
                    println!("ha-worker stepped down");
                    tracing::warn!(term = token, "connection lost: stepped down");
                    // If the session survives, our node would stay first in
                    // line with nobody acting on it: delete it once we can.
                    leadership.resign().await;
                    break;
                }
                _ = tokio::time::sleep(interval) => {
                    // Checked again right before the write: a pause may
                    // have happened between the timer and here.
                    if leadership.is_lost() {
                        continue;
                    }
                    match journal.append(token, &instance, seq) {
                        Ok(()) => seq += 1,
                        Err(journal::JournalError::Fenced { ours, highest }) => {
                            println!("ha-worker fenced term={ours} newer={highest}");
                            tracing::warn!(term = ours, newer = highest, "fenced by a newer term: stepping down");
                            leadership.resign().await;
                            break;
                        }
                        Err(e) => {
                            tracing::error!("journal write failed: {e}; stepping down");
                            leadership.resign().await;
                            // The loop's check keeps us out of the election
                            // while the fault is permanent.
                            break;
                        }
                    }
                }
            }
        }
    }
    registration.deregister().await;
    Ok(())
}

/// Logs a permanent journal fault (at most once per alarm period, naming
/// the path and the fix) and waits one backoff step out of the election.
/// False if the worker was told to stop meanwhile.
async fn step_aside(
    e: &journal::JournalError,
    backoff: &mut servicekit::fault::Backoff,
    alarm: &servicekit::fault::Throttle,
    stop: &tokio_util::sync::CancellationToken,
) -> bool {
    let delay = backoff.next_delay();
    if alarm.ready() {
        println!("ha-worker journal unusable");
        tracing::error!(
            retry_in_ms = delay.as_millis() as u64,
            "{e}: a permanent fault, staying out of the election until it is fixed; {}",
            e.remedy()
        );
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stop.cancelled() => false,
    }
}

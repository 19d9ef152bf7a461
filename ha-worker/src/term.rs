//! One worker's life in the election: stand by, lead a term, step down,
//! and again, until stopped.
//!
//! ```text
//!   ┌─▶ journal usable? ──no──▶ aside (backoff, ERROR) ─┐
//!   │        │ yes                                        │
//!   │   campaign (/ha/<group>, "standby" once in line) ◀──┘
//!   │        │ first in line
//!   │   active: every interval, journal.append(token)
//!   │        ├─ connection lost ──────────────▶ suspended: no writes
//!   │        │     ├─ back, our node still there ─▶ resumed, same term
//!   │        │     └─ back, session gone ─────────▶ stepped down ─┐
//!   │        ├─ fenced, no longer leader ─────▶ stepped down ─┤
//!   │        ├─ fenced, still leader ─────────▶ advance the epoch, go on
//!   │        ├─ fenced after MAX_ADVANCES ────▶ fencing alarm, aside
//!   │        └─ stop ─────────────────────────▶ resign (bounded), exit
//!   └────────────────────────────────────────────────────────────┘
//! ```
//!
//! **Suspended, not resigned, while disconnected.** A worker whose
//! connection drops cannot tell whether its session will outlive the
//! outage, so it stops writing at once, well before the server could
//! expire it and let a standby in. If it comes back to the same session
//! (its election node is still there: a write to it says so), it resumes
//! its term: a server restart or a network blip costs no failover. If the
//! session is gone, a standby leads and it stands by again. As in Curator,
//! where a leader suspends on SUSPENDED and gives up on LOST.
//!
//! The decisions are functions over plain values ([`on_append_error`],
//! [`zk_recipes::fencing::after_refusal`]), tested without a server.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zk_recipes::election::{Election, Leadership};
use zk_recipes::fencing::{self, Epoch, Refusal, Token};
use zk_recipes::session::{Client, Session};

use crate::journal::{Journal, JournalError};
use crate::Settings;

/// What a worker stands with.
pub struct Stand {
    pub client: Client,
    pub election: Election,
    pub journal: Journal,
    pub epoch: Epoch,
    pub settings: watch::Receiver<Settings>,
    pub default_interval: Duration,
    pub instance: String,
    /// What this worker says about itself in its registration node: its
    /// term while active, and a journal write refused by token.
    pub status: servicekit::status::Status,
    pub metrics: crate::metrics::Metrics,
}

/// Why a worker stays out of the election for now.
enum Aside {
    /// The journal cannot be written until an operator acts.
    Journal,
    /// The journal has seen a term no advance of the epoch could pass:
    /// rejoin once the epoch is past `highest`'s (an operator set it).
    Fencing { highest: Token },
    /// The fencing epoch cannot be read (damaged, or refused to us): no
    /// term can have a token until an operator fixes it.
    Epoch,
}

/// How a term ended.
enum TermEnd {
    /// Told to stop (at that instant): resigned, exit.
    Stopped(Instant),
    /// Stepped down; campaign again.
    SteppedDown,
    /// Out of the election until the fault is fixed.
    Aside(Aside),
}

/// What an active worker does when the journal refuses a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAppendError {
    /// A newer term wrote, or so it seems: ask the server whether we still
    /// lead (see [`zk_recipes::fencing`]).
    Confirm,
    /// A fault only an operator can fix: resign and stay out.
    StepAside,
    /// A fault that may heal: resign, let another try (or us again).
    StepDown,
}

pub fn on_append_error(e: &JournalError) -> OnAppendError {
    match e {
        JournalError::Fenced { .. } => OnAppendError::Confirm,
        e if e.is_permanent() => OnAppendError::StepAside,
        _ => OnAppendError::StepDown,
    }
}

impl Stand {
    /// Stands in the election until `stop`; returns when the stop was
    /// asked, so the caller can bound what is left of the way out.
    pub async fn until(&self, stop: &CancellationToken) -> Instant {
        // A worker that would win a term only to resign it stays out of the
        // election until its fault is fixed, instead of handing leadership
        // back and forth.
        let mut backoff = servicekit::fault::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let alarm = servicekit::fault::Throttle::new(Duration::from_secs(30));
        let mut aside: Option<Aside> = None;
        loop {
            if let Some(why) = &aside {
                if self.still_aside(why, &alarm).await {
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = stop.cancelled() => return Instant::now(),
                    }
                }
                match aside.take() {
                    Some(Aside::Fencing { .. }) => println!("ha-worker fencing epoch past the journal again"),
                    Some(Aside::Epoch) => println!("ha-worker fencing epoch readable again"),
                    _ => println!("ha-worker journal usable again"),
                }
                backoff.reset();
                alarm.clear();
                tracing::info!(journal = %self.journal.path().display(), "usable again: rejoining the election");
            }
            if let Err(e) = self.journal.check() {
                if e.is_permanent() {
                    aside = Some(Aside::Journal);
                    continue;
                }
            }
            if !self.client.is_live() {
                tokio::select! {
                    _ = self.client.wait_live(Duration::from_secs(3600)) => {}
                    _ = stop.cancelled() => return Instant::now(),
                }
            }
            // Not raced against the stop: the campaign sees the stop itself,
            // where none of its requests is in flight (`campaign_until`).
            // "standby" once our candidate node exists, not before: only
            // then does a failover of the active find us in line.
            let leadership = match self.election.campaign_until(|| println!("ha-worker standby"), stop).await {
                Ok(Some(l)) => l,
                Ok(None) => return Instant::now(),
                Err(e) => {
                    tracing::warn!("campaign failed ({e:?}); campaigning again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        _ = stop.cancelled() => return Instant::now(),
                    }
                }
            };
            match self.lead(leadership, stop).await {
                TermEnd::Stopped(asked) => return asked,
                TermEnd::SteppedDown => {}
                TermEnd::Aside(why) => aside = Some(why),
            }
        }
    }

    /// Whether the reason to stay aside still holds; logs it (throttled).
    async fn still_aside(&self, why: &Aside, alarm: &servicekit::fault::Throttle) -> bool {
        match why {
            Aside::Journal => match self.journal.check() {
                Err(e) if e.is_permanent() => {
                    if alarm.ready() {
                        println!("ha-worker journal unusable");
                        tracing::error!(
                            "{e}: a permanent fault, staying out of the election until it is fixed; {}",
                            e.remedy()
                        );
                    }
                    true
                }
                _ => false,
            },
            Aside::Fencing { highest } => match self.epoch.current().await {
                Ok(epoch) if epoch > highest.epoch => false,
                _ => {
                    if alarm.ready() {
                        println!("ha-worker fencing alarm");
                        tracing::error!(
                            "the journal {} has seen term {highest}, which no term of this coordination service can \
                             pass: staying out of the election; check that only one coordination service serves \
                             this journal, then set the epoch at {} above {} as the operator",
                            self.journal.path().display(),
                            self.epoch.path(),
                            highest.epoch
                        );
                    }
                    true
                }
            },
            Aside::Epoch => match self.epoch.current().await {
                Err(e) if !e.is_transient() => {
                    if alarm.ready() {
                        println!("ha-worker fencing epoch unusable");
                        tracing::error!(
                            "{e}: no term can be fenced, staying out of the election until it is fixed; {}",
                            e.remedy()
                        );
                    }
                    true
                }
                _ => false,
            },
        }
    }

    /// One term: work every interval until the term ends.
    async fn lead(&self, leadership: Leadership, stop: &CancellationToken) -> TermEnd {
        // The epoch is read once we lead: an advance made before is seen.
        let token = match self.epoch.token(leadership.token()).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("cannot read the fencing epoch ({e}); resigning the term");
                resign_within(leadership, stop).await;
                // Stepping aside for the journal's sake would find the
                // journal fine, rejoin at once, win and resign again.
                return if e.is_transient() { TermEnd::SteppedDown } else { TermEnd::Aside(Aside::Epoch) };
            }
        };
        // Counted before it is announced: whoever reads the line and then
        // the metrics finds them agreeing.
        let took_over = leadership.took_over_at();
        self.metrics.term_began(token.zxid, took_over.is_some());
        println!("ha-worker active term={} epoch={}", token.zxid, token.epoch);
        tracing::info!(term = %token, "active");
        self.status.set("term", serde_json::json!(token.to_string()));
        let end = self.term(leadership, token, took_over, stop).await;
        self.metrics.term_ended();
        self.status.set("term", serde_json::Value::Null);
        end
    }

    /// The active worker's loop, with the term's first token; `took_over`
    /// is when the term's predecessor was seen gone, if it had one.
    async fn term(
        &self,
        leadership: Leadership,
        mut token: Token,
        mut took_over: Option<Instant>,
        stop: &CancellationToken,
    ) -> TermEnd {
        let mut states = self.client.states();
        let mut seq = 0u64;
        let mut advances = 0;
        loop {
            let interval =
                self.settings.borrow().interval_ms.map(Duration::from_millis).unwrap_or(self.default_interval);
            tokio::select! {
                // In this order when several are ready at once, as after a
                // pause: a due write goes before the client's news that the
                // session was lost. Whether we still lead is the journal's
                // to judge by token, not a local flag that a pause can make
                // stale right after it is read; a stale term's write is
                // refused there, and the refusal is the evidence.
                biased;
                _ = stop.cancelled() => {
                    let asked = Instant::now();
                    // Hand over now: the standby must not wait a session
                    // timeout. Bounded: if the server is unreachable, the
                    // session's expiry hands over instead.
                    let _ = tokio::time::timeout(crate::STOP_BUDGET / 2, leadership.resign()).await;
                    println!("ha-worker resigned");
                    return TermEnd::Stopped(asked);
                }
                _ = tokio::time::sleep(interval) => {}
                _ = connection_lost(&mut states) => {
                    self.metrics.writing(false);
                    if let Some(end) = self.suspended(&leadership, token, stop).await {
                        if matches!(end, TermEnd::SteppedDown) {
                            // Our node may outlive a session we gave up on
                            // (a stop during the outage): delete it once we can.
                            resign_within(leadership, stop).await;
                        }
                        return end;
                    }
                    self.metrics.writing(true);
                    continue;
                }
            }
            let error = match self.journal.append(token, &self.instance, seq) {
                Ok(()) => {
                    if let Some(at) = took_over.take() {
                        self.metrics.handed_over(at.elapsed());
                    }
                    seq += 1;
                    continue;
                }
                Err(e) => e,
            };
            match (on_append_error(&error), &error) {
                (OnAppendError::Confirm, JournalError::Fenced { ours, highest }) => {
                    println!("ha-worker fenced term={ours} newer={highest}");
                    self.status.fenced("journal", ours, highest);
                    let still_leader = leadership.confirm().await.unwrap_or(false);
                    match fencing::after_refusal(still_leader, advances) {
                        Refusal::Stale => {
                            tracing::warn!(term = %ours, newer = %highest, "fenced by a newer term: stepping down");
                            resign_within(leadership, stop).await;
                            return TermEnd::SteppedDown;
                        }
                        Refusal::GiveUp => {
                            resign_within(leadership, stop).await;
                            return TermEnd::Aside(Aside::Fencing { highest: *highest });
                        }
                        Refusal::Advance => match self.epoch.advance_past(highest.epoch).await {
                            Ok(epoch) => {
                                advances += 1;
                                token = Token::new(epoch, token.zxid);
                                println!("ha-worker epoch advanced to {epoch}");
                                tracing::warn!(
                                    %highest,
                                    term = %token,
                                    "the journal is ahead of this coordination history: epoch advanced"
                                );
                            }
                            Err(e) if e.is_transient() => {
                                tracing::warn!("cannot advance the fencing epoch ({e}); resigning the term");
                                resign_within(leadership, stop).await;
                                return TermEnd::SteppedDown;
                            }
                            Err(e) => {
                                tracing::error!("cannot advance the fencing epoch: {e}; {}", e.remedy());
                                resign_within(leadership, stop).await;
                                return TermEnd::Aside(Aside::Fencing { highest: *highest });
                            }
                        },
                    }
                }
                (OnAppendError::StepAside, _) | (OnAppendError::Confirm, _) => {
                    tracing::error!("journal write failed: {error}; stepping down");
                    resign_within(leadership, stop).await;
                    return TermEnd::Aside(Aside::Journal);
                }
                (OnAppendError::StepDown, _) => {
                    tracing::warn!("journal write failed: {error}; stepping down");
                    resign_within(leadership, stop).await;
                    return TermEnd::SteppedDown;
                }
            }
        }
    }
}

impl Stand {
    /// The connection dropped mid-term: no writes until we know whether the
    /// session survived. `None` to resume the term; else how it ended.
    async fn suspended(&self, leadership: &Leadership, token: Token, stop: &CancellationToken) -> Option<TermEnd> {
        println!("ha-worker suspended term={}", token.zxid);
        tracing::warn!(term = %token, "connection lost: suspended until the session is known to survive");
        let mut states = self.client.states();
        let mut expired = false;
        loop {
            match *states.borrow_and_update() {
                Session::Live => break,
                Session::Lost => expired = true,
                Session::Suspended => {}
            }
            tokio::select! {
                changed = states.changed() => if changed.is_err() { return Some(TermEnd::SteppedDown) },
                _ = stop.cancelled() => return Some(TermEnd::Stopped(Instant::now())),
            }
        }
        // Connected again. The same session still holds our node, and
        // nobody can have got ahead of it in line: a write to it tells.
        if !expired && leadership.confirm().await.unwrap_or(false) {
            println!("ha-worker resumed term={}", token.zxid);
            tracing::info!(term = %token, "the session survived the outage: resuming the term");
            return None;
        }
        println!("ha-worker stepped down");
        tracing::warn!(term = %token, "the session did not survive the outage: stepped down");
        Some(TermEnd::SteppedDown)
    }
}

/// Returns once the session is not live. Not `states.wait_for(..)` as a
/// `select!` arm: its result is a read guard on the watch, which the arm's
/// body would hold through everything it awaits, and the client's next
/// state change (a blocking write to the same watch) would wait for ever.
async fn connection_lost(states: &mut watch::Receiver<Session>) {
    let _ = states.wait_for(|s| *s != Session::Live).await;
}

/// Resigns (deletes our node, retrying through connection loss) unless a
/// stop comes first: then the session's end hands over instead.
async fn resign_within(leadership: Leadership, stop: &CancellationToken) {
    tokio::select! {
        _ = leadership.resign() => {}
        _ = stop.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_fenced_write_asks_the_server_and_a_broken_journal_steps_aside() {
        let fenced = JournalError::Fenced { ours: Token::new(0, 8), highest: Token::new(0, 309) };
        assert_eq!(on_append_error(&fenced), OnAppendError::Confirm);
        let read_only = JournalError::Io {
            path: PathBuf::from("/j"),
            source: std::io::Error::from_raw_os_error(30), // EROFS
        };
        assert_eq!(on_append_error(&read_only), OnAppendError::StepAside);
        let interrupted =
            JournalError::Io { path: PathBuf::from("/j"), source: std::io::ErrorKind::Interrupted.into() };
        assert_eq!(on_append_error(&interrupted), OnAppendError::StepDown);
        let damaged = JournalError::Corrupt { path: PathBuf::from("/j"), line: 3, what: "bad checksum" };
        assert_eq!(on_append_error(&damaged), OnAppendError::StepAside);
    }
}

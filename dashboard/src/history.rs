//! What changed: the events the dashboard saw between two snapshots, kept
//! for the last minutes so that a drill's effect stays on the page after
//! it is over (a gap, then a new HA term; a refused fencing token; a config
//! version reaching each instance).
//!
//! [`diff`] is a pure function of two consecutive [`Now`]s, so every rule
//! below is tested without a server. [`History`] feeds it and keeps what it
//! returns, bounded.
//!
//! # Times
//! Each event carries `t`, ms since the Unix epoch. Where the change left a
//! stamp on a node, `t` is ZooKeeper's own (ctime, mtime: the server's
//! clock): a task's finish, a config write, a registration. Where it left
//! none (a node deleted, a waiter promoted, a session gone), `t` is when
//! the dashboard saw it, which is at most one refresh late.
//!
//! # What a snapshot cannot see
//! The tree is sampled, not logged: a lock handed A→B→C between two
//! refreshes shows as C's grant. Under load the timeline shows what the
//! refreshes saw, which is the right picture of a drill (seconds long) and
//! a thinned one of a task stream.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::Serialize;
use serde_json::{json, Value};

use crate::snapshot::{Member, Now, Znode};

/// How far back the timeline reaches.
pub const WINDOW_MS: i64 = 10 * 60 * 1000;

/// At most this many events are kept, whatever the window says. Why: each
/// page draws every kept event as SVG elements once a second, and a new
/// page receives them all at once; a few thousand is what a browser redraws
/// in milliseconds and what fits in well under a megabyte of JSON. A busy
/// system (every task takes a lock) would otherwise grow the history with
/// its task rate; with the bound it costs the same memory at any load, and
/// the page says how far back the kept events reach ([`History::doc`]'s
/// `covers_from`).
pub const MAX_EVENTS: usize = 3000;

/// One change, tagged by `kind` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum What {
    /// `/locks/<entity>` has a new holder. `token` is `czxid@epoch`, the
    /// fencing token the holder writes with (zk_recipes::fencing::Token).
    Grant { entity: String, holder: String, token: String },
    /// `/locks/<entity>` is free; `holder` is who held it.
    Release { entity: String, holder: String, token: String },
    /// `/ha/<group>` has a new active; `term` is `czxid@epoch`.
    Term { group: String, who: String, term: String },
    /// `/ha/<group>` has no active; `who` is the last one.
    Gap { group: String, who: String },
    /// A task became done or failed; `latency_ms` is its node's mtime −
    /// ctime (submit → result, on the server's clock).
    Task {
        id: String,
        status: String,
        latency_ms: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        entity: Option<String>,
    },
    /// An instance reports a new `config_version` in its registration.
    /// Versions are decimal strings here: a zxid passes 2^53, past what a
    /// JavaScript number holds exactly, and the page compares them.
    Config { service: String, instance: String, version: String },
    /// `/config/<service>` was written; `version` is its mzxid (a string,
    /// as above).
    ConfigWrite { service: String, version: String },
    /// An instance reports a write refused by fencing (its registration's
    /// `fenced` count grew): `token` was refused, the store had `newer`.
    Fenced { service: String, instance: String, what: Value, token: Value, newer: Value, count: i64 },
    /// A registration node appeared (a start, a re-registration on a new
    /// session).
    Up { service: String, instance: String, session: String },
    /// A registration node disappeared (a stop, a session expiry).
    Down { service: String, instance: String },
    /// A session opened (`what` = "opened") or closed or expired ("closed").
    Session { id: String, what: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// ms since the Unix epoch.
    pub t: i64,
    /// True for what the first snapshot found already so (a holder since
    /// before the dashboard started: `t` is then a lower bound).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub initial: bool,
    #[serde(flatten)]
    pub what: What,
}

/// A fencing token as the services print it (`zxid@epoch`); an epoch node
/// that holds no number is shown as `?`.
pub fn token(czxid: i64, epoch: Option<i64>) -> String {
    match epoch {
        Some(e) => format!("{czxid}@{e}"),
        None => format!("{czxid}@?"),
    }
}

/// A session id as the session list shows it; empty for no owner (a
/// persistent node).
fn session_id(owner: i64) -> String {
    if owner == 0 {
        String::new()
    } else {
        format!("{owner:#x}")
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The `fenced` report of a registration: its count, 0 if none.
fn fenced_count(node: &Znode) -> i64 {
    node.data["fenced"]["count"].as_i64().unwrap_or(0)
}

fn is_final(status: &Value) -> bool {
    matches!(status.as_str(), Some("done" | "failed"))
}

/// The events between `prev` and `next`, seen at `now_ms`. `prev` is `None`
/// for the first snapshot: it then reports what its stamps place inside
/// the window (tasks finished, registrations, config writes and reports),
/// and the current holders and actives as `initial`.
pub fn diff(prev: Option<&Now>, next: &Now, now_ms: i64) -> Vec<Event> {
    let mut out = Vec::new();
    let window_start = now_ms - WINDOW_MS;
    let first = prev.is_none();
    let mut push = |t: i64, initial: bool, what: What| out.push(Event { t, initial, what });
    let empty = Now::default();
    let before = prev.unwrap_or(&empty);

    // Locks and elections: the head of each queue.
    let heads = |queues: &BTreeMap<String, Vec<Member>>| -> BTreeMap<String, Option<Member>> {
        queues.iter().map(|(k, q)| (k.clone(), q.first().cloned())).collect()
    };
    for (is_lock, old, new) in [(true, &before.locks, &next.locks), (false, &before.ha, &next.ha)] {
        let (old_heads, new_heads) = (heads(old), heads(new));
        let mut names: Vec<&String> = old_heads.keys().chain(new_heads.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let was = old_heads.get(name).cloned().flatten();
            let is = new_heads.get(name).cloned().flatten();
            // Same node (name and creation) = same holding.
            let same = |a: &Member, b: &Member| a.name == b.name && a.node.czxid == b.node.czxid;
            match (&was, &is) {
                (Some(a), Some(b)) if same(a, b) => {}
                (_, Some(b)) => {
                    // A node that was already queued was promoted now; a
                    // new one won at once, when the server created it.
                    let queued = old.get(name).is_some_and(|q| q.iter().any(|m| same(m, b)));
                    let (t, initial) = if first {
                        (b.node.ctime.max(window_start), true)
                    } else if queued {
                        (now_ms, false)
                    } else {
                        (b.node.ctime, false)
                    };
                    let tok = token(b.node.czxid, next.epoch);
                    let what = if is_lock {
                        What::Grant { entity: name.clone(), holder: b.who(), token: tok }
                    } else {
                        What::Term { group: name.clone(), who: b.who(), term: tok }
                    };
                    push(t, initial, what);
                }
                (Some(a), None) => {
                    let what = if is_lock {
                        What::Release {
                            entity: name.clone(),
                            holder: a.who(),
                            token: token(a.node.czxid, before.epoch),
                        }
                    } else {
                        What::Gap { group: name.clone(), who: a.who() }
                    };
                    push(now_ms, false, what);
                }
                (None, None) => {}
            }
        }
    }

    // Tasks seen finishing (on the first snapshot: finished in the window).
    for (id, node) in &next.tasks {
        if !is_final(&node.data["status"]) {
            continue;
        }
        let was = before.tasks.get(id);
        let newly = match was {
            Some(w) => !is_final(&w.data["status"]),
            None => !first || node.mtime >= window_start,
        };
        if !newly {
            continue;
        }
        // A done node names no entity: the pending one did.
        let entity = text(&node.data["entity"]).or_else(|| was.and_then(|w| text(&w.data["entity"])));
        push(
            node.mtime,
            false,
            What::Task {
                id: id.clone(),
                status: node.data["status"].as_str().unwrap_or_default().to_string(),
                latency_ms: node.mtime - node.ctime,
                worker: text(&node.data["worker"]),
                entity,
            },
        );
    }

    // Config writes.
    for (service, node) in &next.config {
        let written = match before.config.get(service) {
            Some(w) => w.mzxid != node.mzxid,
            None => !first || node.mtime >= window_start,
        };
        if written {
            push(node.mtime, false, What::ConfigWrite { service: service.clone(), version: node.mzxid.to_string() });
        }
    }

    // Registrations: up, down, config reports, fencing reports.
    let no_members = BTreeMap::new();
    for (service, members) in &next.services {
        let old = before.services.get(service).unwrap_or(&no_members);
        for (instance, node) in members {
            // A node of another creation is another life of the instance.
            let was = old.get(instance).filter(|w| w.czxid == node.czxid);
            let recent = !first || node.mtime >= window_start;
            if was.is_none() && (!first || node.ctime >= window_start) {
                push(
                    node.ctime,
                    false,
                    What::Up { service: service.clone(), instance: instance.clone(), session: session_id(node.owner) },
                );
            }
            let version = text(&node.data["config_version"]);
            if let Some(version) = version.filter(|_| recent) {
                if was.is_none_or(|w| text(&w.data["config_version"]).as_ref() != Some(&version)) {
                    push(
                        node.mtime,
                        false,
                        What::Config { service: service.clone(), instance: instance.clone(), version },
                    );
                }
            }
            let count = fenced_count(node);
            if recent && count > was.map(fenced_count).unwrap_or(0) {
                let f = &node.data["fenced"];
                push(
                    node.mtime,
                    false,
                    What::Fenced {
                        service: service.clone(),
                        instance: instance.clone(),
                        what: f["what"].clone(),
                        token: f["token"].clone(),
                        newer: f["newer"].clone(),
                        count,
                    },
                );
            }
        }
    }
    for (service, members) in &before.services {
        let now_members = next.services.get(service).unwrap_or(&no_members);
        for (instance, node) in members {
            if now_members.get(instance).is_none_or(|n| n.czxid != node.czxid) {
                push(now_ms, false, What::Down { service: service.clone(), instance: instance.clone() });
            }
        }
    }

    // Sessions, when both lists are known.
    if let (Some(old), Some(new)) = (&before.sessions, &next.sessions) {
        if prev.is_some() {
            for id in new.difference(old) {
                push(now_ms, false, What::Session { id: id.clone(), what: "opened".into() });
            }
            for id in old.difference(new) {
                push(now_ms, false, What::Session { id: id.clone(), what: "closed".into() });
            }
        }
    }
    out
}

/// The lane an event belongs to when it says what still holds: a lock's
/// holder, a group's active. Such an event is kept past the window while it
/// is its lane's newest, so a holder older than the window is still drawn.
fn lane(what: &What) -> Option<(bool, &str)> {
    match what {
        What::Grant { entity, .. } | What::Release { entity, .. } => Some((true, entity)),
        What::Term { group, .. } | What::Gap { group, .. } => Some((false, group)),
        _ => None,
    }
}

/// The kept events and the snapshot they were last diffed against.
#[derive(Default)]
pub struct History {
    events: VecDeque<(u64, Event)>,
    next_seq: u64,
    prev: Option<Now>,
    /// The newest `t` the count bound dropped: the history is complete only
    /// after it.
    dropped_at: Option<i64>,
}

impl History {
    pub fn new() -> History {
        History { next_seq: 1, ..History::default() }
    }

    /// Diffs `next` against the last snapshot, keeps the events, forgets
    /// what fell out of the window or past the bound. Returns whether any
    /// event was added.
    pub fn observe(&mut self, next: Now, now_ms: i64) -> bool {
        let mut found = diff(self.prev.as_ref(), &next, now_ms);
        // Keep the list in time order: a server stamp can be older than an
        // event the dashboard timed itself a moment ago.
        found.sort_by_key(|e| e.t);
        let added = !found.is_empty();
        for e in found {
            self.events.push_back((self.next_seq, e));
            self.next_seq += 1;
        }
        self.prev = Some(next);
        self.prune(now_ms);
        added
    }

    fn prune(&mut self, now_ms: i64) {
        let cutoff = now_ms - WINDOW_MS;
        // The events that say what still holds (a lane's newest, if it is a
        // grant or a term) outlive both bounds while there is room.
        let mut newest: HashMap<(bool, &str), (u64, bool)> = HashMap::new();
        for (seq, e) in &self.events {
            if let Some(key) = lane(&e.what) {
                newest.insert(key, (*seq, matches!(e.what, What::Grant { .. } | What::Term { .. })));
            }
        }
        let holding: HashSet<u64> = newest.into_values().filter(|(_, holds)| *holds).map(|(seq, _)| seq).collect();
        self.events.retain(|(seq, e)| e.t >= cutoff || holding.contains(seq));
        let mut excess = self.events.len().saturating_sub(MAX_EVENTS);
        let mut dropped = self.dropped_at;
        self.events.retain(|(seq, e)| {
            if excess == 0 || holding.contains(seq) {
                return true;
            }
            excess -= 1;
            dropped = Some(dropped.map_or(e.t, |d| d.max(e.t)));
            false
        });
        // More holders than the bound: the oldest of them go too.
        while self.events.len() > MAX_EVENTS {
            if let Some((_, e)) = self.events.pop_front() {
                dropped = Some(dropped.map_or(e.t, |d| d.max(e.t)));
            }
        }
        self.dropped_at = dropped;
    }

    /// The sequence number of the newest event (0 for none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    fn list(&self, after: u64) -> Vec<Value> {
        self.events
            .iter()
            .filter(|(seq, _)| *seq > after)
            .map(|(seq, e)| {
                let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
                v["seq"] = json!(seq);
                v
            })
            .collect()
    }

    /// The whole history: `/api/history` and the first SSE `history` event.
    pub fn doc(&self, now_ms: i64) -> Value {
        let start = now_ms - WINDOW_MS;
        json!({
            "now": now_ms, "window_ms": WINDOW_MS, "max_events": MAX_EVENTS,
            "covers_from": self.dropped_at.map_or(start, |d| d.max(start)),
            "last_seq": self.last_seq(), "events": self.list(0),
        })
    }

    /// The events after `after` (a `timeline` SSE event), and the newest
    /// sequence number to ask after next time.
    pub fn since(&self, after: u64, now_ms: i64) -> (Value, u64) {
        let start = now_ms - WINDOW_MS;
        let doc = json!({
            "now": now_ms, "covers_from": self.dropped_at.map_or(start, |d| d.max(start)),
            "last_seq": self.last_seq(), "events": self.list(after),
        });
        (doc, self.last_seq())
    }
}

/// Now, in ms since the Unix epoch (the dashboard's clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn node(data: Value, czxid: i64, mzxid: i64, ctime: i64, mtime: i64) -> Znode {
        Znode { data, czxid, mzxid, ctime, mtime, owner: 0 }
    }

    fn member(name: &str, who: &str, czxid: i64, ctime: i64) -> Member {
        Member { name: name.into(), node: node(json!(who), czxid, czxid, ctime, ctime), session: "0x1".into() }
    }

    fn kinds(events: &[Event]) -> Vec<&'static str> {
        events
            .iter()
            .map(|e| match e.what {
                What::Grant { .. } => "grant",
                What::Release { .. } => "release",
                What::Term { .. } => "term",
                What::Gap { .. } => "gap",
                What::Task { .. } => "task",
                What::Config { .. } => "config",
                What::ConfigWrite { .. } => "config-write",
                What::Fenced { .. } => "fenced",
                What::Up { .. } => "up",
                What::Down { .. } => "down",
                What::Session { .. } => "session",
            })
            .collect()
    }

    #[test]
    fn a_lock_handed_over_then_freed() {
        let b1 = member("_c_a-lock-0000000001", "b1", 10, NOW - 5000);
        let b2 = member("_c_b-lock-0000000002", "b2", 11, NOW - 4000);
        let mut a = Now { epoch: Some(3), ..Now::default() };
        a.locks.insert("acct-1".into(), vec![b1.clone(), b2.clone()]);
        let mut b = a.clone();
        b.locks.insert("acct-1".into(), vec![b2.clone()]);
        // b2 was queued: its grant is when the dashboard saw it, not its ctime.
        assert_eq!(
            diff(Some(&a), &b, NOW),
            vec![Event {
                t: NOW,
                initial: false,
                what: What::Grant { entity: "acct-1".into(), holder: "b2".into(), token: "11@3".into() }
            }]
        );
        let mut c = b.clone();
        c.locks.insert("acct-1".into(), vec![]);
        let e = diff(Some(&b), &c, NOW + 10);
        assert_eq!(e[0].what, What::Release { entity: "acct-1".into(), holder: "b2".into(), token: "11@3".into() });
        // A holder that won at once was granted when the server made its node.
        let b3 = member("_c_c-lock-0000000003", "b3", 12, NOW + 15);
        let mut d = c.clone();
        d.locks.insert("acct-1".into(), vec![b3]);
        let e = diff(Some(&c), &d, NOW + 20);
        assert_eq!((e.len(), e[0].t), (1, NOW + 15));
        // Nothing changed, nothing reported.
        assert!(diff(Some(&d), &d, NOW + 30).is_empty());
    }

    #[test]
    fn a_term_a_gap_and_the_next_term() {
        let ha1 = member("n_0000000001", "ha1", 20, NOW - 9000);
        let ha2 = member("n_0000000002", "ha2", 21, NOW - 8000);
        let mut a = Now { epoch: Some(0), ..Now::default() };
        a.ha.insert("workers".into(), vec![ha1.clone(), ha2.clone()]);
        let mut b = a.clone();
        b.ha.insert("workers".into(), vec![ha2]);
        let e = diff(Some(&a), &b, NOW);
        assert_eq!(e[0].what, What::Term { group: "workers".into(), who: "ha2".into(), term: "21@0".into() });
        let mut c = b.clone();
        c.ha.insert("workers".into(), vec![]);
        let e = diff(Some(&b), &c, NOW + 1);
        assert_eq!(e[0].what, What::Gap { group: "workers".into(), who: "ha2".into() });
        // An epoch node with no number: the term says so rather than guess.
        let mut d = c.clone();
        d.epoch = None;
        d.ha.insert("workers".into(), vec![member("n_0000000003", "ha3", 30, NOW + 2)]);
        let e = diff(Some(&c), &d, NOW + 3);
        assert_eq!(e[0].what, What::Term { group: "workers".into(), who: "ha3".into(), term: "30@?".into() });
    }

    #[test]
    fn the_first_snapshot_reports_holders_as_initial_and_only_stamps_in_the_window() {
        let mut a = Now { epoch: Some(2), ..Now::default() };
        a.locks.insert("old".into(), vec![member("l-0000000001", "b1", 5, NOW - WINDOW_MS - 60_000)]);
        a.tasks.insert("recent".into(), node(json!({"status": "done", "worker": "b1"}), 7, 9, NOW - 300, NOW - 100));
        a.tasks.insert("ancient".into(), node(json!({"status": "done"}), 1, 2, 0, 1000));
        a.tasks.insert("waiting".into(), node(json!({"status": "pending"}), 8, 8, NOW - 50, NOW - 50));
        a.sessions = Some(BTreeSet::from(["0x1".to_string()]));
        let e = diff(None, &a, NOW);
        assert_eq!(kinds(&e), ["grant", "task"], "{e:?}");
        // Older than the window: drawn from the window's left edge.
        assert_eq!((e[0].t, e[0].initial), (NOW - WINDOW_MS, true));
        assert_eq!(
            e[1].what,
            What::Task {
                id: "recent".into(),
                status: "done".into(),
                latency_ms: 200,
                worker: Some("b1".into()),
                entity: None
            }
        );
    }

    #[test]
    fn a_task_finishing_keeps_the_entity_its_pending_node_named() {
        let mut a = Now::default();
        a.tasks
            .insert("t1".into(), node(json!({"status": "pending", "entity": "acct-1"}), 40, 40, NOW - 700, NOW - 700));
        let mut b = a.clone();
        b.tasks.insert(
            "t1".into(),
            node(json!({"status": "done", "worker": "b2", "value": 7}), 40, 44, NOW - 700, NOW - 42),
        );
        // A task created and finished between two refreshes was seen finishing too.
        b.tasks.insert("t2".into(), node(json!({"status": "failed", "error": "x"}), 45, 46, NOW - 30, NOW - 20));
        let e = diff(Some(&a), &b, NOW);
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[0],
            Event {
                t: NOW - 42,
                initial: false,
                what: What::Task {
                    id: "t1".into(),
                    status: "done".into(),
                    latency_ms: 658,
                    worker: Some("b2".into()),
                    entity: Some("acct-1".into())
                }
            }
        );
        assert!(matches!(&e[1].what, What::Task { status, latency_ms: 10, .. } if status == "failed"));
        // Still done on the next refresh: not finished again.
        assert!(diff(Some(&b), &b, NOW + 1).is_empty());
    }

    #[test]
    fn config_written_then_reported_by_each_instance() {
        let reg = |v: Value, mzxid: i64, mtime: i64| node(json!({"config_version": v}), 50, mzxid, NOW - 9000, mtime);
        let mut a = Now::default();
        a.config.insert("system-b".into(), node(json!({"work_ms": 1}), 3, 3, NOW - 9000, NOW - 9000));
        let members = BTreeMap::from([("b1".to_string(), reg(json!(3), 50, NOW - 9000))]);
        a.services.insert("system-b".into(), members);
        let mut b = a.clone();
        b.config.insert("system-b".into(), node(json!({"work_ms": 2}), 3, 60, NOW - 9000, NOW - 500));
        let e = diff(Some(&a), &b, NOW);
        assert_eq!(
            e,
            vec![Event {
                t: NOW - 500,
                initial: false,
                what: What::ConfigWrite { service: "system-b".into(), version: "60".into() }
            }]
        );
        let mut c = b.clone();
        c.services.get_mut("system-b").map(|m| m.insert("b1".into(), reg(json!(60), 61, NOW - 300)));
        let e = diff(Some(&b), &c, NOW);
        assert_eq!(
            e,
            vec![Event {
                t: NOW - 300,
                initial: false,
                what: What::Config { service: "system-b".into(), instance: "b1".into(), version: "60".into() }
            }]
        );
    }

    #[test]
    fn a_refusal_is_reported_when_the_count_grows() {
        let fenced = |count: i64, mtime: i64| {
            node(
                json!({"fenced": {"count": count, "what": "store acct-1", "token": "12@0", "newer": "15@0"}}),
                70,
                70 + count,
                NOW - 9000,
                mtime,
            )
        };
        let mut a = Now::default();
        a.services.insert("system-b".into(), BTreeMap::from([("b1".to_string(), fenced(0, NOW - 9000))]));
        let mut b = a.clone();
        b.services.insert("system-b".into(), BTreeMap::from([("b1".to_string(), fenced(1, NOW - 100))]));
        let e = diff(Some(&a), &b, NOW);
        assert_eq!(
            e,
            vec![Event {
                t: NOW - 100,
                initial: false,
                what: What::Fenced {
                    service: "system-b".into(),
                    instance: "b1".into(),
                    what: json!("store acct-1"),
                    token: json!("12@0"),
                    newer: json!("15@0"),
                    count: 1
                }
            }]
        );
        // Rewritten for another reason (same count): no new refusal.
        let mut c = b.clone();
        c.services.insert("system-b".into(), BTreeMap::from([("b1".to_string(), fenced(1, NOW - 50))]));
        assert!(diff(Some(&b), &c, NOW).is_empty());
    }

    #[test]
    fn instances_and_sessions_come_and_go() {
        let mut a = Now { sessions: Some(BTreeSet::from(["0x1".to_string()])), ..Now::default() };
        a.services
            .insert("system-b".into(), BTreeMap::from([("b1".to_string(), node(json!({}), 80, 80, NOW - 9, NOW - 9))]));
        let mut b = a.clone();
        let mut b2 = node(json!({}), 81, 81, NOW - 5, NOW - 5);
        b2.owner = 0x2;
        b.services.get_mut("system-b").map(|m| m.insert("b2".into(), b2));
        b.sessions = Some(BTreeSet::from(["0x1".to_string(), "0x2".to_string()]));
        let e = diff(Some(&a), &b, NOW);
        assert_eq!(kinds(&e), ["up", "session"]);
        assert_eq!(e[0].what, What::Up { service: "system-b".into(), instance: "b2".into(), session: "0x2".into() });
        assert_eq!((e[0].t, e[1].t), (NOW - 5, NOW));
        // b1 re-registered on a new session (another node): down, then up.
        let mut c = b.clone();
        c.services.get_mut("system-b").map(|m| m.insert("b1".into(), node(json!({}), 90, 90, NOW + 1, NOW + 1)));
        c.services.get_mut("system-b").map(|m| m.remove("b2"));
        c.sessions = Some(BTreeSet::from(["0x1".to_string()]));
        let e = diff(Some(&b), &c, NOW + 2);
        assert_eq!(kinds(&e), ["up", "down", "down", "session"], "{e:?}");
        assert_eq!(e[3].what, What::Session { id: "0x2".into(), what: "closed".into() });
        // A session list that failed is not every session closing.
        let mut d = c.clone();
        d.sessions = None;
        assert!(diff(Some(&c), &d, NOW + 3).is_empty());
    }

    #[test]
    fn the_history_is_bounded_by_time_and_count_but_keeps_what_still_holds() {
        let mut h = History::new();
        let mut now = Now::default();
        now.locks.insert("acct-1".into(), vec![member("l-0000000001", "b1", 5, NOW)]);
        assert!(h.observe(now.clone(), NOW));
        // Tasks beyond the bound: the oldest go, and the doc says since when
        // the history is complete.
        for i in 0..(MAX_EVENTS as i64 + 10) {
            now.tasks.insert(format!("t{i:05}"), node(json!({"status": "done"}), 100 + i, 100 + i, NOW, NOW + i));
        }
        h.observe(now.clone(), NOW + 1);
        let doc = h.doc(NOW + 1);
        assert_eq!(doc["events"].as_array().map(Vec::len), Some(MAX_EVENTS));
        assert!(doc["covers_from"].as_i64() > Some(NOW), "{}", doc["covers_from"]);
        // Eleven minutes later: the tasks are gone, the holder's grant stays.
        h.observe(now.clone(), NOW + WINDOW_MS + 60_000);
        let doc = h.doc(NOW + WINDOW_MS + 60_000);
        let events = doc["events"].as_array().cloned().unwrap_or_default();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!((events[0]["kind"].as_str(), events[0]["holder"].as_str()), (Some("grant"), Some("b1")));
        // The delta after the last sequence number sent is empty.
        let (since, last) = h.since(h.last_seq(), NOW);
        assert_eq!((since["events"].as_array().map(Vec::len), last), (Some(0), h.last_seq()));
    }

    #[test]
    fn events_serialise_tagged_by_kind() {
        let e =
            Event { t: 5, initial: false, what: What::ConfigWrite { service: "system-b".into(), version: "9".into() } };
        assert_eq!(
            serde_json::to_value(&e).ok(),
            Some(json!({"t": 5, "kind": "config-write", "service": "system-b", "version": "9"}))
        );
    }
}

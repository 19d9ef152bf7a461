//! The checkers: each reads a history (and the durable state the run left)
//! and says whether one promise held. They run on every nemesis history,
//! whatever faults it had; each is proven by a history that breaks its
//! promise (the tests below, and tests/tests/nemesis.rs with the promise
//! broken in the system itself).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::history::{Entry, TaskOutcome};
use crate::linearizability as lin;

/// One checker's judgement of one history.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub checker: &'static str,
    pub ok: bool,
    /// What was checked, or what broke.
    pub detail: String,
}

impl Verdict {
    fn new(checker: &'static str, problems: Vec<String>, checked: String) -> Verdict {
        if problems.is_empty() {
            Verdict { checker, ok: true, detail: checked }
        } else {
            let shown: Vec<String> = problems.iter().take(8).cloned().collect();
            let more = problems.len().saturating_sub(shown.len());
            let tail = if more > 0 { format!(" (and {more} more)") } else { String::new() };
            Verdict { checker, ok: false, detail: format!("{}{tail}", shown.join("; ")) }
        }
    }
}

/// Tasks, exactly once: every task answered "done" was applied, once. Each
/// is "add 1" and reports the entity's value after it, so the values the
/// clients were told for one entity are distinct (two tasks told the same
/// value means one update overwrote the other: one lost, or one applied
/// twice over it), none exceeds the entity's final value (none lost), and
/// the final value is no more than the tasks that may have been applied
/// (none applied twice, none invented): done ≤ final ≤ done + unanswered.
pub fn tasks(history: &[Entry], finals: &BTreeMap<String, i64>) -> Verdict {
    // Per entity: (value, request) of each task done; how many unanswered.
    type Told<'a> = (Vec<(i64, &'a str)>, usize);
    let mut per_entity: BTreeMap<&str, Told> = BTreeMap::new();
    for e in history {
        if let Entry::Task { entity, request_id, outcome, .. } = e {
            let slot = per_entity.entry(entity.as_str()).or_default();
            match outcome {
                TaskOutcome::Done { value, .. } => slot.0.push((*value, request_id.as_str())),
                // Refused or unanswered: the system may still have applied it.
                TaskOutcome::Refused(_) | TaskOutcome::Unknown(_) => slot.1 += 1,
            }
        }
    }
    let mut problems = Vec::new();
    let (mut done_total, mut maybe_total) = (0, 0);
    for (entity, (done, maybe)) in &per_entity {
        let last = finals.get(*entity).copied().unwrap_or(0);
        let mut by_value: HashMap<i64, &str> = HashMap::new();
        for (value, request) in done {
            if let Some(other) = by_value.insert(*value, request) {
                problems.push(format!("{entity}: requests {other} and {request} were both told value {value}"));
            }
            if *value > last || *value < 1 {
                problems.push(format!("{entity}: request {request} was told value {value}, the entity ends at {last}"));
            }
        }
        if (last as usize) < done.len() || last as usize > done.len() + maybe {
            problems.push(format!(
                "{entity}: ends at {last} after {} tasks done and {maybe} unanswered (expected {}..={})",
                done.len(),
                done.len(),
                done.len() + maybe
            ));
        }
        done_total += done.len();
        maybe_total += maybe;
    }
    let checked = format!("{done_total} tasks done and {maybe_total} unanswered on {} entities", per_entity.len());
    Verdict::new("tasks: exactly once", problems, checked)
}

/// Lock safety, from the fencing tokens the clients were told: on each
/// entity, a task applied under a newer token saw every task applied under
/// an older one (its value is higher). A write applied under a token older
/// than one already applied (a stalled holder's, let through) shows as an
/// older token with a higher value.
pub fn lock_tokens(history: &[Entry]) -> Verdict {
    let mut per_entity: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
    for e in history {
        if let Entry::Task { entity, outcome: TaskOutcome::Done { value, token, .. }, .. } = e {
            per_entity.entry(entity.as_str()).or_default().push((*token, *value));
        }
    }
    let mut problems = Vec::new();
    let mut n = 0;
    for (entity, applied) in per_entity.iter_mut() {
        applied.sort_unstable();
        n += applied.len();
        // Sorted by token: values must rise with tokens. Compare each
        // token's lowest value with the highest of every older token.
        let mut highest_older: Option<(i64, i64)> = None;
        let mut i = 0;
        while i < applied.len() {
            let token = applied[i].0;
            let group: Vec<i64> = applied[i..].iter().take_while(|(t, _)| *t == token).map(|(_, v)| *v).collect();
            let (lo, hi) = (group.iter().min().copied().unwrap_or(0), group.iter().max().copied().unwrap_or(0));
            if let Some((old_token, old_value)) = highest_older {
                if lo <= old_value {
                    problems.push(format!(
                        "{entity}: value {old_value} applied under token {old_token} but {lo} under the newer {token}"
                    ));
                }
            }
            if highest_older.is_none_or(|(_, v)| hi > v) {
                highest_older = Some((token, hi));
            }
            i += group.len();
        }
    }
    Verdict::new("lock: tokens order the writes", problems, format!("{n} fenced writes"))
}

/// HA: the journal has at most one writer per term, and terms never go
/// back (`entries` in file order: (term, instance)).
pub fn ha_journal(entries: &[(zk_recipes::fencing::Token, String)]) -> Verdict {
    let mut problems = Vec::new();
    let mut writer: HashMap<zk_recipes::fencing::Token, &str> = HashMap::new();
    let mut prev: Option<zk_recipes::fencing::Token> = None;
    for (i, (term, instance)) in entries.iter().enumerate() {
        if let Some(w) = writer.insert(*term, instance) {
            if w != instance {
                problems.push(format!("term {term} written by both {w} and {instance} (record {})", i + 1));
            }
        }
        if let Some(p) = prev {
            if *term < p {
                problems.push(format!("term {term} written after term {p} (record {})", i + 1));
            }
        }
        prev = Some(*term);
    }
    let terms = writer.len();
    Verdict::new("ha: one writer per term", problems, format!("{} records in {terms} terms", entries.len()))
}

/// Config: every live instance applied the last version written.
/// `acknowledged`: how many writes of the config the operator was told
/// succeeded; `last_written`: the node's mzxid at the end (`None`: no
/// node); `applied`: each registered instance and the version it reports.
pub fn config(acknowledged: usize, last_written: Option<i64>, applied: &[(String, Option<i64>)]) -> Verdict {
    let Some(last) = last_written else {
        // Gone after writes were acknowledged: the server lost them.
        let problems = (acknowledged > 0)
            .then(|| format!("the config node is gone after {acknowledged} acknowledged writes of it"))
            .into_iter()
            .collect();
        return Verdict::new("config: converged", problems, "no config written".into());
    };
    let problems: Vec<String> = applied
        .iter()
        .filter(|(_, v)| *v != Some(last))
        .map(|(i, v)| format!("{i} reports version {v:?}, the last written is {last}"))
        .collect();
    let problems = if applied.is_empty() { vec!["no instance is registered".to_string()] } else { problems };
    Verdict::new("config: converged", problems, format!("{} instances on version {last}", applied.len()))
}

/// Registers: each register's history is linearizable (the Wing & Gong
/// search, one register at a time). A search that does not finish within
/// `limit` is a failure too: the run must be made smaller, not passed.
pub async fn registers(history: &[Entry], limit: Duration) -> Verdict {
    let mut per: BTreeMap<usize, Vec<lin::Event>> = BTreeMap::new();
    for e in history {
        if let Entry::Register { register, op, outcome, invoked, returned, .. } = e {
            per.entry(*register).or_default().push(lin::Event {
                op: *op,
                outcome: *outcome,
                called: *invoked,
                returned: *returned,
            });
        }
    }
    let mut problems = Vec::new();
    let mut n = 0;
    for (r, events) in per {
        n += events.len();
        let len = events.len();
        let init = lin::Reg { value: 0, version: 0 };
        let search = tokio::task::spawn_blocking(move || lin::check(init, &events));
        match tokio::time::timeout(limit, search).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => problems.push(format!("register {r}'s {len} operations are not linearizable")),
            Ok(Err(e)) => problems.push(format!("register {r}: the check panicked: {e}")),
            Err(_) => problems.push(format!("register {r}: the check of {len} operations took over {limit:?}")),
        }
    }
    Verdict::new("registers: linearizable", problems, format!("{n} register operations"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use zk_recipes::fencing::Token;

    fn task(entity: &str, request: &str, outcome: TaskOutcome) -> Entry {
        let t = Instant::now();
        Entry::Task { client: 0, entity: entity.into(), request_id: request.into(), invoked: t, completed: t, outcome }
    }

    fn done(entity: &str, request: &str, value: i64, token: i64) -> Entry {
        task(entity, request, TaskOutcome::Done { value, token, worker: "b1".into() })
    }

    fn finals(v: &[(&str, i64)]) -> BTreeMap<String, i64> {
        v.iter().map(|(e, x)| (e.to_string(), *x)).collect()
    }

    #[test]
    fn tasks_pass_when_each_done_task_has_its_own_value() {
        let h = [done("e", "r1", 1, 10), done("e", "r2", 2, 11), task("e", "r3", TaskOutcome::Unknown("x".into()))];
        assert!(tasks(&h, &finals(&[("e", 2)])).ok);
        assert!(tasks(&h, &finals(&[("e", 3)])).ok, "the unanswered one may have been applied");
    }

    #[test]
    fn tasks_catch_a_lost_update_a_lost_task_and_a_double_apply() {
        // A lost update: two tasks told the same value.
        let lost_update = [done("e", "r1", 1, 10), done("e", "r2", 1, 11)];
        assert!(!tasks(&lost_update, &finals(&[("e", 1)])).ok);
        // A done task whose effect is gone: the entity ends below it.
        let lost = [done("e", "r1", 1, 10), done("e", "r2", 2, 11)];
        assert!(!tasks(&lost, &finals(&[("e", 1)])).ok);
        // Applied twice: the entity ends above every task that could count.
        assert!(!tasks(&lost, &finals(&[("e", 3)])).ok);
    }

    #[test]
    fn lock_tokens_catch_a_write_under_an_older_token() {
        assert!(lock_tokens(&[done("e", "r1", 1, 10), done("e", "r2", 2, 12), done("e", "r3", 3, 15)]).ok);
        // The same task reported twice (a redelivered copy) is no violation.
        assert!(lock_tokens(&[done("e", "r1", 1, 10), done("e", "r1", 1, 10), done("e", "r2", 2, 12)]).ok);
        // A stalled holder of token 10 wrote after the holder of 12.
        let v = lock_tokens(&[done("e", "r1", 1, 12), done("e", "r2", 2, 10)]);
        assert!(!v.ok, "{v:?}");
    }

    #[test]
    fn ha_journal_catches_two_writers_in_a_term_and_a_term_going_back() {
        let t = |z| Token::new(0, z);
        assert!(ha_journal(&[(t(5), "a".into()), (t(5), "a".into()), (t(9), "b".into())]).ok);
        assert!(!ha_journal(&[(t(5), "a".into()), (t(5), "b".into())]).ok);
        assert!(!ha_journal(&[(t(9), "a".into()), (t(5), "b".into())]).ok);
    }

    #[test]
    fn config_catches_an_instance_left_behind() {
        assert!(config(3, Some(7), &[("b1".into(), Some(7)), ("b2".into(), Some(7))]).ok);
        assert!(!config(3, Some(7), &[("b1".into(), Some(7)), ("b2".into(), Some(5))]).ok);
        assert!(!config(3, Some(7), &[]).ok, "nobody registered is not convergence");
        assert!(config(0, None, &[]).ok, "nothing written, nothing to converge on");
        assert!(!config(3, None, &[("b1".into(), Some(7))]).ok, "acknowledged writes of a node now gone");
    }

    #[tokio::test]
    async fn registers_catch_a_stale_read() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let reg = |op, outcome, a, b| Entry::Register {
            client: 0,
            register: 0,
            op,
            outcome,
            invoked: at(a),
            returned: Some(at(b)),
        };
        let good = [
            reg(lin::Op::Write(5), lin::Outcome::Written(1), 0, 10),
            reg(lin::Op::Read, lin::Outcome::Read(lin::Reg { value: 5, version: 1 }), 20, 30),
        ];
        assert!(registers(&good, Duration::from_secs(5)).await.ok);
        // A read, wholly after an acknowledged write, that misses it.
        let stale = [
            reg(lin::Op::Write(5), lin::Outcome::Written(1), 0, 10),
            reg(lin::Op::Read, lin::Outcome::Read(lin::Reg { value: 0, version: 0 }), 20, 30),
        ];
        assert!(!registers(&stale, Duration::from_secs(5)).await.ok);
        // The register gone after an acknowledged write (a server that
        // lost its data): a definite answer no order explains.
        let gone =
            [reg(lin::Op::Write(5), lin::Outcome::Written(1), 0, 10), reg(lin::Op::Read, lin::Outcome::NoNode, 20, 30)];
        assert!(!registers(&gone, Duration::from_secs(5)).await.ok);
    }
}

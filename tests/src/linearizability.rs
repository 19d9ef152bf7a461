//! A linearizability checker for histories of versioned registers: the
//! Wing & Gong search with Lowe's memoization (the "WGL" algorithm that
//! Knossos and Porcupine use), small enough to read.
//!
//! A history is a set of operations, each with the time it was invoked and
//! the time its reply arrived. It is linearizable when every operation can
//! be given one instant between those two times such that, taken in the
//! order of those instants, the operations are a legal sequential run of
//! the register. ZooKeeper promises that for writes (all go through one
//! ordered log) and, because a client's reads are served by the server it
//! is connected to, for reads as well when there is one server.
//!
//! An operation whose reply never came (the connection broke) may or may
//! not have taken effect. It gets no return time (it stays concurrent with
//! everything after it) and any outcome: that it never happened is the
//! same as placing it after everything else.
//!
//! Registers are independent, and linearizability is compositional, so a
//! history of several registers is checked one register at a time; that
//! keeps each search small.
//!
//! Unanswered operations are what make the search blow up: each may be
//! placed anywhere after its call, or nowhere, so k of them give up to 2^k
//! sets of "which took effect" at every point, and the memo cannot merge
//! sets that differ only in *which* ones. A nemesis run on an ensemble
//! (reads off, a member killed, links slowed) left 22-28 on each register,
//! and the search ran past its minute. But two unanswered writes whose
//! values no read ever saw are interchangeable: either can stand where the
//! other stood, since nothing observes which value it was, only that the
//! version moved (likewise two unanswered compare-and-sets of the same
//! expected version). So each such class is linearized in call order,
//! earliest first, and only its prefixes are searched
//! (`interchangeable`); a property test checks the verdicts against the
//! search without it.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// The state of one register: its data (a number) and its version, as a
/// znode's data and `stat.version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reg {
    pub value: u64,
    pub version: i32,
}

/// What a client asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// getData.
    Read,
    /// setData with version -1.
    Write(u64),
    /// setData with an expected version.
    Cas { value: u64, expected: i32 },
}

/// What the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// getData's data and version.
    Read(Reg),
    /// setData succeeded; the node's new version.
    Written(i32),
    /// setData was refused: BadVersion.
    BadVersion,
    /// The server said the register does not exist. A register is
    /// created before its history starts and never deleted, so no
    /// sequential register answers this: it fits no order. It is what a
    /// server that lost the register's node (with every write it had
    /// acknowledged) answers after a crash.
    NoNode,
    /// No reply: the operation may or may not have taken effect.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub op: Op,
    pub outcome: Outcome,
    pub called: Instant,
    /// `None` when no reply came.
    pub returned: Option<Instant>,
}

/// The register's sequential specification: the state after `op` and
/// whether `outcome` is what a sequential register answers.
fn step(s: Reg, op: Op, outcome: Outcome) -> Option<Reg> {
    let next = match op {
        Op::Read => s,
        Op::Write(value) => Reg { value, version: s.version + 1 },
        Op::Cas { value, expected } if expected == s.version => Reg { value, version: s.version + 1 },
        Op::Cas { .. } => s,
    };
    let ok = match (op, outcome) {
        (_, Outcome::Unknown) => true,
        (Op::Read, Outcome::Read(r)) => r == s,
        (Op::Write(_), Outcome::Written(v)) => v == next.version,
        (Op::Cas { expected, .. }, Outcome::Written(v)) => expected == s.version && v == next.version,
        (Op::Cas { expected, .. }, Outcome::BadVersion) => expected != s.version,
        _ => false,
    };
    ok.then_some(next)
}

/// Whether the history of one register, starting from `init`, is
/// linearizable.
pub fn check(init: Reg, history: &[Event]) -> bool {
    search(init, history, true)
}

/// The classes of interchangeable operations (see the module's
/// documentation): for each operation, `Some((class, rank))` when it is an
/// unanswered write of a value no read saw (one class), or an unanswered
/// compare-and-set of such a value (a class per expected version); its
/// rank is its place in its class by call time. Also the number of
/// classes.
fn interchangeable(history: &[&Event]) -> (Vec<Option<(usize, usize)>>, usize) {
    let seen: HashSet<u64> = history
        .iter()
        .filter_map(|e| match e.outcome {
            Outcome::Read(r) => Some(r.value),
            _ => None,
        })
        .collect();
    let key = |e: &Event| match (e.outcome, e.op) {
        (Outcome::Unknown, Op::Write(v)) if !seen.contains(&v) => Some((0u8, 0i32)),
        (Outcome::Unknown, Op::Cas { value, expected }) if !seen.contains(&value) => Some((1, expected)),
        _ => None,
    };
    let mut by_call: Vec<usize> = (0..history.len()).collect();
    by_call.sort_by_key(|&i| (history[i].called, i));
    let mut classes: HashMap<(u8, i32), (usize, usize)> = HashMap::new();
    let mut of = vec![None; history.len()];
    for i in by_call {
        if let Some(k) = key(history[i]) {
            let next = classes.len();
            let (class, members) = classes.entry(k).or_insert((next, 0));
            of[i] = Some((*class, *members));
            *members += 1;
        }
    }
    (of, classes.len())
}

/// The search; `prune` linearizes interchangeable operations in call
/// order only (off, for the test that checks that it changes no verdict).
fn search(init: Reg, history: &[Event], prune: bool) -> bool {
    // A read that was never answered constrains nothing and changes
    // nothing: leaving it out spares the search a branch per such read.
    let history: Vec<&Event> =
        history.iter().filter(|e| !(e.op == Op::Read && e.outcome == Outcome::Unknown)).collect();
    let n = history.len();
    if n == 0 {
        return true;
    }
    let (class_of, classes) = if prune { interchangeable(&history) } else { (vec![None; n], 0) };
    // How many of each class are linearized: always its first ones.
    let mut taken = vec![0usize; classes];
    // Answered operations not yet linearized. Once none is left, the
    // unanswered rest can all go last, where any outcome is theirs.
    let answered = |op: usize| history[op].outcome != Outcome::Unknown;
    let mut answered_left = (0..n).filter(|&i| answered(i)).count();
    // The timeline: each operation's call and return, in time order. A
    // return at the same instant as a call goes first (the ops did not
    // overlap); an unknown return is after everything.
    #[derive(Clone, Copy)]
    struct Entry {
        op: usize,
        is_call: bool,
        /// For a call, the index of its return entry.
        ret: usize,
        prev: usize,
        next: usize,
    }
    let mut times: Vec<(Option<Instant>, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in history.iter().enumerate() {
        times.push((Some(e.called), true, i));
        times.push((e.returned, false, i));
    }
    times.sort_by(|a, b| {
        let key = |t: &(Option<Instant>, bool, usize)| (t.0.is_none(), t.0, t.1);
        key(a).cmp(&key(b))
    });
    // Slot 0 is the list's head sentinel; entries are 1..=2n.
    let mut list: Vec<Entry> = Vec::with_capacity(2 * n + 1);
    list.push(Entry { op: usize::MAX, is_call: false, ret: 0, prev: 0, next: 1 });
    let mut ret_slot = vec![0usize; n];
    for (k, (_, is_call, op)) in times.iter().enumerate() {
        let slot = k + 1;
        list.push(Entry { op: *op, is_call: *is_call, ret: 0, prev: slot - 1, next: slot + 1 });
        if !is_call {
            ret_slot[*op] = slot;
        }
    }
    let end = 2 * n + 1;
    for e in list.iter_mut().skip(1) {
        if e.is_call {
            e.ret = ret_slot[e.op];
        }
    }
    // Unlinking a call and its return (`lift`); relinking restores them,
    // in the reverse order. An unlinked slot keeps its own links, so its
    // neighbours are pointed past it or back at it.
    fn relink(list: &mut [Entry], call: usize, end: usize, lift: bool) {
        let ret = list[call].ret;
        let order = if lift { [call, ret] } else { [ret, call] };
        for slot in order {
            let (p, nx) = (list[slot].prev, list[slot].next);
            let (next_of_p, prev_of_nx) = if lift { (nx, p) } else { (slot, slot) };
            list[p].next = next_of_p;
            if nx != end {
                list[nx].prev = prev_of_nx;
            }
        }
    }
    fn lift(list: &mut [Entry], call: usize, end: usize) {
        relink(list, call, end, true)
    }
    fn unlift(list: &mut [Entry], call: usize, end: usize) {
        relink(list, call, end, false)
    }

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Reg)> = HashSet::new();
    let mut stack: Vec<(usize, Reg)> = Vec::new();
    let mut state = init;
    let mut at = list[0].next;
    loop {
        if list[0].next == end || (prune && answered_left == 0) {
            return true;
        }
        if at != end && list[at].is_call {
            let e = list[at];
            let ev = history[e.op];
            // Not its class's turn: an earlier one of the class stands
            // for it here.
            if class_of[e.op].is_some_and(|(c, rank)| rank != taken[c]) {
                at = e.next;
                continue;
            }
            let next = step(state, ev.op, ev.outcome);
            // An unanswered operation that would change nothing here (a
            // compare-and-set of another version) is never placed here:
            // placed last instead, it is as good, and keeps its chance to
            // apply later.
            if prune && !answered(e.op) && next == Some(state) {
                at = e.next;
                continue;
            }
            if let Some(next) = next {
                let mut bits = linearized.clone();
                bits[e.op / 64] |= 1 << (e.op % 64);
                if seen.insert((bits.clone(), next)) {
                    stack.push((at, state));
                    linearized = bits;
                    state = next;
                    if let Some((c, _)) = class_of[e.op] {
                        taken[c] += 1;
                    }
                    if answered(e.op) {
                        answered_left -= 1;
                    }
                    lift(&mut list, at, end);
                    at = list[0].next;
                    continue;
                }
            }
            at = e.next;
            continue;
        }
        // Backtrack: the end is reached (nothing more can go first from
        // here), or a return whose call is not linearized yet (every order
        // tried so far from this prefix fails).
        let Some((call, prev)) = stack.pop() else { return false };
        let op = list[call].op;
        linearized[op / 64] &= !(1 << (op % 64));
        if let Some((c, _)) = class_of[op] {
            taken[c] -= 1;
        }
        if answered(op) {
            answered_left += 1;
        }
        state = prev;
        unlift(&mut list, call, end);
        at = list[call].next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const INIT: Reg = Reg { value: 0, version: 0 };

    /// Builds events from (op, outcome, call ms, return ms or None).
    fn history(spec: &[(Op, Outcome, u64, Option<u64>)]) -> Vec<Event> {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        spec.iter().map(|&(op, outcome, c, r)| Event { op, outcome, called: at(c), returned: r.map(at) }).collect()
    }

    fn read(value: u64, version: i32) -> Outcome {
        Outcome::Read(Reg { value, version })
    }

    #[test]
    fn sequential_runs_are_linearizable() {
        let h = history(&[
            (Op::Write(1), Outcome::Written(1), 0, Some(1)),
            (Op::Read, read(1, 1), 2, Some(3)),
            (Op::Cas { value: 2, expected: 1 }, Outcome::Written(2), 4, Some(5)),
            (Op::Cas { value: 3, expected: 1 }, Outcome::BadVersion, 6, Some(7)),
            (Op::Read, read(2, 2), 8, Some(9)),
        ]);
        assert!(check(INIT, &h));
    }

    #[test]
    fn overlapping_operations_may_take_either_order() {
        // The read overlaps the write: it may see the old or the new value.
        for seen in [read(0, 0), read(5, 1)] {
            let h = history(&[(Op::Write(5), Outcome::Written(1), 0, Some(10)), (Op::Read, seen, 2, Some(4))]);
            assert!(check(INIT, &h), "{seen:?}");
        }
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_rejected() {
        let h = history(&[(Op::Write(5), Outcome::Written(1), 0, Some(1)), (Op::Read, read(0, 0), 2, Some(3))]);
        assert!(!check(INIT, &h));
    }

    #[test]
    fn two_successful_cas_on_one_version_are_rejected() {
        let h = history(&[
            (Op::Cas { value: 1, expected: 0 }, Outcome::Written(1), 0, Some(10)),
            (Op::Cas { value: 2, expected: 0 }, Outcome::Written(1), 1, Some(11)),
        ]);
        assert!(!check(INIT, &h));
    }

    #[test]
    fn reads_that_go_back_in_time_are_rejected() {
        // Two writes in sequence; two sequential reads that see them in the
        // opposite order.
        let h = history(&[
            (Op::Write(1), Outcome::Written(1), 0, Some(10)),
            (Op::Write(2), Outcome::Written(2), 0, Some(10)),
            (Op::Read, read(2, 2), 11, Some(12)),
            (Op::Read, read(1, 1), 13, Some(14)),
        ]);
        assert!(!check(INIT, &h));
    }

    #[test]
    fn an_unanswered_write_may_or_may_not_have_happened() {
        let lost = (Op::Write(7), Outcome::Unknown, 0, None);
        let took_effect = history(&[lost, (Op::Read, read(7, 1), 5, Some(6))]);
        let never_did = history(&[lost, (Op::Read, read(0, 0), 5, Some(6))]);
        assert!(check(INIT, &took_effect));
        assert!(check(INIT, &never_did));
        // But not half: it cannot be seen, then unseen.
        let flicker = history(&[lost, (Op::Read, read(7, 1), 5, Some(6)), (Op::Read, read(0, 0), 7, Some(8))]);
        assert!(!check(INIT, &flicker));
    }

    #[test]
    fn a_version_that_skips_is_rejected() {
        let h = history(&[(Op::Write(1), Outcome::Written(2), 0, Some(1))]);
        assert!(!check(INIT, &h));
    }

    /// Two clients, one operation each at a time, on one register: a
    /// write or a compare-and-set every 10 ms each, taking effect 1 ms
    /// after its call; `lost` of them (every `every`-th) never answered,
    /// half of those applied. Linearizable by construction: outcomes are
    /// those of the run in the order of the effects.
    fn two_clients_with_lost_replies(ops: u64, every: u64) -> Vec<Event> {
        let mut spec = Vec::new();
        let mut version = 0;
        for k in 0..ops {
            let (client, call) = (k % 2, k * 5);
            let value = client * 1_000_000 + k;
            let cas = k % 3 == 0;
            let op = if cas { Op::Cas { value, expected: version - 1 } } else { Op::Write(value) };
            if k % every == every - 1 {
                // Lost: applied half the time, answered never.
                if (k / every).is_multiple_of(2) && !cas {
                    version += 1;
                }
                spec.push((op, Outcome::Unknown, call, None));
                continue;
            }
            let outcome = if cas {
                Outcome::BadVersion
            } else {
                version += 1;
                Outcome::Written(version)
            };
            spec.push((op, outcome, call, Some(call + 2)));
        }
        history(&spec)
    }

    #[test]
    fn unanswered_writes_no_read_saw_are_checked_quickly() {
        // The shape of a nemesis run on an ensemble whose check ran past a
        // minute (seed 2026): no reads, 1,300 operations, ~26 unanswered.
        let h = two_clients_with_lost_replies(1300, 50);
        let started = Instant::now();
        assert!(check(INIT, &h));
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        // And a broken one is refused as quickly: an acknowledged version
        // that no count of the lost writes explains.
        let mut broken = h.clone();
        let last = broken.iter().rposition(|e| matches!(e.outcome, Outcome::Written(_))).expect("a write");
        broken[last].outcome = Outcome::Written(1);
        let started = Instant::now();
        assert!(!check(INIT, &broken));
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }

    mod pruning {
        use super::*;
        use proptest::prelude::*;

        /// A history of up to 10 operations from a real sequential run
        /// (each takes effect at a random instant inside its interval),
        /// some replies lost (applied or not), and, if `break_one`, one
        /// outcome changed, which may make it non-linearizable.
        fn arbitrary_history() -> impl Strategy<Value = Vec<Event>> {
            let op = (0u8..3, 0u64..20, 0u64..20, 0u8..4, 0u8..3);
            (proptest::collection::vec(op, 1..10), any::<Option<(prop::sample::Index, i32)>>()).prop_map(
                |(ops, tamper)| {
                    // (call, effect, return, op): effects ordered by time.
                    let mut timed: Vec<(u64, u64, u64, u8, u8, u8, usize)> = ops
                        .iter()
                        .enumerate()
                        .map(|(i, &(kind, start, len, lost, exp))| {
                            let effect = start + len / 2;
                            (start, effect, start + len + 1, kind, lost, exp, i)
                        })
                        .collect();
                    timed.sort_by_key(|t| (t.1, t.6));
                    let mut state = Reg { value: 0, version: 0 };
                    let mut spec = Vec::new();
                    for (call, _, ret, kind, lost, exp, i) in timed {
                        let value = 100 + i as u64;
                        let (op, outcome, next) = match kind {
                            0 => (Op::Read, Outcome::Read(state), state),
                            1 => {
                                let next = Reg { value, version: state.version + 1 };
                                (Op::Write(value), Outcome::Written(next.version), next)
                            }
                            _ => {
                                let expected = state.version - 1 + exp as i32;
                                if expected == state.version {
                                    let next = Reg { value, version: state.version + 1 };
                                    (Op::Cas { value, expected }, Outcome::Written(next.version), next)
                                } else {
                                    (Op::Cas { value, expected }, Outcome::BadVersion, state)
                                }
                            }
                        };
                        // Lost replies: a quarter, applied or not.
                        let (outcome, ret, next) = match lost {
                            0 => (Outcome::Unknown, None, next),
                            1 if op != Op::Read => (Outcome::Unknown, None, state),
                            _ => (outcome, Some(ret), next),
                        };
                        state = next;
                        spec.push((op, outcome, call, ret));
                    }
                    if let Some((at, version)) = tamper {
                        let i = at.index(spec.len());
                        spec[i].1 = match spec[i].1 {
                            Outcome::Read(r) => Outcome::Read(Reg { version: version.rem_euclid(4), ..r }),
                            Outcome::Written(_) => Outcome::Written(version.rem_euclid(4)),
                            other => other,
                        };
                    }
                    history(&spec)
                },
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]
            /// Linearizing interchangeable operations in call order only
            /// never changes a verdict.
            #[test]
            fn pruning_changes_no_verdict(h in arbitrary_history()) {
                prop_assert_eq!(search(INIT, &h, true), search(INIT, &h, false));
            }
        }
    }

    #[test]
    fn many_concurrent_clients_are_checked_quickly() {
        // 6 clients, 40 rounds of overlapping writes then reads of the last
        // value: linearizable, and the memo keeps the search small.
        let mut spec = Vec::new();
        let mut version = 0;
        for round in 0..40u64 {
            let t = round * 100;
            for c in 0..6u64 {
                version += 1;
                spec.push((Op::Write(round * 10 + c), Outcome::Written(version), t + c, Some(t + 50)));
            }
            let last = round * 10 + 5;
            spec.push((Op::Read, read(last, version), t + 60, Some(t + 70)));
        }
        let h = history(&spec);
        let started = Instant::now();
        assert!(check(INIT, &h));
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }
}

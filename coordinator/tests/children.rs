//! getChildren against a model, through everything that adds or takes away
//! a child: creates (sequential or not, ephemeral or not), deletes,
//! sessions closing and taking their ephemerals, multis that apply whole or
//! roll back, a snapshot read back in the middle of it all (recovery),
//! after which the tree carries on from the recovered copy, and snapshots
//! written a chunk at a time while the rest goes on, which must read back
//! as the tree was when they began.
//!
//! A parent keeps its children's names in one block that a delete leaves
//! holes in and a rewrite closes up (`tree::names`); a listing copies the
//! block. What could break: a name left in the block after its node went,
//! a child whose offset points at the wrong entry after a rewrite (its
//! lookups then fail, or find another node), a block rebuilt from a
//! snapshot in another order, a multi that failed halfway leaving a name.
//! Every listing is checked three ways against the model: the names the
//! tree iterates, the bytes it would reply with (decoded as a client
//! would), and a lookup of each name.

use std::collections::{BTreeMap, BTreeSet};

use coordinator::prep::{prepare, Ctx};
use coordinator::tree::{DataTree, Progress, TxnResult};
use coordinator::txn::{Txn, TxnHeader};
use proptest::prelude::*;
use zk_wire::consts::{CreateMode, OpCode};
use zk_wire::records::{CreateTtlRequest, DeleteRequest};
use zk_wire::request::MultiOp;
use zk_wire::{Request, Response};

const PARENTS: [&str; 2] = ["/a", "/b"];
/// Names of several lengths, so entries of a block differ in size and a
/// hole is not simply the next name's place.
const NAMES: [&str; 6] = ["x", "yy", "a-much-longer-name", "n0", "n1", "zzzzzzzzz"];
const SESSIONS: [i64; 3] = [11, 12, 13];

#[derive(Debug, Clone)]
enum Op {
    /// Under parent, a name from NAMES (or that prefix, sequential), owned
    /// by a session (ephemeral) or none.
    Create {
        parent: usize,
        name: usize,
        sequential: bool,
        owner: Option<usize>,
    },
    /// The child of `parent` the index picks among those the model has
    /// (or a name it does not have, when there is none).
    Delete {
        parent: usize,
        which: prop::sample::Index,
    },
    Close(usize),
    /// Creates and deletes as one txn; a failing one (a name that exists,
    /// a child that does not) rolls it all back.
    Multi(Vec<Op>),
    /// Snapshot, and carry on from the tree read back from it.
    Recover,
    /// Begin a snapshot that is written a chunk at a time while the other
    /// ops go on (as the server writes one); once done, the tree read back
    /// from it must list what the model held when it began.
    BeginSnapshot,
    /// Encode this many more bytes of the snapshot in progress.
    Chunk(usize),
}

fn simple() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PARENTS.len(), 0..NAMES.len(), any::<bool>(), prop::option::of(0..SESSIONS.len()))
            .prop_map(|(parent, name, sequential, owner)| Op::Create { parent, name, sequential, owner }),
        3 => (0..PARENTS.len(), any::<prop::sample::Index>()).prop_map(|(parent, which)| Op::Delete { parent, which }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => simple(),
        1 => (0..SESSIONS.len()).prop_map(Op::Close),
        2 => prop::collection::vec(simple(), 1..5).prop_map(Op::Multi),
        1 => Just(Op::Recover),
        1 => Just(Op::BeginSnapshot),
        3 => (1usize..300).prop_map(Op::Chunk),
    ]
}

/// What the children of each parent should be: name → owning session.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    children: [BTreeMap<String, Option<i64>>; 2],
    /// Creates under each parent so far: the next sequential suffix.
    creates: [i32; 2],
}

struct Run {
    tree: DataTree,
    zxid: i64,
    model: Model,
    /// A snapshot in progress: its bytes so far, and the model as it was
    /// when it began.
    snapshot: Option<(Vec<u8>, Model)>,
}

impl Run {
    fn new() -> Self {
        let mut run = Run { tree: DataTree::new(), zxid: 0, model: Model::default(), snapshot: None };
        for s in SESSIONS {
            run.apply(s, &Txn::CreateSession { timeout_ms: 10_000 });
        }
        for p in PARENTS {
            let txn = prepare(&run.tree, &run.ctx(0), &create_req(p, CreateMode::Persistent));
            assert!(matches!(run.apply(0, &txn), TxnResult::Created { .. }));
        }
        run
    }

    fn ctx(&self, session: i64) -> Ctx<'static> {
        Ctx { session_id: session, auth: &[], extended_types: false, zxid: self.zxid + 1, time: 1000 + self.zxid }
    }

    fn apply(&mut self, session: i64, txn: &Txn) -> TxnResult {
        self.zxid += 1;
        let hdr = TxnHeader { session_id: session, cxid: 0, zxid: self.zxid, time: 1000 + self.zxid };
        self.tree.apply(&hdr, txn, &mut Vec::new())
    }

    /// The request for a simple op, and its effect on `model` if it
    /// succeeds (`None`: it must fail).
    fn request(model: &mut Model, op: &Op) -> (Option<i64>, MultiOp, bool) {
        match op {
            Op::Create { parent, name, sequential, owner } => {
                let base = format!("{}/{}", PARENTS[*parent], NAMES[*name]);
                let path = if *sequential { format!("{base}{:010}", model.creates[*parent]) } else { base.clone() };
                let leaf = path.rsplit('/').next().unwrap_or_default().to_string();
                let owner = owner.map(|s| SESSIONS[s]);
                let ok = !model.children[*parent].contains_key(&leaf);
                if ok {
                    model.children[*parent].insert(leaf, owner);
                    model.creates[*parent] += 1;
                }
                let mode = match (owner.is_some(), *sequential) {
                    (false, false) => CreateMode::Persistent,
                    (false, true) => CreateMode::PersistentSequential,
                    (true, false) => CreateMode::Ephemeral,
                    (true, true) => CreateMode::EphemeralSequential,
                };
                let req = CreateTtlRequest { path: base, data: None, acl: open(), flags: mode.as_i32(), ttl: -1 };
                (owner, MultiOp::Create(OpCode::Create, req), ok)
            }
            Op::Delete { parent, which } => {
                let names: Vec<&String> = model.children[*parent].keys().collect();
                let name =
                    if names.is_empty() { "absent".to_string() } else { names[which.index(names.len())].clone() };
                let ok = model.children[*parent].remove(&name).is_some();
                let path = format!("{}/{name}", PARENTS[*parent]);
                (None, MultiOp::Delete(DeleteRequest { path, version: -1 }), ok)
            }
            _ => unreachable!("not a simple op"),
        }
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Create { .. } | Op::Delete { .. } => {
                let mut model = self.model.clone();
                let (owner, req, ok) = Self::request(&mut model, op);
                let req = match req {
                    MultiOp::Create(code, r) => Request::Create(code, r),
                    MultiOp::Delete(r) => Request::Delete(r),
                    _ => unreachable!(),
                };
                let session = owner.unwrap_or(0);
                let txn = prepare(&self.tree, &self.ctx(session), &req);
                let r = self.apply(session, &txn);
                let applied = matches!(r, TxnResult::Created { .. } | TxnResult::Deleted);
                assert_eq!(applied, ok, "{op:?} gave {r:?}");
                if ok {
                    self.model = model;
                }
            }
            Op::Close(s) => {
                let session = SESSIONS[*s];
                let txn = prepare(&self.tree, &self.ctx(session), &Request::CloseSession);
                self.apply(session, &txn);
                for children in &mut self.model.children {
                    children.retain(|_, owner| *owner != Some(session));
                }
                self.apply(session, &Txn::CreateSession { timeout_ms: 10_000 });
            }
            Op::Multi(ops) => {
                let mut model = self.model.clone();
                let mut reqs = Vec::new();
                let mut all_ok = true;
                // One session makes the whole multi; its ephemerals are its.
                let mut session = None;
                for op in ops {
                    let op = match op {
                        Op::Create { parent, name, sequential, owner } => {
                            let owner = owner.map(|o| *session.get_or_insert(o));
                            Op::Create { parent: *parent, name: *name, sequential: *sequential, owner }
                        }
                        op => op.clone(),
                    };
                    let (_, req, ok) = Self::request(&mut model, &op);
                    all_ok &= ok;
                    reqs.push(req);
                }
                let session = session.map_or(0, |s| SESSIONS[s]);
                let txn = prepare(&self.tree, &self.ctx(session), &Request::Multi(reqs));
                let r = self.apply(session, &txn);
                assert_eq!(matches!(r, TxnResult::Multi(_)), all_ok, "{ops:?} gave {r:?}");
                if all_ok {
                    self.model = model;
                }
            }
            Op::Recover => {
                // Writing a whole snapshot abandons the one in progress.
                self.snapshot = None;
                let mut bytes = Vec::new();
                self.tree.write_snapshot(&mut bytes).expect("snapshot");
                self.tree = DataTree::read_snapshot(&bytes).expect("read back");
            }
            Op::BeginSnapshot => {
                if self.snapshot.is_none() {
                    let mut bytes = Vec::new();
                    self.tree.begin_snapshot().write(&mut bytes);
                    self.snapshot = Some((bytes, self.model.clone()));
                }
            }
            Op::Chunk(_) => {}
        }
    }

    /// Encodes `n` more bytes of the snapshot in progress; once it is
    /// done, checks the tree read back from it against the model as it
    /// was when the snapshot began.
    fn chunk(&mut self, n: usize) -> Result<(), TestCaseError> {
        let Some((mut bytes, model)) = self.snapshot.take() else { return Ok(()) };
        let budget = bytes.len().saturating_add(n);
        match self.tree.snapshot_chunk(&mut bytes, budget) {
            Ok(Progress::More) => self.snapshot = Some((bytes, model)),
            Ok(Progress::Done) => {
                let read = DataTree::read_snapshot(&bytes).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                check_tree(&read, &model)?;
            }
            Err(e) => return Err(TestCaseError::fail(format!("snapshot: {e}"))),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        check_tree(&self.tree, &self.model)
    }
}

/// Each parent's listing, three ways, against the model.
fn check_tree(tree: &DataTree, model: &Model) -> Result<(), TestCaseError> {
    for (i, parent) in PARENTS.iter().enumerate() {
        let node = tree.get(parent).ok_or_else(|| TestCaseError::fail(format!("{parent} gone")))?;
        let expected: Vec<String> = model.children[i].keys().cloned().collect();
        let children = node.children();
        let mut listed: Vec<String> = children.iter().map(str::to_string).collect();
        listed.sort();
        prop_assert_eq!(&listed, &expected, "{} iterated", parent);
        prop_assert_eq!(children.len(), expected.len());
        prop_assert_eq!(node.stat().num_children as usize, expected.len());
        let mut wire = Vec::new();
        children.write(&mut wire);
        prop_assert_eq!(wire.len(), children.encoded_len());
        let Ok(Response::Children(reply)) = Response::decode(OpCode::GetChildren, &wire) else {
            return Err(TestCaseError::fail(format!("{parent}: the listing does not decode")));
        };
        let mut replied = reply.children;
        replied.sort();
        prop_assert_eq!(&replied, &expected, "{} as replied", parent);
        for (name, owner) in &model.children[i] {
            let child = tree.get(&format!("{parent}/{name}"));
            prop_assert!(child.is_some(), "{}/{} not found by its path", parent, name);
            let owner_seen = child.map(|c| c.stat().ephemeral_owner).unwrap_or_default();
            prop_assert_eq!(owner_seen, owner.unwrap_or(0), "{}/{} is another node", parent, name);
        }
    }
    Ok(())
}

fn open() -> Vec<zk_wire::records::Acl> {
    coordinator::acl::open_acl_unsafe()
}

fn create_req(path: &str, mode: CreateMode) -> Request {
    Request::Create(
        OpCode::Create,
        CreateTtlRequest { path: path.into(), data: None, acl: open(), flags: mode.as_i32(), ttl: -1 },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn listings_match_the_model_through_every_change_and_a_recovery(ops in prop::collection::vec(op(), 1..120)) {
        let mut run = Run::new();
        for op in &ops {
            match op {
                Op::Chunk(n) => run.chunk(*n)?,
                op => run.step(op),
            }
            run.check()?;
        }
        run.chunk(usize::MAX)?;
        // And once more from a snapshot of where it ended.
        run.step(&Op::Recover);
        run.check()?;
    }
}

/// A parent of many children, most deleted from the middle, so that its
/// block is rewritten many times; every survivor must still be found by
/// its path and listed once.
#[test]
fn a_block_rewritten_many_times_still_finds_every_child() {
    let mut run = Run::new();
    for i in 0..3000 {
        let txn = prepare(&run.tree, &run.ctx(0), &create_req(&format!("/a/c{i}"), CreateMode::Persistent));
        assert!(matches!(run.apply(0, &txn), TxnResult::Created { .. }));
    }
    let keep = |i: usize| i % 7 == 3;
    for i in (0..3000).filter(|i| !keep(*i)) {
        let req = Request::Delete(DeleteRequest { path: format!("/a/c{i}"), version: -1 });
        let txn = prepare(&run.tree, &run.ctx(0), &req);
        assert_eq!(run.apply(0, &txn), TxnResult::Deleted, "/a/c{i}");
    }
    let expected: BTreeSet<String> = (0..3000).filter(|i| keep(*i)).map(|i| format!("c{i}")).collect();
    let node = run.tree.get("/a").expect("/a");
    let listed: Vec<&str> = node.children().iter().collect();
    assert_eq!(listed.len(), expected.len(), "each once");
    assert_eq!(listed.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(), expected);
    assert!(
        node.children().encoded_len() == 4 + expected.iter().map(|n| 4 + n.len()).sum::<usize>(),
        "the dead entries are gone from the reply"
    );
    for name in &expected {
        assert!(run.tree.get(&format!("/a/{name}")).is_some(), "/a/{name}");
    }
    assert!(run.tree.get("/a/c0").is_none());
    // Deleting the rest frees the block; the parent lists nothing and
    // takes children again.
    for name in &expected {
        let req = Request::Delete(DeleteRequest { path: format!("/a/{name}"), version: -1 });
        let txn = prepare(&run.tree, &run.ctx(0), &req);
        assert_eq!(run.apply(0, &txn), TxnResult::Deleted);
    }
    assert!(run.tree.get("/a").expect("/a").children().is_empty());
    let txn = prepare(&run.tree, &run.ctx(0), &create_req("/a/again", CreateMode::Persistent));
    assert!(matches!(run.apply(0, &txn), TxnResult::Created { .. }));
    assert_eq!(run.tree.get("/a").expect("/a").children().iter().collect::<Vec<_>>(), ["again"]);
}

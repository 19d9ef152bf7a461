//! Random differential testing: proptest generates sequences of operations
//! over a small path alphabet (so that creates collide, parents go missing,
//! ephemerals get children and versions go stale), from two sessions, and
//! each sequence is replayed on the coordinator and on Apache ZooKeeper.
//! The normalised transcripts (see `diff_harness.rs`) must be identical.
//!
//! A failure prints the shrunk sequence and the two transcripts side by side.
//! `DIFF_RANDOM_CASES` sets the number of sequences (48 by default).

#[path = "diff_harness.rs"]
mod harness;

use harness::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use testkit::Server;
use zk_wire::consts::CreateMode;
use zk_wire::records::PathWatchRequest;
use zk_wire::request::MultiOp;
use zk_wire::Request;

/// Few paths, nested, so operations interfere with each other.
const PATHS: &[&str] = &["a", "b", "a/x", "a/y", "b/x", "a/x/z"];

#[derive(Debug, Clone)]
enum Op {
    Create {
        path: usize,
        mode: CreateMode,
        data: u8,
    },
    Delete {
        path: usize,
        version: i32,
    },
    SetData {
        path: usize,
        data: u8,
        version: i32,
    },
    Exists {
        path: usize,
        watch: bool,
    },
    GetData {
        path: usize,
        watch: bool,
    },
    GetChildren {
        path: usize,
        watch: bool,
    },
    Multi(Vec<Op>),
    /// getData / getChildren of each path in one multiRead.
    MultiRead(Vec<(usize, bool)>),
    /// The session closes (its ephemerals go, watches fire) and a new one
    /// takes its place.
    Restart,
}

fn leaf() -> impl Strategy<Value = Op> {
    let path = 0..PATHS.len();
    let version = prop_oneof![Just(-1), 0..3i32];
    // Mostly plain nodes, so the alphabet's paths exist often enough for
    // deletes, version checks and children to be exercised.
    let mode = prop_oneof![
        5 => Just(CreateMode::Persistent),
        3 => Just(CreateMode::Ephemeral),
        1 => Just(CreateMode::PersistentSequential),
        1 => Just(CreateMode::EphemeralSequential),
    ];
    prop_oneof![
        4 => (path.clone(), mode, any::<u8>()).prop_map(|(path, mode, data)| Op::Create { path, mode, data }),
        2 => (path.clone(), version.clone()).prop_map(|(path, version)| Op::Delete { path, version }),
        2 => (path.clone(), any::<u8>(), version).prop_map(|(path, data, version)| Op::SetData { path, data, version }),
        1 => (path.clone(), any::<bool>()).prop_map(|(path, watch)| Op::Exists { path, watch }),
        1 => (path.clone(), any::<bool>()).prop_map(|(path, watch)| Op::GetData { path, watch }),
        1 => (path, any::<bool>()).prop_map(|(path, watch)| Op::GetChildren { path, watch }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        16 => leaf(),
        1 => Just(Op::Restart),
        1 => prop::collection::vec((0..PATHS.len(), any::<bool>()), 1..4).prop_map(Op::MultiRead),
        // A multi holds writes only; reads inside one are a decode error.
        2 => prop::collection::vec(leaf(), 1..4).prop_map(|ops| {
            Op::Multi(ops.into_iter().filter(|o| !matches!(o, Op::Exists { .. } | Op::GetData { .. } | Op::GetChildren { .. })).collect())
        }),
    ]
}

/// (session index, op) pairs.
fn script() -> impl Strategy<Value = Vec<(usize, Op)>> {
    prop::collection::vec((0..2usize, op()), 1..32)
}

fn request(t: &Run, op: &Op) -> Request {
    match op {
        Op::Create { path, mode, data } => create(&t.p(PATHS[*path]), &[*data], *mode),
        Op::Delete { path, version } => delete(&t.p(PATHS[*path]), *version),
        Op::SetData { path, data, version } => set_data(&t.p(PATHS[*path]), &[*data], *version),
        Op::Exists { path, watch } => exists(&t.p(PATHS[*path]), *watch),
        Op::GetData { path, watch } => get_data(&t.p(PATHS[*path]), *watch),
        Op::GetChildren { path, watch } => get_children(&t.p(PATHS[*path]), *watch),
        Op::Multi(ops) => Request::Multi(ops.iter().filter_map(|o| multi_op(t, o)).collect()),
        Op::MultiRead(reads) => Request::MultiRead(
            reads
                .iter()
                .map(|(path, data)| {
                    let r = PathWatchRequest { path: t.p(PATHS[*path]), watch: false };
                    if *data {
                        MultiOp::GetData(r)
                    } else {
                        MultiOp::GetChildren(r)
                    }
                })
                .collect(),
        ),
        Op::Restart => unreachable!("a restart is not a request"),
    }
}

fn multi_op(t: &Run, op: &Op) -> Option<MultiOp> {
    Some(match op {
        Op::Create { path, mode, data } => m_create(&t.p(PATHS[*path]), &[*data], *mode),
        Op::Delete { path, version } => m_delete(&t.p(PATHS[*path]), *version),
        Op::SetData { path, data, version } => m_set(&t.p(PATHS[*path]), &[*data], *version),
        _ => return None,
    })
}

async fn replay(t: &mut Run, script: &[(usize, Op)]) {
    let mut sessions = [t.connect().await, t.connect().await];
    for (who, op) in script {
        if let Op::Restart = op {
            let fresh = t.connect().await;
            let old = std::mem::replace(&mut sessions[*who], fresh);
            t.close(old).await;
            // The other session hears of the ephemerals that went.
            t.events(&mut sessions[1 - *who]).await;
            continue;
        }
        let req = request(t, op);
        t.call(&mut sessions[*who], req).await;
    }
    for s in &mut sessions {
        t.events(s).await;
    }
    // The final tree, so a difference in state shows even if no reply did.
    for p in PATHS {
        let path = t.p(p);
        t.call(&mut sessions[0], get_children2(&path, false)).await;
    }
    t.call(&mut sessions[0], get_children2(&t.p(""), false)).await;
    let [a, b] = sessions;
    t.close(a).await;
    t.close(b).await;
}

#[test]
fn random_sequences_answer_alike() {
    testkit::init_test_log();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let coordinator = Server::Coordinator.start();
    let zookeeper = Server::ZooKeeper.start();
    // 48 cases keep the suite fast; DIFF_RANDOM_CASES=2000 for a deeper hunt.
    let cases = std::env::var("DIFF_RANDOM_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&script(), |script| {
        let root = format!("/{}", testkit::unique("random"));
        let (ours, theirs) = rt.block_on(async {
            let scenario = async |t: &mut Run| replay(t, &script).await;
            let ours = run_on(Server::Coordinator, coordinator.addr, &root, &scenario).await;
            let theirs = run_on(Server::ZooKeeper, zookeeper.addr, &root, &scenario).await;
            (ours, theirs)
        });
        if ours == theirs {
            if std::env::var_os("DIFF_RANDOM_SHOW").is_some() {
                eprintln!("{}", ours.join("\n"));
            }
            Ok(())
        } else {
            let mut report = String::from("transcripts differ:\n");
            for i in 0..ours.len().max(theirs.len()) {
                let a = ours.get(i).map(String::as_str).unwrap_or("<missing>");
                let b = theirs.get(i).map(String::as_str).unwrap_or("<missing>");
                if a == b {
                    report.push_str(&format!("    {a}\n"));
                } else {
                    report.push_str(&format!("!!  coordinator: {a}\n!!  zookeeper:   {b}\n"));
                }
            }
            Err(TestCaseError::fail(report))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

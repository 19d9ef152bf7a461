//! Fencing that never goes backwards: the review's reset drill.
//!
//! The coordination server's data directory is replaced under running
//! services (a wipe, a restore from an old snapshot, a move between the
//! coordinator and an ensemble all look like this to them): zxids start
//! again from small numbers, while the journal and the store remember
//! terms and tokens in the hundreds. Before epochs, the ha-worker was fenced
//! 98 times in 20 s and wrote nothing, and system-b requeued its tasks for
//! ever. Now the holder confirms it holds, advances the fencing epoch past
//! what the resource has seen (`zk_recipes::fencing`), and carries on; and
//! when the epoch cannot be advanced (here: the operator made it read-only)
//! it is one ERROR and a failed task, not a loop.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::{
    binary, provision, publish_confirmed, rabbitmq_confirmed_channel, start_coordinator, start_ha_worker,
    start_system_b, Identities, Proc, TempDir,
};
use servicekit::auth::ZkAuth;
use zk_recipes::fencing::Token;
use zk_recipes::session::Client;
use zookeeper_async::{Acl, CreateMode};

/// Connects as `role` of `ids`.
async fn connect_as(zk: &str, ids: &Identities, role: &str) -> (Client, ZkAuth) {
    let auth = ZkAuth::from_file(&ids.file(role)).expect("credentials");
    let connect =
        Client::connect_authenticated(zk, Duration::from_secs(10), Duration::from_secs(10), auth.auth_packets());
    (tokio::time::timeout(Duration::from_secs(15), connect).await.expect("in time").expect("connect"), auth)
}

/// A history of `n` transactions under a scratch root, so the zxids the
/// services hold are in the hundreds before the reset.
async fn history(zk: &str, n: usize) {
    let c = Client::connect(zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");
    let dir = format!("/{}", testkit::unique("history"));
    zk_recipes::ensure_path(&c.zk, &dir).await.expect("dir");
    for i in 0..n {
        let path = format!("{dir}/n{i}");
        c.zk.create(&path, vec![], Acl::open_unsafe().clone(), CreateMode::Persistent).await.expect("create");
    }
}

/// Replaces the server at `zk` with a fresh one on an empty data dir, on
/// the same address, and lays the tree out again with the same identities.
fn reset(server: &mut Proc, zk: &str, root: &str, ids: &Identities, data: &Path, log_dir: &Path) -> Proc {
    server.kill9();
    let data = data.to_str().expect("utf-8");
    let mut fresh = Proc::spawn("coordinator", &["--listen", zk, "--data-dir", data], log_dir);
    fresh.wait_line("coordinator listening on", Duration::from_secs(20));
    init(zk, root, ids);
    fresh
}

fn init(zk: &str, root: &str, ids: &Identities) {
    let op = ids.file("operator");
    let out = std::process::Command::new(binary("zkctl"))
        .args(["--zk", zk, "--zk-credentials-file", op.to_str().expect("utf-8"), "init", "--root", root])
        .output()
        .expect("run zkctl");
    assert!(out.status.success(), "zkctl init: {}", String::from_utf8_lossy(&out.stderr));
}

/// A system on the coordinator with data dir `d1`, laid out by the
/// operator, with a history of 300 transactions behind it, and an
/// ha-worker `w1` active in it, its journal at `journal`.
struct Deployment {
    dir: TempDir,
    server: Proc,
    zk: String,
    root: String,
    ids: Identities,
    journal: std::path::PathBuf,
}

async fn deployment(name: &str) -> Deployment {
    let dir = TempDir::new(name);
    let data = dir.path().join("d1");
    let (server, zk) = start_coordinator(&["--data-dir", data.to_str().expect("utf-8")], dir.path());
    let root = format!("/{}", testkit::unique("reset"));
    let ids = provision(&zk, &root, dir.path());
    history(&zk, 300).await;
    let journal = dir.path().join("journal");
    Deployment { dir, server, zk, root, ids, journal }
}

impl Deployment {
    fn worker(&self) -> Proc {
        start_ha_worker(&self.zk, &self.root, &self.journal, "w1", 100, 3000, self.dir.path())
    }

    /// The coordinator replaced by one on an empty data dir (see [`reset`]).
    fn reset(&mut self) -> Proc {
        reset(&mut self.server, &self.zk, &self.root, &self.ids, &self.dir.path().join("d2"), self.dir.path())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_active_worker_is_not_fenced_for_ever_after_a_data_reset() {
    let mut d = deployment("reset-ha").await;
    let journal = d.journal.clone();
    let mut w1 = d.worker();
    let line = w1.wait_line("ha-worker active", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(800));
    let before = ha_worker::journal::read_entries(&journal).expect("journal");
    let high = before.iter().map(|e| e.token).max().expect("the active wrote");
    assert!(high.zxid >= 300, "the drill needs a term in the hundreds: {line}");

    let _fresh = d.reset();
    let started = Instant::now();
    w1.wait_line("ha-worker epoch advanced to", Duration::from_secs(30));
    println!("active again {:?} after the reset, past term {high}", started.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    let after = ha_worker::journal::read_entries(&journal).expect("journal");
    let new: Vec<Token> = after[before.len()..].iter().map(|e| e.token).collect();
    // A write already due when the server went may still land in the old
    // term (the journal judges it, and that term was still the newest);
    // after that, only newer ones.
    assert!(new.iter().filter(|t| **t > high).count() >= 3, "the worker wrote {new:?} after the reset");
    assert!(new.iter().all(|t| *t >= high), "a record after the reset is older than {high}: {new:?}");
    for w in after.windows(2) {
        assert!(w[0].token <= w[1].token, "the journal went backwards: {:?} then {:?}", w[0], w[1]);
    }
    let log = w1.log_text();
    assert_eq!(log.matches("fencing epoch advanced").count(), 1, "{log}");
    assert!(!log.contains("fencing alarm") && !log.contains("cannot catch up"), "{log}");
}

/// Creates task `id` (`add 1` to `acct`) as system-a and publishes it;
/// returns its final status and value.
async fn run_task(a: &(Client, ZkAuth), root: &str, ch: &lapin::Channel, queue: &str, id: &str) -> (String, i64) {
    let path = format!("{root}/tasks/{id}");
    let node = task_contract::TaskNode::pending("acct", task_contract::Op::Add, 1).encode();
    let created = a.0.zk.create(&path, node, a.1.policy().task(), CreateMode::Persistent);
    tokio::time::timeout(Duration::from_secs(10), created).await.expect("in time").expect("task node");
    publish_confirmed(ch, queue, &task_contract::TaskMessage::new(id).encode()).await;
    let (v, _) = e2e_tests::final_task_node(&a.0, &path, Duration::from_secs(20)).await;
    (v["status"].as_str().unwrap_or("?").into(), v["value"].as_i64().unwrap_or(i64::MIN))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn system_b_is_not_fenced_for_ever_after_a_data_reset_and_alarms_when_it_cannot_advance() {
    let mut d = deployment("reset-b").await;
    let (zk, root, ids, dir) = (d.zk.clone(), d.root.clone(), d.ids.clone(), d.dir.path().to_path_buf());
    let queue = testkit::broker::queue_name("reset-tasks");
    let store = dir.join("store");
    let b = start_system_b(&zk, &root, &queue, &store, "b1", 3000, &dir);
    let (_amqp, ch) = rabbitmq_confirmed_channel().await;
    let a = connect_as(&zk, &ids, "system-a").await;
    for i in 0..5 {
        assert_eq!(run_task(&a, &root, &ch, &queue, &format!("t{i}")).await, ("done".into(), i + 1));
    }
    drop(a);

    let _fresh = d.reset();
    let a = connect_as(&zk, &ids, "system-a").await;
    // The operator makes the epoch read-only: no holder can advance it, so
    // the store's tokens can never be caught up. One ERROR, the task fails.
    let (op, op_auth) = connect_as(&zk, &ids, "operator").await;
    let fencing = format!("{root}/fencing");
    op.zk.set_acl(&fencing, op_auth.policy().operator_dir(), None).await.expect("setacl");
    let retried = b.log_text().matches("task will be retried").count();
    let (status, _) = run_task(&a, &root, &ch, &queue, "x1").await;
    assert_eq!(status, "failed", "a task was applied under a token the store must refuse");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = b.log_text();
    assert_eq!(log.matches("a fencing token that cannot catch up").count(), 1, "{log}");
    assert!(log.matches("task will be retried").count() <= retried + 2, "the refusal looped:\n{log}");

    // `zkctl init` grants the epoch again; the next task advances it and
    // is applied, after the five of the old history.
    init(&zk, &root, &ids);
    assert_eq!(run_task(&a, &root, &ch, &queue, "x2").await, ("done".into(), 6));
    assert_eq!(run_task(&a, &root, &ch, &queue, "x3").await, ("done".into(), 7));
    let entity = e2e_tests::stored_entity(&store, "acct").expect("entity");
    assert_eq!(entity.epoch, 1, "{entity:?}");
    assert_eq!(b.log_text().matches("fencing epoch advanced").count(), 1);
}

/// A move from Apache ZooKeeper to the coordinator (or back, or a restore
/// from an old snapshot) is the same drill: the two servers' zxids have
/// nothing to do with each other (an ensemble's carry its election epoch
/// in their high 32 bits; this standalone oracle's are in the thousands
/// after the suite's other tests), and a coordinator on a fresh data dir
/// starts from 1. The journal keeps growing across the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terms_keep_growing_across_a_move_from_zookeeper_to_the_coordinator() {
    let dir = TempDir::new("move-ha");
    let root = format!("/{}", testkit::unique("move"));
    let journal = dir.path().join("journal");
    let zookeeper = testkit::zookeeper_addr().to_string();
    let ids = provision(&zookeeper, &root, dir.path());
    let mut w1 = start_ha_worker(&zookeeper, &root, &journal, "w1", 100, 3000, dir.path());
    w1.wait_line("ha-worker active", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(800));
    drop(w1);
    let before = ha_worker::journal::read_entries(&journal).expect("journal");
    let high = before.iter().map(|e| e.token).max().expect("the active wrote on ZooKeeper");
    assert!(high.zxid >= 100, "the drill needs a term above the coordinator's first ones: {high}");

    // The same system, moved: the coordinator, laid out by the operator.
    let data = dir.path().join("coordinator");
    let (_server, zk) = start_coordinator(&["--data-dir", data.to_str().expect("utf-8")], dir.path());
    init(&zk, &root, &ids);
    let mut w1 = start_ha_worker(&zk, &root, &journal, "w1", 100, 3000, dir.path());
    w1.wait_line("ha-worker epoch advanced to", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    let after = ha_worker::journal::read_entries(&journal).expect("journal");
    let new: Vec<Token> = after[before.len()..].iter().map(|e| e.token).collect();
    assert!(new.len() >= 3 && new.iter().all(|t| *t > high), "after the move: {new:?}, before: {high}");
}

/// The ha-worker's alarm: after a reset, with the epoch read-only, no term
/// of this server can pass the journal's. The worker writes nothing, says
/// so, and stays out of the election (it does not win and resign in a
/// loop); once the operator sets the epoch past the journal's, it rejoins
/// by itself and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_cannot_pass_the_journal_stays_out_until_the_operator_acts() {
    let mut d = deployment("reset-ha-alarm").await;
    let (journal, zk, root, ids) = (d.journal.clone(), d.zk.clone(), d.root.clone(), d.ids.clone());
    let mut w1 = d.worker();
    w1.wait_line("ha-worker active", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    // Stop it before the reset, so it finds the read-only epoch first thing.
    w1.kill9();
    let high = ha_worker::journal::read_entries(&journal).expect("journal").iter().map(|e| e.token).max();
    let high = high.expect("the active wrote");

    let _fresh = d.reset();
    let (op, op_auth) = connect_as(&zk, &ids, "operator").await;
    let fencing = format!("{root}/fencing");
    op.zk.set_acl(&fencing, op_auth.policy().operator_dir(), None).await.expect("setacl");
    let mut w1 = d.worker();
    w1.wait_line("ha-worker fencing alarm", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    let entries = ha_worker::journal::read_entries(&journal).expect("journal");
    assert!(entries.iter().all(|e| e.token <= high), "a term that cannot pass the journal wrote to it");
    let log = w1.log_text();
    assert!(log.matches("ERROR").count() <= 2, "the alarm floods the log:\n{log}");

    // The operator sets the epoch past the journal's; the worker rejoins.
    op.zk.set_data(&fencing, b"1".to_vec(), None).await.expect("set the epoch");
    w1.wait_line("ha-worker fencing epoch past the journal again", Duration::from_secs(40));
    w1.wait_line("ha-worker active", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let entries = ha_worker::journal::read_entries(&journal).expect("journal");
    assert!(entries.iter().any(|e| e.token > high), "the worker did not work after the operator acted");
}

/// An epoch that cannot be read (here: damaged by hand) gives no term a
/// token. The worker says so once and stays out of the election, instead
/// of winning a term, failing to read the epoch, resigning and winning
/// again; once the operator repairs the node, it rejoins and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_epoch_cannot_be_read_stays_out_until_it_is_repaired() {
    let d = deployment("epoch-damaged").await;
    let (op, _) = connect_as(&d.zk, &d.ids, "operator").await;
    let fencing = format!("{}/fencing", d.root);
    op.zk.set_data(&fencing, b"not a number".to_vec(), None).await.expect("damage the epoch");
    let mut w1 = d.worker();
    w1.wait_line("ha-worker fencing epoch unusable", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(3));
    let log = w1.log_text();
    let tries = log.matches("cannot read the fencing epoch").count();
    assert!(tries <= 2, "the worker won and resigned {tries} terms in a row:\n{log}");
    assert!(ha_worker::journal::read_entries(&d.journal).map(|e| e.is_empty()).unwrap_or(true), "it worked");

    op.zk.set_data(&fencing, b"3".to_vec(), None).await.expect("repair the epoch");
    w1.wait_line("ha-worker fencing epoch readable again", Duration::from_secs(40));
    let active = w1.wait_line("ha-worker active", Duration::from_secs(10));
    assert!(active.contains("epoch=3"), "{active}");
}

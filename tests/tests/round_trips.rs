//! What one task costs the coordination server, in requests: counted by
//! the server itself, per session, so that a round trip added to the task
//! path (a check, a read "to be sure") shows here before it shows as a
//! slower benchmark.
//!
//! The count is each session's last request number (`lcxid` in `cons`):
//! every request a client sends carries the next one, pings and auth do
//! not. Tasks run one after another, so no retry or contention adds to
//! them. The services' background work (system-a's outbox drain, the
//! config watches) may add a few requests in the window; the bound allows
//! for fewer than one per task, so one request more per task fails it.

use std::time::Duration;

use e2e_tests::ensemble::four_letter;
use e2e_tests::{entity_value, start_coordinator, start_system_a, start_system_b, TempDir};
use system_a::proto::tasks_client::TasksClient;
use system_a::proto::SubmitRequest;
use zk_recipes::session::Client;

/// Tasks per measurement.
const TASKS: i64 = 40;
/// Requests the services' background work may add over the whole window.
const BACKGROUND: i64 = TASKS / 2;

/// What a task costs today, by service, on the path `docs/scenarios/
/// coordination.md` and `lock.md` walk through, on an entity that has had
/// a task before (its lock's node exists, and its previous task is the
/// one the store names as its last):
/// - system-a: the outbox entry, the task node, the read that arms its
///   watch, the entry's delete, and the read of the result when the watch
///   fires;
/// - system-b: the task node read; the lock node's create (`create2`,
///   whose reply carries the czxid that is the fencing token) and the
///   queue's listing; the node read again with the fencing epoch (two
///   reads at once); the entity's previous task's node read, to answer it
///   if it was left pending (`Worker::close_previous`); the result
///   written; the lock node deleted.
const SYSTEM_A: i64 = 5;
const SYSTEM_B: i64 = 8;

/// The session of the only registered instance of `service`.
async fn session_of(c: &Client, root: &str, service: &str) -> i64 {
    let dir = servicekit::layout::Layout::new(root).service(service);
    for _ in 0..100 {
        if let Ok(kids) = c.zk.get_children(&dir, false).await {
            if let [only] = kids.as_slice() {
                let (_, stat) = c.zk.get_data(&format!("{dir}/{only}"), false).await.expect("member");
                return stat.ephemeral_owner;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service} did not register one instance under {dir}");
}

/// The last request number of session `sid`, from the server's `cons`.
fn last_request(zk: &str, sid: i64) -> i64 {
    let cons = four_letter(zk, "cons").expect("cons answered");
    let line = cons
        .lines()
        .find(|l| l.contains(&format!("sid={sid:#x},")))
        .unwrap_or_else(|| panic!("session {sid:#x} not in cons:\n{cons}"));
    let hex = line.split("lcxid=0x").nth(1).and_then(|s| s.split(',').next()).expect("lcxid");
    i64::from_str_radix(hex, 16).expect("lcxid in hex")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_costs_the_coordinator_a_known_number_of_requests() {
    let dir = TempDir::new("round-trips");
    let (_server, zk) = start_coordinator(&["--4lw-whitelist", "cons,srvr"], dir.path());
    let root = format!("/{}", testkit::unique("trips"));
    let queue = testkit::broker::queue_name("tasks");
    let store = dir.path().join("store");
    let _b = start_system_b(&zk, &root, &queue, &store, "b1", 10_000, dir.path());
    let (_a, a_addr) = start_system_a(&zk, &root, &queue, dir.path());
    let c = Client::connect(&zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");
    let (a_sid, b_sid) = (session_of(&c, &root, "system-a").await, session_of(&c, &root, "system-b").await);
    let mut grpc = TasksClient::connect(format!("http://{a_addr}")).await.expect("gRPC");
    let submit = |entity: String| SubmitRequest { entity, op: "add".into(), amount: 1, ..Default::default() };
    // A task on each entity first: what a first task makes, once (its
    // lock's node, the parents), is not a task's cost.
    for i in 0..TASKS {
        grpc.submit(submit(format!("e{i}"))).await.expect("the entity's first task");
    }

    let (a0, b0) = (last_request(&zk, a_sid), last_request(&zk, b_sid));
    for i in 0..TASKS {
        let done = tokio::time::timeout(Duration::from_secs(30), grpc.submit(submit(format!("e{i}"))));
        done.await.expect("answered in time").expect("done");
    }
    let (a, b) = (last_request(&zk, a_sid) - a0, last_request(&zk, b_sid) - b0);
    println!(
        "{TASKS} tasks: system-a sent {a} requests ({:.2} a task), system-b {b} ({:.2} a task)",
        a as f64 / TASKS as f64,
        b as f64 / TASKS as f64
    );
    assert_eq!((0..TASKS).map(|i| entity_value(&store, &format!("e{i}"))).sum::<i64>(), 2 * TASKS);
    for (service, sent, per_task) in [("system-a", a, SYSTEM_A), ("system-b", b, SYSTEM_B)] {
        assert!(sent >= per_task * TASKS, "{service} sent {sent} requests for {TASKS} tasks: the count misses some");
        assert!(
            sent <= per_task * TASKS + BACKGROUND,
            "{service} sent {sent} requests for {TASKS} tasks, more than {per_task} a task: a round trip was added"
        );
    }
}

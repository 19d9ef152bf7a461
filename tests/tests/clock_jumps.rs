//! A service whose wall clock steps (NTP correcting it, a VM resumed, an
//! operator's `date -s`) keeps every promise: its timers run on the
//! monotonic clock, and nothing it decides compares its own wall clock
//! with the times the coordination server stamps on znodes.
//!
//! system-a is the one service that ages znodes: the outbox drain leaves
//! entries younger than a moment to the Submit that wrote them, and the
//! reaper deletes finished tasks, with their request ids, after the
//! retention. Both once computed an age as "my clock minus the znode's
//! ctime/mtime", the server's clock: a system-a one hour behind left every
//! entry "fresh" for an hour (accepted tasks unpublished), and one a day
//! ahead reaped finished tasks at once (a client retrying with its request
//! id inside the retention got a second task, applied twice). Each test
//! steps one system-a's clock (`testkit::clock`, libfaketime) and checks
//! the promise that step used to break.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e_tests::{
    entity_value, start_coordinator, start_system_a_on, start_system_b, start_unpublishing_system_a, Place, Proc,
    TempDir,
};
use system_a::proto::tasks_client::TasksClient;
use system_a::proto::{SubmitReply, SubmitRequest};
use testkit::clock::SkewedClock;
use zk_recipes::session::Client;

const ONE_HOUR: i64 = 3600;
const ONE_DAY: i64 = 24 * ONE_HOUR;

async fn children(c: &Client, path: &str) -> Vec<String> {
    tokio::time::timeout(Duration::from_secs(10), c.zk.get_children(path, false))
        .await
        .expect("in time")
        .unwrap_or_default()
}

/// The coordinator and a system-b under a root of their own, with
/// system-a's config (`timeout_ms`) written; system-a is each test's own.
struct System {
    dir: TempDir,
    zk: String,
    client: Client,
    root: String,
    queue: String,
    store: PathBuf,
    _coordinator: Proc,
    _system_b: Proc,
}

impl System {
    async fn start(name: &str, timeout_ms: u64) -> System {
        let dir = TempDir::new(name);
        let (coordinator, zk) = start_coordinator(&[], dir.path());
        let client = Client::connect(&zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");
        let root = configured_root(&client, name, timeout_ms).await;
        let queue = testkit::broker::queue_name("tasks");
        let store = dir.path().join("store");
        let system_b = start_system_b(&zk, &root, &queue, &store, "b1", 4000, dir.path());
        System { dir, zk, client, root, queue, store, _coordinator: coordinator, _system_b: system_b }
    }
}

/// A root with system-a's config (`timeout_ms`), for one test.
async fn configured_root(c: &Client, prefix: &str, timeout_ms: u64) -> String {
    let root = format!("/{}", testkit::unique(prefix));
    let configured = async {
        zk_recipes::ensure_path(&c.zk, &format!("{root}/config/system-a")).await.expect("config");
        let body = format!(r#"{{"timeout_ms":{timeout_ms}}}"#).into_bytes();
        c.zk.set_data(&format!("{root}/config/system-a"), body, None).await.expect("set config");
    };
    tokio::time::timeout(Duration::from_secs(10), configured).await.expect("configured in time");
    root
}

async fn submit(addr: &str, entity: &str, request_id: &str) -> Result<SubmitReply, tonic::Status> {
    let mut g = TasksClient::connect(format!("http://{addr}")).await.expect("gRPC");
    let req = SubmitRequest { entity: entity.into(), op: "add".into(), amount: 1, request_id: request_id.into() };
    g.submit(req).await.map(|r| r.into_inner())
}

/// Accepted tasks that a system-a left in the outbox (it could not reach
/// the broker, then died) are published by the next system-a although its
/// clock is an hour behind the server's: their entries' ctimes are an hour
/// in its future.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_system_a_an_hour_behind_publishes_what_the_outbox_holds() {
    let s = System::start("clock-outbox", 60_000).await;
    let (dir, zk, c, root, queue, store) = (&s.dir, &s.zk, &s.client, &s.root, &s.queue, &s.store);

    // It accepts tasks and cannot publish them.
    let (mut a1, a1_addr) = start_unpublishing_system_a(zk, root, queue, &[], dir.path());
    let mut calls = Vec::new();
    for i in 0..3 {
        let addr = a1_addr.clone();
        calls.push(tokio::spawn(async move { submit(&addr, "acct", &format!("behind-{i}")).await }));
    }
    let started = Instant::now();
    while children(c, &format!("{root}/tasks")).await.len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(20), "system-a did not record the 3 tasks");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a1.kill9();
    for call in calls {
        let _ = call.await;
    }

    let clock = SkewedClock::new(dir.path());
    clock.step(-ONE_HOUR);
    let restarted = Instant::now();
    let (_a2, _) = start_system_a_on(&Place::Loopback, zk, root, queue, &[], &clock.env(), dir.path());
    while entity_value(store, "acct") < 3 {
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "a system-a an hour behind left accepted tasks unpublished: {} of 3 applied after {:?}, outbox {:?}",
            entity_value(store, "acct"),
            restarted.elapsed(),
            children(c, &format!("{root}/outbox")).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("published by a system-a an hour behind {:?} after it started", restarted.elapsed());
    assert_eq!(entity_value(store, "acct"), 3);
}

/// A finished task, and with it its request id, is kept for the retention
/// although system-a's clock is a day ahead of the server's, so a client
/// that retries with its request id inside the retention gets the same
/// task's result, not a second task.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_system_a_a_day_ahead_keeps_request_ids_for_the_retention() {
    let s = System::start("clock-reaper", 20_000).await;
    let (dir, zk, c, root, queue, store) = (&s.dir, &s.zk, &s.client, &s.root, &s.queue, &s.store);

    let clock = SkewedClock::new(dir.path());
    clock.step(ONE_DAY);
    // Retention 8 s: the reaper looks every 8 s; the retry below comes
    // 10 s after the task finished, well inside the retention as the
    // server's clock counts it only if the reaper's first look at the
    // finished task starts the count.
    let (_a, addr) =
        start_system_a_on(&Place::Loopback, zk, root, queue, &["--task-retention-secs", "8"], &clock.env(), dir.path());
    let first = submit(&addr, "acct", "ahead-1").await.expect("the task is done");
    assert_eq!((first.status.as_str(), first.value), ("done", 1));
    // A second task on the entity, so the first is no longer the entity's
    // last: only the request record can then tell a retry of it from a
    // new task (system-b recognises a copy of the last one by itself).
    let second = submit(&addr, "acct", "ahead-2").await.expect("the task is done");
    assert_eq!((second.status.as_str(), second.value), ("done", 2));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let tasks = children(c, &format!("{root}/tasks")).await;
    let again = submit(&addr, "acct", "ahead-1").await.expect("the retry is answered");
    assert_eq!(
        (again.task_id.as_str(), again.value),
        (first.task_id.as_str(), 1),
        "a retry inside the retention was not answered with its task's result (tasks left: {tasks:?}); entity value {}",
        entity_value(store, "acct")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(entity_value(store, "acct"), 2, "the retried request was applied twice");
}

//! Scenarios 1-3 end to end, one test per scenario and server, so a
//! failure names the promise that broke: real system-a and system-b
//! processes, a real RabbitMQ, and the coordinator or Apache ZooKeeper.
//! With ACLs on, as deployed: the tree is laid out by `zkctl init`, each
//! service runs as its own identity, and this test acts as the operator
//! (to change config) and the dashboard (to look at the lock queues).
//! Scenario 4 (active/standby) is `ha.rs`; the task path under attack is
//! `attack.rs`, `exactly_once.rs` and `fencing_reset.rs`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::{start_coordinator, start_system_a, start_system_a_with, start_system_b, Proc, TempDir};
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::BasicProperties;
use system_a::proto::tasks_client::TasksClient;
use system_a::proto::{SubmitRequest, WatchRequest};
use task_contract::TaskNode;
use tonic::transport::Channel;
use zk_recipes::session::Client;

const SESSION_MS: u64 = 4000;

struct System {
    zk: String,
    root: String,
    queue: String,
    store: std::path::PathBuf,
    a: Proc,
    a_addr: String,
    bs: Vec<Proc>,
    client: Client,
}

async fn start(zk: &str, dir: &Path) -> System {
    let root = format!("/{}", testkit::unique("sys"));
    let queue = testkit::broker::queue_name("tasks");
    let store = dir.join("store");
    let ids = e2e_tests::provision(zk, &root, dir);
    let packets: Vec<(String, Vec<u8>)> = ["operator", "dashboard"]
        .iter()
        .flat_map(|r| servicekit::auth::ZkAuth::from_file(&ids.file(r)).expect("credentials").auth_packets())
        .collect();
    let client = Client::connect_authenticated(zk, Duration::from_secs(10), Duration::from_secs(10), packets)
        .await
        .expect("connect");
    zk_recipes::ensure_path(&client.zk, &format!("{root}/config/system-b")).await.expect("config dir");
    client.zk.set_data(&format!("{root}/config/system-b"), br#"{"work_ms":2}"#.to_vec(), None).await.expect("set");
    let bs: Vec<Proc> =
        (1..=3).map(|i| start_system_b(zk, &root, &queue, &store, &format!("b{i}"), SESSION_MS, dir)).collect();
    let (a, a_addr) = start_system_a(zk, &root, &queue, dir);
    System { zk: zk.to_string(), root, queue, store, a, a_addr, bs, client }
}

impl System {
    async fn grpc(&self) -> TasksClient<Channel> {
        TasksClient::connect(format!("http://{}", self.a_addr)).await.expect("connect to system-a")
    }

    fn value(&self, entity: &str) -> i64 {
        e2e_tests::entity_value(&self.store, entity)
    }

    /// Sets `/config/<service>` as the operator and waits until every
    /// instance of it has applied the change.
    async fn configure(&mut self, service: &str, json: &str) {
        let path = format!("{}/config/{service}", self.root);
        zk_recipes::ensure_path(&self.client.zk, &path).await.expect("config node");
        self.client.zk.set_data(&path, json.as_bytes().to_vec(), None).await.expect("set config");
        let applied = format!("config applied {json}");
        let instances: Vec<&mut Proc> = match service {
            "system-a" => vec![&mut self.a],
            _ => self.bs.iter_mut().collect(),
        };
        for p in instances {
            p.wait_line(&applied, Duration::from_secs(10));
        }
    }

    async fn members(&self, svc: &str) -> Vec<String> {
        zk_recipes::registry::members(&self.client, &format!("{}/services/{svc}", self.root))
            .await
            .expect("members")
            .into_iter()
            .map(|m| m.0)
            .collect()
    }
}

/// Scenario 1: A → RabbitMQ → B → znode → A, a keyed retry that is the
/// same task, and a result nobody else may forge.
async fn coordination(zk: &str, dir: &Path) {
    let sys = start(zk, dir).await;
    let mut grpc = sys.grpc().await;
    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        grpc.submit(SubmitRequest { entity: "acct-1".into(), op: "add".into(), amount: 5, ..Default::default() }),
    )
    .await
    .expect("an answer in time")
    .expect("submit")
    .into_inner();
    assert_eq!((reply.status.as_str(), reply.value), ("done", 5));
    assert!(reply.worker.starts_with('b') && reply.token > 0, "{reply:?}");

    // As a careful caller sends it, with a request id: its retry is the
    // same task, under least-privilege ACLs and on either server.
    let keyed = SubmitRequest { entity: "acct-k".into(), op: "add".into(), amount: 2, request_id: "pay-1".into() };
    let mut answers = Vec::new();
    for _ in 0..2 {
        let r = tokio::time::timeout(Duration::from_secs(20), grpc.submit(keyed.clone())).await;
        answers.push(r.expect("an answer in time").expect("a keyed submit").into_inner());
    }
    assert_eq!(answers[0], answers[1], "the retry is the same task");
    assert_eq!(sys.value("acct-k"), 2);

    // The services created their nodes with least privilege: a client with
    // no identity can neither forge this task's result nor change config.
    let anon = Client::connect(&sys.zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");
    for path in [format!("{}/tasks/{}", sys.root, reply.task_id), format!("{}/config/system-b", sys.root)] {
        let forged = tokio::time::timeout(Duration::from_secs(10), anon.zk.set_data(&path, b"{}".to_vec(), None))
            .await
            .expect("an answer in time");
        assert!(matches!(forged, Err(zk_recipes::ZkError::NoAuth)), "anonymous setData on {path}: {forged:?}");
    }
    // Logs written to a file carry no colour codes (they are not a terminal).
    for p in sys.bs.iter().chain([&sys.a]) {
        assert!(!p.log_text().contains('\x1b'), "{}'s log file holds ANSI escape codes", p.name);
    }
}

/// Scenario 2: three workers, one entity, one holder at a time; a holder
/// killed mid-task leaves the task applied exactly once.
async fn lock(zk: &str, dir: &Path) {
    let mut sys = start(zk, dir).await;
    let grpc = sys.grpc().await;
    // 200 concurrent submits, half of them on one hot entity. Every one
    // returns, the hot entity ends exact, and each hot task saw a different
    // value: the lock let one at a time in.
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..200 {
        let mut g = grpc.clone();
        let entity = if i % 2 == 0 { "hot".to_string() } else { format!("e-{}", i % 10) };
        calls.push(tokio::spawn(async move {
            let r = g
                .submit(SubmitRequest { entity: entity.clone(), op: "add".into(), amount: 1, ..Default::default() })
                .await;
            (entity, r)
        }));
    }
    let mut hot_values = BTreeSet::new();
    for c in calls {
        let (entity, r) = tokio::time::timeout(Duration::from_secs(60), c).await.expect("in time").expect("task");
        let r = r.unwrap_or_else(|s| panic!("a submit failed: {s:?}")).into_inner();
        assert_eq!(r.status, "done");
        if entity == "hot" {
            assert!(hot_values.insert(r.value), "two tasks on the hot entity saw the same value {}", r.value);
        }
    }
    println!("200 concurrent submits in {:?}", started.elapsed());
    assert_eq!(sys.value("hot"), 100);
    assert_eq!(hot_values, (1..=100).collect::<BTreeSet<i64>>());
    let spread: i64 = (1..10).step_by(2).map(|i| sys.value(&format!("e-{i}"))).sum();
    assert_eq!(spread, 100);

    // A worker killed in the middle of a task: RabbitMQ redelivers it, and
    // it is applied exactly once.
    sys.configure("system-b", r#"{"work_ms":1500}"#).await;
    sys.configure("system-a", r#"{"timeout_ms":30000}"#).await;
    let mut g = grpc.clone();
    let pending = tokio::spawn(async move {
        g.submit(SubmitRequest { entity: "redo".into(), op: "add".into(), amount: 7, ..Default::default() }).await
    });
    let lock_dir = format!("{}/locks/redo", sys.root);
    let holder = loop {
        let q = zk_recipes::lock::Lock::new(&sys.client, lock_dir.clone()).queue().await.expect("queue");
        if let Some((_, owner)) = q.first() {
            break owner.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let idx: usize = holder.trim_start_matches('b').parse::<usize>().expect("b<n>") - 1;
    let killed_at = Instant::now();
    sys.bs[idx].kill9();
    let r =
        tokio::time::timeout(Duration::from_secs(40), pending).await.expect("in time").expect("task").expect("submit");
    let r = r.into_inner();
    println!("task redelivered after kill -9 of {holder}, answered in {:?} by {}", killed_at.elapsed(), r.worker);
    assert_ne!(r.worker, holder);
    assert_eq!((r.status.as_str(), r.value), ("done", 7));
    assert_eq!(sys.value("redo"), 7, "the redelivered task was applied twice");
}

/// Scenario 3: a config change reaches every running instance; every
/// instance is registered, and one killed leaves the registry within its
/// session timeout.
async fn config_and_registry(zk: &str, dir: &Path) {
    let mut sys = start(zk, dir).await;
    sys.configure("system-b", r#"{"work_ms":1}"#).await;
    assert_eq!(sys.members("system-b").await, vec!["b1", "b2", "b3"]);
    assert_eq!(sys.members("system-a").await, vec!["a1"]);
    sys.bs[1].kill9();
    let started = Instant::now();
    while sys.members("system-b").await.contains(&"b2".to_string()) {
        assert!(started.elapsed() < Duration::from_secs(10), "b2 is still registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sys.members("system-b").await, vec!["b1", "b3"]);
}

/// Scenario 1's queue under bad input: a poison message and a message of a
/// newer contract version are dead-lettered, not redelivered for ever, and
/// change nothing.
async fn poison(zk: &str, dir: &Path) {
    let sys = start(zk, dir).await;
    let amqp = lapin::Connection::connect(&testkit::rabbitmq_url(), lapin::ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let ch = amqp.create_channel().await.expect("channel");
    dead_lettered(&ch, &sys.queue, b"this is not JSON").await;
    // Well formed as it is, a newer writer may mean something this build
    // would do wrongly. It is not applied, and the log says why.
    let newer = format!(r#"{{"version":{},"id":"from-a-newer-system-a"}}"#, task_contract::MESSAGE_VERSION + 1);
    dead_lettered(&ch, &sys.queue, newer.as_bytes()).await;
    assert!(
        sys.bs.iter().any(|b| b.log_text().contains("task message of a newer version: dead-lettering it")),
        "no system-b said why it dead-lettered the newer message"
    );
    assert!(
        !sys.store.exists() || std::fs::read_dir(&sys.store).expect("store").next().is_none(),
        "something was applied"
    );
}

/// Publishes `body` to `queue` and waits for it in the queue's dead-letter
/// queue.
async fn dead_lettered(ch: &lapin::Channel, queue: &str, body: &[u8]) {
    ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, BasicProperties::default())
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let dlq = format!("{queue}.dlq");
    let started = Instant::now();
    let dead = loop {
        if let Some(m) = ch.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true }).await.expect("basic.get") {
            break m;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{:?} never reached {dlq}", String::from_utf8_lossy(body));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.delivery.data, body);
}

/// A task node system-a cannot read is not a finished task: the reaper
/// keeps it (a finished one beside it is reaped) and Watch reports it as
/// unreadable instead of as a status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_task_node_is_neither_finished_nor_reaped() {
    let dir = TempDir::new("unreadable-task");
    let (server, zk) = start_coordinator(&["--tick-time", "500"], dir.path());
    let root = format!("/{}", testkit::unique("unreadable"));
    let client = Client::connect(&zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");
    let tasks = format!("{root}/tasks");
    zk_recipes::ensure_path(&client.zk, &tasks).await.expect("tasks dir");
    let open = zookeeper_async::Acl::open_unsafe().clone();
    for (name, data) in
        [("garbage", b"this is not JSON".to_vec()), ("finished", TaskNode::done(1, "b1", 0, 1).encode())]
    {
        let path = format!("{tasks}/{name}");
        client.zk.create(&path, data, open.clone(), zookeeper_async::CreateMode::Persistent).await.expect("create");
    }
    let (_a, addr) = start_system_a_with(
        &zk,
        &root,
        &testkit::broker::queue_name("tasks"),
        &["--task-retention-secs", "1"],
        dir.path(),
    );

    let mut grpc = TasksClient::connect(format!("http://{addr}")).await.expect("connect to system-a");
    let mut updates =
        tokio::time::timeout(Duration::from_secs(10), grpc.watch(WatchRequest { task_id: "garbage".into() }))
            .await
            .expect("an answer in time")
            .expect("watch")
            .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), updates.message()).await.expect("an update in time");
    match first {
        Err(s) => assert_eq!(s.code(), tonic::Code::DataLoss, "{s:?}"),
        Ok(update) => panic!("an unreadable node streamed as {update:?}"),
    }

    let started = Instant::now();
    while client.zk.exists(&format!("{tasks}/finished"), false).await.expect("exists").is_some() {
        assert!(started.elapsed() < Duration::from_secs(15), "the reaper never reaped the finished task");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The reaper has run over both; give it one more pass to be sure.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let garbage = client.zk.exists(&format!("{tasks}/garbage"), false).await.expect("exists");
    assert!(garbage.is_some(), "the unreadable task node was reaped as if finished");
    // The coordinator's log file carries no colour codes either.
    let log = server.log_text();
    assert!(!log.is_empty() && !log.contains('\x1b'), "the coordinator's log file holds ANSI escape codes:\n{log}");
}

/// One test per scenario and server: `scenario_1_coordination::on_zookeeper`.
macro_rules! on_both_servers {
    ($name:ident, $scenario:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn on_the_coordinator() {
                let dir = TempDir::new(concat!(stringify!($name), "-coordinator"));
                let (_server, addr) = start_coordinator(&["--tick-time", "500"], dir.path());
                $scenario(&addr, dir.path()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn on_zookeeper() {
                let dir = TempDir::new(concat!(stringify!($name), "-zookeeper"));
                $scenario(&testkit::zookeeper_addr().to_string(), dir.path()).await;
            }
        }
    };
}

on_both_servers!(scenario_1_coordination, coordination);
on_both_servers!(scenario_1_poison_messages, poison);
on_both_servers!(scenario_2_lock, lock);
on_both_servers!(scenario_3_config_and_registry, config_and_registry);

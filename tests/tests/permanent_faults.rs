//! Permanent faults back off and say so; they do not loop.
//!
//! A store or journal the service cannot write does not heal by retrying.
//! system-b must not redeliver such a task forever: it retries with backoff
//! and dead-letters the task after a bounded number of attempts, while
//! other entities carry on. ha-worker must not win and resign terms in a
//! loop: it stays out of the election, loudly, until the journal is fixed.
//!
//! The tests run as root, for whom permissions do not stop a write, so the
//! fault is one root gets too: a directory where the service needs a file
//! (EISDIR), or a file where it needs a directory (ENOTDIR).

use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::{entity_value, start_coordinator, start_ha_worker, start_system_b, Proc, TempDir};
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;
use lapin::BasicProperties;

const SESSION_MS: u64 = 4000;

async fn publish(ch: &lapin::Channel, queue: &str, body: serde_json::Value) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body.to_string().as_bytes(),
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_on_an_unwritable_store_is_dead_lettered_after_bounded_attempts() {
    let dir = TempDir::new("permanent-store");
    let (_server, zk) = start_coordinator(&["--tick-time", "500"], dir.path());
    let root = format!("/{}", testkit::unique("perm"));
    let queue = testkit::broker::queue_name("tasks");
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).expect("store dir");
    // The entity's lock file cannot be opened for writing, by anyone.
    std::fs::create_dir(store.join("broken.lock")).expect("a directory in the lock file's place");
    let mut b = start_system_b(&zk, &root, &queue, &store, "b1", SESSION_MS, dir.path());

    let amqp = lapin::Connection::connect(&testkit::rabbitmq_url(), lapin::ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let ch = amqp.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    // The tasks' nodes, as system-a writes them: what system-b applies.
    let c = zk_recipes::session::Client::connect(&zk, Duration::from_secs(10), Duration::from_secs(10))
        .await
        .expect("connect");
    zk_recipes::ensure_path(&c.zk, &format!("{root}/tasks")).await.expect("tasks dir");
    for (id, entity, amount) in [("t-broken", "broken", 1), ("t-fine", "fine", 7)] {
        let node = task_contract::TaskNode::pending(entity, task_contract::Op::Add, amount).encode();
        let open = zookeeper_async::Acl::open_unsafe().clone();
        let path = format!("{root}/tasks/{id}");
        c.zk.create(&path, node, open, zookeeper_async::CreateMode::Persistent).await.expect("task node");
    }
    let started = Instant::now();
    publish(&ch, &queue, serde_json::json!({"version": 2, "id": "t-broken"})).await;
    // Another entity is not held up by the broken one.
    publish(&ch, &queue, serde_json::json!({"version": 2, "id": "t-fine"})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while entity_value(&store, "fine") != 7 {
        assert!(Instant::now() < deadline, "a healthy entity was held up by the broken one");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let dlq = format!("{queue}.dlq");
    let dead = loop {
        if let Some(m) = ch.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true }).await.expect("get") {
            break m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the task on the unwritable store never reached {dlq}: it is redelivered forever; log:\n{}",
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = started.elapsed();
    println!("dead-lettered after {took:?}");
    let body: serde_json::Value = serde_json::from_slice(&dead.delivery.data).expect("the task's JSON");
    assert_eq!(body["id"], "t-broken");
    let headers = dead.delivery.properties.headers().clone().expect("headers on the dead letter");
    // Attempts 1-4 were re-queued with their count; the fifth dead-lettered.
    assert_eq!(headers.inner().get("x-attempts"), Some(&AMQPValue::LongLongInt(4)), "{headers:?}");
    assert!(headers.inner().contains_key("x-death"), "RabbitMQ's own record of the dead-lettering: {headers:?}");
    // With backoff, 5 attempts take seconds, not a fraction of one.
    assert!(took >= Duration::from_secs(5), "attempts without backoff: dead-lettered after {took:?}");

    // Loud, named, and not a flood: an ERROR naming the path and the fix,
    // at most once per period, then one when the task is given up.
    let log = b.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.iter().any(|l| l.contains("broken.lock") && l.contains("permanent fault")),
        "no ERROR names the broken path:\n{log}"
    );
    assert!(errors.len() <= 3, "the permanent fault floods the log ({} ERROR lines):\n{log}", errors.len());
    let retried = log.matches("task will be retried").count();
    assert_eq!(retried, 0, "the permanent fault was retried as a transient one:\n{log}");
    b.kill9();
}

fn worker(zk: &str, root: &str, journal: &Path, name: &str, log_dir: &Path) -> Proc {
    start_ha_worker(zk, root, journal, name, 100, SESSION_MS, log_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unusable_journal_keeps_the_worker_out_of_the_election_until_fixed() {
    let dir = TempDir::new("permanent-journal");
    let (_server, zk) = start_coordinator(&["--tick-time", "500"], dir.path());
    let root = format!("/{}", testkit::unique("perm-ha"));
    // A file where the journal's directory should be.
    let parent = dir.path().join("journal-dir");
    std::fs::write(&parent, b"not a directory").expect("a file");
    let mut bad = worker(&zk, &root, &parent.join("journal"), "bad", dir.path());
    bad.wait_line("ha-worker journal unusable", Duration::from_secs(10));
    let good_journal = dir.path().join("good-journal");
    let mut good = worker(&zk, &root, &good_journal, "good", dir.path());
    good.wait_line("ha-worker active", Duration::from_secs(10));
    // Alone in the election, the good worker keeps its one term: the bad
    // one never took a term to resign it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bad_log = bad.log_text();
    assert!(
        bad_log.contains("ERROR") && bad_log.contains("journal-dir") && bad_log.contains("staying out of the election"),
        "no ERROR names the journal and says what happens:\n{bad_log}"
    );
    let terms: std::collections::BTreeSet<zk_recipes::fencing::Token> =
        ha_worker::journal::read_entries(&good_journal).expect("the good journal").iter().map(|e| e.token).collect();
    assert_eq!(terms.len(), 1, "leadership changed hands: terms {terms:?}");

    // Fixed: the worker rejoins on its own and takes over when needed.
    std::fs::remove_file(&parent).expect("remove the file");
    std::fs::create_dir(&parent).expect("make the directory");
    bad.wait_line("ha-worker journal usable again", Duration::from_secs(40));
    bad.wait_line("ha-worker standby", Duration::from_secs(5));
    good.kill9();
    bad.wait_line("ha-worker active", Duration::from_millis(SESSION_MS) + Duration::from_secs(10));
}

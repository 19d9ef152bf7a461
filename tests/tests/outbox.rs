//! system-a's transactional outbox: a task accepted (recorded in the
//! coordination server) but not yet published when system-a dies is
//! published by the next system-a, and done exactly once; a second copy of
//! a published task (what at-least-once publishing may send) is applied as
//! a no-op by system-b.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::{
    entity_value, rabbitmq, start_coordinator, start_system_a, start_system_b, start_unpublishing_system_a, TempDir,
};
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use system_a::proto::tasks_client::TasksClient;
use system_a::proto::SubmitRequest;
use zk_recipes::session::Client;

async fn children(c: &Client, path: &str) -> Vec<String> {
    tokio::time::timeout(Duration::from_secs(10), c.zk.get_children(path, false))
        .await
        .expect("in time")
        .unwrap_or_default()
}

async fn accepted_then_killed(zk: &str, dir: &Path) {
    let root = format!("/{}", testkit::unique("outbox"));
    let queue = testkit::broker::queue_name("tasks");
    let store = dir.join("store");
    let c = Client::connect(zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");
    let configured = async {
        zk_recipes::ensure_path(&c.zk, &format!("{root}/config/system-a")).await.expect("config");
        c.zk.set_data(&format!("{root}/config/system-a"), br#"{"timeout_ms":60000}"#.to_vec(), None)
            .await
            .expect("set config");
    };
    tokio::time::timeout(Duration::from_secs(10), configured).await.expect("configured in time");
    let _b = start_system_b(zk, &root, &queue, &store, "b1", 4000, dir);

    let (mut a1, a1_addr) = start_unpublishing_system_a(zk, &root, &queue, &[], dir);
    let grpc = TasksClient::connect(format!("http://{a1_addr}")).await.expect("gRPC");
    let mut calls = Vec::new();
    for _ in 0..5 {
        let mut g = grpc.clone();
        calls.push(tokio::spawn(async move {
            g.submit(SubmitRequest { entity: "acct".into(), op: "add".into(), amount: 1, ..Default::default() }).await
        }));
    }
    let started = Instant::now();
    while children(&c, &format!("{root}/tasks")).await.len() < 5 {
        assert!(started.elapsed() < Duration::from_secs(20), "system-a did not record the 5 tasks");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(children(&c, &format!("{root}/outbox")).await.len(), 5, "every accepted task is in the outbox");
    a1.kill9();
    for call in calls {
        let r = tokio::time::timeout(Duration::from_secs(10), call).await.expect("in time").expect("task");
        assert!(r.is_err(), "a Submit answered although nothing was published: {r:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(entity_value(&store, "acct"), 0, "a task ran although it was never published");

    // The next system-a publishes what the dead one accepted.
    let restarted = Instant::now();
    let (_a2, _) = start_system_a(zk, &root, &queue, dir);
    let tasks = children(&c, &format!("{root}/tasks")).await;
    loop {
        let mut done = 0;
        for t in &tasks {
            let path = format!("{root}/tasks/{t}");
            let read = c.zk.get_data(&path, false);
            let (data, _) = tokio::time::timeout(Duration::from_secs(10), read).await.expect("in time").expect("task");
            if String::from_utf8_lossy(&data).contains(r#""status":"done""#) {
                done += 1;
            }
        }
        if done == tasks.len() {
            break;
        }
        assert!(restarted.elapsed() < Duration::from_secs(30), "{done} of {} tasks done", tasks.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("the tasks a killed system-a accepted were done {:?} after the next one started", restarted.elapsed());
    assert_eq!(entity_value(&store, "acct"), 5);
    let started = Instant::now();
    while !children(&c, &format!("{root}/outbox")).await.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "confirmed tasks left in the outbox");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A second copy of each (a publish whose confirm was lost, sent again):
    // the message names only the task, whose node is final, so system-b
    // takes it and applies nothing (task-contract, message version 2).
    let amqp = rabbitmq().await;
    let ch = amqp.create_channel().await.expect("channel");
    for t in &tasks {
        let body = task_contract::TaskMessage::new(t.as_str()).encode();
        ch.basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &body, {
            BasicProperties::default().with_delivery_mode(2)
        })
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    let started = Instant::now();
    loop {
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let q = ch.queue_declare(queue.as_str().into(), passive, Default::default()).await.expect("queue");
        if q.message_count() == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "system-b did not take the copies");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(entity_value(&store, "acct"), 5, "a re-published copy was applied twice");
    let _ = amqp.close(0, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_tasks_of_a_killed_system_a_are_published_by_the_next_on_the_coordinator() {
    let dir = TempDir::new("outbox-c");
    let (_server, zk) = start_coordinator(&["--tick-time", "500"], dir.path());
    accepted_then_killed(&zk, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_tasks_of_a_killed_system_a_are_published_by_the_next_on_zookeeper() {
    let dir = TempDir::new("outbox-z");
    accepted_then_killed(&testkit::zookeeper_addr().to_string(), dir.path()).await;
}

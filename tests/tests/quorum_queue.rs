//! The task queue as a quorum queue, on the real broker:
//! - it is provisioned as one, with at-least-once dead-lettering;
//! - a message whose consumer dies before acking it (a crash loop) is
//!   handed out no more than the delivery limit allows, then waits in the
//!   dead-letter queue: never lost, never looping;
//! - a classic queue of the same name, left by an older release, is not
//!   silently kept: the import stops and names the migration, which drops
//!   only an empty classic queue;
//! - what a test leaves on the broker (its queues, exchanges and users) is
//!   swept by name, and nothing else is.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use servicekit::broker::DELIVERY_LIMIT;

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl").args(args).output().expect("run rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `rabbitmqctl list_queues name <item>`'s value for `queue`.
fn queue_info(queue: &str, item: &str) -> Option<String> {
    rabbitmqctl(&["-q", "list_queues", "name", item])
        .lines()
        .find_map(|l| l.split_once('\t').filter(|(name, _)| *name == queue).map(|(_, v)| v.to_string()))
}

/// The reason of the first record in RabbitMQ's `x-death` header.
fn death_reason(headers: &FieldTable) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else { return None };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else { return None };
    let AMQPValue::LongString(reason) = first.inner().get("reason")? else { return None };
    Some(String::from_utf8_lossy(reason.as_bytes()).into_owned())
}

fn rabbitmq_sh(args: &[&str]) -> (bool, String) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq.sh");
    let out = Command::new(script).args(args).output().expect("run scripts/rabbitmq.sh");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_its_consumer_is_dead_lettered_at_the_delivery_limit() {
    let queue = testkit::broker::queue_name("qq-crash");
    let users = tokio::task::block_in_place(|| testkit::broker::provision(&queue));
    let args = tokio::task::block_in_place(|| queue_info(&queue, "arguments")).expect("the queue exists");
    assert_eq!(tokio::task::block_in_place(|| queue_info(&queue, "type")).as_deref(), Some("quorum"));
    for arg in ["at-least-once", "reject-publish", &format!("{{\"x-delivery-limit\",{DELIVERY_LIMIT}}}")] {
        assert!(args.contains(arg), "{arg} not in {args}");
    }

    // system-a publishes one task message.
    let a = users.broker("system-a").connect().await.expect("system-a logs in");
    let ch = a.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let confirm = ch
        .basic_publish(
            format!("{queue}.in").as_str().into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"the task that kills its worker",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(!confirm.is_nack());

    // system-b takes it and dies before the ack, again and again: each
    // time its connection goes, the broker takes the message back.
    let b = users.broker("system-b");
    let mut deliveries = 0;
    for _ in 0..(DELIVERY_LIMIT + 5) {
        let conn = b.connect().await.expect("system-b logs in");
        let ch = conn.create_channel().await.expect("channel");
        let got = ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }).await.expect("get");
        // The "crash": gone without an ack.
        let _ = conn.close(320, "crash".into()).await;
        if got.is_none() {
            break;
        }
        deliveries += 1;
    }
    // The last return dead-letters it (at least once: the task queue lets
    // go of it only once the dead-letter queue confirms it).
    let observer = e2e_tests::rabbitmq().await;
    let ch = observer.create_channel().await.expect("channel");
    let mut dead = None;
    for _ in 0..50 {
        dead = ch
            .basic_get(format!("{queue}.dlq").as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("guest reads the dead-letter queue");
        if dead.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = dead.expect("the message waits in the dead-letter queue, not lost");
    println!("handed out {deliveries} times with a delivery limit of {DELIVERY_LIMIT}, then dead-lettered");
    assert_eq!(dead.delivery.data, b"the task that kills its worker");
    let headers = dead.delivery.properties.headers().clone().unwrap_or_default();
    assert_eq!(death_reason(&headers).as_deref(), Some("delivery_limit"), "dead-lettered for its deliveries");
    assert_eq!(
        deliveries,
        DELIVERY_LIMIT + 1,
        "handed out once, then again once for each of the {DELIVERY_LIMIT} returns the limit allows"
    );
    let left = ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }).await.expect("get");
    assert!(left.is_none(), "not in the task queue any more");
    let _ = observer.close(0, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_queue_left_in_place_stops_the_import_with_the_migration() {
    let queue = testkit::broker::queue_name("qq-legacy");
    // What an older release provisioned: classic queues of the same names,
    // one message waiting in the task queue.
    let (observer, ch) = e2e_tests::rabbitmq_confirmed_channel().await;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    for q in [queue.clone(), format!("{queue}.dlq")] {
        ch.queue_declare(q.as_str().into(), durable, FieldTable::default()).await.expect("classic queue");
    }
    e2e_tests::publish_confirmed(&ch, &queue, b"an accepted task").await;

    let dir = e2e_tests::TempDir::new("qq-legacy");
    testkit::broker::write_set(&dir.path().join("set"), &queue).expect("a broker set");
    let definitions = dir.path().join("set").join(servicekit::broker::DEFINITIONS_FILE);
    let definitions = definitions.to_str().expect("utf-8");
    tokio::task::block_in_place(|| {
        let (ok, said) = rabbitmq_sh(&["import", definitions]);
        assert!(!ok, "the import must not pass over a classic queue: {said}");
        assert!(said.contains(&format!("queue '{queue}' exists as a classic queue")), "{said}");
        assert!(said.contains(&format!("migrate-to-quorum {queue}")), "names the migration: {said}");
        assert_eq!(queue_info(&queue, "type").as_deref(), Some("classic"));

        // The migration refuses to drop a queue that holds a task.
        let (ok, said) = rabbitmq_sh(&["migrate-to-quorum", &queue]);
        assert!(!ok && said.contains("holds 1 messages"), "{said}");
        assert_eq!(queue_info(&queue, "messages").as_deref(), Some("1"), "the task is still there");
    });
    // Once system-b has taken it, the migration and the import go through.
    let got = ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }).await.expect("get");
    assert_eq!(got.map(|m| m.delivery.data.clone()).as_deref(), Some(&b"an accepted task"[..]));
    tokio::task::block_in_place(|| {
        let (ok, said) = rabbitmq_sh(&["migrate-to-quorum", &queue]);
        assert!(ok, "{said}");
        let (ok, said) = rabbitmq_sh(&["import", definitions]);
        assert!(ok, "{said}");
        assert_eq!(queue_info(&queue, "type").as_deref(), Some("quorum"));
        assert_eq!(queue_info(&format!("{queue}.dlq"), "type").as_deref(), Some("quorum"));
    });
    let _ = observer.close(0, "bye".into()).await;
}

/// Every quorum queue is a Raft group the broker keeps running, so a
/// suite that never deletes its queues wears the broker down run after run
/// (a few hundred once wedged one). The sweep scripts/test.sh runs at its
/// start and end deletes what tests made, by their `e2e.` prefix, and
/// nothing else. Here it runs with a prefix of this test's own, since
/// other tests' queues are in use meanwhile.
#[test]
fn the_sweep_deletes_what_tests_made_and_nothing_else() {
    let mine = format!("{}.", testkit::broker::queue_name("sweep"));
    let queue = format!("{mine}tasks");
    let users = testkit::broker::provision(&queue);
    let other = testkit::broker::queue_name("sweep-bystander");
    testkit::broker::provision(&other);
    let users_of = |q: &str| -> Vec<String> {
        rabbitmqctl(&["-q", "list_users"])
            .lines()
            .filter_map(|l| l.split('\t').next())
            .filter(|u| u.starts_with(q))
            .map(str::to_string)
            .collect()
    };
    let exchanges_of = |q: &str| -> Vec<String> {
        rabbitmqctl(&["-q", "list_exchanges", "name"])
            .lines()
            .filter(|x| x.starts_with(q))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(queue_info(&queue, "type").as_deref(), Some("quorum"), "provisioned: {}", users.dir.display());
    assert!(queue_info(&format!("{queue}.dlq"), "type").is_some());
    assert!(!users_of(&queue).is_empty() && !exchanges_of(&queue).is_empty());

    let (ok, said) = rabbitmq_sh(&["sweep-tests", &mine]);
    assert!(ok, "{said}");
    assert!(said.contains("swept 2 queues"), "{said}");
    assert_eq!(queue_info(&queue, "type"), None, "{said}");
    assert_eq!(queue_info(&format!("{queue}.dlq"), "type"), None, "{said}");
    assert_eq!(users_of(&queue), Vec::<String>::new(), "{said}");
    assert_eq!(exchanges_of(&queue), Vec::<String>::new(), "{said}");
    // Another test's queue, users and exchanges are still there.
    assert_eq!(queue_info(&other, "type").as_deref(), Some("quorum"));
    assert!(!users_of(&other).is_empty() && !exchanges_of(&other).is_empty());

    // A prefix outside the tests' names is refused: the sweep never
    // reaches the deployment's `tasks`.
    let (ok, said) = rabbitmq_sh(&["sweep-tests", "tasks"]);
    assert!(!ok && said.contains("must start with e2e."), "{said}");
    let (ok, said) = rabbitmq_sh(&["sweep-tests", &other]);
    assert!(ok, "{said}");
}

//! Least privilege on the broker, against the real RabbitMQ: each service
//! logs in as its own user (`servicekit::broker`), and this test, as that
//! user, tries what the service must not be able to do. guest plays the
//! observer, never a service.
//!
//! What must hold (docs/security.md, "Broker identities"):
//! - system-a can publish tasks and nothing else: it cannot consume (or
//!   peek at) the task queue, publish anywhere but into the task queue, or
//!   touch the topology;
//! - system-b can consume the task queue and put a task back into it, and
//!   cannot read the dead-letter queue, write into it, or declare, bind or
//!   delete anything;
//! - the topology needs no right to check: a passive declare passes with
//!   `configure` = nothing, which is what lets the services run without it;
//! - a wrong password or an unknown user is refused at connect, and a
//!   service given one exits at once saying which user and what to fix;
//! - no service has a broker password (nor a ZooKeeper one) in its argv.

use std::time::Duration;

use e2e_tests::{start_system_a, start_system_b, Proc, TempDir};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ErrorKind};
use testkit::broker::BrokerUsers;

/// Connects as `role` of `users`; the login must succeed, which also
/// proves the generated password hash is the one RabbitMQ computes.
async fn connect_as(users: &BrokerUsers, role: &str) -> Connection {
    let broker = users.broker(role);
    tokio::time::timeout(Duration::from_secs(10), broker.connect())
        .await
        .expect("in time")
        .unwrap_or_else(|e| panic!("{role} must log in with its generated password: {e}"))
}

/// Whether `result` is the broker's 403 ACCESS_REFUSED.
fn is_access_refused<T>(result: &lapin::Result<T>) -> bool {
    matches!(result, Err(e) if matches!(e.kind(),
        ErrorKind::ProtocolError(a) if *a.kind() == AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)))
}

/// Runs `op` on a fresh channel of `conn` (a refusal closes the channel it
/// happens on) and asserts the broker refuses it with 403.
async fn refused<T, F, Fut>(conn: &Connection, what: &str, op: F)
where
    F: FnOnce(lapin::Channel) -> Fut,
    Fut: std::future::Future<Output = lapin::Result<T>>,
{
    let ch = conn.create_channel().await.expect("channel");
    let result = tokio::time::timeout(Duration::from_secs(10), op(ch)).await.expect("an answer in time");
    assert!(
        is_access_refused(&result),
        "{what}: expected 403 ACCESS_REFUSED, got {:?}",
        result.as_ref().err().map(ToString::to_string)
    );
}

/// Publishes `body` to `exchange` with routing key `key` on a confirm
/// channel and returns what the broker said: a refused publish closes the
/// channel, which fails the confirm.
/// Declares a queue of a fresh name: what neither service may do.
async fn declare_planted(ch: lapin::Channel) -> lapin::Result<lapin::Queue> {
    let name = testkit::broker::queue_name("planted");
    ch.queue_declare(name.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await
}

async fn publish(ch: lapin::Channel, exchange: &str, key: &str, body: &[u8]) -> lapin::Result<()> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let confirm = ch
        .basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), body, BasicProperties::default())
        .await?
        .await?;
    if confirm.is_nack() {
        panic!("a nack is not a refusal");
    }
    Ok(())
}

/// A message guest finds in `queue`, if any (and takes it out).
async fn take(queue: &str) -> Option<Vec<u8>> {
    let observer = e2e_tests::rabbitmq().await;
    let ch = observer.create_channel().await.expect("channel");
    let got = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("guest reads every queue")
        .map(|m| m.delivery.data.clone());
    let _ = observer.close(0, "bye".into()).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_a_publishes_tasks_and_nothing_else() {
    let queue_name = testkit::broker::queue_name("acl-a");
    let users = testkit::broker::provision(&queue_name);
    let a = connect_as(&users, "system-a").await;
    let names = [format!("{queue_name}.dlq"), format!("{queue_name}.dlx"), format!("{queue_name}.in")];
    // Borrowed names, which the `async move` closures below copy.
    let (queue, dlq, dlx, input) = (queue_name.as_str(), names[0].as_str(), names[1].as_str(), names[2].as_str());

    // What it is for: a task through `<queue>.in` lands in the task queue.
    let ch = a.create_channel().await.expect("channel");
    publish(ch, input, queue, b"task from system-a").await.expect("system-a may publish a task");
    assert_eq!(take(queue).await.as_deref(), Some(&b"task from system-a"[..]));

    // The topology check the services do needs no right.
    let ch = a.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    ch.queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .expect("a passive declare needs no configure right");
    servicekit::rabbit::check_task_topology(&ch, queue).await.expect("the services' own check passes");

    // It cannot take tasks off the queue, by consume or by get.
    refused(&a, "system-a consumes the task queue", |ch| async move {
        ch.basic_consume(queue.into(), "thief".into(), BasicConsumeOptions::default(), FieldTable::default()).await
    })
    .await;
    refused(&a, "system-a gets from the task queue", |ch| async move {
        ch.basic_get(queue.into(), BasicGetOptions::default()).await
    })
    .await;
    // It cannot publish around the exchange: the default exchange reaches
    // every queue, the dead-letter queue included.
    refused(&a, "system-a publishes through the default exchange", |ch| publish(ch, "", dlq, b"x")).await;
    refused(&a, "system-a writes into the dead-letter exchange", |ch| publish(ch, dlx, "", b"x")).await;
    // Nor change the topology.
    refused(&a, "system-a declares a queue", declare_planted).await;
    refused(&a, "system-a deletes the task queue", |ch| async move {
        ch.queue_delete(queue.into(), QueueDeleteOptions::default()).await
    })
    .await;
    assert_eq!(take(dlq).await, None, "nothing reached the dead-letter queue");
    let _ = a.close(0, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_b_consumes_tasks_and_cannot_touch_the_dead_letters_or_the_topology() {
    let queue_name = testkit::broker::queue_name("acl-b");
    let users = testkit::broker::provision(&queue_name);
    let b = connect_as(&users, "system-b").await;
    let names = [format!("{queue_name}.dlq"), format!("{queue_name}.dlx"), format!("{queue_name}.in")];
    // Borrowed names, which the `async move` closures below copy.
    let (queue, dlq, dlx, input) = (queue_name.as_str(), names[0].as_str(), names[1].as_str(), names[2].as_str());

    // What it is for: put a task back (system-b's re-queue after a store
    // fault) and consume it.
    let ch = b.create_channel().await.expect("channel");
    publish(ch, input, queue, b"requeued").await.expect("system-b may put a task back");
    let ch = b.create_channel().await.expect("channel");
    let got = ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.expect("system-b reads");
    assert_eq!(got.map(|m| m.delivery.data.clone()).as_deref(), Some(&b"requeued"[..]));
    ch.basic_consume(queue.into(), "b".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("system-b consumes the task queue");

    // A dead-lettered task waits for an operator: system-b can neither
    // read it nor add to it.
    refused(&b, "system-b consumes the dead-letter queue", |ch| async move {
        ch.basic_consume(dlq.into(), "peek".into(), BasicConsumeOptions::default(), FieldTable::default()).await
    })
    .await;
    refused(&b, "system-b gets from the dead-letter queue", |ch| async move {
        ch.basic_get(dlq.into(), BasicGetOptions::default()).await
    })
    .await;
    refused(&b, "system-b publishes to the dead-letter exchange", |ch| publish(ch, dlx, "", b"x")).await;
    refused(&b, "system-b publishes through the default exchange", |ch| publish(ch, "", dlq, b"x")).await;
    // No configure right: not even a re-declaration of the queue as it is.
    refused(&b, "system-b re-declares the task queue", |ch| async move {
        let mut args = FieldTable::default();
        args.insert("x-dead-letter-exchange".into(), lapin::types::AMQPValue::LongString(dlx.into()));
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(queue.into(), durable, args).await
    })
    .await;
    refused(&b, "system-b declares a queue of its own", declare_planted).await;
    refused(&b, "system-b deletes the dead-letter queue", |ch| async move {
        ch.queue_delete(dlq.into(), QueueDeleteOptions::default()).await
    })
    .await;
    refused(&b, "system-b declares an exchange", |ch| async move {
        ch.exchange_declare(
            testkit::broker::queue_name("planted").as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
    })
    .await;
    // Binding the dead-letter queue to the task exchange would route tasks
    // past every consumer: it needs write on that queue.
    refused(&b, "system-b binds the dead-letter queue to the task exchange", |ch| async move {
        ch.queue_bind(dlq.into(), input.into(), "x".into(), QueueBindOptions::default(), FieldTable::default()).await
    })
    .await;
    let _ = b.close(0, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_an_unknown_user_is_refused_at_connect() {
    let queue = testkit::broker::queue_name("acl-login");
    let users = testkit::broker::provision(&queue);
    let dir = TempDir::new("acl-login");
    for (name, line) in [
        ("wrong-password", format!("auth = {queue}.system-b:not-the-password")),
        ("unknown-user", "auth = nobody-here:whatever".to_string()),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, line).expect("write");
        let creds = servicekit::auth::ZkAuth::credentials_from_file(&file).expect("parses");
        let broker = servicekit::rabbit::Broker::new(&testkit::broker::service_url(), &creds, &file).expect("broker");
        let e = tokio::time::timeout(Duration::from_secs(10), broker.connect())
            .await
            .expect("an answer in time")
            .map(|_| ())
            .expect_err(name);
        let refused = broker.login_refused(&e).unwrap_or_else(|| panic!("{name}: not seen as a refusal: {e}"));
        let said = refused.to_string();
        assert!(said.contains(creds.user()) && said.contains(&file.display().to_string()), "{said}");
        assert!(!said.contains("not-the-password"), "the password is never shown: {said}");
        // connect_with_backoff gives up at once instead of retrying.
        let stop = tokio_util::sync::CancellationToken::new();
        let started = std::time::Instant::now();
        let r = servicekit::rabbit::connect_with_backoff(&broker, &stop).await;
        assert!(r.is_err() && started.elapsed() < Duration::from_secs(5), "{name}: retried a refusal");
    }
    // The right password still works (the refusals above changed nothing).
    let _ = connect_as(&users, "system-b").await.close(0, "bye".into()).await;
}

/// `zkctl gen-broker-credentials` writes what `scripts/run.sh` imports: its
/// files are the owner's only, and its users log in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zkctl_writes_users_the_broker_accepts() {
    use std::os::unix::fs::PermissionsExt;
    let queue = testkit::broker::queue_name("acl-zkctl");
    let dir = TempDir::new("acl-zkctl");
    let out = e2e_tests::zkctl(&[
        "gen-broker-credentials",
        dir.path().to_str().expect("utf-8"),
        "--queue",
        &queue,
        "--user-prefix",
        &format!("{queue}."),
    ]);
    assert!(out.contains("broker-definitions.json"), "{out}");
    for f in ["broker-system-a.cred", "broker-system-b.cred", "broker-definitions.json"] {
        let mode = std::fs::metadata(dir.path().join(f)).expect(f).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // A second run must not overwrite a deployment's set.
    let again = std::process::Command::new(e2e_tests::binary("zkctl"))
        .args(["gen-broker-credentials", dir.path().to_str().expect("utf-8"), "--queue", &queue])
        .output()
        .expect("run zkctl");
    assert!(!again.status.success(), "zkctl overwrote a set");
    testkit::broker::import_definitions(&dir.path().join("broker-definitions.json")).expect("import");
    let users = BrokerUsers { queue: queue.clone(), dir: dir.path().to_path_buf() };
    for role in ["system-a", "system-b"] {
        let _ = connect_as(&users, role).await.close(0, "bye".into()).await;
    }
}

/// Starts `binary` on a coordinator with `broker_flags` and waits for it to
/// exit by itself; returns its status and log.
fn run_until_exit(binary: &str, queue: &str, broker_flags: &[&str], dir: &std::path::Path) -> (i32, String) {
    let (_coordinator, zk) = e2e_tests::start_coordinator(&[], dir);
    let root = format!("/{}", testkit::unique("acl"));
    let mut args = vec!["--zk", zk.as_str(), "--root", &root, "--queue", queue, "--instance", "x1"];
    match binary {
        "system-a" => args.extend(["--listen", "127.0.0.1:0"]),
        _ => args.extend(["--store-dir", dir.to_str().expect("utf-8")]),
    }
    args.extend_from_slice(broker_flags);
    let mut p = Proc::spawn(binary, &args, dir);
    let status = p
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{binary} kept running after the broker refused it; its log:\n{}", p.log_text()));
    (status.code().unwrap_or(-1), p.log_text())
}

#[test]
fn a_service_refused_by_the_broker_exits_saying_what_to_fix() {
    let dir = TempDir::new("acl-exit");
    let queue = testkit::broker::queue_name("acl-exit");
    let users = testkit::broker::provision(&queue);
    let url = testkit::broker::service_url();
    for role in ["system-a", "system-b"] {
        // A wrong password: one message, naming the user and the file.
        let wrong = dir.path().join(format!("{role}-wrong.cred"));
        std::fs::write(&wrong, format!("auth = {queue}.{role}:wrong-password\n")).expect("write");
        let wrong_s = wrong.to_str().expect("utf-8");
        let (code, log) =
            run_until_exit(role, &queue, &["--amqp", &url, "--amqp-credentials-file", wrong_s], dir.path());
        assert_ne!(code, 0, "{role} with a wrong password: {log}");
        let said = format!("refused the login of user `{queue}.{role}`");
        assert_eq!(log.matches(&said).count(), 1, "{role}: said once, not retried: {log}");
        assert!(log.contains(wrong_s) && !log.contains("cannot reach RabbitMQ"), "{role}: {log}");
        assert!(!log.contains("wrong-password"), "{role}: the password reached the log");

        // No credentials at all: a startup error naming the setting.
        let (code, log) = run_until_exit(role, &queue, &["--amqp", &url], dir.path());
        assert_ne!(code, 0);
        assert!(log.contains("AMQP_CREDENTIALS_FILE") && log.contains("no RabbitMQ credentials"), "{role}: {log}");

        // A password in the URL is refused, and not echoed.
        let file = users.file(role);
        let with_password = url.replacen("amqp://", "amqp://guest:guest@", 1);
        let flags = ["--amqp", &with_password, "--amqp-credentials-file", file.to_str().expect("utf-8")];
        let (code, log) = run_until_exit(role, &queue, &flags, dir.path());
        assert_ne!(code, 0);
        assert!(log.contains("carries a user or password") && !log.contains("guest:guest"), "{role}: {log}");

        // A queue nobody provisioned: the fix, not a retry loop.
        let missing = testkit::broker::queue_name("never-provisioned");
        let flags = ["--amqp", &url, "--amqp-credentials-file", file.to_str().expect("utf-8")];
        let (code, log) = run_until_exit(role, &missing, &flags, dir.path());
        assert_ne!(code, 0);
        assert!(log.contains("provision the broker") && log.contains(&missing), "{role}: {log}");
    }
}

/// Every process of a running system, its argv read where every local user
/// can read it: no broker password, and no ZooKeeper one, is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_service_has_a_password_in_its_argv() {
    let dir = TempDir::new("acl-argv");
    let (_coordinator, zk) = e2e_tests::start_coordinator(&[], dir.path());
    let root = format!("/{}", testkit::unique("argv"));
    let queue = testkit::broker::queue_name("argv");
    let ids = e2e_tests::provision(&zk, &root, dir.path());
    let store = dir.path().join("store");
    let b = start_system_b(&zk, &root, &queue, &store, "b1", 4000, dir.path());
    let (a, addr) = start_system_a(&zk, &root, &queue, dir.path());

    // The services run the scenario as their own users.
    let mut grpc = system_a::proto::tasks_client::TasksClient::connect(format!("http://{addr}")).await.expect("grpc");
    let reply = tokio::time::timeout(
        Duration::from_secs(30),
        grpc.submit(system_a::proto::SubmitRequest {
            entity: "acct".into(),
            op: "add".into(),
            amount: 3,
            ..Default::default()
        }),
    )
    .await
    .expect("in time")
    .expect("submit")
    .into_inner();
    assert_eq!((reply.status.as_str(), reply.value), ("done", 3));

    let users = testkit::broker::provision(&queue);
    let mut secrets: Vec<String> = Vec::new();
    for role in ["system-a", "system-b"] {
        for file in [users.file(role), ids.file(role)] {
            let text = std::fs::read_to_string(&file).expect("credentials file");
            let auth = text.lines().filter(|l| l.starts_with("auth")).filter_map(|l| l.split_once(':'));
            secrets.extend(auth.map(|(_, password)| password.trim().to_string()));
        }
    }
    secrets.push("guest".into());
    assert!(secrets.len() >= 4 && secrets.iter().all(|s| s.len() >= 5));
    let procs: [&Proc; 2] = [&a, &b];
    for p in procs {
        let argv = std::fs::read(format!("/proc/{}/cmdline", p.pid())).expect("cmdline");
        let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
        assert!(argv.contains("--amqp-credentials-file"), "{argv}");
        for s in &secrets {
            assert!(!argv.contains(s.as_str()), "{} has a password in its argv: {argv}", p.name);
        }
        // Nor inherited from the test's own (guest) broker URL.
        let env = std::fs::read(format!("/proc/{}/environ", p.pid())).expect("environ");
        assert!(!String::from_utf8_lossy(&env).contains("guest:guest"), "{} inherited guest's URL", p.name);
    }
}

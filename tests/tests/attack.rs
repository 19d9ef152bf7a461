//! The promises of the retry, outbox, de-duplication and least-privilege
//! work, attacked: each test is one way to break a promise, run against
//! the real binaries over TCP.
//!
//! - the admin API's token cannot be sidestepped by spelling a protected
//!   command another way, and the token never reaches a log;
//! - a second copy of an old task (a re-publish from the outbox, a
//!   redelivery) does not rewrite the result system-a already read;
//! - whoever can publish to the task queue (here: the broker's
//!   administrator) cannot get a forged task applied, replay a real one on
//!   another entity, or rewrite one in flight: the task node, which only
//!   system-a may create, says what is applied;
//! - a task system-b can never apply fails for good, once, instead of
//!   going round the queue forever;
//! - a credentials file other users can read is called out.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::{
    binary, final_task_node, rabbitmq_confirmed_channel, start_coordinator, start_system_b, Proc, TempDir,
};
use zk_recipes::session::Client;
use zookeeper_async::{Acl, CreateMode};

/// One HTTP/1.0 GET with extra header lines; returns (status, body).
fn get(addr: &str, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the admin listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n").expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (code, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_cannot_be_sidestepped_and_never_reaches_a_log() {
    let dir = TempDir::new("attack-admin");
    let token = "attack-token-0123456789abcdef";
    // A token file as editors and `echo` write it: a trailing newline and
    // stray spaces, which must not become part of the token.
    let file = dir.path().join("token");
    std::fs::write(&file, format!("  {token} \n")).expect("token file");
    let file = file.to_str().expect("utf-8").to_string();
    let mut p = Proc::spawn(
        "coordinator",
        &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--admin-token-file", &file],
        dir.path(),
    );
    p.wait_line("coordinator listening on", Duration::from_secs(20));
    let admin = p.wait_line("coordinator admin listening on", Duration::from_secs(20));

    let bearer = format!("Authorization: Bearer {token}\r\n");
    assert_eq!(get(&admin, "/commands/dump", &bearer).0, 200, "the right token is refused");
    assert_eq!(get(&admin, "/commands/dump", &format!("authorization: bearer  {token}\r\n")).0, 200);
    for (path, headers) in [
        ("/commands/dump", String::new()),
        ("/commands/dump", "Authorization: Bearer\r\n".to_string()),
        ("/commands/dump", format!("Authorization: Basic {token}\r\n")),
        ("/commands/dump", format!("Authorization: Bearer {token}x\r\n")),
        ("/commands/dump", format!("Authorization: Bearer {}\r\n", &token[..token.len() - 1])),
        // The same command spelled with percent-escapes: the router decodes
        // the path segment, so a check on the raw path must not let it by.
        ("/commands/%64ump", String::new()),
        ("/commands/%65nvi", String::new()),
        ("/commands/c%6fns", String::new()),
        ("/commands/%77%63%68%70", String::new()),
    ] {
        let (code, body) = get(&admin, path, &headers);
        assert_eq!(code, 401, "GET {path} with {headers:?} answered {code} without the token:\n{body}");
    }
    // The numbers stay open.
    assert_eq!(get(&admin, "/commands/mntr", "").0, 200);

    let log = p.log_text();
    assert!(!log.contains(token) && !log.contains("attack-token"), "the admin token is in the log:\n{log}");
    // The file was written under the default umask (0644): said so.
    assert!(log.contains("readable by other users"), "no warning for a world-readable token file:\n{log}");
}

#[test]
fn a_blank_admin_token_file_is_refused_at_start() {
    let dir = TempDir::new("attack-admin-empty");
    for (name, text) in [("empty", ""), ("blank", " \n\n"), ("spaced", "attack-token 0123456789abcdef\n")] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("token file");
        let mut p = Proc::spawn(
            "coordinator",
            &[
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--admin-token-file",
                file.to_str().expect("utf-8"),
            ],
            dir.path(),
        );
        let status = p.wait_exit(Duration::from_secs(20)).expect("the coordinator exits");
        assert!(!status.success(), "{name} token file accepted");
        assert!(!p.log_text().contains("0123456789abcdef"), "the token is echoed:\n{}", p.log_text());
    }
}

#[test]
fn a_credentials_file_others_can_read_is_called_out() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("attack-creds");
    let ids = dir.path().join("ids");
    e2e_tests::zkctl(&["gen-credentials", ids.to_str().expect("utf-8")]);
    let file = ids.join("operator.cred");
    let password = std::fs::read_to_string(&file)
        .expect("read")
        .lines()
        .find_map(|l| l.strip_prefix("auth = operator:").map(str::to_string))
        .expect("an auth line");
    let (_server, zk) = start_coordinator(&[], dir.path());
    let run = || {
        std::process::Command::new(binary("zkctl"))
            .args(["--zk", &zk, "--zk-credentials-file", file.to_str().expect("utf-8"), "ls", "/"])
            .output()
            .expect("run zkctl")
    };
    let private = run();
    assert!(private.status.success(), "{}", String::from_utf8_lossy(&private.stderr));
    assert!(!String::from_utf8_lossy(&private.stderr).contains("readable"), "a 0600 file is warned about");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let open = run();
    let stderr = String::from_utf8_lossy(&open.stderr);
    assert!(stderr.contains("readable by other users"), "no warning for a world-readable credentials file:\n{stderr}");
    assert!(!stderr.contains(&password), "the password is printed");
}

/// The password in a credentials file.
fn password_in(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("credentials file");
    let line = text.lines().find_map(|l| l.trim().strip_prefix("auth =")).expect("an auth line");
    line.trim().split_once(':').expect("user:password").1.to_string()
}

/// Publishes `body` to `queue`, confirmed, as the broker's administrator.
async fn publish(ch: &lapin::Channel, queue: &str, body: &str) {
    e2e_tests::publish_confirmed(ch, queue, body.as_bytes()).await;
}

/// A task node as system-a writes it before publishing: `add amount` to
/// `entity`.
fn pending_node(entity: &str, amount: i64) -> Vec<u8> {
    task_contract::TaskNode::pending(entity, task_contract::Op::Add, amount).encode()
}

/// Creates the task `id` (`add amount` to `entity`) as system-a would.
async fn pending_task(c: &Client, root: &str, id: &str, entity: &str, amount: i64) -> String {
    let path = format!("{root}/tasks/{id}");
    let created = c.zk.create(&path, pending_node(entity, amount), Acl::open_unsafe().clone(), CreateMode::Persistent);
    tokio::time::timeout(Duration::from_secs(10), created).await.expect("in time").expect("task node");
    path
}

/// The message system-a publishes for task `id`.
fn message(id: &str) -> String {
    task_contract::TaskMessage::new(id).encode().iter().map(|b| *b as char).collect()
}

/// Waits until system-b's log says `text` at least `n` times.
async fn logged(p: &Proc, text: &str, n: usize, limit: Duration) {
    let started = Instant::now();
    while p.log_text().matches(text).count() < n {
        assert!(started.elapsed() < limit, "{} did not log {text:?} {n} times within {limit:?}", p.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of `entity` in the store under `dir` (0 if never written).
fn stored(dir: &Path, entity: &str) -> i64 {
    e2e_tests::entity_value(&dir.join("store"), entity)
}

/// A system-b on a fresh root and queue of the coordinator, and a channel
/// to publish tasks to it as system-a (or its outbox) would.
struct Bench {
    _server: Proc,
    zk: String,
    b: Proc,
    c: Client,
    root: String,
    queue: String,
    amqp: lapin::Connection,
    ch: lapin::Channel,
}

async fn bench(dir: &Path) -> Bench {
    let (server, zk) = start_coordinator(&[], dir);
    let root = format!("/{}", testkit::unique("attack"));
    let queue = testkit::broker::queue_name("attack-tasks");
    let c = Client::connect(&zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");
    tokio::time::timeout(Duration::from_secs(10), zk_recipes::ensure_path(&c.zk, &format!("{root}/tasks")))
        .await
        .expect("in time")
        .expect("tasks dir");
    let b = start_system_b(&zk, &root, &queue, &dir.join("store"), "b1", 4000, dir);
    let (amqp, ch) = rabbitmq_confirmed_channel().await;
    Bench { _server: server, zk, b, c, root, queue, amqp, ch }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_copy_of_a_task_does_not_rewrite_its_result() {
    let dir = TempDir::new("attack-flip");
    let t = bench(dir.path()).await;
    let first = pending_task(&t.c, &t.root, "t1", "acct", 5).await;
    publish(&t.ch, &t.queue, &message("t1")).await;
    let (result, version) = final_task_node(&t.c, &first, Duration::from_secs(15)).await;
    assert_eq!(result["value"], 5, "{result}");

    // Another task changes the entity since.
    let second = pending_task(&t.c, &t.root, "t2", "acct", 3).await;
    publish(&t.ch, &t.queue, &message("t2")).await;
    assert_eq!(final_task_node(&t.c, &second, Duration::from_secs(15)).await.0["value"], 8);

    // The first task once more: the outbox re-publishing after a lost
    // confirm, or the drain and a slow Submit both publishing it. Its node
    // is final: the copy is a no-op.
    let before = t.b.log_text().matches("nothing to do").count();
    publish(&t.ch, &t.queue, &message("t1")).await;
    logged(&t.b, "nothing to do", before + 1, Duration::from_secs(15)).await;
    let (data, stat) = tokio::time::timeout(Duration::from_secs(10), t.c.zk.get_data(&first, false))
        .await
        .expect("in time")
        .expect("task node");
    let now: serde_json::Value = serde_json::from_slice(&data).expect("json");
    assert_eq!(now, result, "the copy rewrote the result system-a had read");
    assert_eq!(stat.version, version, "the copy wrote the task node again (a second watch event)");
    assert_eq!(stored(dir.path(), "acct"), 8, "the copy was applied again");
    let _ = t.amqp.close(0, "bye".into()).await;
}

/// The review's three attacks with the broker's administrator account,
/// which can publish anything to any queue and consume from it: a forged
/// task, a real task's id replayed on another entity with another amount,
/// and a real task stolen from the queue and republished rewritten. None
/// changes an entity or what a caller is told, because the message says
/// only which task, and the task node says what it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whoever_can_publish_cannot_decide_what_is_applied() {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let dir = TempDir::new("attack-broker");
    let mut t = bench(dir.path()).await;

    // 1. A forged task: no node by that id, so nothing to do.
    let before = t.b.log_text().matches("nothing to do").count();
    publish(&t.ch, &t.queue, r#"{"version":1,"id":"forged","entity":"acct","op":"set","amount":1000000}"#).await;
    publish(&t.ch, &t.queue, &message("forged-too")).await;
    logged(&t.b, "nothing to do", before + 2, Duration::from_secs(15)).await;
    assert_eq!(stored(dir.path(), "acct"), 0, "a forged task was applied");

    // 2. A real task, answered, replayed on another entity as `set 666`.
    let real = pending_task(&t.c, &t.root, "real", "acct", 5).await;
    publish(&t.ch, &t.queue, &message("real")).await;
    let (answer, version) = final_task_node(&t.c, &real, Duration::from_secs(15)).await;
    assert_eq!(answer["value"], 5);
    let before = t.b.log_text().matches("nothing to do").count();
    publish(&t.ch, &t.queue, r#"{"version":1,"id":"real","entity":"other","op":"set","amount":666}"#).await;
    logged(&t.b, "nothing to do", before + 1, Duration::from_secs(15)).await;
    let (data, stat) = t.c.zk.get_data(&real, false).await.expect("task node");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&data).expect("json"), answer, "the answer was rewritten");
    assert_eq!(stat.version, version, "the task node was written again");
    assert_eq!((stored(dir.path(), "acct"), stored(dir.path(), "other")), (5, 0), "a replay was applied");

    // 3. A real `add 7`, taken off the queue before any worker saw it and
    //    republished as `set -1000` on another entity: what is applied is
    //    the node's `add 7`, and the caller is told 12.
    // No worker is consuming while the attacker takes the message.
    t.b.kill9();
    let stolen = pending_task(&t.c, &t.root, "stolen", "acct", 7).await;
    publish(&t.ch, &t.queue, &message("stolen")).await;
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        t.ch.basic_get(t.queue.as_str().into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("in time")
    .expect("basic.get")
    .expect("the task was on the queue");
    got.delivery.acker.ack(BasicAckOptions::default()).await.expect("ack");
    publish(&t.ch, &t.queue, r#"{"version":1,"id":"stolen","entity":"other","op":"set","amount":-1000}"#).await;
    t.b = start_system_b(&t.zk, &t.root, &t.queue, &dir.path().join("store"), "b2", 4000, dir.path());
    let (v, _) = final_task_node(&t.c, &stolen, Duration::from_secs(15)).await;
    assert_eq!(v["value"], 12, "the caller was told what the rewritten message said: {v}");
    assert_eq!((stored(dir.path(), "acct"), stored(dir.path(), "other")), (12, 0));
    let _ = t.amqp.close(0, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_for_an_entity_that_cannot_exist_fails_once_not_forever() {
    let dir = TempDir::new("attack-entity");
    let t = bench(dir.path()).await;
    // Names system-a does not stop and the lock path cannot hold: each is
    // refused by ZooKeeper (or the store) every time it is tried.
    let bad = ["..", "", "a/../b", "x/"];
    for (i, entity) in bad.iter().enumerate() {
        let id = format!("bad{i}");
        pending_task(&t.c, &t.root, &id, entity, 1).await;
        publish(&t.ch, &t.queue, &message(&id)).await;
    }
    for (i, entity) in bad.iter().enumerate() {
        let path = format!("{}/tasks/bad{i}", t.root);
        let (v, _) = final_task_node(&t.c, &path, Duration::from_secs(10)).await;
        assert_eq!(v["status"], "failed", "entity {entity:?}: {v}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let retries = t.b.log_text().matches("task will be retried").count();
    assert!(retries == 0, "system-b put tasks that can never succeed back in the queue {retries} times");
    let _ = t.amqp.close(0, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_refused_by_an_acl_fails_the_task_instead_of_looping() {
    use servicekit::auth::ZkAuth;
    let dir = TempDir::new("attack-noauth");
    let (server, zk) = start_coordinator(&[], dir.path());
    let root = format!("/{}", testkit::unique("attack"));
    let queue = testkit::broker::queue_name("attack-tasks");
    let ids = e2e_tests::provision(&zk, &root, dir.path());
    let as_role = |role: &str| ZkAuth::from_file(&ids.file(role)).expect("credentials");
    let connect = |auth: ZkAuth| {
        let zk = zk.clone();
        async move {
            let c = Client::connect_authenticated(
                &zk,
                Duration::from_secs(10),
                Duration::from_secs(10),
                auth.auth_packets(),
            );
            tokio::time::timeout(Duration::from_secs(15), c).await.expect("in time").expect("connect")
        }
    };
    // The operator takes the lock directory away from system-b (a mistaken
    // ACL, or credentials rotated without `zkctl init`): system-b's every
    // lock is refused with NOAUTH, now and on every redelivery.
    let operator = as_role("operator");
    let op = connect(operator.clone()).await;
    let locks = format!("{root}/locks");
    tokio::time::timeout(Duration::from_secs(10), op.zk.set_acl(&locks, operator.policy().operator_dir(), None))
        .await
        .expect("in time")
        .expect("setacl");
    let b = start_system_b(&zk, &root, &queue, &dir.path().join("store"), "b1", 4000, dir.path());

    let a_auth = as_role("system-a");
    let a = connect(a_auth.clone()).await;
    let task = format!("{root}/tasks/t1");
    let created = a.zk.create(&task, pending_node("acct", 1), a_auth.policy().task(), CreateMode::Persistent);
    tokio::time::timeout(Duration::from_secs(10), created).await.expect("in time").expect("task node");
    let (amqp, ch) = rabbitmq_confirmed_channel().await;
    publish(&ch, &queue, &message("t1")).await;

    let (v, _) = final_task_node(&a, &task, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "failed", "{v}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let retries = b.log_text().matches("task will be retried").count();
    assert!(retries <= 1, "a task refused by an ACL was put back in the queue {retries} times");
    // The refusals are logged, the identity's secret never.
    let secret = password_in(&ids.file("system-b"));
    assert!(!b.log_text().contains(&secret) && !server.log_text().contains(&secret), "a password is in a log");
    let _ = amqp.close(0, "bye".into()).await;
}

/// Nodes an anonymous client made before `zkctl init` laid the tree out:
/// a forged task with its outbox entry, and a config of its choosing.
/// `init` must not adopt them (granting them the services' ACLs would make
/// the forged task one system-a publishes and system-b runs, and the
/// config one the operator appears to have written).
async fn init_refuses_what_an_anonymous_client_planted(zk: &str) {
    let dir = TempDir::new("attack-preinit");
    let root = format!("/{}", testkit::unique("attack"));
    let anon = Client::connect(zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");
    let planted = async {
        for d in ["/outbox", "/tasks", "/config"] {
            zk_recipes::ensure_path(&anon.zk, &format!("{root}{d}")).await.expect("dir");
        }
        let task = br#"{"id":"forged","entity":"acct","op":"set","amount":1000000}"#.to_vec();
        let open = Acl::open_unsafe().clone();
        anon.zk.create(&format!("{root}/outbox/forged"), task, open.clone(), CreateMode::Persistent).await.expect("o");
        let pending = pending_node("acct", 1_000_000);
        anon.zk
            .create(&format!("{root}/tasks/forged"), pending, open.clone(), CreateMode::Persistent)
            .await
            .expect("t");
        let config = br#"{"work_ms":600000}"#.to_vec();
        anon.zk.create(&format!("{root}/config/system-b"), config, open, CreateMode::Persistent).await.expect("c");
    };
    tokio::time::timeout(Duration::from_secs(10), planted).await.expect("planted in time");

    let ids = dir.path().join("ids");
    e2e_tests::zkctl(&["gen-credentials", ids.to_str().expect("utf-8")]);
    let op = ids.join("operator.cred");
    let out = std::process::Command::new(binary("zkctl"))
        .args(["--zk", zk, "--zk-credentials-file", op.to_str().expect("utf-8"), "init", "--root", &root])
        .output()
        .expect("run zkctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "init adopted nodes an anonymous client made:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for p in ["/outbox/forged", "/tasks/forged", "/config/system-b"] {
        assert!(stderr.contains(&format!("{root}{p}")), "init does not name {p}:\n{stderr}");
    }
    // Nothing was granted: the forged nodes keep the ACL that shows who
    // made them.
    let (acl, _) = tokio::time::timeout(Duration::from_secs(10), anon.zk.get_acl(&format!("{root}/outbox/forged")))
        .await
        .expect("in time")
        .expect("getacl");
    assert_eq!(&acl, Acl::open_unsafe(), "init re-granted a forged outbox entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_refuses_what_an_anonymous_client_planted_on_the_coordinator() {
    let dir = TempDir::new("attack-preinit-c");
    let (_server, zk) = start_coordinator(&[], dir.path());
    init_refuses_what_an_anonymous_client_planted(&zk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_refuses_what_an_anonymous_client_planted_on_zookeeper() {
    init_refuses_what_an_anonymous_client_planted(&testkit::zookeeper_addr().to_string()).await;
}

/// A task node system-b may not write (system-a created it with a stale id
/// of system-b, say, after a rotation half done): the work is done once,
/// and the message goes to the dead-letter queue for the operator, where a
/// replay once the ACL is fixed reports it; it does not go round the queue.
/// The task was applied once, and the store remembers it: the replay only
/// reports the recorded result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_refused_by_an_acl_is_dead_lettered_not_requeued() {
    use lapin::options::BasicGetOptions;
    use servicekit::auth::ZkAuth;
    use zookeeper_async::Permission;
    let dir = TempDir::new("attack-noauth-report");
    let (_server, zk) = start_coordinator(&[], dir.path());
    let root = format!("/{}", testkit::unique("attack"));
    let queue = testkit::broker::queue_name("attack-tasks");
    let ids = e2e_tests::provision(&zk, &root, dir.path());
    let a_auth = ZkAuth::from_file(&ids.file("system-a")).expect("credentials");
    let b_id = ZkAuth::from_file(&ids.file("system-b")).expect("credentials").ids["system-b"].clone();
    let connect =
        Client::connect_authenticated(&zk, Duration::from_secs(10), Duration::from_secs(10), a_auth.auth_packets());
    let a = tokio::time::timeout(Duration::from_secs(15), connect).await.expect("in time").expect("connect");
    // system-b may read what the task asks, not write its result.
    let mut acl: Vec<Acl> = a_auth.policy().task().into_iter().filter(|e| e.id != b_id).collect();
    acl.push(Acl::new(Permission::READ, "digest", b_id.clone()));
    let task = format!("{root}/tasks/t1");
    let created = a.zk.create(&task, pending_node("acct", 1), acl, CreateMode::Persistent);
    tokio::time::timeout(Duration::from_secs(10), created).await.expect("in time").expect("task node");
    let store = dir.path().join("store");
    let b = start_system_b(&zk, &root, &queue, &store, "b1", 4000, dir.path());
    let (amqp, ch) = rabbitmq_confirmed_channel().await;
    publish(&ch, &queue, &message("t1")).await;

    let dlq = format!("{queue}.dlq");
    let started = Instant::now();
    let dead = loop {
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            ch.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("in time")
        .expect("basic.get");
        if let Some(m) = got {
            break m;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the task never reached the dead-letter queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(String::from_utf8_lossy(&dead.delivery.data).contains(r#""id":"t1""#));
    let retries = b.log_text().matches("task will be retried").count();
    assert!(retries <= 1, "a result refused by an ACL was put back in the queue {retries} times");
    assert_eq!(stored(dir.path(), "acct"), 1, "applied other than once");
    let (data, _) = tokio::time::timeout(Duration::from_secs(10), a.zk.get_data(&task, false))
        .await
        .expect("in time")
        .expect("task node");
    assert_eq!(data, pending_node("acct", 1), "the task node was written after all");

    // The operator fixes the ACL and replays the dead letter: the result
    // recorded with the value is reported; nothing is applied again.
    let operator = ZkAuth::from_file(&ids.file("operator")).expect("credentials");
    let connect =
        Client::connect_authenticated(&zk, Duration::from_secs(10), Duration::from_secs(10), operator.auth_packets());
    let op = tokio::time::timeout(Duration::from_secs(15), connect).await.expect("in time").expect("connect");
    tokio::time::timeout(Duration::from_secs(10), op.zk.set_acl(&task, operator.policy().task(), None))
        .await
        .expect("in time")
        .expect("the operator keeps ADMIN on task nodes");
    publish(&ch, &queue, &String::from_utf8_lossy(&dead.delivery.data)).await;
    let (v, _) = final_task_node(&a, &task, Duration::from_secs(15)).await;
    assert_eq!((v["status"].as_str(), v["value"].as_i64()), (Some("done"), Some(1)), "{v}");
    assert_eq!(stored(dir.path(), "acct"), 1, "the replay applied the task again");
    let _ = amqp.close(0, "bye".into()).await;
}

/// The re-auth window: after each reconnect system-b's client re-sends its
/// identity, and a request that overtakes it is refused with NOAUTH. Cut
/// system-b's connection again and again while it works: every task is
/// still done exactly once, none is failed or dead-lettered for a refusal
/// that one more try after the re-auth would not get.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnects_mid_work_fail_no_task() {
    use servicekit::auth::ZkAuth;
    let dir = TempDir::new("attack-reauth");
    let (_server, zk) = start_coordinator(&[], dir.path());
    let root = format!("/{}", testkit::unique("attack"));
    let queue = testkit::broker::queue_name("attack-tasks");
    let ids = e2e_tests::provision(&zk, &root, dir.path());
    let a_auth = ZkAuth::from_file(&ids.file("system-a")).expect("credentials");
    let connect =
        Client::connect_authenticated(&zk, Duration::from_secs(10), Duration::from_secs(10), a_auth.auth_packets());
    let a = tokio::time::timeout(Duration::from_secs(15), connect).await.expect("in time").expect("connect");
    let proxy = testkit::proxy::ZkProxy::start(zk.parse().expect("address")).await;
    let store = dir.path().join("store");
    let b = start_system_b(&proxy.connect_string(), &root, &queue, &store, "b1", 10_000, dir.path());
    let (amqp, ch) = rabbitmq_confirmed_channel().await;

    const TASKS: usize = 60;
    let mut paths = Vec::new();
    for i in 0..TASKS {
        let path = format!("{root}/tasks/t{i}");
        let created =
            a.zk.create(&path, pending_node(&format!("e{}", i % 3), 1), a_auth.policy().task(), CreateMode::Persistent);
        tokio::time::timeout(Duration::from_secs(10), created).await.expect("in time").expect("task node");
        paths.push(path);
    }
    let cutter = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let cuts = tokio::spawn(async move {
            let mut n = 0;
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(150)).await;
                proxy.cut();
                tokio::time::sleep(Duration::from_millis(20)).await;
                proxy.restore();
                n += 1;
            }
            n
        });
        (stop, cuts)
    };
    for i in 0..TASKS {
        publish(&ch, &queue, &message(&format!("t{i}"))).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut statuses = Vec::new();
    for p in &paths {
        statuses.push(final_task_node(&a, p, Duration::from_secs(40)).await.0["status"].clone());
    }
    cutter.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let cuts = tokio::time::timeout(Duration::from_secs(5), cutter.1).await.expect("in time").expect("cutter");
    let failed = statuses.iter().filter(|s| *s != "done").count();
    let log = b.log_text();
    println!(
        "{TASKS} tasks through {cuts} reconnects of system-b; {} retried, {} refused once (NOAUTH) on a reconnect",
        log.matches("task will be retried").count(),
        log.matches("NoAuth").count()
    );
    assert_eq!(failed, 0, "tasks failed by reconnects: {statuses:?}\n{}", b.log_text());
    let mut total = 0;
    for e in 0..3 {
        total += e2e_tests::entity_value(&store, &format!("e{e}"));
    }
    assert_eq!(total, TASKS as i64, "tasks applied other than once");
    let _ = amqp.close(0, "bye".into()).await;
}

/// A message system-b cannot read that carries a real task's id (a field
/// of the wrong type, a version that is not a number): it goes to the
/// dead-letter queue once and changes nothing. It must not fail the task
/// it names, or any publisher could fail any task; the task's own message
/// still runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_message_naming_a_task_neither_fails_nor_applies_it() {
    let dir = TempDir::new("attack-poison");
    let t = bench(dir.path()).await;
    let task = pending_task(&t.c, &t.root, "p1", "acct", 2).await;
    publish(&t.ch, &t.queue, r#"{"id":"p1","version":"two"}"#).await;
    publish(&t.ch, &t.queue, r#"{"id":"../p1"}"#).await;
    logged(&t.b, "poison message", 2, Duration::from_secs(10)).await;
    let (data, _) = t.c.zk.get_data(&task, false).await.expect("task node");
    assert_eq!(data, pending_node("acct", 2), "a poison message changed the task");
    publish(&t.ch, &t.queue, &message("p1")).await;
    let (v, _) = final_task_node(&t.c, &task, Duration::from_secs(10)).await;
    assert_eq!((v["status"].as_str(), v["value"].as_i64()), (Some("done"), Some(2)), "{v}");
    let _ = t.amqp.close(0, "bye".into()).await;
}

//! system-a's gRPC edge, attacked: what a caller sends must not reach the
//! coordination server unchecked, cost system-a memory after the call, or
//! turn a retry into a second task.
//!
//! - an entity name or a task id of a megabyte is refused at the edge
//!   (INVALID_ARGUMENT, or OUT_OF_RANGE from the transport), so
//!   system-a's one ZooKeeper connection is never dropped for a request
//!   over `jute.maxbuffer`, and normal submits go on while such callers
//!   loop;
//! - Watch keeps no ZooKeeper watcher per call: 100k calls leave system-a's
//!   RSS flat; concurrent streams are limited per caller and in total;
//! - Submit with a request id is idempotent: the same id twice (one after
//!   the other, or at once) is one task and one change to the entity; the
//!   same id asking something else is refused.
//!
//! System-a runs without credentials here (open ACLs): the edge does not
//! depend on them, and the test may then plant task nodes itself.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::{start_coordinator, start_system_a_with, start_system_b, Proc, TempDir};
use system_a::proto::tasks_client::TasksClient;
use system_a::proto::{SubmitReply, SubmitRequest, WatchRequest};
use task_contract::{Op, TaskNode};
use tonic::transport::Channel;
use tonic::Code;
use zk_recipes::session::Client;

/// A megabyte and a tenth: over `jute.maxbuffer` (1 MiB) once in a request.
const HUGE: usize = 1_100_000;

struct Bench {
    coordinator: Proc,
    root: String,
    store: std::path::PathBuf,
    a: Proc,
    a_addr: String,
    _bs: Vec<Proc>,
    client: Client,
}

/// The coordinator, `workers` system-b instances and one system-a (with
/// `extra` flags), under a fresh root.
async fn bench(dir: &Path, workers: usize, extra: &[&str]) -> Bench {
    let (coordinator, zk) = start_coordinator(&[], dir);
    let root = format!("/{}", testkit::unique("edge"));
    let queue = testkit::broker::queue_name("tasks");
    let store = dir.join("store");
    let client = Client::connect(&zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");
    zk_recipes::ensure_path(&client.zk, &format!("{root}/tasks")).await.expect("tasks dir");
    let bs = (1..=workers).map(|i| start_system_b(&zk, &root, &queue, &store, &format!("b{i}"), 4000, dir)).collect();
    let (a, a_addr) = start_system_a_with(&zk, &root, &queue, extra, dir);
    Bench { coordinator, root, store, a, a_addr, _bs: bs, client }
}

impl Bench {
    async fn grpc(&self) -> TasksClient<Channel> {
        TasksClient::connect(format!("http://{}", self.a_addr)).await.expect("connect to system-a")
    }

    /// How many connections the coordinator has closed on a client for
    /// something it sent (an oversized frame among them): each one is a
    /// reconnect for that client, and every request it had in flight fails.
    fn drops(&self) -> usize {
        self.coordinator.log_text().lines().filter(|l| l.contains("closing connection")).count()
    }

    fn value(&self, entity: &str) -> i64 {
        e2e_tests::entity_value(&self.store, entity)
    }

    /// Plants a task node as system-a would have written it.
    async fn plant(&self, id: &str, node: &TaskNode) {
        let path = format!("{}/tasks/{id}", self.root);
        let made = self.client.zk.create(
            &path,
            node.encode(),
            zookeeper_async::Acl::open_unsafe().clone(),
            zookeeper_async::CreateMode::Persistent,
        );
        tokio::time::timeout(Duration::from_secs(10), made).await.expect("in time").expect("plant a task");
    }
}

fn add(entity: &str, amount: i64) -> SubmitRequest {
    SubmitRequest { entity: entity.into(), op: "add".into(), amount, ..Default::default() }
}

fn keyed(key: &str, entity: &str, op: &str, amount: i64) -> SubmitRequest {
    SubmitRequest { entity: entity.into(), op: op.into(), amount, request_id: key.into() }
}

async fn submit(g: &mut TasksClient<Channel>, req: SubmitRequest) -> Result<SubmitReply, tonic::Status> {
    match tokio::time::timeout(Duration::from_secs(30), g.submit(req)).await {
        Ok(r) => r.map(|r| r.into_inner()),
        Err(_) => Err(tonic::Status::deadline_exceeded("the test's 30 s")),
    }
}

/// Refused at the edge: the code, and a message short enough for a log.
fn assert_refused(what: &str, r: Result<impl std::fmt::Debug, tonic::Status>) {
    match r {
        // OUT_OF_RANGE is tonic's answer to a message over its decode limit.
        Err(s) if matches!(s.code(), Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange) => {
            assert!(s.message().len() < 400, "{what}: a {} byte message", s.message().len())
        }
        other => panic!("{what} was not refused at the edge: {other:.300?}"),
    }
}

async fn watch_first(g: &mut TasksClient<Channel>, id: &str) -> Result<(), tonic::Status> {
    let call = async {
        let mut stream = g.watch(WatchRequest { task_id: id.into() }).await?.into_inner();
        stream.message().await.map(|_| ())
    };
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("the test's 30 s")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_names_are_refused_at_the_edge_and_never_reach_the_coordinator() {
    let dir = TempDir::new("edge-huge");
    let bench = bench(dir.path(), 1, &[]).await;
    let mut g = bench.grpc().await;
    assert_eq!(submit(&mut g, add("warm", 1)).await.expect("a normal submit").status, "done");
    let before = bench.drops();

    let huge = "x".repeat(HUGE);
    assert_refused("a 1.1 MB entity", submit(&mut g, add(&huge, 1)).await);
    assert_refused("a 1.1 MB task id", watch_first(&mut g, &huge).await);
    assert_refused("a 1.1 MB request id", submit(&mut g, keyed(&huge, "e", "add", 1)).await);
    // Under the transport's limit, refused by the contract's name rules.
    for (what, req) in [
        ("a 4 KB entity", add(&"x".repeat(4000), 1)),
        ("an entity that is a path", add("../config/system-b", 1)),
        ("an empty entity", add("", 1)),
        ("a request id that is a path", keyed("a/b", "e", "add", 1)),
        ("a request id of 65 bytes", keyed(&"k".repeat(65), "e", "add", 1)),
    ] {
        let r = submit(&mut g, req).await;
        assert!(matches!(&r, Err(s) if s.code() == Code::InvalidArgument), "{what}: {r:.300?}");
    }
    for id in ["../config/system-a", "a/b", &"t".repeat(4000)] {
        let r = watch_first(&mut g, id).await;
        assert!(matches!(&r, Err(s) if s.code() == Code::InvalidArgument), "Watch {id:.60}: {r:.300?}");
    }

    // Eight callers that send nothing else, for 8 s, while normal submits
    // run one after another: every normal one succeeds.
    let stop = Instant::now() + Duration::from_secs(8);
    let mut attackers = Vec::new();
    for i in 0..8 {
        let mut g = bench.grpc().await;
        let huge = huge.clone();
        attackers.push(tokio::spawn(async move {
            let mut sent = 0u32;
            while Instant::now() < stop {
                let r = if i % 2 == 0 {
                    submit(&mut g, add(&huge, 1)).await.map(|_| ())
                } else {
                    watch_first(&mut g, &huge).await
                };
                assert_refused("an attacker's call", r);
                sent += 1;
            }
            sent
        }));
    }
    let mut normal = 0;
    while Instant::now() < stop {
        let r = submit(&mut g, add("steady", 1)).await;
        assert_eq!(r.unwrap_or_else(|s| panic!("a normal submit failed under attack: {s:?}")).status, "done");
        normal += 1;
    }
    let mut refused = 0;
    for a in attackers {
        refused += a.await.expect("attacker");
    }
    let drops = bench.drops() - before;
    println!("{refused} oversized calls refused, {normal} normal submits done, {drops} connections dropped");
    assert!(normal >= 5 && refused >= 50, "too little happened: {normal} submits, {refused} attacks");
    assert_eq!(bench.value("steady"), normal);
    assert_eq!(drops, 0, "the coordinator dropped connections:\n{}", bench.coordinator.log_text());
}

/// system-a's resident memory, from /proc.
fn rss_kb(p: &Proc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS in kB")
}

/// `n` Watch calls, `concurrency` at a time over a few connections: on
/// finished tasks read to the end, on pending ones dropped after the first
/// update (a client that goes away mid-stream).
async fn watch_calls(g: &TasksClient<Channel>, ids: &[String], n: usize, concurrency: usize) {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (mut g, ids, next) = (g.clone(), ids.to_vec(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let id = &ids[i % ids.len()];
                let mut stream = g.watch(WatchRequest { task_id: id.clone() }).await.expect("watch").into_inner();
                let first = stream.message().await.expect("an update").expect("a first update");
                if first.status == "done" {
                    assert!(stream.message().await.expect("the end").is_none(), "{id}: more after done");
                }
            }
        }));
    }
    for w in workers {
        tokio::time::timeout(Duration::from_secs(120), w).await.expect("in time").expect("watch calls");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_watch_calls_leave_system_a_flat() {
    let dir = TempDir::new("edge-rss");
    // No system-b: the pending tasks stay pending.
    let bench = bench(dir.path(), 0, &["--max-watch-streams-per-peer", "1000"]).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let (done, pending) = (format!("done-{i}"), format!("pending-{i}"));
        bench.plant(&done, &TaskNode::done(i, "b1", 1, 7)).await;
        bench.plant(&pending, &TaskNode::pending("e", Op::Add, 1)).await;
        ids.extend([done, pending]);
    }
    // Several HTTP/2 connections, as many callers would have.
    let channels: Vec<TasksClient<Channel>> = futures::future::join_all((0..4).map(|_| bench.grpc())).await;
    let started = Instant::now();
    for g in &channels {
        watch_calls(g, &ids, 2_500, 16).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warm = rss_kb(&bench.a);
    let calls = futures::future::join_all(channels.iter().map(|g| watch_calls(g, &ids, 22_500, 16)));
    calls.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kb(&bench.a);
    let grew = after as i64 - warm as i64;
    println!(
        "system-a RSS {warm} kB after 10k Watch calls, {after} kB after 100k ({grew:+} kB) in {:?}",
        started.elapsed()
    );
    assert!(grew < 2048, "system-a grew {grew} kB over 90k Watch calls ({warm} -> {after} kB)");
    // And it still answers.
    let mut g = bench.grpc().await;
    watch_first(&mut g, "pending-1").await.expect("a watch after the storm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_are_limited_per_caller_and_in_total() {
    let dir = TempDir::new("edge-limit");
    let bench = bench(dir.path(), 0, &["--max-watch-streams-per-peer", "3", "--max-watch-streams", "5"]).await;
    for i in 0..6 {
        bench.plant(&format!("p{i}"), &TaskNode::pending("e", Op::Add, 1)).await;
    }
    let from = |ip: &'static str| {
        let addr = format!("http://{}", bench.a_addr);
        async move {
            let ep = tonic::transport::Endpoint::from_shared(addr).expect("endpoint");
            let ep = ep.local_address(Some(ip.parse().expect("ip")));
            TasksClient::new(ep.connect().await.expect("connect"))
        }
    };
    let open = |mut g: TasksClient<Channel>, id: String| async move {
        let mut s = g.watch(WatchRequest { task_id: id }).await?.into_inner();
        s.message().await?;
        Ok::<_, tonic::Status>(s)
    };
    let one = from("127.0.0.1").await;
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(open(one.clone(), format!("p{i}")).await.expect("within the caller's limit"));
    }
    let over = open(one.clone(), "p3".into()).await.map(|_| ());
    assert!(matches!(&over, Err(s) if s.code() == Code::ResourceExhausted), "a 4th stream from one caller: {over:?}");
    // Another caller is not held to the first one's count...
    let two = from("127.0.0.2").await;
    for i in 3..5 {
        held.push(open(two.clone(), format!("p{i}")).await.expect("another caller"));
    }
    // ...but to the total.
    let over = open(two.clone(), "p5".into()).await.map(|_| ());
    assert!(matches!(&over, Err(s) if s.code() == Code::ResourceExhausted), "a 6th stream in all: {over:?}");
    // A stream that ends gives its place back.
    drop(held.remove(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match open(one.clone(), "p0".into()).await {
            Ok(s) => {
                held.push(s);
                break;
            }
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("the freed place was not given back: {s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_makes_submit_idempotent() {
    let dir = TempDir::new("edge-idem");
    let bench = bench(dir.path(), 2, &[]).await;
    let mut g = bench.grpc().await;

    // One after the other: the retry is answered with the first's task.
    let key = testkit::unique("req");
    let first = submit(&mut g, keyed(&key, "once", "add", 5)).await.expect("first");
    let again = submit(&mut g, keyed(&key, "once", "add", 5)).await.expect("retry");
    assert_eq!(first, again, "a retry is the same task with the same result");
    assert_eq!(first.task_id, system_a::edge::task_id_for(&key), "the task the request id names");
    assert_eq!(bench.value("once"), 5, "the entity changed once");

    // At once: eight copies in flight together are one task.
    let key2 = testkit::unique("req");
    let copies = (0..8).map(|_| {
        let mut g = g.clone();
        let req = keyed(&key2, "burst", "add", 3);
        async move { submit(&mut g, req).await }
    });
    let replies: Vec<SubmitReply> =
        futures::future::join_all(copies).await.into_iter().map(|r| r.expect("a concurrent copy")).collect();
    let id2 = system_a::edge::task_id_for(&key2);
    assert!(replies.iter().all(|r| r.task_id == id2 && r.value == 3), "{replies:?}");
    assert_eq!(bench.value("burst"), 3, "eight copies, one change");

    // The same id asking something else is refused, finished or not.
    for (what, req) in [
        ("another amount", keyed(&key, "once", "add", 6)),
        ("another entity", keyed(&key, "other", "add", 5)),
        ("another op", keyed(&key, "once", "set", 5)),
    ] {
        match submit(&mut g, req).await {
            Err(s) if s.code() == Code::FailedPrecondition => {
                assert!(s.message().contains(&key) && s.message().contains("request id"), "{what}: {}", s.message())
            }
            other => panic!("{what} under a used request id was not refused: {other:?}"),
        }
    }
    assert_eq!((bench.value("once"), bench.value("other")), (5, 0));

    // The shell client sends a request id and says which: running the
    // same command again with it is the same task.
    let cli = |extra: &[&str]| {
        let server = format!("http://{}", bench.a_addr);
        let mut args = vec!["submit", "--server", &server, "--entity", "cli", "--amount", "2"];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(e2e_tests::binary("system-a")).args(&args).output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let printed = cli(&[]);
    let key = printed.rsplit("request id ").next().and_then(|k| k.strip_suffix(")\n")).expect("a request id");
    assert!(printed.contains(" done: cli = 2 "), "{printed}");
    let again = cli(&["--request-id", key]);
    assert!(again.contains(" done: cli = 2 ") && again.contains(key), "{again}");
    assert_eq!(bench.value("cli"), 2, "the CLI's retry ran the task twice");
}

/// A retry while the first attempt still waits for system-b (there is
/// none here) waits on the same task; a different request under the same
/// id is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_the_first_is_pending_joins_it() {
    let dir = TempDir::new("edge-pending");
    let bench = bench(dir.path(), 0, &[]).await;
    let config = format!("{}/config/system-a", bench.root);
    zk_recipes::ensure_path(&bench.client.zk, &config).await.expect("config node");
    bench.client.zk.set_data(&config, br#"{"timeout_ms":3000}"#.to_vec(), None).await.expect("set config");
    tokio::time::sleep(Duration::from_millis(500)).await; // system-a applies it live
    let g = bench.grpc().await;
    let key = testkit::unique("req");
    let first = tokio::spawn({
        let (mut g, req) = (g.clone(), keyed(&key, "slow", "add", 1));
        async move { submit(&mut g, req).await }
    });
    let tasks = format!("{}/tasks", bench.root);
    let started = Instant::now();
    while bench.client.zk.get_children(&tasks, false).await.map(|c| c.len()).unwrap_or(0) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the first attempt recorded no task");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mismatch = submit(&mut g.clone(), keyed(&key, "slow", "add", 2)).await;
    assert!(matches!(&mismatch, Err(s) if s.code() == Code::FailedPrecondition), "{mismatch:?}");
    let retry = submit(&mut g.clone(), keyed(&key, "slow", "add", 1)).await;
    assert!(matches!(&retry, Err(s) if s.code() == Code::DeadlineExceeded), "the retry waits on the task: {retry:?}");
    let first = first.await.expect("first");
    assert!(matches!(&first, Err(s) if s.code() == Code::DeadlineExceeded), "{first:?}");
    let ids = bench.client.zk.get_children(&tasks, false).await.expect("tasks");
    assert_eq!(ids, vec![system_a::edge::task_id_for(&key)], "one task");
}

//! The system under faults that real deployments see. Each test prints
//! what the fault cost (time to recover, tasks retried); docs/faults.md
//! records the figures.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::{entity_value, start_coordinator, start_ha_worker, start_system_a, start_system_b, Proc, TempDir};
use nix::sys::signal::Signal;
use system_a::proto::tasks_client::TasksClient;
use system_a::proto::SubmitRequest;
use testkit::proxy::ZkProxy;
use zk_recipes::session::Client;

const SESSION_MS: &str = "4000";

fn system_b(zk: &str, root: &str, queue: &str, store: &Path, name: &str, dir: &Path) -> Proc {
    start_system_b(zk, root, queue, store, name, SESSION_MS.parse().expect("ms"), dir)
}

fn system_a(zk: &str, root: &str, queue: &str, dir: &Path) -> (Proc, String) {
    start_system_a(zk, root, queue, dir)
}

async fn configure(zk: &str, root: &str, work_ms: u64, timeout_ms: u64) {
    let c = Client::connect(zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");
    for (node, body) in
        [("system-b", format!(r#"{{"work_ms":{work_ms}}}"#)), ("system-a", format!(r#"{{"timeout_ms":{timeout_ms}}}"#))]
    {
        let path = format!("{root}/config/{node}");
        zk_recipes::ensure_path(&c.zk, &path).await.expect("config node");
        c.zk.set_data(&path, body.into_bytes(), None).await.expect("set config");
    }
    let _ = c.zk.close().await;
}

/// The coordinator is killed and restarted on the same data dir while
/// tasks flow. Sessions survive the restart (they are logged), so services
/// reconnect to the same sessions, locks held are still held, and every
/// task completes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_restart_mid_flow_loses_no_task() {
    let dir = TempDir::new("fault-restart");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let (mut server, zk) = start_coordinator(&["--data-dir", data, "--tick-time", "500"], dir.path());
    let root = format!("/{}", testkit::unique("restart"));
    let queue = testkit::broker::queue_name("tasks");
    let store = dir.path().join("store");
    configure(&zk, &root, 20, 60_000).await;
    let _b1 = system_b(&zk, &root, &queue, &store, "b1", dir.path());
    let _b2 = system_b(&zk, &root, &queue, &store, "b2", dir.path());
    let (_a, a_addr) = system_a(&zk, &root, &queue, dir.path());
    let grpc = TasksClient::connect(format!("http://{a_addr}")).await.expect("gRPC");

    let mut calls = Vec::new();
    for _ in 0..60 {
        let mut g = grpc.clone();
        calls.push(tokio::spawn(async move {
            g.submit(SubmitRequest { entity: "acct".into(), op: "add".into(), amount: 1, ..Default::default() }).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.kill9();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut restarted =
        Proc::spawn("coordinator", &["--listen", &zk, "--data-dir", data, "--tick-time", "500"], dir.path());
    restarted.wait_line("coordinator listening on", Duration::from_secs(20));

    let mut done = 0;
    for c in calls {
        let r = tokio::time::timeout(Duration::from_secs(90), c).await.expect("in time").expect("task");
        let r = r.unwrap_or_else(|s| panic!("a task failed across the restart: {s:?}")).into_inner();
        assert_eq!(r.status, "done");
        done += 1;
    }
    println!("coordinator restart: all {done} tasks done {:?} after the kill", down.elapsed());
    assert_eq!(entity_value(&store, "acct"), 60, "a task was lost or applied twice across the restart");
}

/// A lock holder is paused (SIGSTOP) in the middle of its work, past its
/// session timeout, while another instance takes the lock for the same
/// entity. When it resumes, its write is refused (fencing) and the task is
/// retried by a current holder: the entity ends exact.
async fn stalled_holder(zk: &str, dir: &Path) {
    let root = format!("/{}", testkit::unique("stall"));
    let queue = testkit::broker::queue_name("tasks");
    let store = dir.join("store");
    configure(zk, &root, 2500, 60_000).await;
    let bs = [system_b(zk, &root, &queue, &store, "b1", dir), system_b(zk, &root, &queue, &store, "b2", dir)];
    let (_a, a_addr) = system_a(zk, &root, &queue, dir);
    let grpc = TasksClient::connect(format!("http://{a_addr}")).await.expect("gRPC");
    let observer = Client::connect(zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");

    let mut g = grpc.clone();
    let first = tokio::spawn(async move {
        g.submit(SubmitRequest { entity: "f".into(), op: "add".into(), amount: 10, ..Default::default() }).await
    });
    let lock = zk_recipes::lock::Lock::new(&observer, format!("{root}/locks/f"));
    let (holder_node, holder) = loop {
        if let Some(h) = lock.queue().await.expect("queue").into_iter().next() {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let stale_token = observer
        .zk
        .exists(&format!("{root}/locks/f/{holder_node}"), false)
        .await
        .expect("exists")
        .map(|s| s.czxid)
        .expect("the holder's node");
    // Let it read the entity (with its token), then freeze it mid-work.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idx = holder.trim_start_matches('b').parse::<usize>().expect("b<n>") - 1;
    bs[idx].signal(Signal::SIGSTOP);
    let stopped = Instant::now();

    // Its session expires; the other instance takes the lock for a new task.
    let mut g = grpc.clone();
    let second = tokio::spawn(async move {
        g.submit(SubmitRequest { entity: "f".into(), op: "add".into(), amount: 1, ..Default::default() }).await
    });
    let r2 =
        tokio::time::timeout(Duration::from_secs(30), second).await.expect("in time").expect("task").expect("submit");
    let r2 = r2.into_inner();
    assert_ne!(r2.worker, holder);
    assert!(r2.token > stale_token);
    bs[idx].signal(Signal::SIGCONT);
    let r1 =
        tokio::time::timeout(Duration::from_secs(60), first).await.expect("in time").expect("task").expect("submit");
    let r1 = r1.into_inner();
    println!(
        "stalled holder {holder}: paused {:?}; its task was finished by {} with token {} (stale token {stale_token})",
        stopped.elapsed(),
        r1.worker,
        r1.token
    );
    assert!(r1.token > stale_token, "the stale holder's write was accepted");
    assert_eq!(entity_value(&store, "f"), 11, "an update was lost or applied twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_lock_holder_is_fenced_on_the_coordinator() {
    let dir = TempDir::new("fault-stall-c");
    let (_server, zk) = start_coordinator(&["--tick-time", "500"], dir.path());
    stalled_holder(&zk, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_lock_holder_is_fenced_on_zookeeper() {
    let dir = TempDir::new("fault-stall-z");
    stalled_holder(&testkit::zookeeper_addr().to_string(), dir.path()).await;
}

/// The network between the active ha-worker and the server is cut (a
/// proxy drops its connection and refuses new ones). The active must stop
/// working before its session can expire on the server; the standby takes
/// over after the expiry; the journal never interleaves two terms.
async fn cut_off_active(zk: &str, dir: &Path) {
    let root = format!("/{}", testkit::unique("cut"));
    let journal = dir.join("journal");
    let proxy = ZkProxy::start(zk.parse().expect("addr")).await;
    let worker =
        |name: &str, via: &str| start_ha_worker(via, &root, &journal, name, 50, SESSION_MS.parse().expect("ms"), dir);
    let mut w1 = worker("w1", &proxy.connect_string());
    w1.wait_line("ha-worker active", Duration::from_secs(20));
    let mut w2 = worker("w2", zk);
    w2.wait_line("ha-worker standby", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));

    let cut = Instant::now();
    proxy.cut();
    // Suspended: it writes nothing from here on, until it knows.
    w1.wait_line("ha-worker suspended", Duration::from_secs(4));
    let stepped_down = cut.elapsed();
    w2.wait_line("ha-worker active", Duration::from_secs(10));
    let took_over = cut.elapsed();
    println!("network cut: active suspended after {stepped_down:?}; standby active after {took_over:?}");
    assert!(stepped_down < took_over, "the cut-off active stopped only after the standby started");
    // Its last line is written before it steps down; nothing of w1 after w2.
    std::thread::sleep(Duration::from_millis(500));
    let records = ha_worker::journal::read_entries(&journal).expect("journal");
    let who: Vec<&str> = records.iter().map(|e| e.instance.as_str()).collect();
    let first_w2 = who.iter().position(|w| *w == "w2").expect("w2 worked");
    assert!(who[first_w2..].iter().all(|w| *w == "w2"), "w1 worked after w2 took over");
    proxy.restore();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_off_active_stops_before_expiry_on_the_coordinator() {
    let dir = TempDir::new("fault-cut-c");
    let (_server, zk) = start_coordinator(&["--tick-time", "500"], dir.path());
    cut_off_active(&zk, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_off_active_stops_before_expiry_on_zookeeper() {
    let dir = TempDir::new("fault-cut-z");
    cut_off_active(&testkit::zookeeper_addr().to_string(), dir.path()).await;
}

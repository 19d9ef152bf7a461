//! RabbitMQ restarted mid-flow (its app stopped and started with
//! `rabbitmqctl`, which closes every connection and keeps durable queues
//! and persistent messages, as a broker restart does). system-a and
//! system-b reconnect with backoff; every task system-a accepted completes,
//! once in effect. Tasks submitted while the broker is down are refused
//! with UNAVAILABLE, never silently dropped.
//!
//! Its own test binary: it disturbs the shared broker, and cargo runs test
//! binaries one after another.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e_tests::{start_coordinator, Proc, TempDir};
use system_a::proto::tasks_client::TasksClient;
use system_a::proto::SubmitRequest;
use zk_recipes::session::Client;

fn rabbitmqctl(args: &[&str]) {
    // RABBITMQ_NODENAME (exported by scripts/test.sh when it started a
    // private broker) selects the node; otherwise the local default node.
    let out = Command::new("rabbitmqctl").args(args).output().expect("run rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts the broker's app again even if the test fails half-way.
struct BrokerBack;
impl Drop for BrokerBack {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
    }
}

async fn flow(zk: &str, dir: &Path) {
    std::fs::create_dir_all(dir).expect("test dir");
    let root = format!("/{}", testkit::unique("rmq"));
    let queue = testkit::unique("tasks");
    let store = dir.join("store");
    let c = Client::connect(zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");
    for (node, body) in [("system-b", r#"{"work_ms":20}"#), ("system-a", r#"{"timeout_ms":60000}"#)] {
        let path = format!("{root}/config/{node}");
        zk_recipes::ensure_path(&c.zk, &path).await.expect("config");
        c.zk.set_data(&path, body.as_bytes().to_vec(), None).await.expect("set");
    }
    let common = |name: &str| {
        vec![
            "--zk".to_string(),
            zk.to_string(),
            "--root".into(),
            root.clone(),
            "--queue".into(),
            queue.clone(),
            "--amqp".into(),
            testkit::rabbitmq_url(),
            "--instance".into(),
            name.to_string(),
        ]
    };
    let mut bs = Vec::new();
    for name in ["b1", "b2"] {
        let mut args = common(name);
        args.extend(["--store-dir".to_string(), store.to_str().expect("utf-8").to_string()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = Proc::spawn("system-b", &refs, dir);
        p.wait_line("system-b ready", Duration::from_secs(30));
        bs.push(p);
    }
    let mut args = common("a1");
    args.extend(["--listen".to_string(), "127.0.0.1:0".to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut a = Proc::spawn("system-a", &refs, dir);
    let a_addr = a.wait_line("system-a listening on", Duration::from_secs(30));
    a.wait_line("system-a connected to RabbitMQ", Duration::from_secs(30));
    let grpc = TasksClient::connect(format!("http://{a_addr}")).await.expect("gRPC");

    let mut calls = Vec::new();
    for i in 0..40 {
        let mut g = grpc.clone();
        calls.push(tokio::spawn(async move {
            // Spread over ~2 s so some land before, during and after the outage.
            tokio::time::sleep(Duration::from_millis(50 * i)).await;
            g.submit(SubmitRequest { entity: "acct".into(), op: "add".into(), amount: 1 }).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _back = BrokerBack;
    rabbitmqctl(&["stop_app"]);
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    a.wait_line("system-a connected to RabbitMQ", Duration::from_secs(30));
    let reconnected = down.elapsed();

    let (mut done, mut refused) = (0, 0);
    for c in calls {
        match tokio::time::timeout(Duration::from_secs(90), c).await.expect("in time").expect("task") {
            Ok(r) => {
                assert_eq!(r.into_inner().status, "done");
                done += 1;
            }
            Err(s) if s.code() == tonic::Code::Unavailable => refused += 1,
            Err(s) => panic!("unexpected failure: {s:?}"),
        }
    }
    // Let redelivered work settle, then count what the store applied.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = std::fs::read_to_string(store.join("acct.json")).expect("entity");
    let value = serde_json::from_str::<serde_json::Value>(&text).expect("JSON")["value"].as_i64().expect("value");
    let mut applied = 0;
    for t in c.zk.get_children(&format!("{root}/tasks"), false).await.expect("tasks") {
        let (data, _) = c.zk.get_data(&format!("{root}/tasks/{t}"), false).await.expect("task");
        if String::from_utf8_lossy(&data).contains(r#""status":"done""#) {
            applied += 1;
        }
    }
    println!(
        "RabbitMQ restart: system-a publishing again {reconnected:?} after the stop; {done} done, {refused} refused \
         with UNAVAILABLE, entity = {value}"
    );
    assert!(done > 0, "nothing completed");
    assert!(value >= done, "an accepted task was lost: {done} done but value {value}");
    assert_eq!(value, applied, "the store and the task nodes disagree: a task was applied twice or not reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_restart_mid_flow() {
    let dir = TempDir::new("fault-rabbitmq");
    {
        let (_server, zk) = start_coordinator(&["--tick-time", "500"], dir.path());
        flow(&zk, &dir.path().join("c")).await;
    }
    flow(&testkit::zookeeper_addr().to_string(), &dir.path().join("z")).await;
}

//! RabbitMQ stopped for 5 s mid-flow (its app stopped and started with
//! `rabbitmqctl`, which closes every connection and keeps durable queues
//! and persistent messages, as a broker restart does). system-a and
//! system-b reconnect with backoff. Submits keep being accepted while the
//! broker is down: system-a records each task in the coordination server
//! (its outbox) and publishes it once RabbitMQ is back. No submit is
//! refused, every task is done exactly once.
//!
//! Its own test binary: it disturbs the shared broker, and cargo runs test
//! binaries one after another. One outage serves both servers' systems, run
//! side by side, to keep the broker's downtime as short as the test needs.

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

/// One system (two system-b, one system-a) on `zk`, ready for submits.
struct System {
    root: String,
    store: std::path::PathBuf,
    client: Client,
    grpc: TasksClient<tonic::transport::Channel>,
    a: Proc,
    _bs: Vec<Proc>,
}

async fn system(zk: &str, dir: &Path) -> System {
    std::fs::create_dir_all(dir).expect("test dir");
    let root = format!("/{}", testkit::unique("rmq"));
    let queue = testkit::broker::queue_name("tasks");
    let store = dir.join("store");
    let c = Client::connect(zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");
    let configured = async {
        for (node, body) in [("system-b", r#"{"work_ms":20}"#), ("system-a", r#"{"timeout_ms":60000}"#)] {
            let path = format!("{root}/config/{node}");
            zk_recipes::ensure_path(&c.zk, &path).await.expect("config");
            c.zk.set_data(&path, body.as_bytes().to_vec(), None).await.expect("set");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), configured).await.expect("configured in time");
    let broker = testkit::broker::provision(&queue);
    let common = |name: &str, role: &str| {
        let mut args = vec![
            "--zk".to_string(),
            zk.to_string(),
            "--root".into(),
            root.clone(),
            "--queue".into(),
            queue.clone(),
            "--instance".into(),
            name.to_string(),
        ];
        args.extend(broker.flags(role));
        args
    };
    let mut bs = Vec::new();
    for name in ["b1", "b2"] {
        let mut args = common(name, "system-b");
        args.extend(["--store-dir".to_string(), store.to_str().expect("utf-8").to_string()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = Proc::spawn("system-b", &refs, dir);
        p.wait_line("system-b ready", Duration::from_secs(30));
        bs.push(p);
    }
    let mut args = common("a1", "system-a");
    args.extend(["--listen".to_string(), "127.0.0.1:0".to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut a = Proc::spawn("system-a", &refs, dir);
    let a_addr = a.wait_line("system-a listening on", Duration::from_secs(30));
    a.wait_line("system-a connected to RabbitMQ", Duration::from_secs(30));
    let grpc = TasksClient::connect(format!("http://{a_addr}")).await.expect("gRPC");
    System { root, store, client: c, grpc, a, _bs: bs }
}

const TASKS: u64 = 40;

/// 40 submits spread over 4 s, so some land before, during and after the
/// outage; each with its latency.
fn submit_spread(sys: &System) -> Vec<tokio::task::JoinHandle<(Duration, Result<(), tonic::Status>)>> {
    (0..TASKS)
        .map(|i| {
            let mut g = sys.grpc.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100 * i)).await;
                let t = Instant::now();
                let r = g
                    .submit(SubmitRequest { entity: "acct".into(), op: "add".into(), amount: 1, ..Default::default() })
                    .await;
                (t.elapsed(), r.map(|r| assert_eq!(r.into_inner().status, "done")))
            })
        })
        .collect()
}

async fn check(
    name: &str,
    sys: &System,
    calls: Vec<tokio::task::JoinHandle<(Duration, Result<(), tonic::Status>)>>,
    reconnected: Duration,
) {
    let (mut done, mut refused, mut latencies) = (0, Vec::new(), Vec::new());
    for c in calls {
        let (took, r) = tokio::time::timeout(Duration::from_secs(90), c).await.expect("in time").expect("task");
        latencies.push(took);
        match r {
            Ok(()) => done += 1,
            Err(s) => refused.push(format!("{:?}: {}", s.code(), s.message())),
        }
    }
    latencies.sort();
    // Let any duplicate publish settle, then count what the store applied.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let value = e2e_tests::entity_value(&sys.store, "acct");
    let count = async {
        let mut applied = 0;
        for t in sys.client.zk.get_children(&format!("{}/tasks", sys.root), false).await.expect("tasks") {
            let (data, _) = sys.client.zk.get_data(&format!("{}/tasks/{t}", sys.root), false).await.expect("task");
            if String::from_utf8_lossy(&data).contains(r#""status":"done""#) {
                applied += 1;
            }
        }
        applied
    };
    let applied = tokio::time::timeout(Duration::from_secs(20), count).await.expect("counted in time");
    let p99 = latencies[((latencies.len() - 1) as f64 * 0.99).round() as usize];
    println!(
        "RabbitMQ stopped 5 s ({name}): system-a publishing again {reconnected:?} after the stop; {done} done, {} \
         refused, entity = {value}; latency p50 {:?} p99 {p99:?} max {:?}",
        refused.len(),
        latencies[latencies.len() / 2],
        latencies.last().copied().unwrap_or_default(),
    );
    assert!(refused.is_empty(), "submits refused during the outage: {refused:?}");
    assert_eq!(done, TASKS as i64);
    assert_eq!(value, TASKS as i64, "a task was lost or applied twice");
    assert_eq!(applied, TASKS as i64, "the store and the task nodes disagree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_outage_mid_flow_refuses_nothing() {
    let dir = TempDir::new("fault-rabbitmq");
    let (_server, zk) = start_coordinator(&["--tick-time", "500"], dir.path());
    let mut on_c = system(&zk, &dir.path().join("c")).await;
    let mut on_z = system(&testkit::zookeeper_addr().to_string(), &dir.path().join("z")).await;
    let calls_c = submit_spread(&on_c);
    let calls_z = submit_spread(&on_z);

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _back = BrokerBack;
    rabbitmqctl(&["stop_app"]);
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    println!("RabbitMQ was down {:?}", down.elapsed());
    on_c.a.wait_line("system-a connected to RabbitMQ", Duration::from_secs(30));
    let reconnected_c = down.elapsed();
    on_z.a.wait_line("system-a connected to RabbitMQ", Duration::from_secs(30));
    let reconnected_z = down.elapsed();
    check("coordinator", &on_c, calls_c, reconnected_c).await;
    check("Apache ZooKeeper", &on_z, calls_z, reconnected_z).await;
}

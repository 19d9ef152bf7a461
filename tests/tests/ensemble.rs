//! The services on a 3-node Apache ZooKeeper ensemble, through the faults an
//! ensemble exists to absorb: its leader killed -9 mid-stream, a follower
//! killed and restarted. A fault that heals within a caller's deadline must
//! cost latency only: no failed request, nothing lost, nothing applied
//! twice, never two holders of a lock or two actives.
//!
//! Each test starts its own ensemble (tests/src/ensemble.rs) and stops it
//! at the end; they run one at a time. Each prints its figures (failed
//! requests, added latency, time to recover); docs/faults.md records them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_tests::ensemble::{Ensemble, Mode};
use e2e_tests::{start_system_a, start_system_b, Proc, TempDir};
use system_a::proto::tasks_client::TasksClient;
use system_a::proto::SubmitRequest;
use zk_recipes::session::Client;

const SESSION_MS: u64 = 6000;

async fn client(zk: &str) -> Client {
    Client::connect(zk, Duration::from_millis(SESSION_MS), Duration::from_secs(20)).await.expect("connect")
}

async fn set_config(c: &Client, path: &str, body: &str) {
    zk_recipes::ensure_path(&c.zk, path).await.expect("config node");
    c.zk.set_data(path, body.as_bytes().to_vec(), None).await.expect("set config");
}

fn entity_value(store: &Path, entity: &str) -> i64 {
    let text = std::fs::read_to_string(store.join(format!("{entity}.json"))).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["value"].as_i64()).unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What a stream of submits saw.
struct Stream {
    ok: usize,
    failed: Vec<String>,
    latencies: Vec<Duration>,
    /// Successful submits per entity.
    per_entity: Vec<(String, i64)>,
}

/// `clients` loops submitting `add 1` to their own entity until `stop`.
async fn submit_stream(a_addr: String, clients: usize, stop: Arc<AtomicBool>) -> Stream {
    let grpc = TasksClient::connect(format!("http://{a_addr}")).await.expect("gRPC");
    let mut loops = Vec::new();
    for c in 0..clients {
        let mut g = grpc.clone();
        let stop = stop.clone();
        loops.push(tokio::spawn(async move {
            let entity = format!("c{c}");
            let (mut ok, mut failed, mut lat) = (0i64, Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(30),
                    g.submit(SubmitRequest { entity: entity.clone(), op: "add".into(), amount: 1 }),
                )
                .await;
                lat.push(t.elapsed());
                match r {
                    Ok(Ok(_)) => ok += 1,
                    Ok(Err(s)) => failed.push(format!("{:?}: {}", s.code(), s.message())),
                    Err(_) => failed.push("no answer within 30 s".into()),
                }
            }
            (entity, ok, failed, lat)
        }));
    }
    let mut s = Stream { ok: 0, failed: vec![], latencies: vec![], per_entity: vec![] };
    for l in loops {
        let (entity, ok, failed, lat) = tokio::time::timeout(Duration::from_secs(60), l).await.expect("in time").expect("loop");
        s.ok += ok as usize;
        s.failed.extend(failed);
        s.latencies.extend(lat);
        s.per_entity.push((entity, ok));
    }
    s.latencies.sort();
    s
}

/// A task stream (system-a, two system-b, RabbitMQ) while the ensemble's
/// leader is killed -9: every submit succeeds, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_stream_survives_leader_kill() {
    let dir = TempDir::new("ens-stream");
    let mut ens = tokio::task::block_in_place(|| Ensemble::start(dir.path()));
    let zk = ens.connect_string();
    let root = format!("/{}", testkit::unique("ens"));
    let queue = testkit::unique("tasks");
    let store = dir.path().join("store");
    let c = client(&zk).await;
    set_config(&c, &format!("{root}/config/system-b"), r#"{"work_ms":5}"#).await;
    let _b1 = start_system_b(&zk, &root, &queue, &store, "b1", SESSION_MS, dir.path());
    let _b2 = start_system_b(&zk, &root, &queue, &store, "b2", SESSION_MS, dir.path());
    let (_a, a_addr) = start_system_a(&zk, &root, &queue, dir.path());

    let stop = Arc::new(AtomicBool::new(false));
    let stream = tokio::spawn(submit_stream(a_addr.clone(), 4, stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = ens.leader();
    let killed = Instant::now();
    ens.kill9(leader);
    let (new_leader, election) = tokio::task::block_in_place(|| ens.wait_leader(Duration::from_secs(30)));
    // Keep submitting a while after the election: the sessions' recovery.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let s = tokio::time::timeout(Duration::from_secs(60), stream).await.expect("in time").expect("stream");
    let since_kill = killed.elapsed();

    println!(
        "ensemble leader zk{} killed: zk{} leads after {election:?}; {} submits ok, {} failed, latency p50 {:?} \
         p99 {:?} max {:?} (over {since_kill:?} since the kill)",
        leader + 1,
        new_leader + 1,
        s.ok,
        s.failed.len(),
        percentile(&s.latencies, 0.5),
        percentile(&s.latencies, 0.99),
        s.latencies.last().copied().unwrap_or_default(),
    );
    assert!(
        s.failed.is_empty(),
        "{} submits failed through the election, first: {:?}",
        s.failed.len(),
        s.failed.iter().take(3).collect::<Vec<_>>()
    );
    assert!(s.ok > 20, "too few submits to mean anything: {}", s.ok);
    for (entity, ok) in &s.per_entity {
        assert_eq!(entity_value(&store, entity), *ok, "{entity}: a task was lost or applied twice");
    }
}

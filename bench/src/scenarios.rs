//! The scenario figures, each run the same way against either server:
//!
//! - A→B→A: a task through system-a, RabbitMQ and system-b, back through
//!   the task znode's watch (B's simulated work at 0), one at a time and
//!   32 at once;
//! - the lock: handoff latency (the holder starts its release → the next
//!   holder runs), acquisitions per second with 2, 8 and 32 contenders,
//!   and how many watch events each release wakes (1: no herd);
//! - HA failover: SIGTERM (hand over at once) and kill -9 (hand over when
//!   the session expires) of the active ha-worker, until the standby
//!   reports itself active.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use parking_lot::Mutex;
use serde_json::{json, Value};
use system_a::proto::tasks_client::TasksClient;
use system_a::proto::SubmitRequest;
use testkit::process::Proc;
use testkit::unique;
use zk_recipes::lock::Lock;
use zk_recipes::session::Client;

use crate::ops::{histogram, merge, percentiles, record};
use crate::servers::repo_root;

/// A release build of the workspace binary `name` (scripts/bench.sh builds
/// them), under the tests' launcher.
fn spawn(name: &str, args: &[&str], log: &Path) -> Result<Proc> {
    Proc::start(&repo_root().join("target/release").join(name), name, args, &[], log)
}

/// Waits for `p`'s stdout line starting with `prefix`. The launcher waits on
/// a channel fed by a thread, so this blocks: `block_in_place` lets the
/// runtime move other tasks off this worker meanwhile.
fn wait_line(p: &mut Proc, prefix: &str, timeout: Duration) -> Result<String> {
    tokio::task::block_in_place(|| p.try_wait_line(prefix, timeout))
}

/// A→RabbitMQ→B→znode→A round trips through the real services: two
/// system-b instances and one system-a, on a queue and znode root of
/// their own.
pub async fn round_trip(zk: &str, log: &Path, sequential: usize, secs: u64) -> Result<Value> {
    let queue = testkit::broker::queue_name("bench-rt");
    // Each service logs in as its own broker user, as deployed.
    let users = testkit::broker::try_provision(&queue)?;
    round_trip_on(zk, log, sequential, secs, &queue, users.flags("system-a"), users.flags("system-b")).await
}

/// [`round_trip`] on the provisioned `queue`, each service started with
/// its broker flags (`--amqp URLS --amqp-credentials-file FILE`).
pub async fn round_trip_on(
    zk: &str,
    log: &Path,
    sequential: usize,
    secs: u64,
    queue: &str,
    a_broker: [String; 4],
    b_broker: [String; 4],
) -> Result<Value> {
    let root = format!("/{}", testkit::broker::queue_name("bench-rt"));
    let store = log.join(queue);
    std::fs::create_dir_all(&store)?;
    let store_s = store.to_string_lossy().to_string();
    // What system-a and system-b must agree on.
    let shared = ["--zk", zk, "--root", &root, "--queue", queue];
    let mut bs = Vec::new();
    for name in ["b1", "b2"] {
        let args: Vec<&str> = shared
            .iter()
            .copied()
            .chain(["--store-dir", &store_s, "--instance", name])
            .chain(b_broker.iter().map(String::as_str))
            .collect();
        let mut b = spawn("system-b", &args, log)?;
        wait_line(&mut b, "system-b ready", Duration::from_secs(30))?;
        bs.push(b);
    }
    let args: Vec<&str> = shared
        .iter()
        .copied()
        .chain(["--listen", "127.0.0.1:0", "--instance", "a1"])
        .chain(a_broker.iter().map(String::as_str))
        .collect();
    let mut a = spawn("system-a", &args, log)?;
    let addr = wait_line(&mut a, "system-a listening on", Duration::from_secs(30))?;
    wait_line(&mut a, "system-a connected to RabbitMQ", Duration::from_secs(30))?;
    let grpc = TasksClient::connect(format!("http://{addr}")).await.context("connect to system-a")?;

    let submit = |g: TasksClient<tonic::transport::Channel>, entity: String| submit_one(g, entity);

    // Warm up the connections and the queue, then one task at a time.
    for i in 0..10 {
        submit(grpc.clone(), format!("warm-{i}")).await?;
    }
    let mut one = histogram();
    for i in 0..sequential {
        record(&mut one, submit(grpc.clone(), format!("seq-{}", i % 16)).await?);
    }

    // 32 in flight, each on its own entity (the lock is measured apart).
    let (many, elapsed) = closed_loop(&grpc, (0..32).map(|w| format!("par-{w}")).collect(), secs).await?;
    let _ = std::fs::remove_dir_all(&store);
    let mut concurrent = json!({"in_flight": 32, "tasks_per_sec": (many.len() as f64 / elapsed).round()});
    merge(&mut concurrent, percentiles(&many));
    Ok(json!({"one_at_a_time": percentiles(&one), "concurrent": concurrent}))
}

/// One "add 1" task on `entity`, submitted and answered "done": how long
/// it took.
pub async fn submit_one(mut g: TasksClient<tonic::transport::Channel>, entity: String) -> Result<Duration> {
    let t = Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        g.submit(SubmitRequest { entity, op: "add".into(), amount: 1, ..Default::default() }),
    )
    .await
    .context("no answer within 60 s")?
    .context("submit")?
    .into_inner();
    if reply.status != "done" {
        bail!("a task ended {:?}", reply.status);
    }
    Ok(t.elapsed())
}

/// One caller per entry of `entities` (the same name twice is two callers
/// on one entity), each submitting one task after another for `secs`: the
/// latencies, and the seconds it took.
pub async fn closed_loop(
    grpc: &TasksClient<tonic::transport::Channel>,
    entities: Vec<String>,
    secs: u64,
) -> Result<(hdrhistogram::Histogram<u64>, f64)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let callers: Vec<_> = entities
        .into_iter()
        .map(|entity| {
            let g = grpc.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                while Instant::now() < deadline {
                    record(&mut h, submit_one(g.clone(), entity.clone()).await?);
                }
                Ok::<_, anyhow::Error>(h)
            })
        })
        .collect();
    let mut all = histogram();
    for c in callers {
        all.add(c.await??)?;
    }
    Ok((all, started.elapsed().as_secs_f64()))
}

/// `contenders` sessions, each looping acquire → release on one lock for
/// `secs`.
pub async fn lock(zk: &str, contenders: usize, secs: u64) -> Result<Value> {
    let dir = format!("/{}", unique("bench-lock"));
    let mut clients = Vec::new();
    for _ in 0..contenders {
        clients.push(Client::connect(zk, Duration::from_secs(10), Duration::from_secs(10)).await?);
    }
    // Set when a holder starts to release; taken by the next holder.
    let released_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let events_before = zk_recipes::queue_watch_events();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            let (lock, released_at) = (Lock::new(client, dir.clone()), released_at.clone());
            tokio::spawn(async move {
                let (mut handoffs, mut n) = (histogram(), 0u64);
                while Instant::now() < deadline {
                    let guard = lock.acquire(&format!("c{i}"), Duration::from_secs(30)).await?;
                    if let Some(at) = released_at.lock().take() {
                        record(&mut handoffs, at.elapsed());
                    }
                    n += 1;
                    *released_at.lock() = Some(Instant::now());
                    guard.release().await;
                }
                Ok::<_, anyhow::Error>((n, handoffs))
            })
        })
        .collect();
    let (mut acquisitions, mut handoffs) = (0u64, histogram());
    for t in tasks {
        let (n, h) = t.await??;
        acquisitions += n;
        handoffs.add(h)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let events = zk_recipes::queue_watch_events() - events_before;
    for c in clients {
        let _ = c.zk.close().await;
    }
    let mut out = json!({
        "contenders": contenders,
        "acquisitions_per_sec": (acquisitions as f64 / elapsed).round(),
        "watch_events_per_release": (events as f64 / acquisitions.max(1) as f64 * 100.0).round() / 100.0,
    });
    merge(&mut out, json!({"handoff": percentiles(&handoffs)}));
    Ok(out)
}

/// An active/standby pair of ha-workers: `rounds` graceful stops, then
/// `rounds` crashes of the active, each timed until the standby prints
/// that it is active; a new standby joins after each.
pub async fn failover(zk: &str, log: &Path, rounds: usize, session_ms: u64) -> Result<Value> {
    let root = format!("/{}", unique("bench-ha"));
    let journal: PathBuf = log.join(format!("{}.journal", unique("ha")));
    let journal_s = journal.to_string_lossy().to_string();
    let session = session_ms.to_string();
    let mut n = 0;
    let mut worker = || {
        n += 1;
        let name = format!("w{n}");
        let args = [
            "--zk",
            zk,
            "--root",
            &root,
            "--instance",
            &name,
            "--journal",
            &journal_s,
            "--interval-ms",
            "100",
            "--zk-session-timeout-ms",
            &session,
        ];
        spawn("ha-worker", &args, log)
    };
    let mut active = worker()?;
    wait_line(&mut active, "ha-worker active", Duration::from_secs(20))?;
    let (mut graceful, mut crash) = (Vec::new(), Vec::new());
    for round in 0..rounds * 2 {
        let mut standby = worker()?;
        wait_line(&mut standby, "ha-worker standby", Duration::from_secs(20))?;
        // Let the standby's watch settle on the active's node.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        if round < rounds {
            active.signal(Signal::SIGTERM);
        } else {
            active.signal(Signal::SIGKILL);
        }
        wait_line(&mut standby, "ha-worker active", Duration::from_millis(session_ms * 3))?;
        let took = t.elapsed().as_secs_f64() * 1000.0;
        if round < rounds {
            graceful.push(took)
        } else {
            crash.push(took)
        };
        tokio::task::block_in_place(|| active.wait_exit(Duration::from_secs(10)));
        active = standby;
    }
    let _ = std::fs::remove_file(&journal);
    let mean = |v: &[f64]| (v.iter().sum::<f64>() / v.len().max(1) as f64 * 10.0).round() / 10.0;
    Ok(json!({
        "session_timeout_ms": session_ms,
        "sigterm_ms": graceful, "sigterm_mean_ms": mean(&graceful),
        "kill9_ms": crash, "kill9_mean_ms": mean(&crash),
    }))
}

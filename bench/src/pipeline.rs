//! `zkbench pipeline`: the A→B→A scenario at scale, and where its time
//! goes. For each server in turn, with 1, 3 and 6 system-b instances, at
//! 32, 128 and 512 tasks in flight, spread over many entities (each client
//! its own) and on one hot entity:
//!
//! - tasks/s and the caller's submit → result p50/p99;
//! - each stage's mean, read from the services' own
//!   `system_a_stage_seconds` and `system_b_stage_seconds` histograms (the
//!   metrics a production dashboard shows), as the difference of their
//!   sums and counts across the point; what no stage covers (the queue in
//!   the broker, the delivery, the watch's event) is system-a's `wait`
//!   less system-b's stages up to the result's write;
//! - the CPU each process used, in cores (the machine has
//!   [`std::thread::available_parallelism`] of them, shared by the client,
//!   the services, the server and RabbitMQ);
//! - the limit the figures point at (see [`Limit`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use system_a::proto::tasks_client::TasksClient;
use system_a::proto::SubmitRequest;
use testkit::process::Proc;

use crate::ops::percentiles;
use crate::servers::{cpu_time, free_port, repo_root, start, Kind};

#[derive(clap::Args, Debug)]
pub struct PipelineArgs {
    /// Seconds measured per point.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// system-b instances, one deployment each.
    #[arg(long, value_delimiter = ',', default_value = "1,3,6")]
    instances: Vec<usize>,
    /// Tasks in flight (concurrent callers).
    #[arg(long, value_delimiter = ',', default_value = "32,128,512")]
    in_flight: Vec<usize>,
    /// system-b's prefetch (unacked deliveries per instance), passed to
    /// every instance; 8 is system-b's own default.
    #[arg(long, default_value_t = 8)]
    prefetch: u16,
    /// Run only against this server.
    #[arg(long, value_parser = ["coordinator", "zookeeper"])]
    only: Option<String>,
    /// Only this spread of entities.
    #[arg(long, value_parser = ["many", "hot"])]
    spread: Option<String>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "docs/bench/pipeline.json")]
    out: PathBuf,
}

/// One deployment: system-a and `n` system-b on their own queue and root,
/// each serving its metrics.
struct Deployment {
    a: Proc,
    bs: Vec<Proc>,
    grpc: TasksClient<tonic::transport::Channel>,
    a_metrics: String,
    b_metrics: Vec<String>,
    store: PathBuf,
    queue: String,
}

fn spawn(name: &str, args: &[&str], log: &Path) -> Result<Proc> {
    Proc::start(&repo_root().join("target/release").join(name), name, args, &[], log)
}

fn wait_line(p: &mut Proc, prefix: &str) -> Result<String> {
    tokio::task::block_in_place(|| p.try_wait_line(prefix, Duration::from_secs(30)))
}

impl Deployment {
    async fn start(zk: &str, instances: usize, prefetch: u16, log: &Path) -> Result<Deployment> {
        let queue = testkit::broker::queue_name("bench-pipe");
        let users = testkit::broker::try_provision(&queue)?;
        let root = format!("/{queue}");
        let store = log.join(&queue);
        std::fs::create_dir_all(&store)?;
        let store_s = store.to_string_lossy().to_string();
        let shared = ["--zk", zk, "--root", &root, "--queue", &queue, "--metrics-listen", "127.0.0.1:0"];
        let prefetch = prefetch.to_string();
        let mut bs = Vec::new();
        let mut b_metrics = Vec::new();
        for i in 0..instances {
            let name = format!("b{i}");
            let mut args: Vec<&str> = shared.to_vec();
            args.extend(["--store-dir", &store_s, "--instance", &name, "--prefetch", &prefetch]);
            let flags = users.flags("system-b");
            args.extend(flags.iter().map(String::as_str));
            let mut b = spawn("system-b", &args, log)?;
            b_metrics.push(wait_line(&mut b, "metrics listening on")?);
            wait_line(&mut b, "system-b ready")?;
            bs.push(b);
        }
        let mut args: Vec<&str> = shared.to_vec();
        args.extend(["--listen", "127.0.0.1:0", "--instance", "a1"]);
        let flags = users.flags("system-a");
        args.extend(flags.iter().map(String::as_str));
        let mut a = spawn("system-a", &args, log)?;
        let a_metrics = wait_line(&mut a, "metrics listening on")?;
        let addr = wait_line(&mut a, "system-a listening on")?;
        wait_line(&mut a, "system-a connected to RabbitMQ")?;
        let grpc = TasksClient::connect(format!("http://{addr}")).await.context("connect to system-a")?;
        Ok(Deployment { a, bs, grpc, a_metrics, b_metrics, store, queue })
    }

    fn pids(&self) -> Vec<(&'static str, u32)> {
        let mut p = vec![("system-a", self.a.pid().as_raw() as u32)];
        p.extend(self.bs.iter().map(|b| ("system-b", b.pid().as_raw() as u32)));
        p
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store);
        // Each quorum queue is a Raft group on the broker: not left behind.
        if let Err(e) = testkit::broker::remove(&self.queue) {
            eprintln!("zkbench: could not remove the queue {}: {e:#}", self.queue);
        }
    }
}

/// Stage totals (seconds, observations) of one service kind, summed over
/// its instances.
fn stage_totals(addrs: &[String], family: &str) -> Result<Vec<(String, f64, f64)>> {
    let mut all: Vec<(String, f64, f64)> = Vec::new();
    for addr in addrs {
        let (code, body) = testkit::scrape::http_get(addr, "/metrics").with_context(|| format!("scrape {addr}"))?;
        if code != 200 {
            bail!("{addr}/metrics answered {code}");
        }
        for (stage, sum, count) in testkit::scrape::stages(&body, family) {
            match all.iter_mut().find(|s| s.0 == stage) {
                Some(s) => {
                    s.1 += sum;
                    s.2 += count;
                }
                None => all.push((stage, sum, count)),
            }
        }
    }
    Ok(all)
}

/// Mean milliseconds per stage between two scrapes (stages not seen in
/// between are left out).
fn stage_means(before: &[(String, f64, f64)], after: &[(String, f64, f64)]) -> Vec<(String, f64)> {
    after
        .iter()
        .filter_map(|(stage, sum, count)| {
            let (s0, c0) = before.iter().find(|b| &b.0 == stage).map(|b| (b.1, b.2)).unwrap_or((0.0, 0.0));
            let n = count - c0;
            (n > 0.0).then(|| (stage.clone(), (sum - s0) / n * 1000.0))
        })
        .collect()
}

/// The process the machine's RabbitMQ runs in (`beam.smp`), if any.
fn broker_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "beam.smp"))
        .collect()
}

/// CPU seconds used so far by each named group of processes.
fn cpu_by_group(groups: &[(&'static str, u32)]) -> Vec<(&'static str, f64)> {
    let mut out: Vec<(&'static str, f64)> = Vec::new();
    for (name, pid) in groups {
        let used = cpu_time(*pid).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        match out.iter_mut().find(|(n, _)| n == name) {
            Some(g) => g.1 += used,
            None => out.push((name, used)),
        }
    }
    out
}

/// What stops a point going faster, as its figures show it.
#[derive(Debug)]
enum Limit {
    /// One entity: its lock lets one task through at a time, so tasks/s ×
    /// the lock's hold ≈ 1.
    EntityLock { hold_ms: f64 },
    /// system-b's prefetch: nearly every slot holds a task (Little's law:
    /// tasks/s × a task's time in system-b), so a task waits in the queue
    /// for a slot, and the rate is the slots over that time.
    Prefetch { busy: f64, slots: usize, task_ms: f64 },
    /// Fewer callers than slots: each caller waits for its answer before
    /// it sends again, so the rate is the callers over a round trip.
    Callers { in_flight: usize, slots: usize },
    /// The cores are used up; the biggest user named.
    Cpu { busiest: &'static str, cores: f64 },
    /// Neither: the longest stage, where tasks wait.
    Stage { stage: String, ms: f64 },
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::EntityLock { hold_ms } => write!(f, "the entity's lock (held {hold_ms:.2} ms a task)"),
            Limit::Callers { in_flight, slots } => write!(f, "the callers ({in_flight} in flight, {slots} slots)"),
            Limit::Prefetch { busy, slots, task_ms } => {
                write!(f, "system-b's prefetch ({busy:.1} of {slots} slots busy, {task_ms:.1} ms a task)")
            }
            Limit::Cpu { busiest, cores } => write!(f, "CPU (busiest: {busiest}, {cores:.2} cores)"),
            Limit::Stage { stage, ms } => write!(f, "{stage} ({ms:.1} ms)"),
        }
    }
}

/// One point: `in_flight` callers for `secs`, on their own entities or
/// all on one.
/// `slots` is system-b's prefetch over all its instances.
async fn point(
    d: &Deployment,
    slots: usize,
    server_pid: u32,
    server: &str,
    in_flight: usize,
    hot: bool,
    secs: u64,
) -> Result<Value> {
    let mut groups = d.pids();
    groups.push((if server == "coordinator" { "coordinator" } else { "zookeeper" }, server_pid));
    groups.extend(broker_pids().into_iter().map(|p| ("rabbitmq", p)));
    groups.push(("client", std::process::id()));
    let a0 = stage_totals(std::slice::from_ref(&d.a_metrics), "system_a_stage_seconds")?;
    let b0 = stage_totals(&d.b_metrics, "system_b_stage_seconds")?;
    let hold0 = lock_hold_totals(&d.b_metrics)?;
    let cpu0 = cpu_by_group(&groups);
    let entities = (0..in_flight).map(|w| if hot { "hot".to_string() } else { format!("e{w}") }).collect();
    let (all, elapsed) = crate::scenarios::closed_loop(&d.grpc, entities, secs).await?;
    let cpu1 = cpu_by_group(&groups);
    let a = stage_means(&a0, &stage_totals(std::slice::from_ref(&d.a_metrics), "system_a_stage_seconds")?);
    let b = stage_means(&b0, &stage_totals(&d.b_metrics, "system_b_stage_seconds")?);
    let hold1 = lock_hold_totals(&d.b_metrics)?;
    let hold = if hold1.1 > hold0.1 { (hold1.0 - hold0.0) / (hold1.1 - hold0.1) * 1000.0 } else { 0.0 };
    let cores: Vec<(&str, f64)> =
        cpu1.iter().map(|(n, c)| (*n, (c - cpu0.iter().find(|g| g.0 == *n).map_or(0.0, |g| g.1)) / elapsed)).collect();
    let tasks_per_sec = all.len() as f64 / elapsed;
    let ms = |stages: &[(String, f64)], s: &str| stages.iter().find(|x| x.0 == s).map_or(0.0, |x| x.1);
    let b_to_result: f64 =
        ["read", "lock", "read_again", "fenced_read", "work", "store_apply", "report"].iter().map(|s| ms(&b, s)).sum();
    let unaccounted = (ms(&a, "wait") - b_to_result).max(0.0);
    let task_ms: f64 = b.iter().map(|s| s.1).sum();
    let busy = tasks_per_sec * task_ms / 1000.0;
    let total_cores: f64 = cores.iter().map(|c| c.1).sum();
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busiest = cores.iter().copied().fold(("", 0.0), |m, c| if c.1 > m.1 { c } else { m });
    let mut stages: Vec<(String, f64)> = a.iter().filter(|s| s.0 != "wait").cloned().collect();
    stages.extend(b.iter().cloned());
    stages.push(("broker and watch".into(), unaccounted));
    let longest = stages.iter().cloned().fold((String::new(), 0.0), |m, s| if s.1 > m.1 { s } else { m });
    let limit = if hot && tasks_per_sec * hold / 1000.0 > 0.8 {
        Limit::EntityLock { hold_ms: hold }
    } else if busy > 0.8 * slots as f64 {
        Limit::Prefetch { busy, slots, task_ms }
    } else if in_flight <= slots {
        Limit::Callers { in_flight, slots }
    } else if total_cores > 0.85 * ncpu {
        Limit::Cpu { busiest: busiest.0, cores: busiest.1 }
    } else {
        Limit::Stage { stage: longest.0, ms: longest.1 }
    };
    let mut out = json!({
        "in_flight": in_flight,
        "spread": if hot { "hot" } else { "many" },
        "tasks_per_sec": tasks_per_sec.round(),
        "lock_hold_ms": hold,
        "system_b_busy_slots": busy,
        "system_b_slots": slots,
        "system_a_ms": a.iter().map(|(s, v)| json!([s, v])).collect::<Vec<_>>(),
        "system_b_ms": b.iter().map(|(s, v)| json!([s, v])).collect::<Vec<_>>(),
        "broker_and_watch_ms": unaccounted,
        "cores": cores.iter().map(|(s, v)| json!([s, v])).collect::<Vec<_>>(),
        "limit": limit.to_string(),
    });
    crate::ops::merge(&mut out, percentiles(&all));
    Ok(out)
}

/// system-b's lock holds so far, (seconds, holds), over every instance:
/// the unlabelled `system_b_lock_hold_seconds` histogram.
fn lock_hold_totals(addrs: &[String]) -> Result<(f64, f64)> {
    let (mut sum, mut count) = (0.0, 0.0);
    for addr in addrs {
        let (_, body) = testkit::scrape::http_get(addr, "/metrics").with_context(|| format!("scrape {addr}"))?;
        sum += testkit::scrape::sample(&body, "system_b_lock_hold_seconds_sum").unwrap_or(0.0);
        count += testkit::scrape::sample(&body, "system_b_lock_hold_seconds_count").unwrap_or(0.0);
    }
    Ok((sum, count))
}

pub async fn run(args: PipelineArgs) -> Result<()> {
    let scratch = std::env::temp_dir().join(testkit::unique("zkbench-pipeline"));
    std::fs::create_dir_all(&scratch)?;
    let mut results = Vec::new();
    for kind in [Kind::Coordinator, Kind::ZooKeeper] {
        if args.only.as_deref().is_some_and(|o| o != kind.name()) {
            continue;
        }
        let (server, _) = start(kind, &scratch.join(kind.name()), free_port()?, "3g").await?;
        for &n in &args.instances {
            let d = Deployment::start(&server.addr, n, args.prefetch, &scratch).await?;
            // Warm the connections, the queue and the lock directory.
            for i in 0..20 {
                let req =
                    SubmitRequest { entity: format!("warm{i}"), op: "add".into(), amount: 1, ..Default::default() };
                d.grpc.clone().submit(req).await.context("warm-up")?;
            }
            for hot in [false, true] {
                if args.spread.as_deref().is_some_and(|s| s != if hot { "hot" } else { "many" }) {
                    continue;
                }
                for &f in &args.in_flight {
                    let slots = n * usize::from(args.prefetch);
                    let mut p = point(&d, slots, server.pid, kind.name(), f, hot, args.secs)
                        .await
                        .with_context(|| format!("{}: {n} system-b, {f} in flight", kind.name()))?;
                    p["server"] = json!(kind.name());
                    p["instances"] = json!(n);
                    eprintln!("{p}");
                    results.push(p);
                }
            }
        }
        drop(server);
    }
    crate::save_json(&args.out, &json!({"secs_per_point": args.secs, "points": results}))?;
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{}", table(&results));
    Ok(())
}

/// The Markdown table BENCHMARKS.md keeps.
fn table(points: &[Value]) -> String {
    let mut t = String::from(
        "| server | system-b | in flight | entities | tasks/s | p50 ms | p99 ms | lock hold ms | broker and watch ms | \
         CPU, cores | limit |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for p in points {
        let us = |k: &str| p[k].as_f64().unwrap_or(0.0) / 1000.0;
        let cores: Vec<String> = p["cores"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|x| format!("{} {:.2}", x[0].as_str().unwrap_or("?"), x[1].as_f64().unwrap_or(0.0)))
                    .collect()
            })
            .unwrap_or_default();
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.1} | {} | {} |\n",
            p["server"].as_str().unwrap_or("?"),
            p["instances"],
            p["in_flight"],
            p["spread"].as_str().unwrap_or("?"),
            p["tasks_per_sec"],
            us("p50_us"),
            us("p99_us"),
            p["lock_hold_ms"].as_f64().unwrap_or(0.0),
            p["broker_and_watch_ms"].as_f64().unwrap_or(0.0),
            cores.join(", "),
            p["limit"].as_str().unwrap_or("?"),
        ));
    }
    t
}

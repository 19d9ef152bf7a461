//! `zkbench`: the coordinator and Apache ZooKeeper, side by side, in one run,
//! with the same client (zookeeper-async, which pipelines concurrent
//! requests on one connection) and the same load.
//!
//! It starts both servers itself, each with its own fresh data dir and
//! fsync on: the coordinator's release binary, and a private Apache
//! ZooKeeper through `scripts/zookeeper.sh` on its own port. Then, for each
//! server in turn:
//!
//! - create (1 KiB, sequential), setData, getData, exists at 1, 16 and 256
//!   outstanding requests on one connection, and 256 over 16 connections:
//!   throughput and p50/p99/p999 latency;
//! - watch latency: setData on one session → the event at another;
//! - fan-out: one change, `--watchers` watchers over 50 sessions;
//! - start-up to the first served request, RSS after loading `--nodes`
//!   znodes of 100 bytes, and (coordinator) recovery time from that data.
//!
//! Results go to stdout as a table and to `--out` as JSON. Not a test:
//! numbers depend on the machine; BENCHMARKS.md records a run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use zookeeper_async::{Acl, CreateMode, ZooKeeper};

#[derive(Parser, Debug)]
#[command(name = "zkbench", about = "Benchmark the coordinator against Apache ZooKeeper")]
struct Args {
    /// Seconds per measured cell.
    #[arg(long, default_value_t = 3)]
    secs: u64,
    /// Znodes of 100 bytes loaded for the memory and recovery figures.
    #[arg(long, default_value_t = 200_000)]
    nodes: u64,
    /// Watchers for the fan-out figure.
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    /// Port for the private Apache ZooKeeper.
    #[arg(long, default_value_t = 21899)]
    zk_port: u16,
    /// Where to write the JSON results.
    #[arg(long, default_value = "docs/bench/results.json")]
    out: PathBuf,
    /// Run only against this server: coordinator or zookeeper.
    #[arg(long)]
    only: Option<String>,
}

struct Server {
    name: &'static str,
    addr: String,
    child: Option<Child>,
    pid: u32,
    dir: PathBuf,
    zk_port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.name == "zookeeper" {
            let _ = Command::new("scripts/zookeeper.sh")
                .args(["stop", &self.zk_port.to_string(), self.dir.to_str().unwrap_or_default()])
                .status();
        }
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn connect(addr: &str) -> Result<ZooKeeper> {
    tokio::time::timeout(Duration::from_secs(30), ZooKeeper::connect(addr, Duration::from_secs(30), |_| {}))
        .await
        .context("connect timed out")?
        .map_err(|e| anyhow::anyhow!("connect: {e:?}"))
}

/// Time from spawning the server to its first answered request.
async fn first_answer(addr: &str, started: Instant) -> Result<Duration> {
    loop {
        if let Ok(Ok(zk)) =
            tokio::time::timeout(Duration::from_millis(500), ZooKeeper::connect(addr, Duration::from_secs(10), |_| {}))
                .await
        {
            if zk.exists("/", false).await.is_ok() {
                let t = started.elapsed();
                let _ = zk.close().await;
                return Ok(t);
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{addr} did not answer within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_coordinator(dir: &Path, port: u16) -> Result<(Server, Duration)> {
    let bin = repo_root().join("target/release/coordinator");
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let child = Command::new(&bin)
        .args(["--listen", &addr, "--data-dir", dir.to_str().unwrap_or_default()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {} (cargo build --release -p coordinator)", bin.display()))?;
    let pid = child.id();
    let t = first_answer(&addr, started).await?;
    Ok((Server { name: "coordinator", addr, child: Some(child), pid, dir: dir.to_path_buf(), zk_port: 0 }, t))
}

async fn start_zookeeper(dir: &Path, port: u16, keep: bool) -> Result<(Server, Duration)> {
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let status = Command::new(repo_root().join("scripts/zookeeper.sh"))
        .args(["start", &port.to_string(), dir.to_str().unwrap_or_default()])
        .env("ZK_HEAP", "3g")
        .env("ZK_KEEP_DATA", if keep { "1" } else { "0" })
        .status()
        .context("scripts/zookeeper.sh")?;
    if !status.success() {
        bail!("scripts/zookeeper.sh start failed");
    }
    let t = first_answer(&addr, started).await?;
    let pid = std::fs::read_to_string(dir.join("pid")).ok().and_then(|p| p.trim().parse().ok()).unwrap_or(0);
    Ok((Server { name: "zookeeper", addr, child: None, pid, dir: dir.to_path_buf(), zk_port: port }, t))
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Create,
    Set,
    Get,
    Exists,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Set => "setData",
            Op::Get => "getData",
            Op::Exists => "exists",
        }
    }
}

/// Runs `op` for `secs` with `outstanding` requests in flight spread over
/// `conns` connections. Returns ops/s and latency percentiles in µs.
async fn cell(addr: &str, base: &str, op: Op, outstanding: usize, conns: usize, secs: u64) -> Result<Value> {
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(Arc::new(connect(addr).await?));
    }
    let data = vec![b'x'; 1024];
    let target = format!("{base}/target");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let per_conn = outstanding.div_ceil(conns);
    let mut workers = Vec::new();
    for c in &clients {
        for _ in 0..per_conn {
            let (zk, data, target, base) = (c.clone(), data.clone(), target.clone(), base.to_string());
            workers.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let ok = match op {
                        Op::Create => zk
                            .create(
                                &format!("{base}/c-"),
                                data.clone(),
                                Acl::open_unsafe().clone(),
                                CreateMode::PersistentSequential,
                            )
                            .await
                            .is_ok(),
                        Op::Set => zk.set_data(&target, data.clone(), None).await.is_ok(),
                        Op::Get => zk.get_data(&target, false).await.is_ok(),
                        Op::Exists => zk.exists(&target, false).await.is_ok(),
                    };
                    if ok {
                        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                        n += 1;
                    }
                }
                (n, h)
            }));
        }
    }
    let started = Instant::now();
    let mut total = 0u64;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for w in workers {
        let (n, h) = w.await?;
        total += n;
        hist.add(h)?;
    }
    let elapsed = started.elapsed().as_secs_f64().max(secs as f64);
    for c in clients {
        let _ = c.close().await;
    }
    Ok(json!({
        "op": op.name(), "outstanding": outstanding, "connections": conns,
        "ops_per_sec": (total as f64 / elapsed).round(),
        "p50_us": hist.value_at_quantile(0.5), "p99_us": hist.value_at_quantile(0.99), "p999_us": hist.value_at_quantile(0.999),
    }))
}

/// setData at one session → NodeDataChanged at another, `n` times.
async fn watch_latency(addr: &str, base: &str, n: usize) -> Result<Value> {
    let (writer, watcher) = (connect(addr).await?, connect(addr).await?);
    let path = format!("{base}/w");
    writer
        .create(&path, vec![], Acl::open_unsafe().clone(), CreateMode::Persistent)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for _ in 0..n {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        watcher
            .get_data_w(&path, move |_| {
                if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(Instant::now());
                }
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let t = Instant::now();
        writer.set_data(&path, b"v".to_vec(), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let fired = tokio::time::timeout(Duration::from_secs(10), rx).await??;
        let _ = h.record(fired.duration_since(t).as_micros().max(1) as u64);
    }
    Ok(json!({"samples": n, "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99)}))
}

/// One setData, `watchers` watches on it over 50 sessions: time until the
/// last event arrives.
async fn fan_out(addr: &str, base: &str, watchers: usize) -> Result<Value> {
    let path = format!("{base}/fan");
    let writer = connect(addr).await?;
    writer
        .create(&path, vec![], Acl::open_unsafe().clone(), CreateMode::Persistent)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let sessions = 50;
    let mut clients = Vec::new();
    for _ in 0..sessions {
        clients.push(Arc::new(connect(addr).await?));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // A session holds one server-side watch per path; different paths
    // (one child each) give every watcher its own server-side watch.
    let per = watchers.div_ceil(sessions);
    let mut arm = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        for j in 0..per {
            let (c, tx, p) = (c.clone(), tx.clone(), format!("{path}/n{i}-{j}"));
            arm.push(async move {
                let tx2 = tx.clone();
                let _ = c
                    .exists_w(&p, move |_| {
                        let _ = tx2.send(Instant::now());
                    })
                    .await;
            });
        }
    }
    futures::stream::iter(arm).buffer_unordered(256).collect::<Vec<_>>().await;
    // The change: a multi-node event is not one request in ZooKeeper, so
    // the fan-out here is one *parent* change seen by child-watchers.
    let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel();
    for c in &clients {
        let ptx = ptx.clone();
        let _ = c
            .get_children_w(&path, move |_| {
                let _ = ptx.send(Instant::now());
            })
            .await;
    }
    drop(tx);
    let t = Instant::now();
    writer
        .create(&format!("{path}/trigger"), vec![], Acl::open_unsafe().clone(), CreateMode::Persistent)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut last = t;
    for _ in 0..sessions {
        if let Ok(Some(at)) = tokio::time::timeout(Duration::from_secs(30), prx.recv()).await {
            last = last.max(at);
        }
    }
    // And the exists-watches: create all their nodes in one go.
    let t2 = Instant::now();
    let mut creates = Vec::new();
    for i in 0..sessions {
        for j in 0..per {
            let p = format!("{path}/n{i}-{j}");
            let w = &writer;
            creates.push(async move { w.create(&p, vec![], Acl::open_unsafe().clone(), CreateMode::Persistent).await });
        }
    }
    futures::stream::iter(creates).buffer_unordered(256).collect::<Vec<_>>().await;
    let mut got = 0;
    let mut last2 = t2;
    while let Ok(Some(at)) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        got += 1;
        last2 = last2.max(at);
        if got == per * sessions {
            break;
        }
    }
    for c in clients {
        let _ = c.close().await;
    }
    Ok(json!({
        "child_watch_sessions": sessions, "one_change_to_last_event_us": last.duration_since(t).as_micros() as u64,
        "watchers": per * sessions, "events_received": got,
        "create_all_to_last_event_ms": last2.duration_since(t2).as_millis() as u64,
    }))
}

async fn load(addr: &str, base: &str, nodes: u64) -> Result<Duration> {
    let zk = Arc::new(connect(addr).await?);
    let t = Instant::now();
    let data = vec![b'd'; 100];
    let creates = (0..nodes).map(|i| {
        let (zk, data, p) = (zk.clone(), data.clone(), format!("{base}/m{i}"));
        async move { zk.create(&p, data, Acl::open_unsafe().clone(), CreateMode::Persistent).await.is_ok() }
    });
    let ok =
        futures::stream::iter(creates).buffer_unordered(256).filter(|ok| futures::future::ready(*ok)).count().await;
    if ok as u64 != nodes {
        bail!("loaded only {ok} of {nodes} znodes");
    }
    Ok(t.elapsed())
}

async fn bench_server(server: &Server, startup: Duration, args: &Args) -> Result<Value> {
    let zk = connect(&server.addr).await?;
    let base = "/bench";
    zk.create(base, vec![], Acl::open_unsafe().clone(), CreateMode::Persistent)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    zk.create(&format!("{base}/target"), vec![b'x'; 1024], Acl::open_unsafe().clone(), CreateMode::Persistent)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut cells = Vec::new();
    for op in [Op::Create, Op::Set, Op::Get, Op::Exists] {
        for (outstanding, conns) in [(1, 1), (16, 1), (256, 1), (256, 16)] {
            let c = cell(&server.addr, base, op, outstanding, conns, args.secs).await?;
            eprintln!("{:>11} {c}", server.name);
            cells.push(c);
        }
    }
    let watch = watch_latency(&server.addr, base, 500).await?;
    eprintln!("{:>11} watch {watch}", server.name);
    let fan = fan_out(&server.addr, base, args.watchers).await?;
    eprintln!("{:>11} fan-out {fan}", server.name);
    let _ = zk.close().await;
    Ok(json!({
        "server": server.name, "startup_ms": startup.as_secs_f64() * 1000.0, "cells": cells, "watch_latency": watch,
        "fan_out": fan,
    }))
}

/// On a fresh server: RSS empty, then after loading `nodes` znodes.
async fn memory(server: &Server, nodes: u64) -> Result<Value> {
    let zk = connect(&server.addr).await?;
    let rss_empty = rss_mib(server.pid);
    zk.create("/mem", vec![], Acl::open_unsafe().clone(), CreateMode::Persistent)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let load_time = load(&server.addr, "/mem", nodes).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_mib(server.pid);
    eprintln!("{:>11} loaded {nodes} znodes in {load_time:?}; RSS {rss:.0} MiB (empty {rss_empty:.0})", server.name);
    let _ = zk.close().await;
    Ok(json!({"nodes": nodes, "load_secs": load_time.as_secs_f64(), "rss_mib": rss, "rss_empty_mib": rss_empty}))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    std::env::set_current_dir(repo_root())?;
    let tmp = std::env::temp_dir().join(format!("zkbench-{}", std::process::id()));
    let mut results = Vec::new();
    if args.only.as_deref() != Some("zookeeper") {
        let (dir, mem_dir) = (tmp.join("coordinator"), tmp.join("coordinator-mem"));
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&mem_dir)?;
        let port = free_port()?;
        let (server, startup) = start_coordinator(&dir, port).await?;
        let mut r = bench_server(&server, startup, &args).await?;
        drop(server);
        let (server, _) = start_coordinator(&mem_dir, port).await?;
        r["memory"] = memory(&server, args.nodes).await?;
        drop(server);
        // Recovery: the same data dir, now holding the loaded znodes.
        let (server, recovery) = start_coordinator(&mem_dir, port).await?;
        eprintln!("coordinator recovery with {} znodes: {recovery:?}", args.nodes);
        r["recovery_ms"] = json!(recovery.as_secs_f64() * 1000.0);
        drop(server);
        results.push(r);
    }
    if args.only.as_deref() != Some("coordinator") {
        let (dir, mem_dir) = (tmp.join("zookeeper"), tmp.join("zookeeper-mem"));
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&mem_dir)?;
        let (server, startup) = start_zookeeper(&dir, args.zk_port, false).await?;
        let mut r = bench_server(&server, startup, &args).await?;
        drop(server);
        let (server, _) = start_zookeeper(&mem_dir, args.zk_port, false).await?;
        r["memory"] = memory(&server, args.nodes).await?;
        drop(server);
        let (server, recovery) = start_zookeeper(&mem_dir, args.zk_port, true).await?;
        eprintln!("zookeeper recovery with {} znodes: {recovery:?}", args.nodes);
        r["recovery_ms"] = json!(recovery.as_secs_f64() * 1000.0);
        drop(server);
        results.push(r);
    }
    let out = json!({"secs_per_cell": args.secs, "results": results});
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&out)?)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    let _ = std::fs::remove_dir_all(tmp);
    Ok(())
}

//! The server-level figures: throughput and latency of single operations,
//! watch latency, fan-out, and the memory a loaded tree costs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use zookeeper_async::{Acl, CreateMode, ZooKeeper};

use crate::servers::{jvm_heap_used_mib, rss_mib, Kind, Server};

pub async fn connect(addr: &str) -> Result<ZooKeeper> {
    tokio::time::timeout(Duration::from_secs(30), ZooKeeper::connect(addr, Duration::from_secs(30), |_| {}))
        .await
        .context("connect timed out")?
        .map_err(|e| anyhow::anyhow!("connect to {addr}: {e:?}"))
}

/// A latency histogram in µs, from 1 µs to a minute.
pub fn histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    // Values past the top bound are clamped, not dropped.
    h.saturating_record(d.as_micros().max(1) as u64);
}

/// p50/p99/p999 in µs, as JSON fields.
pub fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999), "samples": h.len(),
    })
}

async fn create(zk: &ZooKeeper, path: &str, data: Vec<u8>, mode: CreateMode) -> Result<String> {
    zk.create(path, data, Acl::open_unsafe().clone(), mode).await.map_err(|e| anyhow::anyhow!("create {path}: {e:?}"))
}

#[derive(Clone, Copy, Debug)]
pub enum Op {
    Create,
    Set,
    Get,
    Exists,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Create, Op::Set, Op::Get, Op::Exists];

    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Set => "setData",
            Op::Get => "getData",
            Op::Exists => "exists",
        }
    }
}

/// Runs `op` for `secs` with `outstanding` requests in flight spread over
/// `conns` connections (zookeeper-async pipelines the requests of one
/// connection). Returns ops/s and latency percentiles.
pub async fn cell(addr: &str, base: &str, op: Op, outstanding: usize, conns: usize, secs: u64) -> Result<Value> {
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
                let mut h = histogram();
                let (mut n, mut failed) = (0u64, 0u64);
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
                        record(&mut h, t.elapsed());
                        n += 1;
                    } else {
                        failed += 1;
                    }
                }
                (n, failed, h)
            }));
        }
    }
    let started = Instant::now();
    let (mut total, mut failed) = (0u64, 0u64);
    let mut hist = histogram();
    for w in workers {
        let (n, f, h) = w.await?;
        total += n;
        failed += f;
        hist.add(h)?;
    }
    let elapsed = started.elapsed().as_secs_f64().max(secs as f64);
    for c in clients {
        let _ = c.close().await;
    }
    // A failed request would flatter the throughput figure: say so loudly.
    if failed > 0 {
        bail!("{} at {outstanding} outstanding over {conns} connections: {failed} requests failed", op.name());
    }
    let mut out = json!({
        "op": op.name(), "outstanding": outstanding, "connections": conns,
        "ops_per_sec": (total as f64 / elapsed).round(),
    });
    merge(&mut out, percentiles(&hist));
    Ok(out)
}

pub fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

/// setData on one session → NodeDataChanged at another, `n` times.
pub async fn watch_latency(addr: &str, base: &str, n: usize) -> Result<Value> {
    let (writer, watcher) = (connect(addr).await?, connect(addr).await?);
    let path = format!("{base}/w");
    create(&writer, &path, vec![], CreateMode::Persistent).await?;
    let mut h = histogram();
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
        record(&mut h, fired.duration_since(t));
    }
    let _ = writer.close().await;
    let _ = watcher.close().await;
    Ok(percentiles(&h))
}

/// Two fan-out figures over 50 sessions: one child change seen by every
/// session's child watch, and `watchers` exists-watches (one node each,
/// so each is its own server-side watch) fired by creating their nodes.
pub async fn fan_out(addr: &str, base: &str, watchers: usize) -> Result<Value> {
    let path = format!("{base}/fan");
    let writer = connect(addr).await?;
    create(&writer, &path, vec![], CreateMode::Persistent).await?;
    let sessions = 50;
    let mut clients = Vec::new();
    for _ in 0..sessions {
        clients.push(Arc::new(connect(addr).await?));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let per = watchers.div_ceil(sessions);
    let mut arm = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        for j in 0..per {
            let (c, tx, p) = (c.clone(), tx.clone(), format!("{path}/n{i}-{j}"));
            arm.push(async move {
                c.exists_w(&p, move |_| {
                    let _ = tx.send(Instant::now());
                })
                .await
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("exists_w {p}: {e:?}"))
            });
        }
    }
    for r in futures::stream::iter(arm).buffer_unordered(256).collect::<Vec<_>>().await {
        r?;
    }
    drop(tx);
    let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel();
    for c in &clients {
        let ptx = ptx.clone();
        c.get_children_w(&path, move |_| {
            let _ = ptx.send(Instant::now());
        })
        .await
        .map_err(|e| anyhow::anyhow!("get_children_w: {e:?}"))?;
    }
    let t = Instant::now();
    create(&writer, &format!("{path}/trigger"), vec![], CreateMode::Persistent).await?;
    let mut last = t;
    for _ in 0..sessions {
        let at = tokio::time::timeout(Duration::from_secs(30), prx.recv())
            .await
            .context("a child watch did not fire within 30 s")?
            .context("child watch channel closed")?;
        last = last.max(at);
    }
    let t2 = Instant::now();
    let creates = (0..sessions).flat_map(|i| (0..per).map(move |j| (i, j))).map(|(i, j)| {
        let (w, p) = (&writer, format!("{path}/n{i}-{j}"));
        async move { create(w, &p, vec![], CreateMode::Persistent).await }
    });
    for r in futures::stream::iter(creates).buffer_unordered(256).collect::<Vec<_>>().await {
        r?;
    }
    let mut last2 = t2;
    for _ in 0..per * sessions {
        let at = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .context("an exists watch did not fire within 30 s")?
            .context("exists watch channel closed")?;
        last2 = last2.max(at);
    }
    for c in clients {
        let _ = c.close().await;
    }
    let _ = writer.close().await;
    Ok(json!({
        "child_watch_sessions": sessions, "one_change_to_last_event_us": last.duration_since(t).as_micros() as u64,
        "watchers": per * sessions, "create_all_to_last_event_ms": last2.duration_since(t2).as_millis() as u64,
    }))
}

/// Creates `nodes` znodes of 100 bytes under `base`, 256 in flight.
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

/// On a fresh server: RSS empty, then after loading `nodes` znodes (and,
/// for the JVM, the live heap after a full GC, which is what the data
/// needs, as opposed to what the JVM keeps).
pub async fn memory(server: &Server, nodes: u64) -> Result<Value> {
    let zk = connect(&server.addr).await?;
    let rss_empty = rss_mib(server.pid)?;
    create(&zk, "/mem", vec![], CreateMode::Persistent).await?;
    let load_time = load(&server.addr, "/mem", nodes).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_mib(server.pid)?;
    let heap = if server.kind == Kind::ZooKeeper { jvm_heap_used_mib(server.pid) } else { None };
    eprintln!(
        "{:>11} loaded {nodes} znodes in {load_time:.1?}; RSS {rss:.0} MiB (empty {rss_empty:.0}){}",
        server.kind.name(),
        heap.map(|h| format!("; live heap {h:.0} MiB")).unwrap_or_default()
    );
    let _ = zk.close().await;
    Ok(json!({
        "nodes": nodes, "load_secs": load_time.as_secs_f64(), "rss_mib": rss, "rss_empty_mib": rss_empty,
        "jvm_live_heap_mib": heap,
    }))
}

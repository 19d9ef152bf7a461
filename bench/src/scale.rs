//! `zkbench scale`: how cost grows with sessions, watches, znodes and
//! offered load, the coordinator and Apache ZooKeeper side by side, with
//! the same raw client ([`crate::raw`]).
//!
//! Every point starts each server fresh (coordinator on 127.0.0.1:21830,
//! ZooKeeper on 21831, so nothing else on the machine collides with them),
//! measures, and stops it. The process's open-file limit is raised first
//! and the servers, started from here, inherit it: ten thousand sessions
//! are ten thousand sockets on each side.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use zk_wire::client::{Client, ConnectOptions};
use zk_wire::consts::{CreateMode, EventType};
use zk_wire::records::PathWatchRequest;
use zk_wire::{Request, Response};

use crate::ops::{histogram, percentiles, record};
use crate::raw::{self, create, set_data, Event, Session};
use crate::servers::{self, cpu_time, jvm_heap_used_mib, rss_mib, Kind, Server};

const COORDINATOR_PORT: u16 = 21830;
const ZOOKEEPER_PORT: u16 = 21831;
const ADMIN_PORT: u16 = 21832;

/// Session timeout asked for by the population of sessions: each pings
/// every 3.3 s, as a Java client with a 10 s session does.
const SESSION_MS: i32 = 10_000;

/// Sessions opened at once while a population is built.
const OPEN_CONCURRENCY: usize = 200;

pub const FAMILIES: [&str; 4] = ["sessions", "watches", "znodes", "overload"];

#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    /// Which families to run (default: all four, in this order).
    #[arg(value_parser = FAMILIES)]
    families: Vec<String>,
    /// Small points, to check the machinery in a minute or two.
    #[arg(long)]
    quick: bool,
    /// Results, merged into what is already there family by family; the
    /// plots (scale-<family>.png) go beside it.
    #[arg(long, default_value = "docs/bench/scale.json")]
    out: PathBuf,
    /// JVM heap for ZooKeeper in the sessions, watches and overload families.
    #[arg(long, default_value = "3g")]
    zk_heap: String,
    /// JVM heap for ZooKeeper in the znodes family (5M znodes need ~2.5 GiB live).
    #[arg(long, default_value = "10g")]
    zk_heap_znodes: String,
    /// Run only against this server.
    #[arg(long, value_parser = ["coordinator", "zookeeper"])]
    only: Option<String>,
    /// Measure nothing: redraw the plots and print the tables from `--out`.
    #[arg(long)]
    replot: bool,
    /// Keep the servers' data dirs and the coordinator's logs (which time
    /// recovery and every snapshot) instead of removing them.
    #[arg(long)]
    keep_data: bool,
}

fn kinds(args: &ScaleArgs) -> Vec<Kind> {
    [Kind::Coordinator, Kind::ZooKeeper]
        .into_iter()
        .filter(|k| args.only.as_deref().is_none_or(|o| o == k.name()))
        .collect()
}

fn port(kind: Kind) -> u16 {
    match kind {
        Kind::Coordinator => COORDINATOR_PORT,
        Kind::ZooKeeper => ZOOKEEPER_PORT,
    }
}

/// Raises RLIMIT_NOFILE for this process (and so for the servers it
/// starts): to 1M as root, else to the hard limit.
fn raise_fd_limit() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let want = 1 << 20;
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return Ok(want);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

async fn fresh(kind: Kind, tmp: &Path, name: &str, heap: &str, admin: bool) -> Result<(Server, PathBuf)> {
    let dir = tmp.join(format!("{}-{name}", kind.name()));
    let _ = std::fs::remove_dir_all(&dir);
    let admin = (admin && kind == Kind::Coordinator).then_some(ADMIN_PORT);
    let (server, _) = servers::start_with(kind, &dir, port(kind), heap, admin).await?;
    Ok((server, dir))
}

/// Opens `n` sessions, `OPEN_CONCURRENCY` at a time.
async fn open_many(addr: &str, n: usize, events: Option<mpsc::UnboundedSender<Event>>) -> Result<Vec<Session>> {
    futures::stream::iter(0..n)
        .map(|_| Session::open(addr, SESSION_MS, events.clone()))
        .buffer_unordered(OPEN_CONCURRENCY)
        .try_collect()
        .await
}

/// `a - b` in ms, negative when `b` is later.
fn signed_ms(a: Instant, b: Instant) -> f64 {
    if a >= b {
        ms(a - b)
    } else {
        -ms(b - a)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A four-letter word: the time from connecting to the server closing the
/// connection after its answer, and the answer.
async fn four_letter(addr: &str, word: &str) -> Result<(Duration, String)> {
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(word.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut out)).await.context("4lw timed out")??;
    Ok((t.elapsed(), String::from_utf8_lossy(&out).into_owned()))
}

/// One number from `mntr` (`zk_<key>\t<value>` lines).
pub(crate) async fn mntr(addr: &str, key: &str) -> Result<Option<f64>> {
    let (_, text) = four_letter(addr, "mntr").await?;
    Ok(text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('\t')?.trim().parse().ok()))
}

/// Waits for `n` events matching `want`; the first and last arrival.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    n: usize,
    within: Duration,
    want: impl Fn(&Event) -> bool,
) -> Result<(Instant, Instant)> {
    let deadline = Instant::now() + within;
    let (mut first, mut last, mut got) = (None, None, 0);
    while got < n {
        let e = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| anyhow!("{got} of {n} watch events within {within:?}"))?
            .context("event channel closed")?;
        if want(&e) {
            got += 1;
            first.get_or_insert(e.at);
            last = Some(e.at);
        }
    }
    let (first, last) = (first.unwrap_or_else(Instant::now), last.unwrap_or_else(Instant::now));
    Ok((first, last))
}

/// The JVM's live heap (ZooKeeper only), for per-item memory independent
/// of how far the JVM has grown its heap.
fn live_heap(server: &Server) -> Option<f64> {
    (server.kind == Kind::ZooKeeper).then(|| jvm_heap_used_mib(server.pid)).flatten()
}

// ---------------------------------------------------------------- sessions

async fn sessions_point(kind: Kind, n: usize, quick: bool, tmp: &Path, heap: &str) -> Result<Value> {
    let (server, _dir) = fresh(kind, tmp, &format!("sessions-{n}"), heap, false).await?;
    let addr = server.addr.clone();
    let name = kind.name();
    let setup = Session::open(&addr, 30_000, None).await?;
    setup.ok(create("/eph", b"", CreateMode::Persistent)).await?;
    setup.ok(create("/probe", &[b'p'; 1024], CreateMode::Persistent)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss0, heap0) = (rss_mib(server.pid)?, live_heap(&server));

    let t = Instant::now();
    let sessions = open_many(&addr, n, None).await?;
    let ramp = t.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, heap1) = (rss_mib(server.pid)?, live_heap(&server));
    eprintln!("{name:>11} {n} sessions opened in {ramp:.1?}; RSS {rss0:.0} → {rss:.0} MiB");

    // Idle: the sessions only ping.
    let window = Duration::from_secs(if quick { 3 } else { 10 });
    let (c0, t0) = (cpu_time(server.pid)?, Instant::now());
    tokio::time::sleep(window).await;
    let cpu = (cpu_time(server.pid)? - c0).as_secs_f64() / t0.elapsed().as_secs_f64();

    // One more client's getData latency, one request at a time, meanwhile.
    let mut probe = Client::connect(&addr, ConnectOptions::default()).await.map_err(|e| anyhow!("{e}"))?;
    let get = Request::GetData(PathWatchRequest { path: "/probe".into(), watch: false });
    let mut h = histogram();
    let until = Instant::now() + Duration::from_secs(if quick { 2 } else { 5 });
    while Instant::now() < until {
        let t = Instant::now();
        let r = probe.call(&get).await.map_err(|e| anyhow!("getData: {e}"))?;
        if r.err != 0 {
            bail!("getData /probe: error {}", r.err);
        }
        record(&mut h, t.elapsed());
    }
    let _ = probe.call(&Request::CloseSession).await;
    let get_lat = percentiles(&h);

    // Connect storm: 1,000 more sessions at once. Each connect is timed
    // too: a SYN the listen queue drops is retried by the kernel after 1 s,
    // then 2, 4..., which shows in the slow tail, and in the kernel's count
    // of accept-queue overflows.
    let storm_n = 1000;
    let overflows0 = listen_overflows();
    let t = Instant::now();
    let storm = futures::future::join_all((0..storm_n).map(|_| async {
        let t = Instant::now();
        Session::open(&addr, SESSION_MS, None).await.map(|s| (s, t.elapsed()))
    }))
    .await;
    let storm_time = t.elapsed();
    let overflows = listen_overflows().zip(overflows0).map(|(b, a)| b - a);
    let storm_failed = storm.iter().filter(|s| s.is_err()).count();
    let mut storm_h = histogram();
    let storm_slow = storm.iter().flatten().filter(|(_, d)| *d > Duration::from_millis(900)).count();
    let mut storm_sessions = Vec::new();
    for (s, d) in storm.into_iter().flatten() {
        record(&mut storm_h, d);
        storm_sessions.push(s);
    }
    futures::future::join_all(storm_sessions.into_iter().map(Session::close)).await;
    eprintln!(
        "{name:>11} idle CPU {:.1}%, getData {get_lat}, storm {storm_time:.1?} ({storm_failed} failed, {storm_slow} over 0.9 s, {overflows:?} listen overflows)",
        cpu * 100.0
    );

    // Expiry: every session owns one ephemeral, an observer watches them
    // all; the sockets are dropped without closeSession.
    futures::stream::iter(sessions.iter().enumerate())
        .map(|(i, s)| s.ok(create(&format!("/eph/s{i}"), b"", CreateMode::Ephemeral)))
        .buffer_unordered(256)
        .try_collect::<Vec<_>>()
        .await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let observer = Session::open(&addr, 30_000, Some(tx)).await?;
    let watches = (0..n).map(|i| Request::Exists(PathWatchRequest { path: format!("/eph/s{i}"), watch: true }));
    for r in observer.batch(watches.collect()).await? {
        if r.err != 0 {
            bail!("exists watch: error {}", r.err);
        }
    }
    let killed = Instant::now();
    // The last session the server heard from sets the last deadline.
    let last_heard = sessions.into_iter().map(Session::kill).max().unwrap_or(killed);
    let deleted = EventType::NodeDeleted.as_i32();
    let (first, last) =
        collect(&mut rx, n, Duration::from_millis(SESSION_MS as u64) * 3 + Duration::from_secs(60), |e| {
            e.event_type == deleted && e.path.starts_with("/eph/")
        })
        .await
        .context("expiry")?;
    let left =
        match observer.ok(Request::GetChildren(PathWatchRequest { path: "/eph".into(), watch: false })).await?.body {
            Response::Children(c) => c.children.len(),
            other => bail!("getChildren /eph answered {other:?}"),
        };
    if left != 0 {
        bail!("{left} ephemerals left after every deletion event arrived");
    }
    eprintln!(
        "{name:>11} expiry: kill → last event {:.0} ms, first → last {:.0} ms, last deadline → last event {:.0} ms",
        ms(last - killed),
        ms(last - first),
        signed_ms(last, last_heard + Duration::from_millis(SESSION_MS as u64))
    );
    observer.close().await;
    setup.close().await;
    drop(server);
    Ok(json!({
        "sessions": n, "open_secs": ramp.as_secs_f64(),
        "rss_empty_mib": rss0, "rss_mib": rss, "rss_per_session_kib": (rss - rss0) * 1024.0 / n as f64,
        // The coordinator's RSS is its live data, for the comparison.
        "live_heap_per_session_kib": heap0.zip(heap1).map(|(a, b)| b - a).or(Some(rss - rss0)).map(|d| d * 1024.0 / n as f64),
        "idle_cpu_pct": cpu * 100.0, "idle_window_secs": window.as_secs_f64(),
        "get_data": get_lat,
        "storm_sessions": storm_n, "storm_ms": ms(storm_time), "storm_failed": storm_failed,
        "storm_each": percentiles(&storm_h), "storm_over_900ms": storm_slow, "storm_listen_overflows": overflows,
        "expiry_kill_to_last_ms": ms(last - killed), "expiry_first_to_last_ms": ms(last - first),
        "expiry_kill_to_first_ms": ms(first - killed),
        // From the last session's deadline (its last write + the timeout,
        // before the server's rounding) to the last event: the server's
        // rounding plus the work of expiring them all.
        "expiry_last_deadline_to_last_ms": signed_ms(last, last_heard + Duration::from_millis(SESSION_MS as u64)),
    }))
}

/// The kernel's count of connections dropped because a listen queue was
/// full (TcpExt ListenOverflows, for the whole network namespace).
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

// ----------------------------------------------------------------- watches

async fn watches_point(kind: Kind, n: usize, per: usize, tmp: &Path, heap: &str) -> Result<Value> {
    let total = n * per;
    let (server, _dir) = fresh(kind, tmp, &format!("watches-{total}"), heap, false).await?;
    let addr = server.addr.clone();
    let name = kind.name();
    let setup = Session::open(&addr, 30_000, None).await?;
    for p in ["/w", "/w/one", "/w/hundred", "/w/all"] {
        setup.ok(create(p, b"", CreateMode::Persistent)).await?;
    }
    // As many spread nodes as sessions: each ends up with about `per`
    // watchers, like the three measured ones but for the hot one.
    raw::pipelined(&addr, 4, 256, n, |j| create(&format!("/w/n{j}"), b"v", CreateMode::Persistent)).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sessions = open_many(&addr, n, Some(tx)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss0, heap0) = (rss_mib(server.pid)?, live_heap(&server));

    let t = Instant::now();
    let arm = sessions.iter().enumerate().map(|(i, s)| {
        let mut paths = vec!["/w/all".to_string()];
        if i == 0 {
            paths.push("/w/one".into());
        }
        if i < 100 {
            paths.push("/w/hundred".into());
        }
        let spread = per.saturating_sub(paths.len());
        paths.extend((0..spread).map(|j| format!("/w/n{}", (i * spread + j) % n)));
        let reqs = paths.into_iter().map(|path| Request::GetData(PathWatchRequest { path, watch: true })).collect();
        s.batch(reqs)
    });
    let replies: Vec<_> = futures::stream::iter(arm).buffer_unordered(64).try_collect().await?;
    let arm_time = t.elapsed();
    let armed: usize = replies.iter().map(Vec::len).sum();
    if let Some(bad) = replies.iter().flatten().find(|r| r.err != 0) {
        bail!("getData with a watch: error {}", bad.err);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, heap1) = (rss_mib(server.pid)?, live_heap(&server));
    let (wchs, wchs_text) = four_letter(&addr, "wchs").await?;
    eprintln!(
        "{name:>11} {armed} watches over {n} sessions set in {arm_time:.1?}; RSS {rss0:.0} → {rss:.0} MiB; wchs {wchs:.1?}"
    );

    let changed = EventType::NodeDataChanged.as_i32();
    let mut fan = Vec::new();
    for (path, watchers) in [("/w/one", 1), ("/w/hundred", n.min(100)), ("/w/all", n)] {
        while rx.try_recv().is_ok() {}
        let t = Instant::now();
        setup.ok(set_data(path, b"changed")).await?;
        let reply = t.elapsed();
        let (_, last) =
            collect(&mut rx, watchers, Duration::from_secs(120), |e| e.event_type == changed && e.path == path)
                .await
                .with_context(|| format!("fan-out of {path}"))?;
        let last_from_send = last - t;
        eprintln!("{name:>11} setData {path}: reply {reply:.1?}, last of {watchers} events {last_from_send:.1?}");
        fan.push(json!({
            "watchers": watchers, "reply_ms": ms(reply), "last_event_ms": ms(last_from_send),
            "last_event_after_reply_ms": ms(last_from_send) - ms(reply),
        }));
    }
    for s in sessions {
        s.kill();
    }
    setup.close().await;
    drop(server);
    Ok(json!({
        "sessions": n, "watches": armed, "arm_secs": arm_time.as_secs_f64(),
        "rss_before_mib": rss0, "rss_mib": rss, "rss_per_watch_bytes": (rss - rss0) * 1048576.0 / armed as f64,
        "live_heap_per_watch_bytes": heap0.zip(heap1).map(|(a, b)| b - a).or(Some(rss - rss0)).map(|d| d * 1048576.0 / armed as f64),
        "wchs_ms": ms(wchs), "wchs": wchs_text, "fan_out": fan,
    }))
}

// ------------------------------------------------------------------ znodes

/// Children per parent: the getChildren figure reads one full parent.
const PER_PARENT: usize = 100_000;

async fn trigger_snapshot() -> Result<()> {
    use admin_api::admin_client::AdminClient;
    use admin_api::TriggerSnapshotRequest;
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{ADMIN_PORT}"))?.connect().await?;
    let token: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {}", servers::ADMIN_TOKEN).parse()?;
    let mut api = AdminClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", token.clone());
        Ok(req)
    });
    api.trigger_snapshot(TriggerSnapshotRequest {}).await?;
    Ok(())
}

/// The newest snapshot file under `dir` (searched two levels down), by
/// modification time, and its size.
fn newest_snapshot(dir: &Path) -> Option<u64> {
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let (p, md) = (e.path(), e.metadata().ok()?);
            if md.is_dir() && depth < 2 {
                stack.push((p, depth + 1));
            } else if p.file_name()?.to_string_lossy().starts_with("snapshot.") {
                found.push((md.modified().ok()?, md.len()));
            }
        }
    }
    found.into_iter().max().map(|(_, len)| len)
}

async fn get_children_latency(addr: &str, path: &str, times: usize) -> Result<(Value, usize)> {
    let mut c =
        Client::connect(addr, ConnectOptions { io_timeout: Duration::from_secs(60), ..ConnectOptions::default() })
            .await
            .map_err(|e| anyhow!("{e}"))?;
    let req = Request::GetChildren(PathWatchRequest { path: path.into(), watch: false });
    let (mut h, mut count) = (histogram(), 0);
    for _ in 0..times {
        let t = Instant::now();
        let r = c.call(&req).await.map_err(|e| anyhow!("getChildren {path}: {e}"))?;
        record(&mut h, t.elapsed());
        count = match r.body {
            Response::Children(c) => c.children.len(),
            other => bail!("getChildren {path}: error {} {other:?}", r.err),
        };
    }
    let _ = c.call(&Request::CloseSession).await;
    let mut v = percentiles(&h);
    v["max_us"] = json!(h.max());
    Ok((v, count))
}

async fn znodes_point(kind: Kind, nodes: usize, tmp: &Path, heap: &str, keep: bool) -> Result<Value> {
    let name = kind.name();
    let (server, dir) = fresh(kind, tmp, &format!("znodes-{nodes}"), heap, true).await?;
    let addr = server.addr.clone();
    let rss0 = rss_mib(server.pid)?;
    let parents = nodes.div_ceil(PER_PARENT);
    let mut setup = Client::connect(&addr, ConnectOptions::default()).await.map_err(|e| anyhow!("{e}"))?;
    for p in std::iter::once("/z".to_string()).chain((0..parents).map(|j| format!("/z/p{j}"))) {
        let r = setup.call(&create(&p, b"", CreateMode::Persistent)).await.map_err(|e| anyhow!("{e}"))?;
        if r.err != 0 {
            bail!("create {p}: error {}", r.err);
        }
    }
    let _ = setup.call(&Request::CloseSession).await;
    // 16 connections × 64 in flight: as fast as either server loads.
    let data = vec![b'd'; 100];
    let load = raw::pipelined(&addr, 16, 64, nodes, move |i| {
        create(&format!("/z/p{}/n{}", i / PER_PARENT, i % PER_PARENT), &data, CreateMode::Persistent)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_mib(server.pid)?;
    let heap_live = live_heap(&server);
    eprintln!("{name:>11} loaded {nodes} znodes in {load:.1?}; RSS {rss:.0} MiB");
    let (children, count) = get_children_latency(&addr, "/z/p0", if nodes >= 1_000_000 { 10 } else { 20 }).await?;
    eprintln!("{name:>11} getChildren of {count} children: {children}");

    // The coordinator snapshots on request; ZooKeeper 3.8 cannot be asked,
    // but snapshots its whole tree as it starts, before it answers, and
    // `mntr` then has that one snapshot's time.
    let mut snapshot_ms = None;
    if kind == Kind::Coordinator {
        let t = Instant::now();
        trigger_snapshot().await.context("TriggerSnapshot")?;
        snapshot_ms = Some(ms(t.elapsed()));
    }
    let mut snapshot_bytes = newest_snapshot(&dir);
    drop(server);
    let (server, recovery) = servers::start_with(kind, &dir, port(kind), heap, None).await?;
    let rss_recovered = rss_mib(server.pid)?;
    if kind == Kind::ZooKeeper {
        snapshot_ms = mntr(&server.addr, "zk_max_snapshottime").await?;
        snapshot_bytes = newest_snapshot(&dir);
    }
    eprintln!(
        "{name:>11} snapshot {snapshot_ms:?} ms, {snapshot_bytes:?} B; recovered in {recovery:.1?}, RSS {rss_recovered:.0} MiB"
    );
    drop(server);
    if !keep {
        // Up to a GiB each: the next point needs the room.
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(json!({
        "znodes": nodes, "load_secs": load.as_secs_f64(), "rss_empty_mib": rss0, "rss_mib": rss,
        "rss_per_znode_bytes": (rss - rss0) * 1048576.0 / nodes as f64, "jvm_live_heap_mib": heap_live.or(Some(rss)),
        "snapshot_ms": snapshot_ms, "snapshot_bytes": snapshot_bytes,
        "recovery_ms": ms(recovery), "rss_recovered_mib": rss_recovered,
        "get_children": children, "children": count,
    }))
}

// ---------------------------------------------------------------- overload

/// RSS every 200 ms until stopped: (seconds since `t0`, MiB).
fn sample_rss(pid: u32, t0: Instant, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<(f64, f64)>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(r) = rss_mib(pid) {
                out.push((t0.elapsed().as_secs_f64(), r));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        out
    })
}

async fn overload_server(kind: Kind, quick: bool, tmp: &Path, heap: &str) -> Result<Value> {
    let name = kind.name();
    let (server, _dir) = fresh(kind, tmp, "overload", heap, false).await?;
    let addr = server.addr.clone();
    let conns = 64;
    raw::pipelined(&addr, 1, 64, conns + 1, |i| match i {
        0 => create("/o", b"", CreateMode::Persistent),
        i => create(&format!("/o/c{}", i - 1), &[b'o'; 1024], CreateMode::Persistent),
    })
    .await?;
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(server.pid, t0, stop.clone());
    let secs = if quick { 4.0 } else { 15.0 };
    let mut stages = Vec::new();
    let mut capacity: f64 = 0.0;
    // Closed loops at 256 in flight (16 × 16) and 2,048 (64 × 32): the
    // better of the two is what the server sustains. Then open-loop at
    // twice that over 64 connections, each willing to queue 20,000.
    for (stage, conns, window, rate_factor) in
        [("closed-256", 16, 16, None), ("closed-2048", 64, 32, None), ("open-2x", 64, 20_000, Some(2.0))]
    {
        let from = t0.elapsed().as_secs_f64();
        let rate = rate_factor.map(|f: f64| f * capacity / conns as f64);
        let d = raw::drive(&addr, "/o", conns, window, rate, 1024, secs).await?;
        let throughput = d.ops as f64 / d.elapsed.as_secs_f64();
        capacity = capacity.max(throughput);
        let to = t0.elapsed().as_secs_f64();
        let mut v = json!({
            "stage": stage, "connections": conns, "window": window,
            "offered_per_sec": rate.map(|r| r * conns as f64),
            "ops_per_sec": throughput, "ops": d.ops,
            "sent_per_sec": (d.ops + d.errors + d.unanswered) as f64 / secs, "errors": d.errors, "disconnected": d.disconnected,
            "unanswered": d.unanswered, "peak_in_flight": d.peak_in_flight, "secs": d.elapsed.as_secs_f64(),
            "from_s": from, "to_s": to, "rss_end_mib": rss_mib(server.pid).ok(),
        });
        crate::ops::merge(&mut v, percentiles(&d.latency));
        eprintln!("{name:>11} overload {v}");
        stages.push(v);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = rss_mib(server.pid)?;
    stop.store(true, Ordering::Relaxed);
    let series = sampler.await?;
    for s in &mut stages {
        let (from, to) = (s["from_s"].as_f64().unwrap_or(0.0), s["to_s"].as_f64().unwrap_or(0.0));
        let peak = series.iter().filter(|(t, _)| *t >= from && *t <= to).map(|(_, r)| *r).fold(0.0, f64::max);
        s["rss_peak_mib"] = json!(peak);
    }
    drop(server);
    Ok(json!({ "stages": stages, "rss_after_5s_mib": rss_after, "rss_series": series }))
}

// ------------------------------------------------------------------ driver

pub async fn run(args: ScaleArgs) -> Result<()> {
    let mut saved: Value = std::fs::read_to_string(&args.out)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({}));
    if !args.replot {
        let limit = raise_fd_limit()?;
        eprintln!("open files limit {limit} (inherited by the servers)");
        let families: Vec<String> = if args.families.is_empty() {
            FAMILIES.iter().map(|s| s.to_string()).collect()
        } else {
            args.families.clone()
        };
        let tmp = std::env::temp_dir().join(format!("zkbench-scale-{}", std::process::id()));
        for family in &families {
            let started = Instant::now();
            let v = family_run(family, &args, &tmp).await.with_context(|| family.clone())?;
            eprintln!("{family}: {:.0} s", started.elapsed().as_secs_f64());
            saved[family.as_str()] = v;
            saved[family.as_str()]["wall_secs"] = json!(started.elapsed().as_secs_f64());
            saved[family.as_str()]["quick"] = json!(args.quick);
            crate::save_json(&args.out, &saved)?;
        }
        crate::drop_scratch(&tmp, args.keep_data);
    }
    let dir = args.out.parent().unwrap_or(Path::new("."));
    crate::plot::scale(&saved, dir)?;
    println!("{}", crate::report::scale_markdown(&saved));
    Ok(())
}

/// One family's points, each server in turn at each point.
async fn family_run(family: &str, args: &ScaleArgs, tmp: &Path) -> Result<Value> {
    let q = args.quick;
    let mut points = Vec::new();
    match family {
        "sessions" => {
            for n in if q { vec![200, 1000] } else { vec![1000, 5000, 10_000] } {
                let mut p = json!({"sessions": n});
                for kind in kinds(args) {
                    p[kind.name()] =
                        sessions_point(kind, n, q, tmp, &args.zk_heap).await.with_context(|| kind.name())?;
                }
                points.push(p);
            }
        }
        "watches" => {
            let n = if q { 1000 } else { 10_000 };
            for per in if q { vec![10, 50] } else { vec![10, 100] } {
                let mut p = json!({"watches": n * per, "sessions": n});
                for kind in kinds(args) {
                    p[kind.name()] =
                        watches_point(kind, n, per, tmp, &args.zk_heap).await.with_context(|| kind.name())?;
                }
                points.push(p);
            }
        }
        "znodes" => {
            for nodes in if q { vec![20_000, 200_000] } else { vec![100_000, 1_000_000, 5_000_000] } {
                let mut p = json!({"znodes": nodes});
                for kind in kinds(args) {
                    p[kind.name()] = znodes_point(kind, nodes, tmp, &args.zk_heap_znodes, args.keep_data)
                        .await
                        .with_context(|| kind.name())?;
                }
                points.push(p);
            }
        }
        "overload" => {
            let mut p = json!({});
            for kind in kinds(args) {
                p[kind.name()] = overload_server(kind, q, tmp, &args.zk_heap).await.with_context(|| kind.name())?;
            }
            points.push(p);
        }
        other => bail!("unknown family {other}"),
    }
    Ok(json!({ "points": points }))
}

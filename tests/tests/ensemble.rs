//! The services on a 3-node Apache ZooKeeper ensemble, through the faults an
//! ensemble exists to absorb: its leader killed -9 mid-stream, a follower
//! killed and restarted. A fault that heals within a caller's deadline must
//! cost latency only: no failed request, nothing lost, nothing applied
//! twice, never two holders of a lock or two actives.
//!
//! Each test starts its own ensemble (tests/src/ensemble.rs) and stops it
//! at the end; they run one at a time. Each prints its figures (failed
//! requests, added latency, time to recover); docs/faults.md records them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_tests::ensemble::{Ensemble, Mode};
use e2e_tests::stream::{percentile, submit_stream, Stream};
use e2e_tests::{entity_value, start_ha_worker, start_system_a, start_system_b, Proc, TempDir};
use zk_recipes::session::Client;

const SESSION_MS: u64 = 6000;

async fn client(zk: &str) -> Client {
    Client::connect(zk, Duration::from_millis(SESSION_MS), Duration::from_secs(20)).await.expect("connect")
}

async fn set_config(c: &Client, path: &str, body: &str) {
    let set = async {
        zk_recipes::ensure_path(&c.zk, path).await.expect("config node");
        c.zk.set_data(path, body.as_bytes().to_vec(), None).await.expect("set config");
    };
    tokio::time::timeout(Duration::from_secs(10), set).await.expect("config set in time");
}

/// The task pipeline on a fresh ensemble of its own: two system-b (5 ms
/// of work a task) and system-a, with a stream of submits from 4 clients
/// running until [`Pipeline::stop_stream`].
struct Pipeline {
    // Fields drop in order: the services stop before the ensemble under
    // them, and the scratch directory goes last.
    _a: Proc,
    _bs: [Proc; 2],
    // A session of its own open throughout, as a client of the ensemble.
    _c: Client,
    stop: Arc<AtomicBool>,
    stream: Option<tokio::task::JoinHandle<Stream>>,
    root: String,
    store: PathBuf,
    ens: Ensemble,
    _dir: TempDir,
}

impl Pipeline {
    async fn start(dir_prefix: &str, root_prefix: &str) -> Pipeline {
        let dir = TempDir::new(dir_prefix);
        let ens = tokio::task::block_in_place(|| Ensemble::start(dir.path()));
        let zk = ens.connect_string();
        let root = format!("/{}", testkit::unique(root_prefix));
        let queue = testkit::broker::queue_name("tasks");
        let store = dir.path().join("store");
        let c = client(&zk).await;
        set_config(&c, &format!("{root}/config/system-b"), r#"{"work_ms":5}"#).await;
        let bs = ["b1", "b2"].map(|b| start_system_b(&zk, &root, &queue, &store, b, SESSION_MS, dir.path()));
        let (a, a_addr) = start_system_a(&zk, &root, &queue, dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        let stream = Some(tokio::spawn(submit_stream(a_addr, 4, stop.clone())));
        Pipeline { _a: a, _bs: bs, _c: c, stop, stream, root, store, ens, _dir: dir }
    }

    /// Ends the stream of submits; what it saw.
    async fn stop_stream(&mut self) -> Stream {
        self.stop.store(true, Ordering::Relaxed);
        let stream = self.stream.take().expect("the stream runs");
        tokio::time::timeout(Duration::from_secs(60), stream).await.expect("in time").expect("stream")
    }

    /// No submit of `s` failed, and each entity's value is its count of
    /// successful submits: nothing lost, nothing applied twice.
    fn assert_exactly_once(&self, s: &Stream, during: &str) {
        assert!(
            s.failed.is_empty(),
            "{} submits failed {during}, first: {:?}",
            s.failed.len(),
            s.failed.iter().take(3).collect::<Vec<_>>()
        );
        for (entity, ok) in &s.per_entity {
            assert_eq!(entity_value(&self.store, entity), *ok, "{entity}: a task was lost or applied twice");
        }
    }
}

/// A task stream (system-a, two system-b, RabbitMQ) while the ensemble's
/// leader is killed -9: every submit succeeds, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_stream_survives_leader_kill() {
    let mut p = Pipeline::start("ens-stream", "ens").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = p.ens.leader();
    let killed = Instant::now();
    p.ens.kill9(leader);
    let (new_leader, election) = tokio::task::block_in_place(|| p.ens.wait_leader(Duration::from_secs(30)));
    // Keep submitting a while after the election: the sessions' recovery.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = p.stop_stream().await;
    let since_kill = killed.elapsed();

    println!(
        "ensemble leader zk{} killed: zk{} leads after {election:?}; {} submits ok, {} failed, latency p50 {:?} \
         p99 {:?} max {:?} (over {since_kill:?} since the kill)",
        leader + 1,
        new_leader + 1,
        s.ok(),
        s.failed.len(),
        percentile(&s.sorted_latencies(), 0.5),
        percentile(&s.sorted_latencies(), 0.99),
        s.sorted_latencies().last().copied().unwrap_or_default(),
    );
    p.assert_exactly_once(&s, "through the election");
    assert!(s.ok() > 20, "too few submits to mean anything: {}", s.ok());
}

/// The lock recipe, four sessions contending for one lock, while the
/// ensemble's leader is killed -9: never two holders at once, each holder's
/// fencing token larger than the last, and the protected counter exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_survives_leader_kill() {
    let dir = TempDir::new("ens-lock");
    let mut ens = tokio::task::block_in_place(|| Ensemble::start(dir.path()));
    let zk = ens.connect_string();
    let lock_dir = format!("/{}/locks/entity", testkit::unique("enslock"));

    let stop = Arc::new(AtomicBool::new(false));
    let holder = Arc::new(AtomicUsize::new(0));
    // The protected resource: a counter and the last token it accepted.
    let resource = Arc::new(parking_lot::Mutex::new((0i64, 0i64)));
    let mut workers = Vec::new();
    for w in 1..=4usize {
        let c = client(&zk).await;
        let (stop, holder, resource, lock_dir) = (stop.clone(), holder.clone(), resource.clone(), lock_dir.clone());
        workers.push(tokio::spawn(async move {
            let lock = zk_recipes::lock::Lock::new(&c, lock_dir);
            let (mut held, mut errors, mut waits) = (0i64, Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let guard = match lock.acquire(&format!("w{w}"), Duration::from_secs(20)).await {
                    Ok(g) => g,
                    Err(e) => {
                        errors.push(e.to_string());
                        continue;
                    }
                };
                waits.push(t.elapsed());
                assert_eq!(holder.swap(w, Ordering::SeqCst), 0, "two holders at once");
                let token = guard.token();
                let before = {
                    let r = resource.lock();
                    assert!(token > r.1, "token {token} after token {}: not increasing", r.1);
                    r.0
                };
                // Read, work, write: the window a second holder would break.
                tokio::time::sleep(Duration::from_millis(5)).await;
                {
                    let mut r = resource.lock();
                    assert_eq!(r.0, before, "the counter moved under our lock");
                    *r = (before + 1, token);
                }
                held += 1;
                assert_eq!(holder.swap(0, Ordering::SeqCst), w);
                guard.release().await;
            }
            (held, errors, waits)
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = ens.leader();
    let killed = Instant::now();
    ens.kill9(leader);
    let (_, election) = tokio::task::block_in_place(|| ens.wait_leader(Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut held, mut errors, mut waits) = (0, Vec::new(), Vec::new());
    for w in workers {
        let (h, e, l) = tokio::time::timeout(Duration::from_secs(60), w).await.expect("in time").expect("worker");
        held += h;
        errors.extend(e);
        waits.extend(l);
    }
    waits.sort();
    let count = resource.lock().0;
    println!(
        "lock, leader killed: election {election:?}; {held} holdings, {} failed acquisitions, wait p99 {:?} max {:?} \
         ({:?} since the kill)",
        errors.len(),
        percentile(&waits, 0.99),
        waits.last().copied().unwrap_or_default(),
        killed.elapsed()
    );
    assert_eq!(count, held, "the counter is not exact");
    assert!(held > 20, "too few holdings: {held}");
    assert!(errors.is_empty(), "acquisitions failed through the election: {errors:?}");
}

/// Journal records as (term token, instance); none yet is an empty list.
fn journal(path: &Path) -> Vec<(zk_recipes::fencing::Token, String)> {
    match ha_worker::journal::read_entries(path) {
        Ok(entries) => entries.into_iter().map(|e| (e.token, e.instance)).collect(),
        Err(ha_worker::journal::JournalError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => panic!("the journal cannot be read: {e}"),
    }
}

/// The ha pair while the ensemble's leader is killed -9: the active steps
/// down when its connection drops, one of the two is active again after the
/// election, never two at once (the journal never interleaves terms), and
/// the journal continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_pair_survives_leader_kill() {
    let dir = TempDir::new("ens-ha");
    let mut ens = tokio::task::block_in_place(|| Ensemble::start(dir.path()));
    let zk = ens.connect_string();
    let root = format!("/{}", testkit::unique("ensha"));
    let path = dir.path().join("journal");
    let mut w1 = start_ha_worker(&zk, &root, &path, "w1", 50, SESSION_MS, dir.path());
    w1.wait_line("ha-worker active", Duration::from_secs(20));
    let mut w2 = start_ha_worker(&zk, &root, &path, "w2", 50, SESSION_MS, dir.path());
    w2.wait_line("ha-worker standby", Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = journal(&path).len();
    let leader = ens.leader();
    let killed = Instant::now();
    ens.kill9(leader);
    let (_, election) = tokio::task::block_in_place(|| ens.wait_leader(Duration::from_secs(30)));
    // Someone is active again and writing.
    let resumed = loop {
        let n = journal(&path).len();
        if n > before + 5 {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "the journal stopped after the leader's death");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop((w1, w2));
    let entries = journal(&path);
    println!(
        "ha pair, ensemble leader killed: election {election:?}; journal writing again {resumed:?} after the kill; \
         {} lines, terms {:?}",
        entries.len(),
        entries.iter().map(|e| e.0).collect::<std::collections::BTreeSet<_>>()
    );
    for w in entries.windows(2) {
        assert!(w[0].0 <= w[1].0, "an older term wrote after a newer one: {:?} then {:?}", w[0], w[1]);
        if w[0].0 == w[1].0 {
            assert_eq!(w[0].1, w[1].1, "two instances wrote under one term: two actives");
        }
    }
}

/// A config change written while the ensemble elects a new leader (the
/// write itself retried until there is one): every instance converges on
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_change_during_election_reaches_every_instance() {
    let dir = TempDir::new("ens-config");
    let mut ens = tokio::task::block_in_place(|| Ensemble::start(dir.path()));
    let zk = ens.connect_string();
    let root = format!("/{}", testkit::unique("enscfg"));
    let queue = testkit::broker::queue_name("tasks");
    let store = dir.path().join("store");
    let c = client(&zk).await;
    let node = format!("{root}/config/system-b");
    set_config(&c, &node, r#"{"work_ms":1}"#).await;
    // Each applies the first value before it says it is ready.
    let mut bs: Vec<Proc> =
        (1..=3).map(|i| start_system_b(&zk, &root, &queue, &store, &format!("b{i}"), SESSION_MS, dir.path())).collect();

    let leader = ens.leader();
    let killed = Instant::now();
    ens.kill9(leader);
    let written = zk_recipes::retry::retry_for(Duration::from_secs(20), |_| {
        c.zk.set_data(&node, br#"{"work_ms":7}"#.to_vec(), None)
    })
    .await;
    written.expect("the config write, retried through the election");
    let write_took = killed.elapsed();
    for b in bs.iter_mut() {
        b.wait_line(r#"config applied {"work_ms":7}"#, Duration::from_secs(15));
    }
    println!(
        "config change during the election: written {write_took:?} after the leader's death, applied by all 3 \
         instances {:?} after it",
        killed.elapsed()
    );
}

/// A follower killed -9 mid-stream and restarted 3 s later: no submit
/// fails, and the restarted member catches up with everything written
/// while it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_killed_and_restarted() {
    let mut p = Pipeline::start("ens-follower", "ensfol").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = p.ens.leader();
    let follower = (leader + 1) % 3;
    assert_eq!(p.ens.mode(follower), Mode::Follower);
    p.ens.kill9(follower);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = Instant::now();
    p.ens.restart(follower);
    let serving = tokio::task::block_in_place(|| p.ens.wait_serving(follower, Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = p.stop_stream().await;

    // The restarted member has everything: the task nodes, read through it
    // alone, match those read through the leader.
    let tasks = format!("{}/tasks", p.root);
    let through = |addr: String| {
        let tasks = tasks.clone();
        async move {
            let c = client(&addr).await;
            let n = tokio::time::timeout(Duration::from_secs(10), c.zk.get_children(&tasks, false))
                .await
                .expect("in time")
                .expect("tasks")
                .len();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.zk.close()).await;
            n
        }
    };
    let want = through(p.ens.addr(p.ens.leader())).await;
    let caught_up = Instant::now();
    loop {
        let got = through(p.ens.addr(follower)).await;
        if got == want {
            break;
        }
        assert!(caught_up.elapsed() < Duration::from_secs(10), "zk{} has {got} tasks of {want}", follower + 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "follower zk{} killed and restarted: serving {serving:?} after its restart; {} submits ok, {} failed, \
         latency p99 {:?} max {:?}; {want} task nodes on it",
        follower + 1,
        s.ok(),
        s.failed.len(),
        percentile(&s.sorted_latencies(), 0.99),
        s.sorted_latencies().last().copied().unwrap_or_default(),
    );
    let _ = restarted;
    p.assert_exactly_once(&s, "while the follower was down");
}

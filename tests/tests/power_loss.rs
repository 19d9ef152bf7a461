//! Power cuts of every file the system keeps, on `testkit::crashfs`: a
//! file system that, at a crash, drops every write and directory change
//! that fsync and fsyncdir did not make durable (a kill -9 never does:
//! the kernel's page cache survives it).
//!
//! - **The coordinator's data dir** (log segments, snapshots, the session
//!   secret): four pipelining clients create and set nodes and record what
//!   was acknowledged; at a seeded moment (at random, while a snapshot is
//!   being written, or just after a log segment rolled) the coordinator is
//!   killed with SIGKILL and the power cut, sometimes tearing unsynced
//!   blocks. It must start again on what the disk kept, and every
//!   acknowledged write must be there with its value.
//! - **system-b's store** and **ha-worker's journal**, driven through
//!   their own types, with the power cut at a seeded change of their write
//!   path (`CrashFs::cut_after`: the write, the fsync, the rename, the
//!   directory's fsync): every acknowledged apply or record survives, the
//!   store and the journal open, and their promises still hold (a task
//!   applied exactly once, the journal refusing older terms).
//!
//! Each checker is run once more against a variant that breaks its
//! promise on purpose, and must report it. The bugs the cuts found keep a
//! regression test each (here and in the crates' own tests), listed with
//! their seeds in docs/faults.md, "Power loss".
//!
//! A run prints its seed; `POWER_LOSS_SEED=<seed>` replays it and
//! `POWER_LOSS_CUTS=<n>` makes more cuts per test than the default.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_tests::{binary, Proc, TempDir};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testkit::crashfs::{Crash, CrashFs, CrashFsOptions};
use zookeeper_async::{Acl, CreateMode, ZooKeeper};

/// The seed of this run: `POWER_LOSS_SEED`, or a fresh one.
fn seed() -> u64 {
    match std::env::var("POWER_LOSS_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("POWER_LOSS_SEED={s:?} is not a number")),
        Err(_) => rand::random(),
    }
}

/// Cuts per test: `POWER_LOSS_CUTS`, or `default`.
fn cuts(default: usize) -> usize {
    std::env::var("POWER_LOSS_CUTS").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(default)
}

/// Prints the seed, and on a failure how to run it again.
struct Rerun {
    test: &'static str,
    seed: u64,
}

impl Rerun {
    fn new(test: &'static str, seed: u64) -> Rerun {
        println!("{test}: POWER_LOSS_SEED={seed}");
        Rerun { test, seed }
    }
}

impl Drop for Rerun {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}: rerun with POWER_LOSS_SEED={} cargo test -p e2e-tests --test power_loss {} -- --nocapture",
                self.test, self.seed, self.test
            );
        }
    }
}

fn mount(scratch: &TempDir) -> CrashFs {
    let dir = scratch.path().join("disk");
    CrashFs::mount(&dir, CrashFsOptions::default())
        .unwrap_or_else(|e| panic!("cannot mount crashfs on {}: {e} (needs root, /dev/fuse and fuse3)", dir.display()))
}

/// A torn crash half of the time: unsynced blocks kept or dropped by coin.
fn crash_mode(rng: &mut StdRng) -> Crash {
    if rng.random_bool(0.5) {
        Crash::Torn { seed: rng.random() }
    } else {
        Crash::DropUnsynced
    }
}

// ---- the coordinator ------------------------------------------------------

const WRITERS: usize = 4;
/// Requests each writer keeps in flight.
const PIPELINE: usize = 8;

/// Where in the coordinator's write path a cut falls.
#[derive(Debug, Clone, Copy)]
enum CutPoint {
    /// After a seeded delay.
    Random,
    /// While `snapshot.<zxid>.tmp` exists: a snapshot half written.
    DuringSnapshot,
    /// The moment a new `log.<zxid>` segment appears.
    AfterSegmentRoll,
}

#[derive(Default)]
struct Ledger {
    /// Creates acknowledged, with their data.
    acked: HashMap<String, Vec<u8>>,
    /// Creates sent, acknowledged or not.
    attempted: HashSet<String>,
    /// Per counter: highest value acknowledged, highest value sent.
    counters: HashMap<String, (i64, i64)>,
}

async fn connect(addr: &str) -> Result<ZooKeeper, String> {
    // A client whose server was killed reconnects until its runtime ends
    // (each data dir's run has its own); not in a hot loop meanwhile.
    let connecting =
        ZooKeeper::connect_with_retry_time(addr, Duration::from_secs(10), |_| {}, Duration::from_millis(100));
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(zk)) => Ok(zk),
        Ok(Err(e)) => Err(format!("connect to {addr}: {e}")),
        Err(_) => Err(format!("connect to {addr}: no session within 10 s")),
    }
}

fn payload(tag: &str) -> Vec<u8> {
    // Big enough that snapshots take a while to write.
    let mut v = tag.as_bytes().to_vec();
    v.resize(120, b'.');
    v
}

async fn writer(zk: ZooKeeper, cut: usize, w: usize, ledger: Arc<Mutex<Ledger>>) {
    let zk = Arc::new(zk);
    let counter = format!("/d/k{w}");
    for batch in 0.. {
        let creates = (0..PIPELINE).map(|j| {
            let (zk, ledger) = (zk.clone(), ledger.clone());
            let path = format!("/d/c{cut}-w{w}-{batch}-{j}");
            async move {
                let data = payload(&path);
                ledger.lock().attempted.insert(path.clone());
                let acked = zk.create(&path, data.clone(), Acl::open_unsafe().clone(), CreateMode::Persistent).await;
                if acked.is_ok() {
                    ledger.lock().acked.insert(path, data);
                }
                acked.is_ok()
            }
        });
        let value = (cut * 1_000_000 + batch) as i64;
        ledger.lock().counters.entry(counter.clone()).or_default().1 = value;
        let set = zk.set_data(&counter, value.to_string().into_bytes(), None);
        let (created, set) = futures::join!(futures::future::join_all(creates), set);
        if set.is_ok() {
            let mut l = ledger.lock();
            let entry = l.counters.entry(counter.clone()).or_default();
            entry.0 = entry.0.max(value);
        }
        if set.is_err() || created.contains(&false) {
            return;
        }
    }
}

/// Starts the coordinator on `data`; an error (with its log) if it does
/// not come up: recovery refused what the disk held.
fn start(data: &Path, extra: &[&str], env: &[(&str, &str)], logs: &Path) -> Result<(Proc, String), String> {
    let data = data.to_str().ok_or("the data dir is not UTF-8")?;
    let mut args = vec!["--listen", "127.0.0.1:0", "--data-dir", data];
    args.extend_from_slice(extra);
    let mut p = Proc::start(&binary("coordinator"), "coordinator", &args, env, logs).map_err(|e| format!("{e:#}"))?;
    match p.try_wait_line("coordinator listening on", Duration::from_secs(20)) {
        Ok(addr) => Ok((p, addr)),
        Err(e) => Err(format!("{e:#}; the data dir: {}; its log:\n{}", listing(Path::new(data)), p.log_text())),
    }
}

fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// The data dir's files and sizes, for a verdict.
fn listing(dir: &Path) -> String {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    format!("{} ({} B)", e.file_name().to_string_lossy(), e.metadata().map(|m| m.len()).unwrap_or(0))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.join(", ")
}

/// Waits until the cut point is reached (or `limit` passes); says which.
async fn reach(point: CutPoint, data: &Path, rng: &mut StdRng, limit: Duration) -> &'static str {
    let deadline = Instant::now() + limit;
    let segments = |d: &Path| names(d).iter().filter(|n| n.starts_with("log.")).count();
    let before = segments(data);
    match point {
        CutPoint::Random => {
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..700))).await;
            return "at a random moment";
        }
        CutPoint::DuringSnapshot | CutPoint::AfterSegmentRoll => {
            // Some writes first, so a snapshot has something to cover.
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
            while Instant::now() < deadline {
                let found = match point {
                    CutPoint::DuringSnapshot => {
                        names(data).iter().any(|n| n.starts_with("snapshot.") && n.ends_with(".tmp"))
                    }
                    _ => segments(data) > before,
                };
                if found {
                    return match point {
                        CutPoint::DuringSnapshot => "while a snapshot was being written",
                        _ => "just after a log segment rolled",
                    };
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    "at the time limit (the awaited point never came)"
}

/// What the coordinator runs showed.
#[derive(Debug, Default)]
struct CoordinatorRun {
    acked: usize,
    cuts: Vec<String>,
}

/// [`coordinator_cuts`] on a runtime of its own, dropped at the end with
/// every client it started: zookeeper-async's clients never stop
/// reconnecting to a server that was killed, and a run's worth of them
/// left behind starves the next run.
fn coordinator_cuts_on_own_runtime(
    seed: u64,
    cuts: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<CoordinatorRun, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime: {e}"))?;
    let run = rt.block_on(coordinator_cuts(seed, cuts, extra, env));
    rt.shutdown_timeout(Duration::from_secs(1));
    run
}

/// Runs `cuts` power cuts of the coordinator's data dir; the first
/// violation is the error.
async fn coordinator_cuts(
    seed: u64,
    cuts: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<CoordinatorRun, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let scratch = TempDir::new("power-loss-coordinator");
    let fs = mount(&scratch);
    // The coordinator creates its data dir itself, as on a fresh machine.
    let data = fs.path().join("data");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut run = CoordinatorRun::default();
    {
        let (_c, addr) = start(&data, extra, env, scratch.path())?;
        let zk = connect(&addr).await?;
        zk.create("/d", vec![], Acl::open_unsafe().clone(), CreateMode::Persistent).await.map_err(|e| e.to_string())?;
        ledger.lock().acked.insert("/d".into(), vec![]);
        for w in 0..WRITERS {
            let path = format!("/d/k{w}");
            zk.create(&path, b"-1".to_vec(), Acl::open_unsafe().clone(), CreateMode::Persistent)
                .await
                .map_err(|e| e.to_string())?;
            ledger.lock().counters.insert(path, (-1, -1));
        }
    }
    let points = [CutPoint::Random, CutPoint::DuringSnapshot, CutPoint::AfterSegmentRoll];
    for cut in 0..cuts {
        let point = points[cut % points.len()];
        let (mut server, addr) = start(&data, extra, env, scratch.path())?;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            tasks.push(tokio::spawn(writer(connect(&addr).await?, cut, w, ledger.clone())));
        }
        let when = reach(point, &data, &mut rng, Duration::from_secs(4)).await;
        server.kill9();
        for t in &tasks {
            t.abort();
        }
        let mode = crash_mode(&mut rng);
        let report = fs.crash(mode);
        let what = format!(
            "cut {cut} {when} ({} creates acknowledged so far), {mode:?}: {report:?}",
            ledger.lock().acked.len()
        );
        println!("{what}");
        run.cuts.push(what.clone());

        let (_server, addr) = start(&data, extra, env, scratch.path())
            .map_err(|e| format!("{what}: the coordinator did not start again: {e}"))?;
        let checked = Instant::now();
        let check = check_coordinator(&addr, &what, &ledger);
        let l = tokio::time::timeout(Duration::from_secs(120), check)
            .await
            .map_err(|_| format!("{what}: the restarted coordinator did not answer the check within 120 s"))??;
        run.acked = l.acked.len();
        println!("  checked in {:?}", checked.elapsed());
        *ledger.lock() = l;
    }
    Ok(run)
}

/// Reads back everything the ledger says was acknowledged; the ledger
/// back, or the violation.
async fn check_coordinator(addr: &str, what: &str, ledger: &Mutex<Ledger>) -> Result<Ledger, String> {
    let zk = connect(addr).await.map_err(|e| format!("{what}: {e}"))?;
    let l = std::mem::take(&mut *ledger.lock());
    // `/d` itself may be what the cut lost: then nothing under it is there.
    let mut present: HashSet<String> = match zk.get_children("/d", false).await {
        Ok(children) => children.into_iter().map(|c| format!("/d/{c}")).collect(),
        Err(zookeeper_async::ZkError::NoNode) => HashSet::new(),
        Err(e) => return Err(format!("{what}: /d cannot be listed: {e}")),
    };
    if zk.exists("/d", false).await.map_err(|e| format!("{what}: /d: {e}"))?.is_some() {
        present.insert("/d".into());
    }
    let mut missing: Vec<&String> = l.acked.keys().filter(|p| !present.contains(*p)).collect();
    if !missing.is_empty() {
        missing.sort();
        return Err(format!(
            "{what}: {} of {} acknowledged creates are missing after the power cut, e.g. {:?}",
            missing.len(),
            l.acked.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    // Read back pipelined: thousands of nodes, one round trip each.
    let acked: Vec<(&String, &Vec<u8>)> = l.acked.iter().collect();
    for chunk in acked.chunks(256) {
        let reads = chunk.iter().map(|(path, _)| zk.get_data(path, false));
        for ((path, value), got) in chunk.iter().zip(futures::future::join_all(reads).await) {
            let (got, _) = got.map_err(|e| format!("{what}: read {path}: {e}"))?;
            if &got != *value {
                return Err(format!("{what}: {path} holds {got:?}, not its acknowledged value"));
            }
        }
    }
    if let Some(p) = present.iter().find(|p| *p != "/d" && !p.starts_with("/d/k") && !l.attempted.contains(*p)) {
        return Err(format!("{what}: {p} appeared although no client ever created it"));
    }
    for (counter, (acked, attempted)) in &l.counters {
        let (got, _) = zk.get_data(counter, false).await.map_err(|e| format!("{what}: read {counter}: {e}"))?;
        let got: i64 =
            String::from_utf8_lossy(&got).parse().map_err(|_| format!("{what}: {counter} is not a number"))?;
        if got < *acked || got > *attempted {
            return Err(format!(
                "{what}: {counter} = {got}, but {acked} was acknowledged and {attempted} the last sent"
            ));
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), zk.close()).await;
    Ok(l)
}

/// Snapshots as often as the server takes them (every 0.5 s once 200
/// txns and a snapshot's worth of log are in), so cuts land in them and in
/// the segment rolls they bring.
const FREQUENT_SNAPSHOTS: [&str; 2] = ["--snap-count", "200"];

/// Cuts per fresh data dir: as the tree grows, snapshots (which wait for
/// the log to outgrow them) come too rarely for a cut to land in one, so
/// more cuts are more fresh dirs, each with its own seed.
const CUTS_PER_DIR: usize = 4;

#[test]
fn coordinator_keeps_every_acknowledged_write_across_power_cuts() {
    let seed = seed();
    let _rerun = Rerun::new("coordinator_keeps_every_acknowledged_write_across_power_cuts", seed);
    let n = cuts(CUTS_PER_DIR);
    let started = Instant::now();
    let mut acked = 0;
    for dir in 0..n.div_ceil(CUTS_PER_DIR) {
        let cuts = CUTS_PER_DIR.min(n - dir * CUTS_PER_DIR);
        let run = coordinator_cuts_on_own_runtime(seed.wrapping_add(dir as u64), cuts, &FREQUENT_SNAPSHOTS, &[])
            .unwrap_or_else(|v| panic!("VIOLATION (data dir {dir}, its seed {}): {v}", seed.wrapping_add(dir as u64)));
        acked += run.acked;
    }
    println!("{n} power cuts, {acked} acknowledged creates all present, in {:?}", started.elapsed());
    assert!(acked > 0, "no write was acknowledged: the checker checked nothing");
}

/// The checker catches a lost log segment: with the segment's directory
/// fsync skipped on purpose (a failpoint) and no snapshot to fsync the
/// directory for it, the first cut loses the segment and the writes
/// acknowledged in it, and the run must say so.
#[test]
fn the_coordinator_checker_catches_a_segment_whose_directory_entry_was_not_fsynced() {
    let seed = seed();
    let _rerun = Rerun::new("the_coordinator_checker_catches_a_segment_whose_directory_entry_was_not_fsynced", seed);
    let verdict = coordinator_cuts_on_own_runtime(
        seed,
        2,
        &["--snap-count", "100000000"],
        &[("FAILPOINTS", "coordinator/skip-segment-dir-fsync")],
    );
    match verdict {
        Err(v) => {
            println!("the broken variant's verdict: VIOLATION: {v}");
            assert!(v.contains("acknowledged creates are missing"), "a violation, but not the lost writes: {v}");
        }
        Ok(run) => panic!("a segment whose name was never fsynced went unnoticed through {:?}", run.cuts),
    }
}

// ---- system-b's store -----------------------------------------------------

/// Entities the store workload spreads its tasks over.
const ENTITIES: usize = 3;

/// An entity as the acknowledged tasks left it.
#[derive(Debug, Clone, Default, PartialEq)]
struct Expected {
    value: i64,
    last_task: Option<String>,
    token: i64,
}

/// The task a cut interrupted: it may or may not have been applied.
struct InFlight {
    entity: String,
    task: String,
    amount: i64,
    token: i64,
}

/// Applies tasks as system-b's worker does (read under the lock's token,
/// then apply value + amount with the task as the entity's last), with the
/// power cut at a seeded change of the store's write path; after each cut
/// the store must open, hold every acknowledged task exactly once, take
/// the interrupted task exactly once when it is redelivered, and still
/// fence older tokens.
fn store_cuts(seed: u64, cuts: usize, options: CrashFsOptions) -> Result<usize, String> {
    use system_b::store::{Applied, Store};
    use zk_recipes::fencing::Token;

    let mut rng = StdRng::seed_from_u64(seed);
    let scratch = TempDir::new("power-loss-store");
    let dir = scratch.path().join("disk");
    let fs = CrashFs::mount(&dir, options).map_err(|e| format!("mount crashfs on {}: {e}", dir.display()))?;
    // system-b creates its store directory itself on first start.
    let store_dir = fs.path().join("store");
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    let mut acked = 0;
    let mut next = 1i64;
    for cut in 0..cuts {
        let store = Store::open(&store_dir).map_err(|e| format!("cut {cut}: the store does not open: {e}"))?;
        let budget = rng.random_range(0..120);
        fs.cut_after(budget);
        let mut in_flight = None;
        while !fs.is_cut() && next < 1_000_000 {
            let entity = format!("e{}", rng.random_range(0..ENTITIES));
            let (task, amount, token) = (format!("t{next}"), rng.random_range(1..100), next);
            next += 1;
            in_flight = Some(InFlight { entity: entity.clone(), task: task.clone(), amount, token });
            let t = Token::new(1, token);
            let applied = store.read(&entity, t).and_then(|e| {
                let value = e.value + amount;
                let a = Applied { task: task.clone(), value, worker: "b1".into(), epoch: 1, token };
                store.apply(&entity, t, a).map(|()| value)
            });
            match applied {
                Ok(value) => {
                    expected.insert(entity, Expected { value, last_task: Some(task), token });
                    acked += 1;
                    in_flight = None;
                }
                Err(_) => break,
            }
        }
        let mode = crash_mode(&mut rng);
        let report = fs.crash(mode);
        let what =
            format!("store cut {cut} after {budget} changes ({acked} tasks acknowledged so far), {mode:?}: {report:?}");
        println!("{what}");

        let store = Store::open(&store_dir).map_err(|e| format!("{what}: the store does not open: {e}"))?;
        for (entity, want) in expected.iter_mut() {
            let got = store.peek(entity).map_err(|e| format!("{what}: {entity} cannot be read: {e}"))?;
            let last = got.last.as_ref().map(|a| a.task.clone());
            match &in_flight {
                // The interrupted task reached the disk: it counts once.
                Some(f) if f.entity == *entity && last.as_deref() == Some(f.task.as_str()) => {
                    if got.value != want.value + f.amount {
                        return Err(format!(
                            "{what}: {entity} = {} after the interrupted {} (+{}), expected {}",
                            got.value,
                            f.task,
                            f.amount,
                            want.value + f.amount
                        ));
                    }
                    *want = Expected { value: got.value, last_task: last, token: f.token };
                }
                _ => {
                    if got.value != want.value || last != want.last_task {
                        return Err(format!(
                            "{what}: {entity} = {} with last task {last:?}, but the acknowledged tasks left {} with last task {:?}",
                            got.value, want.value, want.last_task
                        ));
                    }
                }
            }
            // The fence holds across the cut: an older token is refused.
            if want.token > 1 {
                if let Ok(e) = store.read(entity, Token::new(1, want.token - 1)) {
                    return Err(format!(
                        "{what}: {entity} let token {} read after {} was applied: {e:?}",
                        want.token - 1,
                        want.token
                    ));
                }
            }
        }
        // Redelivered, the interrupted task is applied unless it already was.
        if let Some(f) =
            in_flight.filter(|f| expected.get(&f.entity).and_then(|e| e.last_task.as_deref()) != Some(f.task.as_str()))
        {
            let t = Token::new(1, f.token);
            let e = store.read(&f.entity, t).map_err(|e| format!("{what}: redelivery of {}: {e}", f.task))?;
            let value = e.value + f.amount;
            let a = Applied { task: f.task.clone(), value, worker: "b2".into(), epoch: 1, token: f.token };
            store.apply(&f.entity, t, a).map_err(|e| format!("{what}: redelivery of {}: {e}", f.task))?;
            expected.insert(f.entity, Expected { value, last_task: Some(f.task), token: f.token });
            acked += 1;
        }
    }
    Ok(acked)
}

#[test]
fn the_store_keeps_every_applied_task_exactly_once_across_power_cuts() {
    let seed = seed();
    let _rerun = Rerun::new("the_store_keeps_every_applied_task_exactly_once_across_power_cuts", seed);
    let n = cuts(40);
    let acked = store_cuts(seed, n, CrashFsOptions::default()).unwrap_or_else(|v| panic!("VIOLATION: {v}"));
    println!("{n} power cuts of the store, {acked} acknowledged tasks all applied exactly once");
    assert!(acked > 0, "no task was acknowledged: the checker checked nothing");
}

/// Runs the store's checker on a disk broken as `options` say, which must
/// report a violation (`test` names the rerun; `disk` says what is broken).
fn store_checker_catches(test: &'static str, options: CrashFsOptions, disk: &str) {
    let seed = seed();
    let _rerun = Rerun::new(test, seed);
    match store_cuts(seed, 40, options) {
        Err(v) => println!("the broken variant's verdict: VIOLATION: {v}"),
        Ok(acked) => panic!("{acked} tasks on a disk that {disk}, and no violation reported"),
    }
}

/// The checker catches a store whose renames are not made durable: on a
/// disk that drops directory fsyncs (what skipping the store's directory
/// fsync does to durability), an entity created by an acknowledged task
/// comes back without its file, as if nothing had been applied to it.
#[test]
fn the_store_checker_catches_renames_that_were_not_made_durable() {
    let options = CrashFsOptions { ignore_dir_fsync: true, ..CrashFsOptions::default() };
    store_checker_catches(
        "the_store_checker_catches_renames_that_were_not_made_durable",
        options,
        "ignores directory fsyncs",
    );
}

/// The checker catches a store whose writes in place are not synced: on a
/// disk that drops file fsyncs (what skipping the store's `fdatasync`
/// after it overwrites a slot does to durability), acknowledged tasks come
/// back undone.
#[test]
fn the_store_checker_catches_writes_in_place_that_were_not_synced() {
    let options = CrashFsOptions { ignore_file_fsync: true, ..CrashFsOptions::default() };
    store_checker_catches(
        "the_store_checker_catches_writes_in_place_that_were_not_synced",
        options,
        "ignores file fsyncs",
    );
}

// ---- ha-worker's journal --------------------------------------------------

/// Appends records as active workers do (terms rising, a few records
/// each), with the power cut at a seeded change of the journal's write
/// path; after each cut the journal must open, hold every acknowledged
/// record in order (and at most the interrupted one after them), refuse a
/// term older than the newest acknowledged, and take a newer one.
fn journal_cuts(seed: u64, cuts: usize, options: CrashFsOptions) -> Result<usize, String> {
    use ha_worker::journal::{read_entries, Journal};
    use zk_recipes::fencing::Token;

    let mut rng = StdRng::seed_from_u64(seed);
    let scratch = TempDir::new("power-loss-journal");
    let dir = scratch.path().join("disk");
    let fs = CrashFs::mount(&dir, options).map_err(|e| format!("mount crashfs on {}: {e}", dir.display()))?;
    // The journal's directory is the operator's (a volume); set up durably.
    let ha = fs.path().join("ha");
    std::fs::create_dir(&ha).map_err(|e| e.to_string())?;
    std::fs::File::open(fs.path()).and_then(|d| d.sync_all()).map_err(|e| e.to_string())?;
    let path = ha.join("journal");
    let journal = Journal::new(&path);
    let mut acked: Vec<(Token, String, u64)> = Vec::new();
    let mut term = 1i64;
    for cut in 0..cuts {
        let budget = rng.random_range(0..40);
        fs.cut_after(budget);
        let mut in_flight = None;
        while !fs.is_cut() && term < 1_000_000 {
            if rng.random_bool(0.3) {
                term += 1;
            }
            let token = Token::new(1, term);
            let instance = format!("ha{}", term % 2 + 1);
            let seq = acked.len() as u64;
            in_flight = Some((token, instance.clone(), seq));
            match journal.append(token, &instance, seq) {
                Ok(()) => {
                    acked.push((token, instance, seq));
                    in_flight = None;
                }
                Err(_) => break,
            }
        }
        let mode = crash_mode(&mut rng);
        let report = fs.crash(mode);
        let what = format!(
            "journal cut {cut} after {budget} changes ({} records acknowledged so far), {mode:?}: {report:?}",
            acked.len()
        );
        println!("{what}");

        journal.check().map_err(|e| format!("{what}: the journal does not open: {e}"))?;
        let entries = if acked.is_empty() && !path.exists() {
            Vec::new()
        } else {
            read_entries(&path).map_err(|e| format!("{what}: the journal cannot be read: {e}"))?
        };
        let got: Vec<(Token, String, u64)> = entries.into_iter().map(|e| (e.token, e.instance, e.seq)).collect();
        if got.len() < acked.len() || got[..acked.len()] != acked[..] {
            let lost = acked.iter().find(|a| !got.contains(a));
            return Err(format!(
                "{what}: the journal holds {} records, {} were acknowledged; first lost: {lost:?}",
                got.len(),
                acked.len()
            ));
        }
        match got.get(acked.len()..) {
            Some([]) => {}
            Some([extra]) if Some(extra) == in_flight.as_ref() => acked.push(extra.clone()),
            Some(extra) => return Err(format!("{what}: records nobody acknowledged or sent: {extra:?}")),
            None => {}
        }
        if let Some((newest, _, _)) = acked.last() {
            if newest.zxid > 1 && journal.append(Token::new(1, newest.zxid - 1), "stale", u64::MAX).is_ok() {
                return Err(format!(
                    "{what}: the journal took term {} after {} was acknowledged",
                    newest.zxid - 1,
                    newest.zxid
                ));
            }
        }
    }
    Ok(acked.len())
}

#[test]
fn the_journal_keeps_every_acknowledged_record_across_power_cuts() {
    let seed = seed();
    let _rerun = Rerun::new("the_journal_keeps_every_acknowledged_record_across_power_cuts", seed);
    let n = cuts(40);
    let acked = journal_cuts(seed, n, CrashFsOptions::default()).unwrap_or_else(|v| panic!("VIOLATION: {v}"));
    println!("{n} power cuts of the journal, {acked} acknowledged records all present, terms never back");
    assert!(acked > 0, "no record was acknowledged: the checker checked nothing");
}

/// The checker catches a journal whose appends are not made durable: on a
/// disk that drops file fsyncs, acknowledged records are lost.
#[test]
fn the_journal_checker_catches_appends_that_were_not_made_durable() {
    let seed = seed();
    let _rerun = Rerun::new("the_journal_checker_catches_appends_that_were_not_made_durable", seed);
    let options = CrashFsOptions { ignore_file_fsync: true, ..CrashFsOptions::default() };
    match journal_cuts(seed, 40, options) {
        Err(v) => println!("the broken variant's verdict: VIOLATION: {v}"),
        Ok(acked) => panic!("{acked} records on a disk that ignores fsyncs, and no violation reported"),
    }
}

// ---- regressions ----------------------------------------------------------

/// A kill -9 between a log write and its fdatasync leaves the record in
/// the page cache. Recovery used to apply it and append after it without
/// syncing it, so a power cut later dropped it from the middle of the log,
/// behind acknowledged records, and the coordinator refused to start
/// ("zxid 0x6cac does not follow 0x6caa", `POWER_LOSS_SEED=1737310913283754418
/// POWER_LOSS_CUTS=12`, data dir 1, cut 3). Recovery now syncs the last
/// segment it replays.
#[tokio::test]
async fn recovery_makes_the_unsynced_records_it_replays_durable() {
    use coordinator::storage::{log_segment_of, Storage};
    use coordinator::txn::{encode_record, Txn, TxnHeader};

    let scratch = TempDir::new("power-loss-recovery");
    let fs = mount(&scratch);
    let dir = fs.path().join("data");
    let txn = Txn::CreateSession { timeout_ms: 10_000 };
    let header = |zxid: i64| TxnHeader { session_id: zxid, cxid: 0, zxid, time: 1 };
    // Appends sessions up to `last`, durably, through a running Storage.
    let write_up_to = |last: i64| {
        let rec = Storage::open(&dir).expect("open the data dir");
        let mut tree = rec.tree;
        let mut durable = rec.storage.durable();
        for zxid in tree.last_zxid() + 1..=last {
            tree.apply(&header(zxid), &txn, &mut Vec::new());
            rec.storage.append(&header(zxid), &txn);
        }
        (rec.storage, async move { durable.wait_for(|d| *d >= last).await.map(|_| ()) })
    };
    let (storage, synced) = write_up_to(3);
    synced.await.expect("zxid 3 durable");
    drop(storage);
    // The server dies after writing zxid 4, before its fdatasync.
    let last_segment = std::fs::read_dir(&dir)
        .expect("list the data dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("log.")))
        .max()
        .expect("a log segment");
    let record = log_segment_of([encode_record(&header(4), &txn).as_slice()]);
    let mut f = std::fs::OpenOptions::new().append(true).open(&last_segment).expect("open the segment");
    std::io::Write::write_all(&mut f, &record[8..]).expect("write zxid 4, unsynced");
    drop(f);
    // Restarted, the server recovers zxid 4 from the page cache and
    // acknowledges 5 and 6 after it.
    let (storage, synced) = write_up_to(6);
    synced.await.expect("zxid 6 durable");
    drop(storage);
    fs.crash(Crash::DropUnsynced);
    let rec =
        Storage::open(&dir).unwrap_or_else(|e| panic!("VIOLATION: recovery refused the disk a power cut left: {e}"));
    assert_eq!(rec.tree.last_zxid(), 6, "the acknowledged zxids 5 and 6 survive the cut");
}

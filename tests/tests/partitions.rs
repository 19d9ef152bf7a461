//! Network partitions of the servers, made for real: every ensemble member,
//! the coordinator and each test client on a host of its own
//! (`testkit::netns`: network namespaces on one bridge, cut with iptables
//! inside them, in silence). Each test records the register operations
//! its clients made (zookeeper-async, as the services use) and checks,
//! after the fault has healed:
//!
//! - the leader isolated from its followers, with writers on both sides:
//!   the majority elects a new leader, nothing written through the old
//!   one after the cut is acknowledged, the old leader rejoins, and the
//!   history is linearizable with every acknowledged write present;
//! - a client cut from the majority that still reaches a minority member:
//!   no write of it succeeds, and after the heal its session has either
//!   survived (its ephemeral there, its own) or expired cleanly (its
//!   ephemeral gone, every ephemeral's owner a live session);
//! - a one-way cut from the leader to a follower under writes: the
//!   ensemble keeps serving, the history is linearizable;
//! - a client partitioned from the coordinator past its session timeout:
//!   its session expires and its ephemeral goes; a write whose request
//!   arrived but whose reply was lost is present, once.
//!
//! Reads during the faults are not recorded: ZooKeeper serves a read from
//! the member a client is connected to, which may lag (sequential, not
//! linearizable, consistency). Writes go through the leader's one log, so
//! their acknowledged versions must fit one order; a read of every
//! register through the leader at the end closes each history, which is
//! what makes a lost acknowledged write a violation.
//!
//! Each ensemble test prints its figures (time to a new leader,
//! unavailability seen by the writers); docs/faults.md records them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_tests::ensemble::{four_letter, Ensemble, Mode};
use e2e_tests::linearizability::{self as lin, Event, Op, Outcome, Reg};
use e2e_tests::{orphans_in_dump, Coordinator, Place, TempDir};
use parking_lot::Mutex;
use testkit::netns::Net;
use zk_recipes::session::Client;
use zookeeper_async::{Acl, CreateMode, ZkError};

const REGISTERS: usize = 3;
/// A request's own deadline: past it the outcome is unknown.
const OP_LIMIT: Duration = Duration::from_secs(5);

/// One recorded operation.
#[derive(Clone, Debug)]
struct Record {
    client: &'static str,
    register: usize,
    event: Event,
}

#[derive(Default)]
struct History {
    records: Mutex<Vec<Record>>,
}

impl History {
    fn push(&self, client: &'static str, register: usize, event: Event) {
        self.records.lock().push(Record { client, register, event });
    }

    fn of(&self, register: usize) -> Vec<Event> {
        self.records.lock().iter().filter(|r| r.register == register).map(|r| r.event.clone()).collect()
    }

    /// Writes of `client` called at or after `from` and acknowledged
    /// before `to` (a fault's window: a request sent in a partition may
    /// still be carried out, and answered, after the heal).
    fn acknowledged_within(&self, client: &str, from: Instant, to: Instant) -> Vec<Record> {
        self.records
            .lock()
            .iter()
            .filter(|r| r.client == client && r.event.called >= from && r.event.returned.is_some_and(|t| t < to))
            .filter(|r| matches!(r.event.outcome, Outcome::Written(_)))
            .cloned()
            .collect()
    }

    /// The longest any operation of `client` waited, and how many it made.
    fn worst_latency(&self, client: &str) -> (Duration, usize) {
        let recs = self.records.lock();
        let mine: Vec<&Record> = recs.iter().filter(|r| r.client == client).collect();
        let worst = mine.iter().map(|r| r.event.returned.unwrap_or(r.event.called + OP_LIMIT) - r.event.called).max();
        (worst.unwrap_or_default(), mine.len())
    }

    /// The longest `client` went without an acknowledged write: the
    /// unavailability it saw.
    fn longest_gap(&self, client: &str) -> Duration {
        let mut acked: Vec<Instant> = self
            .records
            .lock()
            .iter()
            .filter(|r| r.client == client && matches!(r.event.outcome, Outcome::Written(_)))
            .filter_map(|r| r.event.returned)
            .collect();
        acked.sort();
        acked.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }

    /// Every register's history that is not linearizable.
    fn violations(&self) -> Vec<String> {
        let mut bad = Vec::new();
        for r in 0..REGISTERS {
            let h = self.of(r);
            let t = Instant::now();
            let ok = lin::check(Reg { value: 0, version: 0 }, &h);
            println!("register {r}: {} operations, linearizable: {ok}, checked in {:?}", h.len(), t.elapsed());
            if !ok {
                bad.push(format!("register {r}'s history is not linearizable"));
            }
        }
        bad
    }
}

fn register(base: &str, r: usize) -> String {
    format!("{base}/reg-{r}")
}

async fn connect(zk: &str, session: Duration) -> Client {
    Client::connect(zk, session, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("connect to {zk}: {e}"))
}

/// Creates `base` and its registers, each holding 0 at version 0.
async fn make_registers(zk: &str, base: &str) {
    let c = connect(zk, Duration::from_secs(6)).await;
    let made = async {
        zk_recipes::ensure_path(&c.zk, base).await.expect("base");
        for r in 0..REGISTERS {
            c.zk.create(&register(base, r), b"0".to_vec(), Acl::open_unsafe().clone(), CreateMode::Persistent)
                .await
                .expect("register");
        }
    };
    tokio::time::timeout(Duration::from_secs(20), made).await.expect("registers made in time");
    let _ = tokio::time::timeout(Duration::from_secs(5), c.zk.close()).await;
}

/// The writers' names; a value written carries its writer's place here.
const WRITERS: [&str; 3] = ["majority", "minority", "client"];

fn writer_id(who: &str) -> u64 {
    WRITERS.iter().position(|w| *w == who).unwrap_or_else(|| panic!("{who} is not in WRITERS")) as u64 + 1
}

/// A client that writes and compare-and-sets the registers in turn until
/// `stop`, recording each write with its outcome. It sends nothing while
/// its connection is down, so the history holds few unanswered writes
/// (each one multiplies the checker's search).
async fn writer(c: Client, who: &'static str, base: String, h: Arc<History>, stop: Arc<AtomicBool>) {
    let mut versions = [0i32; REGISTERS];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if !c.is_live() {
            c.wait_live(Duration::from_millis(200)).await;
            continue;
        }
        n += 1;
        let r = (n as usize) % REGISTERS;
        // Values unique across writers, so a read names the write it saw.
        let value = writer_id(who) * 1_000_000_000 + n;
        let cas = n.is_multiple_of(2);
        let op = if cas { Op::Cas { value, expected: versions[r] } } else { Op::Write(value) };
        let called = Instant::now();
        let res = tokio::time::timeout(
            OP_LIMIT,
            c.zk.set_data(&register(&base, r), value.to_string().into_bytes(), cas.then_some(versions[r])),
        )
        .await;
        let returned = Instant::now();
        let outcome = match res {
            Ok(Ok(stat)) => {
                versions[r] = stat.version;
                Outcome::Written(stat.version)
            }
            Ok(Err(ZkError::BadVersion)) => Outcome::BadVersion,
            _ => Outcome::Unknown,
        };
        h.push(who, r, Event { op, outcome, called, returned: (outcome != Outcome::Unknown).then_some(returned) });
        if outcome == Outcome::BadVersion {
            // Learn the version (a read not recorded: it may be stale).
            if let Ok(Ok((_, stat))) = tokio::time::timeout(OP_LIMIT, c.zk.get_data(&register(&base, r), false)).await {
                versions[r] = stat.version;
            }
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// A flag that turns true when the server tells `c` its session expired
/// (zookeeper-async then makes a new session, so the state alone may show
/// `Live` again by the time anyone looks).
fn expiry_flag(c: &Client) -> Arc<AtomicBool> {
    let expired = Arc::new(AtomicBool::new(false));
    let flag = expired.clone();
    #[allow(deprecated)] // NotConnected is how zookeeper-async 5 reports an expired handshake.
    c.zk.add_listener(move |s| {
        if s == zookeeper_async::ZkState::NotConnected {
            flag.store(true, Ordering::SeqCst);
        }
    });
    expired
}

/// Ends each register's history with a read through `zk` (the leader, or
/// the only server) once every writer has stopped.
async fn final_reads(zk: &str, base: &str, h: &History) {
    let c = connect(zk, Duration::from_secs(6)).await;
    for r in 0..REGISTERS {
        let called = Instant::now();
        let (data, stat) = tokio::time::timeout(Duration::from_secs(10), c.zk.get_data(&register(base, r), false))
            .await
            .expect("in time")
            .expect("the final read");
        let value = std::str::from_utf8(&data).ok().and_then(|s| s.parse().ok()).expect("a number");
        h.push(
            "final",
            r,
            Event {
                op: Op::Read,
                outcome: Outcome::Read(Reg { value, version: stat.version }),
                called,
                returned: Some(Instant::now()),
            },
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), c.zk.close()).await;
}

/// Writers on a host: `who` on `host`, connected to `zk`, running on a
/// runtime that lives on the host (so its reconnects do too).
struct Writers {
    _rt: testkit::netns::HostRuntime,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start_writer(
    host: &testkit::netns::Host,
    who: &'static str,
    zk: String,
    session: Duration,
    base: &str,
    h: &Arc<History>,
    stop: &Arc<AtomicBool>,
) -> Writers {
    let rt = host.runtime();
    let (base, h, stop) = (base.to_string(), h.clone(), stop.clone());
    let task = rt.spawn(async move {
        let c = connect(&zk, session).await;
        writer(c, who, base, h, stop).await;
    });
    Writers { _rt: rt, tasks: vec![task] }
}

impl Writers {
    async fn join(self) {
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), t).await.expect("a writer stops in time").expect("writer");
        }
    }
}

/// The ensemble's leader, asked from the root namespace (which reaches
/// every host), waiting out an election in progress.
fn leader(ens: &Ensemble) -> usize {
    tokio::task::block_in_place(|| ens.wait_leader(Duration::from_secs(30)).0)
}

/// The leader isolated from both followers while a client on the majority
/// side (connected to the two followers) and a client connected only to
/// the old leader write. The majority elects a new leader; nothing the old
/// leader's client writes after the cut is acknowledged; after the heal
/// the old leader rejoins; the history is linearizable, so no acknowledged
/// write is lost. The checker is shown to catch the violation this test
/// is about: the same history with one partitioned write counted as
/// acknowledged but absent is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_isolated_from_its_followers() {
    let dir = TempDir::new("part-leader");
    let net = Net::create();
    let ens = tokio::task::block_in_place(|| Ensemble::start_on(&net, dir.path()));
    let old = leader(&ens);
    let followers: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    net.add_host("cmaj");
    net.add_host("cmin");
    let base = format!("/{}", testkit::unique("partlead"));
    make_registers(&ens.addr(old), &base).await;

    let h = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let session = Duration::from_secs(4);
    let majority_zk = followers.iter().map(|&i| ens.addr(i)).collect::<Vec<_>>().join(",");
    let maj = start_writer(&net.host("cmaj"), "majority", majority_zk, session, &base, &h, &stop);
    let min = start_writer(&net.host("cmin"), "minority", ens.addr(old), session, &base, &h, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (old_host, f1, f2) = (ens.host(old).to_string(), ens.host(followers[0]), ens.host(followers[1]));
    net.partition(&[&[&old_host, "cmin"], &[f1, f2, "cmaj"]]);
    // From when every host's rules are in force.
    let cut = Instant::now();
    let (new_leader, election) = tokio::task::block_in_place(|| loop {
        if let Some(&i) = followers.iter().find(|&&i| ens.mode(i) == Mode::Leader) {
            break (i, cut.elapsed());
        }
        assert!(cut.elapsed() < Duration::from_secs(30), "the majority elected no leader within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    });
    // The old leader must give up: it cannot reach a quorum.
    let stepped_down = tokio::task::block_in_place(|| {
        while ens.mode(old) == Mode::Leader {
            assert!(cut.elapsed() < Duration::from_secs(30), "the isolated leader still leads after 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        cut.elapsed()
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let healed = Instant::now();
    net.heal();
    let rejoined = tokio::task::block_in_place(|| ens.wait_serving(old, Duration::from_secs(30)));
    assert_eq!(ens.mode(old), Mode::Follower, "the old leader did not rejoin as a follower");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    maj.join().await;
    min.join().await;
    final_reads(&ens.addr(new_leader), &base, &h).await;

    let (maj_worst, maj_ops) = h.worst_latency("majority");
    let (_, min_ops) = h.worst_latency("minority");
    println!(
        "leader zk{} isolated: zk{} leads after {election:?}, the old leader stepped down after {stepped_down:?}; \
         majority-side writer: {maj_ops} writes, worst latency {maj_worst:?}, longest without an acknowledged \
         write {:?}; minority writer: {min_ops} writes; old leader serving again {rejoined:?} after the heal",
        old + 1,
        new_leader + 1,
        h.longest_gap("majority"),
    );
    // A write the old leader's client called after the cut could only be
    // acknowledged by a leader without a quorum.
    let through_old = h.acknowledged_within("minority", cut, healed);
    assert!(through_old.is_empty(), "writes acknowledged through the isolated leader: {through_old:?}");
    // And that check catches one.
    let forged = History::default();
    let acked_in_partition =
        Event { op: Op::Write(42), outcome: Outcome::Written(1), called: cut, returned: Some(cut) };
    forged.push("minority", 0, acked_in_partition);
    assert_eq!(forged.acknowledged_within("minority", cut, healed).len(), 1, "the window check missed a write");
    let after_heal = h.acknowledged_within("majority", healed, Instant::now());
    assert!(!after_heal.is_empty(), "the majority side wrote nothing after the heal");
    let bad = h.violations();
    assert!(bad.is_empty(), "{bad:?}");

    // The checker catches the violation: a partitioned write counted as
    // acknowledged, whose value no read ever sees.
    let mut forged = h.of(0);
    let last = forged.iter().filter_map(|e| if let Outcome::Read(r) = e.outcome { Some(r) } else { None }).next();
    let last = last.expect("the final read");
    forged.push(Event {
        op: Op::Write(42),
        outcome: Outcome::Written(last.version + 1),
        called: cut,
        returned: Some(cut + Duration::from_millis(1)),
    });
    assert!(
        !lin::check(Reg { value: 0, version: 0 }, &forged),
        "the checker accepted an acknowledged write that is absent"
    );
}

/// Whether an ephemeral's owner is a live session, for every ephemeral,
/// asked of the leader (only a leader's `dump` lists every session).
fn assert_no_orphans_on(addr: &str, when: &str) {
    let dump = four_letter(addr, "dump").unwrap_or_else(|| panic!("{when}: no dump from {addr}"));
    let orphans = orphans_in_dump(&dump);
    assert!(orphans.is_empty(), "{when}: ephemerals owned by sessions that are gone: {orphans:?}");
}

/// A client cut from the majority (the leader and one follower) while it
/// still reaches the other follower, for longer than its session timeout:
/// no write of it succeeds in the partition, and after the heal its
/// session either survived, its ephemeral there and its own, or expired
/// cleanly, its ephemeral gone; every ephemeral's owner is a live session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_cut_from_the_majority_but_not_from_a_minority_member() {
    let dir = TempDir::new("part-client");
    let net = Net::create();
    let ens = tokio::task::block_in_place(|| Ensemble::start_on(&net, dir.path()));
    let lead = leader(&ens);
    let minor = (lead + 1) % 3;
    let other = (lead + 2) % 3;
    net.add_host("client");
    let base = format!("/{}", testkit::unique("partcli"));
    make_registers(&ens.addr(lead), &base).await;

    let h = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let session = Duration::from_secs(3);
    // The client, on its host, knows only the member it will still reach.
    let rt = net.host("client").runtime();
    let zk = ens.addr(minor);
    let eph = format!("{base}/client-ephemeral");
    let (h2, stop2, base2, eph2) = (h.clone(), stop.clone(), base.clone(), eph.clone());
    let (owner_tx, owner_rx) = tokio::sync::oneshot::channel();
    let client = rt.spawn(async move {
        let c = connect(&zk, session).await;
        c.zk.create(&eph2, vec![], Acl::open_unsafe().clone(), CreateMode::Ephemeral).await.expect("ephemeral");
        let owner = c.zk.exists(&eph2, false).await.expect("exists").expect("there").ephemeral_owner;
        let _ = owner_tx.send((owner, expiry_flag(&c)));
        writer(c.clone(), "client", base2, h2, stop2).await;
        c
    });
    let (owner, expired) =
        tokio::time::timeout(Duration::from_secs(20), owner_rx).await.expect("in time").expect("owner");
    tokio::time::sleep(Duration::from_secs(1)).await;

    net.partition(&[&["client", ens.host(minor)], &[ens.host(lead), ens.host(other)]]);
    let cut = Instant::now();
    // Past the session timeout, so the majority may expire it.
    tokio::time::sleep(session * 2).await;
    let healed = Instant::now();
    net.heal();
    tokio::task::block_in_place(|| ens.wait_serving(minor, Duration::from_secs(30)));
    // Give the client time to reconnect and learn its session's fate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let _c = tokio::time::timeout(Duration::from_secs(30), client).await.expect("in time").expect("client");
    let lead_now = leader(&ens);
    final_reads(&ens.addr(lead_now), &base, &h).await;

    let in_partition = h.acknowledged_within("client", cut, healed);
    assert!(in_partition.is_empty(), "writes acknowledged to a client cut from the majority: {in_partition:?}");

    let observer = connect(&ens.addr(lead_now), Duration::from_secs(6)).await;
    let there = observer.zk.exists(&eph, false).await.expect("exists");
    let survived = !expired.load(Ordering::SeqCst);
    println!(
        "client cut from the majority for {:?} (session {session:?}): session {}; its ephemeral {}",
        session * 2,
        if survived { "survived" } else { "expired" },
        if there.is_some() { "present" } else { "gone" }
    );
    match (survived, there) {
        (true, Some(stat)) => assert_eq!(stat.ephemeral_owner, owner, "the ephemeral changed owner"),
        (true, None) => panic!("the session survived but its ephemeral is gone"),
        (false, Some(stat)) => {
            panic!("the session expired but its ephemeral is left (owner {:#x})", stat.ephemeral_owner)
        }
        (false, None) => {}
    }
    tokio::task::block_in_place(|| assert_no_orphans_on(&ens.addr(lead_now), "after the heal"));
    let bad = h.violations();
    assert!(bad.is_empty(), "{bad:?}");
    drop(rt);
}

/// A one-way cut, the leader's packets to one follower dropped (that
/// follower's to the leader still arrive), under writes from a client that
/// knows all three members: the ensemble keeps serving, and the history
/// is linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_way_cut_from_the_leader_to_a_follower() {
    let dir = TempDir::new("part-oneway");
    let net = Net::create();
    let ens = tokio::task::block_in_place(|| Ensemble::start_on(&net, dir.path()));
    let lead = leader(&ens);
    let follower = (lead + 1) % 3;
    net.add_host("client");
    let base = format!("/{}", testkit::unique("partone"));
    make_registers(&ens.addr(lead), &base).await;

    let h = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let w = start_writer(&net.host("client"), "client", ens.connect_string(), Duration::from_secs(4), &base, &h, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    net.cut_one_way(ens.host(lead), ens.host(follower));
    let cut = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let healed = Instant::now();
    net.heal();
    tokio::task::block_in_place(|| ens.wait_serving(follower, Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    w.join().await;
    let lead_now = leader(&ens);
    final_reads(&ens.addr(lead_now), &base, &h).await;

    let served = h.acknowledged_within("client", cut, healed);
    let (worst, ops) = h.worst_latency("client");
    println!(
        "one-way cut zk{} -> zk{} for 6 s: {} writes acknowledged during it, {ops} in all, worst latency {worst:?}, \
         longest without an acknowledged write {:?}; leader after: zk{}",
        lead + 1,
        follower + 1,
        served.len(),
        h.longest_gap("client"),
        lead_now + 1
    );
    assert!(served.len() > 20, "the ensemble stopped serving under a one-way cut: {} writes", served.len());
    let bad = h.violations();
    assert!(bad.is_empty(), "{bad:?}");
}

/// A client partitioned from the coordinator past its session timeout. A
/// write whose request arrived but whose reply was lost (the server's
/// packets to the client dropped first, then everything) is present at
/// the end, and the client never saw it acknowledged; a write sent into
/// the full partition is absent. The session expires on the server and
/// its ephemeral goes; every ephemeral's owner is a live session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_partitioned_from_the_coordinator_past_its_session() {
    let dir = TempDir::new("part-coord");
    let net = Net::create();
    let srv = net.add_host("srv");
    net.add_host("client");
    let data = dir.path().join("data");
    let coordinator = Coordinator::start(
        &Place::on(&srv),
        &["--data-dir", data.to_str().expect("utf-8"), "--4lw-whitelist", "*", "--tick-time", "200"],
        dir.path(),
    );
    let zk = coordinator.addr.clone();
    let base = format!("/{}", testkit::unique("partcoord"));
    make_registers(&zk, &base).await;

    let session = Duration::from_secs(2);
    let rt = net.host("client").runtime();
    let eph = format!("{base}/client-ephemeral");
    let (zk2, eph2) = (zk.clone(), eph.clone());
    let c = rt
        .spawn(async move {
            let c = connect(&zk2, session).await;
            c.zk.create(&eph2, vec![], Acl::open_unsafe().clone(), CreateMode::Ephemeral).await.expect("ephemeral");
            c
        })
        .await
        .expect("client");
    let expired = expiry_flag(&c);

    let h = Arc::new(History::default());
    // In the root namespace, which the partition leaves alone.
    let observer = connect(&zk, Duration::from_secs(6)).await;
    // The reply is lost: the request reaches the server, its answer does
    // not come back.
    net.cut_one_way("srv", "client");
    let send = |value: u64| {
        let (c, path, h) = (c.clone(), register(&base, 0), h.clone());
        rt.spawn(async move {
            let called = Instant::now();
            let res =
                tokio::time::timeout(session * 3, c.zk.set_data(&path, value.to_string().into_bytes(), None)).await;
            let outcome = match res {
                Ok(Ok(stat)) => Outcome::Written(stat.version),
                _ => Outcome::Unknown,
            };
            let returned = (outcome != Outcome::Unknown).then(Instant::now);
            h.push("client", 0, Event { op: Op::Write(value), outcome, called, returned });
            outcome
        })
    };
    let arrived = send(7);
    // The request is on the wire before the rest of the link goes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    net.partition(&[&["srv"], &["client"]]);
    let lost = send(8);
    let cut = Instant::now();
    // The server expires the session: its ephemeral goes.
    let gone = loop {
        if observer.zk.exists(&eph, false).await.expect("exists").is_none() {
            break cut.elapsed();
        }
        assert!(cut.elapsed() < session * 4, "the partitioned client's ephemeral is still there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::task::block_in_place(|| assert_no_orphans_on(&zk, "after the expiry"));
    let (arrived, lost) = (arrived.await.expect("write"), lost.await.expect("write"));
    net.heal();
    let learned = tokio::time::timeout(Duration::from_secs(20), async {
        while !expired.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    final_reads(&zk, &base, &h).await;
    let (data, _) = observer.zk.get_data(&register(&base, 0), false).await.expect("read");
    println!(
        "client cut from the coordinator (session {session:?}): ephemeral gone {gone:?} after the cut; \
         the write whose reply was lost: {arrived:?}, the one sent into the partition: {lost:?}; register holds {}; \
         the client learned its session expired after the heal: {}",
        String::from_utf8_lossy(&data),
        learned.is_ok()
    );
    assert_eq!(arrived, Outcome::Unknown, "a reply crossed a cut link");
    assert_eq!(lost, Outcome::Unknown, "a reply crossed a partition");
    assert_eq!(&data, b"7", "the write that reached the server is not there once, or the partitioned one is");
    assert!(learned.is_ok(), "the client never learned its session expired");
    let bad = h.violations();
    assert!(bad.is_empty(), "{bad:?}");
    drop(rt);

    // The coordinator on its host, paused and killed as a nemesis does:
    // paused, it answers nothing; resumed, it serves; killed and restarted
    // on its data dir, it still has the write.
    let mut coordinator = coordinator;
    let ruok = |addr: &str| four_letter(addr, "ruok").is_some_and(|a| a == "imok");
    coordinator.pause();
    assert!(!tokio::task::block_in_place(|| ruok(&zk)), "a paused coordinator answered");
    coordinator.resume();
    assert!(tokio::task::block_in_place(|| ruok(&zk)), "the resumed coordinator does not answer");
    coordinator.kill9();
    coordinator.restart();
    assert_eq!(coordinator.addr, zk, "restarted on another address");
    let c = connect(&zk, Duration::from_secs(6)).await;
    let (data, _) = c.zk.get_data(&register(&base, 0), false).await.expect("read after the restart");
    assert_eq!(&data, b"7", "the acknowledged state did not survive a kill -9 on the host");
}

/// A paused leader (SIGSTOP of the JVM on its host) is replaced as an
/// isolated one is, and rejoins as a follower once resumed: the pause
/// reaches the server itself, not `ip netns exec`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_and_rejoins_when_resumed() {
    let dir = TempDir::new("part-pause");
    let net = Net::create();
    let ens = tokio::task::block_in_place(|| Ensemble::start_on(&net, dir.path()));
    let old = leader(&ens);
    let paused = Instant::now();
    ens.pause(old);
    let (new_leader, election) = tokio::task::block_in_place(|| loop {
        if let Some(i) = (0..3).find(|&i| i != old && ens.mode(i) == Mode::Leader) {
            break (i, paused.elapsed());
        }
        assert!(paused.elapsed() < Duration::from_secs(30), "no new leader within 30 s of the pause");
        std::thread::sleep(Duration::from_millis(50));
    });
    assert_eq!(ens.mode(old), Mode::NotServing, "a paused member answered srvr");
    ens.resume(old);
    let rejoined = tokio::task::block_in_place(|| {
        let started = Instant::now();
        while ens.mode(old) != Mode::Follower {
            assert!(started.elapsed() < Duration::from_secs(30), "the resumed leader did not rejoin as a follower");
            std::thread::sleep(Duration::from_millis(50));
        }
        started.elapsed()
    });
    println!(
        "leader zk{} paused: zk{} leads after {election:?}; resumed, zk{} follows after {rejoined:?}",
        old + 1,
        new_leader + 1,
        old + 1
    );
}

/// The demo services on hosts of their own, the coordinator on a third,
/// reaching RabbitMQ (on the root namespace's loopback) through the relay:
/// a task goes A → RabbitMQ → B → znode → A, and is applied once. What
/// the partition tests of the services build on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_on_hosts_reach_the_broker_through_the_relay() {
    use system_a::proto::tasks_client::TasksClient;
    use system_a::proto::SubmitRequest;

    let dir = TempDir::new("part-services");
    let net = Net::create();
    let (srv, a, b) = (net.add_host("srv"), net.add_host("a"), net.add_host("b"));
    let relay = net.relay(testkit::broker::broker_addr());
    let data = dir.path().join("data");
    let coordinator = Coordinator::start(&Place::on(&srv), &["--data-dir", data.to_str().expect("utf-8")], dir.path());
    let zk = coordinator.addr.clone();
    let root = format!("/{}", testkit::unique("partsvc"));
    let queue = testkit::broker::queue_name("tasks");
    let store = dir.path().join("store");
    let _b = e2e_tests::start_system_b_on(
        &Place::with_broker(&b, &relay),
        &zk,
        &root,
        &queue,
        &store,
        "b1",
        4000,
        &[],
        dir.path(),
    );
    let (_a, a_addr) =
        e2e_tests::start_system_a_on(&Place::with_broker(&a, &relay), &zk, &root, &queue, &[], &[], dir.path());
    assert!(a_addr.starts_with(&a.ip().to_string()), "system-a listens on {a_addr}, not on its host");
    let mut grpc = TasksClient::connect(format!("http://{a_addr}")).await.expect("gRPC to system-a on its host");
    let submit = grpc.submit(SubmitRequest { entity: "e1".into(), op: "add".into(), amount: 5, ..Default::default() });
    tokio::time::timeout(Duration::from_secs(30), submit).await.expect("answered in time").expect("the task done");
    let e = e2e_tests::stored_entity(&store, "e1").expect("the entity");
    assert_eq!(e.value, 5, "the task was not applied once: {e:?}");
}

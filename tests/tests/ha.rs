//! Scenario 4 end to end, on both servers: real ha-worker processes, a
//! crash (kill -9), a graceful stop (SIGTERM), and a pause past the session
//! timeout (SIGSTOP/SIGCONT). The journal must never show work of an older
//! term after a newer one: two actives never interleave.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::{provision, start_coordinator, start_ha_worker, Proc, TempDir};
use nix::sys::signal::Signal;
use zk_recipes::fencing::Token;

const SESSION_MS: u64 = 4000;

/// An ha-worker under `root`; [`provision`] made the system, so it runs
/// as the ha-worker identity (ACLs on, as deployed).
fn worker(zk: &str, root: &str, journal: &Path, name: &str, log_dir: &Path) -> Proc {
    start_ha_worker(zk, root, journal, name, 100, SESSION_MS, log_dir)
}

/// The term token of an `ha-worker active term=<zxid> epoch=<epoch>` line.
fn term(line: &str) -> Token {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    Token::new(field("epoch="), field("term="))
}

/// Journal records as (token, instance), checking tokens never go down.
fn check_journal(journal: &Path) -> Vec<(Token, String)> {
    let entries: Vec<(Token, String)> = ha_worker::journal::read_entries(journal)
        .expect("read the journal")
        .into_iter()
        .map(|e| (e.token, e.instance))
        .collect();
    for w in entries.windows(2) {
        assert!(w[0].0 <= w[1].0, "an older term wrote after a newer one: {:?} then {:?}", w[0], w[1]);
    }
    entries
}

/// `expiry_tick_ms` is the granularity of the server's session expiry. A
/// server checks deadlines on a tick and rounds each one up to the next:
/// ZooKeeper's expiry queue to its `tickTime` (2 s here), the coordinator to
/// its own tick. So a crashed active's session ends up to a tick after its
/// timeout, and only then can the standby take over.
fn scenario(zk: &str, dir: &Path, expiry_tick_ms: u64) {
    let root = format!("/{}", testkit::unique("ha"));
    let journal = dir.join("journal");
    // ACLs on, as deployed: the workers run as the ha-worker identity.
    provision(zk, &root, dir);

    // First one in leads; the second stands by.
    let mut w1 = worker(zk, &root, &journal, "w1", dir);
    let t1 = term(&w1.wait_line("ha-worker active", Duration::from_secs(20)));
    let mut w2 = worker(zk, &root, &journal, "w2", dir);
    w2.wait_line("ha-worker standby", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));

    // Crash: the standby takes over once the server expires the crashed
    // one's session: within the timeout, rounded up to the server's expiry
    // tick, plus 1 s for the watch and a loaded machine.
    let crashed = Instant::now();
    w1.kill9();
    let failover_bound = Duration::from_millis(SESSION_MS + expiry_tick_ms + 1000);
    let t2 = term(&w2.wait_line("ha-worker active", failover_bound));
    println!("failover after kill -9: {:?}", crashed.elapsed());
    assert!(t2 > t1, "the new term's token is not larger");

    // Graceful stop: the standby takes over at once.
    let mut w3 = worker(zk, &root, &journal, "w3", dir);
    w3.wait_line("ha-worker standby", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let stopped = Instant::now();
    w2.signal(Signal::SIGTERM);
    let t3 = term(&w3.wait_line("ha-worker active", Duration::from_secs(5)));
    let handoff = stopped.elapsed();
    println!("handoff after SIGTERM: {handoff:?}");
    assert!(handoff < Duration::from_secs(1), "graceful handoff took {handoff:?}");
    assert!(w2.wait_exit(Duration::from_secs(5)).is_some_and(|s| s.success()), "w2 did not exit cleanly on SIGTERM");
    assert!(t3 > t2);

    // Pause the active past its session timeout: the standby takes over;
    // when the paused one resumes it must not act as active again.
    let mut w4 = worker(zk, &root, &journal, "w4", dir);
    w4.wait_line("ha-worker standby", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    w3.signal(Signal::SIGSTOP);
    let t4 = term(&w4.wait_line("ha-worker active", Duration::from_millis(2 * SESSION_MS + 2000)));
    assert!(t4 > t3);
    std::thread::sleep(Duration::from_millis(500));
    w3.signal(Signal::SIGCONT);
    // The resumed one steps down (connection lost, or fenced by the journal).
    let line = loop {
        let l = w3.wait_line("ha-worker ", Duration::from_secs(10));
        if l.starts_with("stepped down") || l.starts_with("fenced") {
            break l;
        }
    };
    println!("w3 after SIGCONT: {line}");
    std::thread::sleep(Duration::from_millis(1000));
    let entries = check_journal(&journal);
    let first_t4 = entries.iter().position(|e| e.0 == t4).expect("w4 wrote as active");
    assert!(
        entries[first_t4..].iter().all(|e| e.1 == "w4" || e.0 > t4),
        "another instance wrote after w4 took over: {:?}",
        &entries[first_t4..]
    );
    for (t, who) in [(t1, "w1"), (t2, "w2"), (t3, "w3"), (t4, "w4")] {
        assert!(entries.iter().any(|e| e.0 == t && e.1 == who), "{who} never wrote in its term {t}");
        assert!(entries.iter().filter(|e| e.0 == t).all(|e| e.1 == who), "two instances wrote under term {t}");
    }
}

/// The `tickTime` the ZooKeeper under test runs with, from its `conf`.
fn zookeeper_tick_ms(zk: &str) -> u64 {
    let conf = e2e_tests::ensemble::four_letter(zk, "conf").expect("ZooKeeper answers `conf`");
    conf.lines()
        .find_map(|l| l.strip_prefix("tickTime="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tickTime in ZooKeeper's conf:\n{conf}"))
}

#[test]
fn scenario_4_active_standby_on_the_coordinator() {
    let dir = TempDir::new("ha-coordinator");
    let (_server, addr) = start_coordinator(&["--tick-time", "500"], dir.path());
    scenario(&addr, dir.path(), 500);
}

#[test]
fn scenario_4_active_standby_on_zookeeper() {
    let dir = TempDir::new("ha-zookeeper");
    let zk = testkit::zookeeper_addr().to_string();
    scenario(&zk, dir.path(), zookeeper_tick_ms(&zk));
}

/// "standby" means "in line": printed once the worker's candidate node
/// exists, so a failover finds it there. A worker that cannot join (its
/// group's directory lets nobody create a candidate) never says it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_only_once_in_line() {
    let dir = TempDir::new("ha-not-in-line");
    let (_server, zk) = start_coordinator(&[], dir.path());
    let root = format!("/{}", testkit::unique("ha"));
    let client = zk_recipes::session::Client::connect(&zk, Duration::from_secs(10), Duration::from_secs(10))
        .await
        .expect("connect");
    let group = format!("{root}/ha/workers");
    zk_recipes::ensure_path(&client.zk, &format!("{root}/ha")).await.expect("ha dir");
    let read_only = zookeeper_async::Acl::read_unsafe().clone();
    client.zk.create(&group, vec![], read_only, zookeeper_async::CreateMode::Persistent).await.expect("group dir");

    let journal = dir.path().join("journal");
    let journal = journal.to_str().expect("utf-8 path");
    let args = ["--zk", &zk, "--root", &root, "--instance", "w1", "--journal", journal, "--group", "workers"];
    let mut w = Proc::spawn("ha-worker", &args, dir.path());
    // It got as far as the election: registered as a service.
    let registered = format!("{root}/services/ha-worker/w1");
    let started = Instant::now();
    while client.zk.exists(&registered, false).await.expect("exists").is_none() {
        assert!(started.elapsed() < Duration::from_secs(10), "ha-worker never registered; its log:\n{}", w.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let said = tokio::task::block_in_place(|| w.try_wait_line("ha-worker standby", Duration::from_secs(3)));
    assert!(said.is_err(), "ha-worker said standby without a candidate node; its log:\n{}", w.log_text());
    assert!(client.zk.get_children(&group, false).await.expect("children").is_empty());
}

/// The coordinator killed -9 and started again on its data, well within the
/// session timeout: the sessions survive, so the active keeps its term. It
/// stops writing while disconnected (suspended), resumes the same term on
/// the same session, and the standby never leads: a server restart costs no
/// failover. (It used to resign on any disconnect, a failover per restart;
/// and a first cut of the suspension hung for ever holding a watch guard.)
#[test]
fn the_active_keeps_its_term_across_a_coordinator_restart() {
    let dir = TempDir::new("ha-restart");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let (mut server, zk) = start_coordinator(&["--data-dir", data], dir.path());
    let root = format!("/{}", testkit::unique("ha"));
    let journal = dir.path().join("journal");
    provision(&zk, &root, dir.path());
    let mut w1 = worker(&zk, &root, &journal, "w1", dir.path());
    let t1 = term(&w1.wait_line("ha-worker active", Duration::from_secs(20)));
    let mut w2 = worker(&zk, &root, &journal, "w2", dir.path());
    w2.wait_line("ha-worker standby", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));

    server.kill9();
    w1.wait_line("ha-worker suspended", Duration::from_secs(5));
    let mut restarted = Proc::spawn("coordinator", &["--listen", &zk, "--data-dir", data], dir.path());
    restarted.wait_line("coordinator listening on", Duration::from_secs(20));
    let resumed = w1.wait_line("ha-worker resumed", Duration::from_secs(SESSION_MS / 1000 + 5));
    assert!(resumed.contains(&format!("term={}", t1.zxid)), "w1 resumed another term: {resumed}");
    // Writing again, in the same term, and nobody else.
    std::thread::sleep(Duration::from_millis(1500));
    let entries = check_journal(&journal);
    let last = entries.last().expect("journal records");
    assert_eq!(last, &(t1, "w1".to_string()), "after the restart the journal is w1's, term {t1}");
    assert!(!w2.log_text().contains("ha-worker active"), "the standby led across a restart:\n{}", w2.log_text());
}

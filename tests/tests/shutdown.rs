//! A service sent SIGTERM exits within 2 s, whatever state its coordination
//! server is in: answering, paused (SIGSTOP: connections open, nothing
//! answered) or gone. Before, an ha-worker whose server was down took over
//! 9 s, waiting on a deregistration nobody could answer.

use std::time::{Duration, Instant};

use e2e_tests::{provision, start_coordinator, start_ha_worker, start_system_b, Proc, TempDir};
use nix::sys::signal::Signal;

const LIMIT: Duration = Duration::from_secs(2);

/// Sends SIGTERM and returns how long the process took to exit.
fn stop(p: &mut Proc) -> Duration {
    let asked = Instant::now();
    p.signal(Signal::SIGTERM);
    let status = p.wait_exit(Duration::from_secs(15));
    let took = asked.elapsed();
    assert!(status.is_some(), "{} did not exit within 15 s of SIGTERM:\n{}", p.name, p.log_text());
    took
}

#[test]
fn services_stop_within_two_seconds_whatever_their_server_does() {
    let dir = TempDir::new("shutdown");
    let (mut server, zk) = start_coordinator(&[], dir.path());
    let root = format!("/{}", testkit::unique("stop"));
    let queue = testkit::broker::queue_name("stop-tasks");
    provision(&zk, &root, dir.path());
    let journal = dir.path().join("journal");
    let mut active = start_ha_worker(&zk, &root, &journal, "w1", 100, 4000, dir.path());
    active.wait_line("ha-worker active", Duration::from_secs(20));
    let mut standby = start_ha_worker(&zk, &root, &journal, "w2", 100, 4000, dir.path());
    standby.wait_line("ha-worker standby", Duration::from_secs(20));
    let mut b = start_system_b(&zk, &root, &queue, &dir.path().join("store"), "b1", 4000, dir.path());

    // The server paused: every request waits for an answer that never comes.
    server.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(300));
    let (active_took, b_took) = (stop(&mut active), stop(&mut b));
    server.signal(Signal::SIGCONT);
    // The server gone: every reconnect is refused.
    server.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let standby_took = stop(&mut standby);
    println!(
        "SIGTERM to exit: active ha-worker {active_took:?} and system-b {b_took:?} with the server paused, \
         standby ha-worker {standby_took:?} with it gone"
    );
    for (who, took) in [("the active ha-worker", active_took), ("system-b", b_took), ("the standby", standby_took)] {
        assert!(took < LIMIT, "{who} took {took:?} to stop");
    }
}

/// The lines of `log` a clean stop must not have.
fn warnings(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect()
}

/// `docker compose stop` stops the pair at once, the active and the
/// standby. The active resigns, the standby's watch fires, and the
/// standby sends the requests of its next campaign step just as its own
/// SIGTERM lands. The stop used to drop that step with its requests in
/// flight; their answers then came back to nobody, and the ZooKeeper
/// client logged `ERROR zookeeper_async::io: Error sending listener
/// event` in a clean stop. The standby also left its candidate node for
/// the session timeout to remove. Both servers, several rounds, since the
/// window is a race.
#[test]
fn a_pair_stopped_at_once_stops_quietly() {
    let dir = TempDir::new("stop-pair");
    let (_coordinator, coordinator) = start_coordinator(&[], dir.path());
    let zookeeper = testkit::zookeeper_addr().to_string();
    for (server, zk) in [("coordinator", coordinator.as_str()), ("zookeeper", zookeeper.as_str())] {
        for round in 0..4 {
            let root = format!("/{}", testkit::unique("stop-pair"));
            let ids = provision(zk, &root, &dir.path().join(format!("{server}-{round}")));
            let journal = dir.path().join(format!("journal-{server}-{round}"));
            let w1 = format!("{server}-{round}-w1");
            let w2 = format!("{server}-{round}-w2");
            let mut active = start_ha_worker(zk, &root, &journal, &w1, 100, 4000, dir.path());
            active.wait_line("ha-worker active", Duration::from_secs(20));
            let mut standby = start_ha_worker(zk, &root, &journal, &w2, 100, 4000, dir.path());
            standby.wait_line("ha-worker standby", Duration::from_secs(20));
            active.signal(Signal::SIGTERM);
            standby.signal(Signal::SIGTERM);
            for (who, p) in [("the active", &mut active), ("the standby", &mut standby)] {
                let status = p.wait_exit(Duration::from_secs(15));
                assert!(status.is_some_and(|s| s.success()), "{who} on {server}: {status:?}\n{}", p.log_text());
                let log = p.log_text();
                assert!(warnings(&log).is_empty(), "{who} on {server}, round {round}: {:#?}", warnings(&log));
            }
            // The standby's candidate went with its closed session: the
            // election is empty at once, not after the session timeout.
            let op = ids.flag("operator");
            let election = e2e_tests::zkctl(&["--zk", zk, &op[0], &op[1], "ls", &format!("{root}/ha/workers")]);
            assert_eq!(election.trim(), "", "candidates left on {server}, round {round}");
        }
    }
}

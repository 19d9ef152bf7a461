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
    let queue = testkit::unique("stop-tasks");
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

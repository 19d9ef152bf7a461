//! Every service's metrics endpoint (`--metrics-listen`), end to end on
//! both servers: real processes, read over HTTP as Prometheus would.
//!
//! - after a kill -9 of the active ha-worker, the new active's metrics say
//!   what its stdout said (active, its term, one failover), and the killed
//!   one's endpoint is gone with it;
//! - after N tasks, system-a counts N done Submits and N latencies, and
//!   the system-b instances' done counters sum to N;
//! - `/health` is 503 while the session is not live (the connection cut,
//!   the session expired) and 200 again after, with the reconnects and the
//!   expiry counted.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::{
    http_get, provision, sample, start_coordinator, start_ha_worker_metered, start_system_a_metered,
    start_system_b_metered, TempDir,
};
use system_a::proto::tasks_client::TasksClient;
use system_a::proto::SubmitRequest;

const SESSION_MS: u64 = 4000;

/// `/metrics` of the service at `addr`.
fn scrape(addr: &str) -> String {
    let (code, body) = http_get(addr, "/metrics").unwrap_or_else(|e| panic!("GET {addr}/metrics: {e}"));
    assert_eq!(code, 200, "GET {addr}/metrics: {body}");
    body
}

/// The value of `series` at `addr`, 0 when absent.
fn value(addr: &str, series: &str) -> f64 {
    sample(&scrape(addr), series).unwrap_or(0.0)
}

/// Waits until `series` at `addr` is `want`, for at most `limit`.
fn wait_value(addr: &str, series: &str, want: f64, limit: Duration) {
    let started = Instant::now();
    loop {
        let body = scrape(addr);
        if sample(&body, series) == Some(want) {
            return;
        }
        assert!(started.elapsed() < limit, "{series} is not {want} after {limit:?}:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `/health` at `addr` answers `code`; returns its body.
fn wait_health(addr: &str, code: u16, limit: Duration) -> String {
    let started = Instant::now();
    loop {
        let got = http_get(addr, "/health").unwrap_or_else(|e| panic!("GET {addr}/health: {e}"));
        if got.0 == code {
            return got.1;
        }
        assert!(started.elapsed() < limit, "/health is still {got:?} after {limit:?}, not {code}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The zxid of an `ha-worker active term=<zxid> epoch=<epoch>` line.
fn term(line: &str) -> i64 {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("term="))
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or_else(|| panic!("no term= in {line:?}"))
}

/// Whether the exposition says `ha_worker_term` is exactly `zxid`: a zxid
/// can be past 2^53 (the coordinator's are), where an f64 would round it.
fn says_term(body: &str, zxid: i64) -> bool {
    body.lines().any(|l| l == format!("ha_worker_term {zxid}"))
}

fn failover(zk: &str, dir: &Path) {
    let root = format!("/{}", testkit::unique("ha-metrics"));
    let journal = dir.join("journal");
    provision(zk, &root, dir);
    let (mut w1, m1) = start_ha_worker_metered(zk, &root, &journal, "w1", 100, SESSION_MS, dir);
    let t1 = term(&w1.wait_line("ha-worker active", Duration::from_secs(20)));
    let (mut w2, m2) = start_ha_worker_metered(zk, &root, &journal, "w2", 100, SESSION_MS, dir);
    w2.wait_line("ha-worker standby", Duration::from_secs(20));

    let first = scrape(&m1);
    assert_eq!(sample(&first, "ha_worker_active"), Some(1.0), "{first}");
    assert!(says_term(&first, t1), "the term gauge is not the printed term {t1}: {first}");
    assert_eq!(sample(&first, "ha_worker_failovers_total"), Some(0.0), "the first term followed nobody: {first}");
    assert_eq!(sample(&first, "zk_session_live"), Some(1.0), "{first}");
    assert_eq!(sample(&first, "zk_session_reconnects_total"), Some(0.0), "the first connect is no reconnect: {first}");
    let standby = scrape(&m2);
    assert_eq!(sample(&standby, "ha_worker_active"), Some(0.0), "{standby}");
    assert_eq!(sample(&standby, "ha_worker_term"), Some(0.0), "{standby}");

    w1.kill9();
    let t2 = term(&w2.wait_line("ha-worker active", Duration::from_millis(SESSION_MS + 5000)));
    let after = scrape(&m2);
    assert_eq!(sample(&after, "ha_worker_active"), Some(1.0), "{after}");
    assert!(says_term(&after, t2), "the term gauge is not the printed term {t2}: {after}");
    assert_eq!(sample(&after, "ha_worker_failovers_total"), Some(1.0), "{after}");
    // The handover ends at the term's first journal write, an interval on.
    wait_value(&m2, "ha_worker_failover_handover_seconds_count", 1.0, Duration::from_secs(5));
    let handover = value(&m2, "ha_worker_failover_handover_seconds_sum");
    println!("handover after kill -9 (from the watch firing to the first write): {handover:.3} s");
    assert!(handover > 0.0 && handover < 5.0, "handover {handover} s");
    // The killed one's endpoint died with it: nothing stale to scrape.
    assert!(http_get(&m1, "/metrics").is_err(), "the killed worker's endpoint still answers");
}

#[test]
fn a_failover_shows_in_the_new_actives_metrics_on_the_coordinator() {
    let dir = TempDir::new("metrics-ha-coordinator");
    let (_server, addr) = start_coordinator(&["--tick-time", "500"], dir.path());
    failover(&addr, dir.path());
}

#[test]
fn a_failover_shows_in_the_new_actives_metrics_on_zookeeper() {
    let dir = TempDir::new("metrics-ha-zookeeper");
    failover(&testkit::zookeeper_addr().to_string(), dir.path());
}

const TASKS: usize = 12;

async fn tasks_counted(zk: &str, dir: &Path) {
    let root = format!("/{}", testkit::unique("sys-metrics"));
    let queue = testkit::broker::queue_name("tasks");
    let store = dir.join("store");
    provision(zk, &root, dir);
    let bs: Vec<_> =
        (1..=2).map(|i| start_system_b_metered(zk, &root, &queue, &store, &format!("b{i}"), SESSION_MS, dir)).collect();
    let (_a, a_addr, a_metrics) = start_system_a_metered(zk, &root, &queue, dir);
    let mut grpc = TasksClient::connect(format!("http://{a_addr}")).await.expect("connect to system-a");
    // Concurrent, over a few entities: both instances get work, and some
    // of it waits for a lock.
    let submits = (0..TASKS).map(|i| {
        let mut g = grpc.clone();
        let entity = format!("acct-{}", i % 3);
        async move { g.submit(SubmitRequest { entity, op: "add".into(), amount: 1, ..Default::default() }).await }
    });
    let answers = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(submits))
        .await
        .expect("every Submit answered in time");
    for a in answers {
        assert_eq!(a.expect("a Submit").into_inner().status, "done");
    }
    // One refused Submit: counted as such, not as done, and no latency.
    let refused = grpc.submit(SubmitRequest { entity: String::new(), ..Default::default() }).await;
    assert!(refused.is_err(), "a Submit without an entity was accepted");

    let a = scrape(&a_metrics);
    let n = TASKS as f64;
    assert_eq!(sample(&a, r#"system_a_submits_total{outcome="done"}"#), Some(n), "{a}");
    assert_eq!(sample(&a, r#"system_a_submits_total{outcome="refused"}"#), Some(1.0), "{a}");
    assert_eq!(sample(&a, r#"system_a_submits_total{outcome="timeout"}"#), Some(0.0), "{a}");
    assert_eq!(sample(&a, "system_a_submit_duration_seconds_count"), Some(n), "{a}");
    assert_eq!(sample(&a, "zk_session_live"), Some(1.0), "{a}");
    // Each step of each Submit timed once (no request id: nothing claimed).
    for (stage, count) in
        [("claim", 0.0), ("outbox_entry", n), ("task_node", n), ("publish", n), ("outbox_delete", n), ("wait", n)]
    {
        let series = format!(r#"system_a_stage_seconds_count{{stage="{stage}"}}"#);
        assert_eq!(sample(&a, &series), Some(count), "{series}: {a}");
    }
    // Every task was confirmed at once: the drain finds the outbox empty.
    wait_value(&a_metrics, "system_a_outbox_entries", 0.0, Duration::from_secs(5));

    // A Submit is answered once the node is written, a moment before
    // system-b counts it: wait for the sum, do not race it.
    let started = Instant::now();
    let done = loop {
        let bodies: Vec<String> = bs.iter().map(|(_, m)| scrape(m)).collect();
        let sum = |series: &str| bodies.iter().map(|b| sample(b, series).unwrap_or(0.0)).sum::<f64>();
        let done = sum(r#"system_b_tasks_total{outcome="done"}"#);
        let stage = |s: &str| sum(&format!(r#"system_b_stage_seconds_count{{stage="{s}"}}"#));
        // The ack is timed after the task is counted.
        if (done == n && stage("ack") == n) || started.elapsed() > Duration::from_secs(5) {
            // Each step of each task timed once; no work was asked for.
            for s in ["read", "lock", "read_again", "fenced_read", "store_apply", "report", "release", "ack"] {
                assert_eq!(stage(s), n, "stage {s}: {bodies:?}");
            }
            assert_eq!(stage("work"), 0.0, "{bodies:?}");
            assert_eq!(sum("system_b_lock_wait_seconds_count"), sum("system_b_lock_hold_seconds_count"));
            assert!(sum("system_b_lock_hold_seconds_count") >= n, "{bodies:?}");
            assert_eq!(sum("system_b_fenced_writes_total"), 0.0, "{bodies:?}");
            break done;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done, n, "the system-b instances' done counters do not sum to the tasks done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_counted_once_on_the_coordinator() {
    let dir = TempDir::new("metrics-tasks-coordinator");
    let (_server, addr) = start_coordinator(&[], dir.path());
    tasks_counted(&addr, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_counted_once_on_zookeeper() {
    let dir = TempDir::new("metrics-tasks-zookeeper");
    tasks_counted(&testkit::zookeeper_addr().to_string(), dir.path()).await;
}

/// Between the worker and `server`, a proxy the test cuts and restores (a
/// partition), and through which it expires the session.
async fn health_follows_the_session(server: std::net::SocketAddr, dir: &Path) {
    let proxy = testkit::proxy::ZkProxy::start(server).await;
    let zk = proxy.connect_string();
    let root = format!("/{}", testkit::unique("health"));
    provision(&server.to_string(), &root, dir);
    let journal = dir.join("journal");
    let (mut w, m) = start_ha_worker_metered(&zk, &root, &journal, "w1", 100, SESSION_MS, dir);
    w.wait_line("ha-worker active", Duration::from_secs(20));
    let body = wait_health(&m, 200, Duration::from_secs(5));
    assert_eq!(body.lines().count(), 1, "{body:?}");

    // Partitioned: the client notices within two thirds of the session
    // timeout, and the service is not healthy while it cannot coordinate.
    proxy.cut();
    let body = wait_health(&m, 503, Duration::from_millis(SESSION_MS + 2000));
    assert_eq!(body.lines().count(), 1, "{body:?}");
    assert_eq!(value(&m, "zk_session_live"), 0.0);
    proxy.restore();
    wait_health(&m, 200, Duration::from_secs(15));
    assert_eq!(value(&m, "zk_session_live"), 1.0);
    assert!(value(&m, "zk_session_reconnects_total") >= 1.0, "{}", scrape(&m));
    // The server may have expired the session during the cut (it can hear
    // nothing for the timeout before the client gives up on the link): an
    // expiry then is right, so the next one is counted from here.
    let expiries = value(&m, "zk_session_expiries_total");

    // Expired: unhealthy until the client has a new session, then healthy,
    // the expiry counted.
    proxy.expire_session().await;
    wait_value(&m, "zk_session_expiries_total", expiries + 1.0, Duration::from_secs(15));
    wait_health(&m, 200, Duration::from_secs(15));
    w.wait_line("ha-worker active", Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_session_on_the_coordinator() {
    let dir = TempDir::new("metrics-health-coordinator");
    let (_server, addr) = start_coordinator(&[], dir.path());
    health_follows_the_session(addr.parse().expect("an address"), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_session_on_zookeeper() {
    let dir = TempDir::new("metrics-health-zookeeper");
    health_follows_the_session(testkit::zookeeper_addr(), dir.path()).await;
}

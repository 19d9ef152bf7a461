//! The coordinator's admin HTTP listener: health for orchestrators,
//! Prometheus metrics under ZooKeeper's `mntr` names, and the four-letter
//! words, checked over real HTTP against a running server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use e2e_tests::{Proc, TempDir};
use zookeeper_async::{Acl, CreateMode, ZooKeeper};

/// One HTTP/1.0 GET; returns (status code, body). HTTP/1.0 so the server
/// closes the connection and the body ends at EOF.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the admin listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (code, body.to_string())
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no metric {name} in:\n{body}"))
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_commands() {
    let dir = TempDir::new("admin-http");
    let mut p = Proc::spawn("coordinator", &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], dir.path());
    let addr = p.wait_line("coordinator listening on", Duration::from_secs(20));
    let admin = p.wait_line("coordinator admin listening on", Duration::from_secs(20));

    assert_eq!(get(&admin, "/health"), (200, "ok".to_string()));
    let (_, before) = get(&admin, "/metrics");
    let znodes_before = metric(&before, "znode_count");

    let zk = tokio::time::timeout(Duration::from_secs(10), ZooKeeper::connect(&addr, Duration::from_secs(10), |_| {}))
        .await
        .expect("connect in time")
        .expect("connect");
    for i in 0..5 {
        zk.create(&format!("/m{i}"), vec![], Acl::open_unsafe().clone(), CreateMode::Ephemeral).await.expect("create");
    }
    zk.exists("/m0", true).await.expect("exists with a watch");

    let (code, after) = get(&admin, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(metric(&after, "znode_count"), znodes_before + 5.0);
    assert_eq!(metric(&after, "ephemerals_count"), 5.0);
    assert_eq!(metric(&after, "watch_count"), 1.0);
    assert!(metric(&after, "num_alive_connections") >= 1.0);
    for name in
        ["avg_latency", "max_latency", "min_latency", "outstanding_requests", "packets_received", "packets_sent"]
    {
        metric(&after, name);
    }
    assert!(after.contains("# TYPE znode_count gauge"), "Prometheus type lines are missing");

    let (code, mntr) = get(&admin, "/commands/mntr");
    assert_eq!(code, 200);
    assert!(mntr.contains("zk_znode_count\t"), "mntr over HTTP:\n{mntr}");
    let (code, _) = get(&admin, "/commands/nope");
    assert_eq!(code, 404, "an unknown command must be a 404, not an empty 200");
}

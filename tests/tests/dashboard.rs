//! The dashboard against both servers: it must show who holds each lock and
//! who waits, which worker is active, and push changes to the page as they
//! happen (Server-Sent Events).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e_tests::{start_coordinator, Proc, TempDir};
use serde_json::Value;
use zookeeper_async::{Acl, CreateMode, ZooKeeper};

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the dashboard");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_string()
}

/// Polls /api/state until `pred` holds (the dashboard refreshes on watches
/// and on a timer), returning the state that satisfied it.
fn state_until(addr: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s: Value = serde_json::from_str(&http_get(addr, "/api/state")).expect("JSON state");
        if pred(&s) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the dashboard never showed {what}; last state: {s:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn mk(zk: &ZooKeeper, path: &str, data: &str, mode: CreateMode) -> String {
    zk.create(path, data.as_bytes().to_vec(), Acl::open_unsafe().clone(), mode).await.expect("create")
}

async fn exercise(zk_addr: &str, log_dir: &std::path::Path) {
    let root = format!("/{}", testkit::unique("dash"));
    let zk =
        tokio::time::timeout(Duration::from_secs(10), ZooKeeper::connect(zk_addr, Duration::from_secs(10), |_| {}))
            .await
            .expect("connect in time")
            .expect("connect");
    for p in ["", "/locks", "/locks/acct-1", "/ha", "/ha/workers", "/config", "/tasks"] {
        mk(&zk, &format!("{root}{p}"), "", CreateMode::Persistent).await;
    }
    mk(&zk, &format!("{root}/locks/acct-1/_c_aaa-lock-"), "b1", CreateMode::EphemeralSequential).await;
    mk(&zk, &format!("{root}/locks/acct-1/_c_bbb-lock-"), "b2", CreateMode::EphemeralSequential).await;
    let active = mk(&zk, &format!("{root}/ha/workers/_c_ccc-n_"), "ha1", CreateMode::EphemeralSequential).await;
    mk(&zk, &format!("{root}/ha/workers/_c_ddd-n_"), "ha2", CreateMode::EphemeralSequential).await;
    mk(&zk, &format!("{root}/tasks/t1"), r#"{"status":"pending"}"#, CreateMode::Persistent).await;

    let mut dash = Proc::spawn("dashboard", &["--zk", zk_addr, "--listen", "127.0.0.1:0", "--root", &root], log_dir);
    let addr = dash.wait_line("dashboard listening on", Duration::from_secs(20));
    let page = http_get(&addr, "/");
    assert!(page.contains("EventSource(\"/events\")"), "the page does not subscribe to live updates");

    let s = state_until(&addr, "the lock holder and the active worker", |s| {
        s["locks"]["acct-1"]["holder"]["data"] == "b1" && s["ha"]["workers"]["active"]["data"] == "ha1"
    });
    assert_eq!(s["locks"]["acct-1"]["waiters"][0]["data"], "b2");
    assert_eq!(s["ha"]["workers"]["standby"][0]["data"], "ha2");
    assert_eq!(s["tasks"]["t1"]["status"], "pending");

    // Open the event stream, then change things: the changes arrive as events.
    let mut events = TcpStream::connect(&addr).expect("connect");
    events.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(events, "GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n").expect("send");
    let mut lines = BufReader::new(events);
    zk.delete(&active, None).await.expect("the active resigns");
    zk.set_data(&format!("{root}/tasks/t1"), br#"{"status":"done","result":7}"#.to_vec(), None).await.expect("set");
    mk(&zk, &format!("{root}/config/system-b"), r#"{"work_ms":3}"#, CreateMode::Persistent).await;
    let start = Instant::now();
    let mut line = String::new();
    loop {
        line.clear();
        lines.read_line(&mut line).expect("an event within 10 s");
        if let Some(data) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
            let s: Value = serde_json::from_str(data.trim()).expect("JSON in the event");
            if s["ha"]["workers"]["active"]["data"] == "ha2"
                && s["tasks"]["t1"]["status"] == "done"
                && s["config"]["system-b"]["work_ms"] == 3
            {
                break;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no event showed the changes");
    }
    let _ = zk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_on_the_coordinator() {
    let dir = TempDir::new("dashboard");
    let (_server, addr) = start_coordinator(&[], dir.path());
    exercise(&addr, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_on_zookeeper() {
    let dir = TempDir::new("dashboard-zk");
    exercise(&testkit::zookeeper_addr().to_string(), dir.path()).await;
}

/// The page itself, in a real browser: Debian's headless Chromium driven by
/// playwright-core (tests/browser). The screenshot is kept as an artifact in
/// target/test-artifacts/dashboard.png.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let dir = TempDir::new("dashboard-browser");
    let (_server, zk_addr) = start_coordinator(&[], dir.path());
    let root = format!("/{}", testkit::unique("browser"));
    let zk =
        tokio::time::timeout(Duration::from_secs(10), ZooKeeper::connect(&zk_addr, Duration::from_secs(10), |_| {}))
            .await
            .expect("connect in time")
            .expect("connect");
    for p in ["", "/locks", "/locks/acct-7", "/ha", "/ha/workers"] {
        mk(&zk, &format!("{root}{p}"), "", CreateMode::Persistent).await;
    }
    mk(&zk, &format!("{root}/locks/acct-7/_c_aaa-lock-"), "system-b-1", CreateMode::EphemeralSequential).await;
    mk(&zk, &format!("{root}/locks/acct-7/_c_bbb-lock-"), "system-b-2", CreateMode::EphemeralSequential).await;
    mk(&zk, &format!("{root}/ha/workers/_c_ccc-n_"), "ha-worker-1", CreateMode::EphemeralSequential).await;
    mk(&zk, &format!("{root}/ha/workers/_c_ddd-n_"), "ha-worker-2", CreateMode::EphemeralSequential).await;
    let mut dash =
        Proc::spawn("dashboard", &["--zk", &zk_addr, "--listen", "127.0.0.1:0", "--root", &root], dir.path());
    let addr = dash.wait_line("dashboard listening on", Duration::from_secs(20));

    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run scripts/setup.sh (Debian package chromium)"
    );
    if !browser_dir.join("node_modules/playwright-core").exists() {
        let ci = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&browser_dir)
            .status()
            .expect("run npm (Debian package npm; scripts/setup.sh installs it)");
        assert!(ci.success(), "npm ci in tests/browser failed");
    }
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("create target/test-artifacts");
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg("check-dashboard.mjs")
            .arg(format!("http://{addr}/"))
            .arg(&shot)
            .args(["system-b-1", "ha-worker-1"])
            .current_dir(&browser_dir)
            .output()
            .expect("run node")
    })
    .await
    .expect("the browser check");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("dashboard ok"),
        "the browser did not see the holder and the active worker:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(artifacts.join("dashboard.png")).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "the screenshot is not a real page");
}

//! The dashboard against both servers: it must show who holds each lock and
//! who waits, which worker is active, which sessions are open, and push
//! changes to the page as they happen (Server-Sent Events). Sessions come
//! from the coordinator's gRPC admin API, and from `cons` on Apache
//! ZooKeeper (whose test config whitelists every four-letter word).

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

/// The session (as the page shows it, `0x…`) listed in the state, if any.
fn session<'a>(s: &'a Value, id: &Value) -> Option<&'a Value> {
    s["sessions"]["list"].as_array()?.iter().find(|x| &x["id"] == id)
}

/// The admin token file shared by the coordinators and dashboards of this
/// test binary (the session list is for token holders only).
fn token_file() -> &'static str {
    static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("dashboard-admin-token-{}", std::process::id()));
        std::fs::write(&path, "dashboard-test-token-0123456789abcdef\n").expect("write the token file");
        path.to_string_lossy().into_owned()
    })
}

/// The dashboard's flags: the coordinator's admin address and token when
/// there is one.
fn dashboard_args<'a>(zk: &'a str, root: &'a str, admin: Option<&'a str>) -> Vec<&'a str> {
    let mut args = vec!["--zk", zk, "--listen", "127.0.0.1:0", "--root", root];
    if let Some(a) = admin {
        args.extend(["--admin", a, "--admin-token-file", token_file()]);
    }
    args
}

async fn exercise(zk_addr: &str, admin: Option<&str>, log_dir: &std::path::Path) {
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

    let mut dash = Proc::spawn("dashboard", &dashboard_args(zk_addr, &root, admin), log_dir);
    let addr = dash.wait_line("dashboard listening on", Duration::from_secs(20));
    let page = http_get(&addr, "/");
    assert!(page.contains("EventSource(\"/events\")"), "the page does not subscribe to live updates");

    let s = state_until(&addr, "the lock holder and the active worker", |s| {
        s["locks"]["acct-1"]["holder"]["data"] == "b1" && s["ha"]["workers"]["active"]["data"] == "ha1"
    });
    assert_eq!(s["locks"]["acct-1"]["waiters"][0]["data"], "b2");
    assert_eq!(s["ha"]["workers"]["standby"][0]["data"], "ha2");
    assert_eq!(s["tasks"]["t1"]["status"], "pending");

    // The session holding those ephemerals is listed (sessions refresh on
    // the poll: they have no watches).
    let owner = s["locks"]["acct-1"]["holder"]["session"].clone();
    let s = state_until(&addr, "the holder's session", |s| session(s, &owner).is_some());
    let mine = session(&s, &owner).expect("listed");
    assert!(mine["timeout_ms"].as_u64().is_some_and(|t| t >= 4000), "{mine}");
    assert!(mine["remote"].as_str().is_some_and(|r| r.starts_with("127.0.0.1:")), "{mine}");
    if admin.is_some() {
        assert_eq!(s["sessions"]["source"], "admin API");
        assert_eq!(mine["ephemerals"], 4, "two lock nodes and two election nodes");
    } else {
        assert_eq!(s["sessions"]["source"], "4lw cons");
    }

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
    let (_server, addr, admin) = coordinator_with_admin(dir.path());
    exercise(&addr, Some(&admin), dir.path()).await;
}

fn coordinator_with_admin(dir: &std::path::Path) -> (Proc, String, String) {
    let (mut server, addr) =
        start_coordinator(&["--admin-listen", "127.0.0.1:0", "--admin-token-file", token_file()], dir);
    let admin = server.wait_line("coordinator admin listening on", Duration::from_secs(20));
    (server, addr, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_on_zookeeper() {
    let dir = TempDir::new("dashboard-zk");
    exercise(&testkit::zookeeper_addr().to_string(), None, dir.path()).await;
}

/// The page itself, in a real browser: Debian's headless Chromium driven by
/// playwright-core (tests/browser). The screenshots are kept as artifacts
/// in target/test-artifacts/.
async fn in_a_browser(zk_addr: &str, admin: Option<&str>, shot_name: &str, log_dir: &std::path::Path) {
    // Checked first, so a machine without them fails at once and says why.
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run scripts/setup.sh (Debian package chromium)"
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: run scripts/setup.sh (Debian packages nodejs and npm)"
    );
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    if !browser_dir.join("node_modules/playwright-core").exists() {
        let ci = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&browser_dir)
            .status()
            .expect("run npm (Debian package npm; scripts/setup.sh installs it)");
        assert!(ci.success(), "npm ci in tests/browser failed");
    }

    let root = format!("/{}", testkit::unique("browser"));
    let zk =
        tokio::time::timeout(Duration::from_secs(10), ZooKeeper::connect(zk_addr, Duration::from_secs(10), |_| {}))
            .await
            .expect("connect in time")
            .expect("connect");
    for p in ["", "/locks", "/locks/acct-7", "/ha", "/ha/workers"] {
        mk(&zk, &format!("{root}{p}"), "", CreateMode::Persistent).await;
    }
    let holder =
        mk(&zk, &format!("{root}/locks/acct-7/_c_aaa-lock-"), "system-b-1", CreateMode::EphemeralSequential).await;
    mk(&zk, &format!("{root}/locks/acct-7/_c_bbb-lock-"), "system-b-2", CreateMode::EphemeralSequential).await;
    mk(&zk, &format!("{root}/ha/workers/_c_ccc-n_"), "ha-worker-1", CreateMode::EphemeralSequential).await;
    mk(&zk, &format!("{root}/ha/workers/_c_ddd-n_"), "ha-worker-2", CreateMode::EphemeralSequential).await;
    let owner = tokio::time::timeout(Duration::from_secs(10), zk.exists(&holder, false))
        .await
        .expect("exists in time")
        .expect("exists")
        .expect("the holder's node")
        .ephemeral_owner;
    let mut dash = Proc::spawn("dashboard", &dashboard_args(zk_addr, &root, admin), log_dir);
    let addr = dash.wait_line("dashboard listening on", Duration::from_secs(20));

    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("create target/test-artifacts");
    let shot = artifacts.join(shot_name);
    let _ = std::fs::remove_file(&shot);
    let shot2 = shot.clone();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("node")
                .arg("check-dashboard.mjs")
                .arg(format!("http://{addr}/"))
                .arg(&shot2)
                .args(["system-b-1", "ha-worker-1", &format!("{owner:#x}")])
                .current_dir(&browser_dir)
                .output()
                .expect("run node")
        }),
    )
    .await
    .expect("the browser check finished within 90 s")
    .expect("the browser check");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("dashboard ok"),
        "the browser did not see the holder, the active worker and the session:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "the screenshot is not a real page");
    let _ = zk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let dir = TempDir::new("dashboard-browser");
    let (_server, zk_addr, admin) = coordinator_with_admin(dir.path());
    in_a_browser(&zk_addr, Some(&admin), "dashboard.png", dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser_on_zookeeper() {
    let dir = TempDir::new("dashboard-browser-zk");
    in_a_browser(&testkit::zookeeper_addr().to_string(), None, "dashboard-zookeeper.png", dir.path()).await;
}

/// On a tree with ACLs, an anonymous dashboard shows what anyone may read
/// and names each node it may not, in one line ("not allowed: <path>
/// needs ..."), on the page and once in its log: never a failed refresh or
/// a stack trace. With its own identity it sees everything.
async fn refusals(zk_addr: &str, log_dir: &std::path::Path) {
    let root = format!("/{}", testkit::unique("dash-acl"));
    let ids = e2e_tests::provision(zk_addr, &root, log_dir);
    let mut anon = Proc::spawn("dashboard", &dashboard_args(zk_addr, &root, None), log_dir);
    let addr = anon.wait_line("dashboard listening on", Duration::from_secs(20));
    let line = format!("not allowed: {root}/tasks needs the system-a or system-b identity");
    let s =
        state_until(&addr, "the refusal", |s| s["denied"].as_array().is_some_and(|d| d.contains(&line.clone().into())));
    assert!(s["services"].as_object().is_some_and(|m| m.contains_key("system-b")), "readable parts still show: {s:#}");
    let started = Instant::now();
    while !anon.log_text().contains(&line) {
        assert!(started.elapsed() < Duration::from_secs(10), "the log never said {line:?}:\n{}", anon.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = anon.log_text();
    assert_eq!(log.matches(&line).count(), 1, "each refusal is logged once:\n{log}");
    assert!(!log.contains("panicked") && !log.contains("NoAuth"), "a refusal is one plain line:\n{log}");

    let creds = ids.flag("dashboard");
    let mut args = dashboard_args(zk_addr, &root, None);
    args.extend([creds[0].as_str(), creds[1].as_str()]);
    let mut own = Proc::spawn("dashboard", &args, log_dir);
    let addr = own.wait_line("dashboard listening on", Duration::from_secs(20));
    state_until(&addr, "everything, with its own identity", |s| {
        s["denied"].as_array().is_some_and(|d| d.is_empty()) && s["config"].as_object().is_some_and(|c| c.len() == 3)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_on_the_coordinator() {
    let dir = TempDir::new("dashboard-acl");
    let (_server, addr) = start_coordinator(&[], dir.path());
    refusals(&addr, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_on_zookeeper() {
    let dir = TempDir::new("dashboard-acl-zk");
    refusals(&testkit::zookeeper_addr().to_string(), dir.path()).await;
}

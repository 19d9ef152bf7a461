//! The dashboard against both servers: it must show who holds each lock and
//! who waits, which worker is active, which sessions are open, and push
//! changes to the page as they happen (Server-Sent Events). Sessions come
//! from the coordinator's gRPC admin API, and from `cons` on Apache
//! ZooKeeper (whose test config whitelists every four-letter word).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e_tests::{start_coordinator, Proc, TempDir};
use serde_json::Value;
use zookeeper_async::{Acl, CreateMode, ZooKeeper};

fn http_get(addr: &str, path: &str) -> String {
    let (code, body) = e2e_tests::http_get(addr, path).expect("GET from the dashboard");
    assert_eq!(code, 200, "GET {path}: {body}");
    body
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
    // Checked first: a machine without a browser fails at once, saying why.
    e2e_tests::browser::ready();
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

    let (shot_name, args) =
        (shot_name.to_string(), vec!["system-b-1".into(), "ha-worker-1".into(), format!("{owner:#x}")]);
    tokio::task::spawn_blocking(move || {
        e2e_tests::browser::check(
            "check-dashboard.mjs",
            &format!("http://{addr}/"),
            &shot_name,
            &args,
            "dashboard ok",
            "the holder, the active worker and the session",
        )
    })
    .await
    .expect("the browser check");
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

/// Polls /api/history until an event matches `pred`, returning it.
fn event_until(addr: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let h: Value = serde_json::from_str(&http_get(addr, "/api/history")).expect("JSON history");
        if let Some(e) = h["events"].as_array().and_then(|list| list.iter().find(|e| pred(e))) {
            return e.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the history never showed {what}; last history: {h:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An event of `kind` whose `field` is `value`.
fn is(e: &Value, kind: &str, field: &str, value: &str) -> bool {
    e["kind"] == kind && e[field] == value
}

/// What a drill did, for the browser to look for.
struct Drilled {
    /// The session that registered b1 and then closed.
    closed_session: String,
}

/// A failure drill driven through ZooKeeper itself while the dashboard
/// watches, checking after each step that /api/history tells it with the
/// right fields: a lock handed over by deleting its holder, then freed; an
/// HA active resigning, a new term, a gap, another term; an instance's
/// fencing refusal; a task pending → done; a config write and each
/// instance reporting it applied; an instance and its session going away.
/// `pace` is waited between steps, so that a screenshot spreads them out as
/// a real drill would.
async fn drill(zk: &ZooKeeper, zk_addr: &str, root: &str, addr: &str, pace: Duration) -> Drilled {
    let step = || tokio::time::sleep(pace);
    let set = |path: String, data: String| async move {
        tokio::time::timeout(Duration::from_secs(10), zk.set_data(&path, data.into_bytes(), None))
            .await
            .expect("set in time")
            .expect("set")
    };
    let stat = |path: String| async move {
        tokio::time::timeout(Duration::from_secs(10), zk.exists(&path, false))
            .await
            .expect("exists in time")
            .expect("exists")
            .expect("the node exists")
    };

    // The lock: b1 holds, b2 waits; b1's node goes, b2 holds; b2's goes, free.
    let b1 = mk(zk, &format!("{root}/locks/acct-1/_c_aaa-lock-"), "b1", CreateMode::EphemeralSequential).await;
    let b2 = mk(zk, &format!("{root}/locks/acct-1/_c_bbb-lock-"), "b2", CreateMode::EphemeralSequential).await;
    let (b1_stat, b2_stat) = (stat(b1.clone()).await, stat(b2.clone()).await);
    let e = event_until(addr, "b1's grant", |e| is(e, "grant", "holder", "b1"));
    assert_eq!(e["entity"], "acct-1");
    assert_eq!(e["token"], format!("{}@3", b1_stat.czxid), "token = czxid@epoch of /fencing");
    assert_eq!(e["t"], b1_stat.ctime, "a holder that won at once was granted when its node was made");
    step().await;
    zk.delete(&b1, None).await.expect("b1 lets go");
    let e = event_until(addr, "b2's grant", |e| is(e, "grant", "holder", "b2"));
    assert_eq!((e["entity"].as_str(), e["token"].as_str()), (Some("acct-1"), Some(&*format!("{}@3", b2_stat.czxid))));
    step().await;
    zk.delete(&b2, None).await.expect("b2 lets go");
    let e = event_until(addr, "the release", |e| is(e, "release", "entity", "acct-1"));
    assert_eq!(e["holder"], "b2");

    // HA: ha1 active, ha2 standby; ha1 resigns; ha2 goes too (a gap); ha3.
    step().await;
    let ha1 = mk(zk, &format!("{root}/ha/workers/_c_ccc-n_"), "ha1", CreateMode::EphemeralSequential).await;
    let ha2 = mk(zk, &format!("{root}/ha/workers/_c_ddd-n_"), "ha2", CreateMode::EphemeralSequential).await;
    let ha2_stat = stat(ha2.clone()).await;
    event_until(addr, "ha1's term", |e| is(e, "term", "who", "ha1"));
    step().await;
    zk.delete(&ha1, None).await.expect("ha1 resigns");
    let e = event_until(addr, "ha2's term", |e| is(e, "term", "who", "ha2"));
    assert_eq!((e["group"].as_str(), e["term"].as_str()), (Some("workers"), Some(&*format!("{}@3", ha2_stat.czxid))));
    step().await;
    zk.delete(&ha2, None).await.expect("ha2 resigns");
    let e = event_until(addr, "the gap", |e| is(e, "gap", "group", "workers"));
    assert_eq!(e["who"], "ha2");
    step().await;
    mk(zk, &format!("{root}/ha/workers/_c_eee-n_"), "ha3", CreateMode::EphemeralSequential).await;
    event_until(addr, "ha3's term", |e| is(e, "term", "who", "ha3"));

    // Registrations: b1 on a session of its own (closed at the end), b2.
    step().await;
    let other =
        tokio::time::timeout(Duration::from_secs(10), ZooKeeper::connect(zk_addr, Duration::from_secs(10), |_| {}))
            .await
            .expect("connect in time")
            .expect("connect");
    let reg = |i: &str| format!("{root}/services/system-b/{i}");
    mk(&other, &reg("b1"), "{}", CreateMode::Ephemeral).await;
    mk(zk, &reg("b2"), "{}", CreateMode::Ephemeral).await;
    let owner = format!("{:#x}", stat(reg("b1")).await.ephemeral_owner);
    let e = event_until(addr, "b1 up", |e| is(e, "up", "instance", "b1"));
    assert_eq!((e["service"].as_str(), e["session"].as_str()), (Some("system-b"), Some(&*owner)));
    event_until(addr, "b2 up", |e| is(e, "up", "instance", "b2"));
    // Sessions refresh on the poll (they have no watches).
    event_until(addr, "b1's session opening", |e| is(e, "session", "id", &owner) && e["what"] == "opened");

    // b1's write refused by fencing: its registration's count grows.
    let fenced = r#"{"fenced":{"count":1,"what":"store acct-1","token":"5@3","newer":"9@3"}}"#;
    step().await;
    let f_stat = set(reg("b1"), fenced.to_string()).await;
    let e = event_until(addr, "b1's refusal", |e| is(e, "fenced", "instance", "b1"));
    assert_eq!((e["token"].as_str(), e["newer"].as_str(), e["count"].as_i64()), (Some("5@3"), Some("9@3"), Some(1)));
    assert_eq!((e["what"].as_str(), e["t"].as_i64()), (Some("store acct-1"), Some(f_stat.mtime)));

    // A task pending → done: latency on the server's clock.
    step().await;
    let task = format!("{root}/tasks/t1");
    mk(
        zk,
        &task,
        r#"{"version":1,"status":"pending","entity":"acct-1","op":"add","amount":1}"#,
        CreateMode::Persistent,
    )
    .await;
    // Seen pending first: the done node names no entity, the pending one did.
    state_until(addr, "t1 pending", |s| s["tasks"]["t1"]["status"] == "pending");
    tokio::time::sleep(Duration::from_millis(120)).await;
    let done =
        set(task.clone(), r#"{"version":1,"status":"done","value":1,"worker":"b2","token":7,"epoch":3}"#.into()).await;
    let e = event_until(addr, "t1 done", |e| is(e, "task", "id", "t1"));
    assert_eq!(e["latency_ms"], done.mtime - done.ctime);
    assert!(e["latency_ms"].as_i64().is_some_and(|l| l >= 100), "{e}");
    assert_eq!(
        (e["status"].as_str(), e["worker"].as_str(), e["entity"].as_str()),
        (Some("done"), Some("b2"), Some("acct-1"))
    );
    assert_eq!(e["t"], done.mtime);

    // Config written, then each instance reports the version it applied.
    step().await;
    let written = set(format!("{root}/config/system-b"), r#"{"work_ms":2}"#.into()).await;
    // Versions are decimal strings: a zxid passes what JavaScript holds.
    let v = written.mzxid.to_string();
    let e =
        event_until(addr, "the config write", |e| is(e, "config-write", "service", "system-b") && e["version"] == v);
    assert_eq!(e["t"], written.mtime);
    step().await;
    let b1_applied = set(
        reg("b1"),
        format!(r#"{{"config_version":{v},"fenced":{{"count":1,"what":"store acct-1","token":"5@3","newer":"9@3"}}}}"#),
    )
    .await;
    step().await;
    let b2_applied = set(reg("b2"), format!(r#"{{"config_version":{v}}}"#)).await;
    for (i, applied) in [("b1", b1_applied), ("b2", b2_applied)] {
        let e =
            event_until(addr, &format!("{i} applying {v}"), |e| is(e, "config", "instance", i) && e["version"] == *v);
        assert_eq!((e["service"].as_str(), e["t"].as_i64()), (Some("system-b"), Some(applied.mtime)));
    }

    // b1's session closes: its registration goes, and its session.
    step().await;
    other.close().await.expect("close b1's session");
    event_until(addr, "b1 down", |e| is(e, "down", "instance", "b1"));
    event_until(addr, "b1's session closing", |e| is(e, "session", "id", &owner) && e["what"] == "closed");

    // The same refusal is not told twice, and b1's config report came once.
    let h: Value = serde_json::from_str(&http_get(addr, "/api/history")).expect("JSON history");
    let events = h["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.iter().filter(|e| is(e, "fenced", "instance", "b1")).count(), 1, "{h:#}");
    assert_eq!(events.iter().filter(|e| is(e, "config", "instance", "b1")).count(), 1, "{h:#}");
    assert_eq!(h["window_ms"], 600_000);
    Drilled { closed_session: owner }
}

/// The tree a drill runs in, laid out before the dashboard starts; the
/// fencing epoch is 3, so every token reads `czxid@3`.
async fn drill_tree(zk: &ZooKeeper, root: &str) {
    for p in
        ["", "/locks", "/locks/acct-1", "/ha", "/ha/workers", "/config", "/services", "/services/system-b", "/tasks"]
    {
        mk(zk, &format!("{root}{p}"), "", CreateMode::Persistent).await;
    }
    mk(zk, &format!("{root}/config/system-b"), r#"{"work_ms":1}"#, CreateMode::Persistent).await;
    mk(zk, &format!("{root}/fencing"), "3", CreateMode::Persistent).await;
}

async fn connect(zk_addr: &str) -> ZooKeeper {
    tokio::time::timeout(Duration::from_secs(10), ZooKeeper::connect(zk_addr, Duration::from_secs(10), |_| {}))
        .await
        .expect("connect in time")
        .expect("connect")
}

async fn timeline(zk_addr: &str, admin: Option<&str>, log_dir: &std::path::Path) {
    let root = format!("/{}", testkit::unique("timeline"));
    let zk = connect(zk_addr).await;
    drill_tree(&zk, &root).await;
    let mut dash = Proc::spawn("dashboard", &dashboard_args(zk_addr, &root, admin), log_dir);
    let addr = dash.wait_line("dashboard listening on", Duration::from_secs(20));
    state_until(&addr, "the first snapshot", |s| s["config"]["system-b"]["work_ms"] == 1);
    drill(&zk, zk_addr, &root, &addr, Duration::ZERO).await;

    // Over SSE: the whole history first, then only what is new.
    let mut events = TcpStream::connect(&addr).expect("connect");
    events.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(events, "GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n").expect("send");
    let mut lines = BufReader::new(events);
    let mut next_event = || {
        let mut kind = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            lines.read_line(&mut line).expect("an SSE line within 10 s");
            let l = line.trim_end();
            if let Some(k) = l.strip_prefix("event:") {
                kind = k.trim().to_string();
            } else if let Some(d) = l.strip_prefix("data:") {
                return (kind.clone(), serde_json::from_str::<Value>(d.trim()).expect("JSON in an SSE event"));
            }
        }
    };
    let (kind, _) = next_event();
    assert_eq!(kind, "state");
    let (kind, whole) = next_event();
    assert_eq!(kind, "history", "the whole history follows the state");
    let all = whole["events"].as_array().cloned().unwrap_or_default();
    assert!(all.iter().any(|e| is(e, "fenced", "instance", "b1")) && all.iter().any(|e| is(e, "term", "who", "ha3")));
    let last = whole["last_seq"].as_u64().expect("last_seq");
    let ha3 = zk.get_children(&format!("{root}/ha/workers"), false).await.expect("the candidates");
    zk.delete(&format!("{root}/ha/workers/{}", ha3[0]), None).await.expect("ha3 resigns");
    let start = Instant::now();
    loop {
        let (kind, doc) = next_event();
        if kind == "timeline" {
            let new = doc["events"].as_array().cloned().unwrap_or_default();
            assert!(new.iter().all(|e| e["seq"].as_u64() > Some(last)), "a delta repeats nothing: {doc:#}");
            if new.iter().any(|e| is(e, "gap", "who", "ha3")) {
                break;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no timeline event told ha3's resignation");
    }
    let _ = zk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_on_the_coordinator() {
    let dir = TempDir::new("dashboard-timeline");
    let (_server, addr, admin) = coordinator_with_admin(dir.path());
    timeline(&addr, Some(&admin), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_on_zookeeper() {
    let dir = TempDir::new("dashboard-timeline-zk");
    timeline(&testkit::zookeeper_addr().to_string(), None, dir.path()).await;
}

/// Runs tests/browser/check-timeline.mjs (see `e2e_tests::browser`).
async fn timeline_drawn(url: String, shot_name: &str, expect: Vec<String>) {
    let shot_name = shot_name.to_string();
    tokio::task::spawn_blocking(move || e2e_tests::browser::timeline_drawn(&url, &shot_name, &expect))
        .await
        .expect("the browser check");
}

async fn timeline_in_a_browser(zk_addr: &str, admin: Option<&str>, shot_name: &str, log_dir: &std::path::Path) {
    e2e_tests::browser::ready();
    let root = format!("/{}", testkit::unique("timeline-browser"));
    let zk = connect(zk_addr).await;
    drill_tree(&zk, &root).await;
    let mut dash = Proc::spawn("dashboard", &dashboard_args(zk_addr, &root, admin), log_dir);
    let addr = dash.wait_line("dashboard listening on", Duration::from_secs(20));
    state_until(&addr, "the first snapshot", |s| s["config"]["system-b"]["work_ms"] == 1);
    let drilled = drill(&zk, zk_addr, &root, &addr, Duration::from_millis(700)).await;
    let expect: Vec<String> = [
        "grant:acct-1",
        "release:acct-1",
        "term:ha2",
        "gap:workers",
        "term:ha3",
        "fenced:b1",
        "config:b1",
        "config:b2",
        "config-write:system-b",
        "up:b2",
        "down:b1",
        "latency:t1",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("session:{}", drilled.closed_session)])
    .collect();
    timeline_drawn(format!("http://{addr}/"), shot_name, expect).await;
    let _ = zk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_in_a_real_browser() {
    let dir = TempDir::new("dashboard-timeline-browser");
    let (_server, zk_addr, admin) = coordinator_with_admin(dir.path());
    timeline_in_a_browser(&zk_addr, Some(&admin), "dashboard-timeline.png", dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_in_a_real_browser_on_zookeeper() {
    let dir = TempDir::new("dashboard-timeline-browser-zk");
    timeline_in_a_browser(&testkit::zookeeper_addr().to_string(), None, "dashboard-timeline-zookeeper.png", dir.path())
        .await;
}

//! The coordinator's gRPC admin API, called with a tonic client over the
//! admin listener of a running coordinator process, while zookeeper-async
//! clients use it: each RPC's answer is checked against what the clients
//! did, and the drills (expire, close, drop the connection) against what
//! the clients then observe.
//!
//! Coordinator only: Apache ZooKeeper has no such API (its JMX beans are
//! the nearest thing).

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use admin_api::admin_client::AdminClient;
use admin_api::*;
use e2e_tests::{Proc, TempDir};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use zookeeper_async::{Acl, CreateMode, WatchedEvent, WatchedEventType, ZkState, ZooKeeper};

const T: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f).await.unwrap_or_else(|_| panic!("{what} took longer than {T:?}"))
}

/// A client whose state changes are recorded, so the test can see what it
/// observed (zookeeper-async reports an expired session as NotConnected).
async fn client(addr: &str) -> (ZooKeeper, Arc<Mutex<Vec<ZkState>>>) {
    let zk = within("connect", ZooKeeper::connect(addr, Duration::from_secs(10), |_: WatchedEvent| {}))
        .await
        .expect("connect");
    let states = Arc::new(Mutex::new(Vec::new()));
    let s = states.clone();
    zk.add_listener(move |st| s.lock().push(st));
    (zk, states)
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The admin token every server in this file is started with.
const TOKEN: &str = "test-admin-token-0123456789abcdef";

type Authed = AdminClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` (when there is one) to each call.
#[derive(Clone)]
struct Bearer(Option<&'static str>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = self.0 {
            req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("ASCII"));
        }
        Ok(req)
    }
}

async fn admin_as(addr: &str, token: Option<&'static str>) -> Authed {
    let channel = within("admin connect", Channel::from_shared(format!("http://{addr}")).expect("uri").connect())
        .await
        .expect("connect to the admin API");
    AdminClient::with_interceptor(channel, Bearer(token))
}

/// A client holding the token.
async fn admin(addr: &str) -> Authed {
    admin_as(addr, Some(TOKEN)).await
}

/// One HTTP/1.0 GET: the whole response, head and body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the admin listener");
    s.set_read_timeout(Some(T)).expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the response");
    raw
}

/// A coordinator with the admin listener and [`TOKEN`] (from the
/// environment, as compose passes it).
fn start(args: &[&str], dir: &std::path::Path) -> (Proc, String, String) {
    start_with_env(args, &[("COORDINATOR_ADMIN_TOKEN", TOKEN)], dir)
}

fn start_with_env(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> (Proc, String, String) {
    let mut all = vec!["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut p = Proc::spawn_with_env("coordinator", &all, env, dir);
    let addr = p.wait_line("coordinator listening on", T);
    let admin = p.wait_line("coordinator admin listening on", T);
    (p, addr, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)] // NotConnected is how zookeeper-async 5 reports an expired session.
async fn every_rpc_against_a_running_server() {
    let dir = TempDir::new("admin-grpc");
    let data = dir.path().join("data");
    let data_arg = data.to_string_lossy().to_string();
    let (_server, addr, admin_addr) = start(&["--data-dir", &data_arg], dir.path());
    let mut api = admin(&admin_addr).await;

    let before =
        within("ServerStats", api.server_stats(ServerStatsRequest {})).await.expect("ServerStats").into_inner();
    assert!(before.version.starts_with("3.8.0-coordinator"), "version: {}", before.version);
    assert_eq!(before.server_state, "standalone");

    // a: the session to be drilled; b: a bystander watching a's ephemeral.
    let root = format!("/{}", testkit::unique("admin"));
    let (a, a_states) = client(&addr).await;
    let (b, _) = client(&addr).await;
    let open = Acl::open_unsafe().clone();
    within("create", a.create(&root, b"r".to_vec(), open.clone(), CreateMode::Persistent)).await.expect("root");
    let eph = format!("{root}/a-eph");
    within("create", a.create(&eph, b"owned by a".to_vec(), open.clone(), CreateMode::Ephemeral)).await.expect("eph");
    let a_id = within("exists", a.exists(&eph, false)).await.expect("exists").expect("the node").ephemeral_owner;
    let (fired_tx, mut fired) = tokio::sync::mpsc::unbounded_channel();
    within("watch", b.exists_w(&eph, move |e| drop(fired_tx.send(e)))).await.expect("b watches a's node");

    // ServerStats: the same numbers as mntr, moved by what the clients did.
    let stats = within("ServerStats", api.server_stats(ServerStatsRequest {})).await.expect("ServerStats").into_inner();
    assert_eq!(stats.znode_count, before.znode_count + 2);
    assert_eq!(stats.ephemerals_count, 1);
    assert_eq!(stats.watch_count, 1);
    assert!(stats.num_alive_connections >= 2 && stats.global_sessions >= 2, "{stats:?}");
    assert!(stats.packets_received > before.packets_received && stats.last_zxid > before.last_zxid);
    // The Prometheus endpoint on the same port reports the same numbers
    // under the same names (nothing changes in between: the clients idle).
    let metrics = http_get(&admin_addr, "/metrics");
    let metric = |name: &str| -> u64 {
        let line = metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} ")));
        line.unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}")).parse().expect("a whole number")
    };
    assert_eq!(metric("znode_count"), stats.znode_count);
    assert_eq!(metric("ephemerals_count"), stats.ephemerals_count);
    assert_eq!(metric("watch_count"), stats.watch_count);
    assert_eq!(metric("global_sessions"), stats.global_sessions);

    // ListSessions: a is there, connected, owning one ephemeral.
    let sessions = within("ListSessions", api.list_sessions(ListSessionsRequest {})).await.expect("ok").into_inner();
    let mine = sessions.sessions.iter().find(|s| s.session_id == a_id).expect("a's session is listed");
    assert_eq!(mine.ephemerals_count, 1);
    assert!(mine.remote_addr.starts_with("127.0.0.1:"), "remote addr: {:?}", mine.remote_addr);
    assert!(mine.timeout_ms >= 4000 && !mine.closing, "{mine:?}");

    // ListTree: the root and its child, with stats (and data when asked).
    let req = ListTreeRequest { path: root.clone(), depth: 1, limit: 0, include_data: true };
    let tree = within("ListTree", api.list_tree(req)).await.expect("ListTree").into_inner();
    let paths: Vec<&str> = tree.nodes.iter().map(|n| n.path.as_str()).collect();
    assert_eq!(paths, [root.as_str(), eph.as_str()]);
    assert_eq!((tree.nodes[0].num_children, tree.nodes[0].depth), (1, 0));
    assert_eq!((tree.nodes[1].ephemeral_owner, tree.nodes[1].depth), (a_id, 1));
    assert_eq!(tree.nodes[1].data, b"owned by a");
    assert!(!tree.truncated);
    let req = ListTreeRequest { path: root.clone(), depth: 0, limit: 0, include_data: false };
    let tree = within("ListTree", api.list_tree(req)).await.expect("ListTree").into_inner();
    assert_eq!(tree.nodes.len(), 1, "depth 0 is the node alone");
    assert!(tree.nodes[0].data.is_empty(), "no data unless asked");
    let req = ListTreeRequest { path: "/".into(), depth: 100, limit: 2, include_data: false };
    let tree = within("ListTree", api.list_tree(req)).await.expect("ListTree").into_inner();
    assert_eq!((tree.nodes.len(), tree.truncated), (2, true));
    let missing = ListTreeRequest { path: format!("{root}/nope"), ..Default::default() };
    let err = within("ListTree", api.list_tree(missing)).await.expect_err("no such node");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let bad = ListTreeRequest { path: "no-slash".into(), ..Default::default() };
    let err = within("ListTree", api.list_tree(bad)).await.expect_err("a bad path");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // ListWatches: b's exists watch, by path and by session.
    let req = ListWatchesRequest { path: root.clone(), session_id: 0 };
    let watches = within("ListWatches", api.list_watches(req)).await.expect("ok").into_inner().watches;
    assert_eq!(watches.len(), 1, "{watches:?}");
    assert_eq!(
        (watches[0].path.as_str(), watches[0].kind.as_str(), watches[0].mode.as_str()),
        (eph.as_str(), "data", "standard")
    );
    let b_id = watches[0].session_id;
    assert!(b_id != 0 && b_id != a_id);
    let req = ListWatchesRequest { path: String::new(), session_id: a_id };
    let watches = within("ListWatches", api.list_watches(req)).await.expect("ok").into_inner().watches;
    assert!(watches.is_empty(), "a set no watch: {watches:?}");

    // CloseConnection: a loses its connection, not its session.
    let reply = within("CloseConnection", api.close_connection(SessionRequest { session_id: a_id })).await;
    assert_eq!(reply.expect("CloseConnection").into_inner().ephemerals, [eph.as_str()]);
    wait_for("a to see the connection drop and come back", || {
        let s = a_states.lock();
        s.contains(&ZkState::Connecting) && s.last() == Some(&ZkState::Connected)
    })
    .await;
    assert!(!a_states.lock().contains(&ZkState::NotConnected), "a's session must survive");
    let still = within("exists", b.exists(&eph, false)).await.expect("exists");
    assert_eq!(still.map(|s| s.ephemeral_owner), Some(a_id), "the ephemeral outlives a dropped connection");
    assert!(fired.try_recv().is_err(), "no watch fires for a dropped connection");

    // ExpireSession: exactly as expiry does. The ephemeral goes, b's watch
    // fires, a learns its session expired.
    let reply = within("ExpireSession", api.expire_session(SessionRequest { session_id: a_id })).await;
    assert_eq!(reply.expect("ExpireSession").into_inner().ephemerals, [eph.as_str()]);
    let ev = within("b's watch", fired.recv()).await.expect("an event");
    assert_eq!((ev.event_type, ev.path.as_deref()), (WatchedEventType::NodeDeleted, Some(eph.as_str())));
    assert!(within("exists", b.exists(&eph, false)).await.expect("exists").is_none());
    wait_for("a to observe the expiry", || a_states.lock().contains(&ZkState::NotConnected)).await;
    let sessions = within("ListSessions", api.list_sessions(ListSessionsRequest {})).await.expect("ok").into_inner();
    assert!(sessions.sessions.iter().all(|s| s.session_id != a_id), "an expired session is not listed");
    let err = within("ExpireSession", api.expire_session(SessionRequest { session_id: a_id })).await;
    assert_eq!(err.expect_err("already gone").code(), tonic::Code::NotFound);

    // CloseSession: c's ephemeral goes too; c learns on reconnect.
    let (c, c_states) = client(&addr).await;
    let c_eph = format!("{root}/c-eph");
    within("create", c.create(&c_eph, vec![], open.clone(), CreateMode::Ephemeral)).await.expect("c's node");
    let c_id = within("exists", c.exists(&c_eph, false)).await.expect("exists").expect("node").ephemeral_owner;
    let reply = within("CloseSession", api.close_session(SessionRequest { session_id: c_id })).await;
    assert_eq!(reply.expect("CloseSession").into_inner().ephemerals, [c_eph.as_str()]);
    assert!(within("exists", b.exists(&c_eph, false)).await.expect("exists").is_none());
    wait_for("c to observe the close", || c_states.lock().contains(&ZkState::NotConnected)).await;

    // TriggerSnapshot: a snapshot file for that zxid appears.
    let snap = within("TriggerSnapshot", api.trigger_snapshot(TriggerSnapshotRequest {})).await;
    let zxid = snap.expect("TriggerSnapshot").into_inner().zxid;
    assert!(zxid >= stats.last_zxid, "the snapshot covers what was done: {zxid:#x}");
    assert!(data.join(format!("snapshot.{zxid:016x}")).exists(), "no snapshot file for {zxid:#x} in {data:?}");

    // The disk's timings: the writes above were fsynced and the snapshot
    // timed, and /metrics reports the same summaries under ZooKeeper's names.
    let after = within("ServerStats", api.server_stats(ServerStatsRequest {})).await.expect("ServerStats").into_inner();
    let fsync = after.fsync_time.expect("fsync_time");
    assert!(fsync.count >= 1 && fsync.p50_ms.is_some() && fsync.min_ms <= fsync.max_ms, "{fsync:?}");
    let snapshot = after.snapshot_time.expect("snapshot_time");
    assert!(snapshot.count >= 1 && snapshot.p99_ms.is_some_and(|p| p <= snapshot.max_ms * 1.07), "{snapshot:?}");
    let metrics = http_get(&admin_addr, "/metrics");
    for want in [
        "# TYPE fsynctime summary\n".to_string(),
        "# TYPE snapshottime summary\n".to_string(),
        format!("\nsnapshottime_count {}\n", snapshot.count),
        "# TYPE readlatency summary\n".to_string(),
        "# TYPE updatelatency summary\n".to_string(),
    ] {
        assert!(metrics.contains(&want), "no {want:?} in /metrics:\n{metrics}");
    }

    // The HTTP endpoints share the port.
    assert!(http_get(&admin_addr, "/health").ends_with("\r\n\r\nok"), "HTTP beside gRPC on one port");
    assert!(http_get(&admin_addr, "/nope").starts_with("HTTP/1.0 404"), "an unknown page is a 404");
    let _ = b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_without_a_data_dir_is_refused() {
    let dir = TempDir::new("admin-grpc-mem");
    let (_server, _addr, admin_addr) = start(&[], dir.path());
    let mut api = admin(&admin_addr).await;
    let err = within("TriggerSnapshot", api.trigger_snapshot(TriggerSnapshotRequest {})).await;
    assert_eq!(err.expect_err("nothing to snapshot").code(), tonic::Code::FailedPrecondition);
    let err = within("CloseConnection", api.close_connection(SessionRequest { session_id: 42 })).await;
    assert_eq!(err.expect_err("no such session").code(), tonic::Code::NotFound);
}

/// grpcurl and grpcui find the API through server reflection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_admin_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let dir = TempDir::new("admin-grpc-reflect");
    let (_server, _addr, admin_addr) = start(&[], dir.path());
    let channel = Channel::from_shared(format!("http://{admin_addr}")).expect("a URI");
    let mut client = ServerReflectionClient::new(within("connect", channel.connect()).await.expect("connect"));
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = within("reflection", client.server_reflection_info(futures::stream::iter([req])))
        .await
        .expect("reflection")
        .into_inner();
    let reply = within("reply", replies.message()).await.expect("a reply").expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("not a service list: {reply:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"coordinator.admin.v1.Admin"), "services: {names:?}");
}

/// Every call that reads data or changes state, with a request that would
/// succeed (or fail on its own terms) given the token.
async fn protected_calls(api: &mut Authed) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    let s = SessionRequest { session_id: 1 };
    vec![
        ("ListSessions", api.list_sessions(ListSessionsRequest {}).await.map(|_| ())),
        (
            "ListTree",
            api.list_tree(ListTreeRequest { path: "/".into(), depth: 1, include_data: true, limit: 0 })
                .await
                .map(|_| ()),
        ),
        ("ListWatches", api.list_watches(ListWatchesRequest { path: String::new(), session_id: 0 }).await.map(|_| ())),
        ("ExpireSession", api.expire_session(s).await.map(|_| ())),
        ("CloseSession", api.close_session(s).await.map(|_| ())),
        ("CloseConnection", api.close_connection(s).await.map(|_| ())),
        ("TriggerSnapshot", api.trigger_snapshot(TriggerSnapshotRequest {}).await.map(|_| ())),
    ]
}

/// One HTTP/1.0 GET with an optional bearer token: the status code.
fn http_code(addr: &str, path: &str, token: Option<&str>) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the admin listener");
    s.set_read_timeout(Some(T)).expect("timeout");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the response");
    raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status code")
}

/// Before the token, anyone who reached the admin port could read every
/// znode's data (ListTree) and end any session (ExpireSession): each such
/// call is now refused without the token, and with a wrong one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_drills_need_the_token() {
    let dir = TempDir::new("admin-token");
    let (_server, _addr, admin_addr) = start(&[], dir.path());
    for token in [None, Some("wrong-token-0123456789abcdef")] {
        let mut api = admin_as(&admin_addr, token).await;
        for (name, r) in within("calls", protected_calls(&mut api)).await {
            let code = r.err().map(|s| s.code());
            assert_eq!(code, Some(tonic::Code::Unauthenticated), "{name} with token {token:?}");
        }
        // Numbers stay open: orchestrators and scrapers carry no secret.
        within("ServerStats", api.server_stats(ServerStatsRequest {})).await.expect("ServerStats is open");
        for (path, want) in [
            ("/commands/dump", 401),
            ("/commands/cons", 401),
            ("/commands/wchp", 401),
            ("/commands/stat", 401),
            ("/commands/envi", 401),
            ("/commands/mntr", 200),
            ("/health", 200),
            ("/metrics", 200),
        ] {
            assert_eq!(http_code(&admin_addr, path, token), want, "GET {path} with token {token:?}");
        }
    }
    // With the token every call is let through (and answers on its own
    // terms: session 1 does not exist, no data dir to snapshot).
    let mut api = admin(&admin_addr).await;
    for (name, r) in within("calls", protected_calls(&mut api)).await {
        let code = r.err().map(|s| s.code());
        assert_ne!(code, Some(tonic::Code::Unauthenticated), "{name} with the token");
    }
    assert_eq!(http_code(&admin_addr, "/commands/dump", Some(TOKEN)), 200);
}

/// A listener started without a token keeps the data and the drills off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_configured_means_off() {
    let dir = TempDir::new("admin-notoken");
    let (_server, _addr, admin_addr) = start_with_env(&[], &[], dir.path());
    let mut api = admin(&admin_addr).await;
    for (name, r) in within("calls", protected_calls(&mut api)).await {
        assert_eq!(r.err().map(|s| s.code()), Some(tonic::Code::Unauthenticated), "{name}");
    }
    assert_eq!(http_code(&admin_addr, "/commands/dump", Some(TOKEN)), 401);
}

//! The differential harness: one scripted scenario, run against the
//! coordinator and against Apache ZooKeeper 3.8, and the two transcripts
//! compared line by line.
//!
//! A scenario is an async function over a [`Run`]. It opens sessions, sends
//! raw requests through `zk_wire::client`, and every reply and watch event is
//! written to the run's transcript *normalised*: the values that legitimately
//! differ between two servers (zxids, times, session ids) are replaced by
//! what a client may rely on:
//!
//! - each distinct zxid becomes `z<n>`, numbered by first appearance in the
//!   test, so "czxid == mzxid" or "pzxid moved" still compare;
//! - a non-zero time becomes `t`;
//! - a session id (ephemeralOwner, whoAmI) becomes the label of the session
//!   that holds it (`s1`, `s2`, ...), in opening order;
//! - the test's unique root path becomes `~`.
//!
//! Everything else (error codes, data, children (sorted for getChildren,
//! whose order ZooKeeper does not define), versions, sequence numbers, the
//! order of events relative to replies, multi results) is compared exactly.
//!
//! This file is included by the differential suites with `#[path]`, and
//! builds as a test target of its own, holding the normaliser's unit tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use testkit::Server;
use zk_wire::client::{Client, ClientError, ConnectOptions, Message, Reply};
use zk_wire::consts::{CreateMode, EventType, KeeperState, OpCode};
use zk_wire::records::*;
use zk_wire::request::MultiOp;
use zk_wire::response::MultiResult;
use zk_wire::{ErrorCode, Request, Response};

/// The whole scenario must finish within this; a hang is a failure.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(60);

/// The session timeout every scenario asks for: inside both servers'
/// bounds (Apache ZooKeeper's test config allows 4 s..40 s), so both grant it.
pub const SESSION_TIMEOUT_MS: i32 = 10_000;

/// One session of a scenario.
pub struct Sess {
    pub c: Client,
    pub label: String,
}

/// One scenario's run against one server.
pub struct Run {
    pub kind: Server,
    pub addr: SocketAddr,
    /// The unique root every path of the scenario lives under (the same
    /// string on both servers).
    pub root: String,
    pub log: Vec<String>,
    norm: Norm,
}

/// The normaliser's memory: zxids and sessions in first-seen order.
#[derive(Default)]
pub struct Norm {
    pub root: String,
    zxids: HashMap<i64, usize>,
    sessions: HashMap<i64, String>,
}

impl Norm {
    pub fn new(root: &str) -> Norm {
        Norm { root: root.to_string(), ..Norm::default() }
    }

    pub fn zxid(&mut self, z: i64) -> String {
        if z == 0 {
            return "0".into();
        }
        let n = self.zxids.len();
        format!("z{}", self.zxids.entry(z).or_insert(n + 1))
    }

    pub fn time(t: i64) -> &'static str {
        if t == 0 {
            "0"
        } else {
            "t"
        }
    }

    pub fn session(&self, id: i64) -> String {
        if id == 0 {
            return "0".into();
        }
        match self.sessions.get(&id) {
            Some(l) => l.clone(),
            // TTL nodes and containers carry a marker in ephemeralOwner
            // (ZooKeeper's EphemeralType): it is the same on both servers.
            None if id < 0 => format!("{id:#x}"),
            None => "other-session".into(),
        }
    }

    pub fn name_session(&mut self, id: i64, label: &str) {
        self.sessions.insert(id, label.to_string());
    }

    pub fn path(&self, p: &str) -> String {
        match p.strip_prefix(&self.root) {
            Some(rest) if !self.root.is_empty() => format!("~{rest}"),
            _ => p.to_string(),
        }
    }

    pub fn stat(&mut self, s: &Stat) -> String {
        format!(
            "stat(cz={} mz={} ct={} mt={} v={} cv={} av={} owner={} len={} nc={} pz={})",
            self.zxid(s.czxid),
            self.zxid(s.mzxid),
            Self::time(s.ctime),
            Self::time(s.mtime),
            s.version,
            s.cversion,
            s.aversion,
            self.session(s.ephemeral_owner),
            s.data_length,
            s.num_children,
            self.zxid(s.pzxid),
        )
    }

    pub fn data(d: &Option<Vec<u8>>) -> String {
        match d {
            None => "null".into(),
            Some(b) => format!("{:?}", String::from_utf8_lossy(b)),
        }
    }

    pub fn children(&self, c: &[String]) -> String {
        let mut c: Vec<String> = c.to_vec();
        c.sort();
        format!("[{}]", c.join(","))
    }

    pub fn acl(acl: &[Acl]) -> String {
        let items: Vec<String> = acl.iter().map(|a| format!("{}:{}:{}", a.id.scheme, a.id.id, a.perms)).collect();
        format!("[{}]", items.join(","))
    }

    pub fn err(err: i32) -> String {
        match ErrorCode::from_i32(err) {
            Some(e) => format!("{e:?}"),
            None => format!("err{err}"),
        }
    }

    pub fn event(&self, e: &WatcherEvent) -> String {
        let ty = EventType::from_i32(e.event_type).map(|t| format!("{t:?}")).unwrap_or(e.event_type.to_string());
        let st = KeeperState::from_i32(e.state).map(|t| format!("{t:?}")).unwrap_or(e.state.to_string());
        format!("event {ty} {st} {}", self.path(&e.path))
    }

    pub fn response(&mut self, r: &Response) -> String {
        match r {
            Response::Empty => String::new(),
            Response::AddWatch(e) => format!("err{}", e.err),
            Response::Path(p) => self.path(&p.path),
            Response::Create2(c) => format!("{} {}", self.path(&c.path), self.stat(&c.stat)),
            Response::Stat(s) => self.stat(&s.stat),
            Response::GetData(d) => format!("{} {}", Self::data(&d.data), self.stat(&d.stat)),
            Response::Children(c) => self.children_paths(&c.children),
            Response::GetChildren2(c) => format!("{} {}", self.children(&c.children), self.stat(&c.stat)),
            Response::GetAcl(a) => format!("{} {}", Self::acl(&a.acl), self.stat(&a.stat)),
            Response::AllChildrenNumber(n) => n.total_number.to_string(),
            Response::WhoAmI(w) => {
                let ids: Vec<String> = w.client_info.iter().map(|i| format!("{}:{}", i.auth_scheme, i.user)).collect();
                format!("[{}]", ids.join(","))
            }
            Response::Multi(results) => {
                let items: Vec<String> = results.iter().map(|m| self.multi_result(m)).collect();
                format!("multi[{}]", items.join(" | "))
            }
        }
    }

    /// getChildren answers names, getEphemerals full paths: both sorted.
    fn children_paths(&self, c: &[String]) -> String {
        let mapped: Vec<String> = c.iter().map(|p| self.path(p)).collect();
        self.children(&mapped)
    }

    fn multi_result(&mut self, m: &MultiResult) -> String {
        match m {
            MultiResult::Create(p) => format!("create {}", self.path(&p.path)),
            MultiResult::Create2(op, c) => format!("{op:?} {} {}", self.path(&c.path), self.stat(&c.stat)),
            MultiResult::Delete => "delete".into(),
            MultiResult::SetData(s) => format!("setData {}", self.stat(&s.stat)),
            MultiResult::Check => "check".into(),
            MultiResult::GetChildren(c) => format!("children {}", self.children(&c.children)),
            MultiResult::GetData(d) => format!("data {} {}", Self::data(&d.data), self.stat(&d.stat)),
            MultiResult::Error(e) => format!("error {}", Self::err(*e)),
        }
    }

    pub fn reply(&mut self, r: &Reply) -> String {
        let body = self.response(&r.body);
        if body.is_empty() {
            Self::err(r.err)
        } else {
            format!("{} {body}", Self::err(r.err))
        }
    }
}

/// A short description of a request for the transcript.
pub fn describe(norm: &Norm, req: &Request) -> String {
    let op = format!("{:?}", req.op_code());
    let path = match req {
        Request::Create(_, r) => format!("{} flags={} ttl={}", norm.path(&r.path), r.flags, r.ttl),
        Request::Delete(r) => format!("{} v={}", norm.path(&r.path), r.version),
        Request::Exists(r) | Request::GetData(r) | Request::GetChildren(r) | Request::GetChildren2(r) => {
            format!("{} watch={}", norm.path(&r.path), r.watch)
        }
        Request::SetData(r) => format!("{} v={}", norm.path(&r.path), r.version),
        Request::GetAcl(r) | Request::Sync(r) | Request::GetEphemerals(r) | Request::GetAllChildrenNumber(r) => {
            norm.path(&r.path)
        }
        Request::SetAcl(r) => format!("{} v={}", norm.path(&r.path), r.version),
        Request::Check(r) => format!("{} v={}", norm.path(&r.path), r.version),
        Request::Multi(ops) | Request::MultiRead(ops) => {
            let items: Vec<String> = ops.iter().map(|o| format!("{:?} {}", o.op_code(), norm.path(o.path()))).collect();
            format!("[{}]", items.join(", "))
        }
        Request::Auth(a) => a.scheme.clone(),
        Request::AddWatch(r) => format!("{} mode={}", norm.path(&r.path), r.mode),
        Request::CheckWatches(r) | Request::RemoveWatches(r) => {
            format!("{} type={}", norm.path(&r.path), r.watcher_type)
        }
        _ => String::new(),
    };
    format!("{op} {path}")
}

impl Run {
    pub fn new(kind: Server, addr: SocketAddr, root: &str) -> Run {
        Run { kind, addr, root: root.to_string(), log: Vec::new(), norm: Norm::new(root) }
    }

    /// A path under the scenario's root.
    pub fn p(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.root.clone()
        } else {
            format!("{}/{rel}", self.root)
        }
    }

    pub fn note(&mut self, line: impl Into<String>) {
        self.log.push(line.into());
    }

    /// Opens a new session; it is labelled `s<n>` in the transcript.
    pub async fn connect(&mut self) -> Sess {
        self.connect_with(ConnectOptions { timeout_ms: SESSION_TIMEOUT_MS, ..ConnectOptions::default() }).await
    }

    /// Opens a new session with the given handshake.
    pub async fn connect_with(&mut self, opts: ConnectOptions) -> Sess {
        let label = format!("s{}", self.norm.sessions.len() + 1);
        let c = Client::connect(self.addr, opts).await.unwrap_or_else(|e| panic!("{:?}: connect: {e}", self.kind));
        let hs = c.handshake().clone();
        self.norm.name_session(hs.session_id, &label);
        self.note(format!(
            "{label} connect timeout={} passwd_len={} ro={:?}",
            hs.time_out,
            hs.passwd.len(),
            hs.read_only
        ));
        Sess { c, label }
    }

    /// Reconnects to `s`'s session (after `s` was dropped or disconnected),
    /// with the given password (the real one unless a test lies).
    pub async fn resume(&mut self, label: &str, session_id: i64, passwd: Vec<u8>, last_zxid: i64) -> Sess {
        let opts = ConnectOptions {
            timeout_ms: SESSION_TIMEOUT_MS,
            session_id,
            passwd,
            last_zxid_seen: last_zxid,
            ..ConnectOptions::default()
        };
        let c = Client::connect(self.addr, opts).await.unwrap_or_else(|e| panic!("{:?}: reconnect: {e}", self.kind));
        let hs = c.handshake().clone();
        let who = if hs.session_id == 0 { "0".to_string() } else { self.norm.session(hs.session_id) };
        self.note(format!("{label} reconnect -> timeout={} session={who}", hs.time_out));
        Sess { c, label: label.to_string() }
    }

    /// Sends `req`, records the events that arrived before its reply and
    /// then the reply, and returns the reply.
    ///
    /// A write's reply also records its header zxid: the zxid of the
    /// transaction it became (a failed write is an error transaction in
    /// ZooKeeper and takes a zxid too). A read's header zxid is the server's
    /// latest, which other tests move on the shared oracle, so it is not
    /// recorded.
    pub async fn call(&mut self, s: &mut Sess, req: Request) -> Reply {
        let what = describe(&self.norm, &req);
        let r = s.c.call(&req).await;
        self.record_events(s);
        match r {
            Ok(reply) => {
                let mut line = self.norm.reply(&reply);
                if req.is_write() {
                    line = format!("{line} @{}", self.norm.zxid(reply.zxid));
                }
                self.note(format!("{} {what} -> {line}", s.label));
                reply
            }
            Err(e) => panic!("{:?}: {} {what}: {e}", self.kind, s.label),
        }
    }

    /// Like [`Run::call`], but a closed connection is a recorded outcome.
    pub async fn call_or_closed(&mut self, s: &mut Sess, req: Request) -> Option<Reply> {
        let what = describe(&self.norm, &req);
        let r = s.c.call(&req).await;
        self.record_events(s);
        match r {
            Ok(reply) => {
                let line = self.norm.reply(&reply);
                self.note(format!("{} {what} -> {line}", s.label));
                Some(reply)
            }
            Err(ClientError::Closed) => {
                self.note(format!("{} {what} -> connection closed", s.label));
                None
            }
            Err(e) => panic!("{:?}: {} {what}: {e}", self.kind, s.label),
        }
    }

    fn record_events(&mut self, s: &mut Sess) {
        for e in s.c.take_queued_events() {
            let line = self.norm.event(&e);
            self.note(format!("{} {line}", s.label));
        }
    }

    /// Records every event delivered to `s` so far: a ping is answered only
    /// after everything the server queued for the connection before it, so
    /// the events before its reply are exactly the ones already triggered.
    pub async fn events(&mut self, s: &mut Sess) {
        match s.c.ping().await {
            Ok(_) => self.record_events(s),
            Err(e) => panic!("{:?}: {} ping: {e}", self.kind, s.label),
        }
        self.note(format!("{} (no more events)", s.label));
    }

    /// Waits for the next event on `s` (one triggered by something other
    /// than this connection's own requests, such as an expiry).
    pub async fn wait_event(&mut self, s: &mut Sess) {
        match s.c.recv().await {
            Ok(Message::Event { event, .. }) => {
                let line = self.norm.event(&event);
                self.note(format!("{} {line}", s.label));
            }
            Ok(Message::Reply(r)) => panic!("{:?}: {} expected an event, got reply {r:?}", self.kind, s.label),
            Err(e) => {
                let what = format!("{e}");
                self.note(format!("{} no event: {what}", s.label));
            }
        }
    }

    /// Closes the session the ZooKeeper way (closeSession) and records the answer.
    pub async fn close(&mut self, mut s: Sess) {
        self.call_or_closed(&mut s, Request::CloseSession).await;
        let closed = s.c.closed_within(Duration::from_secs(5)).await;
        self.note(format!("{} socket closed after closeSession: {closed}", s.label));
    }

    /// Expires `s`'s session as ZooKeeper's own tests do: a second
    /// connection with the same id and password, then closeSession on it.
    pub async fn expire(&mut self, s: &Sess) {
        let opts = ConnectOptions {
            timeout_ms: SESSION_TIMEOUT_MS,
            session_id: s.c.session_id(),
            passwd: s.c.passwd().to_vec(),
            ..ConnectOptions::default()
        };
        let mut killer =
            Client::connect(self.addr, opts).await.unwrap_or_else(|e| panic!("{:?}: killer connect: {e}", self.kind));
        assert_eq!(killer.session_id(), s.c.session_id(), "{:?}: the second connection joined the session", self.kind);
        let r = killer.call(&Request::CloseSession).await;
        assert!(
            matches!(&r, Ok(reply) if reply.err == 0),
            "{:?}: closeSession on the second connection: {r:?}",
            self.kind
        );
        self.note(format!("{} expired (closeSession from a second connection)", s.label));
    }
}

// ---- request builders ------------------------------------------------------

// Re-exported for the suites that include this file; not every one uses it.
#[allow(unused_imports)]
pub use e2e_tests::requests::open_acl;

pub fn create_req(op: OpCode, path: &str, data: &[u8], mode: CreateMode, ttl: i64) -> Request {
    Request::Create(op, e2e_tests::requests::create_body(path, data, mode, ttl))
}

pub fn create(path: &str, data: &[u8], mode: CreateMode) -> Request {
    create_req(OpCode::Create, path, data, mode, 0)
}

pub fn create2(path: &str, data: &[u8], mode: CreateMode) -> Request {
    create_req(OpCode::Create2, path, data, mode, 0)
}

pub fn create_acl(path: &str, data: &[u8], acl: Vec<Acl>) -> Request {
    Request::Create(
        OpCode::Create,
        CreateTtlRequest { path: path.into(), data: Some(data.to_vec()), acl, flags: 0, ttl: 0 },
    )
}

pub fn delete(path: &str, version: i32) -> Request {
    Request::Delete(DeleteRequest { path: path.into(), version })
}

pub fn exists(path: &str, watch: bool) -> Request {
    Request::Exists(PathWatchRequest { path: path.into(), watch })
}

pub fn get_data(path: &str, watch: bool) -> Request {
    Request::GetData(PathWatchRequest { path: path.into(), watch })
}

pub fn set_data(path: &str, data: &[u8], version: i32) -> Request {
    Request::SetData(SetDataRequest { path: path.into(), data: Some(data.to_vec()), version })
}

pub fn get_children(path: &str, watch: bool) -> Request {
    Request::GetChildren(PathWatchRequest { path: path.into(), watch })
}

pub fn get_children2(path: &str, watch: bool) -> Request {
    Request::GetChildren2(PathWatchRequest { path: path.into(), watch })
}

pub fn path_req(op: OpCode, path: &str) -> Request {
    let r = PathRequest { path: path.into() };
    match op {
        OpCode::GetAcl => Request::GetAcl(r),
        OpCode::Sync => Request::Sync(r),
        OpCode::GetEphemerals => Request::GetEphemerals(r),
        OpCode::GetAllChildrenNumber => Request::GetAllChildrenNumber(r),
        other => panic!("{other:?} does not take a bare path"),
    }
}

pub fn set_acl(path: &str, acl: Vec<Acl>, version: i32) -> Request {
    Request::SetAcl(SetAclRequest { path: path.into(), acl, version })
}

pub fn auth(scheme: &str, auth: &[u8]) -> Request {
    Request::Auth(AuthPacket { auth_type: 0, scheme: scheme.into(), auth: auth.to_vec() })
}

pub fn m_create(path: &str, data: &[u8], mode: CreateMode) -> MultiOp {
    MultiOp::Create(OpCode::Create, e2e_tests::requests::create_body(path, data, mode, 0))
}

pub fn m_delete(path: &str, version: i32) -> MultiOp {
    MultiOp::Delete(DeleteRequest { path: path.into(), version })
}

pub fn m_set(path: &str, data: &[u8], version: i32) -> MultiOp {
    MultiOp::SetData(SetDataRequest { path: path.into(), data: Some(data.to_vec()), version })
}

pub fn m_check(path: &str, version: i32) -> MultiOp {
    MultiOp::Check(CheckVersionRequest { path: path.into(), version })
}

// ---- running a scenario on both servers ------------------------------------

/// Runs `scenario` on one server under `root` (created first, outside the
/// transcript) and returns the transcript.
pub async fn run_on<F>(kind: Server, addr: SocketAddr, root: &str, scenario: &F) -> Vec<String>
where
    F: AsyncFn(&mut Run),
{
    let mut setup = Client::connect(addr, ConnectOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: connect for setup: {e}"));
    let r = setup.call(&create(root, b"", CreateMode::Persistent)).await;
    assert!(matches!(&r, Ok(r) if r.err == 0), "{kind:?}: create the scenario root {root}: {r:?}");
    let _ = setup.call(&Request::CloseSession).await;
    let mut run = Run::new(kind, addr, root);
    let fut = scenario(&mut run);
    if tokio::time::timeout(SCENARIO_LIMIT, fut).await.is_err() {
        panic!("{kind:?}: the scenario did not finish within {SCENARIO_LIMIT:?}");
    }
    // The oracle is long-lived and shared: leave it as we found it, as far
    // as we can (ephemerals of sessions not closed stay until they expire).
    if let Ok(mut c) = Client::connect(addr, ConnectOptions::default()).await {
        let _ = tokio::time::timeout(Duration::from_secs(10), delete_tree(&mut c, root)).await;
        let _ = c.call(&Request::CloseSession).await;
    }
    run.log
}

/// Deletes `path` and everything under it, best effort.
async fn delete_tree(c: &mut Client, path: &str) {
    let mut stack = vec![(path.to_string(), false)];
    while let Some((p, expanded)) = stack.pop() {
        if expanded {
            let _ = c.call(&delete(&p, -1)).await;
            continue;
        }
        stack.push((p.clone(), true));
        if let Ok(Reply { body: Response::Children(ch), .. }) = c.call(&get_children(&p, false)).await {
            for child in ch.children {
                stack.push((format!("{p}/{child}"), false));
            }
        }
    }
}

/// Runs `scenario` against both servers and fails with a side-by-side view
/// of the first difference.
pub async fn differential<F>(name: &str, scenario: F)
where
    F: AsyncFn(&mut Run),
{
    testkit::init_test_log();
    let coordinator = Server::Coordinator.start();
    let zookeeper = Server::ZooKeeper.start();
    let root = format!("/{}", testkit::unique(name));
    let ours = run_on(Server::Coordinator, coordinator.addr, &root, &scenario).await;
    let theirs = run_on(Server::ZooKeeper, zookeeper.addr, &root, &scenario).await;
    // DIFF_SHOW=1 prints the transcript even when the servers agree.
    if std::env::var_os("DIFF_SHOW").is_some() {
        eprintln!("{name}:\n    {}", ours.join("\n    "));
    }
    assert_same(name, &ours, &theirs);
}

pub fn assert_same(name: &str, ours: &[String], theirs: &[String]) {
    if ours == theirs {
        return;
    }
    let mut report = format!("{name}: the coordinator and Apache ZooKeeper differ\n");
    for i in 0..ours.len().max(theirs.len()) {
        let a = ours.get(i).map(String::as_str).unwrap_or("<missing>");
        let b = theirs.get(i).map(String::as_str).unwrap_or("<missing>");
        if a == b {
            report.push_str(&format!("    {a}\n"));
        } else {
            report.push_str(&format!("!!  coordinator: {a}\n!!  zookeeper:   {b}\n"));
        }
    }
    panic!("{report}");
}

/// Runs a future under the scenario limit (for tests outside [`differential`]).
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(SCENARIO_LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {SCENARIO_LIMIT:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zxids_are_numbered_by_first_appearance() {
        let mut n = Norm::new("/r");
        assert_eq!(n.zxid(0x500), "z1");
        assert_eq!(n.zxid(0x20), "z2");
        assert_eq!(n.zxid(0x500), "z1");
        assert_eq!(n.zxid(0), "0");
    }

    #[test]
    fn sessions_and_markers_are_labelled() {
        let mut n = Norm::new("/r");
        n.name_session(77, "s1");
        assert_eq!(n.session(77), "s1");
        assert_eq!(n.session(78), "other-session");
        assert_eq!(n.session(0), "0");
        // A TTL marker is kept as it is: both servers must use ZooKeeper's.
        assert_eq!(n.session(i64::MIN), "0x8000000000000000");
    }

    #[test]
    fn root_is_abbreviated_and_children_sorted() {
        let n = Norm::new("/r");
        assert_eq!(n.path("/r/a"), "~/a");
        assert_eq!(n.path("/other"), "/other");
        assert_eq!(n.children(&["b".into(), "a".into()]), "[a,b]");
    }
}

//! Helpers for end-to-end tests: the workspace's real binaries run as child
//! processes, on port 0, each in its own scratch directory, killed when the
//! test ends however it ends.

pub mod ensemble;
pub mod linearizability;
pub mod nemesis;
pub mod requests;
pub mod stream;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use testkit::broker_cluster;
pub use testkit::process::{binary, Proc};

/// A scratch directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(testkit::unique(prefix));
        std::fs::create_dir_all(&dir).expect("create a scratch dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where a test runs a process: this machine's loopback, or a host of a
/// test network (`testkit::netns`), where partitions can reach it.
#[derive(Clone, Debug, Default)]
pub enum Place {
    #[default]
    Loopback,
    /// On `host`; services reach the broker at `broker` (an AMQP URL
    /// without credentials, through a relay), when there is one.
    Host { host: testkit::netns::Host, broker: Option<String> },
}

impl Place {
    /// On `host`, with no way to the broker.
    pub fn on(host: &testkit::netns::Host) -> Place {
        Place::Host { host: host.clone(), broker: None }
    }

    /// On `host`, reaching the broker through `relay` (`Net::relay` of
    /// `testkit::broker::broker_addr()`).
    pub fn with_broker(host: &testkit::netns::Host, relay: &testkit::netns::Relay) -> Place {
        Place::Host { host: host.clone(), broker: Some(testkit::broker::service_url_via(relay.addr())) }
    }

    /// The address the place's servers listen on.
    pub fn ip(&self) -> std::net::IpAddr {
        match self {
            Place::Loopback => [127, 0, 0, 1].into(),
            Place::Host { host, .. } => host.ip().into(),
        }
    }

    /// `program` to run there.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self {
            Place::Loopback => Command::new(program),
            Place::Host { host, .. } => host.command(program),
        }
    }

    /// Starts the workspace binary `name` there; panics if it cannot.
    pub fn spawn(&self, name: &str, args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Proc {
        let mut cmd = self.command(binary(name));
        cmd.args(args).envs(env.iter().copied());
        Proc::start_command(cmd, name, log_dir).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `--amqp URL --amqp-credentials-file FILE` for a `role` service of
    /// `queue` started here.
    fn broker_flags(&self, queue: &str, role: &str) -> [String; 4] {
        let users = testkit::broker::provision(queue);
        match self {
            Place::Loopback => users.flags(role),
            Place::Host { broker: Some(url), .. } => users.flags_at(role, url),
            Place::Host { host, broker: None } => {
                panic!("{role} on host {} needs a relay to the broker: Place::with_broker", host.name())
            }
        }
    }
}

/// An entity as system-b's store holds it, read through the store itself
/// (`Store::peek`, which knows its format): a new entity while it has no
/// record, or the store's directory does not exist yet.
pub fn stored_entity(store: &Path, entity: &str) -> Result<system_b::store::Entity, system_b::store::StoreError> {
    if !store.exists() {
        return Ok(system_b::store::Entity::default());
    }
    system_b::store::Store::open(store)?.peek(entity)
}

/// An entity's value in system-b's store (0 while it has no record). A
/// store that cannot be read fails the test, loudly.
pub fn entity_value(store: &Path, entity: &str) -> i64 {
    stored_entity(store, entity).unwrap_or_else(|e| panic!("{entity} cannot be read from the store: {e}")).value
}

/// Starts the coordinator binary on port 0 with `args`; returns it and the
/// address it serves.
pub fn start_coordinator(args: &[&str], log_dir: &Path) -> (Proc, String) {
    let c = Coordinator::start(&Place::Loopback, args, log_dir);
    (c.proc.expect("started"), c.addr)
}

/// The coordinator binary at a [`Place`], with what a fault drill does to
/// it: pause, resume, kill -9 and restart on the same address and flags
/// (so on the same data dir when `args` name one).
pub struct Coordinator {
    pub place: Place,
    /// `host:port`, the same across restarts.
    pub addr: String,
    args: Vec<String>,
    /// Extra environment, the same at every restart (e.g. `FAILPOINTS`).
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    pub proc: Option<Proc>,
}

impl Coordinator {
    /// Starts it at `place` (on a host, at the host's address on port
    /// 2181; on loopback, on a port the OS picks) with `args`.
    pub fn start(place: &Place, args: &[&str], log_dir: &Path) -> Coordinator {
        Coordinator::start_with_env(place, args, &[], log_dir)
    }

    /// [`Coordinator::start`] with extra environment for every start.
    pub fn start_with_env(place: &Place, args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Coordinator {
        let port = if matches!(place, Place::Loopback) { 0 } else { 2181 };
        let mut c = Coordinator {
            place: place.clone(),
            addr: std::net::SocketAddr::new(place.ip(), port).to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            log_dir: log_dir.to_path_buf(),
            proc: None,
        };
        c.restart();
        c
    }

    /// Starts it again after [`Coordinator::kill9`].
    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "the coordinator runs");
        let mut all = vec!["--listen", self.addr.as_str()];
        all.extend(self.args.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut p = self.place.spawn("coordinator", &all, &env, &self.log_dir);
        self.addr = p.wait_line("coordinator listening on", Duration::from_secs(20));
        self.proc = Some(p);
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// SIGSTOP: its sessions' clocks tick on in its clients, not in it.
    pub fn pause(&self) {
        self.proc.as_ref().expect("the coordinator runs").signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.proc.as_ref().expect("the coordinator runs").signal(nix::sys::signal::Signal::SIGCONT);
    }
}

/// A deployment's identities: one credentials file per role, made by
/// `zkctl gen-credentials`, as `scripts/run.sh` makes them.
#[derive(Clone, Debug)]
pub struct Identities {
    pub dir: PathBuf,
}

impl Identities {
    /// The credentials file of `role` (`operator`, `system-a`, `system-b`,
    /// `ha-worker`, `dashboard`).
    pub fn file(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{role}.cred"))
    }

    /// `--zk-credentials-file <file of role>`, as owned flag values.
    pub fn flag(&self, role: &str) -> [String; 2] {
        ["--zk-credentials-file".to_string(), self.file(role).to_string_lossy().into_owned()]
    }
}

/// Systems provisioned with [`provision`], by root: the launchers below run
/// each service of such a system as its own identity.
static PROVISIONED: std::sync::Mutex<Vec<(String, Identities)>> = std::sync::Mutex::new(Vec::new());

fn identities_of(root: &str) -> Option<Identities> {
    PROVISIONED.lock().ok()?.iter().find(|(r, _)| r == root).map(|(_, i)| i.clone())
}

/// Runs a zkctl command; panics with its stderr when it fails.
pub fn zkctl(args: &[&str]) -> String {
    let out = Command::new(binary("zkctl")).args(args).output().expect("run zkctl");
    assert!(out.status.success(), "zkctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh set of identities under `dir`, and the system under `root` on
/// `zk` laid out with least-privilege ACLs by `zkctl init` as the operator:
/// what `scripts/run.sh` does before it starts the services.
pub fn provision(zk: &str, root: &str, dir: &Path) -> Identities {
    let ids = Identities { dir: dir.join("identities") };
    zkctl(&["gen-credentials", ids.dir.to_str().expect("utf-8 path")]);
    let op = ids.flag("operator");
    zkctl(&["--zk", zk, &op[0], &op[1], "init", "--root", root]);
    if let Ok(mut p) = PROVISIONED.lock() {
        p.push((root.to_string(), ids.clone()));
    }
    ids
}

/// Spawns the service `binary` on `zk` under `root` with `args`, then
/// `extra`, with extra environment variables (a failpoint, the metrics
/// port). A system [`provision`]ed under `root` runs it as its own
/// identity: the role of the same name, as the deployment does.
#[allow(clippy::too_many_arguments)]
fn spawn_service_with_env(
    place: &Place,
    binary: &str,
    zk: &str,
    root: &str,
    args: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
    log_dir: &Path,
) -> Proc {
    let creds = identities_of(root).map(|i| i.flag(binary));
    let mut all = vec!["--zk", zk, "--root", root];
    all.extend_from_slice(args);
    if let Some(c) = &creds {
        all.extend([c[0].as_str(), c[1].as_str()]);
    }
    all.extend_from_slice(extra);
    place.spawn(binary, &all, env, log_dir)
}

/// The scenario services, configured alike in every suite: a system-b
/// instance on `queue` under `root`, sharing `store`, with a short session
/// (`session_ms`) so faults show within seconds. Returns once it consumes.
/// A system [`provision`]ed under `root` runs it as the system-b identity;
/// on the broker it is always `queue`'s own system-b user
/// (`testkit::broker::provision`).
pub fn start_system_b(
    zk: &str,
    root: &str,
    queue: &str,
    store: &Path,
    name: &str,
    session_ms: u64,
    log_dir: &Path,
) -> Proc {
    start_system_b_with_env(zk, root, queue, store, name, session_ms, &[], log_dir)
}

/// [`start_system_b`] at `place` (a host of a test network, reaching the
/// broker through a relay), with extra environment variables (a failpoint,
/// a stepped wall clock).
#[allow(clippy::too_many_arguments)]
pub fn start_system_b_on(
    place: &Place,
    zk: &str,
    root: &str,
    queue: &str,
    store: &Path,
    name: &str,
    session_ms: u64,
    env: &[(&str, &str)],
    log_dir: &Path,
) -> Proc {
    let mut p = spawn_system_b(place, zk, root, queue, store, name, session_ms, env, log_dir);
    p.wait_line("system-b ready", Duration::from_secs(30));
    p
}

/// [`start_system_b`] with extra environment variables, such as
/// `FAILPOINTS` (`servicekit::failpoint`).
#[allow(clippy::too_many_arguments)]
pub fn start_system_b_with_env(
    zk: &str,
    root: &str,
    queue: &str,
    store: &Path,
    name: &str,
    session_ms: u64,
    env: &[(&str, &str)],
    log_dir: &Path,
) -> Proc {
    let mut p = spawn_system_b(&Place::Loopback, zk, root, queue, store, name, session_ms, env, log_dir);
    p.wait_line("system-b ready", Duration::from_secs(30));
    p
}

/// `METRICS_LISTEN` for a service under test: metrics on a port of its
/// own that the OS picks; the service prints `metrics listening on <addr>`.
pub const METRICS_ANY_PORT: (&str, &str) = ("METRICS_LISTEN", "127.0.0.1:0");

/// [`start_system_b`] serving its metrics ([`METRICS_ANY_PORT`]); returns
/// it and its metrics address once it consumes.
pub fn start_system_b_metered(
    zk: &str,
    root: &str,
    queue: &str,
    store: &Path,
    name: &str,
    session_ms: u64,
    log_dir: &Path,
) -> (Proc, String) {
    let mut p =
        spawn_system_b(&Place::Loopback, zk, root, queue, store, name, session_ms, &[METRICS_ANY_PORT], log_dir);
    // Printed before `ready`: lines are read in order.
    let metrics = p.wait_line("metrics listening on", Duration::from_secs(30));
    p.wait_line("system-b ready", Duration::from_secs(30));
    (p, metrics)
}

#[allow(clippy::too_many_arguments)]
fn spawn_system_b(
    place: &Place,
    zk: &str,
    root: &str,
    queue: &str,
    store: &Path,
    name: &str,
    session_ms: u64,
    env: &[(&str, &str)],
    log_dir: &Path,
) -> Proc {
    let broker = place.broker_flags(queue, "system-b");
    let session = session_ms.to_string();
    let args = [
        "--queue",
        queue,
        "--store-dir",
        store.to_str().expect("utf-8 path"),
        "--instance",
        name,
        &broker[0],
        &broker[1],
        &broker[2],
        &broker[3],
        "--zk-session-timeout-ms",
        &session,
    ];
    spawn_service_with_env(place, "system-b", zk, root, &args, &[], env, log_dir)
}

/// An ha-worker instance `name` under `root`, journaling to `journal`,
/// working every `interval_ms` with a `session_ms` session. A system
/// [`provision`]ed under `root` runs it as the ha-worker identity.
pub fn start_ha_worker(
    zk: &str,
    root: &str,
    journal: &Path,
    name: &str,
    interval_ms: u64,
    session_ms: u64,
    log_dir: &Path,
) -> Proc {
    spawn_ha_worker(&Place::Loopback, zk, root, journal, name, interval_ms, session_ms, &[], log_dir)
}

/// [`start_ha_worker`] at `place` (a host of a test network), with extra
/// environment variables (a stepped wall clock, `testkit::clock`).
#[allow(clippy::too_many_arguments)]
pub fn start_ha_worker_on(
    place: &Place,
    zk: &str,
    root: &str,
    journal: &Path,
    name: &str,
    interval_ms: u64,
    session_ms: u64,
    env: &[(&str, &str)],
    log_dir: &Path,
) -> Proc {
    spawn_ha_worker(place, zk, root, journal, name, interval_ms, session_ms, env, log_dir)
}

/// [`start_ha_worker`] serving its metrics ([`METRICS_ANY_PORT`]); returns
/// it and its metrics address once it serves them (before it campaigns).
pub fn start_ha_worker_metered(
    zk: &str,
    root: &str,
    journal: &Path,
    name: &str,
    interval_ms: u64,
    session_ms: u64,
    log_dir: &Path,
) -> (Proc, String) {
    let mut p = spawn_ha_worker(
        &Place::Loopback,
        zk,
        root,
        journal,
        name,
        interval_ms,
        session_ms,
        &[METRICS_ANY_PORT],
        log_dir,
    );
    let metrics = p.wait_line("metrics listening on", Duration::from_secs(30));
    (p, metrics)
}

#[allow(clippy::too_many_arguments)]
fn spawn_ha_worker(
    place: &Place,
    zk: &str,
    root: &str,
    journal: &Path,
    name: &str,
    interval_ms: u64,
    session_ms: u64,
    env: &[(&str, &str)],
    log_dir: &Path,
) -> Proc {
    let interval = interval_ms.to_string();
    let session = session_ms.to_string();
    let args = [
        "--instance",
        name,
        "--journal",
        journal.to_str().expect("utf-8 path"),
        "--interval-ms",
        &interval,
        "--zk-session-timeout-ms",
        &session,
    ];
    spawn_service_with_env(place, "ha-worker", zk, root, &args, &[], env, log_dir)
}

/// system-a on port 0 as instance `a1`, as `queue`'s own system-a broker
/// user; returns it and its gRPC address once it can publish.
pub fn start_system_a(zk: &str, root: &str, queue: &str, log_dir: &Path) -> (Proc, String) {
    start_system_a_with(zk, root, queue, &[], log_dir)
}

/// [`start_system_a`] with `extra` flags (e.g. `--task-retention-secs`).
pub fn start_system_a_with(zk: &str, root: &str, queue: &str, extra: &[&str], log_dir: &Path) -> (Proc, String) {
    start_system_a_on(&Place::Loopback, zk, root, queue, extra, &[], log_dir)
}

/// [`start_system_a_with`] at `place` (a host of a test network, reaching
/// the broker through a relay; it listens on the place's address), with
/// extra environment variables (a stepped wall clock, `testkit::clock`).
pub fn start_system_a_on(
    place: &Place,
    zk: &str,
    root: &str,
    queue: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    log_dir: &Path,
) -> (Proc, String) {
    let mut p = spawn_system_a(place, zk, root, queue, extra, env, log_dir);
    let addr = p.wait_line("system-a listening on", Duration::from_secs(30));
    p.wait_line("system-a connected to RabbitMQ", Duration::from_secs(30));
    (p, addr)
}

/// A system-a whose broker never answers (nothing listens on port 1): it
/// accepts tasks, records them in its outbox and cannot publish them.
/// Instance `a-no-broker`, so a system-a started beside it is another
/// instance. Returns it and its gRPC address.
pub fn start_unpublishing_system_a(
    zk: &str,
    root: &str,
    queue: &str,
    env: &[(&str, &str)],
    log_dir: &Path,
) -> (Proc, String) {
    let creds = testkit::broker::provision(queue).file("system-a").to_string_lossy().into_owned();
    let mut p = Proc::spawn_with_env(
        "system-a",
        &[
            "--zk",
            zk,
            "--root",
            root,
            "--queue",
            queue,
            "--listen",
            "127.0.0.1:0",
            "--amqp",
            "amqp://127.0.0.1:1/%2f",
            "--amqp-credentials-file",
            &creds,
            "--instance",
            "a-no-broker",
        ],
        env,
        log_dir,
    );
    let addr = p.wait_line("system-a listening on", Duration::from_secs(30));
    (p, addr)
}

/// [`start_system_a`] serving its metrics ([`METRICS_ANY_PORT`]); returns
/// it, its gRPC address and its metrics address once it can publish.
pub fn start_system_a_metered(zk: &str, root: &str, queue: &str, log_dir: &Path) -> (Proc, String, String) {
    let mut p = spawn_system_a(&Place::Loopback, zk, root, queue, &[], &[METRICS_ANY_PORT], log_dir);
    let metrics = p.wait_line("metrics listening on", Duration::from_secs(30));
    let addr = p.wait_line("system-a listening on", Duration::from_secs(30));
    p.wait_line("system-a connected to RabbitMQ", Duration::from_secs(30));
    (p, addr, metrics)
}

fn spawn_system_a(
    place: &Place,
    zk: &str,
    root: &str,
    queue: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    log_dir: &Path,
) -> Proc {
    let broker = place.broker_flags(queue, "system-a");
    let listen = std::net::SocketAddr::new(place.ip(), 0).to_string();
    let args = [
        "--queue",
        queue,
        "--listen",
        &listen,
        &broker[0],
        &broker[1],
        &broker[2],
        &broker[3],
        "--instance",
        "a1",
        "--zk-session-timeout-ms",
        "10000",
    ];
    spawn_service_with_env(place, "system-a", zk, root, &args, extra, env, log_dir)
}

pub use testkit::scrape::{http_get, sample};

/// A connection to the RabbitMQ the suites run against
/// (`testkit::rabbitmq_url`), made within 10 s.
pub async fn rabbitmq() -> lapin::Connection {
    let url = testkit::rabbitmq_url();
    let connect = lapin::Connection::connect(&url, lapin::ConnectionProperties::default());
    tokio::time::timeout(Duration::from_secs(10), connect).await.expect("in time").expect("RabbitMQ")
}

/// A channel on a fresh [`rabbitmq`] connection with publisher confirms
/// on, so a publish returns once the broker has the message; the
/// connection is returned too, as the channel lives only as long as it.
pub async fn rabbitmq_confirmed_channel() -> (lapin::Connection, lapin::Channel) {
    let amqp = rabbitmq().await;
    let ch = amqp.create_channel().await.expect("channel");
    ch.confirm_select(Default::default()).await.expect("confirms");
    (amqp, ch)
}

/// Publishes `body` to `queue` through the default exchange (as the
/// broker's administrator: the tests' observer, or attacker), persistent,
/// and waits for the broker's confirm; `ch` must be in confirm mode
/// ([`rabbitmq_confirmed_channel`]).
pub async fn publish_confirmed(ch: &lapin::Channel, queue: &str, body: &[u8]) {
    use lapin::options::BasicPublishOptions;
    use lapin::BasicProperties;
    let sent = async {
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm")
    };
    tokio::time::timeout(Duration::from_secs(10), sent).await.expect("published in time");
}

/// Waits until the task node at `path` is no longer `pending`, reading it
/// every 50 ms for at most `limit`; returns its data (as JSON) and version.
pub async fn final_task_node(c: &zk_recipes::session::Client, path: &str, limit: Duration) -> (serde_json::Value, i32) {
    let started = std::time::Instant::now();
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), c.zk.get_data(path, false)).await.expect("in time");
        let (data, stat) = read.expect("task node");
        let v: serde_json::Value = serde_json::from_slice(&data).expect("json");
        if v["status"] != "pending" {
            return (v, stat.version);
        }
        assert!(started.elapsed() < limit, "{path} still pending after {limit:?}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The invariant "every ephemeral's owner is a live session", read from the
/// text of a `dump` four-letter word: the coordinator's, or an Apache
/// ZooKeeper leader's (whose live sessions are listed under their expiry
/// buckets, "Session Sets"); returns the ephemerals whose owner is not
/// among the sessions, by owner. Panics if the text has no session list
/// (not a `dump`, or a follower's).
pub fn orphans_in_dump(text: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut live = Vec::new();
    let mut owners: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut section = 0;
    let mut owner = String::new();
    for line in text.lines() {
        if line.starts_with("Global Sessions") || line.starts_with("Session Sets") {
            section = 1;
        } else if line.starts_with("Sessions with Ephemerals") {
            section = 2;
        } else if line.starts_with("Connections dump") {
            section = 0;
        } else if section == 1 {
            if let Some(id) = line.trim_start().split('\t').next().filter(|s| s.starts_with("0x")) {
                live.push(id.to_string());
            }
        } else if section == 2 {
            if let Some(path) = line.strip_prefix('\t') {
                owners.entry(owner.clone()).or_default().push(path.to_string());
            } else if let Some(id) = line.strip_suffix(':') {
                owner = id.to_string();
            }
        }
    }
    assert!(text.contains("Global Sessions") || text.contains("Session Sets"), "dump has no session list: {text}");
    owners.retain(|id, _| !live.contains(id));
    owners
}

#[cfg(test)]
mod dump_tests {
    use super::orphans_in_dump;

    /// An Apache ZooKeeper 3.8 leader's `dump`, as it prints it: live
    /// sessions under their expiry buckets, then ephemerals by owner, then
    /// connections (whose lines are not ephemerals).
    const ZK_LEADER: &str = "SessionTracker dump:\nSession Sets (3)/(2):\n0 expire at Mon Dec 07 02:09:53 UTC 2026:\n\
        1 expire at Mon Dec 07 02:09:56 UTC 2026:\n\t0x10000142ccb0000\n1 expire at Mon Dec 07 02:09:59 UTC 2026:\n\
        \t0x300001404be0002\nephemeral nodes dump:\nSessions with Ephemerals (1):\n0x300001404be0002:\n\t/a/e1\n\
        Connections dump:\nConnections Sets (1)/(1):\n2 expire at Mon Dec 07 02:09:17 UTC 2026:\n\
        \tip: /10.215.192.1:45860 sessionId: 0x300001404be0002\n";

    #[test]
    fn a_zookeeper_leaders_dump_with_live_owners_has_no_orphan() {
        assert!(orphans_in_dump(ZK_LEADER).is_empty(), "{:?}", orphans_in_dump(ZK_LEADER));
    }

    #[test]
    fn an_ephemeral_whose_owner_is_not_a_live_session_is_an_orphan() {
        let broken = ZK_LEADER.replace("\t0x300001404be0002\nephemeral", "ephemeral");
        let orphans = orphans_in_dump(&broken);
        assert_eq!(orphans.get("0x300001404be0002"), Some(&vec!["/a/e1".to_string()]), "{orphans:?}");
    }

    #[test]
    fn the_coordinators_dump_is_read_too() {
        let text = "Global Sessions(1):\n0x1\t4000ms\nSessions with Ephemerals (2):\n0x1:\n\t/x\n0x2:\n\t/y\n";
        assert_eq!(orphans_in_dump(text).keys().collect::<Vec<_>>(), ["0x2"]);
    }
}

/// The dashboard in a real browser: Debian's headless Chromium driven by
/// playwright-core (tests/browser).
pub mod browser {
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Chromium, node and tests/browser's playwright-core, or a loud failure
    /// that says how to get them; tests/browser's path.
    pub fn ready() -> PathBuf {
        // Checked first, so a machine without them fails at once and says why.
        assert!(
            std::path::Path::new("/usr/bin/chromium").exists(),
            "/usr/bin/chromium is missing: run scripts/setup.sh (Debian package chromium)"
        );
        let node = Command::new("node").arg("--version").output();
        assert!(
            node.is_ok_and(|o| o.status.success()),
            "node is missing: run scripts/setup.sh (Debian packages nodejs and npm)"
        );
        let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
        if !browser_dir.join("node_modules/playwright-core").exists() {
            let ci = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&browser_dir)
                .status()
                .expect("run npm (Debian package npm; scripts/setup.sh installs it)");
            assert!(ci.success(), "npm ci in tests/browser failed");
        }
        browser_dir
    }

    /// Runs tests/browser/check-timeline.mjs: Chromium must draw each
    /// `event:who` of the page at `url` on its timeline within 30 s; the
    /// screenshot lands in target/test-artifacts/`shot_name`.
    pub fn timeline_drawn(url: &str, shot_name: &str, expect: &[String]) {
        check("check-timeline.mjs", url, shot_name, expect, "timeline ok", &format!("{expect:?} on the timeline"));
    }

    /// Runs the browser check `script` of tests/browser on the page at
    /// `url` with `args`: it must print `ok` (else the failure says the
    /// browser did not show `what`) and leave a real screenshot in
    /// target/test-artifacts/`shot_name`. Bounded to 90 s.
    pub fn check(script: &str, url: &str, shot_name: &str, args: &[String], ok: &str, what: &str) {
        let browser_dir = ready();
        let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
        std::fs::create_dir_all(&artifacts).expect("create target/test-artifacts");
        let shot = artifacts.join(shot_name);
        let _ = std::fs::remove_file(&shot);
        let mut child = Command::new("node")
            .arg(script)
            .arg(url)
            .arg(&shot)
            .args(args)
            .current_dir(&browser_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run node");
        let start = Instant::now();
        while matches!(child.try_wait(), Ok(None)) {
            if start.elapsed() > Duration::from_secs(90) {
                let _ = child.kill();
                panic!("the browser check {script} ran past 90 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().expect("the browser check's output");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains(ok),
            "the browser did not show {what}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let png = std::fs::read(&shot).expect("the screenshot");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "the screenshot is not a real page");
    }
}

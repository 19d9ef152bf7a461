//! Test fixtures shared by every test suite in the workspace.
//!
//! Tests run against real servers over TCP:
//!
//! - **the coordinator**, started in-process on port 0 ([`start_coordinator`]),
//!   on its own thread and runtime so it outlives any one test's runtime;
//! - **Apache ZooKeeper 3.8**, the oracle, started by `scripts/test.sh`
//!   (`scripts/zookeeper.sh start`), whose address arrives in
//!   `ZK_ORACLE_ADDR`;
//! - **RabbitMQ**, whose URL arrives in `AMQP_URL`, and a 3-node RabbitMQ
//!   cluster a test (or the benchmark) starts itself ([`broker_cluster`]).
//!
//! A server that is missing is a failed test, never a skipped one: every
//! fixture panics with a message that says how to start what is missing.
//!
//! [`process`] launches the workspace's binaries (the services, the
//! coordinator as a process) for the end-to-end tests and the benchmark;
//! [`clock`] steps the wall clock of such a process; [`netns`] puts
//! processes on hosts of a test network that can be partitioned;
//! [`crashfs`] mounts a file system that can lose power, for the tests of
//! what each program's files keep across one.

pub mod broker;
pub mod broker_cluster;
pub mod clock;
pub mod crashfs;
pub mod netns;
pub mod process;
pub mod proxy;
pub mod scrape;

use std::net::SocketAddr;
use std::time::Duration;

pub use coordinator::Config as CoordinatorConfig;

/// The two servers every scenario is proven against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Coordinator,
    ZooKeeper,
}

impl Server {
    pub const ALL: [Server; 2] = [Server::Coordinator, Server::ZooKeeper];

    /// Starts (coordinator) or finds (ZooKeeper) the server.
    pub fn start(self) -> RunningServer {
        match self {
            Server::Coordinator => {
                let guard = start_coordinator(CoordinatorConfig::for_tests());
                RunningServer { kind: self, addr: guard.addr, _guard: Some(guard) }
            }
            Server::ZooKeeper => RunningServer { kind: self, addr: zookeeper_addr(), _guard: None },
        }
    }
}

/// A server a test can connect to; the coordinator stops when this drops.
pub struct RunningServer {
    pub kind: Server,
    pub addr: SocketAddr,
    _guard: Option<CoordinatorGuard>,
}

impl RunningServer {
    /// A ZooKeeper connect string (`host:port`).
    pub fn connect_string(&self) -> String {
        self.addr.to_string()
    }
}

/// The Apache ZooKeeper the test scripts started. Panics (fails the test)
/// when it is not configured or does not answer.
pub fn zookeeper_addr() -> SocketAddr {
    let raw = std::env::var("ZK_ORACLE_ADDR").unwrap_or_else(|_| {
        panic!(
            "ZK_ORACLE_ADDR is not set: these tests need Apache ZooKeeper 3.8. \
             Run them through scripts/test.sh, or start one with \
             `scripts/zookeeper.sh start 21810` and export ZK_ORACLE_ADDR=127.0.0.1:21810"
        )
    });
    let addr: SocketAddr = raw.parse().unwrap_or_else(|e| panic!("ZK_ORACLE_ADDR={raw:?} is not HOST:PORT: {e}"));
    if let Err(e) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        panic!("Apache ZooKeeper at {addr} (ZK_ORACLE_ADDR) does not answer: {e}; start it with scripts/zookeeper.sh");
    }
    addr
}

/// The RabbitMQ the test scripts ensured is running, as `guest`: the
/// tests' own observer and attacker. Services get [`broker::service_url`]
/// and a user of their own ([`broker::provision`]).
pub fn rabbitmq_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// A name no other test (or earlier run) uses: for znode paths, queues, dirs.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Installs a test log subscriber once; quiet unless `TEST_LOG` is set.
pub fn init_test_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug")),
            )
            .with_test_writer()
            .try_init();
    }
}

/// An in-process coordinator; dropping it shuts the server down and waits
/// for it to stop.
pub struct CoordinatorGuard {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts a coordinator on its own thread and runtime. The config's listen
/// address is bound (use port 0) before this returns, so the address is live.
pub fn start_coordinator(config: CoordinatorConfig) -> CoordinatorGuard {
    init_test_log();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("coordinator".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("build the coordinator's runtime");
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(config.listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = addr_tx.send(listener.local_addr().map_err(|e| e.to_string()));
                if let Err(e) = coordinator::run(listener, config, async {
                    let _ = shutdown_rx.await;
                })
                .await
                {
                    eprintln!("coordinator stopped with an error: {e:#}");
                }
            });
        })
        .expect("spawn the coordinator thread");
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the coordinator did not bind within 10 s")
        .unwrap_or_else(|e| panic!("the coordinator could not bind: {e}"));
    CoordinatorGuard { addr, shutdown: Some(shutdown_tx), thread: Some(thread) }
}

impl Drop for CoordinatorGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

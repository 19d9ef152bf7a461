//! A 3-node RabbitMQ cluster on loopback, started, clustered and stopped
//! by the test that uses it (Debian's `rabbitmq-server` package).
//!
//! As with the ZooKeeper ensemble (`ensemble`), the test owns the three
//! nodes: each test gets a fresh cluster, and nothing is left running
//! however it ends. The nodes are `nemo1@localhost` .. `nemo3@localhost`,
//! AMQP on 127.0.0.1:5681-5683, Erlang distribution on 25681-25683, each
//! with its data dir (`RABBITMQ_MNESIA_BASE`), logs and config under the
//! test's directory, no plugin (no management UI: a faster start), and one
//! Erlang cookie of their own (`HOME/.erlang.cookie`, which the nodes and
//! `rabbitmqctl` read). The host's own broker (the default node name, on
//! 5672) is never touched: every `rabbitmqctl` here names its node.
//!
//! The nodes run as the test's user straight from
//! `/usr/lib/rabbitmq/bin` (the `/usr/sbin` wrappers switch to the
//! `rabbitmq` user), and in the foreground with the Erlang VM in place of
//! the start script (`RUNNING_UNDER_SYSTEMD`), so the child's pid is the
//! node's and a kill -9 is a node's crash.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const AMQP_PORT: u16 = 5681;
const DIST_PORT: u16 = 25681;
const BIN: &str = "/usr/lib/rabbitmq/bin";

/// One cluster at a time in this process: the ports are fixed.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct BrokerCluster {
    dir: PathBuf,
    nodes: Vec<Option<Child>>,
    _turn: MutexGuard<'static, ()>,
}

/// Node `i`'s Erlang name.
pub fn node_name(i: usize) -> String {
    format!("nemo{}@localhost", i + 1)
}

impl BrokerCluster {
    /// Starts three nodes under `dir`, clusters the second and third with
    /// the first (`rabbitmqctl join_cluster`), and returns once all three
    /// run as one cluster; fails loudly (with the nodes' logs) if that does
    /// not happen within 3 minutes.
    pub fn start(dir: &Path) -> BrokerCluster {
        assert!(
            Path::new(BIN).join("rabbitmq-server").exists(),
            "{BIN}/rabbitmq-server is missing: install Debian's rabbitmq-server package (scripts/setup.sh)"
        );
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..3 {
            for port in [AMQP_PORT + i as u16, DIST_PORT + i as u16] {
                assert!(
                    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
                        .is_err(),
                    "port {port} already answers: a stale cluster node is running (a killed test run?); stop it \
                     (`ps aux | grep nemo`)"
                );
            }
        }
        let dir = dir.join("rabbitmq-cluster");
        std::fs::create_dir_all(&dir).expect("cluster dir");
        write_private(&dir.join(".erlang.cookie"), &cookie());
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        // An empty env file, so the host's /etc/rabbitmq/rabbitmq-env.conf
        // (its node name) does not apply.
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("env file");
        for i in 0..3 {
            let home = dir.join(format!("nemo{}", i + 1));
            std::fs::create_dir_all(&home).expect("node dir");
            let conf = format!(
                "listeners.tcp.1 = 127.0.0.1:{}\nloopback_users.guest = true\nlog.console = false\n\
                 log.file.level = info\n",
                AMQP_PORT + i as u16
            );
            std::fs::write(home.join("rabbitmq.conf"), conf).expect("rabbitmq.conf");
        }
        let mut c = BrokerCluster { dir, nodes: vec![None, None, None], _turn: turn };
        let started = Instant::now();
        for i in 0..3 {
            c.spawn(i);
        }
        for i in 0..3 {
            c.await_startup(i);
        }
        let booted = started.elapsed();
        // One join at a time. Two at once (each a stop_app, a join and a
        // start_app on its own node) race in Mnesia's schema change: the
        // second node's start_app failed with `{mnesia_app,start}` in about
        // one run in a few here. A join costs a few seconds; a flaky
        // harness costs a suite.
        for i in [1, 2] {
            if let Err(e) = c.join(i, 0) {
                panic!("clustering: {e:#}\n{}", c.logs());
            }
        }
        let running = c.running_nodes(0);
        assert_eq!(running.len(), 3, "the cluster runs {running:?}\n{}", c.logs());
        println!("broker cluster of 3 running after {:?} (nodes booted in {booted:?})", started.elapsed());
        c
    }

    /// One of RabbitMQ's programs, run as the cluster's: its HOME holds
    /// the cookie, its env file the node names' host. It runs in the
    /// cluster's dir, so what a dying node or tool leaves behind (an
    /// Erlang crash dump, a Mnesia core file) is kept with the nodes'
    /// logs, not in the test's working directory, where both were once
    /// committed by mistake.
    fn erlang(&self, program: &str) -> Command {
        let mut command = Command::new(Path::new(BIN).join(program));
        command
            .env("HOME", &self.dir)
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .env("ERL_CRASH_DUMP", self.dir.join("erl_crash.dump"))
            .current_dir(&self.dir);
        command
    }

    fn spawn(&mut self, i: usize) {
        let home = self.dir.join(format!("nemo{}", i + 1));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(home.join("stdout.log")).expect("log");
        let child = self
            .erlang("rabbitmq-server")
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .env("RABBITMQ_NODENAME", node_name(i))
            .env("RABBITMQ_DIST_PORT", (DIST_PORT + i as u16).to_string())
            .env("RABBITMQ_CONFIG_FILE", home.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", home.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", home.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", home.join("log"))
            .env("RABBITMQ_PID_FILE", home.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start RabbitMQ node {}: {e}", node_name(i)));
        self.nodes[i] = Some(child);
    }

    /// `rabbitmqctl -n <node i> args`, with the cluster's cookie: its
    /// stdout, or an error with what it said.
    pub fn ctl(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .erlang("rabbitmqctl")
            .args(["-n", &node_name(i)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run rabbitmqctl")?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl -n {} {args:?}: {}{}",
                node_name(i),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `rabbitmq-queues -n <node i> args`.
    fn queues_ctl(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .erlang("rabbitmq-queues")
            .args(["-n", &node_name(i)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run rabbitmq-queues")?;
        if !out.status.success() {
            bail!("rabbitmq-queues {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until node `i` has booted: its AMQP port answers (cheap to
    /// poll; it opens near the end of the boot), then `await_startup`. At
    /// most 150 s (three nodes booting at once on a loaded 2-core machine);
    /// a node that exits or does not boot fails the test with the logs.
    fn await_startup(&mut self, i: usize) {
        let started = Instant::now();
        let port = AMQP_PORT + i as u16;
        while std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_err()
        {
            if let Some(Ok(Some(status))) = self.nodes[i].as_mut().map(Child::try_wait) {
                panic!("{} exited while booting ({status})\n{}", node_name(i), self.logs());
            }
            assert!(
                started.elapsed() < Duration::from_secs(150),
                "{} did not boot in 150 s\n{}",
                node_name(i),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = self.ctl(i, &["await_startup", "--timeout", "60"]) {
            panic!("{} did not start: {e:#}\n{}", node_name(i), self.logs());
        }
    }

    /// Joins node `i` (running) to node `to`'s cluster.
    fn join(&self, i: usize, to: usize) -> anyhow::Result<()> {
        self.ctl(i, &["stop_app"])?;
        self.ctl(i, &["join_cluster", &node_name(to)])?;
        self.ctl(i, &["start_app"])?;
        Ok(())
    }

    /// The nodes node `i` sees running in its cluster.
    pub fn running_nodes(&self, i: usize) -> Vec<String> {
        let out = self.ctl(i, &["-q", "eval", "rabbit_nodes:all_running()."]).unwrap_or_default();
        (0..3).map(node_name).filter(|n| out.contains(n.as_str())).collect()
    }

    /// Every node's AMQP URL (no credentials), in the order `first` ..,
    /// comma-separated: what a service is given.
    pub fn urls(&self, first: usize) -> String {
        (0..3).map(|k| self.url((first + k) % 3)).collect::<Vec<_>>().join(",")
    }

    /// Node `i`'s AMQP URL, without credentials.
    pub fn url(&self, i: usize) -> String {
        format!("amqp://127.0.0.1:{}/%2f", AMQP_PORT + i as u16)
    }

    /// Node `i`'s AMQP URL as guest (the tests' observer).
    pub fn guest_url(&self, i: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", AMQP_PORT + i as u16)
    }

    /// A fresh set of broker users for `queue`, imported into the cluster
    /// through a running node, as `scripts/rabbitmq.sh import` does.
    pub fn provision(&self, queue: &str) -> crate::broker::BrokerUsers {
        let users = self.users(queue);
        self.import(&users.definitions());
        users
    }

    /// A fresh set of broker users for `queue`, written, not imported (to
    /// change the definitions first).
    pub fn users(&self, queue: &str) -> crate::broker::BrokerUsers {
        let dir = self.dir.join(crate::unique("users"));
        crate::broker::write_set(&dir, queue).expect("broker users");
        crate::broker::BrokerUsers { queue: queue.to_string(), dir }
    }

    /// Imports broker definitions into the cluster through a running node.
    pub fn import(&self, definitions: &Path) {
        let i = self.any_running();
        let input = std::fs::File::open(definitions).expect("definitions");
        let out = self
            .erlang("rabbitmqctl")
            .args(["-n", &node_name(i), "-q", "import_definitions"])
            .stdin(Stdio::from(input))
            .output()
            .expect("run rabbitmqctl");
        assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn any_running(&self) -> usize {
        (0..3).find(|&i| self.nodes[i].is_some()).expect("a running node")
    }

    /// What `rabbitmqctl list_queues name <item>` says of `queue`, through
    /// a running node.
    fn queue_info(&self, queue: &str, item: &str) -> String {
        let out = self.ctl(self.any_running(), &["-q", "list_queues", "name", item]).unwrap_or_default();
        out.lines()
            .find_map(|l| l.split_once('\t').filter(|(name, _)| *name == queue).map(|(_, v)| v.to_string()))
            .unwrap_or_default()
    }

    /// The node holding `queue`'s Raft leader, if it has one now.
    pub fn leader(&self, queue: &str) -> Option<usize> {
        let leader = self.queue_info(queue, "leader");
        (0..3).find(|&i| leader.contains(&node_name(i)))
    }

    /// The nodes holding a replica of `queue`.
    pub fn members(&self, queue: &str) -> Vec<usize> {
        let members = self.queue_info(queue, "members");
        (0..3).filter(|&i| members.contains(&node_name(i))).collect()
    }

    /// The queue's type (`quorum`, `classic`).
    pub fn queue_type(&self, queue: &str) -> String {
        self.queue_info(queue, "type")
    }

    /// Messages in `queue` (ready and unacked).
    pub fn messages(&self, queue: &str) -> Option<u64> {
        self.queue_info(queue, "messages").trim().parse().ok()
    }

    /// kill -9 node `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Loses node `i`'s data dir (it must be down), as a dead disk does.
    pub fn lose_data(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "{} is running", node_name(i));
        let data = self.dir.join(format!("nemo{}/mnesia", i + 1));
        std::fs::remove_dir_all(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    }

    /// Rebuilds node `i` after it lost its data: the cluster forgets the
    /// old member (a running node does it), the node starts empty, joins
    /// again and gets a replica of every quorum queue back
    /// (`rabbitmq-queues grow`). What an operator does for a dead disk.
    pub fn rebuild(&mut self, i: usize) {
        let peer = (0..3).find(|&k| k != i && self.nodes[k].is_some()).expect("a running peer");
        if let Err(e) = self.ctl(peer, &["forget_cluster_node", &node_name(i)]) {
            panic!("forgetting {}: {e:#}", node_name(i));
        }
        self.spawn(i);
        self.await_startup(i);
        if let Err(e) = self.join(i, peer) {
            panic!("rejoining {}: {e:#}\n{}", node_name(i), self.logs());
        }
        if let Err(e) = self.queues_ctl(peer, &["grow", &node_name(i), "all"]) {
            panic!("growing the quorum queues onto {}: {e:#}", node_name(i));
        }
    }

    /// The last lines of each node's log.
    pub fn logs(&self) -> String {
        (0..3)
            .map(|i| {
                let log = self.dir.join(format!("nemo{}/log/{}.log", i + 1, node_name(i)));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let out =
                    std::fs::read_to_string(self.dir.join(format!("nemo{}/stdout.log", i + 1))).unwrap_or_default();
                format!("---- {} ----\n{}\n{}\n", node_name(i), tail(&out, 12), tail(&text, 12))
            })
            .collect()
    }
}

impl Drop for BrokerCluster {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill9(i);
        }
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A fresh Erlang cookie: 32 random letters.
fn cookie() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("/dev/urandom");
    bytes.iter().map(|b| (b'A' + b % 26) as char).collect()
}

/// Writes `text` to `path`, readable by its owner only (Erlang refuses a
/// cookie others can read).
fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("cookie");
}

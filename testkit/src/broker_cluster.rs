//! A 3-node RabbitMQ cluster, started, clustered and stopped by the test
//! that uses it (Debian's `rabbitmq-server` package), on this machine's
//! loopback ([`BrokerCluster::start`]) or with each node on a host of a
//! test network ([`BrokerCluster::start_on`]), where a partition can cut
//! one away.
//!
//! As with the ZooKeeper ensemble (`ensemble`), the test owns the three
//! nodes: each test gets a fresh cluster, and nothing is left running
//! however it ends. Each node has its data dir (`RABBITMQ_MNESIA_BASE`),
//! logs and config under the test's directory, no plugin (no management
//! UI: a faster start), and the three share one Erlang cookie of their own
//! (`HOME/.erlang.cookie`, which the nodes and `rabbitmqctl` read). Where
//! they run:
//!
//! - **loopback**: `nemo1@localhost` .. `nemo3@localhost`, AMQP on
//!   127.0.0.1:5681-5683, Erlang distribution on 25681-25683, the
//!   machine's epmd. The host's own broker (the default node name, on
//!   5672) is never touched: every `rabbitmqctl` here names its node.
//! - **a test network** (`testkit::netns`): node `i` on host `brokerN`,
//!   each a namespace with its own loopback and its own epmd, so every
//!   node has RabbitMQ's standard ports (5672, 25672) at its host's
//!   address. Nodes are named by that address, as long names
//!   (`nemo1@10.A.B.2`, `RABBITMQ_USE_LONGNAME`): a name any namespace can
//!   resolve without /etc/hosts. `rabbitmqctl` runs on the node's own
//!   host, as an operator on that machine would.
//!
//! Partitions: every cluster here runs `cluster_partition_handling =
//! pause_minority`, what RabbitMQ recommends for a cluster of three (an
//! odd number of nodes, in one place). A node that finds itself with less
//! than half of the cluster stops its broker (its clients' connections
//! close, so they move to a node of the majority, where their queues'
//! leaders are) and starts it again by itself once it sees the majority,
//! rejoining with the majority's state. The default, `ignore`, keeps both
//! sides running: the minority node keeps clients that can reach nothing
//! replicated, and after the heal Mnesia stays split until an operator
//! restarts the losing side. `autoheal` picks a winner and restarts the
//! rest after the heal, but lets both sides run during the cut. Quorum
//! queues are safe under any mode (Raft: no commit without a majority);
//! the mode decides what the minority's clients see, and whether a heal
//! needs a human.
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

use crate::netns::{Host, Net};

/// The loopback cluster's first ports; node `i` has the `i`-th after.
const AMQP_PORT: u16 = 5681;
const DIST_PORT: u16 = 25681;
/// A hosted node's ports: RabbitMQ's own, free on a host of its own.
const HOSTED_AMQP_PORT: u16 = 5672;
const HOSTED_DIST_PORT: u16 = 25672;
/// A hosted cluster's `net_ticktime`, in seconds: a node whose peers went
/// silent is taken for gone after 0.75 to 1.25 times this. RabbitMQ's
/// default, 60, would make every partition test last minutes; 10 keeps
/// clear of false alarms on a loaded 2-core machine (a tick every 2.5 s).
pub const HOSTED_NET_TICKTIME_S: u64 = 10;
const BIN: &str = "/usr/lib/rabbitmq/bin";

/// One cluster at a time in this process: the loopback ports are fixed,
/// and three brokers are what a 2-core machine runs beside the services.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct BrokerCluster {
    dir: PathBuf,
    site: Site,
    nodes: Vec<Option<Child>>,
    _turn: MutexGuard<'static, ()>,
}

/// Where the nodes run.
enum Site {
    Loopback,
    /// Node `i` on the `i`-th host. The network (a clone) lives as long
    /// as the cluster, so the nodes are stopped before their namespaces
    /// go.
    Hosts {
        _net: Net,
        hosts: Vec<Host>,
    },
}

impl BrokerCluster {
    /// Starts three nodes on loopback under `dir`, clusters the second and
    /// third with the first (`rabbitmqctl join_cluster`), and returns once
    /// all three run as one cluster; fails loudly (with the nodes' logs) if
    /// that does not happen within 3 minutes.
    pub fn start(dir: &Path) -> BrokerCluster {
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
        Self::start_at(dir, Site::Loopback, turn)
    }

    /// [`BrokerCluster::start`] with each node on a host of its own added
    /// to `net` (`broker1` .. `broker3`, see [`BrokerCluster::host`]), so
    /// a test can partition them. The test process reaches every node
    /// through the network's gateway, also while they are cut from each
    /// other. The nodes' `net_ticktime` is [`HOSTED_NET_TICKTIME_S`].
    pub fn start_on(net: &Net, dir: &Path) -> BrokerCluster {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let hosts = (1..=3).map(|n| net.add_host(&format!("broker{n}"))).collect();
        Self::start_at(dir, Site::Hosts { _net: net.clone(), hosts }, turn)
    }

    fn start_at(dir: &Path, site: Site, turn: MutexGuard<'static, ()>) -> BrokerCluster {
        assert!(
            Path::new(BIN).join("rabbitmq-server").exists(),
            "{BIN}/rabbitmq-server is missing: install Debian's rabbitmq-server package (scripts/setup.sh)"
        );
        let dir = dir.join("rabbitmq-cluster");
        std::fs::create_dir_all(&dir).expect("cluster dir");
        write_private(&dir.join(".erlang.cookie"), &servicekit::broker::generate_erlang_cookie());
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        // An empty env file, so the host's /etc/rabbitmq/rabbitmq-env.conf
        // (its node name) does not apply.
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("env file");
        let mut c = BrokerCluster { dir, site, nodes: vec![None, None, None], _turn: turn };
        for i in 0..3 {
            let home = c.home(i);
            std::fs::create_dir_all(&home).expect("node dir");
            std::fs::write(home.join("rabbitmq.conf"), c.config(i)).expect("rabbitmq.conf");
        }
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

    /// Node `i`'s Erlang name: `nemoN@localhost` on loopback,
    /// `nemoN@<its host's address>` on a test network.
    pub fn node_name(&self, i: usize) -> String {
        match &self.site {
            Site::Loopback => format!("nemo{}@localhost", i + 1),
            Site::Hosts { hosts, .. } => format!("nemo{}@{}", i + 1, hosts[i].ip()),
        }
    }

    /// The name of node `i`'s host on the test network, for
    /// [`Net::partition`] and its kin; `None` on loopback.
    pub fn host(&self, i: usize) -> Option<&str> {
        match &self.site {
            Site::Loopback => None,
            Site::Hosts { hosts, .. } => Some(hosts[i].name()),
        }
    }

    /// Where node `i` takes AMQP connections.
    fn amqp_addr(&self, i: usize) -> std::net::SocketAddr {
        match &self.site {
            Site::Loopback => ([127, 0, 0, 1], AMQP_PORT + i as u16).into(),
            Site::Hosts { hosts, .. } => (hosts[i].ip(), HOSTED_AMQP_PORT).into(),
        }
    }

    /// Node `i`'s own directory: its config, data, logs.
    fn home(&self, i: usize) -> PathBuf {
        self.dir.join(format!("nemo{}", i + 1))
    }

    /// Node `i`'s `rabbitmq.conf`.
    fn config(&self, i: usize) -> String {
        let mut conf = format!(
            "listeners.tcp.1 = {}\nloopback_users.guest = true\nlog.console = false\nlog.file.level = info\n\
             cluster_partition_handling = pause_minority\n",
            self.amqp_addr(i)
        );
        if let Site::Hosts { .. } = self.site {
            conf += &format!("net_ticktime = {HOSTED_NET_TICKTIME_S}\n");
        }
        conf
    }

    /// One of RabbitMQ's programs, run as the cluster's, where node `i`
    /// runs (on its host, on a test network): its HOME holds the cookie,
    /// its env file the node names' host. It runs in the cluster's dir,
    /// so what a dying node or tool leaves behind (an Erlang crash dump, a
    /// Mnesia core file) is kept with the nodes' logs, not in the test's
    /// working directory, where both were once committed by mistake.
    fn erlang(&self, i: usize, program: &str) -> Command {
        let program = Path::new(BIN).join(program);
        let mut command = match &self.site {
            Site::Loopback => Command::new(program),
            Site::Hosts { hosts, .. } => {
                let mut c = hosts[i].command(program);
                c.env("RABBITMQ_USE_LONGNAME", "true");
                c
            }
        };
        command
            .env("HOME", &self.dir)
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .env("ERL_CRASH_DUMP", self.dir.join("erl_crash.dump"))
            .current_dir(&self.dir);
        command
    }

    fn spawn(&mut self, i: usize) {
        let home = self.home(i);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(home.join("stdout.log")).expect("log");
        let mut command = self.erlang(i, "rabbitmq-server");
        command
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .env("RABBITMQ_NODENAME", self.node_name(i))
            .env("RABBITMQ_CONFIG_FILE", home.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", home.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", home.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", home.join("log"))
            .env("RABBITMQ_PID_FILE", home.join("pid"));
        match self.site {
            // The machine's epmd, and no interface but loopback.
            Site::Loopback => command
                .env("RABBITMQ_DIST_PORT", (DIST_PORT + i as u16).to_string())
                .env("ERL_EPMD_ADDRESS", "127.0.0.1")
                .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}"),
            // The host's own epmd (the first Erlang program there starts
            // it; it goes with the namespace).
            Site::Hosts { .. } => command.env("RABBITMQ_DIST_PORT", HOSTED_DIST_PORT.to_string()),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start RabbitMQ node {}: {e}", self.node_name(i)));
        self.nodes[i] = Some(child);
    }

    /// `rabbitmqctl -n <node i> args`, with the cluster's cookie: its
    /// stdout, or an error with what it said.
    pub fn ctl(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .erlang(i, "rabbitmqctl")
            .args(["-n", &self.node_name(i)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run rabbitmqctl")?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl -n {} {args:?}: {}{}",
                self.node_name(i),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `rabbitmq-queues -n <node i> args`.
    fn queues_ctl(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .erlang(i, "rabbitmq-queues")
            .args(["-n", &self.node_name(i)])
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
        while !self.takes_connections(i) {
            if let Some(Ok(Some(status))) = self.nodes[i].as_mut().map(Child::try_wait) {
                panic!("{} exited while booting ({status})\n{}", self.node_name(i), self.logs());
            }
            assert!(
                started.elapsed() < Duration::from_secs(150),
                "{} did not boot in 150 s\n{}",
                self.node_name(i),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = self.ctl(i, &["await_startup", "--timeout", "60"]) {
            panic!("{} did not start: {e:#}\n{}", self.node_name(i), self.logs());
        }
    }

    /// Joins node `i` (running) to node `to`'s cluster.
    fn join(&self, i: usize, to: usize) -> anyhow::Result<()> {
        self.ctl(i, &["stop_app"])?;
        self.ctl(i, &["join_cluster", &self.node_name(to)])?;
        self.ctl(i, &["start_app"])?;
        Ok(())
    }

    /// Whether node `i` takes AMQP connections now (a node paused by
    /// `pause_minority` has closed its listener).
    pub fn takes_connections(&self, i: usize) -> bool {
        std::net::TcpStream::connect_timeout(&self.amqp_addr(i), Duration::from_millis(500)).is_ok()
    }

    /// The nodes node `i` sees running in its cluster.
    pub fn running_nodes(&self, i: usize) -> Vec<String> {
        let out = self.ctl(i, &["-q", "eval", "rabbit_nodes:all_running()."]).unwrap_or_default();
        self.nodes_in(&out).into_iter().map(|k| self.node_name(k)).collect()
    }

    /// Every node's AMQP URL (no credentials), in the order `first` ..,
    /// comma-separated: what a service is given.
    pub fn urls(&self, first: usize) -> String {
        (0..3).map(|k| self.url((first + k) % 3)).collect::<Vec<_>>().join(",")
    }

    /// Node `i`'s AMQP URL, without credentials.
    pub fn url(&self, i: usize) -> String {
        format!("amqp://{}/%2f", self.amqp_addr(i))
    }

    /// Node `i`'s AMQP URL as guest (the tests' observer; guest may log
    /// in from loopback only, so on a loopback cluster only).
    pub fn guest_url(&self, i: usize) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp_addr(i))
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
            .erlang(i, "rabbitmqctl")
            .args(["-n", &self.node_name(i), "-q", "import_definitions"])
            .stdin(Stdio::from(input))
            .output()
            .expect("run rabbitmqctl");
        assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn any_running(&self) -> usize {
        (0..3).find(|&i| self.nodes[i].is_some()).expect("a running node")
    }

    /// What RabbitMQ says of `queue`'s info item `item` (`leader`,
    /// `members`, `online`, `type`, `messages`, as `list_queues` names
    /// them), asked of node `via`: the queue's info as its leader's node
    /// has it (its message counts are kept there), or as `via` has it if
    /// the leader's node does not answer within 5 s (cut off, down).
    ///
    /// Not `rabbitmqctl list_queues`: that has every node send its rows
    /// straight to the CLI's own Erlang node, whose name
    /// (`rabbitmqcli-N-rabbit@<this machine's name>`) names this
    /// machine's loopback, which on a test network is each host's own:
    /// the rows of the other hosts never arrive, and the command waits
    /// out its 60 s. `eval` runs on `via` and answers on the CLI's own
    /// connection.
    fn queue_info(&self, via: usize, queue: &str, item: &str) -> String {
        assert!(
            queue.bytes().chain(item.bytes()).all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "a queue name or item to quote in Erlang: {queue:?} {item:?}"
        );
        let expr = format!(
            "{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<\"/\">>, queue, <<\"{queue}\">>)), \
             At = case amqqueue:get_pid(Q) of {{_, N}} -> N; P -> node(P) end, \
             case rpc:call(At, rabbit_amqqueue, info, [Q, [{item}]], 5000) of \
             [{{_, V}}] -> V; _ -> [{{_, V}}] = rabbit_amqqueue:info(Q, [{item}]), V end."
        );
        self.ctl(via, &["-q", "eval", &expr]).unwrap_or_default().trim().to_string()
    }

    /// The node holding `queue`'s Raft leader, if it has one now.
    pub fn leader(&self, queue: &str) -> Option<usize> {
        self.leader_seen_by(self.any_running(), queue)
    }

    /// The node holding `queue`'s Raft leader as node `via` knows it:
    /// across a partition, ask a node of the side that matters.
    pub fn leader_seen_by(&self, via: usize, queue: &str) -> Option<usize> {
        self.nodes_in(&self.queue_info(via, queue, "leader")).first().copied()
    }

    /// The nodes holding a replica of `queue`.
    pub fn members(&self, queue: &str) -> Vec<usize> {
        self.nodes_in(&self.queue_info(self.any_running(), queue, "members"))
    }

    /// The nodes whose replica of `queue` runs, as node `via` sees them (a
    /// replica on a node that is down, paused or cut off is a member, not
    /// online).
    pub fn online_seen_by(&self, via: usize, queue: &str) -> Vec<usize> {
        self.nodes_in(&self.queue_info(via, queue, "online"))
    }

    /// The queue's type (`quorum`, `classic`).
    pub fn queue_type(&self, queue: &str) -> String {
        self.queue_info(self.any_running(), queue, "type")
    }

    /// Messages in `queue` (ready and unacked).
    pub fn messages(&self, queue: &str) -> Option<u64> {
        self.queue_info(self.any_running(), queue, "messages").trim().parse().ok()
    }

    /// The nodes named in `list`, a node name or a list of them as
    /// `rabbitmqctl` prints it (`[a@h, b@h]`; a long name is quoted,
    /// `'a@10.0.0.2'`), whole names only.
    fn nodes_in(&self, list: &str) -> Vec<usize> {
        let names: Vec<&str> =
            list.trim().trim_matches(['[', ']']).split(',').map(|n| n.trim().trim_matches('\'')).collect();
        (0..3).filter(|&i| names.contains(&self.node_name(i).as_str())).collect()
    }

    /// kill -9 node `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops node `i`'s Erlang VM (SIGSTOP) until [`BrokerCluster::resume`]:
    /// a node that hangs (a stalled disk, a VM its hypervisor paused) with
    /// its sockets open. The kernel still accepts what clients send it, so
    /// nothing fails on their side: only answers stop coming.
    pub fn pause(&self, i: usize) {
        self.signal(i, "STOP");
    }

    /// Lets node `i` run again after [`BrokerCluster::pause`].
    pub fn resume(&self, i: usize) {
        self.signal(i, "CONT");
    }

    /// Sends `signal` to node `i`'s VM, the process its pid file names
    /// (`rabbitmq-server` is a script that starts it).
    fn signal(&self, i: usize, signal: &str) {
        let pid = std::fs::read_to_string(self.home(i).join("pid")).unwrap_or_default();
        let pid = pid.trim();
        assert!(!pid.is_empty(), "{} has no pid file", self.node_name(i));
        let sent = Command::new("kill").args([&format!("-{signal}"), pid]).status();
        assert!(matches!(sent, Ok(s) if s.success()), "kill -{signal} {pid} ({}): {sent:?}", self.node_name(i));
    }

    /// Restarts node `i` on its own data (kill -9, then started again and
    /// waited for): what an operator does to a node stuck in its own
    /// restart.
    pub fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.spawn(i);
        self.await_startup(i);
    }

    /// Loses node `i`'s data dir (it must be down), as a dead disk does.
    pub fn lose_data(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "{} is running", self.node_name(i));
        let data = self.home(i).join("mnesia");
        std::fs::remove_dir_all(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    }

    /// Rebuilds node `i` after it lost its data: the cluster forgets the
    /// old member (a running node does it), the node starts empty, joins
    /// again and gets a replica of every quorum queue back
    /// (`rabbitmq-queues grow`). What an operator does for a dead disk.
    pub fn rebuild(&mut self, i: usize) {
        let peer = (0..3).find(|&k| k != i && self.nodes[k].is_some()).expect("a running peer");
        if let Err(e) = self.ctl(peer, &["forget_cluster_node", &self.node_name(i)]) {
            panic!("forgetting {}: {e:#}", self.node_name(i));
        }
        self.spawn(i);
        self.await_startup(i);
        if let Err(e) = self.join(i, peer) {
            panic!("rejoining {}: {e:#}\n{}", self.node_name(i), self.logs());
        }
        if let Err(e) = self.queues_ctl(peer, &["grow", &self.node_name(i), "all"]) {
            panic!("growing the quorum queues onto {}: {e:#}", self.node_name(i));
        }
    }

    /// Copies every node's logs to a directory of their own that outlives
    /// the test's scratch dir (under the system's temp dir), for a failure
    /// whose cause is in the brokers; returns it.
    pub fn keep_logs(&self) -> PathBuf {
        let kept = std::env::temp_dir().join(crate::unique("broker-cluster-logs"));
        for i in 0..3 {
            let to = kept.join(format!("nemo{}", i + 1));
            let _ = std::fs::create_dir_all(&to);
            let _ = std::fs::copy(self.home(i).join("stdout.log"), to.join("stdout.log"));
            for entry in std::fs::read_dir(self.home(i).join("log")).into_iter().flatten().flatten() {
                let _ = std::fs::copy(entry.path(), to.join(entry.file_name()));
            }
        }
        kept
    }

    /// The last lines of each node's log.
    pub fn logs(&self) -> String {
        (0..3)
            .map(|i| {
                let log = self.home(i).join(format!("log/{}.log", self.node_name(i)));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let out = std::fs::read_to_string(self.home(i).join("stdout.log")).unwrap_or_default();
                format!("---- {} ----\n{}\n{}\n", self.node_name(i), tail(&out, 12), tail(&text, 12))
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

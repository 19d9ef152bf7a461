//! The services on a 3-node RabbitMQ cluster with quorum queues, through
//! the faults a cluster exists to absorb: the node holding the task
//! queue's leader killed -9 mid-stream, a node whose data dir is lost,
//! rebuilt and rejoined, a node partitioned away from the other two
//! (each node on a host of a test network, `testkit::netns`), and the node
//! system-a publishes through stopped, its sockets open and silent. A fault a
//! majority survives must cost latency only: no refused submit, nothing
//! lost, nothing applied twice.
//!
//! Each test starts its own cluster (`testkit::broker_cluster`), one at a
//! time, and a coordinator of its own; system-a and the two system-b are
//! given the three nodes in a different order each, so a service is
//! connected to every node and whichever dies takes a service's connection
//! with it. Each prints its figures (submits, latency p99 and max, time to
//! recover); docs/faults.md records them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_tests::broker_cluster::BrokerCluster;
use e2e_tests::stream::{submit_stream, Stream};
use e2e_tests::{start_coordinator, Proc, TempDir};
use testkit::netns::Net;
use zk_recipes::session::Client;

/// The task pipeline on a fresh broker cluster and coordinator: system-a
/// and two system-b (5 ms of work a task), each given the three nodes
/// starting from a different one, with a stream of submits from 4 clients
/// running until [`Pipeline::stop_stream`]. Where system-a publishes is
/// the test's choice ([`Publisher`]).
struct Pipeline {
    // Fields drop in order: the services stop before the servers under
    // them, and the scratch directory goes last.
    _a: Proc,
    _bs: Vec<Proc>,
    c: Client,
    stop: Arc<AtomicBool>,
    stream: Option<tokio::task::JoinHandle<Stream>>,
    root: String,
    queue: String,
    store: PathBuf,
    /// The node system-a publishes through (first in its list).
    a_node: usize,
    _coordinator: Proc,
    cluster: BrokerCluster,
    _dir: TempDir,
}

/// Which node system-a starts on, against the task queue's leader; the
/// two system-b start on the other two nodes.
#[derive(Clone, Copy)]
enum Publisher {
    /// The leader's: a fault of that node takes the queue's leader and
    /// system-a's unconfirmed publishes at once.
    OnTheLeadersNode,
    /// Another (the second system-b then starts on the leader's): a fault
    /// of system-a's node and a fault of the leader's are different faults.
    AwayFromTheLeader,
}

impl Pipeline {
    /// The pipeline on a fresh loopback cluster.
    async fn start(prefix: &str, publisher: Publisher) -> Pipeline {
        let dir = TempDir::new(prefix);
        let cluster = tokio::task::block_in_place(|| BrokerCluster::start(dir.path()));
        Pipeline::on(cluster, dir, publisher).await
    }

    /// The pipeline on `cluster`, with its scratch files in `dir`.
    async fn on(cluster: BrokerCluster, dir: TempDir, publisher: Publisher) -> Pipeline {
        let queue = testkit::broker::queue_name("tasks");
        let users = tokio::task::block_in_place(|| cluster.provision(&queue));
        let replicas = tokio::task::block_in_place(|| (cluster.queue_type(&queue), cluster.members(&queue)));
        assert_eq!(replicas, ("quorum".to_string(), vec![0, 1, 2]), "the task queue: a quorum queue on every node");
        let leader = tokio::task::block_in_place(|| cluster.leader(&queue)).expect("the task queue has a leader");
        let from = match publisher {
            Publisher::OnTheLeadersNode => 0,
            Publisher::AwayFromTheLeader => 1,
        };
        let [a_node, b1_node, b2_node] = [0, 1, 2].map(|k| (leader + from + k) % 3);
        let (coordinator, zk) = start_coordinator(&["--tick-time", "500"], dir.path());
        let root = format!("/{}", testkit::unique("bcl"));
        let store = dir.path().join("store");
        let c = Client::connect(&zk, Duration::from_secs(10), Duration::from_secs(10)).await.expect("connect");
        let configured = async {
            for (node, body) in [("system-b", r#"{"work_ms":5}"#), ("system-a", r#"{"timeout_ms":60000}"#)] {
                let path = format!("{root}/config/{node}");
                zk_recipes::ensure_path(&c.zk, &path).await.expect("config");
                c.zk.set_data(&path, body.as_bytes().to_vec(), None).await.expect("set");
            }
        };
        tokio::time::timeout(Duration::from_secs(10), configured).await.expect("configured in time");
        let common = |name: &str, role: &str, first: usize| {
            let mut args =
                vec!["--zk".to_string(), zk.clone(), "--root".into(), root.clone(), "--queue".into(), queue.clone()];
            args.extend(["--instance".to_string(), name.to_string()]);
            args.extend(users.flags_at(role, &cluster.urls(first)));
            args
        };
        let mut bs = Vec::new();
        for (name, first) in [("b1", b1_node), ("b2", b2_node)] {
            let mut args = common(name, "system-b", first);
            args.extend(["--store-dir".to_string(), store.to_str().expect("utf-8").to_string()]);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut p = Proc::spawn("system-b", &refs, dir.path());
            p.wait_line("system-b ready", Duration::from_secs(30));
            bs.push(p);
        }
        let mut args = common("a1", "system-a", a_node);
        args.extend(["--listen".to_string(), "127.0.0.1:0".to_string()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut a = Proc::spawn("system-a", &refs, dir.path());
        let a_addr = a.wait_line("system-a listening on", Duration::from_secs(30));
        a.wait_line("system-a connected to RabbitMQ", Duration::from_secs(30));
        let stop = Arc::new(AtomicBool::new(false));
        let stream = Some(tokio::spawn(submit_stream(a_addr, 4, stop.clone())));
        Pipeline {
            _a: a,
            _bs: bs,
            c,
            stop,
            stream,
            root,
            queue,
            store,
            a_node,
            _coordinator: coordinator,
            cluster,
            _dir: dir,
        }
    }

    /// Ends the stream of submits; what it saw.
    async fn stop_stream(&mut self) -> Stream {
        self.stop.store(true, Ordering::Relaxed);
        let stream = self.stream.take().expect("the stream runs");
        tokio::time::timeout(Duration::from_secs(60), stream).await.expect("in time").expect("stream")
    }

    /// The task queue empties within 10 s: the copies still in it (late
    /// re-publishes, redeliveries) are consumed as no-ops, none is stuck.
    async fn assert_queue_drains(&self) {
        let mut left = None;
        for _ in 0..20 {
            left = tokio::task::block_in_place(|| self.cluster.messages(&self.queue));
            if left == Some(0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(left, Some(0), "every message consumed");
    }

    /// No submit of `s` failed; each entity's value is its count of
    /// successful submits, and the task nodes answered `done` are as many:
    /// nothing lost, nothing applied twice.
    async fn assert_exactly_once(&self, s: &Stream, during: &str) {
        assert!(
            s.failed.is_empty(),
            "{} submits failed {during}, first: {:?}",
            s.failed.len(),
            s.failed.iter().take(3).collect::<Vec<_>>()
        );
        // A duplicate publish (a confirm lost with its node) may still be
        // on its way: give it the time to be (not) applied.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (entity, ok) in &s.per_entity {
            let value = e2e_tests::entity_value(&self.store, entity);
            assert_eq!(value, *ok, "{entity}: a task was lost or applied twice {during}");
        }
        let done = async {
            let tasks = format!("{}/tasks", self.root);
            let mut done = 0;
            for t in self.c.zk.get_children(&tasks, false).await.expect("tasks") {
                let (data, _) = self.c.zk.get_data(&format!("{tasks}/{t}"), false).await.expect("task");
                if String::from_utf8_lossy(&data).contains(r#""status":"done""#) {
                    done += 1;
                }
            }
            done
        };
        let done = tokio::time::timeout(Duration::from_secs(30), done).await.expect("counted in time");
        assert_eq!(done, s.ok(), "the task nodes and the submits disagree {during}");
    }
}

/// The node holding the task queue's Raft leader killed -9 while 4 clients
/// submit: a new leader takes over on the two nodes left, the services
/// connected to the dead node move to the others, and every submit is
/// done, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_stream_survives_the_queue_leaders_node_killed() {
    let mut p = Pipeline::start("bcl-leader", Publisher::OnTheLeadersNode).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = p.cluster.leader(&p.queue).expect("the task queue has a leader");
    let killed = Instant::now();
    p.cluster.kill9(leader);
    let new_leader = tokio::task::block_in_place(|| loop {
        match p.cluster.leader(&p.queue) {
            Some(l) if l != leader => return l,
            _ => assert!(killed.elapsed() < Duration::from_secs(30), "no new leader within 30 s"),
        }
        std::thread::sleep(Duration::from_millis(100));
    });
    let elected = killed.elapsed();
    // Keep submitting a while after: the moves and the outbox's re-publishes.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let s = p.stop_stream().await;
    println!(
        "{}",
        s.report(
            &format!(
                "task queue leader's node {} killed, {} leads (seen {elected:?} after)",
                p.cluster.node_name(leader),
                p.cluster.node_name(new_leader)
            ),
            killed
        )
    );
    p.assert_exactly_once(&s, "through the leader's death").await;
    assert!(s.ok() > 20, "too few submits to mean anything: {}", s.ok());
    let after_kill = s.calls.iter().filter(|c| c.ok && c.at > killed.duration_since(s.started)).count();
    assert!(after_kill > 10, "too few submits after the kill to mean anything: {after_kill}");
}

/// The node system-a publishes through (no system-b's, and not the task
/// queue's leader) stops (SIGSTOP) and stays stopped for 30 s while 4
/// clients submit: its socket stays open and silent, so nothing closes
/// system-a's connection for 20 s (two missed AMQP heartbeats; minutes at
/// RabbitMQ's default). A confirm that does not come in time is system-a's sign
/// to leave that node: it moves to the next, and the outbox publishes
/// again what the silent node may have swallowed. Submits keep completing
/// while the node is still stopped; after it resumes, every submit is done
/// exactly once and the queue drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_stream_survives_the_publishing_node_stopped() {
    let mut p = Pipeline::start("bcl-pause", Publisher::AwayFromTheLeader).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped = p.a_node;
    let leader = p.cluster.leader(&p.queue);
    assert_ne!(leader, Some(stopped), "the leader moved before the fault");
    let paused = Instant::now();
    p.cluster.pause(stopped);
    const HELD: Duration = Duration::from_secs(30);
    tokio::time::sleep(HELD).await;
    p.cluster.resume(stopped);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = p.stop_stream().await;
    println!(
        "{}",
        s.report(
            &format!(
                "{} (system-a's node; the queue's leader: {:?}) stopped for {HELD:?}",
                p.cluster.node_name(stopped),
                leader.map(|l| p.cluster.node_name(l))
            ),
            paused
        )
    );
    // The second half of the pause: by then system-a must have moved.
    let at = paused.duration_since(s.started);
    let late = s.calls.iter().filter(|c| c.ok && c.at + c.took > at + HELD / 2 && c.at + c.took < at + HELD).count();
    assert!(late > 10, "only {late} submits completed in the second half of the pause: system-a did not move");
    p.assert_exactly_once(&s, "through the stopped node").await;
    p.assert_queue_drains().await;
}

/// A node's data dir lost (kill -9, its mnesia dir deleted), then the node
/// rebuilt as an operator does (forgotten, started empty, joined again,
/// given its replica back): tasks flow throughout, none lost or doubled,
/// and the task queue ends with a replica on every node again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_stream_survives_a_node_losing_its_data() {
    let mut p = Pipeline::start("bcl-disk", Publisher::OnTheLeadersNode).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The leader's node: the worst one to lose.
    let lost = p.cluster.leader(&p.queue).expect("the task queue has a leader");
    let fault = Instant::now();
    p.cluster.kill9(lost);
    p.cluster.lose_data(lost);
    // Two nodes carry the stream a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rebuilding = Instant::now();
    tokio::task::block_in_place(|| p.cluster.rebuild(lost));
    let rebuilt = rebuilding.elapsed();
    let members = tokio::task::block_in_place(|| p.cluster.members(&p.queue));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = p.stop_stream().await;
    println!(
        "{} (the rebuild took {rebuilt:?})",
        s.report(&format!("{} lost its data dir and was rebuilt", p.cluster.node_name(lost)), fault)
    );
    p.assert_exactly_once(&s, "through the data loss and the rebuild").await;
    assert_eq!(members, vec![0, 1, 2], "the rebuilt node holds a replica of the task queue again");
    assert!(s.ok() > 20, "too few submits to mean anything: {}", s.ok());
    // Late copies (outbox re-publishes whose first copy was confirmed after
    // all) are consumed as no-ops; then the queue is empty.
    p.assert_queue_drains().await;
}

/// The node holding the task queue's Raft leader (and system-a's
/// connection) cut from the other two, in silence, for longer than the
/// nodes take to notice (`net_ticktime`, 10 s on a test network), while 4
/// clients submit; the services and the test stay in the root namespace
/// and reach all three nodes throughout, as clients in another zone
/// would. The two nodes elect a new leader; the cut node, a minority,
/// pauses (`pause_minority`: it closes its clients' connections, so they
/// move to the majority) and, after the heal, starts again by itself and
/// rejoins. Every submit is done, each exactly once; afterwards every node
/// sees all three running (no split cluster left behind) and the queue has
/// its three replicas online and nothing left in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_stream_survives_a_minority_node_partitioned_away() {
    let net = Net::create();
    let dir = TempDir::new("bcl-partition");
    let cluster = tokio::task::block_in_place(|| BrokerCluster::start_on(&net, dir.path()));
    let mut p = Pipeline::on(cluster, dir, Publisher::OnTheLeadersNode).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cut = p.cluster.leader(&p.queue).expect("the task queue has a leader");
    let majority: Vec<usize> = (0..3).filter(|&k| k != cut).collect();
    let host = |i: usize| p.cluster.host(i).expect("a node on a host").to_string();
    let (cut_host, majority_hosts) = (host(cut), majority.iter().map(|&k| host(k)).collect::<Vec<_>>());
    let fault = Instant::now();
    net.partition(&[&[cut_host.as_str()], &[majority_hosts[0].as_str(), majority_hosts[1].as_str()]]);
    // The majority elects a leader of its own, and the cut node pauses:
    // both within the failure detection and a few seconds. The pause is
    // watched on a thread of its own (a TCP connect every 100 ms), as each
    // question about the leader is a rabbitmqctl of a second or more.
    let limit = Duration::from_secs(60);
    let (new_leader, elected, paused) = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let paused = scope.spawn(|| loop {
                if !p.cluster.takes_connections(cut) {
                    return Some(fault.elapsed());
                }
                if fault.elapsed() > limit {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(100));
            });
            let leader = loop {
                if let Some(l) = p.cluster.leader_seen_by(majority[0], &p.queue).filter(|&l| l != cut) {
                    break Some((l, fault.elapsed()));
                }
                if fault.elapsed() > limit {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            let paused = paused.join().expect("the pause watch");
            match (leader, paused) {
                (Some((l, elected)), Some(paused)) => (l, elected, paused),
                (leader, paused) => panic!(
                    "{limit:?} into the cut: majority's leader {leader:?}, cut node paused {paused:?}\n{}",
                    p.cluster.logs()
                ),
            }
        })
    });
    // The majority alone carries the stream a while.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!p.cluster.takes_connections(cut), "the cut node, a minority, serves clients again before the heal");
    let cut_for = fault.elapsed();
    net.heal();
    // The paused node starts again once it sees the majority, and its
    // replica catches up. In about 1 run of 10 here RabbitMQ's own restart
    // of a paused node hangs ("Starting broker...", its log ending in
    // "Faking nodedown/nodeup" and stray `global_name_server` messages;
    // RabbitMQ 3.10.8 on OTP 25, rabbitmq-server issues 8110 and 17319
    // describe the like). That is the broker's, not a promise of ours: the
    // test says so loudly, keeps the logs, and does what the runbook
    // (docs/faults.md) tells an operator, a restart of that node, after
    // which it must rejoin like any other. The task promises are checked
    // either way.
    let rejoined_by_itself = tokio::task::block_in_place(|| rejoin(&p, cut, majority[0], Duration::from_secs(60)));
    let rejoined = match rejoined_by_itself {
        Ok(after) => format!("rejoined {after:?} after the heal"),
        Err(state) => {
            let logs = p.cluster.keep_logs();
            println!(
                "RABBITMQ STUCK: {} has not rejoined by itself 60 s after the heal ({state}); its logs are kept in {}; \
                 restarting it, as an operator would",
                p.cluster.node_name(cut),
                logs.display()
            );
            let restarting = Instant::now();
            tokio::task::block_in_place(|| p.cluster.restart(cut));
            let took = restarting.elapsed();
            match tokio::task::block_in_place(|| rejoin(&p, cut, majority[0], Duration::from_secs(90))) {
                Ok(after) => format!("stuck 60 s after the heal, restarted in {took:?}, rejoined {after:?} later"),
                Err(state) => panic!(
                    "{} has not rejoined 90 s after its restart either: {state}; the nodes' logs are kept in {}\n{}",
                    p.cluster.node_name(cut),
                    logs.display(),
                    p.cluster.logs()
                ),
            }
        }
    };
    // Submits through the rejoined cluster a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = p.stop_stream().await;
    let (gap, gap_at) = s.longest_gap();
    let fault_at = fault.duration_since(s.started);
    println!(
        "{} | cut for {cut_for:?}: {} led after {elected:?}, the cut node paused after {paused:?}, {rejoined}; \
         longest time without a task done {gap:?}, from {:+.1} s of the cut",
        s.report(&format!("{} (the queue's leader) partitioned away", p.cluster.node_name(cut)), fault),
        p.cluster.node_name(new_leader),
        gap_at.as_secs_f64() - fault_at.as_secs_f64(),
    );
    p.assert_exactly_once(&s, "through the partition").await;
    assert!(s.ok() > 20, "too few submits to mean anything: {}", s.ok());
    let after_cut = s.calls.iter().filter(|c| c.ok && c.at > fault_at + cut_for).count();
    assert!(after_cut > 10, "too few submits after the heal to mean anything: {after_cut}");
    // One cluster again, not two halves that each think they are it.
    tokio::task::block_in_place(|| {
        for i in 0..3 {
            assert_eq!(p.cluster.running_nodes(i).len(), 3, "{} sees a split cluster", p.cluster.node_name(i));
        }
        assert_eq!(p.cluster.members(&p.queue), vec![0, 1, 2], "the task queue keeps its three replicas");
    });
    // Redelivered copies (deliveries to the cut node's consumer, returned
    // when it was taken for gone) are consumed as no-ops; then the queue
    // is empty.
    p.assert_queue_drains().await;
}

/// Waits up to `limit` for node `i` to be back in the cluster: taking
/// connections, seeing all three nodes running, and (as `via` sees it)
/// every replica of the task queue online. How long it took, or what was
/// still missing.
fn rejoin(p: &Pipeline, i: usize, via: usize, limit: Duration) -> Result<Duration, String> {
    let since = Instant::now();
    loop {
        let takes = p.cluster.takes_connections(i);
        let running = p.cluster.running_nodes(i);
        let online = p.cluster.online_seen_by(via, &p.queue);
        if takes && running.len() == 3 && online == vec![0, 1, 2] {
            return Ok(since.elapsed());
        }
        if since.elapsed() > limit {
            return Err(format!(
                "takes connections {takes}, sees running {running:?}, the queue's replicas online {online:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

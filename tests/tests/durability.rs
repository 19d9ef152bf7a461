//! An acknowledged write survives a crash of the coordinator.
//!
//! Several clients (the zookeeper-async client, not our own code) write
//! concurrently and record every write the server acknowledged; the server
//! is killed with SIGKILL at a random moment, restarted on the same data
//! dir, and every acknowledged write must be there with its value, while
//! nothing appears that no client ever attempted. Repeated with different
//! kill points.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use e2e_tests::{start_coordinator, TempDir};
use parking_lot::Mutex;
use rand::Rng;
use zookeeper_async::{Acl, CreateMode, ZooKeeper};

const ROUNDS: usize = 8;
const WRITERS: usize = 4;

#[derive(Default)]
struct Ledger {
    /// Creates the server acknowledged, with their data.
    acked: HashMap<String, Vec<u8>>,
    /// Creates sent (acknowledged or not).
    attempted: HashSet<String>,
    /// Per counter node: highest value acknowledged, highest value sent.
    counters: HashMap<String, (i64, i64)>,
}

async fn connect(addr: &str) -> ZooKeeper {
    tokio::time::timeout(Duration::from_secs(10), ZooKeeper::connect(addr, Duration::from_secs(10), |_| {}))
        .await
        .expect("connect within 10 s")
        .expect("connect")
}

async fn writer(addr: String, round: usize, w: usize, ledger: Arc<Mutex<Ledger>>) {
    let zk = connect(&addr).await;
    let counter = format!("/d/k{w}");
    for i in 0.. {
        let path = format!("/d/r{round}-w{w}-{i}");
        let data = format!("value-{round}-{w}-{i}").into_bytes();
        ledger.lock().attempted.insert(path.clone());
        match zk.create(&path, data.clone(), Acl::open_unsafe().clone(), CreateMode::Persistent).await {
            Ok(_) => {
                ledger.lock().acked.insert(path, data);
            }
            Err(_) => return,
        }
        let value = (round * 100_000 + i) as i64;
        ledger.lock().counters.entry(counter.clone()).or_default().1 = value;
        match zk.set_data(&counter, value.to_string().into_bytes(), None).await {
            Ok(_) => ledger.lock().counters.entry(counter.clone()).or_default().0 = value,
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = TempDir::new("durability");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = rand::rng();

    {
        let (_c, addr) = start_coordinator(&["--data-dir", data], dir.path());
        let zk = connect(&addr).await;
        zk.create("/d", vec![], Acl::open_unsafe().clone(), CreateMode::Persistent).await.expect("create /d");
        for w in 0..WRITERS {
            zk.create(&format!("/d/k{w}"), b"-1".to_vec(), Acl::open_unsafe().clone(), CreateMode::Persistent)
                .await
                .expect("create counter");
        }
    }

    for round in 0..ROUNDS {
        let (mut server, addr) = start_coordinator(&["--data-dir", data], dir.path());
        let tasks: Vec<_> =
            (0..WRITERS).map(|w| tokio::spawn(writer(addr.clone(), round, w, ledger.clone()))).collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
        server.kill9();
        for t in tasks {
            t.abort();
        }

        let (_server, addr) = start_coordinator(&["--data-dir", data], dir.path());
        let zk = connect(&addr).await;
        // The writers are gone; take the ledger out before awaiting.
        let l = std::mem::take(&mut *ledger.lock());
        assert!(!l.acked.is_empty() || round > 0, "round {round}: no write was acknowledged before the kill");
        let mut present = HashSet::new();
        for child in zk.get_children("/d", false).await.expect("list /d") {
            present.insert(format!("/d/{child}"));
        }
        for (path, value) in &l.acked {
            assert!(present.contains(path), "round {round}: acknowledged {path} is missing after the crash");
            let (got, _) = zk.get_data(path, false).await.expect("read an acknowledged node");
            assert_eq!(&got, value, "round {round}: {path} has the wrong value");
        }
        for path in present.iter().filter(|p| !p.starts_with("/d/k")) {
            assert!(l.attempted.contains(path), "round {round}: {path} appeared but no client ever wrote it");
        }
        for (counter, (acked, attempted)) in &l.counters {
            let (got, _) = zk.get_data(counter, false).await.expect("read a counter");
            let got: i64 = String::from_utf8_lossy(&got).parse().expect("a number");
            assert!(
                got >= *acked && got <= *attempted,
                "round {round}: {counter} = {got}, but {acked} was acknowledged and {attempted} the last sent"
            );
        }
        println!("round {round}: {} creates acknowledged so far, all present", l.acked.len());
        *ledger.lock() = l;
    }
}

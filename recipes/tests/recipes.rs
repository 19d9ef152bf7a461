//! Every recipe against both servers, including the hard cases: session
//! expiry (forced the ZooKeeper way through a proxy) and connection loss.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::for_both;
use testkit::proxy::ZkProxy;
use testkit::unique;
use zk_recipes::config::watch_data;
use zk_recipes::election::{leader, Election};
use zk_recipes::lock::{Lock, LockError};
use zk_recipes::registry::{members, register};
use zk_recipes::session::Client;
use zk_recipes::task::TaskStatus;

const SESSION: Duration = Duration::from_secs(4);

async fn client(addr: &str) -> Client {
    Client::connect(addr, SESSION, Duration::from_secs(10)).await.expect("connect")
}

async fn within<T>(what: &str, limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| panic!("{what} did not happen within {limit:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_lets_one_holder_through_at_a_time_with_increasing_tokens() {
    for_both(|addr| async move {
        let dir = format!("/{}", unique("lock"));
        let counter = Arc::new(AtomicI64::new(0));
        let inside = Arc::new(AtomicBool::new(false));
        let last_token = Arc::new(AtomicI64::new(0));
        let mut tasks = Vec::new();
        for w in 0..6 {
            let (addr, dir, counter, inside, last_token) =
                (addr.clone(), dir.clone(), counter.clone(), inside.clone(), last_token.clone());
            tasks.push(tokio::spawn(async move {
                let c = client(&addr).await;
                let lock = Lock::new(&c, dir);
                for _ in 0..10 {
                    let g = lock.acquire(&format!("w{w}"), Duration::from_secs(30)).await.expect("acquire");
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                    assert!(g.token() > last_token.swap(g.token(), Ordering::SeqCst), "token did not increase");
                    // A read-modify-write that only the lock makes safe.
                    let v = counter.load(Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    counter.store(v + 1, Ordering::SeqCst);
                    inside.store(false, Ordering::SeqCst);
                    g.release().await;
                }
            }));
        }
        for t in tasks {
            within("6 workers x 10 increments", Duration::from_secs(60), t).await.expect("worker");
        }
        assert_eq!(counter.load(Ordering::SeqCst), 60);
        let c = client(&addr).await;
        assert!(Lock::new(&c, dir).queue().await.expect("queue").is_empty(), "a released lock left a node");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_times_out_and_leaves_no_node() {
    for_both(|addr| async move {
        let dir = format!("/{}", unique("trylock"));
        let (a, b) = (client(&addr).await, client(&addr).await);
        let held = Lock::new(&a, dir.clone()).acquire("a", Duration::from_secs(5)).await.expect("acquire");
        let lock_b = Lock::new(&b, dir.clone());
        match lock_b.acquire("b", Duration::from_millis(300)).await {
            Err(LockError::Timeout(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("two holders"),
        }
        let q = lock_b.queue().await.expect("queue");
        assert_eq!(q.len(), 1, "the timed-out waiter left its node: {q:?}");
        assert_eq!(q[0].1, "a");
        held.release().await;
        let g = lock_b.acquire("b", Duration::from_secs(5)).await.expect("free now");
        g.release().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_learns_it_lost_the_lock_when_its_session_expires() {
    for_both(|addr| async move {
        let dir = format!("/{}", unique("lost"));
        let proxy = ZkProxy::start(addr.parse().expect("addr")).await;
        let holder = client(&proxy.connect_string()).await;
        let g = Lock::new(&holder, dir.clone()).acquire("holder", Duration::from_secs(5)).await.expect("acquire");
        let mut lost = g.lost();
        assert!(!*lost.borrow());
        proxy.expire_session().await;
        within("the lost-lock signal", Duration::from_secs(10), lost.wait_for(|l| *l)).await.expect("signal");
        // The server deleted the lock node with the session: another client
        // gets the lock, with a larger token.
        let other = client(&addr).await;
        let g2 = Lock::new(&other, dir).acquire("other", Duration::from_secs(10)).await.expect("acquire after expiry");
        assert!(g2.token() > g.token());
        g2.release().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_is_told_before_its_session_can_expire() {
    for_both(|addr| async move {
        let dir = format!("/{}", unique("cut"));
        let proxy = ZkProxy::start(addr.parse().expect("addr")).await;
        let holder = client(&proxy.connect_string()).await;
        let g = Lock::new(&holder, dir).acquire("holder", Duration::from_secs(5)).await.expect("acquire");
        let mut lost = g.lost();
        let cut_at = tokio::time::Instant::now();
        proxy.cut();
        within("the lost-lock signal after a cut", SESSION, lost.wait_for(|l| *l)).await.expect("signal");
        assert!(cut_at.elapsed() < SESSION, "noticed only after the session could have expired");
        proxy.restore();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_has_one_leader_hands_over_on_resign_and_on_expiry() {
    for_both(|addr| async move {
        let dir = format!("/{}", unique("election"));
        let proxy = ZkProxy::start(addr.parse().expect("addr")).await;
        let c1 = client(&proxy.connect_string()).await;
        let l1 = Election::new(&c1, dir.clone(), "one").campaign().await.expect("first leads");
        let observer = client(&addr).await;
        assert_eq!(leader(&observer, &dir).await.expect("leader").as_deref(), Some("one"));

        let (c2, c3) = (client(&addr).await, client(&addr).await);
        let e2 = tokio::spawn({
            let (c2, dir) = (c2.clone(), dir.clone());
            async move { Election::new(&c2, dir, "two").campaign().await.expect("two") }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let e3 = tokio::spawn({
            let (c3, dir) = (c3.clone(), dir.clone());
            async move { Election::new(&c3, dir, "three").campaign().await.expect("three") }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!e2.is_finished() && !e3.is_finished(), "a second leader while the first leads");

        // Expiry of the leader's session: "two" takes over, with a larger token.
        let mut lost = l1.lost();
        proxy.expire_session().await;
        within("leader one learns it lost", Duration::from_secs(10), lost.wait_for(|l| *l)).await.expect("lost");
        let l2 = within("two leads after one's expiry", Duration::from_secs(10), e2).await.expect("two");
        assert!(l2.token() > l1.token());
        assert_eq!(leader(&observer, &dir).await.expect("leader").as_deref(), Some("two"));

        // Resignation hands over at once.
        let t = tokio::time::Instant::now();
        l2.resign().await;
        let l3 = within("three leads after two resigns", Duration::from_secs(5), e3).await.expect("three");
        assert!(t.elapsed() < Duration::from_secs(1), "handover took {:?}", t.elapsed());
        assert!(l3.token() > l1.token());
        l3.resign().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_watch_converges_on_the_latest_value() {
    for_both(|addr| async move {
        let path = format!("/{}", unique("config"));
        let (reader, writer) = (client(&addr).await, client(&addr).await);
        let mut rx = watch_data(&reader, &path);
        // Absent first, then created, then many quick writes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.borrow_and_update().is_none());
        zk_recipes::ensure_path(&writer.zk, &path).await.expect("create");
        for i in 0..50 {
            writer.zk.set_data(&path, format!("v{i}").into_bytes(), None).await.expect("set");
        }
        within(
            "convergence on v49",
            Duration::from_secs(10),
            rx.wait_for(|v| v.as_ref().is_some_and(|v| v.data == b"v49")),
        )
        .await
        .expect("watch");
        // Deleted: the value goes back to None.
        writer.zk.delete(&path, None).await.expect("delete");
        within("deletion seen", Duration::from_secs(10), rx.wait_for(|v| v.is_none())).await.expect("watch");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_drops_an_expired_member_and_it_registers_again() {
    for_both(|addr| async move {
        let dir = format!("/{}/services/b", unique("registry"));
        let proxy = ZkProxy::start(addr.parse().expect("addr")).await;
        let member = client(&proxy.connect_string()).await;
        let _reg = register(&member, &dir, "b1", br#"{"pid":1}"#).await.expect("register");
        let observer = client(&addr).await;
        assert_eq!(
            members(&observer, &dir).await.expect("members"),
            vec![("b1".to_string(), br#"{"pid":1}"#.to_vec())]
        );
        let before = observer.zk.exists(&format!("{dir}/b1"), false).await.expect("exists").expect("present");
        proxy.expire_session().await;
        // The member's client opens a new session and registers again: the
        // node is back, owned by a different session.
        within("re-registration on a new session", Duration::from_secs(15), async {
            loop {
                if let Ok(Some(s)) = observer.zk.exists(&format!("{dir}/b1"), false).await {
                    if s.ephemeral_owner != before.ephemeral_owner {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_status_sees_an_update_made_right_after_creation() {
    for_both(|addr| async move {
        let path = format!("/{}/tasks/t1", unique("task"));
        let (a, b) = (client(&addr).await, client(&addr).await);
        let mut status = TaskStatus::create(&a, &path, br#"{"status":"pending"}"#).await.expect("create");
        // B answers at once, before A even starts waiting.
        b.zk.set_data(&path, br#"{"status":"done","result":5}"#.to_vec(), None).await.expect("set");
        let got = status
            .wait_until(Duration::from_secs(10), |d| String::from_utf8_lossy(d).contains("done"))
            .await
            .expect("done");
        assert_eq!(got, br#"{"status":"done","result":5}"#.to_vec());
    })
    .await;
}

/// A watch lives on its connection: after a reconnect the server has no
/// watch for the node any more (zookeeper-async does not set it again).
/// A wait that starts after the reconnect must look at the node itself,
/// not wait for an event that cannot come; a wait that started before it
/// looks again when the state changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_status_sees_an_answer_written_after_a_reconnect() {
    for_both(|addr| async move {
        let proxy = ZkProxy::start(addr.parse().expect("addr")).await;
        let (a, b) = (client(&proxy.connect_string()).await, client(&addr).await);
        let dir = format!("/{}/tasks", unique("task"));
        for (i, wait_first) in [(1, false), (2, true)] {
            let path = format!("{dir}/t{i}");
            let mut status = TaskStatus::create(&a, &path, br#"{"status":"pending"}"#).await.expect("create");
            let answer = async {
                proxy.cut();
                proxy.restore();
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert!(a.wait_live(Duration::from_secs(10)).await, "a did not reconnect");
                b.zk.set_data(&path, br#"{"status":"done","result":5}"#.to_vec(), None).await.expect("set");
            };
            let done = |d: &[u8]| String::from_utf8_lossy(d).contains("done");
            let got = if wait_first {
                let (got, ()) = tokio::join!(status.wait_until(Duration::from_secs(10), done), answer);
                got
            } else {
                answer.await;
                status.wait_until(Duration::from_secs(10), done).await
            };
            assert_eq!(got.expect("the answer, seen"), br#"{"status":"done","result":5}"#.to_vec(), "t{i}");
        }
    })
    .await;
}

/// The server's own view of who watches what (`wchp`), for paths under `dir`:
/// (path, number of watching sessions).
fn watches_under(addr: &str, dir: &str) -> Vec<(String, usize)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect for wchp");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"wchp").expect("send wchp");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let mut found: Vec<(String, usize)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in out.lines() {
        if line.starts_with('/') {
            current = if line.starts_with(dir) {
                found.push((line.trim().to_string(), 0));
                Some(found.len() - 1)
            } else {
                None
            };
        } else if let (Some(i), false) = (current, line.trim().is_empty()) {
            found[i].1 += 1;
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_watch_only_their_predecessor_so_a_release_wakes_one() {
    for_both(|addr| async move {
        let dir = format!("/{}", unique("herd"));
        let holder = client(&addr).await;
        let held = Lock::new(&holder, dir.clone()).acquire("holder", Duration::from_secs(5)).await.expect("acquire");
        let mut waiters = Vec::new();
        for w in 0..4 {
            let (addr, dir) = (addr.clone(), dir.clone());
            waiters.push(tokio::spawn(async move {
                let c = client(&addr).await;
                let g = Lock::new(&c, dir).acquire(&format!("w{w}"), Duration::from_secs(30)).await.expect("acquire");
                g.release().await;
            }));
            // Join in order, so the queue is holder, w0, w1, w2, w3.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let queue = Lock::new(&holder, dir.clone()).queue().await.expect("queue");
        assert_eq!(queue.len(), 5, "{queue:?}");
        // Four waiters, four watches, each on a different node (its own
        // predecessor), one session each; none on the lock's parent node,
        // whose child watch would wake every waiter on every release.
        let watches = watches_under(&addr, &dir);
        let mut expected: Vec<(String, usize)> = queue[..4].iter().map(|(n, _)| (format!("{dir}/{n}"), 1)).collect();
        expected.sort();
        assert_eq!(watches, expected, "waiters must watch only their predecessor");
        held.release().await;
        for w in waiters {
            within("every waiter in turn", Duration::from_secs(30), w).await.expect("waiter");
        }
    })
    .await;
}

/// A reconnected connection is anonymous until the client has added its
/// auth again, and a request sent in that moment is refused (NOAUTH)
/// although the ACL lets the client in. `Client::as_ourselves` sends each
/// request once the session is live and again when a refusal crossed a
/// reconnect; a refusal on a steady connection is the ACL's answer and
/// comes back after its second try, not after a loop.
///
/// Here the connection is cut right before every request: the request
/// waits in the client for the reconnect and goes out on the new
/// connection, racing the re-added auth. Sent plainly, 4-5 of these 30
/// creates were refused on the coordinator and 3-9 on ZooKeeper (three
/// runs each); through `as_ourselves` none may be.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_that_crosses_a_reconnect_is_sent_as_ourselves() {
    use zookeeper_async::{Acl, CreateMode, ZkError};
    for_both(|addr| async move {
        let proxy = ZkProxy::start(addr.parse().expect("addr")).await;
        let auth = vec![("digest".to_string(), b"svc:secret".to_vec())];
        let c = Client::connect_authenticated(&proxy.connect_string(), SESSION, Duration::from_secs(10), auth)
            .await
            .expect("connect as svc");
        // Only svc may create under it; anyone may read.
        let dir = format!("/{}", unique("ours"));
        let mut acl = Acl::creator_all().clone();
        acl.extend(Acl::read_unsafe().iter().cloned());
        c.zk.create(&dir, vec![], acl, CreateMode::Persistent).await.expect("svc's node");
        let noauth = |e: &ZkError| matches!(e, ZkError::NoAuth);
        let policy = zk_recipes::retry::RetryPolicy::default();
        for i in 0..30 {
            proxy.cut();
            proxy.restore();
            let path = format!("{dir}/n{i}");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            let made = c
                .as_ourselves(deadline, noauth, || {
                    zk_recipes::retry::retry(&policy, deadline, |_| {
                        c.zk.create(&path, vec![], Acl::open_unsafe().clone(), CreateMode::Persistent)
                    })
                })
                .await;
            match made {
                Ok(_) | Err(ZkError::NodeExists) => {}
                Err(e) => panic!("create {i} across a reconnect: {e:?}"),
            }
        }
        // The ACL's own refusal: a node nobody may create under.
        let shut = format!("{dir}-shut");
        c.zk.create(&shut, vec![], Acl::read_unsafe().clone(), CreateMode::Persistent).await.expect("node");
        let tries = std::sync::atomic::AtomicU32::new(0);
        let under = format!("{shut}/x");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let refused = within(
            "the ACL's refusal",
            Duration::from_secs(5),
            c.as_ourselves(deadline, noauth, || {
                tries.fetch_add(1, Ordering::SeqCst);
                c.zk.create(&under, vec![], Acl::open_unsafe().clone(), CreateMode::Persistent)
            }),
        )
        .await;
        assert!(matches!(refused, Err(ZkError::NoAuth)), "{refused:?}");
        assert_eq!(tries.load(Ordering::SeqCst), 2, "a steady refusal is tried twice, then believed");
    })
    .await;
}

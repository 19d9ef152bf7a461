//! What a restart of the coordinator keeps and what it refuses.
//!
//! As in Apache ZooKeeper, sessions are part of the replicated state: they
//! are logged with the transaction that opens them, so a client whose
//! server restarts reconnects *to the same session* within its timeout and
//! keeps its ephemerals, while a session whose client never comes back is
//! expired after the restart and its ephemerals go with it. A data dir that
//! was damaged in the middle is reported with the file and the offset, and
//! the server refuses to start: serving a tree that silently lost a suffix
//! of acknowledged writes would be worse than not serving.

use std::time::{Duration, Instant};

use e2e_tests::{start_coordinator, Proc, TempDir};
use zookeeper_async::{Acl, CreateMode, ZkState, ZooKeeper};

async fn connect(addr: &str, session_timeout: Duration) -> ZooKeeper {
    tokio::time::timeout(Duration::from_secs(10), ZooKeeper::connect(addr, session_timeout, |_| {}))
        .await
        .expect("connect within 10 s")
        .expect("connect")
}

/// Restart on the address the first run was given, so clients that know
/// only that address find the server again.
fn restart(addr: &str, data: &str, log_dir: &std::path::Path) -> Proc {
    let mut p = Proc::spawn("coordinator", &["--listen", addr, "--data-dir", data], log_dir);
    p.wait_line("coordinator listening on", Duration::from_secs(20));
    p
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_their_ephemerals_survive_a_crash() {
    let dir = TempDir::new("recovery-sessions");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let (mut server, addr) = start_coordinator(&["--data-dir", data], dir.path());

    // `kept` reconnects after the restart; `gone` never does.
    let kept = connect(&addr, Duration::from_secs(20)).await;
    let (states_tx, mut states) = tokio::sync::mpsc::unbounded_channel();
    kept.add_listener(move |s: ZkState| {
        let _ = states_tx.send(s);
    });
    kept.create("/kept", b"k".to_vec(), Acl::open_unsafe().clone(), CreateMode::Ephemeral).await.expect("create");
    // `gone` lives on a runtime of its own: dropping that runtime stops the
    // client's I/O task for good, as a crashed client process would. (Merely
    // dropping a client handle leaves its task reconnecting, which keeps the
    // session alive: correct, but not the case under test.)
    let gone_addr = addr.clone();
    let gone_rt = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let gone = connect(&gone_addr, Duration::from_secs(4)).await;
            gone.create("/gone", b"g".to_vec(), Acl::open_unsafe().clone(), CreateMode::Ephemeral)
                .await
                .expect("create");
        });
        rt
    })
    .join()
    .expect("the abandoned client's thread");
    let (_, owner_before) = kept.get_data("/kept", false).await.expect("read /kept");

    server.kill9();
    // The dead connection cannot carry a closeSession: `gone`'s session can
    // only end by expiring on the restarted server.
    gone_rt.shutdown_background();
    let _server = restart(&addr, data, dir.path());

    // The client library reconnects by itself; its session is still valid,
    // so it must see Connected again and never Expired/Closed.
    wait_until("kept's reconnect", Duration::from_secs(15), || async {
        kept.exists("/kept", false).await.map(|s| s.is_some()).unwrap_or(false)
    })
    .await;
    while let Ok(s) = states.try_recv() {
        assert!(!matches!(s, ZkState::Closed | ZkState::AuthFailed), "kept's session ended: {s:?}");
    }
    let (_, owner_after) = kept.get_data("/kept", false).await.expect("read /kept after the restart");
    assert_eq!(owner_after.ephemeral_owner, owner_before.ephemeral_owner, "the ephemeral changed owner");
    assert_ne!(owner_after.ephemeral_owner, 0);

    // `gone` had a 4 s timeout; after the restart the server gives it that
    // long to come back (plus a tick of rounding), then expires it.
    let observer = connect(&addr, Duration::from_secs(10)).await;
    wait_until("the abandoned session's expiry", Duration::from_secs(12), || async {
        observer.exists("/gone", false).await.expect("exists /gone").is_none()
    })
    .await;
    assert!(observer.exists("/kept", false).await.expect("exists /kept").is_some(), "a live session's node vanished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_log_in_the_middle_stops_the_server_with_file_and_offset() {
    let dir = TempDir::new("recovery-corrupt");
    let data_path = dir.path().join("data");
    let data = data_path.to_str().expect("utf-8 path");
    {
        let (mut server, addr) = start_coordinator(&["--data-dir", data], dir.path());
        let zk = connect(&addr, Duration::from_secs(10)).await;
        for i in 0..200 {
            let path = format!("/n{i}");
            zk.create(&path, vec![7; 64], Acl::open_unsafe().clone(), CreateMode::Persistent).await.expect("create");
        }
        server.kill9();
    }
    let segment = std::fs::read_dir(&data_path)
        .expect("list the data dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("log.")))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a log segment");
    let mut bytes = std::fs::read(&segment).expect("read the segment");
    assert!(bytes.len() > 4096, "the log is shorter than expected: {} bytes", bytes.len());
    // Flip a bit well before the tail: this is not a torn last write, it is
    // damage to records that were acknowledged long ago.
    let at = bytes.len() / 3;
    bytes[at] ^= 0x10;
    std::fs::write(&segment, &bytes).expect("write the damaged segment");

    let mut p = Proc::spawn("coordinator", &["--listen", "127.0.0.1:0", "--data-dir", data], dir.path());
    let status = p.wait_exit(Duration::from_secs(20)).expect("the coordinator must refuse to start");
    assert!(!status.success(), "the coordinator started on a corrupt log");
    let log = p.log_text();
    let name = segment.file_name().and_then(|n| n.to_str()).expect("segment name");
    assert!(log.contains(name), "the error does not name the damaged file {name}:\n{log}");
    assert!(log.contains("offset"), "the error does not give an offset:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = TempDir::new("recovery-lock");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let (_first, addr) = start_coordinator(&["--data-dir", data], dir.path());
    let mut second = Proc::spawn("coordinator", &["--listen", "127.0.0.1:0", "--data-dir", data], dir.path());
    let status = second.wait_exit(Duration::from_secs(20)).expect("the second coordinator must exit");
    assert!(!status.success());
    assert!(second.log_text().contains("in use"), "unclear refusal:\n{}", second.log_text());
    // And the first carries on serving.
    let zk = connect(&addr, Duration::from_secs(10)).await;
    assert!(zk.exists("/zookeeper", false).await.expect("exists").is_some());
}

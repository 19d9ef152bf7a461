//! What the coordinator binary does with its settings and across restarts:
//! zxids that never go backwards without a data dir, and settings that are
//! checked alike whichever way they arrive (flag, environment, zoo.cfg).

use std::time::Duration;

use e2e_tests::{start_coordinator, Proc, TempDir};
use zk_wire::client::{Client, ConnectOptions};
use zk_wire::consts::{perms, CreateMode, OpCode};
use zk_wire::records::{Acl, CreateTtlRequest, Id};
use zk_wire::{Request, Response};

const LIMIT: Duration = Duration::from_secs(20);

/// Creates a node and answers its czxid.
async fn create_czxid(addr: &str, path: &str) -> i64 {
    let addr: std::net::SocketAddr = addr.parse().expect("address");
    let fut = async {
        let mut c = Client::connect(addr, ConnectOptions::default()).await.expect("connect");
        let req = Request::Create(
            OpCode::Create2,
            CreateTtlRequest {
                path: path.into(),
                data: None,
                acl: vec![Acl { perms: perms::ALL, id: Id { scheme: "world".into(), id: "anyone".into() } }],
                flags: CreateMode::Persistent.as_i32(),
                ttl: 0,
            },
        );
        let r = c.call(&req).await.expect("create");
        match r.body {
            Response::Create2(c) => c.stat.czxid,
            other => panic!("create {path}: err {} {other:?}", r.err),
        }
    };
    tokio::time::timeout(LIMIT, fut).await.expect("create within the limit")
}

/// Without a data dir every start begins with an empty tree, but its zxids
/// must still be above those of every earlier run: a lock token (czxid) or
/// a client's last-seen zxid from before the restart must not look newer
/// than what the new run hands out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_zxids_do_not_go_backwards_across_restarts() {
    let dir = TempDir::new("inmem-zxid");
    let mut last = 0;
    for run in 0..3 {
        let (mut server, addr) = start_coordinator(&[], dir.path());
        // Several writes, so a run ends above where the next one starts
        // unless the next one starts higher.
        let mut czxid = 0;
        for i in 0..20 {
            czxid = create_czxid(&addr, &format!("/n{run}-{i}")).await;
        }
        assert!(czxid > last, "run {run}: czxid {czxid:#x} is not above the last run's {last:#x}");
        last = czxid;
        server.kill9();
    }
}

/// A session-timeout bound the handshake cannot carry (above i32::MAX ms)
/// stops the server at startup with an error that names the setting,
/// whether it came as a flag, an environment variable or a zoo.cfg key.
/// (It was accepted, and every handshake then panicked.)
#[test]
fn a_session_timeout_bound_above_i32_max_is_refused_at_startup() {
    let dir = TempDir::new("cfg-timeouts");
    let cfg = dir.path().join("zoo.cfg");
    std::fs::write(&cfg, "maxSessionTimeout=3000000000\n").expect("write zoo.cfg");
    let cfg = cfg.to_str().expect("utf-8 path").to_string();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 3] = [
        (&["--max-session-timeout", "3000000000"], &[], "--max-session-timeout"),
        (&[], &[("COORDINATOR_MAX_SESSION_TIMEOUT", "3000000000")], "--max-session-timeout"),
        (&["--config", &cfg], &[], "maxSessionTimeout"),
    ];
    for (args, env, named) in cases {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut p = Proc::spawn_with_env("coordinator", &all, env, dir.path());
        let status = p.wait_exit(LIMIT).unwrap_or_else(|| panic!("{args:?} {env:?}: still running"));
        assert_eq!(status.code(), Some(2), "{args:?} {env:?}: {}", p.log_text());
        let log = p.log_text();
        assert!(log.contains(named) && log.contains("2147483647"), "{args:?} {env:?}: {log}");
    }
}

/// zoo.cfg keys with no effect here are named in the log at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zoo_cfg_keys_without_effect_are_named_at_startup() {
    let dir = TempDir::new("cfg-warn");
    let cfg = dir.path().join("zoo.cfg");
    std::fs::write(&cfg, "tickTime=500\nsnapCount=10\ndataLogDir=/elsewhere\nnoSuchKey=1\n").expect("write zoo.cfg");
    let (server, _addr) = start_coordinator(&["--config", cfg.to_str().expect("utf-8 path")], dir.path());
    let log = server.log_text();
    assert!(log.contains("dataLogDir") && log.contains("noSuchKey"), "{log}");
    assert!(!log.contains("snapCount"), "snapCount is a setting: {log}");
}

/// Snapshots are kept three deep so that one damaged snapshot does not stop
/// the server: after a crash, with the newest snapshot damaged, the server
/// recovers from an older one and the log after it, with every
/// acknowledged write. (Purge used to delete the log the older snapshots
/// need, and recovery read only the newest.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_newest_snapshot_is_survived() {
    let dir = TempDir::new("snap-fallback");
    let data = dir.path().join("data");
    let data_s = data.to_str().expect("utf-8 path").to_string();
    let (mut server, addr) = start_coordinator(&["--data-dir", &data_s, "--snap-count", "1"], dir.path());
    let snapshots = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&data)
            .expect("data dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("snapshot.")))
            .filter(|p| p.extension().is_none_or(|e| e != "tmp"))
            .collect();
        v.sort();
        v
    };
    // A snapshot is due once the log since the last one is as large as the
    // tree: rounds that double the tree, with time for the snapshot task
    // (every 500 ms) to act between them.
    let mut written = 0;
    for round in [40, 80, 160, 320] {
        for _ in 0..round {
            create_czxid(&addr, &format!("/n{written}")).await;
            written += 1;
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let snaps = snapshots();
    assert!(snaps.len() >= 2, "snapshots taken: {snaps:?}");
    server.kill9();
    let newest = snaps.last().expect("a snapshot");
    let mut bytes = std::fs::read(newest).expect("read the snapshot");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(newest, &bytes).expect("damage the snapshot");

    let (server, addr) = start_coordinator(&["--data-dir", &data_s], dir.path());
    let addr: std::net::SocketAddr = addr.parse().expect("address");
    let fut = async {
        let mut c = Client::connect(addr, ConnectOptions::default()).await.expect("connect");
        for i in 0..written {
            let r = c
                .call(&Request::Exists(zk_wire::records::PathWatchRequest { path: format!("/n{i}"), watch: false }))
                .await
                .expect("exists");
            assert_eq!(r.err, 0, "/n{i} was acknowledged and is lost");
        }
    };
    tokio::time::timeout(LIMIT, fut).await.expect("checked within the limit");
    assert!(server.log_text().contains("older snapshot"), "{}", server.log_text());
}

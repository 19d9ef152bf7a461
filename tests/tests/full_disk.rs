//! The coordinator on a disk that really fills up.
//!
//! The data directory is a small tmpfs, mostly taken by a ballast file, and
//! several clients pipeline 10 KB creates until the transaction log cannot
//! be written. What must hold, whatever the moment the disk fills:
//! - a write the server acknowledged (error 0) is present after a restart,
//!   once space is freed: the reply waits for the log's fsync, and the log
//!   stops at the first write it cannot complete;
//! - the writes after that get an error or a closed connection, never a
//!   success;
//! - the process exits within a bound (a supervisor restarts it), even with
//!   a client that never reads connected;
//! - every ephemeral's owner is a live session after the restart, and a
//!   second restart (after recovery has cut the log's torn end) finds the
//!   same.
//!
//! The test needs root (it mounts a tmpfs) and fails if it cannot mount.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_tests::requests::create;
use e2e_tests::{start_coordinator, Proc, TempDir};
use zk_wire::client::{Client, ClientError, ConnectOptions, Message};
use zk_wire::consts::{CreateMode, OpCode};
use zk_wire::frame::{finish_frame, start_frame};
use zk_wire::records::{PathWatchRequest, RequestHeader};
use zk_wire::{Jute, Request, Response};

/// Every await of the test is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);
/// The size of the small disk, and what the ballast leaves free of it.
const DISK: &str = "12m";
const BALLAST: usize = 9 << 20;
const WRITERS: usize = 4;
const VALUE: usize = 10_000;
/// Requests each writer keeps in flight.
const PIPELINE: usize = 16;

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f).await.unwrap_or_else(|_| panic!("{what}: no result within {LIMIT:?}"))
}

/// A tmpfs mounted for the test, unmounted however the test ends.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs root to mount a small tmpfs as a full disk; mount said: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process of a failed test may still hold a file there.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn get_data(path: &str) -> Request {
    Request::GetData(PathWatchRequest { path: path.into(), watch: false })
}

/// The value written at `path`: its own name, repeated, so that what is
/// read back shows which write it came from.
fn value(path: &str) -> Vec<u8> {
    path.as_bytes().iter().copied().cycle().take(VALUE).collect()
}

async fn connect(addr: SocketAddr) -> Client {
    // Sessions long enough to outlive the restart: their ephemerals are
    // then expected back.
    let opts = ConnectOptions { timeout_ms: 30_000, ..ConnectOptions::default() };
    within("connect", Client::connect(addr, opts)).await.expect("connect")
}

fn four_letter_word(addr: SocketAddr, word: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect for a 4lw");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    s.write_all(word.as_bytes()).expect("send the word");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read the answer");
    String::from_utf8_lossy(&out).into_owned()
}

/// What the writers saw.
#[derive(Default)]
struct Seen {
    acked: BTreeSet<String>,
    acked_ephemeral: BTreeSet<String>,
    sent: usize,
    errors: Vec<i32>,
    /// When a writer first saw a write fail (an error or the connection
    /// closed): the disk was full by then.
    first_failure: Option<Instant>,
    /// The children of the writers' parent that a reader was shown: a read
    /// must not show a write that is then lost either.
    read: BTreeSet<String>,
}

/// One writer: pipelines creates of `VALUE` bytes under `parent`, every
/// 8th ephemeral, until its connection closes; records what was answered.
async fn writer(addr: SocketAddr, parent: String, k: usize, seen: Arc<Mutex<Seen>>, stop: Instant) {
    let mut c = connect(addr).await;
    let mut xid = 1;
    let mut inflight: std::collections::VecDeque<(i32, String, bool)> = Default::default();
    let fail = |seen: &Mutex<Seen>| {
        let mut s = seen.lock().expect("lock");
        s.first_failure.get_or_insert_with(Instant::now);
    };
    loop {
        while inflight.len() < PIPELINE && Instant::now() < stop {
            let path = format!("{parent}/w{k}-{xid:06}");
            let ephemeral = xid % 8 == 0;
            let mode = if ephemeral { CreateMode::Ephemeral } else { CreateMode::Persistent };
            if c.send(xid, &create(&path, &value(&path), mode)).await.is_err() {
                return fail(&seen);
            }
            seen.lock().expect("lock").sent += 1;
            inflight.push_back((xid, path, ephemeral));
            xid += 1;
        }
        let Some((want, path, ephemeral)) = inflight.pop_front() else { return };
        let reply = match tokio::time::timeout(LIMIT, c.recv()).await {
            Ok(Ok(Message::Reply(r))) => r,
            Ok(Ok(Message::Event { .. })) => panic!("an event nobody asked for"),
            Ok(Err(ClientError::Closed)) | Ok(Err(ClientError::Io(_))) => return fail(&seen),
            Ok(Err(e)) => panic!("writer {k}: {e}"),
            Err(_) => panic!("writer {k}: no reply and no close within {LIMIT:?}: the server hangs"),
        };
        assert_eq!(reply.xid, want, "replies out of order");
        let mut s = seen.lock().expect("lock");
        if reply.err == 0 {
            if ephemeral {
                s.acked_ephemeral.insert(path);
            } else {
                s.acked.insert(path);
            }
        } else {
            s.errors.push(reply.err);
            s.first_failure.get_or_insert_with(Instant::now);
        }
    }
}

/// A client that lists the writers' parent over and over until its
/// connection closes, recording every child it was shown.
async fn reader(addr: SocketAddr, parent: String, seen: Arc<Mutex<Seen>>, stop: Instant) {
    let mut c = connect(addr).await;
    while Instant::now() < stop {
        let req = Request::GetChildren(PathWatchRequest { path: parent.clone(), watch: false });
        let r = match tokio::time::timeout(LIMIT, c.call(&req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(ClientError::Closed)) | Ok(Err(ClientError::Io(_))) => return,
            Ok(Err(e)) => panic!("reader: {e}"),
            Err(_) => panic!("reader: no reply and no close within {LIMIT:?}: the server hangs"),
        };
        assert_eq!(r.err, 0, "getChildren of the writers' parent");
        if let Response::Children(c) = r.body {
            let mut s = seen.lock().expect("lock");
            s.read.extend(c.children.into_iter().map(|name| format!("{parent}/{name}")));
        }
    }
}

/// A client that pipelines getData of a large node and never reads: the
/// server's writes to it block once its socket buffers are full.
async fn stuck_reader(addr: SocketAddr, path: &str) -> Client {
    let mut c = connect(addr).await;
    let mut burst = Vec::new();
    for xid in 1..=60 {
        let at = start_frame(&mut burst);
        RequestHeader { xid, op: OpCode::GetData.as_i32() }.write(&mut burst);
        get_data(path).write_body(&mut burst);
        finish_frame(&mut burst, at);
    }
    within("pipeline", c.send_raw(&burst)).await.expect("send the burst");
    c
}

/// Checks, on a restarted server, that every acknowledged create is there
/// with its value and that no ephemeral outlives its owner; returns how
/// many acknowledged persistent and ephemeral nodes are present.
async fn check_after_restart(addr: SocketAddr, seen: &Seen, when: &str) -> (usize, usize) {
    let orphans = e2e_tests::orphans_in_dump(&four_letter_word(addr, "dump"));
    assert!(orphans.is_empty(), "{when}: ephemerals owned by sessions that are gone: {orphans:?}");
    let mut c = connect(addr).await;
    let mut present = [0, 0];
    for (i, set) in [&seen.acked, &seen.acked_ephemeral].into_iter().enumerate() {
        for path in set {
            let r = within("getData", c.call(&get_data(path))).await.expect("getData");
            if r.err == 0 {
                match r.body {
                    Response::GetData(d) => {
                        assert_eq!(d.data.as_deref(), Some(&value(path)[..]), "{when}: {path} has another value")
                    }
                    other => panic!("getData answered {other:?}"),
                }
                present[i] += 1;
            } else {
                assert!(i == 1, "{when}: the acknowledged create of {path} is lost (getData error {})", r.err);
            }
        }
    }
    // Shown to a reader means on disk: a read's reply waits for the log
    // too, so a node the log never got is never shown.
    for path in &seen.read {
        let r = within("exists", c.call(&Request::Exists(PathWatchRequest { path: path.clone(), watch: false }))).await;
        assert_eq!(r.expect("exists").err, 0, "{when}: {path} was shown to a reader, then lost");
    }
    (present[0], present[1])
}

/// Starts the server on the data directory of a disk that is still full,
/// and tries one write if it starts; the write counts as acknowledged if it
/// is answered with success. The server must exit by itself within a bound
/// either way.
async fn restart_on_a_full_disk(data: &str, log_dir: &Path, parent: &str, seen: &mut Seen) {
    let bin = e2e_tests::binary("coordinator");
    let args = ["--listen", "127.0.0.1:0", "--data-dir", data, "--4lw-whitelist", "*"];
    let mut p = Proc::start(&bin, "coordinator", &args, &[], log_dir).expect("spawn the coordinator");
    let t = Instant::now();
    match p.try_wait_line("coordinator listening on", Duration::from_secs(20)) {
        Ok(addr) => {
            let addr: SocketAddr = addr.parse().expect("addr");
            let path = format!("{parent}/on-a-full-disk");
            let answer = match Client::connect(addr, ConnectOptions::default()).await {
                Ok(mut c) => {
                    match tokio::time::timeout(LIMIT, c.call(&create(&path, &value(&path), CreateMode::Persistent)))
                        .await
                    {
                        Ok(Ok(r)) if r.err == 0 => {
                            seen.acked.insert(path);
                            "acknowledged".to_string()
                        }
                        Ok(Ok(r)) => format!("error {}", r.err),
                        Ok(Err(e)) => format!("{e}"),
                        Err(_) => panic!("a write on a full disk was neither answered nor closed within {LIMIT:?}"),
                    }
                }
                Err(e) => format!("no session: {e}"),
            };
            let status = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(15)));
            println!(
                "restarted on the full disk: it started, one create: {answer}; exited {status:?} after {:?}",
                t.elapsed()
            );
            assert!(status.is_some(), "restarted on a full disk, the server did not exit within 15 s");
        }
        Err(e) => {
            let log = p.log_text();
            let last = log.lines().last().unwrap_or_default().to_string();
            println!("restarted on the full disk: it did not start ({e}) after {:?}: {last}", t.elapsed());
        }
    }
}

fn start(data: &str, log_dir: &Path) -> (Proc, SocketAddr) {
    let (p, addr) = start_coordinator(&["--data-dir", data, "--4lw-whitelist", "*"], log_dir);
    (p, addr.parse().expect("addr"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_loses_no_acknowledged_write_and_stops_the_server() {
    let dir = TempDir::new("full-disk");
    let disk = Tmpfs::mount(&dir.path().join("disk"), DISK);
    let ballast = disk.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; BALLAST]).expect("write the ballast");
    let data = disk.0.join("data").to_str().expect("utf-8").to_string();
    let (mut server, addr) = start(&data, dir.path());

    let parent = format!("/{}", testkit::unique("fill"));
    let big = format!("{parent}-big");
    let mut c = connect(addr).await;
    assert_eq!(within("create", c.call(&create(&parent, b"", CreateMode::Persistent))).await.expect("create").err, 0);
    let r = within("create", c.call(&create(&big, &vec![7u8; 200_000], CreateMode::Persistent))).await;
    assert_eq!(r.expect("create").err, 0);
    let _stuck = stuck_reader(addr, &big).await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let started = Instant::now();
    let stop = started + Duration::from_secs(30);
    let writers: Vec<_> =
        (0..WRITERS).map(|k| tokio::spawn(writer(addr, parent.clone(), k, seen.clone(), stop))).collect();
    let reader = tokio::spawn(reader(addr, parent.clone(), seen.clone(), stop));
    within("reader", reader).await.expect("the reader panicked");
    for w in writers {
        within("writer", w).await.expect("a writer panicked");
    }
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(15)));
    let exited = Instant::now();
    let seen = Arc::try_unwrap(seen).ok().expect("writers are done").into_inner().expect("lock");
    let first_failure = seen.first_failure.expect("the disk never filled: every write succeeded for 30 s");
    println!(
        "disk full after {:?}; {} creates sent, {} acknowledged ({} ephemeral), {} answered with an error {:?}",
        first_failure - started,
        seen.sent,
        seen.acked.len() + seen.acked_ephemeral.len(),
        seen.acked_ephemeral.len(),
        seen.errors.len(),
        seen.errors.iter().collect::<BTreeSet<_>>(),
    );
    println!("a reader was shown {} of the created nodes", seen.read.len());
    let status = status.expect("the server did not exit within 15 s of its disk filling up, with a reader stuck");
    println!("the server exited {:?} after the first failed write ({status})", exited - first_failure);
    assert!(!status.success(), "a server that cannot write its log must exit with an error");
    let log = server.log_text();
    assert!(log.contains("cannot write the transaction log"), "no reason given for the exit");
    assert!(log.contains("No space left on device"), "the log failed, but not because the disk was full: {log}");
    assert!(exited - first_failure < Duration::from_secs(10), "exit took {:?}", exited - first_failure);
    drop(_stuck);

    // A supervisor restarts it at once, on the disk still full: it may not
    // start, or start and fail its first write, but it must not damage
    // the log, nor acknowledge a write it cannot keep.
    let mut seen = seen;
    restart_on_a_full_disk(&data, dir.path(), &parent, &mut seen).await;

    // Space back, and the same data directory.
    std::fs::remove_file(&ballast).expect("remove the ballast");
    let (mut server, addr) = start(&data, dir.path());
    let (persistent, ephemeral) = check_after_restart(addr, &seen, "after the restart").await;
    println!(
        "after the restart: {persistent} of {} acknowledged persistent creates present, {ephemeral} of {} ephemeral",
        seen.acked.len(),
        seen.acked_ephemeral.len()
    );
    // Recovery may have cut a torn record: the log it leaves must recover too.
    server.kill9();
    let (_server, addr) = start(&data, dir.path());
    let again = check_after_restart(addr, &seen, "after a second restart").await;
    assert_eq!(again.0, persistent, "a second restart lost acknowledged creates");
}

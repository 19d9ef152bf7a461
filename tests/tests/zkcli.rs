//! Apache ZooKeeper's own command-line client (Debian's `zkCli.sh`, the Java
//! client underneath) drives both servers through the same script; its
//! output, with zxids, times and session ids normalised, must be the same,
//! and must say what the script did.
//!
//! zkCli reads commands from stdin when it is not a terminal, so one JVM runs
//! the whole script.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::Server;

const ZKCLI: &str = "/usr/share/zookeeper/bin/zkCli.sh";

/// Kills the JVM if the test ends early.
struct Jvm(Child);

impl Drop for Jvm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `script` through zkCli against `addr` and returns its stdout and stderr.
fn zkcli(addr: &str, script: &str) -> String {
    assert!(
        std::path::Path::new(ZKCLI).exists(),
        "{ZKCLI} is missing: install Debian's zookeeper package (scripts/setup.sh does)"
    );
    let out = std::env::temp_dir().join(testkit::unique("zkcli-out"));
    let file = std::fs::File::create(&out).expect("create the output file");
    let child = Command::new(ZKCLI)
        .args(["-server", addr])
        .stdin(Stdio::piped())
        .stdout(file.try_clone().expect("dup the output file"))
        .stderr(file)
        .spawn()
        .expect("start zkCli.sh");
    let mut jvm = Jvm(child);
    jvm.0.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("send the script");
    let started = Instant::now();
    loop {
        if jvm.0.try_wait().expect("poll zkCli").is_some() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "zkCli did not finish within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&out).expect("read zkCli's output");
    let _ = std::fs::remove_file(&out);
    text
}

/// Keeps what the commands printed; normalises zxids (by first appearance),
/// times and session ids. Watch events are printed by the client's event
/// thread, interleaved with command output as the two threads race, so they
/// are taken out and compared as a sorted list.
fn normalise(raw: &str) -> (Vec<String>, Vec<String>) {
    let mut zxids: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    let mut events = Vec::new();
    for line in raw.lines() {
        if line.starts_with("WatchedEvent ") {
            events.push(line.to_string());
            continue;
        }
        if line.is_empty() || line == "WATCHER::" {
            continue;
        }
        // Log lines, the JVM's logging set-up, and the connection banner.
        let noise = ["SLF4J:", "Connecting to ", "Welcome to ZooKeeper!", "JLine support"];
        if line.starts_with("20") && line.get(4..5) == Some("-") || noise.iter().any(|n| line.starts_with(n)) {
            continue;
        }
        let line = match line.split_once(" = ") {
            Some((k @ ("cZxid" | "mZxid" | "pZxid"), v)) => {
                let n = zxids.len() + 1;
                format!("{k} = z{}", zxids.entry(v.to_string()).or_insert(n))
            }
            Some((k @ ("ctime" | "mtime"), _)) => format!("{k} = <time>"),
            Some(("ephemeralOwner", v)) if v != "0x0" => "ephemeralOwner = <session>".to_string(),
            _ => line.to_string(),
        };
        out.push(line);
    }
    events.sort();
    (out, events)
}

#[test]
fn zkcli_sees_the_same_answers_from_both_servers() {
    let root = format!("/{}", testkit::unique("zkcli"));
    let script = [
        format!("create {root} root"),
        format!("create -s {root}/seq- s"),
        format!("create -e {root}/eph e"),
        format!("ls {root}"),
        format!("ls -s {root}"),
        format!("get -s {root}/eph"),
        format!("set {root}/eph new"),
        format!("stat {root}/eph"),
        format!("get {root}/eph"),
        format!("set -v 7 {root}/eph x"),
        format!("delete {root}/seq-0000000000"),
        format!("create {root}/c"),
        format!("create {root}/c/d"),
        format!("delete {root}/c"),
        format!("getAcl {root}"),
        "addauth digest alice:secret".to_string(),
        format!("create {root}/secure s auth::cdrwa"),
        format!("getAcl {root}/secure"),
        format!("get {root}/secure"),
        format!("get {root}/nope"),
        format!("create {root}/eph again"),
        format!("create -c {root}/container"),
        format!("create -t 60000 {root}/ttl t"),
        format!("stat {root}/ttl"),
        format!("setAcl {root}/c world:anyone:cdra"),
        format!("getAcl {root}/c"),
        format!("setAcl -v 9 {root}/c world:anyone:cdrwa"),
        format!("set {root}/c nope"),
        format!("sync {root}"),
        format!("getEphemerals {root}"),
        format!("getAllChildrenNumber {root}"),
        "whoami".to_string(),
        format!("addWatch -m PERSISTENT_RECURSIVE {root}"),
        format!("removewatches {root} -a"),
        format!("removewatches {root} -d"),
        format!("stat {root}/missing"),
        format!("delete -v 3 {root}/c/d"),
        format!("listquota {root}"),
        format!("ls -R {root}"),
        format!("deleteall {root}"),
        format!("ls {root}"),
        "quit".to_string(),
    ]
    .join("\n")
        + "\n";
    let mut outputs = Vec::new();
    for server in Server::ALL {
        let running = server.start();
        let text = zkcli(&running.connect_string(), &script);
        let (lines, events) = normalise(&text);
        outputs.push((lines, events, text));
    }
    let (ours, our_events, raw) = &outputs[0];
    let (theirs, their_events, _) = &outputs[1];
    assert_eq!(our_events, their_events, "zkCli saw different watch events");
    assert!(
        our_events.iter().any(|e| e.contains("type:PersistentWatchRemoved")),
        "removewatches reported no removed watch:\n{raw}"
    );
    if ours != theirs {
        let mut report = String::new();
        for i in 0..ours.len().max(theirs.len()) {
            let a = ours.get(i).map(String::as_str).unwrap_or("<missing>");
            let b = theirs.get(i).map(String::as_str).unwrap_or("<missing>");
            if a == b {
                report.push_str(&format!("    {a}\n"));
            } else {
                report.push_str(&format!("!!  coordinator: {a}\n!!  zookeeper:   {b}\n"));
            }
        }
        panic!("zkCli printed different things:\n{report}");
    }
    // And the script did what it says (the same wrong output twice would
    // pass the comparison).
    let expect = [
        format!("Created {root}/seq-0000000000"),
        format!("Created {root}/eph"),
        "[eph, seq-0000000000]".to_string(),
        "new".to_string(),
        "dataVersion = 1".to_string(),
        "ephemeralOwner = <session>".to_string(),
        format!("version No is not valid : {root}/eph"),
        format!("Node not empty: {root}/c"),
        "'world,'anyone".to_string(),
        "'digest,'alice:aYXlLOpEooaV1cRAvUL1fp9Qt7E=".to_string(),
        "s".to_string(),
        format!("Node does not exist: {root}/nope"),
        format!("Node already exists: {root}/eph"),
        format!("Node does not exist: {root}"),
        format!("Created {root}/container"),
        format!("Created {root}/ttl"),
        "'world,'anyone".to_string(),
        ": cdra".to_string(),
        format!("Insufficient permission : {root}/c"),
        format!("version No is not valid : {root}/c"),
        "Sync is OK".to_string(),
        format!("[{root}/eph]"),
        "Auth scheme: User".to_string(),
        "digest: alice".to_string(),
    ];
    for line in &expect {
        assert!(ours.contains(line), "zkCli's output lacks {line:?}:\n{raw}");
    }
}

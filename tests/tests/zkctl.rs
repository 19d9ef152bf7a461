//! The operator CLI against both servers: what an operator types, what they
//! read back.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use e2e_tests::{binary, start_coordinator, Proc, TempDir};

fn zkctl(addr: &str, args: &[&str]) -> Output {
    Command::new(binary("zkctl")).arg("--zk").arg(addr).args(args).output().expect("run zkctl")
}

fn ok(addr: &str, args: &[&str]) -> String {
    let out = zkctl(addr, args);
    assert!(out.status.success(), "zkctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn exercise(addr: &str) {
    let root = format!("/{}", testkit::unique("zkctl"));
    let cfg = format!("{root}/config/system-b");
    ok(addr, &["set", &cfg, r#"{"work_ms":5}"#, "--create"]);
    assert_eq!(ok(addr, &["get", &cfg]).trim(), r#"{"work_ms":5}"#);
    let got: serde_json::Value = serde_json::from_str(&ok(addr, &["--json", "get", &cfg])).expect("json");
    assert_eq!(got["data"]["work_ms"], 5);
    assert_eq!(got["version"], 0);

    ok(addr, &["create", &format!("{root}/services")]);
    ok(addr, &["create", &format!("{root}/services/system-b")]);
    ok(addr, &["create", &format!("{root}/services/system-b/b1"), r#"{"pid":1}"#]);
    assert_eq!(ok(addr, &["ls", &root]), "config\nservices\n");
    let tree = ok(addr, &["tree", &root]);
    let expected = format!(
        "{root}\n├── config\n│   └── system-b = {{\"work_ms\":5}}\n└── services\n    └── system-b\n        └── b1 = {{\"pid\":1}}\n"
    );
    assert_eq!(tree, expected);
    let services: serde_json::Value =
        serde_json::from_str(&ok(addr, &["--json", "services", "--root", &format!("{root}/services")])).expect("json");
    assert_eq!(services["system-b"]["b1"]["pid"], 1);

    // `watch` prints the value now, then each change made elsewhere.
    let mut watcher = Command::new(binary("zkctl"))
        .args(["--zk", addr, "watch", &cfg])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start zkctl watch");
    let stdout = watcher.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).expect("watch prints the current value");
    assert_eq!(first, r#"{"work_ms":5}"#);
    ok(addr, &["set", &cfg, r#"{"work_ms":7}"#]);
    let second = rx.recv_timeout(Duration::from_secs(10)).expect("watch prints the change");
    assert_eq!(second, r#"{"work_ms":7}"#);
    let _ = watcher.kill();
    let _ = watcher.wait();

    // Errors name the znode and fail the command.
    let missing = zkctl(addr, &["get", &format!("{root}/nope")]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains(&format!("no such znode: {root}/nope")));
    let not_empty = zkctl(addr, &["rm", &root]);
    assert!(!not_empty.status.success(), "rm without -r deleted a znode with children");

    ok(addr, &["rm", "-r", &root]);
    assert!(!zkctl(addr, &["get", &root]).status.success(), "rm -r left the root behind");
}

#[test]
fn zkctl_against_the_coordinator() {
    let dir = TempDir::new("zkctl");
    let (_server, addr): (Proc, String) = start_coordinator(&[], dir.path());
    exercise(&addr);
}

#[test]
fn zkctl_against_zookeeper() {
    exercise(&testkit::zookeeper_addr().to_string());
}

/// On a tree laid out by `zkctl init`, a change the identity may not make
/// fails with one line that names the identity needed, never a Debug dump
/// or a stack trace; the operator's file lets it through.
fn refusals(addr: &str, dir: &std::path::Path) {
    let root = format!("/{}", testkit::unique("zkctl-acl"));
    let ids = e2e_tests::provision(addr, &root, dir);
    let cfg = format!("{root}/config/system-b");
    let expected = format!("zkctl: not allowed: {cfg} needs the operator identity\n");
    let b = ids.flag("system-b");
    for who in [vec![], vec![b[0].as_str(), b[1].as_str()]] {
        let mut args = who.clone();
        args.extend(["set", &cfg, r#"{"work_ms":9}"#]);
        let out = zkctl(addr, &args);
        assert!(!out.status.success(), "zkctl {args:?} changed the config");
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected, "zkctl {args:?}");
    }
    let op = ids.flag("operator");
    ok(addr, &[&op[0], &op[1], "set", &cfg, r#"{"work_ms":9}"#]);
    assert_eq!(ok(addr, &[&b[0], &b[1], "get", &cfg]).trim(), r#"{"work_ms":9}"#, "system-b reads its config");
    // Reading an ACL needs READ or ADMIN on the node, on both servers.
    let acl = ok(addr, &[&op[0], &op[1], "getacl", &cfg]);
    assert!(acl.contains("digest:operator:") && !acl.contains("world:anyone"), "{acl}");
}

#[test]
fn refusals_on_the_coordinator() {
    let dir = TempDir::new("zkctl-acl");
    let (_server, addr): (Proc, String) = start_coordinator(&[], dir.path());
    refusals(&addr, dir.path());
}

#[test]
fn refusals_on_zookeeper() {
    let dir = TempDir::new("zkctl-acl-zk");
    refusals(&testkit::zookeeper_addr().to_string(), dir.path());
}

//! Apache Curator, the client most JVM shops use, against both servers:
//! its mutex, leader latch, atomic counter, cache, transactions and
//! persistent recursive watches (tests/java/CuratorProbe.java). Curator and
//! its dependencies come from Debian (`libcurator-recipes-java`, installed
//! by scripts/setup.sh); the probe runs in Java's single-file source mode,
//! so there is nothing to build.

use std::path::Path;
use std::process::Command;

use e2e_tests::{start_coordinator, TempDir};

const JARS: &[&str] = &[
    "curator-recipes",
    "curator-framework",
    "curator-client",
    "zookeeper",
    "zookeeper-jute",
    "guava",
    "slf4j-api",
    "slf4j-simple",
    "netty-handler",
    "netty-common",
    "netty-transport",
    "netty-buffer",
    "netty-codec",
    "netty-resolver",
    "netty-transport-native-unix-common",
    "commons-lang3",
];

fn probe(addr: &str) {
    let classpath: Vec<String> = JARS
        .iter()
        .map(|j| {
            let p = format!("/usr/share/java/{j}.jar");
            assert!(Path::new(&p).exists(), "{p} is missing: run scripts/setup.sh (libcurator-recipes-java)");
            p
        })
        .collect();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("java/CuratorProbe.java");
    let root = format!("/{}", testkit::unique("curator"));
    let out = Command::new("java")
        .arg("-cp")
        .arg(classpath.join(":"))
        .arg(source)
        .args([addr, &root])
        .output()
        .expect("run java (OpenJDK comes with Debian's zookeeper package)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "Curator probe failed against {addr}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in ["mutex: 100 increments", "latch: handover on close", "cache sees the change", "recursive watch"] {
        assert!(stdout.contains(check), "the probe did not report {check:?}:\n{stdout}");
    }
}

#[test]
fn curator_recipes_work_against_the_coordinator() {
    let dir = TempDir::new("curator");
    let (_server, addr) = start_coordinator(&[], dir.path());
    probe(&addr);
}

#[test]
fn curator_recipes_work_against_zookeeper() {
    probe(&testkit::zookeeper_addr().to_string());
}

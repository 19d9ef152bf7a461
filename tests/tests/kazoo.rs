//! kazoo, the Python client, against both servers: its lock, election,
//! DataWatch/ChildrenWatch, sequence naming and transactions
//! (tests/python/kazoo_probe.py). kazoo comes from Debian (`python3-kazoo`,
//! installed by scripts/setup.sh) and runs under Debian's own python3.

use std::process::Command;

use e2e_tests::{start_coordinator, TempDir};

const PYTHON: &str = "/usr/bin/python3";

fn probe(addr: &str) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/kazoo_probe.py");
    let root = format!("/{}", testkit::unique("kazoo"));
    let out = Command::new(PYTHON)
        .arg(script)
        .args([addr, &root])
        .output()
        .unwrap_or_else(|e| panic!("run {PYTHON}: {e}; run scripts/setup.sh (python3-kazoo)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "kazoo probe failed against {addr}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in ["lock: 100 increments", "election: handover", "DataWatch sees the change", "failed transaction"] {
        assert!(stdout.contains(check), "the probe did not report {check:?}:\n{stdout}");
    }
}

#[test]
fn kazoo_recipes_work_against_the_coordinator() {
    let dir = TempDir::new("kazoo");
    let (_server, addr) = start_coordinator(&[], dir.path());
    probe(&addr);
}

#[test]
fn kazoo_recipes_work_against_zookeeper() {
    probe(&testkit::zookeeper_addr().to_string());
}

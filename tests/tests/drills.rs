//! Every drill once, against the system `scripts/run.sh` starts (on the
//! coordinator, with the debug binaries `scripts/test.sh` built), the way a
//! reader runs them: `scripts/drill.sh NAME` in another shell. A drill
//! passes only with its `VERDICT: PASS` line and exit 0; the dashboard must
//! show the drills' effects on its timeline, checked in Chromium.
//!
//! run.sh listens on the fixed ports a reader uses (2181, 50051, 8080,
//! 8081): with another system on them this test fails at once, saying so.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// scripts/run.sh in its own process group; stopped (Ctrl-C's way, SIGTERM
/// to run.sh, which stops what it started) when dropped.
struct RunSh {
    child: std::process::Child,
    run_dir: PathBuf,
}

impl Drop for RunSh {
    fn drop(&mut self) {
        let pid = self.child.id();
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let start = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        // Whatever is left of its group (a stop that hung).
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

fn port_busy(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

fn start_run_sh() -> RunSh {
    for port in [2181, 50051, 8080, 8081] {
        assert!(!port_busy(port), "127.0.0.1:{port} is taken: stop the system running there (scripts/run.sh?) first");
    }
    let run_dir = std::env::temp_dir().join(format!("drills-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).expect("the run dir");
    let log = std::fs::File::create(run_dir.join("run.sh.log")).expect("run.sh's log");
    let child = Command::new(repo().join("scripts/run.sh"))
        .current_dir(repo())
        .env("RUN_PROFILE", "debug")
        .env("RUN_DIR", &run_dir)
        // The tests' guest URL must not reach the services: run.sh gives
        // them their own broker users.
        .env_remove("AMQP_URL")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("start scripts/run.sh");
    let sh = RunSh { child, run_dir: run_dir.clone() };
    let env = run_dir.join("system/system.env");
    let start = Instant::now();
    while !env.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "scripts/run.sh did not start the system within 300 s:\n{}",
            std::fs::read_to_string(run_dir.join("run.sh.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    sh
}

/// Runs one drill the way a reader does, returning its output.
fn drill(run_dir: &Path, name: &str) -> String {
    let mut child = Command::new(repo().join("scripts/drill.sh"))
        .arg(name)
        .current_dir(repo())
        .env("RUN_PROFILE", "debug")
        .env("RUN_DIR", run_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run scripts/drill.sh");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the drill") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(240) {
            let _ = child.kill();
            panic!("drill {name} ran past 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read the drill's output");
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read the drill's errors");
    println!("{out}");
    assert!(
        status.success() && out.contains(&format!("VERDICT: PASS {name}")),
        "drill {name} did not pass ({status}):\n{out}\n{err}\nrun.sh's logs are in {}",
        run_dir.join("system/logs").display()
    );
    out
}

#[test]
fn every_drill_passes_on_the_system_run_sh_starts() {
    let sh = start_run_sh();
    let run_dir = sh.run_dir.clone();
    // config-change first: it needs nothing broken before it.
    for name in [
        "config-change",
        "task-crash",
        "lock-stall",
        "active-crash",
        "active-pause",
        "broker-outage",
        "coordinator-restart",
    ] {
        let out = drill(&run_dir, name);
        // The evidence is named, not just the verdict, and the dashboard
        // draws it: the refused token, the new term.
        match name {
            "lock-stall" => {
                let who = before(&out, "'s stale write to ");
                timeline(
                    &format!("drill-{name}.png"),
                    &[format!("fenced:{who}"), "grant:*".into(), "latency:*".into()],
                );
            }
            "active-pause" => {
                let who = before(&out, " woke and wrote with term ");
                timeline(&format!("drill-{name}.png"), &[format!("fenced:{who}"), "term:*".into(), "down:*".into()]);
            }
            "task-crash" => assert!(out.contains("was done exactly once"), "{out}"),
            "config-change" => {
                // The versions this drill wrote, as each instance applied them.
                let b = after(&out, "system-b instances applied version ");
                let ha = after(&out, "ha-worker instances applied version ");
                let expect: Vec<String> = ["b1", "b2", "b3"]
                    .iter()
                    .map(|i| format!("config:{i}#{b}"))
                    .chain(["ha1", "ha2"].iter().map(|i| format!("config:{i}#{ha}")))
                    .collect();
                timeline(&format!("drill-{name}.png"), &expect);
            }
            _ => {}
        }
    }
}

/// The word before `marker` in the drill's output (who it is about).
fn before(out: &str, marker: &str) -> String {
    let line = out.lines().find(|l| l.contains(marker)).unwrap_or_else(|| panic!("no {marker:?} in:\n{out}"));
    let head = &line[..line.find(marker).unwrap_or(0)];
    head.rsplit(' ').next().unwrap_or_default().to_string()
}

/// The word after `marker` in the drill's output.
fn after(out: &str, marker: &str) -> String {
    let line = out.lines().find(|l| l.contains(marker)).unwrap_or_else(|| panic!("no {marker:?} in:\n{out}"));
    let tail = &line[line.find(marker).unwrap_or(0) + marker.len()..];
    tail.split_whitespace().next().unwrap_or_default().to_string()
}

/// The dashboard scripts/run.sh started draws `expect` on its timeline.
fn timeline(shot: &str, expect: &[String]) {
    e2e_tests::browser::timeline_drawn("http://127.0.0.1:8080/", shot, expect);
}

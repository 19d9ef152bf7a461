//! Helpers for end-to-end tests: the workspace's real binaries run as child
//! processes, on port 0, each in its own scratch directory, killed when the
//! test ends however it ends.

pub mod ensemble;
pub mod linearizability;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The path of a workspace binary. `scripts/test.sh` builds them all before
/// the tests run; a missing one fails the test with that instruction.
pub fn binary(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, as scripts/test.sh does)",
        path.display()
    );
    path
}

/// A scratch directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{:x}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).expect("create a scratch dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::time::SystemTime;
    let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (t as u64) ^ (std::process::id() as u64).rotate_left(32)
}

/// A running child process. Its stdout lines are collected so a test can
/// wait for a readiness line; its stderr goes to a log file that is printed
/// if the test fails while the process is alive. Killed (SIGKILL) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str], log_dir: &Path) -> Proc {
        Self::spawn_with_env(name, args, &[], log_dir)
    }

    pub fn spawn_with_env(name: &str, args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}-{:x}.log", rand_suffix()));
        let stderr = std::fs::File::create(&log).expect("create a log file");
        let mut child = Command::new(binary(name))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { name: name.to_string(), child, lines, log }
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(_) => {
                    panic!("{} did not print {prefix:?} within {timeout:?}; its log:\n{}", self.name, self.log_text())
                }
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(self.pid(), sig);
    }

    /// kill -9, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(None) = self.child.try_wait() {
                eprintln!("---- log of {} ----\n{}", self.name, self.log_text());
            }
        }
        self.kill9();
    }
}

/// Starts the coordinator binary on port 0 with `args`; returns it and the
/// address it serves.
pub fn start_coordinator(args: &[&str], log_dir: &Path) -> (Proc, String) {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut p = Proc::spawn("coordinator", &all, log_dir);
    let addr = p.wait_line("coordinator listening on", Duration::from_secs(20));
    (p, addr)
}

/// A deployment's identities: one credentials file per role, made by
/// `zkctl gen-credentials`, as `scripts/run.sh` makes them.
#[derive(Clone, Debug)]
pub struct Identities {
    pub dir: PathBuf,
}

impl Identities {
    /// The credentials file of `role` (`operator`, `system-a`, `system-b`,
    /// `ha-worker`, `dashboard`).
    pub fn file(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{role}.cred"))
    }

    /// `--zk-credentials-file <file of role>`, as owned flag values.
    pub fn flag(&self, role: &str) -> [String; 2] {
        ["--zk-credentials-file".to_string(), self.file(role).to_string_lossy().into_owned()]
    }
}

/// Systems provisioned with [`provision`], by root: the launchers below run
/// each service of such a system as its own identity.
static PROVISIONED: std::sync::Mutex<Vec<(String, Identities)>> = std::sync::Mutex::new(Vec::new());

fn identities_of(root: &str) -> Option<Identities> {
    PROVISIONED.lock().ok()?.iter().find(|(r, _)| r == root).map(|(_, i)| i.clone())
}

/// Runs a zkctl command; panics with its stderr when it fails.
pub fn zkctl(args: &[&str]) -> String {
    let out = Command::new(binary("zkctl")).args(args).output().expect("run zkctl");
    assert!(out.status.success(), "zkctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh set of identities under `dir`, and the system under `root` on
/// `zk` laid out with least-privilege ACLs by `zkctl init` as the operator:
/// what `scripts/run.sh` does before it starts the services.
pub fn provision(zk: &str, root: &str, dir: &Path) -> Identities {
    let ids = Identities { dir: dir.join("identities") };
    zkctl(&["gen-credentials", ids.dir.to_str().expect("utf-8 path")]);
    let op = ids.flag("operator");
    zkctl(&["--zk", zk, &op[0], &op[1], "init", "--root", root]);
    if let Ok(mut p) = PROVISIONED.lock() {
        p.push((root.to_string(), ids.clone()));
    }
    ids
}

/// The scenario services, configured alike in every suite: a system-b
/// instance on `queue` under `root`, sharing `store`, with a short session
/// (`session_ms`) so faults show within seconds. Returns once it consumes.
/// A system [`provision`]ed under `root` runs it as the system-b identity.
pub fn start_system_b(
    zk: &str,
    root: &str,
    queue: &str,
    store: &Path,
    name: &str,
    session_ms: u64,
    log_dir: &Path,
) -> Proc {
    let amqp = amqp_url();
    let session = session_ms.to_string();
    let args = [
        "--zk",
        zk,
        "--root",
        root,
        "--queue",
        queue,
        "--store-dir",
        store.to_str().expect("utf-8 path"),
        "--instance",
        name,
        "--amqp",
        &amqp,
        "--zk-session-timeout-ms",
        &session,
    ];
    let mut args: Vec<&str> = args.to_vec();
    let creds = identities_of(root).map(|i| i.flag("system-b"));
    if let Some(c) = &creds {
        args.extend([c[0].as_str(), c[1].as_str()]);
    }
    let mut p = Proc::spawn("system-b", &args, log_dir);
    p.wait_line("system-b ready", Duration::from_secs(30));
    p
}

/// system-a on port 0 as instance `a1`; returns it and its gRPC address once
/// it can publish.
pub fn start_system_a(zk: &str, root: &str, queue: &str, log_dir: &Path) -> (Proc, String) {
    start_system_a_with(zk, root, queue, &[], log_dir)
}

/// [`start_system_a`] with `extra` flags (e.g. `--task-retention-secs`).
pub fn start_system_a_with(zk: &str, root: &str, queue: &str, extra: &[&str], log_dir: &Path) -> (Proc, String) {
    let amqp = amqp_url();
    let args = [
        "--zk",
        zk,
        "--root",
        root,
        "--queue",
        queue,
        "--listen",
        "127.0.0.1:0",
        "--amqp",
        &amqp,
        "--instance",
        "a1",
        "--zk-session-timeout-ms",
        "10000",
    ];
    let mut args: Vec<&str> = args.to_vec();
    let creds = identities_of(root).map(|i| i.flag("system-a"));
    if let Some(c) = &creds {
        args.extend([c[0].as_str(), c[1].as_str()]);
    }
    args.extend_from_slice(extra);
    let mut p = Proc::spawn("system-a", &args, log_dir);
    let addr = p.wait_line("system-a listening on", Duration::from_secs(30));
    p.wait_line("system-a connected to RabbitMQ", Duration::from_secs(30));
    (p, addr)
}

/// The RabbitMQ the test scripts ensured (`AMQP_URL`), or the local default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

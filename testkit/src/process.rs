//! The workspace's binaries as child processes: the one launcher the
//! end-to-end tests and the benchmark share.
//!
//! A [`Proc`] collects its stdout lines (services print their readiness and
//! state changes there: `system-b ready`, `ha-worker active term=...`) so a
//! caller can wait for one; its stderr (the logs) goes to a file, printed if
//! a test fails while the process is alive. It is killed (SIGKILL) when
//! dropped, however the test or the benchmark ends.
//!
//! The lines arrive on a thread of their own, so waiting for one needs no
//! runtime: tests call [`Proc::wait_line`], which panics with the log; the
//! benchmark calls [`Proc::try_wait_line`] (under `block_in_place`), which
//! returns an error instead.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The path of a workspace binary built next to the running executable
/// (a test executable lives in `target/<profile>/deps/`, a binary such as
/// the nemesis in `target/<profile>/`). `scripts/test.sh` builds them all
/// before the tests run; a missing one fails the test with that
/// instruction.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("target/<profile>");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target/<profile>");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, as scripts/test.sh does)",
        path.display()
    );
    path
}

/// A running child process; see the module documentation.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Proc {
    /// Starts the workspace binary `name` (see [`binary`]); panics if it
    /// cannot.
    pub fn spawn(name: &str, args: &[&str], log_dir: &Path) -> Proc {
        Self::spawn_with_env(name, args, &[], log_dir)
    }

    /// [`Proc::spawn`] with extra environment variables.
    pub fn spawn_with_env(name: &str, args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Proc {
        Self::start(&binary(name), name, args, env, log_dir).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts the executable at `bin`, called `name` in messages and in
    /// its log file's name under `log_dir`.
    pub fn start(bin: &Path, name: &str, args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(bin);
        cmd.args(args).envs(env.iter().copied());
        Self::start_command(cmd, name, log_dir).with_context(|| format!("{}", bin.display()))
    }

    /// Starts `cmd` as a [`Proc`] (its stdin, stdout and stderr are set
    /// here): for a program started through another, such as
    /// `testkit::netns::Net::command`, which execs it so the pid is still
    /// the program's.
    pub fn start_command(mut cmd: Command, name: &str, log_dir: &Path) -> anyhow::Result<Proc> {
        let log = log_dir.join(format!("{}.log", crate::unique(name)));
        let stderr = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        // The tests' own broker URL logs in as guest (the observer); a
        // service must never inherit it: each is given its own user. The
        // caller's environment goes on top.
        if !cmd.get_envs().any(|(k, _)| k == "AMQP_URL") {
            cmd.env_remove("AMQP_URL");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc { name: name.to_string(), child, lines, log })
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest.
    /// Panics with the process's log if none comes within `timeout`.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        self.try_wait_line(prefix, timeout).unwrap_or_else(|e| panic!("{e:#}; its log:\n{}", self.log_text()))
    }

    /// [`Proc::wait_line`], returning an error instead of panicking: the
    /// process exited, or did not print the line in time.
    pub fn try_wait_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("{} exited before printing {prefix:?}", self.name),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("{} did not print {prefix:?} within {timeout:?}", self.name)
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
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
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

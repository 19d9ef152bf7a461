//! Where the system runs, and how to hurt it.
//!
//! The same verbs on both deployments, each done the way production
//! does it:
//!
//! | verb | `scripts/run.sh` (processes) | compose (containers) |
//! |---|---|---|
//! | kill -9 | `kill -KILL <pid>`; run.sh's supervisor starts it again | `compose kill -s SIGKILL`, then `compose start` (the restart policy's job) |
//! | pause | `kill -STOP` / `kill -CONT` | `compose pause` / `unpause` (the cgroup freezer) |
//! | broker outage | `rabbitmqctl stop_app` / `start_app` | `compose stop rabbitmq` / `start` (on the scale-out profile, one node of three) |
//! | broker node kill | (one broker node: none) | `compose kill -s SIGKILL` of a node of the cluster, then `compose start` |
//! | server restart | kill -9 the coordinator (or the ZooKeeper server), start it on its data | kill -9 the coordinator, or the ensemble's leader, and start it |
//!
//! Processes are named as run.sh and the compose file name them:
//! `system-b-2` runs instance `b2`, `ha-worker-1` runs `ha1`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Which coordination server the system runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Coordinator,
    ZooKeeper,
}

pub enum System {
    /// Processes started by `scripts/run.sh`, described by its
    /// `.run/system/system.env`.
    Local(Local),
    /// Containers of `docker compose up`.
    Compose(Compose),
}

pub struct Local {
    pub backend: Backend,
    pub zk: String,
    pub system_a: String,
    pub operator_credentials: PathBuf,
    pub pids: PathBuf,
    pub journal: PathBuf,
    pub zookeeper_dir: PathBuf,
    /// The repository, for scripts/zookeeper.sh.
    pub root: PathBuf,
}

pub struct Compose {
    pub backend: Backend,
    /// The compose command and its files, e.g. `docker compose -f
    /// docker-compose.yml -f docker-compose.scale-out.yml`.
    pub command: Vec<String>,
    pub root: PathBuf,
    /// The services that run the broker's nodes: `rabbitmq`, or on the
    /// scale-out profile the cluster's three.
    pub brokers: Vec<String>,
}

/// What the broker says of a queue (`rabbitmqctl list_queues`).
#[derive(Debug, Clone, Default)]
pub struct QueueState {
    /// `quorum`, `classic`.
    pub kind: String,
    /// The node that leads it (a quorum queue), e.g. `rabbit-1@rabbitmq`.
    pub leader: String,
    pub members: Vec<String>,
    pub online: Vec<String>,
}

/// The process (or compose service) that runs `instance`.
pub fn process_of(instance: &str) -> Option<String> {
    if let Some(n) = instance.strip_prefix("ha") {
        return n.parse::<u32>().ok().map(|n| format!("ha-worker-{n}"));
    }
    instance.strip_prefix('b').and_then(|n| n.parse::<u32>().ok()).map(|n| format!("system-b-{n}"))
}

impl System {
    /// The system `scripts/run.sh` describes in `<run_dir>/system/system.env`.
    pub fn local(root: PathBuf, run_dir: PathBuf) -> Result<System> {
        let file = run_dir.join("system").join("system.env");
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!("{} is missing: start the system first with scripts/run.sh (or pass --compose)", file.display())
        })?;
        let get = |key: &str| -> Result<String> {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .map(str::to_string)
                .with_context(|| format!("{}: no {key}=", file.display()))
        };
        let backend = match get("backend")?.as_str() {
            "zookeeper" => Backend::ZooKeeper,
            _ => Backend::Coordinator,
        };
        Ok(System::Local(Local {
            backend,
            zk: get("zk")?,
            system_a: get("system_a")?,
            operator_credentials: get("operator_credentials")?.into(),
            pids: get("pids")?.into(),
            journal: get("journal")?.into(),
            zookeeper_dir: get("zookeeper_dir")?.into(),
            root,
        }))
    }

    /// The compose deployment `command` names; `scale_out`: the scale-out
    /// profile (a ZooKeeper ensemble and a 3-node broker cluster).
    pub fn compose(root: PathBuf, command: Vec<String>, scale_out: bool) -> System {
        let (backend, brokers) = if scale_out {
            (Backend::ZooKeeper, vec!["rabbitmq", "rabbitmq-2", "rabbitmq-3"])
        } else {
            (Backend::Coordinator, vec!["rabbitmq"])
        };
        let brokers = brokers.into_iter().map(str::to_string).collect();
        System::Compose(Compose { backend, command, root, brokers })
    }

    /// The compose services that run broker nodes; none under run.sh,
    /// whose broker is the host's.
    pub fn broker_nodes(&self) -> Vec<String> {
        match self {
            System::Local(_) => Vec::new(),
            System::Compose(c) => c.brokers.clone(),
        }
    }

    /// The nodes of the broker cluster that run, as the first node that
    /// answers says (`rabbitmqctl cluster_status`).
    pub fn running_broker_nodes(&self) -> Result<Vec<String>> {
        let status: serde_json::Value =
            serde_json::from_str(&self.rabbitmqctl(&["cluster_status", "--formatter", "json"])?)
                .context("cluster_status's JSON")?;
        Ok(strings(&status["running_nodes"]))
    }

    /// `queue`'s type, leader and members, as the first node that answers
    /// says (`rabbitmqctl list_queues`).
    pub fn queue_state(&self, queue: &str) -> Result<QueueState> {
        let out =
            self.rabbitmqctl(&["list_queues", "name", "type", "leader", "members", "online", "--formatter", "json"])?;
        let queues: serde_json::Value = serde_json::from_str(&out).context("list_queues's JSON")?;
        let q = queues
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == queue))
            .with_context(|| format!("no queue {queue} on the broker"))?;
        Ok(QueueState {
            kind: q["type"].as_str().unwrap_or_default().to_string(),
            leader: q["leader"].as_str().unwrap_or_default().to_string(),
            members: strings(&q["members"]),
            online: strings(&q["online"]),
        })
    }

    /// `rabbitmqctl -q ARGS` in the first broker node's container that
    /// answers (a node may be the one a drill killed).
    fn rabbitmqctl(&self, args: &[&str]) -> Result<String> {
        let System::Compose(c) = self else {
            bail!("the broker's cluster state is read through compose; run.sh's broker is one node");
        };
        let mut last = None;
        for node in &c.brokers {
            let mut argv = vec!["exec", "-T", node.as_str(), "rabbitmqctl", "-q"];
            argv.extend_from_slice(args);
            match c.output(&argv) {
                Ok(out) => return Ok(out),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no broker node")))
    }

    pub fn backend(&self) -> Backend {
        match self {
            System::Local(l) => l.backend,
            System::Compose(c) => c.backend,
        }
    }

    /// The connect string, from where the drill runs.
    pub fn zk(&self) -> String {
        match self {
            System::Local(l) => l.zk.clone(),
            // The compose files publish these on the host's loopback.
            System::Compose(c) if c.backend == Backend::ZooKeeper => {
                "127.0.0.1:2182,127.0.0.1:2183,127.0.0.1:2184".into()
            }
            System::Compose(_) => "127.0.0.1:2181".into(),
        }
    }

    pub fn system_a(&self) -> String {
        match self {
            System::Local(l) => format!("http://{}", l.system_a),
            System::Compose(_) => "http://127.0.0.1:50051".into(),
        }
    }

    /// The operator's identity, which the drills observe as. Compose keeps
    /// it in a volume only `init-acls` mounts: it is read through a one-off
    /// container of that service, into memory, never into a host file.
    pub fn operator_auth(&self) -> Result<servicekit::auth::ZkAuth> {
        match self {
            System::Local(l) => servicekit::auth::ZkAuth::from_file(&l.operator_credentials)
                .with_context(|| format!("the operator's credentials, {}", l.operator_credentials.display())),
            System::Compose(c) => {
                let text = c
                    .output(&["run", "--rm", "--no-deps", "-T", "init-acls", "cat", "/run/identity/zk.cred"])
                    .context("reading the operator's credentials from init-acls's volume")?;
                servicekit::auth::ZkAuth::parse(&text).context("the operator's credentials, in init-acls's volume")
            }
        }
    }

    /// kill -9: no goodbye, no deregistration, nothing flushed that was not.
    pub fn kill(&self, process: &str) -> Result<()> {
        match self {
            System::Local(l) => signal(l.pid(process)?, "KILL"),
            System::Compose(c) => c.run(&["kill", "-s", "SIGKILL", process]),
        }
    }

    /// After [`System::kill`]: the supervisor's part. run.sh's starts the
    /// process again by itself; compose's restart policy does not act on a
    /// kill it was asked for, so it is started as an operator would.
    pub fn start_again(&self, process: &str) -> Result<()> {
        match self {
            System::Local(_) => Ok(()),
            System::Compose(c) => c.run(&["start", process]),
        }
    }

    /// Freezes the process: it holds its sockets and its memory, and does
    /// nothing, as in a long GC pause or a VM stalled by its host.
    pub fn pause(&self, process: &str) -> Result<()> {
        match self {
            System::Local(l) => signal(l.pid(process)?, "STOP"),
            System::Compose(c) => c.run(&["pause", process]),
        }
    }

    pub fn resume(&self, process: &str) -> Result<()> {
        match self {
            System::Local(l) => signal(l.pid(process)?, "CONT"),
            System::Compose(c) => c.run(&["unpause", process]),
        }
    }

    /// Takes the broker away: connections drop, publishes are not
    /// confirmed, nothing is delivered.
    pub fn stop_broker(&self) -> Result<()> {
        match self {
            System::Local(_) => run(Command::new("rabbitmqctl").arg("stop_app")),
            System::Compose(c) => c.run(&["stop", "rabbitmq"]),
        }
    }

    pub fn start_broker(&self) -> Result<()> {
        match self {
            System::Local(_) => run(Command::new("rabbitmqctl").arg("start_app")),
            System::Compose(c) => c.run(&["start", "rabbitmq"]),
        }
    }

    /// The ha-workers' journal, as text.
    pub fn journal(&self) -> Result<String> {
        match self {
            System::Local(l) => std::fs::read_to_string(&l.journal)
                .with_context(|| format!("reading the journal {}", l.journal.display())),
            // Through either worker's container (one may be the one hurt).
            System::Compose(c) => c
                .output(&["exec", "-T", "ha-worker-1", "cat", "/journal/journal"])
                .or_else(|_| c.output(&["exec", "-T", "ha-worker-2", "cat", "/journal/journal"])),
        }
    }

    /// kill -9 of the coordination server (on an ensemble, its leader),
    /// then started again on its data, as a supervisor would. Returns what
    /// was killed.
    pub async fn restart_coordination(&self) -> Result<String> {
        match (self, self.backend()) {
            (System::Local(l), Backend::Coordinator) => {
                signal(l.pid("coordinator")?, "KILL")?;
                Ok("the coordinator".into())
            }
            (System::Local(l), Backend::ZooKeeper) => {
                let pid = std::fs::read_to_string(l.zookeeper_dir.join("pid"))
                    .context("the ZooKeeper server's pid file")?
                    .trim()
                    .parse::<u32>()
                    .context("the ZooKeeper server's pid file")?;
                signal(pid, "KILL")?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let script = l.root.join("scripts/zookeeper.sh");
                run(Command::new(script).args(["start", "2181"]).arg(&l.zookeeper_dir).env("ZK_KEEP_DATA", "1"))?;
                Ok("the ZooKeeper server".into())
            }
            (System::Compose(c), Backend::Coordinator) => {
                c.run(&["kill", "-s", "SIGKILL", "coordinator"])?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                c.run(&["start", "coordinator"])?;
                Ok("the coordinator".into())
            }
            (System::Compose(c), Backend::ZooKeeper) => {
                let leader = zookeeper_leader().await?;
                c.run(&["kill", "-s", "SIGKILL", &leader])?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                c.run(&["start", &leader])?;
                Ok(format!("the ensemble's leader, {leader}"))
            }
        }
    }
}

impl Local {
    fn pid(&self, process: &str) -> Result<u32> {
        let file = self.pids.join(format!("{process}.pid"));
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("{}: no such process under scripts/run.sh", file.display()))?;
        text.trim().parse().with_context(|| format!("{}: not a pid", file.display()))
    }
}

impl Compose {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..]).args(args).current_dir(&self.root);
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        run(&mut self.command(args))
    }

    fn output(&self, args: &[&str]) -> Result<String> {
        let out = self.command(args).output().with_context(|| format!("running {}", self.command.join(" ")))?;
        if !out.status.success() {
            bail!("{} {}: {}", self.command.join(" "), args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The ensemble member that says it leads, asked with the `srvr` word on
/// the client ports the compose profile publishes (a member busy electing
/// says nothing useful for a moment: asked again for up to 20 s).
async fn zookeeper_leader() -> Result<String> {
    let members = [("zk1", 2182), ("zk2", 2183), ("zk3", 2184)];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for (member, port) in members {
            if srvr(port).await.is_some_and(|s| s.lines().any(|l| l.trim() == "Mode: leader")) {
                return Ok(member.into());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no member of the ensemble says it leads (srvr on 127.0.0.1:2182-2184 for 20 s)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A JSON array of strings, as a vector (anything else: empty).
fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// The `srvr` four-letter word's answer from the server on `port`, within 2 s.
async fn srvr(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"srvr").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    };
    tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten()
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    run(Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()))
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_map_to_the_processes_that_run_them() {
        assert_eq!(process_of("b2").as_deref(), Some("system-b-2"));
        assert_eq!(process_of("ha1").as_deref(), Some("ha-worker-1"));
        assert_eq!(process_of("host-42"), None);
    }
}

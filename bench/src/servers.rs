//! Starting and stopping the two servers as processes, and what is read
//! from outside them: time to the first answered request, and RSS.
//!
//! Both get a fresh data dir in a temp dir, an ephemeral (coordinator) or
//! chosen (ZooKeeper) port on loopback, tickTime 2000 and fsync on: the
//! coordinator always fsyncs before it replies; ZooKeeper's `forceSync`
//! is left at its default, which is on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use zk_wire::client::{Client, ConnectOptions};
use zk_wire::records::PathWatchRequest;
use zk_wire::Request;

pub const TICK_MS: u32 = 2000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Coordinator,
    ZooKeeper,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Coordinator => "coordinator",
            Kind::ZooKeeper => "zookeeper",
        }
    }
}

/// A running server; stopped (and waited for) on drop.
pub struct Server {
    pub kind: Kind,
    pub addr: String,
    pub pid: u32,
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.kind == Kind::ZooKeeper {
            let _ = Command::new(repo_root().join("scripts/zookeeper.sh"))
                .args(["stop", &self.port.to_string(), &self.dir.to_string_lossy()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts a server on `dir` (kept as it is: an empty dir is a fresh start, a
/// dir a server ran on before is a recovery) and returns it with the time
/// from spawning the process to its first answered request.
pub async fn start(kind: Kind, dir: &Path, port: u16, zk_heap: &str) -> Result<(Server, Duration)> {
    start_with(kind, dir, port, zk_heap, None).await
}

/// The admin bearer token zkbench gives the coordinator when it needs the
/// admin API (to trigger a snapshot); loopback only, a benchmark's own.
pub const ADMIN_TOKEN: &str = "zkbench-admin-token-0123456789abcdef";

/// [`start`], and for the coordinator the admin API on `admin_port` with
/// [`ADMIN_TOKEN`].
pub async fn start_with(
    kind: Kind,
    dir: &Path,
    port: u16,
    zk_heap: &str,
    admin_port: Option<u16>,
) -> Result<(Server, Duration)> {
    std::fs::create_dir_all(dir)?;
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let server = match kind {
        Kind::Coordinator => {
            let bin = repo_root().join("target/release/coordinator");
            // The server's log (snapshot timings among it) beside its data
            // dir, appended across the restarts on that dir.
            let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.with_extension("log"))?;
            let mut cmd = Command::new(&bin);
            if let Some(admin) = admin_port {
                let token = dir.with_extension("token");
                std::fs::write(&token, ADMIN_TOKEN)?;
                cmd.args(["--admin-listen", &format!("127.0.0.1:{admin}")])
                    .args(["--admin-token-file", &token.to_string_lossy()]);
            }
            let child = cmd
                .args(["--listen", &addr, "--data-dir", &dir.to_string_lossy()])
                .args(["--tick-time", &TICK_MS.to_string()])
                // The fan-out figure opens thousands of sessions from one IP.
                .args(["--max-client-connections", "0"])
                // As scripts/zookeeper.sh allows ZooKeeper every word
                // (the scale figures time `wchs`).
                .args(["--4lw-whitelist", "*"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("start {} (cargo build --release -p coordinator)", bin.display()))?;
            Server { kind, addr: addr.clone(), pid: child.id(), child: Some(child), dir: dir.to_path_buf(), port }
        }
        Kind::ZooKeeper => {
            // ZK_WAIT=0: the script returns once the JVM is spawned, so the
            // start-up figure is timed here, at 2 ms resolution, rather
            // than by the script's 200 ms readiness poll.
            let status = Command::new(repo_root().join("scripts/zookeeper.sh"))
                .args(["start", &port.to_string(), &dir.to_string_lossy()])
                .env("ZK_HEAP", zk_heap)
                .env("ZK_TICK_TIME", TICK_MS.to_string())
                .env("ZK_KEEP_DATA", "1")
                .env("ZK_WAIT", "0")
                .status()
                .context("scripts/zookeeper.sh")?;
            if !status.success() {
                bail!("scripts/zookeeper.sh start {port} failed");
            }
            let pid = std::fs::read_to_string(dir.join("pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .context("scripts/zookeeper.sh wrote no pid")?;
            Server { kind, addr: addr.clone(), pid, child: None, dir: dir.to_path_buf(), port }
        }
    };
    let t = first_answer(&addr, started).await?;
    Ok((server, t))
}

/// Polls every 2 ms with a raw client (which fails at once on a refused
/// connection, where a client library would retry on its own schedule)
/// until a session is made and `exists /` is answered.
async fn first_answer(addr: &str, started: Instant) -> Result<Duration> {
    let opts = ConnectOptions { io_timeout: Duration::from_millis(500), ..ConnectOptions::default() };
    let probe = Request::Exists(PathWatchRequest { path: "/".into(), watch: false });
    loop {
        if let Ok(mut c) = Client::connect(addr, opts.clone()).await {
            if c.handshake().time_out > 0 && matches!(c.call(&probe).await, Ok(r) if r.err == 0) {
                let t = started.elapsed();
                let _ = c.call(&Request::CloseSession).await;
                return Ok(t);
            }
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("{addr} did not answer within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Resident set size of a process, from /proc/<pid>/status, in MiB.
pub fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("pid {pid}"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    Ok(kb / 1024.0)
}

/// The JVM's live heap after a full GC (`jcmd GC.run`, then `GC.heap_info`),
/// in MiB: what the ZooKeeper data needs, as opposed to what the JVM keeps.
pub fn jvm_heap_used_mib(pid: u32) -> Option<f64> {
    let run = |args: &[&str]| Command::new("jcmd").arg(pid.to_string()).args(args).output().ok();
    run(&["GC.run"])?;
    let out = run(&["GC.heap_info"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    // " garbage-first heap   total 1048576K, used 523123K [0x..."
    let used = text.split("used ").nth(1)?.split('K').next()?.trim().parse::<f64>().ok()?;
    Some(used / 1024.0)
}

/// CPU time a process has used (user + system), from /proc/<pid>/stat.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("pid {pid}"))?;
    // The command name (field 2) may hold spaces; the fields after its
    // closing parenthesis are fixed: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/<pid>/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).context("malformed /proc/<pid>/stat");
    // USER_HZ is 100 on every Linux architecture zkbench runs on.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

//! A 3-node Apache ZooKeeper 3.8 ensemble on loopback, started and stopped
//! by the test that uses it (Debian's `zookeeper` package).
//!
//! The test owns the three JVMs rather than a script starting them before
//! the suite: each test gets a fresh ensemble (a killed leader or a
//! restarted follower cannot leak into the next test), needs nothing from
//! `scripts/test.sh`, and leaves nothing running when it ends, however it
//! ends. Client ports 22181-22183, quorum 22881-22883, election
//! 23881-23883, all on 127.0.0.1: fixed, because every member must know
//! the others' addresses in advance. Tests that use it run one at a time
//! (a process-wide lock), since they share those ports.
//!
//! [`Ensemble::start_on`] places the members on hosts of a test network
//! instead (`testkit::netns`: zk1, zk2, zk3, each on ports 2181, 2888 and
//! 3888 of its own address), so partitions can come between them. Those
//! run one at a time too: three JVMs are what this machine's two cores
//! can start at once.
//!
//! Tick 500 ms: sessions may negotiate 1-10 s, and an election after a
//! leader's death settles in about a second, as with a tuned production
//! ensemble.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use testkit::netns::Net;

use crate::Place;

const CLIENT_PORT: u16 = 22181;
const QUORUM_PORT: u16 = 22881;
const ELECTION_PORT: u16 = 23881;
const JAR: &str = "/usr/share/java/zookeeper.jar";

/// One ensemble at a time in this process: the loopback ports are fixed,
/// and three JVMs are all two cores start in good time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A member's role as its `srvr` four-letter word reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Leader,
    Follower,
    /// Not serving: electing, syncing, or down.
    NotServing,
}

/// Where a member runs and listens.
struct Member {
    place: Place,
    client: u16,
    quorum: u16,
    election: u16,
}

pub struct Ensemble {
    dir: PathBuf,
    places: Vec<Member>,
    members: Vec<Option<Child>>,
    _turn: MutexGuard<'static, ()>,
}

impl Ensemble {
    /// Starts three members on loopback under `dir` and waits until they
    /// serve with one leader (at most 90 s: three JVMs starting on a loaded
    /// 2-core machine).
    pub fn start(dir: &Path) -> Ensemble {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..3 {
            let port = CLIENT_PORT + i as u16;
            assert!(
                TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_err(),
                "port {port} already answers: a stale ensemble member is running (a killed test run?); stop it"
            );
        }
        let places = (0..3u16)
            .map(|i| Member {
                place: Place::Loopback,
                client: CLIENT_PORT + i,
                quorum: QUORUM_PORT + i,
                election: ELECTION_PORT + i,
            })
            .collect();
        Self::start_members(dir, places, turn)
    }

    /// Starts three members on new hosts `zk1`, `zk2`, `zk3` of `net`, each
    /// on ZooKeeper's usual ports of its own address.
    pub fn start_on(net: &Net, dir: &Path) -> Ensemble {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let places = (1..=3)
            .map(|i| Member {
                place: Place::on(&net.add_host(&format!("zk{i}"))),
                client: 2181,
                quorum: 2888,
                election: 3888,
            })
            .collect();
        Self::start_members(dir, places, turn)
    }

    fn start_members(dir: &Path, places: Vec<Member>, turn: MutexGuard<'static, ()>) -> Ensemble {
        assert!(Path::new(JAR).exists(), "{JAR} is missing: install Debian's zookeeper package (scripts/setup.sh)");
        let servers: String = places
            .iter()
            .enumerate()
            .map(|(i, m)| format!("server.{}={}:{}:{}\n", i + 1, m.place.ip(), m.quorum, m.election))
            .collect();
        for (i, m) in places.iter().enumerate() {
            let home = dir.join(format!("zk{}", i + 1));
            std::fs::create_dir_all(home.join("data")).expect("member data dir");
            std::fs::write(home.join("data/myid"), format!("{}\n", i + 1)).expect("myid");
            let cfg = format!(
                "tickTime=500\ninitLimit=20\nsyncLimit=5\ndataDir={}\nclientPort={}\nclientPortAddress={}\n\
                 maxClientCnxns=0\n4lw.commands.whitelist=*\nadmin.enableServer=false\n{servers}",
                home.join("data").display(),
                m.client,
                m.place.ip(),
            );
            std::fs::write(home.join("zoo.cfg"), cfg).expect("zoo.cfg");
        }
        let mut e = Ensemble { dir: dir.to_path_buf(), places, members: vec![None, None, None], _turn: turn };
        for i in 0..3 {
            e.spawn(i);
        }
        let started = Instant::now();
        e.wait_leader(Duration::from_secs(90));
        for i in 0..3 {
            e.wait_serving(i, Duration::from_secs(30));
        }
        println!("ensemble serving after {:?}, leader zk{}", started.elapsed(), e.leader() + 1);
        e
    }

    fn spawn(&mut self, i: usize) {
        let home = self.dir.join(format!("zk{}", i + 1));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(home.join("zookeeper.log")).expect("log");
        let child = self.places[i]
            .place
            .command("java")
            .args([
                "-Xmx192m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Dzookeeper.admin.enableServer=false",
                "-Dzookeeper.root.logger=INFO,CONSOLE",
                "-cp",
                &format!("{}:{JAR}", home.display()),
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                &home.join("zoo.cfg").display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start java for ensemble member {}: {e}", i + 1));
        self.members[i] = Some(child);
    }

    /// `host:port,host:port,host:port`: what services are given.
    pub fn connect_string(&self) -> String {
        (0..3).map(|i| self.addr(i)).collect::<Vec<_>>().join(",")
    }

    /// One member's client address.
    pub fn addr(&self, i: usize) -> String {
        std::net::SocketAddr::new(self.ip(i), self.places[i].client).to_string()
    }

    /// One member's address.
    pub fn ip(&self, i: usize) -> IpAddr {
        self.places[i].place.ip()
    }

    /// The test network's host member `i` runs on ([`Ensemble::start_on`]);
    /// panics for an ensemble on loopback.
    pub fn host(&self, i: usize) -> &str {
        match &self.places[i].place {
            Place::Host { host, .. } => host.name(),
            Place::Loopback => panic!("this ensemble runs on loopback, not on hosts"),
        }
    }

    /// SIGSTOP member `i`: it keeps its sockets and answers nothing.
    pub fn pause(&self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
    }

    /// SIGCONT member `i`.
    pub fn resume(&self, i: usize) {
        self.signal(i, Signal::SIGCONT);
    }

    fn signal(&self, i: usize, sig: Signal) {
        let child = self.members[i].as_ref().unwrap_or_else(|| panic!("zk{} is not running", i + 1));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)
            .unwrap_or_else(|e| panic!("{sig} to zk{}: {e}", i + 1));
    }

    /// What member `i` says it is (`srvr`).
    pub fn mode(&self, i: usize) -> Mode {
        let out = four_letter(&self.addr(i), "srvr").unwrap_or_default();
        if out.contains("Mode: leader") {
            Mode::Leader
        } else if out.contains("Mode: follower") {
            Mode::Follower
        } else {
            Mode::NotServing
        }
    }

    /// Member `i`'s last zxid, if it serves.
    pub fn zxid(&self, i: usize) -> Option<i64> {
        let out = four_letter(&self.addr(i), "srvr")?;
        let hex = out.lines().find_map(|l| l.strip_prefix("Zxid: "))?;
        i64::from_str_radix(hex.trim().trim_start_matches("0x"), 16).ok()
    }

    /// The current leader's index; panics if none serves.
    pub fn leader(&self) -> usize {
        (0..3).find(|&i| self.mode(i) == Mode::Leader).expect("the ensemble has no leader")
    }

    /// Waits until some member reports itself leader; returns it and how
    /// long it took.
    pub fn wait_leader(&self, limit: Duration) -> (usize, Duration) {
        let started = Instant::now();
        loop {
            if let Some(i) = (0..3).find(|&i| self.members[i].is_some() && self.mode(i) == Mode::Leader) {
                return (i, started.elapsed());
            }
            assert!(started.elapsed() < limit, "no leader within {limit:?}; logs:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until member `i` serves clients as leader or follower.
    pub fn wait_serving(&self, i: usize, limit: Duration) -> Duration {
        let started = Instant::now();
        while self.mode(i) == Mode::NotServing {
            assert!(started.elapsed() < limit, "zk{} does not serve after {limit:?}; logs:\n{}", i + 1, self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        started.elapsed()
    }

    /// kill -9 member `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data dir.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].is_none(), "zk{} is running", i + 1);
        self.spawn(i);
    }

    fn logs(&self) -> String {
        (0..3)
            .map(|i| {
                let text =
                    std::fs::read_to_string(self.dir.join(format!("zk{}/zookeeper.log", i + 1))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!("---- zk{} ----\n{}\n", i + 1, tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect()
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill9(i);
        }
    }
}

/// Sends a four-letter word and returns the answer (bounded: 2 s).
pub fn four_letter(addr: &str, word: &str) -> Option<String> {
    let sock = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(word.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

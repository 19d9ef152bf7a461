//! The nemesis: the four scenarios running for real while faults strike on
//! a seeded schedule, every client operation recorded, and checkers that
//! judge the history afterwards, the way Jepsen and etcd's robustness tests
//! prove a coordination system.
//!
//! A run ([`run`]) is a [`Plan`]: a target (the coordinator, or a 3-node
//! Apache ZooKeeper ensemble), a seed, the fault kinds allowed, a length.
//! It deploys system-a, two system-b and an ha-worker pair on the target,
//! every server and every service on a host of its own (a network
//! namespace, `testkit::netns`), each service as its own identity and
//! with a wall clock the nemesis can step; it starts the clients of
//! [`workload`] and lets the nemesis strike: one fault at a time (kill -9,
//! SIGSTOP, a stalled lock holder, a clock step, a partition, a power
//! cut of a disk, a slow link), each held 1-8 s, then healed, with quiet
//! gaps between. The schedule is drawn from the seed, so a seed names a
//! run.
//! When the time is up every fault is healed, the clients finish what they
//! started, and the [`check`]ers read the history and the state left
//! behind: the store, the journal, the registry.
//!
//! Everything a run records is kept under `target/nemesis/<target>-<seed>/`:
//! the history (`history.jsonl`), the verdicts (`verdict.txt`) and every
//! process's log. `scripts/nemesis.sh` runs many seeds;
//! tests/tests/nemesis.rs runs a fixed few in CI.

pub mod check;
pub mod history;
pub mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testkit::clock::SkewedClock;
use testkit::crashfs::{Crash, CrashFs, CrashFsOptions};

use testkit::netns::{Net, Relay, GATEWAY};

use crate::ensemble::{Ensemble, Mode};
use crate::{provision, stored_entity, Coordinator, Identities, Place, Proc};
use check::Verdict;
use history::{Entry, History};

/// Where a run deploys the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The coordinator, one process on its own data dir.
    Coordinator,
    /// Three Apache ZooKeeper 3.8 servers.
    Ensemble,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Coordinator => "coordinator",
            Target::Ensemble => "ensemble",
        }
    }

    /// The services' session timeout: within what each server allows
    /// (the coordinator's default tick 2 s allows 4-40 s; the ensemble's
    /// tick 500 ms allows 1-10 s), short so faults outlast sessions.
    fn session_ms(self) -> u64 {
        match self {
            Target::Coordinator => 4000,
            Target::Ensemble => 6000,
        }
    }
}

/// What the nemesis may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9 of the coordinator (restarted on its data dir) or of an
    /// ensemble member, the leader half the time.
    KillServer,
    /// SIGSTOP of the coordinator or an ensemble member (a GC pause, a
    /// stalled VM), long enough at times for sessions to expire.
    PauseServer,
    /// kill -9 of a service, restarted as its supervisor would.
    KillService,
    /// SIGSTOP of a service: the lock holder or the active ha-worker
    /// stalled past its session, half the time.
    PauseService,
    /// A service's wall clock stepped an hour or a day, forward or back.
    ClockJump,
    /// SIGSTOP of the hot entity's lock holder, past its session: the
    /// case fencing tokens exist for, every time rather than by chance.
    StallLockHolder,
    /// A network partition (iptables in the hosts' namespaces): a server
    /// isolated (the ensemble's leader half the time), the ensemble split
    /// into a minority with a service and a majority with the rest, a
    /// one-way cut, or the active ha-worker or the lock holder cut off.
    Partition,
    /// A power cut of a disk (`testkit::crashfs`): every process writing
    /// it killed -9, then every write and directory change not made
    /// durable by fsync lost, unsynced blocks torn half the time. The
    /// disks: the coordinator's data dir, system-b's store (both
    /// instances write it), ha-worker's journal (both instances). An
    /// ensemble member's disk is not cut: Apache ZooKeeper's own.
    PowerLoss,
    /// A slow link: a server's (the leader half the time on an ensemble)
    /// or a service's traffic held to 16-128 kbit/s each way
    /// (`testkit::netns::Net::slow`), so its requests queue behind each
    /// other, heavy traffic is dropped and resent, and timeouts race.
    SlowLink,
}

impl FaultKind {
    pub const ALL: [FaultKind; 9] = [
        FaultKind::KillServer,
        FaultKind::PauseServer,
        FaultKind::KillService,
        FaultKind::PauseService,
        FaultKind::ClockJump,
        FaultKind::StallLockHolder,
        FaultKind::Partition,
        FaultKind::PowerLoss,
        FaultKind::SlowLink,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillServer => "kill-server",
            FaultKind::PauseServer => "pause-server",
            FaultKind::KillService => "kill-service",
            FaultKind::PauseService => "pause-service",
            FaultKind::ClockJump => "clock-jump",
            FaultKind::StallLockHolder => "stall-lock-holder",
            FaultKind::Partition => "partition",
            FaultKind::PowerLoss => "power-loss",
            FaultKind::SlowLink => "slow-link",
        }
    }

    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub seed: u64,
    pub faults: Vec<FaultKind>,
    /// How long the nemesis strikes (the run takes longer: deploying,
    /// then healing and checking).
    pub duration: Duration,
    /// Failpoints armed in every process the run starts (servers and
    /// services; each acts only on the names that are its own, such as
    /// `system-b/store-ignores-fencing`): a promise broken on purpose, to
    /// prove its checker catches the break.
    pub failpoints: Vec<&'static str>,
    /// The range of system-b's `work_ms` (how long applying a task takes)
    /// the config writer draws from: longer work, longer lock holds.
    pub work_ms: std::ops::Range<u64>,
    /// The disks a power cut may strike (those the target has).
    pub disks: Vec<Disk>,
    /// A disk that lies: its fsync returns and persists nothing. To prove
    /// the checkers catch a write a power cut took after it was
    /// acknowledged.
    pub lying_disk: Option<Disk>,
}

/// A disk a power cut strikes ([`FaultKind::PowerLoss`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    /// The coordinator's data dir: its log, snapshots and session secret.
    Server,
    /// system-b's store, which both instances write.
    Store,
    /// ha-worker's journal, which both instances write.
    Journal,
}

impl Plan {
    pub fn new(target: Target, seed: u64, faults: &[FaultKind], duration: Duration) -> Plan {
        Plan {
            target,
            seed,
            faults: faults.to_vec(),
            duration,
            failpoints: Vec::new(),
            work_ms: 0..20,
            disks: vec![Disk::Server, Disk::Store, Disk::Journal],
            lying_disk: None,
        }
    }

    /// How to run this plan again from the shell.
    pub fn rerun(&self) -> String {
        let faults: Vec<&str> = self.faults.iter().map(|k| k.name()).collect();
        format!(
            "scripts/nemesis.sh --target {} --seed {} --runs 1 --seconds {} --faults {}",
            self.target.name(),
            self.seed,
            self.duration.as_secs(),
            faults.join(",")
        )
    }
}

/// What a run found.
pub struct Report {
    pub plan: Plan,
    pub verdicts: Vec<Verdict>,
    /// Each fault as it struck, in order (a strike that hit nothing too).
    pub faults: Vec<String>,
    /// The kind of each fault that hit something.
    pub struck: Vec<FaultKind>,
    /// Where its history, verdicts and logs are kept.
    pub dir: PathBuf,
    /// The run's task queue (removed from the broker when the run ends).
    pub queue: String,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.ok)
    }

    /// The verdicts, one per line, then how to run it again.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "nemesis {} seed {}: {} ({} faults: {})\n",
            self.plan.target.name(),
            self.plan.seed,
            if self.passed() { "PASS" } else { "FAIL" },
            self.faults.len(),
            self.faults.join(", ")
        );
        for v in &self.verdicts {
            out.push_str(&format!("  {} {}: {}\n", if v.ok { "ok  " } else { "FAIL" }, v.checker, v.detail));
        }
        out.push_str(&format!("  history: {}\n  rerun: {}\n", self.dir.display(), self.plan.rerun()));
        out
    }
}

/// The coordination servers of a run, each on a host of its own.
enum Servers {
    Coordinator(Coordinator),
    Ensemble(Ensemble),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    SystemA,
    SystemB,
    HaWorker,
}

/// One service instance, with the clock it runs on.
struct Service {
    name: String,
    role: Role,
    proc: Option<Proc>,
    clock: SkewedClock,
}

/// The system under test and the means to hurt it. Every server and
/// every service runs on a host of its own (a network namespace of `net`),
/// so any of them can be cut off; the test's own clients (submitters,
/// register clients, the operator) run in the root namespace, the
/// network's gateway; the services reach RabbitMQ through `relay`.
struct Deployment {
    target: Target,
    dir: PathBuf,
    zk: String,
    root: String,
    queue: String,
    store: PathBuf,
    journal: PathBuf,
    ids: Identities,
    servers: Servers,
    services: Vec<Service>,
    /// Where system-a listens now (it moves when system-a restarts).
    system_a: Arc<RwLock<String>>,
    /// `FAILPOINTS` for every process started, when the plan arms any.
    failpoints: Option<String>,
    /// The disks a power cut can strike (when the plan has power loss),
    /// unmounted once every process above is gone.
    disks: Option<Disks>,
    /// The ones a power cut may strike.
    cuttable: Vec<Disk>,
    // Dropped last: the hosts go when nothing runs on them any more.
    relay: Relay,
    net: Net,
}

impl Deployment {
    fn start(plan: &Plan, dir: &Path) -> Deployment {
        let failpoints = (!plan.failpoints.is_empty()).then(|| plan.failpoints.join(","));
        let net = Net::create();
        let disks = plan.faults.contains(&FaultKind::PowerLoss).then(|| Disks::mount(dir, plan));
        let on_disk = |disk: Option<&CrashFs>, name: &str| match disk {
            Some(fs) => fs.path().join(name),
            None => dir.join(name),
        };
        let store = on_disk(disks.as_ref().map(|d| &d.store), "store");
        let journal = on_disk(disks.as_ref().map(|d| &d.journal), "ha-journal");
        let servers = match plan.target {
            Target::Coordinator => {
                let data = on_disk(disks.as_ref().and_then(|d| d.server.as_ref()), "coordinator-data");
                let data = data.to_str().expect("utf-8 path");
                let host = net.add_host("srv");
                let env: Vec<(&str, &str)> = failpoints.iter().map(|f| ("FAILPOINTS", f.as_str())).collect();
                Servers::Coordinator(Coordinator::start_with_env(
                    &Place::on(&host),
                    &["--data-dir", data, "--tick-time", "500"],
                    &env,
                    dir,
                ))
            }
            Target::Ensemble => Servers::Ensemble(Ensemble::start_on(&net, dir)),
        };
        let zk = match &servers {
            Servers::Coordinator(c) => c.addr.clone(),
            Servers::Ensemble(e) => e.connect_string(),
        };
        let relay = net.relay(testkit::broker::broker_addr());
        let root = format!("/{}", testkit::unique("nemesis"));
        let ids = provision(&zk, &root, dir);
        let mut d = Deployment {
            target: plan.target,
            dir: dir.to_path_buf(),
            zk,
            root,
            queue: testkit::broker::queue_name("nemesis-tasks"),
            store,
            journal,
            ids,
            servers,
            services: Vec::new(),
            system_a: Arc::new(RwLock::new(String::new())),
            failpoints,
            disks,
            cuttable: plan
                .disks
                .iter()
                .copied()
                .filter(|k| *k != Disk::Server || plan.target == Target::Coordinator)
                .collect(),
            relay,
            net,
        };
        for (name, role) in [
            ("a1", Role::SystemA),
            ("b1", Role::SystemB),
            ("b2", Role::SystemB),
            ("h1", Role::HaWorker),
            ("h2", Role::HaWorker),
        ] {
            d.net.add_host(name);
            let clock = SkewedClock::new(dir);
            d.services.push(Service { name: name.into(), role, proc: None, clock });
            let i = d.services.len() - 1;
            d.start_service(i);
        }
        d
    }

    /// Starts service `i` (again) on its host, and waits until it serves.
    fn start_service(&mut self, i: usize) {
        let (zk, root, queue, dir, session) = (&self.zk, &self.root, &self.queue, &self.dir, self.target.session_ms());
        let s = &self.services[i];
        let place = Place::with_broker(&self.net.host(&s.name), &self.relay);
        let mut env: Vec<(&str, &str)> = s.clock.env().to_vec();
        if let Some(armed) = &self.failpoints {
            env.push(("FAILPOINTS", armed));
        }
        let proc = match s.role {
            Role::SystemA => {
                let (p, addr) = crate::start_system_a_on(&place, zk, root, queue, &[], &env, dir);
                if let Ok(mut a) = self.system_a.write() {
                    *a = addr;
                }
                p
            }
            Role::SystemB => {
                crate::start_system_b_on(&place, zk, root, queue, &self.store, &s.name, session, &env, dir)
            }
            Role::HaWorker => {
                crate::start_ha_worker_on(&place, zk, root, &self.journal, &s.name, 100, session, &env, dir)
            }
        };
        self.services[i].proc = Some(proc);
    }

    fn signal_service(&self, i: usize, sig: Signal) {
        if let Some(p) = &self.services[i].proc {
            p.signal(sig);
        }
    }

    /// The hosts of the coordination servers.
    fn server_hosts(&self) -> Vec<String> {
        match &self.servers {
            Servers::Coordinator(_) => vec!["srv".to_string()],
            Servers::Ensemble(e) => (0..3).map(|i| e.host(i).to_string()).collect(),
        }
    }
}

/// The disks a power cut strikes, each a crash-able file system of its own.
struct Disks {
    /// The coordinator's data dir (on the coordinator target).
    server: Option<CrashFs>,
    /// system-b's store, which both instances write.
    store: CrashFs,
    /// ha-worker's journal, which both instances write.
    journal: CrashFs,
}

impl Disks {
    fn mount(dir: &Path, plan: &Plan) -> Disks {
        let mount = |name: &str, disk: Disk| {
            let at = dir.join(name);
            let lies = plan.lying_disk == Some(disk);
            let options = CrashFsOptions { ignore_file_fsync: lies, ignore_dir_fsync: lies, ..Default::default() };
            CrashFs::mount(&at, options)
                .unwrap_or_else(|e| panic!("mount crashfs on {}: {e} (needs root, /dev/fuse and fuse3)", at.display()))
        };
        Disks {
            server: (plan.target == Target::Coordinator).then(|| mount("disk-coordinator", Disk::Server)),
            store: mount("disk-store", Disk::Store),
            journal: mount("disk-journal", Disk::Journal),
        }
    }

    /// What the disks hold now, copied out (a failed run keeps it: the
    /// mounts go with the run).
    fn keep(&self, to: &Path) {
        let all = [Some(&self.store), Some(&self.journal), self.server.as_ref()];
        for fs in all.into_iter().flatten() {
            let name = fs.path().file_name().unwrap_or_default();
            let _ = copy_tree(fs.path(), &to.join(name));
        }
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Cuts the power of one disk: kills -9 every process that writes it,
/// drops what was not durable, starts them again on what is left.
///
/// Where the power goes matters. The crash-able disk's fsync is instant, so
/// a cut at a random moment almost always falls after a write's fsync and
/// before the next write: in batch 5 of docs/faults.md, 21 of 22 such cuts
/// dropped nothing, a kill -9 under another name. So half the cuts fall
/// inside the write path instead: the disk fails every request after the
/// next few changes (a seeded count; [`CrashFs::cut_after`]), mid-write or
/// mid-rename, and the writers are killed once it has, as if everything
/// stopped together. A writer that acknowledged anything after its disk
/// failed would be caught by the checkers.
async fn power_loss(d: &mut Deployment, rng: &mut StdRng, hold: Duration) -> String {
    let Some(disks) = &d.disks else { return format!("{NO_FAULT}power loss: no crash-able disk in this plan") };
    let mode = if rng.random_bool(0.5) { Crash::Torn { seed: rng.random() } } else { Crash::DropUnsynced };
    if d.cuttable.is_empty() {
        return format!("{NO_FAULT}power loss: no disk to cut in this plan");
    }
    let disk = d.cuttable[rng.random_range(0..d.cuttable.len())];
    // Drawn from a generator of its own, seeded by what this strike already
    // drew, so the schedule's later draws, and every seed recorded before
    // cuts in the write path existed, stay as they were.
    let mut own = StdRng::seed_from_u64(hold.as_nanos() as u64 ^ 0x9e37_79b9_7f4a_7c15);
    let in_path = own.random_bool(0.5).then(|| own.random_range(1..48u64));
    let fs = match disk {
        Disk::Server => disks.server.as_ref(),
        Disk::Store => Some(&disks.store),
        Disk::Journal => Some(&disks.journal),
    };
    let Some(fs) = fs else { return format!("{NO_FAULT}power loss: no {disk:?} disk in this plan") };
    let cut = match in_path {
        Some(changes) => cut_in_the_write_path(fs, changes).await,
        None => "at a random moment".to_string(),
    };
    if let (Disk::Server, Servers::Coordinator(c)) = (disk, &mut d.servers) {
        c.kill9();
        let report = fs.crash(mode);
        tokio::time::sleep(hold.min(Duration::from_secs(3))).await;
        tokio::task::block_in_place(|| c.restart());
        return format!("power loss coordinator {cut} ({mode:?}: {report:?})");
    }
    let (role, what) = match disk {
        Disk::Store => (Role::SystemB, "store"),
        _ => (Role::HaWorker, "journal"),
    };
    let writers: Vec<usize> = (0..d.services.len()).filter(|&i| d.services[i].role == role).collect();
    for &i in &writers {
        if let Some(mut p) = d.services[i].proc.take() {
            p.kill9();
        }
    }
    let report = fs.crash(mode);
    tokio::time::sleep(hold.min(Duration::from_secs(3))).await;
    tokio::task::block_in_place(|| {
        for &i in &writers {
            d.start_service(i);
        }
    });
    format!("power loss {what} {cut} ({mode:?}: {report:?})")
}

/// Lets `changes` more changes reach `fs`, then fails every request, and
/// waits (at most 3 s: the writers may be idle) until the cut has fallen.
/// Says where it fell, for the run's record.
async fn cut_in_the_write_path(fs: &CrashFs, changes: u64) -> String {
    fs.cut_after(changes);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !fs.is_cut() {
        if tokio::time::Instant::now() >= deadline {
            return format!("after {changes} changes (not reached in 3 s: at kill time)");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    format!("in the write path after {changes} changes")
}

/// The operator's view of the deployment (the registry, lock queues).
async fn observer(d: &Deployment) -> drills::observe::Observer {
    let mut o = {
        let operator = d.ids.file("operator");
        let auth = servicekit::auth::ZkAuth::from_file(&operator).expect("the operator's credentials");
        drills::observe::Observer::connect(&d.zk, &auth).await.expect("the operator connects")
    };
    o.layout = servicekit::layout::Layout::new(&d.root);
    o
}

/// How a strike that found nothing to hit says so (a stalled lock holder
/// when nobody holds the lock): recorded, but not counted as its kind.
const NO_FAULT: &str = "no fault: ";

/// One fault: strikes, holds for a while, heals. Returns what it was.
async fn strike(d: &mut Deployment, kind: FaultKind, rng: &mut StdRng, obs: &drills::observe::Observer) -> String {
    let session = Duration::from_millis(d.target.session_ms());
    let hold = Duration::from_millis(rng.random_range(1000..8000));
    match kind {
        FaultKind::KillServer => match &mut d.servers {
            Servers::Coordinator(c) => {
                c.kill9();
                tokio::time::sleep(hold.min(Duration::from_secs(3))).await;
                tokio::task::block_in_place(|| c.restart());
                "kill -9 coordinator".into()
            }
            Servers::Ensemble(e) => {
                let i = member(e, rng);
                e.kill9(i);
                tokio::time::sleep(hold).await;
                e.restart(i);
                tokio::task::block_in_place(|| e.wait_serving(i, Duration::from_secs(60)));
                format!("kill -9 zk{}", i + 1)
            }
        },
        FaultKind::PauseServer => {
            // Up to twice the session timeout: some sessions expire.
            let hold = Duration::from_millis(rng.random_range(500..2 * session.as_millis() as u64));
            match &mut d.servers {
                Servers::Coordinator(c) => {
                    c.pause();
                    tokio::time::sleep(hold).await;
                    c.resume();
                    format!("pause coordinator {} ms", hold.as_millis())
                }
                Servers::Ensemble(e) => {
                    let i = member(e, rng);
                    e.pause(i);
                    tokio::time::sleep(hold).await;
                    e.resume(i);
                    format!("pause zk{} {} ms", i + 1, hold.as_millis())
                }
            }
        }
        FaultKind::KillService => {
            let i = rng.random_range(0..d.services.len());
            if let Some(mut p) = d.services[i].proc.take() {
                p.kill9();
            }
            tokio::time::sleep(hold.min(Duration::from_secs(3))).await;
            tokio::task::block_in_place(|| d.start_service(i));
            format!("kill -9 {}", d.services[i].name)
        }
        FaultKind::PauseService => {
            // Half the time the one whose stall matters: the hot entity's
            // lock holder, or the active ha-worker.
            let chosen = if rng.random_bool(0.5) {
                let holder = if rng.random_bool(0.5) {
                    obs.lock_holder("hot").await.ok().flatten().map(|(data, _)| data)
                } else {
                    obs.active().await.ok().flatten().map(|(m, _)| m.instance)
                };
                holder.and_then(|h| d.services.iter().position(|s| h.contains(&s.name)))
            } else {
                None
            };
            let i = chosen.unwrap_or_else(|| rng.random_range(0..d.services.len()));
            let hold = Duration::from_millis(rng.random_range(500..2 * session.as_millis() as u64));
            d.signal_service(i, Signal::SIGSTOP);
            tokio::time::sleep(hold).await;
            d.signal_service(i, Signal::SIGCONT);
            format!("pause {} {} ms", d.services[i].name, hold.as_millis())
        }
        FaultKind::ClockJump => {
            let i = rng.random_range(0..d.services.len());
            let size = if rng.random_bool(0.5) { 3600 } else { 86_400 };
            let offset = if rng.random_bool(0.5) { size } else { -size };
            d.services[i].clock.step(offset);
            tokio::time::sleep(hold).await;
            // Half the time the clock stays where it jumped (NTP may never
            // step it back); the rest, it is stepped back.
            let stays = rng.random_bool(0.5);
            if !stays {
                d.services[i].clock.step(0);
            }
            format!("clock {} {offset:+} s{}", d.services[i].name, if stays { "" } else { " and back" })
        }
        FaultKind::StallLockHolder => {
            // The hot entity's lock is free between tasks; one look found it
            // free in 6 of 11 strikes (batch 5), so look for up to 3 s.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            let i = loop {
                let holder = obs.lock_holder("hot").await.ok().flatten().map(|(data, _)| data);
                let found =
                    holder.and_then(|h| d.services.iter().position(|s| s.role == Role::SystemB && h.contains(&s.name)));
                match found {
                    Some(i) => break i,
                    None if tokio::time::Instant::now() >= deadline => {
                        return format!("{NO_FAULT}stall the lock holder: nobody held the hot entity's lock for 3 s");
                    }
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            let hold = 2 * session + Duration::from_secs(1);
            d.signal_service(i, Signal::SIGSTOP);
            tokio::time::sleep(hold).await;
            d.signal_service(i, Signal::SIGCONT);
            format!("stall lock holder {} {} ms", d.services[i].name, hold.as_millis())
        }
        FaultKind::Partition => {
            let what = partition(d, rng, obs).await;
            tokio::time::sleep(hold).await;
            d.net.heal();
            format!("{what} for {} ms", hold.as_millis())
        }
        FaultKind::PowerLoss => power_loss(d, rng, hold).await,
        FaultKind::SlowLink => {
            let host = if rng.random_bool(0.5) {
                match &d.servers {
                    Servers::Coordinator(_) => "srv".to_string(),
                    Servers::Ensemble(e) => e.host(member(e, rng)).to_string(),
                }
            } else {
                d.services[rng.random_range(0..d.services.len())].name.clone()
            };
            let kbit = rng.random_range(16..=128);
            d.net.slow(&host, kbit);
            tokio::time::sleep(hold).await;
            d.net.heal();
            format!("slow {host} to {kbit} kbit/s for {} ms", hold.as_millis())
        }
    }
}

/// Cuts the network one of four ways; returns which.
async fn partition(d: &Deployment, rng: &mut StdRng, obs: &drills::observe::Observer) -> String {
    let servers = d.server_hosts();
    let services: Vec<String> = d.services.iter().map(|s| s.name.clone()).collect();
    match rng.random_range(0..4) {
        // A server cut off from everyone: the coordinator unreachable, or
        // an ensemble member (the leader half the time) alone.
        0 => {
            let host = match &d.servers {
                Servers::Coordinator(_) => servers[0].clone(),
                Servers::Ensemble(e) => e.host(member(e, rng)).to_string(),
            };
            d.net.isolate(&host);
            format!("isolate {host}")
        }
        // A minority with a service, the majority with everything else
        // (on the coordinator: one service alone with the server).
        1 => {
            let service = services[rng.random_range(0..services.len())].clone();
            let (mut minority, mut majority) = (vec![service.clone()], vec![GATEWAY.to_string()]);
            match &d.servers {
                Servers::Coordinator(_) => minority.push(servers[0].clone()),
                Servers::Ensemble(e) => {
                    let lone = member(e, rng);
                    for (i, h) in servers.iter().enumerate() {
                        if i == lone {
                            minority.push(h.clone())
                        } else {
                            majority.push(h.clone())
                        }
                    }
                }
            }
            majority.extend(services.iter().filter(|s| **s != service).cloned());
            let (a, b): (Vec<&str>, Vec<&str>) =
                (minority.iter().map(String::as_str).collect(), majority.iter().map(String::as_str).collect());
            d.net.partition(&[&a, &b]);
            format!("partition {a:?} | {b:?}")
        }
        // One way only: a server's packets to a service (or, on an
        // ensemble, to another member) dropped, the reverse allowed.
        2 => {
            let from = servers[rng.random_range(0..servers.len())].clone();
            let to = if servers.len() > 1 && rng.random_bool(0.5) {
                servers.iter().find(|h| **h != from).cloned().unwrap_or_default()
            } else {
                services[rng.random_range(0..services.len())].clone()
            };
            d.net.cut_one_way(&from, &to);
            format!("cut {from} -> {to}")
        }
        // The one whose isolation matters: the active ha-worker or the hot
        // entity's lock holder, cut off from the servers and the broker.
        _ => {
            let who = if rng.random_bool(0.5) {
                obs.active().await.ok().flatten().map(|(m, _)| m.instance)
            } else {
                obs.lock_holder("hot").await.ok().flatten().map(|(data, _)| data)
            };
            let host = who
                .and_then(|w| services.iter().find(|s| w.contains(s.as_str())).cloned())
                .unwrap_or_else(|| services[rng.random_range(0..services.len())].clone());
            d.net.isolate(&host);
            format!("isolate {host}")
        }
    }
}

/// An ensemble member to hurt: the leader half the time.
fn member(e: &Ensemble, rng: &mut StdRng) -> usize {
    if rng.random_bool(0.5) {
        if let Some(i) = (0..3).find(|&i| e.mode(i) == Mode::Leader) {
            return i;
        }
    }
    rng.random_range(0..3)
}

/// Where runs keep what they record.
pub fn runs_dir() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).join("target/nemesis")
}

/// The fault kinds still to strike in this round: each kind is drawn once
/// before any is drawn again, so a run of a few strikes covers as many
/// kinds as it has strikes (drawn with replacement, a 30 s run of about
/// five strikes covered 3.9 kinds on average, and the rarest kind fell
/// behind the others in the table). A plan of one kind draws from a bag of
/// one, with the same call on the seed's generator as before, so the seeds
/// quoted for the proofs keep their schedules.
struct Bag {
    all: Vec<FaultKind>,
    left: Vec<FaultKind>,
}

impl Bag {
    fn new(kinds: &[FaultKind]) -> Bag {
        Bag { all: kinds.to_vec(), left: kinds.to_vec() }
    }

    fn draw(&mut self, rng: &mut StdRng) -> FaultKind {
        if self.left.is_empty() {
            self.left = self.all.clone();
        }
        self.left.swap_remove(rng.random_range(0..self.left.len()))
    }
}

/// Runs `plan`: deploys, strikes, heals, checks. Keeps the run's directory
/// (history, verdicts, logs) when a checker fails, removes it otherwise.
pub async fn run(plan: &Plan) -> Report {
    // One run at a time in a process: each deploys a whole system, and two
    // on a small machine would each see the other's load as a fault.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = runs_dir().join(format!("{}-{}", plan.target.name(), plan.seed));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the run's directory");
    let mut d = tokio::task::block_in_place(|| Deployment::start(plan, &dir));
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let obs = observer(&d).await;
    let config_path = obs.layout.config("system-b");
    let first = format!(r#"{{"work_ms":{}}}"#, plan.work_ms.start);
    let at = Instant::now();
    let (version, _) = obs.set(&config_path, first.as_bytes()).await.expect("the first config");
    // Acknowledged like every later write: the config checker counts it.
    history.push(Entry::Config { version, body: first, at });
    let obs = Arc::new(obs);

    // The registers: znodes of their own, open to the test's clients.
    let registers = 3;
    let reg_dir = format!("{}-registers", d.root);
    let setup = zk_recipes::session::Client::connect(&d.zk, Duration::from_secs(10), Duration::from_secs(10))
        .await
        .expect("connect");
    let open = zookeeper_async::Acl::open_unsafe().clone();
    for path in std::iter::once(reg_dir.clone()).chain((0..registers).map(|r| format!("{reg_dir}/r{r}"))) {
        setup
            .zk
            .create(&path, b"0".to_vec(), open.clone(), zookeeper_async::CreateMode::Persistent)
            .await
            .expect("register");
    }

    let mut clients = Vec::new();
    for c in 0..3 {
        let (a, h, s) = (d.system_a.clone(), history.clone(), stop.clone());
        clients.push(tokio::spawn(workload::submitter(c, a, h, s, plan.seed ^ (c as u64 + 1))));
    }
    for c in 0..2 {
        let reads = plan.target == Target::Coordinator;
        let (zk, dir, h, s) = (d.zk.clone(), reg_dir.clone(), history.clone(), stop.clone());
        clients.push(tokio::spawn(workload::register_client(
            c,
            zk,
            dir,
            registers,
            reads,
            h,
            s,
            plan.seed ^ (c as u64 + 100),
        )));
    }
    let (h, s, work) = (history.clone(), stop.clone(), plan.work_ms.clone());
    clients.push(tokio::spawn(workload::config_writer(obs.clone(), config_path.clone(), work, h, s, plan.seed ^ 7)));

    // The nemesis: a quiet gap, a fault, its heal; until the time is up.
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let (mut faults, mut struck) = (Vec::new(), Vec::new());
    let until = Instant::now() + plan.duration;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut kinds = Bag::new(&plan.faults);
    while Instant::now() < until && !plan.faults.is_empty() {
        let kind = kinds.draw(&mut rng);
        let started = Instant::now();
        let what = strike(&mut d, kind, &mut rng, &obs).await;
        history.push(Entry::Fault { what: what.clone(), started, healed: Instant::now() });
        // A strike that found nothing to hit is in the history, but the
        // run does not count under its kind.
        if !what.starts_with(NO_FAULT) {
            struck.push(kind);
        }
        faults.push(what);
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
    }
    // Heal what a fault may leave: every link up, every clock true again.
    d.net.heal();
    for s in &d.services {
        s.clock.step(0);
    }
    if plan.faults.is_empty() {
        tokio::time::sleep(plan.duration).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }

    let verdicts = judge(&d, &history, &obs, &config_path).await;
    let report = Report { plan: plan.clone(), verdicts, faults, struck, dir: dir.clone(), queue: d.queue.clone() };
    let _ = history.save(&dir.join("history.jsonl"));
    let _ = std::fs::write(dir.join("verdict.txt"), report.summary());
    if !report.passed() {
        if let Some(disks) = &d.disks {
            disks.keep(&dir.join("disks-at-end"));
        }
    }
    drop(d);
    // The run's queue goes with it (each is a Raft group on the broker).
    if let Err(e) = testkit::broker::remove(&report.queue) {
        eprintln!("nemesis: could not remove the run's queue: {e:#}");
    }
    if report.passed() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    report
}

/// Every checker on the history and the state the run left.
async fn judge(d: &Deployment, history: &History, obs: &drills::observe::Observer, config_path: &str) -> Vec<Verdict> {
    let entries = history.entries();
    let mut finals = BTreeMap::new();
    for e in &entries {
        if let Entry::Task { entity, .. } = e {
            // An entity the store cannot read shows as a value no task
            // sequence can reach, so the tasks checker fails on it.
            finals.entry(entity.clone()).or_insert_with(|| {
                stored_entity(&d.store, entity).map(|e| e.value).unwrap_or_else(|e| {
                    eprintln!("nemesis: {entity}: {e}");
                    i64::MIN
                })
            });
        }
    }
    let journal: Vec<_> = ha_worker::journal::read_entries(&d.journal)
        .map(|es| es.into_iter().map(|e| (e.token, e.instance)).collect())
        .unwrap_or_default();

    // Config: every registered system-b on the version the node holds now
    // (the last write, whichever attempt of it landed), given time to
    // catch up after the last fault.
    let last = obs.get(config_path).await.ok().flatten().map(|(_, mzxid, _)| mzxid);
    let acknowledged = entries.iter().filter(|e| matches!(e, Entry::Config { .. })).count();
    let mut applied = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        applied = obs
            .members(servicekit::auth::SYSTEM_B)
            .await
            .map(|ms| ms.iter().map(|m| (m.instance.clone(), m.config_version())).collect())
            .unwrap_or_default();
        if check::config(acknowledged, last, &applied).ok && applied.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    vec![
        check::tasks(&entries, &finals),
        check::lock_tokens(&entries),
        check::ha_journal(&journal),
        check::config(acknowledged, last, &applied),
        check::registers(&entries, Duration::from_secs(60)).await,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_strikes_once_before_any_strikes_again() {
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut bag = Bag::new(&FaultKind::ALL);
            for round in 0..3 {
                let mut drawn: Vec<_> = (0..FaultKind::ALL.len()).map(|_| bag.draw(&mut rng)).collect();
                drawn.sort();
                let mut all = FaultKind::ALL.to_vec();
                all.sort();
                assert_eq!(drawn, all, "seed {seed}, round {round}");
            }
        }
    }

    #[test]
    fn a_plan_of_one_kind_uses_the_seed_as_it_always_did() {
        // The proofs' seeds were chosen on the old draw, one
        // `random_range(0..1)` per strike: the generator must be where it
        // was after each draw, or their faults would change.
        for seed in 0..50 {
            let (mut old, mut new) = (StdRng::seed_from_u64(seed), StdRng::seed_from_u64(seed));
            let mut bag = Bag::new(&[FaultKind::PauseService]);
            for _ in 0..5 {
                let _ = old.random_range(0..1usize);
                assert_eq!(bag.draw(&mut new), FaultKind::PauseService);
                assert_eq!(old.random_range(0..u64::MAX), new.random_range(0..u64::MAX), "seed {seed}");
            }
        }
    }
}

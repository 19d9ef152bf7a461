//! A small network of hosts on this machine, for partition tests: each
//! host a Linux network namespace, all joined by one bridge, and faults
//! made with iptables inside the hosts, as Jepsen makes them between real
//! machines.
//!
//! ```text
//!   root namespace (the tests, RabbitMQ on 127.0.0.1)
//!     zkt<idx>  10.A.B.1/24 (the gateway; relays listen here)
//!        │ veth
//!   switch namespace: bridge br0 ── p0 ── eth0 10.A.B.2  host "zk1"
//!                                ── p1 ── eth0 10.A.B.3  host "zk2"
//!                                ── ...
//! ```
//!
//! - [`Net::create`] makes the switch and the gateway; [`Net::add_host`]
//!   a host with its own address and loopback.
//! - [`Net::command`] runs a program on a host (`ip netns exec`, which
//!   execs: the child's pid is the program's, so kill -9 and SIGSTOP of
//!   that pid reach the program itself).
//! - [`Host::run_on_thread`] and [`Host::runtime`] run the test's own code
//!   on a host: a network namespace belongs to a thread, and a socket to
//!   the namespace of the thread that opened it, so a test's ZooKeeper
//!   client on a host is partitioned like any server.
//! - [`Net::partition`], [`Net::cut_one_way`], [`Net::isolate`],
//!   [`Net::slow`] and [`Net::heal`] are the faults; [`Net::relay`] lets hosts reach a
//!   service of the root namespace (RabbitMQ) through the gateway, and can
//!   be cut itself.
//!
//! The bridge lives in a namespace of its own, not in the root one: with
//! `br_netfilter` loaded (Docker loads it and sets FORWARD to DROP),
//! bridged packets cross the root namespace's FORWARD chain, which is not
//! ours to change. The switch namespace's firewall is empty, and the test
//! process (in the root namespace) still reaches every host through the
//! gateway, so it can watch servers that are partitioned from each other.
//!
//! Names carry the creating process's pid (`zkt<pid>x<n>`), so parallel
//! test processes never collide, and a network left by a killed run (its
//! pid gone) is removed, with anything still running in it, by the next
//! [`Net::create`]. Dropping a [`Net`] (the last clone) kills what runs on
//! its hosts and deletes every namespace and link it made, also when a
//! test panics. Needs root, iproute2 and iptables (scripts/setup.sh).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use parking_lot::Mutex;

const PREFIX: &str = "zkt";
/// The name of the root namespace's end in fault groups: see
/// [`Net::partition`].
pub const GATEWAY: &str = "gateway";
/// Subnets are taken from 10.200.0.0-10.254.255.0: one /24 per network.
const FIRST_OCTET: u32 = 200;
const SUBNETS: u32 = 55 * 256;

/// A network of hosts; cheap to clone, torn down when the last clone
/// drops. See the module documentation.
#[derive(Clone)]
pub struct Net {
    inner: Arc<Inner>,
}

struct Inner {
    /// The switch namespace's name, and the prefix of every host's.
    id: String,
    /// The root namespace's link to the switch.
    uplink: String,
    subnet: [u8; 3],
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    hosts: Vec<Host>,
    /// Packets from the first to the second are dropped.
    blocked: BTreeSet<(String, String)>,
    /// The rules in force on each host, as last applied.
    applied: BTreeMap<String, String>,
    /// Hosts whose link is slowed ([`Net::slow`]).
    slowed: BTreeSet<String>,
}

/// A host of a [`Net`]: a network namespace with one address.
#[derive(Clone, Debug)]
pub struct Host {
    name: String,
    ns: String,
    ip: Ipv4Addr,
}

impl Net {
    /// A new network with no host yet; panics (fails the test) with what
    /// is missing when it cannot be made.
    pub fn create() -> Net {
        Self::try_create().unwrap_or_else(|e| {
            panic!("cannot create a test network: {e:#} (it needs root, iproute2 and iptables: scripts/setup.sh)")
        })
    }

    fn try_create() -> anyhow::Result<Net> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{pid:x}x{n:x}");
        ip(&["netns", "add", &id])?;
        // From here a failure still drops `net`, which deletes the switch.
        let mut net = Inner { id: id.clone(), uplink: String::new(), subnet: [0; 3], state: Default::default() };
        ip(&["-n", &id, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &id, "link", "set", "br0", "up"])?;
        // The root end's name is the subnet's claim: two processes cannot
        // create one link name, and a stale network's link (gone with its
        // switch) frees its subnet.
        let routes = ip(&["-4", "-o", "route", "show"])?;
        let start = (pid.wrapping_mul(64).wrapping_add(n)) % SUBNETS;
        for k in 0..SUBNETS {
            let idx = (start + k) % SUBNETS;
            let subnet = [10, (FIRST_OCTET + idx / 256) as u8, (idx % 256) as u8];
            if routed(&routes, subnet) {
                continue;
            }
            let uplink = format!("{PREFIX}{idx:04x}");
            if ip(&["link", "add", &uplink, "type", "veth", "peer", "name", "uplink", "netns", &id]).is_ok() {
                net.uplink = uplink;
                net.subnet = subnet;
                break;
            }
        }
        if net.uplink.is_empty() {
            bail!("no free subnet in 10.{FIRST_OCTET}-254.x.0/24");
        }
        let gateway = format!("{}/24", net.addr(1));
        ip(&["addr", "add", &gateway, "dev", &net.uplink])?;
        ip(&["link", "set", &net.uplink, "up"])?;
        ip(&["-n", &id, "link", "set", "uplink", "master", "br0", "up"])?;
        Ok(Net { inner: Arc::new(net) })
    }

    /// The gateway's address: the root namespace as the hosts reach it.
    pub fn gateway(&self) -> Ipv4Addr {
        self.inner.addr(1)
    }

    /// Adds host `name` (lowercase letters, digits, `-`), up and
    /// reachable from every other host and from the root namespace.
    pub fn add_host(&self, name: &str) -> Host {
        self.try_add_host(name).unwrap_or_else(|e| panic!("cannot add host {name}: {e:#}"))
    }

    fn try_add_host(&self, name: &str) -> anyhow::Result<Host> {
        if name.is_empty()
            || name == GATEWAY
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!("a host name is lowercase letters, digits and '-', and not {GATEWAY:?}");
        }
        let mut st = self.inner.state.lock();
        if st.hosts.iter().any(|h| h.name == name) {
            bail!("the network has a host {name} already");
        }
        let i = st.hosts.len();
        if i >= 250 {
            bail!("a network holds 250 hosts");
        }
        let host =
            Host { name: name.to_string(), ns: format!("{}-{name}", self.inner.id), ip: self.inner.addr(i as u8 + 2) };
        let (sw, ns, port) = (&self.inner.id, &host.ns, format!("p{i}"));
        ip(&["netns", "add", ns])?;
        // Listed before the links exist, so Drop removes a half-made host.
        st.hosts.push(host.clone());
        ip(&["-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
        ip(&["-n", sw, "link", "set", &port, "master", "br0", "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{}/24", host.ip), "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(host)
    }

    /// Host `name`; panics if there is none.
    pub fn host(&self, name: &str) -> Host {
        self.inner.state.lock().hosts.iter().find(|h| h.name == name).cloned().unwrap_or_else(|| {
            panic!("the network has no host {name}");
        })
    }

    /// Every host, in the order they were added.
    pub fn hosts(&self) -> Vec<Host> {
        self.inner.state.lock().hosts.clone()
    }

    /// `program` to run on host `host` (add its arguments and start it).
    pub fn command(&self, host: &str, program: impl AsRef<OsStr>) -> Command {
        self.host(host).command(program)
    }

    /// Hosts in different groups cannot exchange packets: each drops what
    /// comes from the others. A host in no group keeps every link;
    /// [`GATEWAY`] may be named in a group, and then hosts of other groups
    /// drop what comes from the root namespace (its relays, the test's own
    /// sockets; the root namespace itself is not filtered). Faults add up
    /// until [`Net::heal`].
    pub fn partition(&self, groups: &[&[&str]]) {
        let mut st = self.inner.state.lock();
        for (g, group) in groups.iter().enumerate() {
            for (o, other) in groups.iter().enumerate() {
                if g == o {
                    continue;
                }
                for from in group.iter() {
                    for to in other.iter().filter(|t| **t != GATEWAY) {
                        st.blocked.insert((from.to_string(), to.to_string()));
                    }
                }
            }
        }
        self.apply(&mut st);
    }

    /// Packets from `from` to `to` are dropped, those from `to` to `from`
    /// still arrive (`from` may be [`GATEWAY`]; `to` may not, as the root
    /// namespace is never filtered). A TCP connection between them stalls
    /// (its segments and acknowledgements need both ways), a datagram
    /// from `to` still reaches `from`.
    pub fn cut_one_way(&self, from: &str, to: &str) {
        assert!(to != GATEWAY, "the root namespace's firewall is not the test's: cut a relay instead");
        let mut st = self.inner.state.lock();
        st.blocked.insert((from.to_string(), to.to_string()));
        self.apply(&mut st);
    }

    /// `host` exchanges no packet with any other host, nor with the
    /// gateway (it drops what the root namespace sends).
    pub fn isolate(&self, host: &str) {
        let mut st = self.inner.state.lock();
        let others: Vec<String> = st.hosts.iter().map(|h| h.name.clone()).filter(|n| n != host).collect();
        for other in others {
            st.blocked.insert((other.clone(), host.to_string()));
            st.blocked.insert((host.to_string(), other));
        }
        st.blocked.insert((GATEWAY.to_string(), host.to_string()));
        self.apply(&mut st);
    }

    /// Every packet to and from `host` passes a token bucket of
    /// `kbit_per_s` (the kernel's `tbf` qdisc, on both ends of the host's
    /// link): a slow link, as a congested or long-haul one is. What is
    /// sent faster queues behind what went before, up to half a second's
    /// worth, and the rest is dropped (TCP sends it again), so a request
    /// waits behind its host's other traffic and heavy traffic stalls.
    /// This kernel has no `netem` for a fixed delay; `tbf` is the shaping
    /// it has, and it works inside a namespace. Until [`Net::heal`].
    pub fn slow(&self, host: &str, kbit_per_s: u32) {
        let mut st = self.inner.state.lock();
        let rate = format!("{kbit_per_s}kbit");
        // One full frame fits the bucket, or nothing larger would pass.
        let shape = ["root", "tbf", "rate", &rate, "burst", "1600", "latency", "500ms"];
        for (ns, dev) in self.link_ends(&st, host) {
            tc(&ns, &[&["qdisc", "replace", "dev", &dev], &shape[..]].concat())
                .unwrap_or_else(|e| panic!("slowing host {host}: {e:#}"));
        }
        st.slowed.insert(host.to_string());
    }

    /// Ends every fault: all hosts reach each other again, at full speed.
    pub fn heal(&self) {
        let mut st = self.inner.state.lock();
        st.blocked.clear();
        self.apply(&mut st);
        for host in std::mem::take(&mut st.slowed) {
            for (ns, dev) in self.link_ends(&st, &host) {
                tc(&ns, &["qdisc", "del", "dev", &dev, "root"])
                    .unwrap_or_else(|e| panic!("restoring host {host}'s link: {e:#}"));
            }
        }
    }

    /// Both ends of `host`'s link, as (namespace, device): its own `eth0`
    /// (what it sends) and its port on the switch (what it is sent).
    fn link_ends(&self, st: &State, host: &str) -> [(String, String); 2] {
        let i =
            st.hosts.iter().position(|h| h.name == host).unwrap_or_else(|| panic!("the network has no host {host}"));
        [(st.hosts[i].ns.clone(), "eth0".to_string()), (self.inner.id.clone(), format!("p{i}"))]
    }

    /// Writes each host's rules where they changed. A blocked packet is
    /// dropped in silence (DROP, never REJECT): a real partition sends no
    /// RST and no ICMP error, so each end learns of it only from its own
    /// timeouts, which are what a partition test exercises. The rules
    /// filter INPUT on eth0 alone: a host's loopback is never cut, and a
    /// drop in OUTPUT would not be silent (the sender's own kernel answers
    /// EPERM at once).
    fn apply(&self, st: &mut State) {
        let addr_of = |name: &str, hosts: &[Host]| -> Ipv4Addr {
            if name == GATEWAY {
                return self.gateway();
            }
            hosts
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.ip)
                .unwrap_or_else(|| panic!("the network has no host {name}"))
        };
        for host in st.hosts.clone() {
            let mut rules = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
            for (from, _) in st.blocked.iter().filter(|(_, to)| *to == host.name) {
                rules += &format!("-A INPUT -i eth0 -s {}/32 -j DROP\n", addr_of(from, &st.hosts));
            }
            rules += "COMMIT\n";
            if st.applied.get(&host.name) == Some(&rules) {
                continue;
            }
            // The whole filter table at once: a host's rules change
            // atomically.
            host.iptables_restore(&rules).unwrap_or_else(|e| panic!("iptables on host {}: {e:#}", host.name));
            st.applied.insert(host.name.clone(), rules);
        }
    }

    /// A TCP relay in the root namespace, listening on the gateway at
    /// `upstream`'s port and forwarding to `upstream` (a service on the
    /// root namespace's loopback, which hosts cannot reach otherwise).
    pub fn relay(&self, upstream: SocketAddr) -> Relay {
        Relay::start(SocketAddr::from((self.gateway(), upstream.port())), upstream)
    }
}

impl Inner {
    fn addr(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], last)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let hosts = std::mem::take(&mut self.state.get_mut().hosts);
        for h in &hosts {
            delete_namespace(&h.ns);
        }
        // The root namespace's end, at once: a namespace's own links go
        // only when the kernel gets round to freeing it.
        if !self.uplink.is_empty() {
            let _ = ip(&["link", "delete", &self.uplink]);
        }
        delete_namespace(&self.id);
    }
}

impl Host {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Its namespace's file, for `setns`.
    fn ns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.ns)
    }

    /// `program` to run on this host.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Runs `f` on a new thread that lives on this host: every socket it
    /// opens is the host's.
    pub fn run_on_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.ns_path();
        std::thread::Builder::new()
            .name(format!("on-{}", self.name))
            .spawn(move || {
                enter(&path);
                f()
            })
            .expect("spawn a thread")
    }

    /// A tokio runtime whose every thread lives on this host: what its
    /// tasks connect to, and what a client library's own tasks reconnect
    /// to, goes through the host's network.
    pub fn runtime(&self) -> HostRuntime {
        let path = self.ns_path();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("on-{}", self.name))
            .enable_all()
            .on_thread_start(move || enter(&path))
            .build()
            .expect("build a host's runtime");
        HostRuntime { rt: Some(rt) }
    }

    fn iptables_restore(&self, rules: &str) -> anyhow::Result<()> {
        let mut child = self
            .command("iptables-restore")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("run iptables-restore (Debian package iptables)")?;
        child.stdin.take().context("stdin")?.write_all(rules.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("iptables-restore: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

/// A runtime on a host ([`Host::runtime`]). Only [`HostRuntime::spawn`] is
/// offered: `block_on` would run its future on the calling thread, outside
/// the host. It shuts down in the background when dropped, so it may be
/// dropped inside another runtime.
pub struct HostRuntime {
    rt: Option<tokio::runtime::Runtime>,
}

impl HostRuntime {
    /// Runs `fut` on the host; await the handle from any runtime.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.as_ref().expect("the runtime runs").spawn(fut)
    }
}

impl Drop for HostRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &std::path::Path) {
    let ns = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
}

/// Runs `ip` with `args`; its stdout, or an error with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output().context("run ip (Debian package iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `tc` (iproute2) with `args` in namespace `ns`.
fn tc(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(["netns", "exec", ns, "tc"]).args(args).output().context("run tc (iproute2)")?;
    if !out.status.success() {
        bail!("tc {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Whether the root namespace already routes some of `subnet` (a real
/// network of this machine, or a stale test network's).
fn routed(routes: &str, subnet: [u8; 3]) -> bool {
    let ours = u32::from(Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 0));
    routes.lines().filter_map(|l| l.split_whitespace().next()).any(|dest| {
        let (addr, len) = dest.split_once('/').unwrap_or((dest, "32"));
        let (Ok(addr), Ok(len)) = (addr.parse::<Ipv4Addr>(), len.parse::<u32>()) else { return false };
        // Two prefixes overlap when they agree on the shorter's length.
        let len = len.min(24);
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        u32::from(addr) & mask == ours & mask
    })
}

/// Kills what runs in namespace `ns` and deletes it.
fn delete_namespace(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        // Never this process, whose threads may live on a host.
        let me = std::process::id() as i32;
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()).filter(|p| *p != me) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    if let Err(e) = ip(&["netns", "delete", ns]) {
        eprintln!("netns: could not delete namespace {ns}: {e:#}");
    }
}

/// Deletes the networks of processes that are gone (a killed test run).
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.split('x').next()) else { continue };
        let Ok(pid) = u32::from_str_radix(pid, 16) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            delete_namespace(&name);
        }
    }
}

/// A TCP relay from the gateway to a service of the root namespace
/// ([`Net::relay`]), run on a thread and runtime of its own; stopped when
/// dropped.
pub struct Relay {
    addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(listen: SocketAddr, upstream: SocketAddr) -> Relay {
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("relay runtime");
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::bind(listen).await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = bound_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = bound_tx.send(Ok(()));
                    let accept = async {
                        while let Ok((client, _)) = listener.accept().await {
                            tokio::spawn(relay_connection(client, upstream, cut_rx.clone()));
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = stop_rx => {}
                    }
                });
            })
            .expect("spawn the relay's thread");
        match bound_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the relay cannot listen on {listen}: {e}"),
            Err(_) => panic!("the relay's thread died"),
        }
        Relay { addr: listen, cut, stop: Some(stop), thread: Some(thread) }
    }

    /// Where hosts reach the service.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A partition between every host and the service: nothing passes
    /// either way, in silence (connections stay open, bytes wait, new
    /// connections are accepted and wait), as on a real partition.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Ends [`Relay::cut`]: what waited is delivered.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn relay_connection(
    client: tokio::net::TcpStream,
    upstream: SocketAddr,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    if cut.wait_for(|c| !*c).await.is_err() {
        return;
    }
    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = pump(cr, sw, cut.clone()) => {}
        _ = pump(sr, cw, cut) => {}
    }
}

/// Copies one direction, holding each chunk while the relay is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_routes_are_seen() {
        let routes = "default via 172.17.0.1 dev eth0\n10.0.0.0/8 dev x\n";
        assert!(routed(routes, [10, 200, 3]));
        let routes = "default via 172.17.0.1 dev eth0\n10.201.7.0/24 dev y proto kernel\n10.202.0.5 dev z\n";
        assert!(routed(routes, [10, 201, 7]));
        assert!(routed(routes, [10, 202, 0]));
        assert!(!routed(routes, [10, 201, 8]));
        assert!(!routed(routes, [10, 200, 0]));
    }
}

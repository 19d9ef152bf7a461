//! Four-letter words: short text commands sent instead of a handshake on
//! the client port (`echo ruok | nc host 2181`). Operators' tooling parses
//! these outputs, so their shapes follow ZooKeeper's.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::config::FOUR_LETTER_WORDS;
use crate::core::Core;

/// Leads with the ZooKeeper release whose protocol we speak, in ZooKeeper's
/// own `3.8.0-<build>` form: clients read the leading digits to decide which
/// features a server has (kazoo's `server_version()` parses `envi`'s
/// `zookeeper.version`), and the build part says what is really answering.
pub const VERSION: &str = concat!("3.8.0-coordinator-", env!("CARGO_PKG_VERSION"));

/// The command, if these four bytes are one.
pub fn parse(word: &[u8; 4]) -> Option<&'static str> {
    FOUR_LETTER_WORDS.iter().copied().find(|w| w.as_bytes() == word)
}

/// The command's full reply (the connection closes after it).
pub fn run(core: &Core, cmd: &str) -> String {
    if !core.config.four_letter_words.contains(cmd) {
        return format!("{cmd} is not executed because it is not in the whitelist.\n");
    }
    run_unrestricted(core, cmd)
}

/// The command's output regardless of the client-port whitelist (the admin
/// listener's view).
pub fn run_unrestricted(core: &Core, cmd: &str) -> String {
    match cmd {
        "ruok" => "imok".to_string(),
        "isro" => "rw".to_string(),
        "srvr" => srvr(core),
        "stat" => stat(core),
        "mntr" => mntr(core),
        "conf" => conf(core),
        "cons" => cons(core),
        "envi" => envi(),
        "wchs" => wchs(core),
        "wchc" => wchc(core),
        "wchp" => wchp(core),
        "dump" => dump(core),
        _ => String::new(),
    }
}

fn srvr(core: &Core) -> String {
    let (min, avg, max) = core.stats.latency_ms();
    let (zxid, nodes) = core.with_tree(|t| (t.last_zxid(), t.node_count()));
    format!(
        "Zookeeper version: {VERSION}\nLatency min/avg/max: {min:.0}/{avg:.4}/{max:.0}\nReceived: {}\nSent: {}\nConnections: {}\nOutstanding: 0\nZxid: {zxid:#x}\nMode: standalone\nNode count: {nodes}\n",
        core.stats.packets_received.load(Ordering::Relaxed),
        core.stats.packets_sent(),
        core.connections().len(),
    )
}

fn stat(core: &Core) -> String {
    let mut out = format!("Zookeeper version: {VERSION}\nClients:\n");
    for c in core.connections() {
        let _ = writeln!(
            out,
            " /{}[1](queued=0,recved={},sent={})",
            c.peer,
            c.received.load(Ordering::Relaxed),
            c.sent.load(Ordering::Relaxed)
        );
    }
    out.push('\n');
    let srvr = srvr(core);
    out.push_str(srvr.split_once('\n').map_or("", |(_, rest)| rest));
    out
}

/// The soft limit on open files, from /proc (no unsafe getrlimit needed).
fn max_open_files() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn mntr(core: &Core) -> String {
    mntr_values(core).into_iter().map(|(k, v)| format!("{k}\t{v}\n")).collect()
}

/// `mntr`'s keys and values, in its order: one source for the command, the
/// Prometheus endpoint and the admin API's ServerStats.
pub fn mntr_values(core: &Core) -> Vec<(&'static str, String)> {
    let (min, avg, max) = core.stats.latency_ms();
    let (zxid, nodes, ephemerals, size) =
        core.with_tree(|t| (t.last_zxid(), t.node_count(), t.ephemeral_count(), t.approximate_data_size()));
    let watches = core.with_watches(|w| w.count());
    let sessions = core.with_sessions(|s| s.len());
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    // ZooKeeper's mntr reports the fd limit beside the count (its
    // UnixOperatingSystemMXBean metrics); monitoring compares the two.
    let max_fds = max_open_files().map(|n| n.to_string()).unwrap_or_else(|| "-1".into());
    vec![
        ("zk_version", VERSION.to_string()),
        ("zk_server_state", "standalone".into()),
        ("zk_avg_latency", format!("{avg:.4}")),
        ("zk_max_latency", format!("{max:.0}")),
        ("zk_min_latency", format!("{min:.0}")),
        ("zk_packets_received", core.stats.packets_received.load(Ordering::Relaxed).to_string()),
        ("zk_packets_sent", core.stats.packets_sent().to_string()),
        ("zk_num_alive_connections", core.connections().len().to_string()),
        ("zk_outstanding_requests", "0".into()),
        ("zk_znode_count", nodes.to_string()),
        ("zk_watch_count", watches.to_string()),
        ("zk_ephemerals_count", ephemerals.to_string()),
        ("zk_approximate_data_size", size.to_string()),
        ("zk_open_file_descriptor_count", fds.to_string()),
        ("zk_max_file_descriptor_count", max_fds),
        ("zk_global_sessions", sessions.to_string()),
        ("zk_last_zxid", zxid.to_string()),
        ("zk_uptime", core.started.elapsed().as_millis().to_string()),
    ]
}

fn conf(core: &Core) -> String {
    let c = &core.config;
    format!(
        "clientPort={}\nclientPortAddress={}\ndataDir={}\ntickTime={}\nmaxClientCnxns={}\nminSessionTimeout={}\nmaxSessionTimeout={}\nserverId=0\njute.maxbuffer={}\n",
        c.listen.port(),
        c.listen.ip(),
        c.data_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default(),
        c.tick_time.as_millis(),
        c.max_client_connections,
        c.min_session_timeout.as_millis(),
        c.max_session_timeout.as_millis(),
        c.max_buffer,
    )
}

fn cons(core: &Core) -> String {
    let mut out = String::new();
    for c in core.connections() {
        let _ = writeln!(
            out,
            " /{}[1](queued=0,recved={},sent={},sid={:#x},lop=NA,est={},to={},lcxid={:#x},lzxid={:#x})",
            c.peer,
            c.received.load(Ordering::Relaxed),
            c.sent.load(Ordering::Relaxed),
            c.session_id.load(Ordering::Relaxed),
            c.established.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0),
            c.timeout_ms.load(Ordering::Relaxed),
            c.last_cxid.load(Ordering::Relaxed),
            c.last_zxid.load(Ordering::Relaxed),
        );
    }
    out.push('\n');
    out
}

fn envi() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!(
        // The keys ZooKeeper's envi prints that mean something outside a JVM.
        "Environment:\nzookeeper.version={VERSION}\nhost.name={}\nos.name={}\nos.arch={}\nuser.name={}\nuser.home={}\nuser.dir={}\n",
        host.trim(),
        std::env::consts::OS,
        std::env::consts::ARCH,
        std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_default(),
        std::env::var("HOME").unwrap_or_default(),
        std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
    )
}

fn wchs(core: &Core) -> String {
    let (conns, paths, total) = core.with_watches(|w| (w.connections(), w.watched_paths(), w.count()));
    format!("{conns} connections watching {paths} paths\nTotal watches:{total}\n")
}

fn wchc(core: &Core) -> String {
    let by_conn = core.with_watches(|w| w.by_connection());
    let mut out = String::new();
    for c in core.connections() {
        if let Some(paths) = by_conn.get(&c.id) {
            let _ = writeln!(out, "{:#x}", c.session_id.load(Ordering::Relaxed));
            for p in paths {
                let _ = writeln!(out, "\t{p}");
            }
        }
    }
    out
}

/// Watches by path, as ZooKeeper's wchp lists them: each watched path, then
/// the sessions watching it, indented by a tab.
fn wchp(core: &Core) -> String {
    let by_conn = core.with_watches(|w| w.by_connection());
    let mut by_path: std::collections::BTreeMap<&str, Vec<i64>> = std::collections::BTreeMap::new();
    for c in core.connections() {
        for p in by_conn.get(&c.id).into_iter().flatten() {
            by_path.entry(p.as_str()).or_default().push(c.session_id.load(Ordering::Relaxed));
        }
    }
    let mut out = String::new();
    for (path, sessions) in by_path {
        let _ = writeln!(out, "{path}");
        for s in sessions {
            let _ = writeln!(out, "\t{s:#x}");
        }
    }
    out
}

fn dump(core: &Core) -> String {
    let mut out = String::from("SessionTracker dump:\n");
    core.with_sessions(|s| {
        let _ = writeln!(out, "Global Sessions({}):", s.len());
        let mut list: Vec<_> = s.iter().map(|x| (x.id, x.timeout.as_millis())).collect();
        list.sort();
        for (id, to) in list {
            let _ = writeln!(out, "{id:#x}\t{to}ms");
        }
    });
    out.push_str("ephemeral nodes dump:\n");
    core.with_tree(|t| {
        let mut owners: Vec<_> = t.sessions_with_ephemerals().collect();
        owners.sort_by_key(|(id, _)| **id);
        let _ = writeln!(out, "Sessions with Ephemerals ({}):", owners.len());
        for (id, paths) in owners {
            let _ = writeln!(out, "{id:#x}:");
            for p in paths {
                let _ = writeln!(out, "\t{p}");
            }
        }
    });
    out
}

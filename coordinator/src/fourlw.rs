//! Four-letter words: short text commands sent instead of a handshake on
//! the client port (`echo ruok | nc host 2181`). Operators' tooling parses
//! these outputs, so their shapes follow ZooKeeper's.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::config::FourLetterWord;
use crate::core::Core;
use crate::session::SessionId;
use crate::stats::{Snapshot, SummaryStats};

/// Leads with the ZooKeeper release whose protocol we speak, in ZooKeeper's
/// own `3.8.0-<build>` form: clients read the leading digits to decide which
/// features a server has (kazoo's `server_version()` parses `envi`'s
/// `zookeeper.version`), and the build part says what is really answering.
pub const VERSION: &str = concat!("3.8.0-coordinator-", env!("CARGO_PKG_VERSION"));

/// Every number the server reports about itself, read now: what `mntr`,
/// `srvr`, the admin listener's `/metrics` and gRPC `ServerStats` render.
/// One lock at a time, never nested, so the figures may be a moment apart,
/// which is as exact as a live server can be described anyway.
pub(crate) fn snapshot(core: &Core) -> Snapshot {
    let (zxid, nodes, ephemerals, size) =
        core.with_tree(|t| (t.last_zxid(), t.node_count(), t.ephemeral_count(), t.approximate_data_size()));
    let watches = core.with_watches(|w| w.count());
    let sessions = core.with_sessions(|s| s.len());
    let connections = core.connections();
    let storage = core.storage().map(|s| &*s.times);
    let stats = &core.stats;
    Snapshot {
        version: VERSION,
        server_state: "standalone",
        latency: stats.latency(),
        read_latency: stats.read_latency(),
        update_latency: stats.update_latency(),
        fsync_time: storage.map(|t| t.fsync.read()).unwrap_or_default(),
        snapshot_time: storage.map(|t| t.snapshot.read()).unwrap_or_default(),
        packets_received: stats.packets_received.load(Ordering::Relaxed),
        packets_sent: stats.packets_sent(),
        num_alive_connections: connections.len() as u64,
        outstanding_requests: core.outstanding_requests(),
        queued_bytes: core.queued_bytes(),
        znode_count: nodes as u64,
        watch_count: watches as u64,
        ephemerals_count: ephemerals as u64,
        approximate_data_size: size.max(0) as u64,
        open_file_descriptor_count: std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0),
        max_file_descriptor_count: max_open_files(),
        global_sessions: sessions as u64,
        last_zxid: zxid,
        uptime: core.started.elapsed(),
    }
}

/// The soft limit on open files, from /proc (no unsafe getrlimit needed).
/// ZooKeeper reports it beside the count; monitoring compares the two.
fn max_open_files() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The command, if these four bytes are one.
pub(crate) fn parse(word: &[u8; 4]) -> Option<FourLetterWord> {
    FourLetterWord::ALL.into_iter().find(|w| w.name().as_bytes() == word)
}

/// The command's full reply (the connection closes after it).
pub(crate) fn run(core: &Core, cmd: FourLetterWord) -> String {
    if !core.config.four_letter_words.contains(&cmd) {
        return format!("{cmd} is not executed because it is not in the whitelist.\n");
    }
    run_unrestricted(core, cmd)
}

/// The command's output regardless of the client-port whitelist (the admin
/// listener's view).
pub(crate) fn run_unrestricted(core: &Core, cmd: FourLetterWord) -> String {
    use FourLetterWord::*;
    match cmd {
        Ruok => "imok".to_string(),
        Isro => "rw".to_string(),
        Srvr => srvr(&snapshot(core)),
        Stat => stat(core),
        Mntr => mntr(&snapshot(core)),
        Conf => conf(core),
        Cons => cons(core),
        Envi => envi(),
        Wchs => wchs(core),
        Wchc => wchc(core),
        Wchp => wchp(core),
        Dump => dump(core),
    }
}

fn srvr(s: &Snapshot) -> String {
    let l = s.latency;
    format!(
        "Zookeeper version: {}\nLatency min/avg/max: {:.0}/{:.4}/{:.0}\nReceived: {}\nSent: {}\nConnections: {}\nOutstanding: {}\nZxid: {:#x}\nMode: {}\nNode count: {}\n",
        s.version,
        l.min_ms,
        l.avg_ms,
        l.max_ms,
        s.packets_received,
        s.packets_sent,
        s.num_alive_connections,
        s.outstanding_requests,
        s.last_zxid,
        s.server_state,
        s.znode_count,
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
    let srvr = srvr(&snapshot(core));
    out.push_str(srvr.split_once('\n').map_or("", |(_, rest)| rest));
    out
}

/// `mntr`: one `zk_<name>\t<value>` line per figure, named and shaped as
/// ZooKeeper 3.8 prints them (latencies in milliseconds; averages with
/// decimals, the rest whole). The figures ZooKeeper prints first come
/// first; `zk_last_zxid` and `zk_queued_bytes` are the coordinator's own.
fn mntr(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(out, "zk_{key}\t{value}");
    };
    let l = s.latency;
    line("version", &s.version);
    line("server_state", &s.server_state);
    line("avg_latency", &format_args!("{:.4}", l.avg_ms));
    line("max_latency", &format_args!("{:.0}", l.max_ms));
    line("min_latency", &format_args!("{:.0}", l.min_ms));
    line("packets_received", &s.packets_received);
    line("packets_sent", &s.packets_sent);
    line("num_alive_connections", &s.num_alive_connections);
    line("outstanding_requests", &s.outstanding_requests);
    line("znode_count", &s.znode_count);
    line("watch_count", &s.watch_count);
    line("ephemerals_count", &s.ephemerals_count);
    line("approximate_data_size", &s.approximate_data_size);
    line("open_file_descriptor_count", &s.open_file_descriptor_count);
    match s.max_file_descriptor_count {
        Some(n) => line("max_file_descriptor_count", &n),
        None => line("max_file_descriptor_count", &-1),
    }
    line("global_sessions", &s.global_sessions);
    line("last_zxid", &s.last_zxid);
    line("uptime", &s.uptime.as_millis());
    line("queued_bytes", &s.queued_bytes);
    for (name, summary, percentiles) in [
        ("readlatency", &s.read_latency, true),
        ("updatelatency", &s.update_latency, true),
        ("fsynctime", &s.fsync_time, false),
        ("snapshottime", &s.snapshot_time, false),
    ] {
        summary_lines(&mut line, name, summary, percentiles);
    }
    out
}

/// A summary as ZooKeeper's `mntr` prints one: `avg_`, `min_`, `max_`,
/// `cnt_` and `sum_` of every sample, and, for the request latencies,
/// `p50_`, `p95_`, `p99_` and `p999_` (0 while no recent sample).
fn summary_lines(line: &mut impl FnMut(&str, &dyn std::fmt::Display), name: &str, s: &SummaryStats, percentiles: bool) {
    line(&format!("avg_{name}"), &format_args!("{:.4}", s.avg_ms()));
    line(&format!("min_{name}"), &format_args!("{:.0}", s.min_ms));
    line(&format!("max_{name}"), &format_args!("{:.0}", s.max_ms));
    line(&format!("cnt_{name}"), &s.count);
    line(&format!("sum_{name}"), &format_args!("{:.0}", s.sum_ms));
    if percentiles {
        for (label, q) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("p999", 0.999)] {
            line(&format!("{label}_{name}"), &format_args!("{:.0}", s.quantile(q).unwrap_or(0.0)));
        }
    }
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
            " /{}[1](queued=0,recved={},sent={},sid={},lop=NA,est={},to={},lcxid={:#x},lzxid={:#x})",
            c.peer,
            c.received.load(Ordering::Relaxed),
            c.sent.load(Ordering::Relaxed),
            SessionId(c.session_id.load(Ordering::Relaxed)),
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
            let _ = writeln!(out, "{}", SessionId(c.session_id.load(Ordering::Relaxed)));
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
            let _ = writeln!(out, "\t{}", SessionId(s));
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
            let _ = writeln!(out, "{}\t{to}ms", SessionId(id));
        }
    });
    out.push_str("ephemeral nodes dump:\n");
    core.with_tree(|t| {
        let mut owners: Vec<_> = t.sessions_with_ephemerals().collect();
        owners.sort_by_key(|(id, _)| **id);
        let _ = writeln!(out, "Sessions with Ephemerals ({}):", owners.len());
        for (id, paths) in owners {
            let _ = writeln!(out, "{}:", SessionId(*id));
            for p in paths {
                let _ = writeln!(out, "\t{p}");
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<(&str, &str)> {
        text.lines().map(|l| l.split_once('\t').expect("key<TAB>value")).collect()
    }

    #[test]
    fn words_are_parsed_from_their_four_bytes_only() {
        assert_eq!(parse(b"mntr"), Some(FourLetterWord::Mntr));
        assert_eq!(parse(b"MNTR"), None);
        assert_eq!(parse(b"\0\0\0\x2d"), None, "a handshake's length prefix is not a word");
        for w in FourLetterWord::ALL {
            let bytes: [u8; 4] = w.name().as_bytes().try_into().expect("four bytes");
            assert_eq!(parse(&bytes), Some(w));
        }
    }

    /// The keys and value shapes are ZooKeeper 3.8's (as its own `mntr`
    /// prints them), so mntr-parsing monitoring reads either server.
    #[test]
    fn mntr_names_and_shapes_are_zookeepers() {
        let text = mntr(&crate::stats::tests::sample());
        let v = values(&text);
        let get = |k: &str| v.iter().find(|(key, _)| *key == k).map(|(_, val)| *val);
        for (key, want) in [
            ("zk_version", VERSION),
            ("zk_server_state", "standalone"),
            ("zk_avg_latency", "1.4167"),
            ("zk_max_latency", "5"),
            ("zk_min_latency", "0"),
            ("zk_packets_received", "11"),
            ("zk_packets_sent", "12"),
            ("zk_num_alive_connections", "3"),
            ("zk_outstanding_requests", "4"),
            ("zk_znode_count", "7"),
            ("zk_watch_count", "8"),
            ("zk_ephemerals_count", "2"),
            ("zk_approximate_data_size", "1234"),
            ("zk_open_file_descriptor_count", "40"),
            ("zk_max_file_descriptor_count", "-1"),
            ("zk_global_sessions", "5"),
            ("zk_uptime", "4321"),
            ("zk_queued_bytes", "4096"),
            // Five read samples: 0.1, 0.2, 0.3, 0.4 and 5 ms.
            ("zk_avg_readlatency", "1.2000"),
            ("zk_min_readlatency", "0"),
            ("zk_max_readlatency", "5"),
            ("zk_cnt_readlatency", "5"),
            ("zk_sum_readlatency", "6"),
            ("zk_p50_readlatency", "0"),
            ("zk_p999_readlatency", "5"),
            ("zk_cnt_updatelatency", "1"),
            ("zk_p99_updatelatency", "3"),
            ("zk_avg_fsynctime", "1.0000"),
            ("zk_cnt_fsynctime", "1"),
            ("zk_cnt_snapshottime", "0"),
            ("zk_max_snapshottime", "0"),
        ] {
            assert_eq!(get(key), Some(want), "{key} in:\n{text}");
        }
        // Basic summaries have no percentiles in ZooKeeper's mntr.
        assert_eq!(get("zk_p50_fsynctime"), None);
        for name in ["readlatency", "updatelatency"] {
            for stat in ["avg", "min", "max", "cnt", "sum", "p50", "p95", "p99", "p999"] {
                assert!(get(&format!("zk_{stat}_{name}")).is_some(), "zk_{stat}_{name}");
            }
        }
        for (key, value) in &v {
            assert!(key.starts_with("zk_") && !key.contains(' '), "{key}");
            let text_valued = ["zk_version", "zk_server_state"].contains(key);
            assert!(text_valued || value.parse::<f64>().is_ok(), "{key} = {value:?} is not a number");
        }
    }
}

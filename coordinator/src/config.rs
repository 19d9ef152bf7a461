//! Server settings: flags, environment variables, and Apache ZooKeeper's own
//! `zoo.cfg` keys where they mean the same thing.
//!
//! Every setting is one row of a table (`SETTINGS`): its flag, the
//! environment variable clap reads for the flag, the `zoo.cfg` keys that
//! mean the same, and the one parser and check all of them go through, so a
//! value is read and refused alike wherever it comes from. Checks between
//! settings (session-timeout bounds that fit the protocol's i32 and are
//! ordered) run once, after every source. A `zoo.cfg` key with no effect
//! here is named in a warning.
//!
//! Precedence: a flag or its environment variable wins over `--config`, which
//! wins over the defaults. Defaults are ZooKeeper's, except the listen address
//! (loopback: a coordination server should not face a network until someone
//! decides it should) and extended types (on: TTL nodes are part of the API
//! the demo services use).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use thiserror::Error;

/// A four-letter word: a text command sent instead of a handshake on the
/// client port (`fourlw` answers them). One list for the
/// whitelist setting, the client port and the admin listener, so a word
/// cannot be known to one and not the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FourLetterWord {
    Ruok,
    Srvr,
    Stat,
    Mntr,
    Conf,
    Cons,
    Envi,
    Wchs,
    Wchc,
    Wchp,
    Dump,
    Isro,
}

impl FourLetterWord {
    /// Every word the server knows, in the order they are listed to users.
    pub const ALL: [FourLetterWord; 12] = {
        use FourLetterWord::*;
        [Ruok, Srvr, Stat, Mntr, Conf, Cons, Envi, Wchs, Wchc, Wchp, Dump, Isro]
    };

    pub fn name(self) -> &'static str {
        use FourLetterWord::*;
        match self {
            Ruok => "ruok",
            Srvr => "srvr",
            Stat => "stat",
            Mntr => "mntr",
            Conf => "conf",
            Cons => "cons",
            Envi => "envi",
            Wchs => "wchs",
            Wchc => "wchc",
            Wchp => "wchp",
            Dump => "dump",
            Isro => "isro",
        }
    }

    /// The word spelled exactly so (lower case, as ZooKeeper requires).
    pub fn from_name(name: &str) -> Option<FourLetterWord> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }

    /// Every word's name, comma-separated, for messages that list them.
    pub fn names() -> String {
        Self::ALL.map(Self::name).join(",")
    }
}

impl std::fmt::Display for FourLetterWord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The settings the server runs with, fully resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: Option<PathBuf>,
    pub tick_time: Duration,
    /// Lower bound of negotiated session timeouts (default 2 ticks).
    pub min_session_timeout: Duration,
    /// Upper bound of negotiated session timeouts (default 20 ticks).
    pub max_session_timeout: Duration,
    /// Connections allowed from one IP address; 0 means no limit.
    pub max_client_connections: usize,
    /// Requests outstanding across the server past which connections that
    /// already have one outstanding are not read (`globalOutstandingLimit`,
    /// ZooKeeper's admission control); 0 means no limit.
    pub global_outstanding_limit: usize,
    /// Bytes of replies queued across the server, not yet taken by their
    /// clients, past which a connection that holds some is not read, and
    /// the connections that have stopped reading are closed, those holding
    /// the most first; 0 means no limit. Admission control bounds the work
    /// in progress, this bounds what the answers to finished work cost
    /// while a client leaves them unread (ZooKeeper has no such bound).
    pub global_queued_bytes_limit: usize,
    /// Admin/observability listener (gRPC and HTTP); none by default.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token for the admin endpoints that read data or change state;
    /// without one they are off.
    pub admin_token: Option<crate::token::Token>,
    /// Four-letter words answered on the client port.
    pub four_letter_words: BTreeSet<FourLetterWord>,
    /// `jute.maxbuffer`: the largest frame accepted, and the largest znode.
    pub max_buffer: usize,
    /// `zookeeper.DigestAuthenticationProvider.superDigest`: `super:<digest>`.
    pub super_digest: Option<String>,
    /// `zookeeper.extendedTypesEnabled`: TTL nodes.
    pub extended_types: bool,
    /// How often empty containers and expired TTL nodes are reaped
    /// (`znode.container.checkIntervalMs`).
    pub container_check_interval: Duration,
    /// Transactions logged before a snapshot (`snapCount`); a snapshot
    /// also waits until the log since the last one is as large as the
    /// snapshot would be (see `Storage::snapshot_due`).
    pub snap_count: u64,
    /// Snapshots kept (`autopurge.snapRetainCount`, at least 3), and the
    /// log back to the oldest of them, so recovery can fall back to an
    /// older snapshot when the newest cannot be read.
    pub snap_retain_count: usize,
}

impl Default for Config {
    fn default() -> Self {
        let tick = Duration::from_millis(2000);
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 2181)),
            data_dir: None,
            tick_time: tick,
            min_session_timeout: tick * 2,
            max_session_timeout: tick * 20,
            max_client_connections: 60,
            global_outstanding_limit: 1000,
            // What one connection may queue (see `clients`): one client that
            // stops reading may use it all, two cannot, and it is a few
            // times what the whole server holds for 10,000 idle sessions.
            global_queued_bytes_limit: 64 * 1024 * 1024,
            admin_listen: None,
            admin_token: None,
            four_letter_words: [FourLetterWord::Srvr].into_iter().collect(),
            max_buffer: zk_wire::consts::DEFAULT_MAX_BUFFER,
            super_digest: None,
            extended_types: true,
            container_check_interval: Duration::from_secs(60),
            snap_count: 100_000,
            snap_retain_count: 3,
        }
    }
}

impl Config {
    /// A configuration for tests and embedding: port 0 on loopback, short
    /// ticks, every four-letter word on, fast container reaping.
    pub fn for_tests() -> Self {
        let tick = Duration::from_millis(200);
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tick_time: tick,
            min_session_timeout: tick * 2,
            max_session_timeout: Duration::from_secs(60),
            max_client_connections: 0,
            four_letter_words: FourLetterWord::ALL.into_iter().collect(),
            container_check_interval: Duration::from_millis(500),
            ..Config::default()
        }
    }
}

/// A setting that could not be used, named so the operator can fix it.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {key} = {value:?}: {reason}")]
    Bad { origin: String, key: String, value: String, reason: String },
}

/// Command-line flags; each also reads an environment variable.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "coordinator",
    version,
    about = "A single-node coordination server that speaks the Apache ZooKeeper client protocol."
)]
pub struct Args {
    /// Address for ZooKeeper clients [default: 127.0.0.1:2181].
    #[arg(long, env = "COORDINATOR_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// Directory for the write-ahead log and snapshots.
    #[arg(long, env = "COORDINATOR_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The basic time unit in milliseconds [default: 2000].
    #[arg(long, env = "COORDINATOR_TICK_TIME", value_name = "MS")]
    pub tick_time: Option<u64>,
    /// Smallest session timeout a client may negotiate, ms [default: 2 ticks].
    #[arg(long, env = "COORDINATOR_MIN_SESSION_TIMEOUT", value_name = "MS")]
    pub min_session_timeout: Option<u64>,
    /// Largest session timeout a client may negotiate, ms [default: 20 ticks].
    #[arg(long, env = "COORDINATOR_MAX_SESSION_TIMEOUT", value_name = "MS")]
    pub max_session_timeout: Option<u64>,
    /// Connections allowed per client IP; 0 for no limit [default: 60].
    #[arg(long, env = "COORDINATOR_MAX_CLIENT_CONNECTIONS", value_name = "N")]
    pub max_client_connections: Option<usize>,
    /// Requests outstanding server-wide past which busy connections are
    /// not read until they drain; 0 for no limit [default: 1000].
    #[arg(long, env = "COORDINATOR_GLOBAL_OUTSTANDING_LIMIT", value_name = "N")]
    pub global_outstanding_limit: Option<usize>,
    /// Bytes of unread replies server-wide past which connections holding
    /// some are not read, and those that stopped reading are closed,
    /// largest first; 0 for no limit [default: 67108864, 64 MiB].
    #[arg(long, env = "COORDINATOR_GLOBAL_QUEUED_BYTES_LIMIT", value_name = "BYTES")]
    pub global_queued_bytes_limit: Option<usize>,
    /// Address for the admin API: gRPC, and HTTP /health, /metrics and
    /// `/commands/<word>` (off unless given; the dashboard is its own binary).
    #[arg(long, env = "COORDINATOR_ADMIN_LISTEN", value_name = "HOST:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// File holding the admin API's bearer token (else the
    /// COORDINATOR_ADMIN_TOKEN variable; never a flag value, which `ps` shows).
    #[arg(long, env = "COORDINATOR_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Four-letter words to answer, comma-separated, or `*` [default: srvr].
    #[arg(long = "4lw-whitelist", env = "COORDINATOR_4LW_WHITELIST", value_name = "LIST")]
    pub four_letter_words: Option<String>,
    /// Largest frame and znode in bytes (jute.maxbuffer) [default: 1048575].
    #[arg(long, env = "COORDINATOR_MAX_BUFFER", value_name = "BYTES")]
    pub max_buffer: Option<usize>,
    /// Super user digest, `super:<base64 sha1>` as ZooKeeper's superDigest.
    #[arg(long, env = "COORDINATOR_SUPER_DIGEST", value_name = "DIGEST")]
    pub super_digest: Option<String>,
    /// Disable TTL nodes (zookeeper.extendedTypesEnabled=false).
    #[arg(long, env = "COORDINATOR_NO_EXTENDED_TYPES")]
    pub no_extended_types: bool,
    /// Interval between container/TTL reaping passes, ms [default: 60000].
    #[arg(long, env = "COORDINATOR_CONTAINER_CHECK_INTERVAL", value_name = "MS")]
    pub container_check_interval: Option<u64>,
    /// Transactions logged before a snapshot is taken, which also waits for
    /// the log since the last one to reach the snapshot's size [default: 100000].
    #[arg(long, env = "COORDINATOR_SNAP_COUNT", value_name = "N")]
    pub snap_count: Option<u64>,
    /// Snapshots kept on disk, with the log each needs; at least 3
    /// (autopurge.snapRetainCount) [default: 3].
    #[arg(long, env = "COORDINATOR_SNAP_RETAIN_COUNT", value_name = "N")]
    pub snap_retain_count: Option<usize>,
    /// Read Apache ZooKeeper `zoo.cfg` keys from this file.
    #[arg(long, env = "COORDINATOR_CONFIG", value_name = "zoo.cfg")]
    pub config: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "COORDINATOR_LOG_JSON")]
    pub log_json: bool,
}

impl Args {
    /// Resolves flags over the config file over the defaults, and logs a
    /// warning for each config-file key that has no effect.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let (cfg, warnings) = self.resolve_with_warnings()?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        Ok(cfg)
    }

    /// [`resolve`](Self::resolve), returning the warnings instead of
    /// logging them.
    pub fn resolve_with_warnings(&self) -> Result<(Config, Vec<String>), ConfigError> {
        let mut r = Resolving { cfg: Config::default(), min_set: false, max_set: false, port: None, address: None };
        let mut warnings = Vec::new();
        if let Some(path) = &self.config {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            apply_zoo_cfg(&mut r, &text, path, &mut warnings)?;
        }
        if r.port.is_some() || r.address.is_some() {
            let ip = r.address.unwrap_or(r.cfg.listen.ip());
            r.cfg.listen = SocketAddr::new(ip, r.port.unwrap_or(r.cfg.listen.port()));
        }
        // Flags (and their environment variables, which clap has read into
        // the same fields) go through the same table, after the file.
        for setting in SETTINGS {
            let (Some(flag), Some(value)) = (setting.flag, (setting.from_args)(self)) else { continue };
            (setting.apply)(&mut r, &value).map_err(|reason| ConfigError::Bad {
                origin: "flag".into(),
                key: format!("--{flag}"),
                value,
                reason,
            })?;
        }
        // The token itself may come from the environment, never from a flag
        // value (`ps` shows those); a file named by the flag wins.
        if r.cfg.admin_token.is_none() {
            if let Some(t) = std::env::var("COORDINATOR_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()) {
                r.cfg.admin_token = Some(crate::token::Token::new(&t).map_err(|reason| ConfigError::Bad {
                    origin: "environment".into(),
                    key: "COORDINATOR_ADMIN_TOKEN".into(),
                    value: "<redacted>".into(),
                    reason,
                })?);
            }
        }
        r.finish()?;
        Ok((r.cfg, warnings))
    }
}

/// A configuration being built from its sources.
struct Resolving {
    cfg: Config,
    /// Which session bounds were set explicitly: the others follow the
    /// tick time, as in ZooKeeper.
    min_set: bool,
    max_set: bool,
    /// zoo.cfg gives the listen address in two keys.
    port: Option<u16>,
    address: Option<std::net::IpAddr>,
}

impl Resolving {
    /// The checks that involve more than one setting, made once every
    /// source has been read.
    fn finish(&mut self) -> Result<(), ConfigError> {
        let cfg = &mut self.cfg;
        let bad = |key: &str, value: Duration, reason: &str| ConfigError::Bad {
            origin: "settings".into(),
            key: key.into(),
            value: format!("{}", value.as_millis()),
            reason: reason.into(),
        };
        if !self.min_set {
            cfg.min_session_timeout = cfg.tick_time * 2;
        }
        if !self.max_set {
            cfg.max_session_timeout = cfg.tick_time * 20;
        }
        // The handshake carries timeouts as an i32 of ms.
        let limit = Duration::from_millis(i32::MAX as u64);
        for (set, key, value) in [
            (self.min_set, "--min-session-timeout (minSessionTimeout)", cfg.min_session_timeout),
            (self.max_set, "--max-session-timeout (maxSessionTimeout)", cfg.max_session_timeout),
        ] {
            if value > limit {
                let (key, reason) = if set {
                    (key, "is above 2147483647 ms, the most a session timeout can be")
                } else {
                    ("--tick-time (tickTime)", "makes the default session timeouts (2 and 20 ticks) pass 2147483647 ms")
                };
                return Err(bad(key, value, reason));
            }
        }
        if cfg.min_session_timeout > cfg.max_session_timeout {
            return Err(bad(
                "--min-session-timeout (minSessionTimeout)",
                cfg.min_session_timeout,
                &format!("is above the max session timeout ({} ms)", cfg.max_session_timeout.as_millis()),
            ));
        }
        Ok(())
    }
}

/// One setting: its flag (whose environment variable is `COORDINATOR_`
/// and the flag in upper snake case, declared on [`Args`]), the `zoo.cfg`
/// keys that mean the same, and the one parser and check both go through.
/// A new setting is a field on [`Config`] and [`Args`] and a row here.
struct Setting {
    flag: Option<&'static str>,
    zoo_cfg: &'static [&'static str],
    from_args: fn(&Args) -> Option<String>,
    apply: fn(&mut Resolving, &str) -> Result<(), String>,
}

fn num<T: std::str::FromStr>(v: &str, what: &str) -> Result<T, String> {
    v.trim().parse().map_err(|_| format!("not {what}"))
}

fn positive_ms(v: &str) -> Result<Duration, String> {
    match num::<u64>(v, "a number of ms")? {
        0 => Err("must be positive".into()),
        ms => Ok(Duration::from_millis(ms)),
    }
}

fn text<T: ToString>(v: &Option<T>) -> Option<String> {
    v.as_ref().map(T::to_string)
}

/// Every setting, flag and `zoo.cfg` key alike.
const SETTINGS: &[Setting] = &[
    Setting {
        flag: Some("listen"),
        zoo_cfg: &[],
        from_args: |a| text(&a.listen),
        apply: |r, v| {
            r.cfg.listen = num(v, "HOST:PORT")?;
            Ok(())
        },
    },
    Setting {
        flag: None,
        zoo_cfg: &["clientPort"],
        from_args: |_| None,
        apply: |r, v| {
            r.port = Some(num(v, "a port number")?);
            Ok(())
        },
    },
    Setting {
        flag: None,
        zoo_cfg: &["clientPortAddress"],
        from_args: |_| None,
        apply: |r, v| {
            r.address = Some(num(v, "an IP address")?);
            Ok(())
        },
    },
    Setting {
        flag: Some("data-dir"),
        zoo_cfg: &["dataDir"],
        from_args: |a| a.data_dir.as_ref().map(|p| p.display().to_string()),
        apply: |r, v| {
            if v.is_empty() {
                return Err("must not be empty".into());
            }
            r.cfg.data_dir = Some(PathBuf::from(v));
            Ok(())
        },
    },
    Setting {
        flag: Some("tick-time"),
        zoo_cfg: &["tickTime"],
        from_args: |a| text(&a.tick_time),
        apply: |r, v| {
            r.cfg.tick_time = positive_ms(v)?;
            Ok(())
        },
    },
    Setting {
        flag: Some("min-session-timeout"),
        zoo_cfg: &["minSessionTimeout"],
        from_args: |a| text(&a.min_session_timeout),
        apply: |r, v| {
            r.cfg.min_session_timeout = Duration::from_millis(num(v, "a number of ms")?);
            r.min_set = true;
            Ok(())
        },
    },
    Setting {
        flag: Some("max-session-timeout"),
        zoo_cfg: &["maxSessionTimeout"],
        from_args: |a| text(&a.max_session_timeout),
        apply: |r, v| {
            r.cfg.max_session_timeout = Duration::from_millis(num(v, "a number of ms")?);
            r.max_set = true;
            Ok(())
        },
    },
    Setting {
        flag: Some("max-client-connections"),
        zoo_cfg: &["maxClientCnxns"],
        from_args: |a| text(&a.max_client_connections),
        apply: |r, v| {
            r.cfg.max_client_connections = num(v, "a number")?;
            Ok(())
        },
    },
    Setting {
        flag: Some("global-outstanding-limit"),
        zoo_cfg: &["globalOutstandingLimit"],
        from_args: |a| text(&a.global_outstanding_limit),
        apply: |r, v| {
            r.cfg.global_outstanding_limit = num(v, "a number")?;
            Ok(())
        },
    },
    Setting {
        flag: Some("global-queued-bytes-limit"),
        // The coordinator's own key: ZooKeeper has no such bound.
        zoo_cfg: &["globalQueuedBytesLimit"],
        from_args: |a| text(&a.global_queued_bytes_limit),
        apply: |r, v| {
            r.cfg.global_queued_bytes_limit = num(v, "a number of bytes")?;
            Ok(())
        },
    },
    Setting {
        flag: Some("admin-listen"),
        zoo_cfg: &[],
        from_args: |a| text(&a.admin_listen),
        apply: |r, v| {
            r.cfg.admin_listen = Some(num(v, "HOST:PORT")?);
            Ok(())
        },
    },
    Setting {
        flag: Some("admin-token-file"),
        zoo_cfg: &[],
        from_args: |a| a.admin_token_file.as_ref().map(|p| p.display().to_string()),
        // The error names the file, never its contents.
        apply: |r, v| {
            // Used anyway (docker mounts secrets 0444 in a one-process
            // container), but on a shared host anyone could read it. Only
            // our own file can we make private: another account's (a
            // compose secret mounted with the host's mode) is its owner's
            // to change, and `chmod 600` would lock us out of it.
            use std::os::unix::fs::MetadataExt;
            let (mode, owner) = std::fs::metadata(v).map(|m| (m.mode() & 0o777, m.uid())).unwrap_or((0, 0));
            let me = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
            if mode & 0o077 != 0 && owner == me {
                tracing::warn!("the admin token file {v} is readable by other users (mode {mode:o}): `chmod 600` it");
            } else if mode & 0o077 != 0 {
                tracing::info!(
                    "the admin token file {v} belongs to user {owner} and is readable by others (mode {mode:o})"
                );
            }
            let token = std::fs::read_to_string(v).map_err(|e| format!("cannot read it: {e}"))?;
            r.cfg.admin_token = Some(crate::token::Token::new(&token)?);
            Ok(())
        },
    },
    Setting {
        flag: Some("4lw-whitelist"),
        zoo_cfg: &["4lw.commands.whitelist"],
        from_args: |a| a.four_letter_words.clone(),
        apply: |r, v| {
            r.cfg.four_letter_words = parse_whitelist(v)?;
            Ok(())
        },
    },
    Setting {
        flag: Some("max-buffer"),
        zoo_cfg: &["jute.maxbuffer"],
        from_args: |a| text(&a.max_buffer),
        apply: |r, v| {
            let n: usize = num(v, "a number of bytes")?;
            if n < 1024 {
                return Err("must be at least 1024".into());
            }
            r.cfg.max_buffer = n;
            Ok(())
        },
    },
    Setting {
        flag: Some("super-digest"),
        zoo_cfg: &["zookeeper.DigestAuthenticationProvider.superDigest"],
        from_args: |a| a.super_digest.clone(),
        apply: |r, v| {
            check_super_digest(v)?;
            r.cfg.super_digest = Some(v.to_string());
            Ok(())
        },
    },
    Setting {
        flag: Some("no-extended-types"),
        zoo_cfg: &["zookeeper.extendedTypesEnabled", "extendedTypesEnabled"],
        from_args: |a| a.no_extended_types.then(|| "false".to_string()),
        apply: |r, v| {
            r.cfg.extended_types = match v.to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => return Err("expected true or false".into()),
            };
            Ok(())
        },
    },
    Setting {
        flag: Some("container-check-interval"),
        zoo_cfg: &["znode.container.checkIntervalMs"],
        from_args: |a| text(&a.container_check_interval),
        apply: |r, v| {
            r.cfg.container_check_interval = positive_ms(v)?;
            Ok(())
        },
    },
    Setting {
        flag: Some("snap-count"),
        zoo_cfg: &["snapCount"],
        from_args: |a| text(&a.snap_count),
        apply: |r, v| {
            r.cfg.snap_count = match num(v, "a number")? {
                0 => return Err("must be positive".into()),
                n => n,
            };
            Ok(())
        },
    },
    Setting {
        flag: Some("snap-retain-count"),
        zoo_cfg: &["autopurge.snapRetainCount"],
        from_args: |a| text(&a.snap_retain_count),
        apply: |r, v| {
            r.cfg.snap_retain_count = match num(v, "a number")? {
                n if n < 3 => return Err("must be at least 3, as in ZooKeeper".into()),
                n => n,
            };
            Ok(())
        },
    },
];

/// `zoo.cfg` keys the server reads and deliberately does not act on, and why.
fn ignored_key(key: &str) -> Option<&'static str> {
    Some(match key {
        "initLimit" | "syncLimit" | "standaloneEnabled" | "reconfigEnabled" | "electionAlg" | "peerType" => {
            "an ensemble setting; this is a single server"
        }
        k if k.starts_with("server.") || k.starts_with("group.") || k.starts_with("weight.") => {
            "an ensemble setting; this is a single server"
        }
        "dataLogDir" => "not supported: the log is kept in dataDir, beside the snapshots",
        "autopurge.purgeInterval" => {
            "not needed: old snapshots and logs are purged after every snapshot (autopurge.snapRetainCount are kept)"
        }
        "forceSync" => "not supported: the log is always synced before a write is acknowledged",
        "preAllocSize" | "globalOutstandingLimit" => "not supported",
        "admin.enableServer" | "admin.serverPort" => "not supported: the admin API is --admin-listen",
        k if k.starts_with("metricsProvider.") => "not supported: metrics are on the admin API",
        _ => return None,
    })
}

fn parse_whitelist(v: &str) -> Result<BTreeSet<FourLetterWord>, String> {
    let mut set = BTreeSet::new();
    for word in v.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if word == "*" {
            set.extend(FourLetterWord::ALL);
        } else if let Some(w) = FourLetterWord::from_name(word) {
            set.insert(w);
        } else {
            return Err(format!("unknown four-letter word {word:?}; known: {}", FourLetterWord::names()));
        }
    }
    Ok(set)
}

fn check_super_digest(v: &str) -> Result<(), String> {
    match v.split_once(':') {
        Some((user, digest)) if !user.is_empty() && !digest.is_empty() => Ok(()),
        _ => Err("expected <user>:<base64 sha1 digest>".into()),
    }
}

/// Applies a `zoo.cfg` file through the settings table. A real ZooKeeper
/// config file works unchanged; every key that has no effect here (an
/// ensemble setting, an unsupported one, or one this server does not know,
/// which ZooKeeper would take as a system property) is named in a warning.
fn apply_zoo_cfg(r: &mut Resolving, text: &str, path: &Path, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let origin = format!("{}:{}", path.display(), lineno + 1);
        let Some((key, value)) = line.split_once('=') else {
            return Err(ConfigError::Bad {
                origin,
                key: line.into(),
                value: String::new(),
                reason: "expected key=value".into(),
            });
        };
        let (key, value) = (key.trim(), value.trim());
        if let Some(setting) = SETTINGS.iter().find(|s| s.zoo_cfg.contains(&key)) {
            (setting.apply)(r, value).map_err(|reason| ConfigError::Bad {
                origin,
                key: key.into(),
                value: value.into(),
                reason,
            })?;
        } else if let Some(why) = ignored_key(key) {
            warnings.push(format!("{origin}: ignoring zoo.cfg key {key}: {why}"));
        } else {
            warnings.push(format!("{origin}: ignoring unknown zoo.cfg key {key}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoo_cfg_keys_apply_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("coord-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("zoo.cfg");
        std::fs::write(
            &file,
            "# comment\ntickTime=500\nclientPort=2999\nclientPortAddress=127.0.0.2\n\
             initLimit=5\nserver.1=a:1:2\n4lw.commands.whitelist=ruok, mntr\nmaxClientCnxns=7\n",
        )
        .unwrap();
        let args = Args { config: Some(file.clone()), max_client_connections: Some(9), ..Args::default() };
        let cfg = args.resolve().unwrap();
        assert_eq!(cfg.tick_time, Duration::from_millis(500));
        assert_eq!(cfg.listen, "127.0.0.2:2999".parse().unwrap());
        assert_eq!(cfg.min_session_timeout, Duration::from_millis(1000));
        assert_eq!(cfg.max_session_timeout, Duration::from_millis(10000));
        assert_eq!(cfg.max_client_connections, 9);
        assert!(cfg.four_letter_words.contains(&FourLetterWord::Mntr));
        assert!(!cfg.four_letter_words.contains(&FourLetterWord::Srvr));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn whitelist_names_each_word_once() {
        for w in FourLetterWord::ALL {
            assert_eq!(FourLetterWord::from_name(w.name()), Some(w));
            assert_eq!(w.name().len(), 4);
        }
        assert_eq!(FourLetterWord::from_name("MNTR"), None, "ZooKeeper's words are lower case");
        assert_eq!(parse_whitelist("*").expect("all"), FourLetterWord::ALL.into_iter().collect());
        assert_eq!(parse_whitelist(" mntr ,, ruok").expect("two").len(), 2);
        let err = parse_whitelist("ruok,kill").expect_err("unknown word");
        assert!(err.contains("\"kill\"") && err.contains("ruok,srvr,stat"), "{err}");
    }

    #[test]
    fn bad_settings_name_the_key() {
        let args = Args { four_letter_words: Some("ruok,oops".into()), ..Args::default() };
        let err = args.resolve().unwrap_err().to_string();
        assert!(err.contains("--4lw-whitelist") && err.contains("oops"), "{err}");
        let args = Args { min_session_timeout: Some(90_000), ..Args::default() };
        assert!(args.resolve().unwrap_err().to_string().contains("--min-session-timeout"));
    }

    fn zoo_cfg(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("coord-cfg-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("zoo.cfg");
        std::fs::write(&file, text).unwrap();
        file
    }

    /// Session-timeout bounds travel as an i32 of ms in the handshake: a
    /// bound above i32::MAX was accepted and then made every handshake
    /// panic. Refused at startup, naming the setting, from either source.
    #[test]
    fn session_timeout_bounds_fit_the_protocol_and_are_ordered() {
        let big = i32::MAX as u64 + 1;
        let args = Args { max_session_timeout: Some(big), ..Args::default() };
        let err = args.resolve().expect_err("max above i32::MAX").to_string();
        assert!(err.contains("--max-session-timeout"), "{err}");
        let args = Args { min_session_timeout: Some(big), max_session_timeout: Some(big), ..Args::default() };
        assert!(args.resolve().expect_err("min above i32::MAX").to_string().contains("--min-session-timeout"));
        let file = zoo_cfg("timeouts", "maxSessionTimeout=3000000000\n");
        let err = Args { config: Some(file), ..Args::default() }.resolve().expect_err("zoo.cfg max").to_string();
        assert!(err.contains("maxSessionTimeout"), "{err}");
        let file = zoo_cfg("order", "minSessionTimeout=9000\nmaxSessionTimeout=5000\n");
        let err = Args { config: Some(file), ..Args::default() }.resolve().expect_err("min > max").to_string();
        assert!(err.contains("minSessionTimeout"), "{err}");
        // Derived from a huge tick: 20 ticks no longer fit.
        let args = Args { tick_time: Some(200_000_000), ..Args::default() };
        assert!(args.resolve().expect_err("20 ticks above i32::MAX").to_string().contains("--tick-time"));
    }

    /// zoo.cfg and flags share one table: the same keys are read, and the
    /// same checks made, whichever way a setting arrives.
    #[test]
    fn zoo_cfg_reads_every_setting_the_flags_have_with_the_same_checks() {
        let file = zoo_cfg(
            "table",
            "snapCount=7\nautopurge.snapRetainCount=5\nznode.container.checkIntervalMs=900\n\
             jute.maxbuffer=4096\nzookeeper.extendedTypesEnabled=false\n",
        );
        let cfg = Args { config: Some(file), ..Args::default() }.resolve().unwrap();
        assert_eq!(cfg.snap_count, 7);
        assert_eq!(cfg.snap_retain_count, 5);
        assert_eq!(cfg.container_check_interval, Duration::from_millis(900));
        assert_eq!(cfg.max_buffer, 4096);
        assert!(!cfg.extended_types);
        for (text, key) in [
            ("snapCount=0\n", "snapCount"),
            ("jute.maxbuffer=10\n", "jute.maxbuffer"),
            ("znode.container.checkIntervalMs=0\n", "znode.container.checkIntervalMs"),
            ("autopurge.snapRetainCount=2\n", "autopurge.snapRetainCount"),
            ("zookeeper.extendedTypesEnabled=maybe\n", "zookeeper.extendedTypesEnabled"),
            ("tickTime=0\n", "tickTime"),
        ] {
            let file = zoo_cfg("checks", text);
            let err = Args { config: Some(file), ..Args::default() }.resolve().expect_err(text).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let args = Args { snap_retain_count: Some(2), ..Args::default() };
        assert!(args.resolve().expect_err("retain 2").to_string().contains("--snap-retain-count"));
    }

    /// A key the server does not use is named in a warning, never
    /// silently dropped: an operator who sets dataLogDir or forceSync=no
    /// learns that it has no effect here.
    #[test]
    fn unknown_and_unsupported_keys_are_named_in_warnings() {
        let file = zoo_cfg(
            "warn",
            "dataDir=/tmp/x\ndataLogDir=/tmp/y\nautopurge.purgeInterval=1\ninitLimit=5\n\
             server.1=a:1:2\nforceSync=no\nnoSuchKey=1\n",
        );
        let (_, warnings) = Args { config: Some(file), ..Args::default() }.resolve_with_warnings().unwrap();
        for key in ["dataLogDir", "autopurge.purgeInterval", "initLimit", "server.1", "forceSync", "noSuchKey"] {
            assert!(warnings.iter().any(|w| w.contains(key)), "no warning names {key}: {warnings:?}");
        }
        assert!(!warnings.iter().any(|w| w.contains("dataDir=")), "{warnings:?}");
    }
}

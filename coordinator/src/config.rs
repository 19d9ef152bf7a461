//! Server settings: flags, environment variables, and Apache ZooKeeper's own
//! `zoo.cfg` keys where they mean the same thing.
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

/// Every four-letter word the server knows.
pub const FOUR_LETTER_WORDS: &[&str] =
    &["ruok", "srvr", "stat", "mntr", "conf", "cons", "envi", "wchs", "wchc", "wchp", "dump", "isro"];

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
    /// Admin/observability listener (gRPC and HTTP); none by default.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token for the admin endpoints that read data or change state;
    /// without one they are off.
    pub admin_token: Option<crate::admin::Token>,
    /// Four-letter words answered on the client port.
    pub four_letter_words: BTreeSet<String>,
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
            admin_listen: None,
            admin_token: None,
            four_letter_words: ["srvr".to_string()].into_iter().collect(),
            max_buffer: zk_wire::consts::DEFAULT_MAX_BUFFER,
            super_digest: None,
            extended_types: true,
            container_check_interval: Duration::from_secs(60),
            snap_count: 100_000,
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
            four_letter_words: FOUR_LETTER_WORDS.iter().map(|s| s.to_string()).collect(),
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
    /// Address for the admin API: gRPC, and HTTP /health, /metrics and
    /// /commands/<word> (off unless given; the dashboard is its own binary).
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
    /// Read Apache ZooKeeper `zoo.cfg` keys from this file.
    #[arg(long, env = "COORDINATOR_CONFIG", value_name = "zoo.cfg")]
    pub config: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "COORDINATOR_LOG_JSON")]
    pub log_json: bool,
}

impl Args {
    /// Resolves flags over the config file over the defaults.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        // Which of the session bounds were set explicitly: the others follow
        // the tick time, as in ZooKeeper.
        let mut min_set = false;
        let mut max_set = false;
        if let Some(path) = &self.config {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            apply_zoo_cfg(&mut cfg, &text, path, &mut min_set, &mut max_set)?;
        }
        let flag = |key: &str, value: String, reason: &str| ConfigError::Bad {
            origin: "flag".into(),
            key: key.into(),
            value,
            reason: reason.into(),
        };
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        if let Some(v) = &self.data_dir {
            cfg.data_dir = Some(v.clone());
        }
        if let Some(v) = self.tick_time {
            if v == 0 {
                return Err(flag("--tick-time", v.to_string(), "must be positive"));
            }
            cfg.tick_time = Duration::from_millis(v);
        }
        if let Some(v) = self.min_session_timeout {
            cfg.min_session_timeout = Duration::from_millis(v);
            min_set = true;
        }
        if let Some(v) = self.max_session_timeout {
            cfg.max_session_timeout = Duration::from_millis(v);
            max_set = true;
        }
        if !min_set {
            cfg.min_session_timeout = cfg.tick_time * 2;
        }
        if !max_set {
            cfg.max_session_timeout = cfg.tick_time * 20;
        }
        if cfg.min_session_timeout > cfg.max_session_timeout {
            return Err(flag(
                "--min-session-timeout",
                format!("{:?}", cfg.min_session_timeout),
                "is above --max-session-timeout",
            ));
        }
        if let Some(v) = self.max_client_connections {
            cfg.max_client_connections = v;
        }
        if let Some(v) = self.admin_listen {
            cfg.admin_listen = Some(v);
        }
        let token = match &self.admin_token_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                flag("--admin-token-file", path.display().to_string(), &format!("cannot read it: {e}"))
            })?),
            None => std::env::var("COORDINATOR_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()),
        };
        if let Some(t) = token {
            let t = crate::admin::Token::new(&t).map_err(|reason| flag("admin token", "<redacted>".into(), &reason))?;
            cfg.admin_token = Some(t);
        }
        if let Some(v) = &self.four_letter_words {
            cfg.four_letter_words = parse_whitelist(v).map_err(|reason| flag("--4lw-whitelist", v.clone(), &reason))?;
        }
        if let Some(v) = self.max_buffer {
            if v < 1024 {
                return Err(flag("--max-buffer", v.to_string(), "must be at least 1024"));
            }
            cfg.max_buffer = v;
        }
        if let Some(v) = &self.super_digest {
            check_super_digest(v).map_err(|reason| flag("--super-digest", v.clone(), &reason))?;
            cfg.super_digest = Some(v.clone());
        }
        if self.no_extended_types {
            cfg.extended_types = false;
        }
        if let Some(v) = self.container_check_interval {
            if v == 0 {
                return Err(flag("--container-check-interval", v.to_string(), "must be positive"));
            }
            cfg.container_check_interval = Duration::from_millis(v);
        }
        if let Some(v) = self.snap_count {
            if v == 0 {
                return Err(flag("--snap-count", v.to_string(), "must be positive"));
            }
            cfg.snap_count = v;
        }
        Ok(cfg)
    }
}

fn parse_whitelist(v: &str) -> Result<BTreeSet<String>, String> {
    let mut set = BTreeSet::new();
    for word in v.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if word == "*" {
            set.extend(FOUR_LETTER_WORDS.iter().map(|s| s.to_string()));
        } else if FOUR_LETTER_WORDS.contains(&word) {
            set.insert(word.to_string());
        } else {
            return Err(format!("unknown four-letter word {word:?}; known: {}", FOUR_LETTER_WORDS.join(",")));
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

/// Applies the `zoo.cfg` keys that mean something to a single-node server.
/// Keys that only matter to an ensemble (initLimit, server.N, ...) are
/// accepted and ignored, so a real ZooKeeper config file works unchanged;
/// anything unknown is ignored with a warning, as ZooKeeper treats unknown
/// keys as system properties.
fn apply_zoo_cfg(
    cfg: &mut Config,
    text: &str,
    path: &Path,
    min_set: &mut bool,
    max_set: &mut bool,
) -> Result<(), ConfigError> {
    let mut port: Option<u16> = None;
    let mut address: Option<std::net::IpAddr> = None;
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |key: &str, value: &str, reason: &str| ConfigError::Bad {
            origin: format!("{}:{}", path.display(), lineno + 1),
            key: key.into(),
            value: value.into(),
            reason: reason.into(),
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad(line, "", "expected key=value"));
        };
        let (key, value) = (key.trim(), value.trim());
        let num =
            |reason: &str| -> Result<u64, ConfigError> { value.parse::<u64>().map_err(|_| bad(key, value, reason)) };
        match key {
            "clientPort" => port = Some(value.parse().map_err(|_| bad(key, value, "not a port number"))?),
            "clientPortAddress" => address = Some(value.parse().map_err(|_| bad(key, value, "not an IP address"))?),
            "tickTime" => cfg.tick_time = Duration::from_millis(num("not a number of ms")?),
            "dataDir" => cfg.data_dir = Some(PathBuf::from(value)),
            "maxClientCnxns" => cfg.max_client_connections = num("not a number")? as usize,
            "minSessionTimeout" => {
                cfg.min_session_timeout = Duration::from_millis(num("not a number of ms")?);
                *min_set = true;
            }
            "maxSessionTimeout" => {
                cfg.max_session_timeout = Duration::from_millis(num("not a number of ms")?);
                *max_set = true;
            }
            "4lw.commands.whitelist" => {
                cfg.four_letter_words = parse_whitelist(value).map_err(|reason| bad(key, value, &reason))?
            }
            "jute.maxbuffer" => cfg.max_buffer = num("not a number of bytes")? as usize,
            "zookeeper.DigestAuthenticationProvider.superDigest" => {
                check_super_digest(value).map_err(|reason| bad(key, value, &reason))?;
                cfg.super_digest = Some(value.to_string());
            }
            "zookeeper.extendedTypesEnabled" | "extendedTypesEnabled" => {
                cfg.extended_types = value.eq_ignore_ascii_case("true")
            }
            "znode.container.checkIntervalMs" => {
                cfg.container_check_interval = Duration::from_millis(num("not a number of ms")?)
            }
            "initLimit"
            | "syncLimit"
            | "dataLogDir"
            | "autopurge.snapRetainCount"
            | "autopurge.purgeInterval"
            | "admin.enableServer"
            | "admin.serverPort"
            | "standaloneEnabled"
            | "reconfigEnabled"
            | "preAllocSize"
            | "snapCount"
            | "forceSync"
            | "globalOutstandingLimit"
            | "metricsProvider.className" => {}
            k if k.starts_with("server.") || k.starts_with("metricsProvider.") => {}
            _ => tracing::warn!(key, file = %path.display(), "ignoring unknown zoo.cfg key"),
        }
    }
    if port.is_some() || address.is_some() {
        let ip = address.unwrap_or(cfg.listen.ip());
        cfg.listen = SocketAddr::new(ip, port.unwrap_or(cfg.listen.port()));
    }
    if cfg.tick_time.is_zero() {
        return Err(ConfigError::Bad {
            origin: path.display().to_string(),
            key: "tickTime".into(),
            value: "0".into(),
            reason: "must be positive".into(),
        });
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
        assert!(cfg.four_letter_words.contains("mntr") && !cfg.four_letter_words.contains("srvr"));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bad_settings_name_the_key() {
        let args = Args { four_letter_words: Some("ruok,oops".into()), ..Args::default() };
        let err = args.resolve().unwrap_err().to_string();
        assert!(err.contains("--4lw-whitelist") && err.contains("oops"), "{err}");
        let args = Args { min_session_timeout: Some(90_000), ..Args::default() };
        assert!(args.resolve().unwrap_err().to_string().contains("--min-session-timeout"));
    }
}

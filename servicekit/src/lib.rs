//! What every demo service shares, so each service's own code is only its
//! scenario.
//!
//! # Layout
//! - [`telemetry`]: logs to stderr (text or JSON), and traces: OTLP export
//!   when configured, W3C trace context carried across services.
//! - [`CommonArgs`]: the flags every service takes (ZooKeeper, RabbitMQ,
//!   instance id, root prefix), with env vars and clear startup errors.
//! - [`live_config`]: runtime settings from `/config/<service>`, applied
//!   live.
//! - [`layout`]: every znode path of the scenarios, named once, what each
//!   node is ([`layout::Kind`]) and who reads and writes it.
//! - [`auth`]: the roles; [`auth::credentials`], digest identities from a
//!   credentials file; [`auth::policy`], the ACL of every kind of node
//!   (least privilege per role); [`auth::init`](mod@auth::init), `zkctl
//!   init`'s layout of the tree with those ACLs.
//! - [`rabbit`]: RabbitMQ connection with exponential backoff; refusals
//!   (wrong password, missing permission or queue) told apart and final.
//! - [`broker`]: each service's RabbitMQ user and permissions, and the
//!   broker definitions that provision them.
//! - [`status`]: what an instance says about itself in its registration
//!   node (the config it applied, writes a fence refused).
//! - [`metrics`]: Prometheus metrics and `/health` on the service's own
//!   port (`--metrics-listen`), and the metrics every service has.
//! - [`durable`]: directories and names made durable (the fsyncs of a
//!   parent directory that a file's own fsync does not cover).
//! - [`failpoint`]: crashes on purpose at named places, for tests and drills.
//! - [`fault`]: permanent vs transient I/O errors, backoff, throttled alarms.
//! - [`shutdown_token`]: SIGTERM/SIGINT as a `CancellationToken`.

pub mod auth;
pub mod broker;
pub mod durable;
pub mod failpoint;
pub mod fault;
pub mod layout;
pub mod metrics;
pub mod rabbit;
pub mod status;
pub mod telemetry;

use std::time::Duration;

use anyhow::Context;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zk_recipes::session::Client;

/// Flags of the services that use the task queue (system-a, system-b): they
/// must agree on the broker and the queue; each brings its own user.
#[derive(clap::Args, Clone)]
pub struct QueueArgs {
    /// RabbitMQ URL, without user or password: those come from
    /// `--amqp-credentials-file`. A URL that carries them is refused. For a
    /// cluster, a comma-separated list of its nodes' URLs: the service
    /// connects to the first that answers and moves on to the next when
    /// its node fails (as ZK_CONNECT lists an ensemble's servers).
    #[arg(long, env = "AMQP_URL", default_value = "amqp://127.0.0.1:5672/%2f")]
    pub amqp: String,
    /// File with this service's broker user, one line `auth = user:password`
    /// (written by `zkctl gen-broker-credentials`; docs/security.md,
    /// "Broker identities"). Required: no service logs in as guest.
    #[arg(long, env = "AMQP_CREDENTIALS_FILE", value_name = "PATH")]
    pub amqp_credentials_file: Option<std::path::PathBuf>,
    /// Task queue (provisioned durable, with `<queue>.in` to publish
    /// through and `<queue>.dlq` for poison messages).
    #[arg(long, env = "TASK_QUEUE", default_value = "tasks")]
    pub queue: String,
}

impl QueueArgs {
    /// The broker and this service's user on it, or a startup error that
    /// names the setting to fix.
    ///
    /// A URL with a password in it is refused, not just warned about: a
    /// command line is readable by every local user (`ps`,
    /// `/proc/<pid>/cmdline`), an environment variable is copied into every
    /// child and shown by `docker inspect`, and a URL ends up in error
    /// messages. A warning would leave the password there; the fix (move
    /// it to the file) takes a minute, so the service insists on it.
    pub fn broker(&self) -> anyhow::Result<rabbit::Broker> {
        let Some(path) = &self.amqp_credentials_file else {
            anyhow::bail!(
                "no RabbitMQ credentials: set --amqp-credentials-file / AMQP_CREDENTIALS_FILE to this service's \
                 broker credentials file (`auth = user:password`, written by `zkctl gen-broker-credentials`); \
                 no service logs in as guest"
            );
        };
        auth::warn_if_shared(path);
        let credentials =
            auth::ZkAuth::credentials_from_file(path).context("--amqp-credentials-file / AMQP_CREDENTIALS_FILE")?;
        rabbit::Broker::new(&self.amqp, &credentials, path).map_err(|e| anyhow::anyhow!("--amqp / AMQP_URL: {e}"))
    }
}

impl std::fmt::Debug for QueueArgs {
    /// The URL with any userinfo cut out: a refused URL still must not
    /// reach a log through a `{:?}` of the arguments.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueArgs")
            .field("amqp", &rabbit::redact_url(&self.amqp))
            .field("amqp_credentials_file", &self.amqp_credentials_file)
            .field("queue", &self.queue)
            .finish()
    }
}

/// Flags every service takes. Flatten into the service's own `Args`.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// ZooKeeper connect string: the coordinator or an ensemble.
    #[arg(long, env = "ZK_CONNECT", default_value = "127.0.0.1:2181")]
    pub zk: String,
    /// Session timeout asked of the server (it may negotiate it).
    #[arg(long, env = "ZK_SESSION_TIMEOUT_MS", default_value_t = 6000)]
    pub zk_session_timeout_ms: u64,
    /// Prefix for every znode this service uses, so several systems (or
    /// test runs) can share one server. Empty means `/`.
    #[arg(long, env = "ZK_ROOT", default_value = "")]
    pub root: String,
    /// This instance's name in the registry and in logs.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "LOG_JSON")]
    pub log_json: bool,
    /// Serve Prometheus metrics (`GET /metrics`) and a health check (`GET
    /// /health`: 200 while the ZooKeeper session is live) on this address.
    /// Off when absent.
    #[arg(long, env = "METRICS_LISTEN", value_name = "HOST:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub auth: auth::AuthArgs,
}

/// The process's identity, loaded once: a process is one identity.
static ZK_AUTH: std::sync::OnceLock<auth::ZkAuth> = std::sync::OnceLock::new();

impl CommonArgs {
    /// The system's tree under `--root`.
    pub fn layout(&self) -> layout::Layout {
        layout::Layout::new(&self.root)
    }

    /// The instance id: the flag, else `<host>-<pid>`.
    pub fn instance_id(&self) -> String {
        self.instance.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
            format!("{}-{}", host.trim(), std::process::id())
        })
    }

    /// Connects to ZooKeeper with this process's identity (re-added after
    /// every reconnect), or fails naming the setting to fix. With an
    /// identity, the tree must have been laid out by `zkctl init`.
    pub async fn connect_zk(&self) -> anyhow::Result<Client> {
        let zk_auth = match ZK_AUTH.get() {
            Some(a) => a.clone(),
            None => {
                let loaded = self.auth.load()?;
                ZK_AUTH.get_or_init(|| loaded).clone()
            }
        };
        match &zk_auth.credentials {
            Some(c) => tracing::info!(identity = c.user(), "authenticating to ZooKeeper (digest)"),
            None => tracing::warn!(
                "no ZooKeeper credentials (--zk-credentials-file / ZK_CREDENTIALS_FILE): connecting anonymously; \
                 every znode this service creates is open to anyone"
            ),
        }
        let timeout = Duration::from_millis(self.zk_session_timeout_ms);
        let client = Client::connect_authenticated(&self.zk, timeout, Duration::from_secs(15), zk_auth.auth_packets())
            .await
            .context("--zk / ZK_CONNECT")?;
        if zk_auth.credentials.is_some() {
            let services = self.layout().services();
            if client.zk.exists(&services, false).await.map_err(|e| anyhow::anyhow!("{services}: {e:?}"))?.is_none() {
                anyhow::bail!(
                    "{services} does not exist: lay out the tree first with `zkctl init` as the operator \
                     (the services may not create the shared directories themselves)"
                );
            }
        }
        Ok(client)
    }

    /// Registers `instance` of `service` under `/services/<service>` with
    /// its live `status`, as that service's own node (readable by all), and
    /// keeps it registered, and current, across new sessions.
    pub async fn register(
        &self,
        client: &Client,
        service: &str,
        instance: &str,
        status: &status::Status,
    ) -> anyhow::Result<zk_recipes::registry::Registration> {
        let dir = self.layout().service(service);
        let acl = self.policy().service_member(service);
        zk_recipes::registry::register_live(client, &dir, instance, status.subscribe(), &acl)
            .await
            .with_context(|| format!("registering under {dir}"))
    }

    /// The ACLs this service creates its nodes with: least privilege with
    /// an identity, open without one. Valid after [`CommonArgs::connect_zk`].
    pub fn policy(&self) -> auth::Policy {
        ZK_AUTH.get().map(auth::ZkAuth::policy).unwrap_or_else(auth::Policy::open)
    }
}

/// The failpoint that makes [`live_config`] stop following after the first
/// version it applies.
pub const CONFIG_WATCH_ONCE: &str = "config/watch-once";

/// Follows `/config/<service>` (JSON) and keeps the latest valid settings in
/// a `watch`. A missing node means defaults; invalid JSON is logged and the
/// last good settings stay, so a typo cannot take a running service down.
/// Each applied change prints `config applied <json>` on stdout, and every
/// valid write read is reported in `status` (`config_version`, its mzxid),
/// so anyone can see which write each instance runs; `metrics` gets the
/// same version (`config_version`).
///
/// The failpoint [`CONFIG_WATCH_ONCE`] breaks this on purpose, as the
/// classic bug does: a one-shot watch taken for a subscription, so the
/// first value is applied and no change after it. It exists so the
/// nemesis's config checker can be shown to catch exactly that.
pub fn live_config<T>(
    client: &Client,
    path: &str,
    status: &status::Status,
    metrics: &metrics::Common,
) -> watch::Receiver<T>
where
    T: DeserializeOwned + Default + serde::Serialize + Clone + PartialEq + Send + Sync + 'static,
{
    let (tx, rx) = watch::channel(T::default());
    let mut raw = zk_recipes::config::watch_data(client, path);
    let path = path.to_string();
    let status = status.clone();
    let applied = metrics.config_version.clone();
    tokio::spawn(async move {
        loop {
            let value = raw.borrow_and_update().clone();
            let version = value.as_ref().map(|v| v.mzxid);
            let parsed = match value {
                // Missing, or laid out empty by `zkctl init`: defaults.
                None => Ok(T::default()),
                Some(v) if v.data.is_empty() => Ok(T::default()),
                Some(v) => serde_json::from_slice::<T>(&v.data),
            };
            match parsed {
                Ok(settings) => {
                    if tx.send_if_modified(|cur| {
                        let changed = *cur != settings;
                        *cur = settings.clone();
                        changed
                    }) {
                        let shown = serde_json::to_string(&settings).unwrap_or_default();
                        tracing::info!(path, settings = shown, "config applied");
                        println!("config applied {shown}");
                    }
                    // Reported once the new settings are in force.
                    if let Some(v) = version {
                        status.config_applied(v);
                        applied.set(v);
                    }
                }
                Err(e) => tracing::warn!(path, "ignoring invalid config (keeping the last good one): {e}"),
            }
            if version.is_some() && failpoint::is_armed(CONFIG_WATCH_ONCE) {
                // Deaf from here on, the settings kept as they are (the
                // sender lives on, so nobody sees the follower gone).
                std::future::pending::<()>().await;
            }
            if raw.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Bounds a graceful stop: once `stop` is cancelled, the process has
/// `budget` to finish on its own (resign, deregister, drain) and is then
/// ended. Each of those steps is bounded too, but a step that waits on a
/// server nobody answers (paused, partitioned) is exactly the one whose
/// bound is easiest to get wrong; this is the bound on all of them at once.
pub fn exit_after(stop: &CancellationToken, budget: Duration) {
    let stop = stop.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        tokio::time::sleep(budget).await;
        tracing::warn!("the graceful stop took longer than {budget:?}: exiting now");
        telemetry::shutdown(Duration::from_millis(500));
        std::process::exit(0);
    });
}

/// Cancelled on SIGTERM or SIGINT: the start of a graceful shutdown.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}

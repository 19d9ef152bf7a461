//! Broker users for a test's task queue, provisioned as a deployment's
//! are: `servicekit::broker::generate` writes each service's credentials
//! file and the definitions, and one `rabbitmqctl import_definitions`
//! (about 0.7 s) loads them. Each queue gets users of its own
//! (`<queue>.system-a`, `<queue>.system-b`), so tests that share the
//! broker cannot use each other's rights.
//!
//! The tests themselves keep connecting as `guest` ([`crate::rabbitmq_url`]):
//! they play the observer and the attacker, never a service.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context};

/// One queue's provisioned users.
#[derive(Clone, Debug)]
pub struct BrokerUsers {
    pub queue: String,
    pub dir: PathBuf,
}

impl BrokerUsers {
    /// The credentials file of `role` (`system-a`, `system-b`).
    pub fn file(&self, role: &str) -> PathBuf {
        self.dir.join(servicekit::broker::credentials_file_name(role))
    }

    /// The definitions that were imported.
    pub fn definitions(&self) -> PathBuf {
        self.dir.join(servicekit::broker::DEFINITIONS_FILE)
    }

    /// `--amqp <URL without credentials> --amqp-credentials-file <file>`:
    /// how a service of `role` is started.
    pub fn flags(&self, role: &str) -> [String; 4] {
        self.flags_at(role, &service_url())
    }

    /// [`BrokerUsers::flags`] for a broker at `urls`, without credentials:
    /// one URL, a cluster's nodes comma-separated, or a relay's URL (from a
    /// host of a test network).
    pub fn flags_at(&self, role: &str, urls: &str) -> [String; 4] {
        [
            "--amqp".into(),
            urls.to_string(),
            "--amqp-credentials-file".into(),
            self.file(role).to_string_lossy().into_owned(),
        ]
    }

    /// The broker as `role` sees it (to connect as that service).
    pub fn broker(&self, role: &str) -> servicekit::rabbit::Broker {
        let file = self.file(role);
        let creds = servicekit::auth::ZkAuth::credentials_from_file(&file).expect("a provisioned credentials file");
        servicekit::rabbit::Broker::new(&service_url(), &creds, &file).expect("the service URL")
    }
}

/// [`crate::rabbitmq_url`] without its user and password: what services
/// are given, with a credentials file.
pub fn service_url() -> String {
    servicekit::rabbit::redact_url(&crate::rabbitmq_url())
}

/// [`service_url`] with its host and port replaced by `addr` (a relay
/// to the broker, `testkit::netns::Net::relay`).
pub fn service_url_via(addr: std::net::SocketAddr) -> String {
    let url = service_url();
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", &url));
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
    format!("{scheme}://{addr}{path}")
}

/// The broker's address (host:port of [`crate::rabbitmq_url`]), which a
/// relay forwards to.
pub fn broker_addr() -> std::net::SocketAddr {
    let url = service_url();
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(&url);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let with_port = if authority.contains(':') { authority.to_string() } else { format!("{authority}:5672") };
    std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("the broker's address {with_port:?} (AMQP_URL) does not resolve"))
}

/// What every queue, exchange and broker user a test makes is named
/// with: the suite sweeps them all by it (`scripts/rabbitmq.sh
/// sweep-tests`) at the start and the end of a run. Each quorum queue is a
/// Raft group of its own on the broker, so leftovers are not harmless: a
/// few hundred from runs that never cleaned up once wedged a broker.
pub const TEST_PREFIX: &str = "e2e.";

/// A fresh name for a test's task queue (its exchanges and users are
/// named after it): `e2e.<kind>-<12 hex>`.
pub fn queue_name(kind: &str) -> String {
    format!("{TEST_PREFIX}{}", crate::unique(kind))
}

static PROVISIONED: Mutex<Option<HashMap<String, BrokerUsers>>> = Mutex::new(None);

/// The users of `queue`, provisioned on first use; panics (fails the test)
/// with rabbitmqctl's words when the broker cannot be provisioned.
pub fn provision(queue: &str) -> BrokerUsers {
    try_provision(queue).unwrap_or_else(|e| panic!("provisioning the broker for {queue}: {e:#}"))
}

/// [`provision`], as a `Result` (for the benchmark).
pub fn try_provision(queue: &str) -> anyhow::Result<BrokerUsers> {
    // Held across the import, so two instances of one test's queue
    // provision it once.
    let mut cache = PROVISIONED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(users) = cache.get_or_insert_with(HashMap::new).get(queue) {
        return Ok(users.clone());
    }
    let dir = std::env::temp_dir().join(crate::unique("broker-users"));
    write_set(&dir, queue)?;
    let users = BrokerUsers { queue: queue.to_string(), dir };
    import_definitions(&users.definitions())?;
    cache.get_or_insert_with(HashMap::new).insert(queue.to_string(), users.clone());
    Ok(users)
}

/// Deletes `queue`, its dead-letter queue, their exchanges and its users
/// from the broker (`scripts/rabbitmq.sh sweep-tests <queue>`). The
/// suite's own sweep runs only at its start and end; a process that makes
/// a queue per run for an hour (the nemesis) removes each as it goes, or
/// the broker is worn down by hundreds of Raft groups mid-batch.
pub fn remove(queue: &str) -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq.sh");
    let out = Command::new(&script).args(["sweep-tests", queue]).output().context("run scripts/rabbitmq.sh")?;
    if !out.status.success() {
        bail!("{} sweep-tests {queue}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    }
    if let Some(cache) = PROVISIONED.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        cache.remove(queue);
    }
    Ok(())
}

/// A fresh set for `queue` in `dir` (mode 0700, files 0600), as
/// `zkctl gen-broker-credentials DIR --queue QUEUE --user-prefix QUEUE.` writes.
pub fn write_set(dir: &Path, queue: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("{}", dir.display()))?;
    let generated = servicekit::broker::generate(queue, &format!("{queue}."));
    let definitions = (servicekit::broker::DEFINITIONS_FILE.to_string(), generated.definitions.clone());
    for (name, text) in generated.credentials.iter().chain([&definitions]) {
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("{}", path.display()))?;
        f.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// Loads broker definitions through rabbitmqctl, on standard input: the
/// broker node runs as its own user and could not open a 0600 file of
/// ours. `RABBITMQ_NODENAME` (exported by scripts/test.sh when it started
/// a private broker) selects the node, as `scripts/rabbitmq.sh import`
/// does.
pub fn import_definitions(file: &Path) -> anyhow::Result<()> {
    let input = std::fs::File::open(file).with_context(|| format!("{}", file.display()))?;
    let out = Command::new("rabbitmqctl")
        .args(["-q", "import_definitions"])
        .stdin(Stdio::from(input))
        .output()
        .context("run rabbitmqctl (is rabbitmq-server installed? scripts/setup.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl import_definitions {}: {}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

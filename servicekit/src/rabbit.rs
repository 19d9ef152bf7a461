//! RabbitMQ: who a service is to the broker, connections that come back,
//! and a broker that is away told apart from one that says no.
//!
//! A broker restart closes every connection; a service must reconnect
//! without hammering a broker that is still booting, so attempts back off
//! exponentially (capped), and the caller checks its topology and
//! re-subscribes on each new connection.
//!
//! A broker may be a cluster: the URL is then a comma-separated list of its
//! nodes (`amqp://h1:5672/%2f,amqp://h2:5672/%2f`), and a service whose
//! node fails moves to the next one that answers, starting from the first
//! in the list, backing off only once every node has been tried. What a
//! move must keep is the caller's: a publish whose confirm was lost with
//! the node is published again from system-a's outbox, and a delivery
//! whose ack was lost is delivered again, which system-b's exactly-once
//! rule turns into a report or a no-op.
//!
//! A broker that *refuses* is another matter: a wrong password, a user
//! without the permission an operation needs, a queue nobody provisioned.
//! Retrying cannot fix any of these, and a service that retried them
//! forever would look alive while doing nothing, with a warning a minute
//! drowned in the log. So they are [`Refused`]: reported once, naming the
//! user and what to fix, and the service exits non-zero.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ErrorKind};
use tokio_util::sync::CancellationToken;

use crate::auth::Credentials;

pub use crate::broker::task_exchange;

/// Where the broker's nodes are and who this service is to them. Built by
/// [`crate::QueueArgs::broker`]. Its `Debug` shows the user, never the
/// password.
#[derive(Clone)]
pub struct Broker {
    /// Each node, in the order given: its URL as given (it carries no
    /// credentials), for messages, and the URL to connect with.
    nodes: Vec<(String, AMQPUri)>,
    /// The node the last attempt went to: where a move starts from, and
    /// the one messages name.
    current: Arc<AtomicUsize>,
    user: String,
    /// Where the credentials came from, for messages.
    credentials_file: PathBuf,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Broker({} as {}:<redacted>)", self.urls().join(","), self.user)
    }
}

/// How long one connection attempt may take: a node that does not answer
/// at all (partitioned, paused) must not hold a service away from the
/// others.
const CONNECT_LIMIT: Duration = Duration::from_secs(5);

/// The AMQP heartbeat asked for when the URL names none (`?heartbeat=`).
/// A connection to a node that went silent (stopped, hung, cut off by a
/// firewall that drops packets) ends after two missed beats; at
/// RabbitMQ's default of 60 s that is two minutes of a consumer waiting
/// on a node that will not deliver. RabbitMQ's guide recommends 5 to 20 s.
pub const HEARTBEAT_S: u16 = 10;

impl Broker {
    /// `urls` (one `amqp://` URL, or a comma-separated list of a cluster's
    /// nodes, each without credentials: see [`userinfo_of`]) with the user
    /// and password of `credentials`, read from `credentials_file`.
    pub fn new(urls: &str, credentials: &Credentials, credentials_file: &Path) -> Result<Broker, String> {
        let mut nodes = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            if userinfo_of(url).is_some() {
                return Err(format!(
                    "the RabbitMQ URL carries a user or password; give it without them ({}) and put the user \
                     and password in the credentials file",
                    redact_url(url)
                ));
            }
            let mut uri: AMQPUri = url.parse().map_err(|e| format!("{url:?} is not an amqp:// URL: {e}"))?;
            uri.authority.userinfo.username = credentials.user().to_string();
            uri.authority.userinfo.password = credentials.password().to_string();
            uri.query.heartbeat = uri.query.heartbeat.or(Some(HEARTBEAT_S));
            nodes.push((url.to_string(), uri));
        }
        if nodes.is_empty() {
            return Err("no RabbitMQ URL: give one, or a comma-separated list of a cluster's nodes".into());
        }
        Ok(Broker {
            nodes,
            current: Arc::new(AtomicUsize::new(0)),
            user: credentials.user().to_string(),
            credentials_file: credentials_file.to_path_buf(),
        })
    }

    /// The broker user this service logs in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Every node's URL, as given.
    pub fn urls(&self) -> Vec<&str> {
        self.nodes.iter().map(|(url, _)| url.as_str()).collect()
    }

    /// The URL of the node the last attempt went to.
    pub fn url(&self) -> &str {
        &self.nodes[self.current.load(Ordering::Relaxed) % self.nodes.len()].0
    }

    /// One connection attempt as this user, to the node the last attempt
    /// went to.
    pub async fn connect(&self) -> lapin::Result<Connection> {
        let uri = self.nodes[self.current.load(Ordering::Relaxed) % self.nodes.len()].1.clone();
        match tokio::time::timeout(CONNECT_LIMIT, Connection::connect_uri(uri, ConnectionProperties::default())).await {
            Ok(connected) => connected,
            Err(_) => Err(lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {CONNECT_LIMIT:?}"),
            ))),
        }
    }

    /// Makes the next node in the list the one [`Broker::connect`] tries;
    /// whether that wrapped around to the first (every node was tried).
    fn move_on(&self) -> bool {
        let next = (self.current.load(Ordering::Relaxed) + 1) % self.nodes.len();
        self.current.store(next, Ordering::Relaxed);
        next == 0
    }

    /// Whether `e`, from an operation on a channel of this broker (a
    /// passive declare, a consume, a publish), is a refusal no retry can
    /// fix; with the message that says what to fix.
    pub fn refused(&self, e: &lapin::Error) -> Option<Refused> {
        let (kind, said) = broker_said(e)?;
        let fix = match kind {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => format!(
                "the broker user `{}` lacks a permission this service needs; import the broker definitions \
                 `zkctl gen-broker-credentials` wrote for this queue (`scripts/rabbitmq.sh import FILE`), \
                 see docs/security.md, \"Broker identities\"",
                self.user
            ),
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => {
                return Some(Refused(format!(
                    "RabbitMQ at {}: the task queue's topology is not there ({said}); the services do not \
                     declare it: provision the broker with the definitions `zkctl gen-broker-credentials DIR \
                     --queue QUEUE` writes (`scripts/rabbitmq.sh import DIR/broker-definitions.json`)",
                    self.url()
                )))
            }
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => self.login_fix(),
            _ => return None,
        };
        Some(Refused(format!(
            "RabbitMQ at {} refused user `{}` ({said}); retrying cannot help: {fix}",
            self.url(),
            self.user
        )))
    }

    /// Whether `e`, from a connection attempt, is a refusal of this login:
    /// a wrong password or unknown user (ACCESS_REFUSED), or a user with no
    /// access to the vhost (NOT_ALLOWED).
    pub fn login_refused(&self, e: &lapin::Error) -> Option<Refused> {
        let (kind, said) = broker_said(e)?;
        match kind {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => {
                Some(Refused(format!(
                    "RabbitMQ at {} refused the login of user `{}` ({said}); retrying cannot help: {}",
                    self.url(),
                    self.user,
                    self.login_fix()
                )))
            }
            _ => None,
        }
    }

    fn login_fix(&self) -> String {
        format!(
            "the password in {} (--amqp-credentials-file / AMQP_CREDENTIALS_FILE) is not the broker's for \
             `{}`, or the user has no access to the vhost: import the definitions generated with that file \
             (`scripts/rabbitmq.sh import broker-definitions.json`), or generate a new set with \
             `zkctl gen-broker-credentials`",
            self.credentials_file.display(),
            self.user
        )
    }
}

/// The broker's own error code and words, when `e` is one.
fn broker_said(e: &lapin::Error) -> Option<(&AMQPErrorKind, String)> {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => Some((amqp.kind(), amqp.get_message().to_string())),
        _ => None,
    }
}

/// A refusal no retry fixes; its `Display` says what to fix.
#[derive(Debug, Clone)]
pub struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl Refused {
    /// Logs the refusal once and ends the process with status 1, as a
    /// service's startup error does. For a task that cannot return its
    /// error to `main` (system-a publishes from a spawned task): the
    /// service cannot do its work without the broker, and exiting is what
    /// makes a supervisor, or an operator, see it.
    pub fn exit(self) -> ! {
        if tracing::dispatcher::has_been_set() {
            tracing::error!("{self}");
        } else {
            eprintln!("{self}");
        }
        std::process::exit(1)
    }
}

/// The userinfo (`user[:password]`) of an `amqp://` URL, if it has one.
/// Our own reading, because lapin's parser fills in `guest:guest` when
/// there is none, so it cannot tell the two apart.
pub fn userinfo_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit_once('@').map(|(userinfo, _)| userinfo)
}

/// `url` (or each URL of a comma-separated list) with its userinfo cut
/// out, for messages.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| match userinfo_of(one) {
            Some(userinfo) => one.replacen(&format!("{userinfo}@"), "", 1),
            None => one.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Connects, retrying a broker that is away, until it succeeds
/// (`Ok(Some)`) or `stop` is cancelled (`Ok(None)`). Each attempt goes to
/// the next node of the list, starting with the one the last connection
/// was to; once every node has failed in a row it backs off exponentially
/// from 100 ms to 5 s, so a cluster whose nodes are all down (or all
/// booting) is not hammered, and a cluster with one node down costs one
/// refused connection. A login the broker refuses is `Err` at once: the
/// same password will be refused again (the users are the cluster's, the
/// same on every node).
pub async fn connect_with_backoff(broker: &Broker, stop: &CancellationToken) -> Result<Option<Connection>, Refused> {
    let mut backoff = crate::fault::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failed_in_a_row = 0;
    loop {
        let tried = broker.url().to_string();
        let delay = match broker.connect().await {
            Ok(c) => {
                if broker.nodes.len() > 1 {
                    tracing::info!(node = tried, "connected to RabbitMQ");
                }
                return Ok(Some(c));
            }
            Err(e) => {
                if let Some(refused) = broker.login_refused(&e) {
                    return Err(refused);
                }
                failed_in_a_row += 1;
                let _ = broker.move_on();
                if failed_in_a_row < broker.nodes.len() {
                    tracing::warn!(
                        node = tried,
                        next = broker.url(),
                        "cannot reach RabbitMQ: {e}; trying the next node"
                    );
                    continue;
                }
                failed_in_a_row = 0;
                let delay = backoff.next_delay();
                tracing::warn!(retry_in_ms = delay.as_millis() as u64, node = tried, "cannot reach RabbitMQ: {e}");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return Ok(None),
        }
    }
}

/// After a connection that worked has ended: the next attempt goes to the
/// next node, since the one that failed is the likeliest to be down.
/// With one node, it is that node again.
pub fn lost_connection(broker: &Broker) {
    let _ = broker.move_on();
}

/// Checks that the task queue and the exchange into it exist, without
/// declaring them: a passive declare, which needs no permission, where a
/// real one needs `configure` (even on a queue that exists) and would hand
/// each service the right to delete the queue. The topology is the
/// broker's provisioning's job ([`crate::broker::generate`]); a missing
/// piece is a NOT_FOUND that [`Broker::refused`] turns into the fix.
pub async fn check_task_topology(channel: &lapin::Channel, queue: &str) -> lapin::Result<()> {
    use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(queue.into(), passive, FieldTable::default()).await?;
    let exchange = task_exchange(queue);
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() },
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

    fn broker() -> Broker {
        let c = Credentials::parse("system-b:s3cret-pw").expect("credentials");
        Broker::new("amqp://127.0.0.1:5672/%2f", &c, Path::new("/run/b.cred")).expect("broker")
    }

    fn amqp(kind: AMQPErrorKind, message: &str) -> lapin::Error {
        lapin::Error::from(ErrorKind::ProtocolError(AMQPError::new(kind, message.into())))
    }

    #[test]
    fn a_url_with_credentials_is_refused_without_echoing_them() {
        let c = Credentials::parse("system-a:pw").expect("credentials");
        for url in ["amqp://guest:guest@127.0.0.1:5672/%2f", "amqp://system-a@host/%2f", "amqp://u:p@h"] {
            let e = Broker::new(url, &c, Path::new("x")).expect_err(url);
            assert!(!e.contains("guest:guest") && !e.contains("u:p@"), "{e}");
            assert!(e.contains("credentials file"), "{e}");
        }
        assert_eq!(userinfo_of("amqp://h:5672/%2f"), None);
        assert_eq!(userinfo_of("amqp://h/v?x=a@b"), None, "an @ past the authority is not userinfo");
        assert_eq!(redact_url("amqp://a:b@h/%2f"), "amqp://h/%2f");
        assert_eq!(redact_url("amqp://h1/%2f,amqp://a:b@h2/%2f"), "amqp://h1/%2f,amqp://h2/%2f");
        assert!(Broker::new("http://h", &c, Path::new("x")).is_err(), "not amqp");
    }

    #[test]
    fn a_list_of_nodes_is_tried_in_turn_and_each_url_is_checked() {
        let c = Credentials::parse("system-b:s3cret-pw").expect("credentials");
        let b = Broker::new("amqp://n1:5672/%2f, amqp://n2:5673/%2f,amqp://n3:5674/%2f", &c, Path::new("x"))
            .expect("a list of nodes");
        assert_eq!(b.urls(), ["amqp://n1:5672/%2f", "amqp://n2:5673/%2f", "amqp://n3:5674/%2f"]);
        assert_eq!(b.url(), "amqp://n1:5672/%2f", "the first node first");
        assert!(!b.move_on());
        assert_eq!(b.url(), "amqp://n2:5673/%2f");
        assert!(!b.move_on());
        assert!(b.move_on(), "the third move comes back to the first node");
        assert_eq!(b.url(), "amqp://n1:5672/%2f");
        for (i, (_, uri)) in b.nodes.iter().enumerate() {
            assert_eq!(uri.authority.userinfo.username, "system-b", "node {i}");
            assert_eq!(uri.authority.port, 5672 + i as u16);
        }
        let shown = format!("{b:?}");
        assert!(shown.contains("n3:5674") && !shown.contains("s3cret"), "{shown}");
        let e = Broker::new("amqp://n1/%2f,amqp://u:p@n2/%2f", &c, Path::new("x")).expect_err("userinfo in the 2nd");
        assert!(!e.contains("u:p@") && e.contains("credentials file"), "{e}");
        assert!(Broker::new(" , ", &c, Path::new("x")).is_err(), "no URL at all");
        assert!(Broker::new("amqp://n1/%2f,http://n2", &c, Path::new("x")).is_err(), "one bad URL");
        let single = Broker::new("amqp://127.0.0.1:5672/%2f", &c, Path::new("x")).expect("one URL");
        assert!(single.move_on(), "one node: every move is a full round");
        assert_eq!(single.url(), "amqp://127.0.0.1:5672/%2f");
    }

    #[test]
    fn a_heartbeat_is_asked_for_unless_the_url_names_one() {
        let c = Credentials::parse("system-b:pw").expect("credentials");
        let b = Broker::new("amqp://n1/%2f,amqp://n2/%2f?heartbeat=30", &c, Path::new("x")).expect("nodes");
        let beats: Vec<_> = b.nodes.iter().map(|(_, uri)| uri.query.heartbeat).collect();
        assert_eq!(beats, [Some(HEARTBEAT_S), Some(30)]);
    }

    #[test]
    fn the_password_never_shows() {
        let b = broker();
        let shown = format!("{b:?}");
        assert!(shown.contains("system-b") && !shown.contains("s3cret"), "{shown}");
        assert_eq!(b.nodes[0].1.authority.userinfo.password, "s3cret-pw", "but it is what the login sends");
    }

    #[test]
    fn refusals_are_permanent_and_outages_are_not() {
        let b = broker();
        let login = amqp(
            AMQPSoftError::ACCESSREFUSED.into(),
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN",
        );
        let r = b.login_refused(&login).expect("a refused login is permanent");
        assert!(r.to_string().contains("`system-b`") && r.to_string().contains("/run/b.cred"), "{r}");
        let vhost = amqp(AMQPHardError::NOTALLOWED.into(), "access to vhost '/' refused for user 'system-b'");
        assert!(b.login_refused(&vhost).is_some());

        let denied = amqp(AMQPSoftError::ACCESSREFUSED.into(), "access to queue 'tasks.dlq' refused");
        let r = b.refused(&denied).expect("a permission refusal is permanent");
        assert!(r.to_string().contains("lacks a permission") && r.to_string().contains("tasks.dlq"), "{r}");
        let missing = amqp(AMQPSoftError::NOTFOUND.into(), "NOT_FOUND - no queue 'tasks' in vhost '/'");
        let r = b.refused(&missing).expect("a missing queue is permanent");
        assert!(r.to_string().contains("provision the broker") && r.to_string().contains("no queue 'tasks'"));

        // What a broker that is away, restarting or closing us looks like.
        let away = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let forced =
            amqp(AMQPHardError::CONNECTIONFORCED.into(), "CONNECTION_FORCED - broker forced connection closure");
        let precondition = amqp(AMQPSoftError::PRECONDITIONFAILED.into(), "PRECONDITION_FAILED - unknown delivery tag");
        for transient in [&away, &forced, &precondition] {
            assert!(b.login_refused(transient).is_none(), "{transient}");
            assert!(b.refused(transient).is_none(), "{transient}");
        }
    }
}

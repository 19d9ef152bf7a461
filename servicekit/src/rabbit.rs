//! RabbitMQ: who a service is to the broker, connections that come back,
//! and a broker that is away told apart from one that says no.
//!
//! A broker restart closes every connection; a service must reconnect
//! without hammering a broker that is still booting, so attempts back off
//! exponentially (capped), and the caller checks its topology and
//! re-subscribes on each new connection.
//!
//! A broker that *refuses* is another matter: a wrong password, a user
//! without the permission an operation needs, a queue nobody provisioned.
//! Retrying cannot fix any of these, and a service that retried them
//! forever would look alive while doing nothing, with a warning a minute
//! drowned in the log. So they are [`Refused`]: reported once, naming the
//! user and what to fix, and the service exits non-zero.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ErrorKind};
use tokio_util::sync::CancellationToken;

use crate::auth::Credentials;

pub use crate::broker::task_exchange;

/// Where the broker is and who this service is to it. Built by
/// [`crate::QueueArgs::broker`]. Its `Debug` shows the user, never the
/// password.
#[derive(Clone)]
pub struct Broker {
    uri: AMQPUri,
    /// The URL as given (it carries no credentials), for messages.
    url: String,
    user: String,
    /// Where the credentials came from, for messages.
    credentials_file: PathBuf,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Broker({} as {}:<redacted>)", self.url, self.user)
    }
}

impl Broker {
    /// `url` (which must carry no credentials: see [`userinfo_of`]) with
    /// the user and password of `credentials`, read from
    /// `credentials_file`.
    pub fn new(url: &str, credentials: &Credentials, credentials_file: &Path) -> Result<Broker, String> {
        if userinfo_of(url).is_some() {
            return Err(format!(
                "the RabbitMQ URL carries a user or password; give it without them ({}) and put the user \
                 and password in the credentials file",
                redact_url(url)
            ));
        }
        let mut uri: AMQPUri = url.parse().map_err(|e| format!("not an amqp:// URL: {e}"))?;
        uri.authority.userinfo.username = credentials.user().to_string();
        uri.authority.userinfo.password = credentials.password().to_string();
        Ok(Broker {
            uri,
            url: url.to_string(),
            user: credentials.user().to_string(),
            credentials_file: credentials_file.to_path_buf(),
        })
    }

    /// The broker user this service logs in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// One connection attempt as this user.
    pub async fn connect(&self) -> lapin::Result<Connection> {
        Connection::connect_uri(self.uri.clone(), ConnectionProperties::default()).await
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
                    self.url
                )))
            }
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => self.login_fix(),
            _ => return None,
        };
        Some(Refused(format!(
            "RabbitMQ at {} refused user `{}` ({said}); retrying cannot help: {fix}",
            self.url, self.user
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
                    self.url,
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

/// `url` with its userinfo replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match userinfo_of(url) {
        Some(userinfo) => url.replacen(&format!("{userinfo}@"), "", 1),
        None => url.to_string(),
    }
}

/// Connects, retrying a broker that is away with exponential backoff from
/// 100 ms to 5 s, until it succeeds (`Ok(Some)`) or `stop` is cancelled
/// (`Ok(None)`). A login the broker refuses is `Err` at once: the same
/// password will be refused again.
pub async fn connect_with_backoff(broker: &Broker, stop: &CancellationToken) -> Result<Option<Connection>, Refused> {
    let mut backoff = crate::fault::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let delay = match broker.connect().await {
            Ok(c) => return Ok(Some(c)),
            Err(e) => {
                if let Some(refused) = broker.login_refused(&e) {
                    return Err(refused);
                }
                let delay = backoff.next_delay();
                tracing::warn!(retry_in_ms = delay.as_millis() as u64, "cannot reach RabbitMQ: {e}");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return Ok(None),
        }
    }
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
        assert!(Broker::new("http://h", &c, Path::new("x")).is_err(), "not amqp");
    }

    #[test]
    fn the_password_never_shows() {
        let b = broker();
        let shown = format!("{b:?}");
        assert!(shown.contains("system-b") && !shown.contains("s3cret"), "{shown}");
        assert_eq!(b.uri.authority.userinfo.password, "s3cret-pw", "but it is what the login sends");
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

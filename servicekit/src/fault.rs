//! Telling a permanent fault from a transient one.
//!
//! A dropped connection heals by itself: retrying soon is right. A file the
//! process may not write, a read-only file system or a path that names a
//! file where a directory belongs does not heal until an operator acts;
//! retrying it at full speed only burns CPU, floods the log with warnings
//! nobody reads as urgent, and (for a queue) redelivers the same message
//! forever. So a service classifies each I/O error: a permanent one is
//! logged as an ERROR that names the path and the fix, at most once per
//! period, and the work backs off exponentially, re-checking now and then
//! so that it resumes on its own once the fault is fixed.

use std::io::ErrorKind;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// True for errors no retry can fix: only an operator can (permissions, a
/// read-only or full file system, a path of the wrong kind, a missing
/// parent directory).
pub fn is_permanent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::PermissionDenied
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::NotADirectory
            | ErrorKind::IsADirectory
            | ErrorKind::NotFound
            | ErrorKind::InvalidFilename
            | ErrorKind::StorageFull
            | ErrorKind::QuotaExceeded
            | ErrorKind::FileTooLarge
    )
}

/// What an operator should do about a permanent error on `path`.
pub fn remedy(e: &std::io::Error, path: &Path) -> String {
    let p = path.display();
    match e.kind() {
        ErrorKind::PermissionDenied => format!(
            "make {p} writable by the user this service runs as (in Docker, a volume mounted there must belong \
             to the image's user)"
        ),
        ErrorKind::ReadOnlyFilesystem => format!("mount the file system holding {p} read-write"),
        ErrorKind::NotADirectory | ErrorKind::IsADirectory | ErrorKind::NotFound | ErrorKind::InvalidFilename => {
            format!("a component of {p} is missing or of the wrong kind (a file where a directory belongs, or the reverse): fix the path or the configuration")
        }
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge => {
            format!("free space on the file system holding {p}")
        }
        _ => format!("check {p}"),
    }
}

/// Exponential backoff: between re-checks of a permanent fault, and
/// between attempts to reach RabbitMQ.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max, next: first }
    }

    /// The delay to wait now; the one after it is twice as long (capped).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// The fault cleared: start from the first delay next time.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Lets a message through at most once per period, so a fault that lasts
/// hours is reported loudly but does not drown the log.
#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    last: Mutex<Option<Instant>>,
}

impl Throttle {
    pub fn new(period: Duration) -> Throttle {
        Throttle { period, last: Mutex::new(None) }
    }

    /// True if the caller should log now.
    pub fn ready(&self) -> bool {
        let Ok(mut last) = self.last.lock() else { return true };
        let now = Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < self.period => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// The fault cleared: the next occurrence is reported at once.
    pub fn clear(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_and_backoff() {
        let kind = |k: ErrorKind| std::io::Error::from(k);
        assert!(is_permanent(&kind(ErrorKind::PermissionDenied)));
        assert!(is_permanent(&kind(ErrorKind::ReadOnlyFilesystem)));
        assert!(is_permanent(&kind(ErrorKind::NotADirectory)));
        assert!(!is_permanent(&kind(ErrorKind::ConnectionReset)));
        assert!(!is_permanent(&kind(ErrorKind::Interrupted)));
        assert!(!is_permanent(&kind(ErrorKind::TimedOut)));
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        let t = Throttle::new(Duration::from_secs(60));
        assert!(t.ready());
        assert!(!t.ready());
        t.clear();
        assert!(t.ready());
    }
}

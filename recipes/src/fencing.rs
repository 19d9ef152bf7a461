//! Fencing tokens that never go backwards, even when the coordination
//! service's history does.
//!
//! A lock holder's or a leader's fencing token is the czxid of its node:
//! every later holding has a larger one, so a resource that remembers the
//! largest token it has seen can refuse a holder that stalled past its
//! session (Kleppmann's tokens 33 and 34). That argument holds within one
//! history of the coordination service. It breaks when the history is
//! replaced while the resource keeps its memory: the server's data
//! directory wiped or restored from an old snapshot, or the deployment moved
//! from the coordinator to a ZooKeeper ensemble or back. zxids then start
//! again from small numbers, the resource has seen larger ones, and every
//! new holder is refused for ever: the lock or the election still works, but
//! nothing can be written.
//!
//! So a token is a pair, [`Token`] `(epoch, zxid)`, compared epoch first.
//! The epoch is a number kept in a znode ([`Epoch`], `<root>/fencing`, laid
//! out by `zkctl init`) and, through the tokens it has seen, in every
//! resource. When a holder is refused by a token of its own epoch that is
//! larger than its own, one of two things is true:
//!
//! - it is no longer the holder (it stalled, and someone newer wrote): the
//!   ordinary case, and the refusal is right; or
//! - it *is* the holder, and the resource has seen a token this history
//!   never issued: the history was replaced.
//!
//! [`crate::lock::LockGuard::confirm`] and
//! [`crate::election::Leadership::confirm`] tell the two apart with a write
//! to the holder's own node, which only the live holder can make (a read
//! could be answered by an ensemble follower that has not yet seen the
//! holder's session expire). A confirmed holder then calls
//! [`Epoch::advance_past`]: the epoch becomes larger than any the resource
//! has seen, every token issued from then on is larger than any token of
//! the old history, and the holder retries with its new token.
//!
//! Why the holder may do this itself, and why it is safe: it holds the
//! lock, so nobody else is writing the resource; a stale holder cannot get
//! here (its confirming write fails); and an epoch only grows, so the worst
//! a needless advance does is fence out tokens that were already older.
//! What can fail is the advance itself (the epoch node is missing, or
//! refuses the writer, or is damaged): that is a fault only an operator can
//! fix, and callers raise it as an alarm instead of retrying.

use std::fmt;

use zookeeper_async::ZkError;

use crate::session::Client;

/// A fencing token: the epoch of the coordination service's history, then
/// the czxid of the holder's node in it. Ordered epoch first (the derived
/// `Ord` compares fields in declaration order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Token {
    pub epoch: i64,
    pub zxid: i64,
}

impl Token {
    pub fn new(epoch: i64, zxid: i64) -> Token {
        Token { epoch, zxid }
    }
}

impl fmt::Display for Token {
    /// `<zxid>@<epoch>`: the zxid is what a reader compares with the lock
    /// node's czxid; the epoch says which history it belongs to.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.zxid, self.epoch)
    }
}

/// Why an epoch could not be read or advanced.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    #[error("the fencing epoch node {0} does not exist")]
    Missing(String),
    #[error("the fencing epoch node {path} holds {data:?}, not a number")]
    Damaged { path: String, data: String },
    #[error("the fencing epoch cannot go past {0}")]
    Exhausted(i64),
    #[error("the fencing epoch node {path}: {error:?}")]
    Zk { path: String, error: ZkError },
}

impl EpochError {
    /// Whether retrying can help (a connection loss) or an operator must
    /// act (everything else: a missing, damaged or refused node).
    pub fn is_transient(&self) -> bool {
        matches!(self, EpochError::Zk { error, .. } if crate::retry::is_retryable(error))
    }

    /// What an operator does about it, for the alarm. `zkctl init` lays
    /// the node out and grants it again, but never writes its number (an
    /// epoch must not go back), so a damaged or spent one is set by hand.
    pub fn remedy(&self) -> String {
        match self {
            EpochError::Missing(_) => "lay out the tree with `zkctl init` as the operator".into(),
            EpochError::Damaged { path, .. } => format!(
                "write a number into it as the operator (`zkctl set {path} N`), above every epoch the fenced \
                 stores and journals have seen"
            ),
            EpochError::Exhausted(_) => {
                "the epoch has reached the largest number: check what advanced it so far, and reset the stores \
                 and journals with care"
                    .into()
            }
            EpochError::Zk { error: ZkError::NoAuth, .. } => "grant it again with `zkctl init` as the operator".into(),
            EpochError::Zk { .. } => "check the coordination server".into(),
        }
    }
}

/// The fencing epoch of a system: a decimal number in a znode.
#[derive(Clone)]
pub struct Epoch {
    client: Client,
    path: String,
}

/// Attempts of a compare-and-set before [`Epoch::advance_past`] gives up
/// to a caller that should try again later: each failed attempt means
/// another holder advanced the epoch meanwhile, which is progress.
const ADVANCE_ATTEMPTS: u32 = 10;

impl Epoch {
    pub fn new(client: &Client, path: impl Into<String>) -> Epoch {
        Epoch { client: client.clone(), path: path.into() }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The current epoch. A system laid out before epochs existed has no
    /// node: its tokens are all of epoch 0, which is what resources that
    /// recorded no epoch assume too.
    pub async fn current(&self) -> Result<i64, EpochError> {
        match self.read().await {
            Ok((epoch, _)) => Ok(epoch),
            Err(EpochError::Missing(_)) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// The token of a holding whose node has czxid `zxid`, in the current
    /// epoch. Read the epoch *after* the node exists: an advance that
    /// happened before then is then always seen.
    pub async fn token(&self, zxid: i64) -> Result<Token, EpochError> {
        Ok(Token::new(self.current().await?, zxid))
    }

    async fn read(&self) -> Result<(i64, i32), EpochError> {
        let (data, stat) = match self.client.zk.get_data(&self.path, false).await {
            Ok(read) => read,
            Err(ZkError::NoNode) => return Err(EpochError::Missing(self.path.clone())),
            Err(error) => return Err(EpochError::Zk { path: self.path.clone(), error }),
        };
        let text = String::from_utf8_lossy(&data);
        // Laid out empty: the first epoch.
        if text.trim().is_empty() {
            return Ok((0, stat.version));
        }
        match text.trim().parse::<i64>() {
            Ok(epoch) if epoch >= 0 => Ok((epoch, stat.version)),
            _ => Err(EpochError::Damaged { path: self.path.clone(), data: text.chars().take(40).collect() }),
        }
    }

    /// Makes the epoch larger than `seen` (an epoch a resource has seen),
    /// and returns it. Only a holder that has just confirmed it holds (see
    /// the module docs) calls this. If another holder advanced it past
    /// `seen` meanwhile, that epoch is returned as it is: one advance is
    /// enough for everyone.
    pub async fn advance_past(&self, seen: i64) -> Result<i64, EpochError> {
        for _ in 0..ADVANCE_ATTEMPTS {
            let (current, version) = self.read().await?;
            if current > seen {
                return Ok(current);
            }
            let next = seen.max(current).checked_add(1).ok_or(EpochError::Exhausted(seen))?;
            // Versioned: two holders advancing at once (holders of two
            // entities) both end up past what each saw, never one undoing
            // the other's advance.
            match self.client.zk.set_data(&self.path, next.to_string().into_bytes(), Some(version)).await {
                Ok(_) => {
                    tracing::warn!(
                        epoch = next,
                        seen,
                        path = %self.path,
                        "fencing epoch advanced: a resource had seen tokens this coordination history never \
                         issued (its data was reset, restored or moved)"
                    );
                    return Ok(next);
                }
                Err(ZkError::BadVersion) => continue,
                Err(ZkError::NoNode) => return Err(EpochError::Missing(self.path.clone())),
                Err(error) => return Err(EpochError::Zk { path: self.path.clone(), error }),
            }
        }
        Err(EpochError::Zk { path: self.path.clone(), error: ZkError::BadVersion })
    }
}

/// What a holder refused by a fenced resource does next, once a write to
/// its own node has said whether it still holds (`still_held`), after
/// `advances` epoch advances for the same piece of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// We no longer hold: we stalled, a newer holder wrote. The refusal is
    /// right; stop.
    Stale,
    /// We hold, so the resource has seen a history this server never had:
    /// advance the epoch past it and try again.
    Advance,
    /// We hold, advanced [`MAX_ADVANCES`] times already, and are still
    /// refused: an alarm for an operator, not a loop.
    GiveUp,
}

/// The most epoch advances one piece of work may make. One is enough after
/// a reset; a second covers another holder's advance racing ours.
pub const MAX_ADVANCES: u32 = 2;

pub fn after_refusal(still_held: bool, advances: u32) -> Refusal {
    match (still_held, advances) {
        (false, _) => Refusal::Stale,
        (true, n) if n >= MAX_ADVANCES => Refusal::GiveUp,
        (true, _) => Refusal::Advance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_epoch_first() {
        // A token of a newer history beats any of an older one, however
        // large its zxid: that is the whole point.
        assert!(Token::new(2, 5) > Token::new(1, 1 << 40));
        assert!(Token::new(1, 9) > Token::new(1, 8));
        assert!(Token::new(0, 8) < Token::new(1, 0));
        assert_eq!(Token::new(3, 7).to_string(), "7@3");
    }

    #[test]
    fn each_epoch_fault_names_its_fix() {
        let damaged = EpochError::Damaged { path: "/r/fencing".into(), data: "x".into() };
        assert!(damaged.remedy().contains("zkctl set /r/fencing"), "{}", damaged.remedy());
        assert!(EpochError::Missing("/r/fencing".into()).remedy().contains("zkctl init"));
        let refused = EpochError::Zk { path: "/r/fencing".into(), error: ZkError::NoAuth };
        assert!(refused.remedy().contains("zkctl init") && !refused.is_transient());
        assert!(EpochError::Zk { path: "/r/fencing".into(), error: ZkError::ConnectionLoss }.is_transient());
    }

    #[test]
    fn a_refused_holder_is_stale_unless_it_confirms_and_advances_at_most_twice() {
        assert_eq!(after_refusal(false, 0), Refusal::Stale);
        assert_eq!(after_refusal(true, 0), Refusal::Advance);
        assert_eq!(after_refusal(true, 1), Refusal::Advance);
        assert_eq!(after_refusal(true, MAX_ADVANCES), Refusal::GiveUp);
    }
}

//! What the tree says, read as the operator (who may read every node but a
//! task's: what a task did, a drill learns from system-a, as a client).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use servicekit::layout::Layout;
use zk_recipes::fencing::Token;
use zk_recipes::session::Client;
use zookeeper_async::ZkError;

/// One registered instance, as its node says.
#[derive(Debug, Clone)]
pub struct Member {
    pub instance: String,
    /// Its live status (`servicekit::status`).
    pub status: Value,
    /// The session that holds the node: it changes only with a new session.
    pub session: i64,
    /// When the node last changed, by the server's clock (ms since the epoch).
    pub mtime: i64,
}

impl Member {
    /// The last write a fence refused: (count, what, token, newer).
    pub fn fenced(&self) -> Option<(u64, String, String, String)> {
        let f = &self.status["fenced"];
        Some((
            f["count"].as_u64()?,
            f["what"].as_str()?.to_string(),
            f["token"].as_str()?.to_string(),
            f["newer"].as_str()?.to_string(),
        ))
    }

    pub fn fenced_count(&self) -> u64 {
        self.fenced().map_or(0, |f| f.0)
    }

    /// The term an ha-worker leads, if it is active.
    pub fn term(&self) -> Option<Token> {
        self.status["term"].as_str().and_then(parse_token)
    }

    pub fn config_version(&self) -> Option<i64> {
        self.status["config_version"].as_i64()
    }
}

/// A token as `Token`'s Display writes it: `zxid@epoch`.
pub fn parse_token(text: &str) -> Option<Token> {
    let (zxid, epoch) = text.split_once('@')?;
    Some(Token::new(epoch.parse().ok()?, zxid.parse().ok()?))
}

pub struct Observer {
    pub client: Client,
    pub layout: Layout,
}

/// Connection loss is the weather of these drills (a server restarting,
/// an ensemble electing): reads are retried through it.
const PATIENCE: Duration = Duration::from_secs(30);

impl Observer {
    /// Connects as the operator, `auth`.
    pub async fn connect(zk: &str, auth: &servicekit::auth::ZkAuth) -> Result<Observer> {
        let client =
            Client::connect_authenticated(zk, Duration::from_secs(10), Duration::from_secs(15), auth.auth_packets())
                .await
                .with_context(|| format!("connecting to {zk}"))?;
        Ok(Observer { client, layout: Layout::new("") })
    }

    /// The instances of `service` registered now, by name.
    pub async fn members(&self, service: &str) -> Result<Vec<Member>> {
        let dir = self.layout.service(service);
        let zk = &self.client.zk;
        let mut names = zk_recipes::retry::retry_for(PATIENCE, |_| zk.get_children(&dir, false))
            .await
            .map_err(|e| anyhow::anyhow!("listing {dir}: {e:?}"))?;
        names.sort();
        let mut out = Vec::new();
        for instance in names {
            let path = self.layout.member(service, &instance);
            match zk_recipes::retry::retry_for(PATIENCE, |_| zk.get_data(&path, false)).await {
                Ok((data, stat)) => out.push(Member {
                    instance,
                    status: serde_json::from_slice(&data).unwrap_or(Value::Null),
                    session: stat.ephemeral_owner,
                    mtime: stat.mtime,
                }),
                Err(ZkError::NoNode) => {}
                Err(e) => bail!("reading {path}: {e:?}"),
            }
        }
        Ok(out)
    }

    pub async fn member(&self, service: &str, instance: &str) -> Result<Option<Member>> {
        Ok(self.members(service).await?.into_iter().find(|m| m.instance == instance))
    }

    /// The first in line of an ephemeral-sequential queue (a lock, an
    /// election): (its data, its czxid). The lowest sequence holds.
    async fn first_in_line(&self, dir: &str) -> Result<Option<(String, i64)>> {
        let zk = &self.client.zk;
        let names = match zk_recipes::retry::retry_for(PATIENCE, |_| zk.get_children(dir, false)).await {
            Ok(n) => n,
            Err(ZkError::NoNode) => return Ok(None),
            Err(e) => bail!("listing {dir}: {e:?}"),
        };
        let Some(first) = names.iter().min_by_key(|n| sequence(n)) else { return Ok(None) };
        let path = format!("{dir}/{first}");
        match zk_recipes::retry::retry_for(PATIENCE, |_| zk.get_data(&path, false)).await {
            Ok((data, stat)) => Ok(Some((String::from_utf8_lossy(&data).into_owned(), stat.czxid))),
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => bail!("reading {path}: {e:?}"),
        }
    }

    /// Who holds `entity`'s lock, with the lock node's czxid (the zxid of
    /// the holder's fencing token).
    pub async fn lock_holder(&self, entity: &str) -> Result<Option<(String, i64)>> {
        self.first_in_line(&self.layout.lock(entity)).await
    }

    /// Waits up to 30 s for someone to hold `entity`'s lock (a task just
    /// submitted on it reaching a system-b): the holder and its czxid.
    pub async fn wait_lock_holder(&self, entity: &str) -> Result<(String, i64)> {
        until(&format!("a system-b holding {entity}'s lock"), Duration::from_secs(30), || self.lock_holder(entity))
            .await
    }

    /// The fencing epoch now (0 while unset).
    pub async fn epoch(&self) -> Result<i64> {
        let path = self.layout.fencing();
        let zk = &self.client.zk;
        match zk_recipes::retry::retry_for(PATIENCE, |_| zk.get_data(&path, false)).await {
            Ok((data, _)) => Ok(String::from_utf8_lossy(&data).trim().parse().unwrap_or(0)),
            Err(ZkError::NoNode) => Ok(0),
            Err(e) => bail!("reading {path}: {e:?}"),
        }
    }

    /// The ha-worker that says it is active, with its term.
    pub async fn active(&self) -> Result<Option<(Member, Token)>> {
        let members = self.members(servicekit::auth::HA_WORKER).await?;
        Ok(members.into_iter().find_map(|m| m.term().map(|t| (m, t))))
    }

    /// Reads `path` (data, mzxid, mtime), or None when missing.
    pub async fn get(&self, path: &str) -> Result<Option<(Vec<u8>, i64, i64)>> {
        let zk = &self.client.zk;
        match zk_recipes::retry::retry_for(PATIENCE, |_| zk.get_data(path, false)).await {
            Ok((data, stat)) => Ok(Some((data, stat.mzxid, stat.mtime))),
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => bail!("reading {path}: {e:?}"),
        }
    }

    /// Writes `path` (the operator's config), returning the write's mzxid
    /// and mtime.
    pub async fn set(&self, path: &str, data: &[u8]) -> Result<(i64, i64)> {
        let zk = &self.client.zk;
        let stat = zk_recipes::retry::retry_for(PATIENCE, |_| zk.set_data(path, data.to_vec(), None))
            .await
            .map_err(|e| anyhow::anyhow!("writing {path}: {e:?}"))?;
        Ok((stat.mzxid, stat.mtime))
    }
}

/// The sequence ZooKeeper appended to a sequential node's name.
fn sequence(name: &str) -> u64 {
    name.len().checked_sub(10).and_then(|i| name.get(i..)).and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)
}

/// Polls `probe` until it yields, or fails after `limit` saying what was
/// awaited.
pub async fn until<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("{what}: not within {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Now, by the wall clock, in ms since the epoch: comparable with the
/// server's mtimes on one host.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_read_back_as_they_are_written() {
        let t = Token::new(3, 8589934610);
        assert_eq!(parse_token(&t.to_string()), Some(t));
        assert_eq!(parse_token("nonsense"), None);
    }

    #[test]
    fn the_lowest_sequence_is_first() {
        assert!(sequence("_c_x-lock-0000000002") < sequence("_c_y-lock-0000000010"));
        assert_eq!(sequence("short"), u64::MAX);
    }
}

//! One consistent-enough picture of the scenarios, derived from the tree:
//! what is *now*. What *changed* between two pictures is
//! [`crate::history`]'s business; it diffs the typed [`Now`] each build
//! returns beside the page's JSON document.
//!
//! The walk is not atomic (ZooKeeper has no snapshot read), so a node may
//! vanish between listing and reading it; such nodes are skipped, and the
//! next refresh shows the settled state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use servicekit::layout::Layout;
use tokio::sync::Notify;
use zk_wire::path::join;
use zookeeper_async::{Stat, ZkError, ZooKeeper};

use crate::Armed;

/// The page draws at most this many znodes of the raw tree.
const TREE_LIMIT: usize = 2000;

struct Node {
    data: Vec<u8>,
    stat: Stat,
    children: Vec<String>,
}

/// A node's data (parsed as [`value`] does) and the server's stamps on it:
/// the zxids and times (ms since the Unix epoch, the server's clock) of its
/// creation and last write.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Znode {
    pub data: Value,
    pub czxid: i64,
    pub mzxid: i64,
    pub ctime: i64,
    pub mtime: i64,
    /// The session owning an ephemeral node, 0 for a persistent one.
    pub owner: i64,
}

impl Znode {
    fn of(data: &[u8], stat: &Stat) -> Znode {
        Znode {
            data: value(data),
            czxid: stat.czxid,
            mzxid: stat.mzxid,
            ctime: stat.ctime,
            mtime: stat.mtime,
            owner: stat.ephemeral_owner,
        }
    }
}

/// One candidate of a lock queue or an election.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Member {
    pub name: String,
    pub node: Znode,
    /// The owning session, `0x…` as the session list shows it.
    pub session: String,
}

impl Member {
    /// Who the candidate is: its data (the instance name the services
    /// write), else its node's name.
    pub fn who(&self) -> String {
        match &self.node.data {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::String(_) | Value::Null => self.name.clone(),
            other => other.to_string(),
        }
    }
}

/// What the tree says now, typed for [`crate::history::diff`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Now {
    /// The fencing epoch (`<root>/fencing`): 0 when the node is missing
    /// or empty, as the services count it; `None` when it holds no number.
    pub epoch: Option<i64>,
    /// Entity → its queue, lowest sequence (the holder) first.
    pub locks: BTreeMap<String, Vec<Member>>,
    /// Group → its candidates, the active first.
    pub ha: BTreeMap<String, Vec<Member>>,
    pub tasks: BTreeMap<String, Znode>,
    pub config: BTreeMap<String, Znode>,
    /// Service → instance → its registration node.
    pub services: BTreeMap<String, BTreeMap<String, Znode>>,
    /// The open sessions' ids; `None` when they could not be listed (a
    /// listing that failed must not read as every session closing).
    pub sessions: Option<BTreeSet<String>>,
}

impl Now {
    /// The session ids of a session list as [`crate::sessions`] reports it.
    pub fn set_sessions(&mut self, doc: &Value) {
        self.sessions = match (doc.get("error"), doc["list"].as_array()) {
            (None, Some(list)) => Some(list.iter().filter_map(|s| s["id"].as_str().map(str::to_string)).collect()),
            _ => None,
        };
    }
}

/// The page's document and the same picture typed.
pub struct Snapshot {
    pub doc: Value,
    pub now: Now,
}

/// Reads a node and its children, arming a data and a child watch on it
/// unless one is armed already. `None` if it does not exist.
async fn read(zk: &ZooKeeper, path: &str, armed: &Arc<Armed>, changed: &Arc<Notify>) -> Result<Option<Node>, ZkError> {
    let fresh = |set: &std::sync::Mutex<std::collections::HashSet<String>>| {
        set.lock().map(|mut s| s.insert(path.to_string())).unwrap_or(false)
    };
    let data = if fresh(&armed.data) {
        let (armed2, changed2, p) = (armed.clone(), changed.clone(), path.to_string());
        zk.get_data_w(path, move |_| {
            if let Ok(mut s) = armed2.data.lock() {
                s.remove(&p);
            }
            changed2.notify_one();
        })
        .await
    } else {
        zk.get_data(path, false).await
    };
    let (data, stat) = match data {
        Ok(d) => d,
        Err(ZkError::NoAuth) => {
            if let Ok(mut s) = armed.data.lock() {
                s.remove(path);
            }
            denied(armed, path);
            return Ok(None);
        }
        Err(ZkError::NoNode) => {
            // No data watch was set on a missing node; allow re-arming.
            if let Ok(mut s) = armed.data.lock() {
                s.remove(path);
            }
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let children = if fresh(&armed.children) {
        let (armed2, changed2, p) = (armed.clone(), changed.clone(), path.to_string());
        zk.get_children_w(path, move |_| {
            if let Ok(mut s) = armed2.children.lock() {
                s.remove(&p);
            }
            changed2.notify_one();
        })
        .await
    } else {
        zk.get_children(path, false).await
    };
    let mut children = match children {
        Ok(c) => c,
        Err(ZkError::NoAuth) => {
            if let Ok(mut s) = armed.children.lock() {
                s.remove(path);
            }
            denied(armed, path);
            return Ok(None);
        }
        Err(ZkError::NoNode) => {
            if let Ok(mut s) = armed.children.lock() {
                s.remove(path);
            }
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    children.sort();
    Ok(Some(Node { data, stat, children }))
}

/// A node this identity may not read: the page shows the rest, and says
/// which identity would see it ("not allowed: /locks needs ..."), instead
/// of failing the whole refresh.
fn denied(armed: &Armed, path: &str) {
    if let Ok(mut d) = armed.denied.lock() {
        d.insert(servicekit::auth::not_allowed(path));
    }
}

/// Data as JSON when it is JSON (status, config, metadata), else as text.
fn value(data: &[u8]) -> Value {
    serde_json::from_slice(data).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(data).into_owned()))
}

/// The sequence number ZooKeeper appended (`%010d`), which orders lock and
/// election candidates; names without one sort last.
pub fn sequence(name: &str) -> u64 {
    if name.len() >= 10 {
        name[name.len() - 10..].parse().unwrap_or(u64::MAX)
    } else {
        u64::MAX
    }
}

/// A queue of ephemeral-sequential candidates (a lock, an election): the
/// lowest sequence holds or leads, the rest wait in order.
async fn queue(zk: &ZooKeeper, dir: &str, armed: &Arc<Armed>, changed: &Arc<Notify>) -> Result<Vec<Member>, ZkError> {
    let Some(node) = read(zk, dir, armed, changed).await? else { return Ok(vec![]) };
    let mut names = node.children;
    names.sort_by_key(|n| sequence(n));
    let mut out = Vec::new();
    for name in names {
        let path = join(dir, &name);
        match zk.get_data(&path, false).await {
            Ok((data, stat)) => out.push(Member {
                node: Znode::of(&data, &stat),
                session: format!("{:#x}", stat.ephemeral_owner),
                name,
            }),
            Err(ZkError::NoNode) => {}
            Err(ZkError::NoAuth) => denied(armed, &path),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A candidate as the page shows it.
fn member_json(m: &Member) -> Value {
    json!({
        "name": m.name, "data": m.node.data, "sequence": sequence(&m.name), "czxid": m.node.czxid,
        "session": m.session,
    })
}

/// Children of `dir` (each a group: a lock per entity, an HA group).
async fn groups(
    zk: &ZooKeeper,
    dir: &str,
    armed: &Arc<Armed>,
    changed: &Arc<Notify>,
) -> Result<BTreeMap<String, Vec<Member>>, ZkError> {
    let mut out = BTreeMap::new();
    let Some(node) = read(zk, dir, armed, changed).await? else { return Ok(out) };
    for group in node.children {
        let members = queue(zk, &join(dir, &group), armed, changed).await?;
        out.insert(group, members);
    }
    Ok(out)
}

/// `dir/<name>` → its node, for flat directories (tasks, config, a
/// service's registry).
async fn flat(
    zk: &ZooKeeper,
    dir: &str,
    armed: &Arc<Armed>,
    changed: &Arc<Notify>,
) -> Result<BTreeMap<String, Znode>, ZkError> {
    let mut out = BTreeMap::new();
    let Some(node) = read(zk, dir, armed, changed).await? else { return Ok(out) };
    for name in node.children {
        if let Some(child) = read(zk, &join(dir, &name), armed, changed).await? {
            out.insert(name, Znode::of(&child.data, &child.stat));
        }
    }
    Ok(out)
}

/// `name → data`, what the page shows of a flat directory.
fn data_map(nodes: &BTreeMap<String, Znode>) -> Map<String, Value> {
    nodes.iter().map(|(k, n)| (k.clone(), n.data.clone())).collect()
}

/// A queue as the page shows it: the first member under `first`, the rest
/// under `rest`.
fn queue_map(queues: &BTreeMap<String, Vec<Member>>, first: &str, rest: &str) -> Map<String, Value> {
    queues
        .iter()
        .map(|(name, q)| {
            let head = q.first().map(member_json).unwrap_or(Value::Null);
            let tail: Vec<Value> = q.iter().skip(1).map(member_json).collect();
            let mut entry = Map::new();
            entry.insert(first.to_string(), head);
            entry.insert(rest.to_string(), Value::Array(tail));
            (name.clone(), Value::Object(entry))
        })
        .collect()
}

/// The fencing epoch as the services read it (recipes' `Epoch::current`):
/// a missing or empty node is epoch 0.
fn epoch_of(node: Option<&Node>) -> Option<i64> {
    match node {
        None => Some(0),
        Some(n) => {
            let text = String::from_utf8_lossy(&n.data);
            let text = text.trim();
            if text.is_empty() {
                Some(0)
            } else {
                text.parse().ok()
            }
        }
    }
}

pub async fn build(
    zk: &ZooKeeper,
    layout: &Layout,
    armed: &Arc<Armed>,
    changed: &Arc<Notify>,
) -> Result<Snapshot, ZkError> {
    if let Ok(mut d) = armed.denied.lock() {
        d.clear();
    }

    // The epoch first: a lock node read after it carries a token of this
    // epoch or a later one, the order the services read them in.
    let epoch = epoch_of(read(zk, &layout.fencing(), armed, changed).await?.as_ref());
    let locks = groups(zk, &layout.locks(), armed, changed).await?;
    let ha = groups(zk, &layout.ha(), armed, changed).await?;
    let tasks = flat(zk, &layout.tasks(), armed, changed).await?;
    let config = flat(zk, &layout.config_dir(), armed, changed).await?;
    let mut services = BTreeMap::new();
    if let Some(node) = read(zk, &layout.services(), armed, changed).await? {
        for svc in node.children {
            let members = flat(zk, &layout.service(&svc), armed, changed).await?;
            services.insert(svc, members);
        }
    }

    // The raw tree, breadth first and bounded: what zkctl tree would draw.
    let mut tree = Vec::new();
    let mut queue = std::collections::VecDeque::from([layout.root()]);
    let mut truncated = false;
    while let Some(path) = queue.pop_front() {
        if tree.len() >= TREE_LIMIT {
            truncated = true;
            break;
        }
        match zk.get_children(&path, false).await {
            Ok(mut children) => {
                children.sort();
                tree.push(json!({"path": path, "children": children.len()}));
                queue.extend(children.iter().map(|c| join(&path, c)));
            }
            Err(ZkError::NoNode) => {}
            Err(ZkError::NoAuth) => denied(armed, &path),
            Err(e) => return Err(e),
        }
    }

    let denied: Vec<String> = armed.denied.lock().map(|d| d.iter().cloned().collect()).unwrap_or_default();
    let services_doc: Map<String, Value> =
        services.iter().map(|(svc, members)| (svc.clone(), Value::Object(data_map(members)))).collect();
    let doc = json!({
        "root": layout.prefix(), "locks": queue_map(&locks, "holder", "waiters"),
        "ha": queue_map(&ha, "active", "standby"), "tasks": data_map(&tasks), "services": services_doc,
        "config": data_map(&config), "tree": tree, "tree_truncated": truncated, "denied": denied,
    });
    Ok(Snapshot { doc, now: Now { epoch, locks, ha, tasks, config, services, sessions: None } })
}

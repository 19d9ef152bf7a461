//! One consistent-enough picture of the scenarios, derived from the tree.
//!
//! The walk is not atomic (ZooKeeper has no snapshot read), so a node may
//! vanish between listing and reading it; such nodes are skipped, and the
//! next refresh shows the settled state.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use servicekit::layout::Layout;
use tokio::sync::Notify;
use zk_wire::path::join;
use zookeeper_async::{ZkError, ZooKeeper};

use crate::Armed;

/// The page draws at most this many znodes of the raw tree.
const TREE_LIMIT: usize = 2000;

struct Node {
    data: Vec<u8>,
    children: Vec<String>,
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
    let data = match data {
        Ok((d, _)) => d,
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
    Ok(Some(Node { data, children }))
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
async fn queue(zk: &ZooKeeper, dir: &str, armed: &Arc<Armed>, changed: &Arc<Notify>) -> Result<Vec<Value>, ZkError> {
    let Some(node) = read(zk, dir, armed, changed).await? else { return Ok(vec![]) };
    let mut names = node.children;
    names.sort_by_key(|n| sequence(n));
    let mut out = Vec::new();
    for name in names {
        let path = join(dir, &name);
        match zk.get_data(&path, false).await {
            Ok((data, stat)) => out.push(json!({
                "name": name, "data": value(&data), "sequence": sequence(&name), "czxid": stat.czxid,
                "session": format!("{:#x}", stat.ephemeral_owner),
            })),
            Err(ZkError::NoNode) => {}
            Err(ZkError::NoAuth) => denied(armed, &path),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Children of `dir` (each a group: a lock per entity, an HA group).
async fn groups(
    zk: &ZooKeeper,
    dir: &str,
    armed: &Arc<Armed>,
    changed: &Arc<Notify>,
) -> Result<Map<String, Value>, ZkError> {
    let mut out = Map::new();
    let Some(node) = read(zk, dir, armed, changed).await? else { return Ok(out) };
    for group in node.children {
        let members = queue(zk, &join(dir, &group), armed, changed).await?;
        out.insert(group, Value::Array(members));
    }
    Ok(out)
}

/// `dir/<name>` → parsed data, for flat directories (tasks, config).
async fn flat(
    zk: &ZooKeeper,
    dir: &str,
    armed: &Arc<Armed>,
    changed: &Arc<Notify>,
) -> Result<Map<String, Value>, ZkError> {
    let mut out = Map::new();
    let Some(node) = read(zk, dir, armed, changed).await? else { return Ok(out) };
    for name in node.children {
        if let Some(child) = read(zk, &join(dir, &name), armed, changed).await? {
            out.insert(name, value(&child.data));
        }
    }
    Ok(out)
}

pub async fn build(
    zk: &ZooKeeper,
    layout: &Layout,
    armed: &Arc<Armed>,
    changed: &Arc<Notify>,
) -> Result<Value, ZkError> {
    if let Ok(mut d) = armed.denied.lock() {
        d.clear();
    }

    let locks: Map<String, Value> = groups(zk, &layout.locks(), armed, changed)
        .await?
        .into_iter()
        .map(|(entity, q)| {
            let q = q.as_array().cloned().unwrap_or_default();
            let holder = q.first().cloned().unwrap_or(Value::Null);
            (entity, json!({"holder": holder, "waiters": q.get(1..).unwrap_or(&[]).to_vec()}))
        })
        .collect();
    let ha: Map<String, Value> = groups(zk, &layout.ha(), armed, changed)
        .await?
        .into_iter()
        .map(|(group, q)| {
            let q = q.as_array().cloned().unwrap_or_default();
            let active = q.first().cloned().unwrap_or(Value::Null);
            (group, json!({"active": active, "standby": q.get(1..).unwrap_or(&[]).to_vec()}))
        })
        .collect();
    let tasks = flat(zk, &layout.tasks(), armed, changed).await?;
    let config = flat(zk, &layout.config_dir(), armed, changed).await?;
    let mut services = Map::new();
    if let Some(node) = read(zk, &layout.services(), armed, changed).await? {
        for svc in node.children {
            let members = flat(zk, &layout.service(&svc), armed, changed).await?;
            services.insert(svc, Value::Object(members));
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
    Ok(json!({
        "root": layout.prefix(), "locks": locks, "ha": ha, "tasks": tasks, "services": services, "config": config,
        "tree": tree, "tree_truncated": truncated, "denied": denied,
    }))
}

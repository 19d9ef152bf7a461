//! `zkctl init`: the tree laid out with the policy's ACLs, and granted
//! again after a credentials rotation; never over nodes planted before.

use zookeeper_async::{Acl, Permission, ZkError, ZooKeeper};

use super::{not_allowed, Policy};
use crate::layout::Layout;

/// Why `init` (or [`planted`]) stopped, in a sentence that names the node
/// and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The server refused or failed an operation on `path`.
    #[error("{}", zk_failure(path, *error))]
    Zk { path: String, error: ZkError },
    /// Nodes anyone may write, made before `init` (see [`planted`]):
    /// adopting them would make a forged task or config look genuine.
    #[error(
        "refusing to adopt nodes anyone may write (made before init, while the tree was open): {}; \
         inspect them, delete them (zkctl rm), then run init again",
        paths.join(", ")
    )]
    Planted { paths: Vec<String> },
}

/// An [`InitError::Zk`] on `path`, for `map_err`.
fn at(path: &str) -> impl FnOnce(ZkError) -> InitError + '_ {
    move |error| InitError::Zk { path: path.to_string(), error }
}

fn zk_failure(path: &str, error: ZkError) -> String {
    match error {
        // Most often a rotation run with the new operator alone: the tree
        // still names the old one.
        ZkError::NoAuth => format!(
            "{}; after a credentials rotation, hold the previous operator's identity too \
             (zkctl init --extra-auth-file, docs/security.md)",
            not_allowed(path)
        ),
        ZkError::NoNode => {
            format!("the parent of {path} does not exist: create it first, or lay out under another root")
        }
        other => format!("{path}: {other:?}"),
    }
}

/// What `zkctl init` did, for its report.
#[derive(Debug, Default)]
pub struct InitReport {
    pub created: Vec<String>,
    pub acl_set: Vec<String>,
}

/// Lays out the system's tree ([`Layout::laid_out`]) with the policy's
/// ACLs. Nodes that exist get their ACL set again, and so do the nodes the
/// services created below them ([`Layout::service_made`]: task, outbox,
/// lock, election and member nodes): after a credentials rotation, one
/// `init` with the new ids re-grants every node. Run as the operator (or
/// with the super identity the first time, when an old tree is in the way).
///
/// An empty root means the system owns `/`: its ACL is set too, so an
/// anonymous client cannot add top-level nodes beside ours. On a shared
/// ensemble give each system its own root instead.
///
/// `/fencing` is laid out empty (epoch 0) and never written by init again:
/// an epoch only grows, and init must not undo an advance.
pub async fn init(zk: &ZooKeeper, layout: &Layout, policy: &Policy) -> Result<InitReport, InitError> {
    let planted = planted(zk, layout, policy).await?;
    if !planted.is_empty() {
        return Err(InitError::Planted { paths: planted });
    }
    let mut report = InitReport::default();
    for (path, kind) in layout.laid_out() {
        put_acl(zk, &path, &policy.of(&kind), &mut report).await?;
    }
    // What the services created, granted again (credentials rotation).
    for (dir, depth, kind) in layout.service_made() {
        reacl_below(zk, &dir, depth, &policy.of(&kind), &mut report).await?;
    }
    Ok(report)
}

/// The nodes of the system's tree (its directories and two levels below) whose
/// ACL lets anyone do more than read: nodes an anonymous client made before
/// `init` laid the tree out, while it was still open. No policy with
/// identities gives `world:anyone` more than READ, so none of them is ours.
/// `init` must not adopt them: granting a planted `/outbox/<id>` and
/// `/tasks/<id>` the services' ACLs makes the forged task one system-a
/// publishes and system-b runs, and a planted `/config/<service>` looks
/// written by the operator. The operator inspects and deletes them first.
/// With an open policy (no identities) every node is open: nothing to tell.
pub async fn planted(zk: &ZooKeeper, layout: &Layout, policy: &Policy) -> Result<Vec<String>, InitError> {
    let mut found = Vec::new();
    if policy.is_open() {
        return Ok(found);
    }
    let beyond_read = [Permission::WRITE, Permission::CREATE, Permission::DELETE, Permission::ADMIN];
    // The system's directories and what is below them; not the root's
    // other children, which on a shared ensemble belong to others.
    let mut level = layout.top_level();
    for depth in 0..3 {
        let mut next = Vec::new();
        for parent in &level {
            let children = if depth == 0 {
                vec![parent.clone()]
            } else {
                match zk.get_children(parent, false).await {
                    Ok(c) => c.iter().map(|c| zk_recipes::join(parent, c)).collect(),
                    // Not readable by the operator (a task node keeps it
                    // ADMIN only), so not open to anyone either.
                    Err(ZkError::NoNode) | Err(ZkError::NoAuth) => continue,
                    Err(e) => return Err(at(parent)(e)),
                }
            };
            for path in children {
                match zk.get_acl(&path).await {
                    Ok((acl, _)) => {
                        let open =
                            acl.iter().any(|a| a.scheme == "world" && beyond_read.iter().any(|p| a.perms.can(*p)));
                        if open {
                            found.push(path.clone());
                        }
                    }
                    Err(ZkError::NoNode) => continue,
                    Err(e) => return Err(at(&path)(e)),
                }
                next.push(path);
            }
        }
        level = next;
    }
    Ok(found)
}

/// Creates `path` with `acl`, or sets `acl` on it if it exists (its
/// ancestors must exist: `init` goes top down).
async fn put_acl(zk: &ZooKeeper, path: &str, acl: &[Acl], report: &mut InitReport) -> Result<(), InitError> {
    if zk.exists(path, false).await.map_err(at(path))?.is_none() {
        match zk.create(path, vec![], acl.to_vec(), zookeeper_async::CreateMode::Persistent).await {
            Ok(_) => {
                report.created.push(path.to_string());
                return Ok(());
            }
            Err(ZkError::NodeExists) => {}
            Err(e) => return Err(at(path)(e)),
        }
    }
    if zk.get_acl(path).await.map_err(at(path))?.0 != acl {
        zk.set_acl(path, acl.to_vec(), None).await.map_err(at(path))?;
        report.acl_set.push(path.to_string());
    }
    Ok(())
}

/// Sets `acl` on every node 1..=`depth` levels below `dir` whose ACL differs.
async fn reacl_below(
    zk: &ZooKeeper,
    dir: &str,
    depth: u32,
    acl: &[Acl],
    report: &mut InitReport,
) -> Result<(), InitError> {
    let mut level = vec![dir.to_string()];
    for _ in 0..depth {
        let mut next = Vec::new();
        for parent in &level {
            let children = match zk.get_children(parent, false).await {
                Ok(c) => c,
                Err(ZkError::NoNode) => continue,
                Err(e) => return Err(at(parent)(e)),
            };
            for c in children {
                let path = zk_recipes::join(parent, &c);
                match zk.get_acl(&path).await {
                    Ok((current, _)) if current != acl => match zk.set_acl(&path, acl.to_vec(), None).await {
                        Ok(_) => report.acl_set.push(path.clone()),
                        Err(ZkError::NoNode) => continue,
                        Err(e) => return Err(at(&path)(e)),
                    },
                    Ok(_) => {}
                    Err(ZkError::NoNode) => continue,
                    Err(e) => return Err(at(&path)(e)),
                }
                next.push(path);
            }
        }
        level = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_node_and_the_fix() {
        let refused = at("/r/config")(ZkError::NoAuth).to_string();
        assert!(refused.starts_with("not allowed: /r/config needs the operator identity;"), "{refused}");
        assert!(refused.contains("--extra-auth-file"), "{refused}");
        let planted = InitError::Planted { paths: vec!["/r/tasks/x".into(), "/r/outbox/x".into()] }.to_string();
        assert!(planted.contains("/r/tasks/x, /r/outbox/x") && planted.contains("zkctl rm"), "{planted}");
        assert!(at("/a/b")(ZkError::NoNode).to_string().contains("the parent of /a/b does not exist"));
    }
}

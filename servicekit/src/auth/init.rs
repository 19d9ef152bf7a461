//! `zkctl init`: the tree laid out with the policy's ACLs, and granted
//! again after a credentials rotation; never over nodes planted before.

use zookeeper_async::{Acl, Permission, ZkError, ZooKeeper};

use super::Policy;
use crate::layout::Layout;

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
pub async fn init(zk: &ZooKeeper, layout: &Layout, policy: &Policy) -> Result<InitReport, (String, ZkError)> {
    let planted = planted(zk, layout, policy).await?;
    if !planted.is_empty() {
        return Err((planted.join(", "), ZkError::InvalidACL));
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
pub async fn planted(zk: &ZooKeeper, layout: &Layout, policy: &Policy) -> Result<Vec<String>, (String, ZkError)> {
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
                    Err(e) => return Err((parent.clone(), e)),
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
                    Err(e) => return Err((path, e)),
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
async fn put_acl(zk: &ZooKeeper, path: &str, acl: &[Acl], report: &mut InitReport) -> Result<(), (String, ZkError)> {
    if zk.exists(path, false).await.map_err(|e| (path.to_string(), e))?.is_none() {
        match zk.create(path, vec![], acl.to_vec(), zookeeper_async::CreateMode::Persistent).await {
            Ok(_) => {
                report.created.push(path.to_string());
                return Ok(());
            }
            Err(ZkError::NodeExists) => {}
            Err(e) => return Err((path.to_string(), e)),
        }
    }
    if zk.get_acl(path).await.map_err(|e| (path.to_string(), e))?.0 != acl {
        zk.set_acl(path, acl.to_vec(), None).await.map_err(|e| (path.to_string(), e))?;
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
) -> Result<(), (String, ZkError)> {
    let mut level = vec![dir.to_string()];
    for _ in 0..depth {
        let mut next = Vec::new();
        for parent in &level {
            let children = match zk.get_children(parent, false).await {
                Ok(c) => c,
                Err(ZkError::NoNode) => continue,
                Err(e) => return Err((parent.clone(), e)),
            };
            for c in children {
                let path = zk_recipes::join(parent, &c);
                match zk.get_acl(&path).await {
                    Ok((current, _)) if current != acl => match zk.set_acl(&path, acl.to_vec(), None).await {
                        Ok(_) => report.acl_set.push(path.clone()),
                        Err(ZkError::NoNode) => continue,
                        Err(e) => return Err((path, e)),
                    },
                    Ok(_) => {}
                    Err(ZkError::NoNode) => continue,
                    Err(e) => return Err((path, e)),
                }
                next.push(path);
            }
        }
        level = next;
    }
    Ok(())
}

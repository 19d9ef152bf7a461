//! The ACL of every kind of node: least privilege per role.
//!
//! [`Policy`] is the single place where the ACL of every kind of node is
//! written; the services, `zkctl init` and the tests all take it from
//! here, so the tree has the same ACLs on the coordinator and on an Apache
//! ZooKeeper ensemble. The kinds of node, and who reads and writes each,
//! are in [`crate::layout`]; every right of every role is in
//! docs/security.md, "ACLs".

use std::collections::BTreeMap;

use zookeeper_async::{Acl, Permission};

use super::{DASHBOARD, HA_WORKER, OPERATOR, SYSTEM_A, SYSTEM_B};
use crate::layout::Kind;

/// What the operator keeps on the nodes the services own: ADMIN, to set
/// their ACLs again when credentials rotate, and READ, to list the
/// children it re-grants (and for `zkctl tree`). Not CREATE, DELETE or
/// WRITE: it cannot forge a task, a lock holder or a leader without first
/// changing an ACL, which is a deliberate, visible act.
fn operator_keeps() -> Permission {
    Permission::ADMIN | Permission::READ
}

fn perms(bits: &[Permission]) -> Permission {
    bits.iter().fold(Permission::NONE, |acc, p| acc | *p)
}

/// The ACL of each [`Kind`] of node ([`Policy::of`]). Built from every
/// role's digest id; `ids: None` gives open ACLs everywhere.
#[derive(Clone, Debug)]
pub struct Policy {
    ids: Option<BTreeMap<String, String>>,
}

impl Policy {
    /// Open ACLs (`world:anyone:cdrwa`) on every node.
    pub fn open() -> Policy {
        Policy { ids: None }
    }

    /// Least privilege, naming each role by its digest id (`role` ->
    /// `role:base64`), which [`ZkAuth`](super::ZkAuth) has checked are all
    /// there.
    pub(crate) fn least_privilege(ids: BTreeMap<String, String>) -> Policy {
        Policy { ids: Some(ids) }
    }

    pub fn is_open(&self) -> bool {
        self.ids.is_none()
    }

    /// `entries` as ACL entries, or the open ACL when there are no ids.
    fn acl(&self, entries: &[(&str, Permission)]) -> Vec<Acl> {
        let Some(ids) = &self.ids else { return Acl::open_unsafe().clone() };
        entries
            .iter()
            .map(|(who, p)| match (*who, ids.get(*who)) {
                ("anyone", _) => Acl::new(*p, "world", "anyone"),
                (_, Some(id)) => Acl::new(*p, "digest", id.clone()),
                // Every role's id is checked present when the ids are loaded.
                (role, None) => Acl::new(*p, "digest", format!("{role}:missing")),
            })
            .collect()
    }

    /// The system's root and the directories under it that only the
    /// operator lays out (`/config`, `/services`): anyone may list them,
    /// only the operator may add or remove entries.
    pub fn operator_dir(&self) -> Vec<Acl> {
        self.acl(&[(OPERATOR, Permission::ALL), ("anyone", Permission::READ)])
    }

    /// The ACL the operator gives a node it creates by hand (`zkctl create`,
    /// `set --create`): a `/config/<service>` node gets [`Policy::config`],
    /// anything else [`Policy::operator_dir`].
    pub fn operator_created(&self, path: &str) -> Vec<Acl> {
        match Kind::of(path) {
            Some(Kind::Config { service }) => self.config(&service),
            _ => self.operator_dir(),
        }
    }

    /// The ACL a node of this kind is created (or granted again) with.
    pub fn of(&self, kind: &Kind) -> Vec<Acl> {
        match kind {
            Kind::Root | Kind::ConfigDir | Kind::ServicesDir => self.operator_dir(),
            Kind::Config { service } => self.config(service),
            Kind::ServiceDir { service } => self.service_dir(service),
            Kind::ServiceMember { service } => self.service_member(service),
            Kind::TasksDir => self.tasks_dir(),
            Kind::Task => self.task(),
            Kind::OutboxDir => self.outbox_dir(),
            Kind::OutboxEntry => self.outbox_entry(),
            Kind::LocksDir => self.locks_dir(),
            Kind::Lock => self.lock(),
            Kind::HaDir => self.ha_dir(),
            Kind::HaGroup => self.ha_group(),
            Kind::Fencing => self.fencing(),
        }
    }

    /// `/config/<service>`: the operator writes it; the service and the
    /// dashboard read it.
    pub fn config(&self, service: &str) -> Vec<Acl> {
        self.acl(&[(OPERATOR, Permission::ALL), (service, Permission::READ), (DASHBOARD, Permission::READ)])
    }

    /// `/services/<service>`: only that service adds or removes members;
    /// anyone may list them. The operator keeps ADMIN on every node so it
    /// can re-apply ACLs when credentials rotate.
    pub fn service_dir(&self, service: &str) -> Vec<Acl> {
        self.acl(&[
            (OPERATOR, operator_keeps()),
            (service, perms(&[Permission::CREATE, Permission::DELETE, Permission::READ])),
            ("anyone", Permission::READ),
        ])
    }

    /// `/services/<service>/<instance>`: the service's own, readable by all.
    pub fn service_member(&self, service: &str) -> Vec<Acl> {
        self.acl(&[(OPERATOR, operator_keeps()), (service, Permission::ALL), ("anyone", Permission::READ)])
    }

    /// `/tasks`: system-a creates and reaps task nodes; the dashboard lists
    /// them; nobody else sees or touches them.
    pub fn tasks_dir(&self) -> Vec<Acl> {
        self.acl(&[
            (OPERATOR, operator_keeps()),
            (SYSTEM_A, perms(&[Permission::CREATE, Permission::DELETE, Permission::READ])),
            (DASHBOARD, Permission::READ),
        ])
    }

    /// `/tasks/<id>`: system-b writes the result, system-a reads it (and
    /// writes `failed` when the task never reached the queue).
    pub fn task(&self) -> Vec<Acl> {
        let rw = perms(&[Permission::READ, Permission::WRITE]);
        self.acl(&[(OPERATOR, Permission::ADMIN), (SYSTEM_A, rw), (SYSTEM_B, rw), (DASHBOARD, Permission::READ)])
    }

    /// `/outbox`: system-a's transactional outbox (tasks accepted but not
    /// yet confirmed by RabbitMQ). Only system-a writes or reaps entries;
    /// an entry holds the message system-b will act on, so nobody else may
    /// add one (that would be a forged task) or delete one (a lost task).
    pub fn outbox_dir(&self) -> Vec<Acl> {
        self.acl(&[
            (OPERATOR, operator_keeps()),
            (SYSTEM_A, perms(&[Permission::CREATE, Permission::DELETE, Permission::READ])),
            (DASHBOARD, Permission::READ),
        ])
    }

    /// `/outbox/<id>`: system-a's alone.
    pub fn outbox_entry(&self) -> Vec<Acl> {
        self.acl(&[(OPERATOR, Permission::ADMIN), (SYSTEM_A, Permission::ALL), (DASHBOARD, Permission::READ)])
    }

    /// `/locks`: only system-b makes lock directories in it.
    pub fn locks_dir(&self) -> Vec<Acl> {
        self.acl(&[
            (OPERATOR, operator_keeps()),
            (SYSTEM_B, perms(&[Permission::CREATE, Permission::DELETE, Permission::READ])),
            (DASHBOARD, Permission::READ),
        ])
    }

    /// `/locks/<entity>` and each waiter's node in it: system-b's alone, so
    /// nobody else can delete a holder's node or join the queue.
    pub fn lock(&self) -> Vec<Acl> {
        self.acl(&[(OPERATOR, operator_keeps()), (SYSTEM_B, Permission::ALL), (DASHBOARD, Permission::READ)])
    }

    /// `/ha`: only ha-workers make election groups in it.
    pub fn ha_dir(&self) -> Vec<Acl> {
        self.acl(&[
            (OPERATOR, operator_keeps()),
            (HA_WORKER, perms(&[Permission::CREATE, Permission::DELETE, Permission::READ])),
            (DASHBOARD, Permission::READ),
        ])
    }

    /// `/ha/<group>` and each candidate's node: the ha-workers' alone.
    pub fn ha_group(&self) -> Vec<Acl> {
        self.acl(&[(OPERATOR, operator_keeps()), (HA_WORKER, Permission::ALL), (DASHBOARD, Permission::READ)])
    }

    /// `/fencing`, the fencing epoch (`zk_recipes::fencing`): the operator
    /// lays it out; the roles that hold fenced resources (system-b's lock,
    /// the ha-workers' terms) read it and may advance it, which a holder
    /// does only after confirming it holds. Nobody may delete it.
    pub fn fencing(&self) -> Vec<Acl> {
        let rw = perms(&[Permission::READ, Permission::WRITE]);
        self.acl(&[(OPERATOR, Permission::ALL), (SYSTEM_B, rw), (HA_WORKER, rw), (DASHBOARD, Permission::READ)])
    }
}

/// The role that may do what `path` was refused for, in a sentence for an
/// operator: "not allowed: /config/system-b needs the operator identity".
/// The path's [`Kind`] decides, and [`Kind::of`] reads it under any root,
/// so a system under a root prefix is named the same.
pub fn not_allowed(path: &str) -> String {
    let who = match Kind::of(path) {
        Some(Kind::ConfigDir | Kind::Config { .. }) => format!("the {OPERATOR} identity"),
        Some(Kind::ServiceDir { service } | Kind::ServiceMember { service }) => format!("the {service} identity"),
        // A task node: system-a creates it, system-b answers it.
        Some(Kind::TasksDir | Kind::Task) => format!("the {SYSTEM_A} or {SYSTEM_B} identity"),
        Some(Kind::OutboxDir | Kind::OutboxEntry) => format!("the {SYSTEM_A} identity"),
        Some(Kind::LocksDir | Kind::Lock) => format!("the {SYSTEM_B} identity"),
        Some(Kind::HaDir | Kind::HaGroup) => format!("the {HA_WORKER} identity"),
        Some(Kind::Fencing) => {
            format!("the {OPERATOR} identity ({SYSTEM_B} and {HA_WORKER} may only advance it)")
        }
        Some(Kind::Root | Kind::ServicesDir) | None => "an identity its ACL grants (zkctl getacl shows it)".into(),
    };
    format!("not allowed: {path} needs {who}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_identity_needed() {
        assert_eq!(not_allowed("/config/system-b"), "not allowed: /config/system-b needs the operator identity");
        assert!(not_allowed("/r/locks/x").ends_with("the system-b identity"));
        assert!(not_allowed("/r/tasks").ends_with("the system-a or system-b identity"));
        assert!(not_allowed("/r/services/ha-worker/i1").ends_with("the ha-worker identity"));
        assert!(not_allowed("/r").ends_with("(zkctl getacl shows it)"));
    }

    /// The table in `crate::layout`'s docs, row by row, read back from the
    /// ACLs: who writes (W, C or D) and who reads, besides the operator,
    /// who reads every node but a task's.
    #[test]
    fn the_layout_table_is_the_policy() {
        let ids = super::super::ROLES.iter().map(|r| (r.to_string(), format!("{r}:hash"))).collect();
        let policy = Policy::least_privilege(ids);
        let service = |s: &str| s.to_string();
        let rows: [(Kind, &[&str], &[&str]); 15] = [
            (Kind::Root, &[OPERATOR], &["anyone"]),
            (Kind::ConfigDir, &[OPERATOR], &["anyone"]),
            (Kind::ServicesDir, &[OPERATOR], &["anyone"]),
            (Kind::Config { service: service(SYSTEM_B) }, &[OPERATOR], &[SYSTEM_B, DASHBOARD]),
            (Kind::ServiceDir { service: service(HA_WORKER) }, &[HA_WORKER], &["anyone"]),
            (Kind::ServiceMember { service: service(SYSTEM_A) }, &[SYSTEM_A], &["anyone"]),
            (Kind::TasksDir, &[SYSTEM_A], &[SYSTEM_A, DASHBOARD]),
            (Kind::Task, &[SYSTEM_A, SYSTEM_B], &[SYSTEM_A, SYSTEM_B, DASHBOARD]),
            (Kind::OutboxDir, &[SYSTEM_A], &[SYSTEM_A, DASHBOARD]),
            (Kind::OutboxEntry, &[SYSTEM_A], &[SYSTEM_A, DASHBOARD]),
            (Kind::LocksDir, &[SYSTEM_B], &[SYSTEM_B, DASHBOARD]),
            (Kind::Lock, &[SYSTEM_B], &[SYSTEM_B, DASHBOARD]),
            (Kind::HaDir, &[HA_WORKER], &[HA_WORKER, DASHBOARD]),
            (Kind::HaGroup, &[HA_WORKER], &[HA_WORKER, DASHBOARD]),
            (Kind::Fencing, &[OPERATOR, SYSTEM_B, HA_WORKER], &[SYSTEM_B, HA_WORKER, DASHBOARD]),
        ];
        let writes = [Permission::WRITE, Permission::CREATE, Permission::DELETE];
        for (kind, writers, readers) in rows {
            let acl = policy.of(&kind);
            let who = |a: &Acl| a.id.split(':').next().unwrap_or_default().to_string();
            let wrote: Vec<String> = acl.iter().filter(|a| writes.iter().any(|p| a.perms.can(*p))).map(who).collect();
            let mut read: Vec<String> =
                acl.iter().filter(|a| a.perms.can(Permission::READ)).map(who).filter(|r| r != OPERATOR).collect();
            if read.iter().any(|r| r == "anyone") {
                read = vec!["anyone".into()];
            }
            assert_eq!(wrote, writers, "who writes {kind:?}");
            assert_eq!(read, readers, "who reads {kind:?}");
        }
        assert!(!policy.of(&Kind::Task).iter().any(|a| a.id.starts_with(OPERATOR) && a.perms.can(Permission::READ)));
    }
}

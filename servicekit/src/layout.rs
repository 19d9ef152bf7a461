//! The tree the four scenarios share, named once.
//!
//! Every znode path the system uses is built here, under the system's root
//! (`--root`, empty for `/`), and nowhere else: the services, the ACL
//! [`Policy`](crate::auth::Policy), `zkctl init`, zkctl's commands and the
//! dashboard all ask a [`Layout`], and a path is told back into what it is
//! with [`Kind::of`]. Who may do what on each node is the policy's business
//! (one function per [`Kind`]); the table says it in short (rights in full:
//! docs/security.md, "ACLs").
//!
//! | path | what it is | who writes | who reads |
//! |---|---|---|---|
//! | root, `/config`, `/services` | the system's directories | operator (adds and removes entries) | anyone |
//! | `/config/<service>` | the service's live settings (JSON) | operator | that service, dashboard |
//! | `/services/<service>` | the service's registry | that service (adds and removes members) | anyone |
//! | `/services/<service>/<instance>` | a live instance (ephemeral) | that service | anyone |
//! | `/tasks` | the tasks | system-a (creates and reaps) | system-a, dashboard |
//! | `/tasks/<id>` | a task: what it asks, then its result (the source of truth) | system-a creates (and marks `failed`), system-b answers | system-a, system-b, dashboard |
//! | `/outbox`, `/outbox/<id>` | a task accepted but not yet confirmed by RabbitMQ | system-a | system-a, dashboard |
//! | `/locks`, `/locks/<entity>/<waiter>` | the entity's lock queue (ephemeral-sequential) | system-b | system-b, dashboard |
//! | `/ha`, `/ha/<group>/<candidate>` | the group's election (ephemeral-sequential) | ha-worker | ha-worker, dashboard |
//! | `/fencing` | the fencing epoch (a number) | operator lays it out; system-b and ha-worker advance it (a confirmed holder) | system-b, ha-worker, dashboard |
//!
//! Besides, the operator reads every node but a task's, and keeps admin on
//! every node, to grant it again when credentials rotate: on a node a
//! service owns it cannot write without first changing the ACL, a
//! deliberate and visible act. The policy's own test
//! (`the_layout_table_is_the_policy`) reads this table back from the ACLs.

use crate::auth::SERVICES as SERVICE_NAMES;

/// The system's nodes directly under the root, in the order `zkctl init`
/// lays them out: six directories, then `/fencing`, a single node.
pub const TOP_LEVEL: [&str; 7] = [CONFIG, SERVICES, TASKS, OUTBOX, LOCKS, HA, FENCING];

pub const CONFIG: &str = "config";
pub const SERVICES: &str = "services";
pub const TASKS: &str = "tasks";
pub const OUTBOX: &str = "outbox";
pub const LOCKS: &str = "locks";
pub const HA: &str = "ha";
pub const FENCING: &str = "fencing";

/// What a node of the system's tree is: its ACL
/// ([`Policy::of`](crate::auth::Policy::of)) and the identity a refusal on
/// it names ([`not_allowed`](crate::auth::not_allowed)) follow from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The system's root.
    Root,
    /// `/config`.
    ConfigDir,
    /// `/config/<service>`.
    Config { service: String },
    /// `/services`.
    ServicesDir,
    /// `/services/<service>`.
    ServiceDir { service: String },
    /// `/services/<service>/<instance>`.
    ServiceMember { service: String },
    /// `/tasks`.
    TasksDir,
    /// `/tasks/<id>`.
    Task,
    /// `/outbox`.
    OutboxDir,
    /// `/outbox/<id>`.
    OutboxEntry,
    /// `/locks`.
    LocksDir,
    /// `/locks/<entity>` and each waiter's node in it.
    Lock,
    /// `/ha`.
    HaDir,
    /// `/ha/<group>` and each candidate's node in it.
    HaGroup,
    /// `/fencing`.
    Fencing,
}

impl Kind {
    /// What `path` is, under any root: the first segment that names one of
    /// the system's top-level nodes ([`TOP_LEVEL`]) decides, so a tool that
    /// is not told the root (zkctl's commands) names a system under
    /// `/demo` the same. `None` for a path the layout does not define: the
    /// root, the root's other children, or a node deeper than the table.
    pub fn of(path: &str) -> Option<Kind> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let at = segments.iter().position(|s| TOP_LEVEL.contains(s))?;
        let kind = match segments[at..] {
            [CONFIG] => Kind::ConfigDir,
            [CONFIG, service] => Kind::Config { service: service.to_string() },
            [SERVICES] => Kind::ServicesDir,
            [SERVICES, service] => Kind::ServiceDir { service: service.to_string() },
            [SERVICES, service, _] => Kind::ServiceMember { service: service.to_string() },
            [TASKS] => Kind::TasksDir,
            [TASKS, _] => Kind::Task,
            [OUTBOX] => Kind::OutboxDir,
            [OUTBOX, _] => Kind::OutboxEntry,
            [LOCKS] => Kind::LocksDir,
            [LOCKS, _] | [LOCKS, _, _] => Kind::Lock,
            [HA] => Kind::HaDir,
            [HA, _] | [HA, _, _] => Kind::HaGroup,
            [FENCING] => Kind::Fencing,
            _ => return None,
        };
        Some(kind)
    }
}

/// The paths of one system, under its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The root without a trailing `/`: empty for a system that owns `/`.
    root: String,
}

impl Layout {
    pub fn new(root: &str) -> Layout {
        Layout { root: root.trim_end_matches('/').to_string() }
    }

    /// `<root><path>`, for a path under the root (`/x/y`).
    fn under(&self, path: &str) -> String {
        format!("{}{path}", self.root)
    }

    /// The root itself (`/` when the system owns the whole tree).
    pub fn root(&self) -> String {
        if self.root.is_empty() {
            "/".into()
        } else {
            self.root.clone()
        }
    }

    /// The root as a prefix to put before `/x`: empty when the system owns
    /// `/`.
    pub fn prefix(&self) -> &str {
        &self.root
    }

    /// A node directly under the root, by one of [`TOP_LEVEL`]'s names.
    pub fn dir(&self, name: &str) -> String {
        self.under(&format!("/{name}"))
    }

    pub fn config_dir(&self) -> String {
        self.dir(CONFIG)
    }

    pub fn config(&self, service: &str) -> String {
        self.under(&format!("/{CONFIG}/{service}"))
    }

    pub fn services(&self) -> String {
        self.dir(SERVICES)
    }

    pub fn service(&self, service: &str) -> String {
        self.under(&format!("/{SERVICES}/{service}"))
    }

    /// An instance's registration node (its status is its data).
    pub fn member(&self, service: &str, instance: &str) -> String {
        zk_recipes::join(&self.service(service), instance)
    }

    pub fn tasks(&self) -> String {
        self.dir(TASKS)
    }

    pub fn task(&self, id: &str) -> String {
        self.under(&format!("/{TASKS}/{id}"))
    }

    pub fn outbox(&self) -> String {
        self.dir(OUTBOX)
    }

    pub fn outbox_entry(&self, id: &str) -> String {
        self.under(&format!("/{OUTBOX}/{id}"))
    }

    pub fn locks(&self) -> String {
        self.dir(LOCKS)
    }

    pub fn lock(&self, entity: &str) -> String {
        self.under(&format!("/{LOCKS}/{entity}"))
    }

    pub fn ha(&self) -> String {
        self.dir(HA)
    }

    pub fn ha_group(&self, group: &str) -> String {
        self.under(&format!("/{HA}/{group}"))
    }

    pub fn fencing(&self) -> String {
        self.dir(FENCING)
    }

    /// The system's own nodes directly under the root ([`TOP_LEVEL`]); the
    /// root's other children are not the system's (on a shared ensemble,
    /// another system's).
    pub fn top_level(&self) -> Vec<String> {
        TOP_LEVEL.iter().map(|name| self.dir(name)).collect()
    }

    /// Every node `zkctl init` lays out, parents first, and what each is:
    /// the root, `/config` and a `/config/<service>` per service (empty
    /// data means defaults), `/services` and a `/services/<service>` per
    /// service, `/tasks`, `/outbox`, `/locks`, `/ha`, and `/fencing`.
    pub fn laid_out(&self) -> Vec<(String, Kind)> {
        let mut plan = vec![(self.root(), Kind::Root), (self.config_dir(), Kind::ConfigDir)];
        for s in SERVICE_NAMES {
            plan.push((self.config(s), Kind::Config { service: s.to_string() }));
        }
        plan.push((self.services(), Kind::ServicesDir));
        for s in SERVICE_NAMES {
            plan.push((self.service(s), Kind::ServiceDir { service: s.to_string() }));
        }
        plan.extend([
            (self.tasks(), Kind::TasksDir),
            (self.outbox(), Kind::OutboxDir),
            (self.locks(), Kind::LocksDir),
            (self.ha(), Kind::HaDir),
            (self.fencing(), Kind::Fencing),
        ]);
        plan
    }

    /// Where the services make their own nodes, how many levels below the
    /// directory they go, and what each is: what `zkctl init` grants again
    /// after a credentials rotation. A lock's and an election's nodes are
    /// two levels down (`/locks/<entity>/<waiter>`).
    pub fn service_made(&self) -> Vec<(String, u32, Kind)> {
        let mut made: Vec<(String, u32, Kind)> = SERVICE_NAMES
            .iter()
            .map(|s| (self.service(s), 1, Kind::ServiceMember { service: s.to_string() }))
            .collect();
        made.extend([
            (self.tasks(), 1, Kind::Task),
            (self.outbox(), 1, Kind::OutboxEntry),
            (self.locks(), 2, Kind::Lock),
            (self.ha(), 2, Kind::HaGroup),
        ]);
        made
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_under_the_root() {
        let l = Layout::new("/demo/");
        assert_eq!(l.task("t1"), "/demo/tasks/t1");
        assert_eq!(l.lock("acct-1"), "/demo/locks/acct-1");
        assert_eq!(l.fencing(), "/demo/fencing");
        assert_eq!(l.root(), "/demo");
        let top = Layout::new("");
        assert_eq!(top.config("system-b"), "/config/system-b");
        assert_eq!(top.root(), "/");
        assert_eq!(top.dir(HA), "/ha");
        assert_eq!(top.prefix(), "");
    }

    #[test]
    fn every_laid_out_node_is_told_back_as_its_kind() {
        let l = Layout::new("/demo");
        for (path, kind) in l.laid_out().into_iter().skip(1) {
            assert_eq!(Kind::of(&path), Some(kind), "{path}");
        }
        for (dir, depth, kind) in l.service_made() {
            let mut path = dir;
            for level in 0..depth {
                path = format!("{path}/n{level}");
                assert_eq!(Kind::of(&path), Some(kind.clone()), "{path}");
            }
        }
        assert_eq!(l.laid_out()[0], (l.root(), Kind::Root));
    }

    #[test]
    fn kinds_under_any_root() {
        let service = "system-b".to_string();
        assert_eq!(Kind::of("/config/system-b"), Some(Kind::Config { service: service.clone() }));
        assert_eq!(Kind::of("/r/services/system-b/i1"), Some(Kind::ServiceMember { service }));
        assert_eq!(Kind::of("/r/locks/acct-1/lock-0000000001"), Some(Kind::Lock));
        assert_eq!(Kind::of("/r"), None);
        assert_eq!(Kind::of("/r/tasks/t1/extra"), None);
    }
}

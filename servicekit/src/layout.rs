//! The tree the four scenarios share, named once.
//!
//! Every znode path the system uses is built here, under the system's root
//! (`--root`, empty for `/`), and nowhere else: the services, the ACL
//! [`Policy`](crate::auth::Policy), `zkctl init` and the dashboard all ask a
//! [`Layout`]. Who may do what on each node is the policy's business; the
//! table below says it in short (the full table is in docs/security.md).
//!
//! | path | what it is | written by |
//! |---|---|---|
//! | `/config/<service>` | the service's live settings (JSON) | operator |
//! | `/services/<service>/<instance>` | a live instance (ephemeral) | that service |
//! | `/tasks/<id>` | a task: what it asks, then its result (the source of truth) | system-a creates, system-b answers |
//! | `/outbox/<id>` | a task accepted but not yet confirmed by RabbitMQ | system-a |
//! | `/locks/<entity>/<waiter>` | the entity's lock queue (ephemeral-sequential) | system-b |
//! | `/ha/<group>/<candidate>` | the group's election (ephemeral-sequential) | ha-worker |
//! | `/fencing` | the fencing epoch (a number) | operator lays it out; a confirmed holder advances it |

/// The directories directly under the root, in the order `zkctl init` lays
/// them out. `/fencing` is a single node, not a directory.
pub const DIRS: [&str; 6] = [CONFIG, SERVICES, TASKS, OUTBOX, LOCKS, HA];

pub const CONFIG: &str = "config";
pub const SERVICES: &str = "services";
pub const TASKS: &str = "tasks";
pub const OUTBOX: &str = "outbox";
pub const LOCKS: &str = "locks";
pub const HA: &str = "ha";
pub const FENCING: &str = "fencing";

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

    /// A directory directly under the root, by one of [`DIRS`]' names.
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
        self.under(&format!("/{FENCING}"))
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
    }
}

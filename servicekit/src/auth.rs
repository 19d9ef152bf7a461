//! Who each process is to ZooKeeper, and what each may do: digest
//! identities and the ACLs every znode of the scenarios is created with.
//!
//! # Identities
//! Five roles, each a ZooKeeper `digest` identity named after the role:
//! `operator` (zkctl: lays out the tree, writes `/config/*`), `system-a`,
//! `system-b`, `ha-worker` (the services) and `dashboard` (reads only).
//! A process proves its identity with `addauth digest <role>:<password>`;
//! the server then holds `digest:<role>:<base64(sha1(role:password))>` for
//! the connection, and an ACL entry names that digest id.
//!
//! # The credentials file
//! One per process, secret (mode 0600), given with `--zk-credentials-file`
//! or `ZK_CREDENTIALS_FILE`, never as a flag value (a flag's value is in
//! `ps` and in `/proc/<pid>/cmdline` for every local user to read):
//!
//! ```text
//! # this process's identity: secret
//! auth = system-b:9QmV...
//! # every identity's digest id: public, the same in every file
//! id = operator:x4Kq...=
//! id = system-a:...
//! ```
//!
//! A service needs the *other* roles' digest ids because the nodes it
//! creates must name them: a task node created by system-a grants system-b
//! the right to write the result. The ids are hashes of long random
//! passwords, so they can be public; the passwords never leave the file.
//! Without a file, `ZK_AUTH` (`role:password`) and `ZK_ACL_IDS` (the ids,
//! comma separated) say the same from the environment.
//!
//! # No credentials
//! A process given none connects anonymously and creates open nodes
//! (`world:anyone:cdrwa`), as a scratch setup or a test of the recipes
//! does. It says so in a warning at start. `scripts/run.sh` and
//! `docker-compose.yml` always provision credentials.
//!
//! # The policy
//! [`Policy`] is the single place where the ACL of every kind of node is
//! written; the services, `zkctl init` and the tests all take it from
//! here, so the tree has the same ACLs on the coordinator and on an Apache
//! ZooKeeper ensemble. The table is in `docs/security.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use zookeeper_async::{Acl, Permission, ZkError, ZooKeeper};

/// The role names, which are also the digest user names.
pub const OPERATOR: &str = "operator";
pub const SYSTEM_A: &str = "system-a";
pub const SYSTEM_B: &str = "system-b";
pub const HA_WORKER: &str = "ha-worker";
pub const DASHBOARD: &str = "dashboard";
/// Every role, in the order files list them.
pub const ROLES: [&str; 5] = [OPERATOR, SYSTEM_A, SYSTEM_B, HA_WORKER, DASHBOARD];
/// The services that read a `/config/<service>` node and register under
/// `/services/<service>`.
pub const SERVICES: [&str; 3] = [SYSTEM_A, SYSTEM_B, HA_WORKER];

/// `user:password` for the `digest` scheme. Its `Debug` and `Display` show
/// the user only, so a credentials value that reaches a log line or an
/// error message gives nothing away.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: String,
}

impl Credentials {
    /// Parses `user:password`; both parts must be non-empty.
    pub fn parse(text: &str) -> Result<Credentials, AuthError> {
        match text.trim().split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                Ok(Credentials { user: user.to_string(), password: password.to_string() })
            }
            _ => Err(AuthError::Malformed("credentials must be user:password, both non-empty".into())),
        }
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password, for the one place that must send it: the RabbitMQ
    /// login (the ZooKeeper side sends [`Credentials::auth_packet`]).
    pub(crate) fn password(&self) -> &str {
        &self.password
    }

    /// The digest id the server will hold for this identity:
    /// `user:base64(sha1("user:password"))`.
    pub fn digest_id(&self) -> String {
        digest_id(&self.user, &self.password)
    }

    /// The payload of the `addauth digest` packet.
    pub fn auth_packet(&self) -> (String, Vec<u8>) {
        ("digest".to_string(), format!("{}:{}", self.user, self.password).into_bytes())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}:<redacted>)", self.user)
    }
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:<redacted>", self.user)
    }
}

/// `user:base64(sha1("user:password"))`: what ZooKeeper's
/// `DigestAuthenticationProvider` derives from an `addauth`, and what an ACL
/// entry (and the server's `superDigest`) names.
pub fn digest_id(user: &str, password: &str) -> String {
    zk_wire::auth::digest_id(user, password)
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the credentials file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Malformed(String),
}

/// A process's identity and every role's digest id: what a credentials
/// file holds.
#[derive(Clone, Debug, Default)]
pub struct ZkAuth {
    /// This process's identity; `None` connects anonymously.
    pub credentials: Option<Credentials>,
    /// Role name -> digest id (`role:base64`), for the ACLs.
    pub ids: BTreeMap<String, String>,
}

impl ZkAuth {
    /// Reads a credentials file (format in the module docs). Error messages
    /// name the file and the line number, never a line's content.
    pub fn from_file(path: &Path) -> Result<ZkAuth, AuthError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| AuthError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text).map_err(|e| AuthError::Malformed(format!("{}: {e}", path.display())))
    }

    /// Parses the text of a credentials file.
    pub fn parse(text: &str) -> Result<ZkAuth, AuthError> {
        let mut out = ZkAuth::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| AuthError::Malformed(format!("line {}: {why}", n + 1));
            let (key, value) = line.split_once('=').ok_or_else(|| bad("expected `auth = ...` or `id = ...`"))?;
            match key.trim() {
                "auth" => {
                    let c = Credentials::parse(value).map_err(|_| bad("auth must be user:password"))?;
                    out.credentials = Some(c);
                }
                "id" => out.add_id(value.trim()).map_err(|e| bad(&e))?,
                _ => return Err(bad("expected `auth = ...` or `id = ...`")),
            }
        }
        out.check()?;
        Ok(out)
    }

    /// Only the `auth = user:password` line of a credentials file, with no
    /// ids and no check that the user is a role: for a second identity a
    /// connection holds for one command, such as the previous operator or
    /// `super` during a rotation.
    pub fn credentials_from_file(path: &Path) -> Result<Credentials, AuthError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| AuthError::Read { path: path.to_path_buf(), source })?;
        let line = text
            .lines()
            .filter_map(|l| l.trim().split_once('='))
            .find(|(k, _)| k.trim() == "auth")
            .ok_or_else(|| AuthError::Malformed(format!("{}: no `auth = user:password` line", path.display())))?;
        Credentials::parse(line.1)
            .map_err(|_| AuthError::Malformed(format!("{}: auth must be user:password", path.display())))
    }

    /// From `ZK_AUTH` (`role:password`) and `ZK_ACL_IDS` (comma-separated
    /// digest ids), as a credentials file would give them.
    pub fn from_values(auth: Option<&str>, ids: Option<&str>) -> Result<ZkAuth, AuthError> {
        let mut out = ZkAuth::default();
        if let Some(a) = auth {
            out.credentials =
                Some(Credentials::parse(a).map_err(|_| AuthError::Malformed("ZK_AUTH must be user:password".into()))?);
        }
        for id in ids.unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()) {
            out.add_id(id).map_err(|e| AuthError::Malformed(format!("ZK_ACL_IDS: {e}")))?;
        }
        out.check()?;
        Ok(out)
    }

    /// A set of credentials for every role with fresh random passwords:
    /// `(role, file text)` per role. What `zkctl gen-credentials` writes.
    pub fn generate() -> Vec<(String, String)> {
        let passwords: Vec<(String, String)> = ROLES
            .iter()
            .map(|r| {
                // 256 bits from a CSPRNG seeded by the OS, as URL-safe
                // base64: no dictionary attack on the public digest id.
                let bytes: [u8; 32] = rand::random();
                (r.to_string(), base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
            })
            .collect();
        let ids: String = passwords.iter().map(|(r, p)| format!("id = {}\n", digest_id(r, p))).collect();
        passwords
            .iter()
            .map(|(role, password)| {
                let text = format!(
                    "# ZooKeeper credentials of `{role}`. Secret: keep it mode 0600.\n\
                     auth = {role}:{password}\n\
                     # Every identity's digest id (public; the same in every file).\n{ids}"
                );
                (role.clone(), text)
            })
            .collect()
    }

    fn add_id(&mut self, id: &str) -> Result<(), String> {
        let Some((role, hash)) = id.split_once(':') else {
            return Err("an id is role:base64(sha1(role:password))".into());
        };
        if !ROLES.contains(&role) {
            return Err(format!("unknown role {role:?} (known: {})", ROLES.join(", ")));
        }
        if hash.is_empty() {
            return Err(format!("the id of {role} has no hash"));
        }
        self.ids.insert(role.to_string(), id.to_string());
        Ok(())
    }

    /// Credentials without every id would create nodes that lock a peer
    /// out; and an identity must match its own listed id.
    fn check(&self) -> Result<(), AuthError> {
        let Some(c) = &self.credentials else { return Ok(()) };
        let missing: Vec<&str> = ROLES.iter().copied().filter(|r| !self.ids.contains_key(*r)).collect();
        if !missing.is_empty() {
            return Err(AuthError::Malformed(format!("the digest ids of {} are missing", missing.join(", "))));
        }
        if self.ids.get(c.user()) != Some(&c.digest_id()) {
            return Err(AuthError::Malformed(format!(
                "the password of {} does not match its listed id (a file from another deployment?)",
                c.user()
            )));
        }
        Ok(())
    }

    /// The ACLs to create nodes with: least privilege when this process has
    /// an identity, open otherwise.
    pub fn policy(&self) -> Policy {
        match &self.credentials {
            Some(_) => Policy { ids: Some(self.ids.clone()) },
            None => Policy { ids: None },
        }
    }

    /// The auth packets to send on every connection.
    pub fn auth_packets(&self) -> Vec<(String, Vec<u8>)> {
        self.credentials.iter().map(Credentials::auth_packet).collect()
    }
}

/// The flags that carry an identity: add to a binary's `Args` with
/// `#[command(flatten)]`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AuthArgs {
    /// File with this process's ZooKeeper identity and every role's digest
    /// id (see docs/security.md). Without it, `ZK_AUTH` and `ZK_ACL_IDS`;
    /// without those, anonymous with open ACLs.
    #[arg(long, env = "ZK_CREDENTIALS_FILE", value_name = "PATH")]
    pub zk_credentials_file: Option<PathBuf>,
}

impl AuthArgs {
    /// The file, else `ZK_AUTH`/`ZK_ACL_IDS`, else anonymous.
    pub fn load(&self) -> anyhow::Result<ZkAuth> {
        use anyhow::Context;
        if let Some(path) = &self.zk_credentials_file {
            warn_if_shared(path);
            return ZkAuth::from_file(path).context("--zk-credentials-file / ZK_CREDENTIALS_FILE");
        }
        let auth = std::env::var("ZK_AUTH").ok().filter(|s| !s.is_empty());
        let ids = std::env::var("ZK_ACL_IDS").ok();
        ZkAuth::from_values(auth.as_deref(), ids.as_deref()).context("ZK_AUTH / ZK_ACL_IDS")
    }
}

/// Says so when other users can read the credentials file: its password
/// is the identity, and a file readable by the group or everyone hands it
/// to every account on the host. A warning, not a refusal: some secret
/// stores (docker's among them) mount files 0444 in a container that runs
/// one process, where that is harmless.
pub(crate) fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else { return };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return;
    }
    let why =
        format!("the credentials file {} is readable by other users (mode {mode:o}): `chmod 600` it", path.display());
    // zkctl installs no logger; the services log to stderr through one.
    if tracing::dispatcher::has_been_set() {
        tracing::warn!("{why}");
    } else {
        eprintln!("warning: {why}");
    }
}

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

/// The ACL of each kind of node, relative to the system's root. Built from
/// every role's digest id; `ids: None` gives open ACLs everywhere.
#[derive(Clone, Debug)]
pub struct Policy {
    ids: Option<BTreeMap<String, String>>,
}

impl Policy {
    /// Open ACLs (`world:anyone:cdrwa`) on every node.
    pub fn open() -> Policy {
        Policy { ids: None }
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
        let segments: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        match segments.as_slice() {
            [.., "config", service] => self.config(service),
            _ => self.operator_dir(),
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

/// `root` + `path`, with an empty root meaning `/`.
fn under(root: &str, path: &str) -> String {
    format!("{}{path}", root.trim_end_matches('/'))
}

/// What `zkctl init` did, for its report.
#[derive(Debug, Default)]
pub struct InitReport {
    pub created: Vec<String>,
    pub acl_set: Vec<String>,
}

/// Lays out the system's tree under `root` with the policy's ACLs: the
/// root itself, `/config/<service>` for each service (empty data means
/// defaults), `/services/<service>`, `/tasks`, `/locks`, `/ha`. Nodes that
/// exist get their ACL set again, and so do the nodes the services created
/// below them (task, lock, election and member nodes): after a credentials
/// rotation, one `init` with the new ids re-grants every node. Run as the
/// operator (or with the super identity the first time, when an old tree
/// is in the way).
///
/// An empty `root` means the system owns `/`: its ACL is set too, so an
/// anonymous client cannot add top-level nodes beside ours. On a shared
/// ensemble give each system its own root instead.
pub async fn init(zk: &ZooKeeper, root: &str, policy: &Policy) -> Result<InitReport, (String, ZkError)> {
    let planted = planted(zk, root, policy).await?;
    if !planted.is_empty() {
        return Err((planted.join(", "), ZkError::InvalidACL));
    }
    let mut report = InitReport::default();
    let mut plan: Vec<(String, Vec<Acl>)> = vec![(under(root, ""), policy.operator_dir())];
    if plan[0].0.is_empty() {
        plan[0].0 = "/".into();
    }
    plan.push((under(root, "/config"), policy.operator_dir()));
    for s in SERVICES {
        plan.push((under(root, &format!("/config/{s}")), policy.config(s)));
    }
    plan.push((under(root, "/services"), policy.operator_dir()));
    for s in SERVICES {
        plan.push((under(root, &format!("/services/{s}")), policy.service_dir(s)));
    }
    plan.push((under(root, "/tasks"), policy.tasks_dir()));
    plan.push((under(root, "/outbox"), policy.outbox_dir()));
    plan.push((under(root, "/locks"), policy.locks_dir()));
    plan.push((under(root, "/ha"), policy.ha_dir()));
    // Laid out empty (epoch 0) and never written by init again: an epoch
    // only grows, and init must not undo an advance.
    plan.push((under(root, "/fencing"), policy.fencing()));
    for (path, acl) in &plan {
        put_acl(zk, path, acl, &mut report).await?;
    }
    // What the services created, granted again (credentials rotation).
    for s in SERVICES {
        reacl_below(zk, &under(root, &format!("/services/{s}")), 1, &policy.service_member(s), &mut report).await?;
    }
    reacl_below(zk, &under(root, "/tasks"), 1, &policy.task(), &mut report).await?;
    reacl_below(zk, &under(root, "/outbox"), 1, &policy.outbox_entry(), &mut report).await?;
    reacl_below(zk, &under(root, "/locks"), 2, &policy.lock(), &mut report).await?;
    reacl_below(zk, &under(root, "/ha"), 2, &policy.ha_group(), &mut report).await?;
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
pub async fn planted(zk: &ZooKeeper, root: &str, policy: &Policy) -> Result<Vec<String>, (String, ZkError)> {
    let mut found = Vec::new();
    if policy.is_open() {
        return Ok(found);
    }
    let beyond_read = [Permission::WRITE, Permission::CREATE, Permission::DELETE, Permission::ADMIN];
    // The system's directories and what is below them; not the root's
    // other children, which on a shared ensemble belong to others.
    let mut level: Vec<String> = ["/config", "/services", "/tasks", "/outbox", "/locks", "/ha", "/fencing"]
        .iter()
        .map(|d| under(root, d))
        .collect();
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

/// The role that may do what `path` was refused for, in a sentence for an
/// operator: "not allowed: /config/system-b needs the operator identity".
/// The first of the system's directory names in the path decides, so a
/// system under a root prefix is named the same.
pub fn not_allowed(path: &str) -> String {
    let known = ["config", "services", "tasks", "outbox", "locks", "ha", "fencing"];
    let segments: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let at = segments.iter().position(|s| known.contains(s)).unwrap_or(segments.len());
    let mut parts = segments[at..].iter().copied();
    let who = match (parts.next(), parts.next()) {
        (Some("config"), _) => "the operator identity".to_string(),
        (Some("services"), Some(s)) => format!("the {s} identity"),
        (Some("tasks"), _) => "the system-a or system-b identity".to_string(),
        (Some("outbox"), _) => "the system-a identity".to_string(),
        (Some("locks"), _) => "the system-b identity".to_string(),
        (Some("ha"), _) => "the ha-worker identity".to_string(),
        (Some("fencing"), _) => "the operator identity (system-b and ha-worker may only advance it)".to_string(),
        _ => "an identity its ACL grants (zkctl getacl shows it)".to_string(),
    };
    format!("not allowed: {path} needs {who}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_id_is_zookeepers() {
        // Computed independently: base64(sha1(b"super:secret")) in Python's
        // hashlib; the live check against Apache ZooKeeper is tests/acl.rs.
        assert_eq!(digest_id("super", "secret"), "super:lK75jTNcA+U9vtVEw5vB51mj/w4=");
    }

    #[test]
    fn credentials_never_show_the_password() {
        let c = Credentials::parse("system-b:hunter2").expect("parse");
        assert!(!format!("{c:?} {c}").contains("hunter2"));
        let auth = ZkAuth { credentials: Some(c), ids: BTreeMap::new() };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }

    #[test]
    fn generated_files_parse_and_match() {
        let files = ZkAuth::generate();
        assert_eq!(files.len(), ROLES.len());
        for (role, text) in files {
            let auth = ZkAuth::parse(&text).expect("a generated file parses");
            assert_eq!(auth.credentials.expect("auth").user(), role);
            assert_eq!(auth.ids.len(), ROLES.len());
        }
    }

    #[test]
    fn a_bad_file_is_refused_without_echoing_it() {
        let e = ZkAuth::parse("auth = system-b\n").expect_err("no password");
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = ZkAuth::parse("auth = system-b:pw\n").expect_err("ids missing");
        assert!(e.to_string().contains("missing") && !e.to_string().contains("pw"), "{e}");
    }

    #[test]
    fn the_environment_says_what_a_file_says() {
        let files = ZkAuth::generate();
        let file = ZkAuth::parse(&files[2].1).expect("parse");
        let ids: Vec<String> = file.ids.values().cloned().collect();
        let c = file.credentials.clone().expect("auth");
        let env = ZkAuth::from_values(Some(&format!("{}:{}", c.user, c.password)), Some(&ids.join(",")))
            .expect("from the environment");
        assert_eq!((env.credentials, env.ids), (file.credentials, file.ids));
        let e = ZkAuth::from_values(Some("system-b:wrong"), Some(&ids.join(","))).expect_err("mismatch");
        assert!(e.to_string().contains("does not match") && !e.to_string().contains("wrong"), "{e}");
        assert!(ZkAuth::from_values(None, None).expect("anonymous").policy().is_open());
    }

    #[test]
    fn refusals_name_the_identity_needed() {
        assert_eq!(not_allowed("/config/system-b"), "not allowed: /config/system-b needs the operator identity");
        assert!(not_allowed("/r/locks/x").ends_with("the system-b identity"));
    }
}

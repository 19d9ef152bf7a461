//! Who each process is to ZooKeeper, and what each may do: digest
//! identities and the ACLs every znode of the scenarios is created with.
//!
//! # Map
//! - this file: the roles, which are also the digest user names.
//! - [`credentials`]: a process's identity ([`Credentials`], [`ZkAuth`]),
//!   the credentials file and its flags ([`AuthArgs`]), and
//!   [`ZkAuth::generate`] for a fresh set.
//! - [`policy`]: the ACL of every kind of node ([`Policy`]), and
//!   [`not_allowed`], the sentence a refusal is reported in.
//! - [`init`](mod@init): `zkctl init`, which lays the tree out with the policy's ACLs
//!   and grants it again after a rotation, refusing nodes planted before.
//!
//! # Identities
//! Five roles, each a ZooKeeper `digest` identity named after the role:
//! `operator` (zkctl: lays out the tree, writes `/config/*`), `system-a`,
//! `system-b`, `ha-worker` (the services) and `dashboard` (reads only).
//! A process proves its identity with `addauth digest <role>:<password>`;
//! the server then holds `digest:<role>:<base64(sha1(role:password))>` for
//! the connection, and an ACL entry names that digest id.
//!
//! # No credentials
//! A process given none connects anonymously and creates open nodes
//! (`world:anyone:cdrwa`), as a scratch setup or a test of the recipes
//! does. It says so in a warning at start. `scripts/run.sh` and
//! `docker-compose.yml` always provision credentials.

pub mod credentials;
pub mod init;
pub mod policy;

pub(crate) use credentials::warn_if_shared;
pub use credentials::{digest_id, generate_admin_token, AuthArgs, AuthError, Credentials, ZkAuth};
pub use init::{init, planted, InitError, InitReport};
pub use policy::{not_allowed, Policy};

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

//! A process's identity, and every role's digest id, from a credentials
//! file or the environment.
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

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;

use super::{Policy, ROLES};

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
            Some(_) => Policy::least_privilege(self.ids.clone()),
            None => Policy::open(),
        }
    }

    /// The auth packets to send on every connection.
    pub fn auth_packets(&self) -> Vec<(String, Vec<u8>)> {
        self.credentials.iter().map(Credentials::auth_packet).collect()
    }
}

/// A fresh admin token for the coordinator's admin API: 256 bits from the
/// OS-seeded CSPRNG, as 64 hex digits (what `scripts/run.sh` makes with
/// `od`).
pub fn generate_admin_token() -> String {
    rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect()
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
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else { return };
    // The owner of /proc/self is this process's effective user.
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    let Some((warn, why)) = shared_file_advice(path, meta.mode(), meta.uid(), me) else { return };
    // zkctl installs no logger; the services log to stderr through one.
    if tracing::dispatcher::has_been_set() {
        if warn {
            tracing::warn!("{why}");
        } else {
            tracing::info!("{why}");
        }
    } else if warn {
        eprintln!("warning: {why}");
    }
}

/// What to say about a credentials file of `mode`, owned by `owner`, read
/// by user `me`: (a warning?, the line), or nothing for a private file.
/// Advice must be right where it runs. Our own file we can `chmod 600`.
/// Another account's file (a compose secret bind-mounted from the host with
/// the host's mode, read by a container's own user) we cannot, and making
/// it private would lock us out of our identity: its owner decides, so it
/// is a note, not a warning.
fn shared_file_advice(path: &Path, mode: u32, owner: u32, me: u32) -> Option<(bool, String)> {
    let mode = mode & 0o777;
    if mode & 0o077 == 0 {
        return None;
    }
    let path = path.display();
    if owner == me {
        Some((true, format!("the credentials file {path} is readable by other users (mode {mode:o}): `chmod 600` it")))
    } else {
        Some((
            false,
            format!(
                "the credentials file {path} belongs to user {owner} and is readable by others (mode {mode:o}), as \
                 mounted secrets are; only its owner can make it private"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_file_we_own_gets_chmod_advice() {
        let p = Path::new("/run/secrets/zk-system-b");
        assert_eq!(shared_file_advice(p, 0o100600, 1000, 1000), None, "private");
        let (warn, line) = shared_file_advice(p, 0o100644, 1000, 1000).expect("ours, shared");
        assert!(warn && line.contains("`chmod 600` it"), "{line}");
        // A compose secret: the host's file, its host mode, read by the
        // container's user 10001. chmod 600 would lock the service out.
        let (warn, line) = shared_file_advice(p, 0o100644, 0, 10001).expect("another's, shared");
        assert!(!warn && !line.contains("chmod"), "{line}");
    }

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
}

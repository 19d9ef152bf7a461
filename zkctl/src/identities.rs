//! `zkctl gen-identities`: one deployment's identities, laid out so that
//! each consumer can be given its own directory and nothing else.
//!
//! docker-compose.yml runs it as the one-shot `identities` service on every
//! `up`: the first one makes the set, the later ones find it complete and
//! do nothing. Each directory below is a named volume that only its
//! consumer mounts, so a container sees its own identity and no other:
//!
//! ```text
//! operator/     zk.cred admin.token [previous-operator.cred]   (init-acls, zkctl as the operator)
//! coordinator/  admin.token
//! dashboard/    zk.cred admin.token
//! system-a/     zk.cred amqp.cred
//! system-b/     zk.cred amqp.cred
//! ha-worker/    zk.cred
//! rabbitmq/     definitions.json   (users with salted hashes, permissions, topology)
//!               erlang.cookie      (the secret the broker's cluster nodes share)
//! ```
//!
//! Every file is replaced by a rename (a reader sees the old file or the
//! new one) and is mode 0600, owned by `--owner`: the user the services
//! run as, so that the file is private and still theirs to read (a service
//! warns about a credentials file of its own that others may read). The
//! exceptions are the broker's two files:
//!
//! - its definitions, read by the broker image's own user: 0644, in a
//!   volume no other container mounts, and holding only salted hashes of
//!   256-bit passwords;
//! - the Erlang cookie, with which the nodes of a RabbitMQ cluster (the
//!   scale-out profile's three) and `rabbitmqctl` authenticate to each
//!   other: 0400 and owned by `--broker-owner`, the broker image's user
//!   (the official image's `rabbitmq` is 999:999), because Erlang refuses
//!   a cookie file that anyone but its owner may read. It is made once and
//!   kept, `--rotate` included: the nodes check it on every connection to
//!   each other, so a new cookie reaching one node and not yet another
//!   would split a running cluster, and nothing of it leaves the broker's
//!   volume. A set made before the cookie existed gets one at the next run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use servicekit::auth::{ZkAuth, DASHBOARD, HA_WORKER, OPERATOR, SYSTEM_A, SYSTEM_B};

/// The operator's credentials before the last `--rotate`: the re-grant
/// (`zkctl init --extra-auth-file`) holds them to change nodes the old
/// operator owns.
pub const PREVIOUS_OPERATOR: &str = "previous-operator.cred";

/// The broker's Erlang cookie, in the broker's directory (see the module's
/// docs): made when missing, never replaced.
pub const ERLANG_COOKIE: &str = "erlang.cookie";

/// Who may read a file of the set.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Access {
    /// 0600, the services' user's (`--owner`).
    Secret,
    /// 0644, the services' user's: read by another image's user.
    Shared,
    /// 0400, the broker image's user's (`--broker-owner`).
    BrokerSecret,
}

impl Access {
    fn mode(self) -> u32 {
        match self {
            Access::Secret => 0o600,
            Access::Shared => 0o644,
            Access::BrokerSecret => 0o400,
        }
    }
}

/// One file of the set: its consumer's directory, its name, its text, and
/// who may read it.
struct File {
    dir: &'static str,
    name: &'static str,
    text: String,
    access: Access,
}

/// A fresh set, for the task queue `queue`.
fn fresh(queue: &str) -> Vec<File> {
    let zk: std::collections::BTreeMap<String, String> = ZkAuth::generate().into_iter().collect();
    let broker = servicekit::broker::generate(queue, "");
    let amqp = |role: &str| {
        let name = servicekit::broker::credentials_file_name(role);
        broker.credentials.iter().find(|(n, _)| *n == name).map(|(_, t)| t.clone()).unwrap_or_default()
    };
    let token = servicekit::auth::generate_admin_token();
    let secret = |dir, name, text: String| File { dir, name, text, access: Access::Secret };
    vec![
        secret(OPERATOR, "zk.cred", zk[OPERATOR].clone()),
        secret(OPERATOR, "admin.token", token.clone()),
        secret("coordinator", "admin.token", token.clone()),
        secret(DASHBOARD, "zk.cred", zk[DASHBOARD].clone()),
        secret(DASHBOARD, "admin.token", token),
        secret(SYSTEM_A, "zk.cred", zk[SYSTEM_A].clone()),
        secret(SYSTEM_A, "amqp.cred", amqp(SYSTEM_A)),
        secret(SYSTEM_B, "zk.cred", zk[SYSTEM_B].clone()),
        secret(SYSTEM_B, "amqp.cred", amqp(SYSTEM_B)),
        secret(HA_WORKER, "zk.cred", zk[HA_WORKER].clone()),
        File { dir: "rabbitmq", name: "definitions.json", text: broker.definitions, access: Access::Shared },
    ]
}

/// The cookie the broker's nodes share, apart from the set: it is made
/// when missing and never rotated.
fn cookie() -> File {
    File {
        dir: "rabbitmq",
        name: ERLANG_COOKIE,
        text: servicekit::broker::generate_erlang_cookie(),
        access: Access::BrokerSecret,
    }
}

/// Who gets the files: `services` (`--owner`) all but the cookie, `broker`
/// (`--broker-owner`, else `--owner`) the cookie. `None`: the caller.
#[derive(Clone, Copy, Debug, Default)]
pub struct Owners {
    pub services: Option<(u32, u32)>,
    pub broker: Option<(u32, u32)>,
}

impl Owners {
    fn of(&self, access: Access) -> Option<(u32, u32)> {
        match access {
            Access::BrokerSecret => self.broker.or(self.services),
            Access::Secret | Access::Shared => self.services,
        }
    }
}

/// Makes the set under `root` unless it is complete; with `rotate`,
/// replaces it, keeping the operator's old credentials for the re-grant.
/// A partial set (some files, not all) is refused rather than completed:
/// its files may be in use, and a new half would not match them.
///
/// The broker's Erlang cookie is apart: made when missing (with the set,
/// or alone for a set made before it existed), kept otherwise.
pub fn run(root: &Path, rotate: bool, owners: Owners, queue: &str) -> Result<()> {
    if queue.is_empty() {
        bail!("--queue must name the task queue");
    }
    let set = fresh(queue);
    let path = |f: &File| root.join(f.dir).join(f.name);
    let cookie = cookie();
    let made_cookie = if path(&cookie).exists() {
        false
    } else {
        replace(&path(&cookie), &cookie.text, cookie.access, owners)?;
        true
    };
    let missing: Vec<PathBuf> = set.iter().map(path).filter(|p| !p.exists()).collect();
    if !rotate {
        if missing.is_empty() {
            if made_cookie {
                println!("the identities in {} are complete; made the broker's Erlang cookie", root.display());
            } else {
                println!("the identities in {} are complete: nothing to do", root.display());
            }
            return Ok(());
        }
        if missing.len() < set.len() {
            let names: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "the identities in {} are incomplete ({} missing); pass --rotate to replace the whole set",
                root.display(),
                names.join(", ")
            );
        }
    }
    let old_operator = root.join(OPERATOR).join("zk.cred");
    if rotate && old_operator.exists() {
        let text = std::fs::read_to_string(&old_operator)
            .with_context(|| format!("reading the operator's credentials {}", old_operator.display()))?;
        replace(&root.join(OPERATOR).join(PREVIOUS_OPERATOR), &text, Access::Secret, owners)?;
    }
    for f in &set {
        replace(&path(f), &f.text, f.access, owners)?;
    }
    println!(
        "wrote a fresh set of identities to {}{}",
        root.display(),
        if rotate {
            format!(
                " (the old operator's kept as {OPERATOR}/{PREVIOUS_OPERATOR}; the broker's Erlang cookie kept: \
                 a new one would split a running cluster)"
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Writes `text` to a new file beside `path` (with `access`'s mode),
/// gives it to its owner in `owners`, syncs it and renames it over `path`,
/// then syncs the directory: a crash leaves the old file or the new one.
fn replace(path: &Path, text: &str, access: Access, owners: Owners) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().context("a file in a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().context("a file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.new"));
    let _ = std::fs::remove_file(&tmp);
    let mode = access.mode();
    let owner = owners.of(access);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
            .with_context(|| format!("giving {} to {uid}:{gid}", tmp.display()))?;
    }
    // Written while still 0600 (a 0400 file is written through the open
    // descriptor all the same); widened or narrowed only after the chown:
    // never readable by others while it still belongs to whoever runs this.
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", tmp.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// `UID:GID` (or `UID`, the group then the same number).
pub fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    let num = |v: &str| v.parse::<u32>().map_err(|_| format!("{s:?} is not UID[:GID]"));
    Ok((num(u)?, num(g)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_consumer_gets_only_its_own_identity() {
        let set = fresh("tasks");
        let auth_of = |dir: &str| -> Vec<String> {
            set.iter()
                .filter(|f| f.dir == dir)
                .flat_map(|f| f.text.lines().filter_map(|l| l.strip_prefix("auth = ")).map(str::to_string))
                .collect()
        };
        for (dir, users) in [
            (OPERATOR, vec!["operator"]),
            ("coordinator", vec![]),
            (DASHBOARD, vec!["dashboard"]),
            (SYSTEM_A, vec!["system-a", "system-a"]),
            (SYSTEM_B, vec!["system-b", "system-b"]),
            (HA_WORKER, vec!["ha-worker"]),
            ("rabbitmq", vec![]),
        ] {
            let got: Vec<String> =
                auth_of(dir).iter().map(|a| a.split(':').next().unwrap_or_default().to_string()).collect();
            assert_eq!(got, users, "{dir}");
        }
        let shared: Vec<&str> = set.iter().filter(|f| f.access == Access::Shared).map(|f| f.name).collect();
        assert_eq!(shared, ["definitions.json"], "only the broker's hashes may be read by another user");
        assert!(!set.iter().find(|f| f.name == "definitions.json").expect("definitions").text.contains("auth ="));
    }

    /// A directory of its own under the system's temporary one, removed
    /// when dropped.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("zkctl-{name}-{}-{}", std::process::id(), rand_suffix()));
            std::fs::create_dir_all(&dir).expect("a scratch directory");
            Scratch(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn rand_suffix() -> String {
        servicekit::broker::generate_erlang_cookie()[..8].to_string()
    }

    fn me() -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata("/proc/self").expect("/proc/self");
        (m.uid(), m.gid())
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The cookie Erlang accepts: owner-only (Erlang refuses one others
    /// may read), the broker's user's, one atom of letters, random.
    #[test]
    fn the_broker_gets_an_erlang_cookie_only_its_user_reads() {
        use std::os::unix::fs::MetadataExt;
        let dir = Scratch::new("cookie");
        let owners = Owners { services: Some(me()), broker: Some(me()) };
        run(&dir.0, false, owners, "tasks").expect("a fresh set");
        let path = dir.0.join("rabbitmq").join(ERLANG_COOKIE);
        let m = std::fs::metadata(&path).expect("the cookie");
        assert_eq!(m.mode() & 0o777, 0o400, "owner-only, as Erlang demands");
        assert_eq!((m.uid(), m.gid()), me());
        let cookie = read(&path);
        assert_eq!(cookie.len(), 40, "{cookie:?}");
        assert!(cookie.bytes().all(|b| b.is_ascii_uppercase()), "an atom no config mangles: {cookie:?}");
        let other = Scratch::new("cookie-other");
        run(&other.0, false, Owners::default(), "tasks").expect("another set");
        assert_ne!(read(&other.0.join("rabbitmq").join(ERLANG_COOKIE)), cookie, "random per deployment");
        // Without --broker-owner, the cookie is --owner's (still 0400).
        assert_eq!(Owners { services: Some((7, 8)), broker: None }.of(Access::BrokerSecret), Some((7, 8)));
        assert_eq!(Owners { services: Some((7, 8)), broker: Some((9, 9)) }.of(Access::BrokerSecret), Some((9, 9)));
        assert_eq!(Owners { services: Some((7, 8)), broker: Some((9, 9)) }.of(Access::Secret), Some((7, 8)));
    }

    /// `--rotate` replaces every identity and keeps the cookie: a running
    /// cluster's nodes would refuse each other on a new one. A set made
    /// before the cookie existed gets one, and nothing else changes.
    #[test]
    fn rotation_keeps_the_erlang_cookie() {
        let dir = Scratch::new("rotate");
        run(&dir.0, false, Owners::default(), "tasks").expect("a fresh set");
        let cookie_path = dir.0.join("rabbitmq").join(ERLANG_COOKIE);
        let cookie = read(&cookie_path);
        let token = read(&dir.0.join(OPERATOR).join("admin.token"));
        let definitions = read(&dir.0.join("rabbitmq").join("definitions.json"));
        run(&dir.0, true, Owners::default(), "tasks").expect("--rotate");
        assert_ne!(read(&dir.0.join(OPERATOR).join("admin.token")), token, "rotated");
        assert_ne!(read(&dir.0.join("rabbitmq").join("definitions.json")), definitions, "rotated");
        assert_eq!(read(&cookie_path), cookie, "--rotate replaced the cookie");

        // An older set, without a cookie: the next run makes one and leaves
        // the rest (neither "incomplete" nor a rotation).
        std::fs::remove_file(&cookie_path).expect("rm the cookie");
        let token = read(&dir.0.join(OPERATOR).join("admin.token"));
        run(&dir.0, false, Owners::default(), "tasks").expect("a set without its cookie");
        let made = read(&cookie_path);
        assert_eq!(made.len(), 40);
        assert_ne!(made, cookie);
        assert_eq!(read(&dir.0.join(OPERATOR).join("admin.token")), token, "the set was left alone");
        run(&dir.0, false, Owners::default(), "tasks").expect("a complete set");
        assert_eq!(read(&cookie_path), made, "a complete set is left alone, cookie included");
    }

    #[test]
    fn owners_parse() {
        assert_eq!(parse_owner("10001:10001"), Ok((10001, 10001)));
        assert_eq!(parse_owner("10001"), Ok((10001, 10001)));
        assert!(parse_owner("app").is_err());
    }
}

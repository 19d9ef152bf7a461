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
//! ```
//!
//! Every file is replaced by a rename (a reader sees the old file or the
//! new one) and is mode 0600, owned by `--owner`: the user the services
//! run as, so that the file is private and still theirs to read (a service
//! warns about a credentials file of its own that others may read). The
//! one exception is the broker's definitions, read by the broker image's
//! own user, whose uid is that image's business: 0644, in a volume no
//! other container mounts, and holding only salted hashes of 256-bit
//! passwords.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use servicekit::auth::{ZkAuth, DASHBOARD, HA_WORKER, OPERATOR, SYSTEM_A, SYSTEM_B};

/// The operator's credentials before the last `--rotate`: the re-grant
/// (`zkctl init --extra-auth-file`) holds them to change nodes the old
/// operator owns.
pub const PREVIOUS_OPERATOR: &str = "previous-operator.cred";

/// One file of the set: its consumer's directory, its name, its text, and
/// whether others may read it.
struct File {
    dir: &'static str,
    name: &'static str,
    text: String,
    shared: bool,
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
    let secret = |dir, name, text: String| File { dir, name, text, shared: false };
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
        File { dir: "rabbitmq", name: "definitions.json", text: broker.definitions, shared: true },
    ]
}

/// Makes the set under `root` unless it is complete; with `rotate`,
/// replaces it, keeping the operator's old credentials for the re-grant.
/// A partial set (some files, not all) is refused rather than completed:
/// its files may be in use, and a new half would not match them.
pub fn run(root: &Path, rotate: bool, owner: Option<(u32, u32)>, queue: &str) -> Result<()> {
    if queue.is_empty() {
        bail!("--queue must name the task queue");
    }
    let set = fresh(queue);
    let path = |f: &File| root.join(f.dir).join(f.name);
    let missing: Vec<PathBuf> = set.iter().map(path).filter(|p| !p.exists()).collect();
    if !rotate {
        if missing.is_empty() {
            println!("the identities in {} are complete: nothing to do", root.display());
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
        replace(&root.join(OPERATOR).join(PREVIOUS_OPERATOR), &text, false, owner)?;
    }
    for f in &set {
        replace(&path(f), &f.text, f.shared, owner)?;
    }
    println!(
        "wrote a fresh set of identities to {}{}",
        root.display(),
        if rotate { format!(" (the old operator's kept as {OPERATOR}/{PREVIOUS_OPERATOR})") } else { String::new() }
    );
    Ok(())
}

/// Writes `text` to a new file beside `path` (0600, or 0644 when `shared`),
/// gives it to `owner`, syncs it and renames it over `path`, then syncs
/// the directory: a crash leaves the old file or the new one.
fn replace(path: &Path, text: &str, shared: bool, owner: Option<(u32, u32)>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().context("a file in a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().context("a file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.new"));
    let _ = std::fs::remove_file(&tmp);
    let mode = if shared { 0o644 } else { 0o600 };
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
    // Widened only after the chown: never readable by others while it
    // still belongs to whoever runs this.
    f.set_permissions(std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", tmp.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
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
        let shared: Vec<&str> = set.iter().filter(|f| f.shared).map(|f| f.name).collect();
        assert_eq!(shared, ["definitions.json"], "only the broker's hashes may be read by another user");
        assert!(!set.iter().find(|f| f.name == "definitions.json").expect("definitions").text.contains("auth ="));
    }

    #[test]
    fn owners_parse() {
        assert_eq!(parse_owner("10001:10001"), Ok((10001, 10001)));
        assert_eq!(parse_owner("10001"), Ok((10001, 10001)));
        assert!(parse_owner("app").is_err());
    }
}

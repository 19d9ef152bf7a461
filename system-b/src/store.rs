//! The shared store: one JSON file per entity on a shared directory.
//!
//! A file system gives no read-modify-write atomicity across processes;
//! that is what the distributed lock is for. The store adds only what a
//! lock cannot provide, *fencing*: it remembers the highest lock token it
//! has seen for each entity, on reads as well as writes, and refuses any
//! write with a lower token. A holder that stalled past its session (its
//! lock already given to someone else, who has read the entity since) is
//! therefore refused when it wakes, instead of overwriting the newer
//! holder's work. Each check-and-update takes an exclusive `flock` on the
//! entity's lock file for the few microseconds it needs, and writes go to a
//! temporary file renamed over the old one, so a crash never leaves a torn
//! entity.
//!
//! Durability: the temporary file is fsync'd before the rename and the
//! directory after it, because a rename lives in the directory, not in the
//! file: without the second fsync a power loss shortly after a write could
//! bring back the entity's previous file although the task was reported
//! done and acked, silently losing an update. With both, a write that
//! returned is on disk. A power loss can then cost only work in flight: a
//! task not yet acked is redelivered and either applied (its write never
//! reached the disk) or recognised as applied and reported again; and a
//! leftover `<entity>.json.tmp`, overwritten by the next write. This holds
//! as long as the disk honours fsync (no volatile write cache that lies).
//!
//! Each entity also records the ids of the tasks applied to it, which makes
//! redelivery idempotent: a task applied before a crash, but not acked, is
//! not applied twice.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How many applied task ids each entity remembers for de-duplication.
/// Redeliveries arrive within seconds; this is many minutes of traffic.
const REMEMBERED: usize = 10_000;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Entity {
    pub value: i64,
    /// Highest fencing token seen (read or write).
    pub token: i64,
    pub applied: VecDeque<String>,
    /// The value each remembered task left the entity with: what a copy of
    /// the task reports, whatever was applied since.
    #[serde(default)]
    pub results: BTreeMap<String, i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("fenced: token {ours} is older than token {seen} already seen for {entity}")]
    Fenced { entity: String, ours: i64, seen: i64 },
    #[error("store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("store {path}: corrupt entity: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("invalid entity name {0:?} (letters, digits, '-', '_', '.' only)")]
    BadName(String),
}

impl StoreError {
    /// Errors no retry can fix until an operator acts: the store's files
    /// cannot be written (permissions, a read-only or full file system, a
    /// path of the wrong kind), or an entity file is damaged.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => servicekit::fault::is_permanent(source),
            StoreError::Corrupt { .. } | StoreError::BadName(_) => true,
            StoreError::Fenced { .. } => false,
        }
    }

    /// What an operator should do, for the log.
    pub fn remedy(&self) -> String {
        match self {
            StoreError::Io { path, source } => servicekit::fault::remedy(source, path),
            StoreError::Corrupt { path, .. } => format!("repair or move aside {}", path.display()),
            _ => String::new(),
        }
    }
}

pub struct Store {
    dir: PathBuf,
}

/// What a read tells the holder.
pub struct Read {
    pub value: i64,
    /// The task was applied already (a redelivery): do not apply again.
    pub already_applied: bool,
    /// The value that task left the entity with, when it was applied.
    pub applied_value: Option<i64>,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
        Ok(Store { dir: dir.to_path_buf() })
    }

    /// Refuses a name no entity can have, before anything is done for it.
    pub fn check_name(&self, entity: &str) -> Result<(), StoreError> {
        self.paths(entity).map(|_| ())
    }

    fn paths(&self, entity: &str) -> Result<(PathBuf, PathBuf), StoreError> {
        let ok = !entity.is_empty()
            && entity.len() <= 128
            && !entity.starts_with('.')
            && entity.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(StoreError::BadName(entity.to_string()));
        }
        Ok((self.dir.join(format!("{entity}.json")), self.dir.join(format!("{entity}.lock"))))
    }

    /// Runs `f` on the entity under its file lock, saving what it returns.
    fn with<T>(&self, entity: &str, f: impl FnOnce(&mut Entity) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let (path, lock_path) = self.paths(entity)?;
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io { path: p, source }
        };
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let mut e = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt { path: path.clone(), source })?
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Entity::default(),
            Err(err) => return Err(io(&path)(err)),
        };
        let out = f(&mut e)?;
        let tmp = path.with_extension("json.tmp");
        let mut file = File::create(&tmp).map_err(io(&tmp))?;
        let bytes = serde_json::to_vec(&e).map_err(|source| StoreError::Corrupt { path: path.clone(), source })?;
        file.write_all(&bytes).map_err(io(&tmp))?;
        file.sync_data().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
        Ok(out)
        // `lock` closes here, releasing the flock.
    }

    /// Reads the entity as the holder of `token`, fencing out older tokens
    /// from now on.
    pub fn read(&self, entity: &str, token: i64, task: &str) -> Result<Read, StoreError> {
        self.with(entity, |e| {
            if token < e.token {
                return Err(StoreError::Fenced { entity: entity.into(), ours: token, seen: e.token });
            }
            e.token = token;
            let already_applied = e.applied.iter().any(|t| t == task);
            Ok(Read { value: e.value, already_applied, applied_value: e.results.get(task).copied() })
        })
    }

    /// Writes the new value for `task` as the holder of `token`.
    pub fn write(&self, entity: &str, token: i64, task: &str, value: i64) -> Result<(), StoreError> {
        self.with(entity, |e| {
            if token < e.token {
                return Err(StoreError::Fenced { entity: entity.into(), ours: token, seen: e.token });
            }
            e.token = token;
            e.value = value;
            e.applied.push_back(task.to_string());
            e.results.insert(task.to_string(), value);
            while e.applied.len() > REMEMBERED {
                if let Some(old) = e.applied.pop_front() {
                    e.results.remove(&old);
                }
            }
            Ok(())
        })
    }

    /// The entity as it is now.
    #[cfg(test)]
    pub fn get(&self, entity: &str) -> Result<Entity, StoreError> {
        self.with(entity, |e| Ok(e.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_holder_is_fenced_and_redelivery_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("store-{}", std::process::id()));
        let s = Store::open(&dir).unwrap();
        let r = s.read("acct-1", 5, "t1").unwrap();
        assert_eq!((r.value, r.already_applied), (0, false));
        // A newer holder reads: the old one can no longer write.
        s.read("acct-1", 9, "t2").unwrap();
        assert!(matches!(s.write("acct-1", 5, "t1", 1), Err(StoreError::Fenced { ours: 5, seen: 9, .. })));
        s.write("acct-1", 9, "t2", 3).unwrap();
        assert!(s.read("acct-1", 9, "t2").unwrap().already_applied);
        assert_eq!(s.get("acct-1").unwrap().value, 3);
        assert!(matches!(s.read("../x", 9, "t"), Err(StoreError::BadName(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }
}

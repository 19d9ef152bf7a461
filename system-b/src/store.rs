//! The shared store: one small JSON file per entity on a shared directory.
//!
//! A file system gives no read-modify-write atomicity across processes;
//! that is what the distributed lock is for. The store adds what a lock
//! cannot provide:
//!
//! - **Fencing.** It remembers the highest fencing token it has seen for
//!   each entity, on reads as well as writes, and refuses any read or write
//!   with a lower one ([`StoreError::Fenced`]). A holder that stalled past
//!   its session (its lock already given to someone else, who has read the
//!   entity since) is therefore refused when it wakes, instead of
//!   overwriting the newer holder's work. Tokens are
//!   `zk_recipes::fencing::Token`s, epoch first, so they keep growing across
//!   a reset of the coordination service's data.
//! - **The last task applied** ([`Applied`]), written in the same file as
//!   the value it produced, so "applied" and "recorded as applied" are one
//!   atomic fact. This is all the store needs to make redelivery exactly
//!   once, with no window of remembered ids: a task applied to an entity
//!   whose node still says `pending` can only be the entity's last one,
//!   because whoever applies the next task first writes the last one's
//!   result into its node (see `worker::close_previous`). So a redelivered
//!   task is either the entity's last (report its recorded result) or
//!   finished in its node (nothing to do). The file holds one record
//!   whatever the entity's history: applying the millionth task costs what
//!   applying the first did.
//!
//! Each check-and-update takes an exclusive `flock` on the entity's lock
//! file for the few microseconds it needs, and writes go to a temporary
//! file renamed over the old one, so a crash never leaves a torn entity.
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

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zk_recipes::fencing::Token;

/// The failpoint that makes the store accept any token (a broken store,
/// for the checkers' own test).
pub const IGNORE_FENCING: &str = "system-b/store-ignores-fencing";

/// One entity's file.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    pub value: i64,
    /// The epoch of the highest fencing token seen (read or write). Files
    /// written before epochs existed have none: epoch 0.
    #[serde(default)]
    pub epoch: i64,
    /// The zxid of the highest fencing token seen.
    pub token: i64,
    /// The last task applied to this entity.
    #[serde(default)]
    pub last: Option<Applied>,
    /// Files of the previous format kept every applied task id (up to
    /// 10,000): read once, to carry the newest into `last`, never written.
    #[serde(default, skip_serializing)]
    applied: Vec<String>,
    #[serde(default, skip_serializing)]
    results: std::collections::BTreeMap<String, i64>,
}

impl Entity {
    /// The highest token this entity has seen.
    pub fn seen(&self) -> Token {
        Token::new(self.epoch, self.token)
    }

    /// A file of the previous format, in this one: its newest applied task
    /// becomes `last` (only the newest can still have a pending node).
    fn upgrade(&mut self) {
        if self.last.is_none() {
            if let Some(task) = self.applied.last() {
                let value = self.results.get(task).copied().unwrap_or(self.value);
                self.last = Some(Applied { task: task.clone(), value, worker: String::new(), epoch: 0, token: 0 });
            }
        }
        self.applied.clear();
        self.results.clear();
    }
}

/// The last task applied to an entity, and what it left: what a
/// redelivery of it reports, and what the next holder writes into its node
/// if its own worker could not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub task: String,
    /// The entity's value after the task.
    pub value: i64,
    /// Who applied it, under which token.
    #[serde(default)]
    pub worker: String,
    #[serde(default)]
    pub epoch: i64,
    #[serde(default)]
    pub token: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("fenced: token {ours} is older than token {seen} already seen for {entity}")]
    Fenced { entity: String, ours: Token, seen: Token },
    #[error("store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("store {path}: corrupt entity: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    BadName(#[from] task_contract::ContractError),
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

#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        // Durably: a store directory whose own name a power cut took away
        // would take every entity with it, applied tasks and fences alike.
        servicekit::durable::create_dir_all(dir)
            .map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
        Ok(Store { dir: dir.to_path_buf() })
    }

    /// The entity's file and its lock file. The name rule is the task
    /// contract's: a name that passes cannot leave the directory.
    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn paths(&self, entity: &str) -> Result<(PathBuf, PathBuf), StoreError> {
        task_contract::check_entity(entity)?;
        Ok((self.dir.join(format!("{entity}.json")), self.dir.join(format!("{entity}.lock"))))
    }

    fn load(path: &Path) -> Result<Entity, StoreError> {
        let mut e: Entity = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::Corrupt { path: path.to_path_buf(), source })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Entity::default(),
            Err(source) => return Err(StoreError::Io { path: path.to_path_buf(), source }),
        };
        e.upgrade();
        Ok(e)
    }

    /// Runs `f` on the entity under its file lock, saving it if `f` changed
    /// it (a read by the holder of the highest token writes nothing).
    fn with<T>(&self, entity: &str, f: impl FnOnce(&mut Entity) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let (path, lock_path) = self.paths(entity)?;
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io { path: p, source }
        };
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let before = Self::load(&path)?;
        let mut e = before.clone();
        let out = f(&mut e)?;
        if e == before {
            return Ok(out);
        }
        let tmp = path.with_extension("json.tmp");
        let mut file = File::create(&tmp).map_err(io(&tmp))?;
        let bytes = serde_json::to_vec(&e).map_err(|source| StoreError::Corrupt { path: path.clone(), source })?;
        file.write_all(&bytes).map_err(io(&tmp))?;
        file.sync_data().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        servicekit::durable::sync_dir(&self.dir).map_err(io(&self.dir))?;
        Ok(out)
        // `lock` closes here, releasing the flock.
    }

    /// Refuses `token` if the entity has seen a higher one; records it as
    /// the highest otherwise.
    fn fence(entity: &str, e: &mut Entity, token: Token) -> Result<(), StoreError> {
        // The failpoint turns fencing off, only to prove that the nemesis's
        // lock checker catches the lost update that follows.
        if token < e.seen() && !servicekit::failpoint::is_armed(IGNORE_FENCING) {
            return Err(StoreError::Fenced { entity: entity.into(), ours: token, seen: e.seen() });
        }
        (e.epoch, e.token) = (token.epoch, token.zxid);
        Ok(())
    }

    /// Reads the entity as the holder of `token`, fencing out older tokens
    /// from now on (durably, before it returns).
    pub fn read(&self, entity: &str, token: Token) -> Result<Entity, StoreError> {
        self.with(entity, |e| {
            Self::fence(entity, e, token)?;
            Ok(e.clone())
        })
    }

    /// Applies `applied` as the holder of `token`: the entity's value
    /// becomes `applied.value`, and `applied` its last task, in one write.
    pub fn apply(&self, entity: &str, token: Token, applied: Applied) -> Result<(), StoreError> {
        self.with(entity, |e| {
            Self::fence(entity, e, token)?;
            e.value = applied.value;
            e.last = Some(applied);
            Ok(())
        })
    }

    /// The entity as it is now, without fencing anyone: for a worker that
    /// gives up on a task and must know whether it was applied.
    pub fn peek(&self, entity: &str) -> Result<Entity, StoreError> {
        let (path, _) = self.paths(entity)?;
        Self::load(&path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn applied(task: &str, value: i64, token: Token) -> Applied {
        Applied { task: task.into(), value, worker: "b1".into(), epoch: token.epoch, token: token.zxid }
    }

    #[test]
    fn a_stale_holder_is_fenced_on_read_and_on_write() {
        let dir = scratch("fence");
        let s = Store::open(&dir).unwrap();
        let (t5, t9) = (Token::new(1, 5), Token::new(1, 9));
        assert_eq!(s.read("acct-1", t5).unwrap().value, 0);
        // A newer holder reads: the old one can no longer write, or read.
        s.read("acct-1", t9).unwrap();
        let refused = s.apply("acct-1", t5, applied("t1", 1, t5));
        assert!(matches!(refused, Err(StoreError::Fenced { ours, seen, .. }) if ours == t5 && seen == t9));
        assert!(matches!(s.read("acct-1", t5), Err(StoreError::Fenced { .. })));
        s.apply("acct-1", t9, applied("t2", 3, t9)).unwrap();
        let e = s.peek("acct-1").unwrap();
        assert_eq!((e.value, e.last.map(|l| l.task)), (3, Some("t2".to_string())));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// After a reset of the coordination service, zxids are small again:
    /// only a newer epoch gets past what the store has seen.
    #[test]
    fn a_newer_epoch_passes_any_token_of_an_older_one() {
        let dir = scratch("epoch");
        let s = Store::open(&dir).unwrap();
        s.read("e", Token::new(1, 1 << 40)).unwrap();
        assert!(matches!(s.read("e", Token::new(1, 8)), Err(StoreError::Fenced { .. })));
        s.read("e", Token::new(2, 8)).unwrap();
        assert_eq!(s.peek("e").unwrap().seen(), Token::new(2, 8));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The file holds one record however many tasks were applied.
    #[test]
    fn the_entity_stays_small() {
        let dir = scratch("small");
        let s = Store::open(&dir).unwrap();
        let mut sizes = Vec::new();
        for i in 10..60 {
            let token = Token::new(1, i);
            s.apply("e", token, applied(&format!("task-{i}"), i, token)).unwrap();
            sizes.push(std::fs::metadata(dir.join("e.json")).unwrap().len());
        }
        assert!(sizes.iter().all(|s| *s == sizes[0]), "the entity file grew: {sizes:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A read by the holder of the token already recorded writes nothing:
    /// no fsync for a redelivery that only reports.
    #[test]
    fn a_read_at_the_recorded_token_does_not_rewrite_the_file() {
        let dir = scratch("noop");
        let s = Store::open(&dir).unwrap();
        let t = Token::new(1, 4);
        s.read("e", t).unwrap();
        let before = std::fs::metadata(dir.join("e.json")).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.read("e", t).unwrap();
        assert_eq!(std::fs::metadata(dir.join("e.json")).unwrap().modified().unwrap(), before);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A file written by the previous format (every applied id, 800 KB at
    /// 10,000 tasks) reads with its newest task as the last one, and is
    /// written back small.
    #[test]
    fn a_file_of_the_previous_format_is_upgraded() {
        let dir = scratch("upgrade");
        std::fs::create_dir_all(&dir).unwrap();
        let old = r#"{"value":7,"token":42,"applied":["t1","t2"],"results":{"t1":5,"t2":7}}"#;
        std::fs::write(dir.join("e.json"), old).unwrap();
        let s = Store::open(&dir).unwrap();
        let e = s.read("e", Token::new(0, 42)).unwrap();
        assert_eq!((e.value, e.seen()), (7, Token::new(0, 42)));
        assert_eq!(e.last.as_ref().map(|l| (l.task.as_str(), l.value)), Some(("t2", 7)));
        s.read("e", Token::new(1, 1)).unwrap();
        let text = std::fs::read_to_string(dir.join("e.json")).unwrap();
        assert!(!text.contains("applied") && !text.contains("results") && text.contains("t2"), "{text}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn names_outside_the_contract_are_refused() {
        let dir = scratch("names");
        let s = Store::open(&dir).unwrap();
        for bad in ["../x", "", ".hidden", "a/b"] {
            assert!(matches!(s.read(bad, Token::default()), Err(StoreError::BadName(_))), "{bad}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

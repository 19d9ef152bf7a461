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
//! file for the few microseconds it needs.
//!
//! ## On disk: two slots, one sync a write
//!
//! An entity's file, `<entity>.entity`, is two slots of 4 KiB.
//! Each slot holds a record: a text header with a sequence number, the
//! length and a CRC-32C of what follows, then the entity as JSON (so `cat`
//! shows both, the higher `seq` being the entity now). A write puts the
//! next record into the slot that does *not* hold the newest one, in
//! place, and `fdatasync`s the file; a read takes the newest record whose
//! CRC matches.
//!
//! Why not a new file renamed over the old one, as the store did before:
//! the rename is a change to the directory, so a write cost an fsync of
//! the temporary file, which allocates blocks (a journal commit), and an
//! fsync of the directory (another): two syncs a write, four a task, and
//! the file system's journal commits them one after another across every
//! entity. The pipeline benchmark found system-b's tasks waiting on those
//! syncs (`BENCHMARKS.md`, "The scenario at scale"). Overwriting blocks
//! the file already has changes no metadata `fdatasync` must persist: one
//! flush of the data, no journal commit, and writes to different entities
//! no longer queue behind each other's.
//!
//! Durability, the same promise in fewer syncs. The slot being written
//! never holds the newest record, so a power cut in the middle of a write
//! leaves that slot torn (its CRC fails) and the other slot whole: the
//! entity reads as it was before the write, which was never acknowledged.
//! A write that returned is on disk. The first write of an entity creates
//! its file whole (temporary file, fsync, rename, fsync of the directory),
//! so the name never appears without a record behind it; an existing file
//! with no whole record is therefore damage, reported as
//! [`StoreError::Corrupt`], never read as an empty entity (which would
//! undo every task it had applied). A power loss can cost only work in
//! flight: a task not yet acked is redelivered and either applied (its
//! write never reached the disk) or recognised as applied and reported
//! again. This holds as long as the disk honours fsync (no volatile write
//! cache that lies), and needs of it no more than that a sector written
//! and synced stays written: a slot is a whole number of 4 KiB blocks at a
//! block-aligned offset.
//!
//! Files of the store's earlier format, `<entity>.json` (one JSON
//! document), are read until the entity's first write, which creates its
//! `.entity` file and removes the old one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
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
    #[error("store {path}: corrupt entity: {why}")]
    Corrupt { path: PathBuf, why: String },
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

/// Where an entity's newest record is, which decides how the next write
/// goes.
enum Place {
    /// In slot `slot` of its `.entity` file, numbered `seq`.
    Slot { slot: usize, seq: u64 },
    /// Nowhere yet: no file, or only a file of the earlier format.
    New,
}

/// An entity's files.
struct Paths {
    /// Its two slots.
    file: PathBuf,
    /// The flock taken around a check-and-update.
    lock: PathBuf,
    /// The earlier format's file, read until the first write.
    legacy: PathBuf,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { path, source }
}

fn corrupt(path: &Path, why: impl ToString) -> StoreError {
    StoreError::Corrupt { path: path.to_path_buf(), why: why.to_string() }
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        // Durably: a store directory whose own name a power cut took away
        // would take every entity with it, applied tasks and fences alike.
        servicekit::durable::create_dir_all(dir)
            .map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
        Ok(Store { dir: dir.to_path_buf() })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entity's files. The name rule is the task contract's: a name
    /// that passes cannot leave the directory.
    fn paths(&self, entity: &str) -> Result<Paths, StoreError> {
        task_contract::check_entity(entity)?;
        Ok(Paths {
            file: self.dir.join(format!("{entity}.entity")),
            lock: self.dir.join(format!("{entity}.lock")),
            legacy: self.dir.join(format!("{entity}.json")),
        })
    }

    /// The entity and where its newest record is: from its slots if it
    /// has its file (`file`, opened by the caller), else from a file of
    /// the earlier format, else a new entity.
    fn load(paths: &Paths, file: Option<&File>) -> Result<(Entity, Place), StoreError> {
        let Some(file) = file else {
            let mut e: Entity = match std::fs::read(&paths.legacy) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt(&paths.legacy, e))?,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Entity::default(),
                Err(source) => return Err(StoreError::Io { path: paths.legacy.clone(), source }),
            };
            e.upgrade();
            return Ok((e, Place::New));
        };
        let mut bytes = vec![0; record::FILE];
        let size = file.metadata().map_err(io_error(&paths.file))?.len();
        if size != record::FILE as u64 {
            return Err(corrupt(&paths.file, format!("{size} bytes, where an entity's file has {}", record::FILE)));
        }
        file.read_exact_at(&mut bytes, 0).map_err(io_error(&paths.file))?;
        let (slot, seq, payload) =
            record::newest(&bytes).ok_or_else(|| corrupt(&paths.file, "no whole record in either slot"))?;
        let mut e: Entity = serde_json::from_slice(payload).map_err(|e| corrupt(&paths.file, e))?;
        e.upgrade();
        Ok((e, Place::Slot { slot, seq }))
    }

    /// Opens the entity's file if it has one (for reading, and for writing
    /// when `write`).
    fn open_entity(paths: &Paths, write: bool) -> Result<Option<File>, StoreError> {
        match OpenOptions::new().read(true).write(write).open(&paths.file) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path: paths.file.clone(), source }),
        }
    }

    /// Runs `f` on the entity under its file lock, saving it if `f` changed
    /// it (a read by the holder of the highest token writes nothing).
    fn with<T>(&self, entity: &str, f: impl FnOnce(&mut Entity) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let paths = self.paths(entity)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&paths.lock)
            .map_err(io_error(&paths.lock))?;
        lock.lock().map_err(io_error(&paths.lock))?;
        let file = Self::open_entity(&paths, true)?;
        let (before, place) = Self::load(&paths, file.as_ref())?;
        let mut e = before.clone();
        let out = f(&mut e)?;
        if e == before {
            return Ok(out);
        }
        let json = serde_json::to_vec(&e).map_err(|e| corrupt(&paths.file, e))?;
        match (place, file) {
            (Place::Slot { slot, seq }, Some(file)) => {
                // In place, into the slot without the newest record: one
                // data sync, no directory change (see the module docs).
                let other = 1 - slot;
                let rec = record::encode(seq + 1, &json).map_err(|why| corrupt(&paths.file, why))?;
                file.write_all_at(&rec, (other * record::SLOT) as u64).map_err(io_error(&paths.file))?;
                file.sync_data().map_err(io_error(&paths.file))?;
            }
            _ => self.create(&paths, &json)?,
        }
        Ok(out)
        // `lock` closes here, releasing the flock.
    }

    /// An entity's first write: its file, whole, under its name, durably;
    /// then the earlier format's file, if any, is no longer needed.
    fn create(&self, paths: &Paths, json: &[u8]) -> Result<(), StoreError> {
        let mut bytes = record::encode(1, json).map_err(|why| corrupt(&paths.file, why))?;
        bytes.resize(record::FILE, 0);
        let tmp = paths.file.with_extension("entity.tmp");
        let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
        file.write_all(&bytes).map_err(io_error(&tmp))?;
        file.sync_data().map_err(io_error(&tmp))?;
        std::fs::rename(&tmp, &paths.file).map_err(io_error(&paths.file))?;
        servicekit::durable::sync_dir(&self.dir).map_err(io_error(&self.dir))?;
        // Not synced: if a power cut brings the old file back, the new one
        // (durable above) is still the one read.
        match std::fs::remove_file(&paths.legacy) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Io { path: paths.legacy.clone(), source: e })
            }
            _ => Ok(()),
        }
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
    /// gives up on a task and must know whether it was applied, and for an
    /// operator or a test that looks. A write in progress meanwhile is to
    /// the other slot, so this reads the newest whole record without the
    /// lock.
    pub fn peek(&self, entity: &str) -> Result<Entity, StoreError> {
        let paths = self.paths(entity)?;
        let file = Self::open_entity(&paths, false)?;
        Ok(Self::load(&paths, file.as_ref())?.0)
    }
}

/// One slot's record: encoded, and found again.
mod record {
    /// Bytes a slot takes: one 4 KiB block, so a write to one slot never
    /// touches a block of the other.
    pub const SLOT: usize = 4096;
    /// An entity's file: two slots.
    pub const FILE: usize = 2 * SLOT;
    const PREFIX: &str = "entity-record seq=";
    /// `entity-record seq=<20 digits> len=<4 digits> crc32c=<8 hex>\n`
    const HEADER: usize = PREFIX.len() + 20 + " len=".len() + 4 + " crc32c=".len() + 8 + 1;
    /// The most JSON a record holds (it ends with a newline).
    pub const MAX_JSON: usize = SLOT - HEADER - 1;

    /// The checksum covers the sequence number and length as well as the
    /// JSON, so a slot torn between two records never passes for either.
    fn crc(seq: u64, json: &[u8]) -> u32 {
        let head = crc32c::crc32c(&[seq.to_le_bytes().as_slice(), &(json.len() as u32).to_le_bytes()].concat());
        crc32c::crc32c_append(head, json)
    }

    /// Record `seq` holding `json`, as the bytes of a slot.
    pub fn encode(seq: u64, json: &[u8]) -> Result<Vec<u8>, String> {
        if json.len() > MAX_JSON {
            return Err(format!("a record of {} bytes does not fit a slot ({MAX_JSON} at most)", json.len()));
        }
        let mut out = format!("{PREFIX}{seq:020} len={:04} crc32c={:08x}\n", json.len(), crc(seq, json)).into_bytes();
        out.extend_from_slice(json);
        out.push(b'\n');
        out.resize(SLOT, 0);
        Ok(out)
    }

    /// The slot's record, if it is whole: its sequence number and JSON.
    pub fn decode(slot: &[u8]) -> Option<(u64, &[u8])> {
        let header = std::str::from_utf8(slot.get(..HEADER)?).ok()?;
        let rest = header.strip_prefix(PREFIX)?.strip_suffix('\n')?;
        let (seq, rest) = rest.split_once(" len=")?;
        let (len, crc_hex) = rest.split_once(" crc32c=")?;
        let (seq, len): (u64, usize) = (seq.parse().ok()?, len.parse().ok()?);
        let want = u32::from_str_radix(crc_hex, 16).ok()?;
        let json = slot.get(HEADER..HEADER + len)?;
        (len <= MAX_JSON && slot.get(HEADER + len) == Some(&b'\n') && crc(seq, json) == want).then_some((seq, json))
    }

    /// The newest whole record of a file's two slots: which slot, its
    /// sequence number, its JSON.
    pub fn newest(file: &[u8]) -> Option<(usize, u64, &[u8])> {
        file.chunks(SLOT)
            .take(2)
            .enumerate()
            .filter_map(|(i, slot)| decode(slot).map(|(seq, json)| (i, seq, json)))
            .max_by_key(|(_, seq, _)| *seq)
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

    /// The file holds one record however many tasks were applied, and
    /// every write after the first is in place: the same inode, the same
    /// size, no rename (which would need a sync of the directory).
    #[test]
    fn the_entity_stays_small_and_is_written_in_place() {
        use std::os::unix::fs::MetadataExt;
        let dir = scratch("small");
        let s = Store::open(&dir).unwrap();
        let mut files = Vec::new();
        for i in 10..60 {
            let token = Token::new(1, i);
            s.apply("e", token, applied(&format!("task-{i}"), i, token)).unwrap();
            let m = std::fs::metadata(dir.join("e.entity")).unwrap();
            files.push((m.ino(), m.len()));
        }
        assert!(files.iter().all(|f| *f == files[0]), "the entity's file changed: {files:?}");
        assert_eq!(files[0].1, record::FILE as u64);
        assert_eq!(s.peek("e").unwrap().value, 59);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A write torn by a power cut damages only the slot it was writing,
    /// which never holds the newest record: the entity reads as it was
    /// before that write, and the next write goes on from there.
    #[test]
    fn a_torn_slot_reads_as_the_write_before_it() {
        let dir = scratch("torn");
        let s = Store::open(&dir).unwrap();
        let (t1, t2, t3) = (Token::new(1, 1), Token::new(1, 2), Token::new(1, 3));
        s.apply("e", t1, applied("a", 1, t1)).unwrap();
        s.apply("e", t2, applied("b", 2, t2)).unwrap();
        // "b" is in slot 1; tear it half-way, as a cut mid-write would.
        let path = dir.join("e.entity");
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(record::newest(&bytes).map(|(slot, seq, _)| (slot, seq)), Some((1, 2)));
        bytes[record::SLOT + 100..record::SLOT + 200].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let e = s.peek("e").unwrap();
        assert_eq!((e.value, e.last.map(|l| l.task)), (1, Some("a".to_string())));
        s.apply("e", t3, applied("c", 3, t3)).unwrap();
        assert_eq!(s.peek("e").unwrap().value, 3);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A file with no whole record is damage an operator must see: read as
    /// a new entity, it would undo every task the entity had applied.
    #[test]
    fn a_file_with_no_whole_record_is_corrupt_not_empty() {
        let dir = scratch("corrupt");
        let s = Store::open(&dir).unwrap();
        let t = Token::new(1, 1);
        s.apply("e", t, applied("a", 5, t)).unwrap();
        std::fs::write(dir.join("e.entity"), vec![7u8; record::FILE]).unwrap();
        for result in [s.peek("e"), s.read("e", Token::new(1, 2))] {
            let err = result.unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }) && err.is_permanent(), "{err}");
        }
        // Cut short (not a size the store ever writes): damage as well.
        std::fs::write(dir.join("e.entity"), b"entity-record").unwrap();
        assert!(matches!(s.peek("e"), Err(StoreError::Corrupt { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }

    proptest::proptest! {
        /// Whatever bytes a slot holds, decoding never panics; a record
        /// reads back as written; and a change to any byte of its header
        /// or JSON is refused, never read as some other record.
        #[test]
        fn a_slot_is_its_record_or_nothing(
            seq in proptest::prelude::any::<u64>(),
            json in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            at in 0usize..700,
            flip in 1u8..=255,
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..record::SLOT + 10),
        ) {
            let _ = record::decode(&noise);
            let mut slot = record::encode(seq, &json).unwrap();
            proptest::prop_assert_eq!(record::decode(&slot), Some((seq, json.as_slice())));
            let end = slot.iter().rposition(|b| *b == b'\n').unwrap();
            if at <= end {
                slot[at] ^= flip;
                proptest::prop_assert_eq!(record::decode(&slot), None);
            }
        }
    }

    #[test]
    fn a_record_too_large_for_a_slot_is_refused() {
        assert!(record::encode(1, &vec![b'x'; record::MAX_JSON]).is_ok());
        assert!(record::encode(1, &vec![b'x'; record::MAX_JSON + 1]).is_err());
    }

    /// A file written by an earlier format (a JSON document that kept
    /// every applied id, 800 KB at 10,000 tasks) reads with its newest
    /// task as the last one; the first write moves the entity into its
    /// slots and removes the old file.
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
        assert!(!dir.join("e.json").exists(), "the old file outlived the first write");
        let text = String::from_utf8_lossy(&std::fs::read(dir.join("e.entity")).unwrap()).into_owned();
        assert!(!text.contains("applied") && !text.contains("results") && text.contains("t2"), "{text}");
        assert_eq!(s.peek("e").unwrap().seen(), Token::new(1, 1));
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

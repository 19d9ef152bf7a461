//! Durability under `--data-dir`: a write-ahead log of transactions and
//! periodic snapshots of the tree.
//!
//! # Files
//!
//! - `log.<zxid>`: a segment of the log, named by the first zxid it may hold.
//!   An 8-byte magic, then records: `u32 length, u32 crc32c(length),
//!   u32 crc32c(payload), payload`, the payload being a txn header and txn in
//!   jute ([`crate::txn`]). The length has its own checksum so that a damaged
//!   length is recognised as damage, not taken for a record cut short.
//! - `snapshot.<zxid>`: the whole tree as of that zxid: magic, payload,
//!   `u32 crc32c` of all before it. Written to `.tmp`, synced, renamed.
//!   It is encoded a chunk at a time while writes go on (see
//!   [`crate::tree`] for how it stays exact), and taken when
//!   [`Storage::snapshot_due`] says so.
//! - `secret`: the key session passwords derive from, so clients can
//!   reattach to their sessions after a restart.
//! - `LOCK`: held (flock) while a server uses the directory.
//!
//! # Group commit
//!
//! Transactions are appended in zxid order by the thread that orders them
//! (under the tree's write lock) into a channel; one log thread drains
//! whatever has accumulated, writes it in one go, calls `fdatasync` once, and
//! then publishes the highest zxid now durable. Replies wait for that number
//! (see [`crate::core`]), so no client hears of a write that a crash could
//! lose, and one fsync covers every write that arrived while the previous
//! one ran.
//!
//! # Recovery
//!
//! The newest snapshot that can be read, then every logged txn after it, in
//! order. A damaged snapshot is passed over for the one before it, whose log
//! purge keeps for that reason (the log back to the oldest kept snapshot),
//! and recovery must still reach the damaged snapshot's zxid.
//!
//! A crash mid-append leaves the end of the last segment incomplete: a
//! header cut short, a verified header whose payload runs past the end of
//! the file, a final payload that fails its checksum, zero fill, or (after a
//! power loss) a zeroed block with bytes after it. That part was never
//! acknowledged, so it is cut off and recovery goes on (see
//! `is_torn_tail`). Anything else that fails a checksum or does not follow
//! the zxid before it is corruption: recovery stops with the file and
//! offset, and never skips data silently.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::stats::StorageTimes;
use crate::tree::{DataTree, Progress, SnapshotError, SnapshotHeader};
use crate::txn::{decode_record, encode_record, Txn, TxnHeader};

const LOG_MAGIC: &[u8; 8] = b"ZKCLOG01";
const SNAP_MAGIC: &[u8; 8] = b"ZKCSNP01";
/// A new segment starts once the current one passes this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Snapshots kept on disk by default (ZooKeeper's autopurge.snapRetainCount);
/// older ones, and the log before the oldest kept, are removed.
pub const SNAPSHOTS_KEPT: usize = 3;
/// Bytes of snapshot encoded per hold of the tree's lock: about 9,000
/// small znodes, or a millisecond of writers waiting.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Bytes of snapshot written between syncs (see `write_snapshot`).
const SNAPSHOT_SYNC_EVERY: usize = 8 << 20;

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} at offset {offset}: {reason}; refusing to start rather than lose or invent data")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("{path} is in use by another server (its lock is held)")]
    Locked { path: PathBuf },
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io { path: path.to_path_buf(), source }
}

enum LogMsg {
    Record {
        zxid: i64,
        payload: Vec<u8>,
    },
    /// Start a new segment at this zxid (sent under the tree lock when a
    /// snapshot is taken, so every earlier segment is covered by it).
    Roll {
        next_zxid: i64,
    },
}

/// The open data directory.
pub struct Storage {
    dir: PathBuf,
    tx: mpsc::Sender<LogMsg>,
    durable: watch::Receiver<i64>,
    /// Cancelled if the log can no longer be written: the server must stop.
    pub failed: CancellationToken,
    since_snapshot: AtomicU64,
    /// Bytes of log written since the last snapshot began.
    logged_since_snapshot: AtomicU64,
    /// Snapshots kept by purge.
    retain: usize,
    /// How long fsyncs and snapshots take, for the server's statistics.
    pub(crate) times: Arc<StorageTimes>,
    _lock: File,
}

/// What recovery found.
pub struct Recovered {
    pub tree: DataTree,
    pub secret: [u8; 16],
    pub storage: Storage,
    pub snapshot_zxid: i64,
    pub replayed: usize,
}

impl Storage {
    /// Opens (creating if needed) a data dir and recovers the tree from it,
    /// keeping the default number of snapshots.
    pub fn open(dir: &Path) -> Result<Recovered, StorageError> {
        Self::open_retaining(dir, SNAPSHOTS_KEPT)
    }

    /// [`open`](Self::open), keeping `retain` snapshots (at least one).
    pub fn open_retaining(dir: &Path, retain: usize) -> Result<Recovered, StorageError> {
        create_dir_durably(dir)?;
        let lock_path = dir.join("LOCK");
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(StorageError::Locked { path: dir.to_path_buf() });
        }
        let secret = load_secret(dir)?;

        let (snapshots, logs) = list(dir)?;
        let (mut tree, snapshot_zxid) = load_newest_usable_snapshot(&snapshots, &logs)?;
        let mut replayed = 0;
        let logged: u64 = logs.iter().filter_map(|(_, p)| fs::metadata(p).ok()).map(|m| m.len()).sum();
        let last_index = logs.len().checked_sub(1);
        for (i, (_, path)) in logs.iter().enumerate() {
            replayed += replay_segment(path, Some(i) == last_index, &mut tree)?;
        }
        // A fallback must still reach every txn the damaged snapshot held:
        // those were acknowledged.
        if let Some((newest, path)) = snapshots.last() {
            if tree.last_zxid() < *newest {
                return Err(StorageError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    reason: format!(
                        "recovery from an older snapshot and the log reached only zxid {:#x} of {newest:#x}",
                        tree.last_zxid()
                    ),
                });
            }
        }

        // Appends go to a fresh segment. The last one is removed first if
        // recovery left nothing in it (an empty or torn-at-birth segment).
        let next = tree.last_zxid() + 1;
        let seg_path = dir.join(format!("log.{next:016x}"));
        if seg_path.exists() {
            fs::remove_file(&seg_path).map_err(io_err(&seg_path))?;
        }
        let file = new_segment(dir, next)?;
        let (durable_tx, durable) = watch::channel(tree.last_zxid());
        let (tx, rx) = mpsc::channel();
        let failed = CancellationToken::new();
        let times = Arc::new(StorageTimes::default());
        let writer = LogWriter {
            dir: dir.to_path_buf(),
            file,
            size: LOG_MAGIC.len() as u64,
            durable: durable_tx,
            failed: failed.clone(),
            times: times.clone(),
        };
        std::thread::Builder::new().name("txn-log".into()).spawn(move || writer.run(rx)).map_err(io_err(dir))?;
        tracing::info!(dir = %dir.display(), snapshot_zxid = format!("{snapshot_zxid:#x}"), replayed, last_zxid = format!("{:#x}", tree.last_zxid()), "recovered");
        Ok(Recovered {
            tree,
            secret,
            storage: Storage {
                dir: dir.to_path_buf(),
                tx,
                durable,
                failed,
                since_snapshot: AtomicU64::new(replayed as u64),
                logged_since_snapshot: AtomicU64::new(logged),
                retain: retain.max(1),
                times,
                _lock: lock,
            },
            snapshot_zxid,
            replayed,
        })
    }

    /// Queues a transaction for the log. Called in zxid order, under the
    /// tree's write lock; never blocks.
    pub fn append(&self, hdr: &TxnHeader, txn: &Txn) {
        let payload = encode_record(hdr, txn);
        self.since_snapshot.fetch_add(1, Ordering::Relaxed);
        self.logged_since_snapshot.fetch_add(payload.len() as u64, Ordering::Relaxed);
        if self.tx.send(LogMsg::Record { zxid: hdr.zxid, payload }).is_err() {
            // The log thread is gone: it has already reported why and
            // cancelled `failed`; nothing after this becomes durable.
            self.failed.cancel();
        }
    }

    /// The highest zxid known to be on disk.
    pub fn durable(&self) -> watch::Receiver<i64> {
        self.durable.clone()
    }

    /// Whether a snapshot is due: `snap_count` transactions have been
    /// logged since the last one (ZooKeeper's rule) *and* the log since
    /// then is at least as large as the snapshot would be. A snapshot
    /// exists to bound recovery (replaying the log) and the log's disk
    /// use; writing a whole large tree to save replaying a log a fraction
    /// of its size costs more disk bandwidth than it saves, and under a
    /// heavy write load that bandwidth is what the log's fsyncs wait for.
    /// With both rules, snapshots never write more bytes than the log
    /// does, and recovery replays at most `snap_count` transactions or one
    /// snapshot's worth of log, whichever is more.
    pub fn snapshot_due(&self, snap_count: u64, snapshot_bytes: u64) -> bool {
        self.since_snapshot.load(Ordering::Relaxed) >= snap_count
            && self.logged_since_snapshot.load(Ordering::Relaxed) >= snapshot_bytes
    }

    /// Begins a snapshot of the tree (the caller holds the write lock, so
    /// no txn is half-applied) and rolls the log at the same point, so that
    /// every older segment is covered by the snapshot.
    pub fn begin_snapshot(&self, tree: &mut DataTree) -> SnapshotHeader {
        let header = tree.begin_snapshot();
        let _ = self.tx.send(LogMsg::Roll { next_zxid: header.zxid() + 1 });
        self.since_snapshot.store(0, Ordering::Relaxed);
        self.logged_since_snapshot.store(0, Ordering::Relaxed);
        header
    }

    /// Writes a snapshot begun with [`begin_snapshot`](Self::begin_snapshot):
    /// `next_chunk` encodes the next nodes into the buffer it is given (the
    /// caller takes the tree's lock for each chunk, and only for it) until
    /// it reports [`Progress::Done`]. Then the file is synced and renamed
    /// into place, and what it makes unnecessary is removed. Blocking: run
    /// it off the async threads.
    pub fn write_snapshot(
        &self,
        header: SnapshotHeader,
        mut next_chunk: impl FnMut(&mut Vec<u8>) -> Result<Progress, SnapshotError>,
    ) -> Result<i64, StorageError> {
        let zxid = header.zxid();
        let path = self.dir.join(format!("snapshot.{zxid:016x}"));
        let tmp = self.dir.join(format!("snapshot.{zxid:016x}.tmp"));
        let started = Instant::now();
        let written = self.write_snapshot_file(&tmp, &path, header, &mut next_chunk);
        if written.is_err() {
            // A partial snapshot is of no use (recovery removes it), but it
            // holds disk space: on a disk that has filled up, space the log
            // needs, and each failed attempt would leave one more.
            let _ = fs::remove_file(&tmp);
        }
        let bytes = written?;
        sync_dir(&self.dir)?;
        self.times.snapshot.record(started.elapsed());
        tracing::debug!(path = %path.display(), bytes, "snapshot written");
        self.purge()?;
        Ok(zxid)
    }

    /// Writes and syncs the snapshot to `tmp`, then renames it to `path`;
    /// returns its size.
    fn write_snapshot_file(
        &self,
        tmp: &Path,
        path: &Path,
        header: SnapshotHeader,
        next_chunk: &mut impl FnMut(&mut Vec<u8>) -> Result<Progress, SnapshotError>,
    ) -> Result<usize, StorageError> {
        let mut f = File::create(tmp).map_err(io_err(tmp))?;
        let mut buf = Vec::with_capacity(SNAPSHOT_CHUNK + (64 << 10));
        buf.extend_from_slice(SNAP_MAGIC);
        header.write(&mut buf);
        let (mut crc, mut bytes) = (0u32, 0usize);
        let mut unsynced = 0usize;
        loop {
            let progress = next_chunk(&mut buf)?;
            crc = crc32c::crc32c_append(crc, &buf);
            f.write_all(&buf).map_err(io_err(tmp))?;
            (bytes, unsynced) = (bytes + buf.len(), unsynced + buf.len());
            buf.clear();
            // Synced a slice at a time: left to the kernel, hundreds of MB
            // of dirty snapshot pages go to the disk in one burst, and the
            // log's fdatasync (which every write's reply waits for) queues
            // behind it. Measured: the worst write p999 in a run halved.
            if unsynced >= SNAPSHOT_SYNC_EVERY {
                f.sync_data().map_err(io_err(tmp))?;
                unsynced = 0;
            }
            if progress == Progress::Done {
                break;
            }
        }
        f.write_all(&crc.to_be_bytes()).map_err(io_err(tmp))?;
        f.sync_all().map_err(io_err(tmp))?;
        drop(f);
        fs::rename(tmp, path).map_err(io_err(path))?;
        Ok(bytes)
    }

    /// A whole snapshot in one go, for callers that own the tree (tests).
    pub fn snapshot(&self, tree: &mut DataTree) -> Result<i64, StorageError> {
        let header = self.begin_snapshot(tree);
        self.write_snapshot(header, |buf| tree.snapshot_chunk(buf, SNAPSHOT_CHUNK))
    }

    /// Keeps the newest snapshots and the log segments that each of them
    /// needs: recovery falls back to an older snapshot when a newer one
    /// cannot be read, and replays the log from there.
    fn purge(&self) -> Result<(), StorageError> {
        let (snapshots, logs) = list(&self.dir)?;
        let kept = snapshots.len().saturating_sub(self.retain);
        let Some((oldest_kept, _)) = snapshots.get(kept) else {
            return Ok(());
        };
        for (_, path) in &snapshots[..kept] {
            fs::remove_file(path).map_err(io_err(path))?;
        }
        // A segment named Z holds zxids >= Z; the next segment's name bounds
        // it from above. Everything up to the oldest kept snapshot is covered.
        for pair in logs.windows(2) {
            let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
            if *next_first <= oldest_kept + 1 {
                fs::remove_file(path).map_err(io_err(path))?;
            }
        }
        Ok(())
    }
}

struct LogWriter {
    dir: PathBuf,
    file: File,
    size: u64,
    durable: watch::Sender<i64>,
    failed: CancellationToken,
    times: Arc<StorageTimes>,
}

impl LogWriter {
    fn run(mut self, rx: mpsc::Receiver<LogMsg>) {
        let mut buf = Vec::with_capacity(1 << 20);
        while let Ok(first) = rx.recv() {
            let mut last_zxid = None;
            let mut msg = Some(first);
            // Drain what has accumulated: one write and one fsync for all
            // of it (bounded, so a flood still makes progress visible).
            while let Some(m) = msg.take() {
                if let Err(e) = self.handle(m, &mut buf, &mut last_zxid) {
                    return self.fail(e);
                }
                if buf.len() < 8 << 20 {
                    msg = rx.try_recv().ok();
                }
            }
            if let Err(e) = self.flush(&mut buf) {
                return self.fail(e);
            }
            if let Some(z) = last_zxid {
                self.durable.send_replace(z);
            }
        }
    }

    fn handle(&mut self, msg: LogMsg, buf: &mut Vec<u8>, last: &mut Option<i64>) -> Result<(), StorageError> {
        match msg {
            LogMsg::Record { zxid, payload } => {
                if self.size + buf.len() as u64 >= SEGMENT_BYTES {
                    self.flush(buf)?;
                    self.roll(zxid)?;
                }
                buf.extend_from_slice(&record_header(&payload));
                buf.extend_from_slice(&payload);
                *last = Some(zxid);
            }
            LogMsg::Roll { next_zxid } => {
                self.flush(buf)?;
                if let Some(z) = last.take() {
                    self.durable.send_replace(z);
                }
                self.roll(next_zxid)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, buf: &mut Vec<u8>) -> Result<(), StorageError> {
        if buf.is_empty() {
            return Ok(());
        }
        let path = self.dir.clone();
        self.file.write_all(buf).map_err(io_err(&path))?;
        let started = Instant::now();
        self.file.sync_data().map_err(io_err(&path))?;
        self.times.fsync.record(started.elapsed());
        self.size += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    fn roll(&mut self, next_zxid: i64) -> Result<(), StorageError> {
        let path = self.dir.join(format!("log.{next_zxid:016x}"));
        if path.exists() {
            // Nothing was appended since the last roll: keep using it.
            return Ok(());
        }
        self.file = new_segment(&self.dir, next_zxid)?;
        self.size = LOG_MAGIC.len() as u64;
        Ok(())
    }

    fn fail(self, e: StorageError) {
        tracing::error!(
            "cannot write the transaction log: {e}; the server stops so that no acknowledged write can be lost"
        );
        self.failed.cancel();
    }
}

fn new_segment(dir: &Path, first_zxid: i64) -> Result<File, StorageError> {
    let path = dir.join(format!("log.{first_zxid:016x}"));
    let mut f = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io_err(&path))?;
    f.write_all(LOG_MAGIC).map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))?;
    // The segment's name lives in the directory: without this, a power cut
    // takes the whole segment, and every write acknowledged in it, away.
    if !failpoint_armed("coordinator/skip-segment-dir-fsync") {
        sync_dir(dir)?;
    }
    Ok(f)
}

/// Whether the failpoint `name` is armed in `FAILPOINTS` (comma-separated
/// names, the variable servicekit's failpoints read; the coordinator does
/// not depend on servicekit). The only one here breaks durability on
/// purpose, so that the power-loss test can show its checker catches a
/// segment lost with its acknowledged writes. Read once.
fn failpoint_armed(name: &str) -> bool {
    static ARMED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ARMED
        .get_or_init(|| {
            std::env::var("FAILPOINTS").unwrap_or_default().split(',').map(|s| s.trim().to_string()).collect()
        })
        .iter()
        .any(|a| a == name)
}

/// Creates `dir` and its missing parents so that they survive a power
/// cut. A directory's name lives in its parent, which fsyncing the
/// directory itself does not persist: without the parent's fsync, a data
/// dir the server created on first start could vanish at a power cut with
/// every write acknowledged in it (found by the power-loss tests, which
/// lost a fresh data dir whole at the first cut).
fn create_dir_durably(dir: &Path) -> Result<(), StorageError> {
    let mut created = Vec::new();
    let mut d = dir;
    while !d.as_os_str().is_empty() && !d.exists() {
        created.push(d);
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    // Top-down, so each name is durable before the one under it.
    for new in created.iter().rev() {
        let parent = match new.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

fn load_secret(dir: &Path) -> Result<[u8; 16], StorageError> {
    let path = dir.join("secret");
    match fs::read(&path) {
        Ok(bytes) if bytes.len() == 16 => {
            let mut s = [0u8; 16];
            s.copy_from_slice(&bytes);
            Ok(s)
        }
        Ok(_) => Err(StorageError::Corrupt { path, offset: 0, reason: "expected 16 bytes".into() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let secret: [u8; 16] = rand::random();
            let tmp = dir.join("secret.tmp");
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&secret).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
            fs::rename(&tmp, &path).map_err(io_err(&path))?;
            sync_dir(dir)?;
            Ok(secret)
        }
        Err(e) => Err(StorageError::Io { path, source: e }),
    }
}

type Listing = (Vec<(i64, PathBuf)>, Vec<(i64, PathBuf)>);

/// Snapshots and log segments, each sorted by zxid. Stray `.tmp` files (a
/// snapshot interrupted by a crash) are removed.
fn list(dir: &Path) -> Result<Listing, StorageError> {
    let mut snaps = Vec::new();
    let mut logs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.ends_with(".tmp") {
            fs::remove_file(&path).map_err(io_err(&path))?;
        } else if let Some(z) = name.strip_prefix("snapshot.").and_then(|h| i64::from_str_radix(h, 16).ok()) {
            snaps.push((z, path));
        } else if let Some(z) = name.strip_prefix("log.").and_then(|h| i64::from_str_radix(h, 16).ok()) {
            logs.push((z, path));
        }
    }
    snaps.sort();
    logs.sort();
    Ok((snaps, logs))
}

/// The newest snapshot that reads and whose log is kept (the segments from
/// just after it on), or an empty tree when the log goes back to zxid 1.
/// A damaged snapshot is passed over with a warning; if none can be used,
/// the newest one's damage is the error.
fn load_newest_usable_snapshot(
    snapshots: &[(i64, PathBuf)],
    logs: &[(i64, PathBuf)],
) -> Result<(DataTree, i64), StorageError> {
    let log_from = logs.first().map(|(z, _)| *z);
    let mut first_err = None;
    for (i, (zxid, path)) in snapshots.iter().enumerate().rev() {
        let newest = i + 1 == snapshots.len();
        // The newest needs no log; an older one, the log from zxid + 1.
        if !newest && log_from.is_none_or(|from| from > zxid + 1) {
            break;
        }
        match read_snapshot(path) {
            Ok(tree) => {
                if !newest {
                    tracing::warn!(path = %path.display(), "recovering from an older snapshot and the log after it");
                }
                return Ok((tree, *zxid));
            }
            Err(e) => {
                tracing::warn!(error = %e, "a snapshot cannot be read; trying an older one");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        None => Ok((DataTree::new(), 0)),
        Some(_) if log_from == Some(1) => {
            tracing::warn!("recovering from the whole log: no snapshot can be read");
            Ok((DataTree::new(), 0))
        }
        Some(e) => Err(e),
    }
}

fn read_snapshot(path: &Path) -> Result<DataTree, StorageError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    decode_snapshot(&bytes).map_err(|(offset, reason)| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    })
}

/// A snapshot file's bytes to a tree, or the offset and reason it cannot
/// be read. No I/O: the fuzz targets feed it arbitrary bytes.
pub fn decode_snapshot(bytes: &[u8]) -> Result<DataTree, (usize, String)> {
    if bytes.len() < SNAP_MAGIC.len() + 4 || &bytes[..8] != SNAP_MAGIC {
        return Err((0, "not a snapshot (bad magic)".into()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body).to_be_bytes() != crc {
        return Err((body.len(), "checksum mismatch".into()));
    }
    DataTree::read_snapshot(&body[8..]).map_err(|e| (8, format!("undecodable: {e}")))
}

/// A well-formed log segment holding `payloads` as its records (each a txn
/// header and txn, as `encode_record` makes them, or anything else): for
/// tests and for the fuzz targets, which get past the checksums this way to
/// reach the record decoder.
pub fn log_segment_of<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = LOG_MAGIC.to_vec();
    for p in payloads {
        out.extend_from_slice(&record_header(p));
        out.extend_from_slice(p);
    }
    out
}

/// A snapshot file around `body` (the tree's encoding), with its magic and
/// a valid checksum: the snapshot counterpart of [`log_segment_of`].
pub fn snapshot_file_of(body: &[u8]) -> Vec<u8> {
    let mut out = SNAP_MAGIC.to_vec();
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// A whole snapshot file of `tree` in memory, as [`Storage::snapshot`]
/// would write it: for tests and the fuzz targets' round trips.
pub fn encode_snapshot(tree: &mut DataTree) -> Result<Vec<u8>, SnapshotError> {
    let mut body = Vec::new();
    tree.begin_snapshot().write(&mut body);
    while tree.snapshot_chunk(&mut body, SNAPSHOT_CHUNK)? != Progress::Done {}
    Ok(snapshot_file_of(&body))
}

/// What replaying one segment's bytes did.
#[derive(Debug, PartialEq, Eq)]
pub struct SegmentReplay {
    /// Transactions applied (those the tree already had are skipped).
    pub applied: usize,
    /// Where a torn tail begins, in the last segment: the file is cut there.
    pub torn_at: Option<usize>,
}

/// Replays one segment into the tree; returns how many txns it applied.
/// In the last segment a torn final record is cut off (truncating the file).
fn replay_segment(path: &Path, last: bool, tree: &mut DataTree) -> Result<usize, StorageError> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err(path))?;
    if bytes.len() < LOG_MAGIC.len() && last {
        // Created but its magic never fully reached the disk.
        tracing::warn!(path = %path.display(), "removing a log segment torn at creation");
        fs::remove_file(path).map_err(io_err(path))?;
        return Ok(0);
    }
    let replay = replay_bytes(&bytes, last, tree).map_err(|(offset, reason)| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    })?;
    if let Some(at) = replay.torn_at {
        tracing::warn!(path = %path.display(), offset = at, "cutting a torn end of the log (a crash mid-append; it was never acknowledged)");
        let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
        f.set_len(at as u64).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
    } else if last {
        // A process crash (kill -9) keeps the page cache: the last records
        // read here may have been written but never synced (the server
        // died before its fdatasync returned). Recovery applies them and
        // every write acknowledged from now on follows them, so they must
        // be durable before anything is appended: otherwise a later power
        // cut drops them from the middle of the log, behind acknowledged
        // records, and recovery refuses to start ("zxid does not follow").
        // Found by the power-loss tests (a kill -9, a restart, then a cut).
        File::open(path).and_then(|f| f.sync_all()).map_err(io_err(path))?;
    }
    Ok(replay.applied)
}

/// Replays a log segment's bytes into the tree, or answers the offset and
/// reason of the damage that stops recovery. `last` says whether this is
/// the last segment, the only one whose end may be torn. No I/O: the fuzz
/// targets feed it arbitrary bytes.
pub fn replay_bytes(bytes: &[u8], last: bool, tree: &mut DataTree) -> Result<SegmentReplay, (usize, String)> {
    if bytes.len() < LOG_MAGIC.len() {
        return Err((0, "segment shorter than its header".into()));
    }
    if &bytes[..8] != LOG_MAGIC {
        return Err((0, "not a log segment (bad magic)".into()));
    }
    let mut at = LOG_MAGIC.len();
    let mut applied = 0;
    while at < bytes.len() {
        match next_record(bytes, at) {
            Ok((payload, end)) => {
                let (hdr, txn) = decode_record(payload).map_err(|e| (at, format!("undecodable record: {e}")))?;
                if hdr.zxid <= tree.last_zxid() {
                    // Already in the snapshot.
                } else if hdr.zxid != tree.last_zxid() + 1 {
                    return Err((
                        at,
                        format!("zxid {:#x} does not follow {:#x}: a record is missing", hdr.zxid, tree.last_zxid()),
                    ));
                } else {
                    tree.apply(&hdr, &txn, &mut Vec::new());
                    applied += 1;
                }
                at = end;
            }
            Err(reason) => {
                // Torn only if nothing valid could follow: the bad record is
                // the tail of the last segment (see `is_torn_tail`).
                if !(last && is_torn_tail(bytes, at)) {
                    return Err((at, reason));
                }
                return Ok(SegmentReplay { applied, torn_at: Some(at) });
            }
        }
    }
    Ok(SegmentReplay { applied, torn_at: None })
}

const RECORD_HEADER: usize = 12;
/// The unit a power loss zeroes: a file-system block whose data never
/// reached the disk reads back as zeros once the file's size did.
const BLOCK: usize = 4096;

fn record_header(payload: &[u8]) -> [u8; RECORD_HEADER] {
    let len = (payload.len() as u32).to_be_bytes();
    let mut h = [0u8; RECORD_HEADER];
    h[..4].copy_from_slice(&len);
    h[4..8].copy_from_slice(&crc32c::crc32c(&len).to_be_bytes());
    h[8..].copy_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    h
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The record at `at`: its payload and where the next one starts.
fn next_record(bytes: &[u8], at: usize) -> Result<(&[u8], usize), String> {
    let rest = &bytes[at..];
    if rest.len() < RECORD_HEADER {
        return Err(format!("record header cut short ({} of {RECORD_HEADER} bytes)", rest.len()));
    }
    if crc32c::crc32c(&rest[..4]) != be32(&rest[4..]) {
        return Err("record length fails its checksum".into());
    }
    let len = be32(rest) as usize;
    if len == 0 {
        return Err("zero-length record".into());
    }
    if rest.len() < RECORD_HEADER + len {
        return Err(format!("record cut short ({} of {len} bytes)", rest.len() - RECORD_HEADER));
    }
    let payload = &rest[RECORD_HEADER..RECORD_HEADER + len];
    if crc32c::crc32c(payload) != be32(&rest[8..]) {
        return Err("record payload fails its checksum".into());
    }
    Ok((payload, at + RECORD_HEADER + len))
}

/// Is the bad record at `at` what a crash mid-append leaves behind (so
/// nothing valid can follow it)? Only the last segment is asked: earlier
/// ones were synced whole before the next was created.
///
/// - A header cut short, or zero fill to the end of the file.
/// - A header of zeros: nothing was ever written there. ZooKeeper reads a
///   zero length as the end of the log for the same reason; a whole zero
///   header is asked for, since one flipped bit can zero a length but not
///   the checksums beside it.
/// - A zeroed block (file-aligned) that starts inside the record: after a
///   power loss, a block whose data never reached the disk reads back as
///   zeros, and blocks after it may have reached it. What follows was
///   written in the same unsynced batch, so none of it was acknowledged.
/// - A header that verifies, whose payload runs past the end of the file
///   or ends exactly there with a bad checksum.
///
/// A header that fails its own checksum is otherwise damage, never a torn
/// write: its length cannot be trusted.
fn is_torn_tail(bytes: &[u8], at: usize) -> bool {
    let rest = &bytes[at..];
    if rest.len() < RECORD_HEADER || rest.iter().all(|b| *b == 0) || rest[..RECORD_HEADER].iter().all(|b| *b == 0) {
        return true;
    }
    let header_ok = crc32c::crc32c(&rest[..4]) == be32(&rest[4..]);
    let extent = if header_ok { RECORD_HEADER.saturating_add(be32(rest) as usize) } else { RECORD_HEADER };
    let end = at.saturating_add(extent).min(bytes.len());
    let mut block = (at / BLOCK + 1) * BLOCK;
    while block < end {
        if bytes[block..(block + BLOCK).min(bytes.len())].iter().all(|b| *b == 0) {
            return true;
        }
        block += BLOCK;
    }
    header_ok && rest.len() <= extent
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use bytes::Bytes;

    use crate::acl;
    use crate::txn::NodeKind;

    fn tmpdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("coord-storage-{name}-{}-{}", std::process::id(), rand::random::<u32>()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn create(path: &str, pcv: i32) -> Txn {
        Txn::Create {
            path: path.into(),
            data: Some(Bytes::from(path.as_bytes().to_vec())),
            acl: Arc::new(acl::open_acl_unsafe()),
            kind: NodeKind::Persistent,
            parent_cversion: pcv,
        }
    }

    /// Appends `n` creates /n0../n{n-1} through a running Storage and waits
    /// until they are durable.
    fn write_n(dir: &Path, from: usize, n: usize) {
        let rec = Storage::open(dir).unwrap();
        let mut tree = rec.tree;
        let mut durable = rec.storage.durable();
        let mut last = 0;
        for i in from..from + n {
            let hdr = TxnHeader { session_id: 1, cxid: i as i32, zxid: tree.last_zxid() + 1, time: 1 };
            let txn = create(&format!("/n{i}"), i as i32 + 1);
            tree.apply(&hdr, &txn, &mut Vec::new());
            rec.storage.append(&hdr, &txn);
            last = hdr.zxid;
        }
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async { durable.wait_for(|d| *d >= last).await.unwrap() });
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        list(dir).unwrap().1.into_iter().map(|(_, p)| p).collect()
    }

    #[test]
    fn recovers_what_was_written() {
        let dir = tmpdir("recover");
        write_n(&dir, 0, 50);
        write_n(&dir, 50, 50);
        let rec = Storage::open(&dir).unwrap();
        assert_eq!(rec.tree.last_zxid(), 100);
        assert_eq!(rec.replayed, 100);
        assert_eq!(rec.tree.get("/n99").unwrap().data(), Some(&b"/n99"[..]));
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_rest_kept() {
        let dir = tmpdir("torn");
        write_n(&dir, 0, 10);
        let seg = segments(&dir).into_iter().find(|p| fs::metadata(p).unwrap().len() > 8).unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        // Crash mid-append: the last record loses its final 3 bytes. It is
        // in the last segment with data (a later, empty segment was removed
        // by reopening, so make this the last one).
        for p in segments(&dir) {
            if p != seg {
                fs::remove_file(p).unwrap();
            }
        }
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 3).unwrap();
        let rec = Storage::open(&dir).unwrap();
        assert_eq!(rec.tree.last_zxid(), 9);
        assert!(rec.tree.get("/n9").is_none());
        drop(rec);
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn corruption_in_the_middle_is_reported_with_file_and_offset() {
        let dir = tmpdir("corrupt");
        write_n(&dir, 0, 10);
        let seg = segments(&dir).into_iter().find(|p| fs::metadata(p).unwrap().len() > 8).unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        bytes[30] ^= 0xff; // inside the first record's payload
        fs::write(&seg, &bytes).unwrap();
        match Storage::open(&dir) {
            Err(StorageError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, seg);
                assert_eq!(offset, 8);
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("corruption was not detected"),
        }
        fs::remove_dir_all(dir).ok();
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A single-segment data dir holding `n` records, and the byte
        /// offset where each record ends.
        fn fixture(n: usize) -> (PathBuf, PathBuf, Vec<u64>) {
            let dir = tmpdir("prop");
            fs::create_dir_all(&dir).unwrap();
            let seg = dir.join("log.0000000000000001");
            let mut bytes = LOG_MAGIC.to_vec();
            let mut ends = Vec::new();
            for i in 0..n {
                let hdr = TxnHeader { session_id: 1, cxid: 0, zxid: i as i64 + 1, time: 1 };
                let payload = encode_record(&hdr, &create(&format!("/p{i}"), i as i32 + 1));
                bytes.extend_from_slice(&record_header(&payload));
                bytes.extend_from_slice(&payload);
                ends.push(bytes.len() as u64);
            }
            fs::write(&seg, bytes).unwrap();
            (dir, seg, ends)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Cutting the log anywhere (a crash mid-append) loses only the
            /// records after the cut: recovery keeps exactly the whole ones.
            #[test]
            fn truncation_recovers_the_whole_prefix(n in 1usize..20, cut in any::<proptest::sample::Index>()) {
                let (dir, seg, ends) = fixture(n);
                let len = *ends.last().unwrap();
                let cut_at = 8 + cut.index((len - 8) as usize + 1) as u64;
                OpenOptions::new().write(true).open(&seg).unwrap().set_len(cut_at).unwrap();
                let whole = ends.iter().filter(|e| **e <= cut_at).count();
                let rec = Storage::open(&dir).unwrap();
                prop_assert_eq!(rec.tree.last_zxid(), whole as i64);
                drop(rec);
                fs::remove_dir_all(dir).ok();
            }

            /// A flipped byte is never silently accepted: either recovery
            /// reports corruption (file and offset), or, when the damage is
            /// in the final record, cuts that record as a torn tail.
            #[test]
            fn corruption_is_reported_or_only_the_tail_is_cut(n in 2usize..20, at in any::<proptest::sample::Index>(), bit in 0u8..8) {
                let (dir, seg, ends) = fixture(n);
                let mut bytes = fs::read(&seg).unwrap();
                let pos = 8 + at.index(bytes.len() - 8);
                bytes[pos] ^= 1 << bit;
                fs::write(&seg, &bytes).unwrap();
                let last_start = ends[n - 2] as usize;
                match Storage::open(&dir) {
                    Ok(rec) => {
                        prop_assert!(pos >= last_start, "damage at {} before the last record ({}) was accepted", pos, last_start);
                        prop_assert_eq!(rec.tree.last_zxid(), n as i64 - 1);
                    }
                    Err(StorageError::Corrupt { path, .. }) => prop_assert_eq!(path, seg),
                    Err(e) => prop_assert!(false, "unexpected error {}", e),
                }
                fs::remove_dir_all(dir).ok();
            }
        }
    }

    /// A power loss can leave the unsynced end of the log as a zeroed
    /// block followed by bytes that did reach the disk. Nothing there was
    /// acknowledged (its fdatasync never returned), so it is the end of the
    /// log: cut off, not reported as corruption.
    #[test]
    fn a_zeroed_block_then_data_in_the_tail_is_the_end_of_the_log() {
        // Where the zeros start: at a record's start (unaligned: a zero
        // length is the end, as in ZooKeeper), or at a block boundary inside
        // a record (its start reached the disk, the block after did not).
        for (name, at_record) in [("at-record", true), ("mid-record", false)] {
            let dir = tmpdir(name);
            write_n(&dir, 0, 300);
            let seg = segments(&dir).into_iter().find(|p| fs::metadata(p).unwrap().len() > 8).unwrap();
            for p in segments(&dir) {
                if p != seg {
                    fs::remove_file(p).unwrap();
                }
            }
            let mut bytes = fs::read(&seg).unwrap();
            let mut starts = vec![LOG_MAGIC.len()];
            while let Ok((_, end)) = next_record(&bytes, *starts.last().unwrap()) {
                starts.push(end);
            }
            let zero_at = if at_record { starts[6] } else { 2 * BLOCK };
            // The record the zeros start in: records before it are whole.
            let torn = starts.iter().rposition(|s| *s <= zero_at).unwrap();
            assert!(at_record || starts[torn] < zero_at, "the block boundary falls inside a record");
            assert!(bytes.len() > zero_at + BLOCK, "{name}: records after the zeroed block");
            bytes[zero_at..zero_at + BLOCK].fill(0);
            fs::write(&seg, &bytes).unwrap();
            let rec = Storage::open(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(rec.tree.last_zxid(), torn as i64, "{name}");
            drop(rec);
            assert_eq!(fs::metadata(&seg).unwrap().len(), starts[torn] as u64, "{name}: cut at the torn record");
            fs::remove_dir_all(dir).ok();
        }
    }

    /// The same zeros in a record that is followed by whole records are
    /// damage to acknowledged data: refused, with file and offset.
    #[test]
    fn zeros_in_the_middle_of_the_log_are_still_corruption() {
        let dir = tmpdir("zero-middle");
        write_n(&dir, 0, 10);
        let seg = segments(&dir).into_iter().find(|p| fs::metadata(p).unwrap().len() > 8).unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        let second = next_record(&bytes, LOG_MAGIC.len()).unwrap().1;
        bytes[second..second + 4].fill(0);
        fs::write(&seg, &bytes).unwrap();
        // Not the last segment: nothing may be cut there.
        write_n_raw_segment_after(&dir, &seg);
        match Storage::open(&dir) {
            Err(StorageError::Corrupt { path, offset, .. }) => assert_eq!((path, offset), (seg, second as u64)),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("zeros before acknowledged records were accepted"),
        }
        fs::remove_dir_all(dir).ok();
    }

    /// Adds an empty-but-valid later segment, so `seg` is not the last one.
    fn write_n_raw_segment_after(dir: &Path, seg: &Path) {
        let later = dir.join(format!("log.{:016x}", 1000));
        assert_ne!(later, seg);
        let mut bytes = LOG_MAGIC.to_vec();
        let hdr = TxnHeader { session_id: 1, cxid: 0, zxid: 1000, time: 1 };
        let payload = encode_record(&hdr, &create("/later", 1));
        bytes.extend_from_slice(&record_header(&payload));
        bytes.extend_from_slice(&payload);
        fs::write(later, bytes).unwrap();
    }

    /// Three snapshots are kept so that a damaged newest one is not the end
    /// of the data: recovery falls back to the newest snapshot that reads,
    /// and replays the log from there, which purge keeps for that reason.
    #[test]
    fn a_corrupt_newest_snapshot_falls_back_to_an_older_one() {
        let dir = tmpdir("snap-fallback");
        for round in 0..3 {
            write_n(&dir, round * 20, 20);
            let mut rec = Storage::open(&dir).unwrap();
            rec.storage.snapshot(&mut rec.tree).unwrap();
        }
        write_n(&dir, 60, 5);
        let (snaps, _) = list(&dir).unwrap();
        assert_eq!(snaps.len(), 3);
        let newest = snaps.last().unwrap().1.clone();
        let mut bytes = fs::read(&newest).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        fs::write(&newest, &bytes).unwrap();
        let rec = Storage::open(&dir).unwrap_or_else(|e| panic!("no fallback: {e}"));
        assert_eq!(rec.tree.last_zxid(), 65);
        assert_eq!(rec.snapshot_zxid, 40, "the snapshot before the damaged one");
        for i in 0..65 {
            assert!(rec.tree.get(&format!("/n{i}")).is_some(), "/n{i} lost");
        }
        drop(rec);
        // Every snapshot damaged, and the log before the oldest purged:
        // refused, naming the newest snapshot.
        for (_, p) in list(&dir).unwrap().0.into_iter().filter(|(_, p)| *p != newest) {
            let mut b = fs::read(&p).unwrap();
            let mid = b.len() / 2;
            b[mid] ^= 0x40;
            fs::write(&p, &b).unwrap();
        }
        match Storage::open(&dir) {
            Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, newest),
            Err(e) => panic!("unexpected error {e}"),
            Ok(r) => panic!("started with zxid {:#x} although every snapshot is damaged", r.tree.last_zxid()),
        }
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn purge_keeps_the_retained_snapshots_and_the_log_the_oldest_needs() {
        let dir = tmpdir("retain");
        for round in 0..6 {
            write_n(&dir, round * 5, 5);
            let mut rec = Storage::open_retaining(&dir, 4).unwrap();
            rec.storage.snapshot(&mut rec.tree).unwrap();
        }
        let (snaps, logs) = list(&dir).unwrap();
        assert_eq!(snaps.iter().map(|(z, _)| *z).collect::<Vec<_>>(), vec![15, 20, 25, 30]);
        assert!(logs.first().is_some_and(|(z, _)| *z <= 16), "the log after the oldest kept snapshot is kept");
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_second_server_cannot_open_the_same_dir() {
        let dir = tmpdir("lock");
        let _first = Storage::open(&dir).unwrap();
        assert!(matches!(Storage::open(&dir), Err(StorageError::Locked { .. })));
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn snapshots_cover_and_purge_the_log() {
        let dir = tmpdir("snap");
        write_n(&dir, 0, 20);
        {
            let mut rec = Storage::open(&dir).unwrap();
            assert_eq!(rec.storage.snapshot(&mut rec.tree).unwrap(), 20);
        }
        let rec = Storage::open(&dir).unwrap();
        assert_eq!(rec.snapshot_zxid, 20);
        assert_eq!(rec.replayed, 0);
        assert_eq!(rec.tree.get("/n19").unwrap().stat.czxid, 20);
        fs::remove_dir_all(dir).ok();
    }

    /// A snapshot that fails half-written (the disk filled up, or the
    /// tree's self-check) leaves no partial file holding disk space.
    #[test]
    fn a_failed_snapshot_leaves_no_partial_file() {
        let dir = tmpdir("snapfail");
        write_n(&dir, 0, 20);
        let mut rec = Storage::open(&dir).unwrap();
        let header = rec.storage.begin_snapshot(&mut rec.tree);
        let mut chunks = 0;
        let result = rec.storage.write_snapshot(header, |buf| {
            chunks += 1;
            if chunks == 1 {
                buf.extend_from_slice(&[7u8; 1 << 16]);
                Ok(Progress::More)
            } else {
                Err(SnapshotError::NotStarted)
            }
        });
        assert!(result.is_err(), "the snapshot must fail");
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("snapshot."))
            .collect();
        assert!(left.is_empty(), "a failed snapshot left {left:?}");
        drop(rec);
        fs::remove_dir_all(dir).ok();
    }
}

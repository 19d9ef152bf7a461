//! A file system that can lose power: what processes see (the live state)
//! is kept apart from what would survive a power cut (the durable state),
//! the way LazyFS does it for the Jepsen and etcd suites.
//!
//! A kill -9 keeps the kernel's page cache, so it never loses a write that
//! was not fsynced; only a power cut shows whether a program orders its
//! fsyncs, renames and directory entries right. [`CrashFs`] mounts an
//! in-memory FUSE file system on a directory:
//!
//! - every write, truncate, create, mkdir, unlink, rmdir, rename, link and
//!   symlink changes the live state, which is all a process ever reads;
//! - `fsync`/`fdatasync` of a file makes its contents and size durable,
//!   and nothing else: not the name it was created or renamed under;
//! - `fsync` of a directory makes its entries durable (names to inodes,
//!   so a rename into or out of it, a create, an unlink);
//! - [`CrashFs::crash`], called once every process using the mount has
//!   been killed, replaces the live state by the durable one. With
//!   [`Crash::Torn`], each block written since its file's last fsync
//!   survives or not by a seeded coin (LazyFS's torn writes): a log's tail
//!   can come back as a zeroed block followed by data, as after a real
//!   power loss that reached the disk out of order.
//! - [`CrashFs::cut_after`] cuts the power at an exact, seeded change: the
//!   request after it and all later ones fail with EIO, so a program (in
//!   this process or another) stops mid-operation where a kill could only
//!   land by luck; then [`CrashFs::crash`] brings the disk back.
//!
//! Use, from a test or a harness:
//!
//! ```text
//! let disk = CrashFs::mount(&scratch.join("disk"), CrashFsOptions::default())?;
//! let server = start(["--data-dir", disk.path().join("data")]);  // any process
//! // ... traffic, recording what was acknowledged ...
//! server.kill9();                                  // nobody may use the mount
//! disk.crash(Crash::Torn { seed });                // or Crash::DropUnsynced
//! let server = start(["--data-dir", disk.path().join("data")]);  // recovery
//! // ... every acknowledged write must be there ...
//! ```
//!
//! The rules are POSIX's, the strict reading: a file system may persist
//! more (ext4's journal often does), never less, so a program that passes
//! here is durable on any of them.
//!
//! The kernel caches nothing of it (entries and attributes live for 0 s,
//! files are opened with direct I/O), so what a process sees after a crash
//! is the durable state, not a page the kernel kept. Memory is bounded: a
//! write or truncate past [`CrashFsOptions::capacity_bytes`] (live and
//! durable copies counted) fails with ENOSPC. The mount goes away when the
//! [`CrashFs`] drops, also when a test panics; if the test process itself
//! dies, `fusermount3` (auto_unmount) takes it down, so a stale mount never
//! hangs a later test.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};

/// The unit a torn crash keeps or drops: a page, what the kernel writes
/// back at a time and what a block file system allocates.
pub const BLOCK: u64 = 4096;
/// Nothing is cached by the kernel: after a crash every name and size is
/// asked again.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = INodeNo::ROOT.0;

/// How a mount is bounded.
#[derive(Debug, Clone)]
pub struct CrashFsOptions {
    /// Bytes the file system holds at most, live and durable copies
    /// together; past it a write fails with ENOSPC.
    pub capacity_bytes: u64,
    /// A disk that lies: fsync of a file returns and persists nothing.
    /// For proving a checker catches lost writes.
    pub ignore_file_fsync: bool,
    /// A disk that lies about directories: fsyncdir returns and persists
    /// nothing, which is what a program that skips its directory fsyncs
    /// gets. For proving a checker catches lost renames and creates.
    pub ignore_dir_fsync: bool,
}

impl Default for CrashFsOptions {
    fn default() -> Self {
        CrashFsOptions { capacity_bytes: 256 << 20, ignore_file_fsync: false, ignore_dir_fsync: false }
    }
}

/// What a power cut keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// Only what was made durable: every unsynced write and directory
    /// change is gone.
    DropUnsynced,
    /// As [`Crash::DropUnsynced`], but each block written since its
    /// file's last fsync reached the disk or not by a coin seeded with
    /// `seed`; a kept block past the durable end leaves zeros before it
    /// where blocks were dropped.
    Torn { seed: u64 },
}

/// What a crash undid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Files whose contents or size went back to their last fsync.
    pub files_reverted: usize,
    /// Directories whose entries went back to their last fsync.
    pub dirs_reverted: usize,
    /// Unsynced blocks dropped, and (torn) kept.
    pub blocks_dropped: usize,
    pub blocks_kept: usize,
}

/// A mounted crash-able file system. Unmounted on drop.
pub struct CrashFs {
    mountpoint: PathBuf,
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
}

impl CrashFs {
    /// Mounts an empty file system on `mountpoint` (created if missing).
    pub fn mount(mountpoint: &Path, options: CrashFsOptions) -> io::Result<CrashFs> {
        sweep_dead_mounts();
        std::fs::create_dir_all(mountpoint)?;
        let mut state = State::new(options.capacity_bytes);
        (state.ignore_file_fsync, state.ignore_dir_fsync) = (options.ignore_file_fsync, options.ignore_dir_fsync);
        let state = Arc::new(Mutex::new(state));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("crashfs".into()),
            MountOption::Subtype("crashfs".into()),
            // Permissions are checked by the kernel from the modes we
            // report; the processes under test run as root anyway.
            MountOption::DefaultPermissions,
            // If this process dies, fusermount3 unmounts: no stale mount.
            MountOption::AutoUnmount,
        ];
        // Processes the tests start (the same root, but other processes)
        // must be let in; auto_unmount requires it too.
        config.acl = SessionACL::All;
        config.n_threads = Some(2);
        let session = fuser::spawn_mount(Fs { state: state.clone() }, mountpoint, &config)?;
        Ok(CrashFs { mountpoint: mountpoint.to_path_buf(), state, session: Some(session) })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Cuts the power: the live state becomes the durable one (see
    /// [`Crash`]). Call it only once every process that used the mount is
    /// dead (kill -9): one still running would go on from a state that no
    /// longer exists. Open files are forgotten.
    pub fn crash(&self, mode: Crash) -> CrashReport {
        self.state.lock().crash(mode)
    }

    /// Cuts the power after `changes` more changes (writes, syncs, creates,
    /// renames, ...): the one after them and every request from then on
    /// fail with EIO, as a disk that lost power would, until
    /// [`crash`](Self::crash). A program under test stops at an exact,
    /// seeded point of its write path, mid-operation, without a kill.
    pub fn cut_after(&self, changes: u64) {
        self.state.lock().changes_left = Some(changes);
    }

    /// Whether the power is gone (a [`cut_after`](Self::cut_after) ran out).
    pub fn is_cut(&self) -> bool {
        self.state.lock().dead
    }

    /// Bytes held now, live and durable copies together.
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().used
    }
}

/// Lazily unmounts crashfs mounts whose server is gone (a test process
/// killed by a signal runs no destructor, and fusermount3's auto_unmount
/// does not always follow). Such a mount answers ENOTCONN at once, so it
/// never hangs anyone; this only keeps them from piling up.
fn sweep_dead_mounts() {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else { return };
    for line in mounts.lines() {
        let mut fields = line.split(' ');
        let (Some(_), Some(point), Some(kind)) = (fields.next(), fields.next(), fields.next()) else { continue };
        if kind != "fuse.crashfs" {
            continue;
        }
        // /proc/mounts escapes spaces and the like as octal.
        let point = point.replace("\\040", " ");
        if std::fs::metadata(&point).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN) {
            let _ = nix::mount::umount2(Path::new(&point), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for CrashFs {
    fn drop(&mut self) {
        // A lazy unmount first: it cannot block on a process still inside
        // the mount, and the kernel ends the session when the last user
        // leaves. fuser's own unmount then finds nothing left to do.
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        drop(self.session.take());
        // The directory under the mount, empty unless it held something
        // before: gone with the file system it was made for.
        let _ = std::fs::remove_dir(&self.mountpoint);
    }
}

enum Node {
    File {
        live: Vec<u8>,
        durable: Vec<u8>,
        /// Blocks written (or truncated) since the last fsync.
        dirty: BTreeSet<u64>,
    },
    Dir {
        live: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
    /// A symlink's target is written with its inode, so it is as durable
    /// as the entry that names it.
    Symlink(PathBuf),
}

struct Inode {
    node: Node,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
    atime: SystemTime,
}

struct OpenFile {
    ino: u64,
    append: bool,
}

struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// Bumped by each crash, so the kernel never takes a new inode for
    /// one it knew before.
    generation: u64,
    files: HashMap<u64, OpenFile>,
    /// Directory listings as of their opendir, so readdir offsets stay
    /// stable while entries change.
    dirs: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_fh: u64,
    used: u64,
    capacity: u64,
    /// Changes still allowed before the power goes (see `CrashFs::cut_after`).
    changes_left: Option<u64>,
    /// The power is gone: every request fails with EIO until the crash.
    dead: bool,
    ignore_file_fsync: bool,
    ignore_dir_fsync: bool,
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn blocks_of(from: u64, to: u64) -> std::ops::Range<u64> {
    if to <= from {
        return 0..0;
    }
    from / BLOCK..to.div_ceil(BLOCK)
}

impl State {
    fn new(capacity: u64) -> State {
        let mut inodes = HashMap::new();
        let t = now();
        inodes.insert(
            ROOT,
            Inode {
                node: Node::Dir { live: BTreeMap::new(), durable: BTreeMap::new() },
                perm: 0o755,
                uid: 0,
                gid: 0,
                mtime: t,
                ctime: t,
                atime: t,
            },
        );
        State {
            inodes,
            next_ino: ROOT + 1,
            generation: 1,
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            used: 0,
            capacity,
            changes_left: None,
            dead: false,
            ignore_file_fsync: false,
            ignore_dir_fsync: false,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let inode = self.inodes.get(&ino)?;
        let (kind, size) = match &inode.node {
            Node::File { live, .. } => (FileType::RegularFile, live.len() as u64),
            Node::Dir { live, .. } => (FileType::Directory, live.len() as u64),
            Node::Symlink(target) => (FileType::Symlink, target.as_os_str().len() as u64),
        };
        let nlink = match &inode.node {
            Node::Dir { live, .. } => {
                2 + live
                    .values()
                    .filter(|c| matches!(self.inodes.get(c).map(|i| &i.node), Some(Node::Dir { .. })))
                    .count()
            }
            _ => self.links(ino),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
            crtime: inode.ctime,
            kind,
            perm: inode.perm,
            nlink: nlink as u32,
            uid: inode.uid,
            gid: inode.gid,
            rdev: 0,
            blksize: BLOCK as u32,
            flags: 0,
        })
    }

    /// Live names of `ino` (hard links); a few directories, so a scan.
    fn links(&self, ino: u64) -> usize {
        self.inodes
            .values()
            .filter_map(|i| match &i.node {
                Node::Dir { live, .. } => Some(live.values().filter(|c| **c == ino).count()),
                _ => None,
            })
            .sum()
    }

    fn dir(&self, ino: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match self.inodes.get(&ino).map(|i| &i.node) {
            Some(Node::Dir { live, .. }) => Ok(live),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        let inode = self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        inode.mtime = now();
        inode.ctime = inode.mtime;
        match &mut inode.node {
            Node::Dir { live, .. } => Ok(live),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn new_node(&mut self, parent: u64, name: &OsStr, node: Node, perm: u16, req: &Request) -> Result<u64, Errno> {
        if self.dir(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let t = now();
        self.inodes.insert(ino, Inode { node, perm, uid: req.uid(), gid: req.gid(), mtime: t, ctime: t, atime: t });
        self.dir_mut(parent)?.insert(name.to_os_string(), ino);
        Ok(ino)
    }

    /// Changes a file's live copy by `f` (given the copy and its dirty
    /// blocks), then stamps its mtime and charges its growth to the
    /// capacity, refusing growth past it with ENOSPC.
    fn change_file(
        &mut self,
        ino: u64,
        new_len: impl FnOnce(u64) -> u64,
        f: impl FnOnce(&mut Vec<u8>, &mut BTreeSet<u64>),
    ) -> Result<(), Errno> {
        let (used, capacity) = (self.used, self.capacity);
        let Inode { node, mtime, ctime, .. } = self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let (live, dirty) = match node {
            Node::File { live, dirty, .. } => (live, dirty),
            Node::Dir { .. } => return Err(Errno::EISDIR),
            Node::Symlink(_) => return Err(Errno::EINVAL),
        };
        let old = live.len() as u64;
        let len = new_len(old);
        if len > old && used + (len - old) > capacity {
            return Err(Errno::ENOSPC);
        }
        f(live, dirty);
        (*mtime, *ctime) = (now(), now());
        self.used = (used + live.len() as u64).saturating_sub(old);
        Ok(())
    }

    /// Resizes a file's live copy.
    fn set_len(&mut self, ino: u64, len: u64) -> Result<(), Errno> {
        self.change_file(
            ino,
            |_| len,
            |live, dirty| {
                let old = live.len() as u64;
                dirty.extend(blocks_of(old.min(len), old.max(len)));
                live.resize(len as usize, 0);
            },
        )
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let end = offset + data.len() as u64;
        self.change_file(
            ino,
            |old| old.max(end),
            |live, dirty| {
                let old = live.len() as u64;
                if end > old {
                    dirty.extend(blocks_of(old, end));
                    live.resize(end as usize, 0);
                }
                live[offset as usize..end as usize].copy_from_slice(data);
                dirty.extend(blocks_of(offset, end));
            },
        )
    }

    /// Makes a file's contents and size durable (fsync, fdatasync).
    fn sync_file(&mut self, ino: u64) -> Result<(), Errno> {
        if self.ignore_file_fsync {
            return Ok(());
        }
        let inode = self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if let Node::File { live, durable, dirty } = &mut inode.node {
            let before = durable.len() as u64;
            durable.resize(live.len(), 0);
            for b in std::mem::take(dirty) {
                let start = (b * BLOCK) as usize;
                let end = ((b + 1) * BLOCK).min(live.len() as u64) as usize;
                if start < end {
                    durable[start..end].copy_from_slice(&live[start..end]);
                }
            }
            self.used = (self.used + durable.len() as u64).saturating_sub(before);
        }
        Ok(())
    }

    /// Makes a directory's entries durable (fsyncdir).
    fn sync_dir(&mut self, ino: u64) -> Result<(), Errno> {
        if self.ignore_dir_fsync {
            return Ok(());
        }
        match &mut self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)?.node {
            Node::Dir { live, durable } => {
                *durable = live.clone();
                Ok(())
            }
            _ => Err(Errno::ENOTDIR),
        }
    }

    /// Drops inodes nothing can reach any more: no live or durable name,
    /// no open handle. A file unlinked but not yet durably so stays, since
    /// a crash brings it back.
    fn collect(&mut self) {
        let mut seen = HashSet::new();
        let mut stack: Vec<u64> = self.files.values().map(|f| f.ino).collect();
        stack.push(ROOT);
        while let Some(ino) = stack.pop() {
            if !seen.insert(ino) {
                continue;
            }
            if let Some(Node::Dir { live, durable }) = self.inodes.get(&ino).map(|i| &i.node) {
                stack.extend(live.values().chain(durable.values()).filter(|c| !seen.contains(*c)));
            }
        }
        let dead: Vec<u64> = self.inodes.keys().filter(|i| !seen.contains(i)).copied().collect();
        for ino in dead {
            if let Some(Inode { node: Node::File { live, durable, .. }, .. }) = self.inodes.remove(&ino) {
                self.used = self.used.saturating_sub((live.len() + durable.len()) as u64);
            }
        }
    }

    /// Lets a request through unless the power is gone; a change uses up
    /// one of those left before the cut.
    fn tick(&mut self, change: bool) -> Result<(), Errno> {
        if change {
            match &mut self.changes_left {
                Some(0) => self.dead = true,
                Some(n) => *n -= 1,
                None => {}
            }
        }
        if self.dead {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    fn crash(&mut self, mode: Crash) -> CrashReport {
        (self.dead, self.changes_left) = (false, None);
        let mut report = CrashReport::default();
        let mut rng = match mode {
            Crash::Torn { seed } => Some(rand::rngs::StdRng::seed_from_u64(seed)),
            Crash::DropUnsynced => None,
        };
        // Visit files in inode order, so a seed keeps the same blocks.
        let mut inos: Vec<u64> = self.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let Some(inode) = self.inodes.get_mut(&ino) else { continue };
            match &mut inode.node {
                Node::File { live, durable, dirty } => {
                    if dirty.is_empty() && live.len() == durable.len() {
                        continue;
                    }
                    report.files_reverted += 1;
                    let mut after = durable.clone();
                    for b in std::mem::take(dirty) {
                        let keep = rng.as_mut().is_some_and(|r| r.random_bool(0.5));
                        let start = (b * BLOCK) as usize;
                        let end = ((b + 1) * BLOCK).min(live.len() as u64) as usize;
                        if !keep || start >= end {
                            report.blocks_dropped += 1;
                            continue;
                        }
                        report.blocks_kept += 1;
                        if after.len() < end {
                            after.resize(end, 0);
                        }
                        after[start..end].copy_from_slice(&live[start..end]);
                    }
                    // The torn result is what is on disk now: durable.
                    *durable = after.clone();
                    *live = after;
                }
                Node::Dir { live, durable } => {
                    if live != durable {
                        report.dirs_reverted += 1;
                        *live = durable.clone();
                    }
                }
                Node::Symlink(_) => {}
            }
        }
        self.used = self
            .inodes
            .values()
            .map(|i| match &i.node {
                Node::File { live, durable, .. } => (live.len() + durable.len()) as u64,
                _ => 0,
            })
            .sum();
        self.files.clear();
        self.dirs.clear();
        self.generation += 1;
        self.collect();
        report
    }

    fn open_handle(&mut self, ino: u64, flags: i32) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.files.insert(fh, OpenFile { ino, append: flags & libc::O_APPEND != 0 });
        fh
    }

    fn kind(&self, ino: u64) -> FileType {
        match self.inodes.get(&ino).map(|i| &i.node) {
            Some(Node::Dir { .. }) => FileType::Directory,
            Some(Node::Symlink(_)) => FileType::Symlink,
            _ => FileType::RegularFile,
        }
    }

    fn unlink(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        match (&self.inodes.get(&ino).ok_or(Errno::ENOENT)?.node, want_dir) {
            (Node::Dir { live, .. }, true) if !live.is_empty() => return Err(Errno::ENOTEMPTY),
            (Node::Dir { .. }, false) => return Err(Errno::EISDIR),
            (Node::Dir { .. }, true) => {}
            (_, true) => return Err(Errno::ENOTDIR),
            (_, false) => {}
        }
        self.dir_mut(parent)?.remove(name);
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.ctime = now();
        }
        self.collect();
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let ino = self.lookup(parent, name)?;
        self.dir(newparent)?;
        if let Ok(old) = self.lookup(newparent, newname) {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            if old == ino {
                return Ok(());
            }
            let (src_dir, dst_dir) = (self.kind(ino) == FileType::Directory, self.kind(old) == FileType::Directory);
            match (src_dir, dst_dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.dir(old)?.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        // A directory may not move under itself.
        if self.kind(ino) == FileType::Directory {
            let mut stack = vec![ino];
            while let Some(d) = stack.pop() {
                if d == newparent {
                    return Err(Errno::EINVAL);
                }
                if let Ok(children) = self.dir(d) {
                    stack.extend(children.values().copied().filter(|c| self.kind(*c) == FileType::Directory));
                }
            }
        }
        self.dir_mut(parent)?.remove(name);
        self.dir_mut(newparent)?.insert(newname.to_os_string(), ino);
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.ctime = now();
        }
        self.collect();
        Ok(())
    }
}

/// The FUSE side: each request takes the state's lock, does its work in
/// memory, and answers.
struct Fs {
    state: Arc<Mutex<State>>,
}

impl Fs {
    fn entry(&self, st: &State, ino: u64, reply: ReplyEntry) {
        match st.attr(ino) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(st.generation)),
            None => reply.error(Errno::ENOENT),
        }
    }
}

fn perm_of(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, _config: &mut KernelConfig) -> io::Result<()> {
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if let Err(e) = self.state.lock().tick(false) {
            return reply.error(e);
        }
        let st = self.state.lock();
        match st.lookup(parent.0, name) {
            Ok(ino) => self.entry(&st, ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Err(e) = self.state.lock().tick(false) {
            return reply.error(e);
        }
        match self.state.lock().attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Err(e) = self.state.lock().tick(true) {
            return reply.error(e);
        }
        let mut st = self.state.lock();
        if let Some(len) = size {
            if let Err(e) = st.set_len(ino.0, len) {
                return reply.error(e);
            }
        }
        let Some(inode) = st.inodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let at = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => now(),
        };
        if let Some(m) = mode {
            inode.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            inode.uid = u;
        }
        if let Some(g) = gid {
            inode.gid = g;
        }
        if let Some(t) = atime {
            inode.atime = at(t);
        }
        if let Some(t) = mtime {
            inode.mtime = at(t);
        }
        inode.ctime = now();
        match st.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        if let Err(e) = self.state.lock().tick(false) {
            return reply.error(e);
        }
        match self.state.lock().inodes.get(&ino.0).map(|i| &i.node) {
            Some(Node::Symlink(target)) => reply.data(target.as_os_str().as_encoded_bytes()),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.state.lock().tick(true) {
            return reply.error(e);
        }
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let mut st = self.state.lock();
        let node = Node::File { live: Vec::new(), durable: Vec::new(), dirty: BTreeSet::new() };
        match st.new_node(parent.0, name, node, perm_of(mode, umask), req) {
            Ok(ino) => self.entry(&st, ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        if let Err(e) = self.state.lock().tick(true) {
            return reply.error(e);
        }
        let mut st = self.state.lock();
        let node = Node::Dir { live: BTreeMap::new(), durable: BTreeMap::new() };
        match st.new_node(parent.0, name, node, perm_of(mode, umask), req) {
            Ok(ino) => self.entry(&st, ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.state.lock().tick(true) {
            return reply.error(e);
        }
        match self.state.lock().unlink(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.state.lock().tick(true) {
            return reply.error(e);
        }
        match self.state.lock().unlink(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        if let Err(e) = self.state.lock().tick(true) {
            return reply.error(e);
        }
        let mut st = self.state.lock();
        match st.new_node(parent.0, link_name, Node::Symlink(target.to_path_buf()), 0o777, req) {
            Ok(ino) => self.entry(&st, ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.state.lock().tick(true) {
            return reply.error(e);
        }
        match self.state.lock().rename(parent.0, name, newparent.0, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        if let Err(e) = self.state.lock().tick(true) {
            return reply.error(e);
        }
        let mut st = self.state.lock();
        if st.kind(ino.0) == FileType::Directory {
            return reply.error(Errno::EPERM);
        }
        if !st.inodes.contains_key(&ino.0) {
            return reply.error(Errno::ENOENT);
        }
        let added = st.dir(newparent.0).and_then(|d| if d.contains_key(newname) { Err(Errno::EEXIST) } else { Ok(()) });
        if let Err(e) = added {
            return reply.error(e);
        }
        match st.dir_mut(newparent.0) {
            Ok(d) => {
                d.insert(newname.to_os_string(), ino.0);
            }
            Err(e) => return reply.error(e),
        }
        self.entry(&st, ino.0, reply)
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if let Err(e) = self.state.lock().tick(false) {
            return reply.error(e);
        }
        let mut st = self.state.lock();
        match st.inodes.get(&ino.0).map(|i| &i.node) {
            Some(Node::File { .. }) => {}
            Some(Node::Dir { .. }) => return reply.error(Errno::EISDIR),
            Some(Node::Symlink(_)) => return reply.error(Errno::ELOOP),
            None => return reply.error(Errno::ENOENT),
        }
        // O_TRUNC arrives as a setattr before the open.
        let fh = st.open_handle(ino.0, flags.0);
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if let Err(e) = self.state.lock().tick(true) {
            return reply.error(e);
        }
        let mut st = self.state.lock();
        let node = Node::File { live: Vec::new(), durable: Vec::new(), dirty: BTreeSet::new() };
        match st.new_node(parent.0, name, node, perm_of(mode, umask), req) {
            Ok(ino) => {
                let fh = st.open_handle(ino, flags);
                match st.attr(ino) {
                    Some(attr) => reply.created(
                        &TTL,
                        &attr,
                        Generation(st.generation),
                        FileHandle(fh),
                        FopenFlags::FOPEN_DIRECT_IO,
                    ),
                    None => reply.error(Errno::EIO),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if let Err(e) = self.state.lock().tick(false) {
            return reply.error(e);
        }
        let st = self.state.lock();
        match st.inodes.get(&ino.0).map(|i| &i.node) {
            Some(Node::File { live, .. }) => {
                let start = (offset as usize).min(live.len());
                let end = start.saturating_add(size as usize).min(live.len());
                reply.data(&live[start..end]);
            }
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Err(e) = self.state.lock().tick(true) {
            return reply.error(e);
        }
        let mut st = self.state.lock();
        // O_APPEND: the end as we know it, not as the kernel last heard.
        let append = st.files.get(&fh.0).is_some_and(|f| f.append);
        let offset = match (append, st.inodes.get(&ino.0).map(|i| &i.node)) {
            (true, Some(Node::File { live, .. })) => live.len() as u64,
            _ => offset,
        };
        match st.write(ino.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.state.lock();
        if st.files.remove(&fh.0).is_some() {
            st.collect();
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        if let Err(e) = self.state.lock().tick(true) {
            return reply.error(e);
        }
        // fdatasync too: it must persist the size when the size changed,
        // and nothing else here is worth telling apart.
        match self.state.lock().sync_file(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if let Err(e) = self.state.lock().tick(false) {
            return reply.error(e);
        }
        let mut st = self.state.lock();
        let entries: Vec<(u64, FileType, OsString)> = match st.dir(ino.0) {
            Ok(d) => d.iter().map(|(n, c)| (*c, FileType::RegularFile, n.clone())).collect(),
            Err(e) => return reply.error(e),
        };
        let mut listing = vec![(ino.0, FileType::Directory, ".".into()), (ino.0, FileType::Directory, "..".into())];
        listing.extend(entries.into_iter().map(|(c, _, n)| (c, st.kind(c), n)));
        let fh = st.next_fh;
        st.next_fh += 1;
        st.dirs.insert(fh, listing);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if let Err(e) = self.state.lock().tick(false) {
            return reply.error(e);
        }
        let st = self.state.lock();
        let Some(listing) = st.dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.state.lock().dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        if let Err(e) = self.state.lock().tick(true) {
            return reply.error(e);
        }
        let mut st = self.state.lock();
        match st.sync_dir(ino.0) {
            Ok(()) => {
                st.collect();
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        if let Err(e) = self.state.lock().tick(false) {
            return reply.error(e);
        }
        let st = self.state.lock();
        let blocks = st.capacity / BLOCK;
        let free = st.capacity.saturating_sub(st.used) / BLOCK;
        reply.statfs(blocks, free, free, 1 << 20, 1 << 20, BLOCK as u32, 255, BLOCK as u32);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if self.state.lock().inodes.contains_key(&ino.0) {
            reply.ok()
        } else {
            reply.error(Errno::ENOENT)
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.state.lock().tick(true) {
            return reply.error(e);
        }
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut st = self.state.lock();
        let len = match st.inodes.get(&ino.0).map(|i| &i.node) {
            Some(Node::File { live, .. }) => live.len() as u64,
            _ => return reply.error(Errno::ENODEV),
        };
        let want = offset.saturating_add(length);
        if want > len {
            if let Err(e) = st.set_len(ino.0, want) {
                return reply.error(e);
            }
        }
        reply.ok();
    }
}

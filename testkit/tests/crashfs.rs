//! The power-cut file system itself: what survives a crash is exactly
//! what fsync and fsyncdir made durable. Each test mounts its own (root
//! and /dev/fuse are needed, as for the rest of the suite).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use testkit::crashfs::{Crash, CrashFs, CrashFsOptions, BLOCK};

fn mount(name: &str) -> CrashFs {
    mount_with(name, CrashFsOptions::default())
}

fn mount_with(name: &str, options: CrashFsOptions) -> CrashFs {
    let dir = std::env::temp_dir().join(format!("crashfs-{name}-{}-{}", std::process::id(), rand::random::<u32>()));
    CrashFs::mount(&dir, options)
        .unwrap_or_else(|e| panic!("mounting crashfs on {}: {e} (needs root and /dev/fuse)", dir.display()))
}

fn sync_dir(dir: &Path) {
    File::open(dir).and_then(|d| d.sync_all()).expect("fsync of a directory");
}

fn write_synced(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).expect("create");
    f.write_all(bytes).expect("write");
    f.sync_all().expect("fsync");
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("readdir entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_fsynced_write_survives_and_an_unsynced_one_is_gone() {
    let fs = mount("write");
    let path = fs.path().join("data");
    write_synced(&path, b"durable");
    sync_dir(fs.path());
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b" and lost").unwrap();
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), b"durable and lost", "the live state is what processes read");
    let report = fs.crash(Crash::DropUnsynced);
    assert_eq!(fs::read(&path).unwrap(), b"durable");
    assert_eq!(report.files_reverted, 1);
    // An overwrite in place and a truncate, unsynced: both undone.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(3).unwrap();
    drop(f);
    fs.crash(Crash::DropUnsynced);
    assert_eq!(fs::read(&path).unwrap(), b"durable");
    // fdatasync counts as much as fsync for the contents and the size.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"!").unwrap();
    f.sync_data().unwrap();
    drop(f);
    fs.crash(Crash::DropUnsynced);
    assert_eq!(fs::read(&path).unwrap(), b"durable!");
}

#[test]
fn a_file_fsynced_in_a_directory_that_was_not_is_gone() {
    let fs = mount("create");
    let path = fs.path().join("new");
    write_synced(&path, b"contents synced, name not");
    assert!(path.exists());
    fs.crash(Crash::DropUnsynced);
    assert!(!path.exists(), "a name lives in its directory: without fsyncdir it is lost");
    // With the directory synced, name and contents both survive.
    write_synced(&path, b"both");
    sync_dir(fs.path());
    fs.crash(Crash::DropUnsynced);
    assert_eq!(fs::read(&path).unwrap(), b"both");
}

#[test]
fn a_durable_name_with_unsynced_contents_comes_back_empty() {
    let fs = mount("empty");
    let path = fs.path().join("f");
    let mut f = File::create(&path).unwrap();
    sync_dir(fs.path());
    f.write_all(b"never synced").unwrap();
    drop(f);
    fs.crash(Crash::DropUnsynced);
    assert_eq!(fs::read(&path).unwrap(), b"");
}

#[test]
fn a_rename_is_undone_unless_its_directory_is_fsynced() {
    let fs = mount("rename");
    let (target, tmp) = (fs.path().join("entity.json"), fs.path().join("entity.json.tmp"));
    write_synced(&target, b"old");
    sync_dir(fs.path());
    // The store's pattern: tmp written and synced, renamed over the target.
    write_synced(&tmp, b"new");
    fs::rename(&tmp, &target).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"new");
    fs.crash(Crash::DropUnsynced);
    assert_eq!(fs::read(&target).unwrap(), b"old", "the rename was never made durable");
    assert!(!tmp.exists(), "nor was the tmp file's name");

    write_synced(&tmp, b"new");
    fs::rename(&tmp, &target).unwrap();
    sync_dir(fs.path());
    fs.crash(Crash::DropUnsynced);
    assert_eq!(fs::read(&target).unwrap(), b"new", "an fsynced rename stays");
    assert_eq!(names(fs.path()), vec!["entity.json"]);
}

#[test]
fn unlinks_and_directories_follow_the_same_rule() {
    let fs = mount("dirs");
    let sub = fs.path().join("sub");
    fs::create_dir(&sub).unwrap();
    write_synced(&sub.join("a"), b"a");
    sync_dir(&sub);
    // `sub` itself was never made durable in the root.
    fs.crash(Crash::DropUnsynced);
    assert!(!sub.exists(), "a directory whose parent was not fsynced is gone, with all in it");

    fs::create_dir(&sub).unwrap();
    write_synced(&sub.join("a"), b"a");
    sync_dir(&sub);
    sync_dir(fs.path());
    fs::remove_file(sub.join("a")).unwrap();
    fs.crash(Crash::DropUnsynced);
    assert_eq!(fs::read(sub.join("a")).unwrap(), b"a", "an unlink not made durable is undone");
    fs::remove_file(sub.join("a")).unwrap();
    sync_dir(&sub);
    fs.crash(Crash::DropUnsynced);
    assert!(names(&sub).is_empty());
    // A rename between directories needs both synced to be whole.
    let other = fs.path().join("other");
    fs::create_dir(&other).unwrap();
    sync_dir(fs.path());
    write_synced(&sub.join("m"), b"m");
    sync_dir(&sub);
    fs::rename(sub.join("m"), other.join("m")).unwrap();
    sync_dir(&other);
    fs.crash(Crash::DropUnsynced);
    // The new name is durable and the old one was never removed durably:
    // a power cut can leave both, as on a real disk.
    assert_eq!((fs::read(sub.join("m")).unwrap(), fs::read(other.join("m")).unwrap()), (b"m".to_vec(), b"m".to_vec()));
}

#[test]
fn a_torn_crash_keeps_some_unsynced_blocks_and_zeros_before_them() {
    let fs = mount("torn");
    let path = fs.path().join("log");
    let durable: Vec<u8> = vec![b'd'; BLOCK as usize + 100];
    write_synced(&path, &durable);
    sync_dir(fs.path());
    let unsynced: Vec<u8> = (0..8 * BLOCK as usize).map(|i| (i / BLOCK as usize) as u8 + 1).collect();
    let mut seen_kept = 0;
    let mut seen_dropped = 0;
    let mut seen_hole = false;
    for seed in 0..16u64 {
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&unsynced).unwrap();
        drop(f);
        let live = fs::read(&path).unwrap();
        let report = fs.crash(Crash::Torn { seed });
        let after = fs::read(&path).unwrap();
        assert!(after.len() >= durable.len(), "seed {seed}: durable bytes lost");
        assert_eq!(&after[..durable.len()], &durable[..], "seed {seed}: durable bytes changed");
        // Every block past the durable part is either what was written or
        // zeros (never reached the disk, but the size did).
        for (b, chunk) in after.chunks(BLOCK as usize).enumerate().skip(1) {
            let start = b * BLOCK as usize;
            let written = &live[start..start + chunk.len()];
            let tail_of_durable = start < durable.len();
            let ok = chunk == written
                || chunk.iter().all(|x| *x == 0)
                || (tail_of_durable
                    && chunk[..durable.len() - start] == durable[start..]
                    && chunk[durable.len() - start..].iter().all(|x| *x == 0));
            assert!(ok, "seed {seed}: block {b} is neither the write nor zeros");
            seen_hole |= chunk.iter().all(|x| *x == 0) && after.len() > start + chunk.len();
        }
        seen_kept += report.blocks_kept;
        seen_dropped += report.blocks_dropped;
        // The same seed tears the same way.
        if seed == 3 {
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(durable.len() as u64).unwrap();
            f.sync_all().unwrap();
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(&unsynced).unwrap();
            drop(f);
            fs.crash(Crash::Torn { seed });
            assert_eq!(fs::read(&path).unwrap(), after, "seed {seed} is not reproducible");
        }
        // Back to the durable prefix for the next round, durably.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(durable.len() as u64).unwrap();
        f.sync_all().unwrap();
    }
    assert!(
        seen_kept > 0 && seen_dropped > 0,
        "torn crashes keep some blocks and drop others ({seen_kept} kept, {seen_dropped} dropped)"
    );
    assert!(seen_hole, "some seed leaves a zeroed block before a kept one");
}

#[test]
fn writes_past_the_capacity_fail_with_no_space() {
    let fs = mount_with("full", CrashFsOptions { capacity_bytes: 1 << 20, ..CrashFsOptions::default() });
    let mut f = File::create(fs.path().join("big")).unwrap();
    let err = f.write_all(&vec![7u8; 2 << 20]).expect_err("a write past the capacity must fail");
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
    assert!(fs.used_bytes() <= 1 << 20);
}

#[test]
fn flock_and_hard_links_work_for_the_programs_under_test() {
    let fs = mount("flock");
    let path = fs.path().join("LOCK");
    let a = OpenOptions::new().create(true).truncate(false).write(true).open(&path).unwrap();
    a.try_lock().expect("the first flock");
    let b = OpenOptions::new().write(true).open(&path).unwrap();
    assert!(b.try_lock().is_err(), "a second flock on the same file must be refused");
    drop(a);
    b.try_lock().expect("the lock is free once its holder closed");
    fs::hard_link(&path, fs.path().join("LOCK2")).unwrap();
    assert_eq!(names(fs.path()), vec!["LOCK", "LOCK2"]);
}

#[test]
fn the_mount_goes_away_on_drop() {
    let fs = mount("drop");
    let dir: PathBuf = fs.path().to_path_buf();
    let mounted = || fs::read_to_string("/proc/mounts").unwrap().lines().any(|l| l.split(' ').nth(1) == dir.to_str());
    assert!(mounted(), "{} is not mounted", dir.display());
    drop(fs);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while mounted() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!mounted(), "{} is still mounted after drop", dir.display());
    assert!(!dir.exists(), "the empty mount point is removed with the mount");
}

#[test]
fn a_cut_fails_every_request_with_eio_until_the_crash() {
    let fs = mount("cut");
    let path = fs.path().join("log");
    let mut f = File::create(&path).unwrap();
    sync_dir(fs.path());
    fs.cut_after(3);
    f.write_all(b"a").unwrap();
    f.sync_data().unwrap();
    f.write_all(b"b").unwrap();
    let err = f.sync_data().expect_err("the fourth change comes after the cut");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(fs.is_cut());
    assert!(fs::read(&path).is_err(), "reads fail too once the power is gone");
    drop(f);
    fs.crash(Crash::DropUnsynced);
    assert!(!fs.is_cut());
    assert_eq!(fs::read(&path).unwrap(), b"a", "what was synced before the cut, nothing after");
}

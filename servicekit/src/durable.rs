//! What fsync of a file does not make durable: its name.
//!
//! A file's or a directory's name is an entry of its parent directory, and
//! only an fsync of that directory persists it. A program that creates a
//! file (or a directory, or renames one) and fsyncs only the file can lose
//! the whole file at a power cut, contents and all, however often it
//! synced them. The power-loss tests (`tests/tests/power_loss.rs`, on
//! `testkit::crashfs`) lost a fresh store directory and a fresh journal
//! that way; these helpers are how the services avoid it.

use std::fs::File;
use std::io;
use std::path::Path;

/// Makes the entries of `dir` (creates, renames, unlinks in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes the name of `path` in its parent directory durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// `create_dir_all`, with every directory it creates made durable in its
/// parent, top-down.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut created = Vec::new();
    let mut d = dir;
    while !d.as_os_str().is_empty() && !d.exists() {
        created.push(d);
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    for new in created.iter().rev() {
        sync_parent(new)?;
    }
    Ok(())
}

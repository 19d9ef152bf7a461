//! The resource the active worker writes to, guarded by fencing tokens.
//!
//! Leader election alone cannot stop a deposed leader that does not know it
//! is deposed yet (paused by SIGSTOP or GC past its session timeout, then
//! resumed). So the journal itself refuses: every line carries its writer's
//! term token, and a write whose token is lower than the highest already in
//! the journal is rejected. Check and append happen under an exclusive lock
//! on the file, so two writers cannot both pass the check.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("fenced: our term {ours} is older than term {highest} already in the journal")]
    Fenced { ours: i64, highest: i64 },
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub struct Journal {
    path: PathBuf,
}

/// One journal line: `<token> <instance> <seq>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub token: i64,
    pub instance: String,
    pub seq: u64,
}

impl Entry {
    pub fn parse(line: &str) -> Option<Entry> {
        let mut parts = line.split_whitespace();
        Some(Entry {
            token: parts.next()?.parse().ok()?,
            instance: parts.next()?.to_string(),
            seq: parts.next()?.parse().ok()?,
        })
    }
}

impl Journal {
    pub fn new(path: impl AsRef<Path>) -> Journal {
        Journal { path: path.as_ref().to_path_buf() }
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
        |source| JournalError::Io { path: self.path.clone(), source }
    }

    /// Appends `token instance seq` if no newer term has written; durable
    /// (fsync'd) when it returns `Ok`.
    pub fn append(&self, token: i64, instance: &str, seq: u64) -> Result<(), JournalError> {
        let mut file: File =
            OpenOptions::new().create(true).read(true).append(true).open(&self.path).map_err(self.io())?;
        // Released when `file` is closed at the end of this call.
        file.lock().map_err(self.io())?;
        file.seek(SeekFrom::Start(0)).map_err(self.io())?;
        let highest = BufReader::new(&file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| Entry::parse(&l))
            .map(|e| e.token)
            .max()
            .unwrap_or(i64::MIN);
        if token < highest {
            return Err(JournalError::Fenced { ours: token, highest });
        }
        writeln!(file, "{token} {instance} {seq}").map_err(self.io())?;
        file.sync_data().map_err(self.io())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_term_is_refused_after_a_newer_one_wrote() {
        let dir = std::env::temp_dir().join(format!("journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let j = Journal::new(dir.join("j"));
        j.append(5, "a", 0).unwrap();
        j.append(9, "b", 0).unwrap();
        assert!(matches!(j.append(5, "a", 1), Err(JournalError::Fenced { ours: 5, highest: 9 })));
        j.append(9, "b", 1).unwrap();
        let text = std::fs::read_to_string(dir.join("j")).unwrap();
        assert_eq!(text, "5 a 0\n9 b 0\n9 b 1\n");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

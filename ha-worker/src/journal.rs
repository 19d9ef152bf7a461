//! The resource the active worker writes to, guarded by fencing tokens.
//!
//! Leader election alone cannot stop a deposed leader that does not know it
//! is deposed yet (paused by SIGSTOP or GC past its session timeout, then
//! resumed). So the journal itself refuses: every line carries its writer's
//! term token (`zk_recipes::fencing::Token`: the fencing epoch, then the
//! leader node's czxid), and a write whose token is lower than the highest
//! already in the journal is rejected. Check and append happen under an
//! exclusive lock on the file, so two writers cannot both pass the check.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use zk_recipes::fencing::Token;

/// The failpoint that makes the journal accept any term (a broken fence,
/// for the nemesis's HA checker to prove it catches a deposed active's
/// write).
pub const IGNORE_TERMS: &str = "ha-worker/journal-ignores-terms";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("fenced: our term {ours} is older than term {highest} already in the journal")]
    Fenced { ours: Token, highest: Token },
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("journal {path}: record {line} is damaged ({what}); the highest term cannot be known")]
    Corrupt { path: PathBuf, line: usize, what: &'static str },
}

impl JournalError {
    /// True when retrying cannot help until an operator acts (see
    /// `servicekit::fault`).
    pub fn is_permanent(&self) -> bool {
        match self {
            JournalError::Fenced { .. } => false,
            JournalError::Io { source, .. } => servicekit::fault::is_permanent(source),
            JournalError::Corrupt { .. } => true,
        }
    }

    /// What an operator should do, for the log.
    pub fn remedy(&self) -> String {
        match self {
            JournalError::Io { path, source } => servicekit::fault::remedy(source, path),
            JournalError::Corrupt { path, line, .. } => {
                format!("inspect {} at record {line}; move the file aside to start a new journal", path.display())
            }
            JournalError::Fenced { .. } => String::new(),
        }
    }
}

pub struct Journal {
    path: PathBuf,
}

/// One journal record: the line `<epoch> <zxid> <instance> <seq> <crc>\n`,
/// where `<epoch> <zxid>` is the writer's term token and `<crc>` is the
/// CRC-32C of the text before it, in 8 hex digits.
///
/// Framing, and why: a record is appended with a single write(2), but a
/// kill -9 or a power loss can still leave a prefix of it (the write was
/// cut short, or only some of its blocks reached the disk). The newline is
/// the record's last byte, so a prefix never ends in one: a last record
/// without its newline is torn, was never acknowledged (append returns only
/// after fsync), and is truncated before the next append. Without that
/// rule a torn `8` followed by the next append's `13 ha2 0` reads as term
/// 813, and every later leader is fenced out. The checksum catches what
/// framing cannot: a record whose blocks hold zeros or stale bytes after a
/// power loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub token: Token,
    pub instance: String,
    pub seq: u64,
}

impl Entry {
    fn body(&self) -> String {
        format!("{} {} {} {}", self.token.epoch, self.token.zxid, self.instance, self.seq)
    }

    /// The record's bytes, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let body = self.body();
        format!("{body} {:08x}\n", crc32c::crc32c(body.as_bytes())).into_bytes()
    }

    /// Parses one complete line (without its newline); `None` if it is not
    /// a record or its checksum does not match.
    ///
    /// Records of older versions of this journal are read as they were
    /// written, in epoch 0 (they predate epochs): three fields
    /// (`zxid instance seq`, before checksums) or four (`zxid instance seq
    /// crc`, before epochs).
    pub fn parse(line: &str) -> Option<Entry> {
        let fields = line.split(' ').count();
        let body = if fields == 3 {
            line
        } else {
            let (body, crc) = line.rsplit_once(' ')?;
            if crc.len() != 8 || u32::from_str_radix(crc, 16).ok()? != crc32c::crc32c(body.as_bytes()) {
                return None;
            }
            body
        };
        let mut parts = body.split(' ');
        let epoch = if fields == 5 { parts.next()?.parse().ok()? } else { 0 };
        let e = Entry {
            token: Token::new(epoch, parts.next()?.parse().ok()?),
            instance: parts.next()?.to_string(),
            seq: parts.next()?.parse().ok()?,
        };
        if parts.next().is_some() || e.instance.is_empty() {
            return None;
        }
        Some(e)
    }
}

/// The records of a journal's bytes, and the length of its intact prefix
/// (everything after it is a torn last record).
fn scan(bytes: &[u8]) -> Result<(Vec<Entry>, usize), (usize, &'static str)> {
    let mut entries = Vec::new();
    let mut intact = 0;
    for (i, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
        let Some(line) = line.strip_suffix(b"\n") else {
            // The last record lacks its newline: torn, never acknowledged.
            break;
        };
        let entry = std::str::from_utf8(line).ok().and_then(Entry::parse);
        let Some(entry) = entry else {
            // The last record, holding zeros: a block of it never reached
            // the disk before a power cut while a later one (with the
            // newline) did. No record ever holds a NUL, and an append is
            // acknowledged only once all of it is synced, so this one never
            // was: torn, like a record without its newline. Refusing it
            // kept the worker out of the election until an operator came
            // (found by the power-loss tests' torn crashes). Anything else
            // is damage to what may have been acknowledged.
            let last = intact + line.len() + 1 == bytes.len();
            if last && line.contains(&0) {
                break;
            }
            let what = if std::str::from_utf8(line).is_err() { "not UTF-8" } else { "bad format or checksum" };
            return Err((i + 1, what));
        };
        entries.push(entry);
        intact += line.len() + 1;
    }
    Ok((entries, intact))
}

/// Every intact record of the journal at `path`, oldest first (a torn last
/// record is left out): for operators, the dashboard and the tests.
pub fn read_entries(path: &Path) -> Result<Vec<Entry>, JournalError> {
    let bytes = std::fs::read(path).map_err(|source| JournalError::Io { path: path.to_path_buf(), source })?;
    scan(&bytes).map(|(entries, _)| entries).map_err(|(line, what)| JournalError::Corrupt {
        path: path.to_path_buf(),
        line,
        what,
    })
}

impl Journal {
    pub fn new(path: impl AsRef<Path>) -> Journal {
        Journal { path: path.as_ref().to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
        |source| JournalError::Io { path: self.path.clone(), source }
    }

    fn open(&self) -> Result<File, JournalError> {
        match OpenOptions::new().read(true).append(true).open(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let file =
                    OpenOptions::new().create(true).read(true).append(true).open(&self.path).map_err(self.io())?;
                // The journal's name is durable only once its directory is
                // synced: without this, a power cut after the first appends
                // (each fsynced) took the whole new journal away, and with
                // it the highest term, the one thing the fence must not
                // forget.
                servicekit::durable::sync_parent(&self.path).map_err(self.io())?;
                Ok(file)
            }
            opened => opened.map_err(self.io()),
        }
    }

    /// Checks that the journal can be opened for appending, locked and
    /// read back as records, without writing: how a worker that stepped
    /// aside on a permanent fault learns that the fault was fixed (and
    /// avoids winning a term only to find the journal damaged).
    pub fn check(&self) -> Result<(), JournalError> {
        let mut file = self.open()?;
        file.lock().map_err(self.io())?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(self.io())?;
        scan(&bytes).map_err(|(line, what)| JournalError::Corrupt { path: self.path.clone(), line, what })?;
        Ok(())
    }

    /// Appends `token instance seq` if no newer term has written; durable
    /// (fsync'd) when it returns `Ok`. A torn last record left by a crash
    /// is truncated first.
    pub fn append(&self, token: Token, instance: &str, seq: u64) -> Result<(), JournalError> {
        let mut file = self.open()?;
        // Released when `file` is closed at the end of this call.
        file.lock().map_err(self.io())?;
        file.seek(SeekFrom::Start(0)).map_err(self.io())?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(self.io())?;
        let (entries, intact) =
            scan(&bytes).map_err(|(line, what)| JournalError::Corrupt { path: self.path.clone(), line, what })?;
        if intact < bytes.len() {
            tracing::warn!(
                journal = %self.path.display(),
                torn_bytes = bytes.len() - intact,
                "a torn last record (a crash mid-append) is dropped"
            );
            file.set_len(intact as u64).map_err(self.io())?;
        }
        let fenced = entries.iter().map(|e| e.token).max().filter(|h| token < *h);
        if let Some(highest) = fenced.filter(|_| !servicekit::failpoint::is_armed(IGNORE_TERMS)) {
            return Err(JournalError::Fenced { ours: token, highest });
        }
        let record = Entry { token, instance: instance.to_string(), seq }.encode();
        // One write(2) for the whole record, so a crash leaves a prefix of
        // it, never pieces interleaved with the next append.
        let written = file.write(&record).map_err(self.io())?;
        if written != record.len() {
            // A short write (a full disk): take the fragment back so the
            // journal ends on a record boundary.
            let _ = file.set_len(intact as u64);
            return Err(JournalError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::StorageFull, "short write"),
            });
        }
        file.sync_data().map_err(self.io())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn tokens(path: &Path) -> Vec<(i64, String, u64)> {
        let bytes = std::fs::read(path).unwrap();
        let (entries, intact) = scan(&bytes).unwrap();
        assert_eq!(intact, bytes.len(), "the journal ends on a record boundary");
        entries.into_iter().map(|e| (e.token.zxid, e.instance, e.seq)).collect()
    }

    /// A term of one epoch: the tests below compare zxids within it.
    fn t(zxid: i64) -> Token {
        Token::new(1, zxid)
    }

    #[test]
    fn an_older_term_is_refused_after_a_newer_one_wrote() {
        let dir = temp_dir("fence");
        let j = Journal::new(dir.join("j"));
        j.append(t(5), "a", 0).unwrap();
        j.append(t(9), "b", 0).unwrap();
        assert!(
            matches!(j.append(t(5), "a", 1), Err(JournalError::Fenced { ours, highest }) if ours == t(5) && highest == t(9))
        );
        j.append(t(9), "b", 1).unwrap();
        assert_eq!(tokens(&dir.join("j")), vec![(5, "a".into(), 0), (9, "b".into(), 0), (9, "b".into(), 1)]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A crash can cut the last record at any byte. Whatever prefix is
    /// left, the next leader appends (its term is not fenced by the
    /// fragment, whatever digits it holds) and the journal is intact after.
    #[test]
    fn a_record_torn_at_every_byte_offset_is_dropped_and_never_fences() {
        let dir = temp_dir("torn");
        let path = dir.join("j");
        // The torn record claims a much higher term than the next leader's:
        // read as a whole record, it would fence that leader out.
        let torn = Entry { token: t(813), instance: "ha2".into(), seq: 0 }.encode();
        for cut in 0..torn.len() {
            let j = Journal::new(&path);
            let _ = std::fs::remove_file(&path);
            j.append(t(7), "ha1", 0).unwrap();
            j.append(t(8), "ha2", 0).unwrap();
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(&torn[..cut]).unwrap();
            drop(f);
            j.append(t(13), "ha1", 0).unwrap_or_else(|e| panic!("cut at byte {cut}: {e}"));
            assert_eq!(
                tokens(&path),
                vec![(7, "ha1".into(), 0), (8, "ha2".into(), 0), (13, "ha1".into(), 0)],
                "cut at byte {cut}"
            );
        }
        // The whole record, newline included, is a record: it fences.
        let j = Journal::new(&path);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&torn).unwrap();
        drop(f);
        assert!(matches!(j.append(t(14), "ha1", 1), Err(JournalError::Fenced { highest, .. }) if highest == t(813)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A complete line whose bytes changed (a stale block, a flipped bit)
    /// is not taken for a record: appends stop, loudly.
    #[test]
    fn a_damaged_complete_record_is_refused_not_misread() {
        let dir = temp_dir("damaged");
        let path = dir.join("j");
        let j = Journal::new(&path);
        j.append(t(7), "ha1", 0).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] = b'9';
        std::fs::write(&path, &bytes).unwrap();
        let e = j.append(t(8), "ha1", 1).unwrap_err();
        assert!(matches!(e, JournalError::Corrupt { line: 1, .. }), "{e}");
        assert!(e.is_permanent());
        // The worker's check before campaigning sees it too.
        assert!(matches!(j.check(), Err(JournalError::Corrupt { line: 1, .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// After a power cut, the unacknowledged last record can hold a zeroed
    /// block (it never reached the disk) followed by its end, newline
    /// included. That is a torn record, dropped like one without its
    /// newline, not damage that locks the journal; zeros in an earlier
    /// record still are.
    #[test]
    fn a_last_record_with_a_zeroed_block_is_torn_not_damage() {
        let dir = temp_dir("zeroed");
        let path = dir.join("j");
        let j = Journal::new(&path);
        j.append(t(7), "ha1", 0).unwrap();
        let mut torn = Entry { token: t(813), instance: "ha2".into(), seq: 0 }.encode();
        torn[..5].fill(0);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&torn).unwrap();
        drop(f);
        j.check().expect("a torn last record is no damage");
        let read: Vec<_> = read_entries(&path).unwrap().into_iter().map(|e| e.token).collect();
        assert_eq!(read, vec![t(7)]);
        j.append(t(8), "ha1", 1).expect("the next append cuts the torn record");
        assert_eq!(tokens(&path), vec![(7, "ha1".into(), 0), (8, "ha1".into(), 1)]);
        // The same zeros in a record that is not the last: refused.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..3].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(j.check(), Err(JournalError::Corrupt { line: 1, .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Journals written before epochs (and before checksums) read on, in
    /// epoch 0: the first term of epoch 1 passes every one of their terms,
    /// however large.
    #[test]
    fn records_of_older_formats_read_as_epoch_0() {
        let dir = temp_dir("formats");
        let path = dir.join("j");
        let four = format!("309 ha1 7 {:08x}\n", crc32c::crc32c(b"309 ha1 7"));
        std::fs::write(&path, format!("12 ha2 3\n{four}")).unwrap();
        let j = Journal::new(&path);
        let refused = j.append(Token::new(0, 8), "ha2", 0);
        assert!(matches!(refused, Err(JournalError::Fenced { highest, .. }) if highest == Token::new(0, 309)));
        j.append(Token::new(1, 8), "ha2", 0).unwrap();
        assert_eq!(tokens(&path), vec![(12, "ha2".into(), 3), (309, "ha1".into(), 7), (8, "ha2".into(), 0)]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_path_under_a_file_is_a_permanent_error() {
        let dir = temp_dir("notdir");
        std::fs::write(dir.join("file"), b"").unwrap();
        let j = Journal::new(dir.join("file").join("journal"));
        let e = j.check().unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert!(e.remedy().contains("file"), "{}", e.remedy());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! A wall clock that a test can step, for one process: Debian's
//! `libfaketime`, preloaded into the process.
//!
//! A real machine's clock steps when NTP corrects it, when a VM is resumed
//! or when an operator sets it; its monotonic clock never does. So this
//! fakes only `CLOCK_REALTIME` (`FAKETIME_DONT_FAKE_MONOTONIC`): timers,
//! timeouts and `Instant`s run true, and whatever the process reads from
//! `SystemTime` is off by the offset in [`SkewedClock::file`], read again at
//! every call (`FAKETIME_NO_CACHE`), so [`SkewedClock::step`] takes effect
//! at once in a running process.

use std::path::{Path, PathBuf};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The offset file of one or more processes' wall clocks.
pub struct SkewedClock {
    file: PathBuf,
    /// `file` as the environment names it.
    file_var: String,
}

impl SkewedClock {
    /// A clock that starts true (offset 0), its offset kept in `dir`.
    pub fn new(dir: &Path) -> SkewedClock {
        assert!(
            Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} is missing: install Debian's faketime package (scripts/setup.sh)"
        );
        let file = dir.join(format!("{}.faketime", crate::unique("clock")));
        let clock = SkewedClock { file_var: file.display().to_string(), file };
        clock.step(0);
        clock
    }

    /// Sets the wall clock of every process started with [`SkewedClock::env`]
    /// to the true time plus `offset_secs` (negative: behind).
    pub fn step(&self, offset_secs: i64) {
        // libfaketime's relative form: "+90s", "-3600s".
        std::fs::write(&self.file, format!("{offset_secs:+}s\n"))
            .unwrap_or_else(|e| panic!("write {}: {e}", self.file.display()));
    }

    /// The environment that makes a process use this clock.
    pub fn env(&self) -> [(&'static str, &str); 4] {
        [
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", &self.file_var),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ]
    }

    pub fn file(&self) -> &Path {
        &self.file
    }
}

//! Failpoints: named places where a test or a drill can make a service
//! crash on purpose, to show a promise holds across that exact crash.
//!
//! `FAILPOINTS=system-b/after-store-apply` makes system-b abort the moment
//! its store has applied a task and before the task's node says so: the
//! window a kill -9 would have to hit by luck. The process dies as kill -9
//! leaves it (no destructors, no ack, no goodbye to either server), so
//! what the test then checks is what a real crash there would leave.
//!
//! Unset, a failpoint costs one look at a cached value. The variable is
//! read once, at the first failpoint reached.

use std::sync::OnceLock;

static ARMED: OnceLock<Vec<String>> = OnceLock::new();

/// Aborts the process if the failpoint `name` is armed in `FAILPOINTS`
/// (comma-separated names).
pub fn crash_if_armed(name: &str) {
    if is_armed(name) {
        eprintln!("failpoint {name}: crashing on purpose");
        std::process::abort();
    }
}

/// Whether the failpoint `name` is armed. Besides crashes, a failpoint may
/// break a promise on purpose (`system-b/store-ignores-fencing`), so that
/// a test can show its checker catches exactly that break.
pub fn is_armed(name: &str) -> bool {
    let armed = ARMED.get_or_init(|| {
        std::env::var("FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    });
    armed.iter().any(|a| a == name)
}

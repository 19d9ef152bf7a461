//! How long something in the tree has been there, measured on this
//! process's own monotonic clock: from the first time this process saw it.
//!
//! The tempting measure, "my wall clock minus the znode's ctime (or
//! mtime)", subtracts two different clocks: a znode's times are the
//! server's wall clock (the leader's, on an ensemble), and `now` would be
//! this machine's. The two differ by whatever skew lies between the
//! machines, and this machine's steps whenever NTP, a resumed VM or an
//! operator sets it. With that measure, a system-a one hour behind left
//! every outbox entry "too fresh to publish" for an hour (accepted tasks
//! stuck), and one a day ahead reaped finished tasks at once, so a client
//! retrying with its request id inside the retention got a second task
//! (tests/tests/clock_jumps.rs).
//!
//! An age measured here is never more than the truth. After a restart it
//! starts again from zero, which can only delay what waits on it: the
//! drain publishes a left-over entry a moment later, the reaper keeps a
//! finished task a little longer than the retention. Both are safe; the
//! opposite errors are not.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// When each name was first seen in the state it is in now.
#[derive(Debug, Default)]
pub struct Sightings {
    first: HashMap<String, (i64, Instant)>,
}

impl Sightings {
    /// How long `name` has been seen with `zxid` (its czxid, or its mzxid
    /// where a change must restart the count). A name seen with another
    /// zxid is a different node or a different state: its age starts now.
    pub fn age(&mut self, name: &str, zxid: i64, now: Instant) -> Duration {
        match self.first.get(name) {
            Some(&(z, since)) if z == zxid => now.saturating_duration_since(since),
            _ => {
                self.first.insert(name.to_string(), (zxid, now));
                Duration::ZERO
            }
        }
    }

    /// Forgets every name not in `present` (gone from the tree), so memory
    /// follows what the tree holds.
    pub fn retain_only<'a>(&mut self, present: impl IntoIterator<Item = &'a str>) {
        let present: HashSet<&str> = present.into_iter().collect();
        self.first.retain(|name, _| present.contains(name.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_counts_from_the_first_sighting_and_restarts_on_a_new_zxid() {
        let mut s = Sightings::default();
        let t0 = Instant::now();
        assert_eq!(s.age("a", 7, t0), Duration::ZERO);
        assert_eq!(s.age("a", 7, t0 + Duration::from_secs(3)), Duration::from_secs(3));
        // Deleted and created again (or changed, for an mzxid): a new node.
        assert_eq!(s.age("a", 9, t0 + Duration::from_secs(4)), Duration::ZERO);
        assert_eq!(s.age("a", 9, t0 + Duration::from_secs(6)), Duration::from_secs(2));
    }

    #[test]
    fn names_gone_from_the_tree_are_forgotten() {
        let mut s = Sightings::default();
        let t0 = Instant::now();
        s.age("a", 1, t0);
        s.age("b", 2, t0);
        s.retain_only(["b"]);
        assert_eq!(s.age("a", 1, t0 + Duration::from_secs(5)), Duration::ZERO, "a was forgotten");
        assert_eq!(s.age("b", 2, t0 + Duration::from_secs(5)), Duration::from_secs(5));
    }
}

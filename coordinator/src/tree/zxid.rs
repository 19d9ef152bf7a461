//! Where an in-memory server's zxids start.

/// 2020-01-01T00:00:00Z in Unix ms: the origin of in-memory zxids.
const ZXID_CLOCK_ORIGIN_MS: i64 = 1_577_836_800_000;

/// Where an in-memory server's zxids start: the wall clock's milliseconds
/// since 2020, times 2^22.
///
/// Without a data dir nothing survives a restart, yet clients and the
/// stores they feed do: a lock holder's fencing token is its node's czxid,
/// and a client refuses a server whose zxid is below one it has seen.
/// Starting from 0 on each run would hand out tokens below the last run's.
/// ZooKeeper starts each leader's zxids at a new epoch in the high 32 bits;
/// here the high 32 bits are the clock in units of 1.024 s, and the low
/// 32 leave 2^22 txns per millisecond: a run would have to sustain four
/// billion writes a second to reach the zxids of a run started after it.
/// So zxids only grow across restarts as long as the wall clock does not
/// step back further than the previous run's own writes moved it on; a
/// data dir removes even that assumption. Good until 2089.
pub fn in_memory_first_zxid(now_ms: i64) -> i64 {
    (now_ms.saturating_sub(ZXID_CLOCK_ORIGIN_MS).clamp(0, (1 << 41) - 1)) << 22
}

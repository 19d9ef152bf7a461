//! Server statistics: the live counters the request path updates, and the
//! [`Snapshot`] read from them (and from the tree, the sessions and the
//! connections, by `fourlw::snapshot`) that every report renders:
//! `mntr` and `srvr` (`fourlw`), Prometheus `/metrics`
//! (`admin`) and the gRPC `ServerStats` (`grpc`). One
//! typed source, so the three can never disagree about a number or parse
//! one back out of another's text. This module depends on nothing else in
//! the server, so the core can own its counters.
//!
//! # Recording is cheap
//! Everything here is updated on the hot path, from many connection tasks
//! at once: plain atomics, no lock and no allocation. A `Summary` costs a
//! few relaxed atomic adds per sample and one clock read (about 60 ns a
//! sample in a release build here, 120 ns with two threads contending).
//!
//! # Summaries
//! A summary (ZooKeeper's word: request latency, fsync time, snapshot time)
//! keeps the count, sum, min and max of every sample since start, as
//! ZooKeeper's `mntr` reports them, and a log-scale histogram from which
//! quantiles are read. The histogram covers a sliding window of the last
//! `WINDOW_SLOTS` × `SLOT_SECONDS` seconds, as ZooKeeper's Prometheus
//! summaries do (ten minutes in five age buckets): a p99 over the whole
//! uptime would hide this morning's slow disk behind last week's samples.
//! Buckets are 8 per power of two, so a quantile is within about 6% of
//! the true sample (HdrHistogram's idea at a fixed, small precision).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What a request was, for latency: ZooKeeper's split, which monitoring
/// dashboards chart as `readlatency` and `updatelatency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A request that logged no transaction: getData, getChildren,
    /// exists, getACL, sync, ping, setWatches (ZooKeeper counts all of
    /// these as reads).
    Read,
    /// A request that logged a transaction, an error transaction included:
    /// create, delete, setData, setACL, check, multi, reconfig,
    /// createSession and closeSession. Measured until its reply goes out,
    /// after the fsync.
    Update,
}

/// The live counters.
#[derive(Debug, Default)]
pub struct Stats {
    pub packets_received: AtomicU64,
    /// Shared with every connection, which counts the frames it queues.
    pub packets_sent: Arc<AtomicU64>,
    /// Requests read off a connection and not yet carried out. With the
    /// txns not yet durable, what ZooKeeper calls `outstanding_requests`
    /// (see `Core::outstanding_requests`). Signed so that a decrement
    /// racing ahead of its increment cannot wrap; reported as 0 when below.
    pub in_process: AtomicI64,
    /// The most requests ever outstanding at once: what admission control
    /// (`globalOutstandingLimit`) bounds.
    pub outstanding_peak: AtomicI64,
    /// Times a connection was held back by admission control.
    pub throttled_waits: AtomicU64,
    read_latency: Summary,
    update_latency: Summary,
}

impl Stats {
    /// A request's latency, from when it was read to when its reply was
    /// queued (after the fsync, for an update).
    pub fn record_request(&self, kind: RequestKind, elapsed: Duration) {
        match kind {
            RequestKind::Read => self.read_latency.record(elapsed),
            RequestKind::Update => self.update_latency.record(elapsed),
        }
    }

    /// A request has been read; `unlogged` txns are not yet durable, and
    /// count towards the peak with the requests in process.
    pub fn request_began(&self, unlogged: u64) {
        let now = self.in_process.fetch_add(1, Ordering::Relaxed) + 1;
        self.outstanding_peak.fetch_max(now + unlogged as i64, Ordering::Relaxed);
    }

    /// A request counted by [`request_began`](Self::request_began) has been
    /// carried out: its reply is queued, or its txn handed to the log.
    pub fn request_done(&self) {
        self.in_process.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn packets_sent(&self) -> u64 {
        self.packets_sent.load(Ordering::Relaxed)
    }

    /// Requests being carried out now (0 if the count has dipped below).
    pub fn in_process(&self) -> u64 {
        self.in_process.load(Ordering::Relaxed).max(0) as u64
    }

    pub fn read_latency(&self) -> SummaryStats {
        self.read_latency.read()
    }

    pub fn update_latency(&self) -> SummaryStats {
        self.update_latency.read()
    }

    /// min, avg and max over every request since start, in milliseconds,
    /// as ZooKeeper's `avg_latency` and its kin report them.
    pub fn latency(&self) -> Latency {
        let parts = [&self.read_latency, &self.update_latency].map(Summary::totals);
        let count: u64 = parts.iter().map(|t| t.count).sum();
        if count == 0 {
            return Latency::default();
        }
        let sum: u64 = parts.iter().map(|t| t.sum_us).sum();
        let min = parts.iter().filter(|t| t.count > 0).map(|t| t.min_us).min().unwrap_or(0);
        let max = parts.iter().map(|t| t.max_us).max().unwrap_or(0);
        Latency { min_ms: ms(min), avg_ms: sum as f64 / count as f64 / 1000.0, max_ms: ms(max) }
    }

    /// Zeroes the counters and summaries (not the gauges, which describe
    /// the present).
    pub fn reset(&self) {
        self.packets_received.store(0, Ordering::Relaxed);
        self.packets_sent.store(0, Ordering::Relaxed);
        for s in [&self.read_latency, &self.update_latency] {
            s.reset();
        }
    }
}

/// Request latency over all kinds, in milliseconds (0 before any request).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub min_ms: f64,
    pub avg_ms: f64,
    pub max_ms: f64,
}

/// Timings the storage records: its log's fsyncs and its snapshots.
#[derive(Debug, Default)]
pub(crate) struct StorageTimes {
    /// Each fsync of the transaction log (ZooKeeper's `fsynctime`).
    pub fsync: Summary,
    /// Each snapshot, from its first byte to its file synced and renamed
    /// into place (ZooKeeper's `snapshottime`).
    pub snapshot: Summary,
}

/// Seconds each histogram slot covers.
pub(crate) const SLOT_SECONDS: u64 = 120;
/// Slots in a summary's window: quantiles cover the last
/// `(WINDOW_SLOTS - 1) * SLOT_SECONDS` to `WINDOW_SLOTS * SLOT_SECONDS`
/// seconds.
pub(crate) const WINDOW_SLOTS: usize = 5;
/// Sub-buckets per power of two (a power of two itself).
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Samples at or above 2^40 µs (12 days) share the last bucket.
const MAX_EXPONENT: u32 = 40;
const BUCKETS: usize = ((MAX_EXPONENT - SUB_BITS + 1) as u64 * SUB + SUB) as usize;

/// The quantiles every summary offers.
pub const QUANTILES: [f64; 5] = [0.5, 0.9, 0.95, 0.99, 0.999];

/// A distribution of durations (see the module's notes): totals since
/// start, quantiles over a sliding window.
#[derive(Debug)]
pub(crate) struct Summary {
    count: AtomicU64,
    sum_us: AtomicU64,
    /// `u64::MAX` until the first sample.
    min_us: AtomicU64,
    max_us: AtomicU64,
    slots: [Slot; WINDOW_SLOTS],
}

#[derive(Debug)]
struct Slot {
    /// 1 + the number of the time slot whose samples the buckets hold; 0
    /// for never used.
    stamp: AtomicU64,
    buckets: Box<[AtomicU64]>,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            min_us: AtomicU64::new(u64::MAX),
            max_us: AtomicU64::new(0),
            slots: std::array::from_fn(|_| Slot {
                stamp: AtomicU64::new(0),
                buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            }),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Totals {
    count: u64,
    sum_us: u64,
    min_us: u64,
    max_us: u64,
}

/// The number of the current time slot.
fn now_slot() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs() / SLOT_SECONDS
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The bucket a value (µs) falls in: exact below `SUB`, then `SUB` buckets
/// per power of two.
fn bucket_of(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let exponent = (63 - us.leading_zeros()).min(MAX_EXPONENT);
    if exponent == MAX_EXPONENT {
        return BUCKETS - 1;
    }
    let mantissa = (us >> (exponent - SUB_BITS)) & (SUB - 1);
    ((exponent - SUB_BITS + 1) as u64 * SUB + mantissa) as usize
}

/// The value a bucket stands for: the middle of its range.
fn bucket_value(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let exponent = (i / SUB) as u32 + SUB_BITS - 1;
    let width = 1u64 << (exponent - SUB_BITS);
    let low = (SUB + i % SUB) << (exponent - SUB_BITS);
    low + (width - 1) / 2
}

impl Summary {
    pub fn record(&self, elapsed: Duration) {
        self.record_us(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn record_us(&self, us: u64) {
        self.record_at(us, now_slot());
    }

    fn record_at(&self, us: u64, slot: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        // Loads first: a new extreme is rare, and a read is cheaper than
        // the compare-and-swap loop fetch_min/fetch_max become.
        if us < self.min_us.load(Ordering::Relaxed) {
            self.min_us.fetch_min(us, Ordering::Relaxed);
        }
        if us > self.max_us.load(Ordering::Relaxed) {
            self.max_us.fetch_max(us, Ordering::Relaxed);
        }
        let s = &self.slots[(slot % WINDOW_SLOTS as u64) as usize];
        let stamp = s.stamp.load(Ordering::Acquire);
        if stamp != slot + 1
            && stamp < slot + 1
            && s.stamp.compare_exchange(stamp, slot + 1, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            // This slot last held samples a whole window ago: the one
            // recorder that moved its stamp empties it. A sample another
            // thread adds meanwhile may be wiped with the old ones; a
            // quantile does not miss one sample at a slot's turn.
            for b in s.buckets.iter() {
                b.store(0, Ordering::Relaxed);
            }
        }
        s.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    fn totals(&self) -> Totals {
        let count = self.count.load(Ordering::Relaxed);
        let min_us = self.min_us.load(Ordering::Relaxed);
        Totals {
            count,
            sum_us: self.sum_us.load(Ordering::Relaxed),
            min_us: if min_us == u64::MAX { 0 } else { min_us },
            max_us: self.max_us.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        self.count.store(0, Ordering::Relaxed);
        self.sum_us.store(0, Ordering::Relaxed);
        self.min_us.store(u64::MAX, Ordering::Relaxed);
        self.max_us.store(0, Ordering::Relaxed);
        for s in &self.slots {
            s.stamp.store(0, Ordering::Relaxed);
        }
    }

    /// The summary as it stands now.
    pub fn read(&self) -> SummaryStats {
        self.read_at(now_slot())
    }

    fn read_at(&self, slot: u64) -> SummaryStats {
        let t = self.totals();
        let mut window = vec![0u64; BUCKETS];
        for s in &self.slots {
            let stamp = s.stamp.load(Ordering::Acquire);
            // Slots of the last WINDOW_SLOTS time slots, this one included.
            if stamp == 0 || stamp + (WINDOW_SLOTS as u64) <= slot + 1 {
                continue;
            }
            for (w, b) in window.iter_mut().zip(s.buckets.iter()) {
                *w += b.load(Ordering::Relaxed);
            }
        }
        let in_window: u64 = window.iter().sum();
        let quantiles = (in_window > 0).then(|| {
            QUANTILES.map(|q| {
                let rank = ((q * in_window as f64).ceil() as u64).clamp(1, in_window);
                let mut seen = 0;
                let i = window.iter().position(|n| {
                    seen += n;
                    seen >= rank
                });
                // The bucket's middle, kept within what was really seen.
                ms(i.map_or(t.max_us, bucket_value).clamp(t.min_us, t.max_us.max(t.min_us)))
            })
        });
        SummaryStats { count: t.count, sum_ms: ms(t.sum_us), min_ms: ms(t.min_us), max_ms: ms(t.max_us), quantiles }
    }
}

/// A summary read at one moment, in milliseconds (ZooKeeper's unit for all
/// of them).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SummaryStats {
    /// Samples since start.
    pub count: u64,
    pub sum_ms: f64,
    /// 0 before the first sample.
    pub min_ms: f64,
    pub max_ms: f64,
    /// The [`QUANTILES`] over the recent window; `None` when the window
    /// holds no sample.
    pub quantiles: Option<[f64; QUANTILES.len()]>,
}

impl SummaryStats {
    pub fn avg_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ms / self.count as f64
        }
    }

    /// One of the [`QUANTILES`]; `None` for an empty window or a quantile
    /// not offered.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let i = QUANTILES.iter().position(|x| *x == q)?;
        self.quantiles.map(|v| v[i])
    }
}

/// Every number the server reports about itself, read once.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub version: &'static str,
    /// Always `standalone`: one node.
    pub server_state: &'static str,
    pub latency: Latency,
    pub read_latency: SummaryStats,
    pub update_latency: SummaryStats,
    /// Empty (count 0) without a data dir.
    pub fsync_time: SummaryStats,
    pub snapshot_time: SummaryStats,
    pub packets_received: u64,
    pub packets_sent: u64,
    pub num_alive_connections: u64,
    pub outstanding_requests: u64,
    /// Bytes of replies and notifications queued on connections and not
    /// written yet (the coordinator's own figure; ZooKeeper has none).
    pub queued_bytes: u64,
    pub znode_count: u64,
    pub watch_count: u64,
    pub ephemerals_count: u64,
    pub approximate_data_size: u64,
    pub open_file_descriptor_count: u64,
    /// `None` when the limit cannot be read.
    pub max_file_descriptor_count: Option<u64>,
    pub global_sessions: u64,
    pub last_zxid: i64,
    pub uptime: Duration,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A snapshot with every figure distinct, for the renderers' tests.
    pub(crate) fn sample() -> Snapshot {
        let read = Summary::default();
        for us in [100, 200, 300, 400, 5_000] {
            read.record_at(us, 0);
        }
        let update = Summary::default();
        update.record_at(2_700, 0);
        let fsync = Summary::default();
        fsync.record_at(1_000, 0);
        Snapshot {
            version: crate::fourlw::VERSION,
            server_state: "standalone",
            latency: Latency { min_ms: 0.1, avg_ms: 1.4167, max_ms: 5.0 },
            read_latency: read.read_at(0),
            update_latency: update.read_at(0),
            fsync_time: fsync.read_at(0),
            snapshot_time: SummaryStats::default(),
            packets_received: 11,
            packets_sent: 12,
            num_alive_connections: 3,
            outstanding_requests: 4,
            queued_bytes: 4096,
            znode_count: 7,
            watch_count: 8,
            ephemerals_count: 2,
            approximate_data_size: 1234,
            open_file_descriptor_count: 40,
            max_file_descriptor_count: None,
            global_sessions: 5,
            last_zxid: 99,
            uptime: Duration::from_millis(4321),
        }
    }

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for us in (0..5_000u64).chain((12..40).map(|e| (1u64 << e) + 12_345)) {
            let b = bucket_of(us);
            assert!(b >= last && b < BUCKETS, "{us} -> {b}");
            last = b;
            // The bucket's value is within 1/16 of the sample (half a
            // bucket's width, at 8 buckets per power of two).
            let v = bucket_value(b) as f64;
            assert!((v - us as f64).abs() <= us as f64 / 16.0 + 0.5, "{us} -> bucket {b} -> {v}");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_of(1 << MAX_EXPONENT), BUCKETS - 1);
        for us in 0..SUB {
            assert_eq!(bucket_value(bucket_of(us)), us, "small values are exact");
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let s = Summary::default();
        // 1..=1000 ms, each once.
        for ms in 1..=1000u64 {
            s.record_at(ms * 1000, 3);
        }
        let r = s.read_at(3);
        assert_eq!(r.count, 1000);
        assert_eq!((r.min_ms, r.max_ms), (1.0, 1000.0));
        assert!((r.avg_ms() - 500.5).abs() < 1e-9);
        for (q, want) in QUANTILES.iter().zip([500.0, 900.0, 950.0, 990.0, 999.0]) {
            let got = r.quantile(*q).expect("samples in the window");
            assert!((got - want).abs() <= want * 0.07, "p{q}: {got}, want about {want}");
        }
        assert_eq!(r.quantile(0.42), None, "only the offered quantiles");
    }

    #[test]
    fn a_tail_shows_in_the_high_quantiles_only() {
        let s = Summary::default();
        for _ in 0..990 {
            s.record_at(50, 0);
        }
        for _ in 0..10 {
            s.record_at(80_000, 0);
        }
        let r = s.read_at(0);
        let p = |q| r.quantile(q).expect("quantile");
        assert!((p(0.5) - 0.05).abs() < 0.004 && (p(0.99) - 0.05).abs() < 0.004, "{r:?}");
        assert!((p(0.999) - 80.0).abs() < 80.0 * 0.07, "{r:?}");
    }

    #[test]
    fn quantiles_forget_samples_older_than_the_window() {
        let s = Summary::default();
        s.record_at(10_000, 0);
        assert!(s.read_at(WINDOW_SLOTS as u64 - 1).quantiles.is_some(), "still in the window");
        let later = s.read_at(WINDOW_SLOTS as u64);
        assert_eq!(later.quantiles, None, "a whole window later");
        assert_eq!((later.count, later.max_ms), (1, 10.0), "totals are since start");
        // The slot is reused: the old sample must not come back with the new.
        s.record_at(1_000, WINDOW_SLOTS as u64);
        let r = s.read_at(WINDOW_SLOTS as u64);
        assert_eq!(r.quantile(0.999), Some(1.0), "{r:?}");
        assert_eq!(r.count, 2);
    }

    #[test]
    fn latency_spans_every_kind() {
        let stats = Stats::default();
        assert_eq!(stats.latency(), Latency::default());
        stats.record_request(RequestKind::Read, Duration::from_micros(300));
        stats.record_request(RequestKind::Update, Duration::from_micros(2_700));
        let l = stats.latency();
        assert_eq!((l.min_ms, l.max_ms), (0.3, 2.7));
        assert!((l.avg_ms - 1.5).abs() < 1e-9);
        assert_eq!(stats.read_latency.read().count, 1);
        assert_eq!(stats.update_latency.read().count, 1);
        stats.reset();
        assert_eq!(stats.latency(), Latency::default());
        assert_eq!(stats.read_latency.read().quantiles, None);
    }

    #[test]
    fn in_process_never_reads_negative() {
        let stats = Stats::default();
        stats.request_done();
        assert_eq!(stats.in_process.load(Ordering::Relaxed), -1);
        assert_eq!(stats.in_process(), 0);
        stats.request_began(0);
        stats.request_began(5);
        assert_eq!(stats.in_process(), 1);
        assert_eq!(stats.outstanding_peak.load(Ordering::Relaxed), 6, "the peak counts the unlogged txns too");
    }
}

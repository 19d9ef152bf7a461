//! Server counters for the four-letter words and metrics (`mntr` names).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a request was, for latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    Update,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub packets_received: AtomicU64,
    /// Shared with every connection, which counts the frames it queues.
    pub packets_sent: Arc<AtomicU64>,
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    latency_max_us: AtomicU64,
    latency_min_us: AtomicU64,
    pub outstanding_requests: AtomicI64,
    /// The most requests ever outstanding at once.
    pub outstanding_peak: AtomicI64,
    /// Times a connection was held back by admission control.
    pub throttled_waits: AtomicU64,
}

impl Stats {
    pub fn record_request(&self, _kind: RequestKind, elapsed: Duration) {
        self.record_latency(elapsed.as_micros() as u64);
    }

    pub fn request_began(&self) {
        let now = self.outstanding_requests.fetch_add(1, Ordering::Relaxed) + 1;
        self.outstanding_peak.fetch_max(now, Ordering::Relaxed);
    }

    pub fn request_ended(&self) {
        self.outstanding_requests.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn record_latency(&self, us: u64) {
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        self.latency_max_us.fetch_max(us, Ordering::Relaxed);
        // 0 means "none yet".
        let mut cur = self.latency_min_us.load(Ordering::Relaxed);
        while cur == 0 || us < cur {
            match self.latency_min_us.compare_exchange_weak(cur, us.max(1), Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(v) => cur = v,
            }
        }
    }

    /// (min, avg, max) in milliseconds, as ZooKeeper reports latency.
    pub fn latency_ms(&self) -> (f64, f64, f64) {
        let n = self.latency_count.load(Ordering::Relaxed);
        if n == 0 {
            return (0.0, 0.0, 0.0);
        }
        let sum = self.latency_sum_us.load(Ordering::Relaxed) as f64;
        (
            self.latency_min_us.load(Ordering::Relaxed) as f64 / 1000.0,
            sum / n as f64 / 1000.0,
            self.latency_max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        )
    }

    pub fn packets_sent(&self) -> u64 {
        self.packets_sent.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        for c in [
            &self.packets_received,
            &*self.packets_sent,
            &self.latency_count,
            &self.latency_sum_us,
            &self.latency_max_us,
            &self.latency_min_us,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

//! Server counters for the four-letter words and metrics (`mntr` names).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Stats {
    pub packets_received: AtomicU64,
    /// Shared with every connection, which counts the frames it queues.
    pub packets_sent: Arc<AtomicU64>,
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    latency_max_us: AtomicU64,
    latency_min_us: AtomicU64,
}

impl Stats {
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

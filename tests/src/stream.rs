//! A stream of submits through system-a from several clients, each on an
//! entity of its own, with every call's start and latency: what the fault
//! suites (a ZooKeeper ensemble's, a broker cluster's) run while they
//! break something, and measure the fault by.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use system_a::proto::tasks_client::TasksClient;
use system_a::proto::SubmitRequest;

/// One submit: when it started (since the stream began), how long it
/// took, and whether it succeeded.
pub struct Call {
    pub at: Duration,
    pub took: Duration,
    pub ok: bool,
}

/// What a stream of submits saw.
pub struct Stream {
    pub started: Instant,
    pub calls: Vec<Call>,
    pub failed: Vec<String>,
    /// Successful submits per entity.
    pub per_entity: Vec<(String, i64)>,
}

impl Stream {
    pub fn ok(&self) -> usize {
        self.calls.iter().filter(|c| c.ok).count()
    }

    pub fn sorted_latencies(&self) -> Vec<Duration> {
        let mut l: Vec<Duration> = self.calls.iter().map(|c| c.took).collect();
        l.sort();
        l
    }

    /// From `fault` until the end of the last submit that took more than
    /// three times the p99 before it (at least 100 ms): how long the fault
    /// was felt. Zero if no submit was slowed.
    pub fn recovery(&self, fault: Instant) -> Duration {
        let at = fault.duration_since(self.started);
        let mut before: Vec<Duration> = self.calls.iter().filter(|c| c.at + c.took < at).map(|c| c.took).collect();
        before.sort();
        let slow = (percentile(&before, 0.99) * 3).max(Duration::from_millis(100));
        self.calls
            .iter()
            .filter(|c| c.took > slow && c.at + c.took > at)
            .map(|c| (c.at + c.took).saturating_sub(at))
            .max()
            .unwrap_or_default()
    }

    /// The longest time without a submit completing (done) in the
    /// stream, and when it began (since the stream started): the outage
    /// the clients saw, whichever submits it fell on.
    pub fn longest_gap(&self) -> (Duration, Duration) {
        let mut done: Vec<Duration> = self.calls.iter().filter(|c| c.ok).map(|c| c.at + c.took).collect();
        done.sort();
        done.windows(2).map(|w| (w[1] - w[0], w[0])).max().unwrap_or_default()
    }

    pub fn report(&self, what: &str, fault: Instant) -> String {
        let l = self.sorted_latencies();
        format!(
            "{what}: {} submits ok, {} failed; latency p50 {:?} p99 {:?} max {:?}; recovered {:?} after the fault \
             (over {:?} since it)",
            self.ok(),
            self.failed.len(),
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l.last().copied().unwrap_or_default(),
            self.recovery(fault),
            fault.elapsed(),
        )
    }
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `clients` loops submitting `add 1` to their own entity until `stop`.
pub async fn submit_stream(a_addr: String, clients: usize, stop: Arc<AtomicBool>) -> Stream {
    let grpc = TasksClient::connect(format!("http://{a_addr}")).await.expect("gRPC");
    let started = Instant::now();
    let mut loops = Vec::new();
    for c in 0..clients {
        let mut g = grpc.clone();
        let stop = stop.clone();
        loops.push(tokio::spawn(async move {
            let entity = format!("c{c}");
            let (mut ok, mut failed, mut calls) = (0i64, Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(30),
                    g.submit(SubmitRequest {
                        entity: entity.clone(),
                        op: "add".into(),
                        amount: 1,
                        ..Default::default()
                    }),
                )
                .await;
                let done = matches!(&r, Ok(Ok(reply)) if reply.get_ref().status == "done");
                calls.push(Call { at: t.duration_since(started), took: t.elapsed(), ok: done });
                match r {
                    Ok(Ok(_)) if done => ok += 1,
                    Ok(Ok(reply)) => failed.push(format!("not done: {:?}", reply.into_inner())),
                    Ok(Err(s)) => failed.push(format!("{:?}: {}", s.code(), s.message())),
                    Err(_) => failed.push("no answer within 30 s".into()),
                }
            }
            (entity, ok, failed, calls)
        }));
    }
    // The loops run until `stop`, however long a test's fault takes;
    // from then on each has a minute to end its last call.
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut s = Stream { started, calls: vec![], failed: vec![], per_entity: vec![] };
    for l in loops {
        let (entity, ok, failed, calls) =
            tokio::time::timeout(Duration::from_secs(60), l).await.expect("in time").expect("loop");
        s.calls.extend(calls);
        s.failed.extend(failed);
        s.per_entity.push((entity, ok));
    }
    s
}

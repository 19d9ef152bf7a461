//! Tasks submitted as a careful client submits them: through system-a's
//! gRPC API, each with a request id of its own, retried with the same id
//! while the answer is "not yet" (DEADLINE_EXCEEDED) or "cannot tell"
//! (UNAVAILABLE), so that a retry is the same task, never a second one.
//! Any other answer is a refusal, and a drill counts it.

use std::time::{Duration, Instant};

use system_a::proto::tasks_client::TasksClient;
use system_a::proto::{SubmitReply, SubmitRequest};
use tonic::Code;

/// How one task ended for its client.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub request_id: String,
    /// The reply (status "done", the entity's value after it, who applied
    /// it and the lock token's zxid), or why there is none.
    pub reply: Result<SubmitReply, String>,
    /// Submit → result, retries included.
    pub took: Duration,
    /// How many calls it took (1 = answered at once).
    pub calls: u32,
}

/// Gives up on a task after this long: well past every fault a drill
/// causes, so a task still unanswered then is a broken promise.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Submits "add `amount`" to `entity` and waits for its result.
pub async fn add(system_a: &str, entity: &str, amount: i64) -> Outcome {
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let mut calls = 0;
    let reply = loop {
        calls += 1;
        let req =
            SubmitRequest { entity: entity.to_string(), op: "add".into(), amount, request_id: request_id.clone() };
        let answer = match TasksClient::connect(system_a.to_string()).await {
            Ok(mut c) => c.submit(req).await.map(|r| r.into_inner()),
            // system-a itself unreachable (a restart): the same as UNAVAILABLE.
            Err(e) => Err(tonic::Status::unavailable(format!("cannot reach system-a: {e}"))),
        };
        match answer {
            Ok(reply) => break Ok(reply),
            Err(s) if matches!(s.code(), Code::DeadlineExceeded | Code::Unavailable) => {
                if started.elapsed() > PATIENCE {
                    break Err(format!("no result after {} s: {}", PATIENCE.as_secs(), s.message()));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(s) => break Err(format!("refused: {:?}: {}", s.code(), s.message())),
        }
    };
    Outcome { request_id, reply, took: started.elapsed(), calls }
}

/// [`add`] of 1 to `entity`, running on its own while the drill goes on.
pub fn spawn_add(system_a: &str, entity: &str) -> tokio::task::JoinHandle<Outcome> {
    let (a, e) = (system_a.to_string(), entity.to_string());
    tokio::spawn(async move { add(&a, &e, 1).await })
}

/// `clients` clients, each submitting "add 1" to `entity` one task after
/// another until `submitting` has passed since `began`: what a drill runs
/// its fault under. Each client's outcomes come with when each was sent
/// (since `began`), so a drill can tell the tasks that crossed its fault.
pub fn submit_for(
    system_a: &str,
    entity: &str,
    clients: usize,
    began: Instant,
    submitting: Duration,
) -> Vec<tokio::task::JoinHandle<Vec<(Duration, Outcome)>>> {
    (0..clients)
        .map(|_| {
            let (a, e) = (system_a.to_string(), entity.to_string());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while began.elapsed() < submitting {
                    let at = began.elapsed();
                    mine.push((at, add(&a, &e, 1).await));
                }
                mine
            })
        })
        .collect()
}

/// The verdicts a fault under [`submit_for`] must earn: no submit
/// refused, some tasks in flight across `fault` (else the drill proved
/// nothing), and every task done exactly once (`done` says what "done"
/// had to survive).
pub fn judge_stream(
    report: &mut crate::report::Report,
    outcomes: Vec<(Duration, Outcome)>,
    crossed: usize,
    fault: &str,
    entity: &str,
    done: &str,
) {
    let refused: Vec<&String> = outcomes.iter().filter_map(|(_, o)| o.reply.as_ref().err()).collect();
    report.check(
        refused.is_empty(),
        format!("no submit refused ({} accepted)", outcomes.len()),
        format!("{} submits failed: {:?}", refused.len(), refused.iter().take(3).collect::<Vec<_>>()),
    );
    report.check(
        crossed > 0,
        format!("{crossed} tasks crossed {fault}"),
        format!("no task was in flight across {fault}: the drill proved nothing"),
    );
    let all: Vec<Outcome> = outcomes.into_iter().map(|(_, o)| o).collect();
    let once = exactly_once(&all, all.len());
    report.check(
        once.is_ok(),
        format!("{done}every task done exactly once ({entity} = {})", all.len()),
        format!("exactly once: {}", once.err().unwrap_or_default()),
    );
}

/// Submits `n` tasks of "add 1" to `entity`, `concurrency` at a time.
pub async fn adds(system_a: &str, entity: &str, n: usize, concurrency: usize) -> Vec<Outcome> {
    use futures::StreamExt;
    futures::stream::iter(0..n).map(|_| add(system_a, entity, 1)).buffer_unordered(concurrency.max(1)).collect().await
}

/// Exactly once, from the replies alone: `n` tasks of "add 1" on a fresh
/// entity each report the value after them, so the values must be exactly
/// 1..=n. A task applied twice shows as a value past n (and one missing);
/// a task lost, as a reply missing. Returns what is wrong, if anything.
pub fn exactly_once(outcomes: &[Outcome], n: usize) -> Result<(), String> {
    let mut values: Vec<i64> = Vec::new();
    for o in outcomes {
        match &o.reply {
            Ok(r) if r.status == "done" => values.push(r.value),
            Ok(r) => return Err(format!("request {}: status {}", o.request_id, r.status)),
            Err(e) => return Err(format!("request {}: {e}", o.request_id)),
        }
    }
    values.sort_unstable();
    let expected: Vec<i64> = (1..=n as i64).collect();
    if values == expected {
        Ok(())
    } else {
        Err(format!("the values after each task are {values:?}, not 1..={n}"))
    }
}

/// A fresh entity for one drill run, so its value starts at 0.
pub fn fresh_entity(drill: &str) -> String {
    format!("drill-{drill}-{}", uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap_or("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(value: i64) -> Outcome {
        let reply = SubmitReply { task_id: "t".into(), status: "done".into(), value, worker: "b1".into(), token: 1 };
        Outcome { request_id: "r".into(), reply: Ok(reply), took: Duration::ZERO, calls: 1 }
    }

    #[test]
    fn exactly_once_is_every_value_once() {
        assert!(exactly_once(&[done(2), done(1), done(3)], 3).is_ok());
        // Applied twice: the second application reports 3, and 2 is missing.
        assert!(exactly_once(&[done(1), done(3), done(4)], 3).is_err());
        // Lost: a reply missing.
        assert!(exactly_once(&[done(1), done(2)], 3).is_err());
    }
}

//! The clients of a nemesis run, each recording what it asked and what it
//! was told into the [`History`]:
//!
//! - **submitters** send "add 1" tasks through system-a's gRPC API, half on
//!   one hot entity (lock contention) and half spread over cold ones, each
//!   with a request id of its own and retried with it (a retry is the same
//!   task) while the answer is "not yet" or "cannot tell";
//! - **register clients** read, write and compare-and-set a few znodes
//!   directly (the linearizability checker's food);
//! - **the config writer** changes system-b's live config now and then.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use system_a::proto::tasks_client::TasksClient;
use system_a::proto::SubmitRequest;
use tonic::Code;
use zk_recipes::session::Client;
use zk_recipes::ZkError;

use super::history::{Entry, History, TaskOutcome};
use crate::linearizability as lin;

/// How long a submitter waits for one task, retries included: past every
/// fault a run causes, so a task still unanswered then is reported as such.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// One of the entities tasks are submitted on: `hot` half the time.
pub fn pick_entity(rng: &mut StdRng) -> String {
    if rng.random_bool(0.5) {
        "hot".to_string()
    } else {
        format!("cold-{}", rng.random_range(0..8))
    }
}

/// Submits tasks one after another until `stop`. `system_a` is read at
/// every call: a restarted system-a listens on a new port.
pub async fn submitter(
    client: usize,
    system_a: Arc<RwLock<String>>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let entity = pick_entity(&mut rng);
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let invoked = Instant::now();
        let outcome = submit_until_answered(&system_a, &entity, &request_id).await;
        history.push(Entry::Task { client, entity, request_id, invoked, completed: Instant::now(), outcome });
    }
}

async fn submit_until_answered(system_a: &RwLock<String>, entity: &str, request_id: &str) -> TaskOutcome {
    let started = Instant::now();
    loop {
        let addr = system_a.read().map(|a| a.clone()).unwrap_or_default();
        let req = SubmitRequest {
            entity: entity.to_string(),
            op: "add".into(),
            amount: 1,
            request_id: request_id.to_string(),
        };
        let call = async {
            match TasksClient::connect(format!("http://{addr}")).await {
                Ok(mut c) => c.submit(req).await.map(|r| r.into_inner()),
                Err(e) => Err(tonic::Status::unavailable(format!("cannot reach system-a: {e}"))),
            }
        };
        let answer = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in 30 s")));
        match answer {
            Ok(r) if r.status == "done" => {
                return TaskOutcome::Done { value: r.value, token: r.token, worker: r.worker }
            }
            Ok(r) => return TaskOutcome::Refused(format!("status {}", r.status)),
            Err(s) if matches!(s.code(), Code::DeadlineExceeded | Code::Unavailable) => {
                if started.elapsed() > PATIENCE {
                    return TaskOutcome::Unknown(format!("no result after {PATIENCE:?}: {}", s.message()));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => return TaskOutcome::Refused(format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

/// Reads, writes and compare-and-sets `registers` znodes under `dir` until
/// `stop`. With `reads` false only writes and CAS are sent: on an ensemble
/// a read is served by whichever member the client is connected to and may
/// be stale (ZooKeeper promises linearizable writes and sequentially
/// consistent reads), so reads there would fail a checker for a promise
/// ZooKeeper never made.
#[allow(clippy::too_many_arguments)]
pub async fn register_client(
    client: usize,
    zk: String,
    dir: String,
    registers: usize,
    reads: bool,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut session: Option<Client> = None;
    let mut counter: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let c = match &session {
            Some(c) if c.is_live() || c.wait_live(Duration::from_secs(2)).await => c.clone(),
            _ => match Client::connect(&zk, Duration::from_secs(6), Duration::from_secs(5)).await {
                Ok(c) => {
                    session = Some(c.clone());
                    c
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let register = rng.random_range(0..registers);
        let path = format!("{dir}/r{register}");
        counter += 1;
        let value = (client as u64) * 1_000_000 + counter;
        let op = match rng.random_range(0..3) {
            0 if reads => lin::Op::Read,
            1 => lin::Op::Cas { value, expected: rng.random_range(0..=counter.min(40) as i32) },
            _ => lin::Op::Write(value),
        };
        let invoked = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(3), async {
            match op {
                lin::Op::Read => c.zk.get_data(&path, false).await.map(|(data, stat)| {
                    let v = std::str::from_utf8(&data).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                    lin::Outcome::Read(lin::Reg { value: v, version: stat.version })
                }),
                lin::Op::Write(v) => {
                    c.zk.set_data(&path, v.to_string().into_bytes(), None)
                        .await
                        .map(|s| lin::Outcome::Written(s.version))
                }
                lin::Op::Cas { value, expected } => {
                    match c.zk.set_data(&path, value.to_string().into_bytes(), Some(expected)).await {
                        Ok(s) => Ok(lin::Outcome::Written(s.version)),
                        Err(ZkError::BadVersion) => Ok(lin::Outcome::BadVersion),
                        Err(e) => Err(e),
                    }
                }
            }
            // NoNode is a definite answer, not a lost reply: the register
            // is gone. Taken for "unknown", a server that lost its data
            // would pass as one that merely failed to answer.
            .or_else(|e| if e == ZkError::NoNode { Ok(lin::Outcome::NoNode) } else { Err(e) })
        })
        .await;
        let (outcome, returned) = match answer {
            Ok(Ok(o)) => (o, Some(Instant::now())),
            // No answer, or an error that does not say whether the write
            // happened (connection loss, session expiry mid-flight):
            // unknown, concurrent with everything after it.
            _ => (lin::Outcome::Unknown, None),
        };
        history.push(Entry::Register { client, register, op, outcome, invoked, returned });
        if returned.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Changes the services' config at `path` every 1-3 s until `stop`, as
/// the operator (`observer`).
pub async fn config_writer(
    observer: Arc<drills::observe::Observer>,
    path: String,
    work_ms: std::ops::Range<u64>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
        let body = format!(r#"{{"work_ms":{}}}"#, rng.random_range(work_ms.clone()));
        let at = Instant::now();
        if let Ok((version, _)) = observer.set(&path, body.as_bytes()).await {
            history.push(Entry::Config { version, body, at });
        }
    }
}

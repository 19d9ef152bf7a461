//! What the gRPC edge decides, as functions over plain values: which
//! requests get in, which task a request id names, whether a retry is the
//! same request, what each failure tells the caller, and when a Watch is
//! one too many. Nothing here talks to a server, so every rule has a unit
//! test that runs in microseconds.
//!
//! Everything a caller sends is checked here, before anything reaches the
//! coordination server: a name the server cannot hold (a megabyte-long
//! entity is a request over `jute.maxbuffer`, and the server answers it by
//! closing system-a's only connection, failing every other caller's
//! request in flight) must cost the caller an INVALID_ARGUMENT, not cost
//! everybody a reconnect.

use std::net::IpAddr;

use task_contract::{Op, TaskNode, TaskState};
use tonic::Status;
use zk_recipes::ZkError;

use crate::proto::{SubmitReply, SubmitRequest};

/// The largest gRPC message system-a decodes. A valid SubmitRequest is a
/// few hundred bytes (a 128-byte entity, a 64-byte request id); anything
/// far larger is refused by the transport (RESOURCE_EXHAUSTED) before it
/// is even parsed.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// A Submit that passed the edge: the task to record, and under which id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub task_id: String,
    /// The caller's idempotency key, if it sent one: then `task_id` is
    /// derived from it, and a retry names the same task.
    pub request_id: Option<String>,
    /// The task node as recorded: what system-b will apply.
    pub node: TaskNode,
}

/// Checks a Submit: a valid entity, an op system-b knows, a valid request
/// id if there is one. Refused here, not by system-b after a round trip
/// through the queue, and never sent to the coordination server.
/// `fresh_id` names a task submitted without a request id.
pub fn check_submit(req: &SubmitRequest, fresh_id: impl FnOnce() -> String) -> Result<Submission, Status> {
    task_contract::check_entity(&req.entity).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let op = match req.op.as_str() {
        "" => Op::Add,
        name => Op::parse(name).ok_or_else(|| {
            let shown: String = name.chars().take(40).collect();
            Status::invalid_argument(format!("unknown op {shown:?}: add or set"))
        })?,
    };
    let (task_id, request_id) = match req.request_id.as_str() {
        "" => (fresh_id(), None),
        key => {
            task_contract::check_task_id(key).map_err(|e| Status::invalid_argument(format!("request_id: {e}")))?;
            (task_id_for(key), Some(key.to_string()))
        }
    };
    Ok(Submission { task_id, request_id, node: TaskNode::pending(&req.entity, op, req.amount) })
}

/// Checks the task id a Watch names: one path segment, short.
pub fn check_watch(task_id: &str) -> Result<(), Status> {
    task_contract::check_task_id(task_id).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Namespace of the task ids derived from request ids (a fixed random
/// UUID: changing it would make every retry in flight a new task).
const REQUEST_NAMESPACE: [u8; 16] =
    [0x6b, 0x3c, 0x1e, 0x52, 0x9a, 0x04, 0x4d, 0x7f, 0xb1, 0x28, 0x5e, 0x90, 0x3d, 0xc4, 0x11, 0xa7];

/// The task a request id names: the name-based (version 5) UUID of the
/// key. The same key always names the same task, so creating its node is
/// the idempotency check; and no key can name a task submitted without
/// one (those are version 4 UUIDs), whatever string the caller chose.
pub fn task_id_for(request_id: &str) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(REQUEST_NAMESPACE);
    h.update(request_id.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid().to_string()
}

/// A task as a person reads it: `add 5 to acct-1`.
pub fn describe(node: &TaskNode) -> String {
    match &node.state {
        TaskState::Pending { entity, op: Op::Add, amount } => format!("add {amount} to {entity}"),
        TaskState::Pending { entity, op: Op::Set, amount } => format!("set {entity} to {amount}"),
        other => format!("{other:?}"),
    }
}

/// Whether a Submit that reuses a request id asks what the first one
/// asked. `first` is the request as recorded when the key was first used.
/// A retry must repeat the request exactly; the same key asking anything
/// else is a caller's bug (a key reused for a new request), refused with
/// FAILED_PRECONDITION rather than answered with another task's result.
pub fn same_request(key: &str, first: &[u8], retry: &TaskNode) -> Result<(), Status> {
    match TaskNode::decode(first) {
        Ok(first) if first == *retry => Ok(()),
        Ok(first) => Err(Status::failed_precondition(format!(
            "request id {key:?} was first used to {}; this request asks to {}: a retry must repeat the request \
             exactly, and a new request needs a new request id",
            describe(&first),
            describe(retry)
        ))),
        Err(e) => Err(Status::data_loss(format!("the record of request id {key:?} cannot be read: {e}"))),
    }
}

/// How far a Submit got before it failed, which is what the caller needs
/// to know to decide whether to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Certainly not accepted: nothing will run.
    No,
    /// The task node's create may still reach the server (zookeeper-async
    /// sends what it queued once it reconnects); then the outbox publishes
    /// the task and it runs.
    Maybe,
}

/// A coordination-server failure as the caller's answer. Connection loss
/// and timeouts are UNAVAILABLE (retry); anything else is the server
/// refusing system-a (an ACL, a missing directory) and retrying will not
/// help: INTERNAL. The message says whether the task may run anyway, and
/// how to retry safely.
pub fn coordination_failure(sub: &Submission, accepted: Accepted, e: &ZkError) -> Status {
    let id = &sub.task_id;
    let fate = match (accepted, &sub.request_id) {
        (Accepted::No, _) => format!("task {id} was not accepted"),
        (Accepted::Maybe, Some(key)) => {
            format!("task {id} may still be accepted and run; retry with the same request id {key:?}")
        }
        (Accepted::Maybe, None) => format!(
            "task {id} may still be accepted and run: Watch {id} to learn its outcome (a retry without a request \
             id may run it twice)"
        ),
    };
    if zk_recipes::retry::is_retryable(e) {
        Status::unavailable(format!("coordination server: {e:?}; {fate}"))
    } else {
        Status::internal(format!("coordination server refused system-a: {e:?}; {fate}"))
    }
}

/// The answer to a Submit, from the task node once it is not pending.
pub fn answer(task_id: &str, data: &[u8]) -> Result<SubmitReply, Status> {
    let node = TaskNode::decode(data).map_err(|e| {
        let shown: String = String::from_utf8_lossy(data).chars().take(200).collect();
        Status::data_loss(format!("task {task_id}'s result cannot be read: {e}: {shown}"))
    })?;
    let status = node.status().to_string();
    match node.state {
        TaskState::Done { value, worker, token, .. } => {
            Ok(SubmitReply { task_id: task_id.to_string(), status, value, worker, token })
        }
        TaskState::Failed { error } => Err(Status::failed_precondition(format!("task {task_id} failed: {error}"))),
        TaskState::Pending { .. } => Err(Status::internal(format!("task {task_id} is still pending"))),
    }
}

/// How many Watch streams system-a serves at once: each holds a gRPC
/// stream and a place in a task's fan-out, so a caller that opens them
/// without end must be told no instead of growing system-a.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimits {
    pub total: usize,
    pub per_peer: usize,
}

/// Whether one more Watch stream may open, given how many are open in all
/// and from this caller's address.
pub fn admit_watch(limits: WatchLimits, open_total: usize, open_from_peer: usize, peer: IpAddr) -> Result<(), Status> {
    if open_from_peer >= limits.per_peer {
        return Err(Status::resource_exhausted(format!(
            "{peer} has {open_from_peer} Watch streams open, the most one caller may: close one first"
        )));
    }
    if open_total >= limits.total {
        return Err(Status::resource_exhausted(format!(
            "system-a serves {open_total} Watch streams, its limit: try again later"
        )));
    }
    Ok(())
}

/// How a Submit ended, as `system_a_submits_total` counts it: a fixed
/// few values, so the counter stays a handful of series whatever callers
/// send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// system-b applied it; the caller has the result.
    Done,
    /// system-b failed it for good (its node says `failed`).
    Failed,
    /// Refused before it could run: an invalid request, a request id reused
    /// for another request, a limit.
    Refused,
    /// No result within the configured timeout; the task may still run.
    Timeout,
    /// The coordination server could not be reached in time.
    Unavailable,
    /// Anything else (a refusal by ACL, a result that cannot be read).
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 6] =
        [Outcome::Done, Outcome::Failed, Outcome::Refused, Outcome::Timeout, Outcome::Unavailable, Outcome::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
            Outcome::Unavailable => "unavailable",
            Outcome::Error => "error",
        }
    }

    /// The outcome of a Submit that ended with `status` before system-b
    /// answered it (an answer's outcome is known where it is read).
    pub fn of_failure(status: &Status) -> Outcome {
        use tonic::Code;
        match status.code() {
            Code::InvalidArgument | Code::FailedPrecondition | Code::ResourceExhausted | Code::AlreadyExists => {
                Outcome::Refused
            }
            Code::DeadlineExceeded => Outcome::Timeout,
            Code::Unavailable => Outcome::Unavailable,
            _ => Outcome::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn req(entity: &str, op: &str, amount: i64, request_id: &str) -> SubmitRequest {
        SubmitRequest { entity: entity.into(), op: op.into(), amount, request_id: request_id.into() }
    }

    fn fresh() -> String {
        "0b5c7a1e-3f0e-4b8e-9c1d-2a6f1e9d8c7b".into()
    }

    #[test]
    fn a_valid_submit_is_a_pending_task() {
        let s = check_submit(&req("acct-1", "", 5, ""), fresh).expect("valid");
        assert_eq!(s, Submission { task_id: fresh(), request_id: None, node: TaskNode::pending("acct-1", Op::Add, 5) });
        let s = check_submit(&req("acct-1", "set", -3, "retry-me"), fresh).expect("valid");
        assert_eq!((s.task_id, s.request_id.as_deref()), (task_id_for("retry-me"), Some("retry-me")));
        assert_eq!(s.node, TaskNode::pending("acct-1", Op::Set, -3));
    }

    #[test]
    fn a_failure_is_counted_by_what_it_tells_the_caller() {
        let bad = check_submit(&req("", "add", 1, ""), fresh).expect_err("no entity");
        assert_eq!(Outcome::of_failure(&bad), Outcome::Refused);
        assert_eq!(Outcome::of_failure(&Status::deadline_exceeded("no result")), Outcome::Timeout);
        assert_eq!(Outcome::of_failure(&Status::unavailable("connection loss")), Outcome::Unavailable);
        assert_eq!(Outcome::of_failure(&Status::internal("NOAUTH")), Outcome::Error);
    }

    /// What the review sent: a megabyte of name, answered briefly.
    #[test]
    fn bad_names_are_refused_with_a_short_message() {
        let huge = "x".repeat(1_100_000);
        for (what, r) in [
            ("huge entity", req(&huge, "add", 1, "")),
            ("path entity", req("../config/system-b", "add", 1, "")),
            ("empty entity", req("", "add", 1, "")),
            ("unknown op", req("e", &huge, 1, "")),
            ("huge request id", req("e", "add", 1, &huge)),
            ("path request id", req("e", "add", 1, "a/b")),
        ] {
            let e = check_submit(&r, fresh).expect_err(what);
            assert_eq!(e.code(), Code::InvalidArgument, "{what}");
            assert!(e.message().len() < 300, "{what}: {} bytes", e.message().len());
        }
        assert_eq!(
            check_watch(&huge).map_err(|s| (s.code(), s.message().len() < 300)),
            Err((Code::InvalidArgument, true))
        );
        assert!(check_watch("../outbox").is_err() && check_watch(&fresh()).is_ok());
    }

    #[test]
    fn a_request_id_names_one_task_of_its_own() {
        let id = task_id_for("order-42");
        assert_eq!(id, task_id_for("order-42"), "the same key, the same task");
        assert_ne!(id, task_id_for("order-43"));
        let uuid = uuid::Uuid::parse_str(&id).expect("a UUID");
        assert_eq!(uuid.get_version_num(), 5, "never a version 4 id of a task submitted without a key");
        assert!(task_contract::check_task_id(&id).is_ok());
        // Even a key that is itself another task's id names another task.
        assert_ne!(task_id_for(&fresh()), fresh());
    }

    #[test]
    fn a_retry_must_ask_what_the_first_asked() {
        let first = TaskNode::pending("acct-1", Op::Add, 5).encode();
        assert!(same_request("k", &first, &TaskNode::pending("acct-1", Op::Add, 5)).is_ok());
        for other in [
            TaskNode::pending("acct-1", Op::Add, 6),
            TaskNode::pending("acct-2", Op::Add, 5),
            TaskNode::pending("acct-1", Op::Set, 5),
        ] {
            let e = same_request("k", &first, &other).expect_err("a different request");
            assert_eq!(e.code(), Code::FailedPrecondition);
            assert!(
                e.message().contains("add 5 to acct-1") && e.message().contains("new request id"),
                "{}",
                e.message()
            );
        }
        assert_eq!(
            same_request("k", b"junk", &TaskNode::pending("a", Op::Add, 1)).map_err(|s| s.code()),
            Err(Code::DataLoss)
        );
    }

    #[test]
    fn a_failure_says_whether_the_task_may_run_and_how_to_retry() {
        let keyed = check_submit(&req("e", "add", 1, "k1"), fresh).expect("valid");
        let bare = check_submit(&req("e", "add", 1, ""), fresh).expect("valid");
        let s = coordination_failure(&bare, Accepted::No, &ZkError::ConnectionLoss);
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("was not accepted"), "{}", s.message());
        let s = coordination_failure(&keyed, Accepted::Maybe, &ZkError::OperationTimeout);
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("may still be accepted") && s.message().contains("same request id"));
        let s = coordination_failure(&bare, Accepted::Maybe, &ZkError::ConnectionLoss);
        assert!(s.message().contains("Watch") && s.message().contains("twice"), "{}", s.message());
        // An answer from the server is not a reason to retry.
        let s = coordination_failure(&bare, Accepted::No, &ZkError::NoAuth);
        assert_eq!(s.code(), Code::Internal);
    }

    #[test]
    fn a_finished_node_is_the_answer() {
        let done = answer("t", &TaskNode::done(7, "b1", 1, 9).encode()).expect("done");
        assert_eq!((done.value, done.worker.as_str(), done.token, done.status.as_str()), (7, "b1", 9, "done"));
        let codes = [
            (TaskNode::failed("no").encode(), Code::FailedPrecondition),
            (TaskNode::pending("e", Op::Add, 1).encode(), Code::Internal),
            (b"garbage".to_vec(), Code::DataLoss),
        ];
        for (data, code) in codes {
            assert_eq!(answer("t", &data).map_err(|s| s.code()), Err(code));
        }
    }

    #[test]
    fn watch_streams_are_counted_per_caller_and_in_all() {
        let limits = WatchLimits { total: 10, per_peer: 3 };
        let peer: IpAddr = [127, 0, 0, 1].into();
        assert!(admit_watch(limits, 0, 0, peer).is_ok());
        assert!(admit_watch(limits, 9, 2, peer).is_ok());
        assert_eq!(admit_watch(limits, 5, 3, peer).map_err(|s| s.code()), Err(Code::ResourceExhausted));
        assert_eq!(admit_watch(limits, 10, 0, peer).map_err(|s| s.code()), Err(Code::ResourceExhausted));
    }
}

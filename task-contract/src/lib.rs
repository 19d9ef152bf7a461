//! The contract between system-a and system-b, in one place both use.
//!
//! Two JSON documents cross between the services:
//!
//! - the **task message** ([`TaskMessage`]): what system-a publishes to
//!   RabbitMQ for system-b, and keeps in its outbox (`<root>/outbox/<id>`)
//!   until the broker confirms it;
//! - the **task node's data** ([`TaskNode`]) at `<root>/tasks/<id>`: written
//!   `pending` by system-a, then `done` or `failed` by system-b; system-a's
//!   watch on the node turns that write into the gRPC answer.
//!
//! A crate of its own, not a module of `servicekit`: the contract is data
//! (serde types and nothing else), and whoever reads a task (the services,
//! the tests, a client in another language's mirror of it) should depend on
//! the data without pulling in the RabbitMQ, ZooKeeper and gRPC clients that
//! `servicekit` brings.
//!
//! # Versions
//!
//! Each document carries a `version`. A reader accepts every version up to
//! [`VERSION`] and refuses a newer one with
//! [`ContractError::UnsupportedVersion`]: a newer writer may have added
//! something that changes what the task means (an operation, a condition),
//! and a reader that guessed would apply it wrongly. system-b dead-letters
//! such a message, where an operator can replay it once every worker reads
//! that version.
//!
//! The wire format stays backward compatible where that is cheap: documents
//! written before the field existed have no `version` and read as version 1,
//! the format they are in; fields a reader does not know are ignored, so an
//! optional addition needs no new version. Only a change an older reader
//! would misread needs one.
//!
//! # Unreadable is an error
//!
//! Decoding returns a `Result`: there is no "unknown" status. A reader that
//! cannot tell whether a task is finished must not act as though it were
//! (reap its node, answer the caller, apply the message).

use serde::{Deserialize, Serialize};

/// The newest version of both documents this build writes and reads.
pub const VERSION: u32 = 1;

/// What a document without a `version` field is: the format from before
/// the field existed.
fn first_version() -> u32 {
    1
}

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// Not JSON, or not the shape of the document (a missing field, an
    /// unknown status or operation).
    #[error("unreadable task document: {0}")]
    Unreadable(#[from] serde_json::Error),
    /// A version this build does not read (newer than [`VERSION`], or 0).
    #[error("task document version {found} is not one this build reads (1 to {supported}); upgrade this service")]
    UnsupportedVersion { found: u32, supported: u32 },
}

/// Checks the version before the rest is read, so a newer document fails
/// with the version as the reason rather than with whichever of its fields
/// happens not to parse.
fn check_version(bytes: &[u8]) -> Result<(), ContractError> {
    #[derive(Deserialize)]
    struct Header {
        #[serde(default = "first_version")]
        version: u32,
    }
    let found = serde_json::from_slice::<Header>(bytes)?.version;
    if found == 0 || found > VERSION {
        return Err(ContractError::UnsupportedVersion { found, supported: VERSION });
    }
    Ok(())
}

/// What a task does to its entity's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Adds `amount` (the default: messages from before `op` existed).
    #[default]
    Add,
    /// Replaces the value with `amount`.
    Set,
}

impl Op {
    /// The operation a caller names, if it is one.
    pub fn parse(name: &str) -> Option<Op> {
        match name {
            "add" => Some(Op::Add),
            "set" => Some(Op::Set),
            _ => None,
        }
    }

    /// The entity's value after the operation.
    pub fn apply(self, current: i64, amount: i64) -> i64 {
        match self {
            Op::Add => current + amount,
            Op::Set => amount,
        }
    }
}

/// The task message: system-a → RabbitMQ → system-b.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMessage {
    #[serde(default = "first_version")]
    pub version: u32,
    /// The task's id: also the name of its node under `<root>/tasks`, and
    /// what system-b records per entity to apply a redelivery only once.
    pub id: String,
    pub entity: String,
    #[serde(default)]
    pub op: Op,
    pub amount: i64,
}

impl TaskMessage {
    /// A message in the current version.
    pub fn new(id: impl Into<String>, entity: impl Into<String>, op: Op, amount: i64) -> TaskMessage {
        TaskMessage { version: VERSION, id: id.into(), entity: entity.into(), op, amount }
    }

    pub fn encode(&self) -> Vec<u8> {
        to_json(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<TaskMessage, ContractError> {
        check_version(bytes)?;
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// Where a task is: what its node's `status` field says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Accepted by system-a, not answered by system-b yet.
    Pending,
    /// Applied; the node holds the result.
    Done,
    /// Will never be applied; the node holds why.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Done => "done",
            Status::Failed => "failed",
        }
    }

    /// Done or failed: nothing will change the node any more.
    pub fn is_final(self) -> bool {
        self != Status::Pending
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The task node's state, tagged by its `status` field on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum TaskState {
    /// What was asked, for whoever looks at the node meanwhile.
    Pending { entity: String, op: Op, amount: i64 },
    /// The entity's value after the task, who applied it and under which
    /// lock token (the fencing token of the entity's lock).
    Done { value: i64, worker: String, token: i64 },
    /// Why the task will never be applied.
    Failed { error: String },
}

/// The data of `<root>/tasks/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskNode {
    #[serde(default = "first_version")]
    pub version: u32,
    #[serde(flatten)]
    pub state: TaskState,
}

impl TaskNode {
    fn current(state: TaskState) -> TaskNode {
        TaskNode { version: VERSION, state }
    }

    pub fn pending(message: &TaskMessage) -> TaskNode {
        Self::current(TaskState::Pending { entity: message.entity.clone(), op: message.op, amount: message.amount })
    }

    pub fn done(value: i64, worker: impl Into<String>, token: i64) -> TaskNode {
        Self::current(TaskState::Done { value, worker: worker.into(), token })
    }

    pub fn failed(error: impl Into<String>) -> TaskNode {
        Self::current(TaskState::Failed { error: error.into() })
    }

    pub fn status(&self) -> Status {
        match self.state {
            TaskState::Pending { .. } => Status::Pending,
            TaskState::Done { .. } => Status::Done,
            TaskState::Failed { .. } => Status::Failed,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        to_json(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<TaskNode, ContractError> {
        check_version(bytes)?;
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Whether `bytes` are a task node still waiting for its result. Bytes
    /// that do not read as the contract are not pending: a worker writes
    /// nothing over them, and a waiter stops waiting (and then reports
    /// them unreadable) rather than waiting for a change that cannot come.
    pub fn is_pending(bytes: &[u8]) -> bool {
        matches!(TaskNode::decode(bytes), Ok(n) if n.status() == Status::Pending)
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Strings, integers and unit enums: serde_json cannot fail on them (it
    // fails only on maps with non-string keys or a failing Serialize impl).
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_with_its_version() {
        let m = TaskMessage::new("t1", "acct-1", Op::Set, -4);
        let bytes = m.encode();
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(json["version"], VERSION);
        assert_eq!(json["op"], "set");
        assert_eq!(TaskMessage::decode(&bytes).expect("decode"), m);
    }

    #[test]
    fn every_node_state_round_trips_and_names_its_status() {
        let m = TaskMessage::new("t1", "acct-1", Op::Add, 5);
        for (node, status) in [
            (TaskNode::pending(&m), Status::Pending),
            (TaskNode::done(5, "b1", 3), Status::Done),
            (TaskNode::failed("no such entity"), Status::Failed),
        ] {
            let bytes = node.encode();
            let json: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
            assert_eq!(json["status"], status.as_str());
            let back = TaskNode::decode(&bytes).expect("decode");
            assert_eq!((back.status(), &back), (status, &node));
        }
    }

    /// The documents as they were written before the version field: they
    /// read as version 1, unchanged.
    #[test]
    fn only_a_readable_pending_node_is_pending() {
        let m = TaskMessage::new("t1", "acct-1", Op::Add, 5);
        assert!(TaskNode::is_pending(&TaskNode::pending(&m).encode()));
        assert!(!TaskNode::is_pending(&TaskNode::done(5, "b1", 7).encode()));
        assert!(!TaskNode::is_pending(&TaskNode::failed("no").encode()));
        assert!(!TaskNode::is_pending(b"{\"status\":\"pending\"}"), "a pending node without its fields");
        assert!(!TaskNode::is_pending(b"not json"));
    }

    #[test]
    fn documents_without_a_version_read_as_version_1() {
        let m = TaskMessage::decode(br#"{"id":"t1","entity":"e","op":"add","amount":5}"#).expect("old message");
        assert_eq!(m, TaskMessage::new("t1", "e", Op::Add, 5));
        let m = TaskMessage::decode(br#"{"id":"t1","entity":"e","amount":5}"#).expect("message without op");
        assert_eq!(m.op, Op::Add);
        let n = TaskNode::decode(br#"{"status":"done","value":5,"worker":"b1","token":2}"#).expect("old node");
        assert_eq!(n, TaskNode::done(5, "b1", 2));
        let n = TaskNode::decode(br#"{"status":"pending","entity":"e","op":"add","amount":5}"#).expect("old node");
        assert_eq!(n.status(), Status::Pending);
        // Fields a reader does not know are ignored within a version.
        let n = TaskNode::decode(br#"{"version":1,"status":"failed","error":"x","hint":"y"}"#).expect("extra field");
        assert_eq!(n, TaskNode::failed("x"));
    }

    #[test]
    fn a_newer_version_is_refused_by_its_version() {
        // Even when the rest would parse: a newer writer may mean more.
        let newer = format!(r#"{{"version":{},"id":"t1","entity":"e","op":"add","amount":5}}"#, VERSION + 1);
        match TaskMessage::decode(newer.as_bytes()) {
            Err(ContractError::UnsupportedVersion { found, supported }) => {
                assert_eq!((found, supported), (VERSION + 1, VERSION))
            }
            other => panic!("a newer message was read: {other:?}"),
        }
        let newer = br#"{"version":7,"status":"done","value":1,"worker":"b","token":1,"when":"later"}"#;
        assert!(matches!(TaskNode::decode(newer), Err(ContractError::UnsupportedVersion { found: 7, .. })));
        let zero = br#"{"version":0,"id":"t1","entity":"e","amount":5}"#;
        assert!(matches!(TaskMessage::decode(zero), Err(ContractError::UnsupportedVersion { found: 0, .. })));
    }

    /// What used to read as status "unknown" (and so as finished) is an
    /// error: garbage, a status nobody defined, a document missing what its
    /// status promises, a version that is not a number.
    #[test]
    fn unreadable_data_is_an_error_never_a_status() {
        for bad in [
            &b"this is not JSON"[..],
            b"",
            b"{}",
            b"[]",
            br#"{"status":"unknown"}"#,
            br#"{"status":"DONE","value":5,"worker":"b1","token":2}"#,
            br#"{"status":"done","value":"five","worker":"b1","token":2}"#,
            br#"{"status":"pending"}"#,
            br#"{"version":"1","status":"failed","error":"x"}"#,
        ] {
            match TaskNode::decode(bad) {
                Err(ContractError::Unreadable(_)) => {}
                other => panic!("{:?} read as {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        for bad in [
            &b"this is not JSON"[..],
            br#"{"id":"t1","entity":"e","op":"multiply","amount":5}"#,
            br#"{"id":"t1","op":"add","amount":5}"#,
            br#"{"id":"t1","entity":"e","amount":"5"}"#,
        ] {
            assert!(
                matches!(TaskMessage::decode(bad), Err(ContractError::Unreadable(_))),
                "{:?} read as a message",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn ops_parse_and_apply() {
        assert_eq!(Op::parse("add").map(|op| op.apply(2, 3)), Some(5));
        assert_eq!(Op::parse("set").map(|op| op.apply(2, 3)), Some(3));
        assert_eq!(Op::parse("multiply"), None);
    }
}

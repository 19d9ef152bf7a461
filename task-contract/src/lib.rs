//! The contract between system-a and system-b, in one place both use.
//!
//! Two JSON documents cross between the services:
//!
//! - the **task node's data** ([`TaskNode`]) at `<root>/tasks/<id>`: written
//!   `pending` by system-a with everything the task asks (entity, operation,
//!   amount), then `done` or `failed` by system-b; system-a's watch on the
//!   node turns that write into the gRPC answer. **The node is the source of
//!   truth**: only system-a may create it (its ACL says so), so what it says
//!   is what the caller asked;
//! - the **task message** ([`TaskMessage`]): what system-a publishes to
//!   RabbitMQ for system-b, and keeps in its outbox (`<root>/outbox/<id>`,
//!   beside the Submit's trace context) until the broker confirms it. It says only *which* task to do, by id.
//!   Whoever can publish to the queue (a stolen broker password, a replayed
//!   or rewritten message) can therefore at most ask for a task the node
//!   already describes: a message naming no node, or a node that is already
//!   final, is a no-op, and nothing in a message changes what is applied or
//!   what a caller is told.
//!
//! A crate of its own, not a module of `servicekit`: the contract is data
//! (serde types and nothing else), and whoever reads a task (the services,
//! the tests, a client in another language's mirror of it) should depend on
//! the data without pulling in the RabbitMQ, ZooKeeper and gRPC clients that
//! `servicekit` brings.
//!
//! # Names
//!
//! [`check_entity`] and [`check_task_id`] say which names are valid. Every
//! edge applies them before anything reaches the coordination server or the
//! store: system-a refuses a bad name with INVALID_ARGUMENT, system-b
//! dead-letters a message that carries one.
//!
//! # Versions
//!
//! Each document carries a `version`. A reader accepts every version up to
//! its newest ([`MESSAGE_VERSION`], [`NODE_VERSION`]) and refuses a newer one
//! with [`ContractError::UnsupportedVersion`]: a newer writer may have added
//! something that changes what the task means (an operation, a condition),
//! and a reader that guessed would apply it wrongly. system-b dead-letters
//! such a message, where an operator can replay it once every worker reads
//! that version.
//!
//! The wire format stays backward compatible where that is cheap: documents
//! written before the field existed have no `version` and read as version 1,
//! the format they are in; fields a reader does not know are ignored, so an
//! optional addition needs no new version. Only a change an older reader
//! would misread needs one: message version 2 dropped the task's content
//! from the message (a version-1 reader would fail to find it), so a
//! version-1 system-b refuses it by its version and dead-letters it for a
//! replay, instead of failing the task.
//!
//! # Unreadable is an error
//!
//! Decoding returns a `Result`: there is no "unknown" status. A reader that
//! cannot tell whether a task is finished must not act as though it were
//! (reap its node, answer the caller, apply the message).

use serde::{Deserialize, Serialize};

/// The newest task message this build writes and reads. Version 2: the
/// message carries only the task's id.
pub const MESSAGE_VERSION: u32 = 2;

/// The newest task node this build writes and reads.
pub const NODE_VERSION: u32 = 1;

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
    /// A version this build does not read (newer than it knows, or 0).
    #[error("task document version {found} is not one this build reads (1 to {supported}); upgrade this service")]
    UnsupportedVersion { found: u32, supported: u32 },
    /// A name that is not a valid entity name (see [`check_entity`]).
    #[error("invalid entity name {0:?}: 1 to {MAX_ENTITY} letters, digits, '-', '_' or '.', not starting with '.'")]
    BadEntity(String),
    /// A name that is not a valid task id (see [`check_task_id`]).
    #[error("invalid task id {0:?}: 1 to {MAX_TASK_ID} letters, digits, '-' or '_'")]
    BadTaskId(String),
}

/// The longest entity name: it names a lock node and a store file.
pub const MAX_ENTITY: usize = 128;
/// The longest task id: it names a task node and an outbox entry (a UUID
/// is 36 characters; a client's idempotency key may be longer).
pub const MAX_TASK_ID: usize = 64;

/// Refuses a name no entity can have. The entity names a znode
/// (`/locks/<entity>`) and a file in the store (`<entity>.json`), so it is
/// one path segment that neither a server nor a file system reads as
/// anything else: no `/`, no leading `.` (`.`, `..`, hidden files), no
/// control or multi-byte characters, and short. The bytes this lets through
/// are the same for every reader: the check is the contract, not a
/// service's taste.
pub fn check_entity(entity: &str) -> Result<(), ContractError> {
    let ok = !entity.is_empty()
        && entity.len() <= MAX_ENTITY
        && !entity.starts_with('.')
        && entity.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ContractError::BadEntity(shorten(entity)))
    }
}

/// Refuses a name no task can have: a task id names a znode under
/// `/tasks` and `/outbox`, so it is one short path segment.
pub fn check_task_id(id: &str) -> Result<(), ContractError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_TASK_ID
        && id.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(ContractError::BadTaskId(shorten(id)))
    }
}

/// A name as an error may quote it: a megabyte-long name must not become a
/// megabyte-long log line.
fn shorten(name: &str) -> String {
    const SHOWN: usize = 80;
    if name.len() <= SHOWN {
        return name.to_string();
    }
    let cut = (0..=SHOWN).rev().find(|i| name.is_char_boundary(*i)).unwrap_or(0);
    format!("{}... ({} bytes)", &name[..cut], name.len())
}

/// Checks the version before the rest is read, so a newer document fails
/// with the version as the reason rather than with whichever of its fields
/// happens not to parse.
fn check_version(bytes: &[u8], newest: u32) -> Result<(), ContractError> {
    #[derive(Deserialize)]
    struct Header {
        #[serde(default = "first_version")]
        version: u32,
    }
    let found = serde_json::from_slice::<Header>(bytes)?.version;
    if found == 0 || found > newest {
        return Err(ContractError::UnsupportedVersion { found, supported: newest });
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

    /// The operation's name on the wire and in a Submit.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Set => "set",
        }
    }

    /// The entity's value after the operation; `None` when it does not fit
    /// an `i64` (an add past the range fails the task: it must neither
    /// wrap nor take the worker down).
    pub fn apply(self, current: i64, amount: i64) -> Option<i64> {
        match self {
            Op::Add => current.checked_add(amount),
            Op::Set => Some(amount),
        }
    }
}

/// The task message: system-a → RabbitMQ → system-b. Only the task's id:
/// what to do is in the task node (see the crate docs for why).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMessage {
    #[serde(default = "first_version")]
    pub version: u32,
    /// The task's id: the name of its node under `<root>/tasks`. A
    /// version-1 message also carried the task's content; it is ignored.
    pub id: String,
}

impl TaskMessage {
    /// A message in the current version.
    pub fn new(id: impl Into<String>) -> TaskMessage {
        TaskMessage { version: MESSAGE_VERSION, id: id.into() }
    }

    pub fn encode(&self) -> Vec<u8> {
        to_json(self)
    }

    /// Reads a message, refusing a newer version and an id that is not a
    /// valid task id (so nothing downstream sees a path in it).
    pub fn decode(bytes: &[u8]) -> Result<TaskMessage, ContractError> {
        check_version(bytes, MESSAGE_VERSION)?;
        let message: TaskMessage = serde_json::from_slice(bytes)?;
        check_task_id(&message.id)?;
        Ok(message)
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
    /// What was asked: what system-b applies, and nothing else.
    Pending { entity: String, op: Op, amount: i64 },
    /// The entity's value after the task, who applied it and under which
    /// fencing token (the entity's lock node's czxid, in the fencing epoch
    /// `epoch`: tokens compare by epoch first; see `zk_recipes::fencing`).
    Done {
        value: i64,
        worker: String,
        token: i64,
        #[serde(default)]
        epoch: i64,
    },
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
        TaskNode { version: NODE_VERSION, state }
    }

    pub fn pending(entity: impl Into<String>, op: Op, amount: i64) -> TaskNode {
        Self::current(TaskState::Pending { entity: entity.into(), op, amount })
    }

    pub fn done(value: i64, worker: impl Into<String>, epoch: i64, token: i64) -> TaskNode {
        Self::current(TaskState::Done { value, worker: worker.into(), token, epoch })
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
        check_version(bytes, NODE_VERSION)?;
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
    fn a_message_round_trips_with_its_version_and_only_the_id() {
        let m = TaskMessage::new("t1");
        let bytes = m.encode();
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(json["version"], MESSAGE_VERSION);
        assert_eq!(json.as_object().map(|o| o.len()), Some(2), "version and id, nothing else: {json}");
        assert_eq!(TaskMessage::decode(&bytes).expect("decode"), m);
    }

    /// A version-1 message carried the task's content too. A rewritten
    /// one (`set -1000` in place of `add 7`) decodes to the same request,
    /// "do task t1": what it says about the task is never read.
    #[test]
    fn what_a_message_says_beyond_the_id_is_ignored() {
        let honest = TaskMessage::decode(br#"{"version":1,"id":"t1","entity":"e","op":"add","amount":7}"#);
        let rewritten = TaskMessage::decode(br#"{"version":1,"id":"t1","entity":"other","op":"set","amount":-1000}"#);
        assert_eq!(honest.expect("honest"), TaskMessage { version: 1, id: "t1".into() });
        assert_eq!(rewritten.expect("rewritten"), TaskMessage { version: 1, id: "t1".into() });
    }

    #[test]
    fn every_node_state_round_trips_and_names_its_status() {
        for (node, status) in [
            (TaskNode::pending("acct-1", Op::Add, 5), Status::Pending),
            (TaskNode::done(5, "b1", 2, 3), Status::Done),
            (TaskNode::failed("no such entity"), Status::Failed),
        ] {
            let bytes = node.encode();
            let json: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
            assert_eq!(json["status"], status.as_str());
            let back = TaskNode::decode(&bytes).expect("decode");
            assert_eq!((back.status(), &back), (status, &node));
        }
    }

    #[test]
    fn only_a_readable_pending_node_is_pending() {
        assert!(TaskNode::is_pending(&TaskNode::pending("acct-1", Op::Add, 5).encode()));
        assert!(!TaskNode::is_pending(&TaskNode::done(5, "b1", 1, 7).encode()));
        assert!(!TaskNode::is_pending(&TaskNode::failed("no").encode()));
        assert!(!TaskNode::is_pending(b"{\"status\":\"pending\"}"), "a pending node without its fields");
        assert!(!TaskNode::is_pending(b"not json"));
    }

    /// The documents as they were written before the version field (and
    /// before the epoch): they read as version 1, epoch 0, unchanged.
    #[test]
    fn documents_without_a_version_read_as_version_1() {
        let m = TaskMessage::decode(br#"{"id":"t1","entity":"e","op":"add","amount":5}"#).expect("old message");
        assert_eq!(m, TaskMessage { version: 1, id: "t1".into() });
        let n = TaskNode::decode(br#"{"status":"done","value":5,"worker":"b1","token":2}"#).expect("old node");
        assert_eq!(n, TaskNode::done(5, "b1", 0, 2));
        let n = TaskNode::decode(br#"{"status":"pending","entity":"e","op":"add","amount":5}"#).expect("old node");
        assert_eq!(n.status(), Status::Pending);
        // Fields a reader does not know are ignored within a version.
        let n = TaskNode::decode(br#"{"version":1,"status":"failed","error":"x","hint":"y"}"#).expect("extra field");
        assert_eq!(n, TaskNode::failed("x"));
    }

    #[test]
    fn a_newer_version_is_refused_by_its_version() {
        // Even when the rest would parse: a newer writer may mean more.
        let newer = format!(r#"{{"version":{},"id":"t1"}}"#, MESSAGE_VERSION + 1);
        match TaskMessage::decode(newer.as_bytes()) {
            Err(ContractError::UnsupportedVersion { found, supported }) => {
                assert_eq!((found, supported), (MESSAGE_VERSION + 1, MESSAGE_VERSION))
            }
            other => panic!("a newer message was read: {other:?}"),
        }
        let newer = br#"{"version":7,"status":"done","value":1,"worker":"b","token":1,"when":"later"}"#;
        assert!(matches!(TaskNode::decode(newer), Err(ContractError::UnsupportedVersion { found: 7, .. })));
        let zero = br#"{"version":0,"id":"t1"}"#;
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
        for bad in [&b"this is not JSON"[..], br#"{"entity":"e","op":"add","amount":5}"#, br#"{"id":5}"#] {
            assert!(
                matches!(TaskMessage::decode(bad), Err(ContractError::Unreadable(_))),
                "{:?} read as a message",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// An id that is a path, or a megabyte, never leaves the decoder.
    #[test]
    fn a_message_naming_no_valid_task_is_refused() {
        let huge = format!(r#"{{"id":"{}"}}"#, "x".repeat(1 << 20));
        for bad in [r#"{"id":""}"#, r#"{"id":"../config/system-b"}"#, r#"{"id":"a/b"}"#, r#"{"id":"."}"#, &huge] {
            match TaskMessage::decode(bad.as_bytes()) {
                Err(e @ ContractError::BadTaskId(_)) => assert!(e.to_string().len() < 300, "{e}"),
                other => panic!("{:.60} read as {other:?}", bad),
            }
        }
    }

    #[test]
    fn names_follow_the_contract() {
        for good in ["acct-1", "A.b_c", "x", &"e".repeat(MAX_ENTITY)] {
            assert!(check_entity(good).is_ok(), "{good}");
        }
        let long = "e".repeat(MAX_ENTITY + 1);
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "é", "a\0b", &long] {
            assert!(matches!(check_entity(bad), Err(ContractError::BadEntity(_))), "{bad:?}");
        }
        let uuid = "0b5c7a1e-3f0e-4b8e-9c1d-2a6f1e9d8c7b";
        assert!(check_task_id(uuid).is_ok());
        assert!(check_task_id(&"k".repeat(MAX_TASK_ID)).is_ok());
        for bad in ["", ".", "a.b", "a/b", &"k".repeat(MAX_TASK_ID + 1)] {
            assert!(matches!(check_task_id(bad), Err(ContractError::BadTaskId(_))), "{bad:?}");
        }
        // A refusal quotes a long name shortened.
        let e = check_entity(&"x".repeat(1_100_000)).expect_err("too long").to_string();
        assert!(e.len() < 300 && e.contains("1100000 bytes"), "{e}");
    }

    #[test]
    fn ops_parse_and_apply() {
        assert_eq!(Op::parse("add").and_then(|op| op.apply(2, 3)), Some(5));
        assert_eq!(Op::parse("set").and_then(|op| op.apply(2, 3)), Some(3));
        assert_eq!(Op::Add.apply(i64::MAX, 1), None);
        assert_eq!(Op::Add.apply(i64::MIN, -1), None);
        assert_eq!(Op::parse("multiply"), None);
    }
}
